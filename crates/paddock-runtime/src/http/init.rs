//! `POST /init`: the orchestrator hands the sandbox its configuration.

use std::path::PathBuf;
use std::sync::Arc;

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use bytes::Bytes;

use crate::errors::HttpError;
use crate::state::Runtime;
use crate::users::UserError;

pub use paddock_contract::InitRequest;

pub async fn init(State(rt): State<Arc<Runtime>>, body: Bytes) -> Response {
    match apply(&rt, &body) {
        Ok(()) => StatusCode::NO_CONTENT.into_response(),
        Err(e) => e.into_response(),
    }
}

fn apply(rt: &Runtime, body: &[u8]) -> Result<(), HttpError> {
    let req: InitRequest = if body.iter().all(u8::is_ascii_whitespace) {
        InitRequest::default()
    } else {
        serde_json::from_slice(body)
            .map_err(|e| HttpError::bad_request(format!("invalid /init body: {e}")))?
    };
    if let Some(bad) = req
        .env_vars
        .iter()
        .flat_map(|env| env.keys())
        .find(|k| k.is_empty() || k.contains('=') || k.contains('\0'))
    {
        return Err(HttpError::bad_request(format!(
            "invalid environment variable name '{bad}'"
        )));
    }
    if let Some(user) = req.default_user.as_deref().filter(|u| !u.is_empty()) {
        // Creating the account is the one step that can fail: do it before
        // changing anything else, so a failed /init changes nothing.
        rt.users.ensure(user).map_err(|e| match e {
            UserError::BadName(_) => HttpError::bad_request(e.to_string()),
            other => HttpError::from(other),
        })?;
    }
    let workdir = req
        .default_workdir
        .as_deref()
        .filter(|w| !w.is_empty())
        .map(|w| {
            if w.starts_with('/') {
                Ok(PathBuf::from(w))
            } else {
                Err(HttpError::bad_request(format!(
                    "defaultWorkdir '{w}' must be an absolute path"
                )))
            }
        })
        .transpose()?;
    if let Some(ts) = &req.timestamp {
        tracing::debug!(timestamp = %ts, "orchestrator clock");
    }
    rt.update(|s| {
        if let Some(env) = req.env_vars {
            s.env.extend(env);
        }
        if let Some(token) = req.access_token.filter(|t| !t.is_empty()) {
            s.access_token = Some(token);
        }
        if let Some(user) = req.default_user.filter(|u| !u.is_empty()) {
            s.default_user = user;
        }
        if workdir.is_some() {
            s.default_workdir = workdir;
        }
    });
    tracing::info!("applied /init");
    Ok(())
}
