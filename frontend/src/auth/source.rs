//! Where the CA bundles and front-proxy settings come from: the `--requestheader-*` and
//! `--client-ca-file` flags, else the `kube-system/extension-apiserver-authentication` ConfigMap
//! that kube-apiserver publishes (as every delegated-auth aggregated API server reads it).

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use k8s_openapi::api::core::v1::ConfigMap;
use kube::Api;

use super::error::AuthSetupError;
use super::requestheader::RequestHeaderSettings;

/// Namespace of the authentication ConfigMap.
pub const AUTHENTICATION_CONFIGMAP_NAMESPACE: &str = "kube-system";
/// Name of the authentication ConfigMap.
pub const AUTHENTICATION_CONFIGMAP_NAME: &str = "extension-apiserver-authentication";

/// The configured origins of trust material.
pub(crate) struct Sources {
    /// `--requestheader-client-ca-file`; when set, the requestheader settings come from flags.
    pub(crate) requestheader_ca_file: Option<PathBuf>,
    /// Requestheader settings from flags (used only with `requestheader_ca_file`).
    pub(crate) requestheader_settings: RequestHeaderSettings,
    /// `--client-ca-file`; when unset, the ConfigMap's `client-ca-file` is used.
    pub(crate) client_ca_file: Option<PathBuf>,
    /// The ConfigMap API, when an API server is configured and some flag is unset.
    pub(crate) configmap: Option<Api<ConfigMap>>,
    /// Upper bound on one ConfigMap read.
    pub(crate) timeout: Duration,
}

/// What the sources hold right now.
#[derive(Debug, Default, PartialEq, Eq)]
pub(crate) struct Loaded {
    /// Requestheader CA PEM and settings; `None` disables front-proxy authentication.
    pub(crate) requestheader: Option<(Vec<u8>, RequestHeaderSettings)>,
    /// Client CA PEM; `None` disables x509 client-certificate users.
    pub(crate) client_ca: Option<(Vec<u8>, String)>,
}

impl Sources {
    /// Whether the ConfigMap supplies anything (some flag unset).
    pub(crate) fn wants_configmap(&self) -> bool {
        self.requestheader_ca_file.is_none() || self.client_ca_file.is_none()
    }

    /// Reads every source (the ConfigMap only if `read_configmap`). A missing ConfigMap means
    /// "nothing from it", as in kube-apiserver's delegated authentication; an unreadable one is an
    /// error.
    pub(crate) async fn load(&self, read_configmap: bool) -> Result<Loaded, AuthSetupError> {
        let from_configmap = match (&self.configmap, self.wants_configmap() && read_configmap) {
            (Some(api), true) => {
                let read =
                    tokio::time::timeout(self.timeout, api.get_opt(AUTHENTICATION_CONFIGMAP_NAME))
                        .await;
                match read {
                    Ok(Ok(Some(cm))) => parse_configmap(&cm.data.unwrap_or_default())?,
                    Ok(Ok(None)) => Loaded::default(),
                    Ok(Err(e)) => return Err(AuthSetupError::ConfigMap(e.to_string())),
                    Err(_) => {
                        return Err(AuthSetupError::ConfigMap(format!(
                            "read timed out after {:?}",
                            self.timeout
                        )));
                    }
                }
            }
            _ => Loaded::default(),
        };
        let requestheader = match &self.requestheader_ca_file {
            Some(path) => Some((read_file(path).await?, self.requestheader_settings.clone())),
            None => from_configmap.requestheader,
        };
        let client_ca = match &self.client_ca_file {
            Some(path) => Some((read_file(path).await?, path.display().to_string())),
            None => from_configmap.client_ca,
        };
        Ok(Loaded {
            requestheader,
            client_ca,
        })
    }
}

/// Reads a whole file.
async fn read_file(path: &PathBuf) -> Result<Vec<u8>, AuthSetupError> {
    tokio::fs::read(path)
        .await
        .map_err(|source| AuthSetupError::Read {
            path: path.clone(),
            source,
        })
}

/// Reads the ConfigMap's keys: `client-ca-file`, `requestheader-client-ca-file` and the
/// `requestheader-*` JSON string arrays. No `requestheader-client-ca-file` key: no front-proxy.
pub(crate) fn parse_configmap(data: &BTreeMap<String, String>) -> Result<Loaded, AuthSetupError> {
    let list = |key: &str| -> Result<Vec<String>, AuthSetupError> {
        match data.get(key).map(|v| v.trim()).filter(|v| !v.is_empty()) {
            None => Ok(Vec::new()),
            Some(raw) => serde_json::from_str(raw).map_err(|e| {
                AuthSetupError::ConfigMap(format!("key {key} is not a JSON array of strings: {e}"))
            }),
        }
    };
    let pem = |key: &str| {
        data.get(key)
            .filter(|v| !v.trim().is_empty())
            .map(|v| v.as_bytes().to_vec())
    };
    let requestheader = match pem("requestheader-client-ca-file") {
        Some(ca) => Some((
            ca,
            RequestHeaderSettings {
                allowed_names: list("requestheader-allowed-names")?,
                username_headers: list("requestheader-username-headers")?,
                uid_headers: list("requestheader-uid-headers")?,
                group_headers: list("requestheader-group-headers")?,
                extra_headers_prefixes: list("requestheader-extra-headers-prefix")?,
            },
        )),
        None => None,
    };
    let client_ca = pem("client-ca-file").map(|ca| (ca, "ConfigMap key client-ca-file".to_owned()));
    Ok(Loaded {
        requestheader,
        client_ca,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn data(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }

    #[test]
    fn the_configmap_gives_the_requestheader_ca_and_its_json_settings() {
        let loaded = parse_configmap(&data(&[
            ("client-ca-file", "CLIENT PEM"),
            ("requestheader-client-ca-file", "FRONT PEM"),
            ("requestheader-allowed-names", r#"["front-proxy-client"]"#),
            ("requestheader-username-headers", r#"["X-Remote-User"]"#),
            ("requestheader-group-headers", r#"["X-Remote-Group"]"#),
            (
                "requestheader-extra-headers-prefix",
                r#"["X-Remote-Extra-"]"#,
            ),
        ]))
        .expect("parsed");
        let (ca, settings) = loaded.requestheader.expect("requestheader");
        assert_eq!(ca, b"FRONT PEM");
        assert_eq!(settings.allowed_names, ["front-proxy-client"]);
        assert_eq!(settings.username_headers, ["X-Remote-User"]);
        assert_eq!(settings.group_headers, ["X-Remote-Group"]);
        assert_eq!(settings.extra_headers_prefixes, ["X-Remote-Extra-"]);
        assert!(settings.uid_headers.is_empty());
        assert_eq!(loaded.client_ca.map(|c| c.0), Some(b"CLIENT PEM".to_vec()));
    }

    #[test]
    fn without_a_requestheader_ca_key_there_is_no_front_proxy() {
        let loaded =
            parse_configmap(&data(&[("requestheader-allowed-names", r#"["x"]"#)])).expect("parsed");
        assert_eq!(loaded, Loaded::default());
    }

    #[test]
    fn a_malformed_json_list_is_an_error_naming_the_key() {
        let err = parse_configmap(&data(&[
            ("requestheader-client-ca-file", "PEM"),
            ("requestheader-allowed-names", "front-proxy-client"),
        ]))
        .unwrap_err();
        assert!(
            err.to_string().contains("requestheader-allowed-names"),
            "{err}"
        );
    }
}
