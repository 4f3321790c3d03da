//! Security review M1: a per-runtime cap on live directory watches.
//!
//! Sandboxes run without a user namespace, so every watch the runtime opens
//! is an inotify instance charged to host uid 0, whose limit
//! (`fs.inotify.max_user_instances`, 128 by default) is shared with systemd,
//! udev and every other sandbox on the host. Each watch takes a slot here
//! before it touches the kernel, and gives it back when it stops.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

/// Live watches one runtime may hold by default. Clients rarely keep more
/// than a handful; 16 of the host's 128 instances leaves most of them to
/// the host and the other sandboxes on it.
pub const DEFAULT_MAX_WATCHERS: usize = 16;

/// The watch slots of one runtime.
#[derive(Debug)]
pub struct WatchSlots {
    max: usize,
    used: Arc<AtomicUsize>,
}

/// One live watch's slot; dropping it frees the slot.
#[derive(Debug)]
pub struct WatchSlot {
    used: Arc<AtomicUsize>,
}

/// Every slot is taken.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error(
    "too many watchers: this sandbox may hold at most {max} at a time (each one is a kernel \
     inotify instance); remove a watcher or close a watch stream first"
)]
pub struct WatchLimitReached {
    pub max: usize,
}

impl WatchSlots {
    pub fn new(max: usize) -> Self {
        Self {
            max,
            used: Arc::new(AtomicUsize::new(0)),
        }
    }

    /// Takes a slot, or says that all `max` are in use.
    pub fn acquire(&self) -> Result<WatchSlot, WatchLimitReached> {
        self.used
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < self.max).then_some(n + 1)
            })
            .map(|_| WatchSlot {
                used: self.used.clone(),
            })
            .map_err(|_| WatchLimitReached { max: self.max })
    }
}

impl Drop for WatchSlot {
    fn drop(&mut self) {
        self.used.fetch_sub(1, Ordering::AcqRel);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slots_run_out_and_come_back() {
        let slots = WatchSlots::new(2);
        let a = slots.acquire().unwrap();
        let _b = slots.acquire().unwrap();
        assert_eq!(slots.acquire().unwrap_err(), WatchLimitReached { max: 2 });
        drop(a);
        assert!(slots.acquire().is_ok());
    }

    #[test]
    fn zero_slots_allow_no_watch() {
        assert!(WatchSlots::new(0).acquire().is_err());
    }
}
