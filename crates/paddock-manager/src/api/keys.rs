//! Team API keys (admin key only): create, list, delete.

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::IntoResponse;
use paddock_infra::Infra;
use serde::Deserialize;
use serde_json::{Value, json};

use super::extract::{Admin, Body, PathParam};
use super::{ApiResult, M};
use crate::error::ApiError;
use crate::keys::{Quota, StoredKey};

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct NewKey {
    team: Option<String>,
    name: Option<String>,
    #[serde(flatten)]
    quota: Quota,
}

fn key_json(k: &StoredKey) -> Value {
    json!({
        "id": k.id, "team": k.team, "name": k.name, "createdAt": k.created_at,
        "maxSandboxes": k.quota.max_sandboxes, "maxCpu": k.quota.max_cpu,
        "maxMemoryMB": k.quota.max_memory_mb,
    })
}

/// `POST /api-keys`: the secret is in this answer only.
pub async fn create<I: Infra>(State(m): M<I>, _: Admin, Body(b): Body<NewKey>) -> ApiResult {
    let t = b
        .team
        .filter(|t| !t.is_empty())
        .ok_or_else(|| ApiError::bad_request("team is required"))?;
    if t == "admin"
        || !t
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
    {
        return Err(ApiError::bad_request(format!("invalid team name '{t}'")));
    }
    let (k, secret) = m
        .keys
        .create(&t, b.name.as_deref().unwrap_or("default"), b.quota)
        .await
        .map_err(|e| ApiError::internal("storing the key failed", e))?;
    let mut body = key_json(&k);
    body["key"] = json!(secret);
    Ok((StatusCode::CREATED, Json(body)).into_response())
}

/// `GET /api-keys`: without secrets (only their salted hashes are kept).
pub async fn list<I: Infra>(State(m): M<I>, _: Admin) -> ApiResult {
    let body: Vec<Value> = m.keys.list().into_iter().map(|k| key_json(&k)).collect();
    Ok(Json(body).into_response())
}

/// `DELETE /api-keys/{id}`.
pub async fn delete<I: Infra>(State(m): M<I>, _: Admin, PathParam(id): PathParam) -> ApiResult {
    match m.keys.delete(&id).await {
        Ok(true) => Ok(StatusCode::NO_CONTENT.into_response()),
        Ok(false) => Err(ApiError::not_found(format!("API key '{id}' not found"))),
        Err(e) => Err(ApiError::internal("storing the keys failed", e)),
    }
}
