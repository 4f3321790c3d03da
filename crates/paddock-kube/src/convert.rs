//! Sandbox resource ↔ what the manager sees: [`SandboxInfo`], [`SandboxRecord`], templates.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::Timestamp;
use kube::ResourceExt;
use paddock_controller::desired::sandbox::is_ready;
use paddock_crds::{Sandbox, SandboxSet, keys};
use paddock_infra::{
    ApiState, Limits, OnTimeout, SandboxId, SandboxInfo, SandboxRecord, SandboxState,
};

/// The part of the manager's record that no other field of the Sandbox holds, as JSON.
pub const ANNOTATION_RECORD: &str = "e2b.agents.kruise.io/record";
/// The E2B metadata, as JSON (lossless: E2B metadata keys need not be valid annotation keys).
pub const ANNOTATION_METADATA: &str = "e2b.agents.kruise.io/metadata";

/// The end of a sandbox that never times out (neither `shutdownTime` nor `pauseTime`).
pub use paddock_infra::record::never;

/// What [`ANNOTATION_RECORD`] holds.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RecordMeta {
    pub team: String,
    pub template: String,
    pub started_at_ms: u64,
    pub on_timeout: OnTimeout,
    pub auto_resume: bool,
    pub allow_internet_access: bool,
    pub cpu_count: u32,
    pub memory_mb: u64,
    pub disk_mb: u64,
}

pub fn millis(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or_default()
}

pub fn to_time(t: SystemTime) -> Time {
    let ms = millis(t) as i64;
    Time(Timestamp::from_millisecond(ms).unwrap_or(Timestamp::UNIX_EPOCH))
}

pub fn from_time(t: &Time) -> SystemTime {
    let ms = t.0.as_millisecond();
    if ms <= 0 {
        UNIX_EPOCH
    } else {
        UNIX_EPOCH + Duration::from_millis(ms as u64)
    }
}

pub fn id_of(s: &Sandbox) -> Option<SandboxId> {
    SandboxId::for_resource(&s.namespace()?, &s.name_any()).ok()
}

pub fn is_claimed(s: &Sandbox) -> bool {
    s.labels()
        .get(keys::LABEL_SANDBOX_CLAIMED)
        .map(String::as_str)
        == Some("true")
}

/// The pod's IP, where the runtime listens.
pub fn pod_ip(s: &Sandbox) -> Option<IpAddr> {
    let st = s.status.as_ref()?;
    st.pod_info
        .as_ref()
        .and_then(|p| p.pod_ip.as_deref())
        .or(st.sandbox_ip.as_deref())
        .and_then(|ip| ip.parse().ok())
}

pub fn address(s: &Sandbox) -> SocketAddr {
    SocketAddr::new(
        pod_ip(s).unwrap_or(IpAddr::V4(Ipv4Addr::UNSPECIFIED)),
        keys::RUNTIME_PORT,
    )
}

/// Whether a claimed sandbox takes traffic: not paused, Ready and with a pod IP.
pub fn serves(s: &Sandbox) -> bool {
    s.metadata.deletion_timestamp.is_none()
        && !s.spec.paused.unwrap_or(false)
        && is_ready(s)
        && pod_ip(s).is_some()
}

pub fn state(s: &Sandbox) -> SandboxState {
    if s.metadata.deletion_timestamp.is_some() {
        SandboxState::Dead
    } else if s.spec.paused.unwrap_or(false) {
        SandboxState::Paused
    } else if serves(s) {
        SandboxState::Running
    } else {
        SandboxState::Creating
    }
}

pub fn record_meta(s: &Sandbox) -> Option<RecordMeta> {
    serde_json::from_str(s.annotations().get(ANNOTATION_RECORD)?).ok()
}

pub fn metadata(s: &Sandbox) -> BTreeMap<String, String> {
    s.annotations()
        .get(ANNOTATION_METADATA)
        .and_then(|m| serde_json::from_str(m).ok())
        .unwrap_or_default()
}

fn claimed_at_ms(s: &Sandbox) -> u64 {
    s.annotations()
        .get(keys::ANNOTATION_CLAIM_TIMESTAMP)
        .and_then(|t| t.parse::<Timestamp>().ok())
        .or_else(|| s.metadata.creation_timestamp.as_ref().map(|t| t.0))
        .map(|t| t.as_millisecond().max(0) as u64)
        .unwrap_or_default()
}

/// The limits of a pod template's first container (defaults where it sets none).
pub fn limits_of(pod: Option<&k8s_openapi::api::core::v1::PodTemplateSpec>) -> Limits {
    let mut l = Limits::default();
    let res = pod
        .and_then(|p| p.spec.as_ref())
        .and_then(|s| s.containers.first())
        .and_then(|c| c.resources.as_ref());
    let pick = |k: &str| {
        res.and_then(|r| {
            r.limits
                .as_ref()
                .and_then(|m| m.get(k))
                .or_else(|| r.requests.as_ref().and_then(|m| m.get(k)))
        })
    };
    if let Some(c) = pick("cpu").and_then(cpu_millis) {
        l.cpu_millis = c;
    }
    if let Some(m) = pick("memory").and_then(bytes) {
        l.memory_bytes = m;
    }
    l
}

/// `500m` → 500, `2` → 2000.
pub fn cpu_millis(q: &Quantity) -> Option<u32> {
    let s = q.0.trim();
    if let Some(m) = s.strip_suffix('m') {
        return m.parse().ok();
    }
    s.parse::<f64>().ok().map(|c| (c * 1000.0).round() as u32)
}

/// `512Mi` → 536870912, `1G` → 10^9, `1000` → 1000.
pub fn bytes(q: &Quantity) -> Option<u64> {
    let s = q.0.trim();
    let split = s.find(|c: char| c.is_ascii_alphabetic()).unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let n: f64 = num.parse().ok()?;
    let mult: f64 = match unit {
        "" => 1.0,
        "k" => 1e3,
        "M" => 1e6,
        "G" => 1e9,
        "T" => 1e12,
        "Ki" => 1024.0,
        "Mi" => 1024.0 * 1024.0,
        "Gi" => 1024.0 * 1024.0 * 1024.0,
        "Ti" => 1024.0f64.powi(4),
        _ => return None,
    };
    Some((n * mult) as u64)
}

pub fn set_limits(set: &SandboxSet) -> Limits {
    limits_of(set.spec.pod.template.as_ref())
}

/// What [`paddock_infra::Infra::get`] answers for a claimed sandbox.
pub fn info(s: &Sandbox) -> Option<SandboxInfo> {
    let meta = record_meta(s);
    let mut limits = limits_of(s.spec.pod.template.as_ref());
    if let Some(m) = &meta {
        limits.cpu_millis = m.cpu_count.saturating_mul(1000).max(10);
        limits.memory_bytes = (m.memory_mb << 20).max(16 << 20);
    }
    Some(SandboxInfo {
        id: id_of(s)?,
        template: meta
            .as_ref()
            .map(|m| m.template.clone())
            .unwrap_or_else(|| {
                s.labels()
                    .get(keys::LABEL_SANDBOX_POOL)
                    .cloned()
                    .unwrap_or_default()
            }),
        state: state(s),
        address: address(s),
        limits,
        allow_internet_access: meta.as_ref().is_none_or(|m| m.allow_internet_access),
        metadata: metadata(s),
        created_at_ms: claimed_at_ms(s),
        from_pool: true,
        bootstrap_token: s
            .annotations()
            .get(keys::ANNOTATION_RUNTIME_ACCESS_TOKEN)
            .cloned(),
    })
}

/// The manager's record kept in a Sandbox: `None` for a sandbox the manager did not hand out
/// (a pool member, one claimed by a SandboxClaim) or one being deleted.
pub fn record(s: &Sandbox) -> Option<SandboxRecord> {
    if !is_claimed(s) || s.metadata.deletion_timestamp.is_some() {
        return None;
    }
    let meta = record_meta(s)?;
    let end = match meta.on_timeout {
        OnTimeout::Kill => s.spec.shutdown_time.as_ref(),
        OnTimeout::Pause => s.spec.pause_time.as_ref(),
    };
    Some(SandboxRecord {
        id: id_of(s)?,
        team: meta.team,
        template: meta.template,
        metadata: metadata(s),
        started_at: UNIX_EPOCH + Duration::from_millis(meta.started_at_ms),
        end_at: end.map_or_else(never, from_time),
        state: if s.spec.paused.unwrap_or(false) {
            ApiState::Paused
        } else {
            ApiState::Running
        },
        access_token: s
            .annotations()
            .get(keys::ANNOTATION_RUNTIME_ACCESS_TOKEN)
            .cloned()
            .unwrap_or_default(),
        traffic_token: s
            .annotations()
            .get(keys::ANNOTATION_TRAFFIC_ACCESS_TOKEN)
            .cloned(),
        address: address(s),
        cpu_count: meta.cpu_count,
        memory_mb: meta.memory_mb,
        disk_mb: meta.disk_mb,
        on_timeout: meta.on_timeout,
        auto_resume: meta.auto_resume,
        allow_internet_access: meta.allow_internet_access,
    })
}

/// `spec.shutdownTime` and `spec.pauseTime` for a sandbox ending at `end` by `on_timeout`.
pub fn deadline_fields(end: SystemTime, on_timeout: OnTimeout) -> (Option<Time>, Option<Time>) {
    if end >= never() {
        return (None, None);
    }
    match on_timeout {
        OnTimeout::Kill => (Some(to_time(end)), None),
        OnTimeout::Pause => (None, Some(to_time(end))),
    }
}

/// Whether `k` is a valid label/annotation key (`[prefix/]name`), so writing it cannot make
/// the API server refuse the claim.
pub fn valid_key(k: &str) -> bool {
    let (prefix, name) = match k.rsplit_once('/') {
        Some((p, n)) => (Some(p), n),
        None => (None, k),
    };
    let name_ok = !name.is_empty()
        && name.len() <= 63
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
        && name.as_bytes()[0].is_ascii_alphanumeric()
        && name.as_bytes()[name.len() - 1].is_ascii_alphanumeric();
    let prefix_ok = prefix.is_none_or(|p| {
        !p.is_empty()
            && p.len() <= 253
            && p.split('.').all(|l| {
                !l.is_empty()
                    && l.bytes()
                        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
                    && !l.starts_with('-')
                    && !l.ends_with('-')
            })
    });
    name_ok && prefix_ok
}

/// Whether `v` is a valid label value.
pub fn valid_label_value(v: &str) -> bool {
    v.is_empty()
        || (v.len() <= 63
            && v.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
            && v.as_bytes()[0].is_ascii_alphanumeric()
            && v.as_bytes()[v.len() - 1].is_ascii_alphanumeric())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantities_parse() {
        assert_eq!(cpu_millis(&Quantity("500m".into())), Some(500));
        assert_eq!(cpu_millis(&Quantity("2".into())), Some(2000));
        assert_eq!(bytes(&Quantity("512Mi".into())), Some(512 << 20));
        assert_eq!(bytes(&Quantity("1G".into())), Some(1_000_000_000));
        assert_eq!(bytes(&Quantity("1x".into())), None);
    }

    #[test]
    fn keys_are_checked() {
        assert!(valid_key("team"));
        assert!(valid_key("example.com/team-a"));
        assert!(!valid_key("has space"));
        assert!(!valid_key("-x"));
        assert!(!valid_key("Upper.Case/x"));
        assert!(valid_label_value("blue"));
        assert!(!valid_label_value("a b"));
    }

    #[test]
    fn deadlines_follow_the_timeout_action() {
        let t = UNIX_EPOCH + Duration::from_secs(1000);
        assert_eq!(
            deadline_fields(t, OnTimeout::Kill),
            (Some(to_time(t)), None)
        );
        assert_eq!(
            deadline_fields(t, OnTimeout::Pause),
            (None, Some(to_time(t)))
        );
        assert_eq!(deadline_fields(never(), OnTimeout::Kill), (None, None));
    }

    #[test]
    fn a_claimed_sandbox_round_trips_to_a_record() {
        let mut s = Sandbox::new("base-abcde", Default::default());
        s.metadata.namespace = Some("team-a".into());
        s.labels_mut()
            .insert(keys::LABEL_SANDBOX_CLAIMED.into(), "true".into());
        let meta = RecordMeta {
            team: "t1".into(),
            template: "base".into(),
            started_at_ms: 5000,
            on_timeout: OnTimeout::Pause,
            auto_resume: true,
            allow_internet_access: false,
            cpu_count: 2,
            memory_mb: 512,
            disk_mb: 0,
        };
        s.annotations_mut().insert(
            ANNOTATION_RECORD.into(),
            serde_json::to_string(&meta).unwrap(),
        );
        s.annotations_mut()
            .insert(ANNOTATION_METADATA.into(), r#"{"k":"v"}"#.into());
        s.annotations_mut()
            .insert(keys::ANNOTATION_RUNTIME_ACCESS_TOKEN.into(), "tok".into());
        let end = UNIX_EPOCH + Duration::from_secs(9000);
        s.spec.pause_time = Some(to_time(end));
        s.spec.paused = Some(true);
        let r = record(&s).unwrap();
        assert_eq!(r.id.as_str(), "team-a--base-abcde");
        assert_eq!((r.team.as_str(), r.access_token.as_str()), ("t1", "tok"));
        assert_eq!(r.end_at, end);
        assert_eq!(r.state, ApiState::Paused);
        assert_eq!(r.metadata["k"], "v");
        assert!(r.auto_resume && !r.allow_internet_access);
        s.labels_mut()
            .insert(keys::LABEL_SANDBOX_CLAIMED.into(), "false".into());
        assert!(record(&s).is_none(), "pool members have no record");
    }
}
