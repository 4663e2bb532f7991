//! The differential test: shardmetrics and metrics-server v0.8.0 (built from the pinned
//! upstream module) scrape the same simulated kubelets at once under a real kube-apiserver, and
//! every answer is compared.
//!
//! The kubelets round their sample timestamps down to 20 s (cAdvisor's housekeeping does the
//! same), and both systems scrape every 10 s, so in the second half of each 20 s period both
//! hold the same two samples of every node: the test fetches everything from both and keeps the
//! round only when every timestamp agrees, then requires:
//! - NodeMetrics and PodMetrics equal in JSON, in protobuf (both decoded, nothing unknown) and
//!   in Table: names, labels, `timestamp`, `window`, memory exactly, CPU within 1n (both parse
//!   the kubelet's float seconds), item order; containers are compared by name (metrics-server
//!   writes them in Go map order) and `creationTimestamp` is the time of each answer;
//! - the same HTTP status and byte-identical `Status` body for the 404s (node missing, pod
//!   missing, pod without metrics), the 400s (bad label selectors, unsupported or malformed
//!   field selectors) and the 405 of `watch`;
//! - the same discovery documents.
//!
//! Every difference that remains on purpose is listed in docs/metrics-server-differences.md.

use std::net::SocketAddr;
use std::time::Duration;

use http_body_util::{BodyExt, Empty};
use prost::Message;
use serde_json::{Value, json};
use shardmetrics_frontend::api::protobuf::{self, NodeMetricsList, PodMetricsList};
use shardmetrics_loadtest::demo::DemoConfig;
use shardmetrics_loadtest::demo::real::{HpaTimings, RealDemo, deployment};
use shardmetrics_plumbing::pki::CertKey;

const RESOLUTION: Duration = Duration::from_secs(10);
const SAMPLE_PERIOD: Duration = Duration::from_secs(20);
const TABLE: &str = "application/json;as=Table;v=v1;g=meta.k8s.io,application/json";
const PROTOBUF: &str = "application/vnd.kubernetes.protobuf";

type Https = hyper_util::client::legacy::Client<
    hyper_rustls::HttpsConnector<hyper_util::client::legacy::connect::HttpConnector>,
    Empty<bytes::Bytes>,
>;

/// One answer: status, content type, body.
#[derive(Debug, Clone)]
struct Answer {
    status: u16,
    content_type: String,
    body: Vec<u8>,
}

impl Answer {
    fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|e| panic!("not JSON ({e}): {}", String::from_utf8_lossy(&self.body)))
    }

    fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

/// Both systems, asked the same way (a `system:masters` client certificate, which both
/// authenticate through the cluster's client CA).
struct Pair {
    client: Https,
    ours: SocketAddr,
    theirs: SocketAddr,
}

impl Pair {
    fn new(cert: &CertKey, ours: SocketAddr, theirs: SocketAddr) -> Pair {
        let tls = shardmetrics_plumbing::pki::client_config(None, Some(cert)).expect("client TLS");
        let connector = hyper_rustls::HttpsConnectorBuilder::new().with_tls_config(tls).https_only().enable_http1().build();
        let client = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new()).build(connector);
        Pair { client, ours, theirs }
    }

    async fn one(&self, addr: SocketAddr, path: &str, accept: Option<&str>) -> Answer {
        let mut req = http::Request::get(format!("https://{addr}{path}"));
        if let Some(a) = accept {
            req = req.header("accept", a);
        }
        let resp = tokio::time::timeout(Duration::from_secs(20), self.client.request(req.body(Empty::new()).expect("request")))
            .await
            .unwrap_or_else(|_| panic!("{addr}{path} timed out"))
            .unwrap_or_else(|e| panic!("{addr}{path}: {e}"));
        let status = resp.status().as_u16();
        let content_type = resp.headers().get("content-type").and_then(|v| v.to_str().ok()).unwrap_or("").to_owned();
        let body = resp.into_body().collect().await.expect("body").to_bytes().to_vec();
        Answer { status, content_type, body }
    }

    /// (shardmetrics, metrics-server).
    async fn get(&self, path: &str, accept: Option<&str>) -> (Answer, Answer) {
        let (a, b) = tokio::join!(self.one(self.ours, path, accept), self.one(self.theirs, path, accept));
        (a, b)
    }
}

/// Compares two JSON documents: equal, except that strings of nanocores (`123n`) may differ by
/// 1 and `creationTimestamp` is the time of each answer. Returns the first difference.
fn diff(path: &str, ours: &Value, theirs: &Value) -> Option<String> {
    match (ours, theirs) {
        (Value::Object(a), Value::Object(b)) => {
            let keys: std::collections::BTreeSet<&String> = a.keys().chain(b.keys()).collect();
            keys.into_iter().filter(|k| k.as_str() != "creationTimestamp").find_map(|k| match (a.get(k), b.get(k)) {
                (Some(x), Some(y)) => diff(&format!("{path}.{k}"), x, y),
                (x, y) => Some(format!("{path}.{k}: shardmetrics {x:?}, metrics-server {y:?}")),
            })
        }
        (Value::Array(a), Value::Array(b)) if a.len() == b.len() => {
            a.iter().zip(b).enumerate().find_map(|(i, (x, y))| diff(&format!("{path}[{i}]"), x, y))
        }
        (Value::String(a), Value::String(b)) if a != b => match (nanocores(a), nanocores(b)) {
            (Some(x), Some(y)) if x.abs_diff(y) <= 1 => None,
            _ => Some(format!("{path}: shardmetrics {a:?}, metrics-server {b:?}")),
        },
        (a, b) if a != b => Some(format!("{path}: shardmetrics {a}, metrics-server {b}")),
        _ => None,
    }
}

fn nanocores(s: &str) -> Option<u64> {
    s.strip_suffix('n')?.parse().ok()
}

/// Containers sorted by name (metrics-server writes them in Go map order).
fn sort_containers(v: &mut Value) {
    for item in v["items"].as_array_mut().into_iter().flatten() {
        if let Some(c) = item["containers"].as_array_mut() {
            c.sort_by(|x, y| x["name"].as_str().cmp(&y["name"].as_str()));
        }
    }
    for row in v["rows"].as_array_mut().into_iter().flatten() {
        if let Some(c) = row["object"]["containers"].as_array_mut() {
            c.sort_by(|x, y| x["name"].as_str().cmp(&y["name"].as_str()));
        }
    }
}

/// Every `timestamp` in a list, in order.
fn timestamps(v: &Value) -> Vec<String> {
    v["items"].as_array().into_iter().flatten().map(|i| i["timestamp"].to_string()).collect()
}

/// The protobuf wire format of `bytes` as text (field numbers, varints, nested messages where
/// the bytes parse as one, else strings), to show what differs.
fn wire(bytes: &[u8], depth: usize) -> Option<String> {
    let mut out = String::new();
    let mut i = 0;
    let varint = |i: &mut usize| -> Option<u64> {
        let mut v = 0u64;
        for shift in (0..64).step_by(7) {
            let b = *bytes.get(*i)?;
            *i += 1;
            v |= u64::from(b & 0x7f) << shift;
            if b < 0x80 {
                return Some(v);
            }
        }
        None
    };
    while i < bytes.len() {
        let key = varint(&mut i)?;
        let (field, kind) = (key >> 3, key & 7);
        let pad = "  ".repeat(depth);
        match kind {
            0 => out.push_str(&format!("{pad}{field}: {}\n", varint(&mut i)?)),
            2 => {
                let len = usize::try_from(varint(&mut i)?).ok()?;
                let inner = bytes.get(i..i + len)?;
                i += len;
                match (depth < 6).then(|| wire(inner, depth + 1)).flatten().filter(|_| !inner.is_empty() && inner.iter().any(|b| *b < 0x20)) {
                    Some(nested) => out.push_str(&format!("{pad}{field} {{\n{nested}{pad}}}\n")),
                    None => out.push_str(&format!("{pad}{field}: {:?}\n", String::from_utf8_lossy(inner))),
                }
            }
            _ => return None,
        }
    }
    Some(out)
}

/// The paths of the fields of a protobuf message that hold a value other than proto2's default
/// (gogo writes empty strings and zeros; prost leaves them out), e.g. `2.1.11.1` for a label key
/// of an item; nested messages are recognised by parsing (the same bytes read the same way on
/// both sides).
fn field_paths(bytes: &[u8], prefix: &str, out: &mut std::collections::BTreeSet<String>) -> bool {
    let mut i = 0;
    let varint = |i: &mut usize| -> Option<u64> {
        let mut v = 0u64;
        for shift in (0..64).step_by(7) {
            let b = *bytes.get(*i)?;
            *i += 1;
            v |= u64::from(b & 0x7f) << shift;
            if b < 0x80 {
                return Some(v);
            }
        }
        None
    };
    let mut found = std::collections::BTreeSet::new();
    while i < bytes.len() {
        let Some(key) = varint(&mut i) else { return false };
        let path = if prefix.is_empty() { (key >> 3).to_string() } else { format!("{prefix}.{}", key >> 3) };
        match key & 7 {
            0 => match varint(&mut i) {
                Some(0) => {}
                Some(_) => {
                    found.insert(path);
                }
                None => return false,
            },
            2 => {
                let Some(len) = varint(&mut i).and_then(|l| usize::try_from(l).ok()) else { return false };
                let Some(inner) = bytes.get(i..i + len) else { return false };
                i += len;
                let mut nested = std::collections::BTreeSet::new();
                if !inner.is_empty() && field_paths(inner, &path, &mut nested) && inner.iter().any(|b| *b < 0x20) {
                    found.extend(nested);
                } else if !inner.is_empty() {
                    found.insert(path);
                }
            }
            _ => return false,
        }
    }
    out.extend(found);
    true
}

/// A protobuf list as JSON-like values, for [`diff`], and the paths of its non-default fields.
fn protobuf_list(body: &[u8], pods: bool) -> Result<(Value, std::collections::BTreeSet<String>), String> {
    let (type_meta, raw) = protobuf::decode_envelope(body).expect("a Kubernetes protobuf envelope");
    let time = |t: &Option<protobuf::Time>| t.as_ref().map(|t| json!([t.seconds.unwrap_or(0), t.nanos.unwrap_or(0)]));
    let usage = |u: &std::collections::BTreeMap<String, protobuf::Quantity>| -> Value {
        u.iter().map(|(k, q)| (k.clone(), json!(q.string))).collect::<serde_json::Map<_, _>>().into()
    };
    // proto2: an absent field reads as its default.
    let meta = |m: &Option<protobuf::ObjectMeta>| {
        let m = m.clone().unwrap_or_default();
        let s = |v: &Option<String>| v.clone().unwrap_or_default();
        json!({"name": s(&m.name), "namespace": s(&m.namespace), "labels": m.labels, "selfLink": s(&m.self_link), "uid": s(&m.uid), "resourceVersion": s(&m.resource_version)})
    };
    let items: Vec<Value> = if pods {
        let list = PodMetricsList::decode(raw.as_slice()).map_err(|e| format!("not a PodMetricsList: {e}"))?;
        list.items
            .iter()
            .map(|p| {
                let mut containers: Vec<Value> = p.containers.iter().map(|c| json!({"name": c.name, "usage": usage(&c.usage)})).collect();
                containers.sort_by(|x, y| x["name"].as_str().cmp(&y["name"].as_str()));
                json!({"metadata": meta(&p.metadata), "timestamp": time(&p.timestamp), "window": p.window.as_ref().map(|w| w.duration), "containers": containers})
            })
            .collect()
    } else {
        let list = NodeMetricsList::decode(raw.as_slice()).map_err(|e| format!("not a NodeMetricsList: {e}"))?;
        list.items
            .iter()
            .map(|n| json!({"metadata": meta(&n.metadata), "timestamp": time(&n.timestamp), "window": n.window.as_ref().map(|w| w.duration), "usage": usage(&n.usage)}))
            .collect()
    };
    let mut paths = std::collections::BTreeSet::new();
    if !field_paths(&raw, "", &mut paths) {
        return Err("not protobuf".into());
    }
    Ok((json!({"typeMeta": [type_meta.api_version, type_meta.kind], "items": items}), paths))
}

/// The data the round compares, as (what, shardmetrics, metrics-server).
async fn fetch_round(pair: &Pair, pod: &str) -> Vec<(String, Answer, Answer)> {
    let mut out = Vec::new();
    for (path, accept) in [
        ("/apis/metrics.k8s.io/v1beta1/nodes", None),
        ("/apis/metrics.k8s.io/v1beta1/pods", None),
        ("/apis/metrics.k8s.io/v1beta1/namespaces/team-a/pods", None),
        ("/apis/metrics.k8s.io/v1beta1/namespaces/team-a/pods?labelSelector=app%3Dapp-0", None),
        ("/apis/metrics.k8s.io/v1beta1/pods?labelSelector=app%20in%20(app-0),!nope", None),
        ("/apis/metrics.k8s.io/v1beta1/nodes?labelSelector=kubernetes.io%2Fos%3Dlinux", None),
        (&format!("/apis/metrics.k8s.io/v1beta1/pods?fieldSelector=metadata.name%3D{pod}"), None),
        ("/apis/metrics.k8s.io/v1beta1/pods?fieldSelector=metadata.namespace!%3Dteam-a", None),
        ("/apis/metrics.k8s.io/v1beta1/nodes", Some(PROTOBUF)),
        ("/apis/metrics.k8s.io/v1beta1/pods", Some(PROTOBUF)),
        ("/apis/metrics.k8s.io/v1beta1/nodes", Some(TABLE)),
        ("/apis/metrics.k8s.io/v1beta1/pods", Some(TABLE)),
        ("/apis/metrics.k8s.io/v1beta1/namespaces/team-a/pods", Some(TABLE)),
    ] {
        let (a, b) = pair.get(path, accept).await;
        out.push((format!("{path} ({})", accept.unwrap_or("json")), a, b));
    }
    // shardmetrics' v1 against metrics-server's v1beta1: the same but for `apiVersion`.
    for path in ["nodes", "pods"] {
        let (ga, beta) = (format!("/apis/metrics.k8s.io/v1/{path}"), format!("/apis/metrics.k8s.io/v1beta1/{path}"));
        let (a, b) = tokio::join!(pair.one(pair.ours, &ga, None), pair.one(pair.theirs, &beta, None));
        let b = Answer { body: String::from_utf8_lossy(&b.body).replace("metrics.k8s.io/v1beta1", "metrics.k8s.io/v1").into_bytes(), ..b };
        out.push((format!("/apis/metrics.k8s.io/v1/{path} (json, as v1beta1)"), a, b));
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shardmetrics_answers_as_metrics_server_does_for_the_same_kubelet_samples() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = DemoConfig::new(env!("CARGO_BIN_EXE_shardmetrics-loadtest").into());
    config.nodes = 3;
    config.pods_per_node = 2;
    config.containers_per_pod = 2;
    config.shards = 2;
    config.frontends = 1;
    config.metric_resolution = RESOLUTION;
    config.kubelet_sample_period = SAMPLE_PERIOD;
    config.apps_per_namespace = 1;
    config.kubeconfig = dir.path().join("kubeconfig");
    config.ready_timeout = Duration::from_secs(240);
    let mut demo = match RealDemo::start(config, HpaTimings::default()).await {
        Ok(d) => d,
        Err(e) => panic!("the real control plane did not start (it needs Go to build it and npm for kubectl): {e}"),
    };
    let peers = demo.start_metrics_server(1, RESOLUTION).await.unwrap_or_else(|e| panic!("metrics-server did not start: {e}"));
    let cert = demo.control_plane.ca().client_cert("differential-test", &["system:masters"]).unwrap();
    let pair = Pair::new(&cert, demo.frontend_addrs()[0], peers[0].addr());
    let logs = demo.work_dir().display().to_string();

    // Every difference found, reported together at the end.
    let mut problems: Vec<String> = Vec::new();

    // Discovery first: nothing to wait for.
    for (path, accept) in [
        ("/apis", None),
        ("/apis/metrics.k8s.io", None),
        ("/apis/metrics.k8s.io/v1beta1", None),
        ("/apis", Some("application/json;g=apidiscovery.k8s.io;v=v2;as=APIGroupDiscoveryList")),
    ] {
        let (a, b) = pair.get(path, accept).await;
        assert_eq!((a.status, b.status), (200, 200), "{path}: {}\n{}", a.text(), b.text());
        if a.content_type != b.content_type {
            problems.push(format!("{path}: content type {:?} vs {:?}", a.content_type, b.content_type));
        }
        let (mut x, mut y) = (a.json(), b.json());
        own_address(&mut x, pair.ours);
        own_address(&mut y, pair.theirs);
        // The deliberate differences: shardmetrics also serves v1, preferred, and watch.
        if accept.is_some() {
            aggregated_with_v1(&mut y);
        } else {
            with_v1(&mut y);
        }
        with_watch(&mut y);
        if let Some(d) = diff(path, &x, &y) {
            problems.push(format!("discovery: {d}\n  shardmetrics:   {}\n  metrics-server: {}", a.text(), b.text()));
        }
    }

    // The same samples, in every encoding.
    let a_pod = {
        let api: kube::Api<k8s_openapi::api::core::v1::Pod> = kube::Api::namespaced(demo.admin().clone(), "team-a");
        let pods = api.list(&Default::default()).await.unwrap();
        pods.items[0].metadata.name.clone().unwrap()
    };
    let deadline = tokio::time::Instant::now() + Duration::from_secs(180);
    let mut compared_rounds = 0;
    let mut last = String::new();
    while compared_rounds < 2 {
        demo.supervise();
        assert!(tokio::time::Instant::now() < deadline, "no round where both held the same samples; last: {last}; logs in {logs}");
        let round = fetch_round(&pair, &a_pod).await;
        // Keep the round only when both held the same samples from its start to its end.
        let (nodes_after, _) = pair.get("/apis/metrics.k8s.io/v1beta1/nodes", None).await;
        let (pods_after, _) = pair.get("/apis/metrics.k8s.io/v1beta1/pods", None).await;
        let stamps = |a: &Answer| if a.status == 200 { timestamps(&a.json()) } else { Vec::new() };
        let (nodes_a, nodes_b, pods_a, pods_b) = (stamps(&round[0].1), stamps(&round[0].2), stamps(&round[1].1), stamps(&round[1].2));
        let same_samples = !nodes_a.is_empty()
            && !pods_a.is_empty()
            && nodes_a == nodes_b
            && pods_a == pods_b
            && stamps(&nodes_after) == nodes_a
            && stamps(&pods_after) == pods_a;
        if !same_samples {
            last = format!("pods: shardmetrics {pods_a:?}, metrics-server {pods_b:?}");
            tokio::time::sleep(Duration::from_secs(1)).await;
            continue;
        }
        for (what, a, b) in &round {
            if a.status != b.status {
                problems.push(format!("{what}: status {} vs {}: {}\n{}", a.status, b.status, a.text(), b.text()));
                continue;
            }
            if a.content_type != b.content_type {
                problems.push(format!("{what}: content type {:?} vs {:?}", a.content_type, b.content_type));
            }
            let (mut x, mut y) = if what.ends_with(&format!("({PROTOBUF})")) {
                match (protobuf_list(&a.body, what.contains("/pods")), protobuf_list(&b.body, what.contains("/pods"))) {
                    (Ok((x, px)), Ok((y, py))) => {
                        // The same fields set (nothing either side's schema misses), then the same values.
                        if px != py {
                            problems.push(format!(
                                "{what}: fields only shardmetrics sets {:?}, only metrics-server sets {:?}",
                                px.difference(&py).collect::<Vec<_>>(),
                                py.difference(&px).collect::<Vec<_>>()
                            ));
                        }
                        (x, y)
                    }
                    (x, y) => {
                        let raw = |body: &[u8]| protobuf::decode_envelope(body).ok().and_then(|(_, raw)| wire(&raw, 0)).unwrap_or_default();
                        problems.push(format!(
                            "{what}: shardmetrics {:?}, metrics-server {:?}\n  shardmetrics wire:\n{}\n  metrics-server wire:\n{}",
                            x.err(),
                            y.err(),
                            short(&raw(&a.body)),
                            short(&raw(&b.body))
                        ));
                        continue;
                    }
                }
            } else {
                if a.body.ends_with(b"\n") != b.body.ends_with(b"\n") {
                    problems.push(format!("{what}: trailing newline"));
                }
                (a.json(), b.json())
            };
            // Deliberate differences: shardmetrics serves the swap the kubelets report, and lists
            // carry the resourceVersion a watch resumes from.
            without_swap(&mut x);
            without_list_version(&mut x);
            sort_containers(&mut x);
            sort_containers(&mut y);
            if let Some(d) = diff(what, &x, &y) {
                problems.push(format!("{d}\n  shardmetrics:   {}\n  metrics-server: {}", short(&a.text()), short(&b.text())));
            }
        }
        compared_rounds += 1;
        if !problems.is_empty() {
            break;
        }
        // The next round in another sample period.
        tokio::time::sleep(SAMPLE_PERIOD / 2).await;
    }

    // Errors: the same status and the same Status body, byte for byte.
    let errors = [
        "/apis/metrics.k8s.io/v1beta1/nodes/no-such-node",
        "/apis/metrics.k8s.io/v1beta1/namespaces/team-a/pods/no-such-pod",
        "/apis/metrics.k8s.io/v1beta1/namespaces/no-such-namespace/pods/no-such-pod",
        "/apis/metrics.k8s.io/v1beta1/pods?labelSelector=app%20in",
        "/apis/metrics.k8s.io/v1beta1/pods?labelSelector=%21%21",
        "/apis/metrics.k8s.io/v1beta1/pods?labelSelector=a%20b",
        "/apis/metrics.k8s.io/v1beta1/pods?labelSelector=-a%3D1",
        "/apis/metrics.k8s.io/v1beta1/pods?labelSelector=a%3D-x",
        "/apis/metrics.k8s.io/v1beta1/pods?labelSelector=n%3Ex",
        "/apis/metrics.k8s.io/v1beta1/nodes?labelSelector=a%3Db%20c",
        "/apis/metrics.k8s.io/v1beta1/pods?fieldSelector=spec.nodeName%3Dn1",
        "/apis/metrics.k8s.io/v1beta1/nodes?fieldSelector=spec.unschedulable%3Dfalse",
        "/apis/metrics.k8s.io/v1beta1/pods?fieldSelector=metadata.name",
        "/apis/metrics.k8s.io/v1beta1/pods?fieldSelector=metadata.name%3Da%3Db",
        "/apis/metrics.k8s.io/v1beta1/pods?fieldSelector=metadata.name%3Da%5Cx",
        "/apis/metrics.k8s.io/v1beta1/pods?fieldSelector=spec.nodeName%3Dn1&watch=true",
    ];
    for path in errors {
        let (a, b) = pair.get(path, None).await;
        if (a.status, a.text()) != (b.status, b.text()) {
            problems.push(format!("{path}:\n  shardmetrics:   {} {}\n  metrics-server: {} {}", a.status, short(&a.text()), b.status, short(&b.text())));
        }
    }
    let (a, b) = pair.get("/apis/metrics.k8s.io/v1beta1/pods?includeObject=Bogus", Some(TABLE)).await;
    if (a.status, a.text()) != (b.status, b.text()) {
        problems.push(format!("includeObject on a Table:\n  shardmetrics:   {} {}\n  metrics-server: {} {}", a.status, a.text(), b.status, b.text()));
    }

    // A Running pod neither has scraped twice yet: podmetrics "ns/name" not found from both.
    let admin = demo.admin().clone();
    let deployments: kube::Api<k8s_openapi::api::apps::v1::Deployment> = kube::Api::namespaced(admin.clone(), "team-a");
    let apply = kube::api::PatchParams::apply("differential-test").force();
    deployments.patch("fresh", &apply, &kube::api::Patch::Apply(&deployment("team-a", "fresh", 1, 1, 100, 100, 64 << 20))).await.unwrap();
    let pods: kube::Api<k8s_openapi::api::core::v1::Pod> = kube::Api::namespaced(admin, "team-a");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        assert!(tokio::time::Instant::now() < deadline, "never saw the fresh pod without metrics from both; last: {last}; logs in {logs}");
        let running = pods.list(&kube::api::ListParams::default().labels("app=fresh")).await.unwrap();
        let Some(name) = running
            .items
            .iter()
            .find(|p| p.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Running"))
            .and_then(|p| p.metadata.name.clone())
        else {
            tokio::time::sleep(Duration::from_millis(200)).await;
            continue;
        };
        let (a, b) = pair.get(&format!("/apis/metrics.k8s.io/v1beta1/namespaces/team-a/pods/{name}"), None).await;
        let want = format!("podmetrics.metrics.k8s.io \\\"team-a/{name}\\\" not found");
        if a.status == 404 && b.status == 404 && a.text().contains(&want) && b.text().contains(&want) {
            if a.text() != b.text() {
                problems.push(format!("a pod without metrics:\n  shardmetrics:   {}\n  metrics-server: {}", a.text(), b.text()));
            }
            break;
        }
        last = format!("shardmetrics {} {}; metrics-server {} {}", a.status, a.text(), b.status, b.text());
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    drop(peers);
    demo.shutdown().await;
    assert!(problems.is_empty(), "shardmetrics and metrics-server differ:\n{}", problems.join("\n"));
}

/// metrics-server's discovery document as it reads with `metrics.k8s.io/v1` served too and
/// shardmetrics' answer as metrics-server, which serves no swap, would give it: no `swap` in any
/// `usage`, and a Table without its `swap` column.
fn without_swap(v: &mut Value) {
    match v {
        Value::Object(map) => {
            if let Some(Value::Object(usage)) = map.get_mut("usage") {
                usage.remove("swap");
            }
            let swap_column = map.get("columnDefinitions").and_then(Value::as_array).and_then(|c| c.iter().position(|d| d["name"] == "swap"));
            if let Some(i) = swap_column {
                map.get_mut("columnDefinitions").and_then(Value::as_array_mut).map(|c| c.remove(i));
                for row in map.get_mut("rows").and_then(Value::as_array_mut).into_iter().flatten() {
                    row.get_mut("cells").and_then(Value::as_array_mut).map(|c| c.remove(i));
                }
            }
            map.values_mut().for_each(without_swap);
        }
        Value::Array(items) => items.iter_mut().for_each(without_swap),
        _ => {}
    }
}

/// preferred: the v1 entry before the v1beta1 one, the same resources.
fn with_v1(v: &mut Value) {
    let gv = json!({"groupVersion": "metrics.k8s.io/v1", "version": "v1"});
    let add = |g: &mut Value| {
        if let Some(versions) = g["versions"].as_array_mut() {
            versions.insert(0, gv.clone());
            g["preferredVersion"] = gv.clone();
        }
    };
    if v.get("name").is_some_and(|n| n == "metrics.k8s.io") {
        add(v);
    }
    for g in v["groups"].as_array_mut().into_iter().flatten() {
        add(g);
    }
}

/// metrics-server's discovery as shardmetrics, which also serves `watch`, writes it.
fn with_watch(v: &mut Value) {
    match v {
        Value::Object(map) => {
            if let Some(Value::Array(verbs)) = map.get_mut("verbs")
                && !verbs.iter().any(|x| x == "watch")
            {
                verbs.push(json!("watch"));
            }
            map.values_mut().for_each(with_watch);
        }
        Value::Array(items) => items.iter_mut().for_each(with_watch),
        _ => {}
    }
}

/// shardmetrics' list (or Table) without the `metadata.resourceVersion` metrics-server does not
/// write (the serving replica's clock, what a watch resumes from).
fn without_list_version(v: &mut Value) {
    if let Some(Value::Object(meta)) = v.get_mut("metadata") {
        meta.remove("resourceVersion");
    }
}

/// The same for aggregated discovery (`APIGroupDiscoveryList`).
fn aggregated_with_v1(v: &mut Value) {
    for item in v["items"].as_array_mut().into_iter().flatten() {
        if let Some(versions) = item["versions"].as_array_mut()
            && let Some(beta) = versions.first().cloned()
        {
            let mut ga = beta;
            ga["version"] = json!("v1");
            versions.insert(0, ga);
        }
    }
}

/// The first 600 characters (lists are long).
fn short(s: &str) -> String {
    s.chars().take(600).collect()
}

/// `serverAddressByClientCIDRs` names each server's own port: read it as "own port".
fn own_address(v: &mut Value, addr: SocketAddr) {
    let own = format!(":{}", addr.port());
    for group in v["groups"].as_array_mut().into_iter().flatten() {
        for a in group["serverAddressByClientCIDRs"].as_array_mut().into_iter().flatten() {
            if a["serverAddress"] == own.as_str() {
                a["serverAddress"] = json!("<own port>");
            }
        }
    }
    for a in v["serverAddressByClientCIDRs"].as_array_mut().into_iter().flatten() {
        if a["serverAddress"] == own.as_str() {
            a["serverAddress"] = json!("<own port>");
        }
    }
}
