//! Overload (`run --fault overload=N`): far more concurrent full pod lists than a frontend
//! admits; the excess gets 429 with Retry-After, no frontend crashes, each stays ready and keeps
//! ingesting scrapes.

use std::time::Duration;

use crate::support::{demo, measured, only_fault, run};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_overload_gets_429s_without_crashing_or_stalling_ingest() {
    let _serial = crate::support::serial().await;
    let dir = tempfile::tempdir().unwrap();
    let mut config = demo(dir.path(), 20, 2, 2);
    config.pods_per_node = 10;
    config.frontend_max_requests_inflight = Some(4);
    let report = run(dir.path(), config, Duration::from_secs(15), &["overload=48@1s"]).await;
    let f = only_fault(&report);
    assert!(measured(f, "ok_count") > 0.0, "some lists served");
    assert!(measured(f, "429_with_retry_after_count") > 0.0, "the excess refused with 429 + Retry-After");
    assert_eq!(measured(f, "429_without_retry_after_count"), 0.0);
    assert_eq!(measured(f, "other_status_count"), 0.0);
    assert_eq!(measured(f, "transport_error_count"), 0.0, "no frontend crashed or dropped connections");
    assert_eq!(measured(f, "frontends_ready_after_count"), 2.0);
    assert_eq!(measured(f, "frontends_kept_ingesting_count"), 2.0, "scrapes kept arriving during the overload");
    // The probe is refused like everyone else during the burst; after it, everything is served.
    let last = report.timeline.node_probes.last().expect("node probes");
    assert!(last.t_s > 12.0, "a probe after the burst: {last:?}");
    assert_eq!(last.served, 20, "{last:?}");
    assert_eq!(last.fresh, 20, "{last:?}");
}
