//! `vigil stats`: the host over a short window, as a table or JSON.
use std::time::Duration;

use anyhow::Context as _;

use crate::metrics::{HostSample, Roots, Sampler};

fn gib(b: u64) -> String {
    format!("{:.2} GiB", b as f64 / (1u64 << 30) as f64)
}

fn rate(bytes_per_sec: f64) -> String {
    if bytes_per_sec >= 1e6 {
        format!("{:.1} MB/s", bytes_per_sec / 1e6)
    } else {
        format!("{:.1} kB/s", bytes_per_sec / 1e3)
    }
}

pub fn print_table(s: &HostSample) {
    println!(
        "{} | {} | kernel {} | up {} | {}",
        crate::query::display::clean(&s.host.hostname),
        s.host.os,
        s.host.kernel,
        crate::query::top::human_uptime(s.host.uptime_secs),
        crate::query::display::rfc3339_ms(s.time_unix_ms as i64)
    );
    let t = &s.cpu.total;
    println!(
        "cpu   {} cores, {:.1} % busy (user {:.1} system {:.1} iowait {:.1} irq {:.1} softirq {:.1} steal {:.1})",
        s.cpu.count, s.cpu.usage_percent, t.user, t.system, t.iowait, t.irq, t.softirq, t.steal
    );
    println!(
        "load  {:.2} {:.2} {:.2}",
        s.load.one, s.load.five, s.load.fifteen
    );
    let m = &s.memory;
    println!(
        "mem   total {}  available {}  used {}  cached {}  buffers {}  swap {} of {} free",
        gib(m.total_bytes),
        gib(m.available_bytes),
        gib(m.used_bytes),
        gib(m.cached_bytes),
        gib(m.buffers_bytes),
        gib(m.swap_free_bytes),
        gib(m.swap_total_bytes)
    );
    for (name, r) in [
        ("cpu", &s.pressure.cpu),
        ("memory", &s.pressure.memory),
        ("io", &s.pressure.io),
    ] {
        if let Some(r) = r {
            let some = r.some.as_ref().map_or(0.0, |l| l.avg10);
            let full = r.full.as_ref().map_or(0.0, |l| l.avg10);
            println!("psi   {name:<7} some {some:>6.2} %  full {full:>6.2} % (avg10)");
        }
    }
    // Like df: size, used, available, use % (the root reserve counted as not
    // available), a device mounted twice shown once, the mount point last.
    println!(
        "\n{:>10} {:>10} {:>10} {:>5} {:>7} {:<8} MOUNTED ON",
        "SIZE", "USED", "AVAIL", "USE%", "IUSE%", "TYPE"
    );
    let (rows, binds) = crate::query::display::df_rows(&s.filesystems);
    for f in rows {
        let inodes = if f.inodes_total > 0 {
            format!(
                "{:.0}%",
                100.0 * (f.inodes_total - f.inodes_free.min(f.inodes_total)) as f64
                    / f.inodes_total as f64
            )
        } else {
            "-".into()
        };
        println!(
            "{:>10} {:>10} {:>10} {:>4}% {:>7} {:<8} {}",
            crate::query::top::human_bytes(f.size_bytes),
            crate::query::top::human_bytes(f.used_bytes),
            crate::query::top::human_bytes(f.available_bytes),
            crate::query::display::use_percent(f),
            inodes,
            crate::query::display::clean(&f.fstype),
            crate::query::display::clean(&f.mount)
        );
    }
    if binds > 0 {
        println!(
            "({binds} more mount{} of a device already shown: bind mounts)",
            if binds == 1 { "" } else { "s" }
        );
    }
    println!(
        "\n{:<12} {:>10} {:>10} {:>12} {:>12}",
        "DISK", "READS/S", "WRITES/S", "READ", "WRITE"
    );
    for d in &s.disks {
        println!(
            "{:<12} {:>10.1} {:>10.1} {:>12} {:>12}",
            d.device,
            d.reads_per_sec,
            d.writes_per_sec,
            rate(d.read_bytes_per_sec),
            rate(d.write_bytes_per_sec)
        );
    }
    println!(
        "\n{:<12} {:>12} {:>12} {:>8} {:>8}",
        "INTERFACE", "RX", "TX", "ERRS/S", "DROPS/S"
    );
    for n in &s.network {
        println!(
            "{:<12} {:>12} {:>12} {:>8.1} {:>8.1}",
            n.interface,
            rate(n.rx_bytes_per_sec),
            rate(n.tx_bytes_per_sec),
            n.rx_errors_per_sec + n.tx_errors_per_sec,
            n.rx_drops_per_sec + n.tx_drops_per_sec
        );
    }
    let tcp = &s.tcp;
    println!(
        "\ntcp   estab {}  active opens {}  passive opens {}  retrans segs {}  in errs {}  listen overflows {}",
        tcp.curr_estab,
        tcp.active_opens,
        tcp.passive_opens,
        tcp.retrans_segs,
        tcp.in_errs,
        tcp.listen_overflows.map_or("-".into(), |v| v.to_string())
    );
    let p = &s.processes;
    println!(
        "procs {} total, {} running, {} sleeping, {} disk-sleep, {} zombie; open files {}",
        p.total,
        p.running,
        p.sleeping,
        p.disk_sleep,
        p.zombie,
        s.open_fds.map_or("-".into(), |v| v.to_string())
    );
    for (title, list) in [("TOP CPU", &s.top_cpu), ("TOP MEMORY", &s.top_memory)] {
        println!(
            "\n{:<8} {:<10} {:>7} {:>12}  COMMAND",
            title, "USER", "CPU%", "RSS"
        );
        for p in list {
            let cmd = if p.cmdline.is_empty() {
                format!("[{}]", p.comm)
            } else {
                p.cmdline.clone()
            };
            let cmd: String = cmd.chars().take(60).collect();
            println!(
                "{:<8} {:<10} {:>7.1} {:>12}  {}",
                p.pid,
                p.user,
                p.cpu_percent,
                format!("{:.0} MiB", p.rss_bytes as f64 / f64::from(1u32 << 20)),
                cmd
            );
        }
    }
}

pub async fn run(window: Duration, top: usize, json: bool) -> anyhow::Result<()> {
    let mut sampler = Sampler::new(Roots::default(), top);
    sampler.sample().context("reading host metrics")?;
    tokio::time::sleep(window).await;
    let sample = sampler.sample().context("reading host metrics")?;
    if json {
        println!(
            "{}",
            crate::query::local::stats_json(&sample, "host", None, None)
        );
    } else {
        print_table(&sample);
    }
    Ok(())
}
