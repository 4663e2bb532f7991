//! The object store: every object of every simulated resource, one global resourceVersion
//! counter (as etcd's revision), a bounded event history for watch resumption, and a broadcast of
//! every change to open watches.
//!
//! Objects are kept serialized (`Bytes` of their JSON) with the few parsed fields that lists and
//! watches filter on (labels and the resource's field-selector fields), so a list of 150k pods is
//! a walk over shared buffers, not a re-serialization.
//!
//! Semantics follow kube-apiserver where tests can see them:
//! - create sets `metadata.uid`, `creationTimestamp`, `resourceVersion` and `generation` (1);
//!   `generateName` is honoured; namespaced objects need an existing namespace;
//! - update/patch check a `metadata.resourceVersion` precondition (409 Conflict), keep uid and
//!   creationTimestamp, bump `generation` when anything outside metadata and status changed, and
//!   for resources with a `status` subresource ignore status changes on the main resource (and
//!   everything but status on the subresource);
//! - delete is immediate (no finalizers); deleting a namespace deletes everything in it;
//! - watch from resourceVersion N replays history after N, or fails with 410 Gone when N is older
//!   than the oldest resumable version; without N (or with "0") it starts with a synthetic ADDED
//!   for each existing object;
//! - an object that stops (starts) matching a watch's selectors is sent as DELETED (ADDED).
//!
//! Deviation, on purpose: a Pod created *with* a status keeps it (a real server resets it to
//! Pending), so a test or a user can create a Running pod with `kubectl create -f` in one step.
//! A Pod created without status starts `Pending`.

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use base64::Engine as _;
use bytes::Bytes;
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::{Map, Value, json};
use shardmetrics_plumbing::clock::SharedClock;
use tokio::sync::broadcast;

use super::error::ApiError;
use super::resources::{self, NAMESPACES, PODS, ResourceId, STORED};
use shardmetrics_plumbing::selector::{FieldSelector, LabelSelector};

/// Where an object lives: its namespace (empty for cluster-scoped) and name.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ObjectKey {
    /// Namespace; empty for cluster-scoped objects.
    pub namespace: String,
    /// Name.
    pub name: String,
}

impl ObjectKey {
    /// A key from namespace and name.
    pub fn new(namespace: &str, name: &str) -> ObjectKey {
        ObjectKey { namespace: namespace.to_owned(), name: name.to_owned() }
    }
}

/// One stored object: its JSON and the fields lists and watches filter on.
#[derive(Debug)]
pub struct Stored {
    /// Which resource it is.
    pub resource: ResourceId,
    /// Namespace and name.
    pub key: ObjectKey,
    /// Its resourceVersion (also inside `json`).
    pub rv: u64,
    /// The full object, serialized.
    pub json: Bytes,
    /// `metadata.labels`.
    pub labels: BTreeMap<String, String>,
    /// Values of the resource's field-selector fields (`spec.nodeName`, ...), absent ones empty.
    fields: Vec<(&'static str, String)>,
}

impl Stored {
    fn from_value(resource: ResourceId, value: &Value) -> Result<Stored, ApiError> {
        let meta = &value["metadata"];
        let key = ObjectKey {
            namespace: meta["namespace"].as_str().unwrap_or("").to_owned(),
            name: meta["name"].as_str().unwrap_or("").to_owned(),
        };
        let rv = meta["resourceVersion"].as_str().and_then(|s| s.parse().ok()).unwrap_or(0);
        let labels = match &meta["labels"] {
            Value::Object(m) => m.iter().map(|(k, v)| (k.clone(), v.as_str().unwrap_or("").to_owned())).collect(),
            _ => BTreeMap::new(),
        };
        let fields = STORED[resource]
            .fields
            .iter()
            .map(|(label, path)| {
                let v = path.iter().fold(value, |v, p| &v[*p]);
                let s = match v {
                    Value::String(s) => s.clone(),
                    Value::Bool(b) => b.to_string(),
                    _ => String::new(),
                };
                (*label, s)
            })
            .collect();
        let json = serde_json::to_vec(value).map_err(|e| ApiError::Internal(e.to_string()))?;
        Ok(Stored { resource, key, rv, json: Bytes::from(json), labels, fields })
    }

    /// The object as a JSON value (parses the stored bytes).
    pub fn value(&self) -> Value {
        serde_json::from_slice(&self.json).unwrap_or(Value::Null)
    }

    /// The object as a typed k8s-openapi value.
    pub fn to_typed<K: DeserializeOwned>(&self) -> Result<K, ApiError> {
        serde_json::from_slice(&self.json).map_err(|e| ApiError::Internal(format!("stored object does not decode: {e}")))
    }

    /// The value of a field-selector field.
    pub fn field(&self, label: &str) -> Option<&str> {
        match label {
            "metadata.name" => Some(&self.key.name),
            "metadata.namespace" => Some(&self.key.namespace),
            _ => self.fields.iter().find(|(l, _)| *l == label).map(|(_, v)| v.as_str()),
        }
    }
}

/// What happened to an object.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EventType {
    /// Created (or, for a filtered watch, started matching).
    Added,
    /// Changed.
    Modified,
    /// Deleted (or, for a filtered watch, stopped matching).
    Deleted,
}

impl EventType {
    /// The watch event type string.
    pub fn as_str(self) -> &'static str {
        match self {
            EventType::Added => "ADDED",
            EventType::Modified => "MODIFIED",
            EventType::Deleted => "DELETED",
        }
    }
}

/// One change, as kept in history and broadcast to watches.
#[derive(Debug)]
pub struct Change {
    /// The resourceVersion of this change.
    pub rv: u64,
    /// What happened.
    pub kind: EventType,
    /// The object after the change (for a delete: its last state, at the delete's version).
    pub object: Arc<Stored>,
    /// The object before the change, for selector transitions.
    pub previous: Option<Arc<Stored>>,
}

/// Which objects a list or watch wants.
#[derive(Debug, Clone)]
pub struct Filter {
    /// The resource.
    pub resource: ResourceId,
    /// Only this namespace (namespaced resources), or all.
    pub namespace: Option<String>,
    /// Label selector.
    pub labels: LabelSelector,
    /// Field selector.
    pub fields: FieldSelector,
}

impl Filter {
    /// Everything of one resource.
    pub fn all(resource: ResourceId) -> Filter {
        Filter { resource, namespace: None, labels: LabelSelector::default(), fields: FieldSelector::default() }
    }

    /// Whether `obj` passes.
    pub fn matches(&self, obj: &Stored) -> bool {
        obj.resource == self.resource
            && self.namespace.as_ref().is_none_or(|ns| *ns == obj.key.namespace)
            && self.labels.matches(&obj.labels)
            && self.fields.matches(|f| obj.field(f))
    }

    /// How `change` looks through this filter, if it shows at all.
    pub fn translate(&self, change: &Change) -> Option<EventType> {
        if change.object.resource != self.resource {
            return None;
        }
        let now = self.matches(&change.object);
        match change.kind {
            EventType::Added => now.then_some(EventType::Added),
            EventType::Deleted => now.then_some(EventType::Deleted),
            EventType::Modified => {
                let before = change.previous.as_ref().is_some_and(|p| self.matches(p));
                match (before, now) {
                    (true, true) => Some(EventType::Modified),
                    (false, true) => Some(EventType::Added),
                    (true, false) => Some(EventType::Deleted),
                    (false, false) => None,
                }
            }
        }
    }
}

/// Paging of a list.
#[derive(Debug, Clone, Default)]
pub struct Page {
    /// At most this many items (0 or `None`: all).
    pub limit: Option<usize>,
    /// The `continue` token of the previous page.
    pub continue_token: Option<String>,
}

/// One page of a list.
#[derive(Debug)]
pub struct Listed {
    /// The list's resourceVersion (of the first page when paging).
    pub rv: u64,
    /// The items, ordered by namespace then name.
    pub items: Vec<Arc<Stored>>,
    /// Token for the next page, when there is one.
    pub continue_token: Option<String>,
}

/// Where a watch starts.
#[derive(Debug)]
pub struct WatchStart {
    /// Events to send first: history after the requested version, or synthetic ADDEDs.
    pub initial: Vec<Arc<Change>>,
    /// Live changes from here on (subscribed atomically with `initial`).
    pub live: broadcast::Receiver<Arc<Change>>,
    /// The store's resourceVersion when the watch started.
    pub start_rv: u64,
}

/// Which part of an object an update may change.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Part {
    /// The main resource: everything but status (for resources with a status subresource).
    Main,
    /// The `status` subresource: only `.status`.
    Status,
}

/// Store tuning.
#[derive(Debug, Clone)]
pub struct StoreConfig {
    /// How many changes are kept for watch resumption; older resumes get 410 Gone.
    pub history_capacity: usize,
    /// Capacity of the change broadcast. A watch that falls this far behind is closed (the
    /// client resumes from its last version) and counted in `lagging_watches_closed`.
    pub broadcast_capacity: usize,
}

impl Default for StoreConfig {
    fn default() -> Self {
        StoreConfig { history_capacity: 20_000, broadcast_capacity: 16_384 }
    }
}

struct Inner {
    /// Current (last assigned) resourceVersion.
    rv: u64,
    /// A watch from version N can resume only if N >= this.
    min_resumable_rv: u64,
    /// Objects by resource, then key.
    objects: Vec<BTreeMap<ObjectKey, Arc<Stored>>>,
    /// Pods by `spec.nodeName`, for kubelets and `fieldSelector=spec.nodeName=`.
    pods_by_node: HashMap<String, BTreeSet<ObjectKey>>,
    /// Recent changes, oldest first.
    history: VecDeque<Arc<Change>>,
    /// resourceVersion of the last published change.
    last_change_rv: u64,
}

/// The simulated cluster's state. Shared (`Arc`) by the HTTP handlers, the test and the
/// kubelet simulator.
pub struct Store {
    inner: Mutex<Inner>,
    changes: broadcast::Sender<Arc<Change>>,
    clock: SharedClock,
    config: StoreConfig,
    uid_seed: u64,
    uid_counter: AtomicU64,
    /// Watches closed because they fell behind the broadcast.
    pub lagging_watches_closed: AtomicU64,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store").field("rv", &self.current_rv()).finish_non_exhaustive()
    }
}

fn not_found(resource: ResourceId, name: &str) -> ApiError {
    let r = &STORED[resource];
    let kind = if r.group.is_empty() { r.plural.to_owned() } else { format!("{}.{}", r.plural, r.group) };
    ApiError::NotFound { kind, name: name.to_owned() }
}

fn qualified(resource: ResourceId) -> String {
    let r = &STORED[resource];
    if r.group.is_empty() { r.plural.to_owned() } else { format!("{}.{}", r.plural, r.group) }
}

fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 253
        && name.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'.')
        && name.as_bytes()[0].is_ascii_alphanumeric()
        && name.as_bytes()[name.len() - 1].is_ascii_alphanumeric()
}

/// RFC 3339 at second precision, as Kubernetes `Time`.
pub fn rfc3339(unix_ms: i64) -> String {
    jiff::Timestamp::from_millisecond(unix_ms)
        .unwrap_or(jiff::Timestamp::UNIX_EPOCH)
        .strftime("%Y-%m-%dT%H:%M:%SZ")
        .to_string()
}

fn splitmix(mut x: u64) -> u64 {
    x = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
    x = (x ^ (x >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    x ^ (x >> 31)
}

impl Store {
    /// An empty store (no namespaces even; see [`Store::bootstrap`]).
    pub fn new(clock: SharedClock, config: StoreConfig) -> Store {
        let (changes, _) = broadcast::channel(config.broadcast_capacity.max(16));
        let uid_seed = splitmix(clock.now_ms() as u64 ^ u64::from(std::process::id()));
        Store {
            inner: Mutex::new(Inner {
                rv: 1,
                min_resumable_rv: 0,
                objects: STORED.iter().map(|_| BTreeMap::new()).collect(),
                pods_by_node: HashMap::new(),
                history: VecDeque::new(),
                last_change_rv: 0,
            }),
            changes,
            clock,
            config,
            uid_seed,
            uid_counter: AtomicU64::new(0),
            lagging_watches_closed: AtomicU64::new(0),
        }
    }

    /// Creates the namespaces every cluster has: `default`, `kube-system`, `kube-public`,
    /// `kube-node-lease`.
    pub fn bootstrap(&self) -> Result<(), ApiError> {
        for ns in ["default", "kube-system", "kube-public", "kube-node-lease"] {
            self.ensure_namespace(ns)?;
        }
        Ok(())
    }

    /// Creates namespace `name` unless it exists.
    pub fn ensure_namespace(&self, name: &str) -> Result<(), ApiError> {
        match self.create(NAMESPACES, "", json!({"metadata": {"name": name}})) {
            Ok(_) | Err(ApiError::AlreadyExists { .. }) => Ok(()),
            Err(e) => Err(e),
        }
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        // A panic while holding the lock leaves consistent data (every mutation is completed
        // before publishing), so a poisoned lock is still usable.
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The current resourceVersion.
    pub fn current_rv(&self) -> u64 {
        self.lock().rv
    }

    fn new_uid(&self) -> String {
        let n = self.uid_counter.fetch_add(1, Ordering::Relaxed);
        let a = splitmix(self.uid_seed ^ n);
        let b = splitmix(a ^ n.rotate_left(17));
        format!(
            "{:08x}-{:04x}-4{:03x}-{:04x}-{:012x}",
            (a >> 32) as u32,
            (a >> 16) as u16,
            a & 0xfff,
            ((b >> 48) as u16 & 0x3fff) | 0x8000,
            b & 0xffff_ffff_ffff
        )
    }

    fn publish(&self, inner: &mut Inner, kind: EventType, object: Arc<Stored>, previous: Option<Arc<Stored>>) {
        if object.resource == PODS {
            if let Some(prev) = &previous {
                let node = prev.field("spec.nodeName").unwrap_or("");
                if let Some(set) = inner.pods_by_node.get_mut(node) {
                    set.remove(&prev.key);
                    if set.is_empty() {
                        inner.pods_by_node.remove(node);
                    }
                }
            }
            if kind != EventType::Deleted {
                let node = object.field("spec.nodeName").unwrap_or("").to_owned();
                inner.pods_by_node.entry(node).or_default().insert(object.key.clone());
            }
        }
        inner.last_change_rv = object.rv;
        let change = Arc::new(Change { rv: object.rv, kind, object, previous });
        inner.history.push_back(change.clone());
        while inner.history.len() > self.config.history_capacity {
            if let Some(old) = inner.history.pop_front() {
                inner.min_resumable_rv = inner.min_resumable_rv.max(old.rv);
            }
        }
        // No receiver is fine: nobody is watching.
        let _ = self.changes.send(change);
    }

    /// Creates an object of `resource` in `namespace` (ignored for cluster-scoped resources).
    pub fn create(&self, resource: ResourceId, namespace: &str, mut obj: Value) -> Result<Arc<Stored>, ApiError> {
        let r = &STORED[resource];
        let Value::Object(map) = &mut obj else {
            return Err(ApiError::BadRequest("the object must be a JSON object".into()));
        };
        check_type(resource, map)?;
        map.insert("apiVersion".into(), Value::String(r.api_version()));
        map.insert("kind".into(), Value::String(r.kind.into()));
        let meta = map.entry("metadata").or_insert_with(|| Value::Object(Map::new()));
        let Value::Object(meta) = meta else {
            return Err(ApiError::BadRequest("metadata must be an object".into()));
        };
        if r.namespaced {
            let ns = meta.get("namespace").and_then(Value::as_str).unwrap_or("");
            let ns = if namespace.is_empty() { ns.to_owned() } else { namespace.to_owned() };
            if let Some(given) = meta.get("namespace").and_then(Value::as_str)
                && !given.is_empty()
                && given != ns
            {
                return Err(ApiError::BadRequest(
                    "the namespace of the provided object does not match the namespace sent on the request".into(),
                ));
            }
            if ns.is_empty() {
                return Err(ApiError::BadRequest("a namespace is required".into()));
            }
            meta.insert("namespace".into(), Value::String(ns));
        } else {
            meta.remove("namespace");
        }
        let mut inner = self.lock();
        if meta.get("name").and_then(Value::as_str).unwrap_or("").is_empty() {
            let Some(prefix) = meta.get("generateName").and_then(Value::as_str).filter(|p| !p.is_empty()) else {
                return Err(ApiError::Invalid(format!("{} \"\" is invalid: metadata.name: Required value", r.kind)));
            };
            let suffix = splitmix(self.uid_seed ^ inner.rv.rotate_left(7) ^ 0xabcdef);
            let alphabet = b"bcdfghjklmnpqrstvwxz2456789";
            let s: String = (0..5).map(|i| alphabet[((suffix >> (i * 8)) % alphabet.len() as u64) as usize] as char).collect();
            meta.insert("name".into(), Value::String(format!("{prefix}{s}")));
        }
        let name = meta.get("name").and_then(Value::as_str).unwrap_or("").to_owned();
        if !valid_name(&name) {
            return Err(ApiError::Invalid(format!(
                "{} \"{name}\" is invalid: metadata.name: Invalid value: \"{name}\": a lowercase RFC 1123 subdomain must consist of lower case alphanumeric characters, '-' or '.', and must start and end with an alphanumeric character",
                r.kind
            )));
        }
        let ns = meta.get("namespace").and_then(Value::as_str).unwrap_or("").to_owned();
        if r.namespaced && !inner.objects[NAMESPACES].contains_key(&ObjectKey::new("", &ns)) {
            return Err(not_found(NAMESPACES, &ns));
        }
        let key = ObjectKey::new(&ns, &name);
        if inner.objects[resource].contains_key(&key) {
            return Err(ApiError::AlreadyExists { kind: qualified(resource), name });
        }
        inner.rv += 1;
        let rv = inner.rv;
        meta.insert("uid".into(), Value::String(self.new_uid()));
        meta.insert("resourceVersion".into(), Value::String(rv.to_string()));
        meta.insert("creationTimestamp".into(), Value::String(rfc3339(self.clock.now_ms())));
        meta.insert("generation".into(), json!(1));
        meta.remove("deletionTimestamp");
        meta.remove("selfLink");
        if resource == NAMESPACES && !map.get("status").is_some_and(Value::is_object) {
            map.insert("status".into(), json!({"phase": "Active"}));
        }
        if resource == NAMESPACES && !map.get("spec").is_some_and(Value::is_object) {
            map.insert("spec".into(), json!({"finalizers": ["kubernetes"]}));
        }
        if resource == PODS && map.get("status").is_none_or(|s| s.get("phase").is_none()) {
            map.insert("status".into(), json!({"phase": "Pending"}));
        }
        let stored = Arc::new(Stored::from_value(resource, &obj)?);
        inner.objects[resource].insert(key, stored.clone());
        self.publish(&mut inner, EventType::Added, stored.clone(), None);
        Ok(stored)
    }

    /// Reads one object.
    pub fn get(&self, resource: ResourceId, namespace: &str, name: &str) -> Result<Arc<Stored>, ApiError> {
        let ns = if STORED[resource].namespaced { namespace } else { "" };
        self.lock().objects[resource].get(&ObjectKey::new(ns, name)).cloned().ok_or_else(|| not_found(resource, name))
    }

    /// Lists objects passing `filter`, one page at a time.
    pub fn list(&self, filter: &Filter, page: &Page) -> Result<Listed, ApiError> {
        let (first_rv, start_after) = match &page.continue_token {
            Some(t) if !t.is_empty() => {
                let (rv, key) = decode_continue(t)?;
                (Some(rv), Some(key))
            }
            _ => (None, None),
        };
        let limit = page.limit.filter(|l| *l > 0).unwrap_or(usize::MAX);
        let inner = self.lock();
        let objects = &inner.objects[filter.resource];
        let mut items = Vec::new();
        let mut more = None;
        let mut push = |obj: &Arc<Stored>, items: &mut Vec<Arc<Stored>>| -> bool {
            if !filter.matches(obj) {
                return true;
            }
            if items.len() == limit {
                more = items.last().map(|o: &Arc<Stored>| o.key.clone());
                return false;
            }
            items.push(obj.clone());
            true
        };
        let by_node = if filter.resource == PODS { filter.fields.required("spec.nodeName") } else { None };
        if let Some(node) = by_node {
            let keys = inner.pods_by_node.get(node);
            for key in keys.into_iter().flatten() {
                if start_after.as_ref().is_some_and(|s| key <= s) {
                    continue;
                }
                if let Some(obj) = objects.get(key)
                    && !push(obj, &mut items)
                {
                    break;
                }
            }
        } else {
            let range = match &start_after {
                Some(s) => objects.range((std::ops::Bound::Excluded(s.clone()), std::ops::Bound::Unbounded)),
                None => objects.range::<ObjectKey, _>(..),
            };
            for (_, obj) in range {
                if !push(obj, &mut items) {
                    break;
                }
            }
        }
        let rv = first_rv.unwrap_or(inner.rv);
        Ok(Listed { rv, items, continue_token: more.map(|k| encode_continue(rv, &k)) })
    }

    /// Replaces an object (PUT). `part` selects main resource or status subresource semantics.
    pub fn update(
        &self,
        resource: ResourceId,
        namespace: &str,
        name: &str,
        part: Part,
        obj: Value,
    ) -> Result<Arc<Stored>, ApiError> {
        let mut inner = self.lock();
        let current = self.current_locked(&inner, resource, namespace, name)?;
        if let Some(given) = obj["metadata"]["name"].as_str()
            && given != name
        {
            return Err(ApiError::BadRequest(format!(
                "the name of the object ({given}) does not match the name on the URL ({name})"
            )));
        }
        check_type(resource, obj.as_object().ok_or_else(|| ApiError::BadRequest("the object must be a JSON object".into()))?)?;
        self.replace_locked(&mut inner, &current, part, obj)
    }

    /// Applies `change` to the current object (a patch), under the store lock, then stores the
    /// result with update semantics. A `metadata.resourceVersion` left in the result must match
    /// the current one (a patch carrying a resourceVersion is a precondition).
    pub fn modify(
        &self,
        resource: ResourceId,
        namespace: &str,
        name: &str,
        part: Part,
        change: impl FnOnce(&mut Value) -> Result<(), ApiError>,
    ) -> Result<Arc<Stored>, ApiError> {
        let mut inner = self.lock();
        let current = self.current_locked(&inner, resource, namespace, name)?;
        let mut value = current.value();
        change(&mut value)?;
        if !value.is_object() {
            return Err(ApiError::BadRequest("the patched object is not a JSON object".into()));
        }
        self.replace_locked(&mut inner, &current, part, value)
    }

    fn current_locked(&self, inner: &Inner, resource: ResourceId, namespace: &str, name: &str) -> Result<Arc<Stored>, ApiError> {
        let ns = if STORED[resource].namespaced { namespace } else { "" };
        inner.objects[resource].get(&ObjectKey::new(ns, name)).cloned().ok_or_else(|| not_found(resource, name))
    }

    fn replace_locked(&self, inner: &mut Inner, current: &Arc<Stored>, part: Part, mut new: Value) -> Result<Arc<Stored>, ApiError> {
        let resource = current.resource;
        let r = &STORED[resource];
        let old = current.value();
        if let Some(rv) = new["metadata"]["resourceVersion"].as_str().filter(|s| !s.is_empty())
            && rv != current.rv.to_string()
        {
            return Err(ApiError::Conflict {
                kind: qualified(resource),
                name: current.key.name.clone(),
                message: "the object has been modified; please apply your changes to the latest version and try again".into(),
            });
        }
        if let Some(uid) = new["metadata"]["uid"].as_str().filter(|s| !s.is_empty())
            && Some(uid) != old["metadata"]["uid"].as_str()
        {
            return Err(ApiError::Conflict {
                kind: qualified(resource),
                name: current.key.name.clone(),
                message: format!("Precondition failed: UID in precondition: {uid}, UID in object meta: {}", old["metadata"]["uid"]),
            });
        }
        let mut new = match part {
            Part::Status => {
                let mut merged = old.clone();
                merged["status"] = new.get("status").cloned().unwrap_or(Value::Null);
                if merged["status"].is_null()
                    && let Value::Object(m) = &mut merged
                {
                    m.remove("status");
                }
                merged
            }
            Part::Main => {
                if r.has_status {
                    match old.get("status") {
                        Some(s) => new["status"] = s.clone(),
                        None => {
                            if let Value::Object(m) = &mut new {
                                m.remove("status");
                            }
                        }
                    }
                }
                new
            }
        };
        // Keep identity fields.
        new["apiVersion"] = Value::String(r.api_version());
        new["kind"] = Value::String(r.kind.into());
        if !new["metadata"].is_object() {
            new["metadata"] = json!({});
        }
        for field in ["uid", "creationTimestamp", "name", "namespace", "generation"] {
            match old["metadata"].get(field) {
                Some(v) => new["metadata"][field] = v.clone(),
                None => {
                    if let Value::Object(m) = &mut new["metadata"] {
                        m.remove(field);
                    }
                }
            }
        }
        if spec_of(&old) != spec_of(&new) {
            let generation = old["metadata"]["generation"].as_i64().unwrap_or(1) + 1;
            new["metadata"]["generation"] = json!(generation);
        }
        if old_without_rv(&old) == old_without_rv(&new) {
            // No-op updates do not bump the resourceVersion, as in Kubernetes.
            return Ok(current.clone());
        }
        inner.rv += 1;
        new["metadata"]["resourceVersion"] = Value::String(inner.rv.to_string());
        let stored = Arc::new(Stored::from_value(resource, &new)?);
        inner.objects[resource].insert(current.key.clone(), stored.clone());
        self.publish(inner, EventType::Modified, stored.clone(), Some(current.clone()));
        Ok(stored)
    }

    /// Deletes an object; with `uid`/`resource_version` preconditions when given. Deleting a
    /// namespace deletes every object in it first.
    pub fn delete(
        &self,
        resource: ResourceId,
        namespace: &str,
        name: &str,
        precondition_uid: Option<&str>,
        precondition_rv: Option<&str>,
    ) -> Result<Arc<Stored>, ApiError> {
        let mut inner = self.lock();
        let current = self.current_locked(&inner, resource, namespace, name)?;
        let value = current.value();
        if let Some(uid) = precondition_uid.filter(|u| !u.is_empty())
            && Some(uid) != value["metadata"]["uid"].as_str()
        {
            return Err(ApiError::Conflict {
                kind: qualified(resource),
                name: name.to_owned(),
                message: format!("Precondition failed: UID in precondition: {uid}, UID in object meta: {}", value["metadata"]["uid"]),
            });
        }
        if let Some(rv) = precondition_rv.filter(|r| !r.is_empty())
            && rv != current.rv.to_string()
        {
            return Err(ApiError::Conflict {
                kind: qualified(resource),
                name: name.to_owned(),
                message: format!(
                    "Precondition failed: ResourceVersion in precondition: {rv}, ResourceVersion in object meta: {}",
                    current.rv
                ),
            });
        }
        if resource == NAMESPACES {
            for (res, r) in STORED.iter().enumerate() {
                if !r.namespaced {
                    continue;
                }
                let keys: Vec<ObjectKey> = inner.objects[res].keys().filter(|k| k.namespace == name).cloned().collect();
                for key in keys {
                    if let Some(obj) = inner.objects[res].remove(&key) {
                        self.publish_delete(&mut inner, obj)?;
                    }
                }
            }
        }
        inner.objects[resource].remove(&current.key);
        self.publish_delete(&mut inner, current)
    }

    fn publish_delete(&self, inner: &mut Inner, obj: Arc<Stored>) -> Result<Arc<Stored>, ApiError> {
        inner.rv += 1;
        let mut value = obj.value();
        value["metadata"]["resourceVersion"] = Value::String(inner.rv.to_string());
        let last = Arc::new(Stored::from_value(obj.resource, &value)?);
        self.publish(inner, EventType::Deleted, last.clone(), Some(obj));
        Ok(last)
    }

    /// Starts a watch: history after `from` (410 Gone when compacted), or synthetic ADDED for
    /// every current object when `from` is `None` or 0.
    pub fn watch(&self, filter: &Filter, from: Option<u64>) -> Result<WatchStart, ApiError> {
        let inner = self.lock();
        let live = self.changes.subscribe();
        let initial = match from {
            None | Some(0) => inner.objects[filter.resource]
                .values()
                .filter(|o| filter.matches(o))
                .map(|o| Arc::new(Change { rv: o.rv, kind: EventType::Added, object: o.clone(), previous: None }))
                .collect(),
            Some(rv) => {
                if rv < inner.min_resumable_rv {
                    return Err(ApiError::Gone { requested: rv, oldest: inner.min_resumable_rv });
                }
                let start = inner.history.partition_point(|c| c.rv <= rv);
                inner.history.range(start..).filter(|c| c.object.resource == filter.resource).cloned().collect()
            }
        };
        Ok(WatchStart { initial, live, start_rv: inner.rv })
    }

    /// The resourceVersion a bookmark may carry for a watch whose queue is `live`: the store's
    /// current version if nothing is queued for it, else `None` (send the queue first).
    pub fn bookmark_rv(&self, live: &broadcast::Receiver<Arc<Change>>) -> Option<u64> {
        let inner = self.lock();
        live.is_empty().then_some(inner.rv)
    }

    /// Forgets all history and moves the resourceVersion on, so that every open watch that
    /// resumes (after [`super::RunningApiServer::drop_all_watches`] or a network failure) gets
    /// 410 Gone and has to re-list, as after an etcd compaction.
    pub fn compact_history(&self) {
        let mut inner = self.lock();
        inner.rv += 1;
        inner.min_resumable_rv = inner.rv;
        inner.history.clear();
    }

    /// Subscribes to every change (in-process consumers such as the kubelet simulator).
    pub fn subscribe(&self) -> broadcast::Receiver<Arc<Change>> {
        self.changes.subscribe()
    }

    /// The resourceVersion of the last change published to subscribers (what an in-process
    /// consumer must have seen to be up to date).
    pub fn last_change_rv(&self) -> u64 {
        self.lock().last_change_rv
    }

    /// Pods bound to `node`, in key order.
    pub fn pods_on_node(&self, node: &str) -> Vec<Arc<Stored>> {
        let inner = self.lock();
        inner
            .pods_by_node
            .get(node)
            .map(|keys| keys.iter().filter_map(|k| inner.objects[PODS].get(k).cloned()).collect())
            .unwrap_or_default()
    }

    /// Number of objects of `resource`.
    pub fn count(&self, resource: ResourceId) -> usize {
        self.lock().objects[resource].len()
    }

    // ---- typed convenience for tests and the cluster helper ----

    /// Creates a typed object (`k8s_openapi` type); its namespace comes from its metadata.
    pub fn create_typed<K: k8s_openapi::Resource + Serialize + DeserializeOwned>(&self, obj: &K) -> Result<K, ApiError> {
        let (resource, value) = typed_value(obj)?;
        let ns = value["metadata"]["namespace"].as_str().unwrap_or("").to_owned();
        self.create(resource, &ns, value)?.to_typed()
    }

    /// Reads a typed object; `namespace` is ignored for cluster-scoped kinds.
    pub fn get_typed<K: k8s_openapi::Resource + DeserializeOwned>(&self, namespace: &str, name: &str) -> Result<K, ApiError> {
        self.get(resource_of::<K>()?, namespace, name)?.to_typed()
    }

    /// Lists typed objects (all namespaces when `namespace` is `None`).
    pub fn list_typed<K: k8s_openapi::Resource + DeserializeOwned>(&self, namespace: Option<&str>) -> Result<Vec<K>, ApiError> {
        let mut filter = Filter::all(resource_of::<K>()?);
        filter.namespace = namespace.map(str::to_owned);
        self.list(&filter, &Page::default())?.items.iter().map(|s| s.to_typed()).collect()
    }

    /// Replaces a typed object (main resource semantics; its resourceVersion, if set, is a
    /// precondition).
    pub fn update_typed<K: k8s_openapi::Resource + Serialize + DeserializeOwned>(&self, obj: &K) -> Result<K, ApiError> {
        let (resource, value) = typed_value(obj)?;
        let ns = value["metadata"]["namespace"].as_str().unwrap_or("").to_owned();
        let name = value["metadata"]["name"].as_str().unwrap_or("").to_owned();
        self.update(resource, &ns, &name, Part::Main, value)?.to_typed()
    }

    /// Applies a JSON merge patch to a typed object's main resource or status.
    pub fn merge_patch_typed<K: k8s_openapi::Resource + DeserializeOwned>(
        &self,
        namespace: &str,
        name: &str,
        part: Part,
        patch: &Value,
    ) -> Result<K, ApiError> {
        let resource = resource_of::<K>()?;
        self.modify(resource, namespace, name, part, |v| super::patch::apply(super::patch::PatchType::Merge, v, patch))?
            .to_typed()
    }

    /// Deletes a typed object.
    pub fn delete_typed<K: k8s_openapi::Resource>(&self, namespace: &str, name: &str) -> Result<(), ApiError> {
        self.delete(resource_of::<K>()?, namespace, name, None, None).map(|_| ())
    }
}

fn check_type(resource: ResourceId, map: &Map<String, Value>) -> Result<(), ApiError> {
    let r = &STORED[resource];
    if let Some(kind) = map.get("kind").and_then(Value::as_str)
        && !kind.is_empty()
        && kind != r.kind
    {
        return Err(ApiError::BadRequest(format!("the kind of the object ({kind}) does not match this resource ({})", r.kind)));
    }
    if let Some(av) = map.get("apiVersion").and_then(Value::as_str)
        && !av.is_empty()
        && av != r.api_version()
    {
        return Err(ApiError::BadRequest(format!(
            "the apiVersion of the object ({av}) does not match this resource ({})",
            r.api_version()
        )));
    }
    Ok(())
}

fn spec_of(v: &Value) -> Value {
    match v {
        Value::Object(m) => {
            Value::Object(m.iter().filter(|(k, _)| !matches!(k.as_str(), "metadata" | "status")).map(|(k, v)| (k.clone(), v.clone())).collect())
        }
        _ => Value::Null,
    }
}

fn old_without_rv(v: &Value) -> Value {
    let mut v = v.clone();
    if let Value::Object(m) = &mut v["metadata"] {
        m.remove("resourceVersion");
    }
    v
}

fn resource_of<K: k8s_openapi::Resource>() -> Result<ResourceId, ApiError> {
    resources::find_kind(K::API_VERSION, K::KIND)
        .ok_or_else(|| ApiError::BadRequest(format!("the simulator does not store {} {}", K::API_VERSION, K::KIND)))
}

fn typed_value<K: k8s_openapi::Resource + Serialize>(obj: &K) -> Result<(ResourceId, Value), ApiError> {
    let resource = resource_of::<K>()?;
    let value = serde_json::to_value(obj).map_err(|e| ApiError::BadRequest(e.to_string()))?;
    Ok((resource, value))
}

fn encode_continue(rv: u64, key: &ObjectKey) -> String {
    let raw = format!("{rv}\n{}\n{}", key.namespace, key.name);
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(raw)
}

fn decode_continue(token: &str) -> Result<(u64, ObjectKey), ApiError> {
    let bad = || ApiError::BadRequest(format!("invalid continue token {token:?}"));
    let raw = base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(token).map_err(|_| bad())?;
    let raw = String::from_utf8(raw).map_err(|_| bad())?;
    let mut parts = raw.splitn(3, '\n');
    let rv = parts.next().and_then(|r| r.parse().ok()).ok_or_else(bad)?;
    let ns = parts.next().ok_or_else(bad)?;
    let name = parts.next().ok_or_else(bad)?;
    Ok((rv, ObjectKey::new(ns, name)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::apiserver::resources::{LEASES, NODES};
    use shardmetrics_plumbing::clock::ManualClock;

    fn store() -> Store {
        let s = Store::new(ManualClock::new(1_700_000_000_000), StoreConfig { history_capacity: 4, broadcast_capacity: 64 });
        s.bootstrap().unwrap();
        s
    }

    #[test]
    fn create_fills_metadata_and_rejects_duplicates_and_missing_namespaces() {
        let s = store();
        let node = s.create(NODES, "", json!({"metadata": {"name": "n1", "labels": {"a": "b"}}})).unwrap();
        let v = node.value();
        assert_eq!(v["kind"], "Node");
        assert_eq!(v["metadata"]["creationTimestamp"], "2023-11-14T22:13:20Z");
        assert_eq!(v["metadata"]["generation"], 1);
        assert_eq!(v["metadata"]["uid"].as_str().unwrap().len(), 36);
        assert_eq!(v["metadata"]["resourceVersion"], node.rv.to_string());
        assert!(matches!(s.create(NODES, "", json!({"metadata": {"name": "n1"}})), Err(ApiError::AlreadyExists { .. })));
        let err = s.create(PODS, "nope", json!({"metadata": {"name": "p"}})).unwrap_err();
        assert_eq!(err.to_status()["message"], "namespaces \"nope\" not found");
        assert!(matches!(s.create(NODES, "", json!({"metadata": {"name": "Bad_Name"}})), Err(ApiError::Invalid(_))));
        let generated = s.create(PODS, "default", json!({"metadata": {"generateName": "web-"}})).unwrap();
        assert!(generated.key.name.starts_with("web-") && generated.key.name.len() == 9);
        assert_eq!(generated.value()["status"]["phase"], "Pending");
    }

    #[test]
    fn a_stale_resource_version_conflicts_and_a_fresh_one_updates() {
        let s = store();
        let lease = s.create(LEASES, "kube-system", json!({"metadata": {"name": "l"}, "spec": {"holderIdentity": "a"}})).unwrap();
        let mut v = lease.value();
        v["spec"]["holderIdentity"] = json!("b");
        let updated = s.update(LEASES, "kube-system", "l", Part::Main, v.clone()).unwrap();
        assert!(updated.rv > lease.rv);
        assert_eq!(updated.value()["metadata"]["generation"], 2);
        let err = s.update(LEASES, "kube-system", "l", Part::Main, v).unwrap_err();
        assert_eq!(err.code(), 409);
        assert!(err.to_status()["message"].as_str().unwrap().contains("the object has been modified"));
    }

    #[test]
    fn the_main_resource_ignores_status_and_the_status_subresource_ignores_the_rest() {
        let s = store();
        s.create(NODES, "", json!({"metadata": {"name": "n"}, "status": {"capacity": {"cpu": "1"}}})).unwrap();
        let mut v = s.get(NODES, "", "n").unwrap().value();
        v["status"]["capacity"]["cpu"] = json!("8");
        v["metadata"]["labels"] = json!({"x": "y"});
        let after = s.update(NODES, "", "n", Part::Main, v.clone()).unwrap().value();
        assert_eq!(after["status"]["capacity"]["cpu"], "1");
        assert_eq!(after["metadata"]["labels"]["x"], "y");
        v["metadata"]["labels"] = json!({"x": "z"});
        v["metadata"]["resourceVersion"] = after["metadata"]["resourceVersion"].clone();
        let after = s.update(NODES, "", "n", Part::Status, v).unwrap().value();
        assert_eq!(after["status"]["capacity"]["cpu"], "8");
        assert_eq!(after["metadata"]["labels"]["x"], "y");
    }

    #[test]
    fn lists_filter_by_selectors_and_page_with_continue_tokens() {
        let s = store();
        for i in 0..5 {
            let node = if i % 2 == 0 { "n0" } else { "n1" };
            s.create(PODS, "default", json!({"metadata": {"name": format!("p{i}"), "labels": {"app": format!("a{}", i % 2)}},
                "spec": {"nodeName": node}, "status": {"phase": "Running"}}))
                .unwrap();
        }
        let mut f = Filter::all(PODS);
        f.fields = FieldSelector::parse("spec.nodeName=n0", &STORED[PODS].field_labels()).unwrap();
        let names: Vec<_> = s.list(&f, &Page::default()).unwrap().items.iter().map(|o| o.key.name.clone()).collect();
        assert_eq!(names, ["p0", "p2", "p4"]);
        f.labels = LabelSelector::parse("app=a1").unwrap();
        assert!(s.list(&f, &Page::default()).unwrap().items.is_empty());
        let first = s.list(&Filter::all(PODS), &Page { limit: Some(2), continue_token: None }).unwrap();
        assert_eq!(first.items.len(), 2);
        let second =
            s.list(&Filter::all(PODS), &Page { limit: Some(10), continue_token: first.continue_token.clone() }).unwrap();
        assert_eq!(second.items.iter().map(|o| o.key.name.as_str()).collect::<Vec<_>>(), ["p2", "p3", "p4"]);
        assert_eq!(second.rv, first.rv);
        assert!(second.continue_token.is_none());
    }

    #[test]
    fn watches_resume_from_history_and_get_gone_after_compaction() {
        let s = store();
        let start = s.current_rv();
        s.create(NODES, "", json!({"metadata": {"name": "a"}})).unwrap();
        s.create(NODES, "", json!({"metadata": {"name": "b"}})).unwrap();
        let w = s.watch(&Filter::all(NODES), Some(start)).unwrap();
        assert_eq!(w.initial.iter().map(|c| c.object.key.name.as_str()).collect::<Vec<_>>(), ["a", "b"]);
        s.compact_history();
        let err = s.watch(&Filter::all(NODES), Some(start)).unwrap_err();
        assert_eq!(err.code(), 410);
        assert!(s.watch(&Filter::all(NODES), Some(s.current_rv())).is_ok());
        // History is bounded: 4 changes kept, older resumes are gone.
        let before = s.current_rv();
        for i in 0..6 {
            s.create(NODES, "", json!({"metadata": {"name": format!("x{i}")}})).unwrap();
        }
        assert_eq!(s.watch(&Filter::all(NODES), Some(before)).unwrap_err().code(), 410);
    }

    #[test]
    fn an_object_leaving_a_selector_is_a_delete_for_that_watch() {
        let s = store();
        s.create(PODS, "default", json!({"metadata": {"name": "p"}, "spec": {"nodeName": "n0"}})).unwrap();
        let mut f = Filter::all(PODS);
        f.fields = FieldSelector::parse("spec.nodeName=n0", &STORED[PODS].field_labels()).unwrap();
        let mut w = s.watch(&f, Some(s.current_rv())).unwrap();
        s.modify(PODS, "default", "p", Part::Main, |v| {
            v["spec"]["nodeName"] = json!("n1");
            Ok(())
        })
        .unwrap();
        let change = w.live.try_recv().unwrap();
        assert_eq!(f.translate(&change), Some(EventType::Deleted));
        assert!(s.pods_on_node("n0").is_empty());
        assert_eq!(s.pods_on_node("n1").len(), 1);
    }

    #[test]
    fn deleting_a_namespace_deletes_its_objects() {
        let s = store();
        s.ensure_namespace("team").unwrap();
        s.create(PODS, "team", json!({"metadata": {"name": "p"}})).unwrap();
        s.delete(NAMESPACES, "", "team", None, None).unwrap();
        assert_eq!(s.get(PODS, "team", "p").unwrap_err().code(), 404);
        let err = s.delete(NODES, "", "missing", None, None).unwrap_err();
        assert_eq!(err.code(), 404);
    }
}
