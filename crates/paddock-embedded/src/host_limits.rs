//! Host limits that a host full of sandboxes runs into, raised at start.
//!
//! A bridge holds up to [`crate::network::BRIDGE_MAX_PORTS`] sandboxes. Several host-wide
//! defaults are far below what that many need: the neighbour table (one entry per sandbox
//! the host talks to), root's inotify instances (every watch a sandbox makes is one, and
//! sandboxes share the host's root user), the pid space and Paddock's own open files. Each is
//! raised to a value that fits a full bridge, never lowered; where the host refuses (a
//! read-only `/proc/sys` in a container), the operator is told which limit stays and what
//! it will stop.

use std::path::Path;

/// A kernel setting Paddock wants at least so high.
#[derive(Clone, Copy, Debug)]
pub struct Knob {
    /// The `/proc/sys` file.
    pub path: &'static str,
    /// The least value a full bridge needs.
    pub want: u64,
    /// What goes wrong below it.
    pub why: &'static str,
}

/// The settings [`raise_all`] raises.
pub const KNOBS: &[Knob] = &[
    Knob {
        path: "/proc/sys/net/ipv4/neigh/default/gc_thresh3",
        want: 4096,
        why: "the host keeps a neighbour entry per sandbox it talks to; past this many the \
              kernel drops them (\"neighbour table overflow\") and sandboxes stop answering",
    },
    Knob {
        path: "/proc/sys/net/ipv4/neigh/default/gc_thresh2",
        want: 2048,
        why: "above this many neighbour entries the kernel evicts them within 5 s, so \
              requests to idle sandboxes wait for address resolution again",
    },
    Knob {
        path: "/proc/sys/fs/inotify/max_user_instances",
        want: 8192,
        why: "each file watch in a sandbox is an inotify instance of the host's root user; \
              past this many, watches fail in every sandbox",
    },
    Knob {
        path: "/proc/sys/kernel/pid_max",
        want: 1 << 22,
        why: "every sandbox's processes and threads take host pids; past this many, no \
              sandbox can start a process",
    },
];

/// What [`raise`] did to one setting.
#[derive(Debug, PartialEq, Eq)]
pub enum Outcome {
    /// Already high enough.
    Kept(u64),
    /// Raised from the first value to the second.
    Raised(u64, u64),
}

/// Raises the integer setting in `path` to `want` unless it is already at least that.
pub fn raise(path: &Path, want: u64) -> std::io::Result<Outcome> {
    let text = std::fs::read_to_string(path)?;
    let now: u64 = text.trim().parse().map_err(|_| {
        std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!("{} holds {:?}, not a number", path.display(), text.trim()),
        )
    })?;
    if now >= want {
        return Ok(Outcome::Kept(now));
    }
    std::fs::write(path, want.to_string())?;
    Ok(Outcome::Raised(now, want))
}

/// Raises every [`KNOBS`] setting, logging what changed and warning about what could not.
pub fn raise_all() {
    for k in KNOBS {
        match raise(Path::new(k.path), k.want) {
            Ok(Outcome::Kept(_)) => {}
            Ok(Outcome::Raised(from, to)) => {
                tracing::info!(
                    setting = k.path,
                    from,
                    to,
                    "raised a host limit for density"
                );
            }
            Err(e) => tracing::warn!(
                setting = k.path,
                want = k.want,
                error = %e,
                "could not raise a host limit: {}",
                k.why
            ),
        }
    }
}

/// Raises this process's soft limit of open files to its hard limit. Paddock holds sockets,
/// pipes and files per sandbox and per request; 1024, the usual soft default, runs out long
/// before a full bridge. The sandboxes are unaffected: their limits are set in their spec
/// ([`crate::spec`]). Returns the new (soft, hard) pair.
pub fn raise_open_files() -> nix::Result<(u64, u64)> {
    use nix::sys::resource::{Resource, getrlimit, setrlimit};
    let (soft, hard) = getrlimit(Resource::RLIMIT_NOFILE)?;
    if soft < hard {
        setrlimit(Resource::RLIMIT_NOFILE, hard, hard)?;
    }
    Ok((hard, hard))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn raises_only_when_lower() {
        let d = tempfile::tempdir().expect("tempdir");
        let knob = d.path().join("knob");
        std::fs::write(&knob, "128\n").expect("write");
        assert_eq!(
            raise(&knob, 8192).expect("raise"),
            Outcome::Raised(128, 8192)
        );
        assert_eq!(std::fs::read_to_string(&knob).expect("read"), "8192");
        std::fs::write(&knob, "100000\n").expect("write");
        assert_eq!(raise(&knob, 8192).expect("keep"), Outcome::Kept(100_000));
        assert_eq!(
            std::fs::read_to_string(&knob).expect("read"),
            "100000\n",
            "a higher value is never lowered"
        );
    }

    #[test]
    fn a_setting_that_is_no_number_is_an_error() {
        let d = tempfile::tempdir().expect("tempdir");
        let knob = d.path().join("knob");
        std::fs::write(&knob, "4096\t8192\n").expect("write");
        let err = raise(&knob, 1).expect_err("not one number");
        assert_eq!(err.kind(), std::io::ErrorKind::InvalidData);
        assert!(raise(&d.path().join("missing"), 1).is_err());
    }

    #[test]
    fn every_knob_fits_a_full_bridge() {
        for k in KNOBS {
            assert!(
                k.want >= crate::network::BRIDGE_MAX_PORTS as u64,
                "{} wants {}",
                k.path,
                k.want
            );
        }
    }

    #[test]
    fn the_open_file_limit_ends_at_the_hard_limit() {
        let (soft, hard) = raise_open_files().expect("raise");
        assert_eq!(soft, hard);
        let (s, h) = nix::sys::resource::getrlimit(nix::sys::resource::Resource::RLIMIT_NOFILE)
            .expect("getrlimit");
        assert_eq!((s, h), (hard, hard));
    }
}
