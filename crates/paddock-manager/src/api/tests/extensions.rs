//! The original system's API extensions: its create metadata keys, team-scoped key admin,
//! `GET /teams`, and the `/kruise/api` prefix.

use http::StatusCode;
use serde_json::{Value, json};

use super::{ADMIN, Harness};

const E2B: &str = "e2b.agents.kruise.io/";

fn ext(pairs: &[(&str, &str)]) -> Value {
    let m: serde_json::Map<String, Value> = pairs
        .iter()
        .map(|(k, v)| (k.to_string(), json!(v)))
        .collect();
    json!({ "templateID": "base", "timeout": 1, "metadata": m })
}

#[tokio::test]
async fn never_timeout_outlives_its_timeout_and_shows_the_zero_time() {
    let h = Harness::new().await;
    let never = h
        .create(ADMIN, ext(&[(&format!("{E2B}never-timeout"), "true")]))
        .await;
    let timed = h.create(ADMIN, json!({"timeout": 1})).await;
    // The reaper passes over every record on each tick; once it has reaped the timed
    // sandbox, it has also looked at the never-timeout one.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while h.infra.alive().contains(&timed) {
        assert!(std::time::Instant::now() < deadline, "never reaped");
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    assert!(h.infra.alive().contains(&never));
    let got = h.get(&format!("/sandboxes/{never}"), ADMIN).await;
    assert_eq!(got.status, StatusCode::OK, "{}", got.text);
    assert_eq!(got.body["endAt"], "0001-01-01T00:00:00Z");
    assert!(
        got.body["metadata"].as_object().unwrap().is_empty(),
        "the extension key is not metadata: {}",
        got.text
    );
    // Set-timeout, refreshes and connect leave it without a deadline.
    for (path, body) in [
        ("/timeout", json!({"timeout": 1})),
        ("/refreshes", json!({"duration": 10})),
        ("/connect", json!({"timeout": 1})),
    ] {
        let a = h
            .post(&format!("/sandboxes/{never}{path}"), ADMIN, body)
            .await;
        assert!(a.status.is_success(), "{path}: {}", a.text);
    }
    let listed = h.get("/v2/sandboxes", ADMIN).await;
    let mine = listed
        .body
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["sandboxID"] == never.as_str())
        .expect("listed")
        .clone();
    assert_eq!(mine["endAt"], "0001-01-01T00:00:00Z");
}

#[tokio::test]
async fn create_on_no_stock_false_is_503_naming_the_template_when_the_pool_is_empty() {
    let h = Harness::new().await;
    h.infra.set_out_of_stock(true);
    let key = format!("{E2B}create-on-no-stock");
    let a = h
        .post("/v2/sandboxes", ADMIN, ext(&[(&key, "false")]))
        .await;
    let m = a.error(StatusCode::SERVICE_UNAVAILABLE);
    assert!(m.contains("base") && m.contains("stock"), "{m}");
    let seen = h.infra.requests();
    assert!(!seen.last().unwrap().create_on_no_stock);
    // Without the extension (or with "true") the create goes cold.
    h.create(ADMIN, ext(&[(&key, "true")])).await;
    h.create(ADMIN, json!({})).await;
    assert!(
        h.infra
            .requests()
            .iter()
            .skip(1)
            .all(|r| r.create_on_no_stock)
    );
    // With stock, "false" claims as usual.
    h.infra.set_out_of_stock(false);
    h.create(ADMIN, ext(&[(&key, "false")])).await;
}

#[tokio::test]
async fn return_sandbox_ip_puts_the_ip_in_the_metadata_of_create_get_list_and_connect() {
    let h = Harness::new().await;
    let a = h
        .post(
            "/v2/sandboxes",
            ADMIN,
            ext(&[(&format!("{E2B}return-sandbox-ip"), "true"), ("who", "me")]),
        )
        .await;
    assert_eq!(a.status, StatusCode::CREATED, "{}", a.text);
    let ip = h.init.address.ip().to_string();
    let key = format!("{E2B}sandbox-ip");
    assert_eq!(a.body["metadata"][&key], ip.as_str(), "{}", a.text);
    assert_eq!(a.body["metadata"]["who"], "me");
    let id = a.body["sandboxID"].as_str().unwrap();
    let got = h.get(&format!("/sandboxes/{id}"), ADMIN).await;
    assert_eq!(got.body["metadata"][&key], ip.as_str());
    let connected = h
        .post(
            &format!("/sandboxes/{id}/connect"),
            ADMIN,
            json!({"timeout": 60}),
        )
        .await;
    assert_eq!(connected.body["metadata"][&key], ip.as_str());
    // The runtime's infra never saw the extension key, only the user's metadata.
    let req = h.infra.requests().pop().unwrap();
    assert_eq!(req.metadata.len(), 1, "{:?}", req.metadata);
    // Without the extension there is no IP.
    let b = h.post("/v2/sandboxes", ADMIN, json!({})).await;
    assert!(b.body["metadata"].get(&key).is_none(), "{}", b.text);
    // Nobody can set it themselves.
    h.post("/v2/sandboxes", ADMIN, ext(&[(&key, "6.6.6.6")]))
        .await
        .error(StatusCode::BAD_REQUEST);
}

#[tokio::test]
async fn label_keys_become_labels_listed_with_the_metadata() {
    let h = Harness::new().await;
    let id = h
        .create(
            ADMIN,
            ext(&[
                ("label:app", "web"),
                ("label:example.com/tier", "front"),
                ("plain", "x"),
            ]),
        )
        .await;
    let req = h.infra.requests().pop().unwrap();
    assert_eq!(req.labels.len(), 2);
    assert_eq!(req.labels["app"], "web");
    assert_eq!(req.labels["example.com/tier"], "front");
    assert_eq!(req.metadata.keys().collect::<Vec<_>>(), ["plain"]);
    let got = h.get(&format!("/sandboxes/{id}"), ADMIN).await;
    assert_eq!(got.body["metadata"]["app"], "web");
    assert!(got.body["metadata"].get("label:app").is_none());
    // A label filters like metadata.
    let listed = h.get("/v2/sandboxes?metadata=app%3Dweb", ADMIN).await;
    assert_eq!(listed.body.as_array().unwrap().len(), 1, "{}", listed.text);

    for (k, v) in [
        ("label:bad key", "x"),
        ("label:kubernetes.io/x", "x"),
        ("label:ok", "bad value"),
    ] {
        let m = h
            .post("/v2/sandboxes", ADMIN, ext(&[(k, v)]))
            .await
            .error(StatusCode::BAD_REQUEST)
            .to_string();
        assert!(m.contains(k.trim_start_matches("label:")), "{m}");
    }
    assert_eq!(h.infra.alive().len(), 1, "no sandbox for a refused create");
}

#[tokio::test]
async fn other_extension_keys_are_ignored_refused_or_forbidden_never_500() {
    let h = Harness::new().await;
    // Known to the original and harmless here: accepted and dropped.
    let id = h
        .create(
            ADMIN,
            ext(&[
                (&format!("{E2B}claim-timeout-seconds"), "30"),
                (&format!("{E2B}wait-ready-timeout-seconds"), "60"),
                (&format!("{E2B}reserve-failed-sandbox"), "true"),
            ]),
        )
        .await;
    let got = h.get(&format!("/sandboxes/{id}"), ADMIN).await;
    assert!(got.body["metadata"].as_object().unwrap().is_empty());
    for (k, v, says) in [
        (format!("{E2B}image"), "nginx", "does not support"),
        (
            format!("{E2B}skip-init-runtime"),
            "true",
            "does not support",
        ),
        (format!("{E2B}no-such-thing"), "1", "forbidden"),
        ("agents.kruise.io/owner".to_string(), "me", "forbidden"),
        (format!("{E2B}never-timeout"), "yes", "true"),
        (
            format!("{E2B}claim-timeout-seconds"),
            "soon",
            "whole number",
        ),
    ] {
        let a = h.post("/v2/sandboxes", ADMIN, ext(&[(&k, v)])).await;
        let m = a.error(StatusCode::BAD_REQUEST);
        assert!(m.contains(&k) && m.contains(says), "{k}: {m}");
    }
}

#[tokio::test]
async fn a_team_key_manages_its_own_teams_keys_only() {
    let h = Harness::new().await;
    let red = h.team_key("red", json!({"maxSandboxes": 2})).await;
    let blue = h.team_key("blue", json!({})).await;

    // Without a team the key is the caller's team's, with the caller's quota.
    let a = h.post("/api-keys", &red, json!({"name": "mine"})).await;
    assert_eq!(a.status, StatusCode::CREATED, "{}", a.text);
    assert_eq!(a.body["team"], "red");
    assert_eq!(a.body["maxSandboxes"], 2);
    let red2_id = a.body["id"].as_str().unwrap().to_string();
    let red2 = a.body["key"].as_str().unwrap().to_string();
    assert_eq!(h.get("/v2/sandboxes", &red2).await.status, StatusCode::OK);
    // Naming its own team (either field name) is the same.
    let a = h.post("/api-keys", &red, json!({"teamName": "red"})).await;
    assert_eq!(a.status, StatusCode::CREATED, "{}", a.text);
    assert_eq!(a.body["team"], "red");
    // Another team's, or a quota of its choosing: 403.
    h.post("/api-keys", &red, json!({"team": "blue"}))
        .await
        .error(StatusCode::FORBIDDEN);
    h.post("/api-keys", &red, json!({"teamName": "blue"}))
        .await
        .error(StatusCode::FORBIDDEN);
    h.post("/api-keys", &red, json!({"maxSandboxes": 100}))
        .await
        .error(StatusCode::FORBIDDEN);
    h.post(
        "/api-keys",
        &red,
        json!({"team": "red", "teamName": "blue"}),
    )
    .await
    .error(StatusCode::BAD_REQUEST);

    // It lists its own team's keys only.
    let listed = h.get("/api-keys", &red).await;
    assert_eq!(listed.status, StatusCode::OK);
    let teams: Vec<&str> = listed
        .body
        .as_array()
        .unwrap()
        .iter()
        .map(|k| k["team"].as_str().unwrap())
        .collect();
    assert_eq!(teams, ["red", "red", "red"], "{}", listed.text);
    assert_eq!(
        h.get("/api-keys", ADMIN)
            .await
            .body
            .as_array()
            .unwrap()
            .len(),
        4
    );

    // Another team's key is 404, exactly like an unknown one, and stays.
    let blue_id = h.get("/api-keys", &blue).await.body.as_array().unwrap()[0]["id"]
        .as_str()
        .unwrap()
        .to_string();
    let foreign = h.delete(&format!("/api-keys/{blue_id}"), &red).await;
    let unknown = h.delete("/api-keys/nosuchkey", &red).await;
    foreign.error(StatusCode::NOT_FOUND);
    unknown.error(StatusCode::NOT_FOUND);
    assert_eq!(h.get("/v2/sandboxes", &blue).await.status, StatusCode::OK);
    // Its own team's key it deletes.
    assert_eq!(
        h.delete(&format!("/api-keys/{red2_id}"), &red).await.status,
        StatusCode::NO_CONTENT
    );
    h.get("/v2/sandboxes", &red2)
        .await
        .error(StatusCode::UNAUTHORIZED);

    // The admin key must name a team; it never mints admin keys.
    h.post("/api-keys", ADMIN, json!({"name": "x"}))
        .await
        .error(StatusCode::BAD_REQUEST);
    h.post("/api-keys", ADMIN, json!({"teamName": "admin"}))
        .await
        .error(StatusCode::BAD_REQUEST);
    let a = h
        .post("/api-keys", ADMIN, json!({"teamName": "green"}))
        .await;
    assert_eq!(a.body["team"], "green", "{}", a.text);
}

#[tokio::test]
async fn teams_lists_what_the_caller_can_see() {
    let h = Harness::new().await;
    let red = h.team_key("red", json!({})).await;
    h.team_key("blue", json!({})).await;
    h.team_key("blue", json!({})).await;

    let all = h.get("/teams", ADMIN).await;
    assert_eq!(all.status, StatusCode::OK, "{}", all.text);
    assert_eq!(
        all.body,
        json!([
            {"teamID": "admin", "name": "admin", "apiKey": "", "isDefault": true},
            {"teamID": "blue", "name": "blue", "apiKey": "", "isDefault": false},
            {"teamID": "red", "name": "red", "apiKey": "", "isDefault": false},
        ])
    );
    let own = h.get("/teams", &red).await;
    assert_eq!(
        own.body,
        json!([{"teamID": "red", "name": "red", "apiKey": "", "isDefault": true}])
    );
    h.call(http::Method::GET, "/teams", None, None)
        .await
        .error(StatusCode::UNAUTHORIZED);
}

#[tokio::test]
async fn the_whole_api_is_served_under_kruise_api_too() {
    let h = Harness::new().await;
    let red = h.team_key("red", json!({})).await;
    assert_eq!(
        h.call(http::Method::GET, "/kruise/api/health", None, None)
            .await
            .status,
        StatusCode::OK
    );
    // Authentication applies under the prefix as well.
    h.call(http::Method::GET, "/kruise/api/v2/sandboxes", None, None)
        .await
        .error(StatusCode::UNAUTHORIZED);
    let a = h.post("/kruise/api/sandboxes", &red, json!({})).await;
    assert_eq!(a.status, StatusCode::CREATED, "{}", a.text);
    let id = a.body["sandboxID"].as_str().unwrap().to_string();
    // One set of sandboxes, whichever path lists them.
    let listed = h.get("/kruise/api/v2/sandboxes", &red).await;
    assert_eq!(listed.body.as_array().unwrap().len(), 1);
    assert_eq!(h.get("/v2/sandboxes", &red).await.body, listed.body);
    assert_eq!(
        h.get(&format!("/kruise/api/sandboxes/{id}"), &red)
            .await
            .status,
        StatusCode::OK
    );
    // Team isolation holds there too.
    let blue = h.team_key("blue", json!({})).await;
    h.get(&format!("/kruise/api/sandboxes/{id}"), &blue)
        .await
        .error(StatusCode::NOT_FOUND);
    assert_eq!(
        h.get("/kruise/api/teams", &red).await.body[0]["name"],
        "red"
    );
    assert_eq!(
        h.delete(&format!("/kruise/api/sandboxes/{id}"), &red)
            .await
            .status,
        StatusCode::NO_CONTENT
    );
    h.get("/kruise/api/nope", &red)
        .await
        .error(StatusCode::NOT_FOUND);
}
