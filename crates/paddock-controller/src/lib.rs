//! The Sandbox Controller of Paddock's Kubernetes mode: kube-runtime reconcilers for the
//! `agents.kruise.io/v1alpha1` kinds, their admission webhooks, leader election, health probes
//! and metrics.
//!
//! Each reconciler observes (the object, its children), computes what it wants with a pure
//! function from [`desired`], applies the difference and returns when to look again. Errors
//! back off per object ([`backoff`]) so a broken object never spins.

mod backoff;
mod cache;
mod checkpoint;
mod claim;
mod context;
pub mod desired;
mod expectations;
mod leader;
mod probes;
mod sandbox;
mod sandboxset;
pub mod webhook;

use std::net::SocketAddr;
use std::sync::Arc;

use futures::StreamExt;
use kube::Client;

pub use context::Context;
pub use leader::LeaderConfig;
pub use sandboxset::{Source, SourceError, resolve};

/// Where the API server reaches the webhook server.
#[derive(Clone, Debug)]
pub enum WebhookEndpoint {
    /// `https://<host>:<port>/…`: the controller runs outside the cluster.
    Url { host: String },
    /// Through a Service, as the Helm chart deploys it.
    Service { name: String, namespace: String },
}

#[derive(Clone, Debug)]
pub struct WebhookConfig {
    pub port: u16,
    pub endpoint: WebhookEndpoint,
    /// Prefix of the Mutating/ValidatingWebhookConfiguration names.
    pub config_name: String,
}

#[derive(Clone, Debug)]
pub struct Config {
    /// Watch one namespace only (all when `None`).
    pub namespace: Option<String>,
    pub webhook: Option<WebhookConfig>,
    pub health_addr: SocketAddr,
    pub metrics_addr: SocketAddr,
    pub leader_election: Option<LeaderConfig>,
    /// The identity allowed to delete live sandbox Pods; asked from the API server if `None`.
    pub controller_username: Option<String>,
    /// Image of the init container that injects the runtime (`runtimes: [{name: agent-runtime}]`).
    pub runtime_image: String,
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("kubernetes API: {0}")]
    Kube(#[from] kube::Error),
    #[error("{0}")]
    Webhook(#[from] webhook::WebhookError),
    #[error("binding {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("leader election: {0}")]
    Leader(String),
}

/// Runs until SIGINT/SIGTERM: probes and metrics first, then (once leader) the webhooks and
/// the four controllers.
pub async fn run(config: Config) -> Result<(), Error> {
    let client = Client::try_default().await?;
    let username = match &config.controller_username {
        Some(u) => u.clone(),
        None => context::whoami(&client).await?,
    };
    tracing::info!(user = %username, namespace = ?config.namespace, "starting sandbox controller");
    let (store, writer) = kube::runtime::reflector::store();
    let ctx = Arc::new(Context::new(
        client.clone(),
        config.clone(),
        username,
        store,
    ));

    let health = probes::serve_health(config.health_addr, ctx.clone()).await?;
    let metrics = probes::serve_metrics(config.metrics_addr, ctx.clone()).await?;
    tokio::spawn(health);
    tokio::spawn(metrics);

    // The webhook server answers on every replica (the API server may pick any), so it
    // starts before the leader election.
    if let Some(wh) = &config.webhook {
        webhook::start(ctx.clone(), wh).await?;
    }

    let _lease = match &config.leader_election {
        Some(le) => Some(leader::acquire(client.clone(), le).await?),
        None => None,
    };
    ctx.set_ready();

    // One Sandbox watch for all: its store is what the reconcilers read, its events what
    // wakes them (see `cache`).
    let mut feed = cache::SandboxFeed::new(writer);
    let sandbox_events = feed.subscribe();
    let pool_events = feed.subscribe();
    let claim_events = feed.subscribe();
    let controllers = futures::future::join5(
        feed.run(ctx.watch_api()),
        sandbox::run(ctx.clone(), sandbox_events),
        sandboxset::run(ctx.clone(), pool_events),
        claim::run(ctx.clone(), claim_events),
        checkpoint::run(ctx.clone()),
    );
    tokio::select! {
        _ = controllers => {}
        _ = shutdown_signal() => tracing::info!("shutting down"),
    }
    Ok(())
}

async fn shutdown_signal() {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .expect("SIGTERM handler");
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
}

/// Drains a controller's result stream, logging each outcome at a level that fits it.
pub(crate) async fn drain<S, T, E>(kind: &'static str, stream: S)
where
    S: futures::Stream<Item = Result<T, E>>,
    T: std::fmt::Debug,
    E: std::fmt::Display,
{
    stream
        .for_each(|res| async move {
            match res {
                Ok(obj) => tracing::trace!(kind, ?obj, "reconciled"),
                Err(e) => tracing::debug!(kind, error = %e, "reconcile failed"),
            }
        })
        .await;
}
