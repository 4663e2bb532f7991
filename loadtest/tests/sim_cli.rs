//! The `shardmetrics-loadtest` binary: flag validation, the standalone `kubelets` command, the
//! demo's children, and the programs `run` measures.

use std::process::Stdio;
use std::time::Duration;

use http_body_util::{BodyExt, Empty};
use tokio::io::{AsyncBufReadExt, BufReader};

const BIN: &str = env!("CARGO_BIN_EXE_shardmetrics-loadtest");

#[tokio::test]
async fn invalid_flags_exit_64_listing_every_problem() {
    let out = tokio::process::Command::new(BIN)
        .args(["kubelets", "--count", "0", "--containers-per-pod", "0", "--token", " "])
        .env_remove("SHARDMETRICS_LOG_LEVEL")
        .output()
        .await
        .unwrap();
    assert_eq!(out.status.code(), Some(64));
    let stderr = String::from_utf8_lossy(&out.stderr);
    for needle in ["--count 0", "--containers-per-pod 0", "--token must not be empty"] {
        assert!(stderr.contains(needle), "{needle:?} missing from:\n{stderr}");
    }
    let out = tokio::process::Command::new(BIN).args(["demo", "--metric-resolution", "2s", "--shards", "0"]).output().await.unwrap();
    assert_eq!(out.status.code(), Some(64));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("below the minimum of 5s") && stderr.contains("--shards 0"), "{stderr}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_kubelets_command_serves_synthetic_pods_until_stopped() {
    let dir = tempfile::tempdir().unwrap();
    let mut child = tokio::process::Command::new(BIN)
        .args(["kubelets", "--count", "3", "--pods-per-node", "2", "--token", "t1,t2", "--pki-dir"])
        .arg(dir.path())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let mut ports = Vec::new();
    loop {
        let line = tokio::time::timeout(Duration::from_secs(30), lines.next_line()).await.unwrap().unwrap().expect("output ended early");
        if line.starts_with("kubelets ready: 3") {
            break;
        }
        let (name, addr) = line.split_once(' ').unwrap();
        assert!(name.starts_with("standalone-node-"));
        ports.push(addr.rsplit_once(':').unwrap().1.parse::<u16>().unwrap());
    }
    assert_eq!(ports.len(), 3);

    use rustls::pki_types::pem::PemObject;
    let mut roots = rustls::RootCertStore::empty();
    for cert in rustls::pki_types::CertificateDer::pem_file_iter(dir.path().join("kubelet-ca.crt")).unwrap() {
        roots.add(cert.unwrap()).unwrap();
    }
    let tls = shardmetrics_plumbing::pki::client_config(Some(&roots), None).unwrap();
    let connector = hyper_rustls::HttpsConnectorBuilder::new().with_tls_config(tls).https_only().enable_http1().build();
    let client: hyper_util::client::legacy::Client<_, Empty<bytes::Bytes>> =
        hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new()).build(connector);
    let req = http::Request::get(format!("https://127.0.0.1:{}/metrics/resource", ports[1]))
        .header("authorization", "Bearer t2")
        .body(Empty::new())
        .unwrap();
    let resp = client.request(req).await.unwrap();
    assert_eq!(resp.status(), 200);
    let text = String::from_utf8(resp.into_body().collect().await.unwrap().to_bytes().to_vec()).unwrap();
    assert_eq!(text.matches("container_cpu_usage_seconds_total{").count(), 2, "{text}");
    assert!(text.contains("pod=\"standalone-node-0001-pod-1\""));

    child.start_kill().unwrap();
    child.wait().await.unwrap();
}

/// The child processes of `pid` (from /proc), with their command lines.
fn children_of(pid: u32) -> Vec<(u32, String)> {
    let mut out = Vec::new();
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else { return out };
    for task in tasks.flatten() {
        let children = std::fs::read_to_string(task.path().join("children")).unwrap_or_default();
        for child in children.split_whitespace().filter_map(|c| c.parse::<u32>().ok()) {
            let cmdline = std::fs::read(format!("/proc/{child}/cmdline")).unwrap_or_default();
            out.push((child, String::from_utf8_lossy(&cmdline).replace('\0', " ")));
        }
    }
    out
}

/// Unix seconds of an RFC 3339 timestamp (`2026-12-02T10:11:12Z`).
fn unix_seconds(ts: &str) -> i64 {
    ts.parse::<jiff::Timestamp>().unwrap().as_second()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_shard_a_user_sigkills_in_the_running_demo_comes_back_and_its_nodes_are_fresh_again() {
    const RESOLUTION_S: i64 = 5;
    const LEASE_S: i64 = 15;
    let dir = tempfile::tempdir().unwrap();
    let kubeconfig = dir.path().join("kubeconfig");
    let (mut demo, _stdout) = ready_demo(&["--shards", "2"], &kubeconfig, Stdio::piped()).await;
    let mut stderr = BufReader::new(demo.stderr.take().unwrap()).lines();
    let kubectl = shardmetrics_xtask::kubectl::Kubectl::new(&kubeconfig).await;

    // As a user would: find a shard process of the demo and SIGKILL it.
    let demo_pid = demo.id().unwrap();
    let (victim, _) = children_of(demo_pid).into_iter().find(|(_, cmd)| cmd.contains(" scraper ") && cmd.contains("scraper-1")).expect("a scraper-1 child");
    let killed_at = shardmetrics_plumbing::clock::system().now_ms() / 1000;
    assert!(std::process::Command::new("kill").args(["-9", &victim.to_string()]).status().unwrap().success());

    // The demo says so and starts it again under the same name.
    let mut said = Vec::new();
    let restarted = loop {
        let line = tokio::time::timeout(Duration::from_secs(30), stderr.next_line()).await.expect("a restart within 30 s").unwrap().expect("stderr ended");
        said.push(line.clone());
        if line.starts_with("restarted scraper-1 (pid ") {
            break line;
        }
    };
    assert!(said.iter().any(|l| l.starts_with("scraper-1 exited (signal: 9")), "{said:?}");
    let new_pid: u32 = restarted.trim_start_matches("restarted scraper-1 (pid ").trim_end_matches(')').parse().unwrap();
    assert_ne!(new_pid, victim);
    assert!(children_of(demo_pid).iter().any(|(p, _)| *p == new_pid), "the new shard is the demo's child");

    // Every node is served with a sample newer than the kill within resolution + lease.
    let deadline = tokio::time::Instant::now() + Duration::from_secs((RESOLUTION_S + LEASE_S) as u64 + 10);
    loop {
        let raw = kubectl.ok(&["get", "--raw", "/apis/metrics.k8s.io/v1beta1/nodes"]).await;
        let list: serde_json::Value = serde_json::from_str(&raw).unwrap();
        let items = list["items"].as_array().unwrap();
        let fresh = items.iter().filter(|n| unix_seconds(n["timestamp"].as_str().unwrap()) > killed_at).count();
        if items.len() == 6 && fresh == 6 {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "{fresh} of {} nodes fresh after the kill:\n{raw}", items.len());
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    let _ = std::process::Command::new("kill").args(["-TERM", &demo_pid.to_string()]).status();
    let status = tokio::time::timeout(Duration::from_secs(30), demo.wait()).await.unwrap().unwrap();
    assert!(status.success(), "the demo stops cleanly on SIGTERM: {status}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubelet_server_children_serve_the_demo_and_exit_when_it_is_killed() {
    let dir = tempfile::tempdir().unwrap();
    let kubeconfig = dir.path().join("kubeconfig");
    let (mut demo, _stdout) = ready_demo(&["--shards", "1", "--kubelet-servers", "2"], &kubeconfig, Stdio::null()).await;
    // Every node is served through the children (the demo is ready only then).
    let kubectl = shardmetrics_xtask::kubectl::Kubectl::new(&kubeconfig).await;
    let raw = kubectl.ok(&["get", "--raw", "/apis/metrics.k8s.io/v1beta1/nodes"]).await;
    let list: serde_json::Value = serde_json::from_str(&raw).unwrap();
    assert_eq!(list["items"].as_array().map(Vec::len), Some(6), "{raw}");
    let demo_pid = demo.id().unwrap();
    let children = children_of(demo_pid);
    let servers: Vec<u32> = children.iter().filter(|(_, cmd)| cmd.ends_with(" kubelet-server ") || cmd.ends_with(" kubelet-server")).map(|(p, _)| *p).collect();
    assert_eq!(servers.len(), 2, "{children:?}");

    // Killed without a chance to clean up: the children's stdin closes with it.
    assert!(std::process::Command::new("kill").args(["-9", &demo_pid.to_string()]).status().unwrap().success());
    let _ = demo.wait().await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while !servers.iter().all(|p| shardmetrics_loadtest::scenario::procstat::has_exited(*p)) {
        assert!(tokio::time::Instant::now() < deadline, "kubelet servers {servers:?} outlived the demo");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // The shard and frontend children do not watch their parent; end them here.
    for (pid, _) in children.iter().filter(|(p, _)| !servers.contains(p)) {
        let _ = std::process::Command::new("kill").args(["-9", &pid.to_string()]).status();
    }
}

/// A demo of 6 nodes x 2 pods, one frontend, 5 s resolution, plus `extra` flags, started with
/// its kubeconfig at `kubeconfig` and its stderr to `stderr`; returns once it printed
/// "demo ready" (within 120 s), with the rest of its stdout (hold it: a closed pipe would
/// fail the demo's next print).
async fn ready_demo(extra: &[&str], kubeconfig: &std::path::Path, stderr: Stdio) -> (tokio::process::Child, tokio::io::Lines<BufReader<tokio::process::ChildStdout>>) {
    let mut demo = tokio::process::Command::new(BIN)
        .args(["demo", "--nodes", "6", "--pods-per-node", "2", "--frontends", "1", "--metric-resolution", "5s"])
        .args(extra)
        .arg("--kubeconfig")
        .arg(kubeconfig)
        .env_remove("SHARDMETRICS_LOG_LEVEL")
        .stdout(Stdio::piped())
        .stderr(stderr)
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut stdout = BufReader::new(demo.stdout.take().unwrap()).lines();
    loop {
        let line = tokio::time::timeout(Duration::from_secs(120), stdout.next_line()).await.expect("demo ready in time").unwrap().expect("demo output ended early");
        if line.starts_with("demo ready") {
            return (demo, stdout);
        }
    }
}

/// `run` starts its shards and frontends as the programs that ship and its floor as
/// `shardmetrics-floor` (beside this binary: `cargo test --workspace` builds every package's
/// binaries into one directory), names them in its report, and refuses to start without one
/// rather than measure its own subcommand (the same code on another allocator) in its place.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn run_measures_the_scraper_and_frontend_programs_that_ship() {
    let dir = tempfile::tempdir().unwrap();
    // A missing program is refused before anything starts; the floor's only where a floor runs.
    for (flag, extra) in [("--scraper-program", &[][..]), ("--floor-program", &["--floor-duration", "2s"][..])] {
        let missing = dir.path().join(format!("no-such{flag}"));
        let out = tokio::process::Command::new(BIN)
            .args(["run", "--nodes", "2", flag])
            .arg(&missing)
            .args(extra)
            .arg("--report")
            .arg(dir.path().join("refused.json"))
            .arg("--kubeconfig")
            .arg(dir.path().join("refused.kubeconfig"))
            .output()
            .await
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{stderr}");
        for needle in [missing.display().to_string(), "no such program".into(), flag.into()] {
            assert!(stderr.contains(&needle), "{needle:?} not in {stderr}");
        }
        assert!(!dir.path().join("refused.json").exists() && !dir.path().join("refused.kubeconfig").exists());
    }

    let beside = |name: &str| std::path::Path::new(BIN).with_file_name(name);
    let (scraper, frontend, floor) = (beside("shardmetrics-scraper"), beside("shardmetrics-frontend"), beside("shardmetrics-floor"));
    for p in [&scraper, &frontend, &floor] {
        assert!(p.is_file(), "{} missing: run the tests with `cargo test --workspace`", p.display());
    }
    let report = dir.path().join("report.json");
    let log = std::fs::File::create(dir.path().join("run.log")).unwrap();
    let mut run = tokio::process::Command::new(BIN)
        .args(["run", "--nodes", "4", "--pods-per-node", "2", "--shards", "1", "--frontends", "1", "--metric-resolution", "5s"])
        .args(["--duration", "8s", "--floor-duration", "2s", "--hpa-queries-per-sec", "2", "--top-queries-per-sec", "0.5"])
        .arg("--report")
        .arg(&report)
        .arg("--kubeconfig")
        .arg(dir.path().join("kubeconfig"))
        .env_remove("SHARDMETRICS_SCRAPER_PROGRAM")
        .env_remove("SHARDMETRICS_FRONTEND_PROGRAM")
        .stdout(log.try_clone().unwrap())
        .stderr(log)
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    // While it runs, its shard, its frontend and its floor are those programs, started with
    // their flags.
    let pid = run.id().unwrap();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    let (mut saw_scraper, mut saw_frontend, mut saw_floor) = (false, false, false);
    let log_path = dir.path().join("run.log");
    while !(saw_scraper && saw_frontend && saw_floor) {
        let ended = run.try_wait().unwrap();
        assert!(ended.is_none() && tokio::time::Instant::now() < deadline, "{ended:?}, children {:?}: {}", children_of(pid), std::fs::read_to_string(&log_path).unwrap());
        for (_, cmd) in children_of(pid) {
            saw_scraper |= cmd.starts_with(&format!("{} --shard-id ", scraper.display()));
            saw_frontend |= cmd.starts_with(&format!("{} --replica-name ", frontend.display()));
            saw_floor |= cmd.starts_with(&format!("{} --targets-file ", floor.display()));
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let status = tokio::time::timeout(Duration::from_secs(120), run.wait()).await.expect("run ends in time").unwrap();
    let log = std::fs::read_to_string(&log_path).unwrap();
    assert!(status.success(), "{status}: {log}");
    let r: serde_json::Value = serde_json::from_slice(&std::fs::read(&report).unwrap()).unwrap();
    let programs = &r["setup"]["programs"];
    assert_eq!(programs["scraper"], scraper.display().to_string(), "{programs}");
    assert_eq!(programs["frontend"], frontend.display().to_string(), "{programs}");
    assert_eq!(programs["floor"], floor.display().to_string(), "{programs}");
    assert!(log.contains(&format!("scraper `{}`", scraper.display())), "the summary names the programs: {log}");
    // The shipped shard scraped (every node at least once in the 8 s window of a 5 s
    // resolution) and said so on its own /metrics; the frontend answered.
    assert!(r["scrapes"]["scraper_results"]["success"].as_f64().unwrap() > 0.0, "{}", r["scrapes"]);
    assert_eq!(r["coverage"]["nodes_min_percent"], 100.0, "{}", r["coverage"]);
    assert!(r["floor"]["fetches"].as_u64().unwrap() > 0 && r["floor"]["errors"] == 0, "{}", r["floor"]);
    assert!(r["queries"]["hpa_selector"]["ok_per_second"].as_f64().unwrap() > 0.0, "{}", r["queries"]);
}
