//! One Paddock instance per set of host resources.
//!
//! A bridge, its address range, the nftables tables, the veth name prefix and the cgroup
//! parent are host-wide names: two instances that share any of them tear down each other's
//! sandboxes (each one's recovery sweeps "orphaned" veths and cgroups that are the other's)
//! and reload each other's firewall. So an instance takes an exclusive `flock` on one file per
//! name under [`LOCK_DIR`] before it touches any of them, and holds it for its lifetime; the
//! kernel releases it when the process dies, even on a crash, so there is nothing stale to
//! clean up. The holder writes its pid into each file so that a refused start can name it.

use std::fs::File;
use std::io::{Read, Seek, Write};
use std::path::{Path, PathBuf};

use crate::config::EmbeddedConfig;

/// Where the lock files live: a tmpfs, emptied at boot like the resources it guards.
pub const LOCK_DIR: &str = "/run/paddock";

/// Why an instance could not take its resources.
#[derive(Debug, thiserror::Error)]
pub enum LockError {
    /// Another live process holds one of the names.
    #[error(
        "another Paddock instance ({holder}) is using {what} {name:?} (lock {path}); stop it, \
         or give this one its own network and cgroup set: paddock up --bridge NAME --subnet CIDR"
    )]
    Held {
        /// Kind of resource: bridge, subnet, nftables table, ...
        what: &'static str,
        /// Its name.
        name: String,
        /// The lock file.
        path: String,
        /// "pid N", or "pid unknown" when the file says nothing readable.
        holder: String,
    },
    /// The lock file could not be created, read or written.
    #[error("instance lock {path}: {source}")]
    Io {
        /// The lock file.
        path: String,
        /// Cause.
        #[source]
        source: std::io::Error,
    },
}

/// Exclusive ownership of a set of host resource names; released on drop.
#[derive(Debug)]
pub struct InstanceLock {
    _files: Vec<File>,
}

/// The host-wide names an embedded instance uses, as (kind, name) pairs.
pub fn claims(cfg: &EmbeddedConfig) -> Vec<(&'static str, String)> {
    vec![
        ("bridge", cfg.net.bridge.clone()),
        ("subnet", cfg.net.cidr.to_string()),
        ("nftables table", cfg.net.nft_table.clone()),
        ("veth prefix", cfg.net.veth_prefix.clone()),
        ("cgroup parent", cfg.cgroup_parent.clone()),
    ]
}

/// A file name for a resource name: anything outside `[A-Za-z0-9._-]` becomes `_` (two names
/// that differ only there share a lock, which can only refuse too much, never too little).
fn file_name(what: &str, name: &str) -> String {
    let clean = |s: &str| -> String {
        s.chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() || matches!(c, '.' | '-') {
                    c
                } else {
                    '_'
                }
            })
            .collect()
    };
    format!("{}-{}.lock", clean(what), clean(name))
}

impl InstanceLock {
    /// Locks every name of `cfg` under [`LOCK_DIR`].
    pub fn for_config(cfg: &EmbeddedConfig) -> Result<Self, LockError> {
        Self::acquire(Path::new(LOCK_DIR), &claims(cfg))
    }

    /// Locks one file per `(kind, name)` under `dir`, without waiting: fails with
    /// [`LockError::Held`] naming the holder when another process has any of them.
    pub fn acquire(dir: &Path, names: &[(&'static str, String)]) -> Result<Self, LockError> {
        let io = |path: &Path| {
            let path = path.display().to_string();
            move |source| LockError::Io { path, source }
        };
        std::fs::create_dir_all(dir).map_err(io(dir))?;
        let mut files = Vec::with_capacity(names.len());
        for (what, name) in names {
            let path: PathBuf = dir.join(file_name(what, name));
            // Not truncated on open: until we hold the lock, the holder's pid is in there.
            let mut f = std::fs::OpenOptions::new()
                .read(true)
                .write(true)
                .create(true)
                .truncate(false)
                .open(&path)
                .map_err(io(&path))?;
            match f.try_lock() {
                Ok(()) => {}
                Err(std::fs::TryLockError::WouldBlock) => {
                    let mut text = String::new();
                    let _ = f.read_to_string(&mut text);
                    let holder = match text.trim().parse::<u32>() {
                        Ok(pid) => format!("pid {pid}"),
                        Err(_) => "pid unknown".to_owned(),
                    };
                    return Err(LockError::Held {
                        what,
                        name: name.clone(),
                        path: path.display().to_string(),
                        holder,
                    });
                }
                Err(std::fs::TryLockError::Error(e)) => return Err(io(&path)(e)),
            }
            f.set_len(0).map_err(io(&path))?;
            f.rewind().map_err(io(&path))?;
            writeln!(f, "{}", std::process::id()).map_err(io(&path))?;
            files.push(f);
        }
        Ok(Self { _files: files })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn file_names_stay_in_the_directory() {
        assert_eq!(file_name("bridge", "pdkbr0"), "bridge-pdkbr0.lock");
        assert_eq!(
            file_name("subnet", "10.213.0.0/16"),
            "subnet-10.213.0.0_16.lock"
        );
        assert_eq!(
            file_name("cgroup parent", "../x"),
            "cgroup_parent-.._x.lock"
        );
    }

    #[test]
    fn a_second_holder_is_refused_with_the_first_ones_pid_until_it_lets_go() {
        let dir = tempfile::tempdir().expect("tempdir");
        let names = vec![
            ("bridge", "br-a".to_owned()),
            ("subnet", "10.9.0.0/24".into()),
        ];
        let first = InstanceLock::acquire(dir.path(), &names).expect("first");
        // flock locks belong to the open file, so a second open in this process conflicts
        // just as another process would.
        let err = InstanceLock::acquire(dir.path(), &names[1..]).expect_err("second");
        let msg = err.to_string();
        assert!(
            msg.contains(&format!("pid {}", std::process::id())) && msg.contains("--bridge"),
            "{msg}"
        );
        drop(first);
        // Other tests of this binary spawn processes meanwhile: a child between its fork and
        // its exec holds a copy of every descriptor, the lock file's included (flock locks
        // belong to the open file, so that copy holds it until the exec closes it). Such a
        // copy goes within moments; a lock that is never let go still fails here.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        loop {
            match InstanceLock::acquire(dir.path(), &names) {
                Ok(_) => break,
                Err(_) if std::time::Instant::now() < deadline => {
                    std::thread::sleep(std::time::Duration::from_millis(10))
                }
                Err(e) => panic!("after release: {e}"),
            }
        }
    }
}
