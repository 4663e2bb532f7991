//! The authentication/authorization matrix over real TLS: a secure-port server built from
//! `server_tls_config` + `Auth`, the API-server simulator answering SubjectAccessReviews and
//! serving the authentication ConfigMap, and rustls clients presenting client certificates.

use std::path::PathBuf;

use crate::auth_support::{
    AuthServer, admin_client, allow_everything, api_server, base_policy, client_cert, client_config, counter, get, new_ca,
};
use serde_json::{Value, json};
use shardmetrics_frontend::auth::{Auth, AuthConfig, RequestHeaderSettings, TlsConfig};
use shardmetrics_plumbing::pki::{Ca, CertKey};
use shardmetrics_sim::apiserver::{EXTENSION_APISERVER_AUTHENTICATION, Part, RunningApiServer, resources};

const NODES: &str = "/apis/metrics.k8s.io/v1beta1/nodes";

struct Setup {
    api: RunningApiServer,
    server: AuthServer,
    auth: Auth,
    registry: prometheus::Registry,
    serving_ca: Ca,
    front_proxy_ca: Ca,
    client_ca: Ca,
    dir: tempfile::TempDir,
    front_proxy_ca_file: PathBuf,
}

impl Setup {
    /// Front-proxy CA and client CA from files (allowed name `front-proxy-client`); the API
    /// server allows `alice` only.
    async fn new(configure: impl FnOnce(&mut AuthConfig, &Setup0)) -> anyhow::Result<Self> {
        let api = api_server(base_policy().with_rule(allow_everything("alice"))).await?;
        Self::with_api(api, configure).await
    }

    async fn with_api(
        api: RunningApiServer,
        configure: impl FnOnce(&mut AuthConfig, &Setup0),
    ) -> anyhow::Result<Self> {
        let dir = tempfile::tempdir()?;
        let s0 = Setup0 {
            serving_ca: new_ca("serving-ca"),
            front_proxy_ca: new_ca("front-proxy-ca"),
            client_ca: new_ca("client-ca"),
        };
        let (serving_cert, serving_key) = s0.serving_ca.server_cert("frontend", &[])?.write_pem(dir.path(), "serving")?;
        let front_proxy_ca_file = s0.front_proxy_ca.write_pem(dir.path(), "front-proxy-ca")?;
        let client_ca_file = s0.client_ca.write_pem(dir.path(), "client-ca")?;
        let mut config = AuthConfig {
            requestheader_client_ca_file: Some(front_proxy_ca_file.clone()),
            requestheader: RequestHeaderSettings {
                allowed_names: vec!["front-proxy-client".to_owned()],
                ..RequestHeaderSettings::default()
            },
            client_ca_file: Some(client_ca_file),
            ..AuthConfig::default()
        };
        configure(&mut config, &s0);
        let registry = prometheus::Registry::new();
        let auth = Auth::new(config, Some(admin_client(&api).await?), &registry).await?;
        let tls = TlsConfig {
            cert_file: Some(serving_cert),
            key_file: Some(serving_key),
            ..TlsConfig::default()
        };
        let server = AuthServer::start(&tls, auth.clone()).await?;
        let Setup0 {
            serving_ca,
            front_proxy_ca,
            client_ca,
        } = s0;
        Ok(Self {
            api,
            server,
            auth,
            registry,
            serving_ca,
            front_proxy_ca,
            client_ca,
            dir,
            front_proxy_ca_file,
        })
    }

    async fn get(
        &self,
        identity: Option<&CertKey>,
        path: &str,
        headers: &[(&str, &str)],
    ) -> anyhow::Result<(u16, Value)> {
        let config = client_config(
            &self.serving_ca,
            identity,
            rustls::ALL_VERSIONS,
            &[b"http/1.1"],
        );
        let (status, body) = get(self.server.addr, config, path, headers).await?;
        Ok((status.as_u16(), body))
    }
}

/// The CAs, available to `configure` before the server starts.
struct Setup0 {
    serving_ca: Ca,
    front_proxy_ca: Ca,
    client_ca: Ca,
}

fn assert_status(body: &Value, code: u16, reason: &str) {
    assert_eq!(body["kind"], "Status", "{body}");
    assert_eq!(body["code"], code, "{body}");
    assert_eq!(body["reason"], reason, "{body}");
}

#[tokio::test]
async fn a_request_without_credentials_is_401_with_an_unauthorized_status() -> anyhow::Result<()> {
    let s = Setup::new(|_, _| {}).await?;
    let (code, body) = s.get(None, NODES, &[]).await?;
    assert_eq!(code, 401);
    assert_status(&body, 401, "Unauthorized");
    assert_eq!(body["message"], "Unauthorized");
    assert_eq!(
        counter(
            &s.registry,
            "shardmetrics_frontend_authentication_total",
            &[("method", "none"), ("result", "failure")]
        ),
        1.0
    );
    Ok(())
}

#[tokio::test]
async fn a_client_certificate_from_another_ca_completes_tls_and_gets_401() -> anyhow::Result<()> {
    let s = Setup::new(|_, _| {}).await?;
    let intruder = client_cert(&new_ca("intruder-ca"), "front-proxy-client", "");
    let (code, body) = s
        .get(Some(&intruder), NODES, &[("X-Remote-User", "alice")])
        .await?;
    assert_eq!(code, 401);
    assert_status(&body, 401, "Unauthorized");
    // The certificate reached the authenticators (it was not refused at the TLS layer).
    assert_eq!(
        counter(
            &s.registry,
            "shardmetrics_frontend_authentication_total",
            &[("method", "requestheader"), ("result", "failure")]
        ),
        1.0
    );
    Ok(())
}

#[tokio::test]
async fn a_front_proxy_certificate_whose_cn_is_not_allowed_gets_401() -> anyhow::Result<()> {
    let s = Setup::new(|_, _| {}).await?;
    let proxy = client_cert(&s.front_proxy_ca, "not-the-aggregator", "");
    let (code, _) = s
        .get(Some(&proxy), NODES, &[("X-Remote-User", "alice")])
        .await?;
    assert_eq!(code, 401);
    assert_eq!(
        counter(
            &s.registry,
            "shardmetrics_frontend_authentication_total",
            &[("method", "requestheader"), ("result", "failure")]
        ),
        1.0
    );
    Ok(())
}

#[tokio::test]
async fn x_remote_user_without_a_front_proxy_certificate_is_ignored() -> anyhow::Result<()> {
    let s = Setup::new(|_, _| {}).await?;
    let (code, _) = s
        .get(
            None,
            NODES,
            &[
                ("X-Remote-User", "alice"),
                ("X-Remote-Group", "system:masters"),
            ],
        )
        .await?;
    assert_eq!(code, 401);
    assert_eq!(
        s.api.stats().resource_requests("create", "subjectaccessreviews"),
        0,
        "never reached authorization"
    );

    // With anonymous access on, the request is anonymous, not alice (and the authorizer denies it).
    let s = Setup::new(|c, _| c.anonymous = true).await?;
    let (code, body) = s
        .get(
            None,
            NODES,
            &[
                ("X-Remote-User", "alice"),
                ("X-Remote-Group", "system:masters"),
            ],
        )
        .await?;
    assert_eq!(code, 403, "{body}");
    let review = s.api.last_review("SubjectAccessReview").expect("a review")["spec"].clone();
    assert_eq!(review["user"], "system:anonymous");
    assert_eq!(
        review["groups"],
        serde_json::json!(["system:unauthenticated"])
    );
    Ok(())
}

#[tokio::test]
async fn a_front_proxy_certificate_with_remote_headers_authenticates_that_user()
-> anyhow::Result<()> {
    let s = Setup::new(|_, _| {}).await?;
    let proxy = client_cert(&s.front_proxy_ca, "front-proxy-client", "");
    let (code, body) = s
        .get(
            Some(&proxy),
            "/apis/metrics.k8s.io/v1beta1/namespaces/web/pods",
            &[
                ("X-Remote-User", "alice"),
                ("X-Remote-Group", "dev"),
                ("X-Remote-Group", "ops"),
                ("X-Remote-Extra-Scopes", "view"),
                ("X-Remote-Extra-Example.com%2Fteam", "blue"),
            ],
        )
        .await?;
    assert_eq!(code, 200, "{body}");
    let user = &body["user"];
    assert_eq!(user["name"], "alice");
    assert_eq!(
        user["groups"],
        serde_json::json!(["dev", "ops", "system:authenticated"])
    );
    assert_eq!(user["extra"]["scopes"], serde_json::json!(["view"]));
    assert_eq!(
        user["extra"]["example.com/team"],
        serde_json::json!(["blue"])
    );
    // The authorizer was asked about exactly this request.
    let review = s.api.last_review("SubjectAccessReview").expect("a review")["spec"].clone();
    assert_eq!(review["user"], "alice");
    assert_eq!(review["resourceAttributes"]["group"], "metrics.k8s.io");
    assert_eq!(review["resourceAttributes"]["version"], "v1beta1");
    assert_eq!(review["resourceAttributes"]["resource"], "pods");
    assert_eq!(review["resourceAttributes"]["namespace"], "web");
    assert_eq!(review["resourceAttributes"]["verb"], "list");
    assert_eq!(
        review["extra"]["example.com/team"],
        serde_json::json!(["blue"])
    );
    assert_eq!(
        counter(
            &s.registry,
            "shardmetrics_frontend_authentication_total",
            &[("method", "requestheader"), ("result", "success")]
        ),
        1.0
    );
    Ok(())
}

#[tokio::test]
async fn an_authenticated_user_the_authorizer_denies_gets_403_naming_the_request()
-> anyhow::Result<()> {
    let s = Setup::new(|_, _| {}).await?;
    let proxy = client_cert(&s.front_proxy_ca, "front-proxy-client", "");
    let (code, body) = s
        .get(Some(&proxy), NODES, &[("X-Remote-User", "bob")])
        .await?;
    assert_eq!(code, 403);
    assert_status(&body, 403, "Forbidden");
    assert_eq!(
        body["message"],
        r#"nodes.metrics.k8s.io is forbidden: User "bob" cannot list resource "nodes" in API group "metrics.k8s.io" at the cluster scope: RBAC: no rule for this user"#
    );
    Ok(())
}

#[tokio::test]
async fn an_x509_client_certificate_user_is_its_cn_with_its_o_as_group() -> anyhow::Result<()> {
    let s = Setup::new(|_, _| {}).await?;
    let alice = client_cert(&s.client_ca, "alice", "dev");
    let (code, body) = s
        .get(Some(&alice), NODES, &[("X-Remote-User", "mallory")])
        .await?;
    assert_eq!(code, 200, "{body}");
    assert_eq!(body["user"]["name"], "alice");
    assert_eq!(
        body["user"]["groups"],
        serde_json::json!(["dev", "system:authenticated"])
    );
    Ok(())
}

#[tokio::test]
async fn system_masters_are_allowed_without_a_subject_access_review() -> anyhow::Result<()> {
    let s = Setup::new(|_, _| {}).await?;
    let root = client_cert(&s.client_ca, "root", "system:masters");
    let (code, _) = s
        .get(Some(&root), "/apis/metrics.k8s.io/v1beta1/pods", &[])
        .await?;
    assert_eq!(code, 200);
    assert_eq!(s.api.stats().resource_requests("create", "subjectaccessreviews"), 0);
    Ok(())
}

#[tokio::test]
async fn always_allowed_paths_need_no_credentials_and_other_paths_do() -> anyhow::Result<()> {
    let s = Setup::new(|c, _| {
        c.always_allow_paths = vec!["/healthz".into(), "/livez".into(), "/readyz/*".into()]
    })
    .await?;
    for path in ["/healthz", "/livez", "/readyz/informers"] {
        assert_eq!(s.get(None, path, &[]).await?.0, 200, "{path}");
    }
    for path in ["/readyz", "/metrics", "/healthzz"] {
        assert_eq!(s.get(None, path, &[]).await?.0, 401, "{path}");
    }
    Ok(())
}

#[tokio::test]
async fn a_changed_requestheader_ca_file_is_used_after_a_refresh() -> anyhow::Result<()> {
    let s = Setup::new(|_, _| {}).await?;
    let rotated_ca = new_ca("rotated-front-proxy-ca");
    let old_proxy = client_cert(&s.front_proxy_ca, "front-proxy-client", "");
    let new_proxy = client_cert(&rotated_ca, "front-proxy-client", "");
    assert_eq!(
        s.get(Some(&new_proxy), NODES, &[("X-Remote-User", "alice")])
            .await?
            .0,
        401
    );
    assert!(!s.auth.refresh().await?, "nothing changed yet");
    std::fs::write(&s.front_proxy_ca_file, rotated_ca.cert_pem())?;
    assert!(s.auth.refresh().await?, "the CA changed");
    assert_eq!(
        s.get(Some(&new_proxy), NODES, &[("X-Remote-User", "alice")])
            .await?
            .0,
        200
    );
    assert_eq!(
        s.get(Some(&old_proxy), NODES, &[("X-Remote-User", "alice")])
            .await?
            .0,
        401
    );
    // A broken file keeps the current CA.
    std::fs::write(&s.front_proxy_ca_file, "garbage")?;
    assert!(s.auth.refresh().await.is_err());
    assert_eq!(
        s.get(Some(&new_proxy), NODES, &[("X-Remote-User", "alice")])
            .await?
            .0,
        200
    );
    let _ = &s.dir;
    Ok(())
}

/// Sets `requestheader-allowed-names` (a JSON array) in the simulator's authentication
/// ConfigMap.
fn set_allowed_names(api: &RunningApiServer, names: &str) -> anyhow::Result<()> {
    let (namespace, name) = EXTENSION_APISERVER_AUTHENTICATION;
    api.store().modify(resources::CONFIGMAPS, namespace, name, Part::Main, |cm| {
        cm["data"]["requestheader-allowed-names"] = json!(names);
        Ok(())
    })?;
    Ok(())
}

#[tokio::test]
async fn without_flags_the_front_proxy_trust_comes_from_the_configmap_and_follows_it()
-> anyhow::Result<()> {
    // The simulator publishes its front-proxy CA, allowed name `front-proxy-client` and the
    // X-Remote-* headers in the ConfigMap, as kube-apiserver does.
    let api = api_server(base_policy().with_rule(allow_everything("alice"))).await?;
    let proxy = api.front_proxy_client_cert().clone();
    let s = Setup::with_api(api, |c, _| {
        c.requestheader_client_ca_file = None;
        c.requestheader = RequestHeaderSettings {
            username_headers: vec!["X-Ignored".into()],
            ..RequestHeaderSettings::default()
        };
    })
    .await?;
    let (code, body) = s
        .get(Some(&proxy), NODES, &[("X-Remote-User", "alice")])
        .await?;
    assert_eq!(
        code, 200,
        "flag settings are ignored without the flag CA: {body}"
    );
    assert_eq!(body["user"]["name"], "alice");

    set_allowed_names(&s.api, r#"["aggregator"]"#)?;
    assert!(s.auth.refresh().await?);
    assert_eq!(
        s.get(Some(&proxy), NODES, &[("X-Remote-User", "alice")])
            .await?
            .0,
        401
    );

    // An unreadable ConfigMap keeps what was last read.
    set_allowed_names(&s.api, r#"["front-proxy-client"]"#)?;
    s.api.set_unavailable(&["configmaps"]);
    assert!(s.auth.refresh().await.is_err());
    assert_eq!(
        s.get(Some(&proxy), NODES, &[("X-Remote-User", "alice")])
            .await?
            .0,
        401
    );
    Ok(())
}

#[tokio::test]
async fn a_missing_configmap_means_no_front_proxy_and_an_unreadable_one_fails_startup()
-> anyhow::Result<()> {
    let api = api_server(base_policy()).await?;
    let (namespace, name) = EXTENSION_APISERVER_AUTHENTICATION;
    api.store().delete(resources::CONFIGMAPS, namespace, name, None, None)?;
    let registry = prometheus::Registry::new();
    let auth = Auth::new(AuthConfig::default(), Some(admin_client(&api).await?), &registry).await?;
    let headers = http::HeaderMap::new();
    let proxy = client_cert(&new_ca("any"), "front-proxy-client", "");
    assert_eq!(
        auth.authenticate(Some(&proxy.chain()), &headers)
            .await
            .unwrap_err()
            .status_code(),
        401
    );
    assert_eq!(api.stats().resource_requests("get", "configmaps"), 1);

    api.set_unavailable(&["configmaps"]);
    let err = Auth::new(
        AuthConfig::default(),
        Some(admin_client(&api).await?),
        &prometheus::Registry::new(),
    )
    .await
    .err();
    assert!(
        err.expect("startup must fail")
            .to_string()
            .contains("extension-apiserver-authentication")
    );
    let tolerant = AuthConfig {
        tolerate_lookup_failure: true,
        ..AuthConfig::default()
    };
    assert!(
        Auth::new(tolerant, Some(admin_client(&api).await?), &prometheus::Registry::new())
            .await
            .is_ok()
    );
    Ok(())
}
