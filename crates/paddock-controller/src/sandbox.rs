//! The Sandbox reconciler: keeps one Pod per Sandbox and mirrors it into the status.
//!
//! The finalizer `agents.kruise.io/sandbox` is held for the Sandbox's whole life so that
//! deleting a Sandbox waits until its Pod is gone (and a paused Sandbox, which has no Pod,
//! stays a plain object). The state machine itself is [`crate::desired::sandbox::plan`].

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use futures::Stream;
use k8s_openapi::api::core::v1::{
    PersistentVolumeClaim, PersistentVolumeClaimVolumeSource, Pod, PodTemplateSpec, Volume,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, Time};
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams, Preconditions};
use kube::runtime::controller::{Action, Controller};
use kube::runtime::finalizer::{Event as Finalizer, finalizer};
use kube::runtime::watcher;
use kube::{Resource, ResourceExt};
use paddock_crds::sandbox_conditions as cond;
use paddock_crds::{Sandbox, SandboxStatus, SandboxTemplate, keys};
use serde_json::json;
use tracing::Instrument;

use crate::context::{Context, Kind, ReconcileError, api_message, track};
use crate::desired::revision;
use crate::desired::sandbox::{PodView, Step, plan};

/// How often a quiet Sandbox is looked at anyway (lost events, clock-only changes).
const RESYNC: Duration = Duration::from_secs(300);

/// Reconciles the Sandboxes of the shared cache, woken by its `events` and by their Pods.
pub async fn run(ctx: Arc<Context>, events: impl Stream<Item = Arc<Sandbox>> + Send + 'static) {
    let pods = watcher::Config::default().labels(&format!(
        "{}={}",
        keys::LABEL_CREATED_BY,
        keys::CREATED_BY_SANDBOX
    ));
    let stream = Controller::for_shared_stream(events, ctx.sandbox_store())
        .owns(ctx.watch_api::<Pod>(), pods)
        .with_config(kube::runtime::controller::Config::default().concurrency(64))
        .run(
            reconcile,
            |s, e, ctx| ctx.on_error(Kind::Sandbox, s.as_ref(), e),
            ctx,
        );
    crate::drain("Sandbox", stream).await;
}

async fn reconcile(sbx: Arc<Sandbox>, ctx: Arc<Context>) -> Result<Action, ReconcileError> {
    let ns = sbx.namespace().unwrap_or_default();
    let span =
        tracing::info_span!("reconcile", kind = "Sandbox", namespace = %ns, name = %sbx.name_any());
    let api: Api<Sandbox> = ctx.api(&ns);
    let fut = async {
        finalizer(&api, keys::FINALIZER_SANDBOX, sbx.clone(), |ev| async {
            match ev {
                Finalizer::Apply(s) => apply(&s, &ctx).await,
                Finalizer::Cleanup(s) => cleanup(&s, &ctx).await,
            }
        })
        .await
        .map_err(ReconcileError::from)
    };
    track(&ctx, Kind::Sandbox, sbx.as_ref(), fut.instrument(span)).await
}

async fn apply(sbx: &Sandbox, ctx: &Context) -> Result<Action, ReconcileError> {
    let ns = sbx.namespace().unwrap_or_default();
    let name = sbx.name_any();
    let api: Api<Sandbox> = ctx.api(&ns);
    let pods: Api<Pod> = ctx.api(&ns);
    let pod = pods.get_opt(&name).await?;
    let view = pod.as_ref().map(PodView::from_pod);
    let now = Timestamp::now();
    let plan = plan(sbx, view.as_ref(), now);
    let mut status = plan.status;
    let mut failure = None;

    for step in plan.steps {
        match step {
            Step::DeleteSandbox => {
                tracing::info!("shutdownTime reached: deleting the sandbox");
                ctx.event(sbx, false, "SandboxShutdown", "shutdownTime reached".into())
                    .await;
                ignore_not_found(
                    api.delete(&name, &DeleteParams::default())
                        .await
                        .map(|_| ()),
                )?;
                return Ok(Action::await_change());
            }
            Step::Pause => {
                tracing::info!("pauseTime reached: pausing the sandbox");
                let patch = json!({"spec": {"paused": true}});
                api.patch(&name, &PatchParams::default(), &Patch::Merge(&patch))
                    .await?;
                return Ok(Action::await_change());
            }
            Step::CreatePod => match create_pod(sbx, ctx, &pods).await {
                Ok(rev) => {
                    status.update_revision = Some(rev);
                }
                Err(e) => {
                    let msg = e.to_string();
                    let now_t = Time(now);
                    paddock_crds::set_condition(
                        &mut status.conditions,
                        cond::READY,
                        false,
                        cond::REASON_POD_CREATE_FAILED,
                        &msg,
                        &now_t,
                        sbx.metadata.generation,
                    );
                    status.message = Some(msg.clone());
                    ctx.event(sbx, true, cond::REASON_POD_CREATE_FAILED, msg)
                        .await;
                    failure = Some(e.into());
                }
            },
            Step::DeletePod => {
                let dp = DeleteParams {
                    grace_period_seconds: Some(5),
                    preconditions: view.as_ref().map(|v| Preconditions {
                        uid: Some(v.uid.clone()),
                        resource_version: None,
                    }),
                    ..Default::default()
                };
                ignore_not_found(pods.delete(&name, &dp).await.map(|_| ()))?;
            }
            Step::InitRuntime => {
                let body = sbx
                    .annotations()
                    .get(keys::ANNOTATION_INIT_RUNTIME_REQUEST)
                    .cloned()
                    .unwrap_or_default();
                let ip = status.sandbox_ip.clone().unwrap_or_default();
                let now_t = Time(Timestamp::now());
                let started = std::time::Instant::now();
                let res = init_runtime(&ctx.runtime, &ip, &body).await;
                tracing::info!(ok = res.is_ok(), took = ?started.elapsed(), "runtime /init");
                match res {
                    Ok(()) => paddock_crds::set_condition(
                        &mut status.conditions,
                        cond::RUNTIME_INITIALIZED,
                        true,
                        cond::REASON_SUCCEEDED,
                        "",
                        &now_t,
                        sbx.metadata.generation,
                    ),
                    Err(e) => {
                        let msg = error_chain(&e);
                        paddock_crds::set_condition(
                            &mut status.conditions,
                            cond::RUNTIME_INITIALIZED,
                            false,
                            cond::REASON_FAILED,
                            &msg,
                            &now_t,
                            sbx.metadata.generation,
                        );
                        ctx.event(sbx, true, "InitRuntimeFailed", msg.clone()).await;
                        failure = Some(ReconcileError::Invalid(msg));
                    }
                }
            }
        }
    }

    let old = sbx.status.clone().unwrap_or_default();
    if status != old {
        patch_status(&api, &name, &old, &status).await?;
        // Events after the status write, which is what waiters watch.
        if status.phase != old.phase
            && let Some(p) = status.phase
        {
            tracing::info!(phase = p.as_str(), "phase changed");
            ctx.event(sbx, false, &format!("Sandbox{}", p.as_str()), String::new())
                .await;
        }
        let stuck = |s: &SandboxStatus| {
            paddock_crds::find_condition(&s.conditions, cond::READY)
                .is_some_and(|c| c.reason == cond::REASON_START_CONTAINER_FAILED)
        };
        if stuck(&status) && !stuck(&old) {
            let msg = status.message.clone().unwrap_or_default();
            ctx.event(sbx, true, cond::REASON_START_CONTAINER_FAILED, msg)
                .await;
        }
    }
    if let Some(e) = failure {
        return Err(e);
    }
    Ok(Action::requeue(
        plan.requeue_after.unwrap_or(RESYNC).min(RESYNC),
    ))
}

async fn cleanup(sbx: &Sandbox, ctx: &Context) -> Result<Action, ReconcileError> {
    let ns = sbx.namespace().unwrap_or_default();
    let name = sbx.name_any();
    let pods: Api<Pod> = ctx.api(&ns);
    let Some(pod) = pods.get_opt(&name).await? else {
        return Ok(Action::await_change());
    };
    let ours = pod
        .owner_references()
        .iter()
        .any(|o| Some(&o.uid) == sbx.metadata.uid.as_ref());
    if !ours {
        return Ok(Action::await_change());
    }
    if pod.metadata.deletion_timestamp.is_none() {
        tracing::info!("sandbox deleted: deleting its pod");
        let dp = DeleteParams {
            preconditions: Some(Preconditions {
                uid: pod.uid(),
                resource_version: None,
            }),
            ..Default::default()
        };
        ignore_not_found(pods.delete(&name, &dp).await.map(|_| ()))?;
    }
    Err(ReconcileError::WaitingForPod(name))
}

/// Writes `new` as the status, nulling fields that `new` dropped (a merge patch would keep
/// them otherwise).
pub(crate) async fn patch_status<K>(
    api: &Api<K>,
    name: &str,
    old: &impl serde::Serialize,
    new: &impl serde::Serialize,
) -> Result<(), kube::Error>
where
    K: Clone + serde::de::DeserializeOwned + std::fmt::Debug,
{
    let mut body = serde_json::to_value(new).unwrap_or_default();
    if let (Some(obj), serde_json::Value::Object(prev)) = (
        body.as_object_mut(),
        serde_json::to_value(old).unwrap_or_default(),
    ) {
        for k in prev.keys() {
            obj.entry(k.clone()).or_insert(serde_json::Value::Null);
        }
    }
    api.patch_status(
        name,
        &PatchParams::default(),
        &Patch::Merge(json!({ "status": body })),
    )
    .await
    .map(|_| ())
}

pub(crate) fn ignore_not_found(res: Result<(), kube::Error>) -> Result<(), kube::Error> {
    match res {
        Err(kube::Error::Api(ae)) if ae.code == 404 => Ok(()),
        other => other,
    }
}

/// Why a Sandbox's Pod cannot be created; the message is the Ready condition's.
#[derive(Debug, thiserror::Error)]
pub enum CreatePodError {
    #[error("spec.template or spec.templateRef is required")]
    NoTemplate,
    #[error("SandboxTemplate {0} has no template")]
    EmptyTemplate(String),
    #[error("SandboxTemplate {0} not found")]
    TemplateNotFound(String),
    #[error("reading SandboxTemplate {name}: {}", api_message(.source))]
    ReadTemplate {
        name: String,
        #[source]
        source: kube::Error,
    },
    #[error("the Sandbox has no UID yet")]
    NoUid,
    #[error("creating PersistentVolumeClaim {name}: {}", api_message(.source))]
    CreateClaim {
        name: String,
        #[source]
        source: kube::Error,
    },
    #[error("creating Pod: {}", api_message(.0))]
    CreatePod(#[source] kube::Error),
}

/// The pod template a Sandbox runs: inline, or from the named SandboxTemplate.
async fn resolve_template(sbx: &Sandbox, ctx: &Context) -> Result<PodTemplateSpec, CreatePodError> {
    if let Some(t) = &sbx.spec.pod.template {
        return Ok(t.clone());
    }
    let Some(r) = &sbx.spec.template_ref else {
        return Err(CreatePodError::NoTemplate);
    };
    let ns = sbx.namespace().unwrap_or_default();
    let templates: Api<SandboxTemplate> = ctx.api(&ns);
    match templates.get_opt(&r.name).await {
        Ok(Some(t)) => t
            .spec
            .pod
            .template
            .ok_or_else(|| CreatePodError::EmptyTemplate(r.name.clone())),
        Ok(None) => Err(CreatePodError::TemplateNotFound(r.name.clone())),
        Err(source) => Err(CreatePodError::ReadTemplate {
            name: r.name.clone(),
            source,
        }),
    }
}

/// Creates the Sandbox's Pod (and its PVCs); returns the template revision it was made from.
async fn create_pod(
    sbx: &Sandbox,
    ctx: &Context,
    pods: &Api<Pod>,
) -> Result<String, CreatePodError> {
    let template = resolve_template(sbx, ctx).await?;
    let rev = revision::hash(&template);
    let owner = sbx.controller_owner_ref(&()).ok_or(CreatePodError::NoUid)?;
    let name = sbx.name_any();
    let ns = sbx.namespace().unwrap_or_default();
    let mut spec = template.spec.clone().unwrap_or_default();
    let runtimes = sbx.spec.persistence.runtimes.as_deref();
    crate::desired::inject::inject_runtime(&mut spec, runtimes, &ctx.config.runtime_image);

    for vct in sbx.spec.pod.volume_claim_templates.iter().flatten() {
        let vname = vct.name_any();
        let claim = format!("{vname}-{name}");
        let pvc = PersistentVolumeClaim {
            metadata: ObjectMeta {
                name: Some(claim.clone()),
                namespace: Some(ns.clone()),
                labels: vct.metadata.labels.clone(),
                owner_references: Some(vec![owner.clone()]),
                ..Default::default()
            },
            spec: vct.spec.clone(),
            ..Default::default()
        };
        let pvcs: Api<PersistentVolumeClaim> = ctx.api(&ns);
        match pvcs.create(&PostParams::default(), &pvc).await {
            Ok(_) => {}
            Err(kube::Error::Api(ae)) if ae.code == 409 => {}
            Err(source) => {
                return Err(CreatePodError::CreateClaim {
                    name: claim,
                    source,
                });
            }
        }
        let volumes = spec.volumes.get_or_insert_with(Vec::new);
        if !volumes.iter().any(|v| v.name == vname) {
            volumes.push(Volume {
                name: vname,
                persistent_volume_claim: Some(PersistentVolumeClaimVolumeSource {
                    claim_name: claim,
                    read_only: None,
                }),
                ..Default::default()
            });
        }
    }

    let mut meta = template.metadata.clone().unwrap_or_default();
    let labels = meta.labels.get_or_insert_with(BTreeMap::new);
    labels.insert(
        keys::LABEL_CREATED_BY.into(),
        keys::CREATED_BY_SANDBOX.into(),
    );
    labels.insert(keys::LABEL_POD_TEMPLATE_HASH.into(), rev.clone());
    labels.insert(keys::LABEL_SANDBOX_NAME.into(), name.clone());
    for (k, v) in sbx.labels() {
        if k == keys::LABEL_SANDBOX_POOL || k == keys::LABEL_SANDBOX_TEMPLATE {
            labels.insert(k.clone(), v.clone());
        }
    }
    meta.annotations.get_or_insert_with(BTreeMap::new).insert(
        keys::LABEL_CREATED_BY.into(),
        keys::CREATED_BY_SANDBOX.into(),
    );
    meta.name = Some(name.clone());
    meta.namespace = Some(ns);
    meta.generate_name = None;
    meta.owner_references = Some(vec![owner]);
    let pod = Pod {
        metadata: meta,
        spec: Some(spec),
        status: None,
    };
    match pods.create(&PostParams::default(), &pod).await {
        Ok(_) => {
            tracing::info!(revision = %rev, "created pod");
            Ok(rev)
        }
        // Our own create from a reconcile the cache has not caught up with.
        Err(kube::Error::Api(ae)) if ae.code == 409 => Ok(rev),
        Err(e) => Err(CreatePodError::CreatePod(e)),
    }
}

/// Why replaying `/init` failed; the message (with its sources) becomes the condition's.
#[derive(Debug, thiserror::Error)]
enum InitRuntimeError {
    #[error("sandbox IP {0:?} is not an IP address")]
    BadIp(String),
    #[error(
        "annotation {} is not a valid /init request",
        keys::ANNOTATION_INIT_RUNTIME_REQUEST
    )]
    BadRequest(#[source] serde_json::Error),
    #[error(transparent)]
    Init(#[from] paddock_contract::client::InitError),
}

/// Replays the stored `/init` request (`body`, the init-runtime-request annotation) to the
/// runtime at `ip`.
///
/// The request's own token goes along as `X-Access-Token`: a runtime that already applied this
/// request (the Pod survived, the status write was lost) accepts it again. A 401 means the
/// runtime holds a token from an earlier init; the replay is then already done.
async fn init_runtime(
    client: &paddock_contract::client::RuntimeClient,
    ip: &str,
    body: &str,
) -> Result<(), InitRuntimeError> {
    let addr = ip
        .parse::<std::net::IpAddr>()
        .map(|ip| std::net::SocketAddr::new(ip, keys::RUNTIME_PORT))
        .map_err(|_| InitRuntimeError::BadIp(ip.to_string()))?;
    let req: paddock_contract::InitRequest = if body.trim().is_empty() {
        Default::default()
    } else {
        serde_json::from_str(body).map_err(InitRuntimeError::BadRequest)?
    };
    match client.init(addr, &req, req.access_token.as_deref()).await {
        Ok(()) | Err(paddock_contract::client::InitError::Unauthorized { .. }) => Ok(()),
        Err(e) => Err(e.into()),
    }
}

/// `e` and its sources, joined with ": ", for a condition message.
fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut out = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        out.push_str(": ");
        out.push_str(&s.to_string());
        source = s.source();
    }
    out
}
