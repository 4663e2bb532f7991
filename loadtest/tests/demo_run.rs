//! The `run` scenario end to end: a short open-loop load against the real pipeline, a shard
//! killed mid-run through `--fault`, and the report and chart it writes.

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
    let mut config = ScenarioConfig::new(demo, Duration::from_secs(8), report_path.clone());
    config.faults = vec!["kill-shard@3s".parse().unwrap()];
    config.floor_duration = Duration::from_secs(2);
    config.load.node_per_second = 4.0;
    config.load.top_per_second = 1.0;
    let report = scenario::run(config).await.expect("the scenario runs");
    eprintln!("{}", scenario::summary(&report));
    let written: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&report_path).unwrap()).unwrap();
    assert_eq!(written["setup"]["nodes"], 6);
    assert_eq!(report.setup.pods, 24);
    for kind in ["all_nodes", "hpa_selector", "one_node", "top_all_pods"] {
        let q = &report.queries[kind];
        assert!(q.ok > 0, "{kind}: {q:?}");
        assert_eq!(q.errors, 0, "{kind}: {q:?}");
    }
    assert_eq!(report.faults.len(), 1);
    assert!(report.faults[0].error.is_none() && report.faults[0].outcome.targets.len() == 1, "{:?}", report.faults[0]);
    assert_eq!(report.faults[0].after.fewest_nodes_served, Some(6), "a crashed shard's nodes keep being served from the last data");
    assert!(report.scrapes.kubelet_requests > 0);
    assert_eq!(report.scrapes.duplicate_scrapes, 0, "one owner per node");
    assert!(report.processes.iter().any(|p| p.name == "frontend-0" && p.peak_rss_mib > 0.0));
    assert!(report.processes.iter().any(|p| p.name.starts_with("scraper-") && !p.alive_at_end), "the killed shard is reported as gone");
    assert!(report.floor.as_ref().is_some_and(|f| f.fetches > 0), "{:?}", report.floor);
    assert!(scenario::summary(&report).contains("hpa_selector"));
    assert!(std::fs::read_to_string(report_path.with_extension("svg")).unwrap().contains("<svg"));
}
