//! `vigil trace syscalls`: syscalls by total time over a window, like `syscount -L`.
use std::{collections::BTreeMap, time::Duration};

use serde::Serialize;

use crate::{
    histogram::LatencyHistogram,
    probes::{Probe, ProbeSettings},
    syscall_table::syscall_name,
    trace::{announce, load_probes},
    units::human_ns,
};

#[derive(Clone, Debug, Serialize, PartialEq, Eq)]
pub struct SyscallRow {
    pub name: String,
    pub nr: u32,
    pub count: u64,
    pub p50_ns: u64,
    pub p90_ns: u64,
    pub p99_ns: u64,
    pub max_ns: u64,
    pub total_ns: u64,
}

#[derive(Clone, Debug, Serialize)]
pub struct SyscallReport {
    pub syscalls: Vec<SyscallRow>,
    /// Syscalls the kernel could not time (start slot unavailable, number out of range).
    pub lost_events: u64,
}

/// Rows sorted by total time, slowest first.
pub fn rows(latency: &BTreeMap<u32, LatencyHistogram>) -> Vec<SyscallRow> {
    let mut rows: Vec<SyscallRow> = latency
        .iter()
        .filter(|(_, h)| h.count > 0)
        .map(|(&nr, h)| SyscallRow {
            name: syscall_name(nr).map_or_else(|| format!("syscall_{nr}"), str::to_string),
            nr,
            count: h.count,
            p50_ns: h.percentile(0.50).unwrap_or(0),
            p90_ns: h.percentile(0.90).unwrap_or(0),
            p99_ns: h.percentile(0.99).unwrap_or(0),
            max_ns: h.max_ns,
            total_ns: h.total_ns,
        })
        .collect();
    rows.sort_by(|a, b| b.total_ns.cmp(&a.total_ns).then(a.nr.cmp(&b.nr)));
    rows
}

/// The column names of the syscall table (fits 80 columns).
pub fn header_text() -> String {
    format!(
        "{:<16} {:>8} {:>8} {:>8} {:>8} {:>8} {:>9}",
        "SYSCALL", "COUNT", "P50", "P90", "P99", "MAX", "TOTAL"
    )
}

/// One syscall's row: count, then latencies in human units.
pub fn row_text(r: &SyscallRow) -> String {
    format!(
        "{:<16} {:>8} {:>8} {:>8} {:>8} {:>8} {:>9}",
        r.name,
        r.count,
        human_ns(r.p50_ns),
        human_ns(r.p90_ns),
        human_ns(r.p99_ns),
        human_ns(r.max_ns),
        human_ns(r.total_ns)
    )
}

pub fn print_table(rows: &[SyscallRow], limit: usize) {
    println!("{}", header_text());
    for r in rows.iter().take(limit) {
        println!("{}", row_text(r));
    }
}

pub async fn run(
    duration: Duration,
    pid: Option<u32>,
    json: bool,
    limit: usize,
) -> anyhow::Result<()> {
    let settings = ProbeSettings {
        filter_pid: pid,
        slow_threshold: None,
        retransmits: None,
        ..Default::default()
    };
    let probes = load_probes(&settings, Probe::SyscallLatency)?;
    announce(
        &match pid {
            Some(p) => format!("syscalls of pid {p}"),
            None => "syscalls".to_string(),
        },
        Some(duration),
    );
    crate::startup::wait_for_stop(Some(duration)).await?;
    let report = SyscallReport {
        syscalls: rows(&probes.syscall_latency()?),
        lost_events: probes.counters()?.lost_events(),
    };
    if json {
        println!("{}", serde_json::to_string(&report)?);
    } else {
        print_table(&report.syscalls, limit);
        if report.lost_events > 0 {
            println!(
                "\n{} syscalls could not be timed (lost)",
                report.lost_events
            );
        }
    }
    Ok(())
}
