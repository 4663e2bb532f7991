//! The validated configuration `run` takes, and the small parsers the flags need (Go-style
//! durations, Kubernetes label selectors).

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

/// Parses a Go `time.ParseDuration`-style duration: `15s`, `1m30s`, `500ms`, `1.5h`, `0`.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let t = s.trim();
    if t == "0" {
        return Ok(Duration::ZERO);
    }
    if t.is_empty() {
        return Err("empty duration".into());
    }
    let bad = || format!("invalid duration {s:?} (expected e.g. 15s, 1m30s, 500ms)");
    let mut total = 0f64;
    let mut rest = t;
    while !rest.is_empty() {
        let num_len = rest.find(|c: char| !(c.is_ascii_digit() || c == '.')).unwrap_or(rest.len());
        if num_len == 0 {
            return Err(bad());
        }
        let value: f64 = rest[..num_len].parse().map_err(|_| bad())?;
        rest = &rest[num_len..];
        let unit_len = rest.find(|c: char| c.is_ascii_digit() || c == '.').unwrap_or(rest.len());
        let unit = match &rest[..unit_len] {
            "ns" => 1e-9,
            "us" | "µs" => 1e-6,
            "ms" => 1e-3,
            "s" => 1.0,
            "m" => 60.0,
            "h" => 3600.0,
            _ => return Err(bad()),
        };
        rest = &rest[unit_len..];
        total += value * unit;
    }
    if !total.is_finite() || total > 1e9 {
        return Err(bad());
    }
    Ok(Duration::from_secs_f64(total))
}

/// Formats a duration the way the flags take it (`15s`, `1.5s`, `250ms`).
pub fn format_duration(d: Duration) -> String {
    if d.subsec_nanos() == 0 {
        format!("{}s", d.as_secs())
    } else if d < Duration::from_secs(1) {
        format!("{}ms", d.as_millis())
    } else {
        format!("{}s", d.as_secs_f64())
    }
}

/// Checks a Kubernetes label selector (`a=b,c!=d,e in (f,g),!h,i`) so a typo is reported at
/// start-up instead of as an endless watch error.
pub fn validate_label_selector(selector: &str) -> Result<(), String> {
    let mut terms = Vec::new();
    let mut depth = 0i32;
    let mut start = 0;
    for (i, c) in selector.char_indices() {
        match c {
            '(' => depth += 1,
            ')' => depth -= 1,
            ',' if depth == 0 => {
                terms.push(&selector[start..i]);
                start = i + 1;
            }
            _ => {}
        }
        if depth < 0 {
            return Err(format!("unbalanced ')' in label selector {selector:?}"));
        }
    }
    if depth != 0 {
        return Err(format!("unbalanced '(' in label selector {selector:?}"));
    }
    terms.push(&selector[start..]);
    for term in terms {
        let term = term.trim();
        let err = |what: &str| Err(format!("label selector term {term:?}: {what}"));
        if term.is_empty() {
            return err("empty term");
        }
        let (key, values) = if let Some(k) = term.strip_prefix('!') {
            (k.trim(), None)
        } else if let Some((k, v)) = term.split_once("!=").or_else(|| term.split_once("==")).or_else(|| term.split_once('=')) {
            (k.trim(), Some(vec![v.trim()]))
        } else if let Some((k, set)) = split_set(term) {
            (k, Some(set))
        } else {
            (term, None)
        };
        if !valid_label_key(key) {
            return err("invalid label key");
        }
        for v in values.unwrap_or_default() {
            if !valid_label_value(v) {
                return err("invalid label value");
            }
        }
    }
    Ok(())
}

/// `key in (a,b)` / `key notin (a,b)` → key and values.
fn split_set(term: &str) -> Option<(&str, Vec<&str>)> {
    let open = term.find('(')?;
    let close = term.rfind(')')?;
    if close != term.len() - 1 || close < open {
        return None;
    }
    let head = term[..open].trim();
    let key = head.strip_suffix(" in").or_else(|| head.strip_suffix(" notin"))?.trim();
    Some((key, term[open + 1..close].split(',').map(str::trim).collect()))
}

fn valid_name_part(s: &str, max: usize) -> bool {
    !s.is_empty()
        && s.len() <= max
        && s.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
        && s.starts_with(|c: char| c.is_ascii_alphanumeric())
        && s.ends_with(|c: char| c.is_ascii_alphanumeric())
}

fn valid_label_key(key: &str) -> bool {
    match key.split_once('/') {
        Some((prefix, name)) => valid_dns_subdomain(prefix) && valid_name_part(name, 63),
        None => valid_name_part(key, 63),
    }
}

fn valid_label_value(v: &str) -> bool {
    v.is_empty() || valid_name_part(v, 63)
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
    fn go_durations_parse() {
        assert_eq!(parse_duration("15s").unwrap(), Duration::from_secs(15));
        assert_eq!(parse_duration("1m30s").unwrap(), Duration::from_secs(90));
        assert_eq!(parse_duration("500ms").unwrap(), Duration::from_millis(500));
        assert_eq!(parse_duration("1.5h").unwrap(), Duration::from_secs(5400));
        assert_eq!(parse_duration("0").unwrap(), Duration::ZERO);
        for bad in ["", "15", "s", "15x", "-1s", "1..5s", "1e3s"] {
            assert!(parse_duration(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn durations_format_back_to_flag_syntax() {
        assert_eq!(format_duration(Duration::from_secs(15)), "15s");
        assert_eq!(format_duration(Duration::from_millis(250)), "250ms");
        assert_eq!(format_duration(Duration::from_millis(1500)), "1.5s");
    }

    #[test]
    fn label_selectors_in_kubernetes_syntax_are_accepted() {
        for ok in [
            "node-role.kubernetes.io/worker",
            "!node-role.kubernetes.io/control-plane",
            "a=b,c!=d,e==f",
            "zone in (us-east-1a, us-east-1b),tier notin (gpu)",
            "kubernetes.io/os=linux",
            "a=",
        ] {
            validate_label_selector(ok).unwrap_or_else(|e| panic!("{ok}: {e}"));
        }
    }

    #[test]
    fn malformed_label_selectors_are_rejected_with_the_term() {
        for bad in ["a=b,", "a b", "a in (b", "=b", "a=b c", "-a=b", "a=(b)"] {
            assert!(validate_label_selector(bad).is_err(), "{bad:?}");
        }
        assert_eq!(validate_label_selector("a=b,c=d e").unwrap_err(), "label selector term \"c=d e\": invalid label value");
    }

    #[test]
    fn lease_names_must_be_dns_subdomains() {
        assert!(valid_dns_subdomain("shardmetrics-scraper-0"));
        assert!(!valid_dns_subdomain("Shard_0"));
        assert!(!valid_dns_subdomain(""));
    }
}
