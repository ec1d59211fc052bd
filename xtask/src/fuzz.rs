//! `cargo xtask fuzz`: the cargo-fuzz targets in fuzz/, each in turn, with libFuzzer's
//! final statistics (executions, seconds) in one table. `--smoke` runs each for a few
//! seconds (part of `cargo xtask test`); without it each runs `--seconds` or `--runs`.
use std::io::{BufRead as _, BufReader};
use std::process::{Command, Stdio};

use anyhow::{bail, Context as _};

/// The targets, as fuzz/Cargo.toml names them.
pub const TARGETS: [&str; 7] = [
    "collector_batch",
    "agent_config",
    "rules",
    "event_decoder",
    "procfs",
    "spool",
    "cert_identity",
];

pub struct Options {
    pub smoke: bool,
    pub seconds: u64,
    pub runs: Option<u64>,
    pub target: Option<String>,
}

struct Outcome {
    target: String,
    executions: u64,
    seconds: u64,
    ok: bool,
}

pub fn run(o: &Options) -> anyhow::Result<()> {
    crate::setup::cargo_fuzz()?;
    let dir = crate::workspace_root().join("fuzz");
    let targets: Vec<&str> = match &o.target {
        Some(t) if TARGETS.contains(&t.as_str()) => vec![t.as_str()],
        Some(t) => bail!("no fuzz target `{t}` (targets: {})", TARGETS.join(", ")),
        None => TARGETS.to_vec(),
    };
    // `cargo fuzz run` builds what it runs (the first target builds the rest of the
    // crate's dependencies; a separate `cargo fuzz build` uses other profile settings
    // and would build everything twice).
    let mut outcomes = Vec::new();
    for t in targets {
        outcomes.push(run_one(&dir, t, o)?);
    }
    println!();
    println!("| fuzz target | executions | seconds | result |");
    println!("|---|---:|---:|---|");
    for r in &outcomes {
        println!(
            "| {} | {} | {} | {} |",
            r.target,
            r.executions,
            r.seconds,
            if r.ok {
                "no crash"
            } else {
                "CRASH (see above)"
            }
        );
    }
    if outcomes.iter().any(|r| !r.ok) {
        bail!("a fuzz target crashed: its input is in fuzz/artifacts/; make it a regression test");
    }
    Ok(())
}

fn run_one(dir: &std::path::Path, target: &str, o: &Options) -> anyhow::Result<Outcome> {
    // New inputs go to a scratch directory (the first corpus directory is the one
    // libFuzzer writes); the committed seeds are read only.
    let scratch = crate::workspace_root()
        .join("target/fuzz-corpus")
        .join(target);
    std::fs::create_dir_all(&scratch).context("creating target/fuzz-corpus")?;
    let seeds = dir.join("corpus").join(target);
    let mut cmd = Command::new("cargo");
    cmd.args(["+nightly", "fuzz", "run", target])
        .arg(&scratch)
        .arg(&seeds)
        .args(["--", "-print_final_stats=1", "-rss_limit_mb=4096"])
        .current_dir(dir)
        .stdout(Stdio::inherit())
        .stderr(Stdio::piped());
    let seconds = if o.smoke { 5 } else { o.seconds };
    match o.runs {
        Some(n) if !o.smoke => cmd.arg(format!("-runs={n}")),
        _ => cmd.arg(format!("-max_total_time={seconds}")),
    };
    eprintln!("fuzz: {target}");
    let mut child = cmd.spawn().context("starting cargo fuzz run")?;
    let stderr = child.stderr.take().context("cargo fuzz stderr")?;
    let (mut executions, mut took): (u64, u64) = (0, 0);
    for line in BufReader::new(stderr).lines().map_while(Result::ok) {
        if let Some(v) = line.strip_prefix("stat::number_of_executed_units:") {
            executions = v.trim().parse().unwrap_or(0);
        } else if let Some(v) = line.strip_prefix("stat::average_exec_per_sec:") {
            let per_sec: u64 = v.trim().parse().unwrap_or(0);
            took = executions.checked_div(per_sec).unwrap_or(0);
        }
        // libFuzzer's progress lines are many; keep what says something went wrong.
        if line.contains("ERROR")
            || line.contains("panicked")
            || line.contains("SUMMARY")
            || line.contains("artifact")
            || line.starts_with("stat::")
        {
            eprintln!("  {line}");
        }
    }
    let status = child.wait().context("waiting for cargo fuzz run")?;
    Ok(Outcome {
        target: target.to_string(),
        executions,
        seconds: took,
        ok: status.success(),
    })
}
