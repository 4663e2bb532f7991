//! Writes `/metrics/resource` exactly as kubelet v1.35 does, for the kubelet simulator and for
//! the scraper's test fixtures and benchmarks: Prometheus text format 0.0.4, families sorted by
//! name with HELP/TYPE for every one (also those shardmetrics skips: `pod_*`,
//! `resource_scrape_error`), metrics of a family sorted by their label values (label names
//! sorted: `container`, `namespace`, `pod`), values formatted like Go's
//! `strconv.FormatFloat(v, 'g', -1, 64)`, millisecond timestamps.
//!
//! `container_start_time_seconds` carries the start time both as the value (seconds) and as
//! the sample timestamp (milliseconds), as cAdvisor reports it. Swap families are written only
//! for the series that report swap (the kubelet leaves them out where swap is not accounted).

use std::borrow::Cow;
use std::fmt::Write as _;

/// Content type a kubelet answers `/metrics/resource` with.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// One container's sample.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ContainerRow<'a> {
    /// Pod namespace.
    pub namespace: &'a str,
    /// Pod name.
    pub pod: &'a str,
    /// Container name.
    pub container: &'a str,
    /// Cumulative CPU time since the container started, in nanoseconds.
    pub cpu_ns: u64,
    /// Memory working set, in bytes.
    pub memory_bytes: u64,
    /// Swap in use, in bytes; `None` writes no swap line for the container.
    pub swap_bytes: Option<u64>,
    /// Start time of the container, Unix milliseconds.
    pub start_ms: i64,
}

/// The node's own sample.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NodeRow {
    /// Cumulative CPU time of the node, in nanoseconds.
    pub cpu_ns: u64,
    /// Memory working set of the node, in bytes.
    pub memory_bytes: u64,
    /// Swap in use by the node, in bytes; `None` writes no `node_swap_usage_bytes`.
    pub swap_bytes: Option<u64>,
}

/// Formats a float like Go's `strconv.FormatFloat(v, 'g', -1, 64)` (what the Prometheus text
/// encoder uses): shortest round-trip digits, in exponent form (`1.6654336e+07`, `1e-05`) when
/// the decimal exponent is below -4 or at least 6 (`strconv/ftoa.go`: shortest `%g` fixes
/// `eprec` at 6), plain otherwise.
pub fn go_float(v: f64) -> String {
    if v.is_nan() {
        return "NaN".into();
    }
    if v.is_infinite() {
        return if v > 0.0 { "+Inf".into() } else { "-Inf".into() };
    }
    if v == 0.0 {
        return "0".into();
    }
    let sci = format!("{v:e}");
    let (mantissa, exp) = sci.split_once('e').unwrap_or((&sci, "0"));
    let exp: i32 = exp.parse().unwrap_or(0);
    if !(-4..6).contains(&exp) {
        let sign = if exp < 0 { '-' } else { '+' };
        format!("{mantissa}e{sign}{:02}", exp.abs())
    } else {
        format!("{v}")
    }
}

/// A label value escaped for the text format (`\`, `"` and newline).
fn escape(v: &str) -> Cow<'_, str> {
    if v.contains(['\\', '"', '\n']) {
        Cow::Owned(v.replace('\\', "\\\\").replace('"', "\\\"").replace('\n', "\\n"))
    } else {
        Cow::Borrowed(v)
    }
}

fn family(out: &mut String, name: &str, help: &str, ty: &str) {
    let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {ty}");
}

fn container_line(out: &mut String, name: &str, row: &ContainerRow<'_>, value: &str, t_ms: i64) {
    let _ = writeln!(
        out,
        "{name}{{container=\"{}\",namespace=\"{}\",pod=\"{}\"}} {value} {t_ms}",
        escape(row.container),
        escape(row.namespace),
        escape(row.pod)
    );
}

fn pod_line(out: &mut String, name: &str, namespace: &str, pod: &str, value: &str, t_ms: i64) {
    let _ = writeln!(out, "{name}{{namespace=\"{}\",pod=\"{}\"}} {value} {t_ms}", escape(namespace), escape(pod));
}

/// The body of `/metrics/resource` for a node whose samples were taken at `t_ms` (Unix
/// milliseconds). `containers` may come in any order.
pub fn render(node: &NodeRow, containers: &[ContainerRow<'_>], t_ms: i64) -> String {
    let mut rows: Vec<&ContainerRow<'_>> = containers.iter().collect();
    rows.sort_by(|a, b| (a.container, a.namespace, a.pod).cmp(&(b.container, b.namespace, b.pod)));
    let mut out = String::with_capacity(2048 + rows.len() * 700);

    family(&mut out, "container_cpu_usage_seconds_total", "[STABLE] Cumulative cpu time consumed by the container in core-seconds", "counter");
    for r in &rows {
        container_line(&mut out, "container_cpu_usage_seconds_total", r, &go_float(r.cpu_ns as f64 / 1e9), t_ms);
    }
    family(&mut out, "container_memory_working_set_bytes", "[STABLE] Current working set of the container in bytes", "gauge");
    for r in &rows {
        container_line(&mut out, "container_memory_working_set_bytes", r, &go_float(r.memory_bytes as f64), t_ms);
    }
    family(&mut out, "container_start_time_seconds", "[STABLE] Start time of the container since unix epoch in seconds", "gauge");
    for r in &rows {
        container_line(&mut out, "container_start_time_seconds", r, &go_float(r.start_ms as f64 / 1000.0), r.start_ms);
    }
    family(
        &mut out,
        "container_swap_usage_bytes",
        "[ALPHA] Current amount of the container swap usage in bytes. Reported only on non-windows systems",
        "gauge",
    );
    for r in &rows {
        if let Some(swap) = r.swap_bytes {
            container_line(&mut out, "container_swap_usage_bytes", r, &go_float(swap as f64), t_ms);
        }
    }
    family(&mut out, "node_cpu_usage_seconds_total", "[STABLE] Cumulative cpu time consumed by the node in core-seconds", "counter");
    let _ = writeln!(out, "node_cpu_usage_seconds_total {} {t_ms}", go_float(node.cpu_ns as f64 / 1e9));
    family(&mut out, "node_memory_working_set_bytes", "[STABLE] Current working set of the node in bytes", "gauge");
    let _ = writeln!(out, "node_memory_working_set_bytes {} {t_ms}", go_float(node.memory_bytes as f64));
    family(&mut out, "node_swap_usage_bytes", "[ALPHA] Current swap usage of the node in bytes. Reported only on non-windows systems", "gauge");
    if let Some(swap) = node.swap_bytes {
        let _ = writeln!(out, "node_swap_usage_bytes {} {t_ms}", go_float(swap as f64));
    }

    // Pod families: one line per pod, sums of its containers, sorted by (namespace, pod).
    let mut pods: Vec<(&str, &str, u64, u64, Option<u64>)> = Vec::new();
    let mut by_pod: Vec<&ContainerRow<'_>> = containers.iter().collect();
    by_pod.sort_by(|a, b| (a.namespace, a.pod).cmp(&(b.namespace, b.pod)));
    for r in by_pod {
        match pods.last_mut() {
            Some(p) if p.0 == r.namespace && p.1 == r.pod => {
                p.2 += r.cpu_ns;
                p.3 += r.memory_bytes;
                p.4 = match (p.4, r.swap_bytes) {
                    (None, None) => None,
                    (a, b) => Some(a.unwrap_or(0) + b.unwrap_or(0)),
                };
            }
            _ => pods.push((r.namespace, r.pod, r.cpu_ns, r.memory_bytes, r.swap_bytes)),
        }
    }
    family(&mut out, "pod_cpu_usage_seconds_total", "[STABLE] Cumulative cpu time consumed by the pod in core-seconds", "counter");
    for (ns, pod, cpu, _, _) in &pods {
        pod_line(&mut out, "pod_cpu_usage_seconds_total", ns, pod, &go_float(*cpu as f64 / 1e9), t_ms);
    }
    family(&mut out, "pod_memory_working_set_bytes", "[STABLE] Current working set of the pod in bytes", "gauge");
    for (ns, pod, _, mem, _) in &pods {
        pod_line(&mut out, "pod_memory_working_set_bytes", ns, pod, &go_float(*mem as f64), t_ms);
    }
    family(
        &mut out,
        "pod_swap_usage_bytes",
        "[ALPHA] Current amount of the pod swap usage in bytes. Reported only on non-windows systems",
        "gauge",
    );
    for (ns, pod, _, _, swap) in &pods {
        if let Some(swap) = swap {
            pod_line(&mut out, "pod_swap_usage_bytes", ns, pod, &go_float(*swap as f64), t_ms);
        }
    }
    family(&mut out, "resource_scrape_error", "[STABLE] 1 if there was an error while getting container metrics, 0 otherwise", "gauge");
    out.push_str("resource_scrape_error 0\n");
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn floats_format_like_go_shortest_g() {
        assert_eq!(go_float(0.0), "0");
        assert_eq!(go_float(9.826019), "9.826019");
        assert_eq!(go_float(357.35491), "357.35491");
        assert_eq!(go_float(123456.0), "123456");
        assert_eq!(go_float(1_000_000.0), "1e+06");
        assert_eq!(go_float(16654336.0), "1.6654336e+07");
        assert_eq!(go_float(1718004700.0), "1.7180047e+09");
        assert_eq!(go_float(1632233656.6633546), "1.6322336566633546e+09");
        assert_eq!(go_float(0.0001), "0.0001");
        assert_eq!(go_float(0.00001), "1e-05");
        assert_eq!(go_float(0.000031), "3.1e-05");
        assert_eq!(go_float(1e21), "1e+21");
        assert_eq!(go_float(f64::NAN), "NaN");
    }

    #[test]
    fn the_body_has_every_family_in_order_with_known_values() {
        let start = 1_700_000_000_000;
        let t = 1_700_000_010_000;
        let rows = [ContainerRow {
            namespace: "kube-system",
            pod: "coredns-abc",
            container: "coredns",
            cpu_ns: 2_500_000_000,
            memory_bytes: 16_654_336,
            swap_bytes: Some(0),
            start_ms: start,
        }];
        let node = NodeRow { cpu_ns: 3_500_000_000, memory_bytes: 1_016_654_336, swap_bytes: Some(0) };
        let expected = "\
# HELP container_cpu_usage_seconds_total [STABLE] Cumulative cpu time consumed by the container in core-seconds
# TYPE container_cpu_usage_seconds_total counter
container_cpu_usage_seconds_total{container=\"coredns\",namespace=\"kube-system\",pod=\"coredns-abc\"} 2.5 1700000010000
# HELP container_memory_working_set_bytes [STABLE] Current working set of the container in bytes
# TYPE container_memory_working_set_bytes gauge
container_memory_working_set_bytes{container=\"coredns\",namespace=\"kube-system\",pod=\"coredns-abc\"} 1.6654336e+07 1700000010000
# HELP container_start_time_seconds [STABLE] Start time of the container since unix epoch in seconds
# TYPE container_start_time_seconds gauge
container_start_time_seconds{container=\"coredns\",namespace=\"kube-system\",pod=\"coredns-abc\"} 1.7e+09 1700000000000
# HELP container_swap_usage_bytes [ALPHA] Current amount of the container swap usage in bytes. Reported only on non-windows systems
# TYPE container_swap_usage_bytes gauge
container_swap_usage_bytes{container=\"coredns\",namespace=\"kube-system\",pod=\"coredns-abc\"} 0 1700000010000
# HELP node_cpu_usage_seconds_total [STABLE] Cumulative cpu time consumed by the node in core-seconds
# TYPE node_cpu_usage_seconds_total counter
node_cpu_usage_seconds_total 3.5 1700000010000
# HELP node_memory_working_set_bytes [STABLE] Current working set of the node in bytes
# TYPE node_memory_working_set_bytes gauge
node_memory_working_set_bytes 1.016654336e+09 1700000010000
# HELP node_swap_usage_bytes [ALPHA] Current swap usage of the node in bytes. Reported only on non-windows systems
# TYPE node_swap_usage_bytes gauge
node_swap_usage_bytes 0 1700000010000
# HELP pod_cpu_usage_seconds_total [STABLE] Cumulative cpu time consumed by the pod in core-seconds
# TYPE pod_cpu_usage_seconds_total counter
pod_cpu_usage_seconds_total{namespace=\"kube-system\",pod=\"coredns-abc\"} 2.5 1700000010000
# HELP pod_memory_working_set_bytes [STABLE] Current working set of the pod in bytes
# TYPE pod_memory_working_set_bytes gauge
pod_memory_working_set_bytes{namespace=\"kube-system\",pod=\"coredns-abc\"} 1.6654336e+07 1700000010000
# HELP pod_swap_usage_bytes [ALPHA] Current amount of the pod swap usage in bytes. Reported only on non-windows systems
# TYPE pod_swap_usage_bytes gauge
pod_swap_usage_bytes{namespace=\"kube-system\",pod=\"coredns-abc\"} 0 1700000010000
# HELP resource_scrape_error [STABLE] 1 if there was an error while getting container metrics, 0 otherwise
# TYPE resource_scrape_error gauge
resource_scrape_error 0
";
        assert_eq!(render(&node, &rows, t), expected);
    }

    #[test]
    fn rows_are_sorted_like_the_go_client_and_pods_sum_their_containers() {
        let row = |ns, pod, container, cpu_ns| ContainerRow {
            namespace: ns,
            pod,
            container,
            cpu_ns,
            memory_bytes: 1,
            swap_bytes: None,
            start_ms: 0,
        };
        let rows = [row("b", "p", "main", 1_000_000_000), row("a", "q", "sidecar", 0), row("b", "p", "sidecar", 2_000_000_000)];
        let text = render(&NodeRow { cpu_ns: 0, memory_bytes: 0, swap_bytes: None }, &rows, 5);
        let cpu: Vec<&str> = text.lines().filter(|l| l.starts_with("container_cpu")).collect();
        assert_eq!(cpu[0], "container_cpu_usage_seconds_total{container=\"main\",namespace=\"b\",pod=\"p\"} 1 5");
        assert_eq!(cpu[1], "container_cpu_usage_seconds_total{container=\"sidecar\",namespace=\"a\",pod=\"q\"} 0 5");
        assert!(text.contains("pod_cpu_usage_seconds_total{namespace=\"b\",pod=\"p\"} 3 5\n"), "{text}");
        assert!(!text.contains("swap_usage_bytes{"), "no swap lines without swap: {text}");
        assert!(!text.contains("node_swap_usage_bytes 0"), "{text}");
    }

    #[test]
    fn label_values_are_escaped() {
        assert_eq!(escape("a\"b\\c\nd"), "a\\\"b\\\\c\\nd");
    }
}
