//! The client side of the contract: the health probe and `/init`, with one retry policy for
//! every caller (embedded readiness, the manager's create, the controller's replay).

use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::{ACCESS_TOKEN_HEADER, InitRequest};

/// How long one health probe may take before it counts as "not ready".
const PROBE_TIMEOUT: Duration = Duration::from_millis(500);
/// How long one `/init` attempt may take.
const INIT_TIMEOUT: Duration = Duration::from_secs(10);
/// `/init` attempts before giving up. A runtime that just answered `/health` can still refuse
/// the very next connection for a moment (its listener backlog, a veth still settling); a few
/// quick retries cover that, and a runtime that is really gone fails within a second or so.
const INIT_ATTEMPTS: u32 = 5;
/// Connect timeout of the pooled client.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);

/// Why `/init` failed.
#[derive(Debug, thiserror::Error)]
pub enum InitError {
    /// No answer at all, after every attempt.
    #[error("runtime at {addr} did not answer /init ({attempts} attempts)")]
    Unreachable {
        /// Where the runtime was expected.
        addr: SocketAddr,
        /// How many attempts were made.
        attempts: u32,
        /// What the last attempt ran into.
        #[source]
        source: TransportError,
    },
    /// 401: the runtime already holds an access token (from an earlier `/init`) and the request
    /// did not carry it. Whether that counts as done is the caller's decision: a replay of the
    /// same configuration may treat it so, a first init may not.
    #[error("runtime at {addr} already holds another access token")]
    Unauthorized {
        /// Where the runtime is.
        addr: SocketAddr,
    },
    /// Any other non-2xx answer; the runtime's message is kept.
    #[error("runtime at {addr} answered /init with {status}: {body}")]
    Status {
        /// Where the runtime is.
        addr: SocketAddr,
        /// The HTTP status.
        status: u16,
        /// The start of the answer's body.
        body: String,
    },
}

/// A transport failure of one attempt.
#[derive(Debug, thiserror::Error)]
pub enum TransportError {
    /// No answer within the attempt's timeout.
    #[error("no answer within {0:?}")]
    Timeout(Duration),
    /// Connecting or exchanging the request failed.
    #[error(transparent)]
    Http(#[from] hyper_util::client::legacy::Error),
}

/// Talks to runtimes. Cheap to clone (the connection pool is shared).
#[derive(Clone)]
pub struct RuntimeClient {
    http: Client<HttpConnector, Full<Bytes>>,
}

impl Default for RuntimeClient {
    fn default() -> Self {
        Self::new()
    }
}

impl RuntimeClient {
    /// A client with `TCP_NODELAY` (small requests, answered at once: Nagle only adds delay).
    pub fn new() -> Self {
        let mut connector = HttpConnector::new();
        connector.set_nodelay(true);
        connector.set_connect_timeout(Some(CONNECT_TIMEOUT));
        Self {
            http: Client::builder(TokioExecutor::new()).build(connector),
        }
    }

    /// Sends `req` to the runtime at `addr`, with `token` as `X-Access-Token` when the runtime
    /// already holds one (a replay, a rotation). Transport failures are retried with backoff;
    /// an answer, whatever its status, is final.
    pub async fn init(
        &self,
        addr: SocketAddr,
        req: &InitRequest,
        token: Option<&str>,
    ) -> Result<(), InitError> {
        let body =
            Bytes::from(serde_json::to_vec(req).expect("an InitRequest always serializes to JSON"));
        let mut attempt = 0;
        loop {
            match self.attempt(addr, body.clone(), token).await {
                Ok(()) => return Ok(()),
                Err(Attempt::Answered(e)) => return Err(e),
                Err(Attempt::Transport(source)) => {
                    attempt += 1;
                    tracing::debug!(%addr, attempt, error = %source, "POST /init failed");
                    if attempt >= INIT_ATTEMPTS {
                        return Err(InitError::Unreachable {
                            addr,
                            attempts: attempt,
                            source,
                        });
                    }
                    tokio::time::sleep(Duration::from_millis(50 << attempt)).await;
                }
            }
        }
    }

    async fn attempt(
        &self,
        addr: SocketAddr,
        body: Bytes,
        token: Option<&str>,
    ) -> Result<(), Attempt> {
        let mut req = hyper::Request::post(format!("http://{addr}/init"))
            .header("content-type", "application/json");
        if let Some(t) = token {
            req = req.header(ACCESS_TOKEN_HEADER, t);
        }
        let req = req
            .body(Full::new(body))
            .expect("a POST to a socket address with a byte body is a valid request");
        let resp = tokio::time::timeout(INIT_TIMEOUT, self.http.request(req))
            .await
            .map_err(|_| Attempt::Transport(TransportError::Timeout(INIT_TIMEOUT)))?
            .map_err(|e| Attempt::Transport(e.into()))?;
        let status = resp.status();
        if status.is_success() {
            return Ok(());
        }
        if status == hyper::StatusCode::UNAUTHORIZED {
            return Err(Attempt::Answered(InitError::Unauthorized { addr }));
        }
        let body = match resp.into_body().collect().await {
            Ok(b) => {
                let b = b.to_bytes();
                String::from_utf8_lossy(&b[..b.len().min(512)]).into_owned()
            }
            Err(e) => format!("(body unreadable: {e})"),
        };
        Err(Attempt::Answered(InitError::Status {
            addr,
            status: status.as_u16(),
            body,
        }))
    }
}

enum Attempt {
    Answered(InitError),
    Transport(TransportError),
}

/// One `GET /health` on a fresh connection; true on a 2xx answer within half a second.
///
/// A raw request rather than the pooled client: readiness polls a runtime that is still
/// starting, and a pooled client would keep half-open connections to it around.
pub async fn probe_health(addr: SocketAddr) -> bool {
    let attempt = async {
        let mut s = tokio::net::TcpStream::connect(addr).await.ok()?;
        s.set_nodelay(true).ok()?;
        s.write_all(b"GET /health HTTP/1.1\r\nHost: sandbox\r\nConnection: close\r\n\r\n")
            .await
            .ok()?;
        let mut buf = [0u8; 64];
        let n = s.read(&mut buf).await.ok()?;
        let head = std::str::from_utf8(&buf[..n]).ok()?;
        Some(head.starts_with("HTTP/1.1 2") || head.starts_with("HTTP/1.0 2"))
    };
    tokio::time::timeout(PROBE_TIMEOUT, attempt)
        .await
        .ok()
        .flatten()
        .unwrap_or(false)
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::net::TcpListener;

    /// A one-shot HTTP server answering every connection with `reply`; returns its address and
    /// the requests it saw.
    async fn server(reply: &'static str) -> (SocketAddr, tokio::sync::mpsc::Receiver<String>) {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        let (tx, rx) = tokio::sync::mpsc::channel(8);
        tokio::spawn(async move {
            while let Ok((mut s, _)) = l.accept().await {
                let mut buf = vec![0u8; 4096];
                let n = s.read(&mut buf).await.unwrap_or(0);
                let _ = tx
                    .send(String::from_utf8_lossy(&buf[..n]).into_owned())
                    .await;
                let _ = s.write_all(reply.as_bytes()).await;
            }
        });
        (addr, rx)
    }

    #[tokio::test]
    async fn init_sends_the_request_and_token() {
        let (addr, mut seen) = server("HTTP/1.1 204 No Content\r\nConnection: close\r\n\r\n").await;
        let req = InitRequest {
            access_token: Some("new".into()),
            ..Default::default()
        };
        RuntimeClient::new()
            .init(addr, &req, Some("old"))
            .await
            .unwrap();
        let raw = seen.recv().await.unwrap().to_ascii_lowercase();
        assert!(raw.starts_with("post /init "), "{raw}");
        assert!(raw.contains("x-access-token: old"), "{raw}");
        assert!(raw.contains(r#"{"accesstoken":"new"}"#), "{raw}");
    }

    #[tokio::test]
    async fn a_401_is_its_own_error_and_other_statuses_keep_the_body() {
        let (addr, _) =
            server("HTTP/1.1 401 Unauthorized\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
                .await;
        let e = RuntimeClient::new()
            .init(addr, &InitRequest::default(), None)
            .await
            .unwrap_err();
        assert!(matches!(e, InitError::Unauthorized { .. }), "{e}");

        let (addr, _) = server(
            "HTTP/1.1 400 Bad Request\r\nContent-Length: 7\r\nConnection: close\r\n\r\nbad env",
        )
        .await;
        let e = RuntimeClient::new()
            .init(addr, &InitRequest::default(), None)
            .await
            .unwrap_err();
        match e {
            InitError::Status { status, body, .. } => {
                assert_eq!((status, body.as_str()), (400, "bad env"))
            }
            other => panic!("expected a status error, got {other}"),
        }
    }

    #[tokio::test]
    async fn an_unreachable_runtime_is_retried_then_reported_with_its_cause() {
        // Bind and drop: nothing listens there any more.
        let addr = TcpListener::bind("127.0.0.1:0")
            .await
            .unwrap()
            .local_addr()
            .unwrap();
        let e = RuntimeClient::new()
            .init(addr, &InitRequest::default(), None)
            .await
            .unwrap_err();
        match &e {
            InitError::Unreachable { attempts, .. } => assert_eq!(*attempts, INIT_ATTEMPTS),
            other => panic!("expected unreachable, got {other}"),
        }
        assert!(std::error::Error::source(&e).is_some(), "the cause is kept");
    }

    #[tokio::test]
    async fn health_is_true_only_for_a_2xx() {
        let (ok, _) = server("HTTP/1.1 204 No Content\r\nConnection: close\r\n\r\n").await;
        assert!(probe_health(ok).await);
        let (bad, _) =
            server("HTTP/1.1 503 Service Unavailable\r\nConnection: close\r\n\r\n").await;
        assert!(!probe_health(bad).await);
        let gone = TcpListener::bind("127.0.0.1:0")
            .await
            .unwrap()
            .local_addr()
            .unwrap();
        assert!(!probe_health(gone).await);
    }
}
