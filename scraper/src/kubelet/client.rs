//! The real kubelet source: HTTPS `GET /metrics/resource` over kept-alive connections.
//!
//! A node is scraped once per resolution and never concurrently, so the "pool" is a map from
//! kubelet address to at most one idle TLS stream: a scrape takes its kubelet's stream (or opens
//! one), runs one request on it ([`super::http1`] framing) and puts it back. An idle connection
//! costs only its rustls state (~5 KiB): no task, no channel, no read buffer (see
//! [`super::http1`] for why not hyper's pooled client). TLS by rustls (ring) with either a CA
//! bundle or `--kubelet-insecure-tls`; a bearer token (re-read when its file changes) or a
//! client certificate; a deadline over connect + request + body; a body size limit checked
//! against `Content-Length` first and enforced while reading. A kept-alive connection the
//! kubelet closed while idle is detected (no response byte) and the request is retried once on
//! a fresh connection.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use bytes::{BufMut, Bytes};
use futures::FutureExt;
use http::HeaderValue;
use rustls::{ClientConfig, RootCertStore};
use rustls_pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use shardmetrics_plumbing::tls::AcceptAnyServerCert;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::Instant;
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;

use super::http1::{self, BodyLength, ChunkedDecoder};
use super::{KubeletSource, ScrapeError};
use crate::nodes::NodeTarget;
use crate::tls::provider;

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

/// Bytes asked of the socket per read while a body of unknown length is read.
const READ_CHUNK: usize = 16 * 1024;

/// Bytes read per step while looking for the end of a response head (a kubelet's is ~150).
const HEAD_READ: usize = 1024;

/// Scrapes kubelets over HTTPS, keeping one idle connection per kubelet.
#[derive(Clone)]
pub struct KubeletClient {
    inner: Arc<ClientInner>,
}

struct ClientInner {
    tls: TlsConnector,
    token: Option<TokenSource>,
    timeout: Duration,
    max_response_bytes: usize,
    idle_timeout: Duration,
    idle: Mutex<IdlePool>,
}

/// At most one idle connection per kubelet `(host, port)`.
struct IdlePool {
    conns: HashMap<(String, u16), IdleConn, foldhash::fast::RandomState>,
    /// When connections idle longer than the timeout were last dropped.
    swept: Instant,
}

struct IdleConn {
    /// Boxed: the map moves its values when it grows, a rustls connection is ~1 KiB.
    stream: Box<TlsStream<TcpStream>>,
    since: Instant,
}

impl std::fmt::Debug for KubeletClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KubeletClient")
            .field("timeout", &self.inner.timeout)
            .field("max_response_bytes", &self.inner.max_response_bytes)
            .field("idle_connections", &self.idle_connections())
            .finish()
    }
}

/// Why one request/response exchange failed, and whether a fresh connection may retry it.
struct Failure {
    error: ScrapeError,
    /// The connection was reused and nothing of a response arrived: the kubelet most likely
    /// closed it while idle, so the request was never seen.
    retry: bool,
}

impl Failure {
    fn fatal(error: ScrapeError) -> Failure {
        Failure { error, retry: false }
    }
}

impl KubeletClient {
    /// Builds the client (no connection is opened until the first scrape).
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
        let (mut tls, token) = match config.auth {
            KubeletAuth::None => (builder.with_no_client_auth(), None),
            KubeletAuth::Token(t) => (builder.with_no_client_auth(), Some(t)),
            KubeletAuth::ClientCert { chain, key } => (builder.with_client_auth_cert(chain, key)?, None),
        };
        tls.alpn_protocols = vec![b"http/1.1".to_vec()];
        Ok(KubeletClient {
            inner: Arc::new(ClientInner {
                tls: TlsConnector::from(Arc::new(tls)),
                token,
                timeout: config.timeout,
                max_response_bytes: config.max_response_bytes,
                idle_timeout: config.pool_idle_timeout,
                idle: Mutex::new(IdlePool { conns: HashMap::default(), swept: Instant::now() }),
            }),
        })
    }

    /// Kept-alive connections currently idle (one per recently scraped kubelet at most).
    pub fn idle_connections(&self) -> usize {
        self.inner.pool().conns.len()
    }

    async fn fetch_inner(&self, target: &NodeTarget, body: &mut Vec<u8>) -> Result<(), ScrapeError> {
        let inner = &*self.inner;
        let authorization = match &inner.token {
            Some(t) => Some(t.header().await),
            None => None,
        };
        let request = http1::request(&target.path, &target.host, target.port, authorization.as_ref().map(HeaderValue::as_bytes));
        let key = (target.host.clone(), target.port);
        if let Some(stream) = inner.take_idle(&key) {
            match inner.exchange(stream, &request, true, body).await {
                Ok(reusable) => {
                    inner.put_idle(key, reusable);
                    return Ok(());
                }
                Err(f) if f.retry => tracing::debug!(node = %target.name, error = %f.error, "kept-alive kubelet connection was closed; reconnecting"),
                Err(f) => return Err(f.error),
            }
        }
        // Boxed: a connection and TLS handshake in flight take ~1 KB, which would otherwise make
        // every scrape's task that much larger (past what glibc serves from its per-thread cache).
        let stream = Box::pin(inner.connect(target)).await?;
        let reusable = inner.exchange(stream, &request, false, body).await.map_err(|f| f.error)?;
        inner.put_idle(key, reusable);
        Ok(())
    }
}

impl ClientInner {
    fn pool(&self) -> std::sync::MutexGuard<'_, IdlePool> {
        self.idle.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The kubelet's idle connection, unless it idled past the timeout.
    fn take_idle(&self, key: &(String, u16)) -> Option<Box<TlsStream<TcpStream>>> {
        let idle = self.pool().conns.remove(key)?;
        (idle.since.elapsed() < self.idle_timeout).then_some(idle.stream)
    }

    /// Parks a connection for the kubelet's next scrape; now and then drops connections that
    /// idled past the timeout (nodes no longer owned, deleted or moved).
    fn put_idle(&self, key: (String, u16), stream: Option<Box<TlsStream<TcpStream>>>) {
        let now = Instant::now();
        let mut pool = self.pool();
        if now.duration_since(pool.swept) >= self.idle_timeout {
            pool.swept = now;
            let timeout = self.idle_timeout;
            pool.conns.retain(|_, c| now.duration_since(c.since) < timeout);
        }
        if let Some(stream) = stream {
            pool.conns.insert(key, IdleConn { stream, since: now });
        }
    }

    async fn connect(&self, target: &NodeTarget) -> Result<Box<TlsStream<TcpStream>>, ScrapeError> {
        let name = ServerName::try_from(target.host.clone())
            .map_err(|e| ScrapeError::Connect(format!("invalid kubelet address {:?}: {e}", target.host)))?;
        let tcp = TcpStream::connect((target.host.as_str(), target.port))
            .await
            .map_err(|e| ScrapeError::Connect(format!("tcp connect to {}:{}: {}", target.host, target.port, error_chain(&e))))?;
        tcp.set_nodelay(true).map_err(|e| ScrapeError::Connect(e.to_string()))?;
        let tls = self.tls.connect(name, tcp).await.map_err(|e| ScrapeError::Connect(format!("TLS handshake: {}", error_chain(&e))))?;
        Ok(Box::new(tls))
    }

    /// Sends `request` on `stream` and reads the whole response, its body into `buf` (cleared
    /// first: the head is read there too, then moved out). On success returns the stream if it
    /// may carry the next request.
    async fn exchange(
        &self,
        mut stream: Box<TlsStream<TcpStream>>,
        request: &[u8],
        reused: bool,
        buf: &mut Vec<u8>,
    ) -> Result<Option<Box<TlsStream<TcpStream>>>, Failure> {
        let io = |e: std::io::Error| ScrapeError::Transport(error_chain(&e));
        if let Err(e) = async {
            stream.write_all(request).await?;
            stream.flush().await
        }
        .await
        {
            return Err(Failure { error: io(e), retry: reused });
        }

        // Head, read into the caller's buffer at most HEAD_READ bytes at a time: the body bytes
        // read with it are moved to the front of the buffer below, so they are kept few (rustls
        // holds the rest of what it decrypted until the body is read in place).
        buf.clear();
        let head = loop {
            if let Some(head) = http1::parse_head(buf).map_err(|e| Failure::fatal(ScrapeError::Transport(e.to_string())))? {
                break head;
            }
            buf.reserve(HEAD_READ);
            match stream.read_buf(&mut (&mut *buf).limit(HEAD_READ)).await {
                Ok(0) => {
                    return Err(Failure {
                        error: ScrapeError::Transport("connection closed before a response".into()),
                        retry: reused && buf.is_empty(),
                    });
                }
                Ok(_) => {}
                Err(e) => return Err(Failure { retry: reused && buf.is_empty(), error: io(e) }),
            }
        };
        if head.status != 200 {
            return Err(Failure::fatal(ScrapeError::Http { status: head.status }));
        }
        let limit = self.max_response_bytes;
        let too_large = || Failure::fatal(ScrapeError::TooLarge { limit });

        // Body.
        let mut reusable = head.keep_alive;
        match head.body {
            BodyLength::Known(len) => {
                let len = usize::try_from(len).ok().filter(|l| *l <= limit).ok_or_else(too_large)?;
                let read = buf.len() - head.len;
                if read > len {
                    // Bytes after the response: nothing was asked for, do not reuse.
                    reusable = false;
                }
                // The part read with the head is moved to the front once; the rest is read in
                // place, never past the body's end (no regrowth beyond `len`).
                buf.truncate(head.len + read.min(len));
                buf.drain(..head.len);
                buf.reserve(len - buf.len());
                while buf.len() < len {
                    let want = len - buf.len();
                    let n = stream.read_buf(&mut (&mut *buf).limit(want)).await.map_err(|e| Failure::fatal(io(e)))?;
                    if n == 0 {
                        return Err(Failure::fatal(ScrapeError::Transport(format!(
                            "connection closed after {} of {len} body bytes",
                            buf.len()
                        ))));
                    }
                }
            }
            BodyLength::Chunked => {
                // The raw chunks get a buffer of their own; the decoded body goes to `buf`.
                let mut raw = Vec::with_capacity(READ_CHUNK.max(buf.len() - head.len));
                raw.extend_from_slice(&buf[head.len..]);
                buf.clear();
                let mut decoder = ChunkedDecoder::new();
                loop {
                    let used = decoder.decode(&raw, buf).map_err(|e| Failure::fatal(ScrapeError::Transport(e.to_string())))?;
                    if buf.len() > limit {
                        return Err(too_large());
                    }
                    if decoder.is_done() {
                        if used < raw.len() {
                            reusable = false;
                        }
                        break;
                    }
                    raw.clear();
                    let n = stream.read_buf(&mut raw).await.map_err(|e| Failure::fatal(io(e)))?;
                    if n == 0 {
                        return Err(Failure::fatal(ScrapeError::Transport("connection closed inside a chunked body".into())));
                    }
                }
            }
            BodyLength::UntilClose => {
                buf.drain(..head.len);
                loop {
                    if buf.len() > limit {
                        return Err(too_large());
                    }
                    buf.reserve(READ_CHUNK);
                    if stream.read_buf(buf).await.map_err(|e| Failure::fatal(io(e)))? == 0 {
                        break;
                    }
                }
            }
        }
        if reusable {
            // One non-blocking read: it must find nothing (would block). Besides catching a
            // kubelet that closed at once, it lets rustls shrink its receive buffer to its idle
            // size before the connection is parked.
            let mut probe = [0u8; 1];
            if stream.read(&mut probe).now_or_never().is_some() {
                reusable = false;
            }
        }
        Ok(reusable.then_some(stream))
    }
}

impl KubeletSource for KubeletClient {
    async fn fetch(&self, target: &NodeTarget) -> Result<Bytes, ScrapeError> {
        let mut body = Vec::new();
        self.fetch_into(target, &mut body).await?;
        Ok(Bytes::from(body))
    }

    async fn fetch_into(&self, target: &NodeTarget, body: &mut Vec<u8>) -> Result<(), ScrapeError> {
        let timeout = self.inner.timeout;
        tokio::time::timeout(timeout, self.fetch_inner(target, body)).await.unwrap_or(Err(ScrapeError::Timeout(timeout)))
    }
}

/// Joins an error and its sources: top-level I/O messages alone ("invalid data") do not say
/// what happened.
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

#[cfg(test)]
mod tests {
    use super::*;

    fn client() -> KubeletClient {
        KubeletClient::new(KubeletClientConfig {
            tls: KubeletTls::Insecure,
            auth: KubeletAuth::None,
            timeout: Duration::from_secs(2),
            max_response_bytes: 1 << 20,
            pool_idle_timeout: Duration::from_secs(90),
        })
        .unwrap()
    }

    #[tokio::test]
    async fn a_host_with_spaces_is_a_connect_error_not_a_panic() {
        let t = NodeTarget::new("n", "bad host", 1);
        let err = client().fetch(&t).await.unwrap_err();
        assert!(matches!(err, ScrapeError::Connect(_)), "{err}");
    }

    /// A plain-TCP "kubelet" that answers garbage: the TLS handshake fails, nothing is pooled.
    #[tokio::test]
    async fn a_server_that_does_not_speak_tls_is_a_connect_error_and_leaves_no_idle_connection() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        tokio::spawn(async move {
            while let Ok((mut s, _)) = listener.accept().await {
                let _ = s.write_all(b"HTTP/1.1 400 Bad Request\r\n\r\n").await;
            }
        });
        let c = client();
        let err = c.fetch(&NodeTarget::new("n", "127.0.0.1", port)).await.unwrap_err();
        assert_eq!(err.result_label(), "connect_error", "{err}");
        assert_eq!(c.idle_connections(), 0);
    }

    /// A TLS "kubelet" that answers each request with `reply(n)` (n = requests so far on any
    /// connection) and closes every connection after `per_connection` requests, without saying
    /// so (as a kubelet's idle timeout does). Returns its port and its connection counter.
    async fn closing_kubelet(per_connection: usize, reply: fn(usize) -> Vec<u8>) -> (u16, Arc<std::sync::atomic::AtomicUsize>) {
        use std::sync::atomic::{AtomicUsize, Ordering};
        let key = rcgen::generate_simple_self_signed(vec!["localhost".to_owned()]).unwrap();
        let cert = key.cert.der().clone();
        let pkey = PrivateKeyDer::try_from(key.signing_key.serialize_der()).unwrap();
        let config = rustls::ServerConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(vec![cert], pkey)
            .unwrap();
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let connections = Arc::new(AtomicUsize::new(0));
        let requests = Arc::new(AtomicUsize::new(0));
        let counter = connections.clone();
        tokio::spawn(async move {
            while let Ok((tcp, _)) = listener.accept().await {
                counter.fetch_add(1, Ordering::SeqCst);
                let (acceptor, requests) = (acceptor.clone(), requests.clone());
                tokio::spawn(async move {
                    let Ok(mut tls) = acceptor.accept(tcp).await else { return };
                    for _ in 0..per_connection {
                        let mut req = Vec::new();
                        while !req.ends_with(b"\r\n\r\n") {
                            let mut b = [0u8; 512];
                            match tls.read(&mut b).await {
                                Ok(0) | Err(_) => return,
                                Ok(n) => req.extend_from_slice(&b[..n]),
                            }
                        }
                        let n = requests.fetch_add(1, Ordering::SeqCst);
                        if tls.write_all(&reply(n)).await.is_err() {
                            return;
                        }
                    }
                    // Let the client park the connection before it goes away.
                    tokio::time::sleep(Duration::from_millis(50)).await;
                });
            }
        });
        (port, connections)
    }

    #[tokio::test]
    async fn a_kept_alive_connection_the_kubelet_closed_is_replaced_and_the_scrape_succeeds() {
        use std::sync::atomic::Ordering;
        let (port, connections) =
            closing_kubelet(1, |n| format!("HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\nscrape {n}", 7 + n.to_string().len()).into_bytes())
                .await;
        let c = client();
        let target = NodeTarget::new("n", "127.0.0.1", port);
        assert_eq!(c.fetch(&target).await.unwrap(), "scrape 0");
        assert_eq!(c.idle_connections(), 1, "parked for the next scrape");
        tokio::time::sleep(Duration::from_millis(200)).await; // the kubelet has closed it by now
        assert_eq!(c.fetch(&target).await.unwrap(), "scrape 1");
        assert_eq!(connections.load(Ordering::SeqCst), 2);
    }

    #[tokio::test]
    async fn chunked_bodies_are_decoded_and_their_connection_reused() {
        use std::sync::atomic::Ordering;
        let (port, connections) = closing_kubelet(3, |n| {
            let mut r = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n".to_vec();
            for i in 0..=n {
                r.extend_from_slice(format!("{:x}\r\nline {i}\n\r\n", 6 + i.to_string().len()).as_bytes());
            }
            r.extend_from_slice(b"0\r\n\r\n");
            r
        })
        .await;
        let c = client();
        let target = NodeTarget::new("n", "127.0.0.1", port);
        for n in 0..3 {
            let want: String = (0..=n).map(|i| format!("line {i}\n")).collect();
            assert_eq!(c.fetch(&target).await.unwrap(), want.into_bytes());
        }
        assert_eq!(connections.load(Ordering::SeqCst), 1, "one connection for three scrapes");
    }

    #[tokio::test]
    async fn a_response_that_ends_early_or_without_a_status_line_is_a_transport_error() {
        let (port, _) = closing_kubelet(1, |_| b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\nshort".to_vec()).await;
        let target = NodeTarget::new("n", "127.0.0.1", port);
        let err = client().fetch(&target).await.unwrap_err();
        assert!(matches!(err, ScrapeError::Transport(_)), "{err}");
        let (port, _) = closing_kubelet(1, |_| b"NOT HTTP\r\n\r\n".to_vec()).await;
        let target = NodeTarget::new("n", "127.0.0.1", port);
        let err = client().fetch(&target).await.unwrap_err();
        assert!(err.to_string().contains("status line"), "{err}");
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
        // A file's mtime is on the real wall clock, whatever the test's clock says.
        #[allow(clippy::disallowed_methods)]
        let later = SystemTime::now() + Duration::from_secs(5);
        f.set_modified(later).unwrap();
        assert_eq!(src.header().await, "Bearer one", "not re-checked before the interval");
        tokio::time::advance(Duration::from_secs(11)).await;
        assert_eq!(src.header().await, "Bearer two");
        std::fs::remove_file(&path).unwrap();
        tokio::time::advance(Duration::from_secs(11)).await;
        assert_eq!(src.header().await, "Bearer two", "a vanished file keeps the last token");
    }
}
