//! The secure port's TLS over real sockets: protocol versions, cipher suites, ALPN, optional
//! client certificates, and serving certificate reload.

use std::time::Duration;

use crate::auth_support::{AuthServer, client_cert, client_config, handshake, new_ca};
use shardmetrics_frontend::auth::{Auth, AuthConfig, TlsConfig, TlsMinVersion};
use shardmetrics_plumbing::pki::{self, Ca};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

struct Server {
    server: AuthServer,
    ca: Ca,
    dir: tempfile::TempDir,
}

/// A secure port with a serving certificate from its own CA. TLS is all these tests look at,
/// so `Auth` has no API server.
async fn start(configure: impl FnOnce(&mut TlsConfig)) -> anyhow::Result<Server> {
    let ca = new_ca("serving-ca");
    let dir = tempfile::tempdir()?;
    let (cert, key) = ca.server_cert("frontend-1", &[])?.write_pem(dir.path(), "serving")?;
    let mut tls = TlsConfig {
        cert_file: Some(cert),
        key_file: Some(key),
        ..TlsConfig::default()
    };
    configure(&mut tls);
    let auth = Auth::new(AuthConfig::default(), None, &prometheus::Registry::new()).await?;
    let server = AuthServer::start(&tls, auth).await?;
    Ok(Server { server, ca, dir })
}

/// A ClientHello without the supported_versions extension (as TLS 1.1 and older clients send
/// it), offering `client_version` ([3, 2] = TLS 1.1, [3, 3] = TLS 1.2), CBC and GCM suites, and
/// the extensions an ECDHE handshake needs.
fn legacy_client_hello(client_version: [u8; 2]) -> Vec<u8> {
    fn extension(kind: u16, data: &[u8]) -> Vec<u8> {
        let mut out = kind.to_be_bytes().to_vec();
        out.extend_from_slice(&(data.len() as u16).to_be_bytes());
        out.extend_from_slice(data);
        out
    }
    let mut extensions = Vec::new();
    // signature_algorithms: ecdsa_secp256r1_sha256, rsa_pss_rsae_sha256, rsa_pkcs1_sha256
    extensions.extend(extension(
        0x000d,
        &[0x00, 0x06, 0x04, 0x03, 0x08, 0x04, 0x04, 0x01],
    ));
    // supported_groups: x25519, secp256r1
    extensions.extend(extension(0x000a, &[0x00, 0x04, 0x00, 0x1d, 0x00, 0x17]));
    // ec_point_formats: uncompressed
    extensions.extend(extension(0x000b, &[0x01, 0x00]));
    let mut body = client_version.to_vec();
    body.extend_from_slice(&[0x42; 32]); // random
    body.push(0); // session id
    // ECDHE_ECDSA_AES128_CBC_SHA, ECDHE_RSA_AES128_CBC_SHA, ECDHE_ECDSA_AES128_GCM_SHA256, ECDHE_RSA_AES128_GCM_SHA256
    body.extend_from_slice(&[0x00, 0x08, 0xc0, 0x09, 0xc0, 0x13, 0xc0, 0x2b, 0xc0, 0x2f]);
    body.extend_from_slice(&[0x01, 0x00]); // null compression
    body.extend_from_slice(&(extensions.len() as u16).to_be_bytes());
    body.extend_from_slice(&extensions);
    let mut handshake = vec![0x01, 0x00];
    handshake.extend_from_slice(&(body.len() as u16).to_be_bytes());
    handshake.extend_from_slice(&body);
    let mut record = vec![0x16, 0x03, 0x01];
    record.extend_from_slice(&(handshake.len() as u16).to_be_bytes());
    record.extend_from_slice(&handshake);
    record
}

/// Sends `hello` and returns the first 7 bytes the server answers (a record header and more).
async fn first_reply(addr: std::net::SocketAddr, hello: &[u8]) -> anyhow::Result<Vec<u8>> {
    let mut tcp = tokio::net::TcpStream::connect(addr).await?;
    tcp.write_all(hello).await?;
    let mut reply = vec![0; 7];
    tokio::time::timeout(Duration::from_secs(10), tcp.read_exact(&mut reply)).await??;
    Ok(reply)
}

#[tokio::test]
async fn a_tls_1_1_client_is_refused_with_a_protocol_version_alert() -> anyhow::Result<()> {
    let s = start(|_| {}).await?;
    let reply = first_reply(s.server.addr, &legacy_client_hello([0x03, 0x02])).await?;
    assert_eq!(
        reply[0], 0x15,
        "an alert record, not a ServerHello: {reply:?}"
    );
    assert_eq!(reply[6], 70, "alert protocol_version: {reply:?}");
    // The same hello claiming TLS 1.2 gets a ServerHello: only the version was refused.
    let reply = first_reply(s.server.addr, &legacy_client_hello([0x03, 0x03])).await?;
    assert_eq!(
        (reply[0], reply[5]),
        (0x16, 0x02),
        "a handshake record holding a ServerHello: {reply:?}"
    );
    Ok(())
}

#[tokio::test]
async fn tls_1_2_is_accepted_by_default_and_refused_with_a_tls_1_3_minimum() -> anyhow::Result<()> {
    let s = start(|_| {}).await?;
    let tls12_only = client_config(&s.ca, None, &[&rustls::version::TLS12], &[b"h2"]);
    let (_, session) = handshake(s.server.addr, tls12_only.clone()).await?;
    assert_eq!(session.version, Some(rustls::ProtocolVersion::TLSv1_2));
    let (_, session) = handshake(
        s.server.addr,
        client_config(&s.ca, None, rustls::ALL_VERSIONS, &[b"h2"]),
    )
    .await?;
    assert_eq!(session.version, Some(rustls::ProtocolVersion::TLSv1_3));

    let s13 = start(|c| c.min_version = TlsMinVersion::Tls13).await?;
    let tls12_only = client_config(&s13.ca, None, &[&rustls::version::TLS12], &[b"h2"]);
    assert!(handshake(s13.server.addr, tls12_only).await.is_err());
    Ok(())
}

#[tokio::test]
async fn configured_cipher_suites_restrict_tls_1_2() -> anyhow::Result<()> {
    // rcgen keys are ECDSA P-256, so the server can only use ECDSA suites.
    let s =
        start(|c| c.cipher_suites = vec!["TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384".into()]).await?;
    let client = |suite: rustls::SupportedCipherSuite| {
        let mut provider = rustls::crypto::ring::default_provider();
        provider.cipher_suites = vec![suite];
        std::sync::Arc::new(
            rustls::ClientConfig::builder_with_provider(provider.into())
                .with_protocol_versions(&[&rustls::version::TLS12])
                .expect("versions")
                .with_root_certificates(s.ca.root_store())
                .with_no_client_auth(),
        )
    };
    use rustls::crypto::ring::cipher_suite as cs;
    assert!(
        handshake(
            s.server.addr,
            client(cs::TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384)
        )
        .await
        .is_ok()
    );
    assert!(
        handshake(
            s.server.addr,
            client(cs::TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256)
        )
        .await
        .is_err()
    );
    Ok(())
}

#[tokio::test]
async fn alpn_offers_h2_and_http_1_1() -> anyhow::Result<()> {
    let s = start(|_| {}).await?;
    let (_, h2) = handshake(
        s.server.addr,
        client_config(&s.ca, None, rustls::ALL_VERSIONS, &[b"h2", b"http/1.1"]),
    )
    .await?;
    assert_eq!(h2.alpn.as_deref(), Some(&b"h2"[..]));
    let (_, h1) = handshake(
        s.server.addr,
        client_config(&s.ca, None, rustls::ALL_VERSIONS, &[b"http/1.1"]),
    )
    .await?;
    assert_eq!(h1.alpn.as_deref(), Some(&b"http/1.1"[..]));
    Ok(())
}

#[tokio::test]
async fn client_certificates_are_optional_and_accepted_from_any_ca_at_the_tls_layer()
-> anyhow::Result<()> {
    let s = start(|_| {}).await?;
    for versions in [
        &[&rustls::version::TLS12][..],
        &[&rustls::version::TLS13][..],
    ] {
        let stranger = client_cert(&new_ca("stranger-ca"), "someone", "");
        assert!(
            handshake(
                s.server.addr,
                client_config(&s.ca, Some(&stranger), versions, &[])
            )
            .await
            .is_ok()
        );
        assert!(
            handshake(s.server.addr, client_config(&s.ca, None, versions, &[]))
                .await
                .is_ok()
        );
    }
    Ok(())
}

async fn served_leaf(s: &Server) -> anyhow::Result<Vec<u8>> {
    let (_, session) = handshake(
        s.server.addr,
        client_config(&s.ca, None, rustls::ALL_VERSIONS, &[]),
    )
    .await?;
    Ok(session.server_leaf.expect("server certificate").to_vec())
}

/// Polls until the served certificate equals `want` (deadline 20 s; the reload runs every 20 ms).
async fn wait_for_leaf(s: &Server, want: &[u8]) -> anyhow::Result<()> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while served_leaf(s).await? != want {
        anyhow::ensure!(
            tokio::time::Instant::now() < deadline,
            "the new serving certificate was never served"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    Ok(())
}

#[tokio::test]
async fn changed_serving_certificate_files_are_served_without_a_restart() -> anyhow::Result<()> {
    let s = start(|c| c.reload_interval = Duration::from_millis(20)).await?;
    let first = served_leaf(&s).await?;
    let second = s.ca.server_cert("frontend-2", &[])?;
    second.write_pem(s.dir.path(), "serving")?;
    wait_for_leaf(&s, second.cert_der.as_ref()).await?;
    assert_ne!(first, second.cert_der.to_vec());

    // A key that does not match is refused; the current certificate stays until a good pair lands.
    let third = s.ca.server_cert("frontend-3", &[])?;
    let fourth = s.ca.server_cert("frontend-4", &[])?;
    std::fs::write(s.dir.path().join("serving.crt"), &third.cert_pem)?;
    std::fs::write(s.dir.path().join("serving.key"), &fourth.key_pem)?;
    for _ in 0..10 {
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert_eq!(
            served_leaf(&s).await?,
            second.cert_der.to_vec(),
            "a mismatched pair must never be served"
        );
    }
    std::fs::write(s.dir.path().join("serving.key"), &third.key_pem)?;
    wait_for_leaf(&s, third.cert_der.as_ref()).await?;
    Ok(())
}

#[tokio::test]
async fn without_certificate_files_the_port_serves_a_self_signed_certificate_for_localhost()
-> anyhow::Result<()> {
    let config = shardmetrics_frontend::auth::server_tls_config(&TlsConfig::default())?;
    let acceptor = tokio_rustls::TlsAcceptor::from(config);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    tokio::spawn(async move {
        if let Ok((tcp, _)) = listener.accept().await {
            let _ = acceptor.accept(tcp).await;
        }
    });
    // Trust the certificate the server presents, then check it names localhost.
    let client = pki::client_config(None, None)?;
    let (_, session) = handshake(addr, std::sync::Arc::new(client)).await?;
    let leaf = session.server_leaf.expect("a certificate");
    let (_, cert) = x509_parser::parse_x509_certificate(leaf.as_ref())?;
    let san = cert.subject_alternative_name()?.expect("SANs");
    let names = format!("{:?}", san.value.general_names);
    assert!(
        names.contains("localhost") && names.contains("127"),
        "{names}"
    );
    Ok(())
}
