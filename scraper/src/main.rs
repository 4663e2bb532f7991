//! The `shardmetrics-scraper` binary: parse flags, run the shard (see `shardmetrics_scraper::cli`).

use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    let args = shardmetrics_scraper::cli::Args::parse();
    match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(rt) => rt.block_on(shardmetrics_scraper::cli::main_with(args)),
        Err(e) => {
            eprintln!("shardmetrics-scraper: cannot start the async runtime: {e}");
            ExitCode::FAILURE
        }
    }
}
