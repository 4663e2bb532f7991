//! shardmetrics in a real Kubernetes control plane: etcd, kube-apiserver, kube-controller-manager
//! and kube-scheduler built from the pinned upstream sources (`loadtest/upstream/`), with
//! simulated nodes (the node agent) and shardmetrics installed with the RBAC of `deploy/`.
//!
//! One control plane serves every check (starting one takes tens of seconds), in order:
//! the aggregator's APIService is Available; `kubectl top` and `get podmetrics` through the real
//! aggregator report the simulated usage; real RBAC decides who may read metrics; the real HPA
//! controller scales a Deployment up and down on CPU utilization and a second one on a
//! ContainerResource metric, also while a shard is SIGKILLed, without one
//! `FailedGetResourceMetric` event; and the rendered `deploy/` manifests pass the real API
//! server's server-side dry run.
//!
//! [`differential`] runs metrics-server beside shardmetrics on the same kubelets and compares
//! every answer.
//!
//! Needs Go (builds the control plane on first use) and npm (kubectl); it fails, never skips,
//! when they are missing.

use std::collections::BTreeMap;
use std::future::Future;
use std::time::Duration;

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::autoscaling::v2::HorizontalPodAutoscaler;
use k8s_openapi::api::core::v1::{Event, Pod};
use kube::Api;
use kube::api::{ListParams, Patch, PatchParams};
use serde_json::json;
use shardmetrics_loadtest::demo::DemoConfig;
use shardmetrics_loadtest::demo::real::{HpaTimings, RealDemo, deployment};
use shardmetrics_xtask::kubectl::Kubectl;

#[path = "real_cluster/differential.rs"]
mod differential;

const RESOLUTION: Duration = Duration::from_secs(5);
const LEASE: Duration = Duration::from_secs(6);

async fn start(dir: &std::path::Path) -> RealDemo {
    let mut config = DemoConfig::new(env!("CARGO_BIN_EXE_shardmetrics-loadtest").into());
    config.nodes = 4;
    config.pods_per_node = 3;
    config.shards = 2;
    config.frontends = 2;
    config.metric_resolution = RESOLUTION;
    config.lease_duration = Some(LEASE);
    config.lease_renew_period = Some(Duration::from_secs(2));
    config.memory_amplitude_percent = 0;
    config.apps_per_namespace = 1;
    config.kubeconfig = dir.join("kubeconfig");
    config.ready_timeout = Duration::from_secs(240);
    let hpa = HpaTimings { sync_period: Duration::from_secs(5), downscale_stabilization: Duration::from_secs(15) };
    match RealDemo::start(config, hpa).await {
        Ok(d) => d,
        Err(e) => panic!("the real control plane did not start (it needs Go to build it and npm for kubectl): {e}"),
    }
}

/// Millicores of a `kubectl top` CPU cell (`123m`, `2`).
fn millicores(cell: &str) -> i64 {
    match cell.strip_suffix('m') {
        Some(m) => m.parse().unwrap(),
        None => cell.parse::<i64>().unwrap() * 1000,
    }
}

/// Mebibytes of a `kubectl top` memory cell (`123Mi`).
fn mebibytes(cell: &str) -> i64 {
    cell.strip_suffix("Mi").unwrap_or(cell).parse().unwrap()
}

/// The rows of a kubectl table, by their first `key_columns` columns.
fn rows(table: &str, key_columns: usize) -> BTreeMap<String, Vec<String>> {
    table
        .lines()
        .skip(1)
        .filter(|l| !l.trim().is_empty())
        .map(|l| {
            let cells: Vec<String> = l.split_whitespace().map(str::to_owned).collect();
            (cells[..key_columns].join("/"), cells[key_columns..].to_vec())
        })
        .collect()
}

/// Polls `check` every second, keeping the demo supervised, until it holds or `timeout`
/// passes.
async fn eventually(demo: &mut RealDemo, what: &str, timeout: Duration, mut check: impl AsyncFnMut(&mut RealDemo) -> Result<(), String>) {
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        demo.supervise();
        let last = match check(demo).await {
            Ok(()) => return,
            Err(e) => e,
        };
        assert!(tokio::time::Instant::now() < deadline, "timed out after {timeout:?} waiting for: {what}; last: {last}; logs in {}", demo.work_dir().display());
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

/// Waits until the Metrics API (through the aggregator) serves `count` pods of `app`: an HPA
/// created before its pods have two scrapes reports "no metrics returned", as with
/// metrics-server.
async fn wait_pod_metrics(demo: &mut RealDemo, app: &str, count: usize) {
    eventually(demo, &format!("metrics for the {count} pods of {app}"), Duration::from_secs(60), async |d| {
        let req = http::Request::get(format!("/apis/metrics.k8s.io/v1beta1/namespaces/team-a/pods?labelSelector=app%3D{app}")).body(Vec::new()).unwrap();
        let list: serde_json::Value = d.admin().request(req).await.map_err(|e| e.to_string())?;
        let n = list["items"].as_array().map_or(0, Vec::len);
        if n >= count { Ok(()) } else { Err(format!("{n} pods served")) }
    })
    .await;
}

/// `call` retried up to three times on transport errors (an idle keep-alive connection the
/// API server closed just as it was reused, on a loaded machine); API errors fail at once.
async fn retry<T, F: Future<Output = Result<T, kube::Error>>>(what: &str, mut call: impl FnMut() -> F) -> T {
    for attempt in 1.. {
        match call().await {
            Ok(v) => return v,
            Err(e @ kube::Error::Api(_)) => panic!("{what}: {e}"),
            Err(e) if attempt >= 3 => panic!("{what}: {e}"),
            Err(e) => eprintln!("{what}: {e}; retrying"),
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    unreachable!("the loop returns or panics")
}

/// Ready replicas of a Deployment; an API error (an idle connection the API server closed,
/// on a loaded machine) is a failed poll that [`eventually`] retries, not a failed test.
async fn replicas(demo: &RealDemo, ns: &str, name: &str) -> Result<i32, String> {
    let api: Api<Deployment> = Api::namespaced(demo.admin().clone(), ns);
    let d = api.get(name).await.map_err(|e| format!("reading deployment {ns}/{name}: {e}"))?;
    Ok(d.status.and_then(|s| s.ready_replicas).unwrap_or(0))
}

async fn hpa_condition(demo: &RealDemo, ns: &str, name: &str, ty: &str) -> Option<(String, String)> {
    let api: Api<HorizontalPodAutoscaler> = Api::namespaced(demo.admin().clone(), ns);
    let hpa = api.get(name).await.ok()?;
    let c = hpa.status?.conditions?.into_iter().find(|c| c.type_ == ty)?;
    Some((c.status, c.message.unwrap_or_default()))
}

/// Events of the HPA controller that say it could not read metrics.
async fn metric_failures(demo: &RealDemo, ns: &str) -> Vec<String> {
    let api: Api<Event> = Api::namespaced(demo.admin().clone(), ns);
    let all = ListParams::default();
    let events = retry("listing events", || api.list(&all)).await;
    events
        .items
        .into_iter()
        .filter(|e| e.reason.as_deref().is_some_and(|r| r.starts_with("FailedGet") || r == "FailedComputeMetricsReplicas"))
        .map(|e| {
            let when = e.last_timestamp.map(|t| t.0.to_string()).unwrap_or_default();
            let hpa = e.involved_object.name.unwrap_or_default();
            format!("{when} {hpa} x{}: {}: {}", e.count.unwrap_or(1), e.reason.unwrap_or_default(), e.message.unwrap_or_default())
        })
        .collect()
}

/// Sets the simulated CPU usage of every pod of `app` (the kubelets report it from the
/// annotation).
async fn set_pod_cpu(kubectl: &Kubectl, ns: &str, app: &str, millicores: u64) {
    kubectl
        .ok(&["annotate", "pods", "-n", ns, "-l", &format!("app={app}"), "--overwrite", &format!("sim.shardmetrics.io/cpu-millicores={millicores}")])
        .await;
}

fn hpa(name: &str, target: &str, min: i32, max: i32, container: Option<&str>) -> serde_json::Value {
    let metric = match container {
        None => json!({"type": "Resource", "resource": {"name": "cpu", "target": {"type": "Utilization", "averageUtilization": 50}}}),
        Some(c) => json!({"type": "ContainerResource", "containerResource": {"name": "cpu", "container": c, "target": {"type": "Utilization", "averageUtilization": 50}}}),
    };
    json!({
        "apiVersion": "autoscaling/v2",
        "kind": "HorizontalPodAutoscaler",
        "metadata": {"name": name, "namespace": "team-a"},
        "spec": {
            "scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": target},
            "minReplicas": min,
            "maxReplicas": max,
            "metrics": [metric],
        },
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubectl_rbac_and_the_real_hpa_controller_work_against_a_real_kube_apiserver() {
    let dir = tempfile::tempdir().unwrap();
    let mut demo = start(dir.path()).await;
    eprintln!("real control plane ready in {:?}; logs in {}", demo.startup, demo.work_dir().display());
    let kubectl = Kubectl::new(demo.kubeconfig()).await;

    // /version is the pinned release, and the APIService is Available (start waited for it).
    let version = kubectl.ok(&["version", "-o", "json"]).await;
    assert!(version.contains("\"gitVersion\": \"v1.36.3\""), "{version}");
    for name in ["v1beta1.metrics.k8s.io", "v1.metrics.k8s.io"] {
        let apiservice = kubectl.ok(&["get", "apiservice", name, "-o", "jsonpath={.status.conditions[?(@.type==\"Available\")].status}"]).await;
        assert_eq!(apiservice.trim(), "True", "{name}");
    }
    // A client that asks for v1 (the preferred version) through the real aggregator.
    let v1: serde_json::Value = serde_json::from_str(&kubectl.ok(&["get", "--raw", "/apis/metrics.k8s.io/v1/nodes"]).await).unwrap();
    assert_eq!((v1["apiVersion"].as_str(), v1["items"].as_array().map(Vec::len)), (Some("metrics.k8s.io/v1"), Some(4)), "{v1}");
    let preferred = kubectl.ok(&["get", "nodemetrics", "-o", "jsonpath={.items[0].apiVersion}"]).await;
    assert_eq!(preferred.trim(), "metrics.k8s.io/v1", "kubectl get uses the preferred version");

    // kubectl top through the real aggregator, against the simulated usage.
    let node_check = async |d: &mut RealDemo| -> Result<(), String> {
        let nodes = kubectl.ok(&["top", "nodes"]).await;
        let node_rows = rows(&nodes, 1);
        if node_rows.len() != 4 {
            return Err(nodes);
        }
        let now = shardmetrics_plumbing::clock::system().now_ms();
        for (node, cells) in &node_rows {
            let kubelet = d.agent.kubelet(node).unwrap();
            let truth = (kubelet.true_node_cpu(now - 2_000, now) * 1000.0) as i64;
            let shown = millicores(&cells[0]);
            if (shown - truth).abs() > truth / 20 + 5 {
                return Err(format!("{node}: top says {shown}m, true {truth}m\n{nodes}"));
            }
        }
        Ok(())
    };
    // Within a window or two of the start, a node's rate still covers the time before its pods.
    eventually(&mut demo, "kubectl top nodes shows the true node usage", RESOLUTION * 4, node_check).await;
    let all_pods = kubectl.ok(&["top", "pods", "-A"]).await;
    assert_eq!(rows(&all_pods, 2).len(), 12, "{all_pods}");
    let app = kubectl.ok(&["top", "pods", "-n", "team-a", "-l", "app=app-0", "--containers"]).await;
    let pods: Api<Pod> = Api::namespaced(demo.admin().clone(), "team-a");
    let app_0 = ListParams::default().labels("app=app-0");
    let listed = retry("listing pods", || pods.list(&app_0)).await;
    let app_rows = rows(&app, 2);
    assert_eq!(app_rows.len(), listed.items.len(), "{app}");
    for p in &listed.items {
        let ann = p.metadata.annotations.clone().unwrap_or_default();
        let cpu: i64 = ann["sim.shardmetrics.io/cpu-millicores"].parse().unwrap();
        let mem: i64 = ann["sim.shardmetrics.io/memory-bytes"].parse::<i64>().unwrap() >> 20;
        let cells = &app_rows[&format!("{}/main", p.metadata.name.as_deref().unwrap())];
        assert!((millicores(&cells[0]) - cpu).abs() <= 2, "cpu {cells:?} vs {cpu}m\n{app}");
        assert!((mebibytes(&cells[1]) - mem).abs() <= 1, "memory {cells:?} vs {mem}Mi\n{app}");
    }
    let table = kubectl.ok(&["get", "podmetrics", "-A"]).await;
    assert!(table.starts_with("NAMESPACE") && table.contains("WINDOW") && rows(&table, 2).len() == 12, "{table}");

    // Real RBAC: a user allowed one namespace, and a user allowed nothing.
    kubectl.ok(&["create", "rolebinding", "team-a-viewer", "-n", "team-a", "--clusterrole=view", "--user=demo-team-a"]).await;
    let team_a = demo.control_plane.user_context("team-a", "demo-team-a", None).unwrap();
    let mut contexts = vec![demo.control_plane.admin_context("demo-admin"), team_a];
    contexts.push(demo.control_plane.user_context("demo-noaccess", "demo-noaccess", None).unwrap());
    let kc = demo.work_dir().join("users.kubeconfig");
    demo.control_plane.write_kubeconfig(&kc, &contexts).unwrap();
    let users = Kubectl::new(&kc).await;
    let own = users.ok(&["--context", "team-a", "top", "pods", "-n", "team-a"]).await;
    assert!(rows(&own, 1).len() >= 2, "{own}");
    let (ok, _, err) = users.run(&["--context", "team-a", "top", "pods", "-A"]).await;
    assert!(!ok && err.contains("Forbidden") && err.contains("demo-team-a"), "{err}");
    let (ok, _, err) = users.run(&["--context", "demo-noaccess", "top", "nodes"]).await;
    assert!(!ok && err.contains("Forbidden") && err.contains("demo-noaccess"), "{err}");

    // The real HPA controller on CPU utilization: up while the pods use 3x their request, down
    // once they use a tenth of it.
    let admin = demo.admin().clone();
    let deployments: Api<Deployment> = Api::namespaced(admin.clone(), "team-a");
    let apply = PatchParams::apply("real-cluster-test").force();
    let web = deployment("team-a", "web", 2, 1, 300, 100, 64 << 20);
    let web = Patch::Apply(&web);
    retry("applying deployment web", || deployments.patch("web", &apply, &web)).await;
    wait_pod_metrics(&mut demo, "web", 2).await;
    let hpas: Api<HorizontalPodAutoscaler> = Api::namespaced(admin.clone(), "team-a");
    let web_hpa = hpa("web", "web", 2, 6, None);
    let web_hpa = Patch::Apply(&web_hpa);
    retry("applying HPA web", || hpas.patch("web", &apply, &web_hpa)).await;
    eventually(&mut demo, "the HPA scales web up", Duration::from_secs(180), async |d| {
        let r = replicas(d, "team-a", "web").await?;
        if r >= 4 { Ok(()) } else { Err(format!("{r} ready replicas; ScalingActive {:?}", hpa_condition(d, "team-a", "web", "ScalingActive").await)) }
    })
    .await;
    let active = hpa_condition(&demo, "team-a", "web", "ScalingActive").await;
    assert_eq!(active.as_ref().map(|(s, _)| s.as_str()), Some("True"), "{active:?}");

    // A shard crashes (SIGKILL) while the HPA is active: its nodes move, the HPA never misses.
    let (victim, pid) = demo.children().into_iter().find(|(n, _)| n.starts_with("scraper-")).unwrap();
    let killed = std::process::Command::new("kill").arg("-9").arg(pid.to_string()).status().unwrap();
    assert!(killed.success());
    let crashed_at = tokio::time::Instant::now();
    eventually(&mut demo, "the killed shard runs again", Duration::from_secs(60), async |d| {
        let back = d.children().into_iter().any(|(n, p)| n == victim && p != pid);
        if back { Ok(()) } else { Err(format!("{:?}", d.children())) }
    })
    .await;
    eprintln!("{victim} back after {:?}", crashed_at.elapsed());

    // Down again, once it is at its maximum (no pod created later keeps the template's usage).
    eventually(&mut demo, "the HPA scales web to its maximum", Duration::from_secs(120), async |d| {
        let r = replicas(d, "team-a", "web").await?;
        if r == 6 { Ok(()) } else { Err(format!("{r} ready replicas")) }
    })
    .await;
    set_pod_cpu(&kubectl, "team-a", "web", 10).await;
    eventually(&mut demo, "the HPA scales web down", Duration::from_secs(180), async |d| {
        let r = replicas(d, "team-a", "web").await?;
        if r <= 2 { Ok(()) } else { Err(format!("{r} ready replicas")) }
    })
    .await;

    // A ContainerResource metric on the main container.
    let api_deployment = deployment("team-a", "api", 1, 2, 200, 100, 64 << 20);
    let api_deployment = Patch::Apply(&api_deployment);
    retry("applying deployment api", || deployments.patch("api", &apply, &api_deployment)).await;
    wait_pod_metrics(&mut demo, "api", 1).await;
    let api_hpa = hpa("api", "api", 1, 4, Some("main"));
    let api_hpa = Patch::Apply(&api_hpa);
    retry("applying HPA api", || hpas.patch("api", &apply, &api_hpa)).await;
    eventually(&mut demo, "the ContainerResource HPA scales api up", Duration::from_secs(180), async |d| {
        let r = replicas(d, "team-a", "api").await?;
        if r >= 2 { Ok(()) } else { Err(format!("{r} ready replicas; ScalingActive {:?}", hpa_condition(d, "team-a", "api", "ScalingActive").await)) }
    })
    .await;
    let active = hpa_condition(&demo, "team-a", "api", "ScalingActive").await;
    assert_eq!(active.as_ref().map(|(s, _)| s.as_str()), Some("True"), "{active:?}");
    let failures = metric_failures(&demo, "team-a").await;
    assert!(failures.is_empty(), "the HPA controller could not read metrics: {failures:?}");

    demo.shutdown().await;
}

/// A control plane alone (no demo installed, so nothing the manifests create exists yet).
async fn bare_control_plane(dir: &std::path::Path) -> shardmetrics_loadtest::control_plane::ControlPlane {
    use shardmetrics_loadtest::control_plane::{ControlPlane, ControlPlaneConfig};
    let binaries = tokio::task::spawn_blocking(shardmetrics_xtask::upstream::control_plane).await.unwrap().unwrap();
    ControlPlane::start(ControlPlaneConfig::new(binaries, dir.to_owned())).await.expect("the control plane starts")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_render_of_deploy_passes_the_real_api_servers_server_side_dry_run() {
    let dir = tempfile::tempdir().unwrap();
    let plane = bare_control_plane(dir.path()).await;
    let kc = plane.dir().join("admin.kubeconfig");
    plane.write_kubeconfig(&kc, &[plane.admin_context("admin")]).unwrap();
    let kubectl = Kubectl::new(&kc).await;
    let root = shardmetrics_xtask::tools::workspace_root();
    for overlay in ["deploy/kustomize/base", "deploy/kustomize/overlays/single-node", "deploy/kustomize/overlays/large-cluster"] {
        let rendered = kubectl.ok(&["kustomize", &root.join(overlay).display().to_string()]).await;
        let file = kubectl.file("rendered.yaml", &rendered);
        let out = kubectl.ok(&["apply", "--server-side", "--dry-run=server", "-f", &file]).await;
        for name in ["v1beta1.metrics.k8s.io", "v1.metrics.k8s.io"] {
            assert!(out.contains(&format!("apiservice.apiregistration.k8s.io/{name} serverside-applied (server dry run)")), "{overlay}:\n{out}");
        }
    }
    let helm = tokio::task::spawn_blocking(shardmetrics_xtask::tools::helm).await.unwrap().unwrap();
    let chart = root.join("deploy/helm/shardmetrics");
    for values in [None, Some("values-single-node.yaml"), Some("values-large-cluster.yaml")] {
        let mut cmd = std::process::Command::new(&helm);
        cmd.args(["template", "shardmetrics", "-n", "kube-system"]).arg(&chart);
        if let Some(v) = values {
            cmd.arg("-f").arg(chart.join(v));
        }
        let out = cmd.output().unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        let file = kubectl.file("helm.yaml", &String::from_utf8_lossy(&out.stdout));
        let applied = kubectl.ok(&["apply", "--server-side", "--dry-run=server", "-f", &file]).await;
        assert!(applied.contains("(server dry run)"), "{values:?}:\n{applied}");
    }
    plane.shutdown().await;
}
