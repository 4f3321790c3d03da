//! The Sandbox Gateway: the data-plane proxy into sandboxes.
//!
//! A request names its sandbox and port in one of three ways (checked in
//! this order): the `E2b-Sandbox-Id` / `E2b-Sandbox-Port` headers, a host of
//! the form `<port>-<id>.<domain>`, or a path `/kruise/<id>/<port>/...`. The
//! gateway looks the sandbox up, checks the sandbox's token, and forwards the
//! request to `<sandbox ip>:<port>`, streaming both bodies. Connection
//! upgrades (WebSocket) become a byte pipe; gRPC over h2c stays HTTP/2 end to
//! end; everything else goes to the sandbox over pooled HTTP/1.1.
//!
//! The request path is a list of phases, one module each, run in order by
//! [`Gateway::forward`]:
//!
//! | phase | module | job |
//! |---|---|---|
//! | target | `target` | which sandbox and port the request names |
//! | route | [`route`] | where that sandbox lives, and whether it is running |
//! | access | [`access`] | the sandbox's tokens |
//! | wake | [`wake`] | resumes a paused sandbox that resumes on traffic |
//! | admit | `admit` | circuit-breaker slots ([`breaker`]) |
//! | rewrite | `rewrite` | what the sandbox sees: routing and hop-by-hop headers, URI, version |
//! | protocol | `protocol` | upgrade, gRPC (HTTP/2) or pooled HTTP/1.1 |
//! | upstream | `upstream`, `upgrade`, `retry` | sending, with retries only where safe |
//! | errors | [`errors`] | every failure's response and metric, in one place |

pub mod access;
mod admit;
pub mod breaker;
mod drain;
pub mod errors;
pub mod metrics;
pub mod peer;
mod pipe;
mod protocol;
mod retry;
mod rewrite;
pub mod route;
mod signed;
mod target;
mod upgrade;
mod upstream;
pub mod wake;
pub mod workers;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use axum::body::Body;
use axum::http::{Request, StatusCode};
use axum::response::Response;
use http_body_util::Either;

pub use access::Tokens;
pub use breaker::{Breakers, Thresholds};
pub use errors::GatewayError;
pub use metrics::GatewayMetrics;
pub use route::{Fetched, RouteInfo, Routes};
pub use signed::Signed;
pub use target::{DEFAULT_PORT, RoutingHeaders, Target, target_of, target_with};
pub use wake::{Waker, Waking, Woken};

use admit::Admission;
use metrics::ReasonLabels;
use protocol::Protocol;
use upstream::Pools;

/// What a data-plane request asks for (see [`Gateway::claim`]).
#[derive(Debug, Clone)]
pub enum Claim {
    /// It names its sandbox and port.
    Target(Target),
    /// A signed file URL that names no sandbox: the signature says whose it is.
    Signed(signed::Signed),
}

/// Forwards requests to sandboxes.
#[derive(Clone)]
pub struct Gateway {
    routes: Arc<dyn Routes>,
    pools: Pools,
    breakers: Breakers,
    metrics: GatewayMetrics,
    headers: Arc<RoutingHeaders>,
    /// Resumes paused sandboxes that asked for it; `None`: paused stays paused.
    wakes: Option<wake::Wakes>,
}

impl Gateway {
    pub fn new(routes: Arc<dyn Routes>, thresholds: Thresholds, metrics: GatewayMetrics) -> Self {
        Self {
            routes,
            pools: Pools::default(),
            breakers: Breakers::new(thresholds),
            metrics,
            headers: Arc::new(RoutingHeaders::default()),
            wakes: None,
        }
    }

    /// This gateway for one worker thread ([`workers`]): everything shared (routes, breakers,
    /// metrics, wakes, routing headers) but the pools of sandbox connections, which are the
    /// worker's own, so that a pooled connection is only ever used on the thread that drives
    /// it.
    pub fn for_worker(&self) -> Self {
        Self {
            pools: Pools::default(),
            ..self.clone()
        }
    }

    /// Lets requests for a paused sandbox wake it through `waker` (see [`wake`]).
    pub fn with_waker(mut self, waker: Arc<dyn Waker>) -> Self {
        self.wakes = Some(wake::Wakes::new(waker));
        self
    }

    /// The circuit breakers' live counters.
    pub fn breakers(&self) -> &Breakers {
        &self.breakers
    }

    /// Idle pooled connections to `sandbox` now (all its ports).
    pub fn idle_connections(&self, sandbox: &str) -> usize {
        self.pools.idle(sandbox)
    }

    /// Routes by these header names instead of the E2B SDK's.
    pub fn with_routing_headers(mut self, headers: RoutingHeaders) -> Self {
        self.headers = Arc::new(headers);
        self
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

    /// Whether this request is data-plane traffic for the gateway: it names a sandbox, or it
    /// is a signed file URL (which names none, see [`signed`]).
    pub fn claims(&self, req: &Request<Body>) -> bool {
        self.claim(req).is_some()
    }

    /// What this request asks of the gateway, if it is data-plane traffic: read once, so
    /// that a caller who routes on it ([`Gateway::forward_claim`]) does not parse it again.
    pub fn claim(&self, req: &Request<Body>) -> Option<Claim> {
        match target_with(req, &self.headers) {
            Some(t) => Some(Claim::Target(t)),
            None => signed::signed_parts(req).map(Claim::Signed),
        }
    }

    /// Forwards `req` to its sandbox.
    pub async fn forward(&self, req: Request<Body>) -> Response {
        match self.claim(&req) {
            Some(claim) => self.forward_claim(req, claim).await,
            None => GatewayError::NoTarget.into_response(),
        }
    }

    /// Forwards `req`, which [`Gateway::claim`] read as `claim`, to its sandbox.
    pub async fn forward_claim(&self, req: Request<Body>, claim: Claim) -> Response {
        use tracing::Instrument;
        let target = match claim {
            Claim::Target(t) => t,
            Claim::Signed(parts) => match signed::signer(&*self.routes, parts).await {
                Some(t) => t,
                None => return self.fail(GatewayError::NoSigner),
            },
        };
        let span = tracing::debug_span!("forward", sandbox = %target.sandbox, port = target.port);
        async {
            match self.phases(req, &target, Instant::now()).await {
                Ok(resp) => resp,
                Err(e) => self.fail(e),
            }
        }
        .instrument(span)
        .await
    }

    /// The request path, one phase per step; the first failure ends it.
    async fn phases(
        &self,
        mut req: Request<Body>,
        target: &Target,
        started: Instant,
    ) -> Result<Response, GatewayError> {
        // The token check judges the path the sandbox will see.
        let checked = self
            .admission_phases(
                req.method(),
                req.headers(),
                rewrite::upstream_path(target, &req),
                target,
            )
            .await;
        let (route, admission) = match checked {
            Ok(admitted) => admitted,
            Err(e) => {
                // Refused from the headers: take in the rest of a small body first, so the
                // client sees the answer rather than a reset stream (see [`drain`]).
                drain::body(req.into_body(), drain::LIMIT, drain::WAIT).await;
                return Err(e);
            }
        };
        // The routing headers are ours; the protocol choice must not see them
        // and neither must the sandbox.
        rewrite::strip_routing_headers(req.headers_mut(), &self.headers);
        let addr = SocketAddr::new(route.ip, target.port);
        let protocol = Protocol::of(&req);
        let resp = match protocol {
            Protocol::Upgrade => {
                let path = rewrite::upstream_path(target, &req).to_string();
                upgrade::forward(req, addr, &path, target, &self.breakers, admission).await?
            }
            Protocol::Grpc | Protocol::Http1 => {
                let grpc = protocol == Protocol::Grpc;
                self.pooled(req, addr, target, grpc, admission).await?
            }
        };
        self.observe(target.port, resp.status(), started);
        Ok(resp)
    }

    /// The phases that may refuse a request before anything is sent: route, tokens,
    /// admission. Returns the route and the held slots. (The request's parts, not the
    /// request: its body is not `Sync`, and this future must be `Send`.)
    async fn admission_phases(
        &self,
        method: &axum::http::Method,
        headers: &axum::http::HeaderMap,
        path: &str,
        target: &Target,
    ) -> Result<(RouteInfo, Admission), GatewayError> {
        // Route first: every later phase needs the route (its tokens, its
        // address). A sandbox that is gone takes its connection pool along.
        let mut route = route::find(&*self.routes, target).await.inspect_err(|e| {
            if matches!(e, GatewayError::NotFound { .. }) {
                self.pools.forget(&target.sandbox);
            }
        })?;
        // A paused sandbox is not serving; without a waker nothing can change
        // that, whoever asks.
        if route.paused && self.wakes.is_none() {
            return Err(GatewayError::Paused {
                sandbox: target.sandbox.clone(),
            });
        }
        // Tokens before admission: an unauthorised request must not take a
        // breaker slot.
        access::check(&route.tokens, target.port, method, path, headers)?;
        // Only a request the sandbox would accept may wake it.
        if route.paused {
            route = self.wake(target).await?;
        }
        // Admission before anything is sent, so a tripped breaker refuses
        // at once instead of queueing.
        let admission = admit::admit(&self.breakers, &target.sandbox)?;
        Ok((route, admission))
    }

    /// The wake phase: resumes a paused sandbox that resumes on traffic and
    /// returns its route, or the paused answer.
    async fn wake(&self, target: &Target) -> Result<RouteInfo, GatewayError> {
        let paused = || GatewayError::Paused {
            sandbox: target.sandbox.clone(),
        };
        let Some(wakes) = &self.wakes else {
            return Err(paused());
        };
        match wakes.wake(&target.sandbox).await {
            Woken::Resumed(r) if !r.paused => Ok(r),
            Woken::Resumed(_) | Woken::NotWakeable => Err(paused()),
            Woken::Failed(detail) => {
                tracing::warn!(sandbox = %target.sandbox, %detail, "waking a paused sandbox failed");
                Err(GatewayError::WakeFailed {
                    sandbox: target.sandbox.clone(),
                    detail,
                })
            }
        }
    }

    /// The upstream phase for everything but upgrades: the sandbox's pool of HTTP/1.1
    /// connections, or HTTP/2 end to end for gRPC.
    async fn pooled(
        &self,
        mut req: Request<Body>,
        addr: SocketAddr,
        target: &Target,
        grpc: bool,
        mut admission: Admission,
    ) -> Result<Response, GatewayError> {
        let pool = self
            .pools
            .pool(&target.sandbox, &self.breakers, &*self.routes);
        let result = if grpc {
            let path = rewrite::upstream_path(target, &req).to_string();
            rewrite::for_http2(&mut req, addr, &path)?;
            upstream::send_http2(pool.http2(), req, &self.breakers)
                .await
                .map(|r| r.map(Either::Right))
        } else {
            rewrite::for_http1(&mut req, target, addr)?;
            upstream::send_http1(&pool, addr, req, &self.breakers)
                .await
                .map(|r| r.map(Either::Left))
        };
        admission.headers_received();
        let resp = result.map_err(|e| {
            tracing::debug!(error = ?e, "upstream failed");
            GatewayError::from_failure(&target.sandbox, target.port, e)
        })?;
        // One box for the body, whichever way it came.
        Ok(admission.hold(resp))
    }

    /// Counts a response the sandbox gave.
    fn observe(&self, port: u16, status: StatusCode, started: Instant) {
        self.metrics.count_request(port, status.as_u16());
        self.metrics
            .latency
            .observe(started.elapsed().as_secs_f64());
        if status == StatusCode::SWITCHING_PROTOCOLS {
            self.metrics.upgrades.inc();
        }
    }

    /// Counts a failure under its metric and answers it.
    fn fail(&self, e: GatewayError) -> Response {
        if let Some(reason) = e.rejected_reason() {
            self.metrics
                .rejected
                .get_or_create(&ReasonLabels { reason })
                .inc();
        }
        if let Some(reason) = e.upstream_reason() {
            self.metrics
                .upstream_errors
                .get_or_create(&ReasonLabels { reason })
                .inc();
        }
        if let GatewayError::Overloaded(tripped) = &e {
            tracing::warn!(
                breaker = tripped.label(),
                "circuit breaker open: request refused"
            );
        }
        e.into_response()
    }
}
