//! Self-metrics (`shardmetrics_frontend_*`) in an explicit registry, next to the code that
//! updates them: the server times requests, the API observes freshness, upstream reports
//! subscription state, and [`Metrics::refresh_gauges`] samples store and metadata sizes.

use prometheus::{Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry};

use crate::metadata::Metadata;
use crate::store::Store;

/// Every state an upstream subscription can be in (the `state` label).
pub const UPSTREAM_STATES: [&str; 4] = ["connecting", "snapshot", "live", "backoff"];

/// Buckets of [`Metrics::scrape_to_servable`], in seconds: fine at the low end, where the
/// 100 ms target sits.
pub const SCRAPE_TO_SERVABLE_BUCKETS: [f64; 13] = [0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0, 10.0];

/// All self-metrics of one frontend replica.
#[derive(Clone)]
pub struct Metrics {
    /// Request latency in seconds by verb (`get`, `list`, `watch`, or the HTTP method for
    /// non-resource paths), resource (`nodes`, `pods`, `discovery`, `openapi`, ...) and code.
    pub request_duration: HistogramVec,
    /// Requests refused because `--max-requests-inflight` was reached (answered 429).
    pub requests_rejected: IntCounter,
    /// Age of each served item (now - kubelet timestamp), in seconds.
    pub freshness: Histogram,
    /// Seconds from a shard finishing a kubelet read (`NodeScrape.scraped_at_ms`, the shard's
    /// clock) to the scrape being visible to queries here (this replica's clock, after the
    /// store lock is released). Live scrapes only: snapshot replays and scrapes ignored as
    /// older are not observed. Includes parse, encode, fan-out, gRPC, decode and ingest, plus
    /// any clock skew between the two machines (negative differences count as 0).
    pub scrape_to_servable: Histogram,
    /// Nodes with data in the store.
    pub stored_nodes: IntGauge,
    /// Pods with data in the store.
    pub stored_pods: IntGauge,
    /// Containers with data in the store.
    pub stored_containers: IntGauge,
    /// Objects in the metadata view, by kind (`pod`, `node`).
    pub metadata_objects: IntGaugeVec,
    /// 1 for the current state of each shard's subscription, 0 for the others (see
    /// [`UPSTREAM_STATES`]).
    pub upstream_state: IntGaugeVec,
    /// Subscriptions opened per shard (first connect and every reconnect).
    pub upstream_connects: IntCounterVec,
    /// Node scrapes received per shard.
    pub upstream_scrapes: IntCounterVec,
    /// Node scrapes ignored because the store already had newer data (hand-off overlap).
    pub upstream_scrapes_older: IntCounter,
    /// Batches that could not be decoded, per shard (the subscription is restarted).
    pub upstream_decode_errors: IntCounterVec,
    /// Nodes dropped from the store after `--max-staleness` without a scrape.
    pub stale_nodes_dropped: IntCounter,
}

impl Metrics {
    /// Creates every metric and registers it in `registry`; fails if any is already there
    /// (the error is the caller's: `run` reports it as [`crate::RunError::Metrics`]).
    pub fn register(registry: &Registry) -> Result<Self, prometheus::Error> {
        let m = Self {
            request_duration: HistogramVec::new(
                HistogramOpts::new("shardmetrics_frontend_request_duration_seconds", "API request latency in seconds.")
                    .buckets(vec![0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0]),
                &["verb", "resource", "code"],
            )?,
            requests_rejected: IntCounter::new(
                "shardmetrics_frontend_requests_rejected_total",
                "Requests answered 429 because --max-requests-inflight was reached.",
            )?,
            freshness: Histogram::with_opts(
                HistogramOpts::new(
                    "shardmetrics_frontend_item_freshness_seconds",
                    "Age of served metrics items (request time minus kubelet sample time) in seconds.",
                )
                .buckets(vec![1.0, 2.5, 5.0, 10.0, 15.0, 20.0, 30.0, 45.0, 60.0, 90.0, 120.0]),
            )?,
            scrape_to_servable: Histogram::with_opts(
                HistogramOpts::new(
                    "shardmetrics_frontend_scrape_to_servable_seconds",
                    "Seconds from a shard's kubelet read completing to the scrape being visible to queries (live scrapes only).",
                )
                .buckets(SCRAPE_TO_SERVABLE_BUCKETS.to_vec()),
            )?,
            stored_nodes: IntGauge::new("shardmetrics_frontend_stored_nodes", "Nodes with data in the store.")?,
            stored_pods: IntGauge::new("shardmetrics_frontend_stored_pods", "Pods with data in the store.")?,
            stored_containers: IntGauge::new("shardmetrics_frontend_stored_containers", "Containers with data in the store.")?,
            metadata_objects: IntGaugeVec::new(
                Opts::new("shardmetrics_frontend_metadata_objects", "Objects in the Pod/Node metadata view."),
                &["kind"],
            )?,
            upstream_state: IntGaugeVec::new(
                Opts::new(
                    "shardmetrics_frontend_upstream_subscription_state",
                    "1 for the current state of the subscription to each shard (connecting, snapshot, live, backoff).",
                ),
                &["shard", "state"],
            )?,
            upstream_connects: IntCounterVec::new(
                Opts::new("shardmetrics_frontend_upstream_connects_total", "Subscriptions opened per shard."),
                &["shard"],
            )?,
            upstream_scrapes: IntCounterVec::new(
                Opts::new("shardmetrics_frontend_upstream_scrapes_total", "Node scrapes received per shard."),
                &["shard"],
            )?,
            upstream_scrapes_older: IntCounter::new(
                "shardmetrics_frontend_upstream_scrapes_older_total",
                "Node scrapes ignored because newer data of the node was stored (hand-off overlap).",
            )?,
            upstream_decode_errors: IntCounterVec::new(
                Opts::new("shardmetrics_frontend_upstream_decode_errors_total", "Undecodable batches per shard."),
                &["shard"],
            )?,
            stale_nodes_dropped: IntCounter::new(
                "shardmetrics_frontend_stale_nodes_dropped_total",
                "Nodes dropped from the store after --max-staleness without a scrape.",
            )?,
        };
        registry.register(Box::new(m.request_duration.clone()))?;
        registry.register(Box::new(m.requests_rejected.clone()))?;
        registry.register(Box::new(m.freshness.clone()))?;
        registry.register(Box::new(m.scrape_to_servable.clone()))?;
        registry.register(Box::new(m.stored_nodes.clone()))?;
        registry.register(Box::new(m.stored_pods.clone()))?;
        registry.register(Box::new(m.stored_containers.clone()))?;
        registry.register(Box::new(m.metadata_objects.clone()))?;
        registry.register(Box::new(m.upstream_state.clone()))?;
        registry.register(Box::new(m.upstream_connects.clone()))?;
        registry.register(Box::new(m.upstream_scrapes.clone()))?;
        registry.register(Box::new(m.upstream_scrapes_older.clone()))?;
        registry.register(Box::new(m.upstream_decode_errors.clone()))?;
        registry.register(Box::new(m.stale_nodes_dropped.clone()))?;
        Ok(m)
    }

    /// Sets the store and metadata size gauges.
    pub fn refresh_gauges(&self, store: &Store, metadata: Option<&Metadata>) {
        let c = store.counts();
        self.stored_nodes.set(c.nodes as i64);
        self.stored_pods.set(c.pods as i64);
        self.stored_containers.set(c.containers as i64);
        if let Some(m) = metadata {
            let (pods, nodes) = m.counts();
            self.metadata_objects.with_label_values(&["pod"]).set(pods as i64);
            self.metadata_objects.with_label_values(&["node"]).set(nodes as i64);
        }
    }

    /// Marks `shard`'s subscription as being in `state` (one of [`UPSTREAM_STATES`]).
    pub fn set_upstream_state(&self, shard: &str, state: &str) {
        for s in UPSTREAM_STATES {
            self.upstream_state.with_label_values(&[shard, s]).set(i64::from(s == state));
        }
    }

    /// Forgets a shard that left.
    pub fn remove_shard(&self, shard: &str) {
        for s in UPSTREAM_STATES {
            let _ = self.upstream_state.remove_label_values(&[shard, s]);
        }
    }
}

/// Renders `registry` in the Prometheus text format.
pub fn render(registry: &Registry) -> Vec<u8> {
    let mut out = Vec::new();
    // Encoding into a Vec fails only on invalid metric families, which registration rules out.
    let _ = prometheus::Encoder::encode(&prometheus::TextEncoder::new(), &registry.gather(), &mut out);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_metric_is_prefixed_and_upstream_state_is_one_hot() {
        let registry = Registry::new();
        let m = Metrics::register(&registry).expect("register");
        m.set_upstream_state("shard-0", "snapshot");
        m.set_upstream_state("shard-0", "live");
        m.requests_rejected.inc();
        let text = String::from_utf8(render(&registry)).expect("utf8");
        assert!(text.contains(r#"shardmetrics_frontend_upstream_subscription_state{shard="shard-0",state="live"} 1"#));
        assert!(text.contains(r#"shardmetrics_frontend_upstream_subscription_state{shard="shard-0",state="snapshot"} 0"#));
        for family in registry.gather() {
            assert!(family.name().starts_with("shardmetrics_frontend_"), "{}", family.name());
        }
        m.remove_shard("shard-0");
        assert!(!String::from_utf8(render(&registry)).expect("utf8").contains("shard-0"));
    }

    #[test]
    fn registering_twice_in_one_registry_is_an_error_not_a_silent_duplicate() {
        let registry = Registry::new();
        Metrics::register(&registry).expect("first registration");
        assert!(matches!(Metrics::register(&registry), Err(prometheus::Error::AlreadyReg)));
    }
}
