//! SLIs on the agent against a workload the test controls and bpftrace on the same
//! syscall at the same time.
use std::{
    io::{BufRead as _, BufReader},
    process::{Command, Stdio},
    time::Duration,
};

use vigil_tests::{require_root, KillOnDrop, Workload};

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
    let (_agent, ready) = vigil_tests::agent_on(&config);
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
    let _agent = vigil_tests::agent_on(&config).0;
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

/// Sloth's error ratio for an events SLI over `window`: the error query (total - good)
/// over the total query, each a `sum(rate(...[window]))`.
fn sloth_error_ratio(sli: &str, window: &str) -> String {
    let rate = |family: &str| format!("sum(rate({family}{{sli=\"{sli}\"}}[{window}]))");
    format!(
        "(({total}) - ({good})) / ({total})",
        total = rate("vigil_sli_total"),
        good = rate("vigil_sli_good_total")
    )
}

#[test]
fn the_collectors_burn_rates_equal_what_prometheus_computes_with_sloths_promql_and_the_page_goes_to_alertmanager(
) {
    if !require_root("the_collectors_burn_rates_equal_what_prometheus_computes_with_sloths_promql_and_the_page_goes_to_alertmanager") {
        return;
    }
    const TARGET: f64 = 0.99;
    let dir = tempfile::tempdir().unwrap();
    let slo_dir = dir.path().join("slo.d");
    std::fs::create_dir_all(&slo_dir).unwrap();
    let slo_file = slo_dir.join("fsync.yaml");
    std::fs::write(
        &slo_file,
        format!("apiVersion: openslo/v1\nkind: SLO\nmetadata:\n  name: fsync\nspec:\n  service: storage\n  indicatorRef: fsync-fast\n  timeWindow:\n    - duration: 30d\n      isRolling: true\n  budgetingMethod: Occurrences\n  objectives:\n    - target: {TARGET}\n"),
    )
    .unwrap();
    let mut receiver = vigil_tests::peers::Receiver::start();
    let am = vigil_tests::peers::Alertmanager::start(&receiver.url);
    let collector_metrics = format!("127.0.0.1:{}", vigil_tests::free_port());
    let collector = vigil_tests::daemons::Collector::start(&[
        "--slo-dir",
        slo_dir.to_str().unwrap(),
        "--alertmanager",
        &am.url,
        "--slo-evaluation-interval",
        "1s",
        "--metrics-listen",
        &collector_metrics,
    ]);
    // The SLI: fdatasync under 1 ms. Nothing else on the host calls fdatasync once the
    // agent's own spool does not sync (fsync = "never"); the collector's store calls
    // fsync. So the counters move only with the child's calls and start at 0.
    let sli_dir = dir.path().join("sli.d");
    std::fs::create_dir_all(&sli_dir).unwrap();
    std::fs::write(
        sli_dir.join("fsync.yaml"),
        "slis:\n  - name: fsync-fast\n    syscall_latency: {syscalls: [fdatasync], under: 1ms}\n",
    )
    .unwrap();
    let metrics = format!("127.0.0.1:{}", vigil_tests::free_port());
    let config = dir.path().join("agent.toml");
    std::fs::write(
        &config,
        format!(
            "interval = \"1s\"\ncollector = \"{}\"\nsocket = \"{}\"\ndata_dir = \"{}\"\nsli_dir = \"{}\"\nmetrics_listen = \"{metrics}\"\n\n[spool]\nfsync = \"never\"\n\n[probes]\nretransmits = false\n\n[detect]\nenabled = false\n",
            collector.addr,
            dir.path().join("agent.sock").display(),
            dir.path().join("data").display(),
            sli_dir.display()
        ),
    )
    .unwrap();
    let _agent = vigil_tests::agent_on(&config).0;
    let prometheus = vigil_tests::peers::Prometheus::start(&[("vigil-agent", &metrics)]);
    // Prometheus has the counters at 0 before the child's first call.
    vigil_tests::daemons::wait_until(
        "Prometheus's first sample of the SLI",
        Duration::from_secs(60),
        || {
            prometheus
                .scalar("vigil_sli_total{sli=\"fsync-fast\"}")
                .is_some()
        },
    );
    assert_eq!(
        prometheus.scalar("max_over_time(vigil_sli_total{sli=\"fsync-fast\"}[1h])"),
        Some(0.0),
        "something besides the child called fdatasync"
    );
    // The workload: 40 fdatasyncs of a clean file (tens of microseconds: good) and 12
    // after writing 32 MiB (milliseconds: bad), 23 % bad: over the page's 14.4 x 1 %.
    let file = dir.path().join("fsync.data");
    let file = file.to_str().unwrap();
    let mut slow = Workload::spawn(WORKLOAD, &["fdatasync", "12", "33554432", file]);
    slow.go();
    slow.wait();
    let mut fast = Workload::spawn(WORKLOAD, &["fdatasync", "40", "0", file]);
    fast.go();
    fast.wait();
    // The same final counts on the agent, in Prometheus and at the collector.
    let (good, total) = {
        let mut last = (0, 0);
        vigil_tests::daemons::wait_until(
            "the child's calls on the agent's /metrics",
            Duration::from_secs(30),
            || {
                last = sli(&metrics, "fsync-fast");
                last.1 >= 52
            },
        );
        last
    };
    let bad = total - good;
    println!("agent: good {good}, bad {bad}");
    assert!(bad >= 1 && good >= 1, "good {good}, bad {bad}");
    vigil_tests::daemons::wait_until(
        "Prometheus scraped the final counts",
        Duration::from_secs(30),
        || {
            prometheus.scalar("vigil_sli_total{sli=\"fsync-fast\"}") == Some(total as f64)
                && prometheus.scalar("vigil_sli_good_total{sli=\"fsync-fast\"}")
                    == Some(good as f64)
        },
    );
    let slo = || -> serde_json::Value {
        let out = Command::new(vigil_tests::vigil_bin())
            .args(["slo", "--json", "--collector", &collector.addr])
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
            .find(|s| s["name"] == "fsync")
            .unwrap_or_default()
    };
    vigil_tests::daemons::wait_until(
        "the collector stored the final counts",
        Duration::from_secs(30),
        || {
            let s = slo();
            s["good"].as_u64() == Some(good) && s["total"].as_u64() == Some(total)
        },
    );
    let s = slo();
    let mut compared = 0;
    for (w, r) in s["burn"].as_object().unwrap() {
        let ours = r.as_f64().unwrap();
        let ratio = prometheus
            .scalar(&sloth_error_ratio("fsync-fast", w))
            .unwrap_or_else(|| panic!("Prometheus has no error ratio over {w}"));
        let theirs = ratio / (1.0 - TARGET);
        println!("burn rate over {w}: collector {ours}, Prometheus {theirs}");
        assert!(
            (ours - theirs).abs() <= 1e-9 * theirs.abs().max(1.0),
            "{w}: collector {ours} vs Prometheus {theirs}"
        );
        compared += 1;
    }
    assert_eq!(compared, 7, "{s}");
    // Sloth's page alert expression, over the same counters.
    let over = |w: &str, factor: f64| {
        format!(
            "({} > ({factor} * {}))",
            sloth_error_ratio("fsync-fast", w),
            1.0 - TARGET
        )
    };
    let page = format!(
        "({} and {}) or ({} and {})",
        over("5m", 14.4),
        over("1h", 14.4),
        over("30m", 6.0),
        over("6h", 6.0)
    );
    let prom_pages = prometheus.query(&page)["data"]["result"]
        .as_array()
        .is_some_and(|r| !r.is_empty());
    assert_eq!(s["page"].as_bool(), Some(prom_pages), "{s}");
    assert!(prom_pages, "{bad} bad of {total} is over 14.4 x 1 %");

    // The page goes through the collector's routing to a real Alertmanager.
    let labels = [
        ("alertname", "SLOErrorBudgetBurn"),
        ("slo", "fsync"),
        ("slo_severity", "page"),
        ("severity", "critical"),
    ];
    receiver.wait_for(&labels, "firing");
    let in_am = am.get("/api/v2/alerts");
    assert!(
        in_am.as_array().unwrap().iter().any(|a| {
            a["labels"]["slo"] == "fsync"
                && a["annotations"]["runbook_url"]
                    .as_str()
                    .is_some_and(|r| r.ends_with("alerts.md#sloerrorbudgetburn"))
        }),
        "{in_am}"
    );
    let m = vigil_tests::peers::curl(&format!("http://{collector_metrics}/metrics")).unwrap();
    assert!(
        m.lines().any(|l| l.starts_with("vigil_slo_alert_firing{")
            && l.contains("slo=\"fsync\"")
            && l.contains("slo_severity=\"page\"")
            && l.rsplit(' ').next().and_then(|v| v.parse::<f64>().ok()) == Some(1.0)),
        "{m}"
    );
    // The SLO taken away: its alert resolves.
    std::fs::remove_file(&slo_file).unwrap();
    receiver.wait_for(&labels, "resolved");
}

#[test]
fn host_up_counts_the_time_a_killed_agent_was_down_as_bad() {
    if !require_root("host_up_counts_the_time_a_killed_agent_was_down_as_bad") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let slo_dir = dir.path().join("slo.d");
    std::fs::create_dir_all(&slo_dir).unwrap();
    std::fs::write(
        slo_dir.join("up.yaml"),
        "apiVersion: openslo/v1\nkind: SLO\nmetadata:\n  name: up\nspec:\n  indicatorRef: host-up\n  timeWindow:\n    - duration: 30d\n      isRolling: true\n  budgetingMethod: Occurrences\n  objectives:\n    - target: 0.999\n",
    )
    .unwrap();
    let collector =
        vigil_tests::daemons::Collector::start(&["--slo-dir", slo_dir.to_str().unwrap()]);
    let up = |c: &vigil_tests::daemons::Collector| -> serde_json::Value {
        let out = Command::new(vigil_tests::vigil_bin())
            .args(["slo", "--json", "--collector", &c.addr])
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
            .find(|s| s["name"] == "up")
            .unwrap_or_default()
    };
    let agent = vigil_tests::daemons::RealAgent::start(&collector, "up-1");
    agent.keeps_being_acked(&collector, 5);
    let before = up(&collector);
    let bad = |s: &serde_json::Value| s["total"].as_u64().unwrap() - s["good"].as_u64().unwrap();
    // Up since its first batch: nothing bad but the agent's own start.
    assert!(bad(&before) <= 2000, "{before}");
    // Down for 8 s (the workload: a host whose agent is gone), then back.
    let killed = std::time::Instant::now();
    let kept = agent.kill_keeping_dir();
    std::thread::sleep(Duration::from_secs(8));
    let down = killed.elapsed();
    let agent = vigil_tests::daemons::RealAgent::start_in(&collector, "up-1", kept);
    let batches = collector.batches_of("up-1");
    vigil_tests::daemons::wait_until("a batch after the restart", Duration::from_secs(30), || {
        collector.batches_of("up-1") > batches
    });
    let back = killed.elapsed();
    agent.keeps_being_acked(&collector, 2);
    let after = up(&collector);
    let lost = bad(&after) - bad(&before);
    println!(
        "down {down:?} (batches again after {back:?}): host-up bad time grew by {lost} ms; {after}"
    );
    // At least the time no agent ran; at most until its batches came back, plus the
    // interval the kill cut short.
    assert!(lost >= down.as_millis() as u64, "{lost} ms < {down:?}");
    assert!(
        lost <= back.as_millis() as u64 + 1000,
        "{lost} ms > {back:?} + 1 s"
    );
    assert_eq!(after["hosts_counted"], 1, "{after}");
}
