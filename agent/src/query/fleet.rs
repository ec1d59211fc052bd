//! `vigil hosts`, `vigil host HOST`, `vigil history HOST --metric NAME`.
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde_json::json;
use vigil_proto::v1::{
    fleet_client::FleetClient, CollectorStatsRequest, HostMetrics, HostRequest, ListHostsRequest,
    MetricHistoryRequest,
};

use super::display::clean;

/// A collector to ask, and how: mutual TLS with an operator certificate (default
/// /etc/vigil/tls/operator.pem and .key), or plaintext when asked for.
#[derive(Clone, Debug, clap::Args)]
pub struct CollectorTarget {
    /// The collector's address (host:port).
    #[arg(long = "collector", default_value = super::DEFAULT_COLLECTOR)]
    pub addr: String,
    /// A file holding the collector's Fleet bearer token, used instead of a client
    /// certificate (the collector is still verified against --tls-ca).
    #[arg(long, value_name = "FILE")]
    pub token_file: Option<std::path::PathBuf>,
    /// How long to wait for the collector's answer before saying it timed out.
    #[arg(long, default_value = "30s", value_parser = crate::units::parse_duration, allow_hyphen_values = true)]
    pub timeout: Duration,
    #[command(flatten)]
    pub tls: vigil_tls::config::TlsFlags,
}

pub(crate) type FleetApi = FleetClient<
    tonic::service::interceptor::InterceptedService<tonic::transport::Channel, super::api::Bearer>,
>;

pub(crate) async fn connect(target: &CollectorTarget) -> anyhow::Result<FleetApi> {
    use vigil_tls::{client::Connector, Mode, Reloading, Role, TlsSection};
    let addr = &target.addr;
    let tls = TlsSection::default().with_flags(&target.tls);
    let connector = match tls.mode {
        Mode::Off => {
            eprintln!("warning: asking the collector at {addr} in plaintext (--tls off): anyone on the path can read the answers");
            Connector::plain(addr)?
        }
        Mode::Mtls if target.token_file.is_some() => {
            let ca = tls.files(Role::Operator).ca;
            let config = vigil_tls::material::client_config_without_certificate(&ca)?;
            Connector::tls(addr, None, Reloading::fixed(config, "operator"))?
        }
        Mode::Mtls => {
            let files = tls.files(Role::Operator);
            let material = Reloading::new(files, "operator", vigil_tls::material::client_config);
            if let Err(e) = material.current() {
                anyhow::bail!(
                    "TLS: {e}\n(the collector wants an operator certificate: `vigil certs issue --dir DIR --operator NAME`, \
                     then --tls-ca, --tls-cert and --tls-key or VIGIL_TLS_CA, VIGIL_TLS_CERT and VIGIL_TLS_KEY; \
                     --tls off for a collector that runs without TLS)"
                );
            }
            Connector::tls(addr, None, material)?
        }
    };
    // Connecting, and then each answer, within a bound: a peer that accepts and never
    // speaks is reported as timed out, not waited on forever.
    let channel = tonic::transport::Endpoint::from_shared(connector.uri())?
        .connect_timeout(Duration::from_secs(5))
        .timeout(target.timeout.max(Duration::from_millis(1)))
        .connect_with_connector(connector)
        .await
        .map_err(|e| {
            let reason = super::display::unreachable(&e);
            match tls.mode {
                Mode::Off => anyhow::anyhow!("cannot reach the collector at {addr}: {reason} (in plaintext; if it runs with TLS, leave out --tls off)"),
                Mode::Mtls => anyhow::anyhow!("cannot reach the collector at {addr}: {reason} (with TLS)"),
            }
        })?;
    let bearer = super::api::Bearer::from_file(target.token_file.as_deref())?;
    Ok(FleetClient::with_interceptor(channel, bearer))
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

pub async fn hosts(addr: &CollectorTarget, json: bool) -> anyhow::Result<()> {
    let mut client = connect(addr).await?;
    // Every page: the collector answers at most a page (and about 1 MiB) at a time.
    let mut hosts = Vec::new();
    let mut page_token = String::new();
    loop {
        let page = client
            .list_hosts(ListHostsRequest {
                page_size: 0,
                page_token: std::mem::take(&mut page_token),
            })
            .await?
            .into_inner();
        hosts.extend(page.hosts);
        if page.next_page_token.is_empty() {
            break;
        }
        page_token = page.next_page_token;
    }
    hosts.sort_by(|a, b| {
        let key = |h: &vigil_proto::v1::HostSummary| {
            h.host
                .as_ref()
                .map(|i| (i.hostname.clone(), i.agent_id.clone()))
        };
        key(a).cmp(&key(b))
    });
    // Older collectors don't have it; the listing stands without.
    let collector = client
        .collector_stats(CollectorStatsRequest {})
        .await
        .ok()
        .map(|r| r.into_inner());
    if json {
        let list: Vec<_> = hosts
            .iter()
            .map(|h| {
                let id = h.host.clone().unwrap_or_default();
                json!({
                    "agent_id": id.agent_id, "hostname": id.hostname, "kernel": id.kernel, "os": id.os,
                    "last_seen_unix_ms": h.last_seen_unix_ms, "batches": h.batches,
                    "last_seq": h.last_sequence, "duplicates": h.duplicates, "gaps": h.gaps,
                    "conflicts": h.conflicts,
                    "dropped_events": h.dropped_events,
                    "transport": h.transport,
                })
            })
            .collect();
        let collector = collector.map(|c| {
            json!({"refused": c.refused, "conflicts": c.conflicts, "connections_open": c.connections_open,
                   "tls_mode": c.tls_mode, "denied_by_certificate": c.denied_by_certificate,
                   "tls_reloads": c.tls_reloads, "tls_reload_failures": c.tls_reload_failures,
                   "strings_truncated": c.strings_truncated, "alerting": c.alerting})
        });
        println!("{}", json!({ "hosts": list, "collector": collector }));
        return Ok(());
    }
    println!(
        "{:<24} {:<24} {:>10} {:>10} {:>6} {:>6} {:>9} {:>10} {:<9} {:>12}",
        "HOST",
        "AGENT",
        "BATCHES",
        "LAST SEQ",
        "GAPS",
        "DUPS",
        "CONFLICTS",
        "DROPPED",
        "TRANSPORT",
        "LAST SEEN"
    );
    for h in &hosts {
        let id = h.host.clone().unwrap_or_default();
        let ago = now_ms().saturating_sub(h.last_seen_unix_ms).max(0) as f64 / 1000.0;
        let dropped = h
            .dropped_events
            .values()
            .fold(0u64, |a, b| a.saturating_add(*b));
        println!(
            "{:<24} {:<24} {:>10} {:>10} {:>6} {:>6} {:>9} {:>10} {:<9} {:>10.0}s ago",
            clean(&id.hostname),
            clean(&id.agent_id),
            h.batches,
            h.last_sequence,
            h.gaps,
            h.duplicates,
            h.conflicts,
            dropped,
            transport_shown(&h.transport),
            ago
        );
    }
    let plaintext = hosts.iter().filter(|h| h.transport == "plaintext").count();
    if plaintext > 0 {
        println!("PLAINTEXT: {plaintext} of {} hosts sent their newest batch without TLS: anyone on the path could read or forge it", hosts.len());
    }
    if hosts.iter().any(|h| h.conflicts > 0) {
        println!("CONFLICTS: batches that another client sent first under that host's agent id, epoch and sequence (impersonation?); see the collector's log");
    }
    if let Some(c) = collector {
        if c.tls_mode == "off" {
            println!("WARNING: this collector runs without TLS (tls.mode = \"off\"): batches arrive in plaintext and any client can send them as any agent");
        }
        for (cert, n) in &c.denied_by_certificate {
            println!("permission denied {n} times to {}", clean(cert));
        }
        let refused: Vec<String> = c
            .refused
            .iter()
            .filter(|(_, n)| **n > 0)
            .map(|(k, n)| format!("{k} {n}"))
            .collect();
        if !refused.is_empty() {
            println!("collector refused: {}", refused.join(", "));
        }
        if c.strings_truncated > 0 {
            println!(
                "collector cut {} strings to limits.max_string_bytes (marked \"…[truncated]\")",
                c.strings_truncated
            );
        }
    }
    Ok(())
}

/// A host's transport in the listing: plaintext shouts, unknown (an older collector
/// stored it) says so.
fn transport_shown(t: &str) -> &'static str {
    match t {
        "mtls" => "mtls",
        "plaintext" => "PLAINTEXT",
        _ => "?",
    }
}

/// The agent's own delivery state, as `vigil stats --json` shows it under `agent`.
pub fn agent_self_json(a: &vigil_proto::v1::AgentSelf) -> serde_json::Value {
    let l = a.losses.unwrap_or_default();
    let stages: std::collections::BTreeMap<_, _> = l.stages().into_iter().collect();
    json!({
        "epoch": a.spool_epoch().hex(), "last_seq": a.last_sequence,
        "spool": {
            "bytes": a.spool_bytes, "unacked": a.spool_unacked,
            "dropped_batches": a.spool_dropped_batches, "corrupt_records": a.spool_corrupt_records,
            "state_rebuilt": a.spool_state_rebuilt,
        },
        "batches_sent": a.batches_sent, "batches_acked": a.batches_acked,
        "duplicates_acked": a.duplicates_acked, "reconnects": a.reconnects,
        "batches_refused": a.batches_refused, "batches_conflicting": a.batches_conflicting,
        "dropped_events": stages,
        "internal_errors": a.internal_errors,
        "incident_snapshots": a.incident_snapshots,
        "preflight": a.preflight,
        "tls_mode": a.tls_mode, "tls_reloads": a.tls_reloads,
        "tls_reload_failures": a.tls_reload_failures,
        "streams_permission_denied": a.streams_permission_denied,
        "detect": {
            "process_events": a.process_events, "security_events": a.security_events,
            "findings": a.findings, "rule_matches": a.rule_matches,
            "processes_tracked": a.processes_tracked, "processes_untracked": a.processes_untracked,
            "connect_watch_full": a.connect_watch_full,
            "findings_rate_limited": a.findings_rate_limited,
        },
    })
}

pub fn print_metrics(id: &vigil_proto::v1::HostIdentity, m: &HostMetrics) {
    println!(
        "{} ({}) | {} | kernel {}",
        clean(&id.hostname),
        clean(&id.agent_id),
        clean(&id.os),
        clean(&id.kernel)
    );
    println!(
        "cpu   {} cores, {:.1} % busy",
        m.cpu_count, m.cpu_usage_percent
    );
    println!(
        "load  {:.2} {:.2} {:.2}",
        m.load_one, m.load_five, m.load_fifteen
    );
    println!(
        "mem   {:.2} GiB available of {:.2} GiB",
        m.memory_available_bytes as f64 / (1u64 << 30) as f64,
        m.memory_total_bytes as f64 / (1u64 << 30) as f64
    );
}

pub async fn host(addr: &CollectorTarget, host: &str, json: bool) -> anyhow::Result<()> {
    let r = connect(addr)
        .await?
        .latest_stats(HostRequest {
            host: host.to_string(),
        })
        .await?
        .into_inner();
    let id = r.host.unwrap_or_default();
    let Some(m) = r.metrics else {
        anyhow::bail!("host {host} has sent no metrics yet");
    };
    if json {
        let sample = crate::export::convert::host_sample(&id, &m);
        println!(
            "{}",
            super::local::stats_json(&sample, "collector", Some(&id.agent_id), None)
        );
    } else {
        print_metrics(&id, &m);
    }
    Ok(())
}

pub async fn history(
    addr: &CollectorTarget,
    host: &str,
    metric: &str,
    since: Duration,
    json: bool,
) -> anyhow::Result<()> {
    let since_ms = now_ms() - since.as_millis() as i64;
    let points = connect(addr)
        .await?
        .metric_history(MetricHistoryRequest {
            host: host.to_string(),
            metric: metric.to_string(),
            since_unix_ms: since_ms,
            until_unix_ms: 0,
        })
        .await?
        .into_inner()
        .points;
    if json {
        let pts: Vec<_> = points
            .iter()
            .map(|p| json!({"time": super::display::rfc3339_ms(p.time_unix_ms), "time_unix_ns": p.time_unix_ms.saturating_mul(1_000_000), "value": p.value}))
            .collect();
        println!(
            "{}",
            json!({ "host": host, "metric": metric, "points": pts })
        );
    } else {
        println!("{:<24} {:>16}", "TIME (UTC)", clean(metric));
        for p in points {
            println!(
                "{:<24} {:>16.2}",
                super::display::rfc3339_ms(p.time_unix_ms),
                p.value
            );
        }
    }
    Ok(())
}
