//! The manager's Prometheus metrics.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RouteLabels {
    pub method: String,
    /// The route pattern (`/sandboxes/{id}`), never the raw path.
    pub route: String,
    pub status: u16,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ClaimLabels {
    /// `warm` (from the pool), `cold`, or `failed`.
    pub source: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct TemplateLabels {
    pub template: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct StateLabels {
    pub state: &'static str,
}

fn seconds_histogram() -> Histogram {
    Histogram::new(exponential_buckets(0.0005, 2.0, 18))
}

/// Handles to the manager's metrics (cheap to clone).
#[derive(Clone)]
pub struct ManagerMetrics {
    pub requests: Family<RouteLabels, Counter>,
    pub request_seconds: Family<RouteLabels, Histogram>,
    pub claims: Family<ClaimLabels, Counter>,
    pub claim_seconds: Family<ClaimLabels, Histogram>,
    pub claim_workers_busy: Gauge,
    pub sandboxes: Family<StateLabels, Gauge>,
    pub pool_ready: Family<TemplateLabels, Gauge>,
    pub pool_target: Family<TemplateLabels, Gauge>,
}

impl ManagerMetrics {
    pub fn register(registry: &mut Registry) -> Self {
        let m = Self {
            requests: Family::default(),
            request_seconds: Family::new_with_constructor(seconds_histogram),
            claims: Family::default(),
            claim_seconds: Family::new_with_constructor(seconds_histogram),
            claim_workers_busy: Gauge::default(),
            sandboxes: Family::default(),
            pool_ready: Family::default(),
            pool_target: Family::default(),
        };
        let r = registry.sub_registry_with_prefix("paddock_manager");
        r.register(
            "requests",
            "API requests by method, route and status",
            m.requests.clone(),
        );
        r.register(
            "request_seconds",
            "API request latency",
            m.request_seconds.clone(),
        );
        r.register(
            "claims",
            "Sandbox creations: warm from the pool, cold, or failed",
            m.claims.clone(),
        );
        r.register(
            "claim_seconds",
            "Time to hand out a ready sandbox (runtime initialised)",
            m.claim_seconds.clone(),
        );
        r.register(
            "claim_workers_busy",
            "Claims in progress (bounded by maxClaimWorkers)",
            m.claim_workers_busy.clone(),
        );
        r.register(
            "sandboxes",
            "Sandboxes the API knows, by state",
            m.sandboxes.clone(),
        );
        r.register(
            "pool_ready",
            "Warm sandboxes ready to claim, by template",
            m.pool_ready.clone(),
        );
        r.register(
            "pool_target",
            "Warm pool size it is kept at now (between its minimum and ceiling), by template",
            m.pool_target.clone(),
        );
        m
    }
}
