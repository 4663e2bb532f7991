//! Request routing and query parsing of the Metrics API on arbitrary requests (any client that
//! passed authorization): path → route, query → selectors, `Accept` → encoding, and the answer.
//!
//! Input layout: byte 0 picks the method; the rest, split at the first `\n`, is the request
//! target (`/path?query`) and the `Accept` header.
//!
//! Invariants: nothing panics; every answer has one of the statuses the API documents, and every
//! non-200 answer is a JSON `Status` with the same code; a node or pod name routes back to itself
//! when percent-encoded into a path.
#![no_main]

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::{Arc, OnceLock};

use http::{HeaderMap, HeaderValue, Method, Uri, header};
use kube::runtime::watcher::Event;
use libfuzzer_sys::fuzz_target;
use shardmetrics_frontend::api::router::{Api, Query, Route};
use shardmetrics_frontend::metadata::Metadata;
use shardmetrics_frontend::store::{Store, StoreConfig};
use shardmetrics_plumbing::clock::ManualClock;
use shardmetrics_scraper::kubelet::fixture::{PayloadSpec, pods, resource_metrics};
use shardmetrics_scraper::kubelet::parse_resource_metrics;

/// 2026-01-01T00:00:00Z, Unix ms.
const T0: i64 = 1_767_225_600_000;
const PREFIX: &str = "/apis/metrics.k8s.io/v1beta1";
const METHODS: [Method; 6] = [Method::GET, Method::HEAD, Method::POST, Method::PUT, Method::DELETE, Method::PATCH];

/// An API over two scrapes of a realistic 30-pod node, with pod and node labels.
fn api() -> &'static Api {
    static API: OnceLock<Api> = OnceLock::new();
    API.get_or_init(|| {
        let clock = ManualClock::new(T0 + 20_000);
        let store = Arc::new(Store::new(StoreConfig { resolution_ms: 15_000, max_staleness_ms: 45_000 }, clock.clone()));
        let metadata = Metadata::new();
        for t in [T0, T0 + 15_000] {
            let spec = PayloadSpec { pods: 30, seed: 7, timestamp_ms: t };
            let parsed = parse_resource_metrics("node-1", &resource_metrics(&spec), t).expect("fixture parses");
            store.ingest_scrape(&parsed.scrape);
        }
        for p in pods(&PayloadSpec { pods: 30, seed: 7, timestamp_ms: T0 }) {
            let app = p.name.split('-').next().unwrap_or("").to_owned();
            let labels = BTreeMap::from([("app".to_owned(), app), ("tier".to_owned(), p.namespace.clone())]);
            metadata.apply_pod(Event::Apply(((p.namespace, p.name), labels)));
        }
        metadata.apply_node(Event::Apply(("node-1".to_owned(), BTreeMap::from([("zone".to_owned(), "a".to_owned())]))));
        Api::new(store, Some(metadata), clock, None)
    })
}

fn percent_encode(s: &str) -> String {
    s.bytes().fold(String::with_capacity(s.len() * 3), |mut out, b| {
        let _ = write!(out, "%{b:02X}");
        out
    })
}

fuzz_target!(|data: &[u8]| {
    let Some((&selector, rest)) = data.split_first() else { return };
    let method = &METHODS[usize::from(selector) % METHODS.len()];
    let (target, accept) = match rest.iter().position(|&b| b == b'\n') {
        Some(i) => (&rest[..i], Some(&rest[i + 1..])),
        None => (rest, None),
    };
    let Ok(uri) = Uri::try_from(target) else { return };

    let route = Route::parse(uri.path());
    let _ = Query::parse(uri.query());
    match &route {
        Route::Node(name) => {
            assert_eq!(Route::parse(&format!("{PREFIX}/nodes/{}", percent_encode(name))), route);
        }
        Route::Pod(ns, name) => {
            let path = format!("{PREFIX}/namespaces/{}/pods/{}", percent_encode(ns), percent_encode(name));
            assert_eq!(Route::parse(&path), route);
        }
        _ => {}
    }

    let mut headers = HeaderMap::new();
    if let Some(value) = accept.and_then(|a| HeaderValue::from_bytes(a).ok()) {
        headers.insert(header::ACCEPT, value);
    }
    let handled = api().handle(method, &uri, &headers);
    assert_eq!(handled.resource, route.resource());
    let status = handled.response.status();
    assert!(matches!(status.as_u16(), 200 | 400 | 404 | 405 | 406), "unexpected status {status} for {uri}");
    let body = handled.response.into_body().collect_bytes();
    if status != 200 {
        let v: serde_json::Value = serde_json::from_slice(&body).expect("an error answer is JSON");
        assert_eq!(v["kind"], "Status");
        assert_eq!(v["code"], status.as_u16());
    }
});
