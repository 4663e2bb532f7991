//! Reads Prometheus text (a process's own `/metrics`, as the `prometheus` crate writes it) into
//! samples: for the scenario runner's readings of its children and for tests that check a
//! counter. One reader for all of them; writing a kubelet's exposition is [`crate::exposition`].

use std::collections::BTreeMap;

/// Samples of a Prometheus text exposition: `name{labels}` (exactly as written) to value.
pub type Exposition = BTreeMap<String, f64>;

/// Parses Prometheus text format, skipping comments and lines it cannot read.
pub fn parse_exposition(text: &str) -> Exposition {
    let mut out = Exposition::new();
    for line in text.lines() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        // The value follows the last space outside the label braces; an optional timestamp
        // after it is not written by the Rust prometheus crate.
        let split = match line.rfind('}') {
            Some(close) => line[close..].find(' ').map(|i| close + i),
            None => line.find(' '),
        };
        let Some(at) = split else { continue };
        let (key, value) = (line[..at].trim(), line[at..].split_whitespace().next().unwrap_or(""));
        let v = match value {
            "+Inf" => f64::INFINITY,
            "-Inf" => f64::NEG_INFINITY,
            v => match v.parse::<f64>() {
                Ok(v) => v,
                Err(_) => continue,
            },
        };
        out.insert(key.to_owned(), v);
    }
    out
}

/// The value of label `label` in a key like `name{a="x",label="y"}`.
pub fn label_value<'a>(key: &'a str, label: &str) -> Option<&'a str> {
    let inner = key.split_once('{')?.1.strip_suffix('}')?;
    let needle = format!("{label}=\"");
    let start = inner.find(&needle)? + needle.len();
    let len = inner[start..].find('"')?;
    Some(&inner[start..start + len])
}

/// Every sample of metric `name` (with or without labels).
pub fn samples_of<'a>(e: &'a Exposition, name: &'a str) -> impl Iterator<Item = (&'a String, f64)> + 'a {
    e.iter().filter(move |(k, _)| k.as_str() == name || k.strip_prefix(name).is_some_and(|r| r.starts_with('{'))).map(|(k, v)| (k, *v))
}

/// The sum of every sample of metric `name` (with or without labels); 0 if there is none.
pub fn sum_of(e: &Exposition, name: &str) -> f64 {
    samples_of(e, name).map(|(_, v)| v).sum()
}

/// Cumulative buckets `(le, count)` of histogram `name` (ascending `le`, `+Inf` last).
pub fn histogram_buckets(e: &Exposition, name: &str) -> Vec<(f64, f64)> {
    let bucket = format!("{name}_bucket");
    let mut out: Vec<(f64, f64)> = samples_of(e, &bucket)
        .filter_map(|(k, v)| {
            let le = label_value(k, "le")?;
            let le = if le == "+Inf" { f64::INFINITY } else { le.parse().ok()? };
            Some((le, v))
        })
        .collect();
    out.sort_by(|a, b| a.0.total_cmp(&b.0));
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn expositions_parse_with_labels_and_histograms() {
        let text = "# HELP x y\n# TYPE a counter\na_total 5\nb{result=\"success\"} 7\nb{result=\"timeout\"} 1\nh_bucket{le=\"0.1\"} 3\nh_bucket{le=\"+Inf\"} 4\nh_bucket{le=\"0.01\"} 1\nweird{x=\"a b\"} 2\nbroken\n";
        let e = parse_exposition(text);
        assert_eq!(e["a_total"], 5.0);
        assert_eq!(e["weird{x=\"a b\"}"], 2.0);
        assert_eq!(samples_of(&e, "b").count(), 2);
        assert_eq!(label_value("b{result=\"timeout\"}", "result"), Some("timeout"));
        assert_eq!(histogram_buckets(&e, "h"), vec![(0.01, 1.0), (0.1, 3.0), (f64::INFINITY, 4.0)]);
    }
}
