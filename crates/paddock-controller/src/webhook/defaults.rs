//! What the mutating webhooks fill in, as pure functions of the admitted object.
//!
//! The defaults work on the JSON the API server sends, not on typed structs: pod templates are
//! stored schemaless (see `paddock_crds::common`), so a typed round trip would drop fields this
//! Kubernetes version does not know, and the patch would then remove them. Each webhook applies
//! its defaults to a copy and answers with the JSON patch from the original to the copy.
//!
//! The pod template defaults are the ones Kubernetes itself applies to a Pod, applied ahead of
//! time, plus two of the original system's: no service-account token in sandboxes (an agent's
//! code should not hold cluster credentials), and `Always` pulls for the main containers of a
//! template that names none. Defaulting the stored template means the template a revision hash
//! is computed over is the one the Pod will run, so a later API-server default never looks like
//! a template change.

use serde_json::{Map, Value, json};

use crate::desired::pool::DEFAULT_UPDATE_MAX_UNAVAILABLE;

/// Mode bits Kubernetes gives projected files when a volume names none (0644).
const DEFAULT_FILE_MODE: i64 = 0o644;

/// Sets `obj[key]` to `value` when the key is absent or null.
fn or_insert(obj: &mut Map<String, Value>, key: &str, value: Value) {
    match obj.get(key) {
        None | Some(Value::Null) => {
            obj.insert(key.to_string(), value);
        }
        Some(_) => {}
    }
}

/// Sets `obj[key]` to `value` when the key is absent, null or an empty string/array.
fn or_insert_nonempty(obj: &mut Map<String, Value>, key: &str, value: Value) {
    let empty = match obj.get(key) {
        None | Some(Value::Null) => true,
        Some(Value::String(s)) => s.is_empty(),
        Some(Value::Array(a)) => a.is_empty(),
        Some(_) => false,
    };
    if empty {
        obj.insert(key.to_string(), value);
    }
}

/// The objects of the array at `obj[key]`, if any.
fn objects_at<'a>(
    obj: &'a mut Map<String, Value>,
    key: &str,
) -> impl Iterator<Item = &'a mut Map<String, Value>> {
    obj.get_mut(key)
        .and_then(Value::as_array_mut)
        .into_iter()
        .flatten()
        .filter_map(Value::as_object_mut)
}

fn object_at<'a>(obj: &'a mut Map<String, Value>, key: &str) -> Option<&'a mut Map<String, Value>> {
    obj.get_mut(key).and_then(Value::as_object_mut)
}

/// The tag an image reference names: `latest` when it names neither a tag nor a digest, none
/// when it pins a digest.
fn image_tag(image: &str) -> Option<&str> {
    if image.contains('@') {
        return None;
    }
    // A colon after the last slash separates the tag; one before it belongs to a registry port.
    let last = image.rsplit('/').next().unwrap_or(image);
    Some(last.split_once(':').map_or("latest", |(_, tag)| tag))
}

fn default_http_get(handler: &mut Map<String, Value>) {
    if let Some(get) = object_at(handler, "httpGet") {
        or_insert_nonempty(get, "path", json!("/"));
        or_insert_nonempty(get, "scheme", json!("HTTP"));
    }
}

fn default_field_ref(holder: &mut Map<String, Value>) {
    if let Some(field) = object_at(holder, "fieldRef") {
        or_insert_nonempty(field, "apiVersion", json!("v1"));
    }
}

/// Kubernetes' container defaults; `main` containers get the original's `Always` pull policy
/// when they name none, init containers Kubernetes' own rule (by tag).
fn default_container(c: &mut Map<String, Value>, main: bool) {
    let policy = if main
        || c.get("image")
            .and_then(Value::as_str)
            .and_then(image_tag)
            .is_some_and(|t| t == "latest")
    {
        "Always"
    } else {
        "IfNotPresent"
    };
    or_insert_nonempty(c, "imagePullPolicy", json!(policy));
    or_insert_nonempty(c, "terminationMessagePath", json!("/dev/termination-log"));
    or_insert_nonempty(c, "terminationMessagePolicy", json!("File"));
    for port in objects_at(c, "ports") {
        or_insert_nonempty(port, "protocol", json!("TCP"));
    }
    for env in objects_at(c, "env") {
        if let Some(from) = object_at(env, "valueFrom") {
            default_field_ref(from);
        }
    }
    for probe in ["livenessProbe", "readinessProbe", "startupProbe"] {
        let Some(p) = object_at(c, probe) else {
            continue;
        };
        // Zero means "not set" for these, as in Kubernetes' own defaulting.
        for (key, value) in [
            ("timeoutSeconds", 1),
            ("periodSeconds", 10),
            ("successThreshold", 1),
            ("failureThreshold", 3),
        ] {
            if p.get(key).and_then(Value::as_i64).unwrap_or(0) == 0 {
                p.insert(key.to_string(), json!(value));
            }
        }
        default_http_get(p);
    }
    if let Some(lifecycle) = object_at(c, "lifecycle") {
        for hook in ["postStart", "preStop"] {
            if let Some(h) = object_at(lifecycle, hook) {
                default_http_get(h);
            }
        }
    }
}

fn default_volume(v: &mut Map<String, Value>) {
    // A volume naming no source is an emptyDir.
    if v.iter().all(|(k, val)| k == "name" || val.is_null()) {
        v.insert("emptyDir".into(), json!({}));
    }
    if let Some(host) = object_at(v, "hostPath") {
        or_insert(host, "type", json!(""));
    }
    for source in ["secret", "configMap"] {
        if let Some(s) = object_at(v, source) {
            or_insert(s, "defaultMode", json!(DEFAULT_FILE_MODE));
        }
    }
    if let Some(d) = object_at(v, "downwardAPI") {
        or_insert(d, "defaultMode", json!(DEFAULT_FILE_MODE));
        objects_at(d, "items").for_each(default_field_ref);
    }
    if let Some(p) = object_at(v, "projected") {
        or_insert(p, "defaultMode", json!(DEFAULT_FILE_MODE));
        for source in objects_at(p, "sources") {
            if let Some(d) = object_at(source, "downwardAPI") {
                objects_at(d, "items").for_each(default_field_ref);
            }
            if let Some(t) = object_at(source, "serviceAccountToken") {
                or_insert(t, "expirationSeconds", json!(3600));
            }
        }
    }
}

/// Fills in a pod template's defaults in place. The one definition both mutating webhooks use
/// for the template they embed; applying it twice changes nothing.
pub fn default_pod_template(template: &mut Value) {
    let Some(spec) = template.get_mut("spec").and_then(Value::as_object_mut) else {
        return;
    };
    // Sandboxes never get a service-account token (the original turns an explicit `true` off
    // too): agent code must not hold the cluster credentials of the namespace it runs in.
    if spec.get("automountServiceAccountToken") != Some(&Value::Bool(false)) {
        spec.insert("automountServiceAccountToken".into(), json!(false));
    }
    or_insert_nonempty(spec, "dnsPolicy", json!("ClusterFirst"));
    or_insert_nonempty(spec, "restartPolicy", json!("Always"));
    or_insert(spec, "securityContext", json!({}));
    or_insert(spec, "terminationGracePeriodSeconds", json!(30));
    or_insert_nonempty(spec, "schedulerName", json!("default-scheduler"));
    objects_at(spec, "volumes").for_each(default_volume);
    for c in objects_at(spec, "initContainers") {
        default_container(c, false);
    }
    for c in objects_at(spec, "containers") {
        default_container(c, true);
    }
}

/// Fills in the access and volume modes of PersistentVolumeClaim templates.
fn default_volume_claim_templates(vcts: &mut Value) {
    for vct in vcts
        .as_array_mut()
        .into_iter()
        .flatten()
        .filter_map(Value::as_object_mut)
    {
        let spec = match vct.get("spec") {
            Some(Value::Object(_)) => object_at(vct, "spec"),
            _ => {
                vct.insert("spec".into(), json!({}));
                object_at(vct, "spec")
            }
        };
        if let Some(spec) = spec {
            or_insert_nonempty(spec, "accessModes", json!(["ReadWriteOnce"]));
            or_insert(spec, "volumeMode", json!("Filesystem"));
        }
    }
}

/// The defaults a template source (a SandboxTemplate's or SandboxSet's spec) shares: its pod
/// template and its volume claim templates.
fn default_pod_source(spec: &mut Map<String, Value>) {
    if let Some(t) = spec.get_mut("template") {
        default_pod_template(t);
    }
    if let Some(v) = spec.get_mut("volumeClaimTemplates") {
        default_volume_claim_templates(v);
    }
}

/// The JSON patch turning `obj` into what `fill` makes of its `spec`.
fn patch_spec(obj: &Value, fill: impl FnOnce(&mut Map<String, Value>)) -> json_patch::Patch {
    let mut defaulted = obj.clone();
    if let Some(spec) = defaulted.get_mut("spec").and_then(Value::as_object_mut) {
        fill(spec);
    }
    json_patch::diff(obj, &defaulted)
}

/// JSON-patch operations filling SandboxSet defaults: its pod source and the update strategy.
pub fn default_sandboxset(obj: &Value) -> json_patch::Patch {
    patch_spec(obj, |spec| {
        default_pod_source(spec);
        match spec.get_mut("updateStrategy") {
            Some(Value::Object(u)) => {
                or_insert(u, "maxUnavailable", json!(DEFAULT_UPDATE_MAX_UNAVAILABLE))
            }
            _ => {
                spec.insert(
                    "updateStrategy".into(),
                    json!({"maxUnavailable": DEFAULT_UPDATE_MAX_UNAVAILABLE}),
                );
            }
        }
    })
}

/// JSON-patch operations filling SandboxTemplate defaults: its pod source.
pub fn default_sandboxtemplate(obj: &Value) -> json_patch::Patch {
    patch_spec(obj, default_pod_source)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ops(p: json_patch::Patch) -> Value {
        serde_json::to_value(p).unwrap()
    }

    fn applied(obj: &Value, p: &json_patch::Patch) -> Value {
        let mut out = obj.clone();
        json_patch::patch(&mut out, p).unwrap();
        out
    }

    #[test]
    fn sandboxset_defaults_update_max_unavailable() {
        let o = ops(default_sandboxset(&json!({"spec": {"replicas": 1}})));
        assert_eq!(o[0]["path"], "/spec/updateStrategy");
        assert_eq!(o[0]["value"]["maxUnavailable"], "20%");
        let o = ops(default_sandboxset(&json!({"spec": {"updateStrategy": {}}})));
        assert_eq!(o[0]["path"], "/spec/updateStrategy/maxUnavailable");
        assert_eq!(o[0]["op"], "add");
        assert_eq!(
            ops(default_sandboxset(
                &json!({"spec": {"updateStrategy": {"maxUnavailable": 1}}})
            )),
            json!([])
        );
    }

    #[test]
    fn a_pod_template_gets_kubernetes_pod_and_container_defaults() {
        let mut t = json!({"metadata": {"labels": {"a": "b"}}, "spec": {
            "initContainers": [{"name": "i", "image": "reg:5000/init:1.0"},
                               {"name": "j", "image": "reg:5000/init"}],
            "containers": [{"name": "m", "image": "img:1",
                "ports": [{"containerPort": 80}],
                "env": [{"name": "N", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}}],
                "readinessProbe": {"httpGet": {"port": 80}, "periodSeconds": 5},
                "lifecycle": {"preStop": {"httpGet": {"port": 80, "path": "/stop"}}}}],
        }});
        default_pod_template(&mut t);
        let s = &t["spec"];
        assert_eq!(s["automountServiceAccountToken"], false);
        assert_eq!(s["dnsPolicy"], "ClusterFirst");
        assert_eq!(s["restartPolicy"], "Always");
        assert_eq!(s["terminationGracePeriodSeconds"], 30);
        assert_eq!(s["securityContext"], json!({}));
        assert_eq!(s["schedulerName"], "default-scheduler");
        let m = &s["containers"][0];
        assert_eq!(m["imagePullPolicy"], "Always");
        assert_eq!(m["terminationMessagePath"], "/dev/termination-log");
        assert_eq!(m["terminationMessagePolicy"], "File");
        assert_eq!(m["ports"][0]["protocol"], "TCP");
        assert_eq!(m["env"][0]["valueFrom"]["fieldRef"]["apiVersion"], "v1");
        let probe = &m["readinessProbe"];
        assert_eq!(probe["periodSeconds"], 5, "a set value is kept");
        assert_eq!(probe["timeoutSeconds"], 1);
        assert_eq!(probe["successThreshold"], 1);
        assert_eq!(probe["failureThreshold"], 3);
        assert_eq!(probe["httpGet"]["path"], "/");
        assert_eq!(probe["httpGet"]["scheme"], "HTTP");
        assert_eq!(m["lifecycle"]["preStop"]["httpGet"]["path"], "/stop");
        assert_eq!(m["lifecycle"]["preStop"]["httpGet"]["scheme"], "HTTP");
        // Init containers follow Kubernetes' tag rule; a registry port is not a tag.
        assert_eq!(s["initContainers"][0]["imagePullPolicy"], "IfNotPresent");
        assert_eq!(s["initContainers"][1]["imagePullPolicy"], "Always");
        assert_eq!(t["metadata"]["labels"]["a"], "b");
    }

    #[test]
    fn what_a_template_sets_is_kept_except_the_service_account_token() {
        let mut t = json!({"spec": {"automountServiceAccountToken": true,
            "dnsPolicy": "None", "restartPolicy": "Never", "terminationGracePeriodSeconds": 0,
            "schedulerName": "mine", "securityContext": {"runAsUser": 1000},
            "containers": [{"name": "m", "image": "img", "imagePullPolicy": "Never"}]}});
        default_pod_template(&mut t);
        let s = &t["spec"];
        assert_eq!(s["automountServiceAccountToken"], false);
        assert_eq!(s["dnsPolicy"], "None");
        assert_eq!(s["restartPolicy"], "Never");
        assert_eq!(s["terminationGracePeriodSeconds"], 0);
        assert_eq!(s["schedulerName"], "mine");
        assert_eq!(s["securityContext"]["runAsUser"], 1000);
        assert_eq!(s["containers"][0]["imagePullPolicy"], "Never");
    }

    #[test]
    fn volumes_get_their_source_defaults() {
        let mut t = json!({"spec": {"containers": [], "volumes": [
            {"name": "scratch"},
            {"name": "h", "hostPath": {"path": "/x"}},
            {"name": "s", "secret": {"secretName": "s"}},
            {"name": "c", "configMap": {"name": "c", "defaultMode": 256}},
            {"name": "d", "downwardAPI": {"items": [{"path": "p", "fieldRef": {"fieldPath": "metadata.name"}}]}},
            {"name": "p", "projected": {"sources": [{"serviceAccountToken": {"path": "t"}}]}},
        ]}});
        default_pod_template(&mut t);
        let v = &t["spec"]["volumes"];
        assert_eq!(v[0]["emptyDir"], json!({}));
        assert_eq!(v[1]["hostPath"]["type"], "");
        assert_eq!(v[2]["secret"]["defaultMode"], 420);
        assert_eq!(v[3]["configMap"]["defaultMode"], 256);
        assert_eq!(v[4]["downwardAPI"]["defaultMode"], 420);
        assert_eq!(
            v[4]["downwardAPI"]["items"][0]["fieldRef"]["apiVersion"],
            "v1"
        );
        assert_eq!(v[5]["projected"]["defaultMode"], 420);
        assert_eq!(
            v[5]["projected"]["sources"][0]["serviceAccountToken"]["expirationSeconds"],
            3600
        );
        assert!(v[1].get("emptyDir").is_none());
    }

    #[test]
    fn the_sandboxtemplate_patch_defaults_template_and_claims_and_is_idempotent() {
        let obj = json!({"apiVersion": "agents.kruise.io/v1alpha1", "kind": "SandboxTemplate",
            "metadata": {"name": "t"},
            "spec": {"template": {"spec": {"containers": [{"name": "m", "image": "i:1"}]}},
                     "volumeClaimTemplates": [{"metadata": {"name": "data"}},
                        {"metadata": {"name": "rox"}, "spec": {"accessModes": ["ReadOnlyMany"], "volumeMode": "Block"}}],
                     "unknownField": {"kept": true}}});
        let patch = default_sandboxtemplate(&obj);
        let out = applied(&obj, &patch);
        assert_eq!(out["spec"]["template"]["spec"]["restartPolicy"], "Always");
        assert_eq!(
            out["spec"]["template"]["spec"]["containers"][0]["imagePullPolicy"],
            "Always"
        );
        let vct = &out["spec"]["volumeClaimTemplates"];
        assert_eq!(vct[0]["spec"]["accessModes"], json!(["ReadWriteOnce"]));
        assert_eq!(vct[0]["spec"]["volumeMode"], "Filesystem");
        assert_eq!(vct[1]["spec"]["accessModes"], json!(["ReadOnlyMany"]));
        assert_eq!(vct[1]["spec"]["volumeMode"], "Block");
        assert_eq!(out["spec"]["unknownField"], json!({"kept": true}));
        // Only additions: nothing the user wrote is removed.
        for op in ops(patch).as_array().unwrap() {
            assert_ne!(op["op"], "remove", "{op}");
        }
        assert_eq!(ops(default_sandboxtemplate(&out)), json!([]));
        // A template reference or no spec: nothing to default.
        let by_ref = json!({"spec": {"templateRef": {"name": "x"}}});
        assert_eq!(ops(default_sandboxtemplate(&by_ref)), json!([]));
        assert_eq!(ops(default_sandboxtemplate(&json!({}))), json!([]));
    }

    #[test]
    fn a_sandboxset_and_a_sandboxtemplate_default_the_same_pod_template_alike() {
        let pod = json!({"spec": {"containers": [{"name": "m", "image": "i",
            "livenessProbe": {"exec": {"command": ["true"]}}}]}});
        let set = json!({"spec": {"replicas": 1, "template": pod}});
        let tpl = json!({"spec": {"template": pod}});
        let set_out = applied(&set, &default_sandboxset(&set));
        let tpl_out = applied(&tpl, &default_sandboxtemplate(&tpl));
        assert_eq!(set_out["spec"]["template"], tpl_out["spec"]["template"]);
        assert_ne!(tpl_out["spec"]["template"], pod);
    }

    #[test]
    fn odd_shapes_are_left_alone_not_a_panic() {
        for bad in [
            json!({"spec": {"template": "nope"}}),
            json!({"spec": {"volumeClaimTemplates": {"a": 1}}}),
            json!({"spec": 7}),
            json!(null),
        ] {
            assert_eq!(ops(default_sandboxtemplate(&bad)), json!([]), "{bad}");
        }
        let odd =
            json!({"spec": {"template": {"spec": {"containers": "x", "volumes": [1, null]}}}});
        let out = applied(&odd, &default_sandboxtemplate(&odd));
        assert_eq!(out["spec"]["template"]["spec"]["containers"], "x");
        assert_eq!(out["spec"]["template"]["spec"]["volumes"], json!([1, null]));
        assert_eq!(out["spec"]["template"]["spec"]["restartPolicy"], "Always");
    }

    #[test]
    fn image_tags_are_read_past_registry_ports_and_digests() {
        assert_eq!(image_tag("busybox"), Some("latest"));
        assert_eq!(image_tag("reg:5000/a/b"), Some("latest"));
        assert_eq!(image_tag("reg:5000/a/b:2"), Some("2"));
        assert_eq!(image_tag("a@sha256:00"), None);
    }
}
