//! Realistic `/metrics/resource` payloads with known contents, for tests and benchmarks.
//!
//! The text mimics a kubelet 1.30+: HELP/TYPE lines, families in the kubelet's order
//! (including the swap, pod and scrape-error families the parser must skip), labels sorted by
//! name, values formatted like Go's `strconv.FormatFloat(v, 'g', -1, 64)` (so `1.6273408e+07`),
//! and millisecond timestamps. Pods average 1.5 containers, as in the design's scale figures.

use std::fmt::Write as _;

/// What payload to generate.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PayloadSpec {
    /// Number of pods on the node.
    pub pods: usize,
    /// Seed of the deterministic generator: the same spec always yields the same bytes.
    pub seed: u64,
    /// The kubelet's sample timestamp of every line, Unix milliseconds.
    pub timestamp_ms: i64,
}

/// Ground truth of one generated container.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FixtureContainer {
    /// Container name.
    pub name: String,
    /// Cumulative CPU, nanoseconds (written as seconds; parses back within 1 ns).
    pub cpu_ns: u64,
    /// Working set, bytes (exact).
    pub memory_bytes: u64,
    /// Start time, Unix milliseconds (exact).
    pub start_time_ms: i64,
}

/// Ground truth of one generated pod.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FixturePod {
    /// Namespace.
    pub namespace: String,
    /// Pod name.
    pub name: String,
    /// Containers, in generation order.
    pub containers: Vec<FixtureContainer>,
}

const NAMESPACES: &[&str] =
    &["kube-system", "default", "monitoring", "ingress-nginx", "payments", "checkout", "search", "istio-system", "logging", "cert-manager"];
const APPS: &[&str] = &[
    "api-gateway", "web", "worker", "redis-cache", "frontend", "backend", "orders", "inventory", "notifier", "prometheus-node-exporter",
    "fluent-bit", "coredns",
];
const ALNUM: &[u8] = b"bcdfghjklmnpqrstvwxz2456789";

/// One step of the SplitMix64 generator (public so tests can derive more values from a seed).
pub fn splitmix(state: u64) -> u64 {
    let mut z = state.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = splitmix(self.0);
        self.0
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }

    fn suffix(&mut self, len: usize) -> String {
        (0..len).map(|_| ALNUM[self.below(ALNUM.len() as u64) as usize] as char).collect()
    }
}

/// The pods and containers [`resource_metrics`] writes for `spec`.
pub fn pods(spec: &PayloadSpec) -> Vec<FixturePod> {
    let mut rng = Rng(spec.seed);
    (0..spec.pods)
        .map(|_| {
            let namespace = NAMESPACES[rng.below(NAMESPACES.len() as u64) as usize].to_owned();
            let app = APPS[rng.below(APPS.len() as u64) as usize];
            let name = format!("{app}-{}-{}", rng.suffix(10), rng.suffix(5));
            let count = if rng.below(2) == 0 { 1 } else { 2 };
            let containers = (0..count)
                .map(|i| FixtureContainer {
                    name: if i == 0 { app.to_owned() } else { "istio-proxy".to_owned() },
                    cpu_ns: rng.below(50_000_000_000_000) + 1,
                    memory_bytes: (rng.below(2_000_000) + 1) * 4096,
                    start_time_ms: spec.timestamp_ms - 1_000 * rng.below(30 * 86_400) as i64 - rng.below(1000) as i64,
                })
                .collect();
            FixturePod { namespace, name, containers }
        })
        .collect()
}

/// Formats `v` like Go's `strconv.FormatFloat(v, 'g', -1, 64)`, as the kubelet does.
pub fn go_float(v: f64) -> String {
    if v == 0.0 {
        return "0".to_owned();
    }
    let e = format!("{v:e}");
    let (mantissa, exp) = e.split_once('e').unwrap_or((&e, "0"));
    let exp: i32 = exp.parse().unwrap_or(0);
    if !(-4..6).contains(&exp) {
        let sign = if exp < 0 { '-' } else { '+' };
        format!("{mantissa}e{sign}{:02}", exp.abs())
    } else {
        format!("{v}")
    }
}

/// Writes the `/metrics/resource` text of `spec`.
pub fn resource_metrics(spec: &PayloadSpec) -> Vec<u8> {
    let pods = pods(spec);
    let ts = spec.timestamp_ms;
    let mut rows: Vec<(&FixturePod, &FixtureContainer)> = pods.iter().flat_map(|p| p.containers.iter().map(move |c| (p, c))).collect();
    rows.sort_by(|a, b| (&a.1.name, &a.0.namespace, &a.0.name).cmp(&(&b.1.name, &b.0.namespace, &b.0.name)));
    let mut out = String::with_capacity(600 * rows.len() + 2048);
    let labels = |p: &FixturePod, c: &FixtureContainer| format!("container=\"{}\",namespace=\"{}\",pod=\"{}\"", c.name, p.namespace, p.name);
    let family = |out: &mut String, name: &str, kind: &str, help: &str| {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
    };

    family(&mut out, "container_cpu_usage_seconds_total", "counter", "[STABLE] Cumulative cpu time consumed by the container in core-seconds");
    for (p, c) in &rows {
        let _ = writeln!(out, "container_cpu_usage_seconds_total{{{}}} {} {ts}", labels(p, c), go_float(c.cpu_ns as f64 / 1e9));
    }
    family(&mut out, "container_memory_working_set_bytes", "gauge", "[STABLE] Current working set of the container in bytes");
    for (p, c) in &rows {
        let _ = writeln!(out, "container_memory_working_set_bytes{{{}}} {} {ts}", labels(p, c), go_float(c.memory_bytes as f64));
    }
    family(&mut out, "container_start_time_seconds", "gauge", "[STABLE] Start time of the container since unix epoch in seconds");
    for (p, c) in &rows {
        let _ = writeln!(out, "container_start_time_seconds{{{}}} {} {ts}", labels(p, c), go_float(c.start_time_ms as f64 / 1e3));
    }
    family(
        &mut out,
        "container_swap_usage_bytes",
        "gauge",
        "[ALPHA] Current amount of the container swap usage in bytes. Reported only on non-windows systems",
    );
    for (p, c) in &rows {
        let _ = writeln!(out, "container_swap_usage_bytes{{{}}} 0 {ts}", labels(p, c));
    }
    let node_cpu: u64 = pods.iter().flat_map(|p| &p.containers).map(|c| c.cpu_ns).sum::<u64>() + 1_234_567_890;
    let node_mem: u64 = pods.iter().flat_map(|p| &p.containers).map(|c| c.memory_bytes).sum::<u64>() + (512 << 20);
    family(&mut out, "node_cpu_usage_seconds_total", "counter", "[STABLE] Cumulative cpu time consumed by the node in core-seconds");
    let _ = writeln!(out, "node_cpu_usage_seconds_total {} {ts}", go_float(node_cpu as f64 / 1e9));
    family(&mut out, "node_memory_working_set_bytes", "gauge", "[STABLE] Current working set of the node in bytes");
    let _ = writeln!(out, "node_memory_working_set_bytes {} {ts}", go_float(node_mem as f64));
    family(&mut out, "node_swap_usage_bytes", "gauge", "[ALPHA] Current swap usage of the node in bytes. Reported only on non-windows systems");
    let _ = writeln!(out, "node_swap_usage_bytes 0 {ts}");
    let mut by_pod: Vec<&FixturePod> = pods.iter().collect();
    by_pod.sort_by(|a, b| (&a.namespace, &a.name).cmp(&(&b.namespace, &b.name)));
    family(&mut out, "pod_cpu_usage_seconds_total", "counter", "[STABLE] Cumulative cpu time consumed by the pod in core-seconds");
    for p in &by_pod {
        let cpu: u64 = p.containers.iter().map(|c| c.cpu_ns).sum();
        let _ = writeln!(out, "pod_cpu_usage_seconds_total{{namespace=\"{}\",pod=\"{}\"}} {} {ts}", p.namespace, p.name, go_float(cpu as f64 / 1e9));
    }
    family(&mut out, "pod_memory_working_set_bytes", "gauge", "[STABLE] Current working set of the pod in bytes");
    for p in &by_pod {
        let mem: u64 = p.containers.iter().map(|c| c.memory_bytes).sum();
        let _ = writeln!(out, "pod_memory_working_set_bytes{{namespace=\"{}\",pod=\"{}\"}} {} {ts}", p.namespace, p.name, go_float(mem as f64));
    }
    family(
        &mut out,
        "pod_swap_usage_bytes",
        "gauge",
        "[ALPHA] Current amount of the pod swap usage in bytes. Reported only on non-windows systems",
    );
    for p in &by_pod {
        let _ = writeln!(out, "pod_swap_usage_bytes{{namespace=\"{}\",pod=\"{}\"}} 0 {ts}", p.namespace, p.name);
    }
    family(&mut out, "resource_scrape_error", "gauge", "[STABLE] 1 if there was an error while getting container metrics, 0 otherwise");
    out.push_str("resource_scrape_error 0\n");
    out.into_bytes()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn floats_are_formatted_like_go() {
        assert_eq!(go_float(16_273_408.0), "1.6273408e+07");
        assert_eq!(go_float(357.35491), "357.35491");
        assert_eq!(go_float(0.000031), "3.1e-05");
        assert_eq!(go_float(0.0001), "0.0001");
        assert_eq!(go_float(123_456.0), "123456");
        assert_eq!(go_float(1_000_000.0), "1e+06");
        assert_eq!(go_float(0.0), "0");
    }

    #[test]
    fn the_same_spec_yields_the_same_bytes_and_pods_average_one_and_a_half_containers() {
        let spec = PayloadSpec { pods: 1000, seed: 1, timestamp_ms: 5 };
        assert_eq!(resource_metrics(&spec), resource_metrics(&spec));
        let containers: usize = pods(&spec).iter().map(|p| p.containers.len()).sum();
        assert!((1400..1600).contains(&containers), "{containers}");
    }
}
