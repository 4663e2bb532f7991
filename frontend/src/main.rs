//! The shardmetrics frontend replica binary: parses flags and hands over to
//! [`shardmetrics_frontend::cli::main_with`].

use std::process::ExitCode;

#[tokio::main]
async fn main() -> ExitCode {
    match shardmetrics_plumbing::process::parse_args::<shardmetrics_frontend::cli::Args>(std::env::args_os()) {
        Ok(args) => shardmetrics_frontend::cli::main_with(args).await,
        Err(code) => code,
    }
}
