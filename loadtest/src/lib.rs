//! shardmetrics loadtest: a simulated Kubernetes cluster on one machine (work in progress).

pub mod pki;
pub mod tools;
