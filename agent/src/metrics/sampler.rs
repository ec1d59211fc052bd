//! Reading the host each interval and turning counters into rates.
use std::{
    collections::HashMap,
    fs,
    path::{Path, PathBuf},
    time::{Instant, SystemTime},
};

use super::{
    parse::{self, CpuCounters, DiskCounters, NetCounters},
    Clock, Cpu, CpuTimes, DiskIo, Filesystem, HostIdentity, HostSample, Load, Memory, MetricsError,
    NetIo, Pressure, ProcessCounts, ProcessInfo, Roots, TcpCounters,
};

/// File systems that hold no user data (left out of the per-mount usage).
const PSEUDO_FS: &[&str] = &[
    "proc",
    "sysfs",
    "cgroup",
    "cgroup2",
    "devpts",
    "mqueue",
    "debugfs",
    "tracefs",
    "securityfs",
    "pstore",
    "bpf",
    "configfs",
    "fusectl",
    "hugetlbfs",
    "autofs",
    "binfmt_misc",
    "nsfs",
    "rpc_pipefs",
    "devtmpfs",
    "efivarfs",
    "selinuxfs",
    "ramfs",
];

/// Counters from the previous sample.
#[derive(Default)]
struct Previous {
    at: Option<Instant>,
    cpu_total: CpuCounters,
    cpu_per_core: Vec<CpuCounters>,
    disks: HashMap<String, DiskCounters>,
    net: HashMap<String, NetCounters>,
    /// pid → (start ticks, cpu ticks): the start time tells a reused pid apart.
    procs: HashMap<u32, (u64, u64)>,
    /// Uptime at the previous sample, in clock ticks: a process that started after it
    /// spent all of its CPU time inside the window.
    uptime_ticks: Option<u64>,
}

/// Samples the host; keeps what it needs to compute rates between calls.
pub struct Sampler {
    roots: Roots,
    top_n: usize,
    clock_ticks: f64,
    page_size: u64,
    users: HashMap<u32, String>,
    prev: Previous,
}

fn read(path: &Path) -> Result<String, MetricsError> {
    fs::read_to_string(path).map_err(|source| MetricsError::Read {
        path: path.to_path_buf(),
        source,
    })
}

/// A file that may not exist on this kernel: `None` then, never an error.
fn read_optional(path: &Path) -> Option<String> {
    parse::read_lossy(path)
}

fn sysconf(name: libc::c_int, fallback: i64) -> i64 {
    // SAFETY: sysconf has no preconditions.
    let v = unsafe { libc::sysconf(name) };
    if v > 0 {
        v
    } else {
        fallback
    }
}

fn rate(now: u64, before: Option<u64>, secs: f64) -> f64 {
    match before {
        Some(b) if secs > 0.0 => now.saturating_sub(b) as f64 / secs,
        _ => 0.0,
    }
}

fn cpu_times(now: &CpuCounters, before: &CpuCounters) -> CpuTimes {
    let d: Vec<f64> = now
        .iter()
        .zip(before)
        .map(|(n, b)| n.saturating_sub(*b) as f64)
        .collect();
    let total: f64 = d.iter().sum();
    let pct = |i: usize| {
        if total > 0.0 {
            100.0 * d[i] / total
        } else {
            0.0
        }
    };
    CpuTimes {
        user: pct(0),
        nice: pct(1),
        system: pct(2),
        idle: pct(3),
        iowait: pct(4),
        irq: pct(5),
        softirq: pct(6),
        steal: pct(7),
    }
}

/// The kernel clock's state: adjtimex(2) with no mode bits reads and changes nothing
/// (no privilege needed).
fn clock() -> Option<Clock> {
    // SAFETY: a zeroed timex is a valid argument; modes = 0 only reads.
    let mut t: libc::timex = unsafe { std::mem::zeroed() };
    // SAFETY: t is a valid, writable timex.
    let state = unsafe { libc::adjtimex(&mut t) };
    if state < 0 {
        return None;
    }
    // Offset in microseconds, or nanoseconds with STA_NANO (as node_exporter reads it).
    let scale = if t.status & libc::STA_NANO != 0 {
        1e-9
    } else {
        1e-6
    };
    Some(Clock {
        offset_secs: t.offset as f64 * scale,
        max_error_secs: t.maxerror as f64 * 1e-6,
        synchronised: t.status & libc::STA_UNSYNC == 0,
    })
}

impl Sampler {
    pub fn new(roots: Roots, top_n: usize) -> Self {
        let users = read_optional(&roots.etc.join("passwd"))
            .map(|t| parse::passwd(&t))
            .unwrap_or_default();
        Self {
            roots,
            top_n,
            clock_ticks: sysconf(libc::_SC_CLK_TCK, 100) as f64,
            page_size: sysconf(libc::_SC_PAGESIZE, 4096) as u64,
            users,
            prev: Previous::default(),
        }
    }

    fn proc_path(&self, rel: &str) -> PathBuf {
        self.roots.proc.join(rel)
    }

    /// Reads the host. Rates cover the time since the previous call (zero on the first).
    pub fn sample(&mut self) -> Result<HostSample, MetricsError> {
        let now = Instant::now();
        let secs = self
            .prev
            .at
            .map_or(0.0, |t| now.duration_since(t).as_secs_f64());
        let stat = parse::proc_stat(&read(&self.proc_path("stat"))?).unwrap_or_default();
        if stat.per_cpu.is_empty() {
            return Err(MetricsError::Parse {
                path: self.proc_path("stat"),
                reason: "no per-CPU lines".into(),
            });
        }
        let mut sample = HostSample {
            time_unix_ms: SystemTime::now()
                .duration_since(SystemTime::UNIX_EPOCH)
                .map_or(0, |d| d.as_millis() as u64),
            interval_secs: secs,
            host: self.identity(stat.boot_time_unix),
            cpu: self.cpu(&stat),
            load: read_optional(&self.proc_path("loadavg"))
                .and_then(|t| parse::loadavg(&t))
                .map(|(one, five, fifteen)| Load { one, five, fifteen })
                .unwrap_or_default(),
            memory: self.memory()?,
            pressure: self.pressure(),
            filesystems: self.filesystems(),
            disks: self.disks(secs),
            network: self.network(secs),
            tcp: self.tcp(),
            ..Default::default()
        };
        if let Some(t) = read_optional(&self.proc_path("sys/fs/file-nr")) {
            let f: Vec<u64> = t
                .split_whitespace()
                .filter_map(|w| w.parse().ok())
                .collect();
            sample.open_fds = f.first().copied();
            sample.max_fds = f.get(2).copied();
        }
        if let Some(t) = read_optional(&self.proc_path("vmstat")) {
            let vm = parse::vmstat(&t);
            sample.major_faults_total = vm.get("pgmajfault").copied();
            sample.oom_kills_total = vm.get("oom_kill").copied();
        }
        let number = |rel: &str| {
            read_optional(&self.proc_path(rel)).and_then(|t| t.trim().parse::<u64>().ok())
        };
        sample.conntrack_entries = number("sys/net/netfilter/nf_conntrack_count");
        sample.conntrack_max = number("sys/net/netfilter/nf_conntrack_max");
        sample.clock = clock();
        self.processes(secs, &mut sample);
        self.prev.uptime_ticks = Some((sample.host.uptime_secs * self.clock_ticks) as u64);
        self.prev.cpu_total = stat.total;
        self.prev.cpu_per_core = stat.per_cpu;
        self.prev.at = Some(now);
        Ok(sample)
    }

    /// Who this host is: hostname, kernel and OS from sysinfo (uname and os-release),
    /// boot time from /proc/stat, uptime from /proc/uptime (procfs-core; sysinfo rounds
    /// it to whole seconds, too coarse for the CPU share of a process started mid-window).
    fn identity(&self, boot_time_unix: u64) -> HostIdentity {
        let os = match (
            sysinfo::System::name().ok(),
            sysinfo::System::os_version().ok(),
        ) {
            (Some(name), Some(version)) => format!("{name} {version}"),
            (Some(name), None) => name,
            _ => "Linux".to_string(),
        };
        // In a container with the host's root mounted: the host's names, not the
        // container's (its UTS namespace and /etc are its own).
        let (hostname, os) = match &self.roots.host {
            Some(_) => (
                read_optional(&self.roots.etc.join("hostname"))
                    .map(|h| h.trim().to_string())
                    .filter(|h| !h.is_empty())
                    .or_else(|| sysinfo::System::host_name().ok())
                    .unwrap_or_default(),
                read_optional(&self.roots.etc.join("os-release"))
                    .or_else(|| read_optional(&self.roots.host_path("/usr/lib/os-release")))
                    .and_then(|t| parse::os_release_name(&t))
                    .unwrap_or(os),
            ),
            None => (sysinfo::System::host_name().unwrap_or_default(), os),
        };
        HostIdentity {
            hostname,
            kernel: sysinfo::System::kernel_version().unwrap_or_default(),
            os,
            boot_time_unix,
            uptime_secs: read_optional(&self.proc_path("uptime"))
                .and_then(|t| parse::uptime(&t))
                .unwrap_or(0.0),
        }
    }

    fn cpu(&self, stat: &parse::ProcStat) -> Cpu {
        let total = cpu_times(&stat.total, &self.prev.cpu_total);
        let per_core = stat
            .per_cpu
            .iter()
            .enumerate()
            .map(|(i, c)| cpu_times(c, self.prev.cpu_per_core.get(i).unwrap_or(&[0; 8])))
            .collect();
        Cpu {
            count: stat.per_cpu.len(),
            usage_percent: (100.0 - total.idle - total.iowait).max(0.0),
            total,
            per_core,
        }
    }

    fn memory(&self) -> Result<Memory, MetricsError> {
        let path = self.proc_path("meminfo");
        let m = parse::meminfo(&read(&path)?).ok_or_else(|| MetricsError::Parse {
            path: path.clone(),
            reason: "not the meminfo format (MemTotal, MemFree, Buffers, Cached, ...)".into(),
        })?;
        let total = m.mem_total;
        // MemAvailable exists since 3.14; estimate it on older kernels.
        let available = m.mem_available.unwrap_or(m.mem_free + m.cached + m.buffers);
        Ok(Memory {
            total_bytes: total,
            available_bytes: available,
            used_bytes: total.saturating_sub(available),
            cached_bytes: m.cached,
            buffers_bytes: m.buffers,
            swap_total_bytes: m.swap_total,
            swap_free_bytes: m.swap_free,
        })
    }

    fn pressure(&self) -> Pressure {
        let one = |r: &str| {
            read_optional(&self.proc_path(&format!("pressure/{r}"))).map(|t| parse::pressure(&t))
        };
        Pressure {
            cpu: one("cpu"),
            memory: one("memory"),
            io: one("io"),
        }
    }

    fn filesystems(&self) -> Vec<Filesystem> {
        let Some(text) = read_optional(&self.proc_path("self/mounts")) else {
            return Vec::new();
        };
        let mut seen = std::collections::HashSet::new();
        let mut out = Vec::new();
        for (device, mount, fstype) in parse::mounts(&text) {
            if PSEUDO_FS.contains(&fstype.as_str()) || !seen.insert(mount.clone()) {
                continue;
            }
            // statvfs fields are u64 on the 64-bit targets Vigil builds for.
            let Ok(st) = nix::sys::statvfs::statvfs(&self.roots.host_path(&mount)) else {
                continue;
            };
            let frsize = st.fragment_size();
            let blocks = st.blocks();
            if blocks == 0 {
                continue;
            }
            let size = blocks * frsize;
            let free = st.blocks_free() * frsize;
            out.push(Filesystem {
                mount,
                device,
                fstype,
                size_bytes: size,
                used_bytes: size.saturating_sub(free),
                available_bytes: st.blocks_available() * frsize,
                inodes_total: st.files(),
                inodes_free: st.files_free(),
            });
        }
        out
    }

    fn disks(&mut self, secs: f64) -> Vec<DiskIo> {
        let Some(text) = read_optional(&self.proc_path("diskstats")) else {
            return Vec::new();
        };
        let mut now = HashMap::new();
        let mut out = Vec::new();
        for (name, c) in parse::diskstats(&text) {
            // Whole devices only (partitions are inside them), and no idle loop/ram devices.
            if !self.roots.sys.join("block").join(&name).exists() {
                continue;
            }
            if (name.starts_with("loop") || name.starts_with("ram")) && c == DiskCounters::default()
            {
                continue;
            }
            let p = self.prev.disks.get(&name);
            out.push(DiskIo {
                device: name.clone(),
                reads_per_sec: rate(c.reads, p.map(|p| p.reads), secs),
                writes_per_sec: rate(c.writes, p.map(|p| p.writes), secs),
                read_bytes_per_sec: rate(c.read_sectors, p.map(|p| p.read_sectors), secs) * 512.0,
                write_bytes_per_sec: rate(c.write_sectors, p.map(|p| p.write_sectors), secs)
                    * 512.0,
                io_time_ms_per_sec: rate(c.io_ms, p.map(|p| p.io_ms), secs),
                io_queue: rate(c.weighted_io_ms, p.map(|p| p.weighted_io_ms), secs) / 1000.0,
            });
            now.insert(name, c);
        }
        self.prev.disks = now;
        out
    }

    fn network(&mut self, secs: f64) -> Vec<NetIo> {
        let Some(text) = read_optional(&self.proc_path("net/dev")) else {
            return Vec::new();
        };
        let mut now = HashMap::new();
        let mut out = Vec::new();
        for (name, c) in parse::net_dev(&text) {
            let p = self.prev.net.get(&name);
            let r = |f: fn(&NetCounters) -> u64| rate(f(&c), p.map(f), secs);
            out.push(NetIo {
                interface: name.clone(),
                rx_bytes_per_sec: r(|c| c.rx_bytes),
                tx_bytes_per_sec: r(|c| c.tx_bytes),
                rx_packets_per_sec: r(|c| c.rx_packets),
                tx_packets_per_sec: r(|c| c.tx_packets),
                rx_errors_per_sec: r(|c| c.rx_errors),
                tx_errors_per_sec: r(|c| c.tx_errors),
                rx_drops_per_sec: r(|c| c.rx_drops),
                tx_drops_per_sec: r(|c| c.tx_drops),
            });
            now.insert(name, c);
        }
        self.prev.net = now;
        out
    }

    fn tcp(&self) -> TcpCounters {
        let snmp = read_optional(&self.proc_path("net/snmp")).unwrap_or_default();
        let netstat = read_optional(&self.proc_path("net/netstat")).unwrap_or_default();
        let tcp = parse::snmp_section(&snmp, "Tcp");
        let ext = parse::snmp_section(&netstat, "TcpExt");
        let get = |k: &str| tcp.get(k).copied().unwrap_or(0);
        TcpCounters {
            active_opens: get("ActiveOpens"),
            passive_opens: get("PassiveOpens"),
            retrans_segs: get("RetransSegs"),
            in_errs: get("InErrs"),
            curr_estab: get("CurrEstab"),
            listen_overflows: ext.get("ListenOverflows").copied(),
            listen_drops: ext.get("ListenDrops").copied(),
            out_segs: get("OutSegs"),
        }
    }

    fn processes(&mut self, secs: f64, sample: &mut HostSample) {
        let Ok(dir) = fs::read_dir(&self.roots.proc) else {
            return;
        };
        let mut counts = ProcessCounts::default();
        let mut now = HashMap::new();
        let mut all: Vec<(u32, parse::PidStat, f64)> = Vec::new();
        for entry in dir.flatten() {
            let Some(pid) = entry
                .file_name()
                .to_str()
                .and_then(|s| s.parse::<u32>().ok())
            else {
                continue;
            };
            // A process can exit between readdir and read: skip it.
            let Some(stat) =
                read_optional(&entry.path().join("stat")).and_then(|t| parse::pid_stat(&t))
            else {
                continue;
            };
            counts.total += 1;
            match stat.state {
                'R' => counts.running += 1,
                'S' => counts.sleeping += 1,
                'D' => counts.disk_sleep += 1,
                'T' | 't' => counts.stopped += 1,
                'Z' => counts.zombie += 1,
                'I' => counts.idle += 1,
                _ => counts.other += 1,
            }
            let ticks_in_window = match (self.prev.procs.get(&pid), self.prev.uptime_ticks) {
                (Some(&(start, ticks)), _) if start == stat.start_ticks => {
                    Some(stat.cpu_ticks.saturating_sub(ticks))
                }
                (_, Some(prev_uptime)) if stat.start_ticks >= prev_uptime => Some(stat.cpu_ticks),
                _ => None,
            };
            let cpu = match ticks_in_window {
                Some(t) if secs > 0.0 => 100.0 * t as f64 / self.clock_ticks / secs,
                _ => 0.0,
            };
            now.insert(pid, (stat.start_ticks, stat.cpu_ticks));
            all.push((pid, stat, cpu));
        }
        self.prev.procs = now;
        sample.processes = counts;
        all.sort_by(|a, b| b.2.total_cmp(&a.2).then(a.0.cmp(&b.0)));
        sample.top_cpu = all
            .iter()
            .take(self.top_n)
            .map(|(pid, s, cpu)| self.describe(*pid, s, *cpu))
            .collect();
        all.sort_by(|a, b| b.1.rss_pages.cmp(&a.1.rss_pages).then(a.0.cmp(&b.0)));
        sample.top_memory = all
            .iter()
            .take(self.top_n)
            .map(|(pid, s, cpu)| self.describe(*pid, s, *cpu))
            .collect();
    }

    /// The details of a top process, read only for the few that are shown.
    fn describe(&self, pid: u32, stat: &parse::PidStat, cpu_percent: f64) -> ProcessInfo {
        let base = self.roots.proc.join(pid.to_string());
        let cmdline = parse::read_cmdline(&base.join("cmdline"))
            .trim()
            .to_string();
        let uid = read_optional(&base.join("status")).and_then(|t| {
            t.lines()
                .find_map(|l| l.strip_prefix("Uid:"))
                .and_then(|v| v.split_whitespace().next()?.parse::<u32>().ok())
        });
        ProcessInfo {
            pid,
            user: uid
                .map(|u| self.users.get(&u).cloned().unwrap_or_else(|| u.to_string()))
                .unwrap_or_default(),
            comm: stat.comm.clone(),
            cmdline,
            cpu_percent,
            rss_bytes: stat.rss_pages * self.page_size,
        }
    }
}
