//! Protobuf decoding of the scraper → frontend stream on arbitrary bytes (a broken or hostile
//! shard, or a corrupted connection): `SampleBatch` decoding, its conversion to domain types,
//! and what a frontend does next with it (store it, compute rates, serve it).
//!
//! Invariants: nothing panics; a batch that converts re-encodes to a batch that converts to the
//! same value; once stored, every list and table encoding of nodes and pods answers 200.
#![no_main]

use std::sync::Arc;

use http::{HeaderMap, HeaderValue, Method, Uri, header};
use libfuzzer_sys::fuzz_target;
use prost::Message;
use shardmetrics_frontend::api::router::Api;
use shardmetrics_frontend::store::{Store, StoreConfig};
use shardmetrics_plumbing::clock::ManualClock;
use shardmetrics_proto::v1::SampleBatch;
use shardmetrics_proto::{NodeScrape, decode_batch, encode_batch};

/// Latest wall clock the frontend is assumed to run at (2100-01-01), Unix ms.
const CLOCK_MAX_MS: i64 = 4_102_444_800_000;

const ACCEPTS: [&str; 3] = [
    "application/json",
    "application/vnd.kubernetes.protobuf",
    "application/json;as=Table;v=v1;g=meta.k8s.io",
];
const PATHS: [&str; 3] =
    ["/apis/metrics.k8s.io/v1beta1/nodes", "/apis/metrics.k8s.io/v1beta1/pods", "/apis/metrics.k8s.io/v1beta1/namespaces/default/pods"];

fuzz_target!(|data: &[u8]| {
    let Ok(wire) = SampleBatch::decode(data) else { return };
    let Ok(batch) = decode_batch(wire) else { return };

    let refs: Vec<&NodeScrape> = batch.scrapes.iter().collect();
    let again = decode_batch(encode_batch(&batch.shard, &refs, &batch.released, batch.snapshot_complete))
        .expect("a decoded batch re-encodes to a valid batch");
    assert_eq!(again, batch, "the batch changed on a second trip over the wire");

    // The frontend's clock is sane even when the shard's timestamps are not: put it just after
    // the first scrape, as a live stream would.
    let now_ms = batch.scrapes.first().map_or(0, |s| s.scraped_at_ms.saturating_add(1_000)).clamp(0, CLOCK_MAX_MS);
    let clock = ManualClock::new(now_ms);
    let store = Arc::new(Store::new(StoreConfig { resolution_ms: 15_000, max_staleness_ms: 45_000 }, clock.clone()));
    store.ingest(&batch.scrapes, &batch.released);
    let _ = store.counts();
    let api = Api::new(store.clone(), None, clock.clone(), None);
    for path in PATHS {
        let uri: Uri = path.parse().expect("static path");
        for accept in ACCEPTS {
            let mut headers = HeaderMap::new();
            headers.insert(header::ACCEPT, HeaderValue::from_static(accept));
            let handled = api.handle(&Method::GET, &uri, &headers);
            assert_eq!(handled.response.status(), 200, "GET {path} as {accept}");
            let _ = handled.response.into_body().collect_bytes();
        }
    }
    for s in &batch.scrapes {
        let _ = store.node(&s.node);
        for p in &s.pods {
            let _ = store.pod(&p.namespace, &p.name);
        }
    }
    clock.set_ms(CLOCK_MAX_MS);
    store.sweep();
});
