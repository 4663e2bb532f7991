//! The JSON report of a run. Every number is measured during the run (nothing is estimated);
//! units are in the field names (`_ms`, `_s`, `_mib`, `_percent`, `_per_second`).

use std::collections::BTreeMap;
use std::path::PathBuf;

use serde::Serialize;

use super::probe::ProbePoint;
use super::queries::{Encoding, KindSecond, KindStats, Path};
use super::stats::Percentiles;
use crate::faults::FaultOutcome;

/// The report of one run.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    /// What served the Metrics API: `shardmetrics` or `metrics-server`.
    pub system: String,
    /// Seconds from starting the system's processes until every replica served every node.
    pub cold_start_to_served_s: f64,
    /// The comparison's measurements after the window (`run --compare`/`--system`).
    pub extras: Option<super::compare::Extras>,
    /// What ran.
    pub setup: Setup,
    /// From start to every frontend serving every node, seconds.
    pub startup_s: f64,
    /// Length of the measurement window (after the warm-up), seconds.
    pub measured_s: f64,
    /// Kubelet scrapes and samples during the measurement.
    pub scrapes: Scrapes,
    /// Share of nodes and pods served with fresh data.
    pub coverage: Coverage,
    /// Age of served data and scrape-to-servable latency.
    pub freshness: Freshness,
    /// Per query kind (`hpa_selector`, `top_all_pods`, `one_node`, `all_nodes`).
    pub queries: BTreeMap<String, KindStats>,
    /// CPU and memory of every process.
    pub processes: Vec<ProcessStats>,
    /// CPU and memory summed per component (`scraper`, `frontend`, `simulator+clients`).
    pub components: BTreeMap<String, ComponentStats>,
    /// How busy the whole machine was, and how much of it the harness took.
    pub machine: Machine,
    /// The bare-client floor of the scrapers' work; `None` when not run (`--floor-duration 0`).
    pub floor: Option<FloorReport>,
    /// Why the floor did not run, if it failed (the rest of the report stands).
    pub floor_error: Option<String>,
    /// The frontends' floor (decode only, encode only); `None` when the floor did not run or
    /// nothing but metrics-server served.
    pub frontend_floor: Option<FrontendFloorReport>,
    /// Each `--fault`, in order of injection.
    pub faults: Vec<FaultReport>,
    /// Over time, for the chart.
    pub timeline: Timeline,
    /// The SVG chart written next to the report.
    pub chart: Option<PathBuf>,
}

/// The scenario's parameters.
#[derive(Debug, Clone, Serialize)]
pub struct Setup {
    /// Simulated nodes.
    pub nodes: usize,
    /// Pods in the cluster at the start.
    pub pods: usize,
    /// Containers per pod.
    pub containers_per_pod: usize,
    /// Kubelet server children holding the simulated kubelets' listeners and connections (0:
    /// all in the runner's process).
    pub kubelet_servers: usize,
    /// Scraper shards.
    pub shards: usize,
    /// Frontend replicas.
    pub frontends: usize,
    /// Metric resolution, seconds.
    pub resolution_s: f64,
    /// Warm-up (load on, not measured), seconds.
    pub warmup_s: f64,
    /// Requested measurement length, seconds.
    pub duration_s: f64,
    /// How queries reached the frontends.
    pub query_path: Path,
    /// Encoding the queries asked for (the probe always lists JSON).
    pub query_encoding: Encoding,
    /// Planned queries per second per kind.
    pub planned_queries_per_second: BTreeMap<String, f64>,
    /// The `--fault` specs.
    pub faults: Vec<String>,
    /// What each role ran as (`scraper`, `frontend`, `floor`; a path, or the runner's hidden
    /// subcommand): the code and the allocator measured. Only `floor` for metrics-server; no
    /// `floor` when none ran (`--floor-duration 0s`).
    pub programs: BTreeMap<String, String>,
}

/// Busy share of the machine at or above which a run counts as saturated.
pub const SATURATED_PERCENT: f64 = 90.0;

/// The machine during the window: figures from a saturated machine measure the competition for
/// CPU as much as the system, and the report says so.
#[derive(Debug, Clone, Serialize, Default, PartialEq)]
pub struct Machine {
    /// Online CPUs.
    pub cores: usize,
    /// Cores busy on average over the window, every process on the machine (`/proc/stat`).
    pub busy_cores: f64,
    /// `busy_cores` as a share of `cores`, percent.
    pub busy_percent: f64,
    /// Cores the harness used: the simulated API server and kubelets, the query clients and
    /// the probes (the `simulator+clients` row), and the kubelet server children holding the
    /// kubelets' sockets when there are some (the `kubelets-<i>` rows).
    pub harness_cores: f64,
    /// `harness_cores` as a share of `busy_cores`, percent.
    pub harness_share_percent: f64,
    /// Busy cores outside every measured process (other programs on the machine).
    pub other_cores: f64,
    /// `busy_percent` reached [`SATURATED_PERCENT`]: latencies and CPU shares are those of a
    /// machine without headroom.
    pub saturated: bool,
    /// Times the simulator's kubelet sync fell behind the API server's change feed and re-read
    /// every node and pod, during the window (0 in steady state).
    pub cluster_resyncs: u64,
}

/// Two requests to one kubelet less than half a resolution apart.
#[derive(Debug, Clone, Serialize, Default, PartialEq)]
pub struct DuplicatePair {
    /// The node scraped twice.
    pub node: String,
    /// Arrival of the first request, seconds from the window's start.
    pub first_s: f64,
    /// Arrival of the second request, seconds from the window's start.
    pub second_s: f64,
}

/// Scrapes in the measurement window.
#[derive(Debug, Clone, Serialize, Default)]
pub struct Scrapes {
    /// Planned: nodes / resolution.
    pub planned_per_second: f64,
    /// `/metrics/resource` requests the simulated kubelets received in the window.
    pub kubelet_requests: u64,
    /// The same per second: achieved scrapes.
    pub achieved_per_second: f64,
    /// Pairs of requests to one kubelet closer than half a resolution (0 when every node has
    /// exactly one scraper).
    pub duplicate_scrapes: u64,
    /// The first few of those pairs, by time, to tell which event caused them.
    pub duplicate_pairs: Vec<DuplicatePair>,
    /// `shardmetrics_scraper_scrapes_total` increase in the window by `result`, summed over the
    /// shards (a shard killed mid-run counts up to its last reading, at most 5 s before).
    pub scraper_results: BTreeMap<String, f64>,
    /// Every result except `success`.
    pub scrape_failures: f64,
    /// `shardmetrics_scraper_samples_total` increase (node points plus containers shipped).
    pub samples: f64,
    /// The same per second.
    pub samples_per_second: f64,
}

/// Coverage: fresh items as a share of expected ones, per probe.
#[derive(Debug, Clone, Serialize, Default)]
pub struct Coverage {
    /// Items older than this (two resolutions + 1 s) are served but not fresh, ms.
    pub fresh_bound_ms: f64,
    /// Node probes (one a second).
    pub node_probes: usize,
    /// Node probes that failed.
    pub node_probe_errors: usize,
    /// Lowest node coverage of any probe, percent.
    pub nodes_min_percent: f64,
    /// Mean node coverage, percent.
    pub nodes_mean_percent: f64,
    /// Share of node probes at 100 %, percent.
    pub nodes_full_probes_percent: f64,
    /// Pod probes (every few seconds).
    pub pod_probes: usize,
    /// Pod probes that failed.
    pub pod_probe_errors: usize,
    /// Top-query answers the pod probe let pass unjudged because it was still judging the one
    /// before (when it rides on the top queries; see `scenario::probe::Judge`).
    pub pod_probes_skipped: usize,
    /// Lowest pod coverage of any probe, percent.
    pub pods_min_percent: f64,
    /// Mean pod coverage, percent.
    pub pods_mean_percent: f64,
    /// Share of pod probes at 100 %, percent.
    pub pods_full_probes_percent: f64,
}

/// Freshness.
#[derive(Debug, Clone, Serialize, Default)]
pub struct Freshness {
    /// Age of every node item the probe saw (probe time minus its second-truncated
    /// `timestamp`), ms; exact to 10 ms.
    pub node_age_ms: Percentiles,
    /// The same for pod items, ms.
    pub pod_age_ms: Percentiles,
    /// Frontends' `shardmetrics_frontend_scrape_to_servable_seconds` increase over the window,
    /// summed over the frontends; `None` when no frontend exports it or nothing was observed.
    pub scrape_to_servable_ms: Option<HistogramSummary>,
}

/// Quantiles of a Prometheus histogram.
#[derive(Debug, Clone, Serialize, Default)]
pub struct HistogramSummary {
    /// Observations.
    pub count: f64,
    /// Median, interpolated linearly within its bucket, ms.
    pub p50: f64,
    /// 99th percentile, interpolated within its bucket, ms.
    pub p99: f64,
    /// Not the exact maximum: the upper bound of the highest non-empty bucket, ms (`None` when
    /// observations fell past the last finite bucket).
    pub max_bucket_upper_bound: Option<f64>,
}

/// CPU and memory of one process over the window.
#[derive(Debug, Clone, Serialize)]
pub struct ProcessStats {
    /// `scraper-0`, `frontend-1`, `simulator+clients` (this process: API server, kubelets,
    /// query clients and probe), `kubelets-0` (a kubelet server child: kubelet listeners,
    /// connections and TLS).
    pub name: String,
    /// Its pid.
    pub pid: u32,
    /// CPU time (user + system) in the window, seconds.
    pub cpu_s: f64,
    /// Average CPU over the window, cores.
    pub cpu_cores: f64,
    /// Resident memory at the last reading, MiB.
    pub rss_mib: f64,
    /// Peak resident memory since the process started (VmHWM), MiB.
    pub peak_rss_mib: f64,
    /// Whether it was still running at the end (a killed shard is not).
    pub alive_at_end: bool,
}

/// CPU and memory of one component (all its processes).
#[derive(Debug, Clone, Serialize, Default)]
pub struct ComponentStats {
    /// Processes seen.
    pub processes: usize,
    /// CPU seconds in the window, all processes.
    pub cpu_s: f64,
    /// Average CPU, cores, all processes.
    pub cpu_cores: f64,
    /// `cpu_cores` per 1000 simulated nodes.
    pub cpu_cores_per_1000_nodes: f64,
    /// Largest peak RSS of one process, MiB.
    pub max_peak_rss_mib: f64,
    /// Sum of the processes' peak RSS, MiB.
    pub total_peak_rss_mib: f64,
    /// `total_peak_rss_mib` per 1000 simulated nodes.
    pub peak_rss_mib_per_1000_nodes: f64,
}

/// The floor: a bare client fetching the same kubelet payloads, beside the scrapers during the
/// window.
#[derive(Debug, Clone, Serialize, Default)]
pub struct FloorReport {
    /// Kubelets the floor fetched: one shard's share of the cluster (see `scenario::floor`).
    pub nodes: usize,
    /// How long it ran, seconds.
    pub duration_s: f64,
    /// Fetches that got a 200 and the full body.
    pub fetches: u64,
    /// Fetches that failed.
    pub errors: u64,
    /// Body bytes read.
    pub bytes: u64,
    /// CPU seconds of the floor process.
    pub cpu_s: f64,
    /// Its CPU per fetch, ms.
    pub cpu_ms_per_fetch: f64,
    /// The scrapers' CPU per scrape in the measurement window, ms.
    pub scraper_cpu_ms_per_scrape: f64,
    /// `scraper_cpu_ms_per_scrape / cpu_ms_per_fetch` (1 = the scrapers cost no more than
    /// fetching the bytes); `None` when either side measured no CPU (/proc counts in 10 ms
    /// ticks: too short a run).
    pub scraper_cpu_vs_floor: Option<f64>,
    /// Peak RSS of the floor process, MiB.
    pub peak_rss_mib: f64,
}

/// The frontends' floor beside their measured cost (see `scenario::frontend_floor`).
#[derive(Debug, Clone, Serialize, Default)]
pub struct FrontendFloorReport {
    /// The frontends' cores in the window, summed over the replicas.
    pub frontend_cores: f64,
    /// Frontend replicas: each decodes every shard's stream.
    pub replicas: usize,
    /// Decoding the shards' live streams and nothing else.
    pub decode: Option<DecodeFloor>,
    /// Encoding each query kind's answer as often as the window answered it.
    pub encode: Vec<EncodeFloor>,
    /// The encode floor's CPU over the window's length, cores.
    pub encode_cores: Option<f64>,
    /// The decode floor of every replica: `replicas x decode.cores`.
    pub decode_cores: Option<f64>,
    /// `frontend_cores / decode_cores`.
    pub frontend_vs_decode: Option<f64>,
    /// `frontend_cores / encode_cores`.
    pub frontend_vs_encode: Option<f64>,
    /// `frontend_cores / (decode_cores + encode_cores)`: 1 = the frontends cost no more than
    /// decoding their streams and encoding their answers once.
    pub frontend_vs_floor: Option<f64>,
    /// What could not be measured, and why.
    pub errors: Vec<String>,
}

/// The decode floor of one replica: one subscriber per shard, decoding live batches into wire
/// messages.
#[derive(Debug, Clone, Serialize, Default)]
pub struct DecodeFloor {
    /// How long it decoded, seconds.
    pub duration_s: f64,
    /// Shards subscribed to.
    pub shards: usize,
    /// Live batches decoded.
    pub batches: u64,
    /// Node scrapes in them.
    pub scrapes: u64,
    /// CPU of the decoding thread, seconds.
    pub cpu_s: f64,
    /// `cpu_s / duration_s`.
    pub cores: f64,
}

/// The encode floor of one query kind.
#[derive(Debug, Clone, Serialize, Default)]
pub struct EncodeFloor {
    /// The query kind (`hpa_selector`, ...).
    pub kind: String,
    /// The media type encoded.
    pub encoding: String,
    /// Times encoded: the window's answered queries of this kind.
    pub encodes: u64,
    /// Bytes of the answer the frontend served.
    pub served_bytes: usize,
    /// Bytes the floor's encoder wrote for it.
    pub floor_bytes: usize,
    /// CPU of the encoding thread, seconds.
    pub cpu_s: f64,
}

/// One fault: what the injection did and what the probe saw after it.
#[derive(Debug, Clone, Serialize)]
pub struct FaultReport {
    /// What `faults::inject` reported (targets and its own measurements, merged with the
    /// measurements that finished later).
    pub outcome: FaultOutcome,
    /// Why the injection failed, if it did (the run goes on).
    pub error: Option<String>,
    /// From the injection to the next fault or the end of the window.
    pub after: FaultWindow,
}

/// What the probe and the kubelets saw in the window after a fault.
#[derive(Debug, Clone, Serialize, Default)]
pub struct FaultWindow {
    /// Start, seconds into the measurement.
    pub from_s: f64,
    /// End, seconds into the measurement.
    pub to_s: f64,
    /// Oldest node item any node probe saw, ms.
    pub worst_node_staleness_ms: f64,
    /// Fewest nodes one probe served (any age).
    pub fewest_nodes_served: Option<usize>,
    /// Fewest fresh nodes one probe served.
    pub fewest_nodes_fresh: Option<usize>,
    /// Fewest pods one probe served (any age).
    pub fewest_pods_served: Option<usize>,
    /// Duplicate scrapes (two requests to one kubelet closer than half a resolution).
    pub duplicate_scrapes: u64,
}

/// Measurements over time.
#[derive(Debug, Clone, Serialize, Default)]
pub struct Timeline {
    /// Every node probe.
    pub node_probes: Vec<ProbePoint>,
    /// Every pod probe.
    pub pod_probes: Vec<ProbePoint>,
    /// Query latency per second of the window, per kind.
    pub query_latency: BTreeMap<String, Vec<KindSecond>>,
}
