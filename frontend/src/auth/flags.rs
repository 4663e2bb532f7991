//! The command-line flags of authentication, authorization and the secure port's TLS, named as
//! in metrics-server / kube-apiserver, each also read from `SHARDMETRICS_<FLAG>` and shown under
//! its own `--help` heading. The frontend's CLI flattens [`AuthArgs`] and calls
//! [`AuthArgs::to_configs`], which checks them against each other and the file system and reports
//! every problem at once (a value of the wrong type is refused by clap while parsing).

use std::path::{Path, PathBuf};
use shardmetrics_plumbing::duration::GoDuration;

use clap::ArgAction;

use super::AuthConfig;
use super::requestheader::RequestHeaderSettings;
use super::tls::{TlsConfig, TlsMinVersion, cipher_suites};

/// `--help` heading of the secure port's TLS flags.
pub const HEADING_TLS: &str = "Secure port TLS";
/// `--help` heading of the authentication flags.
pub const HEADING_AUTHENTICATION: &str = "Authentication";
/// `--help` heading of the authorization flags.
pub const HEADING_AUTHORIZATION: &str = "Authorization";

/// Authentication, authorization and TLS flags of the frontend's secure port.
#[derive(Debug, Clone, clap::Args)]
pub struct AuthArgs {
    /// PEM serving certificate (chain) of the secure port; self-signed if absent. Re-read when it changes.
    #[arg(long, env = "SHARDMETRICS_TLS_CERT_FILE", value_name = "PATH", help_heading = HEADING_TLS)]
    pub tls_cert_file: Option<PathBuf>,
    /// PEM private key of --tls-cert-file.
    #[arg(long, env = "SHARDMETRICS_TLS_PRIVATE_KEY_FILE", value_name = "PATH", help_heading = HEADING_TLS)]
    pub tls_private_key_file: Option<PathBuf>,
    /// Minimum TLS version: VersionTLS12 or VersionTLS13.
    #[arg(
        long,
        env = "SHARDMETRICS_TLS_MIN_VERSION",
        default_value = "VersionTLS12",
        help_heading = HEADING_TLS
    )]
    pub tls_min_version: TlsMinVersion,
    /// Comma-separated IANA cipher suite names (e.g. TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256); default: all
    /// AEAD suites.
    #[arg(long, env = "SHARDMETRICS_TLS_CIPHER_SUITES", value_delimiter = ',', help_heading = HEADING_TLS)]
    pub tls_cipher_suites: Vec<String>,
    /// CA bundle verifying front-proxy client certificates; default: the
    /// kube-system/extension-apiserver-authentication ConfigMap (which then also gives the other
    /// --requestheader-* settings).
    #[arg(
        long,
        env = "SHARDMETRICS_REQUESTHEADER_CLIENT_CA_FILE",
        value_name = "PATH",
        help_heading = HEADING_AUTHENTICATION
    )]
    pub requestheader_client_ca_file: Option<PathBuf>,
    /// Common names allowed for front-proxy certificates; empty: any certificate from the CA.
    #[arg(
        long,
        env = "SHARDMETRICS_REQUESTHEADER_ALLOWED_NAMES",
        value_delimiter = ',',
        help_heading = HEADING_AUTHENTICATION
    )]
    pub requestheader_allowed_names: Vec<String>,
    /// Headers naming the user of a front-proxied request (first present wins).
    #[arg(
        long,
        env = "SHARDMETRICS_REQUESTHEADER_USERNAME_HEADERS",
        value_delimiter = ',',
        default_value = "X-Remote-User",
        help_heading = HEADING_AUTHENTICATION
    )]
    pub requestheader_username_headers: Vec<String>,
    /// Headers naming the user's uid (first present wins).
    #[arg(
        long,
        env = "SHARDMETRICS_REQUESTHEADER_UID_HEADERS",
        value_delimiter = ',',
        help_heading = HEADING_AUTHENTICATION
    )]
    pub requestheader_uid_headers: Vec<String>,
    /// Headers naming the user's groups.
    #[arg(
        long,
        env = "SHARDMETRICS_REQUESTHEADER_GROUP_HEADERS",
        value_delimiter = ',',
        default_value = "X-Remote-Group",
        help_heading = HEADING_AUTHENTICATION
    )]
    pub requestheader_group_headers: Vec<String>,
    /// Header prefixes of the user's extra attributes.
    #[arg(
        long,
        env = "SHARDMETRICS_REQUESTHEADER_EXTRA_HEADERS_PREFIX",
        value_delimiter = ',',
        default_value = "X-Remote-Extra-",
        help_heading = HEADING_AUTHENTICATION
    )]
    pub requestheader_extra_headers_prefix: Vec<String>,
    /// CA bundle verifying x509 client-certificate users (CN = user, O = groups); default: the
    /// ConfigMap's client-ca-file, if any.
    #[arg(long, env = "SHARDMETRICS_CLIENT_CA_FILE", value_name = "PATH", help_heading = HEADING_AUTHENTICATION)]
    pub client_ca_file: Option<PathBuf>,
    /// Serve requests without credentials as system:anonymous (still subject to authorization).
    #[arg(long, env = "SHARDMETRICS_ANONYMOUS_AUTH", default_value_t = false, num_args = 0..=1,
          default_missing_value = "true", action = ArgAction::Set,
          help_heading = HEADING_AUTHENTICATION)]
    pub anonymous_auth: bool,
    /// Start even if the authentication ConfigMap cannot be read (it is retried).
    #[arg(long, env = "SHARDMETRICS_AUTHENTICATION_TOLERATE_LOOKUP_FAILURE", default_value_t = false,
          num_args = 0..=1, default_missing_value = "true", action = ArgAction::Set,
          help_heading = HEADING_AUTHENTICATION)]
    pub authentication_tolerate_lookup_failure: bool,
    /// Paths served without authentication or authorization; a trailing * matches a prefix.
    #[arg(
        long,
        env = "SHARDMETRICS_AUTHORIZATION_ALWAYS_ALLOW_PATHS",
        value_delimiter = ',',
        default_value = "/healthz,/readyz,/livez",
        help_heading = HEADING_AUTHORIZATION
    )]
    pub authorization_always_allow_paths: Vec<String>,
    /// How long an allowed SubjectAccessReview answer is reused (Go duration, e.g. 10s).
    #[arg(
        long,
        env = "SHARDMETRICS_AUTHORIZATION_WEBHOOK_CACHE_AUTHORIZED_TTL",
        default_value = "10s",
        help_heading = HEADING_AUTHORIZATION
    )]
    pub authorization_webhook_cache_authorized_ttl: GoDuration,
    /// How long a denied SubjectAccessReview answer is reused (Go duration, e.g. 10s).
    #[arg(
        long,
        env = "SHARDMETRICS_AUTHORIZATION_WEBHOOK_CACHE_UNAUTHORIZED_TTL",
        default_value = "10s",
        help_heading = HEADING_AUTHORIZATION
    )]
    pub authorization_webhook_cache_unauthorized_ttl: GoDuration,
}

impl AuthArgs {
    /// Validates the flags against each other and the file system and builds the configurations;
    /// on failure returns every problem, one line each.
    pub fn to_configs(&self) -> Result<(AuthConfig, TlsConfig), Vec<String>> {
        let mut problems = Vec::new();
        let tls_min_version = self.tls_min_version;
        let suites: Vec<String> = non_empty(&self.tls_cipher_suites);
        if let Err(e) = cipher_suites(&suites, tls_min_version) {
            problems.push(format!("--tls-cipher-suites: {e}"));
        }
        if self.tls_cert_file.is_some() != self.tls_private_key_file.is_some() {
            problems.push(
                "--tls-cert-file and --tls-private-key-file must be given together".to_owned(),
            );
        }
        for (flag, path) in [
            ("--tls-cert-file", &self.tls_cert_file),
            ("--tls-private-key-file", &self.tls_private_key_file),
            (
                "--requestheader-client-ca-file",
                &self.requestheader_client_ca_file,
            ),
            ("--client-ca-file", &self.client_ca_file),
        ] {
            if let Some(path) = path {
                check_file(flag, path, &mut problems);
            }
        }
        for (flag, names) in [
            (
                "--requestheader-username-headers",
                &self.requestheader_username_headers,
            ),
            (
                "--requestheader-uid-headers",
                &self.requestheader_uid_headers,
            ),
            (
                "--requestheader-group-headers",
                &self.requestheader_group_headers,
            ),
            (
                "--requestheader-extra-headers-prefix",
                &self.requestheader_extra_headers_prefix,
            ),
        ] {
            for name in non_empty(names) {
                if http::HeaderName::try_from(name.as_str()).is_err() {
                    problems.push(format!("{flag}: {name:?} is not a valid HTTP header name"));
                }
            }
        }
        let paths = non_empty(&self.authorization_always_allow_paths);
        for path in &paths {
            if !path.starts_with('/') {
                problems.push(format!(
                    "--authorization-always-allow-paths: {path:?} must start with /"
                ));
            }
        }
        let authorized_ttl = self.authorization_webhook_cache_authorized_ttl.0;
        let unauthorized_ttl = self.authorization_webhook_cache_unauthorized_ttl.0;
        if !problems.is_empty() {
            return Err(problems);
        }
        let auth = AuthConfig {
            requestheader_client_ca_file: self.requestheader_client_ca_file.clone(),
            requestheader: RequestHeaderSettings {
                allowed_names: non_empty(&self.requestheader_allowed_names),
                username_headers: non_empty(&self.requestheader_username_headers),
                uid_headers: non_empty(&self.requestheader_uid_headers),
                group_headers: non_empty(&self.requestheader_group_headers),
                extra_headers_prefixes: non_empty(&self.requestheader_extra_headers_prefix),
            },
            client_ca_file: self.client_ca_file.clone(),
            anonymous: self.anonymous_auth,
            always_allow_paths: paths,
            authorized_ttl,
            unauthorized_ttl,
            tolerate_lookup_failure: self.authentication_tolerate_lookup_failure,
            ..AuthConfig::default()
        };
        let tls = TlsConfig {
            cert_file: self.tls_cert_file.clone(),
            key_file: self.tls_private_key_file.clone(),
            min_version: tls_min_version,
            cipher_suites: suites,
            ..TlsConfig::default()
        };
        Ok((auth, tls))
    }
}

/// The trimmed, non-empty entries of a comma-separated flag.
fn non_empty(values: &[String]) -> Vec<String> {
    values
        .iter()
        .map(|v| v.trim())
        .filter(|v| !v.is_empty())
        .map(str::to_owned)
        .collect()
}

/// Records a problem unless `path` is a readable regular file.
fn check_file(flag: &str, path: &Path, problems: &mut Vec<String>) {
    match std::fs::metadata(path) {
        Ok(meta) if meta.is_file() => {}
        Ok(_) => problems.push(format!("{flag} {}: not a regular file", path.display())),
        Err(e) => problems.push(format!("{flag} {}: {e}", path.display())),
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use clap::Parser;

    use super::*;

    #[derive(Debug, Parser)]
    struct Cli {
        #[command(flatten)]
        auth: AuthArgs,
    }

    fn parse(args: &[&str]) -> AuthArgs {
        Cli::try_parse_from(std::iter::once("frontend").chain(args.iter().copied()))
            .expect("parse")
            .auth
    }

    #[test]
    fn defaults_mirror_kube_apiserver() {
        let (auth, tls) = parse(&[]).to_configs().expect("valid");
        assert!(!auth.anonymous);
        assert_eq!(auth.always_allow_paths, ["/healthz", "/readyz", "/livez"]);
        assert_eq!(auth.authorized_ttl, Duration::from_secs(10));
        assert_eq!(auth.requestheader, RequestHeaderSettings::default());
        assert_eq!(tls.min_version, TlsMinVersion::Tls12);
        assert!(tls.cert_file.is_none());
    }

    #[test]
    fn anonymous_auth_accepts_the_go_style_equals_false() {
        assert!(!parse(&["--anonymous-auth=false"]).anonymous_auth);
        assert!(parse(&["--anonymous-auth"]).anonymous_auth);
        assert!(parse(&["--anonymous-auth=true"]).anonymous_auth);
    }

    #[test]
    fn every_problem_is_reported_at_once() {
        let problems = parse(&[
            "--tls-cert-file=/nonexistent/tls.crt",
            "--tls-cipher-suites=TLS_RSA_WITH_RC4_128_SHA",
            "--requestheader-client-ca-file=/nonexistent/ca.crt",
            "--authorization-always-allow-paths=healthz",
            "--requestheader-username-headers=Bad Header",
        ])
        .to_configs()
        .unwrap_err();
        let text = problems.join("\n");
        for needle in [
            "--tls-cipher-suites",
            "--tls-cert-file and --tls-private-key-file",
            "/nonexistent/tls.crt",
            "/nonexistent/ca.crt",
            "healthz",
            "Bad Header",
        ] {
            assert!(text.contains(needle), "missing {needle:?} in:\n{text}");
        }
        // A TTL that is not a duration, or a TLS version that is not one, is refused by clap
        // itself, naming the flag.
        let err = Cli::try_parse_from(["frontend", "--authorization-webhook-cache-authorized-ttl=ten"]).unwrap_err().to_string();
        assert!(err.contains("--authorization-webhook-cache-authorized-ttl") && err.contains("ten"), "{err}");
        let err = Cli::try_parse_from(["frontend", "--tls-min-version=VersionTLS11"]).unwrap_err().to_string();
        assert!(err.contains("--tls-min-version") && err.contains("VersionTLS11"), "{err}");
    }

    #[test]
    fn lists_and_files_flow_into_the_configs() {
        let dir = tempfile::tempdir().expect("tempdir");
        let ca = dir.path().join("ca.crt");
        std::fs::write(&ca, "x").expect("write");
        let ca_arg = format!("--requestheader-client-ca-file={}", ca.display());
        let (auth, tls) = parse(&[
            &ca_arg,
            "--requestheader-allowed-names=front-proxy-client,aggregator",
            "--tls-min-version=VersionTLS13",
            "--authorization-webhook-cache-unauthorized-ttl=2s",
            "--anonymous-auth=true",
        ])
        .to_configs()
        .expect("valid");
        assert_eq!(
            auth.requestheader_client_ca_file.as_deref(),
            Some(ca.as_path())
        );
        assert_eq!(
            auth.requestheader.allowed_names,
            ["front-proxy-client", "aggregator"]
        );
        assert_eq!(auth.unauthorized_ttl, Duration::from_secs(2));
        assert!(auth.anonymous);
        assert_eq!(tls.min_version, TlsMinVersion::Tls13);
    }
}
