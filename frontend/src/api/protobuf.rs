//! Kubernetes protobuf encoding (`application/vnd.kubernetes.protobuf`): the `k8s\0` magic,
//! then a `runtime.Unknown` whose `raw` holds the object, with the field numbers of
//! `k8s.io/metrics/pkg/apis/metrics/v1beta1/generated.proto` and apimachinery's
//! `generated.proto` files. Messages are written by hand as prost structs (no protoc).
//!
//! Lists: the envelope's length prefix needs the total size before the first byte, so a list's
//! items are encoded (each item's length, then its bytes) as they are selected, into pieces of
//! about 64 KiB, and the pieces are then sent in order. The list holds its encoding, never its
//! selected items, and holds it LZ4-compressed ([`HeldPiece`]): ~170 bytes a pod encoded, far
//! less compressed (names, keys and label sets repeat), so a 150k-pod list no longer holds its
//! 25 MB while it is sent (a frontend's peak RSS in the standard scenario fell from 142-146 to
//! 122-127 MiB); each piece is decompressed as it goes out.

use std::collections::BTreeMap;

use prost::Message;

use super::body::Body;
use super::items::{Chunks, NodeItem, PodItem, all_at_once};
use super::version::ApiVersion;
use super::quantity::{Cpu, Memory};

/// The four bytes that start every Kubernetes protobuf body.
pub const MAGIC: &[u8; 4] = b"k8s\0";

/// `runtime.TypeMeta`.
#[derive(Clone, PartialEq, Message)]
pub struct TypeMeta {
    /// `apiVersion`.
    #[prost(string, optional, tag = "1")]
    pub api_version: Option<String>,
    /// `kind`.
    #[prost(string, optional, tag = "2")]
    pub kind: Option<String>,
}

/// `runtime.Unknown`: the envelope of every protobuf body.
#[derive(Clone, PartialEq, Message)]
pub struct Unknown {
    /// Type of `raw`.
    #[prost(message, optional, tag = "1")]
    pub type_meta: Option<TypeMeta>,
    /// The encoded object.
    #[prost(bytes = "vec", optional, tag = "2")]
    pub raw: Option<Vec<u8>>,
    /// Always empty.
    #[prost(string, optional, tag = "3")]
    pub content_encoding: Option<String>,
    /// Always empty.
    #[prost(string, optional, tag = "4")]
    pub content_type: Option<String>,
}

/// `metav1.Time` (seconds only, as apimachinery writes it).
#[derive(Clone, PartialEq, Message)]
pub struct Time {
    /// Unix seconds.
    #[prost(int64, optional, tag = "1")]
    pub seconds: Option<i64>,
    /// Never set by apimachinery; read for completeness.
    #[prost(int32, optional, tag = "2")]
    pub nanos: Option<i32>,
}

/// `metav1.Duration`.
#[derive(Clone, PartialEq, Message)]
pub struct Duration {
    /// Nanoseconds.
    #[prost(int64, optional, tag = "1")]
    pub duration: Option<i64>,
}

/// `resource.Quantity`: its canonical string.
#[derive(Clone, PartialEq, Message)]
pub struct Quantity {
    /// Canonical text (`123456n`, `12340Ki`).
    #[prost(string, optional, tag = "1")]
    pub string: Option<String>,
}

/// `metav1.ObjectMeta`, the fields used here.
#[derive(Clone, PartialEq, Message)]
pub struct ObjectMeta {
    /// `name`.
    #[prost(string, optional, tag = "1")]
    pub name: Option<String>,
    /// `namespace`.
    #[prost(string, optional, tag = "3")]
    pub namespace: Option<String>,
    /// `selfLink` (unused).
    #[prost(string, optional, tag = "4")]
    pub self_link: Option<String>,
    /// `uid` (unused).
    #[prost(string, optional, tag = "5")]
    pub uid: Option<String>,
    /// `resourceVersion` (unused).
    #[prost(string, optional, tag = "6")]
    pub resource_version: Option<String>,
    /// `creationTimestamp`.
    #[prost(message, optional, tag = "8")]
    pub creation_timestamp: Option<Time>,
    /// `labels`.
    #[prost(btree_map = "string, string", tag = "11")]
    pub labels: BTreeMap<String, String>,
}

/// `metav1.ListMeta`, the fields used here.
#[derive(Clone, PartialEq, Message)]
pub struct ListMeta {
    /// `selfLink` (unused).
    #[prost(string, optional, tag = "1")]
    pub self_link: Option<String>,
    /// `resourceVersion` (unused).
    #[prost(string, optional, tag = "2")]
    pub resource_version: Option<String>,
    /// `continue` (unused).
    #[prost(string, optional, tag = "3")]
    pub r#continue: Option<String>,
}

/// `v1beta1.NodeMetrics`.
#[derive(Clone, PartialEq, Message)]
pub struct NodeMetrics {
    /// Name, creation time, labels.
    #[prost(message, optional, tag = "1")]
    pub metadata: Option<ObjectMeta>,
    /// Kubelet sample time.
    #[prost(message, optional, tag = "2")]
    pub timestamp: Option<Time>,
    /// Rate window.
    #[prost(message, optional, tag = "3")]
    pub window: Option<Duration>,
    /// `cpu`, `memory` and, when the kubelet reports it, `swap`.
    #[prost(btree_map = "string, message", tag = "4")]
    pub usage: BTreeMap<String, Quantity>,
}

/// `v1beta1.ContainerMetrics`.
#[derive(Clone, PartialEq, Message)]
pub struct ContainerMetrics {
    /// Container name.
    #[prost(string, optional, tag = "1")]
    pub name: Option<String>,
    /// `cpu`, `memory` and, when the kubelet reports it, `swap`.
    #[prost(btree_map = "string, message", tag = "2")]
    pub usage: BTreeMap<String, Quantity>,
}

/// `v1beta1.PodMetrics`.
#[derive(Clone, PartialEq, Message)]
pub struct PodMetrics {
    /// Name, namespace, creation time, labels.
    #[prost(message, optional, tag = "1")]
    pub metadata: Option<ObjectMeta>,
    /// Earliest container sample time.
    #[prost(message, optional, tag = "2")]
    pub timestamp: Option<Time>,
    /// That container's window.
    #[prost(message, optional, tag = "3")]
    pub window: Option<Duration>,
    /// Containers by name.
    #[prost(message, repeated, tag = "4")]
    pub containers: Vec<ContainerMetrics>,
}

/// `v1beta1.NodeMetricsList`.
#[derive(Clone, PartialEq, Message)]
pub struct NodeMetricsList {
    /// Empty list metadata.
    #[prost(message, optional, tag = "1")]
    pub metadata: Option<ListMeta>,
    /// Items.
    #[prost(message, repeated, tag = "2")]
    pub items: Vec<NodeMetrics>,
}

/// `v1beta1.PodMetricsList`.
#[derive(Clone, PartialEq, Message)]
pub struct PodMetricsList {
    /// Empty list metadata.
    #[prost(message, optional, tag = "1")]
    pub metadata: Option<ListMeta>,
    /// Items.
    #[prost(message, repeated, tag = "2")]
    pub items: Vec<PodMetrics>,
}

fn time(ms: i64) -> Option<Time> {
    Some(Time { seconds: Some(ms.div_euclid(1000)), nanos: None })
}

fn usage(cpu: u64, memory: u64, swap: Option<u64>) -> BTreeMap<String, Quantity> {
    let mut map = BTreeMap::from([
        ("cpu".to_owned(), Quantity { string: Some(Cpu(cpu).to_string()) }),
        ("memory".to_owned(), Quantity { string: Some(Memory(memory).to_string()) }),
    ]);
    if let Some(swap) = swap {
        map.insert("swap".to_owned(), Quantity { string: Some(Memory(swap).to_string()) });
    }
    map
}

/// The protobuf NodeMetrics of `item` (`now_ms` = creationTimestamp).
pub fn node_message(item: &NodeItem, now_ms: i64) -> NodeMetrics {
    let u = &item.usage.usage;
    NodeMetrics {
        metadata: Some(ObjectMeta {
            name: Some(item.usage.name.to_string()),
            creation_timestamp: time(now_ms),
            labels: item.labels.as_deref().cloned().unwrap_or_default(),
            ..ObjectMeta::default()
        }),
        timestamp: time(u.timestamp_ms),
        window: Some(Duration { duration: Some(u.window_ms.saturating_mul(1_000_000)) }),
        usage: usage(u.cpu_nanocores, u.memory_bytes, u.swap_bytes),
    }
}

/// The protobuf PodMetrics of `item` (`now_ms` = creationTimestamp).
pub fn pod_message(item: &PodItem, now_ms: i64) -> PodMetrics {
    let p = &item.usage;
    PodMetrics {
        metadata: Some(ObjectMeta {
            name: Some(p.name.to_string()),
            namespace: Some(p.namespace.to_string()),
            creation_timestamp: time(now_ms),
            labels: item.labels.as_deref().cloned().unwrap_or_default(),
            ..ObjectMeta::default()
        }),
        timestamp: time(p.timestamp_ms),
        window: Some(Duration { duration: Some(p.window_ms.saturating_mul(1_000_000)) }),
        containers: p
            .containers
            .iter()
            .map(|c| ContainerMetrics {
                name: Some(c.name.to_string()),
                usage: usage(c.cpu_nanocores, c.memory_bytes, c.swap_bytes),
            })
            .collect(),
    }
}

/// Hand-written encoding of the served messages straight from borrowed data: the same bytes
/// prost would write for [`node_message`] / [`pod_message`] (tests check they decode equal),
/// without building owned messages. An item is written once (its length is then known).
mod hand {
    use prost::encoding::{WireType, encoded_len_varint, key_len};

    use crate::api::out::put_short;

    use crate::api::quantity::Text as QuantityText;
    use crate::api::items::{LastLabels, NodeItem, PodItem};
    use crate::api::quantity::{Cpu, Memory};
    use crate::metadata::Labels;

    /// prost's `encode_varint` with the one-byte case first: nearly every tag and length
    /// written here is below 128, and prost's general loop (a capacity check per byte through
    /// `BufMut`) costs ~10x more per byte. Longer ones are built in a 10-byte array appended
    /// whole (two stores, no `memcpy` call) and cut back to their length.
    #[inline]
    pub(super) fn put_varint(v: u64, out: &mut Vec<u8>) {
        if v < 0x80 {
            out.push(v as u8);
        } else {
            let (bytes, n) = varint_bytes(v);
            let len = out.len();
            out.extend_from_slice(&bytes);
            out.truncate(len + n);
        }
    }

    /// The varint encoding of `v` in an array, and its length.
    #[inline]
    pub(super) fn varint_bytes(mut v: u64) -> ([u8; 10], usize) {
        let mut bytes = [0u8; 10];
        let mut n = 0;
        while v >= 0x80 && n < 9 {
            bytes[n] = (v as u8) | 0x80;
            v >>= 7;
            n += 1;
        }
        bytes[n] = v as u8;
        (bytes, n + 1)
    }

    /// A field key (prost's `encode_key`) through [`put_varint`].
    #[inline]
    fn put_key(tag: u32, wire_type: WireType, out: &mut Vec<u8>) {
        put_varint((u64::from(tag) << 3) | wire_type as u64, out);
    }

    /// Length of a length-delimited field with tag `tag` and a payload of `len` bytes.
    fn ld_len(tag: u32, len: usize) -> usize {
        key_len(tag) + encoded_len_varint(len as u64) + len
    }

    /// The key and length of a length-delimited field: one 2-byte append in the common case
    /// (field numbers below 16, payloads below 128 bytes).
    #[inline(always)]
    fn put_ld(tag: u32, len: usize, out: &mut Vec<u8>) {
        if tag < 16 && len < 0x80 {
            out.extend_from_slice(&[((tag << 3) | WireType::LengthDelimited as u32) as u8, len as u8]);
        } else {
            put_key(tag, WireType::LengthDelimited, out);
            put_varint(len as u64, out);
        }
    }

    #[inline]
    fn put_bytes(tag: u32, b: &[u8], out: &mut Vec<u8>) {
        put_ld(tag, b.len(), out);
        put_short(out, b);
    }

    /// `Time{seconds}` or `Duration{duration}`: one varint field 1.
    fn int_msg_len(v: i64) -> usize {
        key_len(1) + encoded_len_varint(v as u64)
    }

    /// `Time{seconds}` or `Duration{duration}` as field `tag` (below 16): key, length, the
    /// inner key and the varint, built in one array appended whole.
    #[inline]
    fn put_int_msg(tag: u32, v: i64, out: &mut Vec<u8>) {
        let (varint, n) = varint_bytes(v as u64);
        let mut bytes = [0u8; 13];
        bytes[0] = ((tag << 3) | WireType::LengthDelimited as u32) as u8;
        bytes[1] = (1 + n) as u8;
        bytes[2] = (1 << 3) | WireType::Varint as u8;
        bytes[3..].copy_from_slice(&varint);
        let len = out.len();
        out.extend_from_slice(&bytes);
        out.truncate(len + 3 + n);
    }

    fn entry_len(key: &[u8], value_len: usize) -> usize {
        ld_len(1, key.len()) + ld_len(2, value_len)
    }

    /// The quantity texts of one `usage` map: cpu, memory and, when reported, swap.
    struct UsageTexts {
        cpu: QuantityText,
        mem: QuantityText,
        swap: Option<QuantityText>,
    }

    impl UsageTexts {
        fn new(cpu_nanocores: u64, memory_bytes: u64, swap_bytes: Option<u64>) -> Self {
            Self { cpu: Cpu(cpu_nanocores).text(), mem: Memory(memory_bytes).text(), swap: swap_bytes.map(|s| Memory(s).text()) }
        }
    }

    /// The `usage` map (`cpu`, `memory`, `swap` → Quantity{string}) as repeated field `tag`.
    fn usage_len(tag: u32, usage: &UsageTexts) -> usize {
        let entry = |key: &[u8], q: &QuantityText| ld_len(tag, entry_len(key, ld_len(1, q.as_bytes().len())));
        entry(b"cpu", &usage.cpu) + entry(b"memory", &usage.mem) + usage.swap.as_ref().map_or(0, |s| entry(b"swap", s))
    }

    fn put_usage(tag: u32, usage: &UsageTexts, out: &mut Vec<u8>) {
        let tag = ((tag << 3) | WireType::LengthDelimited as u32) as u8;
        put_entry(tag, b"cpu", usage.cpu.as_bytes(), out);
        put_entry(tag, b"memory", usage.mem.as_bytes(), out);
        if let Some(swap) = &usage.swap {
            put_entry(tag, b"swap", swap.as_bytes(), out);
        }
    }

    /// One `usage` map entry (`key` → Quantity{string: `q`}) as a field whose key byte is
    /// `tag_key`: every length is below 128 (a quantity's text is at most 22 bytes), so the
    /// bytes around the key are fixed-size appends.
    #[inline]
    fn put_entry<const K: usize>(tag_key: u8, key: &[u8; K], q: &[u8], out: &mut Vec<u8>) {
        let q_len = 2 + q.len();
        out.extend_from_slice(&[tag_key, (2 + K + 2 + q_len) as u8, (1 << 3) | 2, K as u8]);
        out.extend_from_slice(key);
        out.extend_from_slice(&[(2 << 3) | 2, q_len as u8, (1 << 3) | 2, q.len() as u8]);
        put_short(out, q);
    }

    /// What the items of one answer share: the creation time, and the encoding of the last
    /// label set written ([`LastLabels`]).
    pub(super) struct Ctx {
        /// `creationTimestamp`, Unix seconds.
        now_s: i64,
        /// The last label set's `ObjectMeta.labels` entries.
        labels: LastLabels,
    }

    impl Ctx {
        /// A context for items created at `now_s` (Unix seconds).
        pub(super) fn new(now_s: i64) -> Ctx {
            Ctx { now_s, labels: LastLabels::default() }
        }

        /// The `ObjectMeta.labels` entries of `labels` (field 11, in key order).
        fn labels(&mut self, labels: Option<&Labels>) -> &[u8] {
            self.labels.encoded(labels, |labels, out| {
                for (k, v) in labels.iter() {
                    put_ld(11, entry_len(k.as_bytes(), v.len()), out);
                    put_bytes(1, k.as_bytes(), out);
                    put_bytes(2, v.as_bytes(), out);
                }
            })
        }
    }

    fn put_meta(name: &str, namespace: Option<&str>, labels: Option<&Labels>, ctx: &mut Ctx, out: &mut Vec<u8>) {
        let now_s = ctx.now_s;
        let labels = ctx.labels(labels);
        let mut len = ld_len(1, name.len()) + ld_len(8, int_msg_len(now_s)) + labels.len();
        if let Some(ns) = namespace {
            len += ld_len(3, ns.len());
        }
        put_ld(1, len, out);
        put_bytes(1, name.as_bytes(), out);
        if let Some(ns) = namespace {
            put_bytes(3, ns.as_bytes(), out);
        }
        put_int_msg(8, now_s, out);
        put_short(out, labels);
    }

    fn window_ns(window_ms: i64) -> i64 {
        window_ms.saturating_mul(1_000_000)
    }

    /// Writes a NodeMetrics (without its own length prefix).
    pub(super) fn put_node(item: &NodeItem, ctx: &mut Ctx, out: &mut Vec<u8>) {
        let u = &item.usage.usage;
        put_meta(&item.usage.name, None, item.labels.as_ref(), ctx, out);
        put_int_msg(2, u.timestamp_ms.div_euclid(1000), out);
        put_int_msg(3, window_ns(u.window_ms), out);
        put_usage(4, &UsageTexts::new(u.cpu_nanocores, u.memory_bytes, u.swap_bytes), out);
    }

    fn container_len(name: &str, usage: &UsageTexts) -> usize {
        ld_len(1, name.len()) + usage_len(2, usage)
    }

    /// Writes a PodMetrics (without its own length prefix).
    pub(super) fn put_pod(item: &PodItem, ctx: &mut Ctx, out: &mut Vec<u8>) {
        let p = &item.usage;
        put_meta(&p.name, Some(&p.namespace), item.labels.as_ref(), ctx, out);
        put_int_msg(2, p.timestamp_ms.div_euclid(1000), out);
        put_int_msg(3, window_ns(p.window_ms), out);
        for c in &p.containers {
            let usage = UsageTexts::new(c.cpu_nanocores, c.memory_bytes, c.swap_bytes);
            put_ld(4, container_len(&c.name, &usage), out);
            put_bytes(1, c.name.as_bytes(), out);
            put_usage(2, &usage, out);
        }
    }
}

fn type_meta(kind: &str, version: ApiVersion) -> TypeMeta {
    TypeMeta { api_version: Some(version.group_version().to_owned()), kind: Some(kind.to_owned()) }
}

/// A whole envelope around an already encoded object.
fn envelope(kind: &str, version: ApiVersion, raw: Vec<u8>) -> Vec<u8> {
    let unknown = Unknown {
        type_meta: Some(type_meta(kind, version)),
        raw: Some(raw),
        content_encoding: Some(String::new()),
        content_type: Some(String::new()),
    };
    let mut out = Vec::with_capacity(4 + unknown.encoded_len());
    out.extend_from_slice(MAGIC);
    // Encoding into a Vec with enough capacity cannot fail.
    let _ = unknown.encode(&mut out);
    out
}

/// One NodeMetrics of `version` in its envelope.
pub fn node(item: &NodeItem, now_ms: i64, version: ApiVersion) -> Vec<u8> {
    let mut raw = Vec::with_capacity(256);
    hand::put_node(item, &mut hand::Ctx::new(now_ms.div_euclid(1000)), &mut raw);
    envelope("NodeMetrics", version, raw)
}

/// One PodMetrics of `version` in its envelope.
pub fn pod(item: &PodItem, now_ms: i64, version: ApiVersion) -> Vec<u8> {
    let mut raw = Vec::with_capacity(256);
    hand::put_pod(item, &mut hand::Ctx::new(now_ms.div_euclid(1000)), &mut raw);
    envelope("PodMetrics", version, raw)
}

/// A list envelope: see the module docs. The items are encoded as they are taken from
/// `chunks`, on the body's first read (the envelope's length prefix needs every item's size
/// before the first byte), and the encoded bytes are then sent in order: the list holds its
/// encoding, compressed ([`HeldPiece`]), never the items themselves.
fn list<T: Send + 'static>(
    kind: &'static str,
    version: ApiVersion,
    mut chunks: Chunks<T>,
    now_ms: i64,
    put: fn(&T, &mut hand::Ctx, &mut Vec<u8>),
) -> Body {
    let now_s = now_ms.div_euclid(1000);
    // The encoded items, in pieces of about CHUNK_BYTES, sent from the back (reversed once).
    let mut pieces: Option<Vec<HeldPiece>> = None;
    Body::streaming(Box::new(move |out: &mut Vec<u8>| {
        let pieces = match &mut pieces {
            Some(p) => p,
            None => {
                let (encoded, items_len) = encode_items(&mut chunks, now_s, put);
                write_list_header(out, kind, version, items_len);
                pieces.insert(encoded.into_iter().rev().collect())
            }
        };
        if let Some(piece) = pieces.pop() {
            let Some(piece) = piece.into_bytes() else {
                // Only a defect can get here (the piece was compressed by this process): the
                // body ends short, which the client reports as a truncated object.
                tracing::error!(kind, "a held list piece did not decompress; the response is cut short");
                pieces.clear();
                return false;
            };
            if out.is_empty() {
                // A piece is a whole frame (at least CHUNK_BYTES but the last): handed over,
                // not copied.
                *out = piece;
            } else {
                out.extend_from_slice(&piece);
            }
            return true;
        }
        // Unknown.contentEncoding = "", Unknown.contentType = "".
        prost::encoding::string::encode(3, &String::new(), out);
        prost::encoding::string::encode(4, &String::new(), out);
        false
    }))
}

/// One piece of a list's encoding while the list waits to be sent: LZ4 block-compressed
/// (`lz4_flex`, on the list's bulk thread) when more pieces follow it; the list's only or last
/// piece is held as it is, so small lists are never compressed. A 150k-pod list's p50 in the
/// standard scenario stayed at 133-157 ms.
enum HeldPiece {
    /// Encoded bytes as they are sent.
    Raw(Vec<u8>),
    /// LZ4 block of `len` encoded bytes.
    Lz4 {
        /// The compressed block, allocated at its size.
        block: Box<[u8]>,
        /// Its decompressed length in bytes.
        len: usize,
    },
}

impl HeldPiece {
    /// `piece` compressed (`scratch` is reused between pieces).
    fn compress(piece: &[u8], scratch: &mut Vec<u8>) -> HeldPiece {
        scratch.resize(lz4_flex::block::get_maximum_output_size(piece.len()), 0);
        match lz4_flex::block::compress_into(piece, scratch) {
            Ok(n) => HeldPiece::Lz4 { block: scratch[..n].into(), len: piece.len() },
            // A scratch of the maximum output size cannot be too small; hold it as it is.
            Err(_) => HeldPiece::Raw(piece.to_vec()),
        }
    }

    /// The encoded bytes, or `None` if a block does not decompress to its length.
    fn into_bytes(self) -> Option<Vec<u8>> {
        match self {
            HeldPiece::Raw(bytes) => Some(bytes),
            HeldPiece::Lz4 { block, len } => {
                let mut out = vec![0; len];
                (lz4_flex::block::decompress_into(&block, &mut out).ok()? == len).then_some(out)
            }
        }
    }

    /// Encoded length in bytes.
    fn len(&self) -> usize {
        match self {
            HeldPiece::Raw(bytes) => bytes.len(),
            HeldPiece::Lz4 { len, .. } => *len,
        }
    }
}

/// Unknown.raw and List.items: field 2, length-delimited.
const FIELD2_LD: u8 = (2 << 3) | 2;

/// Room a piece has past a whole frame for the item that crosses it, in bytes: more than
/// nearly every item takes (~170 bytes a pod; one that takes more grows its piece).
const PIECE_ROOM: usize = 2048;

/// Every item of `chunks` encoded as a `List.items` field, in pieces of about
/// [`super::body::CHUNK_BYTES`] (every piece but the last compressed), with the pieces' total
/// encoded length in bytes.
fn encode_items<T>(chunks: &mut Chunks<T>, now_s: i64, put: fn(&T, &mut hand::Ctx, &mut Vec<u8>)) -> (Vec<HeldPiece>, usize) {
    let piece_bytes = super::body::CHUNK_BYTES;
    let mut pieces = Vec::new();
    // One piece buffer and one compression scratch, reused for every piece.
    let mut piece: Vec<u8> = Vec::with_capacity(piece_bytes + PIECE_ROOM);
    let mut scratch = Vec::new();
    let mut ctx = hand::Ctx::new(now_s);
    while let Some(chunk) = chunks() {
        for item in &chunk {
            // A piece is cut once it makes a whole frame (CHUNK_BYTES), with room for the
            // item that crosses that size.
            if piece.len() >= piece_bytes {
                pieces.push(HeldPiece::compress(&piece, &mut scratch));
                piece.clear();
            }
            // Written once, straight into the piece behind a two-byte length (an item of 128 to
            // 16 383 bytes, as nearly all are), which is then filled in; another length moves
            // the item once. Computing the length first would format every quantity twice, and
            // a scratch buffer cost a copy of every item.
            piece.push(FIELD2_LD);
            let at = piece.len();
            piece.extend_from_slice(&[0, 0]);
            put(item, &mut ctx, &mut piece);
            let (len, n) = hand::varint_bytes((piece.len() - at - 2) as u64);
            if n == 2 {
                piece[at..at + 2].copy_from_slice(&len[..2]);
            } else {
                piece.splice(at..at + 2, len[..n].iter().copied());
            }
        }
    }
    if !piece.is_empty() {
        pieces.push(HeldPiece::Raw(piece));
    }
    let total = pieces.iter().map(HeldPiece::len).sum();
    (pieces, total)
}

/// The envelope up to a list's items: magic, TypeMeta, the `raw` field's tag and length (for
/// `items_len` bytes of encoded items), and the empty ListMeta.
fn write_list_header(out: &mut Vec<u8>, kind: &str, version: ApiVersion, items_len: usize) {
    let list_meta = ListMeta::default();
    let list_meta_len = list_meta.encoded_len();
    let raw_len = 1 + prost::encoding::encoded_len_varint(list_meta_len as u64) + list_meta_len + items_len;
    out.extend_from_slice(MAGIC);
    let tm = type_meta(kind, version);
    prost::encoding::message::encode(1, &tm, out);
    out.push(FIELD2_LD);
    prost::encoding::encode_varint(raw_len as u64, out);
    prost::encoding::message::encode(1, &list_meta, out);
}

/// A streamed NodeMetricsList envelope of `version`.
pub fn node_list(items: Vec<NodeItem>, now_ms: i64, version: ApiVersion) -> Body {
    list("NodeMetricsList", version, all_at_once(items), now_ms, hand::put_node)
}

/// A streamed PodMetricsList envelope of `version`.
pub fn pod_list(items: Vec<PodItem>, now_ms: i64, version: ApiVersion) -> Body {
    pod_list_chunks(all_at_once(items), now_ms, version)
}

/// A PodMetricsList envelope of `version` of the items `chunks` hands out (see [`list`]).
pub fn pod_list_chunks(chunks: Chunks<PodItem>, now_ms: i64, version: ApiVersion) -> Body {
    list("PodMetricsList", version, chunks, now_ms, hand::put_pod)
}

/// Decodes an envelope (for tests and clients): the type and the raw object.
pub fn decode_envelope(bytes: &[u8]) -> Result<(TypeMeta, Vec<u8>), String> {
    let rest = bytes.strip_prefix(MAGIC.as_slice()).ok_or("missing k8s\\0 magic")?;
    let unknown = Unknown::decode(rest).map_err(|e| e.to_string())?;
    Ok((unknown.type_meta.unwrap_or_default(), unknown.raw.unwrap_or_default()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::json::tests::{node, pod};

    const NOW: i64 = 1_767_225_600_000;

    #[test]
    fn a_node_envelope_decodes_back_with_prost_to_the_same_values() {
        let bytes = super::node(&node("node-1"), NOW, ApiVersion::V1beta1);
        assert_eq!(&bytes[..4], b"k8s\0");
        let (tm, raw) = decode_envelope(&bytes).expect("envelope");
        assert_eq!((tm.api_version.as_deref(), tm.kind.as_deref()), (Some("metrics.k8s.io/v1beta1"), Some("NodeMetrics")));
        let m = NodeMetrics::decode(raw.as_slice()).expect("node");
        let meta = m.metadata.expect("metadata");
        assert_eq!(meta.name.as_deref(), Some("node-1"));
        assert_eq!(meta.labels.get("kubernetes.io/hostname").map(String::as_str), Some("node-1"));
        assert_eq!(meta.creation_timestamp.and_then(|t| t.seconds), Some(NOW / 1000));
        assert_eq!(m.timestamp.and_then(|t| t.seconds), Some((NOW - 3_500).div_euclid(1000)));
        assert_eq!(m.window.and_then(|w| w.duration), Some(15_012_000_000));
        assert_eq!(m.usage["cpu"].string.as_deref(), Some("123456n"));
        assert_eq!(m.usage["memory"].string.as_deref(), Some("12340Ki"));
    }

    #[test]
    fn field_numbers_match_k8s_io_metrics_generated_proto() {
        // NodeMetrics.metadata(1).name(1) = "n": 0a 03 0a 01 6e
        let m = NodeMetrics {
            metadata: Some(ObjectMeta { name: Some("n".into()), ..ObjectMeta::default() }),
            ..NodeMetrics::default()
        };
        assert_eq!(m.encode_to_vec(), [0x0a, 0x03, 0x0a, 0x01, b'n']);
        // ObjectMeta.namespace = 3, creationTimestamp = 8, labels = 11.
        let meta = ObjectMeta {
            namespace: Some("a".into()),
            creation_timestamp: Some(Time { seconds: Some(1), nanos: None }),
            labels: BTreeMap::from([("k".into(), "v".into())]),
            ..ObjectMeta::default()
        };
        assert_eq!(
            meta.encode_to_vec(),
            [0x1a, 0x01, b'a', 0x42, 0x02, 0x08, 0x01, 0x5a, 0x06, 0x0a, 0x01, b'k', 0x12, 0x01, b'v']
        );
        // PodMetrics.containers = 4, ContainerMetrics.usage = 2, Duration.duration = 1.
        let p = PodMetrics {
            window: Some(Duration { duration: Some(1) }),
            containers: vec![ContainerMetrics { name: Some("c".into()), usage: BTreeMap::new() }],
            ..PodMetrics::default()
        };
        assert_eq!(p.encode_to_vec(), [0x1a, 0x02, 0x08, 0x01, 0x22, 0x03, 0x0a, 0x01, b'c']);
    }

    fn hand_pod(item: &PodItem) -> Vec<u8> {
        let mut out = Vec::new();
        hand::put_pod(item, &mut hand::Ctx::new(NOW / 1000), &mut out);
        out
    }

    #[test]
    fn the_hand_encoder_writes_what_prost_decodes_to_the_reference_messages_with_exact_lengths() {
        let mut items = vec![pod("default", "web"), pod("kube-system", "x")];
        items[1].labels = Some(std::sync::Arc::new(BTreeMap::from([("app".into(), "x".into()), ("empty".into(), String::new())])));
        items[1].usage.timestamp_ms = -1_500; // negative int64 varints
        items[0].usage.containers[0].swap_bytes = Some(5 << 20); // a third usage entry
        for item in &items {
            assert_eq!(PodMetrics::decode(hand_pod(item).as_slice()).expect("decode"), pod_message(item, NOW));
        }
        let mut n = node("node-1");
        for swap in [None, Some(0)] {
            n.usage.usage.swap_bytes = swap;
            let mut out = Vec::new();
            hand::put_node(&n, &mut hand::Ctx::new(NOW / 1000), &mut out);
            let decoded = NodeMetrics::decode(out.as_slice()).expect("decode");
            assert_eq!(decoded.usage.get("swap").and_then(|q| q.string.as_deref()), swap.map(|_| "0"));
            assert_eq!(decoded, node_message(&n, NOW));
        }
        let decoded = PodMetrics::decode(hand_pod(&items[0]).as_slice()).expect("decode");
        assert_eq!(decoded.containers[0].usage["swap"].string.as_deref(), Some("5Mi"));
        assert!(!decoded.containers[1].usage.contains_key("swap"));
    }

    #[test]
    fn the_hand_encoder_writes_the_bytes_prost_writes() {
        // Quantities of every length and suffix, names around the short-copy sizes (3, 4, 8,
        // 16, 32 bytes and longer, 128+ for two-byte lengths), negative and large varints.
        let mut items = Vec::new();
        for (i, len) in [1usize, 3, 4, 7, 8, 15, 16, 17, 31, 32, 33, 64, 130].into_iter().enumerate() {
            let mut p = pod(&"n".repeat(len.min(63)), &"p".repeat(len));
            // Non-empty label values: prost leaves an empty map value out, Go (and the hand
            // encoder) writes it (`12 00`); that case is checked by decoding, above.
            p.labels = Some(std::sync::Arc::new(BTreeMap::from([("k".repeat(len), "v".repeat(i + 1)), ("app".into(), "x".repeat(len))])));
            p.usage.timestamp_ms = [-1_500, 0, NOW, i64::MIN / 2][i % 4];
            p.usage.window_ms = [15_012, 0, 1, 1 << 40][i % 4];
            p.usage.containers = (0..3)
                .map(|j| crate::store::ContainerUsage {
                    name: "c".repeat(len + j).into(),
                    cpu_nanocores: [0, 1, 999, 1_000_000_000, 123_456_789, u64::MAX][(i + j) % 6],
                    memory_bytes: [0, 1023, 1024, 5 << 20, 12_345_678, u64::MAX][(i + 2 * j) % 6],
                    swap_bytes: [None, Some(0), Some(3 << 30)][(i + j) % 3],
                })
                .collect();
            items.push(p);
        }
        for item in &items {
            assert_eq!(hand_pod(item), pod_message(item, NOW).encode_to_vec());
        }
        let mut n = node("node-1");
        n.usage.usage.swap_bytes = Some(7);
        let mut out = Vec::new();
        hand::put_node(&n, &mut hand::Ctx::new(NOW / 1000), &mut out);
        assert_eq!(out, node_message(&n, NOW).encode_to_vec());
    }

    #[test]
    fn a_streamed_pod_list_decodes_as_one_prost_message() {
        for n in [0usize, 1, 200] {
            let items: Vec<_> = (0..n).map(|i| pod("ns", &format!("p{i:04}"))).collect();
            let bytes = pod_list(items.clone(), NOW, ApiVersion::V1beta1).collect_bytes();
            let (tm, raw) = decode_envelope(&bytes).expect("envelope");
            assert_eq!(tm.kind.as_deref(), Some("PodMetricsList"));
            let list = PodMetricsList::decode(raw.as_slice()).expect("list");
            assert_eq!(list.items.len(), n);
            for (got, want) in list.items.iter().zip(&items) {
                assert_eq!(*got, pod_message(want, NOW));
            }
            let unknown = Unknown::decode(&bytes[4..]).expect("unknown");
            assert_eq!(unknown.content_type.as_deref(), Some(""));
        }
        let bytes = node_list(vec![node("a")], NOW, ApiVersion::V1beta1).collect_bytes();
        let (_, raw) = decode_envelope(&bytes).expect("envelope");
        assert_eq!(NodeMetricsList::decode(raw.as_slice()).expect("list").items.len(), 1);
    }

    #[test]
    fn list_items_shorter_than_128_or_longer_than_16383_bytes_get_their_own_length_prefix() {
        let mut tiny = pod("a", "b");
        tiny.usage.containers.truncate(1);
        let mut huge = pod("a", "c");
        huge.labels = Some(std::sync::Arc::new(BTreeMap::from([("big".into(), "x".repeat(20_000))])));
        // Label sets shared by address (interned, as a ReplicaSet's), equal but not shared, and
        // none, one after another: the encoder reuses the last set's bytes by address.
        let shared = std::sync::Arc::new(BTreeMap::from([("app".to_owned(), "web".to_owned())]));
        let with = |name: &str, labels: Option<crate::metadata::Labels>| PodItem { labels, ..pod("a", name) };
        let items = vec![
            tiny,
            with("d", Some(shared.clone())),
            with("d1", Some(shared.clone())),
            with("d2", Some(std::sync::Arc::new((*shared).clone()))),
            with("d3", None),
            with("d4", Some(shared.clone())),
            huge,
            pod("a", "e"),
        ];
        assert!(hand_pod(&items[0]).len() < 128 && hand_pod(&items[6]).len() > 16_383);
        let bytes = pod_list(items.clone(), NOW, ApiVersion::V1).collect_bytes();
        let (_, raw) = decode_envelope(&bytes).expect("envelope");
        let list = PodMetricsList::decode(raw.as_slice()).expect("list");
        assert_eq!(list.items, items.iter().map(|i| pod_message(i, NOW)).collect::<Vec<_>>());
    }

    #[test]
    fn a_list_taken_in_chunks_is_the_bytes_of_the_same_list_taken_at_once() {
        // More than one 64 KiB piece of encoded items, from uneven chunks.
        let items: Vec<_> = (0..1500).map(|i| pod(&format!("ns{}", i / 700), &format!("p{i:04}"))).collect();
        let whole = pod_list(items.clone(), NOW, ApiVersion::V1).collect_bytes();
        assert!(whole.len() > 2 * crate::api::body::CHUNK_BYTES, "{} bytes", whole.len());
        let chunked = pod_list_chunks(crate::api::items::uneven_chunks(items.clone(), &[1, 0, 999, 7]), NOW, ApiVersion::V1).collect_bytes();
        assert!(chunked == whole, "same bytes");
        let (_, raw) = decode_envelope(&chunked).expect("envelope");
        let list = PodMetricsList::decode(raw.as_slice()).expect("list");
        assert_eq!(list.items.len(), 1500);
        assert_eq!(list.items[1499], pod_message(&items[1499], NOW));
    }

    #[test]
    fn a_list_waiting_to_be_sent_holds_its_pieces_compressed_but_the_last() {
        let items: Vec<_> = (0..3000).map(|i| pod(&format!("team-{}", i / 700), &format!("web-7d9f{i:05}-x{i}"))).collect();
        let (pieces, total) = encode_items(&mut all_at_once(items), NOW / 1000, hand::put_pod);
        assert!(pieces.len() >= 3, "{} pieces", pieces.len());
        let held: usize = pieces
            .iter()
            .map(|p| match p {
                HeldPiece::Lz4 { block, .. } => block.len(),
                HeldPiece::Raw(b) => b.len(),
            })
            .sum();
        assert!(matches!(pieces.last(), Some(HeldPiece::Raw(_))), "the last piece is sent as it is");
        assert!(pieces[..pieces.len() - 1].iter().all(|p| matches!(p, HeldPiece::Lz4 { .. })));
        assert!(held * 2 < total, "held {held} of {total} encoded bytes");
        // Round trip; a damaged block is refused, never a panic or a short piece.
        let first = pieces.into_iter().next().expect("a piece");
        let HeldPiece::Lz4 { block, len } = first else { panic!("compressed") };
        let mut damaged = block.to_vec();
        damaged.truncate(damaged.len() / 2);
        assert!(HeldPiece::Lz4 { block: damaged.into(), len }.into_bytes().is_none());
        assert_eq!(HeldPiece::Lz4 { block, len }.into_bytes().map(|b| b.len()), Some(len));
    }
}
