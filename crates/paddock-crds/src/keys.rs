//! Label, annotation and finalizer keys shared by the controller, the manager and the gateway.
//! The values are wire contracts with existing OpenKruise Agents tooling: never rename them.

/// Prefix reserved for the system's own metadata; users may not set keys under it.
pub const INTERNAL_PREFIX: &str = "agents.kruise.io/";
/// Prefix reserved for E2B-facing metadata.
pub const E2B_PREFIX: &str = "e2b.agents.kruise.io/";

// === labels ===

/// The SandboxSet a sandbox came from.
pub const LABEL_SANDBOX_POOL: &str = "agents.kruise.io/sandbox-pool";
/// The SandboxSet (E2B template ID) or referenced template name.
pub const LABEL_SANDBOX_TEMPLATE: &str = "agents.kruise.io/sandbox-template";
/// `"true"` once claimed, `"false"` while in the pool.
pub const LABEL_SANDBOX_CLAIMED: &str = "agents.kruise.io/sandbox-claimed";
/// The SandboxClaim that claimed a sandbox.
pub const LABEL_CLAIM_NAME: &str = "agents.kruise.io/claim-name";
/// The SandboxSet revision a pool sandbox was made from.
pub const LABEL_TEMPLATE_HASH: &str = "agents.kruise.io/template-hash";
/// The sandbox's short ID, when it has one.
pub const LABEL_SANDBOX_ID: &str = "agents.kruise.io/sandbox-id";
/// On pods and checkpoints: the sandbox's name.
pub const LABEL_SANDBOX_NAME: &str = "agents.kruise.io/sandbox-name";
/// On pods (and their annotations): who made the pod, `sandbox` for the controller.
pub const LABEL_CREATED_BY: &str = "agents.kruise.io/created-by";
/// Value of [`LABEL_CREATED_BY`] for pods the Sandbox controller creates.
pub const CREATED_BY_SANDBOX: &str = "sandbox";
/// On pods: the sandbox's template revision.
pub const LABEL_POD_TEMPLATE_HASH: &str = "pod-template-hash";
/// Checkpoint labels.
pub const LABEL_CHECKPOINT_TYPE: &str = "agents.kruise.io/checkpoint-type";
pub const LABEL_CHECKPOINT_ID: &str = "agents.kruise.io/checkpoint-id";

// === annotations ===

/// Claim or scale-down lock (a UUID).
pub const ANNOTATION_LOCK: &str = "agents.kruise.io/lock";
/// Who holds the sandbox: an API key ID, a SandboxClaim UID or [`OWNER_SCALE_DOWN`].
pub const ANNOTATION_OWNER: &str = "agents.kruise.io/owner";
/// Owner value the SandboxSet uses while it deletes surplus pool sandboxes.
pub const OWNER_SCALE_DOWN: &str = "__manager_scale_down";
/// RFC 3339 time of the claim.
pub const ANNOTATION_CLAIM_TIMESTAMP: &str = "agents.kruise.io/claim-timestamp";
/// JSON `{envVars, accessToken}` sent to the runtime's `/init`, replayed after a resume.
pub const ANNOTATION_INIT_RUNTIME_REQUEST: &str = "agents.kruise.io/init-runtime-request";
/// The runtime's access token.
pub const ANNOTATION_RUNTIME_ACCESS_TOKEN: &str = "agents.kruise.io/runtime-access-token";
/// The token the sandbox's other ports require when its traffic is private.
pub const ANNOTATION_TRAFFIC_ACCESS_TOKEN: &str = "agents.kruise.io/traffic-access-token";
/// JSON `{labels[], annotations[]}`: metadata keys added at claim.
pub const ANNOTATION_UPDATED_METADATA_IN_CLAIM: &str = "agents.kruise.io/updated-metadata-in-claim";
/// Pod-creation priority: `0` for pool fills, `100` for claims and the manager.
pub const ANNOTATION_SANDBOX_PRIORITY: &str = "agents.kruise.io/sandbox-priority";
/// Marks SandboxTemplates materialised from SandboxSet revisions (collectable).
pub const ANNOTATION_CLEANUP_CANDIDATE: &str = "agents.kruise.io/cleanup-candidate";
/// Recycle capability and its failure retention; kept on pool sandboxes.
pub const ANNOTATION_CLEANUP_ENABLED: &str = "agents.kruise.io/cleanup-enabled";
pub const ANNOTATION_CLEANUP_RETAIN_ON_FAILURE: &str = "agents.kruise.io/cleanup-retain-on-failure";
/// Paused retention (`forever` or a duration).
pub const ANNOTATION_RESERVE_PAUSED_DURATION: &str =
    "agents.kruise.io/reserve-paused-sandbox-duration";
/// On Checkpoints: the sandbox ID they were taken from.
pub const ANNOTATION_SANDBOX_ID: &str = "agents.kruise.io/sandbox-id";

// === finalizers ===

/// Held by a Sandbox while its Pod is deliberately absent (paused) or being torn down.
pub const FINALIZER_SANDBOX: &str = "agents.kruise.io/sandbox";
/// Held by a Checkpoint until its artefacts are released.
pub const FINALIZER_CHECKPOINT: &str = "agents.kruise.io/checkpoint";

/// The runtime's (envd's) port in every sandbox.
pub use paddock_contract::RUNTIME_PORT;

/// Whether a user-supplied metadata key falls under a reserved prefix.
pub fn is_reserved_key(key: &str) -> bool {
    key.starts_with(INTERNAL_PREFIX) || key.starts_with(E2B_PREFIX)
}
