//! The SandboxSet reconciler: keeps `replicas` unclaimed sandboxes of the current revision.
//!
//! Each round reads the pool's members from the shared Sandbox cache ([`crate::cache`]). Its
//! own creates and deletes are recorded as expectations, and a round waits until the cache
//! shows them, so a lagging cache never makes the pool create twice. Surplus and rolled-out
//! members are deleted with a resourceVersion precondition: if a claim updated the sandbox in
//! between (or the cached copy was behind), the delete fails and the claim wins.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use futures::{Stream, StreamExt};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, Time};
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, DeleteParams, ListParams, PostParams, Preconditions};
use kube::runtime::controller::{Action, Controller};
use kube::runtime::reflector::ObjectRef;
use kube::runtime::watcher;
use kube::{Resource, ResourceExt};
use paddock_crds::sandbox_conditions as sbx_cond;
use paddock_crds::{
    PodSource, Sandbox, SandboxSet, SandboxSpec, SandboxTemplate, SandboxTemplateSpec,
    find_condition, keys,
};
use serde_json::json;
use tracing::Instrument;

use crate::context::{Context, Kind, ReconcileError, api_message, track};
use crate::desired::pool::{self, Member, MemberState};
use crate::desired::revision;
use crate::desired::sandbox::{SandboxState, state};
use crate::expectations::Expect;
use crate::sandbox::{ignore_not_found, patch_status};

/// Materialised revisions kept per SandboxSet.
const REVISION_HISTORY: usize = 10;
const RESYNC: Duration = Duration::from_secs(60);
const CREATE_CONCURRENCY: usize = 16;

/// How soon a round that found the cache behind its own writes looks again.
const WAIT_FOR_CACHE: Duration = Duration::from_millis(200);

/// The owner key of a pool's writes in [`crate::expectations`].
fn writes_key(ns: &str, name: &str) -> String {
    format!("set/{ns}/{name}")
}

/// Condition on a SandboxSet: whether the pool is full, current and healthy.
const READY: &str = "Ready";

/// Reconciles SandboxSets, also woken by the shared cache's Sandbox `events`.
pub async fn run(ctx: Arc<Context>, events: impl Stream<Item = Arc<Sandbox>> + Send + 'static) {
    let stream = Controller::new(ctx.watch_api::<SandboxSet>(), watcher::Config::default())
        // Not by owner: a claimed sandbox loses its owner reference, and that very update must
        // wake the pool so it refills; the pool label stays.
        .watches_shared_stream(events, |s: Arc<Sandbox>| {
            let ns = s.namespace()?;
            let pool = s.labels().get(keys::LABEL_SANDBOX_POOL)?;
            Some(ObjectRef::<SandboxSet>::new(pool).within(&ns))
        })
        .with_config(
            kube::runtime::controller::Config::default()
                .concurrency(3)
                .debounce(Duration::from_millis(100)),
        )
        .run(
            reconcile,
            |s, e, ctx| ctx.on_error(Kind::SandboxSet, s.as_ref(), e),
            ctx,
        );
    crate::drain("SandboxSet", stream).await;
}

async fn reconcile(sbs: Arc<SandboxSet>, ctx: Arc<Context>) -> Result<Action, ReconcileError> {
    let span = tracing::info_span!(
        "reconcile",
        kind = "SandboxSet",
        namespace = %sbs.namespace().unwrap_or_default(),
        name = %sbs.name_any()
    );
    if sbs.metadata.deletion_timestamp.is_some() {
        return Ok(Action::await_change());
    }
    track(
        &ctx,
        Kind::SandboxSet,
        sbs.as_ref(),
        apply(&sbs, &ctx).instrument(span),
    )
    .await
}

/// What a pool sandbox is made from.
pub struct Source {
    pub spec: SandboxSpec,
    pub revision: String,
    pub current_revision: String,
}

/// Why a SandboxSet's [`Source`] cannot be resolved; the message is the Ready condition's.
#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    #[error("SandboxTemplate {0} not found")]
    TemplateNotFound(String),
    #[error("reading SandboxTemplate {name}: {}", api_message(.source))]
    ReadTemplate {
        name: String,
        #[source]
        source: kube::Error,
    },
    #[error("spec.template or spec.templateRef is required")]
    NoTemplate,
    #[error("SandboxSet has no UID")]
    NoUid,
    #[error("creating SandboxTemplate {name}: {}", api_message(.source))]
    CreateTemplate {
        name: String,
        #[source]
        source: kube::Error,
    },
}

impl SourceError {
    /// The condition and event reason: a template that is not there (including a create the
    /// API server answers 404, e.g. for a missing namespace) or one that is unusable.
    pub(crate) fn reason(&self) -> &'static str {
        match self {
            SourceError::TemplateNotFound(_) => "TemplateNotFound",
            SourceError::ReadTemplate { source, .. }
            | SourceError::CreateTemplate { source, .. }
                if is_not_found(source) =>
            {
                "TemplateNotFound"
            }
            _ => "InvalidTemplate",
        }
    }
}

fn is_not_found(e: &kube::Error) -> bool {
    matches!(e, kube::Error::Api(ae) if ae.code == 404)
}

/// What the SandboxSet's sandboxes are made from: its inline template (materialised as a
/// SandboxTemplate revision) or the SandboxTemplate it references. Shared by the SandboxSet and
/// SandboxClaim reconcilers and the Kubernetes manager's create-on-no-stock.
pub async fn resolve(sbs: &SandboxSet, client: &kube::Client) -> Result<Source, SourceError> {
    let ns = sbs.namespace().unwrap_or_default();
    let s = &sbs.spec;
    let mut spec = SandboxSpec {
        persistence: s.persistence.clone(),
        pod: PodSource {
            template: None,
            volume_claim_templates: s.pod.volume_claim_templates.clone(),
        },
        ..Default::default()
    };
    let shared = &s.persistence;
    match (&s.pod.template, &s.template_ref) {
        (Some(t), _) => {
            spec.pod.template = Some(t.clone());
            let revision = revision::hash(&json!({"template": t, "shared": shared}));
            let current_revision = materialise(sbs, client, &revision).await?;
            Ok(Source {
                spec,
                revision,
                current_revision,
            })
        }
        (None, Some(r)) => {
            let templates: Api<SandboxTemplate> = Api::namespaced(client.clone(), &ns);
            let t = match templates.get_opt(&r.name).await {
                Ok(Some(t)) => t,
                Ok(None) => return Err(SourceError::TemplateNotFound(r.name.clone())),
                Err(source) => {
                    return Err(SourceError::ReadTemplate {
                        name: r.name.clone(),
                        source,
                    });
                }
            };
            spec.template_ref = Some(r.clone());
            let revision =
                revision::hash(&json!({"template": t.spec.pod.template, "shared": shared}));
            Ok(Source {
                spec,
                revision,
                current_revision: r.name.clone(),
            })
        }
        (None, None) => Err(SourceError::NoTemplate),
    }
}

/// Stores the inline template as SandboxTemplate `<set>-<revision>` (owned by the set) and
/// drops all but the newest [`REVISION_HISTORY`] of them.
async fn materialise(
    sbs: &SandboxSet,
    client: &kube::Client,
    rev: &str,
) -> Result<String, SourceError> {
    let ns = sbs.namespace().unwrap_or_default();
    let set = sbs.name_any();
    let name = format!("{set}-{rev}");
    // The status names the revision only once it was stored: nothing to do then.
    if sbs
        .status
        .as_ref()
        .and_then(|s| s.current_revision.as_deref())
        == Some(name.as_str())
    {
        return Ok(name);
    }
    let api: Api<SandboxTemplate> = Api::namespaced(client.clone(), &ns);
    let owner = sbs.controller_owner_ref(&()).ok_or(SourceError::NoUid)?;
    let t = SandboxTemplate {
        metadata: ObjectMeta {
            name: Some(name.clone()),
            namespace: Some(ns.clone()),
            labels: Some(BTreeMap::from([(
                keys::LABEL_SANDBOX_POOL.to_string(),
                set.clone(),
            )])),
            annotations: Some(BTreeMap::from([(
                keys::ANNOTATION_CLEANUP_CANDIDATE.to_string(),
                "true".to_string(),
            )])),
            owner_references: Some(vec![owner]),
            ..Default::default()
        },
        spec: SandboxTemplateSpec {
            pod: sbs.spec.pod.clone(),
            persistence: sbs.spec.persistence.clone(),
        },
    };
    match api.create(&PostParams::default(), &t).await {
        Ok(_) => {
            tracing::info!(template = %name, "materialised revision");
            gc_revisions(&api, sbs, &name).await;
        }
        Err(kube::Error::Api(ae)) if ae.code == 409 => {}
        Err(source) => return Err(SourceError::CreateTemplate { name, source }),
    }
    Ok(name)
}

async fn gc_revisions(api: &Api<SandboxTemplate>, sbs: &SandboxSet, current: &str) {
    let lp =
        ListParams::default().labels(&format!("{}={}", keys::LABEL_SANDBOX_POOL, sbs.name_any()));
    let Ok(list) = api.list(&lp).await else {
        return;
    };
    let uid = sbs.metadata.uid.clone();
    let mut ours: Vec<SandboxTemplate> = list
        .items
        .into_iter()
        .filter(|t| {
            t.owner_references()
                .iter()
                .any(|o| Some(&o.uid) == uid.as_ref())
        })
        .filter(|t| {
            t.annotations()
                .contains_key(keys::ANNOTATION_CLEANUP_CANDIDATE)
        })
        .collect();
    ours.sort_by_key(|t| std::cmp::Reverse(t.metadata.creation_timestamp.clone().map(|t| t.0)));
    for t in ours.iter().skip(REVISION_HISTORY) {
        if t.name_any() != current {
            let _ = api.delete(&t.name_any(), &DeleteParams::default()).await;
        }
    }
}

fn member(s: &Sandbox, now: Timestamp) -> Member {
    let state = match state(s, now) {
        SandboxState::Dead => MemberState::Dead,
        SandboxState::Available => MemberState::Available,
        SandboxState::Creating | SandboxState::Running | SandboxState::Paused => {
            MemberState::Creating
        }
    };
    Member {
        name: s.name_any(),
        revision: s.labels().get(keys::LABEL_TEMPLATE_HASH).cloned(),
        state,
        created: s
            .metadata
            .creation_timestamp
            .as_ref()
            .map_or(0, |t| t.0.as_second()),
    }
}

/// A pool member that cannot start, with the reason, if any.
fn stuck(members: &[Arc<Sandbox>]) -> Option<String> {
    members.iter().find_map(|s| {
        let c = find_condition(&s.status.as_ref()?.conditions, sbx_cond::READY)?;
        (c.reason == sbx_cond::REASON_START_CONTAINER_FAILED
            || c.reason == sbx_cond::REASON_POD_CREATE_FAILED)
            .then(|| format!("sandbox {}: {}", s.name_any(), c.message))
    })
}

async fn apply(sbs: &SandboxSet, ctx: &Context) -> Result<Action, ReconcileError> {
    let ns = sbs.namespace().unwrap_or_default();
    let name = sbs.name_any();
    let sets: Api<SandboxSet> = ctx.api(&ns);
    let sandboxes: Api<Sandbox> = ctx.api(&ns);
    let old = sbs.status.clone().unwrap_or_default();
    let mut status = old.clone();
    status.observed_generation = sbs.metadata.generation;
    status.selector = Some(format!(
        "{}={},{}=false",
        keys::LABEL_SANDBOX_POOL,
        name,
        keys::LABEL_SANDBOX_CLAIMED
    ));
    let now = Timestamp::now();
    let now_t = Time(now);
    let gen_ = sbs.metadata.generation;

    let source = match resolve(sbs, &ctx.client).await {
        Ok(s) => s,
        Err(e) => {
            let reason = e.reason();
            let msg = e.to_string();
            paddock_crds::set_condition(
                &mut status.conditions,
                READY,
                false,
                reason,
                &msg,
                &now_t,
                gen_,
            );
            if status != old {
                ctx.event(sbs, true, reason, msg.clone()).await;
                patch_status(&sets, &name, &old, &status).await?;
            }
            return Err(e.into());
        }
    };

    // Counting from a cache that has not caught up with our last creates or deletes would
    // repeat them: wait for it (see `expectations`).
    let owner_key = writes_key(&ns, &name);
    ctx.sandboxes().await?;
    if !ctx.writes_seen(&ns, &owner_key) {
        return Ok(Action::requeue(WAIT_FOR_CACHE));
    }
    let uid = sbs.metadata.uid.clone();
    let members = ctx
        .cached_sandboxes(&ns, |s| {
            s.labels().get(keys::LABEL_SANDBOX_POOL) == Some(&name)
                && s.owner_references()
                    .iter()
                    .any(|o| o.controller == Some(true) && Some(&o.uid) == uid.as_ref())
        })
        .await?;
    let views: Vec<Member> = members.iter().map(|s| member(s, now)).collect();

    // Dead members (a pod that exited, an image that never pulls under restartPolicy Never)
    // would otherwise be replaced at full speed forever: replacements back off per set.
    let churn_key = format!("churn/{ns}/{name}");
    let dead = views.iter().any(|m| m.state == MemberState::Dead);
    let may_create = ctx.pool_gate.may_create(&churn_key, dead);

    let plan = pool::plan(
        sbs.spec.replicas,
        &source.revision,
        &views,
        sbs.spec
            .scale_strategy
            .as_ref()
            .and_then(|s| s.max_unavailable.as_ref()),
        sbs.spec
            .update_strategy
            .as_ref()
            .and_then(|s| s.max_unavailable.as_ref()),
        may_create,
    );

    for n in &plan.delete_dead {
        ignore_not_found(
            sandboxes
                .delete(n, &DeleteParams::default())
                .await
                .map(|_| ()),
        )?;
    }
    let mut lost_races = 0;
    for n in plan.scale_down.iter().chain(&plan.rollout) {
        let rv = members
            .iter()
            .find(|s| &s.name_any() == n)
            .and_then(|s| s.resource_version());
        let dp = DeleteParams {
            preconditions: Some(Preconditions {
                uid: None,
                resource_version: rv,
            }),
            ..Default::default()
        };
        match sandboxes.delete(n, &dp).await {
            Ok(_) => {
                tracing::info!(sandbox = %n, "deleted pool sandbox");
                if let Some(from) = dp.preconditions.and_then(|p| p.resource_version) {
                    ctx.expect_write(&owner_key, n, Expect::Changed { from });
                }
            }
            Err(kube::Error::Api(ae)) if ae.code == 409 || ae.code == 404 => lost_races += 1,
            Err(e) => return Err(e.into()),
        }
    }
    let (made, create_error) = create_members(sbs, &sandboxes, &source, plan.create).await;
    for n in &made {
        ctx.expect_write(&owner_key, n, Expect::Created);
    }
    // As before: a failed batch counts as none created in the status.
    let created = match create_error {
        Some(e) => Err(e),
        None => Ok(made.len() as i32),
    };
    let failed_creates = plan.create - created.as_ref().map_or(0, |n| *n);

    let c = &plan.counters;
    status.replicas = c.replicas - failed_creates;
    status.available_replicas = c.available;
    status.updated_replicas = c.updated - failed_creates;
    status.updated_available_replicas = c.updated_available;
    status.update_revision = Some(source.revision.clone());
    status.current_revision = Some(source.current_revision.clone());

    let (ok, reason, msg) = if let Err(e) = &created {
        (false, "SandboxCreateFailed", e.clone())
    } else if let Some(m) = stuck(&members) {
        (false, "SandboxStartFailed", m)
    } else if c.available < sbs.spec.replicas {
        (
            false,
            "Filling",
            format!("{}/{} available", c.available, sbs.spec.replicas),
        )
    } else if c.updated_available < c.available {
        (
            false,
            "Updating",
            format!("{}/{} updated", c.updated_available, c.available),
        )
    } else {
        (true, "Available", String::new())
    };
    let was_failing = find_condition(&old.conditions, READY)
        .is_some_and(|c| c.reason == reason && c.status == "False");
    if !ok && !was_failing && (reason == "SandboxStartFailed" || reason == "SandboxCreateFailed") {
        ctx.event(sbs, true, reason, msg.clone()).await;
    }
    paddock_crds::set_condition(
        &mut status.conditions,
        READY,
        ok,
        reason,
        &msg,
        &now_t,
        gen_,
    );
    if status != old {
        patch_status(&sets, &name, &old, &status).await?;
    }
    if let Err(e) = created {
        return Err(ReconcileError::Invalid(e));
    }
    if !may_create || lost_races > 0 {
        return Ok(Action::requeue(
            ctx.pool_gate
                .wait(&churn_key)
                .max(Duration::from_millis(200)),
        ));
    }
    Ok(Action::requeue(RESYNC))
}

/// Creates `n` pool sandboxes; returns the names of those created and the first error.
async fn create_members(
    sbs: &SandboxSet,
    api: &Api<Sandbox>,
    source: &Source,
    n: i32,
) -> (Vec<String>, Option<String>) {
    if n <= 0 {
        return (Vec::new(), None);
    }
    let name = sbs.name_any();
    let mut prefix = format!("{name}-");
    prefix.truncate(58);
    let Some(owner) = sbs.controller_owner_ref(&()) else {
        return (Vec::new(), Some("SandboxSet has no UID".into()));
    };
    let template = Sandbox {
        metadata: ObjectMeta {
            generate_name: Some(prefix),
            namespace: sbs.namespace(),
            labels: Some(BTreeMap::from([
                (keys::LABEL_SANDBOX_POOL.to_string(), name.clone()),
                (keys::LABEL_SANDBOX_TEMPLATE.to_string(), name.clone()),
                (keys::LABEL_SANDBOX_CLAIMED.to_string(), "false".to_string()),
                (
                    keys::LABEL_TEMPLATE_HASH.to_string(),
                    source.revision.clone(),
                ),
            ])),
            annotations: Some(BTreeMap::from([(
                keys::ANNOTATION_SANDBOX_PRIORITY.to_string(),
                "0".to_string(),
            )])),
            owner_references: Some(vec![owner]),
            // Present from the start, so the Sandbox reconciler need not add it (one write less).
            finalizers: Some(vec![keys::FINALIZER_SANDBOX.to_string()]),
            ..Default::default()
        },
        spec: source.spec.clone(),
        status: None,
    };
    let results: Vec<Result<String, kube::Error>> = futures::stream::iter(0..n)
        .map(|_| async {
            api.create(&PostParams::default(), &template)
                .await
                .map(|s| s.name_any())
        })
        .buffer_unordered(CREATE_CONCURRENCY)
        .collect()
        .await;
    let (made, failed): (Vec<_>, Vec<_>) = results.into_iter().partition(Result::is_ok);
    let made: Vec<String> = made.into_iter().filter_map(Result::ok).collect();
    tracing::info!(created = made.len(), wanted = n, "created pool sandboxes");
    let error = failed
        .into_iter()
        .find_map(Result::err)
        .map(|e| format!("creating sandboxes: {}", crate::context::api_message(&e)));
    (made, error)
}

/// Holds back pool refills while members keep dying, doubling the pause each time.
#[derive(Default)]
pub struct PoolGate {
    /// Per set: deaths so far and the end of the current pause.
    state: Mutex<BTreeMap<String, (u32, Instant)>>,
}

impl PoolGate {
    /// Whether the pool may create now; `dead` says this round found dead members, which
    /// opens a pause (1 s, doubling per death up to 5 min; forgotten after 5 quiet minutes).
    pub fn may_create(&self, key: &str, dead: bool) -> bool {
        let mut map = self.state.lock().unwrap_or_else(|e| e.into_inner());
        let now = Instant::now();
        let quiet = Duration::from_secs(300);
        if let Some((_, until)) = map.get(key) {
            if *until > now {
                return false;
            }
            if now.duration_since(*until) > quiet {
                map.remove(key);
            }
        }
        if dead {
            let entry = map.entry(key.to_string()).or_insert((0, now));
            let pause = Duration::from_secs(1 << entry.0.min(9)).min(quiet);
            entry.0 = entry.0.saturating_add(1);
            entry.1 = now + pause;
        }
        true
    }

    pub fn wait(&self, key: &str) -> Duration {
        let map = self.state.lock().unwrap_or_else(|e| e.into_inner());
        map.get(key).map_or(Duration::ZERO, |(_, until)| {
            until.saturating_duration_since(Instant::now())
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pool_gate_lets_the_first_replacement_through_then_pauses() {
        let g = PoolGate::default();
        assert!(g.may_create("a", false));
        assert!(g.may_create("a", true));
        assert!(!g.may_create("a", true));
        assert!(!g.may_create("a", false));
        assert!(g.wait("a") > Duration::ZERO);
        assert!(g.may_create("b", false));
    }
}
