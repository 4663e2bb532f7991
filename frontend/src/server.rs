//! Where requests enter: the secure port (HTTP/1.1 and HTTP/2 over rustls) and the plain admin
//! port.
//!
//! Secure port, per request:
//! 1. health paths that `--authorization-always-allow-paths` lists are answered at once;
//! 2. `--max-requests-inflight`: past it the answer is 429 with `Retry-After` (the permit is held
//!    until the response body is fully sent, so slow readers of big lists count);
//! 3. authentication and authorization ([`crate::auth::Auth`]) unless the path is always
//!    allowed: 401 / 403 / 503 Status otherwise;
//! 4. `/metrics`, health paths, or the API ([`crate::api::router::Api`]); cluster-wide lists run on
//!    the blocking pool. Request durations are observed when the response body is done.
//!
//! Admin port (plain HTTP, meant for probes and Prometheus inside the pod network): `/livez`,
//! `/readyz`, `/healthz`, `/metrics`, without authentication.
//!
//! Shutdown: stop accepting, then let open connections finish their requests for up to the grace
//! period.

use std::convert::Infallible;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

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

use crate::api::body::Body;
use crate::api::router::{Api, Handled, Route, status_response};
use crate::api::status::Status;
use crate::auth::{Auth, RequestAttributes};
use crate::health::Health;
use crate::metrics::{Metrics, render};

/// Seconds a 429 asks the client to wait.
pub const RETRY_AFTER_SECONDS: u32 = 1;
/// Longest TLS handshake allowed.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

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
}

impl Drop for GuardedBody {
    fn drop(&mut self) {
        if let Some((histogram, start)) = self.timer.take() {
            histogram.observe(start.elapsed().as_secs_f64());
        }
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
    response.map(|body| GuardedBody { body, _permit: permit, timer: None })
}

fn text(code: StatusCode, body: String) -> Response<Body> {
    let mut r = Response::new(Body::full(body));
    *r.status_mut() = code;
    r.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain; charset=utf-8"));
    r.headers_mut().insert("x-content-type-options", HeaderValue::from_static("nosniff"));
    r
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
    fn timed(&self, response: Response<Body>, permit: OwnedSemaphorePermit, verb: &str, resource: &str, start: Instant) -> Response<GuardedBody> {
        let histogram = self.metrics.request_duration.with_label_values(&[verb, resource, response.status().as_str()]);
        response.map(|body| GuardedBody { body, _permit: Some(permit), timer: Some((histogram, start)) })
    }

    /// Answers an API request; all-namespace and all-node lists (up to hundreds of
    /// milliseconds of CPU at cluster scale) run on the blocking pool so they never stall the
    /// connections sharing a runtime worker.
    async fn api(self: &Arc<Self>, method: &http::Method, uri: &http::Uri, headers: &http::HeaderMap) -> Handled {
        let heavy = matches!(Route::parse(uri.path()), Route::Pods(None) | Route::Nodes);
        if !heavy {
            return self.api.handle(method, uri, headers);
        }
        let (state, method, uri, headers) = (self.clone(), method.clone(), uri.clone(), headers.clone());
        match tokio::task::spawn_blocking(move || state.api.handle(&method, &uri, &headers)).await {
            Ok(handled) => handled,
            Err(e) => Handled {
                response: status_response(&Status::internal(format!("list failed: {e}"))),
                verb: "list",
                resource: "unknown",
            },
        }
    }

    /// Answers one secure-port request from a client that presented `peer_certs`.
    pub async fn handle_secure(self: &Arc<Self>, req: Request<Incoming>, peer_certs: Option<&[CertificateDer<'static>]>) -> Response<GuardedBody> {
        let start = Instant::now();
        let path = req.uri().path().to_owned();
        let always_allowed = self.auth.is_always_allowed(&path);
        if always_allowed && let Some((code, body)) = self.health.answer(&path, req.uri().query()) {
            self.observe("get", "healthz", code, start);
            return guarded(text(code, body), None);
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
                let status = Status::from_auth(e.status_code(), e.reason(), e.client_message());
                self.observe("other", "auth", status.code, start);
                return guarded(status_response(&status), Some(permit));
            }
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

/// A connection builder for HTTP/1.1 and HTTP/2.
fn builder() -> auto::Builder<TokioExecutor> {
    let mut b = auto::Builder::new(TokioExecutor::new());
    b.http1().timer(TokioTimer::new()).keep_alive(true).header_read_timeout(Duration::from_secs(30));
    b.http2()
        .timer(TokioTimer::new())
        .max_concurrent_streams(250)
        .keep_alive_interval(Some(Duration::from_secs(30)));
    b
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
    let builder = Arc::new(builder());
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
            let tls = match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
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
            let service = service_fn(move |req: Request<Incoming>| {
                let state = state.clone();
                let certs = certs.clone();
                async move { Ok::<_, Infallible>(state.handle_secure(req, certs.as_deref().map(Vec::as_slice)).await) }
            });
            let conn = builder.serve_connection(TokioIo::new(tls), service).into_owned();
            if let Err(e) = watcher.watch(conn).await {
                tracing::debug!(%peer, error = %e, "connection ended with an error");
            }
        });
    }
    drain(graceful, grace).await;
}

/// Serves the admin port until `shutdown` turns true.
pub async fn serve_admin(listener: TcpListener, state: Arc<ServerState>, mut shutdown: watch::Receiver<bool>, grace: Duration) {
    let graceful = GracefulShutdown::new();
    let builder = Arc::new(builder());
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
            let service = service_fn(move |req: Request<Incoming>| {
                let state = state.clone();
                async move { Ok::<_, Infallible>(state.handle_admin(&req)) }
            });
            let conn = builder.serve_connection(TokioIo::new(tcp), service).into_owned();
            let _ = watcher.watch(conn).await;
        });
    }
    drain(graceful, grace).await;
}

async fn drain(graceful: GracefulShutdown, grace: Duration) {
    if tokio::time::timeout(grace, graceful.shutdown()).await.is_err() {
        tracing::warn!(?grace, "connections still open after the shutdown grace period; closing them");
    }
}
