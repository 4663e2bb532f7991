//! The `SampleStream` server over real gRPC on 127.0.0.1:0, with the generated tonic client.

mod common;

use std::sync::Arc;
use std::time::Duration;

use shardmetrics_plumbing::pki::Ca;
use shardmetrics_proto::v1::SubscribeRequest;
use shardmetrics_proto::v1::sample_stream_client::SampleStreamClient;
use shardmetrics_proto::{NodeReleased, NodeScrape, ReleaseReason, ShardIdentity, decode_batch};
use shardmetrics_scraper::kubelet::fixture::{PayloadSpec, resource_metrics};
use shardmetrics_scraper::kubelet::parse_resource_metrics;
use shardmetrics_scraper::metrics::Metrics;
use shardmetrics_scraper::stream::{GrpcTls, Hub, serve};
use tokio::sync::oneshot;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Identity};

fn shard() -> ShardIdentity {
    ShardIdentity { shard_id: "shardmetrics-scraper-0".into(), epoch: 99 }
}

fn real_scrape(node: &str, t: i64) -> NodeScrape {
    let body = resource_metrics(&PayloadSpec { pods: 30, seed: t as u64, timestamp_ms: t });
    parse_resource_metrics(node, &body, t).unwrap().scrape
}

fn publish(hub: &Hub, s: &NodeScrape) {
    let f = hub.encode_scrape(s);
    hub.publish_scrape(&s.node, f);
}

async fn start(hub: Arc<Hub>, tls: Option<GrpcTls>) -> (String, oneshot::Sender<()>, tokio::task::JoinHandle<()>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let (tx, rx) = oneshot::channel::<()>();
    let task = tokio::spawn(async move {
        serve(listener, hub, tls, async {
            let _ = rx.await;
        })
        .await
        .unwrap();
    });
    (addr, tx, task)
}

async fn plain_client(addr: &str) -> SampleStreamClient<Channel> {
    let ch = Channel::from_shared(format!("http://{addr}")).unwrap().connect().await.unwrap();
    SampleStreamClient::new(ch).max_decoding_message_size(64 << 20)
}

#[tokio::test]
async fn a_frontend_gets_the_last_two_scrapes_per_node_then_live_scrapes_and_releases() {
    let hub = Hub::new(shard(), 64, Metrics::register(&prometheus::Registry::new()).unwrap());
    for t in [1_000, 2_000, 3_000] {
        publish(&hub, &real_scrape("node-a", t));
    }
    publish(&hub, &real_scrape("node-b", 1_500));
    let (addr, stop, server) = start(hub.clone(), None).await;

    let mut stream = plain_client(&addr).await.subscribe(SubscribeRequest { subscriber: "frontend-0".into() }).await.unwrap().into_inner();
    // The snapshot: one message per buffered scrape, then an empty `snapshot_complete` one.
    let mut snap = Vec::new();
    loop {
        let b = decode_batch(stream.message().await.unwrap().unwrap()).unwrap();
        assert_eq!(b.shard, shard());
        if b.snapshot_complete {
            assert!(b.scrapes.is_empty() && b.released.is_empty());
            break;
        }
        assert_eq!(b.scrapes.len(), 1);
        snap.extend(b.scrapes);
    }
    let got: Vec<(&str, i64)> = snap.iter().map(|s| (s.node.as_str(), s.scraped_at_ms)).collect();
    assert_eq!(got, vec![("node-a", 2_000), ("node-a", 3_000), ("node-b", 1_500)]);
    assert_eq!(snap[1], real_scrape("node-a", 3_000), "samples survive the wire unchanged");

    let live = real_scrape("node-b", 2_500);
    publish(&hub, &live);
    let b = decode_batch(stream.message().await.unwrap().unwrap()).unwrap();
    assert!(!b.snapshot_complete);
    assert_eq!(b.scrapes, vec![live]);

    hub.publish_released(vec![NodeReleased { node: "node-a".into(), reason: ReleaseReason::OwnershipMoved }]);
    let b = decode_batch(stream.message().await.unwrap().unwrap()).unwrap();
    assert_eq!(b.released, vec![NodeReleased { node: "node-a".into(), reason: ReleaseReason::OwnershipMoved }]);

    // Graceful shutdown: close the hub (streams end cleanly), then stop the server.
    hub.close();
    assert!(stream.message().await.unwrap().is_none(), "stream ends with OK status");
    let _ = stop.send(());
    tokio::time::timeout(Duration::from_secs(5), server).await.unwrap().unwrap();
}

#[tokio::test]
async fn a_slow_frontend_is_dropped_with_resource_exhausted_while_a_fast_one_gets_everything() {
    let metrics = Metrics::register(&prometheus::Registry::new()).unwrap();
    let hub = Hub::new(shard(), 8, metrics.clone());
    let (addr, _stop, _server) = start(hub.clone(), None).await;

    let mut slow = plain_client(&addr).await.subscribe(SubscribeRequest { subscriber: "slow".into() }).await.unwrap().into_inner();
    let mut fast = plain_client(&addr).await.subscribe(SubscribeRequest { subscriber: "fast".into() }).await.unwrap().into_inner();
    assert!(decode_batch(slow.message().await.unwrap().unwrap()).unwrap().snapshot_complete);
    assert!(decode_batch(fast.message().await.unwrap().unwrap()).unwrap().snapshot_complete);

    // ~2000 scrapes of a 30-pod node, several MB: far more than HTTP/2 windows and socket
    // buffers hold for a frontend that does not read. Publishing never waits.
    let scrape = real_scrape("node-a", 1);
    let frame = hub.encode_scrape(&scrape);
    let total = 2_000;
    let reader = tokio::spawn(async move {
        let mut n = 0;
        while n < total {
            let b = decode_batch(fast.message().await.unwrap().unwrap()).unwrap();
            n += b.scrapes.len();
        }
        (n, fast)
    });
    for _ in 0..total {
        hub.publish_scrape(&scrape.node, frame.clone());
        tokio::task::yield_now().await;
        if metrics.subscribers_dropped_total.get() == 0 {
            tokio::time::sleep(Duration::from_micros(200)).await;
        }
    }
    let (received, _fast) = tokio::time::timeout(Duration::from_secs(30), reader).await.unwrap().unwrap();
    assert_eq!(received, total, "the fast frontend got every scrape");
    assert_eq!(metrics.subscribers_dropped_total.get(), 1);

    // The slow one reads what was buffered, then the stream ends with RESOURCE_EXHAUSTED.
    let status = loop {
        match slow.message().await {
            Ok(Some(_)) => continue,
            Ok(None) => panic!("stream ended without an error"),
            Err(status) => break status,
        }
    };
    assert_eq!(status.code(), tonic::Code::ResourceExhausted, "{status}");
    assert_eq!(hub.subscriber_count(), 1, "the fast frontend is still subscribed");
}

#[tokio::test]
async fn with_mtls_only_frontends_holding_a_client_certificate_from_the_ca_can_subscribe() {
    let server_ca = Ca::new("grpc-ca").unwrap();
    let client_ca = Ca::new("frontend-ca").unwrap();
    let server = server_ca.server_cert("kubelet", &[]).unwrap();
    let hub = Hub::new(shard(), 8, Metrics::register(&prometheus::Registry::new()).unwrap());
    let tls = GrpcTls {
        cert_pem: server.cert_pem.clone().into_bytes(),
        key_pem: server.key_pem.clone().into_bytes(),
        client_ca_pem: Some(client_ca.cert_pem().to_owned().into_bytes()),
    };
    let (addr, _stop, _server) = start(hub, Some(tls)).await;
    let port = addr.rsplit(':').next().unwrap().to_owned();

    let base = ClientTlsConfig::new().ca_certificate(Certificate::from_pem(server_ca.cert_pem())).domain_name("localhost");
    let endpoint = |tls: ClientTlsConfig| Channel::from_shared(format!("https://localhost:{port}")).unwrap().tls_config(tls).unwrap();

    let anonymous = endpoint(base.clone()).connect().await;
    let refused = match anonymous {
        Err(_) => true,
        Ok(ch) => SampleStreamClient::new(ch).subscribe(SubscribeRequest::default()).await.is_err(),
    };
    assert!(refused, "a client without certificate must be refused");

    let leaf = client_ca.client_cert("frontend-0", &[]).unwrap();
    let ch = endpoint(base.identity(Identity::from_pem(&leaf.cert_pem, &leaf.key_pem))).connect().await.unwrap();
    let mut stream = SampleStreamClient::new(ch).subscribe(SubscribeRequest { subscriber: "fe".into() }).await.unwrap().into_inner();
    assert!(decode_batch(stream.message().await.unwrap().unwrap()).unwrap().snapshot_complete);
}
