//! Parser for the kubelet's `/metrics/resource` Prometheus text exposition.
//!
//! Restricted to what the Metrics API needs: the five families below. Every line is checked
//! for syntax (a malformed line fails the scrape with its line number), but only lines of the
//! kept families are interpreted. Allocation happens per pod and per container (the domain
//! types own their strings), never per line.
//!
//! Kept families:
//! - `node_cpu_usage_seconds_total`, `node_memory_working_set_bytes` (no labels needed);
//! - `container_cpu_usage_seconds_total`, `container_memory_working_set_bytes`,
//!   `container_start_time_seconds` (labels `namespace`, `pod`, `container`).
//!
//! Partial results win: a sample with an unusable value (NaN, infinite, negative) or missing
//! labels is rejected and counted; a container without both a CPU and a memory sample is
//! skipped and counted; the rest of the scrape still ships.

use std::borrow::Cow;
use std::collections::HashMap;

use shardmetrics_proto::{ContainerSample, NodeScrape, PodSamples, Point};

/// A response body that is not valid `/metrics/resource` text.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ParseError {
    /// A line does not follow the exposition syntax.
    #[error("line {line}, column {column}: expected {expected}, found {found}")]
    Syntax {
        /// 1-based line number.
        line: usize,
        /// 1-based byte column within the line.
        column: usize,
        /// What the parser was looking for.
        expected: &'static str,
        /// A short, printable excerpt of what it found instead.
        found: String,
    },
}

/// What one scrape's text produced.
#[derive(Debug, Clone, PartialEq)]
pub struct Parsed {
    /// The node's scrape, ready to buffer and stream.
    pub scrape: NodeScrape,
    /// Samples of kept families thrown away: NaN/infinite/negative/out-of-range values or a
    /// container sample without `namespace`, `pod` or `container` labels.
    pub rejected_samples: u32,
    /// Containers (and the node itself) left out because their CPU or memory sample was
    /// missing or rejected.
    pub incomplete_containers: u32,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Family {
    NodeCpu,
    NodeMemory,
    ContainerCpu,
    ContainerMemory,
    ContainerStart,
    Other,
}

impl Family {
    fn of(name: &[u8]) -> Family {
        match name {
            b"node_cpu_usage_seconds_total" => Family::NodeCpu,
            b"node_memory_working_set_bytes" => Family::NodeMemory,
            b"container_cpu_usage_seconds_total" => Family::ContainerCpu,
            b"container_memory_working_set_bytes" => Family::ContainerMemory,
            b"container_start_time_seconds" => Family::ContainerStart,
            _ => Family::Other,
        }
    }

    fn is_container(self) -> bool {
        matches!(self, Family::ContainerCpu | Family::ContainerMemory | Family::ContainerStart)
    }
}

/// The three labels that identify a container; everything else is ignored.
#[derive(Default)]
struct ContainerLabels<'a> {
    namespace: Option<Cow<'a, str>>,
    pod: Option<Cow<'a, str>>,
    container: Option<Cow<'a, str>>,
}

/// A value paired with the kubelet's sample time (ms).
type Timed<T> = Option<(T, i64)>;

struct ContainerAcc<'a> {
    name: Cow<'a, str>,
    cpu_ns: Timed<u64>,
    memory_bytes: Timed<u64>,
    start_time_ms: Option<i64>,
}

struct PodAcc<'a> {
    namespace: Cow<'a, str>,
    name: Cow<'a, str>,
    containers: Vec<ContainerAcc<'a>>,
}

/// Parses one `/metrics/resource` response of `node`, read at `scraped_at_ms` (Unix ms; also
/// the timestamp of samples that carry none).
///
/// A container's [`Point::timestamp_ms`] is its CPU sample's timestamp: that is the one rates
/// divide by (the kubelet gives CPU and memory of a container the same stats time anyway).
pub fn parse_resource_metrics(node: &str, body: &[u8], scraped_at_ms: i64) -> Result<Parsed, ParseError> {
    let mut pods: Vec<PodAcc<'_>> = Vec::with_capacity(body.len() / 1024 + 4);
    let mut pod_index: HashMap<(Cow<'_, str>, Cow<'_, str>), usize> = HashMap::with_capacity(body.len() / 1024 + 4);
    let mut node_cpu: Timed<u64> = None;
    let mut node_memory: Timed<u64> = None;
    let mut rejected_samples = 0u32;

    for (index, raw) in body.split(|&b| b == b'\n').enumerate() {
        let line = raw.strip_suffix(b"\r").unwrap_or(raw);
        let mut cur = Cursor { line, pos: 0, number: index + 1 };
        cur.skip_blanks();
        if cur.at_end() || cur.peek() == Some(b'#') {
            continue;
        }
        let name = cur.metric_name()?;
        let family = Family::of(name);
        let mut labels = ContainerLabels::default();
        let mut blank_before_value = cur.skip_blanks();
        if cur.peek() == Some(b'{') {
            cur.labels(family.is_container().then_some(&mut labels))?;
            blank_before_value = cur.skip_blanks();
        }
        if !blank_before_value {
            return Err(cur.error("whitespace before the sample value"));
        }
        let value = cur.value()?;
        let had_blank = cur.skip_blanks();
        let timestamp_ms = if cur.at_end() {
            None
        } else if had_blank {
            Some(cur.timestamp()?)
        } else {
            return Err(cur.error("whitespace after the sample value"));
        };
        cur.skip_blanks();
        if !cur.at_end() {
            return Err(cur.error("end of line after the timestamp"));
        }
        if family == Family::Other {
            continue;
        }
        let ts = timestamp_ms.unwrap_or(scraped_at_ms);
        let converted = match family {
            Family::NodeCpu | Family::ContainerCpu => seconds_to_ns(value).map(|v| v as i128),
            Family::NodeMemory | Family::ContainerMemory => to_u64(value).map(|v| v as i128),
            Family::ContainerStart => seconds_to_ms(value).map(|v| v as i128),
            Family::Other => None,
        };
        let Some(converted) = converted else {
            rejected_samples += 1;
            continue;
        };
        match family {
            Family::NodeCpu => node_cpu = Some((converted as u64, ts)),
            Family::NodeMemory => node_memory = Some((converted as u64, ts)),
            _ => {
                let (Some(namespace), Some(pod), Some(container)) = (labels.namespace, labels.pod, labels.container) else {
                    rejected_samples += 1;
                    continue;
                };
                let acc = container_acc(&mut pods, &mut pod_index, namespace, pod, container);
                match family {
                    Family::ContainerCpu => acc.cpu_ns = Some((converted as u64, ts)),
                    Family::ContainerMemory => acc.memory_bytes = Some((converted as u64, ts)),
                    _ => acc.start_time_ms = Some(converted as i64),
                }
            }
        }
    }

    let mut incomplete_containers = 0u32;
    let node_usage = match (node_cpu, node_memory) {
        (Some((cpu, ts)), Some((mem, _))) => Some(Point { timestamp_ms: ts, cpu_usage_ns: cpu, memory_working_set_bytes: mem }),
        (None, None) => None,
        _ => {
            incomplete_containers += 1;
            None
        }
    };
    let mut out = Vec::with_capacity(pods.len());
    for pod in pods {
        let mut containers = Vec::with_capacity(pod.containers.len());
        for c in pod.containers {
            match (c.cpu_ns, c.memory_bytes) {
                (Some((cpu, ts)), Some((mem, _))) => containers.push(ContainerSample {
                    name: c.name.into_owned(),
                    start_time_ms: c.start_time_ms.unwrap_or(0),
                    usage: Point { timestamp_ms: ts, cpu_usage_ns: cpu, memory_working_set_bytes: mem },
                }),
                _ => incomplete_containers += 1,
            }
        }
        if !containers.is_empty() {
            out.push(PodSamples { namespace: pod.namespace.into_owned(), name: pod.name.into_owned(), containers });
        }
    }
    Ok(Parsed {
        scrape: NodeScrape { node: node.to_owned(), scraped_at_ms, node_usage, pods: out },
        rejected_samples,
        incomplete_containers,
    })
}

fn container_acc<'a, 'p>(
    pods: &'p mut Vec<PodAcc<'a>>,
    pod_index: &mut HashMap<(Cow<'a, str>, Cow<'a, str>), usize>,
    namespace: Cow<'a, str>,
    pod: Cow<'a, str>,
    container: Cow<'a, str>,
) -> &'p mut ContainerAcc<'a> {
    let key = (namespace, pod);
    let i = match pod_index.get(&key) {
        Some(&i) => i,
        None => {
            let i = pods.len();
            pods.push(PodAcc { namespace: key.0.clone(), name: key.1.clone(), containers: Vec::with_capacity(2) });
            pod_index.insert(key, i);
            i
        }
    };
    let containers = &mut pods[i].containers;
    let j = match containers.iter().position(|c| c.name == container) {
        Some(j) => j,
        None => {
            containers.push(ContainerAcc { name: container, cpu_ns: None, memory_bytes: None, start_time_ms: None });
            containers.len() - 1
        }
    };
    &mut containers[j]
}

/// 2^64 as f64: the first value that does not fit a u64.
const U64_LIMIT: f64 = 18_446_744_073_709_551_616.0;

fn to_u64(v: f64) -> Option<u64> {
    let r = v.round();
    (0.0..U64_LIMIT).contains(&r).then_some(r as u64)
}

fn seconds_to_ns(seconds: f64) -> Option<u64> {
    to_u64(seconds * 1e9)
}

fn seconds_to_ms(seconds: f64) -> Option<i64> {
    let r = (seconds * 1e3).round();
    (0.0..i64::MAX as f64).contains(&r).then_some(r as i64)
}

/// A position within one line; every error it makes names the line and column.
struct Cursor<'a> {
    line: &'a [u8],
    pos: usize,
    number: usize,
}

impl<'a> Cursor<'a> {
    fn peek(&self) -> Option<u8> {
        self.line.get(self.pos).copied()
    }

    fn at_end(&self) -> bool {
        self.pos >= self.line.len()
    }

    /// Skips spaces and tabs; says whether there were any.
    fn skip_blanks(&mut self) -> bool {
        let start = self.pos;
        while matches!(self.peek(), Some(b' ' | b'\t')) {
            self.pos += 1;
        }
        self.pos > start
    }

    fn error(&self, expected: &'static str) -> ParseError {
        let rest = self.line.get(self.pos..).unwrap_or_default();
        let found = if rest.is_empty() {
            "end of line".to_owned()
        } else {
            let excerpt: String = String::from_utf8_lossy(&rest[..rest.len().min(24)]).chars().flat_map(char::escape_debug).collect();
            format!("\"{excerpt}\"")
        };
        ParseError::Syntax { line: self.number, column: self.pos + 1, expected, found }
    }

    fn name(&mut self, what: &'static str, colon: bool) -> Result<&'a [u8], ParseError> {
        let start = self.pos;
        match self.peek() {
            Some(b) if b.is_ascii_alphabetic() || b == b'_' || (colon && b == b':') => self.pos += 1,
            _ => return Err(self.error(what)),
        }
        while matches!(self.peek(), Some(b) if b.is_ascii_alphanumeric() || b == b'_' || (colon && b == b':')) {
            self.pos += 1;
        }
        Ok(&self.line[start..self.pos])
    }

    fn metric_name(&mut self) -> Result<&'a [u8], ParseError> {
        self.name("a metric name", true)
    }

    /// Parses `{name="value",...}`; stores `namespace`, `pod` and `container` when `want` is set.
    fn labels(&mut self, mut want: Option<&mut ContainerLabels<'a>>) -> Result<(), ParseError> {
        self.pos += 1; // '{'
        loop {
            self.skip_blanks();
            if self.peek() == Some(b'}') {
                self.pos += 1;
                return Ok(());
            }
            let name = self.name("a label name or '}'", false)?;
            self.skip_blanks();
            if self.peek() != Some(b'=') {
                return Err(self.error("'=' after the label name"));
            }
            self.pos += 1;
            self.skip_blanks();
            let value = self.label_value()?;
            if let Some(labels) = want.as_deref_mut() {
                match name {
                    b"namespace" => labels.namespace = Some(value),
                    b"pod" => labels.pod = Some(value),
                    b"container" => labels.container = Some(value),
                    _ => {}
                }
            }
            self.skip_blanks();
            match self.peek() {
                Some(b',') => self.pos += 1,
                Some(b'}') => {}
                _ => return Err(self.error("',' or '}' after a label value")),
            }
        }
    }

    /// Parses a quoted label value, unescaping `\\`, `\"` and `\n` (borrowed when it has none).
    fn label_value(&mut self) -> Result<Cow<'a, str>, ParseError> {
        if self.peek() != Some(b'"') {
            return Err(self.error("'\"' to open the label value"));
        }
        self.pos += 1;
        let start = self.pos;
        let mut escaped = false;
        loop {
            match self.peek() {
                None => return Err(self.error("'\"' to close the label value")),
                Some(b'"') => break,
                Some(b'\\') => {
                    escaped = true;
                    self.pos += 2;
                    if self.pos > self.line.len() {
                        self.pos = self.line.len();
                        return Err(self.error("an escaped character after '\\'"));
                    }
                }
                Some(_) => self.pos += 1,
            }
        }
        let raw = &self.line[start..self.pos];
        self.pos += 1; // closing quote
        let value = if escaped {
            let mut out = Vec::with_capacity(raw.len());
            let mut i = 0;
            while i < raw.len() {
                if raw[i] == b'\\' {
                    match raw.get(i + 1) {
                        Some(b'\\') => out.push(b'\\'),
                        Some(b'"') => out.push(b'"'),
                        Some(b'n') => out.push(b'\n'),
                        _ => {
                            self.pos = start + i;
                            return Err(self.error("an escape sequence \\\\, \\\" or \\n"));
                        }
                    }
                    i += 2;
                } else {
                    out.push(raw[i]);
                    i += 1;
                }
            }
            String::from_utf8(out).map(Cow::Owned).map_err(|_| {
                self.pos = start;
                self.error("a UTF-8 label value")
            })?
        } else {
            std::str::from_utf8(raw).map(Cow::Borrowed).map_err(|_| {
                self.pos = start;
                self.error("a UTF-8 label value")
            })?
        };
        Ok(value)
    }

    fn token(&mut self) -> &'a [u8] {
        let start = self.pos;
        while matches!(self.peek(), Some(b) if b != b' ' && b != b'\t') {
            self.pos += 1;
        }
        &self.line[start..self.pos]
    }

    /// Parses a float: decimal, exponent, `NaN`, `+Inf`, `-Inf`.
    fn value(&mut self) -> Result<f64, ParseError> {
        let start = self.pos;
        let token = self.token();
        let parsed = std::str::from_utf8(token).ok().filter(|t| is_float_syntax(t.as_bytes())).and_then(|t| t.parse::<f64>().ok());
        parsed.ok_or_else(|| {
            self.pos = start;
            self.error("a sample value (a float, NaN, +Inf or -Inf)")
        })
    }

    /// Parses an integer timestamp in milliseconds.
    fn timestamp(&mut self) -> Result<i64, ParseError> {
        let start = self.pos;
        let token = self.token();
        let ok = !token.is_empty() && token.iter().enumerate().all(|(i, &b)| b.is_ascii_digit() || (i == 0 && b == b'-' && token.len() > 1));
        let parsed = if ok { std::str::from_utf8(token).ok().and_then(|t| t.parse::<i64>().ok()) } else { None };
        parsed.ok_or_else(|| {
            self.pos = start;
            self.error("a timestamp in integer milliseconds")
        })
    }
}

/// Whether `t` is a float as Prometheus writes them; excludes Rust-only spellings such as
/// `infinity` that `str::parse` would also take.
fn is_float_syntax(t: &[u8]) -> bool {
    let body = t.strip_prefix(b"+").or_else(|| t.strip_prefix(b"-")).unwrap_or(t);
    if body.eq_ignore_ascii_case(b"inf") || t.eq_ignore_ascii_case(b"nan") {
        return true;
    }
    !body.is_empty() && body.iter().all(|&b| b.is_ascii_digit() || matches!(b, b'.' | b'e' | b'E' | b'+' | b'-')) && body[0] != b'e' && body[0] != b'E'
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kubelet::fixture;

    const NOW: i64 = 1_700_000_099_000;

    fn parse(text: &str) -> Parsed {
        parse_resource_metrics("node-1", text.as_bytes(), NOW).unwrap()
    }

    fn parse_err(text: &str) -> ParseError {
        parse_resource_metrics("node-1", text.as_bytes(), NOW).unwrap_err()
    }

    const KUBELET_SAMPLE: &str = r#"# HELP container_cpu_usage_seconds_total [STABLE] Cumulative cpu time consumed by the container in core-seconds
# TYPE container_cpu_usage_seconds_total counter
container_cpu_usage_seconds_total{container="coredns",namespace="kube-system",pod="coredns-5d78c9869d-abcde"} 12.345678 1700000000123
container_cpu_usage_seconds_total{container="kube-proxy",namespace="kube-system",pod="kube-proxy-x2x4k"} 3.1e-05 1700000000456
# HELP container_memory_working_set_bytes [STABLE] Current working set of the container in bytes
# TYPE container_memory_working_set_bytes gauge
container_memory_working_set_bytes{container="coredns",namespace="kube-system",pod="coredns-5d78c9869d-abcde"} 1.6273408e+07 1700000000123
container_memory_working_set_bytes{container="kube-proxy",namespace="kube-system",pod="kube-proxy-x2x4k"} 2.4563712e+07 1700000000456
# HELP container_start_time_seconds [STABLE] Start time of the container since unix epoch in seconds
# TYPE container_start_time_seconds gauge
container_start_time_seconds{container="coredns",namespace="kube-system",pod="coredns-5d78c9869d-abcde"} 1.6999e+09 1700000000123
container_start_time_seconds{container="kube-proxy",namespace="kube-system",pod="kube-proxy-x2x4k"} 1.699900001234e+09 1700000000456
# HELP container_swap_usage_bytes [ALPHA] Current amount of the container swap usage in bytes. Reported only on non-windows systems
# TYPE container_swap_usage_bytes gauge
container_swap_usage_bytes{container="coredns",namespace="kube-system",pod="coredns-5d78c9869d-abcde"} 0 1700000000123
# HELP node_cpu_usage_seconds_total [STABLE] Cumulative cpu time consumed by the node in core-seconds
# TYPE node_cpu_usage_seconds_total counter
node_cpu_usage_seconds_total 357.35491 1700000000789
# HELP node_memory_working_set_bytes [STABLE] Current working set of the node in bytes
# TYPE node_memory_working_set_bytes gauge
node_memory_working_set_bytes 1.616273408e+09 1700000000789
# HELP node_swap_usage_bytes [ALPHA] Current swap usage of the node in bytes. Reported only on non-windows systems
# TYPE node_swap_usage_bytes gauge
node_swap_usage_bytes 0 1700000000789
# HELP pod_cpu_usage_seconds_total [STABLE] Cumulative cpu time consumed by the pod in core-seconds
# TYPE pod_cpu_usage_seconds_total counter
pod_cpu_usage_seconds_total{namespace="kube-system",pod="coredns-5d78c9869d-abcde"} 12.4 1700000000123
# HELP pod_memory_working_set_bytes [STABLE] Current working set of the pod in bytes
# TYPE pod_memory_working_set_bytes gauge
pod_memory_working_set_bytes{namespace="kube-system",pod="coredns-5d78c9869d-abcde"} 1.7e+07 1700000000123
# HELP pod_swap_usage_bytes [ALPHA] Current amount of the pod swap usage in bytes. Reported only on non-windows systems
# TYPE pod_swap_usage_bytes gauge
pod_swap_usage_bytes{namespace="kube-system",pod="coredns-5d78c9869d-abcde"} 0 1700000000123
# HELP resource_scrape_error [STABLE] 1 if there was an error while getting container metrics, 0 otherwise
# TYPE resource_scrape_error gauge
resource_scrape_error 0
# HELP scrape_error [ALPHA] 1 if there was an error while getting container metrics, 0 otherwise
# TYPE scrape_error gauge
scrape_error 0
"#;

    #[test]
    fn a_real_kubelet_payload_yields_node_and_container_points() {
        let p = parse(KUBELET_SAMPLE);
        assert_eq!(p.rejected_samples, 0);
        assert_eq!(p.incomplete_containers, 0);
        let s = p.scrape;
        assert_eq!(s.node, "node-1");
        assert_eq!(s.scraped_at_ms, NOW);
        assert_eq!(
            s.node_usage,
            Some(Point { timestamp_ms: 1_700_000_000_789, cpu_usage_ns: 357_354_910_000, memory_working_set_bytes: 1_616_273_408 })
        );
        assert_eq!(
            s.pods,
            vec![
                PodSamples {
                    namespace: "kube-system".into(),
                    name: "coredns-5d78c9869d-abcde".into(),
                    containers: vec![ContainerSample {
                        name: "coredns".into(),
                        start_time_ms: 1_699_900_000_000,
                        usage: Point { timestamp_ms: 1_700_000_000_123, cpu_usage_ns: 12_345_678_000, memory_working_set_bytes: 16_273_408 },
                    }],
                },
                PodSamples {
                    namespace: "kube-system".into(),
                    name: "kube-proxy-x2x4k".into(),
                    containers: vec![ContainerSample {
                        name: "kube-proxy".into(),
                        start_time_ms: 1_699_900_001_234,
                        usage: Point { timestamp_ms: 1_700_000_000_456, cpu_usage_ns: 31_000, memory_working_set_bytes: 24_563_712 },
                    }],
                },
            ]
        );
    }

    #[test]
    fn crlf_line_endings_parse_like_lf() {
        let crlf = KUBELET_SAMPLE.replace('\n', "\r\n");
        assert_eq!(parse(&crlf), parse(KUBELET_SAMPLE));
    }

    #[test]
    fn a_sample_without_timestamp_takes_the_scrape_time() {
        let p = parse("node_cpu_usage_seconds_total 1\nnode_memory_working_set_bytes 2\n");
        assert_eq!(p.scrape.node_usage, Some(Point { timestamp_ms: NOW, cpu_usage_ns: 1_000_000_000, memory_working_set_bytes: 2 }));
    }

    #[test]
    fn labels_in_any_order_with_extra_labels_and_a_trailing_comma_are_accepted() {
        let p = parse(concat!(
            "container_cpu_usage_seconds_total{pod=\"p\",id=\"/kubepods/x\", namespace = \"ns\",container=\"c\",} 2 10\n",
            "container_memory_working_set_bytes{namespace=\"ns\",container=\"c\",image=\"nginx\",pod=\"p\"} 3 10\n",
        ));
        assert_eq!(p.scrape.pods.len(), 1);
        assert_eq!(p.scrape.pods[0].namespace, "ns");
        assert_eq!(p.scrape.pods[0].name, "p");
        assert_eq!(p.scrape.pods[0].containers[0].name, "c");
        assert_eq!(p.scrape.pods[0].containers[0].usage, Point { timestamp_ms: 10, cpu_usage_ns: 2_000_000_000, memory_working_set_bytes: 3 });
        assert_eq!(p.scrape.pods[0].containers[0].start_time_ms, 0, "start time is optional");
    }

    #[test]
    fn escaped_label_values_are_unescaped_and_still_join_cpu_with_memory() {
        let p = parse(concat!(
            "container_cpu_usage_seconds_total{container=\"a\\\"b\\\\c\\nd\",namespace=\"ns\",pod=\"p\"} 1 1\n",
            "container_memory_working_set_bytes{container=\"a\\\"b\\\\c\\nd\",namespace=\"ns\",pod=\"p\"} 1 1\n",
        ));
        assert_eq!(p.scrape.pods[0].containers[0].name, "a\"b\\c\nd");
        assert_eq!(p.incomplete_containers, 0);
    }

    #[test]
    fn exponents_and_signs_in_values_are_understood() {
        let p = parse("node_cpu_usage_seconds_total +1.5E+02\nnode_memory_working_set_bytes 4.2e9\n");
        assert_eq!(p.scrape.node_usage.unwrap().cpu_usage_ns, 150_000_000_000);
        assert_eq!(p.scrape.node_usage.unwrap().memory_working_set_bytes, 4_200_000_000);
    }

    #[test]
    fn cpu_seconds_are_rounded_to_the_nearest_nanosecond() {
        let p = parse("node_cpu_usage_seconds_total 0.0000000016\nnode_memory_working_set_bytes 1\n");
        assert_eq!(p.scrape.node_usage.unwrap().cpu_usage_ns, 2);
    }

    #[test]
    fn nan_and_infinite_samples_are_rejected_and_their_container_skipped() {
        let p = parse(concat!(
            "container_cpu_usage_seconds_total{container=\"c\",namespace=\"ns\",pod=\"p\"} NaN 1\n",
            "container_memory_working_set_bytes{container=\"c\",namespace=\"ns\",pod=\"p\"} 5 1\n",
            "container_cpu_usage_seconds_total{container=\"d\",namespace=\"ns\",pod=\"p\"} 1 1\n",
            "container_memory_working_set_bytes{container=\"d\",namespace=\"ns\",pod=\"p\"} +Inf 1\n",
            "container_cpu_usage_seconds_total{container=\"e\",namespace=\"ns\",pod=\"p\"} -1 1\n",
            "container_memory_working_set_bytes{container=\"e\",namespace=\"ns\",pod=\"p\"} 1 1\n",
            "container_cpu_usage_seconds_total{container=\"ok\",namespace=\"ns\",pod=\"p\"} 1 1\n",
            "container_memory_working_set_bytes{container=\"ok\",namespace=\"ns\",pod=\"p\"} 1 1\n",
        ));
        assert_eq!(p.rejected_samples, 3);
        assert_eq!(p.incomplete_containers, 3);
        assert_eq!(p.scrape.pods[0].containers.iter().map(|c| c.name.as_str()).collect::<Vec<_>>(), vec!["ok"]);
    }

    #[test]
    fn a_container_with_cpu_but_no_memory_is_skipped_and_counted_and_its_empty_pod_dropped() {
        let p = parse(concat!(
            "container_cpu_usage_seconds_total{container=\"c\",namespace=\"ns\",pod=\"lonely\"} 1 1\n",
            "container_start_time_seconds{container=\"c\",namespace=\"ns\",pod=\"lonely\"} 1 1\n",
        ));
        assert_eq!(p.incomplete_containers, 1);
        assert!(p.scrape.pods.is_empty());
    }

    #[test]
    fn a_container_sample_without_pod_label_is_rejected_not_fatal() {
        let p = parse("container_cpu_usage_seconds_total{container=\"c\",namespace=\"ns\"} 1 1\n");
        assert_eq!(p.rejected_samples, 1);
        assert!(p.scrape.pods.is_empty());
    }

    #[test]
    fn a_node_with_only_cpu_has_no_node_usage_and_is_counted() {
        let p = parse("node_cpu_usage_seconds_total 1 1\n");
        assert_eq!(p.scrape.node_usage, None);
        assert_eq!(p.incomplete_containers, 1);
    }

    #[test]
    fn an_empty_body_is_an_empty_scrape() {
        let p = parse("");
        assert_eq!(p.scrape.node_usage, None);
        assert!(p.scrape.pods.is_empty());
        assert_eq!(p.scrape.sample_count(), 0);
    }

    #[test]
    fn other_families_are_skipped_but_still_syntax_checked() {
        let p = parse("pod_cpu_usage_seconds_total{namespace=\"a\",pod=\"b\"} 1 1\nfoo:bar_total 7\n");
        assert!(p.scrape.pods.is_empty());
        let err = parse_err("pod_cpu_usage_seconds_total{namespace=\"a\",pod=\"b\" 1 1\n");
        assert!(matches!(err, ParseError::Syntax { line: 1, .. }), "{err}");
    }

    #[test]
    fn malformed_lines_fail_with_line_column_and_expectation() {
        let cases: &[(&str, usize, usize, &str)] = &[
            ("# ok\n\n9metric 1\n", 3, 1, "a metric name"),
            ("node_cpu_usage_seconds_total\n", 1, 29, "whitespace before the sample value"),
            ("node_cpu_usage_seconds_total abc\n", 1, 30, "a sample value (a float, NaN, +Inf or -Inf)"),
            ("node_cpu_usage_seconds_total infinity\n", 1, 30, "a sample value (a float, NaN, +Inf or -Inf)"),
            ("node_cpu_usage_seconds_total 1 12.5\n", 1, 32, "a timestamp in integer milliseconds"),
            ("node_cpu_usage_seconds_total 1 1 extra\n", 1, 34, "end of line after the timestamp"),
            ("x{a=\"b\" c=\"d\"} 1\n", 1, 9, "',' or '}' after a label value"),
            ("x{a=b} 1\n", 1, 5, "'\"' to open the label value"),
            ("x{a:b=\"c\"} 1\n", 1, 4, "'=' after the label name"),
            ("x{a=\"b} 1\n", 1, 10, "'\"' to close the label value"),
            ("x{a=\"\\t\"} 1\n", 1, 6, "an escape sequence \\\\, \\\" or \\n"),
            ("x{,} 1\n", 1, 3, "a label name or '}'"),
            ("x{a=\"b\"}1\n", 1, 9, "whitespace before the sample value"),
        ];
        for &(text, line, column, expected) in cases {
            match parse_err(text) {
                ParseError::Syntax { line: l, column: c, expected: e, .. } => {
                    assert_eq!((l, c, e), (line, column, expected), "input {text:?}")
                }
            }
        }
    }

    #[test]
    fn the_error_message_is_readable() {
        let err = parse_err("ok 1\nnode_cpu_usage_seconds_total 1 1 extra\n");
        assert_eq!(err.to_string(), "line 2, column 34: expected end of line after the timestamp, found \"extra\"");
    }

    #[test]
    fn invalid_utf8_in_a_label_value_is_an_error_not_a_panic() {
        let mut body = b"x{a=\"".to_vec();
        body.extend_from_slice(&[0xff, 0xfe]);
        body.extend_from_slice(b"\"} 1\n");
        assert!(parse_resource_metrics("n", &body, 0).is_err());
    }

    #[test]
    fn arbitrary_bytes_never_panic() {
        // A deterministic sweep of truncations and byte flips of a real payload.
        let base = fixture::resource_metrics(&fixture::PayloadSpec { pods: 3, seed: 7, timestamp_ms: 1 });
        for cut in 0..base.len() {
            let _ = parse_resource_metrics("n", &base[..cut], 0);
        }
        let mut state = 0x9e37_79b9_7f4a_7c15_u64;
        for _ in 0..2000 {
            let mut b = base.clone();
            for _ in 0..4 {
                state = fixture::splitmix(state);
                let i = (state % b.len() as u64) as usize;
                b[i] = (state >> 32) as u8;
            }
            let _ = parse_resource_metrics("n", &b, 0);
        }
    }

    #[test]
    fn generated_payloads_parse_into_every_pod_and_container() {
        let spec = fixture::PayloadSpec { pods: 110, seed: 3, timestamp_ms: 1_700_000_000_000 };
        let body = fixture::resource_metrics(&spec);
        let p = parse_resource_metrics("n", &body, 0).unwrap();
        let expected = fixture::pods(&spec);
        assert_eq!(p.scrape.pods.len(), 110);
        assert_eq!(p.rejected_samples + p.incomplete_containers, 0);
        for want in &expected {
            let got = p.scrape.pods.iter().find(|g| g.namespace == want.namespace && g.name == want.name).expect("pod present");
            assert_eq!(got.containers.len(), want.containers.len());
            for wc in &want.containers {
                let gc = got.containers.iter().find(|c| c.name == wc.name).expect("container present");
                assert_eq!(gc.usage.memory_working_set_bytes, wc.memory_bytes);
                assert!(gc.usage.cpu_usage_ns.abs_diff(wc.cpu_ns) <= 1, "{} vs {}", gc.usage.cpu_usage_ns, wc.cpu_ns);
                assert_eq!(gc.start_time_ms, wc.start_time_ms);
            }
        }
    }
}
