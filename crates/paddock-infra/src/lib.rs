//! The `Infra` trait: what the manager needs from whatever runs sandboxes.
//!
//! This crate holds only types (requests, responses, errors, the lifecycle state machine) and
//! the trait itself; it does no IO. `paddock-embedded` implements it with Linux containers on
//! this host.

mod error;
mod id;
pub mod record;
mod snapshot;
mod state;
mod types;

use std::future::Future;

pub use error::{InfraError, InfraResult};
pub use id::{InvalidSandboxId, SandboxId};
pub use record::{ApiState, Lease, OnTimeout, RecordStore, SandboxRecord};
pub use snapshot::{CreateSnapshot, SnapshotInfo, SnapshotKind};
pub use state::{IllegalTransition, LifecycleEvent, SandboxState};
pub use types::{
    CreateSandbox, Limits, LimitsError, LogLine, PauseMode, SandboxEnded, SandboxInfo,
    SandboxMetrics, TemplateInfo,
};

/// Runs sandboxes. Implementations must be cheap to share (`Arc` inside) and safe to call from
/// many tasks at once.
///
/// # Guarantees expected from implementations
/// * `create` returns only when the sandbox's runtime answers `/health` at `info.address`.
/// * Every call that fails leaves nothing behind for the failed sandbox.
/// * An illegal lifecycle call (pause a paused sandbox, ...) fails with
///   [`InfraError::IllegalTransition`] and changes nothing.
pub trait Infra: Send + Sync + 'static {
    /// Creates (or claims from a warm pool) a sandbox from a template and waits until it is ready.
    fn create(&self, req: CreateSandbox) -> impl Future<Output = InfraResult<SandboxInfo>> + Send;
    /// Looks a sandbox up.
    fn get(&self, id: &SandboxId) -> impl Future<Output = InfraResult<SandboxInfo>> + Send;
    /// Lists every sandbox this infrastructure knows (pool members excluded).
    fn list(&self) -> impl Future<Output = InfraResult<Vec<SandboxInfo>>> + Send;
    /// Stops every process of the sandbox, keeping its memory.
    fn pause(&self, id: &SandboxId) -> impl Future<Output = InfraResult<SandboxInfo>> + Send;
    /// Continues a paused sandbox.
    fn resume(&self, id: &SandboxId) -> impl Future<Output = InfraResult<SandboxInfo>> + Send;
    /// Kills the sandbox and releases everything it held. Killing an unknown id is `NotFound`.
    fn kill(&self, id: &SandboxId) -> impl Future<Output = InfraResult<()>> + Send;
    /// Resource usage read from the kernel.
    fn metrics(&self, id: &SandboxId) -> impl Future<Output = InfraResult<SandboxMetrics>> + Send;
    /// Resource usage of several sandboxes, one result per id in the order given: what a
    /// sampler that reads every running sandbox on each tick asks for. The default asks
    /// [`Infra::metrics`] for all of them at once; a backend that can read them in one pass
    /// (one trip to a blocking thread instead of one per sandbox) overrides it.
    fn metrics_many(
        &self,
        ids: Vec<SandboxId>,
    ) -> impl Future<Output = Vec<(SandboxId, InfraResult<SandboxMetrics>)>> + Send {
        async move {
            let results =
                futures_util::future::join_all(ids.iter().map(|id| self.metrics(id))).await;
            ids.into_iter().zip(results).collect()
        }
    }
    /// The sandbox's log (its runtime's output: requests, processes started and ended), oldest
    /// first.
    fn logs(&self, id: &SandboxId) -> impl Future<Output = InfraResult<Vec<LogLine>>> + Send;
    /// Templates this infrastructure can create sandboxes from.
    fn templates(&self) -> impl Future<Output = InfraResult<Vec<TemplateInfo>>> + Send;
    /// Subscribes to sandboxes that end on their own (their init died), so the caller can drop
    /// what it keeps about them — above all the data-plane route to their address.
    ///
    /// # Guarantees expected from implementations
    /// * Each sandbox that ends on its own after the subscription is reported once, after it is
    ///   marked [`SandboxState::Dead`]; sandboxes ended by [`Infra::kill`] are not reported.
    /// * The dead sandbox's address is not handed to another sandbox before [`Infra::kill`] is
    ///   called for it. A subscriber that drops its route first and then calls `kill` therefore
    ///   never routes one tenant's traffic to another tenant's sandbox.
    ///
    /// # Caveats
    /// A receiver that falls behind gets `RecvError::Lagged`: it has missed events and should
    /// look its sandboxes up again ([`Infra::get`]) to find the dead ones.
    fn ended(&self) -> tokio::sync::broadcast::Receiver<SandboxEnded>;

    /// Pauses the sandbox in `mode`. [`Infra::resume`] brings it back whatever the mode (a
    /// filesystem-only pause is resumed by booting the sandbox again: same id, address and
    /// tokens, new processes). The default knows only [`PauseMode::Memory`] (= [`Infra::pause`]);
    /// other modes are [`InfraError::Unsupported`].
    fn pause_in(
        &self,
        id: &SandboxId,
        mode: PauseMode,
    ) -> impl Future<Output = InfraResult<SandboxInfo>> + Send {
        async move {
            match mode {
                PauseMode::Memory => self.pause(id).await,
                PauseMode::Filesystem => Err(InfraError::Unsupported("filesystem-only pause")),
                PauseMode::Checkpoint => Err(InfraError::Unsupported("checkpoint pause")),
            }
        }
    }

    /// Pauses the sandbox because its timeout passed, in the mode its creator chose for that
    /// ([`Lease::timeout_pause`]). The default pauses in [`PauseMode::Memory`].
    fn pause_on_timeout(
        &self,
        id: &SandboxId,
    ) -> impl Future<Output = InfraResult<SandboxInfo>> + Send {
        self.pause(id)
    }

    /// The backend's own record store, when it keeps the manager's records itself (Kubernetes:
    /// in the Sandbox resources). `None` (the default): the manager keeps them in its data dir.
    fn records(&self) -> Option<std::sync::Arc<dyn RecordStore>> {
        None
    }

    // Snapshots and fork. The defaults answer [`InfraError::Unsupported`] (listing: none), so
    // a backend without them needs no code and the API answers 501.

    /// Captures the sandbox's state as a snapshot that outlives it. A paused sandbox can be
    /// captured too.
    fn create_snapshot(
        &self,
        req: CreateSnapshot,
    ) -> impl Future<Output = InfraResult<SnapshotInfo>> + Send {
        let _ = req;
        std::future::ready(Err(InfraError::Unsupported("snapshots")))
    }
    /// Every snapshot of every team.
    fn snapshots(&self) -> impl Future<Output = InfraResult<Vec<SnapshotInfo>>> + Send {
        std::future::ready(Ok(Vec::new()))
    }
    /// Deletes a snapshot (by id) and its files.
    fn delete_snapshot(&self, id: &str) -> impl Future<Output = InfraResult<()>> + Send {
        let _ = id;
        std::future::ready(Err(InfraError::Unsupported("snapshots")))
    }
    /// Creates a sandbox from a snapshot (by id): `req.template` is ignored, the snapshot's
    /// is used. Each such sandbox is independent of the snapshot's other sandboxes.
    fn create_from_snapshot(
        &self,
        snapshot: &str,
        req: CreateSandbox,
    ) -> impl Future<Output = InfraResult<SandboxInfo>> + Send {
        let _ = (snapshot, req);
        std::future::ready(Err(InfraError::Unsupported("snapshots")))
    }
    /// Makes one sandbox per request from the sandbox's current state; the original keeps
    /// running. `Err` fails the whole call before any fork was made; each inner result is one
    /// fork's.
    fn fork(
        &self,
        id: &SandboxId,
        reqs: Vec<CreateSandbox>,
    ) -> impl Future<Output = InfraResult<Vec<InfraResult<SandboxInfo>>>> + Send {
        let _ = (id, reqs);
        std::future::ready(Err(InfraError::Unsupported("fork")))
    }
}
