//! The `shardmetrics-loadtest` command line: flags, validation (every problem reported at once,
//! exit code 64), and the subcommands that run the simulators standalone.
//!
//! Every flag can also be set through `SHARDMETRICS_<FLAG_IN_UPPER_SNAKE>`.
//!
//! Two hidden subcommands make this binary the scraper and frontend children of `demo` (`run`
//! starts the `shardmetrics-scraper` and `shardmetrics-frontend` programs instead, so that it
//! measures what ships, allocator included: `--scraper-program`, `--frontend-program`; and its
//! floor as `shardmetrics-floor`, the `floor` subcommand on the scraper's allocator):
//! `shardmetrics-loadtest scraper <scraper flags>` and `shardmetrics-loadtest frontend <frontend
//! flags>` run `shardmetrics_scraper::cli::main_with` / `shardmetrics_frontend::cli::main_with`,
//! the entry points of the real binaries ([`main_from_env`] dispatches them before clap). A third,
//! `shardmetrics-loadtest kubelet-server`, is a child of the simulated cluster when one process's
//! open-files limit cannot hold its kubelets: it serves a share of their listeners and
//! connections and forwards the requests to the cluster (`shardmetrics_sim::kubelet::servers`),
//! talking to it over its stdin and stdout.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use clap::{Args as ClapArgs, Parser, Subcommand, ValueEnum};

use shardmetrics_sim::apiserver::{ApiServer, ApiServerConfig, Context, DEFAULT_ADMIN};
use shardmetrics_sim::cluster::{self, Cluster, ClusterConfig, NOACCESS_USER};
use shardmetrics_sim::kubelet::{ContainerUsage, FleetConfig, KubeletFleet, fixed_tokens};
use shardmetrics_plumbing::duration::GoDuration;
use shardmetrics_plumbing::pki::Ca;

pub use shardmetrics_plumbing::process::{EXIT_USAGE, LogFormat, init_tracing, termination_signal as shutdown_signal};

use crate::faults::{FaultKind, FaultSpec};

/// `--help` heading of the simulated cluster's shape.
const HEADING_CLUSTER: &str = "Cluster";
/// `--help` heading of the shards and frontends under test and how they run.
const HEADING_PIPELINE: &str = "Pipeline";
/// `--help` heading of the API-server simulator's own settings.
const HEADING_APISERVER: &str = "API server";
/// `--help` heading of how long and at what rate a scenario measures.
const HEADING_MEASUREMENT: &str = "Measurement";
/// `--help` heading of the query load.
const HEADING_QUERIES: &str = "Queries";
/// `--help` heading of fault injection.
const HEADING_FAULTS: &str = "Faults";
/// `--help` heading of what is written (kubeconfigs, CAs, reports).
const HEADING_OUTPUT: &str = "Output";
/// `--help` heading of the comparison with metrics-server.
const HEADING_COMPARISON: &str = "Comparison with metrics-server";
/// `--help` heading of credentials.
const HEADING_CREDENTIALS: &str = "Credentials";
/// `--help` heading of logging.
const HEADING_LOGGING: &str = "Logging";

/// `shardmetrics-loadtest`: a simulated Kubernetes cluster on one machine.
#[derive(Debug, Parser)]
#[command(name = "shardmetrics-loadtest", version, about, propagate_version = true)]
pub struct Args {
    /// What to run.
    #[command(subcommand)]
    pub command: Command,
    /// Log format.
    #[arg(long, global = true, env = "SHARDMETRICS_LOG_FORMAT", value_enum, default_value = "text", help_heading = HEADING_LOGGING)]
    pub log_format: LogFormat,
    /// Log filter (tracing EnvFilter syntax, e.g. `info,shardmetrics_loadtest=debug`).
    #[arg(long, global = true, env = "SHARDMETRICS_LOG_LEVEL", default_value = "info", help_heading = HEADING_LOGGING)]
    pub log_level: String,
}

/// The subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the API-server simulator (with a simulated cluster and its kubelets) until Ctrl-C.
    Apiserver(ApiserverArgs),
    /// Run standalone kubelets with synthetic pods until Ctrl-C (no API server).
    Kubelets(KubeletsArgs),
    /// Run the whole pipeline: simulated cluster, scraper shards and frontends (child
    /// processes), a kubeconfig for kubectl; until Ctrl-C.
    Demo(DemoArgs),
    /// Run a load-test scenario against the demo's pipeline and write a report.
    Run(RunArgs),
    /// Fetch every kubelet's payload once per resolution and discard it (the floor `run`
    /// compares the scrapers with; started by `run`).
    #[command(hide = true)]
    Floor(FloorArgs),
}

/// Query encoding of `run`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum QueryEncoding {
    /// `application/json`.
    Json,
    /// `application/vnd.kubernetes.protobuf`.
    Protobuf,
}

/// What `run` measures.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum SystemArg {
    /// shardmetrics' scraper shards and frontends.
    Shardmetrics,
    /// metrics-server v0.8.0 (built from the pinned upstream module; needs Go).
    MetricsServer,
}

/// What `run --compare` runs beside shardmetrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum CompareWith {
    /// metrics-server v0.8.0.
    MetricsServer,
}

/// Flags of `run`.
#[derive(Debug, Clone, ClapArgs)]
pub struct RunArgs {
    /// The pipeline (same flags as `demo`).
    #[command(flatten)]
    pub demo: DemoArgs,
    /// Containers per pod.
    #[arg(long, env = "SHARDMETRICS_CONTAINERS_PER_POD", default_value_t = 1, help_heading = HEADING_CLUSTER)]
    pub containers_per_pod: usize,
    /// How long to measure once every node is served (after the warm-up).
    #[arg(long, env = "SHARDMETRICS_DURATION", default_value = "60s", help_heading = HEADING_MEASUREMENT)]
    pub duration: GoDuration,
    /// Query load on but not measured before the measurement.
    #[arg(long, env = "SHARDMETRICS_WARMUP", default_value = "0s", help_heading = HEADING_MEASUREMENT)]
    pub warmup: GoDuration,
    /// HPA-style queries per second (one namespace's pods with an `app=` label selector).
    #[arg(long, env = "SHARDMETRICS_HPA_QUERIES_PER_SEC", default_value_t = 20.0, help_heading = HEADING_QUERIES)]
    pub hpa_queries_per_sec: f64,
    /// `kubectl top pods -A`-style queries per second (every pod in the cluster).
    #[arg(long, env = "SHARDMETRICS_TOP_QUERIES_PER_SEC", default_value_t = 0.1, help_heading = HEADING_QUERIES)]
    pub top_queries_per_sec: f64,
    /// Node queries per second (alternately one node and every node).
    #[arg(long, env = "SHARDMETRICS_NODE_QUERIES_PER_SEC", default_value_t = 1.0, help_heading = HEADING_QUERIES)]
    pub node_queries_per_sec: f64,
    /// Response encoding the queries ask for.
    #[arg(long, env = "SHARDMETRICS_QUERY_ENCODING", value_enum, default_value = "json", help_heading = HEADING_QUERIES)]
    pub query_encoding: QueryEncoding,
    /// Send queries through the simulated aggregation proxy instead of straight to the
    /// frontends.
    #[arg(long, env = "SHARDMETRICS_VIA_PROXY", help_heading = HEADING_QUERIES)]
    pub via_proxy: bool,
    /// A fault to inject, `KIND[=VALUE][@AT]` (e.g. `kill-shard@30s`); repeatable.
    #[arg(long = "fault", env = "SHARDMETRICS_FAULT", value_delimiter = ',', value_name = "KIND[=VALUE][@AT]", help_heading = HEADING_FAULTS)]
    pub faults: Vec<FaultSpec>,
    /// Old spelling of `--fault kill-shard@AT` (a Go duration into the measurement).
    #[arg(long, env = "SHARDMETRICS_KILL_SHARD_AT", hide = true, value_name = "AT", help_heading = HEADING_FAULTS)]
    pub kill_shard_at: Option<GoDuration>,
    /// How long the frontends' floor runs after the measurement (default min(duration, 30s));
    /// 0s: no floors. The scrapers' floor fetches for the whole measurement, beside it.
    #[arg(long, env = "SHARDMETRICS_FLOOR_DURATION", help_heading = HEADING_MEASUREMENT)]
    pub floor_duration: Option<GoDuration>,
    /// Where to write the JSON report (the chart goes next to it, same name, `.svg`).
    #[arg(long, env = "SHARDMETRICS_REPORT", default_value = "loadtest-report.json", help_heading = HEADING_OUTPUT)]
    pub report: PathBuf,
    /// Run shardmetrics, then this system on an identical simulated cluster with the same query
    /// mix, and report both side by side (`comparison.<system>` in the JSON report; each run's
    /// own report goes next to it as `<report>.<system>.json`). The comparison's measurements
    /// follow each window: full pod lists in JSON and protobuf, then one replica SIGKILLed.
    #[arg(long, env = "SHARDMETRICS_COMPARE", value_enum, conflicts_with = "system", help_heading = HEADING_COMPARISON)]
    pub compare: Option<CompareWith>,
    /// Measure this system alone, with the comparison's measurements (default without
    /// `--system`/`--compare`: shardmetrics, the plain report).
    #[arg(long, env = "SHARDMETRICS_SYSTEM", value_enum, help_heading = HEADING_COMPARISON)]
    pub system: Option<SystemArg>,
    /// The shards' program: the `shardmetrics-scraper` that ships (its own allocator among the
    /// rest), started with its own flags [default: the one beside this executable, as `cargo
    /// build --release --workspace` leaves it].
    #[arg(long, env = "SHARDMETRICS_SCRAPER_PROGRAM", value_name = "PATH", help_heading = HEADING_PIPELINE)]
    pub scraper_program: Option<PathBuf>,
    /// The frontends' program, as `--scraper-program` (`shardmetrics-frontend`).
    #[arg(long, env = "SHARDMETRICS_FRONTEND_PROGRAM", value_name = "PATH", help_heading = HEADING_PIPELINE)]
    pub frontend_program: Option<PathBuf>,
    /// The scrapers' floor: `shardmetrics-floor`, on the scraper's allocator [default: the one
    /// beside this executable, built with it]; needed only when a floor runs.
    #[arg(long, env = "SHARDMETRICS_FLOOR_PROGRAM", value_name = "PATH", help_heading = HEADING_MEASUREMENT)]
    pub floor_program: Option<PathBuf>,
    /// metrics-server replicas (2 is upstream's high-availability shape: each replica scrapes
    /// every node; queries are spread over them round-robin).
    #[arg(long, env = "SHARDMETRICS_METRICS_SERVER_REPLICAS", default_value_t = 1, help_heading = HEADING_COMPARISON)]
    pub metrics_server_replicas: usize,
}

impl RunArgs {
    /// The systems the run measures, in order; empty for a plain shardmetrics run.
    pub fn systems(&self) -> Vec<crate::demo::System> {
        use crate::demo::System;
        let ms = System::MetricsServer { replicas: self.metrics_server_replicas };
        match (self.compare, self.system) {
            (Some(CompareWith::MetricsServer), _) => vec![System::Shardmetrics, ms],
            (None, Some(SystemArg::Shardmetrics)) => vec![System::Shardmetrics],
            (None, Some(SystemArg::MetricsServer)) => vec![ms],
            (None, None) => Vec::new(),
        }
    }
}

impl RunArgs {
    /// The `--fault` specs, plus `--kill-shard-at` as a `kill-shard` spec.
    pub fn fault_specs(&self) -> Vec<FaultSpec> {
        let old = self.kill_shard_at.map(|at| FaultSpec { kind: FaultKind::KillShard, at: at.0 });
        self.faults.iter().cloned().chain(old).collect()
    }
}

/// Flags of the hidden `floor` subcommand (started by `run`; see `scenario::floor`).
#[derive(Debug, Clone, ClapArgs)]
pub struct FloorArgs {
    /// File of `NODE HOST:PORT` lines.
    #[arg(long, env = "SHARDMETRICS_TARGETS_FILE", help_heading = HEADING_CREDENTIALS)]
    pub targets_file: PathBuf,
    /// PEM file of the kubelets' CA.
    #[arg(long, env = "SHARDMETRICS_CA_FILE", help_heading = HEADING_CREDENTIALS)]
    pub ca_file: PathBuf,
    /// File with the bearer token.
    #[arg(long, env = "SHARDMETRICS_TOKEN_FILE", help_heading = HEADING_CREDENTIALS)]
    pub token_file: PathBuf,
    /// Fetch interval per node.
    #[arg(long, env = "SHARDMETRICS_METRIC_RESOLUTION", default_value = "15s", help_heading = HEADING_MEASUREMENT)]
    pub metric_resolution: GoDuration,
    /// How long to fetch (after one connection round).
    #[arg(long, env = "SHARDMETRICS_DURATION", default_value = "30s", help_heading = HEADING_MEASUREMENT)]
    pub duration: GoDuration,
    /// When the timed part starts, Unix ms (the measurement window's start); at once after the
    /// connection round when unset or past.
    #[arg(long, env = "SHARDMETRICS_START_AT_UNIX_MS", help_heading = HEADING_MEASUREMENT)]
    pub start_at_unix_ms: Option<i64>,
}

/// The control plane a demo runs on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum ControlPlaneMode {
    /// The embedded API-server simulator (and its aggregation proxy).
    Sim,
    /// The real upstream control plane on loopback.
    Real,
}

/// Flags of `demo`.
#[derive(Debug, Clone, ClapArgs)]
pub struct DemoArgs {
    /// Simulated nodes (each with its own kubelet).
    #[arg(long, env = "SHARDMETRICS_NODES", default_value_t = 20, help_heading = HEADING_CLUSTER)]
    pub nodes: usize,
    /// Pods per node.
    #[arg(long, env = "SHARDMETRICS_PODS_PER_NODE", default_value_t = 10, help_heading = HEADING_CLUSTER)]
    pub pods_per_node: usize,
    /// Scraper shards.
    #[arg(long, env = "SHARDMETRICS_SHARDS", default_value_t = 2, help_heading = HEADING_PIPELINE)]
    pub shards: usize,
    /// Frontend replicas.
    #[arg(long, env = "SHARDMETRICS_FRONTENDS", default_value_t = 2, help_heading = HEADING_PIPELINE)]
    pub frontends: usize,
    /// Scrape interval (and rate window), at least 5s.
    #[arg(long, env = "SHARDMETRICS_METRIC_RESOLUTION", default_value = "15s", help_heading = HEADING_PIPELINE)]
    pub metric_resolution: GoDuration,
    /// Where to write the kubeconfig (contexts demo-admin and demo-noaccess).
    #[arg(long, env = "SHARDMETRICS_KUBECONFIG", default_value = "demo.kubeconfig", help_heading = HEADING_OUTPUT)]
    pub kubeconfig: PathBuf,
    /// Scrapers skip kubelet certificate verification (so kubelets added by hand with their own
    /// certificates can be scraped).
    #[arg(long, env = "SHARDMETRICS_KUBELET_INSECURE_TLS", help_heading = HEADING_PIPELINE)]
    pub kubelet_insecure_tls: bool,
    /// Which control plane: `sim` (the embedded API-server simulator, needs only Rust) or `real`
    /// (etcd, kube-apiserver, kube-controller-manager and kube-scheduler built from the pinned
    /// upstream sources on first use; needs Go).
    #[arg(long, env = "SHARDMETRICS_CONTROL_PLANE", value_enum, default_value_t = ControlPlaneMode::Sim, help_heading = HEADING_PIPELINE)]
    pub control_plane: ControlPlaneMode,
    /// Serve the simulated kubelets' listeners and connections from at least this many child
    /// processes (`kubelet-server`), which forward the requests to the simulator. 0: only as
    /// many as needed, none while this process's open-files limit holds every kubelet with a
    /// scraper's and a floor's connection.
    #[arg(long, env = "SHARDMETRICS_KUBELET_SERVERS", default_value_t = 0, help_heading = HEADING_CLUSTER)]
    pub kubelet_servers: usize,
}

/// Flags of `apiserver`.
#[derive(Debug, Clone, ClapArgs)]
pub struct ApiserverArgs {
    /// Address to listen on (port 0 picks a free port).
    #[arg(long, env = "SHARDMETRICS_BIND_ADDRESS", default_value = "127.0.0.1:0", help_heading = HEADING_APISERVER)]
    pub bind_address: SocketAddr,
    /// Nodes to create, each with its own kubelet.
    #[arg(long, env = "SHARDMETRICS_NODES", default_value_t = 3, help_heading = HEADING_CLUSTER)]
    pub nodes: usize,
    /// Pods per node.
    #[arg(long, env = "SHARDMETRICS_PODS_PER_NODE", default_value_t = 5, help_heading = HEADING_CLUSTER)]
    pub pods_per_node: usize,
    /// Containers per pod.
    #[arg(long, env = "SHARDMETRICS_CONTAINERS_PER_POD", default_value_t = 1, help_heading = HEADING_CLUSTER)]
    pub containers_per_pod: usize,
    /// Where to write the kubeconfig (contexts sim-admin, sim-noaccess, sim-scraper,
    /// sim-frontend).
    #[arg(long, env = "SHARDMETRICS_KUBECONFIG", default_value = "sim.kubeconfig", help_heading = HEADING_OUTPUT)]
    pub kubeconfig: PathBuf,
    /// Directory to write the CAs into (`ca.crt`, `front-proxy-ca.crt`); none if unset.
    #[arg(long, env = "SHARDMETRICS_PKI_DIR", help_heading = HEADING_OUTPUT)]
    pub pki_dir: Option<PathBuf>,
    /// A frontend replica (`host:port`) to proxy `metrics.k8s.io` to; repeatable.
    #[arg(long = "aggregation-backend", env = "SHARDMETRICS_AGGREGATION_BACKEND", value_delimiter = ',', help_heading = HEADING_APISERVER)]
    pub aggregation_backends: Vec<SocketAddr>,
}

/// Flags of `kubelets`.
#[derive(Debug, Clone, ClapArgs)]
pub struct KubeletsArgs {
    /// How many kubelets.
    #[arg(long, env = "SHARDMETRICS_COUNT", default_value_t = 10, help_heading = HEADING_CLUSTER)]
    pub count: usize,
    /// Synthetic pods per kubelet.
    #[arg(long, env = "SHARDMETRICS_PODS_PER_NODE", default_value_t = 10, help_heading = HEADING_CLUSTER)]
    pub pods_per_node: usize,
    /// Containers per pod.
    #[arg(long, env = "SHARDMETRICS_CONTAINERS_PER_POD", default_value_t = 1, help_heading = HEADING_CLUSTER)]
    pub containers_per_pod: usize,
    /// Node name prefix (names are the prefix plus a zero-padded index).
    #[arg(long, env = "SHARDMETRICS_NODE_PREFIX", default_value = "standalone-node-", help_heading = HEADING_CLUSTER)]
    pub node_prefix: String,
    /// A bearer token the kubelets accept; repeatable.
    #[arg(long = "token", env = "SHARDMETRICS_TOKEN", value_delimiter = ',', required = true, help_heading = HEADING_CREDENTIALS)]
    pub tokens: Vec<String>,
    /// Directory to write the kubelets' CA into (`kubelet-ca.crt`).
    #[arg(long, env = "SHARDMETRICS_PKI_DIR", help_heading = HEADING_OUTPUT)]
    pub pki_dir: Option<PathBuf>,
}

/// Checks flags against each other (values of the wrong type were refused by clap while
/// parsing); returns every problem.
pub fn validate(args: &Args) -> Vec<String> {
    let mut problems = Vec::new();
    if let Err(e) = shardmetrics_plumbing::process::check_log_level(&args.log_level) {
        problems.push(format!("--log-level {:?}: {e}", args.log_level));
    }
    match &args.command {
        Command::Apiserver(a) => {
            if a.nodes > 20_000 {
                problems.push(format!("--nodes {} is more than 20000", a.nodes));
            }
            if a.pods_per_node > 1_000 {
                problems.push(format!("--pods-per-node {} is more than 1000", a.pods_per_node));
            }
            if a.containers_per_pod == 0 || a.containers_per_pod > 50 {
                problems.push(format!("--containers-per-pod {} must be between 1 and 50", a.containers_per_pod));
            }
        }
        Command::Demo(d) => validate_demo(d, &mut problems),
        Command::Run(r) => {
            validate_demo(&r.demo, &mut problems);
            if r.demo.control_plane == ControlPlaneMode::Real {
                problems.push("--control-plane real: `run` measures on the simulated control plane (it carries the 5000-node scenarios); use `demo --control-plane real`".into());
            }
            let duration = r.duration.0;
            if duration.is_zero() {
                problems.push("--duration must be positive".into());
            }
            if !(1..=50).contains(&r.containers_per_pod) {
                problems.push(format!("--containers-per-pod {} must be between 1 and 50", r.containers_per_pod));
            }
            for (flag, v) in [
                ("--hpa-queries-per-sec", r.hpa_queries_per_sec),
                ("--top-queries-per-sec", r.top_queries_per_sec),
                ("--node-queries-per-sec", r.node_queries_per_sec),
            ] {
                if !v.is_finite() || !(0.0..=10_000.0).contains(&v) {
                    problems.push(format!("{flag} {v} must be between 0 and 10000"));
                }
            }
            let systems = r.systems();
            if !(1..=4).contains(&r.metrics_server_replicas) {
                problems.push(format!("--metrics-server-replicas {} must be between 1 and 4", r.metrics_server_replicas));
            }
            if systems.iter().any(|s| matches!(s, crate::demo::System::MetricsServer { .. })) && *r.demo.metric_resolution < Duration::from_secs(10) {
                problems.push(format!("--metric-resolution {}: metrics-server requires at least 10s", r.demo.metric_resolution));
            }
            if !systems.is_empty() && (!r.faults.is_empty() || r.kill_shard_at.is_some()) {
                problems.push("--fault does not combine with --compare/--system (the comparison kills one replica after each window itself)".into());
            }
            for f in r.fault_specs() {
                if f.at >= duration {
                    problems.push(format!("--fault {f}: not within --duration {}", r.duration));
                }
            }
        }
        Command::Floor(f) => {
            if f.metric_resolution.is_zero() {
                problems.push("--metric-resolution must be positive".into());
            }
        }
        Command::Kubelets(k) => {
            if k.count == 0 || k.count > 20_000 {
                problems.push(format!("--count {} must be between 1 and 20000", k.count));
            }
            if k.containers_per_pod == 0 || k.containers_per_pod > 50 {
                problems.push(format!("--containers-per-pod {} must be between 1 and 50", k.containers_per_pod));
            }
            if k.tokens.iter().any(|t| t.trim().is_empty()) {
                problems.push("--token must not be empty".into());
            }
        }
    }
    problems
}

/// The checks of the demo's flags (shared by `demo` and `run`), appended to `problems`.
fn validate_demo(d: &DemoArgs, problems: &mut Vec<String>) {
    if d.nodes == 0 || d.nodes > 20_000 {
        problems.push(format!("--nodes {} must be between 1 and 20000", d.nodes));
    }
    if d.pods_per_node > 1_000 {
        problems.push(format!("--pods-per-node {} is more than 1000", d.pods_per_node));
    }
    if d.shards == 0 || d.shards > 64 {
        problems.push(format!("--shards {} must be between 1 and 64", d.shards));
    }
    if d.frontends == 0 || d.frontends > 32 {
        problems.push(format!("--frontends {} must be between 1 and 32", d.frontends));
    }
    if *d.metric_resolution < Duration::from_secs(5) {
        problems.push(format!("--metric-resolution {} is below the minimum of 5s", d.metric_resolution));
    }
    if d.kubelet_servers > cluster::MAX_KUBELET_SERVERS {
        problems.push(format!("--kubelet-servers {} is more than {}", d.kubelet_servers, cluster::MAX_KUBELET_SERVERS));
    }
    if d.kubelet_servers > 0 && d.control_plane == ControlPlaneMode::Real {
        problems.push("--kubelet-servers: the real control plane's node agent serves its kubelets in one process".into());
    }
}

/// What `main` calls: the hidden `scraper` / `frontend` children first, else [`main_with`].
/// Each builds its own runtime: a scraper child the one its `--worker-threads` asks for (as the
/// `shardmetrics-scraper` binary does), the floor child a current-thread one (as a shard's
/// default), the rest a multi-threaded one (as `#[tokio::main]`).
pub fn main_from_env() -> ExitCode {
    let mut argv = std::env::args_os();
    let _program = argv.next();
    let role = argv.next();
    match role.as_ref().and_then(|r| r.to_str()) {
        Some("scraper") => {
            match shardmetrics_plumbing::process::parse_args(std::iter::once("shardmetrics-scraper".into()).chain(argv)) {
                Ok(args) => shardmetrics_scraper::cli::run_process(args),
                Err(code) => code,
            }
        }
        Some("kubelet-server") => match argv.next() {
            None => run_kubelet_server(),
            Some(extra) => {
                eprintln!("error: kubelet-server takes no arguments (got {extra:?}); it is started by the simulated cluster");
                ExitCode::from(EXIT_USAGE)
            }
        },
        Some("frontend") => {
            match shardmetrics_plumbing::process::parse_args(std::iter::once("shardmetrics-frontend".into()).chain(argv)) {
                Ok(args) => block_on(shardmetrics_frontend::cli::main_with(args)),
                Err(code) => code,
            }
        }
        // The floor fetches on one thread, as a shard scrapes (`--worker-threads` 1): a
        // multi-threaded runtime's cross-thread wake-ups would make the floor dearer than a bare
        // fetch needs to be and flatter the scrapers' ratio to it.
        Some("floor") => floor_main(argv),
        _ => match shardmetrics_plumbing::process::parse_args(std::env::args_os()) {
            Ok(args) => block_on(main_with(args)),
            Err(code) => code,
        },
    }
}

/// The floor child, `shardmetrics-loadtest floor <flags>` or the `shardmetrics-floor` program
/// with the same `flags`, on a current-thread runtime.
pub fn floor_main(flags: impl Iterator<Item = std::ffi::OsString>) -> ExitCode {
    match shardmetrics_plumbing::process::parse_args(["shardmetrics-loadtest".into(), "floor".into()].into_iter().chain(flags)) {
        Ok(args) => block_on_one_thread(main_with(args)),
        Err(code) => code,
    }
}

/// The `kubelet-server` child: [`shardmetrics_sim::kubelet::servers::serve`] on stdin and
/// stdout until stdin closes (its parent closed it or died) or its connection to the parent
/// ends; logs go to stderr.
fn run_kubelet_server() -> ExitCode {
    init_tracing(LogFormat::Text, "info");
    let rt = match shardmetrics_plumbing::process::runtime(None) {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("shardmetrics-loadtest kubelet-server: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = rt.block_on(async {
        // Both are pipes from the parent: read and written without blocking a thread.
        use std::os::fd::AsFd;
        use tokio::net::unix::pipe;
        let stdin = std::io::stdin().as_fd().try_clone_to_owned().and_then(|fd| pipe::Receiver::from_file(std::fs::File::from(fd)));
        let stdout = std::io::stdout().as_fd().try_clone_to_owned().and_then(|fd| pipe::Sender::from_file(std::fs::File::from(fd)));
        match (stdin, stdout) {
            (Ok(stdin), Ok(stdout)) => shardmetrics_sim::kubelet::servers::serve(stdin, stdout).await.map_err(|e| e.to_string()),
            (Err(e), _) | (_, Err(e)) => Err(format!("stdin and stdout must be pipes from the simulated cluster: {e}")),
        }
    });
    rt.shutdown_timeout(Duration::from_secs(1));
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!(error = %e, "kubelet server stopped");
            ExitCode::FAILURE
        }
    }
}

/// Runs `main` on a multi-threaded runtime (one worker per core), as `#[tokio::main]` would.
fn block_on(main: impl std::future::Future<Output = ExitCode>) -> ExitCode {
    shardmetrics_plumbing::process::block_on("shardmetrics-loadtest", None, main)
}

/// [`block_on`] on a current-thread runtime (the floor child).
fn block_on_one_thread(main: impl std::future::Future<Output = ExitCode>) -> ExitCode {
    shardmetrics_plumbing::process::block_on("shardmetrics-loadtest", Some(1), main)
}

/// Runs the parsed command line.
pub async fn main_with(args: Args) -> ExitCode {
    let problems = validate(&args);
    if !problems.is_empty() {
        for p in &problems {
            eprintln!("error: {p}");
        }
        return ExitCode::from(EXIT_USAGE);
    }
    init_tracing(args.log_format, &args.log_level);
    let result = match args.command {
        Command::Apiserver(a) => run_apiserver(a).await,
        Command::Kubelets(k) => run_kubelets(k).await,
        Command::Demo(d) => run_demo(d).await,
        Command::Run(r) => run_scenario(r).await,
        Command::Floor(f) => run_floor(f).await,
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run_apiserver(a: ApiserverArgs) -> anyhow::Result<()> {
    let api = ApiServer::start(ApiServerConfig { bind: a.bind_address, policy: cluster::standard_policy(), ..Default::default() }).await?;
    let kubelet_servers = cluster::KubeletServers { command: Some(kubelet_server_command(None)?), ..Default::default() };
    let config = ClusterConfig { nodes: a.nodes, pods_per_node: a.pods_per_node, containers_per_pod: a.containers_per_pod, kubelet_servers, ..Default::default() };
    let sim = Cluster::start(&api, config).await?;
    if !a.aggregation_backends.is_empty() {
        api.set_aggregation_backends(a.aggregation_backends.clone());
    }
    if let Some(dir) = &a.pki_dir {
        api.ca().write_pem(dir, "ca")?;
        api.front_proxy_ca().write_pem(dir, "front-proxy-ca")?;
    }
    let contexts: Vec<Context> = vec![
        api.token_context("sim-admin", DEFAULT_ADMIN)?,
        api.token_context("sim-noaccess", NOACCESS_USER)?,
        api.token_context("sim-scraper", cluster::SCRAPER_USER)?,
        api.token_context("sim-frontend", cluster::FRONTEND_USER)?,
    ];
    api.write_kubeconfig(&a.kubeconfig, &contexts)?;
    println!(
        "apiserver ready at {} with {} nodes ({} kubelets); kubeconfig: {}",
        api.url(),
        a.nodes,
        sim.fleet().len(),
        a.kubeconfig.display()
    );
    println!("try: kubectl --kubeconfig {} get nodes", a.kubeconfig.display());
    shutdown_signal().await;
    drop(sim);
    api.shutdown().await;
    Ok(())
}

/// This executable as a kubelet server child, logging to `log_dir` (stderr when `None`).
fn kubelet_server_command(log_dir: Option<PathBuf>) -> anyhow::Result<shardmetrics_sim::kubelet::servers::KubeletServerCommand> {
    Ok(shardmetrics_sim::kubelet::servers::KubeletServerCommand { program: std::env::current_exe()?, args: vec!["kubelet-server".into()], log_dir })
}

fn demo_config(d: &DemoArgs) -> anyhow::Result<crate::demo::DemoConfig> {
    let exe = std::env::current_exe()?;
    let mut config = crate::demo::DemoConfig::new(exe);
    config.nodes = d.nodes;
    config.pods_per_node = d.pods_per_node;
    config.shards = d.shards;
    config.frontends = d.frontends;
    config.metric_resolution = d.metric_resolution.0;
    config.kubeconfig = d.kubeconfig.clone();
    config.kubelet_insecure_tls = d.kubelet_insecure_tls;
    config.kubelet_servers = d.kubelet_servers;
    config.ready_timeout = config.metric_resolution * 4 + Duration::from_secs(60) + Duration::from_millis(d.nodes as u64 * 20);
    Ok(config)
}

/// `run`'s program for a role: the flag's path, else `name` beside the runner `exe`. It must
/// exist: a run measures the programs that ship (and the floor on their allocator), never
/// silently this runner's subcommand (the same code linked with another allocator).
fn sibling_program(exe: &std::path::Path, flag: Option<&std::path::Path>, name: &str, flag_name: &str) -> anyhow::Result<PathBuf> {
    let path = match flag {
        Some(p) => p.to_owned(),
        None => exe.with_file_name(name),
    };
    if !path.is_file() {
        anyhow::bail!(
            "{}: no such program; `run` starts {name} from beside this executable: build it there (`cargo build --release -p shardmetrics-loadtest -p shardmetrics-scraper -p shardmetrics-frontend`) or name it with {flag_name}",
            path.display()
        );
    }
    Ok(path)
}

async fn run_scenario(r: RunArgs) -> anyhow::Result<()> {
    let mut demo = demo_config(&r.demo)?;
    demo.child_log_level = "warn".into();
    let systems = r.systems();
    if systems.is_empty() || systems.contains(&crate::demo::System::Shardmetrics) {
        demo.scraper_program = Some(sibling_program(&demo.exe, r.scraper_program.as_deref(), "shardmetrics-scraper", "--scraper-program")?);
        demo.frontend_program = Some(sibling_program(&demo.exe, r.frontend_program.as_deref(), "shardmetrics-frontend", "--frontend-program")?);
    }
    demo.containers_per_pod = r.containers_per_pod;
    let mut config = crate::scenario::ScenarioConfig::new(demo, r.duration.0, r.report.clone());
    config.warmup = r.warmup.0;
    match r.floor_duration {
        Some(f) => config.floor_duration = f.0,
        // A comparison measures no floor unless asked to.
        None if !systems.is_empty() => config.floor_duration = Duration::ZERO,
        None => {}
    }
    // Needed only where a floor runs.
    if !config.floor_duration.is_zero() {
        config.demo.floor_program = Some(sibling_program(&config.demo.exe, r.floor_program.as_deref(), "shardmetrics-floor", "--floor-program")?);
    }
    config.load = crate::scenario::LoadConfig {
        hpa_per_second: r.hpa_queries_per_sec,
        top_per_second: r.top_queries_per_sec,
        node_per_second: r.node_queries_per_sec,
        encoding: match r.query_encoding {
            QueryEncoding::Json => crate::scenario::queries::Encoding::Json,
            QueryEncoding::Protobuf => crate::scenario::queries::Encoding::Protobuf,
        },
        via_proxy: r.via_proxy,
    };
    config.faults = r.fault_specs();
    config.progress = true;
    if !systems.is_empty() {
        return run_comparison(&r, config, &systems).await;
    }
    eprintln!(
        "starting: {} nodes x {} pods x {} containers, {} scraper shards, {} frontends, resolution {} ...",
        r.demo.nodes, r.demo.pods_per_node, r.containers_per_pod, r.demo.shards, r.demo.frontends, r.demo.metric_resolution
    );
    let chart = config.chart_path();
    let report = crate::scenario::run(config).await?;
    print!("{}", crate::scenario::summary(&report));
    println!("report: {}; chart: {}", r.report.display(), chart.display());
    Ok(())
}

/// `run --compare`/`--system`: [`crate::scenario::compare::run`], printing each run's table
/// as it finishes, then the side-by-side one.
async fn run_comparison(r: &RunArgs, base: crate::scenario::ScenarioConfig, systems: &[crate::demo::System]) -> anyhow::Result<()> {
    let shape = |system: &crate::demo::System| match system {
        crate::demo::System::Shardmetrics => format!("{} scraper shards, {} frontends", r.demo.shards, r.demo.frontends),
        crate::demo::System::MetricsServer { replicas } => format!("{replicas} metrics-server replica(s)"),
    };
    eprintln!(
        "{} nodes x {} pods x {} containers, resolution {}; systems: {}",
        r.demo.nodes,
        r.demo.pods_per_node,
        r.containers_per_pod,
        r.demo.metric_resolution,
        systems.iter().map(|s| format!("{} ({})", s.name(), shape(s))).collect::<Vec<_>>().join(", ")
    );
    let comparison = crate::scenario::compare::run(base, systems, |system, report, path| {
        println!("== {} ==\n{}", system.name(), crate::scenario::summary(report));
        println!("report: {}", path.display());
    })
    .await?;
    print!("{}", crate::scenario::compare::summary(&comparison));
    println!("comparison report: {}", r.report.display());
    Ok(())
}

async fn run_floor(f: FloorArgs) -> anyhow::Result<()> {
    let result = crate::scenario::floor::run_floor(crate::scenario::floor::FloorConfig {
        targets_file: f.targets_file,
        ca_file: f.ca_file,
        token_file: f.token_file,
        resolution: f.metric_resolution.0,
        duration: f.duration.0,
        clock: shardmetrics_plumbing::clock::system(),
        start_at_ms: f.start_at_unix_ms,
    })
    .await?;
    println!("{}", serde_json::to_string(&result)?);
    Ok(())
}

async fn run_demo(d: DemoArgs) -> anyhow::Result<()> {
    if d.control_plane == ControlPlaneMode::Real {
        return run_real_demo(d).await;
    }
    let config = demo_config(&d)?;
    eprintln!(
        "starting: {} nodes x {} pods, {} scraper shards, {} frontends, resolution {} ...",
        d.nodes, d.pods_per_node, d.shards, d.frontends, d.metric_resolution
    );
    let mut demo = crate::demo::Demo::start(config).await?;
    let kc = d.kubeconfig.display().to_string();
    println!(
        "demo ready: {} nodes x {} pods, {} shards, {} frontends behind {} (resolution {}); kubeconfig {}",
        d.nodes,
        d.pods_per_node,
        d.shards,
        d.frontends,
        demo.api.url(),
        d.metric_resolution,
        demo.kubeconfig().display()
    );
    demo_hints(&kc);
    println!("logs and credentials of the shards and frontends: {}", demo.work_dir().display());
    println!("Ctrl-C stops everything.");
    supervise_until_stopped(|| demo.supervise()).await;
    eprintln!("stopping ...");
    demo.shutdown().await;
    Ok(())
}

/// The commands the demo suggests, for `kubeconfig`.
fn demo_hints(kc: &str) {
    println!("try:");
    for cmd in [
        "top nodes".to_owned(),
        "top pods -A --sort-by=cpu".to_owned(),
        "top pods -n team-a -l app=app-0 --containers".to_owned(),
        "get nodemetrics".to_owned(),
        "get --raw /apis/metrics.k8s.io/v1beta1/namespaces/team-b/pods".to_owned(),
        "api-resources --api-group=metrics.k8s.io".to_owned(),
        format!("--context {} top nodes    # refused: no rights", crate::demo::NOACCESS_CONTEXT),
    ] {
        println!("  kubectl --kubeconfig {kc} {cmd}");
    }
}

async fn run_real_demo(d: DemoArgs) -> anyhow::Result<()> {
    let mut config = demo_config(&d)?;
    config.ready_timeout += Duration::from_secs(60);
    eprintln!(
        "starting the real control plane (etcd, kube-apiserver, kube-controller-manager, kube-scheduler; built from loadtest/upstream on first use), {} simulated nodes x {} pods, {} scraper shards, {} frontends, resolution {} ...",
        d.nodes, d.pods_per_node, d.shards, d.frontends, d.metric_resolution
    );
    let mut demo = crate::demo::real::RealDemo::start(config, crate::demo::real::HpaTimings::default()).await?;
    let kc = d.kubeconfig.display().to_string();
    println!(
        "demo ready after {:.0?}: kube-apiserver {} with APIServices {} Available; {} nodes x {} pods, {} shards, {} frontends (resolution {}); kubeconfig {}",
        demo.startup,
        demo.control_plane.url(),
        crate::demo::real::API_SERVICES.map(|(name, _, _)| name).join(" and "),
        d.nodes,
        d.pods_per_node,
        d.shards,
        d.frontends,
        d.metric_resolution,
        demo.kubeconfig().display()
    );
    demo_hints(&kc);
    println!("  kubectl --kubeconfig {kc} autoscale deployment app-0 -n team-a --cpu-percent=50 --min=1 --max=10   # the real HPA controller");
    println!("logs of every process (control plane, shards, frontends): {}", demo.work_dir().display());
    println!("Ctrl-C stops everything.");
    supervise_until_stopped(|| demo.supervise()).await;
    eprintln!("stopping ...");
    demo.shutdown().await;
    Ok(())
}

/// Restarts children that die (as their StatefulSet or Deployment would), printing what
/// happens, until SIGTERM or Ctrl-C.
async fn supervise_until_stopped(mut supervise: impl FnMut() -> Vec<crate::demo::SupervisorEvent>) {
    use crate::demo::SupervisorEvent;
    let stop = shutdown_signal();
    tokio::pin!(stop);
    let mut tick = tokio::time::interval(Duration::from_millis(500));
    loop {
        tokio::select! {
            () = &mut stop => return,
            _ = tick.tick() => {}
        }
        for event in supervise() {
            match event {
                SupervisorEvent::Exited { name, status, after } => {
                    eprintln!("{name} exited ({status}); restarting it in {after:?}")
                }
                SupervisorEvent::Restarted { name, pid } => eprintln!("restarted {name} (pid {pid})"),
                SupervisorEvent::RestartFailed { name, error } => eprintln!("restarting {name} failed: {error}; trying again"),
            }
        }
    }
}

async fn run_kubelets(k: KubeletsArgs) -> anyhow::Result<()> {
    let ca = Arc::new(Ca::new("shardmetrics-standalone-kubelet-ca")?);
    let tokens: Vec<&str> = k.tokens.iter().map(String::as_str).collect();
    let fleet = KubeletFleet::new(FleetConfig::new(&ca, fixed_tokens(&tokens))?)?;
    if let Some(dir) = &k.pki_dir {
        ca.write_pem(dir, "kubelet-ca")?;
    }
    let width = k.count.saturating_sub(1).to_string().len().max(4);
    let now = shardmetrics_plumbing::clock::system();
    for i in 0..k.count {
        let node = format!("{}{:0width$}", k.node_prefix, i);
        let kubelet = fleet.start(&node, 100, 512 << 20).await?;
        for p in 0..k.pods_per_node {
            let containers = (0..k.containers_per_pod)
                .map(|c| (ContainerUsage::new(&format!("c{c}"), 50 + ((i * 7 + p * 13 + c) % 400) as u64, (64 + (p % 8) as u64 * 32) << 20), now.now_ms()))
                .collect();
            kubelet.upsert_pod("default", &format!("{node}-pod-{p}"), containers);
        }
        println!("{node} 127.0.0.1:{}", kubelet.port());
    }
    println!("kubelets ready: {}", fleet.len());
    shutdown_signal().await;
    fleet.stop_all();
    tokio::time::sleep(Duration::from_millis(50)).await;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_flag_problem_is_reported_at_once() {
        let args = Args::try_parse_from([
            "shardmetrics-loadtest",
            "--log-level",
            "info,[",
            "kubelets",
            "--count",
            "0",
            "--containers-per-pod",
            "0",
            "--token",
            " ",
        ])
        .unwrap();
        let problems = validate(&args);
        assert_eq!(problems.len(), 4, "{problems:?}");
    }

    #[test]
    fn every_run_and_floor_flag_has_its_env_var() {
        use clap::CommandFactory;
        let cmd = Args::command();
        for sub in ["run", "floor"] {
            let sub = cmd.find_subcommand(sub).unwrap();
            for arg in sub.get_arguments() {
                let Some(long) = arg.get_long() else { continue };
                if matches!(long, "help" | "version") {
                    continue;
                }
                let want = format!("SHARDMETRICS_{}", long.to_uppercase().replace('-', "_"));
                assert_eq!(arg.get_env().and_then(|e| e.to_str()), Some(want.as_str()), "--{long}");
            }
        }
    }

    #[test]
    fn run_faults_are_parsed_and_checked_against_the_duration() {
        let parse = |extra: &[&str]| {
            let mut argv = vec!["shardmetrics-loadtest", "run", "--duration", "60s"];
            argv.extend(extra);
            validate(&Args::try_parse_from(argv).unwrap())
        };
        assert!(parse(&["--fault", "kill-shard@30s", "--fault", "kubelets-failing=5%"]).is_empty());
        assert!(parse(&["--kill-shard-at", "10s"]).is_empty());
        let problems = parse(&["--fault", "kill-shard@90s", "--kill-shard-at", "60s", "--hpa-queries-per-sec=-1"]);
        assert_eq!(problems.len(), 3, "{problems:?}");
        // A spec or a time that does not parse is refused by clap itself, naming the flag.
        for (flag, value, why) in [("--fault", "explode@1s", "unknown kind"), ("--kill-shard-at", "soon", "invalid duration"), ("--warmup", "x", "invalid duration")] {
            let err = Args::try_parse_from(["shardmetrics-loadtest", "run", flag, value]).unwrap_err().to_string();
            assert!(err.contains(flag) && err.contains(value) && err.contains(why), "{err}");
        }
        let args = Args::try_parse_from(["shardmetrics-loadtest", "run", "--kill-shard-at", "5s", "--fault", "restart-shard@1s"]).unwrap();
        let Command::Run(r) = args.command else { panic!("not run") };
        assert_eq!(
            r.fault_specs(),
            [
                FaultSpec { kind: FaultKind::RestartShard, at: Duration::from_secs(1) },
                FaultSpec { kind: FaultKind::KillShard, at: Duration::from_secs(5) }
            ]
        );
    }

    #[test]
    fn every_flag_of_every_subcommand_sits_under_a_help_heading() {
        use clap::CommandFactory;
        let cmd = Args::command();
        for sub in cmd.get_subcommands() {
            for arg in sub.get_arguments() {
                let id = arg.get_id().as_str();
                if matches!(id, "help" | "version") {
                    continue;
                }
                assert!(arg.get_help_heading().is_some(), "{} --{id} has no heading in --help", sub.get_name());
            }
        }
    }

    #[test]
    fn defaults_are_valid() {
        let args = Args::try_parse_from(["shardmetrics-loadtest", "apiserver"]).unwrap();
        assert!(validate(&args).is_empty());
    }
}
