//! The kubelet `/metrics/resource` parser on arbitrary bytes (a broken or hostile kubelet).
//!
//! Invariants: parsing never panics; a successful parse keeps only complete containers, names
//! every pod once and every container once per pod, and its scrape survives the gRPC encoding
//! unchanged (it is exactly what a shard streams to frontends).
#![no_main]

use std::collections::HashSet;

use libfuzzer_sys::fuzz_target;
use shardmetrics_proto::{ShardIdentity, decode_batch, encode_batch};
use shardmetrics_scraper::kubelet::parse_resource_metrics;

/// Scrape time of every input, Unix ms (also the timestamp of samples without one).
const SCRAPED_AT_MS: i64 = 1_767_225_600_000;

fuzz_target!(|data: &[u8]| {
    let Ok(parsed) = parse_resource_metrics("fuzz-node", data, SCRAPED_AT_MS) else { return };
    let scrape = &parsed.scrape;
    assert_eq!(scrape.node, "fuzz-node");
    assert_eq!(scrape.scraped_at_ms, SCRAPED_AT_MS);
    let mut pods = HashSet::new();
    for pod in &scrape.pods {
        assert!(!pod.containers.is_empty(), "pod {}/{} shipped without containers", pod.namespace, pod.name);
        assert!(pods.insert((&pod.namespace, &pod.name)), "pod {}/{} listed twice", pod.namespace, pod.name);
        let mut names = HashSet::new();
        for c in &pod.containers {
            assert!(names.insert(&c.name), "container {} of {}/{} listed twice", c.name, pod.namespace, pod.name);
            assert!(c.start_time_ms >= 0, "negative start time {}", c.start_time_ms);
        }
    }
    let shard = ShardIdentity { shard_id: "fuzz".into(), epoch: 1 };
    let wire = encode_batch(&shard, &[scrape], &[], false);
    let back = decode_batch(wire).expect("a parsed scrape always encodes to a valid batch");
    assert_eq!(back.scrapes.len(), 1);
    assert_eq!(&back.scrapes[0], scrape, "the scrape changed on the wire");
});
