//! Metrics of the Kubernetes route source (beside the gateway's own `paddock_gateway_*`).

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ResultLabels {
    pub result: &'static str,
}

/// Handles to the route source's metrics (cheap to clone).
#[derive(Clone, Default)]
pub struct RouteMetrics {
    /// Routes in the table (set before each scrape).
    pub routes: Gauge,
    /// Route pushes, by `applied`, `stale` (older than the table's), `unauthorized`, `invalid`.
    pub pushes: Family<ResultLabels, Counter>,
    /// Table misses looked up at the API server, by `found`, `not_found`, `cached`
    /// (answered from the negative cache), `failed` (error or timeout).
    pub misses: Family<ResultLabels, Counter>,
}

impl RouteMetrics {
    pub fn register(registry: &mut Registry) -> Self {
        let m = Self::default();
        let r = registry.sub_registry_with_prefix("paddock_gateway_route");
        r.register("table_size", "Routes the gateway holds", m.routes.clone());
        r.register(
            "pushes",
            "Route pushes from managers, by result",
            m.pushes.clone(),
        );
        r.register(
            "misses",
            "Requests for sandboxes missing from the route table, by what the API server said",
            m.misses.clone(),
        );
        m
    }

    pub fn count(family: &Family<ResultLabels, Counter>, result: &'static str) {
        family.get_or_create(&ResultLabels { result }).inc();
    }

    pub fn get(family: &Family<ResultLabels, Counter>, result: &'static str) -> u64 {
        family.get_or_create(&ResultLabels { result }).get()
    }
}
