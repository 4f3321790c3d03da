//! The manager → gateway route push (`POST <gateway>:7789/refresh`, see
//! [`paddock_gateway::peer`]): sent to every gateway after a claim, pause, resume or kill, in
//! parallel and each bounded, before the API answers, so the answer means "routable".

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use k8s_openapi::api::core::v1::Pod;
use kube::runtime::reflector::Store;
use paddock_gateway::peer::{DEFAULT_PEER_PORT, REFRESH_PATH, RouteUpdate};

/// How long one push may take: a slow gateway must not hold up the create (its watch
/// converges anyway).
const PUSH_TIMEOUT: Duration = Duration::from_secs(1);

#[derive(Clone)]
pub struct Peers {
    http: Client<HttpConnector, Full<Bytes>>,
    /// `--gateway-peer` base URLs.
    statics: Arc<Vec<String>>,
    /// Gateway pods matching `--gateway-selector`.
    pods: Option<Store<Pod>>,
    token: Option<Arc<str>>,
}

impl Peers {
    pub fn new(statics: Vec<String>, pods: Option<Store<Pod>>, token: Option<String>) -> Self {
        let mut connector = HttpConnector::new();
        connector.set_nodelay(true);
        connector.set_connect_timeout(Some(PUSH_TIMEOUT));
        Peers {
            http: Client::builder(TokioExecutor::new()).build(connector),
            statics: Arc::new(
                statics
                    .into_iter()
                    .map(|u| u.trim_end_matches('/').to_string())
                    .collect(),
            ),
            pods,
            token: token.map(Into::into),
        }
    }

    /// Where pushes go now: the static peers and the running gateway pods.
    pub fn targets(&self) -> Vec<String> {
        let mut out: Vec<String> = self.statics.iter().cloned().collect();
        if let Some(pods) = &self.pods {
            for p in pods.state() {
                let ready = p.metadata.deletion_timestamp.is_none()
                    && p.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Running");
                if let Some(ip) = p.status.as_ref().and_then(|s| s.pod_ip.as_deref())
                    && ready
                {
                    let host = if ip.contains(':') {
                        format!("[{ip}]")
                    } else {
                        ip.to_string()
                    };
                    out.push(format!("http://{host}:{DEFAULT_PEER_PORT}"));
                }
            }
        }
        out
    }

    /// Pushes `update` to every gateway; failures are logged, never returned.
    pub async fn push(&self, update: &RouteUpdate) {
        let Some(token) = &self.token else {
            return;
        };
        let body = match serde_json::to_vec(update) {
            Ok(b) => Bytes::from(b),
            Err(e) => {
                tracing::warn!(error = %e, "route update not serialisable");
                return;
            }
        };
        let targets = self.targets();
        let sends = targets.iter().map(|base| {
            let body = body.clone();
            async move {
                let req = hyper::Request::post(format!("{base}{REFRESH_PATH}"))
                    .header("content-type", "application/json")
                    .header("authorization", format!("Bearer {token}"))
                    .body(Full::new(body));
                let req = match req {
                    Ok(r) => r,
                    Err(e) => {
                        tracing::warn!(peer = %base, error = %e, "bad gateway peer URL");
                        return;
                    }
                };
                match tokio::time::timeout(PUSH_TIMEOUT, self.http.request(req)).await {
                    Ok(Ok(resp)) if resp.status().is_success() => {}
                    Ok(Ok(resp)) => {
                        tracing::warn!(peer = %base, status = %resp.status(), "route push refused")
                    }
                    Ok(Err(e)) => tracing::warn!(peer = %base, error = %e, "route push failed"),
                    Err(_) => tracing::warn!(peer = %base, "route push timed out"),
                }
            }
        });
        futures::future::join_all(sends).await;
    }
}
