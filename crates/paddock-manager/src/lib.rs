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
pub use keys::{FileKeys, KeyBackend, KeyError, KeyIndex, KeyStore, Quota, StoredKey, Team};
pub use metrics::ManagerMetrics;
pub use records::{Records, Route, RouteTable};

use paddock_infra::record::{RecordStore, SandboxRecord};
use paddock_infra::{Infra, SandboxId};

/// Settings of the manager.
#[derive(Debug, Clone)]
pub struct ManagerConfig {
    /// The domain the API returns with each sandbox (`e2b.domain`): the SDKs then reach a
    /// sandbox's ports at `<port>-<id>.<domain>`. `None` answers `null` (the SDK's own setting).
    pub domain: Option<String>,
    /// Key that may do everything, including managing team keys.
    pub admin_api_key: String,
    /// Longest timeout a sandbox may be given, seconds.
    pub max_timeout_secs: u64,
    /// Where keys and records are stored, unless the infra keeps the records
    /// ([`Infra::records`]) and the keys have another backend ([`Manager::start_with_keys`]).
    pub data_dir: PathBuf,
    /// Whether callers must present an API key. `false` (the chart's `e2b.enableAuth: false`)
    /// makes every caller the admin team.
    pub auth_enabled: bool,
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
    /// The infra's own store when it has one, else the file store in the data dir.
    pub(crate) records: Arc<dyn RecordStore>,
    pub(crate) claim_workers: Arc<tokio::sync::Semaphore>,
    pub(crate) reservations: quota::Reservations,
    pub(crate) idempotency: idempotency::Idempotency,
    pub(crate) metrics: ManagerMetrics,
    /// Sends `/init` to new sandboxes.
    pub(crate) runtime: paddock_contract::client::RuntimeClient,
}

/// Why the manager could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("loading the API keys: {0}")]
    Keys(#[from] KeyError),
    #[error("loading the sandbox records: {0}")]
    Records(#[from] std::io::Error),
}

impl<I: Infra> Manager<I> {
    /// Builds the manager with the API keys in the data dir, and starts its background tasks.
    pub async fn start(
        infra: Arc<I>,
        config: ManagerConfig,
        metrics: ManagerMetrics,
    ) -> Result<Arc<Self>, StartError> {
        let keys = KeyStore::open(&config.data_dir, &config.admin_api_key).await?;
        Self::start_with_keys(infra, config, metrics, keys)
    }

    /// Builds the manager over `keys` and starts its background tasks: the timeout reaper
    /// only when the record store leaves timeouts to the manager.
    pub fn start_with_keys(
        infra: Arc<I>,
        config: ManagerConfig,
        metrics: ManagerMetrics,
        keys: KeyStore,
    ) -> Result<Arc<Self>, StartError> {
        let records: Arc<dyn RecordStore> = match infra.records() {
            Some(store) => store,
            None => Arc::new(Records::open(config.data_dir.join("sandboxes.json"))?),
        };
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
        // A backend that enforces timeouts itself (the Kubernetes controller) may run beside
        // other replicas of this manager: one acting on its own view could kill a sandbox
        // another replica just extended.
        if !manager.records.enforces_timeouts() {
            lifecycle::spawn_reaper(manager.clone());
        }
        lifecycle::spawn_ended_watcher(manager.clone());
        Ok(manager)
    }

    /// The record of `id`, if `team` may see it.
    pub(crate) fn record_for(&self, id: &str, team: &Team) -> Option<SandboxRecord> {
        let id = SandboxId::new(id).ok()?;
        self.records.get(&id).filter(|r| team.sees(&r.team))
    }

    /// [`Manager::record_for`] as the store holds it now, for a request about one sandbox
    /// (another replica may have changed it a moment ago).
    pub(crate) async fn fresh_record_for(
        &self,
        id: &str,
        team: &Team,
    ) -> Result<Option<SandboxRecord>, paddock_infra::InfraError> {
        let Ok(id) = SandboxId::new(id) else {
            return Ok(None);
        };
        Ok(self
            .records
            .get_fresh(&id)
            .await?
            .filter(|r| team.sees(&r.team)))
    }

    /// Makes the records and the infrastructure agree after a restart:
    /// sandboxes that kept running and have a record are served again; a
    /// sandbox without a record (nobody holds its token) is killed; a record
    /// whose sandbox is gone is dropped.
    ///
    /// Nothing to do when the store enforces timeouts: it is the backend's own view (the
    /// Sandbox resources), and a replica must not kill sandboxes from a stale one.
    pub async fn reconcile(&self) -> Result<(), paddock_infra::InfraError> {
        if self.records.enforces_timeouts() {
            return Ok(());
        }
        let running = self.infra.list().await?;
        let known: std::collections::HashSet<_> =
            self.records.all().into_iter().map(|r| r.id).collect();
        for s in &running {
            if known.contains(&s.id) {
                tracing::info!(sandbox = %s.id, "serving a sandbox kept from before the restart");
                let address = s.address;
                self.records
                    .update(&s.id, Box::new(move |r| r.address = address))
                    .await?;
            } else {
                tracing::info!(sandbox = %s.id, "killing a sandbox that has no record");
                self.infra.kill(&s.id).await?;
            }
        }
        let alive: std::collections::HashSet<_> = running.iter().map(|s| &s.id).collect();
        for id in known.iter().filter(|id| !alive.contains(id)) {
            tracing::info!(sandbox = %id, "dropping the record of a sandbox that is gone");
            self.records.remove(id).await?;
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
        RouteTable::new(self.records.clone())
    }
}
