//! The design-scale cluster the frontend benches share: 5000 nodes x 30 pods = 150k pods
//! (~1.5 containers per pod), as node scrapes for the store and as running-pod/node metadata
//! with labels (`app` and a `pod-template-hash` per app, as a Deployment's pods carry). Two
//! shapes: [`DESIGN`] (500 namespaces of 10 apps) and [`DEPLOYMENTS`] (5 namespaces of 1500
//! 20-pod Deployments).

use std::collections::BTreeMap;
use std::sync::Arc;

use kube::runtime::watcher::Event;
use shardmetrics_frontend::api::router::Api;
use shardmetrics_frontend::metadata::Metadata;
use shardmetrics_frontend::names::PodNames;
use shardmetrics_frontend::store::{Store, StoreConfig};
use shardmetrics_plumbing::clock::ManualClock;
use shardmetrics_proto::{ContainerSample, NodeScrape, PodSamples, Point};

/// The benches' epoch (2026-01-01T00:00:00Z), Unix ms.
pub const T0: i64 = 1_767_225_600_000;
/// Nodes in the cluster.
pub const NODES: usize = 5000;
/// Pods per node.
pub const PODS_PER_NODE: usize = 30;

/// How the cluster's pods are spread over namespaces and apps (Deployments): pod `i` is in
/// namespace `i % namespaces`, app `(i / namespaces) % apps_per_namespace`, so every app has
/// `NODES * PODS_PER_NODE / namespaces / apps_per_namespace` pods.
#[derive(Debug, Clone, Copy)]
pub struct Shape {
    /// Namespaces the pods are spread over.
    pub namespaces: usize,
    /// Distinct `app` labels per namespace.
    pub apps_per_namespace: usize,
}

/// 500 namespaces of 10 apps: 300 pods per namespace, 30 per app.
pub const DESIGN: Shape = Shape { namespaces: 500, apps_per_namespace: 10 };

/// 5 namespaces of 1500 apps: 30 000 pods per namespace, 20 per app (a 20-pod Deployment each).
#[allow(dead_code)] // not every bench uses this shape
pub const DEPLOYMENTS: Shape = Shape { namespaces: 5, apps_per_namespace: 1500 };

/// The scrape of node `node` of the [`DESIGN`] cluster taken `t_ms` after [`T0`].
pub fn scrape(node: usize, t_ms: i64) -> NodeScrape {
    DESIGN.scrape(node, t_ms)
}

/// The [`DESIGN`] cluster; see [`Shape::cluster`].
pub fn cluster() -> (Arc<Store>, Arc<Metadata>, Api) {
    DESIGN.cluster()
}

/// The labels of a pod of `app`: the app and its ReplicaSet's `pod-template-hash`.
pub fn pod_labels(app: String) -> BTreeMap<String, String> {
    // FNV-1a of the app name: a stable 10-hex-digit stand-in for the template hash.
    let hash = app.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3));
    BTreeMap::from([("app".to_owned(), app), ("pod-template-hash".to_owned(), format!("{:010x}", hash & 0xff_ffff_ffff))])
}

impl Shape {
    /// Pod `i`: (namespace, name, app label, container names).
    pub fn pod(self, i: usize) -> (String, String, String, Vec<&'static str>) {
        let ns = format!("team-{:03}", i % self.namespaces);
        let app = format!("app-{}", (i / self.namespaces) % self.apps_per_namespace);
        let containers = if i.is_multiple_of(2) { vec!["app", "istio-proxy"] } else { vec!["app"] };
        (ns, format!("{app}-{:08x}-{:05}", i.wrapping_mul(2_654_435_761) & 0xffff_ffff, i), app, containers)
    }

    /// The scrape of node `node` taken `t_ms` after [`T0`].
    pub fn scrape(self, node: usize, t_ms: i64) -> NodeScrape {
        let point = |k: u64| Point { timestamp_ms: T0 + t_ms, cpu_usage_ns: k * t_ms as u64 * 1_000_000 + 1, memory_working_set_bytes: k << 24, swap_usage_bytes: None };
        NodeScrape {
            node: format!("node-{node:05}"),
            scraped_at_ms: T0 + t_ms + 30,
            node_usage: Some(point(8)),
            pods: (0..PODS_PER_NODE)
                .map(|p| {
                    let (namespace, name, _, containers) = self.pod(node * PODS_PER_NODE + p);
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

    /// A store and API holding the whole cluster with rates, plus the metadata (labels). The
    /// clock stands at `T0 + 20 s`, so both scrapes (at 0 and 15 s) are fresh.
    pub fn cluster(self) -> (Arc<Store>, Arc<Metadata>, Api) {
        let clock = ManualClock::new(T0 + 20_000);
        // One pod-name table for both, as a replica wires them.
        let names = PodNames::shared();
        let store = Arc::new(Store::with_pod_names(StoreConfig { resolution_ms: 15_000, max_staleness_ms: 45_000 }, clock.clone(), names.clone()));
        let metadata = Metadata::with_pod_names(names);
        metadata.apply_pod(Event::Init);
        for i in 0..NODES * PODS_PER_NODE {
            let (ns, name, app, _) = self.pod(i);
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
                store.ingest_scrape(&self.scrape(n, t));
            }
        }
        let api = Api::new(store.clone(), Some(metadata.clone()), clock, None);
        (store, metadata, api)
    }
}
