//! Command-line flags (metrics-server's names where the meaning is the same; each also read
//! from `SHARDMETRICS_<FLAG>`), typed by their clap value parsers, the checks of flags against
//! each other and the file system (every problem reported at once, exit code 64) that build the
//! [`Config`], and [`main_with`], the entry point shared by the binary and the load test's child
//! processes.

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::process::ExitCode;
use std::str::FromStr;
use std::time::Duration;

use clap::Parser;

use crate::auth::AuthArgs;
use crate::server::{MIN_HEADER_BYTES, ServerLimits};
use crate::store::StoreConfig;
use crate::upstream::{GrpcClientTls, UpstreamConfig};
use crate::{Config, Handles, Listeners, ShardSource};
use shardmetrics_plumbing::duration::GoDuration;
use shardmetrics_plumbing::process::LogFormat;

/// Exit code for invalid flags (EX_USAGE).
pub use shardmetrics_plumbing::process::EXIT_USAGE;
/// Lease duration of shards assumed by the default `--max-staleness`, in seconds.
pub const SHARD_LEASE_SECONDS: u64 = 15;

/// `--help` heading of the flags naming this replica and where its cluster is.
const HEADING_CLUSTER: &str = "Cluster";
/// `--help` heading of the listening ports.
const HEADING_PORTS: &str = "Ports";
/// `--help` heading of the flags about the shards' streams.
const HEADING_SHARDS: &str = "Shards";
/// `--help` heading of the request and connection limits.
const HEADING_LIMITS: &str = "Limits";
/// `--help` heading of logging.
const HEADING_LOGGING: &str = "Logging";

/// A port's `IP:PORT`, or nothing (the empty string): a port that is not served.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OptionalAddress(pub Option<SocketAddr>);

impl FromStr for OptionalAddress {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        match s.trim() {
            "" => Ok(Self(None)),
            a => a.parse().map(|a| Self(Some(a))).map_err(|_| "expected IP:PORT (or empty to disable)".to_owned()),
        }
    }
}

/// Flags of the frontend replica.
#[derive(Debug, Clone, Parser)]
#[command(name = "shardmetrics-frontend", version, about = "Serves metrics.k8s.io/v1beta1 from the streams of every scraper shard.")]
pub struct Args {
    /// Name of this replica (sent to shards as the subscriber name). Default: $POD_NAME, else the hostname.
    #[arg(long, env = "SHARDMETRICS_REPLICA_NAME", help_heading = HEADING_CLUSTER)]
    pub replica_name: Option<String>,
    /// kubeconfig of the API server (Leases, Pods, Nodes, TokenReview, SubjectAccessReview, ConfigMap).
    /// Default: in-cluster config, else $KUBECONFIG / ~/.kube/config.
    #[arg(long, env = "SHARDMETRICS_KUBECONFIG", value_name = "PATH", help_heading = HEADING_CLUSTER)]
    pub kubeconfig: Option<PathBuf>,
    /// Namespace of the shard Leases. Default: $POD_NAMESPACE, else kube-system.
    #[arg(long, env = "SHARDMETRICS_LEASE_NAMESPACE", help_heading = HEADING_CLUSTER)]
    pub lease_namespace: Option<String>,
    /// IP address the secure port listens on.
    #[arg(long, env = "SHARDMETRICS_BIND_ADDRESS", default_value = "0.0.0.0", help_heading = HEADING_PORTS)]
    pub bind_address: IpAddr,
    /// The HTTPS port of the API.
    #[arg(long, env = "SHARDMETRICS_SECURE_PORT", default_value_t = 10250, help_heading = HEADING_PORTS)]
    pub secure_port: u16,
    /// Plain-HTTP address of /livez, /readyz, /healthz and /metrics; empty disables it.
    #[arg(long, env = "SHARDMETRICS_ADMIN_BIND_ADDRESS", default_value = "0.0.0.0:10351", value_name = "IP:PORT", help_heading = HEADING_PORTS)]
    pub admin_bind_address: OptionalAddress,
    /// Scrape interval of the shards (Go duration); used for the fresh-container rate and the
    /// default --max-staleness.
    #[arg(long, env = "SHARDMETRICS_METRIC_RESOLUTION", default_value = "15s", help_heading = HEADING_SHARDS)]
    pub metric_resolution: GoDuration,
    /// How long a node's last good data is served without a new scrape. Default: 2 x
    /// --metric-resolution + the shard lease duration (15s).
    #[arg(long, env = "SHARDMETRICS_MAX_STALENESS", help_heading = HEADING_SHARDS)]
    pub max_staleness: Option<GoDuration>,
    /// CA bundle of the shards' gRPC serving certificates; plaintext HTTP/2 to shards when unset.
    #[arg(long, env = "SHARDMETRICS_GRPC_TLS_CA_FILE", value_name = "PATH", help_heading = HEADING_SHARDS)]
    pub grpc_tls_ca_file: Option<PathBuf>,
    /// Client certificate for mTLS to shards (needs --grpc-tls-ca-file).
    #[arg(long, env = "SHARDMETRICS_GRPC_TLS_CERT_FILE", value_name = "PATH", help_heading = HEADING_SHARDS)]
    pub grpc_tls_cert_file: Option<PathBuf>,
    /// Private key of --grpc-tls-cert-file.
    #[arg(long, env = "SHARDMETRICS_GRPC_TLS_PRIVATE_KEY_FILE", value_name = "PATH", help_heading = HEADING_SHARDS)]
    pub grpc_tls_private_key_file: Option<PathBuf>,
    /// Largest gRPC message accepted from a shard, in bytes; a larger batch ends that
    /// subscription (counted in shardmetrics_frontend_upstream_decode_errors_total).
    #[arg(long, env = "SHARDMETRICS_GRPC_MAX_MESSAGE_BYTES", default_value_t = crate::upstream::MAX_MESSAGE_BYTES, help_heading = HEADING_SHARDS)]
    pub grpc_max_message_bytes: usize,
    /// Requests served at once on the secure port; beyond it: 429 with Retry-After.
    #[arg(long, env = "SHARDMETRICS_MAX_REQUESTS_INFLIGHT", default_value_t = 400, help_heading = HEADING_LIMITS)]
    pub max_requests_inflight: usize,
    /// Largest request body accepted, in bytes (the API serves only GETs); larger: 413.
    #[arg(long, env = "SHARDMETRICS_MAX_REQUEST_BODY_BYTES", default_value_t = 1 << 20, help_heading = HEADING_LIMITS)]
    pub max_request_body_bytes: u64,
    /// Largest request head (request line and headers), in bytes; larger: 431 (at least 8192).
    #[arg(long, env = "SHARDMETRICS_MAX_REQUEST_HEADER_BYTES", default_value_t = 128 << 10, help_heading = HEADING_LIMITS)]
    pub max_request_header_bytes: usize,
    /// Time a client has to send a request's headers (and a body of unknown length) before the
    /// connection is closed (Go duration).
    #[arg(long, env = "SHARDMETRICS_REQUEST_HEADER_TIMEOUT", default_value = "10s", help_heading = HEADING_LIMITS)]
    pub request_header_timeout: GoDuration,
    /// A connection with no request in progress for this long is closed (Go duration).
    #[arg(long, env = "SHARDMETRICS_IDLE_CONNECTION_TIMEOUT", default_value = "90s", help_heading = HEADING_LIMITS)]
    pub idle_connection_timeout: GoDuration,
    /// Time a new connection has to complete its TLS handshake (Go duration).
    #[arg(long, env = "SHARDMETRICS_TLS_HANDSHAKE_TIMEOUT", default_value = "10s", help_heading = HEADING_LIMITS)]
    pub tls_handshake_timeout: GoDuration,
    /// Log format.
    #[arg(long, env = "SHARDMETRICS_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text, help_heading = HEADING_LOGGING)]
    pub log_format: LogFormat,
    /// Log filter (tracing EnvFilter syntax, e.g. info or shardmetrics_frontend=debug).
    #[arg(long, env = "SHARDMETRICS_LOG_LEVEL", default_value = "info", help_heading = HEADING_LOGGING)]
    pub log_level: String,
    /// Authentication, authorization and TLS of the secure port.
    #[command(flatten)]
    pub auth: AuthArgs,
}

fn env_or(var: &str, fallback: impl FnOnce() -> String) -> String {
    std::env::var(var).ok().filter(|v| !v.is_empty()).unwrap_or_else(fallback)
}

fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .map(|h| h.trim().to_owned())
        .filter(|h| !h.is_empty())
        .or_else(|| std::env::var("HOSTNAME").ok())
        .unwrap_or_else(|| "shardmetrics-frontend".to_owned())
}

fn read_file(flag: &str, path: &Option<PathBuf>, problems: &mut Vec<String>) -> Option<Vec<u8>> {
    let path = path.as_ref()?;
    match std::fs::read(path) {
        Ok(b) => Some(b),
        Err(e) => {
            problems.push(format!("{flag} {}: {e}", path.display()));
            None
        }
    }
}

impl Args {
    /// Where the secure port listens: `--bind-address` and `--secure-port`.
    pub fn secure_address(&self) -> SocketAddr {
        SocketAddr::new(self.bind_address, self.secure_port)
    }

    /// `--lease-namespace`, else $POD_NAMESPACE, else `kube-system`.
    pub fn resolved_lease_namespace(&self) -> String {
        self.lease_namespace.clone().unwrap_or_else(|| env_or("POD_NAMESPACE", || "kube-system".to_owned()))
    }

    /// Checks the flags against each other and the file system and builds the [`Config`]; on
    /// failure returns every problem, one per line.
    pub fn config(&self) -> Result<Config, Vec<String>> {
        let mut problems = Vec::new();
        let resolution = match *self.metric_resolution {
            d if d >= Duration::from_secs(1) => d,
            d => {
                problems.push(format!("--metric-resolution {d:?}: must be at least 1s"));
                Duration::from_secs(15)
            }
        };
        let default_staleness = resolution * 2 + Duration::from_secs(SHARD_LEASE_SECONDS);
        let max_staleness = match self.max_staleness.map(|d| d.0) {
            None => default_staleness,
            Some(d) if d >= resolution => d,
            Some(d) => {
                problems.push(format!("--max-staleness {d:?}: must be at least --metric-resolution ({resolution:?})"));
                default_staleness
            }
        };
        if self.max_requests_inflight == 0 {
            problems.push("--max-requests-inflight: must be at least 1".to_owned());
        }
        let limits = self.limits(&mut problems);
        if self.grpc_max_message_bytes < 1 << 20 {
            problems.push(format!("--grpc-max-message-bytes {}: must be at least 1048576 (1 MiB)", self.grpc_max_message_bytes));
        }
        if let Err(e) = shardmetrics_plumbing::process::check_log_level(&self.log_level) {
            problems.push(format!("--log-level {:?}: {e}", self.log_level));
        }
        if self.grpc_tls_cert_file.is_some() != self.grpc_tls_private_key_file.is_some() {
            problems.push("--grpc-tls-cert-file and --grpc-tls-private-key-file must be given together".to_owned());
        }
        if self.grpc_tls_cert_file.is_some() && self.grpc_tls_ca_file.is_none() {
            problems.push("--grpc-tls-cert-file needs --grpc-tls-ca-file (mTLS is only used over TLS)".to_owned());
        }
        let ca = read_file("--grpc-tls-ca-file", &self.grpc_tls_ca_file, &mut problems);
        let cert = read_file("--grpc-tls-cert-file", &self.grpc_tls_cert_file, &mut problems);
        let key = read_file("--grpc-tls-private-key-file", &self.grpc_tls_private_key_file, &mut problems);
        if let Some(path) = &self.kubeconfig
            && !path.is_file()
        {
            problems.push(format!("--kubeconfig {}: not a readable file", path.display()));
        }
        let (auth, tls) = match self.auth.to_configs() {
            Ok(c) => c,
            Err(mut p) => {
                problems.append(&mut p);
                Default::default()
            }
        };
        if !problems.is_empty() {
            return Err(problems);
        }
        let replica_name = self.replica_name.clone().unwrap_or_else(|| env_or("POD_NAME", hostname));
        let grpc_tls = ca.map(|ca_pem| GrpcClientTls { ca_pem, identity: cert.zip(key) });
        Ok(Config {
            store: StoreConfig { resolution_ms: resolution.as_millis() as i64, max_staleness_ms: max_staleness.as_millis() as i64 },
            upstream: UpstreamConfig {
                replica_name,
                tls: grpc_tls,
                max_message_bytes: self.grpc_max_message_bytes,
                ..UpstreamConfig::default()
            },
            shards: ShardSource::Leases { namespace: self.resolved_lease_namespace() },
            auth,
            tls,
            max_requests_inflight: self.max_requests_inflight,
            limits,
            shutdown_grace: Duration::from_secs(20),
            sweep_interval: resolution,
        })
    }

    /// The request and connection limits; problems are appended to `problems`.
    fn limits(&self, problems: &mut Vec<String>) -> ServerLimits {
        let defaults = ServerLimits::default();
        let mut duration = |flag: &str, d: GoDuration, fallback: Duration| {
            if d.is_zero() {
                problems.push(format!("--{flag}: must be above 0"));
                fallback
            } else {
                d.0
            }
        };
        let request_header_timeout = duration("request-header-timeout", self.request_header_timeout, defaults.request_header_timeout);
        let idle_connection_timeout = duration("idle-connection-timeout", self.idle_connection_timeout, defaults.idle_connection_timeout);
        let tls_handshake_timeout = duration("tls-handshake-timeout", self.tls_handshake_timeout, defaults.tls_handshake_timeout);
        if self.max_request_header_bytes < MIN_HEADER_BYTES {
            problems.push(format!("--max-request-header-bytes {}: must be at least {MIN_HEADER_BYTES}", self.max_request_header_bytes));
        }
        ServerLimits {
            max_request_body_bytes: self.max_request_body_bytes,
            max_request_header_bytes: self.max_request_header_bytes.max(MIN_HEADER_BYTES),
            request_header_timeout,
            idle_connection_timeout,
            tls_handshake_timeout,
        }
    }
}

/// Builds the API client from `--kubeconfig` or the environment (in-cluster, then
/// $KUBECONFIG / ~/.kube/config).
pub async fn kube_client(kubeconfig: Option<&PathBuf>) -> Result<kube::Client, String> {
    shardmetrics_plumbing::process::kube_client(kubeconfig.map(PathBuf::as_path)).await
}

/// Checks `args`, connects to the API server, binds the ports and runs until SIGTERM/Ctrl-C.
/// Exit codes: 0 after a clean shutdown, 64 for invalid flags, 1 for start-up failures.
pub async fn main_with(args: Args) -> ExitCode {
    let config = match args.config() {
        Ok(c) => c,
        Err(problems) => {
            eprintln!("invalid flags:");
            for p in problems {
                eprintln!("  {p}");
            }
            return ExitCode::from(EXIT_USAGE);
        }
    };
    shardmetrics_plumbing::process::init_tracing(args.log_format, &args.log_level);
    let kube = match kube_client(args.kubeconfig.as_ref()).await {
        Ok(c) => c,
        Err(e) => {
            tracing::error!(error = %e, "cannot reach the API server");
            return ExitCode::FAILURE;
        }
    };
    let secure_address = args.secure_address();
    let secure = match tokio::net::TcpListener::bind(secure_address).await {
        Ok(l) => l,
        Err(e) => {
            tracing::error!(address = %secure_address, error = %e, "cannot bind the secure port");
            return ExitCode::FAILURE;
        }
    };
    let admin = match args.admin_bind_address.0 {
        Some(a) => match tokio::net::TcpListener::bind(a).await {
            Ok(l) => Some(l),
            Err(e) => {
                tracing::error!(address = %a, error = %e, "cannot bind the admin port");
                return ExitCode::FAILURE;
            }
        },
        None => None,
    };
    tracing::info!(
        secure = %secure.local_addr().map(|a| a.to_string()).unwrap_or_default(),
        admin = ?admin.as_ref().and_then(|a| a.local_addr().ok()),
        lease_namespace = %args.resolved_lease_namespace(),
        "starting frontend"
    );
    let handles = Handles { kube: Some(kube), clock: shardmetrics_plumbing::clock::system() };
    match crate::run(config, handles, Listeners { secure, admin }, shardmetrics_plumbing::process::termination_signal()).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!(error = %e, "frontend failed");
            ExitCode::FAILURE
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Args {
        Args::try_parse_from(std::iter::once("shardmetrics-frontend").chain(args.iter().copied())).expect("parse")
    }

    fn valid(args: &[&str]) -> Config {
        match parse(args).config() {
            Ok(c) => c,
            Err(problems) => panic!("unexpected problems: {problems:?}"),
        }
    }

    #[test]
    fn defaults_give_metrics_server_ports_and_a_staleness_of_two_resolutions_plus_a_lease() {
        let args = parse(&[]);
        assert_eq!(args.secure_address(), "0.0.0.0:10250".parse().expect("addr"));
        assert_eq!(args.admin_bind_address.0, Some("0.0.0.0:10351".parse().expect("addr")));
        let c = valid(&[]);
        assert_eq!(c.store, StoreConfig { resolution_ms: 15_000, max_staleness_ms: 45_000 });
        assert_eq!(c.max_requests_inflight, 400);
        assert_eq!(c.limits, ServerLimits::default());
        assert_eq!(c.upstream.max_message_bytes, 64 << 20);
        assert!(!c.auth.anonymous);
        assert!(c.upstream.tls.is_none());
    }

    #[test]
    fn every_bad_flag_is_reported_at_once() {
        let problems = parse(&[
            "--metric-resolution=500ms",
            "--max-staleness=1s",
            "--max-requests-inflight=0",
            "--grpc-tls-cert-file=/nonexistent/c.pem",
            "--tls-cipher-suites=TLS_RSA_WITH_RC4_128_SHA",
            "--max-request-header-bytes=100",
            "--request-header-timeout=0",
            "--grpc-max-message-bytes=1000",
        ])
        .config()
        .err()
        .expect("invalid");
        let text = problems.join("\n");
        for needle in [
            "--metric-resolution",
            "--max-staleness",
            "--max-requests-inflight",
            "--grpc-tls-cert-file and --grpc-tls-private-key-file",
            "needs --grpc-tls-ca-file",
            "/nonexistent/c.pem",
            "--tls-cipher-suites",
            "--max-request-header-bytes 100",
            "--request-header-timeout",
            "--grpc-max-message-bytes 1000",
        ] {
            assert!(text.contains(needle), "missing {needle:?} in:\n{text}");
        }
    }

    #[test]
    fn a_value_of_the_wrong_type_is_refused_while_parsing_naming_its_flag() {
        for (flag, value) in [
            ("--metric-resolution", "fast"),
            ("--max-staleness", "later"),
            ("--idle-connection-timeout", "soon"),
            ("--tls-handshake-timeout", "-1s"),
            ("--authorization-webhook-cache-authorized-ttl", "1x"),
            ("--log-format", "xml"),
            ("--bind-address", "nowhere"),
            ("--admin-bind-address", "10351"),
            ("--tls-min-version", "VersionTLS10"),
        ] {
            let arg = format!("{flag}={value}");
            let err = Args::try_parse_from(["shardmetrics-frontend", arg.as_str()]).expect_err(&arg).to_string();
            assert!(err.contains(flag) && err.contains(value), "{arg}: {err}");
        }
    }

    #[test]
    fn flags_are_read_from_shardmetrics_environment_variables() {
        let cmd = <Args as clap::CommandFactory>::command();
        for arg in cmd.get_arguments() {
            let id = arg.get_id().as_str();
            if matches!(id, "help" | "version") {
                continue;
            }
            let env = arg.get_env().map(|e| e.to_string_lossy().into_owned());
            let want = format!("SHARDMETRICS_{}", id.to_uppercase());
            assert_eq!(env.as_deref(), Some(want.as_str()), "flag {id}");
        }
    }

    #[test]
    fn an_empty_admin_address_disables_the_admin_port_and_staleness_can_be_set() {
        let flags = ["--admin-bind-address=", "--metric-resolution=10s", "--max-staleness=1m"];
        assert_eq!(parse(&flags).admin_bind_address, OptionalAddress(None));
        let c = valid(&flags);
        assert_eq!(c.store.max_staleness_ms, 60_000);
        assert_eq!(c.store.resolution_ms, 10_000);
    }

    #[test]
    fn every_flag_sits_under_a_help_heading() {
        let cmd = <Args as clap::CommandFactory>::command();
        for arg in cmd.get_arguments() {
            let id = arg.get_id().as_str();
            if matches!(id, "help" | "version") {
                continue;
            }
            assert!(arg.get_help_heading().is_some(), "--{id} has no heading in --help");
        }
        let help = cmd.clone().render_help().to_string();
        for heading in [HEADING_CLUSTER, HEADING_PORTS, HEADING_SHARDS, HEADING_LIMITS, HEADING_LOGGING] {
            assert!(help.contains(&format!("{heading}:")), "{heading} missing from:\n{help}");
        }
    }

    #[test]
    fn limits_are_set_from_flags() {
        let v = valid(&[
            "--max-request-body-bytes=10",
            "--max-request-header-bytes=16384",
            "--request-header-timeout=2s",
            "--idle-connection-timeout=1m",
            "--tls-handshake-timeout=500ms",
            "--grpc-max-message-bytes=2097152",
        ]);
        assert_eq!(
            v.limits,
            ServerLimits {
                max_request_body_bytes: 10,
                max_request_header_bytes: 16384,
                request_header_timeout: Duration::from_secs(2),
                idle_connection_timeout: Duration::from_secs(60),
                tls_handshake_timeout: Duration::from_millis(500),
            }
        );
        assert_eq!(v.upstream.max_message_bytes, 2 << 20);
    }
}
