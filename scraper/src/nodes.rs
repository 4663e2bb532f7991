//! Node discovery: which kubelets exist and where to reach them.
//!
//! A kube-rs watcher on Nodes (honouring `--node-selector`) keeps a map of trimmed
//! [`NodeTarget`]s: name, the one address chosen by `--kubelet-preferred-address-types`, and
//! the kubelet port (from `status.daemonEndpoints` or `--kubelet-port`). Everything else on the
//! Node object is dropped as soon as it arrives. Watch errors back off and retry; a re-list
//! (also after "resource version too old") replaces the whole view at once.

use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;
use std::sync::Arc;

use futures::StreamExt;
use k8s_openapi::api::core::v1::Node;
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Api, Client};
use tokio::sync::watch;

/// A Node address type, as in `status.addresses[].type`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum AddressType {
    /// The node's hostname as reported by the kubelet.
    Hostname,
    /// A DNS name routable only within the cluster.
    InternalDns,
    /// An IP routable only within the cluster.
    InternalIp,
    /// A DNS name routable from outside the cluster.
    ExternalDns,
    /// An IP routable from outside the cluster.
    ExternalIp,
}

impl AddressType {
    /// The spelling Kubernetes (and the flag) uses.
    pub fn as_str(self) -> &'static str {
        match self {
            AddressType::Hostname => "Hostname",
            AddressType::InternalDns => "InternalDNS",
            AddressType::InternalIp => "InternalIP",
            AddressType::ExternalDns => "ExternalDNS",
            AddressType::ExternalIp => "ExternalIP",
        }
    }

    /// metrics-server's default preference: `InternalIP,ExternalIP,Hostname`.
    pub fn default_preference() -> Vec<AddressType> {
        vec![AddressType::InternalIp, AddressType::ExternalIp, AddressType::Hostname]
    }
}

impl fmt::Display for AddressType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for AddressType {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.trim() {
            "Hostname" => Ok(AddressType::Hostname),
            "InternalDNS" => Ok(AddressType::InternalDns),
            "InternalIP" => Ok(AddressType::InternalIp),
            "ExternalDNS" => Ok(AddressType::ExternalDns),
            "ExternalIP" => Ok(AddressType::ExternalIp),
            other => Err(format!(
                "unknown node address type {other:?} (expected Hostname, InternalDNS, InternalIP, ExternalDNS or ExternalIP)"
            )),
        }
    }
}

/// Where to scrape one node: everything the scheduler and the kubelet client need.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct NodeTarget {
    /// Name of the Node object.
    pub name: String,
    /// Host to connect to (IP or DNS name, no brackets), chosen by address-type preference.
    pub host: String,
    /// Kubelet HTTPS port.
    pub port: u16,
    /// Request path: [`RESOURCE_METRICS_PATH`], unless the Node's
    /// [`RESOURCE_METRICS_PATH_ANNOTATION`] names another (how kwok serves many nodes on one port).
    pub path: String,
}

impl NodeTarget {
    /// A target scraped at the kubelet's own [`RESOURCE_METRICS_PATH`].
    pub fn new(name: impl Into<String>, host: impl Into<String>, port: u16) -> NodeTarget {
        NodeTarget { name: name.into(), host: host.into(), port, path: RESOURCE_METRICS_PATH.to_owned() }
    }
}

/// The kubelet's resource metrics path, scraped unless a Node's annotation says otherwise.
pub const RESOURCE_METRICS_PATH: &str = "/metrics/resource";

/// Node annotation naming the path to scrape on that node's kubelet endpoint (metrics-server
/// ≥ 0.7; kwok sets it to `/metrics/nodes/<node>/metrics/resource`). Empty means unset.
pub const RESOURCE_METRICS_PATH_ANNOTATION: &str = "metrics.k8s.io/resource-metrics-path";

/// The request target of an annotation's path, as Go's `url.URL{Path: p}.String()` writes it
/// for metrics-server: a `/` in front when missing, and every byte outside `A-Z a-z 0-9 - _ . ~
/// $ & + , / : ; = @` percent-encoded (so a `?` or `#` stays part of the path, never a query).
pub fn request_path(annotation: &str) -> String {
    let mut out = String::with_capacity(annotation.len() + 1);
    if !annotation.starts_with('/') {
        out.push('/');
    }
    for b in annotation.bytes() {
        if b.is_ascii_alphanumeric() || b"-_.~$&+,/:;=@".contains(&b) {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// How Node objects become [`NodeTarget`]s.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TargetRules {
    /// Address types in order of preference (`--kubelet-preferred-address-types`).
    pub preferred_address_types: Vec<AddressType>,
    /// Use `status.daemonEndpoints.kubeletEndpoint.Port` when set (`--kubelet-use-node-status-port`).
    pub use_node_status_port: bool,
    /// Port used otherwise (`--kubelet-port`).
    pub default_port: u16,
}

impl Default for TargetRules {
    fn default() -> Self {
        TargetRules { preferred_address_types: AddressType::default_preference(), use_node_status_port: true, default_port: 10250 }
    }
}

/// Why a Node cannot be scraped.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TargetError {
    /// The Node object has no name.
    #[error("node object without a name")]
    NoName,
    /// None of its addresses has a preferred type.
    #[error("node {node} has no address of type {wanted} (it has: {have})")]
    NoAddress {
        /// Node name.
        node: String,
        /// The preferred types, comma separated.
        wanted: String,
        /// The types it has, comma separated.
        have: String,
    },
}

impl TargetRules {
    /// Trims a Node to its scrape target.
    pub fn target(&self, node: &Node) -> Result<NodeTarget, TargetError> {
        let name = node.metadata.name.clone().filter(|n| !n.is_empty()).ok_or(TargetError::NoName)?;
        let status = node.status.as_ref();
        let addresses = status.and_then(|s| s.addresses.as_deref()).unwrap_or_default();
        let host = self
            .preferred_address_types
            .iter()
            .find_map(|t| addresses.iter().find(|a| a.type_ == t.as_str() && !a.address.is_empty()))
            .map(|a| a.address.clone())
            .ok_or_else(|| TargetError::NoAddress {
                node: name.clone(),
                wanted: self.preferred_address_types.iter().map(|t| t.as_str()).collect::<Vec<_>>().join(","),
                have: addresses.iter().map(|a| a.type_.as_str()).collect::<Vec<_>>().join(","),
            })?;
        let status_port = status
            .and_then(|s| s.daemon_endpoints.as_ref())
            .and_then(|d| d.kubelet_endpoint.as_ref())
            .map(|e| e.port)
            .and_then(|p| u16::try_from(p).ok())
            .filter(|&p| p != 0);
        let port = match (self.use_node_status_port, status_port) {
            (true, Some(p)) => p,
            _ => self.default_port,
        };
        let path = node
            .metadata
            .annotations
            .as_ref()
            .and_then(|a| a.get(RESOURCE_METRICS_PATH_ANNOTATION))
            .filter(|p| !p.is_empty())
            .map_or_else(|| RESOURCE_METRICS_PATH.to_owned(), |p| request_path(p));
        Ok(NodeTarget { name, host, port, path })
    }
}

/// The nodes currently known, by name. Shared behind an `Arc` so a new view is cheap to publish.
pub type NodeMap = Arc<BTreeMap<String, NodeTarget>>;

/// The view a [`watch_nodes`] task publishes.
#[derive(Debug, Clone, Default)]
pub struct NodeView {
    /// Scrapeable nodes by name.
    pub nodes: NodeMap,
    /// Whether the initial list has completed (readiness).
    pub synced: bool,
}

/// Applies watcher events to a node map; pure, so re-list semantics are unit-tested.
#[derive(Debug, Default)]
pub struct NodeTracker {
    current: BTreeMap<String, NodeTarget>,
    pending: Option<BTreeMap<String, NodeTarget>>,
    synced: bool,
    /// Nodes skipped because they have no usable address, with the reason (logged once per change).
    unusable: BTreeMap<String, TargetError>,
}

impl NodeTracker {
    /// Applies one watcher event; returns whether the published view changed.
    pub fn apply(&mut self, rules: &TargetRules, event: watcher::Event<Node>) -> bool {
        match event {
            watcher::Event::Apply(node) => {
                let name = node.metadata.name.clone().unwrap_or_default();
                match self.trim(rules, &node) {
                    Some(t) => self.current.insert(name, t.clone()) != Some(t),
                    None => self.current.remove(&name).is_some(),
                }
            }
            watcher::Event::Delete(node) => {
                let name = node.metadata.name.clone().unwrap_or_default();
                self.unusable.remove(&name);
                self.current.remove(&name).is_some()
            }
            watcher::Event::Init => {
                self.pending = Some(BTreeMap::new());
                false
            }
            watcher::Event::InitApply(node) => {
                let name = node.metadata.name.clone().unwrap_or_default();
                let trimmed = self.trim(rules, &node);
                if let (Some(p), Some(t)) = (self.pending.as_mut(), trimmed) {
                    p.insert(name, t);
                }
                false
            }
            watcher::Event::InitDone => {
                let Some(p) = self.pending.take() else { return false };
                self.unusable.retain(|n, _| !p.contains_key(n));
                let changed = p != self.current || !self.synced;
                self.current = p;
                self.synced = true;
                changed
            }
        }
    }

    fn trim(&mut self, rules: &TargetRules, node: &Node) -> Option<NodeTarget> {
        match rules.target(node) {
            Ok(t) => {
                self.unusable.remove(&t.name);
                Some(t)
            }
            Err(err) => {
                let name = node.metadata.name.clone().unwrap_or_default();
                if self.unusable.get(&name) != Some(&err) {
                    tracing::warn!(node = %name, error = %err, "node cannot be scraped");
                    self.unusable.insert(name, err);
                }
                None
            }
        }
    }

    /// The current view.
    pub fn view(&self) -> NodeView {
        NodeView { nodes: Arc::new(self.current.clone()), synced: self.synced }
    }
}

/// Watches Nodes (matching `label_selector`, if any) and publishes the trimmed view whenever it
/// changes. The task ends when every receiver is dropped.
pub fn watch_nodes(
    client: Client,
    label_selector: Option<String>,
    rules: TargetRules,
) -> (watch::Receiver<NodeView>, tokio::task::JoinHandle<()>) {
    let (tx, rx) = watch::channel(NodeView::default());
    let api: Api<Node> = Api::all(client);
    let task = tokio::spawn(async move {
        let mut config = watcher::Config::default();
        if let Some(selector) = label_selector.as_deref().filter(|s| !s.is_empty()) {
            config = config.labels(selector);
        }
        let mut events = watcher(api, config).default_backoff().boxed();
        let mut tracker = NodeTracker::default();
        loop {
            tokio::select! {
                _ = tx.closed() => return,
                ev = events.next() => match ev {
                    None => return,
                    Some(Err(err)) => tracing::warn!(error = %err, "node watch failed; re-listing after backoff"),
                    Some(Ok(ev)) => {
                        if tracker.apply(&rules, ev) {
                            let view = tracker.view();
                            tracing::debug!(nodes = view.nodes.len(), "node view changed");
                            tx.send_replace(view);
                        }
                    }
                },
            }
        }
    });
    (rx, task)
}

#[cfg(test)]
mod tests {
    use k8s_openapi::api::core::v1::{DaemonEndpoint, NodeAddress, NodeDaemonEndpoints, NodeStatus};
    use kube::api::ObjectMeta;

    use super::*;

    fn node(name: &str, addrs: &[(&str, &str)], port: Option<i32>) -> Node {
        Node {
            metadata: ObjectMeta { name: Some(name.into()), ..Default::default() },
            spec: None,
            status: Some(NodeStatus {
                addresses: Some(addrs.iter().map(|(t, a)| NodeAddress { type_: (*t).into(), address: (*a).into() }).collect()),
                daemon_endpoints: port.map(|p| NodeDaemonEndpoints { kubelet_endpoint: Some(DaemonEndpoint { port: p }) }),
                ..Default::default()
            }),
        }
    }

    #[test]
    fn the_resource_metrics_path_annotation_names_the_path_as_metrics_server_writes_it() {
        let rules = TargetRules::default();
        let mut n = node("kwok-node-0", &[("InternalIP", "10.0.0.1")], Some(10247));
        assert_eq!(rules.target(&n).unwrap().path, "/metrics/resource");
        for (annotation, path) in [
            ("/metrics/nodes/kwok-node-0/metrics/resource", "/metrics/nodes/kwok-node-0/metrics/resource"),
            ("", "/metrics/resource"),
            ("metrics/x", "/metrics/x"),
            ("/a b?c#d%e", "/a%20b%3Fc%23d%25e"),
            ("/$&+,:;=@~-_.", "/$&+,:;=@~-_."),
            ("/é", "/%C3%A9"),
        ] {
            n.metadata.annotations = Some([(RESOURCE_METRICS_PATH_ANNOTATION.to_owned(), annotation.to_owned())].into());
            let t = rules.target(&n).unwrap();
            assert_eq!((t.path.as_str(), t.port), (path, 10247), "{annotation:?}");
        }
    }

    #[test]
    fn the_first_preferred_address_type_present_wins() {
        let rules = TargetRules::default();
        let n = node("n1", &[("Hostname", "n1.local"), ("ExternalIP", "1.2.3.4"), ("InternalIP", "10.0.0.1")], Some(10250));
        assert_eq!(rules.target(&n).unwrap(), NodeTarget::new("n1", "10.0.0.1", 10250));
        let n = node("n1", &[("Hostname", "n1.local"), ("ExternalIP", "1.2.3.4")], Some(10250));
        assert_eq!(rules.target(&n).unwrap().host, "1.2.3.4");
        let rules = TargetRules { preferred_address_types: vec![AddressType::Hostname], ..TargetRules::default() };
        assert_eq!(rules.target(&n).unwrap().host, "n1.local");
    }

    #[test]
    fn a_node_without_a_preferred_address_is_an_error_naming_what_it_has() {
        let rules = TargetRules { preferred_address_types: vec![AddressType::InternalIp], ..TargetRules::default() };
        let err = rules.target(&node("n1", &[("Hostname", "h")], None)).unwrap_err();
        assert_eq!(err.to_string(), "node n1 has no address of type InternalIP (it has: Hostname)");
    }

    #[test]
    fn the_status_port_is_used_unless_disabled_or_missing() {
        let n = node("n", &[("InternalIP", "10.0.0.1")], Some(10255));
        assert_eq!(TargetRules::default().target(&n).unwrap().port, 10255);
        let rules = TargetRules { use_node_status_port: false, default_port: 4443, ..TargetRules::default() };
        assert_eq!(rules.target(&n).unwrap().port, 4443);
        let n = node("n", &[("InternalIP", "10.0.0.1")], Some(0));
        assert_eq!(TargetRules::default().target(&n).unwrap().port, 10250);
        let n = node("n", &[("InternalIP", "10.0.0.1")], Some(70000));
        assert_eq!(TargetRules::default().target(&n).unwrap().port, 10250);
    }

    #[test]
    fn address_types_parse_in_kubernetes_spelling() {
        assert_eq!("InternalDNS".parse::<AddressType>().unwrap(), AddressType::InternalDns);
        assert!("internalip".parse::<AddressType>().is_err());
    }

    #[test]
    fn a_relist_replaces_the_view_only_when_done_and_marks_it_synced() {
        let rules = TargetRules::default();
        let mut t = NodeTracker::default();
        assert!(t.apply(&rules, watcher::Event::Apply(node("a", &[("InternalIP", "10.0.0.1")], None))));
        assert!(!t.apply(&rules, watcher::Event::Init));
        assert!(!t.apply(&rules, watcher::Event::InitApply(node("b", &[("InternalIP", "10.0.0.2")], None))));
        assert_eq!(t.view().nodes.keys().collect::<Vec<_>>(), vec!["a"]);
        assert!(!t.view().synced);
        assert!(t.apply(&rules, watcher::Event::InitDone));
        assert_eq!(t.view().nodes.keys().collect::<Vec<_>>(), vec!["b"]);
        assert!(t.view().synced);
        // A second identical re-list (e.g. after "resource version too old") changes nothing.
        t.apply(&rules, watcher::Event::Init);
        t.apply(&rules, watcher::Event::InitApply(node("b", &[("InternalIP", "10.0.0.2")], None)));
        assert!(!t.apply(&rules, watcher::Event::InitDone));
    }

    #[test]
    fn a_node_losing_its_address_or_being_deleted_leaves_the_view() {
        let rules = TargetRules::default();
        let mut t = NodeTracker::default();
        t.apply(&rules, watcher::Event::Apply(node("a", &[("InternalIP", "10.0.0.1")], None)));
        assert!(!t.apply(&rules, watcher::Event::Apply(node("a", &[("InternalIP", "10.0.0.1")], None))), "no change");
        assert!(t.apply(&rules, watcher::Event::Apply(node("a", &[], None))));
        assert!(t.view().nodes.is_empty());
        t.apply(&rules, watcher::Event::Apply(node("a", &[("InternalIP", "10.0.0.1")], None)));
        assert!(t.apply(&rules, watcher::Event::Delete(node("a", &[], None))));
        assert!(t.view().nodes.is_empty());
    }
}
