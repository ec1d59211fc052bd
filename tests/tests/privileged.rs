//! Privileged tests: the real `vigil` binary (or library) against the running kernel,
//! checked against workloads we control and the kernel's own counters.
use std::{
    io::{Read as _, Write as _},
    net::{SocketAddr, TcpListener, TcpStream},
    process::{Command, Stdio},
    time::Duration,
};

use serde_json::Value;
use vigil_agent::probes::{Probe, ProbeSettings, ProbeState, Probes};
use vigil_tests::{
    cgroup_id, in_netns, lines_of, require_root, tcp_retrans_segs, wait_for_line, KillOnDrop,
    NetnsPair, Vigil, Workload,
};

const WORKLOAD: &str = env!("CARGO_BIN_EXE_vigil-workload");

/// Lines of a child's output, read on a thread (the receiver ends when the pipe does).
fn json_lines(out: &str) -> Vec<Value> {
    out.lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
        .collect()
}

#[test]
fn syscall_latency_of_a_sleeping_child() {
    if !require_root("syscall_latency_of_a_sleeping_child") {
        return;
    }
    let mut child = Workload::spawn(WORKLOAD, &["sleep", "500", "2"]);
    let pid = child.pid().to_string();
    let vigil = Vigil::start(&[
        "trace",
        "syscalls",
        "--pid",
        &pid,
        "--duration",
        "6s",
        "--json",
    ]);
    child.go();
    child.wait();
    let out = vigil.finish();
    let report: Value =
        serde_json::from_str(out.trim()).unwrap_or_else(|e| panic!("not JSON ({e}): {out}"));
    let rows = report["syscalls"].as_array().expect("syscalls array");
    let sleeps: Vec<&Value> = rows
        .iter()
        .filter(|r| matches!(r["name"].as_str(), Some("clock_nanosleep" | "nanosleep")))
        .collect();
    assert!(!sleeps.is_empty(), "no nanosleep in {out}");
    let count: u64 = sleeps
        .iter()
        .map(|r| r["count"].as_u64().expect("count"))
        .sum();
    // The child makes exactly 500 sleeps and the filter admits only the child.
    assert_eq!(count, 500, "nanosleep count in {out}");
    for r in &sleeps {
        let p50 = r["p50_ns"].as_u64().expect("p50_ns");
        assert!(
            (2_000_000..=4_000_000).contains(&p50),
            "p50 {p50} ns not in [2 ms, 4 ms]: {r}"
        );
        let (p90, p99, max) = (
            r["p90_ns"].as_u64().unwrap(),
            r["p99_ns"].as_u64().unwrap(),
            r["max_ns"].as_u64().unwrap(),
        );
        assert!(
            p50 <= p90 && p90 <= p99 && p99 <= max,
            "percentiles out of order: {r}"
        );
        assert!(
            r["total_ns"].as_u64().unwrap() >= 2_000_000 * r["count"].as_u64().unwrap(),
            "total below 2 ms per call: {r}"
        );
    }
    // vigil's own bpf() calls come from another process: the pid filter must drop them.
    assert!(
        rows.iter().all(|r| r["name"] != "bpf"),
        "another process's syscalls leaked through the pid filter: {out}"
    );
    assert_eq!(report["lost_events"], 0, "{out}");
}

#[test]
fn slow_syscalls_are_events_with_pid_comm_and_cgroup() {
    if !require_root("slow_syscalls_are_events_with_pid_comm_and_cgroup") {
        return;
    }
    let mut child = Workload::spawn(WORKLOAD, &["sleep", "5", "30"]);
    let pid = child.pid();
    let vigil = Vigil::start(&[
        "trace",
        "slow-syscalls",
        "--threshold",
        "20ms",
        "--pid",
        &pid.to_string(),
        "--duration",
        "3s",
        "--json",
    ]);
    let expected_cgroup = cgroup_id(pid);
    child.go();
    child.wait();
    let lines = json_lines(&vigil.finish());
    let (summary, events) = lines.split_last().expect("a summary line");
    assert_eq!(events.len(), 5, "one event per 30 ms sleep: {lines:?}");
    for e in events {
        assert_eq!(e["pid"], pid, "{e}");
        assert_eq!(e["tid"], pid, "{e}");
        assert_eq!(e["comm"], "vigil-workload", "{e}");
        assert!(
            matches!(e["syscall"].as_str(), Some("clock_nanosleep" | "nanosleep")),
            "{e}"
        );
        assert!(e["latency_ns"].as_u64().unwrap() >= 30_000_000, "{e}");
        assert_eq!(e["cgroup_id"], expected_cgroup, "{e}");
    }
    assert_eq!(summary["slow_syscalls"], 5, "{summary}");
    assert_eq!(summary["lost_events"], 0, "{summary}");
    // Times: RFC 3339 UTC text and nanoseconds, the same instant (checked with date(1)).
    for e in events {
        let ns = e["time_unix_ns"].as_i64().expect("time_unix_ns");
        let date = Command::new("date")
            .args([
                "-u",
                "-d",
                &format!("@{}", ns / 1_000_000_000),
                "+%Y-%m-%dT%H:%M:%S",
            ])
            .output()
            .unwrap();
        let text = e["time"].as_str().unwrap();
        assert_eq!(
            &text[..19],
            String::from_utf8_lossy(&date.stdout).trim(),
            "{e}"
        );
        assert_eq!(&text[19..], format!(".{:09}Z", ns % 1_000_000_000), "{e}");
    }

    // The table a person reads: every event line starts with the RFC 3339 time.
    let mut child = Workload::spawn(WORKLOAD, &["sleep", "2", "30"]);
    let vigil = Vigil::start(&[
        "trace",
        "slow-syscalls",
        "--threshold",
        "20ms",
        "--pid",
        &child.pid().to_string(),
        "--duration",
        "2s",
    ]);
    child.go();
    child.wait();
    let out = vigil.finish();
    let rows: Vec<&str> = out.lines().filter(|l| l.contains("sleep")).collect();
    assert_eq!(rows.len(), 2, "{out}");
    for row in rows {
        let time = row.split_whitespace().next().unwrap();
        assert!(vigil_tests::is_rfc3339_utc(time), "{row}");
    }
}

#[test]
fn slow_syscall_rate_limit_is_counted_not_silent() {
    if !require_root("slow_syscall_rate_limit_is_counted_not_silent") {
        return;
    }
    // 40 sleeps of 2 ms against a 1 ms threshold and a limit of 5 events per CPU per
    // second: the run lasts ~0.1 s, so at most 5 per CPU get through, and everything
    // else must show up as rate-limited.
    let mut child = Workload::spawn(WORKLOAD, &["sleep", "40", "2"]);
    let pid = child.pid().to_string();
    let vigil = Vigil::start(&[
        "trace",
        "slow-syscalls",
        "--threshold",
        "1ms",
        "--pid",
        &pid,
        "--rate-limit",
        "5",
        "--duration",
        "3s",
        "--json",
    ]);
    child.go();
    child.wait();
    let lines = json_lines(&vigil.finish());
    let (summary, events) = lines.split_last().expect("a summary line");
    let sent = summary["slow_syscalls"].as_u64().unwrap();
    let limited = summary["rate_limited"].as_u64().unwrap();
    assert_eq!(sent as usize, events.len());
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get()) as u64;
    assert!(sent >= 5 && sent <= 5 * cpus, "sent {sent}: {summary}");
    assert_eq!(
        sent + limited,
        40,
        "every slow sleep is either sent or counted: {summary}"
    );
}

#[test]
fn tcp_retransmits_match_bpftrace_and_the_kernel_counter() {
    if !require_root("tcp_retransmits_match_bpftrace_and_the_kernel_counter") {
        return;
    }
    check_retransmits("rt4", NetnsPair::ADDR_A, NetnsPair::ADDR_B);
}

#[test]
fn tcp_retransmits_over_ipv6() {
    if !require_root("tcp_retransmits_over_ipv6") {
        return;
    }
    check_retransmits("rt6", NetnsPair::ADDR6_A, NetnsPair::ADDR6_B);
}

/// A lossy transfer from `addr_a` (namespace a) to `addr_b` (namespace b): vigil's
/// retransmit events against bpftrace on the same tracepoint and the kernel's counter.
fn check_retransmits(tag: &str, addr_a: &'static str, addr_b: &'static str) {
    const PORT: u16 = 5555;
    const BYTES: usize = 16 << 20;
    let net = NetnsPair::new(tag);
    let ip_b: std::net::IpAddr = addr_b.parse().expect("address b");
    // Drop ~5 % of the data segments arriving at b: a retransmits them.
    net.nft(&net.b, &format!(
        "table inet vigil_test {{\n chain input {{\n type filter hook input priority 0; policy accept;\n \
         tcp dport {PORT} numgen random mod 100 < 5 drop\n }}\n}}\n"
    ));

    // bpftrace, like vigil, needs tracefs; vigil mounts it when missing, bpftrace doesn't.
    vigil_agent::probes::tracefs::tracefs_root().expect("tracefs");
    // An independent witness on the same tracepoint.
    let script = format!(
        "tracepoint:tcp:tcp_retransmit_skb /args->dport == {PORT} || args->sport == {PORT}/ {{ @n = count(); }} \
         BEGIN {{ printf(\"ready\\n\"); }}"
    );
    let mut bpftrace = KillOnDrop(
        Command::new("stdbuf")
            .args(["-oL", "bpftrace", "-e", &script])
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("starting bpftrace (cargo xtask setup installs it)"),
    );
    let bt_lines = lines_of(bpftrace.0.stdout.take().expect("stdout"));
    wait_for_line(&bt_lines, "ready", Duration::from_secs(60));

    let vigil = Vigil::start(&["trace", "retransmits", "--json"]);

    let before_a = in_netns(&net.a, tcp_retrans_segs).join().expect("snmp a");
    let before_b = in_netns(&net.b, tcp_retrans_segs).join().expect("snmp b");
    let (listening_tx, listening) = std::sync::mpsc::channel();
    let server = in_netns(&net.b, move || {
        let listener = TcpListener::bind((ip_b, PORT)).expect("bind in b");
        let _ = listening_tx.send(());
        let (mut conn, _) = listener.accept().expect("accept");
        conn.set_read_timeout(Some(Duration::from_secs(60)))
            .expect("read timeout");
        let mut buf = vec![0u8; 64 * 1024];
        let mut total = 0usize;
        loop {
            match conn.read(&mut buf).expect("read") {
                0 => break total,
                n => total += n,
            }
        }
    });
    listening
        .recv_timeout(Duration::from_secs(30))
        .expect("the server listening in b");
    let client = in_netns(&net.a, move || {
        let addr = SocketAddr::new(ip_b, PORT);
        let mut conn = TcpStream::connect_timeout(&addr, Duration::from_secs(10)).expect("connect");
        let local = conn.local_addr().expect("local addr");
        conn.set_write_timeout(Some(Duration::from_secs(60)))
            .expect("write timeout");
        conn.set_read_timeout(Some(Duration::from_secs(60)))
            .expect("read timeout");
        let chunk = vec![0x5au8; 64 * 1024];
        for _ in 0..BYTES / chunk.len() {
            conn.write_all(&chunk).expect("write");
        }
        conn.shutdown(std::net::Shutdown::Write).expect("shutdown");
        let mut rest = Vec::new();
        let _ = conn.read_to_end(&mut rest);
        local
    });
    let local = client.join().expect("client");
    assert_eq!(
        server.join().expect("server"),
        BYTES,
        "the transfer must complete"
    );
    let after_a = in_netns(&net.a, tcp_retrans_segs).join().expect("snmp a");
    let after_b = in_netns(&net.b, tcp_retrans_segs).join().expect("snmp b");

    // Every retransmit is in the ring buffer by now (the kernel writes it at the
    // retransmit, before the transfer can end); `vigil trace` drains it on SIGINT.
    let lines = json_lines(&vigil.interrupt());
    let _ = nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(bpftrace.0.id() as i32),
        nix::sys::signal::Signal::SIGINT,
    );
    let mut bt_text = Vec::new();
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while let Ok(line) =
        bt_lines.recv_timeout(deadline.saturating_duration_since(std::time::Instant::now()))
    {
        bt_text.push(line);
    }
    // Its stdout can close a moment before the process is reapable: poll for the exit.
    while bpftrace.0.try_wait().expect("bpftrace status").is_none() {
        if std::time::Instant::now() > deadline {
            let _ = bpftrace.0.kill();
            panic!("bpftrace did not exit within 30 s of SIGINT; output: {bt_text:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let status = bpftrace.0.wait().expect("bpftrace exit");
    assert!(
        status.success() || status.code().is_none(),
        "bpftrace failed: {status}"
    );
    let bpftrace_count: u64 = bt_text
        .iter()
        .find_map(|l| l.strip_prefix("@n: "))
        .map_or(0, |n| n.trim().parse().expect("bpftrace count"));

    let (summary, events) = lines.split_last().expect("a summary line");
    let ours: Vec<&Value> = events
        .iter()
        .filter(|e| e["sport"] == PORT || e["dport"] == PORT)
        .collect();
    for e in &ours {
        let forward = e["saddr"] == addr_a
            && e["sport"] == local.port()
            && e["daddr"] == addr_b
            && e["dport"] == PORT;
        let reverse = e["saddr"] == addr_b
            && e["sport"] == PORT
            && e["daddr"] == addr_a
            && e["dport"] == local.port();
        assert!(
            forward || reverse,
            "retransmit of another connection: {e} (ours: {local} <-> {addr_b} port {PORT})"
        );
        assert!(e["state"].is_string(), "{e}");
    }
    let n = ours.len() as u64;
    let kernel = (after_a - before_a) + (after_b - before_b);
    eprintln!(
        "retransmits: vigil {n}, bpftrace {bpftrace_count}, kernel RetransSegs delta {kernel}"
    );
    assert!(
        n > 0,
        "5 % loss over {BYTES} bytes must cause retransmits (kernel counted {kernel})"
    );
    let diff = n.abs_diff(bpftrace_count) as f64;
    assert!(
        diff <= 0.10 * bpftrace_count as f64,
        "vigil {n} vs bpftrace {bpftrace_count}: more than 10 % apart"
    );
    assert!(
        n <= kernel,
        "vigil saw {n} retransmits, more than the kernel's RetransSegs delta {kernel}"
    );
    assert_eq!(summary["lost_events"], 0, "{summary}");
    assert!(summary["retransmits"].as_u64().unwrap() >= n, "{summary}");
}

#[test]
fn a_probe_that_cannot_attach_leaves_the_others_working() {
    if !require_root("a_probe_that_cannot_attach_leaves_the_others_working") {
        return;
    }
    let settings = ProbeSettings {
        filter_pid: Some(std::process::id()),
        retransmits: Some(("tcp".into(), "vigil_no_such_tracepoint".into())),
        ..Default::default()
    };
    let probes =
        Probes::load(&settings).expect("the object loads even though one probe can't attach");
    match probes.state(Probe::TcpRetransmit) {
        ProbeState::Off(e) => {
            let why = vigil_agent::probes::error_chain(e);
            assert!(
                why.contains("vigil_no_such_tracepoint"),
                "the reason names the tracepoint: {why}"
            );
        }
        other => panic!("the retransmit probe should be off, is {other:?}"),
    }
    assert!(
        probes.is_on(Probe::SyscallLatency),
        "syscall probe: {:?}",
        probes.state(Probe::SyscallLatency)
    );
    for _ in 0..100 {
        // SAFETY: no arguments, no side effects.
        unsafe { libc::syscall(libc::SYS_getppid) };
    }
    let latency = probes.syscall_latency().expect("reading latency");
    let getppid = latency
        .get(&(libc::SYS_getppid as u32))
        .expect("getppid recorded");
    // Only this thread calls getppid in this process.
    assert_eq!(getppid.count, 100);
}

#[test]
fn ring_buffer_overflow_is_counted() {
    if !require_root("ring_buffer_overflow_is_counted") {
        return;
    }
    // A 4 KiB ring buffer that nobody reads, a threshold every syscall passes, and no
    // rate limit: after the buffer fills, each further slow syscall must be counted
    // as lost, so sent + lost equals exactly the syscalls made.
    let settings = ProbeSettings {
        filter_pid: None,
        slow_threshold: Some(Duration::ZERO),
        slow_events_per_sec: u64::MAX,
        retransmits: None,
        ring_buffer_bytes: 4096,
        ..Default::default()
    };
    let mut child = Workload::spawn(WORKLOAD, &["getppid", "1000"]);
    let settings = ProbeSettings {
        filter_pid: Some(child.pid()),
        ..settings
    };
    let probes = Probes::load(&settings).expect("load");
    child.go();
    child.wait();
    let counters = probes.counters().expect("counters");
    let timed: u64 = probes
        .syscall_latency()
        .expect("latency")
        .values()
        .map(|h| h.count)
        .sum();
    assert!(
        timed >= 1000,
        "the child's 1000 getppid calls were timed: {timed}"
    );
    assert!(
        counters.slow_syscall_ringbuf_full > 0,
        "a 4 KiB buffer can't hold 1000 events: {counters:?}"
    );
    assert!(counters.slow_syscall_sent <= 4096 / 56, "{counters:?}");
    assert_eq!(
        counters.slow_syscall_sent + counters.slow_syscall_ringbuf_full,
        timed,
        "every timed syscall is either delivered or counted lost: {counters:?}"
    );
}

/// The eBPF programs report a bad configuration through aya-log, and the records arrive
/// in the daemon's log (tracing, target `ebpf`). The process probe attached without its
/// task_struct offsets is that configuration: each exec is dropped, said so by the
/// kernel side, instead of being sent with every field zero.
#[test]
fn a_probe_with_a_bad_configuration_says_so_through_aya_log() {
    if !require_root("a_probe_with_a_bad_configuration_says_so_through_aya_log") {
        return;
    }
    let mut child = KillOnDrop(
        Command::new(vigil_tests::daemon_bin("bench"))
            .args(["hold-probes", "--unset-task-layout"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("vigil-bench hold-probes"),
    );
    let lines = lines_of(child.0.stderr.take().expect("stderr"));
    // Attached once it says what it traces.
    while !lines
        .recv_timeout(Duration::from_secs(60))
        .expect("vigil-bench hold-probes says it is tracing")
        .starts_with("vigil: tracing")
    {}
    // Execs until the kernel's record shows up (the first one suffices; a few more
    // only cover a record still in flight).
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    let seen = loop {
        Command::new("/bin/true").status().expect("/bin/true");
        match lines.recv_timeout(Duration::from_millis(200)) {
            Ok(line) if line.contains("TASK_LAYOUT unset") => break Some(line),
            Ok(_) | Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {}
            Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => break None,
        }
        if std::time::Instant::now() > deadline {
            break None;
        }
    };
    let line = seen.expect("the process probe's aya-log record in the log");
    assert!(line.contains("ERROR") && line.contains("ebpf:"), "{line}");
}
