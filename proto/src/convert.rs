//! The one place where domain types become wire messages and back.
//!
//! Encoding builds the per-batch string table (namespaces and container names are sent once
//! per batch); decoding turns that table into shared strings once, hands out references to them,
//! validates every index and reports the first bad one.

use std::collections::HashMap;
use std::sync::Arc;

use crate::sample::{
    Batch, ContainerSample, NodeReleased, NodeScrape, PodSamples, Point, ReleaseReason, ShardIdentity,
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
}
