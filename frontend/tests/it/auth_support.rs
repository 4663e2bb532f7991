//! Shared pieces of the `auth_*` tests: the API-server simulator as the cluster's API server
//! (TokenReview, SubjectAccessReview, the authentication ConfigMap, Pods and Nodes), a tiny
//! secure-port server built only from `shardmetrics_frontend::auth`, and a TLS client presenting
//! client certificates. Certificates come from the project's one PKI
//! (`shardmetrics_plumbing::pki`).

use std::net::SocketAddr;
use std::sync::Arc;

use anyhow::Context;
use http::StatusCode;
use serde_json::{Value, json};
use shardmetrics_frontend::auth::{Auth, AuthError, RequestAttributes, TlsConfig, server_tls_config};
use shardmetrics_plumbing::pki::{self, Ca, CertKey};
use shardmetrics_sim::apiserver::{
    ApiServer, ApiServerConfig, DEFAULT_ADMIN, DEFAULT_ADMIN_TOKEN, MASTERS, Policy, Rule, RunningApiServer, UserInfo,
};
use shardmetrics_sim::httputil::{Body, PeerInfo, json_response, serve_tls};
use tokio::net::TcpStream;
use tokio::sync::watch;

use crate::support::{self, Version};

/// The reason the simulator gives every SubjectAccessReview denial in these tests, so that its
/// way into 403 messages is checked.
pub const DENIAL_REASON: &str = "RBAC: no rule for this user";

/// The policy every auth test starts from: the simulator's admin (whose client the frontend
/// uses, so its own reviews and ConfigMap reads are always allowed) and [`DENIAL_REASON`].
pub fn base_policy() -> Policy {
    Policy::new().with_token(DEFAULT_ADMIN_TOKEN, UserInfo::new(DEFAULT_ADMIN, &[MASTERS])).with_denial_reason(DENIAL_REASON)
}

/// A rule allowing `user` everything, in every namespace and on every path.
pub fn allow_everything(user: &str) -> Rule {
    Rule::user(user).verbs(&["*"]).resources(&["*"]).urls(&["*"])
}

/// A user with a bearer token's identity: `name`, uid `uid-<name>`, `groups`.
pub fn token_user(name: &str, groups: &[&str]) -> UserInfo {
    UserInfo { uid: format!("uid-{name}"), ..UserInfo::new(name, groups) }
}

/// The API-server simulator with `policy` on 127.0.0.1:0.
pub async fn api_server(policy: Policy) -> anyhow::Result<RunningApiServer> {
    Ok(ApiServer::start(ApiServerConfig { policy, ..ApiServerConfig::default() }).await?)
}

/// A kube client of `api` as its admin: what the frontend under test talks to it with.
pub async fn admin_client(api: &RunningApiServer) -> anyhow::Result<kube::Client> {
    Ok(kube::Client::try_from(api.kubeconfig_for(DEFAULT_ADMIN).await?)?)
}

/// A new test CA named `name`.
pub fn new_ca(name: &str) -> Ca {
    support::new_ca(name)
}

/// A client certificate from `ca` with CN `cn` and, unless empty, O `org`.
pub fn client_cert(ca: &Ca, cn: &str, org: &str) -> CertKey {
    let groups: &[&str] = if org.is_empty() { &[] } else { &[org] };
    ca.client_cert(cn, groups).expect("client certificate")
}

// ---------------------------------------------------------------------------------------------
// Secure-port server built from the auth module alone
// ---------------------------------------------------------------------------------------------

/// A Kubernetes `Status` body for `e`.
fn status(e: &AuthError) -> hyper::Response<Body> {
    let code = e.status_code();
    let body = json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
                      "message": e.client_message(), "reason": e.reason(), "code": code.as_u16()});
    json_response(code, body.to_string())
}

/// A secure-port server on 127.0.0.1:0 (the simulator's TLS accept loop with the frontend's
/// TLS configuration and `Auth`): answers 200 `{}` on always-allowed paths, 200 with the
/// authenticated user as JSON, or the `AuthError` as a Kubernetes Status. Dropping it stops it.
pub struct AuthServer {
    /// Where it listens.
    pub addr: SocketAddr,
    _stop: watch::Sender<bool>,
}

impl AuthServer {
    /// Serves `auth` behind the TLS of `tls`.
    pub async fn start(tls: &TlsConfig, auth: Auth) -> anyhow::Result<Self> {
        let config = server_tls_config(tls)?;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let (stop, stopped) = watch::channel(false);
        tokio::spawn(serve_tls(listener, config, stopped, move |peer: PeerInfo, req: http::Request<hyper::body::Incoming>| {
            let auth = auth.clone();
            async move {
                if auth.is_always_allowed(req.uri().path()) {
                    return json_response(StatusCode::OK, "{}");
                }
                let certs = (!peer.client_certs.is_empty()).then_some(peer.client_certs.as_slice());
                let user = match auth.authenticate(certs, req.headers()).await {
                    Ok(user) => user,
                    Err(e) => return status(&e),
                };
                match auth.authorize(&user, &RequestAttributes::from_request(req.method(), req.uri())).await {
                    Ok(()) => json_response(StatusCode::OK, json!({"user": user}).to_string()),
                    Err(e) => status(&e),
                }
            }
        }));
        Ok(Self { addr, _stop: stop })
    }
}

// ---------------------------------------------------------------------------------------------
// Client
// ---------------------------------------------------------------------------------------------

/// A rustls client config trusting `server_ca`, presenting `identity` if given, limited to
/// `versions`, offering `alpn`.
pub fn client_config(
    server_ca: &Ca,
    identity: Option<&CertKey>,
    versions: &[&'static rustls::SupportedProtocolVersion],
    alpn: &[&[u8]],
) -> Arc<rustls::ClientConfig> {
    let builder = rustls::ClientConfig::builder_with_provider(pki::provider())
        .with_protocol_versions(versions)
        .expect("versions")
        .with_root_certificates(server_ca.root_store());
    let mut config = match identity {
        Some(id) => builder.with_client_auth_cert(id.chain(), id.key_der()).expect("client cert"),
        None => builder.with_no_client_auth(),
    };
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    Arc::new(config)
}

/// The negotiated TLS session of a fresh connection: the server's leaf certificate and ALPN.
pub struct Session {
    /// The protocol version.
    pub version: Option<rustls::ProtocolVersion>,
    /// The ALPN protocol.
    pub alpn: Option<Vec<u8>>,
    /// The certificate the server presented.
    pub server_leaf: Option<rustls::pki_types::CertificateDer<'static>>,
}

/// Connects and completes a TLS handshake.
pub async fn handshake(
    addr: SocketAddr,
    config: Arc<rustls::ClientConfig>,
) -> anyhow::Result<(tokio_rustls::client::TlsStream<TcpStream>, Session)> {
    let tcp = TcpStream::connect(addr).await?;
    let tls = tokio_rustls::TlsConnector::from(config)
        .connect(rustls::pki_types::ServerName::try_from("localhost")?, tcp)
        .await
        .context("TLS handshake")?;
    let conn = tls.get_ref().1;
    let session = Session {
        version: conn.protocol_version(),
        alpn: conn.alpn_protocol().map(<[u8]>::to_vec),
        server_leaf: conn.peer_certificates().and_then(|c| c.first().cloned()),
    };
    Ok((tls, session))
}

/// One HTTP/1.1 GET over a fresh TLS connection: the status and the JSON body.
pub async fn get(
    addr: SocketAddr,
    config: Arc<rustls::ClientConfig>,
    path: &str,
    headers: &[(&str, &str)],
) -> anyhow::Result<(StatusCode, Value)> {
    let reply = support::get(addr, &config, Version::Http1, path, headers).await?;
    Ok((reply.status, serde_json::from_slice(&reply.body).context("JSON body")?))
}

/// The value of counter `name` with exactly `labels`, 0 if absent.
pub fn counter(registry: &prometheus::Registry, name: &str, labels: &[(&str, &str)]) -> f64 {
    registry
        .gather()
        .iter()
        .filter(|family| family.name() == name)
        .flat_map(|family| family.get_metric().iter())
        .filter(|metric| labels.iter().all(|(k, v)| metric.get_label().iter().any(|l| l.name() == *k && l.value() == *v)))
        .map(|metric| metric.get_counter().get_value())
        .sum()
}
