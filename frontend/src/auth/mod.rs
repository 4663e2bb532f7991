//! Authentication (front-proxy client certificates, TokenReview) and authorization (SubjectAccessReview).
