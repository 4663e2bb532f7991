//! What every shardmetrics binary does the same way around its `run`: log set-up, the
//! termination signal, and the Kubernetes client from `--kubeconfig` or the pod's service
//! account.

use std::ffi::OsString;
use std::path::Path;
use std::process::ExitCode;

/// Exit code for invalid flags (`EX_USAGE`), as metrics-server's flag errors are reported.
pub const EXIT_USAGE: u8 = 64;

/// Prefix of the environment variables every shardmetrics flag reads (`SHARDMETRICS_<FLAG>`).
pub const ENV_PREFIX: &str = "SHARDMETRICS_";

/// Names of this process's `SHARDMETRICS_*` variables: what a harness removes from a child's
/// environment so that the child gets its settings from the flags it is given, not from
/// whatever the harness itself was started with.
pub fn shardmetrics_env_vars() -> Vec<OsString> {
    std::env::vars_os().map(|(k, _)| k).filter(|k| k.to_string_lossy().starts_with(ENV_PREFIX)).collect()
}

/// An async runtime: `Some(1)` a current-thread one (every wake-up stays on one thread: the
/// least CPU per event), `Some(n)` a multi-threaded one with `n` workers, `None` a
/// multi-threaded one with one worker per core (as `#[tokio::main]`).
pub fn runtime(worker_threads: Option<usize>) -> std::io::Result<tokio::runtime::Runtime> {
    match worker_threads {
        Some(n) if n <= 1 => tokio::runtime::Builder::new_current_thread().enable_all().build(),
        Some(n) => tokio::runtime::Builder::new_multi_thread().worker_threads(n).enable_all().build(),
        None => tokio::runtime::Builder::new_multi_thread().enable_all().build(),
    }
}

/// Runs `program`'s `main` future on a [`runtime`] of `worker_threads`; a runtime that cannot
/// start is reported on stderr, naming `program`, and exits with failure.
pub fn block_on(program: &str, worker_threads: Option<usize>, main: impl std::future::Future<Output = ExitCode>) -> ExitCode {
    match runtime(worker_threads) {
        Ok(rt) => rt.block_on(main),
        Err(e) => {
            eprintln!("{program}: cannot start the async runtime: {e}");
            ExitCode::FAILURE
        }
    }
}

/// Parses a command line into `T`. `--help` and `--version` print and give exit code 0; a flag
/// clap refuses (unknown, or a value of the wrong type such as a bad duration) prints clap's
/// message and gives [`EXIT_USAGE`], like every other invalid setting.
pub fn parse_args<T: clap::Parser>(argv: impl IntoIterator<Item = impl Into<OsString> + Clone>) -> Result<T, ExitCode> {
    T::try_parse_from(argv).map_err(|e| {
        let _ = e.print();
        if e.use_stderr() { ExitCode::from(EXIT_USAGE) } else { ExitCode::SUCCESS }
    })
}

/// How log lines are written to stderr (`--log-format`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines.
    #[default]
    Text,
    /// One JSON object per line, fields flattened (for log pipelines).
    Json,
}

/// Whether `level` is a valid `tracing` filter (`info`, `warn,shardmetrics_scraper=debug`);
/// the error text says why not. Flag validation calls it so a typo fails at start-up.
pub fn check_log_level(level: &str) -> Result<(), String> {
    tracing_subscriber::EnvFilter::try_new(level).map(drop).map_err(|e| e.to_string())
}

/// Installs the process's tracing subscriber: `format` lines on stderr, filtered by `level`
/// (`info` where it does not parse). Does nothing if one is installed already (tests, or the
/// loadtest running several components in one process keep the first).
pub fn init_tracing(format: LogFormat, level: &str) {
    let filter = tracing_subscriber::EnvFilter::try_new(level).unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr);
    let _ = match format {
        LogFormat::Text => builder.try_init(),
        LogFormat::Json => builder.json().flatten_event(true).try_init(),
    };
}

/// Resolves on SIGTERM (what the kubelet sends to stop a pod) or SIGINT / Ctrl-C. Where the
/// SIGTERM handler cannot be installed, Ctrl-C alone.
pub async fn termination_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        match (signal(SignalKind::terminate()), signal(SignalKind::interrupt())) {
            (Ok(mut term), Ok(mut int)) => {
                tokio::select! {
                    _ = term.recv() => {}
                    _ = int.recv() => {}
                }
            }
            _ => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}

/// The Kubernetes client configuration from the kubeconfig at `path` (its current context), or,
/// without a path, inferred (`$KUBECONFIG`, `~/.kube/config`, then the in-cluster service
/// account). The error text names the file.
pub async fn kube_config(path: Option<&Path>) -> Result<kube::Config, String> {
    match path {
        Some(path) => {
            let kubeconfig =
                kube::config::Kubeconfig::read_from(path).map_err(|e| format!("kubeconfig {}: {e}", path.display()))?;
            kube::Config::from_custom_kubeconfig(kubeconfig, &kube::config::KubeConfigOptions::default())
                .await
                .map_err(|e| format!("kubeconfig {}: {e}", path.display()))
        }
        None => kube::Config::infer().await.map_err(|e| format!("no usable kubeconfig or in-cluster config: {e}")),
    }
}

/// A Kubernetes client from [`kube_config`].
pub async fn kube_client(path: Option<&Path>) -> Result<kube::Client, String> {
    let config = kube_config(path).await?;
    kube::Client::try_from(config).map_err(|e| format!("API client: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, clap::Parser)]
    struct Flags {
        #[arg(long, default_value = "15s")]
        resolution: crate::duration::GoDuration,
    }

    #[test]
    fn a_bad_flag_value_is_a_usage_error_and_a_good_one_parses() {
        let flags: Flags = parse_args(["x", "--resolution", "1m"]).unwrap();
        assert_eq!(*flags.resolution, std::time::Duration::from_secs(60));
        assert_eq!(parse_args::<Flags>(["x", "--resolution", "soon"]).unwrap_err(), ExitCode::from(EXIT_USAGE));
        assert_eq!(parse_args::<Flags>(["x", "--help"]).unwrap_err(), ExitCode::SUCCESS);
    }

    #[test]
    fn log_levels_are_checked_as_tracing_filters() {
        assert!(check_log_level("info").is_ok());
        assert!(check_log_level("warn,shardmetrics_scraper=debug").is_ok());
        assert!(check_log_level("info,[{").is_err());
    }

    #[tokio::test]
    async fn a_missing_kubeconfig_is_an_error_naming_the_file() {
        let Err(err) = kube_client(Some(Path::new("/nonexistent/kubeconfig"))).await else {
            panic!("a kubeconfig that does not exist gave a client");
        };
        assert!(err.contains("/nonexistent/kubeconfig"), "{err}");
    }
}
