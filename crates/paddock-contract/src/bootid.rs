//! The per-boot id of a sandbox: a file of the host's bound read-only over the sandbox's
//! `/proc/sys/kernel/random/boot_id` by a `createContainer` hook, as a machine's changes on
//! every boot (E2B's reboot tests read it). libcontainer refuses OCI mounts under `/proc`, so
//! a hook binds it, in the sandbox's mount namespace once `/proc` is mounted, before
//! `pivot_root`.
//!
//! The hook runs the runtime binary (small and static: executing it costs a third of the CPU
//! of executing Paddock's own large binary, once per sandbox boot), so both link this module.

use std::path::{Path, PathBuf};

/// The arguments (after the program name) that make a binary the boot-id hook; the id's file
/// and the sandbox's root filesystem follow. The first is the container helper's marker, as
/// for the log relay (see [`crate::caplog::RELAY_ARGS`]).
pub const BOOT_ID_ARGS: [&str; 2] = ["__paddock-container", "boot-id"];

/// The sandbox-side path of the boot id, relative to its root filesystem.
pub const BOOT_ID_PATH: &str = "proc/sys/kernel/random/boot_id";

/// The id's file and the root filesystem, if `args` (the whole command line, program name
/// first) is the hook's.
pub fn hook_args(args: &[std::ffi::OsString]) -> Option<(PathBuf, PathBuf)> {
    match args {
        [_, a, b, file, rootfs] if *a == BOOT_ID_ARGS[0] && *b == BOOT_ID_ARGS[1] => {
            Some((PathBuf::from(file), PathBuf::from(rootfs)))
        }
        _ => None,
    }
}

/// Binds `file` read-only (and `nosuid`, `nodev`, `noexec`) over `<rootfs>/`[`BOOT_ID_PATH`].
pub fn bind(file: &Path, rootfs: &Path) -> std::io::Result<()> {
    let target = rootfs.join(BOOT_ID_PATH);
    mount(Some(file), &target, libc::MS_BIND)
        .map_err(|e| std::io::Error::new(e.kind(), format!("bind boot id: {e}")))?;
    mount(
        None,
        &target,
        libc::MS_BIND
            | libc::MS_REMOUNT
            | libc::MS_RDONLY
            | libc::MS_NOSUID
            | libc::MS_NODEV
            | libc::MS_NOEXEC,
    )
    .map_err(|e| std::io::Error::new(e.kind(), format!("make boot id read-only: {e}")))
}

/// `mount(2)` without a file system type or data, as binds and their remounts need.
#[allow(unsafe_code)]
fn mount(source: Option<&Path>, target: &Path, flags: libc::c_ulong) -> std::io::Result<()> {
    use std::ffi::CString;
    use std::os::unix::ffi::OsStrExt;
    let c = |p: &Path| CString::new(p.as_os_str().as_bytes()).map_err(std::io::Error::other);
    let source = source.map(c).transpose()?;
    let target = c(target)?;
    // SAFETY: every pointer is a NUL-terminated string that outlives the call, or null, which
    // mount(2) accepts for the source, file system type and data of a bind and its remount.
    let r = unsafe {
        libc::mount(
            source.as_ref().map_or(std::ptr::null(), |s| s.as_ptr()),
            target.as_ptr(),
            std::ptr::null(),
            flags,
            std::ptr::null(),
        )
    };
    if r == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(a: &[&str]) -> Vec<std::ffi::OsString> {
        a.iter().map(Into::into).collect()
    }

    #[test]
    fn the_hook_is_recognised_by_its_arguments_only() {
        assert_eq!(
            hook_args(&args(&[
                "rt",
                BOOT_ID_ARGS[0],
                BOOT_ID_ARGS[1],
                "/b/id",
                "/b/root"
            ])),
            Some((PathBuf::from("/b/id"), PathBuf::from("/b/root")))
        );
        assert_eq!(
            hook_args(&args(&["rt", BOOT_ID_ARGS[0], BOOT_ID_ARGS[1], "/b/id"])),
            None
        );
        assert_eq!(
            hook_args(&args(&["rt", "--listen", "0.0.0.0:1", "x", "y"])),
            None
        );
    }
}
