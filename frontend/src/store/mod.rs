//! The replica's in-memory view of every node's last two scrapes, and the queries the API asks.
//!
//! Samples land here from [`crate::upstream`] (one [`Store::ingest`] per decoded batch); the API
//! reads rates computed at read time (see [`rate`]).
//!
//! - Nodes are keyed by name; each remembers the pods of its latest accepted scrape.
//! - Pods live in a namespace → name → pod map, so a namespace walk costs O(pods in the
//!   namespace) and every list comes out sorted (pods by namespace, then name) for free. A query
//!   that knows its pods (the metadata view's label index) looks them up one by one instead
//!   ([`Store::pods_among`]): O(pods returned).
//! - Namespaces and container names are interned (`Arc<str>` shared by every pod that uses
//!   them). A string seen for the first time is kept as the decoded batch's own `Arc<str>` (no
//!   copy). Re-ingesting a node whose pod set is unchanged allocates nothing: points are updated
//!   in place and lookups borrow the incoming strings.
//! - Hand-off: while two shards report the same node, a scrape older (by kubelet timestamp) than
//!   the stored one is ignored, so the newest data wins whichever shard sent it.
//! - Staleness: a node and its pods keep being served for `max_staleness` after their last
//!   scrape (by the shard's `scraped_at` clock), so one failed scrape never blanks them;
//!   [`Store::sweep`] then drops them.
//! - Changes (for watches): every applied scrape, release and sweep announces the node it
//!   touched on a broadcast channel ([`Store::subscribe`]); every pod or node removed leaves a
//!   [`Tombstone`] for [`TOMBSTONE_RETENTION_MS`] (at most [`MAX_TOMBSTONES`]), so a watch
//!   resumed from an earlier time can report deletions it missed.

pub mod rate;

use std::collections::{BTreeMap, HashSet, VecDeque};
use std::ops::Bound;
use std::sync::{Arc, RwLock, RwLockReadGuard, RwLockWriteGuard};

use shardmetrics_plumbing::clock::SharedClock;
use shardmetrics_proto::{NodeReleased, NodeScrape, ReleaseReason};

use crate::names::PodNames;

pub use rate::{RateError, Series, Usage};

/// How the store ages and rates data.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StoreConfig {
    /// `--metric-resolution` in milliseconds: the fresh-container fast path needs it.
    pub resolution_ms: i64,
    /// `--max-staleness` in milliseconds: how long after its last scrape a node (and its pods)
    /// is still served.
    pub max_staleness_ms: i64,
}

/// Node names announced on the change channel it can hold before a slow subscriber lags (and
/// must re-read everything; see [`Store::subscribe`]).
pub const CHANGE_CHANNEL_CAPACITY: usize = 8192;
/// How long a removal is remembered for resumed watches, in milliseconds.
pub const TOMBSTONE_RETENTION_MS: i64 = 5 * 60 * 1000;
/// Most removals remembered; past it the oldest are forgotten (and watches resumed from before
/// them are told their version is too old).
pub const MAX_TOMBSTONES: usize = 100_000;

/// A pod or node removed from the store.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tombstone {
    /// When it was removed, store clock, Unix ms.
    pub at_ms: i64,
    /// The pod's namespace; `None` for a node.
    pub namespace: Option<Arc<str>>,
    /// The pod's or node's name.
    pub name: Arc<str>,
}

/// The removals since a time, or why they are not all known.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Tombstones {
    /// Every removal after the time asked, oldest first.
    Since(Vec<Tombstone>),
    /// Removals after the time asked were forgotten; the oldest time still complete, Unix ms.
    Forgotten(i64),
}

/// What [`Store::ingest_scrape`] did with a scrape.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ingested {
    /// The scrape is the newest for its node and was stored.
    Applied,
    /// An older scrape of the node than the stored one (hand-off overlap); ignored.
    Older,
}

/// Stored object counts, for self-metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Counts {
    /// Nodes with at least one scrape stored.
    pub nodes: usize,
    /// Pods stored.
    pub pods: usize,
    /// Containers stored.
    pub containers: usize,
}

/// The usage of one node, ready to serve.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeUsage {
    /// Node name.
    pub name: Arc<str>,
    /// CPU, memory, timestamp and window.
    pub usage: Usage,
    /// When the shard read the kubelet, Unix ms (freshness).
    pub scraped_at_ms: i64,
}

/// The usage of one container, ready to serve.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ContainerUsage {
    /// Container name.
    pub name: Arc<str>,
    /// Average CPU over the container's window, in nanocores.
    pub cpu_nanocores: u64,
    /// Memory working set, in bytes.
    pub memory_bytes: u64,
    /// Swap in use, in bytes; `None` when the kubelet reported no swap for it (not served).
    pub swap_bytes: Option<u64>,
}

/// A served pod's containers: up to two inline, so listing a pod of one or two containers (an
/// app and a sidecar) allocates nothing. A list built one and freed it on another thread per pod,
/// ~340 Ir per listed pod (docs/benchmarks.md, "Full pod list").
pub type Containers = smallvec::SmallVec<[ContainerUsage; 2]>;

/// The usage of one pod, ready to serve.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PodUsage {
    /// Namespace.
    pub namespace: Arc<str>,
    /// Pod name.
    pub name: Arc<str>,
    /// Timestamp of the container with the earliest timestamp, Unix ms.
    pub timestamp_ms: i64,
    /// Window of that same container, in milliseconds.
    pub window_ms: i64,
    /// Containers sorted by name.
    pub containers: Containers,
    /// When the shard read the kubelet, Unix ms (freshness).
    pub scraped_at_ms: i64,
}

/// The store: see the module docs. Shared between the upstream writers and API readers.
pub struct Store {
    /// Rating and aging settings.
    config: StoreConfig,
    /// Wall clock for staleness.
    clock: SharedClock,
    /// The data. Writers hold it for one batch; readers for one query.
    inner: RwLock<Inner>,
    /// Names of nodes whose data changed (scrape, release, sweep), for watches.
    changes: tokio::sync::broadcast::Sender<Arc<str>>,
}

/// The data behind the lock.
#[derive(Default)]
struct Inner {
    /// Nodes by name.
    nodes: BTreeMap<Arc<str>, NodeEntry>,
    /// Pods by namespace, then name.
    namespaces: BTreeMap<Arc<str>, NamespaceEntry>,
    /// Interned namespaces and container names.
    strings: Interner,
    /// Bumped per ingested scrape; marks what a scrape saw.
    generation: u64,
    /// Store clock at the current write, Unix ms (the time of tombstones).
    now_ms: i64,
    /// Removals, oldest first.
    tombstones: VecDeque<Tombstone>,
    /// Removals at or before this time (Unix ms) may have been forgotten.
    forgotten_ms: i64,
    /// Where new pods' names come from (see [`crate::names`]).
    names: PodNames,
}

/// The pods of one namespace, by name.
type NamespaceEntry = BTreeMap<Arc<str>, PodEntry>;

/// One node's latest accepted scrape.
struct NodeEntry {
    /// Shard clock when it was scraped, Unix ms.
    scraped_at_ms: i64,
    /// Kubelet time of the scrape (ordering key for hand-offs), Unix ms.
    kubelet_ms: i64,
    /// The node's own usage points; `None` until the kubelet reports a node sample.
    usage: Option<Series>,
    /// (namespace, name) of the pods of its latest scrape.
    pods: Vec<(Arc<str>, Arc<str>)>,
}

/// One pod's containers.
struct PodEntry {
    /// The node that reported it last.
    node: Arc<str>,
    /// Shard clock of that node's scrape, Unix ms.
    scraped_at_ms: i64,
    /// Generation of the last scrape that listed it.
    seen: u64,
    /// Containers sorted by name.
    containers: Vec<ContainerEntry>,
}

/// One container's points.
struct ContainerEntry {
    /// Interned container name.
    name: Arc<str>,
    /// Generation of the last scrape that listed it.
    seen: u64,
    /// Its last two points.
    series: Series,
}

/// Shares repeated strings (namespaces, container names).
#[derive(Default)]
struct Interner {
    /// Every interned string.
    set: HashSet<Arc<str>>,
}

impl Interner {
    /// The shared copy of `s`: the one already interned, else `s` itself, kept (never copied).
    fn intern(&mut self, s: &Arc<str>) -> Arc<str> {
        if let Some(a) = self.set.get(&**s) {
            return a.clone();
        }
        self.set.insert(s.clone());
        s.clone()
    }

    /// Forgets strings nothing else refers to.
    fn purge(&mut self) {
        self.set.retain(|a| Arc::strong_count(a) > 1);
    }
}

/// The kubelet time of a scrape: the node sample's, else the newest container sample's, else
/// the shard's scrape time.
fn kubelet_time(scrape: &NodeScrape) -> i64 {
    if let Some(p) = &scrape.node_usage {
        return p.timestamp_ms;
    }
    scrape
        .pods
        .iter()
        .flat_map(|p| p.containers.iter().map(|c| c.usage.timestamp_ms))
        .max()
        .unwrap_or(scrape.scraped_at_ms)
}

impl Store {
    /// An empty store whose pod names are its own ([`PodNames::unshared`]).
    pub fn new(config: StoreConfig, clock: SharedClock) -> Self {
        Self::with_pod_names(config, clock, PodNames::unshared())
    }

    /// An empty store that takes its pod names from `names` (shared with the metadata view,
    /// so each name is held once).
    pub fn with_pod_names(config: StoreConfig, clock: SharedClock, names: PodNames) -> Self {
        let forgotten_ms = clock.now_ms();
        let inner = Inner { forgotten_ms, names, ..Inner::default() };
        Self { config, clock, inner: RwLock::new(inner), changes: tokio::sync::broadcast::channel(CHANGE_CHANNEL_CAPACITY).0 }
    }

    /// Names of nodes whose data changes from now on (a scrape applied, the node released or
    /// swept). Overflow policy: a subscriber more than [`CHANGE_CHANNEL_CAPACITY`] names behind
    /// gets `Lagged` and must re-read the whole store; ingest never waits for subscribers.
    pub fn subscribe(&self) -> tokio::sync::broadcast::Receiver<Arc<str>> {
        self.changes.subscribe()
    }

    fn announce(&self, nodes: impl IntoIterator<Item = Arc<str>>) {
        if self.changes.receiver_count() > 0 {
            for node in nodes {
                let _ = self.changes.send(node);
            }
        }
    }

    /// The removals after `after_ms` (store clock, Unix ms), unless some of them were forgotten.
    pub fn tombstones_since(&self, after_ms: i64) -> Tombstones {
        let inner = self.read();
        if after_ms < inner.forgotten_ms {
            return Tombstones::Forgotten(inner.forgotten_ms);
        }
        Tombstones::Since(inner.tombstones.iter().filter(|t| t.at_ms > after_ms).cloned().collect())
    }

    /// Names of every stored node, sorted (servable or not).
    pub fn node_names(&self) -> Vec<Arc<str>> {
        self.read().nodes.keys().cloned().collect()
    }

    /// The pods node `node` reported last (namespace, name), sorted.
    pub fn node_pods(&self, node: &str) -> Vec<(Arc<str>, Arc<str>)> {
        let inner = self.read();
        let mut pods = inner.nodes.get(node).map(|n| n.pods.clone()).unwrap_or_default();
        pods.sort();
        pods
    }

    /// The settings it was built with.
    pub fn config(&self) -> StoreConfig {
        self.config
    }

    /// The store's (injected) wall clock now, Unix ms: what ingest and staleness are timed by.
    pub fn now_ms(&self) -> i64 {
        self.clock.now_ms()
    }

    fn read(&self) -> RwLockReadGuard<'_, Inner> {
        self.inner.read().unwrap_or_else(|e| e.into_inner())
    }

    fn write(&self) -> RwLockWriteGuard<'_, Inner> {
        self.inner.write().unwrap_or_else(|e| e.into_inner())
    }

    /// Stores the scrapes (in order) and applies the releases of one batch under one lock.
    pub fn ingest(&self, scrapes: &[NodeScrape], released: &[NodeReleased]) -> Vec<Ingested> {
        let mut inner = self.write();
        inner.now_ms = self.clock.now_ms();
        let outcomes: Vec<Ingested> = scrapes.iter().map(|s| inner.ingest_scrape(s, self.config.resolution_ms)).collect();
        let mut changed: Vec<Arc<str>> = Vec::new();
        for (s, o) in scrapes.iter().zip(&outcomes) {
            if *o == Ingested::Applied
                && let Some((k, _)) = inner.nodes.get_key_value(s.node.as_str())
            {
                changed.push(k.clone());
            }
        }
        for r in released {
            if inner.release(r) {
                changed.push(Arc::from(r.node.as_str()));
            }
        }
        drop(inner);
        self.announce(changed);
        outcomes
    }

    /// Stores one scrape (see [`Ingested`]).
    pub fn ingest_scrape(&self, scrape: &NodeScrape) -> Ingested {
        self.ingest(std::slice::from_ref(scrape), &[])[0]
    }

    /// Drops nodes (and their pods) whose last scrape is older than `max_staleness`, and
    /// strings (pod names included, whoever else shares them) nothing uses any more. Returns
    /// how many nodes were dropped.
    pub fn sweep(&self) -> usize {
        let oldest = self.clock.now_ms().saturating_sub(self.config.max_staleness_ms);
        let mut inner = self.write();
        inner.now_ms = self.clock.now_ms();
        let stale: Vec<Arc<str>> =
            inner.nodes.iter().filter(|(_, n)| n.scraped_at_ms < oldest).map(|(k, _)| k.clone()).collect();
        for node in &stale {
            inner.remove_node(node);
        }
        inner.expire_tombstones();
        inner.strings.purge();
        // The name table is purged after the store's lock is let go (the metadata view shares it).
        let names = inner.names.clone();
        drop(inner);
        names.purge();
        let dropped = stale.len();
        self.announce(stale);
        dropped
    }

    /// Stored object counts.
    pub fn counts(&self) -> Counts {
        let inner = self.read();
        let mut counts = Counts { nodes: inner.nodes.len(), ..Counts::default() };
        for pods in inner.namespaces.values() {
            counts.pods += pods.len();
            counts.containers += pods.values().map(|p| p.containers.len()).sum::<usize>();
        }
        counts
    }

    /// Oldest `scraped_at` still served, Unix ms.
    fn oldest_served(&self) -> i64 {
        self.clock.now_ms().saturating_sub(self.config.max_staleness_ms)
    }

    /// The usage of node `name`, if it has a rate and is not stale.
    pub fn node(&self, name: &str) -> Option<NodeUsage> {
        let oldest = self.oldest_served();
        let inner = self.read();
        let (key, entry) = inner.nodes.get_key_value(name)?;
        node_usage(key, entry, oldest)
    }

    /// The usage of every servable node for which `keep(name)` gives `Some`, sorted by name,
    /// each with what `keep` returned (e.g. its metadata).
    pub fn nodes<M>(&self, mut keep: impl FnMut(&str) -> Option<M>) -> Vec<(NodeUsage, M)> {
        let oldest = self.oldest_served();
        let inner = self.read();
        let mut out = Vec::with_capacity(inner.nodes.len());
        for (name, entry) in &inner.nodes {
            if let Some(u) = node_usage(name, entry, oldest)
                && let Some(m) = keep(name)
            {
                out.push((u, m));
            }
        }
        out
    }

    /// The usage of pod `namespace/name`, if all its containers have a rate and it is not stale.
    pub fn pod(&self, namespace: &str, name: &str) -> Option<PodUsage> {
        let oldest = self.oldest_served();
        let inner = self.read();
        let (ns, pods) = inner.namespaces.get_key_value(namespace)?;
        let (key, entry) = pods.get_key_value(name)?;
        pod_usage(ns, key, entry, oldest)
    }

    /// The usage of every servable pod in `namespace` (all namespaces when `None`) for which
    /// `keep(namespace, name)` gives `Some`, sorted by namespace then name, each with what `keep`
    /// returned. `keep` runs only for pods with data, so a namespace query costs O(pods in it).
    /// Walks in chunks like [`Store::pods_with`].
    pub fn pods<M>(&self, namespace: Option<&str>, mut keep: impl FnMut(&str, &str) -> Option<M>) -> Vec<(PodUsage, M)> {
        self.pods_with(namespace, || (), |(), ns, name| keep(ns, name))
    }

    /// [`Store::pods`], walked in chunks of at most [`POD_CHUNK`] pods so that no lock is held
    /// across a long scan: each chunk calls `open` (e.g. to take a read guard of another view,
    /// before the store's lock), then holds the store's read lock for the chunk only, passing
    /// the guard to `keep`. Between chunks writers get in (a waiting writer would otherwise block
    /// every later reader behind a full list), and the walk resumes after the last key visited.
    ///
    /// Not a snapshot, as metrics-server's lists are not: each pod is read whole under one lock
    /// hold, the result stays sorted without duplicates, and a pod present for the whole walk
    /// is in it; a pod added or removed during the walk may or may not be.
    pub fn pods_with<G, M>(
        &self,
        namespace: Option<&str>,
        mut open: impl FnMut() -> G,
        mut keep: impl FnMut(&G, &str, &str) -> Option<M>,
    ) -> Vec<(PodUsage, M)> {
        let mut cursor = PodCursor::new(namespace);
        let mut out = Vec::new();
        while let Some(chunk) = self.next_pods(&mut cursor, &mut open, &mut keep) {
            out.extend(chunk);
        }
        out
    }

    /// One chunk of the walk [`Store::pods_with`] makes: the servable pods kept among the next
    /// (at most) [`POD_CHUNK`] pods after `cursor`, which it then moves past them; `None` once
    /// the walk is over. A chunk may be empty (nothing kept) while the walk goes on. For lists
    /// written while they are read: the caller holds one chunk, never the whole selection.
    pub fn next_pods<G, M>(
        &self,
        cursor: &mut PodCursor,
        mut open: impl FnMut() -> G,
        mut keep: impl FnMut(&G, &str, &str) -> Option<M>,
    ) -> Option<Vec<(PodUsage, M)>> {
        if cursor.done {
            return None;
        }
        let oldest = self.oldest_served();
        let mut out = Vec::new();
        let guard = open();
        let inner = self.read();
        let namespace = cursor.namespace.as_deref();
        let from = match (namespace, &cursor.after) {
            (Some(ns), _) => Bound::Included(ns),
            (None, Some((ns, _))) => Bound::Included(&**ns),
            (None, None) => Bound::Unbounded,
        };
        let to = namespace.map_or(Bound::Unbounded, Bound::Included);
        let mut visited = 0usize;
        let mut finished = true;
        let mut last: Option<(&Arc<str>, &Arc<str>)> = None;
        'chunk: for (ns, pods) in inner.namespaces.range::<str, _>((from, to)) {
            let after = match &cursor.after {
                Some((cns, name)) if **cns == **ns => Bound::Excluded(&**name),
                _ => Bound::Unbounded,
            };
            for (name, entry) in pods.range::<str, _>((after, Bound::Unbounded)) {
                if visited == POD_CHUNK {
                    finished = false;
                    break 'chunk;
                }
                visited += 1;
                last = Some((ns, name));
                if entry.scraped_at_ms < oldest {
                    continue;
                }
                if let Some(m) = keep(&guard, ns, name)
                    && let Some(u) = pod_usage(ns, name, entry, oldest)
                {
                    out.push((u, m));
                }
            }
        }
        cursor.done = finished;
        cursor.after = last.map(|(ns, name)| (ns.clone(), name.clone()));
        Some(out)
    }

    /// The usage of the servable pods among those `next` hands out, in the order handed out,
    /// each with its `M`: the point-lookup counterpart of [`Store::pods_with`] for callers that
    /// already know which pods they want (a label-index selection), so the cost is O(pods
    /// handed out) whatever the store holds. Same staleness rules as [`Store::pods_with`].
    ///
    /// `next` is called before each hold of the store's read lock (so it may take another
    /// view's lock and release it) and returns the next chunk of (namespace, name, `M`), at most
    /// [`POD_CHUNK`] long to bound the hold, or `None` when there are no more.
    pub fn pods_among<M>(&self, mut next: impl FnMut() -> Option<Vec<(Arc<str>, Arc<str>, M)>>) -> Vec<(PodUsage, M)> {
        let mut out = Vec::new();
        while let Some(chunk) = next() {
            out.extend(self.pods_of(chunk));
        }
        out
    }

    /// One chunk of [`Store::pods_among`]: the servable pods among `chunk` (grouped by
    /// namespace, at most [`POD_CHUNK`] long), looked up under one hold of the read lock.
    pub fn pods_of<M>(&self, chunk: Vec<(Arc<str>, Arc<str>, M)>) -> Vec<(PodUsage, M)> {
        let oldest = self.oldest_served();
        let mut out = Vec::with_capacity(chunk.len());
        let inner = self.read();
        // The namespace of the previous pod and its pods: chunks come grouped by namespace.
        let mut current: Option<(&Arc<str>, &NamespaceEntry)> = None;
        for (ns, name, m) in chunk {
            if current.is_none_or(|(cns, _)| **cns != *ns) {
                current = inner.namespaces.get_key_value(&*ns);
            }
            let Some((ns_key, pods)) = current else { continue };
            if let Some((key, entry)) = pods.get_key_value(&*name)
                && let Some(u) = pod_usage(ns_key, key, entry, oldest)
            {
                out.push((u, m));
            }
        }
        out
    }
}

/// Most pods a list visits per hold of the store's read lock (~0.5 ms of work in a release
/// build): bounds how long a list keeps ingest, and the readers queued behind it, waiting.
pub const POD_CHUNK: usize = 1024;

/// Where a walk of the store's pods ([`Store::next_pods`]) stands: its scope and the last
/// (namespace, name) visited; the next chunk starts after it.
#[derive(Debug, Clone, Default)]
pub struct PodCursor {
    /// The namespace walked; `None` walks all of them.
    namespace: Option<Arc<str>>,
    /// The last pod visited.
    after: Option<(Arc<str>, Arc<str>)>,
    /// Set once the last chunk was handed out.
    done: bool,
}

impl PodCursor {
    /// A walk of `namespace`'s pods (every namespace's when `None`) from the start.
    pub fn new(namespace: Option<&str>) -> Self {
        Self { namespace: namespace.map(Arc::from), after: None, done: false }
    }
}

/// A node's usage if it is servable.
fn node_usage(name: &Arc<str>, entry: &NodeEntry, oldest: i64) -> Option<NodeUsage> {
    if entry.scraped_at_ms < oldest {
        return None;
    }
    let usage = entry.usage.as_ref()?.usage().ok()?;
    Some(NodeUsage { name: name.clone(), usage, scraped_at_ms: entry.scraped_at_ms })
}

/// A pod's usage if it is fresh and all of its containers have two points (metrics-server's
/// rule). A container whose pair is invalid (CPU decreased, start time moved backwards) is left
/// out and the rest of the pod served, as metrics-server does; a pod left with no container is
/// not served (metrics-server serves it with no containers, a null timestamp and a 0 s window,
/// which is no measurement: a deliberate difference, docs/metrics-server-differences.md).
fn pod_usage(ns: &Arc<str>, name: &Arc<str>, entry: &PodEntry, oldest: i64) -> Option<PodUsage> {
    if entry.scraped_at_ms < oldest || entry.containers.is_empty() {
        return None;
    }
    let mut containers = Containers::with_capacity(entry.containers.len());
    let mut earliest: Option<Usage> = None;
    for c in &entry.containers {
        let u = match c.series.usage() {
            Ok(u) => u,
            Err(RateError::Invalid) => continue,
            Err(RateError::NoPrevious) => return None,
        };
        if earliest.is_none_or(|e| u.timestamp_ms < e.timestamp_ms) {
            earliest = Some(u);
        }
        containers.push(ContainerUsage {
            name: c.name.clone(),
            cpu_nanocores: u.cpu_nanocores,
            memory_bytes: u.memory_bytes,
            swap_bytes: u.swap_bytes,
        });
    }
    let earliest = earliest?;
    Some(PodUsage {
        namespace: ns.clone(),
        name: name.clone(),
        timestamp_ms: earliest.timestamp_ms,
        window_ms: earliest.window_ms,
        containers,
        scraped_at_ms: entry.scraped_at_ms,
    })
}

impl Inner {
    fn ingest_scrape(&mut self, scrape: &NodeScrape, resolution_ms: i64) -> Ingested {
        let kubelet_ms = kubelet_time(scrape);
        if let Some(existing) = self.nodes.get(scrape.node.as_str())
            && kubelet_ms < existing.kubelet_ms
        {
            return Ingested::Older;
        }
        self.generation += 1;
        let generation = self.generation;
        let node_key = match self.nodes.get_key_value(scrape.node.as_str()) {
            Some((k, _)) => k.clone(),
            None => {
                let k: Arc<str> = Arc::from(scrape.node.as_str());
                self.nodes.insert(
                    k.clone(),
                    NodeEntry { scraped_at_ms: scrape.scraped_at_ms, kubelet_ms, usage: None, pods: Vec::new() },
                );
                k
            }
        };

        // Pods: update in place; count what is new so the node's pod list is rebuilt only then.
        let mut pod_set_changed = false;
        for pod in &scrape.pods {
            let ns_known = self.namespaces.contains_key(&*pod.namespace);
            if !ns_known {
                let ns = self.strings.intern(&pod.namespace);
                self.namespaces.insert(ns, BTreeMap::new());
            }
            let Inner { namespaces, strings, names, .. } = self;
            let Some(pods) = namespaces.get_mut(&*pod.namespace) else { continue };
            let entry = match pods.get_mut(pod.name.as_str()) {
                Some(e) if e.seen == generation => continue, // a pod listed twice in one scrape: first wins
                Some(e) => {
                    if *e.node != *node_key {
                        // The pod name now lives on another node (re-created): start afresh.
                        e.node = node_key.clone();
                        e.containers.clear();
                        pod_set_changed = true;
                    }
                    e
                }
                None => {
                    pod_set_changed = true;
                    pods.entry(names.share(&pod.name)).or_insert(PodEntry {
                        node: node_key.clone(),
                        scraped_at_ms: 0,
                        seen: 0,
                        containers: Vec::with_capacity(pod.containers.len()),
                    })
                }
            };
            entry.seen = generation;
            entry.scraped_at_ms = scrape.scraped_at_ms;
            let mut containers_changed = false;
            for c in &pod.containers {
                match entry.containers.binary_search_by(|e| (*e.name).cmp(&*c.name)) {
                    Ok(i) => {
                        let e = &mut entry.containers[i];
                        if e.seen == generation {
                            continue;
                        }
                        e.seen = generation;
                        e.series.push_container(c.start_time_ms, c.usage, resolution_ms);
                    }
                    Err(i) => {
                        containers_changed = true;
                        entry.containers.insert(
                            i,
                            ContainerEntry {
                                name: strings.intern(&c.name),
                                seen: generation,
                                series: Series::first(c.start_time_ms, c.usage, resolution_ms),
                            },
                        );
                    }
                }
            }
            if containers_changed || entry.containers.len() != pod.containers.len() {
                entry.containers.retain(|c| c.seen == generation);
            }
        }

        // The node itself.
        let Some(node) = self.nodes.get_mut(&*node_key) else { return Ingested::Applied };
        node.scraped_at_ms = scrape.scraped_at_ms;
        node.kubelet_ms = kubelet_ms;
        match (&mut node.usage, scrape.node_usage) {
            (Some(series), Some(p)) => series.push_node(p),
            (slot @ None, Some(p)) => *slot = Some(Series::first(0, p, resolution_ms)),
            (_, None) => {}
        }
        if !pod_set_changed && node.pods.len() == scrape.pods.len() {
            // Same count and nothing new: only a pod listed twice could hide a departure.
            let namespaces = &self.namespaces;
            pod_set_changed = node.pods.iter().any(|(ns, name)| {
                namespaces.get(ns).and_then(|p| p.get(name)).is_none_or(|e| e.seen != generation)
            });
        } else {
            pod_set_changed = true;
        }
        if pod_set_changed {
            let old = std::mem::take(&mut node.pods);
            let mut new = Vec::with_capacity(scrape.pods.len());
            for pod in &scrape.pods {
                if let Some((ns, pods)) = self.namespaces.get_key_value(&*pod.namespace)
                    && let Some((name, e)) = pods.get_key_value(pod.name.as_str())
                    && e.seen == generation
                    && !new.iter().any(|(n, p): &(Arc<str>, Arc<str>)| n == ns && p == name)
                {
                    new.push((ns.clone(), name.clone()));
                }
            }
            if let Some(node) = self.nodes.get_mut(&*node_key) {
                node.pods = new;
            }
            for (ns, name) in old {
                self.remove_pod_if(&ns, &name, |e| e.seen != generation && *e.node == *node_key);
            }
        }
        Ingested::Applied
    }

    /// Removes pod `ns/name` if `pred` holds for it, leaving a tombstone; drops the namespace
    /// when it empties.
    fn remove_pod_if(&mut self, ns: &Arc<str>, name: &Arc<str>, pred: impl FnOnce(&PodEntry) -> bool) {
        let mut removed = false;
        if let Some(pods) = self.namespaces.get_mut(&**ns) {
            if pods.get(&**name).is_some_and(pred) {
                pods.remove(&**name);
                removed = true;
            }
            if pods.is_empty() {
                self.namespaces.remove(&**ns);
            }
        }
        if removed {
            self.bury(Some(ns.clone()), name.clone());
        }
    }

    /// Removes a node and the pods it last reported, leaving tombstones.
    fn remove_node(&mut self, node: &str) {
        if let Some((key, entry)) = self.nodes.remove_entry(node) {
            for (ns, name) in entry.pods {
                self.remove_pod_if(&ns, &name, |e| *e.node == *node);
            }
            self.bury(None, key);
        }
    }

    /// Remembers a removal (see [`MAX_TOMBSTONES`] for the overflow policy).
    fn bury(&mut self, namespace: Option<Arc<str>>, name: Arc<str>) {
        if self.tombstones.len() >= MAX_TOMBSTONES
            && let Some(oldest) = self.tombstones.pop_front()
        {
            self.forgotten_ms = self.forgotten_ms.max(oldest.at_ms);
        }
        self.tombstones.push_back(Tombstone { at_ms: self.now_ms, namespace, name });
    }

    /// Forgets removals older than [`TOMBSTONE_RETENTION_MS`].
    fn expire_tombstones(&mut self) {
        let horizon = self.now_ms - TOMBSTONE_RETENTION_MS;
        while self.tombstones.front().is_some_and(|t| t.at_ms <= horizon) {
            self.tombstones.pop_front();
        }
        self.forgotten_ms = self.forgotten_ms.max(horizon);
    }

    /// Applies a release: a deleted node goes at once; a node that moved to another shard (or
    /// whose shard is shutting down) keeps its data for the next owner to continue.
    /// Applies a release; true when it removed the node.
    fn release(&mut self, released: &NodeReleased) -> bool {
        match released.reason {
            ReleaseReason::NodeDeleted => {
                let known = self.nodes.contains_key(released.node.as_str());
                self.remove_node(&released.node);
                known
            }
            ReleaseReason::OwnershipMoved | ReleaseReason::Shutdown => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use shardmetrics_plumbing::clock::ManualClock;
    use shardmetrics_proto::{ContainerSample, PodSamples, Point};

    use super::*;

    const T0: i64 = 1_767_225_600_000;
    const RES: i64 = 15_000;

    fn store(clock: &Arc<ManualClock>) -> Store {
        Store::new(StoreConfig { resolution_ms: RES, max_staleness_ms: 45_000 }, clock.clone())
    }

    /// A scrape of `node` at `t` where every container has used `cores` cores since 0.
    fn scrape(node: &str, t: i64, pods: &[(&str, &str, &[&str])], cores: u64) -> NodeScrape {
        let cpu = |t: i64| (t as u64) * cores * 1_000_000; // ns of CPU after t ms at `cores`
        NodeScrape {
            node: node.into(),
            scraped_at_ms: T0 + t + 5,
            node_usage: Some(Point { timestamp_ms: T0 + t, cpu_usage_ns: cpu(t) * 4, memory_working_set_bytes: 1 << 30, swap_usage_bytes: None }),
            pods: pods
                .iter()
                .map(|(ns, name, containers)| PodSamples {
                    namespace: (*ns).into(),
                    name: (*name).into(),
                    containers: containers
                        .iter()
                        .map(|c| ContainerSample {
                            name: (*c).into(),
                            start_time_ms: 1,
                            usage: Point { timestamp_ms: T0 + t - 1, cpu_usage_ns: cpu(t), memory_working_set_bytes: 1 << 20, swap_usage_bytes: None },
                        })
                        .collect(),
                })
                .collect(),
        }
    }

    const PODS: &[(&str, &str, &[&str])] =
        &[("default", "web-1", &["app", "sidecar"]), ("kube-system", "dns", &["coredns"]), ("default", "api", &["app"])];

    #[test]
    fn pod_names_are_held_once_with_the_metadata_view_and_forgotten_when_both_let_go() {
        use kube::runtime::watcher::Event;
        let clock = ManualClock::new(T0 + 20_000);
        let names = PodNames::shared();
        let s = Store::with_pod_names(StoreConfig { resolution_ms: RES, max_staleness_ms: 45_000 }, clock.clone(), names.clone());
        let m = crate::metadata::Metadata::with_pod_names(names.clone());
        let api = || (("default".to_owned(), "api".to_owned()), BTreeMap::new());
        m.apply_pod(Event::Apply(api()));
        s.ingest_scrape(&scrape("n1", 0, PODS, 1));
        assert_eq!(names.len(), 3, "web-1, dns and api, api once for both sides");
        let stored = s.node_pods("n1").into_iter().find(|(_, n)| &**n == "api").map(|(_, n)| n).expect("api stored");
        assert!(Arc::ptr_eq(&stored, &names.share("api")), "the store holds the metadata view's copy");
        drop(stored);
        m.apply_pod(Event::Delete(api()));
        assert_eq!(names.purge(), 0, "the store still holds every name");
        clock.advance_ms(60_000);
        assert_eq!(s.sweep(), 1);
        assert_eq!(names.len(), 3, "the pods' tombstones still hold their names");
        clock.advance_ms(TOMBSTONE_RETENTION_MS);
        assert_eq!(s.sweep(), 0);
        assert!(names.is_empty(), "the sweep forgot the names nobody holds any more");
    }

    #[test]
    fn two_scrapes_give_node_and_pod_rates_sorted_by_namespace_then_name() {
        let clock = ManualClock::new(T0 + 20_000);
        let s = store(&clock);
        s.ingest_scrape(&scrape("n1", 0, PODS, 1));
        assert!(s.node("n1").is_none(), "one scrape: no rate yet");
        assert!(s.pods(None, |_, _| Some(())).is_empty());
        s.ingest_scrape(&scrape("n1", 15_000, PODS, 1));
        let node = s.node("n1").expect("node rate");
        assert_eq!(node.usage.cpu_nanocores, 4_000_000_000);
        assert_eq!((node.usage.timestamp_ms, node.usage.window_ms), (T0 + 15_000, 15_000));
        let pods = s.pods(None, |_, _| Some(()));
        let names: Vec<_> = pods.iter().map(|(p, _)| format!("{}/{}", p.namespace, p.name)).collect();
        assert_eq!(names, ["default/api", "default/web-1", "kube-system/dns"]);
        let web = &pods[1].0;
        assert_eq!(web.containers.iter().map(|c| &*c.name).collect::<Vec<_>>(), ["app", "sidecar"]);
        assert_eq!(web.containers[0].cpu_nanocores, 1_000_000_000);
        assert_eq!((web.timestamp_ms, web.window_ms), (T0 + 14_999, 15_000));
        assert_eq!(s.counts(), Counts { nodes: 1, pods: 3, containers: 4 });
    }

    #[test]
    fn a_namespace_query_visits_only_that_namespace() {
        let clock = ManualClock::new(T0 + 20_000);
        let s = store(&clock);
        for t in [0, 15_000] {
            s.ingest_scrape(&scrape("n1", t, PODS, 1));
        }
        let mut visited = Vec::new();
        let pods = s.pods(Some("kube-system"), |ns, name| {
            visited.push(format!("{ns}/{name}"));
            Some(())
        });
        assert_eq!(visited, ["kube-system/dns"]);
        assert_eq!(pods.len(), 1);
        assert!(s.pods(Some("nope"), |_, _| Some(())).is_empty());
        assert_eq!(s.pod("default", "api").map(|p| p.containers.len()), Some(1));
        assert!(s.pod("default", "missing").is_none());
    }

    #[test]
    fn a_pod_is_served_only_when_every_container_has_a_rate() {
        let clock = ManualClock::new(T0 + 40_000);
        let s = store(&clock);
        s.ingest_scrape(&scrape("n1", 0, &[("default", "web-1", &["app"])], 1));
        s.ingest_scrape(&scrape("n1", 15_000, &[("default", "web-1", &["app", "sidecar"])], 1));
        assert!(s.pod("default", "web-1").is_none(), "sidecar has one point only");
        s.ingest_scrape(&scrape("n1", 30_000, &[("default", "web-1", &["app", "sidecar"])], 1));
        assert_eq!(s.pod("default", "web-1").map(|p| p.containers.len()), Some(2));
    }

    #[test]
    fn pods_and_containers_missing_from_a_successful_scrape_are_gone() {
        let clock = ManualClock::new(T0 + 40_000);
        let s = store(&clock);
        for t in [0, 15_000] {
            s.ingest_scrape(&scrape("n1", t, PODS, 1));
        }
        s.ingest_scrape(&scrape("n1", 30_000, &[("default", "web-1", &["app"])], 1));
        assert_eq!(s.counts(), Counts { nodes: 1, pods: 1, containers: 1 });
        assert!(s.pod("default", "api").is_none());
        assert_eq!(s.pod("default", "web-1").map(|p| p.containers.len()), Some(1));
    }

    #[test]
    fn an_invalid_container_is_left_out_and_the_rest_of_its_pod_served_like_metrics_server() {
        let clock = ManualClock::new(T0 + 31_000);
        let s = store(&clock);
        s.ingest_scrape(&scrape("n1", 15_000, &[("default", "web", &["app", "sidecar"]), ("default", "one", &["app"])], 1));
        let mut second = scrape("n1", 30_000, &[("default", "web", &["app", "sidecar"]), ("default", "one", &["app"])], 1);
        // The sidecar's and `one`'s counters go down without a restart.
        second.pods[0].containers[1].usage.cpu_usage_ns = 1;
        second.pods[1].containers[0].usage.cpu_usage_ns = 1;
        s.ingest_scrape(&second);
        let web = s.pod("default", "web").expect("served without the invalid container");
        assert_eq!(web.containers.iter().map(|c| &*c.name).collect::<Vec<_>>(), ["app"]);
        assert!(s.pod("default", "one").is_none(), "no container left: not served (a deliberate difference)");
        clock.set_ms(T0 + 46_000);
        s.ingest_scrape(&scrape("n1", 45_000, &[("default", "web", &["app", "sidecar"]), ("default", "one", &["app"])], 1));
        assert_eq!(s.pod("default", "web").expect("rates resume").containers.len(), 2);
        assert!(s.pod("default", "one").is_some());
    }

    #[test]
    fn a_failed_scrape_does_not_blank_a_node_until_max_staleness() {
        let clock = ManualClock::new(T0 + 16_000);
        let s = store(&clock);
        for t in [0, 15_000] {
            s.ingest_scrape(&scrape("n1", t, PODS, 1));
        }
        clock.set_ms(T0 + 15_005 + 45_000);
        assert!(s.node("n1").is_some(), "two missed scrapes later the last good data is still served");
        assert_eq!(s.pods(None, |_, _| Some(())).len(), 3);
        assert_eq!(s.sweep(), 0);
        clock.advance_ms(1);
        assert!(s.node("n1").is_none(), "past max staleness nothing is served");
        assert!(s.pod("default", "api").is_none());
        assert_eq!(s.sweep(), 1);
        assert_eq!(s.counts(), Counts::default());
    }

    #[test]
    fn during_a_hand_off_the_newest_kubelet_timestamp_wins_whichever_shard_sent_it() {
        let clock = ManualClock::new(T0 + 40_000);
        let s = store(&clock);
        // New owner's scrapes arrive first, the old owner's last one after them.
        assert_eq!(s.ingest_scrape(&scrape("n1", 15_000, PODS, 1)), Ingested::Applied);
        assert_eq!(s.ingest_scrape(&scrape("n1", 30_000, PODS, 1)), Ingested::Applied);
        assert_eq!(s.ingest_scrape(&scrape("n1", 0, &[], 1)), Ingested::Older);
        let node = s.node("n1").expect("rate");
        assert_eq!(node.usage.timestamp_ms, T0 + 30_000);
        assert_eq!(s.counts().pods, 3, "the older scrape did not replace the pod set");
        // The same scrape from both shards is harmless.
        assert_eq!(s.ingest_scrape(&scrape("n1", 30_000, PODS, 1)), Ingested::Applied);
        assert_eq!(s.node("n1").map(|n| n.usage.window_ms), Some(15_000));
    }

    #[test]
    fn a_deleted_node_goes_at_once_and_a_moved_node_keeps_its_data() {
        let clock = ManualClock::new(T0 + 20_000);
        let s = store(&clock);
        for t in [0, 15_000] {
            s.ingest_scrape(&scrape("n1", t, PODS, 1));
            s.ingest_scrape(&scrape("n2", t, &[("other", "x", &["c"])], 1));
        }
        s.ingest(&[], &[NodeReleased { node: "n1".into(), reason: ReleaseReason::OwnershipMoved }]);
        assert!(s.node("n1").is_some());
        s.ingest(&[], &[NodeReleased { node: "n1".into(), reason: ReleaseReason::NodeDeleted }]);
        assert!(s.node("n1").is_none());
        assert_eq!(s.counts(), Counts { nodes: 1, pods: 1, containers: 1 });
    }

    #[test]
    fn a_pod_recreated_on_another_node_starts_afresh_and_is_not_removed_by_its_old_node() {
        let clock = ManualClock::new(T0 + 40_000);
        let s = store(&clock);
        let sts: &[(&str, &str, &[&str])] = &[("db", "pg-0", &["pg"])];
        for t in [0, 15_000] {
            s.ingest_scrape(&scrape("n1", t, sts, 1));
        }
        s.ingest_scrape(&scrape("n2", 20_000, sts, 1));
        assert!(s.pod("db", "pg-0").is_none(), "first point on the new node");
        s.ingest_scrape(&scrape("n1", 30_000, &[], 1));
        s.ingest_scrape(&scrape("n2", 35_000, sts, 1));
        assert!(s.pod("db", "pg-0").is_some(), "the old node's departure did not remove it");
    }

    #[test]
    fn reingesting_an_unchanged_pod_set_reuses_the_interned_strings() {
        let clock = ManualClock::new(T0 + 40_000);
        let s = store(&clock);
        s.ingest_scrape(&scrape("n1", 0, PODS, 1));
        let before = s.read().strings.set.len();
        s.ingest_scrape(&scrape("n2", 0, PODS, 1));
        let inner = s.read();
        assert_eq!(inner.strings.set.len(), before, "namespaces and container names shared");
        let app: Vec<_> = inner
            .namespaces
            .get("default")
            .into_iter()
            .flat_map(|p| p.values())
            .flat_map(|p| p.containers.iter().filter(|c| &*c.name == "app"))
            .collect();
        assert!(app.windows(2).all(|w| Arc::ptr_eq(&w[0].name, &w[1].name)));
    }

    #[test]
    fn a_string_met_first_is_kept_as_the_batchs_own_allocation_and_later_ones_share_it() {
        let clock = ManualClock::new(T0 + 40_000);
        let s = store(&clock);
        let first = scrape("n1", 0, PODS, 1);
        s.ingest_scrape(&first);
        let second = scrape("n2", 0, PODS, 1);
        s.ingest_scrape(&second);
        let inner = s.read();
        let (ns, pods) = inner.namespaces.get_key_value("default").expect("namespace");
        assert!(Arc::ptr_eq(ns, &first.pods[0].namespace), "a new namespace is kept, not copied");
        assert!(!Arc::ptr_eq(ns, &second.pods[0].namespace));
        let name = &pods[&*first.pods[0].name].containers[0].name;
        assert!(Arc::ptr_eq(name, &first.pods[0].containers[0].name), "a new container name is kept, not copied");
    }

    /// Pods `ns/name` with one container each, as `scrape` takes them.
    fn owned(pods: &[(String, String)]) -> Vec<(&str, &str, &[&str])> {
        pods.iter().map(|(ns, name)| (ns.as_str(), name.as_str(), &["c"][..])).collect()
    }

    #[test]
    fn a_chunked_walk_stays_sorted_and_sees_every_pod_present_throughout() {
        let clock = ManualClock::new(T0 + 40_000);
        let s = store(&clock);
        // 2500 pods: three chunks of POD_CHUNK = 1024.
        let mut n1: Vec<(String, String)> = (0..1500).map(|i| ("a".into(), format!("p{i:04}"))).collect();
        n1.extend((0..1000).map(|i| ("b".to_owned(), format!("p{i:04}"))));
        for t in [0, 15_000] {
            s.ingest_scrape(&scrape("n1", t, &owned(&n1), 1));
        }
        assert_eq!(s.pods(Some("a"), |_, _| Some(())).len(), 1500, "a namespace larger than a chunk");
        let added: Vec<(String, String)> =
            [("a", "o-before"), ("a", "q-after"), ("c", "new-namespace")].map(|(ns, n)| (ns.into(), n.into())).into();
        let removed = ["p0100", "p1100"]; // in namespace a: before and after the first chunk's end
        let mut opens = 0;
        let pods = s.pods_with(
            None,
            || {
                opens += 1;
                if opens == 2 {
                    // Between the first and second chunk (the walk is past a/p1023).
                    for t in [0, 15_000] {
                        s.ingest_scrape(&scrape("n2", t, &owned(&added), 1));
                    }
                    let kept: Vec<_> = n1.iter().filter(|(ns, n)| !(ns == "a" && removed.contains(&n.as_str()))).cloned().collect();
                    s.ingest_scrape(&scrape("n1", 30_000, &owned(&kept), 1));
                }
            },
            |(), ns, name| Some(format!("{ns}/{name}")),
        );
        assert_eq!(opens, 3);
        let keys: Vec<&str> = pods.iter().map(|(_, k)| k.as_str()).collect();
        assert!(keys.windows(2).all(|w| w[0] < w[1]), "sorted, no duplicates");
        for (ns, name) in &n1 {
            let key = format!("{ns}/{name}");
            assert_eq!(keys.contains(&key.as_str()), key != "a/p1100", "{key}");
        }
        assert!(keys.contains(&"a/p0100"), "removed after it was read");
        assert!(keys.contains(&"a/q-after") && keys.contains(&"c/new-namespace"), "added ahead of the walk");
        assert!(!keys.contains(&"a/o-before"), "added behind the walk");
        assert_eq!(keys.len(), 2500 - 1 + 2);
        assert!(pods.iter().all(|(p, k)| format!("{}/{}", p.namespace, p.name) == *k && p.containers.len() == 1));
    }

    #[test]
    fn a_pod_listed_twice_in_one_scrape_counts_once() {
        let clock = ManualClock::new(T0 + 40_000);
        let s = store(&clock);
        let dup: &[(&str, &str, &[&str])] = &[("a", "p", &["c"]), ("a", "p", &["c"])];
        for t in [0, 15_000, 30_000] {
            s.ingest_scrape(&scrape("n1", t, dup, 1));
        }
        assert_eq!(s.counts(), Counts { nodes: 1, pods: 1, containers: 1 });
        assert_eq!(s.pod("a", "p").map(|p| p.containers[0].cpu_nanocores), Some(1_000_000_000));
    }
}
