//! The agent loop (`vigil agent`, which `cargo xtask run` starts): every probe that can
//! run plus host metrics, and a batch per interval written to the spool and, with a
//! collector, streamed to it. Runs on host metrics alone if no probe loads.
//!
//! Signals: SIGTERM/SIGINT stop the probes, write the current partial batch to the
//! spool and give the exporter until `shutdown_timeout` to get it acked. SIGHUP
//! re-reads the config; a bad one is refused (the old one stays), and fields that need
//! new probes or a new socket are reported as needing a restart.
use std::{
    collections::BTreeMap,
    sync::{atomic::Ordering, Arc},
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use anyhow::Context as _;
use tokio::{
    signal::unix::{signal, SignalKind},
    sync::watch,
};
use vigil_proto::v1 as pb;

use crate::{
    config::{AgentConfig, ConfigError},
    detect::Detector,
    export::{
        convert,
        stream::{self, SharedSpool},
    },
    histogram::LatencyHistogram,
    metrics::{Roots, Sampler},
    probes::{error_chain, events::Event, ProbeSettings, ProbeState, Probes},
    query::state::AgentState,
    spool::Spool,
    trace::syscalls::rows,
    units::human_ns,
};

/// Events kept per interval for the batch; more are counted as dropped.
const EVENTS_PER_BATCH: usize = 10_000;
/// Findings kept per interval for the batch; more are counted (findings_dropped).
const FINDINGS_PER_BATCH: usize = 1_000;
/// How often the process table is checked against /proc and the watched directories
/// are looked up again (new home directories, a cron directory created later).
const RESCAN_EVERY: Duration = Duration::from_secs(60);
/// Processes the table tracks at most.
const MAX_PROCESSES: usize = 65_536;
/// The kernel doesn't wake the agent per event: it wakes it once the ring buffer is a
/// quarter full, or for an event when the last wake-up is DRAIN_EVERY old; after a
/// wake-up the agent drains every DRAIN_EVERY until a look finds nothing new, and it
/// drains at the end of each interval. So a quiet host costs no wake-up between
/// intervals, and an event (a finding) is handled within DRAIN_EVERY. While someone
/// follows live events (`vigil events --follow`) the short clock runs all along. When
/// the buffer fills faster than the agent drains it, events are dropped and counted in
/// the kernel (raise probes.ring_buffer_bytes).
const DRAIN_EVERY: Duration = Duration::from_millis(500);

/// Re-reads the configuration (file and flags) on SIGHUP.
pub type Reload = Box<dyn Fn() -> Result<AgentConfig, ConfigError> + Send>;

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

/// Moves drained events into the batch (bounded) and to live followers; process and
/// security events go through the detector, and its findings likewise. Returns how
/// many events the full batch had to drop.
fn absorb(
    events: &mut Vec<Event>,
    iv: &mut Interval,
    state: &std::sync::RwLock<AgentState>,
    mut detector: Option<&mut Detector>,
) -> u64 {
    let batch = &mut iv.batch;
    let mut dropped = 0;
    let mut st = state.write().ok();
    let mut findings = Vec::new();
    for e in events.drain(..) {
        let live = match &e {
            Event::Retransmit(r) => pb::live_event::Event::Retransmit(convert::retransmit(r)),
            Event::SlowSyscall(s) => pb::live_event::Event::SlowSyscall(convert::slow_syscall(s)),
            Event::Process(p) => {
                if let Some(d) = detector.as_deref_mut() {
                    d.on_process(p, &mut findings);
                }
                continue;
            }
            Event::Security(s) => {
                if let Some(d) = detector.as_deref_mut() {
                    d.on_security(s, &mut findings);
                }
                continue;
            }
        };
        if batch.retransmits.len() + batch.slow_syscalls.len() < EVENTS_PER_BATCH {
            match &live {
                pb::live_event::Event::Retransmit(r) => batch.retransmits.push(r.clone()),
                pb::live_event::Event::SlowSyscall(s) => batch.slow_syscalls.push(s.clone()),
                pb::live_event::Event::Missed(_) | pb::live_event::Event::Finding(_) => {}
            }
        } else {
            dropped += 1;
        }
        if let Some(st) = st.as_mut() {
            st.push_event(live);
        }
    }
    if let Some(d) = detector {
        d.tick(false, &mut findings);
        if let Some(st) = st.as_deref_mut() {
            let a = &mut st.agent;
            a.process_events = d.stats.process_events;
            a.security_events = d.stats.security_events;
            a.findings = d.stats.findings;
            a.processes_tracked = d.stats.table_size;
            a.processes_untracked = d.stats.untracked;
            a.connect_watch_full = d.stats.watch_failed;
            if a.rule_matches.len() != d.stats.matches.len()
                || d.stats
                    .matches
                    .iter()
                    .any(|(k, v)| a.rule_matches.get(k) != Some(v))
            {
                a.rule_matches = d.stats.matches.clone().into_iter().collect();
            }
        }
    }
    publish_findings(findings, iv, st.as_deref_mut());
    dropped
}

/// Puts findings into the batch (bounded, the rest counted), the recent list and the
/// live stream, and logs them.
fn publish_findings(
    findings: Vec<pb::Finding>,
    iv: &mut Interval,
    mut st: Option<&mut AgentState>,
) {
    for f in findings {
        if let Some(st) = st.as_deref_mut() {
            if !st.finding_rate.admit(&f) {
                st.agent.findings_rate_limited = st.finding_rate.limited;
                continue;
            }
        }
        let p = f.process.as_ref();
        tracing::warn!(
            rule = %f.rule,
            severity = %f.severity,
            mitre = %f.mitre.join(","),
            pid = p.map_or(0, |p| p.pid),
            exe = p.map_or("", |p| p.exe.as_str()),
            count = f.count,
            "finding"
        );
        if iv.batch.findings.len() < FINDINGS_PER_BATCH {
            iv.batch.findings.push(f.clone());
        } else {
            iv.findings_dropped += 1;
        }
        if let Some(st) = st.as_deref_mut() {
            st.push_event(pb::live_event::Event::Finding(f));
        }
    }
}

/// Kernel counters as loss counts (cumulative since the probes loaded).
fn kernel_losses(c: &crate::probes::KernelCounters) -> pb::Losses {
    pb::Losses {
        slow_syscall_ringbuf_full: c.slow_syscall_ringbuf_full,
        slow_syscall_rate_limited: c.slow_syscall_rate_limited,
        retransmit_ringbuf_full: c.retransmit_ringbuf_full,
        syscall_start_store_failed: c.syscall_start_store_failed,
        syscall_out_of_range: c.syscall_out_of_range,
        process_ringbuf_full: c.process_ringbuf_full,
        security_ringbuf_full: c.security_ringbuf_full,
        security_untracked: c.security_pending_full,
        ..Default::default()
    }
}

/// What was lost between two cumulative counts. Every field is listed, so a new loss stage
/// that is not carried here does not compile.
fn losses_since(now: &pb::Losses, before: &pb::Losses) -> pb::Losses {
    macro_rules! delta {
        ($($field:ident),* $(,)?) => {
            pb::Losses { $($field: now.$field.saturating_sub(before.$field)),* }
        };
    }
    delta!(
        slow_syscall_ringbuf_full,
        slow_syscall_rate_limited,
        retransmit_ringbuf_full,
        syscall_start_store_failed,
        syscall_out_of_range,
        undecodable_events,
        pipeline_dropped,
        spool_dropped_batches,
        spool_corrupt_records,
        process_ringbuf_full,
        security_ringbuf_full,
        security_untracked,
        findings_dropped,
    )
}

/// The exporter task and its stop request.
struct Exporter {
    addr: String,
    task: tokio::task::JoinHandle<()>,
    stop: watch::Sender<Option<tokio::time::Instant>>,
}

fn start_exporter(
    addr: &str,
    spool: &Arc<SharedSpool>,
    stats: &Arc<stream::ExportStats>,
    agent_id: &str,
) -> Exporter {
    let (stop, stop_rx) = watch::channel(None);
    let task = tokio::spawn(stream::run(
        addr.to_string(),
        spool.clone(),
        stats.clone(),
        stop_rx,
    ));
    tracing::info!(collector = %addr, %agent_id, "streaming to collector {addr} as agent {agent_id}");
    Exporter {
        addr: addr.to_string(),
        task,
        stop,
    }
}

/// One interval's worth of data, turned into a batch at its end.
struct Interval {
    batch: pb::Batch,
    window_start: i64,
    previous: BTreeMap<u32, LatencyHistogram>,
    /// Cumulative losses at the end of the previous batch (kernel and agent).
    reported: pb::Losses,
    /// Agent-side drops since start (events over a batch's limit, unwritable batches).
    pipeline_dropped: u64,
    /// Losses of a batch that could not be spooled, for the next batch to report.
    carried: pb::Losses,
    /// Findings over a batch's limit, since start.
    findings_dropped: u64,
}

impl Interval {
    /// Cumulative losses now: kernel counters plus the agent's own.
    fn cumulative(&self, kernel: &pb::Losses, undecodable: u64) -> pb::Losses {
        let mut l = *kernel;
        l.undecodable_events = undecodable;
        l.pipeline_dropped = self.pipeline_dropped;
        l.findings_dropped = self.findings_dropped;
        l
    }
}

/// The agent's running parts that a reload may change.
struct Running {
    config: AgentConfig,
    exporter: Option<Exporter>,
}

fn probe_settings(config: &AgentConfig) -> ProbeSettings {
    let defaults = ProbeSettings::default();
    ProbeSettings {
        syscalls: config.probes.syscalls,
        retransmits: config
            .probes
            .retransmits
            .then_some(defaults.retransmits)
            .flatten(),
        slow_threshold: Some(config.probes.slow_threshold.0),
        slow_events_per_sec: config.probes.slow_events_per_sec,
        ring_buffer_bytes: config.probes.ring_buffer_bytes,
        // Woken when a quarter full instead of per event (see DRAIN_EVERY).
        wake_at_bytes: Some(u64::from(config.probes.ring_buffer_bytes) / 4),
        // ... and for the first event after DRAIN_EVERY of quiet (findings at once).
        wake_after: Some(DRAIN_EVERY),
        processes: config.detect.enabled,
        security: config.detect.enabled,
        ..defaults
    }
}

/// Applies a reloaded config; says what changed and what needs a restart.
fn apply_reload(
    running: &mut Running,
    new: AgentConfig,
    spool: &Arc<SharedSpool>,
    stats: &Arc<stream::ExportStats>,
    agent_id: &str,
    tick: &mut tokio::time::Interval,
) {
    let old = &running.config;
    let mut restart_needed = Vec::new();
    if new.probes != old.probes {
        restart_needed.push("probes");
    }
    if new.detect.enabled != old.detect.enabled {
        restart_needed.push("detect.enabled");
    }
    if new.socket != old.socket || new.api != old.api {
        restart_needed.push("socket/api");
    }
    if new.data_dir != old.data_dir {
        restart_needed.push("data_dir");
    }
    if new.agent_id != old.agent_id {
        restart_needed.push("agent_id");
    }
    if !restart_needed.is_empty() {
        tracing::warn!(
            "SIGHUP: {} changed; that takes effect at the next restart",
            restart_needed.join(", ")
        );
    }
    if new.interval != old.interval {
        *tick =
            tokio::time::interval_at(tokio::time::Instant::now() + new.interval.0, new.interval.0);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    }
    if new.spool != old.spool {
        spool.lock().reconfigure(new.spool.clone());
    }
    if new.collector != old.collector {
        if let Some(e) = running.exporter.take() {
            // Safe at any point: acks are recorded in the spool as they arrive, and
            // whatever is unacked is sent again by the next exporter.
            e.task.abort();
            tracing::info!(collector = %e.addr, "stopped streaming to {}", e.addr);
        }
        running.exporter = new
            .collector
            .as_deref()
            .map(|a| start_exporter(a, spool, stats, agent_id));
    }
    // The probes keep the settings they were loaded with.
    let mut applied = new;
    applied.probes = old.probes.clone();
    applied.detect.enabled = old.detect.enabled;
    applied.socket = old.socket.clone();
    applied.api = old.api;
    applied.data_dir = old.data_dir.clone();
    applied.agent_id = old.agent_id.clone();
    tracing::info!(
        "SIGHUP: configuration reloaded (interval {:?}, collector {})",
        applied.interval.0,
        applied.collector.as_deref().unwrap_or("none")
    );
    running.config = applied;
}

pub async fn run(config: AgentConfig, reload: Reload) -> anyhow::Result<()> {
    let settings = probe_settings(&config);
    std::fs::create_dir_all(&config.data_dir)
        .with_context(|| format!("creating the data directory {}", config.data_dir.display()))?;
    let spool_dir = config.data_dir.join("spool");
    let spool = Spool::open(&spool_dir, config.spool.clone())
        .with_context(|| format!("opening the spool in {}", spool_dir.display()))?;
    {
        let st = spool.stats();
        if st.unacked > 0 || st.corrupt_records > 0 {
            let level_warn = st.corrupt_records > 0;
            if level_warn {
                tracing::warn!(spool = %spool_dir.display(), damaged = st.corrupt_records, "damaged spool records skipped");
            }
            tracing::info!(
                spool = %spool_dir.display(),
                unacked = st.unacked,
                damaged = st.corrupt_records,
                "spool {}: {} unacked batches to send first, {} damaged records skipped",
                spool_dir.display(),
                st.unacked,
                st.corrupt_records
            );
        }
    }
    let epoch = spool.epoch();
    let spool = Arc::new(SharedSpool::new(spool));
    // Signals first: a SIGTERM during the probe load must not kill the agent unflushed.
    let mut sigterm = signal(SignalKind::terminate()).context("installing the SIGTERM handler")?;
    let mut sigint = signal(SignalKind::interrupt()).context("installing the SIGINT handler")?;
    let mut sighup = signal(SignalKind::hangup()).context("installing the SIGHUP handler")?;

    let mut probes = if settings.syscalls || settings.retransmits.is_some() || settings.processes {
        match Probes::load(&settings) {
            Ok(p) => Some(p),
            Err(e) => {
                tracing::error!(
                    "probes unavailable, running on host metrics alone: {}",
                    error_chain(&e)
                );
                None
            }
        }
    } else {
        tracing::info!("probes turned off in the config; host metrics only");
        None
    };
    // Loading parsed the kernel's BTF (megabytes, now freed): give that memory back
    // to the system instead of keeping it as the agent's resident size.
    // SAFETY: malloc_trim only releases free heap memory.
    unsafe { libc::malloc_trim(0) };
    for (probe, state) in probes.iter().flat_map(|p| p.states()) {
        match state {
            ProbeState::On => tracing::info!(%probe, "probe {probe}: on"),
            ProbeState::Off(e) => {
                tracing::warn!(%probe, "probe {probe}: OFF: {}", error_chain(e))
            }
            ProbeState::Disabled => tracing::info!(%probe, "probe {probe}: not requested"),
        }
    }
    let mut reader = match probes.as_mut().map(Probes::event_reader) {
        Some(Ok(r)) => Some(r),
        Some(Err(e)) => {
            tracing::error!("no event stream: {}", error_chain(&e));
            None
        }
        None => None,
    };
    let mut detector = if config.detect.enabled {
        let rules = match crate::detect::rules::load(Some(&config.detect.rules_dir)) {
            Ok(r) => r,
            Err(e) => {
                tracing::error!(
                    "rules: {e}; running the built-in rules only until a reload (SIGHUP) succeeds"
                );
                crate::detect::rules::load(None).context("the built-in rules")?
            }
        };
        let n = rules.len();
        let mut d = Detector::new(std::path::Path::new("/proc"), rules, MAX_PROCESSES);
        d.seed();
        if let Some(p) = probes.as_mut() {
            apply_watches(&mut d, p, true);
        }
        tracing::info!(
            "detection on: {n} rules, {} processes in the table",
            d.stats.table_size.max(d.process_count() as u64)
        );
        Some(d)
    } else {
        None
    };
    let mut last_rescan = tokio::time::Instant::now();
    let mut host = Sampler::new(Roots::default(), 5);
    let first = host.sample().context("reading host metrics")?;
    let agent_id = config
        .agent_id
        .clone()
        .unwrap_or_else(|| default_agent_id(&first.host.hostname));

    let state = Arc::new(std::sync::RwLock::new(AgentState::new(
        convert::host_identity(&first, &agent_id),
        config.interval.0.as_secs_f64(),
    )));
    let socket = config.api.then(|| config.socket.clone());
    let api = match &socket {
        Some(path) => Some(crate::query::api::serve_unix(path, state.clone()).await?),
        None => None,
    };
    // Everything that needed root is done (probes attached, socket bound): keep only
    // what reading /proc and watched directories needs, before any other thread
    // exists (the exporter's connection may resolve names on one).
    match crate::privileges::drop_to_kept() {
        Ok(Some(kept)) => {
            let mut names: Vec<String> = kept.iter().map(|c| c.to_string()).collect();
            names.sort();
            tracing::info!(
                "privileges dropped: keeping {}, no_new_privs set",
                names.join(", ")
            );
        }
        Ok(None) => {}
        Err(e) => {
            tracing::error!(error = %e, "could not drop privileges; running with those it started with")
        }
    }
    let export_stats = Arc::new(stream::ExportStats::default());
    let mut running = Running {
        exporter: config
            .collector
            .as_deref()
            .map(|a| start_exporter(a, &spool, &export_stats, &agent_id)),
        config,
    };
    tracing::info!(
        %epoch,
        "tracing the host every {:?}, spool epoch {epoch} (SIGTERM or Ctrl-C to stop, SIGHUP to reload)",
        running.config.interval.0
    );
    crate::notify::ready(&format!(
        "tracing the host every {:?}, spool epoch {epoch}",
        running.config.interval.0
    ));

    let mut tick = tokio::time::interval(running.config.interval.0);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tick.tick().await;
    let mut iv = Interval {
        batch: pb::Batch::default(),
        window_start: now_ms(),
        previous: BTreeMap::new(),
        reported: pb::Losses::default(),
        pipeline_dropped: 0,
        carried: pb::Losses::default(),
        findings_dropped: 0,
    };
    let mut total_losses = pb::Losses::default();
    let mut events = Vec::new();
    let mut drain = tokio::time::interval(DRAIN_EVERY);
    drain.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let follower_joined = state.read().map(|s| s.follower_joined.clone()).ok();
    let mut reader_waits = true;
    let mut drain_armed = false;
    let stop_requested = loop {
        // The short drain clock runs while someone follows live events, and for one
        // period after the kernel woke us (for what came after the wake-up).
        let following = drain_armed || state.read().is_ok_and(|s| s.live.receiver_count() > 0);
        tokio::select! {
            _ = sigterm.recv() => break tokio::time::Instant::now(),
            _ = sigint.recv() => break tokio::time::Instant::now(),
            _ = sighup.recv() => match { crate::notify::reloading(); reload() } {
                Ok(new) => {
                    reload_rules(detector.as_mut(), probes.as_mut(), &new);
                    apply_reload(&mut running, new, &spool, &export_stats, &agent_id, &mut tick);
                    crate::notify::ready(&format!(
                        "tracing the host every {:?} (configuration reloaded)",
                        running.config.interval.0
                    ));
                }
                Err(e) => {
                    tracing::error!("SIGHUP: new configuration refused, keeping the running one: {e}");
                    crate::notify::ready("new configuration refused; running the previous one");
                }
            },
            r = async { reader.as_mut()?.read(&mut events).await.ok() }, if reader.is_some() && reader_waits => {
                if r.is_none() {
                    tracing::warn!("the event ring buffer cannot be waited on; draining it each interval only");
                    reader_waits = false;
                }
                let woke_with_events = events.iter().any(is_prompt);
                iv.pipeline_dropped += absorb(&mut events, &mut iv, &state, detector.as_mut());
                if woke_with_events && !drain_armed {
                    drain_armed = true;
                    drain.reset();
                }
            }
            _ = async { follower_joined.as_ref()?.notified().await; Some(()) }, if !following => {
                // Loop again: `following` is now true and the drain clock runs.
                drain.reset_immediately();
            }
            _ = drain.tick(), if following => {
                if let Some(r) = reader.as_mut() {
                    r.drain(&mut events);
                }
                // Nothing since the last look: stop the short clock until the next wake-up.
                let rescan = last_rescan.elapsed() >= RESCAN_EVERY;
                let pending = detector.as_ref().is_some_and(Detector::has_pending_work);
                if !events.iter().any(is_prompt) {
                    drain_armed = pending;
                }
                if events.is_empty() && !rescan && !pending {
                    continue;
                }
                iv.pipeline_dropped += absorb(&mut events, &mut iv, &state, detector.as_mut());
                if let (Some(d), Some(p)) = (detector.as_mut(), probes.as_mut()) {
                    if rescan {
                        last_rescan = tokio::time::Instant::now();
                        let mut f = Vec::new();
                        d.tick(true, &mut f);
                        publish_findings(f, &mut iv, state.write().ok().as_deref_mut());
                    }
                    apply_watches(d, p, rescan);
                }
            }
            _ = tick.tick() => {
                let batch = close_interval(&mut iv, &mut host, probes.as_ref(), reader.as_mut(), &mut events, &state, &running.config, &agent_id, detector.as_mut())?;
                spool_batch(batch, &spool, &mut iv, &mut total_losses, &state, &export_stats);
            }
        }
    };
    // Stop: detach the probes after a last read, then spool the partial interval.
    crate::notify::stopping();
    let deadline = stop_requested + running.config.shutdown_timeout.0;
    let last = close_interval(
        &mut iv,
        &mut host,
        probes.as_ref(),
        reader.as_mut(),
        &mut events,
        &state,
        &running.config,
        &agent_id,
        detector.as_mut(),
    );
    drop(reader);
    // Detaching takes the kernel an RCU grace period per tracepoint (a few hundred ms
    // for all of them): done on the side, so the last batch goes out meanwhile.
    let detach = std::thread::spawn(move || {
        let t = std::time::Instant::now();
        drop(probes);
        t.elapsed()
    });
    match last {
        Ok(batch) => spool_batch(
            batch,
            &spool,
            &mut iv,
            &mut total_losses,
            &state,
            &export_stats,
        ),
        Err(e) => tracing::error!("the last partial batch could not be made: {e:#}"),
    }
    if let Err(e) = spool.lock().maybe_fsync(true) {
        tracing::error!("spool fsync at exit failed: {e}");
    }
    if let Some(e) = running.exporter.take() {
        let _ = e.stop.send(Some(deadline));
        let mut task = e.task;
        if tokio::time::timeout_at(deadline + Duration::from_millis(500), &mut task)
            .await
            .is_err()
        {
            task.abort();
        }
    }
    // Within the deadline only: past it, exit and let the kernel finish the detach.
    while !detach.is_finished() && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    if detach.is_finished() {
        match detach.join() {
            Ok(took) => tracing::info!("stopping: probes detached ({} ms)", took.as_millis()),
            Err(_) => tracing::error!("stopping: detaching the probes failed"),
        }
    } else {
        tracing::warn!(
            "stopping: the kernel is still detaching the probes at the deadline; exiting"
        );
    }
    let st = spool.lock().stats();
    let _ = spool.lock().checkpoint();
    tracing::info!(
        "exported {} batches, {} acked ({} duplicates), {} reconnects; spool: {} unacked (kept for the next start), {} dropped, {} damaged",
        export_stats.sent.load(Ordering::Relaxed),
        export_stats.acked.load(Ordering::Relaxed),
        export_stats.duplicates.load(Ordering::Relaxed),
        export_stats.reconnects.load(Ordering::Relaxed),
        st.unacked, st.dropped_batches, st.corrupt_records,
    );
    if let Some(api) = api {
        api.abort();
    }
    if let Some(path) = &socket {
        let _ = std::fs::remove_file(path);
    }
    tracing::info!("stopped");
    Ok(())
}

/// Events someone is waiting on (they keep the short drain clock going): execs and
/// security events. Slow syscalls and retransmits are always about, and can wait for
/// the interval's end.
fn is_prompt(e: &Event) -> bool {
    match e {
        Event::Process(p) => p.op == vigil_common::ProcessOp::Exec,
        Event::Security(_) => true,
        Event::SlowSyscall(_) | Event::Retransmit(_) => false,
    }
}

/// Writes the detector's kernel filters: watched processes always, the watched
/// directories and ports when `all` (start, rescan, reload).
fn apply_watches(d: &mut Detector, p: &mut Probes, all: bool) {
    let w = d.take_watch_changes();
    if all {
        let dirs = d.watched_dirs();
        let paths = d.watched_dir_paths();
        match p.watch_dirs(&dirs, &paths) {
            Ok(0) => {}
            Ok(n) => tracing::warn!(skipped = n, "watched directories beyond the kernel's prefix list: renames into them are not seen"),
            Err(e) => tracing::warn!(error = %error_chain(&e), "cannot set the watched directories"),
        }
        if let Err(e) = p.watch_ports(&d.watched_ports(), &d.watched_comms()) {
            tracing::warn!(error = %error_chain(&e), "cannot set the watched ports");
        }
    }
    if all || w.files {
        if let Err(e) = p.watch_files(&d.watched_files()) {
            tracing::warn!(error = %error_chain(&e), "cannot set the watched files");
        }
    }
    if !w.add_pids.is_empty() || !w.remove_pids.is_empty() {
        match p.watch_pids(&w.add_pids, &w.remove_pids) {
            Ok(failed) => d.stats.watch_failed += failed,
            Err(e) => {
                tracing::warn!(error = %error_chain(&e), "cannot update the watched processes")
            }
        }
    }
}

/// SIGHUP: loads the rules again; a bad file keeps the rules that run.
fn reload_rules(d: Option<&mut Detector>, p: Option<&mut Probes>, config: &AgentConfig) {
    let Some(d) = d else {
        return;
    };
    match crate::detect::rules::load(Some(&config.detect.rules_dir)) {
        Ok(rules) => {
            tracing::info!("SIGHUP: {} rules loaded", rules.len());
            d.set_rules(rules);
            if let Some(p) = p {
                apply_watches(d, p, true);
            }
        }
        Err(e) => tracing::error!(
            "SIGHUP: rules refused, keeping the {} running: {e}",
            d.rules().len()
        ),
    }
}

/// Ends the interval: drains events, reads the probes and the host, prints the
/// summary if asked, and returns the interval's batch (not yet spooled).
#[expect(
    clippy::too_many_arguments,
    reason = "until the Agent struct owns this state (issue #11)"
)]
fn close_interval(
    iv: &mut Interval,
    host: &mut Sampler,
    probes: Option<&Probes>,
    reader: Option<&mut crate::probes::events::EventReader>,
    events: &mut Vec<Event>,
    state: &std::sync::RwLock<AgentState>,
    config: &AgentConfig,
    agent_id: &str,
    detector: Option<&mut Detector>,
) -> anyhow::Result<pb::Batch> {
    let undecodable = match reader {
        Some(r) => {
            r.drain(events);
            r.decode_errors
        }
        None => 0,
    };
    iv.pipeline_dropped += absorb(events, iv, state, detector);
    let sample = host.sample().context("reading host metrics")?;
    let (delta, kernel) = match probes {
        Some(p) => {
            let now = p.syscall_latency()?;
            let delta: BTreeMap<u32, LatencyHistogram> = now
                .iter()
                .map(|(nr, h)| {
                    (
                        *nr,
                        iv.previous
                            .get(nr)
                            .map_or_else(|| h.clone(), |p| h.since(p)),
                    )
                })
                .filter(|(_, h)| h.count > 0)
                .collect();
            iv.previous = now;
            (delta, kernel_losses(&p.counters()?))
        }
        None => (BTreeMap::new(), pb::Losses::default()),
    };
    if let Ok(mut st) = state.write() {
        st.identity = convert::host_identity(&sample, agent_id);
        st.latest = Some(convert::host_metrics(&sample));
        st.push_latency(&delta);
    }
    let cumulative = iv.cumulative(&kernel, undecodable);
    let mut losses = losses_since(&cumulative, &iv.reported);
    losses.add(&std::mem::take(&mut iv.carried));
    iv.reported = cumulative;
    if config.summary_rows > 0 {
        let r = rows(&delta);
        let calls: u64 = r.iter().map(|r| r.count).sum();
        let lost: u64 = losses.stages().iter().map(|(_, n)| n).sum();
        println!(
            "--- {:?}: {} syscalls, {} slow (> {}), {} retransmits | lost {} ({})",
            config.interval.0,
            calls,
            iv.batch.slow_syscalls.len(),
            human_ns(config.probes.slow_threshold.0.as_nanos() as u64),
            iv.batch.retransmits.len(),
            lost,
            losses
                .stages()
                .iter()
                .filter(|(_, n)| *n > 0)
                .map(|(s, n)| format!("{s} {n}"))
                .collect::<Vec<_>>()
                .join(", ")
        );
        println!(
            "host: cpu {:.1} % of {} | load {:.2} | memory {:.2} of {:.2} GiB available | {} processes",
            sample.cpu.usage_percent, sample.cpu.count, sample.load.one,
            sample.memory.available_bytes as f64 / (1u64 << 30) as f64,
            sample.memory.total_bytes as f64 / (1u64 << 30) as f64,
            sample.processes.total
        );
        crate::trace::syscalls::print_table(&r, config.summary_rows);
    }
    let end = now_ms();
    let mut batch = std::mem::take(&mut iv.batch);
    batch.agent_id = agent_id.to_string();
    batch.start_unix_ms = iv.window_start;
    batch.end_unix_ms = end;
    batch.host = Some(convert::host_identity(&sample, agent_id));
    batch.metrics = vec![convert::host_metrics(&sample)];
    batch.syscalls = delta
        .iter()
        .map(|(nr, h)| convert::syscall_latency(*nr, h))
        .collect();
    batch.losses = Some(losses);
    iv.window_start = end;
    Ok(batch)
}

/// Writes the batch to the spool (which numbers it) and wakes the exporter. A batch
/// the spool cannot take (disk error) is dropped and counted in the next one.
fn spool_batch(
    mut batch: pb::Batch,
    spool: &SharedSpool,
    iv: &mut Interval,
    total: &mut pb::Losses,
    state: &std::sync::RwLock<AgentState>,
    export: &stream::ExportStats,
) {
    let mut sp = spool.lock();
    // The spool's own losses (drops for its bound, damaged records) ride along.
    let spooled = sp.take_losses();
    if let Some(l) = batch.losses.as_mut() {
        l.add(&spooled);
    }
    let losses = batch.losses.unwrap_or_default();
    match sp.append(&mut batch) {
        Ok(_) => {
            total.add(&losses);
            spool.appended.notify_one();
        }
        Err(e) => {
            iv.pipeline_dropped += 1;
            // The losses it reported are not lost with it: the next batch carries them.
            iv.carried.add(&losses);
            tracing::error!(error = %e, sequence = batch.sequence, "spool write failed; batch dropped and counted");
        }
    }
    let st = sp.stats();
    if let Ok(mut s) = state.write() {
        s.agent = pb::AgentSelf {
            epoch: sp.epoch().high(),
            epoch_low: sp.epoch().low(),
            last_sequence: sp.last_sequence(),
            spool_bytes: st.bytes,
            spool_unacked: st.unacked,
            spool_dropped_batches: st.dropped_batches,
            spool_corrupt_records: st.corrupt_records,
            spool_state_rebuilt: st.state_rebuilt,
            batches_sent: export.sent.load(Ordering::Relaxed),
            batches_acked: export.acked.load(Ordering::Relaxed),
            duplicates_acked: export.duplicates.load(Ordering::Relaxed),
            reconnects: export.reconnects.load(Ordering::Relaxed),
            batches_refused: export.refused.load(Ordering::Relaxed),
            batches_conflicting: export.conflicts.load(Ordering::Relaxed),
            losses: Some(*total),
            ..std::mem::take(&mut s.agent)
        };
    }
}
