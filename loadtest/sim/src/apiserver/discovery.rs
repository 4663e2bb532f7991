//! Discovery documents (`/version`, `/api`, `/apis`, resource lists) and the little OpenAPI that
//! kubectl needs.
//!
//! Aggregated discovery (`Accept: ...;as=APIGroupDiscoveryList`) is answered with the legacy
//! documents and a plain `application/json` content type; client-go then falls back to legacy
//! discovery, as it does against older servers.
//!
//! OpenAPI: `kubectl create -f` validates by default. It first asks `/openapi/v3` whether the
//! server supports the `fieldValidation` query parameter on the kind's PATCH operation; the
//! documents here declare exactly that (and nothing else), so kubectl leaves validation to the
//! server. `/openapi/v2` (fetched eagerly by kubectl's validator) is an empty document.

use serde_json::{Value, json};

use super::resources::{REVIEWS, STORED, native_groups};

/// The version reported at `/version` (a 1.35 server, so kubectl 1.35 sees no skew).
pub fn version() -> Value {
    json!({
        "major": "1",
        "minor": "35",
        "emulationMajor": "1",
        "emulationMinor": "35",
        "minCompatibilityMajor": "1",
        "minCompatibilityMinor": "34",
        "gitVersion": "v1.35.0-shardmetrics-sim",
        "gitCommit": "0000000000000000000000000000000000000000",
        "gitTreeState": "clean",
        "buildDate": "2025-12-17T00:00:00Z",
        "goVersion": "go1.25.5",
        "compiler": "gc",
        "platform": "linux/amd64"
    })
}

/// `/api`.
pub fn api_versions(server_address: &str) -> Value {
    json!({
        "kind": "APIVersions",
        "versions": ["v1"],
        "serverAddressByClientCIDRs": [{"clientCIDR": "0.0.0.0/0", "serverAddress": server_address}]
    })
}

const STORED_VERBS: [&str; 7] = ["create", "delete", "get", "list", "patch", "update", "watch"];

/// The APIResourceList of a natively served group version, or `None` if not served.
pub fn resource_list(group: &str, version: &str) -> Option<Value> {
    let mut resources = Vec::new();
    for r in STORED.iter().filter(|r| r.group == group && r.version == version) {
        let mut entry = json!({
            "name": r.plural,
            "singularName": r.singular,
            "namespaced": r.namespaced,
            "kind": r.kind,
            "verbs": STORED_VERBS,
        });
        if !r.short_names.is_empty() {
            entry["shortNames"] = json!(r.short_names);
        }
        resources.push(entry);
        if r.has_status {
            resources.push(json!({
                "name": format!("{}/status", r.plural),
                "singularName": "",
                "namespaced": r.namespaced,
                "kind": r.kind,
                "verbs": ["get", "patch", "update"],
            }));
        }
    }
    for r in REVIEWS.iter().filter(|r| r.group == group && r.version == version) {
        resources.push(json!({
            "name": r.plural,
            "singularName": r.singular,
            "namespaced": r.namespaced,
            "kind": r.kind,
            "verbs": ["create"],
        }));
    }
    if resources.is_empty() {
        return None;
    }
    let group_version = if group.is_empty() { version.to_owned() } else { format!("{group}/{version}") };
    Some(json!({"kind": "APIResourceList", "apiVersion": "v1", "groupVersion": group_version, "resources": resources}))
}

fn group_entry(name: &str, version: &str) -> Value {
    let gv = json!({"groupVersion": format!("{name}/{version}"), "version": version});
    json!({"name": name, "versions": [gv.clone()], "preferredVersion": gv})
}

/// `/apis`: the native groups, plus `metrics.k8s.io` when aggregation backends are registered.
pub fn group_list(with_metrics: bool) -> Value {
    let mut groups: Vec<Value> = native_groups().into_iter().map(|(g, v)| group_entry(g, v)).collect();
    if with_metrics {
        groups.push(group_entry(super::proxy::METRICS_GROUP, super::proxy::METRICS_VERSION));
    }
    json!({"kind": "APIGroupList", "apiVersion": "v1", "groups": groups})
}

/// `/apis/<group>`, or `None` if the group is not served.
pub fn group(name: &str, with_metrics: bool) -> Option<Value> {
    let version = native_groups()
        .into_iter()
        .find(|(g, _)| *g == name)
        .map(|(_, v)| v)
        .or((with_metrics && name == super::proxy::METRICS_GROUP).then_some(super::proxy::METRICS_VERSION))?;
    let mut g = group_entry(name, version);
    g["kind"] = json!("APIGroup");
    g["apiVersion"] = json!("v1");
    Some(g)
}

/// A stable hash of this build's OpenAPI documents (clients cache by it).
const OPENAPI_HASH: &str = "5F3C1B2A9D8E7F60";

/// `/openapi/v3`: one entry per served group version.
pub fn openapi_v3_root() -> Value {
    let mut paths = serde_json::Map::new();
    let mut gvs: Vec<(&str, &str)> = vec![("", "v1")];
    gvs.extend(native_groups());
    for (g, v) in gvs {
        let key = if g.is_empty() { format!("api/{v}") } else { format!("apis/{g}/{v}") };
        paths.insert(key.clone(), json!({"serverRelativeURL": format!("/openapi/v3/{key}?hash={OPENAPI_HASH}")}));
    }
    json!({"paths": paths})
}

/// `/openapi/v3/<api/v1 | apis/g/v>`: PATCH operations declaring `fieldValidation` for every
/// stored kind of that group version, so kubectl delegates validation to the server.
pub fn openapi_v3_group_version(gv_path: &str) -> Option<Value> {
    let (group, version) = match gv_path.split('/').collect::<Vec<_>>().as_slice() {
        ["api", v] => ("", *v),
        ["apis", g, v] => (*g, *v),
        _ => return None,
    };
    let served = STORED.iter().any(|r| r.group == group && r.version == version)
        || REVIEWS.iter().any(|r| r.group == group && r.version == version);
    if !served {
        return None;
    }
    let mut paths = serde_json::Map::new();
    for r in STORED.iter().filter(|r| r.group == group && r.version == version) {
        let base = r.group_version_path();
        let path = if r.namespaced {
            format!("{base}/namespaces/{{namespace}}/{}/{{name}}", r.plural)
        } else {
            format!("{base}/{}/{{name}}", r.plural)
        };
        let gvk = json!({"group": r.group, "version": r.version, "kind": r.kind});
        let op = |verb: &str| {
            json!({
                "description": format!("{verb} the specified {}", r.kind),
                "operationId": format!("{verb}{}", r.kind),
                "parameters": [
                    {"name": "dryRun", "in": "query", "schema": {"type": "string", "uniqueItems": true}},
                    {"name": "fieldManager", "in": "query", "schema": {"type": "string", "uniqueItems": true}},
                    {"name": "fieldValidation", "in": "query", "schema": {"type": "string", "uniqueItems": true}}
                ],
                "responses": {"200": {"description": "OK"}},
                "x-kubernetes-action": verb,
                "x-kubernetes-group-version-kind": gvk,
            })
        };
        paths.insert(path, json!({"patch": op("patch"), "put": op("put")}));
    }
    Some(json!({
        "openapi": "3.0.0",
        "info": {"title": "Kubernetes", "version": "v1.35.0"},
        "paths": paths,
        "components": {"schemas": {}}
    }))
}

/// `/openapi/v2` as JSON (an empty Swagger document).
pub fn openapi_v2_json() -> Value {
    json!({"swagger": "2.0", "info": {"title": "Kubernetes", "version": "v1.35.0"}, "paths": {}, "definitions": {}})
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_core_resource_list_has_nodes_pods_and_their_status() {
        let list = resource_list("", "v1").unwrap();
        let names: Vec<&str> = list["resources"].as_array().unwrap().iter().map(|r| r["name"].as_str().unwrap()).collect();
        assert_eq!(names, ["nodes", "nodes/status", "pods", "pods/status", "namespaces", "namespaces/status", "configmaps"]);
        assert!(resource_list("apps", "v1").is_none());
        let auth = resource_list("authorization.k8s.io", "v1").unwrap();
        assert_eq!(auth["resources"][0]["verbs"], json!(["create"]));
    }

    #[test]
    fn metrics_appears_in_discovery_only_with_backends() {
        let names = |v: Value| -> Vec<String> {
            v["groups"].as_array().unwrap().iter().map(|g| g["name"].as_str().unwrap().to_owned()).collect()
        };
        assert!(!names(group_list(false)).contains(&"metrics.k8s.io".to_owned()));
        assert!(names(group_list(true)).contains(&"metrics.k8s.io".to_owned()));
        assert!(names(group_list(false)).contains(&"coordination.k8s.io".to_owned()));
        assert!(group("metrics.k8s.io", false).is_none());
        assert_eq!(group("metrics.k8s.io", true).unwrap()["preferredVersion"]["version"], "v1beta1");
    }

    #[test]
    fn openapi_v3_declares_field_validation_on_patch() {
        let doc = openapi_v3_group_version("api/v1").unwrap();
        let op = &doc["paths"]["/api/v1/namespaces/{namespace}/pods/{name}"]["patch"];
        assert_eq!(op["x-kubernetes-group-version-kind"]["kind"], "Pod");
        assert!(op["parameters"].as_array().unwrap().iter().any(|p| p["name"] == "fieldValidation"));
        assert!(openapi_v3_root()["paths"]["apis/coordination.k8s.io/v1"]["serverRelativeURL"].is_string());
        assert!(openapi_v3_group_version("apis/apps/v1").is_none());
    }
}
