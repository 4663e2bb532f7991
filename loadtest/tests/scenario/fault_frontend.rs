//! Frontend restart (`run --fault kill-frontend`): a frontend is killed, a new one starts on a
//! new port behind the aggregation proxy and serves every node and every pod with CPU rates
//! within 2 seconds of its start, from the shards' snapshots.

use std::time::Duration;

use crate::support::{demo, measured, only_fault, run};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_frontend_serves_complete_data_with_rates_within_two_seconds() {
    let _serial = crate::support::serial().await;
    let dir = tempfile::tempdir().unwrap();
    let report = run(dir.path(), demo(dir.path(), 12, 2, 2), Duration::from_secs(12), &["kill-frontend@3s"]).await;
    let f = only_fault(&report);
    assert_eq!(f.outcome.targets.len(), 2, "the killed and the new frontend: {:?}", f.outcome.targets);
    assert_ne!(f.outcome.targets[0], f.outcome.targets[1]);
    let ready = measured(f, "frontend_ready_ms");
    let complete = measured(f, "frontend_ready_with_complete_data_ms");
    assert!(ready <= complete, "ready {ready} ms, complete {complete} ms");
    assert!(complete < 2000.0, "complete data with rates after {complete} ms");
    assert_eq!(f.after.fewest_nodes_served, Some(12), "the other frontend kept serving");
}
