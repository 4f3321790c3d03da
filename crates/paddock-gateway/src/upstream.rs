//! The upstream phase for pooled traffic: per-sandbox connection pools and
//! sending a request with the retry policy applied.
//!
//! HTTP/1.1 (nearly all traffic) goes over a pool of our own: idle
//! `hyper::client::conn::http1` connections per sandbox, taken by one request
//! at a time and given back when its response body ends ([`Returning`]). A
//! connection is made (or taken) before the request is handed to it, so a
//! failed connect leaves the request untouched for the next attempt, and
//! nothing is spawned per request (hyper-util's pooled client spawns a task
//! per response to give its connection back, and routes every request
//! through its checkout machinery). gRPC needs HTTP/2 to the sandbox and keeps
//! hyper-util's client.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::http::Request;
use hyper::body::Incoming;
use hyper::client::conn::http1::SendRequest;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo};

use crate::breaker::{Breakers, Counted, CountingConnector};
use crate::errors::UpstreamFailure;
use crate::retry::{self, Replay};
use crate::route::Routes;

pub type Upstream = Client<CountingConnector, Body>;

/// How long an idle connection to a sandbox is kept.
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(60);
/// How long a connect to a sandbox may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// Fresh connections a request may try when each closes before taking it (a server that
/// accepts and hangs up at once); reused ones that turn out closed do not count.
const FRESH_ATTEMPTS: usize = 3;

pub struct Pool {
    /// Idle HTTP/1.1 connections by address (a sandbox has a port per server, and an
    /// address that changes when it is resumed elsewhere), the most recently used last.
    idle: Mutex<Vec<(SocketAddr, Vec<Idle>)>>,
    /// Only for gRPC, which needs HTTP/2 to the sandbox too.
    http2: Upstream,
}

struct Idle {
    conn: SendRequest<Body>,
    since: Instant,
}

type IdleLists = Vec<(SocketAddr, Vec<Idle>)>;

impl Pool {
    fn new(breakers: &Breakers) -> Self {
        Pool {
            idle: Mutex::default(),
            http2: Client::builder(TokioExecutor::new())
                .http2_only(true)
                .pool_idle_timeout(IDLE_TIMEOUT)
                .build(CountingConnector::new(breakers.clone())),
        }
    }

    pub fn http2(&self) -> &Upstream {
        &self.http2
    }

    fn idle(&self) -> MutexGuard<'_, IdleLists> {
        self.idle.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// An idle connection to `addr` ready for a request, if one is.
    fn checkout(self: &Arc<Self>, addr: SocketAddr) -> Option<SendRequest<Body>> {
        loop {
            let mut conn = {
                let mut lists = self.idle();
                let list = &mut lists.iter_mut().find(|(a, _)| *a == addr)?.1;
                expire(list, Instant::now());
                list.pop()?.conn
            };
            if conn.is_closed() {
                continue;
            }
            if conn.is_ready() {
                return Some(conn);
            }
            // Given back before it could take the next request: its response ended while the
            // request's own body was still going up (a server that answers early). It joins
            // the idle ones when it can; this request does not wait for it.
            let pool = Arc::downgrade(self);
            tokio::spawn(async move {
                if conn.ready().await.is_ok()
                    && let Some(pool) = pool.upgrade()
                {
                    pool.checkin(addr, conn);
                }
            });
        }
    }

    fn checkin(&self, addr: SocketAddr, conn: SendRequest<Body>) {
        let idle = Idle {
            conn,
            since: Instant::now(),
        };
        let mut lists = self.idle();
        match lists.iter_mut().find(|(a, _)| *a == addr) {
            Some((_, list)) => list.push(idle),
            None => lists.push((addr, vec![idle])),
        }
    }

    /// Drops connections idle past [`IDLE_TIMEOUT`], and the lists left empty.
    fn sweep(&self, now: Instant) {
        let mut lists = self.idle();
        for (_, list) in lists.iter_mut() {
            expire(list, now);
        }
        lists.retain(|(_, list)| !list.is_empty());
    }

    /// Idle connections still open.
    fn idle_count(&self) -> usize {
        self.idle()
            .iter()
            .flat_map(|(_, list)| list.iter())
            .filter(|i| !i.conn.is_closed())
            .count()
    }
}

/// Drops the connections idle for longer than [`IDLE_TIMEOUT`] (the oldest come first).
fn expire(idle: &mut Vec<Idle>, now: Instant) {
    let stale = idle
        .iter()
        .take_while(|i| now.duration_since(i.since) >= IDLE_TIMEOUT)
        .count();
    if stale > 0 {
        idle.drain(..stale);
    }
}

/// One connection pool per sandbox: addresses are reused once a sandbox
/// dies, and a pool keyed by address would hand a new sandbox the old one's
/// dead connections.
#[derive(Clone, Default)]
pub struct Pools {
    pools: Arc<Mutex<HashMap<String, Arc<Pool>>>>,
    handed_out: Arc<AtomicU64>,
    /// Whether the sweeper of idle connections runs (started with the first pool).
    sweeping: Arc<std::sync::OnceLock<()>>,
}

impl Pools {
    fn lock(&self) -> MutexGuard<'_, HashMap<String, Arc<Pool>>> {
        self.pools.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The pools of `sandbox` (one reference count per request); now and then drops pools of
    /// sandboxes that `routes` no longer knows.
    pub fn pool(&self, sandbox: &str, breakers: &Breakers, routes: &dyn Routes) -> Arc<Pool> {
        let n = self.handed_out.fetch_add(1, Ordering::Relaxed);
        let mut pools = self.lock();
        if n % 256 == 255 {
            pools.retain(|id, _| routes.lookup(id).is_some());
        }
        if let Some(pool) = pools.get(sandbox) {
            return pool.clone();
        }
        self.sweeping.get_or_init(|| self.spawn_sweeper());
        pools
            .entry(sandbox.to_string())
            .or_insert_with(|| Arc::new(Pool::new(breakers)))
            .clone()
    }

    /// Drops the pool of a sandbox that is gone, closing its idle connections.
    pub fn forget(&self, sandbox: &str) {
        self.lock().remove(sandbox);
    }

    /// Idle connections to `sandbox` now.
    pub fn idle(&self, sandbox: &str) -> usize {
        self.lock().get(sandbox).map_or(0, |p| p.idle_count())
    }

    /// Closes idle connections past their time even in pools no request takes from any
    /// more, so that they give their `max_connections` slots back. Ends with the pools.
    fn spawn_sweeper(&self) {
        let pools = Arc::downgrade(&self.pools);
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(IDLE_TIMEOUT / 4);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                let Some(pools) = Weak::upgrade(&pools) else {
                    return;
                };
                let all: Vec<Arc<Pool>> = pools
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .values()
                    .cloned()
                    .collect();
                let now = Instant::now();
                for pool in all {
                    pool.sweep(now);
                }
            }
        });
    }
}

/// Why a pooled HTTP/1.1 request got no response.
#[derive(Debug)]
pub enum Failure {
    /// `max_connections` is reached: nothing was sent.
    Breaker,
    /// No connection could be made: nothing was sent.
    Connect,
    /// The connection failed once it had the request: the sandbox may have seen it.
    Io(Box<dyn std::error::Error + Send + Sync>),
}

impl Failure {
    /// How hyper-util's client (the HTTP/2 path) failed.
    pub(crate) fn from_legacy(e: hyper_util::client::legacy::Error) -> Self {
        match UpstreamFailure::of(&e) {
            UpstreamFailure::Breaker => Failure::Breaker,
            UpstreamFailure::Connect => Failure::Connect,
            UpstreamFailure::Io => Failure::Io(Box::new(e)),
        }
    }

    pub(crate) fn kind(&self) -> UpstreamFailure {
        match self {
            Failure::Breaker => UpstreamFailure::Breaker,
            Failure::Connect => UpstreamFailure::Connect,
            Failure::Io(_) => UpstreamFailure::Io,
        }
    }
}

/// Sends `req` (origin-form URI, HTTP/1.1) to `addr` over a connection of `pool`: an idle
/// one, else a new one. A connect that fails is tried again while [`retry::worth_retrying`]
/// says so and the `max_retries` budget has room; the request was never handed over, so
/// any request may be. The response's body gives the connection back when it ends.
pub async fn send_http1(
    pool: &Arc<Pool>,
    addr: SocketAddr,
    mut req: Request<Body>,
    breakers: &Breakers,
) -> Result<hyper::Response<Returning>, Failure> {
    let mut fresh = 0;
    loop {
        let mut conn = match pool.checkout(addr) {
            Some(c) => c,
            None => {
                fresh += 1;
                connect_with_retries(addr, breakers).await?
            }
        };
        match conn.try_send_request(req).await {
            Ok(resp) => {
                return Ok(resp.map(|inner| Returning::new(inner, conn, pool, addr)));
            }
            Err(mut e) => match e.take_message() {
                // Closed before it took the request: the sandbox has not seen it.
                Some(again) if fresh < FRESH_ATTEMPTS => req = again,
                _ => return Err(Failure::Io(Box::new(e.into_error()))),
            },
        }
    }
}

async fn connect_with_retries(
    addr: SocketAddr,
    breakers: &Breakers,
) -> Result<SendRequest<Body>, Failure> {
    retry::with_retries(breakers, Failure::kind, || connect(addr, breakers)).await
}

/// A new HTTP/1.1 connection to `addr`, holding one `max_connections` slot while it lives;
/// its driver runs as a task of its own.
async fn connect(addr: SocketAddr, breakers: &Breakers) -> Result<SendRequest<Body>, Failure> {
    let permit = breakers.connection().map_err(|_| Failure::Breaker)?;
    let stream =
        match tokio::time::timeout(CONNECT_TIMEOUT, tokio::net::TcpStream::connect(addr)).await {
            Ok(Ok(s)) => s,
            Ok(Err(e)) => {
                tracing::debug!(%addr, error = %e, "connecting to the sandbox failed");
                return Err(Failure::Connect);
            }
            Err(_) => {
                tracing::debug!(%addr, "connecting to the sandbox timed out");
                return Err(Failure::Connect);
            }
        };
    // Small RPC frames must not wait for delayed ACKs.
    let _ = stream.set_nodelay(true);
    let io = Counted::new(TokioIo::new(stream), permit);
    let (conn, driver) = hyper::client::conn::http1::handshake::<_, Body>(io)
        .await
        .map_err(|_| Failure::Connect)?;
    tokio::spawn(async move {
        if let Err(e) = driver.await {
            tracing::debug!(error = %e, "sandbox connection ended with an error");
        }
    });
    Ok(conn)
}

/// A response body that gives its connection back to the pool once it has ended. One that
/// is dropped before its end takes the connection along (HTTP/1.1 cannot reuse it).
pub struct Returning {
    inner: Incoming,
    lent: Option<Lent>,
}

struct Lent {
    conn: SendRequest<Body>,
    pool: Arc<Pool>,
    addr: SocketAddr,
}

impl Returning {
    fn new(inner: Incoming, conn: SendRequest<Body>, pool: &Arc<Pool>, addr: SocketAddr) -> Self {
        let mut body = Returning {
            inner,
            lent: Some(Lent {
                conn,
                pool: pool.clone(),
                addr,
            }),
        };
        // No body at all (204, 304, HEAD, an empty length): free at once, since the server
        // side may never poll an ended body.
        if http_body::Body::is_end_stream(&body.inner) {
            body.give_back();
        }
        body
    }

    fn give_back(&mut self) {
        if let Some(Lent { conn, pool, addr }) = self.lent.take() {
            pool.checkin(addr, conn);
        }
    }
}

impl Drop for Returning {
    fn drop(&mut self) {
        if http_body::Body::is_end_stream(&self.inner) {
            self.give_back();
        }
    }
}

impl http_body::Body for Returning {
    type Data = bytes::Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Self::Data>, Self::Error>>> {
        let frame = std::task::ready!(Pin::new(&mut self.inner).poll_frame(cx));
        match &frame {
            // Ended: the next request may have the connection now, not when hyper gets
            // round to dropping this body.
            None => self.give_back(),
            Some(Ok(_)) if self.inner.is_end_stream() => self.give_back(),
            Some(Ok(_)) => {}
            // A broken connection is not given back.
            Some(Err(_)) => self.lent = None,
        }
        Poll::Ready(frame)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}

/// Sends `req` over the HTTP/2 client, then retries it while [`retry::worth_retrying`] says
/// so and the `max_retries` budget has room (only a request without a body: this client
/// connects and sends in one call, so a retry is rebuilt from the request's head).
pub async fn send_http2(
    client: &Upstream,
    req: Request<Body>,
    breakers: &Breakers,
) -> Result<hyper::Response<Incoming>, Failure> {
    let result = match Replay::capture(&req) {
        None => client.request(req).await,
        Some(replay) => {
            let mut first = Some(req);
            retry::with_retries(breakers, UpstreamFailure::of, || {
                client.request(first.take().unwrap_or_else(|| replay.request()))
            })
            .await
        }
    };
    result.map_err(Failure::from_legacy)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_connections_idle_past_the_timeout_expire() {
        // `expire` looks at `since` alone; connections come from a real (unconnected) pair.
        let now = Instant::now();
        let ages = [
            IDLE_TIMEOUT * 2,
            IDLE_TIMEOUT,
            IDLE_TIMEOUT / 2,
            Duration::ZERO,
        ];
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let mut idle: Vec<Idle> = rt.block_on(async {
            let mut v = Vec::new();
            for age in ages {
                let (a, _b) = tokio::io::duplex(64);
                let (conn, _driver) =
                    hyper::client::conn::http1::handshake::<_, Body>(TokioIo::new(a))
                        .await
                        .unwrap();
                v.push(Idle {
                    conn,
                    since: now - age,
                });
            }
            v
        });
        expire(&mut idle, now);
        assert_eq!(idle.len(), 2);
        assert!(idle.iter().all(|i| now - i.since < IDLE_TIMEOUT));
    }
}
