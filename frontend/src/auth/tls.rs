//! TLS of the secure port: the serving certificate (files re-read when they change, or
//! self-signed), TLS 1.2+ with configurable minimum version and cipher suites, ALPN h2 and
//! http/1.1, and client certificates requested but optional.
//!
//! Client certificates are checked only for proof of possession at the TLS layer (like Go's
//! `tls.RequestClientCert`): a certificate from a wrong CA completes the handshake and is then
//! refused by [`crate::auth::Auth::authenticate`] with a 401 Status, which is what clients of an
//! aggregated API server expect. No CA names are sent in the CertificateRequest, so clients
//! (Go's included) present their certificate whoever signed it.

use std::path::PathBuf;
use std::str::FromStr;
use std::sync::{Arc, RwLock, Weak};
use std::time::Duration;

use rustls::client::danger::HandshakeSignatureValid;
use rustls::crypto::{CryptoProvider, WebPkiSupportedAlgorithms};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls::{
    DigitallySignedStruct, DistinguishedName, ServerConfig, SignatureScheme, SupportedCipherSuite,
};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, UnixTime};

use super::error::TlsError;

/// Default spacing of serving certificate re-reads.
pub const DEFAULT_CERT_RELOAD_INTERVAL: Duration = Duration::from_secs(5);

/// Lowest TLS version the secure port accepts (`--tls-min-version`). TLS 1.0 and 1.1 are never
/// accepted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum TlsMinVersion {
    /// `VersionTLS12`: TLS 1.2 and 1.3 (the default).
    #[default]
    Tls12,
    /// `VersionTLS13`: TLS 1.3 only.
    Tls13,
}

impl FromStr for TlsMinVersion {
    type Err = TlsError;

    /// Parses Go's names (`VersionTLS12`, `VersionTLS13`), as kube-apiserver's flag does.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "VersionTLS12" => Ok(Self::Tls12),
            "VersionTLS13" => Ok(Self::Tls13),
            other => Err(TlsError::UnsupportedVersion(other.to_owned())),
        }
    }
}

/// Settings of the secure port's TLS (the `--tls-*` flags).
#[derive(Debug, Clone)]
pub struct TlsConfig {
    /// PEM serving certificate chain (`--tls-cert-file`); self-signed when both files are absent.
    pub cert_file: Option<PathBuf>,
    /// PEM private key of the serving certificate (`--tls-private-key-file`).
    pub key_file: Option<PathBuf>,
    /// Lowest accepted TLS version (`--tls-min-version`).
    pub min_version: TlsMinVersion,
    /// IANA/Go cipher suite names (`--tls-cipher-suites`); empty = every suite rustls offers.
    /// TLS 1.3 suites stay all enabled unless some are listed, as in Go.
    pub cipher_suites: Vec<String>,
    /// DNS names and IPs of the self-signed certificate.
    pub self_signed_names: Vec<String>,
    /// How often the certificate and key files are re-read (changes apply to new connections).
    pub reload_interval: Duration,
}

impl Default for TlsConfig {
    /// Self-signed for `localhost` and `127.0.0.1`, TLS 1.2+, all suites, 5 s reloads.
    fn default() -> Self {
        Self {
            cert_file: None,
            key_file: None,
            min_version: TlsMinVersion::Tls12,
            cipher_suites: Vec::new(),
            self_signed_names: vec!["localhost".to_owned(), "127.0.0.1".to_owned()],
            reload_interval: DEFAULT_CERT_RELOAD_INTERVAL,
        }
    }
}

/// The rustls suite for an IANA/Go cipher suite name, if rustls (ring) implements it. CBC, RC4,
/// 3DES and static-RSA suites are not implemented (insecure) and so are refused.
fn cipher_suite(name: &str) -> Option<SupportedCipherSuite> {
    use rustls::crypto::ring::cipher_suite as cs;
    Some(match name {
        "TLS_AES_128_GCM_SHA256" => cs::TLS13_AES_128_GCM_SHA256,
        "TLS_AES_256_GCM_SHA384" => cs::TLS13_AES_256_GCM_SHA384,
        "TLS_CHACHA20_POLY1305_SHA256" => cs::TLS13_CHACHA20_POLY1305_SHA256,
        "TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256" => cs::TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256,
        "TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384" => cs::TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384,
        "TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305"
        | "TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256" => {
            cs::TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256
        }
        "TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256" => cs::TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256,
        "TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384" => cs::TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384,
        "TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305" | "TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256" => {
            cs::TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256
        }
        _ => return None,
    })
}

/// The cipher suites to offer for `names` (see [`TlsConfig::cipher_suites`]), every unsupported
/// name reported at once.
pub fn cipher_suites(
    names: &[String],
    min_version: TlsMinVersion,
) -> Result<Vec<SupportedCipherSuite>, TlsError> {
    let all = rustls::crypto::ring::ALL_CIPHER_SUITES;
    if names.is_empty() {
        return Ok(all.to_vec());
    }
    let mut chosen = Vec::new();
    let mut unknown = Vec::new();
    for name in names {
        match cipher_suite(name.trim()) {
            Some(suite) if !chosen.contains(&suite) => chosen.push(suite),
            Some(_) => {}
            None => unknown.push(name.clone()),
        }
    }
    if !unknown.is_empty() {
        return Err(TlsError::UnsupportedCipherSuites(unknown));
    }
    let is_tls13 = |s: &SupportedCipherSuite| s.version() == &rustls::version::TLS13;
    if !chosen.iter().any(is_tls13) {
        chosen.extend(all.iter().filter(|s| is_tls13(s)).copied());
    }
    if min_version == TlsMinVersion::Tls12 && !chosen.iter().any(|s| !is_tls13(s)) {
        return Err(TlsError::NoCipherSuite(
            "TLS 1.2 (add a TLS 1.2 suite or use --tls-min-version=VersionTLS13)",
        ));
    }
    Ok(chosen)
}

/// Builds the secure port's rustls configuration (see the module docs). With certificate files,
/// a background task re-reads them every [`TlsConfig::reload_interval`] and swaps in a changed,
/// valid pair for new connections; a broken pair is logged and the old one kept. The task ends
/// when the returned configuration is dropped. Must run inside a tokio runtime when files are
/// given.
pub fn server_tls_config(config: &TlsConfig) -> Result<Arc<ServerConfig>, TlsError> {
    let mut provider = rustls::crypto::ring::default_provider();
    provider.cipher_suites = cipher_suites(&config.cipher_suites, config.min_version)?;
    let provider = Arc::new(provider);
    let resolver = match (&config.cert_file, &config.key_file) {
        (Some(cert_file), Some(key_file)) => {
            let runtime = tokio::runtime::Handle::try_current().map_err(|_| TlsError::NoRuntime)?;
            let pair = FilePair {
                cert: cert_file.clone(),
                key: key_file.clone(),
            };
            let (cert_pem, key_pem) = pair.read_blocking()?;
            let key = pair.load(&cert_pem, &key_pem, &provider)?;
            let resolver = Arc::new(ServingCert {
                current: RwLock::new(Arc::new(key)),
            });
            runtime.spawn(reload_loop(
                Arc::downgrade(&resolver),
                pair,
                (cert_pem, key_pem),
                provider.clone(),
                config.reload_interval,
            ));
            resolver
        }
        (None, None) => Arc::new(ServingCert {
            current: RwLock::new(Arc::new(self_signed(&config.self_signed_names, &provider)?)),
        }),
        _ => return Err(TlsError::HalfPair),
    };
    let versions: &[&'static rustls::SupportedProtocolVersion] = match config.min_version {
        TlsMinVersion::Tls12 => &[&rustls::version::TLS13, &rustls::version::TLS12],
        TlsMinVersion::Tls13 => &[&rustls::version::TLS13],
    };
    let verifier = Arc::new(OptionalClientCert {
        algorithms: provider.signature_verification_algorithms,
    });
    let mut server = ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(versions)?
        .with_client_cert_verifier(verifier)
        .with_cert_resolver(resolver);
    server.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(Arc::new(server))
}

/// A self-signed serving certificate for `names` (DNS names or IP addresses).
fn self_signed(names: &[String], provider: &CryptoProvider) -> Result<CertifiedKey, TlsError> {
    let generated = rcgen::generate_simple_self_signed(names.to_vec())
        .map_err(|e| TlsError::SelfSigned(e.to_string()))?;
    let key = PrivateKeyDer::Pkcs8(generated.signing_key.serialize_der().into());
    let signer = provider
        .key_provider
        .load_private_key(key)
        .map_err(|e| TlsError::SelfSigned(e.to_string()))?;
    Ok(CertifiedKey::new(
        vec![generated.cert.der().clone()],
        signer,
    ))
}

/// The serving certificate and key file paths.
#[derive(Debug, Clone)]
struct FilePair {
    /// `--tls-cert-file`.
    cert: PathBuf,
    /// `--tls-private-key-file`.
    key: PathBuf,
}

impl FilePair {
    /// Reads both files (at startup, before the runtime serves anything).
    fn read_blocking(&self) -> Result<(Vec<u8>, Vec<u8>), TlsError> {
        let read = |path: &PathBuf| {
            std::fs::read(path).map_err(|source| TlsError::Read {
                path: path.clone(),
                source,
            })
        };
        Ok((read(&self.cert)?, read(&self.key)?))
    }

    /// Reads both files without blocking the runtime.
    async fn read(&self) -> Result<(Vec<u8>, Vec<u8>), TlsError> {
        let cert = tokio::fs::read(&self.cert)
            .await
            .map_err(|source| TlsError::Read {
                path: self.cert.clone(),
                source,
            })?;
        let key = tokio::fs::read(&self.key)
            .await
            .map_err(|source| TlsError::Read {
                path: self.key.clone(),
                source,
            })?;
        Ok((cert, key))
    }

    /// Parses a certificate chain and its key, checking that they belong together.
    fn load(
        &self,
        cert_pem: &[u8],
        key_pem: &[u8],
        provider: &CryptoProvider,
    ) -> Result<CertifiedKey, TlsError> {
        let bad_cert = |reason: String| TlsError::InvalidCert {
            path: self.cert.clone(),
            reason,
        };
        let bad_key = |reason: String| TlsError::InvalidKey {
            path: self.key.clone(),
            reason,
        };
        let chain = CertificateDer::pem_slice_iter(cert_pem)
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| bad_cert(format!("bad PEM: {e}")))?;
        if chain.is_empty() {
            return Err(bad_cert("no CERTIFICATE block found".to_owned()));
        }
        let key = PrivateKeyDer::from_pem_slice(key_pem)
            .map_err(|e| bad_key(format!("no usable private key: {e}")))?;
        let signer = provider
            .key_provider
            .load_private_key(key)
            .map_err(|e| bad_key(e.to_string()))?;
        let certified = CertifiedKey::new(chain, signer);
        match certified.keys_match() {
            Ok(()) | Err(rustls::Error::InconsistentKeys(rustls::InconsistentKeys::Unknown)) => {
                Ok(certified)
            }
            Err(e) => Err(bad_key(format!("does not match the certificate: {e}"))),
        }
    }
}

/// Re-reads the files every `interval`; stops when the resolver is gone.
async fn reload_loop(
    resolver: Weak<ServingCert>,
    pair: FilePair,
    mut last_seen: (Vec<u8>, Vec<u8>),
    provider: Arc<CryptoProvider>,
    interval: Duration,
) {
    let mut ticker = tokio::time::interval(interval.max(Duration::from_millis(10)));
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    ticker.tick().await;
    loop {
        ticker.tick().await;
        let Some(resolver) = resolver.upgrade() else {
            return;
        };
        let contents = match pair.read().await {
            Ok(contents) => contents,
            Err(e) => {
                tracing::warn!(error = %e, "serving certificate not re-read; keeping the current one");
                continue;
            }
        };
        if contents == last_seen {
            continue;
        }
        match pair.load(&contents.0, &contents.1, &provider) {
            Ok(key) => {
                *resolver.current.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(key);
                tracing::info!(cert = %pair.cert.display(), "serving certificate reloaded");
            }
            // Often a half-written pair (cert updated before key): retried when either changes.
            Err(e) => {
                tracing::warn!(error = %e, "changed serving certificate is not usable; keeping the current one")
            }
        }
        last_seen = contents;
    }
}

/// Hands out the current serving certificate.
#[derive(Debug)]
struct ServingCert {
    /// Swapped by the reload task.
    current: RwLock<Arc<CertifiedKey>>,
}

impl ResolvesServerCert for ServingCert {
    fn resolve(&self, _client_hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(
            self.current
                .read()
                .unwrap_or_else(|e| e.into_inner())
                .clone(),
        )
    }
}

/// Requests a client certificate, accepts none, and accepts any whose possession the client
/// proves; who signed it is judged per request by the authenticators.
#[derive(Debug)]
struct OptionalClientCert {
    /// Signature algorithms used to check the client's proof of possession.
    algorithms: WebPkiSupportedAlgorithms,
}

impl ClientCertVerifier for OptionalClientCert {
    fn offer_client_auth(&self) -> bool {
        true
    }

    fn client_auth_mandatory(&self) -> bool {
        false
    }

    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        &[]
    }

    fn verify_client_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        Ok(ClientCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.algorithms.supported_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn go_version_names_parse_and_old_versions_are_refused() {
        assert_eq!(
            "VersionTLS12".parse::<TlsMinVersion>().ok(),
            Some(TlsMinVersion::Tls12)
        );
        assert_eq!(
            "VersionTLS13".parse::<TlsMinVersion>().ok(),
            Some(TlsMinVersion::Tls13)
        );
        assert!("VersionTLS11".parse::<TlsMinVersion>().is_err());
        assert!("tls12".parse::<TlsMinVersion>().is_err());
    }

    #[test]
    fn listed_tls12_suites_restrict_tls12_and_keep_every_tls13_suite() {
        let suites = cipher_suites(
            &["TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256".into()],
            TlsMinVersion::Tls12,
        )
        .expect("suites");
        let tls12: Vec<_> = suites
            .iter()
            .filter(|s| s.version() == &rustls::version::TLS12)
            .collect();
        assert_eq!(tls12.len(), 1);
        assert_eq!(
            suites
                .iter()
                .filter(|s| s.version() == &rustls::version::TLS13)
                .count(),
            3
        );
    }

    #[test]
    fn every_unsupported_suite_is_named_in_one_error() {
        let err = cipher_suites(
            &[
                "TLS_RSA_WITH_RC4_128_SHA".into(),
                "TLS_AES_128_GCM_SHA256".into(),
                "bogus".into(),
            ],
            TlsMinVersion::Tls13,
        )
        .unwrap_err();
        let text = err.to_string();
        assert!(
            text.contains("TLS_RSA_WITH_RC4_128_SHA") && text.contains("bogus"),
            "{text}"
        );
    }

    #[test]
    fn only_tls13_suites_with_a_tls12_minimum_is_an_error() {
        assert!(cipher_suites(&["TLS_AES_128_GCM_SHA256".into()], TlsMinVersion::Tls12).is_err());
        assert!(cipher_suites(&["TLS_AES_128_GCM_SHA256".into()], TlsMinVersion::Tls13).is_ok());
    }

    #[test]
    fn half_a_certificate_pair_is_an_error() {
        let config = TlsConfig {
            cert_file: Some("/nonexistent.crt".into()),
            ..TlsConfig::default()
        };
        assert!(matches!(
            server_tls_config(&config),
            Err(TlsError::HalfPair)
        ));
    }

    #[test]
    fn self_signed_config_offers_h2_and_http11() {
        let config = server_tls_config(&TlsConfig::default()).expect("config");
        assert_eq!(
            config.alpn_protocols,
            [b"h2".to_vec(), b"http/1.1".to_vec()]
        );
    }
}
