//! Loopback ports for child programs that bind their own listeners (a shard's admin endpoint, a
//! kube-apiserver, etcd): the parent has to name the port before the child starts.
//!
//! A port the kernel hands out for `127.0.0.1:0` comes from the ephemeral range, from which
//! every outgoing connection also takes its local port. Between the parent finding such a port
//! free and the child binding it, a shard opening thousands of kubelet connections often takes
//! it ("Address already in use": a 5000-node demo lost a shard that way). So [`free_port`]
//! chooses below the ephemeral range, where only explicit binds compete, starting at a
//! per-process pseudo-random place and never handing out the same port twice in one process (until it has gone round the range).

use std::net::{Ipv4Addr, TcpListener};
use std::sync::atomic::{AtomicU32, Ordering};

/// Lowest port handed out (above the well-known and common service ports).
pub const LOWEST: u16 = 10_000;

/// Linux's default first ephemeral port, used when the range cannot be read.
const DEFAULT_EPHEMERAL_START: u16 = 32_768;

/// Ports tried so far by this process (the next candidate's offset).
static TRIED: AtomicU32 = AtomicU32::new(0);

/// A loopback TCP port nothing listens on now, for a child to bind: below the ephemeral range
/// when there is room (see the module docs), else one the kernel picks.
pub fn free_port() -> std::io::Result<u16> {
    let end = ephemeral_start();
    if end > LOWEST {
        let span = u32::from(end - LOWEST);
        let seed = std::process::id().wrapping_mul(2_654_435_761) % span;
        for _ in 0..span.min(4096) {
            let offset = (seed + TRIED.fetch_add(1, Ordering::Relaxed)) % span;
            let port = LOWEST + offset as u16;
            if TcpListener::bind((Ipv4Addr::LOCALHOST, port)).is_ok() {
                return Ok(port);
            }
        }
    }
    Ok(TcpListener::bind((Ipv4Addr::LOCALHOST, 0))?.local_addr()?.port())
}

/// First port of the kernel's ephemeral range (`net.ipv4.ip_local_port_range`).
fn ephemeral_start() -> u16 {
    std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|s| s.split_whitespace().next()?.parse().ok())
        .unwrap_or(DEFAULT_EPHEMERAL_START)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ports_are_below_the_ephemeral_range_bindable_and_never_repeated() {
        let ports: Vec<u16> = (0..50).map(|_| free_port().unwrap()).collect();
        let mut unique = ports.clone();
        unique.sort_unstable();
        unique.dedup();
        assert_eq!(unique.len(), ports.len(), "{ports:?}");
        let end = ephemeral_start();
        for p in ports {
            if end > LOWEST {
                assert!((LOWEST..end).contains(&p), "{p} outside {LOWEST}..{end}");
            }
            drop(TcpListener::bind((Ipv4Addr::LOCALHOST, p)).expect("still free"));
        }
    }
}
