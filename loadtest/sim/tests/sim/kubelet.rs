//! The kubelet simulator and the simulated cluster over real HTTPS on loopback ports.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{Request, StatusCode};
use http_body_util::{BodyExt, Empty};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use serde_json::json;
use shardmetrics_sim::apiserver::resources::{NODES, PODS};
use shardmetrics_sim::apiserver::{ApiServer, ApiServerConfig, DEFAULT_ADMIN_TOKEN, MASTERS, Policy, Rule, UserInfo};
use shardmetrics_sim::cluster::{Cluster, ClusterConfig, PodSpec};
use shardmetrics_sim::kubelet::{ContainerUsage, Fault, FleetConfig, KubeletFleet, fixed_tokens};
use shardmetrics_plumbing::pki::{self, Ca};
use shardmetrics_plumbing::clock::ManualClock;

type HttpsClient = Client<hyper_rustls::HttpsConnector<HttpConnector>, Empty<Bytes>>;

fn client(ca: &Ca, client_cert: Option<&pki::CertKey>) -> HttpsClient {
    let tls = pki::client_config(Some(&ca.root_store()), client_cert).unwrap();
    let connector = hyper_rustls::HttpsConnectorBuilder::new().with_tls_config(tls).https_only().enable_http1().build();
    Client::builder(TokioExecutor::new()).build(connector)
}

async fn get(client: &HttpsClient, port: u16, token: Option<&str>) -> Result<(StatusCode, Bytes), String> {
    get_as(client, port, token, None).await
}

/// [`get`] with a `User-Agent` when `user_agent` is given.
async fn get_as(client: &HttpsClient, port: u16, token: Option<&str>, user_agent: Option<&str>) -> Result<(StatusCode, Bytes), String> {
    let mut req = Request::get(format!("https://127.0.0.1:{port}/metrics/resource"));
    if let Some(t) = token {
        req = req.header("authorization", format!("Bearer {t}"));
    }
    if let Some(ua) = user_agent {
        req = req.header("user-agent", ua);
    }
    let resp = client.request(req.body(Empty::new()).unwrap()).await.map_err(|e| e.to_string())?;
    let status = resp.status();
    let body = resp.into_body().collect().await.map_err(|e| format!("body: {e}"))?.to_bytes();
    Ok((status, body))
}

const T0: i64 = 1_750_000_000_000;

async fn fleet_with_one_pod() -> (Ca, Arc<ManualClock>, KubeletFleet, u16) {
    let ca = Ca::new("kubelet-ca").unwrap();
    let clock = ManualClock::new(T0);
    let mut config = FleetConfig::new(&ca, fixed_tokens(&["scraper-token"])).unwrap();
    config.clock = clock.clone();
    let fleet = KubeletFleet::new(config).unwrap();
    let k = fleet.start("node-a", 100, 1 << 30).await.unwrap();
    k.upsert_pod("web", "web-1", vec![(ContainerUsage::constant("app", 250, 100 << 20), T0)]);
    let port = k.port();
    (ca, clock, fleet, port)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_kubelet_serves_exact_counters_that_grow_at_the_known_rate() {
    let (ca, clock, fleet, port) = fleet_with_one_pod().await;
    let c = client(&ca, None);
    clock.advance_ms(10_000);
    let (status, body) = get(&c, port, Some("scraper-token")).await.unwrap();
    assert_eq!(status, StatusCode::OK);
    let text = String::from_utf8(body.to_vec()).unwrap();
    let t1 = T0 + 10_000;
    assert!(text.contains(&format!("container_cpu_usage_seconds_total{{container=\"app\",namespace=\"web\",pod=\"web-1\"}} 2.5 {t1}\n")), "{text}");
    assert!(text.contains(&format!("container_memory_working_set_bytes{{container=\"app\",namespace=\"web\",pod=\"web-1\"}} 1.048576e+08 {t1}\n")));
    assert!(text.contains(&format!("node_cpu_usage_seconds_total 3.5 {t1}\n")), "overhead 0.1 + 0.25 cores for 10 s");
    for family in ["pod_cpu_usage_seconds_total", "pod_swap_usage_bytes", "container_swap_usage_bytes", "node_swap_usage_bytes", "resource_scrape_error"] {
        assert!(text.contains(&format!("# TYPE {family} ")), "missing {family}");
    }
    assert_eq!(text, fleet.get("node-a").unwrap().render(t1));

    clock.advance_ms(4_000);
    let (_, body) = get(&c, port, Some("scraper-token")).await.unwrap();
    assert!(String::from_utf8_lossy(&body).contains("pod=\"web-1\"} 3.5 "), "0.25 cores for 14 s");
    let k = fleet.get("node-a").unwrap();
    assert_eq!(k.true_container_cpu("web", "web-1", "app", T0 + 10_000, T0 + 14_000), Some(0.25));
    assert_eq!(k.true_node_cpu(T0 + 10_000, T0 + 14_000), 0.35);
    assert_eq!(k.scrapes(), 2);
    assert_eq!(k.request_times(), [T0 + 10_000, T0 + 14_000]);

    // A restart resets the container counter but never the node's.
    assert!(k.restart_container("web", "web-1", "app"));
    clock.advance_ms(2_000);
    let (_, body) = get(&c, port, Some("scraper-token")).await.unwrap();
    let text = String::from_utf8_lossy(&body);
    assert!(text.contains("pod=\"web-1\"} 0.5 "), "{text}");
    assert!(text.contains(&format!("container_start_time_seconds{{container=\"app\",namespace=\"web\",pod=\"web-1\"}} 1.750000014e+09 {}", T0 + 14_000)));
    assert!(text.contains(&format!("node_cpu_usage_seconds_total 5.6 {}", T0 + 16_000)));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_measuring_clients_requests_are_answered_but_not_counted_as_scrapes() {
    let (ca, clock, fleet, port) = fleet_with_one_pod().await;
    let c = client(&ca, None);
    clock.advance_ms(10_000);
    let uncounted_ua = Some(shardmetrics_sim::kubelet::UNCOUNTED_USER_AGENT);
    let (_, counted) = get(&c, port, Some("scraper-token")).await.unwrap();
    let (status, uncounted) = get_as(&c, port, Some("scraper-token"), uncounted_ua).await.unwrap();
    assert_eq!(status, StatusCode::OK);
    assert_eq!(uncounted, counted, "the same answer");
    let k = fleet.get("node-a").unwrap();
    assert_eq!(k.scrapes(), 1);
    assert_eq!(k.request_times(), [T0 + 10_000], "not a duplicate of the scrape beside it");
    assert_eq!(k.stats.uncounted.load(std::sync::atomic::Ordering::Relaxed), 1);
    // Still authenticated like any request.
    assert_eq!(get_as(&c, port, None, uncounted_ua).await.unwrap().0, StatusCode::UNAUTHORIZED);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_kubelet_refuses_requests_without_a_valid_token() {
    let (ca, _clock, fleet, port) = fleet_with_one_pod().await;
    let c = client(&ca, None);
    assert_eq!(get(&c, port, None).await.unwrap().0, StatusCode::UNAUTHORIZED);
    assert_eq!(get(&c, port, Some("forged")).await.unwrap().0, StatusCode::UNAUTHORIZED);
    let k = fleet.get("node-a").unwrap();
    assert_eq!(k.scrapes(), 0, "refused requests are not scrapes");
    assert_eq!(k.stats.refused.load(std::sync::atomic::Ordering::Relaxed), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_fault_mode_does_what_it_says() {
    let (ca, _clock, fleet, port) = fleet_with_one_pod().await;
    let c = client(&ca, None);
    let k = fleet.get("node-a").unwrap();
    let token = Some("scraper-token");

    k.set_fault(Fault::Http500);
    assert_eq!(get(&c, port, token).await.unwrap().0, StatusCode::INTERNAL_SERVER_ERROR);

    k.set_fault(Fault::Garbage);
    let (status, body) = get(&c, port, token).await.unwrap();
    assert_eq!(status, StatusCode::OK);
    assert!(std::str::from_utf8(&body).is_err() && !body.windows(6).any(|w| w == b"# HELP"));

    k.set_fault(Fault::Truncated);
    let err = get(&c, port, token).await.unwrap_err();
    assert!(err.starts_with("body:"), "the body breaks off: {err}");

    k.set_fault(Fault::Oversized(3 << 20));
    let (status, body) = get(&c, port, token).await.unwrap();
    assert_eq!(status, StatusCode::OK);
    assert!(body.len() >= 3 << 20);
    assert!(body.starts_with(b"# HELP container_cpu_usage_seconds_total"));

    k.set_fault(Fault::Slow(Duration::from_millis(300)));
    let started = tokio::time::Instant::now();
    assert_eq!(get(&c, port, token).await.unwrap().0, StatusCode::OK);
    assert!(started.elapsed() >= Duration::from_millis(300), "answered only after the delay");

    k.set_fault(Fault::Timeout);
    let outcome = tokio::time::timeout(Duration::from_millis(500), get(&c, port, token)).await;
    assert!(outcome.is_err(), "never answers");

    k.set_fault(Fault::None);
    assert_eq!(get(&c, port, token).await.unwrap().0, StatusCode::OK);
    assert_eq!(k.scrapes(), 7, "every authenticated request counts, whatever the fault");
}

fn cluster_policy() -> Policy {
    Policy::new()
        .with_token(DEFAULT_ADMIN_TOKEN, UserInfo::new("admin", &[MASTERS]))
        .with_token("scraper-token", UserInfo::new("system:serviceaccount:kube-system:scraper", &[]))
        .with_token("viewer-token", UserInfo::new("viewer", &[]))
        .with_rule(Rule::user("system:serviceaccount:kube-system:scraper").verbs(&["get"]).resources(&["nodes/metrics"]))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cluster_registers_nodes_and_pods_and_its_kubelets_follow_the_api_server() {
    let api = ApiServer::start(ApiServerConfig { policy: cluster_policy(), ..Default::default() }).await.unwrap();
    let config = ClusterConfig { nodes: 3, pods_per_node: 4, containers_per_pod: 2, ..Default::default() };
    let cluster = Cluster::start(&api, config).await.unwrap();
    let store = api.store();
    assert_eq!(store.count(NODES), 3);
    assert_eq!(store.count(PODS), 12);
    let c = client(api.ca(), None);

    // Node objects point at their kubelets; every kubelet reports its own pods.
    for node in cluster.node_names() {
        let obj = store.get(NODES, "", &node).unwrap().value();
        let kubelet = cluster.kubelet(&node).unwrap();
        assert_eq!(obj["status"]["daemonEndpoints"]["kubeletEndpoint"]["Port"], kubelet.port());
        assert_eq!(obj["status"]["addresses"][0], json!({"type": "InternalIP", "address": "127.0.0.1"}));
        let (status, body) = get(&c, kubelet.port(), Some("scraper-token")).await.unwrap();
        assert_eq!(status, StatusCode::OK);
        let text = String::from_utf8(body.to_vec()).unwrap();
        let pods = store.pods_on_node(&node);
        assert_eq!(pods.len(), 4);
        for pod in pods {
            assert!(text.contains(&format!("namespace=\"{}\",pod=\"{}\"", pod.key.namespace, pod.key.name)));
        }
        assert_eq!(text.matches("container_cpu_usage_seconds_total{").count(), 8);
    }
    // The kubelet asks the API server's policy: a known user without nodes/metrics is forbidden.
    let port = cluster.kubelet("sim-node-0000").unwrap().port();
    assert_eq!(get(&c, port, Some("viewer-token")).await.unwrap().0, StatusCode::FORBIDDEN);
    assert_eq!(get(&c, port, Some(DEFAULT_ADMIN_TOKEN)).await.unwrap().0, StatusCode::OK);
    let cert = api.ca().client_cert("scraper", &[]).unwrap();
    let (status, _) = get(&client(api.ca(), Some(&cert)), port, None).await.unwrap();
    assert_eq!(status, StatusCode::OK, "a client certificate from the cluster CA is accepted");

    // A pod added, a pending pod started, a pod deleted.
    cluster
        .add_pod(&PodSpec {
            namespace: "default".into(),
            name: "extra".into(),
            node: "sim-node-0001".into(),
            labels: Default::default(),
            containers: vec![ContainerUsage::constant("c", 123, 4 << 20)],
        })
        .await
        .unwrap();
    let k1 = cluster.kubelet("sim-node-0001").unwrap();
    assert!(k1.pods().contains(&("default".into(), "extra".into())));
    store
        .create(PODS, "default", json!({"metadata": {"name": "pending", "annotations": {"sim.shardmetrics.io/cpu-millicores": "700"}},
            "spec": {"nodeName": "sim-node-0001", "containers": [{"name": "x", "image": "busybox"}]}}))
        .unwrap();
    cluster.synced().await;
    cluster.synced().await;
    assert_eq!(store.get(PODS, "default", "pending").unwrap().value()["status"]["phase"], "Running");
    assert_eq!(k1.with_usage(|u| u.container("default", "pending", "x").map(|c| c.usage.cpu_millicores)), Some(700));
    cluster.delete_pod("default", "extra").await.unwrap();
    assert!(!k1.pods().contains(&("default".into(), "extra".into())));

    // A restart shows in the pod status and resets the container's counter.
    let (ns, pod) = k1.pods().into_iter().find(|(_, p)| p != "pending").unwrap();
    cluster.restart_container(&ns, &pod, "main").await.unwrap();
    let status = store.get(PODS, &ns, &pod).unwrap().value()["status"]["containerStatuses"][0].clone();
    assert_eq!(status["restartCount"], 1);

    // A Node created without an endpoint gets a kubelet and a registered status.
    store.create(NODES, "", json!({"metadata": {"name": "hand-made"}})).unwrap();
    cluster.synced().await;
    cluster.synced().await;
    let k = cluster.kubelet("hand-made").expect("a kubelet was started for the new node");
    let obj = store.get(NODES, "", "hand-made").unwrap().value();
    assert_eq!(obj["status"]["daemonEndpoints"]["kubeletEndpoint"]["Port"], k.port());
    assert_eq!(obj["status"]["conditions"][3]["type"], "Ready");

    // Removing a node stops its kubelet and removes its pods.
    let port = cluster.kubelet("sim-node-0002").unwrap().port();
    cluster.remove_node("sim-node-0002").await.unwrap();
    assert!(cluster.kubelet("sim-node-0002").is_none());
    assert!(store.pods_on_node("sim-node-0002").is_empty());
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(get(&c, port, Some("scraper-token")).await.is_err(), "the port is closed");
}

// Current-thread runtime: the sync task cannot run while the burst is created, so it must lag.
#[tokio::test]
async fn kubelets_resync_after_falling_behind_the_api_server() {
    use shardmetrics_sim::apiserver::StoreConfig;
    let api = ApiServer::start(ApiServerConfig {
        policy: cluster_policy(),
        store: StoreConfig { history_capacity: 100, broadcast_capacity: 16 },
        ..Default::default()
    })
    .await
    .unwrap();
    let cluster = Cluster::start(&api, ClusterConfig { nodes: 2, pods_per_node: 0, ..Default::default() }).await.unwrap();
    // 300 changes in one go: far more than the 16-change broadcast, so the sync task lags.
    for i in 0..300 {
        let spec = PodSpec {
            namespace: "default".into(),
            name: format!("burst-{i}"),
            node: format!("sim-node-000{}", i % 2),
            labels: Default::default(),
            containers: vec![ContainerUsage::constant("c", 10, 1 << 20)],
        };
        api.store().create(PODS, "default", shardmetrics_sim::cluster::pod_object(&spec, 0)).unwrap();
    }
    for i in (0..300).step_by(3) {
        api.store().delete(PODS, "default", &format!("burst-{i}"), None, None).unwrap();
    }
    cluster.synced().await;
    assert!(cluster.resyncs() >= 2, "the sync fell behind and reconciled from scratch");
    let total: usize = cluster.fleet().all().iter().map(|k| k.pods().len()).sum();
    assert_eq!(total, 200, "every surviving pod is reported exactly once");
    for k in cluster.fleet().all() {
        let mut expected: Vec<(String, String)> =
            api.store().pods_on_node(k.node()).iter().map(|p| (p.key.namespace.clone(), p.key.name.clone())).collect();
        expected.sort();
        assert_eq!(k.pods(), expected);
    }
}
