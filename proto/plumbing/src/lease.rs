//! How shards announce themselves, and how peers and frontends find the live ones.
//!
//! Each shard holds one `coordination.k8s.io/v1` Lease in its namespace:
//! - name = the shard id, `spec.holderIdentity` = the shard id;
//! - label [`ROLE_LABEL`]`=`[`ROLE_SCRAPER`], so that peers and frontends watch them by label;
//! - annotation [`GRPC_ADDRESS_ANNOTATION`] = `host:port` of its `SampleStream` server, and
//!   [`EPOCH_ANNOTATION`] = its process epoch;
//! - `spec.renewTime` + `spec.leaseDurationSeconds` = when it is presumed dead.
//!
//! A shard deletes its Lease on graceful shutdown, so peers take its nodes at once; a crashed
//! shard's Lease simply expires.

use std::collections::BTreeMap;
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use kube::runtime::watcher;
use kube::runtime::WatchStreamExt;
use kube::{Api, Client};
use tokio::sync::watch;

use crate::clock::SharedClock;

/// Label key put on every shard Lease.
pub const ROLE_LABEL: &str = "shardmetrics.io/role";
/// Value of [`ROLE_LABEL`] on shard Leases.
pub const ROLE_SCRAPER: &str = "scraper";
/// Annotation holding the shard's gRPC address (`host:port`, no scheme).
pub const GRPC_ADDRESS_ANNOTATION: &str = "shardmetrics.io/grpc-address";
/// Annotation holding the shard's epoch (decimal Unix nanoseconds of process start).
pub const EPOCH_ANNOTATION: &str = "shardmetrics.io/epoch";

/// Label selector that matches every shard Lease.
pub fn label_selector() -> String {
    format!("{ROLE_LABEL}={ROLE_SCRAPER}")
}

/// One live (or once-live) shard, as read from its Lease.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Member {
    /// The shard id (Lease holderIdentity).
    pub shard_id: String,
    /// Where its `SampleStream` server listens, `host:port`.
    pub grpc_address: String,
    /// Its process epoch; 0 if the annotation is missing.
    pub epoch: u64,
    /// Last renewal, Unix milliseconds.
    pub renew_time_ms: i64,
    /// How long after `renew_time_ms` it is presumed dead, in milliseconds.
    pub lease_duration_ms: i64,
}

impl Member {
    /// Reads a member from a shard Lease; `None` when the Lease lacks a holder, an address, a
    /// renew time or a duration (not (yet) a usable shard).
    pub fn from_lease(lease: &Lease) -> Option<Member> {
        let spec = lease.spec.as_ref()?;
        let shard_id = spec.holder_identity.clone().filter(|h| !h.is_empty())?;
        let annotations = lease.metadata.annotations.as_ref()?;
        let grpc_address = annotations.get(GRPC_ADDRESS_ANNOTATION).filter(|a| !a.is_empty())?.clone();
        let epoch = annotations.get(EPOCH_ANNOTATION).and_then(|e| e.parse().ok()).unwrap_or(0);
        let renew = spec.renew_time.as_ref().or(spec.acquire_time.as_ref())?;
        let lease_duration_ms = i64::from(spec.lease_duration_seconds?) * 1000;
        Some(Member { shard_id, grpc_address, epoch, renew_time_ms: renew.0.as_millisecond(), lease_duration_ms })
    }

    /// Unix milliseconds after which the member is presumed dead.
    pub fn expires_at_ms(&self) -> i64 {
        self.renew_time_ms.saturating_add(self.lease_duration_ms)
    }

    /// Whether the lease is unexpired at `now_ms`.
    pub fn is_live(&self, now_ms: i64) -> bool {
        now_ms < self.expires_at_ms()
    }
}

/// Converts Unix milliseconds into a Kubernetes `MicroTime`.
pub fn micro_time(unix_ms: i64) -> MicroTime {
    MicroTime(jiff::Timestamp::from_millisecond(unix_ms).unwrap_or(jiff::Timestamp::UNIX_EPOCH))
}

/// Builds the Lease a shard holds, renewed at `now_ms`.
pub fn shard_lease(
    shard_id: &str,
    namespace: &str,
    grpc_address: &str,
    epoch: u64,
    lease_duration: Duration,
    now_ms: i64,
) -> Lease {
    Lease {
        metadata: ObjectMeta {
            name: Some(shard_id.to_owned()),
            namespace: Some(namespace.to_owned()),
            labels: Some(BTreeMap::from([(ROLE_LABEL.to_owned(), ROLE_SCRAPER.to_owned())])),
            annotations: Some(BTreeMap::from([
                (GRPC_ADDRESS_ANNOTATION.to_owned(), grpc_address.to_owned()),
                (EPOCH_ANNOTATION.to_owned(), epoch.to_string()),
            ])),
            ..Default::default()
        },
        spec: Some(LeaseSpec {
            holder_identity: Some(shard_id.to_owned()),
            lease_duration_seconds: Some(lease_duration.as_secs().max(1).min(i32::MAX as u64) as i32),
            acquire_time: Some(micro_time(now_ms)),
            renew_time: Some(micro_time(now_ms)),
            ..Default::default()
        }),
    }
}

/// Live members by shard id. Ordered, so equal sets compare and iterate equally everywhere.
pub type Members = BTreeMap<String, Member>;

/// How often the live set is re-evaluated for expiry when no watch event arrives.
pub const EXPIRY_CHECK_INTERVAL: Duration = Duration::from_millis(500);

/// Watches shard Leases in `namespace` and publishes the set of live members whenever it
/// changes (a Lease appears, is deleted, renews with a new address or epoch, or expires).
///
/// Returns the receiver and the task driving it; the task ends when every receiver is dropped.
/// Watch errors are retried with kube-rs' default backoff; a re-list replaces the whole view.
pub fn watch_members(client: Client, namespace: &str, clock: SharedClock) -> (watch::Receiver<Members>, tokio::task::JoinHandle<()>) {
    let (tx, rx) = watch::channel(Members::new());
    let api: Api<Lease> = Api::namespaced(client, namespace);
    let task = tokio::spawn(async move {
        let config = watcher::Config::default().labels(&label_selector());
        let mut events = watcher(api, config).default_backoff().boxed();
        let mut all: BTreeMap<String, Member> = BTreeMap::new();
        let mut pending_init: Option<BTreeMap<String, Member>> = None;
        let mut tick = tokio::time::interval(EXPIRY_CHECK_INTERVAL);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = tx.closed() => return,
                _ = tick.tick() => {}
                ev = events.next() => match ev {
                    None => return,
                    Some(Err(err)) => tracing::warn!(error = %err, "shard lease watch failed; retrying"),
                    Some(Ok(ev)) => apply_event(&mut all, &mut pending_init, ev),
                },
            }
            let now = clock.now_ms();
            let live: Members = all.iter().filter(|(_, m)| m.is_live(now)).map(|(k, m)| (k.clone(), m.clone())).collect();
            tx.send_if_modified(|cur| {
                if *cur != live {
                    *cur = live;
                    true
                } else {
                    false
                }
            });
        }
    });
    (rx, task)
}

fn lease_key(lease: &Lease) -> Option<String> {
    lease.metadata.name.clone()
}

fn apply_event(all: &mut BTreeMap<String, Member>, pending: &mut Option<BTreeMap<String, Member>>, ev: watcher::Event<Lease>) {
    match ev {
        watcher::Event::Apply(l) => {
            if let Some(k) = lease_key(&l) {
                match Member::from_lease(&l) {
                    Some(m) => all.insert(k, m),
                    None => all.remove(&k),
                };
            }
        }
        watcher::Event::Delete(l) => {
            if let Some(k) = lease_key(&l) {
                all.remove(&k);
            }
        }
        watcher::Event::Init => *pending = Some(BTreeMap::new()),
        watcher::Event::InitApply(l) => {
            if let (Some(p), Some(k), Some(m)) = (pending.as_mut(), lease_key(&l), Member::from_lease(&l)) {
                p.insert(k, m);
            }
        }
        watcher::Event::InitDone => {
            if let Some(p) = pending.take() {
                *all = p;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_shard_lease_reads_back_as_the_same_member() {
        let lease = shard_lease("shard-0", "kube-system", "10.0.0.7:50051", 99, Duration::from_secs(15), 1_700_000_000_123);
        let m = Member::from_lease(&lease).unwrap();
        assert_eq!(
            m,
            Member {
                shard_id: "shard-0".into(),
                grpc_address: "10.0.0.7:50051".into(),
                epoch: 99,
                renew_time_ms: 1_700_000_000_123,
                lease_duration_ms: 15_000,
            }
        );
        assert!(m.is_live(1_700_000_015_122));
        assert!(!m.is_live(1_700_000_015_123));
    }

    #[test]
    fn a_lease_without_address_or_holder_is_not_a_member() {
        let mut lease = shard_lease("s", "ns", "a:1", 1, Duration::from_secs(1), 0);
        lease.metadata.annotations.as_mut().unwrap().remove(GRPC_ADDRESS_ANNOTATION);
        assert_eq!(Member::from_lease(&lease), None);
        let mut lease = shard_lease("s", "ns", "a:1", 1, Duration::from_secs(1), 0);
        lease.spec.as_mut().unwrap().holder_identity = None;
        assert_eq!(Member::from_lease(&lease), None);
    }

    #[test]
    fn a_relist_replaces_the_whole_view() {
        let mut all = BTreeMap::new();
        let mut pending = None;
        let l0 = shard_lease("s0", "ns", "a:1", 1, Duration::from_secs(10), 0);
        let l1 = shard_lease("s1", "ns", "a:2", 1, Duration::from_secs(10), 0);
        apply_event(&mut all, &mut pending, watcher::Event::Apply(l0.clone()));
        apply_event(&mut all, &mut pending, watcher::Event::Init);
        apply_event(&mut all, &mut pending, watcher::Event::InitApply(l1));
        assert_eq!(all.keys().collect::<Vec<_>>(), vec!["s0"], "old view kept until InitDone");
        apply_event(&mut all, &mut pending, watcher::Event::InitDone);
        assert_eq!(all.keys().collect::<Vec<_>>(), vec!["s1"]);
        apply_event(&mut all, &mut pending, watcher::Event::Delete(l0));
        apply_event(&mut all, &mut pending, watcher::Event::Delete(shard_lease("s1", "ns", "a:2", 1, Duration::from_secs(10), 0)));
        assert!(all.is_empty());
    }
}
