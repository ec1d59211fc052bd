//! `vigil trace slow-syscalls`: syscalls slower than a threshold, live.
use std::time::Duration;

use serde::Serialize;

use crate::{
    probes::{events::Event, Probe, ProbeSettings},
    query::display::{rfc3339_ns, rfc3339_us, unix_ns},
    syscall_table::syscall_name,
    trace::{announce, load_probes, watch_events},
    units::human_ns,
};

#[derive(Serialize)]
struct SlowJson<'a> {
    /// RFC 3339 UTC, nanoseconds.
    time: String,
    time_unix_ns: i64,
    pid: u32,
    tid: u32,
    comm: &'a str,
    syscall: String,
    nr: u32,
    latency_ns: u64,
    cgroup_id: u64,
}

#[derive(Serialize)]
struct Summary {
    slow_syscalls: u64,
    rate_limited: u64,
    lost_events: u64,
}

pub async fn run(
    threshold: Duration,
    duration: Option<Duration>,
    pid: Option<u32>,
    rate_limit: u64,
    json: bool,
) -> anyhow::Result<()> {
    let settings = ProbeSettings {
        filter_pid: pid,
        slow_threshold: Some(threshold),
        slow_events_per_sec: rate_limit,
        retransmits: None,
        ..Default::default()
    };
    let mut probes = load_probes(&settings, Probe::SyscallLatency)?;
    let mut reader = probes.event_reader()?;
    announce(&format!("syscalls slower than {threshold:?}"), duration);
    if !json {
        println!(
            "{:<27} {:>8} {:>8} {:<16} {:<20} {:>10} {:>8}",
            "TIME", "PID", "TID", "COMM", "SYSCALL", "LATENCY", "CGROUP"
        );
    }
    let mut seen = 0u64;
    watch_events(&mut reader, duration, |event| {
        if let Event::SlowSyscall(e) = event {
            seen += 1;
            let name = syscall_name(e.syscall_nr)
                .map_or_else(|| format!("syscall_{}", e.syscall_nr), str::to_string);
            if json {
                let j = SlowJson {
                    time: rfc3339_ns(unix_ns(e.time)),
                    time_unix_ns: unix_ns(e.time),
                    pid: e.pid,
                    tid: e.tid,
                    comm: &e.comm,
                    syscall: name,
                    nr: e.syscall_nr,
                    latency_ns: e.latency_ns,
                    cgroup_id: e.cgroup_id,
                };
                println!("{}", serde_json::to_string(&j)?);
            } else {
                println!(
                    "{:<27} {:>8} {:>8} {:<16} {:<20} {:>10} {:>8}",
                    rfc3339_us(unix_ns(e.time)),
                    e.pid,
                    e.tid,
                    e.comm,
                    name,
                    human_ns(e.latency_ns),
                    e.cgroup_id
                );
            }
        }
        Ok(())
    })
    .await?;
    let c = probes.counters()?;
    let summary = Summary {
        slow_syscalls: seen,
        rate_limited: c.slow_syscall_rate_limited,
        lost_events: c.slow_syscall_ringbuf_full + reader.decode_errors,
    };
    if json {
        println!("{}", serde_json::to_string(&summary)?);
    } else {
        println!(
            "{} slow syscalls, {} suppressed by the rate limit, {} lost",
            summary.slow_syscalls, summary.rate_limited, summary.lost_events
        );
    }
    Ok(())
}
