//! What handlers start from: the authenticated [`Caller`], the [`Admin`] caller, the caller's
//! own sandbox ([`OwnedSandbox`]), and request bodies whose rejections follow the API's error
//! format ([`RawBody`], [`Body`]).

use std::sync::Arc;

use axum::extract::{FromRequest, FromRequestParts, Path, Request};
use http::request::Parts;
use paddock_infra::Infra;

use crate::Manager;
use crate::error::ApiError;
use crate::keys::{StoredKey, Team};
use crate::records::SandboxRecord;

/// Who is calling: their team and, for a team key, the key (its quota).
#[derive(Debug, Clone)]
pub struct Caller {
    pub team: Team,
    /// `None` for the admin key.
    pub key: Option<StoredKey>,
}

impl<S: Send + Sync> FromRequestParts<S> for Caller {
    type Rejection = ApiError;
    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, ApiError> {
        // Filed by the authentication layer; missing only on a route outside it.
        parts
            .extensions
            .get::<Caller>()
            .cloned()
            .ok_or_else(|| ApiError::unauthorized("missing API key"))
    }
}

/// A caller holding the admin key; anyone else gets 403.
#[derive(Debug, Clone)]
pub struct Admin;

impl<S: Send + Sync> FromRequestParts<S> for Admin {
    type Rejection = ApiError;
    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        let caller = Caller::from_request_parts(parts, state).await?;
        if caller.team == Team::Admin {
            Ok(Admin)
        } else {
            Err(ApiError::forbidden("only the admin key may do this"))
        }
    }
}

/// The sandbox named by the path's `{id}`, if the caller's team owns it (the admin key owns
/// every sandbox). Another team's sandbox is answered exactly like an unknown one, so ids
/// cannot be probed across teams.
#[derive(Debug, Clone)]
pub struct OwnedSandbox {
    pub caller: Caller,
    pub record: SandboxRecord,
}

impl<I: Infra> FromRequestParts<Arc<Manager<I>>> for OwnedSandbox {
    type Rejection = ApiError;
    async fn from_request_parts(parts: &mut Parts, m: &Arc<Manager<I>>) -> Result<Self, ApiError> {
        let caller = Caller::from_request_parts(parts, m).await?;
        let PathParam(id) = PathParam::from_request_parts(parts, m).await?;
        let record = m
            .fresh_record_for(&id, &caller.team)
            .await?
            .ok_or_else(|| ApiError::sandbox_not_found(&id))?;
        Ok(Self { caller, record })
    }
}

/// The raw request body; a rejection (too large: 413) follows the API's error format.
pub struct RawBody(pub axum::body::Bytes);

impl<S: Send + Sync> FromRequest<S> for RawBody {
    type Rejection = ApiError;
    async fn from_request(req: Request, state: &S) -> Result<Self, ApiError> {
        axum::body::Bytes::from_request(req, state)
            .await
            .map(RawBody)
            .map_err(|e| ApiError::new(e.status(), e.body_text()))
    }
}

/// A JSON body whose rejections follow the API's error format; an empty body reads as `{}`.
pub struct Body<T>(pub T);

impl<S: Send + Sync, T: serde::de::DeserializeOwned> FromRequest<S> for Body<T> {
    type Rejection = ApiError;
    async fn from_request(req: Request, state: &S) -> Result<Self, ApiError> {
        let RawBody(bytes) = RawBody::from_request(req, state).await?;
        parse_json(&bytes).map(Body)
    }
}

/// Parses a JSON body; blank counts as `{}` (the SDKs send no body on some POSTs).
pub fn parse_json<T: serde::de::DeserializeOwned>(bytes: &[u8]) -> Result<T, ApiError> {
    let text = if bytes.iter().all(u8::is_ascii_whitespace) {
        &b"{}"[..]
    } else {
        bytes
    };
    serde_json::from_slice(text)
        .map_err(|e| ApiError::bad_request(format!("invalid request body: {e}")))
}

/// Query parameters whose rejections (a non-number where a number goes, ...) follow the API's
/// error format instead of axum's plain-text 400.
pub struct Query<T>(pub T);

impl<S: Send + Sync, T: serde::de::DeserializeOwned> FromRequestParts<S> for Query<T> {
    type Rejection = ApiError;
    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        axum::extract::Query::<T>::from_request_parts(parts, state)
            .await
            .map(|axum::extract::Query(q)| Query(q))
            .map_err(|e| ApiError::new(e.status(), e.body_text()))
    }
}

/// One path parameter whose rejections (bad percent-encoding, ...) follow the API's error
/// format.
pub struct PathParam(pub String);

impl<S: Send + Sync> FromRequestParts<S> for PathParam {
    type Rejection = ApiError;
    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        Path::<String>::from_request_parts(parts, state)
            .await
            .map(|Path(p)| PathParam(p))
            .map_err(|e| ApiError::new(e.status(), e.body_text()))
    }
}
