//! Every way a data-plane request can fail, and the response each one gets.
//!
//! The phases of the request path return a [`GatewayError`]; the handler
//! turns it into a response in exactly one place ([`GatewayError::into_response`]).
//! Each error records who caused it ([`Blame`]), whether the client may retry
//! it, and which metric it counts under, so that a phase never writes a
//! response body or bumps a counter itself.
//!
//! The E2B SDKs match on the messages' wording ("was not found", "port is not
//! open", "paused"), so the phrases here are part of the wire contract.

use axum::body::Body;
use axum::http::{HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};

use crate::access::Denied;
use crate::breaker::{ConnectionsExhausted, Tripped};

/// Who caused a failure (pingora's error source): decides the status class
/// and whether the request ever reached a sandbox.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Blame {
    /// The request itself is wrong (no sandbox named, bad token, bad path).
    Client,
    /// The gateway refused to spend more on it (a circuit breaker).
    Gateway,
    /// The sandbox is gone, paused, or its server failed.
    Sandbox,
}

/// Why a data-plane request got no response from its sandbox.
#[derive(Debug, thiserror::Error)]
pub enum GatewayError {
    /// Nothing in the request names a sandbox.
    #[error(
        "no sandbox named in this request: send the E2b-Sandbox-Id (and E2b-Sandbox-Port) headers, use the host <port>-<sandbox id>.<domain>, or the path /kruise/<sandbox id>/<port>/..."
    )]
    NoTarget,
    /// A signed file URL that names no sandbox, and no running sandbox's token made its
    /// signature.
    #[error(
        "no running sandbox signed this file URL: its sandbox is gone or paused, or the URL was changed"
    )]
    NoSigner,
    /// The named sandbox does not exist (or no longer does).
    #[error("The sandbox was not found")]
    NotFound { sandbox: String },
    /// The sandbox exists but is paused; its address may be reused.
    #[error(
        "The sandbox is paused: resume it (Sandbox.connect) before sending traffic; it was not found running"
    )]
    Paused { sandbox: String },
    /// The sandbox is paused, resumes on traffic, and resuming it failed.
    #[error("The sandbox is paused and resuming it for this request failed: {detail}")]
    WakeFailed { sandbox: String, detail: String },
    /// The request lacks the token the sandbox was created with.
    #[error("{}", .0.message())]
    Denied(Denied),
    /// A circuit breaker is open.
    #[error("the gateway is overloaded ({} reached); retry later", .0.label())]
    Overloaded(Tripped),
    /// No connection could be made to the sandbox's port.
    #[error("The sandbox is running but port is not open")]
    PortNotOpen { sandbox: String, port: u16 },
    /// The connection was made, then failed before a response came back.
    #[error("The sandbox's server on port {port} closed the connection: {detail}")]
    ConnectionClosed {
        sandbox: String,
        port: u16,
        detail: String,
    },
    /// The path could not be joined onto the sandbox's address.
    #[error("invalid request path")]
    InvalidPath,
}

impl From<Denied> for GatewayError {
    fn from(d: Denied) -> Self {
        GatewayError::Denied(d)
    }
}

impl From<Tripped> for GatewayError {
    fn from(t: Tripped) -> Self {
        GatewayError::Overloaded(t)
    }
}

impl GatewayError {
    /// Maps a failure of the upstream phase. A connect refused by the `max_connections`
    /// breaker is the gateway's doing, not the sandbox's.
    pub(crate) fn from_failure(sandbox: &str, port: u16, f: crate::upstream::Failure) -> Self {
        use crate::upstream::Failure;
        match f {
            Failure::Breaker => GatewayError::Overloaded(Tripped::Connections),
            Failure::Connect => GatewayError::PortNotOpen {
                sandbox: sandbox.to_string(),
                port,
            },
            Failure::Io(e) => GatewayError::ConnectionClosed {
                sandbox: sandbox.to_string(),
                port,
                detail: e.to_string(),
            },
        }
    }

    pub fn blame(&self) -> Blame {
        match self {
            GatewayError::NoTarget
            | GatewayError::NoSigner
            | GatewayError::Denied(_)
            | GatewayError::InvalidPath => Blame::Client,
            GatewayError::Overloaded(_) => Blame::Gateway,
            GatewayError::NotFound { .. }
            | GatewayError::Paused { .. }
            | GatewayError::WakeFailed { .. }
            | GatewayError::PortNotOpen { .. }
            | GatewayError::ConnectionClosed { .. } => Blame::Sandbox,
        }
    }

    pub fn status(&self) -> StatusCode {
        match self {
            GatewayError::NoTarget | GatewayError::NoSigner => StatusCode::NOT_FOUND,
            GatewayError::InvalidPath => StatusCode::BAD_REQUEST,
            GatewayError::Denied(_) => StatusCode::UNAUTHORIZED,
            GatewayError::Overloaded(_) => StatusCode::SERVICE_UNAVAILABLE,
            GatewayError::NotFound { .. }
            | GatewayError::Paused { .. }
            | GatewayError::WakeFailed { .. }
            | GatewayError::PortNotOpen { .. }
            | GatewayError::ConnectionClosed { .. } => StatusCode::BAD_GATEWAY,
        }
    }

    /// Only an overloaded gateway is worth retrying: every other failure
    /// would fail the same way again, so the SDKs are told not to.
    pub fn retry_safe(&self) -> bool {
        self.blame() == Blame::Gateway
    }

    /// The `reason` label of `paddock_gateway_rejected`: set for requests
    /// refused before they reached a sandbox.
    pub fn rejected_reason(&self) -> Option<&'static str> {
        match self {
            GatewayError::NotFound { .. } => Some("not_found"),
            GatewayError::Paused { .. } => Some("paused"),
            GatewayError::WakeFailed { .. } => Some("wake_failed"),
            GatewayError::Denied(_) => Some("token"),
            GatewayError::Overloaded(t) => Some(t.label()),
            _ => None,
        }
    }

    /// The `reason` label of `paddock_gateway_upstream_errors`: set for
    /// failures between the gateway and the sandbox.
    pub fn upstream_reason(&self) -> Option<&'static str> {
        match self {
            GatewayError::PortNotOpen { .. } => Some("connect"),
            GatewayError::ConnectionClosed { .. } => Some("io"),
            _ => None,
        }
    }

    /// The response the client gets: plain text for a path that cannot be
    /// joined, the SDKs' JSON shapes for the rest (a standalone gateway answers
    /// every request, so one that names no sandbox is told how to name one).
    pub fn into_response(self) -> Response {
        let status = self.status();
        let message = self.to_string();
        let body = match &self {
            GatewayError::InvalidPath => {
                return (status, message).into_response();
            }
            GatewayError::NoTarget | GatewayError::NoSigner => serde_json::json!({
                "code": status.as_u16(),
                "message": message,
            }),
            GatewayError::NotFound { sandbox }
            | GatewayError::Paused { sandbox }
            | GatewayError::WakeFailed { sandbox, .. }
            | GatewayError::ConnectionClosed { sandbox, .. } => serde_json::json!({
                "sandboxId": sandbox,
                "message": message,
                "code": 502,
            }),
            GatewayError::PortNotOpen { sandbox, port } => serde_json::json!({
                "sandboxId": sandbox,
                "message": message,
                "port": port,
                "code": 502,
            }),
            GatewayError::Denied(_) | GatewayError::Overloaded(_) => serde_json::json!({
                "code": status.as_u16(),
                "message": message,
            }),
        };
        let mut resp: Response<Body> = (status, axum::Json(body)).into_response();
        if !self.retry_safe() {
            resp.headers_mut()
                .insert("should-retry", HeaderValue::from_static("false"));
        }
        resp
    }
}

/// How the pooled client failed, which decides both the response and
/// whether a retry is safe.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum UpstreamFailure {
    /// `max_connections` refused the connect: nothing was sent.
    Breaker,
    /// No connection was made: the sandbox cannot have seen the request.
    Connect,
    /// The connection was made; the sandbox may have seen the request.
    Io,
}

impl UpstreamFailure {
    pub(crate) fn of(e: &hyper_util::client::legacy::Error) -> Self {
        if caused_by_breaker(e) {
            UpstreamFailure::Breaker
        } else if e.is_connect() {
            UpstreamFailure::Connect
        } else {
            UpstreamFailure::Io
        }
    }
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

#[cfg(test)]
mod tests {
    use http_body_util::BodyExt;

    use super::*;

    async fn parts(e: GatewayError) -> (StatusCode, Option<String>, serde_json::Value) {
        let resp = e.into_response();
        let retry = resp
            .headers()
            .get("should-retry")
            .map(|v| v.to_str().unwrap().to_string());
        let status = resp.status();
        let body = resp.into_body().collect().await.unwrap().to_bytes();
        let json = serde_json::from_slice(&body).unwrap_or(serde_json::Value::Null);
        (status, retry, json)
    }

    #[tokio::test]
    async fn sandbox_failures_are_json_502s_with_the_sdk_phrases() {
        let (status, retry, json) = parts(GatewayError::NotFound {
            sandbox: "abc".into(),
        })
        .await;
        assert_eq!(status, 502);
        assert_eq!(retry.as_deref(), Some("false"));
        assert_eq!(
            json,
            serde_json::json!({"sandboxId": "abc", "message": "The sandbox was not found", "code": 502})
        );

        let (_, _, json) = parts(GatewayError::Paused {
            sandbox: "abc".into(),
        })
        .await;
        let msg = json["message"].as_str().unwrap();
        assert!(msg.contains("paused") && msg.contains("not found"), "{msg}");

        let (status, retry, json) = parts(GatewayError::PortNotOpen {
            sandbox: "abc".into(),
            port: 8080,
        })
        .await;
        assert_eq!((status.as_u16(), retry.as_deref()), (502, Some("false")));
        assert_eq!(
            json,
            serde_json::json!({
                "sandboxId": "abc",
                "message": "The sandbox is running but port is not open",
                "port": 8080,
                "code": 502,
            })
        );

        let (_, _, json) = parts(GatewayError::ConnectionClosed {
            sandbox: "abc".into(),
            port: 3000,
            detail: "reset".into(),
        })
        .await;
        assert_eq!(
            json["message"],
            "The sandbox's server on port 3000 closed the connection: reset"
        );
    }

    #[tokio::test]
    async fn refusals_say_why_and_only_overload_may_be_retried() {
        let (status, retry, json) = parts(Denied::WrongAccessToken.into()).await;
        assert_eq!((status.as_u16(), retry.as_deref()), (401, Some("false")));
        assert_eq!(
            json,
            serde_json::json!({"code": 401, "message": Denied::WrongAccessToken.message()})
        );

        let (status, retry, json) = parts(Tripped::Pending.into()).await;
        assert_eq!((status.as_u16(), retry), (503, None));
        assert_eq!(
            json["message"],
            "the gateway is overloaded (max_pending_requests reached); retry later"
        );
        assert_eq!(json["code"], 503);
    }

    #[tokio::test]
    async fn requests_that_name_no_sandbox_are_told_how_to_name_one() {
        let (status, _, json) = parts(GatewayError::NoTarget).await;
        assert_eq!(status, 404);
        assert_eq!(json["code"], 404);
        let msg = json["message"].as_str().unwrap();
        assert!(
            msg.contains("E2b-Sandbox-Id") && msg.contains("/kruise/<sandbox id>/<port>/"),
            "{msg}"
        );
        assert_eq!(GatewayError::InvalidPath.into_response().status(), 400);
    }

    #[test]
    fn each_failure_counts_under_one_metric() {
        let cases = [
            (
                GatewayError::NotFound {
                    sandbox: "a".into(),
                },
                Some("not_found"),
                None,
            ),
            (
                GatewayError::Paused {
                    sandbox: "a".into(),
                },
                Some("paused"),
                None,
            ),
            (Denied::MissingTrafficToken.into(), Some("token"), None),
            (Tripped::Connections.into(), Some("max_connections"), None),
            (
                GatewayError::PortNotOpen {
                    sandbox: "a".into(),
                    port: 1,
                },
                None,
                Some("connect"),
            ),
            (
                GatewayError::ConnectionClosed {
                    sandbox: "a".into(),
                    port: 1,
                    detail: String::new(),
                },
                None,
                Some("io"),
            ),
            (GatewayError::NoTarget, None, None),
            (GatewayError::InvalidPath, None, None),
        ];
        for (e, rejected, upstream) in cases {
            assert_eq!(e.rejected_reason(), rejected, "{e:?}");
            assert_eq!(e.upstream_reason(), upstream, "{e:?}");
        }
    }

    /// A real refused connect is `Connect` (safe to retry) and maps to the
    /// "port is not open" response.
    #[tokio::test]
    async fn a_refused_connect_is_classified_as_never_made() {
        let free = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .unwrap()
            .local_addr()
            .unwrap();
        let client =
            hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
                .build_http::<Body>();
        let uri: http::Uri = format!("http://{free}/").parse().unwrap();
        let e = client.get(uri).await.unwrap_err();
        assert_eq!(UpstreamFailure::of(&e), UpstreamFailure::Connect);
        assert!(matches!(
            GatewayError::from_failure("a", free.port(), crate::upstream::Failure::from_legacy(e)),
            GatewayError::PortNotOpen { port, .. } if port == free.port()
        ));
    }
}
