//! Admission webhooks: a TLS server with a self-issued certificate, the webhook configurations
//! that point the API server at it, and thin handlers over the pure rules in [`rules`].
//!
//! The certificate authority and serving certificate are made at start-up and the CA is
//! written into the configurations' `caBundle` each time, so no certificate ever needs
//! rotating by hand.

mod review;
pub mod rules;

use std::net::SocketAddr;
use std::sync::Arc;

use axum::extract::State;
use axum::routing::post;
use axum::{Json, Router};
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::service::TowerToHyperService;
use k8s_openapi::ByteString;
use k8s_openapi::api::admissionregistration::v1::{
    MutatingWebhook, MutatingWebhookConfiguration, RuleWithOperations, ServiceReference,
    ValidatingWebhook, ValidatingWebhookConfiguration, WebhookClientConfig,
};
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta};
use kube::api::{Api, Patch, PatchParams};
use paddock_crds::{Sandbox, SandboxClaim, SandboxSet, SandboxTemplate, keys};
use serde_json::Value;
use tokio::net::TcpListener;

use crate::context::Context;
use crate::{WebhookConfig, WebhookEndpoint};
use review::{Review, Verdict, respond};

#[derive(Debug, thiserror::Error)]
pub enum WebhookError {
    #[error("issuing the webhook certificate: {0}")]
    Certificate(#[from] rcgen::Error),
    #[error("webhook TLS configuration: {0}")]
    Tls(#[from] rustls::Error),
    #[error("binding the webhook port {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("registering webhook configurations: {0}")]
    Register(#[from] kube::Error),
}

pub const PATH_POD_DELETE: &str = "/validate-pod-delete";
pub const PATH_DEFAULT_SANDBOXSET: &str = "/default-sandboxset";
pub const PATH_VALIDATE_SANDBOXSET: &str = "/validate-sandboxset";
pub const PATH_VALIDATE_SANDBOXTEMPLATE: &str = "/validate-sandboxtemplate";
pub const PATH_VALIDATE_SANDBOXCLAIM: &str = "/validate-sandboxclaim";

struct Certs {
    ca_pem: String,
    cert_der: Vec<u8>,
    key_der: Vec<u8>,
}

fn issue(endpoint: &WebhookEndpoint) -> Result<Certs, rcgen::Error> {
    use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, KeyPair, KeyUsagePurpose};
    let ca_key = KeyPair::generate()?;
    let mut ca = CertificateParams::new(Vec::<String>::new())?;
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    ca.distinguished_name
        .push(DnType::CommonName, "paddock-controller-webhook-ca");
    let ca = rcgen::CertifiedIssuer::self_signed(ca, ca_key)?;
    let names = match endpoint {
        WebhookEndpoint::Url { host } => vec![host.clone()],
        WebhookEndpoint::Service { name, namespace } => vec![
            format!("{name}.{namespace}.svc"),
            format!("{name}.{namespace}.svc.cluster.local"),
        ],
    };
    let key = KeyPair::generate()?;
    let mut params = CertificateParams::new(names.clone())?;
    params
        .distinguished_name
        .push(DnType::CommonName, names[0].clone());
    let cert = params.signed_by(&key, &ca)?;
    Ok(Certs {
        ca_pem: ca.pem(),
        cert_der: cert.der().to_vec(),
        key_der: key.serialize_der(),
    })
}

/// Serves the webhooks and registers their configurations; returns once both are in place.
pub async fn start(ctx: Arc<Context>, cfg: &WebhookConfig) -> Result<(), WebhookError> {
    let certs = issue(&cfg.endpoint)?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let tls = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_no_client_auth()
        .with_single_cert(
            vec![certs.cert_der.clone().into()],
            rustls::pki_types::PrivateKeyDer::Pkcs8(certs.key_der.clone().into()),
        )?;
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(tls));
    let addr = SocketAddr::from(([0, 0, 0, 0], cfg.port));
    let listener = TcpListener::bind(addr)
        .await
        .map_err(|source| WebhookError::Bind { addr, source })?;
    let app = router(ctx.clone());
    tokio::spawn(async move {
        loop {
            let Ok((tcp, peer)) = listener.accept().await else {
                continue;
            };
            let _ = tcp.set_nodelay(true);
            let acceptor = acceptor.clone();
            let app = app.clone();
            tokio::spawn(async move {
                let tls = match acceptor.accept(tcp).await {
                    Ok(t) => t,
                    Err(e) => {
                        tracing::debug!(%peer, error = %e, "webhook TLS handshake failed");
                        return;
                    }
                };
                let service = TowerToHyperService::new(app);
                let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(tls), service)
                    .await;
            });
        }
    });
    register(&ctx, cfg, &certs.ca_pem).await?;
    tracing::info!(port = cfg.port, "admission webhooks serving and registered");
    Ok(())
}

fn router(ctx: Arc<Context>) -> Router {
    Router::new()
        .route(PATH_POD_DELETE, post(pod_delete))
        .route(PATH_DEFAULT_SANDBOXSET, post(default_sandboxset))
        .route(PATH_VALIDATE_SANDBOXSET, post(validate_sandboxset))
        .route(
            PATH_VALIDATE_SANDBOXTEMPLATE,
            post(validate_sandboxtemplate),
        )
        .route(PATH_VALIDATE_SANDBOXCLAIM, post(validate_sandboxclaim))
        .with_state(ctx)
}

type Handled = Json<Value>;

fn answer(review: &Review, verdict: Verdict) -> Handled {
    let uid = review
        .request
        .as_ref()
        .map(|r| r.uid.as_str())
        .unwrap_or("");
    if let Verdict::Deny { message, .. } = &verdict {
        tracing::info!(uid, %message, "admission denied");
    }
    Json(respond(uid, verdict))
}

async fn pod_delete(State(ctx): State<Arc<Context>>, Json(review): Json<Review>) -> Handled {
    let Some(req) = review.request.clone() else {
        return answer(&review, Verdict::Allow);
    };
    let pods: Api<Pod> = ctx.api(&req.namespace);
    // DELETE carries the Pod as oldObject; an eviction carries only the Pod's name.
    let pod = match req
        .old_object
        .as_ref()
        .map(|o| rules::parse::<Pod>("Pod", o))
    {
        Some(Ok(p)) => Some(p),
        _ => pods.get_opt(&req.name).await.ok().flatten(),
    };
    let Some(pod) = pod else {
        return answer(&review, Verdict::Allow);
    };
    let sandboxes: Api<Sandbox> = ctx.api(&req.namespace);
    let sandbox = match sandboxes.get_opt(&req.name).await {
        Ok(s) => s,
        // Unknown: let it through (failurePolicy is Ignore for the same reason).
        Err(_) => return answer(&review, Verdict::Allow),
    };
    let verdict = match rules::pod_delete(
        &pod,
        sandbox.as_ref(),
        &req.user_info.username,
        &ctx.username,
    ) {
        Ok(()) => Verdict::Allow,
        Err(msg) => Verdict::deny(msg),
    };
    answer(&review, verdict)
}

async fn default_sandboxset(Json(review): Json<Review>) -> Handled {
    let ops = review
        .request
        .as_ref()
        .and_then(|r| r.object.as_ref())
        .map(rules::default_sandboxset)
        .unwrap_or_default();
    answer(&review, Verdict::Patch(ops))
}

fn typed<K: serde::de::DeserializeOwned>(
    kind: &str,
    v: Option<&Value>,
) -> Option<Result<K, String>> {
    v.map(|o| rules::parse::<K>(kind, o))
}

async fn validate_sandboxset(Json(review): Json<Review>) -> Handled {
    let verdict = match typed::<SandboxSet>(
        "SandboxSet",
        review.request.as_ref().and_then(|r| r.object.as_ref()),
    ) {
        Some(Ok(s)) => Verdict::invalid(rules::sandboxset(&s)),
        Some(Err(e)) => Verdict::invalid(vec![e]),
        None => Verdict::Allow,
    };
    answer(&review, verdict)
}

async fn validate_sandboxtemplate(Json(review): Json<Review>) -> Handled {
    let verdict = match typed::<SandboxTemplate>(
        "SandboxTemplate",
        review.request.as_ref().and_then(|r| r.object.as_ref()),
    ) {
        Some(Ok(s)) => Verdict::invalid(rules::sandboxtemplate(&s)),
        Some(Err(e)) => Verdict::invalid(vec![e]),
        None => Verdict::Allow,
    };
    answer(&review, verdict)
}

async fn validate_sandboxclaim(Json(review): Json<Review>) -> Handled {
    let req = review.request.as_ref();
    let new = typed::<SandboxClaim>("SandboxClaim", req.and_then(|r| r.object.as_ref()));
    let old = typed::<SandboxClaim>("SandboxClaim", req.and_then(|r| r.old_object.as_ref()))
        .and_then(Result::ok);
    let verdict = match new {
        Some(Ok(c)) => Verdict::invalid(rules::sandboxclaim(&c, old.as_ref())),
        Some(Err(e)) => Verdict::invalid(vec![e]),
        None => Verdict::Allow,
    };
    answer(&review, verdict)
}

fn client_config(cfg: &WebhookConfig, path: &str, ca: &str) -> WebhookClientConfig {
    let ca_bundle = Some(ByteString(ca.as_bytes().to_vec()));
    match &cfg.endpoint {
        WebhookEndpoint::Url { host } => {
            let host = if host.contains(':') {
                format!("[{host}]")
            } else {
                host.clone()
            };
            WebhookClientConfig {
                ca_bundle,
                url: Some(format!("https://{host}:{}{path}", cfg.port)),
                service: None,
            }
        }
        WebhookEndpoint::Service { name, namespace } => WebhookClientConfig {
            ca_bundle,
            url: None,
            service: Some(ServiceReference {
                name: name.clone(),
                namespace: namespace.clone(),
                path: Some(path.to_string()),
                port: Some(443),
            }),
        },
    }
}

fn rule(resource: &str, group: &str, ops: &[&str]) -> RuleWithOperations {
    RuleWithOperations {
        api_groups: Some(vec![group.to_string()]),
        api_versions: Some(vec![
            if group.is_empty() { "v1" } else { "v1alpha1" }.to_string(),
        ]),
        operations: Some(ops.iter().map(|s| s.to_string()).collect()),
        resources: Some(vec![resource.to_string()]),
        scope: Some("Namespaced".into()),
    }
}

/// Creates or updates the two webhook configurations (server-side apply, so re-running is
/// harmless and picks up the new CA).
async fn register(ctx: &Context, cfg: &WebhookConfig, ca: &str) -> Result<(), kube::Error> {
    let ns_selector = ctx.config.namespace.as_ref().map(|ns| LabelSelector {
        match_labels: Some([("kubernetes.io/metadata.name".to_string(), ns.clone())].into()),
        match_expressions: None,
    });
    let sandbox_pods = LabelSelector {
        match_labels: Some(
            [(
                keys::LABEL_CREATED_BY.to_string(),
                keys::CREATED_BY_SANDBOX.to_string(),
            )]
            .into(),
        ),
        match_expressions: None,
    };
    let validating = |name: &str,
                      path: &str,
                      rules: Vec<RuleWithOperations>,
                      fail: bool,
                      objects: Option<LabelSelector>| {
        ValidatingWebhook {
            name: name.into(),
            admission_review_versions: vec!["v1".into()],
            client_config: client_config(cfg, path, ca),
            failure_policy: Some(if fail { "Fail" } else { "Ignore" }.into()),
            side_effects: "None".into(),
            timeout_seconds: Some(10),
            namespace_selector: ns_selector.clone(),
            object_selector: objects,
            rules: Some(rules),
            ..Default::default()
        }
    };
    let agents = paddock_crds::GROUP;
    let v = ValidatingWebhookConfiguration {
        metadata: ObjectMeta {
            name: Some(format!("{}-validating", cfg.config_name)),
            ..Default::default()
        },
        webhooks: Some(vec![
            validating(
                "v-pod-delete.kb.io",
                PATH_POD_DELETE,
                vec![rule("pods", "", &["DELETE"])],
                false,
                Some(sandbox_pods),
            ),
            validating(
                "v-pod-eviction.kb.io",
                PATH_POD_DELETE,
                vec![rule("pods/eviction", "", &["CREATE"])],
                false,
                None,
            ),
            validating(
                "v-sbs.kb.io",
                PATH_VALIDATE_SANDBOXSET,
                vec![rule("sandboxsets", agents, &["CREATE", "UPDATE"])],
                true,
                None,
            ),
            validating(
                "v-sbt.kb.io",
                PATH_VALIDATE_SANDBOXTEMPLATE,
                vec![rule("sandboxtemplates", agents, &["CREATE"])],
                true,
                None,
            ),
            validating(
                "v-sbc.kb.io",
                PATH_VALIDATE_SANDBOXCLAIM,
                vec![rule("sandboxclaims", agents, &["CREATE", "UPDATE"])],
                true,
                None,
            ),
        ]),
    };
    let m = MutatingWebhookConfiguration {
        metadata: ObjectMeta {
            name: Some(format!("{}-mutating", cfg.config_name)),
            ..Default::default()
        },
        webhooks: Some(vec![MutatingWebhook {
            name: "md-sbs.kb.io".into(),
            admission_review_versions: vec!["v1".into()],
            client_config: client_config(cfg, PATH_DEFAULT_SANDBOXSET, ca),
            failure_policy: Some("Fail".into()),
            side_effects: "None".into(),
            timeout_seconds: Some(10),
            namespace_selector: ns_selector.clone(),
            rules: Some(vec![rule("sandboxsets", agents, &["CREATE", "UPDATE"])]),
            ..Default::default()
        }]),
    };
    let pp = PatchParams::apply("paddock-controller").force();
    let vapi: Api<ValidatingWebhookConfiguration> = Api::all(ctx.client.clone());
    vapi.patch(
        &v.metadata.name.clone().unwrap_or_default(),
        &pp,
        &Patch::Apply(&v),
    )
    .await?;
    let mapi: Api<MutatingWebhookConfiguration> = Api::all(ctx.client.clone());
    mapi.patch(
        &m.metadata.name.clone().unwrap_or_default(),
        &pp,
        &Patch::Apply(&m),
    )
    .await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn review(object: Value, old: Option<Value>) -> Review {
        serde_json::from_value(json!({
            "apiVersion": "admission.k8s.io/v1",
            "kind": "AdmissionReview",
            "request": {"uid": "u-1", "operation": "UPDATE", "name": "c", "namespace": "ns",
                        "userInfo": {"username": "alice"}, "object": object, "oldObject": old},
        }))
        .unwrap()
    }

    fn claim(replicas: i32) -> Value {
        json!({"apiVersion": "agents.kruise.io/v1alpha1", "kind": "SandboxClaim",
               "metadata": {"name": "c"}, "spec": {"templateName": "pool", "replicas": replicas}})
    }

    #[tokio::test]
    async fn a_claim_update_changing_replicas_is_denied_with_a_422() {
        let Json(out) = validate_sandboxclaim(Json(review(claim(2), Some(claim(1))))).await;
        assert_eq!(out["response"]["uid"], "u-1");
        assert_eq!(out["response"]["allowed"], false);
        assert_eq!(out["response"]["status"]["code"], 422);
        let msg = out["response"]["status"]["message"].as_str().unwrap();
        assert!(msg.contains("spec.replicas: field is immutable"), "{msg}");
        let Json(out) = validate_sandboxclaim(Json(review(claim(1), Some(claim(1))))).await;
        assert_eq!(out["response"]["allowed"], true);
    }

    #[tokio::test]
    async fn a_malformed_pod_template_is_denied_naming_the_problem() {
        let set = json!({"apiVersion": "agents.kruise.io/v1alpha1", "kind": "SandboxSet",
            "metadata": {"name": "s"}, "spec": {"replicas": 1, "template": {"spec": {"containers": "nope"}}}});
        let Json(out) = validate_sandboxset(Json(review(set, None))).await;
        assert_eq!(out["response"]["allowed"], false);
        let msg = out["response"]["status"]["message"].as_str().unwrap();
        assert!(msg.starts_with("SandboxSet: invalid type"), "{msg}");
    }

    #[tokio::test]
    async fn the_sandboxset_default_comes_back_as_a_json_patch() {
        use base64::Engine;
        let set = json!({"spec": {"replicas": 1}});
        let Json(out) = default_sandboxset(Json(review(set, None))).await;
        assert_eq!(out["response"]["patchType"], "JSONPatch");
        let patch = base64::engine::general_purpose::STANDARD
            .decode(out["response"]["patch"].as_str().unwrap())
            .unwrap();
        let ops: Value = serde_json::from_slice(&patch).unwrap();
        assert_eq!(ops[0]["value"]["maxUnavailable"], "20%");
    }
}
