//! The `shardmetrics-scraper` binary (entry point wired up in `cli`).
fn main() {}
