//! The engine on an injected clock: simulated minutes run in microseconds.
use std::time::Duration;

use vigil_proto::v1 as pb;

use super::{metric::AgentHealth, rules, saved, Engine};

const MIN: i64 = 60_000;

fn rule(text: &str) -> Vec<rules::AlertRule> {
    let doc = format!(
        "alerts:\n  - alert: T\n    severity: warning\n    summary: \"value {{{{ $value }}}}\"\n    runbook: docs/runbooks/alerts.md#t\n{text}"
    );
    rules::parse("test", &doc).unwrap().0
}

fn cpu(v: f64) -> pb::HostMetrics {
    pb::HostMetrics {
        cpu_usage_percent: v,
        cpu_count: 2,
        ..Default::default()
    }
}

/// Runs `signal(t)` every 10 s from `from` to `to` (ms); returns the events.
fn run(
    e: &mut Engine,
    from: i64,
    to: i64,
    signal: impl Fn(i64) -> pb::HostMetrics,
) -> Vec<pb::AlertEvent> {
    let agent = AgentHealth::default();
    let mut out = Vec::new();
    let mut t = from;
    while t < to {
        let m = signal(t);
        out.extend(e.evaluate(&super::inputs(t, &m, &agent)));
        t += 10_000;
    }
    out
}

fn notified<'a>(ev: &'a [pb::AlertEvent], state: &str) -> Vec<&'a pb::AlertEvent> {
    ev.iter().filter(|e| e.state == state && e.notify).collect()
}

/// A signal around 90 % (60 to 100, a 4-minute period) for 30 minutes, then calm.
fn flapping(t: i64) -> pb::HostMetrics {
    if t >= 30 * MIN {
        return cpu(20.0);
    }
    let phase = (t % (4 * MIN)) as f64 / (4 * MIN) as f64;
    cpu(80.0 + 20.0 * (phase * std::f64::consts::TAU).sin())
}

#[test]
fn a_signal_flapping_around_its_threshold_for_30_minutes_notifies_once_and_resolves_once() {
    let rules =
        rule("    for: 30s\n    when: [{metric: cpu.usage_percent, above: 90, clear_below: 75}]\n");
    let mut e = Engine::new(rules.clone(), Duration::from_secs(3600));
    let ev = run(&mut e, 0, 60 * MIN, flapping);
    let fired: Vec<_> = ev.iter().filter(|e| e.state == "firing").collect();
    assert!(fired.len() >= 5, "it does fire again and again: {fired:?}");
    assert_eq!(notified(&ev, "firing").len(), 1, "{ev:#?}");
    assert_eq!(notified(&ev, "resolved").len(), 1, "{ev:#?}");
    // Each held re-fire is counted, and the group's count says how many.
    assert_eq!(e.stats().held as usize, 2 * (fired.len() - 1), "{ev:#?}");
    assert_eq!(fired.last().unwrap().count as usize, fired.len());
    assert!(e.active().is_empty(), "calm at the end: {:?}", e.active());

    // The same signal without hysteresis and damping notifies on every swing: the
    // mechanism, not the signal, makes the difference.
    let noisy = rule("    for: 30s\n    when: [{metric: cpu.usage_percent, above: 90}]\n");
    let mut e = Engine::new(noisy, Duration::ZERO);
    let ev = run(&mut e, 0, 60 * MIN, flapping);
    assert!(notified(&ev, "firing").len() >= 5, "{}", ev.len());
}

#[test]
fn hysteresis_keeps_an_alert_firing_between_its_bounds() {
    let rules = rule("    when: [{metric: cpu.usage_percent, above: 90, clear_below: 80}]\n");
    let mut e = Engine::new(rules, Duration::ZERO);
    let ev = run(&mut e, 0, 10 * MIN, |t| {
        cpu(match t / MIN {
            0 => 50.0,
            1 => 95.0,
            2..=5 => 85.0,
            _ => 79.0,
        })
    });
    let states: Vec<_> = ev
        .iter()
        .map(|e| (e.state.as_str(), e.time_unix_ms / MIN))
        .collect();
    assert_eq!(states, [("firing", 1), ("resolved", 6)]);
}

#[test]
fn for_makes_it_pending_first_and_keep_firing_for_holds_it_after_the_condition_ends() {
    let rules = rule(
        "    for: 2m\n    keep_firing_for: 3m\n    when: [{metric: cpu.usage_percent, above: 90}]\n",
    );
    let mut e = Engine::new(rules, Duration::ZERO);
    // 1 minute high (too short: cancelled), low, then 5 minutes high (last true at
    // 9:50), then low: resolved keep_firing_for (3 minutes) after, at 12:50.
    let ev = run(&mut e, 0, 20 * MIN, |t| {
        cpu(match t / MIN {
            1 => 95.0,
            5..=9 => 95.0,
            _ => 10.0,
        })
    });
    let states: Vec<_> = ev
        .iter()
        .map(|e| (e.state.as_str(), e.time_unix_ms / 1000))
        .collect();
    assert_eq!(
        states,
        [
            ("pending", 60),
            ("cancelled", 120),
            ("pending", 300),
            ("firing", 420),
            ("resolved", 770)
        ],
        "{ev:#?}"
    );
    assert_eq!(ev[3].summary, "value 95");
    assert_eq!(ev[3].runbook, "docs/runbooks/alerts.md#t");
}

fn fs(avail: u64) -> pb::HostMetrics {
    pb::HostMetrics {
        filesystems: vec![pb::Filesystem {
            mount: "/data".into(),
            device: "/dev/vdb".into(),
            fstype: "ext4".into(),
            size_bytes: 1000 << 20,
            available_bytes: avail,
            inodes_total: 1000,
            inodes_free: 900,
            ..Default::default()
        }],
        ..Default::default()
    }
}

#[test]
fn the_forecast_fires_when_the_line_reaches_zero_within_the_horizon_and_not_when_flat() {
    let rules = rules::load(None)
        .unwrap()
        .into_iter()
        .filter(|r| r.name == "NodeFilesystemSpaceFillingUp")
        .collect::<Vec<_>>();
    assert_eq!(rules.len(), 2);
    // 19 % left, falling 0.5 MiB a minute: empty in about 6 h 20 min, so within the
    // 4 h horizon once under 120 MiB (after 140 minutes).
    let mut e = Engine::new(rules.clone(), Duration::ZERO);
    let ev = run(&mut e, 0, 4 * 60 * MIN, |t| {
        fs((190u64 << 20).saturating_sub((t / MIN) as u64 * (1 << 20) / 2))
    });
    let fired: Vec<_> = ev.iter().filter(|e| e.state == "firing").collect();
    assert!(
        fired.iter().any(|e| e.severity == "critical"),
        "4 h horizon: {ev:#?}"
    );
    let first = fired.iter().find(|e| e.severity == "critical").unwrap();
    assert_eq!(first.labels["mountpoint"], "/data");
    // A quarter of the 6 h window of history, then `for: 1h`.
    assert!(
        first.time_unix_ms >= (90 + 60) * MIN,
        "{}",
        first.time_unix_ms / MIN
    );

    let mut e = Engine::new(rules, Duration::ZERO);
    let ev = run(&mut e, 0, 4 * 60 * MIN, |_| fs(190 << 20));
    assert!(ev.iter().all(|e| e.state != "firing"), "flat: {ev:#?}");
}

#[test]
fn a_restarted_engine_keeps_what_fires_without_notifying_it_again() {
    let rules = rule("    for: 1m\n    when: [{metric: cpu.usage_percent, above: 90}]\n");
    let mut e = Engine::new(rules.clone(), Duration::from_secs(600));
    let ev = run(&mut e, 0, 5 * MIN, |_| cpu(95.0));
    assert_eq!(notified(&ev, "firing").len(), 1);
    let dir = tempfile::tempdir().unwrap();
    let path = saved::path(dir.path());
    saved::store(&path, &e.to_saved(5 * MIN)).unwrap();

    let mut again = Engine::new(rules, Duration::from_secs(600));
    let saved::Loaded::Ok(s) = saved::load(&path, 6 * MIN) else {
        panic!("state not read back");
    };
    assert_eq!(again.restore(s), 1);
    assert_eq!(again.active().len(), 1);
    assert_eq!(again.active()[0].state, "firing");
    let ev = run(&mut again, 6 * MIN, 8 * MIN, |_| cpu(95.0));
    assert!(ev.is_empty(), "still firing, nothing new: {ev:?}");
    let ev = run(&mut again, 8 * MIN, 9 * MIN, |_| cpu(5.0));
    assert_eq!(notified(&ev, "resolved").len(), 1, "{ev:?}");
}

#[test]
fn a_damaged_state_file_is_set_aside_and_the_engine_starts_afresh() {
    let dir = tempfile::tempdir().unwrap();
    let path = saved::path(dir.path());
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    for bytes in [
        &b""[..],
        b"{\"version\": 1",
        b"\xff\xfe garbage",
        b"{\"version\": 99, \"saved_unix_ms\": 0, \"series\": [], \"baselines\": {}}",
    ] {
        std::fs::write(&path, bytes).unwrap();
        match saved::load(&path, 42) {
            saved::Loaded::Damaged { kept, .. } => {
                assert_eq!(std::fs::read(&kept).unwrap(), bytes);
                assert!(!path.exists());
            }
            _ => panic!("{bytes:?} was taken"),
        }
    }
    assert!(matches!(saved::load(&path, 43), saved::Loaded::Missing));
}

fn syscall(name: &str, p99_ns: u64) -> pb::SyscallLatency {
    let mut buckets = vec![0u64; vigil_common::LATENCY_BUCKETS];
    // 2 % of the calls at p99_ns: the 99th percentile call is one of them.
    buckets[vigil_common::latency_bucket(1_000)] = 980;
    buckets[vigil_common::latency_bucket(p99_ns)] += 20;
    pb::SyscallLatency {
        name: name.into(),
        count: 1000,
        buckets,
        ..Default::default()
    }
}

#[test]
fn a_syscall_p99_far_above_the_learned_baseline_fires_and_does_not_become_the_baseline() {
    let rules = rules::load(None)
        .unwrap()
        .into_iter()
        .filter(|r| r.name == "SyscallLatencyRegression")
        .collect::<Vec<_>>();
    let mut e = Engine::new(rules, Duration::ZERO);
    let agent = AgentHealth::default();
    let m = pb::HostMetrics {
        interval_secs: 10.0,
        ..Default::default()
    };
    let mut events = Vec::new();
    let mut t = 0;
    // 2 ms p99 for an hour (learned), then 40 ms for an hour, then 2 ms again.
    while t < 3 * 60 * MIN {
        let p99 = if (60 * MIN..120 * MIN).contains(&t) {
            40_000_000
        } else {
            2_000_000
        };
        let s = [syscall("fsync", p99)];
        let i = super::metric::Inputs {
            time_ms: t,
            metrics: &m,
            syscalls: &s,
            findings: &[],
            agent: &agent,
        };
        events.extend(e.evaluate(&i));
        t += 10_000;
    }
    let states: Vec<_> = events
        .iter()
        .map(|e| (e.state.as_str(), e.time_unix_ms / MIN))
        .collect();
    assert_eq!(states.len(), 3, "{states:?}");
    assert_eq!(states[0], ("pending", 60));
    assert_eq!(states[1], ("firing", 70));
    assert_eq!(states[2], ("resolved", 120), "{states:?}");
    let b = e.baselines["fsync"].value().unwrap();
    assert!((0.002..0.003).contains(&b), "{b}");
}
