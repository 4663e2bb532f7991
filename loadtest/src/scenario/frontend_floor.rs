//! The frontend's floor: what its two jobs cost with nothing else done, measured in the same run
//! after the window, beside the scrapers' floor ([`super::floor`]).
//!
//! - **decode**: subscribe to every shard's `SampleStream` as a frontend does (tonic, the same
//!   message limit), let the snapshot pass, then decode the live batches into the wire messages
//!   for the floor's duration and drop them: no conversion, no store, no queries.
//! - **encode**: fetch one answer of each query kind the window served (in the window's
//!   encoding), decode it, and encode it again as many times as the window answered that kind:
//!   JSON with serde_json from derived structs, protobuf with prost from the frontend's message
//!   structs, envelope included. One answer stands for every query of its kind (HPA selectors
//!   differ in their namespace and Deployment, not in their size class).
//!
//! Both run on a thread of their own (a current-thread runtime) and are timed by that thread's
//! CPU (`/proc/thread-self/schedstat`, nanoseconds), so the rest of this busy process does not
//! count. The report puts each floor in cores (decode: its CPU over its own duration, times the
//! replicas, since each decodes every stream; encode: the window's encoding work over the
//! window's length, as the replicas shared it) and divides the frontends' measured cores by each
//! and by their sum.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use prost::Message;
use serde::{Deserialize, Serialize};
use shardmetrics_frontend::api::protobuf::{self as pb, MAGIC};
use shardmetrics_plumbing::lease::Member;
use shardmetrics_proto::v1::SubscribeRequest;
use shardmetrics_proto::v1::sample_stream_client::SampleStreamClient;

use super::queries::{Encoding, KindStats, QueryKind, Target, Universe};
use super::report::{DecodeFloor, EncodeFloor, FrontendFloorReport};
use crate::demo::RunningDemo;

/// How long the shards' snapshots may take to arrive before the decode floor gives up.
const SNAPSHOT_LIMIT: Duration = Duration::from_secs(60);

/// CPU time of the calling thread, nanoseconds (`None` where /proc lacks it). The kernel adds
/// the running slice to that counter when the thread is scheduled, so it yields first.
pub fn thread_cpu_ns() -> Option<u64> {
    std::thread::yield_now();
    let text = std::fs::read_to_string("/proc/thread-self/schedstat").ok()?;
    text.split_whitespace().next()?.parse().ok()
}

/// The shards' gRPC addresses, from their Leases in the simulated API server.
fn shard_addresses(demo: &RunningDemo) -> Vec<String> {
    use shardmetrics_sim::apiserver::{resources::LEASES, store::Filter};
    let Ok(listed) = demo.api.store().list(&Filter::all(LEASES), &Default::default()) else { return Vec::new() };
    listed
        .items
        .iter()
        .filter_map(|o| serde_json::from_value::<k8s_openapi::api::coordination::v1::Lease>(o.value()).ok())
        .filter_map(|l| Member::from_lease(&l))
        .map(|m| m.grpc_address)
        .collect()
}

/// Decodes every shard's live stream for `duration` (see the module docs).
async fn decode_floor(addresses: Vec<String>, duration: Duration) -> Result<DecodeFloor, String> {
    if addresses.is_empty() {
        return Err("no shard Lease with a gRPC address".into());
    }
    let batches = Arc::new(AtomicU64::new(0));
    let scrapes = Arc::new(AtomicU64::new(0));
    let (live_tx, mut live_rx) = tokio::sync::mpsc::channel::<Result<(), String>>(addresses.len());
    let mut tasks = tokio::task::JoinSet::new();
    for address in &addresses {
        let (address, batches, scrapes, live_tx) = (address.clone(), batches.clone(), scrapes.clone(), live_tx.clone());
        tasks.spawn(async move {
            let run = async {
                let channel = tonic::transport::Endpoint::from_shared(format!("http://{address}"))
                    .map_err(|e| e.to_string())?
                    .tcp_nodelay(true)
                    .connect()
                    .await
                    .map_err(|e| format!("{address}: {e}"))?;
                let mut client = SampleStreamClient::new(channel).max_decoding_message_size(shardmetrics_frontend::upstream::MAX_MESSAGE_BYTES);
                let mut stream = client
                    .subscribe(SubscribeRequest { subscriber: "frontend-floor".into() })
                    .await
                    .map_err(|e| format!("{address}: {e}"))?
                    .into_inner();
                let mut live = false;
                while let Some(batch) = stream.message().await.map_err(|e| format!("{address}: {e}"))? {
                    if live {
                        batches.fetch_add(1, Ordering::Relaxed);
                        scrapes.fetch_add(batch.scrapes.len() as u64, Ordering::Relaxed);
                    } else if batch.snapshot_complete {
                        live = true;
                        let _ = live_tx.send(Ok(())).await;
                    }
                }
                Err::<(), String>(format!("{address}: the stream ended"))
            };
            if let Err(e) = run.await {
                let _ = live_tx.send(Err(e)).await;
            }
        });
    }
    drop(live_tx);
    let deadline = tokio::time::Instant::now() + SNAPSHOT_LIMIT;
    for _ in 0..addresses.len() {
        match tokio::time::timeout_at(deadline, live_rx.recv()).await {
            Ok(Some(Ok(()))) => {}
            Ok(Some(Err(e))) => return Err(e),
            Ok(None) => return Err("every subscription ended before its snapshot".into()),
            Err(_) => return Err(format!("the shards' snapshots took over {SNAPSHOT_LIMIT:?}")),
        }
    }
    // Counting starts with the first live batch: the snapshot is a replay the window's frontends
    // did not get.
    let (b0, s0) = (batches.load(Ordering::Relaxed), scrapes.load(Ordering::Relaxed));
    let cpu0 = thread_cpu_ns().ok_or("no /proc/thread-self/schedstat")?;
    let start = tokio::time::Instant::now();
    tokio::time::sleep(duration).await;
    let cpu_s = thread_cpu_ns().unwrap_or(cpu0).saturating_sub(cpu0) as f64 / 1e9;
    let duration_s = start.elapsed().as_secs_f64();
    let (b, s) = (batches.load(Ordering::Relaxed) - b0, scrapes.load(Ordering::Relaxed) - s0);
    tasks.abort_all();
    Ok(DecodeFloor { duration_s, shards: addresses.len(), batches: b, scrapes: s, cpu_s, cores: cpu_s / duration_s.max(1e-9) })
}

/// A Metrics API list as JSON, every field the frontend writes, as derived structs.
#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
struct JsonList {
    kind: String,
    api_version: String,
    metadata: BTreeMap<String, String>,
    items: Vec<JsonItem>,
}

/// One NodeMetrics or PodMetrics as JSON.
#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
struct JsonOne {
    kind: String,
    api_version: String,
    #[serde(flatten)]
    item: JsonItem,
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
struct JsonItem {
    metadata: JsonMeta,
    timestamp: String,
    window: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    usage: Option<BTreeMap<String, String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    containers: Option<Vec<JsonContainer>>,
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
struct JsonMeta {
    name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    namespace: Option<String>,
    creation_timestamp: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    labels: Option<BTreeMap<String, String>>,
}

#[derive(Debug, Serialize, Deserialize)]
struct JsonContainer {
    name: String,
    usage: BTreeMap<String, String>,
}

/// A decoded answer, ready to be encoded again.
enum Decoded {
    Json(JsonList),
    JsonOne(JsonOne),
    Node(pb::TypeMeta, pb::NodeMetrics),
    Pods(pb::TypeMeta, pb::PodMetricsList),
    Nodes(pb::TypeMeta, pb::NodeMetricsList),
}

fn decode_answer(body: &[u8], encoding: Encoding) -> Result<Decoded, String> {
    match encoding {
        Encoding::Json => match serde_json::from_slice::<JsonList>(body) {
            Ok(l) => Ok(Decoded::Json(l)),
            Err(_) => serde_json::from_slice(body).map(Decoded::JsonOne).map_err(|e| e.to_string()),
        },
        Encoding::Protobuf => {
            let (tm, raw) = pb::decode_envelope(body)?;
            match tm.kind.as_deref() {
                Some("PodMetricsList") => pb::PodMetricsList::decode(raw.as_slice()).map(|l| Decoded::Pods(tm, l)).map_err(|e| e.to_string()),
                Some("NodeMetrics") => pb::NodeMetrics::decode(raw.as_slice()).map(|n| Decoded::Node(tm, n)).map_err(|e| e.to_string()),
                Some("NodeMetricsList") => pb::NodeMetricsList::decode(raw.as_slice()).map(|l| Decoded::Nodes(tm, l)).map_err(|e| e.to_string()),
                other => Err(format!("unexpected protobuf kind {other:?}")),
            }
        }
    }
}

/// Encodes `d` once, as the library does it.
fn encode_answer(d: &Decoded) -> Vec<u8> {
    let envelope = |tm: &pb::TypeMeta, raw: Vec<u8>| {
        let unknown = pb::Unknown { type_meta: Some(tm.clone()), raw: Some(raw), content_encoding: Some(String::new()), content_type: Some(String::new()) };
        let mut out = Vec::with_capacity(4 + unknown.encoded_len());
        out.extend_from_slice(MAGIC);
        // Encoding into a Vec with enough capacity cannot fail.
        let _ = unknown.encode(&mut out);
        out
    };
    match d {
        Decoded::Json(l) => serde_json::to_vec(l).unwrap_or_default(),
        Decoded::JsonOne(o) => serde_json::to_vec(o).unwrap_or_default(),
        Decoded::Node(tm, n) => envelope(tm, n.encode_to_vec()),
        Decoded::Pods(tm, l) => envelope(tm, l.encode_to_vec()),
        Decoded::Nodes(tm, l) => envelope(tm, l.encode_to_vec()),
    }
}

/// Encodes one answer of each kind as often as the window answered it (see the module docs).
async fn encode_floor(target: Target, universe: Arc<Universe>, encoding: Encoding, counts: Vec<(QueryKind, u64)>) -> Result<Vec<EncodeFloor>, String> {
    let mut out = Vec::new();
    for (kind, count) in counts {
        let path = universe.path(kind, 0);
        let body = target.get_as(&path, encoding).await.map_err(|e| format!("{}: {e}", kind.name()))?;
        let decoded = decode_answer(&body, encoding).map_err(|e| format!("{}: {e}", kind.name()))?;
        let cpu0 = thread_cpu_ns().ok_or("no /proc/thread-self/schedstat")?;
        let mut bytes = 0usize;
        for _ in 0..count {
            bytes = encode_answer(&decoded).len();
        }
        let cpu_s = thread_cpu_ns().unwrap_or(cpu0).saturating_sub(cpu0) as f64 / 1e9;
        out.push(EncodeFloor { kind: kind.name().to_owned(), encoding: encoding.accept().to_owned(), encodes: count, served_bytes: body.len(), floor_bytes: bytes, cpu_s });
        tokio::task::yield_now().await;
    }
    Ok(out)
}

/// What the frontends did in the window, to set the floors against.
#[derive(Debug, Clone, Copy)]
pub struct Window {
    /// Its length, seconds.
    pub measured_s: f64,
    /// The frontends' cores in it, summed over the replicas.
    pub frontend_cores: f64,
    /// Frontend replicas.
    pub replicas: usize,
}

/// Runs both floors after the window and compares them with the frontends' cores in it.
pub async fn run(
    demo: &RunningDemo,
    duration: Duration,
    target: Target,
    universe: Arc<Universe>,
    encoding: Encoding,
    queries: &BTreeMap<String, KindStats>,
    window: Window,
) -> FrontendFloorReport {
    let Window { measured_s, frontend_cores, replicas } = window;
    let counts: Vec<(QueryKind, u64)> =
        QueryKind::ALL.iter().filter_map(|k| queries.get(k.name()).filter(|s| s.ok > 0).map(|s| (*k, s.ok))).collect();
    let addresses = shard_addresses(demo);
    let decode = super::on_own_thread("decode-floor", decode_floor(addresses, duration)).await;
    let encode = super::on_own_thread("encode-floor", encode_floor(target, universe, encoding, counts)).await;
    fn flat<T>(r: Result<Result<T, String>, tokio::task::JoinError>) -> Result<T, String> {
        r.map_err(|e| e.to_string()).and_then(|r| r)
    }
    let mut report = FrontendFloorReport { frontend_cores, replicas, ..Default::default() };
    match flat(decode) {
        Ok(d) => report.decode = Some(d),
        Err(e) => report.errors.push(format!("decode: {e}")),
    }
    match flat(encode) {
        Ok(e) => {
            report.encode_cores = Some(e.iter().map(|x| x.cpu_s).sum::<f64>() / measured_s.max(1e-9));
            report.encode = e;
        }
        Err(e) => report.errors.push(format!("encode: {e}")),
    }
    let ratio = |floor: Option<f64>| floor.filter(|f| *f > 0.0 && frontend_cores > 0.0).map(|f| frontend_cores / f);
    let decode_cores = report.decode.as_ref().map(|d| d.cores * replicas as f64);
    report.decode_cores = decode_cores;
    report.frontend_vs_decode = ratio(decode_cores);
    report.frontend_vs_encode = ratio(report.encode_cores);
    report.frontend_vs_floor = ratio(decode_cores.zip(report.encode_cores).map(|(a, b)| a + b));
    report
}


#[cfg(test)]
mod tests {
    use super::*;

    fn round_trip(body: &[u8], encoding: Encoding) -> Vec<u8> {
        encode_answer(&decode_answer(body, encoding).unwrap())
    }

    #[test]
    fn the_json_floor_writes_every_field_the_frontend_served() {
        let list = r#"{"kind":"PodMetricsList","apiVersion":"metrics.k8s.io/v1beta1","metadata":{"resourceVersion":"17"},"items":[
            {"metadata":{"name":"web-1","namespace":"shop","creationTimestamp":"2026-12-04T05:00:00Z","labels":{"app":"web"}},
             "timestamp":"2026-12-04T04:59:50Z","window":"15.012s","containers":[{"name":"app","usage":{"cpu":"123456n","memory":"12340Ki"}}]}]}"#;
        let one = r#"{"kind":"NodeMetrics","apiVersion":"metrics.k8s.io/v1beta1","metadata":{"name":"node-1","creationTimestamp":"2026-12-04T05:00:00Z"},
            "timestamp":"2026-12-04T04:59:50Z","window":"15.012s","usage":{"cpu":"2000000n","memory":"4096Ki","swap":"0"}}"#;
        for body in [list, one] {
            let again: serde_json::Value = serde_json::from_slice(&round_trip(body.as_bytes(), Encoding::Json)).unwrap();
            assert_eq!(again, serde_json::from_str::<serde_json::Value>(body).unwrap());
        }
        assert!(decode_answer(b"[1]", Encoding::Json).is_err(), "not a Metrics API object");
    }

    #[test]
    fn the_protobuf_floor_writes_the_same_envelope_and_list() {
        let pods = pb::PodMetricsList { items: vec![pb::PodMetrics::default(); 3], ..Default::default() };
        let tm = pb::TypeMeta { api_version: Some("metrics.k8s.io/v1beta1".into()), kind: Some("PodMetricsList".into()) };
        let body = encode_answer(&Decoded::Pods(tm.clone(), pods.clone()));
        let (tm2, raw) = pb::decode_envelope(&body).unwrap();
        assert_eq!((tm2, pb::PodMetricsList::decode(raw.as_slice()).unwrap()), (tm, pods));
        assert_eq!(round_trip(&body, Encoding::Protobuf), body);
        assert!(decode_answer(b"k8s\0garbage", Encoding::Protobuf).is_err());
        assert!(decode_answer(b"{}", Encoding::Protobuf).is_err(), "no magic");
    }
}
