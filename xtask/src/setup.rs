//! `cargo xtask setup`: what a fresh Debian/Ubuntu machine lacks to build and test
//! Vigil, installed idempotently. Each step checks first and only acts when needed.
use std::process::{Command, Stdio};

use anyhow::{bail, Context as _};

/// LLVM major version bpf-linker is built against (must match the distribution's
/// llvm-N-dev and rustc nightly's LLVM closely enough to read its bitcode).
const LLVM: &str = "22";

/// Debian packages: LLVM for bpf-linker, protoc for the wire format, and the tools the tests and benchmarks use
/// as independent witnesses or workloads.
const PACKAGES: &[&str] = &[
    "llvm-22-dev",
    "libpolly-22-dev",
    "libzstd-dev",
    "zlib1g-dev",
    "bpftrace",
    "libbpf-tools",
    "nftables",
    "iproute2",
    "protobuf-compiler",
    // The certificates `vigil certs` makes are checked with openssl.
    "openssl",
    // Packaging (`cargo xtask package`) and its tests: a Debian 12 root to install the
    // .deb into, lintian, rpm and rpmlint, and podman/buildah (with runc: crun refuses
    // hybrid cgroup layouts) for the container images.
    "mmdebstrap",
    "lintian",
    "rpm",
    "rpmlint",
    "podman",
    "buildah",
    "runc",
    // The detection tests really do what attackers do: setcap (file capabilities),
    // ssh-keygen (a private key to read), logrotate (rotation must stay quiet),
    // e2fsprogs' chattr (immutable bits), passwd's useradd/usermod (accounts).
    "libcap2-bin",
    "openssh-client",
    "logrotate",
    "e2fsprogs",
    "passwd",
    // A configuration management run (ansible-playbook against localhost) is benign
    // work the rules must stay quiet for; adduser and ca-certificates likewise.
    "ansible-core",
    "adduser",
    "ca-certificates",
    // /metrics is checked against the real peers: promtool lints it, Prometheus
    // scrapes it, node_exporter is compared with it; curl fetches it.
    "prometheus",
    "prometheus-node-exporter",
    // Remote write is checked against two real receivers (Prometheus and
    // VictoriaMetrics); vmagent (in the same package) is the benchmark's peer.
    "victoria-metrics",
    "curl",
    // Several collectors share one PostgreSQL store: the test runs Debian's server.
    "postgresql",
    // Alerts are routed through a real Alertmanager (and silences made in it).
    "prometheus-alertmanager",
    // `vigil top` is tested in a real terminal: tmux panes of a known size.
    "tmux",
];

#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// `cargo xtask setup`: report every step.
    Explicit,
    /// Before run/test/bench: quiet unless something is missing.
    IfMissing,
}

fn quiet(cmd: &mut Command) -> bool {
    cmd.stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

fn output(cmd: &mut Command) -> Option<String> {
    let out = cmd.stderr(Stdio::null()).output().ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).into_owned())
}

fn say(mode: Mode, msg: &str) {
    if mode == Mode::Explicit {
        println!("setup: {msg}");
    }
}

pub fn setup(mode: Mode) -> anyhow::Result<()> {
    nightly_rust_src(mode)?;
    debian_packages(mode)?;
    bpf_linker(mode)?;
    cargo_fuzz_if(mode)?;
    python_grpc(mode)?;
    python_kubernetes_validate(mode)?;
    for (tool, version, check) in CARGO_TOOLS {
        cargo_tool(mode, tool, version, check)?;
    }
    say(mode, "everything is in place");
    Ok(())
}

fn nightly_rust_src(mode: Mode) -> anyhow::Result<()> {
    let installed = output(Command::new("rustup").args([
        "component",
        "list",
        "--installed",
        "--toolchain",
        "nightly",
    ]));
    if installed
        .as_deref()
        .is_some_and(|s| s.lines().any(|l| l.starts_with("rust-src")))
    {
        say(mode, "nightly toolchain with rust-src: present");
        return Ok(());
    }
    println!("setup: installing the nightly toolchain's rust-src (the eBPF crate builds core from source)");
    // `component add`, not `toolchain install`: the latter would move nightly forward.
    crate::run(Command::new("rustup").args(["component", "add", "rust-src", "--toolchain", "nightly"]))
        .context("rustup could not add rust-src to the nightly toolchain; is a nightly toolchain installed (`rustup toolchain list`)?")
}

/// A gRPC client from outside the project for the remote API's tests: Python's
/// grpcio with server reflection and health checking, from PyPI.
const PYTHON_GRPC: &[&str] = &[
    "grpcio",
    "grpcio-reflection",
    "grpcio-health-checking",
    "protobuf",
];

fn python_grpc(mode: Mode) -> anyhow::Result<()> {
    if quiet(Command::new("python3").args(["-c", "import grpc, grpc_reflection, grpc_health"])) {
        say(mode, "python3 grpcio with reflection and health: present");
        return Ok(());
    }
    println!(
        "setup: installing {} for python3 (pip)",
        PYTHON_GRPC.join(", ")
    );
    crate::run(
        Command::new("python3")
            .args([
                "-m",
                "pip",
                "install",
                "--quiet",
                "--disable-pip-version-check",
            ])
            .args(PYTHON_GRPC),
    )
    .context("pip could not install the Python gRPC client the remote API tests use")
}

/// Cargo subcommands the packaging uses: (crate, version, the subcommand to check).
const CARGO_TOOLS: &[(&str, &str, &str)] = &[
    ("cargo-deb", "3.8.0", "deb"),
    ("cargo-generate-rpm", "0.21.1", "generate-rpm"),
];

fn cargo_tool(mode: Mode, tool: &str, version: &str, check: &str) -> anyhow::Result<()> {
    if quiet(Command::new("cargo").args([check, "--version"])) {
        say(mode, &format!("{tool}: present"));
        return Ok(());
    }
    println!("setup: installing {tool} {version} (about a minute)");
    crate::run(Command::new("cargo").args(["install", "--locked", tool, "--version", version]))
        .with_context(|| format!("installing {tool} failed"))
}

/// The Kubernetes manifests' validator: PyPI's kubernetes-validate carries the API
/// schemas of each Kubernetes version and validates offline.
fn python_kubernetes_validate(mode: Mode) -> anyhow::Result<()> {
    if quiet(Command::new("kubernetes-validate").arg("--version"))
        || quiet(Command::new("python3").args(["-c", "import kubernetes_validate"]))
    {
        say(mode, "python3 kubernetes-validate: present");
        return Ok(());
    }
    println!("setup: installing kubernetes-validate for python3 (pip)");
    crate::run(Command::new("python3").args([
        "-m",
        "pip",
        "install",
        "--quiet",
        "--disable-pip-version-check",
        "kubernetes-validate",
    ]))
    .context("pip could not install kubernetes-validate")
}

fn missing_packages() -> Vec<&'static str> {
    PACKAGES.iter().copied().filter(|p| !installed(p)).collect()
}

/// Peers only the benchmarks run (not needed to build or test).
const BENCH_PACKAGES: &[&str] = &["prometheus-node-exporter"];

/// Installs the benchmarks' peers when missing.
pub fn bench_packages() -> anyhow::Result<()> {
    install(
        BENCH_PACKAGES
            .iter()
            .copied()
            .filter(|p| !installed(p))
            .collect(),
    )
}

fn installed(package: &str) -> bool {
    let status = output(Command::new("dpkg-query").args(["-W", "-f=${Status}", package]));
    status.is_some_and(|s| s.contains("install ok installed"))
}

fn debian_packages(mode: Mode) -> anyhow::Result<()> {
    let missing = missing_packages();
    if missing.is_empty() {
        say(
            mode,
            &format!("Debian packages ({}): present", PACKAGES.join(", ")),
        );
        return Ok(());
    }
    install(missing)
}

fn install(missing: Vec<&str>) -> anyhow::Result<()> {
    if missing.is_empty() {
        return Ok(());
    }
    if !crate::is_root() {
        bail!("missing Debian packages: {}; install them with `sudo apt-get install -y {}` or run `sudo -E cargo xtask setup`", missing.join(" "), missing.join(" "));
    }
    if !quiet(Command::new("which").arg("apt-get")) {
        bail!("missing packages {} and no apt-get: this setup supports Debian/Ubuntu; install the equivalents by hand", missing.join(" "));
    }
    println!("setup: installing {}", missing.join(" "));
    crate::run(Command::new("apt-get").arg("update").arg("-q"))
        .context("apt-get update failed: check the network and /etc/apt/sources.list")?;
    crate::run(
        Command::new("apt-get")
            .args(["install", "-y", "-q", "--no-install-recommends"])
            .args(&missing)
            .env("DEBIAN_FRONTEND", "noninteractive"),
    )
    .with_context(|| {
        format!(
            "apt-get could not install {}; LLVM {LLVM} comes from bookworm-security on Debian 12",
            missing.join(" ")
        )
    })
}

fn bpf_linker(mode: Mode) -> anyhow::Result<()> {
    // `bpf-linker --version` doesn't name its LLVM; the installed-crate list records
    // the features it was built with.
    let list = output(Command::new("cargo").args(["install", "--list"])).unwrap_or_default();
    let present = quiet(Command::new("bpf-linker").arg("--version"));
    let cargo_home = std::env::var("CARGO_HOME")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|_| {
            std::path::PathBuf::from(std::env::var("HOME").unwrap_or_else(|_| "/root".into()))
                .join(".cargo")
        });
    let crates2 = std::fs::read_to_string(cargo_home.join(".crates2.json")).unwrap_or_default();
    let right_llvm = crates2.contains(&format!("\"llvm-{LLVM}\""));
    if present && list.contains("bpf-linker") && right_llvm {
        say(mode, &format!("bpf-linker (LLVM {LLVM}): present"));
        return Ok(());
    }
    println!("setup: building bpf-linker against LLVM {LLVM} (about a minute)");
    let prefix = format!("/usr/lib/llvm-{LLVM}");
    crate::run(
        Command::new("cargo")
            .args(["install", "bpf-linker", "--force", "--no-default-features", "--features", &format!("llvm-{LLVM}")])
            .env("LLVM_PREFIX", &prefix)
            .env(format!("LLVM_SYS_{LLVM}1_PREFIX"), &prefix),
    )
    .with_context(|| format!("building bpf-linker failed; it needs llvm-{LLVM}-dev and libpolly-{LLVM}-dev (`cargo xtask setup` installs them as root)"))
}

fn cargo_fuzz_if(mode: Mode) -> anyhow::Result<()> {
    if quiet(Command::new("cargo").args(["+nightly", "fuzz", "--version"])) {
        say(mode, "cargo-fuzz: present");
        return Ok(());
    }
    cargo_fuzz()
}

/// cargo-fuzz, for `cargo xtask fuzz` (libFuzzer on the nightly toolchain).
pub fn cargo_fuzz() -> anyhow::Result<()> {
    if quiet(Command::new("cargo").args(["+nightly", "fuzz", "--version"])) {
        return Ok(());
    }
    println!("setup: installing cargo-fuzz (about two minutes)");
    crate::run(Command::new("cargo").args(["install", "cargo-fuzz", "--locked"]))
        .context("installing cargo-fuzz failed")
}
