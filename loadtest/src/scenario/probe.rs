//! The coverage and freshness probe: lists every node (each second) and every pod (every few
//! seconds) straight from the frontends, round-robin, as JSON, and records how many are served,
//! how many of those are fresh, and the age of each item's sample. When the run sends
//! `kubectl top`-style pod lists at least as often, the pod probe judges their answers instead
//! of asking for lists of its own ([`Judge`]): those come the way the run's queries do (in its
//! encoding, JSON or protobuf; straight or through the aggregation proxy), and a failed one is a
//! failed probe. A 150k-pod list costs the frontend and the client a few hundred ms of CPU,
//! which a second list every few seconds would add to what the run measures.
//!
//! Ages are probe time minus the item's `timestamp`, which the API writes truncated to whole
//! seconds (as `metav1.Time` does), so each age is overstated by up to 1 s. An item counts as
//! fresh when its age is at most two metric resolutions plus that second.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::time::Instant;

use bytes::Bytes;
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
    /// Answers not judged because the previous one was still being judged ([`Judge`]).
    pub skipped: usize,
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

/// A protobuf `PodMetricsList` or `NodeMetricsList` (the `raw` of the Kubernetes envelope) read
/// for its items' timestamps only: every other field is skipped unread.
#[derive(Clone, PartialEq, prost::Message)]
struct ProtoList {
    #[prost(message, repeated, tag = "2")]
    items: Vec<ProtoItem>,
}

#[derive(Clone, PartialEq, prost::Message)]
struct ProtoItem {
    #[prost(message, optional, tag = "2")]
    timestamp: Option<shardmetrics_frontend::api::protobuf::Time>,
}

/// Counts served and fresh items of a list body at `now_ms`; returns (served, fresh, ages of
/// this list).
pub fn judge(body: &[u8], now_ms: i64, fresh_bound_ms: f64) -> Result<(usize, usize, AgeHistogram), String> {
    let list: List = serde_json::from_slice(body).map_err(|e| format!("undecodable list: {e}"))?;
    let stamps = list.items.iter().map(|item| item.timestamp.as_deref().and_then(|t| t.parse::<jiff::Timestamp>().ok()).map(|t| t.as_millisecond()));
    Ok(tally(list.items.len(), stamps, now_ms, fresh_bound_ms))
}

/// [`judge`] for a protobuf answer (`application/vnd.kubernetes.protobuf`, envelope included).
pub fn judge_protobuf(body: &[u8], now_ms: i64, fresh_bound_ms: f64) -> Result<(usize, usize, AgeHistogram), String> {
    use prost::Message;
    let (_, raw) = shardmetrics_frontend::api::protobuf::decode_envelope(body).map_err(|e| format!("undecodable list: {e}"))?;
    let list = ProtoList::decode(raw.as_slice()).map_err(|e| format!("undecodable list: {e}"))?;
    let stamps = list.items.iter().map(|item| item.timestamp.as_ref().and_then(|t| t.seconds).map(|s| s.saturating_mul(1000)));
    Ok(tally(list.items.len(), stamps, now_ms, fresh_bound_ms))
}

/// (served, fresh, ages) of a list of `served` items with these sample times (Unix ms; `None`
/// for an item without one, which is served but neither aged nor fresh).
fn tally(served: usize, stamps: impl Iterator<Item = Option<i64>>, now_ms: i64, fresh_bound_ms: f64) -> (usize, usize, AgeHistogram) {
    let mut mine = AgeHistogram::default();
    let mut fresh = 0;
    for ts in stamps.flatten() {
        let age = (now_ms - ts) as f64;
        mine.record(age);
        if age <= fresh_bound_ms {
            fresh += 1;
        }
    }
    (served, fresh, mine)
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

/// What a probe knew when it sent its request: when (into the measurement), the wall clock,
/// and how many items there should be.
#[derive(Debug, Clone, Copy)]
pub struct Sent {
    since: Option<Duration>,
    unix_ms: i64,
    expected: usize,
}

/// Judges list answers into a probe log: the probe loop's own lists, or the answers of the
/// run's `kubectl top` queries (see the module doc). Judging runs on a bulk thread of its own
/// at a lower priority (parsing a 150k-pod list takes a few hundred ms of CPU), so the query
/// clients and the cores are not measured waiting for it.
///
/// One answer at a time: a whole list body is held from its request until it is judged, so
/// [`Judge::begin`] refuses (and counts in [`ProbeLog::skipped`]) a request sent while the
/// previous answer is still in flight or being judged; that request is then only timed.
#[derive(Clone)]
pub struct Judge {
    config: ProbeConfig,
    encoding: Encoding,
    log: Arc<Mutex<ProbeLog>>,
    one_at_a_time: Arc<tokio::sync::Semaphore>,
}

/// The right to have one answer judged (see [`Judge::begin`]); held until it is.
#[derive(Debug)]
pub struct Judging {
    sent: Sent,
    _permit: tokio::sync::OwnedSemaphorePermit,
}

impl Judge {
    /// Judges answers in `encoding` against `config`, into `log`.
    pub fn new(config: ProbeConfig, encoding: Encoding, log: Arc<Mutex<ProbeLog>>) -> Judge {
        Judge { config, encoding, log, one_at_a_time: Arc::new(tokio::sync::Semaphore::new(1)) }
    }

    /// What to note when a request is sent, to judge its answer by.
    pub fn sent(&self) -> Sent {
        Sent { since: Instant::now().checked_duration_since(self.config.measure_from), unix_ms: self.config.clock.now_ms(), expected: (self.config.expected)() }
    }

    /// Called as a request is sent: `Some` if its answer is to be kept and judged (hand it to
    /// [`Judge::finish`]), `None` if the previous answer is still pending (counted as skipped
    /// when it falls in the measurement).
    pub fn begin(&self) -> Option<Judging> {
        let sent = self.sent();
        match self.one_at_a_time.clone().try_acquire_owned() {
            Ok(permit) => Some(Judging { sent, _permit: permit }),
            Err(_) => {
                if sent.since.is_some() {
                    self.log.lock().unwrap_or_else(|p| p.into_inner()).skipped += 1;
                }
                None
            }
        }
    }

    /// Judges the answer of a request [`Judge::begin`] let through, then lets the next one in.
    pub async fn finish(&self, judging: Judging, result: Result<Vec<Bytes>, String>) {
        self.judge(judging.sent, result).await;
    }

    /// Judges the answer to a request sent at `sent` (its body as the frames it came in) and
    /// logs the point; answers to requests sent before the measurement are not kept.
    pub async fn judge(&self, sent: Sent, result: Result<Vec<Bytes>, String>) {
        let Some(since) = sent.since else { return };
        let (fresh_bound_ms, encoding, unix_ms) = (self.config.fresh_bound_ms, self.encoding, sent.unix_ms);
        let judged = match result {
            Ok(frames) => shardmetrics_plumbing::bulk::run("probe-judge", move || {
                let body = super::queries::join_frames(frames);
                match encoding {
                    Encoding::Json => judge(&body, unix_ms, fresh_bound_ms),
                    Encoding::Protobuf => judge_protobuf(&body, unix_ms, fresh_bound_ms),
                }
            })
            .await
            .unwrap_or_else(|e| Err(format!("judging the list failed: {e}"))),
            Err(e) => Err(e),
        };
        let mut point =
            ProbePoint { t_s: since.as_secs_f64(), unix_ms, expected: sent.expected, served: 0, fresh: 0, age_p99_ms: 0.0, age_max_ms: 0.0, error: None };
        let mut log = self.log.lock().unwrap_or_else(|p| p.into_inner());
        match judged {
            Ok((served, fresh, ages)) => {
                log.ages.merge(&ages);
                let p = ages.percentiles();
                (point.served, point.fresh, point.age_p99_ms, point.age_max_ms) = (served, fresh, p.p99, p.max);
            }
            Err(e) => point.error = Some(e),
        }
        // Answers may be judged out of order (overlapping queries): the log stays in time order.
        let at = log.points.partition_point(|p| p.t_s <= point.t_s);
        log.points.insert(at, point);
    }
}

/// Probes until `config.until`, one probe at a time (a slow probe delays the next one; ticks
/// missed meanwhile are skipped, not bunched), asking for JSON.
pub async fn run(config: ProbeConfig, target: Target, log: Arc<Mutex<ProbeLog>>) {
    let path = match config.kind {
        ProbeKind::Nodes => "/apis/metrics.k8s.io/v1beta1/nodes",
        ProbeKind::Pods => "/apis/metrics.k8s.io/v1beta1/pods",
    };
    let mut tick = tokio::time::interval(config.every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    let until = config.until;
    let judge = Judge::new(config, Encoding::Json, log);
    loop {
        tick.tick().await;
        if Instant::now() >= until {
            return;
        }
        let sent = judge.sent();
        if sent.since.is_none() {
            continue;
        }
        let result = target.get_as(path, Encoding::Json).await.map(|body| vec![body]);
        judge.judge(sent, result).await;
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
    fn protobuf_lists_are_judged_like_json_ones() {
        use prost::Message;
        use shardmetrics_frontend::api::protobuf as pb;
        let item = |name: &str, seconds: Option<i64>| pb::PodMetrics {
            metadata: Some(pb::ObjectMeta { name: Some(name.into()), namespace: Some("ns".into()), ..Default::default() }),
            timestamp: seconds.map(|s| pb::Time { seconds: Some(s), nanos: None }),
            window: Some(pb::Duration { duration: Some(15_000_000_000) }),
            containers: vec![],
        };
        let now: i64 = "2026-01-01T00:01:00Z".parse::<jiff::Timestamp>().unwrap().as_millisecond();
        let t = |s: &str| s.parse::<jiff::Timestamp>().unwrap().as_second();
        let list = pb::PodMetricsList {
            metadata: Some(pb::ListMeta::default()),
            items: vec![item("a", Some(t("2026-01-01T00:00:50Z"))), item("b", Some(t("2026-01-01T00:00:10Z"))), item("c", None)],
        };
        let tm = pb::TypeMeta { api_version: Some("metrics.k8s.io/v1beta1".into()), kind: Some("PodMetricsList".into()) };
        let unknown = pb::Unknown { type_meta: Some(tm), raw: Some(list.encode_to_vec()), content_encoding: Some(String::new()), content_type: Some(String::new()) };
        let mut body = pb::MAGIC.to_vec();
        body.extend_from_slice(&unknown.encode_to_vec());
        let (served, fresh, ages) = judge_protobuf(&body, now, 31_000.0).unwrap();
        assert_eq!((served, fresh), (3, 1));
        assert_eq!(ages.percentiles().max, 50_000.0);
        assert_eq!(ages.percentiles().count, 2);
        assert!(judge_protobuf(b"{}", now, 1.0).unwrap_err().contains("undecodable"));
    }

    #[test]
    fn coverage_is_fresh_over_expected() {
        let p = ProbePoint { t_s: 0.0, unix_ms: 0, expected: 4, served: 4, fresh: 3, age_p99_ms: 0.0, age_max_ms: 0.0, error: None };
        assert_eq!(p.coverage_percent(), 75.0);
    }
}
