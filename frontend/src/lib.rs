//! A shardmetrics frontend replica: subscribes to every scraper shard, keeps the last two raw
//! points of every node and container, and serves `metrics.k8s.io` (v1beta1 and v1, for `kubectl top`,
//! the HPA and the VPA) as an aggregated API server behind kube-apiserver.
//!
//! # Layout
//! Samples land: shard gRPC streams → [`upstream`] → [`store`]. Requests enter: [`server`] →
//! [`auth`] → [`api`], which reads [`store`] and [`metadata`].
//!
//! - [`run`]: wires everything together from the [`Config`] (already checked: nothing to parse),
//!   the clients ([`Handles`]: the Kubernetes client and the wall clock) and the [`Listeners`]
//!   it is given, until the shutdown future completes or a task ends by itself.
//! - [`cli`]: the flags, typed by their clap value parsers, checked against each other and the
//!   file system (every problem at once) into a [`Config`]; `main_with` binds the ports and
//!   calls [`run`].
//! - [`upstream`]: one subscription per live shard (found through shard Leases), snapshot then
//!   live batches, reconnection with back-off, the message-size limit.
//! - [`store`]: per-node/per-container point pairs, rates computed at read time with
//!   metrics-server's semantics, indexed by namespace; staleness sweeps.
//! - [`metadata`]: metadata-only watches of running Pods and Nodes (labels and existence).
//! - [`names`]: pod names held once for the store and the metadata view.
//! - [`server`]: HTTPS on `--secure-port` (HTTP/1.1 + HTTP/2, in-flight limit, request-size and
//!   time limits) and the plain admin port.
//! - [`auth`]: front-proxy certificates, client certificates, TokenReview, SubjectAccessReview,
//!   the serving certificate and its flags.
//! - [`api`]: routing of `metrics.k8s.io` v1 and v1beta1, selectors, JSON / protobuf / Table
//!   encoders, discovery, OpenAPI.
//! - [`health`]: `/livez`, `/readyz`, `/healthz`.
//! - [`metrics`]: self-metrics, registered into an explicit registry (also on the admin port).

pub mod api;
pub mod auth;
pub mod cli;
pub mod health;
pub mod metadata;
pub mod metrics;
pub mod names;
pub mod server;
pub mod store;
pub mod upstream;

use std::sync::Arc;
use std::time::Duration;

use shardmetrics_plumbing::clock::SharedClock;
use shardmetrics_plumbing::lease::{Member, watch_members};
use tokio::net::TcpListener;
use tokio::sync::{Semaphore, watch};
use tokio::task::JoinHandle;

use crate::api::router::Api;
use crate::auth::{Auth, AuthConfig, AuthSetupError, TlsConfig, TlsError, server_tls_config};
use crate::health::Health;
use crate::metadata::Metadata;
use crate::metrics::Metrics;
use crate::names::PodNames;
use crate::server::{ServerLimits, ServerState};
use crate::store::{Store, StoreConfig};
use crate::upstream::{UpstreamConfig, UpstreamState};

/// Where the live shards come from.
#[derive(Debug, Clone)]
pub enum ShardSource {
    /// Shard Leases in this namespace (needs [`Handles::kube`]).
    Leases {
        /// Namespace of the shard Leases.
        namespace: String,
    },
    /// A fixed list (tests and runs without an API server).
    Static(Vec<Member>),
}

/// Everything [`run`] needs, validated.
pub struct Config {
    /// Rate and staleness settings.
    pub store: StoreConfig,
    /// Subscriptions to shards.
    pub upstream: UpstreamConfig,
    /// Where shards are found.
    pub shards: ShardSource,
    /// Authentication and authorization.
    pub auth: AuthConfig,
    /// The secure port's TLS.
    pub tls: TlsConfig,
    /// Requests handled at once on the secure port before answering 429.
    pub max_requests_inflight: usize,
    /// Request size and connection time limits of both ports.
    pub limits: ServerLimits,
    /// How long open connections may finish their requests after shutdown begins.
    pub shutdown_grace: Duration,
    /// How often stale nodes are dropped and size gauges refreshed.
    pub sweep_interval: Duration,
}

/// The clients a replica talks through: passed to [`run`] beside its [`Config`], never inside
/// it (tests hand in a simulated API server and a manual clock).
pub struct Handles {
    /// The API server (Leases, Pod/Node metadata, TokenReview, SubjectAccessReview, the
    /// authentication ConfigMap); `None` runs without metadata (every stored object exists, no
    /// labels) and without token/SAR checks.
    pub kube: Option<kube::Client>,
    /// The wall clock (Unix ms): staleness of stored nodes, item timestamps and freshness,
    /// Lease expiry.
    pub clock: SharedClock,
}

impl std::fmt::Debug for Handles {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Handles").field("kube", &self.kube.is_some()).finish_non_exhaustive()
    }
}

/// The sockets [`run`] serves on (bound by the caller; port 0 in tests).
pub struct Listeners {
    /// The secure port (HTTPS API).
    pub secure: TcpListener,
    /// The plain admin port (`/livez`, `/readyz`, `/healthz`, `/metrics`); `None` disables it.
    pub admin: Option<TcpListener>,
}

/// Why the replica could not start, or stopped without being asked to.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    /// The secure port's TLS configuration is unusable.
    #[error("TLS: {0}")]
    Tls(#[from] TlsError),
    /// Authentication could not be set up.
    #[error("authentication: {0}")]
    Auth(#[from] AuthSetupError),
    /// Self-metrics could not be registered.
    #[error("metrics: {0}")]
    Metrics(#[from] prometheus::Error),
    /// Shard Leases were asked for without an API server.
    #[error("shard discovery from Leases needs an API server (kubeconfig)")]
    NoApiServer,
    /// A task that runs until shutdown (a server, upstream) ended by itself: it panicked. The
    /// replica then shut down as if asked to.
    #[error("{0} task ended unexpectedly")]
    TaskEnded(&'static str),
}

/// Runs a replica with `handles` on `listeners` until `shutdown` resolves, or until a server
/// or the upstream task ends by itself ([`RunError::TaskEnded`]). Either way it then shuts
/// down: readiness turns false, listeners stop accepting, open requests get
/// [`Config::shutdown_grace`] to finish, upstream closes its subscriptions, background tasks
/// stop. No task outlives `run`, even when it returns early with an error or is dropped.
pub async fn run(config: Config, handles: Handles, listeners: Listeners, shutdown: impl Future<Output = ()> + Send) -> Result<(), RunError> {
    let Handles { kube, clock } = handles;
    let registry = prometheus::Registry::new();
    let metrics = Metrics::register(&registry)?;
    // Pod names held once for the store and the metadata view; without a view (no API
    // server) a table would only cost.
    let names = if kube.is_some() { PodNames::shared() } else { PodNames::unshared() };
    let store = Arc::new(Store::with_pod_names(config.store, clock.clone(), names.clone()));
    let (stop_tx, stop_rx) = watch::channel(false);
    let mut tasks = Tasks::default();

    let metadata = kube.clone().map(|client| {
        let m = Metadata::with_pod_names(names.clone());
        tasks.background.push(tokio::spawn(m.clone().watch(client, stop_rx.clone())));
        m
    });
    let (members, _static_sender) = match &config.shards {
        ShardSource::Leases { namespace } => {
            let client = kube.clone().ok_or(RunError::NoApiServer)?;
            let (rx, task) = watch_members(client, namespace, clock.clone());
            tasks.background.push(task);
            (rx, None)
        }
        ShardSource::Static(list) => {
            let (tx, rx) = upstream::static_members(list.clone());
            (rx, Some(tx))
        }
    };
    let upstream_state = Arc::new(UpstreamState::default());
    tasks.vital.push((
        "upstream",
        tokio::spawn(upstream::run(
            config.upstream.clone(),
            members,
            store.clone(),
            metrics.clone(),
            upstream_state.clone(),
            stop_rx.clone(),
        )),
    ));

    let auth = Auth::new(config.auth.clone(), kube, &registry).await?;
    let tls = server_tls_config(&config.tls)?;
    let health = Arc::new(Health::new(upstream_state, metadata.clone()));
    let state = Arc::new(ServerState {
        api: Api::new(store.clone(), metadata.clone(), clock, Some(metrics.clone()))
            .with_secure_port(listeners.secure.local_addr().ok().map(|a| a.port())),
        auth,
        health: health.clone(),
        metrics: metrics.clone(),
        registry,
        inflight: Arc::new(Semaphore::new(config.max_requests_inflight.max(1))),
        limits: config.limits,
    });

    tasks.background.push(tokio::spawn(sweep(store.clone(), metadata, metrics, config.sweep_interval, stop_rx.clone())));
    tasks.vital.push((
        "secure server",
        tokio::spawn(server::serve_secure(listeners.secure, tls, state.clone(), stop_rx.clone(), config.shutdown_grace)),
    ));
    if let Some(admin) = listeners.admin {
        tasks.vital.push(("admin server", tokio::spawn(server::serve_admin(admin, state, stop_rx, config.shutdown_grace))));
    }
    tracing::info!("frontend serving");

    let outcome = tasks.until(shutdown).await;
    match &outcome {
        Ok(()) => tracing::info!("shutting down"),
        Err(e) => tracing::error!(error = %e, "shutting down"),
    }
    health.begin_shutdown();
    let _ = stop_tx.send(true);
    tasks.stop().await;
    outcome
}

/// The replica's tasks. `vital` ones (the servers, upstream) run until shutdown, so one that
/// ends first is a failure; `background` ones (watches, the sweep) are stopped after them.
/// Dropping it aborts whatever is left, so no task outlives [`run`].
#[derive(Default)]
struct Tasks {
    /// Named tasks that must not end before shutdown.
    vital: Vec<(&'static str, JoinHandle<()>)>,
    /// Tasks aborted once the vital ones have stopped.
    background: Vec<JoinHandle<()>>,
}

impl Tasks {
    /// Waits for `shutdown`, or for the first vital task to end: then that task (already
    /// finished, never to be awaited again) is dropped from the set and named in the error.
    async fn until(&mut self, shutdown: impl Future<Output = ()>) -> Result<(), RunError> {
        if self.vital.is_empty() {
            shutdown.await;
            return Ok(());
        }
        let ended = tokio::select! {
            () = shutdown => None,
            (result, index, _) = futures::future::select_all(self.vital.iter_mut().map(|(_, task)| task)) => Some((index, result)),
        };
        let Some((index, result)) = ended else { return Ok(()) };
        let (name, _) = self.vital.swap_remove(index);
        match result {
            Err(e) if e.is_panic() => tracing::error!(task = name, "task panicked"),
            _ => tracing::error!(task = name, "task ended before shutdown"),
        }
        Err(RunError::TaskEnded(name))
    }

    /// After the stop signal: waits for the vital tasks (servers drain for their grace period,
    /// upstream closes its subscriptions), then aborts the background ones.
    async fn stop(mut self) {
        for (_, task) in std::mem::take(&mut self.vital) {
            let _ = task.await;
        }
        for task in std::mem::take(&mut self.background) {
            task.abort();
            let _ = task.await;
        }
    }
}

impl Drop for Tasks {
    fn drop(&mut self) {
        for (_, task) in &self.vital {
            task.abort();
        }
        for task in &self.background {
            task.abort();
        }
    }
}

/// Drops stale nodes and refreshes size gauges every `interval` until `stop`.
async fn sweep(store: Arc<Store>, metadata: Option<Arc<Metadata>>, metrics: Metrics, interval: Duration, mut stop: watch::Receiver<bool>) {
    let mut tick = tokio::time::interval(interval.max(Duration::from_millis(100)));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = crate::stopped(&mut stop) => return,
            _ = tick.tick() => {}
        }
        let dropped = store.sweep();
        if dropped > 0 {
            metrics.stale_nodes_dropped.inc_by(dropped as u64);
            tracing::info!(nodes = dropped, "dropped nodes without a scrape for longer than --max-staleness");
        }
        metrics.refresh_gauges(&store, metadata.as_deref());
    }
}

/// Resolves once `stop` turns true (or its sender is gone).
pub(crate) async fn stopped(stop: &mut watch::Receiver<bool>) {
    let _ = stop.wait_for(|s| *s).await;
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use super::*;

    /// Counts its drops: a task holding one was stopped (or ended) once the count went up.
    struct DropCounter(Arc<AtomicUsize>);

    impl Drop for DropCounter {
        fn drop(&mut self) {
            self.0.fetch_add(1, Ordering::SeqCst);
        }
    }

    /// A task that runs until `stop` turns true, as the servers and upstream do.
    fn until_stopped(mut stop: watch::Receiver<bool>) -> JoinHandle<()> {
        tokio::spawn(async move { stopped(&mut stop).await })
    }

    /// A task that never ends by itself, holding a [`DropCounter`].
    fn forever(dropped: &Arc<AtomicUsize>) -> JoinHandle<()> {
        let guard = DropCounter(dropped.clone());
        tokio::spawn(async move {
            let _guard = guard;
            std::future::pending::<()>().await;
        })
    }

    #[tokio::test]
    async fn a_vital_task_that_panics_is_named_and_the_rest_still_stop_in_order() {
        let (stop_tx, stop_rx) = watch::channel(false);
        let dropped = Arc::new(AtomicUsize::new(0));
        let mut tasks = Tasks::default();
        tasks.vital.push(("upstream", until_stopped(stop_rx.clone())));
        tasks.vital.push(("secure server", tokio::spawn(async { panic!("the secure server broke") })));
        tasks.background.push(forever(&dropped));
        let outcome = tokio::time::timeout(Duration::from_secs(10), tasks.until(std::future::pending())).await.expect("not stuck");
        assert!(matches!(outcome, Err(RunError::TaskEnded("secure server"))), "{outcome:?}");
        assert_eq!(tasks.vital.iter().map(|(name, _)| *name).collect::<Vec<_>>(), ["upstream"]);
        let _ = stop_tx.send(true);
        tokio::time::timeout(Duration::from_secs(10), tasks.stop()).await.expect("stops");
        assert_eq!(dropped.load(Ordering::SeqCst), 1, "the background task was aborted");
    }

    #[tokio::test]
    async fn a_vital_task_that_returns_before_shutdown_is_a_failure_too() {
        let mut tasks = Tasks::default();
        tasks.vital.push(("admin server", tokio::spawn(async {})));
        let outcome = tasks.until(std::future::pending()).await;
        assert!(matches!(outcome, Err(RunError::TaskEnded("admin server"))), "{outcome:?}");
        assert!(tasks.vital.is_empty());
    }

    #[tokio::test]
    async fn shutdown_first_is_a_clean_stop_and_dropping_the_tasks_aborts_them() {
        let dropped = Arc::new(AtomicUsize::new(0));
        let mut tasks = Tasks::default();
        tasks.vital.push(("upstream", forever(&dropped)));
        tasks.background.push(forever(&dropped));
        assert!(tasks.until(std::future::ready(())).await.is_ok());
        assert_eq!(tasks.vital.len(), 1, "nothing ended");
        drop(tasks);
        for _ in 0..100 {
            if dropped.load(Ordering::SeqCst) == 2 {
                return;
            }
            tokio::task::yield_now().await;
        }
        panic!("dropping the set did not abort its tasks: {} of 2 dropped", dropped.load(Ordering::SeqCst));
    }
}
