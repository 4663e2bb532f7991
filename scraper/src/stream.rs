//! The `shardmetrics.v1.SampleStream` server: fan-out of scrapes to subscribed frontends.
//!
//! The [`Hub`] holds the last two scrapes of every owned node ([`ScrapeBuffer`]) and the
//! subscribers. Each scrape is encoded into its wire `SampleBatch` **once**, and the same
//! bytes are queued to every subscriber (a custom codec writes them to the gRPC stream as is,
//! so N frontends cost one encoding, not N). The buffer keeps those same bytes (compact, shared),
//! and a new subscriber's snapshot is those very frames, sent one per message as they are, then
//! one empty batch with `snapshot_complete` (encoded once per hub). Frames are not merged: each
//! `SampleBatch` has its own string table, so a snapshot costs no decoding or encoding at all.
//!
//! Backpressure: each subscriber has a bounded queue of `--subscriber-queue-batches` batches.
//! Overflow policy: the subscriber whose queue is full is disconnected with
//! `RESOURCE_EXHAUSTED` and counted in `shardmetrics_scraper_subscribers_dropped_total`; it
//! reconnects and gets a fresh snapshot. Publishing never waits, so scraping and the other
//! subscribers never slow down.
//!
//! Consistency: subscribing takes the snapshot and registers the queue under the same lock
//! publishing uses, so every scrape is either in a subscriber's snapshot or in its queue,
//! never both, never neither.

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use bytes::{BufMut, Bytes, BytesMut};
use futures::Stream;
use prost::Message;
use shardmetrics_proto::v1::SubscribeRequest;
use shardmetrics_proto::{NodeReleased, NodeScrape, NodeScrapeRef, ShardIdentity, encode_batch, encode_scrape_ref_append};
use tokio::sync::{mpsc, oneshot};
use tonic::codec::{Codec, DecodeBuf, Decoder, EncodeBuf, Encoder};
use tonic::server::{Grpc, NamedService, ServerStreamingService};
use tonic::{Request, Response, Status};

use crate::buffer::ScrapeBuffer;
use crate::metrics::Metrics;

/// Fully qualified gRPC service name.
pub const SERVICE_NAME: &str = "shardmetrics.v1.SampleStream";
/// HTTP/2 path of `Subscribe`.
pub const SUBSCRIBE_PATH: &str = "/shardmetrics.v1.SampleStream/Subscribe";

/// Default `--grpc-max-message-bytes`, in bytes: the frontends' default decoding limit.
pub const DEFAULT_MAX_MESSAGE_BYTES: usize = 64 << 20;

struct Subscriber {
    id: u64,
    name: String,
    queue: mpsc::Sender<Bytes>,
    kill: Option<oneshot::Sender<()>>,
}

struct HubState {
    buffer: ScrapeBuffer,
    subscribers: Vec<Subscriber>,
    closed: bool,
}

/// Fan-out point between the scheduler (publisher) and the `Subscribe` streams.
pub struct Hub {
    shard: ShardIdentity,
    queue_batches: usize,
    /// `--grpc-max-message-bytes`: a live batch larger than this is not streamed (frontends would
    /// refuse it and resubscribe, over and over), in bytes.
    max_message_bytes: usize,
    /// The empty batch with `snapshot_complete` that ends every snapshot, encoded once.
    snapshot_complete: Bytes,
    /// `--stream-linger`: the first live batch after a quiet spell waits this long, and the ones
    /// published meanwhile go out with it, in one write (zero: every batch at once).
    linger: std::time::Duration,
    metrics: Metrics,
    next_id: AtomicU64,
    state: Mutex<HubState>,
    /// Where live batches are encoded (a buffer reused for each), then copied into the current
    /// chunk, one after another, each split off as the [`Bytes`] the buffer and the queues
    /// share: see [`ARENA_CHUNK_BYTES`].
    arena: Mutex<(Vec<u8>, BytesMut)>,
}

/// Size of the chunks live batches are encoded into, in bytes: ~12 batches of a 30-pod node
/// each. A batch is held for two resolutions (the last two per node), a few KB each, and
/// batches are let go of in about the order they were made; one allocation per chunk instead of one per
/// batch keeps these sizes out of glibc's slow bins, where a few-KB allocation freed half a
/// minute later cost a scrape as much as reading its body from the socket. A chunk is freed
/// (or taken up again, when the hub holds the last reference) once all its batches are gone; a
/// batch larger than a chunk gets a buffer of its own size.
pub const ARENA_CHUNK_BYTES: usize = 32 << 10;

/// Largest encoding buffer the hub keeps between batches, in bytes (a 110-pod node's batch is
/// ~10 KB): a larger one, from an unusually large scrape, is freed after use.
const MAX_KEPT_ENCODE_BUFFER_BYTES: usize = 1 << 20;

impl std::fmt::Debug for Hub {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Hub").field("shard", &self.shard).field("queue_batches", &self.queue_batches).finish_non_exhaustive()
    }
}

impl Hub {
    /// A hub for `shard` with per-subscriber queues of `queue_batches` batches (at least 1) and
    /// the default message limit ([`DEFAULT_MAX_MESSAGE_BYTES`]).
    pub fn new(shard: ShardIdentity, queue_batches: usize, metrics: Metrics) -> Arc<Hub> {
        Self::with_max_message_bytes(shard, queue_batches, DEFAULT_MAX_MESSAGE_BYTES, metrics)
    }

    /// Like [`Hub::new`], streaming no live batch larger than `max_message_bytes`
    /// (`--grpc-max-message-bytes`); such a scrape is logged, counted in
    /// `shardmetrics_scraper_batches_oversized_total` and neither buffered nor sent.
    pub fn with_max_message_bytes(shard: ShardIdentity, queue_batches: usize, max_message_bytes: usize, metrics: Metrics) -> Arc<Hub> {
        Self::with_linger(shard, queue_batches, max_message_bytes, std::time::Duration::ZERO, metrics)
    }

    /// Like [`Hub::with_max_message_bytes`], with live batches coalesced per subscriber
    /// (`--stream-linger`): the first batch after a quiet spell opens a window of `linger`, and
    /// it and every batch published within the window are written together when it ends.
    /// Fewer, larger writes per scrape (a group of scrapes: one write); each batch waits
    /// `linger` at most.
    pub fn with_linger(shard: ShardIdentity, queue_batches: usize, max_message_bytes: usize, linger: std::time::Duration, metrics: Metrics) -> Arc<Hub> {
        let snapshot_complete = Bytes::from(encode_batch(&shard, &[], &[], true).encode_to_vec());
        Arc::new(Hub {
            shard,
            queue_batches: queue_batches.max(1),
            max_message_bytes,
            snapshot_complete,
            linger,
            metrics,
            next_id: AtomicU64::new(1),
            state: Mutex::new(HubState { buffer: ScrapeBuffer::default(), subscribers: Vec::new(), closed: false }),
            arena: Mutex::new((Vec::new(), BytesMut::with_capacity(ARENA_CHUNK_BYTES))),
        })
    }

    /// This shard's identity, stamped on every batch.
    pub fn shard(&self) -> &ShardIdentity {
        &self.shard
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HubState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Encodes one scrape as a live wire batch. Pure; call it off the hub lock (the scrape
    /// task does), then hand the bytes to [`Hub::publish_scrape`].
    pub fn encode_scrape(&self, scrape: &NodeScrape) -> Bytes {
        Bytes::from(encode_batch(&self.shard, &[scrape], &[], false).encode_to_vec())
    }

    /// [`Hub::encode_scrape`] of a scrape borrowing its strings (the parser's output): the same
    /// bytes, written straight from it into the hub's current chunk ([`ARENA_CHUNK_BYTES`]).
    pub fn encode_scrape_ref(&self, scrape: &NodeScrapeRef<'_>) -> Bytes {
        let mut guard = self.arena.lock().unwrap_or_else(|p| p.into_inner());
        let (encoded, chunk) = &mut *guard;
        encoded.clear();
        encode_scrape_ref_append(&self.shard, scrape, encoded);
        // In place when the chunk has room; else a new chunk (or this one again, if every batch
        // in it is gone) of at least its size.
        chunk.extend_from_slice(encoded);
        if encoded.capacity() > MAX_KEPT_ENCODE_BUFFER_BYTES {
            // An unusually large batch: its buffer is not kept for the next ones.
            *encoded = Vec::new();
        }
        chunk.split().freeze()
    }

    /// Whether `frame` fits `--grpc-max-message-bytes`; if not, logs and counts it.
    fn fits(&self, frame: &Bytes, what: &str) -> bool {
        if frame.len() <= self.max_message_bytes {
            return true;
        }
        tracing::error!(what, bytes = frame.len(), limit = self.max_message_bytes, "batch larger than --grpc-max-message-bytes; not streamed");
        self.metrics.batches_oversized_total.inc();
        false
    }

    /// Buffers a scrape of `node` (its batch from [`Hub::encode_scrape`]) and queues it to every
    /// subscriber (unless the batch is over `--grpc-max-message-bytes`: then neither).
    pub fn publish_scrape(&self, node: &str, frame: Bytes) {
        if !self.fits(&frame, node) {
            return;
        }
        let mut state = self.lock();
        if state.closed {
            return;
        }
        state.buffer.push(node, frame.clone());
        self.fan_out(&mut state, frame);
    }

    /// Forgets released nodes and tells every subscriber, in one batch.
    pub fn publish_released(&self, released: Vec<NodeReleased>) {
        if released.is_empty() {
            return;
        }
        let frame = Bytes::from(encode_batch(&self.shard, &[], &released, false).encode_to_vec());
        if !self.fits(&frame, "node releases") {
            return;
        }
        let mut state = self.lock();
        if state.closed {
            return;
        }
        for r in &released {
            state.buffer.remove(&r.node);
        }
        self.fan_out(&mut state, frame);
    }

    fn fan_out(&self, state: &mut HubState, frame: Bytes) {
        let metrics = &self.metrics;
        state.subscribers.retain_mut(|s| match s.queue.try_send(frame.clone()) {
            Ok(()) => {
                metrics.batches_sent_total.inc();
                true
            }
            Err(mpsc::error::TrySendError::Full(_)) => {
                tracing::warn!(subscriber = %s.name, queue_batches = self.queue_batches, "subscriber queue full; disconnecting it");
                metrics.subscribers_dropped_total.inc();
                if let Some(kill) = s.kill.take() {
                    let _ = kill.send(());
                }
                false
            }
            Err(mpsc::error::TrySendError::Closed(_)) => false,
        });
    }

    /// Number of nodes with buffered scrapes.
    pub fn buffered_nodes(&self) -> usize {
        self.lock().buffer.len()
    }

    /// Number of connected subscribers.
    pub fn subscriber_count(&self) -> usize {
        self.lock().subscribers.len()
    }

    /// Ends every stream (after it drains its queue) and refuses new subscribers; for
    /// graceful shutdown, after the final releases were published.
    pub fn close(&self) {
        let mut state = self.lock();
        state.closed = true;
        state.subscribers.clear();
    }

    /// Registers a subscriber: its snapshot plus a queue of everything published afterwards.
    pub fn subscribe(self: &Arc<Self>, name: String) -> Result<Subscription, Status> {
        let (tx, rx) = mpsc::channel(self.queue_batches);
        let (kill_tx, kill_rx) = oneshot::channel();
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let snapshot = {
            let mut state = self.lock();
            if state.closed {
                return Err(Status::unavailable("shard is shutting down"));
            }
            state.subscribers.push(Subscriber { id, name: name.clone(), queue: tx, kill: Some(kill_tx) });
            let mut frames = state.buffer.snapshot();
            frames.push(self.snapshot_complete.clone());
            frames
        };
        self.metrics.subscribers.inc();
        tracing::info!(subscriber = %name, snapshot_scrapes = snapshot.len() - 1, "subscriber connected");
        Ok(Subscription {
            hub: self.clone(),
            id,
            name,
            snapshot: Some(snapshot.into_iter()),
            queue: rx,
            kill: Some(kill_rx),
            finished: false,
            hold: None,
            holding: None,
            draining: false,
        })
    }

    fn unsubscribe(&self, id: u64) {
        self.lock().subscribers.retain(|s| s.id != id);
        self.metrics.subscribers.dec();
    }
}

/// One subscriber's stream of encoded `SampleBatch` messages: snapshot batches first, then
/// its live queue; ends with `RESOURCE_EXHAUSTED` if it fell behind.
pub struct Subscription {
    hub: Arc<Hub>,
    id: u64,
    name: String,
    /// What is left of the snapshot: the buffered scrapes' live batches, one per message, then
    /// the hub's `snapshot_complete` batch; `None` once sent (its list freed).
    snapshot: Option<std::vec::IntoIter<Bytes>>,
    queue: mpsc::Receiver<Bytes>,
    /// Fires when the hub drops this subscriber for falling behind; `None` once resolved.
    kill: Option<oneshot::Receiver<()>>,
    finished: bool,
    /// The timer of the linger window (see [`Hub::with_linger`]): created on first use, then
    /// reset for each window.
    hold: Option<Pin<Box<tokio::time::Sleep>>>,
    /// A linger window runs, opened by this batch: the queue is not read, so what is published
    /// meanwhile goes out with it, together, when the window ends.
    holding: Option<Bytes>,
    /// A window has ended and its batches are being handed out: the queue is read until empty
    /// without opening another.
    draining: bool,
}

impl Drop for Subscription {
    fn drop(&mut self) {
        tracing::info!(subscriber = %self.name, "subscriber disconnected");
        self.hub.unsubscribe(self.id);
    }
}

impl Stream for Subscription {
    type Item = Result<Bytes, Status>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = &mut *self;
        if this.finished {
            return Poll::Ready(None);
        }
        if let Some(kill) = this.kill.as_mut() {
            match Pin::new(kill).poll(cx) {
                Poll::Ready(Ok(())) => {
                    this.finished = true;
                    return Poll::Ready(Some(Err(Status::resource_exhausted(format!(
                        "subscriber fell {} batches behind; reconnect for a fresh snapshot",
                        this.hub.queue_batches
                    )))));
                }
                // The hub let go of this subscriber without a kill (shutdown): drain and end.
                Poll::Ready(Err(_)) => this.kill = None,
                Poll::Pending => {}
            }
        }
        if let Some(snapshot) = this.snapshot.as_mut() {
            match snapshot.next() {
                Some(frame) => return Poll::Ready(Some(Ok(frame))),
                None => this.snapshot = None,
            }
        }
        if this.holding.is_some() {
            if let Some(hold) = this.hold.as_mut()
                && hold.as_mut().poll(cx).is_pending()
            {
                return Poll::Pending;
            }
            this.draining = true;
            return Poll::Ready(this.holding.take().map(Ok));
        }
        match this.queue.poll_recv(cx) {
            Poll::Ready(Some(frame)) => {
                let linger = this.hub.linger;
                if this.draining || linger.is_zero() {
                    return Poll::Ready(Some(Ok(frame)));
                }
                // The first batch after a quiet spell opens a window: it and what is published
                // within it go out together when it ends.
                let deadline = tokio::time::Instant::now() + linger;
                let hold = this.hold.get_or_insert_with(|| Box::pin(tokio::time::sleep_until(deadline)));
                hold.as_mut().reset(deadline);
                // Registers the timer; the queue's waker is not (a batch published in the
                // window waits, unread, for the timer's wake-up).
                if hold.as_mut().poll(cx).is_ready() {
                    return Poll::Ready(Some(Ok(frame)));
                }
                this.holding = Some(frame);
                Poll::Pending
            }
            Poll::Ready(None) => {
                this.finished = true;
                Poll::Ready(None)
            }
            Poll::Pending => {
                // The window's batches are all out (written now): the next one opens a window.
                this.draining = false;
                Poll::Pending
            }
        }
    }
}

/// Writes already-encoded `SampleBatch` bytes as they are; decodes `SubscribeRequest` with prost.
#[derive(Debug, Clone, Copy, Default)]
pub struct PreEncodedCodec;

/// Encoder half of [`PreEncodedCodec`].
#[derive(Debug, Clone, Copy, Default)]
pub struct PreEncodedEncoder;

/// Decoder half of [`PreEncodedCodec`].
#[derive(Debug, Clone, Copy, Default)]
pub struct RequestDecoder;

impl Encoder for PreEncodedEncoder {
    type Item = Bytes;
    type Error = Status;

    fn encode(&mut self, item: Bytes, dst: &mut EncodeBuf<'_>) -> Result<(), Status> {
        dst.put_slice(&item);
        Ok(())
    }
}

impl Decoder for RequestDecoder {
    type Item = SubscribeRequest;
    type Error = Status;

    fn decode(&mut self, src: &mut DecodeBuf<'_>) -> Result<Option<SubscribeRequest>, Status> {
        SubscribeRequest::decode(src).map(Some).map_err(|e| Status::invalid_argument(format!("bad SubscribeRequest: {e}")))
    }
}

impl Codec for PreEncodedCodec {
    type Encode = Bytes;
    type Decode = SubscribeRequest;
    type Encoder = PreEncodedEncoder;
    type Decoder = RequestDecoder;

    fn encoder(&mut self) -> PreEncodedEncoder {
        PreEncodedEncoder
    }

    fn decoder(&mut self) -> RequestDecoder {
        RequestDecoder
    }
}

/// The tonic service serving `Subscribe` from a [`Hub`]; add it to a
/// `tonic::transport::Server` like a generated `SampleStreamServer`.
#[derive(Debug, Clone)]
pub struct SampleStreamService {
    hub: Arc<Hub>,
}

impl SampleStreamService {
    /// Serves `hub`.
    pub fn new(hub: Arc<Hub>) -> SampleStreamService {
        SampleStreamService { hub }
    }
}

impl NamedService for SampleStreamService {
    const NAME: &'static str = SERVICE_NAME;
}

struct SubscribeCall(Arc<Hub>);

impl ServerStreamingService<SubscribeRequest> for SubscribeCall {
    type Response = Bytes;
    type ResponseStream = Subscription;
    type Future = std::future::Ready<Result<Response<Subscription>, Status>>;

    fn call(&mut self, request: Request<SubscribeRequest>) -> Self::Future {
        let remote = request.remote_addr().map(|a| a.to_string()).unwrap_or_default();
        let mut name = request.into_inner().subscriber;
        if name.is_empty() {
            name = if remote.is_empty() { "unnamed".into() } else { remote };
        }
        std::future::ready(self.0.subscribe(name).map(Response::new))
    }
}

type BoxFuture<T> = Pin<Box<dyn std::future::Future<Output = T> + Send + 'static>>;

impl<B> tonic::codegen::Service<http::Request<B>> for SampleStreamService
where
    B: tonic::codegen::Body + Send + 'static,
    B::Error: Into<tonic::codegen::StdError> + Send + 'static,
{
    type Response = http::Response<tonic::body::Body>;
    type Error = Infallible;
    type Future = BoxFuture<Result<Self::Response, Infallible>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: http::Request<B>) -> Self::Future {
        let hub = self.hub.clone();
        if req.uri().path() == SUBSCRIBE_PATH {
            Box::pin(async move { Ok(Grpc::new(PreEncodedCodec).server_streaming(SubscribeCall(hub), req).await) })
        } else {
            Box::pin(async move { Ok(Status::unimplemented(format!("unknown method {}", req.uri().path())).into_http()) })
        }
    }
}

/// PEM material for the gRPC server's TLS (`--grpc-tls-*` flags).
#[derive(Debug, Clone)]
pub struct GrpcTls {
    /// Serving certificate chain, PEM.
    pub cert_pem: Vec<u8>,
    /// Its private key, PEM.
    pub key_pem: Vec<u8>,
    /// When set, clients must present a certificate signed by this CA (mTLS), PEM.
    pub client_ca_pem: Option<Vec<u8>>,
}

/// The gRPC server cannot start.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    /// TLS configuration or the HTTP/2 server failed.
    #[error("gRPC server: {0}")]
    Transport(#[from] tonic::transport::Error),
}

/// How often an idle HTTP/2 connection is pinged, so a vanished frontend is noticed.
const HTTP2_KEEPALIVE: std::time::Duration = std::time::Duration::from_secs(20);

/// Serves `Subscribe` from `hub` on `listener` until `shutdown` resolves, then waits for open
/// streams to end (close the hub first so they do).
pub async fn serve(
    listener: tokio::net::TcpListener,
    hub: Arc<Hub>,
    tls: Option<GrpcTls>,
    shutdown: impl std::future::Future<Output = ()> + Send,
) -> Result<(), ServeError> {
    let mut builder = tonic::transport::Server::builder()
        .tcp_nodelay(true)
        .http2_keepalive_interval(Some(HTTP2_KEEPALIVE))
        .http2_keepalive_timeout(Some(HTTP2_KEEPALIVE));
    if let Some(tls) = tls {
        let mut cfg = tonic::transport::ServerTlsConfig::new().identity(tonic::transport::Identity::from_pem(tls.cert_pem, tls.key_pem));
        if let Some(ca) = tls.client_ca_pem {
            cfg = cfg.client_ca_root(tonic::transport::Certificate::from_pem(ca));
        }
        builder = builder.tls_config(cfg)?;
    }
    let incoming = tokio_stream::wrappers::TcpListenerStream::new(listener);
    builder.serve_with_incoming_shutdown(SampleStreamService::new(hub), incoming, shutdown).await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use futures::StreamExt;
    use shardmetrics_proto::v1::SampleBatch;
    use shardmetrics_proto::{ReleaseReason, decode_batch};

    use super::*;

    fn shard() -> ShardIdentity {
        ShardIdentity { shard_id: "s0".into(), epoch: 7 }
    }

    fn scrape(node: &str, t: i64) -> NodeScrape {
        NodeScrape { node: node.into(), scraped_at_ms: t, node_usage: None, pods: vec![] }
    }

    fn publish(hub: &Hub, node: &str, t: i64) {
        let f = hub.encode_scrape(&scrape(node, t));
        hub.publish_scrape(node, f);
    }

    fn decode(b: Bytes) -> shardmetrics_proto::Batch {
        decode_batch(SampleBatch::decode(b).unwrap()).unwrap()
    }

    /// Every message of `sub`'s snapshot, up to and including the `snapshot_complete` one.
    async fn snapshot_frames(sub: &mut Subscription) -> Vec<Bytes> {
        let mut frames = vec![];
        loop {
            let frame = sub.next().await.unwrap().unwrap();
            let done = decode(frame.clone()).snapshot_complete;
            frames.push(frame);
            if done {
                return frames;
            }
        }
    }

    /// The scraped_at_ms of the next live frame of `sub` if one is ready now, without waiting.
    fn ready_now(sub: &mut Subscription) -> Option<i64> {
        use futures::FutureExt;
        sub.next().now_or_never().map(|f| decode(f.unwrap().unwrap()).scrapes[0].scraped_at_ms)
    }

    #[tokio::test(start_paused = true)]
    async fn with_a_linger_the_first_batch_opens_a_window_and_what_comes_within_it_goes_together() {
        let linger = std::time::Duration::from_millis(25);
        let hub = Hub::with_linger(shard(), 16, DEFAULT_MAX_MESSAGE_BYTES, linger, Metrics::register(&prometheus::Registry::new()).unwrap());
        let mut sub = hub.subscribe("fe".into()).unwrap();
        snapshot_frames(&mut sub).await;
        publish(&hub, "a", 1);
        assert_eq!(ready_now(&mut sub), None, "the first batch after a quiet spell opens a window");
        tokio::time::advance(std::time::Duration::from_millis(10)).await;
        publish(&hub, "b", 2);
        publish(&hub, "c", 3);
        assert_eq!(ready_now(&mut sub), None, "held within the window");
        tokio::time::advance(std::time::Duration::from_millis(15)).await;
        assert_eq!((ready_now(&mut sub), ready_now(&mut sub), ready_now(&mut sub)), (Some(1), Some(2), Some(3)), "all at once, in order, when it closes");
        assert_eq!(ready_now(&mut sub), None, "drained");
        tokio::time::advance(linger * 3).await;
        assert_eq!(ready_now(&mut sub), None, "nothing came: nothing to write");
        publish(&hub, "d", 4);
        assert_eq!(ready_now(&mut sub), None, "the next batch opens a new window");
        tokio::time::advance(linger - std::time::Duration::from_millis(1)).await;
        assert_eq!(ready_now(&mut sub), None, "not before the window ends");
        tokio::time::advance(std::time::Duration::from_millis(1)).await;
        assert_eq!(ready_now(&mut sub), Some(4), "at most the linger late");
        assert_eq!(ready_now(&mut sub), None, "drained");
        // A held batch and the end of the stream are not held back beyond the window either.
        publish(&hub, "e", 5);
        assert_eq!(ready_now(&mut sub), None);
        hub.close();
        tokio::time::advance(linger).await;
        assert_eq!(ready_now(&mut sub), Some(5), "the held batch still goes out after a close");
        assert!(sub.next().await.is_none(), "closed: the stream ends");
    }

    #[tokio::test(start_paused = true)]
    async fn without_a_linger_every_batch_goes_at_once() {
        let hub = Hub::with_linger(shard(), 16, DEFAULT_MAX_MESSAGE_BYTES, std::time::Duration::ZERO, Metrics::register(&prometheus::Registry::new()).unwrap());
        let mut sub = hub.subscribe("fe".into()).unwrap();
        snapshot_frames(&mut sub).await;
        publish(&hub, "a", 1);
        assert_eq!(ready_now(&mut sub), Some(1));
        publish(&hub, "b", 2);
        assert_eq!(ready_now(&mut sub), Some(2));
    }

    #[tokio::test]
    async fn a_subscriber_gets_the_snapshot_then_only_later_scrapes() {
        let hub = Hub::new(shard(), 16, Metrics::register(&prometheus::Registry::new()).unwrap());
        publish(&hub, "a", 1);
        publish(&hub, "a", 2);
        publish(&hub, "a", 3);
        publish(&hub, "b", 1);
        let mut sub = hub.subscribe("fe".into()).unwrap();
        publish(&hub, "b", 2);
        let snap: Vec<_> = snapshot_frames(&mut sub).await.into_iter().map(decode).collect();
        assert!(snap.iter().all(|b| b.shard == shard()));
        let (complete, scrapes) = snap.split_last().unwrap();
        assert!(complete.snapshot_complete && complete.scrapes.is_empty() && complete.released.is_empty());
        assert!(scrapes.iter().all(|b| !b.snapshot_complete && b.scrapes.len() == 1), "one buffered scrape per message");
        let got: Vec<(String, i64)> = scrapes.iter().map(|b| (b.scrapes[0].node.clone(), b.scrapes[0].scraped_at_ms)).collect();
        assert_eq!(got, vec![("a".into(), 2), ("a".into(), 3), ("b".into(), 1)]);
        let live = decode(sub.next().await.unwrap().unwrap());
        assert!(!live.snapshot_complete);
        assert_eq!(live.scrapes[0].scraped_at_ms, 2);
        assert_eq!(hub.subscriber_count(), 1);
        drop(sub);
        assert_eq!(hub.subscriber_count(), 0);
    }

    #[tokio::test]
    async fn a_scrape_over_the_message_limit_is_counted_and_neither_buffered_nor_sent() {
        let metrics = Metrics::register(&prometheus::Registry::new()).unwrap();
        let hub = Hub::with_max_message_bytes(shard(), 4, 64, metrics.clone());
        let mut sub = hub.subscribe("fe".into()).unwrap();
        assert!(decode(sub.next().await.unwrap().unwrap()).snapshot_complete);
        let big = NodeScrape { node: "n".repeat(100), scraped_at_ms: 1, node_usage: None, pods: vec![] };
        let frame = hub.encode_scrape(&big);
        assert!(frame.len() > 64);
        hub.publish_scrape(&big.node, frame);
        assert_eq!(hub.buffered_nodes(), 0);
        publish(&hub, "small", 2);
        let live = decode(sub.next().await.unwrap().unwrap());
        assert_eq!(live.scrapes[0].node, "small", "the oversized batch was never queued");
        let text = prometheus::TextEncoder::new().encode_to_string(&metrics.registry.gather()).unwrap();
        assert!(text.contains("shardmetrics_scraper_batches_oversized_total 1"), "{text}");
    }

    #[tokio::test]
    async fn an_empty_shard_still_sends_a_complete_empty_snapshot() {
        let hub = Hub::new(shard(), 4, Metrics::register(&prometheus::Registry::new()).unwrap());
        let mut sub = hub.subscribe("fe".into()).unwrap();
        let snap = decode(sub.next().await.unwrap().unwrap());
        assert!(snap.snapshot_complete);
        assert!(snap.scrapes.is_empty());
    }

    #[tokio::test]
    async fn a_snapshot_is_the_buffered_frames_as_they_are_then_one_shared_complete_marker() {
        let hub = Hub::new(shard(), 4, Metrics::register(&prometheus::Registry::new()).unwrap());
        for i in 0..100 {
            publish(&hub, &format!("n{i:03}"), 1);
            publish(&hub, &format!("n{i:03}"), 2);
        }
        let buffered = hub.lock().buffer.snapshot();
        assert_eq!(buffered.len(), 200);
        let mut first = hub.subscribe("fe-0".into()).unwrap();
        let mut second = hub.subscribe("fe-1".into()).unwrap();
        let a = snapshot_frames(&mut first).await;
        let b = snapshot_frames(&mut second).await;
        for frames in [&a, &b] {
            assert_eq!(frames.len(), 201, "every buffered scrape, then the marker");
            for (sent, held) in frames.iter().zip(&buffered) {
                assert_eq!(sent.as_ptr(), held.as_ptr(), "sent as buffered: neither decoded nor re-encoded");
            }
        }
        assert_eq!(a[200].as_ptr(), b[200].as_ptr(), "the complete marker is encoded once for all subscribers");
        let order: Vec<(String, i64)> = a[..200].iter().map(|f| decode(f.clone())).map(|b| (b.scrapes[0].node.clone(), b.scrapes[0].scraped_at_ms)).collect();
        let want: Vec<(String, i64)> = (0..100).flat_map(|i| [(format!("n{i:03}"), 1), (format!("n{i:03}"), 2)]).collect();
        assert_eq!(order, want, "nodes in name order, each node's older scrape first");
    }

    #[tokio::test]
    async fn the_buffer_holds_the_very_bytes_queued_to_subscribers() {
        let hub = Hub::new(shard(), 4, Metrics::register(&prometheus::Registry::new()).unwrap());
        let mut sub = hub.subscribe("fe".into()).unwrap();
        let _ = sub.next().await;
        publish(&hub, "a", 1);
        let queued = sub.next().await.unwrap().unwrap();
        let buffered = hub.lock().buffer.snapshot();
        assert_eq!(buffered.len(), 1);
        assert_eq!(buffered[0].as_ptr(), queued.as_ptr(), "shared, not copied");
    }

    #[tokio::test]
    async fn a_full_queue_disconnects_only_that_subscriber_with_resource_exhausted() {
        let metrics = Metrics::register(&prometheus::Registry::new()).unwrap();
        let hub = Hub::new(shard(), 2, metrics.clone());
        let mut slow = hub.subscribe("slow".into()).unwrap();
        let mut fast = hub.subscribe("fast".into()).unwrap();
        let _ = slow.next().await; // snapshot
        let _ = fast.next().await;
        for t in 0..5 {
            publish(&hub, "a", t);
            let b = decode(fast.next().await.unwrap().unwrap());
            assert_eq!(b.scrapes[0].scraped_at_ms, t);
        }
        let err = slow.next().await.unwrap().unwrap_err();
        assert_eq!(err.code(), tonic::Code::ResourceExhausted);
        assert!(slow.next().await.is_none());
        assert_eq!(metrics.subscribers_dropped_total.get(), 1);
        assert_eq!(hub.subscriber_count(), 1);
    }

    #[tokio::test]
    async fn released_nodes_leave_the_buffer_and_are_announced_in_one_batch() {
        let hub = Hub::new(shard(), 8, Metrics::register(&prometheus::Registry::new()).unwrap());
        publish(&hub, "a", 1);
        publish(&hub, "b", 1);
        let mut sub = hub.subscribe("fe".into()).unwrap();
        assert_eq!(snapshot_frames(&mut sub).await.len(), 3);
        hub.publish_released(vec![
            NodeReleased { node: "a".into(), reason: ReleaseReason::OwnershipMoved },
            NodeReleased { node: "b".into(), reason: ReleaseReason::NodeDeleted },
        ]);
        let b = decode(sub.next().await.unwrap().unwrap());
        assert_eq!(b.released.len(), 2);
        assert_eq!(hub.buffered_nodes(), 0);
    }

    #[tokio::test]
    async fn closing_the_hub_ends_streams_after_their_queue_and_refuses_new_subscribers() {
        let hub = Hub::new(shard(), 8, Metrics::register(&prometheus::Registry::new()).unwrap());
        let mut sub = hub.subscribe("fe".into()).unwrap();
        let _ = sub.next().await;
        publish(&hub, "a", 1);
        hub.close();
        assert!(sub.next().await.unwrap().is_ok(), "queued batch still delivered");
        assert!(sub.next().await.is_none());
        assert_eq!(hub.subscribe("late".into()).err().map(|s| s.code()), Some(tonic::Code::Unavailable));
    }

    #[test]
    fn a_parsed_kubelet_body_encodes_the_same_borrowed_or_owned() {
        use crate::kubelet::fixture::{PayloadSpec, resource_metrics};
        use crate::kubelet::parse_resource_metrics_ref;
        let hub = Hub::new(shard(), 4, Metrics::register(&prometheus::Registry::new()).unwrap());
        for (pods, seed) in [(0, 1), (1, 2), (30, 3), (110, 4)] {
            let body = resource_metrics(&PayloadSpec { pods, seed, timestamp_ms: 1_700_000_000_000 });
            let parsed = parse_resource_metrics_ref("node-1", &body, 5).unwrap();
            assert_eq!(hub.encode_scrape_ref(&parsed.scrape), hub.encode_scrape(&parsed.scrape.to_owned_scrape()), "{pods} pods");
        }
    }

    #[test]
    fn batches_share_a_chunk_until_it_is_full_and_a_chunk_let_go_of_is_taken_up_again() {
        use crate::kubelet::fixture::{PayloadSpec, resource_metrics};
        use crate::kubelet::parse_resource_metrics_ref;
        let hub = Hub::new(shard(), 4, Metrics::register(&prometheus::Registry::new()).unwrap());
        let body = resource_metrics(&PayloadSpec { pods: 30, seed: 7, timestamp_ms: 1_700_000_000_000 });
        let parsed = parse_resource_metrics_ref("node-1", &body, 5).unwrap();
        let want = hub.encode_scrape(&parsed.scrape.to_owned_scrape());
        assert!(want.len() * 4 < ARENA_CHUNK_BYTES, "{} bytes", want.len());
        let per_chunk = ARENA_CHUNK_BYTES / want.len();
        let follows = |a: &Bytes, b: &Bytes| a.as_ptr().wrapping_add(a.len()) == b.as_ptr();
        // One chunk and the first batch of the next.
        let mut frames: Vec<Bytes> = (0..=per_chunk).map(|_| hub.encode_scrape_ref(&parsed.scrape)).collect();
        assert!(frames.iter().all(|f| *f == want));
        for pair in frames[..per_chunk].windows(2) {
            assert!(follows(&pair[0], &pair[1]), "one chunk, one batch after another");
        }
        assert!(!follows(&frames[per_chunk - 1], &frames[per_chunk]), "a full chunk: the next batch starts a new one");
        // The second chunk filled, then every batch let go of: the hub takes it up again from
        // its start instead of allocating a third.
        let second_start = frames[per_chunk].as_ptr();
        frames.extend((1..per_chunk).map(|_| hub.encode_scrape_ref(&parsed.scrape)));
        assert!(frames[per_chunk..].windows(2).all(|pair| follows(&pair[0], &pair[1])));
        drop(frames);
        let again = hub.encode_scrape_ref(&parsed.scrape);
        assert_eq!(again, want);
        assert_eq!(again.as_ptr(), second_start);

        // A batch larger than a chunk gets a buffer of its own; smaller ones go on after it.
        let big_body = resource_metrics(&PayloadSpec { pods: 600, seed: 8, timestamp_ms: 1_700_000_000_000 });
        let big = parse_resource_metrics_ref("node-2", &big_body, 5).unwrap();
        let big_frame = hub.encode_scrape_ref(&big.scrape);
        assert!(big_frame.len() > ARENA_CHUNK_BYTES, "{} bytes", big_frame.len());
        assert_eq!(big_frame, hub.encode_scrape(&big.scrape.to_owned_scrape()));
        assert_eq!(hub.encode_scrape_ref(&parsed.scrape), want);
    }
}
