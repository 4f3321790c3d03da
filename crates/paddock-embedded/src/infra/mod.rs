//! [`EmbeddedInfra`]: the `Infra` implementation that runs sandboxes as containers here.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use paddock_cgroups::{CgroupLimits, Hierarchy};
use paddock_infra::{
    CreateSandbox, CreateSnapshot, Infra, InfraError, InfraResult, Limits, PauseMode, SandboxEnded,
    SandboxId, SandboxInfo, SandboxMetrics, SnapshotInfo, TemplateInfo,
};
use tracing::{debug, info, warn};

use crate::config::EmbeddedConfig;
use crate::store::{SandboxRecord, Store};
use crate::template::{TemplateError, Templates};
use crate::{network, spec};

mod buildnet;
mod create;
mod error;
mod exec;
mod logs;
mod metrics;
mod monitor;
mod paths;
mod pause;
mod pool;
mod recovery;
mod snapshots;
mod state;
mod teardown;

pub use error::EmbeddedError;
use paths::Paths;
pub use pool::PoolFigures;
use state::State;

struct Inner {
    cfg: EmbeddedConfig,
    templates: Templates,
    cgroups: Hierarchy,
    /// Warms the cgroup migration lock at the start of each cold create (cgroup v1; see
    /// `paddock_cgroups::Warmer`).
    cgroup_warmer: Option<paddock_cgroups::Warmer>,
    store: Store,
    /// Snapshots (see `snapshots.rs`).
    snapshots: crate::snapshot::SnapshotStore,
    /// Held (shared) by creates that put a snapshot's layers under a new sandbox and
    /// (exclusively) by a snapshot's delete, which must not remove layers in use.
    snapshot_use: tokio::sync::RwLock<()>,
    state: Mutex<State>,
    pool_wakeup: tokio::sync::Notify,
    create_rate: crate::ratelimit::RateLimiter,
    shutdown: tokio::sync::watch::Sender<bool>,
    /// Sandboxes that died on their own (see `Infra::ended`).
    ended: tokio::sync::broadcast::Sender<SandboxEnded>,
    /// One lock per sandbox, held by pause, resume and kill: a resume that boots the
    /// sandbox again takes seconds, and nothing else may change it meanwhile.
    lifecycle_locks: Mutex<std::collections::HashMap<SandboxId, Arc<tokio::sync::Mutex<()>>>>,
    /// The user namespace whose mapping the template layers are idmapped with (`None`:
    /// sandboxes run without one, see `EmbeddedConfig::userns`).
    userns: Option<Arc<crate::userns::Userns>>,
    /// The sandbox seccomp profile, compiled once at start (see [`crate::seccomp`]).
    seccomp: crate::seccomp::Program,
    /// Runs the containers' `create` and `start` (see [`crate::forkserver`]).
    helper: crate::forkserver::ForkServer,
    /// Keeps other instances off our bridge, subnet, firewall and cgroup names.
    _instance_lock: crate::instance_lock::InstanceLock,
}

/// Where libcontainer's state was kept in the data dir before the run tmpfs: a sandbox
/// adopted from an older Paddock has its state there, and its teardown removes it.
const LEGACY_CONTAINERS_DIR: &str = "containers";

/// Events an `ended` receiver may fall behind by before it sees `Lagged`.
const ENDED_BACKLOG: usize = 1024;

/// Sandboxes as Linux containers on this host. Cheap to clone.
#[derive(Clone)]
pub struct EmbeddedInfra {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for EmbeddedInfra {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EmbeddedInfra")
            .field("data_dir", &self.inner.cfg.data_dir)
            .finish()
    }
}

/// Wraps one of our errors as [`InfraError::Internal`], keeping it (and so its `source()`
/// chain) rather than its message only.
fn internal<E: std::error::Error + Send + Sync + 'static>(e: E) -> InfraError {
    InfraError::Internal(Box::new(e))
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or_default()
}

fn cgroup_limits(l: &Limits) -> CgroupLimits {
    CgroupLimits {
        cpu_millis: Some(l.cpu_millis),
        memory_bytes: Some(l.memory_bytes),
        pids: Some(l.pids),
    }
}

fn template_err(e: TemplateError) -> InfraError {
    match e {
        TemplateError::Unknown(n) => InfraError::UnknownTemplate(n),
        other => internal(other),
    }
}

async fn blocking<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> InfraResult<T> {
    tokio::task::spawn_blocking(f).await.map_err(internal)
}

impl EmbeddedInfra {
    /// Opens the data dir, sets up the host network, and reconciles recorded sandboxes with
    /// reality: live ones are adopted, half-made or dead ones are cleaned up, and anything of
    /// ours that no record explains (cgroups, mounts, veths, state dirs) is removed.
    pub async fn start(cfg: EmbeddedConfig) -> InfraResult<Self> {
        let instance_lock =
            crate::instance_lock::InstanceLock::for_config(&cfg).map_err(internal)?;
        for d in [cfg.data_dir.clone(), cfg.data_dir.join("sandboxes")] {
            crate::private_dir::create_private_dir(&d).map_err(internal)?;
        }
        // Before anything below reads or makes a sandbox's state (recovery reads it, the fork
        // server's mount namespace must hold it).
        let run = crate::rundir::mount(&cfg.data_dir).map_err(internal)?;
        info!(dir = %crate::rundir::path(&cfg.data_dir).display(), mounted = ?run, "run tmpfs");
        // Refuses to start, with the reason, where the kernel cannot run sandboxes in user
        // namespaces, rather than quietly running them as host root.
        let userns = match cfg.userns {
            Some(range) => {
                let (helper, cache) = (cfg.helper_binary.clone(), cfg.template_cache.clone());
                let ns = blocking(move || crate::userns::Userns::new(&helper, range, &cache))
                    .await?
                    .map_err(internal)?;
                info!(
                    host_base = range.host_base,
                    size = range.size,
                    "sandboxes run in user namespaces"
                );
                Some(Arc::new(ns))
            }
            None => None,
        };
        // Once here rather than in every sandbox's init (about 11 ms of CPU each).
        let dir = cfg.data_dir.clone();
        let seccomp = blocking(move || crate::seccomp::Program::compile_into(&dir))
            .await?
            .map_err(internal)?;
        info!(program = %seccomp.path.display(), "seccomp profile compiled");
        let store = Store::open(&cfg.data_dir.join("paddock.redb")).map_err(internal)?;
        let snapshots = crate::snapshot::SnapshotStore::open(cfg.data_dir.join("snapshots"))
            .map_err(internal)?;
        let cgroups = Hierarchy::detect(&cfg.cgroup_parent).map_err(internal)?;
        info!(version = ?cgroups.version(), base = %cgroups.base().display(), "cgroups detected");
        // Only speed (see `paddock_cgroups::cpuset`): without it, the runtime sets each
        // sandbox's cpuset itself.
        match cgroups.inherit_cpusets() {
            Ok(Some(dir)) => debug!(base = %dir.display(), "new cpusets inherit their parent's"),
            Ok(None) => {}
            Err(e) => warn!(error = %e, "cpusets not inherited: each create sets its own"),
        }
        // Only speed: a host where it cannot start runs without it.
        let cgroup_warmer = paddock_cgroups::Warmer::start(&cgroups).unwrap_or_else(|e| {
            warn!(error = %e, "cgroup lock warming not started");
            None
        });
        network::setup_host(&cfg.net, cfg.resolv_conf.as_deref())
            .await
            .map_err(internal)?;
        let templates =
            Templates::new(cfg.template_cache.clone(), cfg.templates_with_disk_limits());
        let max_create_qps = cfg.max_create_qps;
        let (shutdown, _) = tokio::sync::watch::channel(false);
        let infra = Self {
            inner: Arc::new(Inner {
                helper: crate::forkserver::ForkServer::new(
                    &cfg.helper_binary,
                    &crate::rundir::containers(&cfg.data_dir),
                )
                // The data dir (the sandboxes' logs) and what the specs name outside the run
                // tmpfs (see `spec::build`).
                .keeping(
                    [
                        &cfg.data_dir,
                        &cfg.init_binary,
                        &cfg.runtime_binary,
                        &cfg.hook_binary,
                        &cfg.relay_binary,
                    ]
                    .into_iter()
                    .chain(cfg.resolv_conf.as_ref())
                    .cloned(),
                ),
                cfg,
                templates,
                cgroups,
                cgroup_warmer,
                store,
                snapshots,
                snapshot_use: tokio::sync::RwLock::new(()),
                state: Mutex::new(State::default()),
                pool_wakeup: tokio::sync::Notify::new(),
                create_rate: crate::ratelimit::RateLimiter::new(max_create_qps),
                shutdown,
                ended: tokio::sync::broadcast::channel(ENDED_BACKLOG).0,
                lifecycle_locks: Mutex::default(),
                userns,
                seccomp,
                _instance_lock: instance_lock,
            }),
        };
        infra.inner.templates.set_build_box(infra.build_box());
        infra.recover().await?;
        infra.init_pools();
        infra.start_monitor();
        Ok(infra)
    }

    /// libcontainer's state root, on the run tmpfs.
    fn state_root(&self) -> PathBuf {
        crate::rundir::containers(&self.inner.cfg.data_dir)
    }

    fn paths(&self, id: &SandboxId) -> Paths {
        Paths::new(&self.inner.cfg.data_dir, id)
    }

    fn info(&self, rec: &SandboxRecord) -> SandboxInfo {
        SandboxInfo {
            id: rec.id.clone(),
            template: rec.template.clone(),
            state: rec.state,
            address: SocketAddr::new(rec.ip.into(), spec::RUNTIME_PORT),
            limits: rec.limits.clone(),
            allow_internet_access: rec.allow_internet,
            metadata: rec.metadata.clone(),
            created_at_ms: rec.created_at_ms,
            from_pool: false,
            bootstrap_token: rec.bootstrap_token.clone(),
        }
    }

    /// The lock that orders pause, resume and kill of sandbox `id`.
    fn lifecycle_lock(&self, id: &SandboxId) -> Arc<tokio::sync::Mutex<()>> {
        let mut locks = self
            .inner
            .lifecycle_locks
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        locks.entry(id.clone()).or_default().clone()
    }

    /// Drops the lock of a sandbox that is gone.
    fn drop_lifecycle_lock(&self, id: &SandboxId) {
        self.inner
            .lifecycle_locks
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(id);
    }

    /// The template catalogue (list and build templates with it).
    pub fn templates(&self) -> &Templates {
        &self.inner.templates
    }

    /// Builds a template now (blocking work on a worker thread), logging progress.
    pub async fn build_template(&self, name: &str) -> InfraResult<Vec<PathBuf>> {
        let me = self.clone();
        let name = name.to_owned();
        blocking(move || {
            me.inner
                .templates
                .build(&name, &|line| info!(target: "paddock::template", "{line}"))
        })
        .await?
        .map_err(template_err)
    }

    /// Stops the pool task. Sandboxes keep running (a later `start` adopts them).
    pub fn shutdown(&self) {
        let _ = self.inner.shutdown.send(true);
    }
}

impl Infra for EmbeddedInfra {
    async fn create(&self, req: CreateSandbox) -> InfraResult<SandboxInfo> {
        self.create_sandbox(req).await
    }

    async fn get(&self, id: &SandboxId) -> InfraResult<SandboxInfo> {
        let rec = self.record(id)?;
        if rec.pooled {
            return Err(InfraError::NotFound(id.clone()));
        }
        Ok(self.info(&rec))
    }

    async fn list(&self) -> InfraResult<Vec<SandboxInfo>> {
        let st = self.state();
        let mut v: Vec<SandboxInfo> = st
            .sandboxes
            .values()
            .filter(|e| !e.rec.pooled)
            .map(|e| self.info(&e.rec))
            .collect();
        v.sort_by_key(|i| i.created_at_ms);
        Ok(v)
    }

    async fn pause(&self, id: &SandboxId) -> InfraResult<SandboxInfo> {
        self.pause_sandbox(id, PauseMode::Memory).await
    }

    async fn pause_in(&self, id: &SandboxId, mode: PauseMode) -> InfraResult<SandboxInfo> {
        self.pause_sandbox(id, mode).await
    }

    async fn pause_on_timeout(&self, id: &SandboxId) -> InfraResult<SandboxInfo> {
        self.pause_for_timeout(id).await
    }

    async fn resume(&self, id: &SandboxId) -> InfraResult<SandboxInfo> {
        self.resume_sandbox(id).await
    }

    async fn kill(&self, id: &SandboxId) -> InfraResult<()> {
        self.kill_sandbox(id).await
    }

    async fn metrics(&self, id: &SandboxId) -> InfraResult<SandboxMetrics> {
        self.sandbox_metrics(id).await
    }

    async fn metrics_many(
        &self,
        ids: Vec<SandboxId>,
    ) -> Vec<(SandboxId, InfraResult<SandboxMetrics>)> {
        self.sandbox_metrics_many(ids).await
    }

    async fn logs(&self, id: &SandboxId) -> InfraResult<Vec<paddock_infra::LogLine>> {
        self.sandbox_logs(id).await
    }

    fn ended(&self) -> tokio::sync::broadcast::Receiver<SandboxEnded> {
        self.inner.ended.subscribe()
    }

    async fn create_snapshot(&self, req: CreateSnapshot) -> InfraResult<SnapshotInfo> {
        self.snapshot_sandbox(req).await
    }

    async fn snapshots(&self) -> InfraResult<Vec<SnapshotInfo>> {
        self.list_snapshots().await
    }

    async fn delete_snapshot(&self, id: &str) -> InfraResult<()> {
        self.remove_snapshot(id).await
    }

    async fn create_from_snapshot(
        &self,
        snapshot: &str,
        req: CreateSandbox,
    ) -> InfraResult<SandboxInfo> {
        self.create_on_snapshot(snapshot, req).await
    }

    async fn fork(
        &self,
        id: &SandboxId,
        reqs: Vec<CreateSandbox>,
    ) -> InfraResult<Vec<InfraResult<SandboxInfo>>> {
        self.fork_sandbox(id, reqs).await
    }

    async fn templates(&self) -> InfraResult<Vec<TemplateInfo>> {
        let t = &self.inner.templates;
        t.specs()
            .map(|s| {
                let pool = self.pool_figures(&s.name);
                Ok(TemplateInfo {
                    name: s.name.clone(),
                    built: t.layers(&s.name).map_err(template_err)?.is_some(),
                    limits: s.limits.clone(),
                    pool_size: pool.target,
                    pool_ready: pool.ready,
                    pool_min: pool.min,
                    pool_max: pool.max,
                })
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use std::error::Error;

    use crate::container::ContainerError;

    /// Errors crossing the `Infra` boundary keep their type and cause, not just their text.
    #[test]
    fn internal_errors_keep_their_source_chain() {
        let e = super::internal(ContainerError::Io {
            id: "x".into(),
            op: "open log",
            source: std::io::Error::other("disk on fire"),
        });
        let c = e
            .source()
            .and_then(|s| s.downcast_ref::<ContainerError>())
            .expect("the container error itself");
        assert_eq!(
            c.source().map(|s| s.to_string()).as_deref(),
            Some("disk on fire")
        );
    }
}
