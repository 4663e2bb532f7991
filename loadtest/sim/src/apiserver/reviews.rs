//! TokenReview, SubjectAccessReview and the self reviews, answered from the [`Policy`].

use serde_json::{Value, json};

use super::error::ApiError;
use super::policy::{Attributes, Policy, UserInfo};
use super::resources::Review;

fn strings(v: &Value) -> Vec<String> {
    v.as_array().map(|a| a.iter().filter_map(|s| s.as_str().map(str::to_owned)).collect()).unwrap_or_default()
}

/// Reads `resourceAttributes` / `nonResourceAttributes` of a SAR spec.
pub fn attributes_of(spec: &Value) -> Result<Attributes, ApiError> {
    let ra = &spec["resourceAttributes"];
    let nra = &spec["nonResourceAttributes"];
    let s = |v: &Value| v.as_str().unwrap_or("").to_owned();
    if ra.is_object() {
        Ok(Attributes::Resource {
            verb: s(&ra["verb"]),
            api_group: s(&ra["group"]),
            resource: s(&ra["resource"]),
            subresource: s(&ra["subresource"]),
            namespace: s(&ra["namespace"]),
            name: s(&ra["name"]),
        })
    } else if nra.is_object() {
        Ok(Attributes::NonResource { verb: s(&nra["verb"]), path: s(&nra["path"]) })
    } else {
        Err(ApiError::Invalid("spec: Invalid value: exactly one of nonResourceAttributes or resourceAttributes must be specified".into()))
    }
}

/// Answers a review `body` posted by `caller`.
pub fn answer(review: &Review, policy: &Policy, caller: &UserInfo, body: &Value) -> Result<Value, ApiError> {
    let mut out = body.clone();
    if !out.is_object() {
        return Err(ApiError::BadRequest("the review must be a JSON object".into()));
    }
    out["apiVersion"] = json!(format!("{}/{}", review.group, review.version));
    out["kind"] = json!(review.kind);
    if !out["metadata"].is_object() {
        out["metadata"] = json!({});
    }
    out["metadata"]["creationTimestamp"] = Value::Null;
    match review.kind {
        "TokenReview" => {
            let token = body["spec"]["token"].as_str().unwrap_or("");
            out["status"] = match policy.authenticate_token(token) {
                Some(user) => json!({
                    "authenticated": true,
                    "user": user,
                    "audiences": body["spec"]["audiences"].as_array().cloned().unwrap_or_else(|| vec![json!("https://kubernetes.default.svc")]),
                }),
                None => json!({"authenticated": false, "user": {}, "error": "invalid bearer token"}),
            };
        }
        "SelfSubjectReview" => {
            out["status"] = json!({"userInfo": caller});
        }
        "SubjectAccessReview" | "SelfSubjectAccessReview" => {
            let spec = &body["spec"];
            let subject = if review.kind == "SubjectAccessReview" {
                let user = spec["user"].as_str().unwrap_or("").to_owned();
                let groups = strings(&spec["groups"]);
                if user.is_empty() && groups.is_empty() {
                    return Err(ApiError::Invalid("spec.user: Invalid value: at least one of user or group must be specified".into()));
                }
                let extra = spec["extra"]
                    .as_object()
                    .map(|m| m.iter().map(|(k, v)| (k.clone(), strings(v))).collect())
                    .unwrap_or_default();
                UserInfo { username: user, uid: spec["uid"].as_str().unwrap_or("").to_owned(), groups, extra }
            } else {
                caller.clone()
            };
            let decision = policy.authorize(&subject, &attributes_of(spec)?);
            let mut status = json!({"allowed": decision.allowed});
            if !decision.reason.is_empty() {
                status["reason"] = json!(decision.reason);
            }
            out["status"] = status;
        }
        other => return Err(ApiError::Internal(format!("no review handler for {other}"))),
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::apiserver::policy::Rule;
    use crate::apiserver::resources::REVIEWS;

    fn review(kind: &str) -> &'static Review {
        REVIEWS.iter().find(|r| r.kind == kind).unwrap()
    }

    #[test]
    fn a_token_review_names_the_user_or_says_unauthenticated() {
        let p = Policy::new().with_token("t1", UserInfo::new("alice", &["devs"]));
        let caller = UserInfo::new("frontend", &[]);
        let ok = answer(review("TokenReview"), &p, &caller, &json!({"spec": {"token": "t1"}})).unwrap();
        assert_eq!(ok["status"]["authenticated"], true);
        assert_eq!(ok["status"]["user"]["username"], "alice");
        assert_eq!(ok["status"]["user"]["groups"], json!(["devs", "system:authenticated"]));
        let bad = answer(review("TokenReview"), &p, &caller, &json!({"spec": {"token": "nope"}})).unwrap();
        assert_eq!(bad["status"]["authenticated"], false);
    }

    #[test]
    fn a_subject_access_review_decides_for_the_named_user() {
        let p = Policy::new().with_rule(Rule::user("alice").verbs(&["list"]).api_groups(&["metrics.k8s.io"]).resources(&["pods"]));
        let caller = UserInfo::new("frontend", &[]);
        let body = |user: &str| {
            json!({"spec": {"user": user, "groups": ["system:authenticated"],
                "resourceAttributes": {"verb": "list", "group": "metrics.k8s.io", "resource": "pods", "namespace": "ns"}}})
        };
        let yes = answer(review("SubjectAccessReview"), &p, &caller, &body("alice")).unwrap();
        assert_eq!(yes["status"]["allowed"], true);
        let no = answer(review("SubjectAccessReview"), &p, &caller, &body("bob")).unwrap();
        assert_eq!(no["status"]["allowed"], false);
        assert_eq!(answer(review("SubjectAccessReview"), &p, &caller, &json!({"spec": {"user": "a"}})).unwrap_err().code(), 422);
    }
}
