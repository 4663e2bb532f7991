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

/// Where a streamed list takes its items from, a chunk at a time: the next chunk, or `None` at
/// the end. A list of the whole cluster is selected while it is written ([`crate::api::router::PodSelection`]),
/// so it holds one chunk of items at a time, not 150 000.
pub type Chunks<T> = Box<dyn FnMut() -> Option<Vec<T>> + Send>;

/// The chunks of a list already collected: all of `items` in one.
pub fn all_at_once<T: Send + 'static>(items: Vec<T>) -> Chunks<T> {
    let mut items = Some(items);
    Box::new(move || items.take())
}
