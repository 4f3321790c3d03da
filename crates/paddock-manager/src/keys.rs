//! API keys: the admin key and per-team keys, stored as salted hashes.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock};

use paddock_contract::random_hex;
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
    /// Snapshots the team keeps (they hold disk until deleted).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_snapshots: Option<u32>,
}

/// A boxed future, for the object-safe [`KeyBackend`].
pub type BoxFuture<'a, T> = paddock_infra::record::BoxFuture<'a, T>;

/// Why stored keys could not be read or written.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error("the API key file: {0}")]
    Io(#[from] std::io::Error),
    /// A backend's own failure (the Kubernetes API, ...).
    #[error("the API key store: {0}")]
    Backend(#[source] Box<dyn std::error::Error + Send + Sync + 'static>),
    /// No secret can be made.
    #[error(transparent)]
    Random(#[from] paddock_contract::RandomUnavailable),
}

impl KeyError {
    pub fn backend(e: impl Into<Box<dyn std::error::Error + Send + Sync + 'static>>) -> Self {
        Self::Backend(e.into())
    }
}

/// Where team keys are kept (only their salted hashes, never the secrets).
///
/// The [`KeyStore`] keeps every key in memory ([`KeyIndex`]) and authenticates from there;
/// the backend persists them and keeps the index up to date, including with changes another
/// process made (a second manager replica on the same Secret).
pub trait KeyBackend: Send + Sync + 'static {
    /// Stores one key (adds it, or replaces one with its id). Other keys are left alone, so two
    /// processes adding keys at once both keep theirs.
    fn put<'a>(&'a self, key: &'a StoredKey) -> BoxFuture<'a, Result<(), KeyError>>;
    /// Forgets one key; forgetting an unknown one is no error.
    fn remove<'a>(&'a self, id: &'a str) -> BoxFuture<'a, Result<(), KeyError>>;
    /// Fills `index` with the stored keys before returning, and from then on keeps it up to
    /// date with changes made elsewhere.
    fn sync(&self, index: KeyIndex) -> BoxFuture<'_, Result<(), KeyError>>;
}

/// The keys in memory, shared by the [`KeyStore`] and its backend's watch.
#[derive(Clone, Default)]
pub struct KeyIndex {
    inner: Arc<RwLock<IndexState>>,
}

#[derive(Default)]
struct IndexState {
    keys: BTreeMap<String, StoredKey>,
    /// The version of the stored set `keys` came from, when the backend has versions.
    version: Option<u64>,
}

impl KeyIndex {
    fn read(&self) -> std::sync::RwLockReadGuard<'_, IndexState> {
        self.inner.read().unwrap_or_else(|p| p.into_inner())
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, IndexState> {
        self.inner.write().unwrap_or_else(|p| p.into_inner())
    }

    /// Replaces every key with `keys`, the stored set at `version`. A set older than the one
    /// already held is ignored: a watch may deliver the state from just before this process's
    /// own write after that write's answer was applied, and must not undo it for a moment.
    pub fn replace(&self, keys: BTreeMap<String, StoredKey>, version: Option<u64>) {
        let mut state = self.write();
        if let (Some(new), Some(held)) = (version, state.version)
            && new < held
        {
            return;
        }
        state.keys = keys;
        state.version = version.or(state.version);
    }

    fn insert(&self, key: StoredKey) {
        self.write().keys.insert(key.id.clone(), key);
    }

    fn remove(&self, id: &str) {
        self.write().keys.remove(id);
    }

    fn contains(&self, id: &str) -> bool {
        self.read().keys.contains_key(id)
    }

    fn list(&self) -> Vec<StoredKey> {
        self.read().keys.values().cloned().collect()
    }

    fn find(&self, presented: &str) -> Option<StoredKey> {
        self.read()
            .keys
            .values()
            .find(|k| same(&hash(&k.salt, presented), &k.hash))
            .cloned()
    }
}

/// Keys in `api-keys.json` in the data dir (`paddock up`), owner-only (audit H2).
pub struct FileKeys {
    path: PathBuf,
    /// What the file holds; each write rewrites the whole file from it.
    keys: Arc<Mutex<BTreeMap<String, StoredKey>>>,
}

impl FileKeys {
    pub fn open(data_dir: &Path) -> std::io::Result<Self> {
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
            keys: Arc::new(Mutex::new(keys)),
        })
    }

    /// Applies `change` and writes every key, atomically, on the blocking pool; the change is
    /// undone when the write fails, so memory and file agree.
    async fn change(
        &self,
        change: impl FnOnce(&mut BTreeMap<String, StoredKey>) + Send + 'static,
    ) -> Result<(), KeyError> {
        let path = self.path.clone();
        let keys = self.keys.clone();
        tokio::task::spawn_blocking(move || {
            let mut keys = keys.lock().unwrap_or_else(|p| p.into_inner());
            let mut next = keys.clone();
            change(&mut next);
            let bytes = serde_json::to_vec_pretty(&next).map_err(std::io::Error::other)?;
            crate::secret_file::write(&path, &bytes)?;
            *keys = next;
            Ok::<_, std::io::Error>(())
        })
        .await
        .map_err(KeyError::backend)??;
        Ok(())
    }
}

impl KeyBackend for FileKeys {
    fn put<'a>(&'a self, key: &'a StoredKey) -> BoxFuture<'a, Result<(), KeyError>> {
        let key = key.clone();
        Box::pin(self.change(move |keys| {
            keys.insert(key.id.clone(), key);
        }))
    }

    fn remove<'a>(&'a self, id: &'a str) -> BoxFuture<'a, Result<(), KeyError>> {
        let id = id.to_string();
        Box::pin(self.change(move |keys| {
            keys.remove(&id);
        }))
    }

    fn sync(&self, index: KeyIndex) -> BoxFuture<'_, Result<(), KeyError>> {
        // Only this process writes the file: what it loaded is all there is to follow.
        let keys = self.keys.lock().unwrap_or_else(|p| p.into_inner()).clone();
        index.replace(keys, None);
        Box::pin(std::future::ready(Ok(())))
    }
}

/// Authenticates API keys: the admin key (held only here, as a hash; never handed to a
/// backend) and the team keys of a [`KeyBackend`], from memory.
pub struct KeyStore {
    admin_hash: String,
    index: KeyIndex,
    backend: Arc<dyn KeyBackend>,
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn hash(salt: &str, key: &str) -> String {
    hex(&Sha256::digest(format!("{salt}:{key}").as_bytes()))
}

fn same(a: &str, b: &str) -> bool {
    paddock_contract::same_secret(a.as_bytes(), b.as_bytes())
}

impl KeyStore {
    /// The file store in `data_dir` (`paddock up`).
    pub async fn open(data_dir: &Path, admin_key: &str) -> Result<Self, KeyError> {
        Self::with_backend(Arc::new(FileKeys::open(data_dir)?), admin_key).await
    }

    /// Keys kept by `backend`, loaded before this returns.
    pub async fn with_backend(
        backend: Arc<dyn KeyBackend>,
        admin_key: &str,
    ) -> Result<Self, KeyError> {
        let index = KeyIndex::default();
        backend.sync(index.clone()).await?;
        Ok(Self {
            admin_hash: hash("admin", admin_key),
            index,
            backend,
        })
    }

    /// The team a presented key belongs to.
    pub fn authenticate(&self, key: &str) -> Option<(Team, Option<StoredKey>)> {
        if same(&hash("admin", key), &self.admin_hash) {
            return Some((Team::Admin, None));
        }
        self.index
            .find(key)
            .map(|k| (Team::Named(k.team.clone()), Some(k)))
    }

    /// Creates a key for `team`; the secret is returned once and never stored.
    pub async fn create(
        &self,
        team: &str,
        name: &str,
        quota: Quota,
    ) -> Result<(StoredKey, String), KeyError> {
        let secret = format!("e2b_{}", random_hex(20)?);
        let salt = random_hex(16)?;
        let key = StoredKey {
            id: random_hex(8)?,
            team: team.to_string(),
            name: name.to_string(),
            hash: hash(&salt, &secret),
            salt,
            created_at: crate::records::rfc3339(std::time::SystemTime::now()),
            quota,
        };
        self.backend.put(&key).await?;
        // Usable here at once, before any watch reports it back.
        self.index.insert(key.clone());
        Ok((key, secret))
    }

    pub fn list(&self) -> Vec<StoredKey> {
        self.index.list()
    }

    pub async fn delete(&self, id: &str) -> Result<bool, KeyError> {
        if !self.index.contains(id) {
            return Ok(false);
        }
        self.backend.remove(id).await?;
        self.index.remove(id);
        Ok(true)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn keys_are_stored_hashed_and_authenticate_their_team() {
        let dir = tempfile::tempdir().unwrap();
        let store = KeyStore::open(dir.path(), "e2b_admin").await.unwrap();
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
            .await
            .unwrap();
        assert!(secret.starts_with("e2b_"));
        let on_disk = std::fs::read_to_string(dir.path().join("api-keys.json")).unwrap();
        assert!(!on_disk.contains(&secret), "the secret must not be stored");
        assert!(!on_disk.contains("e2b_admin"), "nor the admin key");
        let reopened = KeyStore::open(dir.path(), "e2b_admin").await.unwrap();
        assert_eq!(
            reopened.authenticate(&secret).unwrap().0,
            Team::Named("blue".into())
        );
        assert!(reopened.authenticate("e2b_wrong").is_none());
        assert!(reopened.delete(&k.id).await.unwrap());
        assert!(!reopened.delete(&k.id).await.unwrap(), "already gone");
        assert!(reopened.authenticate(&secret).is_none());
        let again = KeyStore::open(dir.path(), "e2b_admin").await.unwrap();
        assert!(again.list().is_empty(), "the delete reached the file");
    }

    fn stored(id: &str) -> StoredKey {
        StoredKey {
            id: id.into(),
            team: "blue".into(),
            name: "n".into(),
            salt: "s".into(),
            hash: "h".into(),
            created_at: String::new(),
            quota: Quota::default(),
        }
    }

    /// A watch that delivers the set from before this process's write must not undo it.
    #[test]
    fn an_older_stored_set_does_not_replace_a_newer_one() {
        let index = KeyIndex::default();
        index.replace(BTreeMap::from([("a".into(), stored("a"))]), Some(7));
        index.replace(BTreeMap::new(), Some(5));
        assert!(index.contains("a"));
        index.replace(BTreeMap::from([("b".into(), stored("b"))]), Some(9));
        assert!(!index.contains("a") && index.contains("b"));
        // Backends without versions always replace.
        index.replace(BTreeMap::new(), None);
        assert!(index.list().is_empty());
    }
}
