//! When each owned node is scraped ([`Scheduler`]), apart from what a scrape does
//! ([`Pipeline`]: fetch → parse → encode → publish).
//!
//! Every owned node is scraped once per resolution at a stable phase offset derived from a
//! hash of its name and anchored to wall-clock time, so load is spread evenly over the
//! interval and a node that moves to another shard keeps its phase there. Scrapes start in
//! groups: when the scheduler wakes for one node's slot, the nodes due within
//! [`ScheduleConfig::group_window`] after it start with it (one wake-up, and their batches go to
//! the frontends together). A node that becomes
//! owned is scraped at once (a frontend should not wait a whole interval for it), then at its
//! phase — unless it was handed over by an owner that was scraping it at its phase until just
//! now (a graceful leave, or the ring changed under live shards, see [`Handover`]): then its
//! last scrape is less than a resolution old and the new owner simply continues at the phase,
//! so the node is scraped exactly once per resolution cluster-wide. A regular slot that comes
//! less than half a resolution after the node's last scrape actually started (a prompt scrape
//! that waited for a permit) is skipped, so no node is ever scraped twice within half a
//! resolution by one shard. Scrapes run as tasks bounded by a semaphore of `--max-concurrent-scrapes`; a node
//! has at most one scrape queued or running: if it is still busy when due again, that round
//! is skipped and counted. A released node's scrape is aborted and its result, if any, dropped.

use std::cmp::Reverse;
use std::collections::{BTreeMap, BTreeSet, BinaryHeap, HashMap};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use shardmetrics_plumbing::clock::SharedClock;
use shardmetrics_proto::{NodeReleased, ReleaseReason};
use tokio::sync::{Semaphore, watch};
use tokio::task::{AbortHandle, JoinSet};
use tokio::time::Instant;

use crate::kubelet::{KubeletSource, ParseScratch, ScrapeError, parse_resource_metrics_with};
use crate::metrics::Metrics;
use crate::nodes::{NodeMap, NodeTarget};
use crate::stream::Hub;

/// What this shard should scrape now.
#[derive(Debug, Clone, Default)]
pub struct Assignment {
    /// Nodes this shard owns, with where to reach them.
    pub owned: NodeMap,
    /// Every node that exists (owned by anyone); a released node not in here was deleted.
    pub known: Arc<BTreeSet<String>>,
    /// For owned nodes that just moved here from another shard: what is known about that
    /// shard, to decide whether the node needs a prompt first scrape.
    pub handovers: Arc<BTreeMap<String, Handover>>,
}

/// What the new owner of a moved node knows about its previous owner.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Handover {
    /// When the previous owner's process started, Unix ms (`i64::MAX` when unknown).
    pub previous_owner_started_ms: i64,
    /// The previous owner is still a member (the node moved because the ring changed).
    pub previous_owner_live: bool,
    /// When the previous owner's Lease would expire, Unix ms: a shard that left before that
    /// deleted its Lease (graceful stop), one that left after it crashed.
    pub previous_owner_expires_ms: i64,
    /// When this shard learnt of the member change that moved the node (before rebuilding the
    /// ring): a departed owner had stopped scraping by then and a live one stops when it
    /// notices the same change, so a slot between this and the moment the scheduler gets the
    /// node is caught up at once.
    pub noticed_at: Instant,
}

/// A Lease that disappears less than this before its expiry was deleted, not expired.
const GRACEFUL_MARGIN_MS: i64 = 250;

impl Handover {
    /// Whether the previous owner kept scraping the node at its phase until now, so its last
    /// scrape is less than a `resolution` old and the new owner can wait for the phase slot.
    pub fn scraped_within(&self, resolution: Duration, now_ms: i64) -> bool {
        let res_ms = i64::try_from(resolution.as_millis()).unwrap_or(i64::MAX);
        let up_a_full_interval = self.previous_owner_started_ms.saturating_add(res_ms) <= now_ms;
        let alive_until_now = self.previous_owner_live || now_ms.saturating_add(GRACEFUL_MARGIN_MS) < self.previous_owner_expires_ms;
        up_a_full_interval && alive_until_now
    }
}

/// Scheduler settings.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ScheduleConfig {
    /// Interval between two scrapes of a node (`--metric-resolution`).
    pub resolution: Duration,
    /// Scrapes queued or running at once, all nodes together (`--max-concurrent-scrapes`).
    pub max_concurrent: usize,
    /// When the scheduler wakes for a node's slot, the nodes due within this long after it
    /// start with it (early by less than this): see [`DEFAULT_GROUP_WINDOW`]. Zero: each node
    /// exactly at its slot.
    pub group_window: Duration,
}

/// Default [`ScheduleConfig::group_window`]: 100 ms, ~8 scrapes a group for 1250 nodes at 15 s.
/// A group costs one timer wake-up, its answers come back within a few milliseconds of each
/// other, and with `--stream-linger` its batches usually reach each frontend in one write
/// instead of one write per scrape, which was the largest part of a scrape's CPU beyond the
/// fetch itself. Groups form around each shard's own nodes' phases, so shards' groups do not
/// line up into bursts of the whole cluster; a node is scraped at most this much early, and its
/// next slot stays at its phase.
pub const DEFAULT_GROUP_WINDOW: Duration = Duration::from_millis(100);

/// A node's phase within the interval: a stable hash of its name (FNV-1a, then a SplitMix64
/// finaliser for spread), the same in every process and build.
pub fn phase_offset(node: &str, resolution: Duration) -> Duration {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in node.as_bytes() {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h = (h ^ (h >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    h = (h ^ (h >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    h ^= h >> 31;
    let res_us = resolution.as_micros().max(1) as u64;
    Duration::from_micros(h % res_us)
}

/// Maps wall-clock-anchored slots onto tokio's clock.
#[derive(Debug, Clone, Copy)]
struct Slots {
    /// The tokio instant of a wall-clock multiple of the resolution (Unix time ≡ 0 mod res).
    anchor: Instant,
    resolution: Duration,
}

impl Slots {
    fn new(clock: &SharedClock, resolution: Duration) -> Slots {
        let now = Instant::now();
        let res_ms = resolution.as_millis().max(1) as i64;
        let into_interval = clock.now_ms().rem_euclid(res_ms) as u64;
        Slots { anchor: now.checked_sub(Duration::from_millis(into_interval)).unwrap_or(now), resolution }
    }

    /// The first instant at or after `not_before` that is `phase` into an interval.
    fn next(&self, phase: Duration, not_before: Instant) -> Instant {
        let first = self.anchor + phase;
        if not_before <= first {
            return first;
        }
        let res = self.resolution.as_nanos().max(1);
        let since = not_before.duration_since(first).as_nanos();
        let k = since.div_ceil(res);
        first + Duration::from_nanos(u64::try_from(k * res).unwrap_or(u64::MAX))
    }
}

/// How many resolutions without a scheduler tick make it stuck for `/livez`: the loop ticks at
/// least every half resolution, so three leave room for a busy runtime but not for a dead loop.
pub const STALL_RESOLUTIONS: u32 = 3;

/// The scheduler's proof of life, read by `/livez`: when its loop last went round (tokio time).
/// The loop ticks at least every half resolution, even with nothing to scrape.
#[derive(Debug)]
pub struct Heartbeat {
    /// The tokio instant `last_ms` counts from (creation: counts as a tick).
    origin: Instant,
    /// The last tick, in milliseconds since `origin`.
    last_ms: AtomicU64,
    /// Older than this the scheduler is stuck: [`STALL_RESOLUTIONS`] × the resolution.
    stall_after: Duration,
}

impl Heartbeat {
    /// A heartbeat for a scheduler of `resolution`, ticked now.
    pub fn new(resolution: Duration) -> Heartbeat {
        Heartbeat { origin: Instant::now(), last_ms: AtomicU64::new(0), stall_after: resolution * STALL_RESOLUTIONS }
    }

    /// Records a tick now.
    pub fn tick(&self) {
        let ms = u64::try_from(self.origin.elapsed().as_millis()).unwrap_or(u64::MAX);
        self.last_ms.fetch_max(ms, Ordering::Relaxed);
    }

    /// Time since the last tick.
    pub fn age(&self) -> Duration {
        let last = self.origin + Duration::from_millis(self.last_ms.load(Ordering::Relaxed));
        Instant::now().saturating_duration_since(last)
    }

    /// How old the last tick may get before the scheduler counts as stuck.
    pub fn stall_after(&self) -> Duration {
        self.stall_after
    }

    /// Whether the last tick is older than [`Heartbeat::stall_after`].
    pub fn stalled(&self) -> bool {
        self.age() > self.stall_after
    }
}

/// What a scrape task hands back.
struct Outcome {
    /// When the fetch began (after waiting for a permit).
    started: Instant,
    /// Fetch and parse together (encoding included).
    duration: Duration,
    result: Result<Scraped, ScrapeError>,
}

impl Outcome {
    /// The `result` label of `shardmetrics_scraper_scrapes_total`.
    fn label(&self) -> &'static str {
        match &self.result {
            Ok(_) => "success",
            Err(e) => e.result_label(),
        }
    }
}

/// What a successful scrape leaves for the scheduler: the encoded batch and its counts (the
/// parsed scrape, borrowing from the body, is dropped in the task once encoded).
struct Scraped {
    /// The scrape's live `SampleBatch`, encoded once, for the hub.
    frame: bytes::Bytes,
    /// Samples shipped: node points plus containers.
    samples: usize,
    /// Samples of kept families thrown away (NaN, negative, missing labels).
    rejected_samples: u32,
    /// Containers (or node points) left out for lack of a CPU or memory sample.
    incomplete_containers: u32,
}

/// The "what" of a scrape, apart from the "when" ([`Scheduler`]): fetch one node within the
/// concurrency bound → parse → encode (in a scrape task) → count and publish (back on the
/// scheduler, for a node it still owns). Shared by every scrape task.
pub struct Pipeline<S> {
    /// Where scrape bodies come from: the kubelet client (a fake fleet in tests).
    source: Arc<S>,
    /// `--max-concurrent-scrapes` permits; a scrape holds one from fetch to encode.
    permits: Arc<Semaphore>,
    /// Where encoded scrapes and node releases go.
    hub: Arc<Hub>,
    /// Self-metrics: scrape results and durations, samples, owned and known nodes.
    metrics: Metrics,
    /// Wall clock: each scrape's `scraped_at_ms`, and the slots' anchor.
    clock: SharedClock,
    /// Buffers of finished scrapes, for the next ones (a scrape takes one, reads its body into
    /// it and parses with its vectors, gives it back once encoded): no body or parser vector is
    /// allocated per scrape.
    scratch: ScratchPool,
}

/// What one scrape task works in: the body buffer and the parser's vectors.
#[derive(Debug, Default)]
struct Scratch {
    body: Vec<u8>,
    parse: ParseScratch,
}

/// Scratch kept for reuse: at most [`ScratchPool::KEEP`] of them, none whose body buffer is
/// larger than [`ScratchPool::MAX_BODY_CAPACITY`] bytes (an unusually large body is not kept).
#[derive(Default)]
struct ScratchPool(std::sync::Mutex<Vec<Scratch>>);

impl ScratchPool {
    /// Scratch kept: scrapes mostly run one or a few at a time; a burst (a first round)
    /// allocates beyond this and frees the surplus as it ends.
    const KEEP: usize = 16;
    /// Largest body buffer kept, bytes (a 30-pod body is 23-38 KB).
    const MAX_BODY_CAPACITY: usize = 1 << 20;

    fn take(&self) -> Scratch {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).pop().unwrap_or_default()
    }

    fn give_back(&self, mut scratch: Scratch) {
        if scratch.body.capacity() > Self::MAX_BODY_CAPACITY {
            return;
        }
        scratch.body.clear();
        let mut pool = self.0.lock().unwrap_or_else(|p| p.into_inner());
        if pool.len() < Self::KEEP {
            pool.push(scratch);
        }
    }
}

impl<S> std::fmt::Debug for Pipeline<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pipeline").field("hub", &self.hub).field("permits", &self.permits.available_permits()).finish_non_exhaustive()
    }
}

impl<S: KubeletSource> Pipeline<S> {
    /// A pipeline fetching from `source` with at most `max_concurrent` scrapes (at least 1)
    /// queued or running at once, publishing to `hub`.
    pub fn new(source: Arc<S>, max_concurrent: usize, hub: Arc<Hub>, metrics: Metrics, clock: SharedClock) -> Pipeline<S> {
        Pipeline { source, permits: Arc::new(Semaphore::new(max_concurrent.max(1))), hub, metrics, clock, scratch: ScratchPool::default() }
    }

    /// One scrape of `target`: wait for a permit, fetch, parse, encode.
    async fn scrape(self: Arc<Self>, target: NodeTarget) -> Outcome {
        let _permit = self.permits.clone().acquire_owned().await;
        let started = Instant::now();
        let mut scratch = self.scratch.take();
        let result = match self.source.fetch_into(&target, &mut scratch.body).await {
            Ok(()) => {
                let scraped_at_ms = self.clock.now_ms();
                match parse_resource_metrics_with(&target.name, &scratch.body, scraped_at_ms, &mut scratch.parse) {
                    Ok(parsed) => {
                        let scraped = Scraped {
                            frame: self.hub.encode_scrape_ref(&parsed.scrape),
                            samples: parsed.scrape.sample_count(),
                            rejected_samples: parsed.rejected_samples,
                            incomplete_containers: parsed.incomplete_containers,
                        };
                        scratch.parse.recycle(parsed);
                        Ok(scraped)
                    }
                    Err(e) => Err(ScrapeError::Parse(e)),
                }
            }
            Err(e) => Err(e),
        };
        self.scratch.give_back(scratch);
        Outcome { started, duration: started.elapsed(), result }
    }

    /// Counts a finished scrape of `target` and publishes it if it succeeded; logs only when the
    /// node's result changed since its previous scrape (`changed`).
    fn publish(&self, target: &NodeTarget, outcome: Outcome, changed: bool) {
        let metrics = &self.metrics;
        metrics.scrape_duration_seconds.observe(outcome.duration.as_secs_f64());
        metrics.scrapes_total.with_label_values(&[outcome.label()]).inc();
        match outcome.result {
            Ok(s) => {
                if changed {
                    tracing::info!(node = %target.name, "scrapes succeeding");
                }
                metrics.samples_total.inc_by(s.samples as u64);
                metrics.rejected_samples_total.inc_by(u64::from(s.rejected_samples));
                metrics.incomplete_containers_total.inc_by(u64::from(s.incomplete_containers));
                self.hub.publish_scrape(&target.name, s.frame);
            }
            Err(err) => {
                if changed {
                    tracing::warn!(node = %target.name, host = %target.host, port = target.port, error = %err, "scrape failed");
                }
            }
        }
    }
}

/// One owned node, as the scheduler tracks it.
struct NodeState {
    target: NodeTarget,
    phase: Duration,
    /// Bumped on every (re)acquisition, so stale heap entries and results are ignored.
    generation: u64,
    busy: Option<AbortHandle>,
    /// Result label of the last scrape, to log once per change.
    last_result: Option<&'static str>,
    /// When the last finished scrape's fetch began.
    last_started: Option<Instant>,
}

/// A node's next slot in the due queue: when, for which generation of its ownership, which node.
type Due = Reverse<(Instant, u64, String)>;

/// The "when" of scraping: each owned node's slots, what a hand-over means for its first
/// scrape, the due queue and the scrape tasks in flight (one per node at most). What a scrape
/// does is the [`Pipeline`]'s.
pub struct Scheduler<S> {
    config: ScheduleConfig,
    slots: Slots,
    /// Owned nodes by name.
    nodes: HashMap<String, NodeState, foldhash::fast::RandomState>,
    /// Every owned node's next slot, earliest first; entries of an older generation are stale.
    due: BinaryHeap<Due>,
    /// The generation the next newly owned node gets.
    next_generation: u64,
    /// Scrape tasks queued or running.
    tasks: JoinSet<Outcome>,
    /// Which node (and generation) each task in `tasks` scrapes.
    running: HashMap<tokio::task::Id, (String, u64), foldhash::fast::RandomState>,
    pipeline: Arc<Pipeline<S>>,
    /// Ticked every time round the loop (at least every half resolution).
    heartbeat: Arc<Heartbeat>,
}

impl<S> std::fmt::Debug for Scheduler<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Scheduler").field("config", &self.config).field("owned", &self.nodes.len()).finish_non_exhaustive()
    }
}

impl<S: KubeletSource> Scheduler<S> {
    /// A scheduler owning no node yet, its slots anchored to the pipeline's wall clock now.
    pub fn new(config: ScheduleConfig, pipeline: Pipeline<S>) -> Scheduler<S> {
        Scheduler {
            config,
            slots: Slots::new(&pipeline.clock, config.resolution),
            nodes: HashMap::default(),
            due: BinaryHeap::new(),
            next_generation: 1,
            tasks: JoinSet::new(),
            running: HashMap::default(),
            pipeline: Arc::new(pipeline),
            heartbeat: Arc::new(Heartbeat::new(config.resolution)),
        }
    }

    /// The heartbeat this scheduler ticks, for `/livez`.
    pub fn heartbeat(&self) -> Arc<Heartbeat> {
        self.heartbeat.clone()
    }

    /// Scrapes what `assignments` says this shard owns until `shutdown` resolves (or the
    /// assignments close); then aborts in-flight scrapes and publishes a `Shutdown` release of
    /// every owned node.
    pub async fn run(mut self, mut assignments: watch::Receiver<Assignment>, shutdown: impl std::future::Future<Output = ()>) {
        tokio::pin!(shutdown);
        let initial = assignments.borrow_and_update().clone();
        self.apply(&initial);
        loop {
            self.heartbeat.tick();
            let next_due = self.due.peek().map(|Reverse((at, _, _))| *at);
            let next_tick = Instant::now() + self.config.resolution / 2;
            tokio::select! {
                biased;
                _ = &mut shutdown => break,
                changed = assignments.changed() => {
                    if changed.is_err() {
                        break;
                    }
                    let a = assignments.borrow_and_update().clone();
                    self.apply(&a);
                }
                Some(joined) = self.tasks.join_next_with_id(), if !self.tasks.is_empty() => self.finish(joined),
                _ = sleep_until_opt(next_due) => self.start_due(Instant::now()),
                // Nothing else happened for half a resolution: go round to tick.
                _ = tokio::time::sleep_until(next_tick) => {}
            }
        }
        self.tasks.abort_all();
        let released: Vec<NodeReleased> = self.nodes.keys().map(|n| NodeReleased { node: n.clone(), reason: ReleaseReason::Shutdown }).collect();
        self.pipeline.metrics.owned_nodes.set(0);
        self.pipeline.hub.publish_released(released);
    }

    /// Takes on a new assignment: releases (and stops scraping) nodes no longer owned, follows
    /// address changes, and queues each newly owned node's first scrape.
    fn apply(&mut self, a: &Assignment) {
        let now = Instant::now();
        let now_ms = self.pipeline.clock.now_ms();
        let resolution = self.slots.resolution;
        let mut released = Vec::new();
        self.nodes.retain(|name, state| {
            if a.owned.contains_key(name) {
                return true;
            }
            if let Some(h) = state.busy.take() {
                h.abort();
            }
            let reason = if a.known.contains(name) { ReleaseReason::OwnershipMoved } else { ReleaseReason::NodeDeleted };
            released.push(NodeReleased { node: name.clone(), reason });
            false
        });
        for (name, target) in a.owned.iter() {
            match self.nodes.get_mut(name) {
                Some(state) => {
                    if state.target != *target {
                        tracing::info!(node = %name, host = %target.host, port = target.port, "kubelet address changed");
                        state.target = target.clone();
                    }
                }
                None => {
                    let generation = self.next_generation;
                    self.next_generation += 1;
                    let phase = phase_offset(name, resolution);
                    self.nodes.insert(
                        name.clone(),
                        NodeState { target: target.clone(), phase, generation, busy: None, last_result: None, last_started: None },
                    );
                    // First scrape at once (later ones at the node's phase), unless the previous
                    // owner scraped it within the last resolution: then at the phase right away.
                    // Judged as of when the member change was noticed: a busy shard may apply it
                    // later, after a departed owner's Lease would have expired anyway, and must
                    // not take a graceful stop for a crash then.
                    let handover = a.handovers.get(name).filter(|h| {
                        let waited_ms = i64::try_from(now.saturating_duration_since(h.noticed_at).as_millis()).unwrap_or(i64::MAX);
                        h.scraped_within(resolution, now_ms.saturating_sub(waited_ms))
                    });
                    let first = match handover {
                        // A slot that fell while the move was computed here: a departed owner had
                        // stopped, a live one released the node when it noticed the same change
                        // (missed unless it was slower than this shard: then a duplicate, the
                        // lesser evil for freshness).
                        Some(h) if self.slots.next(phase, h.noticed_at) < now => now,
                        Some(_) => self.slots.next(phase, now),
                        None => now,
                    };
                    self.due.push(Reverse((first, generation, name.clone())));
                }
            }
        }
        let metrics = &self.pipeline.metrics;
        if !released.is_empty() {
            tracing::info!(released = released.len(), "nodes released");
            self.pipeline.hub.publish_released(released);
        }
        metrics.owned_nodes.set(self.nodes.len() as i64);
        metrics.known_nodes.set(a.known.len() as i64);
    }

    /// Starts the scrape of every node whose slot has come by `now`, or comes within the group
    /// window after it, and queues its next slot; a node still busy, or scraped less than half a
    /// resolution ago, skips this slot.
    fn start_due(&mut self, now: Instant) {
        let until = now + self.config.group_window;
        while self.due.peek().is_some_and(|Reverse((at, _, _))| *at <= until) {
            let Some(Reverse((at, generation, name))) = self.due.pop() else { break };
            let Some(state) = self.nodes.get_mut(&name) else { continue };
            if state.generation != generation {
                continue;
            }
            // A node's second scrape comes one resolution after its first, so that its rates are
            // served one resolution after it was taken on, as metrics-server's are; the ones
            // after that at its phase (at the phase already when the first was).
            let next = if state.last_started.is_none() && state.busy.is_none() {
                at.max(now) + self.config.resolution
            } else {
                self.slots.next(state.phase, at.max(now) + self.config.resolution / 2)
            };
            self.due.push(Reverse((next, generation, name.clone())));
            if state.busy.is_some() {
                self.pipeline.metrics.scrapes_skipped_total.inc();
                tracing::debug!(node = %name, "previous scrape still queued or running; skipping this round");
                continue;
            }
            if state.last_started.is_some_and(|t| now.saturating_duration_since(t) < self.config.resolution / 2) {
                tracing::debug!(node = %name, "scraped less than half a resolution ago (first scrape after a move); skipping this slot");
                continue;
            }
            let handle = self.tasks.spawn(self.pipeline.clone().scrape(state.target.clone()));
            self.running.insert(handle.id(), (name, generation));
            state.busy = Some(handle);
        }
    }

    /// A scrape task ended: unless its node was released (or re-acquired) meanwhile, record it
    /// and hand it to the pipeline to count and publish.
    fn finish(&mut self, joined: Result<(tokio::task::Id, Outcome), tokio::task::JoinError>) {
        let (id, outcome) = match joined {
            Ok((id, outcome)) => (id, Ok(outcome)),
            Err(err) => (err.id(), Err(err)),
        };
        let Some((node, generation)) = self.running.remove(&id) else { return };
        let state = self.nodes.get_mut(&node).filter(|s| s.generation == generation);
        match outcome {
            Ok(outcome) => {
                let Some(state) = state else { return };
                state.busy = None;
                state.last_started = Some(outcome.started);
                let label = outcome.label();
                let changed = state.last_result != Some(label);
                state.last_result = Some(label);
                self.pipeline.publish(&state.target, outcome, changed);
            }
            Err(err) => {
                if let Some(state) = state {
                    state.busy = None;
                }
                if err.is_panic() {
                    tracing::error!(node = %node, "scrape task panicked");
                }
            }
        }
    }
}

async fn sleep_until_opt(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;
    use std::sync::Mutex;
    use std::sync::atomic::{AtomicUsize, Ordering};

    use bytes::Bytes;
    use futures::StreamExt;
    use prost::Message;
    use shardmetrics_plumbing::clock::ManualClock;
    use shardmetrics_proto::v1::SampleBatch;
    use shardmetrics_proto::{Batch, ShardIdentity, decode_batch};
    use tokio::sync::oneshot;

    use super::*;
    use crate::kubelet::fixture::{PayloadSpec, resource_metrics};
    use crate::stream::Subscription;

    const RES: Duration = Duration::from_secs(15);
    /// Wall-clock start: 5 s into a 15 s interval.
    const WALL_START_MS: i64 = 1_700_000_000_000;

    /// A fake kubelet fleet that records when each node was fetched.
    #[derive(Default)]
    struct FakeFleet {
        fetches: Mutex<Vec<(String, Instant)>>,
        in_flight: AtomicUsize,
        max_in_flight: AtomicUsize,
        delay: Mutex<HashMap<String, Duration>>,
        failing: Mutex<BTreeSet<String>>,
    }

    impl KubeletSource for FakeFleet {
        async fn fetch(&self, target: &NodeTarget) -> Result<Bytes, ScrapeError> {
            self.fetches.lock().unwrap().push((target.name.clone(), Instant::now()));
            let now = self.in_flight.fetch_add(1, Ordering::SeqCst) + 1;
            self.max_in_flight.fetch_max(now, Ordering::SeqCst);
            let delay = self.delay.lock().unwrap().get(&target.name).copied().unwrap_or(Duration::from_millis(20));
            tokio::time::sleep(delay).await;
            self.in_flight.fetch_sub(1, Ordering::SeqCst);
            if self.failing.lock().unwrap().contains(&target.name) {
                return Err(ScrapeError::Http { status: 500 });
            }
            Ok(Bytes::from(resource_metrics(&PayloadSpec { pods: 2, seed: 1, timestamp_ms: 1 })))
        }
    }

    impl FakeFleet {
        fn times_of(&self, node: &str) -> Vec<Instant> {
            self.fetches.lock().unwrap().iter().filter(|(n, _)| n == node).map(|(_, t)| *t).collect()
        }
    }

    fn assignment(owned: &[&str], known: &[&str]) -> Assignment {
        let owned: BTreeMap<String, NodeTarget> =
            owned.iter().map(|n| ((*n).to_owned(), NodeTarget::new(*n, "127.0.0.1", 1))).collect();
        Assignment {
            owned: Arc::new(owned),
            known: Arc::new(known.iter().map(|n| (*n).to_owned()).collect()),
            handovers: Arc::default(),
        }
    }

    struct Harness {
        fleet: Arc<FakeFleet>,
        tx: watch::Sender<Assignment>,
        hub: Arc<Hub>,
        metrics: Metrics,
        stop: Option<oneshot::Sender<()>>,
        task: tokio::task::JoinHandle<()>,
        start: Instant,
        heartbeat: Arc<Heartbeat>,
    }

    fn start(owned: &[&str], max_concurrent: usize) -> Harness {
        start_grouped(owned, max_concurrent, Duration::ZERO)
    }

    fn start_grouped(owned: &[&str], max_concurrent: usize, group_window: Duration) -> Harness {
        let fleet = Arc::new(FakeFleet::default());
        let (tx, rx) = watch::channel(assignment(owned, owned));
        let metrics = Metrics::register(&prometheus::Registry::new()).unwrap();
        let hub = Hub::new(ShardIdentity { shard_id: "s0".into(), epoch: 1 }, 100_000, metrics.clone());
        let clock: SharedClock = ManualClock::new(WALL_START_MS);
        let (stop, stopped) = oneshot::channel::<()>();
        let start = Instant::now();
        let pipeline = Pipeline::new(fleet.clone(), max_concurrent, hub.clone(), metrics.clone(), clock);
        let scheduler = Scheduler::new(ScheduleConfig { resolution: RES, max_concurrent, group_window }, pipeline);
        let heartbeat = scheduler.heartbeat();
        let task = tokio::spawn(scheduler.run(rx, async {
            let _ = stopped.await;
        }));
        Harness { fleet, tx, hub, metrics, stop: Some(stop), task, start, heartbeat }
    }

    async fn next_batch(sub: &mut Subscription) -> Batch {
        decode_batch(SampleBatch::decode(sub.next().await.unwrap().unwrap()).unwrap()).unwrap()
    }

    /// Reads `sub`'s snapshot (one message per buffered scrape) up to its `snapshot_complete`.
    async fn skip_snapshot(sub: &mut Subscription) {
        while !next_batch(sub).await.snapshot_complete {}
    }

    fn names(n: usize) -> Vec<String> {
        (0..n).map(|i| format!("node-{i:04}")).collect()
    }

    #[test]
    fn phase_offsets_are_stable_within_the_interval_and_spread_out() {
        assert_eq!(phase_offset("node-1", RES), phase_offset("node-1", RES));
        let mut buckets = [0usize; 15];
        for n in names(3000) {
            let p = phase_offset(&n, RES);
            assert!(p < RES);
            buckets[p.as_secs() as usize] += 1;
        }
        // 200 per second on average; a good hash keeps every second within ±25 %.
        assert!(buckets.iter().all(|&b| (150..=250).contains(&b)), "{buckets:?}");
    }

    #[tokio::test(start_paused = true)]
    async fn each_owned_node_is_scraped_at_once_then_every_resolution_at_its_phase() {
        let owned = ["node-a", "node-b", "node-c"];
        let h = start(&owned, 8);
        tokio::time::sleep(Duration::from_secs(61)).await;
        // The wall clock started 5 s into an interval: the anchor is 5 s before the start.
        let anchor = h.start - Duration::from_secs(5);
        for n in owned {
            let times = h.fleet.times_of(n);
            assert_eq!(times[0], h.start, "{n}: first scrape at once");
            assert_eq!(times[1] - times[0], RES, "{n}: the second one resolution later (rates after one resolution)");
            assert!((RES / 2..=RES + RES / 2).contains(&(times[2] - times[1])), "{n}: then the next phase slot at least half a resolution on");
            let phase = phase_offset(n, RES);
            for t in &times[2..] {
                let into = Duration::from_nanos((t.duration_since(anchor).as_nanos() % RES.as_nanos()) as u64);
                // tokio timers have millisecond granularity.
                assert!(into >= phase && into - phase < Duration::from_millis(1), "{n}: later scrapes at its phase ({into:?} vs {phase:?})");
            }
            for w in times[2..].windows(2) {
                assert_eq!(w[1] - w[0], RES, "{n}: once per resolution");
            }
            assert!((4..=5).contains(&times.len()), "{n}: {} scrapes in 61 s", times.len());
        }
        assert_eq!(h.metrics.scrapes_total.with_label_values(&["success"]).get() as usize, h.fleet.fetches.lock().unwrap().len());
    }

    #[tokio::test(start_paused = true)]
    async fn nodes_due_within_the_group_window_start_together_and_keep_their_phases() {
        const WINDOW: Duration = Duration::from_millis(100);
        // Two nodes whose phases are 1-99 ms apart, and one at least a second from both.
        let all = names(3000);
        let phase = |n: &str| phase_offset(n, RES);
        let (a, b) = all
            .iter()
            .flat_map(|a| all.iter().map(move |b| (a, b)))
            .find(|(a, b)| phase(b) > phase(a) && phase(b) - phase(a) < WINDOW && phase(b) - phase(a) > Duration::from_millis(1))
            .expect("two close phases among 3000");
        let c = all.iter().find(|c| phase(c).abs_diff(phase(a)) > Duration::from_secs(1) && phase(c).abs_diff(phase(b)) > Duration::from_secs(1)).unwrap();
        let owned = [a.as_str(), b.as_str(), c.as_str()];
        let h = start_grouped(&owned, 8, WINDOW);
        tokio::time::sleep(Duration::from_secs(61)).await;
        let anchor = h.start - Duration::from_secs(5);
        let into = |t: Instant| Duration::from_nanos((t.duration_since(anchor).as_nanos() % RES.as_nanos()) as u64);
        let (ta, tb, tc) = (h.fleet.times_of(a), h.fleet.times_of(b), h.fleet.times_of(c));
        // After the prompt first scrape and the one a resolution later: at the phase slots.
        assert!(ta.len() >= 4 && ta.len() == tb.len(), "{ta:?} {tb:?}");
        for (x, y) in ta[2..].iter().zip(&tb[2..]) {
            assert_eq!(x, y, "{b} starts with {a}, whose slot comes first");
            assert!(into(*x) >= phase(a) && into(*x) - phase(a) < Duration::from_millis(1), "{a} at its own phase");
        }
        for w in tb[2..].windows(2) {
            assert_eq!(w[1] - w[0], RES, "{b}: once per resolution, the early start not carried over");
        }
        for t in &tc[2..] {
            assert!(into(*t) >= phase(c) && into(*t) - phase(c) < Duration::from_millis(1), "{c}: alone, at its phase");
        }
    }

    #[tokio::test(start_paused = true)]
    async fn scrapes_of_many_nodes_are_spread_evenly_over_the_interval() {
        let all = names(600);
        let refs: Vec<&str> = all.iter().map(String::as_str).collect();
        let h = start(&refs, 1000);
        tokio::time::sleep(Duration::from_secs(46)).await;
        // Steady state, one full interval after the prompt first round: 40 per second on average.
        let from = h.start + Duration::from_secs(30);
        let mut per_second = [0usize; 15];
        for (_, t) in h.fleet.fetches.lock().unwrap().iter().filter(|(_, t)| *t >= from && *t < from + RES) {
            per_second[(t.duration_since(from).as_secs()) as usize] += 1;
        }
        assert_eq!(per_second.iter().sum::<usize>(), 600, "every node once in the interval");
        assert!(per_second.iter().all(|&c| (20..=60).contains(&c)), "{per_second:?}");
    }

    /// Every gap between two scrapes of one node, across all nodes, that is below half a
    /// resolution.
    fn early_rescrapes(fleet: &FakeFleet) -> Vec<(String, Duration)> {
        let fetches = fleet.fetches.lock().unwrap().clone();
        let mut by_node: BTreeMap<String, Vec<Instant>> = BTreeMap::new();
        for (n, t) in fetches {
            by_node.entry(n).or_default().push(t);
        }
        by_node
            .into_iter()
            .flat_map(|(n, ts)| ts.windows(2).map(|w| (n.clone(), w[1] - w[0])).collect::<Vec<_>>())
            .filter(|(_, gap)| *gap < RES / 2)
            .collect()
    }

    #[tokio::test(start_paused = true)]
    async fn a_prompt_scrape_delayed_by_the_permit_queue_is_not_followed_by_an_early_slot() {
        // One permit and 150 ms per fetch: 40 nodes taken over at once wait up to 6 s for
        // their prompt scrape, so some regular slots come soon after it.
        let h = start(&["node-x"], 1);
        tokio::time::sleep(Duration::from_secs(1)).await;
        let all = names(40);
        for n in &all {
            h.fleet.delay.lock().unwrap().insert(n.clone(), Duration::from_millis(150));
        }
        let mut owned: Vec<&str> = all.iter().map(String::as_str).collect();
        owned.push("node-x");
        h.tx.send_replace(assignment(&owned, &owned));
        tokio::time::sleep(Duration::from_secs(60)).await;
        assert_eq!(early_rescrapes(&h.fleet), vec![], "no node scraped twice within half a resolution");
        for n in &all {
            let times = h.fleet.times_of(n);
            assert!(times[0] - h.start < Duration::from_secs(8), "{n}: first scrape promptly (queued behind the others)");
            assert!(times.len() >= 3, "{n}: keeps being scraped: {}", times.len());
            for w in times.windows(2) {
                // A skipped slot is at most half a resolution after the prompt scrape.
                assert!(w[1] - w[0] <= RES + RES / 2 + Duration::from_secs(1), "{n}: at most one slot skipped: {:?}", w[1] - w[0]);
            }
        }
    }

    fn handover(started_ms: i64, live: bool, expires_ms: i64) -> Handover {
        Handover {
            previous_owner_started_ms: started_ms,
            previous_owner_live: live,
            previous_owner_expires_ms: expires_ms,
            noticed_at: Instant::now(),
        }
    }

    #[test]
    fn a_handover_counts_as_recently_scraped_only_from_a_running_owner_that_did_not_crash() {
        let now = WALL_START_MS;
        let old = now - 60_000;
        assert!(handover(old, true, 0).scraped_within(RES, now), "ring change under a live owner");
        assert!(handover(old, false, now + 5_000).scraped_within(RES, now), "graceful leave: Lease deleted before expiry");
        assert!(!handover(old, false, now).scraped_within(RES, now), "Lease expired: crash");
        assert!(!handover(now - 2_000, true, 0).scraped_within(RES, now), "owner younger than a resolution");
        assert!(!handover(i64::MAX, true, 0).scraped_within(RES, now), "owner start unknown");
    }

    #[tokio::test(start_paused = true)]
    async fn a_node_handed_over_gracefully_waits_for_its_phase_and_a_crashed_owners_node_does_not() {
        let h = start(&["node-a"], 8);
        tokio::time::sleep(Duration::from_secs(20)).await;
        let moved_at = Instant::now();
        let mut a = assignment(&["node-a", "node-g", "node-c"], &["node-a", "node-g", "node-c"]);
        a.handovers = Arc::new(BTreeMap::from([
            ("node-g".to_owned(), handover(WALL_START_MS - 60_000, false, WALL_START_MS + 10_000)),
            ("node-c".to_owned(), handover(WALL_START_MS - 60_000, false, WALL_START_MS - 1_000)),
        ]));
        h.tx.send_replace(a);
        tokio::time::sleep(Duration::from_millis(1)).await;
        assert_eq!(h.fleet.times_of("node-c"), vec![moved_at], "crashed owner: scraped at once");
        assert_eq!(h.fleet.times_of("node-g"), vec![], "graceful handover: no prompt scrape");
        tokio::time::sleep(RES).await;
        let g = h.fleet.times_of("node-g");
        assert_eq!(g.len(), 1, "scraped at its phase within one resolution");
        let anchor = h.start - Duration::from_secs(5);
        let into = Duration::from_nanos((g[0].duration_since(anchor).as_nanos() % RES.as_nanos()) as u64);
        let phase = phase_offset("node-g", RES);
        assert!(into >= phase && into - phase < Duration::from_millis(1), "at its phase: {into:?} vs {phase:?}");
    }

    #[tokio::test(start_paused = true)]
    async fn a_graceful_stop_is_judged_when_it_was_noticed_not_when_a_busy_shard_applies_it() {
        let h = start(&["node-a"], 8);
        tokio::time::sleep(Duration::from_secs(20)).await;
        // node-g's slot fell 1.1 s ago; its owner's Lease vanished 1 s ago, 500 ms before
        // expiring, and was noticed then; the assignment arrives now, after that expiry.
        let slot = Slots { anchor: h.start - Duration::from_secs(5), resolution: RES }.next(phase_offset("node-g", RES), Instant::now());
        tokio::time::sleep_until(slot + Duration::from_millis(1100)).await;
        let mut a = assignment(&["node-a", "node-g"], &["node-a", "node-g"]);
        let mut g = handover(WALL_START_MS - 60_000, false, WALL_START_MS - 500);
        g.noticed_at = Instant::now() - Duration::from_secs(1);
        a.handovers = Arc::new(BTreeMap::from([("node-g".to_owned(), g)]));
        h.tx.send_replace(a);
        tokio::time::sleep(Duration::from_millis(1)).await;
        assert_eq!(h.fleet.times_of("node-g"), vec![], "graceful handover: no prompt scrape");
        tokio::time::sleep(RES).await;
        let g = h.fleet.times_of("node-g");
        assert!(g.len() == 1 && g[0].duration_since(slot + RES) < Duration::from_millis(2), "scraped at its next slot: {g:?} vs {:?}", slot + RES);
    }

    #[tokio::test(start_paused = true)]
    async fn a_departed_owners_slot_that_fell_while_the_move_was_computed_is_caught_up() {
        let h = start(&["node-a"], 8);
        tokio::time::sleep(Duration::from_secs(20)).await;
        // node-g's slot falls 50 ms after the change was noticed, 100 ms before it arrives.
        let anchor = h.start - Duration::from_secs(5);
        let phase = phase_offset("node-g", RES);
        let slot = Slots { anchor, resolution: RES }.next(phase, Instant::now() + Duration::from_millis(200));
        tokio::time::sleep_until(slot - Duration::from_millis(50)).await;
        let noticed_at = Instant::now();
        tokio::time::sleep(Duration::from_millis(150)).await;
        let mut a = assignment(&["node-a", "node-g"], &["node-a", "node-g"]);
        let mut g = handover(WALL_START_MS - 60_000, false, WALL_START_MS + 10_000);
        g.noticed_at = noticed_at;
        a.handovers = Arc::new(BTreeMap::from([("node-g".to_owned(), g)]));
        let moved_at = Instant::now();
        h.tx.send_replace(a);
        tokio::time::sleep(Duration::from_millis(1)).await;
        assert_eq!(h.fleet.times_of("node-g"), vec![moved_at], "the missed slot is caught up at once");
        tokio::time::sleep(RES * 2).await;
        assert_eq!(early_rescrapes(&h.fleet), vec![]);
    }

    #[tokio::test(start_paused = true)]
    async fn a_newly_owned_node_is_scraped_promptly_and_a_released_one_stops() {
        let h = start(&["node-a", "node-b"], 8);
        let mut sub = h.hub.subscribe("test".into()).unwrap();
        assert!(next_batch(&mut sub).await.snapshot_complete);
        tokio::time::sleep(Duration::from_secs(20)).await;

        let added_at = Instant::now();
        h.tx.send_replace(assignment(&["node-b", "node-c"], &["node-a", "node-b", "node-c"]));
        tokio::time::sleep(Duration::from_millis(1)).await;
        assert_eq!(h.fleet.times_of("node-c").first().copied(), Some(added_at), "new node scraped at once");

        // node-a is still known: its ownership moved.
        let released = loop {
            let b = next_batch(&mut sub).await;
            if !b.released.is_empty() {
                break b.released;
            }
        };
        assert_eq!(released, vec![NodeReleased { node: "node-a".into(), reason: ReleaseReason::OwnershipMoved }]);
        let a_count = h.fleet.times_of("node-a").len();
        tokio::time::sleep(Duration::from_secs(40)).await;
        assert_eq!(h.fleet.times_of("node-a").len(), a_count, "released node no longer scraped");

        // node-b disappears from the cluster: deleted.
        h.tx.send_replace(assignment(&["node-c"], &["node-c"]));
        let released = loop {
            let b = next_batch(&mut sub).await;
            if !b.released.is_empty() {
                break b.released;
            }
        };
        assert_eq!(released, vec![NodeReleased { node: "node-b".into(), reason: ReleaseReason::NodeDeleted }]);
        assert_eq!(h.metrics.owned_nodes.get(), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn concurrency_is_bounded_and_a_node_busier_than_the_interval_is_skipped_not_piled_up() {
        let all = names(40);
        let refs: Vec<&str> = all.iter().map(String::as_str).collect();
        let h = start(&refs, 5);
        for n in &all {
            h.fleet.delay.lock().unwrap().insert(n.clone(), Duration::from_secs(2));
        }
        h.fleet.delay.lock().unwrap().insert("node-0000".into(), Duration::from_secs(40));
        tokio::time::sleep(Duration::from_secs(90)).await;
        assert_eq!(h.fleet.max_in_flight.load(Ordering::SeqCst), 5);
        let slow = h.fleet.times_of("node-0000");
        for w in slow.windows(2) {
            assert!(w[1] - w[0] >= Duration::from_secs(40), "never two scrapes of one node at once");
        }
        assert!(h.metrics.scrapes_skipped_total.get() >= 2, "skipped rounds are counted");
    }

    #[tokio::test(start_paused = true)]
    async fn a_failing_node_is_counted_and_does_not_disturb_the_others() {
        let h = start(&["node-ok", "node-bad"], 8);
        h.fleet.failing.lock().unwrap().insert("node-bad".into());
        let mut sub = h.hub.subscribe("test".into()).unwrap();
        tokio::time::sleep(Duration::from_secs(31)).await;
        let bad = h.fleet.times_of("node-bad").len();
        let ok = h.fleet.times_of("node-ok").len();
        assert!(bad >= 2 && ok >= 2, "both keep being scraped: {bad} {ok}");
        assert_eq!(h.metrics.scrapes_total.with_label_values(&["http_error"]).get() as usize, bad);
        assert_eq!(h.metrics.scrapes_total.with_label_values(&["success"]).get() as usize, ok);
        let _snapshot = next_batch(&mut sub).await;
        for _ in 0..ok {
            let b = next_batch(&mut sub).await;
            assert_eq!(b.scrapes[0].node, "node-ok");
            assert_eq!(b.scrapes[0].pods.len(), 2);
        }
        assert!(h.metrics.samples_total.get() > 0);
    }

    #[tokio::test(start_paused = true)]
    async fn shutdown_releases_every_owned_node_with_reason_shutdown() {
        let mut h = start(&["node-a", "node-b"], 8);
        tokio::time::sleep(Duration::from_secs(1)).await;
        let mut sub = h.hub.subscribe("test".into()).unwrap();
        skip_snapshot(&mut sub).await;
        let _ = h.stop.take().unwrap().send(());
        (&mut h.task).await.unwrap();
        let b = next_batch(&mut sub).await;
        let mut released: Vec<_> = b.released.iter().map(|r| (r.node.as_str(), r.reason)).collect();
        released.sort_by_key(|(n, _)| *n);
        assert_eq!(released, vec![("node-a", ReleaseReason::Shutdown), ("node-b", ReleaseReason::Shutdown)]);
    }

    #[tokio::test(start_paused = true)]
    async fn the_loop_ticks_every_half_resolution_with_nothing_to_scrape_and_a_stopped_one_stalls() {
        let mut h = start(&[], 8);
        for _ in 0..40 {
            tokio::time::sleep(RES / 4 + Duration::from_millis(7)).await;
            assert!(h.heartbeat.age() <= RES / 2, "ticked {:?} ago", h.heartbeat.age());
            assert!(!h.heartbeat.stalled());
        }
        let _ = h.stop.take().unwrap().send(());
        (&mut h.task).await.unwrap();
        tokio::time::sleep(RES * STALL_RESOLUTIONS + Duration::from_millis(1)).await;
        assert!(h.heartbeat.stalled(), "no tick for {:?}", h.heartbeat.age());
    }
}
