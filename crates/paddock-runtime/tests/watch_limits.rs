//! Security review M1: a sandbox cannot use up the host's inotify instances.

mod common;

use common::{options, unary};
use http::StatusCode;
use paddock_runtime::{DEFAULT_MAX_WATCHERS, Runtime, RuntimeOptions};
use serde_json::json;

/// Security review M1: 200 `CreateWatcher` calls against one runtime get
/// `resource_exhausted` past the per-runtime cap, and the host can still
/// create an inotify instance afterwards.
#[tokio::test]
async fn watchers_past_the_cap_are_refused_and_the_host_keeps_inotify() {
    let rt = Runtime::new(options());
    let dir = tempfile::tempdir().unwrap();
    let mut live = Vec::new();
    let mut refused = 0;
    for _ in 0..200 {
        let (status, v) = unary(
            &rt,
            "/filesystem.Filesystem/CreateWatcher",
            json!({"path": dir.path()}),
        )
        .await;
        if status == StatusCode::OK {
            live.push(v["watcherId"].as_str().unwrap().to_string());
            // Checked on every success, so an uncapped runtime fails here
            // long before it could exhaust the host.
            assert!(
                live.len() <= DEFAULT_MAX_WATCHERS,
                "the runtime holds {} watchers, more than its cap",
                live.len()
            );
            continue;
        }
        assert_eq!(status, StatusCode::TOO_MANY_REQUESTS, "{v}");
        assert_eq!(v["code"], "resource_exhausted", "{v}");
        let message = v["message"].as_str().unwrap();
        assert!(message.contains("too many watchers"), "{message}");
        assert!(
            message.contains(&DEFAULT_MAX_WATCHERS.to_string()),
            "{message}"
        );
        refused += 1;
    }
    assert_eq!(live.len(), DEFAULT_MAX_WATCHERS);
    assert_eq!(refused, 200 - DEFAULT_MAX_WATCHERS);

    // The host still has inotify instances to give.
    let host = rustix::fs::inotify::init(rustix::fs::inotify::CreateFlags::CLOEXEC);
    assert!(
        host.is_ok(),
        "the host cannot create an inotify instance: {host:?}"
    );

    // Removing a watcher frees its slot.
    let (status, _) = unary(
        &rt,
        "/filesystem.Filesystem/RemoveWatcher",
        json!({"watcherId": live.pop().unwrap()}),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    let (status, v) = unary(
        &rt,
        "/filesystem.Filesystem/CreateWatcher",
        json!({"path": dir.path()}),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{v}");
}

/// Security review M1: streamed watches (`WatchDir`) share the cap with
/// polled ones, and the cap is configurable.
#[tokio::test]
async fn streamed_watches_count_against_the_same_cap() {
    let rt = Runtime::new(RuntimeOptions {
        max_watchers: 1,
        ..options()
    });
    let dir = tempfile::tempdir().unwrap();
    let (status, v) = unary(
        &rt,
        "/filesystem.Filesystem/CreateWatcher",
        json!({"path": dir.path()}),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{v}");

    let body = json!({"path": dir.path()}).to_string();
    let mut frame = vec![0u8];
    frame.extend_from_slice(&(body.len() as u32).to_be_bytes());
    frame.extend_from_slice(body.as_bytes());
    let req = http::Request::post("/filesystem.Filesystem/WatchDir")
        .header("content-type", "application/connect+json")
        .body(axum::body::Body::from(frame))
        .unwrap();
    let resp = tower::ServiceExt::oneshot(paddock_runtime::app(rt.clone()), req)
        .await
        .unwrap();
    // Without a cap the watch would start and stream forever: read only
    // the first frame, within a deadline.
    let mut body = resp.into_body();
    let first = tokio::time::timeout(
        std::time::Duration::from_secs(10),
        http_body_util::BodyExt::frame(&mut body),
    )
    .await
    .expect("the refused watch must answer at once, not start streaming")
    .unwrap()
    .unwrap()
    .into_data()
    .unwrap();
    // The error travels in the end-of-stream frame (flags 0x02).
    assert!(
        first.len() > 5 && first[0] == 0x02,
        "the watch started: {first:?}"
    );
    let end: serde_json::Value = serde_json::from_slice(&first[5..]).unwrap();
    assert_eq!(end["error"]["code"], "resource_exhausted", "{end}");
}
