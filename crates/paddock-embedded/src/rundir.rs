//! `<data dir>/run`: a tmpfs of Paddock's own for what a sandbox needs no disk for and what
//! means nothing after the host's boot: its OCI bundle, its boot id, libcontainer's state and
//! the mount points of its disk and root.
//!
//! Why not the data dir: each of those was a file or directory made at create and removed at
//! kill on the host's file system, eight of the eleven a sandbox made there. On ext4 without a
//! journal, every inode allocation steps over each inode freed in the last minute (more while
//! its table block is dirty), so on a host that creates and kills sandboxes all the time every
//! file made cost more the more were made before it (bench/README.md, "Creation rate: the data
//! dir's file system"). On a tmpfs such a file is a few hundred bytes of memory.
//!
//! The first start mounts it; a restart finds it mounted and keeps it (the sandboxes it adopts
//! have their state there); it goes when Paddock stops with no sandbox left (see
//! [`unmount`]). After a reboot it is mounted afresh and empty: the records of the sandboxes
//! that died with the host find nothing there, and their teardown needs nothing.

use std::path::{Path, PathBuf};

use nix::mount::MsFlags;

use crate::mounts::{MountError, err, io_err};

/// The run tmpfs' place in the data dir.
pub const RUN_DIR: &str = "run";
/// Its source name in the host's mount table, for an admin who wonders what it is.
const SOURCE: &str = "paddock-run";

/// The run tmpfs of data dir `data`.
pub fn path(data: &Path) -> PathBuf {
    data.join(RUN_DIR)
}

/// The sandboxes' directories in it ([`path`]`/sandboxes/<id>`).
pub fn sandboxes(data: &Path) -> PathBuf {
    path(data).join("sandboxes")
}

/// libcontainer's state root in it.
pub fn containers(data: &Path) -> PathBuf {
    path(data).join("containers")
}

/// Whether [`mount`] made the tmpfs or found it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mounted {
    /// Mounted now: empty.
    Fresh,
    /// Mounted by an earlier start of this boot, with what it left.
    Kept,
}

/// Mounts the run tmpfs of `data` unless it is mounted, and makes its directories. Only root
/// may enter it (mode 0700); nothing on it runs (`noexec`: the sandboxes' roots are mounts of
/// their own, with their own flags).
pub fn mount(data: &Path) -> Result<Mounted, MountError> {
    let run = path(data);
    crate::private_dir::create_private_dir(&run).map_err(io_err("mkdir", &run))?;
    let how = if crate::mounts::is_mount_point(&run) {
        Mounted::Kept
    } else {
        nix::mount::mount(
            Some(SOURCE),
            &run,
            Some("tmpfs"),
            MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC,
            Some("mode=0700"),
        )
        .map_err(err("mount a tmpfs on", &run))?;
        Mounted::Fresh
    };
    for d in [sandboxes(data), containers(data)] {
        crate::private_dir::create_private_dir(&d).map_err(io_err("mkdir", &d))?;
    }
    Ok(how)
}

/// Unmounts the run tmpfs of `data` (lazily, each mount stacked there; nothing mounted there
/// is fine). What is in it is gone: for a stop with no sandbox left, or a data dir would keep
/// a mount after its owner.
pub fn unmount(data: &Path) -> Result<(), MountError> {
    crate::mounts::unmount_points(&[path(data)])
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn root() -> bool {
        nix::unistd::Uid::effective().is_root()
    }

    #[test]
    fn mounted_once_private_kept_by_a_second_mount_and_gone_after_unmount() {
        if !root() {
            eprintln!("skipped: needs root");
            return;
        }
        let data = tempfile::tempdir().expect("tempdir");
        assert_eq!(mount(data.path()).expect("mount"), Mounted::Fresh);
        let run = path(data.path());
        let fs = nix::sys::statfs::statfs(&run).expect("statfs");
        assert_eq!(fs.filesystem_type(), nix::sys::statfs::TMPFS_MAGIC);
        for d in [run.clone(), sandboxes(data.path()), containers(data.path())] {
            let mode = std::fs::metadata(&d).expect("stat").permissions().mode() & 0o7777;
            assert_eq!(mode, 0o700, "{}", d.display());
        }
        let mark = sandboxes(data.path()).join("mark");
        std::fs::write(&mark, b"x").expect("write");
        // A restart's start: the same tmpfs, what was in it still there, not a second one.
        assert_eq!(mount(data.path()).expect("again"), Mounted::Kept);
        assert!(mark.exists(), "a second mount hid what the first held");
        unmount(data.path()).expect("unmount");
        assert!(!crate::mounts::is_mount_point(&run), "still mounted");
        assert!(!mark.exists());
        unmount(data.path()).expect("a second unmount finds nothing and is fine");
    }
}
