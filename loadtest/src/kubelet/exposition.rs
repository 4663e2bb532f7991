//! `/metrics/resource` exactly as kubelet v1.35 writes it: Prometheus text format 0.0.4, one
//! family per metric sorted by name, HELP/TYPE for every family (also the ones shardmetrics
//! skips: pod_*, *_swap_*, resource_scrape_error), labels sorted by name, values formatted like
//! Go's `strconv.FormatFloat(v, 'g', -1, 64)`, millisecond timestamps.
//!
//! `container_start_time_seconds` carries the start time both as the value (seconds) and as the
//! sample timestamp (milliseconds), as cAdvisor reports it.

use std::fmt::Write as _;

use super::usage::NodeUsage;

/// Content type kubelet answers with.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// Formats a float like Go's `strconv.FormatFloat(v, 'g', -1, 64)` (what the Prometheus text
/// encoder uses): shortest round-trip digits; exponent form (`1.6654336e+07`, `1e-05`) when the
/// decimal exponent is below -4 or at least 6, as Go's shortest `%g` decides.
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

fn escape(v: &str) -> std::borrow::Cow<'_, str> {
    if v.contains(['\\', '"', '\n']) {
        std::borrow::Cow::Owned(v.replace('\\', "\\\\").replace('"', "\\\"").replace('\n', "\\n"))
    } else {
        std::borrow::Cow::Borrowed(v)
    }
}

fn family(out: &mut String, name: &str, help: &str, ty: &str) {
    let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {ty}");
}

/// The response body for a node at sample time `t_ms`.
pub fn render(node: &NodeUsage, t_ms: i64) -> String {
    let containers: Vec<_> = node.pods.values().flat_map(|p| p.containers.iter().map(move |c| (p, c))).collect();
    let mut out = String::with_capacity(600 + containers.len() * 700);
    // Families in name order, as the Go client gathers them.
    family(&mut out, "container_cpu_usage_seconds_total", "[STABLE] Cumulative cpu time consumed by the container in core-seconds", "counter");
    for (p, c) in &containers {
        let _ = writeln!(
            out,
            "container_cpu_usage_seconds_total{{container=\"{}\",namespace=\"{}\",pod=\"{}\"}} {} {t_ms}",
            escape(&c.usage.name),
            escape(&p.namespace),
            escape(&p.name),
            go_float(c.cpu_ns(t_ms) as f64 / 1e9)
        );
    }
    family(&mut out, "container_memory_working_set_bytes", "[STABLE] Current working set of the container in bytes", "gauge");
    for (p, c) in &containers {
        let _ = writeln!(
            out,
            "container_memory_working_set_bytes{{container=\"{}\",namespace=\"{}\",pod=\"{}\"}} {} {t_ms}",
            escape(&c.usage.name),
            escape(&p.namespace),
            escape(&p.name),
            go_float(c.memory_bytes(t_ms) as f64)
        );
    }
    family(&mut out, "container_start_time_seconds", "[STABLE] Start time of the container since unix epoch in seconds", "gauge");
    for (p, c) in &containers {
        let _ = writeln!(
            out,
            "container_start_time_seconds{{container=\"{}\",namespace=\"{}\",pod=\"{}\"}} {} {}",
            escape(&c.usage.name),
            escape(&p.namespace),
            escape(&p.name),
            go_float(c.start_ms as f64 / 1000.0),
            c.start_ms
        );
    }
    family(
        &mut out,
        "container_swap_usage_bytes",
        "[ALPHA] Current amount of the container swap usage in bytes. Reported only on non-windows systems",
        "gauge",
    );
    for (p, c) in &containers {
        let _ = writeln!(
            out,
            "container_swap_usage_bytes{{container=\"{}\",namespace=\"{}\",pod=\"{}\"}} 0 {t_ms}",
            escape(&c.usage.name),
            escape(&p.namespace),
            escape(&p.name)
        );
    }
    family(&mut out, "node_cpu_usage_seconds_total", "[STABLE] Cumulative cpu time consumed by the node in core-seconds", "counter");
    let _ = writeln!(out, "node_cpu_usage_seconds_total {} {t_ms}", go_float(node.cpu_ns(t_ms) as f64 / 1e9));
    family(&mut out, "node_memory_working_set_bytes", "[STABLE] Current working set of the node in bytes", "gauge");
    let _ = writeln!(out, "node_memory_working_set_bytes {} {t_ms}", go_float(node.memory_bytes(t_ms) as f64));
    family(
        &mut out,
        "node_swap_usage_bytes",
        "[ALPHA] Current swap usage of the node in bytes. Reported only on non-windows systems",
        "gauge",
    );
    let _ = writeln!(out, "node_swap_usage_bytes 0 {t_ms}");
    family(&mut out, "pod_cpu_usage_seconds_total", "[STABLE] Cumulative cpu time consumed by the pod in core-seconds", "counter");
    for p in node.pods.values() {
        let cpu: u64 = p.containers.iter().map(|c| c.cpu_ns(t_ms)).sum();
        let _ = writeln!(
            out,
            "pod_cpu_usage_seconds_total{{namespace=\"{}\",pod=\"{}\"}} {} {t_ms}",
            escape(&p.namespace),
            escape(&p.name),
            go_float(cpu as f64 / 1e9)
        );
    }
    family(&mut out, "pod_memory_working_set_bytes", "[STABLE] Current working set of the pod in bytes", "gauge");
    for p in node.pods.values() {
        let mem: u64 = p.containers.iter().map(|c| c.memory_bytes(t_ms)).sum();
        let _ = writeln!(
            out,
            "pod_memory_working_set_bytes{{namespace=\"{}\",pod=\"{}\"}} {} {t_ms}",
            escape(&p.namespace),
            escape(&p.name),
            go_float(mem as f64)
        );
    }
    family(
        &mut out,
        "pod_swap_usage_bytes",
        "[ALPHA] Current amount of the pod swap usage in bytes. Reported only on non-windows systems",
        "gauge",
    );
    for p in node.pods.values() {
        let _ = writeln!(out, "pod_swap_usage_bytes{{namespace=\"{}\",pod=\"{}\"}} 0 {t_ms}", escape(&p.namespace), escape(&p.name));
    }
    family(
        &mut out,
        "resource_scrape_error",
        "[STABLE] 1 if there was an error while getting container metrics, 0 otherwise",
        "gauge",
    );
    out.push_str("resource_scrape_error 0\n");
    out
}

#[cfg(test)]
mod tests {
    use super::super::usage::ContainerUsage;
    use super::*;

    #[test]
    fn floats_format_like_go_shortest_g() {
        assert_eq!(go_float(0.0), "0");
        assert_eq!(go_float(9.826019), "9.826019");
        assert_eq!(go_float(120.0383), "120.0383");
        assert_eq!(go_float(123456.0), "123456");
        assert_eq!(go_float(16654336.0), "1.6654336e+07");
        assert_eq!(go_float(1718004700.0), "1.7180047e+09");
        assert_eq!(go_float(1632233656.6633546), "1.6322336566633546e+09");
        assert_eq!(go_float(0.0001), "0.0001");
        assert_eq!(go_float(0.00001), "1e-05");
        assert_eq!(go_float(1e21), "1e+21");
    }

    #[test]
    fn the_body_has_every_family_in_order_with_known_values() {
        let mut node = NodeUsage::new(1_700_000_000_000, 100, 1_000_000_000);
        node.upsert_pod(
            0,
            "kube-system",
            "coredns-abc",
            vec![(ContainerUsage::constant("coredns", 250, 16_654_336), 1_700_000_000_000)],
        );
        let t = 1_700_000_010_000;
        let text = render(&node, t);
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
        assert_eq!(text, expected);
    }

    #[test]
    fn label_values_are_escaped() {
        assert_eq!(escape("a\"b\\c\nd"), "a\\\"b\\\\c\\nd");
    }
}
