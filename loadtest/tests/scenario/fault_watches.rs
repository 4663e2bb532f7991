//! API server watch drops with 410 Gone (`--fault apiserver-drop-watches`): every watch is closed
//! and the history compacted, so every watcher's resume gets an ERROR event with a 410
//! "Expired" Status and re-lists (kube-rs's watcher does); changes made meanwhile are neither
//! lost nor duplicated.

use std::time::Duration;

use crate::support::{RES, age_bound, demo};
use shardmetrics_loadtest::demo::Demo;
use shardmetrics_loadtest::faults::{self, FaultSpec, Probe};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watchers_relist_after_410_gone_and_nothing_is_lost_or_duplicated() {
    let _serial = crate::support::serial().await;
    let dir = tempfile::tempdir().unwrap();
    let mut demo = Demo::start(demo(dir.path(), 8, 2, 2)).await.expect("demo starts");
    let probe = Probe::new(&demo).unwrap();
    let base = probe.proxy_base();
    tokio::time::sleep(crate::support::WARMUP).await;
    let fault_ms = probe.now_ms();

    let spec: FaultSpec = "apiserver-drop-watches".parse().unwrap();
    let injected = faults::inject(&spec, &mut demo, 0.0).await.expect("injected");
    let open = injected.outcome.measured["watches_open_before_count"];
    // Shards watch Nodes and Leases, frontends Pods, Nodes and Leases (at least).
    assert!(open >= 8.0, "watches open before the drop: {open}");
    // Changes while the watchers are away: a node appears, a pod goes.
    demo.cluster.add_node("node-late").await.expect("node added");
    let (victim_ns, victim) =
        demo.cluster.fleet().all().iter().find_map(|k| k.pods().first().cloned()).expect("a kubelet runs a pod");
    demo.cluster.delete_pod(&victim_ns, &victim).await.expect("pod deleted");

    let m = injected.pending.expect("measured later").await.expect("measurement");
    eprintln!("{m:?}");
    assert!(m["watches_dropped_count"] >= open, "every open watch dropped: {m:?}");
    assert!(m["watch_410_gone_count"] >= 1.0, "resumes got 410 Gone: {m:?}");
    assert!(m["relists_count"] >= m["watch_410_gone_count"], "each 410 followed by a re-list: {m:?}");
    assert!(m.contains_key("watches_reopened_ms"), "watches open again: {m:?}");
    assert_eq!(m["min_nodes_served_count"], 8.0, "nothing unserved meanwhile: {m:?}");
    assert!(m["max_node_age_ms"] <= age_bound().as_millis() as f64, "{m:?}");
    assert_eq!(m["duplicate_scrapes_count"], 0.0, "the re-list did not reshuffle ownership: {m:?}");

    // Nothing lost: the node added and the pod deleted during the outage are seen by everyone.
    let deadline = tokio::time::Instant::now() + RES * 4;
    loop {
        let mut ok = true;
        for (_, addr) in demo.frontend_children() {
            let fb = Probe::frontend_base(addr);
            let nodes = probe.nodes(&fb).await.unwrap_or_default();
            let pods = probe.get(&format!("{fb}/pods")).await.map(|r| String::from_utf8_lossy(&r.body).into_owned()).unwrap_or_default();
            ok &= nodes.timestamps.contains_key("node-late") && nodes.timestamps.len() == 9;
            ok &= !pods.is_empty() && !pods.contains(&format!("\"{victim}\""));
        }
        if ok {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "changes made during the outage not served by every frontend");
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    // Nothing duplicated: every node exactly once.
    let r = probe.get(&format!("{base}/nodes")).await.unwrap();
    let v: serde_json::Value = serde_json::from_slice(&r.body).unwrap();
    let names: Vec<&str> = v["items"].as_array().unwrap().iter().map(|i| i["metadata"]["name"].as_str().unwrap()).collect();
    let mut dedup = names.clone();
    dedup.sort();
    dedup.dedup();
    assert_eq!(names.len(), dedup.len(), "{names:?}");
    assert!(faults::duplicate_scrapes(demo.cluster.fleet(), fault_ms, (RES.as_millis() / 2) as i64) == 0);
    demo.shutdown().await;
}
