//! `vigil trace retransmits`: each TCP retransmit as it happens.
use std::time::Duration;

use serde::Serialize;

use crate::{
    probes::{
        events::{tcp_state_name, Event, RetransmitEvent},
        Probe, ProbeSettings,
    },
    query::display::{rfc3339_ns, rfc3339_us, unix_ns},
    trace::{announce, load_probes, watch_events},
};

#[derive(Serialize)]
struct RetransmitJson<'a> {
    /// RFC 3339 UTC, nanoseconds.
    time: String,
    time_unix_ns: i64,
    saddr: String,
    sport: u16,
    daddr: String,
    dport: u16,
    state: &'a str,
    err: i32,
}

#[derive(Serialize)]
struct Summary {
    retransmits: u64,
    lost_events: u64,
}

fn print(e: &RetransmitEvent, json: bool) -> anyhow::Result<()> {
    if json {
        let j = RetransmitJson {
            time: rfc3339_ns(unix_ns(e.time)),
            time_unix_ns: unix_ns(e.time),
            saddr: e.saddr.to_string(),
            sport: e.sport,
            daddr: e.daddr.to_string(),
            dport: e.dport,
            state: tcp_state_name(e.state),
            err: e.err,
        };
        println!("{}", serde_json::to_string(&j)?);
    } else {
        let err = if e.err != 0 {
            format!(" err={}", e.err)
        } else {
            String::new()
        };
        println!(
            "{:<27} {:>39}:{:<5} -> {:>39}:{:<5} {}{}",
            rfc3339_us(unix_ns(e.time)),
            e.saddr,
            e.sport,
            e.daddr,
            e.dport,
            tcp_state_name(e.state),
            err
        );
    }
    Ok(())
}

pub async fn run(duration: Option<Duration>, json: bool) -> anyhow::Result<()> {
    let settings = ProbeSettings {
        syscalls: false,
        slow_threshold: None,
        ..Default::default()
    };
    let mut probes = load_probes(&settings, Probe::TcpRetransmit)?;
    let mut reader = probes.event_reader()?;
    announce("TCP retransmits", duration);
    if !json {
        println!(
            "{:<27} {:>45} {:>45} STATE",
            "TIME", "SOURCE", "DESTINATION"
        );
    }
    let mut seen = 0u64;
    watch_events(&mut reader, duration, |event| {
        if let Event::Retransmit(e) = event {
            seen += 1;
            print(e, json)?;
        }
        Ok(())
    })
    .await?;
    let counters = probes.counters()?;
    let summary = Summary {
        retransmits: seen,
        lost_events: counters.retransmit_ringbuf_full + reader.decode_errors,
    };
    if json {
        println!("{}", serde_json::to_string(&summary)?);
    } else {
        println!(
            "{} retransmits, {} lost",
            summary.retransmits, summary.lost_events
        );
    }
    Ok(())
}
