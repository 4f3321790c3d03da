//! The one watch of Sandboxes: a reflector store shared by the Sandbox, SandboxSet,
//! SandboxClaim and Checkpoint reconcilers, and a fan-out of its events as their triggers.
//!
//! Before, each of three controllers ran its own Sandbox watch and the pool and claim
//! reconcilers LISTed Sandboxes again on every round. Now the API server streams Sandboxes to
//! the controller once, the store holds the latest copy of each, and reconcilers read from it.
//! Writes still go to the API server.
//!
//! # Staleness
//!
//! The store lags the API server by the watch's latency (and by a whole relist after a
//! dropped watch). What each reader tolerates, and why:
//!
//! * **Updates against a stale copy fail safely.** A claim `PUT`s the cached sandbox with its
//!   resourceVersion and a pool scale-down deletes with a resourceVersion precondition: if the
//!   cache was behind, the API server answers 409, the claim moves on to the next candidate
//!   and the pool requeues. Nobody overwrites a change they did not see.
//! * **Counting decisions wait for their own writes** ([`crate::expectations`]). A pool that
//!   just created members, or a claim that just claimed sandboxes, would otherwise read the
//!   cache before it shows them and create or claim again. Each such write is recorded and the
//!   owner's next round waits (briefly, with a deadline) until the cache shows it.
//! * **Status mirrors are eventually right.** The Sandbox reconciler already worked from a
//!   cached Sandbox (kube-runtime's controllers always do); its status merge patch is
//!   recomputed from the newer copy on the next event.
//! * **Nothing reads an empty cache.** Readers wait for the first full list
//!   ([`crate::Context::sandboxes`]), so a pool never mistakes "not listed yet" for "empty".

use std::sync::Arc;

use futures::channel::mpsc;
use futures::{SinkExt, Stream, StreamExt};
use kube::Api;
use kube::runtime::reflector::{self, store::Writer};
use kube::runtime::{WatchStreamExt, watcher};
use paddock_crds::Sandbox;

/// Events buffered per subscriber before the watch waits for it (backpressure, not loss).
const BUFFER: usize = 1024;

/// The writing side of the shared store: owns the watch and the subscribers' channels.
pub struct SandboxFeed {
    writer: Writer<Sandbox>,
    subscribers: Vec<mpsc::Sender<Arc<Sandbox>>>,
}

impl SandboxFeed {
    pub fn new(writer: Writer<Sandbox>) -> Self {
        SandboxFeed {
            writer,
            subscribers: Vec::new(),
        }
    }

    /// A stream of every Sandbox the watch reports (applied, listed or deleted), each seen
    /// after the store holds it. Deleted ones are included so a pool or claim that loses a
    /// sandbox is woken too, as the per-controller watches did.
    pub fn subscribe(&mut self) -> impl Stream<Item = Arc<Sandbox>> + Send + 'static {
        let (tx, rx) = mpsc::channel(BUFFER);
        self.subscribers.push(tx);
        rx
    }

    /// Runs the watch for good; watch errors are retried with backoff.
    pub async fn run(self, api: Api<Sandbox>) {
        let SandboxFeed {
            writer,
            mut subscribers,
        } = self;
        let events = reflector::reflector(
            writer,
            watcher(api, watcher::Config::default()).default_backoff(),
        );
        let mut events = std::pin::pin!(events);
        while let Some(event) = events.next().await {
            let obj = match event {
                Ok(
                    watcher::Event::Apply(o)
                    | watcher::Event::InitApply(o)
                    | watcher::Event::Delete(o),
                ) => Arc::new(o),
                Ok(watcher::Event::Init | watcher::Event::InitDone) => continue,
                Err(e) => {
                    tracing::warn!(error = %e, "sandbox watch failed; retrying");
                    continue;
                }
            };
            let mut open = Vec::with_capacity(subscribers.len());
            for mut tx in subscribers.drain(..) {
                if tx.send(obj.clone()).await.is_ok() {
                    open.push(tx);
                }
            }
            // A subscriber whose controller ended is dropped; the store keeps being fed for
            // the readers that remain.
            subscribers = open;
        }
    }
}
