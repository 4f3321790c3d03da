//! `paddock manager`: the E2B API on Kubernetes. Flags → config → [`paddock_kube::KubeInfra`]
//! under [`paddock_manager::Manager`].

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, bail};
use paddock_kube::{KubeConfig, KubeInfra};
use paddock_manager::{Manager, ManagerConfig, ManagerMetrics};

#[derive(Debug, clap::Args)]
pub struct ManagerArgs {
    /// The API (also /health, and /metrics with the admin key).
    #[arg(long, default_value = "0.0.0.0:8080")]
    listen: SocketAddr,
    /// A namespace whose SandboxSets and Sandboxes are in scope (repeatable); all when absent.
    #[arg(long = "namespace")]
    namespaces: Vec<String>,
    /// Where the API key Secret and the gateway pods live.
    #[arg(long, env = "POD_NAMESPACE", default_value = "sandbox-system")]
    system_namespace: String,
    /// Name of the API key Secret in the system namespace.
    #[arg(long, default_value = "paddock-api-keys")]
    key_secret: String,
    /// The admin API key (also env E2B_ADMIN_API_KEY).
    #[arg(long, env = "PADDOCK_ADMIN_API_KEY", hide_env_values = true)]
    admin_api_key: Option<String>,
    /// A file holding the admin API key.
    #[arg(long, conflicts_with = "admin_api_key")]
    admin_api_key_file: Option<PathBuf>,
    /// `false`: no API keys are checked and every caller is the admin team.
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set)]
    enable_auth: bool,
    /// Creates in progress at once; more wait their turn.
    #[arg(long, default_value_t = paddock_manager::DEFAULT_MAX_CLAIM_WORKERS)]
    max_claim_workers: usize,
    /// New Sandboxes per second per replica when a pool is empty (token bucket).
    #[arg(long, default_value_t = 200.0)]
    max_create_qps: f64,
    /// Longest timeout a sandbox may be given, seconds.
    #[arg(long, default_value_t = 2_592_000)]
    max_timeout: u64,
    /// The domain returned in create answers (`<port>-<id>.<domain>`).
    #[arg(long)]
    domain: Option<String>,
    /// A gateway's peer listener (`http://host:7789`) to push routes to (repeatable).
    #[arg(long = "gateway-peer")]
    gateway_peers: Vec<String>,
    /// Label selector of the gateway pods in the system namespace (pushed at <podIP>:7789).
    #[arg(long)]
    gateway_selector: Option<String>,
    /// A file holding the peer token (else env PADDOCK_PEER_TOKEN).
    #[arg(long)]
    peer_token_file: Option<PathBuf>,
    /// A kubeconfig file; else KUBECONFIG or the in-cluster config.
    #[arg(long)]
    kubeconfig: Option<PathBuf>,
    /// How long a new (no stock) or resumed Sandbox may take to become Ready, seconds.
    #[arg(long, default_value_t = 120)]
    ready_timeout: u64,
}

/// A kube client from `--kubeconfig`, else KUBECONFIG / ~/.kube/config / in-cluster. Requests
/// fail fast when the API server is unreachable (the API answers 503, never hangs).
pub async fn kube_client(path: Option<&std::path::Path>) -> anyhow::Result<kube::Client> {
    let mut config = match path {
        Some(p) => {
            let kc = kube::config::Kubeconfig::read_from(p)
                .with_context(|| format!("reading kubeconfig {}", p.display()))?;
            kube::Config::from_custom_kubeconfig(kc, &Default::default())
                .await
                .with_context(|| format!("using kubeconfig {}", p.display()))?
        }
        None => kube::Config::infer()
            .await
            .context("no Kubernetes config: pass --kubeconfig, set KUBECONFIG or run in a pod")?,
    };
    config.connect_timeout = Some(Duration::from_secs(2));
    kube::Client::try_from(config).context("building the Kubernetes client")
}

/// How long the API goes on serving after SIGTERM (see `run`).
const DRAIN_DELAY: Duration = Duration::from_secs(5);

fn read_secret_file(p: &std::path::Path, what: &str) -> anyhow::Result<String> {
    let s =
        std::fs::read_to_string(p).with_context(|| format!("reading {what} {}", p.display()))?;
    let s = s.trim().to_string();
    if s.is_empty() {
        bail!("{what} {} is empty", p.display());
    }
    Ok(s)
}

fn uuid_like() -> String {
    let mut b = [0u8; 16];
    // /dev/urandom: the key is never shown, it only has to be unguessable.
    if let Ok(mut f) = std::fs::File::open("/dev/urandom") {
        use std::io::Read;
        let _ = f.read_exact(&mut b);
    }
    b.iter().map(|x| format!("{x:02x}")).collect()
}

pub async fn run(args: ManagerArgs) -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "info,kube_runtime=warn".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    let admin_key = match (&args.admin_api_key, &args.admin_api_key_file) {
        (Some(k), _) if !k.trim().is_empty() => k.trim().to_string(),
        (_, Some(f)) => read_secret_file(f, "admin API key file")?,
        _ => match std::env::var("E2B_ADMIN_API_KEY") {
            Ok(k) if !k.trim().is_empty() => k.trim().to_string(),
            // Without auth no key is checked; a random one keeps the admin key unguessable.
            _ if !args.enable_auth => uuid_like(),
            _ => bail!(
                "no admin API key: pass --admin-api-key, --admin-api-key-file or set \
                 PADDOCK_ADMIN_API_KEY / E2B_ADMIN_API_KEY"
            ),
        },
    };
    let peer_token = match &args.peer_token_file {
        Some(f) => Some(read_secret_file(f, "peer token file")?),
        None => std::env::var("PADDOCK_PEER_TOKEN")
            .ok()
            .filter(|t| !t.trim().is_empty()),
    };
    let client = kube_client(args.kubeconfig.as_deref()).await?;
    let infra = KubeInfra::start(
        client.clone(),
        KubeConfig {
            namespaces: args.namespaces.clone(),
            system_namespace: args.system_namespace.clone(),
            max_create_qps: args.max_create_qps,
            create_on_no_stock: true,
            gateway_peers: args.gateway_peers.clone(),
            gateway_selector: args.gateway_selector.clone(),
            peer_token,
            ready_timeout: Duration::from_secs(args.ready_timeout),
        },
    )
    .await
    .map_err(|e| anyhow::anyhow!("{e}"))?;
    tracing::info!(
        namespaces = ?args.namespaces,
        gateways = ?infra.gateway_targets(),
        "watching the agents.kruise.io resources"
    );

    // The records live in the Sandboxes (`Infra::records`), the keys in a Secret of the
    // system namespace: every replica sees both, none keeps state of its own. The data dir
    // is only the manager's scratch space (nothing is written there on this backend).
    let data_dir = std::env::temp_dir().join(format!("paddock-manager-{}", std::process::id()));
    let keys = paddock_manager::KeyStore::with_backend(
        Arc::new(paddock_kube::keys::SecretKeys::new(
            client,
            &args.system_namespace,
            &args.key_secret,
        )),
        &admin_key,
    )
    .await
    .map_err(|e| anyhow::anyhow!("{e}"))
    .with_context(|| {
        format!(
            "opening the API key Secret {}/{}",
            args.system_namespace, args.key_secret
        )
    })?;
    let mut registry = prometheus_client::registry::Registry::default();
    let metrics = ManagerMetrics::register(&mut registry);
    let manager = Manager::start_with_keys(
        Arc::new(infra),
        ManagerConfig {
            admin_api_key: admin_key,
            max_timeout_secs: args.max_timeout,
            data_dir,
            auth_enabled: args.enable_auth,
            envd_version: paddock_contract::ENVD_VERSION.into(),
            max_claim_workers: args.max_claim_workers,
            domain: args.domain.clone(),
        },
        metrics,
        keys,
    )?;
    let registry = Arc::new(registry);
    let exporter: paddock_manager::Exporter = Arc::new(move || {
        let mut out = String::new();
        if let Err(e) = prometheus_client::encoding::text::encode(&mut out, &registry) {
            tracing::warn!(error = %e, "encoding metrics failed");
        }
        out
    });
    let stopping = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let app = paddock_kube_routes::drain::close_when_stopping(
        paddock_manager::router(manager, exporter),
        stopping.clone(),
    );
    let listener = tokio::net::TcpListener::bind(args.listen)
        .await
        .with_context(|| format!("binding {}", args.listen))?;
    tracing::info!(listen = %listener.local_addr()?, "paddock manager is serving the E2B API");
    use axum::serve::ListenerExt;
    let listener = listener.tap_io(|tcp| {
        let _ = tcp.set_nodelay(true);
    });
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .context("installing a SIGTERM handler")?;
    // On SIGTERM the pod leaves the Service's endpoints: serve on for DRAIN_DELAY, closing
    // HTTP/1 connections after each response so clients reconnect to another replica, then
    // stop accepting and let in-flight requests finish.
    let stop = async move {
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = term.recv() => {}
        }
        stopping.store(true, std::sync::atomic::Ordering::Release);
        tracing::info!(delay = ?DRAIN_DELAY, "shutting down: draining connections");
        tokio::time::sleep(DRAIN_DELAY).await;
        tracing::info!("shutting down: waiting for in-flight requests");
    };
    axum::serve(listener, app)
        .with_graceful_shutdown(stop)
        .await
        .context("serving the API")
}
