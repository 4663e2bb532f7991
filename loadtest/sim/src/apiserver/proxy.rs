//! The aggregation proxy: `/apis/metrics.k8s.io/...` goes to the registered frontend replicas,
//! as kube-apiserver's aggregator does for `APIService v1beta1.metrics.k8s.io`.
//!
//! - Backends are tried round robin; one that refuses the connection is skipped for this request
//!   (the next one is tried), so a dead replica costs a connect error, not a failed request.
//! - The connection is TLS with the front-proxy client certificate (CN `front-proxy-client`,
//!   signed by the front-proxy CA, which is distinct from the serving CA). The backend's serving
//!   certificate is verified against the configured CA, or not at all
//!   (`insecureSkipTLSVerify: true`, what metrics-server's own APIService uses).
//! - The caller's identity goes in `X-Remote-User`, `X-Remote-Group` (one header per group) and
//!   `X-Remote-Extra-<key>`; any such headers the caller sent are removed first, and so are its
//!   `Authorization` and `Impersonate-*` headers.
//! - The response streams back as it arrives (watch-like bodies and large lists included).

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, HeaderName, HeaderValue, Request, Response, Uri};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;

use super::error::ApiError;
use super::policy::UserInfo;
use crate::httputil::{Body, BoxError, percent_encode};
use shardmetrics_plumbing::pki::{self, CertKey};

/// The aggregated group.
pub const METRICS_GROUP: &str = "metrics.k8s.io";
/// Its version.
pub const METRICS_VERSION: &str = "v1beta1";

const HOP_BY_HOP: [&str; 8] =
    ["connection", "keep-alive", "proxy-connection", "te", "trailer", "transfer-encoding", "upgrade", "host"];

/// Counters of the proxy, for tests and the load-test report.
#[derive(Debug, Default)]
pub struct ProxyStats {
    /// Requests forwarded and answered by a backend (any status).
    pub forwarded: AtomicU64,
    /// Connection attempts to a backend that failed (the request moved on to the next one).
    pub backend_connect_errors: AtomicU64,
    /// Requests answered 503 because no backend could be reached.
    pub unavailable: AtomicU64,
}

type ProxyClient = Client<hyper_rustls::HttpsConnector<HttpConnector>, Full<Bytes>>;

/// Forwards requests to a changing set of backends.
pub struct Proxy {
    client: ProxyClient,
    backends: std::sync::RwLock<Arc<Vec<SocketAddr>>>,
    next: AtomicUsize,
    /// Counters.
    pub stats: ProxyStats,
}

impl std::fmt::Debug for Proxy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Proxy").field("backends", &self.backends()).finish_non_exhaustive()
    }
}

impl Proxy {
    /// A proxy presenting `client_cert` and verifying backends against `backend_ca` (or not,
    /// when `None`).
    pub fn new(client_cert: &CertKey, backend_ca: Option<&rustls::RootCertStore>) -> Result<Proxy, pki::PkiError> {
        // The connector sets ALPN (h2, http/1.1) itself.
        let tls = pki::client_config(backend_ca, Some(client_cert))?;
        let mut http = HttpConnector::new();
        http.enforce_http(false);
        http.set_connect_timeout(Some(Duration::from_secs(3)));
        http.set_nodelay(true);
        let connector = hyper_rustls::HttpsConnectorBuilder::new()
            .with_tls_config(tls)
            .https_only()
            .enable_all_versions()
            .wrap_connector(http);
        let client = Client::builder(TokioExecutor::new()).pool_idle_timeout(Duration::from_secs(30)).build(connector);
        Ok(Proxy { client, backends: std::sync::RwLock::new(Arc::new(Vec::new())), next: AtomicUsize::new(0), stats: ProxyStats::default() })
    }

    /// Replaces the backend set (empty: the group disappears from discovery).
    pub fn set_backends(&self, backends: Vec<SocketAddr>) {
        *self.backends.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(backends);
    }

    /// The current backends.
    pub fn backends(&self) -> Arc<Vec<SocketAddr>> {
        self.backends.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Forwards one request on behalf of `user`.
    pub async fn forward(&self, user: &UserInfo, parts: http::request::Parts, body: Bytes) -> Result<Response<Body>, ApiError> {
        let backends = self.backends();
        if backends.is_empty() {
            self.stats.unavailable.fetch_add(1, Ordering::Relaxed);
            return Err(ApiError::ServiceUnavailable("the server is currently unable to handle the request".into()));
        }
        let headers = forwarded_headers(&parts.headers, user);
        let path_and_query = parts.uri.path_and_query().map_or("/", |p| p.as_str()).to_owned();
        let start = self.next.fetch_add(1, Ordering::Relaxed);
        let mut last_error = String::new();
        for i in 0..backends.len() {
            let backend = backends[(start + i) % backends.len()];
            let uri: Uri = format!("https://{backend}{path_and_query}")
                .parse()
                .map_err(|e| ApiError::BadRequest(format!("bad proxied URI: {e}")))?;
            let mut req = Request::new(Full::new(body.clone()));
            *req.method_mut() = parts.method.clone();
            *req.uri_mut() = uri;
            *req.headers_mut() = headers.clone();
            match self.client.request(req).await {
                Ok(resp) => {
                    self.stats.forwarded.fetch_add(1, Ordering::Relaxed);
                    let (mut parts, incoming) = resp.into_parts();
                    for h in HOP_BY_HOP {
                        parts.headers.remove(h);
                    }
                    let body = incoming.map_err(|e| Box::new(e) as BoxError).boxed();
                    return Ok(Response::from_parts(parts, body));
                }
                Err(e) if e.is_connect() => {
                    self.stats.backend_connect_errors.fetch_add(1, Ordering::Relaxed);
                    tracing::debug!(%backend, error = %e, "aggregation backend unreachable; trying the next one");
                    last_error = format!("{backend}: {e}");
                }
                Err(e) => {
                    tracing::warn!(%backend, error = %e, "aggregation backend request failed");
                    self.stats.unavailable.fetch_add(1, Ordering::Relaxed);
                    return Err(ApiError::ServiceUnavailable(format!("error trying to reach service: {e}")));
                }
            }
        }
        self.stats.unavailable.fetch_add(1, Ordering::Relaxed);
        Err(ApiError::ServiceUnavailable(format!(
            "the server is currently unable to handle the request (no reachable backend; last error: {last_error})"
        )))
    }
}

/// The request headers sent to a backend: the caller's minus credentials, hop-by-hop and any
/// identity headers, plus the authenticated identity.
pub fn forwarded_headers(incoming: &HeaderMap, user: &UserInfo) -> HeaderMap {
    let mut out = HeaderMap::new();
    for (name, value) in incoming {
        let n = name.as_str();
        if HOP_BY_HOP.contains(&n) || n == "authorization" || n.starts_with("impersonate-") || n.starts_with("x-remote-") {
            continue;
        }
        out.append(name.clone(), value.clone());
    }
    if let Ok(v) = HeaderValue::from_str(&user.username) {
        out.insert("x-remote-user", v);
    }
    for g in &user.groups {
        if let Ok(v) = HeaderValue::from_str(g) {
            out.append("x-remote-group", v);
        }
    }
    for (key, values) in &user.extra {
        let Ok(name) = HeaderName::from_bytes(format!("x-remote-extra-{}", percent_encode(&key.to_lowercase())).as_bytes()) else {
            continue;
        };
        for v in values {
            if let Ok(v) = HeaderValue::from_str(v) {
                out.append(name.clone(), v);
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identity_headers_replace_the_callers_credentials() {
        let mut h = HeaderMap::new();
        h.insert("authorization", HeaderValue::from_static("Bearer secret"));
        h.insert("x-remote-user", HeaderValue::from_static("spoofed"));
        h.insert("impersonate-user", HeaderValue::from_static("root"));
        h.insert("accept", HeaderValue::from_static("application/json"));
        h.insert("connection", HeaderValue::from_static("keep-alive"));
        let mut user = UserInfo::new("alice", &["devs", "system:authenticated"]);
        user.extra.insert("scopes.example.com/Team".into(), vec!["a".into(), "b".into()]);
        let out = forwarded_headers(&h, &user);
        assert_eq!(out.get("x-remote-user").unwrap(), "alice");
        assert_eq!(out.get_all("x-remote-group").iter().collect::<Vec<_>>(), ["devs", "system:authenticated"]);
        assert_eq!(out.get_all("x-remote-extra-scopes.example.com%2Fteam").iter().count(), 2);
        assert!(out.get("authorization").is_none() && out.get("impersonate-user").is_none() && out.get("connection").is_none());
        assert_eq!(out.get("accept").unwrap(), "application/json");
    }
}
