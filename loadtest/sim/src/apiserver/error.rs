//! Errors of the API-server simulator, and their rendering as Kubernetes `Status` objects with
//! the code and reason a real kube-apiserver uses.

use serde_json::{Value, json};

/// Why a request (or a direct store call) failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ApiError {
    /// 404: the object (or path) does not exist.
    #[error("{kind} {name:?} not found")]
    NotFound {
        /// Plural resource (`nodes`) or `path`.
        kind: String,
        /// The object's name.
        name: String,
    },
    /// 409: create of an existing object.
    #[error("{kind} {name:?} already exists")]
    AlreadyExists {
        /// Plural resource.
        kind: String,
        /// The object's name.
        name: String,
    },
    /// 409: the resourceVersion (or uid) precondition does not hold.
    #[error("Operation cannot be fulfilled on {kind} {name:?}: {message}")]
    Conflict {
        /// Plural resource.
        kind: String,
        /// The object's name.
        name: String,
        /// What conflicted.
        message: String,
    },
    /// 422: the object is not acceptable.
    #[error("{0}")]
    Invalid(String),
    /// 400: the request is malformed (body, query, selector).
    #[error("{0}")]
    BadRequest(String),
    /// 401: no valid credentials.
    #[error("Unauthorized")]
    Unauthorized,
    /// 403: authenticated but not allowed.
    #[error("{0}")]
    Forbidden(String),
    /// 405: the verb does not apply to this path.
    #[error("the server does not allow this method on the requested resource")]
    MethodNotAllowed,
    /// 415: a patch type or body type the simulator does not support.
    #[error("the body of the request was in an unknown format - accepted media types include: {0}")]
    UnsupportedMediaType(String),
    /// 410: a watch asked for history that was compacted away.
    #[error("too old resource version: {requested} ({oldest})")]
    Gone {
        /// The resourceVersion the client asked for.
        requested: u64,
        /// The oldest resourceVersion still resumable.
        oldest: u64,
    },
    /// 413: the request body is over the size limit.
    #[error("{0}")]
    TooLarge(String),
    /// 503: the aggregation proxy has no live backend.
    #[error("{0}")]
    ServiceUnavailable(String),
    /// 500: a bug or an internal failure.
    #[error("{0}")]
    Internal(String),
}

impl From<crate::httputil::BodyError> for ApiError {
    fn from(e: crate::httputil::BodyError) -> Self {
        match e {
            crate::httputil::BodyError::TooLarge(_) => ApiError::TooLarge(e.to_string()),
            crate::httputil::BodyError::Read(_) => ApiError::BadRequest(e.to_string()),
        }
    }
}

impl ApiError {
    /// The HTTP status code.
    pub fn code(&self) -> u16 {
        match self {
            ApiError::NotFound { .. } => 404,
            ApiError::AlreadyExists { .. } | ApiError::Conflict { .. } => 409,
            ApiError::Invalid(_) => 422,
            ApiError::BadRequest(_) => 400,
            ApiError::Unauthorized => 401,
            ApiError::Forbidden(_) => 403,
            ApiError::MethodNotAllowed => 405,
            ApiError::UnsupportedMediaType(_) => 415,
            ApiError::Gone { .. } => 410,
            ApiError::TooLarge(_) => 413,
            ApiError::ServiceUnavailable(_) => 503,
            ApiError::Internal(_) => 500,
        }
    }

    /// The `Status.reason`.
    pub fn reason(&self) -> &'static str {
        match self {
            ApiError::NotFound { .. } => "NotFound",
            ApiError::AlreadyExists { .. } => "AlreadyExists",
            ApiError::Conflict { .. } => "Conflict",
            ApiError::Invalid(_) => "Invalid",
            ApiError::BadRequest(_) => "BadRequest",
            ApiError::Unauthorized => "Unauthorized",
            ApiError::Forbidden(_) => "Forbidden",
            ApiError::MethodNotAllowed => "MethodNotAllowed",
            ApiError::UnsupportedMediaType(_) => "UnsupportedMediaType",
            ApiError::Gone { .. } => "Expired",
            ApiError::TooLarge(_) => "RequestEntityTooLarge",
            ApiError::ServiceUnavailable(_) => "ServiceUnavailable",
            ApiError::Internal(_) => "InternalError",
        }
    }

    /// The error as a `meta/v1 Status` object.
    pub fn to_status(&self) -> Value {
        let mut status = json!({
            "kind": "Status",
            "apiVersion": "v1",
            "metadata": {},
            "status": "Failure",
            "message": self.message(),
            "reason": self.reason(),
            "code": self.code(),
        });
        match self {
            ApiError::NotFound { kind, name }
            | ApiError::AlreadyExists { kind, name }
            | ApiError::Conflict { kind, name, .. } => {
                let (group, plural) = kind.split_once('.').map_or(("", kind.as_str()), |(p, g)| (g, p));
                status["details"] = json!({"name": name, "group": group, "kind": plural});
            }
            _ => {}
        }
        status
    }

    /// The human message, worded like kube-apiserver's.
    fn message(&self) -> String {
        match self {
            ApiError::NotFound { kind, name } => format!("{kind} \"{name}\" not found"),
            ApiError::AlreadyExists { kind, name } => format!("{kind} \"{name}\" already exists"),
            ApiError::Conflict { kind, name, message } => {
                format!("Operation cannot be fulfilled on {kind} \"{name}\": {message}")
            }
            other => other.to_string(),
        }
    }
}
