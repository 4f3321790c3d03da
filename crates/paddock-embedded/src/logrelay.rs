//! The per-sandbox log relay: the process that drains a sandbox init's stdout/stderr into a
//! size-capped host log (security review H5).
//!
//! The init's output used to be a host file opened in append mode, so sandbox root could grow
//! it without bound by writing to `/proc/1/fd/1`. Now the init writes into a pipe, and a small
//! relay process reads it and keeps at most [`LOG_CAP_BYTES`] on disk: the current file and one
//! rotated predecessor, each at most half the cap. The relay is forked by the single-threaded
//! container helper, not run as a task inside Paddock, so it outlives a Paddock restart and
//! adopted sandboxes keep their output; Paddock moves it into the sandbox's cgroup, so it is
//! killed with the sandbox and its memory is charged to it. Sandbox processes cannot see it
//! (it is in the host's pid namespace) and hold only the pipe's write end.

use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};

/// Most bytes of a sandbox's log kept on the host: the current file plus the rotated one.
pub const LOG_CAP_BYTES: u64 = 2 << 20;

/// The rotated predecessor of `log` (`runtime.log` → `runtime.log.1`).
pub fn rotated(log: &Path) -> PathBuf {
    let mut s = log.as_os_str().to_owned();
    s.push(".1");
    PathBuf::from(s)
}

/// Writes what it is given to `path`, rotating to [`rotated`] whenever the current file would
/// pass `cap / 2`, so the two files together never exceed `cap`.
pub struct CappedLog {
    path: PathBuf,
    file: File,
    len: u64,
    half: u64,
}

impl CappedLog {
    /// Opens (appending to) `path`, keeping its existing length in the count.
    pub fn open(path: &Path, cap: u64) -> std::io::Result<Self> {
        let file = OpenOptions::new().create(true).append(true).open(path)?;
        let len = file.metadata()?.len();
        Ok(Self {
            path: path.to_owned(),
            file,
            len,
            half: (cap / 2).max(1),
        })
    }

    /// Appends `buf`, rotating as needed. A chunk larger than half the cap keeps only its tail.
    pub fn write(&mut self, mut buf: &[u8]) -> std::io::Result<()> {
        if buf.len() as u64 > self.half {
            buf = &buf[buf.len() - self.half as usize..];
        }
        if self.len + buf.len() as u64 > self.half {
            self.rotate()?;
        }
        self.file.write_all(buf)?;
        self.len += buf.len() as u64;
        Ok(())
    }

    fn rotate(&mut self) -> std::io::Result<()> {
        std::fs::rename(&self.path, rotated(&self.path))?;
        self.file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.path)?;
        self.len = 0;
        Ok(())
    }
}

/// Reads `from` until every writer has closed it, writing into a [`CappedLog`] at `log`.
/// Write errors (a full host disk) drop the data but keep draining, so the sandbox's writes
/// never block on the host.
pub fn drain(from: OwnedFd, log: &Path, cap: u64) {
    let mut input = File::from(from);
    let mut out = CappedLog::open(log, cap).ok();
    let mut buf = vec![0u8; 64 << 10];
    loop {
        match input.read(&mut buf) {
            Ok(0) => return,
            Ok(n) => {
                if let Some(o) = out.as_mut()
                    && o.write(&buf[..n]).is_err()
                {
                    // Try a fresh file next time (the old one may have been removed).
                    out = CappedLog::open(log, cap).ok();
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(_) => return,
        }
    }
}

/// Starts the relay: this binary again, as the container helper's `relay` command, with
/// `read_end` as its stdin and `/dev/null` as its stdout and stderr (the helper's stdout is
/// the pipe Paddock reads the helper's answer from: a relay holding it open would make Paddock
/// wait for it forever). In its own process group, so a signal to Paddock's group (Ctrl-C)
/// does not end the sandboxes' output. Returns its pid; nobody waits for it: when the helper
/// exits it is reparented, and it exits by itself at EOF.
pub fn spawn(read_end: OwnedFd, log: &Path) -> std::io::Result<i32> {
    use std::os::unix::process::CommandExt;
    let child = std::process::Command::new(std::env::current_exe()?)
        .arg(crate::container::HELPER_ARG)
        .arg(RELAY_CMD)
        .arg(log)
        .stdin(read_end)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .process_group(0)
        .spawn()?;
    Ok(child.id() as i32)
}

/// The helper command that runs [`drain`] on stdin.
pub const RELAY_CMD: &str = "relay";

/// The helper side of [`spawn`]: drains stdin into `log` with the default cap.
pub fn run(log: &Path) -> i32 {
    use std::os::fd::AsFd;
    match std::io::stdin().as_fd().try_clone_to_owned() {
        Ok(fd) => {
            drain(fd, log, LOG_CAP_BYTES);
            0
        }
        Err(_) => 1,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn total(dir: &Path) -> u64 {
        std::fs::read_dir(dir)
            .expect("read dir")
            .flatten()
            .map(|e| e.metadata().expect("meta").len())
            .sum()
    }

    #[test]
    fn the_two_files_never_pass_the_cap_and_keep_the_newest_bytes() {
        let d = tempfile::tempdir().expect("tempdir");
        let log = d.path().join("runtime.log");
        let mut w = CappedLog::open(&log, 1000).expect("open");
        for i in 0..500u32 {
            w.write(format!("line {i}\n").as_bytes()).expect("write");
            assert!(total(d.path()) <= 1000, "over the cap at line {i}");
        }
        let current = std::fs::read_to_string(&log).expect("read");
        assert!(current.ends_with("line 499\n"), "{current}");
        assert!(rotated(&log).exists());
    }

    #[test]
    fn a_chunk_larger_than_the_cap_keeps_its_tail() {
        let d = tempfile::tempdir().expect("tempdir");
        let log = d.path().join("runtime.log");
        let mut w = CappedLog::open(&log, 100).expect("open");
        let mut big = vec![b'x'; 10_000];
        big.extend_from_slice(b"END");
        w.write(&big).expect("write");
        assert!(total(d.path()) <= 100);
        assert!(std::fs::read(&log).expect("read").ends_with(b"END"));
    }

    #[test]
    fn drain_stops_at_eof() {
        let d = tempfile::tempdir().expect("tempdir");
        let log = d.path().join("runtime.log");
        let (r, w) = nix::unistd::pipe().expect("pipe");
        let mut w = File::from(w);
        w.write_all(b"hello\n").expect("write");
        drop(w);
        drain(r, &log, 1000);
        assert_eq!(std::fs::read_to_string(&log).expect("read"), "hello\n");
    }
}
