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

/// The unprivileged account the L1 tests act as (`nobody`'s ids), from a
/// user database of the test's own, so nothing is added to the host.
pub const TESTER: &str = "tester";
pub const TESTER_UID: u32 = 65534;

/// A world-searchable scratch directory holding a user database with
/// [`TESTER`], and a runtime that uses it. The tests need root, since only
/// root can switch to another user's identity.
pub struct Hostile {
    pub dir: tempfile::TempDir,
    pub rt: Arc<Runtime>,
}

impl Hostile {
    pub fn new(opts: RuntimeOptions) -> Self {
        use std::os::unix::fs::PermissionsExt;
        assert!(
            rustix::process::geteuid().is_root(),
            "these tests switch identities and must run as root"
        );
        let dir = tempfile::tempdir().unwrap();
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
        let etc = dir.path().join("etc");
        std::fs::create_dir(&etc).unwrap();
        std::fs::write(
            etc.join("passwd"),
            format!(
                "root:x:0:0:root:/root:/bin/sh\n{TESTER}:x:{TESTER_UID}:{TESTER_UID}::/nonexistent:/bin/sh\n"
            ),
        )
        .unwrap();
        std::fs::write(
            etc.join("group"),
            format!("root:x:0:\n{TESTER}:x:{TESTER_UID}:\n"),
        )
        .unwrap();
        let rt = Runtime::new(RuntimeOptions {
            default_user: TESTER.into(),
            system_root: dir.path().to_path_buf(),
            ..opts
        });
        Self { dir, rt }
    }

    /// A root-owned directory under the scratch directory, with `mode`.
    pub fn root_dir(&self, name: &str, mode: u32) -> std::path::PathBuf {
        use std::os::unix::fs::PermissionsExt;
        let p = self.dir.path().join(name);
        std::fs::create_dir_all(&p).unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(mode)).unwrap();
        p
    }
}
