//! The route table: sandbox id → route, ordered by the Sandbox's resourceVersion.
//!
//! Two writers feed it out of order: the watch of Sandbox resources and the managers' pushes.
//! Every change carries the resourceVersion it was read from, and a change older than what
//! the table holds is dropped, so a late push never undoes a newer watch event and a slow
//! watch never undoes a newer push. A deletion leaves a tombstone (its version) for a while,
//! so a push sent before the delete but delivered after it cannot bring the route back.
//!
//! Readers (one per data-plane request) take a read lock for one hash look-up and a clone;
//! writers hold the write lock only for one entry (and, now and then, a sweep of expired
//! tombstones). Nothing here awaits.

use std::collections::{HashMap, HashSet};
use std::sync::RwLock;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use paddock_gateway::RouteInfo;

/// How long a deletion is remembered. A push races its watch event by milliseconds to
/// seconds; five minutes covers a manager retrying a slow push many times over.
pub const TOMBSTONE_TTL: Duration = Duration::from_secs(300);

/// How often writers sweep expired tombstones.
const SWEEP_EVERY: Duration = Duration::from_secs(30);

/// What a watch event or a push says about a sandbox.
#[derive(Debug, Clone)]
pub enum Change {
    /// The sandbox has this route (running, or paused / not ready).
    Route(RouteInfo),
    /// The sandbox exists but takes no traffic through the gateway (a pool member, not
    /// claimed): any route it had is dropped.
    Unrouted,
    /// The sandbox is deleted (or being deleted).
    Gone,
}

/// Whether a change was taken.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Applied,
    /// Older than what the table holds: dropped.
    Stale,
}

#[derive(Debug)]
enum Entry {
    Live {
        route: RouteInfo,
        version: u64,
        at: Instant,
    },
    /// A fence: nothing at or below `version` may bring the route back.
    Gone { version: u64, at: Instant },
}

impl Entry {
    fn version(&self) -> u64 {
        match self {
            Entry::Live { version, .. } | Entry::Gone { version, .. } => *version,
        }
    }
}

#[derive(Debug)]
struct Inner {
    entries: HashMap<String, Entry>,
    last_sweep: Instant,
}

/// The gateway's routes on Kubernetes.
#[derive(Debug)]
pub struct RouteTable {
    inner: RwLock<Inner>,
    synced: AtomicBool,
    tombstone_ttl: Duration,
}

impl Default for RouteTable {
    fn default() -> Self {
        Self::with_tombstone_ttl(TOMBSTONE_TTL)
    }
}

impl RouteTable {
    pub fn with_tombstone_ttl(tombstone_ttl: Duration) -> Self {
        Self {
            inner: RwLock::new(Inner {
                entries: HashMap::new(),
                last_sweep: Instant::now(),
            }),
            synced: AtomicBool::new(false),
            tombstone_ttl,
        }
    }

    /// The route of a sandbox the table knows to exist.
    pub fn lookup(&self, id: &str) -> Option<RouteInfo> {
        match self.read().entries.get(id)? {
            Entry::Live { route, .. } => Some(route.clone()),
            Entry::Gone { .. } => None,
        }
    }

    /// Every route the table knows to exist, by sandbox id.
    pub fn live(&self) -> Vec<(String, RouteInfo)> {
        self.read()
            .entries
            .iter()
            .filter_map(|(id, e)| match e {
                Entry::Live { route, .. } => Some((id.clone(), route.clone())),
                Entry::Gone { .. } => None,
            })
            .collect()
    }

    /// Applies one change read at `version` (the Sandbox's resourceVersion; a change
    /// without one counts as version 0, older than any the API server hands out).
    pub fn apply(&self, id: &str, version: Option<u64>, change: Change) -> Outcome {
        let version = version.unwrap_or(0);
        let now = Instant::now();
        let mut inner = self.write();
        inner.sweep(now, self.tombstone_ttl);
        let existing = inner.entries.get(id);
        let held = existing.map(Entry::version);
        let stale = match (&change, existing) {
            (_, None) => false,
            // A route comes back only from a version newer than its deletion.
            (Change::Route(_), Some(Entry::Gone { version: v, .. })) => version <= *v,
            (_, Some(e)) => version < e.version(),
        };
        if stale {
            tracing::debug!(sandbox = id, version, held, "stale route change dropped");
            return Outcome::Stale;
        }
        match change {
            Change::Route(route) => {
                inner.entries.insert(
                    id.to_string(),
                    Entry::Live {
                        route,
                        version,
                        at: now,
                    },
                );
            }
            // Nothing to take away and nothing to fence: a pool member never had a route.
            Change::Unrouted if existing.is_none() => {}
            Change::Unrouted | Change::Gone => {
                inner
                    .entries
                    .insert(id.to_string(), Entry::Gone { version, at: now });
            }
        }
        Outcome::Applied
    }

    /// Ends a full re-list of the sandboxes of `namespace` (all namespaces when `None`)
    /// that began at `started`: a route in scope that the list did not contain, and that
    /// no change has touched since the list began, belongs to a sandbox deleted while the
    /// watch was down; it goes.
    pub fn finish_relist(&self, namespace: Option<&str>, seen: &HashSet<String>, started: Instant) {
        let now = Instant::now();
        let prefix =
            namespace.map(|ns| format!("{ns}{}", paddock_infra::SandboxId::NAMESPACE_SEPARATOR));
        let mut inner = self.write();
        for (id, entry) in inner.entries.iter_mut() {
            let in_scope = prefix.as_deref().is_none_or(|p| id.starts_with(p));
            if let Entry::Live { version, at, .. } = entry
                && in_scope
                && *at < started
                && !seen.contains(id)
            {
                tracing::debug!(sandbox = %id, "route not in the re-list: dropped");
                *entry = Entry::Gone {
                    version: *version,
                    at: now,
                };
            }
        }
    }

    /// Marks the table complete: the first full list of every watched scope is in.
    pub fn mark_synced(&self) {
        self.synced.store(true, Ordering::Release);
    }

    /// Whether the first full list is in (`/readyz`).
    pub fn is_synced(&self) -> bool {
        self.synced.load(Ordering::Acquire)
    }

    /// Routes held (tombstones not counted).
    pub fn len(&self) -> usize {
        self.read()
            .entries
            .values()
            .filter(|e| matches!(e, Entry::Live { .. }))
            .count()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    // A writer that panicked mid-insert leaves a map that is still a valid map: keep serving.
    fn read(&self) -> std::sync::RwLockReadGuard<'_, Inner> {
        self.inner.read().unwrap_or_else(|p| p.into_inner())
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, Inner> {
        self.inner.write().unwrap_or_else(|p| p.into_inner())
    }
}

impl Inner {
    fn sweep(&mut self, now: Instant, ttl: Duration) {
        if now.duration_since(self.last_sweep) < SWEEP_EVERY.min(ttl) {
            return;
        }
        self.last_sweep = now;
        self.entries.retain(|_, e| match e {
            Entry::Gone { at, .. } => now.duration_since(*at) < ttl,
            Entry::Live { .. } => true,
        });
    }
}

/// A resourceVersion as the integer kube-apiserver uses in practice; `None` for anything
/// else (the change is then ordered as version 0).
pub fn parse_version(rv: Option<&str>) -> Option<u64> {
    rv.and_then(|v| v.parse().ok())
}

#[cfg(test)]
mod tests {
    use std::net::{IpAddr, Ipv4Addr};

    use paddock_gateway::Tokens;

    use super::*;

    fn route(last: u8, paused: bool) -> RouteInfo {
        RouteInfo {
            ip: IpAddr::V4(Ipv4Addr::new(10, 0, 0, last)),
            paused,
            tokens: Tokens {
                access: Some(format!("tok-{last}").into()),
                traffic: None,
            },
        }
    }

    fn ip(t: &RouteTable, id: &str) -> Option<IpAddr> {
        t.lookup(id).map(|r| r.ip)
    }

    #[test]
    fn newer_versions_win_in_either_order() {
        let t = RouteTable::default();
        assert_eq!(
            t.apply("ns--a", Some(10), Change::Route(route(1, false))),
            Outcome::Applied
        );
        // a late push read before the watch event
        assert_eq!(
            t.apply("ns--a", Some(9), Change::Route(route(2, false))),
            Outcome::Stale
        );
        assert_eq!(
            ip(&t, "ns--a"),
            Some(IpAddr::V4(Ipv4Addr::new(10, 0, 0, 1)))
        );
        // the same version again (push and watch event of one write) is taken
        assert_eq!(
            t.apply("ns--a", Some(10), Change::Route(route(1, false))),
            Outcome::Applied
        );
        assert_eq!(
            t.apply("ns--a", Some(11), Change::Route(route(3, true))),
            Outcome::Applied
        );
        let r = t.lookup("ns--a").unwrap();
        assert!(r.paused);
        assert_eq!(r.tokens.access.as_deref(), Some("tok-3"));
        // integers compare as integers, not as strings ("9" > "10" as text)
        assert_eq!(
            t.apply(
                "ns--b",
                parse_version(Some("10")),
                Change::Route(route(4, false))
            ),
            Outcome::Applied
        );
        assert_eq!(
            t.apply("ns--b", parse_version(Some("9")), Change::Gone),
            Outcome::Stale
        );
        assert!(t.lookup("ns--b").is_some());
        assert_eq!(t.len(), 2);
    }

    #[test]
    fn a_deletion_fences_off_late_pushes_until_a_newer_version() {
        let t = RouteTable::default();
        t.apply("ns--a", Some(5), Change::Route(route(1, false)));
        assert_eq!(t.apply("ns--a", Some(7), Change::Gone), Outcome::Applied);
        assert!(t.lookup("ns--a").is_none());
        // the push of the claim (version 5 or 7) arrives after the delete
        assert_eq!(
            t.apply("ns--a", Some(5), Change::Route(route(1, false))),
            Outcome::Stale
        );
        assert_eq!(
            t.apply("ns--a", Some(7), Change::Route(route(1, false))),
            Outcome::Stale
        );
        // a push without a version never resurrects
        assert_eq!(
            t.apply("ns--a", None, Change::Route(route(1, false))),
            Outcome::Stale
        );
        assert!(t.lookup("ns--a").is_none());
        assert!(t.is_empty());
        // a Sandbox of the same name made later has a newer version
        assert_eq!(
            t.apply("ns--a", Some(20), Change::Route(route(2, false))),
            Outcome::Applied
        );
        assert_eq!(
            ip(&t, "ns--a"),
            Some(IpAddr::V4(Ipv4Addr::new(10, 0, 0, 2)))
        );
        // a delete we never saw the route of still fences
        assert_eq!(t.apply("ns--b", Some(30), Change::Gone), Outcome::Applied);
        assert_eq!(
            t.apply("ns--b", Some(29), Change::Route(route(3, false))),
            Outcome::Stale
        );
    }

    #[test]
    fn tombstones_expire() {
        let t = RouteTable::with_tombstone_ttl(Duration::ZERO);
        t.apply("ns--a", Some(7), Change::Gone);
        // the next write sweeps: the fence is gone, an old push is taken again
        assert_eq!(
            t.apply("ns--x", Some(1), Change::Unrouted),
            Outcome::Applied
        );
        assert_eq!(
            t.apply("ns--a", Some(5), Change::Route(route(1, false))),
            Outcome::Applied
        );
    }

    #[test]
    fn unclaimed_sandboxes_get_no_route_and_lose_one_they_had() {
        let t = RouteTable::default();
        assert_eq!(
            t.apply("ns--pool-1", Some(3), Change::Unrouted),
            Outcome::Applied
        );
        assert!(t.lookup("ns--pool-1").is_none());
        // a pool member leaves no tombstone: its later claim (any version) routes
        assert_eq!(
            t.apply("ns--pool-1", Some(1), Change::Route(route(1, false))),
            Outcome::Applied
        );
        assert_eq!(
            t.apply("ns--pool-1", Some(4), Change::Unrouted),
            Outcome::Applied
        );
        assert!(t.lookup("ns--pool-1").is_none());
        assert_eq!(
            t.apply("ns--pool-1", Some(1), Change::Route(route(1, false))),
            Outcome::Stale
        );
    }

    #[test]
    fn a_relist_drops_routes_it_no_longer_contains_in_its_scope_only() {
        let t = RouteTable::default();
        t.apply("a--kept", Some(1), Change::Route(route(1, false)));
        t.apply(
            "a--deleted-while-down",
            Some(2),
            Change::Route(route(2, false)),
        );
        t.apply("b--other-scope", Some(3), Change::Route(route(3, false)));
        let started = Instant::now();
        std::thread::sleep(Duration::from_millis(2));
        // pushed while the list was running: newer than the list, kept
        t.apply("a--pushed-during", Some(9), Change::Route(route(4, false)));
        let seen = HashSet::from(["a--kept".to_string()]);
        t.finish_relist(Some("a"), &seen, started);
        assert!(t.lookup("a--kept").is_some());
        assert!(t.lookup("a--deleted-while-down").is_none());
        assert!(t.lookup("a--pushed-during").is_some());
        assert!(t.lookup("b--other-scope").is_some());
        // the dropped route is fenced at its version
        assert_eq!(
            t.apply(
                "a--deleted-while-down",
                Some(2),
                Change::Route(route(2, false))
            ),
            Outcome::Stale
        );
        t.finish_relist(
            None,
            &HashSet::new(),
            Instant::now() + Duration::from_secs(1),
        );
        assert!(t.is_empty());
    }

    #[test]
    fn readiness_waits_for_the_first_sync() {
        let t = RouteTable::default();
        assert!(!t.is_synced());
        t.mark_synced();
        assert!(t.is_synced());
    }
}
