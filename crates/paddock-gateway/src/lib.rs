//! The Sandbox Gateway: the data-plane proxy into sandboxes.
//!
//! A request names its sandbox and port in one of three ways (checked in
//! this order): the `E2b-Sandbox-Id` / `E2b-Sandbox-Port` headers, a host of
//! the form `<port>-<id>.<domain>`, or a path `/kruise/<id>/<port>/...`. The
//! gateway looks the sandbox up in the manager's route table and forwards
//! the request, streaming both bodies, to `<sandbox ip>:<port>`.

mod target;

use std::sync::Arc;

use axum::body::Body;
use axum::http::{HeaderValue, Request, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;

pub use target::{Target, target_of};

/// Looks sandboxes up for the gateway.
pub trait Routes: Send + Sync + 'static {
    /// The sandbox's IP, and whether it is paused.
    fn lookup(&self, id: &str) -> Option<(std::net::IpAddr, bool)>;
}

/// Forwards requests to sandboxes.
#[derive(Clone)]
pub struct Gateway {
    routes: Arc<dyn Routes>,
    client: Client<HttpConnector, Body>,
}

/// The 502 bodies the SDKs recognise ("was not found", "port is not open").
fn bad_gateway(id: &str, message: String) -> Response {
    let body = serde_json::json!({ "sandboxId": id, "message": message, "code": 502 });
    let mut resp = (StatusCode::BAD_GATEWAY, axum::Json(body)).into_response();
    resp.headers_mut()
        .insert("should-retry", HeaderValue::from_static("false"));
    resp
}

const HOP_BY_HOP: &[&str] = &[
    "connection",
    "keep-alive",
    "proxy-connection",
    "te",
    "trailer",
    "upgrade",
];

impl Gateway {
    pub fn new(routes: Arc<dyn Routes>) -> Self {
        let mut connector = HttpConnector::new();
        // Small RPC frames must not wait for delayed ACKs.
        connector.set_nodelay(true);
        let client = Client::builder(TokioExecutor::new())
            .pool_idle_timeout(std::time::Duration::from_secs(60))
            .build(connector);
        Self { routes, client }
    }

    /// Whether this request is data-plane traffic for the gateway.
    pub fn claims(&self, req: &Request<Body>) -> bool {
        target_of(req).is_some()
    }

    /// Forwards `req` to its sandbox.
    pub async fn forward(&self, mut req: Request<Body>) -> Response {
        let Some(target) = target_of(&req) else {
            return (StatusCode::NOT_FOUND, "no sandbox named in this request").into_response();
        };
        let Some((ip, paused)) = self.routes.lookup(&target.sandbox) else {
            return bad_gateway(&target.sandbox, "The sandbox was not found".into());
        };
        if paused {
            return bad_gateway(
                &target.sandbox,
                "The sandbox is paused: resume it (Sandbox.connect) before sending traffic; it was not found running".into(),
            );
        }
        let path = target.path.unwrap_or_else(|| {
            req.uri()
                .path_and_query()
                .map(|p| p.as_str().to_string())
                .unwrap_or_else(|| "/".into())
        });
        let uri: Uri = match format!("http://{ip}:{}{path}", target.port).parse() {
            Ok(u) => u,
            Err(_) => return (StatusCode::BAD_REQUEST, "invalid request path").into_response(),
        };
        *req.uri_mut() = uri;
        for h in HOP_BY_HOP {
            req.headers_mut().remove(*h);
        }
        req.headers_mut().remove("e2b-sandbox-id");
        req.headers_mut().remove("e2b-sandbox-port");
        match self.client.request(req).await {
            Ok(resp) => resp.map(Body::new),
            Err(e) => {
                tracing::debug!(sandbox = %target.sandbox, port = target.port, error = %e, "upstream failed");
                bad_gateway(
                    &target.sandbox,
                    format!(
                        "The sandbox is running but port {} is not open",
                        target.port
                    ),
                )
            }
        }
    }
}
