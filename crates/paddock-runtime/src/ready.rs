//! Telling the embedded host that the runtime listens (see [`paddock_contract::ready`]).

// Taking ownership of the descriptor the host passed by number.
#![allow(unsafe_code)]

use std::os::fd::{BorrowedFd, FromRawFd, OwnedFd};

use paddock_contract::ready::{READY_BYTE, READY_FD_ENV};

/// The pipe the host named in [`READY_FD_ENV`], if the variable names an open pipe beyond
/// stdio. Call it first thing in `main`, before anything opens a descriptor: it takes the
/// descriptor over, and marks it close-on-exec so no process the runtime starts inherits it.
pub fn take() -> Option<OwnedFd> {
    take_named(&std::env::var(READY_FD_ENV).ok()?)
}

/// [`take`] of the descriptor `named` (the variable's value).
fn take_named(named: &str) -> Option<OwnedFd> {
    let n: i32 = named.trim().parse().ok()?;
    if n <= 2 {
        return None;
    }
    // SAFETY: only inspected; fstat on a number that is not open fails with EBADF.
    let borrowed = unsafe { BorrowedFd::borrow_raw(n) };
    let st = rustix::fs::fstat(borrowed).ok()?;
    if rustix::fs::FileType::from_raw_mode(st.st_mode) != rustix::fs::FileType::Fifo {
        return None;
    }
    // SAFETY: the descriptor is open (fstat above), was inherited, and nothing in this process
    // has used it yet (this runs before anything else in `main`), so it is ours to own.
    let fd = unsafe { OwnedFd::from_raw_fd(n) };
    rustix::io::fcntl_setfd(&fd, rustix::io::FdFlags::CLOEXEC).ok()?;
    Some(fd)
}

/// Says the runtime listens, and closes the pipe. A host that stopped waiting closed its end:
/// the write then fails (EPIPE; the runtime ignores SIGPIPE as Rust programs do), which is
/// fine.
pub fn notify(fd: OwnedFd) {
    match rustix::io::write(&fd, &[READY_BYTE]) {
        Ok(_) => tracing::debug!("told the host the runtime listens"),
        Err(e) => tracing::debug!(error = %e, "could not tell the host the runtime listens"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::AsRawFd;

    #[test]
    fn a_pipe_is_taken_closed_on_exec_and_told() {
        let (rx, tx) = rustix::pipe::pipe().expect("pipe");
        // `take_named` owns the descriptor from here: forget ours so it is not closed twice.
        let n = tx.as_raw_fd();
        std::mem::forget(tx);
        let fd = take_named(&n.to_string()).expect("a pipe is taken");
        assert_eq!(fd.as_raw_fd(), n);
        let flags = rustix::io::fcntl_getfd(&fd).expect("flags");
        assert!(flags.contains(rustix::io::FdFlags::CLOEXEC));
        notify(fd);
        let mut buf = [0u8; 4];
        assert_eq!(rustix::io::read(&rx, &mut buf).expect("read"), 1);
        assert_eq!(buf[0], READY_BYTE);
        // Closed after the byte: the next read is EOF.
        assert_eq!(rustix::io::read(&rx, &mut buf).expect("read"), 0);
    }

    #[test]
    fn stdio_a_file_or_no_descriptor_is_not_taken() {
        let file = std::fs::File::open("/dev/null").expect("open");
        assert!(take_named(&file.as_raw_fd().to_string()).is_none());
        // Still ours: not taken over.
        assert!(rustix::io::fcntl_getfd(&file).is_ok());
        for named in ["0", "1", "2", "-1", "x", "", "99999"] {
            assert!(take_named(named).is_none(), "{named:?}");
        }
    }
}
