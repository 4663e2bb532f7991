//! The shardmetrics frontend replica binary (work in progress).

fn main() {}
