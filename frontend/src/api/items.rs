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
}

/// One PodMetrics to write.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PodItem {
    /// The pod's usage.
    pub usage: PodUsage,
    /// The Pod's labels (`None` without a metadata view).
    pub labels: Option<Labels>,
}
