//! Failures of the embedded infra itself (the kernel- and file-level ones have their own types:
//! [`crate::container::ContainerError`], [`crate::store::StoreError`], ...).

/// Something about a template or sandbox that the infra cannot work with.
#[derive(Debug, thiserror::Error)]
pub enum EmbeddedError {
    /// A template's `user` is not numeric `uid[:gid]`.
    #[error("template user {0:?} is not uid[:gid]")]
    BadUser(String),
}
