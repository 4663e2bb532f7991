//! `shardmetrics-loadtest run`: a load-test scenario on top of the demo, with a report.
//!
//! The demo's pipeline (simulated cluster, S shards, F frontends as child processes) runs while
//! `concurrency` closed-loop clients query `metrics.k8s.io` through the aggregation proxy, as
//! kubectl and autoscalers do, with this mix:
//!
//! | share | query |
//! |---|---|
//! | 60 % | one namespace's pods by label selector (what an HPA asks) |
//! | 20 % | one node |
//! | 10 % | every node |
//! | 10 % | every pod in one namespace |
//!
//! A probe lists every node once a second and records freshness (age of the newest sample) and
//! coverage. Optionally one shard is killed (SIGKILL: no Lease release) mid-run; the report
//! then shows how long its nodes went stale. At the end the report gives throughput and latency
//! percentiles per query, freshness, kubelet scrapes (and duplicates: two scrapes of one node
//! closer than half a resolution), and CPU and memory of every component.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use serde::Serialize;

use crate::demo::{Demo, DemoConfig, DemoError, RunningDemo};

/// What a run is.
#[derive(Debug, Clone)]
pub struct ScenarioConfig {
    /// The pipeline to run.
    pub demo: DemoConfig,
    /// How long to measure after the pipeline is ready.
    pub duration: Duration,
    /// Closed-loop query clients.
    pub concurrency: usize,
    /// Kill one shard (SIGKILL) this long into the measurement.
    pub kill_shard_at: Option<Duration>,
    /// Where to write the JSON report.
    pub report: PathBuf,
    /// Show a progress bar on stderr.
    pub progress: bool,
}

/// Latency and throughput of one query kind.
#[derive(Debug, Clone, Serialize, Default)]
pub struct QueryStats {
    /// Requests answered 200.
    pub ok: u64,
    /// Requests that failed (non-200 or transport error).
    pub errors: u64,
    /// Successful requests per second.
    pub per_second: f64,
    /// Latency percentiles of successful requests, in milliseconds.
    pub p50_ms: f64,
    /// 90th percentile, ms.
    pub p90_ms: f64,
    /// 99th percentile, ms.
    pub p99_ms: f64,
    /// Slowest, ms.
    pub max_ms: f64,
    /// Mean response size, in bytes.
    pub mean_bytes: u64,
}

/// CPU and memory of one process.
#[derive(Debug, Clone, Serialize)]
pub struct ProcessStats {
    /// Component name (`scraper-0`, `frontend-1`, `simulator+clients`).
    pub name: String,
    /// Average CPU over the measurement, in cores.
    pub cpu_cores: f64,
    /// Resident memory at the end, MiB.
    pub rss_mib: f64,
    /// Peak resident memory, MiB.
    pub peak_rss_mib: f64,
}

/// The report of one run.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    /// Nodes simulated.
    pub nodes: usize,
    /// Pods simulated.
    pub pods: usize,
    /// Scraper shards.
    pub shards: usize,
    /// Frontend replicas.
    pub frontends: usize,
    /// Metric resolution, seconds.
    pub resolution_s: f64,
    /// Time from start to every node served by every frontend, seconds.
    pub startup_s: f64,
    /// Measurement length, seconds.
    pub measured_s: f64,
    /// Query clients.
    pub concurrency: usize,
    /// Per query kind.
    pub queries: BTreeMap<String, QueryStats>,
    /// Freshness of node metrics seen by the probe (age of each node's sample), ms: median.
    pub freshness_p50_ms: f64,
    /// 99th percentile, ms.
    pub freshness_p99_ms: f64,
    /// Worst, ms.
    pub freshness_max_ms: f64,
    /// Fewest nodes one probe saw (coverage; equals `nodes` when nothing went missing).
    pub min_nodes_served: usize,
    /// The shard killed, if any.
    pub killed_shard: Option<String>,
    /// After the kill: the worst node staleness the probe saw, ms (the failover gap plus one
    /// resolution).
    pub failover_max_staleness_ms: Option<f64>,
    /// Kubelet scrapes during the measurement.
    pub scrapes: u64,
    /// Scrapes per second.
    pub scrapes_per_second: f64,
    /// Scrapes expected (nodes x measured / resolution).
    pub scrapes_expected: f64,
    /// Pairs of scrapes of one node closer than half a resolution (should be ~0: one owner per
    /// node).
    pub duplicate_scrapes: u64,
    /// CPU and memory per component.
    pub processes: Vec<ProcessStats>,
}

/// What can go wrong.
#[derive(Debug, thiserror::Error)]
pub enum ScenarioError {
    /// The pipeline did not start.
    #[error(transparent)]
    Demo(#[from] DemoError),
    /// The query clients' TLS configuration failed.
    #[error(transparent)]
    Tls(#[from] crate::pki::PkiError),
    /// Writing the report failed.
    #[error("writing the report {path}: {source}")]
    Report {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
}

/// CPU ticks (user + system) and RSS/peak RSS (KiB) of a process, from /proc.
fn proc_sample(pid: u32) -> Option<(u64, u64, u64)> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the parenthesised command name; utime and stime are fields 14 and 15.
    let rest = stat.rsplit_once(')')?.1;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks = fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?;
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let kib = |key: &str| -> u64 {
        status
            .lines()
            .find(|l| l.starts_with(key))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
    };
    Some((ticks, kib("VmRSS:"), kib("VmHWM:")))
}

/// Clock ticks per second of /proc CPU times (USER_HZ; 100 on every Linux build that matters).
const TICKS_PER_SECOND: f64 = 100.0;

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let idx = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[idx.min(sorted.len() - 1)]
}

#[derive(Default)]
struct Samples {
    latencies_ms: Vec<f64>,
    bytes: u64,
    errors: u64,
}

type HttpsClient = hyper_util::client::legacy::Client<hyper_rustls::HttpsConnector<hyper_util::client::legacy::connect::HttpConnector>, Empty<Bytes>>;

async fn fetch(client: &HttpsClient, url: &str, token: &str) -> Result<Bytes, String> {
    let req = http::Request::get(url)
        .header("authorization", format!("Bearer {token}"))
        .header("accept", "application/json")
        .body(Empty::new())
        .map_err(|e| e.to_string())?;
    let resp = client.request(req).await.map_err(|e| e.to_string())?;
    let status = resp.status();
    let body = resp.into_body().collect().await.map_err(|e| e.to_string())?.to_bytes();
    if status != http::StatusCode::OK {
        return Err(format!("HTTP {status}"));
    }
    Ok(body)
}

/// Runs the scenario and writes the report.
pub async fn run(config: ScenarioConfig) -> Result<Report, ScenarioError> {
    let started = Instant::now();
    let mut demo = Demo::start(config.demo.clone()).await?;
    let startup_s = started.elapsed().as_secs_f64();
    let result = measure(&config, &mut demo, startup_s).await;
    demo.shutdown().await;
    let report = result?;
    let json = serde_json::to_string_pretty(&report).unwrap_or_default();
    std::fs::write(&config.report, json).map_err(|source| ScenarioError::Report { path: config.report.clone(), source })?;
    Ok(report)
}

async fn measure(config: &ScenarioConfig, demo: &mut RunningDemo, startup_s: f64) -> Result<Report, ScenarioError> {
    let tls = crate::pki::client_config(Some(&demo.api.ca().root_store()), None)?;
    let connector = hyper_rustls::HttpsConnectorBuilder::new().with_tls_config(tls).https_only().enable_all_versions().build();
    let client: HttpsClient = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new()).build(connector);
    let token = demo.api.policy().token_of(crate::apiserver::DEFAULT_ADMIN).unwrap_or_default().to_owned();
    let base = format!("{}/apis/metrics.k8s.io/v1beta1", demo.api.url());
    let namespaces = demo.cluster.config().namespaces.clone();
    let apps = demo.cluster.config().apps_per_namespace.max(1);
    let nodes = demo.cluster.node_names();
    let resolution = config.demo.metric_resolution;

    let scrapes_before: u64 = demo.cluster.fleet().total_scrapes();
    let mut procs: Vec<(String, u32)> = demo.children();
    procs.push(("simulator+clients".into(), std::process::id()));
    let cpu_before: Vec<Option<u64>> = procs.iter().map(|(_, pid)| proc_sample(*pid).map(|s| s.0)).collect();
    let t0 = Instant::now();
    let stop = Arc::new(AtomicBool::new(false));

    // Closed-loop query clients.
    let mut workers = Vec::new();
    for w in 0..config.concurrency.max(1) {
        let (client, token, base, namespaces, nodes, stop) =
            (client.clone(), token.clone(), base.clone(), namespaces.clone(), nodes.clone(), stop.clone());
        workers.push(tokio::spawn(async move {
            let mut samples: BTreeMap<&'static str, Samples> = BTreeMap::new();
            let mut i = w * 7919;
            while !stop.load(Ordering::Relaxed) {
                i = i.wrapping_add(1);
                let ns = &namespaces[i % namespaces.len()];
                let (kind, url) = match i % 10 {
                    0 => ("all_nodes", format!("{base}/nodes")),
                    1 => ("namespace_pods", format!("{base}/namespaces/{ns}/pods")),
                    2 | 3 => ("one_node", format!("{base}/nodes/{}", nodes[i % nodes.len()])),
                    _ => ("hpa_selector", format!("{base}/namespaces/{ns}/pods?labelSelector=app%3Dapp-{}", (i / 7) % apps)),
                };
                let start = Instant::now();
                let entry = samples.entry(kind).or_default();
                match fetch(&client, &url, &token).await {
                    Ok(body) => {
                        entry.latencies_ms.push(start.elapsed().as_secs_f64() * 1000.0);
                        entry.bytes += body.len() as u64;
                    }
                    Err(_) => entry.errors += 1,
                }
            }
            samples
        }));
    }

    // Freshness probe, progress, and the optional kill.
    let progress = config.progress.then(|| {
        let bar = indicatif::ProgressBar::new(config.duration.as_secs().max(1));
        bar.set_style(
            indicatif::ProgressStyle::with_template("{elapsed_precise} [{bar:40}] {pos}/{len}s {msg}")
                .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
        );
        bar
    });
    let mut freshness = Vec::new();
    let mut min_served = usize::MAX;
    let mut killed = None;
    let mut failover_max: Option<f64> = None;
    while t0.elapsed() < config.duration {
        tokio::time::sleep(Duration::from_secs(1)).await;
        if let (Some(at), None) = (config.kill_shard_at, &killed)
            && t0.elapsed() >= at
            && let Some((name, _)) = demo.children().into_iter().find(|(n, _)| n.starts_with("scraper-"))
        {
            demo.kill_child(&name).await;
            killed = Some(name);
            failover_max = Some(0.0);
        }
        if let Ok(body) = fetch(&client, &format!("{base}/nodes"), &token).await
            && let Ok(v) = serde_json::from_slice::<serde_json::Value>(&body)
        {
            let items = v["items"].as_array().cloned().unwrap_or_default();
            min_served = min_served.min(items.len());
            let now = jiff::Timestamp::now().as_millisecond();
            let mut worst = 0.0f64;
            for item in &items {
                if let Some(ts) = item["timestamp"].as_str().and_then(|t| t.parse::<jiff::Timestamp>().ok()) {
                    let age = (now - ts.as_millisecond()).max(0) as f64;
                    freshness.push(age);
                    worst = worst.max(age);
                }
            }
            if let Some(f) = failover_max.as_mut() {
                *f = f.max(worst);
            }
        }
        if let Some(bar) = &progress {
            bar.set_position(t0.elapsed().as_secs());
            bar.set_message(killed.as_ref().map(|k| format!("killed {k}")).unwrap_or_default());
        }
    }
    stop.store(true, Ordering::Relaxed);
    let measured = t0.elapsed().as_secs_f64();
    if let Some(bar) = progress {
        bar.finish_and_clear();
    }
    let mut merged: BTreeMap<&'static str, Samples> = BTreeMap::new();
    for w in workers {
        if let Ok(samples) = w.await {
            for (k, s) in samples {
                let m = merged.entry(k).or_default();
                m.latencies_ms.extend(s.latencies_ms);
                m.bytes += s.bytes;
                m.errors += s.errors;
            }
        }
    }
    let queries = merged
        .into_iter()
        .map(|(k, mut s)| {
            s.latencies_ms.sort_by(f64::total_cmp);
            let ok = s.latencies_ms.len() as u64;
            let stats = QueryStats {
                ok,
                errors: s.errors,
                per_second: ok as f64 / measured,
                p50_ms: percentile(&s.latencies_ms, 0.5),
                p90_ms: percentile(&s.latencies_ms, 0.9),
                p99_ms: percentile(&s.latencies_ms, 0.99),
                max_ms: s.latencies_ms.last().copied().unwrap_or(0.0),
                mean_bytes: s.bytes.checked_div(ok).unwrap_or(0),
            };
            (k.to_owned(), stats)
        })
        .collect();

    let processes = procs
        .iter()
        .zip(cpu_before)
        .filter_map(|((name, pid), before)| {
            let (ticks, rss, peak) = proc_sample(*pid)?;
            let cpu = before.map(|b| ticks.saturating_sub(b) as f64 / TICKS_PER_SECOND / measured).unwrap_or(0.0);
            Some(ProcessStats { name: name.clone(), cpu_cores: cpu, rss_mib: rss as f64 / 1024.0, peak_rss_mib: peak as f64 / 1024.0 })
        })
        .collect();

    let scrapes = demo.cluster.fleet().total_scrapes().saturating_sub(scrapes_before);
    let half = (resolution.as_millis() / 2) as i64;
    let window_start = jiff::Timestamp::now().as_millisecond() - (measured * 1000.0) as i64;
    let duplicate_scrapes = demo
        .cluster
        .fleet()
        .all()
        .iter()
        .map(|k| {
            let times: Vec<i64> = k.request_times().into_iter().filter(|t| *t >= window_start).collect();
            times.windows(2).filter(|w| w[1] - w[0] < half).count() as u64
        })
        .sum();
    freshness.sort_by(f64::total_cmp);
    Ok(Report {
        nodes: nodes.len(),
        pods: demo.api.store().count(crate::apiserver::resources::PODS),
        shards: config.demo.shards,
        frontends: config.demo.frontends,
        resolution_s: resolution.as_secs_f64(),
        startup_s,
        measured_s: measured,
        concurrency: config.concurrency,
        queries,
        freshness_p50_ms: percentile(&freshness, 0.5),
        freshness_p99_ms: percentile(&freshness, 0.99),
        freshness_max_ms: freshness.last().copied().unwrap_or(0.0),
        min_nodes_served: if min_served == usize::MAX { 0 } else { min_served },
        killed_shard: killed,
        failover_max_staleness_ms: failover_max,
        scrapes,
        scrapes_per_second: scrapes as f64 / measured,
        scrapes_expected: nodes.len() as f64 * measured / resolution.as_secs_f64(),
        duplicate_scrapes,
        processes,
    })
}

/// A human summary of a report.
pub fn summary(r: &Report) -> String {
    let mut out = format!(
        "{} nodes, {} pods, {} shards, {} frontends, resolution {}s; ready after {:.1}s; measured {:.0}s with {} clients\n",
        r.nodes, r.pods, r.shards, r.frontends, r.resolution_s, r.startup_s, r.measured_s, r.concurrency
    );
    out += "query            ok/s     p50 ms   p90 ms   p99 ms   max ms   errors  mean bytes\n";
    for (k, q) in &r.queries {
        out += &format!(
            "{k:<15} {:>7.1} {:>8.1} {:>8.1} {:>8.1} {:>8.1} {:>8} {:>11}\n",
            q.per_second, q.p50_ms, q.p90_ms, q.p99_ms, q.max_ms, q.errors, q.mean_bytes
        );
    }
    out += &format!(
        "freshness p50 {:.0} ms, p99 {:.0} ms, max {:.0} ms; fewest nodes served {}\n",
        r.freshness_p50_ms, r.freshness_p99_ms, r.freshness_max_ms, r.min_nodes_served
    );
    if let (Some(k), Some(f)) = (&r.killed_shard, r.failover_max_staleness_ms) {
        out += &format!("killed {k}: worst node staleness afterwards {f:.0} ms\n");
    }
    out += &format!(
        "kubelet scrapes {} ({:.1}/s, expected {:.0}), duplicates {}\n",
        r.scrapes, r.scrapes_per_second, r.scrapes_expected, r.duplicate_scrapes
    );
    for p in &r.processes {
        out += &format!("{:<18} cpu {:.3} cores, rss {:.1} MiB (peak {:.1} MiB)\n", p.name, p.cpu_cores, p.rss_mib, p.peak_rss_mib);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_pick_the_nearest_rank() {
        let v: Vec<f64> = (1..=100).map(f64::from).collect();
        assert_eq!(percentile(&v, 0.5), 51.0);
        assert_eq!(percentile(&v, 0.99), 99.0);
        assert_eq!(percentile(&[], 0.5), 0.0);
    }

    #[test]
    fn this_process_can_be_sampled_from_proc() {
        let (ticks, rss, peak) = proc_sample(std::process::id()).unwrap();
        assert!(rss > 0 && peak >= rss);
        let _ = ticks;
    }
}
