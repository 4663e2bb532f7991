//! Server-side printing (`Accept: application/json;as=Table;g=meta.k8s.io;v=v1`), so that
//! `kubectl get nodes` and `kubectl get pods` show the same columns as against a real cluster.

use serde_json::{Value, json};

use super::resources::{CONFIGMAPS, LEASES, NAMESPACES, NODES, PODS, ResourceId};

/// Whether an Accept header asks for a Table.
pub fn wants_table(accept: &str) -> bool {
    accept.split(',').next().is_some_and(|first| first.contains("as=Table"))
}

fn col(name: &str, ty: &str, format: &str, description: &str, priority: u8) -> Value {
    json!({"name": name, "type": ty, "format": format, "description": description, "priority": priority})
}

fn columns(resource: ResourceId) -> Vec<Value> {
    let name = col("Name", "string", "name", "Name must be unique within a namespace.", 0);
    let age = col("Age", "string", "", "CreationTimestamp is a timestamp representing the server time when this object was created.", 0);
    match resource {
        NODES => vec![
            name,
            col("Status", "string", "", "The status of the node", 0),
            col("Roles", "string", "", "The roles of the node", 0),
            age,
            col("Version", "string", "", "Kubelet Version reported by the node.", 0),
            col("Internal-IP", "string", "", "List of internal IPs of the node.", 1),
            col("External-IP", "string", "", "List of external IPs of the node.", 1),
            col("OS-Image", "string", "", "OS Image reported by the node.", 1),
            col("Kernel-Version", "string", "", "Kernel Version reported by the node.", 1),
            col("Container-Runtime", "string", "", "Container Runtime Version reported by the node.", 1),
        ],
        PODS => vec![
            name,
            col("Ready", "string", "", "The aggregate readiness state of this pod for accepting traffic.", 0),
            col("Status", "string", "", "The aggregate status of the containers in this pod.", 0),
            col("Restarts", "string", "", "The number of times the containers in this pod have been restarted.", 0),
            age,
            col("IP", "string", "", "IP address allocated to the pod.", 1),
            col("Node", "string", "", "Name of the Node this pod is assigned to.", 1),
            col("Nominated Node", "string", "", "Nominated node name.", 1),
            col("Readiness Gates", "string", "", "Readiness gates.", 1),
        ],
        NAMESPACES => vec![name, col("Status", "string", "", "The status of the namespace", 0), age],
        CONFIGMAPS => vec![name, col("Data", "string", "", "Number of keys.", 0), age],
        LEASES => vec![name, col("Holder", "string", "", "The holder of the lease.", 0), age],
        _ => vec![name, age],
    }
}

/// kubectl's short human duration (`45s`, `5m`, `3h12m`, `4d`, `2y`).
pub fn human_age(seconds: i64) -> String {
    if seconds < 0 {
        return "<invalid>".into();
    }
    let (m, h, d) = (seconds / 60, seconds / 3600, seconds / 86400);
    if seconds < 120 {
        format!("{seconds}s")
    } else if m < 10 {
        let s = seconds % 60;
        if s == 0 { format!("{m}m") } else { format!("{m}m{s}s") }
    } else if m < 180 {
        format!("{m}m")
    } else if h < 8 {
        let mm = m % 60;
        if mm == 0 { format!("{h}h") } else { format!("{h}h{mm}m") }
    } else if h < 48 {
        format!("{h}h")
    } else if h < 192 {
        let hh = h % 24;
        if hh == 0 { format!("{d}d") } else { format!("{d}d{hh}h") }
    } else if d < 365 * 2 {
        format!("{d}d")
    } else {
        format!("{}y", d / 365)
    }
}

fn age(obj: &Value, now_ms: i64) -> String {
    obj["metadata"]["creationTimestamp"]
        .as_str()
        .and_then(|t| t.parse::<jiff::Timestamp>().ok())
        .map(|t| human_age((now_ms - t.as_millisecond()) / 1000))
        .unwrap_or_else(|| "<unknown>".into())
}

fn s(v: &Value) -> String {
    v.as_str().unwrap_or("").to_owned()
}

fn or_none(v: String) -> String {
    if v.is_empty() { "<none>".into() } else { v }
}

fn cells(resource: ResourceId, obj: &Value, now_ms: i64) -> Vec<Value> {
    let name = s(&obj["metadata"]["name"]);
    match resource {
        NODES => {
            let conditions = obj["status"]["conditions"].as_array().cloned().unwrap_or_default();
            let ready = conditions.iter().find(|c| c["type"] == "Ready").map(|c| c["status"] == "True");
            let mut status = match ready {
                Some(true) => "Ready".to_owned(),
                Some(false) => "NotReady".to_owned(),
                None => "Unknown".to_owned(),
            };
            if obj["spec"]["unschedulable"] == true {
                status.push_str(",SchedulingDisabled");
            }
            let mut roles: Vec<String> = obj["metadata"]["labels"]
                .as_object()
                .map(|l| l.keys().filter_map(|k| k.strip_prefix("node-role.kubernetes.io/").map(str::to_owned)).collect())
                .unwrap_or_default();
            roles.sort();
            let addr = |ty: &str| -> String {
                obj["status"]["addresses"]
                    .as_array()
                    .map(|a| a.iter().filter(|x| x["type"] == ty).map(|x| s(&x["address"])).collect::<Vec<_>>().join(","))
                    .unwrap_or_default()
            };
            let info = &obj["status"]["nodeInfo"];
            vec![
                json!(name),
                json!(status),
                json!(or_none(roles.join(","))),
                json!(age(obj, now_ms)),
                json!(s(&info["kubeletVersion"])),
                json!(or_none(addr("InternalIP"))),
                json!(or_none(addr("ExternalIP"))),
                json!(or_none(s(&info["osImage"]))),
                json!(or_none(s(&info["kernelVersion"]))),
                json!(or_none(s(&info["containerRuntimeVersion"]))),
            ]
        }
        PODS => {
            let total = obj["spec"]["containers"].as_array().map_or(0, Vec::len);
            let statuses = obj["status"]["containerStatuses"].as_array().cloned().unwrap_or_default();
            let ready = statuses.iter().filter(|c| c["ready"] == true).count();
            let restarts: i64 = statuses.iter().map(|c| c["restartCount"].as_i64().unwrap_or(0)).sum();
            let phase = obj["status"]["reason"].as_str().or(obj["status"]["phase"].as_str()).unwrap_or("Unknown");
            vec![
                json!(name),
                json!(format!("{ready}/{total}")),
                json!(phase),
                json!(restarts.to_string()),
                json!(age(obj, now_ms)),
                json!(or_none(s(&obj["status"]["podIP"]))),
                json!(or_none(s(&obj["spec"]["nodeName"]))),
                json!(or_none(s(&obj["status"]["nominatedNodeName"]))),
                json!("<none>"),
            ]
        }
        NAMESPACES => vec![json!(name), json!(s(&obj["status"]["phase"])), json!(age(obj, now_ms))],
        CONFIGMAPS => {
            let n = obj["data"].as_object().map_or(0, |m| m.len()) + obj["binaryData"].as_object().map_or(0, |m| m.len());
            vec![json!(name), json!(n), json!(age(obj, now_ms))]
        }
        LEASES => vec![json!(name), json!(s(&obj["spec"]["holderIdentity"])), json!(age(obj, now_ms))],
        _ => vec![json!(name), json!(age(obj, now_ms))],
    }
}

fn row(resource: ResourceId, obj: &Value, now_ms: i64) -> Value {
    let mut meta = obj["metadata"].clone();
    if let Value::Object(m) = &mut meta {
        m.remove("managedFields");
    }
    json!({
        "cells": cells(resource, obj, now_ms),
        "object": {"kind": "PartialObjectMetadata", "apiVersion": "meta.k8s.io/v1", "metadata": meta}
    })
}

/// A Table of `objects` of `resource`.
pub fn table(resource: ResourceId, objects: &[Value], resource_version: u64, continue_token: Option<&str>, now_ms: i64) -> Value {
    let mut meta = json!({"resourceVersion": resource_version.to_string()});
    if let Some(c) = continue_token {
        meta["continue"] = json!(c);
    }
    json!({
        "kind": "Table",
        "apiVersion": "meta.k8s.io/v1",
        "metadata": meta,
        "columnDefinitions": columns(resource),
        "rows": objects.iter().map(|o| row(resource, o, now_ms)).collect::<Vec<_>>(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ages_read_like_kubectl() {
        assert_eq!(human_age(5), "5s");
        assert_eq!(human_age(150), "2m30s");
        assert_eq!(human_age(3600), "60m");
        assert_eq!(human_age(4 * 3600 + 120), "4h2m");
        assert_eq!(human_age(3 * 86400), "3d");
    }

    #[test]
    fn a_node_row_shows_ready_roles_and_version() {
        let node = json!({"metadata": {"name": "n1", "creationTimestamp": "2024-01-01T00:00:00Z",
                "labels": {"node-role.kubernetes.io/worker": ""}},
            "status": {"conditions": [{"type": "Ready", "status": "True"}], "nodeInfo": {"kubeletVersion": "v1.35.0"},
                "addresses": [{"type": "InternalIP", "address": "127.0.0.1"}]}});
        let t = table(NODES, &[node], 7, None, 1_704_067_260_000);
        assert_eq!(t["rows"][0]["cells"], json!(["n1", "Ready", "worker", "60s", "v1.35.0", "127.0.0.1", "<none>", "<none>", "<none>", "<none>"]));
        assert_eq!(t["metadata"]["resourceVersion"], "7");
        assert!(wants_table("application/json;as=Table;v=v1;g=meta.k8s.io,application/json"));
        assert!(!wants_table("application/json"));
    }
}
