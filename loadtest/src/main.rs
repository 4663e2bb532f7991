//! `shardmetrics-loadtest`: runs [`shardmetrics_loadtest::cli::main_from_env`].

use std::process::ExitCode;

fn main() -> ExitCode {
    shardmetrics_loadtest::cli::main_from_env()
}
