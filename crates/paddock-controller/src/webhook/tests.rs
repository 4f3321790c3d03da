//! Each webhook rule end to end below the HTTP layer: an AdmissionReview body as the API server
//! sends it in, the response review out.

use base64::Engine;
use serde_json::{Value, json};

use super::*;

/// An `admission.k8s.io/v1` review as the API server sends it.
fn review(resource: &str, operation: &str, object: Value, old: Option<Value>) -> Bytes {
    let group = if resource == "pods" {
        ""
    } else {
        "agents.kruise.io"
    };
    let version = if group.is_empty() { "v1" } else { "v1alpha1" };
    let body = json!({
        "apiVersion": "admission.k8s.io/v1",
        "kind": "AdmissionReview",
        "request": {
            "uid": "u-1",
            "kind": {"group": group, "version": version, "kind": "X"},
            "resource": {"group": group, "version": version, "resource": resource},
            "operation": operation, "name": "c", "namespace": "ns",
            "userInfo": {"username": "alice"},
            "object": object, "oldObject": old,
        },
    });
    Bytes::from(serde_json::to_vec(&body).unwrap())
}

fn out(Json(v): Handled) -> Value {
    assert_eq!(v["apiVersion"], "admission.k8s.io/v1");
    assert_eq!(v["kind"], "AdmissionReview");
    v["response"].clone()
}

fn denied(resp: &Value, code: u16) -> String {
    assert_eq!(resp["allowed"], false, "{resp}");
    assert_eq!(resp["status"]["code"], code, "{resp}");
    resp["status"]["message"].as_str().unwrap().to_string()
}

fn claim(replicas: i32) -> Value {
    json!({"apiVersion": "agents.kruise.io/v1alpha1", "kind": "SandboxClaim",
           "metadata": {"name": "c"}, "spec": {"templateName": "pool", "replicas": replicas}})
}

fn set(spec: Value) -> Value {
    json!({"apiVersion": "agents.kruise.io/v1alpha1", "kind": "SandboxSet",
           "metadata": {"name": "s"}, "spec": spec})
}

const CONTAINERS: &str = r#"{"spec": {"containers": [{"name": "m", "image": "i"}]}}"#;

fn template() -> Value {
    serde_json::from_str(CONTAINERS).unwrap()
}

#[tokio::test]
async fn a_claim_update_changing_replicas_is_denied_with_a_422() {
    let body = review("sandboxclaims", "UPDATE", claim(2), Some(claim(1)));
    let resp = out(validate_sandboxclaim(body).await);
    assert_eq!(resp["uid"], "u-1");
    let msg = denied(&resp, 422);
    assert!(msg.contains("spec.replicas: field is immutable"), "{msg}");
    let body = review("sandboxclaims", "UPDATE", claim(1), Some(claim(1)));
    let resp = out(validate_sandboxclaim(body).await);
    assert_eq!(resp["allowed"], true);
    assert_eq!(resp["uid"], "u-1");
}

#[tokio::test]
async fn a_claim_with_reserved_labels_or_bad_durations_is_denied() {
    let mut c = claim(1);
    c["spec"]["labels"] = json!({"agents.kruise.io/x": "1"});
    c["spec"]["claimTimeout"] = json!("soon");
    let msg = denied(
        &out(validate_sandboxclaim(review("sandboxclaims", "CREATE", c, None)).await),
        422,
    );
    assert!(msg.contains("spec.labels[agents.kruise.io/x]"), "{msg}");
    assert!(msg.contains("spec.claimTimeout: invalid duration"), "{msg}");
}

#[tokio::test]
async fn a_malformed_pod_template_is_denied_naming_the_problem() {
    let bad = set(json!({"replicas": 1, "template": {"spec": {"containers": "nope"}}}));
    let body = review("sandboxsets", "CREATE", bad, None);
    let msg = denied(&out(validate_sandboxset(body).await), 422);
    assert!(msg.starts_with("SandboxSet: invalid type"), "{msg}");
}

#[tokio::test]
async fn a_sandboxset_is_validated_field_by_field() {
    let ok = set(json!({"replicas": 1, "template": template()}));
    let resp = out(validate_sandboxset(review("sandboxsets", "CREATE", ok, None)).await);
    assert_eq!(resp["allowed"], true, "{resp}");
    let bad = set(json!({"replicas": -1, "template": template()}));
    let msg = denied(
        &out(validate_sandboxset(review("sandboxsets", "CREATE", bad, None)).await),
        422,
    );
    assert!(msg.contains("spec.replicas: must be >= 0"), "{msg}");
}

#[tokio::test]
async fn a_sandboxtemplate_needs_a_pod_template() {
    let t = |spec: Value| {
        json!({"apiVersion": "agents.kruise.io/v1alpha1", "kind": "SandboxTemplate",
               "metadata": {"name": "t"}, "spec": spec})
    };
    let body = review("sandboxtemplates", "CREATE", t(json!({})), None);
    let msg = denied(&out(validate_sandboxtemplate(body).await), 422);
    assert!(msg.contains("spec.template: required"), "{msg}");
    let body = review(
        "sandboxtemplates",
        "CREATE",
        t(json!({"template": template()})),
        None,
    );
    assert_eq!(out(validate_sandboxtemplate(body).await)["allowed"], true);
}

#[tokio::test]
async fn the_sandboxset_default_comes_back_as_a_json_patch() {
    let body = review("sandboxsets", "CREATE", set(json!({"replicas": 1})), None);
    let resp = out(default_sandboxset(body).await);
    assert_eq!(resp["allowed"], true);
    assert_eq!(resp["patchType"], "JSONPatch");
    let patch = base64::engine::general_purpose::STANDARD
        .decode(resp["patch"].as_str().expect("base64 text"))
        .unwrap();
    let ops: Value = serde_json::from_slice(&patch).unwrap();
    assert_eq!(ops[0]["op"], "add");
    assert_eq!(ops[0]["path"], "/spec/updateStrategy");
    assert_eq!(ops[0]["value"]["maxUnavailable"], "20%");
    // Already defaulted: allowed, no patch at all.
    let done = set(json!({"replicas": 1, "updateStrategy": {"maxUnavailable": 1}}));
    let resp = out(default_sandboxset(review("sandboxsets", "UPDATE", done, None)).await);
    assert_eq!(resp["allowed"], true);
    assert!(
        resp.get("patch").is_none() && resp.get("patchType").is_none(),
        "{resp}"
    );
}

#[tokio::test]
async fn the_sandboxtemplate_default_comes_back_as_a_json_patch() {
    let t = json!({"apiVersion": "agents.kruise.io/v1alpha1", "kind": "SandboxTemplate",
        "metadata": {"name": "t"}, "spec": {"template": template()}});
    let resp =
        out(default_sandboxtemplate(review("sandboxtemplates", "CREATE", t.clone(), None)).await);
    assert_eq!(resp["allowed"], true, "{resp}");
    assert_eq!(resp["uid"], "u-1");
    assert_eq!(resp["patchType"], "JSONPatch");
    let patch = base64::engine::general_purpose::STANDARD
        .decode(resp["patch"].as_str().expect("base64 text"))
        .unwrap();
    let patch: json_patch::Patch = serde_json::from_slice(&patch).unwrap();
    let mut defaulted = t;
    json_patch::patch(&mut defaulted, &patch).unwrap();
    let spec = &defaulted["spec"]["template"]["spec"];
    assert_eq!(spec["automountServiceAccountToken"], false);
    assert_eq!(spec["containers"][0]["terminationMessagePolicy"], "File");
    // Already defaulted: allowed, no patch at all.
    let resp =
        out(default_sandboxtemplate(review("sandboxtemplates", "CREATE", defaulted, None)).await);
    assert_eq!(resp["allowed"], true);
    assert!(resp.get("patch").is_none(), "{resp}");
}

fn sandbox_pod() -> Value {
    json!({"apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": "c", "namespace": "ns",
            "labels": {keys::LABEL_CREATED_BY: keys::CREATED_BY_SANDBOX},
            "ownerReferences": [{"apiVersion": "agents.kruise.io/v1alpha1", "kind": "Sandbox",
                "name": "c", "uid": "sbx-uid", "controller": true}]},
        "spec": {"containers": [{"name": "m", "image": "i"}]}})
}

fn live_sandbox() -> Sandbox {
    let mut s = Sandbox::new("c", paddock_crds::SandboxSpec::default());
    s.metadata.uid = Some("sbx-uid".into());
    s
}

#[test]
fn deleting_the_pod_of_a_live_sandbox_is_denied_with_a_403_except_for_the_controller() {
    let req = review::request(&review("pods", "DELETE", Value::Null, Some(sandbox_pod())))
        .expect("a review");
    let pod = typed::<Pod>("Pod", req.old_object.as_ref())
        .unwrap()
        .unwrap();
    let verdict = pod_delete_verdict(&req, Some(&pod), Ok(Some(live_sandbox())), "ctl");
    let resp = review::to_wire(&respond(&req, verdict))["response"].clone();
    assert_eq!(resp["uid"], "u-1");
    let msg = denied(&resp, 403);
    assert!(msg.contains("delete the Sandbox instead"), "{msg}");

    let as_controller = pod_delete_verdict(&req, Some(&pod), Ok(Some(live_sandbox())), "alice");
    assert_eq!(as_controller, Verdict::Allow);
    // No such Pod (an eviction of something else) or no Sandbox: nothing to protect.
    assert_eq!(
        pod_delete_verdict(&req, None, Ok(Some(live_sandbox())), "ctl"),
        Verdict::Allow
    );
    assert_eq!(
        pod_delete_verdict(&req, Some(&pod), Ok(None), "ctl"),
        Verdict::Allow
    );
}

#[tokio::test]
async fn a_body_that_is_not_a_review_is_denied_saying_so() {
    let resp = out(validate_sandboxset(Bytes::from_static(b"{\"kind\": 1")).await);
    assert_eq!(resp["allowed"], false);
    let msg = resp["status"]["message"].as_str().unwrap();
    assert!(msg.starts_with("malformed AdmissionReview"), "{msg}");
    let no_request = json!({"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview"});
    let resp =
        out(validate_sandboxset(Bytes::from(serde_json::to_vec(&no_request).unwrap())).await);
    assert_eq!(resp["allowed"], false);
    assert!(
        resp["status"]["message"]
            .as_str()
            .unwrap()
            .contains("no request")
    );
}

fn service() -> WebhookEndpoint {
    WebhookEndpoint::Service {
        name: "hooks".into(),
        namespace: "sys".into(),
    }
}

#[test]
fn issued_certificates_round_trip_through_a_secret_and_serve_tls() {
    let certs = issue(&service()).unwrap();
    let names = cert_names(&service()).join(",");
    assert_eq!(names, "hooks.sys.svc,hooks.sys.svc.cluster.local");
    let secret = secret_of("hook-certs", &names, &certs);
    assert_eq!(secret.type_.as_deref(), Some("Opaque"));
    // What one replica stored is what the next one serves.
    let back = certs_from_secret(&secret, &names).unwrap();
    assert_eq!(back, certs);
    tls_config(&back).unwrap();
}

#[test]
fn a_secret_for_other_names_or_incomplete_is_not_used() {
    let certs = issue(&service()).unwrap();
    let names = cert_names(&service()).join(",");
    let secret = secret_of("hook-certs", &names, &certs);
    assert!(certs_from_secret(&secret, "other.sys.svc").is_none());
    let mut partial = secret.clone();
    partial.data.as_mut().unwrap().remove(KEY_KEY);
    assert!(certs_from_secret(&partial, &names).is_none());
    let mut bare = secret;
    bare.metadata.annotations = None;
    assert!(certs_from_secret(&bare, &names).is_none());
}

#[test]
fn bad_pem_is_an_error_not_a_panic() {
    let mut certs = issue(&service()).unwrap();
    certs.key_pem = "not a key".into();
    assert!(matches!(tls_config(&certs), Err(WebhookError::Pem(_))));
}
