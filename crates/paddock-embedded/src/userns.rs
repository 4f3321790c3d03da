//! User namespaces for sandboxes: sandbox root is an unprivileged host uid.
//!
//! Every sandbox runs in its own user namespace whose ids `0..size` map to the host ids
//! `host_base..host_base + size` ([`IdRange`]). All sandboxes share that one range (as Docker's
//! `userns-remap` does): the writable layer of any sandbox is then stored in the same host
//! ids, so a snapshot's or a fork's copy of it serves as a layer of any other sandbox as it
//! is, and the template layers need one mapping for all. Per-sandbox ranges would also keep
//! neighbours' host uids apart, but every layer copied from another sandbox would need its
//! own shift (a second idmapping per layer and per pair of ranges, or a chown of the copy).
//!
//! The template layers stay owned by host root on disk (builds run as root and the cache is
//! shared with `--userns off`). A sandbox's overlay takes them through *idmapped mounts*
//! (`mount_setattr` with `MOUNT_ATTR_IDMAP`): on-disk uid `u` shows as host uid
//! `host_base + u`, i.e. as `u` inside the sandbox. The idmapping comes from a user namespace
//! with the range's mapping, made once ([`Userns::new`]) and kept as a file descriptor.

// `mount_setattr(2)` has no safe wrapper in nix or rustix (rustix lists it as not
// implemented), so it is a raw syscall, in one place below; the other two new-mount-API
// calls a layer view needs (`open_tree`, `move_mount`) are `mounts::clone_tree` and
// `mounts::attach_tree`.
#![allow(unsafe_code)]

use std::io::{BufRead, BufReader, Write};
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use nix::libc;

/// Host ids the sandboxes' ids `0..size` map to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct IdRange {
    /// Host uid (and gid) of sandbox root.
    pub host_base: u32,
    /// How many ids are mapped.
    pub size: u32,
}

impl Default for IdRange {
    /// Host ids 100000..165535, the first range `useradd` hands out in `/etc/subuid` and
    /// what Docker's and Podman's guides use.
    fn default() -> Self {
        Self {
            host_base: 100_000,
            size: 65_536,
        }
    }
}

impl IdRange {
    /// Parses `off`/`none` (no user namespace), `on`/`default` ([`IdRange::default`]) or
    /// `<host base>:<size>`.
    pub fn parse_setting(s: &str) -> Result<Option<Self>, String> {
        match s {
            "off" | "none" | "false" => return Ok(None),
            "on" | "default" | "true" => return Ok(Some(Self::default())),
            _ => {}
        }
        let bad = || format!("bad user namespace setting {s:?}: expected off, on or BASE:SIZE");
        let (base, size) = s.split_once(':').ok_or_else(bad)?;
        let r = Self {
            host_base: base.parse().map_err(|_| bad())?,
            size: size.parse().map_err(|_| bad())?,
        };
        r.validate().map_err(|e| format!("{s:?}: {e}"))?;
        Ok(Some(r))
    }

    /// A range must map root and the usual users (`user` is 1000, `nobody` 65534) and must
    /// not include host root.
    pub fn validate(&self) -> Result<(), String> {
        if self.host_base == 0 {
            return Err("the host range must not start at host root (uid 0)".into());
        }
        if self.size < 65_536 {
            return Err(format!(
                "the range must map at least 65536 ids (nobody is 65534), not {}",
                self.size
            ));
        }
        if self.host_base.checked_add(self.size).is_none() {
            return Err("the range passes the largest uid".into());
        }
        Ok(())
    }

    /// Whether host id `id` is in the range.
    pub fn contains(&self, id: u32) -> bool {
        id >= self.host_base && id - self.host_base < self.size
    }

    /// `/proc/<pid>/uid_map` text of the range.
    pub fn map_line(&self) -> String {
        format!("0 {} {}\n", self.host_base, self.size)
    }
}

/// Setting up or using user namespaces failed.
#[derive(Debug, thiserror::Error)]
pub enum UsernsError {
    /// The kernel or the host refused: user namespaces or idmapped mounts are unavailable.
    #[error(
        "user namespaces for sandboxes are unavailable here ({op}: {source}); \
         start with user namespaces off (--userns off) to run sandboxes as host root"
    )]
    Unsupported {
        /// What failed.
        op: String,
        /// Cause.
        #[source]
        source: std::io::Error,
    },
    /// A step on a path failed.
    #[error("{op} {path}: {source}")]
    Io {
        /// What we did.
        op: &'static str,
        /// Where.
        path: PathBuf,
        /// Cause.
        #[source]
        source: std::io::Error,
    },
}

fn io_err<'a>(op: &'static str, path: &'a Path) -> impl FnOnce(std::io::Error) -> UsernsError + 'a {
    move |source| UsernsError::Io {
        op,
        path: path.to_owned(),
        source,
    }
}

/// The helper command that makes a user namespace and holds it until stdin closes (see
/// [`Userns::new`]).
pub const HOLD_CMD: &str = "userns-hold";

/// Helper side of [`HOLD_CMD`]: enters a new user namespace, says `ready`, and waits for EOF
/// on stdin. Runs single-threaded (a multi-threaded process cannot unshare its user
/// namespace).
pub fn hold_here() -> std::io::Result<()> {
    nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWUSER)?;
    let mut out = std::io::stdout();
    writeln!(out, "ready")?;
    out.flush()?;
    let mut sink = Vec::new();
    std::io::Read::read_to_end(&mut std::io::stdin().lock(), &mut sink)?;
    Ok(())
}

/// A user namespace with a range's mapping, used to idmap the template layers.
#[derive(Debug)]
pub struct Userns {
    /// The mapping.
    pub range: IdRange,
    fd: OwnedFd,
}

impl Userns {
    /// Makes the user namespace (through `helper`'s [`HOLD_CMD`]) and checks that idmapped
    /// mounts work on `probe_dir` (the template cache: the file system the layers live on).
    /// A clear [`UsernsError::Unsupported`] if the kernel cannot.
    pub fn new(helper: &Path, range: IdRange, probe_dir: &Path) -> Result<Self, UsernsError> {
        let unsupported = |op: &str| {
            let op = op.to_owned();
            move |source: std::io::Error| UsernsError::Unsupported { op, source }
        };
        let mut child = std::process::Command::new(helper)
            .arg(crate::container::HELPER_ARG)
            .arg(HOLD_CMD)
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .map_err(io_err("run", helper))?;
        let result = (|| {
            let mut line = String::new();
            let stdout = child.stdout.take().ok_or_else(|| {
                unsupported("user namespace helper")(std::io::Error::other("no stdout"))
            })?;
            BufReader::new(stdout)
                .read_line(&mut line)
                .map_err(unsupported("read from the user namespace helper"))?;
            if line.trim() != "ready" {
                let mut err = String::new();
                if let Some(mut e) = child.stderr.take() {
                    let _ = std::io::Read::read_to_string(&mut e, &mut err);
                }
                return Err(unsupported("unshare(CLONE_NEWUSER)")(
                    std::io::Error::other(err.trim().to_owned()),
                ));
            }
            let proc_dir = PathBuf::from(format!("/proc/{}", child.id()));
            // gid_map first needs no setgroups deny: we write as host root.
            for f in ["uid_map", "gid_map"] {
                std::fs::write(proc_dir.join(f), range.map_line())
                    .map_err(unsupported(&format!("write {f}")))?;
            }
            let fd = std::fs::File::open(proc_dir.join("ns/user"))
                .map_err(unsupported("open the user namespace"))?;
            Ok(OwnedFd::from(fd))
        })();
        // Closing stdin ends the helper; the namespace lives on through `fd`.
        drop(child.stdin.take());
        let _ = child.wait();
        let me = Self { range, fd: result? };
        me.probe(probe_dir)?;
        Ok(me)
    }

    /// Makes (and drops) an idmapped mount of `dir`.
    fn probe(&self, dir: &Path) -> Result<(), UsernsError> {
        std::fs::create_dir_all(dir).map_err(io_err("create", dir))?;
        self.idmapped_tree(dir)
            .map(drop)
            .map_err(|e| UsernsError::Unsupported {
                op: format!("idmapped mount of {}", dir.display()),
                source: e,
            })
    }

    /// A detached, idmapped copy of the mount tree at `dir` (an `open_tree` file descriptor).
    fn idmapped_tree(&self, dir: &Path) -> std::io::Result<OwnedFd> {
        let tree = crate::mounts::clone_tree(dir)?;
        let attr = MountAttr {
            attr_set: MOUNT_ATTR_IDMAP,
            attr_clr: 0,
            propagation: 0,
            userns_fd: self.fd.as_raw_fd() as u64,
        };
        // SAFETY: a plain syscall on descriptors we hold and a struct that lives across the
        // call.
        let r = unsafe {
            libc::syscall(
                libc::SYS_mount_setattr,
                tree.as_raw_fd(),
                c"".as_ptr(),
                libc::AT_EMPTY_PATH as libc::c_uint,
                &attr as *const MountAttr,
                std::mem::size_of::<MountAttr>(),
            )
        };
        if r < 0 {
            return Err(std::io::Error::last_os_error());
        }
        Ok(tree)
    }

    /// Mounts an idmapped view of `dir` at `target` (an existing directory).
    pub fn mount_idmapped(&self, dir: &Path, target: &Path) -> Result<(), UsernsError> {
        let tree = self.idmapped_tree(dir).map_err(io_err("idmap", dir))?;
        crate::mounts::attach_tree(tree.as_fd(), target)
            .map_err(io_err("mount idmapped layer on", target))
    }

    /// Whether layer `dir` needs the idmapping: its root is not owned by a host id of the
    /// range (a template layer, owned by host root). A snapshot's layer is a copy of some
    /// sandbox's writable layer, already stored in the range.
    pub fn needs_idmap(&self, dir: &Path) -> Result<bool, UsernsError> {
        let meta = std::fs::metadata(dir).map_err(io_err("stat", dir))?;
        Ok(!self.range.contains(meta.uid()))
    }

    /// Makes `dir` owned by sandbox root (a writable layer's top directory) if it is owned
    /// by host root; its contents keep their owners (a fork's copy is in the range already).
    pub fn own_by_root(&self, dir: &Path) -> Result<(), UsernsError> {
        let meta = std::fs::metadata(dir).map_err(io_err("stat", dir))?;
        if meta.uid() == 0 {
            let id = Some(self.range.host_base);
            std::os::unix::fs::chown(dir, id, id).map_err(io_err("chown", dir))?;
        }
        Ok(())
    }
}

// From <linux/mount.h>; the libc crate lacks it.
const MOUNT_ATTR_IDMAP: u64 = 0x0010_0000;

/// `struct mount_attr` of `mount_setattr(2)`.
#[repr(C)]
struct MountAttr {
    attr_set: u64,
    attr_clr: u64,
    propagation: u64,
    userns_fd: u64,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn settings_parse_and_bad_ranges_are_refused() {
        assert_eq!(IdRange::parse_setting("off"), Ok(None));
        assert_eq!(IdRange::parse_setting("on"), Ok(Some(IdRange::default())));
        assert_eq!(
            IdRange::parse_setting("200000:65536"),
            Ok(Some(IdRange {
                host_base: 200_000,
                size: 65_536
            }))
        );
        for bad in [
            "0:65536",
            "100000:1000",
            "x",
            "1:2:3",
            "4294967295:65536",
            "",
        ] {
            assert!(IdRange::parse_setting(bad).is_err(), "{bad}");
        }
        let r = IdRange::default();
        assert!(r.contains(100_000) && r.contains(165_535));
        assert!(!r.contains(0) && !r.contains(165_536) && !r.contains(99_999));
        assert_eq!(r.map_line(), "0 100000 65536\n");
    }
}
