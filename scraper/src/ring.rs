//! Which shard owns which node: consistent hashing over the live members.
//!
//! Built on `consistent_hash::StaticHashRing` (SipHash-1-3 with fixed keys, so every shard
//! computes the same owner for the same member set, whatever order it learned the members in).
//! The ring is rebuilt whenever the member set changes; each member gets [`VNODES_PER_SHARD`]
//! virtual nodes. Measured balance and movement are in `docs/benchmarks.md` (`## Scraper`).

use consistent_hash::{DefaultHash, Node, StaticHashRing};

/// Virtual nodes per shard. With 2048, 5000 node names spread within 1.13x of the mean over
/// 2–16 shards (1024 gives up to 1.16x, 512 up to 1.15x: with ~300 nodes per shard the hash
/// placement of the nodes themselves is most of the spread). A ring of 16 shards is 32768
/// entries, rebuilt only when the member set changes.
pub const VNODES_PER_SHARD: usize = 2048;

/// A consistent-hash ring over a set of shard ids.
pub struct Ring {
    ring: StaticHashRing<'static, String, (), DefaultHash>,
}

impl std::fmt::Debug for Ring {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Ring").field("members", &self.members().collect::<Vec<_>>()).finish()
    }
}

impl Ring {
    /// Builds the ring of `members` (duplicates are ignored; order does not matter).
    pub fn new<I, S>(members: I) -> Ring
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        let nodes: Vec<Node<String, ()>> = members.into_iter().map(|m| Node::new(m.into()).quantity(VNODES_PER_SHARD)).collect();
        Ring { ring: StaticHashRing::new(DefaultHash, nodes.into_iter()) }
    }

    /// The shard that owns `node`; `None` when the ring has no members.
    pub fn owner(&self, node: &str) -> Option<&str> {
        self.ring.calc_candidates(&node).next().map(|n| n.key.as_str())
    }

    /// Whether `shard` owns `node`.
    pub fn is_owner(&self, shard: &str, node: &str) -> bool {
        self.owner(node) == Some(shard)
    }

    /// The member shard ids, sorted.
    pub fn members(&self) -> impl Iterator<Item = &str> {
        let mut m: Vec<&str> = self.ring.nodes().iter().map(|n| n.key.as_str()).collect();
        m.sort_unstable();
        m.into_iter()
    }

    /// Number of member shards.
    pub fn len(&self) -> usize {
        self.ring.nodes().len()
    }

    /// Whether the ring has no members (then nobody owns anything).
    pub fn is_empty(&self) -> bool {
        self.ring.nodes().is_empty()
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;

    /// 5000 node names in the styles clusters really use.
    fn node_names() -> Vec<String> {
        (0..5000)
            .map(|i| match i % 3 {
                0 => format!("ip-10-{}-{}-{}.ec2.internal", i % 7, (i / 7) % 256, (i * 13) % 256),
                1 => format!("gke-prod-pool-{}-{:08x}-{:04}", i % 4, (i as u64).wrapping_mul(0x9e37_79b9) as u32, i),
                _ => format!("node-{i:05}"),
            })
            .collect()
    }

    fn shards(n: usize) -> Vec<String> {
        (0..n).map(|i| format!("shardmetrics-scraper-{i}")).collect()
    }

    fn assignment(ring: &Ring, nodes: &[String]) -> HashMap<String, String> {
        nodes.iter().map(|n| (n.clone(), ring.owner(n).expect("ring has members").to_owned())).collect()
    }

    /// Busiest shard's node count divided by the mean.
    fn imbalance(ring: &Ring, nodes: &[String]) -> f64 {
        let mut counts: HashMap<&str, usize> = ring.members().map(|m| (m, 0)).collect();
        for n in nodes {
            *counts.get_mut(ring.owner(n).expect("owner")).expect("member") += 1;
        }
        let max = *counts.values().max().expect("members") as f64;
        max / (nodes.len() as f64 / ring.len() as f64)
    }

    #[test]
    fn an_empty_ring_owns_nothing() {
        let ring = Ring::new(Vec::<String>::new());
        assert!(ring.is_empty());
        assert_eq!(ring.owner("node-1"), None);
    }

    #[test]
    fn every_shard_computes_the_same_owner_whatever_order_it_learned_the_members_in() {
        let nodes = node_names();
        let mut members = shards(7);
        let a = assignment(&Ring::new(members.clone()), &nodes);
        members.reverse();
        members.push("shardmetrics-scraper-3".into()); // a duplicate is ignored
        let b = assignment(&Ring::new(members), &nodes);
        assert_eq!(a, b);
    }

    #[test]
    fn every_node_is_owned_by_exactly_one_shard() {
        let nodes = node_names();
        let members = shards(5);
        let ring = Ring::new(members.clone());
        for n in &nodes {
            let owners = members.iter().filter(|m| ring.is_owner(m, n)).count();
            assert_eq!(owners, 1, "node {n}");
        }
    }

    #[test]
    fn the_owner_of_a_node_is_stable_across_processes() {
        // SipHash-1-3 with fixed keys: these values must never change, or shards of different
        // builds would disagree during a rolling update.
        let ring = Ring::new(shards(3));
        let got: Vec<&str> = ["node-00000", "node-00001", "node-00002", "ip-10-0-0-1.ec2.internal"].iter().map(|n| ring.owner(n).unwrap()).collect();
        assert_eq!(got, GOLDEN_OWNERS);
    }

    const GOLDEN_OWNERS: [&str; 4] = ["shardmetrics-scraper-1", "shardmetrics-scraper-2", "shardmetrics-scraper-0", "shardmetrics-scraper-1"];

    #[test]
    fn with_5000_nodes_and_2_to_16_shards_the_busiest_shard_has_at_most_1_15x_the_mean() {
        let nodes = node_names();
        let mut worst: f64 = 0.0;
        for s in 2..=16 {
            let ring = Ring::new(shards(s));
            let im = imbalance(&ring, &nodes);
            println!("shards={s:2} busiest/mean={im:.3}");
            worst = worst.max(im);
            assert!(im <= 1.15, "{s} shards: busiest has {im:.3}x the mean");
        }
        println!("worst busiest/mean over 2..=16 shards: {worst:.3}");
    }

    #[test]
    fn adding_or_removing_one_of_s_shards_moves_about_one_in_s_nodes_and_only_to_or_from_it() {
        let nodes = node_names();
        let total = nodes.len() as f64;
        for s in 2..=16 {
            let before = shards(s);
            let before_assign = assignment(&Ring::new(before.clone()), &nodes);

            // Add one shard: only nodes that now belong to the newcomer move.
            let mut grown = before.clone();
            grown.push("shardmetrics-scraper-new".into());
            let after_add = assignment(&Ring::new(grown), &nodes);
            let moved_add: Vec<&String> = nodes.iter().filter(|n| before_assign[*n] != after_add[*n]).collect();
            assert!(moved_add.iter().all(|n| after_add[*n] == "shardmetrics-scraper-new"));
            let frac_add = moved_add.len() as f64 / total;

            // Remove one shard: only its nodes move.
            let removed = &before[s / 2];
            let shrunk: Vec<String> = before.iter().filter(|m| *m != removed).cloned().collect();
            let after_remove = assignment(&Ring::new(shrunk), &nodes);
            let moved_remove: Vec<&String> = nodes.iter().filter(|n| before_assign[*n] != after_remove[*n]).collect();
            assert!(moved_remove.iter().all(|n| &before_assign[*n] == removed));
            let frac_remove = moved_remove.len() as f64 / total;

            println!(
                "shards={s:2} add: moved {:.4} (ideal {:.4})  remove: moved {:.4} (ideal {:.4})",
                frac_add,
                1.0 / (s + 1) as f64,
                frac_remove,
                1.0 / s as f64
            );
            assert!(frac_add <= 1.15 / (s + 1) as f64, "{s}+1 shards: {frac_add:.4} moved");
            assert!(frac_remove <= 1.15 / s as f64, "{s}-1 shards: {frac_remove:.4} moved");
        }
    }
}
