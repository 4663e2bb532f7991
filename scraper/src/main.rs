//! The `shardmetrics-scraper` binary: parse flags, run the shard (see `shardmetrics_scraper::cli`).

use std::process::ExitCode;

fn main() -> ExitCode {
    match shardmetrics_plumbing::process::parse_args::<shardmetrics_scraper::cli::Args>(std::env::args_os()) {
        Ok(args) => shardmetrics_scraper::cli::run_process(args),
        Err(code) => code,
    }
}
