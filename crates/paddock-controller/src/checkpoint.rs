//! The Checkpoint reconciler: drives [`crate::desired::checkpoint::next`] and holds the
//! `agents.kruise.io/checkpoint` finalizer (nothing to release yet for podInfo checkpoints, but
//! manifests and the manager expect it).

use std::sync::Arc;

use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::jiff::Timestamp;
use kube::ResourceExt;
use kube::api::{Api, DeleteParams, Patch, PatchParams};
use kube::runtime::controller::{Action, Controller};
use kube::runtime::finalizer::{Event as Finalizer, finalizer};
use kube::runtime::watcher;
use paddock_crds::{Checkpoint, CheckpointPhase, Sandbox, keys};
use serde_json::json;
use tracing::Instrument;

use crate::context::{Context, Kind, ReconcileError, track};
use crate::desired::checkpoint::{Next, Target, next};
use crate::sandbox::{ignore_not_found, patch_status};

pub async fn run(ctx: Arc<Context>) {
    let stream = Controller::new(ctx.watch_api::<Checkpoint>(), watcher::Config::default()).run(
        reconcile,
        |c, e, ctx| ctx.on_error(Kind::Checkpoint, c.as_ref(), e),
        ctx,
    );
    crate::drain("Checkpoint", stream).await;
}

async fn reconcile(cp: Arc<Checkpoint>, ctx: Arc<Context>) -> Result<Action, ReconcileError> {
    let ns = cp.namespace().unwrap_or_default();
    let span = tracing::info_span!("reconcile", kind = "Checkpoint", namespace = %ns, name = %cp.name_any());
    let api: Api<Checkpoint> = ctx.api(&ns);
    let fut = async {
        finalizer(&api, keys::FINALIZER_CHECKPOINT, cp.clone(), |ev| async {
            match ev {
                Finalizer::Apply(c) => apply(&c, &ctx).await,
                Finalizer::Cleanup(_) => Ok(Action::await_change()),
            }
        })
        .await
        .map_err(ReconcileError::from)
    };
    track(&ctx, Kind::Checkpoint, cp.as_ref(), fut.instrument(span)).await
}

async fn target(cp: &Checkpoint, ctx: &Context) -> Result<Target, ReconcileError> {
    let ns = cp.namespace().unwrap_or_default();
    if let Some(name) = &cp.spec.sandbox_name {
        // The shared cache answers "present"; "missing" fails the checkpoint for good, so a
        // miss (perhaps a sandbox the cache has not seen yet) is asked of the API server.
        ctx.sandboxes().await?;
        if ctx.cached_sandbox(&ns, name).is_some() {
            return Ok(Target::Present);
        }
        let sandboxes: Api<Sandbox> = ctx.api(&ns);
        return Ok(match sandboxes.get_opt(name).await? {
            Some(_) => Target::Present,
            None => Target::Missing,
        });
    }
    if let Some(name) = &cp.spec.pod_name {
        let pods: Api<Pod> = ctx.api(&ns);
        return Ok(match pods.get_opt(name).await? {
            Some(_) => Target::Present,
            None => Target::Missing,
        });
    }
    Ok(Target::Unnamed)
}

async fn apply(cp: &Checkpoint, ctx: &Context) -> Result<Action, ReconcileError> {
    let ns = cp.namespace().unwrap_or_default();
    let name = cp.name_any();
    let api: Api<Checkpoint> = ctx.api(&ns);
    let pending = cp.status.as_ref().and_then(|s| s.phase) == Some(CheckpointPhase::Pending);
    let tgt = if pending {
        target(cp, ctx).await?
    } else {
        Target::Present
    };
    match next(cp, tgt, Timestamp::now()) {
        Next::Status(st) => {
            let old = cp.status.clone().unwrap_or_default();
            match st.phase {
                Some(CheckpointPhase::Failed) => {
                    let msg = st.message.clone().unwrap_or_default();
                    ctx.event(cp, true, "CheckpointFailed", msg).await;
                }
                Some(CheckpointPhase::Succeeded) => {
                    let id = st.checkpoint_id.clone().unwrap_or_default();
                    let patch = json!({"metadata": {"labels": {
                        keys::LABEL_CHECKPOINT_ID: id,
                        keys::LABEL_CHECKPOINT_TYPE: "podInfo",
                    }}});
                    api.patch(&name, &PatchParams::default(), &Patch::Merge(&patch))
                        .await?;
                    ctx.event(cp, false, "CheckpointSucceeded", id).await;
                }
                _ => {}
            }
            patch_status(&api, &name, &old, &st).await?;
            Ok(Action::await_change())
        }
        Next::Delete => {
            ignore_not_found(
                api.delete(&name, &DeleteParams::default())
                    .await
                    .map(|_| ()),
            )?;
            Ok(Action::await_change())
        }
        Next::Wait(Some(d)) => Ok(Action::requeue(d)),
        Next::Wait(None) => Ok(Action::await_change()),
    }
}
