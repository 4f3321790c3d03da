//! Snapshots of a sandbox's state, and sandboxes made from them (create from a snapshot,
//! fork). Kept apart from [`crate::types`]: a backend may leave all of it unimplemented.

use crate::{Limits, SandboxId};

/// A request to snapshot a running (or paused) sandbox.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CreateSnapshot {
    /// The sandbox to capture.
    pub sandbox: SandboxId,
    /// The team the snapshot belongs to (only it lists, uses and deletes it).
    pub team: String,
    /// An optional name the team can create sandboxes by, besides the id.
    pub name: Option<String>,
}

/// What a snapshot holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SnapshotKind {
    /// The writable filesystem layer only: sandboxes made from it boot afresh on that
    /// filesystem; no process of the original runs in them.
    Filesystem,
    /// Filesystem, memory and processes (a checkpoint the processes continue from).
    Memory,
}

/// One snapshot as a backend knows it.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct SnapshotInfo {
    /// Id (`snap-` and 20 characters of `[a-z0-9]`).
    pub id: String,
    /// Owning team.
    pub team: String,
    /// Name given at creation, if any.
    pub name: Option<String>,
    /// The sandbox it was taken from (it may have ended since).
    pub sandbox_id: SandboxId,
    /// The template under the captured layer; sandboxes made from the snapshot use it too.
    pub template: String,
    /// Limits of the captured sandbox, which sandboxes made from it get.
    pub limits: Limits,
    /// What was captured.
    pub kind: SnapshotKind,
    /// Bytes the snapshot takes on disk.
    pub size_bytes: u64,
    /// Creation time, milliseconds since the Unix epoch.
    pub created_at_ms: u64,
}

impl SnapshotInfo {
    /// Whether `key` names this snapshot for `team`: its id or its name.
    pub fn is_named(&self, team: &str, key: &str) -> bool {
        self.team == team && (self.id == key || self.name.as_deref() == Some(key))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_snapshot_is_named_by_id_or_name_within_its_team_only() {
        let s = SnapshotInfo {
            id: "snap-1".into(),
            team: "a".into(),
            name: Some("warm".into()),
            sandbox_id: SandboxId::new("abc").unwrap(),
            template: "base".into(),
            limits: Limits::default(),
            kind: SnapshotKind::Filesystem,
            size_bytes: 0,
            created_at_ms: 0,
        };
        assert!(s.is_named("a", "snap-1"));
        assert!(s.is_named("a", "warm"));
        assert!(!s.is_named("b", "warm"));
        assert!(!s.is_named("a", "cold"));
    }
}
