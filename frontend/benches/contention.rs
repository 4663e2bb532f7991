//! HPA query latency while the frontend is busy, at the design scale (150k pods): the HPA's
//! exact request through the router, timed one by one, first on a quiet store and then while
//! one thread lists every pod back to back (list + JSON encoding, as `kubectl top pods -A`
//! makes the frontend do), another ingests node scrapes at the scenario's rate (5000 nodes every
//! 15 s = 333 scrapes/s of 30 pods) and a third applies pod metadata events (label updates).
//!
//! It measures waiting, not work: criterion's `query` group in `benches/frontend.rs` times the
//! same request alone. Ingest latency (call to return, lock wait included) stands in for the
//! frontend's share of scrape-to-servable.
//!
//! Run: `cargo bench -p shardmetrics-frontend --bench contention` (optionally
//! `-- <contended seconds>`, default 10).

// Latency under contention measured in real time is what this benchmark is about: std::time.
#![allow(clippy::disallowed_types, clippy::disallowed_methods)]

mod cluster;

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use cluster::{DESIGN, NODES, PODS_PER_NODE, T0, cluster, pod_labels, scrape};
use kube::runtime::watcher::Event;
use shardmetrics_frontend::api::json;
use shardmetrics_frontend::api::version::ApiVersion;
use shardmetrics_plumbing::selector::{FieldSelector, LabelSelector};

/// Scrapes ingested per second: 5000 nodes every 15 s.
const SCRAPES_PER_SEC: f64 = NODES as f64 / 15.0;
/// Pod metadata events applied per second.
const METADATA_EVENTS_PER_SEC: f64 = 20.0;
/// Pause between two HPA requests.
const HPA_PAUSE: Duration = Duration::from_millis(2);
/// HPA requests timed on the quiet store.
const QUIET_REQUESTS: usize = 2000;

/// p50 / p99 / max of `samples`, formatted in ms.
fn summary(name: &str, samples: &mut [Duration]) -> String {
    if samples.is_empty() {
        return format!("{name}: no samples");
    }
    samples.sort_unstable();
    let at = |q: f64| samples[((samples.len() - 1) as f64 * q).round() as usize].as_secs_f64() * 1e3;
    format!("{name}: n={} p50 {:.3} ms  p99 {:.3} ms  max {:.3} ms", samples.len(), at(0.5), at(0.99), at(1.0))
}

/// Calls `f` every `1 / per_sec` seconds (catching up after a slow call) until `stop`.
fn paced(per_sec: f64, stop: &AtomicBool, mut f: impl FnMut(u64)) {
    let period = Duration::from_secs_f64(1.0 / per_sec);
    let start = Instant::now();
    let mut n = 0u64;
    while !stop.load(Ordering::Relaxed) {
        let due = start + period.mul_f64(n as f64);
        if let Some(wait) = due.checked_duration_since(Instant::now()) {
            thread::sleep(wait);
        }
        f(n);
        n += 1;
    }
}

fn main() {
    let contended = std::env::args()
        .skip(1)
        .find_map(|a| a.parse::<u64>().ok())
        .map_or(Duration::from_secs(10), Duration::from_secs);
    let built = Instant::now();
    let (store, metadata, api) = cluster();
    let api = Arc::new(api);
    eprintln!("cluster of {} pods built in {:.1} s", store.counts().pods, built.elapsed().as_secs_f64());

    let hpa_uri: http::Uri = "/apis/metrics.k8s.io/v1beta1/namespaces/team-042/pods?labelSelector=app%3Dapp-3".parse().expect("uri");
    let headers = http::HeaderMap::new();
    let hpa = || {
        let t = Instant::now();
        let body = api.handle(&http::Method::GET, &hpa_uri, &headers).response.into_body().collect_bytes();
        assert!(body.len() > 1000, "the HPA query answers its pods");
        t.elapsed()
    };

    let mut quiet: Vec<Duration> = (0..QUIET_REQUESTS).map(|_| hpa()).collect();
    println!("{}", summary("quiet  HPA request", &mut quiet));

    let stop = AtomicBool::new(false);
    let lists = Mutex::new(Vec::new());
    let ingests = Mutex::new(Vec::new());
    let metadata_events = AtomicU64::new(0);
    let mut contended_hpa = Vec::new();
    thread::scope(|s| {
        s.spawn(|| {
            let (everything, no_fields) = (LabelSelector::default(), FieldSelector::default());
            while !stop.load(Ordering::Relaxed) {
                let t = Instant::now();
                let items = api.list_pods(None, &everything, &no_fields, T0 + 20_000);
                let bytes = json::pod_list(items, T0 + 20_000, ApiVersion::V1beta1).collect_bytes().len();
                assert!(bytes > 1_000_000, "the full list answers every pod");
                lists.lock().unwrap_or_else(|e| e.into_inner()).push(t.elapsed());
            }
        });
        s.spawn(|| {
            paced(SCRAPES_PER_SEC, &stop, |n| {
                // Node n % NODES, one resolution newer per lap: each scrape is applied.
                let lap = n / NODES as u64;
                let next = scrape(n as usize % NODES, 30_000 + lap as i64 * 15_000);
                let t = Instant::now();
                store.ingest(std::slice::from_ref(&next), &[]);
                ingests.lock().unwrap_or_else(|e| e.into_inner()).push(t.elapsed());
            })
        });
        s.spawn(|| {
            paced(METADATA_EVENTS_PER_SEC, &stop, |n| {
                let (ns, name, app, _) = DESIGN.pod((n as usize * 7919) % (NODES * PODS_PER_NODE));
                metadata.apply_pod(Event::Apply(((ns, name), pod_labels(app))));
                metadata_events.fetch_add(1, Ordering::Relaxed);
            })
        });
        let end = Instant::now() + contended;
        while Instant::now() < end {
            contended_hpa.push(hpa());
            thread::sleep(HPA_PAUSE);
        }
        stop.store(true, Ordering::Relaxed);
    });
    let mut lists = lists.into_inner().unwrap_or_else(|e| e.into_inner());
    let mut ingests = ingests.into_inner().unwrap_or_else(|e| e.into_inner());
    println!("contended for {} s ({} metadata events applied):", contended.as_secs(), metadata_events.load(Ordering::Relaxed));
    println!("{}", summary("  HPA request", &mut contended_hpa));
    println!("{}", summary("  full list + JSON", &mut lists));
    println!("{}", summary("  ingest of one scrape", &mut ingests));
}
