//! Who is asking: the access token guarding the runtime, and the Unix user a
//! request acts as.

use std::sync::Arc;

use axum::extract::{Request, State};
use axum::http::{HeaderMap, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use base64::Engine;
use connectrpc::ConnectError;

use crate::errors::{HttpError, user_error};
use crate::state::Runtime;
use crate::users::User;

pub use paddock_contract::{ACCESS_TOKEN_HEADER, file_signature, same_secret};

fn token_matches(headers: &HeaderMap, expected: &str) -> bool {
    headers
        .get(ACCESS_TOKEN_HEADER)
        .is_some_and(|v| same_secret(v.as_bytes(), expected.as_bytes()))
}

/// Routes that decide about the token themselves (or need none).
fn exempt(path: &str) -> bool {
    // `/files` also accepts a signed URL instead of the header.
    matches!(path, "/health" | "/files")
}

pub(crate) fn is_rpc(path: &str) -> bool {
    path.starts_with("/process.") || path.starts_with("/filesystem.")
}

/// Middleware: once a token is set, every request but the exempt ones must
/// carry it in `X-Access-Token`.
pub async fn require_token(State(rt): State<Arc<Runtime>>, req: Request, next: Next) -> Response {
    let Some(expected) = rt.access_token() else {
        return next.run(req).await;
    };
    let path = req.uri().path();
    if exempt(path) || token_matches(req.headers(), &expected) {
        return next.run(req).await;
    }
    let message = if req.headers().contains_key(ACCESS_TOKEN_HEADER) {
        "unauthorized access, invalid access token"
    } else {
        "unauthorized access, please provide a valid access token in the X-Access-Token header"
    };
    tracing::warn!(path, "rejected request without a valid access token");
    if is_rpc(path) {
        // Connect clients read the code string from a Connect error body.
        let body = serde_json::json!({ "code": "unauthenticated", "message": message });
        return (
            StatusCode::UNAUTHORIZED,
            [(http::header::CONTENT_TYPE, "application/json")],
            body.to_string(),
        )
            .into_response();
    }
    HttpError::new(StatusCode::UNAUTHORIZED, message).into_response()
}

/// Middleware for the code interpreter. `/execute` must carry the token.
///
/// Security review M3: the E2B SDKs send no token on `/contexts` (only the
/// gateway's traffic token, for private sandboxes), so those routes cannot
/// demand one without breaking them. A token that *is* sent must still be
/// the right one, so a caller probing with stolen or stale tokens learns
/// nothing and a client that authenticates is held to it.
pub async fn require_token_on_interpreter(
    State(rt): State<Arc<Runtime>>,
    req: Request,
    next: Next,
) -> Response {
    let Some(expected) = rt.access_token() else {
        return next.run(req).await;
    };
    let path = req.uri().path();
    let sent = req.headers().contains_key(ACCESS_TOKEN_HEADER);
    let required = path == "/execute" || (sent && path != "/health");
    if !required || token_matches(req.headers(), &expected) {
        return next.run(req).await;
    }
    tracing::warn!(
        path,
        "rejected a code-interpreter request without a valid access token"
    );
    let message = if sent {
        "unauthorized access, invalid access token"
    } else {
        "unauthorized access, invalid or missing X-Access-Token"
    };
    (StatusCode::UNAUTHORIZED, message).into_response()
}

/// Why an `Authorization` header does not name a user.
#[derive(Debug, thiserror::Error)]
pub enum BasicAuthError {
    #[error("authorization header is not valid text")]
    NotText(#[source] http::header::ToStrError),
    #[error("authorization header must use the Basic scheme")]
    NotBasic,
    #[error("authorization header is not valid base64")]
    NotBase64(#[source] base64::DecodeError),
    #[error("authorization header is not valid UTF-8")]
    NotUtf8(#[source] std::string::FromUtf8Error),
}

/// The user named by `Authorization: Basic base64("<user>:")`, if any.
pub fn basic_auth_user(headers: &HeaderMap) -> Result<Option<String>, BasicAuthError> {
    let Some(value) = headers.get(http::header::AUTHORIZATION) else {
        return Ok(None);
    };
    let value = value.to_str().map_err(BasicAuthError::NotText)?;
    let Some(encoded) = value.strip_prefix("Basic ") else {
        return Err(BasicAuthError::NotBasic);
    };
    let decoded = base64::engine::general_purpose::STANDARD
        .decode(encoded.trim())
        .map_err(BasicAuthError::NotBase64)?;
    let text = String::from_utf8(decoded).map_err(BasicAuthError::NotUtf8)?;
    let name = text.split(':').next().unwrap_or_default();
    Ok((!name.is_empty()).then(|| name.to_string()))
}

/// Resolves the user an RPC acts as: the Basic-auth user or the default.
pub fn rpc_user(rt: &Runtime, headers: &HeaderMap) -> Result<User, ConnectError> {
    let name = basic_auth_user(headers)
        .map_err(|e| ConnectError::unauthenticated(e.to_string()))?
        .unwrap_or_else(|| rt.settings().default_user);
    rt.users.lookup(&name).map_err(user_error)
}

/// Resolves the user a `/files` request acts as (`username` query).
pub fn http_user(rt: &Runtime, username: Option<&str>) -> Result<User, HttpError> {
    let name = match username {
        Some(n) if !n.is_empty() => n.to_string(),
        _ => rt.settings().default_user,
    };
    Ok(rt.users.lookup(&name)?)
}

/// Checks `/files` access: the header token, or a valid unexpired signature.
pub struct FileAccess<'a> {
    pub path: &'a str,
    pub operation: &'a str,
    pub username: Option<&'a str>,
    pub signature: Option<&'a str>,
    pub expiration: Option<i64>,
}

pub fn check_file_access(
    rt: &Runtime,
    headers: &HeaderMap,
    access: FileAccess<'_>,
) -> Result<(), HttpError> {
    let Some(token) = rt.access_token() else {
        return Ok(());
    };
    if token_matches(headers, &token) {
        return Ok(());
    }
    let unauthorized = |m: &str| HttpError::new(StatusCode::UNAUTHORIZED, m);
    let Some(signature) = access.signature else {
        return Err(unauthorized(
            "unauthorized access, provide X-Access-Token or a signed URL",
        ));
    };
    if let Some(exp) = access.expiration {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs() as i64)
            .unwrap_or_default();
        if exp < now {
            return Err(unauthorized("signature has expired"));
        }
    }
    let expected = file_signature(
        access.path,
        access.operation,
        access.username.unwrap_or_default(),
        &token,
        access.expiration,
    );
    if same_secret(signature.as_bytes(), expected.as_bytes()) {
        Ok(())
    } else {
        Err(unauthorized("invalid signature"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn basic_auth_names_the_user() {
        let mut h = HeaderMap::new();
        assert_eq!(basic_auth_user(&h).unwrap(), None);
        h.insert("authorization", "Basic cm9vdDo=".parse().unwrap());
        assert_eq!(basic_auth_user(&h).unwrap(), Some("root".to_string()));
        h.insert("authorization", "Bearer x".parse().unwrap());
        assert!(matches!(basic_auth_user(&h), Err(BasicAuthError::NotBasic)));
        h.insert("authorization", "Basic !!!".parse().unwrap());
        assert!(matches!(
            basic_auth_user(&h),
            Err(BasicAuthError::NotBase64(_))
        ));
    }

    #[test]
    fn signatures_depend_on_every_input() {
        let a = file_signature("/a", "read", "user", "tok", None);
        assert!(a.starts_with("v1_"));
        assert!(!a.ends_with('='));
        assert_ne!(a, file_signature("/a", "write", "user", "tok", None));
        assert_ne!(a, file_signature("/a", "read", "root", "tok", None));
        assert_ne!(a, file_signature("/a", "read", "user", "tok", Some(1)));
        assert_eq!(a, file_signature("/a", "read", "user", "tok", None));
    }

    #[test]
    fn secrets_compare_exactly() {
        assert!(same_secret(b"abc", b"abc"));
        assert!(!same_secret(b"abc", b"abd"));
        assert!(!same_secret(b"abc", b"abcd"));
    }
}
