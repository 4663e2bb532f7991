//! Shared pieces of the `auth_*` tests: an rcgen PKI, a fake Kubernetes API server over real
//! HTTPS (TokenReview, SubjectAccessReview, the authentication ConfigMap), a tiny secure-port
//! server built only from `shardmetrics_frontend::auth`, and a TLS client presenting client
//! certificates.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use anyhow::Context;
use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose,
};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use serde_json::{Value, json};
use shardmetrics_frontend::auth::{
    Auth, AuthError, RequestAttributes, TlsConfig, server_tls_config,
};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::oneshot;

/// A test certificate authority.
pub struct Ca {
    pub pem: String,
    issuer: Issuer<'static, KeyPair>,
}

/// A certificate with its key, as PEM and DER.
pub struct Identity {
    pub cert_pem: String,
    pub key_pem: String,
    pub chain: Vec<CertificateDer<'static>>,
    pub key_der: Vec<u8>,
}

impl Identity {
    pub fn key(&self) -> PrivateKeyDer<'static> {
        PrivateKeyDer::Pkcs8(self.key_der.clone().into())
    }

    /// Writes `<name>.crt` and `<name>.key` into `dir`.
    pub fn write(&self, dir: &Path, name: &str) -> (PathBuf, PathBuf) {
        let cert = dir.join(format!("{name}.crt"));
        let key = dir.join(format!("{name}.key"));
        std::fs::write(&cert, &self.cert_pem).expect("write cert");
        std::fs::write(&key, &self.key_pem).expect("write key");
        (cert, key)
    }
}

impl Ca {
    pub fn new(name: &str) -> Self {
        let mut params = CertificateParams::new(Vec::<String>::new()).expect("params");
        params.distinguished_name = DistinguishedName::new();
        params.distinguished_name.push(DnType::CommonName, name);
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let key = KeyPair::generate().expect("key");
        let cert = params.self_signed(&key).expect("CA");
        Self {
            pem: cert.pem(),
            issuer: Issuer::new(params, key),
        }
    }

    fn issue(&self, params: CertificateParams) -> Identity {
        let key = KeyPair::generate().expect("key");
        let cert = params.signed_by(&key, &self.issuer).expect("sign");
        Identity {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
            chain: vec![cert.der().clone()],
            key_der: key.serialize_der(),
        }
    }

    /// A client certificate with CN `cn` and, unless empty, O `org`.
    pub fn client(&self, cn: &str, org: &str) -> Identity {
        let mut params = CertificateParams::new(Vec::<String>::new()).expect("params");
        params.distinguished_name = DistinguishedName::new();
        params.distinguished_name.push(DnType::CommonName, cn);
        if !org.is_empty() {
            params
                .distinguished_name
                .push(DnType::OrganizationName, org);
        }
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        self.issue(params)
    }

    /// A serving certificate for localhost and 127.0.0.1.
    pub fn server(&self, cn: &str) -> Identity {
        let mut params =
            CertificateParams::new(vec!["localhost".to_owned(), "127.0.0.1".to_owned()])
                .expect("params");
        params.distinguished_name = DistinguishedName::new();
        params.distinguished_name.push(DnType::CommonName, cn);
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        self.issue(params)
    }

    pub fn der(&self) -> CertificateDer<'static> {
        use rustls::pki_types::pem::PemObject;
        CertificateDer::from_pem_slice(self.pem.as_bytes()).expect("CA der")
    }
}

/// Installs nothing global: every rustls config here names the ring provider.
pub fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

// ---------------------------------------------------------------------------------------------
// Fake API server
// ---------------------------------------------------------------------------------------------

/// What the fake API server answers.
#[derive(Default)]
pub struct ApiState {
    /// Bearer token -> (username, groups).
    pub tokens: HashMap<String, (String, Vec<String>)>,
    /// Users the SubjectAccessReview allows; everyone else is denied.
    pub allowed_users: HashSet<String>,
    /// User -> the one namespace the SubjectAccessReview allows them (namespaced requests only).
    pub namespace_grants: HashMap<String, String>,
    /// Running pods (namespace, name) served to metadata-only lists of `/api/v1/pods`; `None`
    /// answers 404. Watches are held open without events.
    pub running_pods: Option<Vec<(String, String)>>,
    /// Node names served to metadata-only lists of `/api/v1/nodes`; `None` answers 404.
    pub nodes: Option<Vec<String>>,
    /// When set, review endpoints answer 500.
    pub failing: bool,
    /// Data of kube-system/extension-apiserver-authentication; `None` answers 404.
    pub configmap: Option<BTreeMap<String, String>>,
    /// Requests seen, by kind.
    pub token_reviews: usize,
    pub access_reviews: usize,
    pub configmap_reads: usize,
    /// The last SubjectAccessReview spec received.
    pub last_access_review: Option<Value>,
}

/// A fake kube-apiserver on 127.0.0.1:0 over real HTTPS.
pub struct FakeApiServer {
    pub addr: SocketAddr,
    pub state: Arc<Mutex<ApiState>>,
    ca: Ca,
    _shutdown: tokio::sync::watch::Sender<()>,
}

impl FakeApiServer {
    pub async fn start(state: ApiState) -> Self {
        let ca = Ca::new("fake-apiserver-ca");
        let serving = ca.server("fake-apiserver");
        let tls = rustls::ServerConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .expect("versions")
            .with_no_client_auth()
            .with_single_cert(serving.chain.clone(), serving.key())
            .expect("server config");
        let mut tls = tls;
        tls.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(tls));
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let state = Arc::new(Mutex::new(state));
        // Dropping the sender stops accepting and closes every open connection.
        let (tx, rx) = tokio::sync::watch::channel(());
        let shared = state.clone();
        tokio::spawn(async move {
            let mut stop = rx.clone();
            loop {
                let (tcp, _) = tokio::select! {
                    accepted = listener.accept() => match accepted { Ok(a) => a, Err(_) => continue },
                    _ = stop.changed() => return,
                };
                let acceptor = acceptor.clone();
                let state = shared.clone();
                let mut stop = rx.clone();
                tokio::spawn(async move {
                    let Ok(tls) = acceptor.accept(tcp).await else {
                        return;
                    };
                    let service = service_fn(move |req| {
                        let state = state.clone();
                        async move { Ok::<_, std::convert::Infallible>(api_handle(&state, req).await) }
                    });
                    let builder =
                        hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
                    let conn = builder.serve_connection(TokioIo::new(tls), service);
                    tokio::select! {
                        _ = conn => {}
                        _ = stop.changed() => {}
                    }
                });
            }
        });
        Self {
            addr,
            state,
            ca,
            _shutdown: tx,
        }
    }

    /// A kube client trusting this server.
    pub fn client(&self) -> kube::Client {
        let mut config = kube::Config::new(
            format!("https://127.0.0.1:{}", self.addr.port())
                .parse()
                .expect("uri"),
        );
        config.root_cert = Some(vec![self.ca.der().to_vec()]);
        kube::Client::try_from(config).expect("kube client")
    }

    pub fn with<R>(&self, f: impl FnOnce(&mut ApiState) -> R) -> R {
        f(&mut self.state.lock().expect("state"))
    }
}

fn json_response(status: StatusCode, body: &Value) -> Response<Full<Bytes>> {
    Response::builder()
        .status(status)
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(body.to_string())))
        .expect("response")
}

fn status_body(code: u16, reason: &str, message: &str) -> Value {
    json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
           "message": message, "reason": reason, "code": code})
}

/// A metadata-only list (`PartialObjectMetadataList`) of `objects` (namespace, name).
fn metadata_list(objects: &[(String, String)]) -> Value {
    let items: Vec<Value> = objects
        .iter()
        .map(|(ns, name)| {
            let mut metadata = json!({"name": name, "resourceVersion": "1", "labels": {}});
            if !ns.is_empty() {
                metadata["namespace"] = json!(ns);
            }
            json!({"kind": "PartialObjectMetadata", "apiVersion": "meta.k8s.io/v1", "metadata": metadata})
        })
        .collect();
    json!({"kind": "PartialObjectMetadataList", "apiVersion": "meta.k8s.io/v1", "metadata": {"resourceVersion": "1"}, "items": items})
}

async fn api_handle(state: &Mutex<ApiState>, req: Request<Incoming>) -> Response<Full<Bytes>> {
    let is_list = matches!(req.uri().path(), "/api/v1/pods" | "/api/v1/nodes");
    if is_list && req.uri().query().unwrap_or_default().split('&').any(|p| p == "watch=true" || p == "watch=1") {
        // A watch without events: held open until the client or the server goes away.
        tokio::time::sleep(std::time::Duration::from_secs(3600)).await;
    }
    let (parts, body) = req.into_parts();
    let body: Value = match body.collect().await {
        Ok(collected) => serde_json::from_slice(&collected.to_bytes()).unwrap_or(Value::Null),
        Err(_) => Value::Null,
    };
    let mut state = state.lock().expect("state");
    let path = parts.uri.path();
    match (parts.method.as_str(), path) {
        ("POST", "/apis/authentication.k8s.io/v1/tokenreviews") => {
            state.token_reviews += 1;
            if state.failing {
                return json_response(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    &status_body(500, "InternalError", "etcd down"),
                );
            }
            let token = body["spec"]["token"].as_str().unwrap_or_default();
            let status = match state.tokens.get(token) {
                Some((user, groups)) => {
                    json!({"authenticated": true, "user": {"username": user, "uid": format!("uid-{user}"), "groups": groups}})
                }
                None => json!({"authenticated": false, "error": "invalid bearer token"}),
            };
            json_response(
                StatusCode::CREATED,
                &json!({
                "kind": "TokenReview", "apiVersion": "authentication.k8s.io/v1",
                "metadata": {}, "spec": body["spec"], "status": status}),
            )
        }
        ("POST", "/apis/authorization.k8s.io/v1/subjectaccessreviews") => {
            state.access_reviews += 1;
            if state.failing {
                return json_response(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    &status_body(500, "InternalError", "etcd down"),
                );
            }
            state.last_access_review = Some(body["spec"].clone());
            let user = body["spec"]["user"].as_str().unwrap_or_default();
            let namespace = body["spec"]["resourceAttributes"]["namespace"].as_str().unwrap_or_default();
            let allowed = state.allowed_users.contains(user)
                || (!namespace.is_empty() && state.namespace_grants.get(user).is_some_and(|ns| ns == namespace));
            let status = if allowed {
                json!({"allowed": true, "reason": "RBAC: allowed by test policy"})
            } else {
                json!({"allowed": false, "reason": "RBAC: no rule for this user"})
            };
            json_response(
                StatusCode::CREATED,
                &json!({
                "kind": "SubjectAccessReview", "apiVersion": "authorization.k8s.io/v1",
                "metadata": {}, "spec": body["spec"], "status": status}),
            )
        }
        ("GET", "/api/v1/namespaces/kube-system/configmaps/extension-apiserver-authentication") => {
            state.configmap_reads += 1;
            if state.failing {
                return json_response(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    &status_body(500, "InternalError", "etcd down"),
                );
            }
            match &state.configmap {
                Some(data) => json_response(
                    StatusCode::OK,
                    &json!({
                    "kind": "ConfigMap", "apiVersion": "v1",
                    "metadata": {"name": "extension-apiserver-authentication", "namespace": "kube-system"},
                    "data": data}),
                ),
                None => json_response(
                    StatusCode::NOT_FOUND,
                    &status_body(
                        404,
                        "NotFound",
                        "configmaps \"extension-apiserver-authentication\" not found",
                    ),
                ),
            }
        }
        ("GET", "/api/v1/pods") if state.running_pods.is_some() => {
            json_response(StatusCode::OK, &metadata_list(state.running_pods.as_deref().unwrap_or_default()))
        }
        ("GET", "/api/v1/nodes") if state.nodes.is_some() => {
            let nodes: Vec<(String, String)> =
                state.nodes.iter().flatten().map(|n| (String::new(), n.clone())).collect();
            json_response(StatusCode::OK, &metadata_list(&nodes))
        }
        _ => json_response(
            StatusCode::NOT_FOUND,
            &status_body(404, "NotFound", "not served by the fake"),
        ),
    }
}

// ---------------------------------------------------------------------------------------------
// Secure-port server built from the auth module alone
// ---------------------------------------------------------------------------------------------

/// A secure-port server on 127.0.0.1:0: `server_tls_config` + `Auth`; answers 200 with the
/// authenticated user as JSON, or the `AuthError` as a Kubernetes Status.
pub struct AuthServer {
    pub addr: SocketAddr,
    _shutdown: oneshot::Sender<()>,
}

impl AuthServer {
    pub async fn start(tls: &TlsConfig, auth: Auth) -> anyhow::Result<Self> {
        let config = server_tls_config(tls)?;
        let acceptor = tokio_rustls::TlsAcceptor::from(config);
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let (tx, mut rx) = oneshot::channel();
        tokio::spawn(async move {
            loop {
                let (tcp, _) = tokio::select! {
                    accepted = listener.accept() => match accepted { Ok(a) => a, Err(_) => continue },
                    _ = &mut rx => return,
                };
                let acceptor = acceptor.clone();
                let auth = auth.clone();
                tokio::spawn(async move {
                    let Ok(tls) = acceptor.accept(tcp).await else {
                        return;
                    };
                    let peer: Option<Arc<Vec<CertificateDer<'static>>>> = tls
                        .get_ref()
                        .1
                        .peer_certificates()
                        .map(|c| Arc::new(c.to_vec()));
                    let service = service_fn(move |req| {
                        let auth = auth.clone();
                        let peer = peer.clone();
                        async move {
                            Ok::<_, std::convert::Infallible>(
                                secure_handle(&auth, peer.as_deref().map(Vec::as_slice), req).await,
                            )
                        }
                    });
                    let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                        .serve_connection(TokioIo::new(tls), service)
                        .await;
                });
            }
        });
        Ok(Self {
            addr,
            _shutdown: tx,
        })
    }
}

async fn secure_handle(
    auth: &Auth,
    peer: Option<&[CertificateDer<'static>]>,
    req: Request<Incoming>,
) -> Response<Full<Bytes>> {
    if auth.is_always_allowed(req.uri().path()) {
        return json_response(StatusCode::OK, &json!({"ok": true}));
    }
    let result = async {
        let user = auth.authenticate(peer, req.headers()).await?;
        auth.authorize(
            &user,
            &RequestAttributes::from_request(req.method(), req.uri()),
        )
        .await?;
        Ok::<_, AuthError>(user)
    }
    .await;
    match result {
        Ok(user) => json_response(StatusCode::OK, &json!({"user": user})),
        Err(e) => json_response(
            e.status_code(),
            &status_body(e.status_code().as_u16(), e.reason(), &e.client_message()),
        ),
    }
}

// ---------------------------------------------------------------------------------------------
// Client
// ---------------------------------------------------------------------------------------------

/// A rustls client config trusting `server_ca`, presenting `identity` if given, limited to
/// `versions`, offering `alpn`.
pub fn client_config(
    server_ca: &Ca,
    identity: Option<&Identity>,
    versions: &[&'static rustls::SupportedProtocolVersion],
    alpn: &[&[u8]],
) -> Arc<rustls::ClientConfig> {
    let mut roots = rustls::RootCertStore::empty();
    roots.add(server_ca.der()).expect("root");
    let builder = rustls::ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(versions)
        .expect("versions")
        .with_root_certificates(roots);
    let mut config = match identity {
        Some(id) => builder
            .with_client_auth_cert(id.chain.clone(), id.key())
            .expect("client cert"),
        None => builder.with_no_client_auth(),
    };
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    Arc::new(config)
}

/// The negotiated TLS session of a fresh connection: the server's leaf certificate and ALPN.
pub struct Session {
    pub version: Option<rustls::ProtocolVersion>,
    pub alpn: Option<Vec<u8>>,
    pub server_leaf: Option<CertificateDer<'static>>,
}

/// Connects and completes a TLS handshake.
pub async fn handshake(
    addr: SocketAddr,
    config: Arc<rustls::ClientConfig>,
) -> anyhow::Result<(tokio_rustls::client::TlsStream<TcpStream>, Session)> {
    let tcp = TcpStream::connect(addr).await?;
    let tls = tokio_rustls::TlsConnector::from(config)
        .connect(ServerName::try_from("localhost")?, tcp)
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
    let (tls, _) = handshake(addr, config).await?;
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls)).await?;
    tokio::spawn(conn);
    let mut req = Request::get(path).header("host", "localhost");
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let response = sender
        .send_request(req.body(Full::new(Bytes::new()))?)
        .await?;
    let status = response.status();
    let body = response.into_body().collect().await?.to_bytes();
    Ok((status, serde_json::from_slice(&body).context("JSON body")?))
}

/// The value of counter `name` with exactly `labels`, 0 if absent.
pub fn counter(registry: &prometheus::Registry, name: &str, labels: &[(&str, &str)]) -> f64 {
    registry
        .gather()
        .iter()
        .filter(|family| family.name() == name)
        .flat_map(|family| family.get_metric().iter())
        .filter(|metric| {
            labels.iter().all(|(k, v)| {
                metric
                    .get_label()
                    .iter()
                    .any(|l| l.name() == *k && l.value() == *v)
            })
        })
        .map(|metric| metric.get_counter().get_value())
        .sum()
}
