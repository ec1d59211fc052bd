//! The Kubernetes manifests under packaging/kubernetes (issue #13): validated offline
//! against the API schemas of the oldest and newest Kubernetes versions Vigil supports
//! with a real validator (PyPI's kubernetes-validate, strict mode), checked for what
//! the README promises (least privilege, every node, a tenth at a time, probes), the
//! embedded config files parsed by the daemons' own parsers, and the agent's pod run
//! under podman as the DaemonSet describes it (`podman kube play`).
use std::{
    path::{Path, PathBuf},
    process::{Command, Stdio},
};

use yaml_serde::Value;

/// The oldest Kubernetes release the manifests support (Pod Security Admission's
/// namespace labels are GA from 1.25) and the newest the validator knows.
const OLDEST: &str = "1.25.0";
const NEWEST: &str = "1.37.0";

fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn manifests_dir() -> PathBuf {
    workspace().join("packaging/kubernetes")
}

fn manifests() -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(manifests_dir())
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "yaml"))
        .collect();
    files.sort();
    assert!(files.len() >= 4, "{files:?}");
    files
}

/// The validator, which must be there under CI (`cargo xtask setup` installs it).
fn validator() -> Option<&'static str> {
    let ok = Command::new("kubernetes-validate")
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if ok {
        return Some("kubernetes-validate");
    }
    assert!(
        std::env::var_os("CI").is_none(),
        "kubernetes-validate is missing and CI is set: run `cargo xtask setup`"
    );
    eprintln!("skipped: kubernetes-validate missing (cargo xtask setup)");
    None
}

fn validate(version: &str, files: &[PathBuf]) -> (bool, String) {
    let o = Command::new("kubernetes-validate")
        .args(["--strict", "--kubernetes-version", version])
        .args(files)
        .stdin(Stdio::null())
        .output()
        .expect("running kubernetes-validate");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    (o.status.success(), text)
}

/// Every document of a manifest file.
fn documents(path: &Path) -> Vec<Value> {
    use serde::Deserialize as _;
    let text = std::fs::read_to_string(path).unwrap();
    yaml_serde::Deserializer::from_str(&text)
        .map(|d| Value::deserialize(d).unwrap_or_else(|e| panic!("{}: {e}", path.display())))
        .filter(|v| !v.is_null())
        .collect()
}

fn find(file: &str, kind: &str, name: &str) -> Value {
    documents(&manifests_dir().join(file))
        .into_iter()
        .find(|d| d["kind"].as_str() == Some(kind) && d["metadata"]["name"].as_str() == Some(name))
        .unwrap_or_else(|| panic!("{file} has no {kind} {name}"))
}

fn strs(v: &Value) -> Vec<String> {
    v.as_sequence()
        .unwrap_or_else(|| panic!("not a list: {v:?}"))
        .iter()
        .map(|s| s.as_str().unwrap().to_string())
        .collect()
}

fn container<'a>(workload: &'a Value, name: &str) -> &'a Value {
    workload["spec"]["template"]["spec"]["containers"]
        .as_sequence()
        .unwrap()
        .iter()
        .find(|c| c["name"].as_str() == Some(name))
        .unwrap_or_else(|| panic!("no container {name}"))
}

fn mount_path<'a>(pod: &'a Value, container: &'a Value, volume: &str) -> (&'a Value, &'a Value) {
    let m = container["volumeMounts"]
        .as_sequence()
        .unwrap()
        .iter()
        .find(|m| m["name"].as_str() == Some(volume))
        .unwrap_or_else(|| panic!("no mount of {volume}"));
    let v = pod["volumes"]
        .as_sequence()
        .unwrap()
        .iter()
        .find(|v| v["name"].as_str() == Some(volume))
        .unwrap_or_else(|| panic!("no volume {volume}"));
    (m, v)
}

#[test]
fn the_manifests_pass_strict_validation_for_the_oldest_and_newest_kubernetes() {
    if validator().is_none() {
        return;
    }
    let files = manifests();
    for version in [OLDEST, NEWEST] {
        let (ok, text) = validate(version, &files);
        assert!(ok, "Kubernetes {version}:\n{text}");
        let short = version.trim_end_matches(".0");
        for f in &files {
            let name = f.file_name().unwrap().to_string_lossy().into_owned();
            assert!(
                text.lines()
                    .any(|l| l.contains(&name) && l.contains("passed") && l.contains(short)),
                "{name} not validated against {version}:\n{text}"
            );
        }
    }
    // The validator can fail: a misspelt field in the DaemonSet is refused in strict mode.
    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("agent.yaml");
    let text = std::fs::read_to_string(manifests_dir().join("agent.yaml")).unwrap();
    std::fs::write(
        &bad,
        text.replacen("readOnlyRootFilesystem:", "readOnlyRootFileSystem:", 1),
    )
    .unwrap();
    let (ok, out) = validate(NEWEST, &[bad]);
    assert!(!ok, "a misspelt field passed strict validation:\n{out}");
}

#[test]
fn the_agent_daemonset_is_least_privilege_on_every_node_a_tenth_at_a_time() {
    let ds = find("agent.yaml", "DaemonSet", "vigil-agent");
    let pod = &ds["spec"]["template"]["spec"];
    let c = container(&ds, "agent");
    let sc = &c["securityContext"];
    assert_eq!(sc["privileged"].as_bool(), Some(false));
    assert_eq!(sc["allowPrivilegeEscalation"].as_bool(), Some(false));
    assert_eq!(sc["readOnlyRootFilesystem"].as_bool(), Some(true));
    assert_eq!(
        sc["seccompProfile"]["type"].as_str(),
        Some("RuntimeDefault")
    );
    assert_eq!(strs(&sc["capabilities"]["drop"]), vec!["ALL"]);
    // The same capabilities as the systemd unit's bounding set, no more.
    let unit =
        std::fs::read_to_string(workspace().join("packaging/systemd/vigil-agent.service")).unwrap();
    let mut from_unit: Vec<String> = unit
        .lines()
        .find_map(|l| l.strip_prefix("CapabilityBoundingSet="))
        .unwrap()
        .split_whitespace()
        .map(|c| c.trim_start_matches("CAP_").to_string())
        .collect();
    let mut added = strs(&sc["capabilities"]["add"]);
    from_unit.sort();
    added.sort();
    assert_eq!(
        added, from_unit,
        "the DaemonSet's capabilities are the unit's"
    );
    assert_eq!(pod["hostPID"].as_bool(), Some(true));
    let tolerations = pod["tolerations"].as_sequence().unwrap();
    assert!(
        tolerations
            .iter()
            .any(|t| t["operator"].as_str() == Some("Exists")
                && t.get("key").is_none()
                && t.get("effect").is_none()),
        "a toleration of every taint: {tolerations:?}"
    );
    assert!(
        pod.get("nodeSelector").is_none() && pod.get("affinity").is_none(),
        "every node"
    );
    let update = &ds["spec"]["updateStrategy"];
    assert_eq!(update["type"].as_str(), Some("RollingUpdate"));
    assert_eq!(
        update["rollingUpdate"]["maxUnavailable"].as_str(),
        Some("10%")
    );
    // The mounts the agent needs, read-only but its spool and socket.
    let (m, v) = mount_path(pod, c, "host-root");
    assert_eq!(m["mountPath"].as_str(), Some("/host"));
    assert_eq!(m["readOnly"].as_bool(), Some(true));
    assert_eq!(v["hostPath"]["path"].as_str(), Some("/"));
    let (m, v) = mount_path(pod, c, "tracefs");
    assert_eq!(m["mountPath"].as_str(), Some("/sys/kernel/tracing"));
    assert_eq!(m["readOnly"].as_bool(), Some(true));
    assert_eq!(v["hostPath"]["path"].as_str(), Some("/sys/kernel/tracing"));
    let (m, v) = mount_path(pod, c, "spool");
    assert_eq!(m["mountPath"].as_str(), Some("/var/lib/vigil/agent"));
    assert!(v["hostPath"].is_mapping(), "the spool outlives the pod");
    assert!(strs(&c["args"])
        .windows(2)
        .any(|w| w == ["--host-root", "/host"]));
    // Requests and limits, and probes that run `vigil health` on the socket.
    for k in ["requests", "limits"] {
        assert!(c["resources"][k]["memory"].is_string(), "{k}");
        assert!(c["resources"][k]["cpu"].is_string(), "{k}");
    }
    for probe in ["livenessProbe", "readinessProbe", "startupProbe"] {
        let cmd = strs(&c[probe]["exec"]["command"]);
        assert_eq!(
            cmd,
            vec![
                "/usr/bin/vigil",
                "health",
                "--socket",
                "/run/vigil/agent.sock"
            ],
            "{probe}"
        );
    }
    assert_eq!(
        c["image"].as_str().unwrap(),
        format!("localhost/vigil-agent:{}", env!("CARGO_PKG_VERSION")),
        "the image `cargo xtask image` builds"
    );
}

#[test]
fn the_privileged_fallback_differs_only_in_its_security_context() {
    let mut base = find("agent.yaml", "DaemonSet", "vigil-agent");
    let mut privileged = find("agent-privileged.yaml", "DaemonSet", "vigil-agent");
    let sc = container(&privileged, "agent")["securityContext"].clone();
    assert_eq!(sc["privileged"].as_bool(), Some(true));
    for ds in [&mut base, &mut privileged] {
        let c = ds["spec"]["template"]["spec"]["containers"][0]
            .as_mapping_mut()
            .unwrap();
        c.remove("securityContext").unwrap();
    }
    assert_eq!(base, privileged);
}

#[test]
fn the_config_files_in_the_manifests_parse_with_the_daemons_own_parsers() {
    let cm = find("agent.yaml", "ConfigMap", "vigil-agent");
    let text = cm["data"]["agent.toml"].as_str().unwrap();
    // Here the host's / is /, not /host: the one value that depends on the pod.
    assert!(text.contains("host_root = \"/host\""), "{text}");
    let here = text.replace("host_root = \"/host\"", "host_root = \"/\"");
    let config = vigil_agent::config::AgentConfig::parse(Path::new("agent.toml"), &here)
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(
        config.collector.as_deref(),
        Some("vigil-collector.vigil.svc:7470")
    );
    // The agent's TLS files are where the DaemonSet mounts the node's /etc/vigil/tls.
    let ds = find("agent.yaml", "DaemonSet", "vigil-agent");
    let (m, _) = mount_path(
        &ds["spec"]["template"]["spec"],
        container(&ds, "agent"),
        "tls",
    );
    let tls_dir = m["mountPath"].as_str().unwrap();
    for f in ["ca.pem", "agent.pem", "agent.key"] {
        assert!(
            text.contains(&format!("\"{tls_dir}/{f}\"")),
            "{f} in {text}"
        );
    }

    let cm = find("collector.yaml", "ConfigMap", "vigil-collector");
    let text = cm["data"]["collector.toml"].as_str().unwrap();
    vigil_collector::config::CollectorFile::parse(text).unwrap_or_else(|e| panic!("{e}"));
    // The collector's TLS files are the Secret's keys, mounted where the config says.
    let sts = find("collector.yaml", "StatefulSet", "vigil-collector");
    let (m, v) = mount_path(
        &sts["spec"]["template"]["spec"],
        container(&sts, "collector"),
        "tls",
    );
    assert_eq!(
        v["secret"]["secretName"].as_str(),
        Some("vigil-collector-tls")
    );
    let dir = m["mountPath"].as_str().unwrap();
    for key in ["ca.crt", "tls.crt", "tls.key"] {
        assert!(
            text.contains(&format!("\"{dir}/{key}\"")),
            "{key} in {text}"
        );
    }
    let c = container(&sts, "collector");
    let sc = &c["securityContext"];
    assert_eq!(strs(&sc["capabilities"]["drop"]), vec!["ALL"]);
    assert!(sc["capabilities"].get("add").is_none(), "no capability");
    assert_eq!(sc["readOnlyRootFilesystem"].as_bool(), Some(true));
    assert_eq!(
        sts["spec"]["template"]["spec"]["securityContext"]["runAsNonRoot"].as_bool(),
        Some(true)
    );
    assert!(
        sts["spec"]["volumeClaimTemplates"][0]["spec"]["resources"]["requests"]["storage"]
            .is_string()
    );
    let svc = find("collector.yaml", "Service", "vigil-collector");
    assert_eq!(svc["spec"]["ports"][0]["port"].as_u64(), Some(7470));
    assert!(text.contains("listen = \"0.0.0.0:7470\""), "{text}");
}
