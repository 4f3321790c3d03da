//! `paddock gateway`: the Sandbox Gateway on Kubernetes, on its own (flags → config → run).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use axum::http::HeaderName;
use paddock_gateway::{RoutingHeaders, Thresholds};

/// Env var holding the token managers send with route pushes.
pub const PEER_TOKEN_ENV: &str = "PADDOCK_PEER_TOKEN";

#[derive(Debug, clap::Args)]
pub struct GatewayArgs {
    /// The data plane: header, host (`<port>-<id>.<domain>`) and path (`/kruise/<id>/<port>/`)
    /// routing.
    #[arg(long, default_value = "0.0.0.0:10000")]
    listen: SocketAddr,
    /// Route pushes (`POST /refresh`), `/healthz`, `/readyz` and `/metrics`.
    #[arg(long, default_value_t = SocketAddr::from(([0, 0, 0, 0], paddock_gateway::peer::DEFAULT_PEER_PORT)))]
    peer_listen: SocketAddr,
    /// Route to Sandboxes of this namespace (repeatable); all namespaces when absent.
    #[arg(long = "namespace")]
    namespaces: Vec<String>,
    /// The host-routing domain.
    #[arg(long)]
    domain: Option<String>,
    /// A file holding the peer token managers push routes with (else env PADDOCK_PEER_TOKEN;
    /// with neither, pushes are refused).
    #[arg(long)]
    peer_token_file: Option<PathBuf>,
    /// Circuit breaker: open connections to sandboxes.
    #[arg(long, default_value_t = Thresholds::default().max_connections)]
    max_connections: usize,
    /// Circuit breaker: requests waiting for response headers.
    #[arg(long, default_value_t = Thresholds::default().max_pending_requests)]
    max_pending_requests: usize,
    /// Circuit breaker: requests in flight.
    #[arg(long, default_value_t = Thresholds::default().max_requests)]
    max_requests: usize,
    /// Circuit breaker: retries in flight.
    #[arg(long, default_value_t = Thresholds::default().max_retries)]
    max_retries: usize,
    /// Circuit breaker: requests in flight to one sandbox, WebSockets included (its share of
    /// --max-requests, so one sandbox's traffic cannot starve the others').
    #[arg(long, default_value_t = Thresholds::default().max_requests_per_sandbox)]
    max_requests_per_sandbox: usize,
    /// Seconds an upgraded connection (WebSocket) may stay silent both ways before the gateway
    /// closes it.
    #[arg(long, default_value_t = Thresholds::default().upgrade_idle_timeout.as_secs())]
    upgrade_idle_timeout_secs: u64,
    /// The header host routing (`<port>-<id>.<domain>`) reads (the chart's
    /// gateway.envoy.pluginConfig.hostHeaderName).
    #[arg(long, default_value = "host", value_parser = header_name)]
    host_header_name: HeaderName,
    /// The header naming the sandbox (pluginConfig.sandboxHeaderName).
    #[arg(long, default_value = "e2b-sandbox-id", value_parser = header_name)]
    sandbox_header_name: HeaderName,
    /// The header naming the port in the sandbox (pluginConfig.sandboxPortHeader).
    #[arg(long, default_value = "e2b-sandbox-port", value_parser = header_name)]
    sandbox_port_header: HeaderName,
    /// The port when a request names a sandbox by header but no port (pluginConfig.defaultPort).
    #[arg(long, default_value_t = paddock_gateway::DEFAULT_PORT, value_parser = clap::value_parser!(u16).range(1..))]
    default_port: u16,
    /// A kubeconfig file; else KUBECONFIG, ~/.kube/config or the in-cluster config.
    #[arg(long)]
    kubeconfig: Option<PathBuf>,
}

/// A header name as given (any case; HTTP header names are case-insensitive).
fn header_name(s: &str) -> Result<HeaderName, String> {
    HeaderName::from_bytes(s.trim().to_ascii_lowercase().as_bytes())
        .map_err(|_| format!("{s:?} is not a valid HTTP header name"))
}

/// After SIGTERM: how long to go on serving while the pod leaves the Service's endpoints
/// (HTTP/1 connections close after each response), then how long in-flight requests may run
/// on; both inside Kubernetes' default 30-second termination grace period.
const DRAIN_DELAY: Duration = Duration::from_secs(5);
const SHUTDOWN_GRACE: Duration = Duration::from_secs(20);

fn peer_token(file: Option<&PathBuf>) -> anyhow::Result<Option<String>> {
    let token = match file {
        Some(path) => Some(
            std::fs::read_to_string(path)
                .with_context(|| format!("reading --peer-token-file {}", path.display()))?,
        ),
        None => std::env::var(PEER_TOKEN_ENV).ok(),
    };
    match token.map(|t| t.trim().to_string()) {
        Some(t) if t.is_empty() => anyhow::bail!("the peer token is empty"),
        t => Ok(t),
    }
}

pub async fn gateway(args: GatewayArgs) -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    let config = paddock_kube_routes::Config {
        listen: args.listen,
        peer_listen: args.peer_listen,
        scope: paddock_kube_routes::Scope::of(args.namespaces),
        domain: args.domain,
        peer_token: peer_token(args.peer_token_file.as_ref())?,
        thresholds: Thresholds {
            max_connections: args.max_connections,
            max_pending_requests: args.max_pending_requests,
            max_requests: args.max_requests,
            max_retries: args.max_retries,
            max_requests_per_sandbox: args.max_requests_per_sandbox,
            upgrade_idle_timeout: std::time::Duration::from_secs(args.upgrade_idle_timeout_secs),
        },
        routing_headers: RoutingHeaders {
            host: args.host_header_name,
            sandbox: args.sandbox_header_name,
            port: args.sandbox_port_header,
            default_port: args.default_port,
        },
        kubeconfig: args.kubeconfig,
        drain_delay: DRAIN_DELAY,
        shutdown_grace: SHUTDOWN_GRACE,
    };
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .context("installing a SIGTERM handler")?;
    let stop = async move {
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = term.recv() => {}
        }
    };
    paddock_kube_routes::run(config, stop).await?;
    Ok(())
}
