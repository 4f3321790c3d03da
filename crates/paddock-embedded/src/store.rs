//! Sandbox records on disk (redb), so a restarted Paddock can find what it made.

use std::net::Ipv4Addr;
use std::path::Path;

use paddock_infra::{Limits, PauseMode, SandboxId, SandboxState};
use redb::{Database, ReadableTable, TableDefinition};

const SANDBOXES: TableDefinition<&str, &[u8]> = TableDefinition::new("sandboxes");

/// What is persisted about one sandbox. Written before any resource is made, updated after
/// each lifecycle transition, deleted when everything is released.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct SandboxRecord {
    /// Id.
    pub id: SandboxId,
    /// Template name.
    pub template: String,
    /// Lifecycle state.
    pub state: SandboxState,
    /// Address on the Paddock bridge.
    pub ip: Ipv4Addr,
    /// Host pid of the container's init (0 before it exists).
    pub init_pid: i32,
    /// Start time of the init (field 22 of `/proc/<pid>/stat`), to tell a recycled pid apart.
    pub init_start_ticks: u64,
    /// Limits in force.
    pub limits: Limits,
    /// Internet access allowed.
    pub allow_internet: bool,
    /// Labels.
    pub metadata: std::collections::BTreeMap<String, String>,
    /// Creation time (ms since epoch).
    pub created_at_ms: u64,
    /// Waiting in a warm pool (not yet handed out).
    pub pooled: bool,
    /// The access token the runtime was started with, until the creator's `/init` replaces it.
    /// `None` in records written before bootstrap tokens existed.
    #[serde(default)]
    pub bootstrap_token: Option<String>,
    /// How the sandbox is paused now, when it is (`None` in records from before pause modes:
    /// those were frozen, [`PauseMode::Memory`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub paused_in: Option<PauseMode>,
    /// How a timeout pauses it (the creator's `autoPauseMemory`).
    #[serde(default)]
    pub timeout_pause: PauseMode,
    /// What the creator's `/init` told the runtime, so a sandbox booted again after a
    /// filesystem-only pause answers with the same token and environment. The store file is
    /// readable by us only (it holds bootstrap tokens already).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub relaunch: Option<Relaunch>,
    /// The snapshot whose layers lie under this sandbox's writable layer, when it was made
    /// from one (or forked from a sandbox that was). Such a snapshot is not deleted while
    /// the sandbox runs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub snapshot: Option<String>,
}

/// What a booted-again sandbox's runtime is told, from the creator's lease.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Relaunch {
    /// The sandbox's access token (`X-Access-Token`).
    pub access_token: String,
    /// Environment variables every process starts with.
    pub env_vars: std::collections::BTreeMap<String, String>,
}

/// Store errors.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The database failed.
    #[error("store: {0}")]
    Db(#[source] Box<redb::Error>),
    /// The store file's permissions could not be set.
    #[error("store file: {0}")]
    Io(#[source] std::io::Error),
    /// A record could not be (de)serialised.
    #[error("store record: {0}")]
    Codec(#[from] serde_json::Error),
}

fn db<E: Into<redb::Error>>(e: E) -> StoreError {
    StoreError::Db(Box::new(e.into()))
}

/// The sandbox record store.
pub struct Store {
    db: Database,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Store")
    }
}

impl Store {
    /// Opens (or creates) the store file.
    pub fn open(path: &Path) -> Result<Self, StoreError> {
        let database = Database::create(path).map_err(db)?;
        // Records hold the runtimes' bootstrap tokens: readable by us only.
        std::fs::set_permissions(path, std::os::unix::fs::PermissionsExt::from_mode(0o600))
            .map_err(StoreError::Io)?;
        let tx = database.begin_write().map_err(db)?;
        tx.open_table(SANDBOXES).map_err(db)?;
        tx.commit().map_err(db)?;
        Ok(Self { db: database })
    }

    /// Inserts or replaces a record.
    pub fn put(&self, r: &SandboxRecord) -> Result<(), StoreError> {
        let bytes = serde_json::to_vec(r)?;
        let tx = self.db.begin_write().map_err(db)?;
        {
            let mut t = tx.open_table(SANDBOXES).map_err(db)?;
            t.insert(r.id.as_str(), bytes.as_slice()).map_err(db)?;
        }
        tx.commit().map_err(db)
    }

    /// Deletes a record (absent is fine).
    pub fn delete(&self, id: &SandboxId) -> Result<(), StoreError> {
        let tx = self.db.begin_write().map_err(db)?;
        {
            let mut t = tx.open_table(SANDBOXES).map_err(db)?;
            t.remove(id.as_str()).map_err(db)?;
        }
        tx.commit().map_err(db)
    }

    /// Every record.
    pub fn all(&self) -> Result<Vec<SandboxRecord>, StoreError> {
        let tx = self.db.begin_read().map_err(db)?;
        let t = tx.open_table(SANDBOXES).map_err(db)?;
        let mut out = Vec::new();
        for row in t.iter().map_err(db)? {
            let (_, v) = row.map_err(db)?;
            out.push(serde_json::from_slice(v.value())?);
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(id: &str) -> SandboxRecord {
        SandboxRecord {
            id: SandboxId::new(id).expect("id"),
            template: "base".into(),
            state: SandboxState::Creating,
            ip: Ipv4Addr::new(10, 213, 0, 2),
            init_pid: 0,
            init_start_ticks: 0,
            limits: Limits::default(),
            allow_internet: false,
            metadata: Default::default(),
            created_at_ms: 1,
            pooled: false,
            snapshot: None,
            bootstrap_token: None,
            paused_in: None,
            timeout_pause: PauseMode::Memory,
            relaunch: None,
        }
    }

    #[test]
    fn records_survive_reopening() {
        let d = tempfile::tempdir().expect("tempdir");
        let path = d.path().join("db");
        {
            let s = Store::open(&path).expect("open");
            s.put(&rec("a")).expect("put");
            let mut b = rec("b");
            b.state = SandboxState::Running;
            s.put(&b).expect("put");
            s.delete(&SandboxId::new("a").expect("id")).expect("delete");
            s.delete(&SandboxId::new("zz").expect("id"))
                .expect("delete absent");
        }
        let s = Store::open(&path).expect("reopen");
        let all = s.all().expect("all");
        assert_eq!(all.len(), 1);
        assert_eq!(all[0].state, SandboxState::Running);
    }
}
