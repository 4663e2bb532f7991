//! Self-metrics of authentication and authorization, registered into the caller's registry.

use prometheus::{IntCounterVec, Opts, Registry};

/// Counters of authentication and authorization decisions.
#[derive(Clone)]
pub(crate) struct AuthMetrics {
    /// `shardmetrics_frontend_authentication_total{method,result}`: one per authenticated request;
    /// method = requestheader|x509|token|anonymous|none, result = success|failure|error.
    authentication: IntCounterVec,
    /// `shardmetrics_frontend_authorization_total{result,cached}`: one per authorization;
    /// result = allowed|denied|error, cached = true|false.
    authorization: IntCounterVec,
    /// `shardmetrics_frontend_auth_cache_full_total{cache}`: results not cached because the cache
    /// was full of live entries (cache = token|authorized|unauthorized).
    cache_full: IntCounterVec,
}

impl AuthMetrics {
    /// Creates the counters and registers them in `registry`; fails if any is already there
    /// (`Auth::new` reports it as a setup error).
    pub(crate) fn register(registry: &Registry) -> Result<Self, prometheus::Error> {
        let authentication = IntCounterVec::new(
            Opts::new(
                "shardmetrics_frontend_authentication_total",
                "Authentication decisions by method and result.",
            ),
            &["method", "result"],
        )?;
        let authorization = IntCounterVec::new(
            Opts::new(
                "shardmetrics_frontend_authorization_total",
                "Authorization decisions by result and whether they came from the cache.",
            ),
            &["result", "cached"],
        )?;
        let cache_full = IntCounterVec::new(
            Opts::new(
                "shardmetrics_frontend_auth_cache_full_total",
                "Review results not cached because the cache was full of live entries.",
            ),
            &["cache"],
        )?;
        registry.register(Box::new(authentication.clone()))?;
        registry.register(Box::new(authorization.clone()))?;
        registry.register(Box::new(cache_full.clone()))?;
        Ok(Self {
            authentication,
            authorization,
            cache_full,
        })
    }

    /// Counts one authentication decision.
    pub(crate) fn authenticated(&self, method: &str, result: &str) {
        self.authentication
            .with_label_values(&[method, result])
            .inc();
    }

    /// Counts one authorization decision.
    pub(crate) fn authorized(&self, result: &str, cached: bool) {
        self.authorization
            .with_label_values(&[result, if cached { "true" } else { "false" }])
            .inc();
    }

    /// Counts one result that a full cache refused.
    pub(crate) fn cache_full(&self, cache: &str) {
        self.cache_full.with_label_values(&[cache]).inc();
    }
}
