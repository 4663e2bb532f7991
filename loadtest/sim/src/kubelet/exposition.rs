//! A simulated node's usage at one instant as kubelet `/metrics/resource` text, written by the
//! project's one exposition writer (`shardmetrics_plumbing::exposition`, kubelet v1.35's
//! format).

use shardmetrics_plumbing::exposition::{ContainerRow, NodeRow};

use super::usage::NodeUsage;

pub use shardmetrics_plumbing::exposition::{CONTENT_TYPE, go_float};

/// The response body for `node` at sample time `t_ms` (Unix milliseconds). Swap lines only on a
/// node with swap accounting.
pub fn render(node: &NodeUsage, t_ms: i64) -> String {
    let rows: Vec<ContainerRow<'_>> = node
        .pods
        .values()
        .flat_map(|p| {
            p.containers.iter().map(move |c| ContainerRow {
                namespace: &p.namespace,
                pod: &p.name,
                container: &c.usage.name,
                cpu_ns: c.cpu_ns(t_ms),
                memory_bytes: c.memory_bytes(t_ms),
                swap_bytes: node.container_swap_bytes(c),
                start_ms: c.start_ms,
            })
        })
        .collect();
    let totals = NodeRow { cpu_ns: node.cpu_ns(t_ms), memory_bytes: node.memory_bytes(t_ms), swap_bytes: node.swap_bytes() };
    shardmetrics_plumbing::exposition::render(&totals, &rows, t_ms)
}

#[cfg(test)]
mod tests {
    use super::super::usage::ContainerUsage;
    use super::*;

    #[test]
    fn a_node_renders_its_containers_with_their_true_usage_and_start_times() {
        let mut node = NodeUsage::new(1_700_000_000_000, 100, 1_000_000_000);
        node.upsert_pod(
            0,
            "kube-system",
            "coredns-abc",
            vec![(ContainerUsage::constant("coredns", 250, 16_654_336), 1_700_000_000_000)],
        );
        let text = render(&node, 1_700_000_010_000);
        for line in [
            "container_cpu_usage_seconds_total{container=\"coredns\",namespace=\"kube-system\",pod=\"coredns-abc\"} 2.5 1700000010000",
            "container_memory_working_set_bytes{container=\"coredns\",namespace=\"kube-system\",pod=\"coredns-abc\"} 1.6654336e+07 1700000010000",
            "container_start_time_seconds{container=\"coredns\",namespace=\"kube-system\",pod=\"coredns-abc\"} 1.7e+09 1700000000000",
            "node_cpu_usage_seconds_total 3.5 1700000010000",
            "node_memory_working_set_bytes 1.016654336e+09 1700000010000",
        ] {
            assert!(text.lines().any(|l| l == line), "missing {line:?} in:\n{text}");
        }
    }
}
