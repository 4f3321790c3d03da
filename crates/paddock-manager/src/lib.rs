//! The Sandbox Manager: the E2B control-plane REST API (create, list,
//! connect, timeouts, pause/resume, kill, API keys) over an [`Infra`].
//!
//! It owns the sandbox records (team, timeouts, access tokens, metadata) and
//! exposes them to the data plane through [`RouteTable`].

pub mod admin_key;
mod api;
mod error;
mod idempotency;
mod keys;
mod lifecycle;
mod logs;
mod metrics;
mod quota;
mod records;
pub mod secret_file;

use std::path::PathBuf;
use std::sync::Arc;

pub use api::{Exporter, OPENAPI, router};
pub use error::ApiError;
pub use keys::{KeyStore, Quota, Team};
pub use metrics::ManagerMetrics;
pub use records::{Records, Route, RouteTable};

use paddock_infra::Infra;

/// Settings of the manager.
#[derive(Debug, Clone)]
pub struct ManagerConfig {
    /// Key that may do everything, including managing team keys.
    pub admin_api_key: String,
    /// Longest timeout a sandbox may be given, seconds.
    pub max_timeout_secs: u64,
    /// Where keys are stored.
    pub data_dir: PathBuf,
    /// The envd version advertised to the SDKs.
    pub envd_version: String,
    /// Creates in progress at once (`maxClaimWorkers`); more wait their turn.
    pub max_claim_workers: usize,
}

/// The install guide's chart value of `maxClaimWorkers`.
pub const DEFAULT_MAX_CLAIM_WORKERS: usize = 100;

/// The manager: an [`Infra`] plus what the E2B API keeps about sandboxes.
pub struct Manager<I: Infra> {
    pub(crate) infra: Arc<I>,
    pub(crate) config: ManagerConfig,
    pub(crate) keys: KeyStore,
    pub(crate) records: Records,
    pub(crate) claim_workers: Arc<tokio::sync::Semaphore>,
    pub(crate) reservations: quota::Reservations,
    pub(crate) idempotency: idempotency::Idempotency,
    pub(crate) metrics: ManagerMetrics,
    /// Sends `/init` to new sandboxes.
    pub(crate) runtime: paddock_contract::client::RuntimeClient,
}

impl<I: Infra> Manager<I> {
    /// Builds the manager and starts its timeout reaper.
    pub fn start(
        infra: Arc<I>,
        config: ManagerConfig,
        metrics: ManagerMetrics,
    ) -> std::io::Result<Arc<Self>> {
        let keys = KeyStore::open(&config.data_dir, &config.admin_api_key)?;
        let records = Records::open(config.data_dir.join("sandboxes.json"))?;
        let manager = Arc::new(Self {
            infra,
            claim_workers: Arc::new(tokio::sync::Semaphore::new(config.max_claim_workers.max(1))),
            config,
            keys,
            records,
            reservations: Default::default(),
            idempotency: Default::default(),
            metrics,
            runtime: Default::default(),
        });
        lifecycle::spawn_reaper(manager.clone());
        lifecycle::spawn_ended_watcher(manager.clone());
        Ok(manager)
    }

    /// Makes the records and the infrastructure agree after a restart:
    /// sandboxes that kept running and have a record are served again; a
    /// sandbox without a record (nobody holds its token) is killed; a record
    /// whose sandbox is gone is dropped.
    pub async fn reconcile(&self) -> Result<(), paddock_infra::InfraError> {
        let running = self.infra.list().await?;
        let known: std::collections::HashSet<_> =
            self.records.all().into_iter().map(|r| r.id).collect();
        for s in &running {
            if known.contains(&s.id) {
                tracing::info!(sandbox = %s.id, "serving a sandbox kept from before the restart");
                self.records.update(&s.id, |r| r.address = s.address);
            } else {
                tracing::info!(sandbox = %s.id, "killing a sandbox that has no record");
                self.infra.kill(&s.id).await?;
            }
        }
        let alive: std::collections::HashSet<_> = running.iter().map(|s| &s.id).collect();
        for id in known.iter().filter(|id| !alive.contains(id)) {
            tracing::info!(sandbox = %id, "dropping the record of a sandbox that is gone");
            self.records.remove(id);
        }
        Ok(())
    }

    /// Brings the sandbox and pool gauges up to date (call before a scrape).
    pub async fn refresh_gauges(&self) {
        let all = self.records.all();
        for state in [records::ApiState::Running, records::ApiState::Paused] {
            let n = all.iter().filter(|r| r.state == state).count();
            self.metrics
                .sandboxes
                .get_or_create(&metrics::StateLabels {
                    state: state.as_str(),
                })
                .set(n as i64);
        }
        self.metrics.claim_workers_busy.set(
            (self.config.max_claim_workers.max(1) - self.claim_workers.available_permits()) as i64,
        );
        if let Ok(templates) = self.infra.templates().await {
            for t in templates {
                let labels = metrics::TemplateLabels { template: t.name };
                self.metrics
                    .pool_ready
                    .get_or_create(&labels)
                    .set(t.pool_ready as i64);
                self.metrics
                    .pool_target
                    .get_or_create(&labels)
                    .set(t.pool_size as i64);
            }
        }
    }

    /// What the data plane needs to reach sandboxes.
    pub fn routes(&self) -> RouteTable {
        self.records.route_table()
    }
}
