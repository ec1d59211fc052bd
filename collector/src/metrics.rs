//! The scalar series kept per host for `vigil history` (the latest full sample is
//! kept apart, whole).
use vigil_proto::v1::HostMetrics;

/// The metric names `MetricHistory` accepts, in the user's words.
pub const SCALARS: &[&str] = &[
    "cpu.usage_percent",
    "load.one",
    "load.five",
    "load.fifteen",
    "memory.total_bytes",
    "memory.available_bytes",
    "memory.used_bytes",
    "swap.free_bytes",
    "tcp.retrans_segs",
    "tcp.curr_estab",
    "processes.total",
    "open_fds",
];

/// The scalar series of one sample, in the order of [`SCALARS`].
pub fn scalars(m: &HostMetrics) -> [(&'static str, f64); 12] {
    let tcp = m.tcp.unwrap_or_default();
    let procs = m.processes.unwrap_or_default();
    [
        (SCALARS[0], m.cpu_usage_percent),
        (SCALARS[1], m.load_one),
        (SCALARS[2], m.load_five),
        (SCALARS[3], m.load_fifteen),
        (SCALARS[4], m.memory_total_bytes as f64),
        (SCALARS[5], m.memory_available_bytes as f64),
        (SCALARS[6], m.memory_used_bytes as f64),
        (SCALARS[7], m.swap_free_bytes as f64),
        (SCALARS[8], tcp.retrans_segs as f64),
        (SCALARS[9], tcp.curr_estab as f64),
        (SCALARS[10], procs.total as f64),
        (SCALARS[11], m.open_fds.unwrap_or(0) as f64),
    ]
}
