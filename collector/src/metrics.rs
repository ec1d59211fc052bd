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

/// How many metric data points one sample carries, counted as the OpenTelemetry
/// collector counts them (one per number per entity: each core's CPU time per state,
/// each disk's, interface's and filesystem's values, each pressure line's, every
/// counter present), the unit its sizing guide plans capacity in. The collector stores
/// every one of them (the interval's body, served by history and latest) though it
/// keeps only [`SCALARS`] as series of their own. Timestamps, names and the top
/// process lists (strings with two numbers each) are not counted.
pub fn data_points(m: &HostMetrics) -> u64 {
    const CPU_STATES: u64 = 8;
    let some = |present: bool| u64::from(present);
    let pressure = |p: &Option<vigil_proto::v1::PressureResource>| {
        p.as_ref()
            .map_or(0, |p| 4 * (some(p.some.is_some()) + some(p.full.is_some())))
    };
    let tcp = m.tcp.as_ref().map_or(0, |t| {
        6 + some(t.listen_overflows.is_some()) + some(t.listen_drops.is_some())
    });
    // uptime, cpu count and usage; load (3); memory (5); swap (2).
    3 + 3
        + 5
        + 2
        + CPU_STATES * (some(m.cpu_total.is_some()) + m.cpu_per_core.len() as u64)
        + pressure(&m.pressure_cpu)
        + pressure(&m.pressure_memory)
        + pressure(&m.pressure_io)
        + 5 * m.filesystems.len() as u64
        + 6 * m.disks.len() as u64
        + 8 * m.network.len() as u64
        + tcp
        + 8 * some(m.processes.is_some())
        + [
            m.open_fds,
            m.major_faults_total,
            m.oom_kills_total,
            m.max_fds,
            m.conntrack_entries,
            m.conntrack_max,
        ]
        .iter()
        .filter(|v| v.is_some())
        .count() as u64
        + some(m.clock_offset_secs.is_some())
        + some(m.clock_max_error_secs.is_some())
        + some(m.clock_synchronised.is_some())
}

#[cfg(test)]
mod tests {
    use super::*;
    use vigil_proto::v1::{
        CpuTimes, DiskIo, Filesystem, NetIo, PressureLine, PressureResource, ProcessCounts,
        TcpCounters,
    };

    /// Counts the sample's numbers from its Debug text, a count that knows no field:
    /// every `name: NUMBER` or `name: Some(NUMBER or BOOL)` but the two that place the
    /// sample in time. A numeric field added to the protocol fails this test until
    /// `data_points` counts it.
    fn numbers_in_debug(m: &HostMetrics) -> u64 {
        let text = format!("{m:?}");
        text.split(", ")
            .flat_map(|part| part.split("{ "))
            .filter_map(|part| part.split_once(": "))
            .filter(|(name, _)| !["time_unix_ms", "interval_secs"].contains(&name.trim()))
            .filter(|(_, value)| {
                let value = value.strip_prefix("Some(").unwrap_or(value);
                value.starts_with(|c: char| c.is_ascii_digit() || c == '-')
                    || value.starts_with("true")
                    || value.starts_with("false")
            })
            .count() as u64
    }

    #[test]
    fn data_points_counts_every_number_a_sample_carries() {
        let line = Some(PressureLine::default());
        let mut m = HostMetrics {
            cpu_total: Some(CpuTimes::default()),
            cpu_per_core: vec![CpuTimes::default(); 2],
            pressure_cpu: Some(PressureResource {
                some: line,
                full: None,
            }),
            pressure_memory: Some(PressureResource {
                some: line,
                full: line,
            }),
            pressure_io: None,
            filesystems: vec![Filesystem::default()],
            disks: vec![DiskIo::default(); 2],
            network: vec![NetIo::default(); 3],
            tcp: Some(TcpCounters {
                listen_drops: Some(1),
                ..Default::default()
            }),
            open_fds: Some(5),
            processes: Some(ProcessCounts::default()),
            major_faults_total: Some(1),
            oom_kills_total: None,
            max_fds: Some(9),
            conntrack_entries: Some(1),
            conntrack_max: Some(2),
            clock_offset_secs: Some(0.5),
            clock_max_error_secs: None,
            clock_synchronised: Some(true),
            ..Default::default()
        };
        assert_eq!(data_points(&m), numbers_in_debug(&m));
        // Fewer entities, fewer points; the history series are a subset.
        m.network.clear();
        m.cpu_per_core.truncate(1);
        assert_eq!(data_points(&m), numbers_in_debug(&m));
        assert!(data_points(&m) > SCALARS.len() as u64);
        assert_eq!(
            data_points(&HostMetrics::default()),
            numbers_in_debug(&HostMetrics::default())
        );
    }
}
