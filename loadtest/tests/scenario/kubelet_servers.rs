//! The simulated kubelets served from `kubelet-server` children (what a cluster larger than one
//! process's open-files limit gets), forced at a small size: the pipeline sees every node, the
//! report's kubelet-side figures (requests and duplicates per kubelet, the floor's fetches) are
//! counted as with in-process kubelets, the children are reported as harness, and they are
//! gone when the run ends.

use std::time::Duration;

use shardmetrics_loadtest::scenario::{self, ScenarioConfig, compare};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubelets_served_from_two_server_processes_are_scraped_and_counted_as_in_process_ones() {
    let _serial = crate::support::serial().await;
    let dir = tempfile::tempdir().unwrap();
    let mut demo = crate::support::demo(dir.path(), 24, 2, 1);
    demo.kubelet_servers = 2;
    let report_path = dir.path().join("report.json");
    let mut config = ScenarioConfig::new(demo, Duration::from_secs(20), report_path);
    config.warmup = crate::support::WARMUP;
    config.floor_duration = Duration::from_secs(5);
    config.load.hpa_per_second = 5.0;
    config.load.node_per_second = 2.0;
    config.load.top_per_second = 0.2;
    let report = scenario::run(config).await.expect("the scenario runs");
    eprintln!("{}", scenario::summary(&report));

    assert_eq!(report.setup.kubelet_servers, 2);
    assert!(scenario::summary(&report).contains("kubelets served from 2 kubelet-server processes"));
    // Every node and pod served fresh in every probe.
    let c = &report.coverage;
    assert_eq!((c.node_probe_errors, c.pod_probe_errors), (0, 0), "{c:?}");
    assert_eq!((c.nodes_min_percent, c.pods_min_percent), (100.0, 100.0), "{c:?}");

    // Kubelet-side accounting: one request per node per resolution, counted by the kubelets
    // in the runner whichever child accepted them, as many as the shards counted.
    let s = &report.scrapes;
    assert!((3.5..=6.0).contains(&s.achieved_per_second), "24 nodes / 5 s: {s:?}");
    assert_eq!((s.duplicate_scrapes, s.scrape_failures), (0, 0.0), "{s:?}");
    let by_shards = s.scraper_results["success"];
    let by_kubelets = s.kubelet_requests as f64;
    assert!((by_shards - by_kubelets).abs() <= (by_kubelets * 0.15).max(5.0), "shards {by_shards} vs kubelets {by_kubelets}: {s:?}");
    let floor = report.floor.as_ref().expect("the floor ran");
    // One shard's share (12 of 24 nodes), each fetched once per 5 s through the 20 s window.
    assert_eq!(floor.nodes, 12, "{floor:?}");
    assert!(floor.fetches >= 36 && floor.errors == 0, "{floor:?}");

    // The children are the harness's: in the harness figures, not in the system's.
    let servers: Vec<_> = report.processes.iter().filter(|p| p.name.starts_with("kubelets-")).collect();
    assert_eq!(servers.len(), 2, "{:?}", report.processes);
    // (Their CPU at this size is a few 10 ms ticks of /proc at most: not asserted.)
    assert!(servers.iter().all(|p| p.alive_at_end && p.peak_rss_mib > 1.0), "{servers:?}");
    assert_eq!(report.components["kubelets"].processes, 2);
    let runner = report.processes.iter().find(|p| p.name == scenario::SELF_NAME).expect("the runner");
    let floor_proc = report.processes.iter().find(|p| p.name == "floor").expect("the floor, which fetched during the window");
    let harness = runner.cpu_cores + floor_proc.cpu_cores + servers.iter().map(|p| p.cpu_cores).sum::<f64>();
    assert!((report.machine.harness_cores - harness).abs() < 1e-9, "{:?}", report.machine);
    assert_eq!(compare::figures(&report).processes, 3, "2 shards + 1 frontend");

    // Stopped with the run.
    for p in &servers {
        assert!(shardmetrics_loadtest::scenario::procstat::has_exited(p.pid), "{} (pid {}) still runs", p.name, p.pid);
    }
}
