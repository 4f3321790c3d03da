//! The gateway's [`Routes`] on Kubernetes: the table, and one `GET` of the Sandbox on a miss.
//!
//! A miss means either that no such sandbox exists or that the table lags (a push was lost
//! and the watch has not delivered yet). Before answering "not found" the gateway asks the
//! API server once. Concurrent misses for one id share that one `GET`, it is bounded in
//! time, and a negative answer is remembered briefly, so a flood of requests for a missing
//! id does not become a flood on the API server.

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use paddock_crds::Sandbox;
use paddock_gateway::{Fetched, RouteInfo, Routes};
use paddock_infra::SandboxId;
use tokio::sync::OnceCell;

use crate::Scope;
use crate::metrics::RouteMetrics;
use crate::source::observe;
use crate::table::RouteTable;

/// How long one miss may wait for the API server.
pub const FETCH_TIMEOUT: Duration = Duration::from_secs(2);
/// How long "no such sandbox" is believed without asking again.
pub const NEGATIVE_TTL: Duration = Duration::from_secs(2);
/// Misses tracked at once; past this, misses answer "not found" without asking (a flood
/// of distinct made-up ids must not become a flood of `GET`s).
const MAX_TRACKED: usize = 4096;

/// A future of a Sandbox read.
pub type SandboxRead<'a> =
    Pin<Box<dyn Future<Output = Result<Option<Sandbox>, kube::Error>> + Send + 'a>>;

/// Reads one Sandbox from the API server (a trait so the miss logic is testable alone).
pub trait SandboxGetter: Send + Sync + 'static {
    fn get<'a>(&'a self, namespace: &'a str, name: &'a str) -> SandboxRead<'a>;
}

/// The real getter: `GET /apis/agents.kruise.io/v1alpha1/namespaces/<ns>/sandboxes/<name>`.
pub struct ApiGetter(pub kube::Client);

impl SandboxGetter for ApiGetter {
    fn get<'a>(&'a self, namespace: &'a str, name: &'a str) -> SandboxRead<'a> {
        Box::pin(async move {
            kube::Api::<Sandbox>::namespaced(self.0.clone(), namespace)
                .get_opt(name)
                .await
        })
    }
}

type Flight = Arc<OnceCell<Option<RouteInfo>>>;

enum Miss {
    /// A `GET` is running; later misses wait for its answer.
    InFlight(Flight),
    /// The sandbox did not exist at this time.
    Missing(Instant),
}

/// The route table plus the miss fallback.
pub struct KubeRoutes {
    table: Arc<RouteTable>,
    getter: Arc<dyn SandboxGetter>,
    scope: Scope,
    misses: Mutex<HashMap<String, Miss>>,
    timeout: Duration,
    negative_ttl: Duration,
    metrics: RouteMetrics,
}

impl KubeRoutes {
    pub fn new(
        table: Arc<RouteTable>,
        getter: Arc<dyn SandboxGetter>,
        scope: Scope,
        metrics: RouteMetrics,
    ) -> Self {
        let mut r = Self::with_limits(table, getter, scope, FETCH_TIMEOUT, NEGATIVE_TTL);
        r.metrics = metrics;
        r
    }

    pub fn with_limits(
        table: Arc<RouteTable>,
        getter: Arc<dyn SandboxGetter>,
        scope: Scope,
        timeout: Duration,
        negative_ttl: Duration,
    ) -> Self {
        Self {
            table,
            getter,
            scope,
            misses: Mutex::new(HashMap::new()),
            timeout,
            negative_ttl,
            metrics: RouteMetrics::default(),
        }
    }

    pub fn table(&self) -> &Arc<RouteTable> {
        &self.table
    }

    fn miss(&self, result: &'static str) {
        RouteMetrics::count(&self.metrics.misses, result);
    }

    fn misses(&self) -> std::sync::MutexGuard<'_, HashMap<String, Miss>> {
        self.misses.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The flight to wait on for `id`, or `None` when a recent answer was "missing" (or
    /// too many misses are tracked).
    fn join(&self, id: &str) -> Option<Flight> {
        let now = Instant::now();
        let mut misses = self.misses();
        match misses.get(id) {
            Some(Miss::InFlight(f)) => return Some(f.clone()),
            Some(Miss::Missing(at)) if now.duration_since(*at) < self.negative_ttl => {
                self.miss("cached");
                return None;
            }
            _ => {}
        }
        if misses.len() >= MAX_TRACKED {
            misses.retain(|_, m| match m {
                Miss::Missing(at) => now.duration_since(*at) < self.negative_ttl,
                Miss::InFlight(_) => true,
            });
            if misses.len() >= MAX_TRACKED {
                tracing::warn!(
                    "too many route misses at once: answering not found without asking the API server"
                );
                self.miss("cached");
                return None;
            }
        }
        let flight = Flight::default();
        misses.insert(id.to_string(), Miss::InFlight(flight.clone()));
        Some(flight)
    }

    /// One `GET`, bounded; what it found goes into the table like a watch event would.
    async fn ask(&self, id: &str, namespace: &str, name: &str) -> Option<RouteInfo> {
        let read = tokio::time::timeout(self.timeout, self.getter.get(namespace, name));
        match read.await {
            Ok(Ok(Some(sandbox))) => {
                if let Some(o) = observe(&sandbox) {
                    self.table.apply(&o.id, o.version, o.change);
                }
                let found = self.table.lookup(id);
                self.miss(if found.is_some() {
                    "found"
                } else {
                    "not_found"
                });
                found
            }
            Ok(Ok(None)) => {
                self.miss("not_found");
                None
            }
            Ok(Err(e)) => {
                tracing::warn!(sandbox = id, error = %e, "looking up a sandbox missing from the route table failed");
                self.miss("failed");
                None
            }
            Err(_) => {
                tracing::warn!(sandbox = id, timeout = ?self.timeout, "looking up a sandbox missing from the route table timed out");
                self.miss("failed");
                None
            }
        }
    }

    async fn fetch_miss(&self, id: &str) -> Option<RouteInfo> {
        // Only a well-formed `<namespace>--<name>` in a watched namespace is worth a `GET`.
        let parsed = SandboxId::new(id.to_string()).ok()?;
        let (namespace, name) = parsed.resource()?;
        if !self.scope.contains(namespace) {
            return None;
        }
        let flight = self.join(id)?;
        let found = flight
            .get_or_init(|| {
                use tracing::Instrument;
                self.ask(id, namespace, name)
                    .instrument(tracing::debug_span!("route_miss", sandbox = id))
            })
            .await
            .clone();
        // Whoever finishes first settles the slot (only if it is still this flight).
        let mut misses = self.misses();
        if let Some(Miss::InFlight(f)) = misses.get(id)
            && Arc::ptr_eq(f, &flight)
        {
            if found.is_some() {
                misses.remove(id);
            } else {
                misses.insert(id.to_string(), Miss::Missing(Instant::now()));
            }
        }
        found
    }
}

impl Routes for KubeRoutes {
    fn lookup(&self, id: &str) -> Option<RouteInfo> {
        self.table.lookup(id)
    }

    fn fetch<'a>(&'a self, id: &'a str) -> Fetched<'a> {
        Box::pin(self.fetch_miss(id))
    }

    fn list(&self) -> Vec<(String, RouteInfo)> {
        self.table.live()
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;
    use std::sync::atomic::{AtomicUsize, Ordering};

    use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
    use paddock_crds::{PodInfo, SandboxStatus, keys, sandbox_conditions};
    use paddock_gateway::Target;

    use super::*;

    /// Knows the sandboxes named in `exists`; counts its reads; each read takes `delay`.
    struct Counting {
        exists: Vec<&'static str>,
        reads: AtomicUsize,
        delay: Duration,
    }

    impl SandboxGetter for Counting {
        fn get<'a>(&'a self, namespace: &'a str, name: &'a str) -> SandboxRead<'a> {
            Box::pin(async move {
                self.reads.fetch_add(1, Ordering::SeqCst);
                tokio::time::sleep(self.delay).await;
                Ok(self
                    .exists
                    .contains(&name)
                    .then(|| claimed(namespace, name)))
            })
        }
    }

    fn claimed(namespace: &str, name: &str) -> Sandbox {
        let mut s = Sandbox::new(name, Default::default());
        s.metadata.namespace = Some(namespace.into());
        s.metadata.resource_version = Some("5".into());
        s.metadata.labels = Some(BTreeMap::from([(
            keys::LABEL_SANDBOX_CLAIMED.into(),
            "true".into(),
        )]));
        s.status = Some(SandboxStatus {
            conditions: vec![Condition {
                type_: sandbox_conditions::READY.into(),
                status: "True".into(),
                reason: String::new(),
                message: String::new(),
                last_transition_time: Time(Default::default()),
                observed_generation: None,
            }],
            pod_info: Some(PodInfo {
                pod_ip: Some("10.217.0.4".into()),
                ..Default::default()
            }),
            ..Default::default()
        });
        s
    }

    fn routes(
        exists: Vec<&'static str>,
        delay: Duration,
        scope: Scope,
    ) -> (Arc<Counting>, KubeRoutes) {
        let getter = Arc::new(Counting {
            exists,
            reads: AtomicUsize::new(0),
            delay,
        });
        let r = KubeRoutes::with_limits(
            Arc::new(RouteTable::default()),
            getter.clone(),
            scope,
            Duration::from_secs(30),
            Duration::from_secs(60),
        );
        (getter, r)
    }

    fn target(id: &str) -> Target {
        Target {
            sandbox: id.into(),
            port: 49983,
            path: None,
        }
    }

    #[tokio::test]
    async fn a_miss_reads_the_sandbox_once_and_fills_the_table() {
        let (getter, r) = routes(vec!["late"], Duration::from_millis(50), Scope::All);
        let rs = &r;
        // concurrent misses for one id share one read
        let answers = futures::future::join_all((0..20).map(|_| async move {
            paddock_gateway::route::resolve(rs, &target("ns--late")).await
        }))
        .await;
        assert!(answers.iter().all(|a| a.is_ok()));
        assert_eq!(getter.reads.load(Ordering::SeqCst), 1);
        // now in the table: no more reads
        assert!(r.lookup("ns--late").is_some());
        assert!(
            paddock_gateway::route::resolve(&r, &target("ns--late"))
                .await
                .is_ok()
        );
        assert_eq!(getter.reads.load(Ordering::SeqCst), 1);
    }

    #[tokio::test]
    async fn a_missing_sandbox_is_read_once_then_remembered() {
        let (getter, r) = routes(vec![], Duration::from_millis(20), Scope::All);
        let rs = &r;
        let answers = futures::future::join_all((0..20).map(|_| async move {
            paddock_gateway::route::resolve(rs, &target("ns--nope")).await
        }))
        .await;
        assert!(
            answers
                .iter()
                .all(|a| matches!(a, Err(paddock_gateway::GatewayError::NotFound { .. })))
        );
        for _ in 0..10 {
            assert!(r.fetch("ns--nope").await.is_none());
        }
        assert_eq!(getter.reads.load(Ordering::SeqCst), 1);
        assert_eq!(RouteMetrics::get(&r.metrics.misses, "not_found"), 1);
        assert!(RouteMetrics::get(&r.metrics.misses, "cached") >= 10);
    }

    #[tokio::test]
    async fn ids_that_name_no_resource_in_scope_are_never_read() {
        let (getter, r) = routes(
            vec!["x"],
            Duration::ZERO,
            Scope::Namespaces(vec!["mine".into()]),
        );
        assert!(r.fetch("plainid").await.is_none());
        assert!(r.fetch("Not An Id").await.is_none());
        assert!(r.fetch("theirs--x").await.is_none());
        assert_eq!(getter.reads.load(Ordering::SeqCst), 0);
        assert!(r.fetch("mine--x").await.is_some());
        assert_eq!(getter.reads.load(Ordering::SeqCst), 1);
    }

    #[tokio::test]
    async fn a_slow_api_server_is_given_up_on() {
        let getter = Arc::new(Counting {
            exists: vec!["slow"],
            reads: AtomicUsize::new(0),
            delay: Duration::from_secs(3600),
        });
        let r = KubeRoutes::with_limits(
            Arc::new(RouteTable::default()),
            getter,
            Scope::All,
            Duration::from_millis(20),
            Duration::from_secs(60),
        );
        assert!(r.fetch("ns--slow").await.is_none());
        assert_eq!(RouteMetrics::get(&r.metrics.misses, "failed"), 1);
    }
}
