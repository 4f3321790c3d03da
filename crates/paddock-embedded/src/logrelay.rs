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
//!
//! The relay runs [`RELAY_BINARY`], built beside the runtime binary, or the runtime binary
//! when there is none beside it ([`paddock_contract::caplog`] has the code; both answer its
//! arguments): one relay lives as long as each sandbox, and each process of a static PIE
//! keeps its own relocated copy of the binary's pointer tables: ~296 KiB for the runtime, a
//! few KiB for the relay's own binary (Paddock's binary cost over a MiB more per relay).

use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};

pub use paddock_contract::caplog::{LOG_CAP_BYTES, rotated};

/// The file name of the relay's own binary (a binary of the `paddock-runtime` package).
pub const RELAY_BINARY: &str = "paddock-logrelay";

/// The relay binary to use with the runtime binary `runtime`: [`RELAY_BINARY`] in the same
/// directory when it is a file there, else `runtime` itself.
pub fn beside(runtime: &Path) -> PathBuf {
    let own = runtime.with_file_name(RELAY_BINARY);
    if runtime.parent().is_some() && own.is_file() {
        own
    } else {
        runtime.to_owned()
    }
}

/// Starts the relay: `relay_bin` ([`beside`] the runtime binary) with [`paddock_contract::caplog::RELAY_ARGS`]
/// and `log`, with `read_end` as its stdin and `/dev/null` as its stdout and stderr (the
/// helper's stdout is the pipe Paddock reads the helper's answer from: a relay holding it open
/// would make Paddock wait for it forever). In its own process group, so a signal to
/// Paddock's group (Ctrl-C) does not end the sandboxes' output. Returns its pid; nobody waits
/// for it: when the helper exits it is reparented, and it exits by itself at EOF.
pub fn spawn(read_end: OwnedFd, log: &Path, relay_bin: &Path) -> std::io::Result<i32> {
    use std::os::unix::process::CommandExt;
    let child = std::process::Command::new(relay_bin)
        .args(paddock_contract::caplog::RELAY_ARGS)
        .arg(log)
        .stdin(read_end)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .process_group(0)
        .spawn()?;
    Ok(child.id() as i32)
}

/// Checks that `relay_bin` can be a log relay: it must drain an empty stdin and exit 0. A
/// runtime binary older than this Paddock would instead refuse the arguments, and every
/// sandbox's init would then write into a pipe nobody reads; better to refuse to start.
pub fn check(relay_bin: &Path) -> std::io::Result<()> {
    let out = std::process::Command::new(relay_bin)
        .args(paddock_contract::caplog::RELAY_ARGS)
        .arg("/dev/null")
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .output()?;
    if out.status.success() {
        return Ok(());
    }
    Err(std::io::Error::other(format!(
        "{} cannot relay sandbox logs ({}): it is not a paddock-runtime of this version; \
         build both from the same source",
        relay_bin.display(),
        String::from_utf8_lossy(&out.stderr)
            .lines()
            .next()
            .unwrap_or("no message")
    )))
}

/// The relay's command after the helper marker (leak checks and tests find relays by it).
pub const RELAY_CMD: &str = paddock_contract::caplog::RELAY_ARGS[1];

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_relay_binary_beside_the_runtime_is_preferred() {
        let d = tempfile::tempdir().expect("tempdir");
        let runtime = d.path().join("paddock-runtime");
        std::fs::write(&runtime, b"").expect("runtime");
        assert_eq!(
            beside(&runtime),
            runtime,
            "none beside it: the runtime itself"
        );
        let own = d.path().join(RELAY_BINARY);
        std::fs::create_dir(&own).expect("a directory of that name");
        assert_eq!(beside(&runtime), runtime, "a directory is no binary");
        std::fs::remove_dir(&own).expect("rmdir");
        std::fs::write(&own, b"").expect("relay");
        assert_eq!(beside(&runtime), own);
        assert_eq!(beside(Path::new("")), Path::new(""), "no runtime given");
    }

    #[test]
    fn the_relay_is_recognised_as_a_container_helper() {
        assert_eq!(
            paddock_contract::caplog::RELAY_ARGS,
            [crate::container::HELPER_ARG, super::RELAY_CMD]
        );
    }

    #[test]
    fn a_binary_that_refuses_the_relay_arguments_is_refused() {
        let err = super::check(std::path::Path::new("/bin/false")).expect_err("exits 1");
        assert!(err.to_string().contains("same source"), "{err}");
        assert!(super::check(std::path::Path::new("/nonexistent/paddock-runtime")).is_err());
    }
}
