//! What the manager remembers about each sandbox, and the views of it that
//! the API returns and the data plane routes by.

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, RwLock};
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
            "endAt": rfc3339(self.end_at),
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
#[derive(Default)]
pub struct Records {
    inner: Arc<RwLock<HashMap<SandboxId, SandboxRecord>>>,
    file: Option<PathBuf>,
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
        })
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, HashMap<SandboxId, SandboxRecord>> {
        self.inner.write().unwrap_or_else(|p| p.into_inner())
    }

    /// Writes the whole map, owner-only (it holds every access token: audit H2), through a
    /// temp file + rename so a crash never leaves half a file.
    fn persist(&self, map: &HashMap<SandboxId, SandboxRecord>) {
        let Some(file) = &self.file else { return };
        let list: Vec<&SandboxRecord> = map.values().collect();
        let result = serde_json::to_vec(&list)
            .map_err(std::io::Error::other)
            .and_then(|bytes| Ok(crate::secret_file::write(file, &bytes)?));
        if let Err(e) = result {
            tracing::error!(file = %file.display(), error = %e, "could not save sandbox records");
        }
    }

    pub fn route_table(&self) -> RouteTable {
        RouteTable {
            inner: self.inner.clone(),
        }
    }

    pub fn insert(&self, r: SandboxRecord) {
        let mut map = self.write();
        map.insert(r.id.clone(), r);
        self.persist(&map);
    }

    pub fn remove(&self, id: &SandboxId) -> Option<SandboxRecord> {
        let mut map = self.write();
        let gone = map.remove(id);
        if gone.is_some() {
            self.persist(&map);
        }
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
        let mut map = self.write();
        match map.get_mut(id) {
            Some(r) => {
                f(r);
                self.persist(&map);
                true
            }
            None => false,
        }
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
