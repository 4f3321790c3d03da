//! Writes a reconciler made that the shared Sandbox cache ([`crate::cache`]) may not show yet.
//!
//! A pool counts its members and a claim counts what it holds, both from the cache. Right after
//! they create or claim sandboxes, the cache can still be behind (their own status write may
//! even wake them before the Sandbox events arrive), and acting on the old count would create
//! or claim twice. So each such write is recorded under its owner, and the owner's next round
//! proceeds only once the cache shows every recorded write, or the write is older than
//! [`EXPIRY`] (a lost event must not stall the owner for good; the watch's relist repairs the
//! cache meanwhile).

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use paddock_crds::Sandbox;

/// How long a write may go unseen before it is assumed lost and forgotten.
pub const EXPIRY: Duration = Duration::from_secs(15);

/// What the cache must show for a write to count as seen.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Expect {
    /// A sandbox we created: it must be in the cache.
    Created,
    /// A sandbox we updated or deleted while the cache held resourceVersion `from`: the cached
    /// copy must be newer, or gone.
    Changed { from: String },
}

impl Expect {
    pub fn met_by(&self, cached: Option<&Sandbox>) -> bool {
        match self {
            Expect::Created => cached.is_some(),
            Expect::Changed { from } => {
                cached.is_none_or(|s| s.metadata.resource_version.as_deref() != Some(from))
            }
        }
    }
}

#[derive(Debug)]
struct Pending {
    name: String,
    expect: Expect,
    at: Instant,
}

/// Unseen writes, keyed by their owner (e.g. `set/<ns>/<name>`).
#[derive(Default)]
pub struct Expectations {
    pending: Mutex<HashMap<String, Vec<Pending>>>,
}

impl Expectations {
    /// Records that `owner` wrote sandbox `name` and expects the cache to show `expect`.
    pub fn expect(&self, owner: &str, name: &str, expect: Expect, now: Instant) {
        let mut map = self.pending.lock().unwrap_or_else(|e| e.into_inner());
        // Owners that went away (a deleted claim) never ask again: drop their stale entries.
        map.retain(|_, v| v.iter().any(|p| now.duration_since(p.at) < EXPIRY));
        map.entry(owner.to_string()).or_default().push(Pending {
            name: name.to_string(),
            expect,
            at: now,
        });
    }

    /// Whether the cache (`lookup` by name) shows every write `owner` made; forgets those it
    /// shows and those past [`EXPIRY`].
    pub fn settled<F>(&self, owner: &str, lookup: F, now: Instant) -> bool
    where
        F: Fn(&str) -> Option<std::sync::Arc<Sandbox>>,
    {
        let mut map = self.pending.lock().unwrap_or_else(|e| e.into_inner());
        let Some(list) = map.get_mut(owner) else {
            return true;
        };
        list.retain(|p| {
            now.duration_since(p.at) < EXPIRY && !p.expect.met_by(lookup(&p.name).as_deref())
        });
        if list.is_empty() {
            map.remove(owner);
            true
        } else {
            tracing::debug!(
                owner,
                unseen = list.len(),
                "waiting for the cache to show our writes"
            );
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use paddock_crds::SandboxSpec;

    use super::*;

    fn sbx(rv: &str) -> Arc<Sandbox> {
        let mut s = Sandbox::new("a", SandboxSpec::default());
        s.metadata.resource_version = Some(rv.into());
        Arc::new(s)
    }

    #[test]
    fn a_created_sandbox_is_awaited_until_the_cache_has_it() {
        let e = Expectations::default();
        let t0 = Instant::now();
        e.expect("set/ns/p", "a", Expect::Created, t0);
        assert!(!e.settled("set/ns/p", |_| None, t0));
        assert!(e.settled("other", |_| None, t0), "owners are independent");
        assert!(e.settled("set/ns/p", |_| Some(sbx("1")), t0));
        // Seen once is forgotten: a later deletion does not block again.
        assert!(e.settled("set/ns/p", |_| None, t0));
    }

    #[test]
    fn a_claimed_sandbox_is_awaited_until_the_cache_moves_past_the_version_we_replaced() {
        let e = Expectations::default();
        let t0 = Instant::now();
        e.expect("claim/ns/c", "a", Expect::Changed { from: "7".into() }, t0);
        assert!(!e.settled("claim/ns/c", |_| Some(sbx("7")), t0));
        assert!(e.settled("claim/ns/c", |_| Some(sbx("8")), t0));
        e.expect("claim/ns/c", "a", Expect::Changed { from: "8".into() }, t0);
        assert!(
            e.settled("claim/ns/c", |_| None, t0),
            "gone counts as changed"
        );
    }

    #[test]
    fn an_unseen_write_expires_so_a_lost_event_never_stalls_its_owner() {
        let e = Expectations::default();
        let t0 = Instant::now();
        e.expect("set/ns/p", "a", Expect::Created, t0);
        assert!(!e.settled("set/ns/p", |_| None, t0 + EXPIRY / 2));
        assert!(e.settled("set/ns/p", |_| None, t0 + EXPIRY));
    }
}
