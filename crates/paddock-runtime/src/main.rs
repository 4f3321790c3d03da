//! `paddock-runtime`: the agent inside every Paddock sandbox.

use std::ffi::OsString;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use clap::Parser;
use paddock_runtime::{Runtime, RuntimeOptions, launch};

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
    #[arg(long, default_value = paddock_contract::DEFAULT_USER)]
    default_user: String,
    /// Working directory for processes that name none (default: the user's home).
    #[arg(long)]
    default_workdir: Option<PathBuf>,
    /// Address of the code interpreter (`/execute`, `/contexts`).
    #[arg(
        long,
        default_value = "0.0.0.0:49999",
        env = "PADDOCK_CODE_INTERPRETER_LISTEN"
    )]
    code_interpreter_listen: SocketAddr,
    /// Do not serve the code interpreter.
    #[arg(long)]
    no_code_interpreter: bool,
    /// Python interpreter with ipykernel for code contexts.
    #[arg(long, default_value = "python3", env = "PADDOCK_KERNEL_PYTHON")]
    kernel_python: String,
    /// Most directory watches live at once; each is an inotify instance
    /// charged to host root, whose limit (fs.inotify.max_user_instances,
    /// 128 by default) the whole host shares.
    #[arg(long, default_value_t = paddock_runtime::DEFAULT_MAX_WATCHERS, env = "PADDOCK_RUNTIME_MAX_WATCHERS")]
    max_watchers: usize,
    /// Most code contexts clients may create (`POST /contexts`) alive at
    /// once; each is a kernel process of its own.
    #[arg(long, default_value_t = paddock_runtime::interpreter::DEFAULT_MAX_CONTEXTS, env = "PADDOCK_CODE_INTERPRETER_MAX_CONTEXTS")]
    max_contexts: usize,
    /// Most bytes one upload (`POST /files`) may write, after gzip
    /// decoding; larger ones get 413 and leave no file. Unset: no cap
    /// beyond the sandbox's disk.
    #[arg(long, env = "PADDOCK_RUNTIME_MAX_UPLOAD_BYTES")]
    max_upload_bytes: Option<u64>,
    /// Do not serve `sudo` (nor link it into /usr/local/bin): for a runtime run outside a
    /// sandbox, whose /usr and /run are the host's (hack/scratch-runtime sets it).
    #[arg(long, env = "PADDOCK_RUNTIME_NO_SUDO")]
    no_sudo: bool,
    /// Log filter, e.g. `info` or `paddock_runtime=debug`.
    #[arg(long, default_value = "info", env = "PADDOCK_LOG")]
    log: String,
    /// Copy this binary to DIR/paddock-runtime and exit (an injection init container).
    // Not `exclusive`: clap counts values from the environment (PADDOCK_KERNEL_PYTHON and the
    // like, which an image or a Pod may well set) as given, and the copy would then refuse to
    // run. It conflicts with `--detach` (which has no environment variable), the one option
    // that would suggest a mistaken command line; the others are ignored.
    #[arg(long, value_name = "DIR", conflicts_with = "detach")]
    install_to: Option<PathBuf>,
    /// Start in the background (a new session, output to --log-file) and exit 0 once serving
    /// on --listen (a `postStart` hook); exit non-zero if the runtime fails to start.
    #[arg(long)]
    detach: bool,
    /// Where a detached runtime writes its log (the child gets every argument but --detach,
    /// so these two are accepted without it).
    #[arg(long, default_value = "/tmp/paddock-runtime.log")]
    log_file: PathBuf,
    /// How long --detach waits for the runtime to listen.
    #[arg(long, default_value_t = 30)]
    detach_wait_secs: u64,
}

fn main() -> anyhow::Result<()> {
    // On the host, as a sandbox's log relay (the embedded infra starts it; see
    // `paddock_contract::caplog`): nothing else of the runtime runs.
    let argv: Vec<OsString> = std::env::args_os().collect();
    if let Some(log) = paddock_contract::caplog::relay_log(&argv) {
        std::process::exit(paddock_contract::caplog::relay(&log));
    }
    // As a sandbox's boot-id hook (see `paddock_contract::bootid`), likewise.
    if let Some((file, rootfs)) = paddock_contract::bootid::hook_args(&argv) {
        if let Err(e) = paddock_contract::bootid::bind(&file, &rootfs) {
            eprintln!("boot id of {}: {e}", rootfs.display());
            std::process::exit(1);
        }
        std::process::exit(0);
    }
    // Linked as `sudo` inside sandboxes (see `paddock_runtime::sudo`).
    if paddock_runtime::sudo::called_as_sudo() {
        let args: Vec<String> = std::env::args().skip(1).collect();
        std::process::exit(paddock_runtime::sudo::client(&args));
    }
    // Before anything else opens a descriptor (see `paddock_runtime::ready`).
    let ready = paddock_runtime::ready::take();
    let args = Args::parse();
    // Both run before any thread exists: `--detach` re-executes this binary.
    if let Some(dir) = &args.install_to {
        let exe = std::env::current_exe().context("locating this binary")?;
        let dest = launch::install(&exe, dir)?;
        println!("{}", dest.display());
        return Ok(());
    }
    if args.detach {
        let exe = std::env::current_exe().context("locating this binary")?;
        let child_args: Vec<OsString> = std::env::args_os()
            .skip(1)
            .filter(|a| a != "--detach")
            .collect();
        let pid = launch::detach(
            &exe,
            &child_args,
            &args.log_file,
            args.listen,
            Duration::from_secs(args.detach_wait_secs),
        )?;
        println!("{pid}");
        return Ok(());
    }
    launch::become_session_leader();
    // One thread drives every request: the runtime mostly waits on sockets and pipes, and its
    // blocking work (files, users, sudo requests) goes to tokio's blocking pool, whose threads
    // end after 10 s idle. An idle sandbox's runtime is thus one thread. It was the main
    // thread plus two workers: the kernel walks every thread on the host in each new
    // sandbox's `pivot_root`, and with 1,000 sandboxes that walk was 5.7 % of the host's CPU
    // time (and each thread costs its stacks).
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?
        .block_on(serve(args, ready))
}

/// Serves the envd protocol and the code interpreter; says so on `ready` (the embedded host's
/// pipe, if it gave one) once both listen.
async fn serve(args: Args, ready: Option<std::os::fd::OwnedFd>) -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_new(&args.log).context("invalid --log filter")?,
        )
        .with_writer(std::io::stderr)
        .init();

    raise_file_limit();

    let opts = RuntimeOptions {
        access_token: args.access_token,
        default_user: args.default_user,
        default_workdir: args.default_workdir,
        max_watchers: args.max_watchers,
        max_upload_bytes: args.max_upload_bytes,
        ..RuntimeOptions::default()
    };
    let rt = Runtime::new(opts);
    rt.prepare_in_background(!args.no_sudo);

    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let stopped = move || {
        let mut rx = stop_rx.clone();
        async move {
            let _ = rx.wait_for(|s| *s).await;
        }
    };
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .context("installing a SIGTERM handler")?;
    tokio::spawn(async move {
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = term.recv() => {}
        }
        tracing::info!("shutting down");
        let _ = stop_tx.send(true);
    });

    // Both ports listen before the host hears that the runtime does: a client may use either
    // as soon as its create returns.
    let envd_listener = paddock_runtime::listen(args.listen)
        .await
        .with_context(|| format!("listening on {}", args.listen))?;
    let interpreter_listener = if args.no_code_interpreter {
        None
    } else {
        Some(
            paddock_runtime::listen(args.code_interpreter_listen)
                .await
                .with_context(|| {
                    format!(
                        "listening for the code interpreter on {}",
                        args.code_interpreter_listen
                    )
                })?,
        )
    };
    if let Some(fd) = ready {
        paddock_runtime::ready::notify(fd);
    }
    let envd =
        paddock_runtime::serve_on(envd_listener, paddock_runtime::app(rt.clone()), stopped());
    let interpreter = async {
        let Some(listener) = interpreter_listener else {
            return Ok(());
        };
        let config = paddock_runtime::interpreter::KernelConfig {
            max_contexts: args.max_contexts,
            ..paddock_runtime::interpreter::KernelConfig::new(args.kernel_python.clone())
        };
        paddock_runtime::serve_on(
            listener,
            paddock_runtime::interpreter_app(rt.clone(), config),
            stopped(),
        )
        .await
        .with_context(|| {
            format!(
                "serving the code interpreter on {}",
                args.code_interpreter_listen
            )
        })
    };
    let envd = async {
        envd.await
            .with_context(|| format!("serving on {}", args.listen))
    };
    tokio::try_join!(envd, interpreter)?;
    Ok(())
}

/// Raises the soft open-file limit to the hard one. Sandboxes start with the conventional soft
/// limit of 1024, which a runtime serving many connections, watches and processes can
/// exhaust; the hard limit is the real bound (the sandbox's own processes may raise their soft
/// limit to it just the same, so this grants nothing new).
fn raise_file_limit() {
    use rustix::process::{Resource, getrlimit, setrlimit};
    let mut lim = getrlimit(Resource::Nofile);
    if lim.current != lim.maximum {
        let before = lim.current;
        lim.current = lim.maximum;
        match setrlimit(Resource::Nofile, lim) {
            Ok(()) => tracing::debug!(?before, now = ?lim.current, "raised the open-file limit"),
            Err(e) => tracing::warn!(error = %e, "could not raise the open-file limit"),
        }
    }
}
