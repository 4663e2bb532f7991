//! Where requests enter: authentication, request parsing (as kube-apiserver's RequestInfo),
//! authorization, then discovery, the REST verbs on stored resources, reviews, or the
//! aggregation proxy.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use futures::StreamExt;
use http::{HeaderMap, Method, Request, Response, StatusCode, header};
use http_body_util::{BodyExt, StreamBody};
use hyper::body::{Frame, Incoming};
use serde_json::{Value, json};
use shardmetrics_plumbing::clock::SharedClock;
use tokio::sync::{broadcast, mpsc, watch};

use super::discovery;
use super::error::ApiError;
use super::patch::{self, PatchType};
use super::protobuf;
use super::policy::{Attributes, Policy, UserInfo};
use super::proxy::{METRICS_GROUP, Proxy};
use super::resources::{self, ResourceId, Review, STORED};
use super::reviews;
use shardmetrics_plumbing::selector::{FieldSelector, LabelSelector};
use super::store::{Change, EventType, Filter, Page, Part, Store};
use super::metadata;
use super::table;
use crate::httputil::{Body, BoxError, PeerInfo, json_response, query_pairs, read_body, response};
use shardmetrics_plumbing::pki;

/// Largest request body accepted (kube-apiserver's limit is 3 MiB for most objects).
const MAX_BODY: usize = 3 * 1024 * 1024;
/// Size of the chunks a list response is streamed in.
const LIST_CHUNK: usize = 64 * 1024;
/// Watch events queued per watch before the sender waits for the client.
const WATCH_QUEUE: usize = 256;

/// Request counters, for tests and reports.
#[derive(Debug, Default)]
pub struct ApiStats {
    /// Requests received (any outcome).
    pub requests: AtomicU64,
    /// Requests refused with 401.
    pub unauthorized: AtomicU64,
    /// Requests refused with 403.
    pub forbidden: AtomicU64,
    /// Watches started.
    pub watches_started: AtomicU64,
    /// Watches currently open.
    pub watches_open: AtomicI64,
    /// Collection lists served (initial lists and re-lists after 410 Gone).
    pub lists: AtomicU64,
    /// Watches closed by [`super::RunningApiServer::drop_all_watches`].
    pub watches_dropped: AtomicU64,
    /// Watch requests answered with a 410 Gone ERROR event (resume from compacted history).
    pub watches_gone: AtomicU64,
    /// Authenticated requests per (verb, resource), e.g. `("create", "tokenreviews")` or
    /// `("get", "configmaps")`; bounded by the served verbs x resources (unknown paths are not
    /// counted). Read with [`ApiStats::resource_requests`].
    by_resource: Mutex<HashMap<(String, String), u64>>,
}

impl ApiStats {
    /// Authenticated requests so far with `verb` (`get`, `list`, `watch`, `create`, ...) on
    /// `resource` (plural, any API group), whatever their outcome.
    pub fn resource_requests(&self, verb: &str, resource: &str) -> u64 {
        let counts = self.by_resource.lock().unwrap_or_else(|p| p.into_inner());
        counts.get(&(verb.to_owned(), resource.to_owned())).copied().unwrap_or(0)
    }

    fn count(&self, attrs: &Attributes) {
        if let Attributes::Resource { verb, resource, .. } = attrs {
            let mut counts = self.by_resource.lock().unwrap_or_else(|p| p.into_inner());
            *counts.entry((verb.clone(), resource.clone())).or_default() += 1;
        }
    }
}

/// State shared by every request.
pub(crate) struct Shared {
    pub store: Arc<Store>,
    pub policy: std::sync::RwLock<Arc<Policy>>,
    pub proxy: Proxy,
    pub clock: SharedClock,
    pub drop_watches: watch::Sender<u64>,
    pub bookmark_interval: Duration,
    pub authorize_aggregated: bool,
    pub server_address: String,
    pub stats: Arc<ApiStats>,
    /// The last review of each kind posted (its body as received), for tests that check what
    /// a client asked. One per kind: bounded.
    pub last_reviews: Mutex<HashMap<&'static str, Value>>,
    /// Resources (plural) answered 500 InternalError, as while etcd is unreachable; see
    /// [`super::RunningApiServer::set_unavailable`].
    pub unavailable: RwLock<HashSet<String>>,
}

impl Shared {
    pub fn policy(&self) -> Arc<Policy> {
        self.policy.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Whether requests on `attrs`' resource are failed on purpose.
    fn unavailable(&self, attrs: &Attributes) -> bool {
        let Attributes::Resource { resource, .. } = attrs else { return false };
        self.unavailable.read().unwrap_or_else(|p| p.into_inner()).contains(resource)
    }
}

/// What a request addresses.
#[derive(Debug)]
enum Route {
    /// A path served locally without a resource (discovery, OpenAPI, health).
    Local(String),
    /// Something under `/apis/metrics.k8s.io/<version>`: forwarded.
    Aggregated,
    /// A stored resource.
    Resource { resource: ResourceId, namespace: String, name: String, part: Part },
    /// A review (create only).
    Review(&'static Review),
}

fn error_response(err: &ApiError) -> Response<Body> {
    let status = StatusCode::from_u16(err.code()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    json_response(status, err.to_status().to_string())
}

fn authenticate(policy: &Policy, peer: &PeerInfo, headers: &HeaderMap) -> Option<UserInfo> {
    if let Some(auth) = headers.get(header::AUTHORIZATION) {
        let token = auth.to_str().ok()?.strip_prefix("Bearer ")?.trim();
        return policy.authenticate_token(token);
    }
    let subject = pki::cert_subject(peer.client_certs.first()?)?;
    Some(policy.authenticate_cert(&subject.common_name, &subject.organizations))
}

/// Splits a path into (route, attributes for authorization).
fn route(method: &Method, path: &str, watch: bool) -> Result<(Route, Attributes), ApiError> {
    let segs: Vec<&str> = path.trim_matches('/').split('/').filter(|s| !s.is_empty()).collect();
    let verb_nr = method.as_str().to_lowercase();
    let local = || Ok((Route::Local(path.to_owned()), Attributes::non_resource(&verb_nr, path)));
    let not_found = || ApiError::NotFound { kind: "path".into(), name: path.to_owned() };
    let (group, version, rest): (&str, &str, &[&str]) = match segs.as_slice() {
        [] | ["api"] | ["apis"] | ["api", _] | ["apis", _] | ["version"] | ["healthz"] | ["livez"] | ["readyz"] => {
            return local();
        }
        ["openapi", ..] => return local(),
        ["apis", g, _] if *g == METRICS_GROUP => {
            return Ok((Route::Aggregated, Attributes::non_resource(&verb_nr, path)));
        }
        ["apis", _, _] => return local(),
        ["api", v, rest @ ..] => ("", *v, rest),
        ["apis", g, v, rest @ ..] => (*g, *v, rest),
        _ => return Err(not_found()),
    };
    let (namespace, rest): (&str, &[&str]) = match rest {
        ["namespaces", ns, next, ..] if !matches!(*next, "status" | "finalize") => (*ns, &rest[2..]),
        _ => ("", rest),
    };
    let (plural, name, sub) = match rest {
        [r] => (*r, "", ""),
        [r, n] => (*r, *n, ""),
        [r, n, s] => (*r, *n, *s),
        _ => return Err(not_found()),
    };
    let verb = match (method, name.is_empty()) {
        (&Method::GET, true) if watch => "watch",
        (&Method::GET, true) => "list",
        (&Method::GET, false) if watch => "watch",
        (&Method::GET, false) => "get",
        (&Method::POST, _) => "create",
        (&Method::PUT, _) => "update",
        (&Method::PATCH, _) => "patch",
        (&Method::DELETE, true) => "deletecollection",
        (&Method::DELETE, false) => "delete",
        _ => return Err(ApiError::MethodNotAllowed),
    };
    let attrs = Attributes::resource(verb, group, plural, sub, namespace, name);
    if group == METRICS_GROUP {
        return Ok((Route::Aggregated, attrs));
    }
    if let Some(review) = resources::find_review(group, version, plural) {
        return Ok((Route::Review(review), attrs));
    }
    let resource = resources::find(group, version, plural).ok_or_else(not_found)?;
    let r = &STORED[resource];
    // Namespaced objects need a namespace (collections may span all); cluster-scoped ones none.
    let scope_ok = if r.namespaced { !namespace.is_empty() || name.is_empty() } else { namespace.is_empty() };
    if !scope_ok {
        return Err(not_found());
    }
    let part = match sub {
        "" => Part::Main,
        "status" if r.has_status => Part::Status,
        _ => return Err(not_found()),
    };
    Ok((Route::Resource { resource, namespace: namespace.to_owned(), name: name.to_owned(), part }, attrs))
}

/// Handles one request.
pub(crate) async fn handle(shared: Arc<Shared>, peer: PeerInfo, req: Request<Incoming>) -> Response<Body> {
    shared.stats.requests.fetch_add(1, Ordering::Relaxed);
    let policy = shared.policy();
    let Some(user) = authenticate(&policy, &peer, req.headers()) else {
        shared.stats.unauthorized.fetch_add(1, Ordering::Relaxed);
        return error_response(&ApiError::Unauthorized);
    };
    let query = query_pairs(req.uri().query());
    let param = |k: &str| query.iter().find(|(qk, _)| qk == k).map(|(_, v)| v.as_str());
    let watch = matches!(param("watch"), Some("true" | "1"));
    let (route, attrs) = match route(req.method(), req.uri().path(), watch) {
        Ok(r) => r,
        Err(e) => return error_response(&e),
    };
    shared.stats.count(&attrs);
    let is_health = matches!(&route, Route::Local(p) if matches!(p.as_str(), "/healthz" | "/livez" | "/readyz"));
    let skip_authz = matches!(route, Route::Aggregated) && !shared.authorize_aggregated;
    if !is_health && !skip_authz && !policy.authorize(&user, &attrs).allowed {
        shared.stats.forbidden.fetch_add(1, Ordering::Relaxed);
        return error_response(&ApiError::Forbidden(attrs.forbidden_message(&user)));
    }
    if shared.unavailable(&attrs) {
        return error_response(&ApiError::Internal("the simulator was told this resource is unavailable (etcd down)".into()));
    }
    let accept = req.headers().get(header::ACCEPT).and_then(|v| v.to_str().ok()).unwrap_or("").to_owned();
    let (method, uri) = (req.method().clone(), req.uri().clone());
    let result = match route {
        Route::Local(path) => local(&shared, &path, &accept),
        Route::Aggregated => {
            let (parts, body) = req.into_parts();
            match read_body(body, MAX_BODY).await {
                Ok(body) => shared.proxy.forward(&user, parts, body).await,
                Err(e) => Err(e.into()),
            }
        }
        Route::Review(review) => {
            if req.method() != Method::POST {
                Err(ApiError::MethodNotAllowed)
            } else {
                match review_body(req).await {
                    Ok(body) => {
                        let answer = reviews::answer(review, &policy, &user, &body);
                        shared.last_reviews.lock().unwrap_or_else(|p| p.into_inner()).insert(review.kind, body);
                        answer.map(|v| json_response(StatusCode::CREATED, v.to_string()))
                    }
                    Err(e) => Err(e),
                }
            }
        }
        Route::Resource { resource, namespace, name, part } => {
            rest(&shared, req, resource, &namespace, &name, part, &query, watch, &accept).await
        }
    };
    let resp = result.unwrap_or_else(|e| error_response(&e));
    tracing::debug!(%method, %uri, user = %user.username, status = resp.status().as_u16(), "request");
    resp
}

fn local(shared: &Shared, path: &str, accept: &str) -> Result<Response<Body>, ApiError> {
    let with_metrics = !shared.proxy.backends().is_empty();
    let not_found = || ApiError::NotFound { kind: "path".into(), name: path.to_owned() };
    let segs: Vec<&str> = path.trim_matches('/').split('/').filter(|s| !s.is_empty()).collect();
    let body = match segs.as_slice() {
        [] => json!({"paths": ["/api", "/api/v1", "/apis", "/healthz", "/livez", "/openapi/v2", "/openapi/v3", "/readyz", "/version"]}),
        ["healthz"] | ["livez"] | ["readyz"] => return Ok(response(StatusCode::OK, "text/plain; charset=utf-8", "ok")),
        ["version"] => discovery::version(),
        ["api"] => discovery::api_versions(&shared.server_address),
        ["api", v] => discovery::resource_list("", v).ok_or_else(not_found)?,
        ["apis"] => discovery::group_list(with_metrics),
        ["apis", g] => discovery::group(g, with_metrics).ok_or_else(not_found)?,
        ["apis", g, v] => discovery::resource_list(g, v).ok_or_else(not_found)?,
        ["openapi", "v2"] => {
            if accept.contains("protobuf") {
                // An empty protobuf message is a valid, empty openapi_v2.Document.
                return Ok(response(StatusCode::OK, "application/com.github.proto-openapi.spec.v2.v1.0+protobuf", Bytes::new()));
            }
            discovery::openapi_v2_json()
        }
        ["openapi", "v3"] => discovery::openapi_v3_root(),
        ["openapi", "v3", rest @ ..] => discovery::openapi_v3_group_version(&rest.join("/")).ok_or_else(not_found)?,
        _ => return Err(not_found()),
    };
    Ok(json_response(StatusCode::OK, body.to_string()))
}

async fn json_body(req: Request<Incoming>) -> Result<Value, ApiError> {
    let content_type = req.headers().get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok()).unwrap_or("").to_owned();
    if !content_type.is_empty() && !content_type.contains("json") {
        return Err(ApiError::UnsupportedMediaType("application/json".into()));
    }
    let bytes = read_body(req.into_body(), MAX_BODY).await?;
    serde_json::from_slice(&bytes).map_err(|e| ApiError::BadRequest(format!("the request body is not valid JSON: {e}")))
}

/// A review body: JSON, or protobuf for the self reviews kubectl's typed clients send.
async fn review_body(req: Request<Incoming>) -> Result<Value, ApiError> {
    let content_type = req.headers().get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok()).unwrap_or("").to_owned();
    if protobuf::is_protobuf(&content_type) {
        let bytes = read_body(req.into_body(), MAX_BODY).await?;
        return protobuf::review_to_json(&bytes);
    }
    json_body(req).await
}

fn filter_from(resource: ResourceId, namespace: &str, query: &[(String, String)]) -> Result<Filter, ApiError> {
    let param = |k: &str| query.iter().find(|(qk, _)| qk == k).map(|(_, v)| v.as_str()).unwrap_or("");
    let labels = LabelSelector::parse(param("labelSelector")).map_err(|e| ApiError::BadRequest(e.to_string()))?;
    let fields = FieldSelector::parse(param("fieldSelector"), &STORED[resource].field_labels())
        .map_err(|e| ApiError::BadRequest(e.to_string()))?;
    Ok(Filter { resource, namespace: (!namespace.is_empty()).then(|| namespace.to_owned()), labels, fields })
}

#[allow(clippy::too_many_arguments)]
async fn rest(
    shared: &Arc<Shared>,
    req: Request<Incoming>,
    resource: ResourceId,
    namespace: &str,
    name: &str,
    part: Part,
    query: &[(String, String)],
    watch: bool,
    accept: &str,
) -> Result<Response<Body>, ApiError> {
    let store = &shared.store;
    let param = |k: &str| query.iter().find(|(qk, _)| qk == k).map(|(_, v)| v.as_str());
    if param("dryRun").is_some_and(|d| !d.is_empty()) {
        return Err(ApiError::BadRequest("dryRun is not supported by the simulator".into()));
    }
    let shape = if table::wants_table(accept) {
        Shape::Table
    } else if metadata::wants_metadata(accept) {
        Shape::Metadata
    } else {
        Shape::Full
    };
    match *req.method() {
        Method::GET if watch => {
            let mut filter = filter_from(resource, namespace, query)?;
            if !name.is_empty() {
                filter.fields = FieldSelector::parse(&format!("metadata.name={name}"), &["metadata.name"])
                    .map_err(|e| ApiError::BadRequest(e.to_string()))?;
            }
            start_watch(shared, filter, query, shape)
        }
        Method::GET if name.is_empty() => {
            shared.stats.lists.fetch_add(1, Ordering::Relaxed);
            let filter = filter_from(resource, namespace, query)?;
            let limit = match param("limit").filter(|l| !l.is_empty()) {
                Some(l) => Some(l.parse::<usize>().map_err(|_| ApiError::BadRequest(format!("invalid limit {l:?}")))?),
                None => None,
            };
            let page = Page { limit, continue_token: param("continue").map(str::to_owned) };
            let listed = store.list(&filter, &page)?;
            if shape != Shape::Full {
                let objects: Vec<Value> = listed.items.iter().map(|o| o.value()).collect();
                let v = if shape == Shape::Table {
                    table::table(resource, &objects, listed.rv, listed.continue_token.as_deref(), shared.clock.now_ms())
                } else {
                    metadata::list(&objects, listed.rv, listed.continue_token.as_deref())
                };
                return Ok(json_response(StatusCode::OK, v.to_string()));
            }
            Ok(list_response(resource, listed.rv, listed.continue_token.as_deref(), listed.items))
        }
        Method::GET => {
            let obj = store.get(resource, namespace, name)?;
            match shape {
                Shape::Table => {
                    let t = table::table(resource, &[obj.value()], obj.rv, None, shared.clock.now_ms());
                    Ok(json_response(StatusCode::OK, t.to_string()))
                }
                Shape::Metadata => Ok(json_response(StatusCode::OK, metadata::partial(&obj.value()).to_string())),
                Shape::Full => Ok(json_response(StatusCode::OK, obj.json.clone())),
            }
        }
        Method::POST if name.is_empty() => {
            let body = json_body(req).await?;
            let created = store.create(resource, namespace, body)?;
            Ok(json_response(StatusCode::CREATED, created.json.clone()))
        }
        Method::PUT if !name.is_empty() => {
            let body = json_body(req).await?;
            let updated = store.update(resource, namespace, name, part, body)?;
            Ok(json_response(StatusCode::OK, updated.json.clone()))
        }
        Method::PATCH if !name.is_empty() => {
            let content_type = req.headers().get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok()).unwrap_or("");
            let kind = PatchType::from_content_type(content_type)
                .ok_or_else(|| ApiError::UnsupportedMediaType(PatchType::ACCEPTED.into()))?;
            let bytes = read_body(req.into_body(), MAX_BODY).await?;
            let patch_doc: Value = serde_json::from_slice(&bytes)
                .map_err(|e| ApiError::BadRequest(format!("the patch is not valid JSON: {e}")))?;
            let patched = store.modify(resource, namespace, name, part, |v| patch::apply(kind, v, &patch_doc))?;
            Ok(json_response(StatusCode::OK, patched.json.clone()))
        }
        Method::DELETE if !name.is_empty() => {
            let bytes = read_body(req.into_body(), MAX_BODY).await?;
            let options: Value = if bytes.is_empty() {
                Value::Null
            } else {
                serde_json::from_slice(&bytes).map_err(|e| ApiError::BadRequest(format!("invalid DeleteOptions: {e}")))?
            };
            let pre = &options["preconditions"];
            let deleted = store.delete(resource, namespace, name, pre["uid"].as_str(), pre["resourceVersion"].as_str())?;
            Ok(json_response(StatusCode::OK, deleted.json.clone()))
        }
        Method::DELETE => {
            let filter = filter_from(resource, namespace, query)?;
            let listed = store.list(&filter, &Page::default())?;
            let mut deleted = Vec::new();
            for obj in &listed.items {
                match store.delete(resource, &obj.key.namespace, &obj.key.name, None, None) {
                    Ok(d) => deleted.push(d),
                    Err(ApiError::NotFound { .. }) => {}
                    Err(e) => return Err(e),
                }
            }
            Ok(list_response(resource, store.current_rv(), None, deleted))
        }
        _ => Err(ApiError::MethodNotAllowed),
    }
}

/// A list, streamed in chunks of stored JSON (no re-serialization).
fn list_response(resource: ResourceId, rv: u64, continue_token: Option<&str>, items: Vec<Arc<super::store::Stored>>) -> Response<Body> {
    let r = &STORED[resource];
    let mut meta = json!({"resourceVersion": rv.to_string()});
    if let Some(c) = continue_token {
        meta["continue"] = json!(c);
    }
    let head = format!(r#"{{"kind":"{}List","apiVersion":"{}","metadata":{},"items":["#, r.kind, r.api_version(), meta);
    let mut chunks: Vec<Bytes> = Vec::new();
    let mut buf = BytesMut::with_capacity(LIST_CHUNK);
    buf.extend_from_slice(head.as_bytes());
    for (i, item) in items.iter().enumerate() {
        if i > 0 {
            buf.extend_from_slice(b",");
        }
        buf.extend_from_slice(&item.json);
        if buf.len() >= LIST_CHUNK {
            chunks.push(buf.split().freeze());
        }
    }
    buf.extend_from_slice(b"]}");
    chunks.push(buf.freeze());
    let stream = futures::stream::iter(chunks.into_iter().map(|c| Ok::<_, BoxError>(Frame::data(c))));
    let mut resp = Response::new(BodyExt::boxed(StreamBody::new(stream)));
    resp.headers_mut().insert(header::CONTENT_TYPE, http::HeaderValue::from_static("application/json"));
    resp
}

fn event_line(kind: &str, object: &[u8]) -> Bytes {
    let mut b = BytesMut::with_capacity(object.len() + 32);
    b.extend_from_slice(br#"{"type":""#);
    b.extend_from_slice(kind.as_bytes());
    b.extend_from_slice(br#"","object":"#);
    b.extend_from_slice(object);
    b.extend_from_slice(b"}\n");
    b.freeze()
}

/// A BOOKMARK event; its object has the kind the watch streams (`PartialObjectMetadata` for a
/// metadata watch: client-go's metadata informer cannot decode anything else).
fn bookmark_line(resource: ResourceId, rv: u64, initial_events_end: bool, shape: Shape) -> Bytes {
    let r = &STORED[resource];
    let (kind, api_version) = match shape {
        Shape::Metadata => ("PartialObjectMetadata".to_owned(), "meta.k8s.io/v1".to_owned()),
        Shape::Full | Shape::Table => (r.kind.to_owned(), r.api_version()),
    };
    let mut meta = json!({"resourceVersion": rv.to_string(), "creationTimestamp": null});
    if initial_events_end {
        meta["annotations"] = json!({"k8s.io/initial-events-end": "true"});
    }
    let obj = json!({"kind": kind, "apiVersion": api_version, "metadata": meta});
    event_line("BOOKMARK", obj.to_string().as_bytes())
}

/// What a GET answers with: the objects, a Table, or their metadata only.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Shape {
    Full,
    Table,
    Metadata,
}

fn start_watch(shared: &Arc<Shared>, filter: Filter, query: &[(String, String)], shape: Shape) -> Result<Response<Body>, ApiError> {
    let param = |k: &str| query.iter().find(|(qk, _)| qk == k).map(|(_, v)| v.as_str()).unwrap_or("");
    let from = match param("resourceVersion") {
        "" => None,
        rv => Some(rv.parse::<u64>().map_err(|_| ApiError::BadRequest(format!("invalid resourceVersion {rv:?}")))?),
    };
    let bookmarks = matches!(param("allowWatchBookmarks"), "true" | "1");
    let send_initial = matches!(param("sendInitialEvents"), "true" | "1");
    let timeout = match param("timeoutSeconds") {
        "" => Duration::from_secs(1800),
        t => Duration::from_secs(t.parse::<u64>().map_err(|_| ApiError::BadRequest(format!("invalid timeoutSeconds {t:?}")))?),
    };
    let (tx, rx) = mpsc::channel::<Bytes>(WATCH_QUEUE);
    let stream = tokio_stream::wrappers::ReceiverStream::new(rx).map(|b| Ok::<_, BoxError>(Frame::data(b)));
    let mut resp = Response::new(BodyExt::boxed(StreamBody::new(stream)));
    resp.headers_mut().insert(header::CONTENT_TYPE, http::HeaderValue::from_static("application/json"));
    let start = match shared.store.watch(&filter, if send_initial { None } else { from }) {
        Ok(s) => s,
        Err(gone @ ApiError::Gone { .. }) => {
            // As kube-apiserver: HTTP 200 and one ERROR event carrying a 410 Status.
            shared.stats.watches_gone.fetch_add(1, Ordering::Relaxed);
            let line = event_line("ERROR", gone.to_status().to_string().as_bytes());
            let _ = tx.try_send(line);
            return Ok(resp);
        }
        Err(e) => return Err(e),
    };
    shared.stats.watches_started.fetch_add(1, Ordering::Relaxed);
    let shared = shared.clone();
    tokio::spawn(async move {
        shared.stats.watches_open.fetch_add(1, Ordering::Relaxed);
        run_watch(&shared, filter, start, tx, bookmarks, send_initial, timeout, shape).await;
        shared.stats.watches_open.fetch_sub(1, Ordering::Relaxed);
    });
    Ok(resp)
}

fn render(shared: &Shared, filter: &Filter, change: &Change, kind: EventType, shape: Shape) -> Bytes {
    match shape {
        Shape::Table => {
            let t = table::table(filter.resource, &[change.object.value()], change.rv, None, shared.clock.now_ms());
            event_line(kind.as_str(), t.to_string().as_bytes())
        }
        Shape::Metadata => event_line(kind.as_str(), metadata::partial(&change.object.value()).to_string().as_bytes()),
        Shape::Full => event_line(kind.as_str(), &change.object.json),
    }
}

#[allow(clippy::too_many_arguments)]
async fn run_watch(
    shared: &Shared,
    filter: Filter,
    start: super::store::WatchStart,
    tx: mpsc::Sender<Bytes>,
    bookmarks: bool,
    send_initial: bool,
    timeout: Duration,
    shape: Shape,
) {
    let mut drop_rx = shared.drop_watches.subscribe();
    let deadline = tokio::time::sleep(timeout);
    tokio::pin!(deadline);
    let mut live = start.live;
    for change in &start.initial {
        if let Some(kind) = filter.translate(change)
            && tx.send(render(shared, &filter, change, kind, shape)).await.is_err()
        {
            return;
        }
    }
    if send_initial && tx.send(bookmark_line(filter.resource, start.start_rv, true, shape)).await.is_err() {
        return;
    }
    let mut tick = tokio::time::interval(shared.bookmark_interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tick.tick().await;
    loop {
        // Biased: a drop requested before a change was published wins over that change, so
        // `drop_all_watches(); create(...)` always makes clients resume from before the create.
        let line = tokio::select! {
            biased;
            _ = drop_rx.changed() => {
                shared.stats.watches_dropped.fetch_add(1, Ordering::Relaxed);
                return;
            }
            _ = tx.closed() => return,
            _ = &mut deadline => return,
            _ = tick.tick(), if bookmarks => match shared.store.bookmark_rv(&live) {
                Some(rv) => bookmark_line(filter.resource, rv, false, shape),
                None => continue,
            },
            ev = live.recv() => match ev {
                Ok(change) => {
                    if change.rv <= start.start_rv {
                        continue;
                    }
                    match filter.translate(&change) {
                        Some(kind) => render(shared, &filter, &change, kind, shape),
                        None => continue,
                    }
                }
                Err(broadcast::error::RecvError::Lagged(_)) => {
                    shared.store.lagging_watches_closed.fetch_add(1, Ordering::Relaxed);
                    tracing::warn!(resource = STORED[filter.resource].plural, "watch fell behind; closing it");
                    return;
                }
                Err(broadcast::error::RecvError::Closed) => return,
            },
        };
        if tx.send(line).await.is_err() {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn r(method: Method, path: &str) -> (Route, Attributes) {
        route(&method, path, false).unwrap()
    }

    #[test]
    fn paths_parse_like_kube_apiserver_request_info() {
        let (route_, attrs) = r(Method::GET, "/api/v1/namespaces/ns1/pods/p1");
        assert!(matches!(route_, Route::Resource { resource: resources::PODS, ref namespace, ref name, part: Part::Main } if namespace == "ns1" && name == "p1"));
        assert_eq!(attrs, Attributes::resource("get", "", "pods", "", "ns1", "p1"));
        let (route_, attrs) = r(Method::PATCH, "/api/v1/nodes/n1/status");
        assert!(matches!(route_, Route::Resource { resource: resources::NODES, part: Part::Status, .. }));
        assert_eq!(attrs, Attributes::resource("patch", "", "nodes", "status", "", "n1"));
        let (route_, _) = r(Method::GET, "/api/v1/namespaces/kube-system");
        assert!(matches!(route_, Route::Resource { resource: resources::NAMESPACES, ref name, .. } if name == "kube-system"));
        let (route_, _) = r(Method::PUT, "/api/v1/namespaces/kube-system/status");
        assert!(matches!(route_, Route::Resource { resource: resources::NAMESPACES, part: Part::Status, .. }));
        let (_, attrs) = route(&Method::GET, "/apis/coordination.k8s.io/v1/namespaces/kube-system/leases", true).unwrap();
        assert_eq!(attrs, Attributes::resource("watch", "coordination.k8s.io", "leases", "", "kube-system", ""));
        let (route_, _) = r(Method::GET, "/api/v1/pods");
        assert!(matches!(route_, Route::Resource { resource: resources::PODS, ref namespace, .. } if namespace.is_empty()));
    }

    #[test]
    fn metrics_paths_are_aggregated_and_discovery_is_local() {
        let (route_, attrs) = r(Method::GET, "/apis/metrics.k8s.io/v1beta1/namespaces/ns/pods");
        assert!(matches!(route_, Route::Aggregated));
        assert_eq!(attrs, Attributes::resource("list", "metrics.k8s.io", "pods", "", "ns", ""));
        assert!(matches!(r(Method::GET, "/apis/metrics.k8s.io/v1beta1").0, Route::Aggregated));
        assert!(matches!(r(Method::GET, "/apis/metrics.k8s.io").0, Route::Local(_)));
        assert!(matches!(r(Method::GET, "/apis").0, Route::Local(_)));
        assert!(matches!(r(Method::POST, "/apis/authorization.k8s.io/v1/subjectaccessreviews").0, Route::Review(_)));
    }

    #[test]
    fn unknown_paths_and_scopes_are_not_found() {
        for p in ["/api/v1/deployments", "/api/v1/namespaces/ns/nodes", "/api/v1/nodes/n/logs", "/nope", "/api/v1/pods/a/b/c/d"] {
            assert_eq!(route(&Method::GET, p, false).unwrap_err().code(), 404, "{p}");
        }
        assert_eq!(route(&Method::HEAD, "/api/v1/nodes", false).unwrap_err().code(), 405);
    }
}
