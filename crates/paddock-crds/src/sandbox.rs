//! `Sandbox`: one sandbox, backed by one Pod of the same name.

use std::collections::BTreeMap;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::common::{Persistence, PodSource, TemplateRef, UpgradeAction, condition_list};

#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[kube(
    group = "agents.kruise.io",
    version = "v1alpha1",
    kind = "Sandbox",
    plural = "sandboxes",
    shortname = "sbx",
    namespaced,
    status = "SandboxStatus",
    doc = "A sandbox for an AI agent, run as one Pod of the same name.",
    printcolumn(name = "Status", type_ = "string", json_path = ".status.phase"),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    ),
    printcolumn(
        name = "Claimed",
        type_ = "string",
        json_path = ".metadata.labels.agents\\.kruise\\.io/sandbox-claimed"
    ),
    printcolumn(
        name = "shutdown_time",
        type_ = "string",
        json_path = ".spec.shutdownTime"
    ),
    printcolumn(name = "pause_time", type_ = "string", json_path = ".spec.pauseTime"),
    printcolumn(
        name = "RecycledCount",
        type_ = "integer",
        json_path = ".status.recycledCount"
    ),
    printcolumn(name = "Message", type_ = "string", json_path = ".status.message")
)]
#[serde(rename_all = "camelCase")]
pub struct SandboxSpec {
    /// Desired pause: the controller deletes the Pod while true and recreates it after.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub paused: Option<bool>,
    #[serde(flatten)]
    pub persistence: Persistence,
    /// Absolute time at which the Sandbox is deleted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub shutdown_time: Option<Time>,
    /// Absolute time at which the Sandbox is paused.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pause_time: Option<Time>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lifecycle: Option<SandboxLifecycle>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub upgrade_policy: Option<UpgradePolicy>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub template_ref: Option<TemplateRef>,
    #[serde(flatten)]
    pub pod: PodSource,
}

#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct SandboxLifecycle {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pre_upgrade: Option<UpgradeAction>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub post_upgrade: Option<UpgradeAction>,
}

#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
pub struct UpgradePolicy {
    #[serde(rename = "type", default, skip_serializing_if = "Option::is_none")]
    #[schemars(extend("enum" = ["Recreate", "CheckpointRestore"]))]
    pub type_: Option<String>,
}

#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema)]
pub enum SandboxPhase {
    Pending,
    Running,
    Paused,
    Resuming,
    Upgrading,
    Succeeded,
    Failed,
    Recycling,
    Terminating,
}

impl SandboxPhase {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Pending => "Pending",
            Self::Running => "Running",
            Self::Paused => "Paused",
            Self::Resuming => "Resuming",
            Self::Upgrading => "Upgrading",
            Self::Succeeded => "Succeeded",
            Self::Failed => "Failed",
            Self::Recycling => "Recycling",
            Self::Terminating => "Terminating",
        }
    }

    /// Phases a sandbox never leaves.
    pub fn is_terminal(self) -> bool {
        matches!(self, Self::Succeeded | Self::Failed)
    }
}

#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct SandboxStatus {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub phase: Option<SandboxPhase>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(schema_with = "condition_list")]
    pub conditions: Vec<Condition>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pod_info: Option<PodInfo>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node_name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sandbox_ip: Option<String>,
    /// Hash of the pod template the current Pod was made from.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub update_revision: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub recycled_count: Option<i32>,
}

#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct PodInfo {
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub annotations: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node_name: Option<String>,
    #[serde(rename = "podIP", default, skip_serializing_if = "Option::is_none")]
    pub pod_ip: Option<String>,
    #[serde(rename = "podUID", default, skip_serializing_if = "Option::is_none")]
    pub pod_uid: Option<String>,
}

/// Condition types and reasons on a Sandbox.
pub mod conditions {
    pub const READY: &str = "Ready";
    pub const PAUSED: &str = "SandboxPaused";
    pub const RESUMED: &str = "SandboxResumed";
    pub const RUNTIME_INITIALIZED: &str = "RuntimeInitialized";

    pub const REASON_POD_READY: &str = "PodReady";
    pub const REASON_POD_CREATE_FAILED: &str = "PodCreateFailed";
    pub const REASON_START_CONTAINER_FAILED: &str = "StartContainerFailed";
    pub const REASON_PENDING: &str = "Pending";
    pub const REASON_STOP_PAUSE_SUCCEED: &str = "StopPauseSucceed";
    pub const REASON_CREATE_POD: &str = "CreatePod";
    pub const REASON_RESUME_POD: &str = "ResumePod";
    pub const REASON_SUCCEEDED: &str = "Succeeded";
    pub const REASON_FAILED: &str = "Failed";
}
