//! `vigil alerts`: the local agent's alerts (active now, recent changes; `--follow`
//! for each change as it happens) and `vigil alerts rules` (the rules it would run,
//! also as Prometheus alerting rules).
use serde_json::json;
use vigil_proto::v1::{live_event, AlertEvent, AlertsRequest, FollowRequest};

use super::api::{connect_to, AgentTarget};
use super::display::{clean, rfc3339_ms};
use crate::alerts::rules::AlertRule;

/// How many recent changes the text view prints.
const RECENT_SHOWN: usize = 20;

pub fn alert_json(e: &AlertEvent) -> serde_json::Value {
    json!({
        "type": "alert",
        "alert": e.alert,
        "state": e.state,
        "severity": e.severity,
        "labels": e.labels,
        "summary": e.summary,
        "runbook": e.runbook,
        "time": rfc3339_ms(e.time_unix_ms),
        "time_unix_ms": e.time_unix_ms,
        "active_since": (e.active_since_unix_ms != 0).then(|| rfc3339_ms(e.active_since_unix_ms)),
        "value": e.value,
        "notify": e.notify,
        "count": e.count,
        "held_reason": (!e.held_reason.is_empty()).then_some(&e.held_reason),
    })
}

fn labels(e: &AlertEvent) -> String {
    let l: Vec<String> = e
        .labels
        .iter()
        .map(|(k, v)| format!("{}={}", clean(k), clean(v)))
        .collect();
    if l.is_empty() {
        String::new()
    } else {
        format!("{{{}}}", l.join(","))
    }
}

/// One change, one line (and its runbook).
pub fn print_alert(e: &AlertEvent, json: bool) {
    if json {
        println!("{}", alert_json(e));
        return;
    }
    let held = if e.held_reason.is_empty() {
        String::new()
    } else {
        " (held: not notified)".to_string()
    };
    let count = if e.count > 1 {
        format!(" (x{})", e.count)
    } else {
        String::new()
    };
    println!(
        "{} {:<9} {:<8} {}{} {}{count}{held}\n    runbook: {}",
        rfc3339_ms(e.time_unix_ms),
        e.state.to_uppercase(),
        e.severity,
        clean(&e.alert),
        labels(e),
        clean(&e.summary),
        clean(&e.runbook)
    );
}

pub async fn run(target: &AgentTarget, follow: bool, json: bool) -> anyhow::Result<()> {
    let mut agent = connect_to(target).await?;
    // Subscribed first, so no change falls between the answer and the stream.
    let stream = if follow {
        Some(agent.follow(FollowRequest {}).await?.into_inner())
    } else {
        None
    };
    let r = agent.alerts(AlertsRequest {}).await?.into_inner();
    if json && !follow {
        println!(
            "{}",
            json!({
                "rules": r.rules,
                "held": r.held,
                "active": r.active.iter().map(alert_json).collect::<Vec<_>>(),
                "recent": r.recent.iter().map(alert_json).collect::<Vec<_>>(),
            })
        );
        return Ok(());
    }
    if !json {
        let firing = r.active.iter().filter(|e| e.state == "firing").count();
        println!(
            "{} rules; {} firing, {} pending; {} re-fires held by damping since start",
            r.rules,
            firing,
            r.active.len() - firing,
            r.held
        );
        for e in &r.active {
            print_alert(e, false);
        }
        if !r.recent.is_empty() {
            println!("recent changes (newest last):");
            for e in r
                .recent
                .iter()
                .skip(r.recent.len().saturating_sub(RECENT_SHOWN))
            {
                print_alert(e, false);
            }
        }
    } else {
        for e in &r.active {
            print_alert(e, true);
        }
    }
    let Some(stream) = stream else {
        return Ok(());
    };
    super::local::following();
    super::local::follow_until_stop(stream, |event| match event {
        live_event::Event::Alert(e) => print_alert(&e, json),
        live_event::Event::Missed(n) => {
            eprintln!("vigil: {n} events skipped (this reader fell behind)")
        }
        _ => {}
    })
    .await
}

/// `vigil alerts rules`: the rules as a table, or as Prometheus alerting rules.
pub fn print_rules(rules: &[AlertRule], format: RulesFormat) {
    match format {
        RulesFormat::Prometheus => print!("{}", crate::alerts::prometheus::rules_yaml(rules)),
        RulesFormat::Table => {
            for r in rules {
                let when: Vec<String> = r.when.iter().map(describe).collect();
                println!(
                    "{:<36} {:<8} for {:<5} {}\n    runbook: {}",
                    r.name,
                    r.severity.as_str(),
                    crate::units::human_secs(r.for_.as_secs_f64()),
                    when.join(" and "),
                    r.runbook
                );
            }
        }
    }
}

fn describe(c: &crate::alerts::rules::Condition) -> String {
    use crate::alerts::rules::{Direction, Transform};
    let mut v = c.metric.name().to_string();
    if let Some(d) = c.divided_by {
        v = format!("{v} / {d}");
    }
    let v = match c.transform {
        Transform::Value => v,
        Transform::Rate { over } => format!(
            "rate({v}, {})",
            crate::units::human_secs(over.as_secs_f64())
        ),
        Transform::Forecast { over, ahead } => format!(
            "forecast({v} over {}, {} ahead)",
            crate::units::human_secs(over.as_secs_f64()),
            crate::units::human_secs(ahead.as_secs_f64())
        ),
    };
    let (op, back) = match c.direction {
        Direction::Above => (">", "<="),
        Direction::Below => ("<", ">="),
    };
    if c.clear == c.bound {
        format!("{v} {op} {}", c.bound)
    } else {
        format!("{v} {op} {} (clears {back} {})", c.bound, c.clear)
    }
}

/// How `vigil alerts rules` prints.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum RulesFormat {
    Table,
    Prometheus,
}

/// `vigil alerts --collector ADDR`: the fleet's alerts, from the state changes the
/// collector stored over `since`: each alert and series' newest change says whether
/// it is pending or firing now.
pub async fn fleet(
    target: &super::fleet::CollectorTarget,
    since: std::time::Duration,
    json: bool,
) -> anyhow::Result<()> {
    use vigil_proto::v1::{fleet_event, EventsRequest};
    let mut client = super::fleet::connect(target).await?;
    let since_ms = crate::units::unix_ms(
        std::time::SystemTime::now()
            .checked_sub(since)
            .unwrap_or(std::time::UNIX_EPOCH),
    );
    let mut changes: Vec<(vigil_proto::v1::HostIdentity, AlertEvent)> = Vec::new();
    let mut token = String::new();
    loop {
        let page = client
            .events(EventsRequest {
                since_unix_ms: since_ms,
                limit: 0,
                page_token: std::mem::take(&mut token),
                alerts_only: true,
            })
            .await?
            .into_inner();
        for e in page.events {
            if let Some(fleet_event::Event::Alert(a)) = e.event {
                changes.push((e.host.unwrap_or_default(), a));
            }
        }
        if page.next_page_token.is_empty() {
            break;
        }
        token = page.next_page_token;
    }
    // The newest change per host, alert, severity and series.
    let mut latest: std::collections::BTreeMap<(String, String, String, String), usize> =
        Default::default();
    for (i, (h, a)) in changes.iter().enumerate() {
        latest.insert(
            (
                h.agent_id.clone(),
                a.alert.clone(),
                a.severity.clone(),
                labels(a),
            ),
            i,
        );
    }
    let active: Vec<&(vigil_proto::v1::HostIdentity, AlertEvent)> = latest
        .values()
        .map(|i| &changes[*i])
        .filter(|(_, a)| a.state == "pending" || a.state == "firing")
        .collect();
    // Maintenance windows: an alert a window covers is shown as silenced.
    let silences = match client
        .list_silences(vigil_proto::v1::ListSilencesRequest {})
        .await
    {
        Ok(r) => r.into_inner().silences,
        Err(e) => {
            eprintln!(
                "vigil: maintenance windows unknown ({}): alerts are not marked silenced",
                e.message()
            );
            Vec::new()
        }
    };
    let now = crate::units::unix_ms(std::time::SystemTime::now());
    let silenced = |h: &vigil_proto::v1::HostIdentity, a: &AlertEvent| {
        let labels = a.routed_labels(h);
        silences
            .iter()
            .find(|s| s.silences(&labels, now))
            .map(|s| s.id.clone())
    };
    let with_host = |h: &vigil_proto::v1::HostIdentity, a: &AlertEvent| {
        let mut v = alert_json(a);
        v["host"] = json!(h.hostname);
        v["agent_id"] = json!(h.agent_id);
        v["silenced_by"] = json!(silenced(h, a));
        v
    };
    if json {
        println!(
            "{}",
            json!({
                "since": rfc3339_ms(since_ms),
                "active": active.iter().map(|(h, a)| with_host(h, a)).collect::<Vec<_>>(),
                "recent": changes.iter().map(|(h, a)| with_host(h, a)).collect::<Vec<_>>(),
            })
        );
        return Ok(());
    }
    let firing = active.iter().filter(|(_, a)| a.state == "firing").count();
    println!(
        "fleet alerts (changes since {}): {} firing, {} pending",
        rfc3339_ms(since_ms),
        firing,
        active.len() - firing
    );
    for (h, a) in &active {
        match silenced(h, a) {
            Some(id) => print!("{:<24} [silenced by {}] ", clean(&h.hostname), clean(&id)),
            None => print!("{:<24} ", clean(&h.hostname)),
        }
        print_alert(a, false);
    }
    if !changes.is_empty() {
        println!("recent changes (newest last):");
        for (h, a) in changes
            .iter()
            .skip(changes.len().saturating_sub(RECENT_SHOWN))
        {
            print!("{:<24} ", clean(&h.hostname));
            print_alert(a, false);
        }
    }
    Ok(())
}

/// `vigil maintenance start`: a window on `host` (every alert, or one alert or
/// detection rule) for `duration`, made at the collector (a silence in its
/// Alertmanager when it has one).
pub async fn maintenance_start(
    target: &super::fleet::CollectorTarget,
    host: &str,
    alert: Option<&str>,
    duration: std::time::Duration,
    comment: &str,
    json: bool,
) -> anyhow::Result<()> {
    let mut client = super::fleet::connect(target).await?;
    let who = format!(
        "{}@{}",
        std::env::var("SUDO_USER")
            .or_else(|_| std::env::var("USER"))
            .unwrap_or_else(|_| "unknown".into()),
        sysinfo::System::host_name().unwrap_or_default()
    );
    let s = client
        .create_silence(vigil_proto::v1::CreateSilenceRequest {
            host: host.to_string(),
            alert: alert.unwrap_or_default().to_string(),
            duration_secs: duration.as_secs().max(1),
            comment: comment.to_string(),
            created_by: who,
        })
        .await?
        .into_inner();
    print_silence(&s, json);
    Ok(())
}

pub async fn maintenance_list(
    target: &super::fleet::CollectorTarget,
    all: bool,
    json: bool,
) -> anyhow::Result<()> {
    let mut client = super::fleet::connect(target).await?;
    let list = client
        .list_silences(vigil_proto::v1::ListSilencesRequest {})
        .await?
        .into_inner()
        .silences;
    let shown: Vec<_> = list
        .iter()
        .filter(|s| all || s.state != "expired")
        .collect();
    if shown.is_empty() && !json {
        println!(
            "no maintenance windows{}",
            if all {
                ""
            } else {
                " (pending or active; --all for expired ones)"
            }
        );
    }
    for s in shown {
        print_silence(s, json);
    }
    Ok(())
}

pub async fn maintenance_end(
    target: &super::fleet::CollectorTarget,
    id: &str,
    json: bool,
) -> anyhow::Result<()> {
    let mut client = super::fleet::connect(target).await?;
    let s = client
        .expire_silence(vigil_proto::v1::ExpireSilenceRequest { id: id.to_string() })
        .await?
        .into_inner();
    print_silence(&s, json);
    Ok(())
}

pub fn silence_json(s: &vigil_proto::v1::Silence) -> serde_json::Value {
    json!({
        "id": s.id,
        "state": s.state,
        "matchers": s.matchers.iter().map(|m| (m.name.clone(), m.value.clone())).collect::<std::collections::BTreeMap<_, _>>(),
        "starts": rfc3339_ms(s.starts_unix_ms),
        "ends": rfc3339_ms(s.ends_unix_ms),
        "created_by": s.created_by,
        "comment": s.comment,
        "kept_by": s.kept_by,
    })
}

fn print_silence(s: &vigil_proto::v1::Silence, json: bool) {
    if json {
        println!("{}", silence_json(s));
        return;
    }
    let m: Vec<String> = s
        .matchers
        .iter()
        .map(|m| format!("{}={}", clean(&m.name), clean(&m.value)))
        .collect();
    println!(
        "{} {:<8} {{{}}} {} .. {} by {} ({}): {}",
        clean(&s.id),
        s.state,
        m.join(","),
        rfc3339_ms(s.starts_unix_ms),
        rfc3339_ms(s.ends_unix_ms),
        clean(&s.created_by),
        s.kept_by,
        clean(&s.comment)
    );
}
