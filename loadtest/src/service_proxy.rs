//! A stand-in for kube-proxy in front of the frontend replicas of the real-control-plane demo.
//!
//! In a cluster the aggregator dials the `shardmetrics-frontend` Service and kube-proxy spreads
//! connections over the ready pods. On loopback there are no pod IPs (Endpoints and
//! EndpointSlices refuse 127.0.0.1), so the Service is of type ExternalName pointing at
//! 127.0.0.1 and this proxy listens on the port the APIService names: each accepted TCP
//! connection goes, untouched (TLS end to end, the frontends' own certificate), to the next
//! backend in round-robin order; a backend that refuses the connection is skipped for that
//! connection. As with kube-proxy, a connection stays with the backend it was given.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, RwLock};

use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::JoinHandle;

/// A running proxy; dropping it stops accepting (connections in flight finish).
#[derive(Debug)]
pub struct ServiceProxy {
    addr: SocketAddr,
    backends: Arc<RwLock<Vec<SocketAddr>>>,
    stop: watch::Sender<bool>,
    task: JoinHandle<()>,
}

impl ServiceProxy {
    /// Listens on `127.0.0.1:port` (0: any free port) with no backends yet.
    pub async fn start(port: u16) -> std::io::Result<ServiceProxy> {
        let listener = TcpListener::bind(("127.0.0.1", port)).await?;
        let addr = listener.local_addr()?;
        let backends: Arc<RwLock<Vec<SocketAddr>>> = Arc::new(RwLock::new(Vec::new()));
        let (stop, mut stopped) = watch::channel(false);
        let next = Arc::new(AtomicUsize::new(0));
        let list = backends.clone();
        let task = tokio::spawn(async move {
            loop {
                let accepted = tokio::select! {
                    _ = stopped.changed() => return,
                    a = listener.accept() => a,
                };
                let Ok((client, _)) = accepted else { continue };
                let candidates = list.read().unwrap_or_else(|p| p.into_inner()).clone();
                let first = next.fetch_add(1, Ordering::Relaxed);
                tokio::spawn(forward(client, candidates, first));
            }
        });
        Ok(ServiceProxy { addr, backends, stop, task })
    }

    /// Where it listens.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Replaces the backends (new connections only).
    pub fn set_backends(&self, backends: Vec<SocketAddr>) {
        *self.backends.write().unwrap_or_else(|p| p.into_inner()) = backends;
    }
}

impl Drop for ServiceProxy {
    fn drop(&mut self) {
        let _ = self.stop.send(true);
        self.task.abort();
    }
}

/// Connects `client` to the first backend, starting at index `first`, that accepts, and copies
/// both ways until either side closes. No backend: the connection is closed.
async fn forward(mut client: TcpStream, backends: Vec<SocketAddr>, first: usize) {
    let n = backends.len();
    for i in 0..n {
        let addr = backends[(first + i) % n];
        if let Ok(mut backend) = TcpStream::connect(addr).await {
            let _ = client.set_nodelay(true);
            let _ = backend.set_nodelay(true);
            let _ = tokio::io::copy_bidirectional(&mut client, &mut backend).await;
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    use super::*;

    async fn echo_server(tag: u8) -> SocketAddr {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        tokio::spawn(async move {
            while let Ok((mut s, _)) = l.accept().await {
                tokio::spawn(async move {
                    let mut buf = [0u8; 1];
                    if s.read_exact(&mut buf).await.is_ok() {
                        let _ = s.write_all(&[buf[0], tag]).await;
                    }
                });
            }
        });
        addr
    }

    async fn ask(proxy: SocketAddr) -> Option<u8> {
        let mut s = TcpStream::connect(proxy).await.ok()?;
        s.write_all(&[7]).await.ok()?;
        let mut buf = [0u8; 2];
        s.read_exact(&mut buf).await.ok()?;
        assert_eq!(buf[0], 7, "bytes pass through untouched");
        Some(buf[1])
    }

    #[tokio::test]
    async fn connections_are_spread_round_robin_and_a_dead_backend_is_skipped() {
        let proxy = ServiceProxy::start(0).await.unwrap();
        assert_eq!(ask(proxy.addr()).await, None, "no backends: the connection is closed");
        let (a, b) = (echo_server(1).await, echo_server(2).await);
        let dead = TcpListener::bind("127.0.0.1:0").await.unwrap().local_addr().unwrap();
        proxy.set_backends(vec![a, dead, b]);
        let mut seen = Vec::new();
        for _ in 0..6 {
            seen.push(ask(proxy.addr()).await.unwrap());
        }
        assert!(seen.contains(&1) && seen.contains(&2), "{seen:?}");
        proxy.set_backends(vec![b]);
        assert_eq!(ask(proxy.addr()).await, Some(2));
    }
}
