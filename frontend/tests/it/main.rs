//! The frontend's integration tests, one binary (one link on 2 cores): the whole replica over
//! HTTPS, upstream subscriptions to fake shards, request limits, authentication and
//! authorization (TLS, front-proxy, TokenReview, SubjectAccessReview) against the API-server
//! simulator, and replicas on a simulated cluster with real scraper shards.

mod api_https;
mod auth_matrix;
mod auth_requestheader;
mod auth_reviews;
mod auth_simulator;
mod auth_support;
mod auth_tls;
mod frontend_cluster;
mod limits;
mod support;
mod upstream;
