//! Circuit breakers: fixed ceilings on what the gateway lets pile up towards
//! sandboxes. Past a ceiling a request is refused at once (503) instead of
//! queueing without bound, the way Envoy's cluster thresholds behave.

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

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
}

impl Default for Thresholds {
    fn default() -> Self {
        Self {
            max_connections: 32768,
            max_pending_requests: 32768,
            max_requests: 65536,
            max_retries: 5,
        }
    }
}

/// Which ceiling was hit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Tripped {
    Connections,
    Pending,
    Requests,
}

impl Tripped {
    pub fn label(self) -> &'static str {
        match self {
            Tripped::Connections => "max_connections",
            Tripped::Pending => "max_pending_requests",
            Tripped::Requests => "max_requests",
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
}

impl Breakers {
    pub fn new(t: Thresholds) -> Self {
        Self {
            thresholds: t,
            connections: Arc::new(Semaphore::new(t.max_connections)),
            pending: Arc::new(Semaphore::new(t.max_pending_requests)),
            requests: Arc::new(Semaphore::new(t.max_requests)),
            retries: Arc::new(Semaphore::new(t.max_retries)),
        }
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
}
