//! The `shardmetrics-loadtest` binary: flag validation and the standalone `kubelets` command.

use std::process::Stdio;
use std::time::Duration;

use http_body_util::{BodyExt, Empty};
use tokio::io::{AsyncBufReadExt, BufReader};

const BIN: &str = env!("CARGO_BIN_EXE_shardmetrics-loadtest");

#[tokio::test]
async fn invalid_flags_exit_64_listing_every_problem() {
    let out = tokio::process::Command::new(BIN)
        .args(["kubelets", "--count", "0", "--containers-per-pod", "0", "--token", " "])
        .env_remove("SHARDMETRICS_LOG_LEVEL")
        .output()
        .await
        .unwrap();
    assert_eq!(out.status.code(), Some(64));
    let stderr = String::from_utf8_lossy(&out.stderr);
    for needle in ["--count 0", "--containers-per-pod 0", "--token must not be empty"] {
        assert!(stderr.contains(needle), "{needle:?} missing from:\n{stderr}");
    }
    let out = tokio::process::Command::new(BIN).args(["demo", "--metric-resolution", "2s", "--shards", "0"]).output().await.unwrap();
    assert_eq!(out.status.code(), Some(64));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("below the minimum of 5s") && stderr.contains("--shards 0"), "{stderr}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_kubelets_command_serves_synthetic_pods_until_stopped() {
    let dir = tempfile::tempdir().unwrap();
    let mut child = tokio::process::Command::new(BIN)
        .args(["kubelets", "--count", "3", "--pods-per-node", "2", "--token", "t1,t2", "--pki-dir"])
        .arg(dir.path())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let mut ports = Vec::new();
    loop {
        let line = tokio::time::timeout(Duration::from_secs(30), lines.next_line()).await.unwrap().unwrap().expect("output ended early");
        if line.starts_with("kubelets ready: 3") {
            break;
        }
        let (name, addr) = line.split_once(' ').unwrap();
        assert!(name.starts_with("standalone-node-"));
        ports.push(addr.rsplit_once(':').unwrap().1.parse::<u16>().unwrap());
    }
    assert_eq!(ports.len(), 3);

    use rustls::pki_types::pem::PemObject;
    let mut roots = rustls::RootCertStore::empty();
    for cert in rustls::pki_types::CertificateDer::pem_file_iter(dir.path().join("kubelet-ca.crt")).unwrap() {
        roots.add(cert.unwrap()).unwrap();
    }
    let tls = shardmetrics_plumbing::pki::client_config(Some(&roots), None).unwrap();
    let connector = hyper_rustls::HttpsConnectorBuilder::new().with_tls_config(tls).https_only().enable_http1().build();
    let client: hyper_util::client::legacy::Client<_, Empty<bytes::Bytes>> =
        hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new()).build(connector);
    let req = http::Request::get(format!("https://127.0.0.1:{}/metrics/resource", ports[1]))
        .header("authorization", "Bearer t2")
        .body(Empty::new())
        .unwrap();
    let resp = client.request(req).await.unwrap();
    assert_eq!(resp.status(), 200);
    let text = String::from_utf8(resp.into_body().collect().await.unwrap().to_bytes().to_vec()).unwrap();
    assert_eq!(text.matches("container_cpu_usage_seconds_total{").count(), 2, "{text}");
    assert!(text.contains("pod=\"standalone-node-0001-pod-1\""));

    child.start_kill().unwrap();
    child.wait().await.unwrap();
}
