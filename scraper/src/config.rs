//! The validated configuration `run` takes, and the Lease-name check the flags need (durations
//! and selectors are parsed by `shardmetrics-plumbing`).

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
}

/// Whether `s` is a valid DNS subdomain (what a Lease name must be).
pub fn valid_dns_subdomain(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 253
        && s.split('.').all(|l| {
            !l.is_empty()
                && l.len() <= 63
                && l.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
                && !l.starts_with('-')
                && !l.ends_with('-')
        })
}

#[cfg(test)]
mod tests {
    use super::*;

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

    #[test]
    fn lease_names_must_be_dns_subdomains() {
        assert!(valid_dns_subdomain("shardmetrics-scraper-0"));
        assert!(!valid_dns_subdomain("Shard_0"));
        assert!(!valid_dns_subdomain(""));
    }
}
