//! The real kubelet source: HTTPS `GET /metrics/resource` over a keep-alive pool.
//!
//! One hyper client for all kubelets: at most one idle connection per kubelet (a node is
//! scraped once per resolution, never concurrently), kept longer than the resolution so every
//! scrape reuses its connection; TLS by rustls (ring) with either a CA bundle or
//! `--kubelet-insecure-tls`; a bearer token (re-read when its file changes) or a client
//! certificate; a deadline over connect + request + body; a body size limit checked against
//! `Content-Length` first and enforced while reading.

use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use http::header::{ACCEPT, AUTHORIZATION, CONTENT_LENGTH};
use http::{HeaderValue, Request, StatusCode, Uri};
use http_body_util::{BodyExt, Empty, LengthLimitError, Limited};
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioTimer};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::{ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme};
use rustls_pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use tokio::time::Instant;

use super::{KubeletSource, ScrapeError};
use crate::nodes::NodeTarget;
use crate::tls::provider;

/// Path of the endpoint scraped on every kubelet.
pub const RESOURCE_METRICS_PATH: &str = "/metrics/resource";

/// How kubelet serving certificates are checked.
#[derive(Debug, Clone)]
pub enum KubeletTls {
    /// Verify against these CA certificates (`--kubelet-certificate-authority`, else the
    /// cluster CA of the kube client config).
    Verify(Vec<CertificateDer<'static>>),
    /// Accept any certificate (`--kubelet-insecure-tls`); signatures are still checked so the
    /// handshake is sound, only the chain of trust and the name are not.
    Insecure,
}

/// How the scraper authenticates to kubelets.
pub enum KubeletAuth {
    /// No credentials (kubelets with anonymous auth; tests).
    None,
    /// `Authorization: Bearer <token>`.
    Token(TokenSource),
    /// A TLS client certificate (`--kubelet-client-certificate` / `--kubelet-client-key`).
    ClientCert {
        /// Certificate chain, leaf first.
        chain: Vec<CertificateDer<'static>>,
        /// Its private key.
        key: PrivateKeyDer<'static>,
    },
}

impl std::fmt::Debug for KubeletAuth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            KubeletAuth::None => f.write_str("None"),
            KubeletAuth::Token(t) => f.debug_tuple("Token").field(t).finish(),
            KubeletAuth::ClientCert { chain, .. } => f.debug_struct("ClientCert").field("chain_len", &chain.len()).finish_non_exhaustive(),
        }
    }
}

/// A bearer token, either fixed or read from a file that is re-read when it changes
/// (projected service-account tokens rotate about hourly).
#[derive(Clone)]
pub struct TokenSource(Arc<TokenInner>);

enum TokenInner {
    Static(HeaderValue),
    File { path: PathBuf, recheck: Duration, state: Mutex<FileToken> },
}

struct FileToken {
    header: HeaderValue,
    modified: Option<SystemTime>,
    checked: Instant,
}

impl std::fmt::Debug for TokenSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &*self.0 {
            TokenInner::Static(_) => f.write_str("TokenSource::Static(<redacted>)"),
            TokenInner::File { path, .. } => write!(f, "TokenSource::File({})", path.display()),
        }
    }
}

/// A token that cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum TokenError {
    /// The token file cannot be read.
    #[error("reading token file {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The token is empty or not a valid header value.
    #[error("token {origin} is empty or contains characters not allowed in an HTTP header")]
    Invalid {
        /// Where it came from.
        origin: String,
    },
}

fn bearer(token: &str, origin: &str) -> Result<HeaderValue, TokenError> {
    let token = token.trim();
    if token.is_empty() {
        return Err(TokenError::Invalid { origin: origin.to_owned() });
    }
    let mut v = HeaderValue::from_str(&format!("Bearer {token}")).map_err(|_| TokenError::Invalid { origin: origin.to_owned() })?;
    v.set_sensitive(true);
    Ok(v)
}

impl TokenSource {
    /// A fixed token.
    pub fn fixed(token: &str) -> Result<TokenSource, TokenError> {
        Ok(TokenSource(Arc::new(TokenInner::Static(bearer(token, "from the kube config")?))))
    }

    /// A token read from `path` now, then re-read whenever its modification time changes
    /// (checked at most once per `recheck`). A failed re-read keeps the previous token.
    pub fn file(path: PathBuf, recheck: Duration) -> Result<TokenSource, TokenError> {
        let read = std::fs::read_to_string(&path).map_err(|source| TokenError::Read { path: path.clone(), source })?;
        let header = bearer(&read, &format!("file {}", path.display()))?;
        let modified = std::fs::metadata(&path).and_then(|m| m.modified()).ok();
        let state = Mutex::new(FileToken { header, modified, checked: Instant::now() });
        Ok(TokenSource(Arc::new(TokenInner::File { path, recheck, state })))
    }

    /// The `Authorization` header value to send now.
    pub async fn header(&self) -> HeaderValue {
        let (path, recheck, state) = match &*self.0 {
            TokenInner::Static(h) => return h.clone(),
            TokenInner::File { path, recheck, state } => (path, recheck, state),
        };
        let (current, last_modified) = {
            let mut s = state.lock().unwrap_or_else(|p| p.into_inner());
            if s.checked.elapsed() < *recheck {
                return s.header.clone();
            }
            s.checked = Instant::now();
            (s.header.clone(), s.modified)
        };
        let modified = tokio::fs::metadata(path).await.and_then(|m| m.modified()).ok();
        if modified.is_none() || modified == last_modified {
            return current;
        }
        match tokio::fs::read_to_string(path).await {
            Ok(text) => match bearer(&text, &format!("file {}", path.display())) {
                Ok(header) => {
                    tracing::info!(path = %path.display(), "kubelet bearer token reloaded");
                    let mut s = state.lock().unwrap_or_else(|p| p.into_inner());
                    s.header = header.clone();
                    s.modified = modified;
                    header
                }
                Err(err) => {
                    tracing::warn!(error = %err, "keeping the previous kubelet token");
                    current
                }
            },
            Err(err) => {
                tracing::warn!(path = %path.display(), error = %err, "cannot re-read kubelet token; keeping the previous one");
                current
            }
        }
    }
}

/// Everything the kubelet client needs.
#[derive(Debug)]
pub struct KubeletClientConfig {
    /// Server certificate checking.
    pub tls: KubeletTls,
    /// Credentials.
    pub auth: KubeletAuth,
    /// Deadline for one scrape: connect, TLS, request and the whole body (`--kubelet-request-timeout`).
    pub timeout: Duration,
    /// Largest accepted body, bytes (`--kubelet-max-response-bytes`).
    pub max_response_bytes: usize,
    /// How long an idle kubelet connection is kept; must exceed the resolution so that every
    /// scrape reuses the connection of the previous one.
    pub pool_idle_timeout: Duration,
}

/// A kubelet client that cannot be built.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// rustls refused the CA, client certificate or key.
    #[error("kubelet TLS configuration: {0}")]
    Tls(#[from] rustls::Error),
    /// The CA bundle holds no usable certificate.
    #[error("kubelet certificate authority: none of the {0} certificates could be used")]
    NoUsableCa(usize),
}

/// Scrapes kubelets over HTTPS.
#[derive(Clone)]
pub struct KubeletClient {
    http: Client<HttpsConnector<HttpConnector>, Empty<Bytes>>,
    token: Option<TokenSource>,
    timeout: Duration,
    max_response_bytes: usize,
}

impl std::fmt::Debug for KubeletClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KubeletClient").field("timeout", &self.timeout).field("max_response_bytes", &self.max_response_bytes).finish()
    }
}

impl KubeletClient {
    /// Builds the client and its connection pool.
    pub fn new(config: KubeletClientConfig) -> Result<KubeletClient, ClientError> {
        let builder = ClientConfig::builder_with_provider(provider()).with_safe_default_protocol_versions()?;
        let builder = match config.tls {
            KubeletTls::Verify(cas) => {
                let mut roots = RootCertStore::empty();
                let total = cas.len();
                let (added, _) = roots.add_parsable_certificates(cas);
                if added == 0 {
                    return Err(ClientError::NoUsableCa(total));
                }
                builder.with_root_certificates(roots)
            }
            KubeletTls::Insecure => builder.dangerous().with_custom_certificate_verifier(Arc::new(AcceptAnyServerCert(provider()))),
        };
        let (tls, token) = match config.auth {
            KubeletAuth::None => (builder.with_no_client_auth(), None),
            KubeletAuth::Token(t) => (builder.with_no_client_auth(), Some(t)),
            KubeletAuth::ClientCert { chain, key } => (builder.with_client_auth_cert(chain, key)?, None),
        };
        let mut http = HttpConnector::new();
        http.enforce_http(false);
        http.set_nodelay(true);
        http.set_connect_timeout(Some(config.timeout));
        http.set_keepalive(Some(Duration::from_secs(60)));
        let https = hyper_rustls::HttpsConnectorBuilder::new().with_tls_config(tls).https_only().enable_http1().wrap_connector(http);
        let http = Client::builder(TokioExecutor::new())
            .pool_idle_timeout(config.pool_idle_timeout)
            .pool_max_idle_per_host(1)
            .pool_timer(TokioTimer::new())
            .timer(TokioTimer::new())
            .build(https);
        Ok(KubeletClient { http, token, timeout: config.timeout, max_response_bytes: config.max_response_bytes })
    }

    async fn fetch_inner(&self, uri: Uri) -> Result<Bytes, ScrapeError> {
        let mut req = Request::get(uri).header(ACCEPT, "text/plain");
        if let Some(t) = &self.token {
            req = req.header(AUTHORIZATION, t.header().await);
        }
        let req = req.body(Empty::new()).map_err(|e| ScrapeError::Connect(e.to_string()))?;
        let resp = self.http.request(req).await.map_err(|e| {
            let chain = error_chain(&e);
            if e.is_connect() { ScrapeError::Connect(chain) } else { ScrapeError::Transport(chain) }
        })?;
        let status = resp.status();
        if status != StatusCode::OK {
            return Err(ScrapeError::Http { status: status.as_u16() });
        }
        let declared = resp.headers().get(CONTENT_LENGTH).and_then(|v| v.to_str().ok()).and_then(|v| v.parse::<u64>().ok());
        if declared.is_some_and(|len| len > self.max_response_bytes as u64) {
            return Err(ScrapeError::TooLarge { limit: self.max_response_bytes });
        }
        let body = Limited::new(resp.into_body(), self.max_response_bytes);
        match body.collect().await {
            Ok(collected) => Ok(collected.to_bytes()),
            Err(e) if e.downcast_ref::<LengthLimitError>().is_some() => Err(ScrapeError::TooLarge { limit: self.max_response_bytes }),
            Err(e) => Err(ScrapeError::Transport(error_chain(&*e))),
        }
    }
}

/// The URL of a node's `/metrics/resource` (IPv6 hosts get brackets).
pub fn resource_metrics_uri(target: &NodeTarget) -> Result<Uri, ScrapeError> {
    let host = if target.host.contains(':') && !target.host.starts_with('[') { format!("[{}]", target.host) } else { target.host.clone() };
    format!("https://{host}:{}{RESOURCE_METRICS_PATH}", target.port)
        .parse()
        .map_err(|e: http::uri::InvalidUri| ScrapeError::Connect(format!("invalid kubelet address {:?}: {e}", target.host)))
}

impl KubeletSource for KubeletClient {
    async fn fetch(&self, target: &NodeTarget) -> Result<Bytes, ScrapeError> {
        let uri = resource_metrics_uri(target)?;
        tokio::time::timeout(self.timeout, self.fetch_inner(uri)).await.unwrap_or(Err(ScrapeError::Timeout(self.timeout)))
    }
}

/// Joins an error and its sources: hyper's top-level messages alone ("client error
/// (Connect)") do not say what happened.
fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut out = e.to_string();
    let mut cur = e.source();
    while let Some(s) = cur {
        let msg = s.to_string();
        if !out.contains(&msg) {
            out.push_str(": ");
            out.push_str(&msg);
        }
        cur = s.source();
    }
    out
}

/// `--kubelet-insecure-tls`: any chain and name are accepted, handshake signatures are still
/// verified with the provider's algorithms.
#[derive(Debug)]
struct AcceptAnyServerCert(Arc<CryptoProvider>);

impl ServerCertVerifier for AcceptAnyServerCert {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.0.signature_verification_algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.0.signature_verification_algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ipv6_hosts_are_bracketed_in_the_uri() {
        let t = NodeTarget { name: "n".into(), host: "fd00::1".into(), port: 10250 };
        assert_eq!(resource_metrics_uri(&t).unwrap().to_string(), "https://[fd00::1]:10250/metrics/resource");
        let t = NodeTarget { name: "n".into(), host: "10.0.0.1".into(), port: 10250 };
        assert_eq!(resource_metrics_uri(&t).unwrap().to_string(), "https://10.0.0.1:10250/metrics/resource");
    }

    #[test]
    fn a_host_with_spaces_is_a_connect_error_not_a_panic() {
        let t = NodeTarget { name: "n".into(), host: "bad host".into(), port: 1 };
        assert!(matches!(resource_metrics_uri(&t), Err(ScrapeError::Connect(_))));
    }

    #[test]
    fn empty_or_multiline_tokens_are_rejected() {
        assert!(TokenSource::fixed("  \n").is_err());
        assert!(TokenSource::fixed("a\nb").is_err());
        assert!(TokenSource::fixed("abc\n").is_ok(), "a trailing newline (as in token files) is trimmed");
    }

    #[tokio::test(start_paused = true)]
    async fn a_token_file_is_re_read_when_it_changes_after_the_recheck_interval() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("token");
        std::fs::write(&path, "one\n").unwrap();
        let src = TokenSource::file(path.clone(), Duration::from_secs(10)).unwrap();
        assert_eq!(src.header().await, "Bearer one");
        std::fs::write(&path, "two\n").unwrap();
        // Make sure the mtime differs even on coarse file systems.
        let f = std::fs::File::options().write(true).open(&path).unwrap();
        f.set_modified(SystemTime::now() + Duration::from_secs(5)).unwrap();
        assert_eq!(src.header().await, "Bearer one", "not re-checked before the interval");
        tokio::time::advance(Duration::from_secs(11)).await;
        assert_eq!(src.header().await, "Bearer two");
        std::fs::remove_file(&path).unwrap();
        tokio::time::advance(Duration::from_secs(11)).await;
        assert_eq!(src.header().await, "Bearer two", "a vanished file keeps the last token");
    }
}
