//! `shardmetrics-xtask`: installs or builds the project's external tools ahead of time and
//! prints where they are (the tests do the same on first use).

use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// Installs or builds the project's external tools into target/tools/.
#[derive(Debug, Parser)]
#[command(name = "shardmetrics-xtask", version)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Install (or build) tools and print their paths.
    Install {
        /// Which: kubectl, helm, control-plane, metrics-server, or all.
        #[arg(default_value = "all")]
        what: Vec<String>,
    },
}

fn main() -> ExitCode {
    let Command::Install { what } = Cli::parse().command;
    let all = what.iter().any(|w| w == "all");
    let wants = |name: &str| all || what.iter().any(|w| w == name);
    let mut failed = false;
    let mut report = |name: &str, result: Result<Vec<std::path::PathBuf>, shardmetrics_xtask::tools::ToolError>| match result {
        Ok(paths) => paths.iter().for_each(|p| println!("{name}: {}", p.display())),
        Err(e) => {
            eprintln!("{name}: {e}");
            failed = true;
        }
    };
    if wants("kubectl") {
        report("kubectl", shardmetrics_xtask::tools::kubectl().map(|p| vec![p]));
    }
    if wants("helm") {
        report("helm", shardmetrics_xtask::tools::helm().map(|p| vec![p]));
    }
    if wants("control-plane") {
        report(
            "control-plane",
            shardmetrics_xtask::upstream::control_plane()
                .map(|b| vec![b.etcd, b.kube_apiserver, b.kube_controller_manager, b.kube_scheduler]),
        );
    }
    if wants("metrics-server") {
        report("metrics-server", shardmetrics_xtask::upstream::metrics_server().map(|p| vec![p]));
    }
    for w in &what {
        if !matches!(w.as_str(), "all" | "kubectl" | "helm" | "control-plane" | "metrics-server") {
            eprintln!("unknown tool {w:?}: use kubectl, helm, control-plane, metrics-server or all");
            failed = true;
        }
    }
    if failed { ExitCode::FAILURE } else { ExitCode::SUCCESS }
}
