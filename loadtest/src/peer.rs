//! The peer: metrics-server v0.8.0, built from the pinned upstream module
//! (`loadtest/upstream/metrics-server/`), run beside shardmetrics against the same kubelets so
//! that the two can be compared answer for answer and measured in one run.
//!
//! It runs as upstream's manifests run it, with its real flags: its own serving certificate,
//! delegated authentication and authorization against the API server (`--authentication-
//! kubeconfig`, `--authorization-kubeconfig`: the `extension-apiserver-authentication`
//! ConfigMap, TokenReview, SubjectAccessReview), the kubelets' CA (or `--kubelet-insecure-tls`),
//! `--kubelet-use-node-status-port` (each simulated kubelet listens on its own port) and
//! `--metric-resolution`. It binds 127.0.0.1 only. Its RBAC is upstream's own
//! `manifests/base/rbac.yaml`, read from Go's module cache and applied with kubectl.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use tokio::process::{Child, Command};

/// The namespace and ServiceAccount of upstream's manifests.
pub const NAMESPACE: &str = "kube-system";
/// The ServiceAccount upstream's RBAC binds.
pub const SERVICE_ACCOUNT: &str = "metrics-server";

/// What can stop metrics-server from running.
#[derive(Debug, thiserror::Error)]
pub enum PeerError {
    /// The program could not be built.
    #[error("building metrics-server: {0}")]
    Build(#[from] shardmetrics_xtask::tools::ToolError),
    /// A file or process operation failed.
    #[error("{what}: {source}")]
    Io {
        /// What was being done.
        what: String,
        /// The I/O error.
        source: std::io::Error,
    },
    /// kubectl refused upstream's RBAC.
    #[error("applying metrics-server's RBAC: {0}")]
    Rbac(String),
    /// It exited or never became ready.
    #[error("metrics-server {what}; log {log}, ending:\n{tail}")]
    NotReady {
        /// What happened.
        what: String,
        /// Its log.
        log: PathBuf,
        /// The last lines of its log.
        tail: String,
    },
}

fn io_err(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> PeerError {
    let what = what.into();
    move |source| PeerError::Io { what, source }
}

/// How to run one metrics-server replica.
#[derive(Debug, Clone)]
pub struct PeerConfig {
    /// The replica's name (log file, report rows): `metrics-server-0`, ...
    pub name: String,
    /// Where its log goes.
    pub dir: PathBuf,
    /// A kubeconfig with its ServiceAccount token: the API server, the kubelets (the token is
    /// also its kubelet credential), and delegated authentication and authorization.
    pub kubeconfig: PathBuf,
    /// `--tls-cert-file` / `--tls-private-key-file`.
    pub serving_cert: (PathBuf, PathBuf),
    /// `--kubelet-certificate-authority`; `None` runs it with `--kubelet-insecure-tls`.
    pub kubelet_ca: Option<PathBuf>,
    /// `--metric-resolution` (upstream requires at least 10 s).
    pub metric_resolution: Duration,
    /// `--kubelet-request-timeout` (upstream requires it under 90 % of the resolution).
    pub kubelet_request_timeout: Duration,
}

/// One running metrics-server. Dropping it kills the process.
#[derive(Debug)]
pub struct MetricsServer {
    name: String,
    child: Child,
    addr: SocketAddr,
    log: PathBuf,
}

impl MetricsServer {
    /// Starts the replica (building metrics-server on first use) on a free loopback port.
    pub async fn start(config: &PeerConfig) -> Result<MetricsServer, PeerError> {
        let binary = tokio::task::spawn_blocking(shardmetrics_xtask::upstream::metrics_server)
            .await
            .map_err(|e| PeerError::Io { what: "building metrics-server".into(), source: std::io::Error::other(e.to_string()) })??;
        let port = shardmetrics_plumbing::port::free_port().map_err(io_err("finding a free port"))?;
        let log = config.dir.join(format!("{}.log", config.name));
        let out = std::fs::File::create(&log).map_err(io_err(format!("creating {}", log.display())))?;
        let err = out.try_clone().map_err(io_err("duplicating the log handle"))?;
        let mut cmd = Command::new(binary);
        cmd.arg(format!("--secure-port={port}"))
            .arg("--bind-address=127.0.0.1")
            .arg(flag("--tls-cert-file", &config.serving_cert.0))
            .arg(flag("--tls-private-key-file", &config.serving_cert.1))
            .arg(flag("--kubeconfig", &config.kubeconfig))
            .arg(flag("--authentication-kubeconfig", &config.kubeconfig))
            .arg(flag("--authorization-kubeconfig", &config.kubeconfig))
            .arg("--kubelet-use-node-status-port")
            .arg("--kubelet-preferred-address-types=InternalIP")
            .arg(format!("--metric-resolution={}s", config.metric_resolution.as_secs()))
            .arg(format!("--kubelet-request-timeout={}ms", config.kubelet_request_timeout.as_millis()))
            .stdin(Stdio::null())
            .stdout(Stdio::from(out))
            .stderr(Stdio::from(err))
            .kill_on_drop(true);
        match &config.kubelet_ca {
            Some(ca) => cmd.arg(flag("--kubelet-certificate-authority", ca)),
            None => cmd.arg("--kubelet-insecure-tls"),
        };
        let child = cmd.spawn().map_err(io_err("starting metrics-server"))?;
        Ok(MetricsServer { name: config.name.clone(), child, addr: SocketAddr::from(([127, 0, 0, 1], port)), log })
    }

    /// Its name (`metrics-server-0`, ...).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// How it exited, if it did.
    pub fn exited(&mut self) -> Option<std::process::ExitStatus> {
        self.child.try_wait().ok().flatten()
    }

    /// Its secure port.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Its process id (for CPU and memory accounting); `None` once it exited.
    pub fn pid(&self) -> Option<u32> {
        self.child.id()
    }

    /// Its log file.
    pub fn log(&self) -> &Path {
        &self.log
    }

    /// Waits until `/readyz` answers 200 (it is always allowed, as upstream configures it), or
    /// fails when the process exits or `timeout` passes.
    pub async fn wait_ready(&mut self, timeout: Duration) -> Result<(), PeerError> {
        let client = insecure_client().map_err(io_err("a TLS client"))?;
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                return Err(PeerError::NotReady { what: format!("exited ({status})"), log: self.log.clone(), tail: log_tail(&self.log, LOG_TAIL_LINES) });
            }
            let last = match get(&client, self.addr, "/readyz").await {
                Ok(200) => return Ok(()),
                Ok(code) => format!("/readyz answered {code}"),
                Err(e) => e,
            };
            if tokio::time::Instant::now() >= deadline {
                return Err(PeerError::NotReady {
                    what: format!("not ready within {timeout:?} ({last})"),
                    log: self.log.clone(),
                    tail: log_tail(&self.log, LOG_TAIL_LINES),
                });
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }

    /// SIGKILLs it (a crash) and reaps it.
    pub async fn kill(&mut self) {
        let _ = self.child.start_kill();
        let _ = self.child.wait().await;
    }
}

/// Lines of a replica's log quoted in errors.
pub const LOG_TAIL_LINES: usize = 20;

/// The last `lines` lines of the file at `path` (a note instead when it cannot be read).
pub fn log_tail(path: &Path, lines: usize) -> String {
    match std::fs::read(path) {
        Ok(bytes) => {
            let text = String::from_utf8_lossy(&bytes);
            let all: Vec<&str> = text.lines().collect();
            all[all.len().saturating_sub(lines)..].join("\n")
        }
        Err(e) => format!("(log unreadable: {e})"),
    }
}

fn flag(name: &str, path: &Path) -> String {
    format!("{name}={}", path.display())
}

type Client = hyper_util::client::legacy::Client<hyper_rustls::HttpsConnector<hyper_util::client::legacy::connect::HttpConnector>, http_body_util::Empty<bytes::Bytes>>;

fn insecure_client() -> std::io::Result<Client> {
    let tls = shardmetrics_plumbing::pki::client_config(None, None).map_err(std::io::Error::other)?;
    let connector = hyper_rustls::HttpsConnectorBuilder::new().with_tls_config(tls).https_only().enable_http1().build();
    Ok(hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new()).build(connector))
}

async fn get(client: &Client, addr: SocketAddr, path: &str) -> Result<u16, String> {
    let req = http::Request::get(format!("https://{addr}{path}")).body(http_body_util::Empty::new()).map_err(|e| e.to_string())?;
    let resp = tokio::time::timeout(Duration::from_secs(5), client.request(req)).await.map_err(|_| "timed out".to_owned())?.map_err(|e| e.to_string())?;
    Ok(resp.status().as_u16())
}

/// Applies upstream's `manifests/base/rbac.yaml` (its ServiceAccount, `system:metrics-server`,
/// the auth-delegator and authentication-reader bindings) in [`NAMESPACE`] with kubectl.
pub async fn apply_rbac(admin_kubeconfig: &Path) -> Result<(), PeerError> {
    let (kubectl, source) = tokio::task::spawn_blocking(|| -> Result<_, shardmetrics_xtask::tools::ToolError> {
        Ok((shardmetrics_xtask::tools::kubectl()?, shardmetrics_xtask::upstream::metrics_server_source()?))
    })
    .await
    .map_err(|e| PeerError::Rbac(e.to_string()))??;
    let out = Command::new(kubectl)
        .arg("--kubeconfig")
        .arg(admin_kubeconfig)
        .args(["apply", "--server-side", "--force-conflicts", "--field-manager=shardmetrics-peer", "-n", NAMESPACE, "-f"])
        .arg(source.join("manifests/base/rbac.yaml"))
        .output()
        .await
        .map_err(io_err("running kubectl"))?;
    if !out.status.success() {
        return Err(PeerError::Rbac(String::from_utf8_lossy(&out.stderr).into_owned()));
    }
    Ok(())
}
