//! Which Pods and Nodes exist, and their labels, from kube-rs metadata-only watches.
//!
//! The API uses this to apply label selectors, to copy labels into answers, and to leave out
//! objects that no longer exist (metrics-server answers from its listers the same way).
//!
//! - Pods are watched metadata-only with `fieldSelector=status.phase=Running`, so a pod that
//!   stops running leaves the view (the watch reports it as deleted) and pending or finished
//!   pods never enter it. Only namespace, name and labels are kept.
//! - Nodes are watched metadata-only; name and labels are kept.
//! - Identical label sets (every replica of a ReplicaSet) share one allocation.
//! - A re-list builds a fresh view and swaps it in when complete, so readers never see a
//!   half-filled one. "Synced" (for `/readyz`) is set by the first complete list.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, RwLock, RwLockReadGuard};

use futures::StreamExt;
use k8s_openapi::api::core::v1::{Node, Pod};
use kube::runtime::watcher::{self, Event};
use kube::api::PartialObjectMeta;
use kube::runtime::{WatchStreamExt, watcher as watch_objects};
use kube::{Api, Client};
use tokio::sync::watch;

/// Labels of one object, shared between objects with identical labels.
pub type Labels = Arc<BTreeMap<String, String>>;

/// Pod and Node existence and labels; see the module docs.
#[derive(Default)]
pub struct Metadata {
    /// Running pods: namespace → name → labels.
    pods: RwLock<Index<PodKey>>,
    /// Nodes: name → labels.
    nodes: RwLock<Index<String>>,
    /// Set once the first full pod list is in.
    pods_synced: AtomicBool,
    /// Set once the first full node list is in.
    nodes_synced: AtomicBool,
}

/// (namespace, name) of a pod.
pub type PodKey = (String, String);

/// Objects with labels, and the label interner.
struct Index<K> {
    /// Objects by key.
    objects: HashMap<K, Labels>,
    /// Shared label sets.
    interner: HashSet<Labels>,
    /// Objects of a re-list in progress.
    pending: Option<HashMap<K, Labels>>,
    /// Removals since the interner was last purged.
    removals: usize,
}

impl<K> Default for Index<K> {
    fn default() -> Self {
        Self { objects: HashMap::new(), interner: HashSet::new(), pending: None, removals: 0 }
    }
}

impl<K: std::hash::Hash + Eq> Index<K> {
    fn intern(&mut self, labels: BTreeMap<String, String>) -> Labels {
        if let Some(l) = self.interner.get(&labels) {
            return l.clone();
        }
        let l = Arc::new(labels);
        self.interner.insert(l.clone());
        l
    }

    fn purge(&mut self) {
        self.interner.retain(|l| Arc::strong_count(l) > 1);
        self.removals = 0;
    }

    fn apply(&mut self, event: Event<(K, BTreeMap<String, String>)>) -> bool {
        match event {
            Event::Apply((k, labels)) => {
                let labels = self.intern(labels);
                self.objects.insert(k, labels);
            }
            Event::Delete((k, _)) => {
                self.objects.remove(&k);
                self.removals += 1;
                if self.removals > 10_000 {
                    self.purge();
                }
            }
            Event::Init => self.pending = Some(HashMap::new()),
            Event::InitApply((k, labels)) => {
                let labels = self.intern(labels);
                if let Some(p) = self.pending.as_mut() {
                    p.insert(k, labels);
                }
            }
            Event::InitDone => {
                if let Some(p) = self.pending.take() {
                    self.objects = p;
                }
                self.purge();
                return true;
            }
        }
        false
    }
}

/// A consistent read of the view, for one API request.
pub struct MetadataRead<'a> {
    pods: RwLockReadGuard<'a, Index<PodKey>>,
    nodes: RwLockReadGuard<'a, Index<String>>,
}

/// Borrowed lookup key for `(String, String)` maps without allocating.
trait PodKeyRef {
    fn ns(&self) -> &str;
    fn name(&self) -> &str;
}

impl PodKeyRef for PodKey {
    fn ns(&self) -> &str {
        &self.0
    }
    fn name(&self) -> &str {
        &self.1
    }
}

impl PodKeyRef for (&str, &str) {
    fn ns(&self) -> &str {
        self.0
    }
    fn name(&self) -> &str {
        self.1
    }
}

impl<'a> std::borrow::Borrow<dyn PodKeyRef + 'a> for PodKey {
    fn borrow(&self) -> &(dyn PodKeyRef + 'a) {
        self
    }
}

impl PartialEq for dyn PodKeyRef + '_ {
    fn eq(&self, other: &Self) -> bool {
        self.ns() == other.ns() && self.name() == other.name()
    }
}

impl Eq for dyn PodKeyRef + '_ {}

impl std::hash::Hash for dyn PodKeyRef + '_ {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        // Must hash exactly like `(String, String)`.
        self.ns().hash(state);
        self.name().hash(state);
    }
}

impl MetadataRead<'_> {
    /// Labels of running pod `namespace/name`, or `None` if no such running pod exists.
    pub fn pod(&self, namespace: &str, name: &str) -> Option<&Labels> {
        self.pods.objects.get(&(namespace, name) as &dyn PodKeyRef)
    }

    /// Labels of node `name`, or `None` if no such node exists.
    pub fn node(&self, name: &str) -> Option<&Labels> {
        self.nodes.objects.get(name)
    }
}

impl Metadata {
    /// An empty view (nothing exists until the watches fill it).
    pub fn new() -> Arc<Self> {
        Arc::new(Self::default())
    }

    /// A consistent read for one request.
    pub fn read(&self) -> MetadataRead<'_> {
        MetadataRead {
            pods: self.pods.read().unwrap_or_else(|e| e.into_inner()),
            nodes: self.nodes.read().unwrap_or_else(|e| e.into_inner()),
        }
    }

    /// Whether the first full list of both pods and nodes is in.
    pub fn is_synced(&self) -> bool {
        self.pods_synced.load(Ordering::Acquire) && self.nodes_synced.load(Ordering::Acquire)
    }

    /// Number of running pods and of nodes known.
    pub fn counts(&self) -> (usize, usize) {
        let r = self.read();
        (r.pods.objects.len(), r.nodes.objects.len())
    }

    /// Applies a pod event (namespace, name, labels).
    pub fn apply_pod(&self, event: Event<(PodKey, BTreeMap<String, String>)>) {
        if self.pods.write().unwrap_or_else(|e| e.into_inner()).apply(event) {
            self.pods_synced.store(true, Ordering::Release);
        }
    }

    /// Applies a node event (name, labels).
    pub fn apply_node(&self, event: Event<(String, BTreeMap<String, String>)>) {
        if self.nodes.write().unwrap_or_else(|e| e.into_inner()).apply(event) {
            self.nodes_synced.store(true, Ordering::Release);
        }
    }

    /// Watches running Pods and Nodes (metadata only) until `shutdown` turns true. Watch errors
    /// are logged and retried with kube-rs' default backoff; the view keeps its last state.
    pub async fn watch(self: Arc<Self>, client: Client, mut shutdown: watch::Receiver<bool>) {
        let pods: Api<PartialObjectMeta<Pod>> = Api::all(client.clone());
        let nodes: Api<PartialObjectMeta<Node>> = Api::all(client);
        let mut pod_events =
            watch_objects(pods, watcher::Config::default().fields("status.phase=Running")).default_backoff().boxed();
        let mut node_events = watch_objects(nodes, watcher::Config::default()).default_backoff().boxed();
        loop {
            tokio::select! {
                _ = shutdown.changed() => return,
                ev = pod_events.next() => match ev {
                    None => return,
                    Some(Err(e)) => tracing::warn!(error = %e, "pod metadata watch failed; retrying"),
                    Some(Ok(ev)) => self.apply_pod(map_event(ev, |p| {
                        let m = p.metadata;
                        ((m.namespace.unwrap_or_default(), m.name.unwrap_or_default()), m.labels.unwrap_or_default())
                    })),
                },
                ev = node_events.next() => match ev {
                    None => return,
                    Some(Err(e)) => tracing::warn!(error = %e, "node metadata watch failed; retrying"),
                    Some(Ok(ev)) => self.apply_node(map_event(ev, |n| {
                        let m = n.metadata;
                        (m.name.unwrap_or_default(), m.labels.unwrap_or_default())
                    })),
                },
            }
            if *shutdown.borrow() {
                return;
            }
        }
    }
}

/// Converts the object of a watch event.
fn map_event<A, B>(event: Event<A>, f: impl FnOnce(A) -> B) -> Event<B> {
    match event {
        Event::Apply(a) => Event::Apply(f(a)),
        Event::Delete(a) => Event::Delete(f(a)),
        Event::Init => Event::Init,
        Event::InitApply(a) => Event::InitApply(f(a)),
        Event::InitDone => Event::InitDone,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect()
    }

    fn pod(ns: &str, name: &str, l: &[(&str, &str)]) -> (PodKey, BTreeMap<String, String>) {
        ((ns.to_owned(), name.to_owned()), labels(l))
    }

    #[test]
    fn pods_appear_change_and_disappear_with_watch_events() {
        let m = Metadata::new();
        m.apply_pod(Event::Apply(pod("default", "web-1", &[("app", "web")])));
        assert_eq!(m.read().pod("default", "web-1").map(|l| l["app"].clone()), Some("web".into()));
        m.apply_pod(Event::Apply(pod("default", "web-1", &[("app", "api")])));
        assert_eq!(m.read().pod("default", "web-1").map(|l| l["app"].clone()), Some("api".into()));
        m.apply_pod(Event::Delete(pod("default", "web-1", &[])));
        assert!(m.read().pod("default", "web-1").is_none());
        assert!(m.read().pod("other", "web-1").is_none());
    }

    #[test]
    fn synced_only_after_both_first_lists_complete_and_a_relist_swaps_atomically() {
        let m = Metadata::new();
        m.apply_pod(Event::Init);
        m.apply_pod(Event::InitApply(pod("a", "p1", &[])));
        m.apply_pod(Event::InitDone);
        assert!(!m.is_synced(), "nodes not listed yet");
        m.apply_node(Event::Init);
        m.apply_node(Event::InitApply(("n1".into(), labels(&[("zone", "a")]))));
        m.apply_node(Event::InitDone);
        assert!(m.is_synced());
        assert_eq!(m.read().node("n1").map(|l| l.len()), Some(1));
        m.apply_pod(Event::Init);
        m.apply_pod(Event::InitApply(pod("a", "p2", &[])));
        assert!(m.read().pod("a", "p1").is_some(), "old view served until the re-list completes");
        m.apply_pod(Event::InitDone);
        assert!(m.read().pod("a", "p1").is_none());
        assert!(m.read().pod("a", "p2").is_some());
    }

    #[test]
    fn identical_label_sets_share_one_allocation() {
        let m = Metadata::new();
        for i in 0..3 {
            m.apply_pod(Event::Apply(pod("default", &format!("web-{i}"), &[("app", "web"), ("hash", "abc")])));
        }
        let r = m.read();
        let a = r.pod("default", "web-0").expect("pod");
        let b = r.pod("default", "web-2").expect("pod");
        assert!(Arc::ptr_eq(a, b));
    }
}
