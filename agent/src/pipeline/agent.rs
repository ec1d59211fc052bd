//! The agent loop (`vigil agent`, which `cargo xtask run` starts): every probe that can
//! run plus host metrics, a summary per interval, and, with `--collector`, a batch per
//! interval streamed to the collector. Runs on host metrics alone if no probe loads.
use std::{
    collections::BTreeMap,
    sync::{atomic::Ordering, Arc},
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use anyhow::Context as _;
use tokio::sync::mpsc;
use vigil_proto::v1 as pb;

use crate::{
    config::AgentConfig,
    export::{convert, stream},
    histogram::LatencyHistogram,
    metrics::{Roots, Sampler},
    probes::{error_chain, events::Event, ProbeSettings, ProbeState, Probes},
    query::state::AgentState,
    trace::{human_ns, syscalls::rows, wait_for_stop},
};

/// Events kept per interval for the batch; more are counted as dropped.
const EVENTS_PER_BATCH: usize = 10_000;
/// The kernel doesn't wake the agent per event: it wakes it once the ring buffer is
/// a quarter full, and the agent drains it at the end of each interval, so a quiet host
/// costs no wake-up between intervals. While someone follows live events
/// (`vigil events --follow`), the agent also drains every DRAIN_EVERY so they see
/// events promptly. When the buffer fills faster than the agent drains it, events are
/// dropped and counted in the kernel (raise probes.ring_buffer_bytes).
const DRAIN_EVERY: Duration = Duration::from_millis(500);
/// Batches waiting for the exporter; when full a batch is dropped and counted.
const EXPORT_QUEUE: usize = 64;

struct Options {
    interval: Duration,
    slow_threshold: Duration,
    top: usize,
    collector: Option<String>,
    agent_id: Option<String>,
    socket: Option<std::path::PathBuf>,
}

/// A stable id for this host: /etc/machine-id, else the hostname.
fn default_agent_id(hostname: &str) -> String {
    std::fs::read_to_string("/etc/machine-id")
        .ok()
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| hostname.to_string())
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

/// Moves drained events into the batch (bounded) and to live followers; returns how
/// many the full batch had to drop.
fn absorb(
    events: &mut Vec<Event>,
    batch: &mut pb::Batch,
    state: &std::sync::RwLock<AgentState>,
) -> u64 {
    let mut dropped = 0;
    let mut st = state.write().ok();
    for e in events.drain(..) {
        let live = match &e {
            Event::Retransmit(r) => pb::live_event::Event::Retransmit(convert::retransmit(r)),
            Event::SlowSyscall(s) => pb::live_event::Event::SlowSyscall(convert::slow_syscall(s)),
        };
        if batch.retransmits.len() + batch.slow_syscalls.len() < EVENTS_PER_BATCH {
            match &live {
                pb::live_event::Event::Retransmit(r) => batch.retransmits.push(r.clone()),
                pb::live_event::Event::SlowSyscall(s) => batch.slow_syscalls.push(s.clone()),
                pb::live_event::Event::Missed(_) => {}
            }
        } else {
            dropped += 1;
        }
        if let Some(st) = st.as_mut() {
            st.push_event(live);
        }
    }
    dropped
}

pub async fn run(config: AgentConfig) -> anyhow::Result<()> {
    let settings = ProbeSettings {
        slow_threshold: Some(config.probes.slow_threshold.0),
        slow_events_per_sec: config.probes.slow_events_per_sec,
        ring_buffer_bytes: config.probes.ring_buffer_bytes,
        // Woken when a quarter full instead of per event (see DRAIN_EVERY).
        wake_at_bytes: Some(u64::from(config.probes.ring_buffer_bytes) / 4),
        ..Default::default()
    };
    std::fs::create_dir_all(&config.data_dir)
        .with_context(|| format!("creating the data directory {}", config.data_dir.display()))?;
    let opts = Options {
        interval: config.interval.0,
        slow_threshold: config.probes.slow_threshold.0,
        top: config.summary_rows,
        collector: config.collector.clone(),
        agent_id: config.agent_id.clone(),
        socket: config.api.then(|| config.socket.clone()),
    };
    let mut probes = match Probes::load(&settings) {
        Ok(p) => Some(p),
        Err(e) => {
            eprintln!(
                "vigil: probes unavailable, running on host metrics alone: {}",
                error_chain(&e)
            );
            None
        }
    };
    // Loading parsed the kernel's BTF (megabytes, now freed): give that memory back
    // to the system instead of keeping it as the agent's resident size.
    // SAFETY: malloc_trim only releases free heap memory.
    unsafe { libc::malloc_trim(0) };
    for (probe, state) in probes.iter().flat_map(|p| p.states()) {
        match state {
            ProbeState::On => eprintln!("vigil: probe {probe}: on"),
            ProbeState::Off(e) => eprintln!("vigil: probe {probe}: OFF: {}", error_chain(e)),
            ProbeState::Disabled => eprintln!("vigil: probe {probe}: not requested"),
        }
    }
    let mut reader = match probes.as_mut().map(Probes::event_reader) {
        Some(Ok(r)) => Some(r),
        Some(Err(e)) => {
            eprintln!("vigil: no event stream: {}", error_chain(&e));
            None
        }
        None => None,
    };
    let mut host = Sampler::new(Roots::default(), 5);
    let first = host.sample().context("reading host metrics")?;
    let agent_id = opts
        .agent_id
        .clone()
        .unwrap_or_else(|| default_agent_id(&first.host.hostname));
    let epoch = now_ms() as u64;

    let state = Arc::new(std::sync::RwLock::new(AgentState::new(
        convert::host_identity(&first, &agent_id),
        opts.interval.as_secs_f64(),
    )));
    let api = match &opts.socket {
        Some(path) => Some(crate::query::api::serve_unix(path, state.clone()).await?),
        None => None,
    };
    let export_stats = Arc::new(stream::ExportStats::default());
    let (export_tx, exporter) = match &opts.collector {
        Some(addr) => {
            let (tx, rx) = mpsc::channel(EXPORT_QUEUE);
            let task = tokio::spawn(stream::run(
                addr.clone(),
                rx,
                export_stats.clone(),
                Duration::from_secs(5),
            ));
            eprintln!("vigil: streaming to collector {addr} as agent {agent_id}");
            (Some(tx), Some(task))
        }
        None => (None, None),
    };
    eprintln!(
        "vigil: tracing the host every {:?} (Ctrl-C to stop)",
        opts.interval
    );

    let stop = wait_for_stop(None);
    tokio::pin!(stop);
    let mut tick = tokio::time::interval(opts.interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tick.tick().await;
    let mut previous: BTreeMap<u32, LatencyHistogram> = BTreeMap::new();
    let mut events = Vec::new();
    let mut batch = pb::Batch::default();
    let mut sequence = 0u64;
    let mut window_start = now_ms();
    let mut dropped_events = 0u64;
    let mut dropped_batches = 0u64;
    let mut drain = tokio::time::interval(DRAIN_EVERY);
    drain.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let follower_joined = state.read().map(|s| s.follower_joined.clone()).ok();
    let mut reader_waits = true;
    loop {
        let following = state.read().is_ok_and(|s| s.live.receiver_count() > 0);
        tokio::select! {
            r = &mut stop => { r?; break; }
            r = async { reader.as_mut()?.read(&mut events).await.ok() }, if reader.is_some() && reader_waits => {
                if r.is_none() {
                    tracing::warn!("the event ring buffer cannot be waited on; draining it each interval only");
                    reader_waits = false;
                }
                dropped_events += absorb(&mut events, &mut batch, &state);
            }
            _ = async { follower_joined.as_ref()?.notified().await; Some(()) }, if !following => {
                // Loop again: `following` is now true and the drain clock runs.
                drain.reset_immediately();
            }
            _ = drain.tick(), if following => {
                if let Some(r) = reader.as_mut() {
                    r.drain(&mut events);
                }
                dropped_events += absorb(&mut events, &mut batch, &state);
            }
            _ = tick.tick() => {
                // Everything up to now belongs to this interval's batch.
                if let Some(r) = reader.as_mut() {
                    r.drain(&mut events);
                }
                dropped_events += absorb(&mut events, &mut batch, &state);
                let sample = host.sample().context("reading host metrics")?;
                let (delta, counters) = match &probes {
                    Some(p) => {
                        let now = p.syscall_latency()?;
                        let delta: BTreeMap<u32, LatencyHistogram> = now
                            .iter()
                            .map(|(nr, h)| (*nr, previous.get(nr).map_or_else(|| h.clone(), |p| h.since(p))))
                            .filter(|(_, h)| h.count > 0)
                            .collect();
                        previous = now;
                        (delta, p.counters()?)
                    }
                    None => (BTreeMap::new(), Default::default()),
                };
                let undecodable = reader.as_ref().map_or(0, |r| r.decode_errors);
                if let Ok(mut st) = state.write() {
                    st.identity = convert::host_identity(&sample, &agent_id);
                    st.latest = Some(convert::host_metrics(&sample));
                    st.push_latency(delta.clone());
                }
                if opts.top > 0 {
                    let r = rows(&delta);
                    let calls: u64 = r.iter().map(|r| r.count).sum();
                    println!(
                        "--- {:?}: {} syscalls, {} slow (> {}), {} retransmits | lost {} (rate-limited {}, undecodable {}, dropped {})",
                        opts.interval, calls, batch.slow_syscalls.len(), human_ns(opts.slow_threshold.as_nanos() as u64),
                        batch.retransmits.len(), counters.lost_events(), counters.slow_syscall_rate_limited, undecodable,
                        dropped_events + dropped_batches + export_stats.dropped.load(Ordering::Relaxed)
                    );
                    println!(
                        "host: cpu {:.1} % of {} | load {:.2} | memory {:.2} of {:.2} GiB available | {} processes",
                        sample.cpu.usage_percent, sample.cpu.count, sample.load.one,
                        sample.memory.available_bytes as f64 / (1u64 << 30) as f64,
                        sample.memory.total_bytes as f64 / (1u64 << 30) as f64,
                        sample.processes.total
                    );
                    crate::trace::syscalls::print_table(&r, opts.top);
                }
                if let Some(tx) = &export_tx {
                    sequence += 1;
                    let end = now_ms();
                    batch.agent_id = agent_id.clone();
                    batch.epoch = epoch;
                    batch.sequence = sequence;
                    batch.start_unix_ms = window_start;
                    batch.end_unix_ms = end;
                    batch.host = Some(convert::host_identity(&sample, &agent_id));
                    batch.metrics = vec![convert::host_metrics(&sample)];
                    batch.syscalls = delta.iter().map(|(nr, h)| convert::syscall_latency(*nr, h)).collect();
                    // Cumulative since the agent started: the collector can difference them.
                    batch.losses = Some(pb::Losses {
                        slow_syscall_ringbuf_full: counters.slow_syscall_ringbuf_full,
                        slow_syscall_rate_limited: counters.slow_syscall_rate_limited,
                        retransmit_ringbuf_full: counters.retransmit_ringbuf_full,
                        syscall_start_store_failed: counters.syscall_start_store_failed,
                        syscall_out_of_range: counters.syscall_out_of_range,
                        undecodable_events: undecodable,
                        pipeline_dropped: dropped_events + dropped_batches + export_stats.dropped.load(Ordering::Relaxed),
                    });
                    window_start = end;
                    if tx.try_send(std::mem::take(&mut batch)).is_err() {
                        dropped_batches += 1;
                        tracing::warn!(sequence, "export queue full; batch dropped and counted");
                    }
                } else {
                    batch = pb::Batch::default();
                }
            }
        }
    }
    drop(export_tx);
    if let Some(task) = exporter {
        let _ = task.await;
        eprintln!(
            "vigil: exported {} batches, {} acked, {} dropped, {} reconnects",
            export_stats.sent.load(Ordering::Relaxed),
            export_stats.acked.load(Ordering::Relaxed),
            export_stats.dropped.load(Ordering::Relaxed) + dropped_batches,
            export_stats.reconnects.load(Ordering::Relaxed)
        );
    }
    if let Some(api) = api {
        api.abort();
    }
    if let Some(path) = &opts.socket {
        let _ = std::fs::remove_file(path);
    }
    eprintln!("vigil: stopping, probes detached");
    Ok(())
}
