//! `vigil stats`, `vigil syscalls`, `vigil retrans`, `vigil events`: questions to the
//! local agent over its unix socket.
use std::time::Duration;

use serde_json::json;
use vigil_proto::v1::{
    live_event, FollowRequest, RetransmitsRequest, StatsRequest, SyscallLatencyRequest,
    TcpRetransmit,
};

use super::api::{connect_to, AgentTarget};
use super::display::{clean, rfc3339_ms, rfc3339_ns, rfc3339_us};
use crate::{
    export::convert,
    histogram::LatencyHistogram,
    trace::syscalls::{print_table, rows},
};

pub async fn stats(
    socket: &AgentTarget,
    local: bool,
    window: Duration,
    top: usize,
    json: bool,
) -> anyhow::Result<()> {
    if !local {
        match connect_to(socket).await {
            Ok(mut agent) => {
                let r = agent.stats(StatsRequest {}).await?.into_inner();
                let id = r.host.unwrap_or_default();
                let m = r.metrics.unwrap_or_default();
                if json {
                    let sample = convert::host_sample(&id, &m);
                    println!(
                        "{}",
                        stats_json(&sample, "agent", Some(&id.agent_id), r.agent.as_ref())
                    );
                } else {
                    super::fleet::print_metrics(&id, &m);
                }
                return Ok(());
            }
            // Another machine's agent: its host cannot be read from here.
            Err(e) if socket.agent.is_some() => return Err(e),
            Err(e) => eprintln!("vigil: {e:#}; reading the host directly"),
        }
    }
    crate::trace::stats::run(window, top, json).await
}

/// `vigil stats --json`, `vigil stats --local --json` and `vigil host --json`: one
/// shape, the host sample's, with where it came from (`source`: "agent", "host" read
/// directly, or "collector"), the agent's id and self-report, the probes' state as a
/// list (null when there is no agent to ask), and the sample's time as RFC 3339 UTC.
pub fn stats_json(
    sample: &crate::metrics::HostSample,
    source: &str,
    agent_id: Option<&str>,
    agent: Option<&vigil_proto::v1::AgentSelf>,
) -> serde_json::Value {
    let mut v = serde_json::to_value(sample).unwrap_or_else(|_| json!({}));
    v["source"] = json!(source);
    v["time"] = json!(rfc3339_ms(sample.time_unix_ms as i64));
    v["agent_id"] = json!(agent_id);
    v["agent"] = agent.map_or(serde_json::Value::Null, super::fleet::agent_self_json);
    v["probes"] = agent.map_or(serde_json::Value::Null, |a| {
        a.probes
            .iter()
            .map(|(name, state)| {
                let (state, reason) =
                    match (state.strip_prefix("off: "), state.strip_prefix("shed: ")) {
                        (Some(reason), _) => ("off", reason),
                        (_, Some(reason)) => ("shed", reason),
                        _ => (state.as_str(), ""),
                    };
                json!({"name": name, "state": state, "reason": reason})
            })
            .collect()
    });
    v
}

pub async fn syscalls(
    socket: &AgentTarget,
    window: Duration,
    top: usize,
    json: bool,
) -> anyhow::Result<()> {
    let window_secs = window.as_secs().clamp(1, u64::from(u32::MAX)) as u32;
    let r = connect_to(socket)
        .await?
        .syscall_latency(SyscallLatencyRequest { window_secs })
        .await?
        .into_inner();
    let hist: std::collections::BTreeMap<u32, LatencyHistogram> = r
        .syscalls
        .iter()
        .map(|s| (s.nr, convert::histogram(s)))
        .collect();
    let rows = rows(&hist);
    if json {
        println!(
            "{}",
            json!({ "syscalls": rows, "window_secs": window_secs, "covered_secs": r.covered_secs })
        );
    } else {
        let asked = f64::from(window_secs);
        if r.covered_secs + 0.5 < asked {
            println!(
                "covering the last {} only: the agent has kept no more history than that (asked for {})",
                crate::units::human_secs(r.covered_secs),
                crate::units::human_secs(asked)
            );
        } else {
            println!(
                "syscall latency over the last {}",
                crate::units::human_secs(r.covered_secs)
            );
        }
        print_table(&rows, top);
    }
    Ok(())
}

fn retransmit_json(r: &TcpRetransmit) -> serde_json::Value {
    json!({
        "type": "retransmit", "time": rfc3339_ns(r.time_unix_ns), "time_unix_ns": r.time_unix_ns, "saddr": r.saddr, "sport": r.sport,
        "daddr": r.daddr, "dport": r.dport, "state": r.state, "err": r.err,
    })
}

fn print_retransmit(r: &TcpRetransmit, json: bool) {
    if json {
        println!("{}", retransmit_json(r));
    } else {
        println!("retransmit {}", super::display::retransmit_text(r));
    }
}

pub async fn retrans(socket: &AgentTarget, limit: u32, json: bool) -> anyhow::Result<()> {
    let r = connect_to(socket)
        .await?
        .retransmits(RetransmitsRequest { limit })
        .await?
        .into_inner();
    for t in &r.retransmits {
        print_retransmit(t, json);
    }
    if json {
        println!("{}", json!({ "retransmits": r.retransmits.len() }));
    }
    Ok(())
}

/// A finding as `vigil events --json` prints it: one object per line.
pub fn finding_json(f: &vigil_proto::v1::Finding) -> serde_json::Value {
    let proc_json = |p: &vigil_proto::v1::Process| {
        json!({"pid": p.pid, "exe": p.exe, "cmdline": p.cmdline, "uid": p.uid, "name": p.name,
               "container": p.container, "start_unix_ms": p.start_unix_ms})
    };
    json!({
        "type": "finding",
        "rule": f.rule,
        "severity": f.severity,
        "mitre": f.mitre,
        "description": f.description,
        "event": f.event,
        "time": rfc3339_ms(f.time_unix_ms),
        "time_unix_ns": f.time_unix_ms.saturating_mul(1_000_000),
        "process": f.process.as_ref().map(proc_json),
        "parent": f.parent.as_ref().map(proc_json),
        "ancestors": f.ancestors.iter().map(proc_json).collect::<Vec<_>>(),
        "details": f.details,
        "count": f.count,
        "first_unix_ns": f.first_unix_ms.saturating_mul(1_000_000),
        "last_unix_ns": f.last_unix_ms.saturating_mul(1_000_000),
    })
}

fn print_finding(f: &vigil_proto::v1::Finding, json: bool) {
    if json {
        println!("{}", finding_json(f));
        return;
    }
    let p = f.process.clone().unwrap_or_default();
    let parent = f.parent.clone().unwrap_or_default();
    let count = if f.count > 1 {
        format!(" (x{})", f.count)
    } else {
        String::new()
    };
    println!(
        "{} {:<8} {:<30} [{}] pid {} {} ({}) uid {} <- {} {}{}",
        rfc3339_ms(f.time_unix_ms),
        clean(&f.severity.to_uppercase()),
        clean(&f.rule),
        clean(&f.mitre.join(",")),
        p.pid,
        clean(&p.exe),
        clean(&p.cmdline),
        p.uid,
        parent.pid,
        clean(&parent.exe),
        count
    );
    for (k, v) in &f.details {
        println!("    {}: {}", clean(k), clean(v));
    }
}

pub async fn events(
    socket: &AgentTarget,
    since: std::time::Duration,
    follow: bool,
    json: bool,
) -> anyhow::Result<()> {
    let mut agent = connect_to(socket).await?;
    // Subscribe first, so nothing falls between the recent list and the live stream.
    let stream = if follow {
        Some(agent.follow(FollowRequest {}).await?.into_inner())
    } else {
        None
    };
    let since_ms = crate::units::unix_ms(
        std::time::SystemTime::now()
            .checked_sub(since)
            .unwrap_or(std::time::UNIX_EPOCH),
    );
    let mut seen = std::collections::HashSet::new();
    // Page by page: however many findings the agent keeps, no answer is too large
    // for the socket's message limit.
    let mut page_token = String::new();
    let mut printed = 0usize;
    loop {
        let page = agent
            .findings(vigil_proto::v1::FindingsRequest {
                since_unix_ms: since_ms,
                page_size: 0,
                page_token: std::mem::take(&mut page_token),
            })
            .await?
            .into_inner();
        for f in &page.findings {
            if follow {
                seen.insert((
                    f.rule.clone(),
                    f.time_unix_ms,
                    f.process.as_ref().map(|p| p.pid),
                ));
            }
            print_finding(f, json);
        }
        printed += page.findings.len();
        if page.next_page_token.is_empty() {
            break;
        }
        page_token = page.next_page_token;
    }
    if !json && printed == 0 && !follow {
        println!(
            "no findings in the last {}",
            crate::units::human_secs(since.as_secs_f64())
        );
    }
    let Some(stream) = stream else {
        return Ok(());
    };
    following();
    follow_until_stop(stream, |event| match event {
            live_event::Event::Finding(f) => {
                let key = (
                    f.rule.clone(),
                    f.time_unix_ms,
                    f.process.as_ref().map(|p| p.pid),
                );
                if !seen.remove(&key) {
                    print_finding(&f, json);
                }
            }
            live_event::Event::Retransmit(r) => print_retransmit(&r, json),
            live_event::Event::Alert(a) => super::alerts::print_alert(&a, json),
            live_event::Event::SlowSyscall(s) => {
                let name = crate::syscall_table::syscall_name(s.nr).unwrap_or("?");
                if json {
                    println!(
                        "{}",
                        json!({"type": "slow_syscall", "time": rfc3339_ns(s.time_unix_ns), "time_unix_ns": s.time_unix_ns, "pid": s.pid, "tid": s.tid,
                               "comm": s.comm, "syscall": name, "nr": s.nr, "latency_ns": s.latency_ns, "cgroup_id": s.cgroup_id})
                    );
                } else {
                    println!(
                        "{} slow syscall {name} {} pid {} ({})",
                        rfc3339_us(s.time_unix_ns),
                        crate::units::human_ns(s.latency_ns),
                        s.pid,
                        clean(&s.comm)
                    );
                }
            }
            live_event::Event::Missed(n) => {
                if json {
                    println!("{}", json!({"type": "missed", "events": n}));
                } else {
                    println!("-- {n} events missed: this follower fell behind --");
                }
            }
    })
    .await
}

/// Says on stderr that the live stream is on: the agent has subscribed this follower,
/// so every event from here on reaches it (what a script or a test waits for before it
/// sets off the events it wants to see).
pub fn following() {
    eprintln!("vigil: following live events (Ctrl-C to stop)");
}

/// Hands each live event to `on_event` until the stream ends or SIGINT/SIGTERM.
pub async fn follow_until_stop(
    mut stream: tonic::Streaming<vigil_proto::v1::LiveEvent>,
    mut on_event: impl FnMut(live_event::Event),
) -> anyhow::Result<()> {
    let stop = crate::startup::wait_for_stop(None);
    tokio::pin!(stop);
    loop {
        let event = tokio::select! {
            r = &mut stop => { r?; return Ok(()); }
            e = stream.message() => e?,
        };
        match event.and_then(|e| e.event) {
            Some(e) => on_event(e),
            None => return Ok(()),
        }
    }
}
