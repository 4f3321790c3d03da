//! The templates sandboxes are created from, and their aliases.

use std::time::SystemTime;

use axum::Json;
use axum::extract::State;
use axum::response::IntoResponse;
use paddock_infra::Infra;
use serde_json::{Value, json};

use super::extract::PathParam;
use super::{ApiResult, M};
use crate::error::ApiError;

/// `GET /templates`.
pub async fn list<I: Infra>(State(m): M<I>) -> ApiResult {
    let list = m.infra.templates().await?;
    let now = crate::records::rfc3339(SystemTime::now());
    let body: Vec<Value> = list
        .iter()
        .map(|t| json!({
            "templateID": t.name, "buildID": t.name, "cpuCount": t.limits.cpu_millis.div_ceil(1000),
            "memoryMB": t.limits.memory_bytes >> 20, "diskSizeMB": t.limits.disk_bytes.map(|d| d >> 20).unwrap_or(0),
            "public": true, "createdAt": now, "updatedAt": now, "createdBy": null, "lastSpawnedAt": null,
            "spawnCount": 0, "buildCount": 1, "envdVersion": m.config.envd_version,
            "aliases": [t.name], "names": [t.name], "buildStatus": if t.built { "ready" } else { "waiting" },
        }))
        .collect();
    Ok(Json(body).into_response())
}

/// `GET /templates/aliases/{alias}`: a template's name is its only alias.
pub async fn alias<I: Infra>(State(m): M<I>, PathParam(alias): PathParam) -> ApiResult {
    let list = m.infra.templates().await?;
    match list.iter().find(|t| t.name == alias) {
        Some(t) => Ok(Json(json!({"templateID": t.name, "public": true})).into_response()),
        None => Err(ApiError::not_found(format!("template '{alias}' not found"))),
    }
}
