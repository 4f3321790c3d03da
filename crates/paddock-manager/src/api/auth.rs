//! API-key authentication: every route behind it learns who is calling.

use axum::extract::{Request, State};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use paddock_infra::Infra;

use super::M;
use super::extract::Caller;
use crate::error::ApiError;
use crate::keys::Team;

/// The key from `X-API-Key`, or from `Authorization: Bearer`.
fn presented_key(h: &http::HeaderMap) -> Option<String> {
    h.get("x-api-key")
        .and_then(|v| v.to_str().ok())
        .or_else(|| {
            h.get("authorization")
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.strip_prefix("Bearer "))
        })
        .map(str::trim)
        .map(str::to_string)
}

/// Refuses a request without a valid key (401); otherwise files its [`Caller`] in the
/// request's extensions for the extractors. With authentication turned off, every caller is
/// the admin team.
pub async fn authenticate<I: Infra>(State(m): M<I>, mut req: Request, next: Next) -> Response {
    if !m.config.auth_enabled {
        req.extensions_mut().insert(Caller {
            team: Team::Admin,
            key: None,
        });
        return next.run(req).await;
    }
    let Some(key) = presented_key(req.headers()) else {
        return ApiError::unauthorized("missing API key: send it in the X-API-Key header")
            .into_response();
    };
    match m.keys.authenticate(&key) {
        Some((team, key)) => {
            req.extensions_mut().insert(Caller { team, key });
            next.run(req).await
        }
        None => ApiError::unauthorized("invalid API key").into_response(),
    }
}
