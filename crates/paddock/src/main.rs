//! `paddock`: the one binary. `paddock up` runs the embedded product —
//! manager, gateway and sandbox infrastructure — in one process.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::{Context, bail};
use axum::extract::Request;
use axum::response::IntoResponse;
use clap::{Parser, Subcommand};
use paddock_embedded::{EmbeddedConfig, EmbeddedInfra};
use paddock_gateway::{Gateway, GatewayMetrics, RouteInfo, Thresholds, Tokens};
use paddock_manager::{Manager, ManagerConfig, ManagerMetrics, RouteTable, admin_key};
use tower::ServiceExt;

mod gateway;
mod kubernetes;
mod manager;

#[derive(Debug, Parser)]
#[command(
    name = "paddock",
    version,
    about = "Sandboxes for AI agents, spoken to with the E2B SDKs"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run manager, gateway and embedded sandboxes on this host.
    Up(UpArgs),
    /// List or build sandbox templates.
    #[command(subcommand)]
    Template(TemplateCommand),
    /// Print the agents.kruise.io CRDs (or write them with --out DIR).
    Crds(kubernetes::CrdsArgs),
    /// Run the Kubernetes Sandbox Controller (reconcilers, webhooks) against KUBECONFIG.
    Controller(kubernetes::ControllerArgs),
    /// Run the Sandbox Manager (the E2B API) against the agents.kruise.io resources.
    Manager(manager::ManagerArgs),
    /// Run the Sandbox Gateway on Kubernetes: routes from a watch of Sandboxes and from
    /// the managers' pushes.
    Gateway(gateway::GatewayArgs),
}

#[derive(Debug, Subcommand)]
enum TemplateCommand {
    /// The templates, whether each is built, and its recipe hash.
    List(TemplateArgs),
    /// Build a template now (it is otherwise built on first use), with progress.
    Build {
        name: String,
        #[command(flatten)]
        args: TemplateArgs,
    },
}

#[derive(Debug, clap::Args)]
struct TemplateArgs {
    /// Where Paddock keeps its state (templates are cached in `<data dir>/templates`).
    #[arg(long, env = "PADDOCK_DATA_DIR", default_value = "/var/lib/paddock")]
    data_dir: PathBuf,
}

#[derive(Debug, clap::Args)]
struct UpArgs {
    /// Address for both the API and the data plane.
    #[arg(long, default_value = "127.0.0.1:3000")]
    listen: SocketAddr,
    /// Where Paddock keeps its state.
    #[arg(long, env = "PADDOCK_DATA_DIR", default_value = "/var/lib/paddock")]
    data_dir: PathBuf,
    /// The sandboxes' bridge. It names the instance's host-wide set (nftables tables, veth
    /// prefix, cgroup parent): a second `paddock up` on one host needs a bridge and a
    /// `--subnet` of its own, and is refused while another instance holds them.
    #[arg(long, default_value = "pdkbr0")]
    bridge: String,
    /// The sandboxes' address range (the bridge takes the first address).
    #[arg(long, default_value = "10.213.0.0/16")]
    subnet: paddock_embedded::network::Cidr,
    /// Domain for host-routed data-plane traffic (`<port>-<id>.<domain>`).
    #[arg(long, default_value = "localhost")]
    domain: String,
    /// The admin API key; generated (and kept in the data dir, mode 0600) when absent.
    /// Prefer `PADDOCK_ADMIN_API_KEY` or `--admin-api-key-file`: argv is visible to every user
    /// of the host.
    #[arg(long, env = "PADDOCK_ADMIN_API_KEY", hide_env_values = true)]
    admin_api_key: Option<String>,
    /// A file holding the admin API key.
    #[arg(long, conflicts_with = "admin_api_key")]
    admin_api_key_file: Option<PathBuf>,
    /// The static runtime injected into sandboxes.
    #[arg(long, env = "PADDOCK_RUNTIME_BIN")]
    runtime: Option<PathBuf>,
    /// Longest sandbox timeout, seconds.
    #[arg(long, default_value_t = 2_592_000)]
    max_timeout: u64,
    /// Warm sandboxes kept ready per template at least (the pool's minimum); 0 = no pool
    /// unless --pool-max sets one.
    #[arg(long, default_value_t = 2)]
    pool_size: usize,
    /// The most warm sandboxes a template's pool grows to under demand; default from host
    /// memory (at most 128).
    #[arg(long)]
    pool_max: Option<usize>,
    /// Seconds of an idle period: after each, a pool shrinks to what its busiest moment
    /// needed (its minimum when nothing was claimed).
    #[arg(long, default_value_t = paddock_embedded::config::DEFAULT_POOL_IDLE.as_secs())]
    pool_idle_secs: u64,
    /// Pool sandboxes made at once, all templates together; default 4 per CPU.
    #[arg(long)]
    pool_fill_concurrency: Option<usize>,
    /// What a create does when its template's pool is empty: `wait` for the next sandbox the
    /// pool makes (the pool makes one per waiting create), or make a `cold` one of its own.
    #[arg(long, default_value = "wait")]
    pool_on_empty: paddock_embedded::config::OnEmpty,
    /// Milliseconds a refill waits after a claim while the pool still has sandboxes ready,
    /// so the claimed sandbox's first requests do not compete with a cold create.
    #[arg(long, default_value_t = paddock_embedded::config::DEFAULT_REFILL_GRACE.as_millis() as u64)]
    pool_refill_grace_ms: u64,
    /// Sandbox creations in progress at once; more wait their turn.
    #[arg(long, default_value_t = paddock_manager::DEFAULT_MAX_CLAIM_WORKERS)]
    max_claim_workers: usize,
    /// Cold sandbox creations per second (pool refills included); 0 = unlimited.
    #[arg(long, default_value_t = paddock_embedded::config::DEFAULT_MAX_CREATE_QPS)]
    max_create_qps: f64,
    /// Disk limit of every sandbox whose request sets none, MiB (the built-in templates take
    /// it as theirs).
    #[arg(long, default_value_t = paddock_embedded::config::DEFAULT_DISK_BYTES >> 20)]
    default_disk_mb: u64,
    /// How disk limits are enforced: `image` (a sparse ext4 image on a loop device) or
    /// `tmpfs` (counts against the sandbox's memory limit).
    #[arg(long, default_value = "image")]
    disk_backend: paddock_embedded::disk::DiskBackend,
    /// User namespaces of sandboxes: `on` maps sandbox root to host uid 100000 (65536 ids),
    /// `BASE:SIZE` to another range, `off` runs sandbox root as host root.
    #[arg(long, env = "PADDOCK_USERNS", default_value = "on", value_parser = parse_userns)]
    userns: UsernsArg,
    /// Gateway circuit breaker: open connections to sandboxes.
    #[arg(long, default_value_t = Thresholds::default().max_connections)]
    gateway_max_connections: usize,
    /// Gateway circuit breaker: requests waiting for response headers.
    #[arg(long, default_value_t = Thresholds::default().max_pending_requests)]
    gateway_max_pending_requests: usize,
    /// Gateway circuit breaker: requests in flight.
    #[arg(long, default_value_t = Thresholds::default().max_requests)]
    gateway_max_requests: usize,
    /// Gateway circuit breaker: retries in flight.
    #[arg(long, default_value_t = Thresholds::default().max_retries)]
    gateway_max_retries: usize,
    /// Gateway circuit breaker: requests in flight to one sandbox, WebSockets included (its
    /// share of --gateway-max-requests, so one sandbox's traffic cannot starve the others').
    #[arg(long, default_value_t = Thresholds::default().max_requests_per_sandbox)]
    gateway_max_requests_per_sandbox: usize,
    /// Seconds an upgraded connection (WebSocket) may stay silent both ways before the gateway
    /// closes it.
    #[arg(long, default_value_t = Thresholds::default().upgrade_idle_timeout.as_secs())]
    gateway_upgrade_idle_timeout_secs: u64,
    /// Threads accepting and serving connections (both planes), each with its own event loop
    /// and its own connections to sandboxes; default one per CPU.
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..=1024))]
    gateway_workers: Option<u64>,
}

/// The manager's routes, as the gateway wants them.
struct Routes(RouteTable);

fn route_info(r: paddock_manager::Route) -> RouteInfo {
    RouteInfo {
        ip: r.ip,
        paused: r.paused,
        tokens: Tokens {
            access: Some(r.access_token),
            traffic: r.traffic_token,
        },
    }
}

impl paddock_gateway::Routes for Routes {
    fn lookup(&self, id: &str) -> Option<RouteInfo> {
        self.0.get(id).map(route_info)
    }

    fn list(&self) -> Vec<(String, RouteInfo)> {
        self.0
            .all()
            .into_iter()
            .map(|(id, r)| (id, route_info(r)))
            .collect()
    }
}

/// Wake on traffic in `paddock up`: the embedded manager resumes the sandbox.
struct ManagerWaker {
    manager: Arc<Manager<EmbeddedInfra>>,
    routes: Routes,
    rt: tokio::runtime::Handle,
}

impl paddock_gateway::Waker for ManagerWaker {
    fn wake<'a>(&'a self, id: &'a str) -> paddock_gateway::Waking<'a> {
        use paddock_gateway::Routes as _;
        Box::pin(async move {
            // The manager's work runs on the manager's runtime, not on a gateway worker.
            let manager = self.manager.clone();
            let owned = id.to_string();
            let woken = on_runtime(&self.rt, async move { manager.wake(&owned).await }).await;
            let woken = match woken {
                Ok(w) => w,
                Err(_) => return paddock_gateway::Woken::Failed("shutting down".into()),
            };
            match woken {
                Ok(Some(_)) => match self.routes.lookup(id) {
                    Some(r) => paddock_gateway::Woken::Resumed(r),
                    None => paddock_gateway::Woken::NotWakeable,
                },
                Ok(None) => paddock_gateway::Woken::NotWakeable,
                // Our own failures stay in the log: their details (paths, kernel errors)
                // are not the caller's business.
                Err(e) if e.is_client_error() => paddock_gateway::Woken::Failed(e.to_string()),
                Err(e) => {
                    tracing::error!(sandbox = id, error = %e, "waking a sandbox failed");
                    paddock_gateway::Woken::Failed("internal error".into())
                }
            }
        })
    }
}

fn main() -> anyhow::Result<()> {
    // The container helper re-executes this binary; it must run before any thread exists.
    if let Some(code) = paddock_embedded::container::run_helper_if_requested() {
        std::process::exit(code);
    }
    let cli = Cli::parse();
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?
        .block_on(async move {
            match cli.command {
                Command::Up(args) => up(args).await,
                Command::Template(cmd) => template(cmd).await,
                Command::Crds(args) => kubernetes::crds(args),
                Command::Controller(args) => kubernetes::controller(args).await,
                Command::Manager(args) => manager::run(args).await,
                Command::Gateway(args) => gateway::gateway(args).await,
            }
        })
}

/// The template cache: `PADDOCK_TEMPLATE_CACHE`, else `<data dir>/templates`.
fn templates_dir(data_dir: &std::path::Path) -> PathBuf {
    std::env::var_os(paddock_embedded::TEMPLATE_CACHE_ENV)
        .map(PathBuf::from)
        .unwrap_or_else(|| data_dir.join("templates"))
}

async fn template(cmd: TemplateCommand) -> anyhow::Result<()> {
    let data_dir = match &cmd {
        TemplateCommand::List(a) | TemplateCommand::Build { args: a, .. } => a.data_dir.clone(),
    };
    let cache = templates_dir(&data_dir);
    let templates = paddock_embedded::Templates::new(
        cache,
        [
            paddock_embedded::TemplateSpec::base(),
            paddock_embedded::TemplateSpec::code_interpreter(),
        ],
    );
    match cmd {
        TemplateCommand::List(_) => {
            println!("{:24} {:8} RECIPE", "NAME", "STATE");
            for spec in templates.specs() {
                let built = templates.layers(&spec.name)?.is_some();
                let state = if built { "built" } else { "not built" };
                println!(
                    "{:24} {:8} {}",
                    spec.name,
                    state,
                    templates.hash(&spec.name)?
                );
            }
        }
        TemplateCommand::Build { name, args } => {
            templates.get(&name)?;
            tracing_subscriber::fmt()
                .with_env_filter(
                    tracing_subscriber::EnvFilter::try_from_default_env()
                        .unwrap_or_else(|_| "warn,paddock::template=info".into()),
                )
                .with_writer(std::io::stderr)
                .init();
            // Build steps run in containers on the sandbox bridge (security review M6), so
            // the build goes through the embedded infrastructure of the data dir — refused
            // while a `paddock up` holds it (that one builds on first use anyway).
            let mut cfg = paddock_embedded::EmbeddedConfig::from_env(PathBuf::new());
            cfg.data_dir = args.data_dir.join("embedded");
            cfg.template_cache = templates_dir(&args.data_dir);
            let infra = EmbeddedInfra::start(cfg)
                .await
                .context("starting the embedded infrastructure for the build")?;
            let layers = infra.build_template(&name).await?;
            println!("built: {} layer(s)", layers.len());
        }
    }
    Ok(())
}

fn admin_key(args: &UpArgs) -> anyhow::Result<(String, admin_key::Source)> {
    Ok(admin_key::resolve(
        args.admin_api_key.as_deref(),
        args.admin_api_key_file.as_deref(),
        &args.data_dir,
    )?)
}

fn runtime_binary(args: &UpArgs) -> anyhow::Result<PathBuf> {
    if let Some(p) = &args.runtime {
        return Ok(p.clone());
    }
    let beside = std::env::current_exe()?.with_file_name("paddock-runtime");
    if beside.is_file() {
        return Ok(beside);
    }
    bail!(
        "no paddock-runtime binary: pass --runtime PATH (a static build of crates/paddock-runtime)"
    )
}

async fn up(args: UpArgs) -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| {
                "info,libcontainer=error,libcgroups=error,tower_http=warn".into()
            }),
        )
        .with_writer(std::io::stderr)
        .init();
    // Sandbox roots live below the data dir: host users must not reach them (security review H1).
    paddock_embedded::private_dir::create_private_dir(&args.data_dir)
        .with_context(|| format!("creating {}", args.data_dir.display()))?;
    let (key, key_source) = admin_key(&args)?;
    let runtime = runtime_binary(&args)?;
    anyhow::ensure!(
        runtime.is_file(),
        "runtime binary {} not found",
        runtime.display()
    );
    let cfg = infra_config(&args, runtime)?;
    // Every sandbox's log relay on the host (the config picks the relay's own binary beside
    // the runtime, or the runtime binary itself).
    let relay = cfg.relay_binary.clone();
    tracing::debug!(relay = %relay.display(), "log relay binary");
    tokio::task::spawn_blocking(move || paddock_embedded::logrelay::check(&relay))
        .await
        .context("checking the log relay binary")??;

    // Before any sandbox exists: a full bridge of them needs more than the host defaults.
    match paddock_embedded::host_limits::raise_open_files() {
        Ok((soft, _)) => tracing::debug!(open_files = soft, "open-file limit"),
        Err(e) => tracing::warn!(error = %e, "could not raise the open-file limit"),
    }
    paddock_embedded::host_limits::raise_all();
    tracing::info!(data_dir = %args.data_dir.display(), "starting embedded infrastructure");
    let net = cfg.net.clone();
    let infra = EmbeddedInfra::start(cfg)
        .await
        .context("starting the embedded infrastructure")?;
    for t in ["base", "code-interpreter-v1"] {
        tracing::info!(template = t, "preparing template (built once, then cached)");
        infra
            .build_template(t)
            .await
            .with_context(|| format!("building template {t}"))?;
    }
    infra.start_pools();
    let infra = Arc::new(infra);

    let mut registry = prometheus_client::registry::Registry::default();
    let manager_metrics = ManagerMetrics::register(&mut registry);
    let gateway_metrics = GatewayMetrics::register(&mut registry);
    let manager = Manager::start(
        infra.clone(),
        ManagerConfig {
            admin_api_key: key.clone(),
            max_timeout_secs: args.max_timeout,
            data_dir: args.data_dir.clone(),
            envd_version: paddock_contract::ENVD_VERSION.into(),
            max_claim_workers: args.max_claim_workers,
            auth_enabled: true,
            // `paddock up` serves the data plane on its one address (E2B_SANDBOX_URL); a domain
            // would send SDKs without that setting to `<port>-<id>.<domain>` instead.
            domain: None,
        },
        manager_metrics,
    )
    .await?;
    // Sandboxes that outlived a crash of an earlier run are served again.
    manager
        .reconcile()
        .await
        .context("matching sandbox records with running sandboxes")?;
    let gateway = Gateway::new(
        Arc::new(Routes(manager.routes())),
        Thresholds {
            max_connections: args.gateway_max_connections,
            max_pending_requests: args.gateway_max_pending_requests,
            max_requests: args.gateway_max_requests,
            max_retries: args.gateway_max_retries,
            max_requests_per_sandbox: args.gateway_max_requests_per_sandbox,
            upgrade_idle_timeout: std::time::Duration::from_secs(
                args.gateway_upgrade_idle_timeout_secs,
            ),
        },
        gateway_metrics,
    )
    .with_waker(Arc::new(ManagerWaker {
        manager: manager.clone(),
        routes: Routes(manager.routes()),
        rt: tokio::runtime::Handle::current(),
    }));
    let registry = Arc::new(registry);
    let exporter: paddock_manager::Exporter = {
        let gateway = gateway.clone();
        Arc::new(move || {
            gateway.refresh_gauges();
            let mut out = String::new();
            if let Err(e) = prometheus_client::encoding::text::encode(&mut out, &registry) {
                tracing::warn!(error = %e, "encoding metrics failed");
            }
            out
        })
    };
    let api = paddock_manager::router(manager.clone(), exporter);
    // The manager's API runs on this (multi-thread) runtime, as before the workers: its
    // handlers (creates, kills, waits) must not hold up the data plane's connections that
    // share a worker's thread.
    let main_rt = tokio::runtime::Handle::current();
    // Each worker serves with a gateway of its own (its own sandbox connection pools), one
    // reference count per request rather than a copy of the gateway's dozen handles; no
    // router: the data plane's requests would pay for its matching and boxing on every
    // request.
    let app = move |_worker: usize| {
        let gateway = Arc::new(gateway.for_worker());
        let api = api.clone();
        let main_rt = main_rt.clone();
        tower::service_fn(move |req: Request| {
            let gateway = gateway.clone();
            let api = api.clone();
            let main_rt = main_rt.clone();
            async move {
                // The request is read for its target once: the gateway routes on what it found.
                let resp = if let Some(claim) = gateway.claim(&req) {
                    gateway.forward_claim(req, claim).await
                } else {
                    match on_runtime(&main_rt, api.oneshot(req)).await {
                        Ok(resp) => resp.into_response(),
                        Err(_) => axum::http::StatusCode::SERVICE_UNAVAILABLE.into_response(),
                    }
                };
                Ok::<_, std::convert::Infallible>(resp)
            }
        })
    };

    let listener = paddock_gateway::workers::bind(args.listen)
        .with_context(|| format!("binding {}", args.listen))?;
    let url = format!("http://{}", listener.local_addr()?);
    println!("Paddock is up. Point the E2B SDKs at it:");
    println!("export E2B_API_URL={url}");
    println!("export E2B_SANDBOX_URL={url}");
    // The key itself is shown only when it was just generated: anyone who can read this
    // output (logs, a terminal recording) would hold the admin key (audit H2).
    match &key_source {
        admin_key::Source::Generated(path) => {
            println!("export E2B_API_KEY={key}");
            println!("# a new admin API key, kept in {}", path.display());
        }
        admin_key::Source::File(path) => {
            println!("export E2B_API_KEY=$(cat {})", path.display());
        }
        admin_key::Source::Given => {
            println!("# E2B_API_KEY: the admin API key you gave Paddock");
        }
    }
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .context("installing a SIGTERM handler")?;
    let workers = args
        .gateway_workers
        .map_or_else(paddock_gateway::workers::default_count, |n| n as usize);
    let mut workers = paddock_gateway::workers::Workers::start(listener, workers, app)
        .context("starting the gateway's worker threads")?;
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
    // In-flight requests finish and open connections end before the sandboxes go.
    let drained = workers.drain().await;
    tracing::info!("shutting down: killing sandboxes");
    let killed = infra.kill_all().await;
    workers.close().await;
    drained?;
    killed?;
    // Nothing of ours stays on the host: bridge, addresses, firewall table.
    paddock_embedded::network::teardown_host(&net)
        .await
        .context("removing the sandbox network")?;
    Ok(())
}

/// Runs `work` on `rt` and waits for it there; dropping the wait (the client went away)
/// cancels it, as if it had run in place.
async fn on_runtime<T: Send + 'static>(
    rt: &tokio::runtime::Handle,
    work: impl std::future::Future<Output = T> + Send + 'static,
) -> Result<T, tokio::task::JoinError> {
    struct AbortOnDrop<T>(tokio::task::JoinHandle<T>);
    impl<T> Drop for AbortOnDrop<T> {
        fn drop(&mut self) {
            self.0.abort();
        }
    }
    let mut task = AbortOnDrop(rt.spawn(work));
    match (&mut task.0).await {
        // A panic goes on where the work was awaited, as it would have in place.
        Err(e) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
        // Cancelled: only when the runtime shuts down.
        done => done,
    }
}

fn infra_config(args: &UpArgs, runtime: PathBuf) -> anyhow::Result<EmbeddedConfig> {
    let mut cfg = EmbeddedConfig::from_env(runtime);
    cfg.net = paddock_embedded::network::NetConfig::for_bridge(&args.bridge, args.subnet)?;
    if cfg.net.bridge != paddock_embedded::network::NetConfig::default().bridge {
        cfg.cgroup_parent = format!("paddock-{}", args.bridge);
    }
    cfg.data_dir = args.data_dir.join("embedded");
    if std::env::var_os(paddock_embedded::TEMPLATE_CACHE_ENV).is_none() {
        cfg.template_cache = args.data_dir.join("templates");
    }
    cfg.default_disk_bytes = args.default_disk_mb << 20;
    cfg.disk_backend = args.disk_backend;
    for t in &mut cfg.templates {
        t.pool_size = args.pool_size;
        t.limits.disk_bytes = Some(cfg.default_disk_bytes);
    }
    cfg.max_create_qps = args.max_create_qps;
    cfg.userns = args.userns.0;
    cfg.pool.max = args.pool_max;
    cfg.pool.idle = std::time::Duration::from_secs(args.pool_idle_secs);
    if let Some(n) = args.pool_fill_concurrency {
        anyhow::ensure!(n > 0, "--pool-fill-concurrency must be at least 1");
        cfg.pool.fill_concurrency = n;
    }
    cfg.pool.on_empty = args.pool_on_empty;
    cfg.pool.refill_grace = std::time::Duration::from_millis(args.pool_refill_grace_ms);
    Ok(cfg)
}

/// `--userns`: the range, or `None` for off.
#[derive(Clone, Debug)]
struct UsernsArg(Option<paddock_embedded::userns::IdRange>);

fn parse_userns(s: &str) -> Result<UsernsArg, String> {
    paddock_embedded::userns::IdRange::parse_setting(s).map(UsernsArg)
}
