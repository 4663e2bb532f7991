//! The `shardmetrics-scraper` binary: parse flags, run the shard (see `shardmetrics_scraper::cli`).

use std::process::ExitCode;

/// mimalloc rather than the C library's allocator: a shard allocates and frees per scrape (the
/// body, TLS buffers, the batch), and on glibc those calls were a fifth of its CPU; mimalloc
/// takes 10-17 % off a shard's CPU per scrape, for 10-19 MiB more peak RSS at 1 250 nodes
/// (docs/benchmarks.md, eighth and ninth passes). The image ships this glibc build: on musl,
/// even with mimalloc, its slower memmove/memcmp/memcpy took a shard to ~1.5-1.6x the floor.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    match shardmetrics_plumbing::process::parse_args::<shardmetrics_scraper::cli::Args>(std::env::args_os()) {
        Ok(args) => shardmetrics_scraper::cli::run_process(args),
        Err(code) => code,
    }
}
