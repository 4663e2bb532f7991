//! Authorization via SubjectAccessReview (`authorization.k8s.io/v1`), with separate caches for
//! allowed and denied answers, `system:masters` let through without a review, and API errors
//! answered 500 as k8s.io/apiserver's authorization filter does (never allowed, never cached).

use std::time::Duration;

use k8s_openapi::api::authorization::v1::{
    FieldSelectorAttributes, LabelSelectorAttributes, NonResourceAttributes, ResourceAttributes as K8sResourceAttributes,
    SubjectAccessReview, SubjectAccessReviewSpec,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{FieldSelectorRequirement, LabelSelectorRequirement};
use kube::Api;
use kube::api::PostParams;
use shardmetrics_plumbing::clock::SharedClock;

use super::attributes::RequestAttributes;
use super::cache::TtlCache;
use super::error::AuthError;
use super::metrics::AuthMetrics;
use super::user::{MASTERS_GROUP, UserInfo};

/// Cache TTLs and limits of the authorizer.
#[derive(Debug, Clone, Copy)]
pub(crate) struct AuthorizerLimits {
    /// How long an allow is reused (`--authorization-webhook-cache-authorized-ttl`).
    pub(crate) authorized_ttl: Duration,
    /// How long a denial is reused (`--authorization-webhook-cache-unauthorized-ttl`).
    pub(crate) unauthorized_ttl: Duration,
    /// Upper bound on one review round trip.
    pub(crate) timeout: Duration,
    /// Maximum entries per cache.
    pub(crate) capacity: usize,
}

/// Decides whether a user may do what a request wants.
pub(crate) struct Authorizer {
    /// The SubjectAccessReview API; `None` without an API server (only `system:masters` allowed).
    api: Option<Api<SubjectAccessReview>>,
    /// (user, attributes) -> allowed.
    allowed: TtlCache<()>,
    /// (user, attributes) -> denied, with the authorizer's reason.
    denied: TtlCache<String>,
    /// TTLs and timeout.
    limits: AuthorizerLimits,
    /// Decision counters.
    metrics: AuthMetrics,
}

impl Authorizer {
    /// An authorizer asking the API server behind `client`.
    pub(crate) fn new(
        client: Option<kube::Client>,
        limits: AuthorizerLimits,
        clock: SharedClock,
        metrics: AuthMetrics,
    ) -> Self {
        Self {
            api: client.map(Api::all),
            allowed: TtlCache::new(limits.capacity, clock.clone()),
            denied: TtlCache::new(limits.capacity, clock),
            limits,
            metrics,
        }
    }

    /// Ok when allowed; Forbidden when denied (cached or not); Internal when the API server
    /// could not answer.
    pub(crate) async fn authorize(
        &self,
        user: &UserInfo,
        attrs: &RequestAttributes,
    ) -> Result<(), AuthError> {
        if user.in_group(MASTERS_GROUP) {
            self.metrics.authorized("allowed", false);
            return Ok(());
        }
        // An allow of the same request without its selectors covers it: selectors only narrow a
        // list (an authorizer may allow a narrowed request it would deny unrestricted, never the
        // reverse; KEP-4601). So the HPA's many `labelSelector=app=...` queries in a namespace
        // share one review per TTL instead of one per selector. Asked first for a request with
        // selectors; a denial of it is cached too, so a user allowed only narrowed requests
        // costs one extra review per TTL.
        if let Some(unrestricted) = attrs.without_selectors() {
            match self.decide(user, &unrestricted).await? {
                Decision::Allowed => return Ok(()),
                Decision::Denied(_) => {}
            }
        }
        match self.decide(user, attrs).await? {
            Decision::Allowed => Ok(()),
            Decision::Denied(reason) => Err(attrs.forbidden(user, &reason)),
        }
    }

    /// The answer to one question, from the caches or a SubjectAccessReview (then cached).
    async fn decide(&self, user: &UserInfo, attrs: &RequestAttributes) -> Result<Decision, AuthError> {
        // The key is the whole question, so different users or attributes never share an answer.
        let key = serde_json::to_string(&(user, attrs)).ok();
        if let Some(key) = &key {
            if self.allowed.get(key).is_some() {
                self.metrics.authorized("allowed", true);
                return Ok(Decision::Allowed);
            }
            if let Some(reason) = self.denied.get(key) {
                self.metrics.authorized("denied", true);
                return Ok(Decision::Denied(reason));
            }
        }
        let Some(api) = &self.api else {
            self.metrics.authorized("denied", false);
            return Ok(Decision::Denied("no authorizer: the frontend has no API server to ask".into()));
        };
        let review = SubjectAccessReview {
            spec: spec_of(user, attrs),
            ..SubjectAccessReview::default()
        };
        let response = match tokio::time::timeout(
            self.limits.timeout,
            api.create(&PostParams::default(), &review),
        )
        .await
        {
            Ok(Ok(response)) => response,
            Ok(Err(e)) => {
                self.metrics.authorized("error", false);
                return Err(AuthError::Internal(format!("SubjectAccessReview failed: {e}")));
            }
            Err(_) => {
                self.metrics.authorized("error", false);
                return Err(AuthError::Internal(format!(
                    "SubjectAccessReview timed out after {:?}",
                    self.limits.timeout
                )));
            }
        };
        let status = response.status.unwrap_or_default();
        if status.allowed && status.denied == Some(true) {
            self.metrics.authorized("error", false);
            return Err(AuthError::Internal("webhook subject access review returned both allow and deny response".into()));
        }
        if status.allowed {
            if let Some(key) = key {
                self.denied.remove(&key);
                if !self.allowed.insert(key, (), self.limits.authorized_ttl) {
                    self.metrics.cache_full("authorized");
                }
            }
            self.metrics.authorized("allowed", false);
            return Ok(Decision::Allowed);
        }
        if let Some(error) = status.evaluation_error.as_deref().filter(|e| !e.is_empty()) {
            tracing::debug!(user = %user.name, error, "SubjectAccessReview evaluation error");
        }
        let reason = status.reason.unwrap_or_default();
        if let Some(key) = key {
            self.allowed.remove(&key);
            if !self
                .denied
                .insert(key, reason.clone(), self.limits.unauthorized_ttl)
            {
                self.metrics.cache_full("unauthorized");
            }
        }
        self.metrics.authorized("denied", false);
        Ok(Decision::Denied(reason))
    }
}

/// What the authorizer answered one question.
enum Decision {
    /// Allowed.
    Allowed,
    /// Denied, with the authorizer's reason.
    Denied(String),
}

/// The SubjectAccessReview spec asking whether `user` may do `attrs`.
pub(crate) fn spec_of(user: &UserInfo, attrs: &RequestAttributes) -> SubjectAccessReviewSpec {
    let (resource_attributes, non_resource_attributes) = match attrs {
        RequestAttributes::Resource(r) => (
            Some(K8sResourceAttributes {
                verb: Some(r.verb.clone()),
                group: Some(r.group.clone()),
                version: Some(r.version.clone()),
                resource: Some(r.resource.clone()),
                subresource: r.subresource.clone(),
                namespace: r.namespace.clone(),
                name: r.name.clone(),
                field_selector: (!r.field_selector.is_empty()).then(|| FieldSelectorAttributes {
                    raw_selector: None,
                    requirements: Some(
                        r.field_selector
                            .iter()
                            .map(|q| FieldSelectorRequirement {
                                key: q.key.clone(),
                                operator: q.operator.to_owned(),
                                values: Some(q.values.clone()).filter(|v| !v.is_empty()),
                            })
                            .collect(),
                    ),
                }),
                label_selector: (!r.label_selector.is_empty()).then(|| LabelSelectorAttributes {
                    raw_selector: None,
                    requirements: Some(
                        r.label_selector
                            .iter()
                            .map(|q| LabelSelectorRequirement {
                                key: q.key.clone(),
                                operator: q.operator.to_owned(),
                                values: Some(q.values.clone()).filter(|v| !v.is_empty()),
                            })
                            .collect(),
                    ),
                }),
            }),
            None,
        ),
        RequestAttributes::NonResource { path, verb } => (
            None,
            Some(NonResourceAttributes {
                path: Some(path.clone()),
                verb: Some(verb.clone()),
            }),
        ),
    };
    SubjectAccessReviewSpec {
        user: Some(user.name.clone()),
        uid: Some(user.uid.clone()).filter(|u| !u.is_empty()),
        groups: Some(user.groups.clone()),
        extra: Some(user.extra.clone()).filter(|e| !e.is_empty()),
        resource_attributes,
        non_resource_attributes,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_metrics_request_becomes_resource_attributes_and_a_path_non_resource_attributes() {
        let user = UserInfo {
            name: "hpa".into(),
            groups: vec!["system:authenticated".into()],
            ..UserInfo::default()
        };
        let spec = spec_of(
            &user,
            &RequestAttributes::metrics("list", "pods", Some("web"), None),
        );
        let r = spec.resource_attributes.expect("resource attributes");
        assert_eq!(r.group.as_deref(), Some("metrics.k8s.io"));
        assert_eq!(r.version.as_deref(), Some("v1beta1"));
        assert_eq!(r.resource.as_deref(), Some("pods"));
        assert_eq!(r.namespace.as_deref(), Some("web"));
        assert_eq!(r.verb.as_deref(), Some("list"));
        assert_eq!(spec.user.as_deref(), Some("hpa"));
        assert_eq!(spec.uid, None);
        let spec = spec_of(&user, &RequestAttributes::non_resource("/apis", "get"));
        assert!(spec.resource_attributes.is_none());
        assert_eq!(
            spec.non_resource_attributes.and_then(|n| n.path).as_deref(),
            Some("/apis")
        );
    }
}
