//! Misbehaving kubelets (`--fault kubelets-failing=P%`): only the affected nodes lose
//! freshness; a node whose scrapes fail keeps serving its last good data until the staleness
//! bound and is not served after it (no invented data); a slow kubelet within the timeout
//! stays fresh; every other node stays fresh; each failure is counted by reason in the
//! shards' `/metrics`.

use std::collections::BTreeMap;
use std::time::Duration;

use crate::support::{LEASE, RES, age_bound, demo};
use shardmetrics_loadtest::demo::Demo;
use shardmetrics_loadtest::faults::{self, FaultSpec, Probe};
use shardmetrics_loadtest::scenario::procstat::{label_value, parse_exposition, samples_of};

/// Sum of `shardmetrics_scraper_scrapes_total` by result over every shard.
async fn scrape_results(probe: &Probe, demo: &shardmetrics_loadtest::demo::RunningDemo) -> BTreeMap<String, f64> {
    let mut out = BTreeMap::new();
    for name in demo.shard_names() {
        let addr = demo.admin_addr(&name).unwrap();
        let text = String::from_utf8(probe.admin(addr, "/metrics").await.unwrap().body.to_vec()).unwrap();
        let exposition = parse_exposition(&text);
        for (key, v) in samples_of(&exposition, "shardmetrics_scraper_scrapes_total") {
            let result = label_value(key, "result").unwrap_or_else(|| panic!("{key} without a result label")).to_owned();
            *out.entry(result).or_default() += v;
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_failing_kubelets_lose_freshness_and_failures_are_counted_by_reason() {
    let _serial = crate::support::serial().await;
    let dir = tempfile::tempdir().unwrap();
    let mut config = demo(dir.path(), 12, 2, 1);
    let staleness = RES * 2 + LEASE;
    config.frontend_max_staleness = Some(staleness);
    let mut demo = Demo::start(config).await.expect("demo starts");
    let probe = Probe::new(&demo).unwrap();
    let base = probe.proxy_base();
    tokio::time::sleep(crate::support::WARMUP).await;
    let before = scrape_results(&probe, &demo).await;

    let spec: FaultSpec = "kubelets-failing=50%".parse().unwrap();
    let injected = faults::inject(&spec, &mut demo, 0.0).await.expect("injected");
    let injected_at = tokio::time::Instant::now();
    let targets: BTreeMap<String, String> = injected
        .outcome
        .targets
        .iter()
        .map(|t| t.split_once('=').map(|(n, f)| (n.to_owned(), f.to_owned())).unwrap())
        .collect();
    assert_eq!(targets.len(), 6, "{targets:?}");
    let kinds: Vec<&str> = targets.values().map(String::as_str).collect();
    for kind in ["timeout", "http-500", "garbage", "truncated", "oversized", "slow"] {
        assert!(kinds.contains(&kind), "{kind} in {kinds:?}");
    }
    let failing: Vec<&String> = targets.iter().filter(|(_, f)| *f != "slow").map(|(n, _)| n).collect();
    let all_nodes = demo.cluster.node_names();
    let healthy: Vec<&String> = all_nodes.iter().filter(|n| !failing.contains(n)).collect();
    let fresh_ms = age_bound().as_millis() as i64;

    // Within the staleness bound of their last good scrape (at most a resolution before the
    // injection): everything served, failing nodes with their last good data.
    let mut saw_failing_aged = false;
    let mut worst_healthy = 0i64;
    while injected_at.elapsed() < staleness - RES - Duration::from_secs(1) {
        let seen = probe.nodes(&base).await.expect("nodes");
        let now = probe.now_ms();
        assert_eq!(seen.timestamps.len(), 12, "every node served within the staleness bound: {:?}", seen.timestamps.keys());
        for n in &healthy {
            worst_healthy = worst_healthy.max(now - seen.timestamps[*n]);
        }
        saw_failing_aged |= failing.iter().all(|n| now - seen.timestamps[*n] > RES.as_millis() as i64);
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    assert!(saw_failing_aged, "failing nodes kept serving their last good (aging) data");
    assert!(worst_healthy <= fresh_ms, "healthy and slow nodes stay fresh: oldest {worst_healthy} ms");

    // Past the bound (plus the frontend's sweep): the failing nodes are not served any more,
    // everything else still fresh.
    tokio::time::sleep((staleness + RES).saturating_sub(injected_at.elapsed())).await;
    let seen = probe.nodes(&base).await.expect("nodes");
    let now = probe.now_ms();
    for n in &failing {
        assert!(!seen.timestamps.contains_key(*n), "{n} ({}) served beyond the staleness bound", targets[*n]);
    }
    for n in &healthy {
        let age = now - seen.timestamps.get(*n).copied().unwrap_or(0);
        assert!(age <= fresh_ms, "{n} fresh: {age} ms");
    }

    let after = scrape_results(&probe, &demo).await;
    let grew = |r: &str| after.get(r).copied().unwrap_or(0.0) - before.get(r).copied().unwrap_or(0.0);
    eprintln!("scrape results before {before:?} after {after:?}");
    for reason in ["timeout", "http_error", "parse_error", "too_large"] {
        assert!(grew(reason) >= 1.0, "{reason} counted: {after:?}");
    }
    assert!(grew("connect_error") + grew("parse_error") >= 2.0, "truncated bodies counted too: {after:?}");
    assert!(grew("success") > 0.0);

    // Healed kubelets come back.
    for n in &failing {
        demo.cluster.kubelet(n).unwrap().set_fault(shardmetrics_sim::kubelet::Fault::None);
    }
    let deadline = tokio::time::Instant::now() + RES * 3;
    loop {
        let seen = probe.nodes(&base).await.expect("nodes");
        if seen.timestamps.len() == 12 {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "healed nodes served again: {:?}", seen.timestamps.keys());
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    demo.shutdown().await;
}
