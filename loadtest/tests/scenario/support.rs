//! Shared setup of the fault tests: a small demo with short resolution and Lease durations, run
//! through the `run` scenario (which injects the `--fault` specs) or driven directly.

use std::path::Path;
use std::time::Duration;

use shardmetrics_loadtest::demo::DemoConfig;
use shardmetrics_loadtest::scenario::report::{FaultReport, Report};
use shardmetrics_loadtest::scenario::{self, ScenarioConfig};

/// The scenario tests each run a whole multi-process pipeline on a 2-core machine with
/// timing bounds; they take turns (held for the whole test) so one cannot slow another's.
pub async fn serial() -> tokio::sync::MutexGuard<'static, ()> {
    static TURN: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());
    TURN.lock().await
}

/// Resolution of the fault tests (the scrapers' minimum).
pub const RES: Duration = Duration::from_secs(5);
/// Lease duration of the fault tests (renewed every second).
pub const LEASE: Duration = Duration::from_secs(3);

/// Scheduling slack for a slot, a scrape and ingest on a shared 2-core machine that runs the
/// whole pipeline (a slot is seen late by up to ~1.5 s when the machine is busy).
pub const SLACK: Duration = Duration::from_millis(1500);

/// The Metrics API's timestamps are whole seconds, so an age read from them is up to 1 s high.
pub const GRANULARITY: Duration = Duration::from_secs(1);

/// The oldest a served node's data may be in the fault tests: a resolution between two
/// scrapes, the slack, the timestamps' granularity, and the scheduler's group window (a node
/// that started early with its group is scraped next at its own slot, that much later).
pub fn age_bound() -> Duration {
    RES + SLACK + GRANULARITY + shardmetrics_scraper::schedule::DEFAULT_GROUP_WINDOW
}

/// Load without measurement before the window (and before direct injections).
pub const WARMUP: Duration = Duration::from_secs(8);

/// A demo of `nodes` nodes x 3 pods, `shards` shards and `frontends` frontends with [`RES`]
/// and [`LEASE`].
pub fn demo(dir: &Path, nodes: usize, shards: usize, frontends: usize) -> DemoConfig {
    let mut d = DemoConfig::new(env!("CARGO_BIN_EXE_shardmetrics-loadtest").into());
    d.nodes = nodes;
    d.pods_per_node = 3;
    d.shards = shards;
    d.frontends = frontends;
    d.metric_resolution = RES;
    d.lease_duration = Some(LEASE);
    d.lease_renew_period = Some(Duration::from_secs(1));
    d.kubeconfig = dir.join("demo.kubeconfig");
    d.child_log_level = "warn".into();
    d.ready_timeout = Duration::from_secs(90);
    d
}

/// Runs the scenario on `demo` for `duration` with `faults` and a light load, no floor.
pub async fn run(dir: &Path, demo: DemoConfig, duration: Duration, faults: &[&str]) -> Report {
    let mut config = ScenarioConfig::new(demo, duration, dir.join("report.json"));
    config.faults = faults.iter().map(|f| f.parse().expect("fault spec")).collect();
    config.floor_duration = Duration::ZERO;
    // Past the start-up transient (the first prompt scrape, then the first phase slot up to
    // 1.5 resolutions later), so the windows show the faults only.
    config.warmup = WARMUP;
    config.load.hpa_per_second = 5.0;
    config.load.node_per_second = 2.0;
    config.load.top_per_second = 0.2;
    let report = scenario::run(config).await.expect("the scenario runs");
    eprintln!("{}", scenario::summary(&report));
    for f in &report.faults {
        eprintln!("{} targets={:?} measured={:?} after={:?} error={:?}", f.outcome.fault, f.outcome.targets, f.outcome.measured, f.after, f.error);
    }
    report
}

/// The one fault of a report, checked to have been injected.
pub fn only_fault(report: &Report) -> &FaultReport {
    assert_eq!(report.faults.len(), 1, "{:?}", report.faults);
    let f = &report.faults[0];
    assert!(f.error.is_none(), "{f:?}");
    f
}

/// A measurement of a fault, which must be there.
pub fn measured(f: &FaultReport, key: &str) -> f64 {
    *f.outcome.measured.get(key).unwrap_or_else(|| panic!("{key} not measured: {:?}", f.outcome.measured))
}
