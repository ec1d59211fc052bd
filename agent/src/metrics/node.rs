//! The host metrics under node_exporter's own names, labels and units (its core
//! collectors as of 1.5: cpu, meminfo, loadavg, filesystem, diskstats, netdev, netstat,
//! pressure, stat, uname, time), read from procfs at scrape time, so that dashboards and
//! alert rules written for node_exporter work unchanged against the agent's /metrics.
//!
//! Counters are the kernel's counters converted exactly as node_exporter converts them
//! (CPU ticks / USER_HZ, sectors * 512, milliseconds / 1000, microseconds / 10^6), so
//! both read the same number from the same counter. The filters are node_exporter's
//! defaults as Debian 12 packages it: the mount points and file system types its
//! filesystem collector skips, the network devices its netdev collector skips (lo), the
//! partitions and virtual devices its diskstats collector skips, and the netstat fields
//! its default `--collector.netstat.fields` lets through. A file this kernel lacks
//! leaves its families out; a line that does not parse is skipped.
use std::collections::HashSet;

use vigil_openmetrics::{Family, Kind};

use super::Roots;

fn read(path: &std::path::Path) -> Option<String> {
    std::fs::read_to_string(path).ok()
}

/// Every node_exporter-named family this host has, read now.
pub fn families(roots: &Roots, filters: &Filters) -> Vec<Family> {
    let mut out = Vec::new();
    let ticks = clock_ticks();
    if let Some(t) = read(&roots.proc.join("stat")) {
        stat(&t, ticks, &mut out);
    }
    if let Some(t) = read(&roots.proc.join("meminfo")) {
        meminfo(&t, &mut out);
    }
    if let Some(t) = read(&roots.proc.join("loadavg")) {
        loadavg(&t, &mut out);
    }
    if let Some(t) =
        read(&roots.proc.join("1/mounts")).or_else(|| read(&roots.proc.join("self/mounts")))
    {
        filesystems(&t, roots, filters, &mut out);
    }
    if let Some(t) = read(&roots.proc.join("diskstats")) {
        diskstats(&t, filters, &mut out);
    }
    if let Some(t) = read(&roots.proc.join("net/dev")) {
        netdev(&t, &mut out);
    }
    let mut netstat_text = String::new();
    for f in ["net/netstat", "net/snmp"] {
        if let Some(t) = read(&roots.proc.join(f)) {
            netstat_text.push_str(&t);
        }
    }
    let snmp6 = read(&roots.proc.join("net/snmp6")).unwrap_or_default();
    netstat(&netstat_text, &snmp6, filters, &mut out);
    pressure(roots, &mut out);
    if let Some(t) = read(&roots.proc.join("vmstat")) {
        vmstat(&t, &mut out);
    }
    if let Some(t) = read(&roots.proc.join("sys/fs/file-nr")) {
        filefd(&t, &mut out);
    }
    conntrack(roots, &mut out);
    timex(&mut out);
    uname(&mut out);
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64());
    out.push(Family::single(
        "node_time_seconds",
        "System time in seconds since epoch (1970).",
        Kind::Gauge,
        now,
    ));
    out
}

/// node_exporter's default filters, compiled once.
pub struct Filters {
    mount_points: regex::Regex,
    fs_types: regex::Regex,
    disks: regex::Regex,
    netstat_fields: regex::Regex,
}

impl Default for Filters {
    fn default() -> Self {
        // The patterns are the defaults of Debian's prometheus-node-exporter 1.5 (its
        // mount points also skip /run, /mnt and /media, and its netdev skips lo), and constant: a failure to
        // compile them is a bug a unit test catches, so an empty filter is the fallback.
        let re = |p: &str| {
            regex::Regex::new(p)
                .unwrap_or_else(|_| regex::Regex::new("$^").unwrap_or_else(|_| unreachable!()))
        };
        Self {
            mount_points: re(
                r"^/(dev|proc|run|sys|mnt|media|var/lib/docker/.+|var/lib/containers/storage/.+)($|/)",
            ),
            fs_types: re(
                r"^(autofs|binfmt_misc|bpf|cgroup2?|configfs|debugfs|devpts|devtmpfs|fusectl|hugetlbfs|iso9660|mqueue|nsfs|overlay|proc|procfs|pstore|rpc_pipefs|securityfs|selinuxfs|squashfs|sysfs|tracefs)$",
            ),
            disks: re(r"^(ram|loop|fd|(h|s|v|xv)d[a-z]|nvme\d+n\d+p)\d+$"),
            netstat_fields: re(
                r"^(.*_(InErrors|InErrs)|Ip_Forwarding|Ip(6|Ext)_(InOctets|OutOctets)|Icmp6?_(InMsgs|OutMsgs)|TcpExt_(Listen.*|Syncookies.*|TCPSynRetrans|TCPTimeouts)|Tcp_(ActiveOpens|InSegs|OutSegs|OutRsts|PassiveOpens|RetransSegs|CurrEstab)|Udp6?_(InDatagrams|OutDatagrams|NoPorts|RcvbufErrors|SndbufErrors))$",
            ),
        }
    }
}

fn clock_ticks() -> f64 {
    // SAFETY: sysconf reads a constant.
    let t = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if t > 0 {
        t as f64
    } else {
        100.0
    }
}

fn num(s: &str) -> Option<f64> {
    s.parse::<u64>()
        .ok()
        .map(|v| v as f64)
        .or_else(|| s.parse::<f64>().ok())
}

fn stat(text: &str, ticks: f64, out: &mut Vec<Family>) {
    const MODES: [&str; 8] = [
        "user", "nice", "system", "idle", "iowait", "irq", "softirq", "steal",
    ];
    let mut cpu = Family::new(
        "node_cpu_seconds_total",
        "Seconds the CPUs spent in each mode.",
        Kind::Counter,
    );
    let mut guest = Family::new(
        "node_cpu_guest_seconds_total",
        "Seconds the CPUs spent in guests (VMs) for each mode.",
        Kind::Counter,
    );
    for line in text.lines() {
        let mut w = line.split_whitespace();
        let Some(key) = w.next() else { continue };
        let rest: Vec<&str> = w.collect();
        let first = rest.first().and_then(|v| num(v));
        match key {
            "btime" => push_single(
                out,
                "node_boot_time_seconds",
                "Node boot time, in unixtime.",
                Kind::Gauge,
                first,
            ),
            "ctxt" => push_single(
                out,
                "node_context_switches_total",
                "Total number of context switches.",
                Kind::Counter,
                first,
            ),
            "processes" => push_single(
                out,
                "node_forks_total",
                "Total number of forks.",
                Kind::Counter,
                first,
            ),
            "intr" => push_single(
                out,
                "node_intr_total",
                "Total number of interrupts serviced.",
                Kind::Counter,
                first,
            ),
            "procs_running" => push_single(
                out,
                "node_procs_running",
                "Number of processes in runnable state.",
                Kind::Gauge,
                first,
            ),
            "procs_blocked" => push_single(
                out,
                "node_procs_blocked",
                "Number of processes blocked waiting for I/O to complete.",
                Kind::Gauge,
                first,
            ),
            k if k.starts_with("cpu") && k.len() > 3 => {
                let n = &k[3..];
                if !n.bytes().all(|b| b.is_ascii_digit()) {
                    continue;
                }
                for (i, mode) in MODES.iter().enumerate() {
                    if let Some(v) = rest.get(i).and_then(|v| num(v)) {
                        cpu.with(&[("cpu", n), ("mode", mode)], v / ticks);
                    }
                }
                for (i, mode) in [(8, "user"), (9, "nice")] {
                    if let Some(v) = rest.get(i).and_then(|v| num(v)) {
                        guest.with(&[("cpu", n), ("mode", mode)], v / ticks);
                    }
                }
            }
            _ => {}
        }
    }
    out.push(cpu);
    out.push(guest);
}

/// node_exporter's vmstat collector with its default fields
/// (`^(oom_kill|pgpg|pswp|pg.*fault).*`), untyped as it exports them.
fn vmstat(text: &str, out: &mut Vec<Family>) {
    for line in text.lines() {
        let Some((k, v)) = line.split_once(' ') else {
            continue;
        };
        let wanted = k.starts_with("oom_kill")
            || k.starts_with("pgpg")
            || k.starts_with("pswp")
            || (k.starts_with("pg") && k.contains("fault"));
        if let (true, Some(v)) = (wanted, num(v)) {
            out.push(Family::single(
                format!("node_vmstat_{k}"),
                format!("/proc/vmstat information field {k}."),
                Kind::Untyped,
                v,
            ));
        }
    }
}

/// node_exporter's filefd collector.
fn filefd(text: &str, out: &mut Vec<Family>) {
    let f: Vec<f64> = text.split_whitespace().filter_map(num).collect();
    push_single(
        out,
        "node_filefd_allocated",
        "File descriptor statistics: allocated.",
        Kind::Gauge,
        f.first().copied(),
    );
    push_single(
        out,
        "node_filefd_maximum",
        "File descriptor statistics: maximum.",
        Kind::Gauge,
        f.get(2).copied(),
    );
}

/// node_exporter's conntrack collector (present only with nf_conntrack loaded).
fn conntrack(roots: &Roots, out: &mut Vec<Family>) {
    let n =
        |f: &str| read(&roots.proc.join("sys/net/netfilter").join(f)).and_then(|t| num(t.trim()));
    push_single(
        out,
        "node_nf_conntrack_entries",
        "Number of currently allocated flow entries for connection tracking.",
        Kind::Gauge,
        n("nf_conntrack_count"),
    );
    push_single(
        out,
        "node_nf_conntrack_entries_limit",
        "Maximum size of connection tracking table.",
        Kind::Gauge,
        n("nf_conntrack_max"),
    );
}

/// node_exporter's timex collector: adjtimex(2) read only (modes = 0).
fn timex(out: &mut Vec<Family>) {
    // SAFETY: a zeroed timex is a valid argument; modes = 0 changes nothing.
    let mut t: libc::timex = unsafe { std::mem::zeroed() };
    // SAFETY: t is a valid, writable timex.
    if unsafe { libc::adjtimex(&mut t) } < 0 {
        return;
    }
    let scale = if t.status & libc::STA_NANO != 0 {
        1e-9
    } else {
        1e-6
    };
    push_single(
        out,
        "node_timex_offset_seconds",
        "Time offset in between local system and reference clock.",
        Kind::Gauge,
        Some(t.offset as f64 * scale),
    );
    push_single(
        out,
        "node_timex_maxerror_seconds",
        "Maximum error in seconds.",
        Kind::Gauge,
        Some(t.maxerror as f64 * 1e-6),
    );
    push_single(
        out,
        "node_timex_sync_status",
        "Is clock synchronized to a reliable server (1 = yes, 0 = no).",
        Kind::Gauge,
        Some(f64::from(u8::from(t.status & libc::STA_UNSYNC == 0))),
    );
}

fn push_single(out: &mut Vec<Family>, name: &str, help: &str, kind: Kind, v: Option<f64>) {
    if let Some(v) = v {
        out.push(Family::single(name, help, kind, v));
    }
}

fn meminfo(text: &str, out: &mut Vec<Family>) {
    let mut seen = HashSet::new();
    for line in text.lines() {
        let Some((name, rest)) = line.split_once(':') else {
            continue;
        };
        let mut w = rest.split_whitespace();
        let Some(v) = w.next().and_then(num) else {
            continue;
        };
        // "Active(anon)" is node_memory_Active_anon_bytes.
        let name = name.trim().replace('(', "_").replace(')', "");
        if name.is_empty() || !name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_') {
            continue;
        }
        let (metric, v) = match w.next() {
            Some("kB") => (format!("node_memory_{name}_bytes"), v * 1024.0),
            _ => (format!("node_memory_{name}"), v),
        };
        if seen.insert(metric.clone()) {
            out.push(Family::single(
                metric,
                format!("Memory information field {name}."),
                Kind::Gauge,
                v,
            ));
        }
    }
}

fn loadavg(text: &str, out: &mut Vec<Family>) {
    let w: Vec<&str> = text.split_whitespace().collect();
    for (i, (name, help)) in [
        ("node_load1", "1m load average."),
        ("node_load5", "5m load average."),
        ("node_load15", "15m load average."),
    ]
    .iter()
    .enumerate()
    {
        push_single(
            out,
            name,
            help,
            Kind::Gauge,
            w.get(i).and_then(|v| v.parse().ok()),
        );
    }
}

fn unescape(s: &str) -> String {
    // /proc/mounts escapes space, tab, newline and backslash as octal.
    s.replace("\\040", " ")
        .replace("\\011", "\t")
        .replace("\\012", "\n")
        .replace("\\134", "\\")
}

fn filesystems(text: &str, roots: &Roots, filters: &Filters, out: &mut Vec<Family>) {
    let names = [
        ("node_filesystem_size_bytes", "Filesystem size in bytes."),
        (
            "node_filesystem_free_bytes",
            "Filesystem free space in bytes.",
        ),
        (
            "node_filesystem_avail_bytes",
            "Filesystem space available to non-root users in bytes.",
        ),
        ("node_filesystem_files", "Filesystem total file nodes."),
        (
            "node_filesystem_files_free",
            "Filesystem total free file nodes.",
        ),
        ("node_filesystem_readonly", "Filesystem read-only status."),
        (
            "node_filesystem_device_error",
            "Whether an error occurred while getting statistics for the given device.",
        ),
    ];
    let mut fams: Vec<Family> = names
        .iter()
        .map(|(n, h)| Family::new(*n, *h, Kind::Gauge))
        .collect();
    let mut seen = HashSet::new();
    for line in text.lines() {
        let w: Vec<&str> = line.split_whitespace().collect();
        let [dev, mnt, fstype, opts, ..] = w[..] else {
            continue;
        };
        let (dev, mnt) = (unescape(dev), unescape(mnt));
        if filters.mount_points.is_match(&mnt) || filters.fs_types.is_match(fstype) {
            continue;
        }
        if !seen.insert((dev.clone(), mnt.clone(), fstype.to_string())) {
            continue;
        }
        let labels = [
            ("device", dev.as_str()),
            ("fstype", fstype),
            ("mountpoint", mnt.as_str()),
        ];
        let ro = opts.split(',').any(|o| o == "ro");
        match nix::sys::statfs::statfs(&roots.host_path(&mnt)) {
            Ok(st) => {
                let bs = st.block_size() as f64;
                let values = [
                    st.blocks() as f64 * bs,
                    st.blocks_free() as f64 * bs,
                    st.blocks_available() as f64 * bs,
                    st.files() as f64,
                    st.files_free() as f64,
                    f64::from(u8::from(ro)),
                    0.0,
                ];
                for (f, v) in fams.iter_mut().zip(values) {
                    f.with(&labels, v);
                }
            }
            Err(_) => {
                fams[5].with(&labels, f64::from(u8::from(ro)));
                fams[6].with(&labels, 1.0);
            }
        }
    }
    out.extend(fams);
}

fn diskstats(text: &str, filters: &Filters, out: &mut Vec<Family>) {
    // (field index after the name, metric, help, scale); None scale: a gauge.
    const FIELDS: [(usize, &str, &str, f64); 17] = [
        (
            0,
            "node_disk_reads_completed_total",
            "The total number of reads completed successfully.",
            1.0,
        ),
        (
            1,
            "node_disk_reads_merged_total",
            "The total number of reads merged.",
            1.0,
        ),
        (
            2,
            "node_disk_read_bytes_total",
            "The total number of bytes read successfully.",
            512.0,
        ),
        (
            3,
            "node_disk_read_time_seconds_total",
            "The total number of seconds spent by all reads.",
            0.001,
        ),
        (
            4,
            "node_disk_writes_completed_total",
            "The total number of writes completed successfully.",
            1.0,
        ),
        (
            5,
            "node_disk_writes_merged_total",
            "The number of writes merged.",
            1.0,
        ),
        (
            6,
            "node_disk_written_bytes_total",
            "The total number of bytes written successfully.",
            512.0,
        ),
        (
            7,
            "node_disk_write_time_seconds_total",
            "This is the total number of seconds spent by all writes.",
            0.001,
        ),
        (
            8,
            "node_disk_io_now",
            "The number of I/Os currently in progress.",
            1.0,
        ),
        (
            9,
            "node_disk_io_time_seconds_total",
            "Total seconds spent doing I/Os.",
            0.001,
        ),
        (
            10,
            "node_disk_io_time_weighted_seconds_total",
            "The weighted # of seconds spent doing I/Os.",
            0.001,
        ),
        (
            11,
            "node_disk_discards_completed_total",
            "The total number of discards completed successfully.",
            1.0,
        ),
        (
            12,
            "node_disk_discards_merged_total",
            "The total number of discards merged.",
            1.0,
        ),
        (
            13,
            "node_disk_discarded_sectors_total",
            "The total number of sectors discarded successfully.",
            1.0,
        ),
        (
            14,
            "node_disk_discard_time_seconds_total",
            "This is the total number of seconds spent by all discards.",
            0.001,
        ),
        (
            15,
            "node_disk_flush_requests_total",
            "The total number of flush requests completed successfully",
            1.0,
        ),
        (
            16,
            "node_disk_flush_requests_time_seconds_total",
            "This is the total number of seconds spent by all flush requests.",
            0.001,
        ),
    ];
    let mut fams: Vec<Family> = FIELDS
        .iter()
        .map(|(i, n, h, _)| Family::new(*n, *h, if *i == 8 { Kind::Gauge } else { Kind::Counter }))
        .collect();
    for line in text.lines() {
        let w: Vec<&str> = line.split_whitespace().collect();
        let Some(dev) = w.get(2) else { continue };
        if filters.disks.is_match(dev) {
            continue;
        }
        for ((i, _, _, scale), fam) in FIELDS.iter().zip(fams.iter_mut()) {
            if let Some(v) = w.get(3 + i).and_then(|v| num(v)) {
                fam.with(&[("device", dev)], v * scale);
            }
        }
    }
    out.extend(fams);
}

fn netdev(text: &str, out: &mut Vec<Family>) {
    const FIELDS: [&str; 16] = [
        "receive_bytes",
        "receive_packets",
        "receive_errs",
        "receive_drop",
        "receive_fifo",
        "receive_frame",
        "receive_compressed",
        "receive_multicast",
        "transmit_bytes",
        "transmit_packets",
        "transmit_errs",
        "transmit_drop",
        "transmit_fifo",
        "transmit_colls",
        "transmit_carrier",
        "transmit_compressed",
    ];
    let mut fams: Vec<Family> = FIELDS
        .iter()
        .map(|f| {
            Family::new(
                format!("node_network_{f}_total"),
                format!("Network device statistic {f}."),
                Kind::Counter,
            )
        })
        .collect();
    for line in text.lines().skip(2) {
        let Some((dev, rest)) = line.split_once(':') else {
            continue;
        };
        let dev = dev.trim();
        if dev == "lo" {
            continue;
        }
        for (v, fam) in rest.split_whitespace().zip(fams.iter_mut()) {
            if let Some(v) = num(v) {
                fam.with(&[("device", dev)], v);
            }
        }
    }
    out.extend(fams);
}

fn netstat(text: &str, snmp6: &str, filters: &Filters, out: &mut Vec<Family>) {
    let mut fields: Vec<(String, f64)> = Vec::new();
    let mut lines = text.lines();
    while let (Some(names), Some(values)) = (lines.next(), lines.next()) {
        let (Some((p1, names)), Some((p2, values))) =
            (names.split_once(':'), values.split_once(':'))
        else {
            continue;
        };
        if p1 != p2 {
            continue;
        }
        for (n, v) in names.split_whitespace().zip(values.split_whitespace()) {
            if let Ok(v) = v.parse::<f64>() {
                fields.push((format!("{p1}_{n}"), v));
            }
        }
    }
    // snmp6: "Ip6InReceives  12": the protocol ends at its '6'.
    for line in snmp6.lines() {
        let mut w = line.split_whitespace();
        let (Some(k), Some(v)) = (w.next(), w.next()) else {
            continue;
        };
        let Some(i) = k.find('6') else { continue };
        if let Ok(v) = v.parse::<f64>() {
            fields.push((format!("{}_{}", &k[..=i], &k[i + 1..]), v));
        }
    }
    let mut seen = HashSet::new();
    for (name, v) in fields {
        if filters.netstat_fields.is_match(&name) && seen.insert(name.clone()) {
            let (proto, field) = name.split_once('_').unwrap_or((&name, ""));
            out.push(Family::single(
                format!("node_netstat_{name}"),
                format!("Statistic {proto}{field}."),
                Kind::Untyped,
                v,
            ));
        }
    }
}

fn pressure(roots: &Roots, out: &mut Vec<Family>) {
    for (res, line, name, help) in [
        (
            "cpu",
            "some",
            "node_pressure_cpu_waiting_seconds_total",
            "Total time in seconds that processes have waited for CPU time",
        ),
        (
            "io",
            "some",
            "node_pressure_io_waiting_seconds_total",
            "Total time in seconds that processes have waited due to IO congestion",
        ),
        (
            "io",
            "full",
            "node_pressure_io_stalled_seconds_total",
            "Total time in seconds no process could make progress due to IO congestion",
        ),
        (
            "memory",
            "some",
            "node_pressure_memory_waiting_seconds_total",
            "Total time in seconds that processes have waited for memory",
        ),
        (
            "memory",
            "full",
            "node_pressure_memory_stalled_seconds_total",
            "Total time in seconds no process could make progress due to memory congestion",
        ),
    ] {
        let Some(text) = read(&roots.proc.join("pressure").join(res)) else {
            continue;
        };
        let total = text
            .lines()
            .find(|l| l.starts_with(line))
            .and_then(|l| l.split_whitespace().find_map(|w| w.strip_prefix("total=")))
            .and_then(num);
        push_single(out, name, help, Kind::Counter, total.map(|us| us / 1e6));
    }
}

fn uname(out: &mut Vec<Family>) {
    let u = nix::sys::utsname::uname();
    let Ok(u) = u else { return };
    let s = |o: &std::ffi::OsStr| o.to_string_lossy().into_owned();
    // The domain name is not in nix's UtsName; the kernel's copy is.
    let domain = std::fs::read_to_string("/proc/sys/kernel/domainname")
        .map(|d| d.trim().to_string())
        .unwrap_or_else(|_| "(none)".into());
    let mut f = Family::new(
        "node_uname_info",
        "Labeled system information as provided by the uname system call.",
        Kind::Info,
    );
    f.with(
        &[
            ("domainname", &domain),
            ("machine", &s(u.machine())),
            ("nodename", &s(u.nodename())),
            ("release", &s(u.release())),
            ("sysname", &s(u.sysname())),
            ("version", &s(u.version())),
        ],
        1.0,
    );
    out.push(f);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_filters_compile_and_skip_what_node_exporter_skips() {
        let f = Filters::default();
        assert!(f.mount_points.is_match("/proc/sys") && !f.mount_points.is_match("/home"));
        assert!(!f.fs_types.is_match("tmpfs") && f.fs_types.is_match("overlay"));
        assert!(
            f.disks.is_match("sda1") && !f.disks.is_match("sda") && f.disks.is_match("nvme0n1p2")
        );
        assert!(
            f.netstat_fields.is_match("Tcp_RetransSegs")
                && !f.netstat_fields.is_match("Tcp_MaxConn")
        );
    }

    #[test]
    fn counters_are_converted_as_node_exporter_converts_them() {
        let mut out = Vec::new();
        stat("cpu  1 2 3 4 5 6 7 8 9 10\ncpu0 100 0 50 1000 0 0 0 0 0 0\nbtime 1700000000\nctxt 99\n", 100.0, &mut out);
        let cpu = out
            .iter()
            .find(|f| f.name == "node_cpu_seconds_total")
            .unwrap();
        assert_eq!(cpu.samples.len(), 8, "the cpu0 line only");
        assert_eq!(cpu.samples[0].value, vigil_openmetrics::Value::Number(1.0));
        meminfo(
            "MemTotal:       16384 kB\nActive(anon):  4 kB\nHugePages_Total:       0\n",
            &mut out,
        );
        let names: Vec<&str> = out.iter().map(|f| f.name.as_str()).collect();
        for n in [
            "node_boot_time_seconds",
            "node_context_switches_total",
            "node_memory_MemTotal_bytes",
            "node_memory_Active_anon_bytes",
            "node_memory_HugePages_Total",
        ] {
            assert!(names.contains(&n), "{n}: {names:?}");
        }
        let mut out = Vec::new();
        diskstats("   8       0 sda 10 0 20 30 0 0 0 0 0 40 50 0 0 0 0 0 0\n   8       1 sda1 1 0 2 3 0 0 0 0 0 4 5\n", &Filters::default(), &mut out);
        let read = out
            .iter()
            .find(|f| f.name == "node_disk_read_bytes_total")
            .unwrap();
        assert_eq!(read.samples.len(), 1, "partitions are skipped");
        assert_eq!(
            read.samples[0].value,
            vigil_openmetrics::Value::Number(20.0 * 512.0)
        );
    }

    #[test]
    fn garbage_is_skipped_never_a_panic() {
        let mut out = Vec::new();
        let junk = "cpu\ncpu0 x y\nbtime\n:::\n\u{0}\nIp: a b\nIp: 1\n";
        stat(junk, 100.0, &mut out);
        meminfo(junk, &mut out);
        loadavg(junk, &mut out);
        diskstats(junk, &Filters::default(), &mut out);
        netdev(junk, &mut out);
        netstat(junk, junk, &Filters::default(), &mut out);
    }
}
