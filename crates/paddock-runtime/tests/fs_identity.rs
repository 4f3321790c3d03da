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
