//! The SandboxClaim's decisions: which pool sandboxes to try and in what order, what a claim
//! writes onto a sandbox, whether a held sandbox is usable or given up, and whether the claim
//! is complete, timed out or still claiming.

use std::collections::BTreeMap;
use std::time::Duration;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, Time};
use k8s_openapi::jiff::Timestamp;
use kube::ResourceExt;
use paddock_crds::sandbox_conditions as sbx_cond;
use paddock_crds::{
    ClaimPhase, Sandbox, SandboxClaim, SandboxClaimStatus, SandboxSpec, find_condition, keys,
    set_condition,
};
use serde_json::json;

use super::sandbox::{SandboxState, is_ready, state};

/// Condition types and reasons on a SandboxClaim.
pub const COMPLETED: &str = "Completed";
pub const TIMED_OUT: &str = "TimedOut";
pub const REASON_SUCCEEDED: &str = "Succeeded";

/// A pool sandbox as the claim sees it.
#[derive(Clone, Debug, Default)]
pub struct Candidate {
    pub name: String,
    /// Still owned by the SandboxSet (not claimed by someone else meanwhile).
    pub pooled: bool,
    pub available: bool,
    pub has_ip: bool,
    pub locked: bool,
    pub revision: Option<String>,
}

/// Indices of claimable candidates: current revision first, each group rotated by a start
/// point derived from `seed`, so concurrent claims tend to try different sandboxes first.
pub fn pick(candidates: &[Candidate], update_revision: Option<&str>, seed: &str) -> Vec<usize> {
    let ok: Vec<usize> = (0..candidates.len())
        .filter(|&i| {
            let c = &candidates[i];
            c.pooled && c.available && c.has_ip && !c.locked
        })
        .collect();
    let (mut current, mut old): (Vec<usize>, Vec<usize>) = ok.into_iter().partition(|&i| {
        update_revision.is_some() && candidates[i].revision.as_deref() == update_revision
    });
    let start = seed.bytes().fold(0usize, |h, b| {
        h.wrapping_mul(31).wrapping_add(usize::from(b))
    });
    for group in [&mut current, &mut old] {
        if !group.is_empty() {
            let k = start % group.len();
            group.rotate_left(k);
        }
    }
    current.extend(old);
    current
}

impl Candidate {
    /// How a pool sandbox looks to a claim on the SandboxSet with UID `set_uid`.
    pub fn from_sandbox(s: &Sandbox, set_uid: &str, now: Timestamp) -> Self {
        Candidate {
            name: s.name_any(),
            pooled: s
                .owner_references()
                .iter()
                .any(|o| o.controller == Some(true) && o.uid == set_uid),
            available: state(s, now) == SandboxState::Available,
            has_ip: s
                .status
                .as_ref()
                .and_then(|st| st.sandbox_ip.as_ref())
                .is_some(),
            locked: s.annotations().contains_key(keys::ANNOTATION_LOCK),
            revision: s.labels().get(keys::LABEL_TEMPLATE_HASH).cloned(),
        }
    }
}

/// What becomes of a completed claim.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum AfterCompletion {
    /// A negative `ttlAfterCompleted`: kept for good.
    Keep,
    Delete,
    /// Look again when the TTL runs out.
    Wait(Duration),
}

/// `ttl_ms` after `completed` (now, when unknown), the claim goes.
pub fn after_completion(completed: Option<&Time>, ttl_ms: i64, now: Timestamp) -> AfterCompletion {
    if ttl_ms < 0 {
        return AfterCompletion::Keep;
    }
    let done = completed.map_or(now, |t| t.0);
    let left = done.as_millisecond() + ttl_ms - now.as_millisecond();
    if left <= 0 {
        AfterCompletion::Delete
    } else {
        AfterCompletion::Wait(super::duration::to_std(left))
    }
}

/// A sandbox the claim holds, as the claim counts it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Held {
    /// Ready, and initialised unless the claim skips that.
    Usable,
    /// Not usable yet, within `waitReadyTimeout` of its claim.
    Starting,
    /// Not usable `waitReadyTimeout` after its claim: released or deleted.
    GiveUp,
}

/// How `s`, claimed by this claim, counts: see [`Held`].
pub fn held(s: &Sandbox, skip_init: bool, wait_ready_ms: i64, now: Timestamp) -> Held {
    let claimed_at = s
        .annotations()
        .get(keys::ANNOTATION_CLAIM_TIMESTAMP)
        .and_then(|t| t.parse::<Timestamp>().ok())
        .unwrap_or(now);
    let usable = is_ready(s)
        && (skip_init
            || s.status.as_ref().is_some_and(|st| {
                find_condition(&st.conditions, sbx_cond::RUNTIME_INITIALIZED)
                    .is_some_and(|c| c.status == "True")
            }));
    if usable {
        Held::Usable
    } else if now.as_millisecond() - claimed_at.as_millisecond() > wait_ready_ms {
        Held::GiveUp
    } else {
        Held::Starting
    }
}

/// What one round of a claim that is not complete yet does.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Round {
    /// Enough usable sandboxes: complete.
    Complete,
    /// `claimTimeout` passed first: complete, timed out.
    TimedOut,
    /// Claim this many more (0: wait for the held ones to become usable); look again within
    /// `deadline` at the latest (the claim timeout).
    Claim { need: usize, deadline: Duration },
}

/// The round for a claim wanting `replicas`, holding `held` of which `usable` are usable,
/// started at `started` with `claim_timeout_ms`; at most `max_batch` claims per round.
pub fn round(
    replicas: usize,
    held: usize,
    usable: usize,
    started: Timestamp,
    claim_timeout_ms: i64,
    max_batch: usize,
    now: Timestamp,
) -> Round {
    let elapsed = now.as_millisecond() - started.as_millisecond();
    if usable >= replicas {
        Round::Complete
    } else if elapsed >= claim_timeout_ms {
        Round::TimedOut
    } else {
        Round::Claim {
            need: replicas.saturating_sub(held).min(max_batch),
            deadline: super::duration::to_std(claim_timeout_ms - elapsed),
        }
    }
}

/// Marks the claim completed (successfully or `timed_out`) with `msg`.
pub fn complete(
    status: &mut SandboxClaimStatus,
    now: &Time,
    gen_: Option<i64>,
    timed_out: bool,
    msg: String,
) {
    status.phase = Some(ClaimPhase::Completed);
    status.completion_time = Some(now.clone());
    let reason = if timed_out {
        TIMED_OUT
    } else {
        REASON_SUCCEEDED
    };
    set_condition(
        &mut status.conditions,
        COMPLETED,
        true,
        reason,
        &msg,
        now,
        gen_,
    );
    if timed_out {
        set_condition(
            &mut status.conditions,
            TIMED_OUT,
            true,
            TIMED_OUT,
            &msg,
            now,
            gen_,
        );
    }
    status.message = Some(msg);
}

/// The claim's labels or annotations without reserved keys (the webhook rejects those; this
/// keeps a claim admitted without the webhook from forging system metadata).
pub fn user_metadata(map: Option<&BTreeMap<String, String>>) -> BTreeMap<String, String> {
    map.into_iter()
        .flatten()
        .filter(|(k, _)| !keys::is_reserved_key(k))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect()
}

/// Fresh secrets for one claim of one sandbox (random in the reconciler, fixed in tests).
#[derive(Clone, Debug)]
pub struct Secrets {
    /// The value of the claim lock annotation.
    pub lock: String,
    /// The runtime access token.
    pub access_token: String,
}

/// The runtime's `/init` request a claim stores on the sandbox (the controller replays it
/// after every resume).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct InitRuntime {
    pub env_vars: BTreeMap<String, String>,
    pub access_token: String,
}

/// Everything one claim writes onto a sandbox, whoever claims: a SandboxClaim
/// ([`ClaimRequest::for_claim`]) or the Kubernetes manager (an E2B create).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ClaimRequest {
    /// The owner annotation: a SandboxClaim UID, or the E2B team.
    pub owner: String,
    /// The value of the lock annotation (fresh and random per claim).
    pub lock: String,
    /// The SandboxClaim's name (its label on the sandbox); `None` for the manager.
    pub claim_name: Option<String>,
    /// User labels and annotations (reserved keys are dropped by [`claim_metadata`]).
    pub labels: BTreeMap<String, String>,
    pub annotations: BTreeMap<String, String>,
    /// The `/init` request to store; `None` skips the runtime's initialisation.
    pub init: Option<InitRuntime>,
    /// `spec.shutdownTime` / `spec.pauseTime` to set (`None` leaves the field as it is).
    pub shutdown_time: Option<Time>,
    pub pause_time: Option<Time>,
}

impl ClaimRequest {
    /// What the SandboxClaim `claim` writes, with fresh `secrets`.
    pub fn for_claim(claim: &SandboxClaim, secrets: Secrets) -> Self {
        let spec = &claim.spec;
        ClaimRequest {
            owner: claim.metadata.uid.clone().unwrap_or_default(),
            lock: secrets.lock,
            claim_name: Some(claim.name_any()),
            labels: spec.labels.clone().unwrap_or_default(),
            annotations: spec.annotations.clone().unwrap_or_default(),
            init: (!spec.skip_init_runtime.unwrap_or(false)).then(|| InitRuntime {
                env_vars: spec.env_vars.clone().unwrap_or_default(),
                access_token: secrets.access_token,
            }),
            shutdown_time: spec.shutdown_time.clone(),
            pause_time: None,
        }
    }
}

/// Turns a pool sandbox (or a fresh one) into the claimant's sandbox: out of the SandboxSet
/// `set_uid` (so the pool refills), locked, owned, stamped, and carrying the init request.
pub fn claim_metadata(req: &ClaimRequest, s: &mut Sandbox, set_uid: &str, now: Timestamp) {
    let user_labels = user_metadata(Some(&req.labels));
    let user_annotations = user_metadata(Some(&req.annotations));
    let updated = json!({
        "labels": user_labels.keys().collect::<Vec<_>>(),
        "annotations": user_annotations.keys().collect::<Vec<_>>(),
    });
    if let Some(refs) = s.metadata.owner_references.as_mut() {
        refs.retain(|o| o.uid != set_uid);
    }
    let labels = s.labels_mut();
    labels.extend(user_labels);
    labels.insert(keys::LABEL_SANDBOX_CLAIMED.into(), "true".into());
    if let Some(name) = &req.claim_name {
        labels.insert(keys::LABEL_CLAIM_NAME.into(), name.clone());
    }
    let annotations = s.annotations_mut();
    annotations.extend(user_annotations);
    annotations.insert(keys::ANNOTATION_LOCK.into(), req.lock.clone());
    annotations.insert(keys::ANNOTATION_OWNER.into(), req.owner.clone());
    annotations.insert(
        keys::ANNOTATION_CLAIM_TIMESTAMP.into(),
        now.strftime("%Y-%m-%dT%H:%M:%SZ").to_string(),
    );
    annotations.insert(
        keys::ANNOTATION_UPDATED_METADATA_IN_CLAIM.into(),
        updated.to_string(),
    );
    if let Some(init) = &req.init {
        let body = json!({
            "envVars": init.env_vars,
            "accessToken": init.access_token,
        });
        annotations.insert(
            keys::ANNOTATION_INIT_RUNTIME_REQUEST.into(),
            body.to_string(),
        );
        annotations.insert(
            keys::ANNOTATION_RUNTIME_ACCESS_TOKEN.into(),
            init.access_token.clone(),
        );
    }
    if req.shutdown_time.is_some() {
        s.spec.shutdown_time = req.shutdown_time.clone();
    }
    if req.pause_time.is_some() {
        s.spec.pause_time = req.pause_time.clone();
    }
}

/// A new sandbox of SandboxSet `set` in `ns`, made from its resolved `spec` at `revision`, for
/// a claimant that found the pool empty (create on no stock): it is labelled as the set's but
/// not owned by it, and has the claim priority; [`claim_metadata`] then claims it from birth.
pub fn fresh_sandbox(set: &str, ns: &str, spec: SandboxSpec, revision: &str) -> Sandbox {
    let mut prefix = format!("{set}-");
    // generateName adds 5 characters; names stay within 63 (they are pod names too).
    prefix.truncate(58);
    Sandbox {
        metadata: ObjectMeta {
            generate_name: Some(prefix),
            namespace: Some(ns.to_string()),
            labels: Some(BTreeMap::from([
                (keys::LABEL_SANDBOX_POOL.to_string(), set.to_string()),
                (keys::LABEL_SANDBOX_TEMPLATE.to_string(), set.to_string()),
                (keys::LABEL_TEMPLATE_HASH.to_string(), revision.to_string()),
            ])),
            annotations: Some(BTreeMap::from([(
                keys::ANNOTATION_SANDBOX_PRIORITY.to_string(),
                "100".to_string(),
            )])),
            finalizers: Some(vec![keys::FINALIZER_SANDBOX.to_string()]),
            ..Default::default()
        },
        spec,
        status: None,
    }
}

#[cfg(test)]
mod tests {
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference;
    use paddock_crds::{SandboxClaimSpec, SandboxPhase, SandboxStatus};

    use super::*;

    fn c(name: &str, rev: &str) -> Candidate {
        Candidate {
            name: name.into(),
            pooled: true,
            available: true,
            has_ip: true,
            locked: false,
            revision: Some(rev.into()),
        }
    }

    #[test]
    fn only_available_unlocked_pooled_sandboxes_with_an_ip() {
        let mut all = vec![
            c("a", "r"),
            c("b", "r"),
            c("c", "r"),
            c("d", "r"),
            c("e", "r"),
        ];
        all[0].available = false;
        all[1].locked = true;
        all[2].pooled = false;
        all[3].has_ip = false;
        assert_eq!(pick(&all, Some("r"), "x"), vec![4]);
    }

    #[test]
    fn current_revision_comes_first() {
        let all = vec![c("old", "r1"), c("new", "r2")];
        assert_eq!(pick(&all, Some("r2"), "seed"), vec![1, 0]);
    }

    #[test]
    fn different_seeds_start_at_different_places() {
        let all: Vec<Candidate> = (0..7).map(|i| c(&format!("s{i}"), "r")).collect();
        let firsts: std::collections::BTreeSet<usize> = ["a", "b", "c", "d", "e"]
            .iter()
            .map(|s| pick(&all, Some("r"), s)[0])
            .collect();
        assert!(firsts.len() > 1);
        assert_eq!(pick(&all, Some("r"), "a").len(), 7);
    }

    fn at(s: i64) -> Timestamp {
        Timestamp::from_second(s).unwrap()
    }

    fn claim(skip_init: bool) -> SandboxClaim {
        let mut c = SandboxClaim::new(
            "c1",
            SandboxClaimSpec {
                template_name: "pool".into(),
                labels: Some(BTreeMap::from([
                    ("team".to_string(), "blue".to_string()),
                    ("agents.kruise.io/forged".to_string(), "x".to_string()),
                ])),
                env_vars: Some(BTreeMap::from([("A".to_string(), "1".to_string())])),
                shutdown_time: Some(Time(at(1000))),
                skip_init_runtime: Some(skip_init),
                ..Default::default()
            },
        );
        c.metadata.uid = Some("claim-uid".into());
        c
    }

    fn pooled() -> Sandbox {
        let mut s = Sandbox::new("pool-abc", SandboxSpec::default());
        s.metadata.owner_references = Some(vec![OwnerReference {
            api_version: "agents.kruise.io/v1alpha1".into(),
            kind: "SandboxSet".into(),
            name: "pool".into(),
            uid: "set-uid".into(),
            controller: Some(true),
            block_owner_deletion: Some(true),
        }]);
        s.labels_mut()
            .insert(keys::LABEL_SANDBOX_CLAIMED.into(), "false".into());
        s
    }

    fn secrets() -> Secrets {
        Secrets {
            lock: "lock-1".into(),
            access_token: "token-1".into(),
        }
    }

    #[test]
    fn claiming_releases_the_pool_and_stamps_owner_lock_and_init_request() {
        let mut s = pooled();
        claim_metadata(
            &ClaimRequest::for_claim(&claim(false), secrets()),
            &mut s,
            "set-uid",
            at(0),
        );
        assert!(s.owner_references().is_empty(), "the pool must refill");
        assert_eq!(s.labels()[keys::LABEL_SANDBOX_CLAIMED], "true");
        assert_eq!(s.labels()[keys::LABEL_CLAIM_NAME], "c1");
        assert_eq!(s.labels()["team"], "blue");
        assert!(!s.labels().contains_key("agents.kruise.io/forged"));
        let a = s.annotations();
        assert_eq!(a[keys::ANNOTATION_OWNER], "claim-uid");
        assert_eq!(a[keys::ANNOTATION_LOCK], "lock-1");
        assert_eq!(a[keys::ANNOTATION_CLAIM_TIMESTAMP], "1970-01-01T00:00:00Z");
        let init: serde_json::Value =
            serde_json::from_str(&a[keys::ANNOTATION_INIT_RUNTIME_REQUEST]).unwrap();
        assert_eq!(init["envVars"]["A"], "1");
        assert_eq!(init["accessToken"], "token-1");
        assert_eq!(a[keys::ANNOTATION_RUNTIME_ACCESS_TOKEN], "token-1");
        let updated: serde_json::Value =
            serde_json::from_str(&a[keys::ANNOTATION_UPDATED_METADATA_IN_CLAIM]).unwrap();
        assert_eq!(updated["labels"], json!(["team"]));
        assert_eq!(s.spec.shutdown_time, claim(false).spec.shutdown_time);
    }

    #[test]
    fn skip_init_runtime_stores_no_init_request() {
        let mut s = pooled();
        claim_metadata(
            &ClaimRequest::for_claim(&claim(true), secrets()),
            &mut s,
            "set-uid",
            at(0),
        );
        assert!(
            !s.annotations()
                .contains_key(keys::ANNOTATION_INIT_RUNTIME_REQUEST)
        );
        assert!(
            !s.annotations()
                .contains_key(keys::ANNOTATION_RUNTIME_ACCESS_TOKEN)
        );
    }

    fn ready(mut s: Sandbox, initialized: bool) -> Sandbox {
        let now = Time(at(0));
        let mut st = SandboxStatus {
            phase: Some(SandboxPhase::Running),
            sandbox_ip: Some("10.0.0.1".into()),
            ..Default::default()
        };
        set_condition(
            &mut st.conditions,
            sbx_cond::READY,
            true,
            "PodReady",
            "",
            &now,
            None,
        );
        set_condition(
            &mut st.conditions,
            sbx_cond::RUNTIME_INITIALIZED,
            initialized,
            "x",
            "",
            &now,
            None,
        );
        s.status = Some(st);
        s
    }

    #[test]
    fn a_pool_sandbox_is_a_candidate_while_pooled_ready_and_unlocked() {
        let c = Candidate::from_sandbox(&ready(pooled(), false), "set-uid", at(0));
        assert!(c.pooled && c.available && c.has_ip && !c.locked, "{c:?}");
        let c = Candidate::from_sandbox(&ready(pooled(), false), "other-set", at(0));
        assert!(!c.pooled);
        let c = Candidate::from_sandbox(&pooled(), "set-uid", at(0));
        assert!(!c.available && !c.has_ip, "{c:?}");
        let mut claimed = ready(pooled(), false);
        claim_metadata(
            &ClaimRequest::for_claim(&claim(false), secrets()),
            &mut claimed,
            "set-uid",
            at(0),
        );
        let c = Candidate::from_sandbox(&claimed, "set-uid", at(0));
        assert!(c.locked && !c.pooled, "{c:?}");
    }

    #[test]
    fn a_held_sandbox_is_usable_once_ready_and_initialised_and_given_up_after_wait_ready() {
        let mut s = pooled();
        claim_metadata(
            &ClaimRequest::for_claim(&claim(false), secrets()),
            &mut s,
            "set-uid",
            at(100),
        );
        assert_eq!(
            held(&ready(s.clone(), true), false, 30_000, at(200)),
            Held::Usable
        );
        // Ready but the runtime not initialised: usable only when the claim skips init.
        assert_eq!(
            held(&ready(s.clone(), false), false, 30_000, at(110)),
            Held::Starting
        );
        assert_eq!(
            held(&ready(s.clone(), false), true, 30_000, at(110)),
            Held::Usable
        );
        assert_eq!(held(&s, false, 30_000, at(130)), Held::Starting);
        assert_eq!(held(&s, false, 30_000, at(131)), Held::GiveUp);
    }

    #[test]
    fn a_round_completes_times_out_or_claims_what_is_missing() {
        let r = |held, usable, now| round(3, held, usable, at(0), 60_000, 2, at(now));
        assert_eq!(r(3, 3, 10), Round::Complete);
        // Enough usable wins even past the timeout.
        assert_eq!(r(3, 3, 100), Round::Complete);
        assert_eq!(r(3, 2, 60), Round::TimedOut);
        assert_eq!(
            r(0, 0, 10),
            Round::Claim {
                need: 2,
                deadline: Duration::from_secs(50)
            },
            "at most a batch per round"
        );
        assert_eq!(
            r(3, 1, 59),
            Round::Claim {
                need: 0,
                deadline: Duration::from_secs(1)
            }
        );
    }

    #[test]
    fn a_completed_claim_goes_after_its_ttl_unless_negative() {
        let done = Time(at(100));
        assert_eq!(
            after_completion(Some(&done), -1, at(1000)),
            AfterCompletion::Keep
        );
        assert_eq!(
            after_completion(Some(&done), 60_000, at(130)),
            AfterCompletion::Wait(Duration::from_secs(30))
        );
        assert_eq!(
            after_completion(Some(&done), 60_000, at(160)),
            AfterCompletion::Delete
        );
        assert_eq!(after_completion(None, 0, at(5)), AfterCompletion::Delete);
    }

    #[test]
    fn completing_sets_phase_time_and_conditions() {
        let mut st = SandboxClaimStatus::default();
        complete(&mut st, &Time(at(5)), Some(2), true, "late".into());
        assert_eq!(st.phase, Some(ClaimPhase::Completed));
        assert_eq!(st.completion_time, Some(Time(at(5))));
        let c = find_condition(&st.conditions, COMPLETED).unwrap();
        assert_eq!((c.status.as_str(), c.reason.as_str()), ("True", TIMED_OUT));
        assert!(find_condition(&st.conditions, TIMED_OUT).is_some());
        let mut ok = SandboxClaimStatus::default();
        complete(&mut ok, &Time(at(5)), None, false, "done".into());
        assert_eq!(
            find_condition(&ok.conditions, COMPLETED).unwrap().reason,
            REASON_SUCCEEDED
        );
        assert!(find_condition(&ok.conditions, TIMED_OUT).is_none());
        assert_eq!(ok.message.as_deref(), Some("done"));
    }
}
