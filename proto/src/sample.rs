//! Domain types for what a scrape produced, independent of the wire format.
//!
//! The scraper's parser builds these; `convert` turns them into `v1` messages and back; the
//! frontend's store ingests them. Everything is raw and cumulative: rates are computed by the
//! frontend from two consecutive [`Point`]s.
//!
//! Namespaces and container names repeat across the pods of a scrape (and of a batch), so they
//! are shared `Arc<str>`s: decoding a batch allocates each once, from the batch's string table,
//! and the frontend's store keeps those very allocations when it meets a string first.

use std::borrow::Cow;
use std::ops::Range;
use std::sync::Arc;

/// Raw cumulative usage at one kubelet sample time.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Point {
    /// The kubelet's sample timestamp, Unix time in milliseconds.
    pub timestamp_ms: i64,
    /// Cumulative CPU time since the container (or node) started, in nanoseconds.
    pub cpu_usage_ns: u64,
    /// Memory working set at `timestamp_ms`, in bytes.
    pub memory_working_set_bytes: u64,
    /// Swap in use at `timestamp_ms`, in bytes; `None` when the kubelet reported no swap
    /// sample (then the Metrics API leaves `swap` out rather than saying 0).
    pub swap_usage_bytes: Option<u64>,
}

/// One container of a pod, as seen in one scrape.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ContainerSample {
    /// The container's name within its pod (shared: see the module docs).
    pub name: Arc<str>,
    /// When the container started, Unix time in milliseconds; 0 when the kubelet did not say.
    pub start_time_ms: i64,
    /// Its usage at the kubelet's sample time.
    pub usage: Point,
}

/// The containers of one pod on the scraped node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PodSamples {
    /// The pod's namespace (shared: see the module docs).
    pub namespace: Arc<str>,
    /// The pod's name.
    pub name: String,
    /// Its containers that had both a CPU and a memory sample, in the kubelet's order.
    pub containers: Vec<ContainerSample>,
}

/// One successful scrape of one kubelet: the unit of data between scraper and frontend.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeScrape {
    /// Name of the Node object.
    pub node: String,
    /// When the scraper finished reading the response, Unix time in milliseconds (scraper's
    /// clock). For freshness accounting and hand-off ordering, never for rates.
    pub scraped_at_ms: i64,
    /// The node's own usage; `None` when the kubelet reported no node-level sample.
    pub node_usage: Option<Point>,
    /// Every pod with at least one complete container.
    pub pods: Vec<PodSamples>,
}

impl NodeScrape {
    /// Number of samples carried (node point plus one per container), for throughput counters.
    pub fn sample_count(&self) -> usize {
        usize::from(self.node_usage.is_some()) + self.pods.iter().map(|p| p.containers.len()).sum::<usize>()
    }
}

/// A [`NodeScrape`] whose strings borrow from the text it was read from: what the scraper's
/// parser makes of a kubelet's response, encoded straight to the wire
/// ([`crate::encode_scrape_ref`]) without an owned string per pod and container.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeScrapeRef<'a> {
    /// Name of the Node object.
    pub node: &'a str,
    /// As [`NodeScrape::scraped_at_ms`] (scraper's clock, Unix ms).
    pub scraped_at_ms: i64,
    /// The node's own usage; `None` when the kubelet reported no node-level sample.
    pub node_usage: Option<Point>,
    /// Every pod with at least one complete container, in order; each names its run of
    /// [`NodeScrapeRef::containers`].
    pub pods: Vec<PodRef<'a>>,
    /// The containers of all pods, pod after pod.
    pub containers: Vec<ContainerRef<'a>>,
}

/// One pod of a [`NodeScrapeRef`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PodRef<'a> {
    /// The pod's namespace (owned only when the text escaped it).
    pub namespace: Cow<'a, str>,
    /// The pod's name (owned only when the text escaped it).
    pub name: Cow<'a, str>,
    /// Its containers: indexes into [`NodeScrapeRef::containers`].
    pub containers: Range<usize>,
}

/// One container of a [`NodeScrapeRef`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ContainerRef<'a> {
    /// The container's name within its pod (owned only when the text escaped it).
    pub name: Cow<'a, str>,
    /// When the container started, Unix time in milliseconds; 0 when the kubelet did not say.
    pub start_time_ms: i64,
    /// Its usage at the kubelet's sample time.
    pub usage: Point,
}

impl NodeScrapeRef<'_> {
    /// Number of samples carried (node point plus one per container), for throughput counters.
    pub fn sample_count(&self) -> usize {
        usize::from(self.node_usage.is_some()) + self.containers.len()
    }

    /// The owned [`NodeScrape`] with the same contents (each string allocated once per use).
    pub fn to_owned_scrape(&self) -> NodeScrape {
        NodeScrape {
            node: self.node.to_owned(),
            scraped_at_ms: self.scraped_at_ms,
            node_usage: self.node_usage,
            pods: self
                .pods
                .iter()
                .map(|p| PodSamples {
                    namespace: Arc::from(&*p.namespace),
                    name: p.name.clone().into_owned(),
                    containers: self.containers[p.containers.clone()]
                        .iter()
                        .map(|c| ContainerSample { name: Arc::from(&*c.name), start_time_ms: c.start_time_ms, usage: c.usage })
                        .collect(),
                })
                .collect(),
        }
    }
}

/// Why a shard stopped reporting a node.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ReleaseReason {
    /// Another shard owns the node now; its data stays valid.
    OwnershipMoved,
    /// The Node was deleted or no longer matches the node selector.
    NodeDeleted,
    /// The shard is shutting down gracefully.
    Shutdown,
}

/// A shard no longer reports `node`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeReleased {
    /// Name of the Node object.
    pub node: String,
    /// Why it was released.
    pub reason: ReleaseReason,
}

/// One incarnation of one shard.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ShardIdentity {
    /// Stable shard id, equal to its Lease's holderIdentity.
    pub shard_id: String,
    /// Changes on every process start: Unix time of start in nanoseconds.
    pub epoch: u64,
}

/// A decoded stream message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Batch {
    /// The shard that sent it.
    pub shard: ShardIdentity,
    /// Node scrapes in the order they happened.
    pub scrapes: Vec<NodeScrape>,
    /// Nodes the shard let go of.
    pub released: Vec<NodeReleased>,
    /// True on the last batch of the initial snapshot.
    pub snapshot_complete: bool,
}
