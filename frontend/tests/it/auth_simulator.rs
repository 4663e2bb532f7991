//! The frontend's auth module against the API-server simulator: the ConfigMap it publishes, its
//! aggregation proxy (front-proxy client certificate + `X-Remote-*`), and its TokenReview and
//! SubjectAccessReview answers from a user/group policy. The backend here is a secure port built
//! only from `shardmetrics_frontend::auth`, so these tests do not depend on the rest of the
//! frontend.

use std::sync::Arc;

use serde_json::{Value, json};
use shardmetrics_frontend::auth::{Auth, AuthConfig, TlsConfig};
use shardmetrics_plumbing::pki::{self, CertKey};
use shardmetrics_sim::apiserver::{
    ApiServer, ApiServerConfig, DEFAULT_ADMIN, DEFAULT_ADMIN_TOKEN, MASTERS, Policy, Rule,
    RunningApiServer, UserInfo,
};

use crate::auth_support::{AuthServer, get};

const FRONTEND_SA: &str = "system:serviceaccount:kube-system:shardmetrics-frontend";

/// What the deploy/ RBAC grants the frontend (auth-delegator + extension-apiserver-authentication-reader),
/// a metrics reader, and a user with no rights.
fn policy() -> Policy {
    Policy::new()
        .with_token(
            DEFAULT_ADMIN_TOKEN,
            UserInfo::new(DEFAULT_ADMIN, &[MASTERS]),
        )
        .with_token(
            "frontend-token",
            UserInfo::new(FRONTEND_SA, &["system:serviceaccounts"]),
        )
        .with_token(
            "viewer-token",
            UserInfo::new("viewer", &["metrics-viewers"]),
        )
        .with_token("nobody-token", UserInfo::new("nobody", &[]))
        .with_rule(
            Rule::user(FRONTEND_SA)
                .verbs(&["create"])
                .api_groups(&["authentication.k8s.io", "authorization.k8s.io"])
                .resources(&["tokenreviews", "subjectaccessreviews"]),
        )
        .with_rule(
            Rule::user(FRONTEND_SA)
                .verbs(&["get", "list", "watch"])
                .resources(&["configmaps"])
                .namespaces(&["kube-system"]),
        )
        .with_rule(
            Rule::group("metrics-viewers")
                .verbs(&["get", "list"])
                .api_groups(&["metrics.k8s.io"])
                .resources(&["nodes", "pods"]),
        )
}

struct Cluster {
    api: RunningApiServer,
    backend: AuthServer,
}

/// The simulator (authorizing nothing for metrics.k8s.io itself, so the backend decides) with
/// an auth-only backend registered for `metrics.k8s.io`.
async fn cluster() -> anyhow::Result<Cluster> {
    let api = ApiServer::start(ApiServerConfig {
        policy: policy(),
        authorize_aggregated: false,
        ..Default::default()
    })
    .await?;
    let client = kube::Client::try_from(api.kubeconfig_for(FRONTEND_SA).await?)?;
    // Defaults: requestheader CA, allowed names and headers from the ConfigMap.
    let auth = Auth::new(AuthConfig::default(), Some(client), &Default::default()).await?;
    let backend = AuthServer::start(&TlsConfig::default(), auth).await?;
    api.set_aggregation_backends(vec![backend.addr]);
    Ok(Cluster { api, backend })
}

/// GET `path` from the simulator as `user` (by its policy token): status and JSON body.
async fn via_apiserver(c: &Cluster, user: &str, path: &str) -> anyhow::Result<(u16, Value)> {
    let client = kube::Client::try_from(c.api.kubeconfig_for(user).await?)?;
    let req = http::Request::get(path).body(Vec::new())?;
    match client.request_text(req).await {
        Ok(text) => Ok((200, serde_json::from_str(&text)?)),
        Err(kube::Error::Api(s)) => Ok((s.code, json!({"message": s.message, "reason": s.reason}))),
        Err(e) => Err(e.into()),
    }
}

/// GET `path` straight from the backend (whose self-signed certificate is trusted as is),
/// presenting `cert` and `headers`.
async fn direct(
    c: &Cluster,
    cert: Option<&CertKey>,
    path: &str,
    headers: &[(&str, &str)],
) -> anyhow::Result<(u16, Value)> {
    let config = Arc::new(pki::client_config(None, cert)?);
    let (code, body) = get(c.backend.addr, config, path, headers).await?;
    Ok((code.as_u16(), body))
}

#[tokio::test]
async fn aggregated_requests_carry_the_callers_identity_and_are_authorized_by_the_simulators_policy()
-> anyhow::Result<()> {
    let c = cluster().await?;
    let (code, body) = via_apiserver(
        &c,
        "viewer",
        "/apis/metrics.k8s.io/v1beta1/namespaces/web/pods",
    )
    .await?;
    assert_eq!(code, 200, "{body}");
    assert_eq!(body["user"]["name"], "viewer");
    let groups = body["user"]["groups"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    assert!(
        groups.contains(&json!("metrics-viewers"))
            && groups.contains(&json!("system:authenticated")),
        "{groups:?}"
    );

    let (code, body) = via_apiserver(&c, "nobody", "/apis/metrics.k8s.io/v1beta1/nodes").await?;
    assert_eq!(code, 403, "{body}");
    assert_eq!(body["reason"], "Forbidden");
    assert!(
        body["message"]
            .as_str()
            .unwrap_or_default()
            .contains(r#"User "nobody" cannot list resource "nodes""#),
        "{body}"
    );

    let (code, _) = via_apiserver(
        &c,
        DEFAULT_ADMIN,
        "/apis/metrics.k8s.io/v1beta1/nodes/node-1",
    )
    .await?;
    assert_eq!(code, 200, "system:masters needs no review");
    Ok(())
}

#[tokio::test]
async fn direct_requests_use_token_review_and_the_configmaps_client_ca() -> anyhow::Result<()> {
    let c = cluster().await?;
    let nodes = "/apis/metrics.k8s.io/v1beta1/nodes";
    let (code, body) = direct(&c, None, nodes, &[("Authorization", "Bearer viewer-token")]).await?;
    assert_eq!(
        (code, body["user"]["name"].clone()),
        (200, json!("viewer")),
        "{body}"
    );
    assert_eq!(
        direct(&c, None, nodes, &[("Authorization", "Bearer forged")])
            .await?
            .0,
        401
    );
    assert_eq!(
        direct(&c, None, nodes, &[("Authorization", "Bearer nobody-token")])
            .await?
            .0,
        403
    );

    // The ConfigMap's client-ca-file is the cluster CA: its client certificates are users.
    let viewer_cert = c
        .api
        .ca()
        .client_cert("cert-viewer", &["metrics-viewers"])?;
    let (code, body) = direct(&c, Some(&viewer_cert), nodes, &[]).await?;
    assert_eq!(
        (code, body["user"]["name"].clone()),
        (200, json!("cert-viewer")),
        "{body}"
    );
    Ok(())
}

#[tokio::test]
async fn remote_user_headers_are_believed_only_with_the_simulators_front_proxy_certificate()
-> anyhow::Result<()> {
    let c = cluster().await?;
    let nodes = "/apis/metrics.k8s.io/v1beta1/nodes";
    let spoof = [
        ("X-Remote-User", DEFAULT_ADMIN),
        ("X-Remote-Group", MASTERS),
    ];
    assert_eq!(
        direct(&c, None, nodes, &spoof).await?.0,
        401,
        "no certificate"
    );
    let stranger = pki::Ca::new("stranger-ca")?.client_cert("front-proxy-client", &[])?;
    assert_eq!(
        direct(&c, Some(&stranger), nodes, &spoof).await?.0,
        401,
        "certificate from another CA"
    );
    let wrong_name = c
        .api
        .front_proxy_ca()
        .client_cert("not-front-proxy-client", &[])?;
    assert_eq!(
        direct(&c, Some(&wrong_name), nodes, &spoof).await?.0,
        401,
        "CN not in the allowed names"
    );
    let (code, body) = direct(&c, Some(c.api.front_proxy_client_cert()), nodes, &spoof).await?;
    assert_eq!(
        (code, body["user"]["name"].clone()),
        (200, json!(DEFAULT_ADMIN)),
        "the real front proxy: {body}"
    );
    assert_eq!(
        direct(&c, None, "/livez", &[]).await?.0,
        200,
        "always-allowed path"
    );
    Ok(())
}
