//! Listing, reading and killing sandboxes.

use std::collections::BTreeMap;
use std::time::SystemTime;

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
    /// `asc` or `desc` (the default) by start time, across the whole result before paging.
    order: Option<String>,
    /// RFC 3339: only sandboxes started at or after it.
    started_after: Option<String>,
    /// RFC 3339: only sandboxes started at or before it (the counterpart the API offers beside
    /// `startedAfter`; the SDKs of this era send only the latter).
    started_before: Option<String>,
    /// A template id or name.
    template: Option<String>,
}

/// Which way a list runs by start time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Order {
    Asc,
    Desc,
}

impl ListQuery {
    fn order(&self) -> ApiResult<Order> {
        match self.order.as_deref().map(str::trim) {
            None | Some("") | Some("desc") => Ok(Order::Desc),
            Some("asc") => Ok(Order::Asc),
            Some(other) => Err(ApiError::bad_request(format!(
                "unknown order '{other}': use asc or desc"
            ))),
        }
    }
}

/// An RFC 3339 time of the `name` query parameter, if given.
fn time_param(name: &str, raw: Option<&str>) -> ApiResult<Option<SystemTime>> {
    let Some(raw) = raw.map(str::trim).filter(|s| !s.is_empty()) else {
        return Ok(None);
    };
    time::OffsetDateTime::parse(raw, &time::format_description::well_known::Rfc3339)
        .map(|t| Some(SystemTime::from(t)))
        .map_err(|_| {
            ApiError::bad_request(format!(
                "{name} must be an RFC 3339 time (2006-01-02T15:04:05Z07:00), got '{raw}'"
            ))
        })
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

/// The caller's sandboxes in `q.state` (or `default_states`) matching the metadata, start time
/// and template filters, newest first unless `q.order` is `asc`.
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
    let order = q.order()?;
    let after = time_param("startedAfter", q.started_after.as_deref())?;
    let before = time_param("startedBefore", q.started_before.as_deref())?;
    let template = q
        .template
        .as_deref()
        .map(str::trim)
        .filter(|t| !t.is_empty());
    let mut list: Vec<_> = m
        .records
        .all()
        .into_iter()
        .filter(|r| caller.team.sees(&r.team) && states.contains(&r.state))
        .filter(|r| filter.iter().all(|(k, v)| r.metadata.get(k) == Some(v)))
        .filter(|r| after.is_none_or(|t| r.started_at >= t))
        .filter(|r| before.is_none_or(|t| r.started_at <= t))
        .filter(|r| template.is_none_or(|t| same_template(&r.template, t)))
        .collect();
    // By start time, ties broken by id so pages are stable.
    list.sort_by(|a, b| {
        let by_start = match order {
            Order::Desc => b.started_at.cmp(&a.started_at),
            Order::Asc => a.started_at.cmp(&b.started_at),
        };
        by_start.then_with(|| a.id.cmp(&b.id))
    });
    Ok(list)
}

/// Whether a sandbox of `template` matches the `template` filter `wanted`: its id/name, or
/// that with a tag (`base:latest`; templates here have one version, the default tag).
fn same_template(template: &str, wanted: &str) -> bool {
    let name = wanted.split_once(':').map_or(wanted, |(n, _)| n);
    template == wanted || template == name
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
    // The route goes first: while the sandbox is torn down, requests to it (the SDK's health
    // probe after a stream it had open broke) are answered "not found" at once instead of
    // waiting on an address that no longer answers. A kill that fails puts the record back,
    // so it can be retried instead of leaving an untracked sandbox.
    m.records.remove(id).await?;
    match m.infra.kill(id).await {
        Ok(()) | Err(InfraError::NotFound(_)) => {}
        Err(e) => {
            if let Err(again) = m.records.insert(s.record.clone()).await {
                tracing::error!(sandbox = %id, error = %again, "restoring the record of a sandbox whose kill failed");
            }
            return Err(e.into());
        }
    }
    tracing::info!(sandbox = %id, "sandbox killed");
    Ok(StatusCode::NO_CONTENT.into_response())
}
