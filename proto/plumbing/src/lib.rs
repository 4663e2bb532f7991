//! Plumbing every shardmetrics crate shares, each piece written once.
//!
//! The scraper, the frontend, the simulator and the runner all parse Go durations, match
//! Kubernetes selectors, read the wall clock, find the live shards from their Leases, stop on
//! SIGTERM, log through `tracing`, and (in tests) make certificates and kubelet payloads. Those
//! live here so that they cannot drift apart; the scraper-to-frontend wire contract stays in
//! `shardmetrics-proto`.
//!
//! # Layout
//! - [`bulk`]: whole-cluster list work on its own lower-priority thread.
//! - [`duration`]: Go `time.ParseDuration` syntax, its formatting, and the clap value type.
//! - [`selector`]: label and field selectors with apimachinery's syntax and error texts.
//! - [`clock`]: the injected wall clock (the only place that reads the system time).
//! - [`lease`]: shard Leases (naming, parsing) and the watcher of live members.
//! - [`port`]: loopback ports for child programs to bind, away from the ephemeral range.
//! - [`process`]: tracing set-up, the termination signal, the Kubernetes client from a
//!   kubeconfig.
//! - [`exposition`]: kubelet `/metrics/resource` text, as kubelet v1.35 writes it.
//! - [`metrics_text`]: reading a process's own Prometheus `/metrics` back into samples.
//! - [`tls`]: the rustls provider and the accept-any-server-certificate verifier.
//! - [`pki`]: certificate authorities and certificates for simulated clusters and tests.

pub mod bulk;
pub mod clock;
pub mod duration;
pub mod exposition;
pub mod lease;
pub mod metrics_text;
pub mod pki;
pub mod port;
pub mod process;
pub mod selector;
pub mod tls;
