//! Host metrics against independent sources: syscalls (sysinfo, getloadavg, sysconf),
//! `df`, and workloads whose CPU, memory and network use we control.
use std::{
    io::{Read as _, Write as _},
    net::{TcpListener, TcpStream},
    process::Command,
    time::Duration,
};

use vigil_agent::metrics::{Roots, Sampler};
use vigil_tests::{sysinfo_mem_total, Workload};

const WORKLOAD: &str = env!("CARGO_BIN_EXE_vigil-workload");

fn sysinfo() -> libc::sysinfo {
    // SAFETY: zeroed is a valid sysinfo; the call fills it.
    let mut si: libc::sysinfo = unsafe { std::mem::zeroed() };
    // SAFETY: valid pointer.
    assert_eq!(unsafe { libc::sysinfo(&mut si) }, 0, "sysinfo(2)");
    si
}

#[test]
fn memory_cpus_load_and_boot_time_agree_with_the_kernel() {
    let mut sampler = Sampler::new(Roots::default(), 5);
    let s = sampler.sample().expect("sample");
    let si = sysinfo();
    assert_eq!(
        s.memory.total_bytes,
        si.totalram * u64::from(si.mem_unit),
        "MemTotal vs sysinfo(2)"
    );
    assert!(s.memory.available_bytes <= s.memory.total_bytes);
    assert_eq!(
        s.memory.used_bytes,
        s.memory.total_bytes - s.memory.available_bytes
    );
    // SAFETY: no preconditions.
    let online = unsafe { libc::sysconf(libc::_SC_NPROCESSORS_ONLN) } as usize;
    assert_eq!(s.cpu.count, online, "online CPUs vs sysconf");
    assert_eq!(s.cpu.per_core.len(), online);
    let mut loads = [0f64; 3];
    // SAFETY: valid buffer of 3.
    assert_eq!(unsafe { libc::getloadavg(loads.as_mut_ptr(), 3) }, 3);
    assert!(
        (s.load.one - loads[0]).abs() < 0.5,
        "load {} vs getloadavg {}",
        s.load.one,
        loads[0]
    );
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let boot = now - si.uptime as u64;
    assert!(
        s.host.boot_time_unix.abs_diff(boot) <= 2,
        "btime {} vs now - uptime {boot}",
        s.host.boot_time_unix
    );
    assert!(!s.host.hostname.is_empty() && !s.host.kernel.is_empty());
    assert!(s.processes.total > 0 && s.processes.total >= s.processes.running);
}

#[test]
fn cpu_shares_add_up_and_a_spinner_is_the_top_process() {
    let mut sampler = Sampler::new(Roots::default(), 5);
    sampler.sample().expect("prime");
    let mut spinner = Workload::spawn(WORKLOAD, &["spin", "1500"]);
    let pid = spinner.pid();
    spinner.go();
    std::thread::sleep(Duration::from_millis(1000));
    let s = sampler.sample().expect("sample");
    spinner.wait();
    let t = &s.cpu.total;
    let sum = t.user + t.nice + t.system + t.idle + t.iowait + t.irq + t.softirq + t.steal;
    assert!((sum - 100.0).abs() < 0.5, "CPU shares sum to {sum}");
    // One of the CPUs was busy the whole window.
    let floor = 100.0 / s.cpu.count as f64 * 0.7;
    assert!(
        s.cpu.usage_percent >= floor,
        "usage {} with a spinner on one of {} CPUs",
        s.cpu.usage_percent,
        s.cpu.count
    );
    let top = s
        .top_cpu
        .iter()
        .find(|p| p.pid == pid)
        .unwrap_or_else(|| panic!("spinner {pid} not in top CPU: {:?}", s.top_cpu));
    assert!(
        (60.0..=110.0).contains(&top.cpu_percent),
        "spinner at {} % of a CPU",
        top.cpu_percent
    );
    assert_eq!(top.comm, "vigil-workload");
    assert!(top.cmdline.contains("spin 1500"), "{}", top.cmdline);
}

#[test]
fn a_process_holding_memory_tops_the_memory_list() {
    let mut holder = Workload::spawn(WORKLOAD, &["hold-memory", "512", "20000"]);
    let pid = holder.pid();
    holder.go();
    // Wait until the kernel says the memory is resident (statm field 2, in pages).
    let page = 4096u64;
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        let statm = std::fs::read_to_string(format!("/proc/{pid}/statm")).expect("statm");
        let resident: u64 = statm
            .split_whitespace()
            .nth(1)
            .and_then(|v| v.parse().ok())
            .expect("resident pages");
        if resident * page >= 512 << 20 {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the holder never got 512 MiB resident"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let mut sampler = Sampler::new(Roots::default(), 5);
    let s = sampler.sample().expect("sample");
    drop(holder); // killed: no need to wait out its 20 s
    let p = s
        .top_memory
        .iter()
        .find(|p| p.pid == pid)
        .unwrap_or_else(|| panic!("holder not in top memory: {:?}", s.top_memory));
    assert!(
        p.rss_bytes >= 512 << 20,
        "rss {} below the 512 MiB touched",
        p.rss_bytes
    );
    assert!(
        !p.user.is_empty(),
        "the owner is resolved to a name or a uid"
    );
}

#[test]
fn loopback_traffic_and_tcp_opens_show_up() {
    const BYTES: usize = 64 << 20;
    let mut sampler = Sampler::new(Roots::default(), 5);
    let before = sampler.sample().expect("prime");
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = listener.local_addr().expect("addr");
    let server = std::thread::spawn(move || {
        let (mut c, _) = listener.accept().expect("accept");
        let mut buf = vec![0u8; 1 << 16];
        let mut n = 0;
        while let Ok(k) = c.read(&mut buf) {
            if k == 0 {
                break;
            }
            n += k;
        }
        n
    });
    let mut c = TcpStream::connect(addr).expect("connect");
    let chunk = vec![7u8; 1 << 16];
    for _ in 0..BYTES / chunk.len() {
        c.write_all(&chunk).expect("write");
    }
    drop(c);
    assert_eq!(server.join().expect("server"), BYTES);
    let s = sampler.sample().expect("sample");
    let lo = s
        .network
        .iter()
        .find(|n| n.interface == "lo")
        .expect("lo in the interface list");
    let received = lo.rx_bytes_per_sec * s.interval_secs;
    assert!(
        received >= BYTES as f64,
        "lo received {received} bytes, we sent {BYTES}"
    );
    assert!(
        s.tcp.active_opens > before.tcp.active_opens,
        "our connect is an active open"
    );
    assert!(
        s.tcp.passive_opens > before.tcp.passive_opens,
        "our accept is a passive open"
    );
}

#[test]
fn root_filesystem_size_matches_df() {
    let s = Sampler::new(Roots::default(), 0).sample().expect("sample");
    let root = s
        .filesystems
        .iter()
        .find(|f| f.mount == "/")
        .expect("/ in the filesystem list");
    let out = Command::new("df")
        .args(["-B1", "--output=size,avail", "/"])
        .output()
        .expect("df");
    let text = String::from_utf8_lossy(&out.stdout);
    let nums: Vec<u64> = text
        .lines()
        .nth(1)
        .expect("df row")
        .split_whitespace()
        .map(|w| w.parse().unwrap())
        .collect();
    assert_eq!(root.size_bytes, nums[0], "size vs df");
    // Free space moves as other things write; allow 1 %.
    assert!(
        root.available_bytes.abs_diff(nums[1]) <= nums[0] / 100,
        "avail {} vs df {}",
        root.available_bytes,
        nums[1]
    );
}

#[test]
fn missing_files_leave_gaps_not_errors() {
    let dir = std::env::temp_dir().join(format!("vigil-metrics-{}", std::process::id()));
    let proc = dir.join("proc");
    std::fs::create_dir_all(&proc).expect("mkdir");
    std::fs::write(
        proc.join("stat"),
        "cpu  1 0 1 10 0 0 0 0 0 0\ncpu0 1 0 1 10 0 0 0 0 0 0\nctxt 5\nbtime 100\nprocesses 3\n",
    )
    .unwrap();
    // The fields every kernel since 2.6 prints (no MemAvailable: that is 3.14's).
    std::fs::write(
        proc.join("meminfo"),
        "MemTotal: 1000 kB\nMemFree: 500 kB\nBuffers: 0 kB\nCached: 0 kB\nSwapCached: 0 kB\n\
         Active: 0 kB\nInactive: 0 kB\nSwapTotal: 0 kB\nSwapFree: 0 kB\nDirty: 0 kB\n\
         Writeback: 0 kB\nMapped: 0 kB\nSlab: 0 kB\nCommitted_AS: 0 kB\nVmallocTotal: 0 kB\n\
         VmallocUsed: 0 kB\nVmallocChunk: 0 kB\n",
    )
    .unwrap();
    let roots = Roots {
        proc: proc.clone(),
        sys: dir.join("sys"),
        etc: dir.join("etc"),
        host: None,
    };
    let s = Sampler::new(roots.clone(), 3)
        .sample()
        .expect("a kernel without PSI, diskstats, ... is fine");
    assert_eq!(s.memory.total_bytes, 1_024_000);
    assert_eq!(
        s.memory.available_bytes, 512_000,
        "estimated from MemFree when MemAvailable is missing"
    );
    assert!(
        s.pressure.cpu.is_none()
            && s.disks.is_empty()
            && s.network.is_empty()
            && s.open_fds.is_none()
    );
    std::fs::remove_file(proc.join("meminfo")).unwrap();
    let err = Sampler::new(roots, 3)
        .sample()
        .expect_err("no meminfo is an error");
    assert!(
        err.to_string().contains("meminfo"),
        "the error names the file: {err}"
    );
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn stats_json_carries_the_documented_fields() {
    let out = Command::new(vigil_tests::vigil_bin())
        .args(["stats", "--window", "200ms", "--json"])
        .output()
        .expect("vigil stats");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("JSON");
    for path in [
        "/hostname",
        "/cpu/count",
        "/cpu/usage_percent",
        "/memory/total_bytes",
        "/memory/available_bytes",
        "/load/one",
    ] {
        assert!(
            v.pointer(path).is_some_and(|x| !x.is_null()),
            "missing {path} in {v}"
        );
    }
    assert_eq!(
        v["memory"]["total_bytes"].as_u64(),
        Some(sysinfo_mem_total())
    );
}

/// `vigil stats` shows filesystems as df(1) does: the use % of `/` is df's (used over
/// used plus available, the root reserve counted), a bind mount is not shown twice,
/// and the mount point comes last so a long one does not break the columns.
#[test]
fn stats_shows_filesystems_like_df() {
    let out = Command::new(vigil_tests::vigil_bin())
        .args(["stats", "--local", "--window", "100ms"])
        .output()
        .expect("vigil stats");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let df = Command::new("df")
        .args(["--output=pcent", "/"])
        .output()
        .expect("df");
    let df_pct: u64 = String::from_utf8_lossy(&df.stdout)
        .lines()
        .nth(1)
        .and_then(|l| l.trim().trim_end_matches('%').parse().ok())
        .expect("df's use %");
    assert!(
        text.contains("SIZE") && text.contains("AVAIL") && text.contains("USE%"),
        "{text}"
    );
    // The filesystem table: from its header to the blank line after it.
    let root: Vec<&str> = text
        .lines()
        .skip_while(|l| !l.ends_with("MOUNTED ON"))
        .take_while(|l| !l.trim().is_empty())
        .filter(|l| l.split_whitespace().last() == Some("/"))
        .collect();
    assert_eq!(root.len(), 1, "/ once: {text}");
    let ours: u64 = root[0]
        .split_whitespace()
        .find(|w| w.ends_with('%'))
        .and_then(|w| w.trim_end_matches('%').parse().ok())
        .expect("a use %");
    // The same statfs a moment apart: equal, or one percent across a boundary.
    assert!(
        ours.abs_diff(df_pct) <= 1,
        "vigil {ours}% vs df {df_pct}%: {}",
        root[0]
    );
}
