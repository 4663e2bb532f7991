//! Which nodes this shard owns: the node view × the live members, through the [`Ring`].
//!
//! Recomputed whenever either input changes (the ring itself only when the member set does);
//! the result is published as a [`Assignment`] for the scheduler.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use shardmetrics_proto::lease::Members;
use tokio::sync::watch;

use crate::metrics::Metrics;
use crate::nodes::{NodeTarget, NodeView};
use crate::ring::Ring;
use crate::schedule::Assignment;

/// The nodes of `view` that `me` owns among `members`.
pub fn assign(me: &str, ring: &Ring, view: &NodeView) -> Assignment {
    let owned: BTreeMap<String, NodeTarget> =
        view.nodes.iter().filter(|(name, _)| ring.is_owner(me, name)).map(|(k, v)| (k.clone(), v.clone())).collect();
    let known: BTreeSet<String> = view.nodes.keys().cloned().collect();
    Assignment { owned: Arc::new(owned), known: Arc::new(known) }
}

/// Publishes this shard's assignment whenever nodes or members change. The task ends when the
/// returned receiver (and its clones) are dropped or an input closes.
pub fn watch_assignment(
    me: String,
    mut nodes: watch::Receiver<NodeView>,
    mut members: watch::Receiver<Members>,
    metrics: Metrics,
) -> (watch::Receiver<Assignment>, tokio::task::JoinHandle<()>) {
    let (tx, rx) = watch::channel(Assignment::default());
    let task = tokio::spawn(async move {
        let mut ring = Ring::new(members.borrow_and_update().keys().cloned());
        let mut last_members: Vec<String> = ring.members().map(str::to_owned).collect();
        loop {
            let view = nodes.borrow_and_update().clone();
            let assignment = assign(&me, &ring, &view);
            metrics.members.set(ring.len() as i64);
            let changed = {
                let cur = tx.borrow();
                *cur.owned != *assignment.owned || *cur.known != *assignment.known
            };
            if changed {
                tracing::info!(owned = assignment.owned.len(), known = assignment.known.len(), members = ring.len(), "assignment changed");
                tx.send_replace(assignment);
            }
            tokio::select! {
                _ = tx.closed() => return,
                r = nodes.changed() => if r.is_err() { return },
                r = members.changed() => {
                    if r.is_err() {
                        return;
                    }
                    let ids: Vec<String> = members.borrow_and_update().keys().cloned().collect();
                    if ids != last_members {
                        tracing::info!(members = ?ids, "shard membership changed");
                        ring = Ring::new(ids.iter().cloned());
                        last_members = ids;
                    }
                }
            }
        }
    });
    (rx, task)
}

#[cfg(test)]
mod tests {
    use shardmetrics_proto::lease::Member;

    use super::*;

    fn view(names: &[&str]) -> NodeView {
        let nodes = names.iter().map(|n| ((*n).to_owned(), NodeTarget { name: (*n).into(), host: "h".into(), port: 1 })).collect();
        NodeView { nodes: Arc::new(nodes), synced: true }
    }

    fn members(ids: &[&str]) -> Members {
        ids.iter()
            .map(|id| {
                let m = Member { shard_id: (*id).into(), grpc_address: "a:1".into(), epoch: 1, renew_time_ms: 0, lease_duration_ms: 1 };
                ((*id).to_owned(), m)
            })
            .collect()
    }

    #[test]
    fn shards_with_the_same_view_split_the_nodes_without_overlap_or_gap() {
        let names: Vec<String> = (0..500).map(|i| format!("node-{i}")).collect();
        let refs: Vec<&str> = names.iter().map(String::as_str).collect();
        let v = view(&refs);
        let ring = Ring::new(["s0", "s1", "s2"]);
        let parts: Vec<Assignment> = ["s0", "s1", "s2"].iter().map(|me| assign(me, &ring, &v)).collect();
        let total: usize = parts.iter().map(|a| a.owned.len()).sum();
        assert_eq!(total, 500);
        let union: BTreeSet<&String> = parts.iter().flat_map(|a| a.owned.keys()).collect();
        assert_eq!(union.len(), 500);
        assert!(parts.iter().all(|a| a.known.len() == 500));
    }

    #[tokio::test]
    async fn a_member_leaving_hands_its_nodes_to_the_rest() {
        let (ntx, nrx) = watch::channel(view(&["a", "b", "c", "d", "e", "f", "g", "h"]));
        let (mtx, mrx) = watch::channel(members(&["s0", "s1"]));
        let (mut rx, _task) = watch_assignment("s0".into(), nrx, mrx, Metrics::new());
        rx.wait_for(|a| !a.known.is_empty()).await.unwrap();
        let before = rx.borrow().owned.len();
        mtx.send_replace(members(&["s0"]));
        let after = rx.wait_for(|a| a.owned.len() == 8).await.unwrap().owned.len();
        assert!(before < after);
        mtx.send_replace(members(&[]));
        rx.wait_for(|a| a.owned.is_empty()).await.unwrap();
        drop(ntx);
    }
}
