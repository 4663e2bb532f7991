//! TokenReview and SubjectAccessReview against the API-server simulator over real HTTPS:
//! answers, caching by TTL (injected clock), denials never served as allows, API errors as
//! k8s.io/apiserver answers them (a failed TokenReview 401, a failed SubjectAccessReview 500).

use std::sync::Arc;
use std::time::Duration;

use crate::auth_support::{admin_client, allow_everything, api_server, base_policy, counter, token_user};
use http::HeaderMap;
use shardmetrics_frontend::auth::{Auth, AuthConfig, AuthError, RequestAttributes, UserInfo};
use shardmetrics_plumbing::clock::{Clock, ManualClock, SystemClock};
use shardmetrics_sim::apiserver::{Policy, RunningApiServer};

struct Setup {
    api: RunningApiServer,
    auth: Auth,
    clock: Arc<ManualClock>,
    registry: prometheus::Registry,
}

/// Tokens of alice (group `dev`) and bob; everything allowed to `allowed`.
fn policy(allowed: &[&str]) -> Policy {
    let policy = base_policy()
        .with_token("alice-token", token_user("alice", &["dev"]))
        .with_token("bob-token", token_user("bob", &[]));
    allowed.iter().fold(policy, |p, user| p.with_rule(allow_everything(user)))
}

/// TokenReviews posted to `api` so far.
fn token_reviews(api: &RunningApiServer) -> u64 {
    api.stats().resource_requests("create", "tokenreviews")
}

/// SubjectAccessReviews posted to `api` so far.
fn access_reviews(api: &RunningApiServer) -> u64 {
    api.stats().resource_requests("create", "subjectaccessreviews")
}

async fn setup(configure: impl FnOnce(&mut AuthConfig)) -> anyhow::Result<Setup> {
    let api = api_server(policy(&["alice"])).await?;
    let clock = ManualClock::new(SystemClock.now_ms());
    let mut config = AuthConfig {
        clock: clock.clone(),
        authorized_ttl: Duration::from_secs(10),
        unauthorized_ttl: Duration::from_secs(5),
        ..AuthConfig::default()
    };
    configure(&mut config);
    let registry = prometheus::Registry::new();
    let auth = Auth::new(config, Some(admin_client(&api).await?), &registry).await?;
    Ok(Setup {
        api,
        auth,
        clock,
        registry,
    })
}

fn bearer(token: &str) -> HeaderMap {
    let mut headers = HeaderMap::new();
    headers.insert(
        http::header::AUTHORIZATION,
        format!("Bearer {token}").parse().expect("header"),
    );
    headers
}

fn user(name: &str) -> UserInfo {
    UserInfo {
        name: name.to_owned(),
        groups: vec!["system:authenticated".to_owned()],
        ..UserInfo::default()
    }
}

fn list_nodes() -> RequestAttributes {
    RequestAttributes::metrics("list", "nodes", None, None)
}

#[tokio::test]
async fn a_valid_bearer_token_is_authenticated_by_token_review_and_cached_for_its_ttl()
-> anyhow::Result<()> {
    let s = setup(|_| {}).await?;
    let alice = s.auth.authenticate(None, &bearer("alice-token")).await?;
    assert_eq!(alice.name, "alice");
    assert_eq!(alice.uid, "uid-alice");
    assert_eq!(alice.groups, ["dev", "system:authenticated"]);
    s.auth.authenticate(None, &bearer("alice-token")).await?;
    assert_eq!(
        token_reviews(&s.api),
        1,
        "second request answered from the cache"
    );
    s.clock.advance_ms(10_000);
    s.auth.authenticate(None, &bearer("alice-token")).await?;
    assert_eq!(
        token_reviews(&s.api),
        2,
        "reviewed again after the TTL"
    );
    assert_eq!(
        counter(
            &s.registry,
            "shardmetrics_frontend_authentication_total",
            &[("method", "token"), ("result", "success")]
        ),
        3.0
    );
    Ok(())
}

#[tokio::test]
async fn an_invalid_token_is_401_even_with_anonymous_access_on() -> anyhow::Result<()> {
    let s = setup(|c| c.anonymous = true).await?;
    let err = s
        .auth
        .authenticate(None, &bearer("forged"))
        .await
        .unwrap_err();
    assert_eq!(err.status_code(), 401, "{err}");
    // No credential at all is anonymous.
    let anonymous = s.auth.authenticate(None, &HeaderMap::new()).await?;
    assert_eq!(
        (anonymous.name.as_str(), anonymous.groups.as_slice()),
        (
            "system:anonymous",
            ["system:unauthenticated".to_owned()].as_slice()
        )
    );
    Ok(())
}

#[tokio::test]
async fn an_unreachable_token_review_is_401_and_never_cached() -> anyhow::Result<()> {
    let s = setup(|_| {}).await?;
    s.api.set_unavailable(&["tokenreviews", "subjectaccessreviews"]);
    let err = s
        .auth
        .authenticate(None, &bearer("alice-token"))
        .await
        .unwrap_err();
    assert!(matches!(err, AuthError::Unauthorized(_)), "{err:?}");
    assert_eq!(err.status_code(), 401);
    s.api.set_unavailable(&[]);
    assert_eq!(
        s.auth
            .authenticate(None, &bearer("alice-token"))
            .await?
            .name,
        "alice"
    );
    assert_eq!(token_reviews(&s.api), 2);
    assert_eq!(
        counter(
            &s.registry,
            "shardmetrics_frontend_authentication_total",
            &[("method", "token"), ("result", "error")]
        ),
        1.0
    );
    Ok(())
}

#[tokio::test]
async fn an_allow_is_cached_for_the_authorized_ttl_then_asked_again() -> anyhow::Result<()> {
    let s = setup(|_| {}).await?;
    s.auth.authorize(&user("alice"), &list_nodes()).await?;
    s.clock.advance_ms(9_999);
    s.auth.authorize(&user("alice"), &list_nodes()).await?;
    assert_eq!(access_reviews(&s.api), 1);
    // A different question is not answered by that allow.
    s.auth
        .authorize(
            &user("alice"),
            &RequestAttributes::metrics("list", "pods", Some("web"), None),
        )
        .await?;
    assert_eq!(access_reviews(&s.api), 2);
    s.clock.advance_ms(1);
    s.auth.authorize(&user("alice"), &list_nodes()).await?;
    assert_eq!(access_reviews(&s.api), 3);
    assert_eq!(
        counter(
            &s.registry,
            "shardmetrics_frontend_authorization_total",
            &[("result", "allowed"), ("cached", "true")]
        ),
        1.0
    );
    assert_eq!(
        counter(
            &s.registry,
            "shardmetrics_frontend_authorization_total",
            &[("result", "allowed"), ("cached", "false")]
        ),
        3.0
    );
    Ok(())
}

/// The HPA's request: pods of `namespace` with `labelSelector=app=<app>`.
fn hpa_query(namespace: &str, app: &str) -> RequestAttributes {
    let uri: http::Uri = format!("/apis/metrics.k8s.io/v1beta1/namespaces/{namespace}/pods?labelSelector=app%3D{app}").parse().expect("uri");
    RequestAttributes::from_request(&http::Method::GET, &uri)
}

#[tokio::test]
async fn an_allow_without_selectors_answers_every_selector_of_that_namespace_until_it_expires() -> anyhow::Result<()> {
    let s = setup(|_| {}).await?;
    // Allowed: the first query asks the unrestricted question once; other selectors of the
    // namespace reuse its allow, another namespace asks again.
    s.auth.authorize(&user("alice"), &hpa_query("web", "a")).await?;
    assert_eq!(access_reviews(&s.api), 1, "one review, of the list without its selector");
    for app in ["a", "b", "c"] {
        s.auth.authorize(&user("alice"), &hpa_query("web", app)).await?;
    }
    assert_eq!(access_reviews(&s.api), 1, "covered by the namespace's allow");
    s.auth.authorize(&user("alice"), &hpa_query("db", "a")).await?;
    assert_eq!(access_reviews(&s.api), 2, "another namespace is another question");
    s.clock.advance_ms(10_000);
    s.auth.authorize(&user("alice"), &hpa_query("web", "d")).await?;
    assert_eq!(access_reviews(&s.api), 3, "asked again once the allow expired");

    // Denied: the unrestricted question, then the narrowed one, are both asked and both cached;
    // a new selector asks only its own question while the wider denial is cached.
    let err = s.auth.authorize(&user("bob"), &hpa_query("web", "a")).await.expect_err("bob may not");
    assert!(matches!(err, AuthError::Forbidden(_)), "{err:?}");
    assert!(err.to_string().contains("labelSelector") || err.to_string().contains("pods.metrics.k8s.io"), "{err}");
    assert_eq!(access_reviews(&s.api), 5);
    s.auth.authorize(&user("bob"), &hpa_query("web", "a")).await.expect_err("still not");
    assert_eq!(access_reviews(&s.api), 5, "both denials cached");
    s.auth.authorize(&user("bob"), &hpa_query("web", "b")).await.expect_err("nor this");
    assert_eq!(access_reviews(&s.api), 6, "only the narrowed question of the new selector");
    Ok(())
}

#[tokio::test]
async fn a_denial_is_cached_for_the_unauthorized_ttl_and_never_served_as_an_allow()
-> anyhow::Result<()> {
    let s = setup(|_| {}).await?;
    let denied = s
        .auth
        .authorize(&user("bob"), &list_nodes())
        .await
        .unwrap_err();
    assert_eq!(denied.status_code(), 403);
    assert!(
        denied
            .client_message()
            .contains(r#"User "bob" cannot list resource "nodes""#),
        "{denied}"
    );
    // Bob is granted access, but the denial is still within its TTL: still 403, from the cache.
    s.api.set_policy(policy(&["alice", "bob"]));
    s.clock.advance_ms(4_999);
    assert_eq!(
        s.auth
            .authorize(&user("bob"), &list_nodes())
            .await
            .unwrap_err()
            .status_code(),
        403
    );
    assert_eq!(access_reviews(&s.api), 1);
    // The denial TTL (5 s) is shorter than the allow TTL (10 s): it expires on its own clock.
    s.clock.advance_ms(1);
    s.auth.authorize(&user("bob"), &list_nodes()).await?;
    assert_eq!(access_reviews(&s.api), 2);
    // Revoked again: the allow is cached, so bob keeps access until the allow TTL, then is denied.
    s.api.set_policy(policy(&["alice"]));
    s.clock.advance_ms(9_999);
    s.auth.authorize(&user("bob"), &list_nodes()).await?;
    s.clock.advance_ms(1);
    assert_eq!(
        s.auth
            .authorize(&user("bob"), &list_nodes())
            .await
            .unwrap_err()
            .status_code(),
        403
    );
    assert_eq!(
        counter(
            &s.registry,
            "shardmetrics_frontend_authorization_total",
            &[("result", "denied"), ("cached", "true")]
        ),
        1.0
    );
    Ok(())
}

#[tokio::test]
async fn an_api_server_error_is_500_never_an_allow_and_never_cached() -> anyhow::Result<()> {
    let s = setup(|_| {}).await?;
    s.api.set_unavailable(&["tokenreviews", "subjectaccessreviews"]);
    let err = s
        .auth
        .authorize(&user("alice"), &list_nodes())
        .await
        .unwrap_err();
    assert!(matches!(err, AuthError::Internal(_)), "{err:?}");
    assert_eq!(err.status_code(), 500);
    s.api.set_unavailable(&[]);
    s.auth.authorize(&user("alice"), &list_nodes()).await?;
    assert_eq!(
        access_reviews(&s.api),
        2,
        "the error was not cached"
    );
    assert_eq!(
        counter(
            &s.registry,
            "shardmetrics_frontend_authorization_total",
            &[("result", "error"), ("cached", "false")]
        ),
        1.0
    );
    Ok(())
}

#[tokio::test]
async fn a_vanished_api_server_is_500_or_401_not_a_hang() -> anyhow::Result<()> {
    let s = setup(|c| c.review_timeout = Duration::from_secs(5)).await?;
    drop(s.api);
    let err = s
        .auth
        .authorize(&user("alice"), &list_nodes())
        .await
        .unwrap_err();
    assert_eq!(err.status_code(), 500, "{err}");
    let err = s
        .auth
        .authenticate(None, &bearer("alice-token"))
        .await
        .unwrap_err();
    assert_eq!(err.status_code(), 401, "{err}");
    Ok(())
}

#[tokio::test]
async fn without_an_api_server_only_system_masters_are_allowed_and_tokens_are_refused()
-> anyhow::Result<()> {
    let auth = Auth::new(AuthConfig::default(), None, &prometheus::Registry::new()).await?;
    let masters = UserInfo {
        name: "root".into(),
        groups: vec!["system:masters".into()],
        ..UserInfo::default()
    };
    auth.authorize(&masters, &list_nodes()).await?;
    assert_eq!(
        auth.authorize(&user("alice"), &list_nodes())
            .await
            .unwrap_err()
            .status_code(),
        403
    );
    assert_eq!(
        auth.authenticate(None, &bearer("alice-token"))
            .await
            .unwrap_err()
            .status_code(),
        401
    );
    Ok(())
}

#[tokio::test]
async fn registering_twice_in_one_registry_is_a_setup_error() -> anyhow::Result<()> {
    let registry = prometheus::Registry::new();
    let _first = Auth::new(AuthConfig::default(), None, &registry).await?;
    assert!(
        Auth::new(AuthConfig::default(), None, &registry)
            .await
            .is_err()
    );
    Ok(())
}

#[tokio::test]
async fn a_silent_api_server_is_500_or_401_after_the_review_timeout() -> anyhow::Result<()> {
    // Accepts TCP connections and never answers.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let port = listener.local_addr()?.port();
    let held = tokio::spawn(async move {
        let mut open = Vec::new();
        while let Ok((tcp, _)) = listener.accept().await {
            open.push(tcp);
        }
    });
    let mut kube_config = kube::Config::new(format!("https://127.0.0.1:{port}").parse()?);
    kube_config.accept_invalid_certs = true;
    let config = AuthConfig {
        review_timeout: Duration::from_millis(200),
        tolerate_lookup_failure: true,
        ..AuthConfig::default()
    };
    let auth = Auth::new(
        config,
        Some(kube::Client::try_from(kube_config)?),
        &prometheus::Registry::new(),
    )
    .await?;
    assert_eq!(
        auth.authorize(&user("alice"), &list_nodes())
            .await
            .unwrap_err()
            .status_code(),
        500
    );
    assert_eq!(
        auth.authenticate(None, &bearer("alice-token"))
            .await
            .unwrap_err()
            .status_code(),
        401
    );
    held.abort();
    Ok(())
}
