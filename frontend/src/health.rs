//! `/livez`, `/readyz`, `/healthz` in kube-apiserver's format: named checks, `?verbose`,
//! `?exclude=<check>`, and `/<endpoint>/<check>` for a single check.
//!
//! Ready means: at least one live shard and every live shard's snapshot received once
//! (`upstream`), the Pod/Node metadata listed once (`metadata-synced`), and not shutting down
//! (`shutdown`). Live means the process answers (`ping`).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use http::StatusCode;

use crate::metadata::Metadata;
use crate::upstream::UpstreamState;

/// The state health checks read.
pub struct Health {
    /// Subscriptions.
    upstream: Arc<UpstreamState>,
    /// Metadata view; `None` when running without an API server (then always synced).
    metadata: Option<Arc<Metadata>>,
    /// Set when shutdown begins, so load balancers stop sending traffic first.
    shutting_down: AtomicBool,
}

/// A check's outcome: `Ok` or why it failed.
type Outcome = Result<(), String>;

impl Health {
    /// Health over these components.
    pub fn new(upstream: Arc<UpstreamState>, metadata: Option<Arc<Metadata>>) -> Self {
        Self { upstream, metadata, shutting_down: AtomicBool::new(false) }
    }

    /// Makes `/readyz` fail from now on (graceful shutdown).
    pub fn begin_shutdown(&self) {
        self.shutting_down.store(true, Ordering::Release);
    }

    /// Whether every readiness check passes.
    pub fn is_ready(&self) -> bool {
        self.checks("readyz").iter().all(|(_, o)| o.is_ok())
    }

    fn checks(&self, endpoint: &str) -> Vec<(&'static str, Outcome)> {
        let mut checks = vec![("ping", Ok(()))];
        if endpoint == "livez" {
            return checks;
        }
        checks.push((
            "upstream",
            if self.upstream.is_ready() { Ok(()) } else { Err(self.upstream.describe()) },
        ));
        checks.push((
            "metadata-synced",
            match &self.metadata {
                Some(m) if !m.is_synced() => Err("pods and nodes not listed yet".to_owned()),
                _ => Ok(()),
            },
        ));
        if endpoint == "readyz" {
            checks.push((
                "shutdown",
                if self.shutting_down.load(Ordering::Acquire) { Err("process is shutting down".to_owned()) } else { Ok(()) },
            ));
        }
        checks
    }

    /// Answers `path` (`/livez`, `/readyz`, `/healthz`, or one of them followed by `/<check>`)
    /// with `query`; `None` if the path is not a health path.
    pub fn answer(&self, path: &str, query: Option<&str>) -> Option<(StatusCode, String)> {
        let path = path.strip_prefix('/')?;
        let (endpoint, single) = match path.split_once('/') {
            Some((e, c)) => (e, Some(c)),
            None => (path, None),
        };
        if !matches!(endpoint, "livez" | "readyz" | "healthz") {
            return None;
        }
        let checks = self.checks(endpoint);
        if let Some(name) = single {
            return Some(match checks.iter().find(|(n, _)| *n == name) {
                Some((_, Ok(()))) => (StatusCode::OK, "ok".to_owned()),
                Some((_, Err(why))) => (StatusCode::INTERNAL_SERVER_ERROR, format!("internal server error: {why}\n")),
                None => (StatusCode::NOT_FOUND, "404 page not found\n".to_owned()),
            });
        }
        let mut verbose = false;
        let mut excluded: Vec<String> = Vec::new();
        for pair in query.unwrap_or("").split('&') {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            match k {
                "verbose" => verbose = v != "false" && v != "0",
                "exclude" => excluded.push(v.to_owned()),
                _ => {}
            }
        }
        let mut failed = false;
        let mut text = String::new();
        for (name, outcome) in &checks {
            if excluded.iter().any(|e| e == name) {
                text.push_str(&format!("[+]{name} excluded: ok\n"));
                continue;
            }
            match outcome {
                Ok(()) => text.push_str(&format!("[+]{name} ok\n")),
                Err(why) => {
                    failed = true;
                    if verbose {
                        text.push_str(&format!("[-]{name} failed: {why}\n"));
                    } else {
                        text.push_str(&format!("[-]{name} failed: reason withheld\n"));
                    }
                }
            }
        }
        Some(if failed {
            text.push_str(&format!("{endpoint} check failed\n"));
            (StatusCode::INTERNAL_SERVER_ERROR, text)
        } else if verbose {
            text.push_str(&format!("{endpoint} check passed\n"));
            (StatusCode::OK, text)
        } else {
            (StatusCode::OK, "ok".to_owned())
        })
    }
}

#[cfg(test)]
mod tests {
    use kube::runtime::watcher::Event;

    use super::*;

    fn health() -> (Health, Arc<Metadata>) {
        let metadata = Metadata::new();
        (Health::new(Arc::new(UpstreamState::default()), Some(metadata.clone())), metadata)
    }

    #[test]
    fn livez_passes_while_readyz_names_each_failing_check() {
        let (h, _) = health();
        assert_eq!(h.answer("/livez", None), Some((StatusCode::OK, "ok".into())));
        let (code, text) = h.answer("/readyz", None).expect("health path");
        assert_eq!(code, 500);
        assert!(text.contains("[+]ping ok\n[-]upstream failed: reason withheld\n[-]metadata-synced failed: reason withheld\n[+]shutdown ok\nreadyz check failed\n"), "{text}");
        let (_, text) = h.answer("/readyz", Some("verbose")).expect("health path");
        assert!(text.contains("[-]upstream failed: no live scraper shard"), "{text}");
        assert!(!h.is_ready());
    }

    #[test]
    fn single_checks_exclusions_and_shutdown() {
        let (h, metadata) = health();
        metadata.apply_pod(Event::Init);
        metadata.apply_pod(Event::InitDone);
        metadata.apply_node(Event::Init);
        metadata.apply_node(Event::InitDone);
        assert_eq!(h.answer("/readyz/metadata-synced", None).map(|r| r.0), Some(StatusCode::OK));
        assert_eq!(h.answer("/readyz/upstream", None).map(|r| r.0), Some(StatusCode::INTERNAL_SERVER_ERROR));
        assert_eq!(h.answer("/readyz/nope", None).map(|r| r.0), Some(StatusCode::NOT_FOUND));
        let (code, text) = h.answer("/readyz", Some("verbose&exclude=upstream")).expect("health path");
        assert_eq!(code, 200, "{text}");
        assert!(text.contains("[+]upstream excluded: ok") && text.ends_with("readyz check passed\n"));
        h.begin_shutdown();
        assert_eq!(h.answer("/readyz", Some("exclude=upstream")).map(|r| r.0), Some(StatusCode::INTERNAL_SERVER_ERROR));
        assert_eq!(h.answer("/healthz", Some("exclude=upstream")).map(|r| r.0), Some(StatusCode::OK), "healthz ignores shutdown");
        assert_eq!(h.answer("/metrics", None), None);
    }
}
