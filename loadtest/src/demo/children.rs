//! The demo's child processes: how shards and frontends are started ([`Spawner`]), and the set
//! of running ones ([`Children`]), which a StatefulSet and a Deployment would keep: a child
//! that dies on its own is started again after a short back-off (1 s, doubling up to 16 s,
//! back to 1 s once it ran a minute), a shard under the same name, a frontend under its name on
//! a new port. Children stopped on purpose (a fault, a scale-down) are not restarted.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use tokio::process::{Child, Command};
use tokio::time::Instant;

use super::{DemoError, LEASE_NAMESPACE, io};

/// One child process.
pub(crate) struct ChildProc {
    pub(crate) name: String,
    pub(crate) child: Child,
    pub(crate) log: PathBuf,
    /// Its plain admin address (`/readyz`, `/metrics`).
    pub(crate) admin: SocketAddr,
    /// A frontend's secure address.
    pub(crate) secure: Option<SocketAddr>,
    /// When it was started (a child that ran long enough before crashing restarts at once).
    pub(crate) started: tokio::time::Instant,
}

/// How to start children: everything [`Demo::start`] decided, so that shards and frontends
/// started later (restarts, scale-up, replacements) get the same flags.
#[derive(Debug, Clone)]
pub(crate) struct Spawner {
    pub(crate) exe: PathBuf,
    /// The shards' program ([`super::DemoConfig::scraper_program`]); `None`: `exe scraper`.
    pub(crate) scraper_program: Option<PathBuf>,
    /// The frontends' program ([`super::DemoConfig::frontend_program`]); `None`: `exe frontend`.
    pub(crate) frontend_program: Option<PathBuf>,
    pub(crate) dir: PathBuf,
    pub(crate) scraper_kubeconfig: PathBuf,
    pub(crate) frontend_kubeconfig: PathBuf,
    pub(crate) kubelet_ca: PathBuf,
    pub(crate) kubelet_insecure_tls: bool,
    pub(crate) resolution: String,
    pub(crate) request_timeout: String,
    pub(crate) log_level: String,
    pub(crate) lease_duration: Option<Duration>,
    pub(crate) lease_renew_period: Option<Duration>,
    pub(crate) metric_resolution: Duration,
    pub(crate) kubelet_request_timeout: Duration,
    pub(crate) frontend_max_staleness: Option<Duration>,
    pub(crate) frontend_max_requests_inflight: Option<usize>,
    /// The frontends' serving certificate and key (`--tls-cert-file`, `--tls-private-key-file`);
    /// self-signed when `None`.
    pub(crate) frontend_tls: Option<(PathBuf, PathBuf)>,
}

/// The scraper's `--lease-duration` default.
pub(crate) const DEFAULT_LEASE_DURATION: Duration = Duration::from_secs(15);

impl Spawner {
    pub(crate) fn log(&self, name: &str) -> PathBuf {
        self.dir.join(format!("{name}.log"))
    }

    /// Starts shard `name` (its log appended to, so a restarted shard's earlier log is kept).
    pub(crate) fn scraper(&self, name: &str) -> Result<ChildProc, DemoError> {
        let admin = SocketAddr::from(([127, 0, 0, 1], free_port()?));
        let mut args: Vec<String> = [
            "--shard-id",
            name,
            "--kubeconfig",
            &self.scraper_kubeconfig.display().to_string(),
            "--lease-namespace",
            LEASE_NAMESPACE,
            "--grpc-bind-address",
            "127.0.0.1:0",
            "--admin-bind-address",
            &admin.to_string(),
            "--metric-resolution",
            &self.resolution,
            "--kubelet-request-timeout",
            &self.request_timeout,
            "--log-level",
            &self.log_level,
        ]
        .iter()
        .map(|s| (*s).to_owned())
        .collect();
        if self.kubelet_insecure_tls {
            args.push("--kubelet-insecure-tls".into());
        } else {
            args.extend(["--kubelet-certificate-authority".into(), self.kubelet_ca.display().to_string()]);
        }
        if let Some(d) = self.lease_duration {
            args.extend(["--lease-duration".into(), flag_duration(d)]);
        }
        if let Some(d) = self.lease_renew_period {
            args.extend(["--lease-renew-period".into(), flag_duration(d)]);
        }
        let mut c = spawn(&Launch::new(&self.exe, self.scraper_program.as_deref(), "scraper"), name, &args, &self.log(name))?;
        c.admin = admin;
        Ok(c)
    }

    /// Starts frontend `name` on a free port.
    pub(crate) fn frontend(&self, name: &str) -> Result<ChildProc, DemoError> {
        let port = free_port()?;
        let admin = SocketAddr::from(([127, 0, 0, 1], free_port()?));
        let mut args: Vec<String> = [
            "--replica-name",
            name,
            "--kubeconfig",
            &self.frontend_kubeconfig.display().to_string(),
            "--lease-namespace",
            LEASE_NAMESPACE,
            "--bind-address",
            "127.0.0.1",
            "--secure-port",
            &port.to_string(),
            "--admin-bind-address",
            &admin.to_string(),
            "--metric-resolution",
            &self.resolution,
            "--log-level",
            &self.log_level,
        ]
        .iter()
        .map(|s| (*s).to_owned())
        .collect();
        if let Some(d) = self.frontend_max_staleness {
            args.extend(["--max-staleness".into(), flag_duration(d)]);
        }
        if let Some(n) = self.frontend_max_requests_inflight {
            args.extend(["--max-requests-inflight".into(), n.to_string()]);
        }
        if let Some((cert, key)) = &self.frontend_tls {
            args.extend(["--tls-cert-file".into(), cert.display().to_string()]);
            args.extend(["--tls-private-key-file".into(), key.display().to_string()]);
        }
        let mut c = spawn(&Launch::new(&self.exe, self.frontend_program.as_deref(), "frontend"), name, &args, &self.log(name))?;
        c.admin = admin;
        c.secure = Some(SocketAddr::from(([127, 0, 0, 1], port)));
        Ok(c)
    }
}

/// A loopback port for a child to bind ([`shardmetrics_plumbing::port::free_port`]).
pub(crate) fn free_port() -> Result<u16, DemoError> {
    shardmetrics_plumbing::port::free_port().map_err(io("finding a free port"))
}

/// Formats a duration the way the shardmetrics flags read it (`15s`, `1500ms`).
pub(crate) fn flag_duration(d: Duration) -> String {
    if d.subsec_millis() == 0 { format!("{}s", d.as_secs()) } else { format!("{}ms", d.as_millis()) }
}

/// An executable to start a child from, and the hidden subcommand it needs before the role's
/// flags (none for a program of its own).
pub(crate) struct Launch<'a> {
    pub(crate) program: &'a Path,
    pub(crate) role: Option<&'a str>,
}

impl<'a> Launch<'a> {
    /// Role `role` as `program` with its own flags when there is one, else as the runner `exe`'s
    /// hidden subcommand of that name.
    pub(crate) fn new(exe: &'a Path, program: Option<&'a Path>, role: &'a str) -> Launch<'a> {
        match program {
            Some(program) => Launch { program, role: None },
            None => Launch { program: exe, role: Some(role) },
        }
    }
}

/// The command line's start, for reports: `program`, or `exe role`.
impl std::fmt::Display for Launch<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.role {
            Some(role) => write!(f, "{} {role}", self.program.display()),
            None => write!(f, "{}", self.program.display()),
        }
    }
}

pub(crate) fn spawn(launch: &Launch<'_>, name: &str, args: &[String], log: &Path) -> Result<ChildProc, DemoError> {
    let out = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)
        .map_err(io(format!("opening {}", log.display())))?;
    let err = out.try_clone().map_err(io("duplicating a log file handle"))?;
    let mut cmd = Command::new(launch.program);
    cmd.args(launch.role).args(args).stdin(Stdio::null()).stdout(out).stderr(err).kill_on_drop(true);
    // The children get their settings from flags only: nothing from the demo's environment.
    for key in shardmetrics_plumbing::process::shardmetrics_env_vars() {
        cmd.env_remove(key);
    }
    for key in ["KUBECONFIG", "POD_NAME", "POD_NAMESPACE", "POD_IP"] {
        cmd.env_remove(key);
    }
    let child = cmd.spawn().map_err(io(format!("starting {name} ({})", launch.program.display())))?;
    let unset = SocketAddr::from(([127, 0, 0, 1], 0));
    Ok(ChildProc { name: name.to_owned(), child, log: log.to_owned(), admin: unset, secure: None, started: tokio::time::Instant::now() })
}


/// First restart delay of a crashed child.
const RESTART_BACKOFF_MIN: Duration = Duration::from_secs(1);
/// Longest restart delay of a child that keeps crashing.
const RESTART_BACKOFF_MAX: Duration = Duration::from_secs(16);
/// A child that ran this long before it died restarts after the shortest delay again.
const RESTART_BACKOFF_RESET: Duration = Duration::from_secs(60);

/// Something the supervisor did, for the demo to print.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SupervisorEvent {
    /// A child exited on its own; it is started again after `after`.
    Exited {
        /// Which child.
        name: String,
        /// How it exited.
        status: String,
        /// The restart delay.
        after: Duration,
    },
    /// A crashed child runs again.
    Restarted {
        /// Which child.
        name: String,
        /// Its new process id.
        pid: u32,
    },
    /// A crashed child could not be started again (tried again after the next delay).
    RestartFailed {
        /// Which child.
        name: String,
        /// Why.
        error: String,
    },
}

/// A crashed child waiting for its restart.
#[derive(Debug)]
struct Pending {
    name: String,
    at: Instant,
    delay: Duration,
}

/// The running shards and frontends of a demo, with the flags every later one gets.
pub(crate) struct Children {
    pub(crate) procs: Vec<ChildProc>,
    pub(crate) spawner: Spawner,
    /// Frontends started so far (names are never reused, so logs are never mixed).
    frontends_started: usize,
    /// Crashed children waiting for their restart.
    pending: Vec<Pending>,
    /// The last restart delay of each child that crashed.
    delays: HashMap<String, Duration>,
}

impl Children {
    pub(crate) fn new(spawner: Spawner) -> Children {
        Children { procs: Vec::new(), spawner, frontends_started: 0, pending: Vec::new(), delays: HashMap::new() }
    }

    /// Starts shards `scraper-0..shards` and frontends `frontend-0..frontends`.
    pub(crate) fn start_all(&mut self, shards: usize, frontends: usize) -> Result<(), DemoError> {
        for i in 0..shards {
            self.start_shard(i)?;
        }
        for _ in 0..frontends {
            self.start_frontend()?;
        }
        Ok(())
    }

    /// Secure addresses of the running frontends, in start order.
    pub(crate) fn frontends(&self) -> Vec<SocketAddr> {
        self.procs.iter().filter_map(|c| c.secure).collect()
    }

    /// (name, pid) of the running children, scrapers first.
    pub(crate) fn pids(&self) -> Vec<(String, u32)> {
        self.procs.iter().filter_map(|c| c.child.id().map(|pid| (c.name.clone(), pid))).collect()
    }

    /// Starts shard `scraper-{id}`; fails if it runs.
    pub(crate) fn start_shard(&mut self, id: usize) -> Result<String, DemoError> {
        let name = format!("scraper-{id}");
        if self.procs.iter().any(|c| c.name == name) {
            return Err(DemoError::Io { what: format!("starting {name}"), source: std::io::Error::other("already running") });
        }
        let c = self.spawner.scraper(&name)?;
        self.procs.push(c);
        Ok(name)
    }

    /// Starts the next frontend on a new port; returns its name and secure address.
    pub(crate) fn start_frontend(&mut self) -> Result<(String, SocketAddr), DemoError> {
        let name = format!("frontend-{}", self.frontends_started);
        let c = self.spawner.frontend(&name)?;
        let addr = c.secure.unwrap_or_else(|| SocketAddr::from(([127, 0, 0, 1], 0)));
        self.procs.push(c);
        self.frontends_started += 1;
        Ok((name, addr))
    }

    /// Removes a child from the set (it will not be restarted), returning it.
    pub(crate) fn take(&mut self, name: &str) -> Option<ChildProc> {
        self.pending.retain(|p| p.name != name);
        let i = self.procs.iter().position(|c| c.name == name)?;
        Some(self.procs.remove(i))
    }

    /// A child that exited, if any: (name, status, log).
    pub(crate) fn exited(&mut self) -> Option<(String, std::process::ExitStatus, PathBuf)> {
        for c in &mut self.procs {
            if let Ok(Some(status)) = c.child.try_wait() {
                return Some((c.name.clone(), status, c.log.clone()));
            }
        }
        None
    }

    /// Reaps children that died on their own and starts those whose back-off has passed.
    pub(crate) fn supervise(&mut self) -> Vec<SupervisorEvent> {
        let mut events = Vec::new();
        let now = Instant::now();
        let mut i = 0;
        while i < self.procs.len() {
            let exited = matches!(self.procs[i].child.try_wait(), Ok(Some(_)));
            if !exited {
                i += 1;
                continue;
            }
            let mut c = self.procs.remove(i);
            let status = c.child.try_wait().ok().flatten().map(|s| s.to_string()).unwrap_or_default();
            let previous = self.delays.get(&c.name).copied();
            let delay = match previous {
                Some(d) if now.duration_since(c.started) < RESTART_BACKOFF_RESET => (d * 2).min(RESTART_BACKOFF_MAX),
                _ => RESTART_BACKOFF_MIN,
            };
            self.delays.insert(c.name.clone(), delay);
            events.push(SupervisorEvent::Exited { name: c.name.clone(), status, after: delay });
            self.pending.push(Pending { name: c.name, at: now + delay, delay });
        }
        let due: Vec<Pending> = {
            let (due, later): (Vec<Pending>, Vec<Pending>) = self.pending.drain(..).partition(|p| p.at <= now);
            self.pending = later;
            due
        };
        for p in due {
            let started = if p.name.starts_with("scraper-") { self.spawner.scraper(&p.name) } else { self.spawner.frontend(&p.name) };
            match started {
                Ok(c) => {
                    events.push(SupervisorEvent::Restarted { name: p.name, pid: c.child.id().unwrap_or(0) });
                    self.procs.push(c);
                }
                Err(e) => {
                    events.push(SupervisorEvent::RestartFailed { name: p.name.clone(), error: e.to_string() });
                    self.pending.push(Pending { at: now + p.delay, ..p });
                }
            }
        }
        events
    }

    /// Stops every child gracefully (SIGTERM, then SIGKILL after 10 s).
    pub(crate) async fn shutdown(&mut self) {
        self.pending.clear();
        for c in &self.procs {
            if let Some(pid) = c.child.id() {
                // SIGTERM by pid through kill(1): the crate forbids unsafe code, so no libc call.
                let _ = std::process::Command::new("kill").arg("-TERM").arg(pid.to_string()).status();
            }
        }
        for c in &mut self.procs {
            if tokio::time::timeout(Duration::from_secs(10), c.child.wait()).await.is_err() {
                let _ = c.child.start_kill();
                let _ = c.child.wait().await;
            }
        }
        self.procs.clear();
    }
}

/// Stops `c` gracefully (SIGTERM by pid; SIGKILL after 10 s) and returns its exit status.
pub(crate) async fn stop_gracefully(c: &mut ChildProc) -> Option<std::process::ExitStatus> {
    if let Some(pid) = c.child.id() {
        let _ = tokio::process::Command::new("kill").arg("-TERM").arg(pid.to_string()).status().await;
    }
    match tokio::time::timeout(Duration::from_secs(10), c.child.wait()).await {
        Ok(Ok(s)) => Some(s),
        _ => {
            let _ = c.child.start_kill();
            c.child.wait().await.ok()
        }
    }
}
