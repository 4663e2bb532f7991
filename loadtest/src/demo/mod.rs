//! `shardmetrics-loadtest demo`: the whole pipeline on one machine.
//!
//! The simulated cluster (API server, aggregation proxy, N nodes with kubelets) runs in this
//! process (the kubelets' listeners and connections in `kubelet-server` children of this binary
//! when this process's open-files limit cannot hold them, see [`DemoConfig::kubelet_servers`]);
//! S scraper shards and F frontend replicas run as child processes of this very binary
//! (`shardmetrics-loadtest scraper ...` / `frontend ...` call the same `cli::main_with` entry
//! points the real `shardmetrics-scraper` and `shardmetrics-frontend` binaries call), talking to
//! the simulator exactly as they would talk to a real cluster: kubeconfigs with service-account
//! tokens, Leases, watches, TokenReview/SubjectAccessReview, kubelets over HTTPS, the front-proxy
//! certificate from `extension-apiserver-authentication`.
//!
//! [`Demo::start`] returns once `metrics.k8s.io` serves every node (or fails after a deadline);
//! the end-to-end tests drive it the same way the command does.

pub(crate) mod children;
pub mod real;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use children::{Children, DEFAULT_LEASE_DURATION, Spawner, flag_duration, stop_gracefully};
pub use children::SupervisorEvent;

use shardmetrics_sim::apiserver::{ApiServer, ApiServerConfig, Context, DEFAULT_ADMIN, RunningApiServer, StartError};
use shardmetrics_plumbing::clock::SharedClock;
use shardmetrics_sim::cluster::{self, Cluster, ClusterConfig, ClusterError, FRONTEND_USER, METRICS_SERVER_USER, NOACCESS_USER, SCRAPER_USER};

use crate::peer::{MetricsServer, PeerConfig, PeerError};

/// Context of the kubeconfig with full rights.
pub const ADMIN_CONTEXT: &str = "demo-admin";
/// Context of the kubeconfig with an authenticated user without rights.
pub const NOACCESS_CONTEXT: &str = "demo-noaccess";
/// Namespace of the shard Leases.
pub const LEASE_NAMESPACE: &str = "kube-system";

/// What can stop the demo from starting.
#[derive(Debug, thiserror::Error)]
pub enum DemoError {
    /// The API server simulator did not start.
    #[error(transparent)]
    ApiServer(#[from] StartError),
    /// The simulated cluster could not be built.
    #[error(transparent)]
    Cluster(#[from] ClusterError),
    /// A file or process operation failed.
    #[error("{what}: {source}")]
    Io {
        /// What was being done.
        what: String,
        /// The I/O error.
        source: std::io::Error,
    },
    /// A child exited before the demo was ready.
    #[error("{name} exited during start-up ({status}); its log: {log}")]
    ChildExited {
        /// Which child.
        name: String,
        /// How it exited.
        status: std::process::ExitStatus,
        /// Its log file.
        log: String,
    },
    /// metrics-server (the peer) did not start or become ready.
    #[error(transparent)]
    Peer(#[from] PeerError),
    /// Metrics were not served in time.
    #[error("metrics.k8s.io did not serve all {expected} nodes within {timeout:?} (last: {last}); logs in {logs}")]
    NotReady {
        /// Nodes expected.
        expected: usize,
        /// How long we waited.
        timeout: Duration,
        /// What the last attempt saw.
        last: String,
        /// Where the children's logs are.
        logs: String,
    },
}

pub(crate) fn io(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> DemoError {
    let what = what.into();
    move |source| DemoError::Io { what, source }
}

/// Which implementation of the Metrics API serves the simulated cluster.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum System {
    /// shardmetrics: scraper shards and frontends (children of this executable).
    Shardmetrics,
    /// metrics-server v0.8.0 (the peer, [`crate::peer`]): this many replicas, each scraping every
    /// node (upstream's HA shape is 2), queries spread over them.
    MetricsServer {
        /// Replicas.
        replicas: usize,
    },
}

impl System {
    /// The name used in reports: `shardmetrics` or `metrics-server`.
    pub fn name(self) -> &'static str {
        match self {
            System::Shardmetrics => "shardmetrics",
            System::MetricsServer { .. } => "metrics-server",
        }
    }
}

/// How to run the demo.
#[derive(Debug, Clone)]
pub struct DemoConfig {
    /// What serves the Metrics API ([`System::Shardmetrics`] by default; shards and frontends
    /// are then not started for [`System::MetricsServer`]).
    pub system: System,
    /// Simulated nodes.
    pub nodes: usize,
    /// Pods per node.
    pub pods_per_node: usize,
    /// Containers per pod (each a separate series in the kubelet payload).
    pub containers_per_pod: usize,
    /// Scraper shards (child processes).
    pub shards: usize,
    /// Frontend replicas (child processes).
    pub frontends: usize,
    /// Scrape interval of the shards and rate window of the frontends.
    pub metric_resolution: Duration,
    /// Where to write the user's kubeconfig.
    pub kubeconfig: PathBuf,
    /// Scrapers skip kubelet certificate verification (for kubelets added by hand with their
    /// own certificates); otherwise they verify against the simulator CA.
    pub kubelet_insecure_tls: bool,
    /// The binary to start children from (this executable by default): the simulated
    /// cluster's kubelet servers, and the shards, frontends and floor that have no program of
    /// their own below (as its hidden `scraper`, `frontend` and `floor` subcommands).
    pub exe: PathBuf,
    /// The shards' program, started with the scraper's flags: the `shardmetrics-scraper` that
    /// ships, so that a measurement runs what is deployed (its own allocator among the rest).
    /// `None`: [`Self::exe`]'s `scraper` subcommand (same code, the runner's allocator).
    pub scraper_program: Option<PathBuf>,
    /// The frontends' program, as [`Self::scraper_program`] (`shardmetrics-frontend`); `None`:
    /// [`Self::exe`]'s `frontend` subcommand.
    pub frontend_program: Option<PathBuf>,
    /// The scrapers' floor's program (`shardmetrics-floor`: the floor on the scraper's
    /// allocator), started with the floor's flags; `None`: [`Self::exe`]'s `floor` subcommand.
    pub floor_program: Option<PathBuf>,
    /// Log level passed to the children.
    pub child_log_level: String,
    /// How long to wait for metrics before giving up.
    pub ready_timeout: Duration,
    /// Memory oscillation of the simulated containers, in percent of their base (0: constant).
    pub memory_amplitude_percent: u64,
    /// Distinct `app` labels per namespace; 0 picks one app per ~20 pods (at least 3), so a
    /// label selector matches a deployment-sized set at any scale.
    pub apps_per_namespace: usize,
    /// Shard Lease duration (`--lease-duration`); `None` keeps the scraper's default. Short
    /// durations make crash takeovers fast in tests.
    pub lease_duration: Option<Duration>,
    /// Shard Lease renew period (`--lease-renew-period`, below the duration); `None` keeps the
    /// scraper's default.
    pub lease_renew_period: Option<Duration>,
    /// The frontends' `--max-staleness` (how long a node's last good data is served without a
    /// new scrape); `None` keeps their default (2 resolutions + 15 s).
    pub frontend_max_staleness: Option<Duration>,
    /// The frontends' `--max-requests-inflight` (beyond it: 429 with Retry-After); `None` keeps
    /// their default.
    pub frontend_max_requests_inflight: Option<usize>,
    /// Wall clock of the simulated kubelets and objects and of every measurement taken against
    /// the children (sample ages, fault times). The children are processes reading their own
    /// system clocks, so outside unit tests this is [`shardmetrics_plumbing::clock::system`].
    pub clock: SharedClock,
    /// The kubelets' sample timestamps are rounded down to a multiple of this (cAdvisor's
    /// housekeeping interval), so that two scrapers reading a kubelet within one period see the
    /// same sample; zero samples at each request.
    pub kubelet_sample_period: Duration,
    /// Serve the kubelets' listeners and connections from at least this many `kubelet-server`
    /// children of [`Self::exe`] (0: only as many as this process's open-files limit needs,
    /// counting a listener, the system's connections and a floor's per kubelet).
    pub kubelet_servers: usize,
}

impl DemoConfig {
    /// The command line a role's children start with, for reports: `scraper`, `frontend` and
    /// `floor`, each its program or this runner's subcommand of that name.
    pub fn role_command(&self, role: &str) -> String {
        let program = match role {
            "scraper" => self.scraper_program.as_ref(),
            "frontend" => self.frontend_program.as_ref(),
            "floor" => self.floor_program.as_ref(),
            _ => None,
        };
        children::Launch::new(&self.exe, program.map(PathBuf::as_path), role).to_string()
    }

    /// The defaults: 20 nodes x 10 pods, 2 shards, 2 frontends, 15 s resolution,
    /// `./demo.kubeconfig`, this executable.
    pub fn new(exe: PathBuf) -> DemoConfig {
        DemoConfig {
            system: System::Shardmetrics,
            nodes: 20,
            pods_per_node: 10,
            containers_per_pod: 1,
            shards: 2,
            frontends: 2,
            metric_resolution: Duration::from_secs(15),
            kubeconfig: PathBuf::from("demo.kubeconfig"),
            kubelet_insecure_tls: false,
            exe,
            scraper_program: None,
            frontend_program: None,
            floor_program: None,
            child_log_level: "info".into(),
            ready_timeout: Duration::from_secs(120),
            memory_amplitude_percent: 10,
            apps_per_namespace: 0,
            lease_duration: None,
            lease_renew_period: None,
            frontend_max_staleness: None,
            frontend_max_requests_inflight: None,
            clock: shardmetrics_plumbing::clock::system(),
            kubelet_sample_period: Duration::ZERO,
            kubelet_servers: 0,
        }
    }
}

/// A running demo. Dropping it kills the children (use [`RunningDemo::shutdown`] for a graceful
/// stop that lets shards release their Leases).
pub struct RunningDemo {
    /// The API server simulator (with the aggregation proxy).
    pub api: RunningApiServer,
    /// The simulated nodes and their kubelets.
    pub cluster: Cluster,
    /// Secure addresses of the frontend replicas (of the metrics-server replicas when the
    /// system is metrics-server).
    pub frontends: Vec<SocketAddr>,
    /// What serves the Metrics API.
    pub system: System,
    /// Seconds from starting the system's processes until every replica served every node
    /// (shardmetrics: shards and frontends; metrics-server: its replicas, which need two scrapes
    /// for a rate).
    pub cold_start_to_served_s: f64,
    children: Children,
    peers: Vec<MetricsServer>,
    work_dir: tempfile::TempDir,
    kubeconfig: PathBuf,
    clock: SharedClock,
}

impl std::fmt::Debug for RunningDemo {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RunningDemo").field("api", &self.api.url()).field("frontends", &self.frontends).finish_non_exhaustive()
    }
}

impl RunningDemo {
    /// The wall clock measurements against this demo read ([`DemoConfig::clock`]).
    pub fn clock(&self) -> &SharedClock {
        &self.clock
    }

    /// The user's kubeconfig (contexts [`ADMIN_CONTEXT`] and [`NOACCESS_CONTEXT`]).
    pub fn kubeconfig(&self) -> &Path {
        &self.kubeconfig
    }

    /// Where the children's logs and credentials are.
    pub fn work_dir(&self) -> &Path {
        self.work_dir.path()
    }

    /// The children still running: (name, pid), scrapers first, then metrics-server replicas.
    pub fn children(&self) -> Vec<(String, u32)> {
        let mut all = self.children.pids();
        all.extend(self.peers.iter().filter_map(|p| p.pid().map(|pid| (p.name().to_owned(), pid))));
        all
    }

    /// The kubelet server children of the simulated cluster as (name, pid), `kubelets-<i>`
    /// (empty when its kubelets are served from this process): part of the harness, like this
    /// process.
    pub fn kubelet_servers(&self) -> Vec<(String, u32)> {
        self.cluster.fleet().server_pids()
    }

    /// Names of the running metrics-server replicas, in start order.
    pub fn peer_names(&self) -> Vec<String> {
        self.peers.iter().map(|p| p.name().to_owned()).collect()
    }

    /// Kills a child at once (SIGKILL: a crash, no Lease release) and forgets it (it is not
    /// restarted); returns whether it existed. Also kills metrics-server replicas by name.
    pub async fn kill_child(&mut self, name: &str) -> bool {
        if let Some(i) = self.peers.iter().position(|p| p.name() == name) {
            let mut p = self.peers.remove(i);
            p.kill().await;
            self.sync_frontends();
            return true;
        }
        let Some(mut c) = self.children.take(name) else { return false };
        let _ = c.child.start_kill();
        let _ = c.child.wait().await;
        self.sync_frontends();
        true
    }

    /// The shards' scrape interval and the frontends' rate window.
    pub fn metric_resolution(&self) -> Duration {
        self.children.spawner.metric_resolution
    }

    /// The shards' Lease duration (how long a crashed shard's nodes wait for a new owner).
    pub fn lease_duration(&self) -> Duration {
        self.children.spawner.lease_duration.unwrap_or(DEFAULT_LEASE_DURATION)
    }

    /// The shards' `--kubelet-request-timeout`.
    pub fn kubelet_request_timeout(&self) -> Duration {
        self.children.spawner.kubelet_request_timeout
    }

    /// The frontends' `--max-staleness` if set (their default otherwise).
    pub fn frontend_max_staleness(&self) -> Option<Duration> {
        self.children.spawner.frontend_max_staleness
    }

    /// Names of the running scraper shards, in start order.
    pub fn shard_names(&self) -> Vec<String> {
        self.children.procs.iter().filter(|c| c.name.starts_with("scraper-")).map(|c| c.name.clone()).collect()
    }

    /// Names of the running frontends with their secure addresses, in start order.
    pub fn frontend_children(&self) -> Vec<(String, SocketAddr)> {
        self.children.procs.iter().filter_map(|c| c.secure.map(|a| (c.name.clone(), a))).collect()
    }

    /// A running child's plain admin address (`/readyz`, `/metrics`).
    pub fn admin_addr(&self, name: &str) -> Option<SocketAddr> {
        self.children.procs.iter().find(|c| c.name == name).map(|c| c.admin)
    }

    /// A child's log file (also after it stopped: logs are kept in [`Self::work_dir`]).
    pub fn log_path(&self, name: &str) -> PathBuf {
        self.children.spawner.log(name)
    }

    /// Stops a child gracefully (SIGTERM by pid, as [`Self::shutdown`] does; SIGKILL after
    /// 10 s), waits for it and forgets it. Returns its exit status, `None` if there was no such
    /// child.
    pub async fn stop_child_gracefully(&mut self, name: &str) -> Option<std::process::ExitStatus> {
        let mut c = self.children.take(name)?;
        let status = stop_gracefully(&mut c).await;
        self.sync_frontends();
        status
    }

    /// Puts the running frontends behind the aggregation proxy.
    fn sync_frontends(&mut self) {
        self.frontends = self.children.frontends();
        self.frontends.extend(self.peers.iter().map(MetricsServer::addr));
        self.api.set_aggregation_backends(self.frontends.clone());
    }

    /// Starts shard `scraper-{id}` with the flags every shard got at start; fails if it runs.
    pub fn start_shard(&mut self, id: usize) -> Result<String, DemoError> {
        self.children.start_shard(id)
    }

    /// Stops shard `name` gracefully (its Lease is deleted) and starts it again with the same
    /// id and flags; returns the old process's exit status.
    pub async fn restart_shard(&mut self, name: &str) -> Result<Option<std::process::ExitStatus>, DemoError> {
        let id = name
            .strip_prefix("scraper-")
            .and_then(|i| i.parse::<usize>().ok())
            .ok_or_else(|| DemoError::Io { what: format!("restarting {name}"), source: std::io::Error::other("not a shard name") })?;
        let status = self.stop_child_gracefully(name).await;
        self.start_shard(id)?;
        Ok(status)
    }

    /// Starts one more shard with the lowest id not running; returns its name.
    pub fn add_shard(&mut self) -> Result<String, DemoError> {
        let running = self.shard_names();
        let id = (0..).find(|i| !running.contains(&format!("scraper-{i}"))).unwrap_or(running.len());
        self.start_shard(id)
    }

    /// Starts one more frontend (e.g. replacing a killed one) on a new port with the flags the
    /// others got, and puts it behind the aggregation proxy; returns its name and secure
    /// address. It serves once it has the shards' snapshots (poll `/readyz` on
    /// [`Self::admin_addr`]).
    pub fn start_frontend(&mut self) -> Result<(String, SocketAddr), DemoError> {
        let started = self.children.start_frontend()?;
        self.sync_frontends();
        Ok(started)
    }

    /// A child that exited, if any: (name, status, log). Kubelet server children count too
    /// (they are not restarted: their kubelets went with them).
    pub fn exited_child(&mut self) -> Option<(String, std::process::ExitStatus, PathBuf)> {
        for p in &mut self.peers {
            if let Some(status) = p.exited() {
                return Some((p.name().to_owned(), status, p.log().to_owned()));
            }
        }
        if let Some((name, status)) = self.cluster.fleet().exited_server() {
            let log = self.log_path(&name);
            return Some((name, status, log));
        }
        self.children.exited()
    }

    /// Restarts children that died on their own after a short back-off, as their StatefulSet
    /// or Deployment would (call it periodically; the `demo` command does, twice a second).
    pub fn supervise(&mut self) -> Vec<SupervisorEvent> {
        let events = self.children.supervise();
        if !events.is_empty() {
            self.sync_frontends();
        }
        events
    }

    /// Stops the children gracefully (SIGTERM, then SIGKILL after 10 s), then the simulators.
    pub async fn shutdown(mut self) {
        for p in &mut self.peers {
            p.kill().await;
        }
        self.children.shutdown().await;
        self.api.set_aggregation_backends(Vec::new());
        self.cluster.stop().await;
    }
}

/// Entry point.
#[derive(Debug)]
pub struct Demo;

impl Demo {
    /// Starts everything and waits until every node has metrics.
    pub async fn start(config: DemoConfig) -> Result<RunningDemo, DemoError> {
        let api = ApiServer::start(ApiServerConfig { policy: cluster::standard_policy(), ..Default::default() }).await?;
        let defaults = ClusterConfig::default();
        let apps_per_namespace = match config.apps_per_namespace {
            0 => (config.nodes * config.pods_per_node / (defaults.namespaces.len() * 20)).max(3),
            n => n,
        };
        let work_dir = tempfile::Builder::new().prefix("shardmetrics-demo-").tempdir().map_err(io("creating the work directory"))?;
        let dir = work_dir.path();
        // Per kubelet, where it is served: the scrapers' keep-alive connection (two for a
        // moment when a node changes hands) or each metrics-server replica's, and a floor's.
        let clients_per_kubelet = match config.system {
            System::Shardmetrics => 2,
            System::MetricsServer { replicas } => replicas as u64 + 1,
        };
        let kubelet_servers = cluster::KubeletServers {
            command: Some(shardmetrics_sim::kubelet::servers::KubeletServerCommand {
                program: config.exe.clone(),
                args: vec!["kubelet-server".into()],
                log_dir: Some(dir.to_owned()),
            }),
            min_servers: config.kubelet_servers,
            clients_per_kubelet,
        };
        let cluster_config = ClusterConfig {
            nodes: config.nodes,
            pods_per_node: config.pods_per_node,
            containers_per_pod: config.containers_per_pod.max(1),
            memory_amplitude_percent: config.memory_amplitude_percent,
            apps_per_namespace,
            clock: config.clock.clone(),
            sample_period: config.kubelet_sample_period,
            kubelet_servers,
            ..defaults
        };
        let cluster = Cluster::start(&api, cluster_config).await?;
        let scraper_kc = dir.join("scraper.kubeconfig");
        let frontend_kc = dir.join("frontend.kubeconfig");
        api.write_kubeconfig(&scraper_kc, &[api.token_context("scraper", SCRAPER_USER)?])?;
        api.write_kubeconfig(&frontend_kc, &[api.token_context("frontend", FRONTEND_USER)?])?;
        let ca_file = api.ca().write_pem(dir, "kubelet-ca").map_err(|e| DemoError::Io {
            what: "writing the kubelet CA".into(),
            source: std::io::Error::other(e.to_string()),
        })?;
        let request_timeout = (config.metric_resolution / 2).min(Duration::from_secs(10));
        let spawner = Spawner {
            exe: config.exe.clone(),
            scraper_program: config.scraper_program.clone(),
            frontend_program: config.frontend_program.clone(),
            dir: dir.to_owned(),
            scraper_kubeconfig: scraper_kc,
            frontend_kubeconfig: frontend_kc,
            kubelet_ca: ca_file.clone(),
            kubelet_insecure_tls: config.kubelet_insecure_tls,
            resolution: flag_duration(config.metric_resolution),
            request_timeout: flag_duration(request_timeout),
            metric_resolution: config.metric_resolution,
            kubelet_request_timeout: request_timeout,
            frontend_max_staleness: config.frontend_max_staleness,
            frontend_max_requests_inflight: config.frontend_max_requests_inflight,
            frontend_tls: None,
            log_level: config.child_log_level.clone(),
            lease_duration: config.lease_duration,
            lease_renew_period: config.lease_renew_period,
        };
        let mut children = Children::new(spawner);
        let contexts: [Context; 2] =
            [api.token_context(ADMIN_CONTEXT, DEFAULT_ADMIN)?, api.token_context(NOACCESS_CONTEXT, NOACCESS_USER)?];
        api.write_kubeconfig(&config.kubeconfig, &contexts)?;
        let kubeconfig = std::path::absolute(&config.kubeconfig).unwrap_or_else(|_| config.kubeconfig.clone());
        // The peer's binary is built (or found) before the clock starts.
        let peer_setup = match config.system {
            System::Shardmetrics => None,
            System::MetricsServer { .. } => Some(peer_setup(&api, dir, &ca_file, config.metric_resolution).await?),
        };
        let cold_start = tokio::time::Instant::now();
        let mut peers = Vec::new();
        let started = match (config.system, &peer_setup) {
            (System::MetricsServer { replicas }, Some(base)) => start_peers(base, replicas, &mut peers).await,
            _ => children.start_all(config.shards, config.frontends),
        };
        let mut demo =
            RunningDemo { api, cluster, frontends: Vec::new(), system: config.system, cold_start_to_served_s: 0.0, children, peers, work_dir, kubeconfig, clock: config.clock.clone() };
        demo.sync_frontends();
        if let Err(e) = started {
            demo.shutdown().await;
            return Err(e);
        }
        if let Err(e) = wait_ready(&mut demo, config.nodes, config.ready_timeout).await {
            demo.shutdown().await;
            return Err(e);
        }
        demo.cold_start_to_served_s = cold_start.elapsed().as_secs_f64();
        Ok(demo)
    }
}

/// What every metrics-server replica is started with: its kubeconfig (the simulator's
/// [`METRICS_SERVER_USER`], also its kubelet credential), a serving certificate of its own, the
/// kubelets' CA, `--metric-resolution` and `--kubelet-request-timeout` as the shards get them.
async fn peer_setup(api: &RunningApiServer, dir: &Path, kubelet_ca: &Path, resolution: Duration) -> Result<PeerConfig, DemoError> {
    tokio::task::spawn_blocking(shardmetrics_xtask::upstream::metrics_server)
        .await
        .map_err(|e| DemoError::Io { what: "building metrics-server".into(), source: std::io::Error::other(e.to_string()) })?
        .map_err(PeerError::from)?;
    let kubeconfig = dir.join("metrics-server.kubeconfig");
    api.write_kubeconfig(&kubeconfig, &[api.token_context("metrics-server", METRICS_SERVER_USER)?])?;
    let pki = |e: shardmetrics_plumbing::pki::PkiError| DemoError::Io { what: "metrics-server's serving certificate".into(), source: std::io::Error::other(e.to_string()) };
    let ca = shardmetrics_plumbing::pki::Ca::new("metrics-server-serving-ca").map_err(pki)?;
    let serving_cert = ca.server_cert("localhost", &[]).map_err(pki)?.write_pem(dir, "metrics-server-serving").map_err(pki)?;
    Ok(PeerConfig {
        name: String::new(),
        dir: dir.to_owned(),
        kubeconfig,
        serving_cert,
        kubelet_ca: Some(kubelet_ca.to_owned()),
        metric_resolution: resolution,
        kubelet_request_timeout: (resolution / 2).min(Duration::from_secs(10)),
    })
}

/// Starts `metrics-server-0..replicas` and waits for each one's `/readyz` (it turns ready once
/// its informers synced and it scraped; serving every node is checked afterwards).
async fn start_peers(base: &PeerConfig, replicas: usize, peers: &mut Vec<MetricsServer>) -> Result<(), DemoError> {
    for i in 0..replicas {
        let config = PeerConfig { name: format!("metrics-server-{i}"), ..base.clone() };
        peers.push(MetricsServer::start(&config).await?);
    }
    let timeout = base.metric_resolution * 4 + Duration::from_secs(60);
    for p in peers.iter_mut() {
        p.wait_ready(timeout).await?;
    }
    Ok(())
}

/// Polls every frontend directly (as the admin, by bearer token, which the frontends check with
/// TokenReview) until each serves every node: a frontend that just started may still lack rates
/// while another one already has them, and kubectl's requests go to either.
async fn wait_ready(demo: &mut RunningDemo, nodes: usize, timeout: Duration) -> Result<(), DemoError> {
    use http_body_util::{BodyExt, Empty};
    let tls = shardmetrics_plumbing::pki::client_config(None, None).map_err(|e| DemoError::Io {
        what: "building a TLS client".into(),
        source: std::io::Error::other(e.to_string()),
    })?;
    let connector = hyper_rustls::HttpsConnectorBuilder::new().with_tls_config(tls).https_only().enable_http1().build();
    let client: hyper_util::client::legacy::Client<_, Empty<bytes::Bytes>> =
        hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new()).build(connector);
    let token = demo.api.policy().token_of(DEFAULT_ADMIN).unwrap_or_default().to_owned();
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        if let Some((name, status, log)) = demo.exited_child() {
            let tail = crate::peer::log_tail(&log, crate::peer::LOG_TAIL_LINES);
            return Err(DemoError::ChildExited { name, status, log: format!("{}, ending:\n{tail}", log.display()) });
        }
        let mut last = String::new();
        let mut all_ready = true;
        for frontend in &demo.frontends {
            let req = http::Request::get(format!("https://{frontend}/apis/metrics.k8s.io/v1beta1/nodes"))
                .header("authorization", format!("Bearer {token}"))
                .body(Empty::new());
            let served = match req {
                Ok(req) => match client.request(req).await {
                    Ok(resp) => match resp.into_body().collect().await {
                        Ok(body) => serde_json::from_slice::<serde_json::Value>(&body.to_bytes())
                            .ok()
                            .and_then(|v| v["items"].as_array().map(Vec::len))
                            .unwrap_or(0),
                        Err(e) => {
                            last = format!("{frontend}: {e}");
                            0
                        }
                    },
                    Err(e) => {
                        last = format!("{frontend}: {e}");
                        0
                    }
                },
                Err(e) => {
                    last = e.to_string();
                    0
                }
            };
            if served < nodes {
                all_ready = false;
                if last.is_empty() {
                    last = format!("{frontend} serves {served} of {nodes} nodes");
                }
                break;
            }
        }
        if all_ready {
            return Ok(());
        }
        if tokio::time::Instant::now() >= deadline {
            for p in &demo.peers {
                last += &format!("\n{} log ending:\n{}", p.name(), crate::peer::log_tail(p.log(), crate::peer::LOG_TAIL_LINES));
            }
            return Err(DemoError::NotReady { expected: nodes, timeout, last, logs: demo.work_dir().display().to_string() });
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use super::children::flag_duration;

    #[test]
    fn durations_are_written_as_the_flags_read_them() {
        assert_eq!(flag_duration(Duration::from_secs(15)), "15s");
        assert_eq!(flag_duration(Duration::from_millis(7500)), "7500ms");
    }

    #[test]
    fn a_role_runs_as_its_own_program_or_as_the_runners_subcommand() {
        let mut config = DemoConfig::new("/bin/runner".into());
        config.scraper_program = Some("/bin/shardmetrics-scraper".into());
        assert_eq!(config.role_command("scraper"), "/bin/shardmetrics-scraper");
        assert_eq!(config.role_command("frontend"), "/bin/runner frontend");
        assert_eq!(config.role_command("floor"), "/bin/runner floor");
        config.floor_program = Some("/bin/shardmetrics-floor".into());
        assert_eq!(config.role_command("floor"), "/bin/shardmetrics-floor");
    }
}
