//! Security review L1: file operations a user asks for never act as root.

mod common;

use common::{Hostile, options, unary};
use http::StatusCode;
use serde_json::json;

/// Security review L1: `MakeDir` checked existence as root, so its answer
/// told the user what a directory it may not search contains.
#[tokio::test]
async fn make_dir_does_not_reveal_what_a_private_directory_holds() {
    let h = Hostile::new(options());
    let private = h.root_dir("private", 0o700);
    std::fs::create_dir(private.join("sub")).unwrap();
    let (status, v) = unary(
        &h.rt,
        "/filesystem.Filesystem/MakeDir",
        json!({"path": private.join("sub")}),
    )
    .await;
    assert_eq!(
        (status, v["code"].as_str()),
        (StatusCode::FORBIDDEN, Some("permission_denied")),
        "{v}"
    );
    // Where the user may look, an existing directory is still reported.
    let open = h.root_dir("open", 0o755);
    let (status, v) = unary(
        &h.rt,
        "/filesystem.Filesystem/MakeDir",
        json!({"path": open}),
    )
    .await;
    assert_eq!(v["code"], "already_exists", "{status} {v}");
}

/// Security review L1: `Move` checked that its source exists as root.
#[tokio::test]
async fn move_does_not_reveal_what_a_private_directory_lacks() {
    let h = Hostile::new(options());
    let private = h.root_dir("private", 0o700);
    let open = h.root_dir("open", 0o777);
    let (status, v) = unary(
        &h.rt,
        "/filesystem.Filesystem/Move",
        json!({"source": private.join("missing"), "destination": open.join("x")}),
    )
    .await;
    assert_eq!(
        (status, v["code"].as_str()),
        (StatusCode::FORBIDDEN, Some("permission_denied")),
        "{v}"
    );
    let (_, v) = unary(
        &h.rt,
        "/filesystem.Filesystem/Move",
        json!({"source": open.join("missing"), "destination": open.join("x")}),
    )
    .await;
    assert_eq!(v["code"], "not_found", "{v}");
}

/// Adds the event names a polled watcher collected since the last call.
async fn poll(rt: &std::sync::Arc<paddock_runtime::Runtime>, id: &str, seen: &mut Vec<String>) {
    let (status, v) = unary(
        rt,
        "/filesystem.Filesystem/GetWatcherEvents",
        json!({"watcherId": id}),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{v}");
    for e in v["events"].as_array().into_iter().flatten() {
        seen.push(e["name"].as_str().unwrap().to_string());
    }
}

/// Security review L1: recursive watches ran as root, so they reported
/// what happened inside directories the user may not read. They now run
/// as the user: such directories are skipped, the rest (including
/// directories created later) is still watched.
#[tokio::test]
async fn a_recursive_watch_skips_directories_the_user_cannot_read() {
    let h = Hostile::new(options());
    let top = h.root_dir("top", 0o755);
    let private = h.root_dir("top/private", 0o700);
    let open = h.root_dir("top/open", 0o777);
    let (status, v) = unary(
        &h.rt,
        "/filesystem.Filesystem/CreateWatcher",
        json!({"path": top, "recursive": true}),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{v}");
    let id = v["watcherId"].as_str().unwrap().to_string();

    std::fs::write(private.join("secret"), "x").unwrap();
    std::fs::write(open.join("visible"), "x").unwrap();
    let mut seen = Vec::new();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while !seen.iter().any(|n| n == "open/visible") {
        assert!(std::time::Instant::now() < deadline, "saw {seen:?}");
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        poll(&h.rt, &id, &mut seen).await;
    }

    // A directory created after the watch started is watched as well. Its
    // watch is added in the background: write until a file is reported.
    std::fs::create_dir(open.join("new")).unwrap();
    let mut n = 0;
    while !seen.iter().any(|s| s.starts_with("open/new/later")) {
        assert!(std::time::Instant::now() < deadline, "saw {seen:?}");
        std::fs::write(open.join(format!("new/later{n}")), "x").unwrap();
        n += 1;
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        poll(&h.rt, &id, &mut seen).await;
    }
    assert!(
        !seen.iter().any(|n| n.starts_with("private/")),
        "the watch reported inside a directory the user cannot read: {seen:?}"
    );
}
