//! Per-request cost of authentication on the secure port: the front-proxy path every
//! aggregated request takes (chain verification + header parsing), the x509 client-certificate
//! path, and request classification.

use std::hint::black_box;

use criterion::{Criterion, criterion_group, criterion_main};
use http::HeaderMap;
use rustls_pki_types::CertificateDer;
use shardmetrics_frontend::auth::{Auth, AuthConfig, RequestAttributes, RequestHeaderSettings};
use shardmetrics_plumbing::pki::Ca;

/// A one-certificate client chain from `ca` with CN `cn` and O `groups`.
fn client(ca: &Ca, cn: &str, groups: &[&str]) -> Vec<CertificateDer<'static>> {
    ca.client_cert(cn, groups).expect("client certificate").chain()
}

fn bench(c: &mut Criterion) {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let dir = tempfile::tempdir().expect("tempdir");
    let front_proxy = Ca::new("front-proxy-ca").expect("CA");
    let client_ca = Ca::new("client-ca").expect("CA");
    let front_proxy_file = front_proxy.write_pem(dir.path(), "front-proxy-ca").expect("write");
    let client_file = client_ca.write_pem(dir.path(), "client-ca").expect("write");
    let config = AuthConfig {
        requestheader_client_ca_file: Some(front_proxy_file),
        requestheader: RequestHeaderSettings {
            allowed_names: vec!["front-proxy-client".into()],
            ..RequestHeaderSettings::default()
        },
        client_ca_file: Some(client_file),
        ..AuthConfig::default()
    };
    let auth = runtime
        .block_on(Auth::new(config, None, &prometheus::Registry::new()))
        .expect("auth");
    let proxy_chain = client(&front_proxy, "front-proxy-client", &[]);
    let user_chain = client(&client_ca, "alice", &["dev"]);
    let mut headers = HeaderMap::new();
    headers.insert(
        "x-remote-user",
        "system:serviceaccount:kube-system:horizontal-pod-autoscaler"
            .parse()
            .expect("v"),
    );
    headers.append(
        "x-remote-group",
        "system:serviceaccounts".parse().expect("v"),
    );
    headers.append("x-remote-group", "system:authenticated".parse().expect("v"));
    headers.insert(
        "x-remote-extra-authentication.kubernetes.io%2fpod-name",
        "kube-controller-manager-0".parse().expect("v"),
    );

    c.bench_function("authenticate/front_proxy_cert_and_headers", |b| {
        b.iter(|| {
            runtime
                .block_on(auth.authenticate(Some(black_box(&proxy_chain)), black_box(&headers)))
                .expect("user")
        })
    });
    c.bench_function("authenticate/x509_client_cert", |b| {
        b.iter(|| {
            runtime
                .block_on(auth.authenticate(Some(black_box(&user_chain)), &HeaderMap::new()))
                .expect("user")
        })
    });
    let uri: http::Uri = "/apis/metrics.k8s.io/v1beta1/namespaces/web/pods?labelSelector=app%3Dapi"
        .parse()
        .expect("uri");
    c.bench_function("request_attributes/from_request", |b| {
        b.iter(|| RequestAttributes::from_request(&http::Method::GET, black_box(&uri)))
    });
}

criterion_group!(benches, bench);
criterion_main!(benches);
