//! Writing kubeconfig files (for kubectl and the scraper/frontend `--kubeconfig` flags).
//!
//! Strings are written JSON-quoted, which YAML reads as double-quoted scalars, so no value can
//! break the document.

use std::path::Path;

use base64::Engine as _;

use shardmetrics_plumbing::pki::CertKey;

/// How a context's user proves who it is.
#[derive(Debug, Clone)]
pub enum Credential {
    /// A bearer token.
    Token(String),
    /// A client certificate and key.
    ClientCert(CertKey),
}

/// One context of a kubeconfig.
#[derive(Debug, Clone)]
pub struct Context {
    /// Context name (`demo-admin`); the user entry gets the same name.
    pub name: String,
    /// The credential.
    pub credential: Credential,
    /// Default namespace, if any.
    pub namespace: Option<String>,
}

fn q(s: &str) -> String {
    serde_json::Value::String(s.to_owned()).to_string()
}

fn b64(s: &str) -> String {
    base64::engine::general_purpose::STANDARD.encode(s)
}

/// Renders a kubeconfig with one cluster (`server_url`, trusting `ca_pem`) and `contexts`.
pub fn render(cluster_name: &str, server_url: &str, ca_pem: &str, contexts: &[Context], current: &str) -> String {
    let mut out = String::from("apiVersion: v1\nkind: Config\nclusters:\n");
    out += &format!(
        "- name: {}\n  cluster:\n    server: {}\n    certificate-authority-data: {}\n",
        q(cluster_name),
        q(server_url),
        q(&b64(ca_pem))
    );
    out += "users:\n";
    for c in contexts {
        out += &format!("- name: {}\n  user:\n", q(&c.name));
        match &c.credential {
            Credential::Token(t) => out += &format!("    token: {}\n", q(t)),
            Credential::ClientCert(ck) => {
                out += &format!(
                    "    client-certificate-data: {}\n    client-key-data: {}\n",
                    q(&b64(&ck.cert_pem)),
                    q(&b64(&ck.key_pem))
                );
            }
        }
    }
    out += "contexts:\n";
    for c in contexts {
        out += &format!("- name: {}\n  context:\n    cluster: {}\n    user: {}\n", q(&c.name), q(cluster_name), q(&c.name));
        if let Some(ns) = &c.namespace {
            out += &format!("    namespace: {}\n", q(ns));
        }
    }
    out += &format!("current-context: {}\n", q(current));
    out
}

/// Writes a rendered kubeconfig to `path` (mode 0600 on Unix: it holds credentials).
pub fn write(path: &Path, text: &str) -> std::io::Result<()> {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir)?;
    }
    std::fs::write(path, text)?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_rendered_kubeconfig_parses_with_kube_rs() {
        let ca = shardmetrics_plumbing::pki::Ca::new("ca").unwrap();
        let cert = ca.client_cert("carol", &["devs"]).unwrap();
        let text = render(
            "sim",
            "https://127.0.0.1:6443",
            ca.cert_pem(),
            &[
                Context { name: "admin".into(), credential: Credential::Token("t\"oken".into()), namespace: None },
                Context { name: "carol".into(), credential: Credential::ClientCert(cert), namespace: Some("team".into()) },
            ],
            "admin",
        );
        let parsed = kube::config::Kubeconfig::from_yaml(&text).unwrap();
        assert_eq!(parsed.current_context.as_deref(), Some("admin"));
        assert_eq!(parsed.contexts.len(), 2);
        assert_eq!(parsed.contexts[1].context.as_ref().unwrap().namespace.as_deref(), Some("team"));
        assert!(parsed.auth_infos[1].auth_info.as_ref().unwrap().client_certificate_data.is_some());
    }
}
