//! Draining an HTTP server that is about to stop (`paddock gateway`, `paddock manager`).
//!
//! A terminating pod leaves its Service's endpoints, but clients keep their kept-alive
//! connections to it. Closing those at once races with a client sending its next request on
//! one ("connection closed before message completed"). So, once stopping, every HTTP/1
//! response carries `Connection: close` for a while (the client's next request opens a new
//! connection, which the Service sends to another pod) before the server stops accepting
//! and closes what is idle. HTTP/2 needs no header: the server's graceful shutdown sends
//! GOAWAY, which tells the client which streams were not taken.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use axum::Router;
use axum::extract::{Request, State};
use axum::http::{HeaderValue, StatusCode, Version, header};
use axum::middleware::{Next, from_fn_with_state};
use axum::response::Response;

/// `router` with `Connection: close` on every HTTP/1 response once `stopping` is set.
pub fn close_when_stopping<S: Clone + Send + Sync + 'static>(
    router: Router<S>,
    stopping: Arc<AtomicBool>,
) -> Router<S> {
    router.layer(from_fn_with_state(stopping, close_if_stopping))
}

async fn close_if_stopping(
    State(stopping): State<Arc<AtomicBool>>,
    req: Request,
    next: Next,
) -> Response {
    let http1 = req.version() <= Version::HTTP_11;
    let mut resp = next.run(req).await;
    // Read after the response: a long request that ends during the drain closes too. An
    // upgrade's 101 keeps its `Connection: upgrade`.
    if http1 && resp.status() != StatusCode::SWITCHING_PROTOCOLS && stopping.load(Ordering::Acquire)
    {
        resp.headers_mut()
            .insert(header::CONNECTION, HeaderValue::from_static("close"));
    }
    resp
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::body::Body;
    use axum::routing::get;
    use tower::ServiceExt;

    async fn connection(app: &Router, version: Version) -> Option<String> {
        let req = Request::get("/")
            .version(version)
            .body(Body::empty())
            .unwrap();
        let resp = app.clone().oneshot(req).await.unwrap();
        assert_eq!(resp.status(), StatusCode::OK);
        resp.headers()
            .get(header::CONNECTION)
            .map(|v| v.to_str().unwrap().to_string())
    }

    #[tokio::test]
    async fn http1_responses_close_once_stopping() {
        let stopping = Arc::new(AtomicBool::new(false));
        let app = close_when_stopping(
            Router::new().route("/", get(|| async { "ok" })),
            stopping.clone(),
        );
        assert_eq!(connection(&app, Version::HTTP_11).await, None);
        stopping.store(true, Ordering::Release);
        assert_eq!(
            connection(&app, Version::HTTP_11).await.as_deref(),
            Some("close")
        );
        assert_eq!(
            connection(&app, Version::HTTP_10).await.as_deref(),
            Some("close")
        );
        // HTTP/2 forbids the header; its GOAWAY does the job
        assert_eq!(connection(&app, Version::HTTP_2).await, None);
    }
}
