//! Mapping failures to what clients see: Connect error codes for the RPC
//! services, envd's `{"code": <status>, "message"}` body for plain HTTP.

use std::io;
use std::path::Path;

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use connectrpc::ConnectError;

use crate::paths::PathError;
use crate::users::UserError;

/// Connect error for a failed filesystem operation on `path`.
pub fn fs_error(err: &io::Error, path: &Path) -> ConnectError {
    let p = path.display();
    match err.kind() {
        io::ErrorKind::NotFound => ConnectError::not_found(format!("path '{p}' does not exist")),
        io::ErrorKind::PermissionDenied => {
            ConnectError::permission_denied(format!("permission denied for path '{p}'"))
        }
        io::ErrorKind::AlreadyExists => {
            ConnectError::already_exists(format!("path '{p}' already exists"))
        }
        io::ErrorKind::NotADirectory => {
            ConnectError::invalid_argument(format!("path '{p}' is not a directory"))
        }
        io::ErrorKind::IsADirectory => {
            ConnectError::invalid_argument(format!("path '{p}' is a directory"))
        }
        io::ErrorKind::StorageFull | io::ErrorKind::QuotaExceeded => {
            ConnectError::resource_exhausted(format!("not enough disk space for '{p}'"))
        }
        io::ErrorKind::ReadOnlyFilesystem => {
            ConnectError::permission_denied(format!("path '{p}' is on a read-only file system"))
        }
        io::ErrorKind::InvalidInput | io::ErrorKind::InvalidFilename => {
            ConnectError::invalid_argument(format!("invalid path '{p}': {err}"))
        }
        _ => ConnectError::internal(format!("operation on '{p}' failed: {err}")),
    }
}

pub fn path_error(err: PathError) -> ConnectError {
    ConnectError::invalid_argument(err.to_string())
}

pub fn user_error(err: UserError) -> ConnectError {
    match err {
        UserError::Unknown(_) | UserError::BadName(_) => {
            ConnectError::unauthenticated(err.to_string())
        }
        UserError::Io(e) => ConnectError::internal(format!("reading the user database: {e}")),
    }
}

/// An error on the plain HTTP routes, answered in envd's JSON shape.
#[derive(Debug)]
pub struct HttpError {
    pub status: StatusCode,
    pub message: String,
}

impl HttpError {
    pub fn new(status: StatusCode, message: impl Into<String>) -> Self {
        Self {
            status,
            message: message.into(),
        }
    }

    pub fn bad_request(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, message)
    }

    pub fn from_io(err: &io::Error, path: &Path) -> Self {
        let p = path.display();
        match err.kind() {
            io::ErrorKind::NotFound => {
                Self::new(StatusCode::NOT_FOUND, format!("path '{p}' does not exist"))
            }
            io::ErrorKind::PermissionDenied | io::ErrorKind::ReadOnlyFilesystem => Self::new(
                StatusCode::FORBIDDEN,
                format!("permission denied for path '{p}'"),
            ),
            io::ErrorKind::IsADirectory => Self::bad_request(format!("path '{p}' is a directory")),
            io::ErrorKind::NotADirectory => {
                Self::bad_request(format!("a parent of path '{p}' is not a directory"))
            }
            io::ErrorKind::StorageFull | io::ErrorKind::QuotaExceeded => Self::new(
                StatusCode::INSUFFICIENT_STORAGE,
                format!("not enough disk space for '{p}'"),
            ),
            _ => Self::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                format!("operation on '{p}' failed: {err}"),
            ),
        }
    }
}

impl From<UserError> for HttpError {
    fn from(err: UserError) -> Self {
        match err {
            UserError::Unknown(_) | UserError::BadName(_) => {
                Self::new(StatusCode::UNAUTHORIZED, err.to_string())
            }
            UserError::Io(e) => Self::new(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
        }
    }
}

impl From<PathError> for HttpError {
    fn from(err: PathError) -> Self {
        Self::bad_request(err.to_string())
    }
}

impl IntoResponse for HttpError {
    fn into_response(self) -> Response {
        let body = serde_json::json!({ "code": self.status.as_u16(), "message": self.message });
        let mut resp = (self.status, body.to_string()).into_response();
        resp.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json; charset=utf-8"),
        );
        resp
    }
}
