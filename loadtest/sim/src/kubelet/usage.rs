//! The usage model: what each simulated container and node "uses", as a pure function of time,
//! so that tests can ask the true value for any instant or window.
//!
//! - CPU: each container runs at a constant rate (millicores) per segment; its cumulative counter
//!   is exact integer nanoseconds, `base + rate x (t - segment start)`, so any two samples of a
//!   segment give the rate back exactly. A rate change (a new annotation) starts a new segment
//!   whose base is the counter so far: the counter never goes backwards and the container keeps
//!   its start time, as a real kubelet reports a busier or idler container.
//! - Memory: a sine around a base, `base + amplitude x sin(2π (t - start) / period)`, in whole
//!   bytes.
//! - A restart sets a new start time: the counter starts from zero again (what kubelet reports
//!   for a new container incarnation).
//! - The node's counter is its own overhead rate plus every container on it; CPU of containers
//!   that restarted or left is kept in `retired`, so the node counter never goes backwards.
//! - Swap: a node either accounts swap (it has swap, [`node_swap_capacity_bytes`]) or not. One
//!   that does reports each container's constant swap in use (often 0) and their sum for
//!   itself; one that does not reports no swap lines at all, as a kubelet without swap
//!   accounting (and kwok) does.

use std::f64::consts::TAU;

/// Swap size of a node named `node`, in bytes, or `None` when it has no swap: half of the
/// simulated nodes (by a hash of the name, so every part of the simulator agrees) have 4 GiB.
/// The API server shows it as `status.nodeInfo.swap.capacity` and the kubelet reports swap
/// usage only there.
pub fn node_swap_capacity_bytes(node: &str) -> Option<u64> {
    // FNV-1a: stable across processes and Rust versions.
    let h = node.bytes().fold(0xcbf2_9ce4_8422_2325_u64, |h, b| (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3));
    (h >> 7).is_multiple_of(2).then_some(4 << 30)
}

/// How one container behaves.
#[derive(Debug, Clone, PartialEq)]
pub struct ContainerUsage {
    /// Container name.
    pub name: String,
    /// Constant CPU rate, in millicores (1000 = one core).
    pub cpu_millicores: u64,
    /// Memory working set around which it oscillates, in bytes.
    pub memory_base_bytes: u64,
    /// Amplitude of the oscillation, in bytes (at most the base).
    pub memory_amplitude_bytes: u64,
    /// Period of the oscillation, in milliseconds (at least 1).
    pub memory_period_ms: i64,
    /// Swap in use, in bytes, on a node that has swap (constant).
    pub swap_bytes: u64,
}

impl ContainerUsage {
    /// A container with a fixed CPU rate and a memory working set that varies by ±10% over ten
    /// minutes.
    pub fn new(name: &str, cpu_millicores: u64, memory_base_bytes: u64) -> ContainerUsage {
        ContainerUsage {
            name: name.to_owned(),
            cpu_millicores,
            memory_base_bytes,
            memory_amplitude_bytes: memory_base_bytes / 10,
            memory_period_ms: 600_000,
            swap_bytes: 0,
        }
    }

    /// A container with constant memory (handy for exact assertions).
    pub fn constant(name: &str, cpu_millicores: u64, memory_bytes: u64) -> ContainerUsage {
        ContainerUsage { memory_amplitude_bytes: 0, ..ContainerUsage::new(name, cpu_millicores, memory_bytes) }
    }
}

/// One incarnation of a container on a node.
#[derive(Debug, Clone, PartialEq)]
pub struct ContainerState {
    /// Its behaviour (the current segment's CPU rate).
    pub usage: ContainerUsage,
    /// When this incarnation started, Unix milliseconds (what the kubelet reports).
    pub start_ms: i64,
    /// When the current CPU rate took effect, Unix milliseconds (`start_ms` until a change).
    pub segment_ms: i64,
    /// Cumulative CPU at `segment_ms`, in nanoseconds (0 for the first segment).
    pub segment_base_ns: u64,
}

impl ContainerState {
    /// A new incarnation started at `start_ms`, its counter at zero.
    pub fn started(usage: ContainerUsage, start_ms: i64) -> ContainerState {
        ContainerState { usage, start_ms, segment_ms: start_ms, segment_base_ns: 0 }
    }

    /// Cumulative CPU at `t_ms`, in nanoseconds (0 before the start; exact from the current
    /// segment's start on, its base before it).
    pub fn cpu_ns(&self, t_ms: i64) -> u64 {
        let elapsed = (t_ms - self.segment_ms).max(0) as u64;
        self.segment_base_ns.saturating_add(self.usage.cpu_millicores.saturating_mul(elapsed).saturating_mul(1000))
    }

    /// Changes the CPU rate from `now_ms` on: a new segment continuing the counter.
    fn change_rate(&mut self, now_ms: i64, usage: ContainerUsage) {
        self.segment_base_ns = self.cpu_ns(now_ms);
        self.segment_ms = now_ms.max(self.start_ms);
        self.usage = usage;
    }

    /// Restarts the container at `now_ms`: a new incarnation, its counter from zero.
    fn restart(&mut self, now_ms: i64) {
        self.start_ms = now_ms;
        self.segment_ms = now_ms;
        self.segment_base_ns = 0;
    }

    /// Memory working set at `t_ms`, in bytes.
    pub fn memory_bytes(&self, t_ms: i64) -> u64 {
        let u = &self.usage;
        let amplitude = u.memory_amplitude_bytes.min(u.memory_base_bytes) as f64;
        let phase = ((t_ms - self.start_ms) as f64) / (u.memory_period_ms.max(1) as f64);
        (u.memory_base_bytes as f64 + amplitude * (TAU * phase).sin()).round().max(0.0) as u64
    }
}

/// A pod on a simulated node.
#[derive(Debug, Clone, PartialEq)]
pub struct PodState {
    /// Namespace.
    pub namespace: String,
    /// Name.
    pub name: String,
    /// Its containers, in spec order.
    pub containers: Vec<ContainerState>,
}

/// Everything a simulated node reports.
#[derive(Debug, Clone, PartialEq)]
pub struct NodeUsage {
    /// When the node booted, Unix milliseconds.
    pub boot_ms: i64,
    /// System overhead CPU outside any container, in millicores.
    pub overhead_millicores: u64,
    /// System memory outside any container, in bytes.
    pub overhead_memory_bytes: u64,
    /// Whether the node has swap and its kubelet reports swap usage.
    pub swap_accounted: bool,
    /// CPU of container incarnations no longer present, in nanoseconds.
    pub retired_cpu_ns: u64,
    /// Pods by (namespace, name).
    pub pods: std::collections::BTreeMap<(String, String), PodState>,
}

impl NodeUsage {
    /// A node that booted at `boot_ms`, with the given overhead.
    pub fn new(boot_ms: i64, overhead_millicores: u64, overhead_memory_bytes: u64) -> NodeUsage {
        NodeUsage {
            boot_ms,
            overhead_millicores,
            overhead_memory_bytes,
            swap_accounted: false,
            retired_cpu_ns: 0,
            pods: Default::default(),
        }
    }

    /// Node swap in use, in bytes (the sum of its containers'), or `None` without swap
    /// accounting.
    pub fn swap_bytes(&self) -> Option<u64> {
        self.swap_accounted.then(|| self.pods.values().flat_map(|p| &p.containers).map(|c| c.usage.swap_bytes).sum())
    }

    /// A container's swap in use, in bytes, as this node reports it (`None` without swap
    /// accounting).
    pub fn container_swap_bytes(&self, container: &ContainerState) -> Option<u64> {
        self.swap_accounted.then_some(container.usage.swap_bytes)
    }

    /// Cumulative node CPU at `t_ms` in nanoseconds, given the current set of containers (exact
    /// for any `t_ms` after the last change of that set).
    pub fn cpu_ns(&self, t_ms: i64) -> u64 {
        let own = self.overhead_millicores.saturating_mul((t_ms - self.boot_ms).max(0) as u64).saturating_mul(1000);
        let containers: u64 = self.pods.values().flat_map(|p| &p.containers).map(|c| c.cpu_ns(t_ms)).sum();
        own + self.retired_cpu_ns + containers
    }

    /// Node memory working set at `t_ms`, in bytes.
    pub fn memory_bytes(&self, t_ms: i64) -> u64 {
        self.overhead_memory_bytes + self.pods.values().flat_map(|p| &p.containers).map(|c| c.memory_bytes(t_ms)).sum::<u64>()
    }

    /// Average node CPU over `[t1_ms, t2_ms]`, in cores (exact when the container set did not
    /// change in the window).
    pub fn cpu_cores_between(&self, t1_ms: i64, t2_ms: i64) -> f64 {
        if t2_ms <= t1_ms {
            return 0.0;
        }
        (self.cpu_ns(t2_ms) as f64 - self.cpu_ns(t1_ms) as f64) / ((t2_ms - t1_ms) as f64 * 1e6)
    }

    /// Adds or replaces a pod at `now_ms`. Containers kept by name keep their incarnation (and
    /// counter) unless reported with a later start time (a restart); containers that disappear
    /// retire their CPU.
    pub fn upsert_pod(&mut self, now_ms: i64, namespace: &str, name: &str, containers: Vec<(ContainerUsage, i64)>) {
        let key = (namespace.to_owned(), name.to_owned());
        let old = self.pods.remove(&key);
        let mut new = PodState { namespace: namespace.to_owned(), name: name.to_owned(), containers: Vec::new() };
        let mut old_containers = old.map(|p| p.containers).unwrap_or_default();
        for (usage, start_ms) in containers {
            match old_containers.iter().position(|c| c.usage.name == usage.name) {
                Some(i) => {
                    let mut kept = old_containers.remove(i);
                    if start_ms > kept.start_ms {
                        // Reported with a later start: a restart happened.
                        self.retired_cpu_ns += kept.cpu_ns(now_ms);
                        kept.restart(start_ms);
                        kept.usage = usage;
                    } else if kept.usage.cpu_millicores != usage.cpu_millicores {
                        // A rate change is a new segment of the same incarnation.
                        kept.change_rate(now_ms, usage);
                    } else {
                        kept.usage = usage;
                    }
                    new.containers.push(kept);
                }
                None => new.containers.push(ContainerState::started(usage, start_ms)),
            }
        }
        for gone in old_containers {
            self.retired_cpu_ns += gone.cpu_ns(now_ms);
        }
        self.pods.insert(key, new);
    }

    /// Removes a pod at `now_ms`, retiring its CPU; returns whether it was there.
    pub fn remove_pod(&mut self, now_ms: i64, namespace: &str, name: &str) -> bool {
        match self.pods.remove(&(namespace.to_owned(), name.to_owned())) {
            Some(p) => {
                self.retired_cpu_ns += p.containers.iter().map(|c| c.cpu_ns(now_ms)).sum::<u64>();
                true
            }
            None => false,
        }
    }

    /// Restarts a container at `now_ms`: a new incarnation whose counter starts at zero.
    /// Returns whether the container exists.
    pub fn restart_container(&mut self, now_ms: i64, namespace: &str, pod: &str, container: &str) -> bool {
        let Some(p) = self.pods.get_mut(&(namespace.to_owned(), pod.to_owned())) else { return false };
        let Some(c) = p.containers.iter_mut().find(|c| c.usage.name == container) else { return false };
        self.retired_cpu_ns += c.cpu_ns(now_ms);
        c.restart(now_ms);
        true
    }

    /// A container's current incarnation.
    pub fn container(&self, namespace: &str, pod: &str, container: &str) -> Option<&ContainerState> {
        self.pods.get(&(namespace.to_owned(), pod.to_owned()))?.containers.iter().find(|c| c.usage.name == container)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_container_counter_grows_at_exactly_its_rate() {
        let c = ContainerState::started(ContainerUsage::new("c", 250, 100 << 20), 1_000);
        assert_eq!(c.cpu_ns(500), 0);
        assert_eq!(c.cpu_ns(2_000), 250_000_000, "a quarter core for one second");
        assert_eq!(c.cpu_ns(61_000), 15_000_000_000);
    }

    #[test]
    fn memory_oscillates_around_the_base_within_the_amplitude() {
        let c = ContainerState::started(ContainerUsage::new("c", 1, 1_000_000), 0);
        assert_eq!(c.memory_bytes(0), 1_000_000);
        assert_eq!(c.memory_bytes(150_000), 1_100_000, "a quarter period is the peak");
        assert_eq!(c.memory_bytes(450_000), 900_000);
        let flat = ContainerState::started(ContainerUsage::constant("c", 1, 42), 0);
        assert_eq!(flat.memory_bytes(123_456), 42);
    }

    #[test]
    fn the_node_counter_never_goes_backwards_across_restarts_and_removals() {
        let mut n = NodeUsage::new(0, 100, 1 << 30);
        n.upsert_pod(0, "ns", "p", vec![(ContainerUsage::constant("a", 500, 10), 0), (ContainerUsage::constant("b", 400, 20), 0)]);
        assert_eq!(n.cpu_cores_between(1_000, 3_000), 1.0);
        assert_eq!(n.memory_bytes(5), (1 << 30) + 30);
        let before = n.cpu_ns(10_000);
        assert!(n.restart_container(10_000, "ns", "p", "a"));
        assert_eq!(n.container("ns", "p", "a").unwrap().cpu_ns(10_000), 0);
        assert_eq!(n.cpu_ns(10_000), before);
        assert!(n.remove_pod(20_000, "ns", "p"));
        assert!(n.cpu_ns(20_000) >= before);
        assert!((n.cpu_cores_between(20_000, 22_000) - 0.1).abs() < 1e-12);
        assert!(!n.restart_container(1, "ns", "p", "a"));
    }

    #[test]
    fn upserting_a_pod_keeps_running_containers_and_retires_removed_ones() {
        let mut n = NodeUsage::new(0, 0, 0);
        n.upsert_pod(0, "ns", "p", vec![(ContainerUsage::constant("a", 1000, 1), 0), (ContainerUsage::constant("b", 1000, 1), 0)]);
        let total = n.cpu_ns(5_000);
        n.upsert_pod(5_000, "ns", "p", vec![(ContainerUsage::constant("a", 1000, 1), 0)]);
        assert_eq!(n.container("ns", "p", "a").unwrap().start_ms, 0, "a kept its incarnation");
        assert_eq!(n.cpu_ns(5_000), total);
        n.upsert_pod(6_000, "ns", "p", vec![(ContainerUsage::constant("a", 1000, 1), 6_000)]);
        assert_eq!(n.container("ns", "p", "a").unwrap().cpu_ns(6_000), 0, "a later start is a restart");
        assert_eq!(n.cpu_ns(6_000), total + 1_000_000_000);
    }

    #[test]
    fn a_rate_change_continues_the_counter_and_keeps_the_start_time() {
        let mut n = NodeUsage::new(0, 0, 0);
        n.upsert_pod(0, "ns", "p", vec![(ContainerUsage::constant("a", 300, 1), 0)]);
        let node_before = n.cpu_ns(10_000);
        n.upsert_pod(10_000, "ns", "p", vec![(ContainerUsage::constant("a", 10, 1), 0)]);
        let a = n.container("ns", "p", "a").unwrap();
        assert_eq!(a.start_ms, 0, "the same incarnation: no restart for the frontend to see");
        assert_eq!(a.cpu_ns(10_000), 3_000_000_000, "the counter goes on from where it was");
        assert_eq!(a.cpu_ns(12_000) - a.cpu_ns(10_000), 20_000_000, "at the new rate");
        assert_eq!(n.cpu_ns(10_000), node_before);
    }
}
