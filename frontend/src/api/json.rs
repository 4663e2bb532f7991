//! JSON of NodeMetrics / PodMetrics and their lists, byte-for-byte in metrics-server's shape,
//! written straight into the output buffer (no intermediate JSON value). Lists are streamed:
//! [`node_list`] and [`pod_list_chunks`] return bodies that serialize items as the client reads.

use std::io::Write as _;

use super::body::Body;
use super::out::put_short;
use super::items::{Chunks, LastLabels, NodeItem, PodItem, all_at_once};
use super::quantity::{Cpu, Memory};
use super::status::json_str;
use super::timefmt::{GoDuration, Rfc3339, Rfc3339Days};
use crate::metadata::Labels;

use super::version::ApiVersion;

fn labels_json(out: &mut Vec<u8>, labels: Option<&Labels>) {
    let Some(labels) = labels.filter(|l| !l.is_empty()) else { return };
    out.extend_from_slice(br#","labels":{"#);
    for (i, (k, v)) in labels.iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        json_str(out, k);
        out.push(b':');
        json_str(out, v);
    }
    out.push(b'}');
}

/// A ResourceList in Go's key order (cpu, memory, swap); `swap` only when reported (a binary-SI
/// quantity of bytes, as memory).
fn usage_json(out: &mut Vec<u8>, cpu: u64, memory: u64, swap: Option<u64>) {
    out.extend_from_slice(br#"{"cpu":""#);
    put_short(out, Cpu(cpu).text().as_bytes());
    out.extend_from_slice(br#"","memory":""#);
    put_short(out, Memory(memory).text().as_bytes());
    if let Some(swap) = swap {
        out.extend_from_slice(br#"","swap":""#);
        put_short(out, Memory(swap).text().as_bytes());
    }
    out.extend_from_slice(br#""}"#);
}

/// `,"resourceVersion":"<rv>"` when there is one (watch events).
pub(crate) fn resource_version(out: &mut Vec<u8>, rv: Option<i64>) {
    if let Some(rv) = rv {
        let _ = write!(out, r#","resourceVersion":"{rv}""#);
    }
}

/// What the items of one answer share: `,"creationTimestamp":"<now>"`, formatted once (every
/// item carries the time of the request), and the last label set written ([`LastLabels`]).
struct Created {
    /// `,"creationTimestamp":"<now>"`.
    created: Vec<u8>,
    /// The last label set's `,"labels":{...}`.
    labels: LastLabels,
    /// Sample times: one date formatted per day.
    times: Rfc3339Days,
    /// The last window (ms) and its text (most items share one).
    window: Option<(i64, Vec<u8>)>,
}

impl Created {
    fn new(now_ms: i64) -> Created {
        let mut out = Vec::with_capacity(48);
        out.extend_from_slice(br#","creationTimestamp":""#);
        Rfc3339(now_ms).write_to(&mut out);
        out.push(b'"');
        Created { created: out, labels: LastLabels::default(), times: Rfc3339Days::default(), window: None }
    }

    /// `},"timestamp":"...","window":"...",` closing the metadata object.
    fn timestamp_window(&mut self, out: &mut Vec<u8>, timestamp_ms: i64, window_ms: i64) {
        out.extend_from_slice(br#"},"timestamp":""#);
        self.times.write_to(timestamp_ms, out);
        out.extend_from_slice(br#"","window":""#);
        if !matches!(&self.window, Some((last, _)) if *last == window_ms) {
            let mut text = Vec::new();
            GoDuration::from_millis(window_ms).write_to(&mut text);
            self.window = Some((window_ms, text));
        }
        if let Some((_, text)) = &self.window {
            out.extend_from_slice(text);
        }
        out.extend_from_slice(br#"","#);
    }

    /// `,"labels":{...}` of `labels` (nothing when there are none).
    fn labels(&mut self, labels: Option<&Labels>) -> &[u8] {
        self.labels.encoded(labels, |labels, out| labels_json(out, Some(labels)))
    }
}


/// Appends one NodeMetrics; `typed` adds `kind` and its version's `apiVersion` (single
/// objects, not list items). `now_ms` is the `creationTimestamp`, as metrics-server sets it to
/// the time of the request.
pub fn write_node(out: &mut Vec<u8>, item: &NodeItem, now_ms: i64, typed: Option<ApiVersion>) {
    write_node_created(out, item, &mut Created::new(now_ms), typed);
}

/// [`write_node`] with its `creationTimestamp` already formatted.
fn write_node_created(out: &mut Vec<u8>, item: &NodeItem, created: &mut Created, typed: Option<ApiVersion>) {
    out.push(b'{');
    if let Some(v) = typed {
        let _ = write!(out, r#""kind":"NodeMetrics","apiVersion":"{}","#, v.group_version());
    }
    out.extend_from_slice(br#""metadata":{"name":"#);
    json_str(out, &item.usage.name);
    resource_version(out, item.resource_version);
    out.extend_from_slice(&created.created);
    out.extend_from_slice(created.labels(item.labels.as_ref()));
    let u = &item.usage.usage;
    created.timestamp_window(out, u.timestamp_ms, u.window_ms);
    out.extend_from_slice(br#""usage":"#);
    usage_json(out, u.cpu_nanocores, u.memory_bytes, u.swap_bytes);
    out.push(b'}');
}

/// Appends one PodMetrics (containers sorted by name); see [`write_node`].
pub fn write_pod(out: &mut Vec<u8>, item: &PodItem, now_ms: i64, typed: Option<ApiVersion>) {
    write_pod_created(out, item, &mut Created::new(now_ms), typed);
}

/// [`write_pod`] with its `creationTimestamp` already formatted.
fn write_pod_created(out: &mut Vec<u8>, item: &PodItem, created: &mut Created, typed: Option<ApiVersion>) {
    out.push(b'{');
    if let Some(v) = typed {
        let _ = write!(out, r#""kind":"PodMetrics","apiVersion":"{}","#, v.group_version());
    }
    let p = &item.usage;
    out.extend_from_slice(br#""metadata":{"name":"#);
    json_str(out, &p.name);
    out.extend_from_slice(br#","namespace":"#);
    json_str(out, &p.namespace);
    resource_version(out, item.resource_version);
    out.extend_from_slice(&created.created);
    out.extend_from_slice(created.labels(item.labels.as_ref()));
    created.timestamp_window(out, p.timestamp_ms, p.window_ms);
    out.extend_from_slice(br#""containers":["#);
    for (i, c) in p.containers.iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        out.extend_from_slice(br#"{"name":"#);
        json_str(out, &c.name);
        out.extend_from_slice(br#","usage":"#);
        usage_json(out, c.cpu_nanocores, c.memory_bytes, c.swap_bytes);
        out.push(b'}');
    }
    out.extend_from_slice(b"]}");
}

/// A streamed list body: `{"kind":<kind>,...,"items":[` + items + `]}`.
fn list<T: Send + 'static>(
    kind: &'static str,
    version: ApiVersion,
    mut chunks: Chunks<T>,
    now_ms: i64,
    write: fn(&mut Vec<u8>, &T, &mut Created, Option<ApiVersion>),
) -> Body {
    let mut created = Created::new(now_ms);
    let mut header = true;
    let mut first = true;
    // The chunk being written and how far.
    let mut items: Vec<T> = Vec::new();
    let mut next = 0usize;
    Body::streaming(Box::new(move |out: &mut Vec<u8>| {
        if header {
            // metadata.resourceVersion: the serving replica's clock, what a watch resumes from.
            let _ = write!(
                out,
                r#"{{"kind":"{kind}","apiVersion":"{}","metadata":{{"resourceVersion":"{now_ms}"}},"items":["#,
                version.group_version()
            );
            header = false;
        }
        if next == items.len() {
            match chunks() {
                Some(chunk) => (items, next) = (chunk, 0),
                None => {
                    // A trailing newline, as Go's json.Encoder (and so kube-apiserver) writes.
                    out.extend_from_slice(b"]}\n");
                    return false;
                }
            }
        }
        // A batch of items per call keeps the per-call overhead small.
        let end = (next + 64).min(items.len());
        for item in &items[next..end] {
            if !first {
                out.push(b',');
            }
            first = false;
            write(out, item, &mut created, None);
        }
        next = end;
        true
    }))
}

/// A streamed `NodeMetricsList` of `version`.
pub fn node_list(items: Vec<NodeItem>, now_ms: i64, version: ApiVersion) -> Body {
    list("NodeMetricsList", version, all_at_once(items), now_ms, write_node_created)
}

/// A streamed `PodMetricsList` of `version`.
pub fn pod_list(items: Vec<PodItem>, now_ms: i64, version: ApiVersion) -> Body {
    pod_list_chunks(all_at_once(items), now_ms, version)
}

/// A streamed `PodMetricsList` of `version` whose items are taken from `chunks` as the client
/// reads: one chunk is held at a time.
pub fn pod_list_chunks(chunks: Chunks<PodItem>, now_ms: i64, version: ApiVersion) -> Body {
    list("PodMetricsList", version, chunks, now_ms, write_pod_created)
}

#[cfg(test)]
pub(crate) mod tests {
    use std::collections::BTreeMap;
    use std::sync::Arc;

    use serde_json::json;

    use super::*;
    use crate::store::{ContainerUsage, NodeUsage, PodUsage, Usage};

    const NOW: i64 = 1_767_225_600_000; // 2026-01-01T00:00:00Z

    pub(crate) fn node(name: &str) -> NodeItem {
        NodeItem {
            usage: NodeUsage {
                name: name.into(),
                usage: Usage {
                    timestamp_ms: NOW - 3_500,
                    window_ms: 15_012,
                    cpu_nanocores: 123_456,
                    memory_bytes: 12_636_160,
                    swap_bytes: None,
                },
                scraped_at_ms: NOW - 3_000,
            },
            labels: Some(Arc::new(BTreeMap::from([("kubernetes.io/hostname".into(), name.into())]))),
            resource_version: None,
        }
    }

    pub(crate) fn pod(ns: &str, name: &str) -> PodItem {
        PodItem {
            usage: PodUsage {
                namespace: ns.into(),
                name: name.into(),
                timestamp_ms: NOW - 2_000,
                window_ms: 15_000,
                containers: [
                    ContainerUsage { name: "app".into(), cpu_nanocores: 1_500_000_000, memory_bytes: 1 << 20, swap_bytes: None },
                    ContainerUsage { name: "sidecar".into(), cpu_nanocores: 7, memory_bytes: 1000, swap_bytes: None },
                ]
                .into_iter()
                .collect(),
                scraped_at_ms: NOW - 1_000,
            },
            labels: None,
            resource_version: None,
        }
    }

    #[test]
    fn node_metrics_json_has_metrics_server_shape() {
        let mut out = Vec::new();
        write_node(&mut out, &node("node-1"), NOW, Some(ApiVersion::V1beta1));
        let text = String::from_utf8(out).expect("utf8");
        assert_eq!(
            text,
            r#"{"kind":"NodeMetrics","apiVersion":"metrics.k8s.io/v1beta1","metadata":{"name":"node-1","creationTimestamp":"2026-01-01T00:00:00Z","labels":{"kubernetes.io/hostname":"node-1"}},"timestamp":"2025-12-31T23:59:56Z","window":"15.012s","usage":{"cpu":"123456n","memory":"12340Ki"}}"#
        );
    }

    #[test]
    fn pod_metrics_json_has_containers_and_no_labels_when_none() {
        let mut out = Vec::new();
        write_pod(&mut out, &pod("default", "web"), NOW, Some(ApiVersion::V1beta1));
        let v: serde_json::Value = serde_json::from_slice(&out).expect("json");
        assert_eq!(
            v,
            json!({
                "kind": "PodMetrics", "apiVersion": "metrics.k8s.io/v1beta1",
                "metadata": {"name": "web", "namespace": "default", "creationTimestamp": "2026-01-01T00:00:00Z"},
                "timestamp": "2025-12-31T23:59:58Z", "window": "15s",
                "containers": [
                    {"name": "app", "usage": {"cpu": "1500m", "memory": "1Mi"}},
                    {"name": "sidecar", "usage": {"cpu": "7n", "memory": "1k"}}
                ]
            })
        );
    }

    #[test]
    fn swap_is_served_after_memory_only_where_the_kubelet_reported_it() {
        let mut n = node("node-1");
        n.usage.usage.swap_bytes = Some(0);
        let mut out = Vec::new();
        write_node(&mut out, &n, NOW, None);
        let v: serde_json::Value = serde_json::from_slice(&out).expect("json");
        assert_eq!(v["usage"], json!({"cpu": "123456n", "memory": "12340Ki", "swap": "0"}), "0 is a value");
        let mut p = pod("default", "web");
        p.usage.containers[0].swap_bytes = Some(3 << 20);
        let mut out = Vec::new();
        write_pod(&mut out, &p, NOW, None);
        let text = String::from_utf8(out).expect("utf8");
        assert!(text.contains(r#"{"name":"app","usage":{"cpu":"1500m","memory":"1Mi","swap":"3Mi"}}"#), "{text}");
        assert!(text.contains(r#"{"name":"sidecar","usage":{"cpu":"7n","memory":"1k"}}"#), "no swap line, no swap: {text}");
    }

    #[test]
    fn a_list_taken_in_chunks_is_the_bytes_of_the_same_list_taken_at_once() {
        let items: Vec<_> = (0..300).map(|i| pod("ns", &format!("p{i:05}"))).collect();
        let whole = pod_list(items.clone(), NOW, ApiVersion::V1beta1).collect_bytes();
        let chunked = pod_list_chunks(crate::api::items::uneven_chunks(items, &[0, 1, 130, 64]), NOW, ApiVersion::V1beta1).collect_bytes();
        assert_eq!(String::from_utf8(chunked).expect("utf8"), String::from_utf8(whole).expect("utf8"));
    }

    #[test]
    fn list_items_are_the_items_written_alone_whatever_labels_they_share() {
        // Label sets shared by address (interned, as a ReplicaSet's), equal but not shared,
        // none, and empty, one after another: the list reuses the last set's text by address.
        let shared = Arc::new(BTreeMap::from([("app".to_owned(), "web".to_owned()), ("<&>".to_owned(), "\"".to_owned())]));
        let labels = [Some(shared.clone()), Some(shared.clone()), Some(Arc::new((*shared).clone())), None, Some(Arc::new(BTreeMap::new())), Some(shared)];
        let items: Vec<_> = labels.into_iter().enumerate().map(|(i, labels)| PodItem { labels, ..pod("ns", &format!("p{i}")) }).collect();
        let mut want = format!(r#"{{"kind":"PodMetricsList","apiVersion":"metrics.k8s.io/v1beta1","metadata":{{"resourceVersion":"{NOW}"}},"items":["#).into_bytes();
        for (i, item) in items.iter().enumerate() {
            if i > 0 {
                want.push(b',');
            }
            write_pod(&mut want, item, NOW, None);
        }
        want.extend_from_slice(b"]}\n");
        let got = pod_list(items, NOW, ApiVersion::V1beta1).collect_bytes();
        assert_eq!(String::from_utf8(got).expect("utf8"), String::from_utf8(want).expect("utf8"));
    }

    #[test]
    fn lists_stream_valid_json_for_zero_one_and_many_items() {
        for n in [0usize, 1, 65, 3000] {
            let items: Vec<_> = (0..n).map(|i| pod("ns", &format!("p{i:05}"))).collect();
            let bytes = pod_list(items, NOW, ApiVersion::V1beta1).collect_bytes();
            let v: serde_json::Value = serde_json::from_slice(&bytes).expect("json");
            assert_eq!(v["kind"], "PodMetricsList");
            assert_eq!(v["metadata"], json!({"resourceVersion": NOW.to_string()}), "what a watch resumes from");
            assert_eq!(v["items"].as_array().map(Vec::len), Some(n));
            if n > 0 {
                assert!(v["items"][0].get("kind").is_none(), "list items carry no kind");
            }
        }
        let v: serde_json::Value =
            serde_json::from_slice(&node_list(vec![node("a"), node("b")], NOW, ApiVersion::V1).collect_bytes()).expect("json");
        assert_eq!(v["kind"], "NodeMetricsList");
        assert_eq!(v["items"][1]["metadata"]["name"], "b");
    }
}
