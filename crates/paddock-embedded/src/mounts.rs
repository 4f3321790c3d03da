//! Mount helpers: overlay root filesystems, `/proc` for template builds, and finding/undoing
//! every mount under a directory (teardown and recovery), and detached mount trees that carry
//! a mount from one mount namespace into another.

use std::ffi::CString;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use nix::mount::{MntFlags, MsFlags, mount, umount2};

/// A mount call failed.
#[derive(Debug, thiserror::Error)]
#[error("{op} {target}: {source}")]
pub struct MountError {
    op: &'static str,
    target: PathBuf,
    #[source]
    source: std::io::Error,
}

pub(crate) fn err<'a>(
    op: &'static str,
    target: &'a Path,
) -> impl FnOnce(nix::Error) -> MountError + 'a {
    move |e| MountError {
        op,
        target: target.to_owned(),
        source: e.into(),
    }
}

/// Mounts an overlay of `lowers` (topmost first) with `upper`/`work` at `target`, `nosuid` and
/// `nodev`.
pub fn mount_overlay(
    lowers: &[PathBuf],
    upper: &Path,
    work: &Path,
    target: &Path,
) -> Result<(), MountError> {
    let lower = lowers
        .iter()
        .map(|p| p.display().to_string())
        .collect::<Vec<_>>()
        .join(":");
    // `index=off`/`xino=off` keep the layers usable from several overlays at once and avoid
    // surprises when a layer directory is also an upper elsewhere (template builds).
    let opts = format!(
        "lowerdir={lower},upperdir={},workdir={},index=off,xino=off",
        upper.display(),
        work.display()
    );
    // The overlay lives in the host's mount namespace, where host users could reach it: files a
    // sandbox planted there must not work as setuid programs or device nodes for them.
    mount(
        Some("overlay"),
        target,
        Some("overlay"),
        MsFlags::MS_NOSUID | MsFlags::MS_NODEV,
        Some(opts.as_str()),
    )
    .map_err(err("mount overlay on", target))
}

/// [`mount_overlay`] for a sandbox in a user namespace (`userns`; without one it is
/// [`mount_overlay`]): the lowers stored in host root's ids (the template's) are taken through
/// idmapped mounts of the namespace's range, the ones already in the range (a snapshot's) as
/// they are, and the upper and work directories belong to the range's root. The idmapped
/// mounts are made in `views` (a directory beside `upper` and `work` on the sandbox's own
/// disk) and detached once the overlay is up: overlayfs keeps private clones of its layers'
/// mounts.
///
/// Their directories stay, empty, until the sandbox's disk goes (they are reused if the
/// overlay is mounted again), and they are made on the sandbox's disk, not in the data dir:
/// on an ext4 without a journal each inode allocation steps one by one over the inodes freed
/// in the last minute or more (the kernel's `recently_deleted`), so every inode made and freed
/// in the data dir per create made the next creates dearer.
pub fn mount_overlay_mapped(
    lowers: &[PathBuf],
    upper: &Path,
    work: &Path,
    views: &Path,
    target: &Path,
    userns: Option<&crate::userns::Userns>,
) -> Result<(), MountError> {
    let Some(ns) = userns else {
        return mount_overlay(lowers, upper, work, target);
    };
    let shift = |op: &'static str, at: &Path| {
        let at = at.to_owned();
        move |e: crate::userns::UsernsError| MountError {
            op,
            target: at,
            source: std::io::Error::other(e),
        }
    };
    for d in [upper, work] {
        ns.own_by_root(d)
            .map_err(shift("give to sandbox root", d))?;
    }
    let mut made = Vec::new();
    let result = (|| {
        let mut mapped = Vec::with_capacity(lowers.len());
        for (i, lower) in lowers.iter().enumerate() {
            if !ns.needs_idmap(lower).map_err(shift("stat layer", lower))? {
                mapped.push(lower.clone());
                continue;
            }
            let at = views.join(i.to_string());
            std::fs::create_dir_all(&at).map_err(|e| MountError {
                op: "mkdir",
                target: at.clone(),
                source: e,
            })?;
            // Listed before mounting: a mount that half happened is detached too.
            made.push(at.clone());
            ns.mount_idmapped(lower, &at)
                .map_err(shift("idmap layer on", &at))?;
            mapped.push(at);
        }
        mount_overlay(&mapped, upper, work, target)
    })();
    // The views are the overlay's now (or useless, after a failure): ours go, whatever
    // happened, and nothing may stay mounted on a directory left in place.
    let cleanup = made.iter().try_for_each(|at| {
        detach_all_at(at)?;
        if is_mount_point(at) {
            return Err(MountError {
                op: "umount",
                target: at.clone(),
                source: std::io::Error::other("still a mount point after detaching it"),
            });
        }
        Ok(())
    });
    result.and(cleanup)
}

/// Mounts a tmpfs of `bytes` at `target` (created if missing).
pub fn mount_tmpfs(target: &Path, bytes: u64) -> Result<(), MountError> {
    std::fs::create_dir_all(target).map_err(|e| MountError {
        op: "mkdir",
        target: target.to_owned(),
        source: e,
    })?;
    let opts = format!("size={bytes},mode=0755");
    mount(
        Some("tmpfs"),
        target,
        Some("tmpfs"),
        MsFlags::MS_NOSUID | MsFlags::MS_NODEV,
        Some(opts.as_str()),
    )
    .map_err(err("mount tmpfs on", target))
}

/// Detaches the mounts at `points` (lazily), each as often as something is mounted there: the
/// teardown of mounts whose places the caller knows, without reading `/proc/self/mountinfo`,
/// whose size grows with every sandbox on the host (two reads per create and teardown were a
/// third of `paddock up`'s CPU on a host with 2,000 mounts).
pub fn unmount_points(points: &[PathBuf]) -> Result<(), MountError> {
    let mut first_err = None;
    for p in points {
        if let Err(e) = detach_all_at(p)
            && first_err.is_none()
        {
            first_err = Some(e);
        }
    }
    first_err.map_or(Ok(()), Err)
}

/// How many mounts may be stacked on one point before we give up on it.
const MAX_STACKED: usize = 8;

/// Lazily detaches whatever is mounted at `p`, stacked mounts included. Nothing mounted there
/// (or no `p` at all) is fine.
fn detach_all_at(p: &Path) -> Result<(), MountError> {
    for _ in 0..MAX_STACKED {
        match umount2(p, MntFlags::MNT_DETACH) {
            Ok(()) => {}
            Err(nix::Error::EINVAL | nix::Error::ENOENT) => return Ok(()),
            Err(e) => return Err(err("umount", p)(e)),
        }
    }
    Err(MountError {
        op: "umount",
        target: p.to_owned(),
        source: std::io::Error::other(format!("more than {MAX_STACKED} stacked mounts")),
    })
}

/// Whether something is mounted at `p` (its mount differs from its parent's); `false` when
/// either cannot be looked at.
pub fn is_mount_point(p: &Path) -> bool {
    let parent = p.parent().unwrap_or(Path::new("/"));
    matches!((mount_id(p), mount_id(parent)), (Ok(a), Ok(b)) if a != b)
}

/// The id of the mount `p` (not followed if a symlink) lies on.
fn mount_id(p: &Path) -> std::io::Result<u64> {
    use rustix::fs::{AtFlags, CWD, StatxFlags, statx};
    let st = statx(CWD, p, AtFlags::SYMLINK_NOFOLLOW, StatxFlags::MNT_ID)?;
    if !StatxFlags::from_bits_retain(st.stx_mask).contains(StatxFlags::MNT_ID) {
        return Err(std::io::Error::other(
            "the kernel gives no mount id (statx)",
        ));
    }
    Ok(st.stx_mnt_id)
}

/// Removes `dir` and everything under it, detaching any mount it finds on the way instead of
/// descending into it: a plain `remove_dir_all` would delete the files of whatever is still
/// mounted below `dir` — a template layer behind an idmapped mount, say. Mounts are found by
/// comparing each entry's mount id with its parent's (`statx`), which catches bind mounts of
/// the same file system too, and costs the size of `dir`, not of the host's mount table.
/// A missing `dir` is fine.
pub fn remove_tree(dir: &Path) -> Result<(), MountError> {
    let parent = dir.parent().unwrap_or(Path::new("/"));
    match mount_id(parent) {
        Ok(home) => remove_on_mount(dir, home),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(io_err("statx", parent)(e)),
    }
}

pub(crate) fn io_err<'a>(
    op: &'static str,
    p: &'a Path,
) -> impl FnOnce(std::io::Error) -> MountError + 'a {
    move |source| MountError {
        op,
        target: p.to_owned(),
        source,
    }
}

/// Removes `p`, which lies on mount `home` once whatever is mounted on it is detached.
fn remove_on_mount(p: &Path, home: u64) -> Result<(), MountError> {
    let on = |p: &Path| match mount_id(p) {
        Ok(id) => Ok(Some(id)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(io_err("statx", p)(e)),
    };
    let Some(mut id) = on(p)? else {
        return Ok(());
    };
    if id != home {
        detach_all_at(p)?;
        id = on(p)?.unwrap_or(home);
        if id != home {
            return Err(MountError {
                op: "umount",
                target: p.to_owned(),
                source: std::io::Error::other("still a mount point after detaching it"),
            });
        }
    }
    let meta = match std::fs::symlink_metadata(p) {
        Ok(m) => m,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(io_err("stat", p)(e)),
    };
    let gone = |r: std::io::Result<()>, op| match r {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(io_err(op, p)(e)),
        _ => Ok(()),
    };
    if !meta.is_dir() {
        return gone(std::fs::remove_file(p), "remove");
    }
    let entries = match std::fs::read_dir(p) {
        Ok(rd) => rd,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(io_err("read dir", p)(e)),
    };
    for entry in entries {
        let entry = entry.map_err(io_err("read dir", p))?;
        remove_on_mount(&entry.path(), home)?;
    }
    gone(std::fs::remove_dir(p), "remove dir")
}

/// Mounts a fresh procfs at `target`.
pub fn mount_proc(target: &Path) -> Result<(), MountError> {
    std::fs::create_dir_all(target).map_err(|e| MountError {
        op: "mkdir",
        target: target.to_owned(),
        source: e,
    })?;
    mount(
        Some("proc"),
        target,
        Some("proc"),
        MsFlags::MS_NOSUID | MsFlags::MS_NODEV,
        None::<&str>,
    )
    .map_err(err("mount proc on", target))
}

/// Mount points at or under `dir`, deepest first.
pub fn mounts_under(dir: &Path) -> Vec<PathBuf> {
    let Ok(info) = std::fs::read_to_string("/proc/self/mountinfo") else {
        return Vec::new();
    };
    let mut out: Vec<PathBuf> = parse_mountinfo(&info)
        .into_iter()
        .filter(|m| m.starts_with(dir))
        .collect();
    out.sort_by_key(|p| std::cmp::Reverse(p.components().count()));
    out.dedup();
    out
}

/// Lazily unmounts everything at or under `dir` (deepest first).
pub fn unmount_all_under(dir: &Path) -> Result<(), MountError> {
    let first_err = detach_until_gone(|| mounts_under(dir));
    match first_err {
        Some(e) if !mounts_under(dir).is_empty() => Err(e),
        _ => Ok(()),
    }
}

/// Detaches the mount points `points` lists (deepest first), asking again until it lists
/// none: stacked mounts on one point need one detach each, and a detach may take mounts below
/// it along. Returns the first refusal other than "not a mount" or "no such path" (a mount
/// gone with its parent's detach), for the caller to weigh against what is left.
fn detach_until_gone(points: impl Fn() -> Vec<PathBuf>) -> Option<MountError> {
    let mut first_err = None;
    // Bounded: a mount that cannot be detached must not loop forever.
    for _ in 0..8 {
        let now = points();
        if now.is_empty() {
            break;
        }
        for p in now {
            if let Err(e) = umount2(&p, MntFlags::MNT_DETACH)
                && e != nix::Error::EINVAL
                && e != nix::Error::ENOENT
                && first_err.is_none()
            {
                first_err = Some(MountError {
                    op: "umount",
                    target: p.clone(),
                    source: e.into(),
                });
            }
        }
    }
    first_err
}

/// Lazily unmounts, in this mount namespace, every mount that holds none of the paths in
/// `needed` on its way to the root and is not under `/proc`, `/sys` or `/dev` (the kernel's
/// views every process uses). What stays is each needed path's own mount and the mounts above
/// it; anything mounted below a needed directory goes (unless it is needed too). Returns what
/// should have gone and is still there: refusals themselves are left out, as a mount that went
/// with its parent's detach is gone either way.
pub fn detach_all_but(needed: &[PathBuf]) -> Vec<PathBuf> {
    let kernel = [Path::new("/proc"), Path::new("/sys"), Path::new("/dev")];
    let keep = |m: &Path| {
        kernel.iter().any(|k| m.starts_with(k)) || needed.iter().any(|n| n.starts_with(m))
    };
    let unneeded = || -> Vec<PathBuf> {
        mounts_under(Path::new("/"))
            .into_iter()
            .filter(|p| !keep(p))
            .collect()
    };
    let _ = detach_until_gone(unneeded);
    unneeded()
}

/// Moves this (single-threaded) process into a new mount namespace whose mounts all have
/// `propagation` (`MS_SLAVE`: what it mounts or unmounts stays its own; `MS_PRIVATE`: nor
/// does anything reach it from the namespace it leaves).
pub fn own_mount_namespace(propagation: MsFlags) -> std::io::Result<()> {
    nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNS)?;
    mount(
        None::<&str>,
        "/",
        None::<&str>,
        MsFlags::MS_REC | propagation,
        None::<&str>,
    )?;
    Ok(())
}

// From <linux/mount.h>; the libc crate lacks some of them.
const OPEN_TREE_CLONE: u32 = 1;
const OPEN_TREE_CLOEXEC: u32 = nix::libc::O_CLOEXEC as u32;
const MOVE_MOUNT_F_EMPTY_PATH: u32 = 0x4;

fn c_path(p: &Path) -> std::io::Result<CString> {
    CString::new(p.as_os_str().as_bytes()).map_err(std::io::Error::other)
}

/// A detached copy of the mount at `path` (`open_tree(2)` with `OPEN_TREE_CLONE`), without its
/// submounts. It belongs to no mount namespace: [`attach_tree`] puts it into the caller's
/// (whichever namespace that is by then), and closing the last descriptor unmounts it.
#[allow(unsafe_code)]
pub fn clone_tree(path: &Path) -> std::io::Result<OwnedFd> {
    let c = c_path(path)?;
    // SAFETY: a plain syscall on a NUL-terminated path that outlives it; the descriptor it
    // returns is ours alone from here on.
    unsafe {
        let fd = nix::libc::syscall(
            nix::libc::SYS_open_tree,
            nix::libc::AT_FDCWD,
            c.as_ptr(),
            (OPEN_TREE_CLONE | OPEN_TREE_CLOEXEC) as nix::libc::c_uint,
        );
        if fd < 0 {
            return Err(std::io::Error::last_os_error());
        }
        Ok(OwnedFd::from_raw_fd(fd as i32))
    }
}

/// Mounts the detached tree `tree` (from [`clone_tree`]) at `target`, an existing directory
/// or file, in the caller's mount namespace (`move_mount(2)`).
#[allow(unsafe_code)]
pub fn attach_tree(tree: BorrowedFd<'_>, target: &Path) -> std::io::Result<()> {
    let t = c_path(target)?;
    // SAFETY: a plain syscall on a descriptor we borrow and NUL-terminated paths that outlive
    // it.
    let r = unsafe {
        nix::libc::syscall(
            nix::libc::SYS_move_mount,
            tree.as_raw_fd(),
            c"".as_ptr(),
            nix::libc::AT_FDCWD,
            t.as_ptr(),
            MOVE_MOUNT_F_EMPTY_PATH as nix::libc::c_uint,
        )
    };
    if r < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

/// Mount points listed in a `/proc/<pid>/mountinfo` text, with octal escapes decoded.
fn parse_mountinfo(text: &str) -> Vec<PathBuf> {
    text.lines()
        .filter_map(|l| l.split(' ').nth(4))
        .map(|p| PathBuf::from(unescape(p)))
        .collect()
}

fn unescape(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\'
            && i + 3 < b.len()
            && b[i + 1..i + 4].iter().all(|c| (b'0'..=b'7').contains(c))
        {
            let v = (b[i + 1] - b'0') * 64 + (b[i + 2] - b'0') * 8 + (b[i + 3] - b'0');
            out.push(v);
            i += 4;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_mount_points_with_escapes() {
        let text = "22 1 0:21 / /proc rw,nosuid - proc proc rw\n\
                    90 22 0:50 / /var/lib/my\\040dir rw - overlay overlay rw,lowerdir=/a\n";
        assert_eq!(
            parse_mountinfo(text),
            vec![PathBuf::from("/proc"), PathBuf::from("/var/lib/my dir")]
        );
    }

    /// `remove_tree` detaches what is mounted inside the tree — a tmpfs, and a bind mount of
    /// a directory outside it, stacked twice on a file system the tree shares — and never
    /// deletes through a mount: the bound directory's file survives.
    #[test]
    fn remove_tree_detaches_mounts_and_never_deletes_through_them() {
        if !nix::unistd::Uid::effective().is_root() {
            eprintln!("skipped: mounting needs root");
            return;
        }
        let d = tempfile::tempdir().expect("tempdir");
        let (outside, tree) = (d.path().join("outside"), d.path().join("tree"));
        std::fs::create_dir_all(&outside).expect("mkdir");
        std::fs::write(outside.join("keep"), "x").expect("write");
        let (tmp, bound) = (tree.join("a/tmp"), tree.join("b/bound"));
        for p in [&tmp, &bound] {
            std::fs::create_dir_all(p).expect("mkdir");
        }
        mount_tmpfs(&tmp, 1 << 20).expect("tmpfs");
        std::fs::write(tmp.join("f"), "y").expect("write");
        for _ in 0..2 {
            mount(
                Some(outside.as_path()),
                &bound,
                None::<&str>,
                MsFlags::MS_BIND,
                None::<&str>,
            )
            .expect("bind");
        }
        std::fs::write(tree.join("file"), "z").expect("write");

        remove_tree(&tree).expect("remove_tree");
        assert!(!tree.exists());
        assert!(mounts_under(d.path()).is_empty());
        assert_eq!(
            std::fs::read_to_string(outside.join("keep")).expect("kept"),
            "x"
        );
        remove_tree(&tree).expect("a missing tree is fine");
    }

    #[test]
    fn unmount_points_takes_stacked_mounts_and_ignores_plain_dirs() {
        if !nix::unistd::Uid::effective().is_root() {
            eprintln!("skipped: mounting needs root");
            return;
        }
        let d = tempfile::tempdir().expect("tempdir");
        let (a, plain) = (d.path().join("a"), d.path().join("plain"));
        std::fs::create_dir_all(&plain).expect("mkdir");
        mount_tmpfs(&a, 1 << 20).expect("tmpfs");
        mount_tmpfs(&a, 1 << 20).expect("tmpfs again");
        unmount_points(&[a.clone(), plain, d.path().join("missing")]).expect("unmount");
        assert!(mounts_under(d.path()).is_empty());
    }

    #[test]
    fn nothing_mounted_under_a_fresh_dir() {
        let d = tempfile::tempdir().expect("tempdir");
        assert!(mounts_under(d.path()).is_empty());
        assert!(unmount_all_under(d.path()).is_ok());
    }
}
