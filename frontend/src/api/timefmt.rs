//! Time and duration text as Go's `metav1.Time` and `metav1.Duration` marshal them.
//!
//! Hand-written (no allocation, no calendar library per item) because a full-cluster list
//! formats two of these for each of 150k items.

use std::fmt;

/// A Unix time in milliseconds, displayed as RFC 3339 in UTC truncated to seconds
/// (`2026-01-02T03:04:05Z`), like `metav1.Time`'s JSON.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rfc3339(pub i64);

impl fmt::Display for Rfc3339 {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let secs = self.0.div_euclid(1000);
        let days = secs.div_euclid(86_400);
        let rem = secs.rem_euclid(86_400);
        let (y, m, d) = civil_from_days(days);
        write!(
            f,
            "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z",
            rem / 3600,
            (rem / 60) % 60,
            rem % 60
        )
    }
}

impl Rfc3339 {
    /// Appends the text to `out` (a fixed-width fast path for years 0-9999).
    pub fn write_to(self, out: &mut Vec<u8>) {
        let secs = self.0.div_euclid(1000);
        let (y, m, d) = civil_from_days(secs.div_euclid(86_400));
        if !(0..=9999).contains(&y) {
            use std::io::Write as _;
            let _ = write!(out, "{self}");
            return;
        }
        let rem = secs.rem_euclid(86_400);
        let two = |v: i64| [b'0' + (v / 10) as u8, b'0' + (v % 10) as u8];
        let (h, mi, se) = (two(rem / 3600), two((rem / 60) % 60), two(rem % 60));
        let (mo, da) = (two(i64::from(m)), two(i64::from(d)));
        out.extend_from_slice(&[
            b'0' + (y / 1000) as u8,
            b'0' + (y / 100 % 10) as u8,
            b'0' + (y / 10 % 10) as u8,
            b'0' + (y % 10) as u8,
            b'-',
            mo[0],
            mo[1],
            b'-',
            da[0],
            da[1],
            b'T',
            h[0],
            h[1],
            b':',
            mi[0],
            mi[1],
            b':',
            se[0],
            se[1],
            b'Z',
        ]);
    }
}

/// [`Rfc3339`] texts of many nearby times (a list's sample times): the text of the last time
/// written is kept, and a time of the same day rewrites its time of day only (the date is the
/// costly part: `civil_from_days`).
#[derive(Debug, Clone, Default)]
pub struct Rfc3339Days {
    /// The day (since 1970-01-01) of `text`, when it holds one.
    day: Option<i64>,
    /// The last text written (`YYYY-MM-DDTHH:MM:SSZ`).
    text: [u8; 20],
}

impl Rfc3339Days {
    /// Appends the text of `ms` (Unix ms) to `out`, as [`Rfc3339::write_to`] does.
    pub fn write_to(&mut self, ms: i64, out: &mut Vec<u8>) {
        let secs = ms.div_euclid(1000);
        let day = secs.div_euclid(86_400);
        if self.day != Some(day) {
            let start = out.len();
            Rfc3339(ms).write_to(out);
            // Years outside 0-9999 have another width: written, not kept.
            if let Ok(text) = <[u8; 20]>::try_from(&out[start..]) {
                self.text = text;
                self.day = Some(day);
            }
            return;
        }
        let rem = secs.rem_euclid(86_400);
        for (at, v) in [(11, rem / 3600), (14, (rem / 60) % 60), (17, rem % 60)] {
            self.text[at] = b'0' + (v / 10) as u8;
            self.text[at + 1] = b'0' + (v % 10) as u8;
        }
        out.extend_from_slice(&self.text);
    }
}

/// Year, month, day of a count of days since 1970-01-01 (Howard Hinnant's algorithm).
fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d)
}

/// A duration in nanoseconds, displayed like Go's `time.Duration.String()` (`15.012s`,
/// `1m0.5s`, `500ms`, `0s`), which is what `metav1.Duration` marshals to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GoDuration(pub i64);

impl GoDuration {
    /// A duration of `ms` milliseconds.
    pub fn from_millis(ms: i64) -> Self {
        Self(ms.saturating_mul(1_000_000))
    }
}

impl GoDuration {
    /// Appends the text to `out` (a fast path for whole milliseconds between 1 s and 1 min, the
    /// usual metrics window).
    pub fn write_to(self, out: &mut Vec<u8>) {
        if (1_000_000_000..60_000_000_000).contains(&self.0) && self.0 % 1_000_000 == 0 {
            let ms = self.0 / 1_000_000;
            let (secs, mut frac) = (ms / 1000, ms % 1000);
            if secs >= 10 {
                out.push(b'0' + (secs / 10) as u8);
            }
            out.push(b'0' + (secs % 10) as u8);
            if frac != 0 {
                out.push(b'.');
                let digits = [b'0' + (frac / 100) as u8, b'0' + (frac / 10 % 10) as u8, b'0' + (frac % 10) as u8];
                let mut len = 3;
                while frac % 10 == 0 {
                    frac /= 10;
                    len -= 1;
                }
                out.extend_from_slice(&digits[..len]);
            }
            out.push(b's');
            return;
        }
        use std::io::Write as _;
        let _ = write!(out, "{self}");
    }
}

impl fmt::Display for GoDuration {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let neg = self.0 < 0;
        let u = self.0.unsigned_abs();
        if neg {
            f.write_str("-")?;
        }
        if u == 0 {
            return f.write_str("0s");
        }
        if u < 1_000_000_000 {
            // Below one second: a single unit, with a fraction.
            let (scale, unit) = match u {
                0..1_000 => (1, "ns"),
                1_000..1_000_000 => (1_000, "µs"),
                _ => (1_000_000, "ms"),
            };
            write_fraction(f, u / scale, u % scale, scale)?;
            return f.write_str(unit);
        }
        let total_secs = u / 1_000_000_000;
        let nanos = u % 1_000_000_000;
        let hours = total_secs / 3600;
        let minutes = (total_secs / 60) % 60;
        let secs = total_secs % 60;
        if hours > 0 {
            write!(f, "{hours}h{minutes}m")?;
        } else if minutes > 0 {
            write!(f, "{minutes}m")?;
        }
        write_fraction(f, secs, nanos, 1_000_000_000)?;
        f.write_str("s")
    }
}

/// Writes `whole` and, if non-zero, `.frac` with trailing zeros trimmed (`frac / scale`).
fn write_fraction(f: &mut fmt::Formatter<'_>, whole: u64, frac: u64, scale: u64) -> fmt::Result {
    write!(f, "{whole}")?;
    if frac == 0 {
        return Ok(());
    }
    let mut digits = scale.ilog10() as usize;
    let mut frac = frac;
    while frac.is_multiple_of(10) {
        frac /= 10;
        digits -= 1;
    }
    write!(f, ".{frac:0digits$}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_day_cache_writes_what_rfc3339_writes() {
        let mut days = Rfc3339Days::default();
        let mut times = vec![0i64, -1, 1_767_225_600_000, 1_767_225_599_999, 951_782_400_000, -62_167_219_200_001, 253_402_300_800_000];
        let mut t = 1_767_225_600_000i64;
        for i in 0..2000 {
            t += (i * 7_919_993) % 50_000_000 - 20_000_000;
            times.push(t);
        }
        for ms in times {
            let mut got = Vec::new();
            days.write_to(ms, &mut got);
            let mut want = Vec::new();
            Rfc3339(ms).write_to(&mut want);
            assert_eq!(got, want, "{ms}");
        }
    }

    #[test]
    fn timestamps_print_as_utc_seconds_like_metav1_time() {
        assert_eq!(Rfc3339(0).to_string(), "1970-01-01T00:00:00Z");
        assert_eq!(Rfc3339(1_767_225_599_999).to_string(), "2025-12-31T23:59:59Z");
        assert_eq!(Rfc3339(1_709_210_096_789).to_string(), "2024-02-29T12:34:56Z");
        assert_eq!(Rfc3339(-1).to_string(), "1969-12-31T23:59:59Z");
    }

    #[test]
    fn timestamps_agree_with_jiff_over_many_days() {
        let mut ms = -5_000_000_000_000i64;
        while ms < 10_000_000_000_000 {
            let ts = jiff::Timestamp::from_millisecond(ms).expect("in range");
            assert_eq!(Rfc3339(ms).to_string(), ts.strftime("%Y-%m-%dT%H:%M:%SZ").to_string());
            ms += 86_400_000 * 37 + 3_723_456;
        }
    }

    #[test]
    fn the_fast_writers_agree_with_display() {
        let mut ms = -86_400_000i64 * 400;
        while ms < 86_400_000i64 * 365 * 9000 {
            let mut out = Vec::new();
            Rfc3339(ms).write_to(&mut out);
            assert_eq!(out, Rfc3339(ms).to_string().into_bytes(), "{ms}");
            ms += 86_400_000 * 97 + 3_599_999;
        }
        for d in (0..130_000i64).step_by(7).chain([1_000, 10_000, 59_999, 60_000, 15_012, 15_100, 15_120]) {
            let mut out = Vec::new();
            GoDuration::from_millis(d).write_to(&mut out);
            assert_eq!(String::from_utf8(out).expect("utf8"), GoDuration::from_millis(d).to_string(), "{d} ms");
        }
    }

    #[test]
    fn durations_print_like_go() {
        assert_eq!(GoDuration(0).to_string(), "0s");
        assert_eq!(GoDuration::from_millis(15_012).to_string(), "15.012s");
        assert_eq!(GoDuration::from_millis(15_000).to_string(), "15s");
        assert_eq!(GoDuration::from_millis(60_000).to_string(), "1m0s");
        assert_eq!(GoDuration::from_millis(60_500).to_string(), "1m0.5s");
        assert_eq!(GoDuration::from_millis(3_600_000).to_string(), "1h0m0s");
        assert_eq!(GoDuration::from_millis(500).to_string(), "500ms");
        assert_eq!(GoDuration(1_500_000).to_string(), "1.5ms");
        assert_eq!(GoDuration(1_000).to_string(), "1µs");
        assert_eq!(GoDuration(10).to_string(), "10ns");
        assert_eq!(GoDuration::from_millis(-1_500).to_string(), "-1.5s");
    }
}
