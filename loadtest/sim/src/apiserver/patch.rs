//! The three patch types of the Kubernetes API: JSON merge patch (RFC 7386), strategic merge
//! patch (for the fields kubectl sends on Nodes, Pods, Namespaces, ConfigMaps and Leases) and
//! JSON patch (RFC 6902).
//!
//! Strategic merge needs each list's merge key. The real server reads it from the Go structs;
//! here a table keyed by field name covers the lists of the simulated kinds (`containers` by
//! `name`, `conditions` and `addresses` by `type`, ...). Lists not in the table are replaced, as
//! they are for atomic lists in Kubernetes.

use serde_json::{Map, Value};

use super::error::ApiError;

/// The patch type named by the request's Content-Type.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PatchType {
    /// `application/merge-patch+json`.
    Merge,
    /// `application/strategic-merge-patch+json`.
    StrategicMerge,
    /// `application/json-patch+json`.
    Json,
}

impl PatchType {
    /// Reads the Content-Type of a PATCH request; `None` for types the simulator does not
    /// support (server-side apply among them).
    pub fn from_content_type(content_type: &str) -> Option<PatchType> {
        match content_type.split(';').next().unwrap_or("").trim() {
            "application/merge-patch+json" => Some(PatchType::Merge),
            "application/strategic-merge-patch+json" => Some(PatchType::StrategicMerge),
            "application/json-patch+json" => Some(PatchType::Json),
            _ => None,
        }
    }

    /// The media types accepted, for the 415 message.
    pub const ACCEPTED: &'static str =
        "application/json-patch+json, application/merge-patch+json, application/strategic-merge-patch+json";
}

/// Applies `patch` of type `kind` to `target` in place.
pub fn apply(kind: PatchType, target: &mut Value, patch: &Value) -> Result<(), ApiError> {
    match kind {
        PatchType::Merge => {
            if !patch.is_object() {
                return Err(ApiError::BadRequest("a merge patch must be a JSON object".into()));
            }
            merge_patch(target, patch);
            Ok(())
        }
        PatchType::StrategicMerge => {
            let Value::Object(p) = patch else {
                return Err(ApiError::BadRequest("a strategic merge patch must be a JSON object".into()));
            };
            match target {
                Value::Object(t) => strategic_merge_map(t, p),
                _ => Err(ApiError::Internal("patch target is not an object".into())),
            }
        }
        PatchType::Json => json_patch(target, patch),
    }
}

/// RFC 7386: objects merge recursively, `null` deletes, anything else replaces.
pub fn merge_patch(target: &mut Value, patch: &Value) {
    let Value::Object(p) = patch else {
        *target = patch.clone();
        return;
    };
    if !target.is_object() {
        *target = Value::Object(Map::new());
    }
    if let Value::Object(t) = target {
        for (k, v) in p {
            if v.is_null() {
                t.remove(k);
            } else {
                merge_patch(t.entry(k.clone()).or_insert(Value::Null), v);
            }
        }
    }
}

/// The merge key of a list field, by field name; `None` means the list is replaced whole.
fn merge_key(field: &str) -> Option<&'static str> {
    Some(match field {
        "containers" | "initContainers" | "ephemeralContainers" | "env" | "volumes" | "containerStatuses"
        | "initContainerStatuses" | "ephemeralContainerStatuses" | "imagePullSecrets" | "resourceClaims" => "name",
        "conditions" | "addresses" => "type",
        "ports" => "containerPort",
        "volumeMounts" => "mountPath",
        "volumeDevices" => "devicePath",
        "podIPs" | "hostIPs" => "ip",
        "taints" => "key",
        "ownerReferences" => "uid",
        _ => return None,
    })
}

fn strategic_merge_map(target: &mut Map<String, Value>, patch: &Map<String, Value>) -> Result<(), ApiError> {
    match patch.get("$patch").and_then(Value::as_str) {
        Some("replace") => {
            let mut replaced = patch.clone();
            replaced.remove("$patch");
            strip_directives(&mut replaced);
            *target = replaced;
            return Ok(());
        }
        Some("delete") => {
            target.clear();
            return Ok(());
        }
        Some("merge") | None => {}
        Some(other) => return Err(ApiError::BadRequest(format!("unknown $patch directive {other:?}"))),
    }
    if let Some(Value::Array(keep)) = patch.get("$retainKeys") {
        let keep: Vec<&str> = keep.iter().filter_map(Value::as_str).collect();
        target.retain(|k, _| keep.contains(&k.as_str()));
    }
    for (key, value) in patch {
        if key == "$patch" || key == "$retainKeys" || key.starts_with("$setElementOrder/") {
            continue;
        }
        if let Some(field) = key.strip_prefix("$deleteFromPrimitiveList/") {
            if let (Some(Value::Array(list)), Value::Array(remove)) = (target.get_mut(field), value) {
                list.retain(|v| !remove.contains(v));
            }
            continue;
        }
        match value {
            Value::Null => {
                target.remove(key);
            }
            Value::Object(p) => {
                let slot = target.entry(key.clone()).or_insert_with(|| Value::Object(Map::new()));
                if !slot.is_object() {
                    *slot = Value::Object(Map::new());
                }
                if let Value::Object(t) = slot {
                    strategic_merge_map(t, p)?;
                }
                if p.get("$patch").and_then(Value::as_str) == Some("delete") {
                    target.remove(key);
                }
            }
            Value::Array(items) => match merge_key(key) {
                Some(mk) if items.iter().all(Value::is_object) => {
                    let slot = target.entry(key.clone()).or_insert_with(|| Value::Array(Vec::new()));
                    if !slot.is_array() {
                        *slot = Value::Array(Vec::new());
                    }
                    if let Value::Array(list) = slot {
                        strategic_merge_list(list, items, mk)?;
                    }
                }
                _ => {
                    let mut v = value.clone();
                    strip_directives_value(&mut v);
                    target.insert(key.clone(), v);
                }
            },
            other => {
                target.insert(key.clone(), other.clone());
            }
        }
    }
    Ok(())
}

fn strategic_merge_list(list: &mut Vec<Value>, patch: &[Value], merge_key: &str) -> Result<(), ApiError> {
    if patch.iter().any(|p| p.get("$patch").and_then(Value::as_str) == Some("replace")) {
        let mut replaced: Vec<Value> =
            patch.iter().filter(|p| p.get("$patch").and_then(Value::as_str) != Some("replace")).cloned().collect();
        replaced.iter_mut().for_each(strip_directives_value);
        *list = replaced;
        return Ok(());
    }
    for item in patch {
        let Value::Object(p) = item else { continue };
        let Some(key_value) = p.get(merge_key) else {
            return Err(ApiError::BadRequest(format!("map in list is missing merge key {merge_key:?}")));
        };
        let pos = list.iter().position(|e| e.get(merge_key) == Some(key_value));
        let delete = p.get("$patch").and_then(Value::as_str) == Some("delete");
        match (pos, delete) {
            (Some(i), true) => {
                list.remove(i);
            }
            (None, true) => {}
            (Some(i), false) => {
                if let Value::Object(t) = &mut list[i] {
                    strategic_merge_map(t, p)?;
                }
            }
            (None, false) => {
                let mut fresh = Map::new();
                strategic_merge_map(&mut fresh, p)?;
                list.push(Value::Object(fresh));
            }
        }
    }
    Ok(())
}

fn strip_directives(map: &mut Map<String, Value>) {
    map.retain(|k, _| !k.starts_with('$'));
    map.values_mut().for_each(strip_directives_value);
}

fn strip_directives_value(v: &mut Value) {
    match v {
        Value::Object(m) => strip_directives(m),
        Value::Array(a) => a.iter_mut().for_each(strip_directives_value),
        _ => {}
    }
}

/// RFC 6902 JSON patch: add, remove, replace, test, move, copy. All or nothing: on error the
/// target is left unchanged.
pub fn json_patch(target: &mut Value, patch: &Value) -> Result<(), ApiError> {
    let Value::Array(ops) = patch else {
        return Err(ApiError::BadRequest("a JSON patch must be an array of operations".into()));
    };
    let mut doc = target.clone();
    for op in ops {
        let name = op.get("op").and_then(Value::as_str).ok_or_else(|| bad("operation without \"op\""))?;
        let path = op.get("path").and_then(Value::as_str).ok_or_else(|| bad("operation without \"path\""))?;
        let value = || op.get("value").cloned().ok_or_else(|| bad(&format!("{name} without \"value\"")));
        let from = || op.get("from").and_then(Value::as_str).ok_or_else(|| bad(&format!("{name} without \"from\"")));
        match name {
            "add" => pointer_add(&mut doc, path, value()?)?,
            "remove" => {
                pointer_remove(&mut doc, path)?;
            }
            "replace" => {
                let slot = doc.pointer_mut(path).ok_or_else(|| bad(&format!("replace: path {path:?} does not exist")))?;
                *slot = value()?;
            }
            "test" => {
                if doc.pointer(path) != Some(&value()?) {
                    return Err(ApiError::Invalid(format!("test failed at {path:?}")));
                }
            }
            "move" => {
                let v = pointer_remove(&mut doc, from()?)?;
                pointer_add(&mut doc, path, v)?;
            }
            "copy" => {
                let v = doc.pointer(from()?).cloned().ok_or_else(|| bad("copy: \"from\" does not exist"))?;
                pointer_add(&mut doc, path, v)?;
            }
            other => return Err(bad(&format!("unknown operation {other:?}"))),
        }
    }
    *target = doc;
    Ok(())
}

fn bad(msg: &str) -> ApiError {
    ApiError::BadRequest(format!("invalid JSON patch: {msg}"))
}

fn split_pointer(path: &str) -> Result<(&str, String), ApiError> {
    let (parent, last) = path.rsplit_once('/').ok_or_else(|| bad(&format!("path {path:?} must start with '/'")))?;
    Ok((parent, last.replace("~1", "/").replace("~0", "~")))
}

fn pointer_add(doc: &mut Value, path: &str, value: Value) -> Result<(), ApiError> {
    if path.is_empty() {
        *doc = value;
        return Ok(());
    }
    let (parent, last) = split_pointer(path)?;
    match doc.pointer_mut(parent) {
        Some(Value::Object(m)) => {
            m.insert(last, value);
            Ok(())
        }
        Some(Value::Array(a)) => {
            let idx = if last == "-" { a.len() } else { last.parse().map_err(|_| bad(&format!("bad index {last:?}")))? };
            if idx > a.len() {
                return Err(bad(&format!("index {idx} out of range")));
            }
            a.insert(idx, value);
            Ok(())
        }
        _ => Err(bad(&format!("add: parent of {path:?} does not exist"))),
    }
}

fn pointer_remove(doc: &mut Value, path: &str) -> Result<Value, ApiError> {
    let (parent, last) = split_pointer(path)?;
    let missing = || bad(&format!("remove: path {path:?} does not exist"));
    match doc.pointer_mut(parent) {
        Some(Value::Object(m)) => m.remove(&last).ok_or_else(missing),
        Some(Value::Array(a)) => {
            let idx: usize = last.parse().map_err(|_| missing())?;
            if idx < a.len() { Ok(a.remove(idx)) } else { Err(missing()) }
        }
        _ => Err(missing()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn a_merge_patch_merges_objects_replaces_lists_and_deletes_nulls() {
        let mut doc = json!({"metadata": {"labels": {"a": "1", "b": "2"}}, "spec": {"list": [1, 2]}});
        apply(PatchType::Merge, &mut doc, &json!({"metadata": {"labels": {"a": null, "c": "3"}}, "spec": {"list": [3]}}))
            .unwrap();
        assert_eq!(doc, json!({"metadata": {"labels": {"b": "2", "c": "3"}}, "spec": {"list": [3]}}));
    }

    #[test]
    fn a_strategic_merge_patch_merges_conditions_by_type() {
        let mut node = json!({"status": {"conditions": [
            {"type": "Ready", "status": "True"},
            {"type": "MemoryPressure", "status": "False"}
        ], "capacity": {"cpu": "4"}}});
        let patch = json!({"status": {"conditions": [{"type": "Ready", "status": "False", "reason": "KubeletDown"}],
            "$setElementOrder/conditions": [{"type": "MemoryPressure"}, {"type": "Ready"}]}});
        apply(PatchType::StrategicMerge, &mut node, &patch).unwrap();
        assert_eq!(
            node,
            json!({"status": {"conditions": [
                {"type": "Ready", "status": "False", "reason": "KubeletDown"},
                {"type": "MemoryPressure", "status": "False"}
            ], "capacity": {"cpu": "4"}}})
        );
    }

    #[test]
    fn strategic_merge_directives_delete_and_replace_list_items_and_maps() {
        let mut pod = json!({"spec": {"containers": [{"name": "a", "image": "x"}, {"name": "b", "image": "y"}],
            "nodeSelector": {"k": "v"}, "tolerations": [{"key": "t"}]}});
        let patch = json!({"spec": {
            "containers": [{"name": "a", "$patch": "delete"}, {"name": "c", "image": "z"}],
            "nodeSelector": {"$patch": "replace", "new": "1"},
            "tolerations": [{"key": "u"}]
        }});
        apply(PatchType::StrategicMerge, &mut pod, &patch).unwrap();
        assert_eq!(
            pod,
            json!({"spec": {"containers": [{"name": "b", "image": "y"}, {"name": "c", "image": "z"}],
                "nodeSelector": {"new": "1"}, "tolerations": [{"key": "u"}]}})
        );
    }

    #[test]
    fn a_json_patch_is_all_or_nothing() {
        let mut doc = json!({"metadata": {"labels": {"a": "1"}}, "list": [1, 2]});
        apply(
            PatchType::Json,
            &mut doc,
            &json!([{"op": "add", "path": "/metadata/labels/b~1c", "value": "2"}, {"op": "add", "path": "/list/-", "value": 3},
                {"op": "remove", "path": "/list/0"}]),
        )
        .unwrap();
        assert_eq!(doc, json!({"metadata": {"labels": {"a": "1", "b/c": "2"}}, "list": [2, 3]}));
        let before = doc.clone();
        let err = apply(PatchType::Json, &mut doc, &json!([{"op": "replace", "path": "/list/0", "value": 9},
            {"op": "remove", "path": "/nope"}]));
        assert!(err.is_err());
        assert_eq!(doc, before);
    }

    #[test]
    fn patch_types_come_from_the_content_type() {
        assert_eq!(PatchType::from_content_type("application/merge-patch+json; charset=utf-8"), Some(PatchType::Merge));
        assert_eq!(PatchType::from_content_type("application/apply-patch+yaml"), None);
    }
}
