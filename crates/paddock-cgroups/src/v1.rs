//! cgroup v1: one directory per controller, v1 file names.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crate::hierarchy::V1_CONTROLLERS;
use crate::{
    CPU_PERIOD_US, Cgroup, CgroupLimits, CgroupStats, Result, keyed, mkdir_p, read, read_pids,
    read_u64, rmdir, sigkill_all, wait_until, write,
};

/// A sandbox cgroup on v1: the same relative path under each controller's mount.
#[derive(Debug)]
pub(crate) struct V1Cgroup {
    oci_path: PathBuf,
    root: PathBuf,
    rel: PathBuf,
}

impl V1Cgroup {
    pub(crate) fn new(root: &Path, rel: &Path) -> Self {
        Self {
            oci_path: Path::new("/").join(rel),
            root: root.to_owned(),
            rel: rel.to_owned(),
        }
    }

    fn dir(&self, controller: &str) -> PathBuf {
        self.root.join(controller).join(&self.rel)
    }

    fn file(&self, controller: &str, name: &str) -> PathBuf {
        self.dir(controller).join(name)
    }

    /// The sandbox's directory in every v1 hierarchy that has one: an OCI runtime joins the
    /// process to all mounted controllers (blkio, devices, cpuset, ...), not just ours.
    fn all_dirs(&self) -> Vec<PathBuf> {
        let mut out: Vec<PathBuf> = V1_CONTROLLERS.iter().map(|c| self.dir(c)).collect();
        for h in other_hierarchies(&self.root) {
            let d = h.join(&self.rel);
            if d.is_dir() {
                out.push(d);
            }
        }
        out
    }
}

/// v1 hierarchies under `root` other than the ones Paddock writes to (and other than the
/// hybrid layout's v2 mount).
pub(crate) fn other_hierarchies(root: &Path) -> Vec<PathBuf> {
    let Ok(entries) = std::fs::read_dir(root) else {
        return Vec::new();
    };
    entries
        .flatten()
        .filter(|e| e.file_type().map(|t| t.is_dir()).unwrap_or(false))
        .filter(|e| {
            let n = e.file_name();
            let n = n.to_string_lossy();
            n != "unified" && !V1_CONTROLLERS.contains(&n.as_ref())
        })
        .filter(|e| !e.path().join("cgroup.controllers").exists())
        .map(|e| e.path())
        .collect()
}

impl Cgroup for V1Cgroup {
    fn oci_path(&self) -> &Path {
        &self.oci_path
    }

    fn create(&self) -> Result<()> {
        V1_CONTROLLERS
            .iter()
            .try_for_each(|c| mkdir_p(&self.dir(c)))
    }

    fn exists(&self) -> bool {
        self.all_dirs().iter().any(|d| d.is_dir())
    }

    fn apply(&self, limits: &CgroupLimits) -> Result<()> {
        if let Some(m) = limits.cpu_millis {
            write(
                &self.file("cpu", "cpu.cfs_period_us"),
                &CPU_PERIOD_US.to_string(),
            )?;
            let quota = u64::from(m) * CPU_PERIOD_US / 1000;
            write(&self.file("cpu", "cpu.cfs_quota_us"), &quota.to_string())?;
        }
        if let Some(bytes) = limits.memory_bytes {
            write(
                &self.file("memory", "memory.limit_in_bytes"),
                &bytes.to_string(),
            )?;
            // With swap accounting on, forbid swap on top of the RAM limit.
            let memsw = self.file("memory", "memory.memsw.limit_in_bytes");
            if memsw.exists() {
                write(&memsw, &bytes.to_string())?;
            }
        }
        if let Some(p) = limits.pids {
            write(&self.file("pids", "pids.max"), &p.to_string())?;
        }
        Ok(())
    }

    fn add_process(&self, pid: i32) -> Result<()> {
        V1_CONTROLLERS
            .iter()
            .try_for_each(|c| write(&self.file(c, "cgroup.procs"), &pid.to_string()))
    }

    fn pids(&self) -> Result<Vec<i32>> {
        read_pids(&self.file("pids", "cgroup.procs"))
    }

    fn freeze(&self) -> Result<()> {
        // The v1 freezer can stay FREEZING for good when it catches a task at
        // a bad moment (one that just forked, or is between exec steps). A
        // thaw and a fresh FROZEN gets past that, so every quarter second
        // without success starts over. A freeze that never completes is
        // undone, so the sandbox is left running rather than half frozen.
        let state = self.file("freezer", "freezer.state");
        let mut attempt_started = Instant::now();
        write(&state, "FROZEN")?;
        let r = wait_until(&state, "freeze", Duration::from_secs(10), || {
            if read(&state)?.trim() == "FROZEN" {
                return Ok(true);
            }
            if attempt_started.elapsed() >= Duration::from_millis(250) {
                write(&state, "THAWED")?;
                std::thread::sleep(Duration::from_millis(5));
                write(&state, "FROZEN")?;
                attempt_started = Instant::now();
            }
            Ok(false)
        });
        if r.is_err() {
            let _ = self.thaw();
        }
        r
    }

    fn thaw(&self) -> Result<()> {
        write(&self.file("freezer", "freezer.state"), "THAWED")
    }

    fn is_frozen(&self) -> Result<bool> {
        Ok(read(&self.file("freezer", "freezer.state"))?.trim() == "FROZEN")
    }

    fn stats(&self) -> Result<CgroupStats> {
        Ok(CgroupStats {
            cpu_usage_ns: read_u64(&self.file("cpuacct", "cpuacct.usage"))?,
            memory_bytes: read_u64(&self.file("memory", "memory.usage_in_bytes"))?,
            memory_limit_bytes: read_u64(&self.file("memory", "memory.limit_in_bytes"))?,
            pids: read_u64(&self.file("pids", "pids.current"))?,
            oom_kills: keyed(&self.file("memory", "memory.oom_control"), "oom_kill")?,
            pids_limit_hits: keyed(&self.file("pids", "pids.events"), "max")?,
            cpu_throttled_periods: keyed(&self.file("cpu", "cpu.stat"), "nr_throttled")?,
        })
    }

    fn kill_all(&self) -> Result<()> {
        // Freeze first so nothing forks between listing and killing; SIGKILL is delivered to
        // frozen tasks once they are thawed. A freeze that does not complete (a task stuck in
        // the kernel under heavy load) still stops forks, so go on either way, and thaw
        // whatever happened: a cgroup left FREEZING would hold the killed tasks forever.
        let freezer = self.file("freezer", "freezer.state");
        let _ = self.freeze();
        sigkill_all(&self.pids()?);
        let _ = self.thaw();
        let procs = self.file("pids", "cgroup.procs");
        wait_until(&procs, "empty", Duration::from_secs(30), || {
            let left = read_pids(&procs)?;
            if !left.is_empty() && freezer.exists() {
                let _ = write(&freezer, "THAWED");
            }
            sigkill_all(&left);
            Ok(left.is_empty())
        })
    }

    fn remove(&self) -> Result<()> {
        self.all_dirs().iter().try_for_each(|d| rmdir(d))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fake() -> (tempfile::TempDir, V1Cgroup) {
        let d = tempfile::tempdir().expect("tempdir");
        let cg = V1Cgroup::new(d.path(), Path::new("own/paddock/s1"));
        cg.create().expect("create");
        (d, cg)
    }

    #[test]
    fn limits_use_v1_file_names() {
        let (d, cg) = fake();
        let limits = CgroupLimits {
            cpu_millis: Some(1500),
            memory_bytes: Some(64 << 20),
            pids: Some(20),
        };
        cg.apply(&limits).expect("apply");
        let r = |p: &str| std::fs::read_to_string(d.path().join(p)).expect(p);
        assert_eq!(r("cpu/own/paddock/s1/cpu.cfs_quota_us"), "150000");
        assert_eq!(r("cpu/own/paddock/s1/cpu.cfs_period_us"), "100000");
        assert_eq!(r("memory/own/paddock/s1/memory.limit_in_bytes"), "67108864");
        assert_eq!(r("pids/own/paddock/s1/pids.max"), "20");
        assert!(
            !d.path()
                .join("memory/own/paddock/s1/memory.memsw.limit_in_bytes")
                .exists()
        );
    }

    #[test]
    fn unlimited_writes_nothing() {
        let (d, cg) = fake();
        cg.apply(&CgroupLimits {
            cpu_millis: None,
            memory_bytes: None,
            pids: None,
        })
        .expect("apply");
        assert!(!d.path().join("pids/own/paddock/s1/pids.max").exists());
    }

    #[test]
    fn stats_parse_v1_files() {
        let (d, cg) = fake();
        let w = |p: &str, v: &str| std::fs::write(d.path().join(p), v).expect(p);
        w("cpuacct/own/paddock/s1/cpuacct.usage", "123456\n");
        w("memory/own/paddock/s1/memory.usage_in_bytes", "4096\n");
        w("memory/own/paddock/s1/memory.limit_in_bytes", "8192\n");
        w(
            "memory/own/paddock/s1/memory.oom_control",
            "oom_kill_disable 0\nunder_oom 0\noom_kill 2\n",
        );
        w("pids/own/paddock/s1/pids.current", "3\n");
        w("pids/own/paddock/s1/pids.events", "max 7\n");
        w(
            "cpu/own/paddock/s1/cpu.stat",
            "nr_periods 10\nnr_throttled 4\nthrottled_time 99\n",
        );
        let s = cg.stats().expect("stats");
        assert_eq!(
            s,
            CgroupStats {
                cpu_usage_ns: 123456,
                memory_bytes: 4096,
                memory_limit_bytes: 8192,
                pids: 3,
                oom_kills: 2,
                pids_limit_hits: 7,
                cpu_throttled_periods: 4,
            }
        );
    }

    #[test]
    fn garbage_in_a_counter_is_a_parse_error() {
        let (d, cg) = fake();
        std::fs::write(
            d.path().join("cpuacct/own/paddock/s1/cpuacct.usage"),
            "lots",
        )
        .expect("w");
        assert!(matches!(cg.stats(), Err(crate::CgroupError::Parse { .. })));
    }

    #[test]
    fn freeze_thaw_write_the_freezer_state() {
        let (d, cg) = fake();
        cg.freeze().expect("freeze");
        assert!(cg.is_frozen().expect("state"));
        cg.thaw().expect("thaw");
        let s = std::fs::read_to_string(d.path().join("freezer/own/paddock/s1/freezer.state"))
            .expect("r");
        assert_eq!(s, "THAWED");
    }

    #[test]
    fn remove_is_idempotent_and_complete() {
        let (d, cg) = fake();
        // A real cgroupfs directory only holds kernel files; a tempdir must be empty to rmdir.
        cg.remove().expect("remove");
        cg.remove().expect("remove again");
        assert!(!cg.exists());
        assert!(
            d.path().join("memory/own/paddock").is_dir(),
            "parent is kept"
        );
    }

    #[test]
    fn remove_also_clears_hierarchies_an_oci_runtime_joined() {
        let (d, cg) = fake();
        std::fs::create_dir_all(d.path().join("blkio/own/paddock/s1")).expect("mkdir");
        std::fs::create_dir_all(d.path().join("unified/own/paddock/s1")).expect("mkdir");
        std::fs::write(d.path().join("unified/cgroup.controllers"), "").expect("w");
        assert!(cg.exists());
        cg.remove().expect("remove");
        assert!(!d.path().join("blkio/own/paddock/s1").exists());
        assert!(
            d.path().join("unified/own/paddock/s1").exists(),
            "v2 mount untouched"
        );
        assert!(!cg.exists());
    }

    #[test]
    fn add_process_writes_every_controller() {
        let (d, cg) = fake();
        cg.add_process(42).expect("add");
        for c in V1_CONTROLLERS {
            let p = d.path().join(c).join("own/paddock/s1/cgroup.procs");
            assert_eq!(std::fs::read_to_string(p).expect("r"), "42");
        }
        assert_eq!(cg.pids().expect("pids"), vec![42]);
    }
}
