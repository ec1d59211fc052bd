//! Host metrics from procfs and sysfs: one `HostSample` per interval. Counters are
//! turned into rates against the previous sample; a counter or file this kernel doesn't
//! have is left out (an `Option` or an empty list), never an error.
pub mod node;
pub mod parse;
mod sampler;

use std::path::PathBuf;

use serde::Serialize;

pub use self::sampler::Sampler;

/// Where procfs and sysfs are mounted (changed by tests, and for containers that
/// bind-mount the host's /proc elsewhere).
#[derive(Clone, Debug)]
pub struct Roots {
    pub proc: PathBuf,
    pub sys: PathBuf,
    pub etc: PathBuf,
    /// The host's root file system when the agent runs in a container with it
    /// mounted (`--host-root /host`): mount points are measured under it, and the
    /// hostname and OS are the host's files, not the container's.
    pub host: Option<PathBuf>,
}

impl Roots {
    /// The host's /proc, /sys and /etc under `root` ("/" is the agent's own).
    pub fn under(root: &std::path::Path) -> Self {
        if root == std::path::Path::new("/") {
            return Self::default();
        }
        Self {
            proc: root.join("proc"),
            sys: root.join("sys"),
            etc: root.join("etc"),
            host: Some(root.to_path_buf()),
        }
    }

    /// A path of the host's file system (a mount point) as the agent reaches it.
    pub fn host_path(&self, path: &str) -> PathBuf {
        match &self.host {
            Some(root) => root.join(path.trim_start_matches('/')),
            None => PathBuf::from(path),
        }
    }
}

impl Default for Roots {
    fn default() -> Self {
        Self {
            proc: "/proc".into(),
            sys: "/sys".into(),
            etc: "/etc".into(),
            host: None,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum MetricsError {
    #[error("reading {path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}: {reason}")]
    Parse { path: PathBuf, reason: String },
}

#[derive(Clone, Debug, Default, Serialize, PartialEq)]
pub struct HostIdentity {
    pub hostname: String,
    pub kernel: String,
    pub os: String,
    pub boot_time_unix: u64,
    pub uptime_secs: f64,
}

/// Share of time in each state, in percent of one CPU (0..=100), over the interval.
#[derive(Clone, Debug, Default, Serialize, PartialEq)]
pub struct CpuTimes {
    pub user: f64,
    pub nice: f64,
    pub system: f64,
    pub idle: f64,
    pub iowait: f64,
    pub irq: f64,
    pub softirq: f64,
    pub steal: f64,
}

#[derive(Clone, Debug, Default, Serialize, PartialEq)]
pub struct Cpu {
    /// Online CPUs.
    pub count: usize,
    /// 100 - idle - iowait, averaged over all CPUs.
    pub usage_percent: f64,
    pub total: CpuTimes,
    pub per_core: Vec<CpuTimes>,
}

#[derive(Clone, Debug, Default, Serialize, PartialEq)]
pub struct Load {
    pub one: f64,
    pub five: f64,
    pub fifteen: f64,
}

#[derive(Clone, Debug, Default, Serialize, PartialEq)]
pub struct Memory {
    pub total_bytes: u64,
    pub available_bytes: u64,
    /// total - available.
    pub used_bytes: u64,
    pub cached_bytes: u64,
    pub buffers_bytes: u64,
    pub swap_total_bytes: u64,
    pub swap_free_bytes: u64,
}

#[derive(Clone, Debug, Default, Serialize, PartialEq)]
pub struct PressureLine {
    pub avg10: f64,
    pub avg60: f64,
    pub avg300: f64,
    pub total_us: u64,
}

#[derive(Clone, Debug, Default, Serialize, PartialEq)]
pub struct PressureResource {
    pub some: Option<PressureLine>,
    pub full: Option<PressureLine>,
}

/// Pressure stall information; a resource is `None` where the kernel has no PSI.
#[derive(Clone, Debug, Default, Serialize, PartialEq)]
pub struct Pressure {
    pub cpu: Option<PressureResource>,
    pub memory: Option<PressureResource>,
    pub io: Option<PressureResource>,
}

#[derive(Clone, Debug, Default, Serialize, PartialEq)]
pub struct Filesystem {
    pub mount: String,
    pub device: String,
    pub fstype: String,
    pub size_bytes: u64,
    pub used_bytes: u64,
    pub available_bytes: u64,
    pub inodes_total: u64,
    pub inodes_free: u64,
}

#[derive(Clone, Debug, Default, Serialize, PartialEq)]
pub struct DiskIo {
    pub device: String,
    pub reads_per_sec: f64,
    pub writes_per_sec: f64,
    pub read_bytes_per_sec: f64,
    pub write_bytes_per_sec: f64,
    /// Milliseconds spent doing I/O per second (100 % busy = 1000).
    pub io_time_ms_per_sec: f64,
    /// Average number of requests in flight (weighted I/O time per second).
    pub io_queue: f64,
}

#[derive(Clone, Debug, Default, Serialize, PartialEq)]
pub struct NetIo {
    pub interface: String,
    pub rx_bytes_per_sec: f64,
    pub tx_bytes_per_sec: f64,
    pub rx_packets_per_sec: f64,
    pub tx_packets_per_sec: f64,
    pub rx_errors_per_sec: f64,
    pub tx_errors_per_sec: f64,
    pub rx_drops_per_sec: f64,
    pub tx_drops_per_sec: f64,
}

/// Cumulative TCP counters from /proc/net/snmp and /proc/net/netstat (the host's
/// network namespace as seen by the agent).
#[derive(Clone, Debug, Default, Serialize, PartialEq)]
pub struct TcpCounters {
    pub active_opens: u64,
    pub passive_opens: u64,
    pub retrans_segs: u64,
    pub in_errs: u64,
    pub listen_overflows: Option<u64>,
    pub listen_drops: Option<u64>,
    pub curr_estab: u64,
    pub out_segs: u64,
}

#[derive(Clone, Debug, Default, Serialize, PartialEq)]
pub struct ProcessCounts {
    pub total: u64,
    pub running: u64,
    pub sleeping: u64,
    pub disk_sleep: u64,
    pub stopped: u64,
    pub zombie: u64,
    pub idle: u64,
    pub other: u64,
}

#[derive(Clone, Debug, Default, Serialize, PartialEq)]
pub struct ProcessInfo {
    pub pid: u32,
    pub user: String,
    pub comm: String,
    pub cmdline: String,
    /// Percent of one CPU over the interval.
    pub cpu_percent: f64,
    pub rss_bytes: u64,
}

/// The kernel clock's discipline, as node_exporter's timex collector reads it.
#[derive(Clone, Copy, Debug, Default, Serialize, PartialEq)]
pub struct Clock {
    pub offset_secs: f64,
    pub max_error_secs: f64,
    /// STA_UNSYNC clear: something (NTP, chrony, PTP) disciplines the clock.
    pub synchronised: bool,
}

/// Everything the host looked like over one interval.
#[derive(Clone, Debug, Default, Serialize, PartialEq)]
pub struct HostSample {
    pub time_unix_ms: u64,
    /// Seconds the rates are computed over.
    pub interval_secs: f64,
    #[serde(flatten)]
    pub host: HostIdentity,
    pub cpu: Cpu,
    pub load: Load,
    pub memory: Memory,
    pub pressure: Pressure,
    pub filesystems: Vec<Filesystem>,
    pub disks: Vec<DiskIo>,
    pub network: Vec<NetIo>,
    pub tcp: TcpCounters,
    /// Allocated file handles, system-wide (/proc/sys/fs/file-nr), and their limit.
    pub open_fds: Option<u64>,
    pub max_fds: Option<u64>,
    /// /proc/vmstat counters since boot.
    pub major_faults_total: Option<u64>,
    pub oom_kills_total: Option<u64>,
    /// nf_conntrack entries and limit (absent when the module is not in use).
    pub conntrack_entries: Option<u64>,
    pub conntrack_max: Option<u64>,
    /// The kernel clock's discipline (adjtimex(2) read only).
    pub clock: Option<Clock>,
    pub processes: ProcessCounts,
    pub top_cpu: Vec<ProcessInfo>,
    pub top_memory: Vec<ProcessInfo>,
}
