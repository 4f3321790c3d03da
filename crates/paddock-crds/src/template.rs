//! `SandboxTemplate`: a named pod template, referenced by Sandboxes and SandboxSets and
//! materialised for each SandboxSet revision and each Checkpoint.

use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::common::{Persistence, PodSource};

#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[kube(
    group = "agents.kruise.io",
    version = "v1alpha1",
    kind = "SandboxTemplate",
    plural = "sandboxtemplates",
    shortname = "sbt",
    namespaced,
    doc = "A reusable sandbox pod template.",
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    )
)]
#[serde(rename_all = "camelCase")]
pub struct SandboxTemplateSpec {
    #[serde(flatten)]
    pub pod: PodSource,
    /// Informational when a SandboxSet references the template: the set's own values win.
    #[serde(flatten)]
    pub persistence: Persistence,
}
