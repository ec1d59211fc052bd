//! Alerts against real peers: promtool checks and unit-tests the Prometheus form of
//! the built-in rules, and a real agent raises, keeps (across a restart) and resolves
//! an alert on a filesystem whose fill the test controls.
use std::{
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use serde_json::Value;
use vigil_tests::peers::{Alertmanager, Receiver};
use vigil_tests::{
    agent_command, require_root, spawn_ready, vigil_bin, vigil_json, vigil_stdout, KillOnDrop,
};

use vigil_tests::require_bin as require;

fn run_ok(cmd: &mut Command) -> String {
    let out = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "{cmd:?} failed:\n{text}");
    text
}

const RUNBOOK: &str = "/usr/share/doc/vigil-agent/runbooks/alerts.md";

/// promtool unit tests for the generated rules: the forecast (NodeFilesystemSpaceFillingUp,
/// both severities) and `for` with hysteresis (NodeMemoryHighUtilization: raised above
/// 90 % after 15 minutes, still firing at 88 %, resolved at 80 %).
fn unit_tests() -> String {
    let fs = r#"device="/dev/vdb",fstype="ext4",mountpoint="/data",instance="h:9471",job="vigil""#;
    let fs_labels =
        r#"device: /dev/vdb, fstype: ext4, mountpoint: /data, instance: "h:9471", job: vigil"#;
    let fill = |sev: &str, pct: &str, within: &str| {
        format!(
            "          - exp_labels: {{severity: {sev}, {fs_labels}}}\n            exp_annotations:\n              summary: \"Filesystem /data has {pct} % space left and is predicted to run out within {within}.\"\n              runbook_url: \"{RUNBOOK}#nodefilesystemspacefillingup\"\n"
        )
    };
    let mem = |pct: &str| {
        format!(
            "          - exp_labels: {{severity: warning, instance: \"h:9471\", job: vigil}}\n            exp_annotations:\n              summary: \"Memory is {pct} % used.\"\n              runbook_url: \"{RUNBOOK}#nodememoryhighutilization\"\n"
        )
    };
    format!(
        "rule_files: [rules.yml]\nevaluation_interval: 1m\ntests:\n\
         # 19 % free, falling 5 per minute of 10000: empty after 380 minutes.\n\
         \x20 - interval: 1m\n    input_series:\n\
         \x20     - series: 'node_filesystem_avail_bytes{{{fs}}}'\n        values: '1900-5x300'\n\
         \x20     - series: 'node_filesystem_size_bytes{{{fs}}}'\n        values: '10000+0x300'\n\
         \x20   alert_rule_test:\n\
         \x20     - eval_time: 50m\n        alertname: NodeFilesystemSpaceFillingUp\n        exp_alerts: []\n\
         \x20     - eval_time: 190m\n        alertname: NodeFilesystemSpaceFillingUp\n        exp_alerts:\n{}\
         \x20     - eval_time: 210m\n        alertname: NodeFilesystemSpaceFillingUp\n        exp_alerts:\n{}{}\
         \x20 - interval: 1m\n    input_series:\n\
         \x20     - series: 'node_memory_MemAvailable_bytes{{instance=\"h:9471\",job=\"vigil\"}}'\n        values: '50x9 5x29 12x29 20x29'\n\
         \x20     - series: 'node_memory_MemTotal_bytes{{instance=\"h:9471\",job=\"vigil\"}}'\n        values: '100x119'\n\
         \x20   alert_rule_test:\n\
         \x20     - eval_time: 20m\n        alertname: NodeMemoryHighUtilization\n        exp_alerts: []\n\
         \x20     - eval_time: 35m\n        alertname: NodeMemoryHighUtilization\n        exp_alerts:\n{}\
         \x20     - eval_time: 60m\n        alertname: NodeMemoryHighUtilization\n        exp_alerts:\n{}\
         \x20     - eval_time: 80m\n        alertname: NodeMemoryHighUtilization\n        exp_alerts: []\n",
        fill("warning", "9.5", "24 hours"),
        fill("warning", "8.5", "24 hours"),
        fill("critical", "8.5", "4 hours"),
        mem("95"),
        mem("88"),
    )
}

#[test]
fn the_prometheus_form_of_the_built_in_rules_passes_promtool_check_and_its_unit_tests() {
    require("promtool");
    let dir = tempfile::tempdir().unwrap();
    let rules = run_ok(Command::new(vigil_bin()).args([
        "alerts",
        "rules",
        "--format",
        "prometheus",
        "--dir",
        dir.path().join("none").to_str().unwrap(),
    ]));
    std::fs::write(dir.path().join("rules.yml"), &rules).unwrap();
    let check = run_ok(
        Command::new("promtool")
            .args(["check", "rules"])
            .arg(dir.path().join("rules.yml")),
    );
    let table = String::from_utf8(
        Command::new(vigil_bin())
            .args(["alerts", "rules", "--dir", "/nonexistent"])
            .output()
            .unwrap()
            .stdout,
    )
    .unwrap();
    let n = table.lines().filter(|l| !l.starts_with(' ')).count();
    assert!(
        check.contains(&format!("SUCCESS: {n} rules found")),
        "{check} (the table has {n})"
    );
    std::fs::write(dir.path().join("test.yml"), unit_tests()).unwrap();
    let out = Command::new("promtool")
        .args(["test", "rules", "test.yml"])
        .current_dir(dir.path())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "promtool test rules:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    // The same tests fail against rules without the hysteresis: they can fail.
    let flat = rules.replace(r#"alertstate=\"firing\""#, r#"alertstate=\"never\""#);
    assert_ne!(flat, rules);
    std::fs::write(dir.path().join("rules.yml"), flat).unwrap();
    let out = Command::new("promtool")
        .args(["test", "rules", "test.yml"])
        .current_dir(dir.path())
        .output()
        .unwrap();
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        !out.status.success() && said.contains("time: 1h,"),
        "without hysteresis the 60-minute check should fail:\n{said}"
    );
}

#[test]
fn a_bad_alert_file_is_refused_with_file_line_and_reason() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("team.yaml"),
        "alerts:\n  - alert: NoRunbook\n    severity: warning\n    summary: s\n    when: [{metric: cpu.usage_percent, above: 1}]\n",
    )
    .unwrap();
    let out = Command::new(vigil_bin())
        .args(["alerts", "check", "--dir"])
        .arg(dir.path())
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.contains("team.yaml:2: alert NoRunbook: no `runbook`"),
        "{err}"
    );
}

/// A tmpfs the test fills: its free space is the truth the alert is about.
struct Scratch {
    dir: std::path::PathBuf,
}

impl Scratch {
    fn mount(dir: &std::path::Path) -> Self {
        std::fs::create_dir_all(dir).unwrap();
        run_ok(
            Command::new("mount")
                .args(["-t", "tmpfs", "-o", "size=64m", "vigil-alert-test"])
                .arg(dir),
        );
        Self {
            dir: dir.to_path_buf(),
        }
    }

    /// Fills the filesystem to `used` percent (statvfs says how much that is).
    fn fill_to(&self, used: u64) {
        let st = nix::sys::statvfs::statvfs(&self.dir).unwrap();
        let size = st.blocks() * st.fragment_size();
        let _ = std::fs::remove_file(self.dir.join("fill"));
        let bytes = size * used / 100;
        run_ok(
            Command::new("fallocate")
                .args(["-l", &bytes.to_string()])
                .arg(self.dir.join("fill")),
        );
        let st = nix::sys::statvfs::statvfs(&self.dir).unwrap();
        let avail = 100.0 * (st.blocks_available() * st.fragment_size()) as f64 / size as f64;
        assert!((avail - (100 - used) as f64).abs() < 2.0, "{avail}");
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.dir).status();
    }
}

fn alerts(socket: &str) -> Value {
    vigil_json(&["alerts", "--json", "--socket", socket])
}

/// The active alert on the scratch mount, if any.
fn scratch_alert<'a>(v: &'a Value, mount: &str) -> Option<&'a Value> {
    v["active"]
        .as_array()
        .unwrap()
        .iter()
        .find(|a| a["alert"] == "ScratchFilling" && a["labels"]["mountpoint"] == mount)
}

/// Waits until the agent has closed `n` more intervals (its published sample's time
/// moved on `n` times): the alert rules were evaluated at each.
fn intervals_pass(socket: &str, n: usize) {
    let sample_time = || {
        vigil_json(&["stats", "--json", "--socket", socket])["time_unix_ms"]
            .as_u64()
            .expect("the agent's sample time")
    };
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut last = sample_time();
    let mut passed = 0;
    while passed < n {
        assert!(
            Instant::now() < deadline,
            "the agent closed {passed} of {n} intervals within 60 s"
        );
        std::thread::sleep(Duration::from_millis(100));
        let t = sample_time();
        if t != last {
            (last, passed) = (t, passed + 1);
        }
    }
}

fn wait_until(what: &str, socket: &str, f: impl Fn(&Value) -> bool) -> Value {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let v = alerts(socket);
        if f(&v) {
            return v;
        }
        assert!(Instant::now() < deadline, "{what} within 60 s: {v:#}");
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// A real agent streaming to `collector` once a second, with one alert rule on a
/// tmpfs the test fills (ScratchFilling: under 50 % free for 1 s, cleared above 70 %).
struct ScratchAgent {
    // Unmounted before its directory goes.
    scratch: Scratch,
    _dir: tempfile::TempDir,
    mount: String,
    socket: String,
    config: std::path::PathBuf,
}

impl ScratchAgent {
    fn new(collector: &str, damping: &str) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let mount = dir.path().join("scratch");
        let scratch = Scratch::mount(&mount);
        let mount = mount.display().to_string();
        let alerts_dir = dir.path().join("alerts.d");
        std::fs::create_dir_all(&alerts_dir).unwrap();
        std::fs::write(
            alerts_dir.join("scratch.yaml"),
            "alerts:\n  - alert: ScratchFilling\n    severity: critical\n    summary: \"{{ $labels.mountpoint }} has {{ $value }} % left\"\n    runbook: https://runbooks.example/scratch\n    for: 1s\n    when:\n      - {metric: filesystem.avail_percent, below: 50, clear_above: 70}\n",
        )
        .unwrap();
        let socket = dir.path().join("agent.sock").display().to_string();
        let config = dir.path().join("agent.toml");
        std::fs::write(
            &config,
            format!(
                "interval = \"1s\"\ncollector = \"{collector}\"\nagent_id = \"alerting\"\nsocket = \"{socket}\"\ndata_dir = \"{}\"\nalerts_dir = \"{}\"\nalert_damping = \"{damping}\"\n\n[probes]\nsyscalls = false\nretransmits = false\n\n[detect]\nenabled = false\n",
                dir.path().join("data").display(),
                alerts_dir.display()
            ),
        )
        .unwrap();
        Self {
            scratch,
            _dir: dir,
            mount,
            socket,
            config,
        }
    }

    fn start(&self) -> KillOnDrop {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.log())
            .unwrap();
        let mut cmd = agent_command();
        cmd.arg("--config")
            .arg(&self.config)
            .stdout(Stdio::null())
            .stderr(log);
        KillOnDrop(spawn_ready(&mut cmd, Duration::from_secs(60)).0)
    }

    /// The agent's log (stderr), across restarts.
    fn log(&self) -> std::path::PathBuf {
        self.config.with_file_name("agent.log")
    }

    fn alerts_dir(&self) -> std::path::PathBuf {
        self.config.with_file_name("alerts.d")
    }

    /// The active ScratchFilling alert on our mount, if any, in an alerts answer.
    fn ours<'a>(&self, v: &'a Value) -> Option<&'a Value> {
        scratch_alert(v, &self.mount)
    }
}

#[test]
fn an_agent_raises_an_alert_on_a_filling_filesystem_keeps_it_across_a_restart_and_resolves_it_past_the_clear_bound(
) {
    if !require_root("an_agent_raises_an_alert_on_a_filling_filesystem_keeps_it_across_a_restart_and_resolves_it_past_the_clear_bound") {
        return;
    }
    let collector = vigil_tests::daemons::Collector::start(&[]);
    let s = ScratchAgent::new(&collector.addr, "1h");
    let (scratch, mount, socket) = (&s.scratch, s.mount.clone(), s.socket.clone());
    let agent = s.start();
    // A follower sees each change as it happens.
    let mut follow = Command::new(vigil_bin())
        .args(["alerts", "--follow", "--json", "--socket", &socket])
        .stdout(Stdio::piped())
        // It loses its agent at the restart below and says so.
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let v = wait_until("the rule loaded", &socket, |v| {
        v["rules"].as_u64().unwrap_or(0) > 30
    });
    assert!(scratch_alert(&v, &mount).is_none(), "empty: {v:#}");
    // A bad file on SIGHUP is refused: the rules that run stay (ScratchFilling among
    // them), the agent goes on.
    let rules = v["rules"].as_u64().unwrap();
    let bad = s.alerts_dir().join("zz-bad.yaml");
    std::fs::write(&bad, "alerts:\n  - alert: NoRunbook\n    severity: warning\n    summary: s\n    when: [{metric: cpu.usage_percent, above: 1}]\n").unwrap();
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(agent.0.id() as i32),
        nix::sys::signal::Signal::SIGHUP,
    )
    .unwrap();
    vigil_tests::daemons::wait_until("the bad file refused", Duration::from_secs(30), || {
        std::fs::read_to_string(s.log())
            .unwrap_or_default()
            .contains("SIGHUP: alert rules refused, keeping the")
    });
    let log = std::fs::read_to_string(s.log()).unwrap();
    assert!(
        log.contains("zz-bad.yaml:2: alert NoRunbook: no `runbook`"),
        "{log}"
    );
    assert_eq!(alerts(&socket)["rules"].as_u64(), Some(rules));
    std::fs::remove_file(&bad).unwrap();

    // 60 % used (40 % left): pending, then firing after `for`.
    scratch.fill_to(60);
    let v = wait_until("firing", &socket, |v| {
        scratch_alert(v, &mount).is_some_and(|a| a["state"] == "firing")
    });
    let a = scratch_alert(&v, &mount).unwrap().clone();
    let since = a["active_since"].clone();
    assert_eq!(a["severity"], "critical");
    assert_eq!(a["notify"], true);
    assert_eq!(a["runbook"], "https://runbooks.example/scratch");
    assert!(
        (38.0..42.0).contains(&a["value"].as_f64().unwrap()),
        "statvfs says 40 % left: {a}"
    );
    let summary = a["summary"].as_str().unwrap();
    assert!(
        summary.starts_with(&format!("{mount} has 3")) && summary.ends_with(" % left"),
        "{summary}"
    );

    // The collector has it too: the fleet view lists it as firing on this host.
    vigil_tests::daemons::wait_until(
        "the alert at the collector",
        Duration::from_secs(30),
        || {
            vigil_json(&["alerts", "--collector", &collector.addr, "--json"])["active"]
                .as_array()
                .unwrap()
                .iter()
                .any(|e| {
                    e["alert"] == "ScratchFilling"
                        && e["state"] == "firing"
                        && e["labels"]["mountpoint"] == mount
                        && e["agent_id"] == "alerting"
                })
        },
    );

    // A restart keeps it firing, same episode, nothing notified again.
    stop(agent);
    let agent = s.start();
    let v = wait_until("the state restored", &socket, |v| {
        scratch_alert(v, &mount).is_some()
    });
    let a = scratch_alert(&v, &mount).unwrap();
    assert_eq!(a["state"], "firing", "{v:#}");
    assert_eq!(
        a["active_since"], since,
        "the same episode after the restart"
    );
    // Two intervals later still no new change for it.
    intervals_pass(&socket, 2);
    let v = alerts(&socket);
    let changes: Vec<&Value> = v["recent"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["alert"] == "ScratchFilling" && e["labels"]["mountpoint"] == mount)
        .collect();
    assert!(
        changes.is_empty(),
        "restarted agent re-raised it: {changes:?}"
    );

    // 35 % used (65 % left): between the bounds, it keeps firing (hysteresis).
    scratch.fill_to(35);
    intervals_pass(&socket, 2);
    let v = alerts(&socket);
    assert_eq!(
        scratch_alert(&v, &mount).map(|a| a["state"].clone()),
        Some(Value::from("firing")),
        "{v:#}"
    );
    // 10 % used (90 % left): past the clear bound, resolved.
    scratch.fill_to(10);
    let v = wait_until("resolved", &socket, |v| scratch_alert(v, &mount).is_none());
    let resolved: Vec<&Value> = v["recent"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["alert"] == "ScratchFilling" && e["labels"]["mountpoint"] == mount)
        .collect();
    assert_eq!(resolved.len(), 1, "{resolved:?}");
    assert_eq!(resolved[0]["state"], "resolved");
    assert_eq!(resolved[0]["notify"], true);
    // The collector stored each change with the host's batches: the fleet view says it
    // fired (once, notified), and is no longer active.
    let fleet = |collector: &vigil_tests::daemons::Collector| {
        vigil_json(&["alerts", "--collector", &collector.addr, "--json"])
    };
    vigil_tests::daemons::wait_until(
        "the resolution at the collector",
        Duration::from_secs(30),
        || {
            fleet(&collector)["recent"]
                .as_array()
                .unwrap()
                .iter()
                .any(|e| e["alert"] == "ScratchFilling" && e["state"] == "resolved")
        },
    );
    let f = fleet(&collector);
    let ours: Vec<(&str, bool)> = f["recent"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["alert"] == "ScratchFilling" && e["labels"]["mountpoint"] == mount)
        .map(|e| (e["state"].as_str().unwrap(), e["notify"].as_bool().unwrap()))
        .collect();
    assert_eq!(
        ours,
        [("pending", false), ("firing", true), ("resolved", true)],
        "{f:#}"
    );
    assert!(
        f["recent"]
            .as_array()
            .unwrap()
            .iter()
            .all(|e| e["agent_id"] == "alerting"),
        "{f:#}"
    );
    assert!(
        !f["active"]
            .as_array()
            .unwrap()
            .iter()
            .any(|e| e["alert"] == "ScratchFilling" && e["labels"]["mountpoint"] == mount),
        "{f:#}"
    );
    stop(agent);
    let _ = follow.kill();
    let out = follow.wait_with_output().unwrap();
    // The follower (on the first agent) saw pending then firing, one JSON line each.
    let seen: Vec<String> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter(|e| e["alert"] == "ScratchFilling" && e["labels"]["mountpoint"] == mount)
        .map(|e| e["state"].as_str().unwrap_or("").to_string())
        .collect();
    assert_eq!(seen, ["pending", "firing"], "{seen:?}");
}

/// SIGTERM, as systemd stops it, and its exit.
fn stop(mut agent: KillOnDrop) {
    let _ = nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(agent.0.id() as i32),
        nix::sys::signal::Signal::SIGTERM,
    );
    let status = agent.0.wait().unwrap();
    assert!(status.success(), "{status}");
}

/// Whether a receiver payload carries `alert` on `mount` with `status`.
fn has(v: &Value, alert: &str, mount: &str, status: &str) -> bool {
    vigil_tests::peers::has(v, &[("alertname", alert), ("mountpoint", mount)], status)
}

/// Ends window `id` and waits for the firing notification it held back.
fn end_window_then_notified(receiver: &mut Receiver, collector: &str, id: &str, mount: &str) {
    let ended_at = Instant::now();
    let out = vigil_json(&["maintenance", "end", id, "--collector", collector, "--json"]);
    assert_eq!(out["state"], "expired", "{out}");
    let t = receiver.wait_for(
        &[("alertname", "ScratchFilling"), ("mountpoint", mount)],
        "firing",
    );
    assert!(t > ended_at, "notified before the window ended");
}

fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .unwrap()
        .trim()
        .to_string()
}

#[test]
fn an_agents_alert_reaches_a_webhook_through_a_real_alertmanager_and_a_maintenance_window_is_a_silence_there(
) {
    if !require_root("an_agents_alert_reaches_a_webhook_through_a_real_alertmanager_and_a_maintenance_window_is_a_silence_there") {
        return;
    }
    let mut receiver = Receiver::start();
    let am = Alertmanager::start(&receiver.url);
    let collector = vigil_tests::daemons::Collector::start(&["--alertmanager", &am.url]);
    // Damping of 1 s: the second episode below is notified, not held.
    let s = ScratchAgent::new(&collector.addr, "1s");
    let agent = s.start();

    // Fired on the agent: through the collector and Alertmanager to the receiver.
    s.scratch.fill_to(60);
    receiver.wait_for(
        &[("alertname", "ScratchFilling"), ("mountpoint", &s.mount)],
        "firing",
    );
    let payload = receiver
        .seen
        .iter()
        .find(|(_, v)| has(v, "ScratchFilling", &s.mount, "firing"))
        .unwrap()
        .1
        .clone();
    let a = payload["alerts"]
        .as_array()
        .unwrap()
        .iter()
        .find(|a| a["labels"]["alertname"] == "ScratchFilling")
        .unwrap();
    assert_eq!(a["labels"]["host"], hostname(), "{a:#}");
    assert_eq!(a["labels"]["agent_id"], "alerting");
    assert_eq!(a["labels"]["severity"], "critical");
    assert_eq!(a["labels"]["vigil_kind"], "alert");
    assert_eq!(
        a["annotations"]["runbook_url"],
        "https://runbooks.example/scratch"
    );
    // Resolved on the agent: Alertmanager sends the resolution too.
    s.scratch.fill_to(10);
    receiver.wait_for(
        &[("alertname", "ScratchFilling"), ("mountpoint", &s.mount)],
        "resolved",
    );

    // A maintenance window on this host is a real silence in Alertmanager.
    let out = vigil_json(&[
        "maintenance",
        "start",
        "--host",
        &hostname(),
        "--for",
        "1h",
        "--comment",
        "kernel upgrade",
        "--collector",
        &collector.addr,
        "--json",
    ]);
    let id = out["id"].as_str().unwrap().to_string();
    assert_eq!(out["kept_by"], "alertmanager", "{out}");
    let silence = am.get(&format!("/api/v2/silence/{id}"));
    assert_eq!(silence["status"]["state"], "active", "{silence:#}");
    assert_eq!(silence["comment"], "kernel upgrade");
    assert!(
        silence["createdBy"].as_str().unwrap().contains('@'),
        "{silence:#}"
    );
    let matchers: Vec<(String, String)> = silence["matchers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| {
            (
                m["name"].as_str().unwrap().into(),
                m["value"].as_str().unwrap().into(),
            )
        })
        .collect();
    assert!(
        matchers.contains(&("host".into(), hostname())),
        "{matchers:?}"
    );
    assert!(
        matchers.contains(&("vigil_kind".into(), "alert".into())),
        "{matchers:?}"
    );
    let listed = vigil_stdout(&[
        "maintenance",
        "list",
        "--json",
        "--collector",
        &collector.addr,
    ]);
    assert!(String::from_utf8_lossy(&listed).contains(&id));

    // It fires again during the window: Alertmanager has it, suppressed by the
    // silence, and the fleet view shows it silenced; nobody is notified.
    s.scratch.fill_to(60);
    vigil_tests::daemons::wait_until(
        "the alert suppressed in Alertmanager",
        Duration::from_secs(60),
        || {
            am.get("/api/v2/alerts")
                .as_array()
                .unwrap()
                .iter()
                .any(|a| {
                    a["labels"]["alertname"] == "ScratchFilling"
                        && a["labels"]["mountpoint"] == s.mount.as_str()
                        && a["status"]["state"] == "suppressed"
                        && a["status"]["silencedBy"]
                            .as_array()
                            .is_some_and(|s| s.iter().any(|x| x == id.as_str()))
                })
        },
    );
    let fleet = vigil_json(&["alerts", "--collector", &collector.addr, "--json"]);
    let ours = s.ours(&fleet).unwrap_or_else(|| panic!("{fleet:#}"));
    assert_eq!(ours["silenced_by"], id.as_str(), "{ours:#}");
    let firing_before = {
        receiver.drain();
        receiver
            .seen
            .iter()
            .filter(|(_, v)| has(v, "ScratchFilling", &s.mount, "firing"))
            .count()
    };
    assert_eq!(
        firing_before, 1,
        "only the first episode was notified: {:#?}",
        receiver.seen
    );

    // The window ends: the alert, still firing, is notified then.
    receiver.seen.clear();
    end_window_then_notified(&mut receiver, &collector.addr, &id, &s.mount);
    s.scratch.fill_to(10);
    stop(agent);
}

#[test]
fn without_alertmanager_the_collector_keeps_the_window_and_holds_the_webhook_until_it_ends() {
    if !require_root(
        "without_alertmanager_the_collector_keeps_the_window_and_holds_the_webhook_until_it_ends",
    ) {
        return;
    }
    let mut receiver = Receiver::start();
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("collector.toml");
    // Firing alerts are sent again every 2 s (so the end of the window shows quickly).
    std::fs::write(
        &config,
        format!(
            "[tls]\nmode = \"off\"\n[alerting]\nwebhook = \"{}\"\nresend = \"2s\"\n",
            receiver.url
        ),
    )
    .unwrap();
    let collector = vigil_tests::daemons::Collector::start(&["--config", config.to_str().unwrap()]);
    let s = ScratchAgent::new(&collector.addr, "1s");
    let agent = s.start();
    let out = vigil_json(&[
        "maintenance",
        "start",
        "--host",
        &hostname(),
        "--alert",
        "ScratchFilling",
        "--for",
        "1h",
        "--collector",
        &collector.addr,
        "--json",
    ]);
    let id = out["id"].as_str().unwrap().to_string();
    assert_eq!(
        (out["kept_by"].as_str(), out["state"].as_str()),
        (Some("collector"), Some("active")),
        "{out}"
    );

    s.scratch.fill_to(60);
    // Recorded and shown as silenced at the collector, counted, not sent.
    vigil_tests::daemons::wait_until(
        "the alert silenced at the collector",
        Duration::from_secs(60),
        || {
            collector.hosts()["collector"]["alerting"]["silenced"]
                .as_u64()
                .unwrap_or(0)
                >= 1
        },
    );
    let fleet = vigil_json(&["alerts", "--collector", &collector.addr, "--json"]);
    assert_eq!(
        s.ours(&fleet).map(|a| a["silenced_by"].clone()),
        Some(Value::from(id.as_str())),
        "{fleet:#}"
    );
    receiver.drain();
    assert!(
        !receiver
            .seen
            .iter()
            .any(|(_, v)| has(v, "ScratchFilling", &s.mount, "firing")),
        "notified during the window: {:#?}",
        receiver.seen
    );
    end_window_then_notified(&mut receiver, &collector.addr, &id, &s.mount);
    let all = String::from_utf8(vigil_stdout(&[
        "maintenance",
        "list",
        "--all",
        "--collector",
        &collector.addr,
    ]))
    .unwrap();
    assert!(all.contains(&id) && all.contains("expired"), "{all}");
    // The webhook's payload: the routed labels, the runbook.
    let (_, v) = receiver
        .seen
        .iter()
        .find(|(_, v)| has(v, "ScratchFilling", &s.mount, "firing"))
        .unwrap();
    let a = &v["alerts"][0];
    assert_eq!(a["labels"]["host"], hostname(), "{v:#}");
    assert_eq!(
        a["annotations"]["runbook_url"],
        "https://runbooks.example/scratch"
    );
    s.scratch.fill_to(10);
    receiver.wait_for(
        &[("alertname", "ScratchFilling"), ("mountpoint", &s.mount)],
        "resolved",
    );
    stop(agent);
}

/// getppid calls in the agent's last second (its syscall latency window).
fn getppid_calls(socket: &str) -> u64 {
    vigil_json(&["syscalls", "--window", "1s", "--json", "--socket", socket])["syscalls"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|r| r["name"] == "getppid")
        .map(|r| r["count"].as_u64().unwrap_or(0))
        .sum()
}

#[test]
fn over_its_cpu_budget_the_agent_sheds_syscall_latency_alerts_and_restores_it_when_there_is_room() {
    if !require_root("over_its_cpu_budget_the_agent_sheds_syscall_latency_alerts_and_restores_it_when_there_is_room") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("agent.sock").display().to_string();
    let config = dir.path().join("agent.toml");
    let write = |budget: &str| {
        std::fs::write(
            &config,
            format!(
                "interval = \"1s\"\nsocket = \"{socket}\"\ndata_dir = \"{}\"\nalerts_dir = \"{}\"\n\n[budget]\ncpu_percent = {budget}\nover_for = \"2s\"\n\n[probes]\nretransmits = false\n",
                dir.path().join("data").display(),
                dir.path().join("alerts.d").display()
            ),
        )
        .unwrap()
    };
    // Room first: a syscall storm is timed.
    write("1000");
    let agent = vigil_tests::agent_on(&config).0;
    let mut storm = vigil_tests::Workload::spawn(
        env!("CARGO_BIN_EXE_vigil-workload"),
        &["getppid", "100000000000"],
    );
    storm.go();
    vigil_tests::daemons::wait_until("the storm timed", Duration::from_secs(30), || {
        getppid_calls(&socket) > 1000
    });
    let probe = |name: &str| {
        let stats = vigil_json(&["stats", "--json", "--socket", &socket]);
        stats["probes"]
            .as_array()
            .unwrap()
            .iter()
            .find(|p| p["name"] == name)
            .cloned()
            .unwrap_or_default()
    };
    let state = |name: &str| probe(name)["state"].as_str().unwrap_or("").to_string();
    assert_eq!(state("syscall-latency"), "on");

    // A budget no agent fits in: after over_for, syscall latency is shed (the storm is
    // no longer timed), the alert fires, detection stays on.
    write("0.0001");
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(agent.0.id() as i32),
        nix::sys::signal::Signal::SIGHUP,
    )
    .unwrap();
    vigil_tests::daemons::wait_until("syscall latency shed", Duration::from_secs(60), || {
        state("syscall-latency") == "shed"
    });
    let shed = probe("syscall-latency");
    assert!(
        shed["reason"]
            .as_str()
            .unwrap()
            .starts_with("over the CPU budget"),
        "{shed}"
    );
    vigil_tests::daemons::wait_until("the storm no longer timed", Duration::from_secs(30), || {
        getppid_calls(&socket) == 0
    });
    assert_eq!(state("detection"), "on");
    let fired = wait_until("VigilAgentOverCPUBudget firing", &socket, |v| {
        v["active"]
            .as_array()
            .unwrap()
            .iter()
            .any(|a| a["alert"] == "VigilAgentOverCPUBudget" && a["state"] == "firing")
    });
    assert!(
        fired["active"].to_string().contains("shed syscall latency"),
        "{fired:#}"
    );

    // Room again: back under half the budget for over_for, it is restored and timed.
    write("1000");
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(agent.0.id() as i32),
        nix::sys::signal::Signal::SIGHUP,
    )
    .unwrap();
    vigil_tests::daemons::wait_until("syscall latency restored", Duration::from_secs(60), || {
        state("syscall-latency") == "on"
    });
    vigil_tests::daemons::wait_until("the storm timed again", Duration::from_secs(30), || {
        getppid_calls(&socket) > 1000
    });
    wait_until("VigilAgentOverCPUBudget resolved", &socket, |v| {
        !v["active"].to_string().contains("VigilAgentOverCPUBudget")
    });
    drop(storm);
    stop(agent);
}
