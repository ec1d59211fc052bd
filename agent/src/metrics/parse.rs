//! Parsers for procfs text, pure functions over `&str` so they can be tested on
//! fixtures. Lines they don't understand are skipped, not fatal: kernels add fields.
use std::collections::HashMap;

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

pub fn proc_stat(text: &str) -> ProcStat {
    let mut out = ProcStat::default();
    for line in text.lines() {
        let mut words = line.split_whitespace();
        let Some(key) = words.next() else { continue };
        if let Some(rest) = key.strip_prefix("cpu") {
            let mut c = [0u64; 8];
            for (slot, w) in c.iter_mut().zip(words) {
                *slot = w.parse().unwrap_or(0);
            }
            if rest.is_empty() {
                out.total = c;
            } else if rest.parse::<u32>().is_ok() {
                out.per_cpu.push(c);
            }
        } else if key == "btime" {
            out.boot_time_unix = words.next().and_then(|w| w.parse().ok()).unwrap_or(0);
        }
    }
    out
}

/// /proc/meminfo as field → bytes (the kernel prints kB).
pub fn meminfo(text: &str) -> HashMap<String, u64> {
    text.lines()
        .filter_map(|line| {
            let (key, rest) = line.split_once(':')?;
            let mut words = rest.split_whitespace();
            let value: u64 = words.next()?.parse().ok()?;
            let scale = if words.next() == Some("kB") { 1024 } else { 1 };
            Some((key.trim().to_string(), value * scale))
        })
        .collect()
}

pub fn loadavg(text: &str) -> Option<(f64, f64, f64)> {
    let mut w = text.split_whitespace().map(str::parse::<f64>);
    Some((w.next()?.ok()?, w.next()?.ok()?, w.next()?.ok()?))
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

pub fn net_dev(text: &str) -> Vec<(String, NetCounters)> {
    text.lines()
        .filter_map(|line| {
            let (name, rest) = line.split_once(':')?;
            let v: Vec<u64> = rest
                .split_whitespace()
                .map(|w| w.parse().unwrap_or(0))
                .collect();
            if v.len() < 12 {
                return None;
            }
            Some((
                name.trim().to_string(),
                NetCounters {
                    rx_bytes: v[0],
                    rx_packets: v[1],
                    rx_errors: v[2],
                    rx_drops: v[3],
                    tx_bytes: v[8],
                    tx_packets: v[9],
                    tx_errors: v[10],
                    tx_drops: v[11],
                },
            ))
        })
        .collect()
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DiskCounters {
    pub reads: u64,
    pub read_sectors: u64,
    pub writes: u64,
    pub write_sectors: u64,
    pub io_ms: u64,
}

/// /proc/diskstats: device name → counters (sectors are 512 bytes, whatever the device).
pub fn diskstats(text: &str) -> Vec<(String, DiskCounters)> {
    text.lines()
        .filter_map(|line| {
            let w: Vec<&str> = line.split_whitespace().collect();
            if w.len() < 13 {
                return None;
            }
            let n = |i: usize| w[i].parse::<u64>().unwrap_or(0);
            Some((
                w[2].to_string(),
                DiskCounters {
                    reads: n(3),
                    read_sectors: n(5),
                    writes: n(7),
                    write_sectors: n(9),
                    io_ms: n(12),
                },
            ))
        })
        .collect()
}

/// Header/value line pairs such as /proc/net/snmp's `Tcp:` or /proc/net/netstat's
/// `TcpExt:`, as name → value.
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
        if bytes[i] == b'\\'
            && i + 3 < bytes.len()
            && bytes[i + 1..i + 4]
                .iter()
                .all(|b| (b'0'..=b'7').contains(b))
        {
            let v = (bytes[i + 1] - b'0') * 64 + (bytes[i + 2] - b'0') * 8 + (bytes[i + 3] - b'0');
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

/// /proc/PID/stat. The command name is in parentheses and may itself contain spaces
/// and parentheses, so the fields are counted from the last `)`.
pub fn pid_stat(text: &str) -> Option<PidStat> {
    let open = text.find('(')?;
    let close = text.rfind(')')?;
    let comm = text.get(open + 1..close)?.to_string();
    let rest: Vec<&str> = text.get(close + 1..)?.split_whitespace().collect();
    // rest[0] is field 3 (state); field N is rest[N - 3].
    let f = |n: usize| {
        rest.get(n - 3)
            .and_then(|w| w.parse::<u64>().ok())
            .unwrap_or(0)
    };
    Some(PidStat {
        comm,
        state: rest.first()?.chars().next()?,
        ppid: f(4) as u32,
        cpu_ticks: f(14) + f(15),
        start_ticks: f(22),
        rss_pages: f(24),
    })
}

/// `PRETTY_NAME` from os-release.
pub fn os_release(text: &str) -> Option<String> {
    text.lines()
        .find_map(|l| l.strip_prefix("PRETTY_NAME="))
        .map(|v| v.trim_matches('"').to_string())
}

/// /etc/passwd as uid → name.
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn proc_stat_reads_total_cores_and_boot_time() {
        let s = proc_stat(
            "cpu  10 1 20 300 4 5 6 7 8 9\ncpu0 5 0 10 150 2 2 3 3 0 0\ncpu1 5 1 10 150 2 3 3 4 0 0\nintr 1 2\nbtime 1700000000\n",
        );
        assert_eq!(s.total, [10, 1, 20, 300, 4, 5, 6, 7]);
        assert_eq!(s.per_cpu.len(), 2);
        assert_eq!(s.per_cpu[1][7], 4);
        assert_eq!(s.boot_time_unix, 1_700_000_000);
    }

    #[test]
    fn meminfo_is_in_bytes() {
        let m = meminfo(
            "MemTotal:       24576000 kB\nMemAvailable:   1000 kB\nHugePages_Total:       0\n",
        );
        assert_eq!(m["MemTotal"], 24_576_000 * 1024);
        assert_eq!(m["MemAvailable"], 1_024_000);
        assert_eq!(m["HugePages_Total"], 0);
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
                io_ms: 900
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
        let s = pid_stat("42 (we(ir d)) S 1 42 42 0 -1 4194560 100 0 0 0 7 3 0 0 20 0 1 0 555 1000 25 18446744073709551615").unwrap();
        assert_eq!(s.comm, "we(ir d)");
        assert_eq!(s.state, 'S');
        assert_eq!(s.ppid, 1);
        assert_eq!(s.cpu_ticks, 10);
        assert_eq!(s.start_ticks, 555);
        assert_eq!(s.rss_pages, 25);
        assert_eq!(pid_stat("garbage"), None);
    }

    #[test]
    fn os_release_and_passwd() {
        assert_eq!(
            os_release("NAME=x\nPRETTY_NAME=\"Debian GNU/Linux 12 (bookworm)\"\n").as_deref(),
            Some("Debian GNU/Linux 12 (bookworm)")
        );
        let p =
            passwd("root:x:0:0:root:/root:/bin/bash\nnobody:x:65534:65534::/:/usr/sbin/nologin\n");
        assert_eq!(p[&0], "root");
        assert_eq!(p[&65534], "nobody");
    }
}
