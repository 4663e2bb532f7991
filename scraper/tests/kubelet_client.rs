//! The real kubelet client against real TLS kubelets on 127.0.0.1:0.

mod common;

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use bytes::Bytes;
use common::{KubeletOptions, Reply, TestKubelet};
use shardmetrics_plumbing::pki::Ca;
use shardmetrics_scraper::kubelet::fixture::{PayloadSpec, resource_metrics};
use shardmetrics_scraper::kubelet::{
    KubeletAuth, KubeletClient, KubeletClientConfig, KubeletSource, KubeletTls, ScrapeError, TokenSource, parse_resource_metrics,
};

fn payload() -> Bytes {
    Bytes::from(resource_metrics(&PayloadSpec { pods: 30, seed: 1, timestamp_ms: 1_700_000_000_000 }))
}

fn client(tls: KubeletTls, auth: KubeletAuth) -> KubeletClient {
    KubeletClient::new(KubeletClientConfig {
        tls,
        auth,
        timeout: Duration::from_secs(2),
        max_response_bytes: 1 << 20,
        pool_idle_timeout: Duration::from_secs(90),
    })
    .unwrap()
}

async fn kubelet(ca: &Ca, token: Option<&str>, reply: Reply) -> TestKubelet {
    TestKubelet::start(&ca.server_cert("kubelet", &[]).unwrap(), KubeletOptions { token: token.map(Into::into), client_ca: None, reply }).await
}

#[tokio::test]
async fn a_verified_scrape_with_a_bearer_token_returns_the_body_and_reuses_one_connection() {
    let ca = Ca::new("kubelet-ca").unwrap();
    let k = kubelet(&ca, Some("s3cret"), Reply::Body(payload())).await;
    let c = client(KubeletTls::Verify(vec![ca.cert_der().clone()]), KubeletAuth::Token(TokenSource::fixed("s3cret").unwrap()));
    for _ in 0..5 {
        let body = c.fetch(&k.target("node-1")).await.unwrap();
        assert_eq!(body, payload());
        let parsed = parse_resource_metrics("node-1", &body, 0).unwrap();
        assert_eq!(parsed.scrape.pods.len(), 30);
    }
    assert_eq!(k.requests.load(Ordering::SeqCst), 5);
    assert_eq!(k.connections.load(Ordering::SeqCst), 1, "keep-alive: one TLS connection for five scrapes");
}

#[tokio::test]
async fn a_wrong_token_is_an_http_error() {
    let ca = Ca::new("kubelet-ca").unwrap();
    let k = kubelet(&ca, Some("s3cret"), Reply::Body(payload())).await;
    let c = client(KubeletTls::Verify(vec![ca.cert_der().clone()]), KubeletAuth::Token(TokenSource::fixed("nope").unwrap()));
    let err = c.fetch(&k.target("n")).await.unwrap_err();
    assert_eq!(err, ScrapeError::Http { status: 401 });
    assert_eq!(err.result_label(), "http_error");
}

#[tokio::test]
async fn a_kubelet_certificate_from_another_ca_is_refused_unless_insecure() {
    let ca = Ca::new("kubelet-ca").unwrap();
    let other = Ca::new("other-ca").unwrap();
    let k = kubelet(&ca, None, Reply::Body(payload())).await;
    let c = client(KubeletTls::Verify(vec![other.cert_der().clone()]), KubeletAuth::None);
    let err = c.fetch(&k.target("n")).await.unwrap_err();
    assert_eq!(err.result_label(), "connect_error", "{err}");
    assert!(err.to_string().to_lowercase().contains("certificate"), "{err}");

    let insecure = client(KubeletTls::Insecure, KubeletAuth::None);
    assert_eq!(insecure.fetch(&k.target("n")).await.unwrap(), payload());
}

#[tokio::test]
async fn a_client_certificate_authenticates_to_a_kubelet_that_requires_one() {
    let ca = Arc::new(Ca::new("kubelet-ca").unwrap());
    let client_ca = Arc::new(Ca::new("client-ca").unwrap());
    let k = TestKubelet::start(&ca.server_cert("kubelet", &[]).unwrap(), KubeletOptions { token: None, client_ca: Some(client_ca.clone()), reply: Reply::Body(payload()) }).await;

    let without = client(KubeletTls::Verify(vec![ca.cert_der().clone()]), KubeletAuth::None);
    assert_eq!(without.fetch(&k.target("n")).await.unwrap_err().result_label(), "connect_error");

    // Loaded from PEM files, as the flags do.
    let dir = tempfile::tempdir().unwrap();
    let (cert, key) = client_ca.client_cert("system:metrics-server", &[]).unwrap().write_pem(dir.path(), "client").unwrap();
    let chain = shardmetrics_scraper::tls::load_certs(&cert).unwrap();
    let key = shardmetrics_scraper::tls::load_key(&key).unwrap();
    let with = client(KubeletTls::Verify(vec![ca.cert_der().clone()]), KubeletAuth::ClientCert { chain, key });
    assert_eq!(with.fetch(&k.target("n")).await.unwrap(), payload());
}

#[tokio::test]
async fn a_body_over_the_limit_is_too_large_with_or_without_content_length() {
    let ca = Ca::new("kubelet-ca").unwrap();
    let c = client(KubeletTls::Verify(vec![ca.cert_der().clone()]), KubeletAuth::None);
    let k = kubelet(&ca, None, Reply::Body(Bytes::from(vec![b'#'; (1 << 20) + 1]))).await;
    assert_eq!(c.fetch(&k.target("n")).await.unwrap_err(), ScrapeError::TooLarge { limit: 1 << 20 });
    let k = kubelet(&ca, None, Reply::Chunked(3 << 20)).await;
    let err = c.fetch(&k.target("n")).await.unwrap_err();
    assert_eq!(err, ScrapeError::TooLarge { limit: 1 << 20 });
    assert_eq!(err.result_label(), "too_large");
}

#[tokio::test]
async fn a_slow_kubelet_times_out_and_a_server_error_is_an_http_error() {
    let ca = Ca::new("kubelet-ca").unwrap();
    let c = KubeletClient::new(KubeletClientConfig {
        tls: KubeletTls::Verify(vec![ca.cert_der().clone()]),
        auth: KubeletAuth::None,
        timeout: Duration::from_millis(300),
        max_response_bytes: 1 << 20,
        pool_idle_timeout: Duration::from_secs(90),
    })
    .unwrap();
    let k = kubelet(&ca, None, Reply::Slow(Duration::from_secs(5), payload())).await;
    assert_eq!(c.fetch(&k.target("n")).await.unwrap_err(), ScrapeError::Timeout(Duration::from_millis(300)));
    *k.reply.lock().unwrap() = Reply::Status(500);
    assert_eq!(c.fetch(&k.target("n")).await.unwrap_err(), ScrapeError::Http { status: 500 });
}

#[tokio::test]
async fn a_closed_port_is_a_connect_error() {
    let ca = Ca::new("kubelet-ca").unwrap();
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let c = client(KubeletTls::Verify(vec![ca.cert_der().clone()]), KubeletAuth::None);
    let t = shardmetrics_scraper::nodes::NodeTarget { name: "n".into(), host: "127.0.0.1".into(), port };
    let err = c.fetch(&t).await.unwrap_err();
    assert!(matches!(err, ScrapeError::Connect(_)), "{err}");
}
