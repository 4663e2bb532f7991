//! The resources the simulator serves: one static table drives routing, discovery, OpenAPI,
//! field selectors and the store.

/// One stored resource type.
#[derive(Debug, PartialEq, Eq)]
pub struct Resource {
    /// API group; empty for the core group.
    pub group: &'static str,
    /// API version within the group.
    pub version: &'static str,
    /// Plural name used in URLs (`nodes`).
    pub plural: &'static str,
    /// Singular name (`node`).
    pub singular: &'static str,
    /// Kind of one object (`Node`).
    pub kind: &'static str,
    /// Whether objects live in a namespace.
    pub namespaced: bool,
    /// kubectl short names (`no`).
    pub short_names: &'static [&'static str],
    /// Whether a `status` subresource exists (PUT/PATCH to it change only `.status`, and the main
    /// resource ignores status changes on update).
    pub has_status: bool,
    /// Field selector labels beyond `metadata.name` / `metadata.namespace`, with the JSON path
    /// each reads.
    pub fields: &'static [(&'static str, &'static [&'static str])],
}

impl Resource {
    /// `v1` or `group/version`, as in an object's `apiVersion`.
    pub fn api_version(&self) -> String {
        if self.group.is_empty() { self.version.to_owned() } else { format!("{}/{}", self.group, self.version) }
    }

    /// Every field selector label this resource supports.
    pub fn field_labels(&self) -> Vec<&'static str> {
        let mut v = vec!["metadata.name", "metadata.namespace"];
        v.extend(self.fields.iter().map(|(f, _)| *f));
        v
    }

    /// The URL prefix of the group version (`/api/v1`, `/apis/coordination.k8s.io/v1`).
    pub fn group_version_path(&self) -> String {
        if self.group.is_empty() { format!("/api/{}", self.version) } else { format!("/apis/{}/{}", self.group, self.version) }
    }
}

/// Index of a resource in [`STORED`].
pub type ResourceId = usize;

/// Nodes.
pub const NODES: ResourceId = 0;
/// Pods.
pub const PODS: ResourceId = 1;
/// Namespaces.
pub const NAMESPACES: ResourceId = 2;
/// ConfigMaps.
pub const CONFIGMAPS: ResourceId = 3;
/// Leases.
pub const LEASES: ResourceId = 4;

/// Every resource kept in the store, indexed by [`ResourceId`].
pub static STORED: [Resource; 5] = [
    Resource {
        group: "",
        version: "v1",
        plural: "nodes",
        singular: "node",
        kind: "Node",
        namespaced: false,
        short_names: &["no"],
        has_status: true,
        fields: &[("spec.unschedulable", &["spec", "unschedulable"])],
    },
    Resource {
        group: "",
        version: "v1",
        plural: "pods",
        singular: "pod",
        kind: "Pod",
        namespaced: true,
        short_names: &["po"],
        has_status: true,
        fields: &[
            ("spec.nodeName", &["spec", "nodeName"]),
            ("spec.restartPolicy", &["spec", "restartPolicy"]),
            ("spec.schedulerName", &["spec", "schedulerName"]),
            ("spec.serviceAccountName", &["spec", "serviceAccountName"]),
            ("status.phase", &["status", "phase"]),
            ("status.podIP", &["status", "podIP"]),
        ],
    },
    Resource {
        group: "",
        version: "v1",
        plural: "namespaces",
        singular: "namespace",
        kind: "Namespace",
        namespaced: false,
        short_names: &["ns"],
        has_status: true,
        fields: &[("status.phase", &["status", "phase"])],
    },
    Resource {
        group: "",
        version: "v1",
        plural: "configmaps",
        singular: "configmap",
        kind: "ConfigMap",
        namespaced: true,
        short_names: &["cm"],
        has_status: false,
        fields: &[],
    },
    Resource {
        group: "coordination.k8s.io",
        version: "v1",
        plural: "leases",
        singular: "lease",
        kind: "Lease",
        namespaced: true,
        short_names: &[],
        has_status: false,
        fields: &[],
    },
];

/// A create-only review resource (TokenReview, SubjectAccessReview, ...): not stored.
#[derive(Debug, PartialEq, Eq)]
pub struct Review {
    /// API group.
    pub group: &'static str,
    /// Version.
    pub version: &'static str,
    /// Plural name in URLs.
    pub plural: &'static str,
    /// Singular name.
    pub singular: &'static str,
    /// Kind.
    pub kind: &'static str,
    /// Whether it is namespaced (LocalSubjectAccessReview).
    pub namespaced: bool,
}

/// The review resources, answered from the policy.
pub static REVIEWS: [Review; 4] = [
    Review {
        group: "authentication.k8s.io",
        version: "v1",
        plural: "tokenreviews",
        singular: "tokenreview",
        kind: "TokenReview",
        namespaced: false,
    },
    Review {
        group: "authentication.k8s.io",
        version: "v1",
        plural: "selfsubjectreviews",
        singular: "selfsubjectreview",
        kind: "SelfSubjectReview",
        namespaced: false,
    },
    Review {
        group: "authorization.k8s.io",
        version: "v1",
        plural: "subjectaccessreviews",
        singular: "subjectaccessreview",
        kind: "SubjectAccessReview",
        namespaced: false,
    },
    Review {
        group: "authorization.k8s.io",
        version: "v1",
        plural: "selfsubjectaccessreviews",
        singular: "selfsubjectaccessreview",
        kind: "SelfSubjectAccessReview",
        namespaced: false,
    },
];

/// Finds a stored resource by group, version and plural.
pub fn find(group: &str, version: &str, plural: &str) -> Option<ResourceId> {
    STORED.iter().position(|r| r.group == group && r.version == version && r.plural == plural)
}

/// Finds a stored resource by its `apiVersion` and `kind`.
pub fn find_kind(api_version: &str, kind: &str) -> Option<ResourceId> {
    STORED.iter().position(|r| r.api_version() == api_version && r.kind == kind)
}

/// Finds a review resource by group, version and plural.
pub fn find_review(group: &str, version: &str, plural: &str) -> Option<&'static Review> {
    REVIEWS.iter().find(|r| r.group == group && r.version == version && r.plural == plural)
}

/// The groups served natively (besides the core group), with their one version each.
pub fn native_groups() -> Vec<(&'static str, &'static str)> {
    let mut groups: Vec<(&str, &str)> = Vec::new();
    let all = STORED.iter().map(|r| (r.group, r.version)).chain(REVIEWS.iter().map(|r| (r.group, r.version)));
    for (g, v) in all {
        if !g.is_empty() && !groups.contains(&(g, v)) {
            groups.push((g, v));
        }
    }
    groups
}
