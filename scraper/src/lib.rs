//! A shardmetrics scraper shard: owns a consistent-hash slice of the cluster's nodes, scrapes
//! each owned kubelet's `/metrics/resource` once per resolution and streams the raw cumulative
//! samples to frontends over gRPC (`shardmetrics.v1.SampleStream`).
//!
//! A sample's path: [`nodes`] (which kubelets exist) and [`membership`] + peers' Leases (which
//! shards are alive) → [`ownership`] through the [`ring`] (which nodes are ours) →
//! [`schedule`] (when, then fetch → parse → encode) → [`kubelet`] (the fetch and the parser) →
//! [`stream`] (buffer, fan out the bytes encoded once) → frontends.
//!
//! # Layout
//! - [`run`]: builds the cluster inputs from kube (Node watch, shard Lease watch, this shard's
//!   Lease) and calls [`run_with`], which wires everything else on those [`Inputs`] (channels,
//!   so tests run a whole shard without an API server). Both take the [`config::Config`] and,
//!   apart from it, the clients ([`Handles`]) and [`Listeners`].
//! - [`cli`]: flags → validation (every problem at once) → `Config`, `Handles`, `Listeners` → `run`.
//! - [`nodes`]: Node watch, trimmed to scrape targets (address, port).
//! - [`membership`]: this shard's Lease (create, renew, delete on shutdown).
//! - [`ring`]: consistent-hash ownership of nodes over live shards.
//! - [`ownership`]: nodes × live members → this shard's [`schedule::Assignment`], with hand-overs.
//! - [`schedule`]: [`schedule::Scheduler`], the "when" (per-node phase slots, hand-overs, the due
//!   queue, one scrape per node at a time, the heartbeat `/livez` reads), apart from
//!   [`schedule::Pipeline`], the "what" (bounded fetch → parse → encode → count and publish).
//! - [`kubelet`]: fetch seam, HTTPS client and the `/metrics/resource` parser.
//! - [`buffer`]: the last two encoded scrapes of every owned node (snapshot source).
//! - [`stream`]: the `SampleStream` gRPC server: snapshot (the buffered frames as they are),
//!   live fan-out, slow-subscriber drop.
//! - [`admin`]: `/livez` (scheduler heartbeat), `/readyz`, `/metrics` on their own listener.
//! - [`metrics`]: self-metrics, registered into an explicit registry.
//! - [`config`]: the validated configuration (durations, selectors and name checks come from
//!   `shardmetrics-plumbing`); [`tls`]: PEM loading.

pub mod admin;
pub mod buffer;
pub mod cli;
pub mod config;
pub mod kubelet;
pub mod membership;
pub mod metrics;
pub mod nodes;
pub mod ownership;
pub mod ring;
pub mod schedule;
pub mod stream;
pub mod tls;

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use futures::future::BoxFuture;
use shardmetrics_plumbing::clock::SharedClock;
use shardmetrics_plumbing::lease::Members;
use shardmetrics_proto::ShardIdentity;
use tokio::net::TcpListener;
use tokio::sync::{oneshot, watch};
use tokio::task::JoinHandle;

use crate::admin::Health;
use crate::config::Config;
use crate::kubelet::KubeletSource;
use crate::membership::{LeaseHolder, LeaseSettings};
use crate::metrics::Metrics;
use crate::nodes::NodeView;
use crate::schedule::{Pipeline, Scheduler};
use crate::stream::Hub;

/// The sockets a shard serves on, bound by the caller (tests bind `127.0.0.1:0`).
#[derive(Debug)]
pub struct Listeners {
    /// `SampleStream` gRPC (`--grpc-bind-address`).
    pub grpc: TcpListener,
    /// `/livez` `/readyz` `/metrics` (`--admin-bind-address`).
    pub admin: TcpListener,
}

/// The clients a shard talks through: passed to [`run`] beside its [`Config`], never inside it.
pub struct Handles<S> {
    /// The API server: Node and Lease watches, this shard's own Lease.
    pub kube: kube::Client,
    /// The wall clock: scrape timestamps, the epoch, Lease times.
    pub clock: SharedClock,
    /// Fetches kubelets' `/metrics/resource` (the [`kubelet::KubeletClient`] outside tests).
    pub kubelets: S,
}

impl<S> std::fmt::Debug for Handles<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Handles").finish_non_exhaustive()
    }
}

/// A shard that stopped abnormally.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    /// The gRPC server failed (e.g. a TLS configuration rustls refused).
    #[error(transparent)]
    Grpc(#[from] stream::ServeError),
    /// The self-metrics could not be registered.
    #[error("registering self-metrics: {0}")]
    Metrics(#[from] prometheus::Error),
    /// A server task panicked or was cancelled.
    #[error("{0} task ended unexpectedly")]
    TaskEnded(&'static str),
}

/// Aborts the tasks it holds when dropped, so that dropping a `run` future (a crash in tests,
/// a cancelled caller) never leaves a Lease renewing or a scheduler scraping behind it.
struct TaskGuard(Vec<tokio::task::AbortHandle>);

impl Drop for TaskGuard {
    fn drop(&mut self) {
        for t in &self.0 {
            t.abort();
        }
    }
}

/// How long graceful shutdown waits for subscribers to drain their queues before it cuts them.
const STREAM_DRAIN_TIMEOUT: Duration = Duration::from_secs(5);

/// This process's epoch: the wall-clock start time in Unix nanoseconds (millisecond precision,
/// from the injected clock), so a restarted shard is told apart from a live one.
fn epoch_now(clock: &SharedClock) -> u64 {
    (clock.now_ms().max(0) as u64).saturating_mul(1_000_000)
}

/// What a shard learns from the cluster, as channels, so that [`run_with`] runs without an API
/// server (tests feed them by hand; [`run`] builds them from kube watches and a Lease).
pub struct Inputs {
    /// The scrapeable nodes (`nodes::watch_nodes`); `synced` once the first list is complete.
    pub nodes: watch::Receiver<NodeView>,
    /// The live shards, this one included once its Lease is seen
    /// (`shardmetrics_plumbing::lease::watch_members`).
    pub members: watch::Receiver<Members>,
    /// Holds this shard's own membership (its Lease); started by `run_with`, see [`LeaseStart`].
    pub lease: StartLease,
    /// Tasks feeding `nodes` and `members`; aborted when the shard stops.
    pub feeders: Vec<JoinHandle<()>>,
}

impl std::fmt::Debug for Inputs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Inputs").field("feeders", &self.feeders.len()).finish_non_exhaustive()
    }
}

/// Starts the future that holds this shard's membership (creates and renews its Lease) until
/// [`LeaseStart::stop`] resolves, then gives it up (deletes the Lease).
pub type StartLease = Box<dyn FnOnce(LeaseStart) -> BoxFuture<'static, ()> + Send>;

/// What the membership future gets from `run_with`, which knows it only once started.
pub struct LeaseStart {
    /// This process's epoch (Unix ns of start), written into the Lease.
    pub epoch: u64,
    /// The shard's self-metrics (Lease renewals are counted there).
    pub metrics: Metrics,
    /// Resolves once the node view is synced: peers hand their nodes over the moment the Lease
    /// appears, so it must not appear before.
    pub ready: BoxFuture<'static, ()>,
    /// Resolves when the shard shuts down: give the membership up now.
    pub stop: BoxFuture<'static, ()>,
}

impl std::fmt::Debug for LeaseStart {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LeaseStart").field("epoch", &self.epoch).finish_non_exhaustive()
    }
}

/// Runs one shard against the cluster `handles.kube` points at: watches Nodes and the shard Leases,
/// holds this shard's Lease, and runs [`run_with`] on them until `shutdown` resolves.
pub async fn run<S: KubeletSource>(
    config: Config,
    handles: Handles<S>,
    listeners: Listeners,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<(), RunError> {
    let Handles { kube, clock, kubelets } = handles;
    let (nodes, nodes_task) = nodes::watch_nodes(kube.clone(), config.node_selector.clone(), config.targets.clone());
    let (members, members_task) = shardmetrics_plumbing::lease::watch_members(kube.clone(), &config.lease_namespace, clock.clone());
    let (namespace, shard_id, grpc_address) = (config.lease_namespace.clone(), config.shard_id.clone(), config.grpc_advertise_address.clone());
    let (duration, renew_period, lease_clock) = (config.lease_duration, config.lease_renew_period, clock.clone());
    let lease: StartLease = Box::new(move |start: LeaseStart| {
        let settings = LeaseSettings { namespace, shard_id, grpc_address, epoch: start.epoch, duration, renew_period };
        Box::pin(LeaseHolder::new(kube, settings, lease_clock, start.metrics).run_after(start.ready, start.stop))
    });
    let inputs = Inputs { nodes, members, lease, feeders: vec![nodes_task, members_task] };
    run_with(config, inputs, kubelets, listeners, clock, shutdown).await
}

/// Runs one shard on `inputs` until `shutdown` resolves, then shuts down gracefully: give up
/// the membership (peers take the nodes at once), stop scraping and announce the releases, let
/// subscribers drain, stop the servers.
pub async fn run_with<S: KubeletSource>(
    config: Config,
    inputs: Inputs,
    kubelets: S,
    listeners: Listeners,
    clock: SharedClock,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<(), RunError> {
    let metrics = Metrics::register(&prometheus::Registry::new())?;
    let identity = ShardIdentity { shard_id: config.shard_id.clone(), epoch: epoch_now(&clock) };
    tracing::info!(
        shard_id = %identity.shard_id,
        epoch = identity.epoch,
        grpc = %config.grpc_advertise_address,
        resolution = ?config.schedule.resolution,
        "scraper shard starting"
    );
    let hub = Hub::with_linger(identity.clone(), config.subscriber_queue_batches, config.grpc_max_message_bytes, config.stream_linger, metrics.clone());
    let pipeline = Pipeline::new(Arc::new(kubelets), config.schedule.max_concurrent, hub.clone(), metrics.clone(), clock);
    let scheduler = Scheduler::new(config.schedule, pipeline);
    let health = Arc::new(Health::new(scheduler.heartbeat()));

    let Inputs { nodes: nodes_rx, members: members_rx, lease, feeders } = inputs;
    let mut synced_nodes = nodes_rx.clone();
    let (assignment_rx, assignment_task) =
        ownership::watch_assignment(config.shard_id.clone(), identity.epoch, nodes_rx.clone(), members_rx.clone(), metrics.clone());
    let health_task = tokio::spawn(track_health(health.clone(), config.shard_id.clone(), nodes_rx, members_rx));

    let (lease_stop, lease_stopped) = oneshot::channel::<()>();
    // The Lease appears once the node view is synced: peers release their nodes to this shard
    // the moment they see it.
    let lease_task = tokio::spawn(lease(LeaseStart {
        epoch: identity.epoch,
        metrics: metrics.clone(),
        ready: Box::pin(async move {
            let _ = synced_nodes.wait_for(|v| v.synced).await;
        }),
        stop: Box::pin(async {
            let _ = lease_stopped.await;
        }),
    }));

    let (grpc_stop, grpc_stopped) = oneshot::channel::<()>();
    let mut grpc_task = tokio::spawn(stream::serve(listeners.grpc, hub.clone(), config.grpc_tls.clone(), async {
        let _ = grpc_stopped.await;
    }));
    let (admin_stop, admin_stopped) = oneshot::channel::<()>();
    let mut admin_task = tokio::spawn(admin::serve(listeners.admin, health.clone(), metrics.clone(), async {
        let _ = admin_stopped.await;
    }));
    let (sched_stop, sched_stopped) = oneshot::channel::<()>();
    let mut sched_task = tokio::spawn(scheduler.run(assignment_rx, async {
        let _ = sched_stopped.await;
    }));

    let _guard = TaskGuard(
        feeders
            .iter()
            .chain([&assignment_task, &health_task])
            .map(|t| t.abort_handle())
            .chain([lease_task.abort_handle(), grpc_task.abort_handle(), admin_task.abort_handle(), sched_task.abort_handle()])
            .collect(),
    );
    let mut failure: Option<RunError> = None;
    // A task that ended here is not awaited again below (a JoinHandle is polled to completion once).
    let (mut admin_ended, mut sched_ended) = (false, false);
    tokio::select! {
        _ = shutdown => tracing::info!("shutdown requested"),
        r = &mut grpc_task => failure = Some(match r {
            Ok(Err(e)) => e.into(),
            _ => RunError::TaskEnded("gRPC server"),
        }),
        _ = &mut admin_task => {
            admin_ended = true;
            failure = Some(RunError::TaskEnded("admin server"));
        }
        // The scheduler ends by itself only when its assignments close (the node or member
        // input ended) or it panicked: either way this shard scrapes nothing any more.
        _ = &mut sched_task => {
            sched_ended = true;
            failure = Some(RunError::TaskEnded("scheduler"));
        }
    }

    health.shutting_down.store(true, Ordering::Relaxed);
    let _ = lease_stop.send(());
    let _ = lease_task.await;
    let _ = sched_stop.send(());
    if !sched_ended {
        let _ = sched_task.await;
    }
    hub.close();
    let _ = grpc_stop.send(());
    if !grpc_task.is_finished() {
        match tokio::time::timeout(STREAM_DRAIN_TIMEOUT, &mut grpc_task).await {
            Ok(Ok(Err(e))) if failure.is_none() => failure = Some(e.into()),
            Ok(_) => {}
            Err(_) => {
                tracing::warn!("subscribers did not drain in time; closing their connections");
                grpc_task.abort();
            }
        }
    }
    let _ = admin_stop.send(());
    if !admin_ended {
        let _ = admin_task.await;
    }
    for t in feeders.into_iter().chain([assignment_task, health_task]) {
        t.abort();
    }
    tracing::info!("scraper shard stopped");
    match failure {
        Some(e) => Err(e),
        None => Ok(()),
    }
}

/// Keeps the readiness flags in step with the node watch and the member set.
async fn track_health(
    health: Arc<Health>,
    me: String,
    mut nodes: tokio::sync::watch::Receiver<nodes::NodeView>,
    mut members: tokio::sync::watch::Receiver<shardmetrics_plumbing::lease::Members>,
) {
    loop {
        health.nodes_synced.store(nodes.borrow_and_update().synced, Ordering::Relaxed);
        let held = members.borrow_and_update().contains_key(&me);
        if health.lease_held.swap(held, Ordering::Relaxed) != held {
            tracing::info!(member = held, "own lease {}", if held { "visible among live members" } else { "not among live members" });
        }
        tokio::select! {
            r = nodes.changed() => if r.is_err() { return },
            r = members.changed() => if r.is_err() { return },
        }
    }
}
