//! The API-server simulator against real kube-rs clients over HTTPS on a loopback port.

use std::collections::BTreeMap;
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::authentication::v1::{TokenReview, TokenReviewSpec};
use k8s_openapi::api::authorization::v1::{ResourceAttributes, SubjectAccessReview, SubjectAccessReviewSpec};
use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::api::core::v1::{ConfigMap, Node, Pod};
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams, PostParams};
use kube::runtime::watcher;
use kube::runtime::WatchStreamExt;
use serde_json::json;
use shardmetrics_sim::apiserver::{
    ApiServer, ApiServerConfig, DEFAULT_ADMIN, DEFAULT_ADMIN_TOKEN, MASTERS, Policy, Rule, RunningApiServer, UserInfo,
};

async fn start(policy: Policy) -> RunningApiServer {
    ApiServer::start(ApiServerConfig { policy, ..Default::default() }).await.expect("simulator starts")
}

fn policy() -> Policy {
    Policy::new()
        .with_token(DEFAULT_ADMIN_TOKEN, UserInfo::new(DEFAULT_ADMIN, &[MASTERS]))
        .with_token("frontend-token", UserInfo::new("system:serviceaccount:kube-system:frontend", &["system:serviceaccounts"]))
        .with_token("reader-token", UserInfo::new("reader", &["readers"]))
        .with_token("nobody-token", UserInfo::new("nobody", &[]))
        .with_rule(
            Rule::user("system:serviceaccount:kube-system:frontend")
                .verbs(&["create"])
                .api_groups(&["authentication.k8s.io", "authorization.k8s.io"])
                .resources(&["tokenreviews", "subjectaccessreviews"]),
        )
        .with_rule(Rule::group("readers").verbs(&["get", "list", "watch"]).resources(&["pods"]).namespaces(&["team-a"]))
}

async fn client(api: &RunningApiServer, user: &str) -> kube::Client {
    kube::Client::try_from(api.kubeconfig_for(user).await.expect("config")).expect("client")
}

fn node_json(name: &str) -> serde_json::Value {
    json!({"apiVersion": "v1", "kind": "Node", "metadata": {"name": name, "labels": {"sim": "yes"}},
        "status": {"conditions": [{"type": "Ready", "status": "True"}]}})
}

async fn eventually<F: Fn() -> bool>(what: &str, check: F) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while !check() {
        assert!(tokio::time::Instant::now() < deadline, "timed out waiting for: {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_kube_rs_watcher_sees_every_change_and_relists_after_dropped_watches_and_compaction() {
    let api = start(policy()).await;
    let store = api.store().clone();
    store.create(0, "", node_json("a")).unwrap();
    store.create(0, "", node_json("b")).unwrap();
    let nodes: Api<Node> = Api::all(client(&api, DEFAULT_ADMIN).await);

    let seen: std::sync::Arc<std::sync::Mutex<(BTreeMap<String, Node>, usize)>> = Default::default();
    let seen_w = seen.clone();
    let watch_api = nodes.clone();
    let task = tokio::spawn(async move {
        let mut pending: Option<BTreeMap<String, Node>> = None;
        let mut events = watcher(watch_api, watcher::Config::default().labels("sim=yes")).default_backoff().boxed();
        while let Some(ev) = events.next().await {
            let mut guard = seen_w.lock().unwrap();
            let (map, inits) = &mut *guard;
            match ev {
                Ok(watcher::Event::Init) => {
                    *inits += 1;
                    pending = Some(BTreeMap::new());
                }
                Ok(watcher::Event::InitApply(n)) => {
                    pending.as_mut().unwrap().insert(n.metadata.name.clone().unwrap(), n);
                }
                Ok(watcher::Event::InitDone) => *map = pending.take().unwrap(),
                Ok(watcher::Event::Apply(n)) => {
                    map.insert(n.metadata.name.clone().unwrap(), n);
                }
                Ok(watcher::Event::Delete(n)) => {
                    map.remove(n.metadata.name.as_deref().unwrap());
                }
                Err(e) => eprintln!("watcher error: {e:?}"),
            }
        }
    });
    let names = || seen.lock().unwrap().0.keys().cloned().collect::<Vec<_>>();
    let inits = || seen.lock().unwrap().1;
    eventually("initial list", || names() == ["a", "b"]).await;

    nodes.patch("a", &PatchParams::default(), &Patch::Merge(json!({"metadata": {"labels": {"color": "blue"}}}))).await.unwrap();
    eventually("modification", || {
        seen.lock().unwrap().0.get("a").and_then(|n| n.metadata.labels.as_ref()?.get("color").cloned()).as_deref() == Some("blue")
    })
    .await;
    nodes.delete("b", &DeleteParams::default()).await.unwrap();
    eventually("deletion", || names() == ["a"]).await;
    nodes.create(&PostParams::default(), &serde_json::from_value(node_json("c")).unwrap()).await.unwrap();
    eventually("addition", || names() == ["a", "c"]).await;
    assert_eq!(inits(), 1, "no re-list while the watch is healthy");

    // Compaction first, then the drop: the resume must get 410 and the watcher must re-list.
    api.compact_history();
    api.drop_all_watches();
    store.create(0, "", node_json("d")).unwrap();
    store.delete(0, "", "a", None, None).unwrap();
    eventually("re-list after 410 Gone", || inits() >= 2).await;
    eventually("nothing lost across the re-list", || names() == ["c", "d"]).await;
    task.abort();
    api.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lease_create_renew_with_a_stale_resource_version_conflicts_and_delete_works() {
    let api = start(policy()).await;
    let leases: Api<Lease> = Api::namespaced(client(&api, DEFAULT_ADMIN).await, "kube-system");
    let lease = Lease {
        metadata: kube::api::ObjectMeta { name: Some("shard-0".into()), ..Default::default() },
        spec: Some(LeaseSpec { holder_identity: Some("shard-0".into()), lease_duration_seconds: Some(15), ..Default::default() }),
    };
    let created = leases.create(&PostParams::default(), &lease).await.unwrap();
    assert!(created.metadata.uid.is_some() && created.metadata.creation_timestamp.is_some());
    let err = leases.create(&PostParams::default(), &lease).await.unwrap_err();
    assert!(matches!(&err, kube::Error::Api(s) if s.code == 409 && s.reason == "AlreadyExists"), "{err:?}");

    let mut renewed = created.clone();
    renewed.spec.as_mut().unwrap().lease_duration_seconds = Some(20);
    let renewed = leases.replace("shard-0", &PostParams::default(), &renewed).await.unwrap();
    assert_ne!(renewed.metadata.resource_version, created.metadata.resource_version);

    let mut stale = created.clone();
    stale.spec.as_mut().unwrap().holder_identity = Some("intruder".into());
    let err = leases.replace("shard-0", &PostParams::default(), &stale).await.unwrap_err();
    assert!(matches!(&err, kube::Error::Api(s) if s.code == 409 && s.reason == "Conflict"), "{err:?}");
    assert_eq!(leases.get("shard-0").await.unwrap().spec.unwrap().holder_identity.as_deref(), Some("shard-0"));

    leases.delete("shard-0", &DeleteParams::default()).await.unwrap();
    let err = leases.get("shard-0").await.unwrap_err();
    assert!(matches!(&err, kube::Error::Api(s) if s.code == 404), "{err:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn token_and_subject_access_reviews_follow_the_policy() {
    let api = start(policy()).await;
    let fe = client(&api, "system:serviceaccount:kube-system:frontend").await;
    let reviews: Api<TokenReview> = Api::all(fe.clone());
    let review = |token: &str| TokenReview {
        spec: TokenReviewSpec { token: Some(token.into()), ..Default::default() },
        ..Default::default()
    };
    let ok = reviews.create(&PostParams::default(), &review("reader-token")).await.unwrap().status.unwrap();
    assert_eq!(ok.authenticated, Some(true));
    let user = ok.user.unwrap();
    assert_eq!(user.username.as_deref(), Some("reader"));
    assert_eq!(user.groups.unwrap(), ["readers", "system:authenticated"]);
    let bad = reviews.create(&PostParams::default(), &review("forged")).await.unwrap().status.unwrap();
    assert_eq!(bad.authenticated, Some(false));

    let sars: Api<SubjectAccessReview> = Api::all(fe);
    let sar = |ns: &str| SubjectAccessReview {
        spec: SubjectAccessReviewSpec {
            user: Some("reader".into()),
            groups: Some(vec!["readers".into(), "system:authenticated".into()]),
            resource_attributes: Some(ResourceAttributes {
                verb: Some("list".into()),
                resource: Some("pods".into()),
                namespace: Some(ns.into()),
                ..Default::default()
            }),
            ..Default::default()
        },
        ..Default::default()
    };
    assert!(sars.create(&PostParams::default(), &sar("team-a")).await.unwrap().status.unwrap().allowed);
    assert!(!sars.create(&PostParams::default(), &sar("team-b")).await.unwrap().status.unwrap().allowed);

    // A user without the rule may not create reviews at all.
    let nobody: Api<SubjectAccessReview> = Api::all(client(&api, "nobody").await);
    let err = nobody.create(&PostParams::default(), &sar("team-a")).await.unwrap_err();
    assert!(matches!(&err, kube::Error::Api(s) if s.code == 403), "{err:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn outages_requests_per_resource_the_last_review_and_a_denial_reason_are_there_for_tests() {
    let api = start(policy().with_denial_reason("no rule for this user")).await;
    let fe = client(&api, "system:serviceaccount:kube-system:frontend").await;
    let sars: Api<SubjectAccessReview> = Api::all(fe.clone());
    let sar = SubjectAccessReview {
        spec: SubjectAccessReviewSpec {
            user: Some("reader".into()),
            resource_attributes: Some(ResourceAttributes { verb: Some("list".into()), resource: Some("nodes".into()), ..Default::default() }),
            ..Default::default()
        },
        ..Default::default()
    };
    let denied = sars.create(&PostParams::default(), &sar).await.unwrap().status.unwrap();
    assert_eq!((denied.allowed, denied.reason.as_deref()), (false, Some("no rule for this user")));
    let asked = api.last_review("SubjectAccessReview").expect("recorded");
    assert_eq!(asked["spec"]["user"], "reader");
    assert_eq!(asked["spec"]["resourceAttributes"]["resource"], "nodes");
    assert_eq!(api.last_review("TokenReview"), None);

    api.set_unavailable(&["subjectaccessreviews"]);
    let err = sars.create(&PostParams::default(), &sar).await.unwrap_err();
    assert!(matches!(&err, kube::Error::Api(s) if s.code == 500 && s.reason == "InternalError"), "{err:?}");
    let tokens: Api<TokenReview> = Api::all(fe);
    let review = TokenReview { spec: TokenReviewSpec { token: Some("reader-token".into()), ..Default::default() }, ..Default::default() };
    assert!(tokens.create(&PostParams::default(), &review).await.is_ok(), "other resources stay available");
    api.set_unavailable(&[]);
    assert!(sars.create(&PostParams::default(), &sar).await.is_ok());

    assert_eq!(api.stats().resource_requests("create", "subjectaccessreviews"), 3);
    assert_eq!(api.stats().resource_requests("create", "tokenreviews"), 1);
    assert_eq!(api.stats().resource_requests("get", "configmaps"), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_simulator_authorizes_its_own_api_and_refuses_unknown_tokens() {
    let api = start(policy()).await;
    api.store().ensure_namespace("team-a").unwrap();
    api.store().create(1, "team-a", json!({"metadata": {"name": "p"}, "spec": {"nodeName": "n"}})).unwrap();
    let reader = client(&api, "reader").await;
    let pods: Api<Pod> = Api::namespaced(reader.clone(), "team-a");
    assert_eq!(pods.list(&ListParams::default()).await.unwrap().items.len(), 1);
    let err = Api::<Pod>::namespaced(reader.clone(), "default").list(&ListParams::default()).await.unwrap_err();
    assert!(
        matches!(&err, kube::Error::Api(s) if s.code == 403 && s.message.contains("User \"reader\" cannot list resource \"pods\"")),
        "{err:?}"
    );
    let err = pods.delete("p", &DeleteParams::default()).await.unwrap_err();
    assert!(matches!(&err, kube::Error::Api(s) if s.code == 403), "{err:?}");

    let mut config = api.kubeconfig_for("reader").await.unwrap();
    config.auth_info.token = None;
    config.auth_info.token_file = None;
    let anonymous = kube::Client::try_from(config).unwrap();
    let err = Api::<Node>::all(anonymous).list(&ListParams::default()).await.unwrap_err();
    assert!(matches!(&err, kube::Error::Api(s) if s.code == 401), "{err:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_patches_list_selectors_and_the_authentication_configmap_work_through_kube_rs() {
    let api = start(policy()).await;
    let admin = client(&api, DEFAULT_ADMIN).await;
    let nodes: Api<Node> = Api::all(admin.clone());
    nodes.create(&PostParams::default(), &serde_json::from_value(node_json("n1")).unwrap()).await.unwrap();
    let patched = nodes
        .patch_status(
            "n1",
            &PatchParams::default(),
            &Patch::Merge(json!({"status": {"capacity": {"cpu": "4"}}, "metadata": {"labels": {"ignored": "yes"}}})),
        )
        .await
        .unwrap();
    assert_eq!(patched.status.unwrap().capacity.unwrap()["cpu"].0, "4");
    assert!(!patched.metadata.labels.unwrap().contains_key("ignored"), "the status subresource changes only status");

    api.store().ensure_namespace("web").unwrap();
    let pods: Api<Pod> = Api::namespaced(admin.clone(), "web");
    for (name, app, node) in [("w1", "web", "n1"), ("w2", "web", "n2"), ("d1", "db", "n1")] {
        let pod = json!({"metadata": {"name": name, "labels": {"app": app}}, "spec": {"nodeName": node,
            "containers": [{"name": "c", "image": "x"}]}, "status": {"phase": "Running"}});
        pods.create(&PostParams::default(), &serde_json::from_value(pod).unwrap()).await.unwrap();
    }
    let names = |l: kube::core::ObjectList<Pod>| l.items.into_iter().map(|p| p.metadata.name.unwrap()).collect::<Vec<_>>();
    assert_eq!(names(pods.list(&ListParams::default().labels("app in (web),app!=db")).await.unwrap()), ["w1", "w2"]);
    assert_eq!(names(pods.list(&ListParams::default().fields("spec.nodeName=n1")).await.unwrap()), ["d1", "w1"]);
    assert_eq!(names(pods.list(&ListParams::default().fields("status.phase=Running,metadata.name!=w1")).await.unwrap()), ["d1", "w2"]);
    let all = Api::<Pod>::all(admin.clone()).list(&ListParams::default().limit(2)).await.unwrap();
    assert_eq!(all.items.len(), 2);
    assert!(all.metadata.continue_.is_some());
    let err = pods.list(&ListParams::default().fields("spec.bogus=1")).await.unwrap_err();
    assert!(matches!(&err, kube::Error::Api(s) if s.code == 400), "{err:?}");

    let cms: Api<ConfigMap> = Api::namespaced(admin, "kube-system");
    let cm = cms.get("extension-apiserver-authentication").await.unwrap();
    let data = cm.data.unwrap();
    assert_eq!(data["requestheader-client-ca-file"], api.front_proxy_ca().cert_pem());
    assert_eq!(data["client-ca-file"], api.ca_pem());
    assert_eq!(data["requestheader-allowed-names"], "[\"front-proxy-client\"]");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_certificate_authenticates_as_its_cn_and_o() {
    let api = start(policy().with_rule(Rule::group("cert-readers").verbs(&["list"]).resources(&["nodes"]))).await;
    let cert = api.ca().client_cert("carol", &["cert-readers"]).unwrap();
    let config = api
        .config_for_context(shardmetrics_sim::apiserver::Context {
            name: "carol".into(),
            credential: shardmetrics_sim::apiserver::Credential::ClientCert(cert),
            namespace: None,
        })
        .await
        .unwrap();
    let nodes: Api<Node> = Api::all(kube::Client::try_from(config).unwrap());
    assert!(nodes.list(&ListParams::default()).await.is_ok());
    let err = nodes.get("x").await.unwrap_err();
    assert!(matches!(&err, kube::Error::Api(s) if s.code == 403 && s.message.contains("User \"carol\"")), "{err:?}");
}

/// Reads a watch over raw HTTPS, line by line, until the stream ends or `max` lines arrived.
async fn raw_watch(api: &RunningApiServer, path_and_query: &str, max: usize) -> Vec<serde_json::Value> {
    raw_watch_as(api, path_and_query, None, max).await
}

/// [`raw_watch`] with an `Accept` header.
async fn raw_watch_as(api: &RunningApiServer, path_and_query: &str, accept: Option<&str>, max: usize) -> Vec<serde_json::Value> {
    use http_body_util::BodyExt;
    let tls = shardmetrics_plumbing::pki::client_config(Some(&api.ca().root_store()), None).unwrap();
    let connector = hyper_rustls::HttpsConnectorBuilder::new().with_tls_config(tls).https_only().enable_http1().build();
    let client: hyper_util::client::legacy::Client<_, http_body_util::Empty<bytes::Bytes>> =
        hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new()).build(connector);
    let mut req = http::Request::get(format!("{}{path_and_query}", api.url())).header("authorization", format!("Bearer {DEFAULT_ADMIN_TOKEN}"));
    if let Some(a) = accept {
        req = req.header("accept", a);
    }
    let resp = client.request(req.body(http_body_util::Empty::new()).unwrap()).await.unwrap();
    assert_eq!(resp.status(), 200);
    let mut body = resp.into_body();
    let mut buf = Vec::new();
    let mut events = Vec::new();
    while events.len() < max {
        let Some(frame) = tokio::time::timeout(Duration::from_secs(20), body.frame()).await.expect("watch stalled") else { break };
        if let Ok(data) = frame.unwrap().into_data() {
            buf.extend_from_slice(&data);
        }
        while let Some(nl) = buf.iter().position(|b| *b == b'\n') {
            let line: Vec<u8> = buf.drain(..=nl).collect();
            events.push(serde_json::from_slice(&line).unwrap());
        }
    }
    // A plain GET (a list) ends without a newline.
    if events.len() < max && !buf.iter().all(u8::is_ascii_whitespace) {
        events.push(serde_json::from_slice(&buf).unwrap());
    }
    events
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn raw_watches_carry_bookmarks_end_at_their_timeout_and_report_gone_as_an_error_event() {
    let api = ApiServer::start(ApiServerConfig { policy: policy(), bookmark_interval: Duration::from_millis(100), ..Default::default() })
        .await
        .unwrap();
    api.store().create(0, "", node_json("a")).unwrap();
    let rv = api.store().current_rv();

    // Bookmarks carry the current resourceVersion and the kind of the watched resource.
    let events = raw_watch(&api, &format!("/api/v1/nodes?watch=true&allowWatchBookmarks=true&resourceVersion={rv}"), 2).await;
    assert!(events.iter().all(|e| e["type"] == "BOOKMARK"), "{events:?}");
    assert_eq!(events[0]["object"]["kind"], "Node");
    assert_eq!(events[0]["object"]["metadata"]["resourceVersion"], rv.to_string());

    // Without a resourceVersion: synthetic ADDED for what exists; timeoutSeconds ends the stream.
    let events = raw_watch(&api, "/api/v1/nodes?watch=1&timeoutSeconds=1", 100).await;
    assert_eq!(events.len(), 1);
    assert_eq!(events[0]["type"], "ADDED");
    assert_eq!(events[0]["object"]["metadata"]["name"], "a");

    // A compacted resourceVersion: HTTP 200, one ERROR event with a 410 Expired Status.
    api.compact_history();
    let events = raw_watch(&api, &format!("/api/v1/nodes?watch=true&resourceVersion={rv}"), 100).await;
    assert_eq!(events.len(), 1);
    assert_eq!(events[0]["type"], "ERROR");
    assert_eq!(events[0]["object"]["code"], 410);
    assert_eq!(events[0]["object"]["reason"], "Expired");

    // sendInitialEvents (streaming lists): ADDED events, then a bookmark marking their end.
    let events = raw_watch(
        &api,
        "/api/v1/nodes?watch=true&sendInitialEvents=true&resourceVersionMatch=NotOlderThan&allowWatchBookmarks=true",
        2,
    )
    .await;
    assert_eq!(events[0]["type"], "ADDED");
    assert_eq!(events[1]["type"], "BOOKMARK");
    assert_eq!(events[1]["object"]["metadata"]["annotations"]["k8s.io/initial-events-end"], "true");
}

/// What client-go's metadata client (metrics-server's pod informer) sends.
const METADATA_LIST_ACCEPT: &str = "application/vnd.kubernetes.protobuf;as=PartialObjectMetadataList;g=meta.k8s.io;v=v1,application/json;as=PartialObjectMetadataList;g=meta.k8s.io;v=v1,application/json";
const METADATA_ACCEPT: &str = "application/vnd.kubernetes.protobuf;as=PartialObjectMetadata;g=meta.k8s.io;v=v1,application/json;as=PartialObjectMetadata;g=meta.k8s.io;v=v1,application/json";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metadata_informers_get_partial_object_metadata_in_lists_watch_events_and_bookmarks() {
    let api = ApiServer::start(ApiServerConfig { policy: policy(), bookmark_interval: Duration::from_millis(100), ..Default::default() })
        .await
        .unwrap();
    api.store().create(0, "", node_json("a")).unwrap();
    let rv = api.store().current_rv();

    let list = raw_watch_as(&api, "/api/v1/nodes", Some(METADATA_LIST_ACCEPT), 1).await;
    assert_eq!((list[0]["kind"].as_str(), list[0]["apiVersion"].as_str()), (Some("PartialObjectMetadataList"), Some("meta.k8s.io/v1")));
    assert_eq!(list[0]["items"][0]["kind"], "PartialObjectMetadata");
    assert_eq!(list[0]["items"][0]["metadata"]["name"], "a");
    assert!(list[0]["items"][0].get("status").is_none(), "{list:?}");

    // Watch events and bookmarks alike carry PartialObjectMetadata (client-go cannot decode a Node there).
    let events = raw_watch_as(&api, "/api/v1/nodes?watch=true&allowWatchBookmarks=true", Some(METADATA_ACCEPT), 2).await;
    assert_eq!(events[0]["type"], "ADDED");
    assert_eq!(events[1]["type"], "BOOKMARK");
    for e in &events {
        assert_eq!((e["object"]["kind"].as_str(), e["object"]["apiVersion"].as_str()), (Some("PartialObjectMetadata"), Some("meta.k8s.io/v1")), "{e}");
    }
    assert!(events[1]["object"]["metadata"]["resourceVersion"].as_str().is_some_and(|r| r.parse::<u64>().unwrap() >= rv));

    // Plain JSON still gets the objects.
    let events = raw_watch_as(&api, "/api/v1/nodes?watch=true&timeoutSeconds=1", Some("application/json"), 1).await;
    assert_eq!(events[0]["object"]["kind"], "Node");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_kube_rs_watcher_with_streaming_lists_initialises() {
    let api = start(policy()).await;
    api.store().create(0, "", node_json("a")).unwrap();
    let nodes: Api<Node> = Api::all(client(&api, DEFAULT_ADMIN).await);
    let mut events = watcher(nodes, watcher::Config::default().streaming_lists()).boxed();
    let mut names = Vec::new();
    loop {
        match tokio::time::timeout(Duration::from_secs(20), events.next()).await.expect("watcher stalled").unwrap().unwrap() {
            watcher::Event::InitApply(n) => names.push(n.metadata.name.unwrap()),
            watcher::Event::InitDone => break,
            _ => {}
        }
    }
    assert_eq!(names, ["a"]);
}

/// POSTs a node body on a fresh connection; the status code, or the connection error.
async fn send_raw(api: &RunningApiServer, body: Vec<u8>) -> Result<u16, String> {
    let tls = shardmetrics_plumbing::pki::client_config(Some(&api.ca().root_store()), None).unwrap();
    let connector = hyper_rustls::HttpsConnectorBuilder::new().with_tls_config(tls).https_only().enable_http1().build();
    let client: hyper_util::client::legacy::Client<_, http_body_util::Full<bytes::Bytes>> =
        hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new()).build(connector);
    let req = http::Request::post(format!("{}/api/v1/nodes", api.url()))
        .header("authorization", format!("Bearer {DEFAULT_ADMIN_TOKEN}"))
        .header("content-type", "application/json")
        .body(http_body_util::Full::new(bytes::Bytes::from(body)))
        .unwrap();
    client.request(req).await.map(|r| r.status().as_u16()).map_err(|e| e.to_string())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_requests_get_kubernetes_status_errors_and_change_nothing() {
    use http_body_util::BodyExt;
    let api = start(policy()).await;
    api.store().create(0, "", node_json("n")).unwrap();
    let rv_before = api.store().current_rv();
    let tls = shardmetrics_plumbing::pki::client_config(Some(&api.ca().root_store()), None).unwrap();
    let connector = hyper_rustls::HttpsConnectorBuilder::new().with_tls_config(tls).https_only().enable_http1().build();
    let client: hyper_util::client::legacy::Client<_, http_body_util::Full<bytes::Bytes>> =
        hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new()).build(connector);
    let send = |method: &str, path: &str, content_type: &str, body: Vec<u8>| {
        let req = http::Request::builder()
            .method(method)
            .uri(format!("{}{path}", api.url()))
            .header("authorization", format!("Bearer {DEFAULT_ADMIN_TOKEN}"))
            .header("content-type", content_type)
            .body(http_body_util::Full::new(bytes::Bytes::from(body)))
            .unwrap();
        let client = client.clone();
        async move {
            let resp = client.request(req).await.unwrap();
            let status = resp.status().as_u16();
            let body: serde_json::Value = serde_json::from_slice(&resp.into_body().collect().await.unwrap().to_bytes()).unwrap();
            (status, body)
        }
    };
    // (method, path, content type, body, expected code, expected reason)
    type Case = (&'static str, &'static str, &'static str, Vec<u8>, u16, &'static str);
    let cases: Vec<Case> = vec![
        ("POST", "/api/v1/nodes", "application/json", b"{not json".to_vec(), 400, "BadRequest"),
        ("POST", "/api/v1/nodes", "application/yaml", b"kind: Node".to_vec(), 415, "UnsupportedMediaType"),
        ("POST", "/api/v1/nodes", "application/json", br#"{"kind":"Pod","metadata":{"name":"x"}}"#.to_vec(), 400, "BadRequest"),
        ("PATCH", "/api/v1/nodes/n", "application/apply-patch+yaml", b"{}".to_vec(), 415, "UnsupportedMediaType"),
        ("PATCH", "/api/v1/nodes/n", "application/json-patch+json", br#"[{"op":"remove","path":"/nope"}]"#.to_vec(), 400, "BadRequest"),
        ("PATCH", "/api/v1/nodes/missing", "application/merge-patch+json", b"{}".to_vec(), 404, "NotFound"),
        ("GET", "/api/v1/pods?labelSelector=a%20in%20(b", "application/json", vec![], 400, "BadRequest"),
        ("GET", "/api/v1/nodes?watch=1&resourceVersion=abc", "application/json", vec![], 400, "BadRequest"),
        ("GET", "/api/v1/nodes?limit=-1", "application/json", vec![], 400, "BadRequest"),
        ("GET", "/api/v1/deployments", "application/json", vec![], 404, "NotFound"),
        ("PUT", "/api/v1/nodes/n", "application/json", br#"{"metadata":{"name":"other"}}"#.to_vec(), 400, "BadRequest"),
    ];
    for (method, path, ct, body, code, reason) in cases {
        let (status, status_obj) = send(method, path, ct, body).await;
        assert_eq!((status, status_obj["reason"].as_str()), (code, Some(reason)), "{method} {path}: {status_obj}");
        assert_eq!(status_obj["kind"], "Status");
        assert_eq!(status_obj["code"], code);
    }
    // Over the 3 MiB limit: 413 (or, if the server closes first, a broken connection), never a change.
    let huge = send_raw(&api, vec![b' '; 4 << 20]).await;
    assert!(matches!(huge, Err(_) | Ok(413)), "{huge:?}");
    assert_eq!(api.store().current_rv(), rv_before, "no bad request changed anything");
}
