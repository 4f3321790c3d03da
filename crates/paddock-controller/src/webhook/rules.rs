//! The admission decisions, as pure functions of the objects involved.

use k8s_openapi::api::core::v1::{Pod, PodTemplateSpec};
use kube::ResourceExt;
use paddock_crds::{Sandbox, SandboxClaim, SandboxSet, SandboxTemplate, keys};
use serde_json::Value;

use crate::desired::{duration, validate_int_or_percent};

/// Users that delete sandbox Pods as part of deleting their owners.
const SYSTEM_DELETERS: &[&str] = &[
    "system:serviceaccount:kube-system:generic-garbage-collector",
    "system:serviceaccount:kube-system:namespace-controller",
];

/// The answer to a Pod delete that would destroy a live sandbox; its text is the denial
/// message. A domain value (the webhook's answer), not a failure.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "Pod {namespace}/{pod} runs Sandbox {sandbox}; deleting or evicting it would destroy the sandbox: delete the Sandbox instead"
)]
pub struct PodDeleteDenied {
    /// The Pod's namespace.
    pub namespace: String,
    /// The Pod's name.
    pub pod: String,
    /// The Sandbox it runs.
    pub sandbox: String,
}

/// Whether `user` may delete (or evict) `pod`, whose same-named Sandbox is `sandbox`. Only the
/// controller may take away the Pod of a live Sandbox: anyone else would silently destroy the
/// sandbox, so they are told to delete the Sandbox instead.
pub fn pod_delete(
    pod: &Pod,
    sandbox: Option<&Sandbox>,
    user: &str,
    controller: &str,
) -> Result<(), PodDeleteDenied> {
    if user == controller || SYSTEM_DELETERS.contains(&user) {
        return Ok(());
    }
    if pod.metadata.deletion_timestamp.is_some() {
        return Ok(());
    }
    if pod.labels().get(keys::LABEL_CREATED_BY).map(String::as_str)
        != Some(keys::CREATED_BY_SANDBOX)
    {
        return Ok(());
    }
    let Some(owner) = pod
        .owner_references()
        .iter()
        .find(|o| o.controller == Some(true) && o.kind == "Sandbox")
    else {
        return Ok(());
    };
    let Some(sbx) = sandbox else {
        return Ok(());
    };
    if sbx.metadata.uid.as_deref() != Some(owner.uid.as_str())
        || sbx.metadata.deletion_timestamp.is_some()
    {
        return Ok(());
    }
    Err(PodDeleteDenied {
        namespace: pod.namespace().unwrap_or_default(),
        pod: pod.name_any(),
        sandbox: sbx.name_any(),
    })
}

fn reserved_metadata(field: &str, template: Option<&PodTemplateSpec>, errors: &mut Vec<String>) {
    let Some(meta) = template.and_then(|t| t.metadata.as_ref()) else {
        return;
    };
    for (what, map) in [("labels", &meta.labels), ("annotations", &meta.annotations)] {
        for k in map.iter().flat_map(|m| m.keys()) {
            if k.starts_with(keys::E2B_PREFIX) {
                errors.push(format!(
                    "{field}.metadata.{what}[{k}]: the {} prefix is reserved",
                    keys::E2B_PREFIX
                ));
            }
        }
    }
}

fn pod_template(field: &str, template: Option<&PodTemplateSpec>, errors: &mut Vec<String>) {
    let Some(t) = template else {
        return;
    };
    let containers = t
        .spec
        .as_ref()
        .map(|s| s.containers.as_slice())
        .unwrap_or_default();
    if containers.is_empty() {
        errors.push(format!(
            "{field}.spec.containers: at least one container is required"
        ));
    }
    for (i, c) in containers.iter().enumerate() {
        if c.name.is_empty() {
            errors.push(format!("{field}.spec.containers[{i}].name: required"));
        }
        if c.image.as_deref().unwrap_or("").is_empty() {
            errors.push(format!("{field}.spec.containers[{i}].image: required"));
        }
    }
    reserved_metadata(field, template, errors);
}

/// An admission object that does not fit its typed resource; the message names the bad field.
#[derive(Debug, thiserror::Error)]
#[error("{kind}: {source}")]
pub struct ParseError {
    /// The resource kind it was read as.
    pub kind: String,
    /// What does not fit.
    #[source]
    pub source: serde_json::Error,
}

impl ParseError {
    pub fn new(kind: &str, source: serde_json::Error) -> Self {
        ParseError {
            kind: kind.to_string(),
            source,
        }
    }
}

/// Parses an admission object into a typed resource, with a message naming the bad field.
pub fn parse<K: serde::de::DeserializeOwned>(kind: &str, v: &Value) -> Result<K, ParseError> {
    serde_json::from_value(v.clone()).map_err(|e| ParseError::new(kind, e))
}

pub fn sandboxset(new: &SandboxSet) -> Vec<String> {
    let mut errors = Vec::new();
    let s = &new.spec;
    if s.replicas < 0 {
        errors.push(format!("spec.replicas: must be >= 0, got {}", s.replicas));
    }
    match (&s.pod.template, &s.template_ref) {
        (Some(_), Some(_)) => {
            errors.push("spec.template, spec.templateRef: exactly one may be set".into())
        }
        (None, None) => {
            errors.push("spec.template: one of template or templateRef is required".into())
        }
        (None, Some(r)) if r.name.is_empty() => {
            errors.push("spec.templateRef.name: required".into())
        }
        _ => {}
    }
    pod_template("spec.template", s.pod.template.as_ref(), &mut errors);
    for (field, v) in [
        (
            "spec.scaleStrategy.maxUnavailable",
            s.scale_strategy
                .as_ref()
                .and_then(|x| x.max_unavailable.as_ref()),
        ),
        (
            "spec.updateStrategy.maxUnavailable",
            s.update_strategy
                .as_ref()
                .and_then(|x| x.max_unavailable.as_ref()),
        ),
    ] {
        if let Some(v) = v
            && let Err(e) = validate_int_or_percent(v)
        {
            errors.push(format!("{field}: {e}"));
        }
    }
    errors
}

pub fn sandboxtemplate(new: &SandboxTemplate) -> Vec<String> {
    let mut errors = Vec::new();
    if new.spec.pod.template.is_none() {
        errors.push("spec.template: required".into());
    }
    pod_template("spec.template", new.spec.pod.template.as_ref(), &mut errors);
    errors
}

pub fn sandboxclaim(new: &SandboxClaim, old: Option<&SandboxClaim>) -> Vec<String> {
    let mut errors = Vec::new();
    let s = &new.spec;
    if s.template_name.is_empty() {
        errors.push("spec.templateName: required".into());
    }
    if let Some(r) = s.replicas
        && r < 1
    {
        errors.push(format!("spec.replicas: must be >= 1, got {r}"));
    }
    for (field, value, min_ms) in [
        ("spec.claimTimeout", &s.claim_timeout, Some(1000)),
        ("spec.waitReadyTimeout", &s.wait_ready_timeout, Some(1000)),
        ("spec.ttlAfterCompleted", &s.ttl_after_completed, None),
    ] {
        let Some(v) = value else { continue };
        match duration::parse(v) {
            Err(e) => errors.push(format!("{field}: {e}")),
            Ok(ms) if min_ms.is_some_and(|m| ms < m) => {
                errors.push(format!("{field}: must be at least 1s, got {v:?}"))
            }
            Ok(_) => {}
        }
    }
    for (what, map) in [("labels", &s.labels), ("annotations", &s.annotations)] {
        for k in map.iter().flat_map(|m| m.keys()) {
            if keys::is_reserved_key(k) {
                errors.push(format!(
                    "spec.{what}[{k}]: keys under {} and {} are reserved",
                    keys::INTERNAL_PREFIX,
                    keys::E2B_PREFIX
                ));
            }
        }
    }
    if let Some(res) = s.inplace_update.as_ref().and_then(|u| u.resources.as_ref()) {
        for (what, map) in [("requests", &res.requests), ("limits", &res.limits)] {
            for k in map.keys().filter(|k| k.as_str() != "cpu") {
                errors.push(format!(
                    "spec.inplaceUpdate.resources.{what}[{k}]: only cpu can be changed in place"
                ));
            }
        }
    }
    if let Some(old) = old {
        if old.spec.template_name != s.template_name {
            errors.push("spec.templateName: field is immutable".into());
        }
        if old.spec.replicas != s.replicas {
            errors.push("spec.replicas: field is immutable".into());
        }
    }
    errors
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference;
    use paddock_crds::{SandboxClaimSpec, SandboxSetSpec, SandboxSpec};
    use serde_json::json;

    fn sandbox(uid: &str) -> Sandbox {
        let mut s = Sandbox::new("sb", SandboxSpec::default());
        s.metadata.uid = Some(uid.into());
        s
    }

    fn pod(owner_uid: &str) -> Pod {
        let mut p = Pod::default();
        p.metadata.name = Some("sb".into());
        p.metadata.namespace = Some("ns".into());
        p.labels_mut()
            .insert(keys::LABEL_CREATED_BY.into(), "sandbox".into());
        p.metadata.owner_references = Some(vec![OwnerReference {
            api_version: "agents.kruise.io/v1alpha1".into(),
            kind: "Sandbox".into(),
            name: "sb".into(),
            uid: owner_uid.into(),
            controller: Some(true),
            block_owner_deletion: Some(true),
        }]);
        p
    }

    #[test]
    fn only_the_controller_deletes_the_pod_of_a_live_sandbox() {
        let sbx = sandbox("u1");
        let err = pod_delete(&pod("u1"), Some(&sbx), "alice", "ctl").unwrap_err();
        assert!(
            err.to_string().contains("delete the Sandbox instead"),
            "{err}"
        );
        assert!(pod_delete(&pod("u1"), Some(&sbx), "ctl", "ctl").is_ok());
    }

    #[test]
    fn pods_of_gone_deleting_or_older_sandboxes_may_be_deleted() {
        assert!(pod_delete(&pod("u1"), None, "alice", "ctl").is_ok());
        assert!(pod_delete(&pod("u0"), Some(&sandbox("u1")), "alice", "ctl").is_ok());
        let mut deleting = sandbox("u1");
        deleting.metadata.deletion_timestamp =
            Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(
                k8s_openapi::jiff::Timestamp::UNIX_EPOCH,
            ));
        assert!(pod_delete(&pod("u1"), Some(&deleting), "alice", "ctl").is_ok());
        let mut other = pod("u1");
        other.labels_mut().clear();
        assert!(pod_delete(&other, Some(&sandbox("u1")), "alice", "ctl").is_ok());
    }

    fn set(v: Value) -> SandboxSet {
        parse(
            "SandboxSet",
            &json!({
                "apiVersion": "agents.kruise.io/v1alpha1", "kind": "SandboxSet",
                "metadata": {"name": "s"}, "spec": v,
            }),
        )
        .unwrap()
    }

    #[test]
    fn sandboxset_errors_name_the_field() {
        let ok = set(
            json!({"replicas": 1, "template": {"spec": {"containers": [{"name": "m", "image": "i"}]}}}),
        );
        assert!(sandboxset(&ok).is_empty());
        let bad = set(
            json!({"replicas": -1, "updateStrategy": {"maxUnavailable": "150%"},
            "template": {"metadata": {"labels": {"e2b.agents.kruise.io/x": "1"}}, "spec": {"containers": [{"name": "m"}]}}}),
        );
        let errs = sandboxset(&bad).join("\n");
        assert!(errs.contains("spec.replicas"), "{errs}");
        assert!(
            errs.contains("spec.updateStrategy.maxUnavailable"),
            "{errs}"
        );
        assert!(
            errs.contains("spec.template.spec.containers[0].image"),
            "{errs}"
        );
        assert!(
            errs.contains("spec.template.metadata.labels[e2b.agents.kruise.io/x]"),
            "{errs}"
        );
        let both = set(
            json!({"replicas": 1, "templateRef": {"name": "t"}, "template": {"spec": {"containers": [{"name": "m", "image": "i"}]}}}),
        );
        assert!(sandboxset(&both)[0].contains("exactly one"));
        let _ = SandboxSetSpec::default();
    }

    #[test]
    fn sandboxclaim_checks_ranges_reserved_keys_and_immutability() {
        let mut c = SandboxClaim::new(
            "c",
            SandboxClaimSpec {
                template_name: "pool".into(),
                replicas: Some(1),
                ..Default::default()
            },
        );
        assert!(sandboxclaim(&c, None).is_empty());
        c.spec.claim_timeout = Some("500ms".into());
        c.spec.wait_ready_timeout = Some("soon".into());
        c.spec.labels = Some([("agents.kruise.io/x".to_string(), "1".to_string())].into());
        let errs = sandboxclaim(&c, None).join("\n");
        assert!(
            errs.contains("spec.claimTimeout: must be at least 1s"),
            "{errs}"
        );
        assert!(
            errs.contains("spec.waitReadyTimeout: invalid duration"),
            "{errs}"
        );
        assert!(errs.contains("spec.labels[agents.kruise.io/x]"), "{errs}");
        let old = c.clone();
        c.spec.replicas = Some(2);
        assert!(
            sandboxclaim(&c, Some(&old))
                .join("\n")
                .contains("spec.replicas: field is immutable")
        );
    }
}
