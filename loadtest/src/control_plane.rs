//! The real Kubernetes control plane on loopback: etcd, kube-apiserver, kube-controller-manager
//! and kube-scheduler, built from the pinned upstream sources (`shardmetrics_xtask::upstream`)
//! and run as child processes.
//!
//! kube-apiserver is configured as a production cluster's is, only on 127.0.0.1:
//! - client certificates (the cluster CA), RBAC and the Node authorizer, the default admission
//!   plugins plus NodeRestriction;
//! - a service-account token issuer (an ECDSA key; tokens are requested with TokenRequest);
//! - the aggregation layer: a front-proxy CA (`--requestheader-client-ca-file`), the proxy
//!   client certificate it presents to aggregated servers (CN [`FRONT_PROXY_CLIENT`], the one
//!   allowed name), the `X-Remote-*` headers; it publishes all of it in
//!   `kube-system/extension-apiserver-authentication` itself;
//! - `--endpoint-reconciler-type=none`: the `kubernetes` Service's Endpoints would name
//!   127.0.0.1, which Endpoints validation refuses.
//!
//! kube-controller-manager runs every default controller (deployment, replicaset,
//! horizontal-pod-autoscaling, garbage-collector, namespace, serviceaccount and token,
//! node-lifecycle, ...) with per-controller service-account credentials; node-lifecycle is on
//! because the node agent keeps every node's Lease heartbeat. kube-scheduler binds pods to the
//! simulated nodes.
//!
//! Everything lives in one work directory: certificates, etcd's data, each component's log.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use shardmetrics_plumbing::pki::{self, Ca, CertKey};
use shardmetrics_sim::apiserver::kubeconfig::{self, Context, Credential};
use shardmetrics_xtask::upstream::ControlPlaneBinaries;
use tokio::process::{Child, Command};

/// Common name of the proxy client certificate kube-apiserver presents to aggregated API
/// servers (`--requestheader-allowed-names`).
pub const FRONT_PROXY_CLIENT: &str = "front-proxy-client";
/// The cluster's service IP range.
pub const SERVICE_CLUSTER_IP_RANGE: &str = "10.96.0.0/16";
/// The service-account token issuer.
pub const SERVICE_ACCOUNT_ISSUER: &str = "https://kubernetes.default.svc.cluster.local";

/// What can go wrong starting the control plane.
#[derive(Debug, thiserror::Error)]
pub enum ControlPlaneError {
    /// Certificates could not be made.
    #[error(transparent)]
    Pki(#[from] pki::PkiError),
    /// A file or process operation failed.
    #[error("{what}: {source}")]
    Io {
        /// What was being done.
        what: String,
        /// The I/O error.
        source: std::io::Error,
    },
    /// A component exited while starting.
    #[error("{name} exited during start-up ({status}); the end of its log ({log}):\n{tail}")]
    Exited {
        /// Which component.
        name: String,
        /// How it exited.
        status: std::process::ExitStatus,
        /// Its log file.
        log: String,
        /// The last lines of its log.
        tail: String,
    },
    /// A component did not become healthy in time.
    #[error("{name} was not healthy within {timeout:?} (last: {last}); its log: {log}")]
    NotReady {
        /// Which component.
        name: String,
        /// How long we waited.
        timeout: Duration,
        /// What the last probe saw.
        last: String,
        /// Its log file.
        log: String,
    },
    /// A kube-rs client could not be built.
    #[error("API client: {0}")]
    Client(String),
}

fn io(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> ControlPlaneError {
    let what = what.into();
    move |source| ControlPlaneError::Io { what, source }
}

/// How to run the control plane.
#[derive(Debug, Clone)]
pub struct ControlPlaneConfig {
    /// The upstream programs.
    pub binaries: ControlPlaneBinaries,
    /// Work directory (certificates, etcd data, logs); created if missing.
    pub dir: PathBuf,
    /// `--horizontal-pod-autoscaler-sync-period` of kube-controller-manager (upstream: 15 s).
    pub hpa_sync_period: Duration,
    /// `--horizontal-pod-autoscaler-downscale-stabilization` (upstream: 5 min).
    pub hpa_downscale_stabilization: Duration,
    /// How long to wait for each component to become healthy.
    pub ready_timeout: Duration,
}

impl ControlPlaneConfig {
    /// Upstream's HPA timings, a 60 s start-up budget per component.
    pub fn new(binaries: ControlPlaneBinaries, dir: PathBuf) -> ControlPlaneConfig {
        ControlPlaneConfig {
            binaries,
            dir,
            hpa_sync_period: Duration::from_secs(15),
            hpa_downscale_stabilization: Duration::from_secs(300),
            ready_timeout: Duration::from_secs(60),
        }
    }
}

/// One running component.
struct Component {
    name: &'static str,
    child: Child,
    log: PathBuf,
}

/// A running control plane. Dropping it kills the components.
pub struct ControlPlane {
    components: Vec<Component>,
    url: String,
    ca: Ca,
    admin: CertKey,
    dir: PathBuf,
}

impl std::fmt::Debug for ControlPlane {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ControlPlane").field("url", &self.url).finish_non_exhaustive()
    }
}

/// A loopback port for a child to bind ([`shardmetrics_plumbing::port::free_port`]).
fn free_port() -> Result<u16, ControlPlaneError> {
    shardmetrics_plumbing::port::free_port().map_err(io("finding a free port"))
}

fn write(path: &Path, contents: &str) -> Result<PathBuf, ControlPlaneError> {
    std::fs::write(path, contents).map_err(io(format!("writing {}", path.display())))?;
    Ok(path.to_owned())
}

fn seconds(d: Duration) -> String {
    format!("{}s", d.as_secs().max(1))
}

impl ControlPlane {
    /// Starts etcd, kube-apiserver (waiting for `/readyz`), kube-controller-manager and
    /// kube-scheduler (waiting for their `/healthz`).
    pub async fn start(config: ControlPlaneConfig) -> Result<ControlPlane, ControlPlaneError> {
        let dir = config.dir.clone();
        let pki_dir = dir.join("pki");
        std::fs::create_dir_all(&pki_dir).map_err(io(format!("creating {}", pki_dir.display())))?;

        let ca = Ca::new("shardmetrics-demo-cluster-ca")?;
        let ca_file = ca.write_pem(&pki_dir, "ca")?;
        let serving = ca.server_cert(
            "kube-apiserver",
            &["kubernetes", "kubernetes.default", "kubernetes.default.svc", "kubernetes.default.svc.cluster.local", "10.96.0.1"],
        )?;
        let (serving_crt, serving_key) = serving.write_pem(&pki_dir, "apiserver")?;
        let front_proxy_ca = Ca::new("shardmetrics-demo-front-proxy-ca")?;
        let front_proxy_ca_file = front_proxy_ca.write_pem(&pki_dir, "front-proxy-ca")?;
        let (proxy_crt, proxy_key) = front_proxy_ca.client_cert(FRONT_PROXY_CLIENT, &[])?.write_pem(&pki_dir, "front-proxy-client")?;
        let (sa_private, sa_public) = pki::signing_key_pem()?;
        let sa_key = write(&pki_dir.join("sa.key"), &sa_private)?;
        let sa_pub = write(&pki_dir.join("sa.pub"), &sa_public)?;
        let admin = ca.client_cert("demo-admin", &["system:masters"])?;

        let etcd_client = free_port()?;
        let etcd_peer = free_port()?;
        let api_port = free_port()?;
        let url = format!("https://127.0.0.1:{api_port}");
        let mut plane = ControlPlane { components: Vec::new(), url: url.clone(), ca, admin, dir: dir.clone() };

        let etcd_data = dir.join("etcd");
        let etcd_url = format!("http://127.0.0.1:{etcd_client}");
        let peer_url = format!("http://127.0.0.1:{etcd_peer}");
        plane.spawn(
            "etcd",
            &config.binaries.etcd,
            &[
                "--name=default".into(),
                format!("--data-dir={}", etcd_data.display()),
                format!("--listen-client-urls={etcd_url}"),
                format!("--advertise-client-urls={etcd_url}"),
                format!("--listen-peer-urls={peer_url}"),
                format!("--initial-advertise-peer-urls={peer_url}"),
                format!("--initial-cluster=default={peer_url}"),
                // A throw-away cluster: no fsync, as kind and envtest run etcd for tests.
                "--unsafe-no-fsync".into(),
                "--log-level=warn".into(),
            ],
        )?;

        let p = |path: &Path| path.display().to_string();
        plane.spawn(
            "kube-apiserver",
            &config.binaries.kube_apiserver,
            &[
                format!("--etcd-servers={etcd_url}"),
                "--bind-address=127.0.0.1".into(),
                "--advertise-address=127.0.0.1".into(),
                format!("--secure-port={api_port}"),
                format!("--tls-cert-file={}", p(&serving_crt)),
                format!("--tls-private-key-file={}", p(&serving_key)),
                format!("--client-ca-file={}", p(&ca_file)),
                "--authorization-mode=Node,RBAC".into(),
                "--enable-admission-plugins=NodeRestriction".into(),
                format!("--service-account-issuer={SERVICE_ACCOUNT_ISSUER}"),
                format!("--service-account-key-file={}", p(&sa_pub)),
                format!("--service-account-signing-key-file={}", p(&sa_key)),
                format!("--service-cluster-ip-range={SERVICE_CLUSTER_IP_RANGE}"),
                format!("--requestheader-client-ca-file={}", p(&front_proxy_ca_file)),
                format!("--requestheader-allowed-names={FRONT_PROXY_CLIENT}"),
                "--requestheader-username-headers=X-Remote-User".into(),
                "--requestheader-group-headers=X-Remote-Group".into(),
                "--requestheader-extra-headers-prefix=X-Remote-Extra-".into(),
                format!("--proxy-client-cert-file={}", p(&proxy_crt)),
                format!("--proxy-client-key-file={}", p(&proxy_key)),
                "--endpoint-reconciler-type=none".into(),
                "--profiling=false".into(),
            ],
        )?;
        plane.wait_healthy("kube-apiserver", &url, "/readyz", config.ready_timeout).await?;

        let kcm_port = free_port()?;
        let kcm_kubeconfig = plane.component_kubeconfig("kube-controller-manager", "system:kube-controller-manager")?;
        let kcm = p(&kcm_kubeconfig);
        plane.spawn(
            "kube-controller-manager",
            &config.binaries.kube_controller_manager,
            &[
                format!("--kubeconfig={kcm}"),
                format!("--authentication-kubeconfig={kcm}"),
                format!("--authorization-kubeconfig={kcm}"),
                "--bind-address=127.0.0.1".into(),
                format!("--secure-port={kcm_port}"),
                "--leader-elect=false".into(),
                "--use-service-account-credentials=true".into(),
                format!("--service-account-private-key-file={}", p(&sa_key)),
                format!("--root-ca-file={}", p(&ca_file)),
                format!("--service-cluster-ip-range={SERVICE_CLUSTER_IP_RANGE}"),
                format!("--horizontal-pod-autoscaler-sync-period={}", seconds(config.hpa_sync_period)),
                format!("--horizontal-pod-autoscaler-downscale-stabilization={}", seconds(config.hpa_downscale_stabilization)),
                "--profiling=false".into(),
            ],
        )?;
        let scheduler_port = free_port()?;
        let scheduler_kubeconfig = plane.component_kubeconfig("kube-scheduler", "system:kube-scheduler")?;
        let sched = p(&scheduler_kubeconfig);
        plane.spawn(
            "kube-scheduler",
            &config.binaries.kube_scheduler,
            &[
                format!("--kubeconfig={sched}"),
                format!("--authentication-kubeconfig={sched}"),
                format!("--authorization-kubeconfig={sched}"),
                "--bind-address=127.0.0.1".into(),
                format!("--secure-port={scheduler_port}"),
                "--leader-elect=false".into(),
                "--profiling=false".into(),
            ],
        )?;
        plane
            .wait_healthy("kube-controller-manager", &format!("https://127.0.0.1:{kcm_port}"), "/healthz", config.ready_timeout)
            .await?;
        plane.wait_healthy("kube-scheduler", &format!("https://127.0.0.1:{scheduler_port}"), "/healthz", config.ready_timeout).await?;
        Ok(plane)
    }

    /// The API server's URL (`https://127.0.0.1:<port>`).
    pub fn url(&self) -> &str {
        &self.url
    }

    /// The cluster CA: it signs the API server's serving certificate and the client
    /// certificates [`Self::user_context`] makes.
    pub fn ca(&self) -> &Ca {
        &self.ca
    }

    /// The work directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// (component, pid) of every running component.
    pub fn pids(&self) -> Vec<(String, u32)> {
        self.components.iter().filter_map(|c| c.child.id().map(|pid| (c.name.to_owned(), pid))).collect()
    }

    /// Log file of a component.
    pub fn log_path(&self, component: &str) -> PathBuf {
        self.dir.join(format!("{component}.log"))
    }

    /// A kubeconfig context authenticating as the cluster admin (`system:masters`).
    pub fn admin_context(&self, name: &str) -> Context {
        Context { name: name.to_owned(), credential: Credential::ClientCert(self.admin.clone()), namespace: None }
    }

    /// A kubeconfig context with a client certificate for `user` (in `group`, if any): RBAC
    /// decides what it may do.
    pub fn user_context(&self, name: &str, user: &str, group: Option<&str>) -> Result<Context, ControlPlaneError> {
        let groups: Vec<&str> = group.into_iter().collect();
        Ok(Context { name: name.to_owned(), credential: Credential::ClientCert(self.ca.client_cert(user, &groups)?), namespace: None })
    }

    /// A kubeconfig context with a bearer token (a service account's, from TokenRequest).
    pub fn token_context(&self, name: &str, token: &str) -> Context {
        Context { name: name.to_owned(), credential: Credential::Token(token.to_owned()), namespace: None }
    }

    /// Writes a kubeconfig with `contexts` (the first is current) to `path`.
    pub fn write_kubeconfig(&self, path: &Path, contexts: &[Context]) -> Result<(), ControlPlaneError> {
        let current = contexts.first().map(|c| c.name.as_str()).unwrap_or("");
        let text = kubeconfig::render("shardmetrics-demo", &self.url, self.ca.cert_pem(), contexts, current);
        kubeconfig::write(path, &text).map_err(io(format!("writing {}", path.display())))
    }

    /// A kube-rs client for `context`.
    pub async fn client(&self, context: Context) -> Result<kube::Client, ControlPlaneError> {
        let path = self.dir.join(format!(".client-{}.kubeconfig", context.name));
        self.write_kubeconfig(&path, &[context])?;
        shardmetrics_plumbing::process::kube_client(Some(&path)).await.map_err(ControlPlaneError::Client)
    }

    /// A kube-rs client as the cluster admin.
    pub async fn admin_client(&self) -> Result<kube::Client, ControlPlaneError> {
        self.client(self.admin_context("admin")).await
    }

    /// Stops every component (SIGTERM, then SIGKILL after 10 s), last started first.
    pub async fn shutdown(mut self) {
        while let Some(mut c) = self.components.pop() {
            if let Some(pid) = c.child.id() {
                let _ = tokio::process::Command::new("kill").arg("-TERM").arg(pid.to_string()).status().await;
            }
            if tokio::time::timeout(Duration::from_secs(10), c.child.wait()).await.is_err() {
                let _ = c.child.start_kill();
                let _ = c.child.wait().await;
            }
        }
    }

    fn component_kubeconfig(&self, name: &str, user: &str) -> Result<PathBuf, ControlPlaneError> {
        let path = self.dir.join(format!("{name}.kubeconfig"));
        let context = Context { name: name.to_owned(), credential: Credential::ClientCert(self.ca.client_cert(user, &[])?), namespace: None };
        self.write_kubeconfig(&path, &[context])?;
        Ok(path)
    }

    fn spawn(&mut self, name: &'static str, bin: &Path, args: &[String]) -> Result<(), ControlPlaneError> {
        let log = self.log_path(name);
        let out = std::fs::File::create(&log).map_err(io(format!("creating {}", log.display())))?;
        let err = out.try_clone().map_err(io("duplicating a log file handle"))?;
        let mut cmd = Command::new(bin);
        cmd.args(args).stdin(Stdio::null()).stdout(out).stderr(err).kill_on_drop(true).current_dir(&self.dir);
        // Only flags configure the components: no KUBECONFIG or proxy from the caller.
        for var in ["KUBECONFIG", "HTTPS_PROXY", "https_proxy", "HTTP_PROXY", "http_proxy"] {
            cmd.env_remove(var);
        }
        let child = cmd.spawn().map_err(io(format!("starting {name} ({})", bin.display())))?;
        self.components.push(Component { name, child, log });
        Ok(())
    }

    /// Polls `url + path` (as the admin; components accept the cluster CA's client
    /// certificates through delegated authentication) until it answers `ok`.
    async fn wait_healthy(&mut self, name: &str, url: &str, path: &str, timeout: Duration) -> Result<(), ControlPlaneError> {
        let tls = pki::client_config(None, Some(&self.admin))?;
        let connector = hyper_rustls::HttpsConnectorBuilder::new().with_tls_config(tls).https_only().enable_http1().build();
        let client: hyper_util::client::legacy::Client<_, http_body_util::Empty<bytes::Bytes>> =
            hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new()).build(connector);
        let deadline = tokio::time::Instant::now() + timeout;
        let mut last = String::from("no answer yet");
        loop {
            self.check_running()?;
            if let Ok(req) = http::Request::get(format!("{url}{path}")).body(http_body_util::Empty::new()) {
                match client.request(req).await {
                    Ok(resp) => {
                        let status = resp.status();
                        let body = http_body_util::BodyExt::collect(resp.into_body()).await.map(|b| b.to_bytes()).unwrap_or_default();
                        if status.is_success() {
                            return Ok(());
                        }
                        last = format!("{status}: {}", String::from_utf8_lossy(&body).chars().take(300).collect::<String>());
                    }
                    Err(e) => last = e.to_string(),
                }
            }
            if tokio::time::Instant::now() >= deadline {
                return Err(ControlPlaneError::NotReady {
                    name: name.to_owned(),
                    timeout,
                    last,
                    log: self.log_path(name).display().to_string(),
                });
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }

    /// An error for the first component that exited.
    fn check_running(&mut self) -> Result<(), ControlPlaneError> {
        for c in &mut self.components {
            if let Ok(Some(status)) = c.child.try_wait() {
                return Err(ControlPlaneError::Exited {
                    name: c.name.to_owned(),
                    status,
                    log: c.log.display().to_string(),
                    tail: log_tail(&c.log, 20),
                });
            }
        }
        Ok(())
    }

    /// A component that exited since start-up, if any: (name, status, log).
    pub fn exited_component(&mut self) -> Option<(String, std::process::ExitStatus, PathBuf)> {
        self.components.iter_mut().find_map(|c| c.child.try_wait().ok().flatten().map(|s| (c.name.to_owned(), s, c.log.clone())))
    }
}

/// The last `lines` lines of a log file (for error messages).
fn log_tail(path: &Path, lines: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_last_lines_of_a_log_are_kept_for_the_error() {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("x.log");
        std::fs::write(&log, "a\nb\nc\n").unwrap();
        assert_eq!(log_tail(&log, 2), "b\nc");
        assert_eq!(log_tail(&dir.path().join("missing"), 2), "");
    }

    #[test]
    fn durations_are_whole_seconds_of_at_least_one() {
        assert_eq!(seconds(Duration::from_millis(200)), "1s");
        assert_eq!(seconds(Duration::from_secs(15)), "15s");
    }
}
