//! Start-up checks: the CRDs are installed and RBAC allows every verb the backend uses, so a
//! misconfigured install fails at start with the verb and resource named, not at the first
//! create.

use k8s_openapi::api::authorization::v1::{
    ResourceAttributes, SelfSubjectAccessReview, SelfSubjectAccessReviewSpec,
};
use kube::Client;
use kube::api::{Api, ListParams, PostParams};
use paddock_crds::SandboxSet;

use crate::KubeConfig;
use crate::call::{CallError, call};

/// Why the backend could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("the agents.kruise.io CRDs are not installed: run `paddock crds | kubectl apply -f -`")]
    CrdsMissing,
    #[error("RBAC forbids verb `{verb}` on resource `{resource}`{}", scope(.namespace))]
    Forbidden {
        verb: String,
        resource: String,
        namespace: Option<String>,
    },
    #[error("the Kubernetes API server is unreachable: {0}")]
    Unreachable(String),
    #[error("kubernetes API: {0}")]
    Kube(#[source] kube::Error),
}

fn scope(ns: &Option<String>) -> String {
    match ns {
        Some(ns) => format!(" in namespace `{ns}`"),
        None => " cluster-wide".into(),
    }
}

/// Fails with a clear message when the CRDs are missing or RBAC forbids a verb we need.
pub(crate) async fn preflight(client: &Client, config: &KubeConfig) -> Result<(), StartError> {
    let scopes: Vec<Option<String>> = if config.namespaces.is_empty() {
        vec![None]
    } else {
        config.namespaces.iter().cloned().map(Some).collect()
    };
    let probe: Api<SandboxSet> = match &scopes[0] {
        Some(ns) => Api::namespaced(client.clone(), ns),
        None => Api::all(client.clone()),
    };
    match call(probe.list(&ListParams::default().limit(1))).await {
        Ok(_) => {}
        Err(CallError::Status(404, _)) => return Err(StartError::CrdsMissing),
        Err(CallError::Status(403, _)) => {
            return Err(StartError::Forbidden {
                verb: "list".into(),
                resource: "sandboxsets.agents.kruise.io".into(),
                namespace: scopes[0].clone(),
            });
        }
        Err(CallError::Status(_, e)) => return Err(StartError::Kube(e)),
        Err(CallError::Down(m)) => return Err(StartError::Unreachable(m)),
    }
    let mut needs: Vec<(&str, &str, &str, Option<String>)> = Vec::new();
    for ns in &scopes {
        for verb in ["get", "list", "watch"] {
            needs.push((verb, "agents.kruise.io", "sandboxsets", ns.clone()));
        }
        for verb in [
            "get", "list", "watch", "create", "update", "patch", "delete",
        ] {
            needs.push((verb, "agents.kruise.io", "sandboxes", ns.clone()));
        }
        for verb in ["get", "create"] {
            needs.push((verb, "agents.kruise.io", "sandboxtemplates", ns.clone()));
        }
        needs.push(("get", "", "pods", ns.clone()));
        needs.push(("get", "", "pods/log", ns.clone()));
    }
    if config.gateway_selector.is_some() {
        for verb in ["list", "watch"] {
            needs.push((verb, "", "pods", Some(config.system_namespace.clone())));
        }
    }
    let reviews: Api<SelfSubjectAccessReview> = Api::all(client.clone());
    let checks = needs.iter().map(|(verb, group, resource, ns)| {
        let reviews = reviews.clone();
        async move {
            let (resource, subresource) = match resource.split_once('/') {
                Some((r, s)) => (r, Some(s.to_string())),
                None => (*resource, None),
            };
            let review = SelfSubjectAccessReview {
                spec: SelfSubjectAccessReviewSpec {
                    resource_attributes: Some(ResourceAttributes {
                        verb: Some(verb.to_string()),
                        group: Some(group.to_string()),
                        resource: Some(resource.to_string()),
                        subresource,
                        namespace: ns.clone(),
                        ..Default::default()
                    }),
                    ..Default::default()
                },
                ..Default::default()
            };
            let allowed = match call(reviews.create(&PostParams::default(), &review)).await {
                Ok(r) => r.status.is_some_and(|s| s.allowed),
                // Without the review API we cannot tell; the calls themselves will say.
                Err(_) => true,
            };
            (allowed, verb, group, resource, ns)
        }
    });
    for (allowed, verb, group, resource, ns) in futures::future::join_all(checks).await {
        if !allowed {
            let full = if group.is_empty() {
                resource.to_string()
            } else {
                format!("{resource}.{group}")
            };
            return Err(StartError::Forbidden {
                verb: verb.to_string(),
                resource: full,
                namespace: ns.clone(),
            });
        }
    }
    Ok(())
}
