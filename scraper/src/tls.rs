//! PEM loading and the rustls pieces shared by the kubelet client and the gRPC server.
//!
//! Every config is built with the ring provider passed explicitly ([`provider`]); nothing
//! relies on a process-wide default.

use std::path::{Path, PathBuf};

use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

/// A PEM file that cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum PemError {
    /// The file could not be read or decoded.
    #[error("{path}: {message}")]
    Read {
        /// The file.
        path: PathBuf,
        /// What went wrong.
        message: String,
    },
    /// The file holds no certificate (or no private key).
    #[error("{path}: no {what} found in PEM file")]
    Empty {
        /// The file.
        path: PathBuf,
        /// "certificate" or "private key".
        what: &'static str,
    },
}

pub use shardmetrics_plumbing::tls::provider;

/// Reads every certificate of a PEM file (a chain, or a CA bundle).
pub fn load_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, PemError> {
    let read_err = |e: rustls_pki_types::pem::Error| PemError::Read { path: path.to_owned(), message: e.to_string() };
    let certs = CertificateDer::pem_file_iter(path).map_err(read_err)?.collect::<Result<Vec<_>, _>>().map_err(read_err)?;
    if certs.is_empty() {
        return Err(PemError::Empty { path: path.to_owned(), what: "certificate" });
    }
    Ok(certs)
}

/// Reads the first private key (PKCS#8, PKCS#1 or SEC1) of a PEM file.
pub fn load_key(path: &Path) -> Result<PrivateKeyDer<'static>, PemError> {
    PrivateKeyDer::from_pem_file(path).map_err(|e| match e {
        rustls_pki_types::pem::Error::NoItemsFound => PemError::Empty { path: path.to_owned(), what: "private key" },
        e => PemError::Read { path: path.to_owned(), message: e.to_string() },
    })
}
