//! The API's error: a status, a message safe to show the caller, and (for our own failures)
//! the error that caused it, whose whole `source()` chain goes to the log.
//!
//! The body is `{"code": <status>, "message"}`, with `Should-Retry: false` where retrying
//! cannot help.

use std::error::Error as StdError;

use axum::http::{HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use paddock_infra::InfraError;

use crate::quota::QuotaError;

/// Any cause an [`ApiError`] can keep.
pub type Cause = Box<dyn StdError + Send + Sync + 'static>;

/// An error answer of the API.
#[derive(Debug)]
pub struct ApiError {
    /// The HTTP status.
    pub status: StatusCode,
    /// What the caller is told.
    pub message: String,
    /// What really happened, logged with its chain; never sent to the caller.
    pub source: Option<Cause>,
}

impl std::fmt::Display for ApiError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} ({})", self.message, self.status)
    }
}

impl StdError for ApiError {
    fn source(&self) -> Option<&(dyn StdError + 'static)> {
        self.source
            .as_deref()
            .map(|e| e as &(dyn StdError + 'static))
    }
}

impl ApiError {
    /// An error with no cause beyond the caller's request.
    pub fn new(status: StatusCode, message: impl Into<String>) -> Self {
        Self {
            status,
            message: message.into(),
            source: None,
        }
    }
    /// Keeps `cause` for the log.
    pub fn with_source(mut self, cause: impl Into<Cause>) -> Self {
        self.source = Some(cause.into());
        self
    }
    pub fn bad_request(m: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, m)
    }
    pub fn not_found(m: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, m)
    }
    pub fn unauthorized(m: impl Into<String>) -> Self {
        Self::new(StatusCode::UNAUTHORIZED, m)
    }
    pub fn forbidden(m: impl Into<String>) -> Self {
        Self::new(StatusCode::FORBIDDEN, m)
    }
    pub fn conflict(m: impl Into<String>) -> Self {
        Self::new(StatusCode::CONFLICT, m)
    }
    /// Our failure: `what` (safe to show) failed because of `cause` (logged only).
    pub fn internal(what: impl Into<String>, cause: impl Into<Cause>) -> Self {
        Self::new(StatusCode::INTERNAL_SERVER_ERROR, what).with_source(cause)
    }
    pub fn sandbox_not_found(id: &str) -> Self {
        Self::not_found(format!("sandbox '{id}' not found"))
    }

    /// The message followed by every cause, `a: b: c`.
    pub fn chain(&self) -> String {
        let mut out = self.message.clone();
        let mut next = self.source();
        while let Some(e) = next {
            out.push_str(": ");
            out.push_str(&e.to_string());
            next = e.source();
        }
        out
    }
}

impl From<InfraError> for ApiError {
    fn from(e: InfraError) -> Self {
        // The caller's mistakes are explained to them; our own failures are described only
        // in general terms, the details (paths, kernel errors) go to the log.
        let (status, message) = match &e {
            InfraError::UnknownTemplate(_)
            | InfraError::NotFound(_)
            | InfraError::SnapshotNotFound(_) => (StatusCode::NOT_FOUND, e.to_string()),
            InfraError::Conflict(_) => (StatusCode::CONFLICT, e.to_string()),
            InfraError::Unsupported(_) => (StatusCode::NOT_IMPLEMENTED, e.to_string()),
            InfraError::InvalidLimits(_) => (StatusCode::BAD_REQUEST, e.to_string()),
            InfraError::IllegalTransition { .. } => (StatusCode::CONFLICT, e.to_string()),
            InfraError::Capacity(_) | InfraError::NoStock { .. } => {
                (StatusCode::SERVICE_UNAVAILABLE, e.to_string())
            }
            InfraError::SandboxFailed { id, .. } => (
                StatusCode::INTERNAL_SERVER_ERROR,
                format!("sandbox {id} failed to start"),
            ),
            InfraError::Internal(_) => (
                StatusCode::INTERNAL_SERVER_ERROR,
                "internal infrastructure error".to_string(),
            ),
        };
        Self::new(status, message).with_source(e)
    }
}

impl From<QuotaError> for ApiError {
    fn from(e: QuotaError) -> Self {
        Self::forbidden(e.to_string()).with_source(e)
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        if self.status.is_server_error() {
            tracing::error!(status = self.status.as_u16(), error = %self.chain(), "request failed");
        } else if self.source.is_some() {
            tracing::debug!(status = self.status.as_u16(), error = %self.chain(), "request refused");
        }
        let body = serde_json::json!({ "code": self.status.as_u16(), "message": self.message });
        let mut resp = (self.status, axum::Json(body)).into_response();
        // The SDKs retry 429/502/503/504 unless told otherwise; only
        // capacity problems are worth retrying.
        if self.status != StatusCode::SERVICE_UNAVAILABLE
            && self.status != StatusCode::TOO_MANY_REQUESTS
        {
            resp.headers_mut()
                .insert("should-retry", HeaderValue::from_static("false"));
        }
        resp
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, thiserror::Error)]
    #[error("disk on fire")]
    struct Root;

    #[derive(Debug, thiserror::Error)]
    #[error("writing /var/lib/x")]
    struct Mid(#[source] Root);

    #[test]
    fn internal_infra_errors_keep_their_chain_but_not_in_the_body() {
        let e = ApiError::from(InfraError::internal(Mid(Root)));
        assert_eq!(e.status, StatusCode::INTERNAL_SERVER_ERROR);
        assert_eq!(e.message, "internal infrastructure error");
        let chain = e.chain();
        assert!(chain.contains("writing /var/lib/x"), "{chain}");
        assert!(chain.ends_with("disk on fire"), "{chain}");
        // The InfraError itself is the first cause, found again by type.
        let infra = StdError::source(&e)
            .and_then(|s| s.downcast_ref::<InfraError>())
            .expect("the InfraError is kept");
        assert!(matches!(infra, InfraError::Internal(_)));
    }

    #[test]
    fn caller_errors_are_explained() {
        let e = ApiError::from(InfraError::UnknownTemplate("nope".into()));
        assert_eq!(e.status, StatusCode::NOT_FOUND);
        assert!(e.message.contains("nope"), "{}", e.message);
    }
}
