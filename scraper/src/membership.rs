//! This shard's own Lease: create, renew, delete on graceful shutdown.
//!
//! The Lease (built by `shardmetrics_plumbing::lease::shard_lease`) is named after the shard id,
//! holds the shard's gRPC address and epoch, and is renewed every `--lease-renew-period` with
//! an optimistic-concurrency `replace` (the last seen `resourceVersion`). A conflict re-reads
//! and retries at once; a deleted Lease is re-created; other errors are retried after a short
//! backoff and never stop the shard (peers simply see the Lease expire). On shutdown the
//! Lease is deleted, preconditioned on the version this shard wrote, so peers take its nodes
//! at once without ever deleting a newer holder's Lease.
//!
//! Peers are found with `shardmetrics_plumbing::lease::watch_members` (used by `run`).

use std::time::Duration;

use k8s_openapi::api::coordination::v1::Lease;
use kube::api::{DeleteParams, PostParams, Preconditions};
use kube::{Api, Client};
use shardmetrics_plumbing::clock::SharedClock;
use shardmetrics_plumbing::lease::{micro_time, shard_lease};

use crate::metrics::Metrics;

/// What the Lease says about this shard.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LeaseSettings {
    /// Namespace of the shard Leases (`--lease-namespace`).
    pub namespace: String,
    /// This shard's id: Lease name and holderIdentity (`--shard-id`).
    pub shard_id: String,
    /// `host:port` frontends dial (`--grpc-advertise-address`, or derived).
    pub grpc_address: String,
    /// This process's epoch, Unix nanoseconds of start.
    pub epoch: u64,
    /// How long after a renewal peers presume this shard dead (`--lease-duration`).
    pub duration: Duration,
    /// Interval between renewals (`--lease-renew-period`, below the duration).
    pub renew_period: Duration,
}

/// How long to wait before retrying after a failed renewal (never longer than the renew period).
const RETRY_AFTER_ERROR: Duration = Duration::from_secs(1);
/// Conflicts are retried at once, this many times per round.
const CONFLICT_RETRIES: usize = 3;
/// Deleting the Lease on shutdown gives up after this long.
const DELETE_TIMEOUT: Duration = Duration::from_secs(5);

/// One attempt failed.
#[derive(Debug, thiserror::Error)]
enum RenewError {
    #[error("lease was modified concurrently")]
    Conflict,
    #[error(transparent)]
    Kube(#[from] kube::Error),
}

fn api_status(e: &kube::Error) -> Option<&kube::core::Status> {
    match e {
        kube::Error::Api(s) => Some(s),
        _ => None,
    }
}

/// Holds the Lease until `shutdown` resolves, then deletes it.
pub struct LeaseHolder {
    api: Api<Lease>,
    settings: LeaseSettings,
    clock: SharedClock,
    metrics: Metrics,
    /// `resourceVersion` and `uid` of the Lease as last written by this shard.
    written: Option<(String, Option<String>)>,
    /// When this process first acquired the Lease, Unix ms (kept across renewals).
    acquired_ms: Option<i64>,
}

impl std::fmt::Debug for LeaseHolder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LeaseHolder").field("settings", &self.settings).finish_non_exhaustive()
    }
}

impl LeaseHolder {
    /// A holder for the Lease described by `settings`.
    pub fn new(client: Client, settings: LeaseSettings, clock: SharedClock, metrics: Metrics) -> LeaseHolder {
        let api = Api::namespaced(client, &settings.namespace);
        LeaseHolder { api, settings, clock, metrics, written: None, acquired_ms: None }
    }

    fn desired(&self, now_ms: i64) -> Lease {
        let s = &self.settings;
        let mut lease = shard_lease(&s.shard_id, &s.namespace, &s.grpc_address, s.epoch, s.duration, now_ms);
        if let (Some(spec), Some(acquired)) = (lease.spec.as_mut(), self.acquired_ms) {
            spec.acquire_time = Some(micro_time(acquired));
        }
        lease
    }

    fn remember(&mut self, lease: &Lease, now_ms: i64) {
        self.written = lease.metadata.resource_version.clone().map(|rv| (rv, lease.metadata.uid.clone()));
        self.acquired_ms.get_or_insert(now_ms);
    }

    /// Creates or renews the Lease once (retrying conflicts); returns whether it is held now.
    pub async fn renew(&mut self) -> bool {
        for _ in 0..CONFLICT_RETRIES {
            match self.try_renew().await {
                Ok(()) => {
                    self.metrics.lease_renewals_total.with_label_values(&["success"]).inc();
                    return true;
                }
                Err(RenewError::Conflict) => {
                    self.metrics.lease_renewals_total.with_label_values(&["conflict"]).inc();
                    tracing::debug!(lease = %self.settings.shard_id, "lease conflict; re-reading");
                    self.written = None;
                }
                Err(RenewError::Kube(err)) => {
                    self.metrics.lease_renewals_total.with_label_values(&["error"]).inc();
                    tracing::warn!(lease = %self.settings.shard_id, namespace = %self.settings.namespace, error = %err, "lease renewal failed");
                    return false;
                }
            }
        }
        false
    }

    async fn try_renew(&mut self) -> Result<(), RenewError> {
        let now = self.clock.now_ms();
        let name = self.settings.shard_id.clone();
        let mut lease = self.desired(now);
        let rv = match &self.written {
            Some((rv, _)) => Some(rv.clone()),
            None => self.api.get_opt(&name).await?.and_then(|l| l.metadata.resource_version),
        };
        let result = match rv {
            Some(rv) => {
                lease.metadata.resource_version = Some(rv);
                match self.api.replace(&name, &PostParams::default(), &lease).await {
                    Err(e) if api_status(&e).is_some_and(|s| s.is_not_found()) => {
                        lease.metadata.resource_version = None;
                        self.api.create(&PostParams::default(), &lease).await
                    }
                    other => other,
                }
            }
            None => self.api.create(&PostParams::default(), &lease).await,
        };
        match result {
            Ok(written) => {
                if self.written.is_none() {
                    tracing::info!(lease = %name, grpc_address = %self.settings.grpc_address, "shard lease held");
                }
                self.remember(&written, now);
                Ok(())
            }
            Err(e) if api_status(&e).is_some_and(|s| s.is_conflict() || s.is_already_exists()) => Err(RenewError::Conflict),
            Err(e) => Err(e.into()),
        }
    }

    /// Deletes the Lease if it is still the version this shard wrote.
    pub async fn delete(&mut self) {
        let Some((rv, uid)) = self.written.take() else { return };
        let params = DeleteParams { preconditions: Some(Preconditions { resource_version: Some(rv), uid }), ..DeleteParams::default() };
        let name = self.settings.shard_id.clone();
        match tokio::time::timeout(DELETE_TIMEOUT, self.api.delete(&name, &params)).await {
            Ok(Ok(_)) => tracing::info!(lease = %name, "shard lease deleted"),
            Ok(Err(e)) if api_status(&e).is_some_and(|s| s.is_not_found()) => {}
            Ok(Err(e)) if api_status(&e).is_some_and(|s| s.is_conflict()) => {
                tracing::warn!(lease = %name, "lease changed since our last renewal; not deleting it")
            }
            Ok(Err(e)) => tracing::warn!(lease = %name, error = %e, "deleting shard lease failed; peers will wait for it to expire"),
            Err(_) => tracing::warn!(lease = %name, "deleting shard lease timed out; peers will wait for it to expire"),
        }
    }

    /// Renews every renew period (sooner after an error) until `shutdown`, then deletes.
    pub async fn run(self, shutdown: impl std::future::Future<Output = ()>) {
        self.run_after(std::future::ready(()), shutdown).await;
    }

    /// Like [`Self::run`], but creates the Lease only once `ready` resolves (e.g. the node view
    /// is synced): peers hand their nodes over the moment the Lease appears, so it must not
    /// appear before this shard can scrape them. A shutdown before that creates nothing.
    pub async fn run_after(mut self, ready: impl std::future::Future<Output = ()>, shutdown: impl std::future::Future<Output = ()>) {
        tokio::pin!(shutdown);
        tokio::select! {
            _ = &mut shutdown => return,
            _ = ready => {}
        }
        loop {
            let held = self.renew().await;
            let wait = if held { self.settings.renew_period } else { RETRY_AFTER_ERROR.min(self.settings.renew_period) };
            tokio::select! {
                _ = &mut shutdown => break,
                _ = tokio::time::sleep(wait) => {}
            }
        }
        self.delete().await;
    }
}
