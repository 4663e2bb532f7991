//! The `shardmetrics-scraper` binary: parse flags, run the shard (see `shardmetrics_scraper::cli`).

use std::process::ExitCode;

fn main() -> ExitCode {
    let args = match shardmetrics_plumbing::process::parse_args::<shardmetrics_scraper::cli::Args>(std::env::args_os()) {
        Ok(args) => args,
        Err(code) => return code,
    };
    match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(rt) => rt.block_on(shardmetrics_scraper::cli::main_with(args)),
        Err(e) => {
            eprintln!("shardmetrics-scraper: cannot start the async runtime: {e}");
            ExitCode::FAILURE
        }
    }
}
