//! The sandbox lifecycle as an explicit state machine.
//!
//! ```text
//!  Creating --Ready--> Running --Pause--> Paused
//!     |                  ^  |               |
//!     |                  +--|----Resume-----+
//!     +--Fail--> Dead <-----+--Kill / Died--+
//! ```
//! Every pair not drawn above is an [`IllegalTransition`].

use std::fmt;

/// Where a sandbox is in its life.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SandboxState {
    /// Resources are being set up; not yet answering `/health`.
    Creating,
    /// Ready and running.
    Running,
    /// Frozen by the cgroup freezer; memory kept.
    Paused,
    /// Killed, or its init died; resources released or being released.
    Dead,
}

/// Something that moves a sandbox between states.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum LifecycleEvent {
    /// The runtime answered `/health`.
    Ready,
    /// Creation failed.
    Fail,
    /// A pause was requested.
    Pause,
    /// A resume was requested.
    Resume,
    /// A kill was requested.
    Kill,
    /// The sandbox's init exited on its own.
    Died,
}

/// `event` is not allowed in state `from`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("cannot {event:?} a sandbox that is {from}")]
pub struct IllegalTransition {
    /// The state the sandbox was in.
    pub from: SandboxState,
    /// What was attempted.
    pub event: LifecycleEvent,
}

impl SandboxState {
    /// The state after `event`, or an error if `event` is not allowed now.
    pub fn on(self, event: LifecycleEvent) -> Result<SandboxState, IllegalTransition> {
        use LifecycleEvent as E;
        use SandboxState as S;
        match (self, event) {
            (S::Creating, E::Ready) => Ok(S::Running),
            (S::Creating, E::Fail) => Ok(S::Dead),
            (S::Running, E::Pause) => Ok(S::Paused),
            (S::Paused, E::Resume) => Ok(S::Running),
            (S::Creating | S::Running | S::Paused, E::Kill | E::Died) => Ok(S::Dead),
            (from, event) => Err(IllegalTransition { from, event }),
        }
    }

    /// Whether `pause` is allowed now.
    pub fn can_pause(self) -> bool {
        self.on(LifecycleEvent::Pause).is_ok()
    }

    /// Whether `resume` is allowed now.
    pub fn can_resume(self) -> bool {
        self.on(LifecycleEvent::Resume).is_ok()
    }
}

impl fmt::Display for SandboxState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            SandboxState::Creating => "creating",
            SandboxState::Running => "running",
            SandboxState::Paused => "paused",
            SandboxState::Dead => "dead",
        })
    }
}

#[cfg(test)]
mod tests {
    use super::LifecycleEvent as E;
    use super::SandboxState as S;
    use super::*;

    #[test]
    fn happy_path() {
        let s = S::Creating.on(E::Ready).and_then(|s| s.on(E::Pause));
        assert_eq!(s, Ok(S::Paused));
        assert_eq!(S::Paused.on(E::Resume), Ok(S::Running));
        assert_eq!(S::Paused.on(E::Kill), Ok(S::Dead));
    }

    #[test]
    fn illegal_transitions_are_typed_errors() {
        assert_eq!(
            S::Paused.on(E::Pause),
            Err(IllegalTransition {
                from: S::Paused,
                event: E::Pause
            })
        );
        assert!(S::Running.on(E::Resume).is_err());
        assert!(S::Dead.on(E::Kill).is_err());
        assert!(S::Dead.on(E::Resume).is_err());
        assert!(S::Creating.on(E::Pause).is_err());
        assert!(!S::Dead.can_pause());
        assert!(S::Running.can_pause());
        assert_eq!(
            S::Dead.on(E::Pause).map_err(|e| e.to_string()),
            Err("cannot Pause a sandbox that is dead".into())
        );
    }
}
