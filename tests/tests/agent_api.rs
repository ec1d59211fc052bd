//! The agent's local query API, through the CLI, against a real `vigil agent`.
use std::{
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use serde_json::Value;
use vigil_tests::{
    agent_command, lines_of, require_root, sysinfo_mem_total, vigil_bin, vigil_json, wait_for_line,
    KillOnDrop, Workload,
};

const WORKLOAD: &str = env!("CARGO_BIN_EXE_vigil-workload");

/// A `vigil agent` serving its API on a socket in a temporary directory, ready once
/// its first sample is in.
fn start_agent(dir: &std::path::Path) -> (KillOnDrop, String) {
    let socket = dir.join("agent.sock").display().to_string();
    let child = agent_command()
        .args([
            "--interval",
            "1s",
            "--top",
            "0",
            "--socket",
            &socket,
            "--slow-threshold",
            "50ms",
        ])
        .arg("--data-dir")
        .arg(dir.join("state"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("starting vigil agent");
    let agent = KillOnDrop(child);
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let out = Command::new(vigil_bin())
            .args(["syscalls", "--socket", &socket, "--json"])
            .output()
            .unwrap();
        if out.status.success() {
            let stats = Command::new(vigil_bin())
                .args(["stats", "--socket", &socket, "--json"])
                .output()
                .unwrap();
            if stats.status.success()
                && String::from_utf8_lossy(&stats.stdout).contains("\"source\":\"agent\"")
            {
                break;
            }
        }
        assert!(
            Instant::now() < deadline,
            "the agent API never answered on {socket}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    (agent, socket)
}

/// Every object key path in `v` ("memory.total_bytes", "filesystems[].mount"), the
/// values left out; `agent` and `probes`, which only an agent has, as their names.
fn schema(v: &Value) -> std::collections::BTreeSet<String> {
    fn walk(v: &Value, at: String, out: &mut std::collections::BTreeSet<String>) {
        match v {
            Value::Object(m) => {
                for (k, v) in m {
                    let path = if at.is_empty() {
                        k.clone()
                    } else {
                        format!("{at}.{k}")
                    };
                    if path == "agent" || path == "probes" || path == "agent_id" {
                        out.insert(path);
                        continue;
                    }
                    walk(v, path, out);
                }
            }
            Value::Array(a) => {
                for v in a.iter().take(1) {
                    walk(v, format!("{at}[]"), out);
                }
            }
            _ => {
                out.insert(at);
            }
        }
    }
    let mut out = std::collections::BTreeSet::new();
    walk(v, String::new(), &mut out);
    out
}

#[test]
fn stats_and_syscalls_come_from_the_agent() {
    let dir = tempfile::tempdir().unwrap();
    let (_agent, socket) = start_agent(dir.path());
    let stats = vigil_json(&["stats", "--socket", &socket, "--json"]);
    assert_eq!(stats["source"], "agent", "{stats}");
    // One shape: the agent's answer and the host read directly have the same fields,
    // at every level (filesystems, network, TCP, pressure, disks, top lists).
    // A window longer than the history kept says what span the answer covers.
    let started = Instant::now();
    let mut covered = 0.0;
    vigil_tests::daemons::wait_until("an interval of history", Duration::from_secs(30), || {
        let day = vigil_json(&["syscalls", "--socket", &socket, "--window", "1d", "--json"]);
        covered = day["covered_secs"].as_f64().expect("covered_secs");
        covered > 0.0
    });
    assert!(
        covered >= 1.0 && covered <= started.elapsed().as_secs_f64() + 60.0,
        "a new agent covers seconds, not a day: {covered}"
    );
    let text = Command::new(vigil_bin())
        .args(["syscalls", "--socket", &socket, "--window", "1d"])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&text.stdout);
    assert!(
        text.starts_with("covering the last ") && text.contains("(asked for 24 h)"),
        "{text}"
    );
    let local = vigil_json(&["stats", "--local", "--window", "200ms", "--json"]);
    assert_eq!(local["source"], "host", "{local}");
    assert_eq!(
        schema(&stats),
        schema(&local),
        "agent {stats}\nlocal {local}"
    );
    for list in ["filesystems", "network", "disks"] {
        assert!(
            stats[list].as_array().is_some_and(|a| !a.is_empty()),
            "no {list} from the agent: {stats}"
        );
    }
    assert!(stats["time"].as_str().unwrap().ends_with('Z'), "{stats}");
    assert_eq!(
        vigil_tests::probe_state(&stats, "syscall-latency"),
        "on",
        "{stats}"
    );
    assert_eq!(
        stats["memory"]["total_bytes"].as_u64(),
        Some(sysinfo_mem_total())
    );
    // What could stop a probe, as the agent found it at start: the same as the kernel
    // says (the sysctl files, the BTF file; as root no probe capability is missing).
    let pre = &stats["agent"]["preflight"];
    let sysctl = |n: &str| {
        std::fs::read_to_string(format!("/proc/sys/kernel/{n}"))
            .map_or("absent".into(), |v| v.trim().to_string())
    };
    assert_eq!(
        pre["perf_event_paranoid"],
        sysctl("perf_event_paranoid"),
        "{pre}"
    );
    assert_eq!(
        pre["unprivileged_bpf_disabled"],
        sysctl("unprivileged_bpf_disabled"),
        "{pre}"
    );
    let btf = std::path::Path::new("/sys/kernel/btf/vmlinux").exists();
    assert_eq!(pre["btf"], if btf { "present" } else { "absent" }, "{pre}");
    // The agent starts with this process's capabilities: the ones missing here (from
    // /proc/self/status CapEff) are the ones it must report.
    let cap_eff = std::fs::read_to_string("/proc/self/status")
        .unwrap()
        .lines()
        .find_map(|l| l.strip_prefix("CapEff:"))
        .and_then(|v| u64::from_str_radix(v.trim(), 16).ok())
        .expect("CapEff");
    // CAP_SYS_RESOURCE (the memlock limit) only matters before 5.11.
    let release = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap();
    let mut v = release.trim().split(|c: char| !c.is_ascii_digit());
    let version: (u32, u32) = (
        v.next().and_then(|p| p.parse().ok()).unwrap_or(0),
        v.next().and_then(|p| p.parse().ok()).unwrap_or(0),
    );
    let expected: Vec<&str> = [
        (39, "cap_bpf"),
        (38, "cap_perfmon"),
        (24, "cap_sys_resource"),
        (19, "cap_sys_ptrace"),
        (2, "cap_dac_read_search"),
    ]
    .into_iter()
    .filter(|(bit, _)| cap_eff & (1 << bit) == 0)
    .filter(|(bit, _)| *bit != 24 || version < (5, 11))
    .map(|(_, name)| name)
    .collect();
    assert_eq!(pre["capabilities_missing"], expected.join(","), "{pre}");
    // SAFETY: no preconditions.
    let online = unsafe { libc::sysconf(libc::_SC_NPROCESSORS_ONLN) } as u64;
    assert_eq!(stats["cpu"]["count"].as_u64(), Some(online));
    for path in [
        "/hostname",
        "/cpu/usage_percent",
        "/memory/available_bytes",
        "/load/one",
    ] {
        assert!(
            stats.pointer(path).is_some_and(|v| !v.is_null()),
            "missing {path}: {stats}"
        );
    }
    let retrans = Command::new(vigil_bin())
        .args(["retrans", "--socket", &socket, "--json"])
        .output()
        .unwrap();
    assert!(retrans.status.success());
    let last: Value = serde_json::from_str(
        String::from_utf8_lossy(&retrans.stdout)
            .lines()
            .last()
            .expect("summary"),
    )
    .unwrap();
    assert!(last["retransmits"].is_u64());

    // Without an agent, stats still answers, from /proc, and says so on stderr.
    let out = Command::new(vigil_bin())
        .args([
            "stats",
            "--socket",
            &dir.path().join("nobody.sock").display().to_string(),
            "--json",
            "--window",
            "100ms",
        ])
        .output()
        .unwrap();
    assert!(out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("reading the host directly"));
}

#[test]
fn syscall_latency_and_live_events_from_the_agent() {
    if !require_root("syscall_latency_and_live_events_from_the_agent") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let (_agent, socket) = start_agent(dir.path());
    let mut follow = KillOnDrop(
        Command::new(vigil_bin())
            .args(["events", "--follow", "--socket", &socket, "--json"])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("vigil events --follow"),
    );
    let rx = lines_of(follow.0.stdout.take().unwrap());
    // The follower says on stderr when the agent has subscribed it: from then on every
    // event reaches it.
    let err = lines_of(follow.0.stderr.take().unwrap());
    wait_for_line(
        &err,
        "vigil: following live events (Ctrl-C to stop)",
        Duration::from_secs(30),
    );
    // Three 120 ms sleeps: each is a slow syscall (threshold 50 ms) of this pid.
    let mut w = Workload::spawn(WORKLOAD, &["sleep", "3", "120"]);
    let pid = w.pid();
    w.go();
    w.wait();
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut ours = 0;
    while ours < 3 {
        let line = rx
            .recv_timeout(deadline.saturating_duration_since(Instant::now()))
            .expect("slow syscall events within 10 s");
        let v: Value =
            serde_json::from_str(&line).unwrap_or_else(|e| panic!("not JSON ({e}): {line}"));
        assert_ne!(
            v["type"], "missed",
            "a lone follower must not fall behind: {v}"
        );
        if v["type"] == "slow_syscall" && v["pid"] == pid {
            assert!(v["latency_ns"].as_u64().unwrap() >= 120_000_000, "{v}");
            ours += 1;
        }
    }
    // The agent's latency window holds those sleeps too, once it has closed the
    // interval they ended in.
    let deadline = Instant::now() + Duration::from_secs(30);
    let sleeps = loop {
        let syscalls = vigil_json(&["syscalls", "--socket", &socket, "--window", "1m", "--json"]);
        let row = syscalls["syscalls"]
            .as_array()
            .unwrap()
            .iter()
            .find(|r| r["name"] == "clock_nanosleep" && r["count"].as_u64().unwrap_or(0) >= 3)
            .cloned();
        match row {
            Some(r) => break r,
            None => assert!(
                Instant::now() < deadline,
                "no 3 clock_nanosleep calls in the agent's window within 30 s: {syscalls}"
            ),
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    assert!(
        sleeps["max_ns"].as_u64().unwrap() >= 120_000_000,
        "{sleeps}"
    );
}

/// A tmux server of this test's own (its socket named after the test), killed on drop.
struct Tmux(String, std::path::PathBuf);

impl Tmux {
    fn new(name: &str) -> Self {
        let socket = format!("vigil-{name}-{}", std::process::id());
        let conf = std::env::temp_dir().join(format!("{socket}.conf"));
        // The pane stays after `vigil top` exits, so the test can see how it left it.
        std::fs::write(&conf, "set -g remain-on-exit on\n").unwrap();
        Tmux(socket, conf)
    }
    fn run(&self, args: &[&str]) -> String {
        let out = Command::new("tmux")
            .args(["-L", &self.0, "-f"])
            .arg(&self.1)
            .args(args)
            .output()
            .expect("tmux (installed by `cargo xtask setup`)");
        assert!(
            out.status.success(),
            "tmux {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }
    fn screen(&self) -> String {
        self.run(&["capture-pane", "-p", "-t", "top"])
    }
    fn var(&self, name: &str) -> String {
        self.run(&["display-message", "-p", "-t", "top", name])
            .trim()
            .to_string()
    }
}

impl Drop for Tmux {
    fn drop(&mut self) {
        let _ = Command::new("tmux")
            .args(["-L", &self.0, "kill-server"])
            .output();
        let _ = std::fs::remove_file(&self.1);
    }
}

const TOP_SECTIONS: [&str; 5] = [
    "PROCESSES",
    "SLOWEST SYSCALLS",
    "LATEST RETRANSMITS",
    "FILESYSTEMS",
    "NETWORK AND DISKS",
];

/// What a person sees in a terminal of `w` x `h`: the header on the first row, every
/// section's title, the probes' state, no line wider than the pane, the alternate screen.
fn assert_top_fits(tmux: &Tmux, w: usize, h: usize) -> String {
    // A frame caught mid-draw (a loaded machine) is not the answer: wait for the whole
    // screen; if it never comes, the asserts below show the last one.
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    let mut screen;
    loop {
        screen = tmux.screen();
        let whole = screen.contains("probes: ")
            && TOP_SECTIONS.iter().all(|t| screen.contains(t))
            && screen.lines().count() == h
            && screen
                .lines()
                .next()
                .is_some_and(|l| l.starts_with("vigil top | "));
        if whole || std::time::Instant::now() > deadline {
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    for t in TOP_SECTIONS {
        assert!(screen.contains(t), "{w}x{h}: no {t:?} on screen:\n{screen}");
    }
    assert!(
        screen.contains("probes: ") && screen.contains("syscall-latency on"),
        "{screen}"
    );
    for line in screen.lines() {
        assert!(
            line.chars().count() <= w,
            "{w}x{h}: line wider than the pane: {line:?}"
        );
    }
    assert_eq!(
        tmux.var("#{alternate_on}"),
        "1",
        "not on the alternate screen"
    );
    screen
}

#[test]
fn top_fits_80x24_and_200x50_terminals_resizes_and_quits_on_q_and_ctrl_c() {
    let dir = tempfile::tempdir().unwrap();
    let (_agent, socket) = start_agent(dir.path());
    // The shell says how `vigil top` exited, on the screen it left behind.
    let top = format!(
        "{} top --socket {socket} --refresh 200ms; echo \"vigil top exited: $?\"; sleep 60",
        vigil_bin().display()
    );
    for (w, h, quit) in [(80, 24, "q"), (200, 50, "C-c")] {
        let tmux = Tmux::new(&format!("top{w}"));
        tmux.run(&[
            "new-session",
            "-d",
            "-s",
            "top",
            "-x",
            &w.to_string(),
            "-y",
            &h.to_string(),
            &top,
        ]);
        let screen = assert_top_fits(&tmux, w, h);
        if w == 200 {
            // The big terminal has room for rows the small one cuts.
            assert!(
                screen.lines().filter(|l| !l.trim().is_empty()).count() > 30,
                "{screen}"
            );
            tmux.run(&["resize-window", "-t", "top", "-x", "100", "-y", "30"]);
            assert_top_fits(&tmux, 100, 30);
        }
        tmux.run(&["send-keys", "-t", "top", quit]);
        let mut after = String::new();
        let deadline = Instant::now() + Duration::from_secs(10);
        while !after.contains("vigil top exited: ") {
            assert!(
                Instant::now() < deadline,
                "{w}x{h}: still running after {quit}:\n{after}"
            );
            std::thread::sleep(Duration::from_millis(100));
            after = tmux.screen();
        }
        assert!(
            after.contains("vigil top exited: 0"),
            "after {quit}:\n{after}"
        );
        assert_eq!(
            tmux.var("#{alternate_on}"),
            "0",
            "the terminal was not restored after {quit}"
        );
    }
}

#[test]
fn top_without_a_terminal_prints_plain_frames_and_says_what_is_missing() {
    let alone = Command::new(vigil_bin())
        .args([
            "top",
            "--socket",
            "/nonexistent/agent.sock",
            "--count",
            "2",
            "--refresh",
            "200ms",
        ])
        .env("COLUMNS", "90")
        .env("LINES", "30")
        .output()
        .unwrap();
    assert!(
        alone.status.success(),
        "{}",
        String::from_utf8_lossy(&alone.stderr)
    );
    let text = String::from_utf8_lossy(&alone.stdout);
    assert!(
        !text.contains('\x1b'),
        "escape sequences in plain output: {text}"
    );
    assert_eq!(
        text.matches("vigil top | ").count(),
        2,
        "two frames: {text}"
    );
    assert!(text.lines().all(|l| l.chars().count() <= 90), "{text}");
    assert!(
        text.contains("agent: none on /nonexistent/agent.sock: no such socket"),
        "{text}"
    );
    for t in TOP_SECTIONS {
        assert!(text.contains(t), "no {t:?} in:\n{text}");
    }
}

/// Attached eBPF links among `pid`'s descriptors, from the kernel's fdinfo.
fn bpf_links(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fdinfo"))
        .map(|d| {
            d.filter_map(Result::ok)
                .filter(|e| std::fs::read_to_string(e.path()).is_ok_and(|t| t.contains("link_id:")))
                .count()
        })
        .unwrap_or(0)
}

#[test]
fn the_agent_reports_ready_reloading_and_stopping_the_systemd_way() {
    if !require_root("the_agent_reports_ready_reloading_and_stopping_the_systemd_way") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("agent.sock").display().to_string();
    let notify = vigil_tests::Notify::new();
    let mut child = notify
        .arm(
            agent_command()
                .args(["--interval", "1s", "--socket", &socket])
                .arg("--data-dir")
                .arg(dir.path().join("state"))
                .stdout(Stdio::null())
                .stderr(Stdio::null()),
        )
        .spawn()
        .expect("starting vigil agent");
    let ready = notify.wait_for("READY", "1", &mut child, Duration::from_secs(60));
    // At READY=1, with no retry: the probes are attached and the API answers.
    assert!(
        bpf_links(child.id()) >= 2,
        "probes attached at READY: {} links",
        bpf_links(child.id())
    );
    let stats = Command::new(vigil_bin())
        .args(["stats", "--socket", &socket, "--json"])
        .output()
        .unwrap();
    // The agent itself answers (its sample, or that the first is one interval away);
    // `vigil stats` falling back to reading the host would say "reading the host".
    let (out, err) = (
        String::from_utf8_lossy(&stats.stdout),
        String::from_utf8_lossy(&stats.stderr),
    );
    assert!(
        out.contains("\"source\":\"agent\"") || err.contains("no sample yet"),
        "the API answers at READY: {out} {err}"
    );
    assert!(
        ready
            .get("STATUS")
            .is_some_and(|s| s.contains("tracing the host")),
        "{ready:?}"
    );
    let pid = nix::unistd::Pid::from_raw(child.id() as i32);
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGHUP).unwrap();
    notify.wait_for("RELOADING", "1", &mut child, Duration::from_secs(30));
    let again = notify.wait_for("READY", "1", &mut child, Duration::from_secs(30));
    assert!(
        again.get("STATUS").is_some_and(|s| s.contains("reloaded")),
        "{again:?}"
    );
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM).unwrap();
    notify.wait_for("STOPPING", "1", &mut child, Duration::from_secs(30));
    let status = child.wait().unwrap();
    assert!(status.success(), "{status}");
}

/// `vigil health` (the Kubernetes manifests' probes): SERVING from a running agent;
/// from a stopped one (SIGSTOP: the socket accepts, nobody answers) and from none, a
/// reason and exit code 1, never a hang.
#[test]
fn health_says_serving_for_a_running_agent_and_why_not_otherwise() {
    let dir = tempfile::tempdir().unwrap();
    let (agent, socket) = start_agent(dir.path());
    let health = || {
        Command::new(vigil_bin())
            .args(["health", "--socket", &socket])
            .output()
            .unwrap()
    };
    let o = health();
    assert!(o.status.success(), "{o:?}");
    assert_eq!(String::from_utf8_lossy(&o.stdout).trim(), "SERVING");

    let pid = nix::unistd::Pid::from_raw(agent.0.id() as i32);
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGSTOP).unwrap();
    let o = health();
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGCONT).unwrap();
    assert_eq!(o.status.code(), Some(1), "{o:?}");
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains("unhealthy") && err.contains("did not answer"),
        "{err}"
    );
    let o = health();
    assert!(o.status.success(), "serving again after SIGCONT: {o:?}");

    drop(agent);
    let o = Command::new(vigil_bin())
        .args(["health", "--socket"])
        .arg(dir.path().join("none.sock"))
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(1), "{o:?}");
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("no agent answering"),
        "{o:?}"
    );
}
