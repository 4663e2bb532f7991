//! Metadata-only responses (`Accept: application/json;as=PartialObjectMetadataList;g=meta.k8s.io;v=v1`
//! for lists, `as=PartialObjectMetadata` for single objects and watch events), which client-go's
//! metadata informers (metrics-server's pod informer) and kube-rs' metadata watchers ask for.
//! Only JSON is served; a protobuf alternative earlier in the header is passed over, as
//! kube-apiserver picks the first alternative it can serve.

use serde_json::{Value, json};

/// Whether the first alternative of `accept` the simulator can serve (JSON) asks for
/// `PartialObjectMetadata` (or its list).
pub fn wants_metadata(accept: &str) -> bool {
    accept
        .split(',')
        .map(str::trim)
        .find(|alt| !alt.contains("protobuf"))
        .is_some_and(|alt| alt.contains("as=PartialObjectMetadata"))
}

/// The `PartialObjectMetadata` of a stored object (its metadata, without managedFields).
pub fn partial(obj: &Value) -> Value {
    let mut meta = obj["metadata"].clone();
    if let Value::Object(m) = &mut meta {
        m.remove("managedFields");
    }
    json!({"kind": "PartialObjectMetadata", "apiVersion": "meta.k8s.io/v1", "metadata": meta})
}

/// A `PartialObjectMetadataList` of `objects`.
pub fn list(objects: &[Value], resource_version: u64, continue_token: Option<&str>) -> Value {
    let mut meta = json!({"resourceVersion": resource_version.to_string()});
    if let Some(c) = continue_token {
        meta["continue"] = json!(c);
    }
    json!({
        "kind": "PartialObjectMetadataList",
        "apiVersion": "meta.k8s.io/v1",
        "metadata": meta,
        "items": objects.iter().map(partial).collect::<Vec<_>>(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn client_gos_metadata_accept_header_gets_json_metadata() {
        let list_accept = "application/vnd.kubernetes.protobuf;as=PartialObjectMetadataList;g=meta.k8s.io;v=v1,application/json;as=PartialObjectMetadataList;g=meta.k8s.io;v=v1,application/json";
        assert!(wants_metadata(list_accept));
        assert!(wants_metadata("application/json;as=PartialObjectMetadata;g=meta.k8s.io;v=v1"));
        assert!(!wants_metadata("application/json"));
        assert!(!wants_metadata("application/vnd.kubernetes.protobuf, */*"));
        assert!(!wants_metadata("application/json;as=Table;v=v1;g=meta.k8s.io,application/json"));
    }

    #[test]
    fn metadata_keeps_labels_and_drops_the_rest() {
        let pod = json!({"kind": "Pod", "apiVersion": "v1", "metadata": {"name": "p", "namespace": "n", "labels": {"app": "a"}, "managedFields": [{}]}, "spec": {"nodeName": "x"}});
        let p = partial(&pod);
        assert_eq!(p["kind"], "PartialObjectMetadata");
        assert_eq!(p["metadata"]["labels"]["app"], "a");
        assert!(p["metadata"].get("managedFields").is_none() && p.get("spec").is_none());
        let l = list(&[pod], 7, Some("c"));
        assert_eq!((l["kind"].as_str(), l["metadata"]["resourceVersion"].as_str(), l["metadata"]["continue"].as_str()), (Some("PartialObjectMetadataList"), Some("7"), Some("c")));
        assert_eq!(l["items"][0]["metadata"]["name"], "p");
    }
}
