//! Sandbox records on disk (redb), so a restarted Paddock can find what it made.
//!
//! Every change is durable when [`Store::put`] or [`Store::delete`] returns. Changes made at
//! the same time share a commit (and its disk sync): each goes into a queue, and whichever
//! caller gets to write next commits everything queued by then in one transaction, for all
//! of them. A create writes its record three times and concurrent creates wrote one
//! synced transaction each, one after the other.

use std::net::Ipv4Addr;
use std::path::Path;
use std::sync::{Arc, Mutex, OnceLock};

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
    /// The database failed (shared by every change of the commit that failed).
    #[error("store: {0}")]
    Db(#[source] Arc<redb::Error>),
    /// The store file's permissions could not be set.
    #[error("store file: {0}")]
    Io(#[source] std::io::Error),
    /// A record could not be (de)serialised.
    #[error("store record: {0}")]
    Codec(#[from] serde_json::Error),
    /// A queued change was in no commit that ended: the commit that took it panicked.
    #[error("store: a change was not committed")]
    Lost,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// A redb error as the changes of one commit share it.
fn shared<E: Into<redb::Error>>(e: E) -> Arc<redb::Error> {
    Arc::new(e.into())
}

fn db<E: Into<redb::Error>>(e: E) -> StoreError {
    StoreError::Db(shared(e))
}

/// The outcome of a queued change, set by the commit that took it.
type Outcome = Arc<OnceLock<Result<(), Arc<redb::Error>>>>;

/// A change waiting for its commit: the record's new bytes, or `None` to delete it.
struct Queued {
    id: String,
    bytes: Option<Vec<u8>>,
    outcome: Outcome,
}

/// The sandbox record store.
pub struct Store {
    db: Database,
    /// Changes not yet taken by a commit, in the order they were made.
    queue: Mutex<Vec<Queued>>,
    /// Held while a batch is committed: one writer at a time, and the others queue meanwhile.
    writer: Mutex<()>,
    /// Transactions committed (for tests of the batching).
    #[cfg(test)]
    commits: std::sync::atomic::AtomicUsize,
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
        Ok(Self {
            db: database,
            queue: Mutex::new(Vec::new()),
            writer: Mutex::new(()),
            #[cfg(test)]
            commits: Default::default(),
        })
    }

    /// Inserts or replaces a record; durable when it returns.
    pub fn put(&self, r: &SandboxRecord) -> Result<(), StoreError> {
        let bytes = serde_json::to_vec(r)?;
        self.change(r.id.as_str(), Some(bytes))
    }

    /// Deletes a record (absent is fine); durable when it returns.
    pub fn delete(&self, id: &SandboxId) -> Result<(), StoreError> {
        self.change(id.as_str(), None)
    }

    /// Queues one change and returns once a commit holding it ended: this caller's own, or
    /// one another caller made while this one waited for the writer's lock.
    fn change(&self, id: &str, bytes: Option<Vec<u8>>) -> Result<(), StoreError> {
        let outcome = Outcome::default();
        lock(&self.queue).push(Queued {
            id: id.to_owned(),
            bytes,
            outcome: outcome.clone(),
        });
        let _writer = lock(&self.writer);
        if outcome.get().is_none() {
            let batch = std::mem::take(&mut *lock(&self.queue));
            let r = self.commit(&batch);
            for q in &batch {
                let _ = q.outcome.set(r.clone());
            }
        }
        match outcome.get() {
            Some(Ok(())) => Ok(()),
            Some(Err(e)) => Err(StoreError::Db(e.clone())),
            // The batch just committed held every change queued before it; only one taken
            // by a commit that panicked (its writer's lock is then poisoned, see `lock`) has
            // no outcome.
            None => Err(StoreError::Lost),
        }
    }

    /// Applies `batch` in order in one transaction.
    fn commit(&self, batch: &[Queued]) -> Result<(), Arc<redb::Error>> {
        let tx = self.db.begin_write().map_err(shared)?;
        {
            let mut t = tx.open_table(SANDBOXES).map_err(shared)?;
            for q in batch {
                match &q.bytes {
                    Some(b) => {
                        t.insert(q.id.as_str(), b.as_slice()).map_err(shared)?;
                    }
                    None => {
                        t.remove(q.id.as_str()).map_err(shared)?;
                    }
                }
            }
        }
        tx.commit().map_err(shared)?;
        #[cfg(test)]
        self.commits
            .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        Ok(())
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

    /// Waits until `n` changes are queued behind the held writer's lock.
    fn wait_queued(s: &Store, n: usize) {
        while lock(&s.queue).len() < n {
            std::thread::sleep(std::time::Duration::from_millis(1));
        }
    }

    #[test]
    fn changes_made_meanwhile_share_one_commit_in_their_order() {
        let d = tempfile::tempdir().expect("tempdir");
        let path = d.path().join("db");
        let s = Arc::new(Store::open(&path).expect("open"));
        s.put(&rec("gone")).expect("put");
        let commits = || s.commits.load(std::sync::atomic::Ordering::SeqCst);
        let before = commits();
        // A commit in progress: everything changed meanwhile queues behind it.
        let held = lock(&s.writer);
        let mut threads = Vec::new();
        for i in 0..8 {
            let s = s.clone();
            threads.push(std::thread::spawn(move || s.put(&rec(&format!("r{i}")))));
        }
        wait_queued(&s, 8);
        // A put then a delete of one id, queued in that order: the delete wins.
        let (a, b) = (s.clone(), s.clone());
        threads.push(std::thread::spawn(move || a.put(&rec("late"))));
        wait_queued(&s, 9);
        threads.push(std::thread::spawn(move || {
            b.delete(&SandboxId::new("late").expect("id"))
        }));
        wait_queued(&s, 10);
        let c = s.clone();
        threads.push(std::thread::spawn(move || {
            c.delete(&SandboxId::new("gone").expect("id"))
        }));
        wait_queued(&s, 11);
        drop(held);
        for t in threads {
            t.join().expect("thread").expect("change");
        }
        assert_eq!(commits() - before, 1, "eleven changes, one commit");
        drop(Arc::into_inner(s).expect("the only handle"));
        let mut ids: Vec<String> = Store::open(&path)
            .expect("reopen")
            .all()
            .expect("all")
            .into_iter()
            .map(|r| r.id.as_str().to_owned())
            .collect();
        ids.sort();
        let want: Vec<String> = (0..8).map(|i| format!("r{i}")).collect();
        assert_eq!(ids, want);
    }
}
