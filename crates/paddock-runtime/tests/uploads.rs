//! `POST /files` against hostile bodies: the upload cap (security review
//! H5) and the clean-up of failed uploads (security review L1).

mod common;

use std::time::{Duration, Instant};

use axum::body::{Body, Bytes};
use common::{Hostile, options, send};
use http::{Request, StatusCode};
use paddock_runtime::{Runtime, RuntimeOptions, app};
use serde_json::Value;

const CAP: u64 = 1024;

fn capped() -> std::sync::Arc<Runtime> {
    Runtime::new(RuntimeOptions {
        max_upload_bytes: Some(CAP),
        ..options()
    })
}

fn octet(path: &std::path::Path) -> http::request::Builder {
    Request::post(format!("/files?path={}", path.display()))
        .header("content-type", "application/octet-stream")
}

/// A body that arrives in chunks with no declared length.
fn chunked(chunks: Vec<Vec<u8>>) -> Body {
    Body::from_stream(futures::stream::iter(
        chunks
            .into_iter()
            .map(|c| Ok::<_, std::io::Error>(Bytes::from(c))),
    ))
}

async fn assert_too_large(rt: &std::sync::Arc<Runtime>, req: Request<Body>) {
    let (status, ct, bytes) = send(app(rt.clone()), req).await;
    assert_eq!(
        status,
        StatusCode::PAYLOAD_TOO_LARGE,
        "{}",
        String::from_utf8_lossy(&bytes)
    );
    assert!(ct.starts_with("application/json"), "{ct}");
    let v: Value = serde_json::from_slice(&bytes).unwrap();
    assert_eq!(v["code"], 413);
    assert!(
        v["message"].as_str().unwrap().contains(&CAP.to_string()),
        "{v}"
    );
}

fn gzip(data: &[u8]) -> Vec<u8> {
    // `gzip -c` from the host, so the test does not need an encoder crate.
    use std::io::Write;
    let mut child = std::process::Command::new("gzip")
        .arg("-c")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("gzip is installed");
    child.stdin.take().unwrap().write_all(data).unwrap();
    child.wait_with_output().unwrap().stdout
}

/// Security review H5: uploads past the cap get 413 in envd's error shape
/// and leave no file, whether the body declares its length, is chunked,
/// is gzip that expands past the cap, or is multipart.
#[tokio::test]
async fn uploads_past_the_cap_get_413_and_leave_no_file() {
    let rt = capped();
    let dir = tempfile::tempdir().unwrap();
    let big = vec![b'x'; 2 * CAP as usize];

    let declared = dir.path().join("declared");
    let req = octet(&declared)
        .header("content-length", big.len())
        .body(Body::from(big.clone()))
        .unwrap();
    assert_too_large(&rt, req).await;
    assert!(!declared.exists());

    let streamed = dir.path().join("streamed");
    let req = octet(&streamed)
        .body(chunked(vec![big[..600].to_vec(), big[600..].to_vec()]))
        .unwrap();
    assert_too_large(&rt, req).await;
    assert!(!streamed.exists());

    let bomb = dir.path().join("bomb");
    let packed = gzip(&vec![0u8; 64 * CAP as usize]);
    assert!((packed.len() as u64) < CAP, "the compressed body is small");
    let req = octet(&bomb)
        .header("content-encoding", "gzip")
        .body(Body::from(packed))
        .unwrap();
    assert_too_large(&rt, req).await;
    assert!(!bomb.exists());

    let part = dir.path().join("part");
    let mut form =
        b"--B\r\nContent-Disposition: form-data; name=\"file\"; filename=\"f\"\r\n\r\n".to_vec();
    form.extend_from_slice(&big);
    form.extend_from_slice(b"\r\n--B--\r\n");
    let req = Request::post(format!("/files?path={}", part.display()))
        .header("content-type", "multipart/form-data; boundary=B")
        .body(Body::from(form))
        .unwrap();
    assert_too_large(&rt, req).await;
    assert!(!part.exists());

    // Exactly the cap is allowed.
    let fits = dir.path().join("fits");
    let req = octet(&fits)
        .body(chunked(vec![big[..CAP as usize].to_vec()]))
        .unwrap();
    let (status, _, bytes) = send(app(rt.clone()), req).await;
    assert_eq!(
        status,
        StatusCode::OK,
        "{}",
        String::from_utf8_lossy(&bytes)
    );
    assert_eq!(std::fs::metadata(&fits).unwrap().len(), CAP);
}

/// Security review H5: replacing a file with a body past the cap leaves
/// it empty, never half-written.
#[tokio::test]
async fn a_refused_overwrite_leaves_no_partial_content() {
    let rt = capped();
    let dir = tempfile::tempdir().unwrap();
    let target = dir.path().join("existing");
    std::fs::write(&target, "old content").unwrap();
    let req = octet(&target)
        .body(chunked(vec![vec![b'y'; 1000], vec![b'y'; 1000]]))
        .unwrap();
    assert_too_large(&rt, req).await;
    assert_eq!(std::fs::read(&target).unwrap(), b"");
}

/// Security review L1: a failed upload's clean-up ran as root, so a user
/// who swapped the parent directory for a symlink mid-upload had root
/// delete a file of their choice. It now runs as the user.
#[tokio::test]
async fn failed_upload_cleanup_cannot_delete_through_a_swapped_parent() {
    let h = Hostile::new(options());
    let shared = h.root_dir("shared", 0o777);
    let protected = h.root_dir("protected", 0o755);
    std::fs::write(protected.join("file"), "root's").unwrap();

    let (tx, rx) = futures::channel::mpsc::unbounded::<Result<Bytes, std::io::Error>>();
    let target = shared.join("d/file");
    let req = Request::post(format!("/files?path={}", target.display()))
        .header("content-type", "application/octet-stream")
        .body(Body::from_stream(rx))
        .unwrap();
    let upload = tokio::spawn(send(app(h.rt.clone()), req));
    tx.unbounded_send(Ok(Bytes::from_static(b"partial")))
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while !target.exists() {
        assert!(
            Instant::now() < deadline,
            "the upload never created its file"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    // The user's move: their directory out, a link to root's in.
    std::fs::rename(shared.join("d"), shared.join("d-old")).unwrap();
    std::os::unix::fs::symlink(&protected, shared.join("d")).unwrap();
    tx.unbounded_send(Err(std::io::Error::other("client went away")))
        .unwrap();
    let (status, _, _) = upload.await.unwrap();
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(
        std::fs::read_to_string(protected.join("file")).unwrap(),
        "root's",
        "the clean-up deleted a file the user could not"
    );
}
