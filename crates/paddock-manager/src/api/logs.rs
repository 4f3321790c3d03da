//! A sandbox's runtime log, v1 and v2 (the selection rules are in [`crate::logs`]).

use axum::Json;
use axum::extract::State;
use axum::response::IntoResponse;
use paddock_infra::Infra;
use serde::Deserialize;

use super::extract::{OwnedSandbox, Query};
use super::{ApiResult, M};

#[derive(Debug, Default, Deserialize)]
pub struct V1Query {
    start: Option<u64>,
    limit: Option<usize>,
}

/// `GET /sandboxes/{id}/logs?start&limit`.
pub async fn v1<I: Infra>(State(m): M<I>, s: OwnedSandbox, Query(q): Query<V1Query>) -> ApiResult {
    let lines = m.infra.logs(&s.record.id).await?;
    Ok(Json(crate::logs::v1(&lines, q.start, q.limit)).into_response())
}

/// `GET /v2/sandboxes/{id}/logs?cursor&limit&direction&level&search`.
pub async fn v2<I: Infra>(
    State(m): M<I>,
    s: OwnedSandbox,
    Query(q): Query<crate::logs::V2Query>,
) -> ApiResult {
    let lines = m.infra.logs(&s.record.id).await?;
    Ok(Json(crate::logs::v2(&lines, &q)?).into_response())
}
