//! A sandbox's readiness: the runtime's word on its readiness pipe ([`word`]), and the first
//! moments polled finely from a blocking thread ([`wait_healthy`]) when no word comes.
//!
//! A runtime listens a few milliseconds after its container starts. The async timer ticks in
//! whole milliseconds, so polling from it every 2 ms answered ~2.5 ms after the runtime was
//! listening, on every cold create. Here the polls start 0.2 ms apart and grow to 2 ms: a
//! runtime ready in 5 ms is seen within ~0.6 ms, and one that is slow (a loaded host) is not
//! polled more often than before.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

/// The first wait between polls, and the most.
const FIRST_GAP: Duration = Duration::from_micros(200);
const MAX_GAP: Duration = Duration::from_millis(2);
/// An answer that takes longer than this is a failed poll.
const POLL_TIMEOUT: Duration = Duration::from_millis(500);
/// A connect that takes longer than this is a failed poll. Short: a refused connect takes
/// microseconds, and when a SYN or its answer is lost while the sandbox comes up (cold
/// creates measured one in ~50 waiting ~0.5 s, more with finer polls) the connect would send
/// it again only a second later; the next poll sends a new one at once.
const CONNECT_TIMEOUT: Duration = Duration::from_millis(20);

/// How a [`wait_healthy`] ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// `GET /health` answered 2xx.
    Healthy,
    /// `alive` said the sandbox's init is gone.
    Died,
    /// `until` passed first.
    TimedOut,
}

/// What the runtime said on its readiness pipe (see [`paddock_contract::ready`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Word {
    /// It listens.
    Listening,
    /// The pipe closed without the word: every process that held its write end is gone (or
    /// closed it).
    Closed,
}

/// Waits for the runtime's word on `pipe`, the read end of its readiness pipe. Cancel-safe: a
/// byte read is a word returned.
pub async fn word(pipe: &mut tokio::net::unix::pipe::Receiver) -> Word {
    use tokio::io::AsyncReadExt;
    let mut byte = [0u8; 1];
    loop {
        match pipe.read(&mut byte).await {
            Ok(0) => return Word::Closed,
            Ok(_) if byte[0] == paddock_contract::ready::READY_BYTE => return Word::Listening,
            // Not the runtime's word (nothing else writes there before it): wait on.
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            // A pipe does not fail to read; if it did, it can say nothing more.
            Err(_) => return Word::Closed,
        }
    }
}

/// Polls `GET /health` at `addr` until it answers 2xx, `alive()` is false, or `until` passes.
/// Blocking: run it off the async threads.
pub fn wait_healthy(addr: SocketAddr, until: Instant, alive: impl Fn() -> bool) -> Outcome {
    let mut gap = FIRST_GAP;
    loop {
        if !alive() {
            return Outcome::Died;
        }
        if probe(addr) {
            return Outcome::Healthy;
        }
        let now = Instant::now();
        if now >= until {
            return Outcome::TimedOut;
        }
        std::thread::sleep(gap.min(until - now));
        gap = (gap * 5 / 4).min(MAX_GAP);
    }
}

/// One `GET /health` on a fresh connection: true on a 2xx answer.
fn probe(addr: SocketAddr) -> bool {
    let attempt = || -> std::io::Result<bool> {
        let mut s = TcpStream::connect_timeout(&addr, CONNECT_TIMEOUT)?;
        s.set_nodelay(true)?;
        s.set_read_timeout(Some(POLL_TIMEOUT))?;
        s.set_write_timeout(Some(POLL_TIMEOUT))?;
        s.write_all(b"GET /health HTTP/1.1\r\nHost: sandbox\r\nConnection: close\r\n\r\n")?;
        let mut buf = [0u8; 16];
        let mut n = 0;
        // The status line's first 10 bytes ("HTTP/1.1 2") may come in pieces.
        while n < 10 {
            match s.read(&mut buf[n..])? {
                0 => break,
                k => n += k,
            }
        }
        let head = &buf[..n];
        Ok(head.starts_with(b"HTTP/1.1 2") || head.starts_with(b"HTTP/1.0 2"))
    };
    attempt().unwrap_or(false)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::TcpListener;

    /// A port nobody listens on yet, and the listener for it made later.
    fn free_addr() -> SocketAddr {
        TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("bind")
    }

    fn serve(l: TcpListener, reply: &'static [u8]) {
        std::thread::spawn(move || {
            while let Ok((mut s, _)) = l.accept() {
                let mut buf = [0u8; 512];
                let _ = s.read(&mut buf);
                let _ = s.write_all(reply);
            }
        });
    }

    fn ready_pipe() -> (tokio::net::unix::pipe::Receiver, std::fs::File) {
        let (rx, tx) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).expect("pipe");
        let rx = tokio::net::unix::pipe::Receiver::from_owned_fd(rx).expect("receiver");
        (rx, std::fs::File::from(tx))
    }

    #[tokio::test]
    async fn the_runtime_word_is_heard_and_other_bytes_are_not_it() {
        let (mut rx, mut tx) = ready_pipe();
        std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(30));
            tx.write_all(b"x").expect("write");
            std::thread::sleep(Duration::from_millis(30));
            tx.write_all(&[paddock_contract::ready::READY_BYTE])
                .expect("write");
            // Held open after the word, as the sandbox's init holds its copy.
            std::thread::sleep(Duration::from_secs(5));
        });
        assert_eq!(word(&mut rx).await, Word::Listening);
    }

    #[tokio::test]
    async fn a_pipe_closed_without_the_word_says_closed() {
        let (mut rx, tx) = ready_pipe();
        std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(30));
            drop(tx);
        });
        assert_eq!(word(&mut rx).await, Word::Closed);
    }

    #[test]
    fn a_runtime_that_starts_listening_later_is_healthy() {
        let addr = free_addr();
        std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(30));
            serve(
                TcpListener::bind(addr).expect("rebind"),
                b"HTTP/1.1 204 No Content\r\n\r\n",
            );
        });
        let until = Instant::now() + Duration::from_secs(30);
        assert_eq!(wait_healthy(addr, until, || true), Outcome::Healthy);
    }

    #[test]
    fn an_error_answer_is_not_health_and_the_wait_ends_at_its_deadline() {
        let l = TcpListener::bind("127.0.0.1:0").expect("bind");
        let addr = l.local_addr().expect("addr");
        serve(l, b"HTTP/1.1 503 Service Unavailable\r\n\r\n");
        let until = Instant::now() + Duration::from_millis(50);
        assert_eq!(wait_healthy(addr, until, || true), Outcome::TimedOut);
    }

    /// A listener whose accept queue is full drops new SYNs without an answer: a black hole
    /// on the loopback. Returns it with the connection that fills it.
    fn black_hole() -> (std::os::fd::OwnedFd, SocketAddr, TcpStream) {
        use rustix::net::{AddressFamily, SocketType, bind, getsockname, listen, socket};
        let fd = socket(AddressFamily::INET, SocketType::STREAM, None).expect("socket");
        bind(&fd, &SocketAddr::from(([127, 0, 0, 1], 0))).expect("bind");
        // Backlog 0: one connection fills the queue.
        listen(&fd, 0).expect("listen");
        let addr = SocketAddr::try_from(getsockname(&fd).expect("getsockname")).expect("inet");
        let filler = TcpStream::connect(addr).expect("fill the queue");
        (fd, addr, filler)
    }

    /// A lost SYN costs one short poll, not the connect's own retry a second later: the
    /// polls go on while the connects go unanswered.
    #[test]
    fn an_unanswered_connect_is_given_up_for_a_new_poll() {
        let (_listener, addr, _filler) = black_hole();
        let polls = std::sync::atomic::AtomicUsize::new(0);
        let until = Instant::now() + Duration::from_millis(300);
        let outcome = wait_healthy(addr, until, || {
            polls.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            true
        });
        assert_eq!(outcome, Outcome::TimedOut);
        let polls = polls.into_inner();
        assert!(polls >= 5, "{polls} polls in 300 ms");
    }

    #[test]
    fn a_dead_init_ends_the_wait() {
        let until = Instant::now() + Duration::from_secs(30);
        assert_eq!(wait_healthy(free_addr(), until, || false), Outcome::Died);
    }
}
