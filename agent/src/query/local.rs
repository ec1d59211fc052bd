//! `vigil stats`, `vigil syscalls`, `vigil retrans`, `vigil events`: questions to the
//! local agent over its unix socket.
use std::{path::Path, time::Duration};

use serde_json::json;
use vigil_proto::v1::{
    live_event, FollowRequest, RetransmitsRequest, StatsRequest, SyscallLatencyRequest,
    TcpRetransmit,
};

use super::api::connect;
use crate::{
    export::convert,
    histogram::LatencyHistogram,
    trace::syscalls::{print_table, rows},
};

pub async fn stats(
    socket: &Path,
    local: bool,
    window: Duration,
    top: usize,
    json: bool,
) -> anyhow::Result<()> {
    if !local {
        match connect(socket).await {
            Ok(mut agent) => {
                let r = agent.stats(StatsRequest {}).await?.into_inner();
                let id = r.host.unwrap_or_default();
                let m = r.metrics.unwrap_or_default();
                if json {
                    let mut v = super::fleet::metrics_json(&id.hostname, &m);
                    v["agent_id"] = json!(id.agent_id);
                    v["source"] = json!("agent");
                    if let Some(a) = &r.agent {
                        v["agent"] = super::fleet::agent_self_json(a);
                    }
                    println!("{v}");
                } else {
                    super::fleet::print_metrics(&id, &m);
                }
                return Ok(());
            }
            Err(e) => eprintln!("vigil: {e:#}; reading the host directly"),
        }
    }
    crate::trace::stats::run(window, top, json).await
}

pub async fn syscalls(
    socket: &Path,
    window: Duration,
    top: usize,
    json: bool,
) -> anyhow::Result<()> {
    let window_secs = window.as_secs().clamp(1, u64::from(u32::MAX)) as u32;
    let r = connect(socket)
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
            json!({ "syscalls": rows, "window_secs": window_secs })
        );
    } else {
        print_table(&rows, top);
    }
    Ok(())
}

fn retransmit_json(r: &TcpRetransmit) -> serde_json::Value {
    json!({
        "type": "retransmit", "time_unix_ns": r.time_unix_ns, "saddr": r.saddr, "sport": r.sport,
        "daddr": r.daddr, "dport": r.dport, "state": r.state, "err": r.err,
    })
}

fn print_retransmit(r: &TcpRetransmit, json: bool) {
    if json {
        println!("{}", retransmit_json(r));
    } else {
        println!(
            "retransmit {}:{} -> {}:{} {} err={}",
            r.saddr, r.sport, r.daddr, r.dport, r.state, r.err
        );
    }
}

pub async fn retrans(socket: &Path, limit: u32, json: bool) -> anyhow::Result<()> {
    let r = connect(socket)
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

pub async fn events(socket: &Path, follow: bool, json: bool) -> anyhow::Result<()> {
    let mut agent = connect(socket).await?;
    if !follow {
        return retrans(socket, 100, json).await;
    }
    let mut stream = agent.follow(FollowRequest {}).await?.into_inner();
    let stop = crate::trace::wait_for_stop(None);
    tokio::pin!(stop);
    loop {
        let event = tokio::select! {
            r = &mut stop => { r?; return Ok(()); }
            e = stream.message() => e?,
        };
        let Some(event) = event.and_then(|e| e.event) else {
            return Ok(());
        };
        match event {
            live_event::Event::Retransmit(r) => print_retransmit(&r, json),
            live_event::Event::SlowSyscall(s) => {
                let name = crate::syscall_table::syscall_name(s.nr).unwrap_or("?");
                if json {
                    println!(
                        "{}",
                        json!({"type": "slow_syscall", "time_unix_ns": s.time_unix_ns, "pid": s.pid, "tid": s.tid,
                               "comm": s.comm, "syscall": name, "nr": s.nr, "latency_ns": s.latency_ns, "cgroup_id": s.cgroup_id})
                    );
                } else {
                    println!(
                        "slow syscall {name} {} ns pid {} ({})",
                        s.latency_ns, s.pid, s.comm
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
        }
    }
}
