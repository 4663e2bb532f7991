//! Where samples enter the replica: one gRPC subscription per live scraper shard.
//!
//! The set of live shards comes from their Leases ([`shardmetrics_plumbing::lease::watch_members`])
//! or, without an API server, from a fixed list. For each live shard a task calls
//! `SampleStream.Subscribe`, decodes every batch ([`shardmetrics_proto::decode_batch`]) and
//! feeds the [`Store`]; on any error it reconnects with capped exponential backoff and gets a
//! fresh snapshot. A shard whose address or epoch changes in its Lease gets a new subscription;
//! a shard that leaves has its subscription closed (its nodes' data stays until another shard
//! continues it or `--max-staleness` passes).
//!
//! [`UpstreamState`] tracks, per shard, the subscription state (for `/metrics`) and whether a
//! snapshot was ever completed (for `/readyz`: ready once every live shard was synced once, so a
//! shard restart does not take every replica out of service at the same time).

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use shardmetrics_plumbing::lease::{Member, Members};
use shardmetrics_proto::v1::SubscribeRequest;
use shardmetrics_proto::v1::sample_stream_client::SampleStreamClient;
use shardmetrics_proto::{Batch, decode_batch};
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tonic::transport::{Certificate, ClientTlsConfig, Endpoint, Identity};

use crate::metrics::Metrics;
use crate::store::{Ingested, Store};

/// Default largest gRPC message accepted from a shard (`--grpc-max-message-bytes`), in bytes;
/// the scraper's own `--grpc-max-message-bytes` has the same default, and a shard does not send
/// a batch above it. A healthy shard's messages are far smaller (one node's scrape is ~2 KiB
/// for 30 pods, docs/benchmarks.md): the limit bounds what one message can make a replica
/// allocate. A larger message ends that subscription (it is retried, and counted in
/// `shardmetrics_frontend_upstream_decode_errors_total`).
pub const MAX_MESSAGE_BYTES: usize = 64 * 1024 * 1024;

/// TLS towards the shards (`--grpc-tls-*`).
#[derive(Clone)]
pub struct GrpcClientTls {
    /// CA bundle that signed the shards' serving certificates, PEM.
    pub ca_pem: Vec<u8>,
    /// Client certificate chain and key for mTLS, PEM.
    pub identity: Option<(Vec<u8>, Vec<u8>)>,
}

impl std::fmt::Debug for GrpcClientTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GrpcClientTls").field("mtls", &self.identity.is_some()).finish_non_exhaustive()
    }
}

/// How subscriptions are made.
#[derive(Debug, Clone)]
pub struct UpstreamConfig {
    /// Sent to shards as the subscriber name (their logs and metrics).
    pub replica_name: String,
    /// TLS to shards; plaintext HTTP/2 when `None`.
    pub tls: Option<GrpcClientTls>,
    /// Time allowed to open a connection.
    pub connect_timeout: Duration,
    /// First reconnect delay; doubled per failure up to `backoff_max`.
    pub backoff_initial: Duration,
    /// Longest reconnect delay.
    pub backoff_max: Duration,
    /// `--grpc-max-message-bytes`: a larger batch ends the subscription with `OUT_OF_RANGE`
    /// (counted as a decode error) instead of being buffered, in bytes.
    pub max_message_bytes: usize,
}

impl Default for UpstreamConfig {
    fn default() -> Self {
        Self {
            replica_name: "frontend".to_owned(),
            tls: None,
            connect_timeout: Duration::from_secs(5),
            backoff_initial: Duration::from_millis(200),
            backoff_max: Duration::from_secs(10),
            max_message_bytes: MAX_MESSAGE_BYTES,
        }
    }
}

/// The delay before reconnect attempt `attempt` (0-based): `initial x 2^attempt`, capped at
/// `max`, minus up to 25% jitter derived from `seed` so replicas do not reconnect in lockstep.
pub fn backoff_delay(initial: Duration, max: Duration, attempt: u32, seed: u64) -> Duration {
    let base = initial.saturating_mul(1u32 << attempt.min(20)).min(max);
    let mut x = seed ^ u64::from(attempt).wrapping_mul(0x9e37_79b9_7f4a_7c15);
    x ^= x >> 33;
    x = x.wrapping_mul(0xff51_afd7_ed55_8ccd);
    x ^= x >> 33;
    let jitter_permille = x % 250;
    base - base.mul_f64(jitter_permille as f64 / 1000.0)
}

/// Per-shard subscription state, for readiness and metrics.
#[derive(Default)]
pub struct UpstreamState {
    /// The state behind the lock.
    inner: Mutex<StateInner>,
}

#[derive(Default)]
struct StateInner {
    /// Live shards (ids).
    members: BTreeSet<String>,
    /// Shards whose snapshot completed at least once.
    synced: BTreeSet<String>,
    /// Current state name of each shard's subscription.
    states: BTreeMap<String, &'static str>,
}

impl UpstreamState {
    fn lock(&self) -> std::sync::MutexGuard<'_, StateInner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Ready: at least one live shard, and every live shard synced once.
    pub fn is_ready(&self) -> bool {
        let s = self.lock();
        !s.members.is_empty() && s.members.is_subset(&s.synced)
    }

    /// A one-line explanation for `/readyz?verbose`.
    pub fn describe(&self) -> String {
        let s = self.lock();
        let waiting: Vec<&str> = s.members.difference(&s.synced).map(String::as_str).collect();
        if s.members.is_empty() {
            "no live scraper shard".to_owned()
        } else if waiting.is_empty() {
            format!("{} shard(s) synced", s.members.len())
        } else {
            format!("waiting for the snapshot of {}", waiting.join(", "))
        }
    }

    /// Current state of each shard's subscription.
    pub fn states(&self) -> BTreeMap<String, &'static str> {
        self.lock().states.clone()
    }

    fn set_members(&self, members: &Members) {
        let mut s = self.lock();
        s.members = members.keys().cloned().collect();
        let keep = s.members.clone();
        s.states.retain(|k, _| keep.contains(k));
    }

    fn forget(&self, shard: &str) {
        self.lock().states.remove(shard);
    }

    fn set(&self, shard: &str, state: &'static str, metrics: &Metrics) {
        let mut s = self.lock();
        s.states.insert(shard.to_owned(), state);
        if state == "live" {
            s.synced.insert(shard.to_owned());
        }
        metrics.set_upstream_state(shard, state);
    }
}

/// Keeps one subscription per live shard until `shutdown` turns true.
pub async fn run(
    config: UpstreamConfig,
    mut members: watch::Receiver<Members>,
    store: Arc<Store>,
    metrics: Metrics,
    state: Arc<UpstreamState>,
    mut shutdown: watch::Receiver<bool>,
) {
    let config = Arc::new(config);
    let mut tasks: HashMap<String, (Member, JoinHandle<()>)> = HashMap::new();
    loop {
        let current = members.borrow_and_update().clone();
        state.set_members(&current);
        let stale: Vec<String> = tasks
            .iter()
            .filter(|(id, (member, _))| {
                !current.get(*id).is_some_and(|m| m.grpc_address == member.grpc_address && m.epoch == member.epoch)
            })
            .map(|(id, _)| id.clone())
            .collect();
        for id in stale {
            if let Some((_, task)) = tasks.remove(&id) {
                task.abort();
                // Wait for it to end so it cannot write its state after the removal below.
                let _ = task.await;
            }
            if !current.contains_key(&id) {
                metrics.remove_shard(&id);
                state.forget(&id);
                tracing::info!(shard = %id, "shard left; subscription closed");
            }
        }
        for (id, member) in &current {
            if tasks.contains_key(id) {
                continue;
            }
            tracing::info!(shard = %id, address = %member.grpc_address, epoch = member.epoch, "subscribing to shard");
            let task = tokio::spawn(subscription(
                config.clone(),
                member.clone(),
                store.clone(),
                metrics.clone(),
                state.clone(),
            ));
            tasks.insert(id.clone(), (member.clone(), task));
        }
        let source_ended = tokio::select! {
            changed = members.changed() => changed.is_err(),
            _ = crate::stopped(&mut shutdown) => break,
        };
        if source_ended {
            // The member source ended: keep the current subscriptions until shutdown.
            let _ = crate::stopped(&mut shutdown).await;
            break;
        }
    }
    for (_, (_, task)) in tasks.drain() {
        task.abort();
        let _ = task.await;
    }
}

/// Why a subscription ended.
#[derive(Debug, thiserror::Error)]
enum StreamError {
    #[error("connecting: {0}")]
    Connect(#[from] tonic::transport::Error),
    #[error("gRPC status: {0}")]
    Status(#[from] tonic::Status),
    #[error("undecodable batch: {0}")]
    Decode(#[from] shardmetrics_proto::DecodeError),
    #[error("the shard closed the stream")]
    Closed,
}

/// One shard's subscription, reconnecting forever (until aborted).
async fn subscription(config: Arc<UpstreamConfig>, member: Member, store: Arc<Store>, metrics: Metrics, state: Arc<UpstreamState>) {
    let shard = member.shard_id.clone();
    let seed = shard.bytes().fold(member.epoch, |h, b| h.wrapping_mul(31).wrapping_add(u64::from(b)));
    let mut attempt = 0u32;
    loop {
        state.set(&shard, "connecting", &metrics);
        let mut reached_live = false;
        let result = stream_once(&config, &member, &store, &metrics, &state, &mut reached_live).await;
        if reached_live {
            attempt = 0;
        }
        let delay = backoff_delay(config.backoff_initial, config.backoff_max, attempt, seed);
        attempt = attempt.saturating_add(1);
        if let Err(StreamError::Decode(_)) = &result {
            metrics.upstream_decode_errors.with_label_values(&[&shard]).inc();
        }
        if let Err(StreamError::Status(s)) = &result
            && s.code() == tonic::Code::OutOfRange
        {
            // Over --grpc-max-message-bytes.
            metrics.upstream_decode_errors.with_label_values(&[&shard]).inc();
        }
        if let Err(e) = result {
            tracing::warn!(shard = %shard, address = %member.grpc_address, error = %e, retry_in = ?delay, "shard subscription ended");
        }
        state.set(&shard, "backoff", &metrics);
        tokio::time::sleep(delay).await;
    }
}

fn endpoint(config: &UpstreamConfig, address: &str) -> Result<Endpoint, tonic::transport::Error> {
    let scheme = if config.tls.is_some() { "https" } else { "http" };
    let mut ep = Endpoint::from_shared(format!("{scheme}://{address}"))?
        .connect_timeout(config.connect_timeout)
        .tcp_nodelay(true)
        .http2_keep_alive_interval(Duration::from_secs(20))
        .keep_alive_timeout(Duration::from_secs(20))
        .keep_alive_while_idle(true);
    if let Some(tls) = &config.tls {
        let mut t = ClientTlsConfig::new().ca_certificate(Certificate::from_pem(&tls.ca_pem));
        if let Some((cert, key)) = &tls.identity {
            t = t.identity(Identity::from_pem(cert, key));
        }
        ep = ep.tls_config(t)?;
    }
    Ok(ep)
}

async fn stream_once(
    config: &UpstreamConfig,
    member: &Member,
    store: &Store,
    metrics: &Metrics,
    state: &UpstreamState,
    reached_live: &mut bool,
) -> Result<(), StreamError> {
    let channel = endpoint(config, &member.grpc_address)?.connect().await?;
    let mut client = SampleStreamClient::new(channel).max_decoding_message_size(config.max_message_bytes);
    let mut stream = client.subscribe(SubscribeRequest { subscriber: config.replica_name.clone() }).await?.into_inner();
    let shard = member.shard_id.as_str();
    metrics.upstream_connects.with_label_values(&[shard]).inc();
    state.set(shard, "snapshot", metrics);
    while let Some(message) = stream.message().await? {
        let batch: Batch = decode_batch(message)?;
        if batch.shard.shard_id != member.shard_id {
            tracing::warn!(expected = %member.shard_id, got = %batch.shard.shard_id, "batch from an unexpected shard id");
        }
        // Every batch up to and including the one completing the snapshot is a replay.
        apply_batch(store, metrics, shard, &batch, *reached_live);
        if batch.snapshot_complete && !*reached_live {
            *reached_live = true;
            state.set(shard, "live", metrics);
            tracing::info!(shard, "shard snapshot complete; live");
        }
    }
    Err(StreamError::Closed)
}

/// Ingests one decoded batch of `shard` and counts it. For a `live` batch (not a snapshot
/// replay), each applied scrape's scrape-to-servable latency is observed: the store's clock right
/// after the batch became visible minus the scrape's `scraped_at_ms`.
fn apply_batch(store: &Store, metrics: &Metrics, shard: &str, batch: &Batch, live: bool) {
    let outcomes = store.ingest(&batch.scrapes, &batch.released);
    metrics.upstream_scrapes.with_label_values(&[shard]).inc_by(outcomes.len() as u64);
    let older = outcomes.iter().filter(|o| **o == Ingested::Older).count();
    if older > 0 {
        metrics.upstream_scrapes_older.inc_by(older as u64);
    }
    if live && !batch.scrapes.is_empty() {
        let visible_at_ms = store.now_ms();
        for (scrape, outcome) in batch.scrapes.iter().zip(&outcomes) {
            if *outcome == Ingested::Applied {
                let ms = visible_at_ms.saturating_sub(scrape.scraped_at_ms).max(0);
                metrics.scrape_to_servable.observe(ms as f64 / 1000.0);
            }
        }
    }
}

/// A member list that never changes, for running without an API server (tests, local runs).
pub fn static_members(members: Vec<Member>) -> (watch::Sender<Members>, watch::Receiver<Members>) {
    watch::channel(members.into_iter().map(|m| (m.shard_id.clone(), m)).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_to_its_cap_with_bounded_jitter() {
        let initial = Duration::from_millis(200);
        let max = Duration::from_secs(10);
        let delays: Vec<_> = (0..10).map(|a| backoff_delay(initial, max, a, 42)).collect();
        for (a, d) in delays.iter().enumerate() {
            let base = initial.saturating_mul(1 << a).min(max);
            assert!(*d <= base && *d >= base.mul_f64(0.75), "attempt {a}: {d:?} vs {base:?}");
        }
        assert!(delays[9] > Duration::from_secs(7));
        assert_ne!(backoff_delay(initial, max, 3, 1), backoff_delay(initial, max, 3, 2), "seeds spread replicas");
    }

    #[test]
    fn scrape_to_servable_is_observed_for_applied_live_scrapes_only() {
        use shardmetrics_plumbing::clock::ManualClock;
        use shardmetrics_proto::{NodeScrape, ShardIdentity};

        use crate::store::StoreConfig;

        const T0: i64 = 1_767_225_600_000;
        let registry = prometheus::Registry::new();
        let metrics = Metrics::register(&registry).expect("metrics");
        let clock = ManualClock::new(T0);
        let store = Store::new(StoreConfig { resolution_ms: 15_000, max_staleness_ms: 45_000 }, clock.clone());
        let scrape = |node: &str, scraped_at_ms: i64| NodeScrape { node: node.into(), scraped_at_ms, node_usage: None, pods: vec![] };
        let batch = |scrapes: Vec<NodeScrape>| Batch {
            shard: ShardIdentity { shard_id: "s0".into(), epoch: 1 },
            scrapes,
            released: vec![],
            snapshot_complete: false,
        };
        let h = &metrics.scrape_to_servable;

        // A snapshot replay of old scrapes is not a latency.
        clock.set_ms(T0 + 20_000);
        apply_batch(&store, &metrics, "s0", &batch(vec![scrape("a", T0 - 15_000), scrape("a", T0)]), false);
        assert_eq!(h.get_sample_count(), 0);

        // Live: 7 ms and 40 ms after the shard's reads.
        apply_batch(&store, &metrics, "s0", &batch(vec![scrape("a", T0 + 19_993), scrape("b", T0 + 19_960)]), true);
        assert_eq!(h.get_sample_count(), 2);
        assert!((h.get_sample_sum() - 0.047).abs() < 1e-9, "{}", h.get_sample_sum());

        // An older scrape (hand-off overlap) is ignored by the store, so it never became servable.
        apply_batch(&store, &metrics, "s0", &batch(vec![scrape("a", T0 + 5_000)]), true);
        assert_eq!(h.get_sample_count(), 2);
        assert_eq!(metrics.upstream_scrapes_older.get(), 1);

        // A shard clock ahead of ours counts as 0, not as a negative latency.
        apply_batch(&store, &metrics, "s0", &batch(vec![scrape("c", T0 + 20_500)]), true);
        assert_eq!(h.get_sample_count(), 3);
        assert!((h.get_sample_sum() - 0.047).abs() < 1e-9);
        let text = String::from_utf8(crate::metrics::render(&registry)).expect("utf8");
        assert!(text.contains(r#"shardmetrics_frontend_scrape_to_servable_seconds_bucket{le="0.01"} 2"#), "{text}");
        assert!(text.contains(r#"shardmetrics_frontend_scrape_to_servable_seconds_bucket{le="0.05"} 3"#), "{text}");
    }

    #[test]
    fn readiness_needs_every_live_shard_synced_once() {
        let registry = prometheus::Registry::new();
        let metrics = Metrics::register(&registry).expect("metrics");
        let s = UpstreamState::default();
        assert!(!s.is_ready(), "no shard: not ready");
        let member = |id: &str| Member {
            shard_id: id.into(),
            grpc_address: "a:1".into(),
            epoch: 1,
            renew_time_ms: 0,
            lease_duration_ms: 1,
        };
        let members: Members = [("s0".to_owned(), member("s0")), ("s1".to_owned(), member("s1"))].into();
        s.set_members(&members);
        s.set("s0", "live", &metrics);
        assert!(!s.is_ready());
        assert!(s.describe().contains("s1"));
        s.set("s1", "snapshot", &metrics);
        s.set("s1", "live", &metrics);
        assert!(s.is_ready());
        s.set("s1", "backoff", &metrics);
        assert!(s.is_ready(), "a reconnecting shard that synced once keeps the replica ready");
        assert_eq!(s.states().get("s1"), Some(&"backoff"));
    }
}
