//! Starting the cgroup migration lock's grace period ahead of need.
//!
//! Moving a task between cgroups takes the kernel's cgroup thread-group lock for writing, and
//! after a quiet spell that waits for an RCU grace period: on the 2-core test host the first
//! move after 0.2 s of quiet took 7.7 ms (p50), a move right after another 0.1–0.2 ms. A
//! container's first move (its runtime joining the sandbox's cgroups) sat through that wait in
//! every cold create. [`Warmer::kick`] makes a thread of ours move into a cgroup of Paddock's
//! own and straight back, so the grace period runs while the create is still preparing its
//! disk and root filesystem; the container's moves find the lock warm. (The waiting move holds
//! the kernel's cgroup mutex too, so cgroup changes made meanwhile wait with it: they would
//! have waited for the container's move just the same.)
//! (The `favordynmods` mount option removes the wait for the whole host; a host's cgroup
//! mounts are not Paddock's to change.)
//!
//! cgroup v1 only: there one thread can be moved on its own (`tasks`); cgroup v2 moves single
//! threads only between threaded cgroups. The cgroup sits under the sandboxes' base in the
//! `pids` hierarchy, named with a leading dot so it is never taken for a sandbox's
//! ([`crate::Hierarchy::list`] skips it). The thread rests in its own cgroup, so the warm one
//! is empty but during a move; it stays when Paddock stops, as the base itself does.

use std::sync::mpsc::{SyncSender, TrySendError, sync_channel};

use crate::hierarchy::{Hierarchy, Version};
use crate::{CgroupError, Result};

/// The name of the cgroup the warming thread moves through.
pub const WARM_CGROUP: &str = ".warm";

/// A thread that moves itself into [`WARM_CGROUP`] and back each time it is kicked. Clones
/// kick the same thread.
#[derive(Debug, Clone)]
pub struct Warmer {
    kicks: SyncSender<()>,
}

impl Warmer {
    /// Makes the cgroup and starts the thread; `None` on cgroup v2 (see the module docs).
    pub fn start(h: &Hierarchy) -> Result<Option<Self>> {
        Self::start_with(h, "/proc/thread-self/cgroup")
    }

    /// [`Self::start`] with the file the thread reads its own cgroups from.
    fn start_with(h: &Hierarchy, own_cgroups: &str) -> Result<Option<Self>> {
        if h.version() != Version::V1 {
            return Ok(None);
        }
        let pids = h.root().join("pids");
        let dir = pids.join(h.base()).join(WARM_CGROUP);
        std::fs::create_dir_all(&dir).map_err(|source| CgroupError::Io {
            path: dir.clone(),
            source,
        })?;
        let warm = dir.join("tasks");
        let own_cgroups = own_cgroups.to_owned();
        // One pending kick is enough: a kick that finds one queued is served by it.
        let (kicks, rx) = sync_channel::<()>(1);
        std::thread::Builder::new()
            .name("paddock-cg-warm".into())
            .spawn(move || {
                let tid = nix::unistd::gettid().to_string();
                // Where this thread is now, in the pids hierarchy: it goes back there.
                let home = std::fs::read_to_string(&own_cgroups)
                    .ok()
                    .and_then(|t| pids_path(&t))
                    .map(|p| pids.join(p.trim_start_matches('/')).join("tasks"));
                let Some(home) = home else {
                    tracing::debug!("own pids cgroup unknown: cgroup lock warming off");
                    return;
                };
                while rx.recv().is_ok() {
                    for file in [&warm, &home] {
                        if let Err(e) = std::fs::write(file, &tid) {
                            tracing::debug!(file = %file.display(), error = %e, "cgroup warm move failed");
                        }
                    }
                }
            })
            .map_err(|source| CgroupError::Io { path: dir, source })?;
        Ok(Some(Self { kicks }))
    }

    /// Starts a move without waiting for it (a move already under way serves this kick too).
    pub fn kick(&self) {
        match self.kicks.try_send(()) {
            Ok(()) | Err(TrySendError::Full(())) => {}
            Err(TrySendError::Disconnected(())) => {
                tracing::debug!("cgroup warming thread is gone");
            }
        }
    }
}

/// The `pids` controller's path in the text of a `/proc/.../cgroup` file.
fn pids_path(text: &str) -> Option<String> {
    text.lines().find_map(|line| {
        let mut parts = line.splitn(3, ':');
        let (_id, ctrls, path) = (parts.next()?, parts.next()?, parts.next()?);
        ctrls
            .split(',')
            .any(|c| c == "pids")
            .then(|| path.to_owned())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A kick moves the thread into the warm cgroup and back home; `list` does not show it.
    #[test]
    fn a_kick_moves_the_thread_through_the_warm_cgroup_and_home() {
        let d = tempfile::tempdir().expect("tempdir");
        for c in crate::hierarchy::V1_CONTROLLERS {
            std::fs::create_dir_all(d.path().join(c)).expect("mkdir");
        }
        std::fs::create_dir_all(d.path().join("pids/home")).expect("mkdir");
        let own = d.path().join("own-cgroups");
        std::fs::write(&own, "8:pids:/home\n4:memory:/own\n").expect("write");
        let h = Hierarchy::detect_at(d.path(), "4:memory:/own\n", "paddock").expect("detect");
        let w = Warmer::start_with(&h, own.to_str().expect("utf-8"))
            .expect("start")
            .expect("v1 warms");
        let warm = d
            .path()
            .join("pids/own/paddock")
            .join(WARM_CGROUP)
            .join("tasks");
        let home = d.path().join("pids/home/tasks");
        w.kick();
        // The moves happen on the warming thread; a missed kick would leave the files absent.
        let mut waited = 0;
        while !home.exists() {
            assert!(waited < 10_000, "no move home");
            std::thread::sleep(std::time::Duration::from_millis(1));
            waited += 1;
        }
        let tid = std::fs::read_to_string(&warm).expect("moved into the warm cgroup first");
        assert!(tid.parse::<i32>().is_ok(), "{tid:?}");
        assert_eq!(std::fs::read_to_string(&home).expect("home"), tid);
        assert_eq!(h.list().expect("list"), Vec::<String>::new());
    }

    #[test]
    fn the_pids_path_is_read_from_the_controller_list() {
        let text = "9:name=systemd:/\n8:pids:/a/b\n4:memory:/own\n0::/\n";
        assert_eq!(pids_path(text).as_deref(), Some("/a/b"));
        assert_eq!(pids_path("1:cpu,cpuacct:/\n"), None);
    }
}
