//! Scaling shards up and down while running (`run --fault scale-shards=N`): about 1/S of the
//! nodes move each time, nothing goes unserved, nothing is scraped twice.

use std::time::Duration;

use crate::support::{age_bound, demo, measured, run};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scaling_shards_up_then_down_moves_about_one_in_s_nodes_without_a_gap() {
    let _serial = crate::support::serial().await;
    let dir = tempfile::tempdir().unwrap();
    let nodes = 30;
    let report = run(dir.path(), demo(dir.path(), nodes, 2, 1), Duration::from_secs(30), &["scale-shards=3@3s", "scale-shards=2@16s"]).await;
    assert_eq!(report.faults.len(), 2);
    let bound_ms = age_bound().as_millis() as f64;
    let mut duplicates_total = 0u64;
    let mut moved_total = 0.0;
    for (f, expected_share) in report.faults.iter().zip([1.0 / 3.0, 1.0 / 3.0]) {
        assert!(f.error.is_none(), "{f:?}");
        assert_eq!(f.outcome.targets.len(), 1, "one shard added or removed: {:?}", f.outcome.targets);
        let ring = measured(f, "ring_moved_fraction");
        let moved = measured(f, "moved_fraction");
        // Consistent hashing: the ring moves about 1/S; the shards' own gauges agree.
        assert!((ring - expected_share).abs() < 0.2, "{}: ring moves {ring}", f.outcome.fault);
        assert!((moved - ring).abs() < 0.05, "{}: shards report {moved} moved, ring {ring}", f.outcome.fault);
        assert_eq!(measured(f, "owned_nodes_after_count"), nodes as f64, "each node owned exactly once after");
        assert_eq!(f.after.fewest_nodes_served, Some(nodes), "{}: no gap", f.outcome.fault);
        assert!(measured(f, "max_node_age_ms") <= bound_ms, "{}: oldest node {} ms", f.outcome.fault, measured(f, "max_node_age_ms"));
        // A joining shard catches up a moved node's slot if it falls while the move is being
        // computed (else the slot would be missed); when the giving-up peer is slower to see
        // the new member, it scrapes that node too: at most one early scrape per moved node.
        let moved_nodes = (ring * nodes as f64).round();
        let duplicates = measured(f, "duplicate_scrapes_count");
        assert!(duplicates <= (moved_nodes / 5.0).ceil(), "{}: {duplicates} duplicate scrapes of {moved_nodes} moved nodes", f.outcome.fault);
        duplicates_total += duplicates as u64;
        moved_total += moved_nodes;
    }
    assert!(report.faults[0].outcome.targets[0].starts_with('+'));
    assert!(report.faults[1].outcome.targets[0].starts_with('-'));
    // Run-wide (kubelet-side, any pair < resolution/2 apart) the same allowance: one early
    // scrape per five moved nodes over both steps.
    let allowance = (moved_total / 5.0).ceil().max(duplicates_total as f64);
    assert!(report.scrapes.duplicate_scrapes as f64 <= allowance, "{} duplicate scrapes in the run, {moved_total} nodes moved: {:?}", report.scrapes.duplicate_scrapes, report.scrapes.duplicate_pairs);
}
