//! Assembling the HTTP application and serving it.

use std::net::SocketAddr;
use std::sync::Arc;

use axum::Router;
use axum::extract::{DefaultBodyLimit, Request, State};
use axum::http::StatusCode;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use tower_http::trace::TraceLayer;

use crate::auth::require_token;
use crate::errors::HttpError;
use crate::filesystem::FilesystemService;
use crate::http::{files, info, init};
use crate::process::ProcessService;
use crate::state::Runtime;

/// The code interpreter's HTTP surface (port 49999).
pub fn interpreter_app(rt: Arc<Runtime>, config: crate::interpreter::KernelConfig) -> Router {
    crate::interpreter::router(rt.clone(), config)
        .layer(axum::middleware::from_fn_with_state(rt, wait_prepared))
        .layer(TraceLayer::new_for_http())
}

/// Middleware: every request but `/health` waits until the default user is prepared (see
/// [`Runtime::prepare_in_background`]), and fails with 500 if it could not be.
async fn wait_prepared(State(rt): State<Arc<Runtime>>, req: Request, next: Next) -> Response {
    let path = req.uri().path();
    if path == "/health" {
        return next.run(req).await;
    }
    match rt.prepared().await {
        Ok(()) => next.run(req).await,
        Err(why) => {
            let message = format!("the default user could not be prepared: {why}");
            if crate::auth::is_rpc(path) {
                let body = serde_json::json!({ "code": "internal", "message": message });
                return (
                    StatusCode::INTERNAL_SERVER_ERROR,
                    [(axum::http::header::CONTENT_TYPE, "application/json")],
                    body.to_string(),
                )
                    .into_response();
            }
            HttpError::new(StatusCode::INTERNAL_SERVER_ERROR, message).into_response()
        }
    }
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
        .layer(axum::middleware::from_fn_with_state(
            rt.clone(),
            wait_prepared,
        ))
        // Outermost: the token check sees every request, including RPCs.
        .layer(axum::middleware::from_fn_with_state(rt, require_token))
        .layer(TraceLayer::new_for_http())
}

/// Listens on `addr`: connections are accepted (and wait in the backlog) from here on, before
/// [`serve_on`] answers them.
pub async fn listen(addr: SocketAddr) -> std::io::Result<tokio::net::TcpListener> {
    let listener = tokio::net::TcpListener::bind(addr).await?;
    tracing::info!(addr = %listener.local_addr()?, "listening");
    Ok(listener)
}

/// Serves `router` on `listener` (HTTP/1.1 and h2c) until `shutdown` resolves.
pub async fn serve_on(
    listener: tokio::net::TcpListener,
    router: Router,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    use axum::serve::ListenerExt;
    // Small responses must not wait for delayed ACKs (see DESIGN.md).
    let listener = listener.tap_io(|tcp| {
        let _ = tcp.set_nodelay(true);
    });
    axum::serve(listener, router)
        .with_graceful_shutdown(shutdown)
        .await
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::{Prepared, RuntimeOptions};
    use axum::body::Body;
    use tower::ServiceExt;

    fn get(path: &str) -> Request {
        Request::builder()
            .uri(path)
            .body(Body::empty())
            .expect("request")
    }

    /// While the default user is being made, `/health` answers and everything else waits;
    /// when it could not be made, requests fail with why.
    #[tokio::test]
    async fn requests_but_health_wait_for_the_default_user() {
        let rt = Runtime::new(RuntimeOptions::default());
        rt.set_prepared(Prepared::Pending);
        let app = app(rt.clone());
        let health = app.clone().oneshot(get("/health")).await.expect("health");
        assert!(health.status().is_success(), "{}", health.status());

        let envs = tokio::spawn(app.clone().oneshot(get("/envs")));
        for _ in 0..100 {
            tokio::task::yield_now().await;
        }
        assert!(!envs.is_finished(), "answered before the user was ready");
        rt.set_prepared(Prepared::Ready);
        let envs = envs.await.expect("join").expect("envs");
        assert_eq!(envs.status(), StatusCode::OK);

        rt.set_prepared(Prepared::Failed("no free uid".into()));
        let failed = app.oneshot(get("/envs")).await.expect("envs");
        assert_eq!(failed.status(), StatusCode::INTERNAL_SERVER_ERROR);
        let body = axum::body::to_bytes(failed.into_body(), 1 << 16)
            .await
            .expect("body");
        let body = String::from_utf8_lossy(&body);
        assert!(body.contains("no free uid"), "{body}");
    }
}
