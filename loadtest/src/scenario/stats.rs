//! Small statistics the report is made of: nearest-rank percentiles of raw samples, a
//! fixed-width histogram for ages (millions of pod ages without keeping them), and quantiles of
//! a Prometheus histogram read from `/metrics` twice.

use serde::Serialize;

/// p50/p99/max of something, in the unit the field name says.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize)]
pub struct Percentiles {
    /// Median.
    pub p50: f64,
    /// 99th percentile.
    pub p99: f64,
    /// Largest.
    pub max: f64,
    /// How many samples.
    pub count: u64,
}

/// Nearest-rank percentile of ascending `sorted` (`p` in 0..=1); 0 when empty.
pub fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let idx = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[idx.min(sorted.len() - 1)]
}

/// p50/p99/max of unsorted samples.
pub fn percentiles(samples: &mut [f64]) -> Percentiles {
    samples.sort_by(f64::total_cmp);
    Percentiles {
        p50: percentile(samples, 0.5),
        p99: percentile(samples, 0.99),
        max: samples.last().copied().unwrap_or(0.0),
        count: samples.len() as u64,
    }
}

/// Ages in milliseconds counted in buckets of [`AgeHistogram::BUCKET_MS`] up to
/// [`AgeHistogram::CAP_MS`] (larger ages land in the last bucket; the exact maximum is kept
/// apart), so percentiles are exact to 10 ms whatever the number of samples.
#[derive(Debug, Clone)]
pub struct AgeHistogram {
    buckets: Vec<u64>,
    count: u64,
    max_ms: f64,
}

impl Default for AgeHistogram {
    fn default() -> Self {
        AgeHistogram { buckets: vec![0; (Self::CAP_MS / Self::BUCKET_MS) as usize + 1], count: 0, max_ms: 0.0 }
    }
}

impl AgeHistogram {
    /// Width of one bucket, ms.
    pub const BUCKET_MS: u64 = 10;
    /// Ages above this share the last bucket, ms (10 minutes).
    pub const CAP_MS: u64 = 600_000;

    /// Counts one age (negative ages, from clock skew between processes, count as 0).
    pub fn record(&mut self, age_ms: f64) {
        let age = age_ms.max(0.0);
        let idx = ((age as u64) / Self::BUCKET_MS).min(Self::CAP_MS / Self::BUCKET_MS) as usize;
        if let Some(b) = self.buckets.get_mut(idx) {
            *b += 1;
        }
        self.count += 1;
        self.max_ms = self.max_ms.max(age);
    }

    /// Adds another histogram's counts.
    pub fn merge(&mut self, other: &AgeHistogram) {
        for (a, b) in self.buckets.iter_mut().zip(&other.buckets) {
            *a += b;
        }
        self.count += other.count;
        self.max_ms = self.max_ms.max(other.max_ms);
    }

    /// The upper edge of the bucket holding the `p` quantile, ms (0 when empty).
    pub fn quantile(&self, p: f64) -> f64 {
        if self.count == 0 {
            return 0.0;
        }
        let rank = ((self.count as f64) * p).ceil().max(1.0) as u64;
        let mut seen = 0;
        for (i, b) in self.buckets.iter().enumerate() {
            seen += b;
            if seen >= rank {
                return (((i as u64) + 1) * Self::BUCKET_MS) as f64;
            }
        }
        self.max_ms
    }

    /// p50/p99/max (percentiles capped at the exact maximum).
    pub fn percentiles(&self) -> Percentiles {
        Percentiles {
            p50: self.quantile(0.5).min(self.max_ms),
            p99: self.quantile(0.99).min(self.max_ms),
            max: self.max_ms,
            count: self.count,
        }
    }
}

/// Quantiles of a Prometheus histogram from cumulative bucket counts `(le, count)` (ascending
/// `le`, `f64::INFINITY` last), interpolated linearly within the bucket like PromQL's
/// `histogram_quantile`. `None` when the histogram is empty; a quantile in the `+Inf` bucket is
/// the highest finite bound.
pub fn histogram_quantile(buckets: &[(f64, f64)], q: f64) -> Option<f64> {
    let total = buckets.last()?.1;
    if total <= 0.0 {
        return None;
    }
    let rank = q * total;
    let mut prev_le = 0.0;
    let mut prev_count = 0.0;
    for &(le, count) in buckets {
        if count >= rank {
            if le.is_infinite() {
                return Some(prev_le);
            }
            let in_bucket = count - prev_count;
            let frac = if in_bucket > 0.0 { (rank - prev_count) / in_bucket } else { 1.0 };
            return Some(prev_le + (le - prev_le) * frac.clamp(0.0, 1.0));
        }
        prev_le = if le.is_finite() { le } else { prev_le };
        prev_count = count;
    }
    Some(prev_le)
}

/// The upper bound of the highest non-empty bucket (`None` when empty, or when samples fell
/// beyond the last finite bound: then the maximum is unknown).
pub fn histogram_max_bound(buckets: &[(f64, f64)]) -> Option<f64> {
    let total = buckets.last()?.1;
    if total <= 0.0 {
        return None;
    }
    buckets.iter().find(|(_, c)| *c >= total).map(|(le, _)| *le).filter(|le| le.is_finite())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_pick_the_nearest_rank() {
        let v: Vec<f64> = (1..=100).map(f64::from).collect();
        assert_eq!(percentile(&v, 0.5), 51.0);
        assert_eq!(percentile(&v, 0.99), 99.0);
        assert_eq!(percentile(&[], 0.5), 0.0);
        let mut w = vec![3.0, 1.0, 2.0];
        assert_eq!(percentiles(&mut w), Percentiles { p50: 2.0, p99: 3.0, max: 3.0, count: 3 });
    }

    #[test]
    fn age_histogram_is_exact_to_a_bucket_and_keeps_the_max() {
        let mut h = AgeHistogram::default();
        for age in 0..1000 {
            h.record(f64::from(age));
        }
        h.record(-5.0);
        h.record(2_000_000.0);
        let p = h.percentiles();
        assert_eq!(p.count, 1002);
        assert!((490.0..=510.0).contains(&p.p50), "{p:?}");
        assert!((980.0..=1000.0).contains(&p.p99), "{p:?}");
        assert_eq!(p.max, 2_000_000.0);
        let mut other = AgeHistogram::default();
        other.record(5.0);
        h.merge(&other);
        assert_eq!(h.percentiles().count, 1003);
        assert_eq!(AgeHistogram::default().percentiles(), Percentiles::default());
    }

    #[test]
    fn prometheus_histograms_interpolate_within_buckets() {
        let inf = f64::INFINITY;
        // 10 samples in (0, 0.01], 10 in (0.01, 0.1].
        let b = [(0.01, 10.0), (0.1, 20.0), (1.0, 20.0), (inf, 20.0)];
        assert!((histogram_quantile(&b, 0.5).unwrap() - 0.01).abs() < 1e-9);
        assert!((histogram_quantile(&b, 0.25).unwrap() - 0.005).abs() < 1e-9);
        assert!((histogram_quantile(&b, 0.99).unwrap() - 0.0982).abs() < 1e-9);
        assert_eq!(histogram_max_bound(&b), Some(0.1));
        assert_eq!(histogram_quantile(&[(0.1, 0.0), (inf, 0.0)], 0.5), None);
        let over = [(0.1, 1.0), (inf, 3.0)];
        assert_eq!(histogram_quantile(&over, 0.99), Some(0.1));
        assert_eq!(histogram_max_bound(&over), None);
    }
}
