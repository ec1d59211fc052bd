//! Parsers for procfs text, pure functions over `&str` so they can be tested on
//! fixtures and read from any root (`Roots`). The parsing is procfs-core's (the
//! reading half of the `procfs` crate, without its fixed `/proc` paths) wherever it
//! covers what Vigil reads: /proc/stat, meminfo, loadavg, diskstats, net/dev, mounts and
//! PID/stat. Hand-written, and why: pressure (procfs-core requires a `full` line for cpu,
//! which kernels before 5.13 lack), the `Tcp:`/`TcpExt:` pairs of net/snmp and
//! net/netstat (procfs-core has no netstat), mounts (procfs-core 0.18 leaves `\040`,
//! a space, escaped in mount points: `mounts_unescape_spaces` fails on it), passwd (not procfs;
//! the OS name comes from sysinfo).
//! A file procfs-core cannot parse is a gap (nothing from it), never a panic.
use std::collections::HashMap;

use procfs_core::{FromBufRead as _, FromBufReadSI as _, FromRead as _};

use super::{PressureLine, PressureResource};

/// Jiffies per CPU state from a `cpu` line of /proc/stat: user, nice, system, idle,
/// iowait, irq, softirq, steal (guest time is already inside user and nice).
pub type CpuCounters = [u64; 8];

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ProcStat {
    pub total: CpuCounters,
    pub per_cpu: Vec<CpuCounters>,
    pub boot_time_unix: u64,
}

/// /proc/stat; `None` when procfs-core cannot parse it (every kernel prints `cpu`,
/// `ctxt`, `btime` and `processes`).
pub fn proc_stat(text: &str) -> Option<ProcStat> {
    // The parse needs no clock rate or page size: CPU times stay in ticks.
    let system = procfs_core::ExplicitSystemInfo {
        boot_time_secs: 0,
        ticks_per_second: 100,
        page_size: 4096,
        is_little_endian: cfg!(target_endian = "little"),
    };
    let k = procfs_core::KernelStats::from_buf_read(text.as_bytes(), &system).ok()?;
    let counters = |c: &procfs_core::CpuTime| -> CpuCounters {
        [
            c.user,
            c.nice,
            c.system,
            c.idle,
            c.iowait.unwrap_or(0),
            c.irq.unwrap_or(0),
            c.softirq.unwrap_or(0),
            c.steal.unwrap_or(0),
        ]
    };
    Some(ProcStat {
        total: counters(&k.total),
        per_cpu: k.cpu_time.iter().map(counters).collect(),
        boot_time_unix: k.btime,
    })
}

/// /proc/meminfo (values in bytes); `None` when procfs-core cannot parse it.
///
/// procfs-core 0.18 panics on a field name that does not end in an ASCII `:` (it cuts
/// the last byte) and overflows on a value too large for its unit (the `procfs` fuzz
/// target found both): lines like that are left out first, as lines of a newer kernel
/// that no parser knows would be.
pub fn meminfo(text: &str) -> Option<procfs_core::Meminfo> {
    let understood = |line: &&str| {
        let mut w = line.split_whitespace();
        let (Some(field), Some(value)) = (w.next(), w.next()) else {
            return false;
        };
        let Ok(value) = value.parse::<u64>() else {
            return false;
        };
        let scale = match w.next() {
            None | Some("B") => 1,
            Some("KiB" | "kiB" | "kB" | "KB") => 1 << 10,
            Some("MiB" | "miB" | "MB" | "mB") => 1 << 20,
            Some("GiB" | "giB" | "GB" | "gB") => 1 << 30,
            Some(_) => return false,
        };
        field.len() > 1 && field.ends_with(':') && value.checked_mul(scale).is_some()
    };
    let kept: Vec<&str> = text.lines().filter(understood).collect();
    procfs_core::Meminfo::from_buf_read(kept.join("\n").as_bytes()).ok()
}

/// /proc/uptime: seconds since boot.
pub fn uptime(text: &str) -> Option<f64> {
    procfs_core::Uptime::from_read(text.as_bytes())
        .ok()
        .map(|u| u.uptime)
}

/// /proc/PID/status: the real and effective uid.
pub fn pid_status_uids(text: &str) -> Option<(u32, u32)> {
    procfs_core::process::Status::from_read(text.as_bytes())
        .ok()
        .map(|s| (s.ruid, s.euid))
}

pub fn loadavg(text: &str) -> Option<(f64, f64, f64)> {
    let l = procfs_core::LoadAverage::from_read(text.as_bytes()).ok()?;
    Some((l.one.into(), l.five.into(), l.fifteen.into()))
}

/// One /proc/pressure/{cpu,memory,io} file.
pub fn pressure(text: &str) -> PressureResource {
    let mut out = PressureResource::default();
    for line in text.lines() {
        let mut words = line.split_whitespace();
        let kind = words.next();
        let mut p = PressureLine::default();
        for w in words {
            let Some((k, v)) = w.split_once('=') else {
                continue;
            };
            match k {
                "avg10" => p.avg10 = v.parse().unwrap_or(0.0),
                "avg60" => p.avg60 = v.parse().unwrap_or(0.0),
                "avg300" => p.avg300 = v.parse().unwrap_or(0.0),
                "total" => p.total_us = v.parse().unwrap_or(0),
                _ => {}
            }
        }
        match kind {
            Some("some") => out.some = Some(p),
            Some("full") => out.full = Some(p),
            _ => {}
        }
    }
    out
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct NetCounters {
    pub rx_bytes: u64,
    pub rx_packets: u64,
    pub rx_errors: u64,
    pub rx_drops: u64,
    pub tx_bytes: u64,
    pub tx_packets: u64,
    pub tx_errors: u64,
    pub tx_drops: u64,
}

/// /proc/net/dev: interface name → counters, sorted by name; empty when procfs-core
/// cannot parse it.
pub fn net_dev(text: &str) -> Vec<(String, NetCounters)> {
    let Ok(devices) = procfs_core::net::InterfaceDeviceStatus::from_buf_read(text.as_bytes())
    else {
        return Vec::new();
    };
    let mut out: Vec<(String, NetCounters)> = devices
        .0
        .into_values()
        .map(|d| {
            (
                d.name,
                NetCounters {
                    rx_bytes: d.recv_bytes,
                    rx_packets: d.recv_packets,
                    rx_errors: d.recv_errs,
                    rx_drops: d.recv_drop,
                    tx_bytes: d.sent_bytes,
                    tx_packets: d.sent_packets,
                    tx_errors: d.sent_errs,
                    tx_drops: d.sent_drop,
                },
            )
        })
        .collect();
    out.sort_by(|a, b| a.0.cmp(&b.0));
    out
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DiskCounters {
    pub reads: u64,
    pub read_sectors: u64,
    pub writes: u64,
    pub write_sectors: u64,
    pub io_ms: u64,
    /// Weighted time doing I/O (ms): its rate is the average queue depth.
    pub weighted_io_ms: u64,
}

/// /proc/diskstats: device name → counters (sectors are 512 bytes, whatever the
/// device). A line procfs-core cannot parse is skipped.
pub fn diskstats(text: &str) -> Vec<(String, DiskCounters)> {
    text.lines()
        .filter_map(|line| procfs_core::DiskStat::from_line(line).ok())
        .map(|d| {
            (
                d.name,
                DiskCounters {
                    reads: d.reads,
                    read_sectors: d.sectors_read,
                    writes: d.writes,
                    write_sectors: d.sectors_written,
                    io_ms: d.time_in_progress,
                    weighted_io_ms: d.weighted_time_in_progress,
                },
            )
        })
        .collect()
}

/// Header/value line pairs such as /proc/net/snmp's `Tcp:` or /proc/net/netstat's
/// `TcpExt:`, as name → value.
/// /proc/vmstat: "name value" per line.
pub fn vmstat(text: &str) -> HashMap<String, u64> {
    text.lines()
        .filter_map(|l| {
            let (k, v) = l.split_once(' ')?;
            Some((k.to_string(), v.trim().parse().ok()?))
        })
        .collect()
}

pub fn snmp_section(text: &str, section: &str) -> HashMap<String, u64> {
    let prefix = format!("{section}:");
    let mut lines = text.lines().filter(|l| l.starts_with(&prefix));
    let (Some(names), Some(values)) = (lines.next(), lines.next()) else {
        return HashMap::new();
    };
    names
        .split_whitespace()
        .skip(1)
        .zip(values.split_whitespace().skip(1))
        .filter_map(|(n, v)| Some((n.to_string(), v.parse::<i64>().ok()?.max(0) as u64)))
        .collect()
}

/// Undoes the octal escapes of /proc/mounts (`\040` for a space, ...).
fn unescape_mount(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        // An escape is a byte's value: \000 to \377 (the `procfs` fuzz target found
        // that \400 and up overflowed a byte); anything else is kept as it is.
        let octal = (bytes[i] == b'\\' && i + 3 < bytes.len())
            .then(|| &bytes[i + 1..i + 4])
            .filter(|d| d.iter().all(|b| (b'0'..=b'7').contains(b)))
            .map(|d| d.iter().fold(0u32, |v, b| v * 8 + u32::from(b - b'0')))
            .and_then(|v| u8::try_from(v).ok());
        if let Some(v) = octal {
            out.push(v);
            i += 4;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// /proc/self/mounts as (device, mount point, fs type).
pub fn mounts(text: &str) -> Vec<(String, String, String)> {
    text.lines()
        .filter_map(|line| {
            let mut w = line.split_whitespace();
            let (dev, mnt, fstype) = (w.next()?, w.next()?, w.next()?);
            Some((unescape_mount(dev), unescape_mount(mnt), fstype.to_string()))
        })
        .collect()
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PidStat {
    pub comm: String,
    pub state: char,
    pub ppid: u32,
    /// utime + stime, in clock ticks.
    pub cpu_ticks: u64,
    /// Clock ticks after boot.
    pub start_ticks: u64,
    pub rss_pages: u64,
}

/// /proc/PID/stat (procfs-core counts the fields from the last `)`: the command name
/// may itself hold spaces and parentheses).
pub fn pid_stat(text: &str) -> Option<PidStat> {
    // procfs-core 0.18 slices around the parentheses unchecked (the pid and a space
    // before the first, a space and a field after the last) and panics when they are not
    // there or fall inside a multi-byte character (found by the `procfs` fuzz target):
    // refuse such text before it gets there.
    let t = text.trim();
    let (open, close) = (t.find('(')?, t.rfind(')')?);
    let sliceable = open >= 2
        && close > open
        && close + 2 <= t.len()
        && t.is_char_boundary(open - 1)
        && t.is_char_boundary(close + 2);
    if !sliceable {
        return None;
    }
    let s = procfs_core::process::Stat::from_read(t.as_bytes()).ok()?;
    Some(PidStat {
        comm: s.comm,
        state: s.state,
        ppid: u32::try_from(s.ppid).unwrap_or(0),
        cpu_ticks: s.utime.saturating_add(s.stime),
        start_ticks: s.starttime,
        rss_pages: s.rss,
    })
}

/// /etc/passwd as uid → name.
/// "NAME VERSION_ID" from an os-release file (as sysinfo names this host's OS), quotes
/// removed; None without a NAME.
pub fn os_release_name(text: &str) -> Option<String> {
    let field = |key: &str| {
        text.lines().find_map(|l| {
            let v = l.strip_prefix(key)?.strip_prefix('=')?.trim();
            let v = v.trim_matches('"').trim_matches('\'');
            (!v.is_empty()).then(|| v.to_string())
        })
    };
    let name = field("NAME")?;
    Some(match field("VERSION_ID") {
        Some(v) => format!("{name} {v}"),
        None => name,
    })
}

pub fn passwd(text: &str) -> HashMap<u32, String> {
    text.lines()
        .filter_map(|l| {
            let mut f = l.split(':');
            let name = f.next()?;
            let uid = f.nth(1)?.parse().ok()?;
            Some((uid, name.to_string()))
        })
        .collect()
}

/// The most of a /proc/PID/cmdline that is read: a command line can be megabytes
/// (ARG_MAX), and the process table holds one per process. What is cut is marked.
pub const MAX_CMDLINE: usize = 4096;

/// A process's arguments joined by spaces (invalid UTF-8 replaced), at most
/// [`MAX_CMDLINE`] bytes read, ending in "…" when cut; empty if the process is gone.
pub fn read_cmdline(path: &std::path::Path) -> String {
    use std::io::Read as _;
    let mut buf = Vec::with_capacity(256);
    let Ok(f) = std::fs::File::open(path) else {
        return String::new();
    };
    if f.take(MAX_CMDLINE as u64 + 1)
        .read_to_end(&mut buf)
        .is_err()
    {
        return String::new();
    }
    let cut = buf.len() > MAX_CMDLINE;
    buf.truncate(MAX_CMDLINE);
    let b = buf.strip_suffix(&[0]).unwrap_or(&buf);
    let mut s = String::from_utf8_lossy(b).replace('\0', " ");
    // Replacement characters are wider than the bytes they replace: hold the text to
    // the bound too.
    let mut cut = cut;
    if s.len() > MAX_CMDLINE {
        let mut end = MAX_CMDLINE;
        while !s.is_char_boundary(end) {
            end -= 1;
        }
        s.truncate(end);
        cut = true;
    }
    if cut {
        s.push('…');
    }
    s
}

/// A /proc or /sys file as text, invalid UTF-8 replaced: a process name is any bytes
/// the program's file name had, and a process must not drop out of view over one.
pub fn read_lossy(path: &std::path::Path) -> Option<String> {
    std::fs::read(path).ok().map(|b| {
        String::from_utf8(b).unwrap_or_else(|e| String::from_utf8_lossy(e.as_bytes()).into_owned())
    })
}

#[cfg(test)]
mod tests {
    #[test]
    fn os_release_names_the_os_as_sysinfo_does() {
        let debian = "PRETTY_NAME=\"Debian GNU/Linux 12 (bookworm)\"\nNAME=\"Debian GNU/Linux\"\nVERSION_ID=\"12\"\n";
        assert_eq!(
            super::os_release_name(debian).as_deref(),
            Some("Debian GNU/Linux 12")
        );
        assert_eq!(
            super::os_release_name("NAME=Arch\n").as_deref(),
            Some("Arch")
        );
        assert_eq!(super::os_release_name("VERSION_ID=1\n"), None);
    }

    use super::*;

    #[test]
    fn mount_escapes_past_a_byte_are_kept_as_text() {
        // The `procfs` fuzz target's crash: "\413" overflowed a byte.
        let crash = b"67\0\0\0\\413 88y0 37720 0 0 1 1 8/ 0 0\n ";
        let _ = mounts(&String::from_utf8_lossy(crash));
        assert_eq!(unescape_mount("a\\413b"), "a\\413b");
        assert_eq!(unescape_mount("a\\040b\\377"), "a b\u{fffd}");
        assert_eq!(unescape_mount("\\134x"), "\\x");
    }

    #[test]
    fn proc_stat_reads_total_cores_and_boot_time() {
        let s = proc_stat(
            "cpu  10 1 20 300 4 5 6 7 8 9\ncpu0 5 0 10 150 2 2 3 3 0 0\ncpu1 5 1 10 150 2 3 3 4 0 0\nintr 1 2\nctxt 99\nbtime 1700000000\nprocesses 7\n",
        )
        .unwrap();
        assert_eq!(s.total, [10, 1, 20, 300, 4, 5, 6, 7]);
        assert_eq!(s.per_cpu.len(), 2);
        assert_eq!(s.per_cpu[1][7], 4);
        assert_eq!(s.boot_time_unix, 1_700_000_000);
        assert_eq!(proc_stat("garbage"), None);
    }

    #[test]
    fn meminfo_is_in_bytes() {
        let m = meminfo(
            "MemTotal:       24576000 kB\nMemFree: 10 kB\nMemAvailable:   1000 kB\nBuffers: 1 kB\nCached: 2 kB\nSwapCached: 0 kB\nActive: 3 kB\nInactive: 4 kB\nSwapTotal: 0 kB\nSwapFree: 0 kB\nDirty: 0 kB\nWriteback: 0 kB\nMapped: 0 kB\nSlab: 0 kB\nCommitted_AS: 0 kB\nVmallocTotal: 0 kB\nVmallocUsed: 0 kB\nVmallocChunk: 0 kB\nHugePages_Total:       0\n",
        )
        .unwrap();
        assert_eq!(m.mem_total, 24_576_000 * 1024);
        assert_eq!(m.mem_available, Some(1_024_000));
        assert_eq!(m.hugepages_total, Some(0));
        assert!(meminfo("MemTotal: x kB\n").is_none());
        // What procfs-core would panic on is left out, not fatal (the fuzzer's finds).
        let odd = "MemTotal: 1 kB\nMemFree:\u{e4} 2 kB\nHuge: 18446744073709551615 kB\n";
        assert!(
            meminfo(odd).is_none(),
            "the required fields are missing, no panic"
        );
    }

    #[test]
    fn pressure_has_some_and_full() {
        let p = pressure("some avg10=0.17 avg60=2.73 avg300=3.06 total=50497224\nfull avg10=0.00 avg60=0.00 avg300=0.00 total=0\n");
        assert_eq!(p.some.as_ref().map(|l| l.total_us), Some(50_497_224));
        assert_eq!(p.some.as_ref().map(|l| l.avg60), Some(2.73));
        assert!(p.full.is_some());
        assert_eq!(
            pressure("some avg10=1.00 avg60=0 avg300=0 total=5\n").full,
            None
        );
    }

    #[test]
    fn net_dev_skips_headers() {
        let text = "Inter-|   Receive |  Transmit\n face |bytes packets errs drop fifo frame compressed multicast|bytes packets errs drop fifo colls carrier compressed\n    lo:    3193      29    1    2    0     0          0         0     4000      30    3    4    0     0       0          0\n";
        let v = net_dev(text);
        assert_eq!(v.len(), 1);
        assert_eq!(v[0].0, "lo");
        assert_eq!(
            v[0].1,
            NetCounters {
                rx_bytes: 3193,
                rx_packets: 29,
                rx_errors: 1,
                rx_drops: 2,
                tx_bytes: 4000,
                tx_packets: 30,
                tx_errors: 3,
                tx_drops: 4
            }
        );
    }

    #[test]
    fn diskstats_fields() {
        let v = diskstats(" 254       0 vda 100 5 2000 50 300 7 6000 80 0 900 130 0 0 0 0 0 0\n");
        assert_eq!(v[0].0, "vda");
        assert_eq!(
            v[0].1,
            DiskCounters {
                reads: 100,
                read_sectors: 2000,
                writes: 300,
                write_sectors: 6000,
                io_ms: 900,
                weighted_io_ms: 130
            }
        );
    }

    #[test]
    fn snmp_pairs_names_with_values() {
        let text = "Ip: Forwarding DefaultTTL\nIp: 1 64\nTcp: RtoAlgorithm ActiveOpens RetransSegs MaxConn\nTcp: 1 42 7 -1\n";
        let t = snmp_section(text, "Tcp");
        assert_eq!(t["ActiveOpens"], 42);
        assert_eq!(t["RetransSegs"], 7);
        assert_eq!(t["MaxConn"], 0);
        assert!(snmp_section(text, "Udp").is_empty());
    }

    #[test]
    fn mounts_unescape_spaces() {
        let m = mounts("/dev/vda / ext4 rw 0 0\n/dev/vdb /mnt/my\\040disk xfs rw 0 0\n");
        assert_eq!(
            m[1],
            (
                "/dev/vdb".to_string(),
                "/mnt/my disk".to_string(),
                "xfs".to_string()
            )
        );
    }

    #[test]
    fn pid_stat_survives_parentheses_in_comm() {
        let s = pid_stat("42 (we(ir d)) S 1 42 42 0 -1 4194560 100 0 0 0 7 3 0 0 20 0 1 0 555 1000 25 18446744073709551615 1 1 0 0 0 0 0 0 0 0 0 0 17 1 0 0 0 0 0 0 0 0 0 0 0 0 0\n").unwrap();
        assert_eq!(s.comm, "we(ir d)");
        assert_eq!(s.state, 'S');
        assert_eq!(s.ppid, 1);
        assert_eq!(s.cpu_ticks, 10);
        assert_eq!(s.start_ticks, 555);
        assert_eq!(s.rss_pages, 25);
        assert_eq!(pid_stat("garbage"), None);
    }

    /// What procfs-core would panic on is refused (the fuzzer's first find, and the
    /// other unchecked slices next to it).
    #[test]
    fn pid_stat_refuses_text_procfs_core_would_panic_on() {
        let crash = b"(peo1c rss_api\x08\x00\x00\x00) S 0 100872 3\xb33 551 1358998 2>2310 10 -1";
        assert_eq!(pid_stat(&String::from_utf8_lossy(crash)), None);
        for text in [
            "(x) S 1",
            "1(x) S 1",
            "1 \u{e9}(x) S 1",
            "1 (x)",
            "1 (x)\u{e9}",
            "1 )x( S",
        ] {
            assert_eq!(pid_stat(text), None, "{text:?}");
        }
    }

    #[test]
    fn passwd_names_uids() {
        let p =
            passwd("root:x:0:0:root:/root:/bin/bash\nnobody:x:65534:65534::/:/usr/sbin/nologin\n");
        assert_eq!(p[&0], "root");
        assert_eq!(p[&65534], "nobody");
    }
}
