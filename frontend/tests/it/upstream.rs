//! Upstream against real tonic `SampleStream` servers on loopback: snapshot then live data land
//! in the store, reconnects after a dropped stream, hand-off between two shards, releases, and
//! shards joining and leaving the member set.

use std::sync::Arc;
use std::time::Duration;

use shardmetrics_frontend::metrics::Metrics;
use shardmetrics_frontend::store::{Store, StoreConfig};
use shardmetrics_frontend::upstream::{self, UpstreamConfig, UpstreamState};
use shardmetrics_plumbing::clock::ManualClock;
use shardmetrics_proto::{NodeReleased, ReleaseReason};
use crate::support::{FakeShard, T0, new_ca, scrape, snapshot};
use tokio::sync::watch;

const PODS: &[crate::support::PodSpec<'static>] = &[("default", "web-1", &["app"]), ("kube-system", "dns", &["coredns", "sidecar"])];

struct Harness {
    store: Arc<Store>,
    state: Arc<UpstreamState>,
    members: watch::Sender<shardmetrics_plumbing::lease::Members>,
    shutdown: watch::Sender<bool>,
    task: tokio::task::JoinHandle<()>,
    registry: prometheus::Registry,
}

fn start(shards: &[&FakeShard]) -> Harness {
    start_with(shards, None)
}

fn start_with(shards: &[&FakeShard], tls: Option<upstream::GrpcClientTls>) -> Harness {
    let clock = ManualClock::new(T0 + 40_000);
    let store = Arc::new(Store::new(StoreConfig { resolution_ms: 15_000, max_staleness_ms: 45_000 }, clock));
    let registry = prometheus::Registry::new();
    let metrics = Metrics::register(&registry).expect("metrics");
    let state = Arc::new(UpstreamState::default());
    let (members, rx) = upstream::static_members(shards.iter().map(|s| s.member()).collect());
    let (shutdown, shutdown_rx) = watch::channel(false);
    let config = UpstreamConfig {
        replica_name: "frontend-test".into(),
        backoff_initial: Duration::from_millis(20),
        backoff_max: Duration::from_millis(100),
        tls,
        ..UpstreamConfig::default()
    };
    let task = tokio::spawn(upstream::run(config, rx, store.clone(), metrics, state.clone(), shutdown_rx));
    Harness { store, state, members, shutdown, task, registry }
}

async fn eventually(what: &str, mut check: impl FnMut() -> bool) {
    for _ in 0..500 {
        if check() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("timed out waiting for: {what}");
}

#[tokio::test]
async fn a_snapshot_makes_rates_servable_at_once_and_live_scrapes_update_them() {
    let id = shardmetrics_proto::ShardIdentity { shard_id: "shard-0".into(), epoch: 1 };
    let shard = FakeShard::start("shard-0", snapshot(&id, &[scrape("n1", 0, 2.0, 0.5, PODS), scrape("n1", 15_000, 2.0, 0.5, PODS)])).await;
    let h = start(&[&shard]);
    eventually("ready after the snapshot", || h.state.is_ready()).await;
    let node = h.store.node("n1").expect("node rate from the snapshot alone");
    assert_eq!(node.usage.cpu_nanocores, 2_000_000_000);
    assert_eq!(node.usage.window_ms, 15_000);
    let dns = h.store.pod("kube-system", "dns").expect("pod");
    assert_eq!(dns.containers.iter().map(|c| c.cpu_nanocores).collect::<Vec<_>>(), [500_000_000, 500_000_000]);
    assert_eq!(shard.state.subscriber_names.lock().expect("lock").as_slice(), ["frontend-test"]);

    shard.publish(&[scrape("n1", 30_000, 4.0, 0.5, PODS)], &[]).await;
    eventually("live scrape applied", || h.store.node("n1").is_some_and(|n| n.usage.timestamp_ms == T0 + 30_000)).await;
    // Node used 2 cores/s for 15 s then the cumulative jumps as if 4 cores since T0: (4*30-2*15)/15 = 6 cores.
    assert_eq!(h.store.node("n1").map(|n| n.usage.cpu_nanocores), Some(6_000_000_000));
    let text = String::from_utf8(shardmetrics_frontend::metrics::render(&h.registry)).expect("utf8");
    assert!(text.contains(r#"shardmetrics_frontend_upstream_subscription_state{shard="shard-0",state="live"} 1"#), "{text}");
    assert!(text.contains(r#"shardmetrics_frontend_upstream_scrapes_total{shard="shard-0"} 3"#));
    h.shutdown.send(true).expect("shutdown");
    tokio::time::timeout(Duration::from_secs(5), h.task).await.expect("upstream stops").expect("no panic");
}

#[tokio::test]
async fn a_dropped_stream_is_resubscribed_and_data_survives_meanwhile() {
    let id = shardmetrics_proto::ShardIdentity { shard_id: "shard-0".into(), epoch: 1 };
    let shard = FakeShard::start("shard-0", snapshot(&id, &[scrape("n1", 0, 1.0, 1.0, PODS), scrape("n1", 15_000, 1.0, 1.0, PODS)])).await;
    let h = start(&[&shard]);
    eventually("first subscription live", || h.state.is_ready()).await;
    shard.disconnect_all();
    eventually("resubscribed", || shard.subscribes() >= 2).await;
    assert!(h.store.node("n1").is_some(), "data kept across the reconnect");
    assert!(h.state.is_ready(), "a reconnect does not make the replica unready");
    // An undecodable batch also restarts the subscription.
    let mut bad = shardmetrics_proto::encode_batch(&id, &[&scrape("n1", 30_000, 1.0, 1.0, PODS)], &[], false);
    bad.scrapes[0].pods[0].namespace = 999;
    eventually("subscribed again", || !shard.state.subscribers.lock().expect("lock").is_empty()).await;
    shard.publish_raw(bad).await;
    eventually("resubscribed after a bad batch", || shard.subscribes() >= 3).await;
    let text = String::from_utf8(shardmetrics_frontend::metrics::render(&h.registry)).expect("utf8");
    assert!(text.contains(r#"shardmetrics_frontend_upstream_decode_errors_total{shard="shard-0"} 1"#), "{text}");
    h.shutdown.send(true).expect("shutdown");
}

#[tokio::test]
async fn during_a_hand_off_rates_continue_across_shards_and_the_older_scrape_loses() {
    let a_id = shardmetrics_proto::ShardIdentity { shard_id: "shard-a".into(), epoch: 1 };
    let a = FakeShard::start("shard-a", snapshot(&a_id, &[scrape("n1", 0, 1.0, 1.0, PODS)])).await;
    let b = FakeShard::start("shard-b", snapshot(&shardmetrics_proto::ShardIdentity { shard_id: "shard-b".into(), epoch: 1 }, &[])).await;
    let h = start(&[&a, &b]);
    eventually("both synced", || h.state.is_ready()).await;
    assert!(h.store.node("n1").is_none(), "one point: no rate yet");
    // The new owner sends the next scrape: the rate uses shard-a's point and shard-b's point.
    b.publish(&[scrape("n1", 15_000, 3.0, 1.0, PODS)], &[]).await;
    eventually("rate across shards", || h.store.node("n1").is_some()).await;
    assert_eq!(h.store.node("n1").map(|n| n.usage.cpu_nanocores), Some(3_000_000_000), "3 cores since T0, measured from shard-a's point to shard-b's");
    // The old owner's late, older scrape is ignored; its release keeps the data.
    a.publish(&[scrape("n1", 14_000, 1.0, 1.0, PODS)], &[NodeReleased { node: "n1".into(), reason: ReleaseReason::OwnershipMoved }])
        .await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(h.store.node("n1").map(|n| n.usage.timestamp_ms), Some(T0 + 15_000));
    // A deleted node goes at once.
    b.publish(&[], &[NodeReleased { node: "n1".into(), reason: ReleaseReason::NodeDeleted }]).await;
    eventually("deleted node gone", || h.store.node("n1").is_none()).await;
    h.shutdown.send(true).expect("shutdown");
}

#[tokio::test]
async fn shards_joining_and_leaving_the_member_set_open_and_close_subscriptions() {
    let a = FakeShard::start("shard-a", snapshot(&shardmetrics_proto::ShardIdentity { shard_id: "shard-a".into(), epoch: 1 }, &[])).await;
    let h = start(&[&a]);
    eventually("a synced", || h.state.is_ready()).await;
    let b = FakeShard::start("shard-b", Vec::new()).await; // never completes a snapshot
    h.members.send_modify(|m| {
        m.insert("shard-b".into(), b.member());
    });
    eventually("b subscribed", || b.subscribes() == 1).await;
    assert!(!h.state.is_ready(), "not ready until the new shard's snapshot completes");
    assert!(h.state.describe().contains("shard-b"));
    h.members.send_modify(|m| {
        m.remove("shard-b");
    });
    eventually("ready again once b left", || h.state.is_ready()).await;
    eventually("b's stream closed", || {
        b.state.subscribers.lock().expect("lock").iter().all(|s| s.is_closed())
    })
    .await;
    h.shutdown.send(true).expect("shutdown");
}

#[tokio::test]
async fn shards_are_reached_over_mutual_tls_when_a_ca_and_client_certificate_are_configured() {
    let serving_ca = new_ca("shard-ca");
    let serving = serving_ca.server_cert("shard-0", &[]).expect("serving certificate");
    let client_ca = new_ca("frontend-client-ca");
    let client = client_ca.client_cert("shardmetrics-frontend", &[]).expect("client certificate");
    let id = shardmetrics_proto::ShardIdentity { shard_id: "shard-0".into(), epoch: 1 };
    let snap = snapshot(&id, &[scrape("n1", 0, 1.0, 1.0, PODS), scrape("n1", 15_000, 1.0, 1.0, PODS)]);
    let shard = FakeShard::start_with_tls("shard-0", snap, Some((serving.cert_pem.clone(), serving.key_pem.clone(), Some(client_ca.cert_pem().to_owned())))).await;

    // Without a client certificate the shard refuses the handshake: never ready.
    let plain = start_with(&[&shard], Some(upstream::GrpcClientTls { ca_pem: serving_ca.cert_pem().as_bytes().to_vec(), identity: None }));
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(!plain.state.is_ready());
    assert!(plain.store.node("n1").is_none());
    plain.shutdown.send(true).expect("shutdown");

    let mtls = start_with(
        &[&shard],
        Some(upstream::GrpcClientTls {
            ca_pem: serving_ca.cert_pem().as_bytes().to_vec(),
            identity: Some((client.cert_pem.clone().into_bytes(), client.key_pem.clone().into_bytes())),
        }),
    );
    eventually("ready over mTLS", || mtls.state.is_ready()).await;
    assert_eq!(mtls.store.node("n1").map(|n| n.usage.cpu_nanocores), Some(1_000_000_000));
    mtls.shutdown.send(true).expect("shutdown");
}
