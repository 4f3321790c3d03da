//! The peer listener: route pushes from managers, probes and metrics.
//!
//! `POST /refresh` takes a [`RouteUpdate`] with `Authorization: Bearer <peer token>` (401
//! without it, 400 on a bad body, 204 once handled: a push older than the table's route is
//! dropped, and still answered 204, since the sender can do nothing better about it);
//! `GET /healthz` answers while the process runs; `GET /readyz` only once the first full
//! list of Sandboxes is in, and no more once shutdown begins; `GET /metrics` is Prometheus.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use axum::Router;
use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use paddock_gateway::peer::{REFRESH_PATH, RouteUpdate};

use crate::metrics::RouteMetrics;
use crate::source::from_push;
use crate::table::{Outcome, RouteTable};

/// Largest push body taken (a route is a few hundred bytes).
pub const MAX_PUSH_BYTES: usize = 64 * 1024;

/// Renders the whole metrics registry.
pub type Exporter = Arc<dyn Fn() -> String + Send + Sync>;

pub struct PeerState {
    pub table: Arc<RouteTable>,
    /// The shared peer token; `None` refuses every push.
    pub token: Option<String>,
    pub metrics: RouteMetrics,
    pub export: Exporter,
    /// Set when shutdown begins: `/readyz` turns 503 so the Service stops sending traffic.
    pub stopping: Arc<AtomicBool>,
}

pub fn router(state: Arc<PeerState>) -> Router {
    Router::new()
        .route(REFRESH_PATH, post(refresh))
        .route("/healthz", get(|| async { StatusCode::OK }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .with_state(state)
}

fn problem(status: StatusCode, message: impl Into<String>) -> Response {
    let body = serde_json::json!({"code": status.as_u16(), "message": message.into()});
    (status, axum::Json(body)).into_response()
}

fn authorized(token: Option<&str>, headers: &HeaderMap) -> bool {
    let Some(want) = token else { return false };
    headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .is_some_and(|got| paddock_contract::same_secret(got.trim().as_bytes(), want.as_bytes()))
}

async fn refresh(State(s): State<Arc<PeerState>>, req: Request) -> Response {
    // The token before the body: an unauthenticated sender costs no body read.
    if !authorized(s.token.as_deref(), req.headers()) {
        RouteMetrics::count(&s.metrics.pushes, "unauthorized");
        let why = if s.token.is_some() {
            "route pushes need `Authorization: Bearer <peer token>`"
        } else {
            "this gateway has no peer token (PADDOCK_PEER_TOKEN or --peer-token-file): route pushes are refused"
        };
        return problem(StatusCode::UNAUTHORIZED, why);
    }
    let invalid = |message: String| {
        RouteMetrics::count(&s.metrics.pushes, "invalid");
        problem(StatusCode::BAD_REQUEST, message)
    };
    let body = match axum::body::to_bytes(req.into_body(), MAX_PUSH_BYTES).await {
        Ok(b) => b,
        Err(e) => {
            return invalid(format!(
                "reading the body (at most {MAX_PUSH_BYTES} bytes): {e}"
            ));
        }
    };
    let update: RouteUpdate = match serde_json::from_slice(&body) {
        Ok(u) => u,
        Err(e) => return invalid(format!("the body is not a route update: {e}")),
    };
    let o = match from_push(update) {
        Ok(o) => o,
        Err(e) => return invalid(e.to_string()),
    };
    let outcome = s.table.apply(&o.id, o.version, o.change);
    tracing::debug!(sandbox = %o.id, version = ?o.version, ?outcome, "route push");
    RouteMetrics::count(
        &s.metrics.pushes,
        match outcome {
            Outcome::Applied => "applied",
            Outcome::Stale => "stale",
        },
    );
    StatusCode::NO_CONTENT.into_response()
}

async fn readyz(State(s): State<Arc<PeerState>>) -> Response {
    if s.stopping.load(Ordering::Acquire) {
        return (StatusCode::SERVICE_UNAVAILABLE, "shutting down").into_response();
    }
    if s.table.is_synced() {
        (StatusCode::OK, "ok").into_response()
    } else {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            "waiting for the first list of Sandboxes",
        )
            .into_response()
    }
}

async fn metrics(State(s): State<Arc<PeerState>>) -> Response {
    s.metrics.routes.set(s.table.len() as i64);
    let body = (s.export)();
    Response::builder()
        .header(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )
        .body(Body::from(body))
        .unwrap_or_else(|_| StatusCode::INTERNAL_SERVER_ERROR.into_response())
}

#[cfg(test)]
mod tests {
    use http_body_util::BodyExt;
    use tower::ServiceExt;

    use super::*;

    fn state(token: Option<&str>) -> Arc<PeerState> {
        let mut registry = prometheus_client::registry::Registry::default();
        let metrics = RouteMetrics::register(&mut registry);
        let registry = Arc::new(registry);
        Arc::new(PeerState {
            table: Arc::new(RouteTable::default()),
            token: token.map(Into::into),
            metrics,
            export: Arc::new(move || {
                let mut out = String::new();
                prometheus_client::encoding::text::encode(&mut out, &registry).unwrap();
                out
            }),
            stopping: Arc::default(),
        })
    }

    async fn call(s: &Arc<PeerState>, req: axum::http::Request<Body>) -> (StatusCode, String) {
        let resp = router(s.clone()).oneshot(req).await.unwrap();
        let status = resp.status();
        let body = resp.into_body().collect().await.unwrap().to_bytes();
        (status, String::from_utf8_lossy(&body).into_owned())
    }

    fn push(auth: Option<&str>, body: &str) -> axum::http::Request<Body> {
        let mut b = axum::http::Request::post(REFRESH_PATH);
        if let Some(a) = auth {
            b = b.header("authorization", a);
        }
        b.header("content-type", "application/json")
            .body(Body::from(body.to_string()))
            .unwrap()
    }

    const RUNNING: &str = r#"{"sandboxID":"ns--a","ip":"10.217.0.5","state":"running","accessToken":"t","resourceVersion":"12"}"#;

    #[tokio::test]
    async fn pushes_need_the_peer_token() {
        let s = state(Some("s3cret"));
        for auth in [None, Some("Bearer wrong"), Some("s3cret"), Some("Basic s3cret")] {
            let (status, body) = call(&s, push(auth, RUNNING)).await;
            assert_eq!(status, 401, "{auth:?}: {body}");
        }
        assert!(s.table.lookup("ns--a").is_none());
        // without a configured token every push is refused, even one with no header
        let none = state(None);
        let (status, body) = call(&none, push(Some("Bearer "), RUNNING)).await;
        assert_eq!(status, 401);
        assert!(body.contains("no peer token"), "{body}");
    }

    #[tokio::test]
    async fn a_good_push_routes_at_once_and_bad_bodies_are_400() {
        let s = state(Some("s3cret"));
        let (status, _) = call(&s, push(Some("Bearer s3cret"), RUNNING)).await;
        assert_eq!(status, 204);
        let r = s.table.lookup("ns--a").unwrap();
        assert_eq!(r.ip.to_string(), "10.217.0.5");
        assert_eq!(r.tokens.access.as_deref(), Some("t"));
        for bad in [
            "not json",
            r#"{"sandboxID":"ns--a","state":"running","resourceVersion":"13"}"#,
            r#"{"sandboxID":"ns--a","state":"sleeping"}"#,
            r#"{"sandboxID":"NS/a","state":"dead"}"#,
            r#"{"sandboxID":"ns--a","state":"dead","resourceVersion":"x"}"#,
        ] {
            let (status, body) = call(&s, push(Some("Bearer s3cret"), bad)).await;
            assert_eq!(status, 400, "{bad}: {body}");
        }
        let huge = format!(
            r#"{{"sandboxID":"ns--a","state":"dead","accessToken":"{}"}}"#,
            "x".repeat(MAX_PUSH_BYTES)
        );
        assert_eq!(call(&s, push(Some("Bearer s3cret"), &huge)).await.0, 400);
        // none of them touched the route
        assert!(s.table.lookup("ns--a").is_some());
        // a dead push older than the route is dropped; a newer one removes it
        let dead = |rv: &str| format!(r#"{{"sandboxID":"ns--a","state":"dead","resourceVersion":"{rv}"}}"#);
        assert_eq!(call(&s, push(Some("Bearer s3cret"), &dead("11"))).await.0, 204);
        assert!(s.table.lookup("ns--a").is_some());
        assert_eq!(call(&s, push(Some("Bearer s3cret"), &dead("14"))).await.0, 204);
        assert!(s.table.lookup("ns--a").is_none());
        let (_, metrics) = call(&s, axum::http::Request::get("/metrics").body(Body::empty()).unwrap()).await;
        for line in [
            r#"paddock_gateway_route_pushes_total{result="applied"} 2"#,
            r#"paddock_gateway_route_pushes_total{result="stale"} 1"#,
            r#"paddock_gateway_route_pushes_total{result="invalid"} 6"#,
            "paddock_gateway_route_table_size 0",
        ] {
            assert!(metrics.contains(line), "{line} not in {metrics}");
        }
    }

    #[tokio::test]
    async fn ready_only_after_the_first_sync_and_not_while_stopping() {
        let s = state(None);
        let get = |p: &str| axum::http::Request::get(p).body(Body::empty()).unwrap();
        assert_eq!(call(&s, get("/healthz")).await.0, 200);
        assert_eq!(call(&s, get("/readyz")).await.0, 503);
        s.table.mark_synced();
        assert_eq!(call(&s, get("/readyz")).await.0, 200);
        s.stopping.store(true, Ordering::Release);
        assert_eq!(call(&s, get("/readyz")).await.0, 503);
        assert_eq!(call(&s, get("/healthz")).await.0, 200);
    }
}
