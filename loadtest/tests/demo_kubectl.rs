//! End to end: the demo (simulated cluster, 2 scraper shards and 2 frontends as child processes
//! of the real binary) queried with the real kubectl 1.35, values checked against the
//! simulator's true usage.


use std::collections::BTreeMap;
use std::sync::atomic::Ordering::Relaxed;
use std::time::Duration;

use serde_json::Value;
use shardmetrics_sim::apiserver::resources::PODS;
use shardmetrics_sim::apiserver::store::Filter;
use shardmetrics_sim::kubelet::usage::node_swap_capacity_bytes;
use shardmetrics_loadtest::demo::{Demo, DemoConfig, RunningDemo};
use shardmetrics_xtask::kubectl::Kubectl;

const RESOLUTION: Duration = Duration::from_secs(5);

async fn start() -> RunningDemo {
    let dir = tempfile::tempdir().unwrap();
    let mut config = DemoConfig::new(env!("CARGO_BIN_EXE_shardmetrics-loadtest").into());
    config.nodes = 4;
    config.pods_per_node = 5;
    config.shards = 2;
    config.frontends = 2;
    config.metric_resolution = RESOLUTION;
    config.kubeconfig = dir.keep().join("demo.kubeconfig");
    config.ready_timeout = Duration::from_secs(90);
    Demo::start(config).await.expect("the demo starts and serves every node")
}

/// kubectl's CPU column (`250m`, `2`) in millicores.
fn millicores(cell: &str) -> i64 {
    let parsed = match cell.strip_suffix('m') {
        Some(m) => m.parse().ok(),
        None => cell.parse::<f64>().ok().map(|c| (c * 1000.0).round() as i64),
    };
    parsed.unwrap_or_else(|| panic!("{cell:?} is not a CPU quantity"))
}

/// Rows of a kubectl table, by the value of their first `key_columns` cells joined with '/'.
fn rows(table: &str, key_columns: usize) -> BTreeMap<String, Vec<String>> {
    table
        .lines()
        .skip(1)
        .map(|l| {
            let cells: Vec<String> = l.split_whitespace().map(str::to_owned).collect();
            (cells[..key_columns].join("/"), cells)
        })
        .collect()
}

/// True CPU of a pod (sum of its containers' rates), in millicores.
fn true_pod_millicores(demo: &RunningDemo, namespace: &str, pod: &str) -> i64 {
    let obj = demo.api.store().get(PODS, namespace, pod).unwrap();
    let node = obj.field("spec.nodeName").unwrap().to_owned();
    let kubelet = demo.cluster.kubelet(&node).unwrap();
    kubelet.with_usage(|u| {
        u.pods[&(namespace.to_owned(), pod.to_owned())].containers.iter().map(|c| c.usage.cpu_millicores as i64).sum()
    })
}

/// True swap of a pod as its kubelet reports it (0 on a node without swap), in bytes.
fn true_pod_swap(demo: &RunningDemo, namespace: &str, pod: &str) -> u64 {
    let obj = demo.api.store().get(PODS, namespace, pod).unwrap();
    let node = obj.field("spec.nodeName").unwrap().to_owned();
    demo.cluster.kubelet(&node).unwrap().with_usage(|u| {
        u.pods[&(namespace.to_owned(), pod.to_owned())].containers.iter().map(|c| u.container_swap_bytes(c).unwrap_or(0)).sum()
    })
}

fn now_ms() -> i64 {
    shardmetrics_plumbing::clock::system().now_ms()
}

async fn eventually(what: &str, mut check: impl AsyncFnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + RESOLUTION * 6 + Duration::from_secs(20);
    while !check().await {
        assert!(tokio::time::Instant::now() < deadline, "timed out waiting for: {what}");
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubectl_top_and_the_metrics_api_report_the_true_usage_through_the_whole_pipeline() {
    let demo = start().await;
    let k = Kubectl::new(demo.kubeconfig()).await;

    // Nodes: CPU within 2m of the truth (kubectl rounds up to whole millicores).
    let top = k.ok(&["top", "nodes"]).await;
    let nodes = rows(&top, 1);
    assert_eq!(nodes.keys().cloned().collect::<Vec<_>>(), demo.cluster.node_names(), "{top}");
    for (name, cells) in &nodes {
        let kubelet = demo.cluster.kubelet(name).unwrap();
        let now = now_ms();
        let truth = (kubelet.true_node_cpu(now - 1_000, now) * 1000.0).round() as i64;
        assert!((millicores(&cells[1]) - truth).abs() <= 2, "{name}: kubectl says {}, truth {truth}m", cells[1]);
        assert!(cells[3].ends_with("Mi"), "{top}");
    }

    // Node memory through the raw API: within 0.5 % of the truth at the sample time.
    let raw: Value = serde_json::from_str(&k.ok(&["get", "--raw", "/apis/metrics.k8s.io/v1beta1/nodes"]).await).unwrap();
    for item in raw["items"].as_array().unwrap() {
        let name = item["metadata"]["name"].as_str().unwrap();
        let at = item["timestamp"].as_str().unwrap().parse::<jiff::Timestamp>().unwrap().as_millisecond();
        let bytes: f64 = item["usage"]["memory"].as_str().unwrap().trim_end_matches("Ki").parse::<f64>().unwrap()
            * if item["usage"]["memory"].as_str().unwrap().ends_with("Ki") { 1024.0 } else { 1.0 };
        let truth = demo.cluster.kubelet(name).unwrap().true_node_memory(at) as f64;
        assert!((bytes - truth).abs() / truth < 0.005, "{name}: API says {bytes} bytes, truth {truth}");
        let swap = demo.cluster.kubelet(name).unwrap().with_usage(|u| u.swap_bytes());
        assert_eq!(item["usage"].get("swap").is_some(), swap.is_some(), "swap served exactly where the kubelet reports it: {item}");
    }

    // Swap (metrics-server serves none): `top --show-swap` shows each swap node's usage and its
    // share of status.nodeInfo.swap.capacity, <unknown> on nodes without swap, and per pod the
    // sum of its containers' swap.
    let top = k.ok(&["top", "nodes", "--show-swap"]).await;
    assert!(top.lines().next().is_some_and(|h| h.contains("SWAP(bytes)") && h.contains("SWAP(%)")), "{top}");
    let nodes = rows(&top, 1);
    let mut with_swap = 0;
    for (name, cells) in &nodes {
        match node_swap_capacity_bytes(name) {
            Some(capacity) => {
                let truth = demo.cluster.kubelet(name).unwrap().with_usage(|u| u.swap_bytes()).expect("a swap node reports swap");
                assert_eq!(cells[5], format!("{}Mi", truth >> 20), "{name}: {top}");
                assert_eq!(cells[6], format!("{}%", (truth as f64 / capacity as f64 * 100.0) as i64), "{name}: {top}");
                with_swap += 1;
            }
            None => assert_eq!(cells[5..7], ["<unknown>", "<unknown>"], "{name}: {top}"),
        }
    }
    assert!(with_swap > 0 && with_swap < nodes.len(), "the demo has nodes with and without swap: {top}");
    let top = k.ok(&["top", "pods", "-A", "--show-swap"]).await;
    assert!(top.lines().next().is_some_and(|h| h.contains("SWAP(bytes)")), "{top}");
    let mut swapping = 0;
    for (key, cells) in &rows(&top, 2) {
        let (ns, name) = key.split_once('/').unwrap();
        let truth = true_pod_swap(&demo, ns, name);
        assert_eq!(cells[4], format!("{}Mi", truth >> 20), "{key}: {top}");
        swapping += usize::from(truth >= 1 << 20);
    }
    assert!(swapping > 0, "some pod swaps a MiB or more: {top}");

    // Every pod, CPU within 2m of the truth.
    let all_pods = demo.api.store().list(&Filter::all(PODS), &Default::default()).unwrap().items;
    let top = k.ok(&["top", "pods", "-A"]).await;
    let pods = rows(&top, 2);
    assert_eq!(pods.len(), all_pods.len(), "{top}");
    for (key, cells) in &pods {
        let (ns, name) = key.split_once('/').unwrap();
        let truth = true_pod_millicores(&demo, ns, name);
        assert!((millicores(&cells[2]) - truth).abs() <= 2, "{key}: kubectl says {}, truth {truth}m", cells[2]);
    }

    // Sorted by CPU, highest first.
    let sorted = k.ok(&["top", "pods", "-A", "--sort-by=cpu", "--no-headers"]).await;
    let cpus: Vec<i64> = sorted.lines().map(|l| millicores(l.split_whitespace().nth(2).unwrap())).collect();
    assert!(cpus.windows(2).all(|w| w[0] >= w[1]), "{sorted}");

    // A namespace and a label selector; containers.
    let selected: Vec<&str> = all_pods
        .iter()
        .filter(|p| p.key.namespace == "team-a" && p.labels.get("app").map(String::as_str) == Some("app-0"))
        .map(|p| p.key.name.as_str())
        .collect();
    assert!(!selected.is_empty());
    let top = k.ok(&["top", "pods", "-n", "team-a", "-l", "app=app-0", "--containers"]).await;
    let containers = rows(&top, 2);
    let mut names: Vec<&str> = containers.keys().map(|k| k.split_once('/').unwrap().0).collect();
    names.dedup();
    let mut expected = selected.clone();
    expected.sort();
    assert_eq!(names, expected, "{top}");
    assert!(containers.keys().all(|k| k.ends_with("/main")), "{top}");

    // kubectl get on the metrics resources, discovery and selectors through --raw.
    let nodemetrics = k.ok(&["get", "nodemetrics", "--no-headers"]).await;
    assert_eq!(nodemetrics.lines().count(), 4, "{nodemetrics}");
    let podmetrics = k.ok(&["get", "podmetrics", "-A", "--no-headers"]).await;
    assert_eq!(podmetrics.lines().count(), all_pods.len(), "{podmetrics}");
    let discovery: Value = serde_json::from_str(&k.ok(&["get", "--raw", "/apis/metrics.k8s.io/v1beta1"]).await).unwrap();
    let kinds: Vec<&str> = discovery["resources"].as_array().unwrap().iter().map(|r| r["kind"].as_str().unwrap()).collect();
    assert!(kinds.contains(&"NodeMetrics") && kinds.contains(&"PodMetrics"), "{discovery}");
    let apis: Value = serde_json::from_str(&k.ok(&["get", "--raw", "/apis"]).await).unwrap();
    assert!(apis["groups"].as_array().unwrap().iter().any(|g| g["name"] == "metrics.k8s.io"));
    let raw: Value = serde_json::from_str(
        &k.ok(&["get", "--raw", "/apis/metrics.k8s.io/v1beta1/namespaces/team-a/pods?labelSelector=app%3Dapp-0"]).await,
    )
    .unwrap();
    let mut raw_names: Vec<&str> = raw["items"].as_array().unwrap().iter().map(|i| i["metadata"]["name"].as_str().unwrap()).collect();
    raw_names.sort();
    assert_eq!(raw_names, expected);
    let resources = k.ok(&["api-resources", "--api-group=metrics.k8s.io"]).await;
    assert!(resources.contains("NodeMetrics") && resources.contains("PodMetrics"), "{resources}");

    // A kwok-style node: its metrics.k8s.io/resource-metrics-path annotation moves the scrape
    // to that path on the same endpoint, and the node stays served.
    let node = demo.cluster.node_names()[0].clone();
    let kubelet = demo.cluster.kubelet(&node).unwrap();
    assert_eq!(kubelet.stats.kwok_path_scrapes.load(Relaxed), 0);
    k.ok(&["annotate", "node", &node, &format!("metrics.k8s.io/resource-metrics-path=/metrics/nodes/{node}/metrics/resource")]).await;
    eventually("a scrape at the annotated path", async || kubelet.stats.kwok_path_scrapes.load(Relaxed) >= 2).await;
    let served = k.ok(&["get", "--raw", &format!("/apis/metrics.k8s.io/v1beta1/nodes/{node}")]).await;
    let served: Value = serde_json::from_str(&served).unwrap();
    let at = served["timestamp"].as_str().unwrap().parse::<jiff::Timestamp>().unwrap().as_millisecond();
    assert!(now_ms() - at < RESOLUTION.as_millis() as i64 * 3, "{node} is served fresh from the annotated path: {served}");

    // Watch: kubectl get -w lists (a Table carrying the replica's resourceVersion), then
    // follows events as scrapes land; the raw stream carries ADDED then MODIFIED per pod.
    let (out, err) = k
        .run_for(&["get", "podmetrics", "-n", "team-a", "-w", "--output-watch-events"], RESOLUTION * 3 + Duration::from_secs(2))
        .await;
    let team_a = all_pods.iter().filter(|p| p.key.namespace == "team-a").count();
    let lines: Vec<&str> = out.lines().filter(|l| !l.starts_with("EVENT")).collect();
    let modified = lines.iter().filter(|l| l.starts_with("MODIFIED")).count();
    assert!(lines.iter().filter(|l| l.starts_with("ADDED")).count() >= team_a, "every pod listed:\n{out}\n{err}");
    assert!(modified >= team_a, "each pod's new sample arrives as an event within 3 resolutions:\n{out}\n{err}");
    let (raw, err) = k
        .run_for(&["get", "--raw", "/apis/metrics.k8s.io/v1beta1/namespaces/team-a/pods?watch=true&allowWatchBookmarks=true"], RESOLUTION * 2 + Duration::from_secs(2))
        .await;
    let events: Vec<Value> = raw.lines().map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}\n{err}"))).collect();
    let kinds = |t: &str| events.iter().filter(|e| e["type"] == t).count();
    assert_eq!(kinds("ADDED"), team_a, "{raw}");
    assert!(kinds("MODIFIED") >= team_a && kinds("BOOKMARK") >= 1, "{raw}");
    for e in events.iter().filter(|e| e["type"] != "BOOKMARK") {
        let rv: i64 = e["object"]["metadata"]["resourceVersion"].as_str().unwrap().parse().unwrap();
        let at = e["object"]["timestamp"].as_str().unwrap().parse::<jiff::Timestamp>().unwrap().as_millisecond();
        assert_eq!(rv / 1000, at / 1000, "an object's version is its sample time: {e}");
    }

    // The authenticated user without rights is refused.
    let (ok, _, stderr) = k.run(&["--context", "demo-noaccess", "top", "nodes"]).await;
    assert!(!ok && stderr.contains("Forbidden"), "{stderr}");
    let (ok, _, stderr) = k.run(&["--context", "demo-noaccess", "get", "--raw", "/apis/metrics.k8s.io/v1beta1/namespaces/team-a/pods"]).await;
    assert!(!ok && stderr.contains("Forbidden"), "{stderr}");

    demo.shutdown().await;
}

const NODE_YAML: &str = r#"
apiVersion: v1
kind: Node
metadata:
  name: kubectl-added
status:
  capacity:
    cpu: "2"
    memory: 4Gi
  allocatable:
    cpu: "2"
    memory: 4Gi
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_created_with_kubectl_shows_up_in_kubectl_top_and_a_deleted_one_disappears() {
    let demo = start().await;
    let k = Kubectl::new(demo.kubeconfig()).await;
    let file = k.file("node.yaml", NODE_YAML);
    k.ok(&["create", "-f", &file]).await;
    eventually("the new node in kubectl top nodes", async || {
        let (ok, out, _) = k.run(&["top", "nodes", "--no-headers"]).await;
        ok && out.lines().any(|l| l.starts_with("kubectl-added "))
    })
    .await;
    k.ok(&["delete", "node", "sim-node-0001"]).await;
    eventually("the deleted node gone from kubectl top nodes", async || {
        let (ok, out, _) = k.run(&["top", "nodes", "--no-headers"]).await;
        ok && !out.lines().any(|l| l.starts_with("sim-node-0001 "))
    })
    .await;
    demo.shutdown().await;
}
