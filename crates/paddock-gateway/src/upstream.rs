//! The upstream phase for pooled traffic: per-sandbox connection pools and
//! sending a request with the retry policy applied.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use axum::body::Body;
use axum::http::Request;
use hyper::body::Incoming;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;

use crate::breaker::{Breakers, CountingConnector};
use crate::errors::UpstreamFailure;
use crate::retry::{self, Replay};
use crate::route::Routes;

pub type Upstream = Client<CountingConnector, Body>;

pub struct Pool {
    http1: Upstream,
    /// Only for gRPC, which needs HTTP/2 to the sandbox too.
    http2: Upstream,
}

impl Pool {
    fn new(breakers: &Breakers) -> Self {
        let connector = CountingConnector::new(breakers.clone());
        Pool {
            http1: Client::builder(TokioExecutor::new())
                .pool_idle_timeout(Duration::from_secs(60))
                .build(connector.clone()),
            http2: Client::builder(TokioExecutor::new())
                .http2_only(true)
                .pool_idle_timeout(Duration::from_secs(60))
                .build(connector),
        }
    }

    pub fn pick(&self, http2: bool) -> &Upstream {
        if http2 { &self.http2 } else { &self.http1 }
    }
}

/// One connection pool per sandbox: addresses are reused once a sandbox
/// dies, and a pool keyed by address would hand a new sandbox the old one's
/// dead connections.
#[derive(Clone, Default)]
pub struct Pools {
    pools: Arc<Mutex<HashMap<String, Arc<Pool>>>>,
    handed_out: Arc<AtomicU64>,
}

impl Pools {
    fn lock(&self) -> MutexGuard<'_, HashMap<String, Arc<Pool>>> {
        self.pools.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The pools of `sandbox` (one reference count per request: a client's clone is a dozen);
    /// now and then drops pools of sandboxes that `routes` no longer knows.
    pub fn pool(&self, sandbox: &str, breakers: &Breakers, routes: &dyn Routes) -> Arc<Pool> {
        let n = self.handed_out.fetch_add(1, Ordering::Relaxed);
        let mut pools = self.lock();
        if n % 256 == 255 {
            pools.retain(|id, _| routes.lookup(id).is_some());
        }
        if let Some(pool) = pools.get(sandbox) {
            return pool.clone();
        }
        pools
            .entry(sandbox.to_string())
            .or_insert_with(|| Arc::new(Pool::new(breakers)))
            .clone()
    }

    /// Drops the pool of a sandbox that is gone, closing its idle connections.
    pub fn forget(&self, sandbox: &str) {
        self.lock().remove(sandbox);
    }
}

/// Sends `req`, then retries it while [`retry::worth_retrying`] says so and
/// the `max_retries` budget has room.
pub async fn send(
    client: &Upstream,
    req: Request<Body>,
    breakers: &Breakers,
) -> Result<hyper::Response<Incoming>, hyper_util::client::legacy::Error> {
    let replay = Replay::capture(&req);
    let mut result = client.request(req).await;
    let Some(replay) = replay else {
        return result;
    };
    for delay in retry::DELAYS {
        let failure = result.as_ref().err().map(UpstreamFailure::of);
        if !retry::worth_retrying(failure) {
            break;
        }
        // Held through the wait and the attempt, so the budget bounds
        // retries in flight, not retries started.
        let Some(_retry_slot) = breakers.retry() else {
            break;
        };
        tracing::debug!(?delay, "connection refused; retrying");
        tokio::time::sleep(delay).await;
        result = client.request(replay.request()).await;
    }
    result
}
