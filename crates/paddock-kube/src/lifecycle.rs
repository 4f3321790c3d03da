//! Pause, resume and kill: `spec.paused` (the controller deletes and recreates the Pod and
//! replays `/init`) and deleting the Sandbox; each pushed to the gateways before it returns.

use std::time::Instant;

use k8s_openapi::jiff::Timestamp;
use kube::api::DeleteParams;
use paddock_gateway::peer::RouteState;
use paddock_infra::{
    IllegalTransition, InfraError, InfraResult, LifecycleEvent, SandboxId, SandboxInfo,
    SandboxState,
};

use crate::Inner;
use crate::call::{CallError, call};
use crate::convert;

impl Inner {
    pub(crate) async fn pause(&self, id: &SandboxId) -> InfraResult<SandboxInfo> {
        let i = self;
        let (key, s) = i.claimed(id)?;
        if s.spec.paused.unwrap_or(false) {
            return Err(InfraError::IllegalTransition {
                id: id.clone(),
                source: IllegalTransition {
                    from: SandboxState::Paused,
                    event: LifecycleEvent::Pause,
                },
            });
        }
        let s = i
            .patch(&key, id, &serde_json::json!({"spec": {"paused": true}}))
            .await?;
        i.push(&s, RouteState::Paused).await;
        convert::info(&s).ok_or_else(|| InfraError::NotFound(id.clone()))
    }

    pub(crate) async fn resume(&self, id: &SandboxId) -> InfraResult<SandboxInfo> {
        let i = self;
        let (key, s) = i.claimed(id)?;
        if !s.spec.paused.unwrap_or(false) {
            return Err(InfraError::IllegalTransition {
                id: id.clone(),
                source: IllegalTransition {
                    from: convert::state(&s),
                    event: LifecycleEvent::Resume,
                },
            });
        }
        // A pauseTime that already passed would pause the sandbox again at once; the
        // manager writes the new deadline through the record store.
        let past_pause = s
            .spec
            .pause_time
            .as_ref()
            .is_some_and(|t| t.0 <= Timestamp::now());
        let patch = if past_pause {
            serde_json::json!({"spec": {"paused": false, "pauseTime": null}})
        } else {
            serde_json::json!({"spec": {"paused": false}})
        };
        let s = i.patch(&key, id, &patch).await?;
        // The controller recreates the Pod; a status from before the resume does not count.
        let s = i
            .wait_serving(&key, s.metadata.generation)
            .await
            .map_err(|reason| InfraError::SandboxFailed {
                id: id.clone(),
                reason: format!("resume: {reason}"),
            })?;
        // The controller replays /init from the annotation; sending it too (a replay with the
        // same token is accepted) makes the resumed sandbox usable the moment we answer.
        if let Err(reason) = i.init(&s, true).await {
            return Err(InfraError::SandboxFailed {
                id: id.clone(),
                reason: format!("/init after resume failed: {reason}"),
            });
        }
        i.push(&s, RouteState::Running).await;
        convert::info(&s).ok_or_else(|| InfraError::NotFound(id.clone()))
    }

    pub(crate) async fn kill(&self, id: &SandboxId) -> InfraResult<()> {
        let i = self;
        let (key, s) = i.claimed(id)?;
        i.killed
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(key.clone(), Instant::now());
        match call(i.sandboxes(&key.0).delete(&key.1, &DeleteParams::default())).await {
            Ok(_) => {}
            Err(CallError::Status(404, _)) => {
                i.cache.deleted(key);
                return Err(InfraError::NotFound(id.clone()));
            }
            Err(e) => return Err(e.into()),
        }
        i.cache.deleted(key);
        i.push(&s, RouteState::Dead).await;
        Ok(())
    }
}
