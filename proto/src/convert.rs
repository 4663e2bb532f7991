//! The one place where domain types become wire messages and back.
//!
//! Encoding builds the per-batch string table (namespaces and container names are sent once
//! per batch); decoding turns that table into shared strings once, hands out references to them,
//! validates every index and reports the first bad one.

use std::collections::HashMap;
use std::sync::Arc;

use prost::encoding::{WireType, encoded_len_varint};

use crate::sample::{
    Batch, ContainerSample, NodeReleased, NodeScrape, NodeScrapeRef, PodSamples, Point, ReleaseReason, ShardIdentity,
};
use crate::v1;

/// A `SampleBatch` that cannot be turned into domain types.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum DecodeError {
    /// The batch has no `shard` identity.
    #[error("sample batch has no shard identity")]
    MissingShard,
    /// A string-table index points past the end of the table.
    #[error("string index {index} out of range (table has {len} entries) in node {node:?}")]
    BadStringIndex {
        /// The offending index.
        index: u32,
        /// Length of the batch's string table.
        len: usize,
        /// The node scrape it appeared in.
        node: String,
    },
    /// A container has no usage point.
    #[error("container {container:?} of pod {pod:?} on node {node:?} has no usage point")]
    MissingUsage {
        /// The node scrape it appeared in.
        node: String,
        /// The pod.
        pod: String,
        /// The container.
        container: String,
    },
    /// A node scrape names no node.
    #[error("node scrape with an empty node name")]
    EmptyNodeName,
}

/// Builds the string table of one batch.
#[derive(Default)]
struct StringTable<'a> {
    strings: Vec<String>,
    index: HashMap<&'a str, u32>,
}

impl<'a> StringTable<'a> {
    fn new() -> Self {
        let mut t = Self::default();
        t.strings.push(String::new());
        t.index.insert("", 0);
        t
    }

    fn intern(&mut self, s: &'a str) -> u32 {
        if let Some(&i) = self.index.get(s) {
            return i;
        }
        let i = u32::try_from(self.strings.len()).expect("string table fits u32");
        self.strings.push(s.to_owned());
        self.index.insert(s, i);
        i
    }
}

fn point_to_wire(p: &Point) -> v1::Point {
    v1::Point {
        timestamp_ms: p.timestamp_ms,
        cpu_usage_ns: p.cpu_usage_ns,
        memory_working_set_bytes: p.memory_working_set_bytes,
        swap_usage_bytes: p.swap_usage_bytes,
    }
}

fn point_from_wire(p: &v1::Point) -> Point {
    Point {
        timestamp_ms: p.timestamp_ms,
        cpu_usage_ns: p.cpu_usage_ns,
        memory_working_set_bytes: p.memory_working_set_bytes,
        swap_usage_bytes: p.swap_usage_bytes,
    }
}

impl From<&ShardIdentity> for v1::ShardIdentity {
    fn from(s: &ShardIdentity) -> Self {
        v1::ShardIdentity { shard_id: s.shard_id.clone(), epoch: s.epoch }
    }
}

impl From<ReleaseReason> for v1::node_released::Reason {
    fn from(r: ReleaseReason) -> Self {
        match r {
            ReleaseReason::OwnershipMoved => Self::OwnershipMoved,
            ReleaseReason::NodeDeleted => Self::NodeDeleted,
            ReleaseReason::Shutdown => Self::Shutdown,
        }
    }
}

/// Encodes scrapes and releases of one shard into one wire batch.
pub fn encode_batch(
    shard: &ShardIdentity,
    scrapes: &[&NodeScrape],
    released: &[NodeReleased],
    snapshot_complete: bool,
) -> v1::SampleBatch {
    let mut table = StringTable::new();
    let scrapes = scrapes
        .iter()
        .map(|s| v1::NodeScrape {
            node: s.node.clone(),
            scraped_at_ms: s.scraped_at_ms,
            node_usage: s.node_usage.as_ref().map(point_to_wire),
            pods: s
                .pods
                .iter()
                .map(|p| v1::PodSamples {
                    namespace: table.intern(&p.namespace),
                    name: p.name.clone(),
                    containers: p
                        .containers
                        .iter()
                        .map(|c| v1::ContainerSample {
                            name: table.intern(&c.name),
                            start_time_ms: c.start_time_ms,
                            usage: Some(point_to_wire(&c.usage)),
                        })
                        .collect(),
                })
                .collect(),
        })
        .collect();
    v1::SampleBatch {
        shard: Some(shard.into()),
        strings: table.strings,
        scrapes,
        released: released
            .iter()
            .map(|r| v1::NodeReleased {
                node: r.node.clone(),
                reason: v1::node_released::Reason::from(r.reason) as i32,
            })
            .collect(),
        snapshot_complete,
    }
}

/// Strings a table holds before [`RefTable`] indexes them by hash: below this a scan of the
/// lengths is cheaper than hashing (a node's namespaces and container names are a few dozen).
const LINEAR_TABLE: usize = 32;

/// The string table of one [`encode_scrape_ref`] batch: entries in order of first use, entry
/// 0 the empty string, as [`StringTable`] builds it.
struct RefTable<'a> {
    strings: Vec<&'a str>,
    index: Option<HashMap<&'a str, u32>>,
}

impl<'a> RefTable<'a> {
    fn intern(&mut self, s: &'a str) -> u32 {
        let found = match &self.index {
            Some(index) => index.get(s).copied(),
            None => self.strings.iter().position(|t| t.len() == s.len() && *t == s).map(|i| i as u32),
        };
        if let Some(i) = found {
            return i;
        }
        let i = u32::try_from(self.strings.len()).expect("string table fits u32");
        self.strings.push(s);
        match &mut self.index {
            Some(index) => {
                index.insert(s, i);
            }
            None if self.strings.len() > LINEAR_TABLE => {
                self.index = Some(self.strings.iter().enumerate().map(|(i, s)| (*s, i as u32)).collect());
            }
            None => {}
        }
        i
    }
}

/// Length of a `v1::Point` message body.
fn point_len(p: &Point) -> usize {
    let varint = |v: u64| if v == 0 { 0 } else { 1 + encoded_len_varint(v) };
    varint(p.timestamp_ms as u64)
        + varint(p.cpu_usage_ns)
        + varint(p.memory_working_set_bytes)
        + p.swap_usage_bytes.map_or(0, |s| 1 + encoded_len_varint(s))
}

fn encode_point(p: &Point, out: &mut Vec<u8>) {
    for (tag, v) in [(1, p.timestamp_ms as u64), (2, p.cpu_usage_ns), (3, p.memory_working_set_bytes)] {
        if v != 0 {
            put_key(tag, WireType::Varint, out);
            put_varint(v, out);
        }
    }
    if let Some(swap) = p.swap_usage_bytes {
        put_key(4, WireType::Varint, out);
        put_varint(swap, out);
    }
}

/// Appends `v` as a protobuf varint (prost's `encode_varint`, inlined: a byte is a push into
/// room reserved beforehand, not a call through `BufMut`).
#[inline]
fn put_varint(mut v: u64, out: &mut Vec<u8>) {
    while v >= 0x80 {
        out.push(v as u8 | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

/// Appends a field key (prost's `encode_key`).
#[inline]
fn put_key(tag: u32, wire_type: WireType, out: &mut Vec<u8>) {
    put_varint(u64::from(tag << 3 | wire_type as u32), out);
}

/// Length of a length-delimited field of tag < 16 whose body is `len` bytes.
fn delimited_len(len: usize) -> usize {
    1 + encoded_len_varint(len as u64) + len
}

fn encode_delimited_head(tag: u32, len: usize, out: &mut Vec<u8>) {
    put_key(tag, WireType::LengthDelimited, out);
    put_varint(len as u64, out);
}

fn encode_str(tag: u32, s: &str, out: &mut Vec<u8>) {
    encode_delimited_head(tag, s.len(), out);
    out.extend_from_slice(s.as_bytes());
}

/// A scalar field of tag < 16, left out when 0 (proto3).
fn varint_field_len(v: u64) -> usize {
    if v == 0 { 0 } else { 1 + encoded_len_varint(v) }
}

fn encode_varint_field(tag: u32, v: u64, out: &mut Vec<u8>) {
    if v != 0 {
        put_key(tag, WireType::Varint, out);
        put_varint(v, out);
    }
}

/// Encodes one live scrape as a whole `SampleBatch` message: the bytes of
/// `encode_batch(shard, &[&scrape.to_owned_scrape()], &[], false).encode_to_vec()`, written
/// straight from the borrowed scrape (no owned strings, no intermediate messages; one
/// allocation of the exact size plus the string table's).
pub fn encode_scrape_ref(shard: &ShardIdentity, scrape: &NodeScrapeRef<'_>) -> Vec<u8> {
    let mut out = Vec::new();
    encode_scrape_ref_append(shard, scrape, &mut out);
    out
}

/// [`encode_scrape_ref`] appended to `out` (after reserving its exact length: an empty `out`
/// gets a buffer of that size): a buffer reused from one batch to the next allocates nothing.
pub fn encode_scrape_ref_append(shard: &ShardIdentity, scrape: &NodeScrapeRef<'_>, out: &mut Vec<u8>) {
    let mut table = RefTable { strings: vec![""], index: None };
    // String indexes of each pod's namespace, then of each container's name.
    let mut pod_strings = Vec::with_capacity(scrape.pods.len());
    let mut container_strings = vec![0u32; scrape.containers.len()];
    for p in &scrape.pods {
        pod_strings.push(table.intern(&p.namespace));
        for i in p.containers.clone() {
            container_strings[i] = table.intern(&scrape.containers[i].name);
        }
    }
    let container_len = |i: usize| {
        let c = &scrape.containers[i];
        varint_field_len(u64::from(container_strings[i])) + varint_field_len(c.start_time_ms as u64) + delimited_len(point_len(&c.usage))
    };
    let pod_lens: Vec<usize> = scrape
        .pods
        .iter()
        .zip(&pod_strings)
        .map(|(p, &ns)| {
            let name = if p.name.is_empty() { 0 } else { delimited_len(p.name.len()) };
            varint_field_len(u64::from(ns)) + name + p.containers.clone().map(|i| delimited_len(container_len(i))).sum::<usize>()
        })
        .collect();
    let scrape_len = if scrape.node.is_empty() { 0 } else { delimited_len(scrape.node.len()) }
        + varint_field_len(scrape.scraped_at_ms as u64)
        + scrape.node_usage.as_ref().map_or(0, |p| delimited_len(point_len(p)))
        + pod_lens.iter().map(|&l| delimited_len(l)).sum::<usize>();
    let shard_len = if shard.shard_id.is_empty() { 0 } else { delimited_len(shard.shard_id.len()) } + varint_field_len(shard.epoch);
    let total = delimited_len(shard_len) + table.strings.iter().map(|s| delimited_len(s.len())).sum::<usize>() + delimited_len(scrape_len);

    out.reserve(total);
    let start = out.len();
    encode_delimited_head(1, shard_len, out);
    if !shard.shard_id.is_empty() {
        encode_str(1, &shard.shard_id, out);
    }
    encode_varint_field(2, shard.epoch, out);
    for s in &table.strings {
        encode_str(2, s, out);
    }
    encode_delimited_head(3, scrape_len, out);
    if !scrape.node.is_empty() {
        encode_str(1, scrape.node, out);
    }
    encode_varint_field(2, scrape.scraped_at_ms as u64, out);
    if let Some(p) = &scrape.node_usage {
        encode_delimited_head(3, point_len(p), out);
        encode_point(p, out);
    }
    for ((p, &ns), &len) in scrape.pods.iter().zip(&pod_strings).zip(&pod_lens) {
        encode_delimited_head(4, len, out);
        encode_varint_field(1, u64::from(ns), out);
        if !p.name.is_empty() {
            encode_str(2, &p.name, out);
        }
        for i in p.containers.clone() {
            let c = &scrape.containers[i];
            encode_delimited_head(3, container_len(i), out);
            encode_varint_field(1, u64::from(container_strings[i]), out);
            encode_varint_field(2, c.start_time_ms as u64, out);
            encode_delimited_head(3, point_len(&c.usage), out);
            encode_point(&c.usage, out);
        }
    }
    debug_assert_eq!(out.len() - start, total);
}

/// Decodes one wire batch, checking every string index.
///
/// Each entry of the batch's string table is allocated once; every namespace and container
/// name that refers to it shares that allocation.
///
/// An unknown release reason (from a newer shard) decodes as [`ReleaseReason::OwnershipMoved`],
/// the reason that keeps data.
pub fn decode_batch(batch: v1::SampleBatch) -> Result<Batch, DecodeError> {
    let shard = batch.shard.ok_or(DecodeError::MissingShard)?;
    let strings: Vec<Arc<str>> = batch.strings.into_iter().map(Arc::from).collect();
    let lookup = |index: u32, node: &str| -> Result<Arc<str>, DecodeError> {
        strings.get(index as usize).cloned().ok_or_else(|| DecodeError::BadStringIndex {
            index,
            len: strings.len(),
            node: node.to_owned(),
        })
    };
    let mut scrapes = Vec::with_capacity(batch.scrapes.len());
    for s in batch.scrapes {
        if s.node.is_empty() {
            return Err(DecodeError::EmptyNodeName);
        }
        let mut pods = Vec::with_capacity(s.pods.len());
        for p in s.pods {
            let namespace = lookup(p.namespace, &s.node)?;
            let mut containers = Vec::with_capacity(p.containers.len());
            for c in p.containers {
                let name = lookup(c.name, &s.node)?;
                let usage = c.usage.as_ref().map(point_from_wire).ok_or_else(|| DecodeError::MissingUsage {
                    node: s.node.clone(),
                    pod: p.name.clone(),
                    container: name.to_string(),
                })?;
                containers.push(ContainerSample { name, start_time_ms: c.start_time_ms, usage });
            }
            pods.push(PodSamples { namespace, name: p.name, containers });
        }
        scrapes.push(NodeScrape {
            node: s.node,
            scraped_at_ms: s.scraped_at_ms,
            node_usage: s.node_usage.as_ref().map(point_from_wire),
            pods,
        });
    }
    let released = batch
        .released
        .into_iter()
        .map(|r| NodeReleased {
            node: r.node,
            reason: match v1::node_released::Reason::try_from(r.reason) {
                Ok(v1::node_released::Reason::NodeDeleted) => ReleaseReason::NodeDeleted,
                Ok(v1::node_released::Reason::Shutdown) => ReleaseReason::Shutdown,
                _ => ReleaseReason::OwnershipMoved,
            },
        })
        .collect();
    Ok(Batch {
        shard: ShardIdentity { shard_id: shard.shard_id, epoch: shard.epoch },
        scrapes,
        released,
        snapshot_complete: batch.snapshot_complete,
    })
}

#[cfg(test)]
mod tests {
    use prost::Message;

    use super::*;

    fn scrape(node: &str, t: i64) -> NodeScrape {
        NodeScrape {
            node: node.into(),
            scraped_at_ms: t + 3,
            node_usage: Some(Point { timestamp_ms: t, cpu_usage_ns: 5_000_000_000, memory_working_set_bytes: 1 << 30, swap_usage_bytes: Some(0) }),
            pods: vec![
                PodSamples {
                    namespace: "kube-system".into(),
                    name: "coredns-1".into(),
                    containers: vec![ContainerSample {
                        name: "coredns".into(),
                        start_time_ms: 1_700_000_000_000,
                        usage: Point { timestamp_ms: t - 1, cpu_usage_ns: 123_456_789, memory_working_set_bytes: 12_345_678, swap_usage_bytes: Some(4096) },
                    }],
                },
                PodSamples {
                    namespace: "kube-system".into(),
                    name: "kube-proxy-x".into(),
                    containers: vec![
                        ContainerSample { name: "kube-proxy".into(), start_time_ms: 0, usage: Point::default() },
                        ContainerSample {
                            name: "coredns".into(),
                            start_time_ms: 7,
                            usage: Point { timestamp_ms: t, cpu_usage_ns: u64::MAX, memory_working_set_bytes: 0, swap_usage_bytes: None },
                        },
                    ],
                },
            ],
        }
    }

    fn shard() -> ShardIdentity {
        ShardIdentity { shard_id: "shardmetrics-scraper-0".into(), epoch: 42 }
    }

    #[test]
    fn a_batch_survives_encode_wire_bytes_and_decode_unchanged() {
        let a = scrape("node-a", 1_000);
        let b = scrape("node-b", 2_000);
        let released = vec![
            NodeReleased { node: "node-c".into(), reason: ReleaseReason::OwnershipMoved },
            NodeReleased { node: "node-d".into(), reason: ReleaseReason::NodeDeleted },
            NodeReleased { node: "node-e".into(), reason: ReleaseReason::Shutdown },
        ];
        let wire = encode_batch(&shard(), &[&a, &b], &released, true);
        let bytes = wire.encode_to_vec();
        let back = decode_batch(v1::SampleBatch::decode(bytes.as_slice()).unwrap()).unwrap();
        assert_eq!(back, Batch { shard: shard(), scrapes: vec![a, b], released, snapshot_complete: true });
    }

    #[test]
    fn repeated_namespaces_and_container_names_are_sent_once_per_batch() {
        let a = scrape("node-a", 1_000);
        let b = scrape("node-b", 2_000);
        let wire = encode_batch(&shard(), &[&a, &b], &[], false);
        assert_eq!(wire.strings, vec!["", "kube-system", "coredns", "kube-proxy"]);
    }

    #[test]
    fn decoded_names_share_one_allocation_per_string_table_entry() {
        let a = scrape("node-a", 1_000);
        let b = scrape("node-b", 2_000);
        let back = decode_batch(encode_batch(&shard(), &[&a, &b], &[], false)).unwrap();
        let namespaces: Vec<&Arc<str>> = back.scrapes.iter().flat_map(|s| s.pods.iter().map(|p| &p.namespace)).collect();
        assert_eq!(namespaces.len(), 4);
        assert!(namespaces.iter().all(|ns| Arc::ptr_eq(ns, namespaces[0])), "one kube-system");
        let coredns: Vec<&Arc<str>> =
            back.scrapes.iter().flat_map(|s| s.pods.iter().flat_map(|p| &p.containers)).map(|c| &c.name).filter(|n| &***n == "coredns").collect();
        assert_eq!(coredns.len(), 4);
        assert!(coredns.iter().all(|n| Arc::ptr_eq(n, coredns[0])), "one coredns");
    }

    #[test]
    fn a_node_without_node_level_usage_round_trips_as_none() {
        let mut a = scrape("node-a", 1_000);
        a.node_usage = None;
        let back = decode_batch(encode_batch(&shard(), &[&a], &[], false)).unwrap();
        assert_eq!(back.scrapes[0].node_usage, None);
    }

    #[test]
    fn an_out_of_range_string_index_is_an_error_naming_the_node() {
        let mut wire = encode_batch(&shard(), &[&scrape("node-a", 1)], &[], false);
        wire.scrapes[0].pods[0].namespace = 99;
        let err = decode_batch(wire).unwrap_err();
        assert_eq!(err, DecodeError::BadStringIndex { index: 99, len: 4, node: "node-a".into() });
    }

    #[test]
    fn a_batch_without_shard_identity_or_with_an_empty_node_is_rejected() {
        let mut wire = encode_batch(&shard(), &[&scrape("node-a", 1)], &[], false);
        wire.shard = None;
        assert_eq!(decode_batch(wire).unwrap_err(), DecodeError::MissingShard);
        let mut wire = encode_batch(&shard(), &[&scrape("node-a", 1)], &[], false);
        wire.scrapes[0].node.clear();
        assert_eq!(decode_batch(wire).unwrap_err(), DecodeError::EmptyNodeName);
    }

    #[test]
    fn a_container_without_usage_is_rejected() {
        let mut wire = encode_batch(&shard(), &[&scrape("node-a", 1)], &[], false);
        wire.scrapes[0].pods[0].containers[0].usage = None;
        assert!(matches!(decode_batch(wire).unwrap_err(), DecodeError::MissingUsage { .. }));
    }

    #[test]
    fn an_unknown_release_reason_keeps_data() {
        let mut wire = encode_batch(
            &shard(),
            &[],
            &[NodeReleased { node: "n".into(), reason: ReleaseReason::NodeDeleted }],
            false,
        );
        wire.released[0].reason = 77;
        assert_eq!(decode_batch(wire).unwrap().released[0].reason, ReleaseReason::OwnershipMoved);
    }

    /// Scrapes in every shape the direct encoder must get right: empty and repeated strings,
    /// negative and zero numbers, missing points and swap, escaped (owned) names, empty pods,
    /// more strings than the linear table holds.
    fn ref_scrapes() -> Vec<NodeScrapeRef<'static>> {
        use std::borrow::Cow;

        use crate::sample::{ContainerRef, PodRef};
        let mut out = Vec::new();
        struct Rng(u64);
        impl Rng {
            fn next(&mut self) -> u64 {
                self.0 ^= self.0 << 13;
                self.0 ^= self.0 >> 7;
                self.0 ^= self.0 << 17;
                self.0
            }
        }
        let mut rng = Rng(0x2545_f491_4f6c_dd1d);
        let names = ["", "kube-system", "default", "coredns", "istio-proxy", "app", "x"];
        for round in 0..300 {
            let mut pick = |n: u64| rng.next() % n;
            let mut containers = Vec::new();
            let mut pods = Vec::new();
            for p in 0..pick(if round % 10 == 0 { 60 } else { 6 }) {
                let start = containers.len();
                for _ in 0..pick(4) {
                    let name: Cow<'static, str> = if round % 10 == 0 { Cow::Owned(format!("c{}", pick(80))) } else { Cow::Borrowed(names[pick(7) as usize]) };
                    let number = |v: u64, kind: u64| match kind {
                        0 => 0,
                        1 => v,
                        2 => u64::MAX,
                        _ => v % 300,
                    };
                    let usage = Point {
                        timestamp_ms: [0, -1, 1_700_000_000_000, i64::MIN][pick(4) as usize],
                        cpu_usage_ns: number(pick(u64::MAX), pick(4)),
                        memory_working_set_bytes: number(pick(u64::MAX), pick(4)),
                        swap_usage_bytes: [None, Some(0), Some(4096)][pick(3) as usize],
                    };
                    containers.push(ContainerRef { name, start_time_ms: [0, 7, -5, 1_699_000_000_000][pick(4) as usize], usage });
                }
                let namespace: Cow<'static, str> = if p % 3 == 0 { Cow::Owned(format!("ns{}", pick(3))) } else { Cow::Borrowed(names[pick(3) as usize]) };
                pods.push(PodRef { namespace, name: Cow::Owned(if pick(5) == 0 { String::new() } else { format!("pod-{p}") }), containers: start..containers.len() });
            }
            let node_usage = [None, Some(Point::default()), Some(Point { timestamp_ms: 5, cpu_usage_ns: 300, memory_working_set_bytes: 1 << 40, swap_usage_bytes: None })]
                [pick(3) as usize];
            out.push(NodeScrapeRef { node: ["node-1", "", "n"][pick(3) as usize], scraped_at_ms: [0, 1_700_000_000_123, -3][pick(3) as usize], node_usage, pods, containers });
        }
        out
    }

    #[test]
    fn a_borrowed_scrape_encodes_to_the_bytes_of_its_owned_batch() {
        let shards = [shard(), ShardIdentity { shard_id: String::new(), epoch: 0 }];
        for (i, s) in ref_scrapes().iter().enumerate() {
            let shard = &shards[i % 2];
            let want = encode_batch(shard, &[&s.to_owned_scrape()], &[], false).encode_to_vec();
            assert_eq!(encode_scrape_ref(shard, s), want, "scrape {i}: {s:?}");
        }
    }
}
