//! The retry policy: which failed requests are sent again.
//!
//! Only a request the sandbox cannot have seen is retried: the connection
//! was never made (a sandbox's server still starting refuses connects for a
//! moment). On the pooled HTTP/1.1 path the connection is made before the
//! request is handed over, so the request itself is sent on the next
//! attempt, body and all; the HTTP/2 (gRPC) client connects and sends in one
//! call and consumes the request, so there only a request without a body is
//! retried, rebuilt from its head ([`Replay`]). A failure after the connection
//! was made is never retried, since the sandbox may have acted on the
//! request. Retries also need a slot of the `max_retries` budget, which the
//! upstream phase takes.

use std::time::Duration;

use axum::body::Body;
use axum::http::{HeaderMap, Method, Request};

use crate::breaker::Breakers;
use crate::errors::UpstreamFailure;

/// Waits before each retry; their count is the most retries a request gets.
pub const DELAYS: [Duration; 2] = [Duration::from_millis(20), Duration::from_millis(60)];

/// A request's head, kept to send it again.
pub struct Replay(Request<()>);

impl Replay {
    /// A copy of `req` to retry with, if it may be retried at all.
    pub fn capture<B>(req: &Request<B>) -> Option<Self> {
        bodiless(req.method(), req.headers()).then(|| {
            let mut copy = Request::new(());
            *copy.method_mut() = req.method().clone();
            *copy.uri_mut() = req.uri().clone();
            *copy.version_mut() = req.version();
            *copy.headers_mut() = req.headers().clone();
            Replay(copy)
        })
    }

    pub fn request(&self) -> Request<Body> {
        let mut again = Request::new(Body::empty());
        *again.method_mut() = self.0.method().clone();
        *again.uri_mut() = self.0.uri().clone();
        *again.version_mut() = self.0.version();
        *again.headers_mut() = self.0.headers().clone();
        again
    }
}

/// Runs `attempt`, then again after each of [`DELAYS`] while its failure (as `kind` reads
/// it) is worth retrying and the `max_retries` budget has room.
pub async fn with_retries<T, E, Fut>(
    breakers: &Breakers,
    kind: impl Fn(&E) -> UpstreamFailure,
    mut attempt: impl FnMut() -> Fut,
) -> Result<T, E>
where
    Fut: Future<Output = Result<T, E>>,
{
    let mut result = attempt().await;
    for delay in DELAYS {
        if !worth_retrying(result.as_ref().err().map(&kind)) {
            break;
        }
        // Held through the wait and the attempt, so the budget bounds
        // retries in flight, not retries started.
        let Some(_retry_slot) = breakers.retry() else {
            break;
        };
        tracing::debug!(?delay, "connection refused; retrying");
        tokio::time::sleep(delay).await;
        result = attempt().await;
    }
    result
}

/// Whether the outcome of an attempt calls for another.
pub fn worth_retrying(failure: Option<UpstreamFailure>) -> bool {
    // A breaker refusal is not retried: it would only add load.
    failure == Some(UpstreamFailure::Connect)
}

/// Methods that carry no body by convention, with headers that agree.
fn bodiless(method: &Method, h: &HeaderMap) -> bool {
    let safe = matches!(
        *method,
        Method::GET | Method::HEAD | Method::OPTIONS | Method::DELETE
    );
    let no_length = h.get("content-length").is_none_or(|v| v.as_bytes() == b"0");
    safe && no_length && !h.contains_key("transfer-encoding")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_bodiless_requests_are_kept_for_replay() {
        let get = Request::get("http://s/x")
            .header("x-access-token", "t")
            .body(())
            .unwrap();
        let replay = Replay::capture(&get).expect("a plain GET is replayable");
        let again = replay.request();
        assert_eq!(again.method(), Method::GET);
        assert_eq!(again.uri(), "http://s/x");
        assert_eq!(again.headers()["x-access-token"], "t");

        let empty_delete = Request::delete("/").header("content-length", "0");
        assert!(Replay::capture(&empty_delete.body(()).unwrap()).is_some());
        let post = Request::post("/").body(()).unwrap();
        assert!(Replay::capture(&post).is_none());
        let get_with_body = Request::get("/").header("content-length", "3");
        assert!(Replay::capture(&get_with_body.body(()).unwrap()).is_none());
        let chunked = Request::get("/").header("transfer-encoding", "chunked");
        assert!(Replay::capture(&chunked.body(()).unwrap()).is_none());
    }

    #[test]
    fn only_connections_never_made_are_retried() {
        assert!(worth_retrying(Some(UpstreamFailure::Connect)));
        assert!(!worth_retrying(Some(UpstreamFailure::Io)));
        assert!(!worth_retrying(Some(UpstreamFailure::Breaker)));
        assert!(!worth_retrying(None));
    }
}
