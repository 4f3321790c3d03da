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

type Upstream = Client<HttpConnector, Body>;

/// Forwards requests to sandboxes.
#[derive(Clone)]
pub struct Gateway {
    routes: Arc<dyn Routes>,
    /// One connection pool per sandbox: addresses are reused once a sandbox
    /// dies, and a pool keyed by address would hand a new sandbox the old
    /// one's dead connections.
    pools: Arc<std::sync::Mutex<std::collections::HashMap<String, Upstream>>>,
    forwarded: Arc<std::sync::atomic::AtomicU64>,
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
        Self {
            routes,
            pools: Default::default(),
            forwarded: Default::default(),
        }
    }

    fn pools(&self) -> std::sync::MutexGuard<'_, std::collections::HashMap<String, Upstream>> {
        self.pools.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The pool for `sandbox`; now and then drops pools of sandboxes that are gone.
    fn upstream(&self, sandbox: &str) -> Upstream {
        let n = self
            .forwarded
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let mut pools = self.pools();
        if n % 256 == 255 {
            pools.retain(|id, _| self.routes.lookup(id).is_some());
        }
        pools
            .entry(sandbox.to_string())
            .or_insert_with(|| {
                let mut connector = HttpConnector::new();
                // Small RPC frames must not wait for delayed ACKs.
                connector.set_nodelay(true);
                Client::builder(TokioExecutor::new())
                    .pool_idle_timeout(std::time::Duration::from_secs(60))
                    .build(connector)
            })
            .clone()
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
            self.pools().remove(&target.sandbox);
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
        match self.upstream(&target.sandbox).request(req).await {
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
