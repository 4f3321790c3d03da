//! The gateway's Prometheus metrics.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RequestLabels {
    /// `runtime`, `interpreter` or `user` (any other port).
    pub port: &'static str,
    /// `2xx`, `4xx`, ...; `101` for upgrades.
    pub class: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReasonLabels {
    pub reason: &'static str,
}

/// Handles to the gateway's metrics (cheap to clone).
#[derive(Clone)]
pub struct GatewayMetrics {
    pub requests: Family<RequestLabels, Counter>,
    /// Time to the response headers.
    pub latency: Histogram,
    pub rejected: Family<ReasonLabels, Counter>,
    pub upstream_errors: Family<ReasonLabels, Counter>,
    pub upgrades: Counter,
    pub active_requests: Gauge,
    pub open_connections: Gauge,
}

impl GatewayMetrics {
    pub fn register(registry: &mut Registry) -> Self {
        let m = Self {
            requests: Family::default(),
            latency: Histogram::new(exponential_buckets(0.0005, 2.0, 16)),
            rejected: Family::default(),
            upstream_errors: Family::default(),
            upgrades: Counter::default(),
            active_requests: Gauge::default(),
            open_connections: Gauge::default(),
        };
        let r = registry.sub_registry_with_prefix("paddock_gateway");
        r.register(
            "requests",
            "Requests forwarded to sandboxes, by port kind and status class",
            m.requests.clone(),
        );
        r.register(
            "response_header_seconds",
            "Time from receiving a request to the sandbox's response headers",
            m.latency.clone(),
        );
        r.register(
            "rejected",
            "Requests refused before reaching a sandbox (token, not found, paused, circuit breaker)",
            m.rejected.clone(),
        );
        r.register(
            "upstream_errors",
            "Requests that failed between the gateway and the sandbox",
            m.upstream_errors.clone(),
        );
        r.register(
            "upgrades",
            "Connection upgrades (WebSocket) established",
            m.upgrades.clone(),
        );
        r.register(
            "active_requests",
            "Requests in flight, response bodies included",
            m.active_requests.clone(),
        );
        r.register(
            "upstream_connections",
            "Open connections to sandboxes",
            m.open_connections.clone(),
        );
        m
    }
}

pub fn port_kind(port: u16) -> &'static str {
    match port {
        crate::access::RUNTIME_PORT => "runtime",
        crate::access::INTERPRETER_PORT => "interpreter",
        _ => "user",
    }
}

pub fn class(status: u16) -> &'static str {
    match status {
        101 => "101",
        100..=199 => "1xx",
        200..=299 => "2xx",
        300..=399 => "3xx",
        400..=499 => "4xx",
        _ => "5xx",
    }
}
