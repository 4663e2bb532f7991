//! Front-proxy ("requestheader") authentication: kube-apiserver's aggregation layer presents a
//! client certificate signed by the requestheader CA and names the real user in `X-Remote-*`
//! headers. The headers are believed only when that certificate verifies.

use std::collections::BTreeMap;

use http::{HeaderMap, HeaderName};
use rustls_pki_types::CertificateDer;

use super::Attempt;
use super::user::UserInfo;
use super::x509::{CaBundle, subject};

/// Front-proxy settings, from flags or from the `extension-apiserver-authentication` ConfigMap.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RequestHeaderSettings {
    /// CNs a front-proxy certificate may have; empty means any certificate from the CA.
    pub allowed_names: Vec<String>,
    /// Headers naming the user; the first one present wins (`X-Remote-User`).
    pub username_headers: Vec<String>,
    /// Headers naming the user's uid; the first one present wins (none by default).
    pub uid_headers: Vec<String>,
    /// Headers naming groups; every value of every one counts (`X-Remote-Group`).
    pub group_headers: Vec<String>,
    /// Header prefixes of extra attributes (`X-Remote-Extra-`); the rest of the name is the key.
    pub extra_headers_prefixes: Vec<String>,
}

impl Default for RequestHeaderSettings {
    /// kube-apiserver's defaults.
    fn default() -> Self {
        Self {
            allowed_names: Vec::new(),
            username_headers: vec!["X-Remote-User".to_owned()],
            uid_headers: Vec::new(),
            group_headers: vec!["X-Remote-Group".to_owned()],
            extra_headers_prefixes: vec!["X-Remote-Extra-".to_owned()],
        }
    }
}

/// A requestheader CA with its settings, ready to authenticate requests.
#[derive(Debug)]
pub(crate) struct RequestHeaderAuthenticator {
    /// Verifies the front-proxy client certificate.
    pub(crate) ca: CaBundle,
    /// The settings as given (to tell whether a re-read changed them).
    pub(crate) settings: RequestHeaderSettings,
    /// Parsed `username_headers` (invalid names dropped).
    username: Vec<HeaderName>,
    /// Parsed `uid_headers`.
    uid: Vec<HeaderName>,
    /// Parsed `group_headers`.
    groups: Vec<HeaderName>,
    /// `extra_headers_prefixes`, lowercased (header names arrive lowercased).
    extra_prefixes: Vec<String>,
}

impl RequestHeaderAuthenticator {
    /// Builds the authenticator; header names that are not valid HTTP names are dropped with a
    /// warning (they could never match a request).
    pub(crate) fn new(ca: CaBundle, settings: RequestHeaderSettings) -> Self {
        let parse = |names: &[String]| -> Vec<HeaderName> {
            names
                .iter()
                .filter_map(|n| match HeaderName::try_from(n.as_str()) {
                    Ok(name) => Some(name),
                    Err(_) => {
                        tracing::warn!(header = %n, "ignoring invalid requestheader header name");
                        None
                    }
                })
                .collect()
        };
        Self {
            ca,
            username: parse(&settings.username_headers),
            uid: parse(&settings.uid_headers),
            groups: parse(&settings.group_headers),
            extra_prefixes: settings
                .extra_headers_prefixes
                .iter()
                .map(|p| p.to_ascii_lowercase())
                .collect(),
            settings,
        }
    }

    /// kube-apiserver's order: verify the certificate chain, then its CN against the allowed
    /// names, then read the user from the headers (no username header: not this path's request).
    pub(crate) fn authenticate(
        &self,
        chain: Option<&[CertificateDer<'static>]>,
        headers: &HeaderMap,
        now_ms: i64,
    ) -> Attempt {
        let Some(chain) = chain.filter(|c| !c.is_empty()) else {
            return Attempt::Skipped;
        };
        if let Err(e) = self.ca.verify(chain, now_ms) {
            return Attempt::Rejected(format!(
                "front-proxy certificate not verified by the requestheader CA: {e}"
            ));
        }
        if !self.settings.allowed_names.is_empty() {
            let cn = match subject(&chain[0]) {
                Ok(s) => s.common_name.unwrap_or_default(),
                Err(e) => return Attempt::Rejected(e),
            };
            if !self.settings.allowed_names.contains(&cn) {
                return Attempt::Rejected(format!(
                    "front-proxy certificate CN {cn:?} is not in the allowed names"
                ));
            }
        }
        let Some(name) = first_value(headers, &self.username) else {
            return Attempt::Skipped;
        };
        let uid = first_value(headers, &self.uid).unwrap_or_default();
        let groups = self
            .groups
            .iter()
            .flat_map(|h| headers.get_all(h))
            .filter_map(|v| std::str::from_utf8(v.as_bytes()).ok())
            .map(str::to_owned)
            .collect();
        let mut extra: BTreeMap<String, Vec<String>> = BTreeMap::new();
        for (header, value) in headers {
            let Some(rest) = self
                .extra_prefixes
                .iter()
                .find_map(|p| header.as_str().strip_prefix(p.as_str()))
            else {
                continue;
            };
            let Ok(value) = std::str::from_utf8(value.as_bytes()) else {
                continue;
            };
            let key = unescape_extra_key(rest);
            if !key.is_empty() {
                extra.entry(key).or_default().push(value.to_owned());
            }
        }
        Attempt::Authenticated(UserInfo {
            name,
            uid,
            groups,
            extra,
        })
    }
}

/// The first non-empty value among `names`, in order.
fn first_value(headers: &HeaderMap, names: &[HeaderName]) -> Option<String> {
    names
        .iter()
        .filter_map(|h| headers.get(h))
        .filter_map(|v| std::str::from_utf8(v.as_bytes()).ok())
        .find(|v| !v.is_empty())
        .map(str::to_owned)
}

/// Percent-decodes an extra key (Go's `url.PathUnescape`), keeping the raw key if malformed,
/// as kube-apiserver does. Header names arrive lowercased, so the key is lowercase.
fn unescape_extra_key(raw: &str) -> String {
    let bytes = raw.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = bytes
                .get(i + 1..i + 3)
                .and_then(|h| std::str::from_utf8(h).ok());
            match hex.and_then(|h| u8::from_str_radix(h, 16).ok()) {
                Some(b) => {
                    out.push(b);
                    i += 3;
                }
                None => return raw.to_owned(),
            }
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).unwrap_or_else(|_| raw.to_owned())
}

#[cfg(test)]
mod tests {
    use super::super::x509::testing::{Ca, client_cert, new_ca};
    use super::*;

    fn now_ms() -> i64 {
        shardmetrics_plumbing::clock::system().now_ms()
    }

    fn authenticator(ca: &Ca, allowed: &[&str]) -> RequestHeaderAuthenticator {
        let settings = RequestHeaderSettings {
            allowed_names: allowed.iter().map(|s| (*s).to_owned()).collect(),
            uid_headers: vec!["X-Remote-Uid".into()],
            ..RequestHeaderSettings::default()
        };
        RequestHeaderAuthenticator::new(
            CaBundle::from_pem(ca.cert_pem().as_bytes(), "test").expect("ca"),
            settings,
        )
    }

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (k, v) in pairs {
            map.append(
                HeaderName::try_from(*k).expect("name"),
                v.parse().expect("value"),
            );
        }
        map
    }

    #[test]
    fn a_verified_front_proxy_certificate_yields_the_user_groups_uid_and_extras() {
        let ca = new_ca("front-proxy-ca");
        let auth = authenticator(&ca, &["front-proxy-client"]);
        let chain = [client_cert(&ca, "front-proxy-client", "")];
        let h = headers(&[
            ("X-Remote-User", "alice"),
            ("X-Remote-Uid", "u-1"),
            ("X-Remote-Group", "dev"),
            ("X-Remote-Group", "system:authenticated"),
            ("X-Remote-Extra-Scopes", "a"),
            ("X-Remote-Extra-Scopes", "b"),
            ("X-Remote-Extra-Acme.com%2Fproject", "p1"),
        ]);
        let Attempt::Authenticated(user) = auth.authenticate(Some(&chain), &h, now_ms()) else {
            panic!("expected authenticated")
        };
        assert_eq!(user.name, "alice");
        assert_eq!(user.uid, "u-1");
        assert_eq!(user.groups, ["dev", "system:authenticated"]);
        assert_eq!(user.extra["scopes"], ["a", "b"]);
        assert_eq!(user.extra["acme.com/project"], ["p1"]);
    }

    #[test]
    fn headers_without_a_certificate_are_ignored() {
        let ca = new_ca("front-proxy-ca");
        let auth = authenticator(&ca, &[]);
        assert_eq!(
            auth.authenticate(None, &headers(&[("X-Remote-User", "admin")]), now_ms()),
            Attempt::Skipped
        );
    }

    #[test]
    fn a_certificate_from_another_ca_is_rejected_even_with_headers() {
        let ca = new_ca("front-proxy-ca");
        let other = new_ca("evil-ca");
        let auth = authenticator(&ca, &[]);
        let chain = [client_cert(&other, "front-proxy-client", "")];
        let attempt = auth.authenticate(
            Some(&chain),
            &headers(&[("X-Remote-User", "admin")]),
            now_ms(),
        );
        assert!(matches!(attempt, Attempt::Rejected(_)), "{attempt:?}");
    }

    #[test]
    fn a_common_name_outside_the_allowed_names_is_rejected() {
        let ca = new_ca("front-proxy-ca");
        let auth = authenticator(&ca, &["front-proxy-client"]);
        let chain = [client_cert(&ca, "someone-else", "")];
        let attempt = auth.authenticate(
            Some(&chain),
            &headers(&[("X-Remote-User", "admin")]),
            now_ms(),
        );
        assert!(
            matches!(attempt, Attempt::Rejected(ref m) if m.contains("someone-else")),
            "{attempt:?}"
        );
    }

    #[test]
    fn a_verified_certificate_without_a_username_header_is_not_this_paths_request() {
        let ca = new_ca("front-proxy-ca");
        let auth = authenticator(&ca, &[]);
        let chain = [client_cert(&ca, "front-proxy-client", "")];
        assert_eq!(
            auth.authenticate(Some(&chain), &headers(&[("X-Remote-User", "")]), now_ms()),
            Attempt::Skipped
        );
    }

    #[test]
    fn extra_keys_are_unescaped_and_malformed_escapes_are_kept_raw() {
        assert_eq!(unescape_extra_key("example.org%2fkey"), "example.org/key");
        assert_eq!(unescape_extra_key("bad%zzkey"), "bad%zzkey");
        assert_eq!(unescape_extra_key("trailing%2"), "trailing%2");
    }
}
