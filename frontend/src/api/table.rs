//! `meta.k8s.io` Table answers for `kubectl get nodemetrics` / `kubectl get podmetrics`.
//!
//! Columns as metrics-server's `ConvertToTable`: `Name`, then the usage resources sorted by name
//! (`cpu`, `memory`, summed over containers for pods), then `Window`. A `swap` column follows
//! `memory` when any row reports swap (a row without it shows `<none>`; metrics-server, which
//! serves no swap, would take the columns from its first row). Each row carries the
//! object as `includeObject` asks: `Metadata` (the default) a `PartialObjectMetadata`, `Object`
//! the whole NodeMetrics/PodMetrics, `None` nothing.

use std::io::Write as _;

use super::body::Body;
use super::items::{NodeItem, PodItem};
use super::json::{write_node, write_pod};
use super::version::ApiVersion;
use super::media::TableVersion;
use super::quantity::{Cpu, Memory, sum_cpu, sum_memory};
use super::status::json_str;
use super::timefmt::{GoDuration, Rfc3339};

/// What each row carries (`?includeObject=`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum IncludeObject {
    /// `PartialObjectMetadata` (default).
    #[default]
    Metadata,
    /// The full object.
    Object,
    /// No object.
    None,
}

impl IncludeObject {
    /// Parses the query parameter; unknown values are an error message.
    pub fn parse(value: &str) -> Result<Self, String> {
        match value {
            "" | "Metadata" => Ok(Self::Metadata),
            "Object" => Ok(Self::Object),
            "None" => Ok(Self::None),
            other => Err(format!(
                "Unable to convert to Table as requested: includeObject: Invalid value: {}: must be 'Metadata', 'Object', 'None', or empty",
                shardmetrics_plumbing::selector::go_quote(other)
            )),
        }
    }
}

/// How a Table is written.
#[derive(Debug, Clone, Copy)]
pub struct TableOptions {
    /// `meta.k8s.io` version.
    pub version: TableVersion,
    /// What rows carry.
    pub include: IncludeObject,
    /// creationTimestamp of the objects.
    pub now_ms: i64,
    /// The `metrics.k8s.io` version of the objects (`includeObject=Object`).
    pub api: ApiVersion,
    /// The Table's `metadata.resourceVersion` (the serving replica's clock, Unix ms; see
    /// [`crate::api::watch`]), which `kubectl get -w` watches from.
    pub resource_version: Option<i64>,
}

const COLUMNS: &str = r#""columnDefinitions":[{"name":"Name","type":"string","format":"name","description":"Name of the resource","priority":0},{"name":"cpu","type":"string","format":"quantity","description":"","priority":0},{"name":"memory","type":"string","format":"quantity","description":"","priority":0},{"name":"Window","type":"string","format":"duration","description":"","priority":0}]"#;

/// [`COLUMNS`] with `swap` after `memory`.
const COLUMNS_WITH_SWAP: &str = r#""columnDefinitions":[{"name":"Name","type":"string","format":"name","description":"Name of the resource","priority":0},{"name":"cpu","type":"string","format":"quantity","description":"","priority":0},{"name":"memory","type":"string","format":"quantity","description":"","priority":0},{"name":"swap","type":"string","format":"quantity","description":"","priority":0},{"name":"Window","type":"string","format":"duration","description":"","priority":0}]"#;

/// The cell of a row without swap in a table with a swap column.
const NO_SWAP_CELL: &str = "<none>";

/// The options of one table and whether it has a swap column.
struct Layout {
    opts: TableOptions,
    swap_column: bool,
}

fn row_cells(out: &mut Vec<u8>, layout: &Layout, name: &str, cpu: Cpu, memory: Memory, swap: Option<Memory>, window_ms: i64) {
    out.extend_from_slice(br#"{"cells":["#);
    json_str(out, name);
    out.extend_from_slice(b",\"");
    out.extend_from_slice(cpu.text().as_bytes());
    out.extend_from_slice(b"\",\"");
    out.extend_from_slice(memory.text().as_bytes());
    out.extend_from_slice(b"\",\"");
    if layout.swap_column {
        match swap {
            Some(swap) => out.extend_from_slice(swap.text().as_bytes()),
            None => out.extend_from_slice(NO_SWAP_CELL.as_bytes()),
        }
        out.extend_from_slice(b"\",\"");
    }
    GoDuration::from_millis(window_ms).write_to(out);
    out.extend_from_slice(b"\"]");
}

fn partial_metadata(
    out: &mut Vec<u8>,
    opts: &TableOptions,
    name: &str,
    namespace: Option<&str>,
    labels: Option<&crate::metadata::Labels>,
    rv: Option<i64>,
) {
    let _ = write!(
        out,
        r#","object":{{"kind":"PartialObjectMetadata","apiVersion":"{}","metadata":{{"name":"#,
        opts.version.api_version()
    );
    json_str(out, name);
    if let Some(ns) = namespace {
        out.extend_from_slice(br#","namespace":"#);
        json_str(out, ns);
    }
    super::json::resource_version(out, rv);
    let _ = write!(out, r#","creationTimestamp":"{}""#, Rfc3339(opts.now_ms));
    if let Some(labels) = labels.filter(|l| !l.is_empty()) {
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
    out.extend_from_slice(b"}}");
}

fn node_row(out: &mut Vec<u8>, item: &NodeItem, layout: &Layout) {
    let opts = &layout.opts;
    let u = &item.usage.usage;
    row_cells(out, layout, &item.usage.name, Cpu(u.cpu_nanocores), Memory(u.memory_bytes), u.swap_bytes.map(Memory), u.window_ms);
    match opts.include {
        IncludeObject::Metadata => partial_metadata(out, opts, &item.usage.name, None, item.labels.as_ref(), item.resource_version),
        IncludeObject::Object => {
            out.extend_from_slice(br#","object":"#);
            write_node(out, item, opts.now_ms, Some(opts.api));
        }
        IncludeObject::None => {}
    }
    out.push(b'}');
}

fn pod_row(out: &mut Vec<u8>, item: &PodItem, layout: &Layout) {
    let opts = &layout.opts;
    let p = &item.usage;
    let cpu = sum_cpu(p.containers.iter().map(|c| Cpu(c.cpu_nanocores)));
    let memory = sum_memory(p.containers.iter().map(|c| Memory(c.memory_bytes)));
    let swap = pod_has_swap(item).then(|| sum_memory(p.containers.iter().filter_map(|c| c.swap_bytes.map(Memory))));
    row_cells(out, layout, &p.name, cpu, memory, swap, p.window_ms);
    match opts.include {
        IncludeObject::Metadata => {
            partial_metadata(out, opts, &p.name, Some(&p.namespace), item.labels.as_ref(), item.resource_version)
        }
        IncludeObject::Object => {
            out.extend_from_slice(br#","object":"#);
            write_pod(out, item, opts.now_ms, Some(opts.api));
        }
        IncludeObject::None => {}
    }
    out.push(b'}');
}

/// The Table up to its rows' opening bracket.
fn header_to(out: &mut Vec<u8>, layout: &Layout) {
    let columns = if layout.swap_column { COLUMNS_WITH_SWAP } else { COLUMNS };
    let _ = write!(out, r#"{{"kind":"Table","apiVersion":"{}","metadata":{{"#, layout.opts.version.api_version());
    if let Some(rv) = layout.opts.resource_version {
        let _ = write!(out, r#""resourceVersion":"{rv}""#);
    }
    let _ = write!(out, r#"}},{columns},"rows":["#);
}

/// A whole Table of one row (a watch event's object), without a trailing newline.
fn single<T>(item: &T, opts: TableOptions, has_swap: fn(&T) -> bool, row: fn(&mut Vec<u8>, &T, &Layout)) -> Vec<u8> {
    let layout = Layout { opts, swap_column: has_swap(item) };
    let mut out = Vec::with_capacity(1024);
    header_to(&mut out, &layout);
    row(&mut out, item, &layout);
    out.extend_from_slice(b"]}");
    out
}

/// A Table of one node (a watch event's object).
pub fn node_event(item: &NodeItem, opts: TableOptions) -> Vec<u8> {
    single(item, opts, node_has_swap, node_row)
}

/// A Table of one pod (a watch event's object).
pub fn pod_event(item: &PodItem, opts: TableOptions) -> Vec<u8> {
    single(item, opts, pod_has_swap, pod_row)
}

fn node_has_swap(item: &NodeItem) -> bool {
    item.usage.usage.swap_bytes.is_some()
}

fn pod_has_swap(item: &PodItem) -> bool {
    item.usage.containers.iter().any(|c| c.swap_bytes.is_some())
}

fn table<T: Send + 'static>(
    items: Vec<T>,
    opts: TableOptions,
    has_swap: fn(&T) -> bool,
    row: fn(&mut Vec<u8>, &T, &Layout),
) -> Body {
    let layout = Layout { opts, swap_column: items.iter().any(has_swap) };
    let mut next = 0usize;
    let mut header = true;
    Body::streaming(Box::new(move |out: &mut Vec<u8>| {
        if header {
            header_to(out, &layout);
            header = false;
        }
        let end = (next + 64).min(items.len());
        for (i, item) in items[next..end].iter().enumerate() {
            if next + i > 0 {
                out.push(b',');
            }
            row(out, item, &layout);
        }
        next = end;
        if next == items.len() {
            // A trailing newline, as Go's json.Encoder (and so kube-apiserver) writes.
            out.extend_from_slice(b"]}\n");
            return false;
        }
        true
    }))
}

/// A Table of nodes.
pub fn nodes(items: Vec<NodeItem>, opts: TableOptions) -> Body {
    table(items, opts, node_has_swap, node_row)
}

/// A Table of pods.
pub fn pods(items: Vec<PodItem>, opts: TableOptions) -> Body {
    table(items, opts, pod_has_swap, pod_row)
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::api::json::tests::{node, pod};

    const NOW: i64 = 1_767_225_600_000;

    fn opts(include: IncludeObject) -> TableOptions {
        TableOptions { version: TableVersion::V1, include, now_ms: NOW, api: ApiVersion::V1beta1, resource_version: None }
    }

    #[test]
    fn a_node_table_has_metrics_server_columns_and_partial_metadata_rows() {
        let v: serde_json::Value =
            serde_json::from_slice(&nodes(vec![node("node-1")], opts(IncludeObject::Metadata)).collect_bytes()).expect("json");
        assert_eq!(v["kind"], "Table");
        assert_eq!(v["apiVersion"], "meta.k8s.io/v1");
        let names: Vec<_> = v["columnDefinitions"].as_array().expect("columns").iter().map(|c| c["name"].clone()).collect();
        assert_eq!(names, [json!("Name"), json!("cpu"), json!("memory"), json!("Window")]);
        assert_eq!(v["rows"][0]["cells"], json!(["node-1", "123456n", "12340Ki", "15.012s"]));
        assert_eq!(
            v["rows"][0]["object"],
            json!({"kind": "PartialObjectMetadata", "apiVersion": "meta.k8s.io/v1",
                   "metadata": {"name": "node-1", "creationTimestamp": "2026-01-01T00:00:00Z",
                                "labels": {"kubernetes.io/hostname": "node-1"}}})
        );
    }

    #[test]
    fn pod_rows_sum_containers_and_carry_their_namespace() {
        let v: serde_json::Value =
            serde_json::from_slice(&pods(vec![pod("default", "web")], opts(IncludeObject::Metadata)).collect_bytes()).expect("json");
        assert_eq!(v["rows"][0]["cells"], json!(["web", "1500000007n", "1049576", "15s"]));
        assert_eq!(v["rows"][0]["object"]["metadata"]["namespace"], "default");
    }

    #[test]
    fn a_swap_column_follows_memory_when_any_row_reports_swap() {
        let mut with = pod("default", "web");
        with.usage.containers[0].swap_bytes = Some(1 << 20);
        with.usage.containers[1].swap_bytes = Some(1 << 20);
        let v: serde_json::Value = serde_json::from_slice(
            &pods(vec![pod("default", "a"), with], opts(IncludeObject::None)).collect_bytes(),
        )
        .expect("json");
        let names: Vec<_> = v["columnDefinitions"].as_array().expect("columns").iter().map(|c| c["name"].clone()).collect();
        assert_eq!(names, [json!("Name"), json!("cpu"), json!("memory"), json!("swap"), json!("Window")]);
        assert_eq!(v["rows"][0]["cells"], json!(["a", "1500000007n", "1049576", "<none>", "15s"]));
        assert_eq!(v["rows"][1]["cells"], json!(["web", "1500000007n", "1049576", "2Mi", "15s"]));
    }

    #[test]
    fn include_object_none_and_object_change_what_rows_carry() {
        let none: serde_json::Value =
            serde_json::from_slice(&nodes(vec![node("a")], opts(IncludeObject::None)).collect_bytes()).expect("json");
        assert!(none["rows"][0].get("object").is_none());
        let full: serde_json::Value =
            serde_json::from_slice(&nodes(vec![node("a")], opts(IncludeObject::Object)).collect_bytes()).expect("json");
        assert_eq!(full["rows"][0]["object"]["kind"], "NodeMetrics");
        assert_eq!(IncludeObject::parse("Bogus").unwrap_err(), "Unable to convert to Table as requested: includeObject: Invalid value: \"Bogus\": must be 'Metadata', 'Object', 'None', or empty");
        let empty: serde_json::Value =
            serde_json::from_slice(&pods(Vec::new(), opts(IncludeObject::Metadata)).collect_bytes()).expect("json");
        assert_eq!(empty["rows"], json!([]));
        assert_eq!(empty["columnDefinitions"].as_array().map(Vec::len), Some(4));
    }
}
