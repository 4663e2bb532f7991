//! `watch=true` on the node and pod lists (KEP-1013 is provisional; none of kube-apiserver's
//! resources of this kind has it): ADDED, MODIFIED and DELETED events as scrapes land, with
//! namespaces and label and field selectors, bookmarks, `timeoutSeconds`, and an ERROR event
//! carrying 410 Expired for a version too old.
//!
//! # Resource versions
//!
//! Every replica holds the same scrapes, but receives them in its own order, so a per-replica
//! counter could not mean the same on another replica. A resource version is a point in time
//! instead, Unix milliseconds:
//!
//! - an object's `metadata.resourceVersion` (in watch events) is its kubelet sample time — the
//!   same on every replica that holds that sample;
//! - a list's, a Table's and a bookmark's is the serving replica's clock when it answered.
//!
//! A watch from version `R` first replays every object whose sample is newer than
//! `R − replay window` as MODIFIED, and every removal the store remembers after
//! `R − removal slack` as DELETED; then it follows changes. The replay window
//! ([`replay_window_ms`]: `--max-staleness` plus [`CLOCK_SKEW_MS`]) covers the longest a sample
//! can take to reach a replica and still be served, and the clock difference of two replicas;
//! the removal slack ([`REMOVAL_SLACK_MS`]) covers how much later one replica may remove an
//! object than another (removals are timed by the replica's clock when they happen). So a
//! client that resumes on any replica from the last version it saw misses nothing. The price is duplicates: objects sampled in the
//! window come again, identical, as MODIFIED (clients treat them as no-op updates). A version
//! older than [`TOMBSTONE_RETENTION_MS`], or older than the removals the store still holds,
//! gets a single ERROR event with a 410 `Expired` Status (`too old resource version: R
//! (oldest)`), as kube-apiserver's watch cache answers; the client relists.
//!
//! No version, or `0`: ADDED for every object first (`sendInitialEvents=true` adds a BOOKMARK
//! annotated `k8s.io/initial-events-end: "true"` after them); `sendInitialEvents=false` without
//! a version starts from now.
//!
//! # Costs and limits
//!
//! Each watch is a task that wakes for every node scrape ([`Store::subscribe`]) and reads only
//! that node's objects; it keeps the last object it sent of each (to send it again on
//! deletion). At most [`MAX_WATCHES`] watches run per replica (more: 429); they hold no
//! `--max-requests-inflight` permit. A client that reads slower than [`EVENT_QUEUE`] events
//! behind is cut off (its stream ends; it re-watches), as kube-apiserver drops slow watchers.
//! Labels come from the metadata view: a label change shows with the object's next scrape.
//! JSON and Table streams are served; protobuf watches are not (a client that accepts only
//! protobuf gets 406).

use std::collections::HashMap;
use std::io::Write as _;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use shardmetrics_plumbing::clock::SharedClock;
use shardmetrics_plumbing::selector::{FieldSelector, LabelSelector, go_quote};
use tokio::sync::{OwnedSemaphorePermit, broadcast, mpsc};

use super::items::{NodeItem, PodItem};
use super::json::{write_node, write_pod};
use super::media::TableVersion;
use super::status::Status;
use super::table::{self, IncludeObject, TableOptions};
use super::version::ApiVersion;
use crate::metadata::Metadata;
use crate::store::{Store, TOMBSTONE_RETENTION_MS, Tombstones};

/// Most watches one replica serves at once; more get 429.
pub const MAX_WATCHES: usize = 1000;
/// Events a watch queues for its client; a client further behind is cut off.
pub const EVENT_QUEUE: usize = 1024;
/// Clock difference between replicas (and kubelets) a resumed watch tolerates, in ms.
pub const CLOCK_SKEW_MS: i64 = 5_000;
/// How much earlier than a resumed version removals are replayed, in ms: the clock difference
/// of two replicas plus how far one may lag behind another in receiving the same scrape.
pub const REMOVAL_SLACK_MS: i64 = CLOCK_SKEW_MS + 5_000;
/// The shortest default watch duration (kube-apiserver's `--min-request-timeout`); a watch
/// without `timeoutSeconds` lasts between this and twice this.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(1800);

/// How far before a resumed version objects are replayed, in ms (see the module docs).
pub fn replay_window_ms(store: &Store) -> i64 {
    store.config().max_staleness_ms + CLOCK_SKEW_MS
}

/// What a watch reads: the store and the metadata view, cloned into its task.
#[derive(Clone)]
pub struct Source {
    /// Usage.
    pub store: Arc<Store>,
    /// Labels and existence; `None`: every stored object exists, without labels.
    pub metadata: Option<Arc<Metadata>>,
    /// Wall clock (versions of lists and bookmarks, creationTimestamp).
    pub clock: SharedClock,
}

/// Which objects a watch follows.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Scope {
    /// Nodes.
    Nodes,
    /// Pods, of one namespace or (`None`) all.
    Pods(Option<String>),
}

/// How events are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// `{"type":..,"object":<NodeMetrics|PodMetrics>}` lines.
    Json,
    /// The object as a one-row `meta.k8s.io` Table (`kubectl get -w`).
    Table(TableVersion, IncludeObject),
}

/// Where the stream starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Start {
    /// ADDED for every object, then changes; `end_bookmark`: a BOOKMARK marks the end of them.
    Everything {
        /// `sendInitialEvents=true`.
        end_bookmark: bool,
    },
    /// Changes from now on.
    Now,
    /// Changes after this version (Unix ms).
    From(i64),
}

/// A parsed watch request.
#[derive(Debug, Clone)]
pub struct WatchRequest {
    /// Nodes or pods.
    pub scope: Scope,
    /// The `metrics.k8s.io` version of the objects.
    pub version: ApiVersion,
    /// `labelSelector`.
    pub labels: LabelSelector,
    /// `fieldSelector` (`metadata.name`, `metadata.namespace`).
    pub fields: FieldSelector,
    /// JSON or Table.
    pub format: Format,
    /// Where it starts.
    pub start: Start,
    /// When the stream ends by itself.
    pub timeout: Duration,
    /// `allowWatchBookmarks`: a BOOKMARK every `bookmark_every`.
    pub bookmarks: bool,
    /// Interval of bookmarks.
    pub bookmark_every: Duration,
}

impl Start {
    /// The start of `?resourceVersion=` and `?sendInitialEvents=`.
    pub fn parse(resource_version: Option<&str>, send_initial_events: Option<bool>) -> Result<Start, Status> {
        match (resource_version.unwrap_or(""), send_initial_events) {
            ("" | "0", Some(true)) => Ok(Start::Everything { end_bookmark: true }),
            ("", Some(false)) => Ok(Start::Now),
            ("" | "0", _) => Ok(Start::Everything { end_bookmark: false }),
            (rv, _) => rv.parse::<u64>().ok().and_then(|v| i64::try_from(v).ok()).map(Start::From).ok_or_else(|| {
                Status::bad_request(format!(
                    "invalid resource version: strconv.ParseUint: parsing {}: invalid syntax",
                    go_quote(rv)
                ))
            }),
        }
    }
}

/// The default duration of a watch without `timeoutSeconds`: between [`DEFAULT_TIMEOUT`] and
/// twice it, spread by `seed` so that watches started together do not all end together.
pub fn default_timeout(seed: i64) -> Duration {
    DEFAULT_TIMEOUT + Duration::from_secs(seed.rem_euclid(DEFAULT_TIMEOUT.as_secs() as i64) as u64)
}

/// One object a watch follows.
#[derive(Clone)]
enum Object {
    Node(NodeItem),
    Pod(PodItem),
}

impl Object {
    fn sample_ms(&self) -> i64 {
        match self {
            Object::Node(n) => n.usage.usage.timestamp_ms,
            Object::Pod(p) => p.usage.timestamp_ms,
        }
    }
}

/// An object's key: (namespace or none, name).
type Key = (Option<Arc<str>>, Arc<str>);

/// What a watch has told its client about one object.
struct Known {
    /// The node that reported it.
    node: Arc<str>,
    /// The last object sent.
    object: Object,
}

/// Why a stream stops.
enum Stop {
    /// The client went away, or the stream ended (timeout, slow client).
    Closed,
}

/// A running watch's state.
struct Watcher {
    source: Source,
    request: WatchRequest,
    known: HashMap<Key, Known>,
    frames: mpsc::Sender<Bytes>,
}

/// Starts a watch: the response body's frames come from a task holding `slot` (a
/// [`MAX_WATCHES`] permit) until the stream ends.
pub fn start(source: Source, request: WatchRequest, slot: OwnedSemaphorePermit) -> Result<super::body::Body, Status> {
    let runtime = tokio::runtime::Handle::try_current().map_err(|e| Status::internal(format!("cannot start a watch: {e}")))?;
    let (frames, rx) = mpsc::channel(EVENT_QUEUE);
    // Subscribed before the first read, so no change between the two is missed.
    let changes = source.store.subscribe();
    let watcher = Watcher { source, request, known: HashMap::new(), frames };
    runtime.spawn(async move {
        let _slot = slot;
        watcher.run(changes).await;
    });
    Ok(super::body::Body::channel(rx))
}

impl Watcher {
    async fn run(mut self, mut changes: broadcast::Receiver<Arc<str>>) {
        if self.begin().is_err() {
            return;
        }
        let deadline = tokio::time::sleep(self.request.timeout);
        tokio::pin!(deadline);
        let mut bookmarks = tokio::time::interval(self.request.bookmark_every.max(Duration::from_millis(100)));
        bookmarks.tick().await;
        loop {
            let step = tokio::select! {
                () = &mut deadline => return,
                () = self.frames.closed() => return,
                _ = bookmarks.tick(), if self.request.bookmarks => self.bookmark(false),
                change = changes.recv() => match change {
                    Ok(node) => self.node_changed(&node),
                    Err(broadcast::error::RecvError::Lagged(_)) => self.resync(),
                    Err(broadcast::error::RecvError::Closed) => return,
                },
            };
            if step.is_err() {
                return;
            }
        }
    }

    /// The initial events of [`Start`].
    fn begin(&mut self) -> Result<(), Stop> {
        let now = self.source.clock.now_ms();
        let current = self.everything();
        match self.request.start {
            Start::Everything { end_bookmark } => {
                for (node, object) in current {
                    self.send_and_keep("ADDED", node, object)?;
                }
                if end_bookmark {
                    self.bookmark(true)?;
                }
            }
            Start::Now => {
                for (node, object) in current {
                    self.keep(node, object);
                }
            }
            Start::From(rv) => {
                let after = rv - replay_window_ms(&self.source.store);
                let oldest = now - TOMBSTONE_RETENTION_MS;
                let tombstones = match self.source.store.tombstones_since(rv - REMOVAL_SLACK_MS) {
                    Tombstones::Since(t) if rv >= oldest => t,
                    Tombstones::Since(_) => return self.expired(rv, oldest),
                    Tombstones::Forgotten(oldest) => return self.expired(rv, oldest + REMOVAL_SLACK_MS),
                };
                for (node, object) in current {
                    if object.sample_ms() > after {
                        self.send_and_keep("MODIFIED", node, object)?;
                    } else {
                        self.keep(node, object);
                    }
                }
                for t in tombstones {
                    let key: Key = (t.namespace.clone(), t.name.clone());
                    if self.known.contains_key(&key) || !self.in_scope(t.namespace.as_deref(), &t.name) {
                        continue;
                    }
                    let object = self.tombstone_object(t.namespace, t.name, t.at_ms);
                    self.send("DELETED", &object)?;
                }
            }
        }
        Ok(())
    }

    /// An ERROR event with 410 Expired, then the end of the stream.
    fn expired(&mut self, rv: i64, oldest: i64) -> Result<(), Stop> {
        let status = Status {
            code: http::StatusCode::GONE,
            reason: "Expired",
            message: format!("too old resource version: {rv} ({oldest})"),
            details: None,
        };
        let mut out = Vec::with_capacity(256);
        out.extend_from_slice(br#"{"type":"ERROR","object":"#);
        let json = status.to_json();
        out.extend_from_slice(json.strip_suffix(b"\n").unwrap_or(&json));
        out.extend_from_slice(b"}\n");
        self.push(out)?;
        Err(Stop::Closed)
    }

    /// Whether an object of this name (and namespace) is in the watch's namespace and field
    /// selector (labels of removed objects are unknown; clients ignore deletions of keys they
    /// do not hold).
    fn in_scope(&self, namespace: Option<&str>, name: &str) -> bool {
        match (&self.request.scope, namespace) {
            (Scope::Nodes, None) => self.request.fields.matches_metadata("", name),
            (Scope::Pods(want), Some(ns)) => {
                want.as_deref().is_none_or(|w| w == ns) && self.request.fields.matches_metadata(ns, name)
            }
            _ => false,
        }
    }

    /// Every object in scope now, with the node that reported it.
    fn everything(&self) -> Vec<(Arc<str>, Object)> {
        let s = &self.source;
        match &self.request.scope {
            Scope::Nodes => super::router::select_nodes(&s.store, s.metadata.as_deref(), &self.request.labels, &self.request.fields)
                .into_iter()
                .map(|n| (n.usage.name.clone(), Object::Node(n)))
                .collect(),
            Scope::Pods(ns) => {
                let mut out = Vec::new();
                for node in s.store.node_names() {
                    out.extend(self.on_node(&node));
                }
                if let Some(ns) = ns {
                    out.retain(|(_, o)| matches!(o, Object::Pod(p) if *p.usage.namespace == **ns));
                }
                out
            }
        }
    }

    /// The objects in scope that node `node` reports now.
    fn on_node(&self, node: &Arc<str>) -> Vec<(Arc<str>, Object)> {
        let s = &self.source;
        let r = &self.request;
        match &r.scope {
            Scope::Nodes => super::router::select_node(&s.store, s.metadata.as_deref(), node, &r.labels, &r.fields)
                .map(|n| vec![(node.clone(), Object::Node(n))])
                .unwrap_or_default(),
            Scope::Pods(want) => s
                .store
                .node_pods(node)
                .into_iter()
                .filter(|(ns, _)| want.as_deref().is_none_or(|w| w == &**ns))
                .filter_map(|(ns, name)| {
                    super::router::select_pod(&s.store, s.metadata.as_deref(), &ns, &name, &r.labels, &r.fields)
                })
                .map(|p| (node.clone(), Object::Pod(p)))
                .collect(),
        }
    }

    /// Events for one node's objects after a change of that node.
    fn node_changed(&mut self, node: &Arc<str>) -> Result<(), Stop> {
        let now: Vec<(Arc<str>, Object)> = self.on_node(node);
        let mut present: Vec<Key> = Vec::with_capacity(now.len());
        for (n, object) in now {
            let key = key_of(&object);
            present.push(key.clone());
            match self.known.get(&key) {
                None => self.send_and_keep("ADDED", n, object)?,
                Some(k) if k.object.sample_ms() != object.sample_ms() || labels_of(&k.object) != labels_of(&object) => {
                    self.send_and_keep("MODIFIED", n, object)?
                }
                Some(_) => {}
            }
        }
        let gone: Vec<Key> = self
            .known
            .iter()
            .filter(|(key, k)| *k.node == **node && !present.contains(key))
            .map(|(key, _)| key.clone())
            .collect();
        for key in gone {
            // A pod that moved to another node is updated by that node's change.
            if self.still_served(&key) {
                continue;
            }
            if let Some(k) = self.known.remove(&key) {
                self.send("DELETED", &k.object)?;
            }
        }
        Ok(())
    }

    /// After falling behind the change channel: compares everything with what was sent.
    fn resync(&mut self) -> Result<(), Stop> {
        let current = self.everything();
        let mut present = std::collections::HashSet::with_capacity(current.len());
        for (n, object) in current {
            let key = key_of(&object);
            present.insert(key.clone());
            match self.known.get(&key) {
                None => self.send_and_keep("ADDED", n, object)?,
                Some(k) if k.object.sample_ms() != object.sample_ms() => self.send_and_keep("MODIFIED", n, object)?,
                Some(_) => {}
            }
        }
        let gone: Vec<Key> = self.known.keys().filter(|k| !present.contains(*k)).cloned().collect();
        for key in gone {
            if let Some(k) = self.known.remove(&key) {
                self.send("DELETED", &k.object)?;
            }
        }
        Ok(())
    }

    fn still_served(&self, key: &Key) -> bool {
        let s = &self.source;
        match key {
            (Some(ns), name) => {
                super::router::select_pod(&s.store, s.metadata.as_deref(), ns, name, &self.request.labels, &self.request.fields)
                    .is_some()
            }
            (None, _) => false,
        }
    }

    fn keep(&mut self, node: Arc<str>, object: Object) {
        self.known.insert(key_of(&object), Known { node, object });
    }

    fn send_and_keep(&mut self, kind: &str, node: Arc<str>, object: Object) -> Result<(), Stop> {
        self.send(kind, &object)?;
        self.keep(node, object);
        Ok(())
    }

    /// A removed object the watch never saw: its name, a zero usage at its removal time.
    fn tombstone_object(&self, namespace: Option<Arc<str>>, name: Arc<str>, at_ms: i64) -> Object {
        use crate::store::{NodeUsage, PodUsage, Usage};
        match namespace {
            None => Object::Node(NodeItem {
                usage: NodeUsage {
                    name,
                    usage: Usage { timestamp_ms: at_ms, window_ms: 0, cpu_nanocores: 0, memory_bytes: 0, swap_bytes: None },
                    scraped_at_ms: at_ms,
                },
                labels: None,
                resource_version: None,
            }),
            Some(namespace) => Object::Pod(PodItem {
                usage: PodUsage { namespace, name, timestamp_ms: at_ms, window_ms: 0, containers: Default::default(), scraped_at_ms: at_ms },
                labels: None,
                resource_version: None,
            }),
        }
    }

    /// Writes one event (the object's version: its sample time).
    fn send(&mut self, kind: &str, object: &Object) -> Result<(), Stop> {
        let now = self.source.clock.now_ms();
        let mut out = Vec::with_capacity(1024);
        let _ = write!(out, r#"{{"type":"{kind}","object":"#);
        let rv = Some(object.sample_ms());
        match (object, self.request.format) {
            (Object::Node(n), Format::Json) => write_node(&mut out, &NodeItem { resource_version: rv, ..n.clone() }, now, Some(self.request.version)),
            (Object::Pod(p), Format::Json) => write_pod(&mut out, &PodItem { resource_version: rv, ..p.clone() }, now, Some(self.request.version)),
            (Object::Node(n), Format::Table(v, include)) => {
                out.extend_from_slice(&table::node_event(&NodeItem { resource_version: rv, ..n.clone() }, self.table_options(v, include, rv)))
            }
            (Object::Pod(p), Format::Table(v, include)) => {
                out.extend_from_slice(&table::pod_event(&PodItem { resource_version: rv, ..p.clone() }, self.table_options(v, include, rv)))
            }
        }
        out.extend_from_slice(b"}\n");
        self.push(out)
    }

    fn table_options(&self, version: TableVersion, include: IncludeObject, rv: Option<i64>) -> TableOptions {
        TableOptions { version, include, now_ms: self.source.clock.now_ms(), api: self.request.version, resource_version: rv }
    }

    /// A BOOKMARK at the replica's clock; `initial_end` marks the end of the initial events.
    fn bookmark(&mut self, initial_end: bool) -> Result<(), Stop> {
        let kind = match self.request.scope {
            Scope::Nodes => "NodeMetrics",
            Scope::Pods(_) => "PodMetrics",
        };
        let now = self.source.clock.now_ms();
        let mut out = Vec::with_capacity(256);
        let _ = write!(
            out,
            r#"{{"type":"BOOKMARK","object":{{"kind":"{kind}","apiVersion":"{}","metadata":{{"resourceVersion":"{now}""#,
            self.request.version.group_version()
        );
        if initial_end {
            out.extend_from_slice(br#","annotations":{"k8s.io/initial-events-end":"true"}"#);
        }
        out.extend_from_slice(b"}}}\n");
        self.push(out)
    }

    /// Queues a frame. Overflow policy: a full queue (the client reads too slowly) ends the
    /// stream, as does a client that went away.
    fn push(&mut self, frame: Vec<u8>) -> Result<(), Stop> {
        match self.frames.try_send(Bytes::from(frame)) {
            Ok(()) => Ok(()),
            Err(mpsc::error::TrySendError::Full(_)) => {
                tracing::info!("watch client too slow: {EVENT_QUEUE} events queued; ending its stream");
                Err(Stop::Closed)
            }
            Err(mpsc::error::TrySendError::Closed(_)) => Err(Stop::Closed),
        }
    }
}

fn key_of(object: &Object) -> Key {
    match object {
        Object::Node(n) => (None, n.usage.name.clone()),
        Object::Pod(p) => (Some(p.usage.namespace.clone()), p.usage.name.clone()),
    }
}

fn labels_of(object: &Object) -> Option<&crate::metadata::Labels> {
    match object {
        Object::Node(n) => n.labels.as_ref(),
        Object::Pod(p) => p.labels.as_ref(),
    }
}
