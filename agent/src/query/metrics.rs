//! The agent's /metrics (`metrics_listen`): node_exporter-named host metrics read at
//! scrape time (`node_names`), and Vigil's own families from the agent's state. Every
//! name, type, unit and label is in the README's "Prometheus and Grafana" table.
use std::{collections::BTreeMap, sync::Arc};

use vigil_openmetrics::{labels, Family, Kind, Sample, Value};

use super::state::StateReader;
use crate::metrics::{node, Roots};

/// Upper bounds of the latency histograms' buckets: 2^10 ns (1.024 µs) to 2^33 ns
/// (8.6 s), doubling, then +Inf. The kernel's buckets are quarter-octaves, so each
/// kernel bucket falls wholly inside one of these; a bucket `le=2^k ns` counts the
/// calls that took less than 2^k ns (whole nanoseconds: at most 2^k - 1).
pub const LATENCY_BOUNDS_LOG2: std::ops::RangeInclusive<u32> = 10..=33;

/// What a scrape renders.
pub fn render(state: StateReader, roots: Roots, node_names: bool) -> vigil_openmetrics::Render {
    let filters = Arc::new(node::Filters::default());
    Arc::new(move || {
        let mut out = if node_names {
            node::families(&roots, &filters)
        } else {
            Vec::new()
        };
        vigil_families(&state, &mut out);
        vigil_openmetrics::process_families(&mut out);
        out
    })
}

fn latency_buckets(h: &crate::histogram::LatencyHistogram) -> Vec<(f64, u64)> {
    let bounds: Vec<u64> = LATENCY_BOUNDS_LOG2.map(|k| 1u64 << k).collect();
    let mut counts = vec![0u64; bounds.len() + 1];
    for (i, n) in h.buckets.iter().enumerate() {
        if *n == 0 {
            continue;
        }
        let upper = vigil_common::bucket_upper_bound(i);
        let slot = bounds
            .iter()
            .position(|b| upper < *b)
            .unwrap_or(bounds.len());
        counts[slot] = counts[slot].saturating_add(*n);
    }
    bounds
        .iter()
        .map(|b| *b as f64 / 1e9)
        .chain([f64::INFINITY])
        .zip(counts)
        .collect()
}

fn vigil_families(state: &StateReader, out: &mut Vec<Family>) {
    let st = state.read();
    let t = st.totals();
    let mut lat = Family::new(
        "vigil_syscall_latency_seconds",
        "Time from a syscall's entry to its exit, per syscall, since the agent started (from the kernel's log2 histograms).",
        Kind::Histogram,
    );
    for (nr, h) in &t.latency {
        let name = crate::syscall_table::syscall_name(*nr)
            .map_or_else(|| format!("syscall_{nr}"), str::to_string);
        lat.samples.push(Sample {
            labels: labels(&[("syscall", &name)]),
            value: Value::Histogram {
                sum: h.total_ns as f64 / 1e9,
                count: h.count,
                buckets: latency_buckets(h),
            },
        });
    }
    out.push(lat);
    let mut rt = Family::new(
        "vigil_tcp_retransmits_total",
        "TCP retransmits the kernel sent, by remote address (the first 64 addresses seen; later ones under peer=\"other\"); a packet of several segments counts once.",
        Kind::Counter,
    );
    for (peer, n) in &t.retransmits {
        rt.with(&[("peer", peer)], *n as f64);
    }
    if t.retransmits_other > 0 || t.retransmits.len() >= super::state::RETRANSMIT_PEERS {
        rt.with(&[("peer", "other")], t.retransmits_other as f64);
    }
    out.push(rt);
    out.push(Family::single(
        "vigil_tcp_retransmit_failures_total",
        "TCP retransmits the kernel attempted and could not send (the tracepoint's err, Linux 6.13 and later).",
        Kind::Counter,
        t.retransmit_failures as f64,
    ));
    let mut fd = Family::new(
        "vigil_findings_total",
        "Findings the detection rules raised, by rule and severity.",
        Kind::Counter,
    );
    for ((rule, sev), n) in &t.findings {
        fd.with(&[("rule", rule), ("severity", sev)], *n as f64);
    }
    out.push(fd);

    let enabled = std::fs::read_to_string("/proc/sys/kernel/bpf_stats_enabled")
        .is_ok_and(|s| s.trim() == "1");
    out.push(Family::single(
        "vigil_bpf_stats_enabled",
        "1 when the kernel counts eBPF program run time (sysctl kernel.bpf_stats_enabled=1; off by default, it costs a little per run).",
        Kind::Gauge,
        f64::from(u8::from(enabled)),
    ));
    let mut run_time = Family::new(
        "vigil_bpf_program_run_seconds_total",
        "Time the kernel spent running each of the agent's eBPF programs (counted only while kernel.bpf_stats_enabled=1; as of the last interval).",
        Kind::Counter,
    );
    let mut runs = Family::new(
        "vigil_bpf_program_runs_total",
        "Runs of each of the agent's eBPF programs (counted only while kernel.bpf_stats_enabled=1; as of the last interval).",
        Kind::Counter,
    );
    for (name, t, n) in &t.bpf_programs {
        run_time.with(&[("program", name)], t.as_secs_f64());
        runs.with(&[("program", name)], *n as f64);
    }
    out.push(run_time);
    out.push(runs);

    let a = st.agent_self();
    let c = |name: &str, help: &str, v: u64| Family::single(name, help, Kind::Counter, v as f64);
    let g = |name: &str, help: &str, v: u64| Family::single(name, help, Kind::Gauge, v as f64);
    out.push(c(
        "vigil_batches_sent_total",
        "Batches sent to the collector.",
        a.batches_sent,
    ));
    out.push(c(
        "vigil_batches_acked_total",
        "Batches the collector acknowledged as stored.",
        a.batches_acked,
    ));
    out.push(c(
        "vigil_batches_refused_total",
        "Batches the collector refused (set aside, counted).",
        a.batches_refused,
    ));
    out.push(c(
        "vigil_collector_reconnects_total",
        "Reconnections to the collector.",
        a.reconnects,
    ));
    out.push(g(
        "vigil_spool_bytes",
        "Bytes the spool holds on disk.",
        a.spool_bytes,
    ));
    out.push(g(
        "vigil_spool_unacked_batches",
        "Batches in the spool the collector has not acknowledged (the backlog).",
        a.spool_unacked,
    ));
    let mut events = Family::new(
        "vigil_events_total",
        "Kernel events the agent read and evaluated, by kind.",
        Kind::Counter,
    );
    events.with(&[("kind", "process")], a.process_events as f64);
    events.with(&[("kind", "security")], a.security_events as f64);
    out.push(events);
    let mut lost = Family::new(
        "vigil_lost_total",
        "Events and batches lost, by stage and reason (nothing is lost without a count).",
        Kind::Counter,
    );
    if let Some(l) = &a.losses {
        for (stage, reason, v) in [
            (
                "kernel",
                "slow_syscall_ringbuf_full",
                l.slow_syscall_ringbuf_full,
            ),
            (
                "kernel",
                "slow_syscall_rate_limited",
                l.slow_syscall_rate_limited,
            ),
            (
                "kernel",
                "retransmit_ringbuf_full",
                l.retransmit_ringbuf_full,
            ),
            (
                "kernel",
                "syscall_start_store_failed",
                l.syscall_start_store_failed,
            ),
            ("kernel", "syscall_out_of_range", l.syscall_out_of_range),
            ("kernel", "process_ringbuf_full", l.process_ringbuf_full),
            ("kernel", "security_ringbuf_full", l.security_ringbuf_full),
            ("kernel", "security_untracked", l.security_untracked),
            ("agent", "undecodable_events", l.undecodable_events),
            ("agent", "pipeline_dropped", l.pipeline_dropped),
            ("agent", "findings_dropped", l.findings_dropped),
            ("spool", "spool_dropped_batches", l.spool_dropped_batches),
            ("spool", "spool_corrupt_records", l.spool_corrupt_records),
        ] {
            lost.with(&[("stage", stage), ("reason", reason)], v as f64);
        }
    }
    lost.with(
        &[("stage", "agent"), ("reason", "findings_rate_limited")],
        a.findings_rate_limited as f64,
    );
    out.push(lost);
    let mut probes = Family::new(
        "vigil_probe_up",
        "1 when the probe is attached, 0 when it is off or not requested.",
        Kind::Gauge,
    );
    for (p, state) in &a.probes {
        probes.with(&[("probe", p)], f64::from(u8::from(state == "on")));
    }
    out.push(probes);
    out.push(Family::single(
        "vigil_probes_off",
        "Probes the config asks for that are not running (VigilProbeOff).",
        Kind::Gauge,
        a.probes.values().filter(|s| s.starts_with("off")).count() as f64,
    ));
    out.push(Family::single(
        "vigil_probes_shed",
        "Probes shed to stay within the agent's CPU budget (VigilAgentOverCPUBudget).",
        Kind::Gauge,
        a.probes.values().filter(|s| s.starts_with("shed")).count() as f64,
    ));
    out.push(Family::single(
        "vigil_collector_silent_seconds",
        "Seconds since the collector last acknowledged a batch while batches wait; 0 when nothing waits or no collector is configured.",
        Kind::Gauge,
        st.collector_silent_secs(),
    ));
    let mut good = Family::new(
        "vigil_sli_good_total",
        "Events that met each SLI (sli.d), since the agent started.",
        Kind::Counter,
    );
    let mut total = Family::new(
        "vigil_sli_total",
        "Events each SLI counted (sli.d), since the agent started; with vigil_sli_good_total, what an SLO's burn rate is computed from.",
        Kind::Counter,
    );
    for (name, (g, t)) in st.sli_totals() {
        good.with(&[("sli", name)], *g as f64);
        total.with(&[("sli", name)], *t as f64);
    }
    out.push(good);
    out.push(total);
    let mut alerts = Family::new(
        "vigil_alerts",
        "The agent's alerts pending or firing now, by alert name, severity and state.",
        Kind::Gauge,
    );
    let mut by: BTreeMap<(&str, &str, &str), u64> = BTreeMap::new();
    for e in &st.alerts().active {
        *by.entry((&e.alert, &e.severity, &e.state)).or_default() += 1;
    }
    for ((alert, sev, state), n) in by {
        alerts.with(
            &[("alertname", alert), ("severity", sev), ("state", state)],
            n as f64,
        );
    }
    out.push(alerts);
    let mut errors = Family::new(
        "vigil_internal_errors_total",
        "Internal errors that are otherwise only logged, by name.",
        Kind::Counter,
    );
    for (name, n) in &a.internal_errors {
        errors.with(&[("error", name)], *n as f64);
    }
    out.push(errors);
    out.push(g(
        "vigil_processes_tracked",
        "Processes in the detection's process table.",
        a.processes_tracked,
    ));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_kernel_bucket_lands_in_the_bucket_its_upper_bound_is_under() {
        let mut h = crate::histogram::LatencyHistogram::default();
        for ns in [1u64, 1023, 1024, 1500, 2047, 2048, 5_000_000, u64::MAX / 2] {
            h.buckets[vigil_common::latency_bucket(ns)] += 1;
            h.count += 1;
        }
        let b = latency_buckets(&h);
        assert_eq!(b.len(), LATENCY_BOUNDS_LOG2.count() + 1);
        assert_eq!(b.iter().map(|(_, n)| n).sum::<u64>(), h.count);
        // 1 and 1023 ns: under 1024 ns.
        assert_eq!(b[0], (1024e-9, 2));
        // 1024, 1500, 2047: under 2048.
        assert_eq!(b[1], (2048e-9, 3));
        assert_eq!(b[2].1, 1, "2048 ns is under 4096");
        assert_eq!(b.last().unwrap(), &(f64::INFINITY, 1));
    }
}
