//! The coverage and freshness probe: lists every node (each second) and every pod (every few
//! seconds) straight from the frontends, round-robin, as JSON, and records how many are served,
//! how many of those are fresh, and the age of each item's sample.
//!
//! Ages are probe time minus the item's `timestamp`, which the API writes truncated to whole
//! seconds (as `metav1.Time` does), so each age is overstated by up to 1 s. An item counts as
//! fresh when its age is at most two metric resolutions plus that second.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::time::Instant;

use serde::{Deserialize, Serialize};
use shardmetrics_plumbing::clock::SharedClock;

use super::queries::{Encoding, Target};
use super::stats::AgeHistogram;

/// What a probe lists.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ProbeKind {
    /// `/apis/metrics.k8s.io/v1beta1/nodes`.
    Nodes,
    /// `/apis/metrics.k8s.io/v1beta1/pods`.
    Pods,
}

/// One probe.
#[derive(Debug, Clone, Serialize)]
pub struct ProbePoint {
    /// Seconds into the measurement when the probe was sent.
    pub t_s: f64,
    /// Unix time of the probe, ms.
    pub unix_ms: i64,
    /// Items that should be there (nodes in the cluster, or pods).
    pub expected: usize,
    /// Items served.
    pub served: usize,
    /// Items served with a sample at most the fresh bound old.
    pub fresh: usize,
    /// 99th percentile of the served items' ages, ms.
    pub age_p99_ms: f64,
    /// Oldest served item, ms.
    pub age_max_ms: f64,
    /// Why the probe failed, if it did (then nothing counts as served).
    pub error: Option<String>,
}

impl ProbePoint {
    /// Fresh items as a share of expected ones, percent (100 when nothing is expected).
    pub fn coverage_percent(&self) -> f64 {
        if self.expected == 0 { 100.0 } else { 100.0 * self.fresh as f64 / self.expected as f64 }
    }
}

/// Everything the probe of one kind saw during the measurement.
#[derive(Debug, Default)]
pub struct ProbeLog {
    /// Each probe, in order.
    pub points: Vec<ProbePoint>,
    /// Ages of every served item of every probe.
    pub ages: AgeHistogram,
}

#[derive(Deserialize)]
struct List {
    #[serde(default)]
    items: Vec<Item>,
}

#[derive(Deserialize)]
struct Item {
    #[serde(default)]
    timestamp: Option<String>,
}

/// Counts served and fresh items of a list body at `now_ms`; returns (served, fresh, ages of
/// this list).
pub fn judge(body: &[u8], now_ms: i64, fresh_bound_ms: f64) -> Result<(usize, usize, AgeHistogram), String> {
    let list: List = serde_json::from_slice(body).map_err(|e| format!("undecodable list: {e}"))?;
    let mut mine = AgeHistogram::default();
    let mut fresh = 0;
    for item in &list.items {
        let Some(ts) = item.timestamp.as_deref().and_then(|t| t.parse::<jiff::Timestamp>().ok()) else { continue };
        let age = (now_ms - ts.as_millisecond()) as f64;
        mine.record(age);
        if age <= fresh_bound_ms {
            fresh += 1;
        }
    }
    Ok((list.items.len(), fresh, mine))
}

/// Settings of one probe loop.
#[derive(Clone)]
pub struct ProbeConfig {
    /// What to list.
    pub kind: ProbeKind,
    /// Time between probes.
    pub every: Duration,
    /// Start of the measurement (earlier probes are not kept).
    pub measure_from: Instant,
    /// End of the probing.
    pub until: Instant,
    /// Items older than this are served but not fresh, ms.
    pub fresh_bound_ms: f64,
    /// How many items there should be, asked at each probe.
    pub expected: Arc<dyn Fn() -> usize + Send + Sync>,
    /// Wall clock the served samples' ages are measured against (the demo's).
    pub clock: SharedClock,
}

/// Probes until `config.until`, one probe at a time (a slow probe delays the next one; ticks
/// missed meanwhile are skipped, not bunched).
pub async fn run(config: ProbeConfig, target: Target, log: Arc<Mutex<ProbeLog>>) {
    let path = match config.kind {
        ProbeKind::Nodes => "/apis/metrics.k8s.io/v1beta1/nodes",
        ProbeKind::Pods => "/apis/metrics.k8s.io/v1beta1/pods",
    };
    let mut tick = tokio::time::interval(config.every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    loop {
        tick.tick().await;
        let sent = Instant::now();
        if sent >= config.until {
            return;
        }
        let Some(since) = sent.checked_duration_since(config.measure_from) else { continue };
        let unix_ms = config.clock.now_ms();
        let expected = (config.expected)();
        let result = target.get_as(path, Encoding::Json).await;
        // Parsing a 150k-pod list takes a few hundred ms of CPU: on a bulk thread of its own at a
        // lower priority, so the query clients sharing this process's runtime workers, and the
        // cores, are not measured waiting for it.
        let fresh_bound_ms = config.fresh_bound_ms;
        let judged = match result {
            Ok(body) => shardmetrics_plumbing::bulk::run("probe-judge", move || judge(&body, unix_ms, fresh_bound_ms))
                .await
                .unwrap_or_else(|e| Err(format!("judging the list failed: {e}"))),
            Err(e) => Err(e),
        };
        let mut log = log.lock().unwrap_or_else(|p| p.into_inner());
        let mut point = ProbePoint {
            t_s: since.as_secs_f64(),
            unix_ms,
            expected,
            served: 0,
            fresh: 0,
            age_p99_ms: 0.0,
            age_max_ms: 0.0,
            error: None,
        };
        match judged {
            Ok((served, fresh, ages)) => {
                log.ages.merge(&ages);
                let p = ages.percentiles();
                (point.served, point.fresh, point.age_p99_ms, point.age_max_ms) = (served, fresh, p.p99, p.max);
            }
            Err(e) => point.error = Some(e),
        }
        log.points.push(point);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lists_are_judged_by_sample_age() {
        let body = br#"{"kind":"NodeMetricsList","items":[
            {"metadata":{"name":"a"},"timestamp":"2026-01-01T00:00:50Z","window":"15s","usage":{}},
            {"metadata":{"name":"b"},"timestamp":"2026-01-01T00:00:10Z","window":"15s","usage":{}},
            {"metadata":{"name":"c"}}]}"#;
        let now: i64 = "2026-01-01T00:01:00Z".parse::<jiff::Timestamp>().unwrap().as_millisecond();
        let (served, fresh, ages) = judge(body, now, 31_000.0).unwrap();
        assert_eq!((served, fresh), (3, 1));
        assert_eq!(ages.percentiles().max, 50_000.0);
        assert_eq!(ages.percentiles().count, 2);
        assert!(judge(b"<html>", now, 1.0).unwrap_err().contains("undecodable"));
    }

    #[test]
    fn coverage_is_fresh_over_expected() {
        let p = ProbePoint { t_s: 0.0, unix_ms: 0, expected: 4, served: 4, fresh: 3, age_p99_ms: 0.0, age_max_ms: 0.0, error: None };
        assert_eq!(p.coverage_percent(), 75.0);
    }
}
