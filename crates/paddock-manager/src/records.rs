//! What the manager remembers about each sandbox, and the views of it that
//! the API returns and the data plane routes by.

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, SystemTime};

use paddock_infra::SandboxId;
use serde_json::{Value, json};

/// What happens when a sandbox's timeout passes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum OnTimeout {
    Kill,
    Pause,
}

/// The two states the E2B API exposes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum ApiState {
    Running,
    Paused,
}

impl ApiState {
    pub fn as_str(self) -> &'static str {
        match self {
            ApiState::Running => "running",
            ApiState::Paused => "paused",
        }
    }
}

#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct SandboxRecord {
    pub id: SandboxId,
    pub team: String,
    pub template: String,
    pub metadata: BTreeMap<String, String>,
    pub started_at: SystemTime,
    pub end_at: SystemTime,
    pub state: ApiState,
    pub access_token: String,
    /// Set when the sandbox's other ports are private (`allowPublicTraffic: false`).
    #[serde(default)]
    pub traffic_token: Option<String>,
    /// The runtime's address; other ports live on the same ip.
    pub address: SocketAddr,
    pub cpu_count: u32,
    pub memory_mb: u64,
    pub disk_mb: u64,
    pub on_timeout: OnTimeout,
    pub auto_resume: bool,
    pub allow_internet_access: bool,
}

pub fn rfc3339(t: SystemTime) -> String {
    time::OffsetDateTime::from(t)
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_default()
}

impl SandboxRecord {
    /// The `Sandbox` body of create/connect responses.
    pub fn sandbox_json(&self, envd_version: &str) -> Value {
        json!({
            "templateID": self.template,
            "sandboxID": self.id.as_str(),
            "clientID": "paddock",
            "envdVersion": envd_version,
            "envdAccessToken": self.access_token,
            "trafficAccessToken": self.traffic_token,
            "domain": null,
            "alias": self.template,
            // As the original's create and connect answers (it may carry the sandbox's IP).
            "metadata": self.metadata,
        })
    }

    /// `ListedSandbox` (and, with more fields, `SandboxDetail`).
    pub fn listed_json(&self, envd_version: &str) -> Value {
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

    pub fn detail_json(&self, envd_version: &str) -> Value {
        let mut v = self.listed_json(envd_version);
        let o = v.as_object_mut().expect("listed_json is an object");
        o.insert("envdAccessToken".into(), json!(self.access_token));
        o.insert("domain".into(), Value::Null);
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

    pub fn extend_to(&mut self, timeout: Duration) {
        // A never-timeout sandbox stays one (as in the original).
        if crate::api::never_ends(self.end_at) {
            return;
        }
        let wanted = SystemTime::now() + timeout;
        if wanted > self.end_at {
            self.end_at = wanted;
        }
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

/// Read access to the sandboxes for the data plane.
#[derive(Clone)]
pub struct RouteTable {
    inner: Arc<RwLock<HashMap<SandboxId, SandboxRecord>>>,
}

impl RouteTable {
    pub fn get(&self, id: &str) -> Option<Route> {
        let id = SandboxId::new(id).ok()?;
        let map = self.inner.read().unwrap_or_else(|p| p.into_inner());
        map.get(&id).map(|r| Route {
            ip: r.address.ip(),
            access_token: r.access_token.clone(),
            traffic_token: r.traffic_token.clone(),
            paused: r.state == ApiState::Paused,
        })
    }
}

/// The records, written through to a file so that a restarted manager
/// still knows the sandboxes (and their tokens) the infrastructure kept
/// running.
///
/// The file is written outside the map's lock (audit L3): the data plane reads routes through
/// that lock, and must not wait for a disk sync. Each change takes a version under the lock;
/// the writer skips a snapshot older than the one already on disk, so the newest state
/// always wins and writers that queue up behind a slow disk coalesce.
#[derive(Default)]
pub struct Records {
    inner: Arc<RwLock<HashMap<SandboxId, SandboxRecord>>>,
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
            inner: Arc::new(RwLock::new(map)),
            file: Some(file),
            ..Self::default()
        })
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, HashMap<SandboxId, SandboxRecord>> {
        self.inner.write().unwrap_or_else(|p| p.into_inner())
    }

    /// Takes the map's state after a change; call with the map's write lock held.
    fn snapshot(&self, map: &HashMap<SandboxId, SandboxRecord>) -> Option<Snapshot> {
        self.file.as_ref()?;
        let list: Vec<&SandboxRecord> = map.values().collect();
        Some(Snapshot {
            version: self.version.fetch_add(1, Ordering::SeqCst) + 1,
            bytes: serde_json::to_vec(&list).map_err(std::io::Error::other),
        })
    }

    /// Writes a snapshot, owner-only (it holds every access token: audit H2), through a temp
    /// file + rename so a crash never leaves half a file; a snapshot older than the file is
    /// skipped. Returns once this state (or a newer one) is on disk.
    fn persist(&self, snapshot: Option<Snapshot>) {
        let (Some(file), Some(snap)) = (&self.file, snapshot) else {
            return;
        };
        let mut written = self.written.lock().unwrap_or_else(|p| p.into_inner());
        if *written >= snap.version {
            return;
        }
        let result = snap
            .bytes
            .and_then(|bytes| Ok(crate::secret_file::write(file, &bytes)?));
        match result {
            Ok(()) => *written = snap.version,
            Err(e) => {
                tracing::error!(file = %file.display(), error = %e, "could not save sandbox records")
            }
        }
    }

    pub fn route_table(&self) -> RouteTable {
        RouteTable {
            inner: self.inner.clone(),
        }
    }

    pub fn insert(&self, r: SandboxRecord) {
        let snapshot = {
            let mut map = self.write();
            map.insert(r.id.clone(), r);
            self.snapshot(&map)
        };
        self.persist(snapshot);
    }

    pub fn remove(&self, id: &SandboxId) -> Option<SandboxRecord> {
        let (gone, snapshot) = {
            let mut map = self.write();
            let gone = map.remove(id);
            let snapshot = gone.as_ref().and_then(|_| self.snapshot(&map));
            (gone, snapshot)
        };
        self.persist(snapshot);
        gone
    }

    /// The record, if `team` may see it.
    pub fn get(&self, id: &str, team: &crate::Team) -> Option<SandboxRecord> {
        let id = SandboxId::new(id).ok()?;
        let map = self.inner.read().unwrap_or_else(|p| p.into_inner());
        map.get(&id).filter(|r| team.sees(&r.team)).cloned()
    }

    /// Changes a record in place; false if it is gone.
    pub fn update(&self, id: &SandboxId, f: impl FnOnce(&mut SandboxRecord)) -> bool {
        let snapshot = {
            let mut map = self.write();
            let Some(r) = map.get_mut(id) else {
                return false;
            };
            f(r);
            self.snapshot(&map)
        };
        self.persist(snapshot);
        true
    }

    pub fn all(&self) -> Vec<SandboxRecord> {
        self.inner
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .values()
            .cloned()
            .collect()
    }

    /// What `team`'s sandboxes count against its quota.
    pub fn usage_of(&self, team: &str) -> crate::quota::Usage {
        self.inner
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .values()
            .filter(|r| r.team == team)
            .fold(crate::quota::Usage::default(), |u, r| crate::quota::Usage {
                sandboxes: u.sandboxes + 1,
                cpu: u.cpu + r.cpu_count,
                memory_mb: u.memory_mb + r.memory_mb,
            })
    }
}

#[cfg(test)]
mod tests {
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

    /// Audit L3: the file was written (and is now synced) under the lock the data plane reads
    /// routes through. A lookup must not wait for a write in progress.
    #[test]
    fn route_lookups_do_not_wait_for_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let r = Arc::new(Records::open(dir.path().join("sandboxes.json")).unwrap());
        r.insert(record("aaaaaaaaaaaaaaaaaaaa"));
        // Hold the file writer, as a slow disk would, while another thread changes a record.
        let held = r.written.lock().unwrap();
        let writer = {
            let r = r.clone();
            std::thread::spawn(move || {
                r.update(&SandboxId::new("aaaaaaaaaaaaaaaaaaaa").unwrap(), |x| {
                    x.state = ApiState::Paused
                })
            })
        };
        // The change is visible to the data plane while its write waits: the map's lock is
        // free (try_read, so a lock held across the write fails here instead of hanging).
        let id = SandboxId::new("aaaaaaaaaaaaaaaaaaaa").unwrap();
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        loop {
            let paused = r
                .inner
                .try_read()
                .ok()
                .is_some_and(|m| m[&id].state == ApiState::Paused);
            if paused {
                break;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "the map stayed locked"
            );
            std::thread::sleep(Duration::from_millis(5));
        }
        drop(held);
        assert!(writer.join().unwrap());
        let again = Records::open(dir.path().join("sandboxes.json")).unwrap();
        assert_eq!(
            again.all()[0].state,
            ApiState::Paused,
            "and it reached the disk"
        );
    }

    #[test]
    fn records_survive_a_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("sandboxes.json");
        let r = Records::open(file.clone()).unwrap();
        r.insert(record("aaaaaaaaaaaaaaaaaaaa"));
        r.insert(record("bbbbbbbbbbbbbbbbbbbb"));
        r.update(&SandboxId::new("aaaaaaaaaaaaaaaaaaaa").unwrap(), |x| {
            x.state = ApiState::Paused
        });
        r.remove(&SandboxId::new("bbbbbbbbbbbbbbbbbbbb").unwrap());
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
}
