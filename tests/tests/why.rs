//! `vigil why` against incidents the tests make on the real kernel: a writer doing
//! fdatasyncs against a throttled loop device, a CPU burner pinned beside a
//! latency-sensitive child, a lossy veth link under a transfer; and a quiet host.
//! Each time the first cause must be the right resource and name the right process or
//! peer.
use std::{
    process::Command,
    time::{Duration, Instant},
};

use serde_json::Value;
use vigil_tests::{require_root, KillOnDrop, Workload};

const WORKLOAD: &str = env!("CARGO_BIN_EXE_vigil-workload");

/// A real agent, every probe on, one interval a second.
struct Agent {
    _child: KillOnDrop,
    socket: String,
    _dir: tempfile::TempDir,
}

impl Agent {
    fn start() -> Self {
        Self::start_streaming_to(None)
    }

    /// With `collector`: its batches go there too.
    fn start_streaming_to(collector: Option<&str>) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let socket = dir.path().join("agent.sock").display().to_string();
        let config = dir.path().join("agent.toml");
        std::fs::write(
            &config,
            format!(
                "interval = \"1s\"\nsocket = \"{socket}\"\ndata_dir = \"{}\"\n{}\n[detect]\nenabled = false\n",
                dir.path().join("data").display(),
                collector.map_or(String::new(), |c| format!("collector = \"{c}\"\n"))
            ),
        )
        .unwrap();
        let child = vigil_tests::agent_on(&config).0;
        let agent = Self {
            _child: child,
            socket,
            _dir: dir,
        };
        // A baseline: 20 intervals before anything happens.
        vigil_tests::daemons::wait_until(
            "20 intervals of history",
            Duration::from_secs(90),
            || {
                agent.why(&["--since", "1s"])["baseline_intervals"]
                    .as_u64()
                    .unwrap_or(0)
                    >= 20
            },
        );
        agent
    }

    fn why(&self, args: &[&str]) -> Value {
        let out = Command::new(vigil_tests::vigil_bin())
            .args(["why", "--json", "--socket", &self.socket])
            .args(args)
            .output()
            .unwrap();
        serde_json::from_slice(&out.stdout).unwrap_or(Value::Null)
    }

    /// `vigil why` over the time since `start` (plus a second), printed for the log.
    fn why_since(&self, start: Instant, extra: &[&str]) -> Value {
        let since = format!("{}s", start.elapsed().as_secs() + 2);
        let mut args = vec!["--since", since.as_str()];
        args.extend_from_slice(extra);
        let text = Command::new(vigil_tests::vigil_bin())
            .args(["why", "--socket", &self.socket])
            .args(&args)
            .output()
            .unwrap();
        println!("{}", String::from_utf8_lossy(&text.stdout));
        self.why(&args)
    }
}

/// Waits for the agent's next two intervals: what happened is in its history.
fn two_intervals(agent: &Agent) {
    let n = |a: &Agent| {
        a.why(&["--since", "5m"])["window_intervals"]
            .as_u64()
            .unwrap_or(0)
    };
    let start = n(agent);
    vigil_tests::daemons::wait_until("two more intervals", Duration::from_secs(30), || {
        n(agent) >= start + 2
    });
}

fn first(r: &Value) -> &Value {
    &r["findings"][0]
}

fn names_pid(f: &Value, pid: u32) -> bool {
    f["processes"]
        .as_array()
        .is_some_and(|p| p.iter().any(|p| p["pid"] == pid))
}

#[test]
fn a_quiet_host_has_nothing_standing_out() {
    if !require_root("a_quiet_host_has_nothing_standing_out") {
        return;
    }
    let agent = Agent::start();
    let start = Instant::now();
    two_intervals(&agent);
    two_intervals(&agent);
    let r = agent.why_since(start, &[]);
    assert_eq!(r["findings"], serde_json::json!([]), "{r:#}");
}

/// A loop device with an ext4 file system mounted under `dir`, and a blkio cgroup
/// holding its writes to `bps` bytes a second. Undone on drop.
struct ThrottledDisk {
    loop_dev: String,
    mount: std::path::PathBuf,
    cgroup: std::path::PathBuf,
}

impl ThrottledDisk {
    fn new(dir: &std::path::Path, bps: u64) -> Self {
        let image = dir.join("disk.img");
        let f = std::fs::File::create(&image).unwrap();
        f.set_len(128 << 20).unwrap();
        vigil_tests::sh("mkfs.ext4", &["-q", image.to_str().unwrap()]);
        let out = Command::new("losetup")
            .args(["-f", "--show", image.to_str().unwrap()])
            .output()
            .expect("losetup");
        assert!(
            out.status.success(),
            "losetup: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let loop_dev = String::from_utf8_lossy(&out.stdout).trim().to_string();
        let mount = dir.join("mnt");
        std::fs::create_dir_all(&mount).unwrap();
        vigil_tests::sh("mount", &[&loop_dev, mount.to_str().unwrap()]);
        let rdev = {
            use std::os::unix::fs::MetadataExt as _;
            std::fs::metadata(&loop_dev).unwrap().rdev()
        };
        let (major, minor) = (nix::sys::stat::major(rdev), nix::sys::stat::minor(rdev));
        let cgroup = std::path::PathBuf::from(format!(
            "/sys/fs/cgroup/blkio/vigil-why-{}",
            std::process::id()
        ));
        std::fs::create_dir_all(&cgroup).expect("a blkio cgroup (cgroup v1 blkio controller)");
        std::fs::write(
            cgroup.join("blkio.throttle.write_bps_device"),
            format!("{major}:{minor} {bps}"),
        )
        .expect("blkio throttle");
        Self {
            loop_dev,
            mount,
            cgroup,
        }
    }

    fn admit(&self, pid: u32) {
        std::fs::write(self.cgroup.join("cgroup.procs"), pid.to_string()).unwrap();
    }
}

impl Drop for ThrottledDisk {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.mount).status();
        let _ = Command::new("losetup")
            .args(["-d", &self.loop_dev])
            .status();
        let _ = std::fs::remove_dir(&self.cgroup);
    }
}

#[test]
fn a_writer_on_a_throttled_disk_makes_the_disk_the_first_cause_and_names_the_writer() {
    if !require_root(
        "a_writer_on_a_throttled_disk_makes_the_disk_the_first_cause_and_names_the_writer",
    ) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let disk = ThrottledDisk::new(dir.path(), 1 << 20);
    let agent = Agent::start();
    let start = Instant::now();
    // 24 times: 256 KiB written, then fdatasync: a quarter second each at 1 MiB/s.
    let file = disk.mount.join("data");
    let mut writer = Workload::spawn(
        WORKLOAD,
        &["fdatasync", "24", "262144", file.to_str().unwrap()],
    );
    let pid = writer.pid();
    disk.admit(pid);
    writer.go();
    writer.wait();
    two_intervals(&agent);
    let r = agent.why_since(start, &[]);
    let f = first(&r);
    assert_eq!(f["resource"], "disk", "{r:#}");
    assert!(f["title"].as_str().unwrap().contains("fdatasync"), "{r:#}");
    assert!(
        names_pid(f, pid),
        "the writer (pid {pid}) is not named: {r:#}"
    );
    // Narrowed to the writer: what it waits on is the disk.
    let r = agent.why_since(start, &["--pid", &pid.to_string()]);
    assert_eq!(first(&r)["resource"], "disk", "{r:#}");
}

#[test]
fn a_cpu_burner_beside_a_latency_sensitive_child_makes_cpu_the_first_cause_and_names_the_burner() {
    if !require_root("a_cpu_burner_beside_a_latency_sensitive_child_makes_cpu_the_first_cause_and_names_the_burner") {
        return;
    }
    let collector = vigil_tests::daemons::Collector::start(&[]);
    let agent = Agent::start_streaming_to(Some(&collector.addr));
    let start = Instant::now();
    // Both on CPU 0: the child's 1 ms sleeps wait for the burner's time slices.
    let mut burner = Workload::spawn("taskset", &["-c", "0", WORKLOAD, "spin", "12000"]);
    let mut child = Workload::spawn("taskset", &["-c", "0", WORKLOAD, "sleep", "4000", "1"]);
    let pid = burner.pid();
    burner.go();
    child.go();
    burner.wait();
    child.wait();
    two_intervals(&agent);
    let r = agent.why_since(start, &[]);
    let f = first(&r);
    assert_eq!(f["resource"], "cpu", "{r:#}");
    assert!(
        names_pid(f, pid),
        "the burner (pid {pid}) is not named: {r:#}"
    );
}

#[test]
fn a_lossy_link_under_a_transfer_makes_the_network_the_first_cause_and_names_the_peer() {
    if !require_root(
        "a_lossy_link_under_a_transfer_makes_the_network_the_first_cause_and_names_the_peer",
    ) {
        return;
    }
    use std::io::{Read as _, Write as _};
    use vigil_tests::{in_netns, NetnsPair};
    const PORT: u16 = 5571;
    let net = NetnsPair::new("why");
    let agent = Agent::start();
    let start = Instant::now();
    // 10 % of the segments to the server's port dropped in b.
    net.nft(
        &net.b,
        &format!(
            "table inet vigil_test {{\n chain input {{\n type filter hook input priority 0; policy accept;\n \
             tcp dport {PORT} numgen random mod 100 < 10 drop\n }}\n}}\n"
        ),
    );
    let ip_b: std::net::IpAddr = NetnsPair::ADDR_B.parse().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    let server = in_netns(&net.b, move || {
        let listener = std::net::TcpListener::bind((ip_b, PORT)).expect("bind in b");
        tx.send(()).unwrap();
        let (mut conn, _) = listener.accept().expect("accept");
        let mut buf = vec![0u8; 64 * 1024];
        while matches!(conn.read(&mut buf), Ok(n) if n > 0) {}
    });
    rx.recv().unwrap();
    // 8 s of 64 KiB every 10 ms (about 6 MB/s).
    let client = in_netns(&net.a, move || {
        let mut conn = std::net::TcpStream::connect((ip_b, PORT)).expect("connect");
        let chunk = vec![7u8; 64 * 1024];
        let until = Instant::now() + Duration::from_secs(8);
        while Instant::now() < until {
            conn.write_all(&chunk).expect("send");
            std::thread::sleep(Duration::from_millis(10));
        }
    });
    client.join().unwrap();
    server.join().unwrap();
    two_intervals(&agent);
    let r = agent.why_since(start, &[]);
    let f = first(&r);
    assert_eq!(f["resource"], "network", "{r:#}");
    assert_eq!(
        f["peers"][0],
        format!("{}:{PORT}", NetnsPair::ADDR_B),
        "{r:#}"
    );
}
