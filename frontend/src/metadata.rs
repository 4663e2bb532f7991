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
//! - Pods are indexed by label within their namespace (see [`MetadataRead::select_pods`]), so a
//!   namespace + `app=foo` query visits the pods it returns, not every pod of the namespace.
//! - A re-list builds a fresh view and swaps it in when complete, so readers never see a
//!   half-filled one. "Synced" (for `/readyz`) is set by the first complete list.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::ops::Bound;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, RwLock, RwLockReadGuard};

use futures::StreamExt;
use k8s_openapi::api::core::v1::{Node, Pod};
use kube::runtime::watcher::{self, Event};
use kube::api::PartialObjectMeta;
use kube::runtime::{WatchStreamExt, watcher as watch_objects};
use kube::{Api, Client};
use shardmetrics_plumbing::selector::{LabelSelector, Operator};
use tokio::sync::watch;

use crate::names::PodNames;

/// Labels of one object, shared between objects with identical labels.
pub type Labels = Arc<BTreeMap<String, String>>;

/// Pod and Node existence and labels; see the module docs.
#[derive(Default)]
pub struct Metadata {
    /// Running pods by namespace, with their label index.
    pods: RwLock<PodIndex>,
    /// Nodes: name → labels.
    nodes: RwLock<Index<String>>,
    /// Set once the first full pod list is in.
    pods_synced: AtomicBool,
    /// Set once the first full node list is in.
    nodes_synced: AtomicBool,
}

/// (namespace, name) of a pod, as pod events carry it.
pub type PodKey = (String, String);

/// Shares identical label sets between objects.
#[derive(Default)]
struct Interner {
    /// Every shared label set.
    set: HashSet<Labels>,
    /// Removals since the set was last purged.
    removals: usize,
}

impl Interner {
    fn intern(&mut self, labels: BTreeMap<String, String>) -> Labels {
        if let Some(l) = self.set.get(&labels) {
            return l.clone();
        }
        let l = Arc::new(labels);
        self.set.insert(l.clone());
        l
    }

    /// Counts a removal; every 10 000 forgets the label sets no object uses any more.
    fn removed(&mut self) {
        self.removals += 1;
        if self.removals > 10_000 {
            self.purge();
        }
    }

    fn purge(&mut self) {
        self.set.retain(|l| Arc::strong_count(l) > 1);
        self.removals = 0;
    }
}

/// Nodes with labels, and the label interner.
struct Index<K> {
    /// Objects by key.
    objects: HashMap<K, Labels>,
    /// Shared label sets.
    labels: Interner,
    /// Objects of a re-list in progress.
    pending: Option<HashMap<K, Labels>>,
}

impl<K> Default for Index<K> {
    fn default() -> Self {
        Self { objects: HashMap::new(), labels: Interner::default(), pending: None }
    }
}

impl<K: std::hash::Hash + Eq> Index<K> {
    fn apply(&mut self, event: Event<(K, BTreeMap<String, String>)>) -> bool {
        match event {
            Event::Apply((k, labels)) => {
                let labels = self.labels.intern(labels);
                self.objects.insert(k, labels);
            }
            Event::Delete((k, _)) => {
                self.objects.remove(&k);
                self.labels.removed();
            }
            Event::Init => self.pending = Some(HashMap::new()),
            Event::InitApply((k, labels)) => {
                let labels = self.labels.intern(labels);
                if let Some(p) = self.pending.as_mut() {
                    p.insert(k, labels);
                }
            }
            Event::InitDone => {
                if let Some(p) = self.pending.take() {
                    self.objects = p;
                }
                self.labels.purge();
                return true;
            }
        }
        false
    }
}

/// Running pods by namespace (sorted, so cluster-wide selections come out sorted).
type Pods = BTreeMap<Arc<str>, NamespacePods>;

/// Running pods with their label index, the label interner and the re-list in progress.
#[derive(Default)]
struct PodIndex {
    /// The view served.
    namespaces: Pods,
    /// Shared label sets.
    labels: Interner,
    /// The view a re-list in progress is building (index included); swapped in when complete.
    pending: Option<Pods>,
    /// Where new pods' names come from (shared with the store; see [`crate::names`]).
    names: PodNames,
}

impl PodIndex {
    /// Applies one watch event; true when a full list completed.
    fn apply(&mut self, event: Event<(PodKey, BTreeMap<String, String>)>) -> bool {
        match event {
            Event::Apply(((ns, name), labels)) => {
                let labels = self.labels.intern(labels);
                upsert_pod(&mut self.namespaces, &self.names, ns, &name, labels);
            }
            Event::Delete(((ns, name), _)) => {
                remove_pod(&mut self.namespaces, &ns, &name);
                self.labels.removed();
            }
            Event::Init => self.pending = Some(Pods::new()),
            Event::InitApply(((ns, name), labels)) => {
                let labels = self.labels.intern(labels);
                if let Some(p) = self.pending.as_mut() {
                    upsert_pod(p, &self.names, ns, &name, labels);
                }
            }
            Event::InitDone => {
                if let Some(p) = self.pending.take() {
                    self.namespaces = p;
                }
                self.labels.purge();
                return true;
            }
        }
        false
    }
}

/// Adds pod `ns/name` to `pods` or replaces its labels (index kept up to date).
fn upsert_pod(pods: &mut Pods, names: &PodNames, ns: String, name: &str, labels: Labels) {
    match pods.get_mut(ns.as_str()) {
        Some(n) => n.upsert(names, name, labels),
        None => {
            let mut n = NamespacePods::default();
            n.upsert(names, name, labels);
            pods.insert(Arc::from(ns), n);
        }
    }
}

/// Removes pod `ns/name` from `pods` (index kept up to date); a namespace left empty goes too.
fn remove_pod(pods: &mut Pods, ns: &str, name: &str) {
    if let Some(n) = pods.get_mut(ns) {
        n.remove(name);
        if n.pods.is_empty() {
            pods.remove(ns);
        }
    }
}

/// The running pods of one namespace and their label index.
///
/// Memory, in bytes: the index holds one 16-byte `Arc<str>` slot per label per pod (the name's
/// allocation is shared with the map, not copied): 16 per label per pod in lists of up to
/// [`SMALL_POSTING`] (a [`Posting`] vector), about 25 in larger ones (a B-tree set), plus about
/// 100 per distinct `key=value` of the namespace. (With B-tree sets for every list it was about
/// 45 per label per pod in Deployment-sized lists; docs/benchmarks.md, "HPA query: label index"
/// and "Standard scenario, 2026-12-05 (seventh pass)".)
#[derive(Default)]
struct NamespacePods {
    /// Labels by pod name. Hashed with foldhash, seeded at random per process (as hashbrown's
    /// default): a full list looks every pod up here, and SipHash was about a third of the
    /// selection's CPU per pod (docs/benchmarks.md, "Full pod list").
    pods: HashMap<Arc<str>, Labels, foldhash::fast::RandomState>,
    /// Label key → value → names of the pods carrying that label, sorted (posting lists). A pod
    /// is in exactly the lists of its own labels; empty lists are removed.
    postings: HashMap<String, HashMap<String, Posting>>,
}

impl NamespacePods {
    /// Adds pod `name` or replaces its labels; a pod moves only between the posting lists of the
    /// labels that changed.
    fn upsert(&mut self, names: &PodNames, name: &str, labels: Labels) {
        let Some((key, old)) = self.pods.get_key_value(name) else {
            let key = names.share(name);
            for (k, v) in labels.iter() {
                self.post(k, v, &key);
            }
            self.pods.insert(key, labels);
            return;
        };
        let (key, old) = (key.clone(), old.clone());
        if *old != *labels {
            for (k, v) in old.iter() {
                if labels.get(k) != Some(v) {
                    self.unpost(k, v, &key);
                }
            }
            for (k, v) in labels.iter() {
                if old.get(k) != Some(v) {
                    self.post(k, v, &key);
                }
            }
        }
        self.pods.insert(key, labels);
    }

    /// Removes pod `name` and its postings, if it is there.
    fn remove(&mut self, name: &str) {
        if let Some((key, old)) = self.pods.remove_entry(name) {
            for (k, v) in old.iter() {
                self.unpost(k, v, &key);
            }
        }
    }

    fn post(&mut self, key: &str, value: &str, name: &Arc<str>) {
        // Strings are copied only for a key or value the namespace has not had yet.
        match self.postings.get_mut(key) {
            Some(values) => match values.get_mut(value) {
                Some(names) => names.insert(name),
                None => {
                    values.insert(value.to_owned(), Posting::one(name));
                }
            },
            None => {
                self.postings.insert(key.to_owned(), HashMap::from([(value.to_owned(), Posting::one(name))]));
            }
        }
    }

    fn unpost(&mut self, key: &str, value: &str, name: &str) {
        let Some(values) = self.postings.get_mut(key) else { return };
        let Some(names) = values.get_mut(value) else { return };
        names.remove(name);
        if names.is_empty() {
            values.remove(value);
            if values.is_empty() {
                self.postings.remove(key);
            }
        }
    }

    /// Names of the pods labelled `key=value`, sorted; `None` when there are none.
    fn posting(&self, key: &str, value: &str) -> Option<&Posting> {
        self.postings.get(key)?.get(value)
    }
}

/// Lists up to this many names long are sorted vectors; longer ones B-tree sets.
const SMALL_POSTING: usize = 256;

/// The names of the pods carrying one label, sorted.
///
/// A Deployment-sized list (the common case: `app=`, `pod-template-hash=`) is a sorted vector
/// of exactly its length (grown and shrunk one slot at a time): 16 bytes a pod, against ~43 in
/// a B-tree set of 20, whose nodes are sized for 11 names (docs/benchmarks.md, "Standard
/// scenario, 2026-12-05 (seventh pass)"). Past [`SMALL_POSTING`] names (a label across a whole
/// namespace) it becomes a B-tree set, so an insert into a list of 30 000 stays O(log n)
/// instead of moving half the list. It does not turn back.
#[derive(Debug, Clone)]
enum Posting {
    /// At most [`SMALL_POSTING`] names, sorted, no duplicates, capacity = length.
    Small(Vec<Arc<str>>),
    /// More (or once more) than [`SMALL_POSTING`] names.
    Large(BTreeSet<Arc<str>>),
}

impl Posting {
    fn one(name: &Arc<str>) -> Posting {
        Posting::Small(vec![name.clone()])
    }

    fn len(&self) -> usize {
        match self {
            Posting::Small(v) => v.len(),
            Posting::Large(s) => s.len(),
        }
    }

    fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn insert(&mut self, name: &Arc<str>) {
        match self {
            Posting::Small(v) => {
                let Err(at) = v.binary_search_by(|n| (**n).cmp(&**name)) else { return };
                if v.len() < SMALL_POSTING {
                    v.reserve_exact(1);
                    v.insert(at, name.clone());
                } else {
                    let mut set: BTreeSet<Arc<str>> = v.drain(..).collect();
                    set.insert(name.clone());
                    *self = Posting::Large(set);
                }
            }
            Posting::Large(s) => {
                s.insert(name.clone());
            }
        }
    }

    fn remove(&mut self, name: &str) {
        match self {
            Posting::Small(v) => {
                if let Ok(at) = v.binary_search_by(|n| (**n).cmp(name)) {
                    v.remove(at);
                    v.shrink_to_fit();
                }
            }
            Posting::Large(s) => {
                s.remove(name);
            }
        }
    }

    /// The names after `start`, in order.
    fn range<'a>(&'a self, start: Bound<&str>) -> Box<dyn Iterator<Item = &'a Arc<str>> + 'a> {
        match self {
            Posting::Small(v) => {
                let from = match start {
                    Bound::Unbounded => 0,
                    Bound::Included(s) => v.partition_point(|n| &**n < s),
                    Bound::Excluded(s) => v.partition_point(|n| &**n <= s),
                };
                Box::new(v[from..].iter())
            }
            Posting::Large(s) => Box::new(s.range::<str, _>((start, Bound::Unbounded))),
        }
    }
}

/// A selector's equality terms (`key=v`, `key==v`, `key in (v)`), as (key, value): the terms a
/// posting list answers.
fn equality_terms(selector: &LabelSelector) -> impl Iterator<Item = (&str, &str)> {
    selector.requirements().iter().filter_map(|r| match (r.operator(), r.values()) {
        (Operator::In, [v]) => Some((r.key(), v.as_str())),
        _ => None,
    })
}

/// Whether the label index can narrow `selector` (it has an equality term; see
/// [`MetadataRead::select_pods`]). Without one, a query walks every pod in its scope.
pub fn indexable(selector: &LabelSelector) -> bool {
    equality_terms(selector).next().is_some()
}

/// One chunk of a label-index selection ([`MetadataRead::select_pods`]).
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Selection {
    /// The matching pods of the chunk as (namespace, name, labels), sorted by namespace then name.
    pub pods: Vec<(Arc<str>, Arc<str>, Labels)>,
    /// The last pod visited, to resume after; `None` when the selection is complete.
    pub resume: Option<(Arc<str>, Arc<str>)>,
}

/// A consistent read of the view, for one API request.
pub struct MetadataRead<'a> {
    pods: RwLockReadGuard<'a, PodIndex>,
    nodes: RwLockReadGuard<'a, Index<String>>,
}

impl MetadataRead<'_> {
    /// Labels of running pod `namespace/name`, or `None` if no such running pod exists.
    pub fn pod(&self, namespace: &str, name: &str) -> Option<&Labels> {
        self.pods.namespaces.get(namespace)?.pods.get(name)
    }

    /// Labels of node `name`, or `None` if no such node exists.
    pub fn node(&self, name: &str) -> Option<&Labels> {
        self.nodes.objects.get(name)
    }

    /// The running pods in `namespace` (every namespace when `None`) that `selector` matches,
    /// with their labels, read from the label index; `None` when `selector` has no equality
    /// term ([`indexable`]), which the index cannot narrow.
    ///
    /// In each namespace the candidates are the smallest posting list among the selector's
    /// equality terms; each candidate is then tested with the whole selector against its own
    /// labels, which intersects it with the other equality terms' lists and applies the other
    /// terms (`!=`, `in` with several values, `notin`, exists, `!key`, `>`, `<`) with exactly the
    /// semantics of [`LabelSelector::matches`]. So the cost is the smallest list's length per
    /// namespace, not the namespace's pod count.
    ///
    /// Chunked like the store's walk: visits at most `limit` (at least 1) candidates after `after`
    /// (namespace, name, exclusive); [`Selection::resume`] says where the next chunk starts.
    pub fn select_pods(&self, namespace: Option<&str>, selector: &LabelSelector, after: Option<(&str, &str)>, limit: usize) -> Option<Selection> {
        let terms: Vec<(&str, &str)> = equality_terms(selector).collect();
        if terms.is_empty() {
            return None;
        }
        // A chunk visits at least one pod, so a selection always ends.
        let limit = limit.max(1);
        let from = match (namespace, after) {
            (Some(ns), _) | (None, Some((ns, _))) => Bound::Included(ns),
            (None, None) => Bound::Unbounded,
        };
        let to = namespace.map_or(Bound::Unbounded, Bound::Included);
        let mut out = Selection::default();
        let mut visited = 0usize;
        let mut last: Option<(&Arc<str>, &Arc<str>)> = None;
        for (ns, pods) in self.pods.namespaces.range::<str, _>((from, to)) {
            let mut smallest: Option<&Posting> = None;
            for (key, value) in &terms {
                match pods.posting(key, value) {
                    Some(list) if smallest.is_none_or(|s| list.len() < s.len()) => smallest = Some(list),
                    Some(_) => {}
                    None => {
                        // No pod of the namespace has this label: none matches.
                        smallest = None;
                        break;
                    }
                }
            }
            let Some(candidates) = smallest else { continue };
            let start = match after {
                Some((after_ns, name)) if after_ns == &**ns => Bound::Excluded(name),
                _ => Bound::Unbounded,
            };
            out.pods.reserve(candidates.len().min(limit - visited));
            for name in candidates.range(start) {
                if visited == limit {
                    out.resume = last.map(|(ns, name)| (ns.clone(), name.clone()));
                    return Some(out);
                }
                visited += 1;
                last = Some((ns, name));
                // Always there: a posting list holds only pods of the map.
                if let Some(labels) = pods.pods.get(&**name)
                    && selector.matches(labels)
                {
                    out.pods.push((ns.clone(), name.clone(), labels.clone()));
                }
            }
        }
        Some(out)
    }
}

impl Metadata {
    /// An empty view (nothing exists until the watches fill it) whose pod names are its own
    /// ([`PodNames::unshared`]).
    pub fn new() -> Arc<Self> {
        Arc::new(Self::default())
    }

    /// An empty view that takes its pod names from `names` (shared with the store, so each
    /// name is held once).
    pub fn with_pod_names(names: PodNames) -> Arc<Self> {
        Arc::new(Self { pods: RwLock::new(PodIndex { names, ..PodIndex::default() }), ..Self::default() })
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
        (r.pods.namespaces.values().map(|n| n.pods.len()).sum(), r.nodes.objects.len())
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

    fn sel(s: &str) -> LabelSelector {
        LabelSelector::parse(s).expect("selector")
    }

    /// Checks the label index against the pods' labels: every pod is in exactly the posting
    /// lists of its labels, and no list, value map or namespace is empty.
    fn assert_index_consistent(m: &Metadata) {
        let r = m.read();
        for (ns, n) in &r.pods.namespaces {
            assert!(!n.pods.is_empty(), "empty namespace {ns} kept");
            let mut want: HashMap<String, HashMap<String, BTreeSet<Arc<str>>>> = HashMap::new();
            for (name, labels) in &n.pods {
                for (k, v) in labels.iter() {
                    want.entry(k.clone()).or_default().entry(v.clone()).or_default().insert(name.clone());
                }
            }
            for list in n.postings.values().flat_map(HashMap::values) {
                let names: Vec<&Arc<str>> = list.range(Bound::Unbounded).collect();
                assert!(names.windows(2).all(|w| w[0] < w[1]), "a posting list is sorted, without duplicates");
                assert_eq!(names.len(), list.len());
            }
            let got: HashMap<String, HashMap<String, BTreeSet<Arc<str>>>> = n
                .postings
                .iter()
                .map(|(k, values)| (k.clone(), values.iter().map(|(v, p)| (v.clone(), p.range(Bound::Unbounded).cloned().collect())).collect()))
                .collect();
            assert_eq!(got, want, "namespace {ns}");
        }
    }

    /// A posting list keeps the names of a set, in order, below and above the size where it
    /// becomes a B-tree; a small one holds no spare capacity; ranges start where asked.
    #[test]
    fn a_posting_list_is_a_sorted_set_small_or_large() {
        let name = |i: usize| -> Arc<str> { Arc::from(format!("pod-{:05}", (i * 7919) % 1000)) };
        let mut p = Posting::one(&name(0));
        let mut model: BTreeSet<Arc<str>> = BTreeSet::from([name(0)]);
        for i in 0..1500 {
            // Mostly inserts, a removal every third step (of a name that may or may not be in).
            if i % 3 == 2 {
                let n = name(i / 2);
                p.remove(&n);
                model.remove(&n);
            } else {
                p.insert(&name(i));
                model.insert(name(i));
            }
            if let Posting::Small(v) = &p {
                assert!(v.len() <= SMALL_POSTING);
                assert_eq!(v.capacity(), v.len(), "grown one slot at a time");
            }
            assert_eq!(p.len(), model.len());
            if i % 97 == 0 || i == SMALL_POSTING * 3 / 2 {
                assert!(p.range(Bound::Unbounded).eq(model.iter()), "step {i}");
                // From a name in the list, and from one between names ("x" sorts after digits).
                let present = model.iter().nth(model.len() / 2).cloned().expect("not empty");
                let between = format!("{present}x");
                for at in [&*present, between.as_str()] {
                    assert!(p.range(Bound::Included(at)).eq(model.range::<str, _>((Bound::Included(at), Bound::Unbounded))), "step {i}, from {at}");
                    assert!(p.range(Bound::Excluded(at)).eq(model.range::<str, _>((Bound::Excluded(at), Bound::Unbounded))), "step {i}, after {at}");
                }
                assert_eq!(p.range(Bound::Included(&*present)).next(), Some(&present), "an included start is the first name");
                assert_ne!(p.range(Bound::Excluded(&*present)).next(), Some(&present), "an excluded start is not");
            }
        }
        assert!(matches!(p, Posting::Large(_)), "past {SMALL_POSTING} names it is a B-tree");
        for n in model.iter() {
            p.remove(n);
        }
        assert!(p.is_empty());
    }

    /// Every chunk of a selection with `limit`, concatenated, as "ns/name".
    fn select(m: &Metadata, ns: Option<&str>, selector: &str, limit: usize) -> Option<Vec<String>> {
        let selector = sel(selector);
        let mut out = Vec::new();
        let mut resume: Option<(Arc<str>, Arc<str>)> = None;
        loop {
            let after = resume.as_ref().map(|(n, p)| (&**n, &**p));
            let chunk = m.read().select_pods(ns, &selector, after, limit)?;
            for (n, p, labels) in &chunk.pods {
                assert!(selector.matches(labels));
                assert_eq!(m.read().pod(n, p), Some(labels));
                out.push(format!("{n}/{p}"));
            }
            match chunk.resume {
                Some(r) => resume = Some(r),
                None => return Some(out),
            }
        }
    }

    /// Every pod the view holds that `selector` matches, by brute force, as "ns/name", sorted.
    fn brute_force(m: &Metadata, ns: Option<&str>, selector: &str) -> Vec<String> {
        let selector = sel(selector);
        let r = m.read();
        let mut out: Vec<String> = r
            .pods
            .namespaces
            .iter()
            .filter(|(n, _)| ns.is_none_or(|ns| ns == &***n))
            .flat_map(|(n, pods)| pods.pods.iter().filter(|(_, l)| selector.matches(l)).map(move |(p, _)| format!("{n}/{p}")))
            .collect();
        out.sort();
        out
    }

    #[test]
    fn the_label_index_follows_adds_label_changes_and_deletes() {
        let m = Metadata::new();
        m.apply_pod(Event::Apply(pod("a", "web-1", &[("app", "web"), ("tier", "front")])));
        m.apply_pod(Event::Apply(pod("a", "web-2", &[("app", "web"), ("tier", "front")])));
        m.apply_pod(Event::Apply(pod("a", "db-1", &[("app", "db")])));
        m.apply_pod(Event::Apply(pod("b", "web-1", &[("app", "web")])));
        assert_index_consistent(&m);
        assert_eq!(select(&m, Some("a"), "app=web", 100).unwrap(), ["a/web-1", "a/web-2"]);
        assert_eq!(select(&m, None, "app=web", 100).unwrap(), ["a/web-1", "a/web-2", "b/web-1"]);

        // A label value changes, a label is added, one is removed; an unchanged re-apply.
        m.apply_pod(Event::Apply(pod("a", "web-2", &[("app", "api"), ("tier", "front"), ("canary", "")])));
        m.apply_pod(Event::Apply(pod("a", "web-1", &[("app", "web")])));
        m.apply_pod(Event::Apply(pod("a", "db-1", &[("app", "db")])));
        assert_index_consistent(&m);
        assert_eq!(select(&m, Some("a"), "app=web", 100).unwrap(), ["a/web-1"]);
        assert_eq!(select(&m, Some("a"), "app=api", 100).unwrap(), ["a/web-2"]);
        assert_eq!(select(&m, Some("a"), "canary=", 100).unwrap(), ["a/web-2"]);
        assert_eq!(select(&m, Some("a"), "tier=front", 100).unwrap(), ["a/web-2"]);

        // Deletes: the pod leaves every list; the last pod of a namespace takes it along; a
        // delete of an unknown pod changes nothing.
        m.apply_pod(Event::Delete(pod("a", "web-2", &[])));
        m.apply_pod(Event::Delete(pod("b", "web-1", &[])));
        m.apply_pod(Event::Delete(pod("c", "nope", &[])));
        assert_index_consistent(&m);
        assert_eq!(select(&m, Some("a"), "app=api", 100).unwrap(), Vec::<String>::new());
        assert_eq!(select(&m, None, "app=web", 100).unwrap(), ["a/web-1"]);
        assert!(!m.read().pods.namespaces.contains_key("b"));
        assert_eq!(m.counts().0, 2);
        let r = m.read();
        let a = &r.pods.namespaces["a"];
        assert!(a.posting("app", "api").is_none() && a.posting("tier", "front").is_none(), "emptied lists are removed");
    }

    #[test]
    fn a_relist_builds_a_fresh_index_swapped_in_when_complete() {
        let m = Metadata::new();
        m.apply_pod(Event::Apply(pod("a", "old-1", &[("app", "web")])));
        m.apply_pod(Event::Apply(pod("a", "both", &[("app", "web")])));
        m.apply_pod(Event::Init);
        m.apply_pod(Event::InitApply(pod("a", "both", &[("app", "api")])));
        m.apply_pod(Event::InitApply(pod("a", "new-1", &[("app", "web")])));
        m.apply_pod(Event::InitApply(pod("z", "new-2", &[("app", "web")])));
        assert_eq!(select(&m, None, "app=web", 100).unwrap(), ["a/both", "a/old-1"], "old index served during the re-list");
        m.apply_pod(Event::InitDone);
        assert_index_consistent(&m);
        assert_eq!(select(&m, None, "app=web", 100).unwrap(), ["a/new-1", "z/new-2"]);
        assert_eq!(select(&m, None, "app=api", 100).unwrap(), ["a/both"]);
        // Events after the re-list keep it up to date.
        m.apply_pod(Event::Apply(pod("a", "both", &[("app", "web")])));
        assert_index_consistent(&m);
        assert_eq!(select(&m, Some("a"), "app=web", 100).unwrap(), ["a/both", "a/new-1"]);
    }

    #[test]
    fn an_index_selection_matches_brute_force_for_every_kind_of_term_and_resumes_across_chunks() {
        let m = Metadata::new();
        let apps = ["web", "api", "db"];
        for i in 0..300usize {
            let mut l = vec![("app", apps[i % 3]), ("hash", if i % 2 == 0 { "h1" } else { "h2" })];
            if i % 4 == 0 {
                l.push(("canary", ""));
            }
            if i % 5 != 0 {
                l.push(("tier", if i % 10 < 5 { "front" } else { "back" }));
            }
            m.apply_pod(Event::Apply(pod(["a", "b", "c"][i % 3 / 2 + i % 2], &format!("p{i:03}"), &l)));
        }
        // Churn: relabel and delete some, so the index has been through every change.
        for i in (0..300usize).step_by(7) {
            m.apply_pod(Event::Apply(pod(["a", "b", "c"][i % 3 / 2 + i % 2], &format!("p{i:03}"), &[("app", "web")])));
        }
        for i in (0..300usize).step_by(11) {
            m.apply_pod(Event::Delete(pod(["a", "b", "c"][i % 3 / 2 + i % 2], &format!("p{i:03}"), &[])));
        }
        assert_index_consistent(&m);
        for selector in [
            "app=web",
            "app==web,hash=h1",
            "app in (web)",
            "app=web,tier!=back",
            "app=web,tier in (front,back)",
            "app=web,tier notin (front)",
            "hash=h2,canary",
            "hash=h2,!canary",
            "hash=h2,!tier",
            "canary=",
            "app=web,app=api",
            "app=nope",
            "nokey=x,app=web",
            "app=web,hash=h1,tier=front,canary",
        ] {
            for ns in [None, Some("a"), Some("b"), Some("zz")] {
                let want = brute_force(&m, ns, selector);
                for limit in [0, 1, 7, 1000] {
                    assert_eq!(select(&m, ns, selector, limit).as_ref(), Some(&want), "{selector:?} in {ns:?}, chunks of {limit}");
                }
            }
        }
        assert!(!brute_force(&m, None, "app=web,tier!=back").is_empty(), "the selections are not all empty");
        for not_indexable in ["", "tier", "!tier", "tier!=back", "app in (web,api)", "app notin (web)"] {
            assert!(select(&m, None, not_indexable, 10).is_none(), "{not_indexable:?}");
            assert!(!indexable(&sel(not_indexable)));
        }
    }
}
