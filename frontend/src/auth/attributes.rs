//! What a request wants, in the terms of a SubjectAccessReview, and the forbidden message that
//! names it.

use shardmetrics_plumbing::selector::{FieldSelector, LabelSelector, Operator};

use super::user::UserInfo;

/// API group of the Resource Metrics API.
pub const METRICS_GROUP: &str = "metrics.k8s.io";
/// Version of the Resource Metrics API this frontend serves.
pub const METRICS_VERSION: &str = "v1beta1";

/// One selector requirement as a SubjectAccessReview carries it.
#[derive(Debug, Clone, PartialEq, Eq, Hash, serde::Serialize)]
pub struct SelectorRequirement {
    /// Field path or label key.
    pub key: String,
    /// `In`, `NotIn`, `Exists` or `DoesNotExist`.
    pub operator: &'static str,
    /// The values (none for `Exists`/`DoesNotExist`).
    pub values: Vec<String>,
}

/// What a request wants: SubjectAccessReview's `resourceAttributes` for an API object, or
/// `nonResourceAttributes` for anything else (discovery, `/openapi/v2`, `/version`, ...).
#[derive(Debug, Clone, PartialEq, Eq, Hash, serde::Serialize)]
pub enum RequestAttributes {
    /// A request on API objects, e.g. `list` of `pods.metrics.k8s.io` in one namespace.
    Resource(ResourceAttributes),
    /// A request on a plain path, e.g. `get` of `/apis/metrics.k8s.io/v1beta1`.
    NonResource {
        /// The URL path, without the query.
        path: String,
        /// The lowercased HTTP method (`get`, `post`, ...).
        verb: String,
    },
}

/// The object part of a resource request.
#[derive(Debug, Clone, PartialEq, Eq, Hash, serde::Serialize)]
pub struct ResourceAttributes {
    /// Kubernetes verb: `get` (with a name), `list` (without), `watch` (`?watch=true`).
    pub verb: String,
    /// API group, `metrics.k8s.io` here; empty for the core group.
    pub group: String,
    /// API version, `v1beta1` here.
    pub version: String,
    /// Resource (plural), `nodes` or `pods` here.
    pub resource: String,
    /// Subresource, if the path names one (`pods/{name}/{subresource}`).
    pub subresource: Option<String>,
    /// Namespace for namespaced requests; `None` at the cluster scope.
    pub namespace: Option<String>,
    /// Object name for a `get`; `None` for collections.
    pub name: Option<String>,
    /// The field selector's requirements of a list or watch (`AuthorizeWithSelectors`, on by
    /// default since Kubernetes 1.32): `=`/`==` as `In`, `!=` as `NotIn`.
    pub field_selector: Vec<SelectorRequirement>,
    /// The label selector's requirements of a list or watch: `=`, `==`, `in` as `In`; `!=`,
    /// `notin` as `NotIn`; `Exists`, `DoesNotExist`; `>`/`<` left out (upstream's mapping).
    pub label_selector: Vec<SelectorRequirement>,
}

impl RequestAttributes {
    /// The same request without its field and label selectors, if it has any: the wider
    /// question whose allow also answers this one (selectors only narrow a list).
    pub fn without_selectors(&self) -> Option<RequestAttributes> {
        match self {
            RequestAttributes::Resource(r) if !r.field_selector.is_empty() || !r.label_selector.is_empty() => {
                Some(RequestAttributes::Resource(ResourceAttributes { field_selector: Vec::new(), label_selector: Vec::new(), ..r.clone() }))
            }
            _ => None,
        }
    }

    /// A request on `metrics.k8s.io/v1beta1` `resource` (`nodes` or `pods`).
    pub fn metrics(
        verb: &str,
        resource: &str,
        namespace: Option<&str>,
        name: Option<&str>,
    ) -> Self {
        Self::Resource(ResourceAttributes {
            verb: verb.to_owned(),
            group: METRICS_GROUP.to_owned(),
            version: METRICS_VERSION.to_owned(),
            resource: resource.to_owned(),
            subresource: None,
            namespace: namespace.map(str::to_owned),
            name: name.map(str::to_owned),
            field_selector: Vec::new(),
            label_selector: Vec::new(),
        })
    }

    /// A non-resource request of `path` with `verb` (lowercase HTTP method).
    pub fn non_resource(path: &str, verb: &str) -> Self {
        Self::NonResource {
            path: path.to_owned(),
            verb: verb.to_owned(),
        }
    }

    /// Classifies an HTTP request exactly as kube-apiserver's RequestInfoFactory does:
    /// `/apis/{group}/{version}/[namespaces/{ns}/]{resource}[/{name}[/{subresource}]]` (and
    /// `/api/{version}/...`) is a resource request whose verb is `get` with a name, `list` or
    /// `watch` (`?watch=true`) without; every other path (discovery, `/openapi/v2`, `/version`,
    /// `/apis/metrics.k8s.io/v1beta1` itself) is a non-resource request.
    pub fn from_request(method: &http::Method, uri: &http::Uri) -> Self {
        let path = uri.path();
        let non_resource = || Self::non_resource(path, &method.as_str().to_ascii_lowercase());
        let mut parts: Vec<&str> = path
            .trim_matches('/')
            .split('/')
            .filter(|p| !p.is_empty())
            .collect();
        if parts.len() < 3 {
            return non_resource();
        }
        let group = match parts[0] {
            "api" => {
                parts.remove(0);
                ""
            }
            "apis" => {
                if parts.len() < 4 {
                    return non_resource();
                }
                let group = parts[1];
                parts.drain(..2);
                group
            }
            _ => return non_resource(),
        };
        let version = parts.remove(0);
        let mut verb = match *method {
            http::Method::GET | http::Method::HEAD => "get",
            http::Method::POST => "create",
            http::Method::PUT => "update",
            http::Method::PATCH => "patch",
            http::Method::DELETE => "delete",
            _ => "",
        };
        let mut special_verb = false;
        if let Some(first @ ("watch" | "proxy")) = parts.first().copied() {
            verb = first;
            special_verb = true;
            parts.remove(0);
        }
        let mut namespace = None;
        if parts.first() == Some(&"namespaces")
            && let Some(ns) = parts.get(1)
        {
            namespace = Some((*ns).to_owned());
            if parts.len() > 2 && !matches!(parts[2], "status" | "finalize") {
                parts.drain(..2);
            }
        }
        let resource = parts.first().map(|s| (*s).to_owned()).unwrap_or_default();
        let name = parts.get(1).map(|s| (*s).to_owned());
        let subresource = if special_verb {
            None
        } else {
            parts.get(2).map(|s| (*s).to_owned())
        };
        // kube-apiserver's RequestInfoFactory: a collection GET decodes its list options; a
        // `metadata.name=` field selector names the object when the whole query decoded; the
        // selectors of a list or watch go to the authorizer (not of a `/watch/` path).
        let mut name = name;
        let mut field_selector = Vec::new();
        let mut label_selector = Vec::new();
        let query = crate::api::router::Query::parse(uri.query());
        let verb = match (verb, &name) {
            ("get", None) => {
                let fields = FieldSelector::parse_syntax(&query.field_selector).ok();
                let labels = LabelSelector::parse(&query.label_selector).ok();
                if let (Some(f), Some(_)) = (&fields, &labels)
                    && query.list_options_decode()
                    && let Some(n) = f.required("metadata.name").filter(|n| is_valid_path_segment(n))
                {
                    name = Some(n.to_owned());
                }
                field_selector = fields.map(|f| field_requirements(&f)).unwrap_or_default();
                label_selector = labels.map(|l| label_requirements(&l)).unwrap_or_default();
                if query.watch { "watch" } else { "list" }
            }
            ("delete", None) => "deletecollection",
            (verb, _) => verb,
        };
        if special_verb || !matches!(verb, "list" | "watch" | "deletecollection") {
            field_selector.clear();
            label_selector.clear();
        }
        Self::Resource(ResourceAttributes {
            verb: verb.to_owned(),
            group: group.to_owned(),
            version: version.to_owned(),
            resource,
            subresource,
            namespace,
            name,
            field_selector,
            label_selector,
        })
    }

    /// The verb, whichever kind of request this is.
    pub fn verb(&self) -> &str {
        match self {
            Self::Resource(r) => &r.verb,
            Self::NonResource { verb, .. } => verb,
        }
    }

    /// The 403 for `user`: the message (see [`Self::forbidden_message`]) and the Status
    /// details kube-apiserver gives (group, resource, name).
    pub fn forbidden(&self, user: &UserInfo, reason: &str) -> super::error::AuthError {
        let (group, resource, name) = match self {
            Self::Resource(r) => (r.group.clone(), r.resource.clone(), r.name.clone()),
            Self::NonResource { .. } => (String::new(), String::new(), None),
        };
        super::error::AuthError::Forbidden(Box::new(super::error::Forbidden { message: self.forbidden_message(user, reason), group, resource, name }))
    }

    /// kube-apiserver's 403 message, e.g. `pods.metrics.k8s.io is forbidden: User "bob" cannot
    /// list resource "pods" in API group "metrics.k8s.io" in the namespace "web"`, with the
    /// authorizer's `reason` appended when it gave one.
    pub fn forbidden_message(&self, user: &UserInfo, reason: &str) -> String {
        let suffix = if reason.is_empty() {
            String::new()
        } else {
            format!(": {reason}")
        };
        match self {
            Self::NonResource { path, verb } => {
                format!(
                    "forbidden: User {:?} cannot {verb} path {path:?}{suffix}",
                    user.name
                )
            }
            Self::Resource(r) => {
                let resource = match &r.subresource {
                    Some(sub) => format!("{}/{sub}", r.resource),
                    None => r.resource.clone(),
                };
                let scope = match &r.namespace {
                    Some(ns) => format!("in the namespace {ns:?}"),
                    None => "at the cluster scope".to_owned(),
                };
                let qualified = if r.group.is_empty() {
                    r.resource.clone()
                } else {
                    format!("{}.{}", r.resource, r.group)
                };
                let object = match &r.name {
                    Some(name) => format!("{qualified} {name:?}"),
                    None => qualified,
                };
                format!(
                    "{object} is forbidden: User {:?} cannot {} resource {resource:?} in API group {:?} {scope}{suffix}",
                    user.name, r.verb, r.group
                )
            }
        }
    }
}

/// `path.IsValidPathSegmentName`: not `.` or `..`, no `/` or `%`.
fn is_valid_path_segment(name: &str) -> bool {
    name != "." && name != ".." && !name.contains(['/', '%'])
}

/// `fieldSelectorToAuthorizationAPI`: equality terms as `In`, inequality as `NotIn`.
fn field_requirements(fields: &FieldSelector) -> Vec<SelectorRequirement> {
    fields
        .terms()
        .map(|(field, equals, value)| SelectorRequirement {
            key: field.to_owned(),
            operator: if equals { "In" } else { "NotIn" },
            values: vec![value.to_owned()],
        })
        .collect()
}

/// `labelSelectorToAuthorizationAPI`: `In`, `NotIn`, `Exists`, `DoesNotExist`; `>`/`<` dropped.
fn label_requirements(labels: &LabelSelector) -> Vec<SelectorRequirement> {
    labels
        .requirements()
        .iter()
        .filter_map(|r| {
            let (operator, values) = match r.operator() {
                Operator::In => ("In", r.values().to_vec()),
                Operator::NotIn => ("NotIn", r.values().to_vec()),
                Operator::Exists => ("Exists", Vec::new()),
                Operator::DoesNotExist => ("DoesNotExist", Vec::new()),
                Operator::GreaterThan(_) | Operator::LessThan(_) => return None,
            };
            Some(SelectorRequirement { key: r.key().to_owned(), operator, values })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn classify(method: http::Method, uri: &str) -> RequestAttributes {
        RequestAttributes::from_request(&method, &uri.parse().expect("test uri"))
    }

    #[test]
    fn metrics_collections_are_lists_and_named_objects_are_gets() {
        assert_eq!(
            classify(http::Method::GET, "/apis/metrics.k8s.io/v1beta1/nodes"),
            RequestAttributes::metrics("list", "nodes", None, None)
        );
        assert_eq!(
            classify(
                http::Method::GET,
                "/apis/metrics.k8s.io/v1beta1/nodes/node-1"
            ),
            RequestAttributes::metrics("get", "nodes", None, Some("node-1"))
        );
        assert_eq!(
            classify(
                http::Method::GET,
                "/apis/metrics.k8s.io/v1beta1/namespaces/web/pods?labelSelector=app"
            ),
            {
                let mut want = RequestAttributes::metrics("list", "pods", Some("web"), None);
                if let RequestAttributes::Resource(r) = &mut want {
                    r.label_selector = vec![SelectorRequirement { key: "app".into(), operator: "Exists", values: vec![] }];
                }
                want
            }
        );
        assert_eq!(
            classify(
                http::Method::GET,
                "/apis/metrics.k8s.io/v1beta1/namespaces/web/pods/api-0"
            ),
            RequestAttributes::metrics("get", "pods", Some("web"), Some("api-0"))
        );
        assert_eq!(
            classify(http::Method::GET, "/apis/metrics.k8s.io/v1beta1/pods"),
            RequestAttributes::metrics("list", "pods", None, None)
        );
    }

    #[test]
    fn a_metadata_name_field_selector_names_the_object_and_selectors_are_carried_like_kube_apiserver() {
        let RequestAttributes::Resource(r) = classify(
            http::Method::GET,
            "/apis/metrics.k8s.io/v1beta1/namespaces/web/pods?fieldSelector=metadata.name%3Dapi-0&labelSelector=app%3Dx,!canary,n%3E1,tier%20in%20(b,a)",
        ) else {
            panic!("expected a resource request")
        };
        assert_eq!((r.verb.as_str(), r.name.as_deref()), ("list", Some("api-0")));
        let req = |key: &str, operator: &'static str, values: &[&str]| SelectorRequirement {
            key: key.into(),
            operator,
            values: values.iter().map(|v| (*v).to_owned()).collect(),
        };
        assert_eq!(r.field_selector, vec![req("metadata.name", "In", &["api-0"])]);
        assert_eq!(
            r.label_selector,
            vec![req("app", "In", &["x"]), req("canary", "DoesNotExist", &[]), req("tier", "In", &["a", "b"])],
            "sorted by key, values sorted, `>` left out"
        );
        for (uri, name) in [
            ("/apis/metrics.k8s.io/v1beta1/pods?fieldSelector=metadata.name!%3Dx", None),
            ("/apis/metrics.k8s.io/v1beta1/pods?fieldSelector=metadata.name%3Dx&limit=abc", None),
            ("/apis/metrics.k8s.io/v1beta1/pods?fieldSelector=metadata.name%3Dx&labelSelector=%3D", None),
            ("/apis/metrics.k8s.io/v1beta1/pods?fieldSelector=metadata.name%3D..", None),
            ("/apis/metrics.k8s.io/v1beta1/pods?fieldSelector=metadata.name%3D%3Dx", Some("x")),
        ] {
            let RequestAttributes::Resource(r) = classify(http::Method::GET, uri) else { panic!("{uri}") };
            assert_eq!(r.name.as_deref(), name, "{uri}");
        }
        let RequestAttributes::Resource(r) = classify(http::Method::GET, "/apis/metrics.k8s.io/v1beta1/nodes/n1?labelSelector=a%3Db")
        else {
            panic!("expected a resource request")
        };
        assert!(r.label_selector.is_empty(), "a get carries no selector");
    }

    #[test]
    fn watch_true_makes_a_watch_and_head_is_a_get() {
        assert_eq!(
            classify(
                http::Method::GET,
                "/apis/metrics.k8s.io/v1beta1/pods?watch=true"
            )
            .verb(),
            "watch"
        );
        assert_eq!(
            classify(
                http::Method::GET,
                "/apis/metrics.k8s.io/v1beta1/pods?watch=0"
            )
            .verb(),
            "list"
        );
        assert_eq!(
            classify(http::Method::HEAD, "/apis/metrics.k8s.io/v1beta1/nodes/n").verb(),
            "get"
        );
    }

    #[test]
    fn discovery_openapi_and_the_group_version_itself_are_non_resource() {
        for path in [
            "/apis",
            "/apis/metrics.k8s.io",
            "/apis/metrics.k8s.io/v1beta1",
            "/openapi/v2",
            "/version",
            "/",
        ] {
            assert_eq!(
                classify(http::Method::GET, path),
                RequestAttributes::non_resource(path, "get"),
                "{path}"
            );
        }
        assert_eq!(classify(http::Method::POST, "/version").verb(), "post");
    }

    #[test]
    fn core_group_paths_and_namespaces_themselves_are_classified_like_kube_apiserver() {
        let RequestAttributes::Resource(r) = classify(http::Method::GET, "/api/v1/namespaces/web")
        else {
            panic!("expected a resource request")
        };
        assert_eq!(
            (r.group.as_str(), r.resource.as_str(), r.name.as_deref()),
            ("", "namespaces", Some("web"))
        );
        let RequestAttributes::Resource(r) =
            classify(http::Method::GET, "/api/v1/namespaces/web/pods/p/log")
        else {
            panic!("expected a resource request")
        };
        assert_eq!(r.subresource.as_deref(), Some("log"));
        assert_eq!(r.namespace.as_deref(), Some("web"));
    }

    #[test]
    fn forbidden_messages_match_kube_apiserver_wording() {
        let bob = UserInfo {
            name: "bob".into(),
            ..UserInfo::default()
        };
        assert_eq!(
            RequestAttributes::metrics("list", "pods", Some("web"), None)
                .forbidden_message(&bob, ""),
            r#"pods.metrics.k8s.io is forbidden: User "bob" cannot list resource "pods" in API group "metrics.k8s.io" in the namespace "web""#
        );
        assert_eq!(
            RequestAttributes::metrics("get", "nodes", None, Some("n1"))
                .forbidden_message(&bob, "no RBAC"),
            r#"nodes.metrics.k8s.io "n1" is forbidden: User "bob" cannot get resource "nodes" in API group "metrics.k8s.io" at the cluster scope: no RBAC"#
        );
        assert_eq!(
            RequestAttributes::non_resource("/apis", "get").forbidden_message(&bob, ""),
            r#"forbidden: User "bob" cannot get path "/apis""#
        );
    }
}
