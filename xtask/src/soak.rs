//! `cargo xtask soak`: N real agents (host metrics only, except agent 0 which also runs
//! the eBPF probes) stream a batch per interval to one collector for M minutes.
//! Memory is measured after a warm-up (see `default_warm_up`) and at the end; at the end the agents
//! get SIGTERM, and the collector's own counts decide: every sequence from 1 to
//! last_seq stored once per agent, nothing left unacked.
use std::{
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{bail, Context as _};

use crate::bench::{cpu_seconds, rss_mib, start_collector};

struct SoakAgent {
    child: Child,
    log: PathBuf,
}

impl Drop for SoakAgent {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

fn start_agent(
    vigil: &Path,
    dir: &Path,
    i: usize,
    addr: &str,
    interval: u64,
) -> anyhow::Result<SoakAgent> {
    let home = dir.join(format!("agent-{i:03}"));
    std::fs::create_dir_all(&home)?;
    let probes = if i == 0 { "true" } else { "false" };
    let config = format!(
        "interval = \"{interval}s\"\ncollector = \"{addr}\"\nagent_id = \"soak-{i:03}\"\napi = false\n\
         data_dir = \"{}\"\nshutdown_timeout = \"20s\"\n[probes]\nsyscalls = {probes}\nretransmits = {probes}\n\
         [detect]\nenabled = {probes}\n",
        home.display()
    );
    let path = home.join("agent.toml");
    std::fs::write(&path, config)?;
    let log = home.join("agent.log");
    let child = crate::bench::daemon(vigil, "agent")
        .arg("--config")
        .arg(&path)
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log)?)
        .spawn()
        .context("starting an agent")?;
    Ok(SoakAgent { child, log })
}

fn hosts(vigil: &Path, addr: &str) -> anyhow::Result<Vec<serde_json::Value>> {
    let out = Command::new(vigil)
        .args(["hosts", "--collector", addr, "--json"])
        .output()?;
    if !out.status.success() {
        bail!("vigil hosts: {}", String::from_utf8_lossy(&out.stderr));
    }
    let v: serde_json::Value = serde_json::from_slice(&out.stdout)?;
    Ok(v["hosts"].as_array().cloned().unwrap_or_default())
}

/// Memory is compared from the end of the warm-up on: by default long enough for every
/// bounded structure to fill (the agent's syscall history holds 370 intervals, see
/// agent/src/query/state.rs) and for the allocators and SQLite's page cache to reach
/// their working size; at least two minutes.
pub fn default_warm_up(interval: u64) -> Duration {
    Duration::from_secs((370 * interval).max(120))
}

fn growth(before: f64, after: f64) -> f64 {
    (after - before) / before * 100.0
}

pub fn run(
    vigil: &Path,
    agents: usize,
    minutes: u64,
    interval: u64,
    warm_up: Duration,
) -> anyhow::Result<()> {
    let dir = crate::workspace_root().join("target/soak");
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir)?;
    let (collector, addr) = start_collector(vigil, &dir.join("collector"))?;
    let cpid = collector
        .0
        .as_ref()
        .map(|c| c.id())
        .context("collector pid")?;
    let mut fleet = Vec::with_capacity(agents);
    for i in 0..agents {
        fleet.push(start_agent(vigil, &dir, i, &addr, interval)?);
    }
    println!("soak: {agents} agents (agent 0 with eBPF probes) -> collector {addr}, a batch per agent every {interval} s, {minutes} min after a {warm_up:?} warm-up; logs in {}", dir.display());
    std::thread::sleep(warm_up);
    let rss_all = |fleet: &[SoakAgent]| -> Vec<f64> {
        fleet.iter().map(|a| rss_mib(a.child.id()).0).collect()
    };
    let c_before = rss_mib(cpid).0;
    let a_before = rss_all(&fleet);
    let mut c_peak = c_before;
    let cpu_before = cpu_seconds(cpid)?;
    let start = Instant::now();
    let total = Duration::from_secs(minutes * 60);
    while start.elapsed() < total {
        std::thread::sleep(Duration::from_secs(60).min(total.saturating_sub(start.elapsed())));
        let stored: u64 = hosts(vigil, &addr)?
            .iter()
            .filter_map(|h| h["batches"].as_u64())
            .sum();
        c_peak = c_peak.max(rss_mib(cpid).0);
        let alive = fleet
            .iter_mut()
            .filter_map(|a| a.child.try_wait().ok())
            .filter(Option::is_none)
            .count();
        println!(
            "  {:>4.0} s: {stored} batches stored, {alive}/{agents} agents up, collector RSS {:.1} MiB",
            start.elapsed().as_secs_f64(),
            rss_mib(cpid).0
        );
    }
    let streamed = start.elapsed().as_secs_f64();
    let c_after = rss_mib(cpid).0;
    let a_after = rss_all(&fleet);
    let cpu = cpu_seconds(cpid)? - cpu_before;
    for a in &fleet {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(a.child.id() as i32),
            nix::sys::signal::Signal::SIGTERM,
        );
    }
    let mut unclean = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(60);
    for (i, a) in fleet.iter_mut().enumerate() {
        let status = loop {
            if let Some(s) = a.child.try_wait()? {
                break Some(s);
            }
            if Instant::now() > deadline {
                break None;
            }
            std::thread::sleep(Duration::from_millis(50));
        };
        let log = std::fs::read_to_string(&a.log).unwrap_or_default();
        if !status.is_some_and(|s| s.success()) || !log.contains("spool: 0 unacked") {
            unclean.push(format!("agent {i}: {status:?}, log {}", a.log.display()));
        }
    }
    let rows = hosts(vigil, &addr)?;
    drop(collector);
    let mut stored = 0u64;
    let mut lost = 0u64;
    let mut duplicates = 0u64;
    let mut incomplete = Vec::new();
    for i in 0..agents {
        let id = format!("soak-{i:03}");
        match rows.iter().find(|h| h["agent_id"] == id.as_str()) {
            Some(h) => {
                let (b, last, gaps) = (
                    h["batches"].as_u64().unwrap_or(0),
                    h["last_seq"].as_u64().unwrap_or(0),
                    h["gaps"].as_u64().unwrap_or(0),
                );
                stored += b;
                lost += gaps;
                duplicates += h["duplicates"].as_u64().unwrap_or(0);
                if gaps != 0 || b != last {
                    incomplete.push(format!("{id}: {b} batches, last_seq {last}, gaps {gaps}"));
                }
            }
            None => incomplete.push(format!("{id}: never seen by the collector")),
        }
    }
    let mut growths: Vec<f64> = a_before
        .iter()
        .zip(&a_after)
        .map(|(b, a)| growth(*b, *a))
        .collect();
    growths.sort_by(f64::total_cmp);
    let median = growths.get(growths.len() / 2).copied().unwrap_or(0.0);
    let worst = growths.last().copied().unwrap_or(0.0);
    let (sum_before, sum_after): (f64, f64) = (a_before.iter().sum(), a_after.iter().sum());
    let c_growth = growth(c_before, c_after);
    println!();
    println!("| agents | minutes | batches stored | batches/s | lost sequences | duplicates | agents not clean at exit | collector CPU s per 1000 batches |");
    println!("|---:|---:|---:|---:|---:|---:|---:|---:|");
    println!(
        "| {agents} | {minutes} | {stored} | {:.0} | {lost} | {duplicates} | {} | {:.2} |",
        stored as f64 / (streamed + warm_up.as_secs_f64()),
        unclean.len(),
        cpu / (stored as f64 * streamed / (streamed + warm_up.as_secs_f64())) * 1000.0
    );
    println!();
    println!("| memory (RSS) | after warm-up MiB | at the end MiB | growth |");
    println!("|---|---:|---:|---:|");
    println!("| collector (peak while streaming {c_peak:.1}) | {c_before:.1} | {c_after:.1} | {c_growth:+.1} % |");
    println!(
        "| agents, all together | {sum_before:.1} | {sum_after:.1} | {:+.1} % |",
        growth(sum_before, sum_after)
    );
    println!(
        "| agent 0 (with probes) | {:.1} | {:.1} | {:+.1} % |",
        a_before[0],
        a_after[0],
        growth(a_before[0], a_after[0])
    );
    println!("| agents: median / worst growth | | | {median:+.1} % / {worst:+.1} % |");
    println!();
    let mut failures = Vec::new();
    if lost > 0 || !incomplete.is_empty() {
        failures.push(format!("lost sequences: {}", incomplete.join("; ")));
    }
    if !unclean.is_empty() {
        failures.push(format!(
            "agents that did not stop clean with everything acked: {}",
            unclean.join("; ")
        ));
    }
    if c_growth >= 10.0 {
        failures.push(format!("collector memory grew {c_growth:.1} %"));
    }
    if worst >= 10.0 {
        failures.push(format!("an agent's memory grew {worst:.1} %"));
    }
    if failures.is_empty() {
        println!("soak passed: every sequence stored exactly once, memory growth under 10 %");
        Ok(())
    } else {
        bail!("soak failed:\n  {}", failures.join("\n  "))
    }
}
