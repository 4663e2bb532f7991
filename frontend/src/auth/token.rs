//! Bearer token authentication via TokenReview (`authentication.k8s.io/v1`), audience-less, with
//! a short cache of answers (never of errors).

use std::time::Duration;

use k8s_openapi::api::authentication::v1::{TokenReview, TokenReviewSpec};
use kube::Api;
use kube::api::PostParams;
use shardmetrics_plumbing::clock::SharedClock;

use super::Attempt;
use super::cache::TtlCache;
use super::metrics::AuthMetrics;
use super::user::UserInfo;

/// Asks the API server who a bearer token belongs to.
pub(crate) struct TokenAuthenticator {
    /// Cluster-scoped TokenReview API.
    api: Api<TokenReview>,
    /// Token -> the review's answer (user, or why it was rejected).
    cache: TtlCache<Result<UserInfo, String>>,
    /// How long an answer (authenticated or not) is reused.
    ttl: Duration,
    /// Upper bound on one review round trip.
    timeout: Duration,
    /// Where cache overflow is counted.
    metrics: AuthMetrics,
}

impl TokenAuthenticator {
    /// A reviewer using `client`, caching answers for `ttl` (up to `capacity` tokens).
    pub(crate) fn new(
        client: kube::Client,
        ttl: Duration,
        timeout: Duration,
        capacity: usize,
        clock: SharedClock,
        metrics: AuthMetrics,
    ) -> Self {
        Self {
            api: Api::all(client),
            cache: TtlCache::new(capacity, clock),
            ttl,
            timeout,
            metrics,
        }
    }

    /// Authenticates `token`: Authenticated, Rejected (the API server said no), or Unavailable
    /// (it could not be asked; not cached).
    pub(crate) async fn authenticate(&self, token: &str) -> Attempt {
        if let Some(answer) = self.cache.get(token) {
            return answer.map_or_else(Attempt::Rejected, Attempt::Authenticated);
        }
        let review = TokenReview {
            spec: TokenReviewSpec {
                token: Some(token.to_owned()),
                audiences: None,
            },
            ..TokenReview::default()
        };
        let response = match tokio::time::timeout(
            self.timeout,
            self.api.create(&PostParams::default(), &review),
        )
        .await
        {
            Ok(Ok(response)) => response,
            Ok(Err(e)) => return Attempt::Unavailable(format!("TokenReview failed: {e}")),
            Err(_) => {
                return Attempt::Unavailable(format!(
                    "TokenReview timed out after {:?}",
                    self.timeout
                ));
            }
        };
        let answer = answer_of(response);
        if !self
            .cache
            .insert(token.to_owned(), answer.clone(), self.ttl)
        {
            self.metrics.cache_full("token");
        }
        answer.map_or_else(Attempt::Rejected, Attempt::Authenticated)
    }
}

/// The user a TokenReview response names, or why the token is not authenticated.
fn answer_of(review: TokenReview) -> Result<UserInfo, String> {
    let status = review.status.unwrap_or_default();
    if let Some(error) = status.error.filter(|e| !e.is_empty()) {
        return Err(format!("token rejected: {error}"));
    }
    if status.authenticated != Some(true) {
        return Err("token not authenticated".to_owned());
    }
    let user = status.user.unwrap_or_default();
    let name = user.username.unwrap_or_default();
    if name.is_empty() {
        return Err("TokenReview authenticated the token but named no user".to_owned());
    }
    Ok(UserInfo {
        name,
        uid: user.uid.unwrap_or_default(),
        groups: user.groups.unwrap_or_default(),
        extra: user.extra.unwrap_or_default(),
    })
}

#[cfg(test)]
mod tests {
    use k8s_openapi::api::authentication::v1::{TokenReviewStatus, UserInfo as K8sUserInfo};

    use super::*;

    fn review(status: TokenReviewStatus) -> TokenReview {
        TokenReview {
            status: Some(status),
            ..TokenReview::default()
        }
    }

    #[test]
    fn an_authenticated_review_gives_the_named_user() {
        let user = answer_of(review(TokenReviewStatus {
            authenticated: Some(true),
            user: Some(K8sUserInfo {
                username: Some("system:serviceaccount:kube-system:hpa".into()),
                uid: Some("42".into()),
                groups: Some(vec!["system:serviceaccounts".into()]),
                extra: None,
            }),
            ..TokenReviewStatus::default()
        }))
        .expect("authenticated");
        assert_eq!(user.name, "system:serviceaccount:kube-system:hpa");
        assert_eq!(user.uid, "42");
        assert_eq!(user.groups, ["system:serviceaccounts"]);
    }

    #[test]
    fn an_unauthenticated_errored_or_nameless_review_is_a_rejection() {
        assert!(answer_of(review(TokenReviewStatus::default())).is_err());
        assert!(answer_of(TokenReview::default()).is_err());
        assert!(
            answer_of(review(TokenReviewStatus {
                authenticated: Some(true),
                error: Some("expired".into()),
                ..TokenReviewStatus::default()
            }))
            .is_err()
        );
        assert!(
            answer_of(review(TokenReviewStatus {
                authenticated: Some(true),
                ..TokenReviewStatus::default()
            }))
            .is_err()
        );
    }
}
