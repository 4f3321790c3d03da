//! The API's error body: `{"code": <status>, "message"}`, with
//! `Should-Retry: false` where retrying cannot help.

use axum::http::{HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use paddock_infra::InfraError;

#[derive(Debug)]
pub struct ApiError {
    pub status: StatusCode,
    pub message: String,
}

impl ApiError {
    pub fn new(status: StatusCode, message: impl Into<String>) -> Self {
        Self {
            status,
            message: message.into(),
        }
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
    pub fn conflict(m: impl Into<String>) -> Self {
        Self::new(StatusCode::CONFLICT, m)
    }
    pub fn internal(m: impl Into<String>) -> Self {
        Self::new(StatusCode::INTERNAL_SERVER_ERROR, m)
    }
    pub fn sandbox_not_found(id: &str) -> Self {
        Self::not_found(format!("sandbox '{id}' not found"))
    }
}

impl From<InfraError> for ApiError {
    fn from(e: InfraError) -> Self {
        let status = match &e {
            InfraError::UnknownTemplate(_) => StatusCode::NOT_FOUND,
            InfraError::NotFound(_) => StatusCode::NOT_FOUND,
            InfraError::InvalidLimits(_) => StatusCode::BAD_REQUEST,
            InfraError::IllegalTransition { .. } => StatusCode::CONFLICT,
            InfraError::Capacity(_) => StatusCode::SERVICE_UNAVAILABLE,
            InfraError::SandboxFailed { .. } | InfraError::Internal(_) => {
                StatusCode::INTERNAL_SERVER_ERROR
            }
        };
        Self::new(status, e.to_string())
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
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
