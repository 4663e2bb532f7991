//! The `run` scenario end to end: a short load against the real pipeline, a shard killed
//! mid-run, and the report it writes.

use std::time::Duration;

use shardmetrics_loadtest::demo::DemoConfig;
use shardmetrics_loadtest::scenario::{self, ScenarioConfig};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_short_scenario_measures_queries_scrapes_and_a_shard_failure() {
    let dir = tempfile::tempdir().unwrap();
    let mut demo = DemoConfig::new(env!("CARGO_BIN_EXE_shardmetrics-loadtest").into());
    demo.nodes = 6;
    demo.pods_per_node = 4;
    demo.shards = 3;
    demo.frontends = 2;
    demo.metric_resolution = Duration::from_secs(5);
    demo.kubeconfig = dir.path().join("demo.kubeconfig");
    demo.child_log_level = "warn".into();
    let report_path = dir.path().join("report.json");
    let config = ScenarioConfig {
        demo,
        duration: Duration::from_secs(8),
        concurrency: 2,
        kill_shard_at: Some(Duration::from_secs(3)),
        report: report_path.clone(),
        progress: false,
    };
    let report = scenario::run(config).await.expect("the scenario runs");
    let written: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&report_path).unwrap()).unwrap();
    assert_eq!(written["nodes"], 6);
    assert_eq!(report.pods, 24);
    for kind in ["all_nodes", "hpa_selector", "namespace_pods", "one_node"] {
        let q = &report.queries[kind];
        assert!(q.ok > 0, "{kind}: {q:?}");
        assert_eq!(q.errors, 0, "{kind}: {q:?}");
    }
    assert_eq!(report.min_nodes_served, 6, "a crashed shard's nodes keep being served from the last data");
    assert!(report.killed_shard.is_some() && report.failover_max_staleness_ms.is_some());
    assert!(report.scrapes > 0);
    assert_eq!(report.duplicate_scrapes, 0, "one owner per node");
    assert!(report.processes.iter().any(|p| p.name == "frontend-0" && p.rss_mib > 0.0));
    assert!(scenario::summary(&report).contains("hpa_selector"));
}
