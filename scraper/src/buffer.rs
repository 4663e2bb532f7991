//! The last two scrapes of every owned node: what a new subscriber's snapshot is made of.
//!
//! Two, because a frontend needs two points to compute a rate; with them a frontend that just
//! started serves rates at once instead of after two scrape rounds. Scrapes are shared
//! (`Arc`) with the stream fan-out, never copied.

use std::collections::HashMap;
use std::sync::Arc;

use shardmetrics_proto::NodeScrape;

/// Up to two scrapes of one node, older first.
#[derive(Debug, Clone)]
struct LastTwo {
    previous: Option<Arc<NodeScrape>>,
    latest: Arc<NodeScrape>,
}

/// Last two scrapes per node, by node name.
#[derive(Debug, Default)]
pub struct ScrapeBuffer {
    nodes: HashMap<String, LastTwo>,
}

impl ScrapeBuffer {
    /// Records a new scrape of its node; the older of the two held before is dropped.
    pub fn push(&mut self, scrape: Arc<NodeScrape>) {
        match self.nodes.get_mut(&scrape.node) {
            Some(entry) => {
                let old = std::mem::replace(&mut entry.latest, scrape);
                entry.previous = Some(old);
            }
            None => {
                self.nodes.insert(scrape.node.clone(), LastTwo { previous: None, latest: scrape });
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
    pub fn snapshot(&self) -> Vec<Arc<NodeScrape>> {
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

    fn scrape(node: &str, t: i64) -> Arc<NodeScrape> {
        Arc::new(NodeScrape { node: node.into(), scraped_at_ms: t, node_usage: None, pods: vec![] })
    }

    fn times(b: &ScrapeBuffer) -> Vec<(String, i64)> {
        b.snapshot().iter().map(|s| (s.node.clone(), s.scraped_at_ms)).collect()
    }

    #[test]
    fn only_the_last_two_scrapes_of_a_node_are_kept_older_first() {
        let mut b = ScrapeBuffer::default();
        b.push(scrape("a", 1));
        assert_eq!(times(&b), vec![("a".into(), 1)]);
        b.push(scrape("a", 2));
        b.push(scrape("a", 3));
        b.push(scrape("b", 10));
        assert_eq!(times(&b), vec![("a".into(), 2), ("a".into(), 3), ("b".into(), 10)]);
        assert_eq!(b.len(), 2);
    }

    #[test]
    fn a_removed_node_is_gone_from_the_snapshot() {
        let mut b = ScrapeBuffer::default();
        b.push(scrape("a", 1));
        b.push(scrape("b", 1));
        assert!(b.remove("a"));
        assert!(!b.remove("a"));
        assert_eq!(times(&b), vec![("b".into(), 1)]);
    }
}
