//! Pausing and resuming: the freezer (memory kept) and the filesystem-only pause (processes
//! ended, memory freed, the writable layer kept; resume boots the sandbox again).

use std::time::Instant;

use paddock_infra::{InfraError, InfraResult, LifecycleEvent, PauseMode, SandboxId, SandboxInfo};
use tracing::{Instrument, info, info_span, warn};

use super::{EmbeddedInfra, blocking, internal};
use crate::store::SandboxRecord;
use crate::{container, network};

/// Why the checkpoint mode is refused here, in words for the caller.
/// The checkpoint mode, as the caller is told it is missing ("... is not supported by this
/// backend").
pub(super) const CHECKPOINT_UNSUPPORTED: &str = "checkpoint pause (CRIU: Debian's CRIU 3.17 \
     fails its kernel check on current kernels; pause with memory, the default, or \
     filesystem-only)";

impl EmbeddedInfra {
    /// The body of [`paddock_infra::Infra::pause_in`].
    pub(super) async fn pause_sandbox(
        &self,
        id: &SandboxId,
        mode: PauseMode,
    ) -> InfraResult<SandboxInfo> {
        let span = info_span!("sandbox_pause", %id, mode = mode.as_str());
        async {
            let started = Instant::now();
            let _guard = self.lifecycle_lock(id).lock_owned().await;
            let mut rec = self.transition(id, LifecycleEvent::Pause)?;
            match mode {
                PauseMode::Memory => {
                    let cg = self.inner.cgroups.sandbox(id.as_str());
                    blocking(move || cg.freeze()).await?.map_err(internal)?;
                }
                PauseMode::Filesystem => {
                    // Recorded as paused with no init first: the monitor must not take the
                    // init's end for the sandbox's death.
                    let running = rec.clone();
                    rec.paused_in = Some(mode);
                    rec.init_pid = 0;
                    rec.init_start_ticks = 0;
                    self.save(&rec)?;
                    self.stop_processes(&running).await?;
                }
                PauseMode::Checkpoint => {
                    return Err(InfraError::Unsupported(CHECKPOINT_UNSUPPORTED));
                }
            }
            rec.paused_in = Some(mode);
            self.save(&rec)?;
            info!(elapsed_ms = started.elapsed().as_millis() as u64, "paused");
            Ok(self.info(&rec))
        }
        .instrument(span)
        .await
    }

    /// The body of [`paddock_infra::Infra::resume`]: thaws a frozen sandbox, boots one paused
    /// filesystem-only again.
    pub(super) async fn resume_sandbox(&self, id: &SandboxId) -> InfraResult<SandboxInfo> {
        let span = info_span!("sandbox_resume", %id);
        async {
            let started = Instant::now();
            let _guard = self.lifecycle_lock(id).lock_owned().await;
            let mut rec = self.transition(id, LifecycleEvent::Resume)?;
            match rec.paused_in.unwrap_or_default() {
                PauseMode::Memory => {
                    let cg = self.inner.cgroups.sandbox(id.as_str());
                    blocking(move || cg.thaw()).await?.map_err(internal)?;
                }
                PauseMode::Filesystem => {
                    let paused = self.record(id)?;
                    if let Err(e) = self.reboot(&mut rec).await {
                        warn!(error = %e, "booting the sandbox again failed; it stays paused");
                        // Paused again before the failed boot's init is ended (see pause), and
                        // nothing of that boot left: a later resume starts clean.
                        self.save(&paused)?;
                        if let Err(c) = self.stop_processes(&rec).await {
                            warn!(error = %c, "cleaning up the failed boot");
                        }
                        return Err(e);
                    }
                }
                PauseMode::Checkpoint => {
                    return Err(InfraError::Unsupported(CHECKPOINT_UNSUPPORTED));
                }
            }
            rec.paused_in = None;
            self.save(&rec)?;
            info!(elapsed_ms = started.elapsed().as_millis() as u64, "resumed");
            Ok(self.info(&rec))
        }
        .instrument(span)
        .await
    }

    /// The body of [`paddock_infra::Infra::pause_on_timeout`].
    pub(super) async fn pause_for_timeout(&self, id: &SandboxId) -> InfraResult<SandboxInfo> {
        let mode = self.record(id)?.timeout_pause;
        self.pause_sandbox(id, mode).await
    }

    /// Ends every process of the sandbox and releases what only running processes hold (the
    /// container's state, the veth, the cgroup and so the memory charged to it); keeps the
    /// mounted writable layer, the address and the record.
    async fn stop_processes(&self, rec: &SandboxRecord) -> InfraResult<()> {
        let cg = self.inner.cgroups.sandbox(rec.id.as_str());
        let root = self.state_root();
        let (id, pid) = (rec.id.clone(), rec.init_pid);
        blocking(move || -> InfraResult<()> {
            if cg.exists() {
                cg.kill_all().map_err(internal)?;
            }
            if pid > 0 {
                // Our child when we started it: reap it (a no-op for adopted ones).
                let _ = container::try_reap(pid);
            }
            container::forget(&root, id.as_str());
            cg.remove().map_err(internal)
        })
        .await??;
        network::detach(&self.inner.cfg.net, rec.ip)
            .await
            .map_err(internal)
    }

    /// Boots a sandbox paused filesystem-only again in its kept root filesystem, and gives its
    /// new runtime the creator's token and environment.
    async fn reboot(&self, rec: &mut SandboxRecord) -> InfraResult<()> {
        self.launch(rec).await?;
        let Some(r) = rec.relaunch.clone() else {
            // A sandbox never handed out with a lease (created directly on the infra): its
            // runtime keeps the bootstrap token, as after its first boot.
            return Ok(());
        };
        let init = paddock_contract::InitRequest {
            env_vars: Some(r.env_vars),
            access_token: Some(r.access_token),
            default_user: Some(paddock_contract::DEFAULT_USER.into()),
            default_workdir: None,
            timestamp: Some(now_rfc3339()),
        };
        paddock_contract::client::RuntimeClient::new()
            .init(
                std::net::SocketAddr::new(rec.ip.into(), crate::spec::RUNTIME_PORT),
                &init,
                rec.bootstrap_token.as_deref(),
            )
            .await
            .map_err(|e| InfraError::SandboxFailed {
                id: rec.id.clone(),
                reason: format!("initialising the booted runtime failed: {e}"),
            })
    }
}

/// Now as RFC 3339, for the runtime's log.
fn now_rfc3339() -> String {
    time::OffsetDateTime::now_utc()
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_default()
}
