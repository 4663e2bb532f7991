//! Shard graceful restart (SIGTERM, as in a rolling update) through `run --fault
//! restart-shard`: the Lease is deleted on shutdown, the peers take over at once and continue
//! at the nodes' phases, the shard comes back with the same id; no node stale for more than a
//! resolution and no node scraped twice within half a resolution.

use std::time::Duration;

use crate::support::{age_bound, demo, measured, only_fault, run};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gracefully_restarted_shard_hands_over_without_staleness_or_duplicates() {
    let _serial = crate::support::serial().await;
    let dir = tempfile::tempdir().unwrap();
    let report = run(dir.path(), demo(dir.path(), 12, 3, 2), Duration::from_secs(20), &["restart-shard@4s"]).await;
    let f = only_fault(&report);
    assert_eq!(measured(f, "exit_success_count"), 1.0, "the shard exits cleanly on SIGTERM");
    assert_eq!(measured(f, "lease_left_after_stop_count"), 0.0, "the Lease is deleted on shutdown");
    let back = measured(f, "lease_back_ms");
    assert!(back < 15_000.0, "the restarted shard holds its Lease again after {back} ms");
    // One resolution, plus scheduling slack on this shared machine, read from second-granular
    // timestamps.
    let bound_ms = age_bound().as_millis() as f64;
    let rescraped = measured(f, "all_nodes_rescraped_ms");
    assert!(rescraped <= bound_ms, "every node scraped again after {rescraped} ms");
    assert!(measured(f, "max_node_age_ms") <= bound_ms, "oldest served node {} ms", measured(f, "max_node_age_ms"));
    assert!(f.after.worst_node_staleness_ms <= bound_ms, "scenario probe: {} ms", f.after.worst_node_staleness_ms);
    assert_eq!(f.after.fewest_nodes_served, Some(12));
    assert_eq!(measured(f, "duplicate_scrapes_count"), 0.0, "exactly one scrape per resolution across the hand-overs");
    assert_eq!(report.scrapes.duplicate_scrapes, 0);
}
