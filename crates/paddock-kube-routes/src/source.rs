//! Where a route's facts come from: a Sandbox resource, or a manager's push.

use std::net::{IpAddr, Ipv4Addr};

use paddock_crds::{Sandbox, find_condition, keys, sandbox_conditions};
use paddock_gateway::peer::{RouteState, RouteUpdate};
use paddock_gateway::{RouteInfo, Tokens};
use paddock_infra::SandboxId;

use crate::table::{Change, parse_version};

/// One sandbox's state, as the table takes it.
#[derive(Debug, Clone)]
pub struct Observation {
    pub id: String,
    pub version: Option<u64>,
    pub change: Change,
}

/// Reads a Sandbox resource. `None` for a resource whose name makes no sandbox id.
///
/// Only claimed sandboxes are routed (pool members belong to no one); a sandbox that is
/// paused or not Ready keeps its route marked paused, so requests get the "paused" answer
/// rather than "not found"; one being deleted is gone.
pub fn observe(sandbox: &Sandbox) -> Option<Observation> {
    let meta = &sandbox.metadata;
    let id = SandboxId::for_resource(meta.namespace.as_deref()?, meta.name.as_deref()?).ok()?;
    let version = parse_version(meta.resource_version.as_deref());
    let change = if meta.deletion_timestamp.is_some() {
        Change::Gone
    } else if !claimed(sandbox) {
        Change::Unrouted
    } else {
        Change::Route(route_of(sandbox))
    };
    Some(Observation {
        id: id.to_string(),
        version,
        change,
    })
}

fn claimed(sandbox: &Sandbox) -> bool {
    sandbox
        .metadata
        .labels
        .as_ref()
        .and_then(|l| l.get(keys::LABEL_SANDBOX_CLAIMED))
        .is_some_and(|v| v == "true")
}

fn route_of(sandbox: &Sandbox) -> RouteInfo {
    let status = sandbox.status.as_ref();
    let ip = status
        .and_then(|s| s.pod_info.as_ref())
        .and_then(|p| p.pod_ip.as_deref())
        .or_else(|| status.and_then(|s| s.sandbox_ip.as_deref()))
        .and_then(|ip| ip.parse::<IpAddr>().ok());
    let ready = status
        .and_then(|s| find_condition(&s.conditions, sandbox_conditions::READY))
        .is_some_and(|c| c.status == "True");
    let paused = sandbox.spec.paused == Some(true) || !ready || ip.is_none();
    let annotation = |key: &str| {
        sandbox
            .metadata
            .annotations
            .as_ref()
            .and_then(|a| a.get(key))
            .filter(|v| !v.is_empty())
            .map(|v| v.as_str().into())
    };
    RouteInfo {
        // A paused route is never dialled: the address only fills the field.
        ip: ip.unwrap_or(IpAddr::V4(Ipv4Addr::UNSPECIFIED)),
        paused,
        tokens: Tokens {
            access: annotation(keys::ANNOTATION_RUNTIME_ACCESS_TOKEN),
            traffic: annotation(keys::ANNOTATION_TRAFFIC_ACCESS_TOKEN),
        },
    }
}

/// Why a push was refused (the peer listener answers 400 with this).
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum BadPush {
    #[error("sandboxID {0:?} is not a sandbox id")]
    Id(String),
    #[error("a running route needs an ip")]
    NoIp,
    #[error("resourceVersion {0:?} is not an integer")]
    Version(String),
}

/// Reads a manager's push.
pub fn from_push(update: RouteUpdate) -> Result<Observation, BadPush> {
    let id = SandboxId::new(update.sandbox_id.clone())
        .map_err(|_| BadPush::Id(update.sandbox_id.clone()))?;
    let version = match update.resource_version.as_deref() {
        None => None,
        Some(v) => Some(v.parse::<u64>().map_err(|_| BadPush::Version(v.into()))?),
    };
    let tokens = Tokens {
        access: update
            .access_token
            .filter(|t| !t.is_empty())
            .map(Into::into),
        traffic: update
            .traffic_token
            .filter(|t| !t.is_empty())
            .map(Into::into),
    };
    let change = match update.state {
        RouteState::Dead => Change::Gone,
        RouteState::Running => Change::Route(RouteInfo {
            ip: update.ip.ok_or(BadPush::NoIp)?,
            paused: false,
            tokens,
        }),
        RouteState::Paused => Change::Route(RouteInfo {
            ip: update.ip.unwrap_or(IpAddr::V4(Ipv4Addr::UNSPECIFIED)),
            paused: true,
            tokens,
        }),
    };
    Ok(Observation {
        id: id.to_string(),
        version,
        change,
    })
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
    use paddock_crds::{PodInfo, SandboxStatus};

    use super::*;

    fn sandbox(claimed: bool, ready: bool, paused: bool) -> Sandbox {
        let mut s = Sandbox::new("sbx-1", Default::default());
        s.metadata.namespace = Some("team-a".into());
        s.metadata.resource_version = Some("42".into());
        s.metadata.labels = Some(BTreeMap::from([(
            keys::LABEL_SANDBOX_CLAIMED.to_string(),
            claimed.to_string(),
        )]));
        s.metadata.annotations = Some(BTreeMap::from([
            (
                keys::ANNOTATION_RUNTIME_ACCESS_TOKEN.to_string(),
                "acc".to_string(),
            ),
            (
                keys::ANNOTATION_TRAFFIC_ACCESS_TOKEN.to_string(),
                "trf".to_string(),
            ),
        ]));
        s.spec.paused = paused.then_some(true);
        s.status = Some(SandboxStatus {
            conditions: vec![Condition {
                type_: sandbox_conditions::READY.into(),
                status: if ready { "True" } else { "False" }.into(),
                reason: "PodReady".into(),
                message: String::new(),
                last_transition_time: Time(Default::default()),
                observed_generation: None,
            }],
            pod_info: Some(PodInfo {
                pod_ip: Some("10.217.0.9".into()),
                ..Default::default()
            }),
            ..Default::default()
        });
        s
    }

    fn route(o: Observation) -> RouteInfo {
        match o.change {
            Change::Route(r) => r,
            other => panic!("expected a route, got {other:?}"),
        }
    }

    #[test]
    fn a_claimed_ready_sandbox_routes_to_its_pod_with_its_tokens() {
        let o = observe(&sandbox(true, true, false)).unwrap();
        assert_eq!((o.id.as_str(), o.version), ("team-a--sbx-1", Some(42)));
        let r = route(o);
        assert_eq!(r.ip, "10.217.0.9".parse::<IpAddr>().unwrap());
        assert!(!r.paused);
        assert_eq!(r.tokens.access.as_deref(), Some("acc"));
        assert_eq!(r.tokens.traffic.as_deref(), Some("trf"));
    }

    #[test]
    fn paused_or_not_ready_is_paused_unclaimed_is_unrouted_deleting_is_gone() {
        assert!(route(observe(&sandbox(true, true, true)).unwrap()).paused);
        assert!(route(observe(&sandbox(true, false, false)).unwrap()).paused);
        let mut no_ip = sandbox(true, true, false);
        no_ip.status.as_mut().unwrap().pod_info = None;
        assert!(route(observe(&no_ip).unwrap()).paused);
        assert!(matches!(
            observe(&sandbox(false, true, false)).unwrap().change,
            Change::Unrouted
        ));
        let mut deleting = sandbox(true, true, false);
        deleting.metadata.deletion_timestamp = Some(Time(Default::default()));
        assert!(matches!(observe(&deleting).unwrap().change, Change::Gone));
    }

    fn push(state: RouteState, ip: Option<&str>, rv: Option<&str>) -> RouteUpdate {
        RouteUpdate {
            sandbox_id: "team-a--sbx-1".into(),
            ip: ip.map(|i| i.parse().unwrap()),
            state,
            access_token: Some("acc".into()),
            traffic_token: None,
            resource_version: rv.map(Into::into),
        }
    }

    #[test]
    fn pushes_become_changes_and_bad_ones_say_why() {
        let o = from_push(push(RouteState::Running, Some("10.217.0.9"), Some("7"))).unwrap();
        assert_eq!(o.version, Some(7));
        let r = route(o);
        assert!(!r.paused);
        assert_eq!(r.tokens.access.as_deref(), Some("acc"));
        assert!(route(from_push(push(RouteState::Paused, None, None)).unwrap()).paused);
        assert!(matches!(
            from_push(push(RouteState::Dead, None, Some("8")))
                .unwrap()
                .change,
            Change::Gone
        ));
        assert_eq!(
            from_push(push(RouteState::Running, None, Some("7"))).unwrap_err(),
            BadPush::NoIp
        );
        assert_eq!(
            from_push(push(RouteState::Running, Some("10.0.0.1"), Some("x7"))).unwrap_err(),
            BadPush::Version("x7".into())
        );
        let mut bad = push(RouteState::Dead, None, None);
        bad.sandbox_id = "Bad/Id".into();
        assert!(matches!(from_push(bad), Err(BadPush::Id(_))));
    }
}
