//! The `filesystem.Filesystem` service: stat, list, create, move, remove
//! and watch paths inside the sandbox.

pub mod entry;
mod service;
mod slots;
mod watch;

pub use service::FilesystemService;
pub use slots::{DEFAULT_MAX_WATCHERS, WatchSlots};
pub use watch::WatcherTable;
