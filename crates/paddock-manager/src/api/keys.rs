//! Team API keys: create, list, delete; and `GET /teams`.
//!
//! Key admin is team-scoped, as on the original's main branch: the admin key manages every
//! team's keys; a team key manages its own team's keys only. A team key never sees, creates or
//! deletes another team's key: another team's key id is answered like an unknown one (404),
//! as another team's sandbox is, so ids cannot be probed across teams (the original answers
//! 403 there, which tells the caller the id exists).

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::IntoResponse;
use paddock_infra::Infra;
use serde::Deserialize;
use serde_json::{Value, json};

use super::extract::{Body, Caller, PathParam};
use super::{ApiResult, M};
use crate::error::ApiError;
use crate::keys::{Quota, StoredKey, Team};

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct NewKey {
    team: Option<String>,
    /// The original's name for `team`.
    team_name: Option<String>,
    name: Option<String>,
    #[serde(flatten)]
    quota: Quota,
}

fn key_json(k: &StoredKey) -> Value {
    json!({
        "id": k.id, "team": k.team, "name": k.name, "createdAt": k.created_at,
        "maxSandboxes": k.quota.max_sandboxes, "maxCpu": k.quota.max_cpu,
        "maxMemoryMB": k.quota.max_memory_mb, "maxSnapshots": k.quota.max_snapshots,
    })
}

/// The team a new key is for: the one named (`team` or the original's `teamName`), else the
/// caller's. A team key may name only its own team; the admin key any team but `admin` (the
/// admin key is the one from the manager's configuration, never issued here).
fn team_of_new_key(caller: &Caller, b: &NewKey) -> ApiResult<String> {
    let named = match (b.team.as_deref(), b.team_name.as_deref()) {
        (Some(a), Some(n)) if !a.is_empty() && !n.is_empty() && a != n => {
            return Err(ApiError::bad_request(format!(
                "team '{a}' and teamName '{n}' differ: give one"
            )));
        }
        (Some(a), _) if !a.is_empty() => Some(a.to_string()),
        (_, Some(n)) if !n.is_empty() => Some(n.to_string()),
        _ => None,
    };
    let t = match (&caller.team, named) {
        (Team::Admin, Some(t)) => t,
        (Team::Admin, None) => {
            return Err(ApiError::bad_request(
                "team is required: the admin key creates keys for a named team (admin keys are \
                 not issued through the API)",
            ));
        }
        (Team::Named(own), None) => own.clone(),
        (Team::Named(own), Some(t)) if &t == own => t,
        (Team::Named(_), Some(t)) => {
            return Err(ApiError::forbidden(format!(
                "a team key may create keys for its own team only, not for '{t}'"
            )));
        }
    };
    if t == "admin"
        || !t
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
    {
        return Err(ApiError::bad_request(format!("invalid team name '{t}'")));
    }
    Ok(t)
}

/// `POST /api-keys`: the secret is in this answer only.
pub async fn create<I: Infra>(State(m): M<I>, caller: Caller, Body(b): Body<NewKey>) -> ApiResult {
    let team = team_of_new_key(&caller, &b)?;
    // Quotas are the admin's to give: a team key's new key carries the creator's own quota,
    // so no team can lift its limits by minting itself an unlimited key.
    let quota = match &caller.key {
        None => b.quota,
        Some(own) if b.quota == Quota::default() || b.quota == own.quota => own.quota,
        Some(_) => {
            return Err(ApiError::forbidden(
                "only the admin key may set a key's quota; a team key's new keys get its own",
            ));
        }
    };
    let (k, secret) = m
        .keys
        .create(&team, b.name.as_deref().unwrap_or("default"), quota)
        .await
        .map_err(|e| ApiError::internal("storing the key failed", e))?;
    let mut body = key_json(&k);
    body["key"] = json!(secret);
    Ok((StatusCode::CREATED, Json(body)).into_response())
}

/// `GET /api-keys`: the caller's team's keys (the admin key: every key), without secrets
/// (only their salted hashes are kept).
pub async fn list<I: Infra>(State(m): M<I>, caller: Caller) -> ApiResult {
    let body: Vec<Value> = m
        .keys
        .list()
        .into_iter()
        .filter(|k| caller.team.sees(&k.team))
        .map(|k| key_json(&k))
        .collect();
    Ok(Json(body).into_response())
}

/// `DELETE /api-keys/{id}`: a key of the caller's team (the admin key: any key).
pub async fn delete<I: Infra>(
    State(m): M<I>,
    caller: Caller,
    PathParam(id): PathParam,
) -> ApiResult {
    let not_found = || ApiError::not_found(format!("API key '{id}' not found"));
    let owned = m
        .keys
        .list()
        .iter()
        .any(|k| k.id == id && caller.team.sees(&k.team));
    if !owned {
        return Err(not_found());
    }
    match m.keys.delete(&id).await {
        Ok(true) => Ok(StatusCode::NO_CONTENT.into_response()),
        Ok(false) => Err(not_found()),
        Err(e) => Err(ApiError::internal("storing the keys failed", e)),
    }
}

/// One team as the original (and E2B) list it. Teams here are names, so the name is the id.
fn team_json(name: &str, is_default: bool) -> Value {
    json!({ "teamID": name, "name": name, "apiKey": "", "isDefault": is_default })
}

/// `GET /teams`: the teams the caller can see: the admin key sees `admin` (its default) and
/// every team that has a key; a team key sees its own team.
pub async fn teams<I: Infra>(State(m): M<I>, caller: Caller) -> ApiResult {
    let body: Vec<Value> = match &caller.team {
        Team::Admin => {
            let names: std::collections::BTreeSet<String> =
                m.keys.list().into_iter().map(|k| k.team).collect();
            std::iter::once(team_json("admin", true))
                .chain(
                    names
                        .iter()
                        .filter(|n| n.as_str() != "admin")
                        .map(|n| team_json(n, false)),
                )
                .collect()
        }
        Team::Named(own) => vec![team_json(own, true)],
    };
    Ok(Json(body).into_response())
}
