//! API keys: the admin key and per-team keys, stored as salted hashes.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// Who a request acts for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Team {
    /// The admin key: every team's sandboxes, and key management.
    Admin,
    Named(String),
}

impl Team {
    /// The team name sandboxes are filed under.
    pub fn name(&self) -> &str {
        match self {
            Team::Admin => "admin",
            Team::Named(n) => n,
        }
    }
    pub fn sees(&self, owner: &str) -> bool {
        matches!(self, Team::Admin) || self.name() == owner
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct StoredKey {
    pub id: String,
    pub team: String,
    pub name: String,
    pub salt: String,
    pub hash: String,
    pub created_at: String,
    /// Limits on what this key's team may run at once.
    #[serde(flatten)]
    pub quota: Quota,
}

/// Per-key ceilings on a team's running and paused sandboxes; `None` is no limit.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Quota {
    #[serde(default, alias = "max_sandboxes")]
    pub max_sandboxes: Option<u32>,
    /// vCPUs summed over the team's sandboxes.
    #[serde(default)]
    pub max_cpu: Option<u32>,
    /// Memory in MiB summed over the team's sandboxes.
    #[serde(default, rename = "maxMemoryMB")]
    pub max_memory_mb: Option<u64>,
}

pub struct KeyStore {
    path: PathBuf,
    admin_hash: String,
    keys: Mutex<BTreeMap<String, StoredKey>>,
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

pub fn random_hex(n: usize) -> String {
    let mut buf = vec![0u8; n];
    let _ = getrandom::fill(&mut buf);
    hex(&buf)
}

fn hash(salt: &str, key: &str) -> String {
    hex(&Sha256::digest(format!("{salt}:{key}").as_bytes()))
}

fn same(a: &str, b: &str) -> bool {
    paddock_contract::same_secret(a.as_bytes(), b.as_bytes())
}

impl KeyStore {
    pub fn open(data_dir: &Path, admin_key: &str) -> std::io::Result<Self> {
        crate::secret_file::create_dir(data_dir)?;
        let path = data_dir.join("api-keys.json");
        let keys = match std::fs::read(&path) {
            Ok(b) => {
                // Key hashes are secrets too (audit H2).
                crate::secret_file::restrict(&path)?;
                serde_json::from_slice(&b).map_err(std::io::Error::other)?
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => BTreeMap::new(),
            Err(e) => return Err(e),
        };
        Ok(Self {
            path,
            admin_hash: hash("admin", admin_key),
            keys: Mutex::new(keys),
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<String, StoredKey>> {
        self.keys.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Writes every key, owner-only (audit H2), atomically.
    fn save(&self, keys: &BTreeMap<String, StoredKey>) -> std::io::Result<()> {
        let bytes = serde_json::to_vec_pretty(keys).map_err(std::io::Error::other)?;
        Ok(crate::secret_file::write(&self.path, &bytes)?)
    }

    /// The team a presented key belongs to.
    pub fn authenticate(&self, key: &str) -> Option<(Team, Option<StoredKey>)> {
        if same(&hash("admin", key), &self.admin_hash) {
            return Some((Team::Admin, None));
        }
        self.lock()
            .values()
            .find(|k| same(&hash(&k.salt, key), &k.hash))
            .map(|k| (Team::Named(k.team.clone()), Some(k.clone())))
    }

    /// Creates a key for `team`; the secret is returned once and never stored.
    pub fn create(
        &self,
        team: &str,
        name: &str,
        quota: Quota,
    ) -> std::io::Result<(StoredKey, String)> {
        let secret = format!("e2b_{}", random_hex(20));
        let salt = random_hex(16);
        let key = StoredKey {
            id: random_hex(8),
            team: team.to_string(),
            name: name.to_string(),
            hash: hash(&salt, &secret),
            salt,
            created_at: crate::records::rfc3339(std::time::SystemTime::now()),
            quota,
        };
        let mut keys = self.lock();
        keys.insert(key.id.clone(), key.clone());
        self.save(&keys)?;
        Ok((key, secret))
    }

    pub fn list(&self) -> Vec<StoredKey> {
        self.lock().values().cloned().collect()
    }

    pub fn delete(&self, id: &str) -> std::io::Result<bool> {
        let mut keys = self.lock();
        let found = keys.remove(id).is_some();
        if found {
            self.save(&keys)?;
        }
        Ok(found)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_stored_hashed_and_authenticate_their_team() {
        let dir = tempfile::tempdir().unwrap();
        let store = KeyStore::open(dir.path(), "e2b_admin").unwrap();
        assert_eq!(store.authenticate("e2b_admin").unwrap().0, Team::Admin);
        let (k, secret) = store
            .create(
                "blue",
                "ci",
                Quota {
                    max_sandboxes: Some(3),
                    ..Quota::default()
                },
            )
            .unwrap();
        assert!(secret.starts_with("e2b_"));
        let on_disk = std::fs::read_to_string(dir.path().join("api-keys.json")).unwrap();
        assert!(!on_disk.contains(&secret), "the secret must not be stored");
        let reopened = KeyStore::open(dir.path(), "e2b_admin").unwrap();
        assert_eq!(
            reopened.authenticate(&secret).unwrap().0,
            Team::Named("blue".into())
        );
        assert!(reopened.authenticate("e2b_wrong").is_none());
        assert!(reopened.delete(&k.id).unwrap());
        assert!(reopened.authenticate(&secret).is_none());
    }
}
