//! `cargo xtask bench alerts`: a recorded 10-minute run of this host under an ordinary
//! mixed workload (a compile, a file copy, a network transfer), replayed through the
//! built-in alert rules: how many alerts fire (the goal is none) and the engine's CPU
//! per 1,000 evaluations.
//!
//! `--record` makes the recording (as root: a real agent, every probe, the default
//! 10 s interval, no collector, for `--minutes`) and writes it to RECORDING; without
//! it the committed recording is replayed, so the figure is the same on every machine.
use std::{
    path::{Path, PathBuf},
    process::{Command, Stdio},
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc,
    },
    time::{Duration, Instant},
};

use anyhow::{bail, Context as _};

use crate::bench::{daemon, start_tracer};

/// The committed recording.
pub const RECORDING: &str = "bench/recordings/alerts-mixed-10min.pb";

fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("the workspace")
        .to_path_buf()
}

fn bench_bin(vigil: &Path) -> PathBuf {
    crate::sibling(vigil, "vigil-bench")
}

pub fn alerts(vigil: &Path, record: bool, minutes: u64) -> anyhow::Result<()> {
    let recording = workspace().join(RECORDING);
    if record {
        make_recording(vigil, &recording, minutes)?;
    }
    if !recording.exists() {
        bail!(
            "{} is missing: `sudo -E cargo xtask bench alerts --record` makes it",
            recording.display()
        );
    }
    let out = Command::new(bench_bin(vigil))
        .args(["alerts-replay", "--recording"])
        .arg(&recording)
        .output()
        .context("running vigil-bench alerts-replay")?;
    if !out.status.success() {
        bail!(
            "vigil-bench alerts-replay failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let v: serde_json::Value = serde_json::from_slice(&out.stdout)?;
    let changes = v["fired"].as_array().cloned().unwrap_or_default();
    let fired: Vec<&serde_json::Value> =
        changes.iter().filter(|c| c["state"] == "firing").collect();
    let pending = changes.iter().filter(|c| c["state"] == "pending").count();
    println!(
        "bench alerts: {} ({} batches at {} s over {} s, a compile, a file copy and a network transfer), {} built-in rules",
        RECORDING,
        v["batches"],
        v["interval_secs"],
        v["span_secs"],
        v["rules"]
    );
    println!("  alerts fired:                    {}", fired.len());
    println!(
        "  alerts gone pending:             {pending} (conditions that held at all; rules whose `for` is longer than the recording cannot fire in it)"
    );
    for f in &changes {
        println!(
            "    {} {} ({}) {} after {} s: {}",
            f["state"].as_str().unwrap_or(""),
            f["alert"].as_str().unwrap_or(""),
            f["severity"].as_str().unwrap_or(""),
            f["labels"],
            f["after_secs"],
            f["summary"].as_str().unwrap_or("")
        );
    }
    println!(
        "  engine CPU per 1,000 evaluations: {:.2} ms ({} evaluations)",
        v["cpu_ms_per_1000_evaluations"].as_f64().unwrap_or(0.0),
        v["evaluations"]
    );
    Ok(())
}

/// Runs `cmd` in a loop until `stop`.
fn repeat(
    stop: &Arc<AtomicBool>,
    what: &'static str,
    script: String,
) -> std::thread::JoinHandle<u64> {
    let stop = stop.clone();
    std::thread::spawn(move || {
        let mut rounds = 0;
        while !stop.load(Ordering::Relaxed) {
            let ok = Command::new("sh")
                .args(["-c", &script])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status()
                .is_ok_and(|s| s.success());
            if !ok {
                eprintln!("bench alerts: the {what} workload failed; continuing");
                std::thread::sleep(Duration::from_secs(1));
            }
            rounds += 1;
        }
        rounds
    })
}

fn make_recording(vigil: &Path, out: &Path, minutes: u64) -> anyhow::Result<()> {
    if !crate::is_root() {
        bail!(
            "recording runs the agent with its probes: `sudo -E cargo xtask bench alerts --record`"
        );
    }
    let dir = std::env::temp_dir().join(format!("vigil-bench-alerts-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(dir.join("work"))?;
    let work = dir.join("work");
    std::fs::write(
        dir.join("agent.toml"),
        format!(
            "interval = \"10s\"\ndata_dir = \"{}\"\nsocket = \"{}\"\nalerts_dir = \"{}\"\n",
            dir.join("data").display(),
            dir.join("agent.sock").display(),
            dir.join("alerts.d").display()
        ),
    )?;
    // A C program to compile again and again, a 256 MiB file to copy, and a web server
    // on loopback to download it from.
    let source: String = (0..400)
        .map(|i| format!("double f{i}(double x) {{ double y = x; for (int k = 0; k < {i}; k++) y = y * 1.0001 + k; return y; }}\n"))
        .collect::<String>()
        + "int main(void) { return 0; }\n";
    std::fs::write(work.join("prog.c"), source)?;
    crate::run(Command::new("dd").args([
        "if=/dev/urandom",
        &format!("of={}", work.join("big").display()),
        "bs=1M",
        "count=256",
        "status=none",
    ]))?;
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0")?;
        l.local_addr()?.port()
    };
    let mut server = crate::bench::Attached(Some(
        Command::new("python3")
            .args([
                "-m",
                "http.server",
                &port.to_string(),
                "--bind",
                "127.0.0.1",
            ])
            .current_dir(&work)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .context("starting python3 -m http.server")?,
    ));
    let agent = start_tracer(
        daemon(vigil, "agent")
            .arg("--config")
            .arg(dir.join("agent.toml")),
        "tracing the host every",
        "\u{0}never",
    )?;
    println!("bench alerts: recording {minutes} minutes of a compile, a file copy and a network transfer ...");
    let stop = Arc::new(AtomicBool::new(false));
    let w = work.display();
    let workers = vec![
        (
            "compile",
            repeat(&stop, "compile", format!("cc -O2 -o {w}/prog {w}/prog.c")),
        ),
        (
            "copy",
            repeat(
                &stop,
                "copy",
                format!("cp {w}/big {w}/big.copy && sync && rm {w}/big.copy"),
            ),
        ),
        (
            "transfer",
            repeat(
                &stop,
                "transfer",
                format!("curl -sf -o /dev/null http://127.0.0.1:{port}/big"),
            ),
        ),
    ];
    let until = Instant::now() + Duration::from_secs(minutes * 60);
    while Instant::now() < until {
        std::thread::sleep(Duration::from_secs(1));
    }
    stop.store(true, Ordering::Relaxed);
    for (what, w) in workers {
        let n = w
            .join()
            .map_err(|_| anyhow::anyhow!("{what} worker panicked"))?;
        println!("  {what}: {n} rounds");
    }
    drop(agent);
    drop(server.0.take().map(|mut c| {
        let _ = c.kill();
        c.wait()
    }));
    if let Some(parent) = out.parent() {
        std::fs::create_dir_all(parent)?;
    }
    crate::run(
        Command::new(bench_bin(vigil))
            .args(["alerts-record", "--spool"])
            .arg(dir.join("data/spool"))
            .arg("--out")
            .arg(out),
    )?;
    let _ = std::fs::remove_dir_all(&dir);
    Ok(())
}
