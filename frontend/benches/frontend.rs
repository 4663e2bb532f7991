//! Frontend hot paths at the design scale (5000 nodes x 30 pods = 150k pods, ~1.5 containers
//! per pod): store ingest of one node scrape (alone, and decoded from its wire batch as
//! upstream receives it), an HPA-style namespace + label query (as a store
//! query and as the HPA's exact request through the router, encoded), the full pod list
//! encoded as JSON and as protobuf, and the HPA query for one 20-pod Deployment among 30 000
//! pods of its namespace (a second cluster of the same size in 5 namespaces).
//!
//! Run: `cargo bench -p shardmetrics-frontend --bench frontend`.

mod cluster;

use std::hint::black_box;

use cluster::{DEPLOYMENTS, NODES, PODS_PER_NODE, T0, cluster, scrape};
use criterion::{BatchSize, Criterion, Throughput, criterion_group, criterion_main};
use shardmetrics_plumbing::selector::{FieldSelector, LabelSelector};
use shardmetrics_frontend::api::version::ApiVersion;
use shardmetrics_frontend::api::{json, protobuf};
use shardmetrics_frontend::store::Ingested;
use shardmetrics_proto::{ShardIdentity, decode_batch, encode_batch};

/// Resident set size of this process in bytes (Linux), 0 elsewhere.
fn rss_bytes() -> u64 {
    std::fs::read_to_string("/proc/self/statm")
        .ok()
        .and_then(|s| s.split_whitespace().nth(1).and_then(|p| p.parse::<u64>().ok()))
        .map_or(0, |pages| pages * 4096)
}

fn benches(c: &mut Criterion) {
    let before = rss_bytes();
    let (store, _metadata, api) = cluster();
    eprintln!("RSS growth for store + metadata of the whole cluster: {} MiB", (rss_bytes().saturating_sub(before)) >> 20);
    let counts = store.counts();
    assert_eq!(counts.pods, NODES * PODS_PER_NODE);
    eprintln!("cluster: {} nodes, {} pods, {} containers", counts.nodes, counts.pods, counts.containers);

    // Ingest: the same node re-scraped with an unchanged pod set (the steady state).
    let mut group = c.benchmark_group("store");
    // Each iteration ingests a newer scrape (built outside the timing), so every one is applied.
    let mut t = 15_000i64;
    group.throughput(Throughput::Elements(1));
    group.bench_function("ingest_30_pod_node_scrape", |b| {
        b.iter_batched(
            || {
                t += 15_000;
                scrape(42, t)
            },
            |s| {
                let outcome = store.ingest_scrape(&s);
                assert_eq!(outcome, Ingested::Applied);
                s
            },
            BatchSize::SmallInput,
        )
    });
    // What upstream does per received batch of one scrape: decode the wire message (string
    // table lookups, domain types), ingest it and drop it. The wire batch is built outside the
    // timing.
    let shard = ShardIdentity { shard_id: "shard-0".into(), epoch: 1 };
    group.bench_function("decode_and_ingest_30_pod_node_batch", |b| {
        b.iter_batched(
            || {
                t += 15_000;
                encode_batch(&shard, &[&scrape(43, t)], &[], false)
            },
            |wire| {
                let batch = decode_batch(wire).expect("decodes");
                let outcomes = store.ingest(&batch.scrapes, &batch.released);
                assert_eq!(outcomes, [Ingested::Applied]);
            },
            BatchSize::SmallInput,
        )
    });
    group.finish();

    let mut group = c.benchmark_group("query");
    let everything = LabelSelector::default();
    let no_fields = FieldSelector::default();
    let app = LabelSelector::parse("app=app-3").expect("selector");
    let hpa = api.list_pods(Some("team-042"), &app, &no_fields, T0 + 20_000);
    eprintln!("HPA query matches {} pods of {} in its namespace", hpa.len(), api.list_pods(Some("team-042"), &everything, &no_fields, T0).len());
    group.bench_function("hpa_namespace_label_query_150k_pods", |b| {
        b.iter(|| black_box(api.list_pods(Some("team-042"), &app, &no_fields, T0 + 20_000)))
    });
    // The HPA's exact request through the real router: path and query parsing, selector
    // parsing, the namespace index, label matching and the encoded body, as served.
    let hpa_uri: http::Uri = "/apis/metrics.k8s.io/v1beta1/namespaces/team-042/pods?labelSelector=app%3Dapp-3".parse().expect("uri");
    for (name, accept) in [
        ("hpa_request_through_router_json", "application/json"),
        ("hpa_request_through_router_protobuf", "application/vnd.kubernetes.protobuf,application/json"),
    ] {
        let mut headers = http::HeaderMap::new();
        headers.insert(http::header::ACCEPT, http::HeaderValue::from_static(accept));
        let body = api.handle(&http::Method::GET, &hpa_uri, &headers).response.into_body().collect_bytes();
        eprintln!("{name}: {} bytes", body.len());
        group.bench_function(name, |b| {
            b.iter(|| black_box(api.handle(&http::Method::GET, &hpa_uri, &headers).response.into_body().collect_bytes().len()))
        });
    }
    group.sample_size(10);
    group.bench_function("list_all_150k_pods_query_only", |b| {
        b.iter(|| black_box(api.list_pods(None, &everything, &no_fields, T0 + 20_000).len()))
    });
    group.bench_function("list_all_150k_pods_json", |b| {
        b.iter(|| {
            let items = api.list_pods(None, &everything, &no_fields, T0 + 20_000);
            black_box(json::pod_list(items, T0 + 20_000, ApiVersion::V1beta1).collect_bytes().len())
        })
    });
    group.bench_function("list_all_150k_pods_protobuf", |b| {
        b.iter(|| {
            let items = api.list_pods(None, &everything, &no_fields, T0 + 20_000);
            black_box(protobuf::pod_list(items, T0 + 20_000, ApiVersion::V1beta1).collect_bytes().len())
        })
    });
    group.finish();
    let items = api.list_pods(None, &everything, &no_fields, T0 + 20_000);
    eprintln!(
        "full list sizes: JSON {} bytes, protobuf {} bytes",
        json::pod_list(items.clone(), T0, ApiVersion::V1beta1).collect_bytes().len(),
        protobuf::pod_list(items, T0, ApiVersion::V1beta1).collect_bytes().len()
    );
    drop((store, api));

    // The HPA query where a namespace is large: 150k pods in 5 namespaces of 1500 20-pod
    // Deployments; one Deployment's pods of the 30 000 in its namespace.
    let before = rss_bytes();
    let (store, _metadata, api) = DEPLOYMENTS.cluster();
    eprintln!("RSS growth for store + metadata, 5-namespace cluster: {} MiB", (rss_bytes().saturating_sub(before)) >> 20);
    assert_eq!(store.counts().pods, NODES * PODS_PER_NODE);
    let app = LabelSelector::parse("app=app-1042").expect("selector");
    assert_eq!(api.list_pods(Some("team-002"), &app, &no_fields, T0 + 20_000).len(), 20);
    let mut group = c.benchmark_group("query");
    group.bench_function("hpa_20_pod_deployment_of_30k_pods_in_namespace", |b| {
        b.iter(|| black_box(api.list_pods(Some("team-002"), &app, &no_fields, T0 + 20_000)))
    });
    let hpa_uri: http::Uri = "/apis/metrics.k8s.io/v1beta1/namespaces/team-002/pods?labelSelector=app%3Dapp-1042".parse().expect("uri");
    let headers = http::HeaderMap::new();
    group.bench_function("hpa_20_pod_deployment_of_30k_pods_in_namespace_through_router_json", |b| {
        b.iter(|| black_box(api.handle(&http::Method::GET, &hpa_uri, &headers).response.into_body().collect_bytes().len()))
    });
    group.finish();
}

criterion_group!(frontend, benches);
criterion_main!(frontend);
