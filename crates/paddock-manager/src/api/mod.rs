//! The E2B REST routes (both the v1 and the v2 families the SDKs use), one module per
//! resource. [`router`] builds them; [`extract`] holds what every handler starts from (the
//! caller, their sandbox, a body whose rejections follow the API's error format).

mod auth;
mod create;
mod extensions;
mod extract;
mod keys;
mod lifecycle;
mod logs;
mod metrics;
mod sandboxes;
mod snapshots;
mod templates;
mod validate;

#[cfg(test)]
mod tests;

use std::sync::Arc;

use axum::Router;
use axum::extract::{Request, State};
use axum::http::StatusCode;
use axum::middleware::Next;
use axum::response::Response;
use axum::routing::{delete, get, post};
use paddock_infra::Infra;

use crate::Manager;
use crate::error::ApiError;

pub(crate) use extensions::{end_at_json, never_ends};

/// The manager as handlers see it.
type M<I> = State<Arc<Manager<I>>>;
type ApiResult<T = Response> = Result<T, ApiError>;

/// Encodes every metric of the process in Prometheus text format.
pub type Exporter = Arc<dyn Fn() -> String + Send + Sync>;

/// Where the original serves its API besides the root (`/kruise/api/sandboxes`, ...).
pub const KRUISE_API_PREFIX: &str = "/kruise/api";

/// This API's OpenAPI document.
pub const OPENAPI: &str = include_str!("../../openapi/openapi.json");

/// The routes, behind API-key authentication (except `/health` and
/// `/openapi.json`). `/metrics` (admin key) serves what `exporter` encodes.
///
/// Every route is served twice: at its own path, and under [`KRUISE_API_PREFIX`], where
/// clients written for the original (its "customized protocol", e.g. its SDK patch that sets
/// the API URL to `<domain>/kruise/api`) find the API. One router serves both, in every mode.
pub fn router<I: Infra>(manager: Arc<Manager<I>>, exporter: Exporter) -> Router {
    let api = Router::new()
        .route(
            "/sandboxes",
            post(create::create_v1::<I>).get(sandboxes::list_v1::<I>),
        )
        .route(
            "/v2/sandboxes",
            post(create::create_v2::<I>).get(sandboxes::list_v2::<I>),
        )
        .route(
            "/sandboxes/{id}",
            get(sandboxes::detail::<I>).delete(sandboxes::kill::<I>),
        )
        .route("/sandboxes/{id}/connect", post(lifecycle::connect::<I>))
        .route("/v2/sandboxes/{id}/connect", post(lifecycle::connect::<I>))
        .route("/sandboxes/{id}/resume", post(lifecycle::connect::<I>))
        .route("/sandboxes/{id}/timeout", post(lifecycle::set_timeout::<I>))
        .route("/sandboxes/{id}/refreshes", post(lifecycle::refresh::<I>))
        .route("/sandboxes/{id}/pause", post(lifecycle::pause::<I>))
        .route("/sandboxes/{id}/metrics", get(metrics::sandbox::<I>))
        .route("/sandboxes/{id}/logs", get(logs::v1::<I>))
        .route("/v2/sandboxes/{id}/logs", get(logs::v2::<I>))
        .route("/sandboxes/{id}/snapshots", post(snapshots::create::<I>))
        .route("/sandboxes/{id}/fork", post(snapshots::fork::<I>))
        .route("/snapshots", get(snapshots::list::<I>))
        .route("/templates/{id}", delete(snapshots::delete::<I>))
        .route("/templates", get(templates::list::<I>))
        .route("/templates/aliases/{alias}", get(templates::alias::<I>))
        .route("/api-keys", post(keys::create::<I>).get(keys::list::<I>))
        .route("/api-keys/{id}", delete(keys::delete::<I>))
        .route("/teams", get(keys::teams::<I>))
        .route("/metrics", get(metrics::prometheus::<I>))
        .layer(axum::Extension(metrics::ExporterHandle(exporter)))
        .layer(axum::middleware::from_fn_with_state(
            manager.clone(),
            auth::authenticate::<I>,
        ));
    let all = Router::new()
        .route("/health", get(|| async { StatusCode::OK }))
        .route(
            "/openapi.json",
            get(|| async { ([("content-type", "application/json")], OPENAPI) }),
        )
        .merge(api);
    Router::new()
        .merge(all.clone())
        .nest(KRUISE_API_PREFIX, all)
        .fallback(|| async { ApiError::not_found("no such route") })
        .route_layer(axum::middleware::from_fn_with_state(
            manager.clone(),
            observe::<I>,
        ))
        .with_state(manager)
}

/// Counts and times every request by its route pattern.
async fn observe<I: Infra>(State(m): M<I>, req: Request, next: Next) -> Response {
    let started = std::time::Instant::now();
    let method = req.method().to_string();
    let route = req
        .extensions()
        .get::<axum::extract::MatchedPath>()
        .map(|p| p.as_str().to_string())
        .unwrap_or_else(|| "unmatched".into());
    let span = tracing::info_span!("api", %method, %route);
    let resp = tracing::Instrument::instrument(next.run(req), span).await;
    let labels = crate::metrics::RouteLabels {
        method,
        route,
        status: resp.status().as_u16(),
    };
    m.metrics.requests.get_or_create(&labels).inc();
    m.metrics
        .request_seconds
        .get_or_create(&labels)
        .observe(started.elapsed().as_secs_f64());
    resp
}
