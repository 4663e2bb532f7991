//! The kubelet simulator: many kubelets, each an HTTPS server on its own loopback port serving
//! `/metrics/resource` for the pods on its node.
//!
//! - Processes: a [`KubeletFleet`] serves its kubelets from this process, or (built with
//!   [`KubeletFleet::with_servers`]) has child processes hold their listeners and connections
//!   and forward each request to it ([`servers`]): every kubelet's state (usage, faults,
//!   counters, request log) stays here either way, so what a test or report reads is the same.
//! - Certificates: every kubelet presents one serving certificate from the simulator CA (SANs
//!   `127.0.0.1`, `localhost`); one certificate for thousands of listeners keeps start-up fast.
//! - Authentication: a bearer token, judged by a [`TokenCheck`] (the [`crate::cluster::Cluster`]
//!   asks the API server's policy whether the token's user may `get nodes/metrics`, as a real
//!   kubelet's webhook authorizer does), or a client certificate signed by the configured CA.
//!   No credentials: 401; a known user without the right: 403.
//! - Usage: see [`usage`]; the body: see [`exposition`].
//! - Faults per node: [`Fault`].
//! - Accounting: every authenticated `/metrics/resource` request is counted per node, with its
//!   arrival time, so tests can check that each node is scraped once per resolution.

pub mod exposition;
pub mod servers;
pub mod usage;

use std::collections::{BTreeMap, VecDeque};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use bytes::Bytes;
use futures::StreamExt;
use http::{Request, Response, StatusCode, header};
use http_body_util::{BodyExt, StreamBody};
use hyper::body::{Frame, Incoming};
use shardmetrics_plumbing::clock::SharedClock;
use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::httputil::{Body, BoxError, response};
use shardmetrics_plumbing::pki::{self, Ca, CertKey};
pub use usage::{ContainerUsage, NodeUsage};

/// Errors starting kubelets.
#[derive(Debug, thiserror::Error)]
pub enum KubeletError {
    /// Binding a listener failed (file descriptors exhausted, most likely).
    #[error("binding a kubelet listener: {0}")]
    Bind(#[source] std::io::Error),
    /// A kubelet for this node already runs.
    #[error("a kubelet for node {0:?} already runs")]
    Duplicate(String),
    /// TLS setup failed.
    #[error(transparent)]
    Pki(#[from] pki::PkiError),
    /// A kubelet server child (see [`servers`]) failed to start, answer or stay up.
    #[error("kubelet server {server}: {message}")]
    Server {
        /// Which child (`kubelets-<i>`).
        server: String,
        /// What went wrong.
        message: String,
    },
}

/// What a kubelet does wrong, per node.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Fault {
    /// Answers correctly.
    #[default]
    None,
    /// Answers correctly after this delay.
    Slow(Duration),
    /// Accepts the request and never answers.
    Timeout,
    /// Answers 500 Internal Server Error.
    Http500,
    /// Answers 200 with a body that is not the exposition format.
    Garbage,
    /// Sends half of the correct body, then breaks the connection.
    Truncated,
    /// Answers 200 with a valid body padded with comment lines to at least this many bytes.
    Oversized(usize),
}

/// A token's fate at a kubelet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TokenVerdict {
    /// The token's user may read node metrics.
    Allowed,
    /// The token is valid but its user may not read node metrics (403).
    Forbidden,
    /// The token is not known (401).
    Unknown,
}

/// Judges bearer tokens. Asynchronous, because a kubelet of a real cluster asks the API server
/// (TokenReview, then SubjectAccessReview): see [`crate::node_agent`].
pub type TokenCheck = Arc<dyn Fn(&str) -> futures::future::BoxFuture<'static, TokenVerdict> + Send + Sync>;

/// A [`TokenCheck`] from a synchronous judgement (policies held in memory).
pub fn sync_token_check(check: impl Fn(&str) -> TokenVerdict + Send + Sync + 'static) -> TokenCheck {
    Arc::new(move |t| Box::pin(futures::future::ready(check(t))))
}

/// A [`TokenCheck`] accepting exactly `tokens`.
pub fn fixed_tokens(tokens: &[&str]) -> TokenCheck {
    let tokens: Vec<String> = tokens.iter().map(|t| (*t).to_owned()).collect();
    sync_token_check(move |t| if tokens.iter().any(|k| k == t) { TokenVerdict::Allowed } else { TokenVerdict::Unknown })
}

/// How the fleet runs.
#[derive(Clone)]
pub struct FleetConfig {
    /// The certificate every kubelet presents.
    pub serving_cert: CertKey,
    /// Client certificates signed by this CA are accepted (like kubelet `--client-ca-file`).
    pub client_ca: Option<Arc<Ca>>,
    /// Judges bearer tokens.
    pub token_check: TokenCheck,
    /// Wall clock for sample timestamps.
    pub clock: SharedClock,
    /// Sample timestamps are rounded down to a multiple of this (cAdvisor's housekeeping
    /// interval); zero means the request time.
    pub sample_period: Duration,
    /// Request times kept per node for [`SimKubelet::request_times`].
    pub request_log: usize,
}

impl std::fmt::Debug for FleetConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FleetConfig").field("sample_period", &self.sample_period).finish_non_exhaustive()
    }
}

impl FleetConfig {
    /// Kubelets with a serving certificate from `ca`, judging tokens with `token_check`, on the
    /// system clock.
    pub fn new(ca: &Ca, token_check: TokenCheck) -> Result<FleetConfig, KubeletError> {
        Ok(FleetConfig {
            serving_cert: ca.server_cert("kubelet", &[])?,
            client_ca: None,
            token_check,
            clock: shardmetrics_plumbing::clock::system(),
            sample_period: Duration::ZERO,
            request_log: 256,
        })
    }
}

/// Counters of one kubelet.
#[derive(Debug, Default)]
pub struct KubeletStats {
    /// Authenticated `/metrics/resource` requests (each one a scrape), at either path.
    pub scrapes: AtomicU64,
    /// Of `scrapes`, those at kwok's per-node path `/metrics/nodes/<node>/metrics/resource`
    /// (what a Node's `metrics.k8s.io/resource-metrics-path` annotation points scrapers to).
    pub kwok_path_scrapes: AtomicU64,
    /// Requests refused with 401 or 403.
    pub refused: AtomicU64,
    /// `/metrics/resource` requests answered but not counted in `scrapes` nor logged, because
    /// they came with [`UNCOUNTED_USER_AGENT`].
    pub uncounted: AtomicU64,
}

/// `User-Agent` of a client whose `/metrics/resource` requests are answered like any other but
/// are neither scrapes nor in the request log behind duplicate detection: a measuring client
/// (the scenario's floor) that fetches beside the scrapers during a measured window.
pub const UNCOUNTED_USER_AGENT: &str = "shardmetrics-loadtest-uncounted";

/// One simulated kubelet.
pub struct SimKubelet {
    node: String,
    addr: SocketAddr,
    usage: Mutex<NodeUsage>,
    fault: Mutex<Fault>,
    log: Mutex<VecDeque<i64>>,
    /// Counters.
    pub stats: KubeletStats,
    config: Arc<FleetConfig>,
    shutdown: watch::Sender<bool>,
    /// The child process holding its listener, when it is not served from this process.
    server: Option<Arc<servers::ServerHandle>>,
    /// Set by the first [`SimKubelet::stop`].
    stopped: std::sync::atomic::AtomicBool,
}

impl std::fmt::Debug for SimKubelet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SimKubelet").field("node", &self.node).field("addr", &self.addr).finish_non_exhaustive()
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl SimKubelet {
    /// The node it serves.
    pub fn node(&self) -> &str {
        &self.node
    }

    /// Its address (`127.0.0.1:<port>`).
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Its port (what goes into `status.daemonEndpoints.kubeletEndpoint.Port`).
    pub fn port(&self) -> u16 {
        self.addr.port()
    }

    /// Sets the fault mode.
    pub fn set_fault(&self, fault: Fault) {
        *lock(&self.fault) = fault;
    }

    /// The fault mode.
    pub fn fault(&self) -> Fault {
        *lock(&self.fault)
    }

    /// Scrapes served (authenticated `/metrics/resource` requests, whatever the fault).
    pub fn scrapes(&self) -> u64 {
        self.stats.scrapes.load(Ordering::Relaxed)
    }

    /// Arrival times (Unix ms) of the most recent scrapes, oldest first.
    pub fn request_times(&self) -> Vec<i64> {
        lock(&self.log).iter().copied().collect()
    }

    /// Runs `f` on the usage model (add pods, restart containers, ask true values).
    pub fn with_usage<R>(&self, f: impl FnOnce(&mut NodeUsage) -> R) -> R {
        f(&mut lock(&self.usage))
    }

    /// Adds or replaces a pod now. `containers` pairs behaviour with start time (Unix ms).
    pub fn upsert_pod(&self, namespace: &str, name: &str, containers: Vec<(ContainerUsage, i64)>) {
        let now = self.config.clock.now_ms();
        lock(&self.usage).upsert_pod(now, namespace, name, containers);
    }

    /// Removes a pod now; returns whether it was there.
    pub fn remove_pod(&self, namespace: &str, name: &str) -> bool {
        let now = self.config.clock.now_ms();
        lock(&self.usage).remove_pod(now, namespace, name)
    }

    /// Restarts a container now (new start time, counter from zero); returns whether it exists.
    pub fn restart_container(&self, namespace: &str, pod: &str, container: &str) -> bool {
        let now = self.config.clock.now_ms();
        lock(&self.usage).restart_container(now, namespace, pod, container)
    }

    /// The pods it reports, as (namespace, name).
    pub fn pods(&self) -> Vec<(String, String)> {
        lock(&self.usage).pods.keys().cloned().collect()
    }

    /// True average CPU of a container over `[t1_ms, t2_ms]`, in cores (`None` if unknown or
    /// not running at one rate for the whole window).
    pub fn true_container_cpu(&self, namespace: &str, pod: &str, container: &str, t1_ms: i64, t2_ms: i64) -> Option<f64> {
        let usage = lock(&self.usage);
        let c = usage.container(namespace, pod, container)?;
        (t2_ms > t1_ms && c.segment_ms <= t1_ms).then(|| (c.cpu_ns(t2_ms) - c.cpu_ns(t1_ms)) as f64 / ((t2_ms - t1_ms) as f64 * 1e6))
    }

    /// True memory working set of a container at `t_ms`, in bytes.
    pub fn true_container_memory(&self, namespace: &str, pod: &str, container: &str, t_ms: i64) -> Option<u64> {
        lock(&self.usage).container(namespace, pod, container).map(|c| c.memory_bytes(t_ms))
    }

    /// True average node CPU over `[t1_ms, t2_ms]`, in cores.
    pub fn true_node_cpu(&self, t1_ms: i64, t2_ms: i64) -> f64 {
        lock(&self.usage).cpu_cores_between(t1_ms, t2_ms)
    }

    /// True node memory working set at `t_ms`, in bytes.
    pub fn true_node_memory(&self, t_ms: i64) -> u64 {
        lock(&self.usage).memory_bytes(t_ms)
    }

    /// The body a successful scrape at `t_ms` returns.
    pub fn render(&self, t_ms: i64) -> String {
        exposition::render(&lock(&self.usage), t_ms)
    }

    /// Stops serving (the port refuses connections afterwards; its open connections close).
    pub fn stop(&self) {
        if self.stopped.swap(true, Ordering::AcqRel) {
            return;
        }
        match &self.server {
            Some(server) => server.close(&self.node, self.addr.port()),
            None => {
                let _ = self.shutdown.send(true);
            }
        }
    }

    /// Name of the kubelet server child holding its listener (`None`: this process).
    pub fn server(&self) -> Option<&str> {
        self.server.as_deref().map(servers::ServerHandle::name)
    }

    fn sample_time(&self) -> i64 {
        let now = self.config.clock.now_ms();
        let period = self.config.sample_period.as_millis() as i64;
        if period > 0 { now - now.rem_euclid(period) } else { now }
    }
}

fn text(status: StatusCode, body: &'static str) -> Response<Body> {
    response(status, "text/plain; charset=utf-8", body)
}

/// Ok, or the refusal's status and body. `client_cert`: the connection presented a client
/// certificate that rustls verified against the client CA.
async fn authenticate(k: &SimKubelet, client_cert: bool, req: &Request<Incoming>) -> Result<(), (StatusCode, &'static str)> {
    if let Some(auth) = req.headers().get(header::AUTHORIZATION) {
        let token = auth.to_str().ok().and_then(|a| a.strip_prefix("Bearer ")).map(str::trim).unwrap_or("");
        return match (k.config.token_check)(token).await {
            TokenVerdict::Allowed => Ok(()),
            TokenVerdict::Forbidden => {
                Err((StatusCode::FORBIDDEN, "Forbidden (user=unknown, verb=get, resource=nodes, subresource=metrics)"))
            }
            TokenVerdict::Unknown => Err((StatusCode::UNAUTHORIZED, "Unauthorized")),
        };
    }
    // rustls verified any presented certificate against the client CA.
    if k.config.client_ca.is_some() && client_cert {
        return Ok(());
    }
    Err((StatusCode::UNAUTHORIZED, "Unauthorized"))
}

/// Answers one request to kubelet `k`, whichever process accepted its connection.
pub(crate) async fn handle(k: Arc<SimKubelet>, client_cert: bool, req: Request<Incoming>) -> Response<Body> {
    if let Err((status, body)) = authenticate(&k, client_cert, &req).await {
        k.stats.refused.fetch_add(1, Ordering::Relaxed);
        return text(status, body);
    }
    let kwok_path = match req.uri().path() {
        "/healthz" => return text(StatusCode::OK, "ok"),
        "/metrics/resource" => false,
        p if p.strip_prefix("/metrics/nodes/").and_then(|r| r.strip_suffix("/metrics/resource")) == Some(k.node.as_str()) => true,
        _ => return text(StatusCode::NOT_FOUND, "404 page not found\n"),
    };
    if req.method() != http::Method::GET {
        return text(StatusCode::METHOD_NOT_ALLOWED, "Method Not Allowed\n");
    }
    if req.headers().get(header::USER_AGENT).is_some_and(|ua| ua == UNCOUNTED_USER_AGENT) {
        k.stats.uncounted.fetch_add(1, Ordering::Relaxed);
    } else {
        k.stats.scrapes.fetch_add(1, Ordering::Relaxed);
        if kwok_path {
            k.stats.kwok_path_scrapes.fetch_add(1, Ordering::Relaxed);
        }
        let mut log = lock(&k.log);
        log.push_back(k.config.clock.now_ms());
        while log.len() > k.config.request_log {
            log.pop_front();
        }
    }
    let fault = k.fault();
    match fault {
        // Never answers; the connection is closed when the client gives up or at shutdown.
        Fault::Timeout => return std::future::pending::<Response<Body>>().await,
        Fault::Http500 => return text(StatusCode::INTERNAL_SERVER_ERROR, "Internal Server Error: failed to get cAdvisor stats\n"),
        Fault::Garbage => {
            let body: &'static [u8] = b"<html><body>\x00\xff\xfe not prometheus {{{ \"oops\" = } 12 34\n\x01\x02";
            return response(StatusCode::OK, exposition::CONTENT_TYPE, Bytes::from_static(body));
        }
        Fault::Slow(delay) => tokio::time::sleep(delay).await,
        Fault::None | Fault::Truncated | Fault::Oversized(_) => {}
    }
    let body = Bytes::from(k.render(k.sample_time()));
    match fault {
        Fault::Truncated => {
            let half = body.slice(..body.len() / 2);
            // Headers and the first half go out; a moment later the connection breaks.
            let stream = futures::stream::once(async move { Ok::<_, BoxError>(Frame::data(half)) }).chain(futures::stream::once(async {
                tokio::time::sleep(Duration::from_millis(20)).await;
                Err::<Frame<Bytes>, BoxError>("simulated connection loss mid-body".into())
            }));
            let mut resp = Response::new(BodyExt::boxed(StreamBody::new(stream)));
            resp.headers_mut().insert(header::CONTENT_TYPE, http::HeaderValue::from_static(exposition::CONTENT_TYPE));
            resp
        }
        Fault::Oversized(size) => {
            const PAD: &[u8] = b"# padding padding padding padding padding padding padding padding padding padding padding\n";
            let chunk = Bytes::from(PAD.repeat(64 * 1024 / PAD.len()));
            let chunks = size.saturating_sub(body.len()).div_ceil(chunk.len());
            let stream = futures::stream::iter(
                std::iter::once(body).chain(std::iter::repeat_n(chunk, chunks)).map(|c| Ok::<_, BoxError>(Frame::data(c))),
            );
            let mut resp = Response::new(BodyExt::boxed(StreamBody::new(stream)));
            resp.headers_mut().insert(header::CONTENT_TYPE, http::HeaderValue::from_static(exposition::CONTENT_TYPE));
            resp
        }
        _ => response(StatusCode::OK, exposition::CONTENT_TYPE, body),
    }
}

/// The kubelets of a fleet, by node name (shared with the forwarding endpoint of
/// [`servers`]).
pub(crate) type Kubelets = Arc<RwLock<BTreeMap<String, Arc<SimKubelet>>>>;

/// Many kubelets, served from this process or from kubelet server children ([`servers`]).
pub struct KubeletFleet {
    config: Arc<FleetConfig>,
    tls: Arc<rustls::ServerConfig>,
    kubelets: Kubelets,
    /// The kubelet server children, when the kubelets are not served from this process.
    servers: Option<servers::Servers>,
}

impl std::fmt::Debug for KubeletFleet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KubeletFleet").field("kubelets", &self.len()).field("servers", &self.server_pids().len()).finish_non_exhaustive()
    }
}

impl KubeletFleet {
    /// A fleet with no kubelets yet, serving them from this process.
    pub fn new(config: FleetConfig) -> Result<KubeletFleet, KubeletError> {
        let tls = Arc::new(pki::server_config(&config.serving_cert, config.client_ca.as_deref(), true)?);
        Ok(KubeletFleet { config: Arc::new(config), tls, kubelets: Arc::new(RwLock::new(BTreeMap::new())), servers: None })
    }

    /// A fleet with no kubelets yet whose listeners and connections `count` kubelet server
    /// children started with `command` hold (see [`servers`]); each new kubelet goes to the
    /// child with the fewest. Returns once every child is connected.
    pub async fn with_servers(config: FleetConfig, command: &servers::KubeletServerCommand, count: usize) -> Result<KubeletFleet, KubeletError> {
        let mut fleet = KubeletFleet::new(config)?;
        let links = (0..count).map(|i| servers::spawn(command, i)).collect::<Result<Vec<_>, _>>()?;
        fleet.servers = Some(servers::Servers::start(&fleet.config, fleet.kubelets.clone(), links).await?);
        Ok(fleet)
    }

    /// Starts a kubelet for `node` on a free loopback port, booted now with the given overhead
    /// (millicores, bytes) and no pods.
    pub async fn start(&self, node: &str, overhead_millicores: u64, overhead_memory_bytes: u64) -> Result<Arc<SimKubelet>, KubeletError> {
        if self.get(node).is_some() {
            return Err(KubeletError::Duplicate(node.to_owned()));
        }
        let (listener, addr, server) = match &self.servers {
            None => {
                let listener = TcpListener::bind(("127.0.0.1", 0)).await.map_err(KubeletError::Bind)?;
                let addr = listener.local_addr().map_err(KubeletError::Bind)?;
                (Some(listener), addr, None)
            }
            Some(servers) => {
                let (server, port) = servers.open(node).await?;
                (None, SocketAddr::from(([127, 0, 0, 1], port)), Some(server))
            }
        };
        let (shutdown, shutdown_rx) = watch::channel(false);
        let kubelet = Arc::new(SimKubelet {
            node: node.to_owned(),
            addr,
            usage: Mutex::new(NodeUsage {
                swap_accounted: usage::node_swap_capacity_bytes(node).is_some(),
                ..NodeUsage::new(self.config.clock.now_ms(), overhead_millicores, overhead_memory_bytes)
            }),
            fault: Mutex::new(Fault::None),
            log: Mutex::new(VecDeque::new()),
            stats: KubeletStats::default(),
            config: self.config.clone(),
            shutdown,
            server,
            stopped: std::sync::atomic::AtomicBool::new(false),
        });
        {
            let mut map = self.kubelets.write().unwrap_or_else(|p| p.into_inner());
            if map.contains_key(node) {
                drop(map);
                kubelet.stop();
                return Err(KubeletError::Duplicate(node.to_owned()));
            }
            map.insert(node.to_owned(), kubelet.clone());
        }
        if let Some(listener) = listener {
            let served = kubelet.clone();
            tokio::spawn(crate::httputil::serve_tls(listener, self.tls.clone(), shutdown_rx, move |peer, req| {
                handle(served.clone(), !peer.client_certs.is_empty(), req)
            }));
        }
        Ok(kubelet)
    }

    /// Stops and forgets the kubelet of `node`; returns it if it existed.
    pub fn stop(&self, node: &str) -> Option<Arc<SimKubelet>> {
        let k = self.kubelets.write().unwrap_or_else(|p| p.into_inner()).remove(node)?;
        k.stop();
        Some(k)
    }

    /// The kubelet of `node`.
    pub fn get(&self, node: &str) -> Option<Arc<SimKubelet>> {
        self.kubelets.read().unwrap_or_else(|p| p.into_inner()).get(node).cloned()
    }

    /// The kubelet listening on `port`.
    pub fn by_port(&self, port: u16) -> Option<Arc<SimKubelet>> {
        self.kubelets.read().unwrap_or_else(|p| p.into_inner()).values().find(|k| k.port() == port).cloned()
    }

    /// Every kubelet, by node name.
    pub fn all(&self) -> Vec<Arc<SimKubelet>> {
        self.kubelets.read().unwrap_or_else(|p| p.into_inner()).values().cloned().collect()
    }

    /// Number of kubelets.
    pub fn len(&self) -> usize {
        self.kubelets.read().unwrap_or_else(|p| p.into_inner()).len()
    }

    /// Whether there are no kubelets.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The kubelet server children as (name, pid), in start order; empty when the kubelets are
    /// served from this process. Their CPU and memory are the simulator's, not the system's.
    pub fn server_pids(&self) -> Vec<(String, u32)> {
        self.servers.as_ref().map(servers::Servers::pids).unwrap_or_default()
    }

    /// A kubelet server child that exited (its kubelets with it), with how; `None` while every
    /// child runs (and always when the kubelets are served from this process).
    pub fn exited_server(&self) -> Option<(String, std::process::ExitStatus)> {
        self.servers.as_ref().and_then(servers::Servers::exited)
    }

    /// Total scrapes over all kubelets.
    pub fn total_scrapes(&self) -> u64 {
        self.all().iter().map(|k| k.scrapes()).sum()
    }

    /// `/metrics/resource` requests received in `[from_ms, to_ms)` (Unix ms), and the pairs of
    /// them that hit one kubelet closer than `min_gap_ms` apart (duplicate scrapes).
    pub fn scrape_counts(&self, from_ms: i64, to_ms: i64, min_gap_ms: i64) -> ScrapeCounts {
        let mut counts = ScrapeCounts::default();
        for k in self.all() {
            let times: Vec<i64> = k.request_times().into_iter().filter(|t| *t >= from_ms && *t < to_ms).collect();
            counts.requests += times.len() as u64;
            for w in times.windows(2).filter(|w| w[1] - w[0] < min_gap_ms) {
                counts.duplicates += 1;
                counts.duplicate_pairs.push((k.node().to_owned(), w[0], w[1]));
            }
        }
        counts.duplicate_pairs.sort_by_key(|(_, first, _)| *first);
        counts.duplicate_pairs.truncate(MAX_DUPLICATE_PAIRS);
        counts
    }

    /// The fleet's configuration.
    pub fn config(&self) -> &FleetConfig {
        &self.config
    }

    /// Stops every kubelet (and tells the kubelet server children to exit: their stdin closes,
    /// and they are killed if they are still running when the fleet is dropped).
    pub fn stop_all(&self) {
        let all = std::mem::take(&mut *self.kubelets.write().unwrap_or_else(|p| p.into_inner()));
        if let Some(servers) = &self.servers {
            servers.close_all();
        }
        for k in all.values() {
            k.stop();
        }
    }

    /// Stops every kubelet and waits until every kubelet server child has exited (killing one
    /// that has not 5 s after its stdin closed).
    pub async fn shutdown(&self) {
        self.stop_all();
        if let Some(servers) = &self.servers {
            servers.wait_exited(Duration::from_secs(5)).await;
        }
    }
}

/// Duplicate pairs kept by [`KubeletFleet::scrape_counts`] (the count goes on past it).
pub const MAX_DUPLICATE_PAIRS: usize = 20;

/// Kubelet-side scrape accounting over a time range.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ScrapeCounts {
    /// `/metrics/resource` requests received.
    pub requests: u64,
    /// Pairs of requests to one kubelet closer than the gap asked for.
    pub duplicates: u64,
    /// The first [`MAX_DUPLICATE_PAIRS`] of them, by time: node, and both arrivals (Unix ms),
    /// to tell which event caused them.
    pub duplicate_pairs: Vec<(String, i64, i64)>,
}

impl Drop for KubeletFleet {
    fn drop(&mut self) {
        self.stop_all();
    }
}
