//! The secure port's limits against hostile or broken clients, each on a real frontend on
//! 127.0.0.1:0 with small limits: request body size (413), request head size (431), slowloris
//! head trickling (`--request-header-timeout`), idle keep-alive connections
//! (`--idle-connection-timeout`), silent TLS clients (`--tls-handshake-timeout`), and an
//! over-size gRPC batch from a shard (`--grpc-max-message-bytes`).
//!
//! The in-flight limit (429) is tested in `api_https.rs`
//! (`past_max_requests_inflight_the_answer_is_429_until_a_slot_frees`); the kubelet response
//! limit in the scraper's `tests/kubelet_client.rs`.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{Request, StatusCode};
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::Frame;
use hyper_util::rt::{TokioExecutor, TokioIo};
use rustls_pki_types::ServerName;
use shardmetrics_frontend::server::ServerLimits;
use shardmetrics_proto::ShardIdentity;
use shardmetrics_proto::v1::{SampleBatch, ShardIdentity as WireShard};
use crate::support::{ADMIN, FakeShard, Frontend, FrontendOptions, PodSpec, Version, admin_get, get, scrape, snapshot};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::time::Instant;

const NODES: &str = "/apis/metrics.k8s.io/v1beta1/nodes";
const PODS: &[PodSpec<'static>] = &[("default", "web-0", &["app"])];

/// Small limits, so each test trips them quickly.
fn small_limits() -> ServerLimits {
    ServerLimits {
        max_request_body_bytes: 1024,
        max_request_header_bytes: 16 * 1024,
        request_header_timeout: Duration::from_millis(600),
        idle_connection_timeout: Duration::from_millis(600),
        tls_handshake_timeout: Duration::from_millis(600),
    }
}

async fn cluster(options: FrontendOptions) -> (FakeShard, Frontend) {
    let id = ShardIdentity { shard_id: "shard-0".into(), epoch: 1 };
    let scrapes = [scrape("n1", 0, 2.0, 0.5, PODS), scrape("n1", 15_000, 2.0, 0.5, PODS)];
    let shard = FakeShard::start("shard-0", snapshot(&id, &scrapes)).await;
    let frontend = Frontend::start(&[&shard], options).await;
    frontend.wait_ready().await;
    (shard, frontend)
}

async fn tls(addr: SocketAddr, config: &Arc<rustls::ClientConfig>, alpn: &[u8]) -> tokio_rustls::client::TlsStream<tokio::net::TcpStream> {
    let mut config = (**config).clone();
    config.alpn_protocols = vec![alpn.to_vec()];
    let tcp = tokio::net::TcpStream::connect(addr).await.expect("connect");
    tokio_rustls::TlsConnector::from(Arc::new(config))
        .connect(ServerName::try_from("localhost").expect("name"), tcp)
        .await
        .expect("handshake")
}

/// One request with `body` on a fresh connection of `version`: status and body.
async fn request<B>(f: &Frontend, version: Version, req: Request<B>) -> anyhow::Result<(StatusCode, Bytes)>
where
    B: hyper::body::Body<Data = Bytes> + Send + Unpin + 'static,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let response = match version {
        Version::Http1 => {
            let io = TokioIo::new(tls(f.secure, &f.proxy_client, b"http/1.1").await);
            let (mut sender, conn) = hyper::client::conn::http1::handshake(io).await?;
            tokio::spawn(conn);
            sender.send_request(req).await?
        }
        Version::Http2 => {
            let io = TokioIo::new(tls(f.secure, &f.proxy_client, b"h2").await);
            let (mut sender, conn) = hyper::client::conn::http2::handshake(TokioExecutor::new(), io).await?;
            tokio::spawn(conn);
            sender.send_request(req).await?
        }
    };
    let status = response.status();
    Ok((status, response.into_body().collect().await?.to_bytes()))
}

fn get_with<B>(body: B, extra: &[(&str, &str)]) -> Request<B> {
    let mut b = Request::get(format!("https://localhost{NODES}"));
    for (k, v) in ADMIN.iter().chain(extra) {
        b = b.header(*k, *v);
    }
    b.body(body).expect("request")
}

fn status_reason(body: &Bytes) -> String {
    let v: serde_json::Value = serde_json::from_slice(body).expect("Status JSON");
    assert_eq!(v["kind"], "Status");
    v["reason"].as_str().unwrap_or_default().to_owned()
}

/// Reads until the server closes the connection; how long that took, or `None` if it stayed
/// open for `limit`.
async fn closed_within<S: tokio::io::AsyncRead + Unpin>(stream: &mut S, limit: Duration) -> Option<Duration> {
    let start = Instant::now();
    let mut buf = [0u8; 4096];
    loop {
        match tokio::time::timeout(limit.saturating_sub(start.elapsed()), stream.read(&mut buf)).await {
            Err(_) => return None,
            Ok(Ok(0) | Err(_)) => return Some(start.elapsed()),
            Ok(Ok(_)) => {}
        }
    }
}

#[tokio::test]
async fn a_request_body_over_the_limit_is_a_413_status_declared_or_streamed() {
    let (_shard, f) = cluster(FrontendOptions { limits: small_limits(), ..FrontendOptions::default() }).await;
    for version in [Version::Http1, Version::Http2] {
        let (code, body) = request(&f, version, get_with(Full::new(Bytes::from(vec![b'x'; 1025])), &[])).await.expect("request");
        assert_eq!(code, StatusCode::PAYLOAD_TOO_LARGE, "{version:?}");
        assert_eq!(status_reason(&body), "RequestEntityTooLarge");
        // Without a declared length (HTTP/1.1 chunked, HTTP/2 DATA frames): read up to the limit.
        // (hyper's HTTP/1.1 client sends no body with a GET of unknown length unless told to chunk.)
        let chunked: &[(&str, &str)] = if version == Version::Http1 { &[("transfer-encoding", "chunked")] } else { &[] };
        let frames = (0..8).map(|_| Ok::<_, std::convert::Infallible>(Frame::data(Bytes::from(vec![b'y'; 200]))));
        let (code, body) = request(&f, version, get_with(StreamBody::new(futures::stream::iter(frames)), chunked)).await.expect("request");
        assert_eq!(code, StatusCode::PAYLOAD_TOO_LARGE, "{version:?} streamed");
        assert_eq!(status_reason(&body), "RequestEntityTooLarge");
        // Within the limit the body is ignored and the request served.
        let (code, _) = request(&f, version, get_with(Full::new(Bytes::from(vec![b'x'; 1024])), &[])).await.expect("request");
        assert_eq!(code, StatusCode::OK, "{version:?} within the limit");
    }
    f.stop().await;
}

#[tokio::test]
async fn a_request_head_over_the_limit_is_refused_and_the_server_carries_on() {
    let (_shard, f) = cluster(FrontendOptions { limits: small_limits(), ..FrontendOptions::default() }).await;
    let big = "g".repeat(20 * 1024);
    // HTTP/1.1: hyper answers 431 and closes the connection.
    let (code, _) = request(&f, Version::Http1, get_with(Full::new(Bytes::new()), &[("x-big", &big)])).await.expect("HTTP/1.1 answer");
    assert_eq!(code, StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE);
    // HTTP/2: the header list exceeds SETTINGS_MAX_HEADER_LIST_SIZE; a 431 or a reset stream.
    match request(&f, Version::Http2, get_with(Full::new(Bytes::new()), &[("x-big", &big)])).await {
        Ok((code, _)) => assert_eq!(code, StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE),
        Err(e) => assert!(format!("{e:?}").contains("stream") || format!("{e:?}").contains("header"), "{e:?}"),
    }
    for version in [Version::Http1, Version::Http2] {
        let r = get(f.secure, &f.proxy_client, version, NODES, ADMIN).await.expect("get");
        assert_eq!(r.status, 200, "{version:?} still served");
    }
    f.stop().await;
}

#[tokio::test]
async fn a_client_trickling_its_request_head_is_cut_off_after_the_header_timeout() {
    // A long idle timeout, so only the header timeout can cut the trickle.
    let limits = ServerLimits { idle_connection_timeout: Duration::from_secs(60), ..small_limits() };
    let (_shard, f) = cluster(FrontendOptions { limits, ..FrontendOptions::default() }).await;
    let mut stream = tls(f.secure, &f.proxy_client, b"http/1.1").await;
    let head = format!("GET {NODES} HTTP/1.1\r\nhost: localhost\r\nx-remote-user: admin\r\nx-remote-group: system:masters\r\n\r\n");
    let (mut reader, mut writer) = tokio::io::split(&mut stream);
    let trickle = async {
        // One byte every 50 ms: the whole head would take ~5 s.
        for b in head.as_bytes() {
            if writer.write_all(&[*b]).await.is_err() || writer.flush().await.is_err() {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        true
    };
    let (completed, closed) = tokio::join!(trickle, closed_within(&mut reader, Duration::from_secs(10)));
    let closed = closed.expect("the server closes a connection whose head takes too long");
    assert!(closed < Duration::from_secs(3), "closed only after {closed:?}");
    assert!(!completed, "the trickled head was cut off before it completed");
    f.stop().await;
}

#[tokio::test]
async fn idle_connections_are_closed_but_busy_ones_are_kept() {
    // A long header timeout, so only the idle timeout can close the connections.
    let limits = ServerLimits { request_header_timeout: Duration::from_secs(60), ..small_limits() };
    let (_shard, f) = cluster(FrontendOptions { limits, ..FrontendOptions::default() }).await;
    // HTTP/1.1 keep-alive: requests 200 ms apart keep the connection (idle timeout 600 ms)...
    let io = TokioIo::new(tls(f.secure, &f.proxy_client, b"http/1.1").await);
    let (mut sender, conn) = hyper::client::conn::http1::handshake(io).await.expect("handshake");
    let conn = tokio::spawn(conn);
    for i in 0..6 {
        let r = sender.send_request(get_with(Full::new(Bytes::new()), &[])).await.unwrap_or_else(|e| panic!("request {i}: {e}"));
        assert_eq!(r.status(), 200);
        r.into_body().collect().await.expect("body");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // ...and once idle the server closes it.
    let start = Instant::now();
    let ended = tokio::time::timeout(Duration::from_secs(5), conn).await;
    assert!(ended.is_ok(), "HTTP/1.1 connection still open 5 s after its last request");
    assert!(start.elapsed() >= Duration::from_millis(300), "closed too early: {:?}", start.elapsed());

    // HTTP/2 with no stream ever opened.
    let io = TokioIo::new(tls(f.secure, &f.proxy_client, b"h2").await);
    let (_sender, conn) = hyper::client::conn::http2::handshake::<_, _, Full<Bytes>>(TokioExecutor::new(), io).await.expect("h2 handshake");
    let ended = tokio::time::timeout(Duration::from_secs(5), conn).await;
    assert!(ended.is_ok(), "idle HTTP/2 connection still open after 5 s");
    f.stop().await;
}

#[tokio::test]
async fn a_client_that_never_completes_the_tls_handshake_is_disconnected() {
    let (_shard, f) = cluster(FrontendOptions { limits: small_limits(), ..FrontendOptions::default() }).await;
    let mut silent = tokio::net::TcpStream::connect(f.secure).await.expect("connect");
    let closed = closed_within(&mut silent, Duration::from_secs(10)).await.expect("closed");
    assert!(closed >= Duration::from_millis(400) && closed < Duration::from_secs(3), "closed after {closed:?}");
    // Half a ClientHello, then silence.
    let mut partial = tokio::net::TcpStream::connect(f.secure).await.expect("connect");
    partial.write_all(&[0x16, 0x03, 0x01, 0x02, 0x00, 0x01]).await.expect("write");
    assert!(closed_within(&mut partial, Duration::from_secs(10)).await.is_some_and(|d| d < Duration::from_secs(3)));
    let r = get(f.secure, &f.proxy_client, Version::Http1, NODES, ADMIN).await.expect("get");
    assert_eq!(r.status, 200);
    f.stop().await;
}

#[tokio::test]
async fn a_shard_batch_over_the_grpc_message_limit_is_refused_counted_and_the_stream_resumes() {
    let options = FrontendOptions { grpc_max_message_bytes: 1 << 20, ..FrontendOptions::default() };
    let (shard, f) = cluster(options).await;
    assert_eq!(shard.subscribes(), 1);
    let oversized = SampleBatch {
        shard: Some(WireShard { shard_id: "shard-0".into(), epoch: 1 }),
        strings: vec![String::new(), "n".repeat(1 << 20)],
        ..SampleBatch::default()
    };
    shard.publish_raw(oversized).await;
    let mut text = String::new();
    for _ in 0..300 {
        text = String::from_utf8_lossy(&admin_get(f.admin, "/metrics").await.expect("metrics").body).into_owned();
        if text.contains(r#"shardmetrics_frontend_upstream_decode_errors_total{shard="shard-0"} 1"#) && shard.subscribes() >= 2 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(text.contains(r#"shardmetrics_frontend_upstream_decode_errors_total{shard="shard-0"} 1"#), "{text}");
    assert!(shard.subscribes() >= 2, "the frontend resubscribes after refusing the batch");
    let r = get(f.secure, &f.proxy_client, Version::Http2, NODES, ADMIN).await.expect("get");
    assert_eq!(r.status, 200);
    assert_eq!(r.json()["items"][0]["metadata"]["name"], "n1");
    f.stop().await;
}
