//! A simulated cluster: Node and Pod objects in the API-server simulator, and a kubelet per
//! node that reports the pods bound to it.
//!
//! [`Cluster::start`] creates N nodes x P pods x C containers and their kubelets; afterwards the
//! cluster follows the API server like real kubelets would, whoever changes it (a test through
//! [`Cluster`] methods, kube-rs, or `kubectl`):
//!
//! - a Pod bound to a simulated node appears in that kubelet's `/metrics/resource` while it is
//!   `Running`; a `Pending` one is started (status patched to Running, as a kubelet does); a
//!   deleted, finished or re-bound one disappears;
//! - a Node without a kubelet endpoint gets a new kubelet, and its status is patched with
//!   `InternalIP 127.0.0.1`, the kubelet port and a Ready condition (a kubelet registering);
//!   a Node whose endpoint port is that of an unclaimed kubelet of the fleet is left as is;
//!   deleting a Node stops its kubelet;
//! - container usage comes from the pod annotations `sim.shardmetrics.io/cpu-millicores` and
//!   `sim.shardmetrics.io/memory-bytes` (per container), else from the container's resource
//!   requests, else from a hash of its name; a container reported with a later `startedAt`
//!   restarts (counter from zero);
//! - swap: half of the nodes have swap (`status.nodeInfo.swap.capacity`, see
//!   [`crate::kubelet::usage::node_swap_capacity_bytes`]) and report each container's swap in
//!   use: the annotation `sim.shardmetrics.io/swap-bytes`, else 1-64 MiB for a third of the
//!   containers (by a hash of the name) and 0 for the rest.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use serde_json::{Value, json};
use shardmetrics_plumbing::clock::SharedClock;
use tokio::sync::{broadcast, watch};
use tokio::task::JoinHandle;

use crate::apiserver::resources::{NODES, PODS};
use crate::apiserver::store::{Change, EventType, Part, Store, rfc3339};
use crate::apiserver::{ApiError, RunningApiServer};
use crate::kubelet::servers::KubeletServerCommand;
use crate::kubelet::{ContainerUsage, FleetConfig, KubeletError, KubeletFleet, SimKubelet};

/// Pod annotation: CPU rate of each container, in millicores.
pub const CPU_ANNOTATION: &str = "sim.shardmetrics.io/cpu-millicores";
/// Pod annotation: memory working set of each container, in bytes.
pub const MEMORY_ANNOTATION: &str = "sim.shardmetrics.io/memory-bytes";
/// Pod annotation: swap in use by each container on a node with swap, in bytes.
pub const SWAP_ANNOTATION: &str = "sim.shardmetrics.io/swap-bytes";
/// Label put on every node the cluster creates.
pub const SIM_NODE_LABEL: &str = "sim.shardmetrics.io/node";

/// User of [`NOACCESS_TOKEN`]: authenticated, allowed nothing but discovery.
pub const NOACCESS_USER: &str = "demo-noaccess";
/// Bearer token of [`NOACCESS_USER`].
pub const NOACCESS_TOKEN: &str = "shardmetrics-sim-noaccess-token";
/// User of [`SCRAPER_TOKEN`]: the scraper shards' service account.
pub const SCRAPER_USER: &str = "system:serviceaccount:kube-system:shardmetrics-scraper";
/// Bearer token of [`SCRAPER_USER`] (also what the scrapers present to kubelets).
pub const SCRAPER_TOKEN: &str = "shardmetrics-sim-scraper-token";
/// User of [`FRONTEND_TOKEN`]: the frontend replicas' service account.
pub const FRONTEND_USER: &str = "system:serviceaccount:kube-system:shardmetrics-frontend";
/// Bearer token of [`FRONTEND_USER`].
pub const FRONTEND_TOKEN: &str = "shardmetrics-sim-frontend-token";
/// User of [`METRICS_SERVER_TOKEN`]: metrics-server's service account (the peer that `run
/// --compare metrics-server` measures against shardmetrics).
pub const METRICS_SERVER_USER: &str = "system:serviceaccount:kube-system:metrics-server";
/// Bearer token of [`METRICS_SERVER_USER`] (also what metrics-server presents to kubelets).
pub const METRICS_SERVER_TOKEN: &str = "shardmetrics-sim-metrics-server-token";

/// The policy of a simulated cluster running shardmetrics, mirroring the RBAC of `deploy/`:
/// - `admin` ([`crate::apiserver::DEFAULT_ADMIN_TOKEN`]): `system:masters`;
/// - [`SCRAPER_USER`]: read nodes, `get nodes/metrics`, manage Leases;
/// - [`FRONTEND_USER`]: read nodes, pods and Leases, the `extension-apiserver-authentication`
///   ConfigMap, create TokenReviews and SubjectAccessReviews;
/// - [`METRICS_SERVER_USER`]: what upstream metrics-server's `manifests/base/rbac.yaml` grants
///   (`system:metrics-server`: read nodes and pods, `get nodes/metrics`; `system:auth-delegator`:
///   TokenReviews and SubjectAccessReviews; `extension-apiserver-authentication-reader`: the
///   ConfigMaps of kube-system);
/// - [`NOACCESS_USER`]: nothing beyond discovery.
pub fn standard_policy() -> crate::apiserver::Policy {
    use crate::apiserver::{DEFAULT_ADMIN, DEFAULT_ADMIN_TOKEN, MASTERS, Policy, Rule, UserInfo};
    let sa_groups = ["system:serviceaccounts", "system:serviceaccounts:kube-system"];
    Policy::new()
        .with_token(DEFAULT_ADMIN_TOKEN, UserInfo::new(DEFAULT_ADMIN, &[MASTERS]))
        .with_token(NOACCESS_TOKEN, UserInfo::new(NOACCESS_USER, &[]))
        .with_token(SCRAPER_TOKEN, UserInfo::new(SCRAPER_USER, &sa_groups))
        .with_token(FRONTEND_TOKEN, UserInfo::new(FRONTEND_USER, &sa_groups))
        .with_rule(Rule::user(SCRAPER_USER).verbs(&["get", "list", "watch"]).api_groups(&[""]).resources(&["nodes"]))
        .with_rule(Rule::user(SCRAPER_USER).verbs(&["get"]).api_groups(&[""]).resources(&["nodes/metrics"]))
        .with_rule(
            Rule::user(SCRAPER_USER)
                .verbs(&["get", "list", "watch", "create", "update", "patch", "delete"])
                .api_groups(&["coordination.k8s.io"])
                .resources(&["leases"]),
        )
        .with_rule(Rule::user(FRONTEND_USER).verbs(&["get", "list", "watch"]).api_groups(&[""]).resources(&["nodes", "pods"]))
        .with_rule(Rule::user(FRONTEND_USER).verbs(&["get", "list", "watch"]).api_groups(&["coordination.k8s.io"]).resources(&["leases"]))
        .with_rule(
            Rule::user(FRONTEND_USER).verbs(&["get", "list", "watch"]).api_groups(&[""]).resources(&["configmaps"]).namespaces(&["kube-system"]),
        )
        .with_rule(Rule::user(FRONTEND_USER).verbs(&["create"]).api_groups(&["authentication.k8s.io"]).resources(&["tokenreviews"]))
        .with_rule(Rule::user(FRONTEND_USER).verbs(&["create"]).api_groups(&["authorization.k8s.io"]).resources(&["subjectaccessreviews"]))
        .with_token(METRICS_SERVER_TOKEN, UserInfo::new(METRICS_SERVER_USER, &sa_groups))
        .with_rule(Rule::user(METRICS_SERVER_USER).verbs(&["get", "list", "watch"]).api_groups(&[""]).resources(&["nodes", "pods"]))
        .with_rule(Rule::user(METRICS_SERVER_USER).verbs(&["get"]).api_groups(&[""]).resources(&["nodes/metrics"]))
        .with_rule(
            Rule::user(METRICS_SERVER_USER).verbs(&["get", "list", "watch"]).api_groups(&[""]).resources(&["configmaps"]).namespaces(&["kube-system"]),
        )
        .with_rule(Rule::user(METRICS_SERVER_USER).verbs(&["create"]).api_groups(&["authentication.k8s.io"]).resources(&["tokenreviews"]))
        .with_rule(
            Rule::user(METRICS_SERVER_USER).verbs(&["create"]).api_groups(&["authorization.k8s.io"]).resources(&["subjectaccessreviews"]),
        )
}

/// Errors building or changing the cluster.
#[derive(Debug, thiserror::Error)]
pub enum ClusterError {
    /// The API server refused a change.
    #[error(transparent)]
    Api(#[from] ApiError),
    /// A kubelet could not start.
    #[error(transparent)]
    Kubelet(#[from] KubeletError),
    /// The named object does not exist in the simulation.
    #[error("{0}")]
    Missing(String),
    /// This process cannot hold the cluster asked for (too few file descriptors).
    #[error("{0}")]
    Limit(String),
}

/// Open files one simulated kubelet needs where it is served, at the least: its listener and
/// one scraper's keep-alive connection ([`KubeletServers::clients_per_kubelet`] adds more).
pub const FILES_PER_KUBELET: u64 = 2;

/// Open files kept for the rest of this process (API server, clients, logs, watches).
const FILES_HEADROOM: u64 = 512;

/// Open files kept for the rest of a kubelet server child (its pipes and log, the connection to
/// this process, the runtime's own descriptors).
const SERVER_FILES_HEADROOM: u64 = 128;

/// Most kubelet server children a cluster starts.
pub const MAX_KUBELET_SERVERS: usize = 64;

/// Loopback ports left to everything else when kubelet listeners take theirs from the local
/// port range.
const PORTS_HEADROOM: u64 = 1024;

/// How a cluster's kubelets are spread over processes: all in this one while its open-files
/// limit holds them (and no more servers are asked for), else over kubelet server children
/// ([`crate::kubelet::servers`]) that each hold a share of the listeners and connections.
#[derive(Debug, Clone)]
pub struct KubeletServers {
    /// How to start a child; `None`: every kubelet in this process, and a cluster that does not
    /// fit under its limit is refused.
    pub command: Option<KubeletServerCommand>,
    /// Start at least this many children even when this process could hold every kubelet (0:
    /// only as many as the limit needs); tests set it to exercise the children cheaply.
    pub min_servers: usize,
    /// Client connections each kubelet holds at once where it is served (one open file each):
    /// 1 for one scraper's keep-alive connection; more where a floor or several
    /// metrics-server replicas connect to every kubelet too.
    pub clients_per_kubelet: u64,
}

impl Default for KubeletServers {
    fn default() -> Self {
        KubeletServers { command: None, min_servers: 0, clients_per_kubelet: FILES_PER_KUBELET - 1 }
    }
}

/// The open-files and port limits a cluster is planned against.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ProcessLimits {
    /// Soft `Max open files` of this process (children inherit it); `None`: unlimited.
    pub open_files: Option<u64>,
    /// Size of the local port range listeners on port 0 draw from; `None`: unknown.
    pub local_ports: Option<u64>,
}

impl ProcessLimits {
    /// This process's limits, from `/proc/self/limits` and `/proc/sys/net/ipv4/ip_local_port_range`.
    pub fn current() -> ProcessLimits {
        ProcessLimits {
            open_files: std::fs::read_to_string("/proc/self/limits").ok().as_deref().and_then(open_files_limit),
            local_ports: std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range").ok().as_deref().and_then(port_range_size),
        }
    }
}

/// How many kubelet server children `nodes` kubelets need under `limits` (0: all in this
/// process), or why they cannot be held: a listener and `clients_per_kubelet` connections per
/// kubelet where it is served, [`FILES_HEADROOM`] for this process and [`SERVER_FILES_HEADROOM`]
/// for each child, one local port per listener.
pub fn plan_kubelet_servers(nodes: usize, limits: ProcessLimits, servers: &KubeletServers) -> Result<usize, ClusterError> {
    let files = 1 + servers.clients_per_kubelet.max(1);
    let clients = files - 1;
    if let Some(ports) = limits.local_ports
        && nodes as u64 + PORTS_HEADROOM > ports
    {
        return Err(ClusterError::Limit(format!(
            "{nodes} simulated kubelets need {nodes} listening ports from the local port range, which has {ports} (and every outgoing connection draws from it too): widen net.ipv4.ip_local_port_range or simulate fewer nodes"
        )));
    }
    let in_process = nodes as u64 * files + FILES_HEADROOM;
    if servers.min_servers == 0 && limits.open_files.is_none_or(|limit| in_process <= limit) {
        return Ok(0);
    }
    let limit = limits.open_files.unwrap_or(u64::MAX);
    if servers.command.is_none() && in_process <= limit {
        return Err(ClusterError::Limit(format!("{} kubelet server processes were asked for, but no kubelet server program is set", servers.min_servers)));
    }
    if servers.command.is_none() {
        return Err(ClusterError::Limit(format!(
            "{nodes} simulated kubelets need at least {in_process} open files in this process (a listener and {clients} client connection(s) each, plus {FILES_HEADROOM}), but its limit is {limit} (ulimit -n), and no kubelet server program is set to spread them over processes: raise the hard limit or simulate fewer nodes"
        )));
    }
    let per_server = limit.saturating_sub(SERVER_FILES_HEADROOM) / files;
    if per_server == 0 {
        return Err(ClusterError::Limit(format!(
            "a kubelet server process needs at least {} open files for one kubelet ({files} for it, {SERVER_FILES_HEADROOM} for the rest), but the limit is {limit} (ulimit -n)",
            files + SERVER_FILES_HEADROOM
        )));
    }
    let needed = (nodes as u64).div_ceil(per_server) as usize;
    let count = needed.max(servers.min_servers).min(nodes.max(1));
    if count > MAX_KUBELET_SERVERS {
        return Err(ClusterError::Limit(format!(
            "{nodes} simulated kubelets at {files} open files each (a listener and {clients} client connection(s)) need {count} kubelet server processes of at most {per_server} kubelets under the open-files limit of {limit} (ulimit -n), more than {MAX_KUBELET_SERVERS}: raise the hard limit or simulate fewer nodes"
        )));
    }
    Ok(count)
}

/// The soft `Max open files` of a `/proc/<pid>/limits` text (`None` when unlimited or absent).
pub fn open_files_limit(limits: &str) -> Option<u64> {
    let line = limits.lines().find(|l| l.starts_with("Max open files"))?;
    line["Max open files".len()..].split_whitespace().next()?.parse().ok()
}

/// Ports in an `ip_local_port_range` text (`32768\t60999`).
fn port_range_size(text: &str) -> Option<u64> {
    let mut f = text.split_whitespace().map(|v| v.parse::<u64>().ok());
    let (low, high) = (f.next()??, f.next()??);
    (high >= low).then(|| high - low + 1)
}

/// The shape of the cluster to build.
#[derive(Clone)]
pub struct ClusterConfig {
    /// Number of nodes.
    pub nodes: usize,
    /// Pods per node.
    pub pods_per_node: usize,
    /// Containers per pod.
    pub containers_per_pod: usize,
    /// Namespaces pods are spread over (round robin); created if missing.
    pub namespaces: Vec<String>,
    /// Distinct `app` label values per namespace.
    pub apps_per_namespace: usize,
    /// Node names are this prefix plus a zero-padded index.
    pub node_prefix: String,
    /// Node CPU capacity, in cores.
    pub node_cpu_cores: u64,
    /// Node memory capacity, in bytes.
    pub node_memory_bytes: u64,
    /// Memory oscillation amplitude, in percent of each container's base (0: constant).
    pub memory_amplitude_percent: u64,
    /// Sample timestamps are rounded down to a multiple of this (zero: request time).
    pub sample_period: Duration,
    /// Wall clock for kubelets and object timestamps.
    pub clock: SharedClock,
    /// Which processes serve the kubelets (this one by default).
    pub kubelet_servers: KubeletServers,
}

impl std::fmt::Debug for ClusterConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClusterConfig")
            .field("nodes", &self.nodes)
            .field("pods_per_node", &self.pods_per_node)
            .field("containers_per_pod", &self.containers_per_pod)
            .finish_non_exhaustive()
    }
}

impl Default for ClusterConfig {
    fn default() -> Self {
        ClusterConfig {
            nodes: 3,
            pods_per_node: 5,
            containers_per_pod: 1,
            namespaces: ["default", "team-a", "team-b", "team-c", "batch"].iter().map(|s| (*s).to_owned()).collect(),
            apps_per_namespace: 3,
            node_prefix: "sim-node-".into(),
            node_cpu_cores: 8,
            node_memory_bytes: 32 << 30,
            memory_amplitude_percent: 10,
            sample_period: Duration::ZERO,
            clock: shardmetrics_plumbing::clock::system(),
            kubelet_servers: KubeletServers::default(),
        }
    }
}

/// A pod to add.
#[derive(Debug, Clone)]
pub struct PodSpec {
    /// Namespace (must exist).
    pub namespace: String,
    /// Name.
    pub name: String,
    /// Node it is bound to.
    pub node: String,
    /// Labels.
    pub labels: BTreeMap<String, String>,
    /// Containers and their usage.
    pub containers: Vec<ContainerUsage>,
}

fn hash(s: &str) -> u64 {
    // FNV-1a: stable across runs and platforms.
    s.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3))
}

fn short_hash(s: &str, len: usize) -> String {
    const ALPHABET: &[u8] = b"bcdfghjklmnpqrstvwxz2456789";
    let mut h = hash(s);
    (0..len)
        .map(|_| {
            let c = ALPHABET[(h % ALPHABET.len() as u64) as usize] as char;
            h /= ALPHABET.len() as u64;
            c
        })
        .collect()
}

/// Parses a Kubernetes quantity (`250m`, `1.5`, `128Mi`, `1G`, `1e3`) into base units.
pub fn parse_quantity(q: &str) -> Option<f64> {
    let q = q.trim();
    let suffixes: [(&str, f64); 14] = [
        ("Ki", 1024.0),
        ("Mi", 1024f64.powi(2)),
        ("Gi", 1024f64.powi(3)),
        ("Ti", 1024f64.powi(4)),
        ("Pi", 1024f64.powi(5)),
        ("Ei", 1024f64.powi(6)),
        ("n", 1e-9),
        ("u", 1e-6),
        ("m", 1e-3),
        ("k", 1e3),
        ("M", 1e6),
        ("G", 1e9),
        ("T", 1e12),
        ("P", 1e15),
    ];
    for (suffix, factor) in suffixes {
        if let Some(n) = q.strip_suffix(suffix) {
            return n.parse::<f64>().ok().filter(|v| v.is_finite() && *v >= 0.0).map(|v| v * factor);
        }
    }
    if let Some(n) = q.strip_suffix('E') {
        return n.parse::<f64>().ok().map(|v| v * 1e18);
    }
    q.parse::<f64>().ok().filter(|v| v.is_finite() && *v >= 0.0)
}

/// The usage of each container of a pod object, by the rules in the module doc.
pub fn container_usages(pod: &Value, amplitude_percent: u64) -> Vec<ContainerUsage> {
    let annotations = &pod["metadata"]["annotations"];
    let ann = |k: &str| annotations[k].as_str().and_then(|v| v.trim().parse::<u64>().ok());
    let ns = pod["metadata"]["namespace"].as_str().unwrap_or("");
    let name = pod["metadata"]["name"].as_str().unwrap_or("");
    let containers = pod["spec"]["containers"].as_array().cloned().unwrap_or_default();
    containers
        .iter()
        .filter_map(|c| {
            let cname = c["name"].as_str()?;
            let requests = &c["resources"]["requests"];
            let h = hash(&format!("{ns}/{name}/{cname}"));
            let cpu = ann(CPU_ANNOTATION)
                .or_else(|| requests["cpu"].as_str().and_then(parse_quantity).map(|v| (v * 1000.0).round() as u64))
                .unwrap_or(10 + h % 490);
            let mem = ann(MEMORY_ANNOTATION)
                .or_else(|| requests["memory"].as_str().and_then(parse_quantity).map(|v| v.round() as u64))
                .unwrap_or((20 + (h >> 16) % 480) << 20);
            let mut u = ContainerUsage::new(cname, cpu, mem);
            u.memory_amplitude_bytes = mem * amplitude_percent.min(100) / 100;
            u.swap_bytes = ann(SWAP_ANNOTATION).unwrap_or_else(|| default_swap_bytes(h));
            Some(u)
        })
        .collect()
}

/// Swap in use by a container without the swap annotation, from the hash of its name: 1-64 MiB
/// for a third of the containers, 0 for the rest.
fn default_swap_bytes(h: u64) -> u64 {
    if (h >> 40).is_multiple_of(3) { (1 + (h >> 24) % 64) << 20 } else { 0 }
}

fn parse_time_ms(v: &Value) -> Option<i64> {
    v.as_str()?.parse::<jiff::Timestamp>().ok().map(|t| t.as_millisecond())
}

/// Start time of each container of a pod object: its `state.running.startedAt`, else the pod's
/// `status.startTime`, else its creation time.
pub(crate) fn container_starts(pod: &Value) -> BTreeMap<String, i64> {
    let fallback = parse_time_ms(&pod["status"]["startTime"])
        .or_else(|| parse_time_ms(&pod["metadata"]["creationTimestamp"]))
        .unwrap_or(0);
    let mut starts = BTreeMap::new();
    for c in pod["spec"]["containers"].as_array().into_iter().flatten() {
        if let Some(n) = c["name"].as_str() {
            starts.insert(n.to_owned(), fallback);
        }
    }
    for s in pod["status"]["containerStatuses"].as_array().into_iter().flatten() {
        if let (Some(n), Some(t)) = (s["name"].as_str(), parse_time_ms(&s["state"]["running"]["startedAt"])) {
            starts.insert(n.to_owned(), t);
        }
    }
    starts
}

/// The Node object a kubelet on `port` registers.
pub fn node_object(name: &str, port: u16, cpu_cores: u64, memory_bytes: u64, now_ms: i64) -> Value {
    let now = rfc3339(now_ms);
    let zone = ["zone-a", "zone-b", "zone-c"][(hash(name) % 3) as usize];
    json!({
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {
            "name": name,
            "labels": {
                "kubernetes.io/hostname": name,
                "kubernetes.io/os": "linux",
                "kubernetes.io/arch": "amd64",
                "node.kubernetes.io/instance-type": "sim.large",
                "topology.kubernetes.io/zone": zone,
                "node-role.kubernetes.io/worker": "",
                SIM_NODE_LABEL: "true",
            }
        },
        "spec": {},
        "status": node_status(name, port, cpu_cores, memory_bytes, &now),
    })
}

pub(crate) fn node_status(name: &str, port: u16, cpu_cores: u64, memory_bytes: u64, now: &str) -> Value {
    let cond = |ty: &str, status: &str, reason: &str, message: &str| {
        json!({"type": ty, "status": status, "reason": reason, "message": message,
            "lastHeartbeatTime": now, "lastTransitionTime": now})
    };
    let h = hash(name);
    let mut status = json!({
        "capacity": {"cpu": cpu_cores.to_string(), "memory": format!("{}Ki", memory_bytes / 1024), "pods": "110", "ephemeral-storage": "100Gi"},
        "allocatable": {
            "cpu": format!("{}m", cpu_cores * 1000 - 100),
            "memory": format!("{}Ki", (memory_bytes - (256 << 20)) / 1024),
            "pods": "110",
            "ephemeral-storage": "95Gi",
        },
        "conditions": [
            cond("MemoryPressure", "False", "KubeletHasSufficientMemory", "kubelet has sufficient memory available"),
            cond("DiskPressure", "False", "KubeletHasNoDiskPressure", "kubelet has no disk pressure"),
            cond("PIDPressure", "False", "KubeletHasSufficientPID", "kubelet has sufficient PID available"),
            cond("Ready", "True", "KubeletReady", "kubelet is posting ready status"),
        ],
        "addresses": [{"type": "InternalIP", "address": "127.0.0.1"}, {"type": "Hostname", "address": name}],
        "daemonEndpoints": {"kubeletEndpoint": {"Port": port}},
        "nodeInfo": {
            "machineID": format!("{h:016x}{:016x}", h.rotate_left(32)),
            "systemUUID": format!("{:08x}-0000-4000-8000-{:012x}", h as u32, h >> 16),
            "bootID": format!("{:08x}-0000-4000-8000-{:012x}", (h >> 32) as u32, h & 0xffff_ffff_ffff),
            "kernelVersion": "6.8.0-sim",
            "osImage": "shardmetrics simulated node",
            "containerRuntimeVersion": "containerd://2.1.0",
            "kubeletVersion": "v1.35.0",
            "operatingSystem": "linux",
            "architecture": "amd64",
        },
    });
    if let Some(swap) = crate::kubelet::usage::node_swap_capacity_bytes(name) {
        status["nodeInfo"]["swap"] = json!({"capacity": swap});
    }
    status
}

/// The status a kubelet reports for a running pod.
pub(crate) fn running_status(pod: &Value, now: &str) -> Value {
    let ns = pod["metadata"]["namespace"].as_str().unwrap_or("");
    let name = pod["metadata"]["name"].as_str().unwrap_or("");
    let h = hash(&format!("{ns}/{name}"));
    let ip = format!("10.{}.{}.{}", 64 + (h % 64), (h >> 8) % 256, 1 + (h >> 16) % 254);
    let old = &pod["status"]["containerStatuses"];
    let statuses: Vec<Value> = pod["spec"]["containers"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|c| {
            let cname = c["name"].as_str().unwrap_or("");
            let previous = old.as_array().and_then(|a| a.iter().find(|s| s["name"] == cname));
            let started = previous.and_then(|p| p["state"]["running"]["startedAt"].as_str()).unwrap_or(now);
            json!({
                "name": cname,
                "ready": true,
                "started": true,
                "restartCount": previous.and_then(|p| p["restartCount"].as_i64()).unwrap_or(0),
                "image": c["image"].as_str().unwrap_or("registry.k8s.io/pause:3.10"),
                "imageID": "",
                "containerID": format!("containerd://{:016x}{:016x}", hash(cname) ^ h, h),
                "state": {"running": {"startedAt": started}},
            })
        })
        .collect();
    let cond = |ty: &str| json!({"type": ty, "status": "True", "lastProbeTime": null, "lastTransitionTime": now});
    json!({
        "phase": "Running",
        "conditions": [cond("PodReadyToStartContainers"), cond("Initialized"), cond("Ready"), cond("ContainersReady"), cond("PodScheduled")],
        "hostIP": "127.0.0.1",
        "hostIPs": [{"ip": "127.0.0.1"}],
        "podIP": ip,
        "podIPs": [{"ip": ip}],
        "startTime": pod["status"]["startTime"].as_str().unwrap_or(now),
        "qosClass": "Burstable",
        "containerStatuses": statuses,
    })
}

/// The Pod object for `spec`, Running as a kubelet would report it.
pub fn pod_object(spec: &PodSpec, now_ms: i64) -> Value {
    let containers: Vec<Value> = spec
        .containers
        .iter()
        .map(|c| {
            json!({
                "name": c.name,
                "image": "registry.k8s.io/pause:3.10",
                "resources": {"requests": {"cpu": format!("{}m", c.cpu_millicores.max(1)), "memory": c.memory_base_bytes.to_string()}},
            })
        })
        .collect();
    let mut annotations = serde_json::Map::new();
    if let Some(first) = spec.containers.first()
        && spec.containers.iter().all(|c| c.cpu_millicores == first.cpu_millicores && c.memory_base_bytes == first.memory_base_bytes)
    {
        annotations.insert(CPU_ANNOTATION.into(), json!(first.cpu_millicores.to_string()));
        annotations.insert(MEMORY_ANNOTATION.into(), json!(first.memory_base_bytes.to_string()));
    }
    if let Some(first) = spec.containers.first()
        && spec.containers.iter().all(|c| c.swap_bytes == first.swap_bytes)
    {
        annotations.insert(SWAP_ANNOTATION.into(), json!(first.swap_bytes.to_string()));
    }
    let mut pod = json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": spec.name, "namespace": spec.namespace, "labels": spec.labels, "annotations": annotations},
        "spec": {"nodeName": spec.node, "containers": containers, "restartPolicy": "Always", "schedulerName": "default-scheduler"},
    });
    let now = rfc3339(now_ms);
    pod["status"] = running_status(&pod, &now);
    pod
}

/// A running simulated cluster. Dropping it stops the kubelets and the sync task.
pub struct Cluster {
    resyncs: Arc<std::sync::atomic::AtomicU64>,
    store: Arc<Store>,
    fleet: Arc<KubeletFleet>,
    config: ClusterConfig,
    synced: watch::Receiver<u64>,
    task: JoinHandle<()>,
}

impl std::fmt::Debug for Cluster {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Cluster").field("kubelets", &self.fleet.len()).finish_non_exhaustive()
    }
}

impl Cluster {
    /// Builds the cluster in `api` and starts following it. Kubelets trust tokens by `api`'s
    /// policy and client certificates signed by `api`'s CA, and serve a certificate from it.
    ///
    /// The kubelets are served from kubelet server children when this process's open-files
    /// limit cannot hold them or [`KubeletServers::min_servers`] asks for some (see
    /// [`plan_kubelet_servers`]); a cluster that fits nowhere is refused with what it needs.
    pub async fn start(api: &RunningApiServer, config: ClusterConfig) -> Result<Cluster, ClusterError> {
        let servers = plan_kubelet_servers(config.nodes, ProcessLimits::current(), &config.kubelet_servers)?;
        let mut fleet_config = FleetConfig::new(api.ca(), api.kubelet_token_check())?;
        fleet_config.client_ca = Some(api.ca().clone());
        fleet_config.clock = config.clock.clone();
        fleet_config.sample_period = config.sample_period;
        let fleet = Arc::new(match (&config.kubelet_servers.command, servers) {
            (Some(command), n) if n > 0 => {
                tracing::info!(kubelets = config.nodes, servers = n, "serving the kubelets from kubelet server processes");
                KubeletFleet::with_servers(fleet_config, command, n).await?
            }
            _ => KubeletFleet::new(fleet_config)?,
        });
        let store = api.store().clone();
        for ns in &config.namespaces {
            store.ensure_namespace(ns)?;
        }
        let (synced_tx, synced) = watch::channel(0u64);
        let width = config.nodes.saturating_sub(1).to_string().len().max(4);
        let mut pod_index = 0usize;
        for i in 0..config.nodes {
            let node = format!("{}{:0width$}", config.node_prefix, i);
            let kubelet = start_kubelet(&fleet, &node).await?;
            let obj = node_object(&node, kubelet.port(), config.node_cpu_cores, config.node_memory_bytes, config.clock.now_ms());
            store.create(NODES, "", obj)?;
            for _ in 0..config.pods_per_node {
                let spec = generated_pod(&config, &node, pod_index);
                pod_index += 1;
                store.create(PODS, &spec.namespace, pod_object(&spec, config.clock.now_ms()))?;
            }
        }
        // Subscribed after the bulk creation: the sync starts with a full resync of what exists,
        // and the creation burst (nodes x pods changes) never overflows its channel.
        let changes = store.subscribe();
        let resyncs = Arc::new(std::sync::atomic::AtomicU64::new(0));
        let sync = Sync { store: store.clone(), fleet: fleet.clone(), config: config.clone(), synced: synced_tx, resyncs: resyncs.clone() };
        let task = tokio::spawn(sync.run(changes));
        let cluster = Cluster { resyncs, store, fleet, config, synced, task };
        cluster.synced().await;
        Ok(cluster)
    }

    /// The kubelets.
    pub fn fleet(&self) -> &Arc<KubeletFleet> {
        &self.fleet
    }

    /// The kubelet of `node`.
    pub fn kubelet(&self, node: &str) -> Option<Arc<SimKubelet>> {
        self.fleet.get(node)
    }

    /// Names of the nodes that have a kubelet.
    pub fn node_names(&self) -> Vec<String> {
        self.fleet.all().iter().map(|k| k.node().to_owned()).collect()
    }

    /// The configuration it was built with.
    pub fn config(&self) -> &ClusterConfig {
        &self.config
    }

    /// Full reconciliations so far: one at start, one more each time the sync fell more than
    /// the store's broadcast capacity behind the API server (each is linear in nodes + pods).
    pub fn resyncs(&self) -> u64 {
        self.resyncs.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Waits until the kubelets reflect every change made to the API server so far.
    pub async fn synced(&self) {
        let target = self.store.last_change_rv();
        let mut rx = self.synced.clone();
        let _ = rx.wait_for(|rv| *rv >= target).await;
    }

    /// Adds a node (kubelet first, then the Node object) and waits until it is followed.
    pub async fn add_node(&self, name: &str) -> Result<Arc<SimKubelet>, ClusterError> {
        let kubelet = start_kubelet(&self.fleet, name).await?;
        let obj = node_object(name, kubelet.port(), self.config.node_cpu_cores, self.config.node_memory_bytes, self.config.clock.now_ms());
        if let Err(e) = self.store.create(NODES, "", obj) {
            self.fleet.stop(name);
            return Err(e.into());
        }
        self.synced().await;
        Ok(kubelet)
    }

    /// Deletes a Node object and the pods bound to it (as the pod garbage collector would); its
    /// kubelet stops.
    pub async fn remove_node(&self, name: &str) -> Result<(), ClusterError> {
        for pod in self.store.pods_on_node(name) {
            match self.store.delete(PODS, &pod.key.namespace, &pod.key.name, None, None) {
                Ok(_) | Err(ApiError::NotFound { .. }) => {}
                Err(e) => return Err(e.into()),
            }
        }
        self.store.delete(NODES, "", name, None, None)?;
        self.synced().await;
        Ok(())
    }

    /// Adds a running pod and waits until its kubelet reports it.
    pub async fn add_pod(&self, spec: &PodSpec) -> Result<(), ClusterError> {
        self.store.create(PODS, &spec.namespace, pod_object(spec, self.config.clock.now_ms()))?;
        self.synced().await;
        Ok(())
    }

    /// Deletes a pod and waits until its kubelet stops reporting it.
    pub async fn delete_pod(&self, namespace: &str, name: &str) -> Result<(), ClusterError> {
        self.store.delete(PODS, namespace, name, None, None)?;
        self.synced().await;
        Ok(())
    }

    /// Restarts a container: its counter starts from zero, and the pod status shows the new
    /// `startedAt` and one more restart.
    pub async fn restart_container(&self, namespace: &str, pod: &str, container: &str) -> Result<(), ClusterError> {
        let obj = self.store.get(PODS, namespace, pod)?;
        let node = obj.field("spec.nodeName").unwrap_or("").to_owned();
        let kubelet = self.fleet.get(&node).ok_or_else(|| ClusterError::Missing(format!("no kubelet for node {node:?}")))?;
        if !kubelet.restart_container(namespace, pod, container) {
            return Err(ClusterError::Missing(format!("container {namespace}/{pod}/{container} is not running")));
        }
        let start = kubelet
            .with_usage(|u| u.container(namespace, pod, container).map(|c| c.start_ms))
            .unwrap_or_else(|| self.config.clock.now_ms());
        self.store.modify(PODS, namespace, pod, Part::Status, |v| {
            if let Some(statuses) = v["status"]["containerStatuses"].as_array_mut() {
                for s in statuses.iter_mut().filter(|s| s["name"] == container) {
                    s["restartCount"] = json!(s["restartCount"].as_i64().unwrap_or(0) + 1);
                    s["state"] = json!({"running": {"startedAt": rfc3339(start)}});
                }
            }
            Ok(())
        })?;
        self.synced().await;
        Ok(())
    }

    /// Stops the kubelets and the sync task.
    pub fn shutdown(self) {}

    /// Stops the sync task and the kubelets, and waits until their kubelet server children (if
    /// any) have exited.
    pub async fn stop(&self) {
        self.task.abort();
        self.fleet.shutdown().await;
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        self.task.abort();
        self.fleet.stop_all();
    }
}

pub(crate) async fn start_kubelet(fleet: &KubeletFleet, node: &str) -> Result<Arc<SimKubelet>, KubeletError> {
    let h = hash(node);
    fleet.start(node, 50 + h % 200, (512 << 20) + (((h >> 8) % 512) << 20)).await
}

/// Five characters that look random but are distinct for every index below 27^5 (a bijection:
/// multiplication by a number coprime to 27^5, then base 27).
fn unique_suffix(index: usize) -> String {
    const ALPHABET: &[u8] = b"bcdfghjklmnpqrstvwxz2456789";
    const SPACE: u64 = 27 * 27 * 27 * 27 * 27;
    let mut n = (index as u64 % SPACE).wrapping_mul(7_919_117) % SPACE;
    (0..5)
        .map(|_| {
            let c = ALPHABET[(n % 27) as usize] as char;
            n /= 27;
            c
        })
        .collect()
}

fn generated_pod(config: &ClusterConfig, node: &str, pod_index: usize) -> PodSpec {
    let namespace = config.namespaces[pod_index % config.namespaces.len().max(1)].clone();
    let app = format!("app-{}", (pod_index / config.namespaces.len().max(1)) % config.apps_per_namespace.max(1));
    let template = short_hash(&format!("{namespace}/{app}"), 10);
    let name = format!("{app}-{template}-{}", unique_suffix(pod_index));
    let containers = (0..config.containers_per_pod.max(1))
        .map(|c| {
            let cname = if c == 0 { "main".to_owned() } else { format!("sidecar-{c}") };
            let h = hash(&format!("{namespace}/{name}/{cname}"));
            let mut u = ContainerUsage::new(&cname, 10 + h % 490, (20 + (h >> 16) % 480) << 20);
            u.memory_amplitude_bytes = u.memory_base_bytes * config.memory_amplitude_percent.min(100) / 100;
            u.swap_bytes = default_swap_bytes(h);
            u
        })
        .collect();
    let labels = BTreeMap::from([("app".to_owned(), app), ("pod-template-hash".to_owned(), template)]);
    PodSpec { namespace, name, node: node.to_owned(), labels, containers }
}

/// Keeps the kubelets in step with the API server.
struct Sync {
    store: Arc<Store>,
    fleet: Arc<KubeletFleet>,
    config: ClusterConfig,
    synced: watch::Sender<u64>,
    resyncs: Arc<std::sync::atomic::AtomicU64>,
}

impl Sync {
    async fn run(self, mut changes: broadcast::Receiver<Arc<Change>>) {
        self.resync().await;
        loop {
            match changes.recv().await {
                Ok(change) => {
                    self.apply(&change).await;
                    self.synced.send_replace(change.rv);
                }
                Err(broadcast::error::RecvError::Lagged(missed)) => {
                    tracing::warn!(missed, "cluster sync fell behind the API server; resyncing");
                    self.resync().await;
                }
                Err(broadcast::error::RecvError::Closed) => return,
            }
        }
    }

    /// Reconciles everything from scratch (start-up, or after falling behind).
    async fn resync(&self) {
        self.resyncs.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let rv = self.store.last_change_rv();
        let nodes = self.store.list(&crate::apiserver::store::Filter::all(NODES), &Default::default());
        let names: std::collections::HashSet<String> =
            nodes.map(|l| l.items.iter().map(|n| n.key.name.clone()).collect()).unwrap_or_default();
        for name in &names {
            if let Ok(node) = self.store.get(NODES, "", name) {
                self.node_changed(&node.value()).await;
            }
        }
        for kubelet in self.fleet.all() {
            if !names.contains(kubelet.node()) {
                self.fleet.stop(kubelet.node());
                continue;
            }
            self.reload_pods(&kubelet);
        }
        self.synced.send_replace(rv);
    }

    fn reload_pods(&self, kubelet: &SimKubelet) {
        let desired = self.store.pods_on_node(kubelet.node());
        let mut keep = std::collections::HashSet::new();
        for pod in desired {
            let v = pod.value();
            if self.pod_runs(&v) {
                keep.insert((pod.key.namespace.clone(), pod.key.name.clone()));
                self.upsert(kubelet, &v);
            }
        }
        for (ns, name) in kubelet.pods() {
            if !keep.contains(&(ns.clone(), name.clone())) {
                kubelet.remove_pod(&ns, &name);
            }
        }
    }

    fn pod_runs(&self, pod: &Value) -> bool {
        pod["status"]["phase"] == "Running"
    }

    fn upsert(&self, kubelet: &SimKubelet, pod: &Value) {
        let starts = container_starts(pod);
        let containers = container_usages(pod, self.config.memory_amplitude_percent)
            .into_iter()
            .map(|u| {
                let start = starts.get(&u.name).copied().unwrap_or(0);
                (u, start)
            })
            .collect();
        let ns = pod["metadata"]["namespace"].as_str().unwrap_or("");
        let name = pod["metadata"]["name"].as_str().unwrap_or("");
        kubelet.upsert_pod(ns, name, containers);
    }

    async fn apply(&self, change: &Change) {
        match change.object.resource {
            PODS => self.pod_changed(change),
            NODES => match change.kind {
                EventType::Deleted => {
                    self.fleet.stop(&change.object.key.name);
                }
                _ => self.node_changed(&change.object.value()).await,
            },
            _ => {}
        }
    }

    fn pod_changed(&self, change: &Change) {
        let pod = change.object.value();
        let ns = &change.object.key.namespace;
        let name = &change.object.key.name;
        let node = change.object.field("spec.nodeName").unwrap_or("").to_owned();
        if let Some(prev) = &change.previous {
            let prev_node = prev.field("spec.nodeName").unwrap_or("");
            if prev_node != node
                && let Some(k) = self.fleet.get(prev_node)
            {
                k.remove_pod(ns, name);
            }
        }
        let Some(kubelet) = self.fleet.get(&node) else { return };
        if change.kind == EventType::Deleted {
            kubelet.remove_pod(ns, name);
            return;
        }
        match pod["status"]["phase"].as_str() {
            Some("Running") => self.upsert(&kubelet, &pod),
            Some("Pending") | None => {
                // Start it, as the kubelet would; the resulting MODIFIED event adds it.
                let now = rfc3339(self.config.clock.now_ms());
                let result = self.store.modify(PODS, ns, name, Part::Status, |v| {
                    v["status"] = running_status(v, &now);
                    Ok(())
                });
                if let Err(e) = result {
                    tracing::warn!(pod = %format!("{ns}/{name}"), error = %e, "could not start a pending pod");
                }
            }
            _ => {
                kubelet.remove_pod(ns, name);
            }
        }
    }

    async fn node_changed(&self, node: &Value) {
        let Some(name) = node["metadata"]["name"].as_str() else { return };
        if self.fleet.get(name).is_some() {
            return;
        }
        let port = node["status"]["daemonEndpoints"]["kubeletEndpoint"]["Port"].as_u64().unwrap_or(0);
        if port != 0 {
            // Someone else's kubelet (or an unclaimed port): not ours to run.
            return;
        }
        let kubelet = match start_kubelet(&self.fleet, name).await {
            Ok(k) => k,
            Err(e) => {
                tracing::warn!(node = name, error = %e, "could not start a kubelet for a new node");
                return;
            }
        };
        let status = node_status(name, kubelet.port(), self.config.node_cpu_cores, self.config.node_memory_bytes, &rfc3339(self.config.clock.now_ms()));
        let result = self.store.modify(NODES, "", name, Part::Status, |v| {
            let mut merged = status.clone();
            if let (Value::Object(m), Value::Object(given)) = (&mut merged, &v["status"]) {
                // Keep what the creator set (capacity, conditions, ...), fill in the rest.
                for (k, val) in given {
                    if k != "daemonEndpoints" && k != "addresses" {
                        m.insert(k.clone(), val.clone());
                    }
                }
            }
            v["status"] = merged;
            Ok(())
        });
        if let Err(e) = result {
            tracing::warn!(node = name, error = %e, "could not register the kubelet endpoint");
        }
        self.reload_pods(&kubelet);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_cluster_larger_than_the_open_files_limit_is_refused_with_what_it_needs() {
        let limits = "Limit                     Soft Limit           Hard Limit           Units\nMax cpu time              unlimited            unlimited            seconds\nMax open files            20000                20000                files\n";
        assert_eq!(open_files_limit(limits), Some(20_000));
        assert_eq!(open_files_limit("Max open files            unlimited            unlimited            files\n"), None);
        assert_eq!(open_files_limit("garbage"), None);
        assert_eq!(port_range_size("32768\t60999\n"), Some(28_232));
        assert_eq!(port_range_size("5"), None);
        let here = ProcessLimits { open_files: Some(20_000), local_ports: Some(28_232) };
        let alone = KubeletServers::default();
        assert_eq!(plan_kubelet_servers(10, here, &alone).unwrap(), 0);
        assert_eq!(plan_kubelet_servers(9_744, here, &alone).unwrap(), 0, "2 files each + 512");
        let e = plan_kubelet_servers(10_000, here, &alone).unwrap_err().to_string();
        assert!(e.contains("simulated kubelets need at least 20512") && e.contains("ulimit -n") && e.contains("no kubelet server program"), "{e}");
        let e = plan_kubelet_servers(27_300, here, &alone).unwrap_err().to_string();
        assert!(e.contains("27300 listening ports") && e.contains("ip_local_port_range"), "{e}");
        assert_eq!(plan_kubelet_servers(usize::MAX / 4, ProcessLimits::default(), &alone).unwrap(), 0, "no limits known");
    }

    #[test]
    fn kubelets_that_one_process_cannot_hold_are_spread_over_enough_servers() {
        let here = ProcessLimits { open_files: Some(20_000), local_ports: Some(28_232) };
        let command = KubeletServerCommand { program: "loadtest".into(), args: vec!["kubelet-server".into()], log_dir: None };
        // A scraper and a floor connection per kubelet: 3 files each, 6624 per child.
        let split = KubeletServers { command: Some(command), min_servers: 0, clients_per_kubelet: 2 };
        assert_eq!(plan_kubelet_servers(5_000, here, &split).unwrap(), 0, "5000 x 3 + 512 fits here");
        assert_eq!(plan_kubelet_servers(8_000, here, &split).unwrap(), 2);
        assert_eq!(plan_kubelet_servers(10_000, here, &split).unwrap(), 2);
        assert_eq!(plan_kubelet_servers(14_000, here, &split).unwrap(), 3);
        // Asked for: at least that many, never more than one per kubelet.
        let forced = KubeletServers { min_servers: 3, ..split.clone() };
        assert_eq!(plan_kubelet_servers(30, here, &forced).unwrap(), 3);
        assert_eq!(plan_kubelet_servers(2, here, &forced).unwrap(), 2);
        // What fits nowhere is refused with what it needs.
        let tight = ProcessLimits { open_files: Some(1_000), local_ports: Some(28_232) };
        let e = plan_kubelet_servers(20_000, tight, &split).unwrap_err().to_string();
        assert!(e.contains("need 69 kubelet server processes of at most 290 kubelets") && e.contains("more than 64"), "{e}");
        let e = plan_kubelet_servers(10, ProcessLimits { open_files: Some(100), local_ports: None }, &split).unwrap_err().to_string();
        assert!(e.contains("needs at least 131 open files"), "{e}");
        let alone = KubeletServers { command: None, ..forced };
        assert!(plan_kubelet_servers(30, here, &alone).unwrap_err().to_string().contains("no kubelet server program"));
    }

    #[test]
    fn generated_pod_names_never_collide() {
        let mut seen = std::collections::HashSet::new();
        for i in 0..200_000 {
            assert!(seen.insert(unique_suffix(i)), "collision at {i}");
        }
    }

    #[test]
    fn quantities_parse_to_base_units() {
        assert_eq!(parse_quantity("250m"), Some(0.25));
        assert_eq!(parse_quantity("2"), Some(2.0));
        assert_eq!(parse_quantity("128Mi"), Some(134_217_728.0));
        assert_eq!(parse_quantity("1G"), Some(1e9));
        assert_eq!(parse_quantity("1e3"), Some(1000.0));
        assert_eq!(parse_quantity("lots"), None);
        assert_eq!(parse_quantity("-1"), None);
    }

    #[test]
    fn usage_comes_from_annotations_then_requests_then_a_hash() {
        let pod = json!({"metadata": {"name": "p", "namespace": "n", "annotations": {CPU_ANNOTATION: "300"}},
            "spec": {"containers": [
                {"name": "a", "resources": {"requests": {"cpu": "100m", "memory": "64Mi"}}},
                {"name": "b"}
            ]}});
        let u = container_usages(&pod, 0);
        assert_eq!((u[0].cpu_millicores, u[0].memory_base_bytes), (300, 64 << 20));
        assert_eq!(u[1].cpu_millicores, 300);
        assert!(u[1].memory_base_bytes >= 20 << 20);
        let again = container_usages(&pod, 0);
        assert_eq!(u, again, "hash-derived values are stable");
    }

    #[test]
    fn a_generated_pod_object_is_running_with_requests_matching_its_usage() {
        let spec = PodSpec {
            namespace: "ns".into(),
            name: "web-1".into(),
            node: "n1".into(),
            labels: BTreeMap::from([("app".to_owned(), "web".to_owned())]),
            containers: vec![ContainerUsage::new("main", 250, 100 << 20), ContainerUsage::new("side", 50, 10 << 20)],
        };
        let pod = pod_object(&spec, 1_700_000_000_000);
        assert_eq!(pod["status"]["phase"], "Running");
        assert_eq!(pod["status"]["containerStatuses"][1]["state"]["running"]["startedAt"], "2023-11-14T22:13:20Z");
        let usages = container_usages(&pod, 10);
        assert_eq!(usages[0].cpu_millicores, 250);
        assert_eq!(usages[1].memory_base_bytes, 10 << 20);
        assert_eq!(container_starts(&pod)["side"], 1_700_000_000_000);
    }
}
