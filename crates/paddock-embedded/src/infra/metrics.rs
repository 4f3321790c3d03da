//! Resource usage of sandboxes, read from their cgroups and their disks.

use std::path::PathBuf;
use std::time::Instant;

use paddock_cgroups::{Cgroup, CgroupStats};
use paddock_infra::{InfraError, InfraResult, PauseMode, SandboxId, SandboxMetrics};

use super::{EmbeddedInfra, blocking, internal};
use crate::{disk, proc};

/// What one read needs, taken from the record before going to a blocking thread.
struct Probe {
    /// `None` when nothing runs (paused filesystem-only: no processes, no cgroup).
    cgroup: Option<Box<dyn Cgroup>>,
    disk: PathBuf,
    upper: PathBuf,
    memory_limit_bytes: u64,
}

/// What a read found: the cgroup's counters (when it has one), the bytes on disk, and the
/// sandbox's memory limit from its record.
type Read = (Option<CgroupStats>, u64, u64);

impl EmbeddedInfra {
    /// The body of [`paddock_infra::Infra::metrics`].
    pub(super) async fn sandbox_metrics(&self, id: &SandboxId) -> InfraResult<SandboxMetrics> {
        let mut one = self.sandbox_metrics_many(vec![id.clone()]).await;
        match one.pop() {
            Some((_, r)) => r,
            None => Err(InfraError::NotFound(id.clone())),
        }
    }

    /// The body of [`paddock_infra::Infra::metrics_many`]: every sandbox in one trip to a
    /// blocking thread. The manager samples every running sandbox every 5 s; one blocking
    /// task per sandbox made a thousand idle sandboxes cost `paddock up` a thread pool's worth
    /// of wake-ups on each tick.
    pub(super) async fn sandbox_metrics_many(
        &self,
        ids: Vec<SandboxId>,
    ) -> Vec<(SandboxId, InfraResult<SandboxMetrics>)> {
        let probes: Vec<InfraResult<Probe>> = ids
            .iter()
            .map(|id| {
                let rec = self.record(id)?;
                let paths = self.paths(id);
                let paused_fs = rec.paused_in == Some(PauseMode::Filesystem);
                Ok(Probe {
                    cgroup: (!paused_fs).then(|| self.inner.cgroups.sandbox(id.as_str())),
                    disk: paths.disk(),
                    upper: paths.upper(),
                    memory_limit_bytes: rec.limits.memory_bytes,
                })
            })
            .collect();
        let reads = blocking(move || {
            probes
                .into_iter()
                .map(|p| -> InfraResult<Read> {
                    let p = p?;
                    let stats = p
                        .cgroup
                        .map(|cg| cg.stats())
                        .transpose()
                        .map_err(internal)?;
                    Ok((stats, disk_used(&p.disk, &p.upper), p.memory_limit_bytes))
                })
                .collect::<Vec<_>>()
        })
        .await;
        let reads = match reads {
            Ok(r) => r,
            Err(e) => {
                return ids
                    .into_iter()
                    .map(|id| (id, Err(internal(std::io::Error::other(e.to_string())))))
                    .collect();
            }
        };
        let now = Instant::now();
        let mut st = self.state();
        ids.into_iter()
            .zip(reads)
            .map(|(id, read)| {
                let metrics = read.and_then(|(stats, disk_bytes, limit)| {
                    let Some(stats) = stats else {
                        return Ok(SandboxMetrics {
                            memory_limit_bytes: limit,
                            disk_bytes,
                            ..SandboxMetrics::default()
                        });
                    };
                    let e = st
                        .sandboxes
                        .get_mut(&id)
                        .ok_or_else(|| InfraError::NotFound(id.clone()))?;
                    // CPU use since the previous read of this sandbox.
                    let cpu_percent = match e.last_cpu {
                        Some((t, used)) if now > t => {
                            let dt = now.duration_since(t).as_nanos() as f64;
                            stats.cpu_usage_ns.saturating_sub(used) as f64 / dt * 100.0
                        }
                        _ => 0.0,
                    };
                    e.last_cpu = Some((now, stats.cpu_usage_ns));
                    Ok(SandboxMetrics {
                        cpu_usage_ns: stats.cpu_usage_ns,
                        cpu_percent,
                        memory_bytes: stats.memory_bytes,
                        memory_limit_bytes: stats.memory_limit_bytes.min(limit),
                        pids: stats.pids,
                        disk_bytes,
                        oom_kills: stats.oom_kills,
                    })
                });
                (id, metrics)
            })
            .collect()
    }
}

/// Bytes in use on a sandbox's disk: one `statvfs` of its own file system (every sandbox has
/// one, see `disk::mount_limited`) instead of a walk of its writable layer, which cost a
/// directory read and a `statx` per file on every sample. A sandbox without a disk of its own
/// (made before disks were) is walked as before.
fn disk_used(disk: &std::path::Path, upper: &std::path::Path) -> u64 {
    disk::used_bytes(disk).unwrap_or_else(|| proc::du(upper))
}
