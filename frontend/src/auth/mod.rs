//! Authentication and authorization of the secure port, as kube-apiserver's "delegated"
//! authn/authz does it for every aggregated API server (metrics-server included), plus the
//! secure port's TLS.
//!
//! Per request the server calls, in order:
//! 1. [`Auth::is_always_allowed`] on the path (`--authorization-always-allow-paths`, e.g.
//!    `/livez`): if true, serve without authenticating or authorizing;
//! 2. [`Auth::authenticate`] with the connection's client certificate chain (from
//!    `tokio_rustls::server::TlsStream::get_ref().1.peer_certificates()`) and the headers:
//!    the [`UserInfo`], or 401;
//! 3. [`Auth::authorize`] with that user and [`RequestAttributes::from_request`]: Ok, or 403 / 500.
//!
//! Any [`AuthError`] becomes a Kubernetes `Status` with [`AuthError::status_code`],
//! [`AuthError::reason`] and [`AuthError::client_message`].
//!
//! Authentication tries, first success wins: front-proxy client certificate + `X-Remote-*`
//! headers ([`requestheader`]); an x509 client certificate from the client CA (CN = user, O =
//! groups); `Authorization: Bearer` via TokenReview. A rejected credential is a 401 even with
//! `--anonymous-auth` (as in kube-apiserver); with no credential at all the request is
//! `system:anonymous` if anonymous access is on, else 401. `X-Remote-*` headers are believed only
//! with a verified front-proxy certificate. Authorization asks SubjectAccessReview, caching
//! allows and denials separately; `system:masters` needs no review.
//!
//! # Layout
//! - [`user`], [`attributes`]: who asks ([`UserInfo`]) and what for ([`RequestAttributes`],
//!   including kube-apiserver's path classification and forbidden message).
//! - [`requestheader`]: front-proxy authentication; `x509`: chain verification and subjects.
//! - `token`: TokenReview; `authorizer`: SubjectAccessReview; `cache`: their bounded TTL cache.
//! - [`source`]: CA files and the `extension-apiserver-authentication` ConfigMap, re-read
//!   every [`AuthConfig::refresh_interval`].
//! - [`tls`]: [`server_tls_config`] for the secure port.
//! - [`flags`]: the clap flags of all of the above, flattened into the frontend's CLI.
//! - `metrics`: `shardmetrics_frontend_authentication_total{method,result}`,
//!   `shardmetrics_frontend_authorization_total{result,cached}`,
//!   `shardmetrics_frontend_auth_cache_full_total{cache}`.

pub mod attributes;
mod authorizer;
mod cache;
pub mod error;
pub mod flags;
mod metrics;
pub mod requestheader;
pub mod source;
pub mod tls;
mod token;
pub mod user;
mod x509;

use std::path::PathBuf;
use std::sync::{Arc, RwLock, Weak};
use std::time::Duration;

use http::HeaderMap;
use rustls_pki_types::CertificateDer;
use shardmetrics_plumbing::clock::SharedClock;

pub use attributes::{RequestAttributes, ResourceAttributes};
pub use error::{AuthError, AuthSetupError, Forbidden, TlsError};
pub use flags::AuthArgs;
pub use requestheader::RequestHeaderSettings;
pub use tls::{TlsConfig, TlsMinVersion, server_tls_config};
pub use user::UserInfo;

use authorizer::{Authorizer, AuthorizerLimits};
use metrics::AuthMetrics;
use requestheader::RequestHeaderAuthenticator;
use source::{Loaded, Sources};
use token::TokenAuthenticator;
use x509::CaBundle;

/// Settings of authentication and authorization (the `--requestheader-*`, `--client-ca-file`,
/// `--anonymous-auth` and `--authorization-*` flags, see [`AuthArgs`]).
#[derive(Clone)]
pub struct AuthConfig {
    /// `--requestheader-client-ca-file`; when unset the requestheader CA *and settings* come from
    /// the `kube-system/extension-apiserver-authentication` ConfigMap.
    pub requestheader_client_ca_file: Option<PathBuf>,
    /// Front-proxy settings from flags (used only with `requestheader_client_ca_file`).
    pub requestheader: RequestHeaderSettings,
    /// `--client-ca-file`; when unset the ConfigMap's `client-ca-file` (if any) is used.
    pub client_ca_file: Option<PathBuf>,
    /// `--anonymous-auth`: requests without credentials become `system:anonymous`.
    pub anonymous: bool,
    /// `--authorization-always-allow-paths`: paths served without authn/authz; a trailing `*`
    /// matches a prefix.
    pub always_allow_paths: Vec<String>,
    /// How long a TokenReview answer is reused (kube-apiserver's 10 s).
    pub token_cache_ttl: Duration,
    /// `--authorization-webhook-cache-authorized-ttl`: how long an allow is reused.
    pub authorized_ttl: Duration,
    /// `--authorization-webhook-cache-unauthorized-ttl`: how long a denial is reused.
    pub unauthorized_ttl: Duration,
    /// Upper bound on one TokenReview, SubjectAccessReview or ConfigMap round trip.
    pub review_timeout: Duration,
    /// Maximum entries of each review cache (tokens, allows, denials).
    pub cache_capacity: usize,
    /// How often CA files and the ConfigMap are re-read.
    pub refresh_interval: Duration,
    /// Start even if the ConfigMap cannot be read (`--authentication-tolerate-lookup-failure`);
    /// it is retried every `refresh_interval` either way.
    pub tolerate_lookup_failure: bool,
    /// Wall clock for cache expiry and certificate validity.
    pub clock: SharedClock,
}

impl Default for AuthConfig {
    /// kube-apiserver's delegated defaults: requestheader from the ConfigMap, anonymous off,
    /// `/healthz`, `/readyz`, `/livez` always allowed, 10 s caches.
    fn default() -> Self {
        Self {
            requestheader_client_ca_file: None,
            requestheader: RequestHeaderSettings::default(),
            client_ca_file: None,
            anonymous: false,
            always_allow_paths: ["/healthz", "/readyz", "/livez"]
                .map(str::to_owned)
                .to_vec(),
            token_cache_ttl: Duration::from_secs(10),
            authorized_ttl: Duration::from_secs(10),
            unauthorized_ttl: Duration::from_secs(10),
            review_timeout: Duration::from_secs(10),
            cache_capacity: 10_000,
            refresh_interval: Duration::from_secs(10),
            tolerate_lookup_failure: false,
            clock: shardmetrics_plumbing::clock::system(),
        }
    }
}

impl std::fmt::Debug for AuthConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AuthConfig")
            .field(
                "requestheader_client_ca_file",
                &self.requestheader_client_ca_file,
            )
            .field("requestheader", &self.requestheader)
            .field("client_ca_file", &self.client_ca_file)
            .field("anonymous", &self.anonymous)
            .field("always_allow_paths", &self.always_allow_paths)
            .field("token_cache_ttl", &self.token_cache_ttl)
            .field("authorized_ttl", &self.authorized_ttl)
            .field("unauthorized_ttl", &self.unauthorized_ttl)
            .field("review_timeout", &self.review_timeout)
            .field("cache_capacity", &self.cache_capacity)
            .field("refresh_interval", &self.refresh_interval)
            .field("tolerate_lookup_failure", &self.tolerate_lookup_failure)
            .finish_non_exhaustive()
    }
}

/// The outcome of one authenticator on one request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Attempt {
    /// The request carries no credential for this authenticator.
    Skipped,
    /// The credential is good: this is the user.
    Authenticated(UserInfo),
    /// The credential is bad (why, for logs).
    Rejected(String),
    /// The credential could not be checked (API server unreachable).
    Unavailable(String),
}

/// Authenticates and authorizes requests of the secure port. Cheap to clone (shared state); the
/// background refresh of CA files and the ConfigMap stops when the last clone is dropped.
#[derive(Clone)]
pub struct Auth {
    /// Shared state.
    inner: Arc<Inner>,
}

/// The state behind [`Auth`].
struct Inner {
    /// `--anonymous-auth`.
    anonymous: bool,
    /// `--authorization-always-allow-paths`.
    always_allow_paths: Vec<String>,
    /// Wall clock for certificate validity.
    clock: SharedClock,
    /// Certificate authenticators built from the current sources, swapped on refresh.
    certs: RwLock<Arc<CertAuthenticators>>,
    /// Where the CA bundles come from.
    sources: Sources,
    /// TokenReview; `None` without an API server.
    tokens: Option<TokenAuthenticator>,
    /// SubjectAccessReview with caches.
    authorizer: Authorizer,
    /// Decision counters.
    metrics: AuthMetrics,
}

/// The certificate-based authenticators in force.
#[derive(Debug, Default)]
struct CertAuthenticators {
    /// Front-proxy authentication; `None` when no requestheader CA is known.
    requestheader: Option<RequestHeaderAuthenticator>,
    /// x509 client-certificate users; `None` without a client CA.
    client_ca: Option<CaBundle>,
}

impl Auth {
    /// Reads the CA files and (when a flag leaves it to it and `client` is given) the
    /// `extension-apiserver-authentication` ConfigMap, registers the metrics in `registry`, and
    /// starts re-reading them every [`AuthConfig::refresh_interval`]. `client` is the API server
    /// for TokenReview, SubjectAccessReview and the ConfigMap; without it bearer tokens are
    /// refused and only `system:masters` is authorized. Fails on an unreadable or invalid CA file,
    /// and on an unreadable ConfigMap unless [`AuthConfig::tolerate_lookup_failure`] (a missing
    /// ConfigMap just means no front-proxy/client CA from it).
    pub async fn new(
        config: AuthConfig,
        client: Option<kube::Client>,
        registry: &prometheus::Registry,
    ) -> Result<Self, AuthSetupError> {
        let metrics = AuthMetrics::register(registry)?;
        let sources = Sources {
            requestheader_ca_file: config.requestheader_client_ca_file.clone(),
            requestheader_settings: config.requestheader.clone(),
            client_ca_file: config.client_ca_file.clone(),
            configmap: client
                .clone()
                .map(|c| kube::Api::namespaced(c, source::AUTHENTICATION_CONFIGMAP_NAMESPACE)),
            timeout: config.review_timeout,
        };
        if sources.wants_configmap() && sources.configmap.is_none() {
            tracing::warn!(
                "no API server: the extension-apiserver-authentication ConfigMap is not read, so only \
                 --requestheader-client-ca-file / --client-ca-file authenticate certificates"
            );
        }
        let loaded = match sources.load(true).await {
            Ok(loaded) => loaded,
            Err(e @ AuthSetupError::ConfigMap(_)) if config.tolerate_lookup_failure => {
                tracing::warn!(error = %e, "starting without the authentication ConfigMap; it will be retried");
                sources.load(false).await?
            }
            Err(e) => return Err(e),
        };
        let certs = build_cert_authenticators(loaded)?;
        log_cert_authenticators(&certs);
        let tokens = client.clone().map(|c| {
            TokenAuthenticator::new(
                c,
                config.token_cache_ttl,
                config.review_timeout,
                config.cache_capacity,
                config.clock.clone(),
                metrics.clone(),
            )
        });
        let limits = AuthorizerLimits {
            authorized_ttl: config.authorized_ttl,
            unauthorized_ttl: config.unauthorized_ttl,
            timeout: config.review_timeout,
            capacity: config.cache_capacity,
        };
        let inner = Arc::new(Inner {
            anonymous: config.anonymous,
            always_allow_paths: config.always_allow_paths,
            authorizer: Authorizer::new(client, limits, config.clock.clone(), metrics.clone()),
            clock: config.clock,
            certs: RwLock::new(Arc::new(certs)),
            sources,
            tokens,
            metrics,
        });
        tokio::spawn(refresh_loop(
            Arc::downgrade(&inner),
            config.refresh_interval,
        ));
        Ok(Self { inner })
    }

    /// Whether `path` is served without authentication or authorization
    /// (`--authorization-always-allow-paths`; an entry ending in `*` matches a prefix).
    pub fn is_always_allowed(&self, path: &str) -> bool {
        self.inner
            .always_allow_paths
            .iter()
            .any(|allowed| match allowed.strip_suffix('*') {
                Some(prefix) => path.starts_with(prefix),
                None => path == allowed,
            })
    }

    /// Who made the request. `peer_certs` is the TLS client's chain (leaf first), as rustls gives
    /// it. Unauthorized (401) when no credential authenticates, or when a presented credential is
    /// bad, or a bearer token could not be reviewed (as k8s.io/apiserver). Authenticated users get
    /// the `system:authenticated` group.
    pub async fn authenticate(
        &self,
        peer_certs: Option<&[CertificateDer<'static>]>,
        headers: &HeaderMap,
    ) -> Result<UserInfo, AuthError> {
        let inner = &self.inner;
        let now = inner.clock.now_ms();
        let certs = inner
            .certs
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        let mut failures = Failures::default();
        if let Some(requestheader) = &certs.requestheader
            && let Some(user) = failures.note(
                "requestheader",
                requestheader.authenticate(peer_certs, headers, now),
            )
        {
            return Ok(inner.success("requestheader", user));
        }
        if let Some(client_ca) = &certs.client_ca
            && let Some(user) = failures.note("x509", x509_user(client_ca, peer_certs, now))
        {
            return Ok(inner.success("x509", user));
        }
        if let Some(token) = bearer_token(headers) {
            let attempt = match &inner.tokens {
                Some(tokens) => tokens.authenticate(token).await,
                None => Attempt::Rejected(
                    "bearer token presented but no API server is configured to review it".into(),
                ),
            };
            if let Some(user) = failures.note("token", attempt) {
                return Ok(inner.success("token", user));
            }
        }
        let Failures {
            rejected,
            unavailable,
        } = failures;
        if let Some(why) = unavailable {
            // k8s.io/apiserver answers an authenticator error with a plain 401, even when
            // anonymous requests are allowed.
            inner.metrics.authenticated("token", "error");
            tracing::warn!(error = %why, "authentication unavailable");
            return Err(AuthError::Unauthorized(why));
        }
        if let Some((method, _)) = rejected.first() {
            inner.metrics.authenticated(method, "failure");
            let why = rejected
                .iter()
                .map(|(m, w)| format!("{m}: {w}"))
                .collect::<Vec<_>>()
                .join("; ");
            tracing::debug!(reason = %why, "request not authenticated");
            return Err(AuthError::Unauthorized(why));
        }
        if inner.anonymous {
            inner.metrics.authenticated("anonymous", "success");
            return Ok(UserInfo::anonymous());
        }
        inner.metrics.authenticated("none", "failure");
        Err(AuthError::Unauthorized("no credentials".to_owned()))
    }

    /// Whether `user` may do `attrs`: Ok, Forbidden (403; denials are cached for the unauthorized
    /// TTL and never served as an allow), or Internal (500; never an allow, never cached).
    pub async fn authorize(
        &self,
        user: &UserInfo,
        attrs: &RequestAttributes,
    ) -> Result<(), AuthError> {
        self.inner.authorizer.authorize(user, attrs).await
    }

    /// Re-reads the CA files and the ConfigMap now and swaps in what changed (the background task
    /// does this every [`AuthConfig::refresh_interval`]). On error the current authenticators
    /// stay. Returns whether anything changed.
    pub async fn refresh(&self) -> Result<bool, AuthSetupError> {
        self.inner.refresh().await
    }
}

/// Why the authenticators that ran did not authenticate a request.
#[derive(Default)]
struct Failures {
    /// (method, why) of each rejected credential, in order.
    rejected: Vec<(&'static str, String)>,
    /// Why a credential could not be checked, if one could not.
    unavailable: Option<String>,
}

impl Failures {
    /// Records a failed attempt; gives back the user of a successful one.
    fn note(&mut self, method: &'static str, attempt: Attempt) -> Option<UserInfo> {
        match attempt {
            Attempt::Authenticated(user) => return Some(user),
            Attempt::Rejected(why) => self.rejected.push((method, why)),
            Attempt::Unavailable(why) => self.unavailable = Some(why),
            Attempt::Skipped => {}
        }
        None
    }
}

impl Inner {
    /// Counts a successful authentication and adds `system:authenticated`.
    fn success(&self, method: &'static str, user: UserInfo) -> UserInfo {
        self.metrics.authenticated(method, "success");
        user.with_authenticated_group()
    }

    /// See [`Auth::refresh`].
    async fn refresh(&self) -> Result<bool, AuthSetupError> {
        let loaded = self.sources.load(true).await?;
        let current = self.certs.read().unwrap_or_else(|e| e.into_inner()).clone();
        let same_requestheader = match (&current.requestheader, &loaded.requestheader) {
            (Some(old), Some((pem, settings))) => {
                old.ca.pem() == pem.as_slice() && old.settings == *settings
            }
            (None, None) => true,
            _ => false,
        };
        let same_client_ca = match (&current.client_ca, &loaded.client_ca) {
            (Some(old), Some((pem, _))) => old.pem() == pem.as_slice(),
            (None, None) => true,
            _ => false,
        };
        if same_requestheader && same_client_ca {
            return Ok(false);
        }
        let certs = build_cert_authenticators(loaded)?;
        log_cert_authenticators(&certs);
        *self.certs.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(certs);
        Ok(true)
    }
}

/// Re-reads the sources every `interval` until the [`Auth`] is dropped.
async fn refresh_loop(inner: Weak<Inner>, interval: Duration) {
    let mut ticker = tokio::time::interval(interval.max(Duration::from_millis(10)));
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    ticker.tick().await;
    loop {
        ticker.tick().await;
        let Some(inner) = inner.upgrade() else { return };
        if let Err(e) = inner.refresh().await {
            tracing::warn!(error = %e, "authentication sources not refreshed; keeping the current ones");
        }
    }
}

/// Builds the certificate authenticators from freshly read sources.
fn build_cert_authenticators(loaded: Loaded) -> Result<CertAuthenticators, AuthSetupError> {
    let requestheader = match loaded.requestheader {
        Some((pem, settings)) => Some(RequestHeaderAuthenticator::new(
            CaBundle::from_pem(&pem, "requestheader client CA")?,
            settings,
        )),
        None => None,
    };
    let client_ca = match loaded.client_ca {
        Some((pem, what)) => Some(CaBundle::from_pem(&pem, &what)?),
        None => None,
    };
    Ok(CertAuthenticators {
        requestheader,
        client_ca,
    })
}

/// Logs which certificate authenticators are now in force.
fn log_cert_authenticators(certs: &CertAuthenticators) {
    tracing::info!(
        requestheader = certs.requestheader.is_some(),
        allowed_names = ?certs.requestheader.as_ref().map(|r| &r.settings.allowed_names),
        client_ca = certs.client_ca.is_some(),
        "certificate authentication configured"
    );
}

/// The user of an x509 client certificate signed by the client CA: CN = name, O = groups.
fn x509_user(ca: &CaBundle, chain: Option<&[CertificateDer<'static>]>, now_ms: i64) -> Attempt {
    let Some(chain) = chain.filter(|c| !c.is_empty()) else {
        return Attempt::Skipped;
    };
    if let Err(e) = ca.verify(chain, now_ms) {
        return Attempt::Rejected(format!(
            "client certificate not verified by the client CA: {e}"
        ));
    }
    match x509::subject(&chain[0]) {
        Ok(x509::Subject {
            common_name: Some(name),
            organizations,
        }) => Attempt::Authenticated(UserInfo {
            name,
            groups: organizations,
            ..UserInfo::default()
        }),
        Ok(_) => Attempt::Rejected("client certificate has no CommonName".to_owned()),
        Err(e) => Attempt::Rejected(e),
    }
}

/// The token of an `Authorization: Bearer <token>` header (scheme case-insensitive), if any.
fn bearer_token(headers: &HeaderMap) -> Option<&str> {
    let value = headers
        .get(http::header::AUTHORIZATION)?
        .to_str()
        .ok()?
        .trim();
    let mut parts = value.split(' ');
    let scheme = parts.next()?;
    let token = parts.next()?;
    (scheme.eq_ignore_ascii_case("bearer") && !token.is_empty()).then_some(token)
}

#[cfg(test)]
mod tests {
    use super::x509::testing::{client_cert, new_ca};
    use super::*;

    #[test]
    fn bearer_tokens_are_read_case_insensitively_and_empty_ones_ignored() {
        let mut headers = HeaderMap::new();
        headers.insert(
            http::header::AUTHORIZATION,
            "Bearer abc".parse().expect("value"),
        );
        assert_eq!(bearer_token(&headers), Some("abc"));
        headers.insert(
            http::header::AUTHORIZATION,
            "bearer abc".parse().expect("value"),
        );
        assert_eq!(bearer_token(&headers), Some("abc"));
        headers.insert(
            http::header::AUTHORIZATION,
            "Bearer ".parse().expect("value"),
        );
        assert_eq!(bearer_token(&headers), None);
        headers.insert(
            http::header::AUTHORIZATION,
            "Basic dXNlcjpwdw==".parse().expect("value"),
        );
        assert_eq!(bearer_token(&headers), None);
    }

    #[test]
    fn an_x509_user_is_the_common_name_with_organizations_as_groups() {
        let ca = new_ca("client-ca");
        let bundle = CaBundle::from_pem(ca.cert_pem().as_bytes(), "test").expect("bundle");
        let now = shardmetrics_plumbing::clock::system().now_ms();
        let chain = [client_cert(&ca, "admin", "system:masters")];
        let Attempt::Authenticated(user) = x509_user(&bundle, Some(&chain), now) else {
            panic!("expected a user")
        };
        assert_eq!(
            (user.name.as_str(), user.groups.as_slice()),
            ("admin", ["system:masters".to_owned()].as_slice())
        );
        let nameless = [client_cert(&ca, "", "g")];
        assert!(matches!(
            x509_user(&bundle, Some(&nameless), now),
            Attempt::Rejected(_)
        ));
        assert_eq!(x509_user(&bundle, None, now), Attempt::Skipped);
    }
}
