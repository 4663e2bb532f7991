//! shardmetrics-sim: a simulated Kubernetes cluster on one machine, the testkit of the project.
//!
//! Nothing here needs a real cluster: this crate *is* the cluster that scraper shards, frontends
//! and a real `kubectl` talk to. The scraper's and the frontend's own integration tests use it
//! as a dev-dependency; the runner (`shardmetrics-loadtest`) builds the demo and the load
//! scenarios on it. Against the real upstream control plane only the kubelets are simulated
//! ([`kubelet`]); everything else here stands in for kube-apiserver.
//!
//! # Layout
//! - [`apiserver`]: the API-server simulator (discovery, Nodes/Pods/Namespaces/ConfigMaps/Leases
//!   with list+watch, reviews, policy) and the `metrics.k8s.io` aggregation proxy.
//! - [`kubelet`]: the kubelet simulator (many HTTPS kubelets, a usage model with known true
//!   values, `/metrics/resource` as kubelet v1.35 formats it, per-node faults), and the kubelet
//!   server children ([`kubelet::servers`]) that hold the listeners and connections of more
//!   kubelets than one process's open-files limit allows, forwarding their requests here.
//! - [`cluster`]: nodes x pods x containers in the API server with a kubelet per node, kept in
//!   step with whatever changes the API server (tests, kube-rs, kubectl).
//! - [`node_agent`]: the kubelets' nodes as real Nodes of a real kube-apiserver (kwok-style
//!   registration, heartbeats, pod status, webhook authentication of scrapers).
//! - [`httputil`]: the TLS accept loop and body helpers the simulated servers share.
//!
//! Certificates come from `shardmetrics_plumbing::pki`, the wall clock from
//! `shardmetrics_plumbing::clock`.

pub mod apiserver;
pub mod cluster;
pub mod httputil;
pub mod kubelet;
pub mod node_agent;
