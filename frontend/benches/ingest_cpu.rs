//! CPU per ingested node scrape, and per HPA query, for instruction counting.
//!
//! Not a timing benchmark: a harness to run under `valgrind --tool=callgrind`, whose
//! instruction counts are repeatable on a shared machine. Only the measured function is
//! collected (`--toggle-collect`), so Ir / N is the CPU per scrape or per query (the `list` mode,
//! whose work spans two threads, is measured with dumps instead; see below).
//!
//! - `ingest_cpu N` (default): builds the benches' design-scale store (`cluster`: 5000 nodes x
//!   30 pods, two scrapes each), encodes `N` further scrapes of one node as the wire batches a
//!   shard sends (one scrape per batch), and measures what upstream does per received batch:
//!   decode it, ingest it, drop it.
//! - `ingest_cpu hpa N`: builds the same 150k pods in 5 namespaces of 1500 20-pod Deployments
//!   (`cluster::DEPLOYMENTS`, metadata included) and measures `N` HPA queries
//!   (`namespaces/<ns>/pods?labelSelector=app=<deployment>`, 20 pods each, a different
//!   Deployment each time) as `Api::list_pods`: selection, store lookups and staleness, no
//!   encoding.
//! - `ingest_cpu hpa-request N`: the same queries as the HPA's exact request through
//!   `Api::handle` (path, query and selector parsing, JSON body collected).
//! - `ingest_cpu list json|protobuf N`: the same cluster (150k pods with metadata) and `N`
//!   cluster-wide pod lists (`GET .../v1beta1/pods`, what `kubectl top pods -A` asks) through
//!   `Api::handle` with the whole body read: selection, store/metadata join, encoding. Ir /
//!   (N x 150 000) is the CPU per listed pod. The selection runs on a bulk thread of its own,
//!   which `--toggle-collect` does not count: this mode is measured with dumps instead (the
//!   second dump holds every thread's Ir of the measured lists; command below).
//! - `ingest_cpu pod-events N`: the same cluster's metadata, and `N` pod watch events measured
//!   as `Metadata::apply_pod`, in rounds of three on different pods: relabel one (a new
//!   `pod-template-hash`), delete another, add that one back. What keeping the label index up
//!   to date costs per event.
//!
//! ```text
//! cargo bench -p shardmetrics-frontend --bench ingest_cpu --no-run
//! B=$(ls -t target/release/deps/ingest_cpu-* | grep -v '\.d$' | head -1)
//! valgrind --tool=callgrind --collect-atstart=no --toggle-collect='*measured*' \
//!     --callgrind-out-file=/tmp/cg.ingest $B 2000 2>&1 | grep Collected
//! valgrind --tool=callgrind --collect-atstart=no --toggle-collect='*measured*' \
//!     --callgrind-out-file=/tmp/cg.hpa $B hpa 200 2>&1 | grep Collected
//! valgrind --tool=callgrind --dump-before='*measured_lists*' --dump-before='*end_of_measurement*' \
//!     --callgrind-out-file=/tmp/cg.list $B list protobuf 2 >/dev/null 2>&1
//! grep '^totals:' /tmp/cg.list.2    # every thread, 2 lists: / 300 000 per listed pod
//! ```
//!
//! Without valgrind it prints wall time per scrape or query (indicative only).

// Wall time per scrape is what this harness prints without valgrind: std::time is the point.
#![allow(clippy::disallowed_types, clippy::disallowed_methods)]

mod cluster;

use std::collections::BTreeMap;
use std::time::Instant;

use cluster::{DEPLOYMENTS, NODES, PODS_PER_NODE, T0, cluster, pod_labels, scrape};
use kube::runtime::watcher::Event;
use shardmetrics_frontend::api::router::Api;
use shardmetrics_frontend::metadata::Metadata;
use shardmetrics_frontend::store::{Ingested, Store};
use shardmetrics_plumbing::selector::{FieldSelector, LabelSelector};
use shardmetrics_proto::v1::SampleBatch;
use shardmetrics_proto::{ShardIdentity, decode_batch, encode_batch};

/// The node whose scrapes are measured.
const MEASURED_NODE: usize = 42;
/// Pods each HPA query returns (the Deployments' size in `DEPLOYMENTS`).
const DEPLOYMENT_PODS: usize = 20;

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

/// Runs every HPA query (namespace, selector) as a store query; returns the pods returned.
#[inline(never)]
fn measured_hpa_queries(api: &Api, queries: &[(String, LabelSelector)]) -> usize {
    let fields = FieldSelector::default();
    queries.iter().map(|(ns, selector)| api.list_pods(Some(ns), selector, &fields, T0 + 20_000).len()).sum()
}

/// Runs every HPA request through the router; returns the JSON bytes served.
#[inline(never)]
fn measured_hpa_requests(api: &Api, uris: &[http::Uri]) -> usize {
    let headers = http::HeaderMap::new();
    uris.iter().map(|u| api.handle(&http::Method::GET, u, &headers).response.into_body().collect_bytes().len()).sum()
}

/// Runs `n` cluster-wide pod lists through the router, reading each whole body; returns the
/// bytes served. Part of each list (the selection: store walk, metadata lookups) runs on a bulk
/// thread of its own (`items::prefetched`), which a `--toggle-collect` of this function does
/// not count (callgrind toggles per thread): measure it with `--dump-before` of this function
/// and of [`end_of_measurement`], whose dump between them counts every thread.
#[inline(never)]
fn measured_lists(api: &Api, n: usize, headers: &http::HeaderMap) -> usize {
    let uri: http::Uri = "/apis/metrics.k8s.io/v1beta1/pods".parse().expect("uri");
    (0..n).map(|_| api.handle(&http::Method::GET, &uri, headers).response.into_body().collect_bytes().len()).sum()
}

/// Called right after a measured run, for `--dump-before='*end_of_measurement*'`: the dump it
/// starts holds what every thread ran since the previous dump (`--dump-after` of the measured
/// function does not fire under callgrind 3.19).
#[inline(never)]
fn end_of_measurement(served: usize) -> usize {
    std::hint::black_box(served)
}

/// Applies every pod event, in order; returns how many were applied.
#[inline(never)]
fn measured_pod_events(metadata: &Metadata, events: Vec<PodEvent>) -> usize {
    let n = events.len();
    for e in events {
        metadata.apply_pod(e);
    }
    n
}

/// A pod watch event as `Metadata::apply_pod` takes it.
type PodEvent = Event<((String, String), BTreeMap<String, String>)>;

/// The `i`th HPA query: namespace and Deployment vary, so no two in a row are alike.
fn hpa_query(i: usize) -> (String, String) {
    (format!("team-{:03}", i % DEPLOYMENTS.namespaces), format!("app-{}", (i * 7919) % DEPLOYMENTS.apps_per_namespace))
}

fn ingest(n: usize) {
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

fn hpa(n: usize, through_router: bool) {
    let (store, _metadata, api) = DEPLOYMENTS.cluster();
    let counts = store.counts();
    println!("cluster: {} pods in {} namespaces, {} pods per Deployment", counts.pods, DEPLOYMENTS.namespaces, DEPLOYMENT_PODS);
    let start;
    let out = if through_router {
        let uris: Vec<http::Uri> = (0..n)
            .map(|i| {
                let (ns, app) = hpa_query(i);
                format!("/apis/metrics.k8s.io/v1beta1/namespaces/{ns}/pods?labelSelector=app%3D{app}").parse().expect("uri")
            })
            .collect();
        start = Instant::now();
        let bytes = measured_hpa_requests(&api, &uris);
        assert!(bytes > n * DEPLOYMENT_PODS * 200, "each answer lists its pods ({bytes} bytes)");
        bytes
    } else {
        let queries: Vec<(String, LabelSelector)> = (0..n)
            .map(|i| {
                let (ns, app) = hpa_query(i);
                (ns, LabelSelector::parse(&format!("app={app}")).expect("selector"))
            })
            .collect();
        start = Instant::now();
        let pods = measured_hpa_queries(&api, &queries);
        assert_eq!(pods, n * DEPLOYMENT_PODS, "every query returns its Deployment's pods");
        pods
    };
    let elapsed = start.elapsed();
    println!("{n} HPA {}, {out} in all, {:.2} µs each (wall time, indicative)", if through_router { "requests (JSON bytes)" } else { "queries (pods)" }, elapsed.as_secs_f64() * 1e6 / n as f64);
}

fn lists(encoding: &str, n: usize) {
    let (store, _metadata, api) = DEPLOYMENTS.cluster();
    let pods = store.counts().pods;
    let mut headers = http::HeaderMap::new();
    if encoding == "protobuf" {
        headers.insert(http::header::ACCEPT, http::HeaderValue::from_static("application/vnd.kubernetes.protobuf"));
    }
    // One list first, not collected (not in a `measured` function), so the measured ones find
    // the allocator warm.
    let uri: http::Uri = "/apis/metrics.k8s.io/v1beta1/pods".parse().expect("uri");
    let first = api.handle(&http::Method::GET, &uri, &headers).response.into_body().collect_bytes();
    let one = first.len();
    // FNV-1a of the whole body, to compare encoders' output across commits.
    let digest = first.iter().fold(0xcbf2_9ce4_8422_2325u64, |h, b| (h ^ u64::from(*b)).wrapping_mul(0x100_0000_01b3));
    let start = Instant::now();
    let bytes = end_of_measurement(measured_lists(&api, n, &headers));
    let elapsed = start.elapsed();
    assert_eq!(bytes, one * n, "every list is the whole cluster");
    println!(
        "{n} {encoding} lists of {pods} pods, {} bytes each (FNV-1a {digest:016x}), {:.1} ms each, {:.0} ns per pod (wall time, indicative)",
        one,
        elapsed.as_secs_f64() * 1e3 / n as f64,
        elapsed.as_secs_f64() * 1e9 / (n * pods) as f64
    );
}

fn pod_events(n: usize) {
    let (_store, metadata, _api) = DEPLOYMENTS.cluster();
    // Whole rounds, so every deleted pod is back at the end.
    let n = n.div_ceil(3) * 3;
    let mut events: Vec<PodEvent> = Vec::with_capacity(n);
    for i in 0..n {
        let round = i / 3;
        let (ns, name, app, _) = DEPLOYMENTS.pod((round * 7919 + (i % 3).min(1) * 75_001) % (NODES * PODS_PER_NODE));
        let mut labels = pod_labels(app);
        events.push(match i % 3 {
            0 => {
                labels.insert("pod-template-hash".into(), format!("rollout{round:05}"));
                Event::Apply(((ns, name), labels))
            }
            1 => Event::Delete(((ns, name), BTreeMap::new())),
            _ => Event::Apply(((ns, name), labels)),
        });
    }
    let start = Instant::now();
    let applied = measured_pod_events(&metadata, events);
    let elapsed = start.elapsed();
    assert_eq!(metadata.counts().0, NODES * PODS_PER_NODE, "every deleted pod came back");
    println!("{applied} pod events applied, {:.2} µs each (wall time, indicative)", elapsed.as_secs_f64() * 1e6 / applied as f64);
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let count = |a: Option<&String>, default: usize| a.and_then(|a| a.parse().ok()).unwrap_or(default);
    match args.first().map(String::as_str) {
        Some("hpa") => hpa(count(args.get(1), 100), false),
        Some("hpa-request") => hpa(count(args.get(1), 100), true),
        Some("list") => lists(args.get(1).map_or("json", String::as_str), count(args.get(2), 3)),
        Some("pod-events") => pod_events(count(args.get(1), 1000)),
        // Criterion's `cargo bench` runs every bench target with `--bench`: ingest by default.
        _ => ingest(count(args.first(), 1000)),
    }
}
