//! Everything about talking to kubelets: the fetch seam, the HTTPS client, the parser.
//!
//! # Layout
//! - [`KubeletSource`]: the seam the scheduler calls ("knows how to fetch one node's
//!   `/metrics/resource` body"); [`client::KubeletClient`] is the real one, tests use fakes.
//! - [`client`]: rustls connections kept alive one per kubelet, auth, CA or insecure,
//!   timeout, size limit.
//! - [`http1`]: HTTP/1.1 request and response framing (head, `Content-Length`, chunked).
//! - [`parse`]: the text parser producing a [`shardmetrics_proto::NodeScrape`].
//! - [`fixture`]: realistic payloads with known contents, for tests and benchmarks.

use std::future::Future;
use std::time::Duration;

use bytes::Bytes;

use crate::nodes::NodeTarget;

pub mod client;
pub mod fixture;
pub mod http1;
pub mod parse;

pub use client::{KubeletAuth, KubeletClient, KubeletClientConfig, KubeletTls, TokenSource};
pub use parse::{ParseError, ParseScratch, Parsed, ParsedRef, parse_resource_metrics, parse_resource_metrics_ref, parse_resource_metrics_with};

/// Why one scrape of one node failed. Never fatal: counted by [`ScrapeError::result_label`],
/// logged once per change of a node's state, and the node is tried again next round.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ScrapeError {
    /// The whole scrape (connect, TLS, request, body) did not finish within the deadline.
    #[error("timed out after {0:?}")]
    Timeout(Duration),
    /// No connection: DNS, refused, unreachable, TLS handshake or certificate rejected.
    #[error("cannot connect: {0}")]
    Connect(String),
    /// The connection broke while sending the request or reading the response.
    #[error("transport error: {0}")]
    Transport(String),
    /// The kubelet answered with a status other than 200.
    #[error("kubelet answered HTTP {status}")]
    Http {
        /// The HTTP status code.
        status: u16,
    },
    /// The body exceeded `--kubelet-max-response-bytes`.
    #[error("response larger than {limit} bytes")]
    TooLarge {
        /// The limit, in bytes.
        limit: usize,
    },
    /// The body is not valid `/metrics/resource` text.
    #[error("unparseable response: {0}")]
    Parse(#[from] ParseError),
}

/// Every value of the `result` label of `shardmetrics_scraper_scrapes_total`.
pub const RESULT_LABELS: [&str; 6] = ["success", "timeout", "http_error", "parse_error", "connect_error", "too_large"];

impl ScrapeError {
    /// The `result` label this failure is counted under.
    pub fn result_label(&self) -> &'static str {
        match self {
            ScrapeError::Timeout(_) => "timeout",
            ScrapeError::Connect(_) | ScrapeError::Transport(_) => "connect_error",
            ScrapeError::Http { .. } => "http_error",
            ScrapeError::TooLarge { .. } => "too_large",
            ScrapeError::Parse(_) => "parse_error",
        }
    }
}

/// Knows how to fetch one node's `/metrics/resource` body. The scheduler's only view of the
/// network, so that the pipeline is testable without kubelets.
pub trait KubeletSource: Send + Sync + 'static {
    /// Fetches the raw body; must give up by itself within the configured timeout.
    fn fetch(&self, target: &NodeTarget) -> impl Future<Output = Result<Bytes, ScrapeError>> + Send;

    /// [`KubeletSource::fetch`] into `body` (cleared first; its contents are unspecified after
    /// an error), so that a caller can reuse one buffer across scrapes instead of allocating a
    /// body per scrape. The default copies what `fetch` returns; the kubelet client reads
    /// straight into `body`.
    fn fetch_into(&self, target: &NodeTarget, body: &mut Vec<u8>) -> impl Future<Output = Result<(), ScrapeError>> + Send {
        async move {
            let fetched = self.fetch(target).await?;
            body.clear();
            body.extend_from_slice(&fetched);
            Ok(())
        }
    }
}
