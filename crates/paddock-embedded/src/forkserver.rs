//! The container helper as a fork server: one long-lived, single-threaded helper process per
//! `paddock up` that forks a child for each container `create` and `start`.
//!
//! libcontainer must run in a single-threaded process (see [`crate::container`]). Executing
//! the helper binary for every call cost a process image of Paddock's size each time (loading,
//! relocating and faulting in tens of MiB) twice per sandbox. The server is executed once;
//! each request is a `fork` of it — single-threaded, so the child is as safe for
//! libcontainer's clones as a freshly executed helper — and the child does what the helper
//! did, in a process of its own (it may change its mount namespace, libcontainer's processes
//! are its children), then answers and exits.
//!
//! Protocol: the server's stdin is its end of a `SOCK_SEQPACKET` socket pair whose other end
//! only Paddock holds (close-on-exec there, so no other child inherits it). A request is one
//! message: the helper arguments, NUL-separated, with file descriptors attached: first the
//! requester's own reply socket, so concurrent requests cannot get each other's answers, then
//! any the command takes (a `create`'s root filesystem, see below). The
//! forked child sends one message on it: [`REPLY_OK`] and the output, or [`REPLY_ERR`] and
//! the error message (which names the container and the step).
//!
//! Guarantees:
//! - Only the process that started the server is served: each request carries its sender's
//!   credentials, checked by the kernel (`SO_PASSCRED`), and a request from any other process
//!   is refused with an error on its reply socket.
//! - Signals for Paddock's process group (a Ctrl-C, a SIGTERM to the group) do not reach it:
//!   it runs in a session of its own.
//! - The server ends with Paddock: at EOF on its socket (Paddock's end is closed when Paddock
//!   exits, however it exits) or when its parent changes. No `PR_SET_PDEATHSIG`: it fires when
//!   the *thread* that spawned the server exits, and that is a blocking-pool thread.
//! - A server that died is started again by the next request ([`ForkServer::request`]).
//! - It serves only the state root it was started for, and only `create` and `start`.
//! - It runs in a mount namespace of its own, private, holding none of the sandboxes' mounts.
//!   Every mount in the namespace a container is created from is copied into the container's
//!   new one and then unmounted there again, and libcontainer reads `/proc/self/mountinfo`
//!   whole several times per create (cgroup v1 lookups, mount propagation): in the host's
//!   namespace, with two mounts per live sandbox, a create cost more CPU the more sandboxes
//!   there were. A `create` gets its sandbox's root filesystem as a detached mount
//!   ([`crate::mounts::clone_tree`]) that its child attaches in a namespace of its own.

// `fork` and taking ownership of received descriptors.
#![allow(unsafe_code)]

use std::ffi::{OsStr, OsString};
use std::io::{IoSlice, IoSliceMut};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use nix::sys::socket::{
    ControlMessage, ControlMessageOwned, MsgFlags, SockFlag, SockType, recvmsg, sendmsg, sockopt,
};

use crate::container::{ContainerError, HELPER_ARG, io};

/// The helper command that runs the fork server: `serve <state root> [<needed path>...]`.
pub const SERVE_CMD: &str = "serve";
/// First byte of a successful reply.
const REPLY_OK: u8 = b'+';
/// First byte of a failed reply.
const REPLY_ERR: u8 = b'-';
/// Most descriptors a request carries: its reply socket, a `create`'s root filesystem and its
/// sandbox's readiness pipe.
const MAX_FDS: usize = 3;
/// Largest request or reply (arguments are a few paths; an error message a few lines).
const MAX_MESSAGE: usize = 64 * 1024;
/// How long a requester waits for its answer, in seconds. Only a child killed mid-request (the OOM
/// killer) answers never: libcontainer's init, blocked before its exec, then still holds the
/// reply socket, so no EOF comes. Far above any create's time, so a slow machine is not
/// failed by it.
const REPLY_TIMEOUT_S: i64 = 300;

/// A running fork server and Paddock's end of its socket.
struct Conn {
    child: std::process::Child,
    sock: OwnedFd,
}

impl Drop for Conn {
    fn drop(&mut self) {
        // Closing the socket ends it; reap it so it leaves no zombie.
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Paddock's handle on its fork server, started on first use and again after it died.
pub struct ForkServer {
    bin: PathBuf,
    state_root: PathBuf,
    /// Paths outside the run tmpfs its children use (see [`ForkServer::keeping`]).
    keep: Vec<PathBuf>,
    conn: Mutex<Option<Conn>>,
}

impl std::fmt::Debug for ForkServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ForkServer")
            .field("bin", &self.bin)
            .field("state_root", &self.state_root)
            .field("pid", &self.pid())
            .finish()
    }
}

fn seqpacket_pair() -> std::io::Result<(OwnedFd, OwnedFd)> {
    Ok(nix::sys::socket::socketpair(
        nix::sys::socket::AddressFamily::Unix,
        SockType::SeqPacket,
        None,
        SockFlag::SOCK_CLOEXEC,
    )?)
}

impl ForkServer {
    /// A fork server running `bin` (which must call
    /// [`crate::container::run_helper_if_requested`] first thing) for containers under
    /// `state_root`. Nothing starts until the first request.
    pub fn new(bin: &Path, state_root: &Path) -> Self {
        Self {
            bin: bin.to_owned(),
            state_root: state_root.to_owned(),
            keep: Vec::new(),
            conn: Mutex::new(None),
        }
    }

    /// Also keeps `paths` reachable in the server's mount namespace: what its children use
    /// outside the parent of `state_root` (the data dir, for the logs; the binaries and
    /// `resolv.conf` the sandboxes' specs name). Every other mount is left out of it.
    pub fn keeping(mut self, paths: impl IntoIterator<Item = PathBuf>) -> Self {
        self.keep.extend(paths);
        self
    }

    /// Ends the server, if it runs; the next request starts another (in a mount namespace
    /// made then).
    pub fn stop(&self) {
        let mut conn = self.conn.lock().unwrap_or_else(|p| p.into_inner());
        *conn = None;
    }

    /// The server's pid, if it runs.
    pub fn pid(&self) -> Option<u32> {
        let conn = self.conn.lock().unwrap_or_else(|p| p.into_inner());
        conn.as_ref().map(|c| c.child.id())
    }

    fn spawn(&self) -> std::io::Result<Conn> {
        let (ours, theirs) = seqpacket_pair()?;
        // Set before the server exists, so no request can arrive without credentials.
        nix::sys::socket::setsockopt(&theirs, sockopt::PassCred, &true)?;
        let child = std::process::Command::new(&self.bin)
            .arg(HELPER_ARG)
            .arg(SERVE_CMD)
            .arg(&self.state_root)
            .args(&self.keep)
            .stdin(std::process::Stdio::from(theirs))
            .stdout(std::process::Stdio::null())
            .spawn()?;
        Ok(Conn { child, sock: ours })
    }

    /// Sends a request with `reply` attached, starting the server if it is not running and
    /// once more if the one running is gone.
    fn send(&self, msg: &[u8], fds: &[RawFd]) -> std::io::Result<()> {
        let mut conn = self.conn.lock().unwrap_or_else(|p| p.into_inner());
        for attempt in 0..2 {
            if conn.is_none() {
                *conn = Some(self.spawn()?);
            }
            let Some(c) = conn.as_ref() else { continue };
            let sent = sendmsg::<()>(
                c.sock.as_raw_fd(),
                &[IoSlice::new(msg)],
                &[ControlMessage::ScmRights(fds)],
                MsgFlags::MSG_NOSIGNAL,
                None,
            );
            match sent {
                Ok(_) => return Ok(()),
                // The server died (its end is closed): start another.
                Err(nix::Error::EPIPE | nix::Error::ECONNRESET | nix::Error::ECONNREFUSED)
                    if attempt == 0 =>
                {
                    tracing::warn!("container fork server gone; starting another");
                    *conn = None;
                }
                Err(e) => return Err(e.into()),
            }
        }
        Err(std::io::Error::other("container fork server did not start"))
    }

    /// Runs helper command `args` (`create ...` or `start ...`) in a fresh child of the server,
    /// with descriptors `fds` passed to it, and returns its output; `id` and `op` name the
    /// failure.
    pub fn request(
        &self,
        id: &str,
        op: &'static str,
        args: &[&OsStr],
        fds: &[BorrowedFd<'_>],
    ) -> Result<Vec<u8>, ContainerError> {
        let mut msg = Vec::new();
        for (i, a) in args.iter().enumerate() {
            if i > 0 {
                msg.push(0);
            }
            msg.extend_from_slice(a.as_bytes());
        }
        let (ours, theirs) = seqpacket_pair().map_err(io(id, "make a reply socket"))?;
        nix::sys::socket::setsockopt(
            &ours,
            sockopt::ReceiveTimeout,
            &nix::sys::time::TimeVal::new(REPLY_TIMEOUT_S, 0),
        )
        .map_err(|e| io(id, "make a reply socket")(e.into()))?;
        let mut attached = vec![theirs.as_raw_fd()];
        attached.extend(fds.iter().map(|f| f.as_raw_fd()));
        self.send(&msg, &attached)
            .map_err(io(id, "ask the container fork server"))?;
        // Only the child that serves the request keeps the other end now.
        drop(theirs);
        let mut buf = vec![0u8; MAX_MESSAGE];
        let n = loop {
            match nix::sys::socket::recv(ours.as_raw_fd(), &mut buf, MsgFlags::empty()) {
                Err(nix::Error::EINTR) => continue,
                r => break r,
            }
        }
        .map_err(|e| io(id, "wait for the container fork server")(e.into()))?;
        match buf[..n].split_first() {
            Some((&REPLY_OK, out)) => Ok(out.to_vec()),
            Some((&REPLY_ERR, message)) => Err(ContainerError::Helper {
                id: id.to_owned(),
                op,
                message: String::from_utf8_lossy(message).into_owned(),
            }),
            _ => Err(ContainerError::Helper {
                id: id.to_owned(),
                op,
                message: "the container helper ended without an answer".into(),
            }),
        }
    }
}

// === the server ===

/// Serves requests on stdin until EOF (helper side of [`ForkServer`]). Never starts a thread.
pub(crate) fn serve(state_root: &Path, keep: &[PathBuf]) -> Result<(), ContainerError> {
    let fail = |op: &'static str| io("fork server", op);
    // SAFETY: fd 0 is the socket Paddock gave us as stdin; nothing else in this process owns
    // it, and from here on only `ctl` does.
    let ctl = unsafe { OwnedFd::from_raw_fd(0) };
    // Out of Paddock's process group and session: a Ctrl-C at its terminal, or a SIGTERM to
    // its group, would otherwise kill the server and the children serving creates while
    // Paddock shuts down. A child killed mid-create leaves its reply socket held by
    // libcontainer's blocked init, and Paddock's shutdown then waited out REPLY_TIMEOUT_S with
    // sandboxes half made. The server still ends with Paddock (EOF on `ctl`).
    let _ = nix::unistd::setsid();
    private_mounts(state_root, keep).map_err(fail("make its mount namespace"))?;
    let parent = nix::unistd::getppid();
    // A child hands its sandbox's init the readiness pipe as descriptor READY_FD (see
    // `container::create_here`), replacing whatever is there. Here that is `null`, which a
    // child uses only first thing (for `ctl`); anything received later lands above it.
    let null = keep_null_at(paddock_contract::ready::READY_FD).map_err(fail("open /dev/null"))?;
    let mut buf = vec![0u8; MAX_MESSAGE];
    loop {
        reap_children();
        if nix::unistd::getppid() != parent {
            return Ok(());
        }
        // Wake up now and then to reap finished children and notice a new parent.
        let mut fds = [nix::poll::PollFd::new(
            ctl.as_fd(),
            nix::poll::PollFlags::POLLIN,
        )];
        match nix::poll::poll(&mut fds, nix::poll::PollTimeout::from(1000u16)) {
            Ok(0) | Err(nix::Error::EINTR) => continue,
            Ok(_) => {}
            Err(e) => return Err(fail("wait for requests")(e.into())),
        }
        let mut space = nix::cmsg_space!(nix::libc::ucred, [RawFd; MAX_FDS]);
        let mut iov = [IoSliceMut::new(&mut buf)];
        let msg = match recvmsg::<()>(
            ctl.as_raw_fd(),
            &mut iov,
            Some(&mut space),
            MsgFlags::MSG_CMSG_CLOEXEC,
        ) {
            Ok(m) => m,
            Err(nix::Error::EINTR) => continue,
            Err(e) => return Err(fail("read a request")(e.into())),
        };
        let mut sender = None;
        let mut fds = Vec::new();
        for c in msg.cmsgs().map_err(|e| fail("read a request")(e.into()))? {
            match c {
                ControlMessageOwned::ScmCredentials(cred) => sender = Some(cred.pid()),
                ControlMessageOwned::ScmRights(got) => {
                    // SAFETY: the kernel just installed each of these in this process for us.
                    fds.extend(
                        got.into_iter()
                            .map(|fd| unsafe { OwnedFd::from_raw_fd(fd) }),
                    );
                }
                _ => {}
            }
        }
        let len = msg.bytes;
        let mut fds = fds.into_iter();
        let Some(reply) = fds.next() else {
            if len == 0 {
                return Ok(()); // EOF: Paddock is gone.
            }
            continue; // Nowhere to answer.
        };
        if sender != Some(parent.as_raw()) {
            answer(
                &reply,
                Err(format!(
                    "container fork server: refused a request from pid {}, not from its parent",
                    sender.map_or_else(|| "unknown".into(), |p| p.to_string())
                )),
            );
            continue;
        }
        let args: Vec<OsString> = buf[..len]
            .split(|b| *b == 0)
            .map(|a| OsString::from_vec(a.to_vec()))
            .collect();
        fork_one(&ctl, &null, state_root, reply, &args, fds.collect());
    }
}

/// Moves the server into a mount namespace of its own that no mount enters or leaves by
/// propagation, and unmounts there everything a create does not need: all but the mounts
/// holding the run tmpfs (the parent of `state_root`) and the paths in `keep` (the data dir,
/// the binaries and files the sandboxes' specs name), and the kernel's views. So the
/// sandboxes' disks and roots that exist as it starts go (the host keeps them), and so does
/// anything else mounted then: a copy here would pin it while the server lives (a disk's loop
/// device stays attached while any namespace holds its mount, another instance's sandboxes
/// included).
fn private_mounts(state_root: &Path, keep: &[PathBuf]) -> std::io::Result<()> {
    // Private before anything is unmounted: on a host whose mounts are shared, an unmount
    // here would otherwise propagate to the host's namespace.
    crate::mounts::own_mount_namespace(nix::mount::MsFlags::MS_PRIVATE)?;
    let run = state_root.parent().unwrap_or(state_root);
    // Each path both as given and as it resolves: a symlinked path needs the mounts on its
    // way and those of where it leads.
    let needed: Vec<PathBuf> = std::iter::once(run)
        .chain(keep.iter().map(PathBuf::as_path))
        .flat_map(|p| {
            [
                p.to_owned(),
                std::fs::canonicalize(p).unwrap_or_else(|_| p.to_owned()),
            ]
        })
        .collect();
    // What must not stay is a mount below a needed directory (a sandbox's disk or root):
    // one elsewhere that would not go (none seen) holds nothing of Paddock's.
    let left = crate::mounts::detach_all_but(&needed);
    match left
        .iter()
        .find(|m| needed.iter().any(|n| m.starts_with(n)))
    {
        Some(p) => Err(std::io::Error::other(format!(
            "{} is still mounted in its namespace",
            p.display()
        ))),
        None => Ok(()),
    }
}

/// Opens `/dev/null` as descriptor `fd` (close-on-exec). The server opened nothing else that
/// stays open, so it is free unless the server inherited it by mistake (a descriptor its
/// starter left open across exec), which this replaces.
fn keep_null_at(fd: RawFd) -> std::io::Result<std::fs::File> {
    let null = std::fs::File::open("/dev/null")?;
    if null.as_raw_fd() == fd {
        return Ok(null);
    }
    nix::unistd::dup3(null.as_raw_fd(), fd, nix::fcntl::OFlag::O_CLOEXEC)?;
    // SAFETY: `dup3` just made `fd` a copy of `null`, replacing (and closing) whatever it
    // was; nothing else in the server refers to it.
    Ok(unsafe { std::fs::File::from_raw_fd(fd) })
}

/// Reaps every finished child of the server without blocking.
fn reap_children() {
    use nix::sys::wait::{WaitPidFlag, WaitStatus, waitpid};
    while let Ok(s) = waitpid(None, Some(WaitPidFlag::WNOHANG | WaitPidFlag::__WALL)) {
        if s == WaitStatus::StillAlive {
            break;
        }
    }
}

/// Sends one reply; the requester reports a lost one as "ended without an answer".
fn answer(reply: &OwnedFd, r: Result<Vec<u8>, String>) {
    let (tag, mut body) = match r {
        Ok(out) => (REPLY_OK, out),
        Err(msg) => (REPLY_ERR, msg.into_bytes()),
    };
    body.truncate(MAX_MESSAGE - 1);
    body.insert(0, tag);
    let _ = nix::sys::socket::send(reply.as_raw_fd(), &body, MsgFlags::MSG_NOSIGNAL);
}

/// Forks a child that runs one request and answers on `reply`.
fn fork_one(
    ctl: &OwnedFd,
    null: &std::fs::File,
    state_root: &Path,
    reply: OwnedFd,
    args: &[OsString],
    fds: Vec<OwnedFd>,
) {
    // SAFETY: the server is single-threaded (it never starts a thread), so the child is a
    // complete copy of it and may run any code.
    match unsafe { nix::unistd::fork() } {
        Ok(nix::unistd::ForkResult::Child) => {
            // Nothing the child starts (libcontainer's processes, the log relay) may hold the
            // server's socket.
            let _ = nix::unistd::dup2(null.as_raw_fd(), ctl.as_raw_fd());
            let r = std::panic::catch_unwind(move || run_request(state_root, args, fds))
                .unwrap_or_else(|_| Err("the container helper panicked".into()));
            answer(&reply, r);
            std::process::exit(0);
        }
        Ok(nix::unistd::ForkResult::Parent { .. }) => {}
        Err(e) => answer(&reply, Err(format!("container fork server: fork: {e}"))),
    }
}

/// Runs one request in the forked child.
fn run_request(state_root: &Path, args: &[OsString], fds: Vec<OwnedFd>) -> Result<Vec<u8>, String> {
    let a: Vec<&Path> = args.iter().map(Path::new).collect();
    match a.as_slice() {
        [op, root, ..] if *root != state_root => Err(format!(
            "container fork server: {} under {}: serves {} only",
            op.display(),
            root.display(),
            state_root.display()
        )),
        _ => {
            let a: Vec<&str> = args
                .iter()
                .map(|s| s.to_str().ok_or_else(|| format!("not UTF-8: {s:?}")))
                .collect::<Result<_, _>>()?;
            crate::container::served(&a, fds).map_err(|e| e.to_string())
        }
    }
}
