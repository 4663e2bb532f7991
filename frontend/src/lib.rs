//! shardmetrics frontend replica (work in progress).

pub mod auth;
