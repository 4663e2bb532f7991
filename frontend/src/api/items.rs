//! What a query answers with: stored usage joined with the object's labels.

use crate::metadata::Labels;
use crate::store::{NodeUsage, PodUsage};

/// One NodeMetrics to write.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeItem {
    /// The node's usage.
    pub usage: NodeUsage,
    /// The Node's labels (`None` without a metadata view).
    pub labels: Option<Labels>,
    /// `metadata.resourceVersion`: set in watch events only (its sample time, Unix ms; see
    /// [`crate::api::watch`]); lists and gets carry none, as metrics-server's.
    pub resource_version: Option<i64>,
}

/// One PodMetrics to write.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PodItem {
    /// The pod's usage.
    pub usage: PodUsage,
    /// The Pod's labels (`None` without a metadata view).
    pub labels: Option<Labels>,
    /// `metadata.resourceVersion`: set in watch events only (see [`NodeItem::resource_version`]).
    pub resource_version: Option<i64>,
}

/// The encoding of the last label set a list wrote, reused for the next items while they share
/// that set. Pods of one ReplicaSet share one label set (`metadata` interns them) and a list
/// sorted by name lists them one after another, so most pods' labels are one copy of the
/// previous pod's. Sets are compared by address; holding the `Arc` keeps that address from
/// being reused by another set while it is compared.
#[derive(Default)]
pub struct LastLabels(Option<(Labels, Vec<u8>)>);

impl LastLabels {
    /// The encoding of `labels` (empty without labels); `encode` writes it into an empty buffer
    /// and is called only for a set other than the last one.
    pub fn encoded(&mut self, labels: Option<&Labels>, encode: impl FnOnce(&Labels, &mut Vec<u8>)) -> &[u8] {
        let Some(labels) = labels else { return &[] };
        let (last, out) = self.0.get_or_insert_with(|| (labels.clone(), Vec::new()));
        if !std::sync::Arc::ptr_eq(last, labels) || out.is_empty() {
            // Another set: its encoding replaces the last one's in the same buffer.
            *last = labels.clone();
            out.clear();
            encode(labels, out);
        }
        out
    }
}

/// Where a streamed list takes its items from, a chunk at a time: the next chunk, or `None` at
/// the end. A list of the whole cluster is selected while it is written ([`crate::api::router::PodSelection`]),
/// so it holds one chunk of items at a time, not 150 000.
pub type Chunks<T> = Box<dyn FnMut() -> Option<Vec<T>> + Send>;

/// The chunks of a list already collected: all of `items` in one.
pub fn all_at_once<T: Send + 'static>(items: Vec<T>) -> Chunks<T> {
    let mut items = Some(items);
    Box::new(move || items.take())
}

/// Chunks a [`prefetched`] source may have selected ahead of the encoder before it waits.
pub const PREFETCHED_CHUNKS: usize = 4;

/// The same chunks, selected on a bulk thread of their own ([`shardmetrics_plumbing::bulk`])
/// while the caller encodes the previous ones: a cluster-wide list then takes about the longer
/// of selecting and encoding, not their sum. Overflow policy: the selecting thread waits when
/// [`PREFETCHED_CHUNKS`] are ready and not yet taken (back-pressure, nothing dropped); it stops
/// when the returned source is dropped. If no thread can be started the source is returned
/// unchanged (selected on the caller's thread, as before).
pub fn prefetched<T: Send + 'static>(chunks: Chunks<T>) -> Chunks<T> {
    let (ready, taken) = std::sync::mpsc::sync_channel::<Vec<T>>(PREFETCHED_CHUNKS);
    let select = move |mut chunks: Chunks<T>| {
        while let Some(chunk) = chunks() {
            if ready.send(chunk).is_err() {
                return;
            }
        }
    };
    match shardmetrics_plumbing::bulk::spawn_with("bulk-select", chunks, select) {
        Ok(_) => Box::new(move || taken.recv().ok()),
        Err(chunks) => chunks,
    }
}

/// Every item `next` hands out, in order, collected (for answers built whole: a Table, tests).
pub fn all<T>(mut next: impl FnMut() -> Option<Vec<T>>) -> Vec<T> {
    let mut items = Vec::new();
    while let Some(chunk) = next() {
        items.extend(chunk);
    }
    items
}

/// `items` handed out in chunks of the sizes `sizes` gives in turn (0 included), for tests of
/// chunked sources.
#[cfg(test)]
pub(crate) fn uneven_chunks<T: Send + 'static>(items: Vec<T>, sizes: &'static [usize]) -> Chunks<T> {
    let mut rest = items;
    let mut sizes = sizes.iter().copied().cycle();
    Box::new(move || {
        if rest.is_empty() {
            return None;
        }
        let n = sizes.next().unwrap_or(1).min(rest.len());
        Some(rest.drain(..n).collect())
    })
}
