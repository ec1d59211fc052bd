//! SLIs on the agent against a workload the test controls and bpftrace on the same
//! syscall at the same time.
use std::{
    io::{BufRead as _, BufReader},
    process::{Command, Stdio},
    time::Duration,
};

use vigil_tests::{agent_command, require_root, spawn_ready, KillOnDrop, Workload};

const WORKLOAD: &str = env!("CARGO_BIN_EXE_vigil-workload");

/// (good, total) of SLI `name` on the agent's /metrics.
fn sli(metrics: &str, name: &str) -> (u64, u64) {
    let out = Command::new("curl")
        .args(["-sf", &format!("http://{metrics}/metrics")])
        .output()
        .expect("curl");
    let text = String::from_utf8_lossy(&out.stdout);
    let value = |family: &str| {
        text.lines()
            .find(|l| l.starts_with(&format!("{family}{{sli=\"{name}\"}}")))
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|v| v.parse::<f64>().ok())
            .unwrap_or(0.0) as u64
    };
    (value("vigil_sli_good_total"), value("vigil_sli_total"))
}

/// The agent's newest sample time ("" before the first): it changes once per interval.
fn sample_time(socket: &str) -> String {
    let out = Command::new(vigil_tests::vigil_bin())
        .args(["stats", "--json", "--socket", socket])
        .output()
        .expect("vigil stats");
    serde_json::from_slice::<serde_json::Value>(&out.stdout)
        .map(|v| v["time"].to_string())
        .unwrap_or_default()
}

#[test]
fn a_latency_sli_counts_a_controlled_childs_fast_and_slow_calls_within_what_bpftrace_saw() {
    if !require_root(
        "a_latency_sli_counts_a_controlled_childs_fast_and_slow_calls_within_what_bpftrace_saw",
    ) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let sli_dir = dir.path().join("sli.d");
    std::fs::create_dir_all(&sli_dir).unwrap();
    std::fs::write(
        sli_dir.join("sleep.yaml"),
        "slis:\n  - name: nanosleep-fast\n    syscall_latency: {syscalls: [clock_nanosleep], under: 10ms}\n",
    )
    .unwrap();
    let socket = dir.path().join("agent.sock").display().to_string();
    let config = dir.path().join("agent.toml");
    std::fs::write(
        &config,
        format!(
            "interval = \"1s\"\nsocket = \"{socket}\"\ndata_dir = \"{}\"\nsli_dir = \"{}\"\nmetrics_listen = \"127.0.0.1:0\"\n\n[probes]\nretransmits = false\n\n[detect]\nenabled = false\n",
            dir.path().join("data").display(),
            sli_dir.display()
        ),
    )
    .unwrap();
    // The bound the agent counts from (the bucket edge at or below 10 ms), for bpftrace.
    let edge = vigil_agent::sli::effective_bound(10_000_000);
    vigil_agent::probes::tracefs::tracefs_root().expect("tracefs");
    let nr = vigil_agent::syscall_table::syscall_number("clock_nanosleep").expect("x86_64");
    let script = format!(
        "tracepoint:raw_syscalls:sys_enter /args->id == {nr}/ {{ @s[tid] = nsecs; }} \
         tracepoint:raw_syscalls:sys_exit /@s[tid]/ {{ $d = nsecs - @s[tid]; delete(@s[tid]); \
         if ($d < {edge}) {{ @good = count(); }} else {{ @bad = count(); }} }} \
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
    let (tx, lines) = std::sync::mpsc::channel();
    let out = bpftrace.0.stdout.take().unwrap();
    std::thread::spawn(move || {
        for l in BufReader::new(out).lines().map_while(Result::ok) {
            let _ = tx.send(l);
        }
    });
    loop {
        let l = lines
            .recv_timeout(Duration::from_secs(60))
            .expect("bpftrace ready");
        if l.trim() == "ready" {
            break;
        }
    }
    let mut cmd = agent_command();
    cmd.arg("--config")
        .arg(&config)
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    let (child, ready) = spawn_ready(&mut cmd, Duration::from_secs(60));
    let _agent = KillOnDrop(child);
    let metrics = ready["VIGIL_METRICS_LISTEN"].clone();
    // A first interval closed: the counters exist.
    vigil_tests::daemons::wait_until("the first interval", Duration::from_secs(30), || {
        !sample_time(&socket).is_empty()
    });
    let before = sli(&metrics, "nanosleep-fast");
    // The workload: 200 sleeps of 1 ms (good) and 60 of 30 ms (bad).
    let mut fast = Workload::spawn(WORKLOAD, &["sleep", "200", "1"]);
    let mut slow = Workload::spawn(WORKLOAD, &["sleep", "60", "30"]);
    fast.go();
    slow.go();
    fast.wait();
    slow.wait();
    // Two interval ends after the children exited: their calls are counted.
    for _ in 0..2 {
        let t = sample_time(&socket);
        vigil_tests::daemons::wait_until("an interval", Duration::from_secs(30), || {
            sample_time(&socket) != t
        });
    }
    let after = sli(&metrics, "nanosleep-fast");
    let _ = nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(bpftrace.0.id() as i32),
        nix::sys::signal::Signal::SIGINT,
    );
    let mut bt = String::new();
    while let Ok(l) = lines.recv_timeout(Duration::from_secs(30)) {
        bt.push_str(&l);
        bt.push('\n');
    }
    let map = |name: &str| {
        bt.lines()
            .find_map(|l| l.strip_prefix(&format!("@{name}: ")))
            .and_then(|v| v.trim().parse::<u64>().ok())
            .unwrap_or(0)
    };
    let (bt_good, bt_bad) = (map("good"), map("bad"));
    let good = after.0 - before.0;
    let bad = (after.1 - after.0) - (before.1 - before.0);
    println!("agent: good {good}, bad {bad}; bpftrace: good {bt_good}, bad {bt_bad}");
    // The child's calls at least; never more than bpftrace saw over a longer window.
    assert!(good >= 200 && bad >= 60, "good {good}, bad {bad}");
    assert!(
        good <= bt_good && bad <= bt_bad,
        "agent good {good} bad {bad}; bpftrace good {bt_good} bad {bt_bad}:\n{bt}"
    );
}

#[test]
fn the_collector_answers_each_slo_over_the_agents_sli_counts_and_names_a_refused_file() {
    if !require_root(
        "the_collector_answers_each_slo_over_the_agents_sli_counts_and_names_a_refused_file",
    ) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let slo_dir = dir.path().join("slo.d");
    std::fs::create_dir_all(&slo_dir).unwrap();
    let slo = |name: &str, hosts: &str| {
        format!(
            "apiVersion: openslo/v1\nkind: SLO\nmetadata:\n  name: {name}\n  annotations:\n    vigil.dev/hosts: \"{hosts}\"\nspec:\n  service: test\n  indicatorRef: nanosleep-fast\n  timeWindow:\n    - duration: 30d\n      isRolling: true\n  budgetingMethod: Occurrences\n  objectives:\n    - target: 0.99\n"
        )
    };
    std::fs::write(
        slo_dir.join("a.yaml"),
        format!(
            "{}---\n{}",
            slo("sleeps", "*"),
            slo("elsewhere", "no-such-host-*")
        ),
    )
    .unwrap();
    std::fs::write(
        slo_dir.join("b.yaml"),
        "apiVersion: openslo/v1\nkind: SLO\n",
    )
    .unwrap();
    let collector =
        vigil_tests::daemons::Collector::start(&["--slo-dir", slo_dir.to_str().unwrap()]);
    let sli_dir = dir.path().join("sli.d");
    std::fs::create_dir_all(&sli_dir).unwrap();
    std::fs::write(
        sli_dir.join("sleep.yaml"),
        "slis:\n  - name: nanosleep-fast\n    syscall_latency: {syscalls: [clock_nanosleep], under: 10ms}\n",
    )
    .unwrap();
    let socket = dir.path().join("agent.sock").display().to_string();
    let config = dir.path().join("agent.toml");
    std::fs::write(
        &config,
        format!(
            "interval = \"1s\"\ncollector = \"{}\"\nsocket = \"{socket}\"\ndata_dir = \"{}\"\nsli_dir = \"{}\"\n\n[probes]\nretransmits = false\n\n[detect]\nenabled = false\n",
            collector.addr,
            dir.path().join("data").display(),
            sli_dir.display()
        ),
    )
    .unwrap();
    let mut cmd = agent_command();
    cmd.arg("--config")
        .arg(&config)
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    let _agent = KillOnDrop(spawn_ready(&mut cmd, Duration::from_secs(60)).0);
    let mut fast = Workload::spawn(WORKLOAD, &["sleep", "200", "1"]);
    let mut slow = Workload::spawn(WORKLOAD, &["sleep", "60", "30"]);
    fast.go();
    slow.go();
    fast.wait();
    slow.wait();
    let slos = |c: &vigil_tests::daemons::Collector| -> Vec<serde_json::Value> {
        let out = Command::new(vigil_tests::vigil_bin())
            .args(["slo", "--json", "--collector", &c.addr])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains("b.yaml") && err.contains("refused"), "{err}");
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect()
    };
    vigil_tests::daemons::wait_until(
        "the child's calls at the collector",
        Duration::from_secs(60),
        || {
            slos(&collector).iter().any(|s| {
                s["name"] == "sleeps"
                    && s["good"].as_u64().unwrap_or(0) >= 200
                    && s["total"].as_u64().unwrap_or(0) - s["good"].as_u64().unwrap_or(0) >= 60
            })
        },
    );
    let all = slos(&collector);
    let s = all.iter().find(|s| s["name"] == "sleeps").unwrap();
    let (good, total) = (s["good"].as_f64().unwrap(), s["total"].as_f64().unwrap());
    assert_eq!(s["hosts_counted"], 1, "{s}");
    // Every event is within the shortest window yet: each window's burn rate is the
    // bad share over the share the objective allows.
    let expect = (total - good) / total / (1.0 - 0.99);
    for (w, r) in s["burn"].as_object().unwrap() {
        assert!(
            (r.as_f64().unwrap() - expect).abs() < 1e-9,
            "{w}: {r} vs {expect}"
        );
    }
    // At least 60 bad of at most a few hundred: far over 14.4x on 5m and 1h: pages.
    assert_eq!(s["page"], true, "{s}");
    let other = all.iter().find(|s| s["name"] == "elsewhere").unwrap();
    assert_eq!(
        (other["hosts_counted"].as_u64(), other["total"].as_u64()),
        (Some(0), Some(0))
    );
}
