//! A sandbox's timeout and state: set or extend the timeout, pause, resume/connect.

use std::time::{Duration, SystemTime};

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::IntoResponse;
use paddock_infra::{Infra, PauseMode};
use serde::Deserialize;

use super::create::timeout_secs;
use super::extract::{Body, OwnedSandbox};
use super::{ApiResult, M};
use crate::error::ApiError;
use crate::records::{ApiState, RecordJson};

/// Timeout a connect/resume gives when the body names none, seconds.
const CONNECT_DEFAULT_TIMEOUT: u64 = 300;
/// Longest extension one refresh may ask for, seconds.
const MAX_REFRESH: i64 = 3600;

#[derive(Debug, Default, Deserialize)]
pub struct TimeoutBody {
    timeout: Option<i64>,
}

/// `POST /sandboxes/{id}/timeout`: the sandbox now ends `timeout` seconds from now.
pub async fn set_timeout<I: Infra>(
    State(m): M<I>,
    s: OwnedSandbox,
    Body(b): Body<TimeoutBody>,
) -> ApiResult {
    let t = b
        .timeout
        .ok_or_else(|| ApiError::bad_request("timeout is required"))?;
    if t < 0 {
        return Err(ApiError::bad_request("timeout must not be negative"));
    }
    let t = timeout_secs(&m.config, Some(t.max(1)), 0)?;
    m.records
        .update(
            &s.record.id,
            Box::new(move |rec| {
                // A never-timeout sandbox is never turned into a timed one (as in the original).
                if !super::extensions::never_ends(rec.end_at) {
                    rec.end_at = SystemTime::now() + t
                }
            }),
        )
        .await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

#[derive(Debug, Default, Deserialize)]
pub struct RefreshBody {
    duration: Option<i64>,
}

/// `POST /sandboxes/{id}/refreshes`: the sandbox lives at least `duration` more seconds.
pub async fn refresh<I: Infra>(
    State(m): M<I>,
    s: OwnedSandbox,
    Body(b): Body<RefreshBody>,
) -> ApiResult {
    let d = b.duration.unwrap_or(60);
    if !(0..=MAX_REFRESH).contains(&d) {
        return Err(ApiError::bad_request(
            "duration must be between 0 and 3600 seconds",
        ));
    }
    m.records
        .update(
            &s.record.id,
            Box::new(move |rec| rec.extend_to(Duration::from_secs(d as u64))),
        )
        .await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PauseBody {
    /// E2B's snapshot kind: `false` pauses filesystem-only (processes end, memory is freed;
    /// resume boots the sandbox again). Absent or `true`: memory is kept.
    memory: Option<bool>,
    /// Paddock's name for the mode: `memory`, `filesystem` or `checkpoint` (processes saved to
    /// disk and restored on resume). E2B's `full` is `memory`.
    mode: Option<String>,
}

impl PauseBody {
    fn mode(&self) -> Result<PauseMode, ApiError> {
        let named = match self.mode.as_deref() {
            None => None,
            Some("memory" | "full") => Some(PauseMode::Memory),
            Some("filesystem") => Some(PauseMode::Filesystem),
            Some("checkpoint") => Some(PauseMode::Checkpoint),
            Some(other) => {
                return Err(ApiError::bad_request(format!(
                    "unknown pause mode '{other}': use memory, filesystem or checkpoint"
                )));
            }
        };
        match (named, self.memory) {
            (Some(m), None) => Ok(m),
            (None, Some(false)) => Ok(PauseMode::Filesystem),
            (None, _) => Ok(PauseMode::Memory),
            (Some(PauseMode::Filesystem), Some(false)) => Ok(PauseMode::Filesystem),
            (Some(m), Some(true)) if m != PauseMode::Filesystem => Ok(m),
            (Some(m), Some(memory)) => Err(ApiError::bad_request(format!(
                "mode '{}' contradicts memory: {memory}",
                m.as_str()
            ))),
        }
    }
}

/// `POST /sandboxes/{id}/pause`.
pub async fn pause<I: Infra>(
    State(m): M<I>,
    s: OwnedSandbox,
    Body(b): Body<PauseBody>,
) -> ApiResult {
    let mode = b.mode()?;
    let r = s.record;
    if r.state == ApiState::Paused {
        return Err(ApiError::conflict(format!(
            "sandbox '{}' is already paused",
            r.id
        )));
    }
    m.infra.pause_in(&r.id, mode).await?;
    m.records
        .update(&r.id, Box::new(|rec| rec.state = ApiState::Paused))
        .await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

#[derive(Debug, Default, Deserialize)]
pub struct ConnectBody {
    timeout: Option<i64>,
}

/// `POST /sandboxes/{id}/connect` (and `/resume`, and v2 connect): resumes a paused
/// sandbox (201) or just extends a running one's timeout (200).
pub async fn connect<I: Infra>(
    State(m): M<I>,
    s: OwnedSandbox,
    Body(b): Body<ConnectBody>,
) -> ApiResult {
    let r = s.record;
    let timeout = timeout_secs(&m.config, b.timeout, CONNECT_DEFAULT_TIMEOUT)?;
    let resumed = crate::lifecycle::resume(&m, &r.id, timeout).await?;
    let r = m
        .record_for(r.id.as_str(), &s.caller.team)
        .ok_or_else(|| ApiError::sandbox_not_found(r.id.as_str()))?;
    let status = if resumed {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    Ok((
        status,
        Json(r.sandbox_json(&m.config.envd_version, m.config.domain.as_deref())),
    )
        .into_response())
}
