//! Faults the `run` scenario injects into a running demo (`--fault SPEC`, repeatable).
//!
//! A spec is `KIND[=VALUE][@AT]`: `AT` is how long into the measurement the fault starts (a
//! duration like `60s`; default `0s`), `VALUE` a kind's parameter:
//!
//! | spec | what happens |
//! |---|---|
//! | `kill-shard@60s` | one scraper shard is killed (SIGKILL: its Lease is left to expire) |
//! | `restart-shard@60s` | one shard is stopped gracefully (SIGTERM: Lease deleted) and started again |
//! | `kill-frontend@60s` | one frontend is killed and a new one started |
//! | `apiserver-drop-watches@60s` | the API server breaks every watch; resumes get 410 Gone |
//! | `kubelets-failing=5%@0s` | 5 % of the kubelets misbehave (timeouts, 500s, garbage, truncated, oversized, slow) |
//! | `scale-shards=6@60s` | shards are added or removed (gracefully) to reach 6 |
//! | `overload=64@60s` | 64 clients send full pod lists as fast as they can for 10 s |
//!
//! [`inject`] performs the fault; what it measures while doing so (e.g. how long a new frontend
//! took to serve complete data) comes back in [`Injected`].

use std::collections::BTreeMap;
use std::str::FromStr;
use std::time::Duration;

use tokio::task::JoinHandle;

use crate::demo::RunningDemo;

/// One fault of a scenario.
#[derive(Debug, Clone, PartialEq)]
pub enum FaultKind {
    /// SIGKILL one scraper shard (no Lease release).
    KillShard,
    /// SIGTERM one shard (Lease deleted on shutdown), then start it again with the same id.
    RestartShard,
    /// SIGKILL one frontend, then start a new one.
    KillFrontend,
    /// The API server closes every watch and forgets its history (resumes get 410 Gone).
    DropWatches,
    /// This percentage of the kubelets (0-100) misbehave in a mix of ways.
    KubeletsFailing(f64),
    /// Add or gracefully remove shards until this many run.
    ScaleShards(usize),
    /// This many clients list every pod as fast as they can for a while.
    Overload(usize),
}

/// A fault and when it starts.
#[derive(Debug, Clone, PartialEq)]
pub struct FaultSpec {
    /// What.
    pub kind: FaultKind,
    /// How long into the measurement.
    pub at: Duration,
}

/// Why a spec or an injection failed.
#[derive(Debug, thiserror::Error)]
pub enum FaultError {
    /// The spec does not parse.
    #[error("--fault {spec:?}: {why} (kinds: kill-shard, restart-shard, kill-frontend, apiserver-drop-watches, kubelets-failing=P%, scale-shards=N, overload=N; then optional @DURATION)")]
    Spec {
        /// The spec as given.
        spec: String,
        /// What is wrong with it.
        why: String,
    },
    /// The demo has nothing the fault could act on (e.g. no shard left to kill).
    #[error("cannot inject {fault}: {why}")]
    Inapplicable {
        /// The fault.
        fault: String,
        /// Why not.
        why: String,
    },
    /// Starting a replacement process or another demo operation failed.
    #[error(transparent)]
    Demo(#[from] crate::demo::DemoError),
}

/// What an injection did and measured.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct FaultOutcome {
    /// The spec, as text.
    pub fault: String,
    /// When it was injected, seconds into the measurement.
    pub at_s: f64,
    /// What it acted on (process names, node names, counts).
    pub targets: Vec<String>,
    /// Measurements, by name (units in the name: `_ms`, `_s`, `_count`).
    pub measured: BTreeMap<String, f64>,
}

/// An injected fault: its outcome so far, plus measurements still being taken (awaited at the
/// end of the run and merged into [`FaultOutcome::measured`]).
#[derive(Debug)]
pub struct Injected {
    /// What is known at injection time.
    pub outcome: FaultOutcome,
    /// Measurements that finish later (e.g. a restarted frontend's time to complete data).
    pub pending: Option<JoinHandle<BTreeMap<String, f64>>>,
}

/// `90s`, `1500ms`, `2m`, `1m30s`.
fn parse_duration(s: &str) -> Option<Duration> {
    let mut total = Duration::ZERO;
    let mut rest = s.trim();
    if rest.is_empty() {
        return None;
    }
    while !rest.is_empty() {
        let digits = rest.find(|c: char| !c.is_ascii_digit() && c != '.').unwrap_or(rest.len());
        if digits == 0 {
            return None;
        }
        let n: f64 = rest[..digits].parse().ok()?;
        rest = &rest[digits..];
        let unit = rest.find(|c: char| c.is_ascii_digit()).unwrap_or(rest.len());
        let secs = match &rest[..unit] {
            "ms" => n / 1000.0,
            "s" => n,
            "m" => n * 60.0,
            "h" => n * 3600.0,
            _ => return None,
        };
        rest = &rest[unit..];
        total += Duration::try_from_secs_f64(secs).ok()?;
    }
    Some(total)
}

impl FromStr for FaultSpec {
    type Err = FaultError;

    fn from_str(spec: &str) -> Result<FaultSpec, FaultError> {
        let bad = |why: &str| FaultError::Spec { spec: spec.to_owned(), why: why.to_owned() };
        let (body, at) = match spec.split_once('@') {
            Some((body, at)) => (body, parse_duration(at).ok_or_else(|| bad("the time after @ is not a duration like 60s"))?),
            None => (spec, Duration::ZERO),
        };
        let (name, value) = match body.split_once('=') {
            Some((n, v)) => (n.trim(), Some(v.trim())),
            None => (body.trim(), None),
        };
        let count = |v: Option<&str>| -> Result<usize, FaultError> {
            v.ok_or_else(|| bad("needs =N"))?.parse::<usize>().map_err(|_| bad("N must be a whole number"))
        };
        let kind = match name {
            "kill-shard" | "restart-shard" | "kill-frontend" | "apiserver-drop-watches" if value.is_some() => {
                return Err(bad("takes no =value"));
            }
            "kill-shard" => FaultKind::KillShard,
            "restart-shard" => FaultKind::RestartShard,
            "kill-frontend" => FaultKind::KillFrontend,
            "apiserver-drop-watches" => FaultKind::DropWatches,
            "kubelets-failing" => {
                let v = value.ok_or_else(|| bad("needs =P%"))?;
                let p: f64 = v.strip_suffix('%').unwrap_or(v).parse().map_err(|_| bad("P must be a number"))?;
                if !(0.0..=100.0).contains(&p) {
                    return Err(bad("P must be between 0 and 100"));
                }
                FaultKind::KubeletsFailing(p)
            }
            "scale-shards" => {
                let n = count(value)?;
                if n == 0 {
                    return Err(bad("at least one shard must remain"));
                }
                FaultKind::ScaleShards(n)
            }
            "overload" => {
                let n = count(value)?;
                if n == 0 {
                    return Err(bad("at least one client"));
                }
                FaultKind::Overload(n)
            }
            _ => return Err(bad("unknown kind")),
        };
        Ok(FaultSpec { kind, at })
    }
}

impl std::fmt::Display for FaultSpec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.kind {
            FaultKind::KillShard => write!(f, "kill-shard")?,
            FaultKind::RestartShard => write!(f, "restart-shard")?,
            FaultKind::KillFrontend => write!(f, "kill-frontend")?,
            FaultKind::DropWatches => write!(f, "apiserver-drop-watches")?,
            FaultKind::KubeletsFailing(p) => write!(f, "kubelets-failing={p}%")?,
            FaultKind::ScaleShards(n) => write!(f, "scale-shards={n}")?,
            FaultKind::Overload(n) => write!(f, "overload={n}")?,
        }
        write!(f, "@{}ms", self.at.as_millis())
    }
}

/// Injects `spec` into `demo`, `at_s` seconds into the measurement.
pub async fn inject(spec: &FaultSpec, demo: &mut RunningDemo, at_s: f64) -> Result<Injected, FaultError> {
    let mut outcome = FaultOutcome { fault: spec.to_string(), at_s, ..Default::default() };
    let inapplicable = |why: &str| FaultError::Inapplicable { fault: spec.to_string(), why: why.to_owned() };
    match &spec.kind {
        FaultKind::KillShard => {
            let (name, _) = demo
                .children()
                .into_iter()
                .find(|(n, _)| n.starts_with("scraper-"))
                .ok_or_else(|| inapplicable("no scraper shard is running"))?;
            demo.kill_child(&name).await;
            outcome.targets.push(name);
            Ok(Injected { outcome, pending: None })
        }
        _ => Err(inapplicable("not implemented yet")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn specs_parse_with_and_without_values_and_times() {
        let s: FaultSpec = "kill-shard@60s".parse().unwrap();
        assert_eq!(s, FaultSpec { kind: FaultKind::KillShard, at: Duration::from_secs(60) });
        let s: FaultSpec = "kubelets-failing=5%".parse().unwrap();
        assert_eq!(s, FaultSpec { kind: FaultKind::KubeletsFailing(5.0), at: Duration::ZERO });
        let s: FaultSpec = "scale-shards=6@1m30s".parse().unwrap();
        assert_eq!(s, FaultSpec { kind: FaultKind::ScaleShards(6), at: Duration::from_secs(90) });
        let s: FaultSpec = "overload=64@1500ms".parse().unwrap();
        assert_eq!(s, FaultSpec { kind: FaultKind::Overload(64), at: Duration::from_millis(1500) });
        assert_eq!(s.to_string().parse::<FaultSpec>().unwrap(), s);
    }

    #[test]
    fn bad_specs_say_what_is_wrong() {
        for (spec, why) in [
            ("explode", "unknown kind"),
            ("kill-shard=3", "takes no =value"),
            ("kill-shard@soon", "not a duration"),
            ("kubelets-failing", "needs =P%"),
            ("kubelets-failing=150%", "between 0 and 100"),
            ("scale-shards=0", "at least one shard"),
            ("overload=many", "whole number"),
        ] {
            let err = spec.parse::<FaultSpec>().unwrap_err().to_string();
            assert!(err.contains(why), "{spec}: {err}");
        }
    }
}
