//! Command line: flags → validation (every problem at once, exit 64) → clients, listeners,
//! tracing → [`crate::run`]. The thin `main.rs` and the loadtest's self-exec both call
//! [`run_process`] (the runtime `--worker-threads` asks for, then [`main_with`]).
//!
//! Every flag can also be set with `SHARDMETRICS_<FLAG_IN_UPPER_SNAKE>`; names and meanings
//! follow metrics-server where they overlap.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{ArgAction, Parser};
use secrecy::ExposeSecret;
use tokio::net::TcpListener;

use shardmetrics_plumbing::duration::{GoDuration, format as format_duration};
use shardmetrics_plumbing::selector::{LabelSelector, is_dns_subdomain};

use crate::config::Config;
use crate::kubelet::{KubeletAuth, KubeletClient, KubeletClientConfig, KubeletTls, TokenSource};
use crate::nodes::{AddressType, TargetRules};
use crate::schedule::ScheduleConfig;
use crate::stream::GrpcTls;
use crate::{Handles, Listeners, tls};

/// Exit code for invalid flags (EX_USAGE).
pub use shardmetrics_plumbing::process::EXIT_USAGE;
/// Shortest allowed `--metric-resolution`.
pub const MIN_RESOLUTION: Duration = Duration::from_secs(5);
/// How often a kubelet token file is checked for rotation.
pub const TOKEN_RECHECK: Duration = Duration::from_secs(60);

pub use shardmetrics_plumbing::process::LogFormat;

/// Largest `--stream-linger`: beyond it the added latency would eat the frontends' budget.
pub const MAX_STREAM_LINGER: Duration = Duration::from_secs(1);

/// Largest `--worker-threads`.
pub const MAX_WORKER_THREADS: usize = 256;

/// Flags of `shardmetrics-scraper`, grouped in `--help` under the headings of
/// [`HELP_HEADINGS`].
#[derive(Debug, Clone, Parser)]
#[command(name = "shardmetrics-scraper", version, about = "A shardmetrics scraper shard: scrapes its consistent-hash share of the kubelets and streams raw samples to frontends.")]
pub struct Args {
    /// Kubeconfig file [default: in-cluster config, else $KUBECONFIG or ~/.kube/config].
    #[arg(long, help_heading = "Kubernetes API", env = "SHARDMETRICS_KUBECONFIG")]
    pub kubeconfig: Option<PathBuf>,

    /// This shard's id: its Lease name and holderIdentity [default: $POD_NAME, else the hostname].
    #[arg(long, help_heading = "Membership", env = "SHARDMETRICS_SHARD_ID")]
    pub shard_id: Option<String>,
    /// Namespace of the shard Leases [default: $POD_NAMESPACE, else kube-system].
    #[arg(long, help_heading = "Membership", env = "SHARDMETRICS_LEASE_NAMESPACE")]
    pub lease_namespace: Option<String>,
    /// Peers presume this shard dead this long after its last Lease renewal.
    #[arg(long, help_heading = "Membership", env = "SHARDMETRICS_LEASE_DURATION", default_value = "15s")]
    pub lease_duration: GoDuration,
    /// Interval between Lease renewals; must be below --lease-duration.
    #[arg(long, help_heading = "Membership", env = "SHARDMETRICS_LEASE_RENEW_PERIOD", default_value = "5s")]
    pub lease_renew_period: GoDuration,

    /// Only scrape nodes matching this label selector (e.g. node-role.kubernetes.io/worker).
    #[arg(long, help_heading = "Scheduling", env = "SHARDMETRICS_NODE_SELECTOR")]
    pub node_selector: Option<String>,
    /// Interval between two scrapes of a node (at least 5s).
    #[arg(long, help_heading = "Scheduling", env = "SHARDMETRICS_METRIC_RESOLUTION", default_value = "15s")]
    pub metric_resolution: GoDuration,
    /// Scrapes queued or running at once.
    #[arg(long, help_heading = "Scheduling", env = "SHARDMETRICS_MAX_CONCURRENT_SCRAPES", default_value_t = 256)]
    pub max_concurrent_scrapes: usize,
    /// Threads running the shard's async work (scrapes, streams, watches). 1 runs it all on one
    /// thread: a scrape's wake-ups then never cross threads, which costs least CPU per scrape;
    /// more spread the work over that many threads (a shard owning many nodes at a short
    /// resolution, or large bodies).
    #[arg(long, help_heading = "Scheduling", env = "SHARDMETRICS_WORKER_THREADS", default_value_t = 1)]
    pub worker_threads: usize,

    /// Use the kubelet port from the Node's status.daemonEndpoints when it is set.
    #[arg(long, help_heading = "Kubelet client", env = "SHARDMETRICS_KUBELET_USE_NODE_STATUS_PORT", default_value_t = true, num_args = 0..=1, default_missing_value = "true", action = ArgAction::Set)]
    pub kubelet_use_node_status_port: bool,
    /// Kubelet port when the Node's status does not give one (or it is not used).
    #[arg(long, help_heading = "Kubelet client", env = "SHARDMETRICS_KUBELET_PORT", default_value_t = 10250)]
    pub kubelet_port: u16,
    /// Node address types to try, in order.
    #[arg(long, help_heading = "Kubelet client", env = "SHARDMETRICS_KUBELET_PREFERRED_ADDRESS_TYPES", default_value = "InternalIP,ExternalIP,Hostname")]
    pub kubelet_preferred_address_types: String,
    /// Do not verify kubelet serving certificates (test clusters only).
    #[arg(long, help_heading = "Kubelet client", env = "SHARDMETRICS_KUBELET_INSECURE_TLS", default_value_t = false, num_args = 0..=1, default_missing_value = "true", action = ArgAction::Set)]
    pub kubelet_insecure_tls: bool,
    /// CA bundle (PEM) that signs kubelet serving certificates [default: the cluster CA of the kube config].
    #[arg(long, help_heading = "Kubelet client", env = "SHARDMETRICS_KUBELET_CERTIFICATE_AUTHORITY")]
    pub kubelet_certificate_authority: Option<PathBuf>,
    /// Client certificate (PEM) for kubelets, instead of the bearer token.
    #[arg(long, help_heading = "Kubelet client", env = "SHARDMETRICS_KUBELET_CLIENT_CERTIFICATE")]
    pub kubelet_client_certificate: Option<PathBuf>,
    /// Private key (PEM) of --kubelet-client-certificate.
    #[arg(long, help_heading = "Kubelet client", env = "SHARDMETRICS_KUBELET_CLIENT_KEY")]
    pub kubelet_client_key: Option<PathBuf>,
    /// Deadline of one scrape (connect, request and body); must be below --metric-resolution.
    #[arg(long, help_heading = "Kubelet client", env = "SHARDMETRICS_KUBELET_REQUEST_TIMEOUT", default_value = "10s")]
    pub kubelet_request_timeout: GoDuration,
    /// Largest accepted /metrics/resource body, in bytes.
    #[arg(long, help_heading = "Kubelet client", env = "SHARDMETRICS_KUBELET_MAX_RESPONSE_BYTES", default_value_t = 16 << 20)]
    pub kubelet_max_response_bytes: usize,

    /// Address of the SampleStream gRPC server.
    #[arg(long, help_heading = "gRPC stream", env = "SHARDMETRICS_GRPC_BIND_ADDRESS", default_value = "0.0.0.0:10350")]
    pub grpc_bind_address: String,
    /// host:port frontends dial, written into the Lease [default: $POD_IP:<bound port>, else the bound address].
    #[arg(long, help_heading = "gRPC stream", env = "SHARDMETRICS_GRPC_ADVERTISE_ADDRESS")]
    pub grpc_advertise_address: Option<String>,
    /// Serving certificate (PEM) of the gRPC server; plaintext h2 without it.
    #[arg(long, help_heading = "gRPC stream", env = "SHARDMETRICS_GRPC_TLS_CERT_FILE")]
    pub grpc_tls_cert_file: Option<PathBuf>,
    /// Private key (PEM) of --grpc-tls-cert-file.
    #[arg(long, help_heading = "gRPC stream", env = "SHARDMETRICS_GRPC_TLS_PRIVATE_KEY_FILE")]
    pub grpc_tls_private_key_file: Option<PathBuf>,
    /// Require frontend client certificates signed by this CA (PEM) on the gRPC server (mTLS).
    #[arg(long, help_heading = "gRPC stream", env = "SHARDMETRICS_GRPC_CLIENT_CA_FILE")]
    pub grpc_client_ca_file: Option<PathBuf>,
    /// Per-subscriber queue, in batches; a subscriber whose queue is full is disconnected.
    #[arg(long, help_heading = "gRPC stream", env = "SHARDMETRICS_SUBSCRIBER_QUEUE_BATCHES", default_value_t = 1024)]
    pub subscriber_queue_batches: usize,
    /// Largest stream message sent to frontends, in bytes; a node's scrape whose batch is larger
    /// is not streamed (logged, counted in shardmetrics_scraper_batches_oversized_total). Keep it
    /// at most the frontends' --grpc-max-message-bytes.
    #[arg(long, help_heading = "gRPC stream", env = "SHARDMETRICS_GRPC_MAX_MESSAGE_BYTES", default_value_t = crate::stream::DEFAULT_MAX_MESSAGE_BYTES)]
    pub grpc_max_message_bytes: usize,
    /// A live batch after a quiet spell is held this long, and the batches published meanwhile
    /// go out with it to each frontend, together, in one write (0s: every batch on its own, at
    /// once). Fewer writes and wake-ups per scrape on both ends, for at most this much added
    /// scrape-to-servable latency. Scrapes start in groups (a node due within 100 ms of the
    /// first starts with it), whose answers come back within a few milliseconds of each other:
    /// at 5ms a group's batches usually go to each frontend in one write (docs/benchmarks.md).
    #[arg(long, help_heading = "gRPC stream", env = "SHARDMETRICS_STREAM_LINGER", default_value = "5ms")]
    pub stream_linger: GoDuration,

    /// Address of the plain-HTTP /livez /readyz /metrics server.
    #[arg(long, help_heading = "Admin", env = "SHARDMETRICS_ADMIN_BIND_ADDRESS", default_value = "0.0.0.0:10351")]
    pub admin_bind_address: String,

    /// Log format.
    #[arg(long, help_heading = "Logging", env = "SHARDMETRICS_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,
    /// Log filter, in tracing EnvFilter syntax (e.g. info,shardmetrics_scraper=debug).
    #[arg(long, help_heading = "Logging", env = "SHARDMETRICS_LOG_LEVEL", default_value = "info")]
    pub log_level: String,
}

/// The `--help` headings, in the order they appear.
pub const HELP_HEADINGS: [&str; 7] = ["Kubernetes API", "Membership", "Scheduling", "Kubelet client", "gRPC stream", "Admin", "Logging"];

/// What the process environment contributes to defaults (injected for tests).
#[derive(Debug, Clone, Default)]
pub struct Environment {
    /// `$POD_NAME`.
    pub pod_name: Option<String>,
    /// `$POD_NAMESPACE`.
    pub pod_namespace: Option<String>,
    /// `$POD_IP`.
    pub pod_ip: Option<String>,
    /// The machine's hostname.
    pub hostname: Option<String>,
}

impl Environment {
    /// Reads the real environment.
    pub fn from_process() -> Environment {
        let var = |k: &str| std::env::var(k).ok().map(|v| v.trim().to_owned()).filter(|v| !v.is_empty());
        let hostname = var("HOSTNAME").or_else(|| {
            std::fs::read_to_string("/proc/sys/kernel/hostname").ok().map(|h| h.trim().to_owned()).filter(|h| !h.is_empty())
        });
        Environment { pod_name: var("POD_NAME"), pod_namespace: var("POD_NAMESPACE"), pod_ip: var("POD_IP"), hostname }
    }
}

/// Flags checked against each other, with their files loaded: the shard's [`Config`], and what
/// [`prepare`] still needs to build its handles (the kube config supplies the kubelet token and
/// default CA) and listeners.
#[derive(Debug)]
pub struct Validated {
    /// The shard's configuration. Its `grpc_advertise_address` is derived from
    /// `--grpc-bind-address` here, and again by [`prepare`] from the port actually bound (port 0).
    pub config: Config,
    /// Where to listen.
    pub bind: BindAddresses,
    /// The kubelet client, but for what the kube config supplies.
    pub kubelet: KubeletFlags,
    /// `--kubeconfig`, if given.
    pub kubeconfig: Option<PathBuf>,
}

/// The listeners' addresses (`--grpc-bind-address`, `--admin-bind-address`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BindAddresses {
    /// The `SampleStream` gRPC server.
    pub grpc: SocketAddr,
    /// `--grpc-advertise-address` as given; without it the address is derived from the bound port.
    pub grpc_advertise: Option<String>,
    /// The admin server (`/livez`, `/readyz`, `/metrics`).
    pub admin: SocketAddr,
}

/// The `--kubelet-*` client flags; `None`s are filled from the kube config by [`prepare`].
#[derive(Debug)]
pub struct KubeletFlags {
    /// Certificate verification, unless it must come from the kube config's CA.
    pub tls: Option<KubeletTls>,
    /// The client certificate, if given; else the kube config's credentials.
    pub client_cert: Option<KubeletAuth>,
    /// Deadline of one scrape.
    pub timeout: Duration,
    /// Largest accepted body, in bytes.
    pub max_response_bytes: usize,
}

fn read_file(path: &PathBuf, flag: &str, errors: &mut Vec<String>) -> Option<Vec<u8>> {
    std::fs::read(path).map_err(|e| errors.push(format!("--{flag}: cannot read {}: {e}", path.display()))).ok()
}

/// Checks every flag and every combination; returns all problems at once.
pub fn validate(args: &Args, env: &Environment) -> Result<Validated, Vec<String>> {
    let mut errors = Vec::new();
    // Durations are parsed by clap (GoDuration); what is left is how they relate.
    let (lease_duration, lease_renew_period) = (args.lease_duration.0, args.lease_renew_period.0);
    let (resolution, timeout) = (args.metric_resolution.0, args.kubelet_request_timeout.0);
    if lease_duration < Duration::from_secs(1) {
        errors.push(format!("--lease-duration={} is below 1s (Leases count whole seconds)", format_duration(lease_duration)));
    }
    if lease_renew_period.is_zero() {
        errors.push("--lease-renew-period must be above 0".into());
    } else if lease_renew_period >= lease_duration {
        errors.push(format!(
            "--lease-renew-period={} must be below --lease-duration={}",
            format_duration(lease_renew_period),
            format_duration(lease_duration)
        ));
    }
    if resolution < MIN_RESOLUTION {
        errors.push(format!("--metric-resolution={} is below the minimum of 5s", format_duration(resolution)));
    }
    if timeout.is_zero() {
        errors.push("--kubelet-request-timeout must be above 0".into());
    } else if timeout >= resolution {
        errors.push(format!("--kubelet-request-timeout={} must be below --metric-resolution={}", format_duration(timeout), format_duration(resolution)));
    }

    let shard_id = args.shard_id.clone().or_else(|| env.pod_name.clone()).or_else(|| env.hostname.clone());
    match &shard_id {
        None => errors.push("--shard-id is required when neither $POD_NAME nor the hostname is available".into()),
        Some(id) if !is_dns_subdomain(id) => {
            errors.push(format!("--shard-id={id:?} must be a DNS subdomain (lowercase letters, digits, '-', '.'): it names the Lease"))
        }
        _ => {}
    }
    let lease_namespace = args.lease_namespace.clone().or_else(|| env.pod_namespace.clone()).unwrap_or_else(|| "kube-system".into());
    // A namespace name is a DNS-1123 label: a subdomain of one part, at most 63 characters.
    if !is_dns_subdomain(&lease_namespace) || lease_namespace.contains('.') || lease_namespace.len() > 63 {
        errors.push(format!("--lease-namespace={lease_namespace:?} is not a valid namespace name"));
    }

    let mut addr = |flag: &str, value: &str| match value.parse::<SocketAddr>() {
        Ok(a) => Some(a),
        Err(_) => {
            errors.push(format!("--{flag}={value:?} is not an IP:port address"));
            None
        }
    };
    let grpc_bind = addr("grpc-bind-address", &args.grpc_bind_address);
    let admin_bind = addr("admin-bind-address", &args.admin_bind_address);
    if let Some(a) = &args.grpc_advertise_address {
        let ok = a.rsplit_once(':').is_some_and(|(h, p)| !h.is_empty() && p.parse::<u16>().is_ok_and(|p| p != 0));
        if !ok {
            errors.push(format!("--grpc-advertise-address={a:?} must be host:port"));
        }
    }

    let grpc_tls = match (&args.grpc_tls_cert_file, &args.grpc_tls_private_key_file) {
        (Some(c), Some(k)) => {
            let cert = c.clone();
            let key = k.clone();
            if let Err(e) = tls::load_certs(&cert) {
                errors.push(format!("--grpc-tls-cert-file: {e}"));
            }
            if let Err(e) = tls::load_key(&key) {
                errors.push(format!("--grpc-tls-private-key-file: {e}"));
            }
            let client_ca = args.grpc_client_ca_file.as_ref().and_then(|p| {
                if let Err(e) = tls::load_certs(p) {
                    errors.push(format!("--grpc-client-ca-file: {e}"));
                }
                read_file(p, "grpc-client-ca-file", &mut errors)
            });
            match (read_file(&cert, "grpc-tls-cert-file", &mut errors), read_file(&key, "grpc-tls-private-key-file", &mut errors)) {
                (Some(cert_pem), Some(key_pem)) => Some(GrpcTls { cert_pem, key_pem, client_ca_pem: client_ca }),
                _ => None,
            }
        }
        (None, None) => {
            if args.grpc_client_ca_file.is_some() {
                errors.push("--grpc-client-ca-file needs --grpc-tls-cert-file and --grpc-tls-private-key-file".into());
            }
            None
        }
        _ => {
            errors.push("--grpc-tls-cert-file and --grpc-tls-private-key-file must be given together".into());
            None
        }
    };

    let node_selector = args.node_selector.clone().filter(|s| !s.trim().is_empty());
    if let Some(s) = &node_selector
        && let Err(e) = LabelSelector::parse(s)
    {
        errors.push(format!("--node-selector: {e}"));
    }

    let mut preferred = Vec::new();
    for t in args.kubelet_preferred_address_types.split(',') {
        match t.parse::<AddressType>() {
            Ok(a) if !preferred.contains(&a) => preferred.push(a),
            Ok(a) => errors.push(format!("--kubelet-preferred-address-types: {a} is listed twice")),
            Err(e) => errors.push(format!("--kubelet-preferred-address-types: {e}")),
        }
    }
    if args.kubelet_port == 0 {
        errors.push("--kubelet-port must be between 1 and 65535".into());
    }

    let kubelet_tls = match (args.kubelet_insecure_tls, &args.kubelet_certificate_authority) {
        (true, Some(_)) => {
            errors.push("--kubelet-insecure-tls and --kubelet-certificate-authority are mutually exclusive".into());
            None
        }
        (true, None) => Some(KubeletTls::Insecure),
        (false, Some(p)) => match tls::load_certs(p) {
            Ok(cas) => Some(KubeletTls::Verify(cas)),
            Err(e) => {
                errors.push(format!("--kubelet-certificate-authority: {e}"));
                None
            }
        },
        (false, None) => None,
    };
    let kubelet_client_cert = match (&args.kubelet_client_certificate, &args.kubelet_client_key) {
        (Some(c), Some(k)) => match (tls::load_certs(c), tls::load_key(k)) {
            (Ok(chain), Ok(key)) => Some(KubeletAuth::ClientCert { chain, key }),
            (c, k) => {
                if let Err(e) = c {
                    errors.push(format!("--kubelet-client-certificate: {e}"));
                }
                if let Err(e) = k {
                    errors.push(format!("--kubelet-client-key: {e}"));
                }
                None
            }
        },
        (None, None) => None,
        _ => {
            errors.push("--kubelet-client-certificate and --kubelet-client-key must be given together".into());
            None
        }
    };
    if args.kubelet_max_response_bytes < 1024 {
        errors.push(format!("--kubelet-max-response-bytes={} is below 1024", args.kubelet_max_response_bytes));
    }
    if args.max_concurrent_scrapes == 0 {
        errors.push("--max-concurrent-scrapes must be at least 1".into());
    }
    if !(1..=MAX_WORKER_THREADS).contains(&args.worker_threads) {
        errors.push(format!("--worker-threads={} must be between 1 and {MAX_WORKER_THREADS}", args.worker_threads));
    }
    if args.subscriber_queue_batches == 0 {
        errors.push("--subscriber-queue-batches must be at least 1".into());
    }
    if args.stream_linger.0 > MAX_STREAM_LINGER {
        errors.push(format!("--stream-linger={} is above {}", format_duration(args.stream_linger.0), format_duration(MAX_STREAM_LINGER)));
    }
    if args.grpc_max_message_bytes < 1 << 20 {
        errors.push(format!("--grpc-max-message-bytes={} is below 1048576 (1 MiB)", args.grpc_max_message_bytes));
    }
    if let Err(e) = shardmetrics_plumbing::process::check_log_level(&args.log_level) {
        errors.push(format!("--log-level={:?}: {e}", args.log_level));
    }
    if let Some(p) = &args.kubeconfig
        && !p.is_file()
    {
        errors.push(format!("--kubeconfig: {} is not a readable file", p.display()));
    }

    if !errors.is_empty() {
        return Err(errors);
    }
    // Every Option below is Some when no error was recorded.
    let (Some(shard_id), Some(grpc), Some(admin)) = (shard_id, grpc_bind, admin_bind) else {
        return Err(vec!["internal: incomplete validation".into()]);
    };
    let grpc_advertise = args.grpc_advertise_address.clone();
    let config = Config {
        shard_id,
        lease_namespace,
        lease_duration,
        lease_renew_period,
        grpc_advertise_address: advertise_address(grpc_advertise.as_deref(), grpc, env),
        grpc_tls,
        node_selector,
        targets: TargetRules {
            preferred_address_types: preferred,
            use_node_status_port: args.kubelet_use_node_status_port,
            default_port: args.kubelet_port,
        },
        schedule: ScheduleConfig { resolution, max_concurrent: args.max_concurrent_scrapes, group_window: crate::schedule::DEFAULT_GROUP_WINDOW },
        subscriber_queue_batches: args.subscriber_queue_batches,
        grpc_max_message_bytes: args.grpc_max_message_bytes,
        stream_linger: args.stream_linger.0,
    };
    Ok(Validated {
        config,
        bind: BindAddresses { grpc, grpc_advertise, admin },
        kubelet: KubeletFlags { tls: kubelet_tls, client_cert: kubelet_client_cert, timeout, max_response_bytes: args.kubelet_max_response_bytes },
        kubeconfig: args.kubeconfig.clone(),
    })
}

/// The address written into the Lease: the flag, else `$POD_IP:<port>`, else the bound
/// address (the hostname when bound to an unspecified IP).
pub fn advertise_address(explicit: Option<&str>, bound: SocketAddr, env: &Environment) -> String {
    if let Some(a) = explicit {
        return a.to_owned();
    }
    let host = match (&env.pod_ip, bound.ip().is_unspecified(), &env.hostname) {
        (Some(ip), _, _) => ip.clone(),
        (None, false, _) => bound.ip().to_string(),
        (None, true, Some(h)) => h.clone(),
        (None, true, None) => "127.0.0.1".to_owned(),
    };
    if host.contains(':') && !host.starts_with('[') { format!("[{host}]:{}", bound.port()) } else { format!("{host}:{}", bound.port()) }
}

/// Startup failed after validation.
#[derive(Debug, thiserror::Error)]
pub enum StartupError {
    /// No usable kube config.
    #[error("kube config: {0}")]
    KubeConfig(String),
    /// The kube client could not be built.
    #[error("kube client: {0}")]
    KubeClient(#[from] kube::Error),
    /// No CA to verify kubelets with.
    #[error("no CA to verify kubelet certificates: the kube config has none; pass --kubelet-certificate-authority or --kubelet-insecure-tls")]
    NoKubeletCa,
    /// The kubelet token could not be read.
    #[error("kubelet bearer token: {0}")]
    Token(#[from] crate::kubelet::client::TokenError),
    /// The kubelet client could not be built.
    #[error(transparent)]
    KubeletClient(#[from] crate::kubelet::client::ClientError),
    /// A listener could not be bound.
    #[error("binding {flag} {addr}: {source}")]
    Bind {
        /// The flag.
        flag: &'static str,
        /// The address.
        addr: SocketAddr,
        /// The I/O error.
        source: std::io::Error,
    },
}

async fn load_kube_config(path: Option<&PathBuf>) -> Result<kube::Config, StartupError> {
    shardmetrics_plumbing::process::kube_config(path.map(PathBuf::as_path)).await.map_err(StartupError::KubeConfig)
}

/// The kubelet auth a kube config implies, as metrics-server inherits its REST config: the
/// token file (re-read on rotation), else the token, else the client certificate; none when
/// it has none of these.
pub fn kubelet_auth_from(config: &kube::Config) -> Result<KubeletAuth, StartupError> {
    let auth = &config.auth_info;
    if let Some(file) = &auth.token_file {
        return Ok(KubeletAuth::Token(TokenSource::file(PathBuf::from(file), TOKEN_RECHECK)?));
    }
    if let Some(token) = &auth.token {
        return Ok(KubeletAuth::Token(TokenSource::fixed(token.expose_secret())?));
    }
    let cert = pem_source(auth.client_certificate_data.as_deref(), auth.client_certificate.as_deref(), "client-certificate")?;
    let key_data = auth.client_key_data.as_ref().map(|k| k.expose_secret().to_owned());
    let key = pem_source(key_data.as_deref(), auth.client_key.as_deref(), "client-key")?;
    if let (Some(cert), Some(key)) = (cert, key) {
        use rustls_pki_types::pem::PemObject;
        let bad = |what: &str, e: rustls_pki_types::pem::Error| StartupError::KubeConfig(format!("{what} of the kube config: {e}"));
        let chain = rustls_pki_types::CertificateDer::pem_slice_iter(&cert)
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| bad("client-certificate", e))?;
        let key = rustls_pki_types::PrivateKeyDer::from_pem_slice(&key).map_err(|e| bad("client-key", e))?;
        return Ok(KubeletAuth::ClientCert { chain, key });
    }
    tracing::warn!("the kube config has no bearer token or client certificate and no --kubelet-client-certificate was given: kubelets are scraped without credentials");
    Ok(KubeletAuth::None)
}

/// PEM bytes from a kubeconfig `*-data` field (base64) or file path.
fn pem_source(data: Option<&str>, path: Option<&str>, what: &str) -> Result<Option<Vec<u8>>, StartupError> {
    use base64::Engine as _;
    if let Some(d) = data {
        let clean: String = d.chars().filter(|c| !c.is_whitespace()).collect();
        return base64::engine::general_purpose::STANDARD
            .decode(clean)
            .map(Some)
            .map_err(|e| StartupError::KubeConfig(format!("{what}-data of the kube config is not base64: {e}")));
    }
    match path {
        Some(p) => std::fs::read(p).map(Some).map_err(|e| StartupError::KubeConfig(format!("{what} {p}: {e}"))),
        None => Ok(None),
    }
}

/// Builds clients and listeners from validated flags.
pub async fn prepare(v: Validated, env: &Environment) -> Result<(Config, Handles<KubeletClient>, Listeners), StartupError> {
    let Validated { mut config, bind, kubelet, kubeconfig } = v;
    let kube_config = load_kube_config(kubeconfig.as_ref()).await?;
    let tls = match kubelet.tls {
        Some(t) => t,
        None => {
            let roots = kube_config.root_cert.clone().unwrap_or_default();
            if roots.is_empty() {
                return Err(StartupError::NoKubeletCa);
            }
            KubeletTls::Verify(roots.into_iter().map(rustls_pki_types::CertificateDer::from).collect())
        }
    };
    let auth = match kubelet.client_cert {
        Some(cert) => cert,
        None => kubelet_auth_from(&kube_config)?,
    };
    let kubelets = KubeletClient::new(KubeletClientConfig {
        tls,
        auth,
        timeout: kubelet.timeout,
        max_response_bytes: kubelet.max_response_bytes,
        pool_idle_timeout: (config.schedule.resolution * 3).max(Duration::from_secs(90)),
    })?;
    let kube = kube::Client::try_from(kube_config)?;
    let listen = |flag: &'static str, addr: SocketAddr| async move {
        TcpListener::bind(addr).await.map_err(|source| StartupError::Bind { flag, addr, source })
    };
    let grpc = listen("--grpc-bind-address", bind.grpc).await?;
    let admin = listen("--admin-bind-address", bind.admin).await?;
    let bound = grpc.local_addr().map_err(|source| StartupError::Bind { flag: "--grpc-bind-address", addr: bind.grpc, source })?;
    config.grpc_advertise_address = advertise_address(bind.grpc_advertise.as_deref(), bound, env);
    let handles = Handles { kube, clock: shardmetrics_plumbing::clock::system(), kubelets };
    Ok((config, handles, Listeners { grpc, admin }))
}

/// A whole scraper process once its flags are parsed: builds the runtime `--worker-threads`
/// asks for (one thread by default: a current-thread runtime) and runs [`main_with`] on it.
/// What `main.rs` and the loadtest's self-exec call.
pub fn run_process(args: Args) -> ExitCode {
    let threads = args.worker_threads.max(1);
    shardmetrics_plumbing::process::block_on("shardmetrics-scraper", Some(threads), main_with(args))
}

/// The whole program on the current runtime: validate (exit 64 listing every problem), set
/// up, run until SIGTERM.
pub async fn main_with(args: Args) -> ExitCode {
    let env = Environment::from_process();
    let validated = match validate(&args, &env) {
        Ok(v) => v,
        Err(errors) => {
            eprintln!("shardmetrics-scraper: invalid configuration:");
            for e in errors {
                eprintln!("  - {e}");
            }
            return ExitCode::from(EXIT_USAGE);
        }
    };
    shardmetrics_plumbing::process::init_tracing(args.log_format, &args.log_level);
    let (config, handles, listeners) = match prepare(validated, &env).await {
        Ok(p) => p,
        Err(e) => {
            tracing::error!(error = %e, "startup failed");
            eprintln!("shardmetrics-scraper: {e}");
            return ExitCode::FAILURE;
        }
    };
    match crate::run(config, handles, listeners, shardmetrics_plumbing::process::termination_signal()).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!(error = %e, "shard failed");
            ExitCode::FAILURE
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(extra: &[&str]) -> Args {
        let mut argv = vec!["shardmetrics-scraper"];
        argv.extend_from_slice(extra);
        Args::try_parse_from(argv).unwrap()
    }

    fn env() -> Environment {
        Environment { pod_name: Some("shardmetrics-scraper-0".into()), pod_namespace: Some("monitoring".into()), pod_ip: None, hostname: Some("host".into()) }
    }

    #[test]
    fn defaults_validate_and_follow_the_pod_environment() {
        let v = validate(&parse(&["--kubelet-insecure-tls"]), &env()).unwrap();
        assert_eq!(v.config.shard_id, "shardmetrics-scraper-0");
        assert_eq!(v.config.lease_namespace, "monitoring");
        assert_eq!(
            v.config.schedule,
            ScheduleConfig { resolution: Duration::from_secs(15), max_concurrent: 256, group_window: crate::schedule::DEFAULT_GROUP_WINDOW }
        );
        assert_eq!(v.kubelet.timeout, Duration::from_secs(10));
        assert_eq!(v.config.grpc_max_message_bytes, 64 << 20);
        assert_eq!(v.config.targets, TargetRules::default());
        assert_eq!(v.bind.grpc, "0.0.0.0:10350".parse().unwrap());
        assert_eq!(v.bind.admin, "0.0.0.0:10351".parse().unwrap());
        assert!(matches!(v.kubelet.tls, Some(KubeletTls::Insecure)));
        let v = validate(&parse(&[]), &Environment { hostname: Some("node-x".into()), ..Environment::default() }).unwrap();
        assert_eq!((v.config.shard_id.as_str(), v.config.lease_namespace.as_str()), ("node-x", "kube-system"));
    }

    #[test]
    fn boolean_flags_take_go_style_values() {
        assert!(!parse(&["--kubelet-use-node-status-port=false"]).kubelet_use_node_status_port);
        assert!(parse(&["--kubelet-use-node-status-port"]).kubelet_use_node_status_port);
        assert!(parse(&["--kubelet-insecure-tls=true"]).kubelet_insecure_tls);
        assert!(!parse(&[]).kubelet_insecure_tls);
    }

    #[test]
    fn every_problem_is_reported_at_once() {
        let args = parse(&[
            "--metric-resolution=4s",
            "--kubelet-request-timeout=10s",
            "--lease-duration=5s",
            "--lease-renew-period=5s",
            "--grpc-bind-address=nope",
            "--kubelet-preferred-address-types=InternalIP,Bogus",
            "--node-selector=a=b,",
            "--kubelet-insecure-tls",
            "--kubelet-certificate-authority=/nonexistent/ca.crt",
            "--kubelet-client-certificate=/x.crt",
            "--grpc-client-ca-file=/ca.crt",
            "--max-concurrent-scrapes=0",
            "--shard-id=Bad_Id",
            "--log-level=[[[",
            "--grpc-max-message-bytes=1000",
        ]);
        let errors = validate(&args, &env()).unwrap_err();
        let joined = errors.join("\n");
        for needle in [
            "--metric-resolution=4s is below the minimum of 5s",
            "--grpc-max-message-bytes=1000 is below 1048576",
            "--lease-renew-period=5s must be below --lease-duration=5s",
            "--grpc-bind-address=\"nope\"",
            "unknown node address type \"Bogus\"",
            "--node-selector",
            "mutually exclusive",
            "--kubelet-client-certificate and --kubelet-client-key must be given together",
            "--grpc-client-ca-file needs",
            "--max-concurrent-scrapes",
            "--shard-id=\"Bad_Id\"",
            "--log-level",
        ] {
            assert!(joined.contains(needle), "missing {needle:?} in:\n{joined}");
        }
        assert!(errors.len() >= 11, "{joined}");
    }

    #[test]
    fn the_request_timeout_must_be_below_the_resolution() {
        let errors = validate(&parse(&["--metric-resolution=10s", "--kubelet-request-timeout=10s"]), &env()).unwrap_err();
        assert_eq!(errors, vec!["--kubelet-request-timeout=10s must be below --metric-resolution=10s".to_owned()]);
    }

    #[test]
    fn unreadable_pem_files_are_reported_with_their_flag() {
        let dir = tempfile::tempdir().unwrap();
        let empty = dir.path().join("empty.pem");
        std::fs::write(&empty, "not pem").unwrap();
        let e = empty.to_str().unwrap();
        let errors = validate(&parse(&["--grpc-tls-cert-file", e, "--grpc-tls-private-key-file", e]), &env()).unwrap_err();
        assert!(errors.iter().any(|x| x.starts_with("--grpc-tls-cert-file:") && x.contains("no certificate")), "{errors:?}");
        assert!(errors.iter().any(|x| x.starts_with("--grpc-tls-private-key-file:")), "{errors:?}");
    }

    #[test]
    fn the_advertised_address_prefers_the_flag_then_the_pod_ip_then_the_bound_address() {
        let bound: SocketAddr = "0.0.0.0:10350".parse().unwrap();
        assert_eq!(advertise_address(Some("shard-0.svc:1"), bound, &env()), "shard-0.svc:1");
        let with_ip = Environment { pod_ip: Some("10.1.2.3".into()), ..env() };
        assert_eq!(advertise_address(None, bound, &with_ip), "10.1.2.3:10350");
        let v6 = Environment { pod_ip: Some("fd00::5".into()), ..env() };
        assert_eq!(advertise_address(None, bound, &v6), "[fd00::5]:10350");
        assert_eq!(advertise_address(None, "127.0.0.1:4000".parse().unwrap(), &env()), "127.0.0.1:4000");
        assert_eq!(advertise_address(None, bound, &env()), "host:10350");
    }

    #[test]
    fn kubelet_credentials_come_from_the_kube_config_token_file_token_or_client_certificate() {
        use base64::Engine as _;
        let dir = tempfile::tempdir().unwrap();
        let mut config = kube::Config::new("https://127.0.0.1:6443".parse().unwrap());
        assert!(matches!(kubelet_auth_from(&config).unwrap(), KubeletAuth::None));

        let key = rcgen::KeyPair::generate().unwrap();
        let cert = rcgen::CertificateParams::new(vec!["x".to_owned()]).unwrap().self_signed(&key).unwrap();
        let b64 = |s: String| base64::engine::general_purpose::STANDARD.encode(s);
        config.auth_info.client_certificate_data = Some(b64(cert.pem()));
        config.auth_info.client_key_data = Some(b64(key.serialize_pem()).into());
        assert!(matches!(kubelet_auth_from(&config).unwrap(), KubeletAuth::ClientCert { ref chain, .. } if chain.len() == 1));

        config.auth_info.token = Some("t0ken".to_owned().into());
        assert!(matches!(kubelet_auth_from(&config).unwrap(), KubeletAuth::Token(_)));

        let file = dir.path().join("token");
        std::fs::write(&file, "from-file").unwrap();
        config.auth_info.token_file = Some(file.to_str().unwrap().to_owned());
        let KubeletAuth::Token(t) = kubelet_auth_from(&config).unwrap() else { panic!("token expected") };
        assert!(format!("{t:?}").contains("File"), "the rotating file wins: {t:?}");
    }

    #[test]
    fn every_flag_has_its_shardmetrics_env_var() {
        use clap::CommandFactory;
        for arg in Args::command().get_arguments() {
            let Some(long) = arg.get_long() else { continue };
            if matches!(long, "help" | "version") {
                continue;
            }
            let want = format!("SHARDMETRICS_{}", long.to_uppercase().replace('-', "_"));
            assert_eq!(arg.get_env().and_then(|e| e.to_str()), Some(want.as_str()), "--{long}");
        }
    }

    #[test]
    fn help_groups_every_flag_under_its_heading_in_order() {
        use clap::CommandFactory;
        let mut cmd = Args::command();
        let mut seen: Vec<&str> = Vec::new();
        for arg in cmd.get_arguments() {
            let Some(long) = arg.get_long() else { continue };
            if matches!(long, "help" | "version") {
                continue;
            }
            let heading = arg.get_help_heading().unwrap_or_else(|| panic!("--{long} has no help heading"));
            assert!(HELP_HEADINGS.contains(&heading), "--{long}: unknown heading {heading:?}");
            if seen.last() != Some(&heading) {
                assert!(!seen.contains(&heading), "--{long}: heading {heading:?} split in two");
                seen.push(heading);
            }
        }
        assert_eq!(seen, HELP_HEADINGS, "every heading used, in order");
        let help = cmd.render_long_help().to_string();
        let at = |needle: &str| help.find(needle).unwrap_or_else(|| panic!("{needle:?} not in --help:\n{help}"));
        for (heading, flag) in [
            ("Kubernetes API:", "--kubeconfig"),
            ("Membership:", "--lease-renew-period"),
            ("Scheduling:", "--metric-resolution"),
            ("Kubelet client:", "--kubelet-request-timeout"),
            ("gRPC stream:", "--grpc-max-message-bytes"),
            ("Admin:", "--admin-bind-address"),
            ("Logging:", "--log-level"),
        ] {
            assert!(at(heading) < at(flag), "{flag} listed under {heading}");
        }
        assert!(at("Membership:") < at("Scheduling:") && at("Admin:") < at("Logging:"));
    }

    #[test]
    fn one_worker_thread_by_default_and_zero_is_refused() {
        assert_eq!(parse(&[]).worker_threads, 1);
        let problems = |extra: &[&str]| validate(&parse(extra), &env()).err().unwrap_or_default();
        assert_eq!(problems(&["--worker-threads=4"]), Vec::<String>::new());
        assert_eq!(problems(&["--worker-threads=0"]), vec![format!("--worker-threads=0 must be between 1 and {MAX_WORKER_THREADS}")]);
    }

    #[test]
    fn the_shard_id_must_be_a_dns_subdomain_and_the_lease_namespace_a_dns_label() {
        let problems = |extra: &[&str]| validate(&parse(extra), &env()).err().unwrap_or_default();
        assert_eq!(problems(&["--shard-id=shard-0.eu", "--lease-namespace=kube-system"]), Vec::<String>::new());
        for bad in ["Shard_0", "-shard", "shard..0"] {
            let p = problems(&[&format!("--shard-id={bad}")]);
            assert!(p.len() == 1 && p[0].starts_with(&format!("--shard-id={bad:?} must be a DNS subdomain")), "{bad}: {p:?}");
        }
        let ns63 = "n".repeat(63);
        assert_eq!(problems(&["--lease-namespace", &ns63]), Vec::<String>::new());
        for bad in ["n".repeat(64), "a.b".to_owned(), "Kube".to_owned()] {
            assert_eq!(problems(&["--lease-namespace", &bad]), vec![format!("--lease-namespace={bad:?} is not a valid namespace name")]);
        }
    }
}
