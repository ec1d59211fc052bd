//! `vigil alerts rules --format prometheus`: the rules as Prometheus alerting rules
//! over the agent's /metrics (node_exporter's names with `node_names = true`, where
//! node_exporter has the series, and Vigil's own), so a team that alerts in
//! Prometheus gets the same thresholds, `for`, `keep_firing_for` and hysteresis.
//!
//! Hysteresis in PromQL: a condition holds at its raise bound, or at its clear bound
//! while the alert itself is firing (`and ignoring(...) ALERTS{alertstate="firing"}`).
//! Rates use `rate(...[5m])` where the agent uses its interval; forecasts
//! `predict_linear` over the same window; the syscall baseline is the p99 over the
//! last day (the agent's is an exponentially weighted mean, see the README).
use std::fmt::Write as _;

use super::{
    metric::Metric,
    rules::{AlertRule, Condition, Direction, Transform},
};

/// The PromQL for a metric, and whether it is a plain selector (a range can be
/// taken of it directly; otherwise a subquery is used).
fn promql(m: Metric) -> (&'static str, bool) {
    use Metric as M;
    match m {
        M::CpuUsagePercent => (
            r#"sum without (mode) (avg without (cpu) (rate(node_cpu_seconds_total{mode!~"idle|iowait"}[2m]))) * 100"#,
            false,
        ),
        M::LoadPerCpu => (
            r#"node_load1 / count without (cpu, mode) (node_cpu_seconds_total{mode="idle"})"#,
            false,
        ),
        M::MemoryUsedPercent => (
            "100 - (node_memory_MemAvailable_bytes / node_memory_MemTotal_bytes * 100)",
            false,
        ),
        M::PressureCpuSome => ("rate(node_pressure_cpu_waiting_seconds_total[1m]) * 100", false),
        M::PressureMemorySome => (
            "rate(node_pressure_memory_waiting_seconds_total[1m]) * 100",
            false,
        ),
        M::PressureMemoryFull => (
            "rate(node_pressure_memory_stalled_seconds_total[1m]) * 100",
            false,
        ),
        M::PressureIoSome => ("rate(node_pressure_io_waiting_seconds_total[1m]) * 100", false),
        M::PressureIoFull => ("rate(node_pressure_io_stalled_seconds_total[1m]) * 100", false),
        M::MajorFaultsPerSec => ("rate(node_vmstat_pgmajfault[5m])", false),
        M::OomKills => ("increase(node_vmstat_oom_kill[5m])", false),
        M::FdsUsedPercent => ("node_filefd_allocated / node_filefd_maximum * 100", false),
        M::ConntrackUsedPercent => (
            "node_nf_conntrack_entries / node_nf_conntrack_entries_limit * 100",
            false,
        ),
        M::ClockOffsetAbsSecs => ("abs(node_timex_offset_seconds)", false),
        M::ClockSynchronised => ("node_timex_sync_status", true),
        M::ClockMaxErrorSecs => ("node_timex_maxerror_seconds", true),
        M::TcpRetransmitRatio => (
            "rate(node_netstat_Tcp_RetransSegs[5m]) / rate(node_netstat_Tcp_OutSegs[5m])",
            false,
        ),
        M::TcpOutSegsPerSec => ("rate(node_netstat_Tcp_OutSegs[5m])", false),
        M::TcpListenOverflowsPerSec => ("rate(node_netstat_TcpExt_ListenOverflows[5m])", false),
        M::Findings => (
            "sum without (rule, severity) (increase(vigil_findings_total[5m]))",
            false,
        ),
        M::CriticalFindings => (
            r#"sum without (rule, severity) (increase(vigil_findings_total{severity="critical"}[5m]))"#,
            false,
        ),
        M::EventsLost => (
            "sum without (stage, reason) (increase(vigil_lost_total[5m]))",
            false,
        ),
        M::ProbesOff => ("vigil_probes_off", true),
        M::SpoolUnacked => ("vigil_spool_unacked_batches", true),
        M::SpoolDroppedBatches => (
            r#"sum without (stage, reason) (increase(vigil_lost_total{reason="spool_dropped_batches"}[5m]))"#,
            false,
        ),
        M::CollectorSilentSecs => ("vigil_collector_silent_seconds", true),
        M::AgentCpuPercent => (r#"rate(process_cpu_seconds_total{job=~".*"}[5m]) * 100"#, false),
        M::AgentRssBytes => ("process_resident_memory_bytes", true),
        M::ProbesShed => ("vigil_probes_shed", true),
        M::FsAvailPercent => (
            r#"node_filesystem_avail_bytes{fstype!=""} / node_filesystem_size_bytes{fstype!=""} * 100"#,
            false,
        ),
        M::FsAvailBytes => (r#"node_filesystem_avail_bytes{fstype!=""}"#, true),
        M::FsFilesFreePercent => (
            r#"node_filesystem_files_free{fstype!=""} / node_filesystem_files{fstype!=""} * 100"#,
            false,
        ),
        M::FsFilesFree => (r#"node_filesystem_files_free{fstype!=""}"#, true),
        M::DiskBusyPercent => ("rate(node_disk_io_time_seconds_total[5m]) * 100", false),
        M::DiskIoQueue => ("rate(node_disk_io_time_weighted_seconds_total[5m])", false),
        M::NetRxErrorRatio => (
            "rate(node_network_receive_errs_total[2m]) / rate(node_network_receive_packets_total[2m])",
            false,
        ),
        M::NetTxErrorRatio => (
            "rate(node_network_transmit_errs_total[2m]) / rate(node_network_transmit_packets_total[2m])",
            false,
        ),
        M::SyscallP99Secs => (
            "histogram_quantile(0.99, rate(vigil_syscall_latency_seconds_bucket[5m]))",
            false,
        ),
        M::SyscallP99OverBaseline => (
            "histogram_quantile(0.99, rate(vigil_syscall_latency_seconds_bucket[5m])) / histogram_quantile(0.99, rate(vigil_syscall_latency_seconds_bucket[1d]))",
            false,
        ),
        M::SyscallCallsPerSec => ("rate(vigil_syscall_latency_seconds_count[5m])", false),
    }
}

fn secs(d: std::time::Duration) -> String {
    let s = d.as_secs();
    if s.is_multiple_of(3600) && s > 0 {
        format!("{}h", s / 3600)
    } else if s.is_multiple_of(60) && s > 0 {
        format!("{}m", s / 60)
    } else {
        format!("{s}s")
    }
}

/// The PromQL value a condition compares.
fn value(c: &Condition) -> String {
    let (base, selector) = promql(c.metric);
    let (base, selector) = match c.divided_by {
        None => (base.to_string(), selector),
        Some(d) => (format!("({base}) / ({})", promql(d).0), false),
    };
    let range = |over| {
        if selector {
            format!("{base}[{}]", secs(over))
        } else {
            format!("({base})[{}:1m]", secs(over))
        }
    };
    match c.transform {
        Transform::Value => base,
        Transform::Rate { over } => format!("deriv({})", range(over)),
        Transform::Forecast { over, ahead } => {
            format!("predict_linear({}, {})", range(over), ahead.as_secs())
        }
    }
}

fn number(v: f64) -> String {
    format!("{v}")
}

/// One condition in PromQL, with its hysteresis.
fn condition(r: &AlertRule, c: &Condition) -> String {
    let v = value(c);
    let op = match c.direction {
        Direction::Above => ">",
        Direction::Below => "<",
    };
    let raise = format!("({v}) {op} {}", number(c.bound));
    if c.clear == c.bound {
        return raise;
    }
    let mut ignoring = vec!["alertname", "alertstate", "severity"];
    ignoring.extend(r.labels.keys().map(String::as_str));
    format!(
        "({raise} or (({v}) {op} {} and ignoring({}) ALERTS{{alertname=\"{}\", severity=\"{}\", alertstate=\"firing\"}}))",
        number(c.clear),
        ignoring.join(", "),
        r.name,
        r.severity.as_str()
    )
}

/// The rules as one Prometheus rule file (group `vigil`).
pub fn rules_yaml(rules: &[AlertRule]) -> String {
    let mut out = String::from(
        "# Generated by `vigil alerts rules --format prometheus`: Vigil's alert rules over the\n\
         # agent's /metrics (node_names = true). Check with `promtool check rules`.\n\
         groups:\n  - name: vigil\n    rules:\n",
    );
    for r in rules {
        let expr: Vec<String> = r.when.iter().map(|c| condition(r, c)).collect();
        let _ = writeln!(out, "      - alert: {}", r.name);
        let _ = writeln!(out, "        expr: {}", yaml_str(&expr.join(" and ")));
        if !r.for_.is_zero() {
            let _ = writeln!(out, "        for: {}", secs(r.for_));
        }
        if !r.keep_firing_for.is_zero() {
            let _ = writeln!(out, "        keep_firing_for: {}", secs(r.keep_firing_for));
        }
        let _ = writeln!(out, "        labels:");
        let _ = writeln!(out, "          severity: {}", r.severity.as_str());
        for (k, v) in &r.labels {
            let _ = writeln!(out, "          {k}: {}", yaml_str(v));
        }
        let _ = writeln!(out, "        annotations:");
        let _ = writeln!(out, "          summary: {}", yaml_str(&r.summary));
        let _ = writeln!(out, "          runbook_url: {}", yaml_str(&r.runbook));
    }
    out
}

/// A YAML double-quoted string.
fn yaml_str(s: &str) -> String {
    serde_json::to_string(s).unwrap_or_else(|_| "\"\"".into())
}

#[cfg(test)]
mod tests {
    #[test]
    fn every_metric_has_promql_and_hysteresis_refers_to_the_alert_itself() {
        for m in super::Metric::ALL {
            assert!(!super::promql(*m).0.is_empty());
        }
        let rules = super::super::rules::load(None).unwrap();
        let y = super::rules_yaml(&rules);
        assert!(y.contains(r#"ALERTS{alertname=\"NodeCPUHighUsage\", severity=\"info\", alertstate=\"firing\"}"#), "{y}");
        assert!(
            y.contains("predict_linear(node_filesystem_avail_bytes{fstype!=\\\"\\\"}[6h], 14400)"),
            "{y}"
        );
    }
}
