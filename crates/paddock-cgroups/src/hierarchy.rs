//! Detecting the cgroup layout and handing out per-sandbox cgroups.

use std::path::{Path, PathBuf};

use crate::{Cgroup, CgroupError, Result, v1::V1Cgroup, v2::V2Cgroup};

/// Which cgroup version sandboxes are managed with.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Version {
    /// Legacy or hybrid layout: one hierarchy per controller (`cpu`, `memory`, `pids`, ...).
    /// The hybrid layout's `unified` mount (v2 with few or no controllers) is ignored.
    V1,
    /// Unified layout: one hierarchy, `cgroup.controllers` at its root.
    V2,
}

/// v1 controllers Paddock uses, by the directory name they are mounted at.
pub(crate) const V1_CONTROLLERS: [&str; 5] = ["cpu", "cpuacct", "memory", "pids", "freezer"];

/// A detected cgroup hierarchy and where this process sits in it.
#[derive(Clone, Debug)]
pub struct Hierarchy {
    root: PathBuf,
    version: Version,
    /// Relative path (no leading `/`) under which sandbox cgroups are created.
    base: PathBuf,
}

impl Hierarchy {
    /// Detects the hierarchy at `/sys/fs/cgroup` and nests sandboxes under
    /// `<this process's cgroup>/<parent>`.
    pub fn detect(parent: &str) -> Result<Self> {
        let own =
            std::fs::read_to_string("/proc/self/cgroup").map_err(|source| CgroupError::Io {
                path: "/proc/self/cgroup".into(),
                source,
            })?;
        Self::detect_at(Path::new("/sys/fs/cgroup"), &own, parent)
    }

    /// Detects the hierarchy under `root`, given the text of `/proc/self/cgroup`.
    pub fn detect_at(root: &Path, proc_self_cgroup: &str, parent: &str) -> Result<Self> {
        let version = if root.join("cgroup.controllers").is_file() {
            Version::V2
        } else if V1_CONTROLLERS.iter().all(|c| root.join(c).is_dir()) {
            Version::V1
        } else {
            return Err(CgroupError::Detect(
                root.to_owned(),
                format!("neither cgroup.controllers nor all of {V1_CONTROLLERS:?} found"),
            ));
        };
        let own = own_path(proc_self_cgroup, version).ok_or_else(|| {
            CgroupError::Detect(
                root.to_owned(),
                format!("no {version:?} entry in /proc/self/cgroup"),
            )
        })?;
        let base = Path::new(own.trim_start_matches('/')).join(parent);
        Ok(Self {
            root: root.to_owned(),
            version,
            base,
        })
    }

    /// The cgroup this process runs in, to read its own limits and usage (the runtime in a
    /// Pod reports the Pod's memory, not the node's).
    pub fn own() -> Result<Box<dyn Cgroup>> {
        let own =
            std::fs::read_to_string("/proc/self/cgroup").map_err(|source| CgroupError::Io {
                path: "/proc/self/cgroup".into(),
                source,
            })?;
        Self::own_at(Path::new("/sys/fs/cgroup"), &own)
    }

    /// [`Hierarchy::own`] under `root`, given the text of `/proc/self/cgroup`. Inside a
    /// container the hierarchy is usually mounted at the container's own cgroup (a cgroup
    /// namespace, or v1's bind mounts) while `/proc/self/cgroup` may still name the host's
    /// path: a path that does not exist under the mount means the mount root is ours.
    pub fn own_at(root: &Path, proc_self_cgroup: &str) -> Result<Box<dyn Cgroup>> {
        let h = Self::detect_at(root, proc_self_cgroup, "")?;
        let probe = match h.version {
            Version::V1 => root.join("memory").join(&h.base),
            Version::V2 => root.join(&h.base),
        };
        let rel = if probe.is_dir() {
            h.base.clone()
        } else {
            PathBuf::new()
        };
        Ok(match h.version {
            Version::V1 => Box::new(V1Cgroup::new(root, &rel)),
            Version::V2 => Box::new(V2Cgroup::new(root, &rel, &rel)),
        })
    }

    /// The detected version.
    pub fn version(&self) -> Version {
        self.version
    }

    /// The root the hierarchy was detected under.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The relative directory under which sandbox cgroups live.
    pub fn base(&self) -> &Path {
        &self.base
    }

    /// The cgroup of sandbox `name` (not created yet; call [`Cgroup::create`]).
    pub fn sandbox(&self, name: &str) -> Box<dyn Cgroup> {
        let rel = self.base.join(name);
        match self.version {
            Version::V1 => Box::new(V1Cgroup::new(&self.root, &rel)),
            Version::V2 => Box::new(V2Cgroup::new(&self.root, &self.base, &rel)),
        }
    }

    /// Names of the sandbox cgroups that exist now (for recovery and leak checks); not the
    /// dot-named ones Paddock keeps for itself ([`crate::WARM_CGROUP`]).
    pub fn list(&self) -> Result<Vec<String>> {
        let dirs: Vec<PathBuf> = match self.version {
            Version::V1 => V1_CONTROLLERS
                .iter()
                .map(|c| self.root.join(c))
                .chain(crate::v1::other_hierarchies(&self.root))
                .map(|h| h.join(&self.base))
                .collect(),
            Version::V2 => vec![self.root.join(&self.base)],
        };
        let mut out = std::collections::BTreeSet::new();
        for dir in dirs {
            let entries = match std::fs::read_dir(&dir) {
                Ok(e) => e,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                Err(source) => return Err(CgroupError::Io { path: dir, source }),
            };
            for entry in entries.flatten() {
                let name = entry.file_name().to_string_lossy().into_owned();
                // Dot names are Paddock's own (see `crate::warm`), never a sandbox's.
                if entry.file_type().map(|t| t.is_dir()).unwrap_or(false) && !name.starts_with('.')
                {
                    out.insert(name);
                }
            }
        }
        Ok(out.into_iter().collect())
    }
}

/// The process's own cgroup path for `version` from the text of `/proc/self/cgroup`.
/// For v1 that is the memory controller's path (see the crate docs).
fn own_path(proc_self_cgroup: &str, version: Version) -> Option<String> {
    proc_self_cgroup.lines().find_map(|line| {
        let mut parts = line.splitn(3, ':');
        let (_id, ctrls, path) = (parts.next()?, parts.next()?, parts.next()?);
        let wanted = match version {
            Version::V2 => ctrls.is_empty(),
            Version::V1 => ctrls.split(',').any(|c| c == "memory"),
        };
        wanted.then(|| path.to_owned())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const HYBRID: &str =
        "9:name=systemd:/\n8:pids:/\n4:memory:/process_api/abc\n1:cpu,cpuacct:/\n0::/\n";

    fn v1_root() -> tempfile::TempDir {
        let d = tempfile::tempdir().expect("tempdir");
        for c in V1_CONTROLLERS {
            std::fs::create_dir_all(d.path().join(c)).expect("mkdir");
        }
        // The hybrid layout's v2 mount must not make us pick v2.
        std::fs::create_dir_all(d.path().join("unified")).expect("mkdir");
        std::fs::write(d.path().join("unified/cgroup.controllers"), "hugetlb\n").expect("write");
        d
    }

    /// v1 in a container: /proc/self/cgroup names the host's path, the mount is ours.
    #[test]
    fn own_cgroup_is_the_mount_root_when_the_named_path_is_not_mounted() {
        let d = v1_root();
        std::fs::write(d.path().join("memory/memory.limit_in_bytes"), "536870912\n").unwrap();
        let cg = Hierarchy::own_at(d.path(), HYBRID).expect("own");
        assert_eq!(cg.oci_path(), Path::new("/"));
        // Where the named path exists (a host process), it is that one.
        std::fs::create_dir_all(d.path().join("memory/process_api/abc")).unwrap();
        let cg = Hierarchy::own_at(d.path(), HYBRID).expect("own");
        assert_eq!(cg.oci_path(), Path::new("/process_api/abc"));
        // v2 with a cgroup namespace: "0::/" is the root.
        let d2 = tempfile::tempdir().expect("tempdir");
        std::fs::write(d2.path().join("cgroup.controllers"), "cpu memory\n").unwrap();
        let cg = Hierarchy::own_at(d2.path(), "0::/\n").expect("own");
        assert_eq!(cg.oci_path(), Path::new("/"));
    }

    #[test]
    fn hybrid_layout_is_v1_nested_under_own_memory_cgroup() {
        let d = v1_root();
        let h = Hierarchy::detect_at(d.path(), HYBRID, "paddock").expect("detect");
        assert_eq!(h.version(), Version::V1);
        assert_eq!(h.base(), Path::new("process_api/abc/paddock"));
        assert_eq!(
            h.sandbox("s1").oci_path(),
            Path::new("/process_api/abc/paddock/s1")
        );
    }

    #[test]
    fn unified_layout_is_v2_nested_under_own_cgroup() {
        let d = tempfile::tempdir().expect("tempdir");
        std::fs::write(d.path().join("cgroup.controllers"), "cpu memory pids\n").expect("write");
        let h = Hierarchy::detect_at(d.path(), "0::/user.slice/me\n", "paddock").expect("detect");
        assert_eq!(h.version(), Version::V2);
        assert_eq!(h.base(), Path::new("user.slice/me/paddock"));
    }

    #[test]
    fn nothing_usable_is_an_error() {
        let d = tempfile::tempdir().expect("tempdir");
        assert!(matches!(
            Hierarchy::detect_at(d.path(), HYBRID, "p"),
            Err(CgroupError::Detect(..))
        ));
    }

    #[test]
    fn list_shows_created_sandboxes() {
        let d = v1_root();
        let h = Hierarchy::detect_at(d.path(), HYBRID, "paddock").expect("detect");
        assert_eq!(h.list().expect("list"), Vec::<String>::new());
        h.sandbox("b").create().expect("create");
        h.sandbox("a").create().expect("create");
        assert_eq!(
            h.list().expect("list"),
            vec!["a".to_string(), "b".to_string()]
        );
    }
}
