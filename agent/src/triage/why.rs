//! `vigil why`: a USE-method pass (utilization, saturation, errors) over CPU, memory,
//! disk, network and the syscalls Vigil times, comparing a window with the host's own
//! baseline just before it, and a short ranked list of what changed with the evidence
//! for each.
//!
//! Each resource is a *cause* candidate when one of its utilization, saturation or error
//! signals moved past a floor that a quiet host does not reach (the floors are below);
//! a syscall whose p99 rose is a *symptom*. Causes rank before symptoms, each by how far
//! it moved (score: tens of percentage points for usage and pressure, doublings for
//! latency and rates). The evidence names the processes (top CPU and memory users,
//! callers of the slow syscalls) and peers (retransmits' remote address and port).
use std::collections::BTreeMap;

use serde::Serialize;
use vigil_proto::v1 as pb;

use super::clock;

/// Floors below which a change is not reported.
const CPU_POINTS: f64 = 15.0;
const PRESSURE_POINTS: f64 = 10.0;
const MEMORY_POINTS: f64 = 10.0;
const BUSY_POINTS: f64 = 30.0;
const LATENCY_RATIO: f64 = 4.0;
const LATENCY_FLOOR_NS: u64 = 1_000_000;
const LATENCY_MIN_CALLS: u64 = 5;
const RETRANSMITS_MIN: u64 = 10;
const RETRANSMIT_RATIO: f64 = 4.0;

/// The syscalls whose slowness is the disk's (the rest are symptoms of their own).
const SYNC_CALLS: &[&str] = &[
    "fsync",
    "fdatasync",
    "sync_file_range",
    "syncfs",
    "sync",
    "msync",
];

/// Calls slower than this many times the baseline's p99 needed before a latency
/// change counts (one stalled call is not a trend).
const SLOW_CALLS_MIN: u64 = 3;

/// Calls in `h` at or above `ns` (the buckets whose lower edge is at least `ns`).
fn calls_over(h: &crate::histogram::LatencyHistogram, ns: u64) -> u64 {
    h.buckets
        .iter()
        .enumerate()
        .filter(|(i, _)| vigil_common::bucket_lower_bound(*i) >= ns)
        .map(|(_, n)| n)
        .sum()
}

/// What to narrow to.
#[derive(Clone, Copy, Debug, PartialEq, Serialize)]
pub enum Focus {
    Host,
    Pid(u32),
    Cgroup(u64),
}

#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Proc {
    pub pid: u32,
    pub comm: String,
    pub detail: String,
}

#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Finding {
    /// cpu, memory, disk, network or syscall.
    pub resource: String,
    /// A resource that changed (true) or a syscall that got slower (false).
    pub cause: bool,
    pub score: f64,
    pub title: String,
    /// When it started, as far as the intervals tell (Unix ms).
    pub since_unix_ms: Option<i64>,
    pub evidence: Vec<String>,
    pub processes: Vec<Proc>,
    /// Remote address:port, for network findings.
    pub peers: Vec<String>,
}

#[derive(Clone, Debug, Serialize)]
pub struct Report {
    pub host: String,
    pub focus: Focus,
    pub window_from_unix_ms: i64,
    pub window_to_unix_ms: i64,
    pub window_intervals: usize,
    pub baseline_from_unix_ms: i64,
    pub baseline_intervals: usize,
    pub findings: Vec<Finding>,
    /// Why the answer may be thin (too little baseline, events trimmed).
    pub notes: Vec<String>,
}

/// Means of a value over intervals (None when no interval has it).
fn mean(xs: impl Iterator<Item = f64>) -> Option<f64> {
    let (mut s, mut n) = (0.0, 0usize);
    for x in xs {
        s += x;
        n += 1;
    }
    (n > 0).then(|| s / n as f64)
}

fn metrics(b: &pb::Batch) -> Option<&pb::HostMetrics> {
    b.metrics.last()
}

fn some10(p: &Option<pb::PressureResource>) -> Option<f64> {
    p.as_ref().and_then(|r| r.some).map(|l| l.avg10)
}

/// Merged histograms per syscall name over intervals.
fn latency(intervals: &[&pb::Batch]) -> BTreeMap<String, crate::histogram::LatencyHistogram> {
    let mut out: BTreeMap<String, crate::histogram::LatencyHistogram> = BTreeMap::new();
    for b in intervals {
        for s in &b.syscalls {
            let h = out.entry(s.name.clone()).or_default();
            h.count = h.count.saturating_add(s.count);
            h.total_ns = h.total_ns.saturating_add(s.total_ns);
            h.max_ns = h.max_ns.max(s.max_ns);
            for (i, n) in s.buckets.iter().enumerate() {
                if let Some(x) = h.buckets.get_mut(i) {
                    *x = x.saturating_add(*n);
                }
            }
        }
    }
    out
}

fn p99(s: &pb::SyscallLatency) -> Option<u64> {
    crate::alerts::metric::p99_secs(s).map(|v| (v * 1e9) as u64)
}

/// The first interval of the window whose value crossed halfway from the baseline to
/// the window's level.
fn since(
    window: &[&pb::Batch],
    baseline: f64,
    level: f64,
    value: impl Fn(&pb::Batch) -> Option<f64>,
) -> Option<i64> {
    let mid = baseline + (level - baseline) / 2.0;
    window
        .iter()
        .find(|b| {
            value(b).is_some_and(|v| {
                if level >= baseline {
                    v >= mid
                } else {
                    v <= mid
                }
            })
        })
        .map(|b| b.end_unix_ms)
}

fn pct(v: f64) -> String {
    format!("{v:.0} %")
}

fn matches(focus: Focus, pid: u32, cgroup: u64) -> bool {
    match focus {
        Focus::Host => true,
        Focus::Pid(p) => p == pid,
        Focus::Cgroup(c) => c == cgroup,
    }
}

/// Slow calls in `intervals` (of the focus) by syscall name and by caller.
fn slow_calls<'a>(intervals: &[&'a pb::Batch], focus: Focus) -> Vec<&'a pb::SlowSyscall> {
    intervals
        .iter()
        .flat_map(|b| &b.slow_syscalls)
        .filter(|s| matches(focus, s.pid, s.cgroup_id))
        .collect()
}

fn syscall_name(nr: u32) -> String {
    crate::syscall_table::syscall_name(nr).map_or_else(|| format!("syscall {nr}"), str::to_string)
}

/// The callers of slow `names` calls, most calls first (three).
fn callers(slow: &[&pb::SlowSyscall], names: &[String]) -> Vec<Proc> {
    /// Per caller: slow calls, the slowest, and the calls by name.
    type Tally = (u64, u64, BTreeMap<String, u64>);
    let mut by: BTreeMap<(u32, String), Tally> = BTreeMap::new();
    for s in slow {
        let name = syscall_name(s.nr);
        if !names.contains(&name) {
            continue;
        }
        let e = by.entry((s.pid, s.comm.clone())).or_default();
        e.0 += 1;
        e.1 = e.1.max(s.latency_ns);
        *e.2.entry(name).or_default() += 1;
    }
    let mut v: Vec<_> = by.into_iter().collect();
    v.sort_by_key(|x| std::cmp::Reverse(x.1 .0));
    v.into_iter()
        .take(3)
        .map(|((pid, comm), (n, max, calls))| Proc {
            pid,
            comm,
            detail: format!(
                "{n} slow {} up to {}",
                calls.keys().cloned().collect::<Vec<_>>().join("/"),
                vigil_units::human_ns(max)
            ),
        })
        .collect()
}

/// Per pid: mean of `value` over the intervals (0 where it is not among the top).
fn process_means(
    intervals: &[&pb::Batch],
    list: impl Fn(&pb::HostMetrics) -> &Vec<pb::ProcessInfo>,
    value: impl Fn(&pb::ProcessInfo) -> f64,
) -> BTreeMap<u32, (String, f64)> {
    let mut out: BTreeMap<u32, (String, f64)> = BTreeMap::new();
    let n = intervals.len().max(1) as f64;
    for b in intervals {
        if let Some(m) = metrics(b) {
            for p in list(m) {
                let e = out.entry(p.pid).or_insert_with(|| (p.comm.clone(), 0.0));
                e.1 += value(p) / n;
            }
        }
    }
    out
}

/// What changed in (window_from, window_to] against the intervals before it.
pub fn analyze(history: &super::History, window_from: i64, window_to: i64, focus: Focus) -> Report {
    let baseline: Vec<&pb::Batch> = history
        .intervals
        .iter()
        .filter(|b| b.end_unix_ms <= window_from)
        .collect();
    let window: Vec<&pb::Batch> = history
        .intervals
        .iter()
        .filter(|b| b.end_unix_ms > window_from && b.end_unix_ms <= window_to)
        .collect();
    let mut notes = Vec::new();
    if baseline.len() < 3 {
        notes.push(format!(
            "only {} intervals before the window to compare with: changes are measured against little",
            baseline.len()
        ));
    }
    if history.trimmed > 0 {
        notes.push(format!(
            "{} slow syscalls or retransmits were not kept in history (over 200 an interval): counts of callers and peers are lower bounds",
            history.trimmed
        ));
    }
    let mut findings = Vec::new();
    if !window.is_empty() {
        cpu(&baseline, &window, focus, &mut findings);
        memory(&baseline, &window, focus, &mut findings);
        disk(&baseline, &window, focus, &mut findings);
        network(&baseline, &window, focus, &mut findings);
        syscalls(&baseline, &window, focus, &mut findings);
    }
    if focus != Focus::Host {
        // Narrowed: what the workload itself shows (its slow calls, its CPU), and the
        // resources it waits on.
        findings.retain(|f| !f.processes.is_empty() || f.resource == "cpu");
    }
    findings.sort_by(|a, b| {
        b.cause.cmp(&a.cause).then(
            b.score
                .partial_cmp(&a.score)
                .unwrap_or(std::cmp::Ordering::Equal),
        )
    });
    Report {
        host: history.host.hostname.clone(),
        focus,
        window_from_unix_ms: window_from,
        window_to_unix_ms: window_to,
        window_intervals: window.len(),
        baseline_from_unix_ms: baseline.first().map_or(0, |b| b.start_unix_ms),
        baseline_intervals: baseline.len(),
        findings,
        notes,
    }
}

fn cpu(baseline: &[&pb::Batch], window: &[&pb::Batch], focus: Focus, out: &mut Vec<Finding>) {
    let usage = |v: &[&pb::Batch]| {
        mean(
            v.iter()
                .filter_map(|b| metrics(b))
                .map(|m| m.cpu_usage_percent),
        )
    };
    let pressure = |v: &[&pb::Batch]| {
        mean(
            v.iter()
                .filter_map(|b| metrics(b))
                .filter_map(|m| some10(&m.pressure_cpu)),
        )
    };
    let (ub, uw) = (usage(baseline).unwrap_or(0.0), usage(window).unwrap_or(0.0));
    let (pb_, pw) = (
        pressure(baseline).unwrap_or(0.0),
        pressure(window).unwrap_or(0.0),
    );
    let (du, dp) = (uw - ub, pw - pb_);
    if du < CPU_POINTS && dp < PRESSURE_POINTS {
        return;
    }
    let cpus = window
        .iter()
        .filter_map(|b| metrics(b))
        .map(|m| m.cpu_count)
        .max()
        .unwrap_or(1);
    let mut evidence = vec![format!(
        "CPU busy {} of {cpus} CPUs (was {})",
        pct(uw),
        pct(ub)
    )];
    if pw > 0.0 || pb_ > 0.0 {
        evidence.push(format!(
            "CPU pressure (some, avg10) {} (was {})",
            pct(pw),
            pct(pb_)
        ));
    }
    let before = process_means(baseline, |m| &m.top_cpu, |p| p.cpu_percent);
    let now = process_means(window, |m| &m.top_cpu, |p| p.cpu_percent);
    let mut risers: Vec<(u32, String, f64, f64)> = now
        .iter()
        .filter(|(pid, _)| matches(focus, **pid, 0) || matches!(focus, Focus::Cgroup(_)))
        .map(|(pid, (comm, w))| {
            let b = before.get(pid).map_or(0.0, |x| x.1);
            (*pid, comm.clone(), *w, b)
        })
        .filter(|(_, _, w, b)| w - b >= 10.0)
        .collect();
    risers.sort_by(|a, b| {
        (b.2 - b.3)
            .partial_cmp(&(a.2 - a.3))
            .unwrap_or(std::cmp::Ordering::Equal)
    });
    let processes: Vec<Proc> = risers
        .into_iter()
        .take(3)
        .map(|(pid, comm, w, b)| Proc {
            pid,
            comm,
            detail: format!("{} of a CPU (was {})", pct(w), pct(b)),
        })
        .collect();
    let started = if du >= dp {
        since(window, ub, uw, |b| metrics(b).map(|m| m.cpu_usage_percent))
    } else {
        since(window, pb_, pw, |b| {
            metrics(b).and_then(|m| some10(&m.pressure_cpu))
        })
    };
    let title = match processes.first() {
        Some(p) => format!(
            "CPU: {} (pid {}) at {}; CPU busy {} (was {})",
            p.comm,
            p.pid,
            p.detail,
            pct(uw),
            pct(ub)
        ),
        None => format!("CPU busy {} (was {})", pct(uw), pct(ub)),
    };
    out.push(Finding {
        resource: "cpu".into(),
        cause: true,
        score: du.max(dp) / 10.0,
        title,
        since_unix_ms: started,
        evidence,
        processes,
        peers: Vec::new(),
    });
}

fn memory(baseline: &[&pb::Batch], window: &[&pb::Batch], focus: Focus, out: &mut Vec<Finding>) {
    let avail = |m: &pb::HostMetrics| {
        (m.memory_total_bytes > 0)
            .then(|| 100.0 * m.memory_available_bytes as f64 / m.memory_total_bytes as f64)
    };
    let ab = mean(baseline.iter().filter_map(|b| metrics(b)).filter_map(avail)).unwrap_or(100.0);
    let aw = window
        .iter()
        .filter_map(|b| metrics(b))
        .filter_map(avail)
        .fold(f64::INFINITY, f64::min);
    let aw = if aw.is_finite() { aw } else { ab };
    let pressure = |v: &[&pb::Batch]| {
        mean(
            v.iter()
                .filter_map(|b| metrics(b))
                .filter_map(|m| some10(&m.pressure_memory)),
        )
    };
    let (pb_, pw) = (
        pressure(baseline).unwrap_or(0.0),
        pressure(window).unwrap_or(0.0),
    );
    let (da, dp) = (ab - aw, pw - pb_);
    if da < MEMORY_POINTS && dp < PRESSURE_POINTS / 2.0 {
        return;
    }
    let before = process_means(baseline, |m| &m.top_memory, |p| p.rss_bytes as f64);
    let now = process_means(window, |m| &m.top_memory, |p| p.rss_bytes as f64);
    let mut growers: Vec<(u32, String, f64, f64)> = now
        .iter()
        .filter(|(pid, _)| matches(focus, **pid, 0) || matches!(focus, Focus::Cgroup(_)))
        .map(|(pid, (comm, w))| (*pid, comm.clone(), *w, before.get(pid).map_or(0.0, |x| x.1)))
        .filter(|(_, _, w, b)| w - b > 64.0 * 1048576.0)
        .collect();
    growers.sort_by(|a, b| {
        (b.2 - b.3)
            .partial_cmp(&(a.2 - a.3))
            .unwrap_or(std::cmp::Ordering::Equal)
    });
    let mib = |b: f64| format!("{:.0} MiB", b / 1048576.0);
    let processes: Vec<Proc> = growers
        .into_iter()
        .take(3)
        .map(|(pid, comm, w, b)| Proc {
            pid,
            comm,
            detail: format!("resident {} (was {})", mib(w), mib(b)),
        })
        .collect();
    let mut evidence = vec![format!(
        "memory available down to {} (was {})",
        pct(aw),
        pct(ab)
    )];
    if pw > 0.0 || pb_ > 0.0 {
        evidence.push(format!(
            "memory pressure (some, avg10) {} (was {})",
            pct(pw),
            pct(pb_)
        ));
    }
    let title = match processes.first() {
        Some(p) => format!(
            "memory: {} (pid {}) {}; available {} (was {})",
            p.comm,
            p.pid,
            p.detail,
            pct(aw),
            pct(ab)
        ),
        None => format!("memory available {} (was {})", pct(aw), pct(ab)),
    };
    out.push(Finding {
        resource: "memory".into(),
        cause: true,
        score: da.max(dp * 2.0) / 10.0,
        title,
        since_unix_ms: since(window, ab, aw, |b| metrics(b).and_then(avail)),
        evidence,
        processes,
        peers: Vec::new(),
    });
}

fn disk(baseline: &[&pb::Batch], window: &[&pb::Batch], focus: Focus, out: &mut Vec<Finding>) {
    let pressure = |v: &[&pb::Batch]| {
        mean(
            v.iter()
                .filter_map(|b| metrics(b))
                .filter_map(|m| some10(&m.pressure_io)),
        )
    };
    let (pb_, pw) = (
        pressure(baseline).unwrap_or(0.0),
        pressure(window).unwrap_or(0.0),
    );
    // The device whose busy time rose most.
    let busy = |v: &[&pb::Batch]| {
        let mut by: BTreeMap<String, (f64, usize)> = BTreeMap::new();
        for m in v.iter().filter_map(|b| metrics(b)) {
            for d in &m.disks {
                let e = by.entry(d.device.clone()).or_default();
                e.0 += (d.io_time_ms_per_sec / 10.0).min(100.0);
                e.1 += 1;
            }
        }
        by.into_iter()
            .map(|(k, (s, n))| (k, s / n.max(1) as f64))
            .collect::<BTreeMap<_, _>>()
    };
    let (bb, bw) = (busy(baseline), busy(window));
    let device = bw
        .iter()
        .map(|(d, w)| (d.clone(), *w, bb.get(d).copied().unwrap_or(0.0)))
        .max_by(|a, b| {
            (a.1 - a.2)
                .partial_cmp(&(b.1 - b.2))
                .unwrap_or(std::cmp::Ordering::Equal)
        });
    let lb = latency(baseline);
    let lw = latency(window);
    let mut sync_changes = Vec::new();
    for name in SYNC_CALLS {
        let (Some(w), b) = (lw.get(*name), lb.get(*name)) else {
            continue;
        };
        let (Some(p_w), p_b) = (w.percentile(0.99), b.and_then(|b| b.percentile(0.99))) else {
            continue;
        };
        let ratio = p_w as f64 / p_b.unwrap_or(1).max(1) as f64;
        let over = calls_over(w, (p_b.unwrap_or(0) as f64 * LATENCY_RATIO) as u64);
        if w.count >= LATENCY_MIN_CALLS
            && p_w >= LATENCY_FLOOR_NS
            && ratio >= LATENCY_RATIO
            && over >= SLOW_CALLS_MIN
        {
            sync_changes.push((name.to_string(), p_w, p_b, ratio));
        }
    }
    let dp = pw - pb_;
    let db = device.as_ref().map_or(0.0, |(_, w, b)| w - b);
    let dl = sync_changes
        .iter()
        .map(|c| c.3.log2() / 2.0 * 10.0)
        .fold(0.0, f64::max);
    if dp < PRESSURE_POINTS && db < BUSY_POINTS && sync_changes.is_empty() {
        return;
    }
    let mut evidence = Vec::new();
    for (name, w, b, _) in &sync_changes {
        evidence.push(format!(
            "{name} p99 {} (was {})",
            vigil_units::human_ns(*w),
            b.map_or("none".into(), vigil_units::human_ns)
        ));
    }
    if pw > 0.0 || pb_ > 0.0 {
        evidence.push(format!(
            "IO pressure (some, avg10) {} (was {})",
            pct(pw),
            pct(pb_)
        ));
    }
    if let Some((d, w, b)) = &device {
        if w - b >= 5.0 {
            evidence.push(format!("disk {d} busy {} (was {})", pct(*w), pct(*b)));
        }
    }
    let slow = slow_calls(window, focus);
    let io_names: Vec<String> = SYNC_CALLS
        .iter()
        .chain(&[
            "write",
            "pwrite64",
            "writev",
            "pwritev",
            "read",
            "pread64",
            "readv",
            "preadv",
            "openat",
            "io_submit",
            "io_uring_enter",
        ])
        .map(|s| s.to_string())
        .collect();
    let processes = callers(&slow, &io_names);
    let title = match (sync_changes.first(), processes.first()) {
        (Some((name, w, b, _)), Some(p)) => format!(
            "disk: {name} p99 {} (was {}); slow IO by {} (pid {})",
            vigil_units::human_ns(*w),
            b.map_or("none".into(), vigil_units::human_ns),
            p.comm,
            p.pid
        ),
        (Some((name, w, b, _)), None) => format!(
            "disk: {name} p99 {} (was {})",
            vigil_units::human_ns(*w),
            b.map_or("none".into(), vigil_units::human_ns)
        ),
        (None, Some(p)) => format!(
            "disk: IO pressure {} (was {}); slow IO by {} (pid {})",
            pct(pw),
            pct(pb_),
            p.comm,
            p.pid
        ),
        (None, None) => format!("disk: IO pressure {} (was {})", pct(pw), pct(pb_)),
    };
    let started = match sync_changes.first() {
        Some((name, w, b, _)) => {
            let name = name.clone();
            since(window, b.unwrap_or(0) as f64, *w as f64, move |b| {
                b.syscalls
                    .iter()
                    .find(|s| s.name == name)
                    .and_then(p99)
                    .map(|v| v as f64)
            })
        }
        None => since(window, pb_, pw, |b| {
            metrics(b).and_then(|m| some10(&m.pressure_io))
        }),
    };
    out.push(Finding {
        resource: "disk".into(),
        cause: true,
        score: dp.max(db).max(dl) / 10.0,
        title,
        since_unix_ms: started,
        evidence,
        processes,
        peers: Vec::new(),
    });
}

fn network(baseline: &[&pb::Batch], window: &[&pb::Batch], focus: Focus, out: &mut Vec<Finding>) {
    // Host-wide retransmits from the kernel's counter; peers from the events.
    let rate = |v: &[&pb::Batch]| {
        let first = v
            .first()
            .and_then(|b| metrics(b))
            .and_then(|m| m.tcp)
            .map(|t| (t.retrans_segs, t.out_segs));
        let last = v
            .last()
            .and_then(|b| metrics(b))
            .and_then(|m| m.tcp)
            .map(|t| (t.retrans_segs, t.out_segs));
        let span = v.last().map_or(0, |b| b.end_unix_ms) - v.first().map_or(0, |b| b.end_unix_ms);
        match (first, last) {
            (Some(f), Some(l)) if span > 0 && l.0 >= f.0 => (
                (l.0 - f.0) as f64 * 60_000.0 / span as f64,
                l.0 - f.0,
                l.1.saturating_sub(f.1),
            ),
            _ => (0.0, 0, 0),
        }
    };
    let (rb, _, _) = rate(baseline);
    let (rw, nw, sent) = rate(window);
    let events_w: Vec<&pb::TcpRetransmit> = window.iter().flat_map(|b| &b.retransmits).collect();
    let events_b: Vec<&pb::TcpRetransmit> = baseline.iter().flat_map(|b| &b.retransmits).collect();
    let n_events = events_w.len() as u64;
    let count = nw.max(n_events);
    let rw = if nw == 0 && n_events > 0 {
        let span = window.last().map_or(0, |b| b.end_unix_ms)
            - window.first().map_or(0, |b| b.start_unix_ms);
        n_events as f64 * 60_000.0 / span.max(1) as f64
    } else {
        rw
    };
    let ratio = (rw + 1.0) / (rb + 1.0);
    if count < RETRANSMITS_MIN || ratio < RETRANSMIT_RATIO {
        return;
    }
    let peer = |r: &pb::TcpRetransmit| format!("{}:{}", r.daddr, r.dport);
    let mut by: BTreeMap<String, (u64, u64)> = BTreeMap::new();
    for r in &events_w {
        by.entry(peer(r)).or_default().0 += 1;
    }
    for r in &events_b {
        if let Some(e) = by.get_mut(&peer(r)) {
            e.1 += 1;
        }
    }
    let mut peers: Vec<(String, u64, u64)> = by.into_iter().map(|(k, (w, b))| (k, w, b)).collect();
    peers.sort_by_key(|p| std::cmp::Reverse(p.1));
    let mut evidence = vec![format!(
        "TCP retransmits {:.0}/min (was {:.0}/min){}",
        rw,
        rb,
        if sent > 0 {
            format!(
                ", {:.1} % of segments sent",
                100.0 * count as f64 / sent as f64
            )
        } else {
            String::new()
        }
    )];
    for (p, w, b) in peers.iter().take(3) {
        evidence.push(format!("retransmits to {p}: {w} (before the window: {b})"));
    }
    let errors = |v: &[&pb::Batch]| {
        mean(v.iter().filter_map(|b| metrics(b)).map(|m| {
            m.network
                .iter()
                .map(|n| {
                    n.rx_errors_per_sec
                        + n.tx_errors_per_sec
                        + n.rx_drops_per_sec
                        + n.tx_drops_per_sec
                })
                .sum::<f64>()
        }))
        .unwrap_or(0.0)
    };
    let (eb, ew) = (errors(baseline), errors(window));
    if ew > eb + 1.0 {
        evidence.push(format!(
            "interface errors and drops {ew:.1}/s (was {eb:.1}/s)"
        ));
    }
    let slow = slow_calls(window, focus);
    let net_names: Vec<String> = [
        "connect",
        "sendto",
        "sendmsg",
        "recvfrom",
        "recvmsg",
        "write",
        "read",
        "poll",
        "epoll_wait",
        "select",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    let processes = if focus == Focus::Host {
        Vec::new()
    } else {
        callers(&slow, &net_names)
    };
    let title = match peers.first() {
        Some((p, w, _)) => {
            format!("network: retransmits to {p} ({w}), {rw:.0}/min in all (was {rb:.0}/min)")
        }
        None => format!("network: TCP retransmits {rw:.0}/min (was {rb:.0}/min)"),
    };
    let started = window
        .iter()
        .find(|b| !b.retransmits.is_empty())
        .map(|b| b.end_unix_ms);
    out.push(Finding {
        resource: "network".into(),
        cause: true,
        score: ratio.log2(),
        title,
        since_unix_ms: started,
        evidence,
        processes,
        peers: peers.into_iter().take(3).map(|p| p.0).collect(),
    });
}

fn syscalls(baseline: &[&pb::Batch], window: &[&pb::Batch], focus: Focus, out: &mut Vec<Finding>) {
    let lb = latency(baseline);
    let lw = latency(window);
    let slow = slow_calls(window, focus);
    for (name, w) in &lw {
        if SYNC_CALLS.contains(&name.as_str())
            || crate::query::top::IDLE_WAITS.contains(&name.as_str())
            || w.count < LATENCY_MIN_CALLS * 4
        {
            continue;
        }
        let Some(p_w) = w.percentile(0.99) else {
            continue;
        };
        let Some(p_b) = lb.get(name).and_then(|b| b.percentile(0.99)) else {
            continue;
        };
        let ratio = p_w as f64 / p_b.max(1) as f64;
        let over = calls_over(w, (p_b as f64 * LATENCY_RATIO) as u64);
        if p_w < LATENCY_FLOOR_NS || ratio < LATENCY_RATIO || over < SLOW_CALLS_MIN {
            continue;
        }
        let processes = callers(&slow, std::slice::from_ref(name));
        if focus != Focus::Host && processes.is_empty() {
            continue;
        }
        let name2 = name.clone();
        out.push(Finding {
            resource: "syscall".into(),
            cause: false,
            score: ratio.log2() / 2.0,
            title: format!(
                "{name} p99 {} (was {})",
                vigil_units::human_ns(p_w),
                vigil_units::human_ns(p_b)
            ),
            since_unix_ms: since(window, p_b as f64, p_w as f64, move |b| {
                b.syscalls
                    .iter()
                    .find(|s| s.name == name2)
                    .and_then(p99)
                    .map(|v| v as f64)
            }),
            evidence: vec![format!("{} calls in the window", w.count)],
            processes,
            peers: Vec::new(),
        });
    }
}

/// The report as a person reads it.
pub fn render(r: &Report) -> String {
    use std::fmt::Write as _;
    let mut s = String::new();
    let focus = match r.focus {
        Focus::Host => String::new(),
        Focus::Pid(p) => format!(", pid {p}"),
        Focus::Cgroup(c) => format!(", cgroup {c}"),
    };
    let _ = writeln!(
        s,
        "{}{focus}: {}–{} UTC ({} intervals) against {}–{} ({} intervals)",
        r.host,
        clock(r.window_from_unix_ms),
        clock(r.window_to_unix_ms),
        r.window_intervals,
        clock(r.baseline_from_unix_ms),
        clock(r.window_from_unix_ms),
        r.baseline_intervals
    );
    if r.findings.is_empty() {
        let _ = writeln!(s, "nothing stands out: CPU, memory, disk, network and syscall latency are as before the window");
    }
    for (i, f) in r.findings.iter().enumerate() {
        let when = f
            .since_unix_ms
            .map_or(String::new(), |t| format!(" since {}", clock(t)));
        let kind = if f.cause { "" } else { " (a symptom)" };
        let _ = writeln!(s, "{}. {}{when}{kind}", i + 1, f.title);
        for e in &f.evidence {
            let _ = writeln!(s, "   - {e}");
        }
        for p in &f.processes {
            let _ = writeln!(s, "   - {} (pid {}): {}", p.comm, p.pid, p.detail);
        }
    }
    for n in &r.notes {
        let _ = writeln!(s, "note: {n}");
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    fn interval(end: i64, cpu: f64, psi_io: f64, fsync_bucket: usize, retrans: u64) -> pb::Batch {
        let mut buckets = vec![0u64; vigil_common::LATENCY_BUCKETS];
        buckets[fsync_bucket] = 10;
        pb::Batch {
            start_unix_ms: end - 1000,
            end_unix_ms: end,
            metrics: vec![pb::HostMetrics {
                cpu_usage_percent: cpu,
                cpu_count: 2,
                memory_total_bytes: 100,
                memory_available_bytes: 80,
                pressure_io: Some(pb::PressureResource {
                    some: Some(pb::PressureLine {
                        avg10: psi_io,
                        ..Default::default()
                    }),
                    full: None,
                }),
                tcp: Some(pb::TcpCounters {
                    retrans_segs: retrans,
                    out_segs: retrans * 10 + end as u64,
                    ..Default::default()
                }),
                ..Default::default()
            }],
            syscalls: vec![pb::SyscallLatency {
                name: "fsync".into(),
                count: 10,
                buckets,
                ..Default::default()
            }],
            ..Default::default()
        }
    }

    fn history(v: Vec<pb::Batch>) -> super::super::History {
        super::super::History {
            host: pb::HostIdentity {
                hostname: "h".into(),
                ..Default::default()
            },
            intervals: v,
            oldest_ms: 0,
            trimmed: 0,
        }
    }

    #[test]
    fn a_quiet_host_has_nothing_to_say() {
        let h = history(
            (1..=60)
                .map(|i| interval(i * 1000, 5.0, 0.0, 40, 0))
                .collect(),
        );
        let r = analyze(&h, 45_000, 60_000, Focus::Host);
        assert!(r.findings.is_empty(), "{:?}", r.findings);
        assert!(render(&r).contains("nothing stands out"));
    }

    #[test]
    fn slow_fsyncs_and_io_pressure_make_the_disk_the_first_cause() {
        let fast = vigil_common::LATENCY_BUCKETS / 3;
        let slow = fast + 40; // ten doublings: 1024x
        let h = history(
            (1..=60)
                .map(|i| {
                    if i > 45 {
                        interval(i * 1000, 5.0, 40.0, slow, 0)
                    } else {
                        interval(i * 1000, 5.0, 0.0, fast, 0)
                    }
                })
                .collect(),
        );
        let r = analyze(&h, 45_000, 60_000, Focus::Host);
        assert_eq!(r.findings[0].resource, "disk", "{:#?}", r.findings);
        assert_eq!(r.findings[0].since_unix_ms, Some(46_000));
    }

    #[test]
    fn retransmits_rising_forty_fold_name_the_network() {
        let h = history(
            (1..=60)
                .map(|i| {
                    let mut b = interval(
                        i * 1000,
                        5.0,
                        0.0,
                        40,
                        if i > 45 { (i as u64 - 45) * 10 } else { 0 },
                    );
                    if i > 45 {
                        b.retransmits = vec![
                            pb::TcpRetransmit {
                                daddr: "10.0.3.7".into(),
                                dport: 5432,
                                ..Default::default()
                            };
                            10
                        ];
                    }
                    b
                })
                .collect(),
        );
        let r = analyze(&h, 45_000, 60_000, Focus::Host);
        assert_eq!(r.findings[0].resource, "network", "{:#?}", r.findings);
        assert_eq!(r.findings[0].peers[0], "10.0.3.7:5432");
    }
}
