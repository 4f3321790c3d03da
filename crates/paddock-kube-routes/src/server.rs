//! The `paddock gateway` process: the data plane on one listener, the peer listener on
//! another, the route table between them.

use std::future::{Future, IntoFuture};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use axum::Router;
use axum::extract::Request;
use axum::serve::ListenerExt;
use kube::Client;
use kube::config::{KubeConfigOptions, Kubeconfig};
use paddock_gateway::{Gateway, GatewayMetrics, RoutingHeaders, Thresholds};

use crate::Scope;
use crate::listener::{PeerState, router};
use crate::metrics::RouteMetrics;
use crate::routes::{ApiGetter, KubeRoutes};
use crate::table::RouteTable;
use crate::watch::{StartError, preflight, spawn};

pub struct Config {
    /// The data plane (header, host and path routing).
    pub listen: SocketAddr,
    /// `/refresh`, `/healthz`, `/readyz`, `/metrics`.
    pub peer_listen: SocketAddr,
    pub scope: Scope,
    /// The host-routing domain (`<port>-<id>.<domain>`), for the start-up log: the host
    /// parser takes any domain, as inside `paddock up`.
    pub domain: Option<String>,
    /// The shared peer token; `None` refuses every push.
    pub peer_token: Option<String>,
    pub thresholds: Thresholds,
    /// The header names requests name their sandbox and port with.
    pub routing_headers: RoutingHeaders,
    /// A kubeconfig file; else `KUBECONFIG`, `~/.kube/config` or the in-cluster config.
    pub kubeconfig: Option<PathBuf>,
    /// How long the data plane goes on serving once shutdown begins, not ready and closing
    /// HTTP/1 connections after each response ([`crate::drain`]), before it stops accepting.
    pub drain_delay: Duration,
    /// How long in-flight requests may run on after that.
    pub shutdown_grace: Duration,
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("kubeconfig {path}: {message}")]
    Kubeconfig { path: String, message: String },
    #[error("no Kubernetes configuration (KUBECONFIG, ~/.kube/config or in-cluster): {0}")]
    NoConfig(String),
    #[error("Kubernetes client: {0}")]
    Client(#[from] kube::Error),
    #[error(transparent)]
    Start(#[from] StartError),
    #[error("binding {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("serving: {0}")]
    Serve(#[source] std::io::Error),
}

async fn client(kubeconfig: Option<&PathBuf>) -> Result<Client, Error> {
    let config = match kubeconfig {
        Some(path) => {
            let bad = |message: String| Error::Kubeconfig {
                path: path.display().to_string(),
                message,
            };
            let kc = Kubeconfig::read_from(path).map_err(|e| bad(e.to_string()))?;
            kube::Config::from_custom_kubeconfig(kc, &KubeConfigOptions::default())
                .await
                .map_err(|e| bad(e.to_string()))?
        }
        None => kube::Config::infer()
            .await
            .map_err(|e| Error::NoConfig(e.to_string()))?,
    };
    Ok(Client::try_from(config)?)
}

async fn bind(addr: SocketAddr) -> Result<tokio::net::TcpListener, Error> {
    tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|source| Error::Bind { addr, source })
}

/// Runs the gateway until `shutdown` resolves, then stops accepting, lets in-flight
/// requests finish (at most `shutdown_grace`) and returns.
pub async fn run(config: Config, shutdown: impl Future<Output = ()> + Send) -> Result<(), Error> {
    let client = client(config.kubeconfig.as_ref()).await?;
    preflight(&client, &config.scope).await?;
    if config.peer_token.is_none() {
        tracing::warn!(
            "no peer token (PADDOCK_PEER_TOKEN or --peer-token-file): route pushes from managers are refused; routes come from the watch alone"
        );
    }

    let table = Arc::new(RouteTable::default());
    let mut registry = prometheus_client::registry::Registry::default();
    let gateway_metrics = GatewayMetrics::register(&mut registry);
    let route_metrics = RouteMetrics::register(&mut registry);
    spawn(&client, &config.scope, table.clone());
    let routes = KubeRoutes::new(
        table.clone(),
        Arc::new(ApiGetter(client)),
        config.scope.clone(),
        route_metrics.clone(),
    );
    let gateway = Gateway::new(Arc::new(routes), config.thresholds, gateway_metrics)
        .with_routing_headers(config.routing_headers.clone());

    let registry = Arc::new(registry);
    let export = {
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
    let stopping = Arc::new(AtomicBool::new(false));
    let peer_app = router(Arc::new(PeerState {
        table,
        token: config.peer_token,
        metrics: route_metrics,
        export,
        stopping: stopping.clone(),
    }));
    // Every request on the data plane is for a sandbox: the forward phase answers one that
    // names none with how to name one.
    let data_app = crate::drain::close_when_stopping(
        Router::new().fallback(move |req: Request| {
            let gateway = gateway.clone();
            async move { gateway.forward(req).await }
        }),
        stopping.clone(),
    );

    let data = bind(config.listen).await?;
    let peer = bind(config.peer_listen).await?;
    tracing::info!(
        listen = %data.local_addr().map_err(Error::Serve)?,
        peer_listen = %peer.local_addr().map_err(Error::Serve)?,
        scope = ?config.scope,
        domain = config.domain.as_deref().unwrap_or("(any)"),
        "paddock gateway serving"
    );
    let data = data.tap_io(|tcp| {
        let _ = tcp.set_nodelay(true);
    });
    let (stop_data, data_stopped) = tokio::sync::watch::channel(false);
    let (stop_peer, peer_stopped) = tokio::sync::watch::channel(false);
    let until = |mut rx: tokio::sync::watch::Receiver<bool>| async move {
        let _ = rx.wait_for(|s| *s).await;
    };
    let mut data_task = tokio::spawn(
        axum::serve(data, data_app)
            .with_graceful_shutdown(until(data_stopped))
            .into_future(),
    );
    let peer_task = tokio::spawn(
        axum::serve(peer, peer_app)
            .with_graceful_shutdown(until(peer_stopped))
            .into_future(),
    );

    tokio::select! {
        _ = shutdown => {}
        r = &mut data_task => {
            let e = match r {
                Ok(Ok(())) => std::io::Error::other("the data plane listener stopped"),
                Ok(Err(e)) => e,
                Err(e) => std::io::Error::other(e),
            };
            return Err(Error::Serve(e));
        }
    }
    // Not ready any more; the pod is leaving the Service's endpoints. Serve on for the drain
    // delay, closing HTTP/1 connections after each response so clients reconnect elsewhere,
    // then accept no more; in-flight requests get the grace period.
    stopping.store(true, Ordering::Release);
    tracing::info!(delay = ?config.drain_delay, "shutting down: draining connections");
    tokio::time::sleep(config.drain_delay).await;
    tracing::info!(grace = ?config.shutdown_grace, "shutting down: waiting for in-flight requests");
    let _ = stop_data.send(true);
    match tokio::time::timeout(config.shutdown_grace, &mut data_task).await {
        Ok(_) => tracing::info!("in-flight requests done"),
        Err(_) => {
            tracing::warn!("requests still in flight after the grace period: closing them");
            data_task.abort();
        }
    }
    let _ = stop_peer.send(true);
    let _ = tokio::time::timeout(Duration::from_secs(1), peer_task).await;
    Ok(())
}
