//! Scraper shards on one simulated cluster: the real API-server simulator (HTTPS, tokens,
//! Nodes and Leases with watch and optimistic concurrency) and simulated kubelets (HTTPS,
//! token auth), with shards set up through the real CLI path (`validate` + `prepare` + `run`).
//!
//! Checks: every node scraped by exactly one shard; a gracefully stopped shard deletes its
//! Lease and its nodes move at once; a crashed shard's nodes move when its Lease expires; a
//! node added or removed is picked up or released.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use clap::Parser;
use k8s_openapi::api::coordination::v1::Lease;
use shardmetrics_sim::apiserver::{ApiServer, ApiServerConfig, RunningApiServer};
use shardmetrics_sim::cluster::{Cluster, ClusterConfig, SCRAPER_USER, standard_policy};
use shardmetrics_proto::v1::SubscribeRequest;
use shardmetrics_proto::v1::sample_stream_client::SampleStreamClient;
use shardmetrics_proto::{ReleaseReason, decode_batch};
use shardmetrics_scraper::cli::{Args, Environment, prepare, validate};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tokio::time::Instant;

/// Scrape interval used in these tests (the CLI minimum is 5s; `run` takes any).
const RESOLUTION: Duration = Duration::from_secs(2);
const NODES: usize = 24;

struct Shard {
    id: String,
    grpc: String,
    admin: String,
    stop: Option<oneshot::Sender<()>>,
    task: JoinHandle<Result<(), shardmetrics_scraper::RunError>>,
}

impl Shard {
    async fn metric(&self, name: &str) -> Option<f64> {
        let text = http_get(&self.admin, "/metrics").await?.1;
        shardmetrics_plumbing::metrics_text::parse_exposition(&text).get(name).copied()
    }

    async fn stop_gracefully(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        tokio::time::timeout(Duration::from_secs(15), self.task).await.expect("shard stops in time").unwrap().unwrap();
    }
}

/// A tiny HTTP/1.0 GET: status code and body.
async fn http_get(addr: &str, path: &str) -> Option<(u16, String)> {
    let mut s = tokio::net::TcpStream::connect(addr).await.ok()?;
    s.write_all(format!("GET {path} HTTP/1.0\r\nHost: x\r\n\r\n").as_bytes()).await.ok()?;
    let mut buf = String::new();
    s.read_to_string(&mut buf).await.ok()?;
    let status = buf.split_whitespace().nth(1)?.parse().ok()?;
    let body = buf.split_once("\r\n\r\n").map(|(_, b)| b.to_owned()).unwrap_or_default();
    Some((status, body))
}

struct Sim {
    api: RunningApiServer,
    cluster: Cluster,
    kubeconfig: tempfile::NamedTempFile,
}

async fn sim(nodes: usize) -> Sim {
    let api = ApiServer::start(ApiServerConfig { policy: standard_policy(), ..ApiServerConfig::default() }).await.unwrap();
    let cluster = Cluster::start(&api, ClusterConfig { nodes, pods_per_node: 3, ..ClusterConfig::default() }).await.unwrap();
    let kubeconfig = tempfile::NamedTempFile::new().unwrap();
    api.write_kubeconfig(kubeconfig.path(), &[api.token_context("sim-scraper", SCRAPER_USER).unwrap()]).unwrap();
    Sim { api, cluster, kubeconfig }
}

async fn start_shard(sim: &Sim, id: &str, lease_duration: &str) -> Shard {
    let args = Args::try_parse_from([
        "shardmetrics-scraper",
        "--shard-id",
        id,
        "--kubeconfig",
        sim.kubeconfig.path().to_str().unwrap(),
        "--lease-namespace=kube-system",
        "--lease-duration",
        lease_duration,
        "--lease-renew-period=1s",
        "--grpc-bind-address=127.0.0.1:0",
        "--admin-bind-address=127.0.0.1:0",
        "--metric-resolution=5s",
        "--kubelet-request-timeout=1s",
    ])
    .unwrap();
    let env = Environment::default();
    let validated = validate(&args, &env).unwrap();
    let (mut config, handles, listeners) = prepare(validated, &env).await.unwrap();
    config.schedule.resolution = RESOLUTION;
    let grpc = config.grpc_advertise_address.clone();
    let admin = listeners.admin.local_addr().unwrap().to_string();
    let (stop, stopped) = oneshot::channel::<()>();
    let task = tokio::spawn(shardmetrics_scraper::run(config, handles, listeners, async {
        let _ = stopped.await;
    }));
    Shard { id: id.to_owned(), grpc, admin, stop: Some(stop), task }
}

/// Waits until `check` holds, polling; panics with `what` after `limit`.
async fn eventually<F, Fut>(limit: Duration, what: &str, mut check: F) -> Duration
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let start = Instant::now();
    while start.elapsed() < limit {
        if check().await {
            return start.elapsed();
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("timed out after {limit:?} waiting for: {what}");
}

async fn owned_total(shards: &[&Shard]) -> Option<(f64, Vec<f64>)> {
    let mut each = Vec::new();
    for s in shards {
        each.push(s.metric("shardmetrics_scraper_owned_nodes").await?);
    }
    Some((each.iter().sum(), each))
}

async fn settled(shards: &[&Shard], nodes: usize) -> bool {
    for s in shards {
        if s.metric("shardmetrics_scraper_members").await != Some(shards.len() as f64) {
            return false;
        }
        if http_get(&s.admin, "/readyz").await.map(|r| r.0) != Some(200) {
            return false;
        }
    }
    owned_total(shards).await.is_some_and(|(t, each)| t == nodes as f64 && each.iter().all(|&n| n > 0.0))
}

/// Subscribes to a shard and returns the nodes its snapshot and its live batches name over
/// `window`, plus the releases it announced.
async fn nodes_streamed(shard_id: &str, grpc: &str, window: Duration) -> (BTreeSet<String>, Vec<(String, ReleaseReason)>) {
    let ch = tonic::transport::Channel::from_shared(format!("http://{grpc}")).unwrap().connect().await.unwrap();
    let mut stream = SampleStreamClient::new(ch)
        .max_decoding_message_size(64 << 20)
        .subscribe(SubscribeRequest { subscriber: "scraper-cluster-test".into() })
        .await
        .unwrap()
        .into_inner();
    let mut nodes = BTreeSet::new();
    let mut released = Vec::new();
    let deadline = Instant::now() + window;
    while let Ok(Ok(Some(msg))) = tokio::time::timeout_at(deadline, stream.message()).await {
        let batch = decode_batch(msg).unwrap();
        assert_eq!(batch.shard.shard_id, shard_id);
        for s in batch.scrapes {
            assert!(!s.pods.is_empty(), "node {} scraped with its pods", s.node);
            nodes.insert(s.node);
        }
        released.extend(batch.released.into_iter().map(|r| (r.node, r.reason)));
    }
    (nodes, released)
}

fn scrape_counts(cluster: &Cluster) -> BTreeMap<String, u64> {
    cluster.fleet().all().iter().map(|k| (k.node().to_owned(), k.scrapes())).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_shards_split_the_cluster_and_every_node_is_scraped_by_exactly_one() {
    let sim = sim(NODES).await;
    let shards = [start_shard(&sim, "scraper-0", "30s").await, start_shard(&sim, "scraper-1", "30s").await, start_shard(&sim, "scraper-2", "30s").await];
    let refs: Vec<&Shard> = shards.iter().collect();
    eventually(Duration::from_secs(20), "3 members, all ready, all nodes owned", || settled(&refs, NODES)).await;

    // Each shard streams exactly its share: disjoint, and together every node.
    let before = scrape_counts(&sim.cluster);
    let window = RESOLUTION * 3;
    let (a, b, c) = tokio::join!(
        nodes_streamed(&shards[0].id, &shards[0].grpc, window),
        nodes_streamed(&shards[1].id, &shards[1].grpc, window),
        nodes_streamed(&shards[2].id, &shards[2].grpc, window)
    );
    let after = scrape_counts(&sim.cluster);
    let sets = [a.0, b.0, c.0];
    let union: BTreeSet<&String> = sets.iter().flatten().collect();
    assert_eq!(union.len(), NODES, "every node streamed by some shard");
    assert_eq!(sets.iter().map(BTreeSet::len).sum::<usize>(), NODES, "no node streamed by two shards: {sets:?}");
    for (set, shard) in sets.iter().zip(&shards) {
        assert_eq!(set.len() as f64, shard.metric("shardmetrics_scraper_owned_nodes").await.unwrap());
    }

    // Kubelets see one scrape per resolution, not one per shard.
    for (node, n) in &after {
        let delta = n - before[node];
        assert!((2..=4).contains(&delta), "{node}: {delta} scrapes in {window:?} at resolution {RESOLUTION:?}");
    }
    let successes: f64 = {
        let mut t = 0.0;
        for s in &shards {
            t += s.metric("shardmetrics_scraper_scrapes_total{result=\"success\"}").await.unwrap();
        }
        t
    };
    assert!(successes >= (NODES * 2) as f64);

    for s in shards {
        s.stop_gracefully().await;
    }
    let leases: kube::Api<Lease> = kube::Api::namespaced(kube::Client::try_from(sim.api.kubeconfig_for(SCRAPER_USER).await.unwrap()).unwrap(), "kube-system");
    assert!(leases.list(&Default::default()).await.unwrap().items.is_empty(), "every shard deleted its Lease");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gracefully_stopped_shard_deletes_its_lease_and_its_nodes_move_at_once() {
    let sim = sim(NODES).await;
    let s0 = start_shard(&sim, "scraper-0", "30s").await;
    let s1 = start_shard(&sim, "scraper-1", "30s").await;
    let s2 = start_shard(&sim, "scraper-2", "30s").await;
    let three = [&s0, &s1, &s2];
    eventually(Duration::from_secs(20), "3 shards settled", || settled(&three, NODES)).await;

    // A frontend watching the leaving shard sees its nodes released.
    let watcher = {
        let (grpc, id) = (s2.grpc.clone(), s2.id.clone());
        tokio::spawn(async move { nodes_streamed(&id, &grpc, Duration::from_secs(10)).await })
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    let leaving_owned = s2.metric("shardmetrics_scraper_owned_nodes").await.unwrap() as usize;
    let stopped_at = Instant::now();
    s2.stop_gracefully().await;

    let leases: kube::Api<Lease> = kube::Api::namespaced(kube::Client::try_from(sim.api.kubeconfig_for(SCRAPER_USER).await.unwrap()).unwrap(), "kube-system");
    assert!(leases.get_opt("scraper-2").await.unwrap().is_none(), "the Lease is gone");

    // Well before the 30 s lease would expire, the two others own everything.
    let two = [&s0, &s1];
    let took = eventually(Duration::from_secs(10), "2 shards own every node", || settled(&two, NODES)).await;
    println!("graceful hand-off: shutdown took {:?}, remaining shards owned every node {took:?} after it", stopped_at.elapsed() - took);
    assert!(stopped_at.elapsed() < Duration::from_secs(15), "took {took:?}: moved on delete, not on expiry");

    let (_, released) = watcher.await.unwrap();
    assert_eq!(released.len(), leaving_owned, "every node of the leaving shard was released: {released:?}");

    // …and every node is scraped again, by the remaining shards.
    let before = scrape_counts(&sim.cluster);
    tokio::time::sleep(RESOLUTION * 2 + Duration::from_millis(500)).await;
    let after = scrape_counts(&sim.cluster);
    for (node, n) in &after {
        assert!(n - before[node] >= 1, "{node} not scraped after the hand-off");
    }
    s0.stop_gracefully().await;
    s1.stop_gracefully().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crashed_shards_nodes_move_when_its_lease_expires_and_new_nodes_are_picked_up() {
    let sim = sim(12).await;
    let s0 = start_shard(&sim, "scraper-0", "3s").await;
    let s1 = start_shard(&sim, "scraper-1", "3s").await;
    let two = [&s0, &s1];
    eventually(Duration::from_secs(20), "2 shards settled", || settled(&two, 12)).await;

    // Crash: the run future is dropped; nothing is deleted, renewals stop.
    s1.task.abort();
    let leases: kube::Api<Lease> = kube::Api::namespaced(kube::Client::try_from(sim.api.kubeconfig_for(SCRAPER_USER).await.unwrap()).unwrap(), "kube-system");
    assert!(leases.get_opt("scraper-1").await.unwrap().is_some(), "a crashed shard leaves its Lease behind");
    let one = [&s0];
    let took = eventually(Duration::from_secs(15), "the survivor owns every node", || settled(&one, 12)).await;
    println!("crash hand-off with a 3s lease: {took:?}");
    assert!(took >= Duration::from_secs(1), "nodes moved only once the Lease expired (took {took:?})");

    // A node added to the cluster is scraped promptly; a removed one is released.
    let kubelet = sim.cluster.add_node("sim-node-new").await.unwrap();
    eventually(Duration::from_secs(10), "the new node is scraped", || {
        let k = kubelet.clone();
        async move { k.scrapes() > 0 }
    })
    .await;
    eventually(Duration::from_secs(10), "13 nodes owned", || async { s0.metric("shardmetrics_scraper_owned_nodes").await == Some(13.0) }).await;
    sim.cluster.remove_node("sim-node-new").await.unwrap();
    eventually(Duration::from_secs(10), "12 nodes owned", || async { s0.metric("shardmetrics_scraper_owned_nodes").await == Some(12.0) }).await;
    s0.stop_gracefully().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_node_watch_survives_dropped_watches_and_resource_version_too_old_by_relisting() {
    let sim = sim(4).await;
    let s0 = start_shard(&sim, "scraper-0", "30s").await;
    let one = [&s0];
    eventually(Duration::from_secs(20), "settled", || settled(&one, 4)).await;

    // Every watch is cut and the history compacted: resuming gets 410 Gone, so the shard must
    // re-list to see the node added meanwhile.
    sim.api.compact_history();
    sim.api.drop_all_watches();
    let kubelet = sim.cluster.add_node("sim-node-after-410").await.unwrap();
    eventually(Duration::from_secs(20), "5 nodes owned after the re-list", || async { s0.metric("shardmetrics_scraper_owned_nodes").await == Some(5.0) }).await;
    eventually(Duration::from_secs(10), "the new node is scraped", || {
        let k = kubelet.clone();
        async move { k.scrapes() > 0 }
    })
    .await;
    assert_eq!(s0.metric("shardmetrics_scraper_members").await, Some(1.0), "the Lease watch re-listed too");
    s0.stop_gracefully().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lease_changed_behind_the_shards_back_is_re_read_and_renewed() {
    let sim = sim(2).await;
    let s0 = start_shard(&sim, "scraper-0", "30s").await;
    let one = [&s0];
    eventually(Duration::from_secs(20), "settled", || settled(&one, 2)).await;

    // Someone else writes the Lease: the shard's next replace carries a stale resourceVersion.
    let admin = kube::Client::try_from(sim.api.kubeconfig_for(shardmetrics_sim::apiserver::DEFAULT_ADMIN).await.unwrap()).unwrap();
    let leases: kube::Api<Lease> = kube::Api::namespaced(admin, "kube-system");
    let mut lease = leases.get("scraper-0").await.unwrap();
    lease.metadata.labels.get_or_insert_with(Default::default).insert("touched".into(), "yes".into());
    leases.replace("scraper-0", &Default::default(), &lease).await.unwrap();

    eventually(Duration::from_secs(10), "a conflict is counted", || async {
        s0.metric("shardmetrics_scraper_lease_renewals_total{result=\"conflict\"}").await.unwrap_or(0.0) >= 1.0
    })
    .await;
    let renewed_before = s0.metric("shardmetrics_scraper_lease_renewals_total{result=\"success\"}").await.unwrap();
    eventually(Duration::from_secs(10), "renewals succeed again", || async {
        s0.metric("shardmetrics_scraper_lease_renewals_total{result=\"success\"}").await.unwrap() > renewed_before
    })
    .await;
    let lease = leases.get("scraper-0").await.unwrap();
    assert_eq!(lease.spec.unwrap().holder_identity.as_deref(), Some("scraper-0"));
    assert_eq!(http_get(&s0.admin, "/readyz").await.map(|r| r.0), Some(200));
    s0.stop_gracefully().await;
}
