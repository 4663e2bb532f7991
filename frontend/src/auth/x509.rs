//! Client certificate chains: verification against a CA bundle and the subject fields the
//! authenticators read (CN = user, O = groups).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rustls::RootCertStore;
use rustls::server::WebPkiClientVerifier;
use rustls::server::danger::ClientCertVerifier;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, UnixTime};

use super::error::AuthSetupError;

/// How long a verified chain is remembered at most, in milliseconds (never past the expiry of a
/// certificate in it).
const VERIFIED_TTL_MS: i64 = 60_000;
/// Most chains remembered per bundle. When full, expired entries are dropped; if it is still
/// full the chain is simply verified again next time.
const VERIFIED_CAPACITY: usize = 256;

/// A CA bundle that verifies client certificate chains (signature path, validity period and,
/// when present, the clientAuth extended key usage, as Go's `x509.Verify` with
/// `ExtKeyUsageClientAuth` does).
///
/// Verification costs tens of microseconds of signature checks, and the aggregation layer sends
/// the same front-proxy certificate on every request, so chains that verified are remembered
/// (exact bytes) for up to a minute. A rebuilt bundle (changed CA) starts with none.
pub(crate) struct CaBundle {
    /// rustls' WebPKI client verifier over the bundle's roots.
    verifier: Arc<dyn ClientCertVerifier>,
    /// The PEM the bundle was built from, to tell whether a re-read changed anything.
    pem: Vec<u8>,
    /// Chains that verified -> until when that holds, Unix ms.
    verified: Mutex<HashMap<Box<[CertificateDer<'static>]>, i64>>,
}

impl std::fmt::Debug for CaBundle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CaBundle")
            .field("pem_bytes", &self.pem.len())
            .finish()
    }
}

impl CaBundle {
    /// Parses a PEM bundle; `what` names it in errors (a path or a ConfigMap key).
    pub(crate) fn from_pem(pem: &[u8], what: &str) -> Result<Self, AuthSetupError> {
        let invalid = |reason: String| AuthSetupError::InvalidCa {
            what: what.to_owned(),
            reason,
        };
        let mut roots = RootCertStore::empty();
        for cert in CertificateDer::pem_slice_iter(pem) {
            let cert = cert.map_err(|e| invalid(format!("bad PEM: {e}")))?;
            roots
                .add(cert)
                .map_err(|e| invalid(format!("bad CA certificate: {e}")))?;
        }
        if roots.is_empty() {
            return Err(invalid("no CERTIFICATE block found".to_owned()));
        }
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider)
            .build()
            .map_err(|e| invalid(e.to_string()))?;
        Ok(Self {
            verifier,
            pem: pem.to_vec(),
            verified: Mutex::new(HashMap::new()),
        })
    }

    /// The PEM this bundle was built from.
    pub(crate) fn pem(&self) -> &[u8] {
        &self.pem
    }

    /// Verifies `chain` (leaf first, then intermediates) at wall time `now_ms` (Unix ms).
    pub(crate) fn verify(
        &self,
        chain: &[CertificateDer<'static>],
        now_ms: i64,
    ) -> Result<(), String> {
        let (leaf, intermediates) = chain.split_first().ok_or("empty certificate chain")?;
        if let Some(&until) = self
            .verified
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(chain)
            && now_ms < until
        {
            return Ok(());
        }
        let now =
            UnixTime::since_unix_epoch(Duration::from_millis(u64::try_from(now_ms).unwrap_or(0)));
        self.verifier
            .verify_client_cert(leaf, intermediates, now)
            .map_err(|e| e.to_string())?;
        self.remember(chain, now_ms);
        Ok(())
    }

    /// Remembers a chain that verified at `now_ms`, until the earliest of `VERIFIED_TTL_MS` from
    /// now and the expiry of any certificate in it.
    fn remember(&self, chain: &[CertificateDer<'static>], now_ms: i64) {
        let mut until = now_ms.saturating_add(VERIFIED_TTL_MS);
        for cert in chain {
            match x509_parser::parse_x509_certificate(cert.as_ref()) {
                Ok((_, parsed)) => {
                    until = until.min(parsed.validity().not_after.timestamp().saturating_mul(1000));
                }
                Err(_) => return,
            }
        }
        let mut verified = self.verified.lock().unwrap_or_else(|e| e.into_inner());
        if verified.len() >= VERIFIED_CAPACITY {
            verified.retain(|_, until| *until > now_ms);
            if verified.len() >= VERIFIED_CAPACITY {
                return;
            }
        }
        verified.insert(chain.to_vec().into_boxed_slice(), until);
    }
}

/// The subject fields of a certificate that Kubernetes authenticators use.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub(crate) struct Subject {
    /// The first CommonName, if any (empty strings count as absent).
    pub(crate) common_name: Option<String>,
    /// Every Organization, in order.
    pub(crate) organizations: Vec<String>,
}

/// Reads the subject of a DER certificate.
pub(crate) fn subject(cert: &CertificateDer<'_>) -> Result<Subject, String> {
    let (_, parsed) = x509_parser::parse_x509_certificate(cert.as_ref())
        .map_err(|e| format!("unparsable certificate: {e}"))?;
    let subject = parsed.subject();
    let common_name = subject
        .iter_common_name()
        .next()
        .and_then(|cn| cn.as_str().ok())
        .filter(|cn| !cn.is_empty())
        .map(str::to_owned);
    let organizations = subject
        .iter_organization()
        .filter_map(|o| o.as_str().ok())
        .map(str::to_owned)
        .collect();
    Ok(Subject {
        common_name,
        organizations,
    })
}

#[cfg(test)]
pub(crate) mod testing {
    //! The project's test PKI (`shardmetrics_plumbing::pki`) in the shape the unit tests of this
    //! module tree use.

    use rustls_pki_types::CertificateDer;
    pub(crate) use shardmetrics_plumbing::pki::Ca;

    /// A new CA named `name`.
    pub(crate) fn new_ca(name: &str) -> Ca {
        Ca::new(name).expect("test CA")
    }

    /// The leaf of a client certificate from `ca` with CN `cn` (none if empty) and O `org`
    /// (none if empty).
    pub(crate) fn client_cert(ca: &Ca, cn: &str, org: &str) -> CertificateDer<'static> {
        let groups: &[&str] = if org.is_empty() { &[] } else { &[org] };
        ca.client_cert(cn, groups).expect("test client certificate").cert_der
    }
}

#[cfg(test)]
mod tests {
    use super::testing::{client_cert, new_ca};
    use super::*;

    fn now_ms() -> i64 {
        shardmetrics_plumbing::clock::system().now_ms()
    }

    #[test]
    fn a_chain_from_the_bundle_verifies_and_one_from_another_ca_does_not() {
        let ca = new_ca("front-proxy-ca");
        let other = new_ca("other-ca");
        let bundle = CaBundle::from_pem(ca.cert_pem().as_bytes(), "test").expect("bundle");
        assert!(
            bundle
                .verify(&[client_cert(&ca, "front-proxy-client", "")], now_ms())
                .is_ok()
        );
        assert!(
            bundle
                .verify(&[client_cert(&other, "front-proxy-client", "")], now_ms())
                .is_err()
        );
        assert!(bundle.verify(&[], now_ms()).is_err());
    }

    #[test]
    fn a_verified_chain_is_remembered() {
        let ca = new_ca("ca");
        let bundle = CaBundle::from_pem(ca.cert_pem().as_bytes(), "test").expect("bundle");
        let chain = [client_cert(&ca, "u", "")];
        assert!(bundle.verify(&chain, now_ms()).is_ok());
        assert_eq!(bundle.verified.lock().expect("lock").len(), 1);
        assert!(bundle.verify(&[client_cert(&ca, "v", "")], now_ms()).is_ok());
        assert_eq!(bundle.verified.lock().expect("lock").len(), 2);
    }

    #[test]
    fn a_remembered_chain_is_not_accepted_past_its_certificates_expiry() {
        let ca = new_ca("ca");
        let bundle = CaBundle::from_pem(ca.cert_pem().as_bytes(), "test").expect("bundle");
        let chain = [client_cert(&ca, "u", "")];
        let not_after_ms = match x509_parser::parse_x509_certificate(chain[0].as_ref()) {
            Ok((_, c)) => c.validity().not_after.timestamp() * 1000,
            Err(e) => panic!("{e}"),
        };
        // Verified (and remembered) a few seconds before expiry...
        assert!(bundle.verify(&chain, not_after_ms - 5_000).is_ok());
        assert!(bundle.verify(&chain, not_after_ms - 1).is_ok());
        // ...but not believed after it.
        assert!(bundle.verify(&chain, not_after_ms + 1_000).is_err());
    }

    #[test]
    fn a_certificate_is_rejected_outside_its_validity_period() {
        let ca = new_ca("ca");
        let bundle = CaBundle::from_pem(ca.cert_pem().as_bytes(), "test").expect("bundle");
        // rcgen's default validity starts in 1975; 1970 is before it.
        assert!(bundle.verify(&[client_cert(&ca, "u", "")], 0).is_err());
    }

    #[test]
    fn a_bundle_without_certificates_is_a_clear_error() {
        let err =
            CaBundle::from_pem(b"not pem at all", "requestheader-client-ca-file").unwrap_err();
        assert!(
            err.to_string().contains("requestheader-client-ca-file"),
            "{err}"
        );
    }

    #[test]
    fn subject_gives_common_name_and_organizations() {
        let ca = new_ca("ca");
        let s = subject(&client_cert(&ca, "alice", "dev")).expect("subject");
        assert_eq!(s.common_name.as_deref(), Some("alice"));
        assert_eq!(s.organizations, ["dev"]);
        let s = subject(&client_cert(&ca, "", "")).expect("subject");
        assert_eq!((s.common_name, s.organizations), (None, vec![]));
        assert!(subject(&CertificateDer::from(vec![1, 2, 3])).is_err());
    }
}
