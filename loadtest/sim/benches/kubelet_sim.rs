//! How fast the kubelet simulator renders and serves `/metrics/resource`: the cost of one
//! node's body (30 pods, 45 containers, the 5000-node design point), and one HTTPS scrape over
//! a kept-alive connection (the per-request cost a load test pays on the simulator side).

use std::hint::black_box;

use bytes::Bytes;
use criterion::{Criterion, criterion_group, criterion_main};
use http_body_util::{BodyExt, Empty};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use shardmetrics_sim::kubelet::exposition;
use shardmetrics_sim::kubelet::{ContainerUsage, FleetConfig, KubeletFleet, NodeUsage, fixed_tokens};
use shardmetrics_plumbing::pki::{self, Ca};

const NOW: i64 = 1_750_000_000_000;

/// Containers of one pod with their start times (Unix ms).
type Containers = Vec<(ContainerUsage, i64)>;

fn pods(add: &mut dyn FnMut(&str, &str, Containers)) {
    for p in 0..30 {
        let containers = (0..if p % 2 == 0 { 2 } else { 1 })
            .map(|c| (ContainerUsage::new(&format!("container-{c}"), 50 + p * 7, (64 + p) << 20), NOW - 3_600_000))
            .collect();
        add(&format!("namespace-{}", p % 5), &format!("app-{p}-7d9f8b6c5d-x2k4q"), containers);
    }
}

fn bench(c: &mut Criterion) {
    let mut node = NodeUsage::new(NOW - 86_400_000, 100, 1 << 30);
    pods(&mut |ns, name, cs| node.upsert_pod(NOW, ns, name, cs));
    let body_len = exposition::render(&node, NOW).len();
    c.bench_function(&format!("kubelet_render_30_pods_45_containers ({body_len} bytes)"), |b| {
        b.iter(|| black_box(exposition::render(black_box(&node), NOW)))
    });

    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    let ca = Ca::new("bench-ca").unwrap();
    let fleet = KubeletFleet::new(FleetConfig::new(&ca, fixed_tokens(&["t"])).unwrap()).unwrap();
    let kubelet = rt.block_on(fleet.start("bench-node", 100, 1 << 30)).unwrap();
    pods(&mut |ns, name, cs| kubelet.upsert_pod(ns, name, cs));
    let tls = pki::client_config(Some(&ca.root_store()), None).unwrap();
    let connector = hyper_rustls::HttpsConnectorBuilder::new().with_tls_config(tls).https_only().enable_http1().build();
    let client: Client<_, Empty<Bytes>> = Client::builder(TokioExecutor::new()).build(connector);
    let uri = format!("https://127.0.0.1:{}/metrics/resource", kubelet.port());
    c.bench_function("kubelet_https_scrape_keepalive_30_pods", |b| {
        b.iter(|| {
            rt.block_on(async {
                let req = http::Request::get(&uri).header("authorization", "Bearer t").body(Empty::new()).unwrap();
                let resp = client.request(req).await.unwrap();
                black_box(resp.into_body().collect().await.unwrap().to_bytes().len())
            })
        })
    });
}

/// One sweep over 500 kubelets (30 pods each), 64 scrapes in flight, keep-alive connections:
/// client and simulator share the process and its 2 cores, so this is their combined cost.
fn sweep(c: &mut Criterion) {
    use futures::StreamExt;
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    let ca = Ca::new("bench-ca").unwrap();
    let fleet = KubeletFleet::new(FleetConfig::new(&ca, fixed_tokens(&["t"])).unwrap()).unwrap();
    let mut uris = Vec::new();
    for i in 0..500 {
        let k = rt.block_on(fleet.start(&format!("node-{i}"), 100, 1 << 30)).unwrap();
        pods(&mut |ns, name, cs| k.upsert_pod(ns, name, cs));
        uris.push(format!("https://127.0.0.1:{}/metrics/resource", k.port()));
    }
    let tls = pki::client_config(Some(&ca.root_store()), None).unwrap();
    let connector = hyper_rustls::HttpsConnectorBuilder::new().with_tls_config(tls).https_only().enable_http1().build();
    let client: Client<_, Empty<Bytes>> = Client::builder(TokioExecutor::new()).build(connector);
    let mut group = c.benchmark_group("kubelet_fleet");
    group.throughput(criterion::Throughput::Elements(uris.len() as u64));
    group.sample_size(20);
    group.bench_function("sweep_500_kubelets_64_in_flight", |b| {
        b.iter(|| {
            rt.block_on(async {
                futures::stream::iter(uris.iter())
                    .map(|uri| {
                        let client = client.clone();
                        async move {
                            let req = http::Request::get(uri).header("authorization", "Bearer t").body(Empty::new()).unwrap();
                            let resp = client.request(req).await.unwrap();
                            resp.into_body().collect().await.unwrap().to_bytes().len()
                        }
                    })
                    .buffer_unordered(64)
                    .fold(0usize, |acc, n| async move { acc + n })
                    .await
            })
        })
    });
    group.finish();
}

criterion_group!(benches, bench, sweep);
criterion_main!(benches);
