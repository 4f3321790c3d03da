//! What the manager remembers about each sandbox, and the views of it that
//! the API returns and the data plane routes by.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::SystemTime;

use paddock_infra::record::{BoxFuture, RecordChange, RecordStore};
use paddock_infra::{InfraError, InfraResult, SandboxId};
use serde_json::{Value, json};

pub use paddock_infra::record::{ApiState, OnTimeout, SandboxRecord};

pub fn rfc3339(t: SystemTime) -> String {
    time::OffsetDateTime::from(t)
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_default()
}

/// The API's JSON views of a record (the record type lives in `paddock-infra`, shared with
/// the backends that keep records themselves).
pub trait RecordJson {
    /// The `Sandbox` body of create/connect responses (`domain`: where the SDK builds data-plane
    /// hosts, `<port>-<id>.<domain>`; `None` leaves it to the SDK's own setting).
    fn sandbox_json(&self, envd_version: &str, domain: Option<&str>) -> Value;
    /// `ListedSandbox`.
    fn listed_json(&self, envd_version: &str) -> Value;
    /// `SandboxDetail`: `ListedSandbox` with more fields.
    fn detail_json(&self, envd_version: &str, domain: Option<&str>) -> Value;
}

impl RecordJson for SandboxRecord {
    fn sandbox_json(&self, envd_version: &str, domain: Option<&str>) -> Value {
        json!({
            "templateID": self.template,
            "sandboxID": self.id.as_str(),
            "clientID": "paddock",
            "envdVersion": envd_version,
            "envdAccessToken": self.access_token,
            "trafficAccessToken": self.traffic_token,
            "domain": domain,
            "alias": self.template,
            // As the original's create and connect answers (it may carry the sandbox's IP).
            "metadata": self.metadata,
        })
    }

    fn listed_json(&self, envd_version: &str) -> Value {
        json!({
            "templateID": self.template,
            "alias": self.template,
            "sandboxID": self.id.as_str(),
            "clientID": "paddock",
            "startedAt": rfc3339(self.started_at),
            "endAt": crate::api::end_at_json(self.end_at),
            "cpuCount": self.cpu_count,
            "memoryMB": self.memory_mb,
            "diskSizeMB": self.disk_mb,
            "state": self.state.as_str(),
            "envdVersion": envd_version,
            "metadata": self.metadata,
        })
    }

    fn detail_json(&self, envd_version: &str, domain: Option<&str>) -> Value {
        let mut v = self.listed_json(envd_version);
        let o = v.as_object_mut().expect("listed_json is an object");
        o.insert("envdAccessToken".into(), json!(self.access_token));
        o.insert("domain".into(), json!(domain));
        o.insert(
            "allowInternetAccess".into(),
            json!(self.allow_internet_access),
        );
        o.insert(
            "lifecycle".into(),
            json!({
                "autoResume": self.auto_resume,
                "onTimeout": if self.on_timeout == OnTimeout::Pause { "pause" } else { "kill" },
            }),
        );
        v
    }
}

/// Where the data plane sends a sandbox's traffic. Cheap to clone (the tokens are shared).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Route {
    pub ip: std::net::IpAddr,
    pub access_token: Arc<str>,
    pub traffic_token: Option<Arc<str>>,
    pub paused: bool,
}

/// Read access to the sandboxes for the data plane: a view of the manager's record store,
/// whichever backend keeps it (its reads are synchronous and cheap by contract).
///
/// Every request reads its route here, so a route is built once per change of its record,
/// not per request: the table keeps the last route of each sandbox it served and hands out
/// clones of it while the record (borrowed from the store, [`RecordStore::read`]) still says
/// the same. A changed record (paused, resumed, new address, new token) builds a new one; a
/// record that is gone takes its route along.
#[derive(Clone)]
pub struct RouteTable {
    store: Arc<dyn RecordStore>,
    cache: Arc<RwLock<RouteCache>>,
}

#[derive(Default)]
struct RouteCache {
    routes: HashMap<SandboxId, Route>,
    /// Routes left by the last pruning (see [`ROUTE_CACHE_SLACK`]).
    kept: usize,
}

/// Routes of sandboxes whose records went away with no request for them since stay in the
/// cache until it has grown by this many entries; then every route without a record goes.
const ROUTE_CACHE_SLACK: usize = 256;

impl RouteTable {
    pub fn new(store: Arc<dyn RecordStore>) -> Self {
        Self {
            store,
            cache: Arc::default(),
        }
    }

    pub fn get(&self, id: &str) -> Option<Route> {
        let mut route = None;
        let mut prune = false;
        let found = self.store.read(id, &mut |r| {
            let (got, grown) = self.cached(r);
            route = Some(got);
            prune = grown;
        });
        if !found && self.cache_read().routes.contains_key(id) {
            self.cache_write().routes.remove(id);
        }
        // Outside the store's read: pruning reads it again, and a read lock taken twice on one
        // thread can deadlock behind a waiting writer.
        if prune {
            self.prune();
        }
        route
    }

    /// The route of `r`: the kept one while it matches the record, else a new one, kept; and
    /// whether the cache has grown enough to be pruned.
    fn cached(&self, r: &SandboxRecord) -> (Route, bool) {
        if let Some(route) = self.cache_read().routes.get(r.id.as_str())
            && route.is_of(r)
        {
            return (route.clone(), false);
        }
        let route = Route::of(r);
        let mut cache = self.cache_write();
        cache.routes.insert(r.id.clone(), route.clone());
        let grown = cache.routes.len() >= cache.kept + ROUTE_CACHE_SLACK;
        (route, grown)
    }

    /// Drops the routes of sandboxes that have no record any more.
    fn prune(&self) {
        let ids: Vec<SandboxId> = self.cache_read().routes.keys().cloned().collect();
        let gone: Vec<SandboxId> = ids
            .into_iter()
            .filter(|id| !self.store.read(id.as_str(), &mut |_| {}))
            .collect();
        let mut cache = self.cache_write();
        for id in &gone {
            cache.routes.remove(id);
        }
        cache.kept = cache.routes.len();
    }

    fn cache_read(&self) -> std::sync::RwLockReadGuard<'_, RouteCache> {
        self.cache.read().unwrap_or_else(|p| p.into_inner())
    }

    fn cache_write(&self) -> std::sync::RwLockWriteGuard<'_, RouteCache> {
        self.cache.write().unwrap_or_else(|p| p.into_inner())
    }

    /// Every sandbox's route, by id.
    pub fn all(&self) -> Vec<(String, Route)> {
        self.store
            .all()
            .iter()
            .map(|r| (r.id.to_string(), Route::of(r)))
            .collect()
    }
}

impl Route {
    fn of(r: &SandboxRecord) -> Self {
        Self {
            ip: r.address.ip(),
            access_token: r.access_token.as_str().into(),
            traffic_token: r.traffic_token.as_deref().map(Into::into),
            paused: r.state == ApiState::Paused,
        }
    }

    /// Whether this is still the route of `r` (no allocation: compared field by field).
    fn is_of(&self, r: &SandboxRecord) -> bool {
        self.ip == r.address.ip()
            && self.paused == (r.state == ApiState::Paused)
            && *self.access_token == *r.access_token
            && self.traffic_token.as_deref() == r.traffic_token.as_deref()
    }
}

/// Why the records could not be saved.
#[derive(Debug, thiserror::Error)]
#[error("could not save the sandbox records to {file}: {source}")]
pub struct SaveError {
    file: String,
    #[source]
    source: std::io::Error,
}

/// The records, written through to disk so that a restarted manager still knows the
/// sandboxes (and their tokens) the infrastructure kept running. This is the store of
/// `paddock up`; a backend may bring its own ([`paddock_infra::Infra::records`]).
///
/// On disk: a snapshot (`file`, the list of records, replaced atomically) and a journal
/// beside it (`<file stem>.journal`, one change per line, appended). A change costs one
/// append and one data sync, whatever the number of sandboxes; the snapshot is rewritten
/// only when the journal has grown past [`COMPACT_AFTER`] lines and when the store is opened.
/// Both files are owner-only: they hold every access token (audit H2).
///
/// Nothing touches the disk under the map's lock (audit L3): the data plane reads routes
/// through it. Each change is queued under that lock (so the queue's order is the changes'
/// order) and takes a version; whoever holds the writer lock next appends every queued
/// change in one write and one sync (group commit), so creates that come together share a
/// sync. A change's future resolves once it is durable. The writes run on the blocking
/// pool, never on an async worker.
#[derive(Clone, Default)]
pub struct Records {
    shared: Arc<Shared>,
}

/// Journal lines after which the next write compacts them into the snapshot.
const COMPACT_AFTER: usize = 4096;

#[derive(Default)]
struct Shared {
    inner: RwLock<HashMap<SandboxId, SandboxRecord>>,
    file: Option<PathBuf>,
    /// The version of the last change, taken under the map's lock.
    version: AtomicU64,
    /// Changes not yet written, in the order they were made (pushed under the map's lock).
    queue: Mutex<Vec<Queued>>,
    /// Serializes disk writes; holds what is on disk.
    written: Mutex<Written>,
    /// Journal lines that trigger a compaction ([`COMPACT_AFTER`]; lower in tests).
    compact_after: usize,
}

/// What is durable.
#[derive(Default)]
struct Written {
    /// The newest version on disk.
    version: u64,
    /// Lines in the journal since the snapshot.
    journal_lines: usize,
}

/// One change, ready to be appended (a journal line, newline included).
struct Queued {
    version: u64,
    line: std::io::Result<Vec<u8>>,
}

/// A journal line, as read.
#[derive(serde::Deserialize)]
#[serde(rename_all = "lowercase")]
enum Change {
    Put(Box<SandboxRecord>),
    Del(SandboxId),
}

/// A journal line, as written (the same JSON as [`Change`]).
#[derive(serde::Serialize)]
#[serde(rename_all = "lowercase")]
enum ChangeRef<'a> {
    Put(&'a SandboxRecord),
    Del(&'a SandboxId),
}

fn journal_of(file: &std::path::Path) -> PathBuf {
    file.with_extension("journal")
}

fn corrupt(file: &std::path::Path, e: impl std::fmt::Display) -> std::io::Error {
    std::io::Error::other(format!("{} is corrupt: {e}", file.display()))
}

impl Records {
    /// Records kept in `file` and its journal (loaded now if they exist). A journal left
    /// by an earlier run is folded into a new snapshot here.
    pub fn open(file: PathBuf) -> std::io::Result<Self> {
        let mut map: HashMap<SandboxId, SandboxRecord> = match std::fs::read(&file) {
            Ok(bytes) => {
                // Every access token is in there (audit H2).
                crate::secret_file::restrict(&file)?;
                let list: Vec<SandboxRecord> =
                    serde_json::from_slice(&bytes).map_err(|e| corrupt(&file, e))?;
                list.into_iter().map(|r| (r.id.clone(), r)).collect()
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => HashMap::new(),
            Err(e) => return Err(e),
        };
        let journal = journal_of(&file);
        let replayed = match std::fs::read(&journal) {
            Ok(bytes) => {
                crate::secret_file::restrict(&journal)?;
                replay(&mut map, &bytes).map_err(|e| corrupt(&journal, e))?
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => 0,
            Err(e) => return Err(e),
        };
        if replayed > 0 || journal.exists() {
            // Fold it in: the snapshot first (atomically), then the journal emptied. A crash
            // between the two replays changes the snapshot already holds, which is harmless:
            // the journal is the full history since the old snapshot, so replaying it again
            // ends in the same state.
            let list: Vec<&SandboxRecord> = map.values().collect();
            let bytes = serde_json::to_vec(&list).map_err(std::io::Error::other)?;
            crate::secret_file::write(&file, &bytes)?;
            truncate(&journal)?;
        }
        Ok(Self {
            shared: Arc::new(Shared {
                inner: RwLock::new(map),
                file: Some(file),
                compact_after: COMPACT_AFTER,
                ..Shared::default()
            }),
        })
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, HashMap<SandboxId, SandboxRecord>> {
        self.shared.inner.read().unwrap_or_else(|p| p.into_inner())
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, HashMap<SandboxId, SandboxRecord>> {
        self.shared.inner.write().unwrap_or_else(|p| p.into_inner())
    }

    /// Queues `change` for the disk and returns its version; call with the map's write lock
    /// held, so that the queue's order is the order of the changes.
    fn enqueue(&self, change: &ChangeRef<'_>) -> Option<u64> {
        self.shared.file.as_ref()?;
        let version = self.shared.version.fetch_add(1, Ordering::SeqCst) + 1;
        let line = serde_json::to_vec(change)
            .map(|mut l| {
                l.push(b'\n');
                l
            })
            .map_err(std::io::Error::other);
        lock(&self.shared.queue).push(Queued { version, line });
        Some(version)
    }

    /// Makes version `version` durable: appends every queued change (its own and any queued
    /// meanwhile) to the journal and syncs it, unless another writer already did. Compacts
    /// when the journal is long. Blocks: call it from [`Self::persist`] or a plain thread.
    fn persist_blocking(shared: &Shared, version: u64) -> Result<(), SaveError> {
        let Some(file) = &shared.file else {
            return Ok(());
        };
        let mut written = lock(&shared.written);
        if written.version >= version {
            return Ok(());
        }
        let journal = journal_of(file);
        let err = |source| SaveError {
            file: journal.display().to_string(),
            source,
        };
        let batch = std::mem::take(&mut *lock(&shared.queue));
        let mut bytes = Vec::new();
        let mut newest = written.version;
        for q in &batch {
            bytes.extend_from_slice(
                q.line
                    .as_ref()
                    .map_err(|e| err(std::io::Error::other(e.to_string())))?,
            );
            newest = newest.max(q.version);
        }
        if let Err(source) = append(&journal, &bytes) {
            // Not on disk: put the changes back (ahead of newer ones) for the next writer.
            let mut q = lock(&shared.queue);
            let newer = std::mem::replace(&mut *q, batch);
            q.extend(newer);
            return Err(err(source));
        }
        written.version = newest;
        written.journal_lines += batch.len();
        if written.journal_lines >= shared.compact_after {
            Self::compact(shared, file, &journal, &mut written).map_err(|source| SaveError {
                file: file.display().to_string(),
                source,
            })?;
        }
        Ok(())
    }

    /// Rewrites the snapshot from the map and empties the journal; called by the writer.
    fn compact(
        shared: &Shared,
        file: &std::path::Path,
        journal: &std::path::Path,
        written: &mut Written,
    ) -> std::io::Result<()> {
        let (bytes, version) = {
            // Under the map's lock no change is queued: the map, its version and the queue
            // agree. What the snapshot holds need not be appended any more.
            let map = shared.inner.read().unwrap_or_else(|p| p.into_inner());
            let version = shared.version.load(Ordering::SeqCst);
            lock(&shared.queue).retain(|q| q.version > version);
            let list: Vec<&SandboxRecord> = map.values().collect();
            (
                serde_json::to_vec(&list).map_err(std::io::Error::other),
                version,
            )
        };
        crate::secret_file::write(file, &bytes?)?;
        written.version = written.version.max(version);
        truncate(journal)?;
        written.journal_lines = 0;
        Ok(())
    }

    /// [`Self::persist_blocking`] on the blocking pool.
    async fn persist(&self, version: Option<u64>) -> InfraResult<()> {
        let Some(version) = version else {
            return Ok(());
        };
        let shared = self.shared.clone();
        tokio::task::spawn_blocking(move || Self::persist_blocking(&shared, version))
            .await
            .map_err(InfraError::internal)?
            .map_err(|e| {
                tracing::error!(error = %e, "could not save sandbox records");
                InfraError::internal(e)
            })
    }

    fn insert_now(&self, r: SandboxRecord) -> Option<u64> {
        let mut map = self.write();
        let v = self.enqueue(&ChangeRef::Put(&r));
        map.insert(r.id.clone(), r);
        v
    }

    fn update_now(&self, id: &SandboxId, f: RecordChange<'_>) -> Option<Option<u64>> {
        let mut map = self.write();
        let r = map.get_mut(id)?;
        f(r);
        Some(self.enqueue(&ChangeRef::Put(r)))
    }

    fn remove_now(&self, id: &SandboxId) -> (Option<SandboxRecord>, Option<u64>) {
        let mut map = self.write();
        let gone = map.remove(id);
        let version = gone
            .as_ref()
            .and_then(|_| self.enqueue(&ChangeRef::Del(id)));
        (gone, version)
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// Applies journal `bytes` to `map`; the number of changes. A last line without its newline
/// is a write cut short by a crash (its change never counted as saved) and is ignored; any
/// other bad line is corruption.
fn replay(map: &mut HashMap<SandboxId, SandboxRecord>, bytes: &[u8]) -> Result<usize, String> {
    let complete = bytes.iter().rposition(|b| *b == b'\n').map_or(0, |i| i + 1);
    let mut n = 0;
    for (i, line) in bytes[..complete].split(|b| *b == b'\n').enumerate() {
        if line.is_empty() {
            continue;
        }
        match serde_json::from_slice(line).map_err(|e| format!("line {}: {e}", i + 1))? {
            Change::Put(r) => {
                map.insert(r.id.clone(), *r);
            }
            Change::Del(id) => {
                map.remove(&id);
            }
        }
        n += 1;
    }
    Ok(n)
}

/// Appends `bytes` to the journal (created owner-only) and syncs its data.
fn append(journal: &std::path::Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new()
        .append(true)
        .create(true)
        .mode(0o600)
        .open(journal)?;
    f.write_all(bytes)?;
    f.sync_data()
}

/// Empties the journal, durably.
fn truncate(journal: &std::path::Path) -> std::io::Result<()> {
    match std::fs::OpenOptions::new().write(true).open(journal) {
        Ok(f) => {
            f.set_len(0)?;
            f.sync_all()
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e),
    }
}

impl RecordStore for Records {
    fn get(&self, id: &SandboxId) -> Option<SandboxRecord> {
        self.read().get(id).cloned()
    }

    fn read(&self, id: &str, f: &mut dyn FnMut(&SandboxRecord)) -> bool {
        self.read().get(id).map(f).is_some()
    }

    fn all(&self) -> Vec<SandboxRecord> {
        self.read().values().cloned().collect()
    }

    fn insert(&self, record: SandboxRecord) -> BoxFuture<'_, InfraResult<()>> {
        let snapshot = self.insert_now(record);
        Box::pin(self.persist(snapshot))
    }

    fn update<'a>(
        &'a self,
        id: &'a SandboxId,
        change: RecordChange<'a>,
    ) -> BoxFuture<'a, InfraResult<bool>> {
        let changed = self.update_now(id, change);
        Box::pin(async move {
            match changed {
                None => Ok(false),
                Some(snapshot) => self.persist(snapshot).await.map(|()| true),
            }
        })
    }

    fn remove<'a>(
        &'a self,
        id: &'a SandboxId,
    ) -> BoxFuture<'a, InfraResult<Option<SandboxRecord>>> {
        let (gone, snapshot) = self.remove_now(id);
        Box::pin(async move { self.persist(snapshot).await.map(|()| gone) })
    }
}

/// What `team`'s sandboxes count against its quota, from every record of `store`.
pub fn usage_of(store: &dyn RecordStore, team: &str) -> crate::quota::Usage {
    store
        .all()
        .iter()
        .filter(|r| r.team == team)
        .fold(crate::quota::Usage::default(), |u, r| crate::quota::Usage {
            sandboxes: u.sandboxes + 1,
            cpu: u.cpu + r.cpu_count,
            memory_mb: u.memory_mb + r.memory_mb,
        })
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;
    use std::time::Duration;

    use super::*;

    fn record(id: &str) -> SandboxRecord {
        let now = SystemTime::now();
        SandboxRecord {
            id: SandboxId::new(id).unwrap(),
            team: "blue".into(),
            template: "base".into(),
            metadata: BTreeMap::from([("k".into(), "v".into())]),
            started_at: now,
            end_at: now + Duration::from_secs(60),
            state: ApiState::Running,
            access_token: "tok".into(),
            traffic_token: None,
            address: "10.213.0.9:49983".parse().unwrap(),
            cpu_count: 1,
            memory_mb: 512,
            disk_mb: 0,
            on_timeout: OnTimeout::Pause,
            auto_resume: false,
            allow_internet_access: true,
        }
    }

    fn id(s: &str) -> SandboxId {
        SandboxId::new(s).unwrap()
    }

    /// Audit L3: the file was written (and is now synced) under the lock the data plane reads
    /// routes through. A lookup must not wait for a write in progress.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn route_lookups_do_not_wait_for_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let r = Records::open(dir.path().join("sandboxes.json")).unwrap();
        r.insert(record("aaaaaaaaaaaaaaaaaaaa")).await.unwrap();
        // Hold the file writer, as a slow disk would, while another task changes a record.
        let held = r.shared.written.lock().unwrap();
        let writer = {
            let r = r.clone();
            tokio::spawn(async move {
                r.update(
                    &id("aaaaaaaaaaaaaaaaaaaa"),
                    Box::new(|x| x.state = ApiState::Paused),
                )
                .await
            })
        };
        // The change is visible to the data plane while its write waits: the map's lock is
        // free (try_read, so a lock held across the write fails here instead of hanging).
        let routes = RouteTable::new(Arc::new(r.clone()));
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        loop {
            let paused = r
                .shared
                .inner
                .try_read()
                .ok()
                .is_some_and(|m| m[&id("aaaaaaaaaaaaaaaaaaaa")].state == ApiState::Paused);
            if paused {
                break;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "the map stayed locked"
            );
            std::thread::sleep(Duration::from_millis(5));
        }
        assert!(routes.get("aaaaaaaaaaaaaaaaaaaa").unwrap().paused);
        drop(held);
        assert!(writer.await.unwrap().unwrap());
        let again = Records::open(dir.path().join("sandboxes.json")).unwrap();
        assert_eq!(
            again.all()[0].state,
            ApiState::Paused,
            "and it reached the disk"
        );
    }

    #[tokio::test]
    async fn records_survive_a_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("sandboxes.json");
        let r = Records::open(file.clone()).unwrap();
        r.insert(record("aaaaaaaaaaaaaaaaaaaa")).await.unwrap();
        r.insert(record("bbbbbbbbbbbbbbbbbbbb")).await.unwrap();
        let changed = r
            .update(
                &id("aaaaaaaaaaaaaaaaaaaa"),
                Box::new(|x| x.state = ApiState::Paused),
            )
            .await
            .unwrap();
        assert!(changed);
        assert!(
            !r.update(&id("cccccccccccccccccccc"), Box::new(|_| {}))
                .await
                .unwrap(),
            "an unknown id is reported, not created"
        );
        let gone = r.remove(&id("bbbbbbbbbbbbbbbbbbbb")).await.unwrap();
        assert_eq!(gone.unwrap().id, id("bbbbbbbbbbbbbbbbbbbb"));
        assert!(
            r.remove(&id("bbbbbbbbbbbbbbbbbbbb"))
                .await
                .unwrap()
                .is_none()
        );
        let again = Records::open(file.clone()).unwrap();
        let all = again.all();
        assert_eq!(all.len(), 1);
        assert_eq!(all[0].state, ApiState::Paused);
        assert_eq!(all[0].access_token, "tok");
        assert_eq!(all[0].end_at, r.all()[0].end_at);
        std::fs::write(&file, b"{broken").unwrap();
        let err = Records::open(file).err().unwrap();
        assert!(err.to_string().contains("corrupt"), "{err}");
    }

    /// A write that cannot reach the disk is an error the caller sees (the API answers 5xx),
    /// not only a log line.
    #[tokio::test]
    async fn a_failed_save_is_reported() {
        let dir = tempfile::tempdir().unwrap();
        let sub = dir.path().join("data");
        std::fs::create_dir(&sub).unwrap();
        let r = Records::open(sub.join("sandboxes.json")).unwrap();
        // The records file's directory becomes a file: every save fails (root ignores modes).
        std::fs::remove_dir(&sub).unwrap();
        std::fs::write(&sub, b"").unwrap();
        let err = r.insert(record("aaaaaaaaaaaaaaaaaaaa")).await.unwrap_err();
        assert!(
            err.to_string()
                .contains("could not save the sandbox records"),
            "{err}"
        );
    }

    /// A change is one journal line; a restart folds the journal into the snapshot. A line cut
    /// short by a crash (no newline: its write never returned) is dropped, not an error.
    #[tokio::test]
    async fn changes_go_to_the_journal_and_a_torn_last_line_is_dropped() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("sandboxes.json");
        let journal = dir.path().join("sandboxes.journal");
        let r = Records::open(file.clone()).unwrap();
        r.insert(record("aaaaaaaaaaaaaaaaaaaa")).await.unwrap();
        r.insert(record("bbbbbbbbbbbbbbbbbbbb")).await.unwrap();
        r.remove(&id("aaaaaaaaaaaaaaaaaaaa")).await.unwrap();
        assert!(!file.exists(), "no snapshot rewrite per change");
        let text = std::fs::read_to_string(&journal).unwrap();
        assert_eq!(text.lines().count(), 3, "{text}");
        // A crash in the middle of a fourth append.
        let mut torn = text.into_bytes();
        torn.extend_from_slice(br#"{"put":{"id":"cccc"#);
        std::fs::write(&journal, &torn).unwrap();
        let again = Records::open(file.clone()).unwrap();
        let ids: Vec<String> = again.all().iter().map(|r| r.id.to_string()).collect();
        assert_eq!(ids, ["bbbbbbbbbbbbbbbbbbbb"]);
        assert_eq!(
            std::fs::read(&journal).unwrap(),
            b"",
            "folded into the snapshot"
        );
        assert!(file.exists());
        // A bad line that is not the last one is corruption, reported.
        std::fs::write(
            &journal,
            b"{\"put\":1}\n{\"del\":\"bbbbbbbbbbbbbbbbbbbb\"}\n",
        )
        .unwrap();
        let err = Records::open(file).err().unwrap();
        assert!(
            err.to_string().contains("sandboxes.journal is corrupt"),
            "{err}"
        );
    }

    /// Changes made together share one append (group commit), each resolves only once it is
    /// durable, and a long journal is compacted on the way without losing or reviving any.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn concurrent_changes_are_all_durable_across_compactions() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("sandboxes.json");
        let mut r = Records::open(file.clone()).unwrap();
        Arc::get_mut(&mut r.shared).unwrap().compact_after = 7;
        let ids: Vec<String> = (0..40).map(|i| format!("{i:0>20}")).collect();
        let tasks: Vec<_> = ids
            .iter()
            .map(|i| {
                let (r, i) = (r.clone(), i.clone());
                tokio::spawn(async move {
                    r.insert(record(&i)).await.unwrap();
                    r.update(&id(&i), Box::new(|x| x.state = ApiState::Paused))
                        .await
                        .unwrap();
                })
            })
            .collect();
        for t in tasks {
            t.await.unwrap();
        }
        // Every tenth one goes again.
        for i in ids.iter().step_by(10) {
            r.remove(&id(i)).await.unwrap();
        }
        let lines = std::fs::read_to_string(dir.path().join("sandboxes.journal"))
            .unwrap()
            .lines()
            .count();
        assert!(lines < 7, "the journal was compacted ({lines} lines)");
        assert!(file.exists(), "into a snapshot");
        let again = Records::open(file).unwrap();
        let mut got: Vec<String> = again.all().iter().map(|r| r.id.to_string()).collect();
        got.sort();
        let want: Vec<String> = ids
            .iter()
            .enumerate()
            .filter(|(n, _)| n % 10 != 0)
            .map(|(_, i)| i.clone())
            .collect();
        assert_eq!(got, want);
        assert!(again.all().iter().all(|r| r.state == ApiState::Paused));
    }

    /// The data plane's routes follow their records: a pause, a resume at a new address
    /// with new tokens, a kill; an unchanged record hands out the route it built before.
    #[tokio::test]
    async fn routes_follow_their_records() {
        let r = Records::default();
        let routes = RouteTable::new(Arc::new(r.clone()));
        let a = "aaaaaaaaaaaaaaaaaaaa";
        assert!(routes.get(a).is_none());
        assert!(routes.get("Not An Id").is_none());
        r.insert(record(a)).await.unwrap();
        let first = routes.get(a).unwrap();
        assert_eq!(first.ip, "10.213.0.9".parse::<std::net::IpAddr>().unwrap());
        assert_eq!((&*first.access_token, first.paused), ("tok", false));
        let again = routes.get(a).unwrap();
        assert!(
            Arc::ptr_eq(&first.access_token, &again.access_token),
            "built once"
        );
        r.update(&id(a), Box::new(|x| x.state = ApiState::Paused))
            .await
            .unwrap();
        assert!(routes.get(a).unwrap().paused);
        r.update(
            &id(a),
            Box::new(|x| {
                x.state = ApiState::Running;
                x.address = "10.213.0.10:49983".parse().unwrap();
                x.access_token = "tok2".into();
                x.traffic_token = Some("tt".into());
            }),
        )
        .await
        .unwrap();
        let moved = routes.get(a).unwrap();
        assert_eq!(
            moved,
            Route {
                ip: "10.213.0.10".parse().unwrap(),
                access_token: "tok2".into(),
                traffic_token: Some("tt".into()),
                paused: false,
            }
        );
        r.remove(&id(a)).await.unwrap();
        assert!(routes.get(a).is_none());
        assert!(routes.cache_read().routes.is_empty(), "its route went too");
    }

    /// Routes of records removed with no request since are dropped as the cache grows.
    #[tokio::test]
    async fn routes_of_records_gone_unasked_do_not_pile_up() {
        let r = Records::default();
        let routes = RouteTable::new(Arc::new(r.clone()));
        let ids: Vec<String> = (0..3 * ROUTE_CACHE_SLACK)
            .map(|i| format!("{i:0>20}"))
            .collect();
        for i in &ids {
            r.insert(record(i)).await.unwrap();
            assert!(routes.get(i).is_some());
            // Killed, never asked for again.
            r.remove(&id(i)).await.unwrap();
        }
        let kept = routes.cache_read().routes.len();
        assert!(kept <= ROUTE_CACHE_SLACK, "{kept} routes kept");
    }

    #[test]
    fn usage_counts_a_teams_records() {
        let r = Records::default();
        let _ = r.insert_now(record("aaaaaaaaaaaaaaaaaaaa"));
        let _ = r.insert_now(record("bbbbbbbbbbbbbbbbbbbb"));
        let mut other = record("cccccccccccccccccccc");
        other.team = "red".into();
        let _ = r.insert_now(other);
        let u = usage_of(&r, "blue");
        assert_eq!((u.sandboxes, u.cpu, u.memory_mb), (2, 2, 1024));
        assert_eq!(usage_of(&r, "green").sandboxes, 0);
    }
}
