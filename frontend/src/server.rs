//! Where requests enter: the secure port (HTTP/1.1 and HTTP/2 over rustls) and the plain admin
//! port.
//!
//! Secure port, per request:
//! 1. health paths that `--authorization-always-allow-paths` lists are answered at once;
//! 2. a declared body (`Content-Length`) over `--max-request-body-bytes`: 413 at once;
//! 3. `--max-requests-inflight`: past it the answer is 429 with `Retry-After` (the permit is held
//!    until the response body is fully sent, so slow readers of big lists count);
//! 4. authentication and authorization ([`crate::auth::Auth`]) unless the path is always
//!    allowed: 401 / 403 Status, or a 500 when the authorizer could not decide, otherwise;
//! 5. a request body without a declared length is read and thrown away (the API serves only
//!    GETs) up to `--max-request-body-bytes` (413 past it) within `--request-header-timeout`
//!    (408 past it);
//! 6. `/metrics`, health paths, or the API ([`crate::api::router::Api`]); cluster-wide lists run on
//!    the blocking pool. Request durations are observed when the response body is done.
//!
//! Per connection ([`ServerLimits`], both ports): the TLS handshake must finish within
//! `--tls-handshake-timeout`; HTTP/1.1 request headers must arrive within
//! `--request-header-timeout` (a client trickling them byte by byte is cut off) and fit in
//! `--max-request-header-bytes` (431 otherwise; HTTP/2: the same size as
//! `SETTINGS_MAX_HEADER_LIST_SIZE`); a connection with no request in progress for
//! `--idle-connection-timeout` is closed (HTTP/1.1 keep-alive and HTTP/2 alike, so slow trickles
//! that never complete a request do not hold a socket).
//!
//! Admin port (plain HTTP, meant for probes and Prometheus inside the pod network): `/livez`,
//! `/readyz`, `/healthz`, `/metrics`, without authentication.
//!
//! Shutdown: stop accepting, then let open connections finish their requests for up to the grace
//! period.

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderValue, Request, Response, StatusCode, header};
use http_body::Frame;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use prometheus::Registry;
use rustls::ServerConfig;
use rustls_pki_types::CertificateDer;
use tokio::net::TcpListener;
use tokio::sync::{OwnedSemaphorePermit, Semaphore, watch};
use tokio::time::Instant;

use crate::api::body::Body;
use crate::api::router::{Api, Handled, Route, status_response};
use crate::api::status::Status;
use crate::auth::{Auth, AuthError, RequestAttributes};
use crate::health::Health;
use crate::metrics::{Metrics, render};

/// Seconds a 429 asks the client to wait.
pub const RETRY_AFTER_SECONDS: u32 = 1;
/// The smallest `--max-request-header-bytes` hyper's HTTP/1.1 read buffer accepts.
pub const MIN_HEADER_BYTES: usize = 8192;

/// Limits of the secure and admin ports against hostile or broken clients (each a flag, see
/// [`crate::cli::Args`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ServerLimits {
    /// `--max-request-body-bytes`: largest request body accepted (the API serves GETs, so any
    /// body is read and discarded), in bytes; larger ones get 413.
    pub max_request_body_bytes: u64,
    /// `--max-request-header-bytes`: largest request head (HTTP/1.1 read buffer; HTTP/2 header
    /// list size), in bytes; at least [`MIN_HEADER_BYTES`].
    pub max_request_header_bytes: usize,
    /// `--request-header-timeout`: time allowed to receive an HTTP/1.1 request head, and to
    /// receive a request body of unknown length.
    pub request_header_timeout: Duration,
    /// `--idle-connection-timeout`: a connection with no request in progress for this long is
    /// closed.
    pub idle_connection_timeout: Duration,
    /// `--tls-handshake-timeout`: time allowed for the TLS handshake of a new connection.
    pub tls_handshake_timeout: Duration,
}

impl Default for ServerLimits {
    /// 1 MiB bodies, 128 KiB heads, 10 s to send a head, 90 s idle (kube-apiserver's HTTP/2
    /// idle timeout), 10 s handshakes.
    fn default() -> Self {
        Self {
            max_request_body_bytes: 1 << 20,
            max_request_header_bytes: 128 << 10,
            request_header_timeout: Duration::from_secs(10),
            idle_connection_timeout: Duration::from_secs(90),
            tls_handshake_timeout: Duration::from_secs(10),
        }
    }
}

/// Everything a request handler needs.
pub struct ServerState {
    /// The metrics.k8s.io API.
    pub api: Api,
    /// Authentication and authorization.
    pub auth: Auth,
    /// Health checks.
    pub health: Arc<Health>,
    /// Self-metrics.
    pub metrics: Metrics,
    /// Registry rendered at `/metrics`.
    pub registry: Registry,
    /// `--max-requests-inflight` permits.
    pub inflight: Arc<Semaphore>,
    /// Request and connection limits.
    pub limits: ServerLimits,
}

/// A response body that releases its in-flight permit when dropped (fully sent or abandoned).
pub struct GuardedBody {
    /// The body.
    body: Body,
    /// Held while the body is alive.
    _permit: Option<OwnedSemaphorePermit>,
    /// Observes the request's duration when the body is done (fully sent or abandoned), so
    /// streamed lists are timed to their last byte.
    timer: Option<(prometheus::Histogram, Instant)>,
    /// Marks the request in progress on its connection until the body is done.
    _active: Option<ActiveRequest>,
}

impl Drop for GuardedBody {
    fn drop(&mut self) {
        if let Some((histogram, start)) = self.timer.take() {
            histogram.observe(start.elapsed().as_secs_f64());
        }
    }
}

/// Requests in progress on one connection, for `--idle-connection-timeout`.
#[derive(Debug, Default)]
pub struct ConnectionActivity {
    /// Requests whose response body is not done yet.
    in_progress: AtomicUsize,
    /// Bumped whenever a request starts or ends, so the idle clock restarts.
    changes: AtomicU64,
}

impl ConnectionActivity {
    /// Marks a request in progress until the returned guard is dropped.
    pub fn begin(self: &Arc<Self>) -> ActiveRequest {
        self.in_progress.fetch_add(1, Ordering::AcqRel);
        self.changes.fetch_add(1, Ordering::AcqRel);
        ActiveRequest(self.clone())
    }
}

/// A request in progress on its connection (see [`ConnectionActivity::begin`]).
#[derive(Debug)]
pub struct ActiveRequest(Arc<ConnectionActivity>);

impl Drop for ActiveRequest {
    fn drop(&mut self) {
        self.0.in_progress.fetch_sub(1, Ordering::AcqRel);
        self.0.changes.fetch_add(1, Ordering::AcqRel);
    }
}

/// A connection's byte stream that reports end-of-stream once no request has been in progress
/// for `timeout`: hyper then closes the connection (HTTP/1.1 between requests, HTTP/2 with no
/// open stream) as if the client had hung up.
pub struct IdleTimeoutIo<T> {
    /// The TCP or TLS stream.
    inner: T,
    /// The connection's requests in progress.
    activity: Arc<ConnectionActivity>,
    /// `--idle-connection-timeout`.
    timeout: Duration,
    /// `changes` when the idle clock last restarted.
    seen: u64,
    /// When the idle clock runs out, unless a request started or ended since.
    deadline: Pin<Box<tokio::time::Sleep>>,
}

impl<T> IdleTimeoutIo<T> {
    /// Wraps `inner`; the idle clock starts now.
    pub fn new(inner: T, activity: Arc<ConnectionActivity>, timeout: Duration) -> Self {
        let seen = activity.changes.load(Ordering::Acquire);
        Self { inner, activity, timeout, seen, deadline: Box::pin(tokio::time::sleep(timeout)) }
    }
}

impl<T: tokio::io::AsyncRead + Unpin> tokio::io::AsyncRead for IdleTimeoutIo<T> {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut tokio::io::ReadBuf<'_>) -> Poll<std::io::Result<()>> {
        let this = self.get_mut();
        if let Poll::Ready(r) = Pin::new(&mut this.inner).poll_read(cx, buf) {
            return Poll::Ready(r);
        }
        loop {
            if this.deadline.as_mut().poll(cx).is_pending() {
                return Poll::Pending;
            }
            let changes = this.activity.changes.load(Ordering::Acquire);
            if changes == this.seen && this.activity.in_progress.load(Ordering::Acquire) == 0 {
                // Idle for the whole period: end of stream (an unfilled buffer says so).
                return Poll::Ready(Ok(()));
            }
            this.seen = changes;
            this.deadline.as_mut().reset(tokio::time::Instant::now() + this.timeout);
        }
    }
}

impl<T: tokio::io::AsyncWrite + Unpin> tokio::io::AsyncWrite for IdleTimeoutIo<T> {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }

    fn poll_write_vectored(self: Pin<&mut Self>, cx: &mut Context<'_>, bufs: &[std::io::IoSlice<'_>]) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

impl http_body::Body for GuardedBody {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        Pin::new(&mut self.body).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.body.size_hint()
    }
}

fn guarded(response: Response<Body>, permit: Option<OwnedSemaphorePermit>) -> Response<GuardedBody> {
    response.map(|body| GuardedBody { body, _permit: permit, timer: None, _active: None })
}

/// A Status answer for a request refused by a size or time limit.
fn limit_status(code: StatusCode, reason: &'static str, message: String) -> Status {
    Status { code, reason, message, details: None }
}

/// The request's declared body length, if any.
fn content_length(headers: &http::HeaderMap) -> Option<u64> {
    headers.get(header::CONTENT_LENGTH).and_then(|v| v.to_str().ok()).and_then(|v| v.trim().parse().ok())
}

/// Reads and discards `body` (nothing here takes a request body): `Err` with the Status to send
/// if it is larger than `limit` bytes, does not end within `timeout`, or breaks off.
async fn discard_body(body: &mut Incoming, limit: u64, timeout: Duration) -> Result<(), Status> {
    use http_body_util::BodyExt as _;
    let too_large = || {
        limit_status(StatusCode::PAYLOAD_TOO_LARGE, "RequestEntityTooLarge", format!("request body larger than {limit} bytes"))
    };
    let read = async {
        let mut total = 0u64;
        while let Some(frame) = body.frame().await {
            let frame = frame.map_err(|e| Status::bad_request(format!("reading the request body: {e}")))?;
            if let Some(data) = frame.data_ref() {
                total = total.saturating_add(data.len() as u64);
                if total > limit {
                    return Err(too_large());
                }
            }
        }
        Ok(())
    };
    match tokio::time::timeout(timeout, read).await {
        Ok(result) => result,
        Err(_) => Err(limit_status(StatusCode::REQUEST_TIMEOUT, "Timeout", format!("request body not received within {timeout:?}"))),
    }
}

fn text(code: StatusCode, body: String) -> Response<Body> {
    let mut r = Response::new(Body::full(body));
    *r.status_mut() = code;
    r.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain; charset=utf-8"));
    r.headers_mut().insert("x-content-type-options", HeaderValue::from_static("nosniff"));
    r
}

/// The answer to a refused request, as k8s.io/apiserver's filters write it: a `Status` for 401
/// and 403 (with `NewForbidden`'s details), and for 500 `responsewriters.InternalError`'s plain
/// text, `Internal Server Error: "<request URI>": <error>`, with `&`, `<`, `>` escaped.
fn auth_error_response(e: &AuthError, uri: &http::Uri) -> Response<Body> {
    match e {
        AuthError::Internal(why) => {
            let target = uri.path_and_query().map_or_else(|| uri.path().to_owned(), |pq| pq.as_str().to_owned());
            let line = format!("Internal Server Error: {}: {why}", shardmetrics_plumbing::selector::go_quote(&target));
            let escaped = line.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;");
            text(StatusCode::INTERNAL_SERVER_ERROR, escaped + "\n")
        }
        AuthError::Forbidden(f) => {
            let mut status = Status::from_auth(e.status_code(), e.reason(), e.client_message());
            status.details = Some(Box::new(crate::api::status::Details {
                name: f.name.clone(),
                group: Some(f.group.clone()),
                kind: Some(f.resource.clone()).filter(|r| !r.is_empty()),
                retry_after_seconds: None,
            }));
            status_response(&status)
        }
        AuthError::Unauthorized(_) => status_response(&Status::from_auth(e.status_code(), e.reason(), e.client_message())),
    }
}

fn metrics_response(registry: &Registry) -> Response<Body> {
    let mut r = Response::new(Body::full(render(registry)));
    r.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain; version=0.0.4"));
    r
}

impl ServerState {
    fn observe(&self, verb: &str, resource: &str, code: StatusCode, start: Instant) {
        self.metrics
            .request_duration
            .with_label_values(&[verb, resource, code.as_str()])
            .observe(start.elapsed().as_secs_f64());
    }

    /// Wraps an API response so its duration is observed when its body is done.
    /// A watch gives its `--max-requests-inflight` permit back at once (it is long-running, as
    /// kube-apiserver exempts it; watches have their own limit) and is timed to its start only.
    fn timed(&self, response: Response<Body>, permit: OwnedSemaphorePermit, verb: &str, resource: &str, start: Instant) -> Response<GuardedBody> {
        let histogram = self.metrics.request_duration.with_label_values(&[verb, resource, response.status().as_str()]);
        if verb == "watch" {
            histogram.observe(start.elapsed().as_secs_f64());
            return response.map(|body| GuardedBody { body, _permit: None, timer: None, _active: None });
        }
        response.map(|body| GuardedBody { body, _permit: Some(permit), timer: Some((histogram, start)), _active: None })
    }

    /// Answers an API request; all-namespace and all-node lists (up to hundreds of
    /// milliseconds of CPU at cluster scale) are selected and encoded on the blocking pool so
    /// they never stall the connections sharing a runtime worker.
    async fn api(self: &Arc<Self>, method: &http::Method, uri: &http::Uri, headers: &http::HeaderMap) -> Handled {
        let route = Route::parse(uri.path());
        if !route.is_cluster_list() {
            return self.api.handle_route(method, route, uri, headers);
        }
        let (state, method, uri, headers) = (self.clone(), method.clone(), uri.clone(), headers.clone());
        match tokio::task::spawn_blocking(move || state.api.handle_route(&method, route, &uri, &headers)).await {
            Ok(handled) => Handled { response: handled.response.map(Body::produced_off_runtime), ..handled },
            Err(e) => Handled {
                response: status_response(&Status::internal(format!("list failed: {e}"))),
                verb: "list",
                resource: "unknown",
            },
        }
    }

    /// Answers one secure-port request from a client that presented `peer_certs`.
    pub async fn handle_secure(self: &Arc<Self>, mut req: Request<Incoming>, peer_certs: Option<&[CertificateDer<'static>]>) -> Response<GuardedBody> {
        let start = Instant::now();
        let path = req.uri().path().to_owned();
        let always_allowed = self.auth.is_always_allowed(&path);
        if always_allowed && let Some((code, body)) = self.health.answer(&path, req.uri().query()) {
            self.observe("get", "healthz", code, start);
            return guarded(text(code, body), None);
        }
        let limit = self.limits.max_request_body_bytes;
        if let Some(declared) = content_length(req.headers())
            && declared > limit
        {
            let status = limit_status(
                StatusCode::PAYLOAD_TOO_LARGE,
                "RequestEntityTooLarge",
                format!("request body of {declared} bytes is larger than the limit of {limit} bytes"),
            );
            self.observe("other", "limits", status.code, start);
            return guarded(status_response(&status), None);
        }
        let Ok(permit) = self.inflight.clone().try_acquire_owned() else {
            self.metrics.requests_rejected.inc();
            let status = Status::too_many_requests(RETRY_AFTER_SECONDS);
            self.observe("other", "inflight", status.code, start);
            return guarded(status_response(&status), None);
        };
        if !always_allowed {
            let authorized = match self.auth.authenticate(peer_certs, req.headers()).await {
                Ok(user) => self.auth.authorize(&user, &RequestAttributes::from_request(req.method(), req.uri())).await,
                Err(e) => Err(e),
            };
            if let Err(e) = authorized {
                tracing::debug!(path = %path, error = %e, "request refused");
                let response = auth_error_response(&e, req.uri());
                self.observe("other", "auth", response.status(), start);
                return guarded(response, Some(permit));
            }
        }
        if !http_body::Body::is_end_stream(req.body())
            && let Err(status) = discard_body(req.body_mut(), limit, self.limits.request_header_timeout).await
        {
            self.observe("other", "limits", status.code, start);
            return guarded(status_response(&status), Some(permit));
        }
        if path == "/metrics" {
            let r = metrics_response(&self.registry);
            self.observe("get", "metrics", r.status(), start);
            return guarded(r, Some(permit));
        }
        if let Some((code, body)) = self.health.answer(&path, req.uri().query()) {
            self.observe("get", "healthz", code, start);
            return guarded(text(code, body), Some(permit));
        }
        let handled = self.api(req.method(), req.uri(), req.headers()).await;
        self.timed(handled.response, permit, handled.verb, handled.resource, start)
    }

    /// Answers one admin-port request.
    pub fn handle_admin(&self, req: &Request<Incoming>) -> Response<GuardedBody> {
        let path = req.uri().path();
        let r = if path == "/metrics" {
            metrics_response(&self.registry)
        } else if let Some((code, body)) = self.health.answer(path, req.uri().query()) {
            text(code, body)
        } else {
            status_response(&Status::path_not_found())
        };
        guarded(r, None)
    }
}

/// What a connection's request handler returns.
type ResponseFuture = Pin<Box<dyn Future<Output = Response<GuardedBody>> + Send>>;

/// A connection builder for HTTP/1.1 and HTTP/2 with `limits` on request heads.
fn builder(limits: &ServerLimits) -> auto::Builder<TokioExecutor> {
    let header_bytes = limits.max_request_header_bytes.max(MIN_HEADER_BYTES);
    let mut b = auto::Builder::new(TokioExecutor::new());
    b.http1()
        .timer(TokioTimer::new())
        .keep_alive(true)
        .header_read_timeout(limits.request_header_timeout)
        .max_buf_size(header_bytes);
    b.http2()
        .timer(TokioTimer::new())
        .max_concurrent_streams(250)
        .max_header_list_size(u32::try_from(header_bytes).unwrap_or(u32::MAX))
        .keep_alive_interval(Some(Duration::from_secs(30)));
    b
}

/// Serves one accepted connection (TLS or plain) with `service` until it ends, closing it once
/// idle for `--idle-connection-timeout`, and draining it on graceful shutdown.
async fn serve_connection<I, F>(
    io: I,
    builder: &auto::Builder<TokioExecutor>,
    limits: &ServerLimits,
    watcher: hyper_util::server::graceful::Watcher,
    handler: F,
) -> Result<(), Box<dyn std::error::Error + Send + Sync>>
where
    I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
    F: Fn(Request<Incoming>) -> ResponseFuture + Send + Sync + 'static,
{
    let activity = Arc::new(ConnectionActivity::default());
    let io = IdleTimeoutIo::new(io, activity.clone(), limits.idle_connection_timeout);
    let service = service_fn(move |req: Request<Incoming>| {
        let active = activity.begin();
        let response = handler(req);
        async move {
            let mut response = response.await;
            response.body_mut()._active = Some(active);
            Ok::<_, Infallible>(response)
        }
    });
    let conn = builder.serve_connection(TokioIo::new(io), service).into_owned();
    watcher.watch(conn).await
}

/// Serves the secure port until `shutdown` turns true, then drains connections for up to
/// `grace`.
pub async fn serve_secure(
    listener: TcpListener,
    tls: Arc<ServerConfig>,
    state: Arc<ServerState>,
    mut shutdown: watch::Receiver<bool>,
    grace: Duration,
) {
    let acceptor = tokio_rustls::TlsAcceptor::from(tls);
    let graceful = GracefulShutdown::new();
    let limits = state.limits;
    let builder = Arc::new(builder(&limits));
    loop {
        let (tcp, peer) = tokio::select! {
            _ = crate::stopped(&mut shutdown) => break,
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let _ = tcp.set_nodelay(true);
        let acceptor = acceptor.clone();
        let state = state.clone();
        let builder = builder.clone();
        let watcher = graceful.watcher();
        tokio::spawn(async move {
            let tls = match tokio::time::timeout(limits.tls_handshake_timeout, acceptor.accept(tcp)).await {
                Ok(Ok(tls)) => tls,
                Ok(Err(e)) => {
                    tracing::debug!(%peer, error = %e, "TLS handshake failed");
                    return;
                }
                Err(_) => {
                    tracing::debug!(%peer, "TLS handshake timed out");
                    return;
                }
            };
            let certs: Option<Arc<Vec<CertificateDer<'static>>>> =
                tls.get_ref().1.peer_certificates().map(|c| Arc::new(c.iter().map(|c| c.clone().into_owned()).collect()));
            let handler = move |req: Request<Incoming>| -> ResponseFuture {
                let state = state.clone();
                let certs = certs.clone();
                Box::pin(async move { state.handle_secure(req, certs.as_deref().map(Vec::as_slice)).await })
            };
            if let Err(e) = serve_connection(tls, &builder, &limits, watcher, handler).await {
                tracing::debug!(%peer, error = %e, "connection ended with an error");
            }
        });
    }
    drain(graceful, grace).await;
}

/// Serves the admin port until `shutdown` turns true.
pub async fn serve_admin(listener: TcpListener, state: Arc<ServerState>, mut shutdown: watch::Receiver<bool>, grace: Duration) {
    let graceful = GracefulShutdown::new();
    let limits = state.limits;
    let builder = Arc::new(builder(&limits));
    loop {
        let tcp = tokio::select! {
            _ = crate::stopped(&mut shutdown) => break,
            accepted = listener.accept() => match accepted {
                Ok((tcp, _)) => tcp,
                Err(e) => {
                    tracing::warn!(error = %e, "admin accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let state = state.clone();
        let builder = builder.clone();
        let watcher = graceful.watcher();
        tokio::spawn(async move {
            let handler = move |req: Request<Incoming>| -> ResponseFuture {
                let response = state.handle_admin(&req);
                Box::pin(std::future::ready(response))
            };
            let _ = serve_connection(tcp, &builder, &limits, watcher, handler).await;
        });
    }
    drain(graceful, grace).await;
}

async fn drain(graceful: GracefulShutdown, grace: Duration) {
    if tokio::time::timeout(grace, graceful.shutdown()).await.is_err() {
        tracing::warn!(?grace, "connections still open after the shutdown grace period; closing them");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::UserInfo;

    #[test]
    fn refusals_are_answered_as_k8s_apiserver_filters_answer_them() {
        let uri: http::Uri = "/apis/metrics.k8s.io/v1beta1/pods?labelSelector=a%3Db&x=y".parse().expect("uri");
        let r = auth_error_response(&AuthError::Internal("SubjectAccessReview failed: refused".into()), &uri);
        assert_eq!(r.status(), 500);
        assert_eq!(r.headers()[header::CONTENT_TYPE], "text/plain; charset=utf-8");
        assert_eq!(
            String::from_utf8_lossy(&r.into_body().collect_bytes()),
            "Internal Server Error: \"/apis/metrics.k8s.io/v1beta1/pods?labelSelector=a%3Db&amp;x=y\": SubjectAccessReview failed: refused\n"
        );
        let bob = UserInfo { name: "bob".into(), ..UserInfo::default() };
        let attrs = RequestAttributes::metrics("get", "pods", Some("web"), Some("api-0"));
        let r = auth_error_response(&attrs.forbidden(&bob, ""), &uri);
        assert_eq!(r.status(), 403);
        let v: serde_json::Value = serde_json::from_slice(&r.into_body().collect_bytes()).expect("json");
        assert_eq!(v["details"], serde_json::json!({"name": "api-0", "group": "metrics.k8s.io", "kind": "pods"}));
        assert_eq!(
            v["message"],
            r#"pods.metrics.k8s.io "api-0" is forbidden: User "bob" cannot get resource "pods" in API group "metrics.k8s.io" in the namespace "web""#
        );
        let r = auth_error_response(&AuthError::Unauthorized("token review failed".into()), &uri);
        let v: serde_json::Value = serde_json::from_slice(&r.into_body().collect_bytes()).expect("json");
        assert_eq!((v["code"].as_u64(), v["message"].as_str(), v.get("details")), (Some(401), Some("Unauthorized"), None));
    }
}
