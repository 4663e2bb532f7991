//! `run --compare metrics-server` and `run --system metrics-server`: the same scenario (same
//! simulated cluster shape, same query mix) run once per system, plus what only a comparison
//! needs, taken after each measurement window so that it does not disturb it:
//!
//! - [`full_list_bench`]: closed-loop full pod lists (`kubectl top pods -A`) in JSON and in
//!   protobuf, one at a time, bounded in count and time;
//! - [`kill_phase`]: one replica is SIGKILLed (a scraper shard of shardmetrics; one of the
//!   metrics-server replicas, which all scrape every node) and the node list is probed every
//!   half second through the same round-robin routing the queries use, the dead replica left in
//!   the rotation as an endpoint stays until its readiness probe fails;
//! - [`peer_scrape_stats`]: metrics-server's own `/metrics` (scrape rounds, kubelet requests).
//!
//! [`Comparison`] puts the systems side by side: [`SystemFigures`] per system (every figure
//! measured; `None` plus a reason where a system cannot do a thing) and ratios.

use std::collections::BTreeMap;
use std::fmt::Write;
use std::time::Duration;

use serde::Serialize;
use tokio::time::Instant;

use super::probe;
use super::queries::{Encoding, Target};
use super::report::Report;
use super::{ScenarioConfig, ScenarioError};
use super::stats::{self, AgeHistogram, Percentiles};
use crate::demo::{RunningDemo, System};

/// The Metrics API's full pod list.
const PODS_PATH: &str = "/apis/metrics.k8s.io/v1beta1/pods";
/// The Metrics API's node list.
const NODES_PATH: &str = "/apis/metrics.k8s.io/v1beta1/nodes";
/// How long one request of the comparison's own measurements may take.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(60);
/// Time between node probes of the kill phase.
const KILL_PROBE_EVERY: Duration = Duration::from_millis(500);

/// Full pod lists of one encoding, sent one at a time.
#[derive(Debug, Clone, Serialize, Default)]
pub struct ListBench {
    /// What was asked for.
    pub encoding: String,
    /// Requests sent.
    pub requests: u64,
    /// Requests answered 200.
    pub ok: u64,
    /// Latency of the successful ones, ms.
    pub latency_ms: Percentiles,
    /// Mean body size of the successful ones, bytes.
    pub bytes_mean: u64,
    /// The first failure, if any (e.g. `HTTP 406` when the encoding is not served).
    pub first_error: Option<String>,
}

/// Sends up to `count` full pod lists asking for `encoding`, one after the other, for at most
/// `limit`.
pub async fn full_list_bench(target: &Target, encoding: Encoding, count: u64, limit: Duration) -> ListBench {
    let mut out = ListBench { encoding: encoding.accept().to_owned(), ..Default::default() };
    let start = Instant::now();
    let mut latencies = Vec::new();
    let mut bytes = 0u64;
    while out.requests < count && start.elapsed() < limit {
        out.requests += 1;
        let sent = Instant::now();
        let result = match tokio::time::timeout(REQUEST_TIMEOUT, target.get_len_as(PODS_PATH, encoding)).await {
            Ok(r) => r,
            Err(_) => Err(format!("no answer within {REQUEST_TIMEOUT:?}")),
        };
        match result {
            Ok(n) => {
                out.ok += 1;
                bytes += n as u64;
                latencies.push(sent.elapsed().as_secs_f64() * 1000.0);
            }
            Err(e) => {
                out.first_error.get_or_insert(e);
            }
        }
    }
    out.latency_ms = stats::percentiles(&mut latencies);
    out.bytes_mean = bytes.checked_div(out.ok).unwrap_or(0);
    out
}

/// What killing one replica did to the served node list.
#[derive(Debug, Clone, Serialize, Default)]
pub struct KillReport {
    /// The replica killed (`scraper-0`, `metrics-server-0`); `None` when none could be.
    pub replica: Option<String>,
    /// Why nothing was killed.
    pub not_applicable: Option<String>,
    /// How long the node list was watched after the kill, s.
    pub observed_s: f64,
    /// Node probes sent.
    pub probes: usize,
    /// Probes that failed (transport error, non-200, undecodable).
    pub probe_errors: usize,
    /// Fewest nodes a successful probe served.
    pub fewest_nodes_served: Option<usize>,
    /// Fewest fresh nodes a successful probe served.
    pub fewest_nodes_fresh: Option<usize>,
    /// Longest stretch in which probes failed or left nodes out, s (from the first such probe
    /// to the next complete one, or to the end of the observation).
    pub gap_s: f64,
    /// Longest stretch in which some node was missing or older than the fresh bound, s.
    pub stale_s: f64,
    /// Whether the last probe served every node fresh.
    pub recovered: bool,
    /// Oldest node sample served after the kill, ms.
    pub worst_node_age_ms: f64,
}

/// One node probe of the kill phase.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct KillProbe {
    /// Seconds after the kill.
    pub t_s: f64,
    /// Every node served and the probe succeeded.
    pub complete: bool,
    /// Every node served fresh.
    pub fresh: bool,
}

/// The longest stretch of probes failing `ok`, from the first failing probe to the next one
/// passing (or to `end_s` when none does), s.
pub fn longest_gap(probes: &[KillProbe], end_s: f64, ok: impl Fn(&KillProbe) -> bool) -> f64 {
    let mut longest: f64 = 0.0;
    let mut since: Option<f64> = None;
    for p in probes {
        match (ok(p), since) {
            (false, None) => since = Some(p.t_s),
            (true, Some(s)) => {
                longest = longest.max(p.t_s - s);
                since = None;
            }
            _ => {}
        }
    }
    if let Some(s) = since {
        longest = longest.max(end_s - s);
    }
    longest
}

/// Kills one replica of `demo`'s system and probes the node list through `target` for
/// `window`. A single metrics-server replica is not killed: nothing would serve until it is
/// restarted, which is not a replica's gap but an outage.
pub async fn kill_phase(demo: &mut RunningDemo, target: &Target, fresh_bound_ms: f64, window: Duration) -> KillReport {
    let victim = match demo.system {
        System::Shardmetrics => demo.shard_names().into_iter().next().ok_or("no scraper shard is running"),
        System::MetricsServer { .. } => {
            let names = demo.peer_names();
            if names.len() < 2 {
                Err("metrics-server runs a single replica: killing it stops the Metrics API until it is restarted and has scraped twice; there is no second replica (run --metrics-server-replicas 2)")
            } else {
                Ok(names[0].clone())
            }
        }
    };
    let name = match victim {
        Ok(n) => n,
        Err(why) => return KillReport { not_applicable: Some(why.to_owned()), ..Default::default() },
    };
    let expected = demo.cluster.node_names().len();
    let killed_at = Instant::now();
    demo.kill_child(&name).await;
    let mut out = KillReport { replica: Some(name), ..Default::default() };
    let mut probes = Vec::new();
    let mut ages = AgeHistogram::default();
    let mut tick = tokio::time::interval(KILL_PROBE_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    while killed_at.elapsed() < window {
        tick.tick().await;
        let t_s = killed_at.elapsed().as_secs_f64();
        let now_ms = demo.clock().now_ms();
        let result = match tokio::time::timeout(REQUEST_TIMEOUT, target.get_as(NODES_PATH, Encoding::Json)).await {
            Ok(r) => r,
            Err(_) => Err("timed out".to_owned()),
        };
        out.probes += 1;
        match result.and_then(|body| probe::judge(&body, now_ms, fresh_bound_ms)) {
            Ok((served, fresh, list_ages)) => {
                ages.merge(&list_ages);
                out.fewest_nodes_served = Some(out.fewest_nodes_served.map_or(served, |f| f.min(served)));
                out.fewest_nodes_fresh = Some(out.fewest_nodes_fresh.map_or(fresh, |f| f.min(fresh)));
                probes.push(KillProbe { t_s, complete: served >= expected, fresh: fresh >= expected });
            }
            Err(_) => {
                out.probe_errors += 1;
                probes.push(KillProbe { t_s, complete: false, fresh: false });
            }
        }
    }
    out.observed_s = killed_at.elapsed().as_secs_f64();
    out.gap_s = longest_gap(&probes, out.observed_s, |p| p.complete);
    out.stale_s = longest_gap(&probes, out.observed_s, |p| p.fresh);
    out.recovered = probes.last().is_some_and(|p| p.fresh);
    out.worst_node_age_ms = ages.percentiles().max;
    out
}

/// metrics-server's view of its own scraping, from its `/metrics` at the end of the window
/// (counters since it started).
#[derive(Debug, Clone, Serialize, Default)]
pub struct PeerScrapeStats {
    /// The replica read.
    pub replica: String,
    /// Scrape rounds (`metrics_server_manager_tick_duration_seconds_count`).
    pub rounds: f64,
    /// Mean duration of a round (every node scraped), s.
    pub round_mean_s: Option<f64>,
    /// 99th percentile of a round's duration from the histogram, s.
    pub round_p99_s: Option<f64>,
    /// Kubelet requests by result (`metrics_server_kubelet_request_total{success=...}`).
    pub kubelet_requests: BTreeMap<String, f64>,
    /// Mean kubelet request duration, s.
    pub kubelet_request_mean_s: Option<f64>,
    /// Points in its store (`metrics_server_storage_points`), by type.
    pub storage_points: BTreeMap<String, f64>,
    /// Why `/metrics` could not be read, if it could not.
    pub error: Option<String>,
}

/// [`peer_scrape_stats`] for a metrics-server run, `None` for shardmetrics (whose scrape
/// figures are in the report's `scrapes`).
pub async fn peer_scrapes_or_none(demo: &RunningDemo) -> Option<PeerScrapeStats> {
    if demo.system == System::Shardmetrics { None } else { peer_scrape_stats(demo).await }
}

/// Reads the first metrics-server replica's `/metrics` as the admin (its delegated
/// authorization asks the API server).
pub async fn peer_scrape_stats(demo: &RunningDemo) -> Option<PeerScrapeStats> {
    let addr = *demo.frontends.first()?;
    let replica = demo.peer_names().into_iter().next().unwrap_or_default();
    let mut out = PeerScrapeStats { replica, ..Default::default() };
    let text = match crate::faults::Probe::new(demo) {
        Ok(p) => match p.get(&format!("https://{addr}/metrics")).await {
            Ok(r) if r.status == http::StatusCode::OK => String::from_utf8_lossy(&r.body).into_owned(),
            Ok(r) => {
                out.error = Some(format!("/metrics: HTTP {}", r.status));
                return Some(out);
            }
            Err(e) => {
                out.error = Some(format!("/metrics: {e}"));
                return Some(out);
            }
        },
        Err(e) => {
            out.error = Some(e.to_string());
            return Some(out);
        }
    };
    let expo = super::procstat::parse_exposition(&text);
    let sum = |name: &str| super::procstat::samples_of(&expo, name).map(|(_, v)| v).sum::<f64>();
    let tick = "metrics_server_manager_tick_duration_seconds";
    out.rounds = sum(&format!("{tick}_count"));
    let ratio = |s: f64, c: f64| (c > 0.0).then(|| s / c);
    out.round_mean_s = ratio(sum(&format!("{tick}_sum")), out.rounds);
    out.round_p99_s = stats::histogram_quantile(&super::procstat::histogram_buckets(&expo, tick), 0.99);
    for (k, v) in super::procstat::samples_of(&expo, "metrics_server_kubelet_request_total") {
        let success = super::procstat::label_value(k, "success").unwrap_or("unknown");
        *out.kubelet_requests.entry(format!("success={success}")).or_default() += v;
    }
    let req = "metrics_server_kubelet_request_duration_seconds";
    out.kubelet_request_mean_s = ratio(sum(&format!("{req}_sum")), sum(&format!("{req}_count")));
    for (k, v) in super::procstat::samples_of(&expo, "metrics_server_storage_points") {
        out.storage_points.insert(super::procstat::label_value(k, "type").unwrap_or("all").to_owned(), v);
    }
    Some(out)
}

/// What a run measured beyond the scenario's own report, for the comparison.
#[derive(Debug, Clone, Serialize, Default)]
pub struct Extras {
    /// Full pod lists as JSON.
    pub full_list_json: ListBench,
    /// Full pod lists as protobuf.
    pub full_list_protobuf: ListBench,
    /// Killing one replica.
    pub kill: KillReport,
    /// metrics-server's own scrape figures (metrics-server runs only).
    pub peer_scrapes: Option<PeerScrapeStats>,
}

/// The comparison's figures of one system. `None` with an entry in `reasons` where the system
/// could not do the thing (nothing is estimated).
#[derive(Debug, Clone, Serialize, Default)]
pub struct SystemFigures {
    /// Processes of the system (scraper and frontend replicas, or metrics-server replicas).
    pub processes: usize,
    /// CPU of all of them over the window, cores.
    pub cpu_cores: f64,
    /// Sum of their peak RSS, MiB.
    pub peak_rss_mib: f64,
    /// Requests to `/metrics/resource` counted at the simulated kubelets, per second.
    pub kubelet_requests_per_s: f64,
    /// Kubelet requests per node per resolution (1 when every node is scraped once).
    pub kubelet_requests_per_node_per_resolution: f64,
    /// HPA-style query latency (open loop, from due time), ms.
    pub hpa_p50_ms: Option<f64>,
    /// HPA-style query latency p99, ms.
    pub hpa_p99_ms: Option<f64>,
    /// HPA-style queries that failed.
    pub hpa_errors: u64,
    /// Full pod list as JSON, one at a time, ms.
    pub full_list_p50_ms: Option<f64>,
    /// p99 of the same, ms.
    pub full_list_p99_ms: Option<f64>,
    /// Full pod list as protobuf, ms.
    pub full_list_protobuf_p50_ms: Option<f64>,
    /// p99 of the same, ms.
    pub full_list_protobuf_p99_ms: Option<f64>,
    /// Age of served node samples (probe time minus `timestamp`), ms.
    pub node_age_p50_ms: f64,
    /// p99 of the same, ms.
    pub node_age_p99_ms: f64,
    /// Age of served pod samples, p99, ms.
    pub pod_age_p99_ms: f64,
    /// Lowest share of nodes served fresh in a probe of the window, percent.
    pub nodes_fresh_min_percent: f64,
    /// Seconds from starting the system until every replica served every node.
    pub cold_start_to_served_s: f64,
    /// Longest stretch with nodes missing (or probes failing) after one replica was SIGKILLed, s.
    pub kill_gap_s: Option<f64>,
    /// Longest stretch with a node missing or older than the fresh bound after the kill, s.
    pub kill_stale_s: Option<f64>,
    /// Why a figure is `None`, by field name.
    pub reasons: BTreeMap<String, String>,
}

/// The figures of one run.
pub fn figures(r: &Report) -> SystemFigures {
    let own: Vec<_> = r.processes.iter().filter(|p| !super::is_harness(&p.name)).collect();
    let mut f = SystemFigures {
        processes: own.len(),
        cpu_cores: own.iter().map(|p| p.cpu_cores).sum(),
        peak_rss_mib: own.iter().map(|p| p.peak_rss_mib).sum(),
        kubelet_requests_per_s: r.scrapes.achieved_per_second,
        kubelet_requests_per_node_per_resolution: r.scrapes.achieved_per_second * r.setup.resolution_s / r.setup.nodes.max(1) as f64,
        node_age_p50_ms: r.freshness.node_age_ms.p50,
        node_age_p99_ms: r.freshness.node_age_ms.p99,
        pod_age_p99_ms: r.freshness.pod_age_ms.p99,
        nodes_fresh_min_percent: r.coverage.nodes_min_percent,
        cold_start_to_served_s: r.cold_start_to_served_s,
        ..Default::default()
    };
    match r.queries.get("hpa_selector") {
        Some(q) if q.ok > 0 => {
            f.hpa_p50_ms = Some(q.latency_ms.p50);
            f.hpa_p99_ms = Some(q.latency_ms.p99);
            f.hpa_errors = q.errors;
        }
        Some(q) => {
            f.hpa_errors = q.errors;
            let why = q.error_reasons.keys().next().cloned().unwrap_or_else(|| "no HPA query succeeded".into());
            f.reasons.insert("hpa_p99_ms".into(), why);
        }
        None => {
            f.reasons.insert("hpa_p99_ms".into(), "no HPA queries were planned".into());
        }
    }
    let Some(x) = &r.extras else {
        f.reasons.insert("extras".into(), "the run did not take the comparison's measurements".into());
        return f;
    };
    let bench = |b: &ListBench, p50: &mut Option<f64>, p99: &mut Option<f64>, key: &str, reasons: &mut BTreeMap<String, String>| {
        if b.ok > 0 {
            *p50 = Some(b.latency_ms.p50);
            *p99 = Some(b.latency_ms.p99);
        } else {
            reasons.insert(key.into(), b.first_error.clone().unwrap_or_else(|| "no request was sent".into()));
        }
    };
    bench(&x.full_list_json, &mut f.full_list_p50_ms, &mut f.full_list_p99_ms, "full_list_p50_ms", &mut f.reasons);
    bench(&x.full_list_protobuf, &mut f.full_list_protobuf_p50_ms, &mut f.full_list_protobuf_p99_ms, "full_list_protobuf_p50_ms", &mut f.reasons);
    match (&x.kill.replica, &x.kill.not_applicable) {
        (Some(_), _) => {
            f.kill_gap_s = Some(x.kill.gap_s);
            f.kill_stale_s = Some(x.kill.stale_s);
        }
        (None, why) => {
            f.reasons.insert("kill_gap_s".into(), why.clone().unwrap_or_else(|| "no replica was killed".into()));
        }
    }
    f
}

/// Both systems side by side.
#[derive(Debug, Clone, Serialize)]
pub struct Comparison {
    /// The figures of each system, by name (`shardmetrics`, `metrics-server`).
    pub comparison: BTreeMap<String, SystemFigures>,
    /// metrics-server's figure divided by shardmetrics', by field (`None` when either is
    /// missing or shardmetrics' is zero).
    pub ratios: BTreeMap<String, Option<f64>>,
    /// The full report of each run.
    pub runs: BTreeMap<String, Report>,
    /// Systems whose run failed (e.g. never served every node), with the error and the tail of
    /// their log; they have no figures.
    pub failures: BTreeMap<String, String>,
}

/// The fields compared, with their accessor.
type Field = (&'static str, fn(&SystemFigures) -> Option<f64>);

/// Every figure of [`SystemFigures`] that has a ratio.
const FIELDS: [Field; 13] = [
    ("cpu_cores", |f| Some(f.cpu_cores)),
    ("peak_rss_mib", |f| Some(f.peak_rss_mib)),
    ("kubelet_requests_per_s", |f| Some(f.kubelet_requests_per_s)),
    ("hpa_p50_ms", |f| f.hpa_p50_ms),
    ("hpa_p99_ms", |f| f.hpa_p99_ms),
    ("full_list_p50_ms", |f| f.full_list_p50_ms),
    ("full_list_p99_ms", |f| f.full_list_p99_ms),
    ("full_list_protobuf_p50_ms", |f| f.full_list_protobuf_p50_ms),
    ("full_list_protobuf_p99_ms", |f| f.full_list_protobuf_p99_ms),
    ("node_age_p50_ms", |f| Some(f.node_age_p50_ms)),
    ("node_age_p99_ms", |f| Some(f.node_age_p99_ms)),
    ("cold_start_to_served_s", |f| Some(f.cold_start_to_served_s)),
    ("kill_gap_s", |f| f.kill_gap_s),
];

/// Builds the comparison of `runs` (by system name) and of the systems that `failures` lists.
pub fn compare(runs: BTreeMap<String, Report>, failures: BTreeMap<String, String>) -> Comparison {
    let comparison: BTreeMap<String, SystemFigures> = runs.iter().map(|(k, r)| (k.clone(), figures(r))).collect();
    let mut ratios = BTreeMap::new();
    if let (Some(s), Some(m)) = (comparison.get("shardmetrics"), comparison.get("metrics-server")) {
        for (name, get) in FIELDS {
            let ratio = match (get(m), get(s)) {
                (Some(m), Some(s)) if s > 0.0 => Some(m / s),
                _ => None,
            };
            ratios.insert(name.to_owned(), ratio);
        }
    }
    Comparison { comparison, ratios, runs, failures }
}

/// Runs `base` once per system in `systems`, each on its own identical simulated cluster with
/// the comparison's measurements; each run's report goes to `<report>.<system>.json` (chart
/// beside it) and `on_report` sees it; the comparison is written to `base.report` and returned.
/// A system whose run fails is listed in [`Comparison::failures`] and the next one still runs;
/// the error is returned only when no system ran.
pub async fn run(
    base: ScenarioConfig,
    systems: &[System],
    mut on_report: impl FnMut(&System, &Report, &std::path::Path),
) -> Result<Comparison, ScenarioError> {
    let mut runs = BTreeMap::new();
    let mut failures = BTreeMap::new();
    let mut last_error = None;
    for system in systems {
        let mut config = base.clone();
        config.demo.system = *system;
        config.comparison_extras = true;
        config.report = base.report.with_extension(format!("{}.json", system.name()));
        match super::run(config.clone()).await {
            Ok(report) => {
                on_report(system, &report, &config.report);
                runs.insert(system.name().to_owned(), report);
            }
            Err(e) => {
                tracing::warn!(system = system.name(), error = %e, "the run failed");
                failures.insert(system.name().to_owned(), e.to_string());
                last_error = Some(e);
            }
        }
    }
    if runs.is_empty()
        && let Some(e) = last_error
    {
        return Err(e);
    }
    let comparison = compare(runs, failures);
    let write_err = |why: String| ScenarioError::Write { path: base.report.clone(), why };
    let json = serde_json::to_string_pretty(&comparison).map_err(|e| write_err(e.to_string()))?;
    std::fs::write(&base.report, json).map_err(|e| write_err(e.to_string()))?;
    Ok(comparison)
}

fn opt(v: Option<f64>, decimals: usize) -> String {
    v.map_or_else(|| "n/a".to_owned(), |v| format!("{v:.decimals$}"))
}

/// The side-by-side table.
pub fn summary(c: &Comparison) -> String {
    let mut out = String::new();
    let names: Vec<&String> = c.comparison.keys().collect();
    let _ = write!(out, "\n{:<34}", "comparison");
    for n in &names {
        let _ = write!(out, " {n:>16}");
    }
    if !c.ratios.is_empty() {
        let _ = write!(out, " {:>12}", "ms / sm");
    }
    let _ = writeln!(out);
    let rows: [(&str, &str, usize); 13] = [
        ("cpu_cores", "CPU, cores (all processes)", 3),
        ("peak_rss_mib", "peak RSS, MiB (sum)", 0),
        ("kubelet_requests_per_s", "kubelet requests/s", 1),
        ("hpa_p50_ms", "HPA query p50, ms", 1),
        ("hpa_p99_ms", "HPA query p99, ms", 1),
        ("full_list_p50_ms", "full pod list JSON p50, ms", 0),
        ("full_list_p99_ms", "full pod list JSON p99, ms", 0),
        ("full_list_protobuf_p50_ms", "full pod list protobuf p50, ms", 0),
        ("full_list_protobuf_p99_ms", "full pod list protobuf p99, ms", 0),
        ("node_age_p50_ms", "served node age p50, ms", 0),
        ("node_age_p99_ms", "served node age p99, ms", 0),
        ("cold_start_to_served_s", "cold start to served, s", 1),
        ("kill_gap_s", "gap after one replica SIGKILL, s", 1),
    ];
    for (key, label, decimals) in rows {
        let get = FIELDS.iter().find(|(k, _)| *k == key).map(|(_, g)| *g);
        let _ = write!(out, "{label:<34}");
        for n in &names {
            let v = get.and_then(|g| g(&c.comparison[*n]));
            let _ = write!(out, " {:>16}", opt(v, decimals));
        }
        if let Some(r) = c.ratios.get(key) {
            let _ = write!(out, " {:>12}", r.map_or_else(|| "n/a".to_owned(), |r| format!("{r:.2}x")));
        }
        let _ = writeln!(out);
    }
    for (n, why) in &c.failures {
        let _ = writeln!(out, "  {n}: the run failed: {why}");
    }
    for (n, f) in &c.comparison {
        for (field, why) in &f.reasons {
            let _ = writeln!(out, "  {n} {field}: n/a because {why}");
        }
        if let Some(k) = c.runs.get(n).and_then(|r| r.extras.as_ref()).map(|x| &x.kill)
            && k.replica.is_some()
        {
            let _ = writeln!(
                out,
                "  {n}: killed {} ; nodes missing for {:.1}s, stale for {:.1}s; fewest served {:?}, fresh {:?}; {} probe errors; recovered {}",
                k.replica.as_deref().unwrap_or(""),
                k.gap_s,
                k.stale_s,
                k.fewest_nodes_served,
                k.fewest_nodes_fresh,
                k.probe_errors,
                k.recovered
            );
        }
        if let Some(p) = c.runs.get(n).and_then(|r| r.extras.as_ref()).and_then(|x| x.peer_scrapes.as_ref()) {
            let _ = writeln!(
                out,
                "  {n}: {} scrape rounds, round mean {} s, p99 {} s; kubelet requests {:?}, mean {} s; store {:?}{}",
                p.rounds,
                opt(p.round_mean_s, 2),
                opt(p.round_p99_s, 2),
                p.kubelet_requests,
                opt(p.kubelet_request_mean_s, 3),
                p.storage_points,
                p.error.as_ref().map_or(String::new(), |e| format!("; {e}"))
            );
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(t_s: f64, complete: bool, fresh: bool) -> KillProbe {
        KillProbe { t_s, complete, fresh }
    }

    #[test]
    fn gaps_run_from_the_first_bad_probe_to_the_next_good_one() {
        let probes = [p(0.5, true, true), p(1.0, false, false), p(1.5, true, false), p(2.0, true, true), p(2.5, false, false)];
        assert_eq!(longest_gap(&probes, 4.0, |p| p.complete), 1.5, "the open gap at the end runs to the end");
        assert_eq!(longest_gap(&probes, 2.6, |p| p.complete), 0.5);
        assert_eq!(longest_gap(&probes, 2.6, |p| p.fresh), 1.0);
        assert_eq!(longest_gap(&[p(1.0, true, true)], 5.0, |p| p.complete), 0.0);
        assert_eq!(longest_gap(&[], 5.0, |p| p.complete), 0.0);
    }
}
