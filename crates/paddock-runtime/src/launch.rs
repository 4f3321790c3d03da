//! Starting the runtime in images that were not built for it: copying the binary into a
//! shared volume (`--install-to`, run by an init container) and starting it in the background
//! from a `postStart` exec hook (`--detach`). Neither needs a shell in the image.
//!
//! `--detach` re-executes the binary rather than forking: the tokio runtime is multi-threaded,
//! and a fork of a threaded process may only call async-signal-safe functions. The parent
//! waits until the child accepts connections on its listen address, so once the hook returns
//! the runtime answers (Kubernetes starts probing, and the controller calls `/init`, right
//! after); if the child dies first, the parent fails with the end of the child's log.

use std::ffi::OsString;
use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, SeekFrom};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, TcpStream};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// Set in the environment of the re-executed child so that it starts a session of its own.
pub const DETACHED_ENV: &str = "PADDOCK_RUNTIME_DETACHED";

/// The name of the binary inside an install directory.
pub const BINARY_NAME: &str = "paddock-runtime";

/// Why installing or detaching failed.
#[derive(Debug, thiserror::Error)]
pub enum LaunchError {
    #[error("{what} {path}: {source}")]
    Io {
        what: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "the detached runtime exited with {status} before listening; its log ends with:\n{log}"
    )]
    ChildExited {
        status: std::process::ExitStatus,
        log: String,
    },
    #[error("the detached runtime (pid {pid}) did not listen on {addr} within {waited:?}")]
    NotListening {
        pid: u32,
        addr: SocketAddr,
        waited: Duration,
    },
}

fn io(what: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> LaunchError {
    let path = path.to_path_buf();
    move |source| LaunchError::Io { what, path, source }
}

/// Copies the binary at `src` to `dir/paddock-runtime` (mode 0755), creating `dir`. The copy is
/// written under a temporary name and renamed, so a container starting it never sees half a
/// file, and installing again over a running copy is safe.
pub fn install(src: &Path, dir: &Path) -> Result<PathBuf, LaunchError> {
    std::fs::create_dir_all(dir).map_err(io("creating", dir))?;
    let dest = dir.join(BINARY_NAME);
    let tmp = dir.join(format!(".{BINARY_NAME}.{}", std::process::id()));
    std::fs::copy(src, &tmp).map_err(io("copying the runtime to", &tmp))?;
    std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o755))
        .map_err(io("setting the mode of", &tmp))?;
    std::fs::rename(&tmp, &dest).map_err(io("renaming into", &dest))?;
    Ok(dest)
}

/// In the re-executed child: leave the hook's session, so that the runtime outlives the exec
/// session and no terminal hangup reaches it.
pub fn become_session_leader() {
    if std::env::var_os(DETACHED_ENV).is_some() {
        // Fails only if we already lead a process group, in which case we are detached anyway.
        let _ = rustix::process::setsid();
    }
}

/// Starts `exe args` in the background with output appended to `log`, then waits (up to
/// `wait`) until something accepts connections on `addr`. Returns the child's pid.
pub fn detach(
    exe: &Path,
    args: &[OsString],
    log: &Path,
    addr: SocketAddr,
    wait: Duration,
) -> Result<u32, LaunchError> {
    if let Some(parent) = log.parent().filter(|p| !p.as_os_str().is_empty()) {
        std::fs::create_dir_all(parent).map_err(io("creating", parent))?;
    }
    let out = OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)
        .map_err(io("opening the log", log))?;
    let start_len = out.metadata().map(|m| m.len()).unwrap_or(0);
    let err = out.try_clone().map_err(io("duplicating", log))?;
    let mut child = Command::new(exe)
        .args(args)
        .env(DETACHED_ENV, "1")
        .stdin(Stdio::null())
        .stdout(out)
        .stderr(err)
        .spawn()
        .map_err(io("starting", exe))?;
    let pid = child.id();
    let target = reachable(addr);
    let started = Instant::now();
    loop {
        if let Ok(Some(status)) = child.try_wait() {
            return Err(LaunchError::ChildExited {
                status,
                log: log_tail(log, start_len),
            });
        }
        if TcpStream::connect_timeout(&target, Duration::from_millis(200)).is_ok() {
            // The child is not waited for: it is re-parented to the container's init when we
            // exit, which reaps it.
            return Ok(pid);
        }
        if started.elapsed() >= wait {
            return Err(LaunchError::NotListening {
                pid,
                addr,
                waited: wait,
            });
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Where to connect to reach a server bound to `addr` (a wildcard means loopback).
fn reachable(addr: SocketAddr) -> SocketAddr {
    let ip = match addr.ip() {
        IpAddr::V4(ip) if ip.is_unspecified() => IpAddr::V4(Ipv4Addr::LOCALHOST),
        IpAddr::V6(ip) if ip.is_unspecified() => IpAddr::V6(Ipv6Addr::LOCALHOST),
        ip => ip,
    };
    SocketAddr::new(ip, addr.port())
}

/// What the child wrote to `log` after `from`, at most the last 4 KiB.
fn log_tail(log: &Path, from: u64) -> String {
    const MAX: u64 = 4096;
    let Ok(mut f) = File::open(log) else {
        return String::new();
    };
    let len = f.metadata().map(|m| m.len()).unwrap_or(0);
    let start = from.max(len.saturating_sub(MAX));
    let mut buf = Vec::new();
    if f.seek(SeekFrom::Start(start)).is_ok() {
        let _ = f.take(MAX).read_to_end(&mut buf);
    }
    String::from_utf8_lossy(&buf).trim_end().to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn install_copies_an_executable_and_replaces_an_old_copy() {
        let dir = tempfile::tempdir().expect("tempdir");
        let src = dir.path().join("src");
        std::fs::write(&src, b"new").expect("write");
        let target = dir.path().join("shared/bin");
        std::fs::create_dir_all(&target).expect("mkdir");
        std::fs::write(target.join(BINARY_NAME), b"old").expect("write");

        let dest = install(&src, &target).expect("install");
        assert_eq!(dest, target.join(BINARY_NAME));
        assert_eq!(std::fs::read(&dest).expect("read"), b"new");
        let mode = std::fs::metadata(&dest).expect("stat").permissions().mode();
        assert_eq!(mode & 0o777, 0o755);
        // no temporary file left behind
        assert_eq!(std::fs::read_dir(&target).expect("ls").count(), 1);
    }

    #[test]
    fn install_of_a_missing_binary_names_the_path() {
        let dir = tempfile::tempdir().expect("tempdir");
        let err = install(&dir.path().join("nope"), dir.path()).unwrap_err();
        assert!(err.to_string().contains("copying the runtime"), "{err}");
    }

    #[test]
    fn wildcard_addresses_are_reached_on_loopback() {
        let a: SocketAddr = "0.0.0.0:49983".parse().expect("addr");
        assert_eq!(reachable(a), "127.0.0.1:49983".parse().expect("addr"));
        let b: SocketAddr = "10.0.0.5:1".parse().expect("addr");
        assert_eq!(reachable(b), b);
    }

    #[test]
    fn a_child_that_exits_early_reports_its_log() {
        let dir = tempfile::tempdir().expect("tempdir");
        let log = dir.path().join("logs/rt.log");
        std::fs::create_dir_all(log.parent().expect("parent")).expect("mkdir");
        std::fs::write(&log, "an earlier run\n").expect("write");
        let err = detach(
            Path::new("/bin/sh"),
            &["-c".into(), "echo boom >&2; exit 3".into()],
            &log,
            "127.0.0.1:1".parse().expect("addr"),
            Duration::from_secs(30),
        )
        .unwrap_err();
        match err {
            LaunchError::ChildExited { status, log } => {
                assert_eq!(status.code(), Some(3));
                assert_eq!(log, "boom", "only this run's output");
            }
            other => panic!("unexpected {other}"),
        }
    }
}
