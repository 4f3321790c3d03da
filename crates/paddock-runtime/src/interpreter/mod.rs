//! The code interpreter the `e2b-code-interpreter` SDKs call on port 49999:
//! `/execute` streams NDJSON from a Jupyter kernel, `/contexts` manages
//! kernels (one per context, each with its own state).

mod contexts;
mod envcode;
mod execute;
mod hint;
mod kernel;
mod result;

use std::collections::BTreeMap;
use std::sync::Arc;

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::{Path, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post};
use futures::StreamExt;
use serde::Deserialize;

use contexts::{ContextError, Contexts, Language, Warmed};
pub use contexts::{DEFAULT_MAX_CONTEXTS, KernelConfig};

use crate::state::Runtime;

#[derive(Clone)]
struct Interp {
    rt: Arc<Runtime>,
    contexts: Arc<Contexts>,
}

/// Plain-text errors, as the SDKs show the body verbatim.
fn text_error(status: StatusCode, message: impl Into<String>) -> Response {
    (
        status,
        [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
        message.into(),
    )
        .into_response()
}

fn context_error(e: ContextError) -> Response {
    let status = match &e {
        ContextError::Unsupported { .. } | ContextError::BadCwd(_) => StatusCode::BAD_REQUEST,
        ContextError::NotFound(_) => StatusCode::NOT_FOUND,
        ContextError::TooMany { .. } => StatusCode::TOO_MANY_REQUESTS,
        ContextError::Kernel(_) | ContextError::User(_) => StatusCode::INTERNAL_SERVER_ERROR,
    };
    text_error(status, e.to_string())
}

/// The code interpreter's routes. Starts the default Python kernel in the
/// background so the first execution does not wait for it.
pub fn router(rt: Arc<Runtime>, config: KernelConfig) -> Router {
    let contexts = Arc::new(Contexts::new(rt.clone(), config));
    let warm = contexts.clone();
    tokio::spawn(async move {
        match warm.warm_default().await {
            Ok(Warmed::Started) => tracing::debug!("python kernel pre-started"),
            Ok(Warmed::NoHint) => tracing::debug!(
                "no file hints at a python kernel; the code interpreter looks for one on first use"
            ),
            Ok(Warmed::NoKernel) => {
                tracing::info!("no python kernel here; the code interpreter will report it on use")
            }
            Err(e) => tracing::warn!(error = %e, "could not pre-start the python kernel"),
        }
    });
    let state = Interp {
        rt: rt.clone(),
        contexts,
    };
    Router::new()
        .route("/health", get(|| async { "OK" }))
        .route("/execute", post(execute))
        .route("/contexts", get(list_contexts).post(create_context))
        .route("/contexts/{id}", delete(delete_context))
        .route("/contexts/{id}/restart", post(restart_context))
        .with_state(state)
        .layer(axum::middleware::from_fn_with_state(
            rt,
            crate::auth::require_token_on_interpreter,
        ))
}

#[derive(Debug, Deserialize)]
struct ExecuteBody {
    code: String,
    #[serde(default)]
    context_id: Option<String>,
    #[serde(default)]
    language: Option<String>,
    #[serde(default)]
    env_vars: Option<BTreeMap<String, String>>,
}

async fn execute(State(s): State<Interp>, body: Bytes) -> Response {
    let req: ExecuteBody = match serde_json::from_slice(&body) {
        Ok(r) => r,
        Err(e) => {
            return text_error(
                StatusCode::BAD_REQUEST,
                format!("invalid request body: {e}"),
            );
        }
    };
    let ctx = match (req.context_id.as_deref(), req.language.as_deref()) {
        (Some(_), Some(_)) => {
            return text_error(
                StatusCode::BAD_REQUEST,
                "give either context_id or language, not both",
            );
        }
        (Some(id), None) => match s.contexts.get(id) {
            Some(c) => c,
            None => return text_error(StatusCode::NOT_FOUND, format!("Context {id} not found")),
        },
        (None, lang) => {
            let result = match s.contexts.language(lang).await {
                Ok(l) => s.contexts.default_for(l).await,
                Err(e) => Err(e),
            };
            match result {
                Ok(c) => c,
                Err(e) => return context_error(e),
            }
        }
    };
    let env_vars = req.env_vars.unwrap_or_default();
    if let Some(bad) = env_vars.keys().find(|k| !envcode::valid_name(k)) {
        return text_error(
            StatusCode::BAD_REQUEST,
            format!("invalid environment variable name '{bad}'"),
        );
    }
    let (tx, rx) = tokio::sync::mpsc::channel(64);
    tokio::spawn(execute::run(
        s.contexts.clone(),
        ctx,
        req.code,
        env_vars,
        tx,
    ));
    let lines = tokio_stream_lines(rx);
    let _ = &s.rt;
    Response::builder()
        .status(StatusCode::OK)
        .header(header::CONTENT_TYPE, "application/x-ndjson")
        .body(Body::from_stream(lines))
        .unwrap_or_else(|_| StatusCode::INTERNAL_SERVER_ERROR.into_response())
}

/// One JSON object per line, never an empty line.
fn tokio_stream_lines(
    rx: tokio::sync::mpsc::Receiver<serde_json::Value>,
) -> impl futures::Stream<Item = Result<Bytes, std::convert::Infallible>> {
    futures::stream::unfold(rx, |mut rx| async move {
        let v = rx.recv().await?;
        let mut line = serde_json::to_vec(&v).unwrap_or_default();
        line.push(b'\n');
        Some((Ok(Bytes::from(line)), rx))
    })
    .boxed()
}

#[derive(Debug, Deserialize, Default)]
struct CreateContext {
    #[serde(default)]
    language: Option<String>,
    #[serde(default)]
    cwd: Option<String>,
}

async fn create_context(State(s): State<Interp>, body: Bytes) -> Response {
    let req: CreateContext = if body.iter().all(u8::is_ascii_whitespace) {
        CreateContext::default()
    } else {
        match serde_json::from_slice(&body) {
            Ok(r) => r,
            Err(e) => {
                return text_error(
                    StatusCode::BAD_REQUEST,
                    format!("invalid request body: {e}"),
                );
            }
        }
    };
    let lang: Language = match s.contexts.language(req.language.as_deref()).await {
        Ok(l) => l,
        Err(e) => return context_error(e),
    };
    match s.contexts.create(lang, req.cwd.as_deref()).await {
        Ok(ctx) => axum::Json(ctx.info.clone()).into_response(),
        Err(e) => context_error(e),
    }
}

async fn list_contexts(State(s): State<Interp>) -> Response {
    axum::Json(s.contexts.list()).into_response()
}

async fn delete_context(State(s): State<Interp>, Path(id): Path<String>) -> Response {
    match s.contexts.remove(&id).await {
        Ok(()) => StatusCode::NO_CONTENT.into_response(),
        Err(e) => context_error(e),
    }
}

async fn restart_context(State(s): State<Interp>, Path(id): Path<String>) -> Response {
    let Some(ctx) = s.contexts.get(&id) else {
        return context_error(ContextError::NotFound(id));
    };
    // Wait for a running execution to finish or be interrupted first.
    let _turn = ctx.exec_lock.lock().await;
    match s.contexts.restart(&ctx).await {
        Ok(()) => StatusCode::NO_CONTENT.into_response(),
        Err(e) => context_error(e),
    }
}
