//! Admission webhooks: a TLS server with a self-issued certificate, the webhook configurations
//! that point the API server at it, and thin handlers over the pure rules in [`rules`].
//!
//! The certificate authority and serving certificate are made at start-up and the CA is
//! written into the configurations' `caBundle` each time, so no certificate ever needs
//! rotating by hand.

pub mod defaults;
mod review;
pub mod rules;

use std::net::SocketAddr;
use std::sync::Arc;

use axum::body::Bytes;
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
use k8s_openapi::api::core::v1::{Pod, Secret};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta};
use kube::ResourceExt;
use kube::api::{Api, Patch, PatchParams, PostParams};
use kube::core::DynamicObject;
use paddock_crds::{Sandbox, SandboxClaim, SandboxSet, SandboxTemplate, keys};
use tokio::net::TcpListener;

use crate::context::Context;
use crate::{WebhookConfig, WebhookEndpoint};
use review::{Request, Verdict, respond};

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
    #[error("reading or writing the webhook certificate Secret: {0}")]
    CertSecret(#[source] kube::Error),
    #[error("the webhook certificate Secret holds bad PEM: {0}")]
    Pem(String),
}

pub const PATH_POD_DELETE: &str = "/validate-pod-delete";
pub const PATH_DEFAULT_SANDBOXSET: &str = "/default-sandboxset";
pub const PATH_DEFAULT_SANDBOXTEMPLATE: &str = "/default-sandboxtemplate";
pub const PATH_VALIDATE_SANDBOXSET: &str = "/validate-sandboxset";
pub const PATH_VALIDATE_SANDBOXTEMPLATE: &str = "/validate-sandboxtemplate";
pub const PATH_VALIDATE_SANDBOXCLAIM: &str = "/validate-sandboxclaim";

/// The webhook PKI, as PEM: what a Secret stores and what every replica serves.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Certs {
    ca_pem: String,
    cert_pem: String,
    key_pem: String,
}

/// The DNS names (or the IP) the serving certificate is issued for.
fn cert_names(endpoint: &WebhookEndpoint) -> Vec<String> {
    match endpoint {
        WebhookEndpoint::Url { host } => vec![host.clone()],
        WebhookEndpoint::Service { name, namespace } => vec![
            format!("{name}.{namespace}.svc"),
            format!("{name}.{namespace}.svc.cluster.local"),
        ],
    }
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
    let names = cert_names(endpoint);
    let key = KeyPair::generate()?;
    let mut params = CertificateParams::new(names.clone())?;
    params
        .distinguished_name
        .push(DnType::CommonName, names[0].clone());
    let cert = params.signed_by(&key, &ca)?;
    Ok(Certs {
        ca_pem: ca.pem(),
        cert_pem: cert.pem(),
        key_pem: key.serialize_pem(),
    })
}

/// Annotation on the certificate Secret naming what the certificate was issued for, so a
/// Secret left by a differently named Service is replaced rather than served.
const ANNOTATION_CERT_NAMES: &str = "paddock.dev/webhook-cert-names";
const KEY_CA: &str = "ca.crt";
const KEY_CERT: &str = "tls.crt";
const KEY_KEY: &str = "tls.key";

/// The certificates a Secret holds, if it holds a complete set issued for `names`.
fn certs_from_secret(secret: &Secret, names: &str) -> Option<Certs> {
    if secret
        .annotations()
        .get(ANNOTATION_CERT_NAMES)
        .map(String::as_str)
        != Some(names)
    {
        return None;
    }
    let data = secret.data.as_ref()?;
    let text = |k: &str| {
        data.get(k)
            .and_then(|b| String::from_utf8(b.0.clone()).ok())
    };
    Some(Certs {
        ca_pem: text(KEY_CA)?,
        cert_pem: text(KEY_CERT)?,
        key_pem: text(KEY_KEY)?,
    })
}

fn secret_of(name: &str, names: &str, certs: &Certs) -> Secret {
    let bytes = |s: &str| ByteString(s.as_bytes().to_vec());
    Secret {
        metadata: ObjectMeta {
            name: Some(name.to_string()),
            annotations: Some([(ANNOTATION_CERT_NAMES.to_string(), names.to_string())].into()),
            ..Default::default()
        },
        // Opaque, not kubernetes.io/tls: the chart creates the Secret empty (so that `helm
        // uninstall` removes it) and a Secret's type cannot change.
        type_: Some("Opaque".into()),
        data: Some(
            [
                (KEY_CA.to_string(), bytes(&certs.ca_pem)),
                (KEY_CERT.to_string(), bytes(&certs.cert_pem)),
                (KEY_KEY.to_string(), bytes(&certs.key_pem)),
            ]
            .into(),
        ),
        ..Default::default()
    }
}

/// The certificates every replica shares: read from the Secret, or issued and stored there
/// (created, or filled in when the chart made it empty) by whichever replica gets there first (a create or update that loses a race re-reads the
/// winner's).
async fn shared_certs(
    api: &Api<Secret>,
    secret: &str,
    endpoint: &WebhookEndpoint,
) -> Result<Certs, WebhookError> {
    let names = cert_names(endpoint).join(",");
    loop {
        let found = api
            .get_opt(secret)
            .await
            .map_err(WebhookError::CertSecret)?;
        if let Some(certs) = found.as_ref().and_then(|s| certs_from_secret(s, &names)) {
            return Ok(certs);
        }
        let certs = issue(endpoint)?;
        let mut wanted = secret_of(secret, &names, &certs);
        let written = match found {
            None => api.create(&PostParams::default(), &wanted).await,
            Some(old) => {
                tracing::info!(
                    secret,
                    "webhook certificate Secret is incomplete or for other names: replacing it"
                );
                // Keep what others put on it (Helm's labels and ownership annotations).
                let mut meta = old.metadata;
                meta.annotations
                    .get_or_insert_with(Default::default)
                    .insert(ANNOTATION_CERT_NAMES.to_string(), names.clone());
                wanted.metadata = meta;
                api.replace(secret, &PostParams::default(), &wanted).await
            }
        };
        match written {
            Ok(_) => {
                tracing::info!(secret, "issued the webhook certificate and stored it");
                return Ok(certs);
            }
            // Another replica wrote first: use what it stored.
            Err(kube::Error::Api(e)) if e.code == 409 => continue,
            Err(e) => return Err(WebhookError::CertSecret(e)),
        }
    }
}

fn tls_config(certs: &Certs) -> Result<rustls::ServerConfig, WebhookError> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let chain = CertificateDer::pem_slice_iter(certs.cert_pem.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| WebhookError::Pem(e.to_string()))?;
    let key = PrivateKeyDer::from_pem_slice(certs.key_pem.as_bytes())
        .map_err(|e| WebhookError::Pem(e.to_string()))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    Ok(rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_no_client_auth()
        .with_single_cert(chain, key)?)
}

/// Serves the webhooks and registers their configurations; returns once both are in place.
pub async fn start(ctx: Arc<Context>, cfg: &WebhookConfig) -> Result<(), WebhookError> {
    let certs = match (&cfg.cert_secret, &cfg.endpoint) {
        (Some(secret), WebhookEndpoint::Service { namespace, .. }) => {
            let api: Api<Secret> = Api::namespaced(ctx.client.clone(), namespace);
            shared_certs(&api, secret, &cfg.endpoint).await?
        }
        _ => issue(&cfg.endpoint)?,
    };
    let tls = tls_config(&certs)?;
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
        .route(PATH_DEFAULT_SANDBOXTEMPLATE, post(default_sandboxtemplate))
        .route(PATH_VALIDATE_SANDBOXSET, post(validate_sandboxset))
        .route(
            PATH_VALIDATE_SANDBOXTEMPLATE,
            post(validate_sandboxtemplate),
        )
        .route(PATH_VALIDATE_SANDBOXCLAIM, post(validate_sandboxclaim))
        .with_state(ctx)
}

type Handled = Json<serde_json::Value>;

/// Reads the review in `body` and answers it with what `decide` makes of its request.
fn handle(body: &[u8], decide: impl FnOnce(&Request) -> Verdict) -> Handled {
    Json(review::to_wire(&match review::request(body) {
        Ok(req) => respond(&req, decide(&req)),
        Err(e) => review::rejection(&e),
    }))
}

/// The object of a review as the typed `K`, or a message naming what does not fit.
fn typed<K: serde::de::DeserializeOwned>(
    kind: &str,
    obj: Option<&DynamicObject>,
) -> Option<Result<K, rules::ParseError>> {
    obj.map(|o| {
        serde_json::to_value(o)
            .map_err(|e| rules::ParseError::new(kind, e))
            .and_then(|v| rules::parse::<K>(kind, &v))
    })
}

async fn pod_delete(State(ctx): State<Arc<Context>>, body: Bytes) -> Handled {
    let req = match review::request(&body) {
        Ok(req) => req,
        Err(e) => return Json(review::to_wire(&review::rejection(&e))),
    };
    let ns = req.namespace.clone().unwrap_or_default();
    let pods: Api<Pod> = ctx.api(&ns);
    // DELETE carries the Pod as oldObject; an eviction carries only the Pod's name.
    let pod = match typed::<Pod>("Pod", req.old_object.as_ref()) {
        Some(Ok(p)) => Some(p),
        _ => pods.get_opt(&req.name).await.ok().flatten(),
    };
    // Asked of the API server, not the shared cache: this runs on every replica, and only the
    // leader fills the cache.
    let sandboxes: Api<Sandbox> = ctx.api(&ns);
    let sandbox = match pod {
        Some(_) => sandboxes.get_opt(&req.name).await,
        None => Ok(None),
    };
    let verdict = pod_delete_verdict(&req, pod.as_ref(), sandbox, &ctx.username);
    Json(review::to_wire(&respond(&req, verdict)))
}

/// The Pod-delete decision once the Pod and its Sandbox are looked up.
fn pod_delete_verdict(
    req: &Request,
    pod: Option<&Pod>,
    sandbox: Result<Option<Sandbox>, kube::Error>,
    controller: &str,
) -> Verdict {
    let Some(pod) = pod else {
        return Verdict::Allow;
    };
    // Unknown: let it through (failurePolicy is Ignore for the same reason).
    let Ok(sandbox) = sandbox else {
        return Verdict::Allow;
    };
    let user = req.user_info.username.as_deref().unwrap_or_default();
    match rules::pod_delete(pod, sandbox.as_ref(), user, controller) {
        Ok(()) => Verdict::Allow,
        Err(denied) => Verdict::deny(denied.to_string()),
    }
}

/// Answers a mutating review with the patch `defaults` makes of its object.
fn mutate(body: &[u8], defaults: fn(&serde_json::Value) -> json_patch::Patch) -> Handled {
    handle(body, |req| {
        let ops = req
            .object
            .as_ref()
            .and_then(|o| serde_json::to_value(o).ok())
            .map(|v| defaults(&v))
            .unwrap_or_default();
        Verdict::Patch(ops)
    })
}

async fn default_sandboxset(body: Bytes) -> Handled {
    mutate(&body, defaults::default_sandboxset)
}

async fn default_sandboxtemplate(body: Bytes) -> Handled {
    mutate(&body, defaults::default_sandboxtemplate)
}

async fn validate_sandboxset(body: Bytes) -> Handled {
    handle(&body, |req| {
        match typed::<SandboxSet>("SandboxSet", req.object.as_ref()) {
            Some(Ok(s)) => Verdict::invalid(rules::sandboxset(&s)),
            Some(Err(e)) => Verdict::invalid(vec![e.to_string()]),
            None => Verdict::Allow,
        }
    })
}

async fn validate_sandboxtemplate(body: Bytes) -> Handled {
    handle(&body, |req| {
        match typed::<SandboxTemplate>("SandboxTemplate", req.object.as_ref()) {
            Some(Ok(s)) => Verdict::invalid(rules::sandboxtemplate(&s)),
            Some(Err(e)) => Verdict::invalid(vec![e.to_string()]),
            None => Verdict::Allow,
        }
    })
}

async fn validate_sandboxclaim(body: Bytes) -> Handled {
    handle(&body, |req| {
        let new = typed::<SandboxClaim>("SandboxClaim", req.object.as_ref());
        let old =
            typed::<SandboxClaim>("SandboxClaim", req.old_object.as_ref()).and_then(Result::ok);
        match new {
            Some(Ok(c)) => Verdict::invalid(rules::sandboxclaim(&c, old.as_ref())),
            Some(Err(e)) => Verdict::invalid(vec![e.to_string()]),
            None => Verdict::Allow,
        }
    })
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
    let mutating = |name: &str, path: &str, rule: RuleWithOperations| MutatingWebhook {
        name: name.into(),
        admission_review_versions: vec!["v1".into()],
        client_config: client_config(cfg, path, ca),
        failure_policy: Some("Fail".into()),
        side_effects: "None".into(),
        timeout_seconds: Some(10),
        namespace_selector: ns_selector.clone(),
        rules: Some(vec![rule]),
        ..Default::default()
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
        webhooks: Some(vec![
            mutating(
                "md-sbs.kb.io",
                PATH_DEFAULT_SANDBOXSET,
                rule("sandboxsets", agents, &["CREATE", "UPDATE"]),
            ),
            // CREATE only, as the original: a template is defaulted once, when it is stored.
            mutating(
                "md-sbt.kb.io",
                PATH_DEFAULT_SANDBOXTEMPLATE,
                rule("sandboxtemplates", agents, &["CREATE"]),
            ),
        ]),
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
mod tests;
