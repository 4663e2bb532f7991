//! Which nodes this shard owns: the node view × the live members, through the [`Ring`].
//!
//! Recomputed whenever either input changes (the ring itself only when the member set does);
//! the result is published as a [`Assignment`] for the scheduler, with a [`Handover`] for each
//! node that moved here from another member: who had it, whether that member is still live,
//! and whether it left before its Lease expired (a graceful stop) or after (a crash). The
//! scheduler scrapes a node promptly only when its previous owner may not have scraped it in the
//! last resolution.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use shardmetrics_plumbing::lease::{Member, Members};
use tokio::sync::watch;

use crate::metrics::Metrics;
use crate::nodes::{NodeTarget, NodeView};
use crate::ring::Ring;
use crate::schedule::{Assignment, Handover};

/// The nodes of `view` that `me` owns among `members`.
pub fn assign(me: &str, ring: &Ring, view: &NodeView) -> Assignment {
    let owned: BTreeMap<String, NodeTarget> =
        view.nodes.iter().filter(|(name, _)| ring.is_owner(me, name)).map(|(k, v)| (k.clone(), v.clone())).collect();
    let known: BTreeSet<String> = view.nodes.keys().cloned().collect();
    Assignment { owned: Arc::new(owned), known: Arc::new(known), handovers: Arc::default() }
}

/// Who owned the nodes before a change: the ring and node set of the last published
/// assignment of a synced view.
#[derive(Debug, Clone, Copy)]
pub struct PreviousOwners<'a> {
    /// The ring the nodes were assigned by.
    pub ring: &'a Ring,
    /// The nodes that existed then; `None` before this shard's first assignment (then `ring` is
    /// the ring of the others, what owned the nodes before this shard came).
    pub known: Option<&'a BTreeSet<String>>,
}

/// What this shard knows about the other shards when a change arrives.
#[derive(Debug, Clone, Copy)]
pub struct MemberRecords<'a> {
    /// The last record of every member ever seen (a departed one's tells crash from stop).
    pub seen: &'a BTreeMap<String, Member>,
    /// The current live members.
    pub live: &'a Members,
    /// When the member change arrived (before the ring was rebuilt).
    pub noticed_at: tokio::time::Instant,
}

/// Handovers of the nodes `now` owns that `before` did not: for each whose owner under
/// `previous.ring` was another shard, what `members` says about that shard. Nodes absent from
/// `previous.known` are new to the cluster and get none (they are scraped at once).
pub fn handovers(me: &str, now: &Assignment, before: &Assignment, previous: PreviousOwners<'_>, members: MemberRecords<'_>) -> BTreeMap<String, Handover> {
    now.owned
        .keys()
        .filter(|n| !before.owned.contains_key(*n))
        .filter(|n| previous.known.is_none_or(|k| k.contains(*n)))
        .filter_map(|n| {
            let owner = previous.ring.owner(n).filter(|o| *o != me)?;
            let m = members.seen.get(owner)?;
            let started_ms = if m.epoch == 0 { i64::MAX } else { i64::try_from(m.epoch / 1_000_000).unwrap_or(i64::MAX) };
            Some((
                n.clone(),
                Handover {
                    previous_owner_started_ms: started_ms,
                    previous_owner_live: members.live.contains_key(owner),
                    previous_owner_expires_ms: m.renew_time_ms.saturating_add(m.lease_duration_ms),
                    noticed_at: members.noticed_at,
                },
            ))
        })
        .collect()
}

/// Publishes this shard's assignment whenever nodes or members change. The task ends when the
/// returned receiver (and its clones) are dropped or an input closes. `epoch` is this process's
/// (Unix ns at start, as in its Lease): a Lease of `me` with another epoch is a previous
/// incarnation of this shard.
pub fn watch_assignment(
    me: String,
    epoch: u64,
    mut nodes: watch::Receiver<NodeView>,
    mut members: watch::Receiver<Members>,
    metrics: Metrics,
) -> (watch::Receiver<Assignment>, tokio::task::JoinHandle<()>) {
    let (tx, rx) = watch::channel(Assignment::default());
    let task = tokio::spawn(async move {
        let mut live: Members = members.borrow_and_update().clone();
        let mut ring = Ring::new(live.keys().cloned());
        let mut last_members: Vec<String> = ring.members().map(str::to_owned).collect();
        // Every member ever seen, as last seen (a departed one's record tells crash from stop).
        let mut seen: BTreeMap<String, Member> = live.clone();
        // The ring and node set behind the last published assignment of a synced view; before
        // the first one, the ring of the others: what owned the nodes before this shard came.
        let mut previous: Option<(Vec<String>, Arc<BTreeSet<String>>)> = None;
        let mut members_changed_at = tokio::time::Instant::now();
        // Whether the node view or the ring changed since the assignment was last computed. A
        // member change that keeps the same ids (every Lease renewal of every shard: a new renew
        // time) builds the same ring over the same view, hence the same assignment: computing it
        // again would hash every node name on the ring for nothing.
        let mut recompute = true;
        loop {
            if recompute {
                recompute = false;
                let view = nodes.borrow_and_update().clone();
                let mut assignment = assign(&me, &ring, &view);
                metrics.members.set(ring.len() as i64);
                let changed = {
                    let cur = tx.borrow();
                    *cur.owned != *assignment.owned || *cur.known != *assignment.known
                };
                if changed && view.synced {
                    let before = tx.borrow().clone();
                    let rebuilt;
                    let (previous_ring, previous_known) = match &previous {
                        Some((ids, k)) if *ids == last_members => (&ring, Some(k.as_ref())),
                        Some((ids, k)) => {
                            rebuilt = Ring::new(ids.iter().cloned());
                            (&rebuilt, Some(k.as_ref()))
                        }
                        None => {
                            rebuilt = Ring::new(live.keys().filter(|k| **k != me).cloned());
                            (&rebuilt, None)
                        }
                    };
                    // A previous incarnation of this shard (restarted after a crash, same id) may still
                    // hold an unexpired Lease: the peers kept it in their rings and never scraped its
                    // nodes, so nothing was handed over and every node is scraped at once.
                    let restarted = previous.is_none() && live.get(&me).is_some_and(|m| m.epoch != epoch);
                    assignment.handovers = if restarted {
                        Arc::new(BTreeMap::new())
                    } else {
                        let previous = PreviousOwners { ring: previous_ring, known: previous_known };
                        let records = MemberRecords { seen: &seen, live: &live, noticed_at: members_changed_at };
                        Arc::new(handovers(&me, &assignment, &before, previous, records))
                    };
                    // An empty ring is no evidence of who owned the nodes: the Lease list may not
                    // have arrived yet (the node view can sync first). Recorded then, it would make
                    // every node that later moves here look ownerless and be scraped at once
                    // although its live owner just scraped it; unrecorded, the ring of the others
                    // is used instead.
                    if !last_members.is_empty() {
                        previous = Some((last_members.clone(), assignment.known.clone()));
                    }
                }
                if changed {
                    tracing::info!(owned = assignment.owned.len(), known = assignment.known.len(), members = ring.len(), "assignment changed");
                    tx.send_replace(assignment);
                }
            }
            tokio::select! {
                _ = tx.closed() => return,
                r = nodes.changed() => {
                    if r.is_err() {
                        return;
                    }
                    recompute = true;
                }
                r = members.changed() => {
                    if r.is_err() {
                        return;
                    }
                    members_changed_at = tokio::time::Instant::now();
                    live = members.borrow_and_update().clone();
                    seen.extend(live.iter().map(|(k, m)| (k.clone(), m.clone())));
                    let ids: Vec<String> = live.keys().cloned().collect();
                    if ids != last_members {
                        tracing::info!(members = ?ids, "shard membership changed");
                        ring = Ring::new(ids.iter().cloned());
                        last_members = ids;
                        recompute = true;
                    }
                }
            }
        }
    });
    (rx, task)
}

#[cfg(test)]
mod tests {
    use shardmetrics_plumbing::lease::Member;

    use super::*;

    fn view(names: &[&str]) -> NodeView {
        let nodes = names.iter().map(|n| ((*n).to_owned(), NodeTarget::new(*n, "h", 1))).collect();
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
    async fn moved_nodes_carry_their_previous_owner_and_new_nodes_do_not() {
        let (ntx, nrx) = watch::channel(view(&["a", "b", "c", "d", "e", "f", "g", "h"]));
        let mut both = members(&["s0", "s1"]);
        if let Some(m) = both.get_mut("s1") {
            m.epoch = 5_000_000_000_000;
            m.renew_time_ms = 9_000;
            m.lease_duration_ms = 3_000;
        }
        let (mtx, mrx) = watch::channel(both.clone());
        let (mut rx, _task) = watch_assignment("s0".into(), 1, nrx, mrx, Metrics::register(&prometheus::Registry::new()).unwrap());
        let first = rx.wait_for(|a| !a.known.is_empty()).await.unwrap().clone();
        // The first assignment: s1 would own everything without s0, and s1 is live.
        assert!(!first.owned.is_empty());
        assert!(first.handovers.values().all(|h| h.previous_owner_live && h.previous_owner_started_ms == 5_000_000));
        assert_eq!(first.handovers.len(), first.owned.len());

        mtx.send_replace(members(&["s0"]));
        let after = rx.wait_for(|a| a.owned.len() == 8).await.unwrap().clone();
        let moved: BTreeSet<&String> = after.owned.keys().filter(|n| !first.owned.contains_key(*n)).collect();
        assert!(!moved.is_empty());
        assert_eq!(after.handovers.keys().collect::<BTreeSet<_>>(), moved, "exactly the moved nodes");
        for h in after.handovers.values() {
            assert!(!h.previous_owner_live);
            assert_eq!(h.previous_owner_expires_ms, 12_000, "the departed Lease's expiry tells stop from crash");
        }

        ntx.send_replace(view(&["a", "b", "c", "d", "e", "f", "g", "h", "new"]));
        let grown = rx.wait_for(|a| a.owned.len() == 9).await.unwrap().clone();
        assert!(grown.handovers.is_empty(), "a node new to the cluster has no previous owner");
    }

    #[tokio::test]
    async fn a_node_view_synced_before_the_first_lease_list_still_hands_over_from_the_live_owner() {
        // A joining shard: its node view syncs before the Lease watch has listed (members still
        // empty), then the list arrives with the others and, already, this shard's own Lease.
        let (_ntx, nrx) = watch::channel(view(&["a", "b", "c", "d", "e", "f", "g", "h"]));
        let (mtx, mrx) = watch::channel(Members::new());
        let (mut rx, _task) = watch_assignment("s0".into(), 1, nrx, mrx, Metrics::register(&prometheus::Registry::new()).unwrap());
        let unlisted = rx.wait_for(|a| !a.known.is_empty()).await.unwrap().clone();
        assert!(unlisted.owned.is_empty(), "no ring yet: nothing owned");
        let mut listed = members(&["s0", "s1"]);
        if let Some(m) = listed.get_mut("s1") {
            m.epoch = 5_000_000_000_000;
        }
        mtx.send_replace(listed);
        let joined = rx.wait_for(|a| !a.owned.is_empty()).await.unwrap().clone();
        assert_eq!(joined.handovers.len(), joined.owned.len(), "every node came from the live s1: {:?}", joined.handovers.keys());
        assert!(joined.handovers.values().all(|h| h.previous_owner_live && h.previous_owner_started_ms == 5_000_000));
    }

    #[tokio::test]
    async fn after_a_crash_restart_under_the_same_id_nothing_counts_as_handed_over() {
        let (_ntx, nrx) = watch::channel(view(&["a", "b", "c", "d", "e", "f", "g", "h"]));
        // s0's previous incarnation (epoch 1) still holds its Lease: s1 never took its nodes.
        let (_mtx, mrx) = watch::channel(members(&["s0", "s1"]));
        let (mut rx, _task) = watch_assignment("s0".into(), 2, nrx, mrx, Metrics::register(&prometheus::Registry::new()).unwrap());
        let first = rx.wait_for(|a| !a.known.is_empty()).await.unwrap().clone();
        assert!(!first.owned.is_empty());
        assert!(first.handovers.is_empty(), "every owned node is scraped at once: {:?}", first.handovers.keys());
    }

    #[tokio::test]
    async fn a_member_leaving_hands_its_nodes_to_the_rest() {
        let (ntx, nrx) = watch::channel(view(&["a", "b", "c", "d", "e", "f", "g", "h"]));
        let (mtx, mrx) = watch::channel(members(&["s0", "s1"]));
        let (mut rx, _task) = watch_assignment("s0".into(), 1, nrx, mrx, Metrics::register(&prometheus::Registry::new()).unwrap());
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
