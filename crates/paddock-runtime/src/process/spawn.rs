//! Starting a process as a given user, with pipes or a terminal.

use std::io;
use std::os::fd::OwnedFd;
use std::path::PathBuf;
use std::process::Stdio;
use std::sync::Arc;
use std::time::{Duration, Instant};

use rustix::process::Signal;
use tokio::io::AsyncReadExt;

use super::handle::{Attached, Exit, Input, Output, Proc};
use super::table::ProcessTable;
use crate::proto::process::ProcessConfig;
use crate::users::User;

/// How long to keep reading output after the process exited, in case a
/// background child still holds its pipes open.
const DRAIN_GRACE: Duration = Duration::from_millis(250);
const CHUNK: usize = 32 * 1024;

/// What to start.
pub struct SpawnSpec {
    pub config: ProcessConfig,
    pub tag: Option<String>,
    pub env: Vec<(String, String)>,
    pub cwd: PathBuf,
    pub user: User,
    /// Terminal size (cols, rows) when the process gets a PTY.
    pub pty: Option<(u16, u16)>,
    pub stdin: bool,
    /// Kill the process when this instant passes.
    pub deadline: Option<Instant>,
}

/// Starts the process, registers it and returns it with a stream already
/// attached, so not a byte of early output is missed.
pub fn spawn(table: &ProcessTable, spec: SpawnSpec) -> io::Result<(Arc<Proc>, Attached)> {
    let mut cmd = tokio::process::Command::new(&spec.config.cmd);
    cmd.args(&spec.config.args)
        .env_clear()
        .envs(spec.env.iter().map(|(k, v)| (k, v)))
        .current_dir(&spec.cwd)
        .kill_on_drop(false);

    let pty_master = match spec.pty {
        Some((cols, rows)) => {
            let (master, slave) = open_pty(cols, rows)?;
            cmd.stdin(Stdio::from(slave.try_clone()?))
                .stdout(Stdio::from(slave.try_clone()?))
                .stderr(Stdio::from(slave));
            Some(Arc::new(std::fs::File::from(master)))
        }
        None => {
            cmd.stdin(if spec.stdin {
                Stdio::piped()
            } else {
                Stdio::null()
            })
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
            None
        }
    };

    crate::identity::exec_as(cmd.as_std_mut(), &spec.user, pty_master.is_some());

    let mut child = cmd.spawn()?;
    // Close our copies of the terminal's slave side, or reading the master
    // would never report the end.
    drop(cmd);
    let pid = child
        .id()
        .ok_or_else(|| io::Error::other("process exited before it could be tracked"))?;

    let input = match &pty_master {
        Some(m) => Some(Input::Pty(m.clone())),
        None => child.stdin.take().map(Input::Pipe),
    };
    let proc = Arc::new(Proc::new(
        pid,
        spec.tag,
        spec.config,
        input,
        pty_master.clone(),
    ));
    let attached = proc.attach();
    table.insert(proc.clone());

    let mut readers = Vec::new();
    if let Some(out) = child.stdout.take() {
        readers.push(tokio::spawn(pump(proc.clone(), out, Output::Stdout)));
    }
    if let Some(err) = child.stderr.take() {
        readers.push(tokio::spawn(pump(proc.clone(), err, Output::Stderr)));
    }
    if let Some(master) = pty_master {
        readers.push(pump_pty(proc.clone(), master));
    }

    if let Some(deadline) = spec.deadline {
        let p = proc.clone();
        tokio::spawn(async move {
            tokio::time::sleep_until(deadline.into()).await;
            if p.exit().is_none() {
                tracing::info!(pid = p.pid, "process exceeded its timeout; killing it");
                kill_group(p.pid, Signal::KILL);
            }
        });
    }

    let p = proc.clone();
    let procs = table.clone();
    tokio::spawn(async move {
        let exit = match child.wait().await {
            Ok(status) => Exit::from_status(status),
            Err(e) => Exit {
                exit_code: -1,
                exited: false,
                status: "unknown".into(),
                error: Some(format!("waiting for the process failed: {e}")),
            },
        };
        let _ = tokio::time::timeout(DRAIN_GRACE, futures::future::join_all(readers)).await;
        tracing::info!(pid = p.pid, status = %exit.status, "process ended");
        p.finish(exit).await;
        procs.retire_later(p.pid);
    });

    Ok((proc, attached))
}

async fn pump<R>(proc: Arc<Proc>, mut reader: R, wrap: fn(Vec<u8>) -> Output)
where
    R: tokio::io::AsyncRead + Unpin,
{
    let mut buf = vec![0u8; CHUNK];
    loop {
        match reader.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => proc.publish(wrap(buf[..n].to_vec())).await,
        }
    }
}

/// Terminal output is read on a plain thread: the master side of a PTY is
/// a character device that the async reactor cannot poll portably.
fn pump_pty(proc: Arc<Proc>, master: Arc<std::fs::File>) -> tokio::task::JoinHandle<()> {
    let handle = tokio::runtime::Handle::current();
    let (done_tx, done_rx) = tokio::sync::oneshot::channel::<()>();
    std::thread::spawn(move || {
        use std::io::Read;
        let mut buf = vec![0u8; CHUNK];
        loop {
            match (&*master).read(&mut buf) {
                Ok(0) => break,
                Ok(n) => handle.block_on(proc.publish(Output::Pty(buf[..n].to_vec()))),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                // EIO: every slave descriptor is closed, the session is over.
                Err(_) => break,
            }
        }
        let _ = done_tx.send(());
    });
    tokio::spawn(async move {
        let _ = done_rx.await;
    })
}

fn open_pty(cols: u16, rows: u16) -> io::Result<(OwnedFd, OwnedFd)> {
    use rustix::pty::{OpenptFlags, grantpt, openpt, ptsname, unlockpt};
    let master = openpt(OpenptFlags::RDWR | OpenptFlags::NOCTTY | OpenptFlags::CLOEXEC)?;
    grantpt(&master)?;
    unlockpt(&master)?;
    let name = ptsname(&master, Vec::new())?;
    let slave: OwnedFd = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(libc::O_NOCTTY)
        .open(std::ffi::OsStr::from_bytes(name.as_bytes()))?
        .into();
    resize(&master, cols, rows)?;
    Ok((master, slave))
}

use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::OpenOptionsExt;

/// Sets a terminal's window size.
pub fn resize(master: &impl std::os::fd::AsFd, cols: u16, rows: u16) -> io::Result<()> {
    let size = rustix::termios::Winsize {
        ws_col: cols,
        ws_row: rows,
        ws_xpixel: 0,
        ws_ypixel: 0,
    };
    rustix::termios::tcsetwinsize(master, size)?;
    Ok(())
}

/// Sends `signal` to the process group led by `pid` (every process started
/// here leads its own session), or to the process alone when it no longer
/// leads a group. False when there is no such process.
pub fn kill_group(pid: u32, signal: Signal) -> bool {
    let Some(pid) = i32::try_from(pid)
        .ok()
        .and_then(rustix::process::Pid::from_raw)
    else {
        return false;
    };
    rustix::process::kill_process_group(pid, signal).is_ok()
        || rustix::process::kill_process(pid, signal).is_ok()
}
