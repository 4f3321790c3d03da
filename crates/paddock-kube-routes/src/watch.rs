//! The watch of Sandbox resources that feeds the route table, and the start-up checks that
//! turn a missing CRD or a missing RBAC verb into one clear error instead of a retry loop.

use std::collections::HashSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Instant;

use futures::StreamExt;
use kube::api::{ListParams, WatchParams};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Api, Client};
use paddock_crds::Sandbox;

use crate::Scope;
use crate::source::observe;
use crate::table::{Change, RouteTable};

/// Why the gateway cannot watch Sandboxes.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("the agents.kruise.io CRDs are not installed: run `paddock crds | kubectl apply -f -`")]
    NoCrds,
    #[error("RBAC forbids `{verb}` on sandboxes.agents.kruise.io {scope}: {message}")]
    Forbidden {
        verb: &'static str,
        scope: String,
        message: String,
    },
    #[error("the Kubernetes API server ({verb} sandboxes {scope}): {source}")]
    Api {
        verb: &'static str,
        scope: String,
        #[source]
        source: kube::Error,
    },
}

fn apis(client: &Client, scope: &Scope) -> Vec<(Option<String>, Api<Sandbox>)> {
    match scope {
        Scope::All => vec![(None, Api::all(client.clone()))],
        Scope::Namespaces(nss) => nss
            .iter()
            .map(|ns| (Some(ns.clone()), Api::namespaced(client.clone(), ns)))
            .collect(),
    }
}

fn describe(namespace: Option<&str>) -> String {
    match namespace {
        Some(ns) => format!("in namespace {ns}"),
        None => "in all namespaces".to_string(),
    }
}

fn classify(verb: &'static str, namespace: Option<&str>, e: kube::Error) -> StartError {
    match &e {
        kube::Error::Api(s) if s.code == 404 && verb != "get" => StartError::NoCrds,
        kube::Error::Api(s) if s.is_forbidden() => StartError::Forbidden {
            verb,
            scope: describe(namespace),
            message: s.message.clone(),
        },
        _ => StartError::Api {
            verb,
            scope: describe(namespace),
            source: e,
        },
    }
}

/// Checks, for each watched scope, the three verbs the gateway uses: `list` and `watch`
/// (the route table) and `get` (the miss fallback).
pub async fn preflight(client: &Client, scope: &Scope) -> Result<(), StartError> {
    for (ns, api) in apis(client, scope) {
        api.list_metadata(&ListParams::default().limit(1))
            .await
            .map_err(|e| classify("list", ns.as_deref(), e))?;
        // A watch that ends at once: only its refusal matters.
        let stream = api
            .watch_metadata(&WatchParams::default().timeout(1), "0")
            .await
            .map_err(|e| classify("watch", ns.as_deref(), e))?;
        drop(stream);
        // The miss fallback reads single Sandboxes; a name that cannot exist answers 404
        // when `get` is allowed.
        let get_api: Api<Sandbox> = match &ns {
            Some(ns) => Api::namespaced(client.clone(), ns),
            None => Api::namespaced(client.clone(), "default"),
        };
        match get_api.get_opt("paddock-gateway-preflight-x").await {
            Ok(_) => {}
            Err(e) => return Err(classify("get", ns.as_deref(), e)),
        }
    }
    Ok(())
}

/// Starts one watch per scope; the table is marked synced once every one has listed all
/// its Sandboxes. The tasks run until the process ends (the watcher retries with backoff).
pub fn spawn(client: &Client, scope: &Scope, table: Arc<RouteTable>) {
    let watches = apis(client, scope);
    let pending = Arc::new(AtomicUsize::new(watches.len()));
    for (ns, api) in watches {
        let table = table.clone();
        let pending = pending.clone();
        tokio::spawn(async move {
            run(api, ns, table, pending).await;
        });
    }
}

async fn run(
    api: Api<Sandbox>,
    namespace: Option<String>,
    table: Arc<RouteTable>,
    pending: Arc<AtomicUsize>,
) {
    let mut first = true;
    let mut seen = HashSet::new();
    let mut started = Instant::now();
    let mut events = watcher(api, watcher::Config::default())
        .default_backoff()
        .boxed();
    while let Some(event) = events.next().await {
        match event {
            Ok(watcher::Event::Init) => {
                seen.clear();
                started = Instant::now();
            }
            Ok(watcher::Event::InitApply(s)) => {
                if let Some(o) = observe(&s) {
                    seen.insert(o.id.clone());
                    table.apply(&o.id, o.version, o.change);
                }
            }
            Ok(watcher::Event::InitDone) => {
                table.finish_relist(namespace.as_deref(), &seen, started);
                seen.clear();
                tracing::info!(scope = %describe(namespace.as_deref()), routes = table.len(), "sandbox list synced");
                if std::mem::take(&mut first) && pending.fetch_sub(1, Ordering::AcqRel) == 1 {
                    table.mark_synced();
                }
            }
            Ok(watcher::Event::Apply(s)) => {
                if let Some(o) = observe(&s) {
                    table.apply(&o.id, o.version, o.change);
                }
            }
            Ok(watcher::Event::Delete(s)) => {
                if let Some(o) = observe(&s) {
                    table.apply(&o.id, o.version, Change::Gone);
                }
            }
            Err(e) => {
                tracing::warn!(scope = %describe(namespace.as_deref()), error = %e, "sandbox watch failed; retrying");
            }
        }
    }
}
