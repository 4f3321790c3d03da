//! The `admission.k8s.io/v1` AdmissionReview wire format (the parts the handlers use).

use serde::Deserialize;
use serde_json::{Value, json};

#[derive(Deserialize, Debug, Default)]
#[serde(rename_all = "camelCase")]
pub struct Review {
    pub request: Option<Request>,
}

#[derive(Deserialize, Debug, Default, Clone)]
#[serde(rename_all = "camelCase")]
pub struct Request {
    pub uid: String,
    #[serde(default)]
    pub name: String,
    #[serde(default)]
    pub namespace: String,
    #[serde(default)]
    pub user_info: UserInfo,
    #[serde(default)]
    pub object: Option<Value>,
    #[serde(default)]
    pub old_object: Option<Value>,
}

#[derive(Deserialize, Debug, Default, Clone)]
pub struct UserInfo {
    #[serde(default)]
    pub username: String,
}

/// What a handler decided.
#[derive(Debug, PartialEq)]
pub enum Verdict {
    Allow,
    Deny {
        code: u16,
        message: String,
    },
    /// Allow with these RFC 6902 operations applied.
    Patch(Vec<Value>),
}

impl Verdict {
    pub fn deny(message: impl Into<String>) -> Self {
        Verdict::Deny {
            code: 403,
            message: message.into(),
        }
    }

    pub fn invalid(errors: Vec<String>) -> Self {
        if errors.is_empty() {
            Verdict::Allow
        } else {
            Verdict::Deny {
                code: 422,
                message: errors.join("; "),
            }
        }
    }
}

/// The response review for `uid`.
pub fn respond(uid: &str, verdict: Verdict) -> Value {
    use base64::Engine;
    let response = match verdict {
        Verdict::Allow => json!({"uid": uid, "allowed": true}),
        Verdict::Deny { code, message } => json!({
            "uid": uid,
            "allowed": false,
            "status": {"code": code, "message": message},
        }),
        Verdict::Patch(ops) if ops.is_empty() => json!({"uid": uid, "allowed": true}),
        Verdict::Patch(ops) => {
            let patch = serde_json::to_vec(&ops).unwrap_or_default();
            json!({
                "uid": uid,
                "allowed": true,
                "patchType": "JSONPatch",
                "patch": base64::engine::general_purpose::STANDARD.encode(patch),
            })
        }
    };
    json!({
        "apiVersion": "admission.k8s.io/v1",
        "kind": "AdmissionReview",
        "response": response,
    })
}
