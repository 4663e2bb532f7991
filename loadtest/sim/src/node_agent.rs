//! Simulated nodes in a real cluster: the node agent that makes the kubelet simulator's nodes
//! real Nodes of a real kube-apiserver, the way kwok does.
//!
//! The agent talks to the API server through kube-rs with the credentials it is given (the
//! demo gives it the cluster admin, as kwok runs) and, for each simulated node:
//! - registers the Node (addresses `InternalIP 127.0.0.1`, the kubelet port in
//!   `status.daemonEndpoints`, capacity and allocatable, `Ready`), as a kubelet registering;
//! - keeps its heartbeat: renews the node's Lease in `kube-node-lease` every
//!   [`NodeAgentConfig::lease_renew_interval`] and refreshes the Node's conditions every
//!   [`NodeAgentConfig::status_interval`], so kube-controller-manager's node-lifecycle
//!   controller keeps it Ready and untainted;
//! - runs the pods bound to it: a Pending pod is marked Running and Ready with container
//!   statuses and start times; a Running pod is served in the node's `/metrics/resource` with
//!   the usage its annotations ask for ([`crate::cluster::CPU_ANNOTATION`],
//!   [`crate::cluster::MEMORY_ANNOTATION`]: a test changes them with `kubectl annotate`), else
//!   its requests; a pod being deleted (graceful deletion) stops and is finalized with grace 0,
//!   as a kubelet confirms a pod's termination.
//!
//! Its kubelets authenticate scrapers as a real kubelet with `--authentication-token-webhook`
//! and `--authorization-mode=Webhook` does: a TokenReview of the bearer token, then a
//! SubjectAccessReview of `get nodes/metrics` for the user it names ([`webhook_token_check`]),
//! each verdict cached for [`WEBHOOK_CACHE_TTL`].

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::authentication::v1::{TokenReview, TokenReviewSpec};
use k8s_openapi::api::authorization::v1::{ResourceAttributes, SubjectAccessReview, SubjectAccessReviewSpec};
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{Node, Pod};
use kube::api::{DeleteParams, Patch, PatchParams, PostParams, Preconditions};
use kube::runtime::watcher::{self, Event, watcher};
use kube::runtime::WatchStreamExt;
use kube::{Api, Client};
use serde_json::{Value, json};
use shardmetrics_plumbing::clock::SharedClock;
use shardmetrics_plumbing::pki::Ca;
use tokio::task::JoinHandle;

use crate::apiserver::store::rfc3339;
use crate::cluster::{container_starts, container_usages, node_object, node_status, running_status, start_kubelet};
use crate::kubelet::{FleetConfig, KubeletError, KubeletFleet, SimKubelet, TokenCheck, TokenVerdict};

/// How long a kubelet's webhook verdict on a token is reused (kubelet's own defaults are 2
/// minutes for authentication and 5 minutes for an allowed authorization).
pub const WEBHOOK_CACHE_TTL: Duration = Duration::from_secs(60);

/// The field manager of the agent's server-side applies (node Leases).
const FIELD_MANAGER: &str = "shardmetrics-node-agent";

/// What can stop the agent from starting.
#[derive(Debug, thiserror::Error)]
pub enum NodeAgentError {
    /// A kubelet could not start.
    #[error(transparent)]
    Kubelet(#[from] KubeletError),
    /// The API server refused to register a node.
    #[error("registering node {node}: {source}")]
    Register {
        /// The node.
        node: String,
        /// What the API server said.
        source: kube::Error,
    },
    /// A Node object could not be built (a bug: the template is fixed).
    #[error("node object for {node}: {source}")]
    Object {
        /// The node.
        node: String,
        /// Why it did not deserialize.
        source: serde_json::Error,
    },
}

/// The simulated nodes and how they behave.
#[derive(Clone)]
pub struct NodeAgentConfig {
    /// Names of the nodes to register.
    pub nodes: Vec<String>,
    /// Node CPU capacity, in cores.
    pub node_cpu_cores: u64,
    /// Node memory capacity, in bytes.
    pub node_memory_bytes: u64,
    /// Memory oscillation amplitude of containers, in percent of their base (0: constant).
    pub memory_amplitude_percent: u64,
    /// Interval between renewals of each node's Lease (a kubelet renews every 10 s).
    pub lease_renew_interval: Duration,
    /// Interval between refreshes of each Node's conditions (a kubelet reports at least every
    /// 5 minutes when its Lease is kept).
    pub status_interval: Duration,
    /// Kubelet sample timestamps are rounded down to a multiple of this (zero: request time).
    pub sample_period: Duration,
    /// Signs the kubelets' serving certificate (scrapers verify it with this CA).
    pub kubelet_ca: Arc<Ca>,
    /// Wall clock for sample timestamps and status times.
    pub clock: SharedClock,
}

impl std::fmt::Debug for NodeAgentConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NodeAgentConfig").field("nodes", &self.nodes.len()).finish_non_exhaustive()
    }
}

/// A running node agent. Dropping it stops the kubelets and the agent's tasks (the Node objects
/// stay in the API server, as after a power cut).
pub struct NodeAgent {
    fleet: Arc<KubeletFleet>,
    tasks: Vec<JoinHandle<()>>,
    running: Arc<Mutex<BTreeSet<(String, String)>>>,
}

impl std::fmt::Debug for NodeAgent {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NodeAgent").field("kubelets", &self.fleet.len()).finish_non_exhaustive()
    }
}

impl NodeAgent {
    /// Starts a kubelet per node, registers the Nodes and starts following pods.
    pub async fn start(client: Client, config: NodeAgentConfig) -> Result<NodeAgent, NodeAgentError> {
        let mut fleet_config = FleetConfig::new(&config.kubelet_ca, webhook_token_check(client.clone(), config.clock.clone()))?;
        fleet_config.clock = config.clock.clone();
        fleet_config.sample_period = config.sample_period;
        let fleet = Arc::new(KubeletFleet::new(fleet_config)?);
        let nodes: Api<Node> = Api::all(client.clone());
        for name in &config.nodes {
            let kubelet = start_kubelet(&fleet, name).await?;
            register(&nodes, &config, name, kubelet.port()).await?;
        }
        let running = Arc::new(Mutex::new(BTreeSet::new()));
        let tasks = vec![
            tokio::spawn(heartbeats(client.clone(), config.clone())),
            tokio::spawn(follow_pods(client, fleet.clone(), config, running.clone())),
        ];
        Ok(NodeAgent { fleet, tasks, running })
    }

    /// The kubelets.
    pub fn fleet(&self) -> &Arc<KubeletFleet> {
        &self.fleet
    }

    /// The kubelet of `node`.
    pub fn kubelet(&self, node: &str) -> Option<Arc<SimKubelet>> {
        self.fleet.get(node)
    }

    /// Pods its kubelets run now, as (namespace, name).
    pub fn running_pods(&self) -> BTreeSet<(String, String)> {
        self.running.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }
}

impl Drop for NodeAgent {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
        self.fleet.stop_all();
    }
}

/// Creates the Node (or finds it) and writes its status, as a kubelet registering.
async fn register(nodes: &Api<Node>, config: &NodeAgentConfig, name: &str, port: u16) -> Result<(), NodeAgentError> {
    let value = node_object(name, port, config.node_cpu_cores, config.node_memory_bytes, config.clock.now_ms());
    let node: Node = serde_json::from_value(value.clone()).map_err(|source| NodeAgentError::Object { node: name.to_owned(), source })?;
    match nodes.create(&PostParams::default(), &node).await {
        Ok(_) => {}
        Err(kube::Error::Api(e)) if e.code == 409 => {}
        Err(source) => return Err(NodeAgentError::Register { node: name.to_owned(), source }),
    }
    let status = json!({ "status": value["status"] });
    nodes
        .patch_status(name, &PatchParams::default(), &Patch::Merge(&status))
        .await
        .map_err(|source| NodeAgentError::Register { node: name.to_owned(), source })?;
    Ok(())
}

/// Renews every node's Lease, and refreshes every Node's conditions, until aborted.
async fn heartbeats(client: Client, config: NodeAgentConfig) {
    let leases: Api<Lease> = Api::namespaced(client.clone(), "kube-node-lease");
    let nodes: Api<Node> = Api::all(client);
    let mut tick = tokio::time::interval(config.lease_renew_interval.max(Duration::from_secs(1)));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut last_status: Option<tokio::time::Instant> = None;
    let lease_seconds = (config.lease_renew_interval.as_secs() * 4).max(40);
    loop {
        tick.tick().await;
        let now_ms = config.clock.now_ms();
        let micro = jiff::Timestamp::from_millisecond(now_ms)
            .unwrap_or(jiff::Timestamp::UNIX_EPOCH)
            .strftime("%Y-%m-%dT%H:%M:%S%.6fZ")
            .to_string();
        for name in &config.nodes {
            let lease = json!({
                "apiVersion": "coordination.k8s.io/v1",
                "kind": "Lease",
                "metadata": {"name": name, "namespace": "kube-node-lease"},
                "spec": {"holderIdentity": name, "leaseDurationSeconds": lease_seconds, "renewTime": micro},
            });
            if let Err(e) = leases.patch(name, &PatchParams::apply(FIELD_MANAGER).force(), &Patch::Apply(&lease)).await {
                tracing::warn!(node = %name, error = %e, "renewing the node lease failed");
            }
        }
        let due = last_status.is_none_or(|t| t.elapsed() >= config.status_interval);
        if due {
            last_status = Some(tokio::time::Instant::now());
            let now = rfc3339(now_ms);
            for name in &config.nodes {
                let Some(port) = node_port(&nodes, name).await else { continue };
                let status = node_status(name, port, config.node_cpu_cores, config.node_memory_bytes, &now);
                let patch = json!({"status": {"conditions": status["conditions"]}});
                if let Err(e) = nodes.patch_status(name, &PatchParams::default(), &Patch::Merge(&patch)).await {
                    tracing::warn!(node = %name, error = %e, "refreshing the node status failed");
                }
            }
        }
    }
}

/// The kubelet port a Node's status names (None when the Node is gone).
async fn node_port(nodes: &Api<Node>, name: &str) -> Option<u16> {
    let node = nodes.get_opt(name).await.ok()??;
    let port = node.status?.daemon_endpoints?.kubelet_endpoint?.port;
    u16::try_from(port).ok()
}

/// Follows every pod of the cluster and runs those bound to the agent's nodes.
async fn follow_pods(client: Client, fleet: Arc<KubeletFleet>, config: NodeAgentConfig, running: Arc<Mutex<BTreeSet<(String, String)>>>) {
    let pods: Api<Pod> = Api::all(client.clone());
    let mut events = watcher(pods, watcher::Config::default()).default_backoff().boxed();
    let mut placed: HashMap<(String, String), String> = HashMap::new();
    let mut relisted: Option<BTreeMap<(String, String), Value>> = None;
    while let Some(event) = events.next().await {
        let event = match event {
            Ok(e) => e,
            Err(e) => {
                tracing::warn!(error = %e, "pod watch failed; retrying");
                continue;
            }
        };
        match event {
            Event::Init => relisted = Some(BTreeMap::new()),
            Event::InitApply(pod) => {
                if let (Some(all), Ok(v)) = (relisted.as_mut(), serde_json::to_value(&pod)) {
                    all.insert(key_of(&v), v);
                }
            }
            Event::InitDone => {
                let all = relisted.take().unwrap_or_default();
                for (key, node) in placed.clone() {
                    if !all.contains_key(&key) {
                        stop_pod(&fleet, &mut placed, &running, &key, &node);
                    }
                }
                for pod in all.values() {
                    apply_pod(&client, &fleet, &config, &mut placed, &running, pod).await;
                }
            }
            Event::Apply(pod) => {
                if let Ok(v) = serde_json::to_value(&pod) {
                    apply_pod(&client, &fleet, &config, &mut placed, &running, &v).await;
                }
            }
            Event::Delete(pod) => {
                if let Ok(v) = serde_json::to_value(&pod) {
                    let key = key_of(&v);
                    if let Some(node) = placed.get(&key).cloned() {
                        stop_pod(&fleet, &mut placed, &running, &key, &node);
                    }
                }
            }
        }
    }
}

fn key_of(pod: &Value) -> (String, String) {
    let ns = pod["metadata"]["namespace"].as_str().unwrap_or("").to_owned();
    let name = pod["metadata"]["name"].as_str().unwrap_or("").to_owned();
    (ns, name)
}

fn stop_pod(
    fleet: &KubeletFleet,
    placed: &mut HashMap<(String, String), String>,
    running: &Mutex<BTreeSet<(String, String)>>,
    key: &(String, String),
    node: &str,
) {
    if let Some(k) = fleet.get(node) {
        k.remove_pod(&key.0, &key.1);
    }
    placed.remove(key);
    running.lock().unwrap_or_else(|p| p.into_inner()).remove(key);
}

/// One pod's state as the kubelet of its node sees it.
async fn apply_pod(
    client: &Client,
    fleet: &KubeletFleet,
    config: &NodeAgentConfig,
    placed: &mut HashMap<(String, String), String>,
    running: &Mutex<BTreeSet<(String, String)>>,
    pod: &Value,
) {
    let key = key_of(pod);
    let node = pod["spec"]["nodeName"].as_str().unwrap_or("").to_owned();
    if let Some(prev) = placed.get(&key).cloned()
        && prev != node
    {
        stop_pod(fleet, placed, running, &key, &prev);
    }
    let Some(kubelet) = fleet.get(&node) else { return };
    let api: Api<Pod> = Api::namespaced(client.clone(), &key.0);
    if !pod["metadata"]["deletionTimestamp"].is_null() {
        // Graceful deletion: the containers stop, then the kubelet confirms with grace 0.
        stop_pod(fleet, placed, running, &key, &node);
        let uid = pod["metadata"]["uid"].as_str().map(str::to_owned);
        let params = DeleteParams {
            grace_period_seconds: Some(0),
            preconditions: Some(Preconditions { uid, resource_version: None }),
            ..DeleteParams::default()
        };
        if let Err(e) = api.delete(&key.1, &params).await
            && !matches!(&e, kube::Error::Api(a) if a.code == 404 || a.code == 409)
        {
            tracing::warn!(pod = %format!("{}/{}", key.0, key.1), error = %e, "finalizing a deleted pod failed");
        }
        return;
    }
    match pod["status"]["phase"].as_str() {
        Some("Running") => {
            let starts = container_starts(pod);
            let containers = container_usages(pod, config.memory_amplitude_percent)
                .into_iter()
                .map(|u| {
                    let start = starts.get(&u.name).copied().unwrap_or(0);
                    (u, start)
                })
                .collect();
            kubelet.upsert_pod(&key.0, &key.1, containers);
            placed.insert(key.clone(), node);
            running.lock().unwrap_or_else(|p| p.into_inner()).insert(key);
        }
        Some("Pending") | None => {
            let now = rfc3339(config.clock.now_ms());
            let patch = json!({ "status": running_status(pod, &now) });
            if let Err(e) = api.patch_status(&key.1, &PatchParams::default(), &Patch::Merge(&patch)).await {
                tracing::warn!(pod = %format!("{}/{}", key.0, key.1), error = %e, "starting a pending pod failed");
            }
        }
        _ => stop_pod(fleet, placed, running, &key, &node),
    }
}

/// A kubelet's webhook authentication and authorization against the API server `client` talks
/// to: TokenReview, then SubjectAccessReview of `get nodes/metrics` for the token's user; each
/// verdict cached for [`WEBHOOK_CACHE_TTL`]. A failed review call is a 401 (not cached).
pub fn webhook_token_check(client: Client, clock: SharedClock) -> TokenCheck {
    type Cache = Mutex<HashMap<String, (TokenVerdict, i64)>>;
    let cache: Arc<Cache> = Arc::new(Mutex::new(HashMap::new()));
    Arc::new(move |token: &str| {
        let (client, clock, cache, token) = (client.clone(), clock.clone(), cache.clone(), token.to_owned());
        Box::pin(async move {
            let now = clock.now_ms();
            if let Some((verdict, at)) = cache.lock().unwrap_or_else(|p| p.into_inner()).get(&token)
                && now - at < WEBHOOK_CACHE_TTL.as_millis() as i64
            {
                return *verdict;
            }
            match review(&client, &token).await {
                Ok(verdict) => {
                    let mut c = cache.lock().unwrap_or_else(|p| p.into_inner());
                    c.retain(|_, (_, at)| now - *at < WEBHOOK_CACHE_TTL.as_millis() as i64);
                    c.insert(token, (verdict, now));
                    verdict
                }
                Err(e) => {
                    tracing::warn!(error = %e, "kubelet webhook review failed");
                    TokenVerdict::Unknown
                }
            }
        })
    })
}

async fn review(client: &Client, token: &str) -> Result<TokenVerdict, kube::Error> {
    let reviews: Api<TokenReview> = Api::all(client.clone());
    let tr = TokenReview { spec: TokenReviewSpec { token: Some(token.to_owned()), audiences: None }, ..TokenReview::default() };
    let status = reviews.create(&PostParams::default(), &tr).await?.status.unwrap_or_default();
    let Some(user) = status.user.filter(|_| status.authenticated == Some(true)) else {
        return Ok(TokenVerdict::Unknown);
    };
    let sars: Api<SubjectAccessReview> = Api::all(client.clone());
    let sar = SubjectAccessReview {
        spec: SubjectAccessReviewSpec {
            user: user.username,
            groups: user.groups,
            uid: user.uid,
            extra: user.extra,
            resource_attributes: Some(ResourceAttributes {
                verb: Some("get".into()),
                resource: Some("nodes".into()),
                subresource: Some("metrics".into()),
                ..ResourceAttributes::default()
            }),
            ..SubjectAccessReviewSpec::default()
        },
        ..SubjectAccessReview::default()
    };
    let allowed = sars.create(&PostParams::default(), &sar).await?.status.is_some_and(|s| s.allowed);
    Ok(if allowed { TokenVerdict::Allowed } else { TokenVerdict::Forbidden })
}
