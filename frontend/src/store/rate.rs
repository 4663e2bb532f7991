//! Rates from raw cumulative points, with metrics-server's semantics.
//!
//! A [`Series`] holds the last point of a node or container and, when one exists, the previous
//! point with the same start time. The rate is read from those two:
//! CPU nanocores = Δ cumulative CPU ns / Δ seconds, `timestamp` = the last kubelet sample time,
//! `window` = the measured Δ, memory = the last working set.
//!
//! What updates the pair (metrics-server's `podStorage.Store` / `nodeStorage.Store`):
//! - a newer point moves the last one to previous;
//! - the same or an older point keeps the previous one if it is still older than the new point;
//! - a container restart (its start time is not before the stored last timestamp) drops the
//!   previous point, so no rate is served until the next scrape;
//! - a fresh container (started between 10 s and one resolution before its sample) gets a
//!   synthetic previous point `{start time, 0 CPU}` so it is served on its first scrape.
//!
//! What a pair yields ([`Series::usage`], metrics-server's `resourceUsage`): a rate, no rate
//! yet ([`RateError::NoPrevious`]), or an invalid pair ([`RateError::Invalid`]) when the
//! cumulative CPU went down without an announced restart (a reset the kubelet did not report,
//! a rebooted node) or the container's start time moved backwards. An invalid pair is kept, as
//! upstream keeps it: the next sample replaces it and rates resume.

use shardmetrics_proto::Point;

/// The shortest age at which a fresh container's first sample is trusted for a rate
/// (metrics-server's `freshContainerMinMetricsResolution`), in milliseconds.
pub const FRESH_CONTAINER_MIN_AGE_MS: i64 = 10_000;

/// The usage of one node or container over its last window.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Usage {
    /// Kubelet sample time of the last point, Unix milliseconds.
    pub timestamp_ms: i64,
    /// Length of the window the CPU rate was measured over, in milliseconds (> 0).
    pub window_ms: i64,
    /// Average CPU usage over the window, in nanocores.
    pub cpu_nanocores: u64,
    /// Memory working set at `timestamp_ms`, in bytes.
    pub memory_bytes: u64,
    /// Swap in use at `timestamp_ms`, in bytes; `None` when the kubelet reported none.
    pub swap_bytes: Option<u64>,
}

/// Why a series has no usage.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RateError {
    /// Only one point (or none usable): after a start, a restart, or an out-of-order sample.
    NoPrevious,
    /// Two points that give no rate: the CPU counter decreased or the start time moved
    /// backwards between them (metrics-server skips such a container and serves the rest of
    /// its pod; such a node is not served).
    Invalid,
}

/// The last two points of a node or container.
///
/// Memory: 80 bytes (one per stored container and node; a 150k-pod store holds one per
/// container). Of the older point only what a rate reads is kept (its time and cumulative CPU,
/// with its container's start time): its memory and swap are never served.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Series {
    /// Start time of the container of `last`, Unix milliseconds; 0 when unknown or for nodes.
    start_ms: i64,
    /// The newest point.
    last: Point,
    /// The older point, when one is known.
    prev: Option<Prev>,
}

/// What a rate needs of the older point of a [`Series`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Prev {
    /// Start time of its container, Unix milliseconds (0 when unknown).
    start_ms: i64,
    /// Its kubelet sample time, Unix milliseconds.
    timestamp_ms: i64,
    /// Its cumulative CPU, in nanoseconds.
    cpu_usage_ns: u64,
}

impl Prev {
    fn of(start_ms: i64, point: &Point) -> Prev {
        Prev { start_ms, timestamp_ms: point.timestamp_ms, cpu_usage_ns: point.cpu_usage_ns }
    }
}

impl Series {
    /// A series with one point and, for a fresh container, its synthetic start point.
    pub fn first(start_ms: i64, point: Point, resolution_ms: i64) -> Self {
        Self { start_ms, last: point, prev: fresh_start(start_ms, &point, resolution_ms) }
    }

    /// Adds a container point (see the module docs).
    pub fn push_container(&mut self, start_ms: i64, point: Point, resolution_ms: i64) {
        let prev = if let Some(start) = fresh_start(start_ms, &point, resolution_ms) {
            Some(start)
        } else if start_ms < self.last.timestamp_ms {
            self.carried_prev(&point)
        } else {
            None
        };
        self.start_ms = start_ms;
        self.last = point;
        self.prev = prev;
    }

    /// Adds a node point (see the module docs; nodes have no start time).
    pub fn push_node(&mut self, point: Point) {
        self.prev = self.carried_prev(&point);
        self.last = point;
    }

    /// The previous point to keep when `point` replaces `last` without a restart: the last
    /// one if `point` is newer, else the previous one if it is still older than `point`.
    fn carried_prev(&self, point: &Point) -> Option<Prev> {
        if point.timestamp_ms > self.last.timestamp_ms {
            Some(Prev::of(self.start_ms, &self.last))
        } else {
            self.prev.filter(|p| p.timestamp_ms < point.timestamp_ms)
        }
    }

    /// The usage over the last window (see [`RateError`] for when there is none).
    pub fn usage(&self) -> Result<Usage, RateError> {
        let prev = self.prev.ok_or(RateError::NoPrevious)?;
        if self.start_ms < prev.start_ms {
            return Err(RateError::Invalid);
        }
        let window_ms = self.last.timestamp_ms.checked_sub(prev.timestamp_ms).filter(|w| *w > 0).ok_or(RateError::Invalid)?;
        let delta = self.last.cpu_usage_ns.checked_sub(prev.cpu_usage_ns).ok_or(RateError::Invalid)?;
        // ns of CPU per ms of wall time x 1000 = ns of CPU per s = nanocores. u64 arithmetic
        // unless the product overflows (over ~5 core-hours in one window).
        let cpu = match delta.checked_mul(1000) {
            Some(product) => u128::from(product / window_ms as u64),
            None => u128::from(delta) * 1000 / window_ms as u128,
        };
        Ok(Usage {
            timestamp_ms: self.last.timestamp_ms,
            window_ms,
            cpu_nanocores: u64::try_from(cpu).unwrap_or(u64::MAX),
            memory_bytes: self.last.memory_working_set_bytes,
            swap_bytes: self.last.swap_usage_bytes,
        })
    }
}

/// metrics-server's fresh-container fast path: the synthetic `{start, 0 CPU}` point for a
/// container that started at least 10 s but less than one resolution before its sample.
fn fresh_start(start_ms: i64, point: &Point, resolution_ms: i64) -> Option<Prev> {
    let age = point.timestamp_ms - start_ms;
    (start_ms > 0 && start_ms < point.timestamp_ms && age < resolution_ms && age >= FRESH_CONTAINER_MIN_AGE_MS)
        .then_some(Prev { start_ms, timestamp_ms: start_ms, cpu_usage_ns: 0 })
}

#[cfg(test)]
mod tests {
    use super::*;

    const RES: i64 = 15_000;
    const START: i64 = 1_000_000;

    fn p(ts: i64, cpu: u64, mem: u64) -> Point {
        Point { timestamp_ms: ts, cpu_usage_ns: cpu, memory_working_set_bytes: mem, swap_usage_bytes: None }
    }

    #[test]
    fn cpu_rate_is_delta_cumulative_over_delta_time_with_the_measured_window() {
        let mut s = Series::first(START, p(START + 100_000, 10_000_000_000, 1), RES);
        assert_eq!(s.usage(), Err(RateError::NoPrevious), "one point is no rate");
        s.push_container(START, p(START + 115_012, 10_000_000_000 + 1_501_200_000, 2048), RES);
        let u = s.usage().expect("two points");
        assert_eq!(u.window_ms, 15_012);
        assert_eq!(u.cpu_nanocores, 100_000_000, "1.5012 s of CPU over 15.012 s = 0.1 core");
        assert_eq!(u.timestamp_ms, START + 115_012);
        assert_eq!(u.memory_bytes, 2048);
    }

    #[test]
    fn a_repeated_point_keeps_the_previous_one_and_an_older_one_drops_it() {
        let mut s = Series::first(0, p(START, 0, 0), RES);
        s.push_container(0, p(START + 10_000, 1_000, 0), RES);
        let before = s.usage();
        s.push_container(0, p(START + 10_000, 1_000, 0), RES);
        assert_eq!(s.usage(), before, "the same kubelet sample twice changes nothing");
        s.push_container(0, p(START - 5_000, 0, 0), RES);
        assert_eq!(s.usage(), Err(RateError::NoPrevious), "a point older than the stored previous drops it");
    }

    #[test]
    fn a_restarted_container_has_no_rate_until_its_next_sample() {
        let mut s = Series::first(START, p(START + 60_000, 50_000_000_000, 0), RES);
        s.push_container(START, p(START + 75_000, 51_000_000_000, 0), RES);
        assert!(s.usage().is_ok());
        let restart = START + 80_000;
        s.push_container(restart, p(START + 90_000 + RES, 200_000_000, 0), RES);
        assert_eq!(s.usage(), Err(RateError::NoPrevious), "the counter began again: no rate across the restart");
        s.push_container(restart, p(START + 90_000 + 2 * RES, 1_700_000_000, 0), RES);
        assert_eq!(s.usage().map(|u| u.cpu_nanocores), Ok(100_000_000));
    }

    #[test]
    fn a_cpu_counter_decrease_without_a_restart_is_invalid_for_one_window_like_metrics_server() {
        let mut s = Series::first(0, p(START, 9_000_000_000, 0), RES);
        s.push_container(0, p(START + RES, 1_000_000_000, 0), RES);
        assert_eq!(s.usage(), Err(RateError::Invalid), "no nonsense rate across the decrease");
        s.push_container(0, p(START + 2 * RES, 2_500_000_000, 0), RES);
        assert_eq!(s.usage().map(|u| u.cpu_nanocores), Ok(100_000_000), "the decreased point is the next previous");
        let mut n = Series::first(0, p(START, 9_000_000_000, 0), RES);
        n.push_node(p(START + RES, 1_000, 0));
        assert_eq!(n.usage(), Err(RateError::Invalid), "a rebooted node has no rate across the reboot");
    }

    #[test]
    fn a_start_time_that_moves_backwards_is_invalid_for_one_window_like_metrics_server() {
        let mut s = Series::first(START, p(START + 60_000, 6_000_000_000, 0), RES);
        s.push_container(START, p(START + 75_000, 7_500_000_000, 0), RES);
        assert!(s.usage().is_ok());
        s.push_container(START - 1_000, p(START + 90_000, 9_000_000_000, 0), RES);
        assert_eq!(s.usage(), Err(RateError::Invalid), "last.start < prev.start");
        s.push_container(START - 1_000, p(START + 105_000, 10_500_000_000, 0), RES);
        assert_eq!(s.usage().map(|u| u.cpu_nanocores), Ok(100_000_000));
    }

    #[test]
    fn a_fresh_container_is_served_from_its_first_sample() {
        let started = START;
        let s = Series::first(started, p(started + 12_000, 1_200_000_000, 7), RES);
        let u = s.usage().expect("fast path");
        assert_eq!((u.window_ms, u.cpu_nanocores), (12_000, 100_000_000));
        assert_eq!(Series::first(started, p(started + 9_999, 1, 0), RES).usage(), Err(RateError::NoPrevious), "under 10 s: too short");
        assert_eq!(Series::first(started, p(started + RES, 1, 0), RES).usage(), Err(RateError::NoPrevious), "a full resolution old: not fresh");
        assert_eq!(Series::first(0, p(12_000, 1, 0), RES).usage(), Err(RateError::NoPrevious), "unknown start time");
    }

    #[test]
    fn huge_cpu_deltas_do_not_overflow() {
        let mut s = Series::first(0, p(START, 0, 0), RES);
        s.push_container(0, p(START + 1, u64::MAX, 0), RES);
        assert_eq!(s.usage().map(|u| u.cpu_nanocores), Ok(u64::MAX), "saturates");
        let mut s = Series::first(0, p(START, 0, 0), RES);
        s.push_container(0, p(START + 1_000, u64::MAX / 999, 0), RES);
        assert_eq!(s.usage().map(|u| u.cpu_nanocores), Ok(u64::MAX / 999));
    }

    #[test]
    fn a_series_is_80_bytes() {
        assert_eq!(std::mem::size_of::<Series>(), 80, "the store holds one per container");
    }

    #[test]
    fn nodes_rotate_points_like_metrics_server() {
        let mut n = Series::first(0, p(START, 0, 0), RES);
        n.push_node(p(START + 10_000, 20_000_000_000, 5));
        let u = n.usage().expect("rate");
        assert_eq!((u.cpu_nanocores, u.window_ms, u.memory_bytes), (2_000_000_000, 10_000, 5));
        n.push_node(p(START + 10_000, 20_000_000_000, 6));
        assert_eq!(n.usage().map(|u| u.memory_bytes), Ok(6), "same timestamp: previous kept");
    }
}
