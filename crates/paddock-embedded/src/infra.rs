//! [`EmbeddedInfra`]: the `Infra` implementation that runs sandboxes as containers here.

use std::collections::{BTreeSet, HashMap, VecDeque};
use std::net::{Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use paddock_cgroups::{CgroupLimits, Hierarchy};
use paddock_infra::{
    CreateSandbox, Infra, InfraError, InfraResult, LifecycleEvent, Limits, SandboxId, SandboxInfo,
    SandboxMetrics, SandboxState, TemplateInfo,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tracing::{Instrument, info, info_span, warn};

use crate::config::EmbeddedConfig;
use crate::container::{self, ExecOutput};
use crate::store::{SandboxRecord, Store};
use crate::template::{TemplateError, Templates};
use crate::{mounts, network, proc, spec};

/// Per-sandbox paths under the data dir.
#[derive(Debug, Clone)]
struct Paths {
    dir: PathBuf,
}

impl Paths {
    fn new(data: &std::path::Path, id: &SandboxId) -> Self {
        Self {
            dir: data.join("sandboxes").join(id.as_str()),
        }
    }
    /// Holds the writable layer; a size-limited tmpfs when the sandbox has a disk limit.
    fn disk(&self) -> PathBuf {
        self.dir.join("disk")
    }
    fn upper(&self) -> PathBuf {
        self.disk().join("upper")
    }
    fn work(&self) -> PathBuf {
        self.disk().join("work")
    }
    fn rootfs(&self) -> PathBuf {
        self.dir.join("rootfs")
    }
    fn bundle(&self) -> PathBuf {
        self.dir.join("bundle")
    }
    fn log(&self) -> PathBuf {
        self.dir.join("runtime.log")
    }
}

#[derive(Debug)]
struct Entry {
    rec: SandboxRecord,
    /// Previous CPU sample for `cpu_percent`.
    last_cpu: Option<(Instant, u64)>,
    /// Why the sandbox died, when it did on its own.
    dead_reason: Option<String>,
}

#[derive(Debug, Default)]
struct State {
    sandboxes: HashMap<SandboxId, Entry>,
    used_ips: BTreeSet<Ipv4Addr>,
    /// The address handed out last; allocation continues after it.
    last_ip: Option<Ipv4Addr>,
    /// Ready pooled sandboxes per template, oldest first.
    pools: HashMap<String, VecDeque<SandboxId>>,
    /// Pool creations in flight per template.
    filling: HashMap<String, usize>,
}

struct Inner {
    cfg: EmbeddedConfig,
    templates: Templates,
    cgroups: Hierarchy,
    store: Store,
    state: Mutex<State>,
    pool_wakeup: tokio::sync::Notify,
    create_rate: crate::ratelimit::RateLimiter,
    shutdown: tokio::sync::watch::Sender<bool>,
}

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

fn internal(e: impl std::fmt::Display) -> InfraError {
    InfraError::internal(e.to_string())
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or_default()
}

/// A fresh id: 20 characters of `[a-z0-9]` from the kernel's random pool.
fn new_id() -> InfraResult<SandboxId> {
    const ALPHABET: &[u8] = b"abcdefghijklmnopqrstuvwxyz0123456789";
    let mut bytes = [0u8; 20];
    std::io::Read::read_exact(
        &mut std::fs::File::open("/dev/urandom").map_err(internal)?,
        &mut bytes,
    )
    .map_err(internal)?;
    let s: String = bytes
        .iter()
        .map(|b| ALPHABET[usize::from(*b) % ALPHABET.len()] as char)
        .collect();
    SandboxId::new(s).map_err(internal)
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
        for d in [
            cfg.data_dir.clone(),
            cfg.data_dir.join("sandboxes"),
            cfg.data_dir.join("containers"),
        ] {
            crate::private_dir::create_private_dir(&d).map_err(internal)?;
        }
        let store = Store::open(&cfg.data_dir.join("paddock.redb")).map_err(internal)?;
        let cgroups = Hierarchy::detect(&cfg.cgroup_parent).map_err(internal)?;
        info!(version = ?cgroups.version(), base = %cgroups.base().display(), "cgroups detected");
        network::setup_host(&cfg.net).await.map_err(internal)?;
        let templates = Templates::new(cfg.template_cache.clone(), cfg.templates.clone());
        let max_create_qps = cfg.max_create_qps;
        let (shutdown, _) = tokio::sync::watch::channel(false);
        let infra = Self {
            inner: Arc::new(Inner {
                cfg,
                templates,
                cgroups,
                store,
                state: Mutex::new(State::default()),
                pool_wakeup: tokio::sync::Notify::new(),
                create_rate: crate::ratelimit::RateLimiter::new(max_create_qps),
                shutdown,
            }),
        };
        infra.recover().await?;
        infra.start_monitor();
        Ok(infra)
    }

    fn state(&self) -> MutexGuard<'_, State> {
        self.inner.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn state_root(&self) -> PathBuf {
        self.inner.cfg.data_dir.join("containers")
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
        }
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

    // === create ===

    async fn cold_create(
        &self,
        template: &str,
        limits: Limits,
        allow_internet: bool,
        metadata: std::collections::BTreeMap<String, String>,
        pooled: bool,
    ) -> InfraResult<SandboxInfo> {
        let layers = self.build_template(template).await?;
        self.inner.create_rate.acquire().await;
        let id = new_id()?;
        let ip = {
            let mut st = self.state();
            let ip = self
                .inner
                .cfg
                .net
                .cidr
                .allocate(&st.used_ips, st.last_ip)
                .map_err(|e| InfraError::Capacity(e.to_string()))?;
            st.used_ips.insert(ip);
            st.last_ip = Some(ip);
            ip
        };
        let rec = SandboxRecord {
            id: id.clone(),
            template: template.to_owned(),
            state: SandboxState::Creating,
            ip,
            init_pid: 0,
            init_start_ticks: 0,
            limits,
            allow_internet,
            metadata,
            created_at_ms: now_ms(),
            pooled,
        };
        // Record first: if we crash from here on, recovery finds and cleans the leftovers.
        if let Err(e) = self.inner.store.put(&rec) {
            self.state().used_ips.remove(&ip);
            return Err(internal(e));
        }
        self.state().sandboxes.insert(
            id.clone(),
            Entry {
                rec: rec.clone(),
                last_cpu: None,
                dead_reason: None,
            },
        );
        let span = info_span!("sandbox_create", %id, template, %ip);
        let started = Instant::now();
        match self.bring_up(rec, layers).instrument(span.clone()).await {
            Ok(info) => {
                span.in_scope(|| {
                    info!(
                        elapsed_ms = started.elapsed().as_millis() as u64,
                        "sandbox ready"
                    )
                });
                Ok(info)
            }
            Err(e) => {
                span.in_scope(|| warn!(error = %e, "sandbox creation failed; cleaning up"));
                if let Err(te) = self.teardown(&id).await {
                    warn!(%id, error = %te, "cleanup after failed create");
                }
                self.state().sandboxes.remove(&id);
                Err(e)
            }
        }
    }

    async fn bring_up(
        &self,
        mut rec: SandboxRecord,
        layers: Vec<PathBuf>,
    ) -> InfraResult<SandboxInfo> {
        let tspec = self
            .inner
            .templates
            .get(&rec.template)
            .map_err(template_err)?
            .clone();
        let paths = self.paths(&rec.id);
        let cg = self.inner.cgroups.sandbox(rec.id.as_str());
        let cfg = self.inner.cfg.clone();
        let state_root = self.state_root();
        let (id, limits) = (rec.id.clone(), rec.limits.clone());
        let user = parse_user(tspec.user.as_deref())?;
        let pid = blocking(move || -> InfraResult<i32> {
            if let Some(bytes) = limits.disk_bytes {
                // The data dir's file system (ext4 here) has no per-directory quota, so a disk
                // limit puts the writable layer on a tmpfs of that size. Its pages are charged
                // to the sandbox's memory cgroup as well.
                mounts::mount_tmpfs(&paths.disk(), bytes).map_err(internal)?;
            }
            for d in [paths.upper(), paths.work(), paths.rootfs(), paths.bundle()] {
                std::fs::create_dir_all(&d).map_err(internal)?;
            }
            mounts::mount_overlay(&layers, &paths.upper(), &paths.work(), &paths.rootfs())
                .map_err(internal)?;
            cg.create().map_err(internal)?;
            cg.apply(&cgroup_limits(&limits)).map_err(internal)?;
            let v = spec::build(&spec::SpecInput {
                hostname: id.as_str(),
                rootfs: &paths.rootfs(),
                cgroup_path: cg.oci_path(),
                init_binary: &cfg.init_binary,
                runtime_binary: &cfg.runtime_binary,
                runtime_args: &cfg.runtime_args,
                env: &tspec.env,
                user,
                resolv_conf: cfg.resolv_conf.as_deref(),
                tmp_bytes: cfg.tmp_bytes,
            });
            spec::write(&paths.bundle(), &v).map_err(internal)?;
            container::create(
                &cfg.helper_binary,
                &state_root,
                id.as_str(),
                &paths.bundle(),
                &paths.log(),
            )
            .map_err(internal)
        })
        .await??;
        rec.init_pid = pid;
        rec.init_start_ticks = proc::start_ticks(pid).unwrap_or(0);
        self.save(&rec)?;
        network::attach(&self.inner.cfg.net, pid, rec.ip, rec.allow_internet)
            .await
            .map_err(internal)?;
        let (root, id) = (self.state_root(), rec.id.clone());
        let helper = self.inner.cfg.helper_binary.clone();
        blocking(move || container::start(&helper, &root, id.as_str()))
            .await?
            .map_err(internal)?;
        self.wait_ready(&rec).await?;
        rec.state = rec.state.on(LifecycleEvent::Ready).map_err(|source| {
            InfraError::IllegalTransition {
                id: rec.id.clone(),
                source,
            }
        })?;
        self.save(&rec)?;
        Ok(self.info(&rec))
    }

    fn save(&self, rec: &SandboxRecord) -> InfraResult<()> {
        self.inner.store.put(rec).map_err(internal)?;
        if let Some(e) = self.state().sandboxes.get_mut(&rec.id) {
            e.rec = rec.clone();
        }
        Ok(())
    }

    /// Polls `GET /health` until it answers 2xx, the init dies, or the timeout passes.
    async fn wait_ready(&self, rec: &SandboxRecord) -> InfraResult<()> {
        let addr = SocketAddr::new(rec.ip.into(), spec::RUNTIME_PORT);
        let deadline = Instant::now() + self.inner.cfg.ready_timeout;
        let mut delay = Duration::from_millis(2);
        loop {
            if !proc::alive(rec.init_pid, rec.init_start_ticks) {
                let log = std::fs::read_to_string(self.paths(&rec.id).log()).unwrap_or_default();
                return Err(InfraError::SandboxFailed {
                    id: rec.id.clone(),
                    reason: format!("init exited while starting; output: {}", tail(&log, 800)),
                });
            }
            if health(addr).await {
                return Ok(());
            }
            if Instant::now() >= deadline {
                return Err(InfraError::SandboxFailed {
                    id: rec.id.clone(),
                    reason: format!(
                        "runtime did not answer /health at {addr} within {:?}",
                        self.inner.cfg.ready_timeout
                    ),
                });
            }
            tokio::time::sleep(delay).await;
            delay = (delay * 2).min(Duration::from_millis(50));
        }
    }

    /// Starts the monitor: every 100 ms it checks each live sandbox's init (by pid and start
    /// time, so it works for adopted sandboxes that are no longer our children); when one has
    /// exited on its own, the sandbox is marked dead and its resources are released.
    fn start_monitor(&self) {
        let me = self.clone();
        let mut stop = self.inner.shutdown.subscribe();
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    _ = tokio::time::sleep(Duration::from_millis(100)) => {}
                    _ = stop.changed() => return,
                }
                let watched: Vec<(SandboxId, i32, u64)> = {
                    let st = me.state();
                    st.sandboxes
                        .values()
                        .filter(|e| {
                            matches!(e.rec.state, SandboxState::Running | SandboxState::Paused)
                        })
                        .map(|e| (e.rec.id.clone(), e.rec.init_pid, e.rec.init_start_ticks))
                        .collect()
                };
                for (id, pid, ticks) in watched {
                    if pid > 0 && !proc::alive(pid, ticks) {
                        // Reap it if it is our child (a no-op for adopted ones).
                        let _ = container::try_reap(pid);
                        me.on_init_exit(id, pid).await;
                    }
                }
            }
        });
    }

    async fn on_init_exit(&self, id: SandboxId, pid: i32) {
        {
            let mut st = self.state();
            let Some(e) = st.sandboxes.get_mut(&id) else {
                return;
            };
            if e.rec.init_pid != pid || e.rec.state == SandboxState::Dead {
                return; // killed on purpose, or already handled
            }
            let Ok(next) = e.rec.state.on(LifecycleEvent::Died) else {
                return;
            };
            e.rec.state = next;
            e.dead_reason = Some("init exited".to_string());
            for pool in st.pools.values_mut() {
                pool.retain(|p| p != &id);
            }
        }
        warn!(%id, pid, "sandbox init died; releasing its resources");
        if let Err(e) = self.teardown(&id).await {
            warn!(%id, error = %e, "cleanup after init death");
        }
        self.inner.pool_wakeup.notify_one();
    }

    // === teardown ===

    /// Releases everything of sandbox `id`: processes, mounts, cgroup, veth, address, state
    /// and record. Idempotent and tolerant of half-made sandboxes. Keeps a dead entry in memory
    /// only if the sandbox died on its own (so `get` can report it).
    async fn teardown(&self, id: &SandboxId) -> InfraResult<()> {
        let rec = {
            let st = self.state();
            st.sandboxes.get(id).map(|e| e.rec.clone())
        };
        let rec = match rec {
            Some(r) => Some(r),
            None => self
                .inner
                .store
                .all()
                .map_err(internal)?
                .into_iter()
                .find(|r| &r.id == id),
        };
        let cg = self.inner.cgroups.sandbox(id.as_str());
        let paths = self.paths(id);
        let root = self.state_root();
        let (idc, pid) = (id.clone(), rec.as_ref().map(|r| r.init_pid).unwrap_or(0));
        blocking(move || -> InfraResult<()> {
            if cg.exists() {
                cg.kill_all().map_err(internal)?;
            }
            if pid > 0 {
                // Our child: reap it here unless its watcher already did.
                let _ = container::try_reap(pid);
            }
            container::forget(&root, idc.as_str());
            mounts::unmount_all_under(&paths.dir).map_err(internal)?;
            match std::fs::remove_dir_all(&paths.dir) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(internal(e)),
            }
            cg.remove().map_err(internal)
        })
        .await??;
        if let Some(r) = &rec {
            network::detach(&self.inner.cfg.net, r.ip)
                .await
                .map_err(internal)?;
        }
        self.inner.store.delete(id).map_err(internal)?;
        let mut st = self.state();
        if let Some(r) = &rec {
            st.used_ips.remove(&r.ip);
        }
        let died = st
            .sandboxes
            .get(id)
            .is_some_and(|e| e.dead_reason.is_some());
        if !died {
            st.sandboxes.remove(id);
        }
        Ok(())
    }

    // === recovery ===

    async fn recover(&self) -> InfraResult<()> {
        let records = self.inner.store.all().map_err(internal)?;
        let mut adopted = BTreeSet::new();
        for rec in records {
            let live = matches!(rec.state, SandboxState::Running | SandboxState::Paused)
                && rec.init_pid > 0
                && proc::alive(rec.init_pid, rec.init_start_ticks)
                && self
                    .inner
                    .cgroups
                    .sandbox(rec.id.as_str())
                    .pids()
                    .map(|p| p.contains(&rec.init_pid))
                    .unwrap_or(false);
            if live {
                info!(id = %rec.id, state = %rec.state, "adopting sandbox");
                if rec.allow_internet {
                    let _ = network::allow_egress(&self.inner.cfg.net, rec.ip);
                }
                {
                    let mut st = self.state();
                    st.used_ips.insert(rec.ip);
                    if rec.pooled {
                        st.pools
                            .entry(rec.template.clone())
                            .or_default()
                            .push_back(rec.id.clone());
                    }
                    st.sandboxes.insert(
                        rec.id.clone(),
                        Entry {
                            rec: rec.clone(),
                            last_cpu: None,
                            dead_reason: None,
                        },
                    );
                }
                adopted.insert(rec.id.as_str().to_owned());
            } else {
                info!(id = %rec.id, state = %rec.state, "cleaning up sandbox left behind");
                self.state().sandboxes.insert(
                    rec.id.clone(),
                    Entry {
                        rec: rec.clone(),
                        last_cpu: None,
                        dead_reason: None,
                    },
                );
                self.teardown(&rec.id).await?;
            }
        }
        self.sweep_orphans(&adopted).await
    }

    /// Removes resources that carry our names but belong to no adopted sandbox.
    async fn sweep_orphans(&self, keep: &BTreeSet<String>) -> InfraResult<()> {
        let mut orphans: BTreeSet<String> = self
            .inner
            .cgroups
            .list()
            .map_err(internal)?
            .into_iter()
            .collect();
        for dir in [self.inner.cfg.data_dir.join("sandboxes"), self.state_root()] {
            if let Ok(entries) = std::fs::read_dir(&dir) {
                orphans.extend(
                    entries
                        .flatten()
                        .map(|e| e.file_name().to_string_lossy().into_owned()),
                );
            }
        }
        for name in orphans.difference(keep) {
            let Ok(id) = SandboxId::new(name.clone()) else {
                warn!(name, "ignoring foreign entry");
                continue;
            };
            info!(%id, "removing orphaned sandbox resources");
            self.teardown(&id).await?;
        }
        let keep_veths: BTreeSet<String> = {
            let st = self.state();
            st.sandboxes
                .values()
                .map(|e| self.inner.cfg.net.veth_name(e.rec.ip))
                .collect()
        };
        for veth in network::host_veths(&self.inner.cfg.net)
            .await
            .map_err(internal)?
        {
            if !keep_veths.contains(&veth) {
                network::delete_link(&veth).await.map_err(internal)?;
            }
        }
        Ok(())
    }

    // === pools ===

    /// Starts the background task that keeps each template's warm pool full. Pools are sized
    /// by [`crate::TemplateSpec::pool_size`].
    pub fn start_pools(&self) {
        let me = self.clone();
        let mut stop = self.inner.shutdown.subscribe();
        tokio::spawn(async move {
            loop {
                let mut made_progress = false;
                for spec in me.inner.templates.specs().cloned().collect::<Vec<_>>() {
                    if *stop.borrow() {
                        return;
                    }
                    let want = {
                        let st = me.state();
                        let have = st.pools.get(&spec.name).map_or(0, |p| p.len())
                            + st.filling.get(&spec.name).copied().unwrap_or(0);
                        spec.pool_size.saturating_sub(have)
                    };
                    if want == 0 {
                        continue;
                    }
                    *me.state().filling.entry(spec.name.clone()).or_default() += 1;
                    let r = me
                        .cold_create(
                            &spec.name,
                            spec.limits.clone(),
                            false,
                            Default::default(),
                            true,
                        )
                        .await;
                    let mut st = me.state();
                    if let Some(n) = st.filling.get_mut(&spec.name) {
                        *n = n.saturating_sub(1);
                    }
                    match r {
                        Ok(info) => {
                            st.pools
                                .entry(spec.name.clone())
                                .or_default()
                                .push_back(info.id);
                            made_progress = true;
                        }
                        Err(e) => warn!(template = %spec.name, error = %e, "pool refill failed"),
                    }
                }
                if !made_progress {
                    tokio::select! {
                        _ = me.inner.pool_wakeup.notified() => {}
                        _ = tokio::time::sleep(Duration::from_secs(2)) => {}
                        _ = stop.changed() => return,
                    }
                }
            }
        });
    }

    /// Ready sandboxes waiting in the pool of `template`.
    pub fn pool_len(&self, template: &str) -> usize {
        self.state().pools.get(template).map_or(0, |p| p.len())
    }

    fn claim(&self, template: &str) -> Option<SandboxRecord> {
        let mut st = self.state();
        let id = st.pools.get_mut(template)?.pop_front()?;
        let e = st.sandboxes.get(&id)?;
        (e.rec.state == SandboxState::Running).then(|| e.rec.clone())
    }

    /// Stops the pool task. Sandboxes keep running (a later `start` adopts them).
    pub fn shutdown(&self) {
        let _ = self.inner.shutdown.send(true);
    }

    /// Kills every sandbox, pooled ones included (tests and uninstall).
    pub async fn kill_all(&self) -> InfraResult<()> {
        self.shutdown();
        let ids: Vec<SandboxId> = self.state().sandboxes.keys().cloned().collect();
        for id in ids {
            self.mark_dead(&id);
            self.teardown(&id).await?;
            self.state().sandboxes.remove(&id);
        }
        self.state().pools.clear();
        Ok(())
    }

    fn mark_dead(&self, id: &SandboxId) {
        if let Some(e) = self.state().sandboxes.get_mut(id) {
            e.rec.state = SandboxState::Dead;
        }
    }

    // === exec ===

    /// Runs a command inside a running sandbox (its namespaces, cgroup and capabilities) and
    /// returns its output. For tests and debugging; users go through the runtime's API.
    ///
    /// Caveat: libcontainer 0.7's exec path does not install the seccomp filter (processes the
    /// runtime starts inherit it from the init, these do not).
    pub async fn exec(&self, id: &SandboxId, args: &[&str]) -> InfraResult<ExecOutput> {
        let rec = self.record(id)?;
        if rec.state != SandboxState::Running {
            return Err(InfraError::SandboxFailed {
                id: id.clone(),
                reason: format!("cannot exec in a {} sandbox", rec.state),
            });
        }
        let (root, idc) = (self.state_root(), id.clone());
        let helper = self.inner.cfg.helper_binary.clone();
        let args: Vec<String> = args.iter().map(|s| s.to_string()).collect();
        blocking(move || container::exec(&helper, &root, idc.as_str(), &args))
            .await?
            .map_err(internal)
    }

    fn record(&self, id: &SandboxId) -> InfraResult<SandboxRecord> {
        self.state()
            .sandboxes
            .get(id)
            .map(|e| e.rec.clone())
            .ok_or_else(|| InfraError::NotFound(id.clone()))
    }

    /// Why a sandbox died on its own, if it did.
    pub fn dead_reason(&self, id: &SandboxId) -> Option<String> {
        self.state()
            .sandboxes
            .get(id)
            .and_then(|e| e.dead_reason.clone())
    }

    fn transition(&self, id: &SandboxId, ev: LifecycleEvent) -> InfraResult<SandboxRecord> {
        let st = self.state();
        let e = st
            .sandboxes
            .get(id)
            .filter(|e| !e.rec.pooled)
            .ok_or_else(|| InfraError::NotFound(id.clone()))?;
        let mut rec = e.rec.clone();
        rec.state = rec
            .state
            .on(ev)
            .map_err(|source| InfraError::IllegalTransition {
                id: id.clone(),
                source,
            })?;
        Ok(rec)
    }
}

impl Infra for EmbeddedInfra {
    async fn create(&self, req: CreateSandbox) -> InfraResult<SandboxInfo> {
        let tspec = self
            .inner
            .templates
            .get(&req.template)
            .map_err(template_err)?
            .clone();
        let limits = req.limits.clone().unwrap_or_else(|| tspec.limits.clone());
        limits.validate()?;
        if let Some(mut rec) = self.claim(&req.template) {
            self.inner.pool_wakeup.notify_one();
            let span = info_span!("sandbox_claim", id = %rec.id, template = %req.template);
            let _g = span.enter();
            if limits != rec.limits {
                let cg = self.inner.cgroups.sandbox(rec.id.as_str());
                cg.apply(&cgroup_limits(&limits)).map_err(internal)?;
                rec.limits = limits;
            }
            if req.allow_internet_access {
                network::allow_egress(&self.inner.cfg.net, rec.ip).map_err(internal)?;
            }
            rec.allow_internet = req.allow_internet_access;
            rec.metadata = req.metadata;
            rec.pooled = false;
            self.save(&rec)?;
            info!("claimed from warm pool");
            let mut info = self.info(&rec);
            info.from_pool = true;
            return Ok(info);
        }
        self.cold_create(
            &req.template,
            limits,
            req.allow_internet_access,
            req.metadata,
            false,
        )
        .await
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
        let rec = self.transition(id, LifecycleEvent::Pause)?;
        let cg = self.inner.cgroups.sandbox(id.as_str());
        blocking(move || cg.freeze()).await?.map_err(internal)?;
        self.save(&rec)?;
        Ok(self.info(&rec))
    }

    async fn resume(&self, id: &SandboxId) -> InfraResult<SandboxInfo> {
        let rec = self.transition(id, LifecycleEvent::Resume)?;
        let cg = self.inner.cgroups.sandbox(id.as_str());
        blocking(move || cg.thaw()).await?.map_err(internal)?;
        self.save(&rec)?;
        Ok(self.info(&rec))
    }

    async fn kill(&self, id: &SandboxId) -> InfraResult<()> {
        let dead_tombstone = self
            .state()
            .sandboxes
            .get(id)
            .is_some_and(|e| e.dead_reason.is_some());
        if dead_tombstone {
            self.state().sandboxes.remove(id);
            return Ok(());
        }
        // A kill whose teardown failed earlier left the sandbox Dead: tear down again.
        let retry = self
            .state()
            .sandboxes
            .get(id)
            .is_some_and(|e| e.rec.state == SandboxState::Dead);
        if retry {
            warn!(%id, "retrying the teardown of a sandbox whose kill failed");
            return self
                .teardown(id)
                .instrument(info_span!("sandbox_kill", %id))
                .await;
        }
        let rec = self.transition(id, LifecycleEvent::Kill)?;
        self.mark_dead(id);
        let _ = rec;
        self.teardown(id)
            .instrument(info_span!("sandbox_kill", %id))
            .await
    }

    async fn metrics(&self, id: &SandboxId) -> InfraResult<SandboxMetrics> {
        let rec = self.record(id)?;
        let cg = self.inner.cgroups.sandbox(id.as_str());
        let upper = self.paths(id).upper();
        let (stats, disk) = blocking(move || (cg.stats(), proc::du(&upper))).await?;
        let stats = stats.map_err(internal)?;
        let now = Instant::now();
        let cpu_percent = {
            let mut st = self.state();
            let e = st
                .sandboxes
                .get_mut(id)
                .ok_or_else(|| InfraError::NotFound(id.clone()))?;
            let pct = match e.last_cpu {
                Some((t, used)) if now > t => {
                    let dt = now.duration_since(t).as_nanos() as f64;
                    stats.cpu_usage_ns.saturating_sub(used) as f64 / dt * 100.0
                }
                _ => 0.0,
            };
            e.last_cpu = Some((now, stats.cpu_usage_ns));
            pct
        };
        Ok(SandboxMetrics {
            cpu_usage_ns: stats.cpu_usage_ns,
            cpu_percent,
            memory_bytes: stats.memory_bytes,
            memory_limit_bytes: stats.memory_limit_bytes.min(rec.limits.memory_bytes),
            pids: stats.pids,
            disk_bytes: disk,
            oom_kills: stats.oom_kills,
        })
    }

    async fn logs(&self, id: &SandboxId) -> InfraResult<Vec<paddock_infra::LogLine>> {
        let rec = self.record(id)?;
        if rec.pooled {
            return Err(InfraError::NotFound(id.clone()));
        }
        let path = self.paths(id).log();
        let created = rec.created_at_ms;
        tokio::task::spawn_blocking(move || {
            use std::io::{Read, Seek, SeekFrom};
            let mut f = match std::fs::File::open(&path) {
                Ok(f) => f,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
                Err(e) => return Err(internal(e)),
            };
            let len = f.metadata().map_err(internal)?.len();
            let skip = len.saturating_sub(crate::logs::MAX_LOG_BYTES);
            f.seek(SeekFrom::Start(skip)).map_err(internal)?;
            let mut buf = Vec::new();
            f.read_to_end(&mut buf).map_err(internal)?;
            let mut text = String::from_utf8_lossy(&buf).into_owned();
            if skip > 0 {
                // Drop the partial first line of a cut log.
                text = text
                    .split_once('\n')
                    .map(|(_, r)| r.to_string())
                    .unwrap_or_default();
            }
            Ok(crate::logs::parse(&text, created))
        })
        .await
        .map_err(internal)?
    }

    async fn templates(&self) -> InfraResult<Vec<TemplateInfo>> {
        let t = &self.inner.templates;
        t.specs()
            .map(|s| {
                Ok(TemplateInfo {
                    name: s.name.clone(),
                    built: t.layers(&s.name).map_err(template_err)?.is_some(),
                    limits: s.limits.clone(),
                    pool_size: s.pool_size,
                    pool_ready: self.pool_len(&s.name),
                })
            })
            .collect()
    }
}

/// `uid[:gid]`, numeric.
fn parse_user(u: Option<&str>) -> InfraResult<(u32, u32)> {
    let Some(u) = u else { return Ok((0, 0)) };
    let bad = || internal(format!("template user {u:?} is not uid[:gid]"));
    let (uid, gid) = u.split_once(':').unwrap_or((u, u));
    Ok((
        uid.parse().map_err(|_| bad())?,
        gid.parse().map_err(|_| bad())?,
    ))
}

fn tail(s: &str, n: usize) -> &str {
    let start = s.len().saturating_sub(n);
    let start = (start..s.len())
        .find(|i| s.is_char_boundary(*i))
        .unwrap_or(s.len());
    &s[start..]
}

/// One `GET /health`; true on a 2xx answer.
async fn health(addr: SocketAddr) -> bool {
    let attempt = async {
        let mut s = tokio::net::TcpStream::connect(addr).await.ok()?;
        s.set_nodelay(true).ok()?;
        s.write_all(b"GET /health HTTP/1.1\r\nHost: sandbox\r\nConnection: close\r\n\r\n")
            .await
            .ok()?;
        let mut buf = [0u8; 64];
        let n = s.read(&mut buf).await.ok()?;
        let head = std::str::from_utf8(&buf[..n]).ok()?;
        Some(head.starts_with("HTTP/1.1 2") || head.starts_with("HTTP/1.0 2"))
    };
    tokio::time::timeout(Duration::from_millis(500), attempt)
        .await
        .ok()
        .flatten()
        .unwrap_or(false)
}
