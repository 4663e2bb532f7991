//! The `shardmetrics-scraper` binary: parse flags, run the shard (see `shardmetrics_scraper::cli`).

use std::process::ExitCode;

/// mimalloc rather than the C library's allocator: a shard allocates and frees per scrape (the
/// body, TLS buffers, the batch), and on glibc those calls were a fifth of its CPU; mimalloc
/// takes a sixth off a shard's CPU per scrape, for ~10 MiB more RSS (docs/benchmarks.md, ninth
/// pass). musl's allocator, in the static image, is slower still.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    match shardmetrics_plumbing::process::parse_args::<shardmetrics_scraper::cli::Args>(std::env::args_os()) {
        Ok(args) => shardmetrics_scraper::cli::run_process(args),
        Err(code) => code,
    }
}
