//! The container images as users run them (issue #13), with Debian's podman and runc
//! on this machine: the agent privileged, and with least privilege (four capabilities,
//! a seccomp profile, read-only root); the collector as a non-root user with an agent
//! on the host streaming to it over mTLS. The images are the ones `cargo xtask image`
//! built (`cargo xtask test` builds them first).
use std::{
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::Duration,
};

use vigil_tests::{agent_command, daemons::wait_until, require_root, vigil_bin, KillOnDrop};

fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn podman() -> Command {
    let mut cmd = Command::new("podman");
    cmd.env(
        "CONTAINERS_CONF",
        workspace().join("packaging/container/containers.conf"),
    );
    cmd
}

fn image(which: &str) -> Option<String> {
    let tag = format!("localhost/vigil-{which}:{}", env!("CARGO_PKG_VERSION"));
    let exists = podman()
        .args(["image", "exists", &tag])
        .status()
        .is_ok_and(|s| s.success());
    if exists {
        return Some(tag);
    }
    assert!(
        std::env::var_os("CI").is_none(),
        "{tag} is missing and CI is set: run `cargo xtask image` (cargo xtask test does)"
    );
    eprintln!("skipped: {tag} missing (cargo xtask image)");
    None
}

/// A running container, removed on drop.
struct Container(String);

impl Container {
    fn run(name: &str, args: &[&str], image: &str, cmd: &[&str]) -> Self {
        let _ = podman().args(["rm", "-f", name]).output();
        let out = podman()
            .args(["run", "-d", "--name", name])
            .args(args)
            .arg(image)
            .args(cmd)
            .output()
            .expect("podman run");
        assert!(
            out.status.success(),
            "podman run {name}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        Self(name.to_string())
    }

    fn logs(&self) -> String {
        let out = podman()
            .args(["logs", &self.0])
            .output()
            .expect("podman logs");
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    }

    /// `args` run inside it; stdout when it succeeds.
    fn exec(&self, args: &[&str]) -> Option<String> {
        let out = podman()
            .args(["exec", &self.0])
            .args(args)
            .stdin(Stdio::null())
            .output()
            .ok()?;
        out.status
            .success()
            .then(|| String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// Its main process's pid on the host.
    fn pid(&self) -> u32 {
        let out = podman()
            .args(["inspect", "--format", "{{.State.Pid}}", &self.0])
            .output()
            .expect("podman inspect");
        String::from_utf8_lossy(&out.stdout)
            .trim()
            .parse()
            .unwrap_or_else(|_| panic!("no pid for {}: {}", self.0, self.logs()))
    }

    fn running(&self) -> bool {
        let out = podman()
            .args(["inspect", "--format", "{{.State.Running}}", &self.0])
            .output();
        out.is_ok_and(|o| String::from_utf8_lossy(&o.stdout).trim() == "true")
    }
}

impl Drop for Container {
    fn drop(&mut self) {
        let _ = podman().args(["rm", "-f", "-t", "2", &self.0]).output();
    }
}

/// What systemd does at boot: tracefs at /sys/kernel/tracing (the least-privilege
/// container gets it bind-mounted, having no CAP_SYS_ADMIN to mount it itself).
fn host_tracefs() {
    let mounted = std::fs::read_to_string("/proc/self/mounts")
        .unwrap_or_default()
        .lines()
        .any(|l| l.split_whitespace().nth(1) == Some("/sys/kernel/tracing"));
    if !mounted {
        nix::mount::mount(
            Some("nodev"),
            "/sys/kernel/tracing",
            Some("tracefs"),
            nix::mount::MsFlags::empty(),
            None::<&str>,
        )
        .expect("mounting tracefs on the host");
    }
}

/// The agent's answer once its API serves, and every probe has said how it is.
fn agent_stats(c: &Container) -> serde_json::Value {
    let mut last = None;
    wait_until(
        "the agent in the container to answer with its probes",
        Duration::from_secs(60),
        || {
            assert!(c.running(), "the agent container exited:\n{}", c.logs());
            last = c
                .exec(&["vigil", "stats", "--json"])
                .and_then(|t| serde_json::from_str::<serde_json::Value>(&t).ok())
                .filter(|v| v["probes"].as_array().is_some_and(|p| p.len() >= 4));
            last.is_some()
        },
    );
    last.unwrap()
}

fn host_name() -> String {
    // This test runs in the host's UTS namespace.
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .expect("hostname")
        .trim()
        .to_string()
}

/// Checks (a) and (b) share: the host's identity, every probe on, and a finding for
/// an exec done on the host (a program run from /tmp: exec-from-temp-dir).
fn reports_the_host_and_sees_its_execs(c: &Container) {
    let stats = agent_stats(c);
    assert_eq!(stats["hostname"], host_name(), "{stats}");
    let machine_id = std::fs::read_to_string("/etc/machine-id").expect("machine-id");
    assert_eq!(stats["agent_id"], machine_id.trim(), "{stats}");
    for p in stats["probes"].as_array().unwrap() {
        assert_eq!(p["state"], "on", "probe {p} (log:\n{})", c.logs());
    }
    let dir = tempfile::Builder::new()
        .prefix("vigil-container-")
        .tempdir_in("/tmp")
        .unwrap();
    let program = dir.path().join("host-exec-probe");
    std::fs::copy("/bin/true", &program).unwrap();
    let exe = program.to_str().unwrap().to_string();
    let mut seen = false;
    wait_until(
        "a finding for the host's exec",
        Duration::from_secs(30),
        || {
            let status = Command::new(&program).status().expect("running it");
            assert!(status.success());
            seen = c
                .exec(&["vigil", "events", "--json", "--since", "5m"])
                .unwrap_or_default()
                .lines()
                .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
                .any(|f| f["rule"] == "exec-from-temp-dir" && f["process"]["exe"] == exe.as_str());
            seen
        },
    );
}

fn status_field(pid: u32, field: &str) -> String {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| {
            l.strip_prefix(&format!("{field}:"))
                .map(|v| v.trim().to_string())
        })
        .unwrap_or_default()
}

fn cap_mask(bits: &[u32]) -> String {
    format!("{:016x}", bits.iter().fold(0u64, |m, b| m | 1 << b))
}

/// The run the README documents for a privileged agent container.
const PRIVILEGED: &[&str] = &["--privileged", "--pid=host", "-v", "/:/host:ro"];

/// The run the README documents for the least-privilege agent container (the seccomp
/// profile's path is added by the test).
const LEAST_PRIVILEGE: &[&str] = &[
    "--cap-drop=ALL",
    "--cap-add=BPF,PERFMON,SYS_PTRACE,DAC_READ_SEARCH",
    "--security-opt=no-new-privileges",
    "--read-only",
    "--tmpfs=/run/vigil",
    "--tmpfs=/var/lib/vigil/agent",
    "--pid=host",
    "-v",
    "/:/host:ro",
    "-v",
    "/sys/kernel/tracing:/sys/kernel/tracing:ro",
];

#[test]
fn a_privileged_agent_container_reports_the_host_and_its_execs() {
    if !require_root("container: privileged agent") {
        return;
    }
    let Some(agent) = image("agent") else { return };
    let c = Container::run("vigil-test-privileged", PRIVILEGED, &agent, &[]);
    reports_the_host_and_sees_its_execs(&c);
}

#[test]
fn a_least_privilege_agent_container_needs_four_capabilities_and_keeps_two() {
    if !require_root("container: least-privilege agent") {
        return;
    }
    let Some(agent) = image("agent") else { return };
    host_tracefs();
    let seccomp = format!(
        "--security-opt=seccomp={}",
        workspace()
            .join("packaging/container/seccomp-agent.json")
            .display()
    );
    let mut args = LEAST_PRIVILEGE.to_vec();
    args.push(&seccomp);
    let c = Container::run("vigil-test-least-privilege", &args, &agent, &[]);
    reports_the_host_and_sees_its_execs(&c);
    // From the host: the agent kept CAP_SYS_PTRACE (19) and CAP_DAC_READ_SEARCH (2)
    // once its probes were attached; the bounding set is the four it was given.
    let pid = c.pid();
    assert_eq!(status_field(pid, "CapEff"), cap_mask(&[2, 19]), "CapEff");
    assert_eq!(status_field(pid, "CapPrm"), cap_mask(&[2, 19]), "CapPrm");
    assert_eq!(
        status_field(pid, "CapBnd"),
        cap_mask(&[2, 19, 38, 39]),
        "CapBnd: DAC_READ_SEARCH, SYS_PTRACE, PERFMON, BPF"
    );
    assert_eq!(status_field(pid, "NoNewPrivs"), "1");
    assert_eq!(status_field(pid, "Seccomp"), "2", "filtered by the profile");
}

#[test]
fn the_collector_image_runs_unprivileged_and_a_host_agent_streams_to_it_over_mtls() {
    if !require_root("container: collector") {
        return;
    }
    let Some(collector) = image("collector") else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let pki = dir.path().join("tls");
    let certs = |args: &[&str]| {
        let out = Command::new(vigil_bin())
            .arg("certs")
            .args(args)
            .arg("--dir")
            .arg(&pki)
            .output()
            .expect("vigil certs");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    certs(&["init"]);
    certs(&["issue", "--collector", "127.0.0.1"]);
    certs(&["issue", "--agent-id", "container-host"]);
    certs(&["issue", "--operator", "tester"]);
    // Bind-mounted as /etc/vigil/tls: the collector's user must reach into it.
    std::fs::set_permissions(&pki, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    // The collector's key belongs to its user (uid 65532 in the image), mode 0600.
    let key = pki.join("collector-127.0.0.1.key");
    nix::unistd::chown(&key, Some(nix::unistd::Uid::from_raw(65532)), None).unwrap();
    std::fs::rename(
        pki.join("collector-127.0.0.1.pem"),
        pki.join("collector.pem"),
    )
    .unwrap();
    std::fs::rename(&key, pki.join("collector.key")).unwrap();
    let mount = format!("{}:/etc/vigil/tls:ro", pki.display());
    let c = Container::run(
        "vigil-test-collector",
        &["--network=host", "-v", &mount],
        &collector,
        &[
            "--config",
            "/etc/vigil/collector.toml",
            "--listen",
            "127.0.0.1:0",
        ],
    );
    let mut addr = None;
    wait_until(
        "the collector container to listen",
        Duration::from_secs(30),
        || {
            assert!(c.running(), "the collector container exited:\n{}", c.logs());
            addr = c.logs().lines().find_map(|l| {
                l.split("collector listening on ")
                    .nth(1)
                    .and_then(|r| r.split_whitespace().next())
                    .map(String::from)
            });
            addr.is_some()
        },
    );
    let addr = addr.unwrap();
    // Unprivileged: uid 65532, no capabilities at all.
    let pid = c.pid();
    let uid = status_field(pid, "Uid");
    assert!(uid.split_whitespace().all(|u| u == "65532"), "Uid: {uid}");
    for set in ["CapEff", "CapPrm", "CapInh", "CapAmb"] {
        assert_eq!(status_field(pid, set), cap_mask(&[]), "{set}");
    }

    let config = dir.path().join("agent.toml");
    std::fs::write(
        &config,
        "[probes]\nsyscalls = false\nretransmits = false\n[detect]\nenabled = false\n",
    )
    .unwrap();
    let _agent = KillOnDrop(
        agent_command()
            .args([
                "--interval",
                "1s",
                "--collector",
                &addr,
                "--agent-id",
                "container-host",
            ])
            .arg("--config")
            .arg(&config)
            .arg("--data-dir")
            .arg(dir.path().join("data"))
            .arg("--no-api")
            .args(["--tls", "mtls", "--tls-ca"])
            .arg(pki.join("ca.pem"))
            .arg("--tls-cert")
            .arg(pki.join("agent-container-host.pem"))
            .arg("--tls-key")
            .arg(pki.join("agent-container-host.key"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("the host agent"),
    );
    let hosts = |pki: &Path| -> serde_json::Value {
        let out = Command::new(vigil_bin())
            .args([
                "hosts",
                "--json",
                "--collector",
                &addr,
                "--tls",
                "mtls",
                "--tls-ca",
            ])
            .arg(pki.join("ca.pem"))
            .arg("--tls-cert")
            .arg(pki.join("operator-tester.pem"))
            .arg("--tls-key")
            .arg(pki.join("operator-tester.key"))
            .output()
            .expect("vigil hosts");
        serde_json::from_slice(&out.stdout).unwrap_or(serde_json::Value::Null)
    };
    let mut seen = serde_json::Value::Null;
    wait_until(
        "the host agent's batches stored in the container",
        Duration::from_secs(60),
        || {
            seen = hosts(&pki);
            seen["hosts"]
                .as_array()
                .and_then(|l| {
                    l.iter()
                        .find(|h| h["agent_id"] == "container-host")
                        .cloned()
                })
                .is_some_and(|h| {
                    h["batches"].as_u64().unwrap_or(0) >= 3 && h["transport"] == "mtls"
                })
        },
    );
    assert_eq!(seen["collector"]["tls_mode"], "mtls", "{seen}");
}
