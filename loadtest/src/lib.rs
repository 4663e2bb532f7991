//! shardmetrics loadtest: the runner. It starts whole clusters on one machine and measures
//! shardmetrics in them.
//!
//! The simulated cluster itself (API server, kubelets) is the `shardmetrics-sim` testkit in
//! `loadtest/sim/`; the tools it installs and builds (kubectl, helm, the upstream Go programs)
//! are `shardmetrics-xtask` in `loadtest/xtask/`. This crate puts shards and frontends on top.
//!
//! # Layout
//! - [`control_plane`]: the real upstream control plane (etcd, kube-apiserver,
//!   kube-controller-manager, kube-scheduler) on loopback, for `demo --control-plane real`.
//! - [`demo`]: the `demo` command: the simulated cluster plus scraper shards and frontends as
//!   child processes of this binary.
//! - [`faults`]: the faults `run --fault` injects (shard crash/restart, frontend crash, watch
//!   drops, failing kubelets, shard scaling, overload).
//! - [`scenario`]: the `run` command: open-loop HPA/top query load, faults, a coverage and
//!   freshness probe, the bare-fetch floor, CPU/RSS per process; a JSON report, a summary and an
//!   SVG chart.
//! - [`peer`]: metrics-server built from the pinned upstream module, run beside shardmetrics
//!   against the same kubelets (the differential test, `run --compare metrics-server`).
//! - [`service_proxy`]: the kube-proxy stand-in between the real aggregator and the frontends.
//! - [`cli`]: the `shardmetrics-loadtest` command line (the binary's `main.rs` only calls it).

pub mod cli;
pub mod control_plane;
pub mod demo;
pub mod faults;
pub mod peer;
pub mod scenario;
pub mod service_proxy;
