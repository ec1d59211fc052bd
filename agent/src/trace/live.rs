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
    let mut host = crate::metrics::Sampler::new(crate::metrics::Roots::default(), 0);
    if let Err(e) = host.sample() {
        eprintln!("vigil: host metrics unavailable: {e}");
    }
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
                match host.sample() {
                    Ok(h) => println!(
                        "host: cpu {:.1} % of {} | load {:.2} | memory {:.2} of {:.2} GiB available | {} processes",
                        h.cpu.usage_percent, h.cpu.count, h.load.one,
                        h.memory.available_bytes as f64 / (1u64 << 30) as f64,
                        h.memory.total_bytes as f64 / (1u64 << 30) as f64,
                        h.processes.total
                    ),
                    Err(e) => println!("host: metrics unavailable: {e}"),
                }
                crate::trace::syscalls::print_table(&r, top);
                retransmits = 0;
                slow = 0;
            }
        }
    }
    eprintln!("vigil: stopping, probes detached");
    Ok(())
}
