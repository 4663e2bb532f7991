//! Content negotiation: which encoding a request's `Accept` header asks for.

/// Media type of JSON answers.
pub const JSON: &str = "application/json";
/// Media type of Kubernetes protobuf answers (the `k8s\0` envelope).
pub const PROTOBUF: &str = "application/vnd.kubernetes.protobuf";

/// An encoding this server writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Encoding {
    /// Plain JSON objects.
    Json,
    /// Kubernetes protobuf.
    Protobuf,
    /// `meta.k8s.io` Table as JSON, for `kubectl get`; the field is the Table's version
    /// (`v1` or `v1beta1`).
    Table(TableVersion),
}

/// The `meta.k8s.io` version a Table is written in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TableVersion {
    /// `meta.k8s.io/v1`.
    V1,
    /// `meta.k8s.io/v1beta1`.
    V1beta1,
}

impl TableVersion {
    /// The Table's `apiVersion`.
    pub fn api_version(self) -> &'static str {
        match self {
            Self::V1 => "meta.k8s.io/v1",
            Self::V1beta1 => "meta.k8s.io/v1beta1",
        }
    }

}

impl Encoding {
    /// The `Content-Type` of an answer in this encoding.
    pub fn content_type(self) -> &'static str {
        match self {
            Self::Json => JSON,
            Self::Protobuf => PROTOBUF,
            // kube-apiserver labels a Table with its serializer's media type only (the body's
            // `kind` and `apiVersion` say it is a Table).
            Self::Table(_) => JSON,
        }
    }
}

/// The first media range of `accept` (in order of preference, by `q` then position) this server
/// can write; `None` when there is none. A missing or empty header means JSON.
pub fn negotiate(accept: Option<&str>) -> Option<Encoding> {
    negotiate_among(accept, true)
}

/// [`negotiate`] among the JSON encodings only (watch streams, which are not served in
/// protobuf): a client that also accepts JSON gets it, one that accepts only protobuf `None`.
pub fn negotiate_json(accept: Option<&str>) -> Option<Encoding> {
    negotiate_among(accept, false)
}

fn negotiate_among(accept: Option<&str>, protobuf: bool) -> Option<Encoding> {
    let accept = accept.map(str::trim).filter(|a| !a.is_empty());
    let Some(accept) = accept else { return Some(Encoding::Json) };
    let mut candidates: Vec<(f32, usize, Encoding)> = Vec::new();
    for (position, range) in accept.split(',').enumerate() {
        let mut parts = range.split(';').map(str::trim);
        let media = parts.next().unwrap_or("").to_ascii_lowercase();
        let (mut r#as, mut v, mut g, mut q) = (None, None, None, 1.0f32);
        for param in parts {
            let Some((k, val)) = param.split_once('=') else { continue };
            let val = val.trim().trim_matches('"');
            match k.trim() {
                "as" => r#as = Some(val.to_owned()),
                "v" => v = Some(val.to_owned()),
                "g" => g = Some(val.to_owned()),
                "q" => q = val.parse().unwrap_or(0.0),
                _ => {}
            }
        }
        if q <= 0.0 {
            continue;
        }
        let encoding = match (media.as_str(), r#as.as_deref()) {
            ("application/json", None) | ("*/*", None) | ("application/*", None) => Some(Encoding::Json),
            (PROTOBUF, None) if protobuf => Some(Encoding::Protobuf),
            ("application/json", Some("Table")) if g.as_deref() == Some("meta.k8s.io") => match v.as_deref() {
                Some("v1") => Some(Encoding::Table(TableVersion::V1)),
                Some("v1beta1") => Some(Encoding::Table(TableVersion::V1beta1)),
                _ => None,
            },
            _ => None,
        };
        if let Some(e) = encoding {
            candidates.push((q, position, e));
        }
    }
    candidates.sort_by(|a, b| b.0.total_cmp(&a.0).then(a.1.cmp(&b.1)));
    candidates.first().map(|c| c.2)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kubectl_get_asks_for_a_v1_table_first() {
        let accept = "application/json;as=Table;v=v1;g=meta.k8s.io,application/json;as=Table;v=v1beta1;g=meta.k8s.io,application/json";
        assert_eq!(negotiate(Some(accept)), Some(Encoding::Table(TableVersion::V1)));
    }

    #[test]
    fn controllers_asking_for_protobuf_get_protobuf_and_others_json() {
        assert_eq!(negotiate(Some("application/vnd.kubernetes.protobuf, */*")), Some(Encoding::Protobuf));
        assert_eq!(negotiate(Some("application/json, */*")), Some(Encoding::Json));
        assert_eq!(negotiate(None), Some(Encoding::Json));
        assert_eq!(negotiate(Some("")), Some(Encoding::Json));
        assert_eq!(negotiate(Some("*/*")), Some(Encoding::Json));
    }

    #[test]
    fn watches_negotiate_among_the_json_encodings() {
        assert_eq!(negotiate_json(Some("application/vnd.kubernetes.protobuf, application/json")), Some(Encoding::Json));
        assert_eq!(negotiate_json(Some("application/vnd.kubernetes.protobuf")), None);
    }

    #[test]
    fn unsupported_types_are_skipped_and_nothing_acceptable_is_none() {
        assert_eq!(negotiate(Some("application/yaml, application/json;q=0.5")), Some(Encoding::Json));
        assert_eq!(negotiate(Some("text/html")), None);
        assert_eq!(negotiate(Some("application/json;as=PartialObjectMetadataList;v=v1;g=meta.k8s.io")), None);
        assert_eq!(negotiate(Some("application/json;q=0")), None);
        assert_eq!(
            negotiate(Some("application/json;q=0.5, application/vnd.kubernetes.protobuf")),
            Some(Encoding::Protobuf),
            "q wins over position"
        );
    }
}
