//! The design-scale cluster the frontend benches share: 5000 nodes x 30 pods = 150k pods
//! (~1.5 containers per pod) in 500 namespaces of 10 apps, as node scrapes for the store and as
//! running-pod/node metadata with labels.

use std::collections::BTreeMap;
use std::sync::Arc;

use kube::runtime::watcher::Event;
use shardmetrics_frontend::api::router::Api;
use shardmetrics_frontend::metadata::Metadata;
use shardmetrics_frontend::store::{Store, StoreConfig};
use shardmetrics_plumbing::clock::ManualClock;
use shardmetrics_proto::{ContainerSample, NodeScrape, PodSamples, Point};

/// The benches' epoch (2026-01-01T00:00:00Z), Unix ms.
pub const T0: i64 = 1_767_225_600_000;
/// Nodes in the cluster.
pub const NODES: usize = 5000;
/// Pods per node.
pub const PODS_PER_NODE: usize = 30;
/// Namespaces the pods are spread over.
pub const NAMESPACES: usize = 500;
/// Distinct `app` labels per namespace.
pub const APPS_PER_NAMESPACE: usize = 10;

/// Pod `i` of the cluster: (namespace, name, app label, container names).
pub fn pod(i: usize) -> (String, String, String, Vec<&'static str>) {
    let ns = format!("team-{:03}", i % NAMESPACES);
    let app = format!("app-{}", (i / NAMESPACES) % APPS_PER_NAMESPACE);
    let containers = if i.is_multiple_of(2) { vec!["app", "istio-proxy"] } else { vec!["app"] };
    (ns, format!("{app}-{:08x}-{:05}", i.wrapping_mul(2_654_435_761) & 0xffff_ffff, i), app, containers)
}

/// The scrape of node `node` taken `t_ms` after [`T0`].
pub fn scrape(node: usize, t_ms: i64) -> NodeScrape {
    let point = |k: u64| Point { timestamp_ms: T0 + t_ms, cpu_usage_ns: k * t_ms as u64 * 1_000_000 + 1, memory_working_set_bytes: k << 24, swap_usage_bytes: None };
    NodeScrape {
        node: format!("node-{node:05}"),
        scraped_at_ms: T0 + t_ms + 30,
        node_usage: Some(point(8)),
        pods: (0..PODS_PER_NODE)
            .map(|p| {
                let (namespace, name, _, containers) = pod(node * PODS_PER_NODE + p);
                PodSamples {
                    namespace: namespace.into(),
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

/// The labels of pod `i`'s metadata.
pub fn pod_labels(app: String) -> BTreeMap<String, String> {
    BTreeMap::from([("app".to_owned(), app), ("pod-template-hash".to_owned(), "5d4f8c9b7".to_owned())])
}

/// A store and API holding the whole cluster with rates, plus the metadata (labels). The
/// clock stands at `T0 + 20 s`, so both scrapes (at 0 and 15 s) are fresh.
pub fn cluster() -> (Arc<Store>, Arc<Metadata>, Api) {
    let clock = ManualClock::new(T0 + 20_000);
    let store = Arc::new(Store::new(StoreConfig { resolution_ms: 15_000, max_staleness_ms: 45_000 }, clock.clone()));
    let metadata = Metadata::new();
    metadata.apply_pod(Event::Init);
    for i in 0..NODES * PODS_PER_NODE {
        let (ns, name, app, _) = pod(i);
        metadata.apply_pod(Event::InitApply(((ns, name), pod_labels(app))));
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
    let api = Api::new(store.clone(), Some(metadata.clone()), clock, None);
    (store, metadata, api)
}
