//! `shardmetrics-loadtest`: parses flags and runs [`shardmetrics_loadtest::cli::main_with`].

use std::process::ExitCode;

use clap::Parser;

#[tokio::main]
async fn main() -> ExitCode {
    shardmetrics_loadtest::cli::main_with(shardmetrics_loadtest::cli::Args::parse()).await
}
