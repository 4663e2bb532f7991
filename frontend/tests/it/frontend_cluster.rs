//! Frontend replicas on a simulated cluster: the API-server simulator (Leases, metadata-only
//! Pod/Node watches, the authentication ConfigMap, SubjectAccessReview, the aggregation proxy
//! with its front-proxy certificate), simulated kubelets, and real scraper shards, all wired
//! through the real CLI paths. Queries go through the simulator's aggregation layer with a
//! kube-rs client, as `kubectl top` and the HPA would.

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::time::Duration;

use clap::Parser;
use http::header;
use k8s_openapi::api::core::v1::Pod;
use prost::Message;
use serde_json::Value;
use shardmetrics_frontend::api::protobuf::{PodMetricsList, decode_envelope};
use shardmetrics_frontend::cli as frontend_cli;
use shardmetrics_sim::apiserver::{ApiServer, ApiServerConfig, DEFAULT_ADMIN, RunningApiServer};
use shardmetrics_sim::cluster::{Cluster, ClusterConfig, FRONTEND_USER, NOACCESS_USER, SCRAPER_USER, standard_policy};
use shardmetrics_scraper::cli::{Args as ScraperArgs, Environment, prepare, validate};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

/// Scrape interval of the shards (the CLI minimum is 5s; `run` takes any).
const RESOLUTION: Duration = Duration::from_secs(2);

struct Sim {
    api: RunningApiServer,
    cluster: Cluster,
    scraper_kubeconfig: tempfile::NamedTempFile,
    frontend_kubeconfig: tempfile::NamedTempFile,
}

async fn sim(nodes: usize, pods_per_node: usize) -> Sim {
    let api = ApiServer::start(ApiServerConfig { policy: standard_policy(), ..ApiServerConfig::default() }).await.expect("api server");
    let cluster = Cluster::start(
        &api,
        ClusterConfig { nodes, pods_per_node, containers_per_pod: 2, memory_amplitude_percent: 0, ..ClusterConfig::default() },
    )
    .await
    .expect("cluster");
    let scraper_kubeconfig = tempfile::NamedTempFile::new().expect("tempfile");
    api.write_kubeconfig(scraper_kubeconfig.path(), &[api.token_context("sim-scraper", SCRAPER_USER).expect("context")]).expect("write");
    let frontend_kubeconfig = tempfile::NamedTempFile::new().expect("tempfile");
    api.write_kubeconfig(frontend_kubeconfig.path(), &[api.token_context("sim-frontend", FRONTEND_USER).expect("context")])
        .expect("write");
    Sim { api, cluster, scraper_kubeconfig, frontend_kubeconfig }
}

/// A component running in this process, stopped through a oneshot.
struct Running<T> {
    stop: Option<oneshot::Sender<()>>,
    task: JoinHandle<T>,
}

impl<T> Running<T> {
    async fn stop(mut self) -> T {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        tokio::time::timeout(Duration::from_secs(20), self.task).await.expect("stops in time").expect("no panic")
    }
}

async fn start_shard(sim: &Sim, id: &str) -> Running<Result<(), shardmetrics_scraper::RunError>> {
    let args = ScraperArgs::try_parse_from([
        "shardmetrics-scraper",
        "--shard-id",
        id,
        "--kubeconfig",
        sim.scraper_kubeconfig.path().to_str().expect("utf8 path"),
        "--lease-namespace=kube-system",
        "--lease-duration=15s",
        "--lease-renew-period=1s",
        "--grpc-bind-address=127.0.0.1:0",
        "--admin-bind-address=127.0.0.1:0",
        "--metric-resolution=5s",
        "--kubelet-request-timeout=1s",
    ])
    .expect("scraper args");
    let env = Environment::default();
    let validated = validate(&args, &env).expect("valid scraper flags");
    let (mut config, handles, listeners) = prepare(validated, &env).await.expect("prepare");
    config.schedule.resolution = RESOLUTION;
    let (stop, stopped) = oneshot::channel::<()>();
    let task = tokio::spawn(shardmetrics_scraper::run(config, handles, listeners, async {
        let _ = stopped.await;
    }));
    Running { stop: Some(stop), task }
}

struct Frontend {
    secure: SocketAddr,
    admin: SocketAddr,
    running: Running<()>,
}

/// Starts a replica through the real flag parsing and validation, with the simulator's
/// frontend service account, and registers it as the aggregation backend.
async fn start_frontend(sim: &Sim, name: &str) -> Frontend {
    let path = sim.frontend_kubeconfig.path().to_path_buf();
    let args = frontend_cli::Args::try_parse_from([
        "shardmetrics-frontend",
        "--replica-name",
        name,
        "--kubeconfig",
        path.to_str().expect("utf8 path"),
        "--lease-namespace=kube-system",
        "--bind-address=127.0.0.1",
        "--secure-port=0",
        "--admin-bind-address=127.0.0.1:0",
        "--metric-resolution=2s",
        "--max-staleness=20s",
    ])
    .expect("frontend args");
    let config = match args.config() {
        Ok(c) => c,
        Err(problems) => panic!("invalid frontend flags: {problems:?}"),
    };
    let handles = shardmetrics_frontend::Handles {
        kube: Some(frontend_cli::kube_client(Some(&path)).await.expect("client")),
        clock: shardmetrics_plumbing::clock::system(),
    };
    let secure = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let admin = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let (secure_addr, admin_addr) = (secure.local_addr().expect("addr"), admin.local_addr().expect("addr"));
    let (stop, stopped) = oneshot::channel::<()>();
    let task = tokio::spawn(async move {
        shardmetrics_frontend::run(config, handles, shardmetrics_frontend::Listeners { secure, admin: Some(admin) }, async {
            let _ = stopped.await;
        })
        .await
        .expect("frontend runs");
    });
    Frontend { secure: secure_addr, admin: admin_addr, running: Running { stop: Some(stop), task } }
}

/// A plain HTTP GET on an admin port: status and body.
async fn admin_get(addr: SocketAddr, path: &str) -> Option<(u16, String)> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(addr).await.ok()?;
    s.write_all(format!("GET {path} HTTP/1.0\r\nHost: x\r\n\r\n").as_bytes()).await.ok()?;
    let mut buf = String::new();
    s.read_to_string(&mut buf).await.ok()?;
    let status = buf.split_whitespace().nth(1)?.parse().ok()?;
    Some((status, buf.split_once("\r\n\r\n").map(|(_, b)| b.to_owned()).unwrap_or_default()))
}

async fn eventually<F, Fut>(limit: Duration, what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let start = tokio::time::Instant::now();
    while start.elapsed() < limit {
        if check().await {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("timed out after {limit:?} waiting for: {what}");
}

/// GET through the simulator's aggregation layer as `user`: status and raw body.
async fn get_as(sim: &Sim, user: &str, path: &str, accept: &str) -> (u16, Vec<u8>) {
    let client = kube::Client::try_from(sim.api.kubeconfig_for(user).await.expect("kubeconfig")).expect("client");
    let req = http::Request::get(path).header(header::ACCEPT, accept).body(Vec::new()).expect("request");
    let resp = client.send(req.map(kube::client::Body::from)).await.expect("send");
    let code = resp.status().as_u16();
    let body = http_body_util::BodyExt::collect(resp.into_body()).await.expect("body").to_bytes().to_vec();
    (code, body)
}

async fn get_json(sim: &Sim, path: &str) -> (u16, Value) {
    let (code, body) = get_as(sim, DEFAULT_ADMIN, path, "application/json").await;
    (code, serde_json::from_slice(&body).unwrap_or(Value::Null))
}

fn item_names(v: &Value) -> Vec<String> {
    v["items"]
        .as_array()
        .map(|items| {
            items
                .iter()
                .map(|i| match i["metadata"]["namespace"].as_str() {
                    Some(ns) => format!("{ns}/{}", i["metadata"]["name"].as_str().unwrap_or("")),
                    None => i["metadata"]["name"].as_str().unwrap_or("").to_owned(),
                })
                .collect()
        })
        .unwrap_or_default()
}

/// Running pods in the simulator as namespace/name, with their labels.
fn running_pods(sim: &Sim) -> BTreeMap<String, BTreeMap<String, String>> {
    sim.api
        .store()
        .list_typed::<Pod>(None)
        .expect("pods")
        .into_iter()
        .filter(|p| p.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Running"))
        .map(|p| {
            (
                format!("{}/{}", p.metadata.namespace.unwrap_or_default(), p.metadata.name.unwrap_or_default()),
                p.metadata.labels.unwrap_or_default(),
            )
        })
        .collect()
}

/// Parses a CPU quantity the frontend writes (`123n`, `5u`, `250m`, `2`) into nanocores.
fn nanocores(q: &str) -> f64 {
    let (num, scale) = match q.char_indices().last() {
        Some((i, 'n')) => (&q[..i], 1.0),
        Some((i, 'u')) => (&q[..i], 1e3),
        Some((i, 'm')) => (&q[..i], 1e6),
        _ => (q, 1e9),
    };
    num.parse::<f64>().expect("number") * scale
}

async fn all_served(sim: &Sim, nodes: usize, pods: usize) -> bool {
    let (c1, n) = get_json(sim, "/apis/metrics.k8s.io/v1beta1/nodes").await;
    let (c2, p) = get_json(sim, "/apis/metrics.k8s.io/v1beta1/pods").await;
    c1 == 200 && c2 == 200 && item_names(&n).len() == nodes && item_names(&p).len() == pods
}

#[tokio::test]
async fn every_node_and_running_pod_is_served_through_the_aggregation_layer_with_true_usage() {
    let sim = sim(6, 4).await;
    let shards = [start_shard(&sim, "shard-0").await, start_shard(&sim, "shard-1").await];
    let f = start_frontend(&sim, "frontend-0").await;
    sim.api.set_aggregation_backends(vec![f.secure]);
    eventually(Duration::from_secs(60), "/readyz on the admin port", || async {
        admin_get(f.admin, "/readyz").await.is_some_and(|(c, _)| c == 200)
    })
    .await;
    eventually(Duration::from_secs(60), "all 6 nodes and 24 pods served", || all_served(&sim, 6, 24)).await;

    let (_, nodes) = get_json(&sim, "/apis/metrics.k8s.io/v1beta1/nodes").await;
    let mut names = sim.cluster.node_names();
    names.sort();
    assert_eq!(item_names(&nodes), names, "nodes sorted by name");
    assert!(nodes["items"][0]["metadata"]["labels"].as_object().is_some_and(|l| !l.is_empty()), "node labels copied");

    let (_, pods) = get_json(&sim, "/apis/metrics.k8s.io/v1beta1/pods").await;
    let expected = running_pods(&sim);
    assert_eq!(item_names(&pods), expected.keys().cloned().collect::<Vec<_>>(), "pods sorted by namespace, name");
    // Every container's CPU and memory match the simulator's true usage.
    for item in pods["items"].as_array().expect("items") {
        let ns = item["metadata"]["namespace"].as_str().expect("ns").to_owned();
        let name = item["metadata"]["name"].as_str().expect("name").to_owned();
        assert_eq!(item["metadata"]["labels"], serde_json::to_value(&expected[&format!("{ns}/{name}")]).expect("labels"));
        let obj = sim.api.store().get(shardmetrics_sim::apiserver::resources::PODS, &ns, &name).expect("pod");
        let node = obj.field("spec.nodeName").expect("node").to_owned();
        let kubelet = sim.cluster.kubelet(&node).expect("kubelet");
        let truth: BTreeMap<String, (u64, u64)> = kubelet.with_usage(|u| {
            u.pods[&(ns.clone(), name.clone())]
                .containers
                .iter()
                .map(|c| (c.usage.name.clone(), (c.usage.cpu_millicores, c.usage.memory_base_bytes)))
                .collect()
        });
        let containers = item["containers"].as_array().expect("containers");
        assert_eq!(containers.len(), truth.len());
        for c in containers {
            let (cpu_m, mem) = truth[c["name"].as_str().expect("name")];
            let served = nanocores(c["usage"]["cpu"].as_str().expect("cpu")) / 1e6;
            assert!((served - cpu_m as f64).abs() <= cpu_m as f64 * 0.02 + 1.0, "{ns}/{name}: served {served}m, true {cpu_m}m");
            let memory = shardmetrics_sim::cluster::parse_quantity(c["usage"]["memory"].as_str().expect("memory")).expect("qty");
            assert_eq!(memory as u64, mem, "{ns}/{name} memory");
        }
    }

    // An HPA-style query: one namespace, one app label.
    let (ns, labels) = expected.iter().next().map(|(k, l)| (k.split('/').next().unwrap_or("").to_owned(), l.clone())).expect("a pod");
    let app = labels["app"].clone();
    let (code, v) = get_json(&sim, &format!("/apis/metrics.k8s.io/v1beta1/namespaces/{ns}/pods?labelSelector=app%3D{app}")).await;
    assert_eq!(code, 200);
    let want: Vec<String> =
        expected.iter().filter(|(k, l)| k.starts_with(&format!("{ns}/")) && l.get("app") == Some(&app)).map(|(k, _)| k.clone()).collect();
    assert_eq!(item_names(&v), want);

    f.running.stop().await;
    for s in shards {
        s.stop().await.expect("shard ran");
    }
}

#[tokio::test]
async fn deleted_pods_and_nodes_disappear_and_label_changes_apply() {
    let sim = sim(3, 3).await;
    let shard = start_shard(&sim, "shard-0").await;
    let f = start_frontend(&sim, "frontend-0").await;
    sim.api.set_aggregation_backends(vec![f.secure]);
    eventually(Duration::from_secs(60), "all served", || all_served(&sim, 3, 9)).await;

    let victim = running_pods(&sim).keys().next().cloned().expect("a pod");
    let (ns, name) = victim.split_once('/').expect("ns/name");
    sim.cluster.delete_pod(ns, name).await.expect("delete");
    eventually(Duration::from_secs(20), "the deleted pod is gone", || async {
        !item_names(&get_json(&sim, "/apis/metrics.k8s.io/v1beta1/pods").await.1).contains(&victim)
    })
    .await;
    let (code, v) = get_json(&sim, &format!("/apis/metrics.k8s.io/v1beta1/namespaces/{ns}/pods/{name}")).await;
    assert_eq!((code, v["reason"].as_str()), (404, Some("NotFound")));

    // Relabel a pod: the label selector follows the metadata watch.
    let target = running_pods(&sim).keys().next().cloned().expect("a pod");
    let (tns, tname) = target.split_once('/').expect("ns/name");
    let admin = kube::Client::try_from(sim.api.kubeconfig_for(DEFAULT_ADMIN).await.expect("kubeconfig")).expect("client");
    let pods: kube::Api<Pod> = kube::Api::namespaced(admin, tns);
    pods.patch(
        tname,
        &kube::api::PatchParams::default(),
        &kube::api::Patch::Merge(serde_json::json!({"metadata": {"labels": {"canary": "yes"}}})),
    )
    .await
    .expect("patch");
    eventually(Duration::from_secs(20), "the new label selects the pod", || async {
        item_names(&get_json(&sim, "/apis/metrics.k8s.io/v1beta1/pods?labelSelector=canary%3Dyes").await.1) == vec![target.clone()]
    })
    .await;

    let node = sim.cluster.node_names().into_iter().next().expect("a node");
    sim.cluster.remove_node(&node).await.expect("remove node");
    eventually(Duration::from_secs(20), "the removed node is gone", || async {
        !item_names(&get_json(&sim, "/apis/metrics.k8s.io/v1beta1/nodes").await.1).contains(&node)
    })
    .await;
    let (code, v) = get_json(&sim, &format!("/apis/metrics.k8s.io/v1beta1/nodes/{node}")).await;
    assert_eq!((code, v["details"]["name"].as_str()), (404, Some(node.as_str())));
    f.running.stop().await;
    shard.stop().await.expect("shard ran");
}

#[tokio::test]
async fn stopping_a_shard_never_blanks_a_node_and_its_nodes_keep_fresh_rates() {
    let sim = sim(6, 2).await;
    let a = start_shard(&sim, "shard-a").await;
    let b = start_shard(&sim, "shard-b").await;
    let f = start_frontend(&sim, "frontend-0").await;
    sim.api.set_aggregation_backends(vec![f.secure]);
    eventually(Duration::from_secs(60), "all served", || all_served(&sim, 6, 12)).await;
    a.stop().await.expect("shard ran");
    // For the next three resolutions every node and pod stays served, and afterwards every
    // node's timestamp is newer than the stop (the remaining shard continues the rates).
    // The shards and the frontend read the system clock.
    let stopped_at_s = shardmetrics_plumbing::clock::system().now_ms() / 1000;
    let until = tokio::time::Instant::now() + RESOLUTION * 3;
    while tokio::time::Instant::now() < until {
        let (_, n) = get_json(&sim, "/apis/metrics.k8s.io/v1beta1/nodes").await;
        let (_, p) = get_json(&sim, "/apis/metrics.k8s.io/v1beta1/pods").await;
        assert_eq!((item_names(&n).len(), item_names(&p).len()), (6, 12), "nothing blanked during the hand-off");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    eventually(Duration::from_secs(20), "every node's timestamp is newer than the stop", || async {
        let (_, n) = get_json(&sim, "/apis/metrics.k8s.io/v1beta1/nodes").await;
        n["items"].as_array().is_some_and(|items| {
            items.len() == 6
                && items.iter().all(|i| {
                    i["timestamp"].as_str().and_then(|t| t.parse::<jiff::Timestamp>().ok()).is_some_and(|t| t.as_second() >= stopped_at_s)
                })
        })
    })
    .await;
    let text = admin_get(f.admin, "/metrics").await.expect("metrics").1;
    assert!(
        !text.contains("shardmetrics_frontend_upstream_subscription_state{shard=\"shard-a\""),
        "the stopped shard's subscription state is gone from the metrics"
    );
    f.running.stop().await;
    b.stop().await.expect("shard ran");
}

#[tokio::test]
async fn authorization_protobuf_and_tables_work_through_the_aggregation_proxy() {
    let sim = sim(2, 3).await;
    let shard = start_shard(&sim, "shard-0").await;
    let f = start_frontend(&sim, "frontend-0").await;
    sim.api.set_aggregation_backends(vec![f.secure]);
    eventually(Duration::from_secs(60), "all served", || all_served(&sim, 2, 6)).await;

    let (code, body) = get_as(&sim, NOACCESS_USER, "/apis/metrics.k8s.io/v1beta1/pods", "application/json").await;
    let v: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
    assert_eq!((code, v["reason"].as_str()), (403, Some("Forbidden")), "{v}");

    let (code, body) =
        get_as(&sim, DEFAULT_ADMIN, "/apis/metrics.k8s.io/v1beta1/pods", "application/vnd.kubernetes.protobuf, application/json").await;
    assert_eq!(code, 200);
    let (tm, raw) = decode_envelope(&body).expect("protobuf envelope through the proxy");
    assert_eq!(tm.kind.as_deref(), Some("PodMetricsList"));
    let list = PodMetricsList::decode(raw.as_slice()).expect("list");
    let names: BTreeSet<String> = list.items.iter().filter_map(|i| i.metadata.as_ref()?.name.clone()).collect();
    assert_eq!(names.len(), 6);

    let (code, body) = get_as(
        &sim,
        DEFAULT_ADMIN,
        "/apis/metrics.k8s.io/v1beta1/nodes",
        "application/json;as=Table;v=v1;g=meta.k8s.io,application/json",
    )
    .await;
    let v: Value = serde_json::from_slice(&body).expect("json");
    assert_eq!((code, v["kind"].as_str()), (200, Some("Table")));
    assert_eq!(v["rows"].as_array().map(Vec::len), Some(2));
    f.running.stop().await;
    shard.stop().await.expect("shard ran");
}
