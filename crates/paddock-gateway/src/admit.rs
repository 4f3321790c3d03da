//! The admission phase: the circuit breakers' `max_requests` and
//! `max_pending_requests` slots for one request.
//!
//! It runs after the route and token checks, so requests that would be
//! refused anyway never take a slot, and before anything is sent, so a
//! tripped breaker refuses at once instead of queueing. The request slot
//! lives as long as the response body ([`Admission::hold`]); the pending slot
//! only until the response headers arrive.

use std::pin::Pin;
use std::task::{Context, Poll};

use axum::body::Body;
use axum::response::Response;
use tokio::sync::OwnedSemaphorePermit;

use crate::breaker::{Breakers, SandboxSlot, Tripped};

/// The slots an admitted request holds.
pub struct Admission {
    request: RequestSlot,
    pending: Option<OwnedSemaphorePermit>,
}

/// A request's slots that live as long as its response (or upgraded pipe):
/// one of the gateway's `max_requests` and one of its sandbox's share.
pub struct RequestSlot {
    _gateway: OwnedSemaphorePermit,
    _sandbox: SandboxSlot,
}

/// Admits one request to `sandbox`: its share first (a sandbox over its share
/// must not take a gateway-wide slot even for a moment), then the gateway's.
pub fn admit(breakers: &Breakers, sandbox: &str) -> Result<Admission, Tripped> {
    let share = breakers.sandbox_slot(sandbox)?;
    let (request, pending) = breakers.admit()?;
    Ok(Admission {
        request: RequestSlot {
            _gateway: request,
            _sandbox: share,
        },
        pending: Some(pending),
    })
}

impl Admission {
    /// The response headers are in: the request no longer counts as pending.
    pub fn headers_received(&mut self) {
        self.pending = None;
    }

    /// Ties the request slot to `resp`'s body, so a streaming response
    /// counts as in flight until its last byte. (Generic, so that the
    /// upstream's body is boxed once, here.)
    pub fn hold<B>(self, resp: http::Response<B>) -> Response
    where
        B: http_body::Body<Data = bytes::Bytes> + Send + Unpin + 'static,
        B::Error: Into<axum::BoxError>,
    {
        let slot = self.request;
        resp.map(|inner| Body::new(Guarded { inner, _slot: slot }))
    }

    /// Hands the request slot to whatever outlives the response (an
    /// upgraded connection's pipe).
    pub fn into_request_slot(self) -> RequestSlot {
        self.request
    }
}

/// A response body that holds its request slots until it is done.
struct Guarded<B> {
    inner: B,
    _slot: RequestSlot,
}

impl<B> http_body::Body for Guarded<B>
where
    B: http_body::Body<Data = bytes::Bytes> + Unpin,
{
    type Data = bytes::Bytes;
    type Error = B::Error;

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

#[cfg(test)]
mod tests {
    use http_body_util::BodyExt;

    use super::*;
    use crate::breaker::Thresholds;

    fn breakers() -> Breakers {
        Breakers::new(Thresholds {
            max_requests: 1,
            max_pending_requests: 1,
            ..Thresholds::default()
        })
    }

    #[tokio::test]
    async fn the_request_slot_lives_as_long_as_the_body() {
        let b = breakers();
        let mut a = admit(&b, "s").unwrap();
        assert_eq!(admit(&b, "t").err(), Some(Tripped::Requests));
        a.headers_received();
        let resp = a.hold(Response::new(Body::from("done")));
        assert_eq!(b.active_requests(), 1);
        let body = resp.into_body().collect().await.unwrap().to_bytes();
        assert_eq!(&body[..], b"done");
        // Collected bodies are dropped: the slot is back.
        assert_eq!(b.active_requests(), 0);
        assert_eq!(b.sandbox_requests("s"), 0);
        assert!(admit(&b, "s").is_ok());
    }

    #[test]
    fn the_pending_slot_goes_when_headers_arrive() {
        let b = Breakers::new(Thresholds {
            max_pending_requests: 1,
            ..Thresholds::default()
        });
        let mut a = admit(&b, "s").unwrap();
        assert_eq!(admit(&b, "s").err(), Some(Tripped::Pending));
        a.headers_received();
        let _second = admit(&b, "s").unwrap();
        drop(a);
    }

    #[test]
    fn a_sandbox_over_its_share_takes_no_gateway_slot() {
        let b = Breakers::new(Thresholds {
            max_requests_per_sandbox: 1,
            ..Thresholds::default()
        });
        let _a = admit(&b, "s").unwrap();
        assert_eq!(admit(&b, "s").err(), Some(Tripped::SandboxRequests));
        assert_eq!(b.active_requests(), 1);
        assert!(admit(&b, "other").is_ok());
    }
}
