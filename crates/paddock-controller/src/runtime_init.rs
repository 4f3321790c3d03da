//! Calls into the in-sandbox runtime (envd protocol): `POST /init` with the stored request.

use std::time::Duration;

use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use paddock_crds::keys::RUNTIME_PORT;

#[derive(Debug, thiserror::Error)]
pub enum InitError {
    #[error("runtime at {addr}: {source}")]
    Connect {
        addr: String,
        #[source]
        source: hyper_util::client::legacy::Error,
    },
    #[error("runtime at {addr} did not answer within {timeout:?}")]
    Timeout { addr: String, timeout: Duration },
    #[error("runtime at {addr} answered {status}: {body}")]
    Status {
        addr: String,
        status: u16,
        body: String,
    },
}

pub struct RuntimeClient {
    http: Client<HttpConnector, Full<Bytes>>,
}

impl Default for RuntimeClient {
    fn default() -> Self {
        Self::new()
    }
}

impl RuntimeClient {
    pub fn new() -> Self {
        let mut connector = HttpConnector::new();
        connector.set_nodelay(true);
        connector.set_connect_timeout(Some(Duration::from_secs(3)));
        RuntimeClient {
            http: Client::builder(TokioExecutor::new()).build(connector),
        }
    }

    /// Sends `body` (the `init-runtime-request` JSON) to the runtime at `ip`. A 401 means the
    /// runtime already holds an access token from an earlier init, which counts as done.
    pub async fn init(&self, ip: &str, body: &str, token: Option<&str>) -> Result<(), InitError> {
        let addr = if ip.contains(':') {
            format!("[{ip}]:{RUNTIME_PORT}")
        } else {
            format!("{ip}:{RUNTIME_PORT}")
        };
        let mut req = hyper::Request::post(format!("http://{addr}/init"))
            .header("content-type", "application/json");
        if let Some(t) = token {
            req = req.header("X-Access-Token", t);
        }
        let req = req
            .body(Full::new(Bytes::from(body.to_string())))
            .expect("a POST with a string body is a valid request");
        let timeout = Duration::from_secs(10);
        let resp = tokio::time::timeout(timeout, self.http.request(req))
            .await
            .map_err(|_| InitError::Timeout {
                addr: addr.clone(),
                timeout,
            })?
            .map_err(|source| InitError::Connect {
                addr: addr.clone(),
                source,
            })?;
        let status = resp.status().as_u16();
        if resp.status().is_success() || status == 401 {
            return Ok(());
        }
        let body = resp
            .into_body()
            .collect()
            .await
            .map(|b| String::from_utf8_lossy(&b.to_bytes()).into_owned())
            .unwrap_or_default();
        Err(InitError::Status { addr, status, body })
    }
}
