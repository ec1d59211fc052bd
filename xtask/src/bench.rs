//! `cargo xtask bench syscalls`: ns per getppid() in a tight loop pinned to one CPU,
//! with nothing attached, with each variant of Vigil's syscall probe, with the agent
//! as shipped, and with the peers (libbpf-tools `syscount -L`, a bpftrace histogram),
//! all measured in one run and interleaved round by round.
use std::{
    io::{BufRead as _, BufReader},
    process::{Child, Command, Stdio},
    sync::mpsc,
    time::{Duration, Instant},
};

use anyhow::{bail, Context as _};
use clap::Subcommand;

#[derive(Subcommand)]
pub enum Bench {
    /// Syscall probe overhead, side by side with syscount -L and bpftrace.
    Syscalls {
        /// getppid() calls per measurement.
        #[arg(long, default_value_t = 2_000_000)]
        iterations: u64,
        /// Rounds; each configuration is measured once per round, the median is reported.
        #[arg(long, default_value_t = 5)]
        rounds: usize,
        /// CPU to pin the loop to.
        #[arg(long, default_value_t = 1)]
        cpu: usize,
    },
}

/// The same per-syscall latency histogram Vigil keeps, in bpftrace.
const BPFTRACE_SCRIPT: &str = "tracepoint:raw_syscalls:sys_enter { @start[tid] = nsecs; } \
tracepoint:raw_syscalls:sys_exit /@start[tid]/ { @lat[args->id] = hist(nsecs - @start[tid]); delete(@start[tid]); }";

#[derive(Clone, PartialEq, Eq)]
enum Config {
    None,
    /// A syscall probe variant of the vigil binary: (name, description).
    Variant(String, String),
    Shipped,
    Syscount,
    Bpftrace,
}

impl Config {
    fn label(&self) -> String {
        match self {
            Self::None => "no probe".into(),
            Self::Variant(_, describe) => format!("vigil variant: {describe}"),
            Self::Shipped => "vigil as shipped (all probes)".into(),
            Self::Syscount => "libbpf-tools syscount -L".into(),
            Self::Bpftrace => "bpftrace per-syscall hist".into(),
        }
    }
}

/// Something attached for the duration of one measurement; detached on drop.
struct Attached(Option<Child>);

impl Drop for Attached {
    fn drop(&mut self) {
        if let Some(child) = &mut self.0 {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(child.id() as i32),
                nix::sys::signal::Signal::SIGINT,
            );
            let deadline = Instant::now() + Duration::from_secs(10);
            while Instant::now() < deadline {
                if let Ok(Some(_)) = child.try_wait() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// Starts a peer tool and waits until the line saying it is attached (through
/// `stdbuf -oL`: C tools buffer stdout when it is a pipe).
fn spawn_peer(cmd: &mut Command, ready: &str, settle: Duration) -> anyhow::Result<Attached> {
    let mut child = cmd
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .stdin(Stdio::null())
        .spawn()
        .with_context(|| format!("starting {cmd:?}"))?;
    let (tx, rx) = mpsc::channel();
    for stream in [
        child
            .stdout
            .take()
            .map(|s| Box::new(s) as Box<dyn std::io::Read + Send>),
        child
            .stderr
            .take()
            .map(|s| Box::new(s) as Box<dyn std::io::Read + Send>),
    ]
    .into_iter()
    .flatten()
    {
        let tx = tx.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stream).lines().map_while(Result::ok) {
                let _ = tx.send(line);
            }
        });
    }
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match rx.recv_timeout(left) {
            Ok(line) if line.contains(ready) => break,
            Ok(_) => {}
            Err(_) => {
                let _ = child.kill();
                bail!("{cmd:?} did not print {ready:?} within 30 s");
            }
        }
    }
    std::thread::sleep(settle);
    Ok(Attached(Some(child)))
}

fn attach(config: &Config, vigil: &std::path::Path) -> anyhow::Result<Attached> {
    let ready = "vigil: tracing";
    Ok(match config {
        Config::None => Attached(None),
        Config::Variant(name, _) => spawn_peer(
            Command::new(vigil).args(["hold-probes", "--variant", name]),
            ready,
            Duration::ZERO,
        )?,
        Config::Shipped => spawn_peer(
            Command::new(vigil).arg("hold-probes"),
            ready,
            Duration::ZERO,
        )?,
        Config::Syscount => spawn_peer(
            Command::new("stdbuf").args(["-oL", "syscount", "-L"]),
            "Tracing syscalls",
            Duration::from_millis(500),
        )?,
        Config::Bpftrace => spawn_peer(
            Command::new("stdbuf")
                .args(["-oL", "bpftrace", "-e"])
                .arg(BPFTRACE_SCRIPT),
            "Attaching",
            Duration::from_secs(2),
        )?,
    })
}

/// The variants the vigil binary carries, as (name, description).
fn variants(vigil: &std::path::Path) -> anyhow::Result<Vec<(String, String)>> {
    let out = Command::new(vigil)
        .args(["hold-probes", "--list-variants"])
        .output()
        .with_context(|| format!("running {}", vigil.display()))?;
    if !out.status.success() {
        bail!(
            "{} hold-probes --list-variants failed: {}",
            vigil.display(),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.split_once('\t'))
        .map(|(n, d)| (n.to_string(), d.to_string()))
        .collect())
}

/// ns per getppid() on `cpu`, measured in a thread pinned there.
fn measure(iterations: u64, cpu: usize) -> anyhow::Result<f64> {
    std::thread::spawn(move || -> anyhow::Result<f64> {
        let mut set = nix::sched::CpuSet::new();
        set.set(cpu).context("cpu index")?;
        nix::sched::sched_setaffinity(nix::unistd::Pid::from_raw(0), &set)
            .with_context(|| format!("pinning to CPU {cpu}"))?;
        // Warm up caches and the branch predictor.
        for _ in 0..iterations / 10 {
            // SAFETY: getppid has no arguments and no side effects.
            unsafe { libc::syscall(libc::SYS_getppid) };
        }
        let start = Instant::now();
        for _ in 0..iterations {
            // SAFETY: as above.
            unsafe { libc::syscall(libc::SYS_getppid) };
        }
        Ok(start.elapsed().as_nanos() as f64 / iterations as f64)
    })
    .join()
    .map_err(|_| anyhow::anyhow!("measuring thread panicked"))?
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

pub fn run(bench: Bench, vigil: &std::path::Path) -> anyhow::Result<()> {
    let Bench::Syscalls {
        iterations,
        rounds,
        cpu,
    } = bench;
    if !crate::is_root() {
        bail!("the syscall benchmark attaches eBPF programs and needs root: `sudo -E cargo xtask bench syscalls`");
    }
    // syscount and bpftrace look tracepoints up in tracefs but don't mount it.
    if !std::path::Path::new("/sys/kernel/tracing/events").is_dir()
        && !std::path::Path::new("/sys/kernel/debug/tracing/events").is_dir()
    {
        crate::run(Command::new("mount").args(["-t", "tracefs", "nodev", "/sys/kernel/tracing"]))
            .context("mounting tracefs at /sys/kernel/tracing")?;
    }
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    let cpu = cpu.min(cpus - 1);
    let mut configs = vec![Config::None];
    configs.extend(
        variants(vigil)?
            .into_iter()
            .map(|(n, d)| Config::Variant(n, d)),
    );
    configs.extend([Config::Shipped, Config::Syscount, Config::Bpftrace]);
    let mut samples: Vec<Vec<f64>> = vec![Vec::new(); configs.len()];
    println!("bench syscalls: {iterations} getppid() per measurement on CPU {cpu}, {rounds} rounds, configurations interleaved");
    for round in 1..=rounds {
        for (i, config) in configs.iter().enumerate() {
            let attached = attach(config, vigil).with_context(|| config.label())?;
            let ns = measure(iterations, cpu)?;
            drop(attached);
            samples[i].push(ns);
            eprintln!(
                "  round {round}/{rounds} {:<40} {ns:>8.1} ns",
                config.label()
            );
        }
    }
    let medians: Vec<f64> = samples.iter_mut().map(|s| median(s)).collect();
    let at = |c: Config| {
        configs
            .iter()
            .position(|x| *x == c)
            .map(|i| medians[i])
            .unwrap_or(f64::NAN)
    };
    let none = at(Config::None);
    let floor = configs
        .iter()
        .position(|c| matches!(c, Config::Variant(name, _) if name == "empty"))
        .map_or(f64::NAN, |i| medians[i]);
    let floor_added = floor - none;
    let syscount_added = at(Config::Syscount) - none;
    println!();
    println!("| configuration | ns/syscall | added ns | added / floor's added | added / syscount's added |");
    println!("|---|---:|---:|---:|---:|");
    for (i, config) in configs.iter().enumerate() {
        let added = medians[i] - none;
        let (vs_floor, vs_syscount) = if *config == Config::None {
            ("-".to_string(), "-".to_string())
        } else {
            (
                format!("{:.2}x", added / floor_added),
                format!("{:.2}x", added / syscount_added),
            )
        };
        println!(
            "| {} | {:.0} | {:.0} | {} | {} |",
            config.label(),
            medians[i],
            added,
            vs_floor,
            vs_syscount
        );
    }
    let shipped_added = at(Config::Shipped) - none;
    println!();
    println!(
        "target: shipped added cost <= 1.5x the floor's added cost ({:.0} ns): measured {:.2}x -> {}",
        1.5 * floor_added,
        shipped_added / floor_added,
        if shipped_added <= 1.5 * floor_added { "met" } else { "NOT met" }
    );
    Ok(())
}
