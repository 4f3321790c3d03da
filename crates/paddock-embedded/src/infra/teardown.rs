//! Releasing a sandbox's resources: kill, kill all, and the idempotent teardown under both.

use paddock_infra::{InfraResult, LifecycleEvent, SandboxId, SandboxState};
use tracing::{Instrument, info_span, warn};

use super::{EmbeddedInfra, blocking, internal};
use crate::{container, disk, mounts, network};

impl EmbeddedInfra {
    /// Releases everything of sandbox `id`: processes, mounts, cgroup, veth, address, state
    /// and record. Idempotent and tolerant of half-made sandboxes. Keeps a dead entry in memory
    /// only if the sandbox died on its own (so `get` can report it).
    pub(super) async fn teardown(&self, id: &SandboxId) -> InfraResult<()> {
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
        let legacy_root = self.inner.cfg.data_dir.join(super::LEGACY_CONTAINERS_DIR);
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
            container::forget(&legacy_root, idc.as_str());
            // The disk's loop device, known from its mount before that goes (a sandbox whose
            // disk is not mounted, half made, is looked for among all loop devices).
            let disk_loop = disk::loops_mounted_at(&paths.disk());
            // The root first (it holds the disk's upper and work directories), then the
            // disk; `remove_tree` detaches anything else it meets on its way (the mounts of a
            // sandbox made by an older Paddock, under `dir`, too). Neither reads the host's
            // mount table, which grows with every sandbox.
            mounts::unmount_points(&[paths.rootfs(), paths.disk()]).map_err(internal)?;
            mounts::remove_tree(&paths.run).map_err(internal)?;
            mounts::remove_tree(&paths.dir).map_err(internal)?;
            // The disk image's loop device outlives the lazy unmount by a moment.
            let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
            for file in disk::release_loops_under(&paths.dir, disk_loop, deadline) {
                warn!(id = %idc, image = %file.display(), "loop device still attached");
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
        // A handed-out sandbox that died on its own keeps its tombstone, and with it its
        // address, until `kill`: its user may still route to that address (see
        // `Infra::ended`), so it must not reach the next sandbox (M2). Nobody routes to a
        // pool member, so a dead one is forgotten at once.
        let tombstone = st
            .sandboxes
            .get(id)
            .is_some_and(|e| e.dead_reason.is_some() && !e.rec.pooled);
        if !tombstone {
            if let Some(r) = &rec {
                st.used_ips.remove(&r.ip);
            }
            st.sandboxes.remove(id);
        }
        Ok(())
    }

    /// Drops a sandbox's tombstone and frees the address it held.
    fn forget(&self, id: &SandboxId) {
        let mut st = self.state();
        if let Some(e) = st.sandboxes.remove(id) {
            st.used_ips.remove(&e.rec.ip);
        }
    }

    /// Kills every sandbox, pooled ones included (tests and uninstall).
    pub async fn kill_all(&self) -> InfraResult<()> {
        self.shutdown();
        // Members in the making would appear after the sweep below.
        self.pool_makes_done().await;
        let ids: Vec<SandboxId> = self.state().sandboxes.keys().cloned().collect();
        for id in ids {
            self.mark_dead(&id);
            self.teardown(&id).await?;
            self.forget(&id);
        }
        self.state().pools.clear();
        self.release_run_dir().await
    }

    /// After the last sandbox is gone: ends the fork server (its mount namespace holds the run
    /// tmpfs) and unmounts the run tmpfs, so a stopped Paddock leaves no mount in its data
    /// dir. Kept while any sandbox is recorded: its state is there.
    async fn release_run_dir(&self) -> InfraResult<()> {
        let left = !self.state().sandboxes.is_empty()
            || !self.inner.store.all().map_err(internal)?.is_empty();
        if left {
            warn!("sandboxes left after killing them all: the run tmpfs stays");
            return Ok(());
        }
        self.inner.helper.stop();
        let data = self.inner.cfg.data_dir.clone();
        blocking(move || crate::rundir::unmount(&data))
            .await?
            .map_err(internal)
    }

    /// Kills sandbox `id` (the body of [`paddock_infra::Infra::kill`]).
    pub(super) async fn kill_sandbox(&self, id: &SandboxId) -> InfraResult<()> {
        // Not in the middle of a pause or a resume (a boot would outlive the teardown).
        let lock = self.lifecycle_lock(id);
        let _guard = lock.lock().await;
        let r = self.kill_unlocked(id).await;
        if r.is_ok() {
            self.drop_lifecycle_lock(id);
        }
        r
    }

    async fn kill_unlocked(&self, id: &SandboxId) -> InfraResult<()> {
        let dead_tombstone = self
            .state()
            .sandboxes
            .get(id)
            .is_some_and(|e| e.dead_reason.is_some());
        if dead_tombstone {
            self.forget(id);
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
}
