//! The foreground agent (`vigil agent`, what `cargo xtask run` shows): every probe
//! that can run, and a summary per interval until Ctrl-C.
use std::{collections::BTreeMap, time::Duration};

use anyhow::Context as _;

use crate::{
    histogram::LatencyHistogram,
    probes::{error_chain, events::Event, ProbeSettings, ProbeState, Probes},
    trace::{human_ns, syscalls::rows, wait_for_stop},
};

pub async fn run(interval: Duration, slow_threshold: Duration, top: usize) -> anyhow::Result<()> {
    let settings = ProbeSettings {
        slow_threshold: Some(slow_threshold),
        ..Default::default()
    };
    let mut probes = Probes::load(&settings).map_err(|e| anyhow::anyhow!(error_chain(&e)))?;
    for (probe, state) in probes.states() {
        match state {
            ProbeState::On => eprintln!("vigil: probe {probe}: on"),
            ProbeState::Off(e) => eprintln!("vigil: probe {probe}: OFF: {}", error_chain(e)),
            ProbeState::Disabled => eprintln!("vigil: probe {probe}: not requested"),
        }
    }
    let mut reader = probes.event_reader()?;
    let stop = wait_for_stop(None);
    tokio::pin!(stop);
    let mut tick = tokio::time::interval(interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tick.tick().await;
    let mut previous: BTreeMap<u32, LatencyHistogram> = BTreeMap::new();
    let mut batch = Vec::new();
    let (mut retransmits, mut slow) = (0u64, 0u64);
    loop {
        tokio::select! {
            r = &mut stop => { r?; break; }
            r = reader.read(&mut batch) => {
                r.context("reading the event ring buffer")?;
                for e in batch.drain(..) {
                    match e {
                        Event::Retransmit(_) => retransmits += 1,
                        Event::SlowSyscall(_) => slow += 1,
                    }
                }
            }
            _ = tick.tick() => {
                let now = probes.syscall_latency()?;
                let delta: BTreeMap<u32, LatencyHistogram> = now
                    .iter()
                    .map(|(nr, h)| (*nr, previous.get(nr).map_or_else(|| h.clone(), |p| h.since(p))))
                    .collect();
                previous = now;
                let c = probes.counters()?;
                let r = rows(&delta);
                let calls: u64 = r.iter().map(|r| r.count).sum();
                println!(
                    "--- {:?}: {} syscalls, {} slow (> {}), {} retransmits | lost {} (rate-limited {}, undecodable {})",
                    interval, calls, slow, human_ns(slow_threshold.as_nanos() as u64), retransmits,
                    c.lost_events(), c.slow_syscall_rate_limited, reader.decode_errors
                );
                crate::trace::syscalls::print_table(&r, top);
                retransmits = 0;
                slow = 0;
            }
        }
    }
    eprintln!("vigil: stopping, probes detached");
    Ok(())
}
