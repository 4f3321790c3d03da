//! The Sandbox Gateway: the data-plane proxy into sandboxes.
//!
//! A request names its sandbox and port in one of three ways (checked in
//! this order): the `E2b-Sandbox-Id` / `E2b-Sandbox-Port` headers, a host of
//! the form `<port>-<id>.<domain>`, or a path `/kruise/<id>/<port>/...`. The
//! gateway looks the sandbox up, checks the sandbox's token, and forwards the
//! request to `<sandbox ip>:<port>`, streaming both bodies. Connection
//! upgrades (WebSocket) become a byte pipe; gRPC over h2c stays HTTP/2 end to
//! end; everything else goes to the sandbox over pooled HTTP/1.1.

pub mod access;
pub mod breaker;
pub mod metrics;
mod target;

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::http::{HeaderValue, Method, Request, StatusCode, Uri, Version};
use axum::response::{IntoResponse, Response};
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::sync::OwnedSemaphorePermit;

pub use access::Tokens;
pub use breaker::{Breakers, Thresholds};
pub use metrics::GatewayMetrics;
pub use target::{DEFAULT_PORT, Target, target_of};

use breaker::{ConnectionsExhausted, CountingConnector};
use metrics::{ReasonLabels, RequestLabels};

/// What the gateway needs to know about a sandbox.
#[derive(Debug, Clone)]
pub struct RouteInfo {
    pub ip: IpAddr,
    pub paused: bool,
    pub tokens: Tokens,
}

/// Looks sandboxes up for the gateway.
pub trait Routes: Send + Sync + 'static {
    fn lookup(&self, id: &str) -> Option<RouteInfo>;
}

type Upstream = Client<CountingConnector, Body>;

#[derive(Clone)]
struct Pool {
    http1: Upstream,
    /// Only for gRPC, which needs HTTP/2 to the sandbox too.
    http2: Upstream,
}

impl Pool {
    fn pick(&self, http2: bool) -> Upstream {
        if http2 {
            self.http2.clone()
        } else {
            self.http1.clone()
        }
    }
}

/// Forwards requests to sandboxes.
#[derive(Clone)]
pub struct Gateway {
    routes: Arc<dyn Routes>,
    /// One connection pool per sandbox: addresses are reused once a sandbox
    /// dies, and a pool keyed by address would hand a new sandbox the old
    /// one's dead connections.
    pools: Arc<Mutex<HashMap<String, Pool>>>,
    forwarded: Arc<AtomicU64>,
    breakers: Breakers,
    metrics: GatewayMetrics,
}

fn json_error(status: StatusCode, body: serde_json::Value, retry: bool) -> Response {
    let mut resp = (status, axum::Json(body)).into_response();
    if !retry {
        resp.headers_mut()
            .insert("should-retry", HeaderValue::from_static("false"));
    }
    resp
}

/// The 502 bodies the SDKs recognise ("was not found", "port is not open").
fn bad_gateway(id: &str, message: String) -> Response {
    json_error(
        StatusCode::BAD_GATEWAY,
        serde_json::json!({ "sandboxId": id, "message": message, "code": 502 }),
        false,
    )
}

/// The SDKs look for the exact phrase "port is not open".
fn port_not_open(target: &Target) -> Response {
    json_error(
        StatusCode::BAD_GATEWAY,
        serde_json::json!({
            "sandboxId": target.sandbox,
            "message": "The sandbox is running but port is not open",
            "port": target.port,
            "code": 502,
        }),
        false,
    )
}

const HOP_BY_HOP: &[&str] = &[
    "connection",
    "keep-alive",
    "proxy-connection",
    "te",
    "trailer",
    "upgrade",
];

/// Retries go only to requests that cannot have been seen by the sandbox
/// (the connection was never made) and carry no body to replay.
const RETRY_DELAYS: [Duration; 2] = [Duration::from_millis(20), Duration::from_millis(60)];

impl Gateway {
    pub fn new(routes: Arc<dyn Routes>, thresholds: Thresholds, metrics: GatewayMetrics) -> Self {
        Self {
            routes,
            pools: Default::default(),
            forwarded: Default::default(),
            breakers: Breakers::new(thresholds),
            metrics,
        }
    }

    fn pools(&self) -> MutexGuard<'_, HashMap<String, Pool>> {
        self.pools.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The pool for `sandbox`; now and then drops pools of sandboxes that are gone.
    fn upstream(&self, sandbox: &str, http2: bool) -> Upstream {
        let n = self.forwarded.fetch_add(1, Ordering::Relaxed);
        let mut pools = self.pools();
        if n % 256 == 255 {
            pools.retain(|id, _| self.routes.lookup(id).is_some());
        }
        if let Some(pool) = pools.get(sandbox) {
            return pool.pick(http2);
        }
        let pool = pools.entry(sandbox.to_string()).or_insert_with(|| {
            let connector = CountingConnector::new(self.breakers.clone());
            Pool {
                http1: Client::builder(TokioExecutor::new())
                    .pool_idle_timeout(Duration::from_secs(60))
                    .build(connector.clone()),
                http2: Client::builder(TokioExecutor::new())
                    .http2_only(true)
                    .pool_idle_timeout(Duration::from_secs(60))
                    .build(connector),
            }
        });
        pool.pick(http2)
    }

    /// Brings the gauges up to date (call before encoding the registry).
    pub fn refresh_gauges(&self) {
        self.metrics
            .active_requests
            .set(self.breakers.active_requests() as i64);
        self.metrics
            .open_connections
            .set(self.breakers.open_connections() as i64);
    }

    /// Whether this request is data-plane traffic for the gateway.
    pub fn claims(&self, req: &Request<Body>) -> bool {
        target_of(req).is_some()
    }

    fn reject(&self, reason: &'static str) {
        self.metrics
            .rejected
            .get_or_create(&ReasonLabels { reason })
            .inc();
    }

    /// Forwards `req` to its sandbox.
    pub async fn forward(&self, req: Request<Body>) -> Response {
        use tracing::Instrument;
        let Some(target) = target_of(&req) else {
            return (StatusCode::NOT_FOUND, "no sandbox named in this request").into_response();
        };
        let span = tracing::debug_span!("forward", sandbox = %target.sandbox, port = target.port);
        self.forward_to(req, target).instrument(span).await
    }

    async fn forward_to(&self, mut req: Request<Body>, target: Target) -> Response {
        let started = Instant::now();
        let Some(route) = self.routes.lookup(&target.sandbox) else {
            self.pools().remove(&target.sandbox);
            self.reject("not_found");
            return bad_gateway(&target.sandbox, "The sandbox was not found".into());
        };
        if route.paused {
            self.reject("paused");
            return bad_gateway(
                &target.sandbox,
                "The sandbox is paused: resume it (Sandbox.connect) before sending traffic; it was not found running".into(),
            );
        }
        let path = target.path.clone().unwrap_or_else(|| {
            req.uri()
                .path_and_query()
                .map(|p| p.as_str().to_string())
                .unwrap_or_else(|| "/".into())
        });
        if let Err(denied) = access::check(
            &route.tokens,
            target.port,
            req.method(),
            &path,
            req.headers(),
        ) {
            self.reject("token");
            return json_error(
                StatusCode::UNAUTHORIZED,
                serde_json::json!({ "code": 401, "message": denied.message() }),
                false,
            );
        }
        let (request_slot, pending_slot) = match self.breakers.admit() {
            Ok(slots) => slots,
            Err(tripped) => return self.overloaded(tripped.label()),
        };
        let addr = SocketAddr::new(route.ip, target.port);
        req.headers_mut().remove("e2b-sandbox-id");
        req.headers_mut().remove("e2b-sandbox-port");
        if is_upgrade(&req) {
            return self.upgrade(req, addr, &path, &target, request_slot).await;
        }
        let uri: Uri = match format!("http://{addr}{path}").parse() {
            Ok(u) => u,
            Err(_) => return (StatusCode::BAD_REQUEST, "invalid request path").into_response(),
        };
        *req.uri_mut() = uri;
        for h in HOP_BY_HOP {
            req.headers_mut().remove(*h);
        }
        let grpc = req.version() == Version::HTTP_2
            && req
                .headers()
                .get("content-type")
                .and_then(|v| v.to_str().ok())
                .is_some_and(|ct| ct.starts_with("application/grpc"));
        if !grpc {
            *req.version_mut() = Version::HTTP_11;
        }
        let client = self.upstream(&target.sandbox, grpc);
        let replay = bodiless(&req).then(|| {
            let mut copy = Request::new(());
            *copy.method_mut() = req.method().clone();
            *copy.uri_mut() = req.uri().clone();
            *copy.version_mut() = req.version();
            *copy.headers_mut() = req.headers().clone();
            copy
        });
        let mut result = client.request(req).await;
        if let Some(template) = replay {
            for delay in RETRY_DELAYS {
                let retry = match &result {
                    Err(e) if e.is_connect() && !caused_by_breaker(e) => self.breakers.retry(),
                    _ => None,
                };
                let Some(_retry_slot) = retry else { break };
                tokio::time::sleep(delay).await;
                let mut again = Request::new(Body::empty());
                *again.method_mut() = template.method().clone();
                *again.uri_mut() = template.uri().clone();
                *again.version_mut() = template.version();
                *again.headers_mut() = template.headers().clone();
                result = client.request(again).await;
            }
        }
        drop(pending_slot);
        match result {
            Ok(resp) => {
                self.observe(target.port, resp.status(), started);
                resp.map(|b| {
                    Body::new(Guarded {
                        inner: Body::new(b),
                        _slot: request_slot,
                    })
                })
            }
            Err(e) if caused_by_breaker(&e) => self.overloaded("max_connections"),
            Err(e) => {
                let reason = if e.is_connect() { "connect" } else { "io" };
                self.metrics
                    .upstream_errors
                    .get_or_create(&ReasonLabels { reason })
                    .inc();
                tracing::debug!(error = %e, "upstream failed");
                if e.is_connect() {
                    port_not_open(&target)
                } else {
                    bad_gateway(
                        &target.sandbox,
                        format!(
                            "The sandbox's server on port {} closed the connection: {e}",
                            target.port
                        ),
                    )
                }
            }
        }
    }

    fn observe(&self, port: u16, status: StatusCode, started: Instant) {
        self.metrics
            .requests
            .get_or_create(&RequestLabels {
                port: metrics::port_kind(port),
                class: metrics::class(status.as_u16()),
            })
            .inc();
        self.metrics
            .latency
            .observe(started.elapsed().as_secs_f64());
    }

    fn overloaded(&self, which: &'static str) -> Response {
        self.reject(which);
        tracing::warn!(breaker = which, "circuit breaker open: request refused");
        json_error(
            StatusCode::SERVICE_UNAVAILABLE,
            serde_json::json!({
                "code": 503,
                "message": format!("the gateway is overloaded ({which} reached); retry later"),
            }),
            true,
        )
    }

    /// A connection upgrade: sends the handshake on a fresh connection of
    /// its own and, once the sandbox agrees (101), pipes bytes both ways
    /// until either side closes.
    async fn upgrade(
        &self,
        mut req: Request<Body>,
        addr: SocketAddr,
        path: &str,
        target: &Target,
        request_slot: OwnedSemaphorePermit,
    ) -> Response {
        let started = Instant::now();
        let conn_slot = match self.breakers.connection() {
            Ok(s) => s,
            Err(t) => return self.overloaded(t.label()),
        };
        let not_open = || port_not_open(target);
        let stream = match tokio::time::timeout(
            Duration::from_secs(5),
            tokio::net::TcpStream::connect(addr),
        )
        .await
        {
            Ok(Ok(s)) => s,
            _ => return not_open(),
        };
        let _ = stream.set_nodelay(true);
        let (mut sender, conn) =
            match hyper::client::conn::http1::handshake::<_, Body>(TokioIo::new(stream)).await {
                Ok(x) => x,
                Err(_) => return not_open(),
            };
        tokio::spawn(async move {
            if let Err(e) = conn.with_upgrades().await {
                tracing::debug!(error = %e, "upgrade connection ended with an error");
            }
        });
        let client_side = hyper::upgrade::on(&mut req);
        *req.uri_mut() = match path.parse() {
            Ok(u) => u,
            Err(_) => return (StatusCode::BAD_REQUEST, "invalid request path").into_response(),
        };
        *req.version_mut() = Version::HTTP_11;
        let mut resp = match sender.send_request(req).await {
            Ok(r) => r,
            Err(_) => return not_open(),
        };
        self.observe(target.port, resp.status(), started);
        if resp.status() == StatusCode::SWITCHING_PROTOCOLS {
            self.metrics.upgrades.inc();
            let sandbox_side = hyper::upgrade::on(&mut resp);
            let sandbox = target.sandbox.clone();
            tokio::spawn(async move {
                let _slots = (request_slot, conn_slot);
                match tokio::try_join!(client_side, sandbox_side) {
                    Ok((c, s)) => {
                        let (mut c, mut s) = (TokioIo::new(c), TokioIo::new(s));
                        if let Err(e) = tokio::io::copy_bidirectional(&mut c, &mut s).await {
                            tracing::debug!(%sandbox, error = %e, "upgraded connection closed");
                        }
                    }
                    Err(e) => tracing::debug!(%sandbox, error = %e, "upgrade failed"),
                }
            });
        }
        resp.map(Body::new)
    }
}

fn is_upgrade(req: &Request<Body>) -> bool {
    req.version() == Version::HTTP_11
        && req.headers().contains_key("upgrade")
        && req
            .headers()
            .get_all("connection")
            .iter()
            .filter_map(|v| v.to_str().ok())
            .any(|v| {
                v.split(',')
                    .any(|t| t.trim().eq_ignore_ascii_case("upgrade"))
            })
}

fn bodiless(req: &Request<Body>) -> bool {
    let safe = matches!(
        *req.method(),
        Method::GET | Method::HEAD | Method::OPTIONS | Method::DELETE
    );
    let h = req.headers();
    let no_length = h.get("content-length").is_none_or(|v| v.as_bytes() == b"0");
    safe && no_length && !h.contains_key("transfer-encoding")
}

fn caused_by_breaker(e: &hyper_util::client::legacy::Error) -> bool {
    let mut source = std::error::Error::source(e);
    while let Some(s) = source {
        if s.is::<ConnectionsExhausted>() {
            return true;
        }
        source = s.source();
    }
    false
}

/// A response body that holds its `max_requests` slot until it is done.
struct Guarded {
    inner: Body,
    _slot: OwnedSemaphorePermit,
}

impl http_body::Body for Guarded {
    type Data = bytes::Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Self::Data>, Self::Error>>> {
        Pin::new(&mut self.inner).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}
