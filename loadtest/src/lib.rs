//! shardmetrics loadtest: a simulated Kubernetes cluster on one machine.
//!
//! Nothing here needs a real cluster: this crate *is* the cluster the scraper shards, the
//! frontends and a real `kubectl` talk to, and the harness that load-tests them.
//!
//! # Layout
//! - [`pki`]: the simulator's certificate authorities and rustls configurations.
//! - [`apiserver`]: the API-server simulator (discovery, Nodes/Pods/Namespaces/ConfigMaps/Leases
//!   with list+watch, reviews, policy) and the `metrics.k8s.io` aggregation proxy.
//! - [`kubelet`]: the kubelet simulator (many HTTPS kubelets, a usage model with known true
//!   values, `/metrics/resource` as kubelet v1.35 formats it, per-node faults).
//! - [`cluster`]: nodes x pods x containers in the API server with a kubelet per node, kept in
//!   step with whatever changes the API server (tests, kube-rs, kubectl).
//! - [`demo`]: the `demo` command: the simulated cluster plus scraper shards and frontends as
//!   child processes of this binary.
//! - [`faults`]: the faults `run --fault` injects (shard crash/restart, frontend crash, watch
//!   drops, failing kubelets, shard scaling, overload).
//! - [`scenario`]: the `run` command: open-loop HPA/top query load, faults, a coverage and
//!   freshness probe, the bare-fetch floor, CPU/RSS per process; a JSON report, a summary and an
//!   SVG chart.
//! - [`httputil`]: the TLS accept loop and body helpers the simulated servers share.
//! - [`cli`]: the `shardmetrics-loadtest` command line (the binary's `main.rs` only calls it).
//! - [`tools`]: installs kubectl/helm for the end-to-end tests.

pub mod apiserver;
pub mod cli;
pub mod cluster;
pub mod demo;
pub mod faults;
pub mod httputil;
pub mod kubelet;
pub mod pki;
pub mod scenario;
pub mod tools;
