//! Host samples to vigil.v1 messages.
use vigil_proto::v1 as pb;

use crate::metrics::{CpuTimes, HostSample, PressureLine, PressureResource};

fn cpu(t: &CpuTimes) -> pb::CpuTimes {
    pb::CpuTimes {
        user: t.user,
        nice: t.nice,
        system: t.system,
        idle: t.idle,
        iowait: t.iowait,
        irq: t.irq,
        softirq: t.softirq,
        steal: t.steal,
    }
}

fn line(l: &PressureLine) -> pb::PressureLine {
    pb::PressureLine {
        avg10: l.avg10,
        avg60: l.avg60,
        avg300: l.avg300,
        total_us: l.total_us,
    }
}

fn pressure(r: &PressureResource) -> pb::PressureResource {
    pb::PressureResource {
        some: r.some.as_ref().map(line),
        full: r.full.as_ref().map(line),
    }
}

pub fn host_metrics(s: &HostSample) -> pb::HostMetrics {
    let process = |p: &crate::metrics::ProcessInfo| pb::ProcessInfo {
        pid: p.pid,
        user: p.user.clone(),
        comm: p.comm.clone(),
        cmdline: p.cmdline.clone(),
        cpu_percent: p.cpu_percent,
        rss_bytes: p.rss_bytes,
    };
    pb::HostMetrics {
        time_unix_ms: s.time_unix_ms as i64,
        interval_secs: s.interval_secs,
        uptime_secs: s.host.uptime_secs,
        cpu_count: s.cpu.count as u32,
        cpu_usage_percent: s.cpu.usage_percent,
        cpu_total: Some(cpu(&s.cpu.total)),
        cpu_per_core: s.cpu.per_core.iter().map(cpu).collect(),
        load_one: s.load.one,
        load_five: s.load.five,
        load_fifteen: s.load.fifteen,
        memory_total_bytes: s.memory.total_bytes,
        memory_available_bytes: s.memory.available_bytes,
        memory_used_bytes: s.memory.used_bytes,
        memory_cached_bytes: s.memory.cached_bytes,
        memory_buffers_bytes: s.memory.buffers_bytes,
        swap_total_bytes: s.memory.swap_total_bytes,
        swap_free_bytes: s.memory.swap_free_bytes,
        pressure_cpu: s.pressure.cpu.as_ref().map(pressure),
        pressure_memory: s.pressure.memory.as_ref().map(pressure),
        pressure_io: s.pressure.io.as_ref().map(pressure),
        filesystems: s
            .filesystems
            .iter()
            .map(|f| pb::Filesystem {
                mount: f.mount.clone(),
                device: f.device.clone(),
                fstype: f.fstype.clone(),
                size_bytes: f.size_bytes,
                used_bytes: f.used_bytes,
                available_bytes: f.available_bytes,
                inodes_total: f.inodes_total,
                inodes_free: f.inodes_free,
            })
            .collect(),
        disks: s
            .disks
            .iter()
            .map(|d| pb::DiskIo {
                device: d.device.clone(),
                reads_per_sec: d.reads_per_sec,
                writes_per_sec: d.writes_per_sec,
                read_bytes_per_sec: d.read_bytes_per_sec,
                write_bytes_per_sec: d.write_bytes_per_sec,
                io_time_ms_per_sec: d.io_time_ms_per_sec,
                io_queue: d.io_queue,
            })
            .collect(),
        network: s
            .network
            .iter()
            .map(|n| pb::NetIo {
                interface: n.interface.clone(),
                rx_bytes_per_sec: n.rx_bytes_per_sec,
                tx_bytes_per_sec: n.tx_bytes_per_sec,
                rx_packets_per_sec: n.rx_packets_per_sec,
                tx_packets_per_sec: n.tx_packets_per_sec,
                rx_errors_per_sec: n.rx_errors_per_sec,
                tx_errors_per_sec: n.tx_errors_per_sec,
                rx_drops_per_sec: n.rx_drops_per_sec,
                tx_drops_per_sec: n.tx_drops_per_sec,
            })
            .collect(),
        tcp: Some(pb::TcpCounters {
            active_opens: s.tcp.active_opens,
            passive_opens: s.tcp.passive_opens,
            retrans_segs: s.tcp.retrans_segs,
            in_errs: s.tcp.in_errs,
            listen_overflows: s.tcp.listen_overflows,
            listen_drops: s.tcp.listen_drops,
            curr_estab: s.tcp.curr_estab,
            out_segs: s.tcp.out_segs,
        }),
        open_fds: s.open_fds,
        max_fds: s.max_fds,
        major_faults_total: s.major_faults_total,
        oom_kills_total: s.oom_kills_total,
        conntrack_entries: s.conntrack_entries,
        conntrack_max: s.conntrack_max,
        clock_offset_secs: s.clock.map(|c| c.offset_secs),
        clock_max_error_secs: s.clock.map(|c| c.max_error_secs),
        clock_synchronised: s.clock.map(|c| c.synchronised),
        processes: Some(pb::ProcessCounts {
            total: s.processes.total,
            running: s.processes.running,
            sleeping: s.processes.sleeping,
            disk_sleep: s.processes.disk_sleep,
            stopped: s.processes.stopped,
            zombie: s.processes.zombie,
            idle: s.processes.idle,
            other: s.processes.other,
        }),
        top_cpu: s.top_cpu.iter().map(process).collect(),
        top_memory: s.top_memory.iter().map(process).collect(),
    }
}

pub fn host_identity(s: &HostSample, agent_id: &str) -> pb::HostIdentity {
    pb::HostIdentity {
        agent_id: agent_id.to_string(),
        hostname: s.host.hostname.clone(),
        kernel: s.host.kernel.clone(),
        os: s.host.os.clone(),
        boot_time_unix: s.host.boot_time_unix,
        agent_version: env!("CARGO_PKG_VERSION").to_string(),
    }
}

fn unix_ns(t: std::time::SystemTime) -> i64 {
    t.duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as i64)
}

pub fn retransmit(r: &crate::probes::events::RetransmitEvent) -> pb::TcpRetransmit {
    pb::TcpRetransmit {
        time_unix_ns: unix_ns(r.time),
        saddr: r.saddr.to_string(),
        sport: r.sport.into(),
        daddr: r.daddr.to_string(),
        dport: r.dport.into(),
        state: crate::probes::events::tcp_state_name(r.state).to_string(),
        err: r.err,
    }
}

pub fn slow_syscall(s: &crate::probes::events::SlowSyscallEvent) -> pb::SlowSyscall {
    pb::SlowSyscall {
        time_unix_ns: unix_ns(s.time),
        pid: s.pid,
        tid: s.tid,
        comm: s.comm.clone(),
        nr: s.syscall_nr,
        latency_ns: s.latency_ns,
        cgroup_id: s.cgroup_id,
    }
}

/// A syscall's histogram, trailing empty buckets left out.
pub fn syscall_latency(nr: u32, h: &crate::histogram::LatencyHistogram) -> pb::SyscallLatency {
    let used = h.buckets.iter().rposition(|&n| n > 0).map_or(0, |i| i + 1);
    pb::SyscallLatency {
        nr,
        name: crate::syscall_table::syscall_name(nr)
            .unwrap_or("")
            .to_string(),
        count: h.count,
        total_ns: h.total_ns,
        max_ns: h.max_ns,
        buckets: h.buckets[..used].to_vec(),
    }
}

/// Back from the wire: a histogram for percentiles.
pub fn histogram(s: &pb::SyscallLatency) -> crate::histogram::LatencyHistogram {
    let mut h = crate::histogram::LatencyHistogram {
        count: s.count,
        total_ns: s.total_ns,
        max_ns: s.max_ns,
        ..Default::default()
    };
    for (b, v) in h.buckets.iter_mut().zip(&s.buckets) {
        *b = *v;
    }
    h
}

fn cpu_back(t: &pb::CpuTimes) -> CpuTimes {
    CpuTimes {
        user: t.user,
        nice: t.nice,
        system: t.system,
        idle: t.idle,
        iowait: t.iowait,
        irq: t.irq,
        softirq: t.softirq,
        steal: t.steal,
    }
}

fn pressure_back(r: &pb::PressureResource) -> PressureResource {
    let line = |l: &pb::PressureLine| PressureLine {
        avg10: l.avg10,
        avg60: l.avg60,
        avg300: l.avg300,
        total_us: l.total_us,
    };
    PressureResource {
        some: r.some.as_ref().map(line),
        full: r.full.as_ref().map(line),
    }
}

/// Back from the wire: the agent's sample as `vigil stats --local` reads it, so both
/// answers have one shape.
pub fn host_sample(id: &pb::HostIdentity, m: &pb::HostMetrics) -> HostSample {
    use crate::metrics as hm;
    let process = |p: &pb::ProcessInfo| hm::ProcessInfo {
        pid: p.pid,
        user: p.user.clone(),
        comm: p.comm.clone(),
        cmdline: p.cmdline.clone(),
        cpu_percent: p.cpu_percent,
        rss_bytes: p.rss_bytes,
    };
    let tcp = m.tcp.unwrap_or_default();
    let procs = m.processes.unwrap_or_default();
    HostSample {
        time_unix_ms: m.time_unix_ms.max(0) as u64,
        interval_secs: m.interval_secs,
        host: hm::HostIdentity {
            hostname: id.hostname.clone(),
            kernel: id.kernel.clone(),
            os: id.os.clone(),
            boot_time_unix: id.boot_time_unix,
            uptime_secs: m.uptime_secs,
        },
        cpu: hm::Cpu {
            count: m.cpu_count as usize,
            usage_percent: m.cpu_usage_percent,
            total: m.cpu_total.as_ref().map(cpu_back).unwrap_or_default(),
            per_core: m.cpu_per_core.iter().map(cpu_back).collect(),
        },
        load: hm::Load {
            one: m.load_one,
            five: m.load_five,
            fifteen: m.load_fifteen,
        },
        memory: hm::Memory {
            total_bytes: m.memory_total_bytes,
            available_bytes: m.memory_available_bytes,
            used_bytes: m.memory_used_bytes,
            cached_bytes: m.memory_cached_bytes,
            buffers_bytes: m.memory_buffers_bytes,
            swap_total_bytes: m.swap_total_bytes,
            swap_free_bytes: m.swap_free_bytes,
        },
        pressure: hm::Pressure {
            cpu: m.pressure_cpu.as_ref().map(pressure_back),
            memory: m.pressure_memory.as_ref().map(pressure_back),
            io: m.pressure_io.as_ref().map(pressure_back),
        },
        filesystems: m
            .filesystems
            .iter()
            .map(|f| hm::Filesystem {
                mount: f.mount.clone(),
                device: f.device.clone(),
                fstype: f.fstype.clone(),
                size_bytes: f.size_bytes,
                used_bytes: f.used_bytes,
                available_bytes: f.available_bytes,
                inodes_total: f.inodes_total,
                inodes_free: f.inodes_free,
            })
            .collect(),
        disks: m
            .disks
            .iter()
            .map(|d| hm::DiskIo {
                device: d.device.clone(),
                reads_per_sec: d.reads_per_sec,
                writes_per_sec: d.writes_per_sec,
                read_bytes_per_sec: d.read_bytes_per_sec,
                write_bytes_per_sec: d.write_bytes_per_sec,
                io_time_ms_per_sec: d.io_time_ms_per_sec,
                io_queue: d.io_queue,
            })
            .collect(),
        network: m
            .network
            .iter()
            .map(|n| hm::NetIo {
                interface: n.interface.clone(),
                rx_bytes_per_sec: n.rx_bytes_per_sec,
                tx_bytes_per_sec: n.tx_bytes_per_sec,
                rx_packets_per_sec: n.rx_packets_per_sec,
                tx_packets_per_sec: n.tx_packets_per_sec,
                rx_errors_per_sec: n.rx_errors_per_sec,
                tx_errors_per_sec: n.tx_errors_per_sec,
                rx_drops_per_sec: n.rx_drops_per_sec,
                tx_drops_per_sec: n.tx_drops_per_sec,
            })
            .collect(),
        tcp: hm::TcpCounters {
            active_opens: tcp.active_opens,
            passive_opens: tcp.passive_opens,
            retrans_segs: tcp.retrans_segs,
            in_errs: tcp.in_errs,
            listen_overflows: tcp.listen_overflows,
            listen_drops: tcp.listen_drops,
            curr_estab: tcp.curr_estab,
            out_segs: tcp.out_segs,
        },
        open_fds: m.open_fds,
        max_fds: m.max_fds,
        major_faults_total: m.major_faults_total,
        oom_kills_total: m.oom_kills_total,
        conntrack_entries: m.conntrack_entries,
        conntrack_max: m.conntrack_max,
        clock: match (
            m.clock_offset_secs,
            m.clock_max_error_secs,
            m.clock_synchronised,
        ) {
            (Some(offset_secs), Some(max_error_secs), Some(synchronised)) => {
                Some(crate::metrics::Clock {
                    offset_secs,
                    max_error_secs,
                    synchronised,
                })
            }
            _ => None,
        },
        processes: hm::ProcessCounts {
            total: procs.total,
            running: procs.running,
            sleeping: procs.sleeping,
            disk_sleep: procs.disk_sleep,
            stopped: procs.stopped,
            zombie: procs.zombie,
            idle: procs.idle,
            other: procs.other,
        },
        top_cpu: m.top_cpu.iter().map(process).collect(),
        top_memory: m.top_memory.iter().map(process).collect(),
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_sample_survives_the_wire_unchanged() {
        let mut sampler = crate::metrics::Sampler::new(crate::metrics::Roots::default(), 3);
        sampler.sample().unwrap();
        let s = sampler.sample().unwrap();
        let back = super::host_sample(&super::host_identity(&s, "id"), &super::host_metrics(&s));
        assert_eq!(back, s);
    }
}
