//! Driving the runtime's `Router` in-process, for the integration tests.
#![allow(dead_code)]

use std::sync::Arc;

use axum::Router;
use axum::body::Body;
use http::{Request, StatusCode};
use http_body_util::BodyExt;
use paddock_runtime::{Runtime, RuntimeOptions};
use serde_json::Value;
use tower::ServiceExt;

/// A runtime acting as root by default: root exists on every machine that
/// runs the tests, and the tests must not create users on the host.
pub fn options() -> RuntimeOptions {
    RuntimeOptions {
        default_user: "root".into(),
        ..RuntimeOptions::default()
    }
}

/// Sends `req` to `router`; returns the status, content type and body.
pub async fn send(router: Router, req: Request<Body>) -> (StatusCode, String, Vec<u8>) {
    let resp = router.oneshot(req).await.unwrap();
    let status = resp.status();
    let ct = resp
        .headers()
        .get("content-type")
        .map(|v| v.to_str().unwrap().to_string())
        .unwrap_or_default();
    let bytes = resp
        .into_body()
        .collect()
        .await
        .unwrap()
        .to_bytes()
        .to_vec();
    (status, ct, bytes)
}

/// A unary Connect call with the JSON codec, plus extra headers.
pub async fn unary_with(
    rt: &Arc<Runtime>,
    path: &str,
    headers: &[(&str, &str)],
    body: Value,
) -> (StatusCode, Value) {
    let mut req = Request::post(path).header("content-type", "application/json");
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let req = req.body(Body::from(body.to_string())).unwrap();
    let (status, _, bytes) = send(paddock_runtime::app(rt.clone()), req).await;
    let value = serde_json::from_slice(&bytes)
        .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&bytes).into_owned()));
    (status, value)
}

pub async fn unary(rt: &Arc<Runtime>, path: &str, body: Value) -> (StatusCode, Value) {
    unary_with(rt, path, &[], body).await
}
