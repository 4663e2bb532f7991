//! Parser throughput on realistic kubelet payloads (30 and 110 pods per node).
//!
//! Criterion reports bytes/s (MB/s) in the `bytes` group (owned result) and the `scrape` group
//! (what a scrape task calls: borrowed strings, reused vectors), and elements/s (samples/s: node
//! point plus one per kept container) in the `samples` group. Single-threaded, so per core.
//! Run: `cargo bench -p shardmetrics-scraper --bench parse`.

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use shardmetrics_scraper::kubelet::fixture::{PayloadSpec, resource_metrics};
use shardmetrics_scraper::kubelet::{ParseScratch, parse_resource_metrics, parse_resource_metrics_with};
use std::hint::black_box;

fn bench(c: &mut Criterion) {
    for pods in [30usize, 110] {
        let body = resource_metrics(&PayloadSpec { pods, seed: 42, timestamp_ms: 1_700_000_000_000 });
        let samples = parse_resource_metrics("node", &body, 0).expect("fixture parses").scrape.sample_count();
        let name = format!("parse_{pods}_pods");
        let mut g = c.benchmark_group("bytes");
        g.throughput(Throughput::Bytes(body.len() as u64));
        g.bench_function(&name, |b| b.iter(|| parse_resource_metrics("node", black_box(&body), 0)));
        g.finish();
        // What a scrape task does: strings borrowed from the body, vectors reused.
        let mut g = c.benchmark_group("scrape");
        g.throughput(Throughput::Bytes(body.len() as u64));
        let mut scratch = ParseScratch::default();
        g.bench_function(&name, |b| {
            b.iter(|| {
                let parsed = parse_resource_metrics_with("node", black_box(&body), 0, &mut scratch).expect("fixture parses");
                let samples = parsed.scrape.sample_count();
                scratch.recycle(parsed);
                samples
            })
        });
        g.finish();
        let mut g = c.benchmark_group("samples");
        g.throughput(Throughput::Elements(samples as u64));
        g.bench_function(&name, |b| b.iter(|| parse_resource_metrics("node", black_box(&body), 0)));
        g.finish();
    }
}

criterion_group!(benches, bench);
criterion_main!(benches);
