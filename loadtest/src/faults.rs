//! Faults the `run` scenario injects into a running demo (`--fault SPEC`, repeatable).
//!
//! A spec is `KIND[=VALUE][@AT]`: `AT` is how long into the measurement the fault starts (a
//! duration like `60s`; default `0s`), `VALUE` a kind's parameter:
//!
//! | spec | what happens |
//! |---|---|
//! | `kill-shard@60s` | one scraper shard is killed (SIGKILL: its Lease is left to expire) |
//! | `restart-shard@60s` | one shard is stopped gracefully (SIGTERM: Lease deleted) and started again |
//! | `kill-frontend@60s` | one frontend is killed and a new one started |
//! | `apiserver-drop-watches@60s` | the API server breaks every watch; resumes get 410 Gone |
//! | `kubelets-failing=5%@0s` | 5 % of the kubelets misbehave (timeouts, 500s, garbage, truncated, oversized, slow) |
//! | `scale-shards=6@60s` | shards are added or removed (gracefully) to reach 6 |
//! | `overload=64@60s` | 64 clients send full pod lists as fast as they can for 10 s |
//!
//! [`inject`] performs the fault; what it measures while doing so (e.g. how long a new frontend
//! took to serve complete data) comes back in [`Injected`]:
//!
//! | kind | measured |
//! |---|---|
//! | shard faults (kill, restart, scale) | over a Lease duration + 2 resolutions through the proxy: `max_node_age_ms`, `min_nodes_served_count`, `all_nodes_rescraped_ms` (every node has a sample newer than the fault), `duplicate_scrapes_count` (two kubelet requests of a node < resolution/2 apart) |
//! | restart-shard | also `stop_ms`, `exit_success_count`, `lease_left_after_stop_count` (0: deleted on shutdown), `lease_back_ms` |
//! | scale-shards | also `ring_moved_*` (what the ring moves) and `moved_nodes_count`/`moved_fraction` (what the shards' owned-node gauges gained), `owned_nodes_after_count` |
//! | kill-frontend | `frontend_ready_ms` (`/readyz` 200), `frontend_ready_with_complete_data_ms` (every node and every pod with CPU rates, asked directly) |
//! | apiserver-drop-watches | `watches_dropped_count`, `watch_410_gone_count`, `relists_count`, `watches_reopened_ms`, plus the shard-fault staleness figures |
//! | kubelets-failing | `targets` name each node and its fault; `failing_nodes_count` |
//! | overload | `ok_count`, `429_with_retry_after_count`, `429_without_retry_after_count`, `other_status_count`, `transport_error_count`, `max_latency_ms`, `frontends_ready_after_count`, `frontends_kept_ingesting_count` |

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::str::FromStr;
use std::sync::atomic::Ordering;
use std::time::Duration;

use bytes::Bytes;
use http::StatusCode;
use http_body_util::{BodyExt, Empty};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use shardmetrics_plumbing::clock::SharedClock;
use shardmetrics_scraper::ring::Ring;
use tokio::task::JoinHandle;

use shardmetrics_sim::apiserver::resources::LEASES;
use crate::demo::{LEASE_NAMESPACE, RunningDemo};
use crate::scenario::procstat::{parse_exposition, sum_of};
use shardmetrics_sim::kubelet::{Fault, KubeletFleet};

/// One fault of a scenario.
#[derive(Debug, Clone, PartialEq)]
pub enum FaultKind {
    /// SIGKILL one scraper shard (no Lease release).
    KillShard,
    /// SIGTERM one shard (Lease deleted on shutdown), then start it again with the same id.
    RestartShard,
    /// SIGKILL one frontend, then start a new one.
    KillFrontend,
    /// The API server closes every watch and forgets its history (resumes get 410 Gone).
    DropWatches,
    /// This percentage of the kubelets (0-100) misbehave in a mix of ways.
    KubeletsFailing(f64),
    /// Add or gracefully remove shards until this many run.
    ScaleShards(usize),
    /// This many clients list every pod as fast as they can for a while.
    Overload(usize),
}

/// A fault and when it starts.
#[derive(Debug, Clone, PartialEq)]
pub struct FaultSpec {
    /// What.
    pub kind: FaultKind,
    /// How long into the measurement.
    pub at: Duration,
}

/// Why a spec or an injection failed.
#[derive(Debug, thiserror::Error)]
pub enum FaultError {
    /// The spec does not parse.
    #[error("--fault {spec:?}: {why} (kinds: kill-shard, restart-shard, kill-frontend, apiserver-drop-watches, kubelets-failing=P%, scale-shards=N, overload=N; then optional @DURATION)")]
    Spec {
        /// The spec as given.
        spec: String,
        /// What is wrong with it.
        why: String,
    },
    /// The demo has nothing the fault could act on (e.g. no shard left to kill).
    #[error("cannot inject {fault}: {why}")]
    Inapplicable {
        /// The fault.
        fault: String,
        /// Why not.
        why: String,
    },
    /// The measuring HTTP client could not be built.
    #[error("building the probe client: {0}")]
    Client(String),
    /// Starting a replacement process or another demo operation failed.
    #[error(transparent)]
    Demo(#[from] crate::demo::DemoError),
}

/// What an injection did and measured.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct FaultOutcome {
    /// The spec, as text.
    pub fault: String,
    /// When it was injected, seconds into the measurement.
    pub at_s: f64,
    /// What it acted on (process names, node names, counts).
    pub targets: Vec<String>,
    /// Measurements, by name (units in the name: `_ms`, `_s`, `_count`).
    pub measured: BTreeMap<String, f64>,
}

/// An injected fault: its outcome so far, plus measurements still being taken (awaited at the
/// end of the run and merged into [`FaultOutcome::measured`]).
#[derive(Debug)]
pub struct Injected {
    /// What is known at injection time.
    pub outcome: FaultOutcome,
    /// Measurements that finish later (e.g. a restarted frontend's time to complete data).
    pub pending: Option<JoinHandle<BTreeMap<String, f64>>>,
}

impl FromStr for FaultSpec {
    type Err = FaultError;

    fn from_str(spec: &str) -> Result<FaultSpec, FaultError> {
        let bad = |why: &str| FaultError::Spec { spec: spec.to_owned(), why: why.to_owned() };
        let (body, at) = match spec.split_once('@') {
            Some((body, at)) => (body, shardmetrics_plumbing::duration::parse(at).map_err(|_| bad("the time after @ is not a duration like 60s"))?),
            None => (spec, Duration::ZERO),
        };
        let (name, value) = match body.split_once('=') {
            Some((n, v)) => (n.trim(), Some(v.trim())),
            None => (body.trim(), None),
        };
        let count = |v: Option<&str>| -> Result<usize, FaultError> {
            v.ok_or_else(|| bad("needs =N"))?.parse::<usize>().map_err(|_| bad("N must be a whole number"))
        };
        let kind = match name {
            "kill-shard" | "restart-shard" | "kill-frontend" | "apiserver-drop-watches" if value.is_some() => {
                return Err(bad("takes no =value"));
            }
            "kill-shard" => FaultKind::KillShard,
            "restart-shard" => FaultKind::RestartShard,
            "kill-frontend" => FaultKind::KillFrontend,
            "apiserver-drop-watches" => FaultKind::DropWatches,
            "kubelets-failing" => {
                let v = value.ok_or_else(|| bad("needs =P%"))?;
                let p: f64 = v.strip_suffix('%').unwrap_or(v).parse().map_err(|_| bad("P must be a number"))?;
                if !(0.0..=100.0).contains(&p) {
                    return Err(bad("P must be between 0 and 100"));
                }
                FaultKind::KubeletsFailing(p)
            }
            "scale-shards" => {
                let n = count(value)?;
                if n == 0 {
                    return Err(bad("at least one shard must remain"));
                }
                FaultKind::ScaleShards(n)
            }
            "overload" => {
                let n = count(value)?;
                if n == 0 {
                    return Err(bad("at least one client"));
                }
                FaultKind::Overload(n)
            }
            _ => return Err(bad("unknown kind")),
        };
        Ok(FaultSpec { kind, at })
    }
}

impl std::fmt::Display for FaultSpec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.kind {
            FaultKind::KillShard => write!(f, "kill-shard")?,
            FaultKind::RestartShard => write!(f, "restart-shard")?,
            FaultKind::KillFrontend => write!(f, "kill-frontend")?,
            FaultKind::DropWatches => write!(f, "apiserver-drop-watches")?,
            FaultKind::KubeletsFailing(p) => write!(f, "kubelets-failing={p}%")?,
            FaultKind::ScaleShards(n) => write!(f, "scale-shards={n}")?,
            FaultKind::Overload(n) => write!(f, "overload={n}")?,
        }
        write!(f, "@{}ms", self.at.as_millis())
    }
}

/// How often the measurements poll.
const POLL: Duration = Duration::from_millis(250);
/// How long a new frontend may take to serve complete data before the measurement gives up.
const FRONTEND_DEADLINE: Duration = Duration::from_secs(30);
/// How long `overload` clients keep sending.
const OVERLOAD_FOR: Duration = Duration::from_secs(10);

type HttpsClient = hyper_util::client::legacy::Client<hyper_rustls::HttpsConnector<HttpConnector>, Empty<Bytes>>;
type HttpClient = hyper_util::client::legacy::Client<HttpConnector, Empty<Bytes>>;

/// An HTTP response as the probes see it.
#[derive(Debug, Clone)]
pub struct Reply {
    /// Status code.
    pub status: StatusCode,
    /// `Retry-After`, if sent.
    pub retry_after: Option<String>,
    /// The whole body.
    pub body: Bytes,
}

/// What one list of `metrics.k8s.io` nodes showed.
#[derive(Debug, Clone, Default)]
pub struct NodesSeen {
    /// Served node name → its sample timestamp, Unix ms.
    pub timestamps: BTreeMap<String, i64>,
}

impl NodesSeen {
    /// Age of the oldest served sample at `now_ms`, in ms (0 when nothing is served).
    pub fn max_age_ms(&self, now_ms: i64) -> i64 {
        self.timestamps.values().map(|t| (now_ms - t).max(0)).max().unwrap_or(0)
    }
}

/// A client for measuring faults: `metrics.k8s.io` through the aggregation proxy or one
/// frontend directly (as the admin, by bearer token), and the children's plain admin ports.
#[derive(Clone)]
pub struct Probe {
    https: HttpsClient,
    http: HttpClient,
    token: String,
    api_url: String,
    clock: SharedClock,
}

impl std::fmt::Debug for Probe {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Probe").field("api_url", &self.api_url).finish_non_exhaustive()
    }
}

impl Probe {
    /// A probe of `demo`.
    pub fn new(demo: &RunningDemo) -> Result<Probe, FaultError> {
        let tls = shardmetrics_plumbing::pki::client_config(None, None).map_err(|e| FaultError::Client(e.to_string()))?;
        let connector = hyper_rustls::HttpsConnectorBuilder::new().with_tls_config(tls).https_only().enable_http1().build();
        let https = hyper_util::client::legacy::Client::builder(TokioExecutor::new()).build(connector);
        let http = hyper_util::client::legacy::Client::builder(TokioExecutor::new()).build(HttpConnector::new());
        let token = demo.api.policy().token_of(shardmetrics_sim::apiserver::DEFAULT_ADMIN).unwrap_or_default().to_owned();
        Ok(Probe { https, http, token, api_url: demo.api.url(), clock: demo.clock().clone() })
    }

    /// The demo's wall clock, in Unix ms (what served sample timestamps are compared with).
    pub fn now_ms(&self) -> i64 {
        self.clock.now_ms()
    }

    /// `metrics.k8s.io/v1beta1` through the aggregation proxy.
    pub fn proxy_base(&self) -> String {
        format!("{}/apis/metrics.k8s.io/v1beta1", self.api_url)
    }

    /// `metrics.k8s.io/v1beta1` of one frontend.
    pub fn frontend_base(addr: SocketAddr) -> String {
        format!("https://{addr}/apis/metrics.k8s.io/v1beta1")
    }

    /// GETs an HTTPS URL as the admin.
    pub async fn get(&self, url: &str) -> Result<Reply, String> {
        let req = http::Request::get(url)
            .header("authorization", format!("Bearer {}", self.token))
            .header("accept", "application/json")
            .body(Empty::new())
            .map_err(|e| e.to_string())?;
        let resp = self.https.request(req).await.map_err(|e| e.to_string())?;
        let status = resp.status();
        let retry_after = resp.headers().get(http::header::RETRY_AFTER).and_then(|v| v.to_str().ok()).map(str::to_owned);
        let body = resp.into_body().collect().await.map_err(|e| e.to_string())?.to_bytes();
        Ok(Reply { status, retry_after, body })
    }

    /// GETs `path` from a child's plain admin port.
    pub async fn admin(&self, addr: SocketAddr, path: &str) -> Result<Reply, String> {
        let req = http::Request::get(format!("http://{addr}{path}")).body(Empty::new()).map_err(|e| e.to_string())?;
        let resp = self.http.request(req).await.map_err(|e| e.to_string())?;
        let status = resp.status();
        let body = resp.into_body().collect().await.map_err(|e| e.to_string())?.to_bytes();
        Ok(Reply { status, retry_after: None, body })
    }

    /// The sum of every series of counter/gauge `name` on a child's `/metrics`.
    pub async fn metric_sum(&self, addr: SocketAddr, name: &str) -> Result<f64, String> {
        let r = self.admin(addr, "/metrics").await?;
        if r.status != StatusCode::OK {
            return Err(format!("/metrics: HTTP {}", r.status));
        }
        Ok(metric_sum(&String::from_utf8_lossy(&r.body), name))
    }

    /// Lists nodes under `base` (see [`Self::proxy_base`], [`Self::frontend_base`]).
    pub async fn nodes(&self, base: &str) -> Result<NodesSeen, String> {
        let r = self.get(&format!("{base}/nodes")).await?;
        if r.status != StatusCode::OK {
            return Err(format!("HTTP {}", r.status));
        }
        let v: serde_json::Value = serde_json::from_slice(&r.body).map_err(|e| e.to_string())?;
        let mut seen = NodesSeen::default();
        for item in v["items"].as_array().map(Vec::as_slice).unwrap_or_default() {
            let name = item["metadata"]["name"].as_str().unwrap_or_default().to_owned();
            if let Some(ts) = item["timestamp"].as_str().and_then(|t| t.parse::<jiff::Timestamp>().ok()) {
                seen.timestamps.insert(name, ts.as_millisecond());
            }
        }
        Ok(seen)
    }

    /// Lists pods under `base`: (pods served, pods whose every container has a CPU rate).
    pub async fn pods_with_rates(&self, base: &str) -> Result<(usize, usize), String> {
        let r = self.get(&format!("{base}/pods")).await?;
        if r.status != StatusCode::OK {
            return Err(format!("HTTP {}", r.status));
        }
        let v: serde_json::Value = serde_json::from_slice(&r.body).map_err(|e| e.to_string())?;
        let items = v["items"].as_array().map(Vec::as_slice).unwrap_or_default();
        let with_rates = items
            .iter()
            .filter(|p| {
                p["containers"]
                    .as_array()
                    .is_some_and(|cs| !cs.is_empty() && cs.iter().all(|c| c["usage"]["cpu"].as_str().is_some_and(|q| !q.is_empty())))
            })
            .count();
        Ok((items.len(), with_rates))
    }
}

/// Sums every sample of metric `name` in Prometheus text (read by the scenario's one parser,
/// [`parse_exposition`]).
pub fn metric_sum(text: &str, name: &str) -> f64 {
    sum_of(&parse_exposition(text), name)
}

/// Scrapes of one node closer than `half_ms` to the previous one, all kubelets together, counted
/// over requests at or after `since_ms`.
pub fn duplicate_scrapes(fleet: &KubeletFleet, since_ms: i64, half_ms: i64) -> u64 {
    fleet.scrape_counts(since_ms, i64::MAX, half_ms).duplicates
}

/// Watches the nodes served through the proxy from the fault on (`fault_ms`) for `window`:
/// the oldest sample seen, the fewest nodes served, and how long until every node had a sample
/// taken after the fault (i.e. was scraped again, by whichever shard owns it now).
async fn observe_recovery(probe: Probe, nodes: usize, fault_ms: i64, window: Duration, out: &mut BTreeMap<String, f64>) {
    let base = probe.proxy_base();
    let start = tokio::time::Instant::now();
    let mut max_age = 0i64;
    let mut min_served = usize::MAX;
    let mut rescraped: Option<f64> = None;
    let mut errors = 0u64;
    while start.elapsed() < window {
        match probe.nodes(&base).await {
            Ok(seen) => {
                let now = probe.now_ms();
                max_age = max_age.max(seen.max_age_ms(now));
                min_served = min_served.min(seen.timestamps.len());
                if rescraped.is_none() && seen.timestamps.len() >= nodes && seen.timestamps.values().all(|t| *t > fault_ms) {
                    rescraped = Some((now - fault_ms) as f64);
                }
            }
            Err(_) => errors += 1,
        }
        tokio::time::sleep(POLL).await;
    }
    out.insert("max_node_age_ms".into(), max_age as f64);
    out.insert("min_nodes_served_count".into(), if min_served == usize::MAX { 0.0 } else { min_served as f64 });
    out.insert("probe_errors_count".into(), errors as f64);
    match rescraped {
        Some(ms) => out.insert("all_nodes_rescraped_ms".into(), ms),
        None => out.insert("all_nodes_rescraped_timeout_count".into(), 1.0),
    };
}

/// How long shard faults are observed: a Lease duration, two resolutions and some slack (at most
/// 55 s: the runner waits 60 s for pending measurements).
fn recovery_window(demo: &RunningDemo) -> Duration {
    (demo.lease_duration() + demo.metric_resolution() * 2 + Duration::from_secs(3)).min(Duration::from_secs(55))
}

/// Each shard's `shardmetrics_scraper_owned_nodes`, by name (shards whose /metrics fail are left out).
async fn owned_nodes(probe: &Probe, demo: &RunningDemo) -> BTreeMap<String, f64> {
    let mut owned = BTreeMap::new();
    for name in demo.shard_names() {
        if let Some(addr) = demo.admin_addr(&name)
            && let Ok(n) = probe.metric_sum(addr, "shardmetrics_scraper_owned_nodes").await
        {
            owned.insert(name, n);
        }
    }
    owned
}

/// The kubelet faults `kubelets-failing` hands out, in turn.
fn kubelet_fault_mix(request_timeout: Duration, max_response_bytes: usize) -> [(Fault, &'static str); 6] {
    [
        (Fault::Timeout, "timeout"),
        (Fault::Http500, "http-500"),
        (Fault::Garbage, "garbage"),
        (Fault::Truncated, "truncated"),
        (Fault::Oversized(max_response_bytes + (1 << 20)), "oversized"),
        // Slow but within the request timeout: late, yet still fresh.
        (Fault::Slow(request_timeout / 3), "slow"),
    ]
}

/// The scraper's `--kubelet-max-response-bytes` default (the demo keeps it).
const SCRAPER_MAX_RESPONSE_BYTES: usize = 16 << 20;

/// Which of `nodes` (sorted) `percent` % picks: evenly spread, the same every time.
pub fn pick_nodes(nodes: &[String], percent: f64) -> Vec<String> {
    let n = nodes.len();
    let count = ((n as f64) * percent / 100.0).round() as usize;
    let count = if percent > 0.0 { count.max(1) } else { 0 }.min(n);
    (0..count).filter_map(|i| nodes.get(i * n / count.max(1)).cloned()).collect()
}

/// Injects `spec` into `demo`, `at_s` seconds into the measurement.
pub async fn inject(spec: &FaultSpec, demo: &mut RunningDemo, at_s: f64) -> Result<Injected, FaultError> {
    let mut outcome = FaultOutcome { fault: spec.to_string(), at_s, ..Default::default() };
    let inapplicable = |why: &str| FaultError::Inapplicable { fault: spec.to_string(), why: why.to_owned() };
    let probe = Probe::new(demo)?;
    let nodes = demo.cluster.node_names().len();
    let half_ms = (demo.metric_resolution().as_millis() / 2) as i64;
    match &spec.kind {
        FaultKind::KillShard => {
            let name = demo.shard_names().into_iter().next().ok_or_else(|| inapplicable("no scraper shard is running"))?;
            let fault_ms = probe.now_ms();
            demo.kill_child(&name).await;
            outcome.targets.push(name);
            let window = recovery_window(demo);
            let fleet = demo.cluster.fleet().clone();
            let pending = tokio::spawn(async move {
                let mut m = BTreeMap::new();
                observe_recovery(probe, nodes, fault_ms, window, &mut m).await;
                m.insert("duplicate_scrapes_count".into(), duplicate_scrapes(&fleet, fault_ms, half_ms) as f64);
                m
            });
            Ok(Injected { outcome, pending: Some(pending) })
        }
        FaultKind::RestartShard => {
            let name = demo.shard_names().into_iter().next().ok_or_else(|| inapplicable("no scraper shard is running"))?;
            let store = demo.api.store().clone();
            let lease_name = name.clone();
            let uid_of = move |store: &shardmetrics_sim::apiserver::store::Store| {
                store
                    .get(LEASES, LEASE_NAMESPACE, &lease_name)
                    .ok()
                    .map(|l| l.value()["metadata"]["uid"].as_str().unwrap_or_default().to_owned())
            };
            let old_uid = uid_of(&store);
            let fault_ms = probe.now_ms();
            let started = tokio::time::Instant::now();
            let status = demo.stop_child_gracefully(&name).await;
            let stop_ms = started.elapsed().as_secs_f64() * 1000.0;
            let lease_left = uid_of(&store).is_some();
            let id = name.strip_prefix("scraper-").and_then(|i| i.parse::<usize>().ok()).ok_or_else(|| inapplicable("shard name without an id"))?;
            demo.start_shard(id)?;
            outcome.targets.push(name);
            outcome.measured.insert("stop_ms".into(), stop_ms);
            outcome.measured.insert("exit_success_count".into(), if status.is_some_and(|s| s.success()) { 1.0 } else { 0.0 });
            outcome.measured.insert("lease_left_after_stop_count".into(), if lease_left { 1.0 } else { 0.0 });
            let window = recovery_window(demo);
            let fleet = demo.cluster.fleet().clone();
            let pending = tokio::spawn(async move {
                let mut m = BTreeMap::new();
                let lease_wait = async {
                    while uid_of(&store).is_none_or(|uid| Some(&uid) == old_uid.as_ref()) {
                        if started.elapsed() > window {
                            return None;
                        }
                        tokio::time::sleep(Duration::from_millis(50)).await;
                    }
                    Some(started.elapsed().as_secs_f64() * 1000.0)
                };
                let mut recovery = BTreeMap::new();
                let (lease_back, ()) = tokio::join!(lease_wait, observe_recovery(probe, nodes, fault_ms, window, &mut recovery));
                m.extend(recovery);
                match lease_back {
                    Some(ms) => m.insert("lease_back_ms".into(), ms),
                    None => m.insert("lease_back_timeout_count".into(), 1.0),
                };
                m.insert("duplicate_scrapes_count".into(), duplicate_scrapes(&fleet, fault_ms, half_ms) as f64);
                m
            });
            Ok(Injected { outcome, pending: Some(pending) })
        }
        FaultKind::KillFrontend => {
            let (name, _) = demo.frontend_children().into_iter().next().ok_or_else(|| inapplicable("no frontend is running"))?;
            demo.kill_child(&name).await;
            let started = tokio::time::Instant::now();
            let (new_name, addr) = demo.start_frontend()?;
            let admin = demo.admin_addr(&new_name).ok_or_else(|| inapplicable("the new frontend has no admin address"))?;
            outcome.targets.push(name);
            outcome.targets.push(new_name);
            let pods = demo.api.store().count(shardmetrics_sim::apiserver::resources::PODS);
            let pending = tokio::spawn(async move {
                let mut m = BTreeMap::new();
                let base = Probe::frontend_base(addr);
                let mut ready = None;
                let mut complete = None;
                while started.elapsed() < FRONTEND_DEADLINE && complete.is_none() {
                    if ready.is_none() && probe.admin(admin, "/readyz").await.is_ok_and(|r| r.status == StatusCode::OK) {
                        ready = Some(started.elapsed());
                    }
                    if ready.is_some()
                        && probe.nodes(&base).await.is_ok_and(|n| n.timestamps.len() >= nodes)
                        && probe.pods_with_rates(&base).await.is_ok_and(|(served, rated)| served >= pods && rated >= pods)
                    {
                        complete = Some(started.elapsed());
                    }
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
                match ready {
                    Some(d) => m.insert("frontend_ready_ms".into(), d.as_secs_f64() * 1000.0),
                    None => m.insert("frontend_ready_timeout_count".into(), 1.0),
                };
                match complete {
                    Some(d) => m.insert("frontend_ready_with_complete_data_ms".into(), d.as_secs_f64() * 1000.0),
                    None => m.insert("frontend_complete_data_timeout_count".into(), 1.0),
                };
                m
            });
            Ok(Injected { outcome, pending: Some(pending) })
        }
        FaultKind::DropWatches => {
            let stats = demo.api.stats();
            let (lists0, gone0, dropped0, started0) = (
                stats.lists.load(Ordering::Relaxed),
                stats.watches_gone.load(Ordering::Relaxed),
                stats.watches_dropped.load(Ordering::Relaxed),
                stats.watches_started.load(Ordering::Relaxed),
            );
            let fault_ms = probe.now_ms();
            let open = demo.api.drop_watches_and_compact();
            outcome.targets.push(format!("{open} open watches"));
            outcome.measured.insert("watches_open_before_count".into(), open as f64);
            let api = demo.api.stats_handle();
            let window = recovery_window(demo);
            let fleet = demo.cluster.fleet().clone();
            let pending = tokio::spawn(async move {
                let mut m = BTreeMap::new();
                let started = tokio::time::Instant::now();
                let mut reopened = None;
                let mut recovery = BTreeMap::new();
                let reopen = async {
                    while started.elapsed() < window {
                        let s = &api;
                        if s.watches_started.load(Ordering::Relaxed) >= started0 + open.max(0) as u64
                            && s.watches_open.load(Ordering::Relaxed) >= open
                        {
                            reopened = Some(started.elapsed().as_secs_f64() * 1000.0);
                            return;
                        }
                        tokio::time::sleep(Duration::from_millis(50)).await;
                    }
                };
                tokio::join!(reopen, observe_recovery(probe, nodes, fault_ms, window, &mut recovery));
                m.extend(recovery);
                let s = &api;
                m.insert("watches_dropped_count".into(), s.watches_dropped.load(Ordering::Relaxed).saturating_sub(dropped0) as f64);
                m.insert("watch_410_gone_count".into(), s.watches_gone.load(Ordering::Relaxed).saturating_sub(gone0) as f64);
                m.insert("relists_count".into(), s.lists.load(Ordering::Relaxed).saturating_sub(lists0) as f64);
                m.insert("duplicate_scrapes_count".into(), duplicate_scrapes(&fleet, fault_ms, half_ms) as f64);
                match reopened {
                    Some(ms) => m.insert("watches_reopened_ms".into(), ms),
                    None => m.insert("watches_reopened_timeout_count".into(), 1.0),
                };
                m
            });
            Ok(Injected { outcome, pending: Some(pending) })
        }
        FaultKind::KubeletsFailing(percent) => {
            let mut names = demo.cluster.node_names();
            names.sort();
            let picked = pick_nodes(&names, *percent);
            let mix = kubelet_fault_mix(demo.kubelet_request_timeout(), SCRAPER_MAX_RESPONSE_BYTES);
            for (i, node) in picked.iter().enumerate() {
                let (fault, label) = mix[i % mix.len()];
                if let Some(k) = demo.cluster.kubelet(node) {
                    k.set_fault(fault);
                    outcome.targets.push(format!("{node}={label}"));
                }
            }
            outcome.measured.insert("failing_nodes_count".into(), picked.len() as f64);
            Ok(Injected { outcome, pending: None })
        }
        FaultKind::ScaleShards(target) => {
            let before_owned = owned_nodes(&probe, demo).await;
            let before: Vec<String> = demo.shard_names();
            let fault_ms = probe.now_ms();
            let mut added = Vec::new();
            let mut removed = Vec::new();
            while demo.shard_names().len() < *target {
                added.push(demo.add_shard()?);
            }
            while demo.shard_names().len() > *target {
                let Some(last) = demo.shard_names().pop() else { break };
                demo.stop_child_gracefully(&last).await;
                removed.push(last);
            }
            outcome.targets.extend(added.iter().map(|n| format!("+{n}")));
            outcome.targets.extend(removed.iter().map(|n| format!("-{n}")));
            // Nodes that should move under the ring (only those of removed shards, or those the
            // added shards take): the ground truth the observed gauges are compared with.
            let after: Vec<String> = demo.shard_names();
            let (ring_before, ring_after) = (Ring::new(before.iter().cloned()), Ring::new(after.iter().cloned()));
            let node_names = demo.cluster.node_names();
            let expected_moves =
                node_names.iter().filter(|n| ring_before.owner(n) != ring_after.owner(n)).count();
            outcome.measured.insert("ring_moved_nodes_count".into(), expected_moves as f64);
            outcome.measured.insert("ring_moved_fraction".into(), expected_moves as f64 / nodes.max(1) as f64);
            let window = recovery_window(demo);
            let settle = (demo.lease_duration() + demo.metric_resolution()).min(window);
            let fleet = demo.cluster.fleet().clone();
            let admins: Vec<(String, SocketAddr)> =
                after.iter().filter_map(|n| demo.admin_addr(n).map(|a| (n.clone(), a))).collect();
            let pending = tokio::spawn(async move {
                let mut m = BTreeMap::new();
                // Observed moves, read once membership has settled (a Lease duration and a
                // resolution after the change, before any later fault): nodes each surviving or
                // new shard gained.
                let gauges = async {
                    tokio::time::sleep(settle).await;
                    let mut gained = 0.0;
                    let mut total_after = 0.0;
                    for (name, addr) in &admins {
                        if let Ok(now) = probe.metric_sum(*addr, "shardmetrics_scraper_owned_nodes").await {
                            total_after += now;
                            gained += (now - before_owned.get(name).copied().unwrap_or(0.0)).max(0.0);
                        }
                    }
                    (gained, total_after)
                };
                let ((gained, total_after), ()) = tokio::join!(gauges, observe_recovery(probe.clone(), nodes, fault_ms, window, &mut m));
                m.insert("moved_nodes_count".into(), gained);
                m.insert("moved_fraction".into(), gained / nodes.max(1) as f64);
                m.insert("owned_nodes_after_count".into(), total_after);
                m.insert("duplicate_scrapes_count".into(), duplicate_scrapes(&fleet, fault_ms, half_ms) as f64);
                m
            });
            Ok(Injected { outcome, pending: Some(pending) })
        }
        FaultKind::Overload(clients) => {
            let frontends = demo.frontend_children();
            if frontends.is_empty() {
                return Err(inapplicable("no frontend is running"));
            }
            outcome.targets.extend(frontends.iter().map(|(n, _)| n.clone()));
            let admins: Vec<SocketAddr> = frontends.iter().filter_map(|(n, _)| demo.admin_addr(n)).collect();
            let clients = *clients;
            let pending = tokio::spawn(async move {
                let ingested = |probe: Probe, admins: Vec<SocketAddr>| async move {
                    let mut v = Vec::new();
                    for a in admins {
                        v.push(probe.metric_sum(a, "shardmetrics_frontend_upstream_scrapes_total").await.unwrap_or(-1.0));
                    }
                    v
                };
                let before = ingested(probe.clone(), admins.clone()).await;
                let started = tokio::time::Instant::now();
                let mut workers = Vec::new();
                for w in 0..clients {
                    let url = format!("{}/pods", Probe::frontend_base(frontends[w % frontends.len()].1));
                    let probe = probe.clone();
                    workers.push(tokio::spawn(async move {
                        // ok, 429 with Retry-After, 429 without, other status, transport errors, max latency ms
                        let mut c = [0u64; 5];
                        let mut max_ms = 0.0f64;
                        while started.elapsed() < OVERLOAD_FOR {
                            let t = tokio::time::Instant::now();
                            match probe.get(&url).await {
                                Ok(r) if r.status == StatusCode::OK => c[0] += 1,
                                Ok(r) if r.status == StatusCode::TOO_MANY_REQUESTS && r.retry_after.is_some() => c[1] += 1,
                                Ok(r) if r.status == StatusCode::TOO_MANY_REQUESTS => c[2] += 1,
                                Ok(_) => c[3] += 1,
                                Err(_) => c[4] += 1,
                            }
                            max_ms = max_ms.max(t.elapsed().as_secs_f64() * 1000.0);
                        }
                        (c, max_ms)
                    }));
                }
                let mut c = [0u64; 5];
                let mut max_ms = 0.0f64;
                for w in workers {
                    if let Ok((wc, wm)) = w.await {
                        for (a, b) in c.iter_mut().zip(wc) {
                            *a += b;
                        }
                        max_ms = max_ms.max(wm);
                    }
                }
                let mut m = BTreeMap::new();
                for (k, v) in ["ok", "429_with_retry_after", "429_without_retry_after", "other_status", "transport_error"].iter().zip(c) {
                    m.insert(format!("{k}_count"), v as f64);
                }
                m.insert("max_latency_ms".into(), max_ms);
                let mut ready = 0;
                for a in &admins {
                    if probe.admin(*a, "/readyz").await.is_ok_and(|r| r.status == StatusCode::OK) {
                        ready += 1;
                    }
                }
                m.insert("frontends_ready_after_count".into(), f64::from(ready));
                m.insert("frontends_count".into(), admins.len() as f64);
                let after = ingested(probe, admins).await;
                let grew = before.iter().zip(&after).filter(|(b, a)| **b >= 0.0 && **a > **b).count();
                m.insert("frontends_kept_ingesting_count".into(), grew as f64);
                m
            });
            Ok(Injected { outcome, pending: Some(pending) })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn specs_parse_with_and_without_values_and_times() {
        let s: FaultSpec = "kill-shard@60s".parse().unwrap();
        assert_eq!(s, FaultSpec { kind: FaultKind::KillShard, at: Duration::from_secs(60) });
        let s: FaultSpec = "kubelets-failing=5%".parse().unwrap();
        assert_eq!(s, FaultSpec { kind: FaultKind::KubeletsFailing(5.0), at: Duration::ZERO });
        let s: FaultSpec = "scale-shards=6@1m30s".parse().unwrap();
        assert_eq!(s, FaultSpec { kind: FaultKind::ScaleShards(6), at: Duration::from_secs(90) });
        let s: FaultSpec = "overload=64@1500ms".parse().unwrap();
        assert_eq!(s, FaultSpec { kind: FaultKind::Overload(64), at: Duration::from_millis(1500) });
        assert_eq!(s.to_string().parse::<FaultSpec>().unwrap(), s);
    }

    #[test]
    fn kubelets_are_picked_evenly_and_deterministically() {
        let nodes: Vec<String> = (0..20).map(|i| format!("node-{i:02}")).collect();
        let five = pick_nodes(&nodes, 25.0);
        assert_eq!(five, vec!["node-00", "node-04", "node-08", "node-12", "node-16"]);
        assert_eq!(pick_nodes(&nodes, 25.0), five);
        assert_eq!(pick_nodes(&nodes, 1.0).len(), 1, "a positive share picks at least one");
        assert!(pick_nodes(&nodes, 0.0).is_empty());
        assert_eq!(pick_nodes(&nodes, 100.0), nodes);
        assert!(pick_nodes(&[], 50.0).is_empty());
    }

    #[test]
    fn the_fault_mix_covers_every_kubelet_fault_and_oversizes_past_the_limit() {
        let mix = kubelet_fault_mix(Duration::from_secs(3), 1000);
        assert!(mix.iter().any(|(f, _)| matches!(f, Fault::Oversized(n) if *n > 1000)));
        assert!(mix.iter().any(|(f, _)| matches!(f, Fault::Slow(d) if *d < Duration::from_secs(3))));
        for f in [Fault::Timeout, Fault::Http500, Fault::Garbage, Fault::Truncated] {
            assert!(mix.iter().any(|(m, _)| *m == f), "{f:?}");
        }
    }

    #[test]
    fn metric_sums_add_every_series_of_exactly_that_name() {
        let text = "# HELP x_total X\nx_total{shard=\"a\"} 3\nx_total{shard=\"b\"} 4.5\nx_total_other 100\nx_total 1\n";
        assert_eq!(metric_sum(text, "x_total"), 8.5);
        assert_eq!(metric_sum(text, "missing"), 0.0);
    }

    #[test]
    fn bad_specs_say_what_is_wrong() {
        for (spec, why) in [
            ("explode", "unknown kind"),
            ("kill-shard=3", "takes no =value"),
            ("kill-shard@soon", "not a duration"),
            ("kubelets-failing", "needs =P%"),
            ("kubelets-failing=150%", "between 0 and 100"),
            ("scale-shards=0", "at least one shard"),
            ("overload=many", "whole number"),
        ] {
            let err = spec.parse::<FaultSpec>().unwrap_err().to_string();
            assert!(err.contains(why), "{spec}: {err}");
        }
    }
}
