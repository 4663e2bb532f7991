//! Plain-HTTP admin listener: `/livez`, `/readyz`, `/metrics`.
//!
//! On its own port (`--admin-bind-address`) so probes and Prometheus are answered even when
//! the gRPC port is busy. Readiness has named checks: `nodes-synced` (the Node list has
//! completed), `lease-held` (this shard is a live member of the ring), `not-shutting-down`.
//! Liveness (`/livez`, also `/healthz`) has one, like metrics-server's:
//! `metric-collection-timely` fails (HTTP 500, with the reason) when the scheduler loop has not
//! ticked for [`STALL_RESOLUTIONS`] resolutions (it ticks at least every half resolution), so a
//! stuck shard is restarted.

use std::convert::Infallible;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode, header};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use hyper_util::server::graceful::GracefulShutdown;
use tokio::net::TcpListener;

use crate::metrics::Metrics;
use crate::schedule::{Heartbeat, STALL_RESOLUTIONS};

/// Liveness and readiness inputs, set by `run`.
#[derive(Debug)]
pub struct Health {
    /// The scheduler's heartbeat (liveness).
    pub scheduler: Arc<Heartbeat>,
    /// The initial Node list has completed.
    pub nodes_synced: AtomicBool,
    /// This shard's Lease is live in the member set (it owns its share of nodes).
    pub lease_held: AtomicBool,
    /// Graceful shutdown has begun.
    pub shutting_down: AtomicBool,
}

impl Health {
    /// Health of a starting shard: not ready, live while `scheduler` ticks.
    pub fn new(scheduler: Arc<Heartbeat>) -> Health {
        Health { scheduler, nodes_synced: AtomicBool::new(false), lease_held: AtomicBool::new(false), shutting_down: AtomicBool::new(false) }
    }

    /// Why the shard is not live, if it is not: the scheduler stopped ticking.
    pub fn liveness_failure(&self) -> Option<String> {
        self.scheduler.stalled().then(|| {
            format!(
                "no scheduler tick for {}ms (limit {}ms: {STALL_RESOLUTIONS}x --metric-resolution)",
                self.scheduler.age().as_millis(),
                self.scheduler.stall_after().as_millis()
            )
        })
    }

    /// Every readiness check with its state, in a stable order.
    pub fn checks(&self) -> [(&'static str, bool); 3] {
        [
            ("nodes-synced", self.nodes_synced.load(Ordering::Relaxed)),
            ("lease-held", self.lease_held.load(Ordering::Relaxed)),
            ("not-shutting-down", !self.shutting_down.load(Ordering::Relaxed)),
        ]
    }

    /// Whether every check passes.
    pub fn ready(&self) -> bool {
        self.checks().iter().all(|(_, ok)| *ok)
    }
}

fn text(status: StatusCode, content_type: &'static str, body: String) -> Response<Full<Bytes>> {
    let mut resp = Response::new(Full::new(Bytes::from(body)));
    *resp.status_mut() = status;
    resp.headers_mut().insert(header::CONTENT_TYPE, header::HeaderValue::from_static(content_type));
    resp
}

/// Answers one admin request.
pub fn respond(path: &str, method: &Method, verbose: bool, health: &Health, metrics: &Metrics) -> Response<Full<Bytes>> {
    if method != Method::GET && method != Method::HEAD {
        return text(StatusCode::METHOD_NOT_ALLOWED, "text/plain; charset=utf-8", "method not allowed\n".into());
    }
    match path {
        "/livez" | "/healthz" => match health.liveness_failure() {
            None if verbose => text(StatusCode::OK, "text/plain; charset=utf-8", "[+] metric-collection-timely\nlivez check passed\n".into()),
            None => text(StatusCode::OK, "text/plain; charset=utf-8", "ok\n".into()),
            Some(reason) => text(
                StatusCode::INTERNAL_SERVER_ERROR,
                "text/plain; charset=utf-8",
                format!("[-] metric-collection-timely failed: {reason}\nlivez check failed\n"),
            ),
        },
        "/readyz" => {
            let ready = health.ready();
            let mut body = String::new();
            if verbose || !ready {
                for (name, ok) in health.checks() {
                    body.push_str(&format!("[{}] {name}\n", if ok { "+" } else { "-" }));
                }
            }
            body.push_str(if ready { "readyz check passed\n" } else { "readyz check failed\n" });
            let status = if ready { StatusCode::OK } else { StatusCode::SERVICE_UNAVAILABLE };
            text(status, "text/plain; charset=utf-8", body)
        }
        "/metrics" => text(StatusCode::OK, "text/plain; version=0.0.4; charset=utf-8", metrics.render()),
        _ => text(StatusCode::NOT_FOUND, "text/plain; charset=utf-8", "not found\n".into()),
    }
}

/// Serves the admin endpoints on `listener` until `shutdown` resolves, then finishes open
/// requests.
pub async fn serve(listener: TcpListener, health: Arc<Health>, metrics: Metrics, shutdown: impl std::future::Future<Output = ()>) {
    let graceful = GracefulShutdown::new();
    tokio::pin!(shutdown);
    loop {
        let (tcp, _) = tokio::select! {
            _ = &mut shutdown => break,
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(err) => {
                    tracing::warn!(error = %err, "admin accept failed");
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let (health, metrics) = (health.clone(), metrics.clone());
        let svc = service_fn(move |req: Request<Incoming>| {
            let verbose = req.uri().query().is_some_and(|q| q.split('&').any(|p| p == "verbose" || p == "verbose=true"));
            let resp = respond(req.uri().path(), req.method(), verbose, &health, &metrics);
            async move { Ok::<_, Infallible>(resp) }
        });
        let conn = hyper::server::conn::http1::Builder::new().serve_connection(TokioIo::new(tcp), svc);
        let conn = graceful.watch(conn);
        tokio::spawn(async move {
            let _ = conn.await;
        });
    }
    let _ = tokio::time::timeout(std::time::Duration::from_secs(5), graceful.shutdown()).await;
}

#[cfg(test)]
mod tests {
    use http_body_util::BodyExt;

    use super::*;

    async fn body(r: Response<Full<Bytes>>) -> String {
        String::from_utf8(r.into_body().collect().await.unwrap().to_bytes().to_vec()).unwrap()
    }

    const RES: std::time::Duration = std::time::Duration::from_secs(15);

    fn health() -> Health {
        Health::new(Arc::new(Heartbeat::new(RES)))
    }

    #[tokio::test]
    async fn readyz_names_the_failing_checks_until_all_pass() {
        let h = health();
        let m = Metrics::register(&prometheus::Registry::new()).unwrap();
        let r = respond("/readyz", &Method::GET, false, &h, &m);
        assert_eq!(r.status(), StatusCode::SERVICE_UNAVAILABLE);
        let b = body(r).await;
        assert!(b.contains("[-] nodes-synced") && b.contains("[-] lease-held") && b.contains("[+] not-shutting-down"), "{b}");
        h.nodes_synced.store(true, Ordering::Relaxed);
        h.lease_held.store(true, Ordering::Relaxed);
        assert_eq!(respond("/readyz", &Method::GET, false, &h, &m).status(), StatusCode::OK);
        h.shutting_down.store(true, Ordering::Relaxed);
        assert_eq!(respond("/readyz", &Method::GET, false, &h, &m).status(), StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(respond("/livez", &Method::GET, false, &h, &m).status(), StatusCode::OK);
    }

    #[tokio::test]
    async fn metrics_are_served_in_prometheus_text_and_unknown_paths_are_404() {
        let h = health();
        let m = Metrics::register(&prometheus::Registry::new()).unwrap();
        let b = body(respond("/metrics", &Method::GET, false, &h, &m)).await;
        assert!(b.contains("# TYPE shardmetrics_scraper_scrapes_total counter"), "{b}");
        assert_eq!(respond("/nope", &Method::GET, false, &h, &m).status(), StatusCode::NOT_FOUND);
        assert_eq!(respond("/metrics", &Method::POST, false, &h, &m).status(), StatusCode::METHOD_NOT_ALLOWED);
    }

    #[tokio::test(start_paused = true)]
    async fn livez_fails_with_its_reason_once_the_scheduler_misses_three_resolutions_of_ticks() {
        let h = health();
        let m = Metrics::register(&prometheus::Registry::new()).unwrap();
        tokio::time::advance(RES * 3).await;
        assert_eq!(respond("/livez", &Method::GET, false, &h, &m).status(), StatusCode::OK, "exactly at the limit: still live");
        let verbose = respond("/livez", &Method::GET, true, &h, &m);
        assert_eq!(verbose.status(), StatusCode::OK);
        assert_eq!(body(verbose).await, "[+] metric-collection-timely\nlivez check passed\n");
        h.scheduler.tick();
        tokio::time::advance(RES * 3 + std::time::Duration::from_millis(1)).await;
        for path in ["/livez", "/healthz"] {
            let r = respond(path, &Method::GET, false, &h, &m);
            assert_eq!(r.status(), StatusCode::INTERNAL_SERVER_ERROR, "{path}");
            let b = body(r).await;
            assert_eq!(b, "[-] metric-collection-timely failed: no scheduler tick for 45001ms (limit 45000ms: 3x --metric-resolution)\nlivez check failed\n");
        }
        h.scheduler.tick();
        assert_eq!(respond("/livez", &Method::GET, false, &h, &m).status(), StatusCode::OK, "live again once it ticks");
    }
}
