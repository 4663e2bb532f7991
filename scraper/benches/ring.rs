//! Cost of a membership change: rebuilding the ring and re-deciding ownership of 5000 nodes.
//! Run: `cargo bench -p shardmetrics-scraper --bench ring`.

use criterion::{Criterion, criterion_group, criterion_main};
use shardmetrics_scraper::ring::Ring;
use std::hint::black_box;

fn bench(c: &mut Criterion) {
    let nodes: Vec<String> = (0..5000).map(|i| format!("ip-10-0-{}-{}.ec2.internal", i / 256, i % 256)).collect();
    for shards in [3usize, 16] {
        let members: Vec<String> = (0..shards).map(|i| format!("shardmetrics-scraper-{i}")).collect();
        c.bench_function(&format!("ring_build_{shards}_shards"), |b| b.iter(|| Ring::new(black_box(members.clone()))));
        let ring = Ring::new(members.clone());
        c.bench_function(&format!("ring_owner_5000_nodes_{shards}_shards"), |b| {
            b.iter(|| nodes.iter().filter(|n| ring.is_owner("shardmetrics-scraper-0", n)).count())
        });
    }
}

criterion_group!(benches, bench);
criterion_main!(benches);
