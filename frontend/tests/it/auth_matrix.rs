//! Who may read what, against a whole frontend replica over TLS (HTTP/1.1, real sockets on
//! 127.0.0.1:0): front-proxy certificates, bearer tokens (TokenReview) and authorization
//! (SubjectAccessReview) answered by the API-server simulator, samples from a fake shard, pod
//! existence from the simulator's Pods and Nodes.
//!
//! One table: each row is a client (TLS identity + headers), a path, the expected status and,
//! for 200 lists, exactly the pods the caller may see.
//!
//! Not repeated here: a SubjectAccessReview denial is cached for the unauthorized TTL and never
//! served as an allow (`auth_reviews.rs`:
//! `a_denial_is_cached_for_the_unauthorized_ttl_and_never_served_as_an_allow`); TLS versions,
//! cipher suites and certificate reload (`auth_tls.rs`).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use crate::auth_support::{admin_client, allow_everything, api_server, base_policy, client_cert, client_config, get, new_ca, token_user};
use shardmetrics_frontend::auth::{AuthConfig, RequestHeaderSettings, TlsConfig};
use shardmetrics_frontend::store::StoreConfig;
use shardmetrics_frontend::upstream::UpstreamConfig;
use shardmetrics_frontend::{Config, Handles, Listeners, ShardSource};
use shardmetrics_proto::ShardIdentity;
use shardmetrics_sim::apiserver::{Rule, resources};
use crate::support::{FakeShard, PodSpec, T0, Version, scrape, snapshot};
use tokio::sync::oneshot;

const PODS: &[PodSpec<'static>] =
    &[("team-a", "a-1", &["app"]), ("team-a", "a-2", &["app"]), ("team-b", "b-1", &["app"])];
const ALL_PODS: &str = "/apis/metrics.k8s.io/v1beta1/pods";
const TEAM_A: &str = "/apis/metrics.k8s.io/v1beta1/namespaces/team-a/pods";
const TEAM_B: &str = "/apis/metrics.k8s.io/v1beta1/namespaces/team-b/pods";
const NODES: &str = "/apis/metrics.k8s.io/v1beta1/nodes";

/// The TLS identity a row's client presents.
#[derive(Debug, Clone, Copy)]
enum Cert {
    /// No client certificate.
    None,
    /// The front-proxy certificate (requestheader CA, allowed CN `front-proxy-client`).
    FrontProxy,
    /// Signed by the requestheader CA, but CN `mallory` is not an allowed name.
    FrontProxyWrongCn,
    /// CN `front-proxy-client`, signed by a CA nobody trusts.
    OtherCa,
}

struct Row {
    who: &'static str,
    cert: Cert,
    headers: &'static [(&'static str, &'static str)],
    path: &'static str,
    status: u16,
    /// For 200 lists: exactly these pods (namespace/name), in order.
    pods: Option<&'static [&'static str]>,
}

const AS_ADMIN: &[(&str, &str)] = &[("X-Remote-User", "admin"), ("X-Remote-Group", "system:masters")];

const MATRIX: &[Row] = &[
    Row { who: "no credentials", cert: Cert::None, headers: &[], path: ALL_PODS, status: 401, pods: None },
    Row { who: "client certificate from another CA", cert: Cert::OtherCa, headers: AS_ADMIN, path: ALL_PODS, status: 401, pods: None },
    Row { who: "front-proxy CA, CN not allowed", cert: Cert::FrontProxyWrongCn, headers: AS_ADMIN, path: ALL_PODS, status: 401, pods: None },
    Row { who: "X-Remote-User without a front-proxy certificate", cert: Cert::None, headers: AS_ADMIN, path: ALL_PODS, status: 401, pods: None },
    Row { who: "unknown bearer token", cert: Cert::None, headers: &[("Authorization", "Bearer t-forged")], path: TEAM_A, status: 401, pods: None },
    Row { who: "valid token, no rights", cert: Cert::None, headers: &[("Authorization", "Bearer t-nobody")], path: TEAM_A, status: 403, pods: None },
    Row { who: "valid token, no rights, nodes", cert: Cert::None, headers: &[("Authorization", "Bearer t-nobody")], path: NODES, status: 403, pods: None },
    Row {
        who: "team-a user, team-a pods",
        cert: Cert::None,
        headers: &[("Authorization", "Bearer t-alice")],
        path: TEAM_A,
        status: 200,
        pods: Some(&["team-a/a-1", "team-a/a-2"]),
    },
    Row {
        who: "team-a user, one team-a pod",
        cert: Cert::None,
        headers: &[("Authorization", "Bearer t-alice")],
        path: "/apis/metrics.k8s.io/v1beta1/namespaces/team-a/pods/a-2",
        status: 200,
        pods: None,
    },
    Row { who: "team-a user, cluster-wide pods", cert: Cert::None, headers: &[("Authorization", "Bearer t-alice")], path: ALL_PODS, status: 403, pods: None },
    Row { who: "team-a user, team-b pods", cert: Cert::None, headers: &[("Authorization", "Bearer t-alice")], path: TEAM_B, status: 403, pods: None },
    Row {
        who: "team-a user, team-b pod by name",
        cert: Cert::None,
        headers: &[("Authorization", "Bearer t-alice")],
        path: "/apis/metrics.k8s.io/v1beta1/namespaces/team-b/pods/b-1",
        status: 403,
        pods: None,
    },
    Row { who: "team-a user, nodes", cert: Cert::None, headers: &[("Authorization", "Bearer t-alice")], path: NODES, status: 403, pods: None },
    Row {
        who: "team-a user through the aggregator",
        cert: Cert::FrontProxy,
        headers: &[("X-Remote-User", "alice")],
        path: TEAM_A,
        status: 200,
        pods: Some(&["team-a/a-1", "team-a/a-2"]),
    },
    Row { who: "team-a user through the aggregator, cluster-wide", cert: Cert::FrontProxy, headers: &[("X-Remote-User", "alice")], path: ALL_PODS, status: 403, pods: None },
    Row {
        who: "allowed user (token)",
        cert: Cert::None,
        headers: &[("Authorization", "Bearer t-viewer")],
        path: ALL_PODS,
        status: 200,
        pods: Some(&["team-a/a-1", "team-a/a-2", "team-b/b-1"]),
    },
    Row {
        who: "allowed user through the aggregator",
        cert: Cert::FrontProxy,
        headers: &[("X-Remote-User", "viewer")],
        path: ALL_PODS,
        status: 200,
        pods: Some(&["team-a/a-1", "team-a/a-2", "team-b/b-1"]),
    },
    Row { who: "allowed user, nodes", cert: Cert::None, headers: &[("Authorization", "Bearer t-viewer")], path: NODES, status: 200, pods: None },
    Row { who: "system:masters through the aggregator", cert: Cert::FrontProxy, headers: AS_ADMIN, path: NODES, status: 200, pods: None },
];

#[tokio::test]
async fn every_caller_gets_exactly_what_authentication_and_authorization_allow() -> anyhow::Result<()> {
    let id = ShardIdentity { shard_id: "shard-0".into(), epoch: 1 };
    let shard = FakeShard::start("shard-0", snapshot(&id, &[scrape("n1", 0, 2.0, 0.5, PODS), scrape("n1", 15_000, 2.0, 0.5, PODS)])).await;
    let api = api_server(
        base_policy()
            .with_token("t-nobody", token_user("nobody", &[]))
            .with_token("t-alice", token_user("alice", &[]))
            .with_token("t-viewer", token_user("viewer", &[]))
            .with_rule(allow_everything("viewer"))
            .with_rule(Rule::user("alice").verbs(&["*"]).resources(&["*"]).namespaces(&["team-a"])),
    )
    .await?;
    // Running pods and the node, for the replica's metadata watches.
    let store = api.store();
    store.create(resources::NODES, "", serde_json::json!({"metadata": {"name": "n1"}}))?;
    for (ns, name, containers) in PODS {
        store.ensure_namespace(ns)?;
        let containers: Vec<_> = containers.iter().map(|c| serde_json::json!({"name": c, "image": "app"})).collect();
        let pod = serde_json::json!({"metadata": {"name": name}, "spec": {"nodeName": "n1", "containers": containers},
                                     "status": {"phase": "Running"}});
        store.create(resources::PODS, ns, pod)?;
    }

    let dir = tempfile::tempdir()?;
    let serving_ca = new_ca("serving-ca");
    let (cert_file, key_file) = serving_ca.server_cert("frontend", &[])?.write_pem(dir.path(), "serving")?;
    let proxy_ca = new_ca("front-proxy-ca");
    let proxy_ca_file = proxy_ca.write_pem(dir.path(), "front-proxy-ca")?;
    let front_proxy = client_cert(&proxy_ca, "front-proxy-client", "");
    let wrong_cn = client_cert(&proxy_ca, "mallory", "");
    let other_ca = client_cert(&new_ca("other-ca"), "front-proxy-client", "");

    let secure = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = secure.local_addr()?;
    let config = Config {
        store: StoreConfig { resolution_ms: 15_000, max_staleness_ms: 45_000 },
        upstream: UpstreamConfig { replica_name: "auth-matrix".into(), ..UpstreamConfig::default() },
        shards: ShardSource::Static(vec![shard.member()]),
        auth: AuthConfig {
            requestheader_client_ca_file: Some(proxy_ca_file),
            requestheader: RequestHeaderSettings { allowed_names: vec!["front-proxy-client".into()], ..RequestHeaderSettings::default() },
            ..AuthConfig::default()
        },
        tls: TlsConfig { cert_file: Some(cert_file), key_file: Some(key_file), ..TlsConfig::default() },
        max_requests_inflight: 100,
        limits: shardmetrics_frontend::server::ServerLimits::default(),
        shutdown_grace: Duration::from_secs(5),
        sweep_interval: Duration::from_millis(200),
    };
    let (stop, stopped) = oneshot::channel::<()>();
    let handles = Handles { kube: Some(admin_client(&api).await?), clock: shardmetrics_plumbing::clock::ManualClock::new(T0 + 40_000) };
    let frontend = tokio::spawn(shardmetrics_frontend::run(config, handles, Listeners { secure, admin: None }, async {
        let _ = stopped.await;
    }));

    let tls12_13: &[&'static rustls::SupportedProtocolVersion] = &[&rustls::version::TLS13, &rustls::version::TLS12];
    let client = |identity| client_config(&serving_ca, identity, tls12_13, &[b"http/1.1"]);
    let clients: HashMap<&str, Arc<rustls::ClientConfig>> = HashMap::from([
        ("none", client(None)),
        ("front-proxy", client(Some(&front_proxy))),
        ("wrong-cn", client(Some(&wrong_cn))),
        ("other-ca", client(Some(&other_ca))),
    ]);
    let client_for = |cert: Cert| {
        clients[match cert {
            Cert::None => "none",
            Cert::FrontProxy => "front-proxy",
            Cert::FrontProxyWrongCn => "wrong-cn",
            Cert::OtherCa => "other-ca",
        }]
        .clone()
    };

    // Ready: shard snapshot in and the pod/node metadata lists synced.
    let mut readyz = String::new();
    for _ in 0..500 {
        if let Ok(r) = crate::support::get(addr, &client_for(Cert::None), Version::Http1, "/readyz?verbose", &[]).await {
            readyz = String::from_utf8_lossy(&r.body).into_owned();
            if r.status == 200 {
                break;
            }
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(readyz.contains("readyz check passed"), "the frontend never became ready:\n{readyz}");

    let mut failures = Vec::new();
    for row in MATRIX {
        let (code, body) = get(addr, client_for(row.cert), row.path, row.headers).await?;
        if code.as_u16() != row.status {
            failures.push(format!("{}: GET {} = {code} (want {}): {body}", row.who, row.path, row.status));
            continue;
        }
        if code != 200 {
            let reason = if row.status == 401 { "Unauthorized" } else { "Forbidden" };
            if body["kind"] != "Status" || body["reason"] != reason {
                failures.push(format!("{}: not a {reason} Status: {body}", row.who));
            }
        }
        if let Some(want) = row.pods {
            let got: Vec<String> = body["items"]
                .as_array()
                .map(|items| {
                    items.iter().map(|i| format!("{}/{}", i["metadata"]["namespace"].as_str().unwrap_or(""), i["metadata"]["name"].as_str().unwrap_or(""))).collect()
                })
                .unwrap_or_default();
            if got != want {
                failures.push(format!("{}: GET {} listed {got:?}, want {want:?}", row.who, row.path));
            }
        }
    }
    assert!(failures.is_empty(), "matrix rows failed:\n{}", failures.join("\n"));

    // A 403 tells the caller what was refused, as kube-apiserver words it.
    let (_, body) = get(addr, client_for(Cert::None), TEAM_B, &[("Authorization", "Bearer t-alice")]).await?;
    let message = body["message"].as_str().unwrap_or_default();
    assert!(message.contains("alice") && message.contains("team-b"), "{message}");
    // Every review went to the API server: the namespace grant was asked for, never assumed.
    let stats = api.stats();
    assert!(stats.resource_requests("create", "subjectaccessreviews") > 0 && stats.resource_requests("create", "tokenreviews") > 0);

    let _ = stop.send(());
    tokio::time::timeout(Duration::from_secs(10), frontend).await??.map_err(|e| anyhow::anyhow!("{e}"))?;
    Ok(())
}
