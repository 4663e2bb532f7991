//! The aggregation proxy: `/apis/metrics.k8s.io/...` forwarded to TLS echo backends that report
//! the client certificate and identity headers they received.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Empty, StreamBody};
use hyper::body::Frame;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use serde_json::{Value, json};
use shardmetrics_sim::apiserver::{ApiServer, ApiServerConfig, DEFAULT_ADMIN_TOKEN, MASTERS, Policy, RunningApiServer, UserInfo};
use shardmetrics_sim::httputil::{Body, BoxError, json_response, serve_tls};
use shardmetrics_plumbing::pki::{self, Ca};
use tokio::sync::{Notify, watch};

type HttpsClient = Client<hyper_rustls::HttpsConnector<HttpConnector>, Empty<Bytes>>;

/// Starts an echo backend named `id`, trusting client certificates from `client_ca`.
async fn echo_backend(id: &'static str, client_ca: &Ca, release: Arc<Notify>) -> (SocketAddr, watch::Sender<bool>) {
    let ca = Ca::new("backend-ca").unwrap();
    let cert = ca.server_cert("frontend", &[]).unwrap();
    let tls = Arc::new(pki::server_config(&cert, Some(client_ca), true).unwrap());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (stop, stop_rx) = watch::channel(false);
    tokio::spawn(serve_tls(listener, tls, stop_rx, move |peer, req: Request<hyper::body::Incoming>| {
        let release = release.clone();
        async move {
            if req.uri().path().ends_with("/stream") {
                // First chunk now, the second only after the test has read the first.
                let first = futures::stream::once(async { Ok::<_, BoxError>(Frame::data(Bytes::from_static(b"first\n"))) });
                let second = futures::stream::once(async move {
                    release.notified().await;
                    Ok::<_, BoxError>(Frame::data(Bytes::from_static(b"second\n")))
                });
                let body: Body = BodyExt::boxed(StreamBody::new(futures::StreamExt::chain(first, second)));
                return Response::new(body);
            }
            let cn = peer.client_certs.first().and_then(|c| pki::cert_subject(c)).map(|s| s.common_name);
            let all = |name: &str| -> Vec<String> {
                req.headers().get_all(name).iter().filter_map(|v| v.to_str().ok().map(str::to_owned)).collect()
            };
            let body = json!({
                "backend": id,
                "clientCertCN": cn,
                "user": all("x-remote-user"),
                "groups": all("x-remote-group"),
                "authorization": all("authorization"),
                "accept": all("accept"),
                "pathAndQuery": req.uri().path_and_query().map(|p| p.to_string()),
            });
            json_response(StatusCode::OK, body.to_string())
        }
    }));
    (addr, stop)
}

fn client(api: &RunningApiServer) -> HttpsClient {
    let tls = pki::client_config(Some(&api.ca().root_store()), None).unwrap();
    let connector = hyper_rustls::HttpsConnectorBuilder::new().with_tls_config(tls).https_only().enable_all_versions().build();
    Client::builder(TokioExecutor::new()).build(connector)
}

async fn get(c: &HttpsClient, api: &RunningApiServer, path: &str, token: &str) -> (StatusCode, Value) {
    let req = Request::get(format!("{}{path}", api.url()))
        .header("authorization", format!("Bearer {token}"))
        .header("x-remote-user", "spoofed")
        .header("accept", "application/json")
        .body(Empty::new())
        .unwrap();
    let resp = c.request(req).await.unwrap();
    let status = resp.status();
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    (status, serde_json::from_slice(&body).unwrap_or(Value::Null))
}

fn policy() -> Policy {
    Policy::new()
        .with_token(DEFAULT_ADMIN_TOKEN, UserInfo::new("admin", &[MASTERS]))
        .with_token("noaccess-token", UserInfo::new("demo-noaccess", &[]))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_requests_reach_the_backends_round_robin_with_the_front_proxy_identity() {
    let api = ApiServer::start(ApiServerConfig { policy: policy(), ..Default::default() }).await.unwrap();
    let c = client(&api);
    let groups = |v: &Value| -> Vec<String> {
        v["groups"].as_array().unwrap().iter().map(|g| g["name"].as_str().unwrap().to_owned()).collect()
    };
    let (_, apis) = get(&c, &api, "/apis", DEFAULT_ADMIN_TOKEN).await;
    assert!(!groups(&apis).contains(&"metrics.k8s.io".to_owned()));
    let (status, _) = get(&c, &api, "/apis/metrics.k8s.io/v1beta1/nodes", DEFAULT_ADMIN_TOKEN).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "no backend registered");

    let release = Arc::new(Notify::new());
    let (a, _stop_a) = echo_backend("a", api.front_proxy_ca(), release.clone()).await;
    let (b, _stop_b) = echo_backend("b", api.front_proxy_ca(), release.clone()).await;
    let dead = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap()
    };
    api.set_aggregation_backends(vec![dead, a, b]);
    let (_, apis) = get(&c, &api, "/apis", DEFAULT_ADMIN_TOKEN).await;
    assert!(groups(&apis).contains(&"metrics.k8s.io".to_owned()));

    let mut seen = Vec::new();
    for _ in 0..6 {
        let (status, echo) =
            get(&c, &api, "/apis/metrics.k8s.io/v1beta1/namespaces/web/pods?labelSelector=app%3Dx", DEFAULT_ADMIN_TOKEN).await;
        assert_eq!(status, StatusCode::OK, "the dead backend is skipped");
        assert_eq!(echo["clientCertCN"], "front-proxy-client");
        assert_eq!(echo["user"], json!(["admin"]), "the caller's X-Remote-User is replaced");
        assert_eq!(echo["groups"], json!(["system:masters", "system:authenticated"]));
        assert_eq!(echo["authorization"], json!([]), "credentials are not forwarded");
        assert_eq!(echo["accept"], json!(["application/json"]));
        assert_eq!(echo["pathAndQuery"], "/apis/metrics.k8s.io/v1beta1/namespaces/web/pods?labelSelector=app%3Dx");
        seen.push(echo["backend"].as_str().unwrap().to_owned());
    }
    assert!(seen.contains(&"a".to_owned()) && seen.contains(&"b".to_owned()), "round robin: {seen:?}");
    assert!(api.proxy_stats().backend_connect_errors.load(std::sync::atomic::Ordering::Relaxed) >= 1);

    // The simulator authorizes before proxying, as kube-apiserver does.
    let (status, body) = get(&c, &api, "/apis/metrics.k8s.io/v1beta1/nodes", "noaccess-token").await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    assert_eq!(body["reason"], "Forbidden");
    // Discovery of the group version is proxied and allowed to every authenticated user.
    let (status, body) = get(&c, &api, "/apis/metrics.k8s.io/v1beta1", "noaccess-token").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body["user"], json!(["demo-noaccess"]));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_proxied_response_streams_back_as_it_arrives() {
    let api = ApiServer::start(ApiServerConfig { policy: policy(), ..Default::default() }).await.unwrap();
    let release = Arc::new(Notify::new());
    let (a, _stop) = echo_backend("a", api.front_proxy_ca(), release.clone()).await;
    api.set_aggregation_backends(vec![a]);
    let c = client(&api);
    let req = Request::get(format!("{}/apis/metrics.k8s.io/v1beta1/stream", api.url()))
        .header("authorization", format!("Bearer {DEFAULT_ADMIN_TOKEN}"))
        .body(Empty::new())
        .unwrap();
    let resp = c.request(req).await.unwrap();
    let mut body = resp.into_body();
    let first = tokio::time::timeout(Duration::from_secs(10), body.frame()).await.expect("first chunk arrives before the second is sent");
    assert_eq!(first.unwrap().unwrap().into_data().unwrap(), Bytes::from_static(b"first\n"));
    release.notify_one();
    let rest = body.collect().await.unwrap().to_bytes();
    assert_eq!(rest, Bytes::from_static(b"second\n"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_proxy_authorization_the_backend_decides_for_every_authenticated_caller() {
    let api = ApiServer::start(ApiServerConfig { policy: policy(), authorize_aggregated: false, ..Default::default() }).await.unwrap();
    let (a, _stop) = echo_backend("a", api.front_proxy_ca(), Arc::new(Notify::new())).await;
    api.set_aggregation_backends(vec![a]);
    let c = client(&api);
    let (status, echo) = get(&c, &api, "/apis/metrics.k8s.io/v1beta1/nodes", "noaccess-token").await;
    assert_eq!(status, StatusCode::OK, "forwarded: the frontend's own authorization is what decides");
    assert_eq!(echo["user"], json!(["demo-noaccess"]));
    let (status, _) = get(&c, &api, "/apis/metrics.k8s.io/v1beta1/nodes", "forged").await;
    assert_eq!(status, StatusCode::UNAUTHORIZED, "authentication still happens at the proxy");
}
