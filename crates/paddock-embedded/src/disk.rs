//! A sandbox's writable layer with a size limit (security review H5).
//!
//! Two ways to enforce the limit, picked by [`DiskBackend`]:
//! - [`DiskBackend::Image`] (the default): a sparse ext4 image file of the limit's size in the
//!   sandbox's directory, mounted through a loop device. Only the blocks written take host
//!   disk, nothing is charged to the sandbox's memory, and the kernel refuses writes past the
//!   limit with ENOSPC. Each sandbox's image is a sparse copy of a blank one made once per
//!   size by `mkfs.ext4` (in `<data dir>/disk-blanks`), attached to a loop device and mounted
//!   by this process (about 1 ms and no process started, where `mkfs.ext4` and `mount -o loop`
//!   took 20 ms each under load).
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
/// file at `image`, copied from a blank image of that size kept in `blanks` (made by
/// `mkfs.ext4` the first time). Undone by unmounting `target` (the loop device is set to clear
/// itself when its last mount goes) and removing `image`.
pub fn mount_limited(
    target: &Path,
    image: &Path,
    blanks: &Path,
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
            // A copy of the blank's few written blocks instead of a `mkfs.ext4` per sandbox:
            // no process to start, and a fraction of the work (the file systems are alike but
            // for their UUID, which nothing here reads).
            let t = std::time::Instant::now();
            let blank = blank_image(blanks, bytes).map_err(fail)?;
            copy_sparse(&blank, image, bytes)
                .map_err(|e| fail(format!("copy {}: {e}", blank.display())))?;
            tracing::debug!(
                ms = t.elapsed().as_secs_f64() * 1000.0,
                "phase: disk image: copy of the blank"
            );
            let t = std::time::Instant::now();
            drop_cached(image);
            tracing::debug!(
                ms = t.elapsed().as_secs_f64() * 1000.0,
                "phase: disk image: sync and drop cached"
            );
            mount_loop(image, target).map_err(|e| fail(format!("loop mount: {e}")))
        }
    }
}

/// The mkfs options of the blanks, in their file names: a blank of 2 GiB without a resize
/// inode has 152 KiB written (with one, 1,176 KiB).
const BLANK_FORMAT: &str = "noresize";

/// The blank ext4 image of `bytes` in `dir`, made on first use. Two creates that make it at
/// once each write their own temporary file and the last rename wins; both are the same.
fn blank_image(dir: &Path, bytes: u64) -> Result<PathBuf, String> {
    // Named for its format: blanks of older versions (made with a resize inode) are not used.
    let blank = dir.join(format!("ext4-{BLANK_FORMAT}-{bytes}.img"));
    if blank.is_file() {
        return Ok(blank);
    }
    std::fs::create_dir_all(dir).map_err(|e| format!("mkdir {}: {e}", dir.display()))?;
    let tmp = dir.join(format!(
        ".ext4-{bytes}.{}.{:?}.tmp",
        std::process::id(),
        std::thread::current().id()
    ));
    let made = (|| {
        let f =
            std::fs::File::create(&tmp).map_err(|e| format!("create {}: {e}", tmp.display()))?;
        f.set_len(bytes)
            .map_err(|e| format!("size {}: {e}", tmp.display()))?;
        drop(f);
        // No journal (a sandbox's scratch disk need not survive a host crash), no reserved
        // blocks (the sandbox gets the whole limit), lazy inode tables (fast), and no resize
        // inode: a sandbox's disk never grows, and the blocks reserved for growing it were
        // 1 MiB of the 1.1 MiB each create copied, synced and read back (see
        // `BLANK_FORMAT`).
        run(Command::new("mkfs.ext4")
            .args(["-q", "-F", "-m", "0", "-O", "^has_journal,^resize_inode"])
            .args(["-E", "lazy_itable_init=1,nodiscard"])
            .arg(&tmp))
        .map_err(|r| format!("mkfs.ext4: {r}"))?;
        std::fs::rename(&tmp, &blank).map_err(|e| format!("rename {}: {e}", tmp.display()))
    })();
    if made.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    made.map(|()| blank)
}

/// Copies the written extents of the sparse file `from` into a new sparse file `to` of
/// `len` bytes (`std::io::copy` between files is `copy_file_range` in the kernel).
fn copy_sparse(from: &Path, to: &Path, len: u64) -> std::io::Result<()> {
    use nix::unistd::{Whence, lseek};
    use std::io::{Read, Seek, SeekFrom};
    use std::os::fd::AsRawFd;
    let mut src = std::fs::File::open(from)?;
    let mut dst = std::fs::File::create(to)?;
    dst.set_len(len)?;
    let end = src.metadata()?.len();
    let mut at: i64 = 0;
    while (at as u64) < end {
        let data = match lseek(src.as_raw_fd(), at, Whence::SeekData) {
            Ok(d) => d,
            // No data after `at`: the rest is a hole.
            Err(nix::errno::Errno::ENXIO) => break,
            Err(e) => return Err(e.into()),
        };
        let hole = lseek(src.as_raw_fd(), data, Whence::SeekHole)?;
        src.seek(SeekFrom::Start(data as u64))?;
        dst.seek(SeekFrom::Start(data as u64))?;
        let n = std::io::copy(&mut (&mut src).take((hole - data) as u64), &mut dst)?;
        if n != (hole - data) as u64 {
            return Err(std::io::Error::other("short copy"));
        }
        at = hole;
    }
    Ok(())
}

/// Attaches `image` to a free loop device that clears itself when its last user goes, and
/// mounts its ext4 at `target` (what `mount -o loop` does, without the process and its scan
/// of every loop device in sysfs).
fn mount_loop(image: &Path, target: &Path) -> Result<(), String> {
    use nix::mount::{MsFlags, mount};
    let t = std::time::Instant::now();
    let dev = attach_loop(image)?;
    tracing::debug!(
        ms = t.elapsed().as_secs_f64() * 1000.0,
        "phase: disk image: loop attach"
    );
    let t = std::time::Instant::now();
    let r = mount(
        Some(&dev.path),
        target,
        Some("ext4"),
        MsFlags::MS_NOSUID | MsFlags::MS_NODEV,
        None::<&str>,
    );
    // The mount holds the device now; closing ours lets autoclear detach it at the unmount
    // (or now, if the mount failed).
    drop(dev);
    tracing::debug!(
        ms = t.elapsed().as_secs_f64() * 1000.0,
        "phase: disk image: mount"
    );
    r.map_err(|e| format!("mount {}: {e}", target.display()))
}

/// An attached loop device, open.
struct Loop {
    path: PathBuf,
    _fd: std::fs::File,
}

/// `struct loop_info64` of `<linux/loop.h>`.
#[repr(C)]
struct LoopInfo64 {
    device: u64,
    inode: u64,
    rdevice: u64,
    offset: u64,
    sizelimit: u64,
    number: u32,
    encrypt_type: u32,
    encrypt_key_size: u32,
    flags: u32,
    file_name: [u8; 64],
    crypt_name: [u8; 64],
    encrypt_key: [u8; 32],
    init: [u64; 2],
}

/// `struct loop_config` of `<linux/loop.h>`.
#[repr(C)]
struct LoopConfig {
    fd: u32,
    block_size: u32,
    info: LoopInfo64,
    reserved: [u64; 8],
}

const LOOP_CTL_GET_FREE: nix::libc::c_ulong = 0x4C82;
const LOOP_CONFIGURE: nix::libc::c_ulong = 0x4C0A;
const LO_FLAGS_AUTOCLEAR: u32 = 4;

// The loop ioctls have no safe wrapper in nix (or std); the two calls below are raw `ioctl`s
// on descriptors this function owns.
#[allow(unsafe_code)]
fn attach_loop(image: &Path) -> Result<Loop, String> {
    use std::os::fd::AsRawFd;
    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(image)
        .map_err(|e| format!("open {}: {e}", image.display()))?;
    let ctl = std::fs::File::open("/dev/loop-control")
        .map_err(|e| format!("open /dev/loop-control: {e}"))?;
    let mut info = LoopInfo64 {
        device: 0,
        inode: 0,
        rdevice: 0,
        offset: 0,
        sizelimit: 0,
        number: 0,
        encrypt_type: 0,
        encrypt_key_size: 0,
        flags: LO_FLAGS_AUTOCLEAR,
        file_name: [0; 64],
        crypt_name: [0; 64],
        encrypt_key: [0; 32],
        init: [0; 2],
    };
    let name = image.as_os_str().as_encoded_bytes();
    let n = name.len().min(info.file_name.len() - 1);
    info.file_name[..n].copy_from_slice(&name[..n]);
    let cfg = LoopConfig {
        fd: file.as_raw_fd() as u32,
        block_size: 0,
        info,
        reserved: [0; 8],
    };
    // Another process may take the free device between our asking and configuring it
    // (EBUSY): ask again.
    let mut last = String::new();
    for _ in 0..64 {
        // SAFETY: LOOP_CTL_GET_FREE takes no argument and returns a device number.
        let n = unsafe { nix::libc::ioctl(ctl.as_raw_fd(), LOOP_CTL_GET_FREE as _) };
        if n < 0 {
            return Err(format!(
                "no free loop device: {}",
                std::io::Error::last_os_error()
            ));
        }
        let path = PathBuf::from(format!("/dev/loop{n}"));
        let dev = match std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(&path)
        {
            Ok(d) => d,
            // Made by the kernel, the node may not be there yet; ask again.
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                last = format!("{}: {e}", path.display());
                std::thread::sleep(std::time::Duration::from_millis(1));
                continue;
            }
            Err(e) => return Err(format!("open {}: {e}", path.display())),
        };
        // SAFETY: `cfg` is a valid `struct loop_config` that outlives the call.
        let r = unsafe {
            nix::libc::ioctl(
                dev.as_raw_fd(),
                LOOP_CONFIGURE as _,
                &cfg as *const LoopConfig,
            )
        };
        if r == 0 {
            return Ok(Loop { path, _fd: dev });
        }
        let e = std::io::Error::last_os_error();
        if e.raw_os_error() != Some(nix::libc::EBUSY) {
            return Err(format!("configure {}: {e}", path.display()));
        }
        last = format!("{}: {e}", path.display());
    }
    Err(format!("no loop device could be configured ({last})"))
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
///
/// `known` are the devices found behind `dir`'s mounts before they were detached
/// ([`loops_mounted_at`]): only those are watched then. `None` looks at every loop device on
/// the host, which costs a read per device — a thousand on a host of a thousand sandboxes.
pub fn release_loops_under(
    dir: &Path,
    known: Option<Vec<PathBuf>>,
    deadline: std::time::Instant,
) -> Vec<PathBuf> {
    let attached = || match &known {
        Some(devs) => devs
            .iter()
            .filter_map(|dev| {
                let name = dev.file_name()?;
                let sys = Path::new("/sys/block").join(name);
                let file = backing_file(&sys)?;
                file.starts_with(dir).then(|| (dev.clone(), file))
            })
            .collect(),
        None => loop_devices_under(dir),
    };
    loop {
        let left = attached();
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

/// The loop devices behind the file system mounted at `target`: none for a tmpfs, the one
/// its device number names for an image (nothing is scanned). `None` when nothing is mounted
/// there, so the caller cannot tell and must look at every loop device.
pub fn loops_mounted_at(target: &Path) -> Option<Vec<PathBuf>> {
    use std::os::unix::fs::MetadataExt;
    const LOOP_MAJOR: u64 = 7;
    if !crate::mounts::is_mount_point(target) {
        return None;
    }
    let dev = std::fs::metadata(target).ok()?.dev();
    let (major, minor) = (nix::sys::stat::major(dev), nix::sys::stat::minor(dev));
    if major != LOOP_MAJOR {
        return Some(Vec::new());
    }
    let link = std::fs::read_link(format!("/sys/dev/block/{major}:{minor}")).ok()?;
    Some(vec![Path::new("/dev").join(link.file_name()?)])
}

/// Bytes in use on the file system mounted at `target` (a sandbox's disk), as `df` counts
/// them: its blocks less the free ones (ext4 leaves its own metadata out of both). `None` when
/// nothing is mounted there: `statvfs` would then answer for the file system below.
pub fn used_bytes(target: &Path) -> Option<u64> {
    if !crate::mounts::is_mount_point(target) {
        return None;
    }
    let s = rustix::fs::statvfs(target).ok()?;
    Some(
        s.f_blocks
            .saturating_sub(s.f_bfree)
            .saturating_mul(s.f_frsize),
    )
}

/// The file behind the loop device whose sysfs directory is `sys`, if it has one.
fn backing_file(sys: &Path) -> Option<PathBuf> {
    let file = std::fs::read_to_string(sys.join("loop/backing_file")).ok()?;
    Some(PathBuf::from(file.trim().trim_end_matches(" (deleted)")))
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
            let file = backing_file(&e.path())?;
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

    fn scratch(name: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("paddock-disk-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).expect("scratch dir");
        d
    }

    #[test]
    fn a_sparse_copy_keeps_the_data_and_the_holes() {
        use std::io::{Read, Seek, SeekFrom, Write};
        use std::os::unix::fs::MetadataExt;
        let d = scratch("copy");
        let (from, to) = (d.join("from"), d.join("to"));
        let len: u64 = 64 << 20;
        let mut f = std::fs::File::create(&from).expect("create");
        f.set_len(len).expect("size");
        f.write_all(&[1u8; 4096]).expect("write head");
        f.seek(SeekFrom::Start(32 << 20)).expect("seek");
        f.write_all(&[2u8; 8192]).expect("write middle");
        drop(f);
        copy_sparse(&from, &to, len).expect("copy");
        let meta = std::fs::metadata(&to).expect("stat");
        assert_eq!(meta.len(), len);
        // Only the written blocks are allocated (not 64 MiB of zeros).
        assert!(meta.blocks() * 512 < 1 << 20, "{} blocks", meta.blocks());
        let mut got = Vec::new();
        std::fs::File::open(&to)
            .expect("open")
            .read_to_end(&mut got)
            .expect("read");
        assert!(got[..4096].iter().all(|b| *b == 1));
        assert!(got[4096..32 << 20].iter().all(|b| *b == 0));
        assert!(got[32 << 20..(32 << 20) + 8192].iter().all(|b| *b == 2));
        assert!(got[(32 << 20) + 8192..].iter().all(|b| *b == 0));
        let _ = std::fs::remove_dir_all(&d);
    }

    /// The teardown finds a sandbox's loop device from its disk's mount, and releasing only
    /// that device leaves no loop device behind the image.
    #[test]
    fn the_loop_device_is_found_from_the_mount() {
        if !nix::unistd::Uid::effective().is_root() {
            eprintln!("skipped: loop devices need root");
            return;
        }
        let d = scratch("loopof");
        let (target, image) = (d.join("disk"), d.join("disk.img"));
        assert_eq!(loops_mounted_at(&target), None, "nothing mounted yet");
        mount_limited(
            &target,
            &image,
            &d.join("blanks"),
            16 << 20,
            DiskBackend::Image,
        )
        .expect("mount");
        let devs = loops_mounted_at(&target).expect("mounted");
        assert_eq!(devs.len(), 1, "{devs:?}");
        let sys = Path::new("/sys/block").join(devs[0].file_name().expect("name"));
        assert_eq!(backing_file(&sys), Some(image.clone()));
        assert_eq!(loops_under(&d), vec![image.clone()]);

        crate::mounts::unmount_points(std::slice::from_ref(&target)).expect("unmount");
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        assert!(release_loops_under(&d, Some(devs), deadline).is_empty());
        assert!(loops_under(&d).is_empty());

        mount_limited(
            &target,
            &image,
            &d.join("blanks"),
            16 << 20,
            DiskBackend::Tmpfs,
        )
        .expect("tmpfs");
        assert_eq!(
            loops_mounted_at(&target),
            Some(Vec::new()),
            "a tmpfs has none"
        );
        crate::mounts::remove_tree(&d).expect("remove");
    }

    /// What a create copies and syncs is the blank's written blocks: without a resize inode
    /// (blocks reserved to grow the file system, which a sandbox's disk never does) a 2 GiB
    /// blank has about a tenth of them.
    #[test]
    fn the_blank_image_has_no_resize_inode_and_few_written_blocks() {
        use std::io::{Read, Seek, SeekFrom};
        use std::os::unix::fs::MetadataExt;
        let d = scratch("small");
        let blank = blank_image(&d, 2 << 30).expect("make");
        let allocated = std::fs::metadata(&blank).expect("stat").blocks() * 512;
        assert!(allocated < 512 << 10, "{allocated} bytes written");
        // The superblock is at 1024; `s_feature_compat` at 0x5C in it; RESIZE_INODE is 0x10.
        let mut sb = [0u8; 1024];
        let mut f = std::fs::File::open(&blank).expect("open");
        f.seek(SeekFrom::Start(1024)).expect("seek");
        f.read_exact(&mut sb).expect("read superblock");
        assert_eq!(
            u16::from_le_bytes([sb[0x38], sb[0x39]]),
            0xEF53,
            "ext4 magic"
        );
        let compat = u32::from_le_bytes([sb[0x5C], sb[0x5D], sb[0x5E], sb[0x5F]]);
        assert_eq!(compat & 0x10, 0, "resize_inode is set: {compat:#x}");
        let _ = std::fs::remove_dir_all(&d);
    }

    #[test]
    fn the_blank_image_is_made_once_per_size() {
        use std::os::unix::fs::MetadataExt;
        let d = scratch("blank");
        let first = blank_image(&d, 16 << 20).expect("make");
        let ino = std::fs::metadata(&first).expect("stat").ino();
        let again = blank_image(&d, 16 << 20).expect("reuse");
        assert_eq!(first, again);
        assert_eq!(
            std::fs::metadata(&again).expect("stat").ino(),
            ino,
            "made again"
        );
        let other = blank_image(&d, 32 << 20).expect("other size");
        assert_ne!(other, first);
        assert_eq!(std::fs::metadata(&other).expect("stat").len(), 32 << 20);
        // No temporary file is left beside them.
        let names: Vec<_> = std::fs::read_dir(&d).expect("list").flatten().collect();
        assert_eq!(names.len(), 2, "{names:?}");
        let _ = std::fs::remove_dir_all(&d);
    }
}
