//! The manager's records kept in the Sandbox resources: read from the informer cache (with
//! this process's own writes laid over it), written as merge patches of what changed.
//!
//! A create already writes the whole record in its claim `Update` (see [`crate::KubeInfra`]),
//! so the manager's `insert` right after it finds nothing to change and writes nothing.

use std::time::{Duration, SystemTime};

use kube::api::{Patch, PatchParams};
use paddock_crds::keys;
use paddock_infra::record::{BoxFuture, RecordChange};
use paddock_infra::{ApiState, InfraError, InfraResult, RecordStore, SandboxId, SandboxRecord};
use serde_json::{Value, json};

use crate::call::{CallError, call};
use crate::convert::{self, ANNOTATION_METADATA, ANNOTATION_RECORD, RecordMeta};
use crate::{KubeInfra, key_of};

/// Times closer than this are the same (the manager stamps its own `now` a few milliseconds
/// after the claim wrote the record; resource times have second precision anyway).
const SAME_TIME: Duration = Duration::from_secs(2);

/// The [`RecordStore`] of the Kubernetes backend.
pub struct KubeRecords {
    infra: KubeInfra,
}

impl KubeRecords {
    pub fn new(infra: KubeInfra) -> Self {
        KubeRecords { infra }
    }

    async fn write(&self, old: Option<&SandboxRecord>, new: &SandboxRecord) -> InfraResult<bool> {
        let Some(patch) = patch(old, new) else {
            return Ok(true);
        };
        let key = key_of(&new.id)?;
        let i = &self.infra.inner;
        let api = i.sandboxes(&key.0);
        match call(api.patch(&key.1, &PatchParams::default(), &Patch::Merge(&patch))).await {
            Ok(s) => {
                i.cache.wrote(s);
                Ok(true)
            }
            Err(CallError::Status(404, _)) => Ok(false),
            Err(e) => Err(e.into()),
        }
    }
}

fn close(a: SystemTime, b: SystemTime) -> bool {
    let d = a.duration_since(b).or_else(|_| b.duration_since(a));
    d.is_ok_and(|d| d <= SAME_TIME)
}

fn meta_of(r: &SandboxRecord) -> RecordMeta {
    RecordMeta {
        team: r.team.clone(),
        template: r.template.clone(),
        started_at_ms: convert::millis(r.started_at),
        on_timeout: r.on_timeout,
        auto_resume: r.auto_resume,
        allow_internet_access: r.allow_internet_access,
        cpu_count: r.cpu_count,
        memory_mb: r.memory_mb,
        disk_mb: r.disk_mb,
    }
}

/// The merge patch that turns the Sandbox holding `old` into one holding `new`; `None` when
/// nothing the Sandbox keeps differs.
fn patch(old: Option<&SandboxRecord>, new: &SandboxRecord) -> Option<Value> {
    let mut annotations = serde_json::Map::new();
    let mut spec = serde_json::Map::new();
    let same_meta = old.is_some_and(|o| {
        let (mut a, b) = (meta_of(o), meta_of(new));
        if close(o.started_at, new.started_at) {
            a.started_at_ms = b.started_at_ms;
        }
        a == b
    });
    if !same_meta {
        annotations.insert(
            ANNOTATION_RECORD.into(),
            json!(serde_json::to_string(&meta_of(new)).ok()?),
        );
    }
    if old.is_none_or(|o| o.metadata != new.metadata) {
        annotations.insert(
            ANNOTATION_METADATA.into(),
            json!(serde_json::to_string(&new.metadata).ok()?),
        );
    }
    if old.is_none_or(|o| o.access_token != new.access_token) {
        annotations.insert(
            keys::ANNOTATION_RUNTIME_ACCESS_TOKEN.into(),
            json!(new.access_token),
        );
    }
    if old.is_none_or(|o| o.traffic_token != new.traffic_token) {
        annotations.insert(
            keys::ANNOTATION_TRAFFIC_ACCESS_TOKEN.into(),
            json!(new.traffic_token),
        );
    }
    let same_end =
        old.is_some_and(|o| o.on_timeout == new.on_timeout && close(o.end_at, new.end_at));
    if !same_end {
        let (shutdown, pause) = convert::deadline_fields(new.end_at, new.on_timeout);
        spec.insert("shutdownTime".into(), json!(shutdown));
        spec.insert("pauseTime".into(), json!(pause));
    }
    if old.is_none_or(|o| o.state != new.state) {
        spec.insert("paused".into(), json!(new.state == ApiState::Paused));
    }
    if annotations.is_empty() && spec.is_empty() {
        return None;
    }
    let mut p = serde_json::Map::new();
    if !annotations.is_empty() {
        p.insert("metadata".into(), json!({ "annotations": annotations }));
    }
    if !spec.is_empty() {
        p.insert("spec".into(), Value::Object(spec));
    }
    Some(Value::Object(p))
}

impl RecordStore for KubeRecords {
    fn get(&self, id: &SandboxId) -> Option<SandboxRecord> {
        let key = key_of(id).ok()?;
        if !self.infra.inner.in_scope(&key.0) {
            return None;
        }
        convert::record(&*self.infra.inner.cache.get(&key)?)
    }

    fn get_fresh<'a>(
        &'a self,
        id: &'a SandboxId,
    ) -> BoxFuture<'a, InfraResult<Option<SandboxRecord>>> {
        Box::pin(async move {
            let Ok(key) = key_of(id) else {
                return Ok(None);
            };
            let i = &self.infra.inner;
            if !i.in_scope(&key.0) {
                return Ok(None);
            }
            // A quorum read: this replica's cache may not have seen another's write yet.
            match i.read_now(&key).await? {
                Some(s) => Ok(convert::record(&s)),
                None => {
                    i.cache.deleted(key);
                    Ok(None)
                }
            }
        })
    }

    fn all(&self) -> Vec<SandboxRecord> {
        let i = &self.infra.inner;
        i.cache
            .sandboxes(|s| {
                convert::is_claimed(s)
                    && s.metadata
                        .namespace
                        .as_deref()
                        .is_some_and(|ns| i.in_scope(ns))
            })
            .iter()
            .filter_map(|s| convert::record(s))
            .collect()
    }

    fn insert(&self, record: SandboxRecord) -> BoxFuture<'_, InfraResult<()>> {
        Box::pin(async move {
            let old = self.get(&record.id);
            if self.write(old.as_ref(), &record).await? {
                Ok(())
            } else {
                Err(InfraError::NotFound(record.id))
            }
        })
    }

    fn update<'a>(
        &'a self,
        id: &'a SandboxId,
        change: RecordChange<'a>,
    ) -> BoxFuture<'a, InfraResult<bool>> {
        Box::pin(async move {
            let Some(old) = self.get(id) else {
                return Ok(false);
            };
            let mut new = old.clone();
            change(&mut new);
            self.write(Some(&old), &new).await
        })
    }

    fn remove<'a>(
        &'a self,
        id: &'a SandboxId,
    ) -> BoxFuture<'a, InfraResult<Option<SandboxRecord>>> {
        // The record goes with its Sandbox (`Infra::kill` deletes it); forgetting it alone
        // would leave a claimed sandbox nobody can reach, so the Sandbox is kept as it is.
        Box::pin(async move { Ok(self.get(id)) })
    }

    fn enforces_timeouts(&self) -> bool {
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use paddock_infra::OnTimeout;
    use std::time::UNIX_EPOCH;

    fn rec() -> SandboxRecord {
        SandboxRecord {
            id: SandboxId::new("ns--a").unwrap(),
            team: "t".into(),
            template: "base".into(),
            metadata: Default::default(),
            started_at: UNIX_EPOCH + Duration::from_secs(100),
            end_at: UNIX_EPOCH + Duration::from_secs(400),
            state: ApiState::Running,
            access_token: "tok".into(),
            traffic_token: None,
            address: "10.0.0.1:49983".parse().unwrap(),
            cpu_count: 2,
            memory_mb: 512,
            disk_mb: 0,
            on_timeout: OnTimeout::Kill,
            auto_resume: false,
            allow_internet_access: true,
        }
    }

    #[test]
    fn an_equal_record_writes_nothing_even_a_moment_later() {
        let a = rec();
        let mut b = rec();
        b.started_at += Duration::from_millis(30);
        b.end_at += Duration::from_millis(30);
        b.address = "10.0.0.2:49983".parse().unwrap();
        assert_eq!(patch(Some(&a), &b), None);
    }

    #[test]
    fn a_new_timeout_writes_the_deadline_field_of_its_action() {
        let a = rec();
        let mut b = rec();
        b.end_at += Duration::from_secs(60);
        let p = patch(Some(&a), &b).unwrap();
        assert_eq!(p["spec"]["shutdownTime"], json!(convert::to_time(b.end_at)));
        assert_eq!(p["spec"]["pauseTime"], Value::Null);
        assert!(p.get("metadata").is_none());
        b.on_timeout = OnTimeout::Pause;
        let p = patch(Some(&a), &b).unwrap();
        assert_eq!(p["spec"]["shutdownTime"], Value::Null);
        assert_eq!(p["spec"]["pauseTime"], json!(convert::to_time(b.end_at)));
        assert!(p["metadata"]["annotations"][ANNOTATION_RECORD].is_string());
    }

    #[test]
    fn a_state_change_writes_spec_paused() {
        let a = rec();
        let mut b = rec();
        b.state = ApiState::Paused;
        assert_eq!(
            patch(Some(&a), &b).unwrap(),
            json!({"spec": {"paused": true}})
        );
    }

    #[test]
    fn never_timing_out_clears_both_deadlines() {
        let a = rec();
        let mut b = rec();
        b.end_at = convert::never();
        let p = patch(Some(&a), &b).unwrap();
        assert_eq!(p["spec"]["shutdownTime"], Value::Null);
        assert_eq!(p["spec"]["pauseTime"], Value::Null);
    }
}
