//! The `filesystem.Filesystem` service: stat, list, create, move, remove
//! and watch paths inside the sandbox.

pub mod entry;
mod service;
mod watch;

pub use service::FilesystemService;
pub use watch::WatcherTable;
