//! Small HTTP helpers shared by the simulated servers: one boxed body type, JSON and text
//! responses, query-string parsing, and a TLS + HTTP/1.1 + h2 accept loop with explicit shutdown.

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderValue, Response, StatusCode, header};
use http_body_util::{BodyExt, Full, combinators::BoxBody};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use rustls::pki_types::CertificateDer;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinSet;
use tokio_rustls::TlsAcceptor;

/// Error type of every response body.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// The response body of every simulated server: buffered, streamed or proxied.
pub type Body = BoxBody<Bytes, BoxError>;

/// A whole body.
pub fn full(bytes: impl Into<Bytes>) -> Body {
    Full::new(bytes.into()).map_err(|never: Infallible| match never {}).boxed()
}

/// A response with a body and a content type.
pub fn response(status: StatusCode, content_type: &'static str, body: impl Into<Bytes>) -> Response<Body> {
    let mut resp = Response::new(full(body));
    *resp.status_mut() = status;
    resp.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    resp
}

/// A JSON response.
pub fn json_response(status: StatusCode, body: impl Into<Bytes>) -> Response<Body> {
    response(status, "application/json", body)
}

/// Decodes one `application/x-www-form-urlencoded` component (`+` is a space).
pub fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < bytes.len() => {
                let hex = std::str::from_utf8(&bytes[i + 1..i + 3]).ok().and_then(|h| u8::from_str_radix(h, 16).ok());
                match hex {
                    Some(b) => {
                        out.push(b);
                        i += 2;
                    }
                    None => out.push(b'%'),
                }
            }
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Percent-encodes a query or header component (unreserved characters stay).
pub fn percent_encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// The query string as decoded `(key, value)` pairs.
pub fn query_pairs(query: Option<&str>) -> Vec<(String, String)> {
    query
        .unwrap_or("")
        .split('&')
        .filter(|kv| !kv.is_empty())
        .map(|kv| match kv.split_once('=') {
            Some((k, v)) => (percent_decode(k), percent_decode(v)),
            None => (percent_decode(kv), String::new()),
        })
        .collect()
}

/// Why a request body could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BodyError {
    /// The body is longer than the limit (in bytes).
    #[error("request entity too large: limit is {0} bytes")]
    TooLarge(usize),
    /// The connection failed while reading.
    #[error("reading the request body: {0}")]
    Read(String),
}

/// Reads a whole request body, refusing more than `limit` bytes.
pub async fn read_body(body: Incoming, limit: usize) -> Result<Bytes, BodyError> {
    use http_body::Body as _;
    if body.size_hint().lower() > limit as u64 {
        return Err(BodyError::TooLarge(limit));
    }
    let limited = http_body_util::Limited::new(body, limit);
    limited.collect().await.map(|c| c.to_bytes()).map_err(|e| {
        if e.downcast_ref::<http_body_util::LengthLimitError>().is_some() {
            BodyError::TooLarge(limit)
        } else {
            BodyError::Read(e.to_string())
        }
    })
}

/// What a TLS connection proved about its client.
#[derive(Debug, Clone, Default)]
pub struct PeerInfo {
    /// Remote address.
    pub remote: Option<SocketAddr>,
    /// The verified client certificate chain (leaf first), when one was presented.
    pub client_certs: Vec<CertificateDer<'static>>,
}

/// Serves HTTPS (HTTP/1.1 and h2) on `listener` until `shutdown` turns true; every open
/// connection (watches included) is closed at shutdown.
///
/// `handler` is called per request with the connection's [`PeerInfo`].
pub async fn serve_tls<H, F>(listener: TcpListener, tls: Arc<rustls::ServerConfig>, shutdown: watch::Receiver<bool>, handler: H)
where
    H: Fn(PeerInfo, http::Request<Incoming>) -> F + Clone + Send + Sync + 'static,
    F: Future<Output = Response<Body>> + Send + 'static,
{
    let acceptor = TlsAcceptor::from(tls);
    accept_each(listener, shutdown, "accept failed", move |stream, remote| {
        let (acceptor, handler) = (acceptor.clone(), handler.clone());
        async move {
            let tls = match tokio::time::timeout(Duration::from_secs(10), acceptor.accept(stream)).await {
                Ok(Ok(tls)) => tls,
                Ok(Err(e)) => {
                    tracing::debug!(error = %e, %remote, "TLS handshake failed");
                    return;
                }
                Err(_) => return,
            };
            let client_certs = tls.get_ref().1.peer_certificates().map(|c| c.to_vec()).unwrap_or_default();
            let peer = PeerInfo { remote: Some(remote), client_certs };
            let service = hyper::service::service_fn(move |req| {
                let fut = handler(peer.clone(), req);
                async move { Ok::<_, Infallible>(fut.await) }
            });
            let builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
            if let Err(e) = builder.serve_connection(TokioIo::new(tls), service).await {
                tracing::debug!(error = %e, %remote, "connection ended with an error");
            }
        }
    })
    .await;
}

/// Accepts connections on `listener` until `shutdown`, each served by `serve(stream, remote)`
/// on a task of its own (nodelay set); a failed accept is logged with `what` and retried after
/// 50 ms. On shutdown the connections still open are aborted.
pub async fn accept_each<S, F>(listener: TcpListener, mut shutdown: watch::Receiver<bool>, what: &'static str, serve: S)
where
    S: Fn(tokio::net::TcpStream, SocketAddr) -> F,
    F: Future<Output = ()> + Send + 'static,
{
    let mut conns = JoinSet::new();
    loop {
        let (stream, remote) = tokio::select! {
            () = stopped(&mut shutdown) => break,
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    tracing::warn!(error = %e, "{what}");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            Some(_) = conns.join_next(), if !conns.is_empty() => continue,
        };
        let _ = stream.set_nodelay(true);
        conns.spawn(serve(stream, remote));
    }
    conns.shutdown().await;
}

/// Resolves when `shutdown` is true (or its sender is gone).
pub async fn stopped(shutdown: &mut watch::Receiver<bool>) {
    let _ = shutdown.wait_for(|s| *s).await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn query_pairs_are_percent_decoded() {
        let q = query_pairs(Some("labelSelector=app%3Dweb%2Ctier+in+(a)&watch&x=%zz"));
        assert_eq!(
            q,
            vec![
                ("labelSelector".to_owned(), "app=web,tier in (a)".to_owned()),
                ("watch".to_owned(), String::new()),
                ("x".to_owned(), "%zz".to_owned())
            ]
        );
        assert_eq!(percent_decode(&percent_encode("a b/c=d")), "a b/c=d");
    }
}
