//! The Sandbox state machine: from (Sandbox, its Pod, now) to the next status and the steps
//! that get there.
//!
//! ```text
//!  ""/Pending --pod Running--> Running --spec.paused--> Paused --spec.paused=false--> Resuming
//!      |                        |  ^                                                    |
//!      |                        |  +------------------pod Running----------------------+
//!      +--pod Succeeded/Failed--+--pod Succeeded/Failed, pod gone--> Succeeded / Failed (final)
//! ```
//!
//! Timers run first: a passed `shutdownTime` deletes the Sandbox, a passed `pauseTime` sets
//! `spec.paused`. The Pod always has the Sandbox's name; a Pod of the same name owned by another
//! (older) Sandbox is never adopted.

use std::time::Duration;

use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::Timestamp;
use kube::ResourceExt;
use paddock_crds::sandbox_conditions as cond;
use paddock_crds::{PodInfo, Sandbox, SandboxPhase, SandboxStatus, find_condition, keys};

/// What the state machine needs to know about the Sandbox's Pod.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct PodView {
    pub uid: String,
    /// UID of the controlling owner.
    pub owner_uid: Option<String>,
    pub terminating: bool,
    pub phase: PodPhase,
    pub ready: bool,
    pub ip: Option<String>,
    pub node: Option<String>,
    /// The first container that cannot start: (reason, message).
    pub waiting: Option<(String, String)>,
    pub revision: Option<String>,
    pub labels: std::collections::BTreeMap<String, String>,
    pub annotations: std::collections::BTreeMap<String, String>,
}

/// A Pod's `status.phase`. Kubernetes may add phases: any other string reads as
/// [`PodPhase::Unknown`], which the state machine treats like `Pending` (wait), never as an
/// error.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum PodPhase {
    #[default]
    Pending,
    Running,
    Succeeded,
    Failed,
    Unknown,
}

impl PodPhase {
    pub fn parse(s: &str) -> Self {
        match s {
            "Pending" => Self::Pending,
            "Running" => Self::Running,
            "Succeeded" => Self::Succeeded,
            "Failed" => Self::Failed,
            _ => Self::Unknown,
        }
    }
}

/// Container waiting reasons that mean "this will not start by itself soon".
const START_FAILURES: &[&str] = &[
    "ErrImagePull",
    "ImagePullBackOff",
    "ErrImageNeverPull",
    "InvalidImageName",
    "CrashLoopBackOff",
    "CreateContainerConfigError",
    "CreateContainerError",
    "RunContainerError",
];

impl PodView {
    pub fn from_pod(pod: &Pod) -> Self {
        let status = pod.status.clone().unwrap_or_default();
        let ready = status
            .conditions
            .iter()
            .flatten()
            .any(|c| c.type_ == "Ready" && c.status == "True");
        let waiting = status
            .init_container_statuses
            .iter()
            .flatten()
            .chain(status.container_statuses.iter().flatten())
            .find_map(|cs| {
                let w = cs.state.as_ref()?.waiting.as_ref()?;
                let reason = w.reason.clone()?;
                START_FAILURES.contains(&reason.as_str()).then(|| {
                    let msg = w.message.clone().unwrap_or_default();
                    (reason, format!("container {}: {msg}", cs.name))
                })
            });
        PodView {
            uid: pod.uid().unwrap_or_default(),
            owner_uid: pod
                .owner_references()
                .iter()
                .find(|o| o.controller == Some(true))
                .map(|o| o.uid.clone()),
            terminating: pod.metadata.deletion_timestamp.is_some(),
            phase: status
                .phase
                .as_deref()
                .map_or(PodPhase::Pending, PodPhase::parse),
            ready,
            ip: status.pod_ip.filter(|s| !s.is_empty()),
            node: pod.spec.as_ref().and_then(|s| s.node_name.clone()),
            waiting,
            revision: pod.labels().get(keys::LABEL_POD_TEMPLATE_HASH).cloned(),
            labels: pod.labels().clone(),
            annotations: pod.annotations().clone(),
        }
    }
}

/// One thing the reconciler does to move the Sandbox along.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Step {
    /// `shutdownTime` passed.
    DeleteSandbox,
    /// `pauseTime` passed: set `spec.paused`.
    Pause,
    CreatePod,
    DeletePod,
    /// POST the stored init request to the runtime.
    InitRuntime,
}

#[derive(Clone, Debug, PartialEq)]
pub struct Plan {
    pub steps: Vec<Step>,
    pub status: SandboxStatus,
    /// Look again after this long even if nothing changes (a timer).
    pub requeue_after: Option<Duration>,
}

fn until(t: &Time, now: Timestamp) -> Duration {
    let d = t.0.as_millisecond() - now.as_millisecond();
    Duration::from_millis(u64::try_from(d).unwrap_or(0))
}

/// The next status and steps for `sbx` given its Pod (`None` when absent).
pub fn plan(sbx: &Sandbox, pod: Option<&PodView>, now: Timestamp) -> Plan {
    let spec = &sbx.spec;
    let old = sbx.status.clone().unwrap_or_default();
    let mut status = old.clone();
    status.observed_generation = sbx.metadata.generation;
    let mut steps = Vec::new();
    let now_t = Time(now);
    let gen_ = sbx.metadata.generation;
    let paused = spec.paused.unwrap_or(false);

    if let Some(t) = &spec.shutdown_time
        && t.0 <= now
    {
        return Plan {
            steps: vec![Step::DeleteSandbox],
            status,
            requeue_after: None,
        };
    }
    if !paused
        && let Some(t) = &spec.pause_time
        && t.0 <= now
    {
        return Plan {
            steps: vec![Step::Pause],
            status,
            requeue_after: None,
        };
    }
    let requeue_after = [
        spec.shutdown_time.as_ref(),
        spec.pause_time.as_ref().filter(|_| !paused),
    ]
    .into_iter()
    .flatten()
    .map(|t| until(t, now))
    .min();

    let phase = old.phase.unwrap_or(SandboxPhase::Pending);
    if phase.is_terminal() {
        return Plan {
            steps,
            status,
            requeue_after,
        };
    }

    let uid = sbx.metadata.uid.clone().unwrap_or_default();
    let (own, foreign) = match pod {
        Some(p) if p.owner_uid.as_deref() == Some(uid.as_str()) => (Some(p), false),
        Some(_) => (None, true),
        None => (None, false),
    };
    let set = |status: &mut SandboxStatus, t: &str, ok: bool, reason: &str, msg: &str| {
        paddock_crds::set_condition(&mut status.conditions, t, ok, reason, msg, &now_t, gen_)
    };

    if foreign {
        status.message =
            Some("waiting for the Pod of a previous Sandbox with this name to be deleted".into());
        return Plan {
            steps,
            status,
            requeue_after: Some(Duration::from_secs(2)),
        };
    }

    if paused {
        status.phase = Some(SandboxPhase::Paused);
        set(
            &mut status,
            cond::READY,
            false,
            cond::REASON_PENDING,
            "sandbox is paused",
        );
        match own {
            Some(p) => {
                if !p.terminating {
                    steps.push(Step::DeletePod);
                }
                set(
                    &mut status,
                    cond::PAUSED,
                    false,
                    cond::REASON_PENDING,
                    "deleting the Pod",
                );
            }
            None => {
                set(
                    &mut status,
                    cond::PAUSED,
                    true,
                    cond::REASON_STOP_PAUSE_SUCCEED,
                    "",
                );
                status.pod_info = None;
                status.sandbox_ip = None;
                status.node_name = None;
            }
        }
        status.message = None;
        return Plan {
            steps,
            status,
            requeue_after,
        };
    }

    let resuming = matches!(phase, SandboxPhase::Paused | SandboxPhase::Resuming);
    match own {
        None => {
            if phase == SandboxPhase::Running {
                status.phase = Some(SandboxPhase::Failed);
                status.message = Some("Pod Not Found".into());
                set(
                    &mut status,
                    cond::READY,
                    false,
                    cond::REASON_FAILED,
                    "Pod Not Found",
                );
            } else {
                steps.push(Step::CreatePod);
                if resuming {
                    status.phase = Some(SandboxPhase::Resuming);
                    set(
                        &mut status,
                        cond::RESUMED,
                        false,
                        cond::REASON_CREATE_POD,
                        "",
                    );
                } else {
                    status.phase = Some(SandboxPhase::Pending);
                }
            }
        }
        Some(p) if p.terminating => {
            if phase == SandboxPhase::Running {
                status.phase = Some(SandboxPhase::Failed);
                status.message = Some("Pod is being deleted".into());
                set(
                    &mut status,
                    cond::READY,
                    false,
                    cond::REASON_FAILED,
                    "Pod is being deleted",
                );
            }
            // Otherwise (a pause just ended) wait for the old Pod to go before making a new one.
        }
        Some(p) => {
            status.pod_info = Some(PodInfo {
                annotations: p.annotations.clone(),
                labels: p.labels.clone(),
                node_name: p.node.clone(),
                pod_ip: p.ip.clone(),
                pod_uid: Some(p.uid.clone()),
            });
            status.node_name = p.node.clone();
            status.sandbox_ip = p.ip.clone();
            status.update_revision = p.revision.clone().or(status.update_revision);
            match p.phase {
                PodPhase::Succeeded => {
                    status.phase = Some(SandboxPhase::Succeeded);
                    set(
                        &mut status,
                        cond::READY,
                        false,
                        cond::REASON_SUCCEEDED,
                        "Pod succeeded",
                    );
                }
                PodPhase::Failed => {
                    status.phase = Some(SandboxPhase::Failed);
                    status.message = Some("Pod failed".into());
                    set(
                        &mut status,
                        cond::READY,
                        false,
                        cond::REASON_FAILED,
                        "Pod failed",
                    );
                }
                PodPhase::Running => {
                    if resuming {
                        set(
                            &mut status,
                            cond::RESUMED,
                            true,
                            cond::REASON_RESUME_POD,
                            "",
                        );
                        status.conditions.retain(|c| c.type_ != cond::PAUSED);
                        set(
                            &mut status,
                            cond::RUNTIME_INITIALIZED,
                            false,
                            cond::REASON_PENDING,
                            "",
                        );
                    }
                    status.phase = Some(SandboxPhase::Running);
                    status.message = None;
                    ready_condition(&mut status, p, &set);
                    let wants_init = sbx
                        .annotations()
                        .contains_key(keys::ANNOTATION_INIT_RUNTIME_REQUEST);
                    let initialized = find_condition(&status.conditions, cond::RUNTIME_INITIALIZED)
                        .is_some_and(|c| c.status == "True");
                    if p.ready && p.ip.is_some() && wants_init && !initialized {
                        steps.push(Step::InitRuntime);
                    }
                }
                PodPhase::Pending | PodPhase::Unknown => {
                    status.phase = Some(if resuming {
                        SandboxPhase::Resuming
                    } else {
                        SandboxPhase::Pending
                    });
                    ready_condition(&mut status, p, &set);
                }
            }
        }
    }
    Plan {
        steps,
        status,
        requeue_after,
    }
}

fn ready_condition(
    status: &mut SandboxStatus,
    p: &PodView,
    set: &impl Fn(&mut SandboxStatus, &str, bool, &str, &str),
) {
    match (&p.waiting, p.ready) {
        (_, true) => set(status, cond::READY, true, cond::REASON_POD_READY, ""),
        (Some((reason, msg)), false) => {
            let msg = format!("{reason}: {msg}");
            set(
                status,
                cond::READY,
                false,
                cond::REASON_START_CONTAINER_FAILED,
                &msg,
            );
            status.message = Some(msg);
        }
        (None, false) => set(
            status,
            cond::READY,
            false,
            cond::REASON_POD_READY,
            "Pod is not ready",
        ),
    }
}

/// Whether a Sandbox is ready for use: Running with a ready Pod.
pub fn is_ready(sbx: &Sandbox) -> bool {
    let Some(status) = &sbx.status else {
        return false;
    };
    status.phase == Some(SandboxPhase::Running)
        && find_condition(&status.conditions, cond::READY).is_some_and(|c| c.status == "True")
}

/// Whether a Sandbox is finished for good: being deleted, past its `shutdownTime`, or in a
/// terminal phase. Unlike [`SandboxState::Dead`], a claimed sandbox whose Pod is briefly not
/// ready is not gone (a claim must not replace it on a readiness blip).
pub fn is_gone(sbx: &Sandbox, now: Timestamp) -> bool {
    sbx.metadata.deletion_timestamp.is_some()
        || sbx.spec.shutdown_time.as_ref().is_some_and(|t| t.0 <= now)
        || sbx
            .status
            .as_ref()
            .and_then(|s| s.phase)
            .is_some_and(|p| p.is_terminal() || p == SandboxPhase::Terminating)
}

/// The manager-level state of a Sandbox: what a pool or a claim makes of it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SandboxState {
    /// No ready Pod yet (or a pool member whose Pod is not ready).
    Creating,
    /// A ready pool member, free to claim.
    Available,
    /// Claimed, running and ready.
    Running,
    /// Claimed and paused (or resuming).
    Paused,
    /// Deleted, past its shutdown time, finished, or claimed with a Pod that is not ready.
    Dead,
}

impl SandboxState {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Creating => "creating",
            Self::Available => "available",
            Self::Running => "running",
            Self::Paused => "paused",
            Self::Dead => "dead",
        }
    }
}

impl std::fmt::Display for SandboxState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The [`SandboxState`] of a Sandbox at `now`.
pub fn state(sbx: &Sandbox, now: Timestamp) -> SandboxState {
    if sbx.metadata.deletion_timestamp.is_some() {
        return SandboxState::Dead;
    }
    if sbx.spec.shutdown_time.as_ref().is_some_and(|t| t.0 <= now) {
        return SandboxState::Dead;
    }
    let phase = sbx.status.as_ref().and_then(|s| s.phase);
    match phase {
        None | Some(SandboxPhase::Pending) => return SandboxState::Creating,
        Some(SandboxPhase::Succeeded | SandboxPhase::Failed | SandboxPhase::Terminating) => {
            return SandboxState::Dead;
        }
        _ => {}
    }
    let pooled = sbx
        .owner_references()
        .iter()
        .any(|o| o.controller == Some(true) && o.kind == "SandboxSet");
    if pooled {
        return if is_ready(sbx) {
            SandboxState::Available
        } else {
            SandboxState::Creating
        };
    }
    match phase {
        Some(SandboxPhase::Running) if sbx.spec.paused == Some(true) => SandboxState::Paused,
        Some(SandboxPhase::Running) if is_ready(sbx) => SandboxState::Running,
        Some(SandboxPhase::Running) => SandboxState::Dead,
        _ => SandboxState::Paused,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use paddock_crds::SandboxSpec;

    fn at(s: i64) -> Timestamp {
        Timestamp::from_second(s).unwrap()
    }

    fn sandbox(phase: Option<SandboxPhase>) -> Sandbox {
        let mut s = Sandbox::new("sb", SandboxSpec::default());
        s.metadata.uid = Some("uid-1".into());
        s.metadata.generation = Some(1);
        s.status = Some(SandboxStatus {
            phase,
            ..Default::default()
        });
        s
    }

    fn pod(phase: &str, ready: bool) -> PodView {
        PodView {
            uid: "pod-1".into(),
            owner_uid: Some("uid-1".into()),
            phase: PodPhase::parse(phase),
            ready,
            ip: Some("10.0.0.5".into()),
            node: Some("node".into()),
            revision: Some("abc".into()),
            ..Default::default()
        }
    }

    fn ready(st: &SandboxStatus) -> Option<(String, String)> {
        find_condition(&st.conditions, cond::READY).map(|c| (c.status.clone(), c.reason.clone()))
    }

    #[test]
    fn a_new_sandbox_creates_its_pod() {
        let p = plan(&sandbox(None), None, at(10));
        assert_eq!(p.steps, vec![Step::CreatePod]);
        assert_eq!(p.status.phase, Some(SandboxPhase::Pending));
    }

    #[test]
    fn a_running_pod_makes_the_sandbox_running_with_ip_and_node() {
        let p = plan(
            &sandbox(Some(SandboxPhase::Pending)),
            Some(&pod("Running", true)),
            at(10),
        );
        assert!(p.steps.is_empty());
        assert_eq!(p.status.phase, Some(SandboxPhase::Running));
        assert_eq!(p.status.sandbox_ip.as_deref(), Some("10.0.0.5"));
        assert_eq!(p.status.node_name.as_deref(), Some("node"));
        assert_eq!(p.status.update_revision.as_deref(), Some("abc"));
        assert_eq!(ready(&p.status), Some(("True".into(), "PodReady".into())));
    }

    #[test]
    fn a_crashing_container_is_reported_not_retried() {
        let mut bad = pod("Running", false);
        bad.waiting = Some(("CrashLoopBackOff".into(), "container main: back-off".into()));
        let p = plan(&sandbox(Some(SandboxPhase::Pending)), Some(&bad), at(10));
        assert!(p.steps.is_empty());
        assert_eq!(
            ready(&p.status),
            Some(("False".into(), cond::REASON_START_CONTAINER_FAILED.into()))
        );
        assert!(p.status.message.unwrap().contains("CrashLoopBackOff"));
    }

    #[test]
    fn a_running_sandbox_whose_pod_vanished_fails() {
        let p = plan(&sandbox(Some(SandboxPhase::Running)), None, at(10));
        assert!(p.steps.is_empty());
        assert_eq!(p.status.phase, Some(SandboxPhase::Failed));
        assert_eq!(p.status.message.as_deref(), Some("Pod Not Found"));
    }

    #[test]
    fn pause_deletes_the_pod_then_reports_paused() {
        let mut s = sandbox(Some(SandboxPhase::Running));
        s.spec.paused = Some(true);
        let p = plan(&s, Some(&pod("Running", true)), at(10));
        assert_eq!(p.steps, vec![Step::DeletePod]);
        assert_eq!(p.status.phase, Some(SandboxPhase::Paused));
        let paused = find_condition(&p.status.conditions, cond::PAUSED).unwrap();
        assert_eq!(
            (paused.status.as_str(), paused.reason.as_str()),
            ("False", "Pending")
        );

        let mut terminating = pod("Running", true);
        terminating.terminating = true;
        assert!(plan(&s, Some(&terminating), at(10)).steps.is_empty());

        let p = plan(&s, None, at(11));
        assert!(p.steps.is_empty());
        let paused = find_condition(&p.status.conditions, cond::PAUSED).unwrap();
        assert_eq!(paused.status, "True");
        assert_eq!(paused.reason, cond::REASON_STOP_PAUSE_SUCCEED);
        assert_eq!(p.status.sandbox_ip, None);
    }

    #[test]
    fn resume_recreates_the_pod_and_asks_for_init_once_ready() {
        let mut s = sandbox(Some(SandboxPhase::Paused));
        s.annotations_mut()
            .insert(keys::ANNOTATION_INIT_RUNTIME_REQUEST.into(), "{}".into());
        let p = plan(&s, None, at(10));
        assert_eq!(p.steps, vec![Step::CreatePod]);
        assert_eq!(p.status.phase, Some(SandboxPhase::Resuming));

        s.status = Some(p.status);
        let p = plan(&s, Some(&pod("Pending", false)), at(11));
        assert!(p.steps.is_empty());
        assert_eq!(p.status.phase, Some(SandboxPhase::Resuming));

        let p = plan(&s, Some(&pod("Running", true)), at(12));
        assert_eq!(p.status.phase, Some(SandboxPhase::Running));
        assert_eq!(p.steps, vec![Step::InitRuntime]);
        assert!(find_condition(&p.status.conditions, cond::PAUSED).is_none());
        let resumed = find_condition(&p.status.conditions, cond::RESUMED).unwrap();
        assert_eq!(resumed.status, "True");
    }

    #[test]
    fn init_is_not_repeated_once_done() {
        let mut s = sandbox(Some(SandboxPhase::Running));
        s.annotations_mut()
            .insert(keys::ANNOTATION_INIT_RUNTIME_REQUEST.into(), "{}".into());
        assert_eq!(
            plan(&s, Some(&pod("Running", true)), at(1)).steps,
            vec![Step::InitRuntime]
        );
        let st = s.status.get_or_insert_with(Default::default);
        paddock_crds::set_condition(
            &mut st.conditions,
            cond::RUNTIME_INITIALIZED,
            true,
            "Succeeded",
            "",
            &Time(at(1)),
            None,
        );
        assert!(
            plan(&s, Some(&pod("Running", true)), at(2))
                .steps
                .is_empty()
        );
    }

    #[test]
    fn timers_delete_pause_and_requeue_at_the_nearest_deadline() {
        let mut s = sandbox(Some(SandboxPhase::Running));
        s.spec.shutdown_time = Some(Time(at(100)));
        s.spec.pause_time = Some(Time(at(50)));
        let p = plan(&s, Some(&pod("Running", true)), at(10));
        assert_eq!(p.requeue_after, Some(Duration::from_secs(40)));
        assert_eq!(
            plan(&s, Some(&pod("Running", true)), at(50)).steps,
            vec![Step::Pause]
        );
        s.spec.paused = Some(true);
        let p = plan(&s, None, at(60));
        assert_eq!(p.requeue_after, Some(Duration::from_secs(40)));
        assert_eq!(plan(&s, None, at(100)).steps, vec![Step::DeleteSandbox]);
    }

    #[test]
    fn a_pod_of_an_older_sandbox_is_not_adopted() {
        let mut other = pod("Running", true);
        other.owner_uid = Some("uid-0".into());
        let p = plan(&sandbox(None), Some(&other), at(1));
        assert!(p.steps.is_empty());
        assert_eq!(p.requeue_after, Some(Duration::from_secs(2)));
    }

    #[test]
    fn a_claimed_sandbox_with_a_not_ready_pod_is_dead_to_the_manager_but_not_gone() {
        let mut s = sandbox(Some(SandboxPhase::Running));
        assert_eq!(state(&s, at(1)), SandboxState::Dead);
        assert!(!is_gone(&s, at(1)));
        s.spec.shutdown_time = Some(Time(at(1)));
        assert!(is_gone(&s, at(1)));
        assert!(is_gone(&sandbox(Some(SandboxPhase::Failed)), at(1)));
    }

    #[test]
    fn pod_phases_parse_and_an_unknown_one_waits_like_pending() {
        assert_eq!(PodPhase::parse("Running"), PodPhase::Running);
        assert_eq!(PodPhase::parse("Succeeded"), PodPhase::Succeeded);
        assert_eq!(PodPhase::parse("Failed"), PodPhase::Failed);
        assert_eq!(PodPhase::parse("Pending"), PodPhase::Pending);
        assert_eq!(PodPhase::parse("Hibernating"), PodPhase::Unknown);
        let p = plan(&sandbox(None), Some(&pod("Hibernating", false)), at(1));
        assert_eq!(p.status.phase, Some(SandboxPhase::Pending));
        assert!(p.steps.is_empty());
    }

    #[test]
    fn terminal_phases_stay() {
        let p = plan(&sandbox(Some(SandboxPhase::Failed)), None, at(1));
        assert!(p.steps.is_empty());
        assert_eq!(p.status.phase, Some(SandboxPhase::Failed));
    }
}
