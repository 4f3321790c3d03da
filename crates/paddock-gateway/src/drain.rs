//! Reading what is left of a refused request's body before the refusal goes out.
//!
//! A refusal (401, 404, 503) is decided from the headers alone. Answering while the client is
//! still sending its body makes the server end the stream early: on HTTP/2 hyper resets it, and
//! clients such as curl report the reset as a framing error instead of the answer (seen in one
//! of ten refused gRPC calls); on HTTP/1 the connection cannot be reused. A small body is read to
//! its end first; a large or slow one is given up on, and the early end is what it gets.

use std::time::Duration;

use axum::body::Body;
use http_body_util::BodyExt;

/// Bytes of a refused request's body read at most.
pub const LIMIT: usize = 64 * 1024;
/// How long a refused request's body may take to arrive.
pub const WAIT: Duration = Duration::from_secs(1);

/// Reads `body` to its end unless it is longer than `limit` bytes or takes longer than `wait`;
/// returns whether it was read to the end.
pub async fn body(mut body: Body, limit: usize, wait: Duration) -> bool {
    let read = async {
        let mut seen = 0usize;
        while let Some(frame) = body.frame().await {
            let Ok(frame) = frame else { return false };
            if let Some(data) = frame.data_ref() {
                seen += data.len();
                if seen > limit {
                    return false;
                }
            }
        }
        true
    };
    tokio::time::timeout(wait, read).await.unwrap_or(false)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn small_bodies_are_read_to_the_end_large_ones_given_up() {
        assert!(body(Body::from(vec![0u8; 10]), LIMIT, WAIT).await);
        assert!(body(Body::empty(), LIMIT, WAIT).await);
        assert!(!body(Body::from(vec![0u8; LIMIT + 1]), LIMIT, WAIT).await);
    }

    #[tokio::test(start_paused = true)]
    async fn a_body_that_never_ends_is_given_up_after_the_wait() {
        let (_tx, rx) = tokio::sync::mpsc::channel::<Result<bytes::Bytes, std::io::Error>>(1);
        let stream = tokio_stream_from(rx);
        assert!(!body(Body::from_stream(stream), LIMIT, WAIT).await);
    }

    fn tokio_stream_from(
        mut rx: tokio::sync::mpsc::Receiver<Result<bytes::Bytes, std::io::Error>>,
    ) -> impl futures_util::Stream<Item = Result<bytes::Bytes, std::io::Error>> {
        futures_util::stream::poll_fn(move |cx| rx.poll_recv(cx))
    }
}
