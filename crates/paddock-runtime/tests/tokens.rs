//! Who may talk to a runtime that holds an access token: the bootstrap
//! token a pool member starts with (security review M4), its rotation by
//! `/init`, and the code interpreter's `/contexts` (security review M3).

mod common;

use std::sync::Arc;

use axum::body::Body;
use common::{options, send, unary_with};
use http::{Method, Request, StatusCode};
use paddock_runtime::interpreter::KernelConfig;
use paddock_runtime::{Runtime, RuntimeOptions, app, interpreter_app};
use serde_json::json;

fn with_token(token: &str) -> Arc<Runtime> {
    Runtime::new(RuntimeOptions {
        access_token: Some(token.into()),
        ..options()
    })
}

async fn status(rt: &Arc<Runtime>, method: Method, uri: &str, token: Option<&str>) -> StatusCode {
    let mut req = Request::builder().method(method).uri(uri);
    if let Some(t) = token {
        req = req.header("x-access-token", t);
    }
    let req = req
        .header("content-type", "application/json")
        .body(Body::from("{}"))
        .unwrap();
    send(app(rt.clone()), req).await.0
}

/// Security review M4: a runtime started with a bootstrap token (as pool
/// members are) refuses every route but `/health` without it.
#[tokio::test]
async fn a_bootstrap_token_guards_every_route_but_health() {
    let rt = with_token("bootstrap");
    assert_eq!(
        status(&rt, Method::GET, "/health", None).await,
        StatusCode::NO_CONTENT
    );
    let guarded = [
        (Method::POST, "/init"),
        (Method::GET, "/envs"),
        (Method::GET, "/metrics"),
        (Method::GET, "/files?path=/etc/hostname"),
        (Method::POST, "/files?path=/tmp/x"),
        (Method::POST, "/process.Process/List"),
        (Method::POST, "/process.Process/Start"),
        (Method::POST, "/filesystem.Filesystem/ListDir"),
        (Method::POST, "/filesystem.Filesystem/CreateWatcher"),
        (Method::GET, "/no/such/route"),
        (Method::GET, "/health/../init"),
    ];
    for (method, uri) in guarded {
        for token in [None, Some("wrong"), Some("")] {
            assert_eq!(
                status(&rt, method.clone(), uri, token).await,
                StatusCode::UNAUTHORIZED,
                "{method} {uri} with {token:?}"
            );
        }
    }
    assert_eq!(
        status(&rt, Method::GET, "/envs", Some("bootstrap")).await,
        StatusCode::OK
    );
}

/// Security review M4: `/init` with the current token rotates it (the
/// claim of a pool member); the old token is refused from then on, and an
/// `/init` without the current token cannot change it.
#[tokio::test]
async fn init_with_the_current_token_rotates_it() {
    let rt = with_token("bootstrap");
    let init = |token: &'static str, body: serde_json::Value| {
        let rt = rt.clone();
        async move {
            let req = Request::post("/init")
                .header("x-access-token", token)
                .header("content-type", "application/json")
                .body(Body::from(body.to_string()))
                .unwrap();
            send(app(rt), req).await.0
        }
    };
    assert_eq!(
        init("wrong", json!({"accessToken": "mine"})).await,
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(
        init("bootstrap", json!({"accessToken": "claimed"})).await,
        StatusCode::NO_CONTENT
    );
    for (token, expected) in [
        ("bootstrap", StatusCode::UNAUTHORIZED),
        ("claimed", StatusCode::OK),
    ] {
        let (s, v) = unary_with(
            &rt,
            "/process.Process/List",
            &[("x-access-token", token)],
            json!({}),
        )
        .await;
        assert_eq!(s, expected, "{token}: {v}");
    }
    // An empty token in /init never clears the guard.
    assert_eq!(
        init("claimed", json!({"accessToken": ""})).await,
        StatusCode::NO_CONTENT
    );
    assert_eq!(
        status(&rt, Method::GET, "/envs", None).await,
        StatusCode::UNAUTHORIZED
    );
}

async fn interpreter_status(
    rt: &Arc<Runtime>,
    method: Method,
    uri: &str,
    token: Option<&str>,
) -> StatusCode {
    // No kernel is needed: every request here is decided before one starts.
    let config = KernelConfig::new("/nonexistent/python");
    let mut req = Request::builder().method(method).uri(uri);
    if let Some(t) = token {
        req = req.header("x-access-token", t);
    }
    let req = req
        .header("content-type", "application/json")
        .body(Body::from("{}"))
        .unwrap();
    send(interpreter_app(rt.clone(), config), req).await.0
}

/// Security review M3: the SDKs send no token on `/contexts`, so a missing
/// one is allowed there; a wrong one is refused. `/execute` always needs it.
#[tokio::test]
async fn contexts_refuse_a_wrong_token() {
    let rt = with_token("tok");
    let cases = [
        (Method::GET, "/contexts", None, StatusCode::OK),
        (Method::GET, "/contexts", Some("tok"), StatusCode::OK),
        (
            Method::GET,
            "/contexts",
            Some("wrong"),
            StatusCode::UNAUTHORIZED,
        ),
        (
            Method::POST,
            "/contexts",
            Some("wrong"),
            StatusCode::UNAUTHORIZED,
        ),
        (
            Method::DELETE,
            "/contexts/abc",
            Some("wrong"),
            StatusCode::UNAUTHORIZED,
        ),
        (Method::DELETE, "/contexts/abc", None, StatusCode::NOT_FOUND),
        (
            Method::POST,
            "/contexts/abc/restart",
            Some("wrong"),
            StatusCode::UNAUTHORIZED,
        ),
        (Method::POST, "/execute", None, StatusCode::UNAUTHORIZED),
        (
            Method::POST,
            "/execute",
            Some("wrong"),
            StatusCode::UNAUTHORIZED,
        ),
        (Method::GET, "/health", Some("wrong"), StatusCode::OK),
    ];
    for (method, uri, token, expected) in cases {
        assert_eq!(
            interpreter_status(&rt, method.clone(), uri, token).await,
            expected,
            "{method} {uri} with {token:?}"
        );
    }
}
