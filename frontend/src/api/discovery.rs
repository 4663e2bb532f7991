//! Discovery and schema documents: `/apis`, `/apis/metrics.k8s.io`,
//! `/apis/metrics.k8s.io/v1beta1`, aggregated discovery (`apidiscovery.k8s.io` v2 and v2beta1),
//! `/openapi/v2`, `/openapi/v3` and `/version`. All are built once at startup.

use bytes::Bytes;
use serde_json::{Value, json};

/// `metrics.k8s.io/v1beta1`.
pub const GROUP_VERSION: &str = "metrics.k8s.io/v1beta1";

/// Which aggregated discovery version a request asked for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AggregatedVersion {
    /// `apidiscovery.k8s.io/v2`.
    V2,
    /// `apidiscovery.k8s.io/v2beta1`.
    V2beta1,
}

impl AggregatedVersion {
    /// The aggregated discovery version `accept` asks for first, if any.
    pub fn negotiate(accept: Option<&str>) -> Option<Self> {
        for range in accept?.split(',') {
            let params: Vec<&str> = range.split(';').map(str::trim).collect();
            let has = |p: &str| params.contains(&p);
            if params.first() == Some(&"application/json")
                && has("g=apidiscovery.k8s.io")
                && has("as=APIGroupDiscoveryList")
            {
                if has("v=v2") {
                    return Some(Self::V2);
                }
                if has("v=v2beta1") {
                    return Some(Self::V2beta1);
                }
            }
        }
        None
    }

    /// The answer's Content-Type.
    pub fn content_type(self) -> &'static str {
        match self {
            Self::V2 => "application/json;g=apidiscovery.k8s.io;v=v2;as=APIGroupDiscoveryList",
            Self::V2beta1 => "application/json;g=apidiscovery.k8s.io;v=v2beta1;as=APIGroupDiscoveryList",
        }
    }
}

/// Every document, serialized.
#[derive(Debug, Clone)]
pub struct Documents {
    /// `/apis`: APIGroupList.
    pub apis: Bytes,
    /// `/apis/metrics.k8s.io`: APIGroup.
    pub group: Bytes,
    /// `/apis/metrics.k8s.io/v1beta1`: APIResourceList.
    pub resources: Bytes,
    /// `/apis` as APIGroupDiscoveryList, v2.
    pub aggregated_v2: Bytes,
    /// `/apis` as APIGroupDiscoveryList, v2beta1.
    pub aggregated_v2beta1: Bytes,
    /// `/openapi/v2`.
    pub openapi_v2: Bytes,
    /// `/openapi/v3`: the index.
    pub openapi_v3_index: Bytes,
    /// `/openapi/v3/apis/metrics.k8s.io/v1beta1`.
    pub openapi_v3_group: Bytes,
    /// Content hash of the v3 group document (`?hash=`, ETag).
    pub openapi_v3_hash: String,
    /// `/version`.
    pub version: Bytes,
}

fn bytes(v: &Value) -> Bytes {
    Bytes::from(serde_json::to_vec(v).unwrap_or_default())
}

fn group_version() -> Value {
    json!({"groupVersion": GROUP_VERSION, "version": "v1beta1"})
}

fn group() -> Value {
    json!({"name": "metrics.k8s.io", "versions": [group_version()], "preferredVersion": group_version()})
}

/// `/apis`: the group list as k8s.io/apiserver writes it (no `apiVersion`; the server's own
/// address for every client CIDR, `:<port>` when it advertises no host).
fn apis(secure_port: Option<u16>) -> Value {
    let mut g = group();
    if let (Some(port), Some(o)) = (secure_port, g.as_object_mut()) {
        o.insert("serverAddressByClientCIDRs".into(), json!([{"clientCIDR": "0.0.0.0/0", "serverAddress": format!(":{port}")}]));
    }
    json!({"kind": "APIGroupList", "groups": [g]})
}

fn aggregated(api_version: &str) -> Value {
    let resource = |name: &str, kind: &str, scope: &str| {
        json!({
            "resource": name,
            // Empty group and version, as metrics-server's generic API server writes them.
            "responseKind": {"group": "", "version": "", "kind": kind},
            "scope": scope,
            "singularResource": "",
            "verbs": ["get", "list"]
        })
    };
    json!({
        "kind": "APIGroupDiscoveryList",
        "apiVersion": api_version,
        "metadata": {},
        "items": [{
            "metadata": {"name": "metrics.k8s.io", "creationTimestamp": null},
            "versions": [{
                "version": "v1beta1",
                "resources": [resource("nodes", "NodeMetrics", "Cluster"), resource("pods", "PodMetrics", "Namespaced")],
                "freshness": "Current"
            }]
        }]
    })
}

const NODE_METRICS: &str = "io.k8s.metrics.pkg.apis.metrics.v1beta1.NodeMetrics";
const NODE_METRICS_LIST: &str = "io.k8s.metrics.pkg.apis.metrics.v1beta1.NodeMetricsList";
const POD_METRICS: &str = "io.k8s.metrics.pkg.apis.metrics.v1beta1.PodMetrics";
const POD_METRICS_LIST: &str = "io.k8s.metrics.pkg.apis.metrics.v1beta1.PodMetricsList";
const CONTAINER_METRICS: &str = "io.k8s.metrics.pkg.apis.metrics.v1beta1.ContainerMetrics";
const OBJECT_META: &str = "io.k8s.apimachinery.pkg.apis.meta.v1.ObjectMeta";
const LIST_META: &str = "io.k8s.apimachinery.pkg.apis.meta.v1.ListMeta";
const TIME: &str = "io.k8s.apimachinery.pkg.apis.meta.v1.Time";
const DURATION: &str = "io.k8s.apimachinery.pkg.apis.meta.v1.Duration";
const QUANTITY: &str = "io.k8s.apimachinery.pkg.api.resource.Quantity";

/// The schemas of every type served, with `$ref`s starting with `prefix`.
fn schemas(prefix: &str) -> Value {
    let r = |name: &str| json!({"$ref": format!("{prefix}{name}")});
    let api_version = json!({"type": "string", "description": "APIVersion defines the versioned schema of this representation of an object."});
    let kind = json!({"type": "string", "description": "Kind is a string value representing the REST resource this object represents."});
    let usage = json!({"type": "object", "additionalProperties": r(QUANTITY),
        "description": "The memory usage is the memory working set; CPU is in cores averaged over the window."});
    let gvk = |k: &str| json!([{"group": "metrics.k8s.io", "version": "v1beta1", "kind": k}]);
    let list = |item: &str, k: &str| {
        json!({
            "type": "object", "required": ["items"],
            "description": format!("{k} is a list of {item}."),
            "properties": {
                "apiVersion": api_version, "kind": kind, "metadata": r(LIST_META),
                "items": {"type": "array", "items": r(item), "description": "List of metrics."}
            },
            "x-kubernetes-group-version-kind": gvk(k)
        })
    };
    json!({
        NODE_METRICS: {
            "type": "object", "required": ["timestamp", "window", "usage"],
            "description": "NodeMetrics sets resource usage metrics of a node.",
            "properties": {
                "apiVersion": api_version, "kind": kind, "metadata": r(OBJECT_META),
                "timestamp": r(TIME), "window": r(DURATION), "usage": usage
            },
            "x-kubernetes-group-version-kind": gvk("NodeMetrics")
        },
        POD_METRICS: {
            "type": "object", "required": ["timestamp", "window", "containers"],
            "description": "PodMetrics sets resource usage metrics of a pod.",
            "properties": {
                "apiVersion": api_version, "kind": kind, "metadata": r(OBJECT_META),
                "timestamp": r(TIME), "window": r(DURATION),
                "containers": {"type": "array", "items": r(CONTAINER_METRICS),
                               "description": "Metrics for all containers are collected within the same time window."}
            },
            "x-kubernetes-group-version-kind": gvk("PodMetrics")
        },
        CONTAINER_METRICS: {
            "type": "object", "required": ["name", "usage"],
            "description": "ContainerMetrics sets resource usage metrics of a container.",
            "properties": {"name": {"type": "string", "description": "Container name corresponding to the one from pod.spec.containers."}, "usage": usage}
        },
        NODE_METRICS_LIST: list(NODE_METRICS, "NodeMetricsList"),
        POD_METRICS_LIST: list(POD_METRICS, "PodMetricsList"),
        OBJECT_META: {
            "type": "object",
            "description": "ObjectMeta is metadata that all persisted resources must have.",
            "properties": {
                "name": {"type": "string"}, "namespace": {"type": "string"},
                "creationTimestamp": r(TIME),
                "labels": {"type": "object", "additionalProperties": {"type": "string"}}
            }
        },
        LIST_META: {
            "type": "object",
            "description": "ListMeta describes metadata that synthetic resources must have.",
            "properties": {"resourceVersion": {"type": "string"}, "continue": {"type": "string"}}
        },
        TIME: {"type": "string", "format": "date-time", "description": "Time is a wrapper around time.Time (RFC 3339, seconds)."},
        DURATION: {"type": "string", "description": "Duration is a wrapper around time.Duration (Go duration text)."},
        QUANTITY: {"type": "string", "description": "Quantity is a fixed-point representation of a number."}
    })
}

/// Path items of the five endpoints, with `$ref`s starting with `prefix`; `v3` writes
/// OpenAPI 3 responses (content by media type) instead of Swagger 2.
fn paths(prefix: &str, v3: bool) -> Value {
    let r = |name: &str| json!({"$ref": format!("{prefix}{name}")});
    let response = |schema: Value| {
        if v3 {
            json!({"200": {"description": "OK", "content": {
                "application/json": {"schema": schema.clone()},
                "application/vnd.kubernetes.protobuf": {"schema": schema}
            }}, "401": {"description": "Unauthorized"}})
        } else {
            json!({"200": {"description": "OK", "schema": schema}, "401": {"description": "Unauthorized"}})
        }
    };
    let query = |name: &str, description: &str| {
        if v3 {
            json!({"name": name, "in": "query", "description": description, "schema": {"type": "string", "uniqueItems": true}})
        } else {
            json!({"name": name, "in": "query", "description": description, "type": "string", "uniqueItems": true})
        }
    };
    let path_param = |name: &str, description: &str| {
        if v3 {
            json!({"name": name, "in": "path", "required": true, "description": description, "schema": {"type": "string", "uniqueItems": true}})
        } else {
            json!({"name": name, "in": "path", "required": true, "description": description, "type": "string", "uniqueItems": true})
        }
    };
    let selectors = || {
        vec![
            query("labelSelector", "A selector to restrict the list of returned objects by their labels."),
            query("fieldSelector", "A selector to restrict the list of returned objects by their fields (metadata.name, metadata.namespace)."),
        ]
    };
    let op = |id: &str, action: &str, kind: &str, schema: &str, params: Vec<Value>| {
        let mut o = json!({
            "operationId": id,
            "description": format!("{action} {kind}"),
            "tags": ["metricsV1beta1"],
            "responses": response(r(schema)),
            "x-kubernetes-action": action,
            "x-kubernetes-group-version-kind": {"group": "metrics.k8s.io", "version": "v1beta1", "kind": kind},
            "parameters": params
        });
        if !v3 && let Some(obj) = o.as_object_mut() {
            obj.insert("produces".into(), json!(["application/json", "application/vnd.kubernetes.protobuf"]));
            obj.insert("schemes".into(), json!(["https"]));
        }
        json!({"get": o})
    };
    let name = || path_param("name", "name of the object");
    let namespace = || path_param("namespace", "object name and auth scope, such as for teams and projects");
    json!({
        "/apis/metrics.k8s.io/v1beta1/nodes": op("listMetricsV1beta1NodeMetrics", "list", "NodeMetrics", NODE_METRICS_LIST, selectors()),
        "/apis/metrics.k8s.io/v1beta1/nodes/{name}": op("readMetricsV1beta1NodeMetrics", "get", "NodeMetrics", NODE_METRICS, vec![name()]),
        "/apis/metrics.k8s.io/v1beta1/pods": op("listMetricsV1beta1PodMetricsForAllNamespaces", "list", "PodMetrics", POD_METRICS_LIST, selectors()),
        "/apis/metrics.k8s.io/v1beta1/namespaces/{namespace}/pods": op("listMetricsV1beta1NamespacedPodMetrics", "list", "PodMetrics", POD_METRICS_LIST, {
            let mut p = selectors();
            p.push(namespace());
            p
        }),
        "/apis/metrics.k8s.io/v1beta1/namespaces/{namespace}/pods/{name}": op("readMetricsV1beta1NamespacedPodMetrics", "get", "PodMetrics", POD_METRICS, vec![name(), namespace()]),
    })
}

/// FNV-1a of `data`, as 16 upper-case hex digits (the OpenAPI v3 `?hash=`).
fn hash_hex(data: &[u8]) -> String {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in data {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    format!("{h:016X}")
}

impl Documents {
    /// Builds every document; `version` is this build's version (e.g. `0.1.0`), `secure_port`
    /// the port `/apis` names in `serverAddressByClientCIDRs` (as a generic API server does).
    pub fn new(version: &str, secure_port: Option<u16>) -> Self {
        let info = json!({"title": "shardmetrics", "version": version});
        let openapi_v2 = json!({
            "swagger": "2.0",
            "info": info,
            "paths": paths("#/definitions/", false),
            "definitions": schemas("#/definitions/"),
            "securityDefinitions": {"BearerToken": {"type": "apiKey", "name": "authorization", "in": "header"}},
            "security": [{"BearerToken": []}]
        });
        let openapi_v3_group = json!({
            "openapi": "3.0.0",
            "info": info,
            "paths": paths("#/components/schemas/", true),
            "components": {
                "schemas": schemas("#/components/schemas/"),
                "securitySchemes": {"BearerToken": {"type": "apiKey", "name": "authorization", "in": "header"}}
            }
        });
        let openapi_v3_group = bytes(&openapi_v3_group);
        let openapi_v3_hash = hash_hex(&openapi_v3_group);
        let openapi_v3_index = json!({"paths": {
            "apis/metrics.k8s.io/v1beta1": {"serverRelativeURL": format!("/openapi/v3/apis/metrics.k8s.io/v1beta1?hash={openapi_v3_hash}")}
        }});
        let mut parts = version.split('.');
        let major = parts.next().unwrap_or("0");
        let minor = parts.next().unwrap_or("0");
        Self {
            apis: bytes(&apis(secure_port)),
            group: bytes(&{
                let mut g = group();
                if let Some(o) = g.as_object_mut() {
                    o.insert("kind".into(), json!("APIGroup"));
                    o.insert("apiVersion".into(), json!("v1"));
                }
                g
            }),
            resources: bytes(&json!({
                "kind": "APIResourceList",
                "apiVersion": "v1",
                "groupVersion": GROUP_VERSION,
                "resources": [
                    {"name": "nodes", "singularName": "", "namespaced": false, "kind": "NodeMetrics", "verbs": ["get", "list"]},
                    {"name": "pods", "singularName": "", "namespaced": true, "kind": "PodMetrics", "verbs": ["get", "list"]}
                ]
            })),
            aggregated_v2: bytes(&aggregated("apidiscovery.k8s.io/v2")),
            aggregated_v2beta1: bytes(&aggregated("apidiscovery.k8s.io/v2beta1")),
            openapi_v2: bytes(&openapi_v2),
            openapi_v3_index: bytes(&openapi_v3_index),
            openapi_v3_group,
            openapi_v3_hash,
            version: bytes(&json!({
                "major": major, "minor": minor, "gitVersion": format!("v{version}"),
                "gitCommit": "", "gitTreeState": "", "buildDate": "",
                "goVersion": "", "compiler": "rustc", "platform": format!("{}/{}", std::env::consts::OS, match std::env::consts::ARCH {
                    "x86_64" => "amd64", "aarch64" => "arm64", other => other,
                })
            })),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(b: &Bytes) -> Value {
        serde_json::from_slice(b).expect("json")
    }

    #[test]
    fn the_resource_list_offers_nodes_and_pods_with_get_and_list() {
        let d = Documents::new("0.1.0", Some(443));
        let v = parse(&d.resources);
        assert_eq!(v["groupVersion"], "metrics.k8s.io/v1beta1");
        assert_eq!(v["resources"][0]["kind"], "NodeMetrics");
        assert_eq!(v["resources"][0]["namespaced"], false);
        assert_eq!(v["resources"][1]["kind"], "PodMetrics");
        assert_eq!(v["resources"][1]["verbs"], json!(["get", "list"]));
        assert_eq!(parse(&d.apis)["groups"][0]["preferredVersion"]["groupVersion"], "metrics.k8s.io/v1beta1");
        assert_eq!(parse(&d.group)["kind"], "APIGroup");
    }

    #[test]
    fn aggregated_discovery_is_negotiated_by_accept_and_lists_both_resources() {
        let accept = "application/json;g=apidiscovery.k8s.io;v=v2;as=APIGroupDiscoveryList,application/json";
        assert_eq!(AggregatedVersion::negotiate(Some(accept)), Some(AggregatedVersion::V2));
        assert_eq!(
            AggregatedVersion::negotiate(Some("application/json;g=apidiscovery.k8s.io;v=v2beta1;as=APIGroupDiscoveryList")),
            Some(AggregatedVersion::V2beta1)
        );
        assert_eq!(AggregatedVersion::negotiate(Some("application/json")), None);
        let v = parse(&Documents::new("0.1.0", Some(443)).aggregated_v2);
        let resources = &v["items"][0]["versions"][0]["resources"];
        assert_eq!(resources[0]["responseKind"]["kind"], "NodeMetrics");
        assert_eq!(resources[1]["scope"], "Namespaced");
    }

    #[test]
    fn openapi_documents_reference_only_defined_schemas() {
        let d = Documents::new("0.1.0", Some(443));
        for (doc, prefix, defs) in [
            (parse(&d.openapi_v2), "#/definitions/", "/definitions"),
            (parse(&d.openapi_v3_group), "#/components/schemas/", "/components/schemas"),
        ] {
            let text = doc.to_string();
            let defined = doc.pointer(defs).and_then(Value::as_object).expect("schemas");
            for piece in text.split("\"$ref\":\"").skip(1) {
                let target = piece.split('"').next().unwrap_or_default();
                let name = target.strip_prefix(prefix).unwrap_or_else(|| panic!("bad ref {target}"));
                assert!(defined.contains_key(name), "undefined {name}");
            }
            assert_eq!(doc["paths"].as_object().map(|p| p.len()), Some(5));
        }
        let index = parse(&d.openapi_v3_index);
        let url = index["paths"]["apis/metrics.k8s.io/v1beta1"]["serverRelativeURL"].as_str().expect("url");
        assert!(url.ends_with(&d.openapi_v3_hash));
        assert_eq!(parse(&d.version)["gitVersion"], "v0.1.0");
    }
}
