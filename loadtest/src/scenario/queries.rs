//! The open-loop query load: each query kind is sent at a fixed rate on a fixed schedule (the
//! i-th request of a kind is due at `start + i / rate`), each request in its own task, and its
//! latency is measured from when it was *due*, not from when it was sent, so a stall shows up in
//! full instead of being hidden by a client that waits (coordinated omission).
//!
//! Requests go straight to the frontends, round-robin, the way the aggregation layer sends them
//! (TLS with the front-proxy client certificate, identity in `X-Remote-User`/`X-Remote-Group`),
//! or with `via_proxy` through the simulated API server's aggregation proxy with a bearer token.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use tokio::time::Instant;

use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use serde::Serialize;
use tokio::task::JoinSet;

use super::probe::Judge;
use super::stats::{Percentiles, percentiles};

/// Requests of one kind in flight at most; past it a due request is not sent and is counted in
/// [`KindStats::skipped`] (the client is saturated, which the report must show, not hide).
pub const MAX_IN_FLIGHT_PER_KIND: usize = 256;

/// How long requests still running at the end may take before they count as errors.
pub const DRAIN_TIMEOUT: Duration = Duration::from_secs(30);

/// The shape of a query.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum QueryKind {
    /// One namespace's pods with an `app=...` label selector, as an HPA asks.
    HpaSelector,
    /// Every pod in every namespace, as `kubectl top pods -A`.
    TopAllPods,
    /// One node by name.
    OneNode,
    /// Every node, as `kubectl top nodes`.
    AllNodes,
}

impl QueryKind {
    /// Every kind, in report order.
    pub const ALL: [QueryKind; 4] = [QueryKind::HpaSelector, QueryKind::TopAllPods, QueryKind::OneNode, QueryKind::AllNodes];

    /// The name used in the report.
    pub fn name(self) -> &'static str {
        match self {
            QueryKind::HpaSelector => "hpa_selector",
            QueryKind::TopAllPods => "top_all_pods",
            QueryKind::OneNode => "one_node",
            QueryKind::AllNodes => "all_nodes",
        }
    }
}

/// Response encoding the queries ask for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Encoding {
    /// `application/json`.
    Json,
    /// `application/vnd.kubernetes.protobuf`.
    Protobuf,
}

impl Encoding {
    /// The `Accept` header value.
    pub fn accept(self) -> &'static str {
        match self {
            Encoding::Json => "application/json",
            Encoding::Protobuf => "application/vnd.kubernetes.protobuf",
        }
    }
}

/// How requests reach the frontends.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Path {
    /// TLS straight to the frontends with the front-proxy client certificate.
    DirectToFrontends,
    /// Through the simulated API server's aggregation proxy.
    ViaAggregationProxy,
}

/// Where and how to send queries.
#[derive(Clone)]
pub struct Target {
    client: HttpsClient,
    /// The frontends' secure addresses, kept current by the run (a restarted frontend moves).
    pub frontends: Arc<RwLock<Vec<SocketAddr>>>,
    next: Arc<AtomicUsize>,
    proxy: Option<(String, String)>,
    encoding: Encoding,
}

type HttpsClient = hyper_util::client::legacy::Client<
    hyper_rustls::HttpsConnector<hyper_util::client::legacy::connect::HttpConnector>,
    Empty<Bytes>,
>;

/// A keep-alive HTTPS client (HTTP/1.1 or h2 by ALPN) with this TLS configuration.
pub fn https_client(tls: rustls::ClientConfig) -> HttpsClient {
    let connector = hyper_rustls::HttpsConnectorBuilder::new().with_tls_config(tls).https_only().enable_all_versions().build();
    hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new()).build(connector)
}

/// The user the queries are sent as (the demo's admin) and its groups.
const USER: &str = shardmetrics_sim::apiserver::DEFAULT_ADMIN;
const GROUPS: [&str; 2] = ["system:masters", "system:authenticated"];

impl Target {
    /// Straight to `frontends`, authenticating with `client_tls` (which carries the front-proxy
    /// client certificate).
    pub fn direct(client_tls: rustls::ClientConfig, frontends: Arc<RwLock<Vec<SocketAddr>>>, encoding: Encoding) -> Target {
        Target { client: https_client(client_tls), frontends, next: Arc::new(AtomicUsize::new(0)), proxy: None, encoding }
    }

    /// Through the aggregation proxy at `api_url` with a bearer `token`.
    pub fn via_proxy(tls: rustls::ClientConfig, api_url: String, token: String, encoding: Encoding) -> Target {
        Target {
            client: https_client(tls),
            frontends: Arc::new(RwLock::new(Vec::new())),
            next: Arc::new(AtomicUsize::new(0)),
            proxy: Some((api_url, token)),
            encoding,
        }
    }

    /// Which path requests take.
    pub fn path(&self) -> Path {
        if self.proxy.is_some() { Path::ViaAggregationProxy } else { Path::DirectToFrontends }
    }

    /// GETs `path_and_query` (`/apis/metrics.k8s.io/...`) with this target's encoding,
    /// reading and discarding the body; its length in bytes.
    pub async fn get_len(&self, path_and_query: &str) -> Result<usize, String> {
        self.request(path_and_query, self.encoding, false).await.map(|(n, _)| n)
    }

    /// GETs `path_and_query` asking for `encoding`, reading and discarding the body; its
    /// length in bytes, else what went wrong.
    pub async fn get_len_as(&self, path_and_query: &str, encoding: Encoding) -> Result<usize, String> {
        self.request(path_and_query, encoding, false).await.map(|(n, _)| n)
    }

    /// GETs `path_and_query` asking for `encoding`; the body of a 200, else what went wrong.
    /// Straight to the frontends, a frontend that refuses the connection is skipped for the
    /// next one, as the aggregation proxy does.
    pub async fn get_as(&self, path_and_query: &str, encoding: Encoding) -> Result<Bytes, String> {
        self.request(path_and_query, encoding, true).await.map(|(_, frames)| join_frames(frames))
    }

    /// [`Target::get_len`] keeping the body as the frames it arrived in (nothing copied while
    /// the request is timed; join them later, off the clock, with [`join_frames`]).
    pub async fn get_frames(&self, path_and_query: &str) -> Result<(usize, Vec<Bytes>), String> {
        self.request(path_and_query, self.encoding, true).await
    }

    async fn request(&self, path_and_query: &str, encoding: Encoding, keep: bool) -> Result<(usize, Vec<Bytes>), String> {
        if let Some((api, token)) = &self.proxy {
            let req = http::Request::get(format!("{api}{path_and_query}"))
                .header("accept", encoding.accept())
                .header("authorization", format!("Bearer {token}"))
                .body(Empty::new())
                .map_err(|e| e.to_string())?;
            return Self::read(self.client.request(req).await, keep).await;
        }
        let list = self.frontends.read().unwrap_or_else(|p| p.into_inner()).clone();
        if list.is_empty() {
            return Err("no frontend".into());
        }
        let first = self.next.fetch_add(1, Ordering::Relaxed);
        let mut last = String::new();
        for i in 0..list.len() {
            let frontend = list[(first + i) % list.len()];
            let mut req = http::Request::get(format!("https://{frontend}{path_and_query}"))
                .header("accept", encoding.accept())
                .header("x-remote-user", USER);
            for g in GROUPS {
                req = req.header("x-remote-group", g);
            }
            let req = req.body(Empty::new()).map_err(|e| e.to_string())?;
            match self.client.request(req).await {
                Err(e) if e.is_connect() => last = format!("transport: {e}"),
                other => return Self::read(other, keep).await,
            }
        }
        Err(last)
    }

    /// The body of a 200 (its frames kept as they came, or only counted), else what went wrong.
    async fn read(
        resp: Result<http::Response<hyper::body::Incoming>, hyper_util::client::legacy::Error>,
        keep: bool,
    ) -> Result<(usize, Vec<Bytes>), String> {
        let resp = resp.map_err(|e| format!("transport: {e}"))?;
        let status = resp.status();
        let mut body = resp.into_body();
        let mut kept = Vec::new();
        let mut len = 0;
        while let Some(frame) = body.frame().await {
            if let Ok(data) = frame.map_err(|e| format!("body: {e}"))?.into_data() {
                len += data.len();
                if keep {
                    kept.push(data);
                }
            }
        }
        if status != http::StatusCode::OK {
            return Err(format!("HTTP {}", status.as_u16()));
        }
        Ok((len, kept))
    }
}

/// One contiguous body from the frames it arrived in (copied once, when there is more than one).
pub fn join_frames(frames: Vec<Bytes>) -> Bytes {
    if frames.len() <= 1 {
        return frames.into_iter().next().unwrap_or_default();
    }
    let mut joined = bytes::BytesMut::with_capacity(frames.iter().map(Bytes::len).sum());
    for f in &frames {
        joined.extend_from_slice(f);
    }
    joined.freeze()
}

/// What the queries are about: the names they pick from.
#[derive(Debug, Clone)]
pub struct Universe {
    /// Namespaces with pods.
    pub namespaces: Vec<String>,
    /// `app` labels per namespace (`app-0` ..).
    pub apps_per_namespace: usize,
    /// Node names.
    pub nodes: Vec<String>,
}

impl Universe {
    /// The `i`-th request of `kind`: spread over namespaces, apps and nodes.
    pub fn path(&self, kind: QueryKind, i: u64) -> String {
        const BASE: &str = "/apis/metrics.k8s.io/v1beta1";
        let i = i as usize;
        match kind {
            QueryKind::HpaSelector => {
                let ns = self.namespaces.get(i % self.namespaces.len().max(1)).map_or("default", String::as_str);
                let app = (i / self.namespaces.len().max(1)) % self.apps_per_namespace.max(1);
                format!("{BASE}/namespaces/{ns}/pods?labelSelector=app%3Dapp-{app}")
            }
            QueryKind::TopAllPods => format!("{BASE}/pods"),
            QueryKind::OneNode => match self.nodes.get(i.wrapping_mul(7919) % self.nodes.len().max(1)) {
                Some(n) => format!("{BASE}/nodes/{n}"),
                None => format!("{BASE}/nodes"),
            },
            QueryKind::AllNodes => format!("{BASE}/nodes"),
        }
    }
}

/// Raw results of one kind.
#[derive(Debug, Default)]
struct KindSamples {
    /// (second of the measurement it was due in, latency ms) of successes.
    ok: Vec<(u32, f64)>,
    bytes: u64,
    errors: BTreeMap<String, u64>,
    skipped: u64,
}

/// Latency, size and errors of one query kind over the measurement.
#[derive(Debug, Clone, Serialize, Default)]
pub struct KindStats {
    /// Requests planned per second (`--*-queries-per-sec`).
    pub planned_per_second: f64,
    /// Requests answered 200 per second of measurement.
    pub ok_per_second: f64,
    /// Requests answered 200.
    pub ok: u64,
    /// Failed requests (non-200 or transport error).
    pub errors: u64,
    /// Failed requests by reason (`HTTP 503`, `transport: ...`; at most 8 reasons kept).
    pub error_reasons: BTreeMap<String, u64>,
    /// Due requests not sent because [`MAX_IN_FLIGHT_PER_KIND`] were already in flight.
    pub skipped: u64,
    /// Latency from when the request was due to the last body byte, ms.
    pub latency_ms: Percentiles,
    /// Response bytes, total.
    pub bytes_total: u64,
    /// Response bytes, mean per successful request.
    pub bytes_mean: u64,
}

/// Latency of one kind in one second of the measurement (for the chart).
#[derive(Debug, Clone, Serialize)]
pub struct KindSecond {
    /// Seconds into the measurement.
    pub t_s: u32,
    /// Median latency of the requests due in that second, ms.
    pub p50_ms: f64,
    /// 99th percentile, ms.
    pub p99_ms: f64,
}

/// Collects results from the request tasks.
#[derive(Debug, Clone)]
pub struct Recorder {
    inner: Arc<Mutex<BTreeMap<QueryKind, KindSamples>>>,
    measure_from: Instant,
}

impl Recorder {
    /// Counts requests due at or after `measure_from` (earlier ones are warm-up).
    pub fn new(measure_from: Instant) -> Recorder {
        Recorder { inner: Arc::default(), measure_from }
    }

    fn with<R>(&self, kind: QueryKind, f: impl FnOnce(&mut KindSamples) -> R) -> R {
        let mut map = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        f(map.entry(kind).or_default())
    }

    fn second(&self, due: Instant) -> Option<u32> {
        due.checked_duration_since(self.measure_from).map(|d| d.as_secs() as u32)
    }

    /// One finished request, due at `due`.
    pub fn record(&self, kind: QueryKind, due: Instant, result: Result<usize, String>) {
        let Some(second) = self.second(due) else { return };
        let latency_ms = due.elapsed().as_secs_f64() * 1000.0;
        self.with(kind, |s| match result {
            Ok(bytes) => {
                s.ok.push((second, latency_ms));
                s.bytes += bytes as u64;
            }
            Err(reason) => {
                let reason = if s.errors.len() >= 8 && !s.errors.contains_key(&reason) { "other".to_owned() } else { reason };
                *s.errors.entry(reason).or_default() += 1;
            }
        });
    }

    /// A due request that was not sent.
    pub fn skipped(&self, kind: QueryKind, due: Instant) {
        if self.second(due).is_some() {
            self.with(kind, |s| s.skipped += 1);
        }
    }

    /// Per-kind statistics and per-second latencies over `measured_s` seconds.
    pub fn finish(&self, planned: &BTreeMap<QueryKind, f64>, measured_s: f64) -> (BTreeMap<String, KindStats>, BTreeMap<String, Vec<KindSecond>>) {
        let map = std::mem::take(&mut *self.inner.lock().unwrap_or_else(|p| p.into_inner()));
        let mut stats = BTreeMap::new();
        let mut series = BTreeMap::new();
        for (kind, rate) in planned {
            let s = map.get(kind);
            let mut lat: Vec<f64> = s.map(|s| s.ok.iter().map(|(_, l)| *l).collect()).unwrap_or_default();
            let ok = lat.len() as u64;
            let bytes = s.map_or(0, |s| s.bytes);
            let errors = s.map_or(BTreeMap::new(), |s| s.errors.clone());
            stats.insert(
                kind.name().to_owned(),
                KindStats {
                    planned_per_second: *rate,
                    ok_per_second: ok as f64 / measured_s.max(1e-9),
                    ok,
                    errors: errors.values().sum(),
                    error_reasons: errors,
                    skipped: s.map_or(0, |s| s.skipped),
                    latency_ms: percentiles(&mut lat),
                    bytes_total: bytes,
                    bytes_mean: bytes.checked_div(ok).unwrap_or(0),
                },
            );
            let mut by_second: BTreeMap<u32, Vec<f64>> = BTreeMap::new();
            for (sec, l) in s.map(|s| s.ok.as_slice()).unwrap_or_default() {
                by_second.entry(*sec).or_default().push(*l);
            }
            let points = by_second
                .into_iter()
                .map(|(t_s, mut v)| {
                    let p = percentiles(&mut v);
                    KindSecond { t_s, p50_ms: p.p50, p99_ms: p.p99 }
                })
                .collect();
            series.insert(kind.name().to_owned(), points);
        }
        (stats, series)
    }
}

/// Sends `kind` at `rate` per second from `window.start` until `window.end`, then waits for the requests in
/// flight (at most [`DRAIN_TIMEOUT`]; the rest are aborted and counted as errors).
///
/// With `judge`, an answer's body is also kept and handed to it once the request is recorded
/// (its time is not the query's), one answer at a time (see [`Judge`]): the pod coverage probe
/// riding on `kubectl top`'s lists instead of asking for lists of its own.
pub async fn generate(kind: QueryKind, rate: f64, window: std::ops::Range<Instant>, target: Target, universe: Arc<Universe>, recorder: Recorder, judge: Option<Judge>) {
    let (start, end) = (window.start, window.end);
    if rate <= 0.0 || !rate.is_finite() {
        return;
    }
    let limit = Arc::new(tokio::sync::Semaphore::new(MAX_IN_FLIGHT_PER_KIND));
    // Requests sent and not yet recorded: what the drain's timeout counts as unfinished (a task
    // may still be judging an answer it has already recorded).
    let unrecorded = Arc::new(AtomicUsize::new(0));
    let mut tasks = JoinSet::new();
    let mut i: u64 = 0;
    loop {
        let due = start + Duration::from_secs_f64(i as f64 / rate);
        if due >= end {
            break;
        }
        tokio::time::sleep_until(due).await;
        while tasks.try_join_next().is_some() {}
        let n = i;
        i += 1;
        let Ok(permit) = limit.clone().try_acquire_owned() else {
            recorder.skipped(kind, due);
            continue;
        };
        let (target, universe, recorder, unrecorded) = (target.clone(), universe.clone(), recorder.clone(), unrecorded.clone());
        let judging = judge.as_ref().and_then(|j| j.begin().map(|judging| (j.clone(), judging)));
        unrecorded.fetch_add(1, Ordering::Relaxed);
        tasks.spawn(async move {
            let path = universe.path(kind, n);
            match judging {
                None => {
                    recorder.record(kind, due, target.get_len(&path).await);
                    unrecorded.fetch_sub(1, Ordering::Relaxed);
                }
                Some((judge, judging)) => {
                    let result = target.get_frames(&path).await;
                    recorder.record(kind, due, result.as_ref().map(|(len, _)| *len).map_err(Clone::clone));
                    unrecorded.fetch_sub(1, Ordering::Relaxed);
                    drop(permit);
                    judge.finish(judging, result.map(|(_, frames)| frames)).await;
                    return;
                }
            }
            drop(permit);
        });
    }
    let drained = tokio::time::timeout(DRAIN_TIMEOUT, async { while tasks.join_next().await.is_some() {} }).await;
    if drained.is_err() {
        let left = unrecorded.load(Ordering::Relaxed);
        tasks.abort_all();
        for _ in 0..left {
            recorder.record(kind, end, Err("unfinished at the end".into()));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn universe() -> Universe {
        Universe { namespaces: vec!["a".into(), "b".into()], apps_per_namespace: 3, nodes: vec!["n0".into(), "n1".into()] }
    }

    #[test]
    fn paths_spread_over_namespaces_apps_and_nodes() {
        let u = universe();
        let hpa: std::collections::BTreeSet<String> = (0..6).map(|i| u.path(QueryKind::HpaSelector, i)).collect();
        assert_eq!(hpa.len(), 6, "{hpa:?}");
        assert!(hpa.contains("/apis/metrics.k8s.io/v1beta1/namespaces/b/pods?labelSelector=app%3Dapp-2"));
        assert_eq!(u.path(QueryKind::TopAllPods, 3), "/apis/metrics.k8s.io/v1beta1/pods");
        let nodes: std::collections::BTreeSet<String> = (0..4).map(|i| u.path(QueryKind::OneNode, i)).collect();
        assert_eq!(nodes.len(), 2);
    }

    #[test]
    fn the_recorder_drops_warmup_and_measures_from_the_due_time() {
        let now = Instant::now();
        let r = Recorder::new(now);
        r.record(QueryKind::OneNode, now.checked_sub(Duration::from_secs(1)).unwrap(), Ok(10));
        r.record(QueryKind::OneNode, now.checked_sub(Duration::from_millis(0)).unwrap(), Ok(100));
        r.record(QueryKind::OneNode, now, Err("HTTP 503".into()));
        r.skipped(QueryKind::OneNode, now);
        let planned = [(QueryKind::OneNode, 2.0), (QueryKind::AllNodes, 1.0)].into_iter().collect();
        let (stats, series) = r.finish(&planned, 2.0);
        let s = &stats["one_node"];
        assert_eq!((s.ok, s.errors, s.skipped, s.bytes_total), (1, 1, 1, 100), "{s:?}");
        assert_eq!(s.error_reasons["HTTP 503"], 1);
        assert_eq!(stats["all_nodes"].ok, 0);
        assert_eq!(series["one_node"].len(), 1);
    }

    #[tokio::test]
    async fn the_schedule_is_open_loop() {
        // No frontend: every request fails at once, but the schedule still sends them all.
        let tls = shardmetrics_plumbing::pki::client_config(None, None).unwrap();
        let target = Target::direct(tls, Arc::new(RwLock::new(Vec::new())), Encoding::Json);
        let start = Instant::now();
        let r = Recorder::new(start);
        generate(QueryKind::AllNodes, 20.0, start..start + Duration::from_millis(500), target, Arc::new(universe()), r.clone(), None).await;
        let (stats, _) = r.finish(&[(QueryKind::AllNodes, 20.0)].into_iter().collect(), 0.5);
        assert_eq!(stats["all_nodes"].errors, 10);
        assert_eq!(stats["all_nodes"].error_reasons["no frontend"], 10);
    }
}
