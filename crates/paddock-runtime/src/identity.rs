//! Running file operations with a user's permissions.
//!
//! The runtime runs as root, but a file written for `user` must be owned by
//! `user` and a file `user` may not read must stay unreadable. Rather than
//! re-implementing permission checks, each operation runs on a blocking
//! thread whose filesystem identity (fsuid, fsgid, supplementary groups) is
//! switched to the user's for the duration of the call. The raw syscalls act
//! on the calling thread only; libc's wrappers would broadcast the change to
//! every thread of the process, so they are deliberately not used.
#![allow(unsafe_code)]

use std::io;

use crate::users::User;

/// Runs `f` on a blocking thread with `user`'s filesystem identity.
pub async fn as_user<T, F>(user: &User, f: F) -> io::Result<T>
where
    F: FnOnce() -> io::Result<T> + Send + 'static,
    T: Send + 'static,
{
    let user = user.clone();
    tokio::task::spawn_blocking(move || {
        let _guard = IdentityGuard::switch(&user)?;
        f()
    })
    .await
    .map_err(|e| io::Error::other(format!("file operation failed: {e}")))?
}

/// Makes `cmd` start in a session of its own (so a signal to its process
/// group reaches the whole tree), optionally with its stdin as controlling
/// terminal, and with `user`'s credentials when the runtime runs as root.
pub fn exec_as(cmd: &mut std::process::Command, user: &User, with_tty: bool) {
    use std::os::unix::process::CommandExt;
    let switch_user = rustix::process::geteuid().is_root();
    let (uid, gid, groups) = (user.uid, user.gid, user.groups.clone());
    // SAFETY: the closure runs in the forked child before exec and only
    // makes raw syscalls (no allocation, no locks), which is what pre_exec
    // requires. The child is single-threaded, so per-thread credential
    // syscalls apply to the whole process.
    unsafe {
        cmd.pre_exec(move || {
            if libc::setsid() < 0 {
                return Err(io::Error::last_os_error());
            }
            if with_tty && libc::ioctl(0, libc::TIOCSCTTY as _, 0) < 0 {
                return Err(io::Error::last_os_error());
            }
            if switch_user
                && (libc::syscall(libc::SYS_setgroups, groups.len(), groups.as_ptr()) != 0
                    || libc::syscall(libc::SYS_setresgid, gid, gid, gid) != 0
                    || libc::syscall(libc::SYS_setresuid, uid, uid, uid) != 0)
            {
                return Err(io::Error::last_os_error());
            }
            Ok(())
        });
    }
}

/// Switches the current thread's filesystem identity and restores root's on drop.
struct IdentityGuard {
    active: bool,
}

impl IdentityGuard {
    fn switch(user: &User) -> io::Result<Self> {
        // Only root can (and needs to) switch; an unprivileged runtime
        // acts as itself for everyone.
        if !rustix::process::geteuid().is_root() || user.uid == 0 {
            return Ok(Self { active: false });
        }
        let groups: Vec<libc::gid_t> = user.groups.clone();
        // SAFETY: setgroups reads `groups.len()` gids from a live slice; the
        // raw syscall only changes this thread's credentials.
        let rc = unsafe { libc::syscall(libc::SYS_setgroups, groups.len(), groups.as_ptr()) };
        if rc != 0 {
            return Err(io::Error::last_os_error());
        }
        let guard = Self { active: true };
        // SAFETY: setfsgid/setfsuid take plain integers and touch only this
        // thread's credentials; they cannot fail for root.
        unsafe {
            libc::syscall(libc::SYS_setfsgid, user.gid);
            libc::syscall(libc::SYS_setfsuid, user.uid);
        }
        Ok(guard)
    }
}

impl Drop for IdentityGuard {
    fn drop(&mut self) {
        if !self.active {
            return;
        }
        // SAFETY: as in `switch`; restoring root's identity. The real and
        // saved uids never changed, so this cannot be refused.
        let rc = unsafe {
            libc::syscall(libc::SYS_setfsuid, 0);
            libc::syscall(libc::SYS_setfsgid, 0);
            libc::syscall(libc::SYS_setgroups, 0usize, std::ptr::null::<libc::gid_t>())
        };
        if rc != 0 {
            // A pooled thread left with a user's identity would run later
            // operations with the wrong permissions: never continue.
            eprintln!("paddock-runtime: cannot restore thread identity; aborting");
            std::process::abort();
        }
    }
}
