//! Authentication, admin-only routes, API-key CRUD, team isolation and the unauthenticated
//! routes.

use http::{Method, Request, StatusCode};
use serde_json::json;

use super::{ADMIN, Harness};

#[tokio::test]
async fn health_and_the_openapi_document_need_no_key() {
    let h = Harness::new().await;
    assert_eq!(
        h.call(Method::GET, "/health", None, None).await.status,
        StatusCode::OK
    );
    let doc = h.call(Method::GET, "/openapi.json", None, None).await;
    assert_eq!(doc.status, StatusCode::OK);
    assert!(doc.body["openapi"].as_str().unwrap().starts_with("3."));
    assert!(doc.body["paths"]["/v2/sandboxes"]["post"].is_object());
}

#[tokio::test]
async fn every_authenticated_route_refuses_a_missing_or_wrong_key() {
    let h = Harness::new().await;
    let routes = [
        (Method::POST, "/sandboxes"),
        (Method::GET, "/sandboxes"),
        (Method::POST, "/v2/sandboxes"),
        (Method::GET, "/v2/sandboxes"),
        (Method::GET, "/sandboxes/abc"),
        (Method::DELETE, "/sandboxes/abc"),
        (Method::POST, "/sandboxes/abc/connect"),
        (Method::POST, "/v2/sandboxes/abc/connect"),
        (Method::POST, "/sandboxes/abc/resume"),
        (Method::POST, "/sandboxes/abc/timeout"),
        (Method::POST, "/sandboxes/abc/refreshes"),
        (Method::POST, "/sandboxes/abc/pause"),
        (Method::GET, "/sandboxes/abc/metrics"),
        (Method::GET, "/sandboxes/abc/logs"),
        (Method::GET, "/v2/sandboxes/abc/logs"),
        (Method::GET, "/templates"),
        (Method::GET, "/templates/aliases/base"),
        (Method::POST, "/api-keys"),
        (Method::GET, "/api-keys"),
        (Method::DELETE, "/api-keys/abc"),
        (Method::GET, "/metrics"),
    ];
    for (method, path) in routes {
        let none = h.call(method.clone(), path, None, None).await;
        assert!(
            none.error(StatusCode::UNAUTHORIZED)
                .contains("missing API key"),
            "{method} {path}"
        );
        let wrong = h.call(method.clone(), path, Some("e2b_wrong"), None).await;
        assert_eq!(
            wrong.error(StatusCode::UNAUTHORIZED),
            "invalid API key",
            "{method} {path}"
        );
    }
    assert!(h.infra.alive().is_empty(), "nothing was created");
}

#[tokio::test]
async fn a_bearer_token_is_accepted_like_x_api_key() {
    let h = Harness::new().await;
    let req = Request::get("/templates")
        .header("authorization", format!("Bearer {ADMIN}"))
        .body(axum::body::Body::empty())
        .unwrap();
    let a = h.send(req).await;
    assert_eq!(a.status, StatusCode::OK, "{}", a.text);
}

#[tokio::test]
async fn api_keys_are_created_listed_and_deleted_by_the_admin_only() {
    let h = Harness::new().await;
    let created = h
        .post(
            "/api-keys",
            ADMIN,
            json!({"team": "red", "name": "ci", "maxSandboxes": 3}),
        )
        .await;
    assert_eq!(created.status, StatusCode::CREATED, "{}", created.text);
    let secret = created.body["key"].as_str().unwrap().to_string();
    let id = created.body["id"].as_str().unwrap().to_string();
    assert_eq!(created.body["team"], "red");
    assert_eq!(created.body["maxSandboxes"], 3);

    let list = h.get("/api-keys", ADMIN).await;
    assert_eq!(list.status, StatusCode::OK);
    let listed = list.body.as_array().unwrap();
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0]["id"], id.as_str());
    assert!(
        listed[0].get("key").is_none(),
        "the secret is shown once only"
    );

    // The team key works, but not on admin-only routes.
    assert_eq!(h.get("/v2/sandboxes", &secret).await.status, StatusCode::OK);
    h.get("/api-keys", &secret)
        .await
        .error(StatusCode::FORBIDDEN);
    h.post("/api-keys", &secret, json!({"team": "x"}))
        .await
        .error(StatusCode::FORBIDDEN);
    h.delete(&format!("/api-keys/{id}"), &secret)
        .await
        .error(StatusCode::FORBIDDEN);
    h.get("/metrics", &secret)
        .await
        .error(StatusCode::FORBIDDEN);

    assert_eq!(
        h.delete(&format!("/api-keys/{id}"), ADMIN).await.status,
        StatusCode::NO_CONTENT
    );
    h.delete(&format!("/api-keys/{id}"), ADMIN)
        .await
        .error(StatusCode::NOT_FOUND);
    h.get("/v2/sandboxes", &secret)
        .await
        .error(StatusCode::UNAUTHORIZED);
}

#[tokio::test]
async fn bad_api_key_requests_are_400() {
    let h = Harness::new().await;
    for body in [
        json!({}),
        json!({"team": ""}),
        json!({"team": "admin"}),
        json!({"team": "a b"}),
    ] {
        h.post("/api-keys", ADMIN, body)
            .await
            .error(StatusCode::BAD_REQUEST);
    }
    h.post(
        "/api-keys",
        ADMIN,
        json!({"team": "red", "maxSandboxes": -1}),
    )
    .await
    .error(StatusCode::BAD_REQUEST);
    assert!(
        h.get("/api-keys", ADMIN)
            .await
            .body
            .as_array()
            .unwrap()
            .is_empty()
    );
}

#[tokio::test]
async fn prometheus_metrics_are_for_the_admin() {
    let h = Harness::new().await;
    let a = h.get("/metrics", ADMIN).await;
    assert_eq!(a.status, StatusCode::OK);
    assert!(
        a.headers["content-type"]
            .to_str()
            .unwrap()
            .starts_with("application/openmetrics-text")
    );
    assert!(a.text.contains("# paddock test metrics"));
}

/// Another team's sandbox is answered exactly like one that does not exist.
#[tokio::test]
async fn a_team_cannot_see_or_touch_another_teams_sandbox() {
    let h = Harness::new().await;
    let red = h.team_key("red", json!({})).await;
    let blue = h.team_key("blue", json!({})).await;
    let id = h.create(&red, json!({})).await;
    let unknown = "nosuchsandbox0000000";
    for (method, suffix, body) in [
        (Method::GET, "", None),
        (Method::DELETE, "", None),
        (Method::POST, "/connect", Some(json!({"timeout": 10}))),
        (Method::POST, "/resume", Some(json!({}))),
        (Method::POST, "/timeout", Some(json!({"timeout": 10}))),
        (Method::POST, "/refreshes", Some(json!({}))),
        (Method::POST, "/pause", None),
        (Method::GET, "/metrics", None),
        (Method::GET, "/logs", None),
    ] {
        let theirs = h
            .call(
                method.clone(),
                &format!("/sandboxes/{id}{suffix}"),
                Some(&blue),
                body.clone(),
            )
            .await;
        let nobodys = h
            .call(
                method.clone(),
                &format!("/sandboxes/{unknown}{suffix}"),
                Some(&blue),
                body,
            )
            .await;
        assert_eq!(
            theirs.error(StatusCode::NOT_FOUND).replace(&id, "ID"),
            nobodys.error(StatusCode::NOT_FOUND).replace(unknown, "ID"),
            "{method} {suffix}"
        );
    }
    let v2_logs = h.get(&format!("/v2/sandboxes/{id}/logs"), &blue).await;
    v2_logs.error(StatusCode::NOT_FOUND);
    assert!(
        h.get("/v2/sandboxes", &blue)
            .await
            .body
            .as_array()
            .unwrap()
            .is_empty()
    );
    // Untouched: still running, seen by its team and by the admin.
    assert_eq!(h.infra.alive(), vec![id.clone()]);
    assert_eq!(
        h.get(&format!("/sandboxes/{id}"), &red).await.body["state"],
        "running"
    );
    assert_eq!(
        h.get("/v2/sandboxes", ADMIN)
            .await
            .body
            .as_array()
            .unwrap()
            .len(),
        1
    );
}

#[tokio::test]
async fn unknown_routes_and_bad_json_have_the_error_shape() {
    let h = Harness::new().await;
    let a = h.get("/sandboxes/x/undocumented", ADMIN).await;
    assert_eq!(a.error(StatusCode::NOT_FOUND), "no such route");
    let req = Request::post("/v2/sandboxes")
        .header("x-api-key", ADMIN)
        .header("content-type", "application/json")
        .body(axum::body::Body::from("{not json"))
        .unwrap();
    assert!(
        h.send(req)
            .await
            .error(StatusCode::BAD_REQUEST)
            .contains("invalid request body")
    );
    assert!(h.infra.alive().is_empty());
}

#[tokio::test]
async fn a_body_over_the_limit_is_413_with_the_error_shape() {
    let h = Harness::new().await;
    let big = "x".repeat(3 << 20);
    let req = Request::post("/v2/sandboxes")
        .header("x-api-key", ADMIN)
        .header("content-type", "application/json")
        .body(axum::body::Body::from(format!(
            "{{\"metadata\":{{\"k\":\"{big}\"}}}}"
        )))
        .unwrap();
    h.send(req).await.error(StatusCode::PAYLOAD_TOO_LARGE);
    assert!(h.infra.alive().is_empty());
}

/// `--enable-auth=false` (chart value `e2b.enableAuth: false`): no key needed, and every
/// caller is the admin team (sees every sandbox, may manage keys).
#[tokio::test]
async fn with_auth_off_every_caller_is_the_admin_team() {
    let h = Harness::with(super::Options {
        no_auth: true,
        ..super::Options::default()
    })
    .await;
    let created = h
        .call(Method::POST, "/v2/sandboxes", None, Some(json!({})))
        .await;
    assert_eq!(created.status, StatusCode::CREATED, "{}", created.text);
    let listed = h.call(Method::GET, "/v2/sandboxes", None, None).await;
    assert_eq!(listed.body.as_array().unwrap().len(), 1);
    let key = h
        .call(
            Method::POST,
            "/api-keys",
            Some("anything"),
            Some(json!({"team": "blue"})),
        )
        .await;
    assert_eq!(key.status, StatusCode::CREATED, "{}", key.text);
}
