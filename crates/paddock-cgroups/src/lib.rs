//! cgroups for Paddock sandboxes: one [`Cgroup`] trait, implemented for cgroup v1 (including the
//! hybrid layout) and cgroup v2.
//!
//! A [`Hierarchy`] is detected under an injectable root (normally `/sys/fs/cgroup`) together with
//! the calling process's own cgroup, and hands out one [`Cgroup`] per sandbox, nested under
//! `<own cgroup>/<parent>/<name>`. Everything is plain file IO under paths it is given, so the
//! unit tests run on temporary directories.
//!
//! Caveat (v1): an OCI runtime takes one cgroup path for every controller, so on v1 the nesting
//! base is the process's own *memory* cgroup (that is where the host accounts memory); for the
//! other controllers the same relative path is used under each controller's root.

mod cpuset;
mod hierarchy;
mod v1;
mod v2;
mod warm;

use std::path::{Path, PathBuf};
use std::time::Duration;

pub use cpuset::CLONE_CHILDREN;
pub use hierarchy::{Hierarchy, Version};
pub use warm::{WARM_CGROUP, Warmer};

/// Limits written to a sandbox's cgroup.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CgroupLimits {
    /// CPU quota in thousandths of a CPU; `None` = unlimited.
    pub cpu_millis: Option<u32>,
    /// Memory limit in bytes (swap is not allowed on top); `None` = unlimited.
    pub memory_bytes: Option<u64>,
    /// Maximum number of tasks; `None` = unlimited.
    pub pids: Option<u32>,
}

/// CFS period used for CPU quotas, microseconds.
pub const CPU_PERIOD_US: u64 = 100_000;

/// Usage read from a cgroup.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CgroupStats {
    /// Total CPU time, nanoseconds.
    pub cpu_usage_ns: u64,
    /// Memory in use, bytes.
    pub memory_bytes: u64,
    /// Memory limit, bytes (`u64::MAX` if none).
    pub memory_limit_bytes: u64,
    /// Tasks now.
    pub pids: u64,
    /// Times the OOM killer killed a task in this cgroup.
    pub oom_kills: u64,
    /// Times a fork failed at the pids limit.
    pub pids_limit_hits: u64,
    /// CFS periods in which the cgroup was throttled.
    pub cpu_throttled_periods: u64,
}

/// Errors of cgroup operations; each carries the path it failed on.
#[derive(Debug, thiserror::Error)]
pub enum CgroupError {
    /// Reading, writing, creating or removing a cgroup file failed.
    #[error("cgroup io on {path}: {source}")]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// A cgroup file held something we could not parse.
    #[error("cannot parse {path}: {content:?}")]
    Parse {
        /// The file.
        path: PathBuf,
        /// What it held.
        content: String,
    },
    /// No cgroup hierarchy we understand was found.
    #[error("no usable cgroup hierarchy under {0}: {1}")]
    Detect(PathBuf, String),
    /// The kernel did not finish freezing or emptying the cgroup in time.
    #[error("cgroup {path} did not {what} within {waited:?}")]
    Timeout {
        /// The cgroup.
        path: PathBuf,
        /// What we waited for.
        what: &'static str,
        /// How long.
        waited: Duration,
    },
}

/// Result alias for this crate.
pub type Result<T, E = CgroupError> = std::result::Result<T, E>;

/// The cgroup of one sandbox.
pub trait Cgroup: Send + Sync + std::fmt::Debug {
    /// The path to hand to an OCI runtime as `linux.cgroupsPath` (absolute, relative to the
    /// hierarchy root).
    fn oci_path(&self) -> &Path;
    /// Creates the cgroup directories (idempotent).
    fn create(&self) -> Result<()>;
    /// Whether the cgroup exists.
    fn exists(&self) -> bool;
    /// Writes limits.
    fn apply(&self, limits: &CgroupLimits) -> Result<()>;
    /// Moves a process in.
    fn add_process(&self, pid: i32) -> Result<()>;
    /// Process ids in the cgroup.
    fn pids(&self) -> Result<Vec<i32>>;
    /// Stops every task (freezer); returns once the kernel reports the cgroup frozen.
    fn freeze(&self) -> Result<()>;
    /// Lets the tasks run again.
    fn thaw(&self) -> Result<()>;
    /// Whether the cgroup is frozen.
    fn is_frozen(&self) -> Result<bool>;
    /// Usage counters.
    fn stats(&self) -> Result<CgroupStats>;
    /// SIGKILLs every task and waits until the cgroup is empty.
    fn kill_all(&self) -> Result<()>;
    /// Removes the cgroup directories; the cgroup must be empty. Missing directories are fine.
    fn remove(&self) -> Result<()>;
}

// === helpers shared by v1 and v2 ===

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> CgroupError + '_ {
    move |source| CgroupError::Io {
        path: path.to_owned(),
        source,
    }
}

fn read(path: &Path) -> Result<String> {
    std::fs::read_to_string(path).map_err(io_err(path))
}

fn write(path: &Path, value: &str) -> Result<()> {
    tracing::trace!(path = %path.display(), value, "cgroup write");
    std::fs::write(path, value).map_err(io_err(path))
}

fn read_u64(path: &Path) -> Result<u64> {
    let s = read(path)?;
    let t = s.trim();
    if t == "max" {
        return Ok(u64::MAX);
    }
    t.parse().map_err(|_| CgroupError::Parse {
        path: path.to_owned(),
        content: s.clone(),
    })
}

/// Value of `key` in a flat-keyed file (`key value` per line); 0 if absent.
fn keyed(path: &Path, key: &str) -> Result<u64> {
    let s = read(path)?;
    for line in s.lines() {
        let mut it = line.split_whitespace();
        if it.next() == Some(key) {
            let v = it.next().unwrap_or_default();
            return v.parse().map_err(|_| CgroupError::Parse {
                path: path.to_owned(),
                content: line.to_owned(),
            });
        }
    }
    Ok(0)
}

fn read_pids(path: &Path) -> Result<Vec<i32>> {
    let s = match std::fs::read_to_string(path) {
        Ok(s) => s,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => {
            return Err(CgroupError::Io {
                path: path.to_owned(),
                source: e,
            });
        }
    };
    s.lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| {
            l.trim().parse().map_err(|_| CgroupError::Parse {
                path: path.to_owned(),
                content: l.to_owned(),
            })
        })
        .collect()
}

fn mkdir_p(path: &Path) -> Result<()> {
    std::fs::create_dir_all(path).map_err(io_err(path))
}

/// `rmdir` that tolerates a missing directory and retries briefly while the kernel finishes
/// tearing tasks down (EBUSY).
fn rmdir(path: &Path) -> Result<()> {
    let mut delay = Duration::from_millis(2);
    let mut waited = Duration::ZERO;
    loop {
        match std::fs::remove_dir(path) {
            Ok(()) => return Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
            Err(e) if waited >= Duration::from_secs(5) => {
                return Err(CgroupError::Io {
                    path: path.to_owned(),
                    source: e,
                });
            }
            Err(_) => {
                std::thread::sleep(delay);
                waited += delay;
                delay = (delay * 2).min(Duration::from_millis(100));
            }
        }
    }
}

/// Polls `done` until it returns true, for at most `limit`.
fn wait_until(
    path: &Path,
    what: &'static str,
    limit: Duration,
    mut done: impl FnMut() -> Result<bool>,
) -> Result<()> {
    let mut delay = Duration::from_micros(200);
    let mut waited = Duration::ZERO;
    loop {
        if done()? {
            return Ok(());
        }
        if waited >= limit {
            return Err(CgroupError::Timeout {
                path: path.to_owned(),
                what,
                waited,
            });
        }
        std::thread::sleep(delay);
        waited += delay;
        delay = (delay * 2).min(Duration::from_millis(50));
    }
}

fn sigkill_all(pids: &[i32]) {
    for &pid in pids {
        // ESRCH (already gone) is fine: the caller waits for the cgroup to empty anyway.
        let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), nix::sys::signal::SIGKILL);
    }
}
