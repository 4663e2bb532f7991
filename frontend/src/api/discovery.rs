//! Discovery and schema documents: `/apis`, `/apis/metrics.k8s.io`, the resource list of each
//! version (`/apis/metrics.k8s.io/v1`, `/apis/metrics.k8s.io/v1beta1`), aggregated discovery
//! (`apidiscovery.k8s.io` v2 and v2beta1), `/openapi/v2`, `/openapi/v3` (one document per group
//! version) and `/version`. All are built once at startup. `v1` is the preferred version.

use bytes::Bytes;
use serde_json::{Value, json};

use super::version::ApiVersion;

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
    /// `/apis/metrics.k8s.io/v1`: APIResourceList.
    pub resources_v1: Bytes,
    /// `/apis/metrics.k8s.io/v1beta1`: APIResourceList.
    pub resources_v1beta1: Bytes,
    /// `/apis` as APIGroupDiscoveryList, v2.
    pub aggregated_v2: Bytes,
    /// `/apis` as APIGroupDiscoveryList, v2beta1.
    pub aggregated_v2beta1: Bytes,
    /// `/openapi/v2`.
    pub openapi_v2: Bytes,
    /// `/openapi/v3`: the index.
    pub openapi_v3_index: Bytes,
    /// `/openapi/v3/apis/metrics.k8s.io/v1`.
    pub openapi_v3_v1: Bytes,
    /// `/openapi/v3/apis/metrics.k8s.io/v1beta1`.
    pub openapi_v3_v1beta1: Bytes,
    /// `/version`.
    pub version: Bytes,
}

fn bytes(v: &Value) -> Bytes {
    Bytes::from(serde_json::to_vec(v).unwrap_or_default())
}

impl Documents {
    /// The resource list of `version`.
    pub fn resources(&self, version: ApiVersion) -> &Bytes {
        match version {
            ApiVersion::V1 => &self.resources_v1,
            ApiVersion::V1beta1 => &self.resources_v1beta1,
        }
    }

    /// The OpenAPI v3 document of `version`.
    pub fn openapi_v3(&self, version: ApiVersion) -> &Bytes {
        match version {
            ApiVersion::V1 => &self.openapi_v3_v1,
            ApiVersion::V1beta1 => &self.openapi_v3_v1beta1,
        }
    }
}

fn group_version(v: ApiVersion) -> Value {
    json!({"groupVersion": v.group_version(), "version": v.version()})
}

fn group() -> Value {
    json!({
        "name": "metrics.k8s.io",
        "versions": ApiVersion::ALL.map(group_version),
        "preferredVersion": group_version(ApiVersion::ALL[0]),
    })
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
            "verbs": VERBS
        })
    };
    let versions: Vec<Value> = ApiVersion::ALL
        .iter()
        .map(|v| {
            json!({
                "version": v.version(),
                "resources": [resource("nodes", "NodeMetrics", "Cluster"), resource("pods", "PodMetrics", "Namespaced")],
                "freshness": "Current"
            })
        })
        .collect();
    json!({
        "kind": "APIGroupDiscoveryList",
        "apiVersion": api_version,
        "metadata": {},
        "items": [{
            "metadata": {"name": "metrics.k8s.io", "creationTimestamp": null},
            "versions": versions
        }]
    })
}

/// The verbs of both resources (`watch` beyond metrics-server, see [`super::watch`]).
const VERBS: [&str; 3] = ["get", "list", "watch"];

/// The definition name of `kind` in `v`.
fn def(v: ApiVersion, kind: &str) -> String {
    format!("{}.{kind}", v.definitions())
}
const OBJECT_META: &str = "io.k8s.apimachinery.pkg.apis.meta.v1.ObjectMeta";
const LIST_META: &str = "io.k8s.apimachinery.pkg.apis.meta.v1.ListMeta";
const TIME: &str = "io.k8s.apimachinery.pkg.apis.meta.v1.Time";
const DURATION: &str = "io.k8s.apimachinery.pkg.apis.meta.v1.Duration";
const QUANTITY: &str = "io.k8s.apimachinery.pkg.api.resource.Quantity";

/// The schemas of the types of `versions`, with `$ref`s starting with `prefix`.
fn schemas(prefix: &str, versions: &[ApiVersion]) -> Value {
    let r = |name: &str| json!({"$ref": format!("{prefix}{name}")});
    let api_version = json!({"type": "string", "description": "APIVersion defines the versioned schema of this representation of an object."});
    let kind = json!({"type": "string", "description": "Kind is a string value representing the REST resource this object represents."});
    let usage = json!({"type": "object", "additionalProperties": r(QUANTITY),
        "description": "The memory usage is the memory working set; CPU is in cores averaged over the window."});
    let mut all = json!({
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
    });
    for &v in versions {
        let gvk = |k: &str| json!([{"group": "metrics.k8s.io", "version": v.version(), "kind": k}]);
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
        let (node, pod, container) = (def(v, "NodeMetrics"), def(v, "PodMetrics"), def(v, "ContainerMetrics"));
        let Some(map) = all.as_object_mut() else { continue };
        map.insert(node.clone(), json!({
            "type": "object", "required": ["timestamp", "window", "usage"],
            "description": "NodeMetrics sets resource usage metrics of a node.",
            "properties": {
                "apiVersion": api_version, "kind": kind, "metadata": r(OBJECT_META),
                "timestamp": r(TIME), "window": r(DURATION), "usage": usage
            },
            "x-kubernetes-group-version-kind": gvk("NodeMetrics")
        }));
        map.insert(pod.clone(), json!({
            "type": "object", "required": ["timestamp", "window", "containers"],
            "description": "PodMetrics sets resource usage metrics of a pod.",
            "properties": {
                "apiVersion": api_version, "kind": kind, "metadata": r(OBJECT_META),
                "timestamp": r(TIME), "window": r(DURATION),
                "containers": {"type": "array", "items": r(&container),
                               "description": "Metrics for all containers are collected within the same time window."}
            },
            "x-kubernetes-group-version-kind": gvk("PodMetrics")
        }));
        map.insert(container, json!({
            "type": "object", "required": ["name", "usage"],
            "description": "ContainerMetrics sets resource usage metrics of a container.",
            "properties": {"name": {"type": "string", "description": "Container name corresponding to the one from pod.spec.containers."}, "usage": usage}
        }));
        map.insert(def(v, "NodeMetricsList"), list(&node, "NodeMetricsList"));
        map.insert(def(v, "PodMetricsList"), list(&pod, "PodMetricsList"));
    }
    all
}

/// Path items of the five endpoints of each of `versions`, with `$ref`s starting with `prefix`;
/// `v3` writes OpenAPI 3 responses (content by media type) instead of Swagger 2.
fn paths(prefix: &str, v3: bool, versions: &[ApiVersion]) -> Value {
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
    let name = || path_param("name", "name of the object");
    let namespace = || path_param("namespace", "object name and auth scope, such as for teams and projects");
    let mut all = serde_json::Map::new();
    for &v in versions {
        let stem = v.operation_stem();
        // operationId `<verb><stem><suffix>`, e.g. listMetricsV1NodeMetrics.
        let op = |(verb, suffix): (&str, &str), action: &str, kind: &str, schema: &str, params: Vec<Value>| {
            let mut o = json!({
                "operationId": format!("{verb}{stem}{suffix}"),
                "description": format!("{action} {kind}"),
                "tags": [format!("{}{}", stem[..1].to_ascii_lowercase(), &stem[1..])],
                "responses": response(r(&def(v, schema))),
                "x-kubernetes-action": action,
                "x-kubernetes-group-version-kind": {"group": "metrics.k8s.io", "version": v.version(), "kind": kind},
                "parameters": params
            });
            if !v3 && let Some(obj) = o.as_object_mut() {
                obj.insert("produces".into(), json!(["application/json", "application/vnd.kubernetes.protobuf"]));
                obj.insert("schemes".into(), json!(["https"]));
            }
            json!({"get": o})
        };
        let base = v.path();
        all.insert(format!("{base}/nodes"), op(("list", "NodeMetrics"), "list", "NodeMetrics", "NodeMetricsList", selectors()));
        all.insert(format!("{base}/nodes/{{name}}"), op(("read", "NodeMetrics"), "get", "NodeMetrics", "NodeMetrics", vec![name()]));
        all.insert(format!("{base}/pods"), op(("list", "PodMetricsForAllNamespaces"), "list", "PodMetrics", "PodMetricsList", selectors()));
        all.insert(
            format!("{base}/namespaces/{{namespace}}/pods"),
            op(("list", "NamespacedPodMetrics"), "list", "PodMetrics", "PodMetricsList", {
                let mut p = selectors();
                p.push(namespace());
                p
            }),
        );
        all.insert(
            format!("{base}/namespaces/{{namespace}}/pods/{{name}}"),
            op(("read", "NamespacedPodMetrics"), "get", "PodMetrics", "PodMetrics", vec![name(), namespace()]),
        );
    }
    Value::Object(all)
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
            "paths": paths("#/definitions/", false, &ApiVersion::ALL),
            "definitions": schemas("#/definitions/", &ApiVersion::ALL),
            "securityDefinitions": {"BearerToken": {"type": "apiKey", "name": "authorization", "in": "header"}},
            "security": [{"BearerToken": []}]
        });
        let openapi_v3 = |v: ApiVersion| {
            bytes(&json!({
                "openapi": "3.0.0",
                "info": info,
                "paths": paths("#/components/schemas/", true, &[v]),
                "components": {
                    "schemas": schemas("#/components/schemas/", &[v]),
                    "securitySchemes": {"BearerToken": {"type": "apiKey", "name": "authorization", "in": "header"}}
                }
            }))
        };
        let (openapi_v3_v1, openapi_v3_v1beta1) = (openapi_v3(ApiVersion::V1), openapi_v3(ApiVersion::V1beta1));
        let index_entry = |v: ApiVersion, doc: &Bytes| {
            let key = v.path().trim_start_matches('/').to_owned();
            (key, json!({"serverRelativeURL": format!("/openapi/v3{}?hash={}", v.path(), hash_hex(doc))}))
        };
        let openapi_v3_index = json!({"paths": serde_json::Map::from_iter([
            index_entry(ApiVersion::V1, &openapi_v3_v1),
            index_entry(ApiVersion::V1beta1, &openapi_v3_v1beta1),
        ])});
        let resources = |v: ApiVersion| {
            bytes(&json!({
                "kind": "APIResourceList",
                "apiVersion": "v1",
                "groupVersion": v.group_version(),
                "resources": [
                    {"name": "nodes", "singularName": "", "namespaced": false, "kind": "NodeMetrics", "verbs": VERBS},
                    {"name": "pods", "singularName": "", "namespaced": true, "kind": "PodMetrics", "verbs": VERBS}
                ]
            }))
        };
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
            resources_v1: resources(ApiVersion::V1),
            resources_v1beta1: resources(ApiVersion::V1beta1),
            aggregated_v2: bytes(&aggregated("apidiscovery.k8s.io/v2")),
            aggregated_v2beta1: bytes(&aggregated("apidiscovery.k8s.io/v2beta1")),
            openapi_v2: bytes(&openapi_v2),
            openapi_v3_index: bytes(&openapi_v3_index),
            openapi_v3_v1,
            openapi_v3_v1beta1,
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
    fn each_version_lists_nodes_and_pods_and_v1_is_preferred() {
        let d = Documents::new("0.1.0", Some(443));
        for v in ApiVersion::ALL {
            let list = parse(d.resources(v));
            assert_eq!(list["groupVersion"], v.group_version());
            assert_eq!(list["resources"][0]["kind"], "NodeMetrics");
            assert_eq!(list["resources"][0]["namespaced"], false);
            assert_eq!(list["resources"][1]["kind"], "PodMetrics");
            assert_eq!(list["resources"][1]["verbs"], json!(VERBS));
        }
        let group = parse(&d.group);
        assert_eq!(group["kind"], "APIGroup");
        assert_eq!(group["preferredVersion"]["groupVersion"], "metrics.k8s.io/v1");
        assert_eq!(group["versions"], json!([{"groupVersion": "metrics.k8s.io/v1", "version": "v1"}, {"groupVersion": "metrics.k8s.io/v1beta1", "version": "v1beta1"}]));
        let apis = parse(&d.apis);
        assert_eq!(apis["groups"][0]["preferredVersion"]["groupVersion"], "metrics.k8s.io/v1");
        assert_eq!(apis["groups"][0]["serverAddressByClientCIDRs"][0]["serverAddress"], ":443");
    }

    #[test]
    fn aggregated_discovery_is_negotiated_by_accept_and_lists_both_versions() {
        let accept = "application/json;g=apidiscovery.k8s.io;v=v2;as=APIGroupDiscoveryList,application/json";
        assert_eq!(AggregatedVersion::negotiate(Some(accept)), Some(AggregatedVersion::V2));
        assert_eq!(
            AggregatedVersion::negotiate(Some("application/json;g=apidiscovery.k8s.io;v=v2beta1;as=APIGroupDiscoveryList")),
            Some(AggregatedVersion::V2beta1)
        );
        assert_eq!(AggregatedVersion::negotiate(Some("application/json")), None);
        let v = parse(&Documents::new("0.1.0", Some(443)).aggregated_v2);
        let versions = &v["items"][0]["versions"];
        assert_eq!((versions[0]["version"].as_str(), versions[1]["version"].as_str()), (Some("v1"), Some("v1beta1")));
        let resources = &versions[1]["resources"];
        assert_eq!(resources[0]["responseKind"]["kind"], "NodeMetrics");
        assert_eq!(resources[1]["scope"], "Namespaced");
    }

    #[test]
    fn openapi_documents_reference_only_defined_schemas() {
        let d = Documents::new("0.1.0", Some(443));
        for (doc, prefix, defs, paths) in [
            (parse(&d.openapi_v2), "#/definitions/", "/definitions", 10),
            (parse(&d.openapi_v3_v1), "#/components/schemas/", "/components/schemas", 5),
            (parse(&d.openapi_v3_v1beta1), "#/components/schemas/", "/components/schemas", 5),
        ] {
            let text = doc.to_string();
            let defined = doc.pointer(defs).and_then(Value::as_object).expect("schemas");
            for piece in text.split("\"$ref\":\"").skip(1) {
                let target = piece.split('"').next().unwrap_or_default();
                let name = target.strip_prefix(prefix).unwrap_or_else(|| panic!("bad ref {target}"));
                assert!(defined.contains_key(name), "undefined {name}");
            }
            assert_eq!(doc["paths"].as_object().map(|p| p.len()), Some(paths));
        }
        assert!(parse(&d.openapi_v2)["paths"]["/apis/metrics.k8s.io/v1/nodes"]["get"]["operationId"] == "listMetricsV1NodeMetrics");
        let index = parse(&d.openapi_v3_index);
        for v in ApiVersion::ALL {
            let url = index["paths"][v.path().trim_start_matches('/')]["serverRelativeURL"].as_str().expect("url");
            assert!(url.ends_with(&hash_hex(d.openapi_v3(v))), "{url}");
        }
        assert_eq!(parse(&d.version)["gitVersion"], "v0.1.0");
    }
}
