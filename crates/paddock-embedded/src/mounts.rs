//! Mount helpers: overlay root filesystems, `/proc` for template builds, and finding/undoing
//! every mount under a directory (teardown and recovery).

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

fn err<'a>(op: &'static str, target: &'a Path) -> impl FnOnce(nix::Error) -> MountError + 'a {
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
/// mounts are made under `<target>.lowers` and dropped once the overlay is up: overlayfs
/// keeps private clones of its layers' mounts.
pub fn mount_overlay_mapped(
    lowers: &[PathBuf],
    upper: &Path,
    work: &Path,
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
    let staging = target.with_extension("lowers");
    let result = (|| {
        let mut mapped = Vec::with_capacity(lowers.len());
        for (i, lower) in lowers.iter().enumerate() {
            if !ns.needs_idmap(lower).map_err(shift("stat layer", lower))? {
                mapped.push(lower.clone());
                continue;
            }
            let at = staging.join(i.to_string());
            std::fs::create_dir_all(&at).map_err(|e| MountError {
                op: "mkdir",
                target: at.clone(),
                source: e,
            })?;
            ns.mount_idmapped(lower, &at)
                .map_err(shift("idmap layer on", &at))?;
            mapped.push(at);
        }
        mount_overlay(&mapped, upper, work, target)
    })();
    let cleanup = unmount_all_under(&staging);
    let _ = std::fs::remove_dir_all(&staging);
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
    let mut first_err = None;
    // Repeat: stacked mounts on the same point need one umount each.
    for _ in 0..8 {
        let points = mounts_under(dir);
        if points.is_empty() {
            break;
        }
        for p in points {
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
    match first_err {
        Some(e) if !mounts_under(dir).is_empty() => Err(e),
        _ => Ok(()),
    }
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

    #[test]
    fn nothing_mounted_under_a_fresh_dir() {
        let d = tempfile::tempdir().expect("tempdir");
        assert!(mounts_under(d.path()).is_empty());
        assert!(unmount_all_under(d.path()).is_ok());
    }
}
