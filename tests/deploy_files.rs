//! The shipped deployment files are checked, not just written: Kubernetes manifests against
//! the Kubernetes schemas (kubernetes-validate, schemas bundled in the package, no network) and
//! against the config they ship; the systemd unit with `systemd-analyze verify` and for the
//! settings operators rely on; the Dockerfile with hadolint, its dependency stage against the
//! targets Cargo.toml declares, and its HEALTHCHECK run against a real admin port; the HAProxy
//! example with `haproxy -c`.
//!
//! The tools come from scripts/install-test-deps.sh; a missing one skips the test, or fails it
//! under CI.

mod support;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Duration;

use ethgate::config::{parse_duration, Config};
use serde_json::Value;
use support::gateway::{Gateway, GatewayConfig};
use support::mock::MockUpstream;
use support::process::TempDir;
use support::tools::{require_tool, venv_bin};

fn repo(path: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(path)
}

fn run(program: &Path, args: &[&str], env: &[(&str, String)]) -> Output {
    let mut cmd = Command::new(program);
    cmd.args(args);
    for (key, value) in env {
        cmd.env(key, value);
    }
    cmd.output()
        .unwrap_or_else(|e| panic!("run {}: {e}", program.display()))
}

fn text(output: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
}

// ---------------------------------------------------------------------------------------------
// Kubernetes
// ---------------------------------------------------------------------------------------------

const K8S_DIR: &str = "deploy/kubernetes";

/// Every manifest of deploy/kubernetes except the kustomization (not a cluster resource).
fn manifests() -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(repo(K8S_DIR))
        .expect("deploy/kubernetes")
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "yaml"))
        .filter(|p| !p.ends_with("kustomization.yaml"))
        .collect();
    files.sort();
    assert!(files.len() >= 5, "manifests: {files:?}");
    files
}

fn kubernetes_validate(tool: &Path, file: &Path) -> Output {
    let file = file.to_str().expect("UTF-8 path");
    run(tool, &["--strict", "--quiet", file], &[])
}

#[test]
fn kubernetes_manifests_validate_against_the_schemas() {
    let Some(tool) = require_tool("kubernetes_manifests_validate", "kubernetes-validate") else {
        return;
    };
    for file in manifests() {
        let out = kubernetes_validate(&tool, &file);
        assert!(out.status.success(), "{}:\n{}", file.display(), text(&out));
    }
    // The check bites: a misspelt field in the Deployment is refused.
    let dir = TempDir::new("k8s-validate").expect("temp dir");
    let broken = dir.path().join("deployment.yaml");
    let original = std::fs::read_to_string(repo("deploy/kubernetes/deployment.yaml")).unwrap();
    let typo = original.replacen("readinessProbe:", "readynessProbe:", 1);
    assert_ne!(typo, original);
    std::fs::write(&broken, typo).unwrap();
    let out = kubernetes_validate(&tool, &broken);
    assert!(!out.status.success(), "typo accepted:\n{}", text(&out));
    assert!(text(&out).contains("readynessProbe"), "{}", text(&out));
}

/// Every document of every manifest as JSON, by kind (PyYAML from the tools venv).
fn documents() -> Option<BTreeMap<String, Value>> {
    require_tool("kubernetes_manifests", "kubernetes-validate")?;
    let python = venv_bin().join("python");
    let script = "import json, sys, yaml\n\
                  docs = [d for f in sys.argv[1:] for d in yaml.safe_load_all(open(f)) if d]\n\
                  print(json.dumps(docs))";
    let mut args = vec!["-c", script];
    let files = manifests();
    args.extend(files.iter().map(|p| p.to_str().expect("UTF-8 path")));
    let out = run(&python, &args, &[]);
    assert!(out.status.success(), "{}", text(&out));
    let docs: Vec<Value> = serde_json::from_slice(&out.stdout).expect("JSON");
    Some(
        docs.into_iter()
            .map(|d| (d["kind"].as_str().expect("kind").to_string(), d))
            .collect(),
    )
}

fn port_of(addr: &std::net::SocketAddr) -> Value {
    Value::from(addr.port())
}

#[test]
fn kubernetes_manifests_agree_with_the_config_they_ship() {
    let Some(docs) = documents() else { return };
    let toml = docs["ConfigMap"]["data"]["ethgate.toml"]
        .as_str()
        .expect("TOML");
    let config = Config::from_toml_str(toml).unwrap_or_else(|e| panic!("ConfigMap TOML: {e}"));
    let deployment = &docs["Deployment"];
    let pod = &deployment["spec"]["template"]["spec"];
    let container = &pod["containers"][0];
    assert_eq!(deployment["spec"]["replicas"], 2);
    assert_eq!(pod["securityContext"]["runAsNonRoot"], true);
    let security = &container["securityContext"];
    assert_eq!(security["readOnlyRootFilesystem"], true);
    assert_eq!(security["allowPrivilegeEscalation"], false);
    assert!(container["resources"]["requests"]["cpu"].is_string());
    assert!(container["resources"]["requests"]["memory"].is_string());

    // Named ports match the config's listen addresses.
    let ports: BTreeMap<String, Value> = container["ports"]
        .as_array()
        .expect("ports")
        .iter()
        .map(|p| {
            (
                p["name"].as_str().unwrap().to_string(),
                p["containerPort"].clone(),
            )
        })
        .collect();
    assert_eq!(ports["admin"], port_of(&config.admin.listen));
    let rpc: Vec<&Value> = ports
        .iter()
        .filter(|(n, _)| n.starts_with("rpc"))
        .map(|(_, p)| p)
        .collect();
    let listen: Vec<Value> = config.server.listen.iter().map(port_of).collect();
    assert_eq!(
        rpc.len(),
        listen.len(),
        "one container port per server.listen address"
    );
    assert!(
        listen.iter().all(|p| rpc.contains(&p)),
        "{listen:?} vs {rpc:?}"
    );
    assert!(
        config.admin.listen.ip().is_unspecified(),
        "probes reach the pod IP: admin.listen must not be loopback"
    );

    // Probes: readiness on /readyz (flips at once on SIGTERM), liveness on /healthz.
    let readiness = &container["readinessProbe"];
    assert_eq!(readiness["httpGet"]["path"], "/readyz");
    assert_eq!(readiness["httpGet"]["port"], "admin");
    assert_eq!(container["livenessProbe"]["httpGet"]["path"], "/healthz");
    assert_eq!(container["livenessProbe"]["httpGet"]["port"], "admin");
    // The pod is out of the endpoints before the drain ends, and never killed mid-drain.
    let seconds = |v: &Value| Duration::from_secs(v.as_u64().expect("seconds"));
    let noticed = seconds(&readiness["periodSeconds"])
        * readiness["failureThreshold"].as_u64().unwrap() as u32;
    assert!(
        noticed < config.server.drain_delay,
        "readiness notices the drain too late"
    );
    let grace = seconds(&pod["terminationGracePeriodSeconds"]);
    assert!(
        grace > config.server.drain_delay + config.server.shutdown_grace,
        "terminationGracePeriodSeconds {grace:?} must exceed drain_delay + shutdown_grace"
    );

    // Scraping, Service, PodDisruptionBudget.
    let annotations = &deployment["spec"]["template"]["metadata"]["annotations"];
    assert_eq!(annotations["prometheus.io/scrape"], "true");
    assert_eq!(
        annotations["prometheus.io/port"],
        config.admin.listen.port().to_string()
    );
    let labels = &deployment["spec"]["template"]["metadata"]["labels"];
    assert_eq!(&docs["Service"]["spec"]["selector"], labels);
    for port in docs["Service"]["spec"]["ports"]
        .as_array()
        .expect("service ports")
    {
        let target = port["targetPort"].as_str().expect("named targetPort");
        assert!(ports.contains_key(target) && target != "admin", "{port}");
    }
    assert_eq!(
        &docs["PodDisruptionBudget"]["spec"]["selector"]["matchLabels"],
        labels
    );
    assert_eq!(docs["PodDisruptionBudget"]["spec"]["minAvailable"], 1);
    assert_eq!(docs["Secret"]["type"], "kubernetes.io/tls");

    // `kubectl apply -k` applies every manifest.
    let kustomization =
        std::fs::read_to_string(repo("deploy/kubernetes/kustomization.yaml")).unwrap();
    for file in manifests() {
        let name = file.file_name().unwrap().to_str().unwrap();
        assert!(
            kustomization.contains(&format!("- {name}")),
            "{name} not in kustomization.yaml"
        );
    }
}

// ---------------------------------------------------------------------------------------------
// systemd
// ---------------------------------------------------------------------------------------------

const UNIT: &str = "deploy/systemd/ethgate.service";

/// `[Section] Key=value` pairs of a unit file, in order (keys may repeat).
fn unit_settings(text: &str) -> Vec<(String, String, String)> {
    let mut section = String::new();
    let mut out = Vec::new();
    for line in text.lines().map(str::trim) {
        if line.is_empty() || line.starts_with('#') || line.starts_with(';') {
            continue;
        }
        if let Some(name) = line.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
            section = name.to_string();
        } else if let Some((key, value)) = line.split_once('=') {
            out.push((
                section.clone(),
                key.trim().to_string(),
                value.trim().to_string(),
            ));
        } else {
            panic!("not a unit line: {line:?}");
        }
    }
    out
}

#[test]
fn systemd_unit_has_the_settings_operators_rely_on() {
    let text = std::fs::read_to_string(repo(UNIT)).expect(UNIT);
    let settings = unit_settings(&text);
    let get = |key: &str| -> &str {
        settings
            .iter()
            .find(|(s, k, _)| s == "Service" && k == key)
            .map(|(_, _, v)| v.as_str())
            .unwrap_or_else(|| panic!("[Service] {key}= missing"))
    };
    assert!(get("DynamicUser") == "yes" || !get("User").is_empty());
    assert_eq!(get("ProtectSystem"), "strict");
    assert_eq!(get("NoNewPrivileges"), "yes");
    assert_eq!(get("Restart"), "on-failure");
    assert_eq!(get("ExecReload"), "/bin/kill -HUP $MAINPID");
    assert!(
        get("ExecStart").contains("ethgate run --config "),
        "{}",
        get("ExecStart")
    );
    // Sized for the documented max_connections (one descriptor each) plus headroom for
    // upstream connections and listeners.
    let defaults =
        Config::from_toml_str("[[upstream]]\nname = \"a\"\nhttp = \"http://127.0.0.1:1\"").unwrap();
    let nofile: usize = get("LimitNOFILE").parse().expect("a number");
    assert!(
        nofile >= defaults.server.max_connections + 1024,
        "LimitNOFILE {nofile} too small for max_connections {}",
        defaults.server.max_connections
    );
    // Stop waits out the whole drain before SIGKILL.
    let stop = parse_duration(get("TimeoutStopSec")).expect("TimeoutStopSec like 30s");
    assert!(stop > defaults.server.drain_delay + defaults.server.shutdown_grace);
}

#[test]
fn systemd_unit_passes_systemd_analyze_verify() {
    let Some(tool) = require_tool("systemd_unit_verify", "systemd-analyze") else {
        return;
    };
    // verify also checks that ExecStart's binary exists and is executable: use the one built.
    let dir = TempDir::new("systemd-verify").expect("temp dir");
    let unit = dir.path().join("ethgate.service");
    let text = std::fs::read_to_string(repo(UNIT)).expect(UNIT);
    let text = text.replace("/usr/local/bin/ethgate", env!("CARGO_BIN_EXE_ethgate"));
    std::fs::write(&unit, &text).unwrap();
    let out = run(&tool, &["verify", unit.to_str().unwrap()], &[]);
    // verify exits 0 on unknown keys and bad values too, so any output is a failure.
    assert!(
        out.status.success() && text_of(&out).is_empty(),
        "{}",
        text_of(&out)
    );

    // The check bites: a misspelt key and a bad value are reported.
    let broken = text.replace(
        "ProtectSystem=strict",
        "ProtectSystem=strictly\nNoNewPrivilege=yes",
    );
    std::fs::write(&unit, broken).unwrap();
    let out = run(&tool, &["verify", unit.to_str().unwrap()], &[]);
    let report = text_of(&out);
    assert!(
        report.contains("NoNewPrivilege") && report.contains("protect system"),
        "{report}"
    );
}

fn text_of(out: &Output) -> String {
    text(out).trim().to_string()
}

// ---------------------------------------------------------------------------------------------
// Dockerfile
// ---------------------------------------------------------------------------------------------

#[test]
fn dockerfile_passes_hadolint_and_pins_its_base_images() {
    let dockerfile = std::fs::read_to_string(repo("Dockerfile")).expect("Dockerfile");
    for line in dockerfile.lines().filter(|l| l.starts_with("FROM ")) {
        let image = line.split_whitespace().nth(1).expect("image");
        let tag = image.split_once(':').map(|(_, t)| t).unwrap_or("");
        // A version with at least major.minor: not `latest`, not a moving `1` or `bookworm`.
        let version = tag.split('-').next().unwrap_or("");
        let parts: Vec<&str> = version.split('.').collect();
        assert!(
            parts.len() >= 2 && parts.iter().all(|p| p.parse::<u32>().is_ok()),
            "base image not pinned by version: {line}"
        );
    }
    let Some(hadolint) = require_tool("dockerfile_hadolint", "hadolint") else {
        return;
    };
    let out = run(
        &hadolint,
        &["--no-color", repo("Dockerfile").to_str().unwrap()],
        &[],
    );
    assert!(
        out.status.success() && text_of(&out).is_empty(),
        "hadolint:\n{}",
        text_of(&out)
    );
}

/// The source files cargo accepts for each target Cargo.toml declares: a `path` given, else
/// the places cargo looks by default (one of them must exist, or cargo refuses the manifest).
fn declared_targets(manifest: &str) -> Vec<(String, Vec<String>)> {
    let manifest: toml::Table = manifest.parse().expect("Cargo.toml parses");
    let package = manifest["package"]["name"].as_str().expect("package.name");
    let mut targets = Vec::new();
    if let Some(lib) = manifest.get("lib") {
        let path = lib
            .get("path")
            .and_then(|p| p.as_str())
            .unwrap_or("src/lib.rs");
        targets.push(("[lib]".to_string(), vec![path.to_string()]));
    }
    for (kind, dir) in [
        ("bin", "src/bin"),
        ("bench", "benches"),
        ("test", "tests"),
        ("example", "examples"),
    ] {
        let Some(declared) = manifest.get(kind).and_then(|t| t.as_array()) else {
            continue;
        };
        for target in declared {
            let name = target["name"].as_str().expect("a target's name");
            let candidates = match target.get("path").and_then(|p| p.as_str()) {
                Some(path) => vec![path.to_string()],
                None => {
                    let mut default =
                        vec![format!("{dir}/{name}.rs"), format!("{dir}/{name}/main.rs")];
                    if kind == "bin" && name == package {
                        default.push("src/main.rs".to_string());
                    }
                    default
                }
            };
            targets.push((format!("[[{kind}]] {name}"), candidates));
        }
    }
    targets
}

/// The instructions of the Dockerfile's first stage up to its `COPY . .`, continuation lines
/// joined: what builds the dependency layer.
fn dependency_stage(dockerfile: &str) -> Vec<String> {
    let joined = dockerfile.replace("\\\n", " ");
    let instructions: Vec<String> = joined
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .skip_while(|l| !l.starts_with("FROM "))
        .skip(1)
        .take_while(|l| *l != "COPY . ." && !l.starts_with("FROM "))
        .map(str::to_string)
        .collect();
    assert!(
        instructions
            .iter()
            .any(|i| i.starts_with("RUN ") && i.contains("cargo build")),
        "no dependency build before `COPY . .`: {instructions:?}"
    );
    instructions
}

/// The files present when the dependency stage's `cargo build` runs: its COPYs from the repo
/// and its RUN commands, run by `sh -c` as Docker does, with a `cargo` on PATH that lists the
/// files instead of building.
fn files_at_dependency_build(instructions: &[String]) -> Vec<String> {
    let dir = TempDir::new("docker-stub-stage").expect("temp dir");
    let build = dir.path().join("build");
    let shim = dir.path().join("shim");
    std::fs::create_dir_all(&build).unwrap();
    std::fs::create_dir_all(&shim).unwrap();
    let listing = dir.path().join("files.txt");
    let cargo = shim.join("cargo");
    std::fs::write(
        &cargo,
        "#!/bin/sh\nfind . -type f | sed 's|^\\./||' > \"$STUB_FILES\"\n",
    )
    .unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&cargo, std::fs::Permissions::from_mode(0o755)).unwrap();
    let path = format!(
        "{}:{}",
        shim.display(),
        std::env::var("PATH").unwrap_or_default()
    );
    for instruction in instructions {
        if let Some(args) = instruction.strip_prefix("COPY ") {
            let args: Vec<&str> = args.split_whitespace().collect();
            assert!(
                !args[0].starts_with("--"),
                "COPY flags not handled: {instruction}"
            );
            for source in &args[..args.len() - 1] {
                std::fs::copy(repo(source), build.join(source)).expect(source);
            }
        } else if let Some(script) = instruction.strip_prefix("RUN ") {
            let out = Command::new("sh")
                .args(["-c", script])
                .current_dir(&build)
                .env("PATH", &path)
                .env("STUB_FILES", &listing)
                .output()
                .expect("run sh");
            assert!(out.status.success(), "{instruction}:\n{}", text(&out));
        }
    }
    let files = std::fs::read_to_string(&listing).expect("the stage ran cargo");
    files.lines().map(str::to_string).collect()
}

/// The declared targets none of whose source files are in `files`.
fn missing_targets(targets: &[(String, Vec<String>)], files: &[String]) -> Vec<String> {
    targets
        .iter()
        .filter(|(_, candidates)| !candidates.iter().any(|c| files.contains(c)))
        .map(|(target, candidates)| format!("{target} (one of {candidates:?})"))
        .collect()
}

#[test]
fn dockerfile_dependency_stage_stubs_every_target_cargo_toml_declares() {
    let manifest = std::fs::read_to_string(repo("Cargo.toml")).expect("Cargo.toml");
    let targets = declared_targets(&manifest);
    let names: Vec<&str> = targets.iter().map(|(t, _)| t.as_str()).collect();
    for expected in ["[lib]", "[[bin]] ethgate", "[[bench]] load", "[[bench]] ws"] {
        assert!(
            names.contains(&expected),
            "{expected} not found in {names:?}"
        );
    }
    let dockerfile = std::fs::read_to_string(repo("Dockerfile")).expect("Dockerfile");
    let files = files_at_dependency_build(&dependency_stage(&dockerfile));
    let missing = missing_targets(&targets, &files);
    assert!(
        missing.is_empty(),
        "the Dockerfile's dependency stage has no stub for {missing:?} (cargo refuses the \
         manifest); it created {files:?}"
    );
    // The check bites: without one bench's stub, that bench is reported.
    let without_ws: Vec<String> = files
        .iter()
        .filter(|f| !f.starts_with("benches/ws"))
        .cloned()
        .collect();
    let missing = missing_targets(&targets, &without_ws);
    assert!(
        missing.len() == 1 && missing[0].starts_with("[[bench]] ws "),
        "{missing:?}"
    );
}

/// The HEALTHCHECK's exec-form command, as a list of arguments.
fn healthcheck_command() -> Vec<String> {
    let dockerfile = std::fs::read_to_string(repo("Dockerfile")).expect("Dockerfile");
    let joined = dockerfile.replace("\\\n", " ");
    let line = joined
        .lines()
        .find(|l| l.starts_with("HEALTHCHECK "))
        .expect("a HEALTHCHECK");
    let json = &line[line.find("CMD").expect("CMD") + 3..];
    serde_json::from_str(json.trim()).expect("exec form JSON array")
}

#[tokio::test]
async fn dockerfile_healthcheck_probes_the_admin_port() {
    let command = healthcheck_command();
    let script = command.last().expect("a script").clone();
    // The image's admin port is the default admin.listen port.
    let defaults =
        Config::from_toml_str("[[upstream]]\nname = \"a\"\nhttp = \"http://127.0.0.1:1\"").unwrap();
    let default_port = defaults.admin.listen.port().to_string();
    assert!(script.contains(&format!("/{default_port} ")), "{script}");

    let a = MockUpstream::start().await;
    let gw = Gateway::start(&GatewayConfig::new().upstream("a", &a, 0)).await;
    let probe = |port: u16| {
        let script = script.replace(&format!("/{default_port} "), &format!("/{port} "));
        let mut args: Vec<String> = command[1..command.len() - 1].to_vec();
        args.push(script);
        let program = command[0].clone();
        async move {
            tokio::task::spawn_blocking(move || Command::new(program).args(args).status())
                .await
                .expect("join")
                .expect("run the HEALTHCHECK command")
        }
    };
    assert!(
        probe(gw.admin_addr().port()).await.success(),
        "healthy ethgate"
    );
    let closed = support::process::free_addr().port();
    assert!(
        !probe(closed).await.success(),
        "nothing listening must be unhealthy"
    );
}

// ---------------------------------------------------------------------------------------------
// HAProxy example
// ---------------------------------------------------------------------------------------------

#[test]
fn haproxy_example_config_is_valid() {
    let Some(haproxy) = require_tool("haproxy_example_config", "haproxy") else {
        return;
    };
    let env = [
        ("HAPROXY_BIND", "127.0.0.1:8545".to_string()),
        ("ETHGATE_A", "127.0.0.1:18545".to_string()),
        ("ETHGATE_B", "127.0.0.1:28545".to_string()),
        ("ETHGATE_A_ADMIN_PORT", "19545".to_string()),
        ("ETHGATE_B_ADMIN_PORT", "29545".to_string()),
    ];
    let config = repo("deploy/haproxy/haproxy.cfg");
    let out = run(&haproxy, &["-c", "-f", config.to_str().unwrap()], &env);
    assert!(out.status.success(), "{}", text(&out));
    // The example configs of run.sh parse as ethgate configs.
    for name in ["ethgate-a.toml", "ethgate-b.toml"] {
        let path = repo(&format!("deploy/haproxy/{name}"));
        let config = Config::load(&path).unwrap_or_else(|e| panic!("{name}: {e}"));
        assert!(config.access.proxy_protocol, "{name}: proxy_protocol");
        assert!(!config.server.drain_delay.is_zero(), "{name}: drain_delay");
    }
}
