//! The simulator's own tests, one binary (one link on 2 cores): the API server, the
//! aggregation proxy, authentication and policy, the kubelets, and a real kubectl against them.

mod aggregation;
mod apiserver;
mod kubectl;
mod kubelet;
