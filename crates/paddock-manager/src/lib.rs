//! The Sandbox Manager: the E2B control-plane REST API (create, list,
//! connect, timeouts, pause/resume, kill, API keys) over an [`Infra`].
//!
//! It owns the sandbox records (team, timeouts, access tokens, metadata) and
//! exposes them to the data plane through [`RouteTable`].

mod api;
mod error;
mod keys;
mod lifecycle;
mod records;

use std::path::PathBuf;
use std::sync::Arc;

pub use api::router;
pub use error::ApiError;
pub use keys::{KeyStore, Team};
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
}

/// The manager: an [`Infra`] plus what the E2B API keeps about sandboxes.
pub struct Manager<I: Infra> {
    pub(crate) infra: Arc<I>,
    pub(crate) config: ManagerConfig,
    pub(crate) keys: KeyStore,
    pub(crate) records: Records,
    pub(crate) http: hyper_util::client::legacy::Client<
        hyper_util::client::legacy::connect::HttpConnector,
        http_body_util::Full<bytes::Bytes>,
    >,
}

impl<I: Infra> Manager<I> {
    /// Builds the manager and starts its timeout reaper.
    pub fn start(infra: Arc<I>, config: ManagerConfig) -> std::io::Result<Arc<Self>> {
        let keys = KeyStore::open(&config.data_dir, &config.admin_api_key)?;
        let mut connector = hyper_util::client::legacy::connect::HttpConnector::new();
        connector.set_nodelay(true);
        let http =
            hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
                .build(connector);
        let manager = Arc::new(Self {
            infra,
            config,
            keys,
            records: Records::default(),
            http,
        });
        lifecycle::spawn_reaper(manager.clone());
        Ok(manager)
    }

    /// What the data plane needs to reach sandboxes.
    pub fn routes(&self) -> RouteTable {
        self.records.route_table()
    }
}
