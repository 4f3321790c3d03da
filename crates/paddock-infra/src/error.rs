//! Errors of the [`crate::Infra`] trait.

use crate::{IllegalTransition, LimitsError, SandboxId};

/// Result alias for infrastructure calls.
pub type InfraResult<T, E = InfraError> = std::result::Result<T, E>;

/// Why an infrastructure call failed. The first variants are the caller's fault (4xx); the
/// last two are ours (5xx).
#[derive(Debug, thiserror::Error)]
pub enum InfraError {
    /// No template of that name.
    #[error("unknown template {0:?}")]
    UnknownTemplate(String),
    /// No sandbox with that id.
    #[error("sandbox {0} not found")]
    NotFound(SandboxId),
    /// Limits that cannot be applied.
    #[error("invalid limits: {0}")]
    InvalidLimits(#[from] LimitsError),
    /// The call is not allowed in the sandbox's current state.
    #[error("sandbox {id}: {source}")]
    IllegalTransition {
        /// Which sandbox.
        id: SandboxId,
        /// What was refused.
        #[source]
        source: IllegalTransition,
    },
    /// A limit of the host was reached (address pool exhausted, ...).
    #[error("out of capacity: {0}")]
    Capacity(String),
    /// No warm sandbox of the template was ready and the request forbade a cold create
    /// ([`crate::CreateSandbox::create_on_no_stock`] false).
    #[error(
        "no ready sandbox of template {template:?} in stock, and creating one was not allowed (create-on-no-stock is false)"
    )]
    NoStock {
        /// The template asked for.
        template: String,
    },
    /// The sandbox started but its init died or it never became ready.
    #[error("sandbox {id} failed: {reason}")]
    SandboxFailed {
        /// Which sandbox.
        id: SandboxId,
        /// What happened.
        reason: String,
    },
    /// No snapshot with that id or name (visible to the caller).
    #[error("snapshot {0:?} not found")]
    SnapshotNotFound(String),
    /// The call conflicts with the state of something else (a snapshot still in use, ...).
    #[error("{0}")]
    Conflict(String),
    /// This backend does not implement the call (snapshots in a backend without them, ...).
    #[error("{0} is not supported by this backend")]
    Unsupported(&'static str),
    /// Anything else that went wrong on our side.
    #[error("internal infrastructure error: {0}")]
    Internal(#[source] Box<dyn std::error::Error + Send + Sync + 'static>),
}

impl InfraError {
    /// Wraps any error as [`InfraError::Internal`].
    pub fn internal(e: impl Into<Box<dyn std::error::Error + Send + Sync + 'static>>) -> Self {
        Self::Internal(e.into())
    }

    /// Whether the caller caused the failure (bad input or wrong state).
    pub fn is_client_error(&self) -> bool {
        matches!(
            self,
            Self::UnknownTemplate(_)
                | Self::NotFound(_)
                | Self::SnapshotNotFound(_)
                | Self::Conflict(_)
                | Self::InvalidLimits(_)
                | Self::IllegalTransition { .. }
                | Self::Unsupported(_)
        )
    }
}
