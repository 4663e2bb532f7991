//! Everything about talking to kubelets: the fetch seam, the HTTPS client, the parser.
//!
//! # Layout
//! - [`KubeletSource`]: the seam the scheduler calls ("knows how to fetch one node's
//!   `/metrics/resource` body"); [`client::KubeletClient`] is the real one, tests use fakes.
//! - [`client`]: hyper + rustls keep-alive pool, auth, CA or insecure, timeout, size limit.
//! - [`parse`]: the text parser producing a [`shardmetrics_proto::NodeScrape`].
//! - [`fixture`]: realistic payloads with known contents, for tests and benchmarks.

pub mod fixture;
pub mod parse;

pub use parse::{ParseError, Parsed, parse_resource_metrics};
