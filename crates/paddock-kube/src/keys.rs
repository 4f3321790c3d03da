//! API keys in a Kubernetes Secret, shared by every manager replica.
//!
//! One Secret (`--key-secret`, default `paddock-api-keys`, in the system namespace) holds one
//! `data` entry per key id: the stored key's JSON (salted hash, team, name, quota, creation
//! time), never the key itself. The admin key is not in it at all: each replica gets it from
//! its own flag or environment.
//!
//! Writes touch one entry only, as a JSON merge patch (adding sets the entry, deleting sets it
//! to `null`): two replicas adding keys at once both keep theirs, where a read-modify-write of
//! the whole Secret would need a retry loop on conflicts. Every replica watches the Secret and
//! rebuilds its in-memory index from each version it sees, so a key created through one replica
//! authenticates through every other as soon as the watch delivers it (well under a second).

use std::collections::BTreeMap;
use std::sync::{Mutex, OnceLock};

use futures::StreamExt;
use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::Secret;
use kube::api::{ObjectMeta, Patch, PatchParams, PostParams};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Api, Client};
use paddock_infra::record::BoxFuture;
use paddock_manager::{KeyBackend, KeyError, KeyIndex, StoredKey};

/// The Secret's name unless `--key-secret` says otherwise.
pub const DEFAULT_KEY_SECRET: &str = "paddock-api-keys";

/// A call on the key Secret that failed, naming the verb (RBAC errors say which one is missing).
#[derive(Debug, thiserror::Error)]
pub enum SecretError {
    #[error(
        "RBAC forbids `{verb}` on secrets in namespace {namespace} (the API keys live in Secret {name})"
    )]
    Forbidden {
        verb: &'static str,
        namespace: String,
        name: String,
        #[source]
        source: kube::Error,
    },
    #[error("could not {verb} Secret {namespace}/{name}: {source}")]
    Api {
        verb: &'static str,
        namespace: String,
        name: String,
        #[source]
        source: kube::Error,
    },
    #[error("stored key {id:?} could not be encoded: {source}")]
    Encode {
        id: String,
        #[source]
        source: serde_json::Error,
    },
}

/// The keys in one Secret.
pub struct SecretKeys {
    api: Api<Secret>,
    namespace: String,
    name: String,
    /// The index [`KeyBackend::sync`] was given: a write's answer (the whole Secret after it)
    /// is applied at once, without waiting for the watch.
    index: OnceLock<KeyIndex>,
    /// The watch task, stopped with this backend.
    watch: Mutex<Option<tokio::task::AbortHandle>>,
}

impl SecretKeys {
    /// Keys in Secret `name` of `namespace`; nothing is read before [`KeyBackend::sync`].
    pub fn new(client: Client, namespace: &str, name: &str) -> Self {
        Self {
            api: Api::namespaced(client, namespace),
            namespace: namespace.to_string(),
            name: name.to_string(),
            index: OnceLock::new(),
            watch: Mutex::new(None),
        }
    }

    fn error(&self, verb: &'static str, source: kube::Error) -> KeyError {
        let (namespace, name) = (self.namespace.clone(), self.name.clone());
        let e = if is_status(&source, 403) {
            SecretError::Forbidden {
                verb,
                namespace,
                name,
                source,
            }
        } else {
            SecretError::Api {
                verb,
                namespace,
                name,
                source,
            }
        };
        KeyError::backend(e)
    }

    /// Creates the Secret, empty, unless it exists.
    async fn ensure(&self) -> Result<Secret, KeyError> {
        if let Some(s) = self
            .api
            .get_opt(&self.name)
            .await
            .map_err(|e| self.error("get", e))?
        {
            return Ok(s);
        }
        let secret = Secret {
            metadata: ObjectMeta {
                name: Some(self.name.clone()),
                labels: Some(BTreeMap::from([(
                    "app.kubernetes.io/managed-by".to_string(),
                    "paddock".to_string(),
                )])),
                ..ObjectMeta::default()
            },
            type_: Some("Opaque".into()),
            ..Secret::default()
        };
        match self.api.create(&PostParams::default(), &secret).await {
            Ok(s) => {
                tracing::info!(namespace = %self.namespace, name = %self.name, "created the API key Secret");
                Ok(s)
            }
            // Another replica created it first.
            Err(e) if is_status(&e, 409) => self
                .api
                .get(&self.name)
                .await
                .map_err(|e| self.error("get", e)),
            Err(e) => Err(self.error("create", e)),
        }
    }

    /// Merge-patches one `data` entry (`None` removes it); the Secret is created if it went
    /// missing. The answer is applied to the index.
    async fn patch_entry(&self, id: &str, value: Option<ByteString>) -> Result<(), KeyError> {
        let body = serde_json::json!({ "data": { id: value } });
        let params = PatchParams::default();
        let mut result = self
            .api
            .patch(&self.name, &params, &Patch::Merge(&body))
            .await;
        if matches!(&result, Err(e) if is_status(e, 404)) {
            self.ensure().await?;
            result = self
                .api
                .patch(&self.name, &params, &Patch::Merge(&body))
                .await;
        }
        let secret = result.map_err(|e| self.error("patch", e))?;
        if let Some(index) = self.index.get() {
            apply(index, &secret);
        }
        Ok(())
    }
}

impl Drop for SecretKeys {
    fn drop(&mut self) {
        if let Some(watch) = self.watch.lock().unwrap_or_else(|p| p.into_inner()).take() {
            watch.abort();
        }
    }
}

fn is_status(e: &kube::Error, code: u16) -> bool {
    matches!(e, kube::Error::Api(s) if s.code == code)
}

/// The Secret's keys. An entry that does not parse is skipped (and logged) rather than
/// taking every other key down with it.
fn keys_of(secret: &Secret) -> BTreeMap<String, StoredKey> {
    let mut keys = BTreeMap::new();
    for (id, bytes) in secret.data.iter().flatten() {
        match serde_json::from_slice::<StoredKey>(&bytes.0) {
            Ok(k) if k.id == *id => {
                keys.insert(id.clone(), k);
            }
            Ok(_) => tracing::warn!(entry = %id, "ignoring an API key stored under another id"),
            Err(e) => tracing::warn!(entry = %id, error = %e, "ignoring an unreadable API key"),
        }
    }
    keys
}

/// The Secret's version as a number, to tell an older state from a newer one. The API server
/// documents resource versions as opaque, but etcd's are increasing integers; one that does
/// not parse is simply applied.
fn version_of(secret: &Secret) -> Option<u64> {
    secret.metadata.resource_version.as_deref()?.parse().ok()
}

fn apply(index: &KeyIndex, secret: &Secret) {
    index.replace(keys_of(secret), version_of(secret));
}

impl KeyBackend for SecretKeys {
    fn put<'a>(&'a self, key: &'a StoredKey) -> BoxFuture<'a, Result<(), KeyError>> {
        Box::pin(async move {
            let json = serde_json::to_vec(key).map_err(|source| {
                KeyError::backend(SecretError::Encode {
                    id: key.id.clone(),
                    source,
                })
            })?;
            self.patch_entry(&key.id, Some(ByteString(json))).await
        })
    }

    fn remove<'a>(&'a self, id: &'a str) -> BoxFuture<'a, Result<(), KeyError>> {
        Box::pin(self.patch_entry(id, None))
    }

    fn sync(&self, index: KeyIndex) -> BoxFuture<'_, Result<(), KeyError>> {
        Box::pin(async move {
            let secret = self.ensure().await?;
            apply(&index, &secret);
            let _ = self.index.set(index.clone());
            let config = watcher::Config::default().fields(&format!("metadata.name={}", self.name));
            let stream = watcher(self.api.clone(), config).default_backoff();
            let (namespace, name) = (self.namespace.clone(), self.name.clone());
            let task = tokio::spawn(async move {
                let mut stream = std::pin::pin!(stream);
                // Whether the Secret showed up in the current (re-)list.
                let mut listed = false;
                while let Some(event) = stream.next().await {
                    match event {
                        Ok(watcher::Event::Init) => listed = false,
                        Ok(watcher::Event::InitApply(s)) => {
                            listed = true;
                            apply(&index, &s);
                        }
                        Ok(watcher::Event::InitDone) => {
                            if !listed {
                                // Deleted while the watch was down: no keys.
                                index.replace(BTreeMap::new(), None);
                            }
                        }
                        Ok(watcher::Event::Apply(s)) => apply(&index, &s),
                        Ok(watcher::Event::Delete(s)) => {
                            tracing::warn!(%namespace, %name, "the API key Secret was deleted: no team key is valid now");
                            index.replace(BTreeMap::new(), version_of(&s));
                        }
                        // The watcher retries with backoff; the index keeps the last state.
                        Err(e) => {
                            tracing::warn!(%namespace, %name, error = %e, "watching the API key Secret failed; retrying")
                        }
                    }
                }
            });
            *self.watch.lock().unwrap_or_else(|p| p.into_inner()) = Some(task.abort_handle());
            Ok(())
        })
    }
}
