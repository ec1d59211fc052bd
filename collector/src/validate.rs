//! What the collector accepts: every batch is checked here before it reaches the
//! writer, so that one client's bad batch can never fail another's commit, and bounded
//! so that no batch can make the store (or a later fleet answer) unbounded.
use vigil_proto::v1::{Batch, Finding, HostMetrics, Process, ProcessInfo};

/// An agent id longer than this is refused.
pub const MAX_AGENT_ID: usize = 128;
/// A hostname longer than this is refused (Linux allows 64; DNS names 253).
pub const MAX_HOSTNAME: usize = 255;
/// Any other string (command lines, paths, names) is cut to this many bytes and
/// marked with [`TRUNCATED`].
pub const MAX_STRING: usize = 4096;
/// The smallest string limit `[limits] max_string_bytes` may set.
pub const MIN_STRING: usize = 64;
/// The largest (a batch's strings stay within a message of a few MiB).
pub const MAX_STRING_LIMIT: usize = 1 << 20;
/// What ends a string the collector cut.
pub const TRUNCATED: &str = "…[truncated]";
/// Timestamps before this (2000-01-01) are refused: no agent sends them.
pub const EARLIEST_MS: i64 = 946_684_800_000;
/// Timestamps more than this ahead of the collector's clock are refused.
pub const MAX_FUTURE_MS: i64 = 24 * 3600 * 1000;

/// Items per batch, at most (an agent sends one sample, at most 10,000 events and
/// 1,000 findings per interval).
pub const MAX_SAMPLES: usize = 64;
pub const MAX_SYSCALLS: usize = 1024;
pub const MAX_EVENTS: usize = 10_000;
pub const MAX_FINDINGS: usize = 10_000;
/// Items per sample or finding, at most.
const MAX_CPUS: usize = 8192;
const MAX_DEVICES: usize = 4096;
const MAX_TOP: usize = 1000;
const MAX_BUCKETS: usize = vigil_common::LATENCY_BUCKETS;
const MAX_LIST: usize = 64;
/// Labels (details) per finding, by default.
pub const MAX_LABELS: usize = 256;

/// Why a batch was refused: the field and the reason, in the words a client's author
/// needs to fix it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {reason}")]
pub struct Invalid {
    pub field: String,
    pub reason: String,
}

/// A field's name, built only when a batch is refused (a check costs no allocation).
struct At<'a>(&'static str, usize, &'a str);

impl std::fmt::Display for At<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}[{}].{}", self.0, self.1, self.2)
    }
}

fn invalid(field: impl std::fmt::Display, reason: impl Into<String>) -> Invalid {
    Invalid {
        field: field.to_string(),
        reason: reason.into(),
    }
}

fn finite(field: impl std::fmt::Display, v: f64) -> Result<(), Invalid> {
    if v.is_finite() {
        Ok(())
    } else {
        Err(invalid(field, format!("must be a finite number (got {v})")))
    }
}

fn all_finite(field: impl std::fmt::Display, values: &[f64]) -> Result<(), Invalid> {
    values.iter().try_for_each(|v| finite(&field, *v))
}

fn count(field: impl std::fmt::Display, n: usize, max: usize) -> Result<(), Invalid> {
    if n > max {
        Err(invalid(field, format!("{n} items, at most {max} allowed")))
    } else {
        Ok(())
    }
}

/// What a check knows besides the batch: the collector's clock, the string limit,
/// and how many strings it cut.
struct Clock {
    now_ms: i64,
    max_string: usize,
    cut: std::cell::Cell<u64>,
}

impl Clock {
    fn cut(&self, s: &mut String) {
        if bound_to(s, self.max_string) {
            self.cut.set(self.cut.get() + 1);
        }
    }

    fn ms(&self, field: impl std::fmt::Display, t: i64) -> Result<(), Invalid> {
        if t < EARLIEST_MS {
            return Err(invalid(
                field,
                format!("time {t} ms is before 2000-01-01 (unset, or not in ms since 1970)"),
            ));
        }
        if t > self.now_ms.saturating_add(MAX_FUTURE_MS) {
            return Err(invalid(
                field,
                format!(
                    "time {t} ms is more than 24 h ahead of the collector's clock ({})",
                    self.now_ms
                ),
            ));
        }
        Ok(())
    }

    fn ns(&self, field: impl std::fmt::Display, t: i64) -> Result<(), Invalid> {
        self.ms(field, t.div_euclid(1_000_000))
    }
}

/// Cuts `s` to at most MAX_STRING bytes (on a character boundary), marked.
pub fn bound(s: &mut String) {
    bound_to(s, MAX_STRING);
}

/// Cuts `s` to at most `max` bytes (on a character boundary; never below the
/// marker's length), marked with [`TRUNCATED`]. True when it was cut.
pub fn bound_to(s: &mut String, max: usize) -> bool {
    if s.len() <= max {
        return false;
    }
    let mut end = max.max(MIN_STRING) - TRUNCATED.len();
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    s.truncate(end);
    s.push_str(TRUNCATED);
    true
}

fn bound_process(p: &mut Process, clock: &Clock) {
    for s in [&mut p.exe, &mut p.cmdline, &mut p.name, &mut p.container] {
        clock.cut(s);
    }
}

fn bound_info(p: &mut ProcessInfo, clock: &Clock) {
    for s in [&mut p.user, &mut p.comm, &mut p.cmdline] {
        clock.cut(s);
    }
}

fn check_sample(i: usize, m: &mut HostMetrics, clock: &Clock) -> Result<(), Invalid> {
    let f = |name| At("metrics", i, name);
    clock.ms(f("time_unix_ms"), m.time_unix_ms)?;
    for (name, v) in [
        ("interval_secs", m.interval_secs),
        ("uptime_secs", m.uptime_secs),
        ("cpu_usage_percent", m.cpu_usage_percent),
        ("load_one", m.load_one),
        ("load_five", m.load_five),
        ("load_fifteen", m.load_fifteen),
        ("clock_offset_secs", m.clock_offset_secs.unwrap_or(0.0)),
        (
            "clock_max_error_secs",
            m.clock_max_error_secs.unwrap_or(0.0),
        ),
    ] {
        finite(f(name), v)?;
    }
    count(f("cpu_per_core"), m.cpu_per_core.len(), MAX_CPUS)?;
    for (j, c) in m.cpu_total.iter().chain(&m.cpu_per_core).enumerate() {
        all_finite(
            format_args!("metrics[{i}].cpu[{j}]"),
            &[
                c.user, c.nice, c.system, c.idle, c.iowait, c.irq, c.softirq, c.steal,
            ],
        )?;
    }
    for (name, p) in [
        ("pressure_cpu", &m.pressure_cpu),
        ("pressure_memory", &m.pressure_memory),
        ("pressure_io", &m.pressure_io),
    ] {
        for line in p.iter().flat_map(|p| p.some.iter().chain(&p.full)) {
            all_finite(f(name), &[line.avg10, line.avg60, line.avg300])?;
        }
    }
    count(f("filesystems"), m.filesystems.len(), MAX_DEVICES)?;
    count(f("disks"), m.disks.len(), MAX_DEVICES)?;
    count(f("network"), m.network.len(), MAX_DEVICES)?;
    count(f("top_cpu"), m.top_cpu.len(), MAX_TOP)?;
    count(f("top_memory"), m.top_memory.len(), MAX_TOP)?;
    for d in &mut m.disks {
        let rates = [
            d.reads_per_sec,
            d.writes_per_sec,
            d.read_bytes_per_sec,
            d.write_bytes_per_sec,
            d.io_time_ms_per_sec,
            d.io_queue,
        ];
        all_finite(f("disks"), &rates)?;
        clock.cut(&mut d.device);
    }
    for n in &mut m.network {
        let rates = [
            n.rx_bytes_per_sec,
            n.tx_bytes_per_sec,
            n.rx_packets_per_sec,
            n.tx_packets_per_sec,
            n.rx_errors_per_sec,
            n.tx_errors_per_sec,
            n.rx_drops_per_sec,
            n.tx_drops_per_sec,
        ];
        all_finite(f("network"), &rates)?;
        clock.cut(&mut n.interface);
    }
    for fs in &mut m.filesystems {
        for s in [&mut fs.mount, &mut fs.device, &mut fs.fstype] {
            clock.cut(s);
        }
    }
    for p in m.top_cpu.iter_mut().chain(&mut m.top_memory) {
        finite(f("top.cpu_percent"), p.cpu_percent)?;
        bound_info(p, clock);
    }
    Ok(())
}

fn check_alert(
    i: usize,
    a: &mut vigil_proto::v1::AlertEvent,
    clock: &Clock,
    labels: usize,
) -> Result<(), Invalid> {
    let f = |name| At("alerts", i, name);
    if a.alert.is_empty() {
        return Err(invalid(f("alert"), "empty (an alert without a name)"));
    }
    if !matches!(
        a.state.as_str(),
        "pending" | "firing" | "resolved" | "cancelled"
    ) {
        return Err(invalid(
            f("state"),
            "not one of pending, firing, resolved, cancelled",
        ));
    }
    clock.ms(f("time_unix_ms"), a.time_unix_ms)?;
    if a.active_since_unix_ms != 0 {
        clock.ms(f("active_since_unix_ms"), a.active_since_unix_ms)?;
    }
    finite(f("value"), a.value)?;
    count(f("labels"), a.labels.len(), labels)?;
    for s in [
        &mut a.alert,
        &mut a.severity,
        &mut a.summary,
        &mut a.runbook,
        &mut a.held_reason,
    ] {
        clock.cut(s);
    }
    let l = std::mem::take(&mut a.labels);
    for (mut k, mut v) in l {
        clock.cut(&mut k);
        clock.cut(&mut v);
        a.labels.insert(k, v);
    }
    Ok(())
}

fn check_finding(i: usize, x: &mut Finding, clock: &Clock, labels: usize) -> Result<(), Invalid> {
    let f = |name| At("findings", i, name);
    if x.rule.is_empty() {
        return Err(invalid(f("rule"), "empty (an empty finding)"));
    }
    clock.ms(f("time_unix_ms"), x.time_unix_ms)?;
    count(f("mitre"), x.mitre.len(), MAX_LIST)?;
    count(f("ancestors"), x.ancestors.len(), MAX_LIST)?;
    count(f("details"), x.details.len(), labels)?;
    for s in [
        &mut x.rule,
        &mut x.description,
        &mut x.severity,
        &mut x.event,
    ] {
        clock.cut(s);
    }
    x.mitre.iter_mut().for_each(|s| clock.cut(s));
    for p in x
        .process
        .iter_mut()
        .chain(x.parent.iter_mut())
        .chain(x.ancestors.iter_mut())
    {
        bound_process(p, clock);
    }
    // Keys and values alike; a key cut short may collide with another: keep one.
    let details = std::mem::take(&mut x.details);
    for (mut k, mut v) in details {
        clock.cut(&mut k);
        clock.cut(&mut v);
        x.details.insert(k, v);
    }
    Ok(())
}

/// Items one batch may carry (`[limits]` in collector.toml); more and the batch is
/// refused, naming the list.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BatchLimits {
    pub samples: usize,
    pub syscalls: usize,
    /// Retransmits and slow syscalls, each.
    pub events: usize,
    pub findings: usize,
    /// Labels (`details`) per finding.
    pub labels: usize,
    /// Bytes per string (command lines, paths, names); longer ones are cut, marked
    /// with [`TRUNCATED`] and counted.
    pub string_bytes: usize,
}

impl Default for BatchLimits {
    fn default() -> Self {
        Self {
            samples: MAX_SAMPLES,
            syscalls: MAX_SYSCALLS,
            events: MAX_EVENTS,
            findings: MAX_FINDINGS,
            labels: MAX_LABELS,
            string_bytes: MAX_STRING,
        }
    }
}

/// What checking an accepted batch changed.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Checked {
    /// Strings cut to the limit.
    pub strings_cut: u64,
}

/// Checks `b` with the default limits (see [`check_with`]).
pub fn check(b: &mut Batch, now_ms: i64) -> Result<Checked, Invalid> {
    check_with(b, now_ms, &BatchLimits::default())
}

/// Checks `b` and cuts its long strings. `Err` names the first field that makes it
/// unacceptable; the batch is then refused whole.
pub fn check_with(b: &mut Batch, now_ms: i64, limits: &BatchLimits) -> Result<Checked, Invalid> {
    let clock = Clock {
        now_ms,
        max_string: limits.string_bytes,
        cut: std::cell::Cell::new(0),
    };
    if b.agent_id.is_empty() {
        return Err(invalid("agent_id", "empty"));
    }
    if b.agent_id.len() > MAX_AGENT_ID {
        return Err(invalid(
            "agent_id",
            format!("{} bytes, at most {MAX_AGENT_ID}", b.agent_id.len()),
        ));
    }
    if b.sequence == 0 || b.sequence > i64::MAX as u64 {
        return Err(invalid(
            "sequence",
            format!("{} is outside 1..=2^63-1", b.sequence),
        ));
    }
    if let Some(h) = &mut b.host {
        if h.hostname.len() > MAX_HOSTNAME {
            return Err(invalid(
                "host.hostname",
                format!("{} bytes, at most {MAX_HOSTNAME}", h.hostname.len()),
            ));
        }
        if !h.agent_id.is_empty() && h.agent_id != b.agent_id {
            return Err(invalid(
                "host.agent_id",
                "differs from the batch's agent_id",
            ));
        }
        for s in [&mut h.kernel, &mut h.os, &mut h.agent_version] {
            clock.cut(s);
        }
        if h.boot_time_unix > i64::MAX as u64 {
            return Err(invalid("host.boot_time_unix", "out of range"));
        }
    }
    for (name, t) in [
        ("start_unix_ms", b.start_unix_ms),
        ("end_unix_ms", b.end_unix_ms),
    ] {
        if t != 0 {
            clock.ms(name, t)?;
        }
    }
    count("metrics", b.metrics.len(), limits.samples)?;
    count("syscalls", b.syscalls.len(), limits.syscalls)?;
    count("retransmits", b.retransmits.len(), limits.events)?;
    count("slow_syscalls", b.slow_syscalls.len(), limits.events)?;
    count("findings", b.findings.len(), limits.findings)?;
    for (i, m) in b.metrics.iter_mut().enumerate() {
        check_sample(i, m, &clock)?;
    }
    for (i, s) in b.syscalls.iter_mut().enumerate() {
        if s.count == 0 && s.buckets.is_empty() {
            return Err(invalid(format!("syscalls[{i}]"), "empty"));
        }
        count(
            format_args!("syscalls[{i}].buckets"),
            s.buckets.len(),
            MAX_BUCKETS,
        )?;
        clock.cut(&mut s.name);
    }
    for (i, r) in b.retransmits.iter_mut().enumerate() {
        clock.ns(
            format_args!("retransmits[{i}].time_unix_ns"),
            r.time_unix_ns,
        )?;
        for s in [&mut r.saddr, &mut r.daddr, &mut r.state] {
            clock.cut(s);
        }
    }
    for (i, s) in b.slow_syscalls.iter_mut().enumerate() {
        clock.ns(
            format_args!("slow_syscalls[{i}].time_unix_ns"),
            s.time_unix_ns,
        )?;
        clock.cut(&mut s.comm);
    }
    for (i, f) in b.findings.iter_mut().enumerate() {
        check_finding(i, f, &clock, limits.labels)?;
    }
    count("slis", b.slis.len(), MAX_SYSCALLS)?;
    for (i, s) in b.slis.iter_mut().enumerate() {
        if s.name.is_empty() {
            return Err(invalid(format!("slis[{i}].name"), "empty"));
        }
        if s.good > s.total {
            return Err(invalid(format!("slis[{i}].good"), "more than total"));
        }
        clock.cut(&mut s.name);
    }
    count("alerts", b.alerts.len(), limits.findings)?;
    for (i, a) in b.alerts.iter_mut().enumerate() {
        check_alert(i, a, &clock, limits.labels)?;
    }
    Ok(Checked {
        strings_cut: clock.cut.get(),
    })
}

#[cfg(test)]
mod tests {
    use vigil_proto::v1::{HostIdentity, SlowSyscall};

    use super::*;

    const NOW: i64 = 1_800_000_000_000;

    fn good() -> Batch {
        Batch {
            agent_id: "a".into(),
            sequence: 1,
            host: Some(HostIdentity {
                agent_id: "a".into(),
                hostname: "h".into(),
                ..Default::default()
            }),
            metrics: vec![HostMetrics {
                time_unix_ms: NOW,
                ..Default::default()
            }],
            ..Default::default()
        }
    }

    #[test]
    fn the_configured_item_limits_are_the_ones_enforced() {
        let mut b = good();
        b.metrics = vec![b.metrics[0].clone(); 3];
        let limits = BatchLimits {
            samples: 2,
            ..BatchLimits::default()
        };
        let e = check_with(&mut b.clone(), NOW, &limits).unwrap_err();
        assert_eq!(e.field, "metrics", "{e}");
        let mut labelled = good();
        labelled.findings.push(Finding {
            rule: "r".into(),
            time_unix_ms: NOW,
            details: (0..3).map(|i| (i.to_string(), String::new())).collect(),
            ..Default::default()
        });
        let limits = BatchLimits {
            labels: 2,
            ..BatchLimits::default()
        };
        let e = check_with(&mut labelled.clone(), NOW, &limits).unwrap_err();
        assert_eq!(e.field, "findings[0].details", "{e}");
        assert!(check(&mut labelled, NOW).is_ok());
        assert!(
            check(&mut b, NOW).is_ok(),
            "3 samples are within the default"
        );
    }

    #[test]
    fn a_good_batch_passes() {
        assert_eq!(check(&mut good(), NOW), Ok(Checked::default()));
    }

    #[test]
    fn each_bad_value_is_named() {
        type Spoil = fn(&mut Batch);
        let cases: &[(&str, Spoil)] = &[
            ("metrics[0].cpu_usage_percent", |b| {
                b.metrics[0].cpu_usage_percent = f64::NAN
            }),
            ("metrics[0].load_one", |b| {
                b.metrics[0].load_one = f64::INFINITY
            }),
            ("sequence", |b| b.sequence = i64::MAX as u64 + 1),
            ("sequence", |b| b.sequence = 0),
            ("metrics[0].time_unix_ms", |b| b.metrics[0].time_unix_ms = 0),
            ("metrics[0].time_unix_ms", |b| {
                b.metrics[0].time_unix_ms = NOW + 2 * MAX_FUTURE_MS
            }),
            ("metrics[1].time_unix_ms", |b| {
                b.metrics.push(HostMetrics::default())
            }),
            ("agent_id", |b| b.agent_id = "x".repeat(129)),
            ("host.hostname", |b| {
                b.host.as_mut().unwrap().hostname = "h".repeat(256)
            }),
            ("slow_syscalls[0].time_unix_ns", |b| {
                b.slow_syscalls.push(SlowSyscall::default())
            }),
            ("findings[0].rule", |b| b.findings.push(Finding::default())),
            ("metrics", |b| {
                b.metrics = vec![b.metrics[0].clone(); MAX_SAMPLES + 1]
            }),
        ];
        for (field, spoil) in cases {
            let mut b = good();
            spoil(&mut b);
            let e = check(&mut b, NOW).expect_err(field);
            assert_eq!(e.field, *field, "{e}");
        }
    }

    #[test]
    fn long_strings_are_cut_and_marked() {
        let mut b = good();
        b.metrics[0].top_cpu.push(ProcessInfo {
            cmdline: "é".repeat(10_000),
            ..Default::default()
        });
        let mut short = b.clone();
        assert_eq!(check(&mut b, NOW).unwrap().strings_cut, 1);
        let c = &b.metrics[0].top_cpu[0].cmdline;
        assert!(
            c.len() <= MAX_STRING && c.ends_with(TRUNCATED),
            "{}",
            c.len()
        );
        // A configured limit is the one applied, and counted per string.
        short.metrics[0].top_cpu[0].comm = "c".repeat(200);
        let limits = BatchLimits {
            string_bytes: 100,
            ..BatchLimits::default()
        };
        let checked = check_with(&mut short, NOW, &limits).unwrap();
        assert_eq!(checked.strings_cut, 2);
        let p = &short.metrics[0].top_cpu[0];
        for s in [&p.cmdline, &p.comm] {
            assert!(s.len() <= 100 && s.ends_with(TRUNCATED), "{}", s.len());
        }
    }
}
