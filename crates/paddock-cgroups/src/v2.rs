//! cgroup v2: one directory, unified file names.

use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::{
    CPU_PERIOD_US, Cgroup, CgroupLimits, CgroupStats, Result, keyed, mkdir_p, read, read_pids,
    read_u64, rmdir, sigkill_all, wait_until, write,
};

/// Controllers sandboxes need enabled in their parent's `cgroup.subtree_control`.
const CONTROLLERS: &str = "+cpu +memory +pids";

/// A sandbox cgroup on v2.
#[derive(Debug)]
pub(crate) struct V2Cgroup {
    oci_path: PathBuf,
    root: PathBuf,
    base: PathBuf,
    dir: PathBuf,
}

impl V2Cgroup {
    pub(crate) fn new(root: &Path, base: &Path, rel: &Path) -> Self {
        Self {
            oci_path: Path::new("/").join(rel),
            root: root.to_owned(),
            base: base.to_owned(),
            dir: root.join(rel),
        }
    }

    fn file(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }

    /// Enables the controllers on every level from the base's parent down to the base, so the
    /// sandbox directory gets `cpu.max`, `memory.max` and `pids.max`.
    ///
    /// Caveat: v2 forbids enabling controllers for children of a cgroup that holds processes
    /// itself (except the root). Run Paddock in a cgroup of its own, or give a `parent` that is
    /// not the process's own leaf (see `Hierarchy::detect`).
    fn enable_controllers(&self) -> Result<()> {
        let mut level = self.root.clone();
        for part in self.base.components() {
            write(&level.join("cgroup.subtree_control"), CONTROLLERS)?;
            level.push(part);
        }
        write(&level.join("cgroup.subtree_control"), CONTROLLERS)
    }
}

impl Cgroup for V2Cgroup {
    fn oci_path(&self) -> &Path {
        &self.oci_path
    }

    fn create(&self) -> Result<()> {
        mkdir_p(&self.root.join(&self.base))?;
        self.enable_controllers()?;
        mkdir_p(&self.dir)
    }

    fn exists(&self) -> bool {
        self.dir.is_dir()
    }

    fn apply(&self, limits: &CgroupLimits) -> Result<()> {
        if let Some(m) = limits.cpu_millis {
            let quota = u64::from(m) * CPU_PERIOD_US / 1000;
            write(&self.file("cpu.max"), &format!("{quota} {CPU_PERIOD_US}"))?;
        }
        if let Some(bytes) = limits.memory_bytes {
            write(&self.file("memory.max"), &bytes.to_string())?;
            let swap = self.file("memory.swap.max");
            if swap.exists() {
                write(&swap, "0")?;
            }
        }
        if let Some(p) = limits.pids {
            write(&self.file("pids.max"), &p.to_string())?;
        }
        Ok(())
    }

    fn add_process(&self, pid: i32) -> Result<()> {
        write(&self.file("cgroup.procs"), &pid.to_string())
    }

    fn pids(&self) -> Result<Vec<i32>> {
        read_pids(&self.file("cgroup.procs"))
    }

    fn freeze(&self) -> Result<()> {
        write(&self.file("cgroup.freeze"), "1")?;
        let events = self.file("cgroup.events");
        let r = wait_until(&events, "freeze", Duration::from_secs(10), || {
            Ok(keyed(&events, "frozen")? == 1)
        });
        if r.is_err() {
            // Left running rather than half frozen.
            let _ = self.thaw();
        }
        r
    }

    fn thaw(&self) -> Result<()> {
        write(&self.file("cgroup.freeze"), "0")
    }

    fn is_frozen(&self) -> Result<bool> {
        Ok(read(&self.file("cgroup.freeze"))?.trim() == "1")
    }

    fn stats(&self) -> Result<CgroupStats> {
        Ok(CgroupStats {
            cpu_usage_ns: keyed(&self.file("cpu.stat"), "usage_usec")?.saturating_mul(1000),
            memory_bytes: read_u64(&self.file("memory.current"))?,
            memory_limit_bytes: read_u64(&self.file("memory.max"))?,
            pids: read_u64(&self.file("pids.current"))?,
            oom_kills: keyed(&self.file("memory.events"), "oom_kill")?,
            pids_limit_hits: keyed(&self.file("pids.events"), "max")?,
            cpu_throttled_periods: keyed(&self.file("cpu.stat"), "nr_throttled")?,
        })
    }

    fn kill_all(&self) -> Result<()> {
        let kill = self.file("cgroup.kill");
        if kill.exists() {
            write(&kill, "1")?;
        } else {
            // As in v1: thaw whether or not the freeze completed.
            let _ = self.freeze();
            sigkill_all(&self.pids()?);
            let _ = self.thaw();
        }
        let procs = self.file("cgroup.procs");
        wait_until(&procs, "empty", Duration::from_secs(10), || {
            let left = read_pids(&procs)?;
            sigkill_all(&left);
            Ok(left.is_empty())
        })
    }

    fn remove(&self) -> Result<()> {
        rmdir(&self.dir)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fake() -> (tempfile::TempDir, V2Cgroup) {
        let d = tempfile::tempdir().expect("tempdir");
        let cg = V2Cgroup::new(
            d.path(),
            Path::new("me/paddock"),
            Path::new("me/paddock/s1"),
        );
        cg.create().expect("create");
        (d, cg)
    }

    #[test]
    fn create_enables_controllers_on_every_level() {
        let (d, _cg) = fake();
        for level in ["", "me", "me/paddock"] {
            let f = d.path().join(level).join("cgroup.subtree_control");
            assert_eq!(
                std::fs::read_to_string(&f).expect("r"),
                "+cpu +memory +pids",
                "{level}"
            );
        }
        assert!(d.path().join("me/paddock/s1").is_dir());
    }

    #[test]
    fn limits_use_v2_file_names() {
        let (d, cg) = fake();
        std::fs::write(d.path().join("me/paddock/s1/memory.swap.max"), "max").expect("w");
        cg.apply(&CgroupLimits {
            cpu_millis: Some(2000),
            memory_bytes: Some(1 << 29),
            pids: Some(1024),
        })
        .expect("apply");
        let r = |p: &str| std::fs::read_to_string(d.path().join("me/paddock/s1").join(p)).expect(p);
        assert_eq!(r("cpu.max"), "200000 100000");
        assert_eq!(r("memory.max"), "536870912");
        assert_eq!(r("memory.swap.max"), "0");
        assert_eq!(r("pids.max"), "1024");
    }

    #[test]
    fn stats_parse_v2_files() {
        let (d, cg) = fake();
        let w =
            |p: &str, v: &str| std::fs::write(d.path().join("me/paddock/s1").join(p), v).expect(p);
        w(
            "cpu.stat",
            "usage_usec 250\nuser_usec 200\nnr_throttled 3\n",
        );
        w("memory.current", "1000\n");
        w("memory.max", "max\n");
        w("pids.current", "2\n");
        w("memory.events", "low 0\nhigh 0\nmax 1\noom 1\noom_kill 1\n");
        w("pids.events", "max 0\n");
        let s = cg.stats().expect("stats");
        assert_eq!(s.cpu_usage_ns, 250_000);
        assert_eq!(s.memory_limit_bytes, u64::MAX);
        assert_eq!(
            (s.memory_bytes, s.pids, s.oom_kills, s.cpu_throttled_periods),
            (1000, 2, 1, 3)
        );
    }

    #[test]
    fn freeze_waits_for_the_kernel_to_report_frozen() {
        let (d, cg) = fake();
        std::fs::write(
            d.path().join("me/paddock/s1/cgroup.events"),
            "populated 1\nfrozen 1\n",
        )
        .expect("w");
        cg.freeze().expect("freeze");
        assert!(cg.is_frozen().expect("state"));
        cg.thaw().expect("thaw");
        assert!(!cg.is_frozen().expect("state"));
    }

    #[test]
    fn kill_all_prefers_cgroup_kill() {
        let (d, cg) = fake();
        std::fs::write(d.path().join("me/paddock/s1/cgroup.kill"), "").expect("w");
        cg.kill_all().expect("kill");
        let k = std::fs::read_to_string(d.path().join("me/paddock/s1/cgroup.kill")).expect("r");
        assert_eq!(k, "1");
    }
}
