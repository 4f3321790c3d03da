//! A sandbox's writable layer with a size limit (security review H5).
//!
//! Two ways to enforce the limit, picked by [`DiskBackend`]:
//! - [`DiskBackend::Image`] (the default): a sparse ext4 image file of the limit's size in the
//!   sandbox's directory, mounted through a loop device. Only the blocks written take host
//!   disk, nothing is charged to the sandbox's memory, and the kernel refuses writes past the
//!   limit with ENOSPC. Costs a `mkfs.ext4` and a loop mount per sandbox (tens of
//!   milliseconds; measured in the branch report).
//! - [`DiskBackend::Tmpfs`]: a tmpfs of the limit's size. Cheapest to make, but its pages are
//!   charged to the sandbox's memory cgroup, so the disk limit also eats the memory limit.
//!
//! The data dir's file system has no project quota here (ext4 without `prjquota`), so a plain
//! directory cannot be limited.

use std::path::{Path, PathBuf};
use std::process::Command;

/// How a sandbox's disk limit is enforced.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum DiskBackend {
    /// A sparse ext4 image on a loop device.
    #[default]
    Image,
    /// A size-limited tmpfs (counts against the memory limit).
    Tmpfs,
}

impl std::str::FromStr for DiskBackend {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "image" => Ok(Self::Image),
            "tmpfs" => Ok(Self::Tmpfs),
            other => Err(format!("disk backend {other:?} is not `image` or `tmpfs`")),
        }
    }
}

/// The disk limit could not be put in place, so the sandbox must not start.
#[derive(Debug, thiserror::Error)]
#[error("cannot enforce the disk limit of {bytes} bytes with the {backend:?} backend: {reason}")]
pub struct DiskError {
    /// The limit asked for.
    pub bytes: u64,
    /// How it was to be enforced.
    pub backend: DiskBackend,
    /// What failed.
    pub reason: String,
}

/// Mounts a writable file system of at most `bytes` at `target`; an image backend keeps its
/// file at `image`. Undone by unmounting `target` (the loop device is set to clear itself when
/// its last mount goes) and removing `image`.
pub fn mount_limited(
    target: &Path,
    image: &Path,
    bytes: u64,
    backend: DiskBackend,
) -> Result<(), DiskError> {
    let fail = |reason: String| DiskError {
        bytes,
        backend,
        reason,
    };
    match backend {
        DiskBackend::Tmpfs => {
            crate::mounts::mount_tmpfs(target, bytes).map_err(|e| fail(e.to_string()))
        }
        DiskBackend::Image => {
            std::fs::create_dir_all(target).map_err(|e| fail(format!("mkdir: {e}")))?;
            let f = std::fs::File::create(image)
                .map_err(|e| fail(format!("create {}: {e}", image.display())))?;
            f.set_len(bytes)
                .map_err(|e| fail(format!("size {}: {e}", image.display())))?;
            drop(f);
            // No journal (a sandbox's scratch disk need not survive a host crash), no
            // reserved blocks (the sandbox gets the whole limit), lazy inode tables (fast).
            run(Command::new("mkfs.ext4")
                .args(["-q", "-F", "-m", "0", "-O", "^has_journal"])
                .args(["-E", "lazy_itable_init=1,nodiscard"])
                .arg(image))
            .map_err(|r| fail(format!("mkfs.ext4: {r}")))?;
            drop_cached(image);
            // mount(8) sets up the loop device with autoclear: it goes with the last unmount.
            run(Command::new("mount")
                .args(["-t", "ext4", "-o", "loop,nosuid,nodev"])
                .arg(image)
                .arg(target))
            .map_err(|r| fail(format!("loop mount: {r}")))
        }
    }
}

/// Drops the page cache of a freshly made image: the metadata `mkfs.ext4` wrote, about a MiB
/// that would otherwise stay cached (and charged to Paddock) for every idle sandbox. The file
/// system reads back through its loop device only what it uses. Best effort: a failure costs
/// memory, nothing else.
fn drop_cached(image: &Path) {
    use nix::fcntl::{PosixFadviseAdvice, posix_fadvise};
    use std::os::fd::AsRawFd;
    if let Ok(f) = std::fs::File::open(image) {
        // Written pages must be clean to be dropped.
        let _ = f.sync_all();
        let _ = posix_fadvise(f.as_raw_fd(), 0, 0, PosixFadviseAdvice::POSIX_FADV_DONTNEED);
    }
}

fn run(cmd: &mut Command) -> Result<(), String> {
    let out = cmd
        .stdin(std::process::Stdio::null())
        .output()
        .map_err(|e| e.to_string())?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "{}: {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

/// Detaches the loop devices of images under `dir` (after their mounts are gone) and waits
/// until `deadline` for the kernel to let them go. A lazily unmounted file system is released
/// a moment later than the unmount returns, and autoclear follows that; `losetup -d` marks a
/// still-busy device for the same autoclear. Returns the devices still attached at the deadline.
pub fn release_loops_under(dir: &Path, deadline: std::time::Instant) -> Vec<PathBuf> {
    loop {
        let left = loop_devices_under(dir);
        if left.is_empty() {
            return Vec::new();
        }
        for (dev, _) in &left {
            let _ = run(Command::new("losetup").arg("-d").arg(dev));
        }
        if std::time::Instant::now() >= deadline {
            return left.into_iter().map(|(_, file)| file).collect();
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
}

/// Loop devices whose backing file lies under `dir` (leak checks).
pub fn loops_under(dir: &Path) -> Vec<PathBuf> {
    loop_devices_under(dir)
        .into_iter()
        .map(|(_, file)| file)
        .collect()
}

/// `(/dev/loopN, backing file)` for each loop device backed by a file under `dir`.
fn loop_devices_under(dir: &Path) -> Vec<(PathBuf, PathBuf)> {
    let Ok(rd) = std::fs::read_dir("/sys/block") else {
        return Vec::new();
    };
    rd.flatten()
        .filter_map(|e| {
            let file = std::fs::read_to_string(e.path().join("loop/backing_file")).ok()?;
            let file = PathBuf::from(file.trim().trim_end_matches(" (deleted)"));
            file.starts_with(dir)
                .then(|| (Path::new("/dev").join(e.file_name()), file))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backend_names_parse_and_bad_ones_say_why() {
        assert_eq!("image".parse::<DiskBackend>(), Ok(DiskBackend::Image));
        assert_eq!("tmpfs".parse::<DiskBackend>(), Ok(DiskBackend::Tmpfs));
        let e = "zfs".parse::<DiskBackend>().expect_err("zfs");
        assert!(e.contains("zfs"), "{e}");
    }
}
