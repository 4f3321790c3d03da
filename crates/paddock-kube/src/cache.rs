//! The manager's view of the Sandboxes and SandboxSets in scope: one reflector store per
//! namespace (or one for all), plus an overlay of this process's own writes so that a write
//! that returned is visible to the next read even before the watch delivers it.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::StreamExt;
use kube::api::Api;
use kube::runtime::reflector::{self, ObjectRef, Store};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Client, ResourceExt};
use paddock_crds::{Sandbox, SandboxSet, keys};
use paddock_infra::{SandboxEnded, SandboxId};
use tokio::sync::{Notify, broadcast};

/// Namespace and name of a Sandbox.
pub type Key = (String, String);

/// What this process last wrote to a Sandbox.
#[derive(Clone)]
enum Written {
    /// The object the API server returned.
    Object(Arc<Sandbox>),
    /// Deleted (or found gone).
    Deleted,
}

pub struct Cache {
    sandboxes: Vec<Store<Sandbox>>,
    sets: Vec<Store<SandboxSet>>,
    overlay: Mutex<HashMap<Key, (Written, Instant)>>,
    /// Woken on every Sandbox event, for waits on readiness.
    pub changed: Arc<Notify>,
}

/// How long an overlay entry outlives a watch that never shows the write (a lost event is
/// replaced by the next relist well before that).
const OVERLAY_TTL: Duration = Duration::from_secs(300);

fn rv(s: &Sandbox) -> Option<u64> {
    s.metadata.resource_version.as_deref()?.parse().ok()
}

impl Cache {
    /// Starts the watches (one per namespace in `namespaces`, or one over all namespaces) and
    /// returns once every store holds its first list. `ended` gets the claimed sandboxes that
    /// vanish without this process deleting them.
    pub async fn start(
        client: Client,
        namespaces: &[String],
        ended: broadcast::Sender<SandboxEnded>,
        killed: Arc<Mutex<HashMap<Key, Instant>>>,
    ) -> Self {
        let changed = Arc::new(Notify::new());
        let scopes: Vec<Option<&String>> = if namespaces.is_empty() {
            vec![None]
        } else {
            namespaces.iter().map(Some).collect()
        };
        let mut sandboxes = Vec::new();
        let mut sets = Vec::new();
        for ns in scopes {
            let sbx_api: Api<Sandbox> = match ns {
                Some(ns) => Api::namespaced(client.clone(), ns),
                None => Api::all(client.clone()),
            };
            let set_api: Api<SandboxSet> = match ns {
                Some(ns) => Api::namespaced(client.clone(), ns),
                None => Api::all(client.clone()),
            };
            let (store, writer) = reflector::store();
            let notify = changed.clone();
            let ended = ended.clone();
            let killed = killed.clone();
            let stream = watcher(sbx_api, watcher::Config::default())
                .default_backoff()
                .reflect(writer);
            tokio::spawn(async move {
                futures::pin_mut!(stream);
                while let Some(ev) = stream.next().await {
                    match ev {
                        Ok(watcher::Event::Delete(s)) => report_end(&s, &ended, &killed),
                        Ok(_) => {}
                        Err(e) => tracing::warn!(error = %e, "Sandbox watch failed; retrying"),
                    }
                    notify.notify_waiters();
                }
            });
            sandboxes.push(store);
            let (store, writer) = reflector::store();
            let stream = watcher(set_api, watcher::Config::default())
                .default_backoff()
                .reflect(writer)
                .for_each(|ev| async move {
                    if let Err(e) = ev {
                        tracing::warn!(error = %e, "SandboxSet watch failed; retrying");
                    }
                });
            tokio::spawn(stream);
            sets.push(store);
        }
        for s in &sandboxes {
            let _ = s.wait_until_ready().await;
        }
        for s in &sets {
            let _ = s.wait_until_ready().await;
        }
        Cache {
            sandboxes,
            sets,
            overlay: Mutex::new(HashMap::new()),
            changed,
        }
    }

    fn store_get(&self, (ns, name): &Key) -> Option<Arc<Sandbox>> {
        let r = ObjectRef::new(name).within(ns);
        self.sandboxes.iter().find_map(|s| s.get(&r))
    }

    /// The newest copy of a Sandbox this process knows: the watch's or its own last write's.
    pub fn get(&self, key: &Key) -> Option<Arc<Sandbox>> {
        let cached = self.store_get(key);
        let mut overlay = self.overlay.lock().unwrap_or_else(|e| e.into_inner());
        let Some((written, at)) = overlay.get(key).cloned() else {
            return cached;
        };
        match (written, cached) {
            (Written::Deleted, None) => {
                overlay.remove(key);
                None
            }
            (Written::Deleted, Some(c)) => {
                if at.elapsed() > OVERLAY_TTL {
                    overlay.remove(key);
                    Some(c)
                } else {
                    None
                }
            }
            (Written::Object(w), None) => (at.elapsed() <= OVERLAY_TTL).then_some(w),
            (Written::Object(w), Some(c)) => {
                if rv(&c) >= rv(&w) || at.elapsed() > OVERLAY_TTL {
                    overlay.remove(key);
                    Some(c)
                } else {
                    Some(w)
                }
            }
        }
    }

    /// Every Sandbox `keep` accepts, each at its newest known copy.
    pub fn sandboxes(&self, keep: impl Fn(&Sandbox) -> bool) -> Vec<Arc<Sandbox>> {
        let mut keys: Vec<Key> = self
            .sandboxes
            .iter()
            .flat_map(|s| s.state())
            .map(|s| (s.namespace().unwrap_or_default(), s.name_any()))
            .collect();
        keys.extend(
            self.overlay
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .keys()
                .cloned(),
        );
        keys.sort();
        keys.dedup();
        keys.iter()
            .filter_map(|k| self.get(k))
            .filter(|s| keep(s))
            .collect()
    }

    /// Records what the API server answered to this process's write.
    pub fn wrote(&self, s: Sandbox) {
        let key = (s.namespace().unwrap_or_default(), s.name_any());
        self.overlay
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(key, (Written::Object(Arc::new(s)), Instant::now()));
    }

    /// Records that this process deleted a Sandbox (or found it gone).
    pub fn deleted(&self, key: Key) {
        self.overlay
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(key, (Written::Deleted, Instant::now()));
    }

    /// The SandboxSet `name`, from the first namespace in scope that has one.
    pub fn set(&self, name: &str, namespaces: &[String]) -> Option<Arc<SandboxSet>> {
        let all: Vec<Arc<SandboxSet>> = self
            .sets
            .iter()
            .flat_map(|s| s.state())
            .filter(|s| s.name_any() == name)
            .collect();
        if namespaces.is_empty() {
            // All namespaces: the oldest set of that name, so the choice is stable.
            return all.into_iter().min_by_key(|s| {
                (
                    s.metadata.creation_timestamp.clone().map(|t| t.0),
                    s.namespace(),
                )
            });
        }
        namespaces.iter().find_map(|ns| {
            all.iter()
                .find(|s| s.namespace().as_deref() == Some(ns.as_str()))
                .cloned()
        })
    }

    /// Every SandboxSet in scope.
    pub fn sets(&self) -> Vec<Arc<SandboxSet>> {
        self.sets.iter().flat_map(|s| s.state()).collect()
    }

    /// Waits until `done` holds for the Sandbox `key` (`Some(true)`), it fails for good
    /// (`Some(false)`: e.g. deleted), or `timeout` passes; re-checked on every watch event.
    pub async fn wait_for(
        &self,
        key: &Key,
        timeout: Duration,
        done: impl Fn(Option<&Sandbox>) -> Option<bool>,
    ) -> Option<bool> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let notified = self.changed.notified();
            futures::pin_mut!(notified);
            notified.as_mut().enable();
            if let Some(v) = done(self.get(key).as_deref()) {
                return Some(v);
            }
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                return None;
            }
        }
    }
}

fn report_end(
    s: &Sandbox,
    ended: &broadcast::Sender<SandboxEnded>,
    killed: &Mutex<HashMap<Key, Instant>>,
) {
    let claimed = s
        .labels()
        .get(keys::LABEL_SANDBOX_CLAIMED)
        .map(String::as_str)
        == Some("true");
    let key = (s.namespace().unwrap_or_default(), s.name_any());
    let mut killed = killed.lock().unwrap_or_else(|e| e.into_inner());
    // Forget kills long past, so the set stays small.
    killed.retain(|_, at| at.elapsed() < OVERLAY_TTL);
    if !claimed || killed.remove(&key).is_some() {
        return;
    }
    if let Ok(id) = SandboxId::for_resource(&key.0, &key.1) {
        let _ = ended.send(SandboxEnded {
            id,
            reason: "the Sandbox resource was deleted".into(),
        });
    }
}
