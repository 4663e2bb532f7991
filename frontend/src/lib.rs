//! shardmetrics frontend replica (work in progress).

pub mod api;
pub mod auth;
pub mod metadata;
pub mod metrics;
pub mod store;
pub mod upstream;
