//! The Sandbox Gateway on Kubernetes (`paddock gateway`).
//!
//! The data plane is [`paddock_gateway::Gateway`], the same code path `paddock up` runs; this
//! crate supplies what differs on Kubernetes: the route table ([`table`]) fed by a watch of
//! Sandbox resources ([`watch`]) and by the managers' pushes to the peer listener
//! ([`listener`]), a look-up at the API server when a request misses the table
//! ([`routes`]), and the process around them ([`server`]).
//!
//! It is its own crate, not a feature of the gateway crate, so that `paddock-gateway` stays
//! free of the Kubernetes client and `paddock up` keeps building and testing it alone.

pub mod drain;
pub mod listener;
pub mod metrics;
pub mod routes;
pub mod server;
pub mod source;
pub mod table;
pub mod watch;

pub use metrics::RouteMetrics;
pub use routes::KubeRoutes;
pub use server::{Config, Error, run};
pub use table::RouteTable;

/// The namespaces whose Sandboxes the gateway routes to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Scope {
    All,
    Namespaces(Vec<String>),
}

impl Scope {
    /// `All` for an empty list.
    pub fn of(namespaces: Vec<String>) -> Self {
        if namespaces.is_empty() {
            Scope::All
        } else {
            Scope::Namespaces(namespaces)
        }
    }

    pub fn contains(&self, namespace: &str) -> bool {
        match self {
            Scope::All => true,
            Scope::Namespaces(nss) => nss.iter().any(|n| n == namespace),
        }
    }
}
