//! The last two scrapes of every owned node: what a new subscriber's snapshot is made of.
//!
//! Two, because a frontend needs two points to compute a rate; with them a frontend that just
//! started serves rates at once instead of after two scrape rounds.
//!
//! Each scrape is held as its encoded live `SampleBatch` (one scrape per batch, the very bytes
//! queued to subscribers, shared, never copied): ~2 KiB per 30-pod scrape in one allocation,
//! where the decoded `NodeScrape` took ~4 KiB in ~100 small allocations (heaptrack at 1250
//! nodes: ~10 MiB of the shard's heap).

use std::collections::HashMap;

use bytes::Bytes;

/// Up to two encoded scrapes of one node, older first.
#[derive(Debug, Clone)]
struct LastTwo {
    previous: Option<Bytes>,
    latest: Bytes,
}

/// Last two encoded scrapes per node, by node name.
#[derive(Debug, Default)]
pub struct ScrapeBuffer {
    nodes: HashMap<String, LastTwo, foldhash::fast::RandomState>,
}

impl ScrapeBuffer {
    /// Records a new scrape of `node` (its encoded batch); the older of the two held before is
    /// dropped.
    pub fn push(&mut self, node: &str, frame: Bytes) {
        match self.nodes.get_mut(node) {
            Some(entry) => {
                let old = std::mem::replace(&mut entry.latest, frame);
                entry.previous = Some(old);
            }
            None => {
                self.nodes.insert(node.to_owned(), LastTwo { previous: None, latest: frame });
            }
        }
    }

    /// Forgets a node (released or deleted); returns whether it was held.
    pub fn remove(&mut self, node: &str) -> bool {
        self.nodes.remove(node).is_some()
    }

    /// Number of nodes with at least one scrape.
    pub fn len(&self) -> usize {
        self.nodes.len()
    }

    /// Whether no node has a scrape.
    pub fn is_empty(&self) -> bool {
        self.nodes.is_empty()
    }

    /// Every held scrape, nodes in name order, each node's older scrape first.
    pub fn snapshot(&self) -> Vec<Bytes> {
        let mut names: Vec<&String> = self.nodes.keys().collect();
        names.sort_unstable();
        let mut out = Vec::with_capacity(names.len() * 2);
        for name in names {
            let e = &self.nodes[name];
            out.extend(e.previous.iter().cloned());
            out.push(e.latest.clone());
        }
        out
    }

    /// Names of the nodes held.
    pub fn nodes(&self) -> impl Iterator<Item = &str> {
        self.nodes.keys().map(String::as_str)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Stand-in frames: the buffer never looks inside them.
    fn push(b: &mut ScrapeBuffer, node: &str, t: i64) {
        b.push(node, Bytes::from(format!("{node}@{t}")));
    }

    fn times(b: &ScrapeBuffer) -> Vec<String> {
        b.snapshot().iter().map(|f| String::from_utf8_lossy(f).into_owned()).collect()
    }

    #[test]
    fn only_the_last_two_scrapes_of_a_node_are_kept_older_first() {
        let mut b = ScrapeBuffer::default();
        push(&mut b, "a", 1);
        assert_eq!(times(&b), ["a@1"]);
        push(&mut b, "a", 2);
        push(&mut b, "a", 3);
        push(&mut b, "b", 10);
        assert_eq!(times(&b), ["a@2", "a@3", "b@10"]);
        assert_eq!(b.len(), 2);
    }

    #[test]
    fn a_removed_node_is_gone_from_the_snapshot() {
        let mut b = ScrapeBuffer::default();
        push(&mut b, "a", 1);
        push(&mut b, "b", 1);
        assert!(b.remove("a"));
        assert!(!b.remove("a"));
        assert_eq!(times(&b), ["b@1"]);
    }
}
