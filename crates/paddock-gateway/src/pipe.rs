//! The byte pipe of an upgraded connection, closed when either side closes or
//! when nothing has moved either way for the idle timeout. Without the timeout
//! an abandoned WebSocket would hold its request and connection slots forever.

use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::Instant;

/// Why a pipe ended.
#[derive(Debug, PartialEq, Eq)]
pub enum PipeEnd {
    /// A side closed; the bytes copied each way (client → sandbox, back).
    Closed(u64, u64),
    /// Nothing moved for the idle timeout.
    Idle,
}

/// Copies both ways between `a` and `b` until one closes or the pipe has been
/// idle for `idle`.
pub async fn run<A, B>(a: A, b: B, idle: Duration) -> std::io::Result<PipeEnd>
where
    A: AsyncRead + AsyncWrite + Unpin,
    B: AsyncRead + AsyncWrite + Unpin,
{
    let start = Instant::now();
    // Milliseconds after `start` of the last byte read on either side.
    let last = Arc::new(AtomicU64::new(0));
    let mut a = Watched {
        io: a,
        start,
        last: last.clone(),
    };
    let mut b = Watched {
        io: b,
        start,
        last: last.clone(),
    };
    let copy = tokio::io::copy_bidirectional(&mut a, &mut b);
    tokio::pin!(copy);
    loop {
        let quiet_since = start + Duration::from_millis(last.load(Ordering::Relaxed));
        let deadline = quiet_since + idle;
        if Instant::now() >= deadline {
            return Ok(PipeEnd::Idle);
        }
        tokio::select! {
            r = &mut copy => return r.map(|(up, down)| PipeEnd::Closed(up, down)),
            _ = tokio::time::sleep_until(deadline) => {}
        }
    }
}

/// A stream that notes when it last read a byte.
struct Watched<T> {
    io: T,
    start: Instant,
    last: Arc<AtomicU64>,
}

impl<T: AsyncRead + Unpin> AsyncRead for Watched<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let r = Pin::new(&mut self.io).poll_read(cx, buf);
        if matches!(r, Poll::Ready(Ok(()))) && buf.filled().len() > before {
            let ms = self.start.elapsed().as_millis() as u64;
            self.last.fetch_max(ms, Ordering::Relaxed);
        }
        r
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Watched<T> {
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
}

#[cfg(test)]
mod tests {
    use tokio::io::{AsyncReadExt, AsyncWriteExt, duplex};

    use super::*;

    // The clock is tokio's paused test clock: sleeps advance it exactly, so the
    // idle rule is checked without depending on the machine's speed.
    #[tokio::test(start_paused = true)]
    async fn traffic_keeps_the_pipe_open_and_silence_closes_it() {
        let (mut client, client_side) = duplex(64);
        let (sandbox_side, mut sandbox) = duplex(64);
        let idle = Duration::from_secs(10);
        let pipe = tokio::spawn(run(client_side, sandbox_side, idle));
        // Traffic every 6 s for a minute: never 10 s of silence.
        for _ in 0..10 {
            tokio::time::sleep(Duration::from_secs(6)).await;
            client.write_all(b"ping").await.unwrap();
            let mut got = [0u8; 4];
            sandbox.read_exact(&mut got).await.unwrap();
            assert_eq!(&got, b"ping");
            assert!(!pipe.is_finished(), "the pipe closed while in use");
        }
        // Then silence.
        tokio::time::sleep(Duration::from_secs(11)).await;
        assert_eq!(pipe.await.unwrap().unwrap(), PipeEnd::Idle);
        // Both ends see the close.
        let mut rest = Vec::new();
        assert_eq!(sandbox.read_to_end(&mut rest).await.unwrap(), 0);
    }

    #[tokio::test(start_paused = true)]
    async fn a_side_closing_ends_the_pipe() {
        let (mut client, client_side) = duplex(64);
        let (sandbox_side, mut sandbox) = duplex(64);
        let pipe = tokio::spawn(run(client_side, sandbox_side, Duration::from_secs(3600)));
        client.write_all(b"bye").await.unwrap();
        client.shutdown().await.unwrap();
        let mut got = Vec::new();
        sandbox.read_to_end(&mut got).await.unwrap();
        assert_eq!(got, b"bye");
        drop(sandbox);
        assert_eq!(pipe.await.unwrap().unwrap(), PipeEnd::Closed(3, 0));
    }
}
