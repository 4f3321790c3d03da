//! The Checkpoint status machine: `Pending → Creating → Succeeded | Failed`, then deletion
//! `ttlAfterFinished` after the end.
//!
//! Only `podInfo` checkpoints exist so far: they record which Pod the sandbox ran as and succeed
//! at once. Memory and file-system checkpoints need a node-side agent that is not built yet;
//! they fail with a message that says so instead of hanging in `Creating`.

use std::time::Duration;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::Timestamp;
use paddock_crds::{Checkpoint, CheckpointPhase, CheckpointStatus};

use super::duration;

/// What the reconciler found about the checkpointed sandbox.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Target {
    /// Found, with a Pod to describe.
    Present,
    Missing,
    /// Neither `sandboxName` nor `podName` given.
    Unnamed,
}

#[derive(Clone, Debug, PartialEq)]
pub enum Next {
    /// Write this status, then look again.
    Status(CheckpointStatus),
    /// The TTL ran out.
    Delete,
    /// Nothing to do until then (or until a change if `None`).
    Wait(Option<Duration>),
}

pub const UNSUPPORTED: &str = "memory and filesystem checkpoints are not supported yet; \
     only podInfo checkpoints can be taken";

pub fn next(cp: &Checkpoint, target: Target, now: Timestamp) -> Next {
    let old = cp.status.clone().unwrap_or_default();
    let mut st = old.clone();
    st.observed_generation = cp.metadata.generation;
    let uid = cp.metadata.uid.clone().unwrap_or_default();
    match old.phase {
        None => {
            st.phase = Some(CheckpointPhase::Pending);
            Next::Status(st)
        }
        Some(CheckpointPhase::Pending) => {
            let contents = cp.spec.persistent_contents.clone().unwrap_or_default();
            let unsupported = contents.iter().any(|c| c != "podInfo");
            let fail = match (unsupported, target) {
                (true, _) => Some(UNSUPPORTED.to_string()),
                (false, Target::Unnamed) => {
                    Some("spec.sandboxName or spec.podName is required".into())
                }
                (false, Target::Missing) => Some(format!(
                    "sandbox {} not found",
                    cp.spec
                        .sandbox_name
                        .clone()
                        .or(cp.spec.pod_name.clone())
                        .unwrap_or_default()
                )),
                (false, Target::Present) => None,
            };
            match fail {
                Some(msg) => {
                    st.phase = Some(CheckpointPhase::Failed);
                    st.message = Some(msg);
                    st.completion_time = Some(Time(now));
                }
                None => st.phase = Some(CheckpointPhase::Creating),
            }
            Next::Status(st)
        }
        Some(CheckpointPhase::Creating) => {
            st.phase = Some(CheckpointPhase::Succeeded);
            st.checkpoint_id = Some(checkpoint_id(&uid));
            st.pod_template_delta = Some(serde_json::json!({}));
            st.completion_time = Some(Time(now));
            st.message = None;
            Next::Status(st)
        }
        Some(CheckpointPhase::Succeeded | CheckpointPhase::Failed) => {
            let Some(ttl) = cp.spec.ttl_after_finished.as_deref() else {
                return Next::Wait(None);
            };
            let Ok(ttl) = duration::parse(ttl) else {
                return Next::Wait(None);
            };
            let done = old.completion_time.map_or(now, |t| t.0);
            let left = done.as_millisecond() + ttl - now.as_millisecond();
            if left <= 0 {
                Next::Delete
            } else {
                Next::Wait(Some(duration::to_std(left)))
            }
        }
        Some(CheckpointPhase::Terminating) => Next::Wait(None),
    }
}

/// A stable, label-safe ID from the object's UID.
pub fn checkpoint_id(uid: &str) -> String {
    let hex: String = uid
        .chars()
        .filter(char::is_ascii_hexdigit)
        .take(16)
        .collect();
    format!("cp-{hex}")
}

#[cfg(test)]
mod tests {
    use super::*;
    use paddock_crds::CheckpointSpec;

    fn at(s: i64) -> Timestamp {
        Timestamp::from_second(s).unwrap()
    }

    fn cp(contents: &[&str], phase: Option<CheckpointPhase>) -> Checkpoint {
        let mut c = Checkpoint::new(
            "c",
            CheckpointSpec {
                sandbox_name: Some("sb".into()),
                persistent_contents: Some(contents.iter().map(|s| s.to_string()).collect()),
                ttl_after_finished: Some("30m".into()),
                ..Default::default()
            },
        );
        c.metadata.uid = Some("0123abcd-4567-89ef-0123-456789abcdef".into());
        c.status = Some(CheckpointStatus {
            phase,
            completion_time: Some(Time(at(100))),
            ..Default::default()
        });
        c
    }

    fn phase(n: Next) -> (Option<CheckpointPhase>, Option<String>) {
        match n {
            Next::Status(s) => (s.phase, s.message),
            other => panic!("expected a status, got {other:?}"),
        }
    }

    #[test]
    fn pod_info_checkpoints_go_pending_creating_succeeded() {
        let mut c = cp(&["podInfo"], None);
        c.status = None;
        assert_eq!(
            phase(next(&c, Target::Present, at(1))).0,
            Some(CheckpointPhase::Pending)
        );
        let c = cp(&["podInfo"], Some(CheckpointPhase::Pending));
        assert_eq!(
            phase(next(&c, Target::Present, at(1))).0,
            Some(CheckpointPhase::Creating)
        );
        let c = cp(&["podInfo"], Some(CheckpointPhase::Creating));
        match next(&c, Target::Present, at(1)) {
            Next::Status(s) => {
                assert_eq!(s.phase, Some(CheckpointPhase::Succeeded));
                assert_eq!(s.checkpoint_id.as_deref(), Some("cp-0123abcd456789ef"));
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn memory_and_filesystem_fail_with_a_clear_message() {
        for kind in ["memory", "filesystem"] {
            let c = cp(&["podInfo", kind], Some(CheckpointPhase::Pending));
            let (p, msg) = phase(next(&c, Target::Present, at(1)));
            assert_eq!(p, Some(CheckpointPhase::Failed));
            assert_eq!(msg.as_deref(), Some(UNSUPPORTED));
        }
    }

    #[test]
    fn a_missing_sandbox_fails() {
        let c = cp(&["podInfo"], Some(CheckpointPhase::Pending));
        let (p, msg) = phase(next(&c, Target::Missing, at(1)));
        assert_eq!(p, Some(CheckpointPhase::Failed));
        assert!(msg.unwrap().contains("sb not found"));
    }

    #[test]
    fn finished_checkpoints_are_deleted_after_the_ttl() {
        let c = cp(&["podInfo"], Some(CheckpointPhase::Succeeded));
        assert_eq!(
            next(&c, Target::Present, at(160)),
            Next::Wait(Some(Duration::from_secs(1740)))
        );
        assert_eq!(next(&c, Target::Present, at(100 + 1800)), Next::Delete);
    }
}
