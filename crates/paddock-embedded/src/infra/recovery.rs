//! Reconciling the records with what is really on the host after a restart.

use std::collections::BTreeSet;

use paddock_infra::{InfraResult, PauseMode, SandboxId, SandboxState};
use tracing::{info, warn};

use super::state::Entry;
use super::{EmbeddedInfra, internal};
use crate::store::SandboxRecord;
use crate::{network, proc};

impl EmbeddedInfra {
    pub(super) async fn recover(&self) -> InfraResult<()> {
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
            // Paused filesystem-only: no process to find, only its mounted writable layer.
            let fs_paused = rec.state == SandboxState::Paused
                && rec.paused_in == Some(PauseMode::Filesystem)
                && crate::mounts::is_mount_point(&self.paths(&rec.id).rootfs());
            if fs_paused {
                info!(id = %rec.id, "adopting sandbox paused filesystem-only");
                adopted.insert(self.adopt(rec));
            } else if live {
                info!(id = %rec.id, state = %rec.state, "adopting sandbox");
                if let Err(e) = network::rebind(&self.inner.cfg.net, rec.ip, rec.allow_internet) {
                    warn!(id = %rec.id, error = %e, "re-binding the sandbox's network failed");
                }
                if let Err(e) = network::repin(&self.inner.cfg.net, rec.ip).await {
                    warn!(id = %rec.id, error = %e, "pinning the sandbox's addresses failed");
                }
                adopted.insert(self.adopt(rec));
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

    /// Takes a sandbox found alive (or paused on disk) back: its address stays taken, a pool
    /// member goes back to its pool. Returns its id, for the sweep to keep.
    fn adopt(&self, rec: SandboxRecord) -> String {
        let id = rec.id.as_str().to_owned();
        let mut st = self.state();
        st.used_ips.insert(rec.ip);
        if rec.pooled {
            st.pools
                .entry(rec.template.clone())
                .or_default()
                .ready
                .push_back(rec.id.clone());
        }
        st.sandboxes.insert(
            rec.id.clone(),
            Entry {
                rec,
                last_cpu: None,
                dead_reason: None,
            },
        );
        id
    }

    /// Removes resources that carry our names but belong to no adopted sandbox.
    pub(super) async fn sweep_orphans(&self, keep: &BTreeSet<String>) -> InfraResult<()> {
        let mut orphans: BTreeSet<String> = self
            .inner
            .cgroups
            .list()
            .map_err(internal)?
            .into_iter()
            .collect();
        let data = &self.inner.cfg.data_dir;
        for dir in [
            data.join("sandboxes"),
            crate::rundir::sandboxes(data),
            self.state_root(),
            data.join(super::LEGACY_CONTAINERS_DIR),
        ] {
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
        let keep_ips: BTreeSet<std::net::Ipv4Addr> =
            self.state().sandboxes.values().map(|e| e.rec.ip).collect();
        let keep_veths: BTreeSet<String> = keep_ips
            .iter()
            .map(|ip| self.inner.cfg.net.veth_name(*ip))
            .collect();
        for veth in network::host_veths(&self.inner.cfg.net)
            .await
            .map_err(internal)?
        {
            if !keep_veths.contains(&veth) {
                network::delete_link(&veth).await.map_err(internal)?;
            }
        }
        network::unpin_all_but(&self.inner.cfg.net, &keep_ips)
            .await
            .map_err(internal)?;
        Ok(())
    }
}
