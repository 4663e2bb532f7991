//! A whole shard through `run_with`, fed by hand-made node and member channels instead of an
//! API server: real TLS kubelets on 127.0.0.1:0, the real kubelet client, gRPC and admin
//! servers on port 0.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use bytes::Bytes;
use common::{KubeletOptions, Reply, TestKubelet};
use shardmetrics_plumbing::pki::Ca;
use shardmetrics_plumbing::lease::{Member, Members};
use shardmetrics_proto::v1::SubscribeRequest;
use shardmetrics_proto::v1::sample_stream_client::SampleStreamClient;
use shardmetrics_proto::{ReleaseReason, decode_batch};
use shardmetrics_scraper::config::Config;
use shardmetrics_scraper::kubelet::fixture::{PayloadSpec, resource_metrics};
use shardmetrics_scraper::kubelet::{KubeletAuth, KubeletClient, KubeletClientConfig, KubeletTls};
use shardmetrics_scraper::nodes::{NodeTarget, NodeView, TargetRules};
use shardmetrics_scraper::ring::Ring;
use shardmetrics_scraper::schedule::ScheduleConfig;
use shardmetrics_scraper::{Inputs, LeaseStart, Listeners, RunError, run_with};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::{oneshot, watch};

const ME: &str = "scraper-0";
const PEER: &str = "scraper-1";
const PODS: usize = 3;

fn config(grpc: &str) -> Config {
    Config {
        shard_id: ME.into(),
        lease_namespace: "kube-system".into(),
        lease_duration: Duration::from_secs(15),
        lease_renew_period: Duration::from_secs(5),
        grpc_advertise_address: grpc.into(),
        grpc_tls: None,
        node_selector: None,
        targets: TargetRules::default(),
        schedule: ScheduleConfig { resolution: Duration::from_secs(5), max_concurrent: 8, group_window: shardmetrics_scraper::schedule::DEFAULT_GROUP_WINDOW },
        subscriber_queue_batches: 64,
        grpc_max_message_bytes: 64 << 20,
        stream_linger: Duration::ZERO,
    }
}

fn member(id: &str) -> (String, Member) {
    (id.to_owned(), Member { shard_id: id.into(), grpc_address: "127.0.0.1:1".into(), epoch: 1, renew_time_ms: 0, lease_duration_ms: 15_000 })
}

/// A tiny HTTP/1.0 GET: status code and body.
async fn http_get(addr: &str, path: &str) -> (u16, String) {
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    s.write_all(format!("GET {path} HTTP/1.0\r\nHost: x\r\n\r\n").as_bytes()).await.unwrap();
    let mut buf = String::new();
    s.read_to_string(&mut buf).await.unwrap();
    let status = buf.split_whitespace().nth(1).unwrap().parse().unwrap();
    (status, buf.split_once("\r\n\r\n").map(|(_, b)| b.to_owned()).unwrap_or_default())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_shard_fed_by_hand_made_channels_scrapes_only_its_nodes_and_streams_them_over_grpc() {
    // Six nodes, each its own kubelet; two live shards split them on the ring.
    let ca = Ca::new("kubelet-ca").unwrap();
    let body = Bytes::from(resource_metrics(&PayloadSpec { pods: PODS, seed: 7, timestamp_ms: 1_700_000_000_000 }));
    let mut kubelets = BTreeMap::new();
    for i in 0..6 {
        let k = TestKubelet::start(&ca.server_cert("kubelet", &[]).unwrap(), KubeletOptions { token: None, client_ca: None, reply: Reply::Body(body.clone()) }).await;
        kubelets.insert(format!("node-{i}"), k);
    }
    let ring = Ring::new([ME, PEER]);
    let mine: BTreeSet<String> = kubelets.keys().filter(|n| ring.is_owner(ME, n)).cloned().collect();
    assert!(!mine.is_empty() && mine.len() < kubelets.len(), "both shards own some of the nodes: {mine:?}");

    let targets: BTreeMap<String, NodeTarget> = kubelets.iter().map(|(n, k)| (n.clone(), k.target(n))).collect();
    let (_nodes_tx, nodes_rx) = watch::channel(NodeView { nodes: Arc::new(targets), synced: true });
    let (_members_tx, members_rx) = watch::channel(Members::from([member(ME), member(PEER)]));
    // The membership future: waits for the synced node view, holds until told to stop.
    let (epoch_tx, epoch_rx) = oneshot::channel::<u64>();
    let lease_given_up = Arc::new(AtomicBool::new(false));
    let given_up = lease_given_up.clone();
    let lease = Box::new(move |start: LeaseStart| -> futures::future::BoxFuture<'static, ()> {
        Box::pin(async move {
            start.ready.await;
            let _ = epoch_tx.send(start.epoch);
            start.stop.await;
            given_up.store(true, Ordering::SeqCst);
        })
    });
    // A feeder task the shard must abort when it stops (its sender is dropped then).
    let (feeder_alive, feeder_gone) = oneshot::channel::<()>();
    let feeder = tokio::spawn(async move {
        let _alive = feeder_alive;
        std::future::pending::<()>().await;
    });

    let grpc = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let admin = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let grpc_addr = grpc.local_addr().unwrap().to_string();
    let admin_addr = admin.local_addr().unwrap().to_string();
    let client = KubeletClient::new(KubeletClientConfig {
        tls: KubeletTls::Verify(vec![ca.cert_der().clone()]),
        auth: KubeletAuth::None,
        timeout: Duration::from_secs(2),
        max_response_bytes: 1 << 20,
        pool_idle_timeout: Duration::from_secs(90),
    })
    .unwrap();
    let (stop, stopped) = oneshot::channel::<()>();
    let inputs = Inputs { nodes: nodes_rx, members: members_rx, lease, feeders: vec![feeder] };
    let shard = tokio::spawn(run_with(
        config(&grpc_addr),
        inputs,
        client,
        Listeners { grpc, admin },
        shardmetrics_plumbing::clock::system(),
        async {
            let _ = stopped.await;
        },
    ));

    let epoch = tokio::time::timeout(Duration::from_secs(5), epoch_rx).await.expect("membership started once the view was synced").unwrap();

    // Subscribe and read (snapshot, then live) until every owned node has been streamed.
    let channel = tonic::transport::Channel::from_shared(format!("http://{grpc_addr}")).unwrap().connect().await.unwrap();
    let mut stream = SampleStreamClient::new(channel).subscribe(SubscribeRequest { subscriber: "test".into() }).await.unwrap().into_inner();
    let mut streamed = BTreeSet::new();
    while streamed != mine {
        let batch = tokio::time::timeout(Duration::from_secs(10), stream.message()).await.expect("owned nodes streamed in time").unwrap().unwrap();
        let batch = decode_batch(batch).unwrap();
        assert_eq!((batch.shard.shard_id.as_str(), batch.shard.epoch), (ME, epoch));
        for s in batch.scrapes {
            assert!(mine.contains(&s.node), "{} is not this shard's", s.node);
            assert_eq!(s.pods.len(), PODS, "{}: its pods, parsed from the kubelet", s.node);
            streamed.insert(s.node);
        }
    }
    for (node, k) in &kubelets {
        let requests = k.requests.load(Ordering::SeqCst);
        if mine.contains(node) {
            assert!(requests >= 1, "{node}: owned, scraped");
        } else {
            assert_eq!(requests, 0, "{node}: the peer's, never scraped here");
        }
    }
    let (status, body) = http_get(&admin_addr, "/readyz").await;
    assert_eq!(status, 200, "{body}");

    // Graceful stop: the membership is given up, every owned node released, the stream ends.
    let _ = stop.send(());
    tokio::time::timeout(Duration::from_secs(10), shard).await.expect("shard stops in time").unwrap().unwrap();
    assert!(lease_given_up.load(Ordering::SeqCst), "membership given up on shutdown");
    let mut released = BTreeSet::new();
    while let Some(msg) = stream.message().await.unwrap() {
        for r in decode_batch(msg).unwrap().released {
            assert_eq!(r.reason, ReleaseReason::Shutdown);
            released.insert(r.node);
        }
    }
    assert_eq!(released, mine);
    assert!(tokio::time::timeout(Duration::from_secs(5), feeder_gone).await.unwrap().is_err(), "feeder task aborted");
}

#[tokio::test]
async fn a_shard_whose_node_input_closes_stops_with_an_error_instead_of_idling() {
    let ca = Ca::new("kubelet-ca").unwrap();
    let body = Bytes::from(resource_metrics(&PayloadSpec { pods: PODS, seed: 7, timestamp_ms: 1_700_000_000_000 }));
    let k = TestKubelet::start(&ca.server_cert("kubelet", &[]).unwrap(), KubeletOptions { token: None, client_ca: None, reply: Reply::Body(body) }).await;
    let (nodes_tx, nodes_rx) = watch::channel(NodeView { nodes: Arc::new(BTreeMap::from([("node-0".to_owned(), k.target("node-0"))])), synced: true });
    let (_members_tx, members_rx) = watch::channel(Members::from([member(ME)]));
    let lease = Box::new(|start: LeaseStart| -> futures::future::BoxFuture<'static, ()> { start.stop });
    let grpc = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let admin = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let grpc_addr = grpc.local_addr().unwrap().to_string();
    let client = KubeletClient::new(KubeletClientConfig {
        tls: KubeletTls::Verify(vec![ca.cert_der().clone()]),
        auth: KubeletAuth::None,
        timeout: Duration::from_secs(2),
        max_response_bytes: 1 << 20,
        pool_idle_timeout: Duration::from_secs(90),
    })
    .unwrap();
    let inputs = Inputs { nodes: nodes_rx, members: members_rx, lease, feeders: vec![] };
    let shard = tokio::spawn(run_with(config(&grpc_addr), inputs, client, Listeners { grpc, admin }, shardmetrics_plumbing::clock::system(), std::future::pending()));
    for _ in 0..100 {
        if k.requests.load(Ordering::SeqCst) > 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(k.requests.load(Ordering::SeqCst) > 0, "scraping before the input closes");
    drop(nodes_tx);
    let result = tokio::time::timeout(Duration::from_secs(10), shard).await.expect("the shard notices its scheduler ended").unwrap();
    assert!(matches!(result, Err(RunError::TaskEnded("scheduler"))), "{result:?}");
}
