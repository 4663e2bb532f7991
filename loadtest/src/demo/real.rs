//! `demo --control-plane real`: shardmetrics in a real Kubernetes control plane.
//!
//! etcd, kube-apiserver, kube-controller-manager and kube-scheduler built from the pinned
//! upstream sources run on loopback ([`crate::control_plane`]); only the nodes are simulated,
//! by the node agent (`shardmetrics_sim::node_agent`: real Node objects, Lease heartbeats, pod
//! status, a kubelet per node serving `/metrics/resource` with known usage). On top, as an
//! operator would install it:
//! - the ServiceAccounts and RBAC of `deploy/kustomize/base` applied with the real kubectl;
//! - scraper shards and frontends (child processes) authenticating with ServiceAccount tokens
//!   from TokenRequest;
//! - the frontends' serving certificate for `shardmetrics-frontend.kube-system.svc` (the name
//!   the aggregator verifies), an ExternalName Service `shardmetrics-frontend` pointing at
//!   127.0.0.1 (Endpoints refuse loopback addresses) in front of a kube-proxy stand-in
//!   ([`crate::service_proxy`]), and the APIServices `v1beta1.metrics.k8s.io` and
//!   `v1.metrics.k8s.io` (preferred) with the CA bundle; the demo waits until the aggregator
//!   reports both `Available=True`;
//! - workloads: Deployments in five namespaces whose pods the scheduler binds to the simulated
//!   nodes; their usage comes from the pod annotations `sim.shardmetrics.io/cpu-millicores` and
//!   `sim.shardmetrics.io/memory-bytes` (change them with `kubectl annotate` and the kubelets
//!   report the new usage).
//!
//! The user's kubeconfig has the simulator demo's contexts: `demo-admin` (a `system:masters`
//! client certificate) and `demo-noaccess` (a certificate user without any RBAC binding).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::authentication::v1::{TokenRequest, TokenRequestSpec};
use k8s_openapi::api::core::v1::{Namespace, Service, ServiceAccount};
use k8s_openapi::api::rbac::v1::ClusterRoleBinding;
use k8s_openapi::kube_aggregator::pkg::apis::apiregistration::v1::APIService;
use kube::Api;
use kube::api::{Patch, PatchParams, PostParams};
use serde_json::json;
use shardmetrics_plumbing::pki::Ca;
use shardmetrics_sim::cluster::{CPU_ANNOTATION, MEMORY_ANNOTATION};
use shardmetrics_sim::node_agent::{NodeAgent, NodeAgentConfig};

use super::children::{Children, DEFAULT_LEASE_DURATION, Spawner, flag_duration, stop_gracefully};
use super::{ADMIN_CONTEXT, DemoConfig, NOACCESS_CONTEXT, SupervisorEvent};
use crate::control_plane::{ControlPlane, ControlPlaneConfig, ControlPlaneError};
use crate::service_proxy::ServiceProxy;

/// Namespaces the demo's workloads run in (the simulator demo's).
pub const NAMESPACES: &[&str] = &["default", "team-a", "team-b", "team-c", "batch"];
/// Where shardmetrics is installed (the manifests of `deploy/` put it there).
pub const INSTALL_NAMESPACE: &str = "kube-system";
/// The frontend Service the APIService names.
pub const FRONTEND_SERVICE: &str = "shardmetrics-frontend";
/// The APIServices shardmetrics registers: v1beta1 (kubectl's), and v1, preferred.
pub const API_SERVICES: [(&str, &str, i32); 2] = [("v1beta1.metrics.k8s.io", "v1beta1", 100), ("v1.metrics.k8s.io", "v1", 200)];
/// The user of [`NOACCESS_CONTEXT`]: authenticated by certificate, bound to nothing.
pub const NOACCESS_USER: &str = "demo-noaccess";
/// The manifests of `deploy/` the demo applies: identities and RBAC (the workloads run as
/// child processes instead of pods).
pub const RBAC_MANIFESTS: &[&str] =
    &["serviceaccounts.yaml", "rbac-scraper.yaml", "rbac-frontend.yaml", "rbac-aggregated-metrics-reader.yaml"];
/// The ServiceAccount the demo probes the frontends with (bound to the metrics reader role).
const PROBE_ACCOUNT: &str = "shardmetrics-demo-probe";

/// What can stop the real demo from starting.
#[derive(Debug, thiserror::Error)]
pub enum RealDemoError {
    /// The upstream programs could not be built.
    #[error("building the upstream control plane: {0}")]
    Build(#[from] shardmetrics_xtask::tools::ToolError),
    /// The control plane did not start.
    #[error(transparent)]
    ControlPlane(#[from] ControlPlaneError),
    /// The node agent did not start.
    #[error(transparent)]
    NodeAgent(#[from] shardmetrics_sim::node_agent::NodeAgentError),
    /// Certificates could not be made.
    #[error(transparent)]
    Pki(#[from] shardmetrics_plumbing::pki::PkiError),
    /// The API server refused something the demo installs.
    #[error("{what}: {source}")]
    Api {
        /// What was being done.
        what: String,
        /// The API server's answer.
        source: kube::Error,
    },
    /// A shard or frontend could not start.
    #[error(transparent)]
    Demo(#[from] super::DemoError),
    /// kubectl failed applying `deploy/`.
    #[error("kubectl apply of deploy/ failed: {0}")]
    Apply(String),
    /// Something did not happen in time.
    #[error("{what} within {timeout:?} (last: {last}); logs in {logs}")]
    Timeout {
        /// What was awaited.
        what: String,
        /// How long.
        timeout: Duration,
        /// The last observation.
        last: String,
        /// Where the logs are.
        logs: String,
    },
    /// The peer (metrics-server) did not start.
    #[error(transparent)]
    Peer(#[from] crate::peer::PeerError),
    /// A file operation failed.
    #[error("{what}: {source}")]
    Io {
        /// What was being done.
        what: String,
        /// The I/O error.
        source: std::io::Error,
    },
}

fn api_err(what: impl Into<String>) -> impl FnOnce(kube::Error) -> RealDemoError {
    let what = what.into();
    move |source| RealDemoError::Api { what, source }
}

fn io_err(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> RealDemoError {
    let what = what.into();
    move |source| RealDemoError::Io { what, source }
}

/// The HPA timings of kube-controller-manager in the real demo.
#[derive(Debug, Clone, Copy)]
pub struct HpaTimings {
    /// `--horizontal-pod-autoscaler-sync-period`.
    pub sync_period: Duration,
    /// `--horizontal-pod-autoscaler-downscale-stabilization`.
    pub downscale_stabilization: Duration,
}

impl Default for HpaTimings {
    /// Upstream's defaults (15 s, 5 min).
    fn default() -> Self {
        HpaTimings { sync_period: Duration::from_secs(15), downscale_stabilization: Duration::from_secs(300) }
    }
}

/// A running real-control-plane demo. Dropping it kills everything.
pub struct RealDemo {
    /// The CA the kubelets' serving certificates chain to (the peer verifies with it too).
    kubelet_ca: PathBuf,
    /// The upstream control plane.
    pub control_plane: ControlPlane,
    /// The simulated nodes and their kubelets.
    pub agent: NodeAgent,
    proxy: ServiceProxy,
    children: Children,
    admin: kube::Client,
    kubeconfig: PathBuf,
    work_dir: tempfile::TempDir,
    /// Seconds from the start until the APIService was Available and every node was served.
    pub startup: Duration,
}

impl std::fmt::Debug for RealDemo {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RealDemo").field("api", &self.control_plane.url()).finish_non_exhaustive()
    }
}

impl RealDemo {
    /// Builds the upstream programs if needed, starts everything and waits until the
    /// aggregator serves every node's metrics.
    pub async fn start(config: DemoConfig, hpa: HpaTimings) -> Result<RealDemo, RealDemoError> {
        let begun = tokio::time::Instant::now();
        let binaries = tokio::task::spawn_blocking(shardmetrics_xtask::upstream::control_plane)
            .await
            .map_err(|e| RealDemoError::Io { what: "building the control plane".into(), source: std::io::Error::other(e.to_string()) })??;
        let work_dir = tempfile::Builder::new().prefix("shardmetrics-real-demo-").tempdir().map_err(io_err("creating the work directory"))?;
        let dir = work_dir.path().to_owned();
        let mut cp_config = ControlPlaneConfig::new(binaries, dir.join("cluster"));
        cp_config.hpa_sync_period = hpa.sync_period;
        cp_config.hpa_downscale_stabilization = hpa.downscale_stabilization;
        let control_plane = ControlPlane::start(cp_config).await?;
        let admin = control_plane.admin_client().await?;

        let admin_kubeconfig = dir.join("admin.kubeconfig");
        control_plane.write_kubeconfig(&admin_kubeconfig, &[control_plane.admin_context(ADMIN_CONTEXT)])?;
        apply_rbac(&admin_kubeconfig).await?;
        for ns in NAMESPACES.iter().filter(|n| **n != "default") {
            ensure_namespace(&admin, ns).await?;
        }

        let kubelet_ca = Arc::new(Ca::new("shardmetrics-demo-kubelet-ca")?);
        let kubelet_ca_file = kubelet_ca.write_pem(&dir, "kubelet-ca")?;
        let kubelet_ca_path = kubelet_ca_file.clone();
        let width = config.nodes.saturating_sub(1).to_string().len().max(4);
        let nodes: Vec<String> = (0..config.nodes).map(|i| format!("sim-node-{i:0width$}")).collect();
        let agent = NodeAgent::start(
            admin.clone(),
            NodeAgentConfig {
                nodes,
                node_cpu_cores: 8,
                node_memory_bytes: 32 << 30,
                memory_amplitude_percent: config.memory_amplitude_percent,
                lease_renew_interval: Duration::from_secs(10),
                status_interval: Duration::from_secs(60),
                sample_period: config.kubelet_sample_period,
                kubelet_ca,
                clock: config.clock.clone(),
            },
        )
        .await?;
        let pods = config.nodes * config.pods_per_node;
        create_workloads(&admin, &config, pods).await?;

        let scraper_token = service_account_token(&admin, "shardmetrics-scraper").await?;
        let frontend_token = service_account_token(&admin, "shardmetrics-frontend").await?;
        let scraper_kc = dir.join("scraper.kubeconfig");
        let frontend_kc = dir.join("frontend.kubeconfig");
        control_plane.write_kubeconfig(&scraper_kc, &[control_plane.token_context("scraper", &scraper_token)])?;
        control_plane.write_kubeconfig(&frontend_kc, &[control_plane.token_context("frontend", &frontend_token)])?;
        let serving_ca = Ca::new("shardmetrics-demo-frontend-ca")?;
        let host = format!("{FRONTEND_SERVICE}.{INSTALL_NAMESPACE}.svc");
        let serving = serving_ca.server_cert(&host, &[&host, &format!("{host}.cluster.local")])?;
        let (cert, key) = serving.write_pem(&dir, "frontend-serving")?;

        let request_timeout = (config.metric_resolution / 2).min(Duration::from_secs(10));
        let spawner = Spawner {
            exe: config.exe.clone(),
            scraper_program: config.scraper_program.clone(),
            frontend_program: config.frontend_program.clone(),
            dir: dir.clone(),
            scraper_kubeconfig: scraper_kc,
            frontend_kubeconfig: frontend_kc,
            kubelet_ca: kubelet_ca_file,
            kubelet_insecure_tls: false,
            resolution: flag_duration(config.metric_resolution),
            request_timeout: flag_duration(request_timeout),
            metric_resolution: config.metric_resolution,
            kubelet_request_timeout: request_timeout,
            frontend_max_staleness: config.frontend_max_staleness,
            frontend_max_requests_inflight: config.frontend_max_requests_inflight,
            frontend_tls: Some((cert, key)),
            log_level: config.child_log_level.clone(),
            lease_duration: config.lease_duration,
            lease_renew_period: config.lease_renew_period,
        };
        let proxy = ServiceProxy::start(0).await.map_err(io_err("starting the frontend Service proxy"))?;
        let mut demo = RealDemo {
            kubelet_ca: kubelet_ca_path,
            control_plane,
            agent,
            proxy,
            children: Children::new(spawner),
            admin,
            kubeconfig: std::path::absolute(&config.kubeconfig).unwrap_or_else(|_| config.kubeconfig.clone()),
            work_dir,
            startup: Duration::ZERO,
        };
        let started = demo.children.start_all(config.shards, config.frontends);
        demo.sync_frontends();
        started?;
        register_api_service(&demo.admin, demo.proxy.addr(), serving_ca.cert_pem()).await?;

        let contexts = [demo.control_plane.admin_context(ADMIN_CONTEXT), demo.control_plane.user_context(NOACCESS_CONTEXT, NOACCESS_USER, None)?];
        demo.control_plane.write_kubeconfig(&config.kubeconfig, &contexts)?;
        let probe_token = probe_token(&demo.admin).await?;
        let logs = demo.work_dir().display().to_string();
        wait_pods_running(&demo.agent, pods, config.ready_timeout, &logs).await?;
        wait_available(&demo.admin, config.ready_timeout, &logs).await?;
        demo.wait_served(config.nodes, pods, &probe_token, config.ready_timeout).await?;
        demo.startup = begun.elapsed();
        Ok(demo)
    }

    /// The user's kubeconfig (contexts [`ADMIN_CONTEXT`] and [`NOACCESS_CONTEXT`]).
    pub fn kubeconfig(&self) -> &Path {
        &self.kubeconfig
    }

    /// Where certificates, kubeconfigs and every process's log are.
    pub fn work_dir(&self) -> &Path {
        self.work_dir.path()
    }

    /// A kube-rs client as the cluster admin.
    pub fn admin(&self) -> &kube::Client {
        &self.admin
    }

    /// The shards' scrape interval and the frontends' rate window.
    pub fn metric_resolution(&self) -> Duration {
        self.children.spawner.metric_resolution
    }

    /// The shards' Lease duration.
    pub fn lease_duration(&self) -> Duration {
        self.children.spawner.lease_duration.unwrap_or(DEFAULT_LEASE_DURATION)
    }

    /// The frontends' secure ports (each serves the whole API).
    pub fn frontend_addrs(&self) -> Vec<SocketAddr> {
        self.children.frontends()
    }

    /// The shards and frontends still running: (name, pid), scrapers first.
    pub fn children(&self) -> Vec<(String, u32)> {
        self.children.pids()
    }

    /// Every process of the demo with its pid: the control plane's components, then the
    /// shards and frontends (for CPU and memory accounting).
    pub fn processes(&self) -> Vec<(String, u32)> {
        let mut all = self.control_plane.pids();
        all.extend(self.children.pids());
        all
    }

    /// Kills a child at once (SIGKILL, as a crash); it is not restarted. Returns whether it
    /// existed.
    pub async fn kill_child(&mut self, name: &str) -> bool {
        let Some(mut c) = self.children.take(name) else { return false };
        let _ = c.child.start_kill();
        let _ = c.child.wait().await;
        self.sync_frontends();
        true
    }

    /// Stops a child gracefully (SIGTERM) and forgets it; its exit status.
    pub async fn stop_child_gracefully(&mut self, name: &str) -> Option<std::process::ExitStatus> {
        let mut c = self.children.take(name)?;
        let status = stop_gracefully(&mut c).await;
        self.sync_frontends();
        status
    }

    /// Restarts children that died on their own after a back-off (see [`super::RunningDemo::supervise`]).
    pub fn supervise(&mut self) -> Vec<SupervisorEvent> {
        let events = self.children.supervise();
        if !events.is_empty() {
            self.sync_frontends();
        }
        events
    }

    /// A child or control-plane component that exited, if any: (name, status, log).
    pub fn exited(&mut self) -> Option<(String, std::process::ExitStatus, PathBuf)> {
        self.control_plane.exited_component().or_else(|| self.children.exited())
    }

    /// Stops the shards and frontends (SIGTERM: shards delete their Leases), then the node
    /// agent and the control plane.
    pub async fn shutdown(mut self) {
        self.children.shutdown().await;
        self.proxy.set_backends(Vec::new());
        let RealDemo { control_plane, agent, .. } = self;
        drop(agent);
        control_plane.shutdown().await;
    }

    /// Starts `replicas` metrics-server replicas beside shardmetrics (the peer, see
    /// [`crate::peer`]), scraping the same kubelets with upstream's RBAC and its own
    /// ServiceAccount, and waits until each is ready. `resolution` must be at least 10 s
    /// (upstream's minimum).
    pub async fn start_metrics_server(&mut self, replicas: usize, resolution: Duration) -> Result<Vec<crate::peer::MetricsServer>, RealDemoError> {
        use crate::peer::{MetricsServer, PeerConfig};
        let dir = self.work_dir().to_owned();
        let admin_kubeconfig = dir.join("admin.kubeconfig");
        crate::peer::apply_rbac(&admin_kubeconfig).await?;
        let token = service_account_token_in(&self.admin, crate::peer::NAMESPACE, crate::peer::SERVICE_ACCOUNT).await?;
        let kubeconfig = dir.join("metrics-server.kubeconfig");
        self.control_plane.write_kubeconfig(&kubeconfig, &[self.control_plane.token_context("metrics-server", &token)])?;
        let ca = Ca::new("metrics-server-serving-ca")?;
        let serving = ca.server_cert("localhost", &[])?;
        let serving_cert = serving.write_pem(&dir, "metrics-server-serving")?;
        let mut servers = Vec::with_capacity(replicas);
        for i in 0..replicas {
            let config = PeerConfig {
                name: format!("metrics-server-{i}"),
                dir: dir.clone(),
                kubeconfig: kubeconfig.clone(),
                serving_cert: serving_cert.clone(),
                kubelet_ca: Some(self.kubelet_ca.clone()),
                metric_resolution: resolution,
                kubelet_request_timeout: (resolution / 2).min(Duration::from_secs(10)),
            };
            servers.push(MetricsServer::start(&config).await?);
        }
        for s in &mut servers {
            s.wait_ready(Duration::from_secs(60)).await?;
        }
        Ok(servers)
    }

    fn sync_frontends(&mut self) {
        self.proxy.set_backends(self.children.frontends());
    }

    /// Polls every frontend directly, with the probe ServiceAccount's token (checked by the
    /// frontends with TokenReview and SubjectAccessReview against the real API server), until
    /// each serves every node and every pod (so node rates cover a window in which the pods
    /// ran): the aggregator's connections may go to either.
    async fn wait_served(&mut self, nodes: usize, pods: usize, token: &str, timeout: Duration) -> Result<(), RealDemoError> {
        use http_body_util::{BodyExt, Empty};
        let tls = shardmetrics_plumbing::pki::client_config(None, None)?;
        let connector = hyper_rustls::HttpsConnectorBuilder::new().with_tls_config(tls).https_only().enable_http1().build();
        let client: hyper_util::client::legacy::Client<_, Empty<bytes::Bytes>> =
            hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new()).build(connector);
        let deadline = tokio::time::Instant::now() + timeout;
        let mut last = String::new();
        loop {
            if let Some((name, status, log)) = self.exited() {
                return Err(RealDemoError::Timeout {
                    what: format!("{name} exited ({status}) before every node was served"),
                    timeout,
                    last,
                    logs: log.display().to_string(),
                });
            }
            let mut served_everywhere = !self.children.frontends().is_empty();
            'frontends: for frontend in self.children.frontends() {
                for (resource, want) in [("nodes", nodes), ("pods", pods)] {
                    let served = match http::Request::get(format!("https://{frontend}/apis/metrics.k8s.io/v1beta1/{resource}"))
                        .header("authorization", format!("Bearer {token}"))
                        .body(Empty::new())
                    {
                        Ok(req) => match client.request(req).await {
                            Ok(resp) => {
                                let body = resp.into_body().collect().await.map(|b| b.to_bytes()).unwrap_or_default();
                                serde_json::from_slice::<serde_json::Value>(&body)
                                    .ok()
                                    .and_then(|v| v["items"].as_array().map(Vec::len))
                                    .unwrap_or(0)
                            }
                            Err(e) => {
                                last = format!("{frontend}: {e}");
                                0
                            }
                        },
                        Err(e) => {
                            last = e.to_string();
                            0
                        }
                    };
                    if served < want {
                        last = format!("{frontend} serves {served} of {want} {resource}");
                        served_everywhere = false;
                        break 'frontends;
                    }
                }
            }
            if served_everywhere {
                // And through the real aggregator, as kubectl asks.
                let req = http::Request::get("/apis/metrics.k8s.io/v1beta1/nodes").body(Vec::new());
                if let Ok(req) = req {
                    match self.admin.request::<serde_json::Value>(req).await {
                        Ok(v) if v["items"].as_array().is_some_and(|i| i.len() >= nodes) => return Ok(()),
                        Ok(v) => last = format!("the aggregator served {} of {nodes} nodes", v["items"].as_array().map_or(0, Vec::len)),
                        Err(e) => last = format!("the aggregator: {e}"),
                    }
                }
            }
            if tokio::time::Instant::now() >= deadline {
                return Err(RealDemoError::Timeout {
                    what: "metrics.k8s.io did not serve every node".into(),
                    timeout,
                    last,
                    logs: self.work_dir().display().to_string(),
                });
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }
}

/// `kubectl apply --server-side` of the identities and RBAC in `deploy/kustomize/base`.
async fn apply_rbac(admin_kubeconfig: &Path) -> Result<(), RealDemoError> {
    let kubectl = tokio::task::spawn_blocking(shardmetrics_xtask::tools::kubectl)
        .await
        .map_err(|e| RealDemoError::Apply(e.to_string()))??;
    let base = shardmetrics_xtask::tools::workspace_root().join("deploy/kustomize/base");
    let mut cmd = tokio::process::Command::new(kubectl);
    cmd.arg("--kubeconfig").arg(admin_kubeconfig).args(["apply", "--server-side", "--field-manager=shardmetrics-demo"]);
    for m in RBAC_MANIFESTS {
        cmd.arg("-f").arg(base.join(m));
    }
    let out = cmd.output().await.map_err(|e| RealDemoError::Apply(e.to_string()))?;
    if !out.status.success() {
        return Err(RealDemoError::Apply(String::from_utf8_lossy(&out.stderr).into_owned()));
    }
    Ok(())
}

async fn ensure_namespace(admin: &kube::Client, name: &str) -> Result<(), RealDemoError> {
    let api: Api<Namespace> = Api::all(admin.clone());
    let ns: Namespace = serde_json::from_value(json!({"metadata": {"name": name}})).map_err(|e| RealDemoError::Io {
        what: "a Namespace object".into(),
        source: std::io::Error::other(e),
    })?;
    match api.create(&PostParams::default(), &ns).await {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(e)) if e.code == 409 => Ok(()),
        Err(e) => Err(api_err(format!("creating namespace {name}"))(e)),
    }
}

fn hash(s: &str) -> u64 {
    s.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3))
}

/// The Deployment of `app` in `namespace`: `replicas` pods of `containers` containers, each
/// using `cpu_millicores` and `memory_bytes` (the template's usage annotations) and requesting
/// `cpu_request_millicores` (what HPA utilization is relative to) and the memory it uses.
pub fn deployment(
    namespace: &str,
    app: &str,
    replicas: usize,
    containers: usize,
    cpu_millicores: u64,
    cpu_request_millicores: u64,
    memory_bytes: u64,
) -> serde_json::Value {
    let containers: Vec<serde_json::Value> = (0..containers.max(1))
        .map(|c| {
            let name = if c == 0 { "main".to_owned() } else { format!("sidecar-{c}") };
            json!({
                "name": name,
                "image": "registry.k8s.io/pause:3.10",
                "resources": {"requests": {"cpu": format!("{cpu_request_millicores}m"), "memory": memory_bytes.to_string()}},
            })
        })
        .collect();
    json!({
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": app, "namespace": namespace, "labels": {"app": app}},
        "spec": {
            "replicas": replicas,
            "selector": {"matchLabels": {"app": app}},
            "template": {
                "metadata": {
                    "labels": {"app": app},
                    "annotations": {CPU_ANNOTATION: cpu_millicores.to_string(), MEMORY_ANNOTATION: memory_bytes.to_string()},
                },
                "spec": {"containers": containers, "terminationGracePeriodSeconds": 1},
            },
        },
    })
}

/// Deployments `app-0..` in every namespace whose replicas add up to `pods`.
async fn create_workloads(admin: &kube::Client, config: &DemoConfig, pods: usize) -> Result<(), RealDemoError> {
    let apps = match config.apps_per_namespace {
        0 => (pods / (NAMESPACES.len() * 20)).max(3),
        n => n,
    };
    let deployments = NAMESPACES.len() * apps;
    for (i, (ns, app)) in NAMESPACES.iter().flat_map(|ns| (0..apps).map(move |a| (*ns, format!("app-{a}")))).enumerate() {
        let replicas = pods / deployments + usize::from(i < pods % deployments);
        if replicas == 0 {
            continue;
        }
        let h = hash(&format!("{ns}/{app}"));
        let cpu = 20 + h % 380;
        let obj = deployment(ns, &app, replicas, config.containers_per_pod, cpu, cpu, (32 + (h >> 16) % 224) << 20);
        let api: Api<Deployment> = Api::namespaced(admin.clone(), ns);
        api.patch(&app, &PatchParams::apply("shardmetrics-demo").force(), &Patch::Apply(&obj))
            .await
            .map_err(api_err(format!("creating deployment {ns}/{app}")))?;
    }
    Ok(())
}

/// A bound token of `account` in the install namespace (TokenRequest, 24 h).
async fn service_account_token(admin: &kube::Client, account: &str) -> Result<String, RealDemoError> {
    service_account_token_in(admin, INSTALL_NAMESPACE, account).await
}

/// A bound token of `namespace/account` (TokenRequest, 24 h).
async fn service_account_token_in(admin: &kube::Client, namespace: &str, account: &str) -> Result<String, RealDemoError> {
    let api: Api<ServiceAccount> = Api::namespaced(admin.clone(), namespace);
    let request = TokenRequest {
        spec: TokenRequestSpec { expiration_seconds: Some(24 * 3600), ..TokenRequestSpec::default() },
        ..TokenRequest::default()
    };
    let issued = api
        .create_token_request(account, &PostParams::default(), &request)
        .await
        .map_err(api_err(format!("requesting a token for {namespace}/{account}")))?;
    Ok(issued.status.map(|s| s.token).unwrap_or_default())
}

/// The probe ServiceAccount (bound to `system:aggregated-metrics-reader`) and a token of it.
async fn probe_token(admin: &kube::Client) -> Result<String, RealDemoError> {
    let accounts: Api<ServiceAccount> = Api::namespaced(admin.clone(), INSTALL_NAMESPACE);
    let sa = json!({"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": PROBE_ACCOUNT, "namespace": INSTALL_NAMESPACE}});
    accounts
        .patch(PROBE_ACCOUNT, &PatchParams::apply("shardmetrics-demo").force(), &Patch::Apply(&sa))
        .await
        .map_err(api_err("creating the probe ServiceAccount"))?;
    let bindings: Api<ClusterRoleBinding> = Api::all(admin.clone());
    let binding = json!({
        "apiVersion": "rbac.authorization.k8s.io/v1",
        "kind": "ClusterRoleBinding",
        "metadata": {"name": PROBE_ACCOUNT},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "system:aggregated-metrics-reader"},
        "subjects": [{"kind": "ServiceAccount", "name": PROBE_ACCOUNT, "namespace": INSTALL_NAMESPACE}],
    });
    bindings
        .patch(PROBE_ACCOUNT, &PatchParams::apply("shardmetrics-demo").force(), &Patch::Apply(&binding))
        .await
        .map_err(api_err("binding the probe ServiceAccount"))?;
    service_account_token(admin, PROBE_ACCOUNT).await
}

/// The ExternalName Service in front of the proxy and the APIService that routes
/// `metrics.k8s.io/v1beta1` to it, verified with `ca_pem`.
async fn register_api_service(admin: &kube::Client, proxy: SocketAddr, ca_pem: &str) -> Result<(), RealDemoError> {
    use base64::Engine as _;
    let services: Api<Service> = Api::namespaced(admin.clone(), INSTALL_NAMESPACE);
    let service = json!({
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": FRONTEND_SERVICE, "namespace": INSTALL_NAMESPACE, "labels": {"app.kubernetes.io/name": "shardmetrics"}},
        "spec": {"type": "ExternalName", "externalName": proxy.ip().to_string(), "ports": [{"name": "https", "port": proxy.port(), "protocol": "TCP"}]},
    });
    services
        .patch(FRONTEND_SERVICE, &PatchParams::apply("shardmetrics-demo").force(), &Patch::Apply(&service))
        .await
        .map_err(api_err("creating the frontend Service"))?;
    let api_services: Api<APIService> = Api::all(admin.clone());
    for (name, version, priority) in API_SERVICES {
        let api_service = json!({
            "apiVersion": "apiregistration.k8s.io/v1",
            "kind": "APIService",
            "metadata": {"name": name, "labels": {"app.kubernetes.io/name": "shardmetrics", "app.kubernetes.io/component": "apiservice"}},
            "spec": {
                "group": "metrics.k8s.io",
                "version": version,
                "groupPriorityMinimum": 100,
                "versionPriority": priority,
                "caBundle": base64::engine::general_purpose::STANDARD.encode(ca_pem),
                "service": {"name": FRONTEND_SERVICE, "namespace": INSTALL_NAMESPACE, "port": proxy.port()},
            },
        });
        api_services
            .patch(name, &PatchParams::apply("shardmetrics-demo").force(), &Patch::Apply(&api_service))
            .await
            .map_err(api_err(format!("registering the APIService {name}")))?;
    }
    Ok(())
}

async fn wait_pods_running(agent: &NodeAgent, pods: usize, timeout: Duration, logs: &str) -> Result<(), RealDemoError> {
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        let running = agent.running_pods().len();
        if running >= pods {
            return Ok(());
        }
        if tokio::time::Instant::now() >= deadline {
            return Err(RealDemoError::Timeout {
                what: format!("the workloads' {pods} pods did not all run"),
                timeout,
                last: format!("{running} running"),
                logs: logs.to_owned(),
            });
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// Waits until the aggregator reports every APIService of [`API_SERVICES`] `Available=True`.
pub async fn wait_available(admin: &kube::Client, timeout: Duration, logs: &str) -> Result<(), RealDemoError> {
    let api: Api<APIService> = Api::all(admin.clone());
    let deadline = tokio::time::Instant::now() + timeout;
    'services: for (name, _, _) in API_SERVICES {
        loop {
            let last = match api.get(name).await {
                Ok(s) => {
                    let conditions = s.status.and_then(|s| s.conditions).unwrap_or_default();
                    match conditions.iter().find(|c| c.type_ == "Available") {
                        Some(c) if c.status == "True" => continue 'services,
                        Some(c) => format!("Available={} ({}: {})", c.status, c.reason.as_deref().unwrap_or(""), c.message.as_deref().unwrap_or("")),
                        None => "no Available condition yet".into(),
                    }
                }
                Err(e) => e.to_string(),
            };
            if tokio::time::Instant::now() >= deadline {
                return Err(RealDemoError::Timeout { what: format!("APIService {name} was not Available"), timeout, last, logs: logs.to_owned() });
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }
    Ok(())
}
