//! Errors: per request ([`AuthError`], one HTTP status each) and at setup ([`AuthSetupError`],
//! [`TlsError`]).

use std::path::PathBuf;

/// Why a request was not let through; each variant maps to exactly one HTTP status, as
/// k8s.io/apiserver's filters answer it.
///
/// The text is written for logs. Send [`AuthError::client_message`] to the client: it never
/// reveals why a credential was rejected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    /// No credential authenticated the request, or a bearer token could not be reviewed
    /// (TokenReview failed or timed out: upstream's union authenticator fails the request on
    /// the error, never falls back to anonymous) (HTTP 401).
    #[error("unauthorized: {0}")]
    Unauthorized(String),
    /// Authenticated, but the authorizer did not allow it (HTTP 403).
    #[error("{}", .0.message)]
    Forbidden(Box<Forbidden>),
    /// The authorizer could not decide: the SubjectAccessReview failed, timed out, or answered
    /// both allowed and denied (HTTP 500, a plain-text body as `responsewriters.InternalError`
    /// writes it). Never treated as an allow, never cached.
    #[error("{0}")]
    Internal(String),
}

/// A 403: kube-apiserver's message and the Status details (`NewForbidden`'s).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Forbidden {
    /// The "... is forbidden: User ... cannot ..." message, safe to show.
    pub message: String,
    /// The API group of the resource asked for (empty for non-resource requests).
    pub group: String,
    /// The resource asked for (empty for non-resource requests).
    pub resource: String,
    /// The object's name, when the request names one.
    pub name: Option<String>,
}

impl AuthError {
    /// The HTTP status to answer with: 401, 403 or 500.
    pub fn status_code(&self) -> http::StatusCode {
        match self {
            Self::Unauthorized(_) => http::StatusCode::UNAUTHORIZED,
            Self::Forbidden(_) => http::StatusCode::FORBIDDEN,
            Self::Internal(_) => http::StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    /// The Kubernetes `Status.reason` for this error (`Unauthorized`, `Forbidden`,
    /// `InternalError`).
    pub fn reason(&self) -> &'static str {
        match self {
            Self::Unauthorized(_) => "Unauthorized",
            Self::Forbidden(_) => "Forbidden",
            Self::Internal(_) => "InternalError",
        }
    }

    /// The message to send to the client. Like kube-apiserver, a 401 says only
    /// "Unauthorized"; a 403 carries the forbidden message; a 500 the authorizer's error.
    pub fn client_message(&self) -> String {
        match self {
            Self::Unauthorized(_) => "Unauthorized".to_owned(),
            Self::Forbidden(f) => f.message.clone(),
            Self::Internal(e) => e.clone(),
        }
    }
}

/// Why [`crate::auth::Auth`] could not be built or refreshed.
#[derive(Debug, thiserror::Error)]
pub enum AuthSetupError {
    /// A CA file could not be read.
    #[error("reading {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// A CA bundle holds no usable certificate.
    #[error("{what}: {reason}")]
    InvalidCa {
        /// Which bundle (file path or ConfigMap key).
        what: String,
        /// What is wrong with it.
        reason: String,
    },
    /// The `kube-system/extension-apiserver-authentication` ConfigMap could not be read or parsed.
    #[error("ConfigMap kube-system/extension-apiserver-authentication: {0}")]
    ConfigMap(String),
    /// The self-metrics could not be registered (usually: registered twice in one registry).
    #[error("registering auth metrics: {0}")]
    Metrics(#[from] prometheus::Error),
}

/// Why the secure port's TLS configuration could not be built.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// A certificate or key file could not be read.
    #[error("reading {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The serving certificate file holds no usable certificate.
    #[error("serving certificate {path}: {reason}")]
    InvalidCert {
        /// The file.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },
    /// The private key file holds no usable key, or the key does not match the certificate.
    #[error("private key {path}: {reason}")]
    InvalidKey {
        /// The file.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },
    /// Only one of `--tls-cert-file` / `--tls-private-key-file` was given.
    #[error("--tls-cert-file and --tls-private-key-file must be given together")]
    HalfPair,
    /// The self-signed certificate could not be generated.
    #[error("generating a self-signed serving certificate: {0}")]
    SelfSigned(String),
    /// A `--tls-min-version` value is not supported (TLS 1.2 is the minimum).
    #[error("unsupported TLS version {0:?}: use VersionTLS12 or VersionTLS13")]
    UnsupportedVersion(String),
    /// Some `--tls-cipher-suites` names are unknown or not supported (insecure suites are not).
    #[error("unsupported TLS cipher suites: {}", .0.join(", "))]
    UnsupportedCipherSuites(Vec<String>),
    /// The cipher suites left no suite for an enabled protocol version.
    #[error("--tls-cipher-suites leaves no cipher suite usable with {0}")]
    NoCipherSuite(&'static str),
    /// rustls refused the configuration.
    #[error("TLS configuration: {0}")]
    Rustls(#[from] rustls::Error),
    /// Certificate reloading needs a tokio runtime; none was running.
    #[error("server_tls_config must be called inside a tokio runtime (certificate reload task)")]
    NoRuntime,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_error_maps_to_its_status_and_a_401_reveals_nothing() {
        let unauthorized = AuthError::Unauthorized("token expired for alice".into());
        assert_eq!(unauthorized.status_code(), 401);
        assert_eq!(unauthorized.reason(), "Unauthorized");
        assert_eq!(unauthorized.client_message(), "Unauthorized");
        let forbidden = AuthError::Forbidden(Box::new(Forbidden {
            message: "nodes.metrics.k8s.io is forbidden".into(),
            group: "metrics.k8s.io".into(),
            resource: "nodes".into(),
            name: None,
        }));
        assert_eq!(forbidden.status_code(), 403);
        assert_eq!(forbidden.client_message(), "nodes.metrics.k8s.io is forbidden");
        let internal = AuthError::Internal("connection refused".into());
        assert_eq!((internal.status_code().as_u16(), internal.reason()), (500, "InternalError"));
    }
}
