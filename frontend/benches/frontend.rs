//! Frontend hot paths at the design scale (5000 nodes x 30 pods = 150k pods, ~1.5 containers
//! per pod): store ingest of one node scrape, an HPA-style namespace + label query (as a store
//! query and as the HPA's exact request through the router, encoded), and the full pod list
//! encoded as JSON and as protobuf.
//!
//! Run: `cargo bench -p shardmetrics-frontend --bench frontend`.

use std::collections::BTreeMap;
use std::hint::black_box;
use std::sync::Arc;

use criterion::{BatchSize, Criterion, Throughput, criterion_group, criterion_main};
use kube::runtime::watcher::Event;
use shardmetrics_frontend::api::router::Api;
use shardmetrics_frontend::api::selector::{FieldSelector, LabelSelector};
use shardmetrics_frontend::api::{json, protobuf};
use shardmetrics_frontend::metadata::Metadata;
use shardmetrics_frontend::store::{Ingested, Store, StoreConfig};
use shardmetrics_proto::clock::ManualClock;
use shardmetrics_proto::{ContainerSample, NodeScrape, PodSamples, Point};

const T0: i64 = 1_767_225_600_000;
const NODES: usize = 5000;
const PODS_PER_NODE: usize = 30;
const NAMESPACES: usize = 500;
const APPS_PER_NAMESPACE: usize = 10;

/// Pod `i` of the cluster: (namespace, name, app label, container names).
fn pod(i: usize) -> (String, String, String, Vec<&'static str>) {
    let ns = format!("team-{:03}", i % NAMESPACES);
    let app = format!("app-{}", (i / NAMESPACES) % APPS_PER_NAMESPACE);
    let containers = if i.is_multiple_of(2) { vec!["app", "istio-proxy"] } else { vec!["app"] };
    (ns, format!("{app}-{:08x}-{:05}", i.wrapping_mul(2_654_435_761) & 0xffff_ffff, i), app, containers)
}

fn scrape(node: usize, t_ms: i64) -> NodeScrape {
    let point = |k: u64| Point { timestamp_ms: T0 + t_ms, cpu_usage_ns: k * t_ms as u64 * 1_000_000 + 1, memory_working_set_bytes: k << 24 };
    NodeScrape {
        node: format!("node-{node:05}"),
        scraped_at_ms: T0 + t_ms + 30,
        node_usage: Some(point(8)),
        pods: (0..PODS_PER_NODE)
            .map(|p| {
                let (namespace, name, _, containers) = pod(node * PODS_PER_NODE + p);
                PodSamples {
                    namespace,
                    name,
                    containers: containers
                        .iter()
                        .map(|c| ContainerSample { name: (*c).into(), start_time_ms: T0 - 86_400_000, usage: point(1 + p as u64 % 3) })
                        .collect(),
                }
            })
            .collect(),
    }
}

/// A store and API holding the whole cluster with rates, plus the metadata (labels).
fn cluster() -> (Arc<Store>, Api) {
    let clock = ManualClock::new(T0 + 20_000);
    let store = Arc::new(Store::new(StoreConfig { resolution_ms: 15_000, max_staleness_ms: 45_000 }, clock.clone()));
    let metadata = Metadata::new();
    metadata.apply_pod(Event::Init);
    for i in 0..NODES * PODS_PER_NODE {
        let (ns, name, app, _) = pod(i);
        let labels = BTreeMap::from([("app".to_owned(), app), ("pod-template-hash".to_owned(), "5d4f8c9b7".to_owned())]);
        metadata.apply_pod(Event::InitApply(((ns, name), labels)));
    }
    metadata.apply_pod(Event::InitDone);
    metadata.apply_node(Event::Init);
    for n in 0..NODES {
        metadata.apply_node(Event::InitApply((format!("node-{n:05}"), BTreeMap::new())));
    }
    metadata.apply_node(Event::InitDone);
    for t in [0, 15_000] {
        for n in 0..NODES {
            store.ingest_scrape(&scrape(n, t));
        }
    }
    let api = Api::new(store.clone(), Some(metadata), clock, None);
    (store, api)
}

/// Resident set size of this process in bytes (Linux), 0 elsewhere.
fn rss_bytes() -> u64 {
    std::fs::read_to_string("/proc/self/statm")
        .ok()
        .and_then(|s| s.split_whitespace().nth(1).and_then(|p| p.parse::<u64>().ok()))
        .map_or(0, |pages| pages * 4096)
}

fn benches(c: &mut Criterion) {
    let before = rss_bytes();
    let (store, api) = cluster();
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
            black_box(json::pod_list(items, T0 + 20_000).collect_bytes().len())
        })
    });
    group.bench_function("list_all_150k_pods_protobuf", |b| {
        b.iter(|| {
            let items = api.list_pods(None, &everything, &no_fields, T0 + 20_000);
            black_box(protobuf::pod_list(items, T0 + 20_000).collect_bytes().len())
        })
    });
    group.finish();
    let items = api.list_pods(None, &everything, &no_fields, T0 + 20_000);
    eprintln!(
        "full list sizes: JSON {} bytes, protobuf {} bytes",
        json::pod_list(items.clone(), T0).collect_bytes().len(),
        protobuf::pod_list(items, T0).collect_bytes().len()
    );
}

criterion_group!(frontend, benches);
criterion_main!(frontend);
