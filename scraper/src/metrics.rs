//! The shard's self-metrics, registered into an explicit [`Registry`] (never the global one)
//! and served on the admin listener's `/metrics`. Every name starts with `shardmetrics_scraper_`.

use prometheus::{Histogram, HistogramOpts, IntCounter, IntCounterVec, IntGauge, Opts, Registry, TextEncoder};

use crate::kubelet::RESULT_LABELS;

/// Every metric the shard exports.
#[derive(Debug, Clone)]
pub struct Metrics {
    /// The registry all of the below were registered into (rendered on `/metrics`).
    pub registry: Registry,
    /// Duration of one scrape (fetch + parse), in seconds, successes and failures alike.
    pub scrape_duration_seconds: Histogram,
    /// Scrapes by `result` (success, timeout, http_error, parse_error, connect_error, too_large).
    pub scrapes_total: IntCounterVec,
    /// Scrape rounds skipped because the node's previous scrape was still running or no
    /// concurrency slot freed up before its next turn.
    pub scrapes_skipped_total: IntCounter,
    /// Samples shipped (node points plus containers).
    pub samples_total: IntCounter,
    /// Samples of kept families thrown away (NaN, negative, missing labels).
    pub rejected_samples_total: IntCounter,
    /// Containers (or node-level points) left out for lack of a CPU or memory sample.
    pub incomplete_containers_total: IntCounter,
    /// Nodes this shard owns now.
    pub owned_nodes: IntGauge,
    /// Nodes known from the Node watch (all shards' nodes).
    pub known_nodes: IntGauge,
    /// Live shards, this one included.
    pub members: IntGauge,
    /// Connected `Subscribe` streams.
    pub subscribers: IntGauge,
    /// Subscribers disconnected because their queue was full (they reconnect for a snapshot).
    pub subscribers_dropped_total: IntCounter,
    /// Stream batches queued to subscribers (one per scrape or release, per subscriber).
    pub batches_sent_total: IntCounter,
    /// Scrapes and releases not streamed because their batch exceeded `--grpc-max-message-bytes`.
    pub batches_oversized_total: IntCounter,
    /// Lease create/renew attempts by `result` (success, conflict, error).
    pub lease_renewals_total: IntCounterVec,
}

fn counter(registry: &Registry, name: &str, help: &str) -> Result<IntCounter, prometheus::Error> {
    let c = IntCounter::new(name, help)?;
    registry.register(Box::new(c.clone()))?;
    Ok(c)
}

fn gauge(registry: &Registry, name: &str, help: &str) -> Result<IntGauge, prometheus::Error> {
    let g = IntGauge::new(name, help)?;
    registry.register(Box::new(g.clone()))?;
    Ok(g)
}

fn counter_vec(registry: &Registry, name: &str, help: &str, label: &str) -> Result<IntCounterVec, prometheus::Error> {
    let c = IntCounterVec::new(Opts::new(name, help), &[label])?;
    registry.register(Box::new(c.clone()))?;
    Ok(c)
}

impl Metrics {
    /// Creates every metric and registers it into `registry`; fails if the registry already
    /// holds one of them (one shard per registry).
    pub fn register(registry: &Registry) -> Result<Metrics, prometheus::Error> {
        let scrape_duration_seconds = Histogram::with_opts(
            HistogramOpts::new("shardmetrics_scraper_scrape_duration_seconds", "Duration of one kubelet scrape (fetch and parse), in seconds.")
                .buckets(vec![0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0]),
        )?;
        registry.register(Box::new(scrape_duration_seconds.clone()))?;
        let scrapes_total = counter_vec(registry, "shardmetrics_scraper_scrapes_total", "Kubelet scrapes by result.", "result")?;
        for r in RESULT_LABELS {
            scrapes_total.with_label_values(&[r]);
        }
        let lease_renewals_total = counter_vec(registry, "shardmetrics_scraper_lease_renewals_total", "Lease create/renew attempts by result.", "result")?;
        for r in ["success", "conflict", "error"] {
            lease_renewals_total.with_label_values(&[r]);
        }
        Ok(Metrics {
            scrape_duration_seconds,
            scrapes_total,
            scrapes_skipped_total: counter(
                registry,
                "shardmetrics_scraper_scrapes_skipped_total",
                "Scrape rounds skipped because the previous scrape of the node was still running or no concurrency slot was free.",
            )?,
            samples_total: counter(registry, "shardmetrics_scraper_samples_total", "Samples shipped (node points plus containers).")?,
            rejected_samples_total: counter(
                registry,
                "shardmetrics_scraper_rejected_samples_total",
                "Samples thrown away for NaN, infinite or negative values or missing labels.",
            )?,
            incomplete_containers_total: counter(
                registry,
                "shardmetrics_scraper_incomplete_containers_total",
                "Containers or node points left out for lack of a CPU or memory sample.",
            )?,
            owned_nodes: gauge(registry, "shardmetrics_scraper_owned_nodes", "Nodes this shard owns.")?,
            known_nodes: gauge(registry, "shardmetrics_scraper_known_nodes", "Nodes seen by the node watch.")?,
            members: gauge(registry, "shardmetrics_scraper_members", "Live shards, this one included.")?,
            subscribers: gauge(registry, "shardmetrics_scraper_subscribers", "Connected Subscribe streams.")?,
            subscribers_dropped_total: counter(
                registry,
                "shardmetrics_scraper_subscribers_dropped_total",
                "Subscribers disconnected with RESOURCE_EXHAUSTED because their queue was full.",
            )?,
            batches_sent_total: counter(registry, "shardmetrics_scraper_batches_sent_total", "Stream batches queued to subscribers.")?,
            batches_oversized_total: counter(
                registry,
                "shardmetrics_scraper_batches_oversized_total",
                "Scrapes and releases not streamed because their batch exceeded --grpc-max-message-bytes.",
            )?,
            lease_renewals_total,
            registry: registry.clone(),
        })
    }

    /// The Prometheus text exposition of every metric.
    pub fn render(&self) -> String {
        TextEncoder::new().encode_to_string(&self.registry.gather()).unwrap_or_else(|e| format!("# encoding failed: {e}\n"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_scrape_result_is_exported_from_the_start_with_the_shardmetrics_prefix() {
        let m = Metrics::register(&Registry::new()).unwrap();
        let text = m.render();
        for r in RESULT_LABELS {
            assert!(text.contains(&format!("shardmetrics_scraper_scrapes_total{{result=\"{r}\"}} 0")), "{r} missing:\n{text}");
        }
        let samples = shardmetrics_plumbing::metrics_text::parse_exposition(&text);
        assert!(samples.len() > RESULT_LABELS.len());
        for key in samples.keys() {
            assert!(key.starts_with("shardmetrics_scraper_"), "{key}");
        }
    }

    #[test]
    fn registering_twice_into_one_registry_is_an_error_not_a_panic() {
        let registry = Registry::new();
        assert!(Metrics::register(&registry).is_ok());
        assert!(matches!(Metrics::register(&registry), Err(prometheus::Error::AlreadyReg)));
    }
}
