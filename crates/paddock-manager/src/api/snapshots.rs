//! Snapshots and forks: `POST /sandboxes/{id}/snapshots`, `GET /snapshots`,
//! `DELETE /templates/{id}` (the SDK deletes a snapshot there, as E2B keeps snapshots as
//! templates) and `POST /sandboxes/{id}/fork`. Creating a sandbox from a snapshot goes
//! through the ordinary create (`templateID` naming the snapshot), see `create.rs`.
//!
//! Rules:
//! * A snapshot belongs to the team of the sandbox it was taken from; only that team (and
//!   the admin key) lists, uses and deletes it. Another team's snapshot is answered exactly
//!   like a missing one.
//! * Names are unique within a team, may not be a template's name (templates win when a
//!   create names one) and may not look like a snapshot id (`snap-…`).
//! * A paused sandbox can be snapshotted and forked; it stays paused.
//! * A snapshot still under a running sandbox is not deleted (409 naming the sandboxes).

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::IntoResponse;
use paddock_infra::{CreateSandbox, CreateSnapshot, Infra, Lease, SnapshotInfo, SnapshotKind};
use serde::Deserialize;
use serde_json::{Value, json};

use super::create::{new_tokens, register, timeout_secs};
use super::extract::{Body, Caller, OwnedSandbox, PathParam, Query};
use super::{ApiResult, M};
use crate::Manager;
use crate::error::ApiError;
use crate::keys::Team;
use crate::records::OnTimeout;

/// Most forks one request may ask for (the SDK's own bound).
pub const MAX_FORKS: u32 = 20;
/// A fork's timeout when the request names none, seconds (the API's default).
const FORK_DEFAULT_TIMEOUT: u64 = 15;
/// Longest snapshot name.
const MAX_NAME: usize = 128;
/// Largest page of `GET /snapshots`.
const MAX_PAGE: usize = 100;

/// Snapshot creations run one at a time: the quota and name checks and the snapshot they
/// allow must not interleave with another's (a snapshot takes a copy of a disk anyway).
static CREATING: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// The snapshot `key` (id or name) if `team` may see it.
pub(super) async fn find<I: Infra>(
    m: &Manager<I>,
    team: &Team,
    key: &str,
) -> ApiResult<Option<SnapshotInfo>> {
    let all = m.infra.snapshots().await?;
    // The snapshot's own team first: with the admin key, a name can be taken in several teams.
    Ok(all
        .into_iter()
        .filter(|s| team.sees(&s.team))
        .find(|s| s.id == key || s.name.as_deref() == Some(key)))
}

fn snapshot_json(s: &SnapshotInfo) -> Value {
    json!({
        "snapshotID": s.id,
        "names": s.name.iter().collect::<Vec<_>>(),
        "sandboxID": s.sandbox_id,
        "templateID": s.template,
        "kind": s.kind,
        "memory": s.kind == SnapshotKind::Memory,
        "sizeBytes": s.size_bytes,
        "createdAt": crate::records::rfc3339(
            std::time::UNIX_EPOCH + std::time::Duration::from_millis(s.created_at_ms)
        ),
    })
}

/// A name a snapshot may take; the reason otherwise.
fn check_name(name: &str) -> Result<(), String> {
    if name.is_empty() || name.len() > MAX_NAME {
        return Err(format!("a snapshot name has 1 to {MAX_NAME} characters"));
    }
    if !name
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b':' | b'/'))
    {
        return Err("a snapshot name has only letters, digits and - _ . : /".into());
    }
    if name.starts_with("snap-") {
        return Err("a snapshot name may not start with 'snap-' (snapshot ids do)".into());
    }
    Ok(())
}

#[derive(Debug, Default, Deserialize)]
pub struct SnapshotBody {
    name: Option<String>,
    /// Whether memory and processes are wanted too. Without a memory-capable backend the
    /// snapshot falls back to the filesystem; its `kind` (and `memory`) say which was taken.
    #[allow(dead_code)]
    memory: Option<bool>,
}

/// `POST /sandboxes/{id}/snapshots`.
pub async fn create<I: Infra>(
    State(m): M<I>,
    s: OwnedSandbox,
    Body(b): Body<SnapshotBody>,
) -> ApiResult {
    let team = s.record.team.clone();
    let name = b.name.filter(|n| !n.is_empty());
    if let Some(n) = &name {
        check_name(n).map_err(ApiError::bad_request)?;
    }
    let _one_at_a_time = CREATING.lock().await;
    let all = m.infra.snapshots().await?;
    if let Some(n) = &name {
        if m.infra.templates().await?.iter().any(|t| &t.name == n) {
            return Err(ApiError::conflict(format!(
                "'{n}' is a template's name; a snapshot needs another"
            )));
        }
        if all
            .iter()
            .any(|x| x.team == team && x.name.as_deref() == Some(n))
        {
            return Err(ApiError::conflict(format!(
                "team '{team}' already has a snapshot named '{n}'"
            )));
        }
    }
    let quota = s.caller.key.as_ref().map(|k| k.quota).unwrap_or_default();
    let kept = all.iter().filter(|x| x.team == team).count();
    crate::quota::snapshot_fits(&quota, &team, u32::try_from(kept).unwrap_or(u32::MAX))?;
    let info = m
        .infra
        .create_snapshot(CreateSnapshot {
            sandbox: s.record.id.clone(),
            team,
            name,
        })
        .await?;
    Ok((StatusCode::CREATED, Json(snapshot_json(&info))).into_response())
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ListQuery {
    #[serde(rename = "sandboxID")]
    sandbox_id: Option<String>,
    name: Option<String>,
    limit: Option<usize>,
    next_token: Option<String>,
}

/// `GET /snapshots`: the team's snapshots, oldest first, paged by `limit` and `nextToken`
/// (the id of the first snapshot of the next page, also sent as `x-next-token`).
pub async fn list<I: Infra>(
    State(m): M<I>,
    caller: Caller,
    Query(q): Query<ListQuery>,
) -> ApiResult {
    let limit = q.limit.unwrap_or(MAX_PAGE);
    if !(1..=MAX_PAGE).contains(&limit) {
        return Err(ApiError::bad_request(format!(
            "limit must be between 1 and {MAX_PAGE}"
        )));
    }
    let all: Vec<SnapshotInfo> = m
        .infra
        .snapshots()
        .await?
        .into_iter()
        .filter(|s| caller.team.sees(&s.team))
        .filter(|s| {
            q.sandbox_id
                .as_deref()
                .is_none_or(|id| s.sandbox_id.as_str() == id)
        })
        // The SDK's `name` filter matches a name or an id.
        .filter(|s| {
            q.name
                .as_deref()
                .is_none_or(|n| s.id == n || s.name.as_deref() == Some(n))
        })
        .collect();
    let start = match q.next_token.as_deref().filter(|t| !t.is_empty()) {
        None => 0,
        Some(t) => all
            .iter()
            .position(|s| s.id == t)
            .ok_or_else(|| ApiError::bad_request("invalid nextToken"))?,
    };
    let page: Vec<Value> = all[start..all.len().min(start + limit)]
        .iter()
        .map(snapshot_json)
        .collect();
    let mut resp = Json(page).into_response();
    if let Some(next) = all.get(start + limit)
        && let Ok(v) = next.id.parse()
    {
        resp.headers_mut().insert("x-next-token", v);
    }
    Ok(resp)
}

/// `DELETE /templates/{id}`: deletes the team's snapshot of that id or name. Templates are
/// configured on the host, not deleted through the API.
pub async fn delete<I: Infra>(
    State(m): M<I>,
    caller: Caller,
    PathParam(key): PathParam,
) -> ApiResult {
    if let Some(s) = find(&m, &caller.team, &key).await? {
        m.infra.delete_snapshot(&s.id).await?;
        return Ok(StatusCode::NO_CONTENT.into_response());
    }
    if m.infra.templates().await?.iter().any(|t| t.name == key) {
        return Err(ApiError::bad_request(format!(
            "'{key}' is a template: templates are configured on the host, not deleted through the API"
        )));
    }
    Err(ApiError::not_found(format!("snapshot '{key}' not found")))
}

#[derive(Debug, Default, Deserialize)]
pub struct ForkBody {
    timeout: Option<i64>,
    count: Option<i64>,
}

/// `POST /sandboxes/{id}/fork`: `count` new sandboxes from the sandbox's current
/// filesystem; the original keeps running. 201 with one result per fork (`sandbox` or
/// `error`); any other status means no fork was tried.
pub async fn fork<I: Infra>(State(m): M<I>, s: OwnedSandbox, Body(b): Body<ForkBody>) -> ApiResult {
    let count = b.count.unwrap_or(1);
    if !(1..=i64::from(MAX_FORKS)).contains(&count) {
        return Err(ApiError::bad_request(format!(
            "count must be between 1 and {MAX_FORKS}"
        )));
    }
    let count = count as u32;
    let timeout = timeout_secs(&m.config, b.timeout, FORK_DEFAULT_TIMEOUT)?;
    let team = s.record.team.clone();
    // The fork's creator pays, as for a create.
    let quota = s.caller.key.as_ref().map(|k| k.quota).unwrap_or_default();
    let one = crate::quota::Usage {
        sandboxes: 1,
        cpu: s.record.cpu_count,
        memory_mb: s.record.memory_mb,
    };
    let _reservation = m.reservations.reserve(
        &quota,
        &team,
        || crate::records::usage_of(&*m.records, &team),
        one.times(count),
    )?;
    let mut leases = Vec::new();
    let mut reqs = Vec::new();
    for _ in 0..count {
        // A private original makes private forks, each with its own tokens.
        let (access_token, traffic_token) = new_tokens(s.record.traffic_token.is_some())?;
        let lease = Lease {
            team: team.clone(),
            access_token,
            traffic_token,
            // Env vars given at the original's create are not kept; a fork starts without.
            env_vars: Default::default(),
            timeout: Some(timeout),
            on_timeout: OnTimeout::Kill,
            auto_resume: false,
            timeout_pause: Default::default(),
        };
        reqs.push(CreateSandbox {
            template: s.record.template.clone(),
            limits: None,
            allow_internet_access: s.record.allow_internet_access,
            metadata: s.record.metadata.clone(),
            lease: Some(lease.clone()),
            labels: Default::default(),
            create_on_no_stock: true,
        });
        leases.push(lease);
    }
    let started = std::time::Instant::now();
    let made = m.infra.fork(&s.record.id, reqs).await?;
    let mut out = Vec::new();
    for (result, lease) in made.into_iter().zip(leases) {
        let registered = match result {
            Ok(info) => {
                register(
                    &m,
                    info,
                    lease,
                    s.record.template.clone(),
                    s.record.metadata.clone(),
                    s.record.allow_internet_access,
                    started,
                )
                .await
            }
            Err(e) => Err(ApiError::from(e)),
        };
        out.push(match registered {
            Ok(sandbox) => json!({ "sandbox": sandbox }),
            Err(e) => {
                tracing::warn!(original = %s.record.id, error = %e.chain(), "a fork failed");
                json!({ "error": { "code": e.status.as_u16(), "message": e.message } })
            }
        });
    }
    Ok((StatusCode::CREATED, Json(out)).into_response())
}

#[cfg(test)]
mod tests {
    use super::check_name;

    #[test]
    fn names_are_checked() {
        assert!(check_name("my-env_1.0:v2").is_ok());
        for bad in ["", "snap-abc", "has space", "ü", &"x".repeat(129)] {
            assert!(check_name(bad).is_err(), "{bad:?}");
        }
    }
}
