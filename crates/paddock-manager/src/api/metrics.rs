//! Resource usage: one sandbox's (`GET /sandboxes/{id}/metrics`) and the whole process's
//! Prometheus metrics (`GET /metrics`, admin key).

use std::time::SystemTime;

use axum::Json;
use axum::extract::{Extension, State};
use axum::response::IntoResponse;
use paddock_infra::Infra;
use serde_json::json;

use super::extract::{Admin, OwnedSandbox};
use super::{ApiResult, Exporter, M};

/// What `/metrics` encodes, handed to the route as an extension.
#[derive(Clone)]
pub struct ExporterHandle(pub Exporter);

/// `GET /sandboxes/{id}/metrics`: one sample, read now.
pub async fn sandbox<I: Infra>(State(m): M<I>, s: OwnedSandbox) -> ApiResult {
    let r = s.record;
    let x = m.infra.metrics(&r.id).await?;
    let now = SystemTime::now();
    let secs = now
        .duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    Ok(Json(json!([{
        "timestamp": crate::records::rfc3339(now),
        "timestampUnix": secs,
        "cpuCount": r.cpu_count,
        "cpuUsedPct": x.cpu_percent,
        "memUsed": x.memory_bytes,
        "memTotal": x.memory_limit_bytes,
        "memCache": 0,
        "diskUsed": x.disk_bytes,
        "diskTotal": r.disk_mb << 20,
    }]))
    .into_response())
}

/// `GET /metrics`: every metric of the process, OpenMetrics text.
pub async fn prometheus<I: Infra>(
    State(m): M<I>,
    _: Admin,
    Extension(ExporterHandle(exporter)): Extension<ExporterHandle>,
) -> ApiResult {
    m.refresh_gauges().await;
    Ok((
        [(
            "content-type",
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        exporter(),
    )
        .into_response())
}
