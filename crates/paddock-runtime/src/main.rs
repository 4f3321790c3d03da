//! `paddock-runtime`: the agent inside every Paddock sandbox.

use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::Context;
use clap::Parser;
use paddock_runtime::{Runtime, RuntimeOptions};

#[derive(Debug, Parser)]
#[command(
    name = "paddock-runtime",
    version,
    about = "Paddock's in-sandbox agent (envd protocol)"
)]
struct Args {
    /// Address to serve the envd protocol on.
    #[arg(long, default_value = "0.0.0.0:49983", env = "PADDOCK_RUNTIME_LISTEN")]
    listen: SocketAddr,
    /// Require this token in `X-Access-Token` on every request but /health.
    #[arg(long, env = "PADDOCK_RUNTIME_ACCESS_TOKEN", hide_env_values = true)]
    access_token: Option<String>,
    /// User for requests that name none; created if missing.
    #[arg(long, default_value = "user")]
    default_user: String,
    /// Working directory for processes that name none (default: the user's home).
    #[arg(long)]
    default_workdir: Option<PathBuf>,
    /// Log filter, e.g. `info` or `paddock_runtime=debug`.
    #[arg(long, default_value = "info", env = "PADDOCK_LOG")]
    log: String,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_new(&args.log).context("invalid --log filter")?,
        )
        .with_writer(std::io::stderr)
        .init();

    let opts = RuntimeOptions {
        access_token: args.access_token,
        default_user: args.default_user,
        default_workdir: args.default_workdir,
        ..RuntimeOptions::default()
    };
    let rt = Runtime::new(opts);
    rt.prepare().context("preparing the default user")?;

    let shutdown = async {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            .expect("installing a SIGTERM handler");
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = term.recv() => {}
        }
        tracing::info!("shutting down");
    };
    paddock_runtime::serve(rt, args.listen, shutdown)
        .await
        .with_context(|| format!("serving on {}", args.listen))
}
