//! Protocol edges of the runtime, driven in-process through its `Router`:
//! Connect envelope framing, end-of-stream frames, proto3 JSON mapping and
//! error codes.

mod common;

use std::sync::Arc;

use axum::body::Body;
use base64::Engine;
use http::{Request, StatusCode};
use paddock_runtime::{Runtime, RuntimeOptions, app};
use serde_json::{Value, json};
use tower::ServiceExt;

fn runtime() -> Arc<Runtime> {
    // Root exists on every machine that runs the tests; the default user
    // `user` may not, and the tests must not create it on the host.
    Runtime::new(RuntimeOptions {
        default_user: "root".into(),
        ..RuntimeOptions::default()
    })
}

fn envelope(flags: u8, msg: &[u8]) -> Vec<u8> {
    let mut out = vec![flags];
    out.extend_from_slice(&(msg.len() as u32).to_be_bytes());
    out.extend_from_slice(msg);
    out
}

/// Splits a Connect streaming body into (flags, payload) frames.
fn frames(mut body: &[u8]) -> Vec<(u8, Vec<u8>)> {
    let mut out = Vec::new();
    while !body.is_empty() {
        assert!(body.len() >= 5, "truncated envelope header");
        let len = u32::from_be_bytes([body[1], body[2], body[3], body[4]]) as usize;
        out.push((body[0], body[5..5 + len].to_vec()));
        body = &body[5 + len..];
    }
    out
}

async fn call(
    rt: &Arc<Runtime>,
    path: &str,
    ctype: &str,
    body: Vec<u8>,
) -> (StatusCode, String, Vec<u8>) {
    let req = Request::post(path)
        .header("content-type", ctype)
        .body(Body::from(body))
        .unwrap();
    common::send(app(rt.clone()), req).await
}

async fn unary(rt: &Arc<Runtime>, path: &str, body: Value) -> (StatusCode, Value) {
    let (status, _, bytes) =
        call(rt, path, "application/json", body.to_string().into_bytes()).await;
    (status, serde_json::from_slice(&bytes).unwrap())
}

#[tokio::test]
async fn start_streams_start_data_end_then_end_of_stream() {
    let rt = runtime();
    let req =
        json!({"process": {"cmd": "/bin/sh", "args": ["-c", "printf hi; exit 3"]}, "stdin": false});
    let (status, ct, body) = call(
        &rt,
        "/process.Process/Start",
        "application/connect+json",
        envelope(0, req.to_string().as_bytes()),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(ct, "application/connect+json", "no parameters allowed");
    let frames = frames(&body);
    let msgs: Vec<Value> = frames
        .iter()
        .map(|(_, p)| serde_json::from_slice(p).unwrap())
        .collect();
    assert!(msgs[0]["event"]["start"]["pid"].as_u64().unwrap() > 0);
    let stdout: Vec<u8> = msgs
        .iter()
        .filter_map(|m| m["event"]["data"]["stdout"].as_str())
        .flat_map(|b64| {
            base64::engine::general_purpose::STANDARD
                .decode(b64)
                .unwrap()
        })
        .collect();
    assert_eq!(stdout, b"hi", "bytes are standard base64");
    let end = &msgs[msgs.len() - 2]["event"]["end"];
    assert_eq!(end["exitCode"], 3);
    assert_eq!(end["exited"], true);
    assert_eq!(end["status"], "exit status 3");
    let (flags, last) = frames.last().unwrap();
    assert_eq!(*flags, 0x02, "stream ends with an end-of-stream envelope");
    assert_eq!(serde_json::from_slice::<Value>(last).unwrap(), json!({}));
    assert!(frames[..frames.len() - 1].iter().all(|(f, _)| *f == 0));
}

#[tokio::test]
async fn stream_errors_travel_in_the_end_of_stream_frame() {
    let rt = runtime();
    let req = json!({"process": {"cmd": "/bin/true", "cwd": "/no/such/dir"}});
    let (status, _, body) = call(
        &rt,
        "/process.Process/Start",
        "application/connect+json",
        envelope(0, req.to_string().as_bytes()),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    let frames = frames(&body);
    let (flags, payload) = frames.last().unwrap();
    assert_eq!(*flags, 0x02);
    let end: Value = serde_json::from_slice(payload).unwrap();
    assert_eq!(end["error"]["code"], "invalid_argument");
    assert!(
        end["error"]["message"]
            .as_str()
            .unwrap()
            .contains("/no/such/dir")
    );
}

#[tokio::test]
async fn protobuf_codec_streams_too() {
    let rt = runtime();
    // StartRequest{process: ProcessConfig{cmd: "/bin/true"}, stdin: false}
    let mut cfg = vec![0x0a, 9];
    cfg.extend_from_slice(b"/bin/true");
    let mut msg = vec![0x0a, cfg.len() as u8];
    msg.extend(cfg);
    msg.extend([0x20, 0x00]);
    let (status, ct, body) = call(
        &rt,
        "/process.Process/Start",
        "application/connect+proto",
        envelope(0, &msg),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(ct, "application/connect+proto");
    let frames = frames(&body);
    // StartResponse.event(1) -> ProcessEvent.start(1) -> StartEvent.pid(1)
    assert_eq!(&frames[0].1[..1], &[0x0a]);
    assert_eq!(frames.last().unwrap().0, 0x02);
    assert!(frames.len() >= 3, "start, end, end-of-stream");
}

#[tokio::test]
async fn json_mapping_int64_strings_enum_names_and_both_name_styles() {
    let rt = runtime();
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("f.txt");
    std::fs::write(&file, "12345").unwrap();
    let (status, v) = unary(&rt, "/filesystem.Filesystem/Stat", json!({"path": file})).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(v["entry"]["size"], "5", "int64 is a JSON string");
    assert_eq!(v["entry"]["type"], "FILE_TYPE_FILE", "enums by name");
    assert!(v["entry"]["modifiedTime"].as_str().unwrap().ends_with('Z'));
    assert!(
        v["entry"].get("symlinkTarget").is_none(),
        "unset fields are omitted"
    );

    // snake_case and lowerCamel input names are both accepted.
    let (s1, w1) = unary(
        &rt,
        "/filesystem.Filesystem/CreateWatcher",
        json!({"path": dir.path(), "include_entry": true}),
    )
    .await;
    assert_eq!(s1, StatusCode::OK);
    let id = w1["watcherId"].as_str().unwrap().to_string();
    let (s2, _) = unary(
        &rt,
        "/filesystem.Filesystem/GetWatcherEvents",
        json!({"watcher_id": id}),
    )
    .await;
    let (s3, _) = unary(
        &rt,
        "/filesystem.Filesystem/GetWatcherEvents",
        json!({"watcherId": id}),
    )
    .await;
    assert_eq!((s2, s3), (StatusCode::OK, StatusCode::OK));
    // Enums by number are accepted as well as by name.
    let (s4, e) = unary(
        &rt,
        "/process.Process/SendSignal",
        json!({"process": {"pid": 4_000_000}, "signal": 9}),
    )
    .await;
    assert_eq!(
        (s4, e["code"].as_str()),
        (StatusCode::NOT_FOUND, Some("not_found"))
    );
    let (s5, _) = unary(
        &rt,
        "/filesystem.Filesystem/RemoveWatcher",
        json!({"watcherId": id}),
    )
    .await;
    assert_eq!(s5, StatusCode::OK);
}

#[tokio::test]
async fn error_codes_match_connect() {
    let rt = runtime();
    let cases: &[(&str, &[u8], StatusCode, &str)] = &[
        (
            "/process.Process/Nope",
            b"{}",
            StatusCode::NOT_FOUND,
            "unimplemented",
        ),
        (
            "/filesystem.Filesystem/Stat",
            b"{oops",
            StatusCode::BAD_REQUEST,
            "invalid_argument",
        ),
        (
            "/filesystem.Filesystem/Stat",
            br#"{"path":""}"#,
            StatusCode::BAD_REQUEST,
            "invalid_argument",
        ),
        (
            "/filesystem.Filesystem/Stat",
            br#"{"path":"/definitely/missing"}"#,
            StatusCode::NOT_FOUND,
            "not_found",
        ),
        (
            "/filesystem.Filesystem/MakeDir",
            br#"{"path":"/"}"#,
            StatusCode::CONFLICT,
            "already_exists",
        ),
        (
            "/filesystem.Filesystem/Remove",
            br#"{"path":"/"}"#,
            StatusCode::BAD_REQUEST,
            "invalid_argument",
        ),
        (
            "/process.Process/CloseStdin",
            br#"{"process":{}}"#,
            StatusCode::BAD_REQUEST,
            "invalid_argument",
        ),
    ];
    for (path, body, status, code) in cases {
        let (s, _, bytes) = call(&rt, path, "application/json", body.to_vec()).await;
        let v: Value = serde_json::from_slice(&bytes).unwrap();
        assert_eq!(
            (s, v["code"].as_str().unwrap()),
            (*status, *code),
            "{path} {}",
            String::from_utf8_lossy(body)
        );
        assert!(!v["message"].as_str().unwrap().is_empty());
    }
}

#[tokio::test]
async fn access_token_guards_everything_but_health() {
    let rt = Runtime::new(RuntimeOptions {
        default_user: "root".into(),
        access_token: Some("tok".into()),
        ..RuntimeOptions::default()
    });
    let health = app(rt.clone())
        .oneshot(Request::get("/health").body(Body::empty()).unwrap())
        .await
        .unwrap();
    assert_eq!(health.status(), StatusCode::NO_CONTENT);
    let (s, v) = unary(&rt, "/process.Process/List", json!({})).await;
    assert_eq!(
        (s, v["code"].as_str()),
        (StatusCode::UNAUTHORIZED, Some("unauthenticated"))
    );
    let req = Request::post("/process.Process/List")
        .header("content-type", "application/json")
        .header("x-access-token", "tok")
        .body(Body::from("{}"))
        .unwrap();
    assert_eq!(app(rt).oneshot(req).await.unwrap().status(), StatusCode::OK);
}
