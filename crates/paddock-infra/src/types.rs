//! Requests and responses of the [`crate::Infra`] trait.

use std::collections::BTreeMap;
use std::net::SocketAddr;

use crate::{SandboxId, SandboxState};

/// Resource limits of one sandbox.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Limits {
    /// CPU limit in thousandths of a CPU (2000 = two CPUs).
    pub cpu_millis: u32,
    /// Memory limit in bytes (RAM; no swap).
    pub memory_bytes: u64,
    /// Maximum number of processes and threads.
    pub pids: u32,
    /// Size limit of the sandbox's writable layer in bytes, where the filesystem can enforce it.
    pub disk_bytes: Option<u64>,
}

/// Limits that can never be applied.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LimitsError {
    /// Less than 1/100 of a CPU, or more than 1024 CPUs.
    #[error("cpu limit {0} millicpus is outside 10..=1024000")]
    Cpu(u32),
    /// Less than 16 MiB (nothing useful starts) or more than 1 TiB.
    #[error("memory limit {0} bytes is outside 16 MiB..=1 TiB")]
    Memory(u64),
    /// Fewer than 8 processes (init + runtime + a shell) or more than 4 194 304.
    #[error("pids limit {0} is outside 8..=4194304")]
    Pids(u32),
    /// A disk limit under 1 MiB.
    #[error("disk limit {0} bytes is under 1 MiB")]
    Disk(u64),
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            cpu_millis: 2000,
            memory_bytes: 512 << 20,
            pids: 1024,
            disk_bytes: None,
        }
    }
}

impl Limits {
    /// Rejects limits that are impossible to apply or to run anything under.
    pub fn validate(&self) -> Result<(), LimitsError> {
        if !(10..=1_024_000).contains(&self.cpu_millis) {
            return Err(LimitsError::Cpu(self.cpu_millis));
        }
        if !((16 << 20)..=(1 << 40)).contains(&self.memory_bytes) {
            return Err(LimitsError::Memory(self.memory_bytes));
        }
        if !(8..=4_194_304).contains(&self.pids) {
            return Err(LimitsError::Pids(self.pids));
        }
        match self.disk_bytes {
            Some(d) if d < (1 << 20) => Err(LimitsError::Disk(d)),
            _ => Ok(()),
        }
    }
}

/// A request to create a sandbox.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CreateSandbox {
    /// Template name, e.g. `base`.
    pub template: String,
    /// Overrides of the template's limits; `None` keeps the template's.
    pub limits: Option<Limits>,
    /// Whether the sandbox may open connections to the internet.
    pub allow_internet_access: bool,
    /// Free-form labels kept with the sandbox.
    pub metadata: BTreeMap<String, String>,
    /// What the manager decided about the sandbox (owner, tokens, timeout). Backends that keep
    /// records themselves write it with the claim; the others ignore it.
    pub lease: Option<crate::Lease>,
    /// Labels of the sandbox (the original's `label:` metadata keys, prefix removed), already
    /// checked as Kubernetes label keys and values. A backend with a label concept sets them
    /// (Kubernetes: on the Sandbox and its pod); the others may ignore them.
    pub labels: BTreeMap<String, String>,
    /// Whether the sandbox may be created cold when no warm one is ready. `false` (the
    /// original's `create-on-no-stock: "false"`) makes such a create fail with
    /// [`crate::InfraError::NoStock`] instead of waiting for a cold start.
    pub create_on_no_stock: bool,
}

impl Default for CreateSandbox {
    /// A create of no template with the template's limits and no internet access; creating
    /// cold on no stock is allowed, as without the extension.
    fn default() -> Self {
        Self {
            template: String::new(),
            limits: None,
            allow_internet_access: false,
            metadata: BTreeMap::new(),
            lease: None,
            labels: BTreeMap::new(),
            create_on_no_stock: true,
        }
    }
}

/// What the infrastructure knows about one sandbox.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct SandboxInfo {
    /// The sandbox id (also its hostname).
    pub id: SandboxId,
    /// Template it was created from.
    pub template: String,
    /// Lifecycle state.
    pub state: SandboxState,
    /// Where the sandbox's runtime listens (`ip:49983`); other ports live on the same ip.
    pub address: SocketAddr,
    /// Limits in force.
    pub limits: Limits,
    /// Whether outbound internet access is allowed.
    pub allow_internet_access: bool,
    /// Labels given at creation.
    pub metadata: BTreeMap<String, String>,
    /// Creation time, milliseconds since the Unix epoch.
    pub created_at_ms: u64,
    /// Whether `create` handed out a warm pooled sandbox (false: created cold).
    #[serde(default)]
    pub from_pool: bool,
    /// The access token the runtime holds from its start, when it has one: the creator sends it
    /// as `X-Access-Token` on its first `/init`, which replaces it with the sandbox's own token.
    /// Without it nobody on the host network can use a runtime that is not handed out yet.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bootstrap_token: Option<String>,
}

/// A sandbox ended without being asked to: its init died (it exited, crashed, or was killed
/// from inside or from the host).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SandboxEnded {
    /// Which sandbox.
    pub id: SandboxId,
    /// Why, in words (for logs).
    pub reason: String,
}

/// Resource usage of one sandbox, read from the kernel.
#[derive(Clone, Debug, Default, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct SandboxMetrics {
    /// CPU time used since creation, nanoseconds.
    pub cpu_usage_ns: u64,
    /// CPU use in percent of one CPU since the previous metrics call (0 on the first call).
    pub cpu_percent: f64,
    /// Memory in use now, bytes.
    pub memory_bytes: u64,
    /// Memory limit, bytes.
    pub memory_limit_bytes: u64,
    /// Number of processes and threads now.
    pub pids: u64,
    /// Bytes in use on the sandbox's own disk, which holds its writable layer (what the
    /// sandbox wrote; its template's layers are not counted).
    pub disk_bytes: u64,
    /// How many times a process in the sandbox was killed for lack of memory.
    pub oom_kills: u64,
}

/// One template as listed.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct TemplateInfo {
    /// Template name.
    pub name: String,
    /// Whether its root filesystem is built and cached.
    pub built: bool,
    /// Default limits of sandboxes made from it.
    pub limits: Limits,
    /// Warm pool size now: the members it is kept at (between `pool_min` and `pool_max`
    /// where the pool sizes itself by demand).
    pub pool_size: usize,
    /// Sandboxes ready in the warm pool now.
    #[serde(default)]
    pub pool_ready: usize,
    /// The smallest the warm pool gets.
    #[serde(default)]
    pub pool_min: usize,
    /// The largest the warm pool gets.
    #[serde(default)]
    pub pool_max: usize,
}

/// How a pause keeps a sandbox.
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize,
)]
#[serde(rename_all = "snake_case")]
pub enum PauseMode {
    /// Every process is frozen in place; memory stays allocated (E2B's default pause).
    #[default]
    Memory,
    /// Every process ends and its memory is freed; only the filesystem is kept, and resume
    /// boots the sandbox again (E2B's `memory: false` / `mode: "filesystem"`).
    Filesystem,
    /// Processes are checkpointed to disk and restored on resume (CRIU); memory is freed
    /// meanwhile.
    Checkpoint,
}

impl PauseMode {
    /// The mode's name as the API shows it.
    pub fn as_str(self) -> &'static str {
        match self {
            PauseMode::Memory => "memory",
            PauseMode::Filesystem => "filesystem",
            PauseMode::Checkpoint => "checkpoint",
        }
    }
}

/// One line of a sandbox's log (its runtime's output).
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct LogLine {
    /// When the line was written, milliseconds since the Unix epoch.
    pub timestamp_ms: u64,
    /// `debug`, `info`, `warn` or `error`.
    pub level: String,
    /// The line, without its timestamp and level.
    pub message: String,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_match_the_issue() {
        let l = Limits::default();
        assert_eq!(
            (l.cpu_millis, l.memory_bytes, l.pids),
            (2000, 512 * 1024 * 1024, 1024)
        );
        assert_eq!(l.validate(), Ok(()));
    }

    #[test]
    fn impossible_limits_are_rejected() {
        let base = Limits::default();
        assert_eq!(
            Limits {
                cpu_millis: 0,
                ..base.clone()
            }
            .validate(),
            Err(LimitsError::Cpu(0))
        );
        assert_eq!(
            Limits {
                memory_bytes: 1,
                ..base.clone()
            }
            .validate(),
            Err(LimitsError::Memory(1))
        );
        assert_eq!(
            Limits {
                pids: 1,
                ..base.clone()
            }
            .validate(),
            Err(LimitsError::Pids(1))
        );
        assert_eq!(
            Limits {
                disk_bytes: Some(5),
                ..base
            }
            .validate(),
            Err(LimitsError::Disk(5))
        );
    }
}
