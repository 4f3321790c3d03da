//! `POST /init`: how the orchestrator hands a sandbox its configuration.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// The body of `POST /init` (envd's shape, camelCase). The runtime acts on these fields and
/// accepts and ignores others (volume mounts, CA bundles, …) so newer orchestrators keep
/// working; senders leave out what they do not set.
#[derive(Debug, Default, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct InitRequest {
    /// Environment variables every process of the sandbox starts with.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub env_vars: Option<BTreeMap<String, String>>,
    /// The token every later request must carry in `X-Access-Token`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub access_token: Option<String>,
    /// The user processes and file operations act as when a request names none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub default_user: Option<String>,
    /// The working directory processes start in when a request names none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub default_workdir: Option<String>,
    /// The orchestrator's clock (RFC 3339); logged, since a sandbox may not set the host clock.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timestamp: Option<String>,
}

#[cfg(test)]
mod tests {
    use super::InitRequest;

    #[test]
    fn speaks_envds_camel_case_and_omits_unset_fields() {
        let req = InitRequest {
            env_vars: Some([("A".to_string(), "1".to_string())].into()),
            access_token: Some("t".into()),
            default_user: Some("user".into()),
            ..Default::default()
        };
        let json = serde_json::to_value(&req).unwrap();
        assert_eq!(
            json,
            serde_json::json!({"envVars": {"A": "1"}, "accessToken": "t", "defaultUser": "user"})
        );
        let back: InitRequest = serde_json::from_value(json).unwrap();
        assert_eq!(back, req);
    }

    #[test]
    fn unknown_fields_are_accepted_and_ignored() {
        let req: InitRequest =
            serde_json::from_str(r#"{"accessToken":"t","volumeMounts":[],"hyperloopIP":"x"}"#)
                .unwrap();
        assert_eq!(req.access_token.as_deref(), Some("t"));
    }
}
