//! Shard crash (SIGKILL) through `run --fault kill-shard`: its Lease expires, the others take its
//! nodes over, and no served node gets older than resolution + Lease duration + one scrape.

use std::time::Duration;

use crate::support::{GRANULARITY, LEASE, RES, demo, measured, only_fault, run};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_shards_nodes_are_taken_over_after_its_lease_expires_without_a_gap() {
    let _serial = crate::support::serial().await;
    let dir = tempfile::tempdir().unwrap();
    let report = run(dir.path(), demo(dir.path(), 12, 3, 2), Duration::from_secs(20), &["kill-shard@4s"]).await;
    let f = only_fault(&report);
    assert_eq!(f.outcome.targets.len(), 1, "{f:?}");
    // Bound from the issue: resolution + Lease duration + one scrape (1 s for the scrape,
    // the membership watch and ingest on this shared 2-core machine).
    let bound_ms = (RES + LEASE + Duration::from_secs(1)).as_millis() as f64;
    let age_bound_ms = bound_ms + GRANULARITY.as_millis() as f64;
    let rescraped = measured(f, "all_nodes_rescraped_ms");
    assert!(rescraped <= age_bound_ms, "every node scraped again after {rescraped} ms (bound {bound_ms})");
    assert!(measured(f, "max_node_age_ms") <= age_bound_ms, "oldest served node {} ms", measured(f, "max_node_age_ms"));
    assert!(f.after.worst_node_staleness_ms <= age_bound_ms, "scenario probe: {} ms", f.after.worst_node_staleness_ms);
    assert_eq!(measured(f, "min_nodes_served_count"), 12.0, "the dead shard's nodes are served from their last data meanwhile");
    assert_eq!(f.after.fewest_nodes_served, Some(12));
    assert_eq!(f.after.fewest_pods_served, Some(36));
    assert_eq!(measured(f, "duplicate_scrapes_count"), 0.0, "the prompt takeover scrape is not followed by an early one");
    assert_eq!(report.scrapes.duplicate_scrapes, 0);
    assert!(report.processes.iter().any(|p| p.name.starts_with("scraper-") && !p.alive_at_end), "the killed shard is reported as gone");
}
