//! `shardmetrics-loadtest run`: a measured scenario on top of the demo's pipeline.
//!
//! The demo (simulated cluster, S scraper shards and F frontends as child processes) starts;
//! once every frontend serves every node, an open-loop query load ([`queries`]) runs for the
//! warm-up and then the measurement window, while a probe ([`probe`]) lists nodes (each second)
//! and pods (every few seconds) straight from the frontends to measure coverage and freshness.
//! `--fault` specs are injected at their times ([`crate::faults::inject`]). Every second the run
//! reads CPU and memory of every process from /proc ([`procstat`]); every few seconds it reads
//! the shards' and frontends' `/metrics`. During the window the floor ([`floor`]) fetches one
//! shard's share of the same kubelet payloads with a bare client in a child process, for the
//! scrapers' CPU to be compared with; after it, the frontends' floor ([`frontend_floor`]) runs.
//! The report ([`report::Report`]) is written as JSON with an SVG chart ([`chart`]) next to
//! it, and [`summary`] renders it as a table.

pub mod chart;
pub mod compare;
pub mod floor;
pub mod frontend_floor;
pub mod probe;
pub mod procstat;
pub mod queries;
pub mod report;
pub mod stats;
pub mod summary;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use tokio::time::Instant;

use crate::demo::{Demo, DemoConfig, DemoError, RunningDemo};
use crate::faults::{self, FaultOutcome, FaultSpec};
use probe::{ProbeConfig, ProbeKind, ProbeLog};
use procstat::{AdminReader, Exposition, MachineSample, ProcSample, TICKS_PER_SECOND};
use queries::{Encoding, QueryKind, Recorder, Target, Universe};
use report::{
    ComponentStats, Coverage, DuplicatePair, FaultReport, FaultWindow, Freshness, HistogramSummary, Machine, ProcessStats, Report,
    SATURATED_PERCENT, Scrapes, Setup, Timeline,
};
use shardmetrics_sim::kubelet::ScrapeCounts;

pub use summary::summary;

/// The query load.
#[derive(Debug, Clone)]
pub struct LoadConfig {
    /// HPA-style queries (one namespace, `app=` selector) per second.
    pub hpa_per_second: f64,
    /// `kubectl top pods -A`-style full lists per second.
    pub top_per_second: f64,
    /// Node queries per second, alternating one node and every node.
    pub node_per_second: f64,
    /// What the queries ask for.
    pub encoding: Encoding,
    /// Send them through the aggregation proxy instead of straight to the frontends.
    pub via_proxy: bool,
}

impl Default for LoadConfig {
    fn default() -> Self {
        LoadConfig { hpa_per_second: 20.0, top_per_second: 0.1, node_per_second: 1.0, encoding: Encoding::Json, via_proxy: false }
    }
}

/// What a run is.
#[derive(Debug, Clone)]
pub struct ScenarioConfig {
    /// The pipeline to run.
    pub demo: DemoConfig,
    /// Load on but not measured, after the pipeline is ready.
    pub warmup: Duration,
    /// The measurement window.
    pub duration: Duration,
    /// The query load.
    pub load: LoadConfig,
    /// Faults, each at its time into the window.
    pub faults: Vec<FaultSpec>,
    /// How long the frontends' floor runs after the window (zero: no floors at all). The
    /// scrapers' floor ([`floor`]) fetches for the whole window, beside it.
    pub floor_duration: Duration,
    /// Time between pod probes. When `kubectl top`-style lists are planned at least this often,
    /// the pod probe judges their answers instead and sends none of its own.
    pub pod_probe_every: Duration,
    /// Where to write the JSON report (the chart goes next to it, `.svg`).
    pub report: PathBuf,
    /// Show a progress bar on stderr.
    pub progress: bool,
    /// After the window, take the comparison's measurements ([`compare::Extras`]: full pod
    /// lists in both encodings, then one replica SIGKILLed).
    pub comparison_extras: bool,
}

impl ScenarioConfig {
    /// A run of `demo` with the default load, no warm-up and no faults; the frontends' floor
    /// for min(duration, 30 s).
    pub fn new(demo: DemoConfig, duration: Duration, report: PathBuf) -> ScenarioConfig {
        ScenarioConfig {
            demo,
            warmup: Duration::ZERO,
            duration,
            load: LoadConfig::default(),
            faults: Vec::new(),
            floor_duration: duration.min(Duration::from_secs(30)),
            pod_probe_every: Duration::from_secs(5),
            report,
            progress: false,
            comparison_extras: false,
        }
    }

    /// Where the chart goes: the report's path with `.svg`.
    pub fn chart_path(&self) -> PathBuf {
        self.report.with_extension("svg")
    }
}

/// What can go wrong.
#[derive(Debug, thiserror::Error)]
pub enum ScenarioError {
    /// The pipeline did not start.
    #[error(transparent)]
    Demo(#[from] DemoError),
    /// The query clients' TLS configuration failed.
    #[error(transparent)]
    Tls(#[from] shardmetrics_plumbing::pki::PkiError),
    /// Writing the report or the chart failed.
    #[error("writing {path}: {why}")]
    Write {
        /// The file.
        path: PathBuf,
        /// What failed.
        why: String,
    },
}

/// Runs the scenario, writes the report and the chart, and returns the report.
pub async fn run(config: ScenarioConfig) -> Result<Report, ScenarioError> {
    let started = Instant::now();
    let mut demo = Demo::start(config.demo.clone()).await?;
    let startup_s = started.elapsed().as_secs_f64();
    let result = measure(&config, &mut demo, startup_s).await;
    demo.shutdown().await;
    let mut report = result?;
    let chart_path = config.chart_path();
    chart::write(&report, &chart_path).map_err(|why| ScenarioError::Write { path: chart_path.clone(), why })?;
    report.chart = Some(chart_path);
    let json = serde_json::to_string_pretty(&report).map_err(|e| ScenarioError::Write { path: config.report.clone(), why: e.to_string() })?;
    std::fs::write(&config.report, json).map_err(|e| ScenarioError::Write { path: config.report.clone(), why: e.to_string() })?;
    Ok(report)
}

/// Name of this process in the report.
pub const SELF_NAME: &str = "simulator+clients";

/// Whether a process of the report is the harness's rather than the measured system's: this
/// process, a kubelet server child of the simulated cluster (`kubelets-<i>`), or the floor.
pub fn is_harness(name: &str) -> bool {
    name == SELF_NAME || name == floor::FLOOR_NAME || name.starts_with(shardmetrics_sim::kubelet::servers::SERVER_NAME_PREFIX)
}

/// Every process whose CPU and memory the run reads: the system's children, the kubelet server
/// children, this process.
fn tracked(demo: &RunningDemo) -> Vec<(String, u32)> {
    let mut all = demo.children();
    all.extend(demo.kubelet_servers());
    all.push((SELF_NAME.to_owned(), std::process::id()));
    all
}

/// CPU and memory of every process seen in the window.
#[derive(Default)]
struct ProcTracker {
    /// (name, pid) -> (CPU ticks at the start of the window or 0 if it started later, last sample).
    seen: BTreeMap<(String, u32), (u64, ProcSample)>,
}

impl ProcTracker {
    fn sample(&mut self, procs: &[(String, u32)], at_start: bool) {
        for (name, pid) in procs {
            if let Some(s) = procstat::proc_sample(*pid) {
                let entry = self.seen.entry((name.clone(), *pid)).or_insert((if at_start { s.cpu_ticks } else { 0 }, s));
                entry.1 = s;
            }
        }
    }

    fn stats(&self, alive: &[(String, u32)], measured_s: f64) -> Vec<ProcessStats> {
        self.seen
            .iter()
            .map(|((name, pid), (base, last))| {
                let cpu_s = last.cpu_ticks.saturating_sub(*base) as f64 / TICKS_PER_SECOND;
                ProcessStats {
                    name: name.clone(),
                    pid: *pid,
                    cpu_s,
                    cpu_cores: cpu_s / measured_s.max(1e-9),
                    rss_mib: last.rss_kib as f64 / 1024.0,
                    peak_rss_mib: last.peak_rss_kib as f64 / 1024.0,
                    alive_at_end: alive.iter().any(|(n, p)| n == name && p == pid),
                }
            })
            .collect()
    }
}

/// `scraper-0` -> `scraper`.
fn component(name: &str) -> &str {
    match name.rsplit_once('-') {
        Some((prefix, n)) if n.chars().all(|c| c.is_ascii_digit()) && !n.is_empty() => prefix,
        _ => name,
    }
}

fn components(processes: &[ProcessStats], nodes: usize) -> BTreeMap<String, ComponentStats> {
    let per_1000 = 1000.0 / nodes.max(1) as f64;
    let mut out: BTreeMap<String, ComponentStats> = BTreeMap::new();
    for p in processes {
        let c = out.entry(component(&p.name).to_owned()).or_default();
        c.processes += 1;
        c.cpu_s += p.cpu_s;
        c.cpu_cores += p.cpu_cores;
        c.max_peak_rss_mib = c.max_peak_rss_mib.max(p.peak_rss_mib);
        c.total_peak_rss_mib += p.peak_rss_mib;
    }
    for c in out.values_mut() {
        c.cpu_cores_per_1000_nodes = c.cpu_cores * per_1000;
        c.peak_rss_mib_per_1000_nodes = c.total_peak_rss_mib * per_1000;
    }
    out
}

/// The machine over the window, from `/proc/stat` at its start and end (all zero but the
/// process rows where it cannot be read).
fn machine(window: Option<(MachineSample, MachineSample)>, processes: &[ProcessStats], measured_s: f64, cluster_resyncs: u64) -> Machine {
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let busy_cores = window.map_or(0.0, |(a, b)| b.busy_ticks.saturating_sub(a.busy_ticks) as f64 / TICKS_PER_SECOND / measured_s.max(1e-9));
    let harness_cores: f64 = processes.iter().filter(|p| is_harness(&p.name)).map(|p| p.cpu_cores).sum();
    let measured_cores: f64 = processes.iter().map(|p| p.cpu_cores).sum();
    let busy_percent = 100.0 * busy_cores / cores as f64;
    Machine {
        cores,
        busy_cores,
        busy_percent,
        harness_cores,
        harness_share_percent: if busy_cores > 0.0 { 100.0 * harness_cores / busy_cores } else { 0.0 },
        other_cores: (busy_cores - measured_cores).max(0.0),
        saturated: busy_percent >= SATURATED_PERCENT,
        cluster_resyncs,
    }
}

/// `/metrics` of every child: (name, pid) -> (reading at the start of the window, if it was
/// running then; last reading).
#[derive(Default)]
struct MetricsTracker {
    reader: AdminReader,
    seen: BTreeMap<(String, u32), (Option<Exposition>, Exposition)>,
}

impl MetricsTracker {
    async fn read(&mut self, children: &[(String, u32)], at_start: bool) {
        for (name, pid) in children {
            if let Some(e) = self.reader.metrics(*pid).await {
                let entry = self.seen.entry((name.clone(), *pid)).or_insert_with(|| (at_start.then(|| e.clone()), e.clone()));
                entry.1 = e;
            }
        }
    }

    /// Increase of every sample over the window, summed over the processes named `prefix*`.
    fn increase(&self, prefix: &str) -> Exposition {
        let mut out = Exposition::new();
        for ((name, _), (base, last)) in &self.seen {
            if !name.starts_with(prefix) {
                continue;
            }
            for (k, v) in last {
                let before = base.as_ref().and_then(|b| b.get(k)).copied().unwrap_or(0.0);
                *out.entry(k.clone()).or_default() += (v - before).max(0.0);
            }
        }
        out
    }
}

/// Pairs of requests to one kubelet within `[from_ms, to_ms)` closer than half a resolution,
/// and the number of requests in the window.
fn scrape_counts(demo: &RunningDemo, from_ms: i64, to_ms: i64, resolution: Duration) -> ScrapeCounts {
    demo.cluster.fleet().scrape_counts(from_ms, to_ms, (resolution.as_millis() / 2) as i64)
}

struct Pending {
    spec: FaultSpec,
    outcome: FaultOutcome,
    error: Option<String>,
    handle: Option<tokio::task::JoinHandle<BTreeMap<String, f64>>>,
}

/// Runs `work` on a thread of its own with a current-thread runtime (so that the thread's CPU
/// and scheduling are the work's alone: connections it opens are driven there too).
pub(crate) fn on_own_thread<T: Send + 'static>(
    name: &str,
    work: impl std::future::Future<Output = Result<T, String>> + Send + 'static,
) -> tokio::task::JoinHandle<Result<T, String>> {
    let name = name.to_owned();
    tokio::task::spawn_blocking(move || {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().thread_name(name).build().map_err(|e| e.to_string())?;
        rt.block_on(work)
    })
}

async fn measure(config: &ScenarioConfig, demo: &mut RunningDemo, startup_s: f64) -> Result<Report, ScenarioError> {
    let resolution = config.demo.metric_resolution;
    let frontends: Arc<RwLock<Vec<SocketAddr>>> = Arc::new(RwLock::new(demo.frontends.clone()));
    let proxy_tls = shardmetrics_plumbing::pki::client_config(None, Some(demo.api.front_proxy_client_cert()))?;
    let direct = Target::direct(proxy_tls.clone(), frontends.clone(), config.load.encoding);
    // Each query kind gets a client of its own (its own connections), as the HPA controller
    // and kubectl are separate programs.
    let new_target = || -> Result<Target, ScenarioError> {
        Ok(if config.load.via_proxy {
            let tls = shardmetrics_plumbing::pki::client_config(Some(&demo.api.ca().root_store()), None)?;
            let token = demo.api.policy().token_of(shardmetrics_sim::apiserver::DEFAULT_ADMIN).unwrap_or_default().to_owned();
            Target::via_proxy(tls, demo.api.url(), token, config.load.encoding)
        } else {
            Target::direct(proxy_tls.clone(), frontends.clone(), config.load.encoding)
        })
    };
    let query_path = new_target()?.path();
    let universe = Arc::new(Universe {
        namespaces: demo.cluster.config().namespaces.clone(),
        apps_per_namespace: demo.cluster.config().apps_per_namespace,
        nodes: demo.cluster.node_names(),
    });
    let nodes = universe.nodes.len();
    let pods = demo.api.store().count(shardmetrics_sim::apiserver::resources::PODS);
    let node_half = config.load.node_per_second / 2.0;
    let planned: BTreeMap<QueryKind, f64> = [
        (QueryKind::HpaSelector, config.load.hpa_per_second),
        (QueryKind::TopAllPods, config.load.top_per_second),
        (QueryKind::OneNode, node_half),
        (QueryKind::AllNodes, node_half),
    ]
    .into_iter()
    .filter(|(_, r)| *r > 0.0)
    .collect();

    let load_start = Instant::now();
    let t0 = load_start + config.warmup;
    let end = t0 + config.duration;
    // The scrapers' floor: connections set up during the warm-up, then fetches for the window,
    // beside it (see `floor`).
    let floor_child = if config.floor_duration.is_zero() {
        None
    } else {
        let start_at_ms = demo.clock().now_ms().saturating_add(config.warmup.as_millis() as i64);
        Some(floor::start_child(demo, &config.demo, config.duration, start_at_ms))
    };
    let floor_proc = floor_child.as_ref().and_then(|c| c.as_ref().ok()).and_then(floor::FloorChild::process);
    let watched = |demo: &RunningDemo| {
        let mut all = tracked(demo);
        all.extend(floor_proc.clone());
        all
    };
    let recorder = Recorder::new(t0);
    let fresh_bound_ms = 2.0 * resolution.as_secs_f64() * 1000.0 + 1000.0;
    let node_log = Arc::new(Mutex::new(ProbeLog::default()));
    let pod_log = Arc::new(Mutex::new(ProbeLog::default()));
    let fleet = demo.cluster.fleet().clone();
    let store = demo.api.store().clone();
    let pod_probe = ProbeConfig {
        kind: ProbeKind::Pods,
        every: config.pod_probe_every,
        measure_from: t0,
        until: end,
        fresh_bound_ms,
        expected: Arc::new(move || store.count(shardmetrics_sim::apiserver::resources::PODS)),
        clock: demo.clock().clone(),
    };
    // When `kubectl top`-style lists come at least as often as the pod probe would list, the
    // probe judges their answers instead of adding lists of its own (see `probe`).
    let top_rate = planned.get(&QueryKind::TopAllPods).copied().unwrap_or(0.0);
    let pods_ride_on_top = top_rate * config.pod_probe_every.as_secs_f64() >= 1.0;
    // Each kind's client runs on a thread and runtime of its own: reading a 45 MB list does
    // not hold up the HPA client, and neither waits behind the simulated kubelets and API
    // server on this process's runtime (what is measured is shardmetrics, not the harness).
    let mut generators = Vec::new();
    for (kind, rate) in &planned {
        let (kind, rate, target, universe, recorder) = (*kind, *rate, new_target()?, universe.clone(), recorder.clone());
        let judge = (kind == QueryKind::TopAllPods && pods_ride_on_top).then(|| probe::Judge::new(pod_probe.clone(), config.load.encoding, pod_log.clone()));
        generators.push(on_own_thread(&format!("client-{}", kind.name()), async move {
            queries::generate(kind, rate, load_start..end, target, universe, recorder, judge).await;
            Ok(())
        }));
    }
    let mut probes = vec![tokio::spawn(probe::run(
        ProbeConfig {
            kind: ProbeKind::Nodes,
            every: Duration::from_secs(1),
            measure_from: t0,
            until: end,
            fresh_bound_ms,
            expected: Arc::new(move || fleet.len()),
            clock: demo.clock().clone(),
        },
        direct.clone(),
        node_log.clone(),
    ))];
    if !pods_ride_on_top {
        probes.push(tokio::spawn(probe::run(pod_probe, direct.clone(), pod_log.clone())));
    }

    let progress = config.progress.then(|| {
        let bar = indicatif::ProgressBar::new((config.warmup + config.duration).as_secs().max(1));
        bar.set_style(
            indicatif::ProgressStyle::with_template("{elapsed_precise} [{bar:40}] {pos}/{len}s {msg}")
                .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
        );
        bar
    });

    // Warm-up.
    while Instant::now() < t0 {
        tokio::time::sleep(Duration::from_millis(250).min(t0.saturating_duration_since(Instant::now()))).await;
        if let Some(bar) = &progress {
            bar.set_position(load_start.elapsed().as_secs());
            bar.set_message("warm-up");
        }
    }

    // The window.
    let t0_unix_ms = demo.clock().now_ms();
    let mut procs = ProcTracker::default();
    procs.sample(&watched(demo), true);
    let machine_start = procstat::machine_sample();
    let resyncs_start = demo.cluster.resyncs();
    let mut metrics = MetricsTracker::default();
    metrics.read(&demo.children(), true).await;
    let mut todo: Vec<FaultSpec> = config.faults.clone();
    todo.sort_by_key(|f| f.at);
    todo.reverse();
    let mut injected: Vec<Pending> = Vec::new();
    let mut last_proc = Instant::now();
    let mut last_metrics = Instant::now();
    while Instant::now() < end {
        tokio::time::sleep(Duration::from_millis(200).min(end.saturating_duration_since(Instant::now()))).await;
        let now = Instant::now();
        while let Some(spec) = todo.last().filter(|f| t0 + f.at <= now).cloned() {
            todo.pop();
            let at_s = t0.elapsed().as_secs_f64();
            let (outcome, error, handle) = match faults::inject(&spec, demo, at_s).await {
                Ok(i) => (i.outcome, None, i.pending),
                Err(e) => {
                    tracing::warn!(fault = %spec, error = %e, "fault not injected");
                    (FaultOutcome { fault: spec.to_string(), at_s, ..Default::default() }, Some(e.to_string()), None)
                }
            };
            injected.push(Pending { spec, outcome, error, handle });
        }
        *frontends.write().unwrap_or_else(|p| p.into_inner()) = demo.frontends.clone();
        if last_proc.elapsed() >= Duration::from_secs(1) {
            last_proc = Instant::now();
            procs.sample(&watched(demo), false);
        }
        if last_metrics.elapsed() >= Duration::from_secs(5) {
            last_metrics = Instant::now();
            metrics.read(&demo.children(), false).await;
        }
        if let Some(bar) = &progress {
            bar.set_position(load_start.elapsed().as_secs().min(bar.length().unwrap_or(u64::MAX)));
            let last = node_log.lock().unwrap_or_else(|p| p.into_inner()).points.last().cloned();
            let mut msg = match last {
                Some(p) => format!("nodes fresh {}/{} age p99 {:.1}s", p.fresh, p.expected, p.age_p99_ms / 1000.0),
                None => String::new(),
            };
            if let Some(f) = injected.last() {
                msg += &format!("; injected {}", f.spec);
            }
            bar.set_message(msg);
        }
    }
    let measured_s = t0.elapsed().as_secs_f64();
    let t_end_unix_ms = t0_unix_ms + (measured_s * 1000.0) as i64;
    let alive = watched(demo);
    procs.sample(&alive, false);
    let machine_end = procstat::machine_sample();
    let resyncs = demo.cluster.resyncs().saturating_sub(resyncs_start);
    metrics.read(&demo.children(), false).await;
    let counted = scrape_counts(demo, t0_unix_ms, t_end_unix_ms, resolution);
    if let Some(bar) = &progress {
        bar.set_message("draining queries");
    }
    for g in generators {
        let _ = g.await;
    }
    for p in probes {
        let _ = p.await;
    }
    if let Some(bar) = progress {
        bar.finish_and_clear();
    }

    let processes = procs.stats(&alive, measured_s);
    let components = components(&processes, nodes);
    let machine = machine(machine_start.zip(machine_end), &processes, measured_s, resyncs);
    let (query_stats, query_latency) = recorder.finish(&planned, measured_s);

    // Scrapes and samples from the shards' /metrics.
    let scraper = metrics.increase("scraper-");
    let mut scraper_results = BTreeMap::new();
    for (k, v) in procstat::samples_of(&scraper, "shardmetrics_scraper_scrapes_total") {
        if let Some(result) = procstat::label_value(k, "result") {
            *scraper_results.entry(result.to_owned()).or_insert(0.0) += v;
        }
    }
    let samples = procstat::sum_of(&scraper, "shardmetrics_scraper_samples_total");
    let scrapes = Scrapes {
        planned_per_second: nodes as f64 / resolution.as_secs_f64(),
        kubelet_requests: counted.requests,
        achieved_per_second: counted.requests as f64 / measured_s,
        duplicate_scrapes: counted.duplicates,
        duplicate_pairs: counted
            .duplicate_pairs
            .iter()
            .map(|(node, a, b)| DuplicatePair { node: node.clone(), first_s: (a - t0_unix_ms) as f64 / 1000.0, second_s: (b - t0_unix_ms) as f64 / 1000.0 })
            .collect(),
        scrape_failures: scraper_results.iter().filter(|(r, _)| r.as_str() != "success").map(|(_, v)| v).sum(),
        scraper_results,
        samples,
        samples_per_second: samples / measured_s,
    };
    let frontend = metrics.increase("frontend-");
    let buckets = procstat::histogram_buckets(&frontend, "shardmetrics_frontend_scrape_to_servable_seconds");
    let scrape_to_servable_ms = stats::histogram_quantile(&buckets, 0.5).map(|p50| HistogramSummary {
        count: buckets.last().map_or(0.0, |b| b.1),
        p50: p50 * 1000.0,
        p99: stats::histogram_quantile(&buckets, 0.99).unwrap_or(0.0) * 1000.0,
        max_bucket_upper_bound: stats::histogram_max_bound(&buckets).map(|s| s * 1000.0),
    });

    let (node_log, pod_log) = {
        let n = std::mem::take(&mut *node_log.lock().unwrap_or_else(|p| p.into_inner()));
        let p = std::mem::take(&mut *pod_log.lock().unwrap_or_else(|p| p.into_inner()));
        (n, p)
    };
    let coverage = coverage(fresh_bound_ms, &node_log, &pod_log);
    let freshness = Freshness { node_age_ms: node_log.ages.percentiles(), pod_age_ms: pod_log.ages.percentiles(), scrape_to_servable_ms };

    // Faults: wait for their late measurements, then what the probe saw after each.
    let mut faults_out = Vec::new();
    let ats: Vec<f64> = injected.iter().map(|p| p.outcome.at_s).collect();
    for (i, p) in injected.into_iter().enumerate() {
        let mut outcome = p.outcome;
        if let Some(h) = p.handle {
            match tokio::time::timeout(Duration::from_secs(60), h).await {
                Ok(Ok(m)) => outcome.measured.extend(m),
                Ok(Err(e)) => {
                    tracing::warn!(error = %e, "fault measurement task failed");
                    outcome.measured.insert("pending_failed_count".into(), 1.0);
                }
                Err(_) => {
                    outcome.measured.insert("pending_timed_out_count".into(), 1.0);
                }
            }
        }
        let from_s = outcome.at_s;
        let to_s = ats.get(i + 1).copied().unwrap_or(measured_s).max(from_s);
        let in_window = |pt: &&probe::ProbePoint| pt.t_s >= from_s && pt.t_s < to_s;
        let dups =
            scrape_counts(demo, t0_unix_ms + (from_s * 1000.0) as i64, t0_unix_ms + (to_s * 1000.0) as i64, resolution).duplicates;
        let after = FaultWindow {
            from_s,
            to_s,
            worst_node_staleness_ms: node_log.points.iter().filter(in_window).map(|p| p.age_max_ms).fold(0.0, f64::max),
            fewest_nodes_served: node_log.points.iter().filter(in_window).map(|p| p.served).min(),
            fewest_nodes_fresh: node_log.points.iter().filter(in_window).map(|p| p.fresh).min(),
            fewest_pods_served: pod_log.points.iter().filter(in_window).map(|p| p.served).min(),
            duplicate_scrapes: dups,
        };
        faults_out.push(FaultReport { outcome, error: p.error, after });
    }

    // The scrapers' floor, which fetched beside the window.
    let floor = match floor_child {
        None => None,
        Some(Err(e)) => Some(Err(e)),
        Some(Ok(child)) => {
            let scraper_cpu_s: f64 = processes.iter().filter(|p| component(&p.name) == "scraper").map(|p| p.cpu_s).sum();
            let scraper_scrapes: f64 = scrapes.scraper_results.values().sum();
            Some(child.finish(scraper_cpu_s, scraper_scrapes).await)
        }
    };
    let (floor, floor_error) = match floor {
        None => (None, None),
        Some(Ok(f)) => (Some(f), None),
        Some(Err(e)) => {
            tracing::warn!(error = %e, "the floor did not run");
            (None, Some(e.to_string()))
        }
    };

    // The frontends' floor after the scrapers': decode the shards' streams only, encode the
    // window's answers only.
    let frontend_floor = match (&demo.system, config.floor_duration.is_zero()) {
        (crate::demo::System::Shardmetrics, false) => {
            let (frontend_cores, replicas) = components.get("frontend").map_or((0.0, 0), |c| (c.cpu_cores, c.processes));
            let window = frontend_floor::Window { measured_s, frontend_cores, replicas };
            Some(frontend_floor::run(demo, config.floor_duration, direct.clone(), universe.clone(), config.load.encoding, &query_stats, window).await)
        }
        _ => None,
    };

    let extras = if config.comparison_extras { Some(extras(config, demo, &direct, fresh_bound_ms).await) } else { None };

    Ok(Report {
        system: demo.system.name().to_owned(),
        cold_start_to_served_s: demo.cold_start_to_served_s,
        extras,
        setup: Setup {
            nodes,
            pods,
            containers_per_pod: config.demo.containers_per_pod,
            kubelet_servers: demo.kubelet_servers().len(),
            shards: config.demo.shards,
            frontends: config.demo.frontends,
            resolution_s: resolution.as_secs_f64(),
            warmup_s: config.warmup.as_secs_f64(),
            duration_s: config.duration.as_secs_f64(),
            query_path,
            query_encoding: config.load.encoding,
            planned_queries_per_second: planned.iter().map(|(k, v)| (k.name().to_owned(), *v)).collect(),
            faults: config.faults.iter().map(ToString::to_string).collect(),
            programs: match demo.system {
                crate::demo::System::Shardmetrics => &["scraper", "frontend", "floor"][..],
                crate::demo::System::MetricsServer { .. } => &["floor"][..],
            }
            .iter()
            .filter(|role| **role != "floor" || !config.floor_duration.is_zero())
            .map(|role| ((*role).to_owned(), config.demo.role_command(role)))
            .collect(),
        },
        startup_s,
        measured_s,
        scrapes,
        coverage,
        freshness,
        queries: query_stats,
        processes,
        components,
        machine,
        floor,
        floor_error,
        frontend_floor,
        faults: faults_out,
        timeline: Timeline { node_probes: node_log.points, pod_probes: pod_log.points, query_latency },
        chart: None,
    })
}

/// Full pod lists sent one at a time per encoding in [`extras`].
pub const FULL_LIST_REQUESTS: u64 = 10;
/// Time limit of the full pod lists of one encoding.
pub const FULL_LIST_LIMIT: Duration = Duration::from_secs(60);

/// The comparison's measurements after the window: metrics-server's own scrape figures, full
/// pod lists in JSON then protobuf, then one replica killed and the node list watched for a
/// shard Lease duration plus two resolutions and 5 s (at most 2 minutes).
async fn extras(config: &ScenarioConfig, demo: &mut RunningDemo, direct: &Target, fresh_bound_ms: f64) -> compare::Extras {
    let peer_scrapes = compare::peer_scrapes_or_none(demo).await;
    let full_list_json = compare::full_list_bench(direct, Encoding::Json, FULL_LIST_REQUESTS, FULL_LIST_LIMIT).await;
    let full_list_protobuf = compare::full_list_bench(direct, Encoding::Protobuf, FULL_LIST_REQUESTS, FULL_LIST_LIMIT).await;
    let window = (demo.lease_duration() + config.demo.metric_resolution * 2 + Duration::from_secs(5)).min(Duration::from_secs(120));
    let kill = compare::kill_phase(demo, direct, fresh_bound_ms, window).await;
    compare::Extras { full_list_json, full_list_protobuf, kill, peer_scrapes }
}

fn coverage(fresh_bound_ms: f64, nodes: &ProbeLog, pods: &ProbeLog) -> Coverage {
    let summarize = |log: &ProbeLog| -> (usize, usize, f64, f64, f64) {
        let n = log.points.len();
        let errors = log.points.iter().filter(|p| p.error.is_some()).count();
        let cov: Vec<f64> = log.points.iter().map(probe::ProbePoint::coverage_percent).collect();
        let min = cov.iter().copied().fold(if n == 0 { 0.0 } else { 100.0 }, f64::min);
        let mean = if n == 0 { 0.0 } else { cov.iter().sum::<f64>() / n as f64 };
        let full = if n == 0 { 0.0 } else { 100.0 * cov.iter().filter(|c| **c >= 100.0).count() as f64 / n as f64 };
        (n, errors, min, mean, full)
    };
    let (np, ne, nmin, nmean, nfull) = summarize(nodes);
    let (pp, pe, pmin, pmean, pfull) = summarize(pods);
    Coverage {
        fresh_bound_ms,
        node_probes: np,
        node_probe_errors: ne,
        nodes_min_percent: nmin,
        nodes_mean_percent: nmean,
        nodes_full_probes_percent: nfull,
        pod_probes: pp,
        pod_probe_errors: pe,
        pod_probes_skipped: pods.skipped,
        pods_min_percent: pmin,
        pods_mean_percent: pmean,
        pods_full_probes_percent: pfull,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn components_group_numbered_processes() {
        assert_eq!(component("scraper-12"), "scraper");
        assert_eq!(component("frontend-0"), "frontend");
        assert_eq!(component(SELF_NAME), SELF_NAME);
        let p = |name: &str, cpu_s: f64, peak: f64| ProcessStats {
            name: name.into(),
            pid: 1,
            cpu_s,
            cpu_cores: cpu_s / 10.0,
            rss_mib: peak,
            peak_rss_mib: peak,
            alive_at_end: true,
        };
        let c = components(&[p("scraper-0", 1.0, 10.0), p("scraper-1", 3.0, 30.0), p("frontend-0", 2.0, 100.0)], 2000);
        assert_eq!(c["scraper"].processes, 2);
        assert!((c["scraper"].cpu_cores - 0.4).abs() < 1e-9);
        assert!((c["scraper"].cpu_cores_per_1000_nodes - 0.2).abs() < 1e-9);
        assert_eq!(c["scraper"].max_peak_rss_mib, 30.0);
        assert_eq!(c["frontend"].peak_rss_mib_per_1000_nodes, 50.0);
    }
}
