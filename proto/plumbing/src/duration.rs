//! Durations in Go's `time.ParseDuration` syntax, the syntax every Kubernetes component (and so
//! every shardmetrics flag) takes: `15s`, `1m30s`, `250ms`, `1.5h`, `0`.
//!
//! [`parse`] reads one, [`format`] writes one back the way a flag takes it, and [`GoDuration`]
//! is the clap value type, so a bad duration is refused while the command line is parsed.

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

/// Why a text is not a Go duration; the message names the text and gives examples.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid duration {0:?} (examples: 15s, 1m30s, 250ms)")]
pub struct DurationError(pub String);

/// Parses a Go duration: one or more decimal numbers (fractions allowed), each followed by a
/// unit among `ns`, `us`, `µs`, `ms`, `s`, `m`, `h`; a leading `+` is allowed; `0` alone needs
/// no unit. Negative durations are refused (no flag means a negative time). Precision is one
/// nanosecond.
pub fn parse(text: &str) -> Result<Duration, DurationError> {
    let bad = || DurationError(text.to_owned());
    let s = text.trim();
    if s == "0" {
        return Ok(Duration::ZERO);
    }
    if s.is_empty() || s.starts_with('-') {
        return Err(bad());
    }
    let mut rest = s.strip_prefix('+').unwrap_or(s);
    if rest.is_empty() {
        return Err(bad());
    }
    let mut total_ns = 0f64;
    while !rest.is_empty() {
        let number_len = rest.find(|c: char| !(c.is_ascii_digit() || c == '.')).ok_or_else(bad)?;
        if number_len == 0 {
            return Err(bad());
        }
        let number: f64 = rest[..number_len].parse().map_err(|_| bad())?;
        rest = &rest[number_len..];
        let unit_len = rest.find(|c: char| c.is_ascii_digit() || c == '.').unwrap_or(rest.len());
        let scale = match &rest[..unit_len] {
            "ns" => 1.0,
            "us" | "µs" | "μs" => 1e3,
            "ms" => 1e6,
            "s" => 1e9,
            "m" => 60e9,
            "h" => 3600e9,
            _ => return Err(bad()),
        };
        rest = &rest[unit_len..];
        total_ns += number * scale;
    }
    if !total_ns.is_finite() || total_ns > u64::MAX as f64 {
        return Err(bad());
    }
    Ok(Duration::from_nanos(total_ns.round() as u64))
}

/// Writes `d` the way the flags read it back exactly: whole seconds as `15s`, sub-second
/// durations as `250ms` (or `1500us`, `7ns` when not whole milliseconds), other durations as
/// fractional seconds (`1.5s`).
pub fn format(d: Duration) -> String {
    if d.subsec_nanos() == 0 {
        format!("{}s", d.as_secs())
    } else if d < Duration::from_secs(1) {
        let ns = d.subsec_nanos();
        if ns.is_multiple_of(1_000_000) {
            format!("{}ms", ns / 1_000_000)
        } else if ns.is_multiple_of(1_000) {
            format!("{}us", ns / 1_000)
        } else {
            format!("{ns}ns")
        }
    } else {
        format!("{}s", d.as_secs_f64())
    }
}

/// A [`Duration`] read from Go syntax: the value type of every duration flag (clap parses it
/// through [`FromStr`], so the error is reported with the flag's name).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct GoDuration(pub Duration);

impl FromStr for GoDuration {
    type Err = DurationError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        parse(s).map(GoDuration)
    }
}

impl fmt::Display for GoDuration {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&format(self.0))
    }
}

impl From<GoDuration> for Duration {
    fn from(d: GoDuration) -> Duration {
        d.0
    }
}

impl From<Duration> for GoDuration {
    fn from(d: Duration) -> GoDuration {
        GoDuration(d)
    }
}

impl std::ops::Deref for GoDuration {
    type Target = Duration;

    fn deref(&self) -> &Duration {
        &self.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn go_durations_parse() {
        assert_eq!(parse("15s"), Ok(Duration::from_secs(15)));
        assert_eq!(parse("1m30s"), Ok(Duration::from_secs(90)));
        assert_eq!(parse("1.5h"), Ok(Duration::from_secs(5400)));
        assert_eq!(parse("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(parse("1500us"), Ok(Duration::from_micros(1500)));
        assert_eq!(parse("2µs"), Ok(Duration::from_micros(2)));
        assert_eq!(parse("7ns"), Ok(Duration::from_nanos(7)));
        assert_eq!(parse("+3s"), Ok(Duration::from_secs(3)));
        assert_eq!(parse(" 0 "), Ok(Duration::ZERO));
        assert_eq!(parse("0s"), Ok(Duration::ZERO));
    }

    #[test]
    fn malformed_or_negative_durations_are_refused_with_the_text() {
        for bad in ["", "10", "-1s", "s", "1x", "1.2.3s", "+", "1s2", "1e3s"] {
            assert!(parse(bad).is_err(), "{bad:?}");
        }
        assert_eq!(parse("1x").unwrap_err().to_string(), "invalid duration \"1x\" (examples: 15s, 1m30s, 250ms)");
    }

    #[test]
    fn durations_format_back_to_what_parses_to_the_same_duration() {
        for d in [
            Duration::ZERO,
            Duration::from_secs(15),
            Duration::from_millis(250),
            Duration::from_millis(1500),
            Duration::from_micros(1500),
            Duration::from_nanos(7),
            Duration::from_secs(3600),
        ] {
            assert_eq!(parse(&format(d)), Ok(d), "{}", format(d));
        }
        assert_eq!(format(Duration::from_secs(15)), "15s");
        assert_eq!(format(Duration::from_millis(250)), "250ms");
        assert_eq!(format(Duration::from_millis(1500)), "1.5s");
    }

    #[test]
    fn the_clap_value_type_parses_and_displays_in_go_syntax() {
        let d: GoDuration = "1m30s".parse().unwrap();
        assert_eq!(*d, Duration::from_secs(90));
        assert_eq!(d.to_string(), "90s");
        assert!("fast".parse::<GoDuration>().is_err());
    }
}
