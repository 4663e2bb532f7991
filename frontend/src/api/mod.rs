//! The `metrics.k8s.io/v1beta1` API: routing, selectors, encodings and errors.

pub mod quantity;
pub mod timefmt;
