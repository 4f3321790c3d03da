//! Resource usage of a sandbox, read from its cgroup and writable layer.

use std::time::Instant;

use paddock_infra::{InfraError, InfraResult, SandboxId, SandboxMetrics};

use super::{EmbeddedInfra, blocking, internal};
use crate::proc;

impl EmbeddedInfra {
    /// The body of [`paddock_infra::Infra::metrics`].
    pub(super) async fn sandbox_metrics(&self, id: &SandboxId) -> InfraResult<SandboxMetrics> {
        let rec = self.record(id)?;
        if rec.paused_in == Some(paddock_infra::PauseMode::Filesystem) {
            // No process, no cgroup: nothing runs and no memory is held.
            let upper = self.paths(id).upper();
            return Ok(SandboxMetrics {
                memory_limit_bytes: rec.limits.memory_bytes,
                disk_bytes: blocking(move || proc::du(&upper)).await?,
                ..SandboxMetrics::default()
            });
        }
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
}
