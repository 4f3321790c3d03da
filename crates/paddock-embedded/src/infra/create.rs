//! Cold creation: address, record, root filesystem, cgroup, container, network, readiness.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use paddock_infra::{
    CreateSandbox, InfraError, InfraResult, LifecycleEvent, Limits, SandboxId, SandboxInfo,
    SandboxState,
};
use tracing::{Instrument, debug, info, info_span, warn};

use super::state::Entry;
use super::{EmbeddedInfra, blocking, cgroup_limits, internal, now_ms, template_err};
use crate::store::SandboxRecord;
use crate::{container, disk, mounts, network, proc, readiness, spec};

/// A fresh id: 20 characters of `[a-z0-9]` from the kernel's random pool.
pub(super) fn new_id() -> InfraResult<SandboxId> {
    const ALPHABET: &[u8] = b"abcdefghijklmnopqrstuvwxyz0123456789";
    let bytes: [u8; 20] = random_bytes()?;
    let s: String = bytes
        .iter()
        .map(|b| ALPHABET[usize::from(*b) % ALPHABET.len()] as char)
        .collect();
    SandboxId::new(s).map_err(internal)
}

/// The data dir's directory of blank disk images, one per size (see [`disk::mount_limited`]).
const DISK_BLANKS: &str = "disk-blanks";

/// The runtime's environment variable for the access token it requires at start.
const RUNTIME_TOKEN_ENV: &str = "PADDOCK_RUNTIME_ACCESS_TOKEN";
/// The runtime's environment variable for the largest upload it accepts.
const RUNTIME_MAX_UPLOAD_ENV: &str = "PADDOCK_RUNTIME_MAX_UPLOAD_BYTES";

fn random_bytes<const N: usize>() -> InfraResult<[u8; N]> {
    let mut bytes = [0u8; N];
    std::io::Read::read_exact(
        &mut std::fs::File::open("/dev/urandom").map_err(internal)?,
        &mut bytes,
    )
    .map_err(internal)?;
    Ok(bytes)
}

/// A fresh boot id in the kernel's format (a random UUID, lowercase, newline-terminated).
fn new_boot_id() -> InfraResult<String> {
    let mut b: [u8; 16] = random_bytes()?;
    // Version 4, variant 1, as the kernel's.
    b[6] = (b[6] & 0x0f) | 0x40;
    b[8] = (b[8] & 0x3f) | 0x80;
    let h: String = b.iter().map(|x| format!("{x:02x}")).collect();
    Ok(format!(
        "{}-{}-{}-{}-{}\n",
        &h[0..8],
        &h[8..12],
        &h[12..16],
        &h[16..20],
        &h[20..32]
    ))
}

/// A fresh bootstrap token: 32 random bytes, hex.
fn new_token() -> InfraResult<String> {
    paddock_contract::random_hex(32).map_err(internal)
}

impl EmbeddedInfra {
    /// Creates a sandbox for `req`: from the template's warm pool when one is ready, else cold.
    pub(super) async fn create_sandbox(&self, req: CreateSandbox) -> InfraResult<SandboxInfo> {
        let tspec = self
            .inner
            .templates
            .get(&req.template)
            .map_err(template_err)?
            .clone();
        let mut limits = req.limits.clone().unwrap_or_else(|| tspec.limits.clone());
        // No sandbox runs without a disk limit (security review H5).
        limits
            .disk_bytes
            .get_or_insert(self.inner.cfg.default_disk_bytes);
        limits.validate()?;
        // A pool member's disk was made with the template's limit and cannot be resized, so
        // a request for another limit is created cold.
        let claim = if limits.disk_bytes == tspec.limits.disk_bytes {
            self.claim(&req.template, req.create_on_no_stock).await
        } else {
            None
        };
        if let Some(claimed) = claim {
            let rec = claimed.rec;
            let span = info_span!("sandbox_claim", id = %rec.id, template = %req.template);
            let id = rec.id.clone();
            return match self
                .hand_out(rec, req, limits, claimed.ready)
                .instrument(span.clone())
                .await
            {
                Ok(info) => Ok(info),
                Err(e) => {
                    // Out of the pool and not handed out: nothing would ever use it again.
                    span.in_scope(|| warn!(error = %e, "claim failed; removing the sandbox"));
                    self.discard(&id, "failed claim").await;
                    Err(e)
                }
            };
        }
        // The original's `create-on-no-stock: "false"`: no cold start, the caller retries or
        // waits for the pool instead.
        if !req.create_on_no_stock {
            return Err(InfraError::NoStock {
                template: req.template,
            });
        }
        // Labels (`req.labels`) are not kept here: an embedded sandbox has no label concept;
        // the manager lists them as part of the sandbox's metadata from its own record.
        let info = self
            .cold_create(
                &req.template,
                limits,
                req.allow_internet_access,
                req.metadata,
                false,
            )
            .await?;
        if req.lease.is_some() {
            let mut rec = self.record(&info.id)?;
            apply_lease(&mut rec, req.lease.as_ref());
            self.save_async(&rec).await?;
        }
        Ok(info)
    }

    /// Makes a sandbox taken from the pool the caller's: its limits, internet access, labels
    /// and lease, recorded durably before it is handed out (a restart must not put it back
    /// in the pool). The host work (cgroup, `nft`, the store's sync) runs on the blocking
    /// pool; a pool member already has internet access (see [`Self::layered_create`]), so
    /// the usual claim changes no firewall state at all.
    async fn hand_out(
        &self,
        mut rec: SandboxRecord,
        req: CreateSandbox,
        limits: Limits,
        ready: bool,
    ) -> InfraResult<SandboxInfo> {
        let resize = (limits != rec.limits).then(|| limits.clone());
        let egress =
            (req.allow_internet_access != rec.allow_internet).then_some(req.allow_internet_access);
        rec.limits = limits;
        rec.allow_internet = req.allow_internet_access;
        rec.metadata = req.metadata;
        rec.pooled = false;
        apply_lease(&mut rec, req.lease.as_ref());
        let me = self.clone();
        let saved = rec.clone();
        blocking(move || -> InfraResult<()> {
            if let Some(l) = resize {
                let cg = me.inner.cgroups.sandbox(saved.id.as_str());
                cg.apply(&cgroup_limits(&l)).map_err(internal)?;
            }
            if let Some(allow) = egress {
                network::set_egress(&me.inner.cfg.net, saved.ip, allow).map_err(internal)?;
            }
            me.inner.store.put(&saved).map_err(internal)
        })
        .await??;
        if let Some(e) = self.state().sandboxes.get_mut(&rec.id) {
            e.rec = rec.clone();
        }
        info!(waited = !ready, "claimed from warm pool");
        let mut info = self.info(&rec);
        // Warm: ready when asked for; a member made while the create waited is not.
        info.from_pool = ready;
        Ok(info)
    }

    pub(super) async fn cold_create(
        &self,
        template: &str,
        limits: Limits,
        allow_internet: bool,
        metadata: std::collections::BTreeMap<String, String>,
        pooled: bool,
    ) -> InfraResult<SandboxInfo> {
        let from = Layered {
            template: template.to_owned(),
            ..Layered::default()
        };
        self.layered_create(from, limits, allow_internet, metadata, pooled)
            .await
    }

    /// A cold create on the template's layers, with a snapshot's layers over them and the
    /// writable layer seeded from a copy when `from` says so.
    pub(super) async fn layered_create(
        &self,
        from: Layered,
        limits: Limits,
        allow_internet: bool,
        metadata: std::collections::BTreeMap<String, String>,
        pooled: bool,
    ) -> InfraResult<SandboxInfo> {
        let template = from.template.as_str();
        // A pool member starts with internet access, as most claims want it (E2B's default):
        // claiming it then needs no firewall change, and one that must not have access loses
        // it before it is handed out. Until then only the runtime runs in it.
        let allow_internet = allow_internet || pooled;
        let mut layers = from.layers.clone();
        let me = self.clone();
        let name = template.to_owned();
        layers.extend(
            blocking(move || {
                me.inner
                    .templates
                    .sandbox_layers(&name, &|line| info!(target: "paddock::template", "{line}"))
            })
            .await?
            .map_err(template_err)?,
        );
        self.inner.create_rate.acquire().await;
        let id = new_id()?;
        let ip = self.allocate_ip()?;
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
            bootstrap_token: Some(new_token()?),
            paused_in: None,
            timeout_pause: Default::default(),
            relaunch: None,
            snapshot: from.snapshot.clone(),
        };
        // Record first: if we crash from here on, recovery finds and cleans the leftovers.
        let me = self.clone();
        let first = rec.clone();
        if let Err(e) = blocking(move || me.inner.store.put(&first).map_err(internal))
            .await
            .and_then(|r| r)
        {
            self.state().used_ips.remove(&ip);
            return Err(e);
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
        match self
            .bring_up(rec, layers, from.seed)
            .instrument(span.clone())
            .await
        {
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
                self.discard(&id, "failed create").await;
                Err(e)
            }
        }
    }

    /// Tears down a sandbox nobody will get (its create or claim failed) and forgets it.
    async fn discard(&self, id: &SandboxId, after: &'static str) {
        if let Err(te) = self.teardown(id).await {
            warn!(%id, error = %te, after, "cleanup failed");
        }
        self.state().sandboxes.remove(id);
    }

    pub(super) async fn bring_up(
        &self,
        mut rec: SandboxRecord,
        layers: Vec<PathBuf>,
        seed: Option<PathBuf>,
    ) -> InfraResult<SandboxInfo> {
        let paths = self.paths(&rec.id);
        let cfg = self.inner.cfg.clone();
        let limits = rec.limits.clone();
        let userns = self.inner.userns.clone();
        let cg = self.inner.cgroups.sandbox(rec.id.as_str());
        let warmer = self.inner.cgroup_warmer.clone();
        let t0 = Instant::now();
        blocking(move || -> InfraResult<()> {
            // The container's first cgroup move waits for a grace period after a quiet
            // spell: one is started here, to run beside the disk work. The sandbox's cgroup is
            // made first: making a cgroup waits for the cgroup mutex, which the warming move
            // holds through its grace period. (A failed create's teardown removes it.)
            cg.create().map_err(internal)?;
            if let Some(w) = &warmer {
                w.kick();
            }
            // Every sandbox has a disk limit (see `create_sandbox`); one that cannot be
            // enforced fails the create rather than being ignored (security review H5).
            let bytes = limits.disk_bytes.unwrap_or(cfg.default_disk_bytes);
            // The directory of what lasts on disk: the disk's image and the log.
            std::fs::create_dir_all(&paths.dir).map_err(internal)?;
            disk::mount_limited(
                &paths.disk(),
                &paths.disk_image(),
                &cfg.data_dir.join(DISK_BLANKS),
                bytes,
                cfg.disk_backend,
            )
            .map_err(internal)?;
            debug!(ms = ms_since(t0), "phase: disk image");
            for d in [paths.upper(), paths.work(), paths.rootfs(), paths.bundle()] {
                std::fs::create_dir_all(&d).map_err(internal)?;
            }
            // A fork starts from a copy of its original's writable layer, on its own disk (so
            // under its own limit).
            if let Some(seed) = &seed {
                crate::snapshot::copy_tree(seed, &paths.upper(), false).map_err(internal)?;
            }
            let t = Instant::now();
            mounts::mount_overlay_mapped(
                &layers,
                &paths.upper(),
                &paths.work(),
                &paths.layer_views(),
                &paths.rootfs(),
                userns.as_deref(),
            )
            .map_err(internal)?;
            debug!(ms = ms_since(t), "phase: overlay root");
            Ok(())
        })
        .await??;
        debug!(ms = ms_since(t0), "phase: disk and root filesystem");
        self.launch(&mut rec).await?;
        rec.state = rec.state.on(LifecycleEvent::Ready).map_err(|source| {
            InfraError::IllegalTransition {
                id: rec.id.clone(),
                source,
            }
        })?;
        self.save_async(&rec).await?;
        Ok(self.info(&rec))
    }

    /// Boots the sandbox in its mounted root filesystem: cgroup, a fresh boot id, container,
    /// network, start, readiness. Used by every create and by the resume of a filesystem-only
    /// pause (the same rootfs, address and cgroup name, new processes). Records the new init.
    pub(super) async fn launch(&self, rec: &mut SandboxRecord) -> InfraResult<()> {
        let tspec = self
            .inner
            .templates
            .get(&rec.template)
            .map_err(template_err)?
            .clone();
        let paths = self.paths(&rec.id);
        let cg = self.inner.cgroups.sandbox(rec.id.as_str());
        let cfg = self.inner.cfg.clone();
        let seccomp = self.inner.seccomp.clone();
        let state_root = self.state_root();
        let me = self.clone();
        let (id, limits) = (rec.id.clone(), rec.limits.clone());
        let user = parse_user(tspec.user.as_deref())?;
        // The runtime requires this token from its first request on (security review M4):
        // through the environment, not the command line, which any host user can read in
        // /proc. The runtime clears its environment for the processes it starts.
        let mut env = tspec.env.clone();
        if let Some(token) = &rec.bootstrap_token {
            env.insert(RUNTIME_TOKEN_ENV.to_owned(), token.clone());
        }
        // No upload can be larger than the disk it goes to: the runtime refuses one past the
        // limit up front (413) instead of filling the disk first (security review H5).
        if let Some(bytes) = rec.limits.disk_bytes {
            env.insert(RUNTIME_MAX_UPLOAD_ENV.to_owned(), bytes.to_string());
        }
        // The runtime's word that it listens comes on a pipe (see `paddock_contract::ready`).
        let (ready_rx, ready_tx) =
            nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).map_err(internal)?;
        env.insert(
            paddock_contract::ready::READY_FD_ENV.to_owned(),
            paddock_contract::ready::READY_FD.to_string(),
        );
        let boot_id = new_boot_id()?;
        let t = Instant::now();
        let pid = blocking(move || -> InfraResult<i32> {
            // Each boot has its own id, as a machine's (E2B's reboot tests read it).
            std::fs::write(paths.boot_id(), boot_id).map_err(internal)?;
            // A create made the cgroup already (see `bring_up`; this is a no-op then); a
            // filesystem-only pause removed its sandbox's, and its reboot comes here.
            cg.create().map_err(internal)?;
            cg.apply(&cgroup_limits(&limits)).map_err(internal)?;
            let v = spec::build(&spec::SpecInput {
                hostname: id.as_str(),
                rootfs: &paths.rootfs(),
                cgroup_path: cg.oci_path(),
                init_binary: &cfg.init_binary,
                runtime_binary: &cfg.runtime_binary,
                runtime_args: &cfg.runtime_args,
                env: &env,
                user,
                resolv_conf: cfg.resolv_conf.as_deref(),
                tmp_bytes: cfg.tmp_bytes,
                boot_id: Some(spec::BootId {
                    file: &paths.boot_id(),
                    hook: &cfg.hook_binary,
                }),
                userns: cfg.userns,
                seccomp: &seccomp,
            });
            spec::write(&paths.bundle(), &v).map_err(internal)?;
            debug!(ms = ms_since(t), "phase: cgroup and bundle");
            let t = Instant::now();
            let created = container::create(
                &me.inner.helper,
                &state_root,
                id.as_str(),
                &paths.bundle(),
                &paths.log(),
                &cfg.relay_binary,
                &paths.rootfs(),
                Some(std::os::fd::AsFd::as_fd(&ready_tx)),
            )
            .map_err(internal)?;
            // Only the sandbox's processes hold the write end now: EOF says they are gone.
            drop(ready_tx);
            debug!(ms = ms_since(t), "phase: container create");
            // The relay goes with the sandbox: killed by its teardown, charged to its memory,
            // and out of Paddock's own cgroup, so a Paddock restart does not end it.
            cg.add_process(created.relay_pid).map_err(internal)?;
            Ok(created.init_pid)
        })
        .await??;
        rec.init_pid = pid;
        rec.init_start_ticks = proc::start_ticks(pid).unwrap_or(0);
        // The network is wired while the container starts: the runtime needs none to start
        // (it listens on the unspecified address, and its kernels start on first use, long
        // after readiness). Nothing reaches the sandbox before both are done: the host's
        // port comes up last, bound beforehand, and readiness is polled after both.
        let rec: &SandboxRecord = rec;
        let attach = async {
            let t = Instant::now();
            let r = network::attach(&self.inner.cfg.net, pid, rec.ip, rec.allow_internet)
                .await
                .map_err(network::NetError::into_infra);
            debug!(ms = ms_since(t), "phase: network attach");
            r
        };
        let start = async {
            self.save_async(rec).await?;
            debug!(ms = ms_since(t), "phase: container created and recorded");
            let t = Instant::now();
            let (root, id) = (self.state_root(), rec.id.clone());
            let me = self.clone();
            blocking(move || container::start(&me.inner.helper, &root, id.as_str()))
                .await?
                .map_err(internal)?;
            debug!(ms = ms_since(t), "phase: container start");
            Ok::<_, InfraError>(())
        };
        let t = Instant::now();
        let (attached, started) = tokio::join!(attach, start);
        attached?;
        started?;
        debug!(
            ms = ms_since(t),
            "phase: network attach and container start"
        );
        let t = Instant::now();
        let r = self.wait_ready(rec, Some(ready_rx)).await;
        debug!(ms = ms_since(t), by = ?r.as_ref().ok(), "phase: readiness");
        r.map(drop)
    }

    /// Waits until the runtime answers `GET /health` with 2xx, the init dies, or the timeout
    /// passes. `ready`, the read end of the sandbox's readiness pipe, says when to ask: the
    /// runtime writes to it once it listens (see `paddock_contract::ready`), so one probe
    /// usually does. Without a word from it in the first second (a runtime that gives none,
    /// or a host too busy to start one sooner) the port is probed as it always was.
    pub(super) async fn wait_ready(
        &self,
        rec: &SandboxRecord,
        ready: Option<std::os::fd::OwnedFd>,
    ) -> InfraResult<ReadyBy> {
        let addr = SocketAddr::new(rec.ip.into(), spec::RUNTIME_PORT);
        let started = Instant::now();
        let deadline = started + self.inner.cfg.ready_timeout;
        let died = || {
            let log = std::fs::read_to_string(self.paths(&rec.id).log()).unwrap_or_default();
            InfraError::SandboxFailed {
                id: rec.id.clone(),
                reason: format!("init exited while starting; output: {}", tail(&log, 800)),
            }
        };
        let (pid, ticks) = (rec.init_pid, rec.init_start_ticks);
        // Fine polls from a blocking thread (see `crate::readiness`) until `until`: the first
        // probe goes at once, and a SYN lost while the sandbox's network comes up costs a
        // 20 ms retry there, not the half second an async connect would wait for it (5 of
        // 200 cold creates lost one right after the word).
        let fine = |until: Instant| {
            blocking(move || readiness::wait_healthy(addr, until, || proc::alive(pid, ticks)))
        };
        let mut pipe = ready.and_then(|fd| {
            tokio::net::unix::pipe::Receiver::from_owned_fd(fd)
                .inspect_err(|e| warn!(error = %e, "readiness pipe unusable; probing instead"))
                .ok()
        });
        let first_second = (started + Duration::from_secs(1)).min(deadline);
        // Without a pipe, a runtime starts in a few milliseconds: the first second is polled
        // finely. With one, nothing is probed until the word comes or the first second has
        // passed; then the port is probed gently while the host still listens for the word.
        let mut fine_until = pipe.is_none().then_some(first_second);
        let mut wait = pipe.is_some().then_some(first_second);
        let mut by = ReadyBy::Probes;
        loop {
            let heard = match (wait.take(), pipe.as_mut()) {
                (None, _) => None,
                (Some(until), Some(p)) => tokio::time::timeout_at(until.into(), readiness::word(p))
                    .await
                    .ok(),
                (Some(until), None) => {
                    tokio::time::sleep_until(until.into()).await;
                    None
                }
            };
            if let Some(w) = heard {
                // Closed without the word: the init is gone (found below) or the runtime
                // gave none; either way the pipe says nothing more.
                pipe = None;
                if w == readiness::Word::Listening {
                    by = ReadyBy::Word;
                    fine_until = Some((Instant::now() + Duration::from_secs(1)).min(deadline));
                }
            }
            if let Some(until) = fine_until.take() {
                match fine(until).await? {
                    readiness::Outcome::Healthy => return Ok(by),
                    readiness::Outcome::Died => return Err(died()),
                    readiness::Outcome::TimedOut => {}
                }
            }
            if !proc::alive(pid, ticks) {
                return Err(died());
            }
            if paddock_contract::client::probe_health(addr).await {
                return Ok(by);
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
            // The next probe in 50 ms, or fine polls as soon as the runtime says it listens.
            wait = Some(Instant::now() + Duration::from_millis(50));
        }
    }
}

/// How [`EmbeddedInfra::wait_ready`] learnt that a runtime answers (for the phase timings).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum ReadyBy {
    /// Its word, then probes (one, unless its first SYN was lost).
    Word,
    /// Probing its port.
    Probes,
}

/// Milliseconds since `t`, fractional, for the phase timings of a create (debug level).
fn ms_since(t: Instant) -> f64 {
    t.elapsed().as_secs_f64() * 1000.0
}

/// Keeps what a sandbox booted again needs from its creator's lease.
fn apply_lease(rec: &mut SandboxRecord, lease: Option<&paddock_infra::Lease>) {
    if let Some(l) = lease {
        rec.timeout_pause = l.timeout_pause;
        rec.relaunch = Some(crate::store::Relaunch {
            access_token: l.access_token.clone(),
            env_vars: l.env_vars.clone(),
        });
    }
}

/// What a cold create builds on besides the template.
#[derive(Debug, Clone, Default)]
pub(super) struct Layered {
    /// The template (its layers are the lowest).
    pub(super) template: String,
    /// Read-only layers over the template's, topmost first (a snapshot's).
    pub(super) layers: Vec<PathBuf>,
    /// The snapshot `layers` belong to, recorded so it is not deleted under the sandbox.
    pub(super) snapshot: Option<String>,
    /// A tree copied into the new writable layer before the sandbox starts (a fork's).
    pub(super) seed: Option<PathBuf>,
}

/// `uid[:gid]`, numeric.
pub(super) fn parse_user(u: Option<&str>) -> InfraResult<(u32, u32)> {
    let Some(u) = u else { return Ok((0, 0)) };
    let bad = || internal(super::EmbeddedError::BadUser(u.to_owned()));
    let (uid, gid) = u.split_once(':').unwrap_or((u, u));
    Ok((
        uid.parse().map_err(|_| bad())?,
        gid.parse().map_err(|_| bad())?,
    ))
}

pub(super) fn tail(s: &str, n: usize) -> &str {
    let start = s.len().saturating_sub(n);
    let start = (start..s.len())
        .find(|i| s.is_char_boundary(*i))
        .unwrap_or(s.len());
    &s[start..]
}
