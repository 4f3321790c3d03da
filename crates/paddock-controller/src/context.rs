//! State shared by every reconciler and webhook handler, and the reconcile error type.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use k8s_openapi::api::authentication::v1::SelfSubjectReview;
use kube::api::{Api, PostParams};
use kube::runtime::controller::Action;
use kube::runtime::events::{Event, EventType, Recorder, Reporter};
use kube::runtime::reflector::{ObjectRef, Store};
use kube::{Client, Resource, ResourceExt};

use paddock_contract::client::RuntimeClient;
use paddock_crds::Sandbox;

use crate::Config;
use crate::backoff::Backoff;
use crate::expectations::Expectations;

/// Why one reconcile did not finish.
#[derive(Debug, thiserror::Error)]
pub enum ReconcileError {
    #[error("kubernetes API: {0}")]
    Kube(#[from] kube::Error),
    #[error("finalizer: {0}")]
    Finalizer(#[source] Box<kube::runtime::finalizer::Error<ReconcileError>>),
    /// Expected while a Pod terminates; retried soon, not backed off.
    #[error("waiting for Pod {0} to be deleted")]
    WaitingForPod(String),
    #[error("{0}")]
    Invalid(String),
    /// A SandboxSet's template cannot be resolved or stored.
    #[error(transparent)]
    Template(#[from] crate::sandboxset::SourceError),
    /// A Sandbox's Pod cannot be created.
    #[error(transparent)]
    CreatePod(#[from] crate::sandbox::CreatePodError),
    #[error("the shared Sandbox cache stopped")]
    CacheStopped,
}

impl From<kube::runtime::finalizer::Error<ReconcileError>> for ReconcileError {
    fn from(e: kube::runtime::finalizer::Error<ReconcileError>) -> Self {
        Self::Finalizer(Box::new(e))
    }
}

/// Counters exported on the metrics port.
#[derive(Default)]
pub struct Metrics {
    pub reconciles: [AtomicU64; 4],
    pub failures: [AtomicU64; 4],
}

/// Index into [`Metrics`] arrays.
#[derive(Clone, Copy)]
pub enum Kind {
    Sandbox = 0,
    SandboxSet = 1,
    SandboxClaim = 2,
    Checkpoint = 3,
}

impl Kind {
    pub const ALL: [(Kind, &'static str); 4] = [
        (Kind::Sandbox, "sandbox"),
        (Kind::SandboxSet, "sandboxset"),
        (Kind::SandboxClaim, "sandboxclaim"),
        (Kind::Checkpoint, "checkpoint"),
    ];
}

pub struct Context {
    pub client: Client,
    pub config: Config,
    /// The identity the controller acts as (allowed past the Pod-delete webhook).
    pub username: String,
    pub recorder: Recorder,
    pub backoff: Backoff,
    pub runtime: RuntimeClient,
    pub pool_gate: crate::sandboxset::PoolGate,
    pub metrics: Metrics,
    /// Every watched Sandbox, fed by [`crate::cache::SandboxFeed`]; see [`crate::cache`] for
    /// how stale it may be and why the readers cope.
    sandboxes: Store<Sandbox>,
    /// Creates and claims the cache may not show yet.
    pub expectations: Expectations,
    ready: AtomicBool,
    serving: AtomicBool,
}

impl Context {
    pub fn new(
        client: Client,
        config: Config,
        username: String,
        sandboxes: Store<Sandbox>,
    ) -> Self {
        let reporter = Reporter {
            controller: "paddock-controller".into(),
            instance: std::env::var("POD_NAME").ok(),
        };
        Context {
            recorder: Recorder::new(client.clone(), reporter),
            client,
            config,
            username,
            backoff: Backoff::default(),
            runtime: RuntimeClient::new(),
            pool_gate: Default::default(),
            metrics: Metrics::default(),
            sandboxes,
            expectations: Expectations::default(),
            ready: AtomicBool::new(false),
            serving: AtomicBool::new(false),
        }
    }

    /// The shared Sandbox cache, once its first list is in (before that, "absent" would be
    /// indistinguishable from "not listed yet").
    pub async fn sandboxes(&self) -> Result<&Store<Sandbox>, ReconcileError> {
        self.sandboxes
            .wait_until_ready()
            .await
            .map_err(|_| ReconcileError::CacheStopped)?;
        Ok(&self.sandboxes)
    }

    /// A handle on the shared Sandbox cache, for a controller that reconciles Sandboxes.
    pub fn sandbox_store(&self) -> Store<Sandbox> {
        self.sandboxes.clone()
    }

    /// The cached Sandboxes of namespace `ns` that `keep` accepts.
    pub async fn cached_sandboxes(
        &self,
        ns: &str,
        keep: impl Fn(&Sandbox) -> bool,
    ) -> Result<Vec<Arc<Sandbox>>, ReconcileError> {
        Ok(self
            .sandboxes()
            .await?
            .state_filter(|s| s.metadata.namespace.as_deref() == Some(ns) && keep(s)))
    }

    /// Looks a Sandbox up in the cache (which must be ready: see [`Self::sandboxes`]).
    pub fn cached_sandbox(&self, ns: &str, name: &str) -> Option<Arc<Sandbox>> {
        self.sandboxes.get(&ObjectRef::new(name).within(ns))
    }

    /// Whether the cache shows every write `owner` (whose sandboxes live in `ns`) recorded in
    /// [`Self::expectations`].
    pub fn writes_seen(&self, ns: &str, owner: &str) -> bool {
        self.expectations.settled(
            owner,
            |name| self.cached_sandbox(ns, name),
            std::time::Instant::now(),
        )
    }

    /// Records a write of sandbox `name` by `owner` that the cache must show before `owner`
    /// counts again.
    pub fn expect_write(&self, owner: &str, name: &str, expect: crate::expectations::Expect) {
        self.expectations
            .expect(owner, name, expect, std::time::Instant::now());
    }

    /// This replica leads: its controllers run.
    pub fn set_ready(&self) {
        self.ready.store(true, Ordering::Relaxed);
    }

    pub fn is_ready(&self) -> bool {
        self.ready.load(Ordering::Relaxed)
    }

    /// This replica serves what every replica serves (the webhooks), leader or not.
    pub fn set_serving(&self) {
        self.serving.store(true, Ordering::Relaxed);
    }

    pub fn is_serving(&self) -> bool {
        self.serving.load(Ordering::Relaxed)
    }

    /// The namespaced API the controllers watch: one namespace or all.
    pub fn watch_api<K>(&self) -> Api<K>
    where
        K: Resource<Scope = k8s_openapi::NamespaceResourceScope>,
        K::DynamicType: Default,
    {
        match &self.config.namespace {
            Some(ns) => Api::namespaced(self.client.clone(), ns),
            None => Api::all(self.client.clone()),
        }
    }

    pub fn api<K>(&self, namespace: &str) -> Api<K>
    where
        K: Resource<Scope = k8s_openapi::NamespaceResourceScope>,
        K::DynamicType: Default,
    {
        Api::namespaced(self.client.clone(), namespace)
    }

    /// Publishes an Event about `obj`; failures are logged, never fatal.
    pub async fn event<K>(&self, obj: &K, warning: bool, reason: &str, note: String)
    where
        K: Resource<DynamicType = ()>,
    {
        let ev = Event {
            type_: if warning {
                EventType::Warning
            } else {
                EventType::Normal
            },
            reason: reason.into(),
            note: Some(truncate(note, 1000)),
            action: reason.into(),
            secondary: None,
        };
        if let Err(e) = self.recorder.publish(&ev, &obj.object_ref(&())).await {
            tracing::debug!(object = %obj.name_any(), error = %e, "event not recorded");
        }
    }

    pub fn count(&self, kind: Kind, ok: bool) {
        let i = kind as usize;
        self.metrics.reconciles[i].fetch_add(1, Ordering::Relaxed);
        if !ok {
            self.metrics.failures[i].fetch_add(1, Ordering::Relaxed);
        }
    }

    /// The shared `error_policy`: back off per object, except for expected waits.
    pub fn on_error<K: Resource<DynamicType = ()>>(
        &self,
        kind: Kind,
        obj: &K,
        err: &ReconcileError,
    ) -> Action {
        self.count(kind, false);
        let key = backoff_key(kind, obj);
        match err {
            ReconcileError::WaitingForPod(_) => Action::requeue(Duration::from_secs(1)),
            // The object went away between the cleanup and the finalizer's removal: done.
            ReconcileError::Finalizer(e)
                if matches!(&**e, kube::runtime::finalizer::Error::RemoveFinalizer(
                    kube::Error::Api(ae)) if ae.code == 404) =>
            {
                Action::await_change()
            }
            ReconcileError::Finalizer(e)
                if matches!(
                    **e,
                    kube::runtime::finalizer::Error::CleanupFailed(ReconcileError::WaitingForPod(
                        _
                    ))
                ) =>
            {
                Action::requeue(Duration::from_secs(1))
            }
            _ => {
                let delay = self.backoff.next(&key);
                tracing::warn!(object = %obj.name_any(), error = %err, retry_in = ?delay, "reconcile failed");
                Action::requeue(delay)
            }
        }
    }

    pub fn on_success<K: Resource<DynamicType = ()>>(&self, kind: Kind, obj: &K) {
        self.count(kind, true);
        self.backoff.reset(&backoff_key(kind, obj));
    }
}

fn backoff_key<K: Resource<DynamicType = ()>>(kind: Kind, obj: &K) -> String {
    format!(
        "{}/{}/{}",
        kind as usize,
        obj.namespace().unwrap_or_default(),
        obj.name_any()
    )
}

fn truncate(mut s: String, max: usize) -> String {
    if s.len() > max {
        let mut cut = max;
        while !s.is_char_boundary(cut) {
            cut -= 1;
        }
        s.truncate(cut);
    }
    s
}

/// The user name the API server sees for our credentials.
pub async fn whoami(client: &Client) -> Result<String, kube::Error> {
    let api: Api<SelfSubjectReview> = Api::all(client.clone());
    let review = api
        .create(&PostParams::default(), &SelfSubjectReview::default())
        .await?;
    Ok(review
        .status
        .and_then(|s| s.user_info)
        .and_then(|u| u.username)
        .unwrap_or_default())
}

/// Runs `fut` as one reconcile of `obj`: counts it, resets backoff on success.
pub async fn track<K, F>(
    ctx: &Arc<Context>,
    kind: Kind,
    obj: &K,
    fut: F,
) -> Result<Action, ReconcileError>
where
    K: Resource<DynamicType = ()>,
    F: std::future::Future<Output = Result<Action, ReconcileError>>,
{
    let res = fut.await;
    if res.is_ok() {
        ctx.on_success(kind, obj);
    }
    res
}

/// The API server's own message for API errors (the full error debug-prints the Status).
pub fn api_message(e: &kube::Error) -> String {
    match e {
        kube::Error::Api(ae) => ae.message.clone(),
        other => other.to_string(),
    }
}
