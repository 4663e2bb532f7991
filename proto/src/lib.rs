//! The contract between shardmetrics scraper shards and frontend replicas.
//!
//! A shard scrapes kubelets and streams raw cumulative samples; a frontend subscribes to every
//! live shard and computes rates. Both sides agree on two things, both defined here:
//!
//! - the gRPC stream (`shardmetrics/v1/samples.proto`, generated into [`v1`]);
//! - the domain types a scrape produces ([`sample`]) and their one conversion to and from the
//!   wire ([`convert`]).
//!
//! How shards announce themselves (one `coordination.k8s.io/v1` Lease per shard) is in
//! `shardmetrics-plumbing`'s `lease` module, beside the clock it needs.
//!
//! # Layout
//! - `shardmetrics/v1/samples.proto`: the wire contract, documented field by field.
//! - [`v1`]: generated code, committed (no `protoc` needed); `tests/codegen.rs` keeps it in sync.
//! - [`sample`], [`convert`]: domain types and wire conversion.

pub mod convert;
pub mod sample;

/// Generated messages, client and server of `shardmetrics.v1`.
#[allow(missing_docs, clippy::all)]
pub mod v1 {
    include!("gen/shardmetrics.v1.rs");
}

pub use convert::{DecodeError, decode_batch, encode_batch, encode_scrape_ref, encode_scrape_ref_append};
pub use sample::{
    Batch, ContainerRef, ContainerSample, NodeReleased, NodeScrape, NodeScrapeRef, PodRef, PodSamples, Point, ReleaseReason, ShardIdentity,
};
