//! Serving on one thread per CPU, as nginx's workers do.
//!
//! Each worker is a thread with a current-thread tokio runtime and its own accept loop on
//! the one listening socket. A connection stays on the worker that accepted it, and so does
//! everything its requests start there: the sandbox connections they open (their drivers
//! are tasks of that runtime) and the pools that keep them (give each worker its own
//! [`Gateway`](crate::Gateway) with [`Gateway::for_worker`](crate::Gateway::for_worker)).
//! On tokio's multi-thread runtime a client connection's task and its sandbox connection's
//! task were woken across its threads on every request; that cost more CPU per request than
//! the proxying itself (`finish_task_switch` and spin-lock wake-ups, ~15 % of a profile).
//!
//! One accept loop (on worker 0) hands the connections to the workers in turn. When every
//! worker accepted on the shared socket itself, whichever was awake won the race: a client
//! opening its connections at once (wrk's 32) put most of them on one worker, which then ran
//! at 100 % while the other idled, and runs of the same benchmark varied from 0.92× to 1.20×
//! the requests/s of the multi-thread runtime. One `SO_REUSEPORT` socket per worker spreads
//! by a hash of the addresses, measured no better, and would let another process of the same
//! user bind the port and take a share of the connections.
//!
//! Shutdown has two steps: [`Workers::drain`] stops accepting and waits for every open
//! connection to end (axum's graceful shutdown, per worker); [`Workers::close`] then ends what
//! was left running on the workers (upgraded connections' pipes, idle sandbox connections)
//! and joins the threads.

use std::convert::Infallible;
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::num::NonZeroUsize;
use std::thread::JoinHandle;

use axum::extract::Request;
use axum::response::Response;
use axum::serve::Listener;
use tokio::sync::{mpsc, oneshot, watch};
use tower_service::Service;

/// Backlog of the listening socket (tokio's own default for `TcpListener::bind`).
const BACKLOG: i32 = 1024;

/// Worker threads by default: one per CPU this process may run on.
pub fn default_count() -> usize {
    std::thread::available_parallelism().map_or(1, NonZeroUsize::get)
}

/// The listening socket the workers share: bound now, so that a taken address fails before
/// anything else starts.
pub fn bind(addr: SocketAddr) -> io::Result<std::net::TcpListener> {
    let socket = socket2::Socket::new(
        socket2::Domain::for_address(addr),
        socket2::Type::STREAM,
        Some(socket2::Protocol::TCP),
    )?;
    // As tokio's and std's `bind` do: a restart may bind while old connections linger.
    socket.set_reuse_address(true)?;
    socket.bind(&addr.into())?;
    socket.listen(BACKLOG)?;
    // Each worker's runtime polls it: never block a worker in `accept`.
    socket.set_nonblocking(true)?;
    Ok(socket.into())
}

/// Running workers (see the module's documentation).
pub struct Workers {
    threads: Vec<JoinHandle<()>>,
    /// Each worker's answer once it has drained (or could not start).
    drained: Vec<oneshot::Receiver<io::Result<()>>>,
    /// `true`: stop accepting and drain.
    stop: watch::Sender<bool>,
    /// `true`: drop the runtime (its remaining tasks) and end the thread.
    exit: watch::Sender<bool>,
}

impl Workers {
    /// Starts `count` workers accepting on `listener`, each serving with the service
    /// `service(worker index)` returns (called on that worker's thread, inside its runtime).
    pub fn start<F, S>(
        listener: std::net::TcpListener,
        count: usize,
        service: F,
    ) -> io::Result<Self>
    where
        F: Fn(usize) -> S + Send + Sync + 'static,
        S: Service<Request, Response = Response, Error = Infallible> + Clone + Send + 'static,
        S::Future: Send,
    {
        let service = std::sync::Arc::new(service);
        let (stop, _) = watch::channel(false);
        let (exit, _) = watch::channel(false);
        let mut workers = Workers {
            threads: Vec::new(),
            drained: Vec::new(),
            stop,
            exit,
        };
        let count = count.max(1);
        let addr = listener.local_addr()?;
        let (handoff, mut inboxes): (Vec<_>, Vec<_>) =
            (0..count).map(|_| mpsc::unbounded_channel()).unzip();
        let mut acceptor = Some((listener, handoff));
        for index in 0..count {
            let inbox = Inbox {
                rx: inboxes.remove(0),
                addr,
            };
            let acceptor = acceptor.take();
            let service = service.clone();
            let stop = workers.stop.subscribe();
            let exit = workers.exit.subscribe();
            let (drained_tx, drained_rx) = oneshot::channel();
            let thread = std::thread::Builder::new()
                .name(format!("paddock-gw-{index}"))
                .spawn(move || {
                    let rt = match tokio::runtime::Builder::new_current_thread()
                        .enable_all()
                        .build()
                    {
                        Ok(rt) => rt,
                        Err(e) => {
                            let _ = drained_tx.send(Err(e));
                            return;
                        }
                    };
                    rt.block_on(async move {
                        if let Some((listener, handoff)) = acceptor {
                            match tokio::net::TcpListener::from_std(listener) {
                                Ok(l) => {
                                    tokio::spawn(accept_loop(l, handoff, until(stop.clone())));
                                }
                                Err(e) => {
                                    let _ = drained_tx.send(Err(e));
                                    return;
                                }
                            }
                        }
                        let served = serve(inbox, service(index), until(stop)).await;
                        let _ = drained_tx.send(served);
                        // Tasks the connections left behind (upgraded pipes, pooled sandbox
                        // connections) run on until the process is done with them.
                        until(exit).await;
                    });
                })?;
            workers.threads.push(thread);
            workers.drained.push(drained_rx);
        }
        Ok(workers)
    }

    /// Stops accepting and waits until every worker's connections have ended; the first
    /// worker's error, if one failed.
    pub async fn drain(&mut self) -> io::Result<()> {
        let _ = self.stop.send(true);
        let mut result = Ok(());
        for drained in self.drained.drain(..) {
            let served = drained
                .await
                .unwrap_or_else(|_| Err(io::Error::other("a gateway worker thread ended")));
            if result.is_ok() {
                result = served;
            }
        }
        result
    }

    /// Ends the workers' remaining tasks and joins their threads.
    pub async fn close(self) {
        let _ = self.stop.send(true);
        let _ = self.exit.send(true);
        let threads = self.threads;
        let _ = tokio::task::spawn_blocking(move || {
            for t in threads {
                let _ = t.join();
            }
        })
        .await;
    }
}

/// Resolves once `flag` turns `true` (or its sender is gone).
async fn until(mut flag: watch::Receiver<bool>) {
    let _ = flag.wait_for(|set| *set).await;
}

/// A connection accepted for a worker, not yet registered with any runtime.
type Accepted = (std::net::TcpStream, SocketAddr);

/// Accepts on `listener` until `stop` and hands each connection to the next worker in turn.
async fn accept_loop(
    listener: tokio::net::TcpListener,
    workers: Vec<mpsc::UnboundedSender<Accepted>>,
    stop: impl Future<Output = ()>,
) {
    tokio::pin!(stop);
    let mut next = 0;
    loop {
        let accepted = tokio::select! {
            () = &mut stop => return,
            a = listener.accept() => a,
        };
        match accepted.and_then(|(tcp, peer)| Ok((tcp.into_std()?, peer))) {
            Ok(conn) => {
                // A worker gone (its runtime failed to start) leaves its share to the others.
                let mut conn = Some(conn);
                for _ in 0..workers.len() {
                    let to = &workers[next % workers.len()];
                    next = next.wrapping_add(1);
                    match to.send(conn.take().expect("kept until sent")) {
                        Ok(()) => break,
                        Err(back) => conn = Some(back.0),
                    }
                }
            }
            // Out of descriptors and the like: the connection waits in the backlog; do not
            // spin on it (axum's own accept loop does the same).
            Err(e) => {
                tracing::warn!(error = %e, "accepting a gateway connection failed");
                tokio::time::sleep(std::time::Duration::from_millis(10)).await;
            }
        }
    }
}

/// A worker's side of the hand-off: the connections the accept loop gave it, as axum's
/// [`Listener`].
struct Inbox {
    rx: mpsc::UnboundedReceiver<Accepted>,
    addr: SocketAddr,
}

impl Listener for Inbox {
    type Io = tokio::net::TcpStream;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        loop {
            let Some((tcp, peer)) = self.rx.recv().await else {
                // The accept loop stopped: no connection will come (the drain ends serving).
                return std::future::pending().await;
            };
            // Registered with this worker's runtime, so it is driven here from now on.
            match tokio::net::TcpStream::from_std(tcp) {
                Ok(tcp) => {
                    // Small responses must not wait for delayed ACKs.
                    let _ = tcp.set_nodelay(true);
                    return (tcp, peer);
                }
                Err(e) => tracing::warn!(error = %e, "taking over a gateway connection failed"),
            }
        }
    }

    fn local_addr(&self) -> io::Result<Self::Addr> {
        Ok(self.addr)
    }
}

/// One worker's serving of the connections handed to it until `stop`, then its graceful
/// drain.
async fn serve<S>(
    inbox: Inbox,
    service: S,
    stop: impl Future<Output = ()> + Send + 'static,
) -> io::Result<()>
where
    S: Service<Request, Response = Response, Error = Infallible> + Clone + Send + 'static,
    S::Future: Send,
{
    axum::serve(inbox, tower::make::Shared::new(service))
        .with_graceful_shutdown(stop)
        .await
}
