//! Resource usage: one sandbox's (`GET /sandboxes/{id}/metrics`) and the whole process's
//! Prometheus metrics (`GET /metrics`, admin key).

use std::time::{Duration, SystemTime};

use axum::Json;
use axum::extract::{Extension, State};
use axum::response::IntoResponse;
use paddock_infra::Infra;
use serde::Deserialize;
use serde_json::json;

use super::extract::{Admin, OwnedSandbox, Query};
use super::{ApiResult, Exporter, M};
use crate::error::ApiError;
use crate::records::ApiState;
use crate::samples;

/// What `/metrics` encodes, handed to the route as an extension.
#[derive(Clone)]
pub struct ExporterHandle(pub Exporter);

#[derive(Debug, Default, Deserialize)]
pub struct RangeQuery {
    /// Unix seconds.
    start: Option<i64>,
    end: Option<i64>,
}

fn unix_param(name: &str, v: Option<i64>) -> ApiResult<Option<SystemTime>> {
    match v {
        None => Ok(None),
        Some(s) if s < 0 => Err(ApiError::bad_request(format!(
            "{name} must be a Unix time in seconds, not negative"
        ))),
        Some(s) => SystemTime::UNIX_EPOCH
            .checked_add(Duration::from_secs(s as u64))
            .map(Some)
            .ok_or_else(|| ApiError::bad_request(format!("{name} is too far in the future"))),
    }
}

/// `GET /sandboxes/{id}/metrics`: the samples taken every [`samples::INTERVAL`] within
/// `[start, end]` (Unix seconds, both optional), oldest first.
pub async fn sandbox<I: Infra>(
    State(m): M<I>,
    s: OwnedSandbox,
    Query(q): Query<RangeQuery>,
) -> ApiResult {
    let start = unix_param("start", q.start)?;
    let end = unix_param("end", q.end)?;
    if let (Some(a), Some(b)) = (start, end)
        && a > b
    {
        return Err(ApiError::bad_request("start must not be after end"));
    }
    let r = s.record;
    // A running sandbox asked about before the sampler's first tick gets its first sample
    // now: E2B's history starts when the sandbox does.
    if r.state == ApiState::Running && !m.samples.has_any(&r.id) {
        samples::sample_now(&m, &r.id).await;
    }
    let body: Vec<_> = m
        .samples
        .range(&r.id, start, end)
        .iter()
        .map(|x| {
            let secs =
                x.at.duration_since(SystemTime::UNIX_EPOCH)
                    .map(|d| d.as_secs())
                    .unwrap_or(0);
            json!({
                "timestamp": crate::records::rfc3339(x.at),
                "timestampUnix": secs,
                "cpuCount": r.cpu_count,
                "cpuUsedPct": x.cpu_percent,
                "memUsed": x.memory_bytes,
                "memTotal": x.memory_limit_bytes,
                "memCache": 0,
                "diskUsed": x.disk_bytes,
                "diskTotal": r.disk_mb << 20,
            })
        })
        .collect();
    Ok(Json(body).into_response())
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
