//! `cargo xtask`: setup, build, run, test and bench for Vigil.
mod bench;
mod setup;

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
    /// Side-by-side benchmarks.
    #[command(subcommand)]
    Bench(bench::Bench),
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

fn build_release() -> anyhow::Result<PathBuf> {
    run(cargo().args(["build", "--release", "--package", "vigil", "--bin", "vigil"]))?;
    Ok(workspace_root().join("target/release/vigil"))
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
            if !is_root() {
                bail!(
                    "the agent loads eBPF programs and needs root: run `sudo -E cargo xtask run`"
                );
            }
            let mut cmd = Command::new(bin);
            cmd.arg("agent").args(if args.is_empty() {
                vec!["--interval".into(), "2s".into()]
            } else {
                args
            });
            run(&mut cmd)
        }
        Task::Test => {
            setup::setup(setup::Mode::IfMissing)?;
            test()
        }
        Task::Bench(b) => {
            setup::setup(setup::Mode::IfMissing)?;
            let vigil = build_release()?;
            bench::run(b, &vigil)
        }
    }
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
    // Privileged tests run the real `vigil` binary against the kernel.
    run(cargo().args(["build", "--package", "vigil", "--bin", "vigil"]))?;
    let vigil = workspace_root().join("target/debug/vigil");
    if !is_root() {
        if std::env::var_os("CI").is_some() {
            bail!("the privileged tests need root, and CI is set: they must run, not skip");
        }
        eprintln!("xtask: not root: the privileged tests will report themselves skipped (run `sudo -E cargo xtask test`)");
    }
    run(cargo()
        .args(["test", "--package", "vigil-tests", "--", "--test-threads=1"])
        .env("VIGIL_BIN", vigil))
}
