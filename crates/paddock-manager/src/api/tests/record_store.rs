//! A backend that keeps the records itself ([`paddock_infra::Infra::records`]): the manager
//! writes there (not to its data dir), fails loudly when a write fails, and leaves timeouts to
//! a backend that enforces them.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use http::StatusCode;
use paddock_infra::record::{BoxFuture, RecordChange};
use paddock_infra::{ApiState, InfraError, InfraResult, OnTimeout, RecordStore, SandboxId};
use serde_json::json;

use super::{ADMIN, Harness, Options};
use crate::records::SandboxRecord;

/// An in-memory store that counts its writes and can be made to fail them.
#[derive(Default)]
struct FakeStore {
    map: Mutex<HashMap<SandboxId, SandboxRecord>>,
    writes: AtomicUsize,
    failing: AtomicBool,
    enforces: bool,
}

impl FakeStore {
    fn new(enforces: bool) -> Arc<Self> {
        Arc::new(Self {
            enforces,
            ..Self::default()
        })
    }

    fn write(&self) -> InfraResult<std::sync::MutexGuard<'_, HashMap<SandboxId, SandboxRecord>>> {
        if self.failing.load(Ordering::SeqCst) {
            return Err(InfraError::internal("the store is down"));
        }
        self.writes.fetch_add(1, Ordering::SeqCst);
        Ok(self.map.lock().unwrap())
    }

    fn record(&self, id: &str) -> Option<SandboxRecord> {
        self.map
            .lock()
            .unwrap()
            .get(&SandboxId::new(id).unwrap())
            .cloned()
    }
}

impl RecordStore for FakeStore {
    fn get(&self, id: &SandboxId) -> Option<SandboxRecord> {
        self.map.lock().unwrap().get(id).cloned()
    }

    fn all(&self) -> Vec<SandboxRecord> {
        self.map.lock().unwrap().values().cloned().collect()
    }

    fn insert(&self, record: SandboxRecord) -> BoxFuture<'_, InfraResult<()>> {
        let result = self.write().map(|mut m| {
            m.insert(record.id.clone(), record);
        });
        Box::pin(std::future::ready(result))
    }

    fn update<'a>(
        &'a self,
        id: &'a SandboxId,
        change: RecordChange<'a>,
    ) -> BoxFuture<'a, InfraResult<bool>> {
        let result = self.write().map(|mut m| match m.get_mut(id) {
            Some(r) => {
                change(r);
                true
            }
            None => false,
        });
        Box::pin(std::future::ready(result))
    }

    fn remove<'a>(
        &'a self,
        id: &'a SandboxId,
    ) -> BoxFuture<'a, InfraResult<Option<SandboxRecord>>> {
        let result = self.write().map(|mut m| m.remove(id));
        Box::pin(std::future::ready(result))
    }

    fn enforces_timeouts(&self) -> bool {
        self.enforces
    }
}

async fn harness(store: &Arc<FakeStore>) -> Harness {
    Harness::with(Options {
        records: Some(store.clone() as Arc<dyn RecordStore>),
        ..Options::default()
    })
    .await
}

#[tokio::test]
async fn the_lease_goes_to_the_infra_and_every_write_to_its_store() {
    let store = FakeStore::new(false);
    let h = harness(&store).await;
    let key = h.team_key("blue", json!({})).await;
    let a = h
        .post(
            "/v2/sandboxes",
            &key,
            json!({"timeout": 120, "autoPause": true, "envVars": {"A": "1"},
                   "network": {"allowPublicTraffic": false}}),
        )
        .await;
    assert_eq!(a.status, StatusCode::CREATED, "{}", a.text);
    let id = a.body["sandboxID"].as_str().unwrap().to_string();

    // The lease was settled before the infra's create and matches what the caller got.
    let leases = h.infra.leases();
    let lease = leases
        .last()
        .unwrap()
        .clone()
        .expect("create passes a lease");
    assert_eq!(lease.team, "blue");
    assert_eq!(
        lease.access_token,
        a.body["envdAccessToken"].as_str().unwrap()
    );
    assert_eq!(
        lease.traffic_token.as_deref(),
        a.body["trafficAccessToken"].as_str()
    );
    assert_eq!(lease.env_vars["A"], "1");
    assert_eq!(lease.timeout, Some(Duration::from_secs(120)));
    assert_eq!(lease.on_timeout, OnTimeout::Pause);
    // The runtime got the same token through /init.
    let init = h.init.bodies().pop().unwrap();
    assert_eq!(
        init["accessToken"].as_str(),
        Some(lease.access_token.as_str())
    );

    // The record is in the backend's store, and nothing in the data dir.
    let r = store.record(&id).expect("recorded in the backend's store");
    assert_eq!(r.team, "blue");
    assert_eq!(r.access_token, lease.access_token);
    assert!(!h.dir.path().join("sandboxes.json").exists());

    let path = |p: &str| format!("/sandboxes/{id}{p}");
    assert_eq!(
        h.post(&path("/pause"), &key, json!({})).await.status,
        StatusCode::NO_CONTENT
    );
    assert_eq!(store.record(&id).unwrap().state, ApiState::Paused);
    let before = store.writes.load(Ordering::SeqCst);
    assert_eq!(
        h.post(&path("/timeout"), &key, json!({"timeout": 600}))
            .await
            .status,
        StatusCode::NO_CONTENT
    );
    assert_eq!(store.writes.load(Ordering::SeqCst), before + 1);
    assert_eq!(
        h.post(&path("/connect"), &key, json!({})).await.status,
        StatusCode::CREATED
    );
    assert_eq!(store.record(&id).unwrap().state, ApiState::Running);
    // Quota usage comes from the store too.
    let u = crate::records::usage_of(&*store, "blue");
    assert_eq!(u.sandboxes, 1);

    assert_eq!(
        h.delete(&path(""), &key).await.status,
        StatusCode::NO_CONTENT
    );
    assert!(store.record(&id).is_none());
}

#[tokio::test]
async fn a_failed_store_write_is_a_5xx_and_leaves_no_sandbox() {
    let store = FakeStore::new(false);
    let h = harness(&store).await;
    let id = h.create(ADMIN, json!({})).await;

    store.failing.store(true, Ordering::SeqCst);
    let a = h.post("/v2/sandboxes", ADMIN, json!({})).await;
    a.error(StatusCode::INTERNAL_SERVER_ERROR);
    assert_eq!(
        h.infra.alive(),
        vec![id.clone()],
        "the sandbox whose record was not saved was killed"
    );
    for p in ["/pause", "/timeout"] {
        h.post(
            &format!("/sandboxes/{id}{p}"),
            ADMIN,
            json!({"timeout": 30}),
        )
        .await
        .error(StatusCode::INTERNAL_SERVER_ERROR);
    }
    h.delete(&format!("/sandboxes/{id}"), ADMIN)
        .await
        .error(StatusCode::INTERNAL_SERVER_ERROR);
    assert!(store.record(&id).is_some(), "nothing was forgotten");
}

/// With a store that enforces timeouts, the manager's reaper does not run. Proven against a
/// second manager whose store does not: once that one has reaped a sandbox created after ours
/// with the same timeout, and then one more created after that (so more than a reaper tick has
/// passed since ours ended, whatever the two reapers' phases), ours would have been reaped too.
#[tokio::test]
async fn no_reaper_runs_when_the_store_enforces_timeouts() {
    let enforcing = FakeStore::new(true);
    let h = harness(&enforcing).await;
    let control_store = FakeStore::new(false);
    let control = harness(&control_store).await;

    let ours = h.create(ADMIN, json!({"timeout": 1})).await;
    let theirs = control.create(ADMIN, json!({"timeout": 1})).await;
    let deadline = Instant::now() + Duration::from_secs(30);
    while control.infra.alive().contains(&theirs) {
        assert!(Instant::now() < deadline, "the control was never reaped");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(control_store.record(&theirs).is_none());
    let later = control.create(ADMIN, json!({"timeout": 1})).await;
    while control.infra.alive().contains(&later) {
        assert!(
            Instant::now() < deadline,
            "the second control was never reaped"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(
        h.infra.alive().contains(&ours),
        "the enforcing store's sandbox stays"
    );
    assert!(enforcing.record(&ours).is_some());
    // Nor does reconcile kill a sandbox the store (a stale view, for all it knows) lacks.
    enforcing.map.lock().unwrap().clear();
    h.manager.reconcile().await.unwrap();
    assert!(h.infra.alive().contains(&ours));
    // Whereas the file-store manager would: the control has one without a record.
    control_store.map.lock().unwrap().clear();
    let orphan = control.create(ADMIN, json!({})).await;
    control_store.map.lock().unwrap().clear();
    control.manager.reconcile().await.unwrap();
    assert!(!control.infra.alive().contains(&orphan));
}
