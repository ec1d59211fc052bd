//! Helpers for Vigil's privileged tests: root checks that fail under CI, the real
//! `vigil` binary as a child process, controlled workloads, and network namespaces.
pub mod daemons;
pub mod peers;

use std::{
    fs::File,
    io::{BufRead as _, BufReader, Read as _, Write as _},
    path::PathBuf,
    process::{Child, ChildStdin, Command, Stdio},
    sync::mpsc,
    time::{Duration, Instant},
};

/// True when the test can run. Without root it prints why and returns false, unless
/// `CI` is set, where a privileged test that can't run is a failure.
pub fn require_root(test: &str) -> bool {
    if nix::unistd::geteuid().is_root() {
        return true;
    }
    if std::env::var_os("CI").is_some() {
        panic!("{test}: needs root to load eBPF programs, and CI is set: privileged tests must run, not skip");
    }
    eprintln!("SKIPPED {test}: needs root to load eBPF programs (run `sudo -E cargo xtask test`)");
    false
}

/// The `vigil` binary under test: $VIGIL_BIN (set by `cargo xtask test`), else the
/// workspace's debug build.
pub fn vigil_bin() -> PathBuf {
    plaintext_unless_asked();
    let path = std::env::var_os("VIGIL_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target/debug/vigil"));
    assert!(
        path.exists(),
        "vigil binary not found at {}: run the tests through `cargo xtask test`",
        path.display()
    );
    path
}

/// Mutual TLS is the default everywhere; the suites that test something else run
/// their daemons and CLI calls in plaintext through `VIGIL_TLS=off` in this process's
/// environment (which every child inherits). tests/tests/tls.rs asks for TLS with
/// `--tls mtls` (a flag beats the variable) or removes the variable.
fn plaintext_unless_asked() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        if std::env::var_os("VIGIL_TLS").is_none() {
            std::env::set_var("VIGIL_TLS", "off");
        }
    });
}

/// A daemon's own binary, next to the `vigil` CLI under test: `vigil-agent` or
/// `vigil-collector`, what the packages run (the CLI's `vigil agent` and `vigil
/// collector` run the same code).
pub fn daemon_bin(which: &str) -> PathBuf {
    let path = vigil_bin().with_file_name(format!("vigil-{which}"));
    assert!(
        path.exists(),
        "{} not found next to the vigil CLI: `cargo xtask test` builds it",
        path.display()
    );
    path
}

/// `vigil-agent`, to be given its flags.
pub fn agent_command() -> Command {
    Command::new(daemon_bin("agent"))
}

/// A real agent on the config file `config`, its output dropped, once it said READY=1
/// (at most a minute): the child, killed on drop, and what it said when ready.
pub fn agent_on(config: &std::path::Path) -> (KillOnDrop, Ready) {
    let mut cmd = agent_command();
    cmd.arg("--config")
        .arg(config)
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    let (child, ready) = spawn_ready(&mut cmd, Duration::from_secs(60));
    (KillOnDrop(child), ready)
}

/// `vigil-collector`, to be given its flags.
pub fn collector_command() -> Command {
    Command::new(daemon_bin("collector"))
}

/// A running `vigil` command: stdout collected, stderr watched for readiness.
pub struct Vigil {
    child: Child,
    stdout: Option<std::thread::JoinHandle<String>>,
    stderr: mpsc::Receiver<String>,
    stderr_seen: Vec<String>,
}

impl Vigil {
    /// Starts `vigil ARGS` and waits until its probes are attached: the agent (`agent
    /// ...` runs the `vigil-agent` daemon) says so with READY=1 (sd_notify), `vigil
    /// trace` on stderr.
    pub fn start(args: &[&str]) -> Self {
        let daemon = args.first() == Some(&"agent");
        let (mut cmd, args) = if daemon {
            (agent_command(), &args[1..])
        } else {
            (Command::new(vigil_bin()), args)
        };
        cmd.args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = if daemon {
            spawn_ready(&mut cmd, Duration::from_secs(60)).0
        } else {
            cmd.spawn()
                .unwrap_or_else(|e| panic!("starting vigil {args:?}: {e}"))
        };
        let mut out = child.stdout.take().expect("piped stdout");
        let stdout = std::thread::spawn(move || {
            let mut s = String::new();
            let _ = out.read_to_string(&mut s);
            s
        });
        let err = child.stderr.take().expect("piped stderr");
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(err).lines().map_while(Result::ok) {
                let _ = tx.send(line);
            }
        });
        let mut v = Self {
            child,
            stdout: Some(stdout),
            stderr: rx,
            stderr_seen: Vec::new(),
        };
        if !daemon {
            v.wait_for_stderr("vigil: tracing", Duration::from_secs(60));
        }
        v
    }

    /// Waits for a stderr line containing `needle` (lines before it are kept).
    pub fn wait_for_stderr(&mut self, needle: &str, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        loop {
            match self
                .stderr
                .recv_timeout(deadline.saturating_duration_since(Instant::now()))
            {
                Ok(line) => {
                    let found = line.contains(needle);
                    self.stderr_seen.push(line);
                    if found {
                        return;
                    }
                }
                Err(_) => {
                    let _ = self.child.kill();
                    panic!(
                        "vigil did not print {needle:?} in {timeout:?}; stderr so far:\n{}",
                        self.stderr_seen.join("\n")
                    );
                }
            }
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Sends SIGINT (as Ctrl-C would) and returns stdout once it exits.
    pub fn interrupt(self) -> String {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(self.child.id() as i32),
            nix::sys::signal::Signal::SIGINT,
        );
        self.finish()
    }

    /// Waits for exit (at most 60 s) and returns stdout; panics with stderr if it failed.
    pub fn finish(mut self) -> String {
        let deadline = Instant::now() + Duration::from_secs(60);
        let status = loop {
            if let Some(status) = self.child.try_wait().expect("waiting for vigil") {
                break status;
            }
            if Instant::now() > deadline {
                let _ = self.child.kill();
                panic!("vigil did not exit within 60 s");
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        self.stderr_seen.extend(self.stderr.try_iter());
        let stdout = self
            .stdout
            .take()
            .map(|h| h.join().expect("stdout reader"))
            .unwrap_or_default();
        assert!(
            status.success(),
            "vigil failed ({status}); stderr:\n{}\nstdout:\n{stdout}",
            self.stderr_seen.join("\n")
        );
        stdout
    }
}

impl Drop for Vigil {
    /// A failing test must not leave vigil attached (or holding the test's pipes).
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// What a daemon told the service manager when it became ready (sd_notify(3)
/// variables: READY, STATUS, and VIGIL_LISTEN for the collector's bound address).
pub type Ready = std::collections::HashMap<String, String>;

/// A socket standing in for systemd's NOTIFY_SOCKET: a daemon spawned with it armed
/// reports READY=1, RELOADING=1, STOPPING=1 and its STATUS here.
pub struct Notify {
    sock: std::os::unix::net::UnixDatagram,
    path: PathBuf,
    _dir: tempfile::TempDir,
}

impl Default for Notify {
    fn default() -> Self {
        Self::new()
    }
}

impl Notify {
    pub fn new() -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("notify");
        let sock = std::os::unix::net::UnixDatagram::bind(&path).expect("notify socket");
        sock.set_read_timeout(Some(Duration::from_millis(100)))
            .expect("timeout");
        Self {
            sock,
            path,
            _dir: dir,
        }
    }

    /// Points `cmd`'s NOTIFY_SOCKET here.
    pub fn arm<'c>(&self, cmd: &'c mut Command) -> &'c mut Command {
        cmd.env("NOTIFY_SOCKET", &self.path)
    }

    /// Waits (at most `timeout`) for a message with `var=value`; returns its
    /// variables. Panics, with the exit status, if `child` exits first.
    pub fn wait_for(&self, var: &str, value: &str, child: &mut Child, timeout: Duration) -> Ready {
        let deadline = Instant::now() + timeout;
        let mut buf = vec![0u8; 4096];
        loop {
            if let Ok(n) = self.sock.recv(&mut buf) {
                let text = String::from_utf8_lossy(&buf[..n]);
                let vars: Ready = text
                    .lines()
                    .filter_map(|l| l.split_once('='))
                    .map(|(k, v)| (k.to_string(), v.to_string()))
                    .collect();
                if vars.get(var).is_some_and(|v| v == value) {
                    return vars;
                }
                continue;
            }
            if let Ok(Some(status)) = child.try_wait() {
                panic!("the daemon exited ({status}) before it said {var}={value}");
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                panic!("the daemon did not say {var}={value} within {timeout:?}");
            }
        }
    }
}

/// Spawns `cmd` with a NOTIFY_SOCKET of the test's own, as systemd would for a
/// `Type=notify` unit, and waits (at most `timeout`) for READY=1. Panics, with the
/// exit status, if the daemon exits first. Stderr, if piped, stays for the caller to
/// read (or drain: a daemon must never block on a full pipe).
pub fn spawn_ready(cmd: &mut Command, timeout: Duration) -> (Child, Ready) {
    let notify = Notify::new();
    let mut child = notify
        .arm(cmd)
        .spawn()
        .unwrap_or_else(|e| panic!("starting {cmd:?}: {e}"));
    let ready = notify.wait_for("READY", "1", &mut child, timeout);
    (child, ready)
}

/// Starts a `vigil collector` command (stderr piped) and waits until it is ready.
/// Returns it, its bound address (from its readiness message) and the rest of its
/// stderr, which the caller must keep reading (or drain).
pub fn collector_address(
    cmd: &mut Command,
) -> (
    Child,
    String,
    std::io::Lines<BufReader<std::process::ChildStderr>>,
) {
    let (mut child, ready) = spawn_ready(cmd, Duration::from_secs(60));
    let addr = ready
        .get("VIGIL_LISTEN")
        .unwrap_or_else(|| panic!("no VIGIL_LISTEN in the collector's READY: {ready:?}"))
        .clone();
    let lines = BufReader::new(child.stderr.take().expect("collector stderr piped")).lines();
    (child, addr, lines)
}

/// A loopback port free now, for a server a test starts (Prometheus, node_exporter):
/// the kernel picks it, the test's server binds it a moment later.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free loopback port")
}

/// Kills a helper process (bpftrace, ...) when a test ends early.
pub struct KillOnDrop(pub Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        if let Ok(None) = self.0.try_wait() {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
}

/// A `vigil-workload` child that waits for `go()` before doing its work.
pub struct Workload {
    child: Child,
    stdin: Option<ChildStdin>,
}

impl Workload {
    /// `bin` is `env!("CARGO_BIN_EXE_vigil-workload")`, which only tests can name.
    pub fn spawn(bin: &str, args: &[&str]) -> Self {
        let mut child = Command::new(bin)
            .args(args)
            .stdin(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("starting vigil-workload {args:?}: {e}"));
        let stdin = child.stdin.take();
        Self { child, stdin }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn go(&mut self) {
        let mut stdin = self.stdin.take().expect("go() once");
        stdin.write_all(b"go\n").expect("signalling the workload");
    }

    pub fn wait(mut self) {
        let status = self.child.wait().expect("waiting for the workload");
        assert!(status.success(), "workload failed: {status}");
    }
}

impl Drop for Workload {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// Runs a shell-free command, panicking with its output if it fails.
pub fn sh(program: &str, args: &[&str]) {
    let out = Command::new(program)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("{program} {args:?}: {e}"));
    assert!(
        out.status.success(),
        "{program} {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Two network namespaces joined by a veth pair: `a` at 10.213.0.1 and fd00:213::1,
/// `b` at 10.213.0.2 and fd00:213::2. Deleted on drop.
pub struct NetnsPair {
    pub a: String,
    pub b: String,
    /// The veth ends: `dev_a` in `a`, `dev_b` in `b`.
    pub dev_a: String,
    pub dev_b: String,
}

impl NetnsPair {
    pub const ADDR_A: &'static str = "10.213.0.1";
    pub const ADDR_B: &'static str = "10.213.0.2";
    pub const ADDR6_A: &'static str = "fd00:213::1";
    pub const ADDR6_B: &'static str = "fd00:213::2";

    pub fn new(tag: &str) -> Self {
        let id = std::process::id() % 100_000;
        let (va, vb) = (format!("vga{id}"), format!("vgb{id}"));
        let pair = Self {
            a: format!("vigil-{tag}-a-{id}"),
            b: format!("vigil-{tag}-b-{id}"),
            dev_a: va.clone(),
            dev_b: vb.clone(),
        };
        sh("ip", &["netns", "add", &pair.a]);
        sh("ip", &["netns", "add", &pair.b]);
        sh(
            "ip",
            &["link", "add", &va, "type", "veth", "peer", "name", &vb],
        );
        sh("ip", &["link", "set", &va, "netns", &pair.a]);
        sh("ip", &["link", "set", &vb, "netns", &pair.b]);
        for (ns, dev, addr, addr6) in [
            (&pair.a, &va, Self::ADDR_A, Self::ADDR6_A),
            (&pair.b, &vb, Self::ADDR_B, Self::ADDR6_B),
        ] {
            sh(
                "ip",
                &["-n", ns, "addr", "add", &format!("{addr}/24"), "dev", dev],
            );
            // nodad: usable at once, without duplicate address detection's delay.
            sh(
                "ip",
                &[
                    "-n",
                    ns,
                    "addr",
                    "add",
                    &format!("{addr6}/64"),
                    "dev",
                    dev,
                    "nodad",
                ],
            );
            sh("ip", &["-n", ns, "link", "set", dev, "up"]);
            sh("ip", &["-n", ns, "link", "set", "lo", "up"]);
        }
        pair
    }

    /// Loads an nftables ruleset into namespace `ns`.
    pub fn nft(&self, ns: &str, ruleset: &str) {
        let mut child = Command::new("ip")
            .args(["netns", "exec", ns, "nft", "-f", "-"])
            .stdin(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("starting nft");
        child
            .stdin
            .take()
            .expect("stdin")
            .write_all(ruleset.as_bytes())
            .expect("writing ruleset");
        let out = child.wait_with_output().expect("nft");
        assert!(
            out.status.success(),
            "nft failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

impl Drop for NetnsPair {
    fn drop(&mut self) {
        for ns in [&self.a, &self.b] {
            let _ = Command::new("ip").args(["netns", "del", ns]).status();
        }
    }
}

/// Runs `f` on a thread that has joined network namespace `ns`.
pub fn in_netns<T: Send + 'static>(
    ns: &str,
    f: impl FnOnce() -> T + Send + 'static,
) -> std::thread::JoinHandle<T> {
    let path = format!("/var/run/netns/{ns}");
    std::thread::spawn(move || {
        let fd = File::open(&path).unwrap_or_else(|e| panic!("opening {path}: {e}"));
        nix::sched::setns(fd, nix::sched::CloneFlags::CLONE_NEWNET)
            .unwrap_or_else(|e| panic!("setns {path}: {e}"));
        f()
    })
}

/// The kernel's own `Tcp: RetransSegs` counter in the calling thread's network namespace.
pub fn tcp_retrans_segs() -> u64 {
    let snmp = std::fs::read_to_string("/proc/thread-self/net/snmp")
        .expect("reading /proc/thread-self/net/snmp");
    let mut tcp = snmp.lines().filter(|l| l.starts_with("Tcp:"));
    let (names, values) = (
        tcp.next().expect("Tcp header"),
        tcp.next().expect("Tcp values"),
    );
    let idx = names
        .split_whitespace()
        .position(|n| n == "RetransSegs")
        .expect("RetransSegs column");
    values
        .split_whitespace()
        .nth(idx)
        .and_then(|v| v.parse().ok())
        .expect("RetransSegs value")
}

/// A process's cgroup v2 id: the inode number of its cgroup directory.
pub fn cgroup_id(pid: u32) -> u64 {
    use std::os::unix::fs::MetadataExt as _;
    let text =
        std::fs::read_to_string(format!("/proc/{pid}/cgroup")).expect("reading /proc/PID/cgroup");
    let path = text
        .lines()
        .find_map(|l| l.strip_prefix("0::"))
        .expect("a cgroup v2 line");
    std::fs::metadata(format!("/sys/fs/cgroup{path}"))
        .expect("stat of the cgroup directory")
        .ino()
}

/// Insists `bin` is on the PATH (`cargo xtask setup` installs the peers the tests run).
pub fn require_bin(bin: &str) {
    let found = Command::new("sh")
        .args(["-c", &format!("command -v {bin}")])
        .stdout(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    assert!(found, "{bin} is missing: `cargo xtask setup` installs it");
}

/// Runs `vigil ARGS`, insists it succeeded, and returns its stdout.
pub fn vigil_stdout(args: &[&str]) -> Vec<u8> {
    let out = Command::new(vigil_bin())
        .args(args)
        .output()
        .expect("running vigil");
    assert!(
        out.status.success(),
        "vigil {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out.stdout
}

/// Runs `vigil ARGS`, insists it succeeded, and parses its stdout as one JSON value.
pub fn vigil_json(args: &[&str]) -> serde_json::Value {
    let stdout = vigil_stdout(args);
    serde_json::from_slice(&stdout).unwrap_or_else(|e| {
        panic!(
            "vigil {args:?}: not JSON ({e}): {}",
            String::from_utf8_lossy(&stdout)
        )
    })
}

/// The kernel's total RAM from sysinfo(2): a second path to the number that
/// /proc/meminfo's MemTotal reports.
pub fn sysinfo_mem_total() -> u64 {
    // SAFETY: zeroed is a valid sysinfo; the call fills it.
    let mut si: libc::sysinfo = unsafe { std::mem::zeroed() };
    // SAFETY: valid pointer.
    assert_eq!(unsafe { libc::sysinfo(&mut si) }, 0, "sysinfo(2)");
    si.totalram * u64::from(si.mem_unit)
}

/// A probe's state in `vigil stats --json`'s `probes` list: "on", "not requested", or
/// "off: REASON"; "absent" when the list does not name it.
pub fn probe_state(stats: &serde_json::Value, name: &str) -> String {
    stats["probes"]
        .as_array()
        .and_then(|list| list.iter().find(|p| p["name"] == name))
        .map_or("absent".into(), |p| match p["state"].as_str() {
            Some("off") => format!("off: {}", p["reason"].as_str().unwrap_or_default()),
            other => other.unwrap_or_default().to_string(),
        })
}

/// `2026-12-04T23:07:20Z`, with or without a fraction: the RFC 3339 UTC form every
/// human output uses.
pub fn is_rfc3339_utc(s: &str) -> bool {
    let b = s.as_bytes();
    let digits =
        |r: std::ops::Range<usize>| b.get(r).is_some_and(|d| d.iter().all(u8::is_ascii_digit));
    b.len() >= 20
        && digits(0..4)
        && b[4] == b'-'
        && digits(5..7)
        && b[7] == b'-'
        && digits(8..10)
        && b[10] == b'T'
        && digits(11..13)
        && b[13] == b':'
        && digits(14..16)
        && b[16] == b':'
        && digits(17..19)
        && s.ends_with('Z')
        && (b.len() == 20 || (b[19] == b'.' && digits(20..b.len() - 1)))
}

/// The lines a child writes to `r`, as they come (read on a thread of their own).
pub fn lines_of(r: impl std::io::Read + Send + 'static) -> std::sync::mpsc::Receiver<String> {
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in std::io::BufRead::lines(std::io::BufReader::new(r)).map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    rx
}

/// Waits up to `timeout` for a line that is `want` (trimmed); panics with what it
/// waited for when none comes.
pub fn wait_for_line(rx: &std::sync::mpsc::Receiver<String>, want: &str, timeout: Duration) {
    let deadline = std::time::Instant::now() + timeout;
    loop {
        match rx.recv_timeout(deadline.saturating_duration_since(std::time::Instant::now())) {
            Ok(line) if line.trim() == want => return,
            Ok(_) => {}
            Err(e) => panic!("no {want:?} line within {timeout:?}: {e}"),
        }
    }
}
