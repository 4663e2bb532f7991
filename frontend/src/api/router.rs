//! Where API requests are routed and answered: path and query parsing, content negotiation,
//! the store/metadata join, and the choice of encoder.
//!
//! Paths (metrics-server's, under `/apis/metrics.k8s.io/v1beta1` and `/apis/metrics.k8s.io/v1`):
//! `.../nodes`, `.../nodes/{name}`, `.../pods`, `.../namespaces/{ns}/pods`,
//! `.../namespaces/{ns}/pods/{name}`, plus discovery,
//! OpenAPI and `/version`. Anything else is a 404 Status; methods other than GET a 405.
//! `watch=true` on the lists streams events ([`super::watch`]; metrics-server answers 405).

use std::collections::BTreeMap;
use std::sync::Arc;

use http::{HeaderMap, HeaderValue, Method, Response, StatusCode, Uri, header};
use shardmetrics_plumbing::clock::SharedClock;

use super::body::Body;
use super::discovery::{AggregatedVersion, Documents};
use super::items::{self, Chunks, NodeItem, PodItem};
use super::media::{Encoding, negotiate};
use shardmetrics_plumbing::selector::{FieldSelector, LabelSelector};
use super::status::Status;
use super::table::{IncludeObject, TableOptions};
use super::version::ApiVersion;
use super::watch::{self, Format, Scope, Source, Start, WatchRequest};
use super::{json, protobuf, table};
use crate::metadata::{self, Labels, Metadata};
use crate::metrics::Metrics;
use crate::store::{POD_CHUNK, PodCursor, PodUsage, Store};

/// A request's route. Resource routes carry the `metrics.k8s.io` version of their path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Route {
    /// `/apis` (also aggregated discovery).
    Apis,
    /// `/apis/metrics.k8s.io`.
    Group,
    /// `/apis/metrics.k8s.io/<version>`.
    Resources(ApiVersion),
    /// `/apis/metrics.k8s.io/<version>/nodes`.
    Nodes(ApiVersion),
    /// `/apis/metrics.k8s.io/<version>/nodes/{name}`.
    Node(ApiVersion, String),
    /// `.../pods` (namespace `None`) or `.../namespaces/{ns}/pods`.
    Pods(ApiVersion, Option<String>),
    /// `.../namespaces/{ns}/pods/{name}`.
    Pod(ApiVersion, String, String),
    /// `/openapi/v2`.
    OpenApiV2,
    /// `/openapi/v3`.
    OpenApiV3,
    /// `/openapi/v3/apis/metrics.k8s.io/<version>`.
    OpenApiV3Group(ApiVersion),
    /// `/version`.
    Version,
    /// Nothing here.
    Unknown,
}

impl Route {
    /// Parses a request path (percent-decoding each segment).
    pub fn parse(path: &str) -> Route {
        let path = path.strip_suffix('/').filter(|p| !p.is_empty()).unwrap_or(path);
        match path {
            "/apis" => return Route::Apis,
            "/apis/metrics.k8s.io" => return Route::Group,
            "/openapi/v2" => return Route::OpenApiV2,
            "/openapi/v3" => return Route::OpenApiV3,
            "/version" => return Route::Version,
            _ => {}
        }
        if let Some((v, "")) = path.strip_prefix("/openapi/v3").and_then(ApiVersion::strip) {
            return Route::OpenApiV3Group(v);
        }
        let Some((v, rest)) = ApiVersion::strip(path) else { return Route::Unknown };
        let Some(rest) = rest.strip_prefix('/') else { return Route::Resources(v) };
        let segments: Vec<String> = rest.split('/').map(percent_decode).collect();
        if segments.iter().any(String::is_empty) {
            return Route::Unknown;
        }
        match segments.as_slice() {
            [n] if n == "nodes" => Route::Nodes(v),
            [n, name] if n == "nodes" => Route::Node(v, name.clone()),
            [p] if p == "pods" => Route::Pods(v, None),
            [n, ns, p] if n == "namespaces" && p == "pods" => Route::Pods(v, Some(ns.clone())),
            [n, ns, p, name] if n == "namespaces" && p == "pods" => Route::Pod(v, ns.clone(), name.clone()),
            _ => Route::Unknown,
        }
    }

    /// Whether this is a cluster-wide list (the expensive requests, run off the async workers).
    pub fn is_cluster_list(&self) -> bool {
        matches!(self, Route::Nodes(_) | Route::Pods(_, None))
    }

    /// The `resource` label of request metrics.
    pub fn resource(&self) -> &'static str {
        match self {
            Route::Apis | Route::Group | Route::Resources(_) => "discovery",
            Route::Nodes(_) | Route::Node(..) => "nodes",
            Route::Pods(..) | Route::Pod(..) => "pods",
            Route::OpenApiV2 | Route::OpenApiV3 | Route::OpenApiV3Group(_) => "openapi",
            Route::Version => "version",
            Route::Unknown => "unknown",
        }
    }

    /// The `verb` label of request metrics (Kubernetes verbs for resources).
    pub fn verb(&self, method: &Method, watch: bool) -> &'static str {
        match (self, method) {
            (Route::Nodes(_) | Route::Pods(..), &Method::GET) if watch => "watch",
            (Route::Nodes(_) | Route::Pods(..), &Method::GET) => "list",
            (_, &Method::GET) => "get",
            (_, &Method::HEAD) => "head",
            (_, &Method::POST) => "post",
            (_, &Method::PUT) => "put",
            (_, &Method::PATCH) => "patch",
            (_, &Method::DELETE) => "delete",
            _ => "other",
        }
    }
}

/// Decodes `%XX` escapes and, in queries, `+` as space; invalid escapes stay as they are.
fn decode(s: &str, plus_is_space: bool) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'%' if i + 2 < bytes.len() => {
                let hex = std::str::from_utf8(&bytes[i + 1..i + 3]).ok().and_then(|h| u8::from_str_radix(h, 16).ok());
                match hex {
                    Some(b) => {
                        out.push(b);
                        i += 3;
                        continue;
                    }
                    None => out.push(b'%'),
                }
            }
            b'+' if plus_is_space => out.push(b' '),
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn percent_decode(s: &str) -> String {
    decode(s, false)
}

/// The query parameters this server reads (`ListOptions`' and `includeObject`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Query {
    /// `labelSelector`.
    pub label_selector: String,
    /// `fieldSelector`.
    pub field_selector: String,
    /// `watch` (see [`Query::parse`] for what counts as true).
    pub watch: bool,
    /// `includeObject` (Table only).
    pub include_object: String,
    /// `resourceVersion`, as given.
    pub resource_version: Option<String>,
    /// `timeoutSeconds`, as given (an integer when valid).
    pub timeout_seconds: Option<String>,
    /// `limit`, as given (an integer when valid).
    pub limit: Option<String>,
    /// `allowWatchBookmarks`.
    pub allow_watch_bookmarks: bool,
    /// `sendInitialEvents`, when given.
    pub send_initial_events: Option<bool>,
}

/// Go's `Convert_Slice_string_To_bool` of a present parameter: anything but `0` and `false`
/// (any case) is true, the empty value included.
fn go_flag(v: &str) -> bool {
    !(v == "0" || v.eq_ignore_ascii_case("false"))
}

impl Query {
    /// Parses a query string (`application/x-www-form-urlencoded`); unknown keys are ignored
    /// and, as in kube-apiserver's parameter decoding, the first of repeated keys wins. Flags
    /// are true when present with any value but `0` or `false` (`?watch` and `?watch=` are
    /// watches).
    pub fn parse(query: Option<&str>) -> Query {
        const KEYS: [&str; 9] = [
            "labelSelector",
            "fieldSelector",
            "watch",
            "includeObject",
            "resourceVersion",
            "timeoutSeconds",
            "limit",
            "allowWatchBookmarks",
            "sendInitialEvents",
        ];
        let mut q = Query::default();
        let mut seen = [false; KEYS.len()];
        for pair in query.unwrap_or("").split('&').filter(|p| !p.is_empty()) {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            let key = decode(k, true);
            let Some(slot) = KEYS.iter().position(|k| *k == key) else { continue };
            if std::mem::replace(&mut seen[slot], true) {
                continue;
            }
            let v = decode(v, true);
            match slot {
                0 => q.label_selector = v,
                1 => q.field_selector = v,
                2 => q.watch = go_flag(&v),
                3 => q.include_object = v,
                4 => q.resource_version = Some(v),
                5 => q.timeout_seconds = Some(v),
                6 => q.limit = Some(v),
                7 => q.allow_watch_bookmarks = go_flag(&v),
                _ => q.send_initial_events = Some(go_flag(&v)),
            }
        }
        q
    }

    /// Whether the integer options decode (Go's `strconv.ParseInt`), as kube-apiserver's
    /// parameter decoding requires before it trusts a list's options.
    pub fn list_options_decode(&self) -> bool {
        [&self.timeout_seconds, &self.limit].iter().all(|v| v.as_deref().is_none_or(|v| v.parse::<i64>().is_ok()))
    }
}

/// What [`Api::handle`] produced, with the labels for request metrics.
pub struct Handled {
    /// The response.
    pub response: Response<Body>,
    /// Kubernetes verb (`get`, `list`, `watch`, ...).
    pub verb: &'static str,
    /// Resource label (`nodes`, `pods`, `discovery`, ...).
    pub resource: &'static str,
}

/// Answers API requests from the store and the metadata view.
pub struct Api {
    /// Samples and rates.
    store: Arc<Store>,
    /// Pod/Node existence and labels; without it every stored object exists and has no labels.
    metadata: Option<Arc<Metadata>>,
    /// Wall clock: creationTimestamp and freshness.
    clock: SharedClock,
    /// Discovery and OpenAPI documents.
    docs: Documents,
    /// Freshness histogram.
    metrics: Option<Metrics>,
    /// One permit per running watch ([`watch::MAX_WATCHES`]).
    watches: Arc<tokio::sync::Semaphore>,
}

/// An answer in one piece.
fn respond(code: StatusCode, content_type: &'static str, body: Body) -> Response<Body> {
    let mut r = Response::new(body);
    *r.status_mut() = code;
    r.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    r
}

/// A Status answer (always JSON, which every client decodes).
pub fn status_response(status: &Status) -> Response<Body> {
    let mut r = respond(status.code, "application/json", Body::full(status.to_json()));
    if let Some(secs) = status.details.as_ref().and_then(|d| d.retry_after_seconds) {
        r.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from(secs));
    }
    r
}

static NO_LABELS: BTreeMap<String, String> = BTreeMap::new();

impl Api {
    /// An API over `store` and (optionally) `metadata`.
    pub fn new(store: Arc<Store>, metadata: Option<Arc<Metadata>>, clock: SharedClock, metrics: Option<Metrics>) -> Self {
        Self {
            store,
            metadata,
            clock,
            docs: Documents::new(env!("CARGO_PKG_VERSION"), None),
            metrics,
            watches: Arc::new(tokio::sync::Semaphore::new(watch::MAX_WATCHES)),
        }
    }

    /// The same API, with `/apis` naming `port` as the server's address (the secure port).
    pub fn with_secure_port(mut self, port: Option<u16>) -> Self {
        self.docs = Documents::new(env!("CARGO_PKG_VERSION"), port);
        self
    }

    /// Answers one request.
    pub fn handle(&self, method: &Method, uri: &Uri, headers: &HeaderMap) -> Handled {
        self.handle_route(method, Route::parse(uri.path()), uri, headers)
    }

    /// Answers one request whose path the caller already parsed into `route` (the server does,
    /// to choose where a request runs).
    pub fn handle_route(&self, method: &Method, route: Route, uri: &Uri, headers: &HeaderMap) -> Handled {
        let query = Query::parse(uri.query());
        let verb = route.verb(method, query.watch);
        let resource = route.resource();
        let response = match self.answer(method, &route, &query, headers) {
            Ok(r) => r,
            Err(status) => status_response(&status),
        };
        Handled { response, verb, resource }
    }

    fn answer(&self, method: &Method, route: &Route, query: &Query, headers: &HeaderMap) -> Result<Response<Body>, Status> {
        if *route == Route::Unknown {
            return Err(Status::path_not_found());
        }
        if method != Method::GET {
            return Err(Status::method_not_allowed());
        }
        let accept = headers.get(header::ACCEPT).and_then(|v| v.to_str().ok());
        let doc = |b: &bytes::Bytes| Ok(respond(StatusCode::OK, "application/json", Body::full(b.clone())));
        match route {
            Route::Apis => match AggregatedVersion::negotiate(accept) {
                Some(v @ AggregatedVersion::V2) => Ok(respond(StatusCode::OK, v.content_type(), Body::full(self.docs.aggregated_v2.clone()))),
                Some(v @ AggregatedVersion::V2beta1) => {
                    Ok(respond(StatusCode::OK, v.content_type(), Body::full(self.docs.aggregated_v2beta1.clone())))
                }
                None => doc(&self.docs.apis),
            },
            Route::Group => doc(&self.docs.group),
            Route::Resources(v) => doc(self.docs.resources(*v)),
            Route::OpenApiV2 => doc(&self.docs.openapi_v2),
            Route::OpenApiV3 => doc(&self.docs.openapi_v3_index),
            Route::OpenApiV3Group(v) => doc(self.docs.openapi_v3(*v)),
            Route::Version => doc(&self.docs.version),
            Route::Nodes(v) | Route::Pods(v, _) => {
                // kube-apiserver's ListResource order: media type (406), selector syntax and
                // field names (400), watch (405), the list, then the Table conversion (400).
                let encoding = negotiate(accept).ok_or_else(|| Status::not_acceptable(accept.unwrap_or("")))?;
                let labels = LabelSelector::parse(&query.label_selector).map_err(|e| Status::bad_request(e.0))?;
                let fields = FieldSelector::parse_metadata(&query.field_selector).map_err(|e| Status::bad_request(e.0))?;
                if query.watch {
                    return self.watch(route, *v, labels, fields, accept, query);
                }
                let now_ms = self.clock.now_ms();
                let out = Output::new(encoding, query, now_ms, *v);
                match route {
                    Route::Pods(_, ns) => {
                        let out = out?;
                        let mut selection = self.select_pods(ns.as_deref(), labels, fields, now_ms);
                        let mut chunks: Chunks<PodItem> = Box::new(move || selection.next_chunk());
                        if ns.is_none() {
                            // The whole cluster: selected on one thread while encoded on another.
                            chunks = items::prefetched(chunks);
                        }
                        Ok(match out.encoding {
                            Encoding::Json => out.pod_list(json::pod_list_chunks(chunks, now_ms, out.version)),
                            Encoding::Protobuf => out.pod_list(protobuf::pod_list_chunks(chunks, now_ms, out.version)),
                            // A Table is built from the whole list (kubectl get asks for it, not the HPA or top).
                            Encoding::Table(_) => out.pods(items::all(chunks), false),
                        })
                    }
                    _ => {
                        let items = self.list_nodes(&labels, &fields, now_ms);
                        Ok(out?.nodes(items, false))
                    }
                }
            }
            // A single-object GET reads no selector and no `watch` (`GetOptions` has neither).
            Route::Node(v, name) => {
                let encoding = negotiate(accept).ok_or_else(|| Status::not_acceptable(accept.unwrap_or("")))?;
                let now_ms = self.clock.now_ms();
                let item = self.get_node(name, now_ms)?;
                Ok(Output::new(encoding, query, now_ms, *v)?.nodes(vec![item], true))
            }
            Route::Pod(v, ns, name) => {
                let encoding = negotiate(accept).ok_or_else(|| Status::not_acceptable(accept.unwrap_or("")))?;
                let now_ms = self.clock.now_ms();
                let item = self.get_pod(ns, name, now_ms)?;
                Ok(Output::new(encoding, query, now_ms, *v)?.pods(vec![item], true))
            }
            Route::Unknown => Err(Status::path_not_found()),
        }
    }

    /// Starts a watch of a list route (see [`watch`]): JSON or Table events, never protobuf.
    fn watch(
        &self,
        route: &Route,
        version: ApiVersion,
        labels: LabelSelector,
        fields: FieldSelector,
        accept: Option<&str>,
        query: &Query,
    ) -> Result<Response<Body>, Status> {
        let format = match super::media::negotiate_json(accept) {
            Some(Encoding::Table(v)) => Format::Table(v, IncludeObject::parse(&query.include_object).map_err(Status::bad_request)?),
            Some(_) => Format::Json,
            None => return Err(Status::not_acceptable(accept.unwrap_or(""))),
        };
        let start = Start::parse(query.resource_version.as_deref(), query.send_initial_events)?;
        let now_ms = self.clock.now_ms();
        let timeout = match query.timeout_seconds.as_deref().and_then(|t| t.parse::<u64>().ok()) {
            Some(secs) if secs > 0 => std::time::Duration::from_secs(secs),
            _ => watch::default_timeout(now_ms / 1000),
        };
        let scope = match route {
            Route::Pods(_, ns) => Scope::Pods(ns.clone().or_else(|| fields.required("metadata.namespace").map(str::to_owned))),
            _ => Scope::Nodes,
        };
        let slot = self.watches.clone().try_acquire_owned().map_err(|_| Status::too_many_requests(1))?;
        let request = WatchRequest {
            scope,
            version,
            labels,
            fields,
            format,
            start,
            timeout,
            bookmarks: query.allow_watch_bookmarks,
            bookmark_every: std::time::Duration::from_millis(self.store.config().resolution_ms.max(1000) as u64),
        };
        let source = Source { store: self.store.clone(), metadata: self.metadata.clone(), clock: self.clock.clone() };
        Ok(respond(StatusCode::OK, "application/json", watch::start(source, request, slot)?))
    }

    fn observe(&self, now_ms: i64, timestamp_ms: i64) {
        if let Some(m) = &self.metrics {
            observe_age(&m.freshness, now_ms, timestamp_ms);
        }
    }

    /// Nodes matching both selectors, sorted by name.
    pub fn list_nodes(&self, labels: &LabelSelector, fields: &FieldSelector, now_ms: i64) -> Vec<NodeItem> {
        let items = select_nodes(&self.store, self.metadata.as_deref(), labels, fields);
        for i in &items {
            self.observe(now_ms, i.usage.usage.timestamp_ms);
        }
        items
    }

    fn get_node(&self, name: &str, now_ms: i64) -> Result<NodeItem, Status> {
        let labels = match &self.metadata {
            Some(m) => Some(m.read().node(name).cloned().ok_or_else(|| Status::object_not_found("node", name))?),
            None => None,
        };
        let usage = self.store.node(name).ok_or_else(|| Status::metrics_not_found("nodemetrics", name))?;
        self.observe(now_ms, usage.usage.timestamp_ms);
        Ok(NodeItem { usage, labels, resource_version: None })
    }

    /// Running pods in `namespace` (all when `None`) matching both selectors, sorted by
    /// namespace then name, collected (see [`Api::select_pods`] for the chunked walk a list
    /// answer streams from).
    pub fn list_pods(&self, namespace: Option<&str>, labels: &LabelSelector, fields: &FieldSelector, now_ms: i64) -> Vec<PodItem> {
        let mut selection = self.select_pods(namespace, labels.clone(), fields.clone(), now_ms);
        items::all(|| selection.next_chunk())
    }

    /// The pods a list of `namespace` (all when `None`) selects, handed out a chunk at a time
    /// ([`PodSelection`]). A `metadata.namespace=` field selector narrows an all-namespace list
    /// to that namespace's index.
    ///
    /// A label selector with an equality term (`app=foo`, the HPA's) is answered from the
    /// metadata view's label index: only the pods it selects are looked up in the store, so the
    /// query costs O(pods returned), not O(pods in the namespace). Other selectors walk the
    /// store's namespace index. Both give the same answer.
    pub fn select_pods(&self, namespace: Option<&str>, labels: LabelSelector, fields: FieldSelector, now_ms: i64) -> PodSelection {
        let use_index = self.metadata.is_some() && metadata::indexable(&labels);
        self.selection(namespace, labels, fields, now_ms, use_index)
    }

    /// [`Api::select_pods`] with the way of finding candidates chosen by the caller
    /// (`use_index` needs a metadata view and an indexable selector).
    fn selection(&self, namespace: Option<&str>, labels: LabelSelector, fields: FieldSelector, now_ms: i64, use_index: bool) -> PodSelection {
        let namespace = namespace.or(fields.required("metadata.namespace")).map(str::to_owned);
        let walk = match use_index {
            true => Walk::Index { resume: None, done: false },
            false => Walk::Store(PodCursor::new(namespace.as_deref())),
        };
        PodSelection {
            store: self.store.clone(),
            metadata: self.metadata.clone(),
            namespace,
            labels,
            fields,
            walk,
            freshness: self.metrics.as_ref().map(|m| m.freshness.clone()),
            now_ms,
        }
    }

    fn get_pod(&self, namespace: &str, name: &str, now_ms: i64) -> Result<PodItem, Status> {
        let labels = match &self.metadata {
            Some(m) => Some(m.read().pod(namespace, name).cloned().ok_or_else(|| Status::object_not_found("pods", name))?),
            None => None,
        };
        let usage = self
            .store
            .pod(namespace, name)
            .ok_or_else(|| Status::metrics_not_found("podmetrics", &format!("{namespace}/{name}")))?;
        self.observe(now_ms, usage.timestamp_ms);
        Ok(PodItem { usage, labels, resource_version: None })
    }
}

/// The pods a list selects, handed out [`POD_CHUNK`] candidates at a time while the answer is
/// written ([`Api::select_pods`]), so a 150k-pod list holds one chunk of items, never the whole
/// selection. Sorted by namespace then name. Like [`Store::pods_with`], not a snapshot: each
/// pod is read whole, none twice, and one present for the whole walk is in it. Every item
/// handed out is observed in the freshness histogram.
pub struct PodSelection {
    /// Samples and rates.
    store: Arc<Store>,
    /// Existence and labels (`None`: every stored pod exists, without labels).
    metadata: Option<Arc<Metadata>>,
    /// The namespace listed; `None` lists all.
    namespace: Option<String>,
    /// `labelSelector`.
    labels: LabelSelector,
    /// `fieldSelector`.
    fields: FieldSelector,
    /// How the candidates are found, and how far it got.
    walk: Walk,
    /// Age of the data served, seconds (`None` without self-metrics).
    freshness: Option<prometheus::Histogram>,
    /// The request's time, Unix ms.
    now_ms: i64,
}

/// Records in the freshness histogram the age, in seconds, at `now_ms` of data sampled at
/// `timestamp_ms` (both Unix ms; a sample from the future counts as 0).
fn observe_age(freshness: &prometheus::Histogram, now_ms: i64, timestamp_ms: i64) {
    freshness.observe((now_ms - timestamp_ms).max(0) as f64 / 1000.0);
}

/// How a [`PodSelection`] finds its candidates.
enum Walk {
    /// Every pod of the scope, in the store's order.
    Store(PodCursor),
    /// The metadata view's label index (the selector has an equality term): resumes after the
    /// last pod handed out.
    Index { resume: Option<(Arc<str>, Arc<str>)>, done: bool },
}

impl PodSelection {
    /// The next non-empty chunk of selected pods, or `None` once all were handed out.
    pub fn next_chunk(&mut self) -> Option<Vec<PodItem>> {
        loop {
            let chunk = match &mut self.walk {
                Walk::Store(cursor) => walk_chunk(&self.store, self.metadata.as_deref(), cursor, &self.labels, &self.fields)?,
                Walk::Index { resume, done } => {
                    let metadata = self.metadata.as_deref()?;
                    if *done {
                        return None;
                    }
                    let after = resume.as_ref().map(|(ns, name)| (&**ns, &**name));
                    let Some(selection) = metadata.read().select_pods(self.namespace.as_deref(), &self.labels, after, POD_CHUNK)
                    else {
                        *done = true;
                        return None;
                    };
                    *done = selection.resume.is_none();
                    *resume = selection.resume;
                    let fields = &self.fields;
                    let wanted: Vec<_> = selection
                        .pods
                        .into_iter()
                        .filter(|(ns, name, _)| fields.matches_metadata(ns, name))
                        .map(|(ns, name, l)| (ns, name, Some(l)))
                        .collect();
                    self.store.pods_of(wanted)
                }
            };
            if chunk.is_empty() {
                continue;
            }
            if let Some(h) = &self.freshness {
                for (usage, _) in &chunk {
                    observe_age(h, self.now_ms, usage.timestamp_ms);
                }
            }
            return Some(chunk.into_iter().map(|(usage, labels)| PodItem { usage, labels, resource_version: None }).collect());
        }
    }
}

/// One chunk of a store walk: the pods among the next [`POD_CHUNK`] that exist in the
/// metadata view (when there is one) and match both selectors, with their labels.
fn walk_chunk(
    store: &Store,
    metadata: Option<&Metadata>,
    cursor: &mut PodCursor,
    labels: &LabelSelector,
    fields: &FieldSelector,
) -> Option<Vec<(PodUsage, Option<Labels>)>> {
    // The metadata read guard is taken per chunk of the store's walk, never across it.
    store.next_pods(cursor, || metadata.map(|m| m.read()), |meta, ns, name| {
        if !fields.matches_metadata(ns, name) {
            return None;
        }
        let found: Option<Labels> = match meta {
            Some(m) => Some(m.pod(ns, name)?.clone()),
            None => None,
        };
        labels.matches(found.as_deref().unwrap_or(&NO_LABELS)).then_some(found)
    })
}

/// Servable nodes matching both selectors, sorted by name, with their labels.
pub fn select_nodes(store: &Store, metadata: Option<&Metadata>, labels: &LabelSelector, fields: &FieldSelector) -> Vec<NodeItem> {
    let meta = metadata.map(|m| m.read());
    store
        .nodes(|name| {
            if !fields.matches_metadata("", name) {
                return None;
            }
            let found: Option<Labels> = match &meta {
                Some(m) => Some(m.node(name)?.clone()),
                None => None,
            };
            labels.matches(found.as_deref().unwrap_or(&NO_LABELS)).then_some(found)
        })
        .into_iter()
        .map(|(usage, labels)| NodeItem { usage, labels, resource_version: None })
        .collect()
}

/// Node `name` if it is servable and matches both selectors.
pub fn select_node(store: &Store, metadata: Option<&Metadata>, name: &str, labels: &LabelSelector, fields: &FieldSelector) -> Option<NodeItem> {
    if !fields.matches_metadata("", name) {
        return None;
    }
    let found: Option<Labels> = match metadata {
        Some(m) => Some(m.read().node(name)?.clone()),
        None => None,
    };
    if !labels.matches(found.as_deref().unwrap_or(&NO_LABELS)) {
        return None;
    }
    Some(NodeItem { usage: store.node(name)?, labels: found, resource_version: None })
}

/// Pod `namespace/name` if it is servable and matches both selectors.
pub fn select_pod(
    store: &Store,
    metadata: Option<&Metadata>,
    namespace: &str,
    name: &str,
    labels: &LabelSelector,
    fields: &FieldSelector,
) -> Option<PodItem> {
    if !fields.matches_metadata(namespace, name) {
        return None;
    }
    let found: Option<Labels> = match metadata {
        Some(m) => Some(m.read().pod(namespace, name)?.clone()),
        None => None,
    };
    if !labels.matches(found.as_deref().unwrap_or(&NO_LABELS)) {
        return None;
    }
    Some(PodItem { usage: store.pod(namespace, name)?, labels: found, resource_version: None })
}

/// How to write the answer of a resource request.
struct Output {
    encoding: Encoding,
    include: IncludeObject,
    now_ms: i64,
    version: ApiVersion,
}

impl Output {
    /// `includeObject` is read only for a Table, once the objects are there (upstream converts
    /// the list to a Table after listing it, and only then checks the parameter).
    fn new(encoding: Encoding, query: &Query, now_ms: i64, version: ApiVersion) -> Result<Output, Status> {
        let include = match encoding {
            Encoding::Table(_) => IncludeObject::parse(&query.include_object).map_err(Status::bad_request)?,
            _ => IncludeObject::default(),
        };
        Ok(Output { encoding, include, now_ms, version })
    }

    fn table_options(&self, version: super::media::TableVersion) -> TableOptions {
        TableOptions { version, include: self.include, now_ms: self.now_ms, api: self.version, resource_version: Some(self.now_ms) }
    }

    /// `single`: a GET of one object (not a list).
    fn nodes(&self, items: Vec<NodeItem>, single: bool) -> Response<Body> {
        let ct = self.encoding.content_type();
        let body = match (self.encoding, single) {
            (Encoding::Json, true) => {
                let mut out = Vec::with_capacity(512);
                json::write_node(&mut out, &items[0], self.now_ms, Some(self.version));
                out.push(b'\n');
                Body::full(out)
            }
            (Encoding::Json, false) => json::node_list(items, self.now_ms, self.version),
            (Encoding::Protobuf, true) => Body::full(protobuf::node(&items[0], self.now_ms, self.version)),
            (Encoding::Protobuf, false) => protobuf::node_list(items, self.now_ms, self.version),
            (Encoding::Table(v), _) => table::nodes(items, self.table_options(v)),
        };
        respond(StatusCode::OK, ct, body)
    }

    /// A pod list's body, already encoded in this output's encoding.
    fn pod_list(&self, body: Body) -> Response<Body> {
        respond(StatusCode::OK, self.encoding.content_type(), body)
    }

    fn pods(&self, items: Vec<PodItem>, single: bool) -> Response<Body> {
        let ct = self.encoding.content_type();
        let body = match (self.encoding, single) {
            (Encoding::Json, true) => {
                let mut out = Vec::with_capacity(1024);
                json::write_pod(&mut out, &items[0], self.now_ms, Some(self.version));
                out.push(b'\n');
                Body::full(out)
            }
            (Encoding::Json, false) => json::pod_list(items, self.now_ms, self.version),
            (Encoding::Protobuf, true) => Body::full(protobuf::pod(&items[0], self.now_ms, self.version)),
            (Encoding::Protobuf, false) => protobuf::pod_list(items, self.now_ms, self.version),
            (Encoding::Table(v), _) => table::pods(items, self.table_options(v)),
        };
        respond(StatusCode::OK, ct, body)
    }
}

#[cfg(test)]
mod tests {
    use shardmetrics_plumbing::clock::ManualClock;
    use shardmetrics_proto::{ContainerSample, NodeScrape, PodSamples, Point};

    use super::*;
    use crate::store::StoreConfig;

    const T0: i64 = 1_767_225_600_000;

    #[test]
    fn paths_route_like_metrics_server() {
        use ApiVersion::{V1, V1beta1};
        assert_eq!(Route::parse("/apis/metrics.k8s.io/v1beta1/nodes"), Route::Nodes(V1beta1));
        assert_eq!(Route::parse("/apis/metrics.k8s.io/v1beta1/nodes/"), Route::Nodes(V1beta1));
        assert_eq!(Route::parse("/apis/metrics.k8s.io/v1beta1/nodes/n%2D1"), Route::Node(V1beta1, "n-1".into()));
        assert_eq!(Route::parse("/apis/metrics.k8s.io/v1beta1/pods"), Route::Pods(V1beta1, None));
        assert_eq!(Route::parse("/apis/metrics.k8s.io/v1beta1/namespaces/a/pods"), Route::Pods(V1beta1, Some("a".into())));
        assert_eq!(Route::parse("/apis/metrics.k8s.io/v1beta1/namespaces/a/pods/p"), Route::Pod(V1beta1, "a".into(), "p".into()));
        assert_eq!(Route::parse("/apis/metrics.k8s.io/v1beta1"), Route::Resources(V1beta1));
        assert_eq!(Route::parse("/apis/metrics.k8s.io/v1"), Route::Resources(V1));
        assert_eq!(Route::parse("/apis/metrics.k8s.io/v1/namespaces/a/pods/p"), Route::Pod(V1, "a".into(), "p".into()));
        assert_eq!(Route::parse("/openapi/v3/apis/metrics.k8s.io/v1"), Route::OpenApiV3Group(V1));
        assert_eq!(Route::parse("/openapi/v3/apis/metrics.k8s.io/v1beta1"), Route::OpenApiV3Group(V1beta1));
        assert_eq!(Route::parse("/apis/metrics.k8s.io/v2/nodes"), Route::Unknown);
        assert_eq!(Route::parse("/apis/metrics.k8s.io/v1beta1/namespaces/a"), Route::Unknown);
        assert_eq!(Route::parse("/apis/metrics.k8s.io/v1beta1/namespaces//pods"), Route::Unknown);
        assert_eq!(Route::parse("/api/v1/nodes"), Route::Unknown);
        assert_eq!(Route::parse("/"), Route::Unknown);
    }

    #[test]
    fn query_parameters_are_form_decoded() {
        let q = Query::parse(Some("labelSelector=app%20in%20(a%2Cb),tier&fieldSelector=metadata.name%3Dx&watch=1&limit=500"));
        assert_eq!(q.label_selector, "app in (a,b),tier");
        assert_eq!(q.field_selector, "metadata.name=x");
        assert!(q.watch);
        assert_eq!(Query::parse(Some("labelSelector=a+b")).label_selector, "a b");
        assert_eq!(decode("%zz%4", false), "%zz%4");
        assert_eq!(Query::parse(Some("labelSelector=a&labelSelector=b")).label_selector, "a", "the first value wins");
        for (q, watch) in [("watch", true), ("watch=", true), ("watch=yes", true), ("watch=0", false), ("watch=FALSE", false), ("", false)] {
            assert_eq!(Query::parse(Some(q)).watch, watch, "{q:?}");
        }
    }

    fn api() -> Api {
        api_with_clock().0
    }

    fn api_with_clock() -> (Api, Arc<ManualClock>, Arc<Store>) {
        // The store has been up for a minute: it vouches for removals since then.
        let clock = ManualClock::new(T0 - 60_000);
        let store = Arc::new(Store::new(StoreConfig { resolution_ms: 15_000, max_staleness_ms: 45_000 }, clock.clone()));
        clock.set_ms(T0 + 20_000);
        for t in [0i64, 15_000] {
            store.ingest_scrape(&scrape(t, &["web-1", "web-2"]));
        }
        let metadata = Metadata::new();
        use kube::runtime::watcher::Event;
        let l = |pairs: &[(&str, &str)]| pairs.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect();
        metadata.apply_pod(Event::Apply((("default".into(), "web-1".into()), l(&[("app", "web")]))));
        metadata.apply_pod(Event::Apply((("default".into(), "web-2".into()), l(&[("app", "api")]))));
        metadata.apply_node(Event::Apply(("n1".into(), l(&[("zone", "a")]))));
        (Api::new(store.clone(), Some(metadata), clock.clone(), None), clock, store)
    }

    fn scrape(t: i64, pods: &[&str]) -> NodeScrape {
        let point = |cpu: u64| Point { timestamp_ms: T0 + t, cpu_usage_ns: cpu * t as u64, memory_working_set_bytes: 1024, swap_usage_bytes: None };
        NodeScrape {
            node: "n1".into(),
            scraped_at_ms: T0 + t,
            node_usage: Some(point(4_000_000)),
            pods: pods
                .iter()
                .map(|name| PodSamples {
                    namespace: "default".into(),
                    name: (*name).into(),
                    containers: vec![ContainerSample { name: "app".into(), start_time_ms: 1, usage: point(1_000_000) }],
                })
                .collect(),
        }
    }

    /// The next `n` events of a watch body (each frame one JSON line).
    async fn events(body: &mut Body, n: usize) -> Vec<serde_json::Value> {
        let mut out = Vec::new();
        while out.len() < n {
            let frame = tokio::time::timeout(std::time::Duration::from_secs(5), std::future::poll_fn(|cx| {
                http_body::Body::poll_frame(std::pin::Pin::new(&mut *body), cx)
            }))
            .await
            .expect("an event within 5 s")
            .expect("the stream goes on")
            .expect("infallible");
            let bytes = frame.into_data().expect("data");
            assert!(bytes.ends_with(b"\n"), "one event per line");
            out.push(serde_json::from_slice(&bytes).expect("json event"));
        }
        out
    }

    fn watch(api: &Api, uri: &str, accept: Option<&str>) -> (StatusCode, Body) {
        let mut headers = HeaderMap::new();
        if let Some(a) = accept {
            headers.insert(header::ACCEPT, HeaderValue::from_str(a).expect("header"));
        }
        let h = api.handle(&Method::GET, &uri.parse().expect("uri"), &headers);
        assert_eq!(h.verb, "watch");
        (h.response.status(), h.response.into_body())
    }

    fn summary(events: &[serde_json::Value]) -> Vec<(String, String, String)> {
        events
            .iter()
            .map(|e| {
                let m = &e["object"]["metadata"];
                (e["type"].as_str().unwrap_or("").to_owned(), m["name"].as_str().unwrap_or("").to_owned(), m["resourceVersion"].as_str().unwrap_or("").to_owned())
            })
            .collect()
    }

    #[tokio::test]
    async fn a_watch_streams_added_modified_and_deleted_as_scrapes_land_and_resumes_from_a_sample_time() {
        let (api, clock, store) = api_with_clock();
        let rv = |t: i64| (T0 + t).to_string();
        let (code, mut all) = watch(&api, "/apis/metrics.k8s.io/v1beta1/namespaces/default/pods?watch=true", None);
        assert_eq!(code, 200);
        let (_, mut web) = watch(&api, "/apis/metrics.k8s.io/v1/pods?watch=1&labelSelector=app%3Dweb", None);
        let (_, mut nodes) = watch(&api, "/apis/metrics.k8s.io/v1beta1/nodes?watch=true&sendInitialEvents=true&allowWatchBookmarks=true", None);
        let first = events(&mut all, 2).await;
        assert_eq!(summary(&first), [("ADDED".into(), "web-1".into(), rv(15_000)), ("ADDED".into(), "web-2".into(), rv(15_000))]);
        assert_eq!(first[0]["object"]["kind"], "PodMetrics");
        assert_eq!(first[0]["object"]["containers"][0]["usage"]["cpu"], "1");
        assert_eq!(summary(&events(&mut web, 1).await), [("ADDED".into(), "web-1".into(), rv(15_000))]);
        let n = events(&mut nodes, 2).await;
        assert_eq!(summary(&n)[0], ("ADDED".into(), "n1".into(), rv(15_000)));
        assert_eq!(n[1]["type"], "BOOKMARK");
        assert_eq!(n[1]["object"]["metadata"]["annotations"]["k8s.io/initial-events-end"], "true");

        // web-2 leaves the node: web-1 modified, web-2 deleted (with its last state).
        clock.set_ms(T0 + 31_000);
        store.ingest_scrape(&scrape(30_000, &["web-1"]));
        let next = events(&mut all, 2).await;
        assert_eq!(summary(&next), [("MODIFIED".into(), "web-1".into(), rv(30_000)), ("DELETED".into(), "web-2".into(), rv(15_000))]);
        assert_eq!(next[1]["object"]["metadata"]["namespace"], "default");
        assert_eq!(summary(&events(&mut web, 1).await), [("MODIFIED".into(), "web-1".into(), rv(30_000))]);
        assert_eq!(summary(&events(&mut nodes, 1).await)[0], ("MODIFIED".into(), "n1".into(), rv(30_000)));

        // Resumed from the first version, on any replica: the objects sampled since (minus the
        // replay window) again, and the removal.
        let (_, mut resumed) = watch(&api, &format!("/apis/metrics.k8s.io/v1beta1/namespaces/default/pods?watch=true&resourceVersion={}", rv(15_000)), None);
        assert_eq!(summary(&events(&mut resumed, 2).await), [("MODIFIED".into(), "web-1".into(), rv(30_000)), ("DELETED".into(), "web-2".into(), rv(31_000))], "a tombstone's version is its removal time");

        // Too old: one ERROR event with 410 Expired, then the end.
        let (code, mut old) = watch(&api, "/apis/metrics.k8s.io/v1beta1/pods?watch=true&resourceVersion=1", None);
        assert_eq!(code, 200);
        let e = events(&mut old, 1).await;
        assert_eq!((e[0]["type"].as_str(), e[0]["object"]["code"].as_u64(), e[0]["object"]["reason"].as_str()), (Some("ERROR"), Some(410), Some("Expired")));
        assert!(e[0]["object"]["message"].as_str().is_some_and(|m| m.starts_with("too old resource version: 1 (")), "{e:?}");

        // A Table watch (kubectl get -w): each event a one-row Table with the object's version.
        let (_, mut table) = watch(&api, "/apis/metrics.k8s.io/v1beta1/pods?watch=true", Some("application/json;as=Table;v=v1;g=meta.k8s.io,application/json"));
        let t = events(&mut table, 1).await;
        assert_eq!((t[0]["type"].as_str(), t[0]["object"]["kind"].as_str()), (Some("ADDED"), Some("Table")));
        assert_eq!(t[0]["object"]["rows"][0]["cells"][0], "web-1");
        assert_eq!(t[0]["object"]["rows"][0]["object"]["metadata"]["resourceVersion"], rv(30_000));

        // Bad versions and protobuf-only clients are refused up front.
        let (code, _, v) = get(&api, "/apis/metrics.k8s.io/v1beta1/pods?watch=true&resourceVersion=abc", None);
        assert_eq!((code.as_u16(), v["message"].as_str()), (400, Some(r#"invalid resource version: strconv.ParseUint: parsing "abc": invalid syntax"#)));
        let (code, _, _) = get(&api, "/apis/metrics.k8s.io/v1beta1/pods?watch=true", Some("application/vnd.kubernetes.protobuf"));
        assert_eq!(code, 406);
    }

    fn get(api: &Api, uri: &str, accept: Option<&str>) -> (StatusCode, String, serde_json::Value) {
        let mut headers = HeaderMap::new();
        if let Some(a) = accept {
            headers.insert(header::ACCEPT, HeaderValue::from_str(a).expect("header"));
        }
        let h = api.handle(&Method::GET, &uri.parse().expect("uri"), &headers);
        let ct = h.response.headers().get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok()).unwrap_or("").to_owned();
        let code = h.response.status();
        let bytes = h.response.into_body().collect_bytes();
        (code, ct, serde_json::from_slice(&bytes).unwrap_or(serde_json::Value::Null))
    }

    /// A scrape of `node` at `T0 + t` (shard clock the same) holding `pods` (namespace, name).
    fn node_scrape(node: &str, t: i64, pods: &[(String, String)]) -> NodeScrape {
        let point = |cpu: u64| Point { timestamp_ms: T0 + t, cpu_usage_ns: cpu * (t + 100_000) as u64, memory_working_set_bytes: 1024, swap_usage_bytes: None };
        NodeScrape {
            node: node.into(),
            scraped_at_ms: T0 + t,
            node_usage: Some(point(4_000_000)),
            pods: pods
                .iter()
                .map(|(ns, name)| PodSamples {
                    namespace: ns.as_str().into(),
                    name: name.clone(),
                    containers: vec![ContainerSample { name: "app".into(), start_time_ms: 1, usage: point(1_000_000) }],
                })
                .collect(),
        }
    }

    #[test]
    fn the_label_index_path_returns_exactly_what_the_walk_returns() {
        use kube::runtime::watcher::Event;
        let clock = ManualClock::new(T0 + 20_000);
        let store = Arc::new(Store::new(StoreConfig { resolution_ms: 15_000, max_staleness_ms: 45_000 }, clock.clone()));
        let metadata = Metadata::new();
        let (mut fresh, mut stale, mut single) = (Vec::new(), Vec::new(), Vec::new());
        let apps = ["web", "api", "db"];
        for i in 0..240usize {
            let key = (["a", "b", "c"][i % 3].to_owned(), format!("p{i:03}"));
            match i {
                _ if i % 5 == 0 => stale.push(key.clone()),
                _ if i % 7 == 0 => single.push(key.clone()),
                _ => fresh.push(key.clone()),
            }
            if i % 11 == 0 {
                continue; // no metadata yet
            }
            let mut l: BTreeMap<String, String> = [("app", apps[i / 3 % 3]), ("hash", if i % 2 == 0 { "h1" } else { "h2" })]
                .map(|(k, v)| (k.to_owned(), v.to_owned()))
                .into();
            if i % 4 == 0 {
                l.insert("canary".into(), String::new());
            }
            if i % 6 != 0 {
                l.insert("tier".into(), if i % 10 < 5 { "front" } else { "back" }.into());
            }
            metadata.apply_pod(Event::Apply((key, l)));
        }
        // More than a chunk of one app in one namespace, and pods with metadata but no data.
        for i in 0..1100usize {
            fresh.push(("big".into(), format!("bulk-{i:04}")));
            metadata.apply_pod(Event::Apply((("big".into(), format!("bulk-{i:04}")), BTreeMap::from([("app".into(), "web".into())]))));
        }
        for ns in ["a", "zz"] {
            metadata.apply_pod(Event::Apply(((ns.into(), "ghost".into()), BTreeMap::from([("app".into(), "web".into())]))));
        }
        // Stale: last scraped 50 s before now (max staleness 45 s); single: one scrape, no rate.
        for t in [-45_000, -30_000] {
            store.ingest_scrape(&node_scrape("stale", t, &stale));
        }
        for t in [0, 15_000] {
            store.ingest_scrape(&node_scrape("fresh", t, &fresh));
        }
        store.ingest_scrape(&node_scrape("single", 15_000, &single));
        let api = Api::new(store.clone(), Some(metadata.clone()), clock.clone(), None);

        let mut compared = 0;
        for selector in [
            "app=web",
            "app==api,hash=h1",
            "app in (db)",
            "app=web,tier!=back",
            "app=web,tier in (front,back)",
            "app=web,tier notin (front)",
            "hash=h2,canary",
            "hash=h2,!canary",
            "hash=h1,!tier",
            "canary=",
            "app=web,app=api",
            "app=nope",
            "app in (web,api)",
            "tier!=back",
            "",
        ] {
            let labels = LabelSelector::parse(selector).expect("selector");
            for fields in ["", "metadata.name!=p010", "metadata.namespace=b", "metadata.name=bulk-1099"] {
                let fields = FieldSelector::parse_metadata(fields).expect("fields");
                for ns in [None, Some("a"), Some("b"), Some("big"), Some("zz")] {
                    let walked = selected(api.selection(ns, labels.clone(), fields.clone(), T0, false));
                    let indexed = if indexable(&labels) { selected(api.selection(ns, labels.clone(), fields.clone(), T0, true)) } else { Vec::new() };
                    let through_api: Vec<_> =
                        api.list_pods(ns, &labels, &fields, T0 + 20_000).into_iter().map(|i| (i.usage, i.labels)).collect();
                    let key = |v: &[(PodUsage, Option<Labels>)]| v.iter().map(|(u, _)| format!("{}/{}", u.namespace, u.name)).collect::<Vec<_>>();
                    assert!(key(&walked).windows(2).all(|w| w[0] < w[1]), "sorted: {selector:?}");
                    if indexable(&labels) {
                        assert_eq!(indexed, walked, "{selector:?} {fields} in {ns:?}");
                        compared += usize::from(!walked.is_empty());
                    }
                    assert_eq!(through_api, walked, "{selector:?} {fields} in {ns:?}");
                    for name in ["a/p000", "a/p015", "a/p033", "a/p021", "a/ghost", "zz/ghost"] {
                        assert!(!key(&walked).contains(&name.to_owned()), "{name}: stale, no metadata, no rate or no data");
                    }
                }
            }
        }
        assert!(compared > 50, "the selections compared are not all empty ({compared})");
        let web = LabelSelector::parse("app=web").expect("selector");
        assert_eq!(selected(api.selection(Some("big"), web, FieldSelector::default(), T0, true)).len(), 1100, "across chunks");

        // A cluster-wide list answered through the router is written while it is selected,
        // chunk by chunk: the same pods, in order, in JSON and protobuf.
        let all: Vec<String> = api
            .list_pods(None, &LabelSelector::default(), &FieldSelector::default(), T0 + 20_000)
            .iter()
            .map(|i| format!("{}/{}", i.usage.namespace, i.usage.name))
            .collect();
        assert!(all.len() > POD_CHUNK, "{} pods", all.len());
        let (code, _, json) = get(&api, "/apis/metrics.k8s.io/v1beta1/pods", None);
        assert_eq!(code, StatusCode::OK);
        let names: Vec<String> = json["items"]
            .as_array()
            .expect("items")
            .iter()
            .map(|i| format!("{}/{}", i["metadata"]["namespace"].as_str().unwrap_or(""), i["metadata"]["name"].as_str().unwrap_or("")))
            .collect();
        assert_eq!(names, all, "JSON");
        let mut headers = HeaderMap::new();
        headers.insert(header::ACCEPT, HeaderValue::from_static("application/vnd.kubernetes.protobuf"));
        let h = api.handle(&Method::GET, &"/apis/metrics.k8s.io/v1/pods".parse().expect("uri"), &headers);
        let (_, raw) = protobuf::decode_envelope(&h.response.into_body().collect_bytes()).expect("envelope");
        let list = <protobuf::PodMetricsList as prost::Message>::decode(raw.as_slice()).expect("list");
        let names: Vec<String> = list
            .items
            .iter()
            .map(|i| {
                let meta = i.metadata.as_ref().expect("metadata");
                format!("{}/{}", meta.namespace.as_deref().unwrap_or(""), meta.name.as_deref().unwrap_or(""))
            })
            .collect();
        assert_eq!(names, all, "protobuf");
    }

    /// Everything a selection hands out, with the chunks' bounds checked.
    fn selected(mut selection: PodSelection) -> Vec<(PodUsage, Option<Labels>)> {
        let mut out = Vec::new();
        while let Some(chunk) = selection.next_chunk() {
            assert!(!chunk.is_empty() && chunk.len() <= POD_CHUNK, "{} items in a chunk", chunk.len());
            out.extend(chunk.into_iter().map(|i| (i.usage, i.labels)));
        }
        assert!(selection.next_chunk().is_none(), "stays finished");
        out
    }

    fn indexable(labels: &LabelSelector) -> bool {
        crate::metadata::indexable(labels)
    }

    #[test]
    fn a_label_selector_filters_pods_by_their_metadata_labels() {
        let api = api();
        let (code, _, v) = get(&api, "/apis/metrics.k8s.io/v1beta1/namespaces/default/pods?labelSelector=app%3Dweb", None);
        assert_eq!(code, 200);
        assert_eq!(v["items"].as_array().map(Vec::len), Some(1));
        assert_eq!(v["items"][0]["metadata"]["labels"]["app"], "web");
        assert_eq!(v["items"][0]["containers"][0]["usage"]["cpu"], "1");
        let (_, _, v) = get(&api, "/apis/metrics.k8s.io/v1beta1/pods?fieldSelector=metadata.namespace%3Ddefault,metadata.name!%3Dweb-1", None);
        assert_eq!(v["items"][0]["metadata"]["name"], "web-2");
    }

    #[test]
    fn objects_missing_from_metadata_or_store_are_not_found_statuses() {
        let api = api();
        let (code, _, v) = get(&api, "/apis/metrics.k8s.io/v1beta1/nodes/n2", None);
        assert_eq!((code.as_u16(), v["reason"].as_str()), (404, Some("NotFound")));
        assert_eq!(v["message"], "node \"n2\" not found");
        let (code, _, v) = get(&api, "/apis/metrics.k8s.io/v1beta1/namespaces/x/pods/web-1", None);
        assert_eq!(code, 404);
        assert_eq!(v["message"], "pods \"web-1\" not found", "the metadata pod lister's resource");
        assert_eq!(v["details"], serde_json::json!({"name": "web-1", "kind": "pods"}));
        let (_, _, v) = get(&api, "/apis/metrics.k8s.io/v1beta1/nodes/n1?watch=true&labelSelector=%3D%3D", None);
        assert_eq!(v["kind"], "NodeMetrics", "a GET reads neither watch nor selectors");
        let (_, _, v) = get(&api, "/apis/metrics.k8s.io/v1beta1/nodes/n1", None);
        assert_eq!(v["kind"], "NodeMetrics");
        assert_eq!(v["metadata"]["labels"]["zone"], "a");
    }

    #[test]
    fn watch_bad_selectors_other_methods_and_unknown_media_are_statuses() {
        let api = api();
        let (code, _, v) = get(&api, "/apis/metrics.k8s.io/v1beta1/pods?labelSelector=a%20b", None);
        assert_eq!((code.as_u16(), v["reason"].as_str()), (400, Some("BadRequest")));
        assert_eq!(v["message"], "unable to parse requirement: found 'b', expected: in, notin, =, ==, !=, gt, lt");
        let (code, _, v) = get(&api, "/apis/metrics.k8s.io/v1beta1/pods?fieldSelector=spec.nodeName%3Dn1&watch=true", None);
        assert_eq!(code, 400, "selectors are checked before watch");
        assert_eq!(v["message"], r#""spec.nodeName" is not a known field selector: only "metadata.name", "metadata.namespace""#);
        let table = Some("application/json;as=Table;v=v1;g=meta.k8s.io");
        let (code, _, _) = get(&api, "/apis/metrics.k8s.io/v1beta1/pods?includeObject=x", None);
        assert_eq!(code, 200, "includeObject is read for Tables only");
        let (code, _, v) = get(&api, "/apis/metrics.k8s.io/v1beta1/pods?includeObject=x", table);
        assert_eq!(code, 400);
        assert_eq!(
            v["message"],
            "Unable to convert to Table as requested: includeObject: Invalid value: \"x\": must be 'Metadata', 'Object', 'None', or empty"
        );
        let (code, _, _) = get(&api, "/apis/metrics.k8s.io/v1beta1/pods", Some("text/html"));
        assert_eq!(code, 406);
        let h = api.handle(&Method::DELETE, &"/apis/metrics.k8s.io/v1beta1/pods".parse().expect("uri"), &HeaderMap::new());
        assert_eq!(h.response.status(), 405);
        assert_eq!(h.verb, "delete");
        let (code, _, v) = get(&api, "/apis/nope", None);
        assert_eq!((code.as_u16(), v["kind"].as_str()), (404, Some("Status")));
    }

    #[test]
    fn v1_serves_the_same_objects_as_v1beta1_with_its_own_api_version() {
        let api = api();
        for (path, kind) in [("nodes", "NodeMetricsList"), ("pods", "PodMetricsList"), ("namespaces/default/pods", "PodMetricsList")] {
            let (code, _, v1) = get(&api, &format!("/apis/metrics.k8s.io/v1/{path}"), None);
            let (_, _, beta) = get(&api, &format!("/apis/metrics.k8s.io/v1beta1/{path}"), None);
            assert_eq!(code, 200);
            assert_eq!((v1["kind"].as_str(), v1["apiVersion"].as_str()), (Some(kind), Some("metrics.k8s.io/v1")));
            assert_eq!(v1["items"], beta["items"], "{path}");
        }
        let (_, _, pod) = get(&api, "/apis/metrics.k8s.io/v1/namespaces/default/pods/web-1", None);
        assert_eq!(pod["apiVersion"], "metrics.k8s.io/v1");
        let table = Some("application/json;as=Table;v=v1;g=meta.k8s.io");
        let (_, _, t) = get(&api, "/apis/metrics.k8s.io/v1/nodes?includeObject=Object", table);
        assert_eq!(t["rows"][0]["object"]["apiVersion"], "metrics.k8s.io/v1");
        let (code, _, v) = get(&api, "/apis/metrics.k8s.io/v1", None);
        assert_eq!((code.as_u16(), v["groupVersion"].as_str()), (200, Some("metrics.k8s.io/v1")));
        let mut headers = HeaderMap::new();
        headers.insert(header::ACCEPT, HeaderValue::from_static("application/vnd.kubernetes.protobuf"));
        let body = api.handle(&Method::GET, &"/apis/metrics.k8s.io/v1/pods".parse().expect("uri"), &headers).response.into_body().collect_bytes();
        let (tm, _) = protobuf::decode_envelope(&body).expect("envelope");
        assert_eq!(tm.api_version.as_deref(), Some("metrics.k8s.io/v1"));
    }

    #[test]
    fn json_bodies_end_with_a_newline_like_go_encoders() {
        let api = api();
        for (uri, accept) in [
            ("/apis/metrics.k8s.io/v1beta1/nodes", None),
            ("/apis/metrics.k8s.io/v1beta1/nodes/n1", None),
            ("/apis/metrics.k8s.io/v1beta1/pods", None),
            ("/apis/metrics.k8s.io/v1beta1/namespaces/default/pods/web-1", None),
            ("/apis/metrics.k8s.io/v1beta1/pods", Some("application/json;as=Table;v=v1;g=meta.k8s.io")),
            ("/apis/metrics.k8s.io/v1beta1/nodes/nope", None),
        ] {
            let mut headers = HeaderMap::new();
            if let Some(a) = accept {
                headers.insert(header::ACCEPT, HeaderValue::from_static(a));
            }
            let body = api.handle(&Method::GET, &uri.parse().expect("uri"), &headers).response.into_body().collect_bytes();
            assert!(body.ends_with(b"}\n"), "{uri}: {}", String::from_utf8_lossy(&body));
        }
    }

    #[test]
    fn tables_and_aggregated_discovery_are_negotiated() {
        let api = api();
        let (_, ct, v) = get(&api, "/apis/metrics.k8s.io/v1beta1/nodes", Some("application/json;as=Table;v=v1;g=meta.k8s.io,application/json"));
        assert_eq!(ct, "application/json", "as kube-apiserver labels a Table");
        assert_eq!(v["rows"][0]["cells"][0], "n1");
        let (_, ct, v) = get(&api, "/apis", Some("application/json;g=apidiscovery.k8s.io;v=v2;as=APIGroupDiscoveryList"));
        assert_eq!(ct, "application/json;g=apidiscovery.k8s.io;v=v2;as=APIGroupDiscoveryList");
        assert_eq!(v["kind"], "APIGroupDiscoveryList");
        let (_, _, v) = get(&api, "/apis", None);
        assert_eq!(v["kind"], "APIGroupList");
    }
}
