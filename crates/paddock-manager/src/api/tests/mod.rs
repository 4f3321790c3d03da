//! The API driven as a `tower::Service` (no socket) over a [`fake::FakeInfra`].

mod extensions;
mod fake;
mod keys_and_auth;
mod record_store;
mod sandboxes;

use std::sync::Arc;

use axum::Router;
use axum::body::Body;
use http::{HeaderMap, Method, Request, StatusCode};
use http_body_util::BodyExt;
use serde_json::{Value, json};
use tower::ServiceExt;

use crate::{Manager, ManagerConfig, ManagerMetrics};
use fake::{FakeInfra, InitServer};

pub const ADMIN: &str = "e2b_test_admin_key";
/// The largest timeout the test manager allows, seconds.
pub const MAX_TIMEOUT: u64 = 3600;

pub struct Harness {
    pub app: Router,
    pub manager: Arc<Manager<FakeInfra>>,
    pub infra: Arc<FakeInfra>,
    pub init: InitServer,
    /// The data dir; kept until the test ends.
    pub dir: tempfile::TempDir,
}

/// An answer: status, headers and the body as JSON (`Null` when it is not JSON).
#[derive(Debug)]
pub struct Answer {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Value,
    pub text: String,
}

impl Answer {
    /// Asserts the status and the API's error shape: exactly `{code, message}`.
    #[track_caller]
    pub fn error(&self, status: StatusCode) -> &str {
        assert_eq!(self.status, status, "{}", self.text);
        let o = self
            .body
            .as_object()
            .expect("an error body is a JSON object");
        assert_eq!(o.len(), 2, "{}", self.text);
        assert_eq!(o["code"], json!(status.as_u16()), "{}", self.text);
        let m = o["message"].as_str().expect("message is a string");
        assert!(!m.is_empty());
        m
    }
}

/// How a [`Harness`] differs from the default.
#[derive(Default)]
pub struct Options {
    /// A record store the fake infra brings (as the Kubernetes backend does).
    pub records: Option<Arc<dyn paddock_infra::RecordStore>>,
    /// Turns API-key authentication off.
    pub no_auth: bool,
    /// The domain the API returns with each sandbox.
    pub domain: Option<String>,
}

impl Harness {
    pub async fn new() -> Self {
        Self::with(Options::default()).await
    }

    pub async fn with(options: Options) -> Self {
        let init = InitServer::start().await;
        let infra = Arc::new(FakeInfra::new(init.address).with_records(options.records));
        let dir = tempfile::tempdir().unwrap();
        let mut registry = prometheus_client::registry::Registry::default();
        let manager = Manager::start(
            infra.clone(),
            ManagerConfig {
                admin_api_key: ADMIN.into(),
                max_timeout_secs: MAX_TIMEOUT,
                data_dir: dir.path().to_path_buf(),
                envd_version: "0.6.4".into(),
                max_claim_workers: 4,
                auth_enabled: !options.no_auth,
                domain: options.domain,
            },
            ManagerMetrics::register(&mut registry),
        )
        .await
        .unwrap();
        let exporter: crate::Exporter = Arc::new(|| "# paddock test metrics\n".to_string());
        let app = crate::router(manager.clone(), exporter);
        Self {
            app,
            manager,
            infra,
            init,
            dir,
        }
    }

    pub async fn send(&self, req: Request<Body>) -> Answer {
        let resp = self.app.clone().oneshot(req).await.unwrap();
        let status = resp.status();
        let headers = resp.headers().clone();
        let bytes = resp.into_body().collect().await.unwrap().to_bytes();
        let text = String::from_utf8_lossy(&bytes).into_owned();
        let body = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
        Answer {
            status,
            headers,
            body,
            text,
        }
    }

    /// `method path` with `key` in `X-API-Key` and `body` as JSON.
    pub async fn call(
        &self,
        method: Method,
        path: &str,
        key: Option<&str>,
        body: Option<Value>,
    ) -> Answer {
        let mut req = Request::builder().method(method).uri(path);
        if let Some(k) = key {
            req = req.header("x-api-key", k);
        }
        let body = match body {
            Some(b) => {
                req = req.header("content-type", "application/json");
                Body::from(b.to_string())
            }
            None => Body::empty(),
        };
        self.send(req.body(body).unwrap()).await
    }

    pub async fn get(&self, path: &str, key: &str) -> Answer {
        self.call(Method::GET, path, Some(key), None).await
    }

    pub async fn post(&self, path: &str, key: &str, body: Value) -> Answer {
        self.call(Method::POST, path, Some(key), Some(body)).await
    }

    pub async fn delete(&self, path: &str, key: &str) -> Answer {
        self.call(Method::DELETE, path, Some(key), None).await
    }

    /// A new key for `team` with the quota fields in `extra`; returns the secret.
    pub async fn team_key(&self, team: &str, extra: Value) -> String {
        let mut body = json!({ "team": team });
        body.as_object_mut()
            .unwrap()
            .extend(extra.as_object().cloned().unwrap_or_default());
        let a = self.post("/api-keys", ADMIN, body).await;
        assert_eq!(a.status, StatusCode::CREATED, "{}", a.text);
        a.body["key"].as_str().unwrap().to_string()
    }

    /// Creates a sandbox (v2) for `key`; returns its id.
    pub async fn create(&self, key: &str, body: Value) -> String {
        let a = self.post("/v2/sandboxes", key, body).await;
        assert_eq!(a.status, StatusCode::CREATED, "{}", a.text);
        a.body["sandboxID"].as_str().unwrap().to_string()
    }
}
