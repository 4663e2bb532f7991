//! The floor: what fetching the kubelets' payloads costs with nothing else done.
//!
//! The hidden `shardmetrics-loadtest floor` subcommand (a child process, so its CPU is its own)
//! fetches every kubelet's `/metrics/resource` once per resolution, each node at the same phase
//! offset within the interval as the scrapers use, over keep-alive HTTP/1.1 TLS connections
//! (hyper + rustls, the same CA and bearer token as the scrapers), reads the body and discards
//! it. It first fetches every node once (connections set up, like the scrapers' long-lived
//! pool), then measures its own CPU from /proc over the timed part and prints one JSON line.
//!
//! [`start_child`] starts it as the warm-up starts; it sets its connections up then and fetches
//! for the measurement window, beside the scrapers (same machine, same load, same time: a floor
//! measured afterwards, on a quieter machine, came out 0.17-0.23 ms a fetch from run to run).
//! Its requests carry [`shardmetrics_sim::kubelet::UNCOUNTED_USER_AGENT`], so the kubelet
//! simulators answer them as any other but count them neither as scrapes nor as duplicates.
//! [`FloorChild::finish`] compares: `scraper_cpu_vs_floor` = scrapers' CPU per scrape / floor
//! CPU per fetch.
//!
//! The floor fetches one shard's share of the nodes (every S-th kubelet of S shards; every
//! kubelet when metrics-server is measured, whose replicas each scrape every node), so it
//! fetches at the rate one scraping process does. A process's CPU per fetch falls as its fetch rate
//! rises (one timer wake-up and one `epoll_wait` serve more fetches, fewer sleeps per fetch):
//! a floor fetching every node at S times a shard's rate came out cheaper per fetch than any
//! shard could be, for reasons that have nothing to do with what a shard does besides fetching.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tokio::time::Instant;

use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use serde::{Deserialize, Serialize};
use shardmetrics_plumbing::clock::SharedClock;

use super::procstat::{TICKS_PER_SECOND, proc_sample};
use super::report::FloorReport;
use crate::demo::{DemoConfig, RunningDemo};

/// Fetches in flight at once during the first round (connection set-up).
const FIRST_ROUND_CONCURRENCY: usize = 64;

/// Why the floor did not run.
#[derive(Debug, thiserror::Error)]
pub enum FloorError {
    /// Reading or writing a file failed.
    #[error("{what}: {source}")]
    Io {
        /// What was being done.
        what: String,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The inputs are unusable (no targets, an empty token, a bad CA).
    #[error("floor: {0}")]
    Input(String),
    /// The child failed or printed something unexpected.
    #[error("the floor child failed ({status}): {output}")]
    Child {
        /// How it exited.
        status: String,
        /// Its stderr, or the unexpected stdout.
        output: String,
    },
}

fn io(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> FloorError {
    let what = what.into();
    move |source| FloorError::Io { what, source }
}

/// What the floor child is told.
#[derive(Debug, Clone)]
pub struct FloorConfig {
    /// File of `NODE HOST:PORT` lines, one per kubelet to fetch (one scraping process's share).
    pub targets_file: PathBuf,
    /// PEM file of the kubelets' CA.
    pub ca_file: PathBuf,
    /// File holding the bearer token.
    pub token_file: PathBuf,
    /// Fetch interval per node.
    pub resolution: Duration,
    /// How long the timed part runs.
    pub duration: Duration,
    /// Wall clock the scrapers' phases are aligned to (the system's: they are other processes).
    pub clock: SharedClock,
    /// When the timed part starts, Unix ms on `clock` (the measurement window's start); at once
    /// after the connection round when `None` or already past.
    pub start_at_ms: Option<i64>,
}

/// What the floor child prints (one JSON line on stdout).
#[derive(Debug, Clone, Serialize, Deserialize, Default)]
pub struct FloorResult {
    /// Length of the timed part, seconds.
    pub duration_s: f64,
    /// Fetches with status 200 and the whole body read, in the timed part.
    pub fetches: u64,
    /// Failed fetches in the timed part.
    pub errors: u64,
    /// Body bytes read in the timed part.
    pub bytes: u64,
    /// CPU seconds (user + system) of the timed part.
    pub cpu_s: f64,
    /// Peak RSS, KiB.
    pub peak_rss_kib: u64,
}

/// Parses the targets file.
pub fn parse_targets(text: &str) -> Result<Vec<(String, String)>, FloorError> {
    text.lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| {
            let mut f = l.split_whitespace();
            match (f.next(), f.next(), f.next()) {
                (Some(node), Some(addr), None) if addr.parse::<std::net::SocketAddr>().is_ok() => Ok((node.to_owned(), addr.to_owned())),
                _ => Err(FloorError::Input(format!("bad target line {l:?} (want NODE HOST:PORT)"))),
            }
        })
        .collect()
}

type Client = hyper_util::client::legacy::Client<hyper_rustls::HttpsConnector<hyper_util::client::legacy::connect::HttpConnector>, Empty<Bytes>>;

async fn fetch(client: &Client, uri: &http::Uri, token: &str) -> Result<u64, String> {
    let req = http::Request::get(uri.clone())
        .header("authorization", format!("Bearer {token}"))
        .header("accept", "text/plain")
        .header("user-agent", shardmetrics_sim::kubelet::UNCOUNTED_USER_AGENT)
        .body(Empty::new())
        .map_err(|e| e.to_string())?;
    let resp = tokio::time::timeout(Duration::from_secs(10), client.request(req)).await.map_err(|_| "timeout".to_owned())?.map_err(|e| e.to_string())?;
    let ok = resp.status() == http::StatusCode::OK;
    let mut body = resp.into_body();
    let mut n = 0u64;
    while let Some(frame) = body.frame().await {
        if let Ok(data) = frame.map_err(|e| e.to_string())?.into_data() {
            n += data.len() as u64;
        }
    }
    if ok { Ok(n) } else { Err("status".into()) }
}

/// The child's work: see the module doc.
pub async fn run_floor(config: FloorConfig) -> Result<FloorResult, FloorError> {
    let targets = parse_targets(&std::fs::read_to_string(&config.targets_file).map_err(io("reading the targets file"))?)?;
    if targets.is_empty() {
        return Err(FloorError::Input("no targets".into()));
    }
    let token = std::fs::read_to_string(&config.token_file).map_err(io("reading the token file"))?.trim().to_owned();
    if token.is_empty() {
        return Err(FloorError::Input("the token file is empty".into()));
    }
    let ca = std::fs::read(&config.ca_file).map_err(io("reading the CA file"))?;
    let mut roots = rustls::RootCertStore::empty();
    let certs: Vec<_> = rustls::pki_types::pem::PemObject::pem_slice_iter(&ca).filter_map(Result::ok).collect();
    let (added, _) = roots.add_parsable_certificates(certs);
    if added == 0 {
        return Err(FloorError::Input("no certificate in the CA file".into()));
    }
    let tls = shardmetrics_plumbing::pki::client_config(Some(&roots), None).map_err(|e| FloorError::Input(e.to_string()))?;
    let mut http = hyper_util::client::legacy::connect::HttpConnector::new();
    http.enforce_http(false);
    http.set_nodelay(true);
    let https = hyper_rustls::HttpsConnectorBuilder::new().with_tls_config(tls).https_only().enable_http1().wrap_connector(http);
    let client: Client = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .pool_idle_timeout(config.resolution * 3)
        .pool_max_idle_per_host(1)
        .build(https);
    let uris: Vec<(String, http::Uri)> = targets
        .iter()
        .map(|(node, addr)| {
            format!("https://{addr}/metrics/resource").parse::<http::Uri>().map(|u| (node.clone(), u)).map_err(|e| FloorError::Input(e.to_string()))
        })
        .collect::<Result<_, _>>()?;
    let token = Arc::<str>::from(token);

    // First round: connections up.
    let sem = Arc::new(tokio::sync::Semaphore::new(FIRST_ROUND_CONCURRENCY));
    let mut first = tokio::task::JoinSet::new();
    for (_, uri) in &uris {
        let (client, uri, token, sem) = (client.clone(), uri.clone(), token.clone(), sem.clone());
        first.spawn(async move {
            let _permit = sem.acquire().await;
            let _ = fetch(&client, &uri, &token).await;
        });
    }
    while first.join_next().await.is_some() {}
    if let Some(at) = config.start_at_ms {
        let wait_ms = at.saturating_sub(config.clock.now_ms());
        if wait_ms > 0 {
            tokio::time::sleep(Duration::from_millis(wait_ms as u64)).await;
        }
    }

    // Timed part: each node at its scraper phase, once per resolution.
    let me = std::process::id();
    let cpu_before = proc_sample(me).map_or(0, |s| s.cpu_ticks);
    let start = Instant::now();
    let end = start + config.duration;
    let res_us = config.resolution.as_micros().max(1) as u64;
    let (fetches, errors, bytes) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    let now_us = config.clock.now_ms().max(0) as u64 * 1000;
    // Each node at its phase, once per resolution, in the scrapers' groups: when the first of
    // a group is due, every node due within the group window after it starts with it.
    let window = shardmetrics_scraper::schedule::DEFAULT_GROUP_WINDOW;
    let mut due: std::collections::BinaryHeap<std::cmp::Reverse<(Instant, usize)>> = uris
        .iter()
        .enumerate()
        .map(|(i, (node, _))| {
            let phase = shardmetrics_scraper::schedule::phase_offset(node, config.resolution).as_micros() as u64;
            // The next wall-clock instant at this node's phase.
            let wait_us = (phase + res_us - now_us % res_us) % res_us;
            std::cmp::Reverse((start + Duration::from_micros(wait_us), i))
        })
        .collect();
    let mut tasks = tokio::task::JoinSet::new();
    while let Some(std::cmp::Reverse((first, _))) = due.peek().copied() {
        if first >= end {
            break;
        }
        tokio::time::sleep_until(first).await;
        let until = Instant::now() + window;
        while let Some(std::cmp::Reverse((at, i))) = due.peek().copied().filter(|std::cmp::Reverse((at, _))| *at <= until && *at < end) {
            due.pop();
            due.push(std::cmp::Reverse((at + config.resolution, i)));
            let (client, uri, token, fetches, errors, bytes) =
                (client.clone(), uris[i].1.clone(), token.clone(), fetches.clone(), errors.clone(), bytes.clone());
            tasks.spawn(async move {
                match fetch(&client, &uri, &token).await {
                    Ok(n) => {
                        fetches.fetch_add(1, Ordering::Relaxed);
                        bytes.fetch_add(n, Ordering::Relaxed);
                    }
                    Err(_) => {
                        errors.fetch_add(1, Ordering::Relaxed);
                    }
                }
            });
        }
        // Reap finished fetches so the set does not grow over the run.
        while tasks.try_join_next().is_some() {}
    }
    while tasks.join_next().await.is_some() {}
    // The window is the same length whatever the phases: CPU and fetches over `duration`.
    tokio::time::sleep_until(end).await;
    let sample = proc_sample(me);
    let cpu_after = sample.map_or(cpu_before, |s| s.cpu_ticks);
    Ok(FloorResult {
        duration_s: start.elapsed().as_secs_f64(),
        fetches: fetches.load(Ordering::Relaxed),
        errors: errors.load(Ordering::Relaxed),
        bytes: bytes.load(Ordering::Relaxed),
        cpu_s: cpu_after.saturating_sub(cpu_before) as f64 / TICKS_PER_SECOND,
        peak_rss_kib: sample.map_or(0, |s| s.peak_rss_kib),
    })
}

fn write(path: &Path, text: &str) -> Result<(), FloorError> {
    std::fs::write(path, text).map_err(io(format!("writing {}", path.display())))
}

/// Name of the floor child in the report's process table (a harness process).
pub const FLOOR_NAME: &str = "floor";

/// A floor child at work (see [`start_child`]); dropping it kills the child.
pub struct FloorChild {
    /// The child's process id, for its CPU and memory to be read with the harness's.
    pid: Option<u32>,
    /// Kubelets it fetches.
    nodes: usize,
    /// How long to wait for its result after the window, at most.
    limit: Duration,
    /// The child's output, once it exits.
    output: tokio::task::JoinHandle<std::io::Result<std::process::Output>>,
}

impl Drop for FloorChild {
    fn drop(&mut self) {
        // Dropping the waiting task drops the child, which kills it (`kill_on_drop`).
        self.output.abort();
    }
}

/// Starts the floor child against the demo's kubelets: it sets its connections up at once, then
/// fetches for `duration` from `start_at_ms` (Unix ms on the demo's clock: the window's start).
pub fn start_child(demo: &RunningDemo, config: &DemoConfig, duration: Duration, start_at_ms: i64) -> Result<FloorChild, FloorError> {
    let dir = demo.work_dir();
    // One scraping process's share: a shard's (every S-th kubelet), or every kubelet for
    // metrics-server, each of whose replicas scrapes every node.
    let step = match config.system {
        crate::demo::System::Shardmetrics => config.shards.max(1),
        crate::demo::System::MetricsServer { .. } => 1,
    };
    let share: Vec<String> = demo.cluster.fleet().all().iter().step_by(step).map(|k| format!("{} {}\n", k.node(), k.addr())).collect();
    let nodes = share.len();
    let targets: String = share.concat();
    let targets_file = dir.join("floor-targets.txt");
    write(&targets_file, &targets)?;
    let token = demo.api.policy().token_of(shardmetrics_sim::cluster::SCRAPER_USER).unwrap_or_default().to_owned();
    let token_file = dir.join("floor-token");
    write(&token_file, &token)?;
    let ca_file = dir.join("floor-kubelet-ca.crt");
    write(&ca_file, demo.api.ca().cert_pem())?;
    let fmt = |d: Duration| format!("{}ms", d.as_millis());
    // Its own program (`shardmetrics-floor`, on the scraper's allocator), or this runner's
    // `floor` subcommand.
    let launch = crate::demo::children::Launch::new(&config.exe, config.floor_program.as_deref(), "floor");
    let mut cmd = tokio::process::Command::new(launch.program);
    cmd.args(launch.role)
        .arg("--targets-file")
        .arg(&targets_file)
        .arg("--ca-file")
        .arg(&ca_file)
        .arg("--token-file")
        .arg(&token_file)
        .arg("--metric-resolution")
        .arg(fmt(config.metric_resolution))
        .arg("--duration")
        .arg(fmt(duration))
        .arg("--start-at-unix-ms")
        .arg(start_at_ms.to_string())
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true);
    for key in shardmetrics_plumbing::process::shardmetrics_env_vars() {
        cmd.env_remove(key);
    }
    let child = cmd.spawn().map_err(io(format!("starting {}", launch.program.display())))?;
    let pid = child.id();
    let wait_ms = u64::try_from(start_at_ms.saturating_sub(demo.clock().now_ms())).unwrap_or(0);
    let limit = Duration::from_millis(wait_ms) + duration + config.metric_resolution + Duration::from_secs(120);
    Ok(FloorChild { pid, nodes, limit, output: tokio::spawn(child.wait_with_output()) })
}

impl FloorChild {
    /// The child's name and process id, for the harness's process table.
    pub fn process(&self) -> Option<(String, u32)> {
        self.pid.map(|pid| (FLOOR_NAME.to_owned(), pid))
    }

    /// Waits for the child's result and compares it with the scrapers' `scraper_cpu_s` over
    /// `scraper_scrapes` scrapes.
    pub async fn finish(mut self, scraper_cpu_s: f64, scraper_scrapes: f64) -> Result<FloorReport, FloorError> {
        let limit = self.limit;
        let out = tokio::time::timeout(limit, &mut self.output)
            .await
            .map_err(|_| FloorError::Child { status: "timed out".into(), output: format!("no result after {limit:?}") })?
            .map_err(|e| FloorError::Child { status: "not awaited".into(), output: e.to_string() })?
            .map_err(io("waiting for the floor child"))?;
        let stdout = String::from_utf8_lossy(&out.stdout);
        if !out.status.success() {
            return Err(FloorError::Child { status: out.status.to_string(), output: String::from_utf8_lossy(&out.stderr).into_owned() });
        }
        let result: FloorResult = stdout
            .lines()
            .rev()
            .find_map(|l| serde_json::from_str(l).ok())
            .ok_or_else(|| FloorError::Child { status: out.status.to_string(), output: stdout.clone().into_owned() })?;
        Ok(compare(&result, self.nodes, scraper_cpu_s, scraper_scrapes))
    }
}

/// The report entry: the floor's cost per fetch (fetching `nodes` kubelets) against the
/// scrapers' per scrape.
pub fn compare(r: &FloorResult, nodes: usize, scraper_cpu_s: f64, scraper_scrapes: f64) -> FloorReport {
    let floor_ms = if r.fetches == 0 { 0.0 } else { r.cpu_s * 1000.0 / r.fetches as f64 };
    let scraper_ms = if scraper_scrapes <= 0.0 { 0.0 } else { scraper_cpu_s * 1000.0 / scraper_scrapes };
    FloorReport {
        nodes,
        duration_s: r.duration_s,
        fetches: r.fetches,
        errors: r.errors,
        bytes: r.bytes,
        cpu_s: r.cpu_s,
        cpu_ms_per_fetch: floor_ms,
        scraper_cpu_ms_per_scrape: scraper_ms,
        scraper_cpu_vs_floor: (floor_ms > 0.0 && scraper_ms > 0.0).then(|| scraper_ms / floor_ms),
        peak_rss_mib: r.peak_rss_kib as f64 / 1024.0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn target_files_parse_and_bad_lines_are_named() {
        let t = parse_targets("n0 127.0.0.1:1000\n\nn1 127.0.0.1:1001\n").unwrap();
        assert_eq!(t, vec![("n0".into(), "127.0.0.1:1000".into()), ("n1".into(), "127.0.0.1:1001".into())]);
        assert!(parse_targets("n0 nowhere\n").unwrap_err().to_string().contains("nowhere"));
    }

    #[test]
    fn the_ratio_is_per_scrape_over_per_fetch() {
        let r = FloorResult { fetches: 1000, cpu_s: 1.0, ..Default::default() };
        let f = compare(&r, 50, 3.0, 1500.0);
        assert!((f.cpu_ms_per_fetch - 1.0).abs() < 1e-9);
        assert!((f.scraper_cpu_ms_per_scrape - 2.0).abs() < 1e-9);
        assert!((f.scraper_cpu_vs_floor.unwrap() - 2.0).abs() < 1e-9);
        assert_eq!(compare(&FloorResult::default(), 0, 1.0, 0.0).scraper_cpu_vs_floor, None);
    }
}
