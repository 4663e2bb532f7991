//! The one PKI of the project's simulated clusters and tests: certificate authorities, serving
//! certificates for loopback servers, client certificates (CN = user, O = group), PEM files on
//! disk, and the rustls configurations built from them.
//!
//! Every key is ECDSA P-256 (fast to generate: a 5000-kubelet fleet shares one serving
//! certificate, but tests create dozens of CAs). Certificates are valid from 1975 to 4096
//! (rcgen's defaults), so no test ever depends on the wall clock for validity.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose,
};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use rustls::server::WebPkiClientVerifier;
use rustls::{ClientConfig, RootCertStore, ServerConfig};

/// What can go wrong creating certificates or TLS configurations.
#[derive(Debug, thiserror::Error)]
pub enum PkiError {
    /// rcgen refused the parameters or failed to sign.
    #[error("certificate generation failed: {0}")]
    Generate(#[from] rcgen::Error),
    /// rustls refused the certificates or keys.
    #[error("TLS configuration failed: {0}")]
    Tls(#[from] rustls::Error),
    /// rustls could not build a client-certificate verifier.
    #[error("client certificate verifier: {0}")]
    Verifier(#[from] rustls::server::VerifierBuilderError),
    /// Writing a PEM file failed.
    #[error("writing {path}: {source}")]
    Write {
        /// The file that could not be written.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// A client certificate can carry one organization (group) only: rcgen keeps one value per
    /// attribute type.
    #[error("a client certificate carries at most one group (O), got {0}")]
    TooManyGroups(usize),
}

pub use crate::tls::provider;
use crate::tls::AcceptAnyServerCert;

/// A certificate authority that signs serving and client certificates.
pub struct Ca {
    /// The CA's own (self-signed) certificate.
    cert_der: CertificateDer<'static>,
    /// The same certificate, PEM encoded.
    cert_pem: String,
    /// Signs new certificates.
    issuer: Issuer<'static, KeyPair>,
}

impl std::fmt::Debug for Ca {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Ca").field("cert_pem_len", &self.cert_pem.len()).finish_non_exhaustive()
    }
}

/// A certificate with its private key, as issued by a [`Ca`].
#[derive(Clone)]
pub struct CertKey {
    /// The leaf certificate (DER).
    pub cert_der: CertificateDer<'static>,
    /// The leaf certificate, PEM encoded.
    pub cert_pem: String,
    /// The private key, PKCS#8 PEM encoded.
    pub key_pem: String,
    /// The private key, PKCS#8 DER.
    key_der: Vec<u8>,
}

impl std::fmt::Debug for CertKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CertKey").field("cert_pem_len", &self.cert_pem.len()).finish_non_exhaustive()
    }
}

impl CertKey {
    /// The certificate chain rustls presents: the leaf alone (it is signed by the CA directly).
    pub fn chain(&self) -> Vec<CertificateDer<'static>> {
        vec![self.cert_der.clone()]
    }

    /// The private key in the form rustls takes it.
    pub fn key_der(&self) -> PrivateKeyDer<'static> {
        PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(self.key_der.clone()))
    }

    /// Writes `<dir>/<name>.crt` and `<dir>/<name>.key`; returns both paths.
    pub fn write_pem(&self, dir: &Path, name: &str) -> Result<(PathBuf, PathBuf), PkiError> {
        let cert = write_file(dir, &format!("{name}.crt"), &self.cert_pem)?;
        let key = write_file(dir, &format!("{name}.key"), &self.key_pem)?;
        Ok((cert, key))
    }
}

fn write_file(dir: &Path, file: &str, contents: &str) -> Result<PathBuf, PkiError> {
    let path = dir.join(file);
    std::fs::create_dir_all(dir)
        .and_then(|()| std::fs::write(&path, contents))
        .map_err(|source| PkiError::Write { path: path.clone(), source })?;
    Ok(path)
}

impl Ca {
    /// A new self-signed CA whose subject CN is `common_name`.
    pub fn new(common_name: &str) -> Result<Ca, PkiError> {
        let key = KeyPair::generate()?;
        let mut params = CertificateParams::new(Vec::<String>::new())?;
        params.distinguished_name = dn(common_name, None);
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign, KeyUsagePurpose::DigitalSignature];
        let cert = params.self_signed(&key)?;
        Ok(Ca { cert_der: cert.der().clone(), cert_pem: cert.pem(), issuer: Issuer::new(params, key) })
    }

    /// The CA certificate, PEM encoded (what goes into a kubeconfig or a `--*-ca-file`).
    pub fn cert_pem(&self) -> &str {
        &self.cert_pem
    }

    /// The CA certificate, DER encoded.
    pub fn cert_der(&self) -> &CertificateDer<'static> {
        &self.cert_der
    }

    /// A root store holding only this CA.
    pub fn root_store(&self) -> RootCertStore {
        let mut roots = RootCertStore::empty();
        // A certificate we just generated always parses.
        let _ = roots.add(self.cert_der.clone());
        roots
    }

    /// Writes `<dir>/<name>.crt` (the CA certificate) and returns its path.
    pub fn write_pem(&self, dir: &Path, name: &str) -> Result<PathBuf, PkiError> {
        write_file(dir, &format!("{name}.crt"), &self.cert_pem)
    }

    /// A serving certificate for `hosts` (DNS names or IP addresses) plus `127.0.0.1` and
    /// `localhost`, which every simulated server binds.
    pub fn server_cert(&self, common_name: &str, hosts: &[&str]) -> Result<CertKey, PkiError> {
        let mut sans: Vec<String> = vec!["127.0.0.1".into(), "localhost".into()];
        sans.extend(hosts.iter().map(|h| (*h).to_owned()).filter(|h| h != "127.0.0.1" && h != "localhost"));
        let mut params = CertificateParams::new(sans)?;
        params.distinguished_name = dn(common_name, None);
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature, KeyUsagePurpose::KeyEncipherment];
        self.sign(params)
    }

    /// A client certificate: Kubernetes reads CN as the user name and O as a group. An empty
    /// `user` leaves the CN out (a certificate that names no user, for tests of refusing one).
    pub fn client_cert(&self, user: &str, groups: &[&str]) -> Result<CertKey, PkiError> {
        if groups.len() > 1 {
            return Err(PkiError::TooManyGroups(groups.len()));
        }
        let mut params = CertificateParams::new(Vec::<String>::new())?;
        params.distinguished_name = dn(user, groups.first().copied());
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature, KeyUsagePurpose::KeyEncipherment];
        self.sign(params)
    }

    fn sign(&self, params: CertificateParams) -> Result<CertKey, PkiError> {
        let key = KeyPair::generate()?;
        let cert = params.signed_by(&key, &self.issuer)?;
        Ok(CertKey {
            cert_der: cert.der().clone(),
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
            key_der: key.serialize_der(),
        })
    }
}

/// A fresh ECDSA P-256 key pair as (private key PKCS#8 PEM, public key SPKI PEM): what
/// kube-apiserver signs service-account tokens with (`--service-account-signing-key-file`) and
/// verifies them with (`--service-account-key-file`).
pub fn signing_key_pem() -> Result<(String, String), PkiError> {
    let key = KeyPair::generate()?;
    Ok((key.serialize_pem(), key.public_key_pem()))
}

fn dn(common_name: &str, organization: Option<&str>) -> DistinguishedName {
    let mut dn = DistinguishedName::new();
    if let Some(o) = organization {
        dn.push(DnType::OrganizationName, o);
    }
    if !common_name.is_empty() {
        dn.push(DnType::CommonName, common_name);
    }
    dn
}

/// A TLS server configuration presenting `cert`, offering ALPN `h2` and `http/1.1`.
///
/// With `client_ca`, client certificates signed by it are verified when offered but not
/// required (Kubernetes servers accept tokens and certificates on the same port).
pub fn server_config(cert: &CertKey, client_ca: Option<&Ca>, alpn_h2: bool) -> Result<ServerConfig, PkiError> {
    let builder = ServerConfig::builder_with_provider(provider()).with_safe_default_protocol_versions()?;
    let builder = match client_ca {
        Some(ca) => {
            let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(ca.root_store()), provider())
                .allow_unauthenticated()
                .build()?;
            builder.with_client_cert_verifier(verifier)
        }
        None => builder.with_no_client_auth(),
    };
    let mut config = builder.with_single_cert(vec![cert.cert_der.clone()], cert.key_der())?;
    config.alpn_protocols =
        if alpn_h2 { vec![b"h2".to_vec(), b"http/1.1".to_vec()] } else { vec![b"http/1.1".to_vec()] };
    Ok(config)
}

/// A TLS client configuration trusting `ca` (or, with `None`, trusting any server certificate,
/// like an APIService with `insecureSkipTLSVerify: true`), optionally presenting `client_cert`.
pub fn client_config(ca: Option<&RootCertStore>, client_cert: Option<&CertKey>) -> Result<ClientConfig, PkiError> {
    let builder = ClientConfig::builder_with_provider(provider()).with_safe_default_protocol_versions()?;
    let builder = match ca {
        Some(roots) => builder.with_root_certificates(roots.clone()),
        None => builder.dangerous().with_custom_certificate_verifier(Arc::new(AcceptAnyServerCert(provider()))),
    };
    let config = match client_cert {
        Some(c) => builder.with_client_auth_cert(vec![c.cert_der.clone()], c.key_der())?,
        None => builder.with_no_client_auth(),
    };
    Ok(config)
}

/// The subject of a verified client certificate: CN as the user, every O as a group.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertSubject {
    /// The certificate's common name.
    pub common_name: String,
    /// The certificate's organizations.
    pub organizations: Vec<String>,
}

/// Reads CN and O from a DER certificate; `None` when it does not parse or has no CN.
pub fn cert_subject(der: &[u8]) -> Option<CertSubject> {
    let (_, cert) = x509_parser::parse_x509_certificate(der).ok()?;
    let subject = cert.subject();
    let common_name = subject.iter_common_name().next()?.as_str().ok()?.to_owned();
    let organizations = subject.iter_organization().filter_map(|o| o.as_str().ok().map(str::to_owned)).collect();
    Some(CertSubject { common_name, organizations })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_client_certificate_carries_the_user_as_cn_and_the_group_as_o() {
        let ca = Ca::new("test-ca").unwrap();
        let cert = ca.client_cert("alice", &["devs"]).unwrap();
        let subject = cert_subject(&cert.cert_der).unwrap();
        assert_eq!(subject, CertSubject { common_name: "alice".into(), organizations: vec!["devs".into()] });
        assert!(matches!(ca.client_cert("bob", &["a", "b"]), Err(PkiError::TooManyGroups(2))));
        let nameless = ca.client_cert("", &[]).unwrap();
        assert_eq!(cert_subject(&nameless.cert_der), None, "no CN at all");
    }

    #[test]
    fn a_server_certificate_builds_a_server_config_and_pem_files_land_on_disk() {
        let ca = Ca::new("test-ca").unwrap();
        let cert = ca.server_cert("apiserver", &["example.test"]).unwrap();
        server_config(&cert, Some(&ca), true).unwrap();
        client_config(Some(&ca.root_store()), Some(&ca.client_cert("u", &[]).unwrap())).unwrap();
        let dir = tempfile::tempdir().unwrap();
        let (crt, key) = cert.write_pem(dir.path(), "server").unwrap();
        assert!(std::fs::read_to_string(crt).unwrap().starts_with("-----BEGIN CERTIFICATE-----"));
        assert!(std::fs::read_to_string(key).unwrap().contains("PRIVATE KEY"));
        let ca_path = ca.write_pem(dir.path(), "ca").unwrap();
        assert_eq!(std::fs::read_to_string(ca_path).unwrap(), ca.cert_pem());
    }
}
