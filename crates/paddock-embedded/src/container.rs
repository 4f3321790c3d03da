//! Running one sandbox container with youki's `libcontainer`.
//!
//! Every function here forks, so call them from a blocking thread (`spawn_blocking`), never
//! on an async worker.
//!
//! Lifecycle: [`create`] (init process exists, blocked before exec; namespaces made) →
//! caller wires the network namespace → [`start`] (init execs tini, whose first child is the
//! runtime) → ... → caller kills the processes through the cgroup → [`forget`] drops
//! libcontainer's state.

use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};

use libcontainer::container::Container;
use libcontainer::container::builder::ContainerBuilder;
use libcontainer::syscall::syscall::SyscallType;
use nix::sys::wait::{WaitPidFlag, WaitStatus, waitpid};
use nix::unistd::Pid;

/// A libcontainer call failed.
#[derive(Debug, thiserror::Error)]
pub enum ContainerError {
    /// libcontainer refused or failed.
    #[error("container {id}: {op}: {source}")]
    Runtime {
        /// Container id.
        id: String,
        /// What we asked for.
        op: &'static str,
        /// Cause.
        #[source]
        source: Box<libcontainer::error::LibcontainerError>,
    },
    /// Local file or process error.
    #[error("container {id}: {op}: {source}")]
    Io {
        /// Container id.
        id: String,
        /// What we did.
        op: &'static str,
        /// Cause.
        #[source]
        source: std::io::Error,
    },
}

fn rt<'a>(
    id: &'a str,
    op: &'static str,
) -> impl FnOnce(libcontainer::error::LibcontainerError) -> ContainerError + 'a {
    move |source| ContainerError::Runtime {
        id: id.to_owned(),
        op,
        source: Box::new(source),
    }
}

fn io<'a>(id: &'a str, op: &'static str) -> impl FnOnce(std::io::Error) -> ContainerError + 'a {
    move |source| ContainerError::Io {
        id: id.to_owned(),
        op,
        source,
    }
}

/// Creates the container from the bundle (with `config.json`) and returns its init pid. The
/// init waits for [`start`]. Its output goes to `log`.
pub fn create(
    state_root: &Path,
    id: &str,
    bundle: &Path,
    log: &Path,
) -> Result<i32, ContainerError> {
    std::fs::create_dir_all(state_root).map_err(io(id, "create state root"))?;
    let out = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)
        .map_err(io(id, "open log"))?;
    let err = out.try_clone().map_err(io(id, "open log"))?;
    let null = std::fs::File::open("/dev/null").map_err(io(id, "open /dev/null"))?;
    let container = ContainerBuilder::new(id.to_owned(), SyscallType::Linux)
        .with_root_path(state_root)
        .map_err(rt(id, "state root"))?
        .with_stdin(OwnedFd::from(null))
        .with_stdout(OwnedFd::from(out))
        .with_stderr(OwnedFd::from(err))
        .validate_id()
        .map_err(rt(id, "validate id"))?
        .as_init(bundle)
        .with_systemd(false)
        .with_detach(true)
        // Not a sibling: libcontainer's intermediate process is our child and clones the init
        // with CLONE_PARENT, so the init becomes *our* child (no exit signal: wait with __WALL).
        // `as_sibling(true)` would hand it to our parent instead.
        .as_sibling(false)
        .build()
        .map_err(rt(id, "create"))?;
    let pid = container.pid().map(|p| p.as_raw()).unwrap_or(0);
    Ok(pid)
}

/// Lets a created container's init exec.
pub fn start(state_root: &Path, id: &str) -> Result<(), ContainerError> {
    let mut c = Container::load(state_root.join(id)).map_err(rt(id, "load"))?;
    c.start().map_err(rt(id, "start"))
}

/// Output of [`exec`].
#[derive(Debug)]
pub struct ExecOutput {
    /// Exit code (128 + signal number if killed by a signal).
    pub code: i32,
    /// Standard output.
    pub stdout: Vec<u8>,
    /// Standard error.
    pub stderr: Vec<u8>,
}

/// Runs `args` inside the running container (its namespaces, cgroup, capabilities and
/// seccomp filter) and waits for it.
pub fn exec(
    state_root: &Path,
    id: &str,
    args: &[String],
    work: &Path,
) -> Result<ExecOutput, ContainerError> {
    std::fs::create_dir_all(work).map_err(io(id, "exec dir"))?;
    let n = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or_default();
    let (out_path, err_path) = (work.join(format!("{n}.out")), work.join(format!("{n}.err")));
    let out = std::fs::File::create(&out_path).map_err(io(id, "exec stdout"))?;
    let err = std::fs::File::create(&err_path).map_err(io(id, "exec stderr"))?;
    let null = std::fs::File::open("/dev/null").map_err(io(id, "open /dev/null"))?;
    let result = ContainerBuilder::new(id.to_owned(), SyscallType::Linux)
        .with_root_path(state_root)
        .map_err(rt(id, "state root"))?
        .with_stdin(OwnedFd::from(null))
        .with_stdout(OwnedFd::from(out))
        .with_stderr(OwnedFd::from(err))
        .as_tenant()
        .with_container_args(args.to_vec())
        .with_detach(true)
        .as_sibling(false)
        .build()
        .map_err(rt(id, "exec"))
        .and_then(|pid| wait_child(pid.as_raw()).map_err(io(id, "wait exec")));
    let stdout = std::fs::read(&out_path).unwrap_or_default();
    let stderr = std::fs::read(&err_path).unwrap_or_default();
    let _ = std::fs::remove_file(&out_path);
    let _ = std::fs::remove_file(&err_path);
    Ok(ExecOutput {
        code: result?,
        stdout,
        stderr,
    })
}

/// Blocks until child `pid` exits; returns its exit code (128 + signal if killed).
/// `__WALL` because libcontainer clones siblings without an exit signal.
pub fn wait_child(pid: i32) -> std::io::Result<i32> {
    loop {
        match waitpid(Pid::from_raw(pid), Some(WaitPidFlag::__WALL)) {
            Ok(WaitStatus::Exited(_, code)) => return Ok(code),
            Ok(WaitStatus::Signaled(_, sig, _)) => return Ok(128 + sig as i32),
            Ok(_) => continue,
            Err(nix::Error::EINTR) => continue,
            Err(e) => return Err(e.into()),
        }
    }
}

/// Reaps child `pid` if it has exited, without blocking. `true` if it is gone (reaped now, or
/// not our child any more).
pub fn try_reap(pid: i32) -> bool {
    match waitpid(
        Pid::from_raw(pid),
        Some(WaitPidFlag::__WALL | WaitPidFlag::WNOHANG),
    ) {
        Ok(WaitStatus::StillAlive) => false,
        Ok(_) => true,
        Err(_) => true,
    }
}

/// Drops libcontainer's state for `id` (after its processes are gone).
pub fn forget(state_root: &Path, id: &str) {
    let dir: PathBuf = state_root.join(id);
    if let Err(e) = std::fs::remove_dir_all(&dir)
        && e.kind() != std::io::ErrorKind::NotFound
    {
        tracing::warn!(id, error = %e, "cannot remove container state");
    }
}
