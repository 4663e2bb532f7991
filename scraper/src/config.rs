//! The validated configuration `run` takes (built by [`crate::cli::validate`]; durations,
//! selectors and name checks come from `shardmetrics-plumbing`).

use std::time::Duration;

use crate::nodes::TargetRules;
use crate::schedule::ScheduleConfig;
use crate::stream::GrpcTls;

/// Everything a shard needs besides its clients and listeners.
#[derive(Debug, Clone)]
pub struct Config {
    /// This shard's id: Lease name and holderIdentity.
    pub shard_id: String,
    /// Namespace of the shard Leases.
    pub lease_namespace: String,
    /// Peers presume this shard dead this long after its last renewal.
    pub lease_duration: Duration,
    /// Interval between Lease renewals (below `lease_duration`).
    pub lease_renew_period: Duration,
    /// `host:port` written into the Lease for frontends to dial.
    pub grpc_advertise_address: String,
    /// TLS (and optional client-certificate requirement) of the gRPC server; plaintext h2 if `None`.
    pub grpc_tls: Option<GrpcTls>,
    /// Only nodes matching this label selector are scraped (`None`: all).
    pub node_selector: Option<String>,
    /// How Node objects become scrape targets.
    pub targets: TargetRules,
    /// Resolution and concurrency.
    pub schedule: ScheduleConfig,
    /// Per-subscriber queue length, in batches.
    pub subscriber_queue_batches: usize,
    /// `--grpc-max-message-bytes`: largest stream message sent, in bytes.
    pub grpc_max_message_bytes: usize,
    /// `--stream-linger`: how long the first live batch after a quiet spell is held, with what
    /// is published meanwhile, to go out to a subscriber together (zero: each at once).
    pub stream_linger: Duration,
}

#[cfg(test)]
mod tests {
    #[test]
    fn node_selectors_in_kubernetes_syntax_are_accepted_and_malformed_ones_refused() {
        use shardmetrics_plumbing::selector::LabelSelector;
        for ok in [
            "node-role.kubernetes.io/worker",
            "!node-role.kubernetes.io/control-plane",
            "a=b,c!=d,e==f",
            "zone in (us-east-1a, us-east-1b),tier notin (gpu)",
            "kubernetes.io/os=linux",
            "a=",
        ] {
            LabelSelector::parse(ok).unwrap_or_else(|e| panic!("{ok}: {e}"));
        }
        for bad in ["a=b,", "a b", "a in (b", "=b", "a=b c", "-a=b", "a=(b)"] {
            assert!(LabelSelector::parse(bad).is_err(), "{bad:?}");
        }
    }
}
