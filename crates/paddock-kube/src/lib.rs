//! The Kubernetes backend of the Sandbox Manager: [`paddock_infra::Infra`] over the
//! `agents.kruise.io` resources, for `paddock manager`.
//!
//! * **create** claims a pool member of the SandboxSet named by the template: a random
//!   available candidate from the informer cache, one `Update` on its cached resourceVersion
//!   that writes the lock, owner, init request, tokens, timeouts and the manager's record, and
//!   drops the SandboxSet owner reference so the pool refills. A conflict (409: another replica
//!   or claim won) moves on to the next candidate; an in-process pick set keeps this replica's
//!   own concurrent creates apart. With no candidate left, a new Sandbox claimed from birth is
//!   created (one `Create`, rate-limited per replica), unless creation on no stock is off. The
//!   claim code is the SandboxClaim reconciler's ([`paddock_controller::desired::claim`]).
//! * the manager's records live in the Sandboxes themselves ([`KubeRecords`]); timeouts are
//!   `spec.shutdownTime` / `spec.pauseTime`, enforced by the controller.
//! * every claim, pause, resume and kill is pushed to the gateways before it returns.

mod bucket;
mod cache;
pub mod convert;
pub mod keys;
mod peers;
mod records;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper_util::client::legacy::Client as HttpClient;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use k8s_openapi::api::authorization::v1::{
    ResourceAttributes, SelfSubjectAccessReview, SelfSubjectAccessReviewSpec,
};
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, DeleteParams, ListParams, LogParams, Patch, PatchParams, PostParams};
use kube::runtime::reflector;
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Client, ResourceExt};
use paddock_controller::desired::claim::{self as plan, Candidate, ClaimRequest, InitRuntime};
use paddock_crds::keys as crd_keys;
use paddock_crds::{Sandbox, SandboxSet};
use paddock_gateway::peer::{RouteState, RouteUpdate};
use paddock_infra::{
    CreateSandbox, IllegalTransition, Infra, InfraError, InfraResult, Lease, LifecycleEvent,
    LogLine, RecordStore, SandboxEnded, SandboxId, SandboxInfo, SandboxMetrics, SandboxState,
    TemplateInfo,
};
use tokio::sync::broadcast;
use tracing::Instrument;

use cache::{Cache, Key};
use convert::{ANNOTATION_METADATA, ANNOTATION_RECORD, RecordMeta};
pub use records::KubeRecords;

/// How long one call to the API server may take before the API answers 503.
const API_TIMEOUT: Duration = Duration::from_secs(10);

/// Settings of the Kubernetes backend.
#[derive(Debug, Clone)]
pub struct KubeConfig {
    /// Namespaces in scope; empty: all namespaces.
    pub namespaces: Vec<String>,
    /// Where the gateway pods (`gateway_selector`) run.
    pub system_namespace: String,
    /// New Sandboxes per second when the pool is empty (token bucket, per replica).
    pub max_create_qps: f64,
    /// Whether an empty pool creates a new Sandbox (a create may turn it off with the
    /// original's metadata `e2b.agents.kruise.io/create-on-no-stock: "false"`).
    pub create_on_no_stock: bool,
    /// Static gateway peers (`http://host:port`).
    pub gateway_peers: Vec<String>,
    /// Label selector of gateway pods in the system namespace.
    pub gateway_selector: Option<String>,
    /// The shared token of route pushes; without it nothing is pushed.
    pub peer_token: Option<String>,
    /// How long a new or resumed Sandbox may take to become Ready.
    pub ready_timeout: Duration,
}

/// Why the backend could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("the agents.kruise.io CRDs are not installed: run `paddock crds | kubectl apply -f -`")]
    CrdsMissing,
    #[error("RBAC forbids verb `{verb}` on resource `{resource}`{}", scope(.namespace))]
    Forbidden {
        verb: String,
        resource: String,
        namespace: Option<String>,
    },
    #[error("the Kubernetes API server is unreachable: {0}")]
    Unreachable(String),
    #[error("kubernetes API: {0}")]
    Kube(#[source] kube::Error),
}

fn scope(ns: &Option<String>) -> String {
    match ns {
        Some(ns) => format!(" in namespace `{ns}`"),
        None => " cluster-wide".into(),
    }
}

/// A failed call to the API server.
#[derive(Debug)]
enum CallError {
    /// The API server answered with this status.
    Status(u16, kube::Error),
    /// No answer (unreachable, timed out): the manager answers 503.
    Down(String),
}

impl From<CallError> for InfraError {
    fn from(e: CallError) -> Self {
        match e {
            CallError::Status(_, e) => InfraError::internal(e),
            CallError::Down(msg) => InfraError::Capacity(msg),
        }
    }
}

/// Runs one API call, bounded, with its failure sorted into answered and unanswered.
async fn call<T>(fut: impl Future<Output = Result<T, kube::Error>>) -> Result<T, CallError> {
    match tokio::time::timeout(API_TIMEOUT, fut).await {
        Err(_) => Err(CallError::Down(format!(
            "the Kubernetes API server did not answer within {}s",
            API_TIMEOUT.as_secs()
        ))),
        Ok(Ok(v)) => Ok(v),
        Ok(Err(kube::Error::Api(ae))) => Err(CallError::Status(ae.code, kube::Error::Api(ae))),
        Ok(Err(e)) => Err(CallError::Down(format!(
            "the Kubernetes API server is unreachable: {e}"
        ))),
    }
}

/// The Kubernetes backend. Cheap to clone.
#[derive(Clone)]
pub struct KubeInfra {
    inner: Arc<Inner>,
}

struct Inner {
    client: Client,
    config: KubeConfig,
    cache: Cache,
    /// Pool members this replica is claiming right now.
    picks: Mutex<HashSet<Key>>,
    bucket: bucket::TokenBucket,
    runtime: paddock_contract::client::RuntimeClient,
    http: HttpClient<HttpConnector, Empty<Bytes>>,
    ended: broadcast::Sender<SandboxEnded>,
    /// Sandboxes this replica deleted (not reported as ended).
    killed: Arc<Mutex<HashMap<Key, Instant>>>,
    peers: peers::Peers,
}

/// Drops a pick when the claim attempt is over.
struct Picked<'a>(&'a Mutex<HashSet<Key>>, Key);

impl Drop for Picked<'_> {
    fn drop(&mut self) {
        self.0
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&self.1);
    }
}

impl KubeInfra {
    /// Checks the CRDs and permissions, starts the informers and waits for their first list.
    pub async fn start(client: Client, config: KubeConfig) -> Result<Self, StartError> {
        preflight(&client, &config).await?;
        let (ended, _) = broadcast::channel(256);
        let killed = Arc::new(Mutex::new(HashMap::new()));
        let cache = Cache::start(
            client.clone(),
            &config.namespaces,
            ended.clone(),
            killed.clone(),
        )
        .await;
        let pods = match &config.gateway_selector {
            Some(sel) => {
                let api: Api<Pod> = Api::namespaced(client.clone(), &config.system_namespace);
                let (store, writer) = reflector::store();
                let stream = watcher(api, watcher::Config::default().labels(sel))
                    .default_backoff()
                    .reflect(writer);
                tokio::spawn(futures::StreamExt::for_each(stream, |ev| async move {
                    if let Err(e) = ev {
                        tracing::warn!(error = %e, "gateway pod watch failed; retrying");
                    }
                }));
                Some(store)
            }
            None => None,
        };
        if config.peer_token.is_none() {
            tracing::warn!(
                "no peer token (PADDOCK_PEER_TOKEN or --peer-token-file): routes are not pushed to \
                 the gateways, which learn them from their watch only"
            );
        }
        let peers = peers::Peers::new(
            config.gateway_peers.clone(),
            pods,
            config.peer_token.clone(),
        );
        let mut connector = HttpConnector::new();
        connector.set_nodelay(true);
        connector.set_connect_timeout(Some(Duration::from_secs(2)));
        Ok(KubeInfra {
            inner: Arc::new(Inner {
                bucket: bucket::TokenBucket::new(config.max_create_qps),
                client,
                config,
                cache,
                picks: Mutex::new(HashSet::new()),
                runtime: paddock_contract::client::RuntimeClient::new(),
                http: HttpClient::builder(TokioExecutor::new()).build(connector),
                ended,
                killed,
                peers,
            }),
        })
    }

    async fn create_in_span(&self, req: CreateSandbox) -> InfraResult<SandboxInfo> {
        let i = &self.inner;
        let set = i
            .cache
            .set(&req.template, &i.config.namespaces)
            .ok_or_else(|| InfraError::UnknownTemplate(req.template.clone()))?;
        let lease = match req.lease.clone() {
            Some(l) => l,
            None => Lease {
                access_token: paddock_contract::random_hex(24).map_err(InfraError::internal)?,
                ..Default::default()
            },
        };
        let now_sys = SystemTime::now();
        let end = lease.timeout.map_or_else(convert::never, |t| now_sys + t);
        let (shutdown_time, pause_time) = convert::deadline_fields(end, lease.on_timeout);
        // The manager has taken the original's extensions out of the metadata already
        // (`label:` keys are in `req.labels`, create-on-no-stock in `req.create_on_no_stock`).
        let no_stock = i.config.create_on_no_stock && req.create_on_no_stock;
        let labels = req.labels.clone();
        let metadata = req.metadata.clone();
        let annotations: BTreeMap<String, String> = metadata
            .iter()
            .filter(|(k, _)| convert::valid_key(k) && !crd_keys::is_reserved_key(k))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        let limits = req
            .limits
            .clone()
            .unwrap_or_else(|| convert::set_limits(&set));
        let meta = RecordMeta {
            team: lease.team.clone(),
            template: req.template.clone(),
            started_at_ms: convert::millis(now_sys),
            on_timeout: lease.on_timeout,
            auto_resume: lease.auto_resume,
            allow_internet_access: req.allow_internet_access,
            cpu_count: limits.cpu_millis.div_ceil(1000),
            memory_mb: limits.memory_bytes >> 20,
            disk_mb: limits.disk_bytes.map_or(0, |d| d >> 20),
        };
        let mut extra = BTreeMap::from([
            (
                ANNOTATION_RECORD.to_string(),
                serde_json::to_string(&meta).map_err(InfraError::internal)?,
            ),
            (
                ANNOTATION_METADATA.to_string(),
                serde_json::to_string(&metadata).map_err(InfraError::internal)?,
            ),
        ]);
        if let Some(t) = &lease.traffic_token {
            extra.insert(crd_keys::ANNOTATION_TRAFFIC_ACCESS_TOKEN.into(), t.clone());
        }
        let stamp = Stamp {
            claim: ClaimRequest {
                owner: if lease.team.is_empty() {
                    "e2b".into()
                } else {
                    lease.team.clone()
                },
                lock: uuid::Uuid::new_v4().to_string(),
                claim_name: None,
                labels,
                annotations,
                init: Some(InitRuntime {
                    env_vars: lease.env_vars.clone(),
                    access_token: lease.access_token.clone(),
                }),
                shutdown_time,
                pause_time,
            },
            set_uid: set.metadata.uid.clone().unwrap_or_default(),
            now: Timestamp::now(),
            extra,
        };
        let apply = |s: &mut Sandbox| stamp.apply(s);
        // A new Sandbox first has to start: its deadline must not run out before it serves
        // (a 2 s timeout would have the controller delete it mid-start). It gets the start
        // allowance on top; the manager's record write after the create sets the real
        // deadline, and a replica dying meanwhile still leaves a Sandbox that times out.
        let fresh = {
            let mut claim = stamp.claim.clone();
            let later = |t: Option<Time>| {
                t.map(|t| convert::to_time(convert::from_time(&t) + i.config.ready_timeout))
            };
            claim.shutdown_time = later(claim.shutdown_time);
            claim.pause_time = later(claim.pause_time);
            Stamp {
                claim,
                set_uid: stamp.set_uid.clone(),
                now: stamp.now,
                extra: stamp.extra.clone(),
            }
        };
        let apply_fresh = |s: &mut Sandbox| fresh.apply(s);
        let (s, from_pool) = match i.claim_from_pool(&set, &apply).await? {
            Some(s) => (s, true),
            None if no_stock => (i.create_fresh(&set, &apply_fresh).await?, false),
            None => {
                return Err(InfraError::NoStock {
                    template: req.template.clone(),
                });
            }
        };
        let key = (s.namespace().unwrap_or_default(), s.name_any());
        let id = SandboxId::for_resource(&key.0, &key.1).map_err(InfraError::internal)?;
        let s = if from_pool {
            s
        } else {
            match i.wait_serving(&key, None).await {
                Ok(s) => s,
                Err(reason) => {
                    i.discard(&key).await;
                    return Err(InfraError::SandboxFailed { id, reason });
                }
            }
        };
        if let Err(reason) = i.init(&s, true).await {
            i.discard(&key).await;
            return Err(InfraError::SandboxFailed {
                id,
                reason: format!("/init failed: {reason}"),
            });
        }
        i.push(&s, RouteState::Running).await;
        let mut info = convert::info(&s)
            .ok_or_else(|| InfraError::internal("a claimed sandbox without an id"))?;
        info.from_pool = from_pool;
        Ok(info)
    }

    /// Where gateway route pushes go now.
    pub fn gateway_targets(&self) -> Vec<String> {
        self.inner.peers.targets()
    }
}

/// Fails with a clear message when the CRDs are missing or RBAC forbids a verb we need.
async fn preflight(client: &Client, config: &KubeConfig) -> Result<(), StartError> {
    let scopes: Vec<Option<String>> = if config.namespaces.is_empty() {
        vec![None]
    } else {
        config.namespaces.iter().cloned().map(Some).collect()
    };
    let probe: Api<SandboxSet> = match &scopes[0] {
        Some(ns) => Api::namespaced(client.clone(), ns),
        None => Api::all(client.clone()),
    };
    match call(probe.list(&ListParams::default().limit(1))).await {
        Ok(_) => {}
        Err(CallError::Status(404, _)) => return Err(StartError::CrdsMissing),
        Err(CallError::Status(403, _)) => {
            return Err(StartError::Forbidden {
                verb: "list".into(),
                resource: "sandboxsets.agents.kruise.io".into(),
                namespace: scopes[0].clone(),
            });
        }
        Err(CallError::Status(_, e)) => return Err(StartError::Kube(e)),
        Err(CallError::Down(m)) => return Err(StartError::Unreachable(m)),
    }
    let mut needs: Vec<(&str, &str, &str, Option<String>)> = Vec::new();
    for ns in &scopes {
        for verb in ["get", "list", "watch"] {
            needs.push((verb, "agents.kruise.io", "sandboxsets", ns.clone()));
        }
        for verb in [
            "get", "list", "watch", "create", "update", "patch", "delete",
        ] {
            needs.push((verb, "agents.kruise.io", "sandboxes", ns.clone()));
        }
        for verb in ["get", "create"] {
            needs.push((verb, "agents.kruise.io", "sandboxtemplates", ns.clone()));
        }
        needs.push(("get", "", "pods", ns.clone()));
        needs.push(("get", "", "pods/log", ns.clone()));
    }
    if config.gateway_selector.is_some() {
        for verb in ["list", "watch"] {
            needs.push((verb, "", "pods", Some(config.system_namespace.clone())));
        }
    }
    let reviews: Api<SelfSubjectAccessReview> = Api::all(client.clone());
    let checks = needs.iter().map(|(verb, group, resource, ns)| {
        let reviews = reviews.clone();
        async move {
            let (resource, subresource) = match resource.split_once('/') {
                Some((r, s)) => (r, Some(s.to_string())),
                None => (*resource, None),
            };
            let review = SelfSubjectAccessReview {
                spec: SelfSubjectAccessReviewSpec {
                    resource_attributes: Some(ResourceAttributes {
                        verb: Some(verb.to_string()),
                        group: Some(group.to_string()),
                        resource: Some(resource.to_string()),
                        subresource,
                        namespace: ns.clone(),
                        ..Default::default()
                    }),
                    ..Default::default()
                },
                ..Default::default()
            };
            let allowed = match call(reviews.create(&PostParams::default(), &review)).await {
                Ok(r) => r.status.is_some_and(|s| s.allowed),
                // Without the review API we cannot tell; the calls themselves will say.
                Err(_) => true,
            };
            (allowed, verb, group, resource, ns)
        }
    });
    for (allowed, verb, group, resource, ns) in futures::future::join_all(checks).await {
        if !allowed {
            let full = if group.is_empty() {
                resource.to_string()
            } else {
                format!("{resource}.{group}")
            };
            return Err(StartError::Forbidden {
                verb: verb.to_string(),
                resource: full,
                namespace: ns.clone(),
            });
        }
    }
    Ok(())
}

fn key_of(id: &SandboxId) -> InfraResult<Key> {
    id.resource()
        .map(|(ns, name)| (ns.to_string(), name.to_string()))
        .ok_or_else(|| InfraError::NotFound(id.clone()))
}

impl Inner {
    fn in_scope(&self, ns: &str) -> bool {
        self.config.namespaces.is_empty() || self.config.namespaces.iter().any(|n| n == ns)
    }

    fn sandboxes(&self, ns: &str) -> Api<Sandbox> {
        Api::namespaced(self.client.clone(), ns)
    }

    /// A claimed, live Sandbox in scope, or `NotFound`.
    fn claimed(&self, id: &SandboxId) -> InfraResult<(Key, Arc<Sandbox>)> {
        let key = key_of(id)?;
        if !self.in_scope(&key.0) {
            return Err(InfraError::NotFound(id.clone()));
        }
        match self.cache.get(&key) {
            Some(s) if convert::is_claimed(&s) && s.metadata.deletion_timestamp.is_none() => {
                Ok((key, s))
            }
            _ => Err(InfraError::NotFound(id.clone())),
        }
    }

    fn route(&self, s: &Sandbox, state: RouteState) -> Option<RouteUpdate> {
        let id = convert::id_of(s)?;
        Some(RouteUpdate {
            sandbox_id: id.to_string(),
            ip: (state == RouteState::Running)
                .then(|| convert::pod_ip(s))
                .flatten(),
            state,
            access_token: s
                .annotations()
                .get(crd_keys::ANNOTATION_RUNTIME_ACCESS_TOKEN)
                .cloned(),
            traffic_token: s
                .annotations()
                .get(crd_keys::ANNOTATION_TRAFFIC_ACCESS_TOKEN)
                .cloned(),
            resource_version: s.resource_version(),
        })
    }

    async fn push(&self, s: &Sandbox, state: RouteState) {
        if let Some(u) = self.route(s, state) {
            self.peers.push(&u).await;
        }
    }

    /// Claims an available member of `set`; `None` when none could be had.
    async fn claim_from_pool(
        &self,
        set: &SandboxSet,
        stamp: &(dyn Fn(&mut Sandbox) + Send + Sync),
    ) -> InfraResult<Option<Sandbox>> {
        let ns = set.namespace().unwrap_or_default();
        let set_name = set.name_any();
        let set_uid = set.metadata.uid.clone().unwrap_or_default();
        let now = Timestamp::now();
        let pool = self.cache.sandboxes(|s| {
            s.metadata.namespace.as_deref() == Some(ns.as_str())
                && s.labels().get(crd_keys::LABEL_SANDBOX_POOL) == Some(&set_name)
                && s.labels()
                    .get(crd_keys::LABEL_SANDBOX_CLAIMED)
                    .map(String::as_str)
                    == Some("false")
        });
        let candidates: Vec<Candidate> = pool
            .iter()
            .map(|s| Candidate::from_sandbox(s, &set_uid, now))
            .collect();
        let update_revision = set.status.as_ref().and_then(|s| s.update_revision.clone());
        // A random seed: concurrent creates (on this and other replicas) start at different
        // candidates, so they rarely collide.
        // (A seed, not a secret: a fixed one when the random source fails is harmless.)
        let seed = uuid::Uuid::new_v4().simple().to_string();
        let order = plan::pick(&candidates, update_revision.as_deref(), &seed);
        let api = self.sandboxes(&ns);
        for i in order {
            let key = (ns.clone(), pool[i].name_any());
            if !self
                .picks
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .insert(key.clone())
            {
                continue;
            }
            let _picked = Picked(&self.picks, key.clone());
            let mut s = Sandbox::clone(&pool[i]);
            // Drops the SandboxSet owner reference too, so the pool refills.
            stamp(&mut s);
            match call(api.replace(&key.1, &PostParams::default(), &s)).await {
                Ok(claimed) => {
                    tracing::info!(sandbox = %key.1, namespace = %ns, "claimed from the pool");
                    self.cache.wrote(claimed.clone());
                    return Ok(Some(claimed));
                }
                Err(CallError::Status(409 | 404, _)) => {
                    tracing::debug!(sandbox = %key.1, "lost the race for a pool sandbox");
                }
                Err(e) => return Err(e.into()),
            }
        }
        Ok(None)
    }

    /// A new Sandbox of `set`, claimed from birth.
    async fn create_fresh(
        &self,
        set: &SandboxSet,
        stamp: &(dyn Fn(&mut Sandbox) + Send + Sync),
    ) -> InfraResult<Sandbox> {
        let ns = set.namespace().unwrap_or_default();
        self.bucket.acquire().await;
        let source = paddock_controller::resolve(set, &self.client)
            .await
            .map_err(|e| InfraError::SandboxFailed {
                id: SandboxId::for_resource(&ns, &set.name_any())
                    .unwrap_or_else(|_| SandboxId::new("unknown").expect("a valid id")),
                reason: format!("the SandboxSet's template cannot be used: {e}"),
            })?;
        let mut s = plan::fresh_sandbox(&set.name_any(), &ns, source.spec, &source.revision);
        stamp(&mut s);
        let created = call(self.sandboxes(&ns).create(&PostParams::default(), &s)).await?;
        tracing::info!(sandbox = %created.name_any(), namespace = %ns, "created a sandbox (no stock)");
        self.cache.wrote(created.clone());
        Ok(created)
    }

    /// Waits until the Sandbox serves (Ready with a pod IP) after generation `generation`.
    async fn wait_serving(&self, key: &Key, generation: Option<i64>) -> Result<Sandbox, String> {
        let mut last = None;
        let done = self
            .cache
            .wait_for(key, self.config.ready_timeout, |s| match s {
                None => Some(false),
                Some(s) if s.metadata.deletion_timestamp.is_some() => Some(false),
                Some(s) => {
                    let observed = s.status.as_ref().and_then(|st| st.observed_generation);
                    let seen = generation.is_none_or(|g| observed.is_some_and(|o| o >= g));
                    if seen && convert::serves(s) {
                        Some(true)
                    } else {
                        None
                    }
                }
            })
            .await;
        if let Some(s) = self.cache.get(key) {
            last = Some(Sandbox::clone(&s));
        }
        match (done, last) {
            (Some(true), Some(s)) => Ok(s),
            (Some(_), _) => Err("the Sandbox was deleted while starting".into()),
            (None, s) => Err(format!(
                "not Ready within {}s ({})",
                self.config.ready_timeout.as_secs(),
                s.and_then(|s| s.status.and_then(|st| st.message))
                    .unwrap_or_else(|| "no status message".into())
            )),
        }
    }

    /// Sends the stored `/init` to the sandbox's runtime (the controller does the same; the
    /// token goes along, so whichever comes second is accepted as a replay).
    async fn init(&self, s: &Sandbox, default_user: bool) -> Result<(), String> {
        let body = s
            .annotations()
            .get(crd_keys::ANNOTATION_INIT_RUNTIME_REQUEST)
            .cloned()
            .unwrap_or_default();
        let mut req: paddock_contract::InitRequest = if body.is_empty() {
            Default::default()
        } else {
            serde_json::from_str(&body).map_err(|e| format!("bad init request: {e}"))?
        };
        if default_user {
            req.default_user = Some("user".into());
        }
        req.timestamp = Some(Timestamp::now().to_string());
        let addr = convert::address(s);
        match self
            .runtime
            .init(addr, &req, req.access_token.as_deref())
            .await
        {
            Ok(()) => Ok(()),
            Err(e) => Err(e.to_string()),
        }
    }

    /// Deletes a Sandbox this replica could not finish, so nothing stays locked.
    async fn discard(&self, key: &Key) {
        self.killed
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(key.clone(), Instant::now());
        match call(
            self.sandboxes(&key.0)
                .delete(&key.1, &DeleteParams::default()),
        )
        .await
        {
            Ok(_) | Err(CallError::Status(404, _)) => self.cache.deleted(key.clone()),
            Err(e) => {
                tracing::error!(sandbox = %key.1, namespace = %key.0, error = ?e, "deleting a failed sandbox")
            }
        }
    }
}

/// What one create writes onto its Sandbox besides the claim itself.
struct Stamp {
    claim: ClaimRequest,
    set_uid: String,
    now: Timestamp,
    extra: BTreeMap<String, String>,
}

impl Stamp {
    fn apply(&self, s: &mut Sandbox) {
        plan::claim_metadata(&self.claim, s, &self.set_uid, self.now);
        s.annotations_mut().extend(self.extra.clone());
    }
}

impl Infra for KubeInfra {
    async fn create(&self, req: CreateSandbox) -> InfraResult<SandboxInfo> {
        let span = tracing::info_span!("create", template = %req.template);
        self.create_in_span(req).instrument(span).await
    }

    async fn get(&self, id: &SandboxId) -> InfraResult<SandboxInfo> {
        let (_, s) = self.inner.claimed(id)?;
        convert::info(&s).ok_or_else(|| InfraError::NotFound(id.clone()))
    }

    async fn list(&self) -> InfraResult<Vec<SandboxInfo>> {
        let i = &self.inner;
        Ok(i.cache
            .sandboxes(|s| {
                convert::is_claimed(s)
                    && s.metadata.deletion_timestamp.is_none()
                    && s.metadata
                        .namespace
                        .as_deref()
                        .is_some_and(|ns| i.in_scope(ns))
            })
            .iter()
            .filter_map(|s| convert::info(s))
            .collect())
    }

    async fn pause(&self, id: &SandboxId) -> InfraResult<SandboxInfo> {
        let i = &self.inner;
        let (key, s) = i.claimed(id)?;
        if s.spec.paused.unwrap_or(false) {
            return Err(InfraError::IllegalTransition {
                id: id.clone(),
                source: IllegalTransition {
                    from: SandboxState::Paused,
                    event: LifecycleEvent::Pause,
                },
            });
        }
        let patch = serde_json::json!({"spec": {"paused": true}});
        let s = match call(i.sandboxes(&key.0).patch(
            &key.1,
            &PatchParams::default(),
            &Patch::Merge(&patch),
        ))
        .await
        {
            Ok(s) => s,
            Err(CallError::Status(404, _)) => return Err(InfraError::NotFound(id.clone())),
            Err(e) => return Err(e.into()),
        };
        i.cache.wrote(s.clone());
        i.push(&s, RouteState::Paused).await;
        convert::info(&s).ok_or_else(|| InfraError::NotFound(id.clone()))
    }

    async fn resume(&self, id: &SandboxId) -> InfraResult<SandboxInfo> {
        let i = &self.inner;
        let (key, s) = i.claimed(id)?;
        if !s.spec.paused.unwrap_or(false) {
            return Err(InfraError::IllegalTransition {
                id: id.clone(),
                source: IllegalTransition {
                    from: convert::state(&s),
                    event: LifecycleEvent::Resume,
                },
            });
        }
        // A pauseTime that already passed would pause the sandbox again at once; the
        // manager writes the new deadline through the record store.
        let past_pause = s
            .spec
            .pause_time
            .as_ref()
            .is_some_and(|t| t.0 <= Timestamp::now());
        let patch = if past_pause {
            serde_json::json!({"spec": {"paused": false, "pauseTime": null}})
        } else {
            serde_json::json!({"spec": {"paused": false}})
        };
        let s = match call(i.sandboxes(&key.0).patch(
            &key.1,
            &PatchParams::default(),
            &Patch::Merge(&patch),
        ))
        .await
        {
            Ok(s) => s,
            Err(CallError::Status(404, _)) => return Err(InfraError::NotFound(id.clone())),
            Err(e) => return Err(e.into()),
        };
        i.cache.wrote(s.clone());
        // The controller recreates the Pod; a status from before the resume does not count.
        let s = i
            .wait_serving(&key, s.metadata.generation)
            .await
            .map_err(|reason| InfraError::SandboxFailed {
                id: id.clone(),
                reason: format!("resume: {reason}"),
            })?;
        // The controller replays /init from the annotation; sending it too (a replay with the
        // same token is accepted) makes the resumed sandbox usable the moment we answer.
        if let Err(reason) = i.init(&s, true).await {
            return Err(InfraError::SandboxFailed {
                id: id.clone(),
                reason: format!("/init after resume failed: {reason}"),
            });
        }
        i.push(&s, RouteState::Running).await;
        convert::info(&s).ok_or_else(|| InfraError::NotFound(id.clone()))
    }

    async fn kill(&self, id: &SandboxId) -> InfraResult<()> {
        let i = &self.inner;
        let (key, s) = i.claimed(id)?;
        i.killed
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(key.clone(), Instant::now());
        match call(i.sandboxes(&key.0).delete(&key.1, &DeleteParams::default())).await {
            Ok(_) => {}
            Err(CallError::Status(404, _)) => {
                i.cache.deleted(key);
                return Err(InfraError::NotFound(id.clone()));
            }
            Err(e) => return Err(e.into()),
        }
        i.cache.deleted(key);
        i.push(&s, RouteState::Dead).await;
        Ok(())
    }

    async fn metrics(&self, id: &SandboxId) -> InfraResult<SandboxMetrics> {
        let i = &self.inner;
        let (_, s) = i.claimed(id)?;
        if !convert::serves(&s) {
            return Ok(SandboxMetrics::default());
        }
        let mut req = hyper::Request::get(format!("http://{}/metrics", convert::address(&s)));
        if let Some(t) = s
            .annotations()
            .get(crd_keys::ANNOTATION_RUNTIME_ACCESS_TOKEN)
        {
            req = req.header(paddock_contract::ACCESS_TOKEN_HEADER, t);
        }
        let req = req.body(Empty::new()).map_err(InfraError::internal)?;
        let resp = tokio::time::timeout(Duration::from_secs(5), i.http.request(req))
            .await
            .map_err(|_| InfraError::internal("the runtime's /metrics did not answer"))?
            .map_err(InfraError::internal)?;
        if !resp.status().is_success() {
            return Err(InfraError::internal(format!(
                "the runtime's /metrics answered {}",
                resp.status()
            )));
        }
        let body = resp
            .into_body()
            .collect()
            .await
            .map_err(InfraError::internal)?
            .to_bytes();
        let m: RuntimeMetrics = serde_json::from_slice(&body).map_err(InfraError::internal)?;
        Ok(SandboxMetrics {
            cpu_percent: m.cpu_used_pct,
            memory_bytes: m.mem_used,
            memory_limit_bytes: m.mem_total,
            disk_bytes: m.disk_used,
            ..Default::default()
        })
    }

    async fn logs(&self, id: &SandboxId) -> InfraResult<Vec<LogLine>> {
        let i = &self.inner;
        let (key, s) = i.claimed(id)?;
        if s.spec.paused.unwrap_or(false) {
            // No Pod while paused.
            return Ok(Vec::new());
        }
        let pods: Api<Pod> = Api::namespaced(i.client.clone(), &key.0);
        let pod = match call(pods.get_opt(&key.1)).await? {
            Some(p) => p,
            None => return Ok(Vec::new()),
        };
        let container = pod
            .spec
            .as_ref()
            .and_then(|s| s.containers.first())
            .map(|c| c.name.clone());
        let lp = LogParams {
            container,
            timestamps: true,
            tail_lines: Some(10_000),
            ..Default::default()
        };
        let text = match call(pods.logs(&key.1, &lp)).await {
            Ok(t) => t,
            Err(CallError::Status(400 | 404, _)) => return Ok(Vec::new()),
            Err(e) => return Err(e.into()),
        };
        Ok(text.lines().filter_map(log_line).collect())
    }

    async fn templates(&self) -> InfraResult<Vec<TemplateInfo>> {
        let i = &self.inner;
        let mut seen = HashSet::new();
        let mut sets = i.cache.sets();
        // In the order of the namespaces given, so a name in two namespaces lists the one
        // a create would use.
        sets.sort_by_key(|s| {
            let ns = s.namespace().unwrap_or_default();
            i.config
                .namespaces
                .iter()
                .position(|n| *n == ns)
                .unwrap_or(usize::MAX)
        });
        Ok(sets
            .into_iter()
            .filter(|s| seen.insert(s.name_any()))
            .map(|s| TemplateInfo {
                name: s.name_any(),
                built: true,
                limits: convert::set_limits(&s),
                pool_size: s.spec.replicas.max(0) as usize,
                pool_ready: s
                    .status
                    .as_ref()
                    .map_or(0, |st| st.available_replicas.max(0) as usize),
            })
            .collect())
    }

    fn ended(&self) -> broadcast::Receiver<SandboxEnded> {
        self.inner.ended.subscribe()
    }

    fn records(&self) -> Option<Arc<dyn RecordStore>> {
        Some(Arc::new(KubeRecords::new(self.clone())))
    }
}

/// What the runtime's `/metrics` answers (the fields used).
#[derive(serde::Deserialize)]
struct RuntimeMetrics {
    #[serde(default)]
    cpu_used_pct: f64,
    #[serde(default)]
    mem_total: u64,
    #[serde(default)]
    mem_used: u64,
    #[serde(default)]
    disk_used: u64,
}

/// One line of `kubectl logs --timestamps` output.
fn log_line(line: &str) -> Option<LogLine> {
    let (ts, msg) = line.split_once(' ').unwrap_or(("", line));
    let timestamp_ms = ts
        .parse::<Timestamp>()
        .map(|t| t.as_millisecond().max(0) as u64)
        .unwrap_or_default();
    let lower = msg.to_ascii_lowercase();
    let level = if lower.contains("error") {
        "error"
    } else if lower.contains("warn") {
        "warn"
    } else {
        "info"
    };
    Some(LogLine {
        timestamp_ms,
        level: level.into(),
        message: msg.to_string(),
    })
}
