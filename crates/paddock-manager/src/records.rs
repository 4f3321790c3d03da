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

/// Where the data plane sends a sandbox's traffic.
#[derive(Debug, Clone)]
pub struct Route {
    pub ip: std::net::IpAddr,
    pub access_token: String,
    pub traffic_token: Option<String>,
    pub paused: bool,
}

/// Read access to the sandboxes for the data plane: a view of the manager's record store,
/// whichever backend keeps it (its reads are synchronous and cheap by contract).
#[derive(Clone)]
pub struct RouteTable {
    store: Arc<dyn RecordStore>,
}

impl RouteTable {
    pub fn new(store: Arc<dyn RecordStore>) -> Self {
        Self { store }
    }

    pub fn get(&self, id: &str) -> Option<Route> {
        let id = SandboxId::new(id).ok()?;
        self.store.get(&id).as_ref().map(Route::of)
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
            access_token: r.access_token.clone(),
            traffic_token: r.traffic_token.clone(),
            paused: r.state == ApiState::Paused,
        }
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

/// The records, written through to a file so that a restarted manager
/// still knows the sandboxes (and their tokens) the infrastructure kept
/// running. This is the store of `paddock up`; a backend may bring its own
/// ([`paddock_infra::Infra::records`]).
///
/// The file is written outside the map's lock (audit L3): the data plane reads routes through
/// that lock, and must not wait for a disk sync. Each change takes a version under the lock;
/// the writer skips a snapshot older than the one already on disk, so the newest state
/// always wins and writers that queue up behind a slow disk coalesce. The write itself runs
/// on the blocking pool, never on an async worker.
#[derive(Clone, Default)]
pub struct Records {
    shared: Arc<Shared>,
}

#[derive(Default)]
struct Shared {
    inner: RwLock<HashMap<SandboxId, SandboxRecord>>,
    file: Option<PathBuf>,
    /// The version of the last change, taken under the map's lock.
    version: AtomicU64,
    /// Serializes file writes; holds the version on disk.
    written: Mutex<u64>,
}

/// The map as it was at one version, ready to be written.
struct Snapshot {
    version: u64,
    bytes: std::io::Result<Vec<u8>>,
}

impl Records {
    /// Records kept in `file` (loaded now if it exists).
    pub fn open(file: PathBuf) -> std::io::Result<Self> {
        let map: HashMap<SandboxId, SandboxRecord> = match std::fs::read(&file) {
            Ok(bytes) => {
                // Every access token is in there (audit H2).
                crate::secret_file::restrict(&file)?;
                let list: Vec<SandboxRecord> = serde_json::from_slice(&bytes).map_err(|e| {
                    std::io::Error::other(format!("{} is corrupt: {e}", file.display()))
                })?;
                list.into_iter().map(|r| (r.id.clone(), r)).collect()
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => HashMap::new(),
            Err(e) => return Err(e),
        };
        Ok(Self {
            shared: Arc::new(Shared {
                inner: RwLock::new(map),
                file: Some(file),
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

    /// Takes the map's state after a change; call with the map's write lock held.
    fn snapshot(&self, map: &HashMap<SandboxId, SandboxRecord>) -> Option<Snapshot> {
        self.shared.file.as_ref()?;
        let list: Vec<&SandboxRecord> = map.values().collect();
        Some(Snapshot {
            version: self.shared.version.fetch_add(1, Ordering::SeqCst) + 1,
            bytes: serde_json::to_vec(&list).map_err(std::io::Error::other),
        })
    }

    /// Writes a snapshot, owner-only (it holds every access token: audit H2), through a temp
    /// file + rename so a crash never leaves half a file; a snapshot older than the file is
    /// skipped. Returns once this state (or a newer one) is on disk. Blocks: call it from
    /// [`Self::persist`] or a plain thread.
    fn persist_blocking(shared: &Shared, snapshot: Option<Snapshot>) -> Result<(), SaveError> {
        let (Some(file), Some(snap)) = (&shared.file, snapshot) else {
            return Ok(());
        };
        let mut written = shared.written.lock().unwrap_or_else(|p| p.into_inner());
        if *written >= snap.version {
            return Ok(());
        }
        snap.bytes
            .and_then(|bytes| Ok(crate::secret_file::write(file, &bytes)?))
            .map_err(|source| SaveError {
                file: file.display().to_string(),
                source,
            })?;
        *written = snap.version;
        Ok(())
    }

    /// [`Self::persist_blocking`] on the blocking pool.
    async fn persist(&self, snapshot: Option<Snapshot>) -> InfraResult<()> {
        if snapshot.is_none() {
            return Ok(());
        }
        let shared = self.shared.clone();
        tokio::task::spawn_blocking(move || Self::persist_blocking(&shared, snapshot))
            .await
            .map_err(InfraError::internal)?
            .map_err(|e| {
                tracing::error!(error = %e, "could not save sandbox records");
                InfraError::internal(e)
            })
    }

    fn insert_now(&self, r: SandboxRecord) -> Option<Snapshot> {
        let mut map = self.write();
        map.insert(r.id.clone(), r);
        self.snapshot(&map)
    }

    fn update_now(&self, id: &SandboxId, f: RecordChange<'_>) -> Option<Option<Snapshot>> {
        let mut map = self.write();
        let r = map.get_mut(id)?;
        f(r);
        Some(self.snapshot(&map))
    }

    fn remove_now(&self, id: &SandboxId) -> (Option<SandboxRecord>, Option<Snapshot>) {
        let mut map = self.write();
        let gone = map.remove(id);
        let snapshot = gone.as_ref().and_then(|_| self.snapshot(&map));
        (gone, snapshot)
    }
}

impl RecordStore for Records {
    fn get(&self, id: &SandboxId) -> Option<SandboxRecord> {
        self.read().get(id).cloned()
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
