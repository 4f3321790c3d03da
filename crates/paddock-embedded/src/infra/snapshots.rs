//! Snapshots of a sandbox's writable layer, sandboxes made from them, and forks.
//!
//! Only the filesystem is captured ([`SnapshotKind::Filesystem`]): a sandbox made from a
//! snapshot, or forked, boots afresh on the captured files. The sandbox is frozen (its
//! cgroup's freezer) while its writable layer is copied, so the copy is one consistent
//! moment of it, and thawed right after; a paused sandbox is frozen already and stays so.

use std::path::PathBuf;
use std::time::Instant;

use paddock_infra::{
    CreateSandbox, CreateSnapshot, InfraError, InfraResult, SandboxId, SandboxInfo, SandboxState,
    SnapshotInfo, SnapshotKind,
};
use tracing::{Instrument, info, info_span};

use super::create::{Layered, new_id};
use super::{EmbeddedInfra, blocking, internal, now_ms};
use crate::snapshot::SnapshotStore;
use crate::store::SandboxRecord;

impl EmbeddedInfra {
    fn snapshot_store(&self) -> SnapshotStore {
        self.inner.snapshots.clone()
    }

    /// The record of a sandbox whose state can be captured: handed out, running or paused.
    fn capturable(&self, id: &SandboxId) -> InfraResult<SandboxRecord> {
        let rec = self.record(id)?;
        if rec.pooled {
            return Err(InfraError::NotFound(id.clone()));
        }
        match rec.state {
            SandboxState::Running | SandboxState::Paused => Ok(rec),
            other => Err(InfraError::Conflict(format!(
                "sandbox {id} is {other}: only a running or paused sandbox can be captured"
            ))),
        }
    }

    /// The layers of the snapshot under `rec`'s writable layer (none if it has none).
    fn parent_layers(&self, rec: &SandboxRecord) -> InfraResult<Vec<PathBuf>> {
        let Some(parent) = &rec.snapshot else {
            return Ok(Vec::new());
        };
        self.snapshot_store()
            .layers(parent)
            .map_err(internal)?
            .ok_or_else(|| {
                internal(super::EmbeddedError::MissingSnapshot {
                    sandbox: rec.id.to_string(),
                    snapshot: parent.clone(),
                })
            })
    }

    /// Runs `copy` with the sandbox frozen, thawing it afterwards unless it is (or was
    /// meanwhile) paused.
    async fn frozen<T: Send + 'static>(
        &self,
        rec: &SandboxRecord,
        copy: impl FnOnce() -> InfraResult<T> + Send + 'static,
    ) -> InfraResult<T> {
        let cg = self.inner.cgroups.sandbox(rec.id.as_str());
        let freeze = rec.state == SandboxState::Running;
        let (me, id) = (self.clone(), rec.id.clone());
        blocking(move || {
            if freeze {
                cg.freeze().map_err(internal)?;
            }
            let out = copy();
            // A pause that came in during the copy keeps the sandbox frozen.
            let paused = me
                .record(&id)
                .map(|r| r.state == SandboxState::Paused)
                .unwrap_or(false);
            if freeze && !paused {
                cg.thaw().map_err(internal)?;
            }
            out
        })
        .await?
    }

    pub(super) async fn snapshot_sandbox(&self, req: CreateSnapshot) -> InfraResult<SnapshotInfo> {
        let span = info_span!("sandbox_snapshot", id = %req.sandbox);
        async move {
            let rec = self.capturable(&req.sandbox)?;
            let id = format!("snap-{}", new_id()?);
            let parent = self.parent_layers(&rec)?;
            let store = self.snapshot_store();
            let upper = self.paths(&rec.id).upper();
            let started = Instant::now();
            let (s, sid) = (store.clone(), id.clone());
            let staged = self
                .frozen(&rec, move || {
                    s.stage_layers(&sid, &upper, &parent).map_err(internal)
                })
                .await;
            let frozen_ms = started.elapsed().as_millis() as u64;
            let info = SnapshotInfo {
                id: id.clone(),
                team: req.team,
                name: req.name,
                sandbox_id: rec.id.clone(),
                template: rec.template.clone(),
                limits: rec.limits.clone(),
                kind: SnapshotKind::Filesystem,
                size_bytes: 0,
                created_at_ms: now_ms(),
            };
            let committed = match staged {
                Ok(()) => blocking(move || store.commit(info)).await?.map_err(internal),
                Err(e) => Err(e),
            };
            match committed {
                Ok(info) => {
                    info!(snapshot = %info.id, frozen_ms, bytes = info.size_bytes, "snapshot taken");
                    Ok(info)
                }
                Err(e) => {
                    let s = self.snapshot_store();
                    blocking(move || s.discard(&id)).await?;
                    Err(e)
                }
            }
        }
        .instrument(span)
        .await
    }

    pub(super) async fn list_snapshots(&self) -> InfraResult<Vec<SnapshotInfo>> {
        let store = self.snapshot_store();
        blocking(move || store.list()).await?.map_err(internal)
    }

    pub(super) async fn remove_snapshot(&self, id: &str) -> InfraResult<()> {
        // No sandbox starts on the snapshot's layers while it is being deleted.
        let _no_creates = self.inner.snapshot_use.write().await;
        let users: Vec<String> = self
            .state()
            .sandboxes
            .values()
            .filter(|e| e.rec.snapshot.as_deref() == Some(id))
            .map(|e| e.rec.id.to_string())
            .collect();
        if !users.is_empty() {
            return Err(InfraError::Conflict(format!(
                "snapshot {id} is in use by sandbox(es) {}: its files lie under theirs; kill them first",
                users.join(", ")
            )));
        }
        let (store, sid) = (self.snapshot_store(), id.to_owned());
        match blocking(move || store.delete(&sid))
            .await?
            .map_err(internal)?
        {
            true => {
                info!(snapshot = id, "snapshot deleted");
                Ok(())
            }
            false => Err(InfraError::SnapshotNotFound(id.to_owned())),
        }
    }

    pub(super) async fn create_on_snapshot(
        &self,
        snapshot: &str,
        req: CreateSandbox,
    ) -> InfraResult<SandboxInfo> {
        // Held until the sandbox is recorded as the snapshot's user, so a delete cannot slip
        // in between.
        let _in_use = self.inner.snapshot_use.read().await;
        let store = self.snapshot_store();
        let (s, sid) = (store.clone(), snapshot.to_owned());
        let found = blocking(move || {
            Ok::<_, crate::snapshot::SnapshotError>((s.get(&sid)?, s.layers(&sid)?))
        })
        .await?
        .map_err(internal)?;
        let (Some(snap), Some(layers)) = found else {
            return Err(InfraError::SnapshotNotFound(snapshot.to_owned()));
        };
        let mut limits = req.limits.clone().unwrap_or_else(|| snap.limits.clone());
        limits
            .disk_bytes
            .get_or_insert(self.inner.cfg.default_disk_bytes);
        limits.validate()?;
        let from = Layered {
            template: snap.template.clone(),
            layers,
            snapshot: Some(snap.id.clone()),
            seed: None,
        };
        self.layered_create(from, limits, req.allow_internet_access, req.metadata, false)
            .await
    }

    pub(super) async fn fork_sandbox(
        &self,
        id: &SandboxId,
        reqs: Vec<CreateSandbox>,
    ) -> InfraResult<Vec<InfraResult<SandboxInfo>>> {
        let span = info_span!("sandbox_fork", %id, count = reqs.len());
        async move {
            let _in_use = self.inner.snapshot_use.read().await;
            let rec = self.capturable(id)?;
            let layers = self.parent_layers(&rec)?;
            let store = self.snapshot_store();
            // The original's writable layer is copied once, frozen, and each fork's writable
            // layer starts as a copy of that copy: the original is frozen only as long as
            // one copy takes, whatever the count.
            let stage = format!("fork-{}", new_id()?);
            let staged = store.staging(&stage).join("upper");
            let upper = self.paths(&rec.id).upper();
            let (dir, to) = (store.staging(&stage), staged.clone());
            let started = Instant::now();
            let copied = self
                .frozen(&rec, move || {
                    crate::private_dir::create_private_dir(&dir).map_err(internal)?;
                    crate::snapshot::copy_tree(&upper, &to, false).map_err(internal)
                })
                .await;
            let frozen_ms = started.elapsed().as_millis() as u64;
            let results = match copied {
                Ok(()) => {
                    let creates = reqs.into_iter().map(|req| {
                        let from = Layered {
                            template: rec.template.clone(),
                            layers: layers.clone(),
                            snapshot: rec.snapshot.clone(),
                            seed: Some(staged.clone()),
                        };
                        self.layered_create(
                            from,
                            rec.limits.clone(),
                            req.allow_internet_access,
                            req.metadata,
                            false,
                        )
                    });
                    Ok(futures::future::join_all(creates).await)
                }
                Err(e) => Err(e),
            };
            blocking(move || store.discard(&stage)).await?;
            info!(frozen_ms, "fork done");
            results
        }
        .instrument(span)
        .await
    }
}
