//! Response bodies: small ones in one piece, large lists produced chunk by chunk while the
//! client reads, so a 150k-pod list never sits in memory as one buffer.

use std::convert::Infallible;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body::{Frame, SizeHint};

/// Target size of one streamed chunk, in bytes.
pub const CHUNK_BYTES: usize = 64 * 1024;

/// Chunks a producer moved off the runtime ([`Body::produced_off_runtime`]) may have encoded
/// ahead of the client: it then waits for the client (back-pressure, nothing dropped), so a
/// body holds at most this many chunks (~256 KiB) besides the one being written.
pub const OFF_RUNTIME_CHUNKS: usize = 4;

/// Appends more of a response to the buffer; returns `false` once everything is written.
pub type Producer = Box<dyn FnMut(&mut Vec<u8>) -> bool + Send>;

/// A response body: one buffer, a [`Producer`] drained in chunks of about [`CHUNK_BYTES`], or
/// the frames a task sends (a watch) until it drops its sender.
pub struct Body {
    /// What is left to send.
    state: State,
}

/// Where a body is in its sending.
enum State {
    /// One buffer, sent in one frame (`None` once sent).
    Full(Option<Bytes>),
    /// A producer that has not yet reported completion.
    Streaming(Producer),
    /// Frames from a task, each sent as it comes.
    Channel(tokio::sync::mpsc::Receiver<Bytes>),
    /// Nothing left.
    Done,
}

impl Body {
    /// A body of `bytes`.
    pub fn full(bytes: impl Into<Bytes>) -> Self {
        let bytes = bytes.into();
        Self { state: State::Full((!bytes.is_empty()).then_some(bytes)) }
    }

    /// An empty body.
    pub fn empty() -> Self {
        Self { state: State::Done }
    }

    /// A body produced while it is sent.
    pub fn streaming(producer: Producer) -> Self {
        Self { state: State::Streaming(producer) }
    }

    /// A body of the frames sent on `frames`, ending when every sender is dropped (dropping the
    /// body closes the channel, which tells the sending task the client is gone).
    pub fn channel(frames: tokio::sync::mpsc::Receiver<Bytes>) -> Self {
        Self { state: State::Channel(frames) }
    }

    /// The same body, with a [`Producer`]'s work (selecting and encoding a list) moved to a
    /// thread of its own at a lower priority ([`shardmetrics_plumbing::bulk`]) that hands
    /// chunks over a channel of [`OFF_RUNTIME_CHUNKS`]: a 45 MB list then costs the runtime
    /// worker only the TLS writes, small queries on that worker do not wait behind its
    /// encoding, and on busy cores the scheduler runs them first. The thread stops when the body
    /// is dropped (the client went away). If no thread can be started, tokio's blocking pool
    /// does the work at the normal priority. Other bodies are returned as they are. Call it
    /// inside a tokio runtime.
    pub fn produced_off_runtime(self) -> Self {
        let State::Streaming(producer) = self.state else { return self };
        let (tx, rx) = tokio::sync::mpsc::channel(OFF_RUNTIME_CHUNKS);
        let pump = |(producer, tx): (Producer, tokio::sync::mpsc::Sender<Bytes>)| {
            let mut body = Body::streaming(producer);
            while let Some(chunk) = body.next_chunk() {
                if tx.blocking_send(chunk).is_err() {
                    return;
                }
            }
        };
        if let Err(back) = shardmetrics_plumbing::bulk::spawn_with("bulk-list", (producer, tx), pump) {
            drop(tokio::task::spawn_blocking(move || pump(back)));
        }
        Body::channel(rx)
    }

    /// Reads the whole body (for tests and small internal uses; not for channel bodies).
    pub fn collect_bytes(mut self) -> Vec<u8> {
        let mut out = Vec::new();
        while let Some(chunk) = self.next_chunk() {
            out.extend_from_slice(&chunk);
        }
        out
    }

    /// The next frame's bytes, or `None` at the end.
    fn next_chunk(&mut self) -> Option<Bytes> {
        match &mut self.state {
            State::Full(b) => {
                let b = b.take();
                self.state = State::Done;
                b
            }
            State::Streaming(producer) => {
                let mut buf = Vec::with_capacity(CHUNK_BYTES + CHUNK_BYTES / 4);
                let mut more = true;
                while more && buf.len() < CHUNK_BYTES {
                    more = producer(&mut buf);
                }
                if !more {
                    self.state = State::Done;
                }
                if buf.is_empty() { None } else { Some(Bytes::from(buf)) }
            }
            State::Channel(_) | State::Done => None,
        }
    }
}

impl http_body::Body for Body {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        if let State::Channel(frames) = &mut self.state {
            return match frames.poll_recv(cx) {
                Poll::Ready(Some(b)) => Poll::Ready(Some(Ok(Frame::data(b)))),
                Poll::Ready(None) => {
                    self.state = State::Done;
                    Poll::Ready(None)
                }
                Poll::Pending => Poll::Pending,
            };
        }
        Poll::Ready(self.next_chunk().map(|b| Ok(Frame::data(b))))
    }

    fn is_end_stream(&self) -> bool {
        matches!(self.state, State::Done | State::Full(None))
    }

    fn size_hint(&self) -> SizeHint {
        match &self.state {
            State::Full(Some(b)) => SizeHint::with_exact(b.len() as u64),
            State::Full(None) | State::Done => SizeHint::with_exact(0),
            State::Streaming(_) | State::Channel(_) => SizeHint::default(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_streaming_body_comes_out_in_bounded_chunks_and_whole() {
        let mut n = 0;
        let mut body = Body::streaming(Box::new(move |out: &mut Vec<u8>| {
            out.extend_from_slice(&[b'x'; 1000]);
            n += 1;
            n < 200
        }));
        let mut total = 0;
        let mut chunks = 0;
        while let Some(c) = body.next_chunk() {
            assert!(c.len() <= CHUNK_BYTES + 1000);
            total += c.len();
            chunks += 1;
        }
        assert_eq!(total, 200_000);
        assert!(chunks >= 3, "{chunks} chunks");
        assert!(http_body::Body::is_end_stream(&body));
    }

    #[tokio::test]
    async fn a_body_produced_off_the_runtime_arrives_whole_and_stops_when_dropped() {
        use http_body_util::BodyExt;
        let producer = |n: usize| -> Producer {
            let mut i = 0;
            Box::new(move |out: &mut Vec<u8>| {
                out.extend_from_slice(format!("{i:08}").as_bytes());
                i += 1;
                i < n
            })
        };
        let got = Body::streaming(producer(100_000)).produced_off_runtime().collect().await.unwrap().to_bytes();
        let want: Vec<u8> = (0..100_000).flat_map(|i| format!("{i:08}").into_bytes()).collect();
        assert_eq!(got.len(), want.len());
        assert!(got == want, "same bytes in the same order");
        // A client that goes away: the producing thread ends instead of encoding the rest.
        let (done_tx, done_rx) = std::sync::mpsc::channel();
        let endless: Producer = Box::new(move |out: &mut Vec<u8>| {
            out.extend_from_slice(&[0; 1024]);
            let _ = done_tx.send(());
            true
        });
        let mut body = Body::streaming(endless).produced_off_runtime();
        let first = body.frame().await;
        assert!(first.is_some());
        drop(body);
        let mut produced = 0;
        while done_rx.recv_timeout(std::time::Duration::from_secs(5)).is_ok() {
            produced += 1;
            assert!(produced < 10_000, "the producer keeps going after the body was dropped");
        }
        let full = Body::full(&b"abc"[..]).produced_off_runtime();
        assert_eq!(http_body::Body::size_hint(&full).exact(), Some(3), "other bodies unchanged");
    }

    #[test]
    fn a_full_body_reports_its_exact_size() {
        let body = Body::full(&b"abc"[..]);
        assert_eq!(http_body::Body::size_hint(&body).exact(), Some(3));
        assert_eq!(body.collect_bytes(), b"abc");
        assert!(http_body::Body::is_end_stream(&Body::full(Bytes::new())));
    }
}
