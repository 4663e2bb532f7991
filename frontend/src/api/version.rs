//! The versions of `metrics.k8s.io` served: `v1beta1`, what metrics-server serves and kubectl
//! asks for, and `v1`, GA since Kubernetes 1.37 with the same schema (metrics-server does not
//! serve it yet: its issue #1786). `v1` is the preferred version.

/// One served version of `metrics.k8s.io`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum ApiVersion {
    /// `metrics.k8s.io/v1beta1`.
    #[default]
    V1beta1,
    /// `metrics.k8s.io/v1`.
    V1,
}

impl ApiVersion {
    /// Every served version, the preferred one first (discovery's order).
    pub const ALL: [ApiVersion; 2] = [ApiVersion::V1, ApiVersion::V1beta1];

    /// `v1beta1` or `v1`.
    pub fn version(self) -> &'static str {
        match self {
            ApiVersion::V1beta1 => "v1beta1",
            ApiVersion::V1 => "v1",
        }
    }

    /// `metrics.k8s.io/v1beta1` or `metrics.k8s.io/v1`: objects' `apiVersion`.
    pub fn group_version(self) -> &'static str {
        match self {
            ApiVersion::V1beta1 => "metrics.k8s.io/v1beta1",
            ApiVersion::V1 => "metrics.k8s.io/v1",
        }
    }

    /// `/apis/metrics.k8s.io/v1beta1` or `/apis/metrics.k8s.io/v1`.
    pub fn path(self) -> &'static str {
        match self {
            ApiVersion::V1beta1 => "/apis/metrics.k8s.io/v1beta1",
            ApiVersion::V1 => "/apis/metrics.k8s.io/v1",
        }
    }

    /// `MetricsV1beta1` or `MetricsV1`: the OpenAPI operation and tag stem.
    pub fn operation_stem(self) -> &'static str {
        match self {
            ApiVersion::V1beta1 => "MetricsV1beta1",
            ApiVersion::V1 => "MetricsV1",
        }
    }

    /// `io.k8s.metrics.pkg.apis.metrics.v1beta1` (or `.v1`): the OpenAPI definitions' prefix.
    pub fn definitions(self) -> &'static str {
        match self {
            ApiVersion::V1beta1 => "io.k8s.metrics.pkg.apis.metrics.v1beta1",
            ApiVersion::V1 => "io.k8s.metrics.pkg.apis.metrics.v1",
        }
    }

    /// The version whose path `path` starts with (`/apis/metrics.k8s.io/<version>` exactly or
    /// followed by `/`), and the rest of the path.
    pub fn strip(path: &str) -> Option<(ApiVersion, &str)> {
        ApiVersion::ALL.into_iter().find_map(|v| {
            let rest = path.strip_prefix(v.path())?;
            (rest.is_empty() || rest.starts_with('/')).then_some((v, rest))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_are_told_apart_by_whole_segments() {
        assert_eq!(ApiVersion::strip("/apis/metrics.k8s.io/v1/nodes"), Some((ApiVersion::V1, "/nodes")));
        assert_eq!(ApiVersion::strip("/apis/metrics.k8s.io/v1beta1/nodes"), Some((ApiVersion::V1beta1, "/nodes")));
        assert_eq!(ApiVersion::strip("/apis/metrics.k8s.io/v1"), Some((ApiVersion::V1, "")));
        assert_eq!(ApiVersion::strip("/apis/metrics.k8s.io/v1beta2/nodes"), None);
        assert_eq!(ApiVersion::strip("/apis/metrics.k8s.io/v10"), None);
    }
}
