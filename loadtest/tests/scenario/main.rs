//! The `run` scenario end to end, one test binary: a small standard scenario (coverage and
//! correctness of the pipeline and of the report) and one test per fault kind of issue #8, each
//! a real multi-process pipeline with short resolution and Lease durations. The tests take
//! turns ([`support::serial`]). `compare` runs shardmetrics and metrics-server side by side;
//! `kubelet_servers` runs the simulated kubelets from child processes.

mod support;

mod small;
mod kubelet_servers;
mod fault_kill_shard;
mod fault_restart_shard;
mod fault_scale_shards;
mod fault_frontend;
mod fault_watches;
mod fault_kubelets;
mod fault_overload;
mod compare;
