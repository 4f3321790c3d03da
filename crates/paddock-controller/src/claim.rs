//! The SandboxClaim reconciler: takes `replicas` available sandboxes out of the SandboxSet named
//! `templateName` and hands them to the claim.
//!
//! A claim is one `PUT` of the pool sandbox with its resourceVersion: it removes the SandboxSet
//! owner reference (so the pool refills), sets the lock and owner annotations and the claim's
//! metadata. A conflicting writer (another claim, the manager, a scale-down) makes the `PUT`
//! fail and the claim moves to the next candidate. The runtime's `/init` is then done by the
//! Sandbox reconciler from the stored request, which also replays it after every resume.

use std::sync::Arc;
use std::time::Duration;

use futures::Stream;
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::Timestamp;
use kube::ResourceExt;
use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams};
use kube::runtime::controller::{Action, Controller};
use kube::runtime::reflector::ObjectRef;
use kube::runtime::watcher;
use paddock_crds::{ClaimPhase, Sandbox, SandboxClaim, SandboxSet, keys, set_condition};
use serde_json::json;
use tracing::Instrument;

use crate::context::{Context, Kind, ReconcileError, api_message, track};
use crate::desired::claim::{self as plan, AfterCompletion, Candidate, Held, Round};
use crate::desired::duration;
use crate::desired::sandbox::is_gone;
use crate::expectations::Expect;
use crate::sandbox::{ignore_not_found, patch_status};
use crate::sandboxset::SourceError;

/// Most sandboxes claimed in one round (the original's batch limit).
const MAX_BATCH: usize = 50;
/// Retry delay while the pool has nothing to give.
const NO_STOCK_RETRY: Duration = Duration::from_secs(2);

/// How soon a round that found the cache behind its own claims looks again.
const WAIT_FOR_CACHE: Duration = Duration::from_millis(100);

/// Reconciles SandboxClaims, also woken by the shared cache's Sandbox `events`.
pub async fn run(ctx: Arc<Context>, events: impl Stream<Item = Arc<Sandbox>> + Send + 'static) {
    let stream = Controller::new(ctx.watch_api::<SandboxClaim>(), watcher::Config::default())
        .watches_shared_stream(events, |s: Arc<Sandbox>| {
            let ns = s.namespace()?;
            let claim = s.labels().get(keys::LABEL_CLAIM_NAME)?;
            Some(ObjectRef::<SandboxClaim>::new(claim).within(&ns))
        })
        .with_config(kube::runtime::controller::Config::default().concurrency(64))
        .run(
            reconcile,
            |c, e, ctx| ctx.on_error(Kind::SandboxClaim, c.as_ref(), e),
            ctx,
        );
    crate::drain("SandboxClaim", stream).await;
}

async fn reconcile(claim: Arc<SandboxClaim>, ctx: Arc<Context>) -> Result<Action, ReconcileError> {
    let span = tracing::info_span!(
        "reconcile",
        kind = "SandboxClaim",
        namespace = %claim.namespace().unwrap_or_default(),
        name = %claim.name_any()
    );
    if claim.metadata.deletion_timestamp.is_some() {
        return Ok(Action::await_change());
    }
    track(
        &ctx,
        Kind::SandboxClaim,
        claim.as_ref(),
        apply(&claim, &ctx).instrument(span),
    )
    .await
}

/// The owner key of a claim's writes in [`crate::expectations`].
fn writes_key(ns: &str, name: &str) -> String {
    format!("claim/{ns}/{name}")
}

fn millis(field: &str, value: Option<&String>, default: &str) -> Result<i64, ReconcileError> {
    duration::parse(value.map_or(default, |s| s.as_str()))
        .map_err(|e| ReconcileError::Invalid(format!("spec.{field}: {e}")))
}

async fn apply(claim: &SandboxClaim, ctx: &Context) -> Result<Action, ReconcileError> {
    let ns = claim.namespace().unwrap_or_default();
    let name = claim.name_any();
    let uid = claim.metadata.uid.clone().unwrap_or_default();
    let claims: Api<SandboxClaim> = ctx.api(&ns);
    let sandboxes: Api<Sandbox> = ctx.api(&ns);
    let spec = &claim.spec;
    let old = claim.status.clone().unwrap_or_default();
    let mut status = old.clone();
    let now = Timestamp::now();
    let now_t = Time(now);
    let gen_ = claim.metadata.generation;
    status.observed_generation = gen_;

    if old.phase == Some(ClaimPhase::Completed) {
        let ttl = millis(
            "ttlAfterCompleted",
            spec.ttl_after_completed.as_ref(),
            "60m",
        )?;
        return match plan::after_completion(old.completion_time.as_ref(), ttl, now) {
            AfterCompletion::Keep => Ok(Action::await_change()),
            AfterCompletion::Wait(left) => Ok(Action::requeue(left)),
            AfterCompletion::Delete => {
                tracing::info!("ttlAfterCompleted passed: deleting the claim");
                ignore_not_found(
                    claims
                        .delete(&name, &DeleteParams::default())
                        .await
                        .map(|_| ()),
                )?;
                Ok(Action::await_change())
            }
        };
    }

    let claim_timeout = millis("claimTimeout", spec.claim_timeout.as_ref(), "1m")?;
    let wait_ready = millis("waitReadyTimeout", spec.wait_ready_timeout.as_ref(), "30s")?;
    let replicas = spec.replicas.unwrap_or(1).max(1) as usize;
    let skip_init = spec.skip_init_runtime.unwrap_or(false);
    let start = status
        .claim_start_time
        .get_or_insert_with(|| now_t.clone())
        .0;
    status.phase = Some(ClaimPhase::Claiming);

    // What this claim already holds (crash-safe: recounted from the sandboxes every time), from
    // the shared cache once it shows this claim's own last claims (else it would claim again).
    ctx.sandboxes().await?;
    if !ctx.writes_seen(&ns, &writes_key(&ns, &name)) {
        return Ok(Action::requeue(WAIT_FOR_CACHE));
    }
    let mine = ctx
        .cached_sandboxes(&ns, |s| {
            s.labels().get(keys::LABEL_CLAIM_NAME) == Some(&name)
        })
        .await?;
    let mut held = Vec::new();
    for s in mine {
        if s.annotations().get(keys::ANNOTATION_OWNER) != Some(&uid) || is_gone(&s, now) {
            continue;
        }
        match plan::held(&s, skip_init, wait_ready, now) {
            Held::GiveUp => give_up(claim, ctx, &sandboxes, &s).await?,
            h => held.push((s, h == Held::Usable)),
        }
    }
    let usable = held.iter().filter(|(_, u)| *u).count();
    status.claimed_replicas = held.len() as i32;

    let mut requeue = None;
    // Published after the status write: the claimant waits on the status, not the event.
    let mut done_event = None;
    let round = plan::round(
        replicas,
        held.len(),
        usable,
        start,
        claim_timeout,
        MAX_BATCH,
        now,
    );
    match round {
        Round::Complete => {
            let age = claim
                .metadata
                .creation_timestamp
                .as_ref()
                .map_or(0, |t| now.as_millisecond() - t.0.as_millisecond());
            tracing::info!(
                sandboxes = usable,
                since_created_ms = age,
                "claim completed"
            );
            let msg = format!("claimed {usable} sandbox(es)");
            plan::complete(&mut status, &now_t, gen_, false, msg.clone());
            done_event = Some((false, "ClaimCompleted", msg));
        }
        Round::TimedOut => {
            let msg = format!("claimTimeout reached with {usable} of {replicas} sandbox(es) ready");
            plan::complete(&mut status, &now_t, gen_, true, msg.clone());
            done_event = Some((true, plan::TIMED_OUT, msg));
        }
        Round::Claim { need, deadline } => {
            if need > 0 {
                match take(claim, ctx, need, now).await {
                    Ok(got) => {
                        status.claimed_replicas += got as i32;
                        if got < need {
                            let msg = format!(
                                "{} of {} sandbox(es) claimed; waiting for the pool",
                                held.len() + got,
                                replicas
                            );
                            if old.message.as_deref() != Some(msg.as_str()) {
                                ctx.event(claim, true, "NoAvailableSandboxes", msg.clone())
                                    .await;
                            }
                            status.message = Some(msg);
                            requeue = Some(NO_STOCK_RETRY);
                        } else {
                            status.message =
                                Some("waiting for claimed sandboxes to be ready".into());
                        }
                    }
                    Err(e) => {
                        let msg = e.to_string();
                        if old.message.as_deref() != Some(msg.as_str()) {
                            ctx.event(claim, true, "ClaimFailed", msg.clone()).await;
                        }
                        set_condition(
                            &mut status.conditions,
                            plan::COMPLETED,
                            false,
                            "ClaimFailed",
                            &msg,
                            &now_t,
                            gen_,
                        );
                        status.message = Some(msg);
                        requeue = Some(NO_STOCK_RETRY);
                    }
                }
            } else {
                status.message = Some("waiting for claimed sandboxes to be ready".into());
            }
            requeue = Some(requeue.map_or(deadline, |r| r.min(deadline)));
        }
    }
    if status != old {
        patch_status(&claims, &name, &old, &status).await?;
    }
    if let Some((warning, reason, msg)) = done_event {
        ctx.event(claim, warning, reason, msg).await;
    }
    Ok(match requeue {
        Some(d) => Action::requeue(d),
        // Completed: come back for the TTL.
        None => Action::requeue(Duration::from_millis(1)),
    })
}

/// A claimed sandbox that never became ready: deleted, or kept (and released) for debugging.
async fn give_up(
    claim: &SandboxClaim,
    ctx: &Context,
    api: &Api<Sandbox>,
    s: &Sandbox,
) -> Result<(), ReconcileError> {
    let name = s.name_any();
    let owner_key = writes_key(&s.namespace().unwrap_or_default(), &claim.name_any());
    ctx.event(
        claim,
        true,
        "SandboxNotReady",
        format!("sandbox {name} was not ready within waitReadyTimeout"),
    )
    .await;
    if claim.spec.reserve_failed_sandbox.unwrap_or(false) {
        let patch = json!({"metadata": {
            "labels": {"agents.kruise.io/reserved-failed-sandbox": "true"},
            "annotations": {keys::ANNOTATION_OWNER: null},
        }});
        api.patch(&name, &PatchParams::default(), &Patch::Merge(&patch))
            .await?;
    } else {
        ignore_not_found(
            api.delete(&name, &DeleteParams::default())
                .await
                .map(|_| ()),
        )?;
    }
    // Not again from a cache that still shows it held and not ready.
    if let Some(from) = s.resource_version() {
        ctx.expect_write(&owner_key, &name, Expect::Changed { from });
    }
    Ok(())
}

/// Why claiming sandboxes failed; the message is the claim's condition and event message.
#[derive(Debug, thiserror::Error)]
enum TakeError {
    #[error("SandboxSet {name} not found in namespace {namespace}")]
    SetNotFound { name: String, namespace: String },
    #[error("reading SandboxSet {name}: {}", api_message(.source))]
    ReadSet {
        name: String,
        #[source]
        source: kube::Error,
    },
    #[error("reading the pool: {0}")]
    Pool(#[source] ReconcileError),
    #[error("claiming {sandbox}: {}", api_message(.source))]
    Claim {
        sandbox: String,
        #[source]
        source: kube::Error,
    },
    #[error(transparent)]
    Source(#[from] SourceError),
    #[error("creating a sandbox (createOnNoStock): {}", api_message(.0))]
    CreateOnNoStock(#[source] kube::Error),
}

/// Claims up to `need` sandboxes; returns how many it got.
async fn take(
    claim: &SandboxClaim,
    ctx: &Context,
    need: usize,
    now: Timestamp,
) -> Result<usize, TakeError> {
    let ns = claim.namespace().unwrap_or_default();
    let set_name = &claim.spec.template_name;
    let sets: Api<SandboxSet> = ctx.api(&ns);
    let sandboxes: Api<Sandbox> = ctx.api(&ns);
    let sbs = match sets.get_opt(set_name).await {
        Ok(Some(s)) => s,
        Ok(None) => {
            return Err(TakeError::SetNotFound {
                name: set_name.clone(),
                namespace: ns,
            });
        }
        Err(source) => {
            return Err(TakeError::ReadSet {
                name: set_name.clone(),
                source,
            });
        }
    };
    // A stale cached candidate is harmless: the claim's PUT carries its resourceVersion and a
    // newer sandbox answers 409, so the next candidate is tried.
    let pool = ctx
        .cached_sandboxes(&ns, |s| {
            s.labels().get(keys::LABEL_SANDBOX_POOL) == Some(set_name)
                && s.labels()
                    .get(keys::LABEL_SANDBOX_CLAIMED)
                    .map(String::as_str)
                    == Some("false")
        })
        .await
        .map_err(TakeError::Pool)?;
    let owner_key = writes_key(&ns, &claim.name_any());
    let sbs_uid = sbs.metadata.uid.clone().unwrap_or_default();
    let candidates: Vec<Candidate> = pool
        .iter()
        .map(|s| Candidate::from_sandbox(s, &sbs_uid, now))
        .collect();
    let update_revision = sbs.status.as_ref().and_then(|s| s.update_revision.clone());
    let order = plan::pick(
        &candidates,
        update_revision.as_deref(),
        claim.metadata.uid.as_deref().unwrap_or(""),
    );

    let mut got = 0;
    for i in order {
        if got == need {
            break;
        }
        let mut s = Sandbox::clone(&pool[i]);
        plan::claim_metadata(
            &plan::ClaimRequest::for_claim(claim, secrets()),
            &mut s,
            &sbs_uid,
            now,
        );
        match sandboxes
            .replace(&s.name_any(), &PostParams::default(), &s)
            .await
        {
            Ok(_) => {
                got += 1;
                tracing::info!(sandbox = %s.name_any(), "claimed");
                if let Some(from) = s.resource_version() {
                    ctx.expect_write(&owner_key, &s.name_any(), Expect::Changed { from });
                }
                after_claim(claim, ctx, &s).await;
            }
            Err(kube::Error::Api(ae)) if ae.code == 409 || ae.code == 404 => {
                tracing::debug!(sandbox = %s.name_any(), "lost the race for a sandbox");
            }
            Err(source) => {
                return Err(TakeError::Claim {
                    sandbox: s.name_any(),
                    source,
                });
            }
        }
    }
    if got < need && claim.spec.create_on_no_stock.unwrap_or(true) {
        got += create_on_no_stock(claim, ctx, &sbs, need - got, now).await?;
    }
    Ok(got)
}

/// Fresh random secrets for one claim.
fn secrets() -> plan::Secrets {
    plan::Secrets {
        lock: uuid::Uuid::new_v4().to_string(),
        access_token: uuid::Uuid::new_v4().to_string(),
    }
}

/// Pod-side effects of a claim: labels onto the Pod and in-place changes. Failures are
/// reported as events on the claim; the sandbox stays claimed.
async fn after_claim(claim: &SandboxClaim, ctx: &Context, s: &Sandbox) {
    let ns = s.namespace().unwrap_or_default();
    let pods: Api<Pod> = ctx.api(&ns);
    let name = s.name_any();
    let mut labels = plan::user_metadata(claim.spec.labels.as_ref());
    labels.insert(keys::LABEL_SANDBOX_CLAIMED.into(), "true".into());
    labels.insert(keys::LABEL_CLAIM_NAME.into(), claim.name_any());
    let patch = json!({"metadata": {"labels": labels}});
    if let Err(e) = pods
        .patch(&name, &PatchParams::default(), &Patch::Merge(&patch))
        .await
    {
        tracing::debug!(pod = %name, error = %e, "labelling pod");
    }
    let Some(update) = &claim.spec.inplace_update else {
        return;
    };
    let container = match pods.get_opt(&name).await {
        Ok(Some(p)) => p
            .spec
            .and_then(|s| s.containers.first().map(|c| c.name.clone())),
        _ => None,
    };
    let Some(container) = container else {
        return;
    };
    if let Some(image) = &update.image {
        let patch = json!({"spec": {"containers": [{"name": container, "image": image}]}});
        if let Err(e) = pods
            .patch(&name, &PatchParams::default(), &Patch::Strategic(&patch))
            .await
        {
            ctx.event(
                claim,
                true,
                "InplaceUpdateFailed",
                format!("image of {name}: {}", crate::context::api_message(&e)),
            )
            .await;
        }
    }
    if let Some(res) = &update.resources {
        let patch = json!({"spec": {"containers": [{
            "name": container,
            "resources": {"requests": res.requests, "limits": res.limits},
        }]}});
        // The resize subresource (Kubernetes ≥ 1.33); older clusters answer 404.
        if let Err(e) = pods
            .patch_subresource(
                "resize",
                &name,
                &PatchParams::default(),
                &Patch::Strategic(&patch),
            )
            .await
        {
            ctx.event(
                claim,
                true,
                "InplaceUpdateFailed",
                format!("resources of {name}: {}", crate::context::api_message(&e)),
            )
            .await;
        }
    }
}

/// No available sandbox: make new ones from the SandboxSet's template, claimed from birth.
async fn create_on_no_stock(
    claim: &SandboxClaim,
    ctx: &Context,
    sbs: &SandboxSet,
    n: usize,
    now: Timestamp,
) -> Result<usize, TakeError> {
    let ns = claim.namespace().unwrap_or_default();
    let api: Api<Sandbox> = ctx.api(&ns);
    let source = crate::sandboxset::resolve(sbs, &ctx.client).await?;
    let set = sbs.name_any();
    let mut made = 0;
    for _ in 0..n {
        let mut s = plan::fresh_sandbox(&set, &ns, source.spec.clone(), &source.revision);
        plan::claim_metadata(
            &plan::ClaimRequest::for_claim(claim, secrets()),
            &mut s,
            "",
            now,
        );
        match api.create(&PostParams::default(), &s).await {
            Ok(created) => {
                made += 1;
                ctx.expect_write(
                    &writes_key(&ns, &claim.name_any()),
                    &created.name_any(),
                    Expect::Created,
                );
                tracing::info!(sandbox = %created.name_any(), "created a sandbox for the claim (no stock)");
            }
            Err(e) => return Err(TakeError::CreateOnNoStock(e)),
        }
    }
    Ok(made)
}
