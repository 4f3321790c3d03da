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
mod call;
pub mod convert;
mod create;
pub mod keys;
mod lifecycle;
mod observe;
mod peers;
mod pool;
mod preflight;
mod records;
mod serving;

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::Empty;
use hyper_util::client::legacy::Client as HttpClient;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use k8s_openapi::api::core::v1::Pod;
use kube::Client;
use kube::ResourceExt;
use kube::api::Api;
use kube::runtime::reflector;
use kube::runtime::{WatchStreamExt, watcher};
use paddock_crds::Sandbox;
use paddock_crds::keys as crd_keys;
use paddock_gateway::peer::{RouteState, RouteUpdate};
use paddock_infra::{
    CreateSandbox, Infra, InfraError, InfraResult, LogLine, RecordStore, SandboxEnded, SandboxId,
    SandboxInfo, SandboxMetrics, TemplateInfo,
};
use tokio::sync::broadcast;
use tracing::Instrument;

use cache::{Cache, Key};
pub use preflight::StartError;
pub use records::KubeRecords;

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

impl KubeInfra {
    /// Checks the CRDs and permissions, starts the informers and waits for their first list.
    pub async fn start(client: Client, config: KubeConfig) -> Result<Self, StartError> {
        preflight::preflight(&client, &config).await?;
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

    /// Where gateway route pushes go now.
    pub fn gateway_targets(&self) -> Vec<String> {
        self.inner.peers.targets()
    }
}

fn key_of(id: &SandboxId) -> InfraResult<Key> {
    id.resource()
        .map(|(ns, name)| (ns.to_string(), name.to_string()))
        .ok_or_else(|| InfraError::NotFound(id.clone()))
}

impl Inner {
    pub(crate) fn in_scope(&self, ns: &str) -> bool {
        self.config.namespaces.is_empty() || self.config.namespaces.iter().any(|n| n == ns)
    }

    pub(crate) fn sandboxes(&self, ns: &str) -> Api<Sandbox> {
        Api::namespaced(self.client.clone(), ns)
    }

    /// A claimed, live Sandbox in scope, or `NotFound`.
    pub(crate) fn claimed(&self, id: &SandboxId) -> InfraResult<(Key, Arc<Sandbox>)> {
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

    /// The Sandbox `key` as the API server has it now (another replica may have written it
    /// since this one's cache saw it); a copy found is laid over the cache, which keeps
    /// whichever copy has the higher resourceVersion.
    pub(crate) async fn read_now(&self, key: &Key) -> InfraResult<Option<Sandbox>> {
        let s = call::call(self.sandboxes(&key.0).get_opt(&key.1)).await?;
        if let Some(s) = &s {
            self.cache.wrote(s.clone());
        }
        Ok(s)
    }

    /// Merge-patches the Sandbox behind `id` (a vanished one is `NotFound`) and lays the
    /// answer over the cache.
    pub(crate) async fn patch(
        &self,
        key: &Key,
        id: &SandboxId,
        patch: &serde_json::Value,
    ) -> InfraResult<Sandbox> {
        let api = self.sandboxes(&key.0);
        let params = kube::api::PatchParams::default();
        match call::call(api.patch(&key.1, &params, &kube::api::Patch::Merge(patch))).await {
            Ok(s) => {
                self.cache.wrote(s.clone());
                Ok(s)
            }
            Err(call::CallError::Status(404, _)) => Err(InfraError::NotFound(id.clone())),
            Err(e) => Err(e.into()),
        }
    }

    pub(crate) async fn push(&self, s: &Sandbox, state: RouteState) {
        if let Some(u) = self.route(s, state) {
            self.peers.push(&u).await;
        }
    }
}

impl Infra for KubeInfra {
    async fn create(&self, req: CreateSandbox) -> InfraResult<SandboxInfo> {
        let span = tracing::info_span!("create", template = %req.template);
        self.inner.create(req).instrument(span).await
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
        self.inner.pause(id).await
    }

    async fn resume(&self, id: &SandboxId) -> InfraResult<SandboxInfo> {
        self.inner.resume(id).await
    }

    async fn kill(&self, id: &SandboxId) -> InfraResult<()> {
        self.inner.kill(id).await
    }

    async fn metrics(&self, id: &SandboxId) -> InfraResult<SandboxMetrics> {
        self.inner.metrics(id).await
    }

    async fn logs(&self, id: &SandboxId) -> InfraResult<Vec<LogLine>> {
        self.inner.logs(id).await
    }

    async fn templates(&self) -> InfraResult<Vec<TemplateInfo>> {
        self.inner.templates().await
    }

    fn ended(&self) -> broadcast::Receiver<SandboxEnded> {
        self.inner.ended.subscribe()
    }

    fn records(&self) -> Option<Arc<dyn RecordStore>> {
        Some(Arc::new(KubeRecords::new(self.clone())))
    }
}
