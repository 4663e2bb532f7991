//! Kubelet server children: processes that hold the kubelets' listeners and connections for a
//! [`KubeletFleet`](super::KubeletFleet) whose kubelets one process cannot hold.
//!
//! Every simulated kubelet is a loopback listener plus the connections its clients keep open
//! (the scrapers' keep-alive connection, a floor's, metrics-server replicas'): one open file
//! each. A process's open-files limit caps how many kubelets it can serve, and where the hard
//! limit cannot be raised (a container without `CAP_SYS_RESOURCE`) only more processes help.
//!
//! A kubelet server child (started as `<program> <args>`, e.g. `shardmetrics-loadtest
//! kubelet-server`) only holds sockets: for each kubelet the parent asks for, it binds a
//! listener on `127.0.0.1:0`, terminates TLS (the fleet's serving certificate, client
//! certificates verified against the fleet's client CA) and HTTP/1.1 or h2, and forwards every
//! request over one h2 connection to the parent's forwarding endpoint on `127.0.0.1`, naming the
//! node, the listener's port and whether a verified client certificate was presented. The parent
//! answers exactly as an in-process kubelet would ([`super::handle`]): the usage model, faults,
//! token checks, scrape counters and the request log stay in the parent, so tests and reports
//! read them the same way whichever process accepted the connection. The response (status,
//! headers, body) streams back as it comes: a fault that never answers or breaks the body
//! mid-way does the same to the scraper's connection.
//!
//! Control runs over the child's stdin and stdout, one JSON object per line ([`ToServer`],
//! [`FromServer`]): first `hello` (the certificate, the client CA, the endpoint and a secret the
//! child sends before its h2 preface, so nothing else on the machine can pose as a child), then
//! `open`/`close` per kubelet. The child exits when its stdin closes (the parent closed it, or
//! the parent died: the pipe closes with it) or when its connection to the parent ends; the
//! parent also kills it when the last handle to it goes (the fleet and every kubelet it serves
//! hold one).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::Stdio;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use http::{HeaderValue, Request, Response, StatusCode, header};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, oneshot, watch};

use super::{FleetConfig, KubeletError, Kubelets, handle};
use crate::httputil::{Body, BoxError, response, stopped};

/// Names of the children are this prefix plus their index (`kubelets-0`); a report groups them
/// as the `kubelets` component.
pub const SERVER_NAME_PREFIX: &str = "kubelets-";

/// Header naming the node a forwarded request is for.
const NODE_HEADER: &str = "x-shardmetrics-sim-node";
/// Header naming the port of the listener that accepted a forwarded request.
const PORT_HEADER: &str = "x-shardmetrics-sim-port";
/// Header present (`1`) when the forwarded request's connection presented a client
/// certificate the child verified against the fleet's client CA.
const CLIENT_CERT_HEADER: &str = "x-shardmetrics-sim-client-cert";

/// How long a child may take to connect back, and to answer an `open`.
const ANSWER_TIMEOUT: Duration = Duration::from_secs(30);
/// Command lines queued for one child's stdin (~50 bytes each). Overflow: an `open` waits for
/// room (within its [`ANSWER_TIMEOUT`]); a `close` cannot wait (it runs when a kubelet is
/// dropped), so a full queue drops it with a warning and the listener stays open in the child
/// until the child exits, answering 503 `kubelet stopped` (the parent matches node and port).
const COMMAND_QUEUE: usize = 4096;
/// Longest line accepted as the secret on the forwarding endpoint.
const MAX_SECRET_LINE: u64 = 256;
/// h2 flow-control windows of the forwarding connection (bodies are ~35 KB at 30 pods; the
/// oversized-body fault streams megabytes).
const STREAM_WINDOW: u32 = 1 << 20;
/// See [`STREAM_WINDOW`].
const CONNECTION_WINDOW: u32 = 16 << 20;
/// Concurrent forwarded requests per child (a request to a kubelet faulted to never answer
/// holds one until its client gives up).
const MAX_STREAMS: u32 = 1 << 20;
/// Streams a child may reset (its client gave up or closed the connection) before this process
/// took them up, and streams this process may reset, before h2 calls it an attack and closes
/// the connection (h2's defaults, 20 and 1024, guard servers facing strangers; the child is
/// ours, and a 10 000-node start-up kept this process busy long enough for more than 20 of the
/// scrapers' first requests to be cancelled before it took them up).
const MAX_RESET_STREAMS: usize = 1 << 20;

/// How to start one kubelet server child.
#[derive(Debug, Clone)]
pub struct KubeletServerCommand {
    /// The executable (the loadtest binary, whose `kubelet-server` subcommand calls [`serve`]).
    pub program: PathBuf,
    /// Its arguments (`["kubelet-server"]`).
    pub args: Vec<String>,
    /// Directory of the children's logs (`kubelets-<i>.log`, their stderr); `None`: inherited.
    pub log_dir: Option<PathBuf>,
}

/// A message from the parent to a child, one JSON object per line on the child's stdin.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ToServer {
    /// The first line: what every kubelet presents and where requests go.
    Hello {
        /// The parent's forwarding endpoint (`127.0.0.1:<port>`).
        backend: String,
        /// Sent as the first line of the connection to `backend`.
        secret: String,
        /// The kubelets' serving certificate, PEM.
        cert_pem: String,
        /// Its private key, PKCS#8 PEM.
        key_pem: String,
        /// Client certificates signed by this CA (PEM) are verified and reported.
        client_ca_pem: Option<String>,
    },
    /// Bind a listener for `node`; answered by [`FromServer::Opened`] or [`FromServer::Failed`]
    /// with the same `id`.
    Open {
        /// Matches the answer.
        id: u64,
        /// The node.
        node: String,
    },
    /// Close the listener on `port` and its open connections (no answer). By port, not by
    /// node: a node opened twice (a start that lost a race) has two listeners, and closing the
    /// loser's must leave the winner's.
    Close {
        /// The node, for the log.
        node: String,
        /// The port its [`FromServer::Opened`] answered.
        port: u16,
    },
}

/// A message from a child to the parent, one JSON object per line on the child's stdout.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FromServer {
    /// Connected to the forwarding endpoint; `open`s are served from now on.
    Ready,
    /// The listener of an `open` is bound.
    Opened {
        /// The `open`'s id.
        id: u64,
        /// Its port on `127.0.0.1`.
        port: u16,
    },
    /// An `open` failed (binding: most likely the child's open files are exhausted).
    Failed {
        /// The `open`'s id.
        id: u64,
        /// Why.
        error: String,
    },
}

/// Why a kubelet server child stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    /// Reading stdin, writing stdout, or connecting to the parent failed.
    #[error("{what}: {source}")]
    Io {
        /// What was being done.
        what: &'static str,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The parent sent something that is not the protocol.
    #[error("protocol: {0}")]
    Protocol(String),
    /// The serving certificate, key or client CA is unusable.
    #[error("TLS: {0}")]
    Tls(String),
    /// The h2 connection to the parent failed or ended.
    #[error("connection to the parent: {0}")]
    Backend(String),
}

fn io_err(what: &'static str) -> impl FnOnce(std::io::Error) -> ServerError {
    move |source| ServerError::Io { what, source }
}

/// What one link to a child is made of: its stdin and stdout, and the process.
pub(crate) struct ServerLink {
    name: String,
    input: Box<dyn AsyncWrite + Send + Unpin>,
    output: Box<dyn AsyncRead + Send + Unpin>,
    child: Option<tokio::process::Child>,
}

/// Starts child `index` of `command` with piped stdin and stdout (and nothing from this
/// process's `SHARDMETRICS_*` environment).
pub(crate) fn spawn(command: &KubeletServerCommand, index: usize) -> Result<ServerLink, KubeletError> {
    let name = format!("{SERVER_NAME_PREFIX}{index}");
    let fail = |message: String| KubeletError::Server { server: name.clone(), message };
    let mut cmd = tokio::process::Command::new(&command.program);
    cmd.args(&command.args).stdin(Stdio::piped()).stdout(Stdio::piped()).kill_on_drop(true);
    match &command.log_dir {
        Some(dir) => {
            let path = dir.join(format!("{name}.log"));
            let log = std::fs::OpenOptions::new().create(true).append(true).open(&path).map_err(|e| fail(format!("opening {}: {e}", path.display())))?;
            cmd.stderr(log);
        }
        None => {
            cmd.stderr(Stdio::inherit());
        }
    }
    for key in shardmetrics_plumbing::process::shardmetrics_env_vars() {
        cmd.env_remove(key);
    }
    let mut child = cmd.spawn().map_err(|e| fail(format!("starting {}: {e}", command.program.display())))?;
    let (Some(stdin), Some(stdout)) = (child.stdin.take(), child.stdout.take()) else {
        return Err(fail("no stdin or stdout pipe".into()));
    };
    Ok(ServerLink { name, input: Box::new(stdin), output: Box::new(stdout), child: Some(child) })
}

/// A link to a child running [`serve`] on a task of this process instead (unit tests: the same
/// protocol and forwarding without a binary to start).
#[cfg(test)]
pub(crate) fn in_process(index: usize) -> ServerLink {
    let (parent_in, child_in) = tokio::io::duplex(64 << 10);
    let (child_out, parent_out) = tokio::io::duplex(64 << 10);
    tokio::spawn(async move {
        if let Err(e) = serve(child_in, child_out).await {
            tracing::warn!(error = %e, "in-process kubelet server stopped");
        }
    });
    ServerLink { name: format!("{SERVER_NAME_PREFIX}{index}"), input: Box::new(parent_in), output: Box::new(parent_out), child: None }
}

/// What the parent's reader of a child's stdout shares with the fleet.
#[derive(Default)]
struct Replies {
    pending: Mutex<HashMap<u64, oneshot::Sender<Result<u16, String>>>>,
    ready: Mutex<Option<oneshot::Sender<()>>>,
    /// False once the child's stdout closed (it exited or broke the protocol).
    alive: AtomicBool,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// One kubelet server child as the fleet sees it.
pub struct ServerHandle {
    name: String,
    pid: Option<u32>,
    /// Lines to its stdin; taken (stdin closed) to make it exit.
    commands: Mutex<Option<mpsc::Sender<String>>>,
    replies: Arc<Replies>,
    next_id: AtomicU64,
    /// Kubelets it holds now.
    kubelets: AtomicUsize,
    child: tokio::sync::Mutex<Option<tokio::process::Child>>,
}

impl std::fmt::Debug for ServerHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServerHandle").field("name", &self.name).field("pid", &self.pid).finish_non_exhaustive()
    }
}

impl ServerHandle {
    /// `kubelets-<i>`.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Queues a line without waiting; false if the child is stopped or the queue is full.
    fn try_send(&self, message: &ToServer) -> bool {
        let Some(line) = command_line(message) else { return false };
        let Some(tx) = lock(&self.commands).clone() else { return false };
        match tx.try_send(line) {
            Ok(()) => true,
            Err(mpsc::error::TrySendError::Full(_)) => {
                tracing::warn!(server = %self.name, capacity = COMMAND_QUEUE, "command queue full; dropped a command");
                false
            }
            Err(mpsc::error::TrySendError::Closed(_)) => false,
        }
    }

    fn fail(&self, message: impl Into<String>) -> KubeletError {
        KubeletError::Server { server: self.name.clone(), message: message.into() }
    }

    /// Binds a listener for `node` in the child; returns its port.
    async fn open(&self, node: &str) -> Result<u16, KubeletError> {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = oneshot::channel();
        lock(&self.replies.pending).insert(id, tx);
        // The reader clears the waiters when the child exits: one inserted after that must not
        // wait for an answer that cannot come.
        if !self.replies.alive.load(Ordering::Acquire) {
            lock(&self.replies.pending).remove(&id);
            return Err(self.fail("exited"));
        }
        let (line, commands) = (command_line(&ToServer::Open { id, node: node.to_owned() }), lock(&self.commands).clone());
        let (Some(line), Some(commands)) = (line, commands) else {
            lock(&self.replies.pending).remove(&id);
            return Err(self.fail("stopped"));
        };
        // Waits for room in the queue, then for the answer, within one timeout; the sender is
        // dropped once the line is queued so that closing stdin is not held up.
        let answer = async move {
            commands.send(line).await.map_err(|_| "stopped")?;
            drop(commands);
            rx.await.map_err(|_| "exited")
        };
        match tokio::time::timeout(ANSWER_TIMEOUT, answer).await {
            Ok(Ok(Ok(port))) => {
                self.kubelets.fetch_add(1, Ordering::Relaxed);
                Ok(port)
            }
            Ok(Ok(Err(e))) => Err(self.fail(format!("binding a listener for node {node:?}: {e}"))),
            Ok(Err(why)) => {
                lock(&self.replies.pending).remove(&id);
                Err(self.fail(why))
            }
            Err(_) => {
                lock(&self.replies.pending).remove(&id);
                Err(self.fail(format!("no answer to opening node {node:?} within {ANSWER_TIMEOUT:?}")))
            }
        }
    }

    /// Closes `node`'s listener on `port` and its connections in the child (nothing if the
    /// child is gone, or its command queue is full: see [`COMMAND_QUEUE`]).
    pub(crate) fn close(&self, node: &str, port: u16) {
        if self.try_send(&ToServer::Close { node: node.to_owned(), port }) {
            self.kubelets.fetch_sub(1, Ordering::Relaxed);
        }
    }

    /// Closes its stdin: the child stops serving and exits.
    fn close_stdin(&self) {
        lock(&self.commands).take();
    }

    /// Waits until the child exited, at most `grace` after [`Self::close_stdin`]; kills it then.
    async fn wait_exited(&self, grace: Duration) {
        self.close_stdin();
        let Some(mut child) = self.child.lock().await.take() else { return };
        if tokio::time::timeout(grace, child.wait()).await.is_err() {
            tracing::warn!(server = %self.name, "kubelet server did not exit after its stdin closed; killing it");
            let _ = child.start_kill();
            let _ = child.wait().await;
        }
    }
}

impl Drop for ServerHandle {
    fn drop(&mut self) {
        self.close_stdin();
        if let Some(child) = self.child.get_mut().as_mut() {
            let _ = child.start_kill();
        }
    }
}

/// The children of one fleet and the forwarding endpoint they send requests to.
pub(crate) struct Servers {
    handles: Vec<Arc<ServerHandle>>,
    /// Stops the forwarding endpoint (and its connections) when set or dropped.
    _endpoint: watch::Sender<bool>,
}

impl Servers {
    /// Starts the forwarding endpoint, says hello to every linked child and waits until each
    /// one is connected.
    pub(crate) async fn start(config: &FleetConfig, kubelets: Kubelets, links: Vec<ServerLink>) -> Result<Servers, KubeletError> {
        let endpoint_error = |e: std::io::Error| KubeletError::Server { server: "forwarding endpoint".into(), message: e.to_string() };
        let listener = TcpListener::bind(("127.0.0.1", 0)).await.map_err(endpoint_error)?;
        let backend = listener.local_addr().map_err(endpoint_error)?;
        let secret = new_secret()?;
        let (endpoint, endpoint_rx) = watch::channel(false);
        tokio::spawn(run_endpoint(listener, secret.clone(), kubelets, endpoint_rx));
        let hello = ToServer::Hello {
            backend: backend.to_string(),
            secret,
            cert_pem: config.serving_cert.cert_pem.clone(),
            key_pem: config.serving_cert.key_pem.clone(),
            client_ca_pem: config.client_ca.as_ref().map(|ca| ca.cert_pem().to_owned()),
        };
        let mut handles = Vec::new();
        let mut waiting = Vec::new();
        for link in links {
            let (handle, ready) = attach(link);
            // The first line of an empty queue: always room.
            if !handle.try_send(&hello) {
                return Err(handle.fail("could not send hello"));
            }
            handles.push(handle);
            waiting.push(ready);
        }
        let servers = Servers { handles, _endpoint: endpoint };
        for (handle, ready) in servers.handles.iter().zip(waiting) {
            match tokio::time::timeout(ANSWER_TIMEOUT, ready).await {
                Ok(Ok(())) => {}
                Ok(Err(_)) => return Err(handle.fail("exited before it was ready (see its log)")),
                Err(_) => return Err(handle.fail(format!("not ready within {ANSWER_TIMEOUT:?}"))),
            }
        }
        Ok(servers)
    }

    /// Opens a listener for `node` in the live child holding the fewest kubelets.
    pub(crate) async fn open(&self, node: &str) -> Result<(Arc<ServerHandle>, u16), KubeletError> {
        let server = self
            .handles
            .iter()
            .filter(|h| h.replies.alive.load(Ordering::Relaxed))
            .min_by_key(|h| h.kubelets.load(Ordering::Relaxed))
            .ok_or_else(|| KubeletError::Server { server: SERVER_NAME_PREFIX.trim_end_matches('-').into(), message: "every kubelet server exited".into() })?;
        let port = server.open(node).await?;
        Ok((server.clone(), port))
    }

    /// (name, pid) of every child started as a process.
    pub(crate) fn pids(&self) -> Vec<(String, u32)> {
        self.handles.iter().filter_map(|h| h.pid.map(|pid| (h.name.clone(), pid))).collect()
    }

    /// A child that exited, with how (`None` while all run).
    pub(crate) fn exited(&self) -> Option<(String, std::process::ExitStatus)> {
        self.handles.iter().find_map(|h| {
            let mut child = h.child.try_lock().ok()?;
            let status = child.as_mut()?.try_wait().ok()??;
            Some((h.name.clone(), status))
        })
    }

    /// Closes every child's stdin.
    pub(crate) fn close_all(&self) {
        for h in &self.handles {
            h.close_stdin();
        }
    }

    /// Waits until every child exited (see [`ServerHandle::wait_exited`]).
    pub(crate) async fn wait_exited(&self, grace: Duration) {
        futures::future::join_all(self.handles.iter().map(|h| h.wait_exited(grace))).await;
    }
}

/// Starts the writer and reader of a link; returns the handle and what resolves on `ready`.
fn attach(link: ServerLink) -> (Arc<ServerHandle>, oneshot::Receiver<()>) {
    let (tx, mut rx) = mpsc::channel::<String>(COMMAND_QUEUE);
    let mut input = link.input;
    let name = link.name.clone();
    tokio::spawn(async move {
        while let Some(line) = rx.recv().await {
            if let Err(e) = input.write_all(line.as_bytes()).await.and(input.flush().await) {
                tracing::warn!(server = %name, error = %e, "writing to a kubelet server failed");
                break;
            }
        }
        let _ = input.shutdown().await;
    });
    // An answer to an open whose caller gave up waiting closes the listener it made; weak, so
    // that the reader does not keep the child's stdin open.
    let late_closer = tx.downgrade();
    let (ready_tx, ready) = oneshot::channel();
    let replies = Arc::new(Replies { ready: Mutex::new(Some(ready_tx)), alive: AtomicBool::new(true), ..Default::default() });
    let (reader, name) = (replies.clone(), link.name.clone());
    let output = link.output;
    tokio::spawn(async move {
        let mut lines = BufReader::new(output).lines();
        loop {
            match lines.next_line().await {
                Ok(Some(line)) => match serde_json::from_str::<FromServer>(&line) {
                    Ok(FromServer::Ready) => {
                        if let Some(tx) = lock(&reader.ready).take() {
                            let _ = tx.send(());
                        }
                    }
                    Ok(FromServer::Opened { id, port }) => {
                        let waiter = lock(&reader.pending).remove(&id);
                        match waiter {
                            Some(tx) => {
                                let _ = tx.send(Ok(port));
                            }
                            None => {
                                tracing::warn!(server = %name, port, "a listener opened after its caller gave up; closing it");
                                // Never waits: the reader must keep draining the child's stdout.
                                let close = command_line(&ToServer::Close { node: String::new(), port });
                                if let (Some(closer), Some(line)) = (late_closer.upgrade(), close)
                                    && closer.try_send(line).is_err()
                                {
                                    tracing::warn!(server = %name, port, "command queue full; the late listener stays open until the child exits");
                                }
                            }
                        }
                    }
                    Ok(FromServer::Failed { id, error }) => {
                        if let Some(tx) = lock(&reader.pending).remove(&id) {
                            let _ = tx.send(Err(error));
                        }
                    }
                    Err(e) => tracing::warn!(server = %name, error = %e, line, "a kubelet server wrote something that is not the protocol"),
                },
                Ok(None) => break,
                Err(e) => {
                    tracing::warn!(server = %name, error = %e, "reading from a kubelet server failed");
                    break;
                }
            }
        }
        reader.alive.store(false, Ordering::Release);
        // Whoever still waits learns that it exited.
        lock(&reader.pending).clear();
        lock(&reader.ready).take();
    });
    let pid = link.child.as_ref().and_then(tokio::process::Child::id);
    let handle = Arc::new(ServerHandle {
        name: link.name,
        pid,
        commands: Mutex::new(Some(tx)),
        replies,
        next_id: AtomicU64::new(0),
        kubelets: AtomicUsize::new(0),
        child: tokio::sync::Mutex::new(link.child),
    });
    (handle, ready)
}

/// `message` as one line of the control protocol.
fn command_line(message: &ToServer) -> Option<String> {
    serde_json::to_string(message).ok().map(|line| line + "\n")
}

/// 32 hex characters from the TLS provider's secure random source.
fn new_secret() -> Result<String, KubeletError> {
    let mut bytes = [0u8; 16];
    shardmetrics_plumbing::pki::provider()
        .secure_random
        .fill(&mut bytes)
        .map_err(|_| KubeletError::Server { server: "forwarding endpoint".into(), message: "no secure random source".into() })?;
    Ok(bytes.iter().map(|b| format!("{b:02x}")).collect())
}

/// The parent's forwarding endpoint: accepts the children's connections (each first sends the
/// secret line), serves h2 on them, and answers each request as the kubelet it names.
async fn run_endpoint(listener: TcpListener, secret: String, kubelets: Kubelets, stop: watch::Receiver<bool>) {
    let secret: Arc<str> = secret.into();
    crate::httputil::accept_each(listener, stop, "accepting a kubelet server's connection failed", move |stream, remote| {
        let (secret, kubelets) = (secret.clone(), kubelets.clone());
        async move {
            let mut stream = BufReader::new(stream);
            let mut line = String::new();
            let read = tokio::time::timeout(ANSWER_TIMEOUT, (&mut stream).take(MAX_SECRET_LINE).read_line(&mut line)).await;
            if !matches!(read, Ok(Ok(_))) || line.trim_end() != &*secret {
                tracing::warn!(%remote, "refused a connection to the kubelet forwarding endpoint: no valid secret");
                return;
            }
            let service = hyper::service::service_fn(move |req| {
                let kubelets = kubelets.clone();
                async move { Ok::<_, std::convert::Infallible>(forwarded(&kubelets, req).await) }
            });
            let result = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
                .max_concurrent_streams(MAX_STREAMS)
                .max_pending_accept_reset_streams(MAX_RESET_STREAMS)
                .max_local_error_reset_streams(MAX_RESET_STREAMS)
                .initial_stream_window_size(STREAM_WINDOW)
                .initial_connection_window_size(CONNECTION_WINDOW)
                .serve_connection(TokioIo::new(stream), service)
                .await;
            if let Err(e) = result {
                tracing::debug!(error = %e, %remote, "a kubelet server's connection ended with an error");
            }
        }
    })
    .await;
}

/// Answers a forwarded request as the kubelet it names (503 when that kubelet is gone or now
/// listens elsewhere).
async fn forwarded(kubelets: &Kubelets, req: Request<Incoming>) -> Response<Body> {
    let header = |name: &str| req.headers().get(name).and_then(|v| v.to_str().ok());
    let port = header(PORT_HEADER).and_then(|p| p.parse::<u16>().ok());
    let client_cert = header(CLIENT_CERT_HEADER) == Some("1");
    let kubelet = header(NODE_HEADER).and_then(|node| {
        let map = kubelets.read().unwrap_or_else(|p| p.into_inner());
        map.get(node).filter(|k| Some(k.port()) == port).cloned()
    });
    match kubelet {
        Some(k) => handle(k, client_cert, req).await,
        None => response(StatusCode::SERVICE_UNAVAILABLE, "text/plain; charset=utf-8", "kubelet stopped\n"),
    }
}

/// The TLS configuration every listener of a child presents: the fleet's certificate, client
/// certificates verified against its client CA when offered (not required), ALPN h2 and
/// http/1.1 (what [`shardmetrics_plumbing::pki::server_config`] builds in the parent).
fn server_tls(cert_pem: &str, key_pem: &str, client_ca_pem: Option<&str>) -> Result<rustls::ServerConfig, ServerError> {
    let tls = |e: &dyn std::fmt::Display| ServerError::Tls(e.to_string());
    let certs = CertificateDer::pem_slice_iter(cert_pem.as_bytes()).collect::<Result<Vec<_>, _>>().map_err(|e| tls(&e))?;
    let key = PrivateKeyDer::from_pem_slice(key_pem.as_bytes()).map_err(|e| tls(&e))?;
    let provider = shardmetrics_plumbing::pki::provider();
    let builder = rustls::ServerConfig::builder_with_provider(provider.clone()).with_safe_default_protocol_versions().map_err(|e| tls(&e))?;
    let builder = match client_ca_pem {
        Some(pem) => {
            let mut roots = rustls::RootCertStore::empty();
            for cert in CertificateDer::pem_slice_iter(pem.as_bytes()) {
                roots.add(cert.map_err(|e| tls(&e))?).map_err(|e| tls(&e))?;
            }
            let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider)
                .allow_unauthenticated()
                .build()
                .map_err(|e| tls(&e))?;
            builder.with_client_cert_verifier(verifier)
        }
        None => builder.with_no_client_auth(),
    };
    let mut config = builder.with_single_cert(certs, key).map_err(|e| tls(&e))?;
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(config)
}

async fn write_line(output: &mut (impl AsyncWrite + Unpin), message: &FromServer) -> Result<(), ServerError> {
    let line = serde_json::to_string(message).map_err(|e| ServerError::Protocol(e.to_string()))? + "\n";
    output.write_all(line.as_bytes()).await.map_err(io_err("writing to stdout"))?;
    output.flush().await.map_err(io_err("writing to stdout"))
}

type Sender = hyper::client::conn::http2::SendRequest<Incoming>;

/// The child's work (`shardmetrics-loadtest kubelet-server` runs it on its stdin and stdout):
/// read the hello, connect to the parent, then open and close listeners as told until `input`
/// ends (Ok) or the connection to the parent does (an error). Every listener and connection is
/// closed on return.
pub async fn serve(input: impl AsyncRead + Unpin + Send + 'static, mut output: impl AsyncWrite + Unpin + Send + 'static) -> Result<(), ServerError> {
    let mut lines = BufReader::new(input).lines();
    let first = lines.next_line().await.map_err(io_err("reading stdin"))?.ok_or_else(|| ServerError::Protocol("stdin closed before the hello".into()))?;
    let Ok(ToServer::Hello { backend, secret, cert_pem, key_pem, client_ca_pem }) = serde_json::from_str::<ToServer>(&first) else {
        return Err(ServerError::Protocol("the first line is not a hello".into()));
    };
    let backend: SocketAddr = backend.parse().map_err(|e| ServerError::Protocol(format!("backend {backend:?}: {e}")))?;
    if !backend.ip().is_loopback() {
        return Err(ServerError::Protocol(format!("backend {backend} is not on loopback")));
    }
    let tls = Arc::new(server_tls(&cert_pem, &key_pem, client_ca_pem.as_deref())?);
    let mut stream = TcpStream::connect(backend).await.map_err(io_err("connecting to the parent"))?;
    let _ = stream.set_nodelay(true);
    stream.write_all(format!("{secret}\n").as_bytes()).await.map_err(io_err("connecting to the parent"))?;
    let (sender, conn) = hyper::client::conn::http2::Builder::new(TokioExecutor::new())
        .max_concurrent_reset_streams(MAX_RESET_STREAMS)
        .max_pending_accept_reset_streams(MAX_RESET_STREAMS)
        .max_local_error_reset_streams(MAX_RESET_STREAMS)
        .initial_stream_window_size(STREAM_WINDOW)
        .initial_connection_window_size(CONNECTION_WINDOW)
        .handshake::<_, Incoming>(TokioIo::new(stream))
        .await
        .map_err(|e| ServerError::Backend(e.to_string()))?;
    let (gone_tx, mut gone) = watch::channel(false);
    let conn_end = Arc::new(Mutex::new(String::from("closed")));
    let end = conn_end.clone();
    tokio::spawn(async move {
        if let Err(e) = conn.await {
            *lock(&end) = e.to_string();
        }
        let _ = gone_tx.send(true);
    });
    write_line(&mut output, &FromServer::Ready).await?;

    // By port: see `ToServer::Close`.
    let mut listeners: HashMap<u16, watch::Sender<bool>> = HashMap::new();
    let result = loop {
        let line = tokio::select! {
            line = lines.next_line() => line,
            () = stopped(&mut gone) => break Err(ServerError::Backend(lock(&conn_end).clone())),
        };
        let line = match line {
            Ok(Some(line)) => line,
            Ok(None) => break Ok(()),
            Err(e) => break Err(ServerError::Io { what: "reading stdin", source: e }),
        };
        match serde_json::from_str::<ToServer>(&line) {
            Ok(ToServer::Open { id, node }) => {
                let answer = match open(&tls, &sender, &node).await {
                    Ok((port, stop)) => {
                        if let Some(previous) = listeners.insert(port, stop) {
                            let _ = previous.send(true);
                        }
                        FromServer::Opened { id, port }
                    }
                    Err(e) => FromServer::Failed { id, error: e.to_string() },
                };
                if let Err(e) = write_line(&mut output, &answer).await {
                    break Err(e);
                }
            }
            Ok(ToServer::Close { node, port }) => {
                if let Some(stop) = listeners.remove(&port) {
                    let _ = stop.send(true);
                } else {
                    tracing::debug!(node, port, "close of a listener that is not open");
                }
            }
            Ok(ToServer::Hello { .. }) => tracing::warn!("a second hello ignored"),
            Err(e) => break Err(ServerError::Protocol(format!("{e}: {line:?}"))),
        }
    };
    for stop in listeners.into_values() {
        let _ = stop.send(true);
    }
    result
}

/// Binds a listener for `node` and serves it, forwarding every request; returns its port and
/// what stops it.
async fn open(tls: &Arc<rustls::ServerConfig>, sender: &Sender, node: &str) -> std::io::Result<(u16, watch::Sender<bool>)> {
    let listener = TcpListener::bind(("127.0.0.1", 0)).await?;
    let port = listener.local_addr()?.port();
    let node_value = HeaderValue::from_str(node).map_err(std::io::Error::other)?;
    let (stop, stop_rx) = watch::channel(false);
    let sender = sender.clone();
    tokio::spawn(crate::httputil::serve_tls(listener, tls.clone(), stop_rx, move |peer, req| {
        forward(sender.clone(), node_value.clone(), port, !peer.client_certs.is_empty(), req)
    }));
    Ok((port, stop))
}

/// Headers that are about one HTTP/1.1 connection and must not cross into h2.
const HOP_BY_HOP: [header::HeaderName; 5] = [header::CONNECTION, header::HOST, header::TRANSFER_ENCODING, header::UPGRADE, header::TE];

/// Sends `req` to the parent for the kubelet of `node` on `port` and streams its answer back.
async fn forward(mut sender: Sender, node: HeaderValue, port: u16, client_cert: bool, req: Request<Incoming>) -> Response<Body> {
    let (mut parts, body) = req.into_parts();
    let path = parts.uri.path_and_query().map_or("/", |p| p.as_str());
    let Ok(uri) = format!("http://kubelet{path}").parse::<http::Uri>() else {
        return response(StatusCode::BAD_REQUEST, "text/plain; charset=utf-8", "bad request path\n");
    };
    parts.uri = uri;
    parts.version = http::Version::HTTP_2;
    for h in &HOP_BY_HOP {
        parts.headers.remove(h);
    }
    for h in ["keep-alive", "proxy-connection", CLIENT_CERT_HEADER] {
        parts.headers.remove(h);
    }
    parts.headers.insert(NODE_HEADER, node);
    parts.headers.insert(PORT_HEADER, HeaderValue::from(port));
    if client_cert {
        parts.headers.insert(CLIENT_CERT_HEADER, HeaderValue::from_static("1"));
    }
    let unreachable = |e: &dyn std::fmt::Display| {
        tracing::warn!(error = %e, "forwarding a kubelet request to the parent failed");
        response(StatusCode::BAD_GATEWAY, "text/plain; charset=utf-8", "kubelet simulator unreachable\n")
    };
    if let Err(e) = sender.ready().await {
        return unreachable(&e);
    }
    match sender.send_request(Request::from_parts(parts, body)).await {
        Ok(resp) => resp.map(|b| b.map_err(|e| -> BoxError { Box::new(e) }).boxed()),
        Err(e) => unreachable(&e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kubelet::{ContainerUsage, Fault, KubeletFleet, fixed_tokens};
    use http_body_util::Empty;
    use shardmetrics_plumbing::pki::Ca;

    type Client = hyper_util::client::legacy::Client<hyper_rustls::HttpsConnector<hyper_util::client::legacy::connect::HttpConnector>, Empty<bytes::Bytes>>;

    fn client(ca: &Ca, cert: Option<&shardmetrics_plumbing::pki::CertKey>) -> Client {
        let tls = shardmetrics_plumbing::pki::client_config(Some(&ca.root_store()), cert).unwrap();
        let https = hyper_rustls::HttpsConnectorBuilder::new().with_tls_config(tls).https_only().enable_http1().build();
        hyper_util::client::legacy::Client::builder(TokioExecutor::new()).build(https)
    }

    async fn get(client: &Client, port: u16, token: Option<&str>) -> Result<(StatusCode, Result<String, String>), String> {
        let mut req = Request::get(format!("https://127.0.0.1:{port}/metrics/resource"));
        if let Some(t) = token {
            req = req.header("authorization", format!("Bearer {t}"));
        }
        let resp = client.request(req.body(Empty::new()).unwrap()).await.map_err(|e| e.to_string())?;
        let status = resp.status();
        let body = resp.into_body().collect().await.map(|b| String::from_utf8_lossy(&b.to_bytes()).into_owned()).map_err(|e| e.to_string());
        Ok((status, body))
    }

    async fn fleet(ca: &Arc<Ca>, servers: usize) -> KubeletFleet {
        let mut config = FleetConfig::new(ca, fixed_tokens(&["good"])).unwrap();
        config.client_ca = Some(ca.clone());
        let mut fleet = KubeletFleet::new(config).unwrap();
        let links = (0..servers).map(in_process).collect();
        fleet.servers = Some(Servers::start(&fleet.config, fleet.kubelets.clone(), links).await.unwrap());
        fleet
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn kubelets_in_server_children_answer_and_count_as_in_process_ones() {
        let ca = Arc::new(Ca::new("test-ca").unwrap());
        let fleet = fleet(&ca, 2).await;
        let mut kubelets = Vec::new();
        for i in 0..4 {
            let k = fleet.start(&format!("n{i}"), 100, 1 << 30).await.unwrap();
            k.upsert_pod("default", &format!("pod-{i}"), vec![(ContainerUsage::new("main", 200, 64 << 20), 0)]);
            kubelets.push(k);
        }
        // Spread over both children, the fewest first.
        let on: Vec<&str> = kubelets.iter().map(|k| k.server().unwrap()).collect();
        assert_eq!(on, ["kubelets-0", "kubelets-1", "kubelets-0", "kubelets-1"]);
        let c = client(&ca, None);
        for k in &kubelets {
            let (status, body) = get(&c, k.port(), Some("good")).await.unwrap();
            assert_eq!(status, 200);
            let body = body.unwrap();
            assert!(body.contains(&format!("pod=\"pod-{}\"", &k.node()[1..])), "{body}");
        }
        // Refusals come from the parent's token check; a client certificate signed by the CA
        // is accepted, as in process.
        assert_eq!(get(&c, kubelets[0].port(), Some("bad")).await.unwrap().0, 401);
        assert_eq!(get(&c, kubelets[0].port(), None).await.unwrap().0, 401);
        let cert = ca.client_cert("scraper", &[]).unwrap();
        assert_eq!(get(&client(&ca, Some(&cert)), kubelets[1].port(), None).await.unwrap().0, 200);
        // Counted and logged in the parent.
        assert_eq!(kubelets[0].scrapes(), 1);
        assert_eq!(kubelets[1].scrapes(), 2);
        assert_eq!(kubelets[0].stats.refused.load(Ordering::Relaxed), 2);
        assert_eq!(fleet.scrape_counts(0, i64::MAX, 1_000_000).requests, 5);
        assert_eq!(fleet.scrape_counts(0, i64::MAX, 1_000_000).duplicates, 1);

        // Faults act through the child: a 500, a body broken mid-way, no answer at all.
        kubelets[2].set_fault(Fault::Http500);
        assert_eq!(get(&c, kubelets[2].port(), Some("good")).await.unwrap().0, 500);
        kubelets[3].set_fault(Fault::Truncated);
        let (status, body) = get(&c, kubelets[3].port(), Some("good")).await.unwrap();
        assert_eq!(status, 200);
        assert!(body.is_err(), "a truncated body is an error at the client: {body:?}");
        kubelets[3].set_fault(Fault::Timeout);
        let silent = tokio::time::timeout(Duration::from_millis(500), get(&c, kubelets[3].port(), Some("good"))).await;
        assert!(silent.is_err(), "no answer");
        kubelets[3].set_fault(Fault::Oversized(3 << 20));
        let (status, body) = get(&c, kubelets[3].port(), Some("good")).await.unwrap();
        assert_eq!(status, 200);
        assert!(body.unwrap().len() >= 3 << 20);

        // A stopped kubelet's port refuses connections; a new one takes its place.
        fleet.stop("n0");
        closes(kubelets[0].port()).await;
        let again = fleet.start("n0", 100, 1 << 30).await.unwrap();
        assert_eq!(again.server(), Some("kubelets-0"), "the child with the fewest kubelets");
        assert_eq!(get(&c, again.port(), Some("good")).await.unwrap().0, 200);
        fleet.shutdown().await;
        closes(again.port()).await;
    }

    #[tokio::test]
    async fn a_full_command_queue_drops_closes_keeps_them_counted_and_delivers_the_rest_in_order() {
        // A child that reads nothing: its stdin's buffer holds less than one line.
        let (parent_in, child_in) = tokio::io::duplex(16);
        let (_child_out, parent_out) = tokio::io::duplex(16);
        let link = ServerLink { name: "kubelets-9".into(), input: Box::new(parent_in), output: Box::new(parent_out), child: None };
        let (handle, _ready) = attach(link);
        let tries = COMMAND_QUEUE + 100;
        handle.kubelets.store(tries, Ordering::Relaxed);
        // Nothing here yields, so the writer takes no line before the queue is full.
        for port in 0..tries {
            handle.close("n", u16::try_from(port).unwrap());
        }
        let queued = tries - handle.kubelets.load(Ordering::Relaxed);
        assert_eq!(queued, COMMAND_QUEUE, "the dropped closes' kubelets stay counted");
        handle.close_stdin();
        let mut lines = BufReader::new(child_in).lines();
        let mut read = 0;
        while let Some(line) = lines.next_line().await.unwrap() {
            let port = u16::try_from(read).unwrap();
            assert_eq!(line, serde_json::to_string(&ToServer::Close { node: "n".into(), port }).unwrap());
            read += 1;
        }
        assert_eq!(read, queued, "every queued close reaches the child");
    }

    /// Waits (up to 5 s) until nothing listens on `port`.
    async fn closes(port: u16) {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
        while TcpStream::connect(("127.0.0.1", port)).await.is_ok() {
            assert!(tokio::time::Instant::now() < deadline, "port {port} still open");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    #[tokio::test]
    async fn the_forwarding_endpoint_wants_the_secret_and_a_child_wants_a_loopback_parent() {
        let ca = Arc::new(Ca::new("test-ca").unwrap());
        let cert = ca.server_cert("kubelet", &[]).unwrap();
        let kubelets: Kubelets = Arc::default();
        let listener = TcpListener::bind(("127.0.0.1", 0)).await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (_stop, stop_rx) = watch::channel(false);
        tokio::spawn(run_endpoint(listener, "s3cret".into(), kubelets, stop_rx));
        let mut wrong = TcpStream::connect(addr).await.unwrap();
        wrong.write_all(b"guess\nPRI * HTTP/2.0\r\n").await.unwrap();
        let mut buf = [0u8; 16];
        assert_eq!(tokio::time::timeout(Duration::from_secs(5), wrong.read(&mut buf)).await.unwrap().unwrap_or(0), 0, "closed");

        let hello = |backend: &str| {
            let h = ToServer::Hello { backend: backend.into(), secret: "s3cret".into(), cert_pem: cert.cert_pem.clone(), key_pem: cert.key_pem.clone(), client_ca_pem: None };
            serde_json::to_string(&h).unwrap() + "\n"
        };
        let e = serve(std::io::Cursor::new(hello("10.1.2.3:80").into_bytes()), tokio::io::sink()).await.unwrap_err();
        assert!(e.to_string().contains("not on loopback"), "{e}");
        let e = serve(std::io::Cursor::new(b"{\"close\":{\"node\":\"x\"}}\n".to_vec()), tokio::io::sink()).await.unwrap_err();
        assert!(e.to_string().contains("hello"), "{e}");
        // With the right secret it connects, says ready and ends with its stdin.
        let (out_tx, out_rx) = tokio::io::duplex(4096);
        serve(std::io::Cursor::new(hello(&addr.to_string()).into_bytes()), out_tx).await.unwrap();
        let mut said = String::new();
        BufReader::new(out_rx).read_line(&mut said).await.unwrap();
        assert_eq!(said.trim(), "\"ready\"");
    }
}
