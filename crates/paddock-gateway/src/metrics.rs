//! The gateway's Prometheus metrics.

use std::sync::{Arc, OnceLock};

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
    /// `requests`' counters by port kind and class, each looked up in the family once: the
    /// family is a locked map with hashed labels, too dear for every request.
    resolved: Arc<[[OnceLock<Counter>; CLASSES.len()]; PORT_KINDS.len()]>,
}

const PORT_KINDS: [&str; 3] = ["runtime", "interpreter", "user"];
const CLASSES: [&str; 6] = ["101", "1xx", "2xx", "3xx", "4xx", "5xx"];

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
            resolved: Arc::default(),
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

impl GatewayMetrics {
    /// Counts one response the sandbox gave on `port` with `status`.
    pub fn count_request(&self, port: u16, status: u16) {
        let (kind, class) = (port_index(port), class_index(status));
        self.resolved[kind][class]
            .get_or_init(|| {
                self.requests
                    .get_or_create(&RequestLabels {
                        port: PORT_KINDS[kind],
                        class: CLASSES[class],
                    })
                    .clone()
            })
            .inc();
    }
}

fn port_index(port: u16) -> usize {
    match port {
        crate::access::RUNTIME_PORT => 0,
        crate::access::INTERPRETER_PORT => 1,
        _ => 2,
    }
}

fn class_index(status: u16) -> usize {
    match status {
        101 => 0,
        100..=199 => 1,
        200..=299 => 2,
        300..=399 => 3,
        400..=499 => 4,
        _ => 5,
    }
}

pub fn port_kind(port: u16) -> &'static str {
    PORT_KINDS[port_index(port)]
}

pub fn class(status: u16) -> &'static str {
    CLASSES[class_index(status)]
}

#[cfg(test)]
mod tests {
    use prometheus_client::registry::Registry;

    use super::*;

    #[test]
    fn counted_requests_land_in_their_labelled_series() {
        let m = GatewayMetrics::register(&mut Registry::default());
        m.count_request(crate::access::RUNTIME_PORT, 200);
        m.count_request(crate::access::RUNTIME_PORT, 204);
        m.count_request(8080, 502);
        let get = |port, class| {
            m.requests
                .get_or_create(&RequestLabels { port, class })
                .get()
        };
        assert_eq!(get("runtime", "2xx"), 2);
        assert_eq!(get("user", "5xx"), 1);
        assert_eq!(get("user", "2xx"), 0);
        assert_eq!((port_kind(49999), class(101)), ("interpreter", "101"));
    }
}
