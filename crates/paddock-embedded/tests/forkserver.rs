//! The container fork server (`paddock_embedded::forkserver`): it survives its own death, it
//! serves nobody but its parent, it serves only its state root, and it ends with its parent.
//! Root only (a request names another process's credentials, which needs `CAP_SYS_ADMIN`).

use std::io::{IoSlice, IoSliceMut};
use std::os::fd::{AsRawFd, OwnedFd};
use std::path::Path;

use nix::sys::socket::{
    AddressFamily, ControlMessage, MsgFlags, SockFlag, SockType, UnixCredentials, recvmsg, sendmsg,
    setsockopt, socketpair, sockopt,
};
use paddock_embedded::container::{ContainerError, HELPER_ARG};
use paddock_embedded::forkserver::{ForkServer, SERVE_CMD};

const HELPER: &str = env!("CARGO_BIN_EXE_paddock-embedded");

fn seqpacket() -> (OwnedFd, OwnedFd) {
    socketpair(
        AddressFamily::Unix,
        SockType::SeqPacket,
        None,
        SockFlag::SOCK_CLOEXEC,
    )
    .expect("socketpair")
}

/// A `start` of a container that does not exist: served, it fails in libcontainer's `load`.
fn start_nothing(server: &ForkServer, root: &Path) -> ContainerError {
    paddock_embedded::container::start(server, root, "nosuchbox").expect_err("no such container")
}

fn is_process(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .map(|s| {
            !s.rsplit_once(") ")
                .is_some_and(|(_, rest)| rest.starts_with('Z'))
        })
        .unwrap_or(false)
}

#[test]
fn a_dead_fork_server_is_replaced_by_the_next_request() {
    let dir = tempfile::tempdir().expect("tempdir");
    let server = ForkServer::new(Path::new(HELPER), dir.path());
    let e = start_nothing(&server, dir.path()).to_string();
    assert!(e.contains("nosuchbox") && e.contains("load"), "{e}");
    let first = server.pid().expect("running after a request");

    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(first as i32),
        nix::sys::signal::SIGKILL,
    )
    .expect("kill");
    // Dead (a zombie until the handle reaps it), so its socket is closed.
    while is_process(first) {
        std::thread::sleep(std::time::Duration::from_millis(5));
    }

    let e = start_nothing(&server, dir.path()).to_string();
    assert!(e.contains("nosuchbox") && e.contains("load"), "{e}");
    let second = server.pid().expect("running again");
    assert_ne!(first, second);
    drop(server);
    assert!(!is_process(second), "the server outlived its handle");
}

#[test]
fn a_request_for_another_state_root_is_refused() {
    let dir = tempfile::tempdir().expect("tempdir");
    let other = tempfile::tempdir().expect("tempdir");
    let server = ForkServer::new(Path::new(HELPER), dir.path());
    let e = start_nothing(&server, other.path()).to_string();
    assert!(e.contains("serves") && !e.contains("load"), "{e}");
}

/// The server started by hand, as `ForkServer` does, so the test holds Paddock's end.
struct Raw {
    child: std::process::Child,
    ctl: Option<OwnedFd>,
}

impl Raw {
    fn start(root: &Path) -> Self {
        let (ours, theirs) = seqpacket();
        setsockopt(&theirs, sockopt::PassCred, &true).expect("SO_PASSCRED");
        let child = std::process::Command::new(HELPER)
            .args([HELPER_ARG, SERVE_CMD])
            .arg(root)
            .stdin(theirs)
            .spawn()
            .expect("spawn the server");
        Raw {
            child,
            ctl: Some(ours),
        }
    }

    /// Sends `start <root> nosuchbox`, as `cred` if given, and returns the reply.
    fn start_nothing(&self, root: &Path, cred: Option<UnixCredentials>) -> String {
        let (reply, theirs) = seqpacket();
        let msg = format!("start\0{}\0nosuchbox", root.display());
        let fds = [theirs.as_raw_fd()];
        let mut cmsgs = vec![ControlMessage::ScmRights(&fds)];
        if let Some(c) = &cred {
            cmsgs.push(ControlMessage::ScmCredentials(c));
        }
        let ctl = self.ctl.as_ref().expect("open");
        sendmsg::<()>(
            ctl.as_raw_fd(),
            &[IoSlice::new(msg.as_bytes())],
            &cmsgs,
            MsgFlags::empty(),
            None,
        )
        .expect("send a request");
        drop(theirs);
        let mut buf = vec![0u8; 65536];
        let mut iov = [IoSliceMut::new(&mut buf)];
        let n = recvmsg::<()>(reply.as_raw_fd(), &mut iov, None, MsgFlags::empty())
            .expect("reply")
            .bytes;
        String::from_utf8_lossy(&buf[..n]).into_owned()
    }
}

impl Drop for Raw {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn a_request_from_another_process_is_refused_and_the_parent_still_served() {
    let dir = tempfile::tempdir().expect("tempdir");
    let server = Raw::start(dir.path());
    // Another live process's credentials on the request (root may name any pid).
    let mut other = std::process::Command::new("sleep")
        .arg("60")
        .spawn()
        .expect("spawn sleep");
    let forged = UnixCredentials::from(nix::libc::ucred {
        pid: other.id() as i32,
        uid: 0,
        gid: 0,
    });
    let refused = server.start_nothing(dir.path(), Some(forged));
    let _ = other.kill();
    let _ = other.wait();
    assert!(
        refused.starts_with('-') && refused.contains("refused") && !refused.contains("load"),
        "{refused}"
    );
    let served = server.start_nothing(dir.path(), None);
    assert!(
        served.starts_with('-') && served.contains("load"),
        "{served}"
    );
}

#[test]
fn the_server_ends_when_its_parent_closes_its_end() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut server = Raw::start(dir.path());
    let served = server.start_nothing(dir.path(), None);
    assert!(served.contains("load"), "{served}");
    server.ctl = None;
    let status = server.child.wait().expect("wait");
    assert!(status.success(), "{status:?}");
}

/// The server leaves Paddock's process group and session, so a Ctrl-C or a SIGTERM to
/// Paddock's group does not kill it (and the children serving creates) mid-shutdown.
#[test]
fn the_server_runs_in_a_session_of_its_own() {
    let dir = tempfile::tempdir().expect("tempdir");
    let server = ForkServer::new(Path::new(HELPER), dir.path());
    start_nothing(&server, dir.path());
    let pid = nix::unistd::Pid::from_raw(server.pid().expect("running") as i32);
    let ours = nix::unistd::getpgid(None).expect("own group");
    assert_ne!(nix::unistd::getpgid(Some(pid)).expect("its group"), ours);
    assert_eq!(nix::unistd::getsid(Some(pid)).expect("its session"), pid);
}

fn mount_points_of(pid: u32) -> Vec<String> {
    std::fs::read_to_string(format!("/proc/{pid}/mountinfo"))
        .expect("mountinfo")
        .lines()
        .filter_map(|l| l.split(' ').nth(4).map(str::to_owned))
        .collect()
}

fn tmpfs_on(p: &Path) {
    std::fs::create_dir_all(p).expect("mkdir");
    nix::mount::mount(
        Some("tmpfs"),
        p,
        Some("tmpfs"),
        nix::mount::MsFlags::empty(),
        Some("size=1m"),
    )
    .expect("mount tmpfs");
}

/// The server's mount namespace holds none of the data dir's mounts, neither those there when
/// it started (a restart with sandboxes up) nor later ones, nor other mounts it does not need
/// (they would stay pinned while it lives); the host keeps all of them. In the host's
/// namespace every container create copied, and libcontainer read, every sandbox's mounts.
#[test]
fn the_server_holds_no_mounts_of_the_sandboxes_or_others() {
    let data = tempfile::tempdir().expect("tempdir");
    let elsewhere = tempfile::tempdir().expect("tempdir");
    let before = data.path().join("sandboxes/a/rootfs");
    let other = elsewhere.path().join("mnt");
    tmpfs_on(&before);
    tmpfs_on(&other);
    let root = data.path().join("containers");
    let server = ForkServer::new(Path::new(HELPER), &root);
    let e = start_nothing(&server, &root).to_string();
    assert!(e.contains("load"), "{e}");
    let after = data.path().join("sandboxes/b/rootfs");
    tmpfs_on(&after);
    let pid = server.pid().expect("running");
    let theirs = mount_points_of(pid);
    let ours = mount_points_of(std::process::id());
    for p in [&before, &after, &other] {
        let p = p.display().to_string();
        assert!(ours.contains(&p), "the host lost {p}");
        assert!(!theirs.contains(&p), "the server holds {p}: {theirs:?}");
    }
    // What a create needs stays: the root and the kernel's views.
    for p in ["/", "/proc"] {
        assert!(theirs.iter().any(|m| m == p), "{p} missing: {theirs:?}");
    }
    drop(server);
    for p in [&after, &before, &other] {
        nix::mount::umount2(p.as_path(), nix::mount::MntFlags::MNT_DETACH).expect("umount");
    }
}
