//! Shared by the frontend's server tests: a real tonic `SampleStream` server that feeds known
//! batches, builders of realistic node scrapes, a replica running in this process, and an HTTPS
//! client (certificates from the project's one PKI, `shardmetrics_plumbing::pki`).

use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use futures::Stream;
use http::{HeaderMap, Request, StatusCode};
use http_body_util::{BodyExt, Empty};
use hyper_util::rt::{TokioExecutor, TokioIo};
use rustls::pki_types::ServerName;
use shardmetrics_frontend::auth::{AuthConfig, RequestHeaderSettings, TlsConfig};
use shardmetrics_frontend::store::StoreConfig;
use shardmetrics_frontend::upstream::UpstreamConfig;
use shardmetrics_frontend::{Config, Handles, Listeners, ShardSource};
use shardmetrics_plumbing::lease::Member;
use shardmetrics_plumbing::pki::{self, Ca, CertKey};
use shardmetrics_proto::v1::sample_stream_server::{SampleStream, SampleStreamServer};
use shardmetrics_proto::v1::{SampleBatch, SubscribeRequest};
use shardmetrics_proto::{ContainerSample, NodeReleased, NodeScrape, PodSamples, Point, ShardIdentity, encode_batch};
use tokio::sync::{mpsc, oneshot};
use tonic::{Response, Status};

/// 2026-01-01T00:00:00Z in Unix ms: the base of every test timestamp.
pub const T0: i64 = 1_767_225_600_000;

/// What a fake shard sends and to whom.
#[derive(Default)]
pub struct ShardState {
    /// Batches sent to every new subscriber first.
    pub snapshot: Mutex<Vec<SampleBatch>>,
    /// Open subscriptions.
    pub subscribers: Mutex<Vec<mpsc::Sender<Result<SampleBatch, Status>>>>,
    /// Subscribe calls so far.
    pub subscribes: AtomicUsize,
    /// Names subscribers gave.
    pub subscriber_names: Mutex<Vec<String>>,
}

struct Service(Arc<ShardState>);

#[tonic::async_trait]
impl SampleStream for Service {
    type SubscribeStream = Pin<Box<dyn Stream<Item = Result<SampleBatch, Status>> + Send>>;

    async fn subscribe(&self, request: tonic::Request<SubscribeRequest>) -> Result<Response<Self::SubscribeStream>, Status> {
        self.0.subscribes.fetch_add(1, Ordering::SeqCst);
        self.0.subscriber_names.lock().expect("lock").push(request.into_inner().subscriber);
        let (tx, rx) = mpsc::channel(1024);
        for b in self.0.snapshot.lock().expect("lock").iter() {
            tx.try_send(Ok(b.clone())).map_err(|_| Status::internal("snapshot too large for the test queue"))?;
        }
        self.0.subscribers.lock().expect("lock").push(tx);
        Ok(Response::new(Box::pin(tokio_stream::wrappers::ReceiverStream::new(rx))))
    }
}

/// A real gRPC `SampleStream` server on 127.0.0.1:0.
pub struct FakeShard {
    /// Where it listens.
    pub addr: SocketAddr,
    /// Its identity.
    pub identity: ShardIdentity,
    /// Shared state.
    pub state: Arc<ShardState>,
    /// Dropping it (with the shard) stops the server.
    _stop: oneshot::Sender<()>,
}

impl FakeShard {
    /// Starts a shard that will send `snapshot` (already including `snapshot_complete`).
    pub async fn start(shard_id: &str, snapshot: Vec<SampleBatch>) -> FakeShard {
        Self::start_with_tls(shard_id, snapshot, None).await
    }

    /// Like [`FakeShard::start`], serving TLS with `(cert_pem, key_pem)` and, when
    /// `client_ca_pem` is given, requiring client certificates signed by it.
    pub async fn start_with_tls(shard_id: &str, snapshot: Vec<SampleBatch>, tls: Option<(String, String, Option<String>)>) -> FakeShard {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let state = Arc::new(ShardState::default());
        *state.snapshot.lock().expect("lock") = snapshot;
        let (stop, stopped) = oneshot::channel::<()>();
        let svc = SampleStreamServer::new(Service(state.clone()));
        let mut builder = tonic::transport::Server::builder();
        if let Some((cert, key, client_ca)) = tls {
            let mut cfg = tonic::transport::ServerTlsConfig::new().identity(tonic::transport::Identity::from_pem(cert, key));
            if let Some(ca) = client_ca {
                cfg = cfg.client_ca_root(tonic::transport::Certificate::from_pem(ca));
            }
            builder = builder.tls_config(cfg).expect("server TLS");
        }
        tokio::spawn(async move {
            let incoming = tokio_stream::wrappers::TcpListenerStream::new(listener);
            let _ = builder
                .serve_with_incoming_shutdown(svc, incoming, async {
                    let _ = stopped.await;
                })
                .await;
        });
        FakeShard { addr, identity: ShardIdentity { shard_id: shard_id.into(), epoch: 1 }, state, _stop: stop }
    }

    /// The Lease member describing this shard.
    pub fn member(&self) -> Member {
        Member {
            shard_id: self.identity.shard_id.clone(),
            grpc_address: self.addr.to_string(),
            epoch: self.identity.epoch,
            renew_time_ms: T0,
            lease_duration_ms: 15_000,
        }
    }

    /// Sends a live batch to every subscriber.
    pub async fn publish(&self, scrapes: &[NodeScrape], released: &[NodeReleased]) {
        let refs: Vec<&NodeScrape> = scrapes.iter().collect();
        let batch = encode_batch(&self.identity, &refs, released, false);
        let subs = self.state.subscribers.lock().expect("lock").clone();
        for s in subs {
            let _ = s.send(Ok(batch.clone())).await;
        }
    }

    /// Sends a raw (possibly invalid) batch to every subscriber.
    pub async fn publish_raw(&self, batch: SampleBatch) {
        let subs = self.state.subscribers.lock().expect("lock").clone();
        for s in subs {
            let _ = s.send(Ok(batch.clone())).await;
        }
    }

    /// Ends every open subscription (as a shard restart or a slow-subscriber drop would).
    pub fn disconnect_all(&self) {
        for s in self.state.subscribers.lock().expect("lock").drain(..) {
            let _ = s.try_send(Err(Status::resource_exhausted("test disconnect")));
        }
    }

    /// Number of Subscribe calls so far.
    pub fn subscribes(&self) -> usize {
        self.state.subscribes.load(Ordering::SeqCst)
    }
}

/// The snapshot of one shard: every scrape in one batch with `snapshot_complete`.
pub fn snapshot(identity: &ShardIdentity, scrapes: &[NodeScrape]) -> Vec<SampleBatch> {
    let refs: Vec<&NodeScrape> = scrapes.iter().collect();
    vec![encode_batch(identity, &refs, &[], true)]
}

/// A pod on a scraped node: namespace, name, container names.
pub type PodSpec<'a> = (&'a str, &'a str, &'a [&'a str]);

/// A scrape of `node` at `T0 + t_ms` in which the node has used `node_cores` cores and every
/// container `container_cores` cores since `T0` (so rates between two scrapes equal those).
pub fn scrape(node: &str, t_ms: i64, node_cores: f64, container_cores: f64, pods: &[PodSpec<'_>]) -> NodeScrape {
    let cpu = |cores: f64| (cores * t_ms as f64 * 1_000_000.0) as u64 + 1_000_000_000_000;
    NodeScrape {
        node: node.into(),
        scraped_at_ms: T0 + t_ms + 20,
        node_usage: Some(Point { timestamp_ms: T0 + t_ms, cpu_usage_ns: cpu(node_cores), memory_working_set_bytes: 8 << 30, swap_usage_bytes: None }),
        pods: pods
            .iter()
            .map(|(ns, name, containers)| PodSamples {
                namespace: (*ns).into(),
                name: (*name).into(),
                containers: containers
                    .iter()
                    .map(|c| ContainerSample {
                        name: (*c).into(),
                        start_time_ms: T0 - 3_600_000,
                        usage: Point { timestamp_ms: T0 + t_ms - 5, cpu_usage_ns: cpu(container_cores), memory_working_set_bytes: 50 << 20, swap_usage_bytes: None },
                    })
                    .collect(),
            })
            .collect(),
    }
}

// ---------------------------------------------------------------------------------------------
// PKI, a running frontend, and an HTTPS client
// ---------------------------------------------------------------------------------------------

/// A new test CA named `name` (the project's one PKI, `shardmetrics_plumbing::pki`).
pub fn new_ca(name: &str) -> Ca {
    Ca::new(name).expect("test CA")
}

/// A frontend replica running in this process on 127.0.0.1:0.
pub struct Frontend {
    /// The secure port.
    pub secure: SocketAddr,
    /// The admin port.
    pub admin: SocketAddr,
    /// Trusts the serving certificate and presents the front-proxy certificate.
    pub proxy_client: Arc<rustls::ClientConfig>,
    /// Trusts the serving certificate, presents no certificate.
    pub anonymous_client: Arc<rustls::ClientConfig>,
    /// Trusts the serving certificate, presents a certificate from an unknown CA.
    pub stranger_client: Arc<rustls::ClientConfig>,
    stop: Option<oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<()>>,
    _dir: tempfile::TempDir,
}

/// Knobs of [`Frontend::start`].
pub struct FrontendOptions {
    /// `--max-requests-inflight`.
    pub max_inflight: usize,
    /// The store's settings.
    pub store: StoreConfig,
    /// Wall clock.
    pub clock: shardmetrics_plumbing::clock::SharedClock,
    /// Request size and connection time limits.
    pub limits: shardmetrics_frontend::server::ServerLimits,
    /// `--grpc-max-message-bytes`.
    pub grpc_max_message_bytes: usize,
}

impl Default for FrontendOptions {
    fn default() -> Self {
        FrontendOptions {
            max_inflight: 400,
            store: StoreConfig { resolution_ms: 15_000, max_staleness_ms: 45_000 },
            clock: shardmetrics_plumbing::clock::ManualClock::new(T0 + 40_000),
            limits: shardmetrics_frontend::server::ServerLimits::default(),
            grpc_max_message_bytes: shardmetrics_frontend::upstream::MAX_MESSAGE_BYTES,
        }
    }
}

fn client_config(server_ca: &Ca, identity: Option<&CertKey>) -> Arc<rustls::ClientConfig> {
    let mut c = pki::client_config(Some(&server_ca.root_store()), identity).expect("client config");
    c.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Arc::new(c)
}

impl Frontend {
    /// Starts a frontend subscribed to `shards`, authenticating front-proxy certificates (CN
    /// `front-proxy-client`) from its own CA, without an API server.
    pub async fn start(shards: &[&FakeShard], options: FrontendOptions) -> Frontend {
        let dir = tempfile::tempdir().expect("tempdir");
        let serving_ca = new_ca("serving-ca");
        let serving = serving_ca.server_cert("localhost", &[]).expect("serving certificate");
        let proxy_ca = new_ca("front-proxy-ca");
        let proxy = proxy_ca.client_cert("front-proxy-client", &[]).expect("client certificate");
        let stranger = new_ca("stranger-ca").client_cert("front-proxy-client", &[]).expect("client certificate");
        let (cert_file, key_file) = serving.write_pem(dir.path(), "tls").expect("write");
        let proxy_ca_file = proxy_ca.write_pem(dir.path(), "front-proxy-ca").expect("write");
        let secure = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let admin = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let (secure_addr, admin_addr) = (secure.local_addr().expect("addr"), admin.local_addr().expect("addr"));
        let config = Config {
            store: options.store,
            upstream: UpstreamConfig {
                replica_name: "frontend-test".into(),
                backoff_initial: Duration::from_millis(20),
                backoff_max: Duration::from_millis(200),
                max_message_bytes: options.grpc_max_message_bytes,
                ..UpstreamConfig::default()
            },
            shards: ShardSource::Static(shards.iter().map(|s| s.member()).collect()),
            auth: AuthConfig {
                requestheader_client_ca_file: Some(proxy_ca_file),
                requestheader: RequestHeaderSettings {
                    allowed_names: vec!["front-proxy-client".into()],
                    ..RequestHeaderSettings::default()
                },
                ..AuthConfig::default()
            },
            tls: TlsConfig { cert_file: Some(cert_file), key_file: Some(key_file), ..TlsConfig::default() },
            max_requests_inflight: options.max_inflight,
            limits: options.limits,
            shutdown_grace: Duration::from_secs(5),
            sweep_interval: Duration::from_millis(200),
        };
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(async move {
            let handles = Handles { kube: None, clock: options.clock };
            shardmetrics_frontend::run(config, handles, Listeners { secure, admin: Some(admin) }, async {
                let _ = stopped.await;
            })
            .await
            .expect("frontend runs");
        });
        Frontend {
            secure: secure_addr,
            admin: admin_addr,
            proxy_client: client_config(&serving_ca, Some(&proxy)),
            anonymous_client: client_config(&serving_ca, None),
            stranger_client: client_config(&serving_ca, Some(&stranger)),
            stop: Some(stop),
            task: Some(task),
            _dir: dir,
        }
    }

    /// Waits until `/readyz` on the secure port answers 200.
    pub async fn wait_ready(&self) {
        for _ in 0..500 {
            if let Ok(r) = get(self.secure, &self.anonymous_client, Version::Http1, "/readyz", &[]).await
                && r.status == StatusCode::OK
            {
                return;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        panic!("frontend never became ready");
    }

    /// Shuts the frontend down and waits for it.
    pub async fn stop(mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        if let Some(t) = self.task.take() {
            tokio::time::timeout(Duration::from_secs(10), t).await.expect("stops in time").expect("no panic");
        }
    }
}

/// HTTP version of a test request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Version {
    /// HTTP/1.1 (ALPN http/1.1).
    Http1,
    /// HTTP/2 (ALPN h2).
    Http2,
}

/// A response read whole.
pub struct Reply {
    /// Status code.
    pub status: StatusCode,
    /// Headers.
    pub headers: HeaderMap,
    /// Body.
    pub body: Bytes,
}

impl Reply {
    /// The body as JSON.
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|e| panic!("not JSON ({e}): {}", String::from_utf8_lossy(&self.body)))
    }

    /// The Content-Type.
    pub fn content_type(&self) -> &str {
        self.headers.get(http::header::CONTENT_TYPE).and_then(|v| v.to_str().ok()).unwrap_or("")
    }
}

async fn tls_connect(addr: SocketAddr, config: &Arc<rustls::ClientConfig>, version: Version) -> anyhow::Result<tokio_rustls::client::TlsStream<tokio::net::TcpStream>> {
    let mut config = (**config).clone();
    config.alpn_protocols = vec![match version {
        Version::Http1 => b"http/1.1".to_vec(),
        Version::Http2 => b"h2".to_vec(),
    }];
    let tcp = tokio::net::TcpStream::connect(addr).await?;
    Ok(tokio_rustls::TlsConnector::from(Arc::new(config)).connect(ServerName::try_from("localhost")?, tcp).await?)
}

fn request(addr: SocketAddr, path: &str, headers: &[(&str, &str)]) -> Request<Empty<Bytes>> {
    let mut b = Request::get(format!("https://localhost:{}{path}", addr.port()));
    for (k, v) in headers {
        b = b.header(*k, *v);
    }
    b.body(Empty::new()).expect("request")
}

/// A response whose body has not been read, and the connection task keeping it open.
pub struct Pending {
    /// The response head and unread body.
    pub response: http::Response<hyper::body::Incoming>,
    /// Drives the connection.
    pub conn: tokio::task::JoinHandle<()>,
}

/// Sends one GET on a fresh connection and returns before reading the body. HTTP/2 connections
/// use a 64 KiB stream window, so an unread large body stays pending on the server.
pub async fn send(addr: SocketAddr, config: &Arc<rustls::ClientConfig>, version: Version, path: &str, headers: &[(&str, &str)]) -> anyhow::Result<Pending> {
    let tls = tls_connect(addr, config, version).await?;
    let io = TokioIo::new(tls);
    let req = request(addr, path, headers);
    match version {
        Version::Http1 => {
            let (mut sender, conn) = hyper::client::conn::http1::handshake(io).await?;
            let conn = tokio::spawn(async move {
                let _ = conn.await;
            });
            Ok(Pending { response: sender.send_request(req).await?, conn })
        }
        Version::Http2 => {
            let (mut sender, conn) = hyper::client::conn::http2::Builder::new(TokioExecutor::new())
                .initial_stream_window_size(65_535)
                .initial_connection_window_size(65_535)
                .adaptive_window(false)
                .handshake(io)
                .await?;
            let conn = tokio::spawn(async move {
                let _ = conn.await;
            });
            Ok(Pending { response: sender.send_request(req).await?, conn })
        }
    }
}

/// One GET over a fresh TLS connection, body read whole.
pub async fn get(addr: SocketAddr, config: &Arc<rustls::ClientConfig>, version: Version, path: &str, headers: &[(&str, &str)]) -> anyhow::Result<Reply> {
    let p = send(addr, config, version, path, headers).await?;
    let status = p.response.status();
    let headers = p.response.headers().clone();
    let body = p.response.into_body().collect().await?.to_bytes();
    p.conn.abort();
    Ok(Reply { status, headers, body })
}

/// Headers the aggregation layer adds for a cluster admin.
pub const ADMIN: &[(&str, &str)] = &[("X-Remote-User", "admin"), ("X-Remote-Group", "system:masters")];

/// A plain-HTTP GET on the admin port.
pub async fn admin_get(addr: SocketAddr, path: &str) -> anyhow::Result<Reply> {
    let tcp = tokio::net::TcpStream::connect(addr).await?;
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tcp)).await?;
    let conn = tokio::spawn(async move {
        let _ = conn.await;
    });
    let req = Request::get(format!("http://{addr}{path}")).body(Empty::<Bytes>::new())?;
    let r = sender.send_request(req).await?;
    let status = r.status();
    let headers = r.headers().clone();
    let body = r.into_body().collect().await?.to_bytes();
    conn.abort();
    Ok(Reply { status, headers, body })
}
