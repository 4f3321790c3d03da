//! The capped log of a sandbox's init output: the writer that keeps at most
//! [`LOG_CAP_BYTES`] of it on the host, and the relay process that drains the init's pipe into
//! it (see `paddock_embedded::logrelay` for why the relay is a process of its own).
//!
//! The relay runs the runtime binary (a small static one: an idle relay costs a few hundred
//! KiB, where Paddock's own large binary cost over a MiB per sandbox in relocated pages
//! alone), so both link this module; it uses the standard library only.

use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};

/// The arguments (after the program name) that make a binary the log relay of the log file
/// that follows them; its stdin is the init's output. The first is the container helper's
/// marker, so that anything that recognises Paddock's helpers by their command line (leak
/// checks) recognises the relay too, whichever binary runs it.
pub const RELAY_ARGS: [&str; 2] = ["__paddock-container", "relay"];

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

/// The log file to relay into when `args` (all of them, program name first) are
/// [`RELAY_ARGS`] and a path.
pub fn relay_log(args: &[std::ffi::OsString]) -> Option<PathBuf> {
    match args {
        [_, a, b, log] if *a == RELAY_ARGS[0] && *b == RELAY_ARGS[1] => Some(PathBuf::from(log)),
        _ => None,
    }
}

/// The relay's whole job: drains stdin into `log` with the default cap. Returns the exit code.
pub fn relay(log: &Path) -> i32 {
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
    fn relay_args_are_recognised_and_nothing_else() {
        let args = |v: &[&str]| v.iter().map(std::ffi::OsString::from).collect::<Vec<_>>();
        assert_eq!(
            relay_log(&args(&[
                "rt",
                RELAY_ARGS[0],
                RELAY_ARGS[1],
                "/x/runtime.log"
            ])),
            Some(PathBuf::from("/x/runtime.log"))
        );
        assert_eq!(
            relay_log(&args(&["rt", RELAY_ARGS[0], RELAY_ARGS[1]])),
            None
        );
        assert_eq!(relay_log(&args(&["rt", "--listen", "0.0.0.0:1"])), None);
        assert_eq!(relay_log(&args(&["rt"])), None);
    }

    #[test]
    fn drain_stops_at_eof() {
        let d = tempfile::tempdir().expect("tempdir");
        let log = d.path().join("runtime.log");
        let (r, mut w) = std::io::pipe().expect("pipe");
        w.write_all(b"hello\n").expect("write");
        drop(w);
        drain(r.into(), &log, 1000);
        assert_eq!(std::fs::read_to_string(&log).expect("read"), "hello\n");
    }
}
