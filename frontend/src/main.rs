//! The shardmetrics frontend replica binary: parses flags and hands over to
//! [`shardmetrics_frontend::cli::main_with`].

use std::process::ExitCode;

use clap::Parser;

#[tokio::main]
async fn main() -> ExitCode {
    shardmetrics_frontend::cli::main_with(shardmetrics_frontend::cli::Args::parse()).await
}
