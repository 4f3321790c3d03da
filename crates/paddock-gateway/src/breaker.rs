//! Circuit breakers: fixed ceilings on what the gateway lets pile up towards
//! sandboxes. Past a ceiling a request is refused at once (503) instead of
//! queueing without bound, the way Envoy's cluster thresholds behave.
//!
//! The ceilings are shared by every sandbox behind the gateway, so one more
//! ceiling keeps them shared fairly: a sandbox holds at most
//! `max_requests_per_sandbox` request slots. Without it one caller's long
//! streams or WebSockets to its own sandbox could take every slot and starve
//! everyone else's traffic.

use std::collections::HashMap;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use hyper::rt::{Read, ReadBufCursor, Write};
use hyper_util::client::legacy::connect::{Connected, Connection, HttpConnector};
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// The thresholds. Defaults are the install guide's chart values.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Thresholds {
    /// Open connections to sandboxes.
    pub max_connections: usize,
    /// Requests waiting for their response headers.
    pub max_pending_requests: usize,
    /// Requests in flight, bodies included.
    pub max_requests: usize,
    /// Retries in flight.
    pub max_retries: usize,
    /// Requests in flight to one sandbox (upgraded connections included): its
    /// share of `max_requests`.
    pub max_requests_per_sandbox: usize,
    /// An upgraded connection (WebSocket) with no bytes either way for this
    /// long is closed, giving its slots back.
    pub upgrade_idle_timeout: Duration,
}

/// A sandbox's default share: 1/16 of the default `max_requests`.
pub const DEFAULT_MAX_REQUESTS_PER_SANDBOX: usize = 4096;
/// Envoy's default idle timeout of a proxied TCP stream.
pub const DEFAULT_UPGRADE_IDLE_TIMEOUT: Duration = Duration::from_secs(3600);

impl Default for Thresholds {
    fn default() -> Self {
        Self {
            max_connections: 32768,
            max_pending_requests: 32768,
            max_requests: 65536,
            max_retries: 5,
            max_requests_per_sandbox: DEFAULT_MAX_REQUESTS_PER_SANDBOX,
            upgrade_idle_timeout: DEFAULT_UPGRADE_IDLE_TIMEOUT,
        }
    }
}

/// Which ceiling was hit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Tripped {
    Connections,
    Pending,
    Requests,
    /// One sandbox's share of the request slots.
    SandboxRequests,
}

impl Tripped {
    pub fn label(self) -> &'static str {
        match self {
            Tripped::Connections => "max_connections",
            Tripped::Pending => "max_pending_requests",
            Tripped::Requests => "max_requests",
            Tripped::SandboxRequests => "max_requests_per_sandbox",
        }
    }
}

/// The live counters behind [`Thresholds`].
#[derive(Debug, Clone)]
pub struct Breakers {
    pub thresholds: Thresholds,
    connections: Arc<Semaphore>,
    pending: Arc<Semaphore>,
    requests: Arc<Semaphore>,
    retries: Arc<Semaphore>,
    per_sandbox: Arc<Mutex<HashMap<String, usize>>>,
}

/// One request slot of a sandbox's share; given back on drop.
#[derive(Debug)]
pub struct SandboxSlot {
    counts: Arc<Mutex<HashMap<String, usize>>>,
    sandbox: String,
}

impl Drop for SandboxSlot {
    fn drop(&mut self) {
        let mut counts = self.counts.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(n) = counts.get_mut(&self.sandbox) {
            *n -= 1;
            if *n == 0 {
                counts.remove(&self.sandbox);
            }
        }
    }
}

impl Breakers {
    pub fn new(t: Thresholds) -> Self {
        Self {
            thresholds: t,
            connections: Arc::new(Semaphore::new(t.max_connections)),
            pending: Arc::new(Semaphore::new(t.max_pending_requests)),
            requests: Arc::new(Semaphore::new(t.max_requests)),
            retries: Arc::new(Semaphore::new(t.max_retries)),
            per_sandbox: Arc::default(),
        }
    }

    /// One of `sandbox`'s request slots, unless it holds its whole share.
    /// (A short critical section over a map of counters: no await under it.)
    pub fn sandbox_slot(&self, sandbox: &str) -> Result<SandboxSlot, Tripped> {
        let mut counts = self.per_sandbox.lock().unwrap_or_else(|e| e.into_inner());
        // Looked up before inserting: a sandbox with requests in flight (the common case under
        // load) costs no key allocation.
        match counts.get_mut(sandbox) {
            Some(n) if *n >= self.thresholds.max_requests_per_sandbox => {
                return Err(Tripped::SandboxRequests);
            }
            Some(n) => *n += 1,
            None if self.thresholds.max_requests_per_sandbox == 0 => {
                return Err(Tripped::SandboxRequests);
            }
            None => {
                counts.insert(sandbox.to_string(), 1);
            }
        }
        Ok(SandboxSlot {
            counts: self.per_sandbox.clone(),
            sandbox: sandbox.to_string(),
        })
    }

    /// Request slots `sandbox` holds now.
    pub fn sandbox_requests(&self, sandbox: &str) -> usize {
        let counts = self.per_sandbox.lock().unwrap_or_else(|e| e.into_inner());
        counts.get(sandbox).copied().unwrap_or(0)
    }

    /// A slot for a request (held until its response body is done) and one
    /// for waiting on its response headers.
    pub fn admit(&self) -> Result<(OwnedSemaphorePermit, OwnedSemaphorePermit), Tripped> {
        let request = self
            .requests
            .clone()
            .try_acquire_owned()
            .map_err(|_| Tripped::Requests)?;
        let pending = self
            .pending
            .clone()
            .try_acquire_owned()
            .map_err(|_| Tripped::Pending)?;
        Ok((request, pending))
    }

    /// A slot for one retry, if the retry budget has one free.
    pub fn retry(&self) -> Option<OwnedSemaphorePermit> {
        self.retries.clone().try_acquire_owned().ok()
    }

    pub fn connection(&self) -> Result<OwnedSemaphorePermit, Tripped> {
        self.connections
            .clone()
            .try_acquire_owned()
            .map_err(|_| Tripped::Connections)
    }

    pub fn open_connections(&self) -> usize {
        self.thresholds.max_connections - self.connections.available_permits()
    }

    pub fn active_requests(&self) -> usize {
        self.thresholds.max_requests - self.requests.available_permits()
    }
}

/// Error a connect fails with when `max_connections` is reached.
#[derive(Debug, thiserror::Error)]
#[error("circuit breaker open: max_connections reached")]
pub struct ConnectionsExhausted;

/// An [`HttpConnector`] whose connections each hold a `max_connections` slot
/// for as long as they live.
#[derive(Clone)]
pub struct CountingConnector {
    inner: HttpConnector,
    breakers: Breakers,
}

impl CountingConnector {
    pub fn new(breakers: Breakers) -> Self {
        let mut inner = HttpConnector::new();
        // Small RPC frames must not wait for delayed ACKs.
        inner.set_nodelay(true);
        inner.set_connect_timeout(Some(std::time::Duration::from_secs(5)));
        Self { inner, breakers }
    }
}

type BoxError = Box<dyn std::error::Error + Send + Sync>;

impl tower_service::Service<http::Uri> for CountingConnector {
    type Response = Counted;
    type Error = BoxError;
    type Future = Pin<Box<dyn Future<Output = Result<Counted, BoxError>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, uri: http::Uri) -> Self::Future {
        let permit = self.breakers.connection();
        let fut = self.inner.call(uri);
        Box::pin(async move {
            let permit = permit.map_err(|_| ConnectionsExhausted)?;
            let io = fut.await?;
            Ok(Counted {
                io,
                _permit: permit,
            })
        })
    }
}

/// A connection that gives its `max_connections` slot back when dropped.
pub struct Counted {
    io: TokioIo<TcpStream>,
    _permit: OwnedSemaphorePermit,
}

impl Counted {
    /// `io`, holding `permit` (from [`Breakers::connection`]) for as long as it lives.
    pub fn new(io: TokioIo<TcpStream>, permit: OwnedSemaphorePermit) -> Self {
        Self {
            io,
            _permit: permit,
        }
    }
}

impl Connection for Counted {
    fn connected(&self) -> Connected {
        self.io.connected()
    }
}

impl Read for Counted {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: ReadBufCursor<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.io).poll_read(cx, buf)
    }
}

impl Write for Counted {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.io).poll_write(cx, buf)
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }
    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.io).poll_write_vectored(cx, bufs)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ceilings_refuse_and_free_on_drop() {
        let b = Breakers::new(Thresholds {
            max_connections: 1,
            max_pending_requests: 1,
            max_requests: 2,
            max_retries: 1,
            ..Thresholds::default()
        });
        let (r1, p1) = b.admit().unwrap();
        // One request may wait for headers at a time.
        assert_eq!(b.admit().unwrap_err(), Tripped::Pending);
        drop(p1);
        let (_r2, _p2) = b.admit().unwrap();
        assert_eq!(b.active_requests(), 2);
        assert_eq!(b.admit().unwrap_err(), Tripped::Requests);
        drop(r1);
        assert_eq!(b.active_requests(), 1);
        let c = b.connection().unwrap();
        assert_eq!(b.connection().unwrap_err(), Tripped::Connections);
        assert_eq!(b.open_connections(), 1);
        drop(c);
        assert_eq!(b.open_connections(), 0);
        let r = b.retry().unwrap();
        assert!(b.retry().is_none());
        drop(r);
        assert!(b.retry().is_some());
    }

    #[test]
    fn one_sandbox_cannot_take_every_slot() {
        let b = Breakers::new(Thresholds {
            max_requests_per_sandbox: 2,
            ..Thresholds::default()
        });
        let a1 = b.sandbox_slot("a").unwrap();
        let a2 = b.sandbox_slot("a").unwrap();
        assert_eq!(b.sandbox_slot("a").unwrap_err(), Tripped::SandboxRequests);
        // Its neighbours still get theirs.
        let _b1 = b.sandbox_slot("b").unwrap();
        drop(a1);
        assert_eq!(b.sandbox_requests("a"), 1);
        let _a3 = b.sandbox_slot("a").unwrap();
        drop(a2);
        drop(_a3);
        // Nothing is kept for a sandbox that holds no slot.
        assert_eq!(b.sandbox_requests("a"), 0);
        assert!(!b.per_sandbox.lock().unwrap().contains_key("a"));
    }
}
