//! Shared by the frontend's server tests: a real tonic `SampleStream` server that feeds known
//! batches, and builders of realistic node scrapes.
#![allow(dead_code)]

use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use futures::Stream;
use shardmetrics_proto::lease::Member;
use shardmetrics_proto::v1::sample_stream_server::{SampleStream, SampleStreamServer};
use shardmetrics_proto::v1::{SampleBatch, SubscribeRequest};
use shardmetrics_proto::{ContainerSample, NodeReleased, NodeScrape, PodSamples, Point, ShardIdentity, encode_batch};
use tokio::sync::{mpsc, oneshot};
use tonic::{Request, Response, Status};

/// 2026-01-01T00:00:00Z in Unix ms: the base of every test timestamp.
pub const T0: i64 = 1_767_225_600_000;

/// What a fake shard sends and to whom.
#[derive(Default)]
pub struct ShardState {
    /// Batches sent to every new subscriber first.
    pub snapshot: Mutex<Vec<SampleBatch>>,
    /// Open subscriptions.
    pub subscribers: Mutex<Vec<mpsc::Sender<Result<SampleBatch, Status>>>>,
    /// Subscribe calls so far.
    pub subscribes: AtomicUsize,
    /// Names subscribers gave.
    pub subscriber_names: Mutex<Vec<String>>,
}

struct Service(Arc<ShardState>);

#[tonic::async_trait]
impl SampleStream for Service {
    type SubscribeStream = Pin<Box<dyn Stream<Item = Result<SampleBatch, Status>> + Send>>;

    async fn subscribe(&self, request: Request<SubscribeRequest>) -> Result<Response<Self::SubscribeStream>, Status> {
        self.0.subscribes.fetch_add(1, Ordering::SeqCst);
        self.0.subscriber_names.lock().expect("lock").push(request.into_inner().subscriber);
        let (tx, rx) = mpsc::channel(1024);
        for b in self.0.snapshot.lock().expect("lock").iter() {
            tx.try_send(Ok(b.clone())).map_err(|_| Status::internal("snapshot too large for the test queue"))?;
        }
        self.0.subscribers.lock().expect("lock").push(tx);
        Ok(Response::new(Box::pin(tokio_stream::wrappers::ReceiverStream::new(rx))))
    }
}

/// A real gRPC `SampleStream` server on 127.0.0.1:0.
pub struct FakeShard {
    /// Where it listens.
    pub addr: SocketAddr,
    /// Its identity.
    pub identity: ShardIdentity,
    /// Shared state.
    pub state: Arc<ShardState>,
    stop: Option<oneshot::Sender<()>>,
}

impl FakeShard {
    /// Starts a shard that will send `snapshot` (already including `snapshot_complete`).
    pub async fn start(shard_id: &str, snapshot: Vec<SampleBatch>) -> FakeShard {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let state = Arc::new(ShardState::default());
        *state.snapshot.lock().expect("lock") = snapshot;
        let (stop, stopped) = oneshot::channel::<()>();
        let svc = SampleStreamServer::new(Service(state.clone()));
        tokio::spawn(async move {
            let incoming = tokio_stream::wrappers::TcpListenerStream::new(listener);
            let _ = tonic::transport::Server::builder()
                .serve_with_incoming_shutdown(svc, incoming, async {
                    let _ = stopped.await;
                })
                .await;
        });
        FakeShard { addr, identity: ShardIdentity { shard_id: shard_id.into(), epoch: 1 }, state, stop: Some(stop) }
    }

    /// The Lease member describing this shard.
    pub fn member(&self) -> Member {
        Member {
            shard_id: self.identity.shard_id.clone(),
            grpc_address: self.addr.to_string(),
            epoch: self.identity.epoch,
            renew_time_ms: T0,
            lease_duration_ms: 15_000,
        }
    }

    /// Sends a live batch to every subscriber.
    pub async fn publish(&self, scrapes: &[NodeScrape], released: &[NodeReleased]) {
        let refs: Vec<&NodeScrape> = scrapes.iter().collect();
        let batch = encode_batch(&self.identity, &refs, released, false);
        let subs = self.state.subscribers.lock().expect("lock").clone();
        for s in subs {
            let _ = s.send(Ok(batch.clone())).await;
        }
    }

    /// Sends a raw (possibly invalid) batch to every subscriber.
    pub async fn publish_raw(&self, batch: SampleBatch) {
        let subs = self.state.subscribers.lock().expect("lock").clone();
        for s in subs {
            let _ = s.send(Ok(batch.clone())).await;
        }
    }

    /// Ends every open subscription (as a shard restart or a slow-subscriber drop would).
    pub fn disconnect_all(&self) {
        for s in self.state.subscribers.lock().expect("lock").drain(..) {
            let _ = s.try_send(Err(Status::resource_exhausted("test disconnect")));
        }
    }

    /// Number of Subscribe calls so far.
    pub fn subscribes(&self) -> usize {
        self.state.subscribes.load(Ordering::SeqCst)
    }

    /// Stops the server.
    pub fn stop(mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
    }
}

/// The snapshot of one shard: every scrape in one batch with `snapshot_complete`.
pub fn snapshot(identity: &ShardIdentity, scrapes: &[NodeScrape]) -> Vec<SampleBatch> {
    let refs: Vec<&NodeScrape> = scrapes.iter().collect();
    vec![encode_batch(identity, &refs, &[], true)]
}

/// A pod on a scraped node: namespace, name, container names.
pub type PodSpec<'a> = (&'a str, &'a str, &'a [&'a str]);

/// A scrape of `node` at `T0 + t_ms` in which the node has used `node_cores` cores and every
/// container `container_cores` cores since `T0` (so rates between two scrapes equal those).
pub fn scrape(node: &str, t_ms: i64, node_cores: f64, container_cores: f64, pods: &[PodSpec<'_>]) -> NodeScrape {
    let cpu = |cores: f64| (cores * t_ms as f64 * 1_000_000.0) as u64 + 1_000_000_000_000;
    NodeScrape {
        node: node.into(),
        scraped_at_ms: T0 + t_ms + 20,
        node_usage: Some(Point { timestamp_ms: T0 + t_ms, cpu_usage_ns: cpu(node_cores), memory_working_set_bytes: 8 << 30 }),
        pods: pods
            .iter()
            .map(|(ns, name, containers)| PodSamples {
                namespace: (*ns).into(),
                name: (*name).into(),
                containers: containers
                    .iter()
                    .map(|c| ContainerSample {
                        name: (*c).into(),
                        start_time_ms: T0 - 3_600_000,
                        usage: Point { timestamp_ms: T0 + t_ms - 5, cpu_usage_ns: cpu(container_cores), memory_working_set_bytes: 50 << 20 },
                    })
                    .collect(),
            })
            .collect(),
    }
}
