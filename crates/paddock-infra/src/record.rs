//! What the manager keeps about each handed-out sandbox (its *record*), and the seam through
//! which a backend may keep those records itself.
//!
//! In `paddock up` the manager keeps records in a file in its data dir. On Kubernetes the
//! manager is stateless and runs as several replicas: the records live in the Sandbox
//! resources (annotations and spec fields), written in the same `Update` that claims the
//! sandbox, so there is one source of truth and a replica that dies mid-create leaves either a
//! complete record or nothing. [`crate::Infra::records`] says which one applies.

use std::collections::BTreeMap;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::time::{Duration, SystemTime};

use crate::{InfraResult, SandboxId};

/// The `end_at` of a sandbox that never times out (the original's never-timeout extension):
/// the last second RFC 3339 can write, 9999-12-31T23:59:59Z, so nothing that compares
/// deadlines (reapers, refreshes, the controller's timers) ever reaches it. Backends that
/// keep records store no deadline for it and read this back.
pub fn never() -> SystemTime {
    SystemTime::UNIX_EPOCH + Duration::from_secs(253_402_300_799)
}

/// Whether an `end_at` means "never times out".
pub fn never_ends(end_at: SystemTime) -> bool {
    end_at >= never()
}

/// A boxed future, for the object-safe [`RecordStore`].
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// What happens when a sandbox's timeout passes.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum OnTimeout {
    #[default]
    Kill,
    Pause,
}

/// The two states the E2B API exposes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum ApiState {
    Running,
    Paused,
}

impl ApiState {
    pub fn as_str(self) -> &'static str {
        match self {
            ApiState::Running => "running",
            ApiState::Paused => "paused",
        }
    }
}

/// What the creator of a sandbox decides about it before it exists: who owns it, its tokens,
/// its environment and its timeout. Backends that keep records ([`crate::Infra::records`])
/// write the lease together with the claim.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Lease {
    /// The owning team.
    pub team: String,
    /// `envdAccessToken`: the runtime's token, sent to it with `/init`.
    pub access_token: String,
    /// `trafficAccessToken`, when the sandbox's other ports are private.
    pub traffic_token: Option<String>,
    /// Environment variables handed to the runtime with `/init`.
    pub env_vars: BTreeMap<String, String>,
    /// Time until the sandbox times out; `None` never times out.
    pub timeout: Option<Duration>,
    /// What the timeout does.
    pub on_timeout: OnTimeout,
    /// Whether traffic to a paused sandbox resumes it.
    pub auto_resume: bool,
    /// How a timeout pauses the sandbox (when [`Lease::on_timeout`] is `Pause`).
    pub timeout_pause: crate::PauseMode,
}

/// The manager's record of one handed-out sandbox.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct SandboxRecord {
    pub id: SandboxId,
    pub team: String,
    pub template: String,
    pub metadata: BTreeMap<String, String>,
    pub started_at: SystemTime,
    pub end_at: SystemTime,
    pub state: ApiState,
    pub access_token: String,
    /// Set when the sandbox's other ports are private (`allowPublicTraffic: false`).
    #[serde(default)]
    pub traffic_token: Option<String>,
    /// The runtime's address; other ports live on the same ip.
    pub address: SocketAddr,
    pub cpu_count: u32,
    pub memory_mb: u64,
    pub disk_mb: u64,
    pub on_timeout: OnTimeout,
    pub auto_resume: bool,
    pub allow_internet_access: bool,
}

impl SandboxRecord {
    /// Pushes the end of the sandbox's life to `now + timeout`, never earlier than it was.
    pub fn extend_to(&mut self, timeout: Duration) {
        let wanted = SystemTime::now() + timeout;
        if wanted > self.end_at {
            self.end_at = wanted;
        }
    }
}

/// A change to one record, applied by [`RecordStore::update`].
pub type RecordChange<'a> = Box<dyn FnOnce(&mut SandboxRecord) + Send + 'a>;

/// Where records are kept.
///
/// Reads are synchronous and cheap (a map or an informer cache): the data plane's route
/// lookups go through them. Writes are asynchronous: a backend may have to write a resource.
///
/// # Guarantees expected from implementations
/// * A write that returns `Ok` is visible to the next `get`/`all` of the same process.
/// * `update` applies `change` to the current record and persists what changed; it returns
///   `Ok(false)` for an unknown id and changes nothing.
pub trait RecordStore: Send + Sync + 'static {
    /// The record of `id`, if there is one.
    fn get(&self, id: &SandboxId) -> Option<SandboxRecord>;
    /// The record of `id` as the backend holds it now, for requests about one sandbox: they
    /// must see what another manager replica wrote a moment ago (a timeout set through one
    /// replica, read through the next). A store with one writer answers from memory.
    fn get_fresh<'a>(
        &'a self,
        id: &'a SandboxId,
    ) -> BoxFuture<'a, InfraResult<Option<SandboxRecord>>> {
        Box::pin(async move { Ok(self.get(id)) })
    }
    /// Calls `f` with the record of `id` (any string: an invalid id has no record), borrowed
    /// where the store can, and returns whether there was one. The data plane reads routes
    /// this way on every request: a store that keeps records in memory lends them instead of
    /// copying each (metadata, tokens and all) as [`RecordStore::get`] does.
    fn read(&self, id: &str, f: &mut dyn FnMut(&SandboxRecord)) -> bool {
        let Some(r) = SandboxId::new(id).ok().and_then(|id| self.get(&id)) else {
            return false;
        };
        f(&r);
        true
    }
    /// Every record.
    fn all(&self) -> Vec<SandboxRecord>;
    /// Adds (or replaces) a record.
    fn insert(&self, record: SandboxRecord) -> BoxFuture<'_, InfraResult<()>>;
    /// Changes a record in place.
    fn update<'a>(
        &'a self,
        id: &'a SandboxId,
        change: RecordChange<'a>,
    ) -> BoxFuture<'a, InfraResult<bool>>;
    /// Forgets a record; returns it if it existed.
    fn remove<'a>(&'a self, id: &'a SandboxId)
    -> BoxFuture<'a, InfraResult<Option<SandboxRecord>>>;
    /// Whether the backend enforces timeouts itself (the Kubernetes controller acts on
    /// `spec.shutdownTime` / `spec.pauseTime`); the manager then runs no reaper of its own.
    fn enforces_timeouts(&self) -> bool {
        false
    }
}
