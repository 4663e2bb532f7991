//! Who is who and who may do what: bearer tokens mapped to users, and RBAC-like rules.
//!
//! One [`Policy`] drives the simulator's own authentication and authorization, its TokenReview
//! and SubjectAccessReview answers (which the frontends rely on), and `kubectl auth can-i`.
//!
//! Built in, as in a kubeadm cluster: `system:masters` may do everything; every authenticated
//! user (group `system:authenticated`) may read discovery and OpenAPI (`system:discovery`) and
//! create self reviews (`system:basic-user`).

use std::collections::{BTreeMap, HashMap};

use serde::Serialize;

/// The group every authenticated user is in.
pub const AUTHENTICATED: &str = "system:authenticated";
/// The group allowed everything.
pub const MASTERS: &str = "system:masters";

/// An authenticated user, as TokenReview reports it and as `X-Remote-*` headers carry it.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize)]
pub struct UserInfo {
    /// User name.
    pub username: String,
    /// Stable user id (may be empty).
    #[serde(skip_serializing_if = "String::is_empty")]
    pub uid: String,
    /// Groups, including `system:authenticated`.
    pub groups: Vec<String>,
    /// Extra attributes (`X-Remote-Extra-<key>`).
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub extra: BTreeMap<String, Vec<String>>,
}

impl UserInfo {
    /// A user with a name and groups (`system:authenticated` is added when authenticated).
    pub fn new(username: &str, groups: &[&str]) -> UserInfo {
        UserInfo { username: username.to_owned(), groups: groups.iter().map(|g| (*g).to_owned()).collect(), ..Default::default() }
    }

    fn authenticated(mut self) -> UserInfo {
        if !self.groups.iter().any(|g| g == AUTHENTICATED) {
            self.groups.push(AUTHENTICATED.to_owned());
        }
        self
    }
}

/// Who a rule applies to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Subject {
    /// A user by name.
    User(String),
    /// Every member of a group.
    Group(String),
}

/// One allow rule: any listed subject may use any listed verb on the listed resources (or
/// non-resource URLs). Empty `api_groups` and `namespaces` mean "any"; `"*"` is a wildcard in
/// verbs, groups and resources; a URL ending in `*` is a prefix.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Rule {
    /// Who.
    pub subjects: Vec<Subject>,
    /// Verbs (`get`, `list`, `watch`, `create`, `update`, `patch`, `delete`, `*`).
    pub verbs: Vec<String>,
    /// API groups (`""` is core); empty means any.
    pub api_groups: Vec<String>,
    /// Resources, `resource` or `resource/subresource`, or `*`.
    pub resources: Vec<String>,
    /// Namespaces; empty means all namespaces and cluster-scoped objects.
    pub namespaces: Vec<String>,
    /// Non-resource URLs (`/healthz`, `/apis/*`).
    pub non_resource_urls: Vec<String>,
}

fn strings(v: &[&str]) -> Vec<String> {
    v.iter().map(|s| (*s).to_owned()).collect()
}

impl Rule {
    /// A rule for one user.
    pub fn user(name: &str) -> Rule {
        Rule { subjects: vec![Subject::User(name.to_owned())], ..Default::default() }
    }

    /// A rule for one group.
    pub fn group(name: &str) -> Rule {
        Rule { subjects: vec![Subject::Group(name.to_owned())], ..Default::default() }
    }

    /// Sets the verbs.
    pub fn verbs(mut self, verbs: &[&str]) -> Rule {
        self.verbs = strings(verbs);
        self
    }

    /// Sets the API groups.
    pub fn api_groups(mut self, groups: &[&str]) -> Rule {
        self.api_groups = strings(groups);
        self
    }

    /// Sets the resources.
    pub fn resources(mut self, resources: &[&str]) -> Rule {
        self.resources = strings(resources);
        self
    }

    /// Restricts to namespaces.
    pub fn namespaces(mut self, namespaces: &[&str]) -> Rule {
        self.namespaces = strings(namespaces);
        self
    }

    /// Sets the non-resource URLs.
    pub fn urls(mut self, urls: &[&str]) -> Rule {
        self.non_resource_urls = strings(urls);
        self
    }

    fn applies_to(&self, user: &UserInfo) -> bool {
        self.subjects.iter().any(|s| match s {
            Subject::User(u) => *u == user.username,
            Subject::Group(g) => user.groups.contains(g),
        })
    }

    fn allows(&self, attrs: &Attributes) -> bool {
        let verb_ok = |verb: &str| self.verbs.iter().any(|v| v == "*" || v == verb);
        match attrs {
            Attributes::Resource { verb, api_group, resource, subresource, namespace, .. } => {
                let full = if subresource.is_empty() { resource.clone() } else { format!("{resource}/{subresource}") };
                verb_ok(verb)
                    && (self.api_groups.is_empty() || self.api_groups.iter().any(|g| g == "*" || g == api_group))
                    && self.resources.iter().any(|r| r == "*" || *r == full)
                    && (self.namespaces.is_empty() || (!namespace.is_empty() && self.namespaces.contains(namespace)))
            }
            Attributes::NonResource { verb, path } => {
                verb_ok(verb)
                    && self.non_resource_urls.iter().any(|u| match u.strip_suffix('*') {
                        Some(prefix) => path.starts_with(prefix),
                        None => u == path,
                    })
            }
        }
    }
}

/// What a request wants to do, as SubjectAccessReview describes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Attributes {
    /// A request on an API resource.
    Resource {
        /// Verb (`get`, `list`, `watch`, `create`, ...).
        verb: String,
        /// API group, `""` for core.
        api_group: String,
        /// Plural resource.
        resource: String,
        /// Subresource (`status`), or empty.
        subresource: String,
        /// Namespace, or empty for cluster-scoped and all-namespace requests.
        namespace: String,
        /// Object name, or empty.
        name: String,
    },
    /// A request on a non-resource path (discovery, health).
    NonResource {
        /// Lower-case HTTP verb (`get`, `post`, ...).
        verb: String,
        /// The URL path.
        path: String,
    },
}

impl Attributes {
    /// A resource request.
    pub fn resource(verb: &str, api_group: &str, resource: &str, subresource: &str, namespace: &str, name: &str) -> Attributes {
        Attributes::Resource {
            verb: verb.to_owned(),
            api_group: api_group.to_owned(),
            resource: resource.to_owned(),
            subresource: subresource.to_owned(),
            namespace: namespace.to_owned(),
            name: name.to_owned(),
        }
    }

    /// A non-resource request.
    pub fn non_resource(verb: &str, path: &str) -> Attributes {
        Attributes::NonResource { verb: verb.to_owned(), path: path.to_owned() }
    }

    /// The message of a 403, worded like kube-apiserver's.
    pub fn forbidden_message(&self, user: &UserInfo) -> String {
        match self {
            Attributes::Resource { verb, api_group, resource, subresource, namespace, name } => {
                let what = if name.is_empty() { String::new() } else { format!("{resource} \"{name}\" is forbidden: ") };
                let what = if what.is_empty() { format!("{resource} is forbidden: ") } else { what };
                let res = if subresource.is_empty() { resource.clone() } else { format!("{resource}/{subresource}") };
                let scope = if namespace.is_empty() {
                    "at the cluster scope".to_owned()
                } else {
                    format!("in the namespace \"{namespace}\"")
                };
                format!(
                    "{what}User \"{}\" cannot {verb} resource \"{res}\" in API group \"{api_group}\" {scope}",
                    user.username
                )
            }
            Attributes::NonResource { verb, path } => {
                format!("forbidden: User \"{}\" cannot {verb} path \"{path}\"", user.username)
            }
        }
    }
}

/// An authorization decision.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decision {
    /// Whether the request is allowed.
    pub allowed: bool,
    /// Why (which rule), for SubjectAccessReview's `reason`.
    pub reason: String,
}

/// Tokens and rules.
#[derive(Debug, Clone, Default)]
pub struct Policy {
    tokens: HashMap<String, UserInfo>,
    rules: Vec<Rule>,
    /// The `reason` of a denial (SubjectAccessReview `status.reason`); empty, as RBAC gives
    /// none, unless set with [`Policy::with_denial_reason`].
    denial_reason: String,
}

impl Policy {
    /// A policy with the built-in rules and no users.
    pub fn new() -> Policy {
        Policy {
            tokens: HashMap::new(),
            rules: vec![
                Rule::group(AUTHENTICATED).verbs(&["get"]).urls(&[
                    "/api", "/api/*", "/apis", "/apis/*", "/version", "/version/", "/openapi", "/openapi/*", "/healthz",
                    "/livez", "/readyz",
                ]),
                Rule::group(AUTHENTICATED)
                    .verbs(&["create"])
                    .api_groups(&["authorization.k8s.io", "authentication.k8s.io"])
                    .resources(&["selfsubjectaccessreviews", "selfsubjectrulesreviews", "selfsubjectreviews"]),
            ],
            denial_reason: String::new(),
        }
    }

    /// Gives every denial `reason` (as an authorization webhook may explain itself), so tests
    /// can check that a SubjectAccessReview's reason reaches the client.
    pub fn with_denial_reason(mut self, reason: &str) -> Policy {
        self.denial_reason = reason.to_owned();
        self
    }

    /// Adds a bearer token for `user`.
    pub fn with_token(mut self, token: &str, user: UserInfo) -> Policy {
        self.tokens.insert(token.to_owned(), user);
        self
    }

    /// Adds an allow rule.
    pub fn with_rule(mut self, rule: Rule) -> Policy {
        self.rules.push(rule);
        self
    }

    /// The user a bearer token belongs to (with `system:authenticated` added).
    pub fn authenticate_token(&self, token: &str) -> Option<UserInfo> {
        self.tokens.get(token).cloned().map(UserInfo::authenticated)
    }

    /// The user of a verified client certificate: CN is the name, each O a group.
    pub fn authenticate_cert(&self, common_name: &str, organizations: &[String]) -> UserInfo {
        UserInfo { username: common_name.to_owned(), groups: organizations.to_vec(), ..Default::default() }.authenticated()
    }

    /// Whether `user` may do `attrs`.
    pub fn authorize(&self, user: &UserInfo, attrs: &Attributes) -> Decision {
        if user.groups.iter().any(|g| g == MASTERS) {
            return Decision { allowed: true, reason: format!("allowed: group {MASTERS:?}") };
        }
        match self.rules.iter().position(|r| r.applies_to(user) && r.allows(attrs)) {
            Some(i) => Decision { allowed: true, reason: format!("allowed by simulator rule {i}") },
            None => Decision { allowed: false, reason: self.denial_reason.clone() },
        }
    }

    /// The token of a user name, for writing kubeconfigs.
    pub fn token_of(&self, username: &str) -> Option<&str> {
        self.tokens.iter().find(|(_, u)| u.username == username).map(|(t, _)| t.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy() -> Policy {
        Policy::new()
            .with_token("admin-token", UserInfo::new("admin", &[MASTERS]))
            .with_token("dev-token", UserInfo::new("dev", &["devs"]))
            .with_token("none-token", UserInfo::new("nobody", &[]))
            .with_rule(Rule::group("devs").verbs(&["get", "list"]).resources(&["pods"]).namespaces(&["team-a"]))
            .with_rule(Rule::user("dev").verbs(&["get"]).api_groups(&["metrics.k8s.io"]).resources(&["nodes"]))
    }

    #[test]
    fn tokens_map_to_users_in_the_authenticated_group() {
        let p = policy();
        let dev = p.authenticate_token("dev-token").unwrap();
        assert_eq!(dev.username, "dev");
        assert_eq!(dev.groups, ["devs", AUTHENTICATED]);
        assert_eq!(p.authenticate_token("wrong"), None);
    }

    #[test]
    fn rules_grant_verbs_on_resources_in_namespaces() {
        let p = policy();
        let dev = p.authenticate_token("dev-token").unwrap();
        assert!(p.authorize(&dev, &Attributes::resource("list", "", "pods", "", "team-a", "")).allowed);
        assert!(!p.authorize(&dev, &Attributes::resource("list", "", "pods", "", "team-b", "")).allowed);
        assert!(!p.authorize(&dev, &Attributes::resource("list", "", "pods", "", "", "")).allowed, "all namespaces is not one namespace");
        assert!(!p.authorize(&dev, &Attributes::resource("delete", "", "pods", "", "team-a", "x")).allowed);
        assert!(!p.authorize(&dev, &Attributes::resource("get", "", "pods", "status", "team-a", "x")).allowed);
        assert!(p.authorize(&dev, &Attributes::resource("get", "metrics.k8s.io", "nodes", "", "", "n1")).allowed);
        assert!(!p.authorize(&dev, &Attributes::resource("get", "", "nodes", "", "", "n1")).allowed);
    }

    #[test]
    fn masters_may_do_anything_and_everyone_may_read_discovery() {
        let p = policy();
        let admin = p.authenticate_token("admin-token").unwrap();
        assert!(p.authorize(&admin, &Attributes::resource("delete", "", "nodes", "", "", "n")).allowed);
        let nobody = p.authenticate_token("none-token").unwrap();
        assert!(p.authorize(&nobody, &Attributes::non_resource("get", "/apis/metrics.k8s.io/v1beta1")).allowed);
        assert!(!p.authorize(&nobody, &Attributes::non_resource("get", "/metrics")).allowed);
        let denied = Attributes::resource("list", "metrics.k8s.io", "nodes", "", "", "");
        assert!(!p.authorize(&nobody, &denied).allowed);
        assert_eq!(
            denied.forbidden_message(&nobody),
            "nodes is forbidden: User \"nobody\" cannot list resource \"nodes\" in API group \"metrics.k8s.io\" at the cluster scope"
        );
    }
}
