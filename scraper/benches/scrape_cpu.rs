//! CPU per scrape, scraper pipeline vs the bare-fetch floor, for instruction counting.
//!
//! Not a timing benchmark: a harness to run under `valgrind --tool=callgrind`, whose
//! instruction counts are repeatable on a shared machine. The process starts a child of itself
//! (`serve`) that plays one kubelet: a TLS server on 127.0.0.1 port 0 answering every request on
//! a kept-alive connection with the same realistic `/metrics/resource` body
//! ([`fixture::resource_metrics`], `Content-Length` framing like the loadtest's simulated
//! kubelets). Callgrind follows only the parent, so the server's CPU is not counted.
//!
//! The parent then measures, after one untimed warm-up fetch (connect + handshake, as the
//! scrapers' long-lived connections have done already), `N` rounds of one mode:
//! - `floor`: the bare client, one TLS stream, write the request, read the response into a reused
//!   buffer, discard it (what `loadtest floor` does);
//! - `scraper`: what a scrape task does per node: [`KubeletClient`] fetch into a reused body
//!   buffer, parse (borrowing the body), encode the live batch straight from that, publish it to the hub (buffer + one subscriber's queue, drained);
//! - `snapshot`: what a new subscriber costs the shard: subscribe to a hub holding two scrapes of
//!   each of [`SNAPSHOT_NODES`] nodes and take its whole snapshot (no kubelet; `N` subscriptions).
//!
//! Only the measured function is collected (`--toggle-collect`), so Ir / N is the CPU per scrape:
//!
//! ```text
//! cargo bench -p shardmetrics-scraper --bench scrape_cpu --no-run
//! B=$(ls -t target/release/deps/scrape_cpu-* | grep -v '\.d$' | head -1)
//! valgrind --tool=callgrind --collect-atstart=no --toggle-collect='*measured*' \
//!     --callgrind-out-file=/tmp/cg.scraper $B scraper 200 30
//! valgrind ... --callgrind-out-file=/tmp/cg.floor $B floor 200 30
//! valgrind ... --callgrind-out-file=/tmp/cg.snapshot $B snapshot 20 30
//! ```
//!
//! For `snapshot`, Ir / N is the CPU of one subscriber's snapshot of 1000 nodes.
//!
//! `parse N PODS [FAMILY]` measures the parser alone (no TLS, no server): `N` parses of the same
//! body, cut before `FAMILY`'s `# HELP` line when one is named, so that the differences between
//! cuts give each family's cost (`... parse 100 30 container_memory_working_set_bytes`: the
//! first family alone).
//!
//! Without valgrind it prints wall time per round (indicative only).

// Wall time per round is what this harness prints without valgrind: std::time is the point.
#![allow(clippy::disallowed_types, clippy::disallowed_methods)]

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpListener;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::FutureExt;
use futures::StreamExt;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, ServerName};
use shardmetrics_proto::ShardIdentity;
use shardmetrics_plumbing::tls::AcceptAnyServerCert;
use shardmetrics_scraper::nodes::RESOURCE_METRICS_PATH;
use shardmetrics_scraper::kubelet::fixture::{self, PayloadSpec};
use shardmetrics_scraper::kubelet::http1::{self, BodyLength};
use shardmetrics_scraper::kubelet::{KubeletAuth, KubeletClient, KubeletClientConfig, KubeletSource, KubeletTls, ParseScratch, parse_resource_metrics, parse_resource_metrics_with};
use shardmetrics_scraper::metrics::Metrics;
use shardmetrics_scraper::nodes::NodeTarget;
use shardmetrics_scraper::stream::Hub;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// The server child gives up after this long, whatever happens to the parent.
const SERVE_FOR: Duration = Duration::from_secs(600);
/// Nodes held by the hub in the `snapshot` mode (two scrapes each).
const SNAPSHOT_NODES: usize = 1000;

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn body(pods: usize) -> Vec<u8> {
    fixture::resource_metrics(&PayloadSpec { pods, seed: 42, timestamp_ms: 1_700_000_000_000 })
}

/// The kubelet: prints its port, then answers every request on every connection with `body`.
fn serve(pods: usize) -> anyhow::Result<()> {
    let cert = rcgen::generate_simple_self_signed(vec!["localhost".to_owned()])?;
    let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(cert.signing_key.serialize_der()));
    let mut config = rustls::ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()?
        .with_no_client_auth()
        .with_single_cert(vec![CertificateDer::from(cert.cert.der().to_vec())], key)?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    let config = Arc::new(config);
    let body = body(pods);
    let mut response = format!("HTTP/1.1 200 OK\r\nContent-Type: text/plain; version=0.0.4\r\nContent-Length: {}\r\n\r\n", body.len()).into_bytes();
    response.extend_from_slice(&body);
    let response: Arc<[u8]> = response.into();
    let listener = TcpListener::bind("127.0.0.1:0")?;
    println!("{}", listener.local_addr()?.port());
    std::io::stdout().flush()?;
    let deadline = Instant::now() + SERVE_FOR;
    std::thread::spawn(move || {
        // The parent closes our stdin when it is done (or dies).
        let _ = std::io::stdin().read_to_end(&mut Vec::new());
        std::process::exit(0);
    });
    for conn in listener.incoming() {
        if Instant::now() > deadline {
            break;
        }
        let Ok(tcp) = conn else { continue };
        let (config, response) = (config.clone(), response.clone());
        std::thread::spawn(move || {
            let _ = tcp.set_nodelay(true);
            let Ok(tls) = rustls::ServerConnection::new(config) else { return };
            let mut s = rustls::StreamOwned::new(tls, tcp);
            let mut req = Vec::with_capacity(1024);
            let mut buf = [0u8; 1024];
            loop {
                let n = match s.read(&mut buf) {
                    Ok(0) | Err(_) => return,
                    Ok(n) => n,
                };
                req.extend_from_slice(&buf[..n]);
                while let Some(end) = req.windows(4).position(|w| w == b"\r\n\r\n") {
                    req.drain(..end + 4);
                    if s.write_all(&response).and_then(|()| s.flush()).is_err() {
                        return;
                    }
                }
            }
        });
    }
    Ok(())
}

/// The bare client: one kept-alive TLS stream, bodies read into a reused buffer and dropped.
struct Floor {
    stream: tokio_rustls::client::TlsStream<tokio::net::TcpStream>,
    request: Vec<u8>,
    buf: Vec<u8>,
}

impl Floor {
    async fn connect(port: u16) -> anyhow::Result<Floor> {
        let tls = rustls::ClientConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()?
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(AcceptAnyServerCert(provider())))
            .with_no_client_auth();
        let tcp = tokio::net::TcpStream::connect(("127.0.0.1", port)).await?;
        tcp.set_nodelay(true)?;
        let stream = tokio_rustls::TlsConnector::from(Arc::new(tls)).connect(ServerName::try_from("localhost")?, tcp).await?;
        Ok(Floor { stream, request: http1::request(RESOURCE_METRICS_PATH, "127.0.0.1", port, None), buf: Vec::with_capacity(256 << 10) })
    }

    /// One fetch; returns the body length.
    async fn fetch(&mut self) -> anyhow::Result<usize> {
        self.stream.write_all(&self.request).await?;
        self.stream.flush().await?;
        self.buf.clear();
        let head = loop {
            if let Some(h) = http1::parse_head(&self.buf)? {
                break h;
            }
            if self.stream.read_buf(&mut self.buf).await? == 0 {
                anyhow::bail!("closed before the head");
            }
        };
        let BodyLength::Known(len) = head.body else { anyhow::bail!("expected Content-Length") };
        let total = head.len + usize::try_from(len)?;
        while self.buf.len() < total {
            if self.stream.read_buf(&mut self.buf).await? == 0 {
                anyhow::bail!("closed inside the body");
            }
        }
        Ok(len as usize)
    }
}

/// The scraper side: the real client, parser, encoder and hub.
struct Pipeline {
    client: KubeletClient,
    target: NodeTarget,
    hub: Arc<Hub>,
    subscription: shardmetrics_scraper::stream::Subscription,
    /// The body buffer and parser vectors, reused across scrapes (the scrape tasks take them
    /// from a pool).
    body: Vec<u8>,
    scratch: ParseScratch,
}

impl Pipeline {
    fn new(port: u16) -> anyhow::Result<Pipeline> {
        let client = KubeletClient::new(KubeletClientConfig {
            tls: KubeletTls::Insecure,
            auth: KubeletAuth::None,
            timeout: Duration::from_secs(10),
            max_response_bytes: 10 << 20,
            pool_idle_timeout: Duration::from_secs(600),
        })?;
        let hub = Hub::new(ShardIdentity { shard_id: "bench".into(), epoch: 1 }, 16, Metrics::register(&prometheus::Registry::new())?);
        let subscription = hub.subscribe("bench".into()).map_err(|s| anyhow::anyhow!("subscribe: {s}"))?;
        let target = NodeTarget::new("node-0001", "127.0.0.1", port);
        Ok(Pipeline { client, target, hub, subscription, body: Vec::new(), scratch: ParseScratch::default() })
    }

    /// One scrape as the scrape task does it; returns the samples shipped.
    async fn scrape(&mut self, now_ms: i64) -> anyhow::Result<usize> {
        self.client.fetch_into(&self.target, &mut self.body).await?;
        let parsed = parse_resource_metrics_with(&self.target.name, &self.body, now_ms, &mut self.scratch)?;
        let frame = self.hub.encode_scrape_ref(&parsed.scrape);
        let samples = parsed.scrape.sample_count();
        self.hub.publish_scrape(parsed.scrape.node, frame);
        self.scratch.recycle(parsed);
        while let Some(Some(batch)) = self.subscription.next().now_or_never() {
            batch.map_err(|s| anyhow::anyhow!("subscription: {s}"))?;
        }
        Ok(samples)
    }
}

/// A hub holding two scrapes of each of [`SNAPSHOT_NODES`] nodes of `pods` pods.
fn full_hub(pods: usize) -> anyhow::Result<Arc<Hub>> {
    let hub = Hub::new(ShardIdentity { shard_id: "bench".into(), epoch: 1 }, 16, Metrics::register(&prometheus::Registry::new())?);
    for i in 0..SNAPSHOT_NODES {
        let node = format!("node-{i:04}");
        for t in 0..2 {
            let body = fixture::resource_metrics(&PayloadSpec { pods, seed: (i * 2 + t) as u64, timestamp_ms: 1_700_000_000_000 + t as i64 });
            let parsed = parse_resource_metrics(&node, &body, 1_700_000_000_000 + t as i64)?;
            let frame = hub.encode_scrape(&parsed.scrape);
            hub.publish_scrape(&node, frame);
        }
    }
    Ok(hub)
}

/// The collected part of the `snapshot` mode (the warm-up calls [`take_snapshots`] directly, so
/// it is not counted and Ir / N is per snapshot).
#[inline(never)]
fn measured_snapshot(rt: &tokio::runtime::Runtime, hub: &Arc<Hub>, rounds: usize) -> anyhow::Result<usize> {
    take_snapshots(rt, hub, rounds)
}

/// Subscribes `rounds` times and takes each whole snapshot; returns the snapshot bytes sent.
fn take_snapshots(rt: &tokio::runtime::Runtime, hub: &Arc<Hub>, rounds: usize) -> anyhow::Result<usize> {
    rt.block_on(async {
        let mut bytes = 0;
        for _ in 0..rounds {
            let mut sub = hub.subscribe("bench".into()).map_err(|s| anyhow::anyhow!("subscribe: {s}"))?;
            loop {
                let frame = sub.next().await.ok_or_else(|| anyhow::anyhow!("stream ended"))?.map_err(|s| anyhow::anyhow!("subscription: {s}"))?;
                bytes += frame.len();
                // The last snapshot batch ends with `snapshot_complete = true` (field 5, varint 1).
                if frame.ends_with(&[0x28, 0x01]) {
                    break;
                }
            }
        }
        Ok(bytes)
    })
}

/// The collected part of the `parse` mode: `rounds` parses of `body` as a scrape task makes them
/// (reused vectors); returns the containers read.
#[inline(never)]
fn measured_parse(body: &[u8], rounds: usize, scratch: &mut ParseScratch) -> anyhow::Result<usize> {
    let mut containers = 0;
    for i in 0..rounds {
        let parsed = parse_resource_metrics_with("node-1", body, 1_700_000_000_000 + i as i64, scratch)?;
        containers += parsed.scrape.containers.len();
        scratch.recycle(parsed);
    }
    Ok(containers)
}

#[inline(never)]
fn measured_floor(rt: &tokio::runtime::Runtime, floor: &mut Floor, rounds: usize) -> anyhow::Result<usize> {
    rt.block_on(async {
        let mut bytes = 0;
        for _ in 0..rounds {
            bytes += floor.fetch().await?;
        }
        Ok(bytes)
    })
}

#[inline(never)]
fn measured_scraper(rt: &tokio::runtime::Runtime, p: &mut Pipeline, rounds: usize) -> anyhow::Result<usize> {
    rt.block_on(async {
        let mut samples = 0;
        for i in 0..rounds {
            samples += p.scrape(1_700_000_000_000 + i as i64).await?;
        }
        Ok(samples)
    })
}

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).filter(|a| !a.starts_with("--")).collect();
    let mode = args.first().map(String::as_str).unwrap_or("both");
    let rounds: usize = args.get(1).map(|s| s.parse()).transpose()?.unwrap_or(200);
    let pods: usize = args.get(2).map(|s| s.parse()).transpose()?.unwrap_or(30);
    if mode == "serve" {
        return serve(pods);
    }
    if mode == "parse" {
        let mut body = body(pods);
        if let Some(family) = args.get(3) {
            let needle = format!("# HELP {family}");
            let at = body.windows(needle.len()).position(|w| w == needle.as_bytes());
            body.truncate(at.ok_or_else(|| anyhow::anyhow!("no family {family} in the body"))?);
        }
        let mut scratch = ParseScratch::default();
        parse_resource_metrics_with("node-1", &body, 0, &mut scratch).map(|p| scratch.recycle(p))?;
        let started = Instant::now();
        let containers = measured_parse(&body, rounds, &mut scratch)?;
        let per = started.elapsed() / u32::try_from(rounds.max(1))?;
        println!("parse: {} body bytes, {containers} containers in {rounds} parses, {per:?} wall per parse", body.len());
        return Ok(());
    }
    if mode == "snapshot" {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
        let hub = full_hub(pods)?;
        take_snapshots(&rt, &hub, 1)?;
        let started = Instant::now();
        let bytes = measured_snapshot(&rt, &hub, rounds)?;
        let per = started.elapsed() / u32::try_from(rounds.max(1))?;
        println!("snapshot: {SNAPSHOT_NODES} nodes x 2 scrapes of {pods} pods, {bytes} bytes in {rounds} snapshots, {per:?} wall per snapshot");
        return Ok(());
    }
    let modes: &[&str] = match mode {
        "floor" => &["floor"],
        "scraper" => &["scraper"],
        // `cargo bench` with no arguments: a quick run of both.
        _ => &["floor", "scraper"],
    };
    let mut child = Command::new(std::env::current_exe()?)
        .args(["serve", "0", &pods.to_string()])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()?;
    let mut line = String::new();
    BufReader::new(child.stdout.take().ok_or_else(|| anyhow::anyhow!("no child stdout"))?).read_line(&mut line)?;
    let port: u16 = line.trim().parse()?;
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    println!("body {} bytes ({pods} pods), {rounds} rounds", body(pods).len());
    for mode in modes {
        let started;
        let what = match *mode {
            "floor" => {
                let mut f = rt.block_on(Floor::connect(port))?;
                rt.block_on(f.fetch())?;
                started = Instant::now();
                format!("{} body bytes", measured_floor(&rt, &mut f, rounds)?)
            }
            _ => {
                let mut p = Pipeline::new(port)?;
                rt.block_on(p.scrape(0))?;
                started = Instant::now();
                format!("{} samples", measured_scraper(&rt, &mut p, rounds)?)
            }
        };
        let per = started.elapsed() / u32::try_from(rounds.max(1))?;
        println!("{mode}: {what}, {per:?} wall per round");
    }
    drop(child.stdin.take());
    let _ = child.wait();
    Ok(())
}
