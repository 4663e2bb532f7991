//! The API-server simulator: the subset of kube-apiserver that shardmetrics, kube-rs and kubectl
//! use, over HTTPS on a loopback port.
//!
//! Start one with [`ApiServer::start`]; the [`RunningApiServer`] it returns gives tests the URL,
//! CA, kube-rs configs and kubeconfig files per user, direct access to the [`store::Store`]
//! (create/update/delete objects without HTTP), the aggregation backends, and fault hooks.
//!
//! ```no_run
//! # async fn demo() -> anyhow::Result<()> {
//! use shardmetrics_sim::apiserver::{ApiServer, ApiServerConfig, DEFAULT_ADMIN};
//! let api = ApiServer::start(ApiServerConfig::default()).await?;
//! let client = kube::Client::try_from(api.kubeconfig_for(DEFAULT_ADMIN).await?)?;
//! # Ok(()) }
//! ```
//!
//! # Layout
//! - [`handlers`]: where requests enter (authn, request parsing, authz, dispatch, watch streams);
//! - [`store`]: objects, resourceVersions, history, watch fan-out;
//! - [`resources`]: the served resource table; [`discovery`], [`table`]: what kubectl reads;
//!   [`metadata`]: `PartialObjectMetadata` for metadata informers;
//! - [`patch`]: patch types (selectors are `shardmetrics_plumbing::selector`); [`protobuf`]: the protobuf bodies kubectl posts;
//! - [`policy`], [`reviews`]: users, rules, TokenReview and SubjectAccessReview;
//! - [`proxy`]: the `metrics.k8s.io` aggregation proxy; [`kubeconfig`]: kubeconfig files.

pub mod discovery;
pub mod error;
pub mod handlers;
pub mod kubeconfig;
pub mod metadata;
pub mod patch;
pub mod policy;
pub mod protobuf;
pub mod proxy;
pub mod resources;
pub mod reviews;
pub mod store;
pub mod table;

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use serde_json::json;
use shardmetrics_plumbing::clock::{self, SharedClock};
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;

pub use error::ApiError;
pub use handlers::ApiStats;
pub use kubeconfig::{Context, Credential};
pub use policy::{Attributes, MASTERS, Policy, Rule, Subject, UserInfo};
pub use proxy::ProxyStats;
pub use store::{Part, Store, StoreConfig};

use shardmetrics_plumbing::pki::{self, Ca, CertKey};

/// Name of the user of [`ApiServerConfig::default`]'s admin token (group `system:masters`).
pub const DEFAULT_ADMIN: &str = "admin";
/// The admin user's bearer token in [`ApiServerConfig::default`].
pub const DEFAULT_ADMIN_TOKEN: &str = "shardmetrics-sim-admin-token";
/// Common name of the aggregation proxy's client certificate.
pub const FRONT_PROXY_CLIENT_CN: &str = "front-proxy-client";
/// Namespace and name of the ConfigMap aggregated API servers read their request-header
/// settings from.
pub const EXTENSION_APISERVER_AUTHENTICATION: (&str, &str) = ("kube-system", "extension-apiserver-authentication");

/// Errors starting the simulator or building clients for it.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// Binding the listener failed.
    #[error("binding {addr}: {source}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// The I/O error.
        source: std::io::Error,
    },
    /// Certificates or TLS configuration failed.
    #[error(transparent)]
    Pki(#[from] pki::PkiError),
    /// Bootstrapping the store failed.
    #[error("bootstrapping objects: {0}")]
    Bootstrap(#[from] ApiError),
    /// The user has no token in the policy.
    #[error("user {0:?} has no bearer token in the policy")]
    NoToken(String),
    /// kube-rs refused the generated kubeconfig.
    #[error("building a kube-rs config: {0}")]
    Kubeconfig(#[from] kube::config::KubeconfigError),
    /// Writing a kubeconfig file failed.
    #[error("writing {path}: {source}")]
    Write {
        /// The file.
        path: std::path::PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
}

/// How to run the simulator.
#[derive(Clone)]
pub struct ApiServerConfig {
    /// Where to listen; `127.0.0.1:0` picks a free port.
    pub bind: SocketAddr,
    /// Users and rules. The default has one admin ([`DEFAULT_ADMIN`], token
    /// [`DEFAULT_ADMIN_TOKEN`], group `system:masters`).
    pub policy: Policy,
    /// Wall clock for creationTimestamps and table ages.
    pub clock: SharedClock,
    /// History and broadcast sizes.
    pub store: StoreConfig,
    /// How often a watch that asked for bookmarks gets one.
    pub bookmark_interval: Duration,
    /// CA (PEM) that aggregation backends' serving certificates must chain to; `None` skips
    /// verification, like an APIService with `insecureSkipTLSVerify: true`.
    pub aggregation_backend_ca_pem: Option<String>,
    /// Whether the simulator authorizes `metrics.k8s.io` requests itself before proxying (as
    /// kube-apiserver does). Turn off to test a frontend's own authorization through the proxy.
    pub authorize_aggregated: bool,
    /// Serving (and client-certificate) CA; a fresh one when `None`.
    pub serving_ca: Option<Arc<Ca>>,
    /// Front-proxy CA; a fresh one when `None`.
    pub front_proxy_ca: Option<Arc<Ca>>,
}

impl std::fmt::Debug for ApiServerConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ApiServerConfig").field("bind", &self.bind).finish_non_exhaustive()
    }
}

impl Default for ApiServerConfig {
    fn default() -> Self {
        ApiServerConfig {
            bind: SocketAddr::from(([127, 0, 0, 1], 0)),
            policy: Policy::new().with_token(DEFAULT_ADMIN_TOKEN, UserInfo::new(DEFAULT_ADMIN, &[MASTERS])),
            clock: clock::system(),
            store: StoreConfig::default(),
            bookmark_interval: Duration::from_secs(10),
            aggregation_backend_ca_pem: None,
            authorize_aggregated: true,
            serving_ca: None,
            front_proxy_ca: None,
        }
    }
}

/// Entry point of the simulator.
#[derive(Debug)]
pub struct ApiServer;

impl ApiServer {
    /// Binds, bootstraps the default namespaces and the `extension-apiserver-authentication`
    /// ConfigMap, and serves until [`RunningApiServer::shutdown`] (or drop).
    pub async fn start(config: ApiServerConfig) -> Result<RunningApiServer, StartError> {
        let listener = TcpListener::bind(config.bind).await.map_err(|source| StartError::Bind { addr: config.bind, source })?;
        let addr = listener.local_addr().map_err(|source| StartError::Bind { addr: config.bind, source })?;
        let serving_ca = match config.serving_ca {
            Some(ca) => ca,
            None => Arc::new(Ca::new("shardmetrics-sim-ca")?),
        };
        let front_proxy_ca = match config.front_proxy_ca {
            Some(ca) => ca,
            None => Arc::new(Ca::new("shardmetrics-sim-front-proxy-ca")?),
        };
        let serving_cert = serving_ca.server_cert("kube-apiserver", &["kubernetes", "kubernetes.default.svc"])?;
        let tls = Arc::new(pki::server_config(&serving_cert, Some(&serving_ca), true)?);
        let front_proxy_client = front_proxy_ca.client_cert(FRONT_PROXY_CLIENT_CN, &[])?;
        let backend_roots = match &config.aggregation_backend_ca_pem {
            Some(pem) => {
                use rustls::pki_types::pem::PemObject;
                let mut roots = rustls::RootCertStore::empty();
                for der in rustls::pki_types::CertificateDer::pem_slice_iter(pem.as_bytes()).flatten() {
                    let _ = roots.add(der);
                }
                Some(roots)
            }
            None => None,
        };
        let proxy = proxy::Proxy::new(&front_proxy_client, backend_roots.as_ref())?;
        let store = Arc::new(Store::new(config.clock.clone(), config.store.clone()));
        store.bootstrap()?;
        let (ns, name) = EXTENSION_APISERVER_AUTHENTICATION;
        store.create(
            resources::CONFIGMAPS,
            ns,
            json!({
                "metadata": {"name": name, "namespace": ns},
                "data": {
                    "client-ca-file": serving_ca.cert_pem(),
                    "requestheader-client-ca-file": front_proxy_ca.cert_pem(),
                    "requestheader-allowed-names": format!("[\"{FRONT_PROXY_CLIENT_CN}\"]"),
                    "requestheader-username-headers": "[\"X-Remote-User\"]",
                    "requestheader-group-headers": "[\"X-Remote-Group\"]",
                    "requestheader-extra-headers-prefix": "[\"X-Remote-Extra-\"]",
                }
            }),
        )?;
        let (drop_watches, _) = watch::channel(0u64);
        let shared = Arc::new(handlers::Shared {
            store,
            policy: std::sync::RwLock::new(Arc::new(config.policy)),
            proxy,
            clock: config.clock,
            drop_watches,
            bookmark_interval: config.bookmark_interval,
            authorize_aggregated: config.authorize_aggregated,
            server_address: addr.to_string(),
            stats: Arc::new(ApiStats::default()),
            last_reviews: Default::default(),
            unavailable: Default::default(),
        });
        let (shutdown_tx, shutdown_rx) = watch::channel(false);
        let handler_shared = shared.clone();
        let task = tokio::spawn(crate::httputil::serve_tls(listener, tls, shutdown_rx, move |peer, req| {
            handlers::handle(handler_shared.clone(), peer, req)
        }));
        tracing::info!(%addr, "API server simulator listening");
        Ok(RunningApiServer { shared, addr, serving_ca, front_proxy_ca, front_proxy_client, shutdown_tx, task: Some(task) })
    }
}

/// A running simulator. Dropping it stops the server (use [`RunningApiServer::shutdown`] to
/// wait for that).
pub struct RunningApiServer {
    shared: Arc<handlers::Shared>,
    addr: SocketAddr,
    serving_ca: Arc<Ca>,
    front_proxy_ca: Arc<Ca>,
    front_proxy_client: CertKey,
    shutdown_tx: watch::Sender<bool>,
    task: Option<JoinHandle<()>>,
}

impl std::fmt::Debug for RunningApiServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RunningApiServer").field("addr", &self.addr).finish_non_exhaustive()
    }
}

impl RunningApiServer {
    /// `https://127.0.0.1:<port>`.
    pub fn url(&self) -> String {
        format!("https://{}", self.addr)
    }

    /// The bound address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The serving CA (PEM): what clients trust. It also signs accepted client certificates.
    pub fn ca_pem(&self) -> &str {
        self.serving_ca.cert_pem()
    }

    /// The serving CA, to issue client certificates (`ca().client_cert(user, &[group])`).
    pub fn ca(&self) -> &Arc<Ca> {
        &self.serving_ca
    }

    /// The front-proxy CA (what frontends use as `--requestheader-client-ca-file`).
    pub fn front_proxy_ca(&self) -> &Arc<Ca> {
        &self.front_proxy_ca
    }

    /// The aggregation proxy's client certificate.
    pub fn front_proxy_client_cert(&self) -> &CertKey {
        &self.front_proxy_client
    }

    /// Direct access to the objects.
    pub fn store(&self) -> &Arc<Store> {
        &self.shared.store
    }

    /// The current policy.
    pub fn policy(&self) -> Arc<Policy> {
        self.shared.policy()
    }

    /// Replaces the policy (takes effect for the next request).
    pub fn set_policy(&self, policy: Policy) {
        *self.shared.policy.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(policy);
    }

    /// A kubelet token check backed by this server's live policy: a token whose user may `get`
    /// `nodes/metrics` is allowed, a known user without that right is forbidden (403), anything
    /// else unknown (401) - what a kubelet with webhook authentication and authorization does.
    pub fn kubelet_token_check(&self) -> crate::kubelet::TokenCheck {
        let shared = self.shared.clone();
        crate::kubelet::sync_token_check(move |token| {
            use crate::kubelet::TokenVerdict;
            let policy = shared.policy();
            match policy.authenticate_token(token) {
                None => TokenVerdict::Unknown,
                Some(user) => {
                    let attrs = Attributes::resource("get", "", "nodes", "metrics", "", "");
                    if policy.authorize(&user, &attrs).allowed { TokenVerdict::Allowed } else { TokenVerdict::Forbidden }
                }
            }
        })
    }

    /// Request counters.
    pub fn stats(&self) -> &ApiStats {
        &self.shared.stats
    }

    /// Request counters, shared (for measurements that outlive a borrow of the server).
    pub fn stats_handle(&self) -> Arc<ApiStats> {
        self.shared.stats.clone()
    }

    /// Aggregation proxy counters.
    pub fn proxy_stats(&self) -> &ProxyStats {
        &self.shared.proxy.stats
    }

    /// Registers the frontend replicas `metrics.k8s.io` is proxied to (round robin). An empty
    /// list removes the group from discovery.
    pub fn set_aggregation_backends(&self, backends: Vec<SocketAddr>) {
        self.shared.proxy.set_backends(backends);
    }

    /// Closes every open watch now (clients see the stream end and resume from their last
    /// resourceVersion).
    pub fn drop_all_watches(&self) {
        self.shared.drop_watches.send_modify(|g| *g += 1);
    }

    /// Fails every request on `resources` (plural names, any API group: `tokenreviews`,
    /// `subjectaccessreviews`, `configmaps`, ...) with 500 InternalError, as kube-apiserver
    /// answers while etcd is unreachable; authentication and authorization still run first. An
    /// empty slice makes everything available again.
    pub fn set_unavailable(&self, resources: &[&str]) {
        *self.shared.unavailable.write().unwrap_or_else(|p| p.into_inner()) = resources.iter().map(|r| (*r).to_owned()).collect();
    }

    /// The body of the last review of `kind` (`TokenReview`, `SubjectAccessReview`, ...)
    /// posted to this server, as received: what a client asked, for tests to check.
    pub fn last_review(&self, kind: &str) -> Option<serde_json::Value> {
        self.shared.last_reviews.lock().unwrap_or_else(|p| p.into_inner()).get(kind).cloned()
    }

    /// Compacts the watch history so that the next resume of any watch gets 410 Gone.
    pub fn compact_history(&self) {
        self.shared.store.compact_history();
    }

    /// What an etcd compaction during a network blip does: forgets the watch history, then
    /// closes every open watch, so that every watcher's resume gets 410 Gone ("Expired") and it
    /// has to re-list. Returns how many watches were open.
    pub fn drop_watches_and_compact(&self) -> i64 {
        let open = self.shared.stats.watches_open.load(std::sync::atomic::Ordering::Relaxed);
        self.compact_history();
        self.drop_all_watches();
        open
    }

    /// The kubeconfig text for `contexts`, the first one current.
    pub fn kubeconfig_text(&self, contexts: &[Context]) -> String {
        let current = contexts.first().map_or("", |c| c.name.as_str());
        kubeconfig::render("shardmetrics-sim", &self.url(), self.ca_pem(), contexts, current)
    }

    /// A context authenticating as `user` with its policy token.
    pub fn token_context(&self, context_name: &str, user: &str) -> Result<Context, StartError> {
        let policy = self.policy();
        let token = policy.token_of(user).ok_or_else(|| StartError::NoToken(user.to_owned()))?;
        Ok(Context { name: context_name.to_owned(), credential: Credential::Token(token.to_owned()), namespace: None })
    }

    /// Writes a kubeconfig with `contexts` (the first is current) to `path`.
    pub fn write_kubeconfig(&self, path: &Path, contexts: &[Context]) -> Result<(), StartError> {
        kubeconfig::write(path, &self.kubeconfig_text(contexts))
            .map_err(|source| StartError::Write { path: path.to_owned(), source })
    }

    /// A kube-rs config authenticating as `user` (by its bearer token in the policy).
    pub async fn kubeconfig_for(&self, user: &str) -> Result<kube::Config, StartError> {
        let context = self.token_context(user, user)?;
        self.config_for_context(context).await
    }

    /// A kube-rs config for any context (token or client certificate).
    pub async fn config_for_context(&self, context: Context) -> Result<kube::Config, StartError> {
        let text = self.kubeconfig_text(std::slice::from_ref(&context));
        let parsed = kube::config::Kubeconfig::from_yaml(&text)?;
        Ok(kube::Config::from_custom_kubeconfig(parsed, &kube::config::KubeConfigOptions::default()).await?)
    }

    /// Stops serving and closes every connection; returns when done.
    pub async fn shutdown(mut self) {
        let _ = self.shutdown_tx.send(true);
        if let Some(task) = self.task.take() {
            let _ = task.await;
        }
    }
}

impl Drop for RunningApiServer {
    fn drop(&mut self) {
        let _ = self.shutdown_tx.send(true);
    }
}
