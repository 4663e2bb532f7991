//! What the run reads about its processes: CPU time and memory from `/proc`, the ports a child
//! listens on (from `/proc/<pid>/fd` and `/proc/net/tcp*`, so the children can keep binding
//! port 0), and counters from a child's `/metrics` (Prometheus text, read by
//! [`shardmetrics_plumbing::metrics_text`], re-exported here) on its admin port.

use std::collections::BTreeMap;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Empty};

/// Clock ticks per second of /proc CPU times (USER_HZ; 100 on every Linux build that matters).
pub const TICKS_PER_SECOND: f64 = 100.0;

/// One reading of a process from /proc.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProcSample {
    /// User + system CPU time, clock ticks ([`TICKS_PER_SECOND`]).
    pub cpu_ticks: u64,
    /// Resident memory now, KiB.
    pub rss_kib: u64,
    /// Peak resident memory since start (VmHWM), KiB.
    pub peak_rss_kib: u64,
}

/// Reads `/proc/<pid>/stat` and `/proc/<pid>/status`; `None` when the process is gone.
pub fn proc_sample(pid: u32) -> Option<ProcSample> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    parse_proc(&stat, &status)
}

/// Whether process `pid` has exited: gone from /proc, or a zombie nobody reaped yet.
pub fn has_exited(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Err(_) => true,
        Ok(stat) => stat.rsplit_once(')').is_some_and(|(_, rest)| rest.trim_start().starts_with('Z')),
    }
}

/// Parses the two /proc files (separate so it can be tested on fixed text).
pub fn parse_proc(stat: &str, status: &str) -> Option<ProcSample> {
    // Fields after the parenthesised command name (which may contain spaces and parentheses);
    // utime and stime are fields 14 and 15 of the whole line.
    let rest = stat.rsplit_once(')')?.1;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let cpu_ticks = fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?;
    let kib = |key: &str| -> u64 {
        status
            .lines()
            .find(|l| l.starts_with(key))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
    };
    Some(ProcSample { cpu_ticks, rss_kib: kib("VmRSS:"), peak_rss_kib: kib("VmHWM:") })
}

/// Whole-machine CPU time from the first line of `/proc/stat`, clock ticks
/// ([`TICKS_PER_SECOND`]), summed over every core.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct MachineSample {
    /// Ticks spent running anything (user, nice, system, irq, softirq, steal).
    pub busy_ticks: u64,
    /// Every tick, idle and iowait included.
    pub total_ticks: u64,
}

/// Reads `/proc/stat`; `None` where it cannot be read or parsed.
pub fn machine_sample() -> Option<MachineSample> {
    parse_machine(&std::fs::read_to_string("/proc/stat").ok()?)
}

/// Parses the aggregate `cpu` line of `/proc/stat` (separate so it can be tested on fixed text).
/// guest and guest_nice are already inside user and nice, so they are not added again.
pub fn parse_machine(stat: &str) -> Option<MachineSample> {
    let line = stat.lines().find(|l| l.starts_with("cpu "))?;
    let v: Vec<u64> = line.split_whitespace().skip(1).take(8).map(|f| f.parse().ok()).collect::<Option<_>>()?;
    let [user, nice, system, idle, iowait, irq, softirq, steal] = v[..] else { return None };
    let busy_ticks = user + nice + system + irq + softirq + steal;
    Some(MachineSample { busy_ticks, total_ticks: busy_ticks + idle + iowait })
}

/// The TCP ports `pid` listens on (IPv4 and IPv6), ascending.
pub fn listening_ports(pid: u32) -> Vec<u16> {
    let Ok(fds) = std::fs::read_dir(format!("/proc/{pid}/fd")) else { return Vec::new() };
    let inodes: std::collections::HashSet<u64> = fds
        .filter_map(|e| e.ok())
        .filter_map(|e| std::fs::read_link(e.path()).ok())
        .filter_map(|target| {
            let t = target.to_string_lossy().into_owned();
            t.strip_prefix("socket:[")?.strip_suffix(']')?.parse().ok()
        })
        .collect();
    let mut ports: Vec<u16> = ["tcp", "tcp6"]
        .iter()
        .filter_map(|f| std::fs::read_to_string(format!("/proc/{pid}/net/{f}")).ok())
        .flat_map(|table| listening_in_table(&table, &inodes))
        .collect();
    ports.sort_unstable();
    ports.dedup();
    ports
}

/// The local ports of LISTEN (state `0A`) sockets in a `/proc/net/tcp` table whose inode is in
/// `inodes`.
pub fn listening_in_table(table: &str, inodes: &std::collections::HashSet<u64>) -> Vec<u16> {
    table
        .lines()
        .skip(1)
        .filter_map(|line| {
            let f: Vec<&str> = line.split_whitespace().collect();
            let (local, state, inode) = (f.get(1)?, f.get(3)?, f.get(9)?.parse::<u64>().ok()?);
            if *state != "0A" || !inodes.contains(&inode) {
                return None;
            }
            u16::from_str_radix(local.rsplit_once(':')?.1, 16).ok()
        })
        .collect()
}

pub use shardmetrics_plumbing::metrics_text::{Exposition, histogram_buckets, label_value, parse_exposition, samples_of, sum_of};

type PlainClient = hyper_util::client::legacy::Client<hyper_util::client::legacy::connect::HttpConnector, Empty<Bytes>>;

/// Reads `/metrics` of the children over plain HTTP on their admin ports (found once per pid).
pub struct AdminReader {
    client: PlainClient,
    ports: BTreeMap<u32, u16>,
}

impl Default for AdminReader {
    fn default() -> Self {
        let client = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new()).build_http();
        AdminReader { client, ports: BTreeMap::new() }
    }
}

impl AdminReader {
    async fn get(&self, port: u16) -> Option<Exposition> {
        let req = http::Request::get(format!("http://127.0.0.1:{port}/metrics")).body(Empty::new()).ok()?;
        let resp = tokio::time::timeout(Duration::from_secs(3), self.client.request(req)).await.ok()?.ok()?;
        if resp.status() != http::StatusCode::OK {
            return None;
        }
        let body = tokio::time::timeout(Duration::from_secs(5), resp.into_body().collect()).await.ok()?.ok()?.to_bytes();
        let text = std::str::from_utf8(&body).ok()?;
        text.contains("shardmetrics_").then(|| parse_exposition(text))
    }

    /// The exposition of the process `pid` (trying each port it listens on the first time:
    /// the admin port is the one answering plain-HTTP `/metrics`); `None` if it has none.
    pub async fn metrics(&mut self, pid: u32) -> Option<Exposition> {
        if let Some(port) = self.ports.get(&pid) {
            return self.get(*port).await;
        }
        for port in listening_ports(pid) {
            if let Some(e) = self.get(port).await {
                self.ports.insert(pid, port);
                return Some(e);
            }
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_machine_line_sums_busy_ticks_without_counting_guests_twice() {
        let stat = "cpu  100 5 50 800 20 3 2 1 40 0\ncpu0 50 2 25 400 10 1 1 0 20 0\nintr 1 2\n";
        assert_eq!(parse_machine(stat), Some(MachineSample { busy_ticks: 161, total_ticks: 981 }));
        assert_eq!(parse_machine("cpu  1 2 3\n"), None, "too few fields");
        assert_eq!(parse_machine("intr 1\n"), None, "no cpu line");
        assert!(machine_sample().is_some_and(|m| m.total_ticks >= m.busy_ticks));
    }

    #[test]
    fn this_process_can_be_sampled_from_proc() {
        let s = proc_sample(std::process::id()).unwrap();
        assert!(s.rss_kib > 0 && s.peak_rss_kib >= s.rss_kib, "{s:?}");
    }

    #[test]
    fn proc_text_with_odd_command_names_parses() {
        let stat = "42 (a (b) c) S 1 42 42 0 -1 4194560 100 0 0 0 250 50 0 0 20 0 4 0 100 1000 10 18446744073709551615";
        let status = "Name:\tx\nVmHWM:\t  2048 kB\nVmRSS:\t  1024 kB\n";
        assert_eq!(parse_proc(stat, status), Some(ProcSample { cpu_ticks: 300, rss_kib: 1024, peak_rss_kib: 2048 }));
        assert_eq!(parse_proc("garbage", status), None);
    }

    #[test]
    fn listening_sockets_are_found_by_inode_and_state() {
        let table = "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode\n   0: 0100007F:1F90 00000000:0000 0A 00000000:00000000 00:00000000 00000000  1000        0 555 1\n   1: 0100007F:1F91 00000000:0000 01 00000000:00000000 00:00000000 00000000  1000        0 556 1\n   2: 0100007F:1F92 00000000:0000 0A 00000000:00000000 00:00000000 00000000  1000        0 999 1\n";
        let inodes = [555u64, 556].into_iter().collect();
        assert_eq!(listening_in_table(table, &inodes), vec![0x1F90]);
    }

    #[tokio::test]
    async fn this_process_listening_port_is_found() {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = l.local_addr().unwrap().port();
        assert!(listening_ports(std::process::id()).contains(&port));
    }
}
