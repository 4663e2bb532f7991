//! `run --compare metrics-server` at a small size (10 nodes x 3 pods, 10 s resolution, 30 s
//! windows, metrics-server in its two-replica HA shape): both systems run on identical
//! simulated clusters and the comparison's figures are present and plausible. Needs Go (the
//! peer, metrics-server v0.8.0, is built from the pinned module on first use).

use std::time::Duration;

use shardmetrics_loadtest::demo::System;
use shardmetrics_loadtest::scenario::{ScenarioConfig, compare};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_small_comparison_reports_both_systems_side_by_side() {
    let _serial = crate::support::serial().await;
    let dir = tempfile::tempdir().unwrap();
    let res = Duration::from_secs(10);
    let mut demo = crate::support::demo(dir.path(), 10, 2, 2);
    demo.metric_resolution = res;
    let report_path = dir.path().join("compare.json");
    let mut config = ScenarioConfig::new(demo, Duration::from_secs(30), report_path.clone());
    config.floor_duration = Duration::ZERO;
    config.warmup = Duration::from_secs(5);
    config.load.hpa_per_second = 5.0;
    config.load.node_per_second = 2.0;
    config.load.top_per_second = 0.2;
    let systems = [System::Shardmetrics, System::MetricsServer { replicas: 2 }];
    let c = compare::run(config, &systems, |s, r, _| eprintln!("== {} ==\n{}", s.name(), shardmetrics_loadtest::scenario::summary(r)))
        .await
        .expect("both systems run");
    eprintln!("{}", compare::summary(&c));

    assert!(c.failures.is_empty(), "{:?}", c.failures);
    let sm = &c.comparison["shardmetrics"];
    let ms = &c.comparison["metrics-server"];
    // Processes: 2 shards + 2 frontends; 2 metrics-server replicas.
    assert_eq!((sm.processes, ms.processes), (4, 2), "{sm:?} {ms:?}");
    for (name, f) in [("shardmetrics", sm), ("metrics-server", ms)] {
        assert!(f.cpu_cores > 0.0 && f.cpu_cores < 2.5, "{name} {f:?}");
        assert!(f.peak_rss_mib > 5.0 && f.peak_rss_mib < 4096.0, "{name} {f:?}");
        assert!(f.hpa_p99_ms.is_some_and(|p| p > 0.0 && p < 5_000.0), "{name} {f:?}");
        assert!(f.full_list_p50_ms.is_some_and(|p| p > 0.0) && f.full_list_p99_ms >= f.full_list_p50_ms, "{name} {f:?}");
        assert!(f.full_list_protobuf_p50_ms.is_some_and(|p| p > 0.0), "{name} {f:?}");
        // Every node served fresh all along; ages within two resolutions plus slack.
        assert_eq!(f.nodes_fresh_min_percent, 100.0, "{name} {f:?}");
        assert!(f.node_age_p99_ms > 0.0 && f.node_age_p99_ms <= 2.0 * 10_000.0 + 3_000.0, "{name} {f:?}");
        assert!(f.cold_start_to_served_s > 0.0 && f.cold_start_to_served_s < 120.0, "{name} {f:?}");
        // One replica of each was killed and the gap measured (a figure, not a reason).
        assert!(f.kill_gap_s.is_some_and(|g| (0.0..=60.0).contains(&g)), "{name} {f:?}");
        assert!(!f.reasons.contains_key("kill_gap_s"), "{name} {f:?}");
    }
    // Kubelet requests counted at the simulated kubelets: once per node per resolution for
    // shardmetrics, once per replica for metrics-server's HA shape (3 rounds per replica in the
    // window, give or take one at its edges).
    let per_res = |f: &compare::SystemFigures| f.kubelet_requests_per_node_per_resolution;
    assert!((0.6..=1.4).contains(&per_res(sm)), "{sm:?}");
    assert!((1.6..=2.4).contains(&per_res(ms)), "{ms:?}");
    let kills: Vec<_> = ["shardmetrics", "metrics-server"]
        .iter()
        .map(|n| c.runs[*n].extras.as_ref().and_then(|x| x.kill.replica.clone()).unwrap_or_default())
        .collect();
    assert_eq!(kills, ["scraper-0", "metrics-server-0"]);
    let peer = c.runs["metrics-server"].extras.as_ref().and_then(|x| x.peer_scrapes.clone()).expect("metrics-server's /metrics read");
    assert!(peer.error.is_none() && peer.rounds >= 2.0, "{peer:?}");
    assert!(c.ratios["kubelet_requests_per_s"].is_some_and(|r| (1.2..=4.0).contains(&r)), "{:?}", c.ratios);

    // The JSON report carries the fields under comparison.<system>.
    let v: serde_json::Value = serde_json::from_slice(&std::fs::read(&report_path).unwrap()).unwrap();
    for system in ["shardmetrics", "metrics-server"] {
        for field in ["cpu_cores", "peak_rss_mib", "kubelet_requests_per_s", "hpa_p99_ms", "full_list_p50_ms", "cold_start_to_served_s", "kill_gap_s"] {
            assert!(v["comparison"][system][field].is_number(), "comparison.{system}.{field}: {}", v["comparison"][system]);
        }
    }
    assert!(dir.path().join("compare.shardmetrics.json").exists() && dir.path().join("compare.metrics-server.json").exists());
}
