//! `sudo` without setuid: the runtime runs the command for the caller.
//!
//! E2B's `base` image gives `user` passwordless sudo. A setuid `sudo` cannot work in a Paddock
//! sandbox, by design: every sandbox process runs with `no_new_privs`, and the root
//! filesystem is mounted `nosuid` (it is also visible in the host's mount namespace, where a
//! setuid file planted by a sandbox must not work). Lifting either would weaken the sandbox
//! toward the host. The runtime, though, is root inside the sandbox and already runs any
//! command as root for whoever holds the sandbox's access token. So `sudo` asks it, the way
//! `run0` asks the service manager: this binary, called as `sudo`, connects to the runtime's
//! Unix socket and hands over its argv, environment, working directory and its three standard
//! descriptors; the runtime checks the caller's uid (kernel-provided `SO_PEERCRED`: only
//! root and the default user may), starts the command as the target user on those
//! descriptors, and sends back its exit status. A client that goes away takes its command
//! with it.

use std::collections::BTreeMap;
use std::io::{self, IoSlice, IoSliceMut, Read, Write};
use std::mem::MaybeUninit;
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};
use std::time::Duration;

use rustix::net::{
    RecvAncillaryBuffer, RecvAncillaryMessage, RecvFlags, SendAncillaryBuffer,
    SendAncillaryMessage, SendFlags,
};
use serde::{Deserialize, Serialize};

use crate::users::UserDb;

/// Where the runtime listens for `sudo` requests.
pub const SOCKET: &str = "/run/paddock-sudo.sock";
/// Where the runtime puts `sudo` when the sandbox has none.
const LINK: &str = "/usr/local/bin/sudo";
/// `sudo`'s `secure_path`.
const SECURE_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";
/// Largest request (argv and environment) accepted.
const MAX_REQUEST: usize = 1 << 20;
/// Exit status of `sudo` itself failing (as real sudo's).
const FAILED: i32 = 1;

/// What the client asks for.
#[derive(Debug, Serialize, Deserialize, PartialEq, Eq)]
struct Request {
    user: String,
    argv: Vec<String>,
    cwd: PathBuf,
    env: BTreeMap<String, String>,
    /// `-E`: keep the caller's environment.
    preserve_env: bool,
    /// `-i`: a login shell in the target's home.
    login: bool,
}

/// Whether this process was started as `sudo` (argv[0]).
pub fn called_as_sudo() -> bool {
    std::env::args_os()
        .next()
        .and_then(|a| {
            Path::new(&a)
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
        })
        .is_some_and(|n| n == "sudo")
}

/// Parses sudo's options: `-u USER`, `-E`, `-i`, `-s`, and the accepted no-ops `-n`, `-H`,
/// `-k`, `-S`; `--` ends them.
fn parse(args: &[String]) -> Result<Request, String> {
    let mut req = Request {
        user: "root".into(),
        argv: Vec::new(),
        cwd: std::env::current_dir().unwrap_or_else(|_| "/".into()),
        env: std::env::vars().collect(),
        preserve_env: false,
        login: false,
    };
    let mut shell = false;
    let mut i = 0;
    while i < args.len() {
        let a = &args[i];
        if a == "--" {
            i += 1;
            break;
        }
        if !a.starts_with('-') || a == "-" {
            break;
        }
        if let Some(u) = a.strip_prefix("--user=") {
            req.user = u.into();
        } else if a == "-u" || a == "--user" {
            i += 1;
            req.user = args.get(i).ok_or("option -u needs a user")?.clone();
        } else {
            for c in a[1..].chars() {
                match c {
                    'E' => req.preserve_env = true,
                    'i' => req.login = true,
                    's' => shell = true,
                    'n' | 'H' | 'k' | 'S' => {}
                    other => return Err(format!("unsupported option -{other}")),
                }
            }
        }
        i += 1;
    }
    req.argv = args[i..].to_vec();
    if req.argv.is_empty() && !req.login && !shell {
        return Err("usage: sudo [-n] [-E] [-i | -s] [-u user] [--] command [args...]".into());
    }
    if shell && !req.login {
        let sh = req
            .env
            .get("SHELL")
            .cloned()
            .unwrap_or_else(|| "/bin/sh".into());
        let mut argv = vec![sh];
        if !req.argv.is_empty() {
            argv.extend(["-c".into(), req.argv.join(" ")]);
        }
        req.argv = argv;
    }
    Ok(req)
}

/// The `sudo` command: returns the exit status to end with.
pub fn client(args: &[String]) -> i32 {
    let req = match parse(args) {
        Ok(r) => r,
        Err(e) => {
            eprintln!("sudo: {e}");
            return FAILED;
        }
    };
    match ask(&req) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("sudo: {e}");
            FAILED
        }
    }
}

fn ask(req: &Request) -> io::Result<i32> {
    let mut sock = UnixStream::connect(SOCKET).map_err(|e| {
        io::Error::new(
            e.kind(),
            format!("the sandbox runtime is not reachable at {SOCKET}: {e}"),
        )
    })?;
    let body = serde_json::to_vec(req).map_err(io::Error::other)?;
    let mut msg = (body.len() as u32).to_be_bytes().to_vec();
    msg.extend(body);
    let (stdin, stdout, stderr) = (io::stdin(), io::stdout(), io::stderr());
    let fds = [stdin.as_fd(), stdout.as_fd(), stderr.as_fd()];
    let mut space = [MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(3))];
    let mut control = SendAncillaryBuffer::new(&mut space);
    if !control.push(SendAncillaryMessage::ScmRights(&fds)) {
        return Err(io::Error::other("no room for the descriptors"));
    }
    // The descriptors travel with the first byte; the rest follows on the stream.
    let sent = rustix::net::sendmsg(
        &sock,
        &[IoSlice::new(&msg)],
        &mut control,
        SendFlags::empty(),
    )?;
    sock.write_all(&msg[sent..])?;
    let mut status = [0u8; 4];
    match sock.read_exact(&mut status) {
        Ok(()) => Ok(i32::from_be_bytes(status)),
        Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => Err(io::Error::other(
            "the runtime refused the request (only root and the sandbox's default user may use sudo)",
        )),
        Err(e) => Err(e),
    }
}

/// Makes `sudo` available when the sandbox has none, and serves it. `allowed` is the uid that
/// may use it besides root (the default user's). Root only; failures are logged, not fatal:
/// the sandbox works without sudo.
pub fn start(users: UserDb, allowed: u32) {
    if !rustix::process::geteuid().is_root() {
        return;
    }
    if let Err(e) = install() {
        tracing::warn!(error = %e, "sudo not installed");
    }
    let listener = match listen() {
        Ok(l) => l,
        Err(e) => {
            tracing::warn!(error = %e, socket = SOCKET, "sudo socket not served");
            return;
        }
    };
    // A task of the runtime, not a thread of its own: an idle sandbox holds no thread for it.
    // Each request is served on the blocking pool (it lasts as long as the command it runs).
    let accepting = tokio::runtime::Handle::try_current()
        .map_err(io::Error::other)
        .and_then(|rt| {
            listener.set_nonblocking(true)?;
            let _entered = rt.enter();
            let listener = tokio::net::UnixListener::from_std(listener)?;
            rt.spawn(accept_loop(listener, users, allowed));
            Ok(())
        });
    if let Err(e) = accepting {
        tracing::warn!(error = %e, "sudo requests not accepted");
    }
}

/// Accepts sudo connections until the runtime ends.
async fn accept_loop(listener: tokio::net::UnixListener, users: UserDb, allowed: u32) {
    loop {
        let conn = match listener.accept().await {
            Ok((conn, _)) => conn,
            Err(e) => {
                // Out of descriptors or memory: wait instead of spinning on the error.
                tracing::warn!(error = %e, "sudo accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let users = users.clone();
        tokio::task::spawn_blocking(move || {
            let served = conn
                .into_std()
                .and_then(|c| c.set_nonblocking(false).map(|()| c))
                .and_then(|c| serve(c, &users, allowed));
            if let Err(e) = served {
                tracing::info!(error = %e, "sudo request failed");
            }
        });
    }
}

/// Links `sudo` to this binary unless the sandbox has a `sudo` of its own.
fn install() -> io::Result<()> {
    let has_own = ["/usr/bin/sudo", "/bin/sudo", "/usr/sbin/sudo"]
        .iter()
        .any(|p| Path::new(p).exists());
    if has_own || Path::new(LINK).symlink_metadata().is_ok() {
        return Ok(());
    }
    let exe = std::env::current_exe()?;
    std::fs::create_dir_all("/usr/local/bin")?;
    std::os::unix::fs::symlink(exe, LINK)
}

fn listen() -> io::Result<UnixListener> {
    let path = Path::new(SOCKET);
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    match std::fs::remove_file(path) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(e),
        _ => {}
    }
    let listener = UnixListener::bind(path)?;
    // Anyone may connect; who may use it is decided per connection by its peer's uid.
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o666))?;
    Ok(listener)
}

fn serve(conn: UnixStream, users: &UserDb, allowed: u32) -> io::Result<()> {
    let peer = rustix::net::sockopt::socket_peercred(&conn)?;
    let uid = peer.uid.as_raw();
    if uid != 0 && uid != allowed {
        // Closing unanswered tells the client it was refused.
        return Err(io::Error::other(format!("uid {uid} may not use sudo")));
    }
    let (req, fds) = receive(&conn)?;
    let [stdin, stdout, stderr]: [OwnedFd; 3] = fds
        .try_into()
        .map_err(|_| io::Error::other("expected three descriptors"))?;
    let target = users.lookup(&req.user).map_err(io::Error::other)?;
    let caller = users.user_name(uid);
    let shell = ["/bin/bash", "/bin/sh"]
        .into_iter()
        .find(|s| Path::new(s).exists())
        .unwrap_or("/bin/sh");
    let mut env: BTreeMap<String, String> = if req.preserve_env {
        req.env.clone()
    } else {
        // sudo's env_reset: the terminal and locale survive, the rest is the target's.
        req.env
            .iter()
            .filter(|(k, _)| {
                matches!(
                    k.as_str(),
                    "TERM" | "COLORTERM" | "LANG" | "LANGUAGE" | "TZ"
                ) || k.starts_with("LC_")
            })
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect()
    };
    let home = target.home.display().to_string();
    for (k, v) in [
        ("PATH", SECURE_PATH.to_string()),
        ("HOME", home.clone()),
        ("USER", target.name.clone()),
        ("LOGNAME", target.name.clone()),
        ("SHELL", shell.to_string()),
        ("SUDO_USER", caller),
        ("SUDO_UID", uid.to_string()),
        ("SUDO_GID", peer.gid.as_raw().to_string()),
        ("SUDO_COMMAND", req.argv.join(" ")),
    ] {
        env.insert(k.into(), v);
    }
    let (argv, cwd) = if req.login {
        let mut argv = vec![shell.to_string(), "-l".into()];
        if !req.argv.is_empty() {
            argv.extend(["-c".into(), req.argv.join(" ")]);
        }
        (argv, target.home.clone())
    } else {
        (req.argv.clone(), req.cwd.clone())
    };
    let err_out = stderr.try_clone()?;
    let mut cmd = Command::new(&argv[0]);
    cmd.args(&argv[1..])
        .env_clear()
        .envs(&env)
        .current_dir(if cwd.is_dir() { cwd } else { "/".into() })
        .stdin(Stdio::from(stdin))
        .stdout(Stdio::from(stdout))
        .stderr(Stdio::from(stderr));
    // A session of its own, the target's credentials; its terminal (if any) stays the
    // caller's controlling one.
    crate::identity::exec_as(&mut cmd, &target, false);
    let status = match cmd.spawn() {
        Ok(mut child) => loop {
            if let Some(status) = child.try_wait()? {
                break exit_code(status);
            }
            if client_gone(&conn)? {
                let _ = child.kill();
                let _ = child.wait();
                return Ok(());
            }
        },
        Err(e) => {
            // As sudo says it, on the caller's stderr.
            let _ = writeln!(std::fs::File::from(err_out), "sudo: {}: {e}", argv[0]);
            if e.kind() == io::ErrorKind::NotFound {
                127
            } else {
                126
            }
        }
    };
    (&conn).write_all(&status.to_be_bytes())
}

/// Waits up to a moment for the client to hang up: `true` once it has.
fn client_gone(conn: &UnixStream) -> io::Result<bool> {
    use rustix::event::{PollFd, PollFlags, poll};
    let mut fds = [PollFd::new(conn, PollFlags::IN | PollFlags::HUP)];
    let timeout = rustix::event::Timespec::try_from(Duration::from_millis(100))
        .map_err(|_| io::Error::other("timeout"))?;
    let ready = poll(&mut fds, Some(&timeout))?;
    // The client sends nothing after its request: readable means end of stream.
    Ok(ready > 0 && !fds[0].revents().is_empty())
}

fn exit_code(status: ExitStatus) -> i32 {
    status
        .code()
        .or_else(|| status.signal().map(|s| 128 + s))
        .unwrap_or(FAILED)
}

/// Reads one request and the descriptors sent with it.
fn receive(conn: &UnixStream) -> io::Result<(Request, Vec<OwnedFd>)> {
    let mut buf = vec![0u8; 64 * 1024];
    let mut space = [MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(3))];
    let mut control = RecvAncillaryBuffer::new(&mut space);
    let got = rustix::net::recvmsg(
        conn,
        &mut [IoSliceMut::new(&mut buf)],
        &mut control,
        RecvFlags::CMSG_CLOEXEC,
    )?;
    let mut fds = Vec::new();
    for msg in control.drain() {
        if let RecvAncillaryMessage::ScmRights(received) = msg {
            fds.extend(received);
        }
    }
    let mut data = buf[..got.bytes].to_vec();
    if data.len() < 4 {
        let mut rest = vec![0u8; 4 - data.len()];
        (&*conn).read_exact(&mut rest)?;
        data.extend(rest);
    }
    let len = u32::from_be_bytes([data[0], data[1], data[2], data[3]]) as usize;
    if len > MAX_REQUEST {
        return Err(io::Error::other("request too large"));
    }
    if data.len() < 4 + len {
        let mut rest = vec![0u8; 4 + len - data.len()];
        (&*conn).read_exact(&mut rest)?;
        data.extend(rest);
    }
    let req = serde_json::from_slice(&data[4..4 + len]).map_err(io::Error::other)?;
    Ok((req, fds))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(a: &[&str]) -> Vec<String> {
        a.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn options_and_command() {
        let r = parse(&args(&["-n", "whoami"])).unwrap();
        assert_eq!(
            (r.user.as_str(), r.argv.clone()),
            ("root", args(&["whoami"]))
        );
        let r = parse(&args(&["-u", "user", "-E", "--", "id", "-u"])).unwrap();
        assert_eq!(r.user, "user");
        assert!(r.preserve_env);
        assert_eq!(r.argv, args(&["id", "-u"]));
        let r = parse(&args(&["-i"])).unwrap();
        assert!(r.login && r.argv.is_empty());
        let r = parse(&args(&["-s", "echo", "hi"])).unwrap();
        assert_eq!(r.argv[1..], args(&["-c", "echo hi"]));
        assert!(parse(&args(&[])).is_err());
        assert!(parse(&args(&["-n"])).is_err());
        assert!(parse(&args(&["-x", "ls"])).is_err());
        assert!(parse(&args(&["-u"])).is_err());
    }
}
