//! SandboxSet planning: which pool sandboxes to delete and how many to create, and the status
//! counters that follow.
//!
//! Only unclaimed members are seen here (a claim removes the SandboxSet owner reference).
//! Order of concerns per round: dead members go; then either scale (`replicas` ≠ live) or,
//! only when the count is right, roll old-revision members out within `maxUnavailable`.

use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

use super::scaled_value;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MemberState {
    Creating,
    Available,
    Dead,
}

#[derive(Clone, Debug, PartialEq)]
pub struct Member {
    pub name: String,
    pub revision: Option<String>,
    pub state: MemberState,
    /// Creation time in seconds, for oldest/newest ordering.
    pub created: i64,
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Counters {
    pub replicas: i32,
    pub available: i32,
    pub updated: i32,
    pub updated_available: i32,
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PoolPlan {
    /// Dead members, deleted unconditionally.
    pub delete_dead: Vec<String>,
    /// Surplus members (scale down), old revisions and creating ones first.
    pub scale_down: Vec<String>,
    /// Old-revision members replaced by the rollout.
    pub rollout: Vec<String>,
    /// New members to create from the update revision.
    pub create: i32,
    pub counters: Counters,
}

/// The default of `updateStrategy.maxUnavailable` (also set by the mutating webhook).
pub const DEFAULT_UPDATE_MAX_UNAVAILABLE: &str = "20%";

pub fn plan(
    replicas: i32,
    revision: &str,
    members: &[Member],
    scale_max_unavailable: Option<&IntOrString>,
    update_max_unavailable: Option<&IntOrString>,
    may_create: bool,
) -> PoolPlan {
    let replicas = replicas.max(0);
    let is_new = |m: &Member| m.revision.as_deref() == Some(revision);
    let mut out = PoolPlan {
        delete_dead: members
            .iter()
            .filter(|m| m.state == MemberState::Dead)
            .map(|m| m.name.clone())
            .collect(),
        ..Default::default()
    };
    let mut live: Vec<&Member> = members
        .iter()
        .filter(|m| m.state != MemberState::Dead)
        .collect();
    let creating = live
        .iter()
        .filter(|m| m.state == MemberState::Creating)
        .count() as i32;
    let delta = replicas - live.len() as i32;

    if delta > 0 {
        let limit = scale_max_unavailable
            .and_then(|v| scaled_value(v, replicas))
            .map(|max| (max - creating).max(0))
            .unwrap_or(delta);
        out.create = if may_create { delta.min(limit) } else { 0 };
    } else if delta < 0 {
        // Old revision first, then creating before available, then newest first.
        live.sort_by_key(|m| (is_new(m), m.state == MemberState::Available, -m.created));
        out.scale_down = live[..(-delta) as usize]
            .iter()
            .map(|m| m.name.clone())
            .collect();
    } else {
        let updated_creating = live
            .iter()
            .filter(|m| is_new(m) && m.state == MemberState::Creating)
            .count() as i32;
        let mut old_available: Vec<&&Member> = live
            .iter()
            .filter(|m| !is_new(m) && m.state == MemberState::Available)
            .collect();
        // Creating members of an old revision are not serving anyone yet: replace freely.
        out.rollout = live
            .iter()
            .filter(|m| !is_new(m) && m.state == MemberState::Creating)
            .map(|m| m.name.clone())
            .collect();
        let default = IntOrString::String(DEFAULT_UPDATE_MAX_UNAVAILABLE.into());
        let max = scaled_value(update_max_unavailable.unwrap_or(&default), replicas).unwrap_or(1);
        let budget = (max - updated_creating).max(0) as usize;
        old_available.sort_by_key(|m| m.created);
        out.rollout
            .extend(old_available.iter().take(budget).map(|m| m.name.clone()));
    }

    let gone = |m: &&Member| !out.scale_down.contains(&m.name) && !out.rollout.contains(&m.name);
    let remaining: Vec<&Member> = live.into_iter().filter(gone).collect();
    let available = remaining
        .iter()
        .filter(|m| m.state == MemberState::Available);
    out.counters = Counters {
        replicas: remaining.len() as i32 + out.create,
        available: available.clone().count() as i32,
        updated: remaining.iter().filter(|m| is_new(m)).count() as i32 + out.create,
        updated_available: available.filter(|m| is_new(m)).count() as i32,
    };
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn m(name: &str, rev: &str, state: MemberState, created: i64) -> Member {
        Member {
            name: name.into(),
            revision: Some(rev.into()),
            state,
            created,
        }
    }
    use MemberState::*;

    #[test]
    fn an_empty_pool_fills_to_replicas() {
        let p = plan(5, "r1", &[], None, None, true);
        assert_eq!(p.create, 5);
        assert_eq!(p.counters.replicas, 5);
        assert_eq!(p.counters.updated, 5);
        assert_eq!(p.counters.available, 0);
    }

    #[test]
    fn scale_up_respects_scale_max_unavailable_minus_creating() {
        let members = [m("a", "r1", Creating, 1)];
        let p = plan(10, "r1", &members, Some(&IntOrString::Int(3)), None, true);
        assert_eq!(p.create, 2);
        let p = plan(
            10,
            "r1",
            &members,
            Some(&IntOrString::String("50%".into())),
            None,
            true,
        );
        assert_eq!(p.create, 4);
    }

    #[test]
    fn creation_can_be_held_back_while_backing_off() {
        let p = plan(3, "r1", &[], None, None, false);
        assert_eq!(p.create, 0);
    }

    #[test]
    fn dead_members_are_deleted_and_replaced() {
        let members = [m("a", "r1", Dead, 1), m("b", "r1", Available, 2)];
        let p = plan(2, "r1", &members, None, None, true);
        assert_eq!(p.delete_dead, vec!["a".to_string()]);
        assert_eq!(p.create, 1);
    }

    #[test]
    fn scale_down_prefers_old_then_creating_then_newest() {
        let members = [
            m("new-avail-old", "r2", Available, 1),
            m("new-avail-young", "r2", Available, 5),
            m("new-creating", "r2", Creating, 2),
            m("old-avail", "r1", Available, 3),
        ];
        let p = plan(1, "r2", &members, None, None, true);
        assert_eq!(
            p.scale_down,
            vec!["old-avail", "new-creating", "new-avail-young"]
        );
        assert_eq!(p.counters.replicas, 1);
        assert_eq!(p.counters.available, 1);
    }

    #[test]
    fn rollout_replaces_old_available_within_max_unavailable() {
        let members: Vec<Member> = (0..5)
            .map(|i| m(&format!("s{i}"), "r1", Available, i))
            .collect();
        // 20% of 5 rounds up to 1: one old sandbox at a time, oldest first.
        let p = plan(5, "r2", &members, None, None, true);
        assert_eq!(p.rollout, vec!["s0"]);
        assert_eq!(p.create, 0);
        assert_eq!(
            p.counters,
            Counters {
                replicas: 4,
                available: 4,
                updated: 0,
                updated_available: 0
            }
        );

        // Next round: the count is short by one, so the pool scales up with the new revision.
        let p = plan(5, "r2", &members[1..], None, None, true);
        assert_eq!(p.create, 1);
        assert!(p.rollout.is_empty());

        // While that replacement is creating, nothing more is taken away.
        let mut next: Vec<Member> = members[1..].to_vec();
        next.push(m("n0", "r2", Creating, 10));
        let p = plan(5, "r2", &next, None, None, true);
        assert!(p.rollout.is_empty());
        assert_eq!(p.counters.updated, 1);
        assert_eq!(p.counters.updated_available, 0);

        // Once it is available, the next old one goes.
        next.last_mut().unwrap().state = Available;
        let p = plan(5, "r2", &next, None, None, true);
        assert_eq!(p.rollout, vec!["s1"]);
        assert_eq!(p.counters.updated_available, 1);
    }

    #[test]
    fn rollout_replaces_old_creating_members_freely() {
        let members = [
            m("a", "r1", Creating, 1),
            m("b", "r1", Creating, 2),
            m("c", "r1", Available, 3),
        ];
        let p = plan(
            3,
            "r2",
            &members,
            Some(&IntOrString::Int(1)),
            Some(&IntOrString::Int(1)),
            true,
        );
        assert_eq!(p.rollout, vec!["a", "b", "c"]);
    }

    #[test]
    fn nothing_old_means_all_updated() {
        let members = [m("a", "r1", Available, 1), m("b", "r1", Creating, 2)];
        let p = plan(2, "r1", &members, None, None, true);
        assert!(p.rollout.is_empty() && p.scale_down.is_empty() && p.create == 0);
        assert_eq!(
            p.counters,
            Counters {
                replicas: 2,
                available: 1,
                updated: 2,
                updated_available: 1
            }
        );
    }
}
