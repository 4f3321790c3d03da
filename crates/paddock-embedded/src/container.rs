//! Running one sandbox container with youki's `libcontainer`.
//!
//! libcontainer clones processes that keep running Rust code (no exec) until the payload
//! starts. In a multi-threaded process another thread may hold a lock (allocator, logger) at
//! that moment and the clone deadlocks on it — this was observed here. So libcontainer runs only
//! in a single-threaded *helper process*: `helper_binary` started with [`HELPER_ARG`], which
//! must call [`run_helper_if_requested`] first thing in `main`, before starting any thread.
//! [`create`] and [`start`] run in a fresh fork of the long-lived helper that
//! [`crate::forkserver`] keeps (no exec per call); [`exec`] and the template builds' run
//! containers execute the helper.
//!
//! Lifecycle: [`create`] (init process exists, blocked before exec; namespaces made) →
//! caller wires the network namespace → [`start`] (init execs tini, whose first child is the
//! runtime) → ... → caller kills the processes through the cgroup → [`forget`] drops
//! libcontainer's state.

use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::path::{Path, PathBuf};

use libcontainer::container::Container;
use libcontainer::container::builder::ContainerBuilder;
use libcontainer::syscall::syscall::SyscallType;
use nix::sys::wait::{WaitPidFlag, WaitStatus, waitpid};
use nix::unistd::Pid;
use paddock_contract::ready::READY_FD;

use crate::forkserver::ForkServer;

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
    /// The helper process reported a failure.
    #[error("container {id}: {op}: {message}")]
    Helper {
        /// Container id.
        id: String,
        /// What we asked for.
        op: &'static str,
        /// The helper's error output.
        message: String,
    },
    /// The spec's seccomp program is missing or not the one it names.
    #[error("container {id}: {source}")]
    Seccomp {
        /// Container id.
        id: String,
        /// Cause.
        #[source]
        source: crate::seccomp::SeccompError,
    },
    /// The helper was started with arguments it does not understand.
    #[error("container helper: bad arguments {0}")]
    HelperUsage(String),
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

pub(crate) fn io<'a>(
    id: &'a str,
    op: &'static str,
) -> impl FnOnce(std::io::Error) -> ContainerError + 'a {
    move |source| ContainerError::Io {
        id: id.to_owned(),
        op,
        source,
    }
}

/// The first argument that turns a binary into the container helper.
pub const HELPER_ARG: &str = "__paddock-container";

/// If this process was started as the container helper, does the job and returns the exit code
/// for `main` to exit with. Call before anything starts a thread.
pub fn run_helper_if_requested() -> Option<i32> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.first().map(String::as_str) != Some(HELPER_ARG) {
        return None;
    }
    let a: Vec<&str> = args.iter().skip(1).map(String::as_str).collect();
    let r: Result<i32, ContainerError> = match a.as_slice() {
        [CREATE_CMD | START_CMD, ..] => served(&a, Vec::new()).map(|out| {
            use std::io::Write;
            let _ = std::io::stdout().write_all(&out);
            0
        }),
        [crate::forkserver::SERVE_CMD, root, keep @ ..] => {
            let keep: Vec<PathBuf> = keep.iter().map(PathBuf::from).collect();
            crate::forkserver::serve(Path::new(root), &keep).map(|()| 0)
        }
        [crate::userns::HOLD_CMD] => crate::userns::hold_here()
            .map(|()| 0)
            .map_err(io("userns", "hold a user namespace")),
        [BOOT_ID_CMD, file, rootfs] => {
            paddock_contract::bootid::bind(Path::new(file), Path::new(rootfs))
                .map(|()| 0)
                .map_err(io(&target_name(Path::new(rootfs)), "boot id"))
        }
        [RUN_CMD, root, id, bundle] => run_here(Path::new(root), id, Path::new(bundle)).map(|()| 0),
        ["exec", root, id, cmd @ ..] => {
            let cmd: Vec<String> = cmd.iter().map(|s| s.to_string()).collect();
            exec_here(Path::new(root), id, &cmd)
        }
        _ => Err(ContainerError::HelperUsage(format!("{a:?}"))),
    };
    Some(match r {
        Ok(code) => code,
        Err(e) => {
            eprintln!("{e}");
            125
        }
    })
}

/// The helper command that creates a container (see [`create`]).
const CREATE_CMD: &str = "create";
/// The helper command that starts a created container (see [`start`]).
const START_CMD: &str = "start";

/// Runs a helper command whose whole answer is its output: [`CREATE_CMD`] or [`START_CMD`],
/// in an executed helper or in a child of the fork server ([`crate::forkserver`]). `fds` are
/// the descriptors the request came with: a `create` from the fork server brings its root
/// filesystem as a detached mount (the server's namespace has none of the sandboxes' mounts).
pub(crate) fn served(a: &[&str], fds: Vec<OwnedFd>) -> Result<Vec<u8>, ContainerError> {
    match a {
        [CREATE_CMD, root, id, bundle, log, relay_bin] => {
            // As `create` attaches them: the root filesystem, then the readiness pipe.
            let mut fds = fds.into_iter();
            let (rootfs, ready) = (fds.next(), fds.next());
            create_here(
                Path::new(root),
                id,
                Path::new(bundle),
                Path::new(log),
                Path::new(relay_bin),
                rootfs,
                ready,
            )
        }
        .map(|c| format!("{} {}\n", c.init_pid, c.relay_pid).into_bytes()),
        [START_CMD, root, id] => start_here(Path::new(root), id).map(|()| Vec::new()),
        _ => Err(ContainerError::HelperUsage(format!("{a:?}"))),
    }
}

/// The helper command that binds a boot's id file over the sandbox's `boot_id` (see
/// [`crate::spec::BootId`]); the runtime binary runs it too, and the sandboxes' hook uses that.
pub const BOOT_ID_CMD: &str = paddock_contract::bootid::BOOT_ID_ARGS[1];

/// The sandbox's name for errors of the hook: its rootfs's parent directory is named by id.
fn target_name(rootfs: &Path) -> String {
    rootfs
        .parent()
        .and_then(Path::file_name)
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default()
}

fn helper(
    bin: &Path,
    id: &str,
    args: &[&std::ffi::OsStr],
) -> Result<std::process::Output, ContainerError> {
    std::process::Command::new(bin)
        .arg(HELPER_ARG)
        .args(args)
        .stdin(std::process::Stdio::null())
        .output()
        .map_err(io(id, "run container helper"))
}

fn helper_failed(id: &str, op: &'static str, out: &std::process::Output) -> ContainerError {
    ContainerError::Helper {
        id: id.to_owned(),
        op,
        message: String::from_utf8_lossy(&out.stderr).trim().to_owned(),
    }
}

/// What [`create`] made.
#[derive(Debug, Clone, Copy)]
pub struct Created {
    /// The container's init (blocked until [`start`]).
    pub init_pid: i32,
    /// The [`crate::logrelay`] process draining the init's output; belongs in the sandbox's
    /// cgroup.
    pub relay_pid: i32,
}

/// Creates the container from the bundle (with `config.json`) in a child of the fork server
/// and returns its init pid. The init waits for [`start`]; its output goes through a pipe to a
/// log relay that keeps at most [`crate::logrelay::LOG_CAP_BYTES`] of it in `log`;
/// `relay_bin` (the runtime binary) runs the relay. `rootfs` is the mounted root filesystem
/// the bundle's spec names; it reaches the server's child as a detached copy (see
/// [`crate::forkserver`]). The init is not our child (the server's child exits), so watch it
/// through `/proc`. `ready`, the write end of the sandbox's readiness pipe, reaches the init
/// as [`READY_FD`] (see [`paddock_contract::ready`]; the bundle's spec names it).
#[allow(clippy::too_many_arguments)]
pub fn create(
    server: &ForkServer,
    state_root: &Path,
    id: &str,
    bundle: &Path,
    log: &Path,
    relay_bin: &Path,
    rootfs: &Path,
    ready: Option<BorrowedFd<'_>>,
) -> Result<Created, ContainerError> {
    let tree = crate::mounts::clone_tree(rootfs).map_err(io(id, "take the root filesystem"))?;
    let mut fds = vec![tree.as_fd()];
    fds.extend(ready);
    let out = server.request(
        id,
        "create",
        &[
            CREATE_CMD.as_ref(),
            state_root.as_os_str(),
            id.as_ref(),
            bundle.as_os_str(),
            log.as_os_str(),
            relay_bin.as_os_str(),
        ],
        &fds,
    )?;
    let text = String::from_utf8_lossy(&out);
    let mut pids = text.split_whitespace().map(str::parse::<i32>);
    match (pids.next(), pids.next()) {
        (Some(Ok(init_pid)), Some(Ok(relay_pid))) => Ok(Created {
            init_pid,
            relay_pid,
        }),
        _ => Err(ContainerError::Helper {
            id: id.to_owned(),
            op: "create (no pids)",
            message: text.trim().to_owned(),
        }),
    }
}

/// Lets a created container's init exec (in a child of the fork server).
pub fn start(server: &ForkServer, state_root: &Path, id: &str) -> Result<(), ContainerError> {
    server
        .request(
            id,
            "start",
            &[START_CMD.as_ref(), state_root.as_os_str(), id.as_ref()],
            &[],
        )
        .map(drop)
}

/// Runs `args` in the running container (through the helper) and waits for it.
pub fn exec(
    helper_bin: &Path,
    state_root: &Path,
    id: &str,
    args: &[String],
) -> Result<ExecOutput, ContainerError> {
    let mut a: Vec<&std::ffi::OsStr> = vec!["exec".as_ref(), state_root.as_os_str(), id.as_ref()];
    a.extend(args.iter().map(std::ffi::OsStr::new));
    let out = helper(helper_bin, id, &a)?;
    use std::os::unix::process::ExitStatusExt;
    let code = match (out.status.code(), out.status.signal()) {
        (Some(125), _) => return Err(helper_failed(id, "exec", &out)),
        (Some(c), _) => c,
        (None, Some(sig)) => 128 + sig,
        (None, None) => -1,
    };
    Ok(ExecOutput {
        code,
        stdout: out.stdout,
        stderr: out.stderr,
    })
}

/// Creates the container in this process (helper side of [`create`]). With `rootfs` (a
/// detached mount of the root filesystem) the container is made from a mount namespace of
/// this process's own with it attached where the spec names it; without, the spec's root is
/// used where it is (an executed helper in the host's namespace).
fn create_here(
    state_root: &Path,
    id: &str,
    bundle: &Path,
    log: &Path,
    relay_bin: &Path,
    rootfs: Option<OwnedFd>,
    ready: Option<OwnedFd>,
) -> Result<Created, ContainerError> {
    std::fs::create_dir_all(state_root).map_err(io(id, "create state root"))?;
    // A pipe, not the log file itself: sandbox root can write to `/proc/1/fd/1`, and a host
    // file would grow without bound (security review H5). Close-on-exec, so only the init's
    // stdout/stderr (dup'ed by libcontainer) and the relay's stdin keep the ends open.
    let (read_end, out) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC)
        .map_err(|e| io(id, "log pipe")(e.into()))?;
    let relay_pid =
        crate::logrelay::spawn(read_end, log, relay_bin).map_err(io(id, "start log relay"))?;
    let out = std::fs::File::from(out);
    let err = out.try_clone().map_err(io(id, "log pipe"))?;
    if let Some(stage) = stage_for_bundle(id, bundle, rootfs)? {
        // Sandbox root may reopen its output (`/proc/1/fd/1`, as the log tests and many
        // images do); a pipe made by host root is not its own inside a user namespace
        // (runc does the same for its stdio).
        let root = Some(nix::unistd::Uid::from_raw(stage.root));
        nix::unistd::fchown(
            std::os::fd::AsRawFd::as_raw_fd(&out),
            root,
            Some(nix::unistd::Gid::from_raw(stage.root)),
        )
        .map_err(|e| io(id, "give the log pipe to sandbox root")(e.into()))?;
    }
    // The readiness pipe goes to the init as READY_FD, open across its exec (libcontainer
    // passes on what it is told to preserve and closes the rest). Placed only now, after the
    // relay started: the relay must not hold it, or the host would see no EOF when the init
    // dies. In a fork server's child READY_FD held the server's `/dev/null`, which the
    // child no longer uses (see `crate::forkserver`).
    let preserved = match ready {
        Some(ready) => {
            nix::unistd::dup2(std::os::fd::AsRawFd::as_raw_fd(&ready), READY_FD)
                .map_err(|e| io(id, "pass on the readiness pipe")(e.into()))?;
            1
        }
        None => 0,
    };
    let container = build_init(
        state_root,
        id,
        bundle,
        OwnedFd::from(out),
        OwnedFd::from(err),
        preserved,
    )?;
    let init_pid = container.pid().map(|p| p.as_raw()).unwrap_or(0);
    Ok(Created {
        init_pid,
        relay_pid,
    })
}

/// Creates the container of `bundle` in this process: its init is made and waits for
/// `start`, its output goes to `out` and `err`, its input is `/dev/null`. Serves both the
/// sandboxes ([`create`]) and the build steps ([`RUN_CMD`]).
///
/// The init installs the seccomp program the spec names right before it execs the spec's
/// process ([`crate::seccomp::FilteringExecutor`]); it is read and checked here, on the host,
/// and reaches the init in memory (libcontainer forks it from this process), so nothing in
/// the container can change it. A spec without one is refused.
fn build_init(
    state_root: &Path,
    id: &str,
    bundle: &Path,
    out: OwnedFd,
    err: OwnedFd,
    preserved: i32,
) -> Result<Container, ContainerError> {
    let text = std::fs::read(bundle.join("config.json")).map_err(io(id, "read config.json"))?;
    let program = crate::seccomp::Program::from_spec_json(&text)
        .and_then(|p| p.load())
        .map_err(|e| ContainerError::Seccomp {
            id: id.to_owned(),
            source: e,
        })?;
    let null = std::fs::File::open("/dev/null").map_err(io(id, "open /dev/null"))?;
    ContainerBuilder::new(id.to_owned(), SyscallType::Linux)
        .with_executor(crate::seccomp::FilteringExecutor::new(program))
        .with_root_path(state_root)
        .map_err(rt(id, "state root"))?
        .with_stdin(OwnedFd::from(null))
        .with_stdout(out)
        .with_stderr(err)
        .with_preserved_fds(preserved)
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
        .map_err(rt(id, "create"))
}

/// Makes the host paths a user-namespaced sandbox's spec names reachable for its init (see
/// [`crate::spec::Stage`]): in a mount namespace of this helper's own, a tmpfs on
/// [`crate::spec::STAGE_DIR`] with each path bound into it. The init, host uid
/// `host_base`, cannot walk the host's 0700 directories (the data dir, `/root`) to the
/// originals, and the host never sees these mounts: they go with this helper's namespace (the
/// container keeps its own copy). `rootfs`, if given, is attached as the spec's root: in the
/// stage, or where the spec names it for a spec without one.
fn stage_for_bundle(
    id: &str,
    bundle: &Path,
    rootfs: Option<OwnedFd>,
) -> Result<Option<crate::spec::Stage>, ContainerError> {
    let config = bundle.join("config.json");
    let text = std::fs::read(&config).map_err(io(id, "read config.json"))?;
    let stage = crate::spec::Stage::from_spec_json(&text).map_err(io(id, "read stage"))?;
    match (&stage, rootfs) {
        (Some(stage), rootfs) => stage
            .mount_here(rootfs.as_ref().map(|f| f.as_fd()))
            .map_err(io(id, "stage host paths"))?,
        (None, Some(rootfs)) => {
            let at = crate::spec::root_path_from_spec_json(&text)
                .map_err(io(id, "read the spec's root"))?;
            crate::mounts::own_mount_namespace(nix::mount::MsFlags::MS_SLAVE)
                .map_err(io(id, "make a mount namespace"))?;
            crate::mounts::attach_tree(rootfs.as_fd(), &at)
                .map_err(io(id, "attach the root filesystem"))?;
        }
        (None, None) => {}
    }
    Ok(stage)
}

fn start_here(state_root: &Path, id: &str) -> Result<(), ContainerError> {
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

/// Runs `args` in the container from this process, output to our own stdout/stderr (helper
/// side of [`exec`]); returns the exit code.
fn exec_here(state_root: &Path, id: &str, args: &[String]) -> Result<i32, ContainerError> {
    use std::os::fd::AsFd;
    let out = std::io::stdout()
        .as_fd()
        .try_clone_to_owned()
        .map_err(io(id, "dup stdout"))?;
    let err = std::io::stderr()
        .as_fd()
        .try_clone_to_owned()
        .map_err(io(id, "dup stderr"))?;
    // libcontainer resolves the spec's root again: the same stage as at create.
    let c = Container::load(state_root.join(id)).map_err(rt(id, "load"))?;
    stage_for_bundle(id, c.bundle(), None)?;
    // libcontainer 0.7's tenant path joins every namespace of the init but its user
    // namespace; join that one here (we are single-threaded), so the command runs as the
    // sandbox's root, an unprivileged host uid, like everything else in there. The other
    // namespaces are owned by it, so joining them from inside is allowed.
    if let Some(pid) = c.pid() {
        join_user_namespace(pid.as_raw()).map_err(io(id, "join the user namespace"))?;
    }
    let null = std::fs::File::open("/dev/null").map_err(io(id, "open /dev/null"))?;
    let pid = ContainerBuilder::new(id.to_owned(), SyscallType::Linux)
        .with_root_path(state_root)
        .map_err(rt(id, "state root"))?
        .with_stdin(OwnedFd::from(null))
        .with_stdout(out)
        .with_stderr(err)
        .as_tenant()
        .with_container_args(args.to_vec())
        .with_detach(true)
        .as_sibling(false)
        .build()
        .map_err(rt(id, "exec"))?;
    wait_child(pid.as_raw()).map_err(io(id, "wait exec"))
}

/// Joins the user namespace of process `pid` if it differs from ours.
fn join_user_namespace(pid: i32) -> std::io::Result<()> {
    use std::os::unix::fs::MetadataExt;
    let theirs = format!("/proc/{pid}/ns/user");
    let (a, b) = (
        std::fs::metadata(&theirs)?,
        std::fs::metadata("/proc/self/ns/user")?,
    );
    if (a.dev(), a.ino()) == (b.dev(), b.ino()) {
        return Ok(());
    }
    let ns = std::fs::File::open(&theirs)?;
    nix::sched::setns(ns, nix::sched::CloneFlags::CLONE_NEWUSER)?;
    Ok(())
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

/// Helper command of [`crate::build_container`]: runs a container to completion. Protocol on
/// the helper's standard streams: the container's output (stdout and stderr merged) goes to
/// the helper's stdout; the helper reports `created <init pid>` on stderr, then waits for a
/// `start` line on stdin (time for the caller to wire the network namespace); any other line
/// or EOF kills the init instead. The caller keeps stdin open until the helper has exited:
/// EOF while the container runs (the caller died) kills it. At the end the helper reports
/// `exit <code>` on stderr and drops libcontainer's state. Anything else on stderr is an
/// error message.
pub const RUN_CMD: &str = "run";
/// Prefix of the helper's `created <pid>` report (see [`RUN_CMD`]).
pub const RUN_CREATED: &str = "created ";
/// Prefix of the helper's `exit <code>` report (see [`RUN_CMD`]).
pub const RUN_EXIT: &str = "exit ";
/// The line that lets a created run container start (see [`RUN_CMD`]).
pub const RUN_START: &str = "start";

/// Helper side of [`RUN_CMD`].
fn run_here(state_root: &Path, id: &str, bundle: &Path) -> Result<(), ContainerError> {
    use std::io::{BufRead, Write};
    use std::os::fd::AsFd;
    std::fs::create_dir_all(state_root).map_err(io(id, "create state root"))?;
    let out = std::io::stdout()
        .as_fd()
        .try_clone_to_owned()
        .map_err(io(id, "dup stdout"))?;
    let err = out.try_clone().map_err(io(id, "dup stdout"))?;
    // The init becomes our child (see `build_init`), so we get its exit status.
    let mut container = build_init(state_root, id, bundle, out, err, 0)?;
    let result = (|| {
        let init = container
            .pid()
            .ok_or_else(|| ContainerError::Helper {
                id: id.to_owned(),
                op: "create",
                message: "no init pid".into(),
            })?
            .as_raw();
        let mut stderr = std::io::stderr();
        writeln!(stderr, "{RUN_CREATED}{init}").map_err(io(id, "report pid"))?;
        let mut line = String::new();
        let _ = std::io::stdin().lock().read_line(&mut line);
        if line.trim() == RUN_START {
            if let Err(e) = container.start() {
                let _ = nix::sys::signal::kill(Pid::from_raw(init), nix::sys::signal::SIGKILL);
                let _ = wait_child(init);
                return Err(rt(id, "start")(e));
            }
        } else {
            // The caller gave up (or died): the payload never runs.
            let _ = nix::sys::signal::kill(Pid::from_raw(init), nix::sys::signal::SIGKILL);
        }
        // The caller holds our stdin open until we are gone: EOF before the init ended means
        // it died, and the payload must not run on unwatched. Safe to start a thread now, the
        // container's processes exist already. `reaped` keeps the kill off a reused pid.
        let reaped = std::sync::Arc::new(std::sync::Mutex::new(false));
        let watcher = reaped.clone();
        std::thread::spawn(move || {
            let mut sink = Vec::new();
            let _ = std::io::Read::read_to_end(&mut std::io::stdin().lock(), &mut sink);
            let done = watcher.lock().unwrap_or_else(|p| p.into_inner());
            if !*done {
                let _ = nix::sys::signal::kill(Pid::from_raw(init), nix::sys::signal::SIGKILL);
            }
        });
        // Wait for the exit without reaping (the pid stays taken), then mark it, then reap.
        while let Err(nix::Error::EINTR) = nix::sys::wait::waitid(
            nix::sys::wait::Id::Pid(Pid::from_raw(init)),
            WaitPidFlag::WEXITED | WaitPidFlag::WNOWAIT | WaitPidFlag::__WALL,
        ) {}
        *reaped.lock().unwrap_or_else(|p| p.into_inner()) = true;
        // The init is PID 1 of the container's pid namespace: when it exits the kernel kills
        // every other process in there, so nothing of the payload outlives this wait.
        let code = wait_child(init).map_err(io(id, "wait init"))?;
        writeln!(stderr, "{RUN_EXIT}{code}").map_err(io(id, "report exit"))?;
        Ok(())
    })();
    forget(state_root, id);
    result
}
