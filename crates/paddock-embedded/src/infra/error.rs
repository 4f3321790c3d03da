//! Failures of the embedded infra itself (the kernel- and file-level ones have their own types:
//! [`crate::container::ContainerError`], [`crate::store::StoreError`], ...).

/// Something about a template or sandbox that the infra cannot work with.
#[derive(Debug, thiserror::Error)]
pub enum EmbeddedError {
    /// A template's `user` is not numeric `uid[:gid]`.
    #[error("template user {0:?} is not uid[:gid]")]
    BadUser(String),
    /// A sandbox's record names a snapshot under its writable layer that is not on disk.
    #[error("sandbox {sandbox} lies on snapshot {snapshot}, which is missing")]
    MissingSnapshot {
        /// The sandbox.
        sandbox: String,
        /// The snapshot it names.
        snapshot: String,
    },
}
