//! `shardmetrics-floor`: the scrapers' bare-fetch floor (`scenario::floor`) as a program of its
//! own, with the flags of `shardmetrics-loadtest floor`. `run` starts it from beside the runner
//! so that the floor fetches on the allocator of the `shardmetrics-scraper` it is the floor of:
//! the ratio then compares the scrapers' work with a bare fetch, not two allocators.

use std::process::ExitCode;

/// The allocator of `shardmetrics-scraper` (scraper/src/main.rs); keep the two the same.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    shardmetrics_loadtest::cli::floor_main(std::env::args_os().skip(1))
}
