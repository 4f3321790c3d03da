//! Wake on traffic: a request for a paused sandbox that asked for it (E2B's
//! `lifecycle.auto_resume`) resumes the sandbox and is answered once it is
//! back, instead of getting the paused 502.
//!
//! The gateway does not know how sandboxes are resumed: the process that
//! builds it hands it a [`Waker`] (in `paddock up`, the embedded manager's
//! resume; on Kubernetes a gateway could unpause the Sandbox resource and wait
//! for its route). Without a waker, paused stays paused.
//!
//! Concurrent requests for the same sleeping sandbox share one wake: the first
//! starts it, the others wait for its outcome ([`Wakes`]).

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};

use crate::route::RouteInfo;

/// What a wake came to.
#[derive(Debug, Clone)]
pub enum Woken {
    /// The sandbox runs again; this is its route now.
    Resumed(RouteInfo),
    /// The sandbox does not resume on traffic (or is not paused any more in a
    /// way a wake can change): the request gets the ordinary answer.
    NotWakeable,
    /// Resuming failed; the words say why.
    Failed(String),
}

/// A wake in progress.
pub type Waking<'a> = Pin<Box<dyn Future<Output = Woken> + Send + 'a>>;

/// Resumes paused sandboxes for the gateway.
///
/// Called only for a request whose token was accepted, so an unauthenticated
/// request never wakes anything. Implementations decide whether the sandbox
/// asked to be woken by traffic, and return once it serves again.
pub trait Waker: Send + Sync + 'static {
    /// Resumes sandbox `id` if it resumes on traffic.
    fn wake<'a>(&'a self, id: &'a str) -> Waking<'a>;
}

type Shared = Arc<tokio::sync::OnceCell<Woken>>;

/// One wake per sandbox at a time, whatever the number of requests waiting.
#[derive(Clone)]
pub(crate) struct Wakes {
    waker: Arc<dyn Waker>,
    in_flight: Arc<Mutex<HashMap<String, Shared>>>,
}

impl Wakes {
    pub(crate) fn new(waker: Arc<dyn Waker>) -> Self {
        Self {
            waker,
            in_flight: Arc::default(),
        }
    }

    /// Wakes `id`, or waits for the wake another request started.
    pub(crate) async fn wake(&self, id: &str) -> Woken {
        let cell = {
            let mut m = self.in_flight.lock().unwrap_or_else(|p| p.into_inner());
            m.entry(id.to_owned()).or_default().clone()
        };
        let woken = cell
            .get_or_init(|| async {
                tracing::info!(sandbox = id, "request for a paused sandbox: waking it");
                self.waker.wake(id).await
            })
            .await
            .clone();
        // The wake is over: a later request sees the route as it is now (the
        // first waiter to get here removes the entry; the rest find it gone or
        // replaced by a newer wake, which they leave alone).
        let mut m = self.in_flight.lock().unwrap_or_else(|p| p.into_inner());
        if m.get(id).is_some_and(|c| Arc::ptr_eq(c, &cell)) {
            m.remove(id);
        }
        woken
    }
}

#[cfg(test)]
mod tests {
    use std::net::{IpAddr, Ipv4Addr};
    use std::sync::atomic::{AtomicUsize, Ordering};

    use super::*;
    use crate::access::Tokens;

    /// Counts its wakes; each takes until `release` is notified.
    struct Slow {
        calls: AtomicUsize,
        release: tokio::sync::Notify,
    }

    impl Waker for Slow {
        fn wake<'a>(&'a self, id: &'a str) -> Waking<'a> {
            Box::pin(async move {
                self.calls.fetch_add(1, Ordering::SeqCst);
                self.release.notified().await;
                if id == "sleepy" {
                    Woken::Resumed(RouteInfo {
                        ip: IpAddr::V4(Ipv4Addr::new(10, 0, 0, 9)),
                        paused: false,
                        tokens: Tokens::default(),
                    })
                } else {
                    Woken::NotWakeable
                }
            })
        }
    }

    #[tokio::test]
    async fn concurrent_requests_share_one_wake() {
        let slow = Arc::new(Slow {
            calls: AtomicUsize::new(0),
            release: tokio::sync::Notify::new(),
        });
        let wakes = Wakes::new(slow.clone());
        let waiters: Vec<_> = (0..8)
            .map(|_| {
                let w = wakes.clone();
                tokio::spawn(async move { w.wake("sleepy").await })
            })
            .collect();
        // Let every waiter reach the shared wake before it may finish.
        while slow.calls.load(Ordering::SeqCst) == 0 {
            tokio::task::yield_now().await;
        }
        for _ in 0..100 {
            tokio::task::yield_now().await;
        }
        slow.release.notify_one();
        for w in waiters {
            let woken = w.await.expect("waiter");
            assert!(
                matches!(woken, Woken::Resumed(r) if r.ip == IpAddr::V4(Ipv4Addr::new(10, 0, 0, 9)))
            );
        }
        assert_eq!(slow.calls.load(Ordering::SeqCst), 1);
        assert!(wakes.in_flight.lock().unwrap().is_empty());
    }

    #[tokio::test]
    async fn a_finished_wake_is_not_reused() {
        let slow = Arc::new(Slow {
            calls: AtomicUsize::new(0),
            release: tokio::sync::Notify::new(),
        });
        let wakes = Wakes::new(slow.clone());
        for n in 1..=2 {
            let w = wakes.clone();
            let t = tokio::spawn(async move { w.wake("other").await });
            while slow.calls.load(Ordering::SeqCst) < n {
                tokio::task::yield_now().await;
            }
            // `notify_one` keeps a permit, so the wake ends even if it has not
            // started waiting yet.
            slow.release.notify_one();
            assert!(matches!(t.await.expect("waiter"), Woken::NotWakeable));
        }
        assert_eq!(slow.calls.load(Ordering::SeqCst), 2);
    }
}
