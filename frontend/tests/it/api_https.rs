//! The whole replica over real sockets: a tonic `SampleStream` server feeds known scrapes, the
//! frontend subscribes, and an HTTPS client (hyper + rustls, HTTP/1.1 and HTTP/2, front-proxy
//! client certificate) checks JSON, protobuf and Table answers, Status errors, authentication,
//! the in-flight limit, health and self-metrics.

use prost::Message;
use serde_json::json;
use shardmetrics_frontend::api::protobuf::{NodeMetrics, PodMetricsList, decode_envelope};
use shardmetrics_proto::ShardIdentity;
use crate::support::{ADMIN, FakeShard, Frontend, FrontendOptions, PodSpec, Version, admin_get, get, scrape, send, snapshot};

const N1_PODS: &[PodSpec<'static>] = &[
    ("default", "web-b", &["app", "istio-proxy"]),
    ("default", "web-a", &["app"]),
    ("kube-system", "coredns-1", &["coredns"]),
];
const N2_PODS: &[PodSpec<'static>] = &[("default", "api-0", &["api"]), ("monitoring", "prom-0", &["prometheus"])];

async fn cluster() -> (FakeShard, Frontend) {
    let id = ShardIdentity { shard_id: "shard-0".into(), epoch: 1 };
    let scrapes = [
        scrape("n2", 0, 4.0, 0.25, N2_PODS),
        scrape("n1", 0, 2.0, 0.5, N1_PODS),
        scrape("n2", 15_000, 4.0, 0.25, N2_PODS),
        scrape("n1", 15_012, 2.0, 0.5, N1_PODS),
    ];
    let shard = FakeShard::start("shard-0", snapshot(&id, &scrapes)).await;
    let frontend = Frontend::start(&[&shard], FrontendOptions::default()).await;
    frontend.wait_ready().await;
    (shard, frontend)
}

#[tokio::test]
async fn node_and_pod_lists_are_json_sorted_like_metrics_server() {
    let (_shard, f) = cluster().await;
    let r = get(f.secure, &f.proxy_client, Version::Http1, "/apis/metrics.k8s.io/v1beta1/nodes", ADMIN).await.expect("get");
    assert_eq!(r.status, 200);
    assert_eq!(r.content_type(), "application/json");
    let v = r.json();
    assert_eq!(v["kind"], "NodeMetricsList");
    assert_eq!(v["apiVersion"], "metrics.k8s.io/v1beta1");
    let names: Vec<_> = v["items"].as_array().expect("items").iter().map(|i| i["metadata"]["name"].clone()).collect();
    assert_eq!(names, [json!("n1"), json!("n2")]);
    assert_eq!(v["items"][0]["usage"], json!({"cpu": "2", "memory": "8Gi"}));
    assert_eq!(v["items"][0]["window"], "15.012s");
    assert_eq!(v["items"][0]["timestamp"], "2026-01-01T00:00:15Z");
    assert_eq!(v["items"][0]["metadata"]["creationTimestamp"], "2026-01-01T00:00:40Z", "creation time = now");

    let r = get(f.secure, &f.proxy_client, Version::Http2, "/apis/metrics.k8s.io/v1beta1/pods", ADMIN).await.expect("get");
    let v = r.json();
    assert_eq!(v["kind"], "PodMetricsList");
    let names: Vec<_> = v["items"]
        .as_array()
        .expect("items")
        .iter()
        .map(|i| format!("{}/{}", i["metadata"]["namespace"].as_str().unwrap_or(""), i["metadata"]["name"].as_str().unwrap_or("")))
        .collect();
    assert_eq!(names, ["default/api-0", "default/web-a", "default/web-b", "kube-system/coredns-1", "monitoring/prom-0"]);
    let web_b = &v["items"][2];
    assert_eq!(
        web_b["containers"],
        json!([{"name": "app", "usage": {"cpu": "500m", "memory": "50Mi"}}, {"name": "istio-proxy", "usage": {"cpu": "500m", "memory": "50Mi"}}])
    );
    assert_eq!(web_b["window"], "15.012s");

    let r = get(f.secure, &f.proxy_client, Version::Http1, "/apis/metrics.k8s.io/v1beta1/namespaces/default/pods", ADMIN).await.expect("get");
    assert_eq!(r.json()["items"].as_array().map(Vec::len), Some(3));
    let r = get(f.secure, &f.proxy_client, Version::Http1, "/apis/metrics.k8s.io/v1beta1/namespaces/default/pods/api-0", ADMIN).await.expect("get");
    let v = r.json();
    assert_eq!((v["kind"].as_str(), v["metadata"]["name"].as_str()), (Some("PodMetrics"), Some("api-0")));
    assert_eq!(v["containers"][0]["usage"]["cpu"], "250m");
    let r = get(f.secure, &f.proxy_client, Version::Http1, "/apis/metrics.k8s.io/v1beta1/nodes/n2", ADMIN).await.expect("get");
    assert_eq!(r.json()["usage"]["cpu"], "4");
    let r = get(
        f.secure,
        &f.proxy_client,
        Version::Http1,
        "/apis/metrics.k8s.io/v1beta1/pods?fieldSelector=metadata.namespace%3Ddefault%2Cmetadata.name%21%3Dweb-a",
        ADMIN,
    )
    .await
    .expect("get");
    let names: Vec<_> = r.json()["items"].as_array().expect("items").iter().map(|i| i["metadata"]["name"].clone()).collect();
    assert_eq!(names, [json!("api-0"), json!("web-b")]);
    f.stop().await;
}

#[tokio::test]
async fn protobuf_answers_decode_with_the_k8s_io_metrics_field_numbers() {
    let (_shard, f) = cluster().await;
    let accept = [("Accept", "application/vnd.kubernetes.protobuf, */*"), ADMIN[0], ADMIN[1]];
    let r = get(f.secure, &f.proxy_client, Version::Http2, "/apis/metrics.k8s.io/v1beta1/pods", &accept).await.expect("get");
    assert_eq!(r.status, 200);
    assert_eq!(r.content_type(), "application/vnd.kubernetes.protobuf");
    let (tm, raw) = decode_envelope(&r.body).expect("envelope");
    assert_eq!(tm.kind.as_deref(), Some("PodMetricsList"));
    let list = PodMetricsList::decode(raw.as_slice()).expect("list");
    assert_eq!(list.items.len(), 5);
    let first = &list.items[0];
    assert_eq!(first.metadata.as_ref().and_then(|m| m.name.as_deref()), Some("api-0"));
    assert_eq!(first.window.as_ref().and_then(|w| w.duration), Some(15_000_000_000));
    assert_eq!(first.containers[0].usage["cpu"].string.as_deref(), Some("250m"));
    let r = get(f.secure, &f.proxy_client, Version::Http1, "/apis/metrics.k8s.io/v1beta1/nodes/n1", &accept).await.expect("get");
    let (tm, raw) = decode_envelope(&r.body).expect("envelope");
    assert_eq!(tm.kind.as_deref(), Some("NodeMetrics"));
    let node = NodeMetrics::decode(raw.as_slice()).expect("node");
    assert_eq!(node.usage["memory"].string.as_deref(), Some("8Gi"));
    f.stop().await;
}

#[tokio::test]
async fn kubectl_get_gets_a_table_with_name_cpu_memory_window() {
    let (_shard, f) = cluster().await;
    let accept = [
        ("Accept", "application/json;as=Table;v=v1;g=meta.k8s.io,application/json;as=Table;v=v1beta1;g=meta.k8s.io,application/json"),
        ADMIN[0],
        ADMIN[1],
    ];
    let r = get(f.secure, &f.proxy_client, Version::Http1, "/apis/metrics.k8s.io/v1beta1/pods", &accept).await.expect("get");
    assert_eq!(r.content_type(), "application/json", "as kube-apiserver labels a Table");
    let v = r.json();
    assert_eq!(v["kind"], "Table");
    let columns: Vec<_> = v["columnDefinitions"].as_array().expect("columns").iter().map(|c| c["name"].clone()).collect();
    assert_eq!(columns, [json!("Name"), json!("cpu"), json!("memory"), json!("Window")]);
    assert_eq!(v["rows"][2]["cells"], json!(["web-b", "1", "100Mi", "15.012s"]));
    assert_eq!(v["rows"][2]["object"]["kind"], "PartialObjectMetadata");
    assert_eq!(v["rows"][2]["object"]["metadata"]["namespace"], "default");
    f.stop().await;
}

#[tokio::test]
async fn errors_are_kubernetes_status_objects() {
    let (_shard, f) = cluster().await;
    let g = |path: &'static str| get(f.secure, &f.proxy_client, Version::Http1, path, ADMIN);
    let r = g("/apis/metrics.k8s.io/v1beta1/nodes/nope").await.expect("get");
    assert_eq!(r.status, 404);
    assert_eq!(
        r.json(),
        json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
               "message": "nodemetrics.metrics.k8s.io \"nope\" not found", "reason": "NotFound",
               "details": {"name": "nope", "group": "metrics.k8s.io", "kind": "nodemetrics"}, "code": 404})
    );
    let r = g("/apis/metrics.k8s.io/v1beta1/namespaces/default/pods/nope").await.expect("get");
    assert_eq!(r.json()["message"], "podmetrics.metrics.k8s.io \"default/nope\" not found");
    // A watch streams events (metrics-server answers 405); timeoutSeconds ends it.
    let r = g("/apis/metrics.k8s.io/v1beta1/pods?watch=true&timeoutSeconds=1").await.expect("get");
    assert_eq!(r.status.as_u16(), 200);
    let r = g("/apis/metrics.k8s.io/v1beta1/pods?labelSelector=app%20in%20web").await.expect("get");
    assert_eq!((r.status.as_u16(), r.json()["reason"].clone()), (400, json!("BadRequest")));
    assert_eq!(r.json()["message"], "unable to parse requirement: found 'web' expected: '('");
    let r = g("/apis/metrics.k8s.io/v1beta1/pods?fieldSelector=spec.nodeName%3Dn1").await.expect("get");
    assert_eq!(r.json()["message"], r#""spec.nodeName" is not a known field selector: only "metadata.name", "metadata.namespace""#);
    let r = g("/apis/metrics.k8s.io/v1beta2/pods").await.expect("get");
    assert_eq!((r.status.as_u16(), r.json()["kind"].clone()), (404, json!("Status")));
    f.stop().await;
}

#[tokio::test]
async fn requests_without_a_trusted_front_proxy_certificate_are_unauthorized() {
    let (_shard, f) = cluster().await;
    let path = "/apis/metrics.k8s.io/v1beta1/nodes";
    let r = get(f.secure, &f.anonymous_client, Version::Http1, path, ADMIN).await.expect("get");
    assert_eq!((r.status.as_u16(), r.json()["reason"].clone()), (401, json!("Unauthorized")));
    let r = get(f.secure, &f.stranger_client, Version::Http2, path, ADMIN).await.expect("get");
    assert_eq!(r.status, 401);
    let r = get(f.secure, &f.proxy_client, Version::Http1, path, &[("X-Remote-User", "alice")]).await.expect("get");
    assert_eq!(r.status, 403, "authenticated, but nothing can authorize alice without an API server");
    assert_eq!(r.json()["reason"], "Forbidden");
    let r = get(f.secure, &f.anonymous_client, Version::Http1, "/livez", &[]).await.expect("get");
    assert_eq!((r.status.as_u16(), &r.body[..]), (200, &b"ok"[..]), "health is always allowed");
    let r = get(f.secure, &f.anonymous_client, Version::Http1, "/metrics", &[]).await.expect("get");
    assert_eq!(r.status, 401, "metrics on the secure port need credentials");
    f.stop().await;
}

#[tokio::test]
async fn discovery_and_openapi_describe_nodes_and_pods() {
    let (_shard, f) = cluster().await;
    let r = get(f.secure, &f.proxy_client, Version::Http1, "/apis/metrics.k8s.io/v1beta1", ADMIN).await.expect("get");
    let kinds: Vec<_> = r.json()["resources"].as_array().expect("resources").iter().map(|x| x["kind"].clone()).collect();
    assert_eq!(kinds, [json!("NodeMetrics"), json!("PodMetrics")]);
    let accept = [("Accept", "application/json;g=apidiscovery.k8s.io;v=v2;as=APIGroupDiscoveryList,application/json"), ADMIN[0], ADMIN[1]];
    let r = get(f.secure, &f.proxy_client, Version::Http1, "/apis", &accept).await.expect("get");
    assert_eq!(r.content_type(), "application/json;g=apidiscovery.k8s.io;v=v2;as=APIGroupDiscoveryList");
    let r = get(f.secure, &f.proxy_client, Version::Http1, "/openapi/v2", ADMIN).await.expect("get");
    assert!(r.json()["definitions"]["io.k8s.metrics.pkg.apis.metrics.v1beta1.PodMetrics"].is_object());
    let r = get(f.secure, &f.proxy_client, Version::Http1, "/openapi/v3", ADMIN).await.expect("get");
    let url = r.json()["paths"]["apis/metrics.k8s.io/v1beta1"]["serverRelativeURL"].as_str().expect("url").to_owned();
    let path: &'static str = Box::leak(url.into_boxed_str());
    let r = get(f.secure, &f.proxy_client, Version::Http1, path, ADMIN).await.expect("get");
    assert_eq!(r.json()["openapi"], "3.0.0");
    let r = get(f.secure, &f.proxy_client, Version::Http1, "/version", ADMIN).await.expect("get");
    assert!(r.json()["gitVersion"].as_str().is_some_and(|v| v.starts_with('v')));
    f.stop().await;
}

#[tokio::test]
async fn past_max_requests_inflight_the_answer_is_429_until_a_slot_frees() {
    let id = ShardIdentity { shard_id: "shard-0".into(), epoch: 1 };
    let pods: Vec<(String, String)> = (0..3000).map(|i| ("load".to_owned(), format!("pod-{i:05}"))).collect();
    let specs: Vec<PodSpec<'_>> = pods.iter().map(|(ns, n)| (ns.as_str(), n.as_str(), &["app"][..])).collect();
    let shard = FakeShard::start("shard-0", snapshot(&id, &[scrape("n1", 0, 1.0, 0.1, &specs), scrape("n1", 15_000, 1.0, 0.1, &specs)])).await;
    let f = Frontend::start(&[&shard], FrontendOptions { max_inflight: 1, ..FrontendOptions::default() }).await;
    f.wait_ready().await;
    // A big list whose body the client does not read holds the only slot (HTTP/2 flow control).
    let held = send(f.secure, &f.proxy_client, Version::Http2, "/apis/metrics.k8s.io/v1beta1/pods", ADMIN).await.expect("send");
    assert_eq!(held.response.status(), 200);
    let r = get(f.secure, &f.proxy_client, Version::Http1, "/apis/metrics.k8s.io/v1beta1/nodes", ADMIN).await.expect("get");
    assert_eq!(r.status, 429);
    assert_eq!(r.headers.get("retry-after").and_then(|v| v.to_str().ok()), Some("1"));
    assert_eq!(r.json()["reason"], "TooManyRequests");
    let r = get(f.secure, &f.anonymous_client, Version::Http1, "/readyz", &[]).await.expect("get");
    assert_eq!(r.status, 200, "probes are not subject to the limit");
    drop(held.response);
    held.conn.abort();
    let mut ok = false;
    for _ in 0..200 {
        let r = get(f.secure, &f.proxy_client, Version::Http1, "/apis/metrics.k8s.io/v1beta1/nodes", ADMIN).await.expect("get");
        if r.status == 200 {
            ok = true;
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    assert!(ok, "the slot is freed once the held response is dropped");
    let m = admin_get(f.admin, "/metrics").await.expect("metrics");
    assert!(String::from_utf8_lossy(&m.body).contains("shardmetrics_frontend_requests_rejected_total 1"));
    f.stop().await;
}

#[tokio::test]
async fn the_admin_port_serves_probes_and_self_metrics_without_credentials() {
    let (_shard, f) = cluster().await;
    get(f.secure, &f.proxy_client, Version::Http1, "/apis/metrics.k8s.io/v1beta1/nodes", ADMIN).await.expect("get");
    get(f.secure, &f.proxy_client, Version::Http1, "/apis/metrics.k8s.io/v1beta1/nodes/nope", ADMIN).await.expect("get");
    let r = admin_get(f.admin, "/readyz?verbose").await.expect("readyz");
    assert_eq!(r.status, 200);
    let text = String::from_utf8_lossy(&r.body).into_owned();
    assert!(text.contains("[+]upstream ok") && text.contains("[+]metadata-synced ok"), "{text}");
    let text = String::from_utf8_lossy(&admin_get(f.admin, "/metrics").await.expect("metrics").body).into_owned();
    for needle in [
        r#"shardmetrics_frontend_request_duration_seconds_count{code="200",resource="nodes",verb="list"} 1"#,
        r#"shardmetrics_frontend_request_duration_seconds_count{code="404",resource="nodes",verb="get"} 1"#,
        "shardmetrics_frontend_item_freshness_seconds_count 2",
        r#"shardmetrics_frontend_upstream_subscription_state{shard="shard-0",state="live"} 1"#,
        "shardmetrics_frontend_authentication_total",
    ] {
        assert!(text.contains(needle), "missing {needle} in\n{text}");
    }
    // Gauges are refreshed by the periodic sweep.
    let mut found = false;
    for _ in 0..100 {
        let t = String::from_utf8_lossy(&admin_get(f.admin, "/metrics").await.expect("metrics").body).into_owned();
        if t.contains("shardmetrics_frontend_stored_pods 5") && t.contains("shardmetrics_frontend_stored_containers 6") {
            found = true;
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    assert!(found, "store gauges");
    assert_eq!(admin_get(f.admin, "/apis").await.expect("get").status, 404);
    f.stop().await;
}
