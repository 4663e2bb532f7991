//! A small version of the standard scenario (200 nodes x 5 pods, 2 shards, 2 frontends, 5 s
//! resolution, 20 s): checks coverage and correctness of the pipeline and of the report, not
//! speed.

use std::time::Duration;

use shardmetrics_loadtest::demo::DemoConfig;
use shardmetrics_loadtest::scenario::{self, ScenarioConfig};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_small_scenario_covers_every_node_and_pod_and_reports_every_measurement() {
    let _serial = crate::support::serial().await;
    let dir = tempfile::tempdir().unwrap();
    let mut demo = DemoConfig::new(env!("CARGO_BIN_EXE_shardmetrics-loadtest").into());
    demo.nodes = 200;
    demo.pods_per_node = 5;
    demo.containers_per_pod = 2;
    demo.shards = 2;
    demo.frontends = 2;
    demo.metric_resolution = Duration::from_secs(5);
    demo.kubeconfig = dir.path().join("demo.kubeconfig");
    demo.child_log_level = "warn".into();
    let report_path = dir.path().join("small.json");
    let mut config = ScenarioConfig::new(demo, Duration::from_secs(20), report_path.clone());
    config.floor_duration = Duration::from_secs(5);
    config.pod_probe_every = Duration::from_secs(2);
    config.load.hpa_per_second = 10.0;
    config.load.top_per_second = 0.5;
    config.load.node_per_second = 2.0;
    config.load.encoding = scenario::queries::Encoding::Protobuf;
    let report = scenario::run(config).await.expect("the scenario runs");
    eprintln!("{}", scenario::summary(&report));

    // Coverage: every node and pod fresh in every probe once started.
    let c = &report.coverage;
    assert!(c.node_probes >= 15 && c.pod_probes >= 5, "{c:?}");
    assert_eq!((c.node_probe_errors, c.pod_probe_errors), (0, 0), "{c:?}");
    assert_eq!(c.nodes_min_percent, 100.0, "{c:?}");
    assert_eq!(c.pods_min_percent, 100.0, "{c:?}");
    assert!(report.timeline.pod_probes.iter().all(|p| p.expected == 1000 && p.served == 1000));
    // Freshness within the resolution, plus the second the timestamps are truncated to, plus
    // slack. A node's first regular slot is skipped when it comes less than half a resolution
    // after its prompt first scrape (at or before "ready"), so until 1.5 resolutions after
    // ready a node's data may be up to 1.5 resolutions old once; from then on (the probes from
    // 9 s, 1.5 s of slack), one resolution.
    let age = &report.freshness.node_age_ms;
    assert!(age.count >= 15 * 200 && age.max <= 7_500.0 + 1_000.0 + 2_000.0, "{age:?}");
    let nodes = &report.timeline.node_probes;
    let settled: Vec<(f64, f64)> = nodes.iter().filter(|p| p.t_s >= 9.0).map(|p| (p.t_s, p.age_max_ms)).collect();
    assert!(settled.len() >= 8 && settled.iter().all(|(_, max)| *max <= 5_000.0 + 1_000.0 + 2_000.0), "(probe s, max age ms): {settled:?}");
    if let Some(s) = &report.freshness.scrape_to_servable_ms {
        assert!(s.count > 0.0 && s.p50 <= s.p99, "{s:?}");
    }

    // Queries: all kinds answered, no errors, none skipped, sizes plausible.
    for kind in ["hpa_selector", "top_all_pods", "one_node", "all_nodes"] {
        let q = &report.queries[kind];
        assert!(q.ok > 0 && q.errors == 0 && q.skipped == 0, "{kind}: {q:?}");
        assert!(q.latency_ms.p50 > 0.0 && q.latency_ms.p50 <= q.latency_ms.p99 && q.latency_ms.p99 <= q.latency_ms.max, "{kind}: {q:?}");
    }
    assert!(report.queries["top_all_pods"].bytes_mean > 20 * report.queries["hpa_selector"].bytes_mean.max(1));

    // Scrapes: one per node per resolution, no duplicates, counted by the shards too.
    let s = &report.scrapes;
    assert_eq!(s.planned_per_second, 40.0);
    assert!((30.0..=50.0).contains(&s.achieved_per_second), "{s:?}");
    assert_eq!(s.duplicate_scrapes, 0, "{s:?}");
    assert!(s.scraper_results.get("success").is_some_and(|n| *n > 0.0), "{s:?}");
    assert_eq!(s.scrape_failures, 0.0, "{s:?}");
    // Each scrape ships the node point plus 5 pods x 2 containers.
    let per_scrape = s.samples / s.scraper_results["success"];
    assert!((10.0..=12.0).contains(&per_scrape), "{per_scrape} samples per scrape: {s:?}");

    // Processes, the floor, the files.
    for name in ["scraper-0", "scraper-1", "frontend-0", "frontend-1", "simulator+clients"] {
        let p = report.processes.iter().find(|p| p.name == name).unwrap_or_else(|| panic!("{name} missing"));
        assert!(p.cpu_s > 0.0 && p.peak_rss_mib > 1.0 && p.alive_at_end, "{p:?}");
    }
    assert_eq!(report.components["scraper"].processes, 2);
    // The harness keeps up: its kubelet sync never fell behind the API server's change feed.
    let m = &report.machine;
    assert_eq!(m.cluster_resyncs, 0, "{m:?}");
    assert!(m.cores >= 1 && m.busy_cores >= m.harness_cores * 0.5 && m.harness_cores > 0.0, "{m:?}");
    assert!(scenario::summary(&report).contains("cluster resyncs 0"));
    let floor = report.floor.as_ref().expect("floor ran");
    // One shard's share: 100 nodes at a 5 s resolution, for the 20 s window, beside it (its
    // requests are neither in the scrape rate nor duplicates, checked above).
    assert_eq!(floor.nodes, 100);
    assert!(floor.duration_s >= 19.0 && floor.fetches >= 350 && floor.errors == 0, "{floor:?}");
    assert!(floor.scraper_cpu_vs_floor.is_some_and(|r| r > 0.0), "{floor:?}");
    let floor_proc = report.processes.iter().find(|p| p.name == "floor").expect("the floor's process in the table");
    assert!(floor_proc.cpu_s > 0.0 && floor_proc.peak_rss_mib > 1.0, "{floor_proc:?}");
    assert!(m.harness_cores >= floor_proc.cpu_cores, "the floor is the harness's: {m:?}");
    let ff = report.frontend_floor.as_ref().expect("the frontend floor ran");
    assert!(ff.errors.is_empty(), "{ff:?}");
    assert!(ff.decode.as_ref().is_some_and(|d| d.shards == 2 && d.batches > 0 && d.scrapes > 0 && d.cpu_s > 0.0), "{ff:?}");
    let encoded: Vec<&str> = ff.encode.iter().map(|e| e.kind.as_str()).collect();
    assert_eq!(encoded, ["hpa_selector", "top_all_pods", "one_node", "all_nodes"], "{ff:?}");
    assert!(ff.encode.iter().all(|e| e.encodes > 0 && e.floor_bytes > 0 && e.served_bytes > 0), "{ff:?}");
    assert!(ff.encode_cores.is_some_and(|c| c > 0.0), "{ff:?}");
    assert!(ff.frontend_vs_floor.is_some_and(|r| r > 0.0), "{ff:?}");
    let written: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&report_path).unwrap()).unwrap();
    for field in ["setup", "scrapes", "coverage", "freshness", "queries", "processes", "components", "machine", "floor", "frontend_floor", "faults", "timeline"] {
        assert!(!written[field].is_null(), "{field} missing");
    }
    assert_eq!(written["setup"]["query_path"], "direct_to_frontends");
    let svg = std::fs::read_to_string(report_path.with_extension("svg")).unwrap();
    assert!(svg.starts_with("<svg") && svg.contains("polyline") || svg.contains("<path"), "{}", &svg[..svg.len().min(200)]);
    assert!(scenario::summary(&report).contains("top_all_pods"));
}
