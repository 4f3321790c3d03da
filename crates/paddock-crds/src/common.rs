//! Pieces shared by several kinds, and the schema helpers that keep pod templates schemaless.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{ExecAction, PersistentVolumeClaim, PodTemplateSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use schemars::{JsonSchema, Schema, SchemaGenerator, json_schema};
use serde::{Deserialize, Serialize};

/// Names a SandboxTemplate (or, in the original, any pod template source) instead of an inline
/// template.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct TemplateRef {
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kind: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub api_version: Option<String>,
}

/// Selects a runtime sidecar to inject (`agent-runtime`, `csi`, `traffic-proxy`).
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Hash, JsonSchema)]
pub struct RuntimeConfig {
    pub name: String,
}

/// How a sandbox is paused: `Stop` deletes the pod; `Hibernate` persists state first.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Hash, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct PauseStrategy {
    #[serde(rename = "type", default, skip_serializing_if = "Option::is_none")]
    #[schemars(extend("enum" = ["Stop", "Hibernate"]))]
    pub type_: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hibernate_strategy: Option<HibernateStrategy>,
}

#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Hash, JsonSchema)]
pub struct HibernateStrategy {
    #[serde(rename = "type", default, skip_serializing_if = "Option::is_none")]
    #[schemars(extend("enum" = ["Snapshot"]))]
    pub type_: Option<String>,
}

/// A CSI volume mounted into a running sandbox through its runtime.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct CsiMountConfig {
    #[serde(rename = "mountID", default, skip_serializing_if = "Option::is_none")]
    pub mount_id: Option<String>,
    pub pv_name: String,
    pub mount_path: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sub_path: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub read_only: Option<bool>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub attributes: BTreeMap<String, String>,
}

/// A hook run inside the sandbox during an upgrade.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct UpgradeAction {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exec: Option<ExecAction>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(extend("default" = 60))]
    pub timeout_seconds: Option<i32>,
}

// Where a sandbox's Pod comes from; shared by Sandbox, SandboxSet and SandboxTemplate. (A
// plain comment: a doc comment would become the description of every spec it is flattened into.)
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct PodSource {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "schemaless_object")]
    pub template: Option<PodTemplateSpec>,
    /// One PersistentVolumeClaim per sandbox from each entry, owned by the Sandbox.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "schemaless_list")]
    pub volume_claim_templates: Option<Vec<PersistentVolumeClaim>>,
}

// How a sandbox pauses and what it keeps; shared like `PodSource`.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Persistence {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pause_strategy: Option<PauseStrategy>,
    /// What survives a pause: `ip`, `memory`, `filesystem`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub persistent_contents: Option<Vec<String>>,
    /// Runtime sidecars to inject.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub runtimes: Option<Vec<RuntimeConfig>>,
}

/// Pod templates are stored as given: the schema does not restate the core Pod schema (the
/// validating webhook checks them), which also keeps manifests written for newer Kubernetes
/// versions applying.
pub(crate) fn schemaless_object(_: &mut SchemaGenerator) -> Schema {
    json_schema!({"type": "object", "x-kubernetes-preserve-unknown-fields": true})
}

pub(crate) fn schemaless_list(_: &mut SchemaGenerator) -> Schema {
    json_schema!({
        "type": "array",
        "items": {"type": "object", "x-kubernetes-preserve-unknown-fields": true},
    })
}

/// `metav1.Condition` lists are maps keyed by `type`.
pub(crate) fn condition_list(generator: &mut SchemaGenerator) -> Schema {
    let item = generator.subschema_for::<Condition>();
    json_schema!({
        "type": "array",
        "items": item,
        "x-kubernetes-list-type": "map",
        "x-kubernetes-list-map-keys": ["type"],
    })
}

/// The condition of `type_`, if present.
pub fn find_condition<'a>(conditions: &'a [Condition], type_: &str) -> Option<&'a Condition> {
    conditions.iter().find(|c| c.type_ == type_)
}

/// Sets a condition, keeping `lastTransitionTime` when the status does not change (so a
/// status patch that only refreshes the message does not look like a transition).
pub fn set_condition(
    conditions: &mut Vec<Condition>,
    type_: &str,
    status: bool,
    reason: &str,
    message: &str,
    now: &Time,
    observed_generation: Option<i64>,
) {
    let status = if status { "True" } else { "False" }.to_string();
    let next = |last: Time| Condition {
        type_: type_.to_string(),
        status: status.clone(),
        reason: reason.to_string(),
        message: message.to_string(),
        last_transition_time: last,
        observed_generation,
    };
    match conditions.iter_mut().find(|c| c.type_ == type_) {
        Some(c) => {
            let last = if c.status == status {
                c.last_transition_time.clone()
            } else {
                now.clone()
            };
            *c = next(last);
        }
        None => conditions.push(next(now.clone())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(s: i64) -> Time {
        Time(k8s_openapi::jiff::Timestamp::from_second(s).unwrap())
    }

    #[test]
    fn set_condition_keeps_transition_time_when_status_is_unchanged() {
        let mut conds = Vec::new();
        set_condition(&mut conds, "Ready", false, "Pending", "", &at(1), None);
        set_condition(&mut conds, "Ready", false, "Still", "m", &at(2), None);
        assert_eq!(conds.len(), 1);
        assert_eq!(conds[0].last_transition_time, at(1));
        assert_eq!(conds[0].reason, "Still");
        set_condition(&mut conds, "Ready", true, "PodReady", "", &at(3), None);
        assert_eq!(conds[0].last_transition_time, at(3));
        assert_eq!(find_condition(&conds, "Ready").unwrap().status, "True");
    }
}
