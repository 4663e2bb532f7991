//! The few Kubernetes protobuf request bodies the simulator must read: kubectl's typed clients
//! send `application/vnd.kubernetes.protobuf` for built-in kinds, which `kubectl auth can-i`
//! (SelfSubjectAccessReview) and `kubectl auth whoami` (SelfSubjectReview) post. They are
//! decoded into the JSON the rest of the simulator handles; answers are JSON (the clients accept
//! it).
//!
//! Wire format: the 4-byte magic `k8s\0`, then a `runtime.Unknown` message whose `raw` field is
//! the object's own protobuf encoding (field numbers from `k8s.io/api/.../generated.proto`).

use prost::Message;
use serde_json::{Value, json};

use super::error::ApiError;

/// The Kubernetes protobuf media type.
pub const MEDIA_TYPE: &str = "application/vnd.kubernetes.protobuf";
const MAGIC: &[u8] = b"k8s\0";

#[derive(Clone, PartialEq, Message)]
struct TypeMeta {
    #[prost(string, tag = "1")]
    api_version: String,
    #[prost(string, tag = "2")]
    kind: String,
}

#[derive(Clone, PartialEq, Message)]
struct Unknown {
    #[prost(message, optional, tag = "1")]
    type_meta: Option<TypeMeta>,
    #[prost(bytes = "vec", tag = "2")]
    raw: Vec<u8>,
}

#[derive(Clone, PartialEq, Message)]
struct ResourceAttributes {
    #[prost(string, tag = "1")]
    namespace: String,
    #[prost(string, tag = "2")]
    verb: String,
    #[prost(string, tag = "3")]
    group: String,
    #[prost(string, tag = "4")]
    version: String,
    #[prost(string, tag = "5")]
    resource: String,
    #[prost(string, tag = "6")]
    subresource: String,
    #[prost(string, tag = "7")]
    name: String,
}

#[derive(Clone, PartialEq, Message)]
struct NonResourceAttributes {
    #[prost(string, tag = "1")]
    path: String,
    #[prost(string, tag = "2")]
    verb: String,
}

#[derive(Clone, PartialEq, Message)]
struct SelfSubjectAccessReviewSpec {
    #[prost(message, optional, tag = "1")]
    resource_attributes: Option<ResourceAttributes>,
    #[prost(message, optional, tag = "2")]
    non_resource_attributes: Option<NonResourceAttributes>,
}

#[derive(Clone, PartialEq, Message)]
struct SelfSubjectAccessReview {
    #[prost(message, optional, tag = "2")]
    spec: Option<SelfSubjectAccessReviewSpec>,
}

/// Whether a Content-Type is Kubernetes protobuf.
pub fn is_protobuf(content_type: &str) -> bool {
    content_type.split(';').next().is_some_and(|t| t.trim() == MEDIA_TYPE)
}

/// Decodes a protobuf review body into its JSON form.
pub fn review_to_json(body: &[u8]) -> Result<Value, ApiError> {
    let bad = |what: &str| ApiError::BadRequest(format!("invalid protobuf body: {what}"));
    let payload = body.strip_prefix(MAGIC).ok_or_else(|| bad("missing the k8s protobuf magic"))?;
    let unknown = Unknown::decode(payload).map_err(|e| bad(&e.to_string()))?;
    let tm = unknown.type_meta.unwrap_or_default();
    match tm.kind.as_str() {
        "SelfSubjectAccessReview" => {
            let review = SelfSubjectAccessReview::decode(unknown.raw.as_slice()).map_err(|e| bad(&e.to_string()))?;
            let spec = review.spec.unwrap_or_default();
            let mut spec_json = json!({});
            if let Some(ra) = spec.resource_attributes {
                spec_json["resourceAttributes"] = json!({
                    "namespace": ra.namespace, "verb": ra.verb, "group": ra.group, "version": ra.version,
                    "resource": ra.resource, "subresource": ra.subresource, "name": ra.name,
                });
            }
            if let Some(nra) = spec.non_resource_attributes {
                spec_json["nonResourceAttributes"] = json!({"path": nra.path, "verb": nra.verb});
            }
            Ok(json!({"apiVersion": tm.api_version, "kind": tm.kind, "metadata": {}, "spec": spec_json}))
        }
        "SelfSubjectReview" => Ok(json!({"apiVersion": tm.api_version, "kind": tm.kind, "metadata": {}})),
        other => Err(ApiError::UnsupportedMediaType(format!(
            "application/json (protobuf is read only for SelfSubjectAccessReview and SelfSubjectReview, not {other:?})"
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn envelope(kind: &str, raw: Vec<u8>) -> Vec<u8> {
        let mut out = MAGIC.to_vec();
        Unknown { type_meta: Some(TypeMeta { api_version: "authorization.k8s.io/v1".into(), kind: kind.into() }), raw }
            .encode(&mut out)
            .unwrap();
        out
    }

    #[test]
    fn a_self_subject_access_review_decodes_to_json() {
        let review = SelfSubjectAccessReview {
            spec: Some(SelfSubjectAccessReviewSpec {
                resource_attributes: Some(ResourceAttributes {
                    namespace: "team-a".into(),
                    verb: "list".into(),
                    resource: "pods".into(),
                    ..Default::default()
                }),
                non_resource_attributes: None,
            }),
        };
        let v = review_to_json(&envelope("SelfSubjectAccessReview", review.encode_to_vec())).unwrap();
        assert_eq!(v["spec"]["resourceAttributes"]["verb"], "list");
        assert_eq!(v["spec"]["resourceAttributes"]["namespace"], "team-a");
        assert!(v["spec"]["nonResourceAttributes"].is_null());
    }

    #[test]
    fn other_kinds_and_garbage_are_refused() {
        assert_eq!(review_to_json(&envelope("Pod", vec![])).unwrap_err().code(), 415);
        assert_eq!(review_to_json(b"not protobuf").unwrap_err().code(), 400);
        assert!(is_protobuf("application/vnd.kubernetes.protobuf; charset=x"));
    }
}
