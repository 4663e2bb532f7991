//! A shardmetrics frontend replica: subscribes to every scraper shard, keeps the last two raw
//! points of every node and container, and serves `metrics.k8s.io/v1beta1` (for `kubectl top`,
//! the HPA and the VPA) as an aggregated API server behind kube-apiserver.
//!
//! # Layout
//! Samples land: shard gRPC streams → [`upstream`] (one subscription per live shard, found
//! through shard Leases) → [`store`] (per-node/per-container point pairs, rates computed at read
//! time with metrics-server's semantics, indexed by namespace).
//!
//! Requests enter: [`server`] (HTTPS on `--secure-port`, HTTP/1.1 + HTTP/2, in-flight limit)
//! → [`auth`] (front-proxy certificates, TokenReview, SubjectAccessReview) → [`api`] (routing,
//! selectors, JSON / protobuf / Table encoders, discovery, OpenAPI) reading [`store`] and
//! [`metadata`] (metadata-only watches of running Pods and Nodes for labels and existence).
//!
//! Around them: [`health`] (`/livez`, `/readyz`, `/healthz`), [`metrics`] (self-metrics in an
//! explicit registry, also on the plain admin port), [`cli`] (flags → validated [`Config`]) and
//! [`run`], which wires everything together on the listeners it is given.

pub mod api;
pub mod auth;
pub mod cli;
pub mod health;
pub mod metadata;
pub mod metrics;
pub mod server;
pub mod store;
pub mod upstream;

use std::sync::Arc;
use std::time::Duration;

use shardmetrics_plumbing::clock::SharedClock;
use shardmetrics_plumbing::lease::{Member, watch_members};
use tokio::net::TcpListener;
use tokio::sync::{Semaphore, watch};

use crate::api::router::Api;
use crate::auth::{Auth, AuthConfig, AuthSetupError, TlsConfig, TlsError, server_tls_config};
use crate::health::Health;
use crate::metadata::Metadata;
use crate::metrics::Metrics;
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

/// Why the replica could not start.
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
}

/// Runs a replica with `handles` on `listeners` until `shutdown` resolves: readiness turns
/// false, listeners stop accepting, open requests get [`Config::shutdown_grace`] to finish,
/// background tasks stop.
pub async fn run(config: Config, handles: Handles, listeners: Listeners, shutdown: impl Future<Output = ()> + Send) -> Result<(), RunError> {
    let Handles { kube, clock } = handles;
    let registry = prometheus::Registry::new();
    let metrics = Metrics::new(&registry)?;
    let store = Arc::new(Store::new(config.store, clock.clone()));
    let (stop_tx, stop_rx) = watch::channel(false);
    let mut background = Vec::new();

    let metadata = kube.clone().map(|client| {
        let m = Metadata::new();
        background.push(tokio::spawn(m.clone().watch(client, stop_rx.clone())));
        m
    });
    let (members, _static_sender) = match &config.shards {
        ShardSource::Leases { namespace } => {
            let client = kube.clone().ok_or(RunError::NoApiServer)?;
            let (rx, task) = watch_members(client, namespace, clock.clone());
            background.push(task);
            (rx, None)
        }
        ShardSource::Static(list) => {
            let (tx, rx) = upstream::static_members(list.clone());
            (rx, Some(tx))
        }
    };
    let upstream_state = Arc::new(UpstreamState::default());
    background.push(tokio::spawn(upstream::run(
        config.upstream.clone(),
        members,
        store.clone(),
        metrics.clone(),
        upstream_state.clone(),
        stop_rx.clone(),
    )));

    let auth = Auth::new(config.auth.clone(), kube, &registry).await?;
    let tls = server_tls_config(&config.tls)?;
    let health = Arc::new(Health::new(upstream_state, metadata.clone()));
    let state = Arc::new(ServerState {
        api: Api::new(store.clone(), metadata.clone(), clock, Some(metrics.clone())),
        auth,
        health: health.clone(),
        metrics: metrics.clone(),
        registry,
        inflight: Arc::new(Semaphore::new(config.max_requests_inflight.max(1))),
        limits: config.limits,
    });

    background.push(tokio::spawn(sweep(store.clone(), metadata, metrics, config.sweep_interval, stop_rx.clone())));
    let mut servers = vec![tokio::spawn(server::serve_secure(listeners.secure, tls, state.clone(), stop_rx.clone(), config.shutdown_grace))];
    if let Some(admin) = listeners.admin {
        servers.push(tokio::spawn(server::serve_admin(admin, state, stop_rx, config.shutdown_grace)));
    }
    tracing::info!("frontend serving");

    shutdown.await;
    tracing::info!("shutting down");
    health.begin_shutdown();
    let _ = stop_tx.send(true);
    for s in servers {
        let _ = s.await;
    }
    for t in background {
        t.abort();
        let _ = t.await;
    }
    Ok(())
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
