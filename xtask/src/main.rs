//! `cargo xtask`: setup, build, run, test and bench for Vigil.
mod bench;
mod bench_alerts;
mod bench_detect;
mod bench_remote_write;
mod fuzz;
mod image;
mod package;
mod setup;
mod soak;

use std::{path::PathBuf, process::Command};

use anyhow::{bail, Context as _};
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "cargo xtask")]
struct Cli {
    #[command(subcommand)]
    command: Task,
}

#[derive(Subcommand)]
enum Task {
    /// Install what building and testing need (idempotent; a second run is a no-op).
    Setup,
    /// Build the agent (release) with its embedded eBPF programs.
    Build,
    /// Build, then run the agent in the foreground with a live summary (needs root).
    Run {
        /// Arguments passed to `vigil agent`.
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
    /// Unit tests, then the privileged tests against the running kernel.
    Test,
    /// Container images of the release build (localhost/vigil-agent and
    /// localhost/vigil-collector), built with podman from scratch.
    Image,
    /// The release build as .deb and .rpm packages (vigil-agent, vigil-collector)
    /// under target/packages/.
    Package,
    /// Side-by-side benchmarks.
    #[command(subcommand)]
    Bench(bench::Bench),
    /// The cargo-fuzz targets (fuzz/), one after another, with their execution counts.
    Fuzz {
        /// A few seconds per target (what `cargo xtask test` runs).
        #[arg(long)]
        smoke: bool,
        /// Seconds per target.
        #[arg(long, default_value_t = 60)]
        seconds: u64,
        /// Executions per target instead of a time limit.
        #[arg(long)]
        runs: Option<u64>,
        /// Only this target.
        target: Option<String>,
    },
    /// Many agents streaming to one collector for a while: no lost sequence, memory
    /// growth under 10 % (exit status 1 otherwise).
    Soak {
        #[arg(long, default_value_t = 100)]
        agents: usize,
        /// How long the agents stream, after a two-minute warm-up.
        #[arg(long, default_value_t = 10)]
        minutes: u64,
        /// Agent interval in seconds (a batch per agent per interval).
        #[arg(long, default_value_t = 1)]
        interval: u64,
        /// Seconds before memory is first measured (default: until every bounded
        /// structure has filled, at least 120).
        #[arg(long)]
        warm_up: Option<u64>,
    },
}

pub fn workspace_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(PathBuf::from)
        .unwrap_or_default()
}

pub fn is_root() -> bool {
    nix::unistd::geteuid().is_root()
}

/// Runs a command in the workspace root, failing with the command line if it fails.
pub fn run(cmd: &mut Command) -> anyhow::Result<()> {
    let status = cmd
        .current_dir(workspace_root())
        .status()
        .with_context(|| format!("starting {cmd:?}"))?;
    if !status.success() {
        bail!("{cmd:?} failed: {status}");
    }
    Ok(())
}

fn cargo() -> Command {
    Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
}

/// The binaries: the `vigil` CLI, the two daemons and the benchmark's programs, side by
/// side in one directory (see `sibling`).
const PACKAGES: [&str; 8] = [
    "--package",
    "vigil",
    "--package",
    "vigil-agent",
    "--package",
    "vigil-collector",
    "--package",
    "vigil-bench",
];

/// Builds every binary in release; returns the `vigil` CLI's path.
fn build_release() -> anyhow::Result<PathBuf> {
    run(cargo()
        .args(["build", "--release", "--bins"])
        .args(PACKAGES))?;
    Ok(workspace_root().join("target/release/vigil"))
}

/// Another binary of the same build, next to the `vigil` CLI at `vigil`.
pub(crate) fn sibling(vigil: &std::path::Path, name: &str) -> PathBuf {
    vigil.with_file_name(name)
}

fn main() -> anyhow::Result<()> {
    match Cli::parse().command {
        Task::Setup => setup::setup(setup::Mode::Explicit),
        Task::Build => {
            setup::setup(setup::Mode::IfMissing)?;
            let bin = build_release()?;
            println!("built {}", bin.display());
            Ok(())
        }
        Task::Run { args } => {
            setup::setup(setup::Mode::IfMissing)?;
            let bin = build_release()?;
            run_agent_and_collector(&bin, args)
        }
        Task::Test => {
            setup::setup(setup::Mode::IfMissing)?;
            test()
        }
        Task::Image => {
            setup::setup(setup::Mode::IfMissing)?;
            build_release()?;
            image::images()
        }
        Task::Package => {
            setup::setup(setup::Mode::IfMissing)?;
            let bin = build_release()?;
            package::package(&bin).map(drop)
        }
        Task::Bench(b) => {
            setup::setup(setup::Mode::IfMissing)?;
            plaintext();
            let vigil = build_release()?;
            bench::run(b, &vigil)
        }
        Task::Fuzz {
            smoke,
            seconds,
            runs,
            target,
        } => {
            setup::setup(setup::Mode::IfMissing)?;
            fuzz::run(&fuzz::Options {
                smoke,
                seconds,
                runs,
                target,
            })
        }
        Task::Soak {
            agents,
            minutes,
            interval,
            warm_up,
        } => {
            setup::setup(setup::Mode::IfMissing)?;
            plaintext();
            let vigil = build_release()?;
            let warm_up = warm_up.map_or_else(
                || soak::default_warm_up(interval),
                std::time::Duration::from_secs,
            );
            soak::run(&vigil, agents, minutes, interval, warm_up)
        }
    }
}

/// Ctrl-Cs seen by `cargo xtask run` (its daemons do not get them from the terminal).
static INTERRUPTS: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);

extern "C" fn count_interrupt(_: libc::c_int) {
    INTERRUPTS.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
}

/// Waits for `child` to exit; a Ctrl-C meanwhile (the second of the run) kills it.
fn wait_or_force(
    child: &mut std::process::Child,
    what: &str,
) -> anyhow::Result<std::process::ExitStatus> {
    let before = INTERRUPTS.load(std::sync::atomic::Ordering::SeqCst);
    loop {
        if let Some(status) = child.try_wait()? {
            return Ok(status);
        }
        if INTERRUPTS.load(std::sync::atomic::Ordering::SeqCst) > before {
            eprintln!("xtask: second Ctrl-C: killing the {what}");
            let _ = child.kill();
            return Ok(child.wait()?);
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
}

/// The benchmarks and the soak run their daemons and CLI calls in plaintext
/// (`VIGIL_TLS=off`, inherited by every child; a baseline binary from before TLS
/// ignores it), so that their figures compare like with like.
fn plaintext() {
    // Set before any thread or child exists.
    std::env::set_var("VIGIL_TLS", "off");
}

/// The development PKI `cargo xtask run` uses (made once with `vigil certs`): a CA,
/// the collector's certificate for 127.0.0.1, the agent's and an operator's.
fn run_pki(bin: &std::path::Path, dir: &std::path::Path) -> anyhow::Result<()> {
    let certs = |args: &[&str]| -> anyhow::Result<()> {
        let status = Command::new(bin)
            .arg("certs")
            .args(args)
            .arg("--dir")
            .arg(dir)
            .stdout(std::process::Stdio::null())
            .status()
            .context("running vigil certs")?;
        if !status.success() {
            bail!("vigil certs {} failed", args.join(" "));
        }
        Ok(())
    };
    if !dir.join("ca.pem").exists() {
        certs(&["init"])?;
    }
    for (file, args) in [
        (
            "collector-127.0.0.1.pem",
            ["issue", "--collector", "127.0.0.1"],
        ),
        ("agent-xtask-run.pem", ["issue", "--agent-id", "xtask-run"]),
        ("operator-xtask.pem", ["issue", "--operator", "xtask"]),
    ] {
        if !dir.join(file).exists() {
            certs(&args)?;
        }
    }
    Ok(())
}

/// `cargo xtask run`: a collector with its store under target/vigil-run, an agent
/// streaming to it (log in target/vigil-run/agent.log), and `vigil top` in the
/// foreground. Ctrl-C reaches all three (same process group); xtask itself only
/// waits, then makes sure the agent and collector are gone. Should xtask itself die
/// instead (a closed terminal's SIGHUP, which the agent takes as "reload"), the kernel
/// sends both children SIGTERM.
fn run_agent_and_collector(bin: &std::path::Path, args: Vec<String>) -> anyhow::Result<()> {
    use nix::sys::signal::{kill, sigaction, SaFlags, SigAction, SigHandler, SigSet, Signal};
    let data_dir = workspace_root().join("target/vigil-run/collector");
    let addr = "127.0.0.1:7470";
    // The daemons run in their own process group, so the terminal's Ctrl-C reaches
    // only `vigil top` and this process, which then stops them in order: the agent
    // first (it sends and gets acks for what it has), then the collector. A second
    // Ctrl-C while they stop kills them. A handler, not SIG_IGN (which children
    // would inherit).
    let action = SigAction::new(
        SigHandler::Handler(count_interrupt),
        SaFlags::empty(),
        SigSet::empty(),
    );
    // SAFETY: the handler only increments an atomic, which is async-signal-safe.
    unsafe { sigaction(Signal::SIGINT, &action) }.context("installing the SIGINT handler")?;
    // Mutual TLS end to end, as on a fleet.
    let pki = workspace_root().join("target/vigil-run/pki");
    run_pki(bin, &pki)?;
    let tls = |who: &str| -> Vec<std::ffi::OsString> {
        vec![
            "--tls".into(),
            "mtls".into(),
            "--tls-ca".into(),
            pki.join("ca.pem").into(),
            "--tls-cert".into(),
            pki.join(format!("{who}.pem")).into(),
            "--tls-key".into(),
            pki.join(format!("{who}.key")).into(),
        ]
    };
    let mut collector = own_group(with_parent(bench::daemon(bin, "collector")))
        .args(["--listen", addr, "--data-dir"])
        .arg(&data_dir)
        .args(tls("collector-127.0.0.1"))
        .spawn()
        .context("starting the collector")?;
    // Ready when it accepts connections.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while std::net::TcpStream::connect(addr).is_err() {
        if let Some(status) = collector.try_wait()? {
            bail!("the collector exited at once ({status}); is {addr} in use?");
        }
        if std::time::Instant::now() > deadline {
            bail!("the collector did not listen on {addr} within 10 s");
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    if !is_root() {
        eprintln!("xtask: not root: the agent runs without its eBPF probes (run `sudo -E cargo xtask run` for them)");
    }
    eprintln!(
        "xtask: mutual TLS with the certificates in {0}; read the collector with\n  {1} hosts --collector {addr} --tls-ca {0}/ca.pem --tls-cert {0}/operator-xtask.pem --tls-key {0}/operator-xtask.key",
        pki.display(),
        bin.display()
    );
    let run_dir = workspace_root().join("target/vigil-run");
    let socket = run_dir.join("agent.sock");
    std::fs::create_dir_all(&run_dir).context("creating target/vigil-run")?;
    let log = std::fs::File::create(run_dir.join("agent.log"))
        .context("creating target/vigil-run/agent.log")?;
    let _ = std::fs::remove_file(&socket);
    let mut agent = own_group(with_parent(bench::daemon(bin, "agent")))
        .args(["--collector", addr, "--top", "0", "--socket"])
        .arg(&socket)
        .arg("--data-dir")
        .arg(run_dir.join("agent"))
        .args(tls("agent-xtask-run"))
        .args(if args.is_empty() {
            vec!["--interval".into(), "2s".into()]
        } else {
            args
        })
        .stdout(log.try_clone()?)
        .stderr(log)
        .spawn()
        .context("starting the agent")?;
    // `vigil top` draws the host at once and the agent's part when it answers; wait
    // for the socket so the first frame has it.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while !socket.exists() && std::time::Instant::now() < deadline {
        if let Some(status) = agent.try_wait()? {
            bail!("the agent exited at once ({status}): see target/vigil-run/agent.log");
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    let top = Command::new(bin)
        .arg("top")
        .arg("--socket")
        .arg(&socket)
        .status()
        .context("starting vigil top");
    eprintln!("xtask: stopping the agent, then the collector (Ctrl-C again to force)");
    let _ = kill(
        nix::unistd::Pid::from_raw(agent.id() as i32),
        Signal::SIGTERM,
    );
    let agent_status = wait_or_force(&mut agent, "agent")?;
    let _ = kill(
        nix::unistd::Pid::from_raw(collector.id() as i32),
        Signal::SIGTERM,
    );
    let _ = wait_or_force(&mut collector, "collector");
    println!(
        "xtask: stopped; collector store in {}, agent log in {}",
        data_dir.display(),
        run_dir.join("agent.log").display()
    );
    if !agent_status.success() && agent_status.code().is_some() {
        bail!("the agent failed ({agent_status}): see target/vigil-run/agent.log");
    }
    top?;
    Ok(())
}

/// `cmd` in a process group of its own: the terminal's Ctrl-C does not reach it.
fn own_group(mut cmd: Command) -> Command {
    use std::os::unix::process::CommandExt as _;
    cmd.process_group(0);
    cmd
}

/// `cmd`, made to receive SIGTERM when this process dies.
fn with_parent(mut cmd: Command) -> Command {
    use std::os::unix::process::CommandExt as _;
    // SAFETY: prctl is async-signal-safe and touches only the child being set up.
    unsafe {
        cmd.pre_exec(|| {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    cmd
}

fn test() -> anyhow::Result<()> {
    // Unit tests everywhere (the eBPF crate only builds for the BPF target).
    run(cargo().args([
        "test",
        "--workspace",
        "--exclude",
        "vigil-ebpf",
        "--exclude",
        "vigil-tests",
    ]))?;
    // Privileged tests run the real binaries (the `vigil` CLI, the `vigil-agent` and
    // `vigil-collector` daemons) against the kernel.
    run(cargo().args(["build", "--bins"]).args(PACKAGES))?;
    // The packaging tests install what users get: the release build, packaged.
    let release = build_release()?;
    package::package(&release)?;
    image::images()?;
    let vigil = workspace_root().join("target/debug/vigil");
    if !is_root() {
        if std::env::var_os("CI").is_some() {
            bail!("the privileged tests need root, and CI is set: they must run, not skip");
        }
        eprintln!("xtask: not root: the privileged tests will report themselves skipped (run `sudo -E cargo xtask test`)");
    }
    run(cargo()
        .args(["test", "--package", "vigil-tests", "--", "--test-threads=1"])
        .env("VIGIL_BIN", vigil))?;
    // Every fuzz target for a few seconds: they build, and their seeds do not crash.
    fuzz::run(&fuzz::Options {
        smoke: true,
        seconds: 5,
        runs: None,
        target: None,
    })
}
