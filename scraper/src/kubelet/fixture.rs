//! Realistic `/metrics/resource` payloads with known contents, for tests and benchmarks.
//!
//! The text is written by `shardmetrics_plumbing::exposition`, as a kubelet v1.35 writes it
//! (HELP/TYPE lines, families in the kubelet's order including the swap, pod and scrape-error
//! families the parser must skip, Go float formatting, millisecond timestamps). Pods average
//! 1.5 containers, as in the design's scale figures.

use shardmetrics_plumbing::exposition::{ContainerRow, NodeRow, render};

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

/// Writes the `/metrics/resource` text of `spec`, through the one exposition writer the
/// kubelet simulator uses too (`shardmetrics_plumbing::exposition`).
pub fn resource_metrics(spec: &PayloadSpec) -> Vec<u8> {
    let pods = pods(spec);
    let rows: Vec<ContainerRow<'_>> = pods
        .iter()
        .flat_map(|p| {
            p.containers.iter().map(move |c| ContainerRow {
                namespace: &p.namespace,
                pod: &p.name,
                container: &c.name,
                cpu_ns: c.cpu_ns,
                memory_bytes: c.memory_bytes,
                swap_bytes: Some(0),
                start_ms: c.start_time_ms,
            })
        })
        .collect();
    let node = NodeRow {
        cpu_ns: pods.iter().flat_map(|p| &p.containers).map(|c| c.cpu_ns).sum::<u64>() + 1_234_567_890,
        memory_bytes: pods.iter().flat_map(|p| &p.containers).map(|c| c.memory_bytes).sum::<u64>() + (512 << 20),
        swap_bytes: Some(0),
    };
    render(&node, &rows, spec.timestamp_ms).into_bytes()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_same_spec_yields_the_same_bytes_and_pods_average_one_and_a_half_containers() {
        let spec = PayloadSpec { pods: 1000, seed: 1, timestamp_ms: 5 };
        assert_eq!(resource_metrics(&spec), resource_metrics(&spec));
        let containers: usize = pods(&spec).iter().map(|p| p.containers.len()).sum();
        assert!((1400..1600).contains(&containers), "{containers}");
    }
}
