//! cgroup v1 cpusets that new sandbox cgroups inherit from their parent at `mkdir`.
//!
//! A v1 cpuset cgroup takes no task until its `cpuset.cpus` and `cpuset.mems` are set, so an
//! OCI runtime joining a sandbox to the cpuset hierarchy copies them from the parent: two
//! writes per create. A write to `cpuset.cpus` checks the new value against every sibling
//! (`validate_change`) and rebuilds the scheduler's domains, so its cost grew with the
//! sandboxes running: on the 2-core test host, between the first and the last of 1,000
//! creates, these writes went from 0.6 % to 1.6 % of all CPU time. With
//! `cgroup.clone_children` set on the sandboxes' base, the kernel copies both values when it
//! makes the directory, and the runtime finds them set and writes nothing.
//! Only the new directories are affected: the values are the parent's, as before.

use std::path::{Path, PathBuf};

use crate::hierarchy::{Hierarchy, Version};
use crate::{Result, io_err, mkdir_p, read, write};

const CPUS: &str = "cpuset.cpus";
const MEMS: &str = "cpuset.mems";
/// Set on a v1 cgroup: its new children start with its cpuset values.
pub const CLONE_CHILDREN: &str = "cgroup.clone_children";

impl Hierarchy {
    /// On cgroup v1 with a cpuset hierarchy: makes the sandboxes' base there (each level
    /// given its parent's CPUs and memory nodes where it has none, as a runtime would) and
    /// sets [`CLONE_CHILDREN`] on it. Returns the base's directory, or `None` where there is
    /// nothing to do (cgroup v2, or no cpuset hierarchy).
    pub fn inherit_cpusets(&self) -> Result<Option<PathBuf>> {
        let mount = self.root().join("cpuset");
        if self.version() != Version::V1 || !mount.join(CPUS).is_file() {
            return Ok(None);
        }
        let mut dir = mount.clone();
        for part in self.base().components() {
            let parent = dir.clone();
            dir.push(part);
            mkdir_p(&dir)?;
            for file in [CPUS, MEMS] {
                fill_from(&parent, &dir, file)?;
            }
        }
        write(&dir.join(CLONE_CHILDREN), "1")?;
        Ok(Some(dir))
    }
}

/// Gives `dir` its `parent`'s value of `file` when it has none.
fn fill_from(parent: &Path, dir: &Path, file: &str) -> Result<()> {
    if !read(&dir.join(file))?.trim().is_empty() {
        return Ok(());
    }
    let value = read(&parent.join(file))?;
    if value.trim().is_empty() {
        return Err(io_err(&parent.join(file))(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            "the parent cpuset is empty",
        )));
    }
    write(&dir.join(file), value.trim())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A fake v1 root: the controllers' directories, and a cpuset mount whose new
    /// directories start empty (as the kernel's do without `clone_children`).
    fn v1_root() -> tempfile::TempDir {
        let t = tempfile::tempdir().unwrap();
        for c in crate::hierarchy::V1_CONTROLLERS {
            std::fs::create_dir_all(t.path().join(c)).unwrap();
        }
        let cpuset = t.path().join("cpuset");
        std::fs::create_dir_all(&cpuset).unwrap();
        std::fs::write(cpuset.join(CPUS), "0-1\n").unwrap();
        std::fs::write(cpuset.join(MEMS), "0\n").unwrap();
        t
    }

    fn touch_empty(dir: &Path) {
        std::fs::create_dir_all(dir).unwrap();
        for f in [CPUS, MEMS, CLONE_CHILDREN] {
            std::fs::write(dir.join(f), "").unwrap();
        }
    }

    #[test]
    fn the_base_gets_the_parents_values_and_clones_them_to_children() {
        let t = v1_root();
        let h = Hierarchy::detect_at(t.path(), "4:memory:/svc\n", "paddock").unwrap();
        // Directories a fake cannot make on mkdir: made ahead, empty.
        touch_empty(&t.path().join("cpuset/svc"));
        touch_empty(&t.path().join("cpuset/svc/paddock"));
        let dir = h.inherit_cpusets().unwrap().unwrap();
        assert_eq!(dir, t.path().join("cpuset/svc/paddock"));
        assert_eq!(read(&dir.join(CPUS)).unwrap(), "0-1");
        assert_eq!(read(&dir.join(MEMS)).unwrap(), "0");
        assert_eq!(read(&dir.join(CLONE_CHILDREN)).unwrap(), "1");
        assert_eq!(
            read(&t.path().join("cpuset/svc").join(CPUS)).unwrap(),
            "0-1"
        );
    }

    #[test]
    fn values_already_set_are_kept() {
        let t = v1_root();
        let h = Hierarchy::detect_at(t.path(), "4:memory:/\n", "paddock").unwrap();
        let dir = t.path().join("cpuset/paddock");
        touch_empty(&dir);
        std::fs::write(dir.join(CPUS), "1\n").unwrap();
        h.inherit_cpusets().unwrap();
        assert_eq!(read(&dir.join(CPUS)).unwrap().trim(), "1");
        assert_eq!(read(&dir.join(MEMS)).unwrap(), "0");
    }

    #[test]
    fn an_empty_parent_is_an_error_naming_it() {
        let t = v1_root();
        std::fs::write(t.path().join("cpuset").join(CPUS), "\n").unwrap();
        let h = Hierarchy::detect_at(t.path(), "4:memory:/\n", "paddock").unwrap();
        touch_empty(&t.path().join("cpuset/paddock"));
        let e = h.inherit_cpusets().unwrap_err().to_string();
        assert!(e.contains("cpuset.cpus") && e.contains("empty"), "{e}");
    }

    #[test]
    fn nothing_to_do_without_a_cpuset_hierarchy() {
        let t = v1_root();
        std::fs::remove_dir_all(t.path().join("cpuset")).unwrap();
        let h = Hierarchy::detect_at(t.path(), "4:memory:/\n", "paddock").unwrap();
        assert_eq!(h.inherit_cpusets().unwrap(), None);
    }
}
