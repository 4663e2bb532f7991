//! A shardmetrics scraper shard: owns a consistent-hash slice of the cluster's nodes, scrapes
//! each owned kubelet's `/metrics/resource` once per resolution and streams the raw cumulative
//! samples to frontends over gRPC (`shardmetrics.v1.SampleStream`).
//!
//! # Layout
//! - [`kubelet`]: fetch seam, HTTPS client and the `/metrics/resource` parser.
//! - [`nodes`]: Node watch, trimmed to scrape targets (address, port).
//! - [`membership`]: this shard's Lease (create, renew, delete on shutdown).
//! - [`ring`]: consistent-hash ownership of nodes over live shards.
//! - [`ownership`]: nodes × live members → this shard's [`schedule::Assignment`].
//! - [`schedule`]: per-node phase offsets, bounded concurrency, the fetch → parse → publish pipeline.
//! - [`buffer`]: the last two scrapes of every owned node (snapshot source).
//! - [`stream`]: the `SampleStream` gRPC server: snapshot, live fan-out, slow-subscriber drop.
//! - [`metrics`]: self-metrics in an explicit registry.
//! - [`tls`]: PEM loading and the explicit ring crypto provider.

pub mod buffer;
pub mod kubelet;
pub mod membership;
pub mod metrics;
pub mod nodes;
pub mod ownership;
pub mod ring;
pub mod schedule;
pub mod stream;
pub mod tls;
