//! `cargo xtask bench remote-write`: the collector's remote-write forwarding, side by
//! side with vmagent (Debian's victoria-metrics package) relaying the same series to
//! the same receiver, in one run: the collector's store is filled by the ingest load
//! generator, then the collector starts again with `--remote-write` pointed at vmagent,
//! which relays to VictoriaMetrics. Each process's CPU time from the start of the
//! forwarding to the receiver holding every sample gives samples per CPU second.
use std::{
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{bail, Context};

use crate::bench::{cpu_seconds, spawn_collector, start_collector, Attached};

fn free_port() -> anyhow::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

fn get(url: &str) -> String {
    Command::new("curl")
        .args(["-sf", "--max-time", "5", url])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
        .unwrap_or_default()
}

/// The sum of a metric's samples whose line contains `filter` in a /metrics text.
fn metric(text: &str, name: &str, filter: &str) -> f64 {
    text.lines()
        .filter(|l| l.starts_with(name) && l.contains(filter))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

fn wait(what: &str, max: Duration, mut cond: impl FnMut() -> bool) -> anyhow::Result<()> {
    let end = Instant::now() + max;
    while !cond() {
        if Instant::now() > end {
            bail!("timed out waiting for {what}");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    Ok(())
}

fn spawn(cmd: &mut Command) -> anyhow::Result<Attached> {
    let child = cmd
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .with_context(|| format!("starting {cmd:?} (`cargo xtask setup` installs it)"))?;
    Ok(Attached(Some(child)))
}

pub fn remote_write(vigil: &std::path::Path, agents: usize, batches: u64) -> anyhow::Result<()> {
    let root = crate::workspace_root().join("target/bench-remote-write");
    let _ = std::fs::remove_dir_all(&root);
    std::fs::create_dir_all(&root)?;
    let data = root.join("collector");

    // 1. Fill the store.
    let per_agent = (batches / agents.max(1) as u64).max(1);
    let total_rows = per_agent * agents as u64;
    {
        let (_collector, addr) = start_collector(vigil, &data)?;
        let out = Command::new(crate::sibling(vigil, "vigil-bench"))
            .args([
                "ingest",
                "--collector",
                &addr,
                "--agents",
                &agents.to_string(),
                "--batches",
                &per_agent.to_string(),
            ])
            .output()
            .context("running the load generator")?;
        if !out.status.success() {
            bail!(
                "load generator failed: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
    }
    let samples = total_rows as f64 * 12.0;

    // 2. The receiver and the relay.
    let (vp, ap, mp) = (free_port()?, free_port()?, free_port()?);
    let _vm = spawn(Command::new("victoria-metrics").args([
        &format!("-httpListenAddr=127.0.0.1:{vp}"),
        &format!("-storageDataPath={}", root.join("vm").display()),
        "-retentionPeriod=1",
    ]))?;
    wait("VictoriaMetrics", Duration::from_secs(30), || {
        !get(&format!("http://127.0.0.1:{vp}/health")).is_empty()
    })?;
    let vmagent = spawn(Command::new("vmagent").args([
        &format!("-httpListenAddr=127.0.0.1:{ap}"),
        &format!("-remoteWrite.url=http://127.0.0.1:{vp}/api/v1/write"),
        &format!(
            "-remoteWrite.tmpDataPath={}",
            root.join("vmagent").display()
        ),
    ]))?;
    wait("vmagent", Duration::from_secs(30), || {
        !get(&format!("http://127.0.0.1:{ap}/health")).is_empty()
    })?;
    let vmagent_pid = vmagent.0.as_ref().map(|c| c.id()).context("vmagent pid")?;

    // 3. The collector again, on the filled store, forwarding to vmagent.
    let relay = format!("http://127.0.0.1:{ap}/api/v1/write");
    let mut cmd = crate::bench::daemon(vigil, "collector");
    cmd.args([
        "--remote-write",
        &relay,
        "--metrics-listen",
        &format!("127.0.0.1:{mp}"),
    ]);
    let vm_before = metric(
        &get(&format!("http://127.0.0.1:{vp}/metrics")),
        "vm_rows_inserted_total",
        "promremotewrite",
    );
    let agent_before = cpu_seconds(vmagent_pid)?;
    let started = Instant::now();
    let (collector, _) = spawn_collector(&mut cmd, &data, None)?;
    let pid = collector
        .0
        .as_ref()
        .map(|c| c.id())
        .context("collector pid")?;
    let metrics_url = format!("http://127.0.0.1:{mp}/metrics");
    wait(
        "the collector to forward every sample",
        Duration::from_secs(600),
        || {
            metric(
                &get(&metrics_url),
                "vigil_remote_write_samples_sent_total",
                "",
            ) >= samples
        },
    )?;
    let forwarded_in = started.elapsed();
    let collector_cpu = cpu_seconds(pid)?;
    wait(
        "VictoriaMetrics to hold every sample",
        Duration::from_secs(600),
        || {
            metric(
                &get(&format!("http://127.0.0.1:{vp}/metrics")),
                "vm_rows_inserted_total",
                "promremotewrite",
            ) - vm_before
                >= samples
        },
    )?;
    let relayed_in = started.elapsed();
    let vmagent_cpu = cpu_seconds(vmagent_pid)? - agent_before;
    let text = get(&metrics_url);
    let dropped = metric(&text, "vigil_remote_write_samples_dropped_total", "");
    drop(collector);

    let rate = |cpu: f64| if cpu > 0.0 { samples / cpu } else { f64::NAN };
    println!(
        "remote write: {samples:.0} samples ({total_rows} host samples x 12 series, {agents} agents), \
         collector -> vmagent -> VictoriaMetrics on loopback, one run"
    );
    println!(
        "{:<44} {:>10} {:>9} {:>16} {:>10}",
        "", "samples", "CPU s", "samples/CPU s", "wall s"
    );
    println!(
        "{:<44} {:>10.0} {:>9.2} {:>16.0} {:>10.1}",
        "vigil-collector (store -> remote write)",
        samples,
        collector_cpu,
        rate(collector_cpu),
        forwarded_in.as_secs_f64()
    );
    println!(
        "{:<44} {:>10.0} {:>9.2} {:>16.0} {:>10.1}",
        "vmagent (remote write -> remote write)",
        samples,
        vmagent_cpu,
        rate(vmagent_cpu),
        relayed_in.as_secs_f64()
    );
    println!(
        "ratio (collector / vmagent, samples per CPU second): {:.2}; dropped: {dropped:.0}",
        rate(collector_cpu) / rate(vmagent_cpu)
    );
    println!(
        "(the collector's CPU includes its start and its whole process: store, gRPC server, /metrics polled every 100 ms)"
    );
    Ok(())
}
