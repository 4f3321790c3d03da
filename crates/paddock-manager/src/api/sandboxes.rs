//! Listing, reading and killing sandboxes.

use std::collections::BTreeMap;

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::IntoResponse;
use paddock_infra::{Infra, InfraError};
use serde::Deserialize;
use serde_json::Value;

use super::extract::{Caller, OwnedSandbox, Query};
use super::{ApiResult, M};
use crate::Manager;
use crate::error::ApiError;
use crate::records::{ApiState, RecordJson, SandboxRecord};

/// Most sandboxes one v2 list page holds.
const MAX_PAGE: usize = 100;

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ListQuery {
    metadata: Option<String>,
    state: Option<String>,
    limit: Option<usize>,
    next_token: Option<String>,
}

/// The `metadata` filter: itself a URL-encoded `k=v&k2=v2` query string.
fn query_pairs(raw: &str) -> BTreeMap<String, String> {
    raw.split('&')
        .filter(|p| !p.is_empty())
        .filter_map(|p| {
            let (k, v) = p.split_once('=').unwrap_or((p, ""));
            Some((percent_decode(k)?, percent_decode(v)?))
        })
        .collect()
}

fn percent_decode(s: &str) -> Option<String> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'%' => {
                let h = std::str::from_utf8(bytes.get(i + 1..i + 3)?).ok()?;
                out.push(u8::from_str_radix(h, 16).ok()?);
                i += 3;
            }
            b'+' => {
                out.push(b' ');
                i += 1;
            }
            b => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8(out).ok()
}

/// The caller's sandboxes in `q.state` (or `default_states`) matching the metadata filter,
/// newest first.
fn list_filtered<I: Infra>(
    m: &Manager<I>,
    caller: &Caller,
    q: &ListQuery,
    default_states: &[ApiState],
) -> ApiResult<Vec<SandboxRecord>> {
    let states: Vec<ApiState> = match q.state.as_deref().filter(|s| !s.is_empty()) {
        None => default_states.to_vec(),
        Some(s) => s
            .split(',')
            .map(|x| match x.trim() {
                "running" => Ok(ApiState::Running),
                "paused" => Ok(ApiState::Paused),
                other => Err(ApiError::bad_request(format!(
                    "unknown state '{other}': use running or paused"
                ))),
            })
            .collect::<Result<_, _>>()?,
    };
    let filter = q.metadata.as_deref().map(query_pairs).unwrap_or_default();
    let mut list: Vec<_> = m
        .records
        .all()
        .into_iter()
        .filter(|r| caller.team.sees(&r.team) && states.contains(&r.state))
        .filter(|r| filter.iter().all(|(k, v)| r.metadata.get(k) == Some(v)))
        .collect();
    // Newest first, ties broken by id so pages are stable.
    list.sort_by(|a, b| {
        b.started_at
            .cmp(&a.started_at)
            .then_with(|| a.id.cmp(&b.id))
    });
    Ok(list)
}

/// `GET /sandboxes`: running sandboxes, unpaged.
pub async fn list_v1<I: Infra>(
    State(m): M<I>,
    caller: Caller,
    Query(q): Query<ListQuery>,
) -> ApiResult {
    let list = list_filtered(&m, &caller, &q, &[ApiState::Running])?;
    let body: Vec<Value> = list
        .iter()
        .map(|r| r.listed_json(&m.config.envd_version))
        .collect();
    Ok(Json(body).into_response())
}

/// `GET /v2/sandboxes`: running and paused sandboxes, paged by `limit` and `nextToken`.
pub async fn list_v2<I: Infra>(
    State(m): M<I>,
    caller: Caller,
    Query(q): Query<ListQuery>,
) -> ApiResult {
    let list = list_filtered(&m, &caller, &q, &[ApiState::Running, ApiState::Paused])?;
    let limit = q.limit.unwrap_or(MAX_PAGE);
    if !(1..=MAX_PAGE).contains(&limit) {
        return Err(ApiError::bad_request("limit must be between 1 and 100"));
    }
    let start = match q.next_token.as_deref().filter(|t| !t.is_empty()) {
        None => 0,
        Some(t) => list
            .iter()
            .position(|r| r.id.as_str() == t)
            .ok_or_else(|| ApiError::bad_request("invalid nextToken"))?,
    };
    let page = &list[start..list.len().min(start + limit)];
    let body: Vec<Value> = page
        .iter()
        .map(|r| r.listed_json(&m.config.envd_version))
        .collect();
    let mut resp = Json(body).into_response();
    if let Some(next) = list.get(start + limit)
        && let Ok(v) = next.id.as_str().parse()
    {
        resp.headers_mut().insert("x-next-token", v);
    }
    Ok(resp)
}

/// `GET /sandboxes/{id}`.
pub async fn detail<I: Infra>(State(m): M<I>, s: OwnedSandbox) -> ApiResult {
    Ok(Json(
        s.record
            .detail_json(&m.config.envd_version, m.config.domain.as_deref()),
    )
    .into_response())
}

/// `DELETE /sandboxes/{id}`.
pub async fn kill<I: Infra>(State(m): M<I>, s: OwnedSandbox) -> ApiResult {
    let id = &s.record.id;
    // Forget the record only once the sandbox is really gone, so a failed
    // kill can be retried instead of leaving an untracked sandbox.
    match m.infra.kill(id).await {
        Ok(()) | Err(InfraError::NotFound(_)) => {}
        Err(e) => return Err(e.into()),
    }
    m.records.remove(id).await?;
    tracing::info!(sandbox = %id, "sandbox killed");
    Ok(StatusCode::NO_CONTENT.into_response())
}
