//! `vigil trace processes`: process exec, fork and exit events, live (like execsnoop,
//! plus forks and exits with their status).
use std::time::Duration;

use serde::Serialize;
use vigil_common::ProcessOp;

use crate::{
    probes::{events::Event, Probe, ProbeSettings},
    query::display::{rfc3339_ns, rfc3339_us, unix_ns},
    trace::{announce, load_probes, watch_events},
};

#[derive(Serialize)]
struct ProcessJson<'a> {
    /// RFC 3339 UTC, nanoseconds.
    time: String,
    time_unix_ns: i64,
    event: &'static str,
    pid: u32,
    ppid: u32,
    uid: u32,
    gid: u32,
    comm: &'a str,
    #[serde(skip_serializing_if = "str::is_empty")]
    filename: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    exit_code: Option<i32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    signal: Option<i32>,
    cgroup_id: u64,
}

#[derive(Serialize, Default)]
struct Summary {
    execs: u64,
    forks: u64,
    exits: u64,
    lost_events: u64,
}

fn op_name(op: ProcessOp) -> &'static str {
    match op {
        ProcessOp::Exec => "exec",
        ProcessOp::Fork => "fork",
        ProcessOp::Exit => "exit",
    }
}

pub async fn run(duration: Option<Duration>, exec_only: bool, json: bool) -> anyhow::Result<()> {
    let settings = ProbeSettings {
        syscalls: false,
        retransmits: None,
        processes: true,
        ..Default::default()
    };
    let mut probes = load_probes(&settings, Probe::ProcessLifecycle)?;
    let mut reader = probes.event_reader()?;
    announce("process exec, fork and exit", duration);
    if !json {
        println!(
            "{:<27} {:<5} {:>8} {:>8} {:>6} {:<16} DETAIL",
            "TIME", "EVENT", "PID", "PPID", "UID", "COMM"
        );
    }
    let mut summary = Summary::default();
    watch_events(&mut reader, duration, |event| {
        let Event::Process(e) = event else {
            return Ok(());
        };
        match e.op {
            ProcessOp::Exec => summary.execs += 1,
            ProcessOp::Fork => summary.forks += 1,
            ProcessOp::Exit => summary.exits += 1,
        }
        if exec_only && e.op != ProcessOp::Exec {
            return Ok(());
        }
        let (code, signal) = (e.exit_code >> 8 & 0xff, e.exit_code & 0x7f);
        if json {
            let exit = e.op == ProcessOp::Exit;
            let j = ProcessJson {
                time: rfc3339_ns(unix_ns(e.time)),
                time_unix_ns: unix_ns(e.time),
                event: op_name(e.op),
                pid: e.pid,
                ppid: e.ppid,
                uid: e.uid,
                gid: e.gid,
                comm: &e.comm,
                filename: &e.filename,
                exit_code: exit.then_some(code),
                signal: (exit && signal != 0).then_some(signal),
                cgroup_id: e.cgroup_id,
            };
            println!("{}", serde_json::to_string(&j)?);
        } else {
            let detail = match e.op {
                ProcessOp::Exec => e.filename.clone(),
                ProcessOp::Fork => String::new(),
                ProcessOp::Exit if signal != 0 => format!("killed by signal {signal}"),
                ProcessOp::Exit => format!("exit code {code}"),
            };
            println!(
                "{:<27} {:<5} {:>8} {:>8} {:>6} {:<16} {detail}",
                rfc3339_us(unix_ns(e.time)),
                op_name(e.op),
                e.pid,
                e.ppid,
                e.uid,
                e.comm
            );
        }
        Ok(())
    })
    .await?;
    let c = probes.counters()?;
    summary.lost_events = c.process_ringbuf_full + reader.decode_errors;
    if json {
        println!("{}", serde_json::to_string(&summary)?);
    } else {
        println!(
            "{} execs, {} forks, {} exits, {} lost",
            summary.execs, summary.forks, summary.exits, summary.lost_events
        );
    }
    Ok(())
}
