//! What alert rules can look at: one typed name per value, each about the host, a
//! filesystem, a disk, a network interface or a syscall (its family, which gives its
//! labels), computed once per interval from the interval's sample, syscall histograms,
//! findings and the agent's own health.
use std::{collections::BTreeMap, fmt};

use serde::Deserialize;
use vigil_proto::v1 as pb;

/// What a series is about, and so which labels it has.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Family {
    Host,
    Filesystem,
    Disk,
    Interface,
    Syscall,
}

impl Family {
    /// The labels of its series (node_exporter's names where it has the series).
    pub fn labels(self) -> &'static [&'static str] {
        match self {
            Family::Host => &[],
            Family::Filesystem => &["mountpoint", "device", "fstype"],
            Family::Disk | Family::Interface => &["device"],
            Family::Syscall => &["syscall"],
        }
    }
}

impl fmt::Display for Family {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Family::Host => "host",
            Family::Filesystem => "filesystem",
            Family::Disk => "disk",
            Family::Interface => "network interface",
            Family::Syscall => "syscall",
        })
    }
}

macro_rules! metrics {
    ($($variant:ident = $name:literal, $family:ident, $help:literal;)*) => {
        /// A value an alert rule can compare.
        #[derive(Clone, Copy, Debug, Deserialize, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub enum Metric {
            $(#[serde(rename = $name)] $variant,)*
        }

        impl Metric {
            pub const ALL: &'static [Metric] = &[$(Metric::$variant),*];

            pub fn name(self) -> &'static str {
                match self { $(Metric::$variant => $name,)* }
            }

            pub fn family(self) -> Family {
                match self { $(Metric::$variant => Family::$family,)* }
            }

            pub fn help(self) -> &'static str {
                match self { $(Metric::$variant => $help,)* }
            }
        }
    };
}

metrics! {
    CpuUsagePercent = "cpu.usage_percent", Host, "CPU busy, percent of all cores, over the interval.";
    LoadPerCpu = "load.one_per_cpu", Host, "1-minute load average divided by the number of CPUs.";
    MemoryUsedPercent = "memory.used_percent", Host, "100 - MemAvailable / MemTotal * 100.";
    PressureCpuSome = "pressure.cpu_some_percent", Host, "PSI: share of time some task waited for a CPU (avg60, percent).";
    PressureMemorySome = "pressure.memory_some_percent", Host, "PSI: share of time some task stalled on memory (avg60, percent).";
    PressureMemoryFull = "pressure.memory_full_percent", Host, "PSI: share of time all non-idle tasks stalled on memory (avg60, percent).";
    PressureIoSome = "pressure.io_some_percent", Host, "PSI: share of time some task stalled on I/O (avg60, percent).";
    PressureIoFull = "pressure.io_full_percent", Host, "PSI: share of time all non-idle tasks stalled on I/O (avg60, percent).";
    MajorFaultsPerSec = "vm.major_faults_per_sec", Host, "Major page faults per second (/proc/vmstat pgmajfault).";
    OomKills = "vm.oom_kills", Host, "Processes the kernel's OOM killer killed in the interval (/proc/vmstat oom_kill).";
    FdsUsedPercent = "fds.used_percent", Host, "Allocated file handles, percent of the system-wide limit (file-nr).";
    ConntrackUsedPercent = "conntrack.used_percent", Host, "Connection tracking entries, percent of nf_conntrack_max.";
    ClockOffsetAbsSecs = "clock.offset_abs_secs", Host, "The kernel clock's estimated offset from its reference, absolute, in seconds (adjtimex).";
    ClockSynchronised = "clock.synchronised", Host, "1 when something disciplines the clock (adjtimex STA_UNSYNC clear), else 0.";
    ClockMaxErrorSecs = "clock.max_error_secs", Host, "The kernel clock's maximum error in seconds (adjtimex).";
    TcpRetransmitRatio = "tcp.retransmit_ratio", Host, "TCP segments retransmitted per segment sent in the interval (RetransSegs / OutSegs).";
    TcpOutSegsPerSec = "tcp.out_segs_per_sec", Host, "TCP segments sent per second.";
    TcpListenOverflowsPerSec = "tcp.listen_overflows_per_sec", Host, "Connections dropped per second because a listen queue was full (ListenOverflows).";
    Findings = "findings.count", Host, "Security findings raised in the interval.";
    CriticalFindings = "findings.critical", Host, "Critical security findings raised in the interval.";
    EventsLost = "agent.events_lost", Host, "Events the agent lost at any stage in the interval (kernel, agent, spool).";
    ProbesOff = "agent.probes_off", Host, "Probes requested in the config that are not running.";
    SpoolUnacked = "agent.spool_unacked_batches", Host, "Batches in the spool the collector has not acknowledged.";
    SpoolDroppedBatches = "agent.spool_dropped_batches", Host, "Batches the spool dropped (full) in the interval.";
    CollectorSilentSecs = "agent.collector_silent_secs", Host, "Seconds since the collector last acknowledged a batch while batches wait (0 without a collector or with nothing to send).";
    AgentCpuPercent = "agent.cpu_percent", Host, "The agent's own CPU (user + system, plus its eBPF programs' run time with budget.count_bpf), percent of one core, over the interval.";
    ProbesShed = "agent.probes_shed", Host, "Probes shed to stay within the agent's CPU budget (budget.cpu_percent).";
    AgentRssBytes = "agent.rss_bytes", Host, "The agent's resident memory in bytes.";
    FsAvailPercent = "filesystem.avail_percent", Filesystem, "Space available to unprivileged users, percent of the filesystem's size.";
    FsAvailBytes = "filesystem.avail_bytes", Filesystem, "Space available to unprivileged users, bytes.";
    FsFilesFreePercent = "filesystem.files_free_percent", Filesystem, "Free inodes, percent of all inodes.";
    FsFilesFree = "filesystem.files_free", Filesystem, "Free inodes.";
    DiskBusyPercent = "disk.io_busy_percent", Disk, "Time the device had I/O in flight, percent of the interval.";
    DiskIoQueue = "disk.io_queue", Disk, "Average requests in flight (weighted I/O time per second).";
    NetRxErrorRatio = "network.rx_error_ratio", Interface, "Receive errors per packet received.";
    NetTxErrorRatio = "network.tx_error_ratio", Interface, "Transmit errors per packet sent.";
    SyscallP99Secs = "syscall.p99_seconds", Syscall, "The syscall's p99 latency over the interval (log2 bucket upper bound), for syscalls with at least 100 calls in it.";
    SyscallP99OverBaseline = "syscall.p99_over_baseline", Syscall, "The interval's p99 divided by the host's learned baseline p99 for that syscall (see the engine's baseline).";
    SyscallCallsPerSec = "syscall.calls_per_sec", Syscall, "Calls per second.";
}

impl fmt::Display for Metric {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// A series' labels, sorted by name.
pub type Labels = Vec<(String, String)>;

/// The agent's own state for an interval (what it knows beyond the batch).
#[derive(Clone, Debug, Default)]
pub struct AgentHealth {
    /// Events lost at any stage in the interval.
    pub events_lost: u64,
    pub probes_off: u32,
    pub spool_unacked: u64,
    /// Since the agent started.
    pub spool_dropped_total: u64,
    /// Seconds since the last ack while batches wait; 0 when nothing waits.
    pub collector_silent_secs: f64,
    pub cpu_percent: Option<f64>,
    pub rss_bytes: Option<u64>,
    /// Probes shed to stay within the CPU budget.
    pub probes_shed: u32,
}

/// What one evaluation looks at.
#[derive(Clone, Copy)]
pub struct Inputs<'a> {
    pub time_ms: i64,
    pub metrics: &'a pb::HostMetrics,
    /// The interval's histograms (deltas).
    pub syscalls: &'a [pb::SyscallLatency],
    pub findings: &'a [pb::Finding],
    pub agent: &'a AgentHealth,
}

/// The counters a value is a rate of: kept from the previous evaluation.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Counters {
    time_ms: i64,
    major_faults: Option<u64>,
    oom_kills: Option<u64>,
    retrans: u64,
    out_segs: u64,
    listen_overflows: Option<u64>,
    spool_dropped: u64,
}

/// A syscall needs this many calls in an interval for its p99 to be a value.
pub const MIN_CALLS: u64 = 100;

/// Every metric's series now. `baseline` gives a syscall's learned p99 (seconds).
pub fn observe(
    i: &Inputs<'_>,
    prev: Option<&Counters>,
    baseline: &dyn Fn(&str) -> Option<f64>,
) -> (BTreeMap<Metric, Vec<(Labels, f64)>>, Counters) {
    let m = i.metrics;
    let tcp = m.tcp.unwrap_or_default();
    let now = Counters {
        time_ms: i.time_ms,
        major_faults: m.major_faults_total,
        oom_kills: m.oom_kills_total,
        retrans: tcp.retrans_segs,
        out_segs: tcp.out_segs,
        listen_overflows: tcp.listen_overflows,
        spool_dropped: i.agent.spool_dropped_total,
    };
    let mut out: BTreeMap<Metric, Vec<(Labels, f64)>> = BTreeMap::new();
    let mut host = |metric: Metric, v: Option<f64>| {
        if let Some(v) = v.filter(|v| v.is_finite()) {
            out.entry(metric).or_default().push((Vec::new(), v));
        }
    };
    let pct = |a: f64, b: f64| (b > 0.0).then(|| 100.0 * a / b);
    host(Metric::CpuUsagePercent, Some(m.cpu_usage_percent));
    host(
        Metric::LoadPerCpu,
        (m.cpu_count > 0).then(|| m.load_one / f64::from(m.cpu_count)),
    );
    host(
        Metric::MemoryUsedPercent,
        pct(m.memory_available_bytes as f64, m.memory_total_bytes as f64).map(|a| 100.0 - a),
    );
    let psi = |r: &Option<pb::PressureResource>, full: bool| {
        r.as_ref()
            .and_then(|r| {
                if full {
                    r.full.as_ref()
                } else {
                    r.some.as_ref()
                }
            })
            .map(|l| l.avg60)
    };
    host(Metric::PressureCpuSome, psi(&m.pressure_cpu, false));
    host(Metric::PressureMemorySome, psi(&m.pressure_memory, false));
    host(Metric::PressureMemoryFull, psi(&m.pressure_memory, true));
    host(Metric::PressureIoSome, psi(&m.pressure_io, false));
    host(Metric::PressureIoFull, psi(&m.pressure_io, true));
    if let Some(p) = prev.filter(|p| i.time_ms > p.time_ms) {
        let secs = (i.time_ms - p.time_ms) as f64 / 1000.0;
        let delta = |a: Option<u64>, b: Option<u64>| match (a, b) {
            // A counter that went back (a reset) counts from zero.
            (Some(a), Some(b)) => Some(if a >= b { a - b } else { a }),
            _ => None,
        };
        host(
            Metric::MajorFaultsPerSec,
            delta(now.major_faults, p.major_faults).map(|d| d as f64 / secs),
        );
        host(
            Metric::OomKills,
            delta(now.oom_kills, p.oom_kills).map(|d| d as f64),
        );
        let sent = delta(Some(now.out_segs), Some(p.out_segs)).unwrap_or(0);
        let retrans = delta(Some(now.retrans), Some(p.retrans)).unwrap_or(0);
        host(Metric::TcpOutSegsPerSec, Some(sent as f64 / secs));
        host(
            Metric::TcpRetransmitRatio,
            Some(if sent > 0 {
                retrans as f64 / sent as f64
            } else {
                0.0
            }),
        );
        host(
            Metric::TcpListenOverflowsPerSec,
            delta(now.listen_overflows, p.listen_overflows).map(|d| d as f64 / secs),
        );
        host(
            Metric::SpoolDroppedBatches,
            delta(Some(now.spool_dropped), Some(p.spool_dropped)).map(|d| d as f64),
        );
    }
    host(
        Metric::FdsUsedPercent,
        match (m.open_fds, m.max_fds) {
            (Some(a), Some(b)) => pct(a as f64, b as f64),
            _ => None,
        },
    );
    host(
        Metric::ConntrackUsedPercent,
        match (m.conntrack_entries, m.conntrack_max) {
            (Some(a), Some(b)) => pct(a as f64, b as f64),
            _ => None,
        },
    );
    host(
        Metric::ClockOffsetAbsSecs,
        m.clock_offset_secs.map(f64::abs),
    );
    host(
        Metric::ClockSynchronised,
        m.clock_synchronised.map(|s| f64::from(u8::from(s))),
    );
    host(Metric::ClockMaxErrorSecs, m.clock_max_error_secs);
    host(Metric::Findings, Some(i.findings.len() as f64));
    host(
        Metric::CriticalFindings,
        Some(
            i.findings
                .iter()
                .filter(|f| f.severity == "critical")
                .count() as f64,
        ),
    );
    let a = i.agent;
    host(Metric::EventsLost, Some(a.events_lost as f64));
    host(Metric::ProbesOff, Some(f64::from(a.probes_off)));
    host(Metric::SpoolUnacked, Some(a.spool_unacked as f64));
    host(Metric::CollectorSilentSecs, Some(a.collector_silent_secs));
    host(Metric::AgentCpuPercent, a.cpu_percent);
    host(Metric::AgentRssBytes, a.rss_bytes.map(|b| b as f64));
    host(Metric::ProbesShed, Some(f64::from(a.probes_shed)));

    let mut push = |metric: Metric, labels: &Labels, v: Option<f64>| {
        if let Some(v) = v.filter(|v| v.is_finite()) {
            out.entry(metric).or_default().push((labels.clone(), v));
        }
    };
    for f in &m.filesystems {
        let l = vec![
            ("device".to_string(), f.device.clone()),
            ("fstype".to_string(), f.fstype.clone()),
            ("mountpoint".to_string(), f.mount.clone()),
        ];
        push(
            Metric::FsAvailPercent,
            &l,
            pct(f.available_bytes as f64, f.size_bytes as f64),
        );
        push(Metric::FsAvailBytes, &l, Some(f.available_bytes as f64));
        push(
            Metric::FsFilesFreePercent,
            &l,
            pct(f.inodes_free as f64, f.inodes_total as f64),
        );
        // Filesystems without an inode count (btrfs, vfat) have no inode series.
        push(
            Metric::FsFilesFree,
            &l,
            (f.inodes_total > 0).then_some(f.inodes_free as f64),
        );
    }
    for d in &m.disks {
        let l = vec![("device".to_string(), d.device.clone())];
        push(
            Metric::DiskBusyPercent,
            &l,
            Some(d.io_time_ms_per_sec / 10.0),
        );
        push(Metric::DiskIoQueue, &l, Some(d.io_queue));
    }
    for n in &m.network {
        let l = vec![("device".to_string(), n.interface.clone())];
        let ratio = |errs: f64, pkts: f64| Some(if pkts > 0.0 { errs / pkts } else { 0.0 });
        push(
            Metric::NetRxErrorRatio,
            &l,
            ratio(n.rx_errors_per_sec, n.rx_packets_per_sec),
        );
        push(
            Metric::NetTxErrorRatio,
            &l,
            ratio(n.tx_errors_per_sec, n.tx_packets_per_sec),
        );
    }
    let secs = m.interval_secs;
    for s in i.syscalls {
        let l = vec![("syscall".to_string(), s.name.clone())];
        if secs > 0.0 {
            push(Metric::SyscallCallsPerSec, &l, Some(s.count as f64 / secs));
        }
        if s.count < MIN_CALLS {
            continue;
        }
        let p99 = p99_secs(s);
        push(Metric::SyscallP99Secs, &l, p99);
        if let (Some(p), Some(b)) = (p99, baseline(&s.name)) {
            push(Metric::SyscallP99OverBaseline, &l, (b > 0.0).then(|| p / b));
        }
    }
    (out, now)
}

/// The p99 of a syscall's histogram: the upper edge of the bucket (a quarter octave)
/// holding the 99th percentile call, capped at the interval's maximum, as
/// `vigil syscalls` computes it. A bound inside a bucket is therefore at most 25 %
/// high.
pub fn p99_secs(s: &pb::SyscallLatency) -> Option<f64> {
    let total: u64 = s.buckets.iter().sum();
    if total == 0 {
        return None;
    }
    let rank = total - total / 100;
    let mut seen = 0;
    for (i, n) in s.buckets.iter().enumerate() {
        seen += n;
        if seen >= rank {
            let upper = vigil_common::bucket_upper_bound(i);
            let upper = if s.max_ns > 0 {
                upper.min(s.max_ns)
            } else {
                upper
            };
            return Some(upper as f64 / 1e9);
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rates_come_from_the_previous_counters_and_a_reset_counts_from_zero() {
        let mut m = pb::HostMetrics {
            major_faults_total: Some(1000),
            oom_kills_total: Some(3),
            tcp: Some(pb::TcpCounters {
                retrans_segs: 10,
                out_segs: 1000,
                ..Default::default()
            }),
            ..Default::default()
        };
        let agent = AgentHealth::default();
        let at = |t, m: &pb::HostMetrics| {
            let i = Inputs {
                time_ms: t,
                metrics: m,
                syscalls: &[],
                findings: &[],
                agent: &agent,
            };
            observe(&i, None, &|_| None).1
        };
        let prev = at(0, &m);
        m.major_faults_total = Some(3000);
        m.oom_kills_total = Some(4);
        m.tcp.as_mut().unwrap().retrans_segs = 60;
        m.tcp.as_mut().unwrap().out_segs = 2000;
        let i = Inputs {
            time_ms: 10_000,
            metrics: &m,
            syscalls: &[],
            findings: &[],
            agent: &agent,
        };
        let (v, _) = observe(&i, Some(&prev), &|_| None);
        assert_eq!(v[&Metric::MajorFaultsPerSec][0].1, 200.0);
        assert_eq!(v[&Metric::OomKills][0].1, 1.0);
        assert_eq!(v[&Metric::TcpRetransmitRatio][0].1, 0.05);
        let mut reset = m.clone();
        reset.oom_kills_total = Some(1);
        let i = Inputs {
            metrics: &reset,
            ..i
        };
        let (v, _) = observe(&i, Some(&prev), &|_| None);
        assert_eq!(v[&Metric::OomKills][0].1, 1.0);
    }

    #[test]
    fn p99_is_the_bucket_edge_of_the_99th_percentile_call() {
        let (fast, slow) = (
            vigil_common::latency_bucket(1_000),
            vigil_common::latency_bucket(1_000_000),
        );
        let mut buckets = vec![0u64; vigil_common::LATENCY_BUCKETS];
        buckets[fast] = 990;
        buckets[slow] = 10;
        let mut s = pb::SyscallLatency {
            count: 1000,
            buckets,
            ..Default::default()
        };
        let p = p99_secs(&s).unwrap();
        assert!((1e-6..1.25e-6).contains(&p), "{p}");
        s.buckets[slow] = 11;
        s.max_ns = 1_100_000;
        let p = p99_secs(&s).unwrap();
        assert!((1e-3..1.1e-3).contains(&p), "{p}");
    }
}
