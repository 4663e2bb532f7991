//! Builds the pinned upstream Go programs from source: the real control plane (etcd,
//! kube-apiserver, kube-controller-manager, kube-scheduler) and the peer, metrics-server.
//!
//! The pins are Go modules in the repository, `loadtest/upstream/kubernetes/` (k8s.io/kubernetes
//! v1.36.3 with every staging module replaced by its published v0.36.3, and the etcd server that
//! release is tested with) and `loadtest/upstream/metrics-server/` (sigs.k8s.io/metrics-server
//! v0.8.0 on its own Kubernetes libraries). Their `go.sum` files are committed; nothing built is.
//!
//! Each module is built once, on first use, into `<workspace>/target/tools/<module>-<version>-
//! <pin hash>/` under the same lock / scratch directory / rename discipline as kubectl
//! ([`crate::tools`]): concurrent test processes wait for one build, a crash leaves nothing that
//! looks installed, and a changed pin (go.mod or go.sum) builds into a new directory. Go's module
//! and build caches stay where Go keeps them (`go env GOMODCACHE GOCACHE`, outside the
//! checkout), so a second clone on the same machine only links.
//!
//! Needs `go` (1.26 or newer) on `PATH`; without it the error names what needs it.

use std::path::{Path, PathBuf};
use std::process::Command;

use crate::tools::{ToolError, install_dir_once, io_err, run, tools_dir, workspace_root};

/// The Kubernetes release of the control plane (`/version` reports it).
pub const KUBERNETES_VERSION: &str = "v1.36.3";
/// The etcd release the control plane runs on (the one Kubernetes v1.36.3 requires).
pub const ETCD_VERSION: &str = "v3.6.8";
/// The metrics-server release shardmetrics is compared with.
pub const METRICS_SERVER_VERSION: &str = "v0.8.0";

const GO_HINT: &str = "go (1.26 or newer) builds the real control plane (etcd, kube-apiserver, kube-controller-manager, \
                       kube-scheduler) and metrics-server from loadtest/upstream/ for `demo --control-plane real`, the \
                       real-cluster tests and `run --compare metrics-server`; install Go";

/// One pinned Go module and the programs built from it.
#[derive(Debug, Clone, Copy)]
struct Module {
    /// Folder under `loadtest/upstream/`.
    dir: &'static str,
    /// The pinned release, part of the install directory's name.
    version: &'static str,
    /// `(executable name, Go package)` of each program.
    programs: &'static [(&'static str, &'static str)],
    /// `-ldflags` (version stamping, symbol stripping).
    ldflags: &'static str,
}

const KUBERNETES: Module = Module {
    dir: "kubernetes",
    version: KUBERNETES_VERSION,
    programs: &[
        ("etcd", "go.etcd.io/etcd/server/v3"),
        ("kube-apiserver", "k8s.io/kubernetes/cmd/kube-apiserver"),
        ("kube-controller-manager", "k8s.io/kubernetes/cmd/kube-controller-manager"),
        ("kube-scheduler", "k8s.io/kubernetes/cmd/kube-scheduler"),
    ],
    ldflags: "-s -w \
              -X k8s.io/component-base/version.gitVersion=v1.36.3 \
              -X k8s.io/component-base/version.gitMajor=1 \
              -X k8s.io/component-base/version.gitMinor=36 \
              -X k8s.io/component-base/version.gitTreeState=clean \
              -X k8s.io/client-go/pkg/version.gitVersion=v1.36.3 \
              -X k8s.io/client-go/pkg/version.gitMajor=1 \
              -X k8s.io/client-go/pkg/version.gitMinor=36",
};

const METRICS_SERVER: Module = Module {
    dir: "metrics-server",
    version: METRICS_SERVER_VERSION,
    programs: &[("metrics-server", "sigs.k8s.io/metrics-server/cmd/metrics-server")],
    ldflags: "-s -w -X sigs.k8s.io/metrics-server/pkg/version.gitVersion=v0.8.0",
};

/// The programs of the real control plane, each built from the pinned sources.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ControlPlaneBinaries {
    /// `etcd` (the server).
    pub etcd: PathBuf,
    /// `kube-apiserver`.
    pub kube_apiserver: PathBuf,
    /// `kube-controller-manager`.
    pub kube_controller_manager: PathBuf,
    /// `kube-scheduler`.
    pub kube_scheduler: PathBuf,
}

/// The control plane's programs, building them on first use (about 10 minutes on 2 cores with
/// empty Go caches, seconds to link when the caches are warm).
pub fn control_plane() -> Result<ControlPlaneBinaries, ToolError> {
    let dir = build(&KUBERNETES)?;
    Ok(ControlPlaneBinaries {
        etcd: dir.join("etcd"),
        kube_apiserver: dir.join("kube-apiserver"),
        kube_controller_manager: dir.join("kube-controller-manager"),
        kube_scheduler: dir.join("kube-scheduler"),
    })
}

/// The metrics-server binary, building it on first use.
pub fn metrics_server() -> Result<PathBuf, ToolError> {
    Ok(build(&METRICS_SERVER)?.join("metrics-server"))
}

/// The pinned metrics-server's source module in Go's module cache (building the program first,
/// which downloads it): its `manifests/` hold the RBAC the comparison installs as upstream
/// ships it.
pub fn metrics_server_source() -> Result<PathBuf, ToolError> {
    build(&METRICS_SERVER)?;
    let src = upstream_dir().join(METRICS_SERVER.dir);
    let out = run(go_command(&src).args(["list", "-m", "-f", "{{.Dir}}", "sigs.k8s.io/metrics-server"]), GO_HINT)?;
    Ok(PathBuf::from(String::from_utf8_lossy(&out.stdout).trim()))
}

/// Where the pinned Go modules live: `<workspace>/loadtest/upstream`.
pub fn upstream_dir() -> PathBuf {
    workspace_root().join("loadtest").join("upstream")
}

/// Builds `module` into its install directory once and returns that directory.
fn build(module: &Module) -> Result<PathBuf, ToolError> {
    let src = upstream_dir().join(module.dir);
    let pin = pin_hash(&src)?;
    let dir = tools_dir().join(format!("{}-{}-{pin:08x}", module.dir, module.version));
    install_dir_once(&dir, |scratch| {
        for (name, package) in module.programs {
            let out = scratch.join(name);
            // A build takes minutes: wall time for the user, no clock to inject.
            #[allow(clippy::disallowed_methods, clippy::disallowed_types)]
            let started = std::time::Instant::now();
            run(
                go_command(&src).args(["build", "-trimpath", "-ldflags", module.ldflags, "-o"]).arg(&out).arg(package),
                GO_HINT,
            )?;
            eprintln!("built {name} from {package} in {:.0?}", started.elapsed());
        }
        // Fail here, not in a test, when a program cannot run on this machine.
        let (first, _) = module.programs[0];
        run(Command::new(scratch.join(first)).arg("--version"), "the program just built")?;
        Ok(())
    })
}

/// `go` run in the module `src`: the module's own go.mod and committed go.sum (`-mod=readonly`,
/// so a missing checksum fails instead of editing the checkout), the machine's own toolchain
/// (`GOTOOLCHAIN=local`: no download behind the user's back), no VCS stamping (the module is
/// not a repository of its own).
fn go_command(src: &Path) -> Command {
    let mut c = Command::new("go");
    c.current_dir(src).env("GOTOOLCHAIN", "local").env("GOFLAGS", "-mod=readonly -buildvcs=false").env("CGO_ENABLED", "0");
    c
}

/// A hash of the module's `go.mod` and `go.sum` (FNV-1a, 32 bits): a new pin, a new directory.
fn pin_hash(src: &Path) -> Result<u32, ToolError> {
    let mut h: u32 = 0x811c_9dc5;
    for file in ["go.mod", "go.sum"] {
        let path = src.join(file);
        let bytes = std::fs::read(&path).map_err(io_err(&path))?;
        for b in bytes {
            h = (h ^ u32::from(b)).wrapping_mul(0x0100_0193);
        }
    }
    Ok(h)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_staging_module_of_the_pinned_release_is_replaced_by_its_published_version() {
        let go_mod = std::fs::read_to_string(upstream_dir().join("kubernetes/go.mod")).unwrap();
        assert!(go_mod.contains("k8s.io/kubernetes v1.36.3"), "{go_mod}");
        let replaced: Vec<&str> = go_mod.lines().filter(|l| l.contains(" => ")).collect();
        assert!(replaced.len() >= 30, "{replaced:?}");
        for line in replaced {
            assert!(line.trim_end().ends_with(" v0.36.3"), "a staging module at another version: {line}");
        }
    }

    #[test]
    fn metrics_server_keeps_its_own_kubernetes_libraries_at_one_release() {
        let go_mod = std::fs::read_to_string(upstream_dir().join("metrics-server/go.mod")).unwrap();
        assert!(go_mod.contains("sigs.k8s.io/metrics-server v0.8.0"), "{go_mod}");
        let k8s: Vec<&str> =
            go_mod.lines().map(str::trim).filter(|l| l.starts_with("k8s.io/") && !l.starts_with("k8s.io/klog") && !l.starts_with("k8s.io/kube-openapi") && !l.starts_with("k8s.io/utils")).collect();
        assert!(!k8s.is_empty());
        for line in k8s {
            assert!(line.contains(" v0.33.2"), "{line}");
        }
    }

    #[test]
    fn a_changed_pin_hashes_differently() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("go.mod"), "module a\n").unwrap();
        std::fs::write(dir.path().join("go.sum"), "").unwrap();
        let before = pin_hash(dir.path()).unwrap();
        std::fs::write(dir.path().join("go.sum"), "x v1 h1:\n").unwrap();
        assert_ne!(before, pin_hash(dir.path()).unwrap());
        assert!(pin_hash(&dir.path().join("missing")).is_err());
    }
}
