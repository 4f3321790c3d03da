//! Assembling the HTTP application and serving it.

use std::net::SocketAddr;
use std::sync::Arc;

use axum::Router;
use axum::extract::DefaultBodyLimit;
use axum::routing::{get, post};
use tower_http::trace::TraceLayer;

use crate::auth::require_token;
use crate::filesystem::FilesystemService;
use crate::http::{files, info, init};
use crate::process::ProcessService;
use crate::state::Runtime;

/// The code interpreter's HTTP surface (port 49999).
pub fn interpreter_app(rt: Arc<Runtime>, config: crate::interpreter::KernelConfig) -> Router {
    crate::interpreter::router(rt, config).layer(TraceLayer::new_for_http())
}

/// The runtime's whole HTTP surface: Connect services plus envd's routes.
pub fn app(rt: Arc<Runtime>) -> Router {
    let connect = connectrpc::Router::new()
        .add_service(Arc::new(ProcessService::new(rt.clone())))
        .add_service(Arc::new(FilesystemService::new(rt.clone())));
    Router::new()
        .route("/health", get(info::health))
        .route(
            "/files",
            get(files::download)
                .post(files::upload)
                // Uploads stream to disk: the runtime's own cap (`--max-upload-bytes`)
                // bounds them and answers in envd's error shape.
                .layer(DefaultBodyLimit::disable()),
        )
        .route("/init", post(init::init))
        .route("/envs", get(info::envs))
        .route("/metrics", get(info::metrics))
        .with_state(rt.clone())
        // Everything else is a Connect procedure (or an `unimplemented` error).
        .fallback_service(connect.into_axum_service())
        // Outermost: the token check sees every request, including RPCs.
        .layer(axum::middleware::from_fn_with_state(rt, require_token))
        .layer(TraceLayer::new_for_http())
}

/// Serves `router` on `addr` (HTTP/1.1 and h2c) until `shutdown` resolves.
pub async fn serve(
    router: Router,
    addr: SocketAddr,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    use axum::serve::ListenerExt;
    let listener = tokio::net::TcpListener::bind(addr).await?;
    tracing::info!(addr = %listener.local_addr()?, "listening");
    // Small responses must not wait for delayed ACKs (see DESIGN.md).
    let listener = listener.tap_io(|tcp| {
        let _ = tcp.set_nodelay(true);
    });
    axum::serve(listener, router)
        .with_graceful_shutdown(shutdown)
        .await
}
