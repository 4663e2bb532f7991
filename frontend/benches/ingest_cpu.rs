//! CPU per ingested node scrape, for instruction counting.
//!
//! Not a timing benchmark: a harness to run under `valgrind --tool=callgrind`, whose
//! instruction counts are repeatable on a shared machine. It builds the benches' design-scale
//! store (`cluster`: 5000 nodes x 30 pods, two scrapes each), encodes `N` further scrapes of one
//! node as the wire batches a shard sends (one scrape per batch), and then measures what
//! upstream does per received batch: decode it, ingest it, drop it.
//!
//! Only the measured function is collected (`--toggle-collect`), so Ir / N is the CPU per
//! ingested scrape:
//!
//! ```text
//! cargo bench -p shardmetrics-frontend --bench ingest_cpu --no-run
//! B=$(ls -t target/release/deps/ingest_cpu-* | grep -v '\.d$' | head -1)
//! valgrind --tool=callgrind --collect-atstart=no --toggle-collect='*measured*' \
//!     --callgrind-out-file=/tmp/cg.ingest $B 2000 2>&1 | grep Collected
//! ```
//!
//! Without valgrind it prints wall time per scrape (indicative only).

// Wall time per scrape is what this harness prints without valgrind: std::time is the point.
#![allow(clippy::disallowed_types, clippy::disallowed_methods)]

mod cluster;

use std::time::Instant;

use cluster::{cluster, scrape};
use shardmetrics_frontend::store::{Ingested, Store};
use shardmetrics_proto::v1::SampleBatch;
use shardmetrics_proto::{ShardIdentity, decode_batch, encode_batch};

/// The node whose scrapes are measured.
const MEASURED_NODE: usize = 42;

/// Decodes and ingests every batch, in order, as upstream does; returns how many were applied.
#[inline(never)]
fn measured(store: &Store, batches: Vec<SampleBatch>) -> usize {
    let mut applied = 0;
    for wire in batches {
        let batch = decode_batch(wire).expect("decodes");
        applied += store.ingest(&batch.scrapes, &batch.released).iter().filter(|o| **o == Ingested::Applied).count();
    }
    applied
}

fn main() {
    let n: usize = std::env::args().nth(1).and_then(|a| a.parse().ok()).unwrap_or(1000);
    let (store, _metadata, _api) = cluster();
    let shard = ShardIdentity { shard_id: "shard-0".into(), epoch: 1 };
    let batches: Vec<SampleBatch> =
        (0..n).map(|i| encode_batch(&shard, &[&scrape(MEASURED_NODE, 30_000 + 15_000 * i as i64)], &[], false)).collect();
    let start = Instant::now();
    let applied = measured(&store, batches);
    let elapsed = start.elapsed();
    assert_eq!(applied, n, "every scrape is newer than the last");
    println!("{n} scrapes decoded and ingested, {:.2} µs each (wall time, indicative)", elapsed.as_secs_f64() * 1e6 / n as f64);
}
