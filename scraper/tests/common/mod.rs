//! Real servers for the scraper's integration tests: TLS kubelets on port 0, with certificates
//! from the project's test PKI (`shardmetrics_plumbing::pki`).
#![allow(dead_code, missing_docs)]

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::Frame;
use hyper::service::service_fn;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::{TokioExecutor, TokioIo};
use rustls::ServerConfig;
use rustls::server::WebPkiClientVerifier;
use shardmetrics_plumbing::pki::{Ca, CertKey, provider};
use tokio::net::TcpListener;
use tokio::sync::oneshot;

/// What the kubelet answers.
#[derive(Clone)]
pub enum Reply {
    Body(Bytes),
    Status(u16),
    /// Sleep, then answer the body.
    Slow(Duration, Bytes),
    /// A chunked body of this many bytes, without Content-Length.
    Chunked(usize),
}

pub struct KubeletOptions {
    pub token: Option<String>,
    /// Require client certificates signed by this CA.
    pub client_ca: Option<Arc<Ca>>,
    pub reply: Reply,
}

/// A TLS kubelet on 127.0.0.1:0.
pub struct TestKubelet {
    pub addr: SocketAddr,
    pub connections: Arc<AtomicUsize>,
    pub requests: Arc<AtomicUsize>,
    pub reply: Arc<Mutex<Reply>>,
    _shutdown: oneshot::Sender<()>,
}

impl TestKubelet {
    /// Serves with `server` (e.g. `ca.server_cert("kubelet", &[])`, valid for 127.0.0.1).
    pub async fn start(server: &CertKey, opts: KubeletOptions) -> TestKubelet {
        let builder = ServerConfig::builder_with_provider(provider()).with_safe_default_protocol_versions().unwrap();
        let builder = match &opts.client_ca {
            Some(ca) => builder.with_client_cert_verifier(WebPkiClientVerifier::builder_with_provider(Arc::new(ca.root_store()), provider()).build().unwrap()),
            None => builder.with_no_client_auth(),
        };
        let mut cfg = builder.with_single_cert(server.chain(), server.key_der()).unwrap();
        cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(cfg));
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let connections = Arc::new(AtomicUsize::new(0));
        let requests = Arc::new(AtomicUsize::new(0));
        let reply = Arc::new(Mutex::new(opts.reply));
        let (tx, mut rx) = oneshot::channel::<()>();
        let (c, r, rep, token) = (connections.clone(), requests.clone(), reply.clone(), opts.token.clone());
        tokio::spawn(async move {
            loop {
                let (tcp, _) = tokio::select! {
                    _ = &mut rx => return,
                    a = listener.accept() => match a { Ok(a) => a, Err(_) => continue },
                };
                c.fetch_add(1, Ordering::SeqCst);
                let acceptor = acceptor.clone();
                let (r, rep, token) = (r.clone(), rep.clone(), token.clone());
                tokio::spawn(async move {
                    let Ok(tls) = acceptor.accept(tcp).await else { return };
                    let svc = service_fn(move |req: Request<hyper::body::Incoming>| {
                        let (r, rep, token) = (r.clone(), rep.clone(), token.clone());
                        async move { Ok::<_, Infallible>(answer(req, &r, &rep, token.as_deref()).await) }
                    });
                    let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new()).serve_connection(TokioIo::new(tls), svc).await;
                });
            }
        });
        TestKubelet { addr, connections, requests, reply, _shutdown: tx }
    }

    pub fn target(&self, name: &str) -> shardmetrics_scraper::nodes::NodeTarget {
        shardmetrics_scraper::nodes::NodeTarget { name: name.into(), host: "127.0.0.1".into(), port: self.addr.port() }
    }
}

async fn answer(req: Request<hyper::body::Incoming>, requests: &AtomicUsize, reply: &Mutex<Reply>, token: Option<&str>) -> Response<BoxBody<Bytes, Infallible>> {
    requests.fetch_add(1, Ordering::SeqCst);
    let full = |status: u16, body: Bytes| Response::builder().status(status).body(Full::new(body).boxed()).unwrap();
    if req.uri().path() != "/metrics/resource" {
        return full(404, Bytes::from_static(b"not found"));
    }
    if let Some(t) = token {
        let ok = req.headers().get("authorization").and_then(|v| v.to_str().ok()) == Some(&format!("Bearer {t}"));
        if !ok {
            return full(StatusCode::UNAUTHORIZED.as_u16(), Bytes::from_static(b"Unauthorized"));
        }
    }
    let reply = reply.lock().unwrap().clone();
    match reply {
        Reply::Body(b) => full(200, b),
        Reply::Status(s) => full(s, Bytes::from_static(b"error")),
        Reply::Slow(d, b) => {
            tokio::time::sleep(d).await;
            full(200, b)
        }
        Reply::Chunked(n) => {
            let chunk = Bytes::from(vec![b'#'; 8192]);
            let frames = (0..n.div_ceil(8192)).map(move |_| Ok::<_, Infallible>(Frame::data(chunk.clone())));
            Response::builder().status(200).body(StreamBody::new(futures::stream::iter(frames)).boxed()).unwrap()
        }
    }
}
