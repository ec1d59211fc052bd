//! The agent loop (`vigil agent`, which `cargo xtask run` starts): every probe that can
//! run plus host metrics, and a batch per interval written to the spool and, with a
//! collector, streamed to it. Runs on host metrics alone if no probe loads.
//!
//! Signals: SIGTERM/SIGINT stop the probes, write the current partial batch to the
//! spool and give the exporter until `shutdown_timeout` to get it acked. SIGHUP
//! re-reads the config; a bad one is refused (the old one stays), and fields that need
//! new probes or a new socket are reported as needing a restart.
use std::{
    path::PathBuf,
    sync::{atomic::Ordering, Arc},
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use anyhow::Context as _;
use tokio::{
    signal::unix::{signal, Signal, SignalKind},
    sync::watch,
};

mod alerting;
mod batch;
mod budget;
mod dirs;
mod incident;
mod reload;

use super::interval::Interval;
use crate::{
    config::{AgentConfig, ConfigError},
    detect::Detector,
    export::{
        convert,
        stream::{self, SharedSpool},
    },
    metrics::{Roots, Sampler},
    probes::{error_chain, events::Event, EventReader, ProbeSettings, ProbeState, Probes},
    query::state::StateWriter,
    spool::{writer::SpoolWriter, Spool},
};

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

/// A stable id for this host: its /etc/machine-id (under `etc`), else the hostname.
fn default_agent_id(etc: &std::path::Path, hostname: &str) -> String {
    std::fs::read_to_string(etc.join("machine-id"))
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

/// The exporter task and its stop request.
struct Exporter {
    addr: String,
    task: tokio::task::JoinHandle<()>,
    stop: watch::Sender<Option<tokio::time::Instant>>,
}

fn start_exporter(
    addr: &str,
    tls: &vigil_tls::TlsSection,
    spool: &Arc<SharedSpool>,
    stats: &Arc<stream::ExportStats>,
    agent_id: &str,
) -> Exporter {
    let (stop, stop_rx) = watch::channel(None);
    // Several addresses: the first, failing over to the next.
    let collectors = crate::config::collector_addresses(addr)
        .into_iter()
        .map(|a| {
            let connector = stream::transport(&a, tls, agent_id, stats);
            (a, connector)
        })
        .collect();
    let task = tokio::spawn(stream::run(
        collectors,
        spool.clone(),
        stats.clone(),
        stop_rx,
    ));
    let mode = tls.mode.as_str();
    tracing::info!(collector = %addr, %agent_id, tls = mode, "streaming to collector {addr} as agent {agent_id} (tls {mode})");
    Exporter {
        addr: addr.to_string(),
        task,
        stop,
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

/// Internal errors that would otherwise only be logged: counted, and shown under
/// `internal_errors` in `vigil stats --json`.
#[derive(Debug, Default)]
struct InternalErrors {
    /// Kernel filter map updates (watched directories, files, ports, processes) that failed.
    kernel_filter_update: u64,
    /// Batches the spool writer's queue had no room for (also counted as
    /// pipeline_dropped).
    spool_queue_full: u64,
    /// The ring buffer could not be waited on (it is drained each interval only).
    event_reader_wait: u64,
}

/// The signals the agent reacts to, installed before the probes load (a SIGTERM during
/// the load must not kill the agent unflushed).
struct Signals {
    term: Signal,
    int: Signal,
    hup: Signal,
}

/// What woke the loop.
enum Wake {
    Stop,
    Reload,
    /// The kernel signalled the ring buffer; false if it cannot be waited on.
    EventsReady(bool),
    FollowerJoined,
    Drain,
    Tick,
    /// The periodic /proc rescan, read off the loop, is back.
    Rescanned(Option<crate::detect::table::ProcScan>),
    /// Something was created where a watched directory is missing.
    DirCreated,
}

/// The agent: every stage's handle and the loop's state, one method per thing the loop
/// reacts to (a tick, the ring buffer, a signal, a follower, the drain clock).
pub struct Agent {
    running: Running,
    reload: Reload,
    signals: Signals,
    probes: Option<Probes>,
    reader: Option<EventReader>,
    detector: Option<Detector>,
    host: Sampler,
    spool: Arc<SharedSpool>,
    spool_writer: SpoolWriter,
    state: StateWriter,
    export_stats: Arc<stream::ExportStats>,
    agent_id: String,
    api: Option<tokio::task::JoinHandle<()>>,
    remote_api: Option<tokio::task::JoinHandle<()>>,
    metrics: Option<tokio::task::JoinHandle<()>>,
    socket: Option<PathBuf>,
    iv: Interval,
    /// Events drained from the ring buffer, not yet absorbed.
    events: Vec<Event>,
    tick: tokio::time::Interval,
    drain: tokio::time::Interval,
    follower_joined: Option<Arc<tokio::sync::Notify>>,
    /// False once the ring buffer cannot be waited on: drained each interval only.
    reader_waits: bool,
    /// The short drain clock runs for one period after the kernel woke the agent.
    drain_armed: bool,
    last_rescan: tokio::time::Instant,
    /// The /proc rescan being read on the blocking pool.
    rescan: Option<tokio::task::JoinHandle<crate::detect::table::ProcScan>>,
    /// Waits for the watched directories that do not exist yet (None: inotify failed,
    /// said at start; they are then picked up at the next rescan).
    dir_waiter: Option<dirs::DirWaiter>,
    errors: InternalErrors,
    /// The alert engine (None only if even the built-in rules failed to load).
    alerting: Option<alerting::Alerting>,
    /// The agent's CPU budget (None without probes: nothing to shed).
    budget: Option<budget::Budget>,
    /// When this agent started (Unix ms), carried in every batch.
    started_unix_ms: i64,
    /// `[incident] auto_snapshot` (None: off).
    auto_snapshot: Option<incident::AutoSnapshot>,
}

/// Runs the agent until SIGTERM or SIGINT, then stops it within `shutdown_timeout`.
pub async fn run(config: AgentConfig, reload: Reload) -> anyhow::Result<()> {
    let mut agent = Agent::start(config, reload).await?;
    let stop_requested = agent.serve().await?;
    agent.stop(stop_requested).await;
    Ok(())
}

impl Agent {
    /// Opens the spool, loads the probes and the rules, binds the API, drops what
    /// privileges it no longer needs and starts the exporter; then says READY=1.
    pub async fn start(config: AgentConfig, reload: Reload) -> anyhow::Result<Self> {
        let settings = probe_settings(&config);
        // Before anything is dropped: what could stop a probe, for the log and the API.
        let preflight = crate::probes::preflight::check();
        tracing::info!(
            "preflight: {}",
            crate::probes::preflight::summary(&preflight)
        );
        std::fs::create_dir_all(&config.data_dir).with_context(|| {
            format!("creating the data directory {}", config.data_dir.display())
        })?;
        let spool_dir = config.data_dir.join("spool");
        let spool = Spool::open(&spool_dir, config.spool.clone())
            .with_context(|| format!("opening the spool in {}", spool_dir.display()))?;
        {
            let st = spool.stats();
            if st.corrupt_records > 0 {
                tracing::warn!(spool = %spool_dir.display(), damaged = st.corrupt_records, "damaged spool records skipped");
            }
            if st.unacked > 0 || st.corrupt_records > 0 {
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
        let spool = SharedSpool::new(spool);
        let signals = Signals {
            term: signal(SignalKind::terminate()).context("installing the SIGTERM handler")?,
            int: signal(SignalKind::interrupt()).context("installing the SIGINT handler")?,
            hup: signal(SignalKind::hangup()).context("installing the SIGHUP handler")?,
        };
        // Each probe's state for the API: on, not requested, or off and why.
        let requested = [
            (crate::probes::Probe::SyscallLatency, settings.syscalls),
            (
                crate::probes::Probe::TcpRetransmit,
                settings.retransmits.is_some(),
            ),
            (crate::probes::Probe::ProcessLifecycle, settings.processes),
            (crate::probes::Probe::Security, settings.security),
        ];
        let mut probe_report: std::collections::BTreeMap<String, String> = requested
            .iter()
            .map(|(p, on)| {
                (
                    p.to_string(),
                    if *on { "on" } else { "not requested" }.to_string(),
                )
            })
            .collect();
        let missing_caps = preflight
            .get("capabilities_missing")
            .filter(|m| !m.is_empty())
            .map(|m| format!(" (capabilities missing: {m})"))
            .unwrap_or_default();
        let mut probes = if requested.iter().any(|(_, on)| *on) {
            match Probes::load(&settings) {
                Ok(p) => Some(p),
                Err(e) => {
                    tracing::error!(
                        "probes unavailable, running on host metrics alone: {}{missing_caps}",
                        error_chain(&e)
                    );
                    for (p, on) in &requested {
                        if *on {
                            probe_report.insert(
                                p.to_string(),
                                format!("off: {}{missing_caps}", error_chain(&e)),
                            );
                        }
                    }
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
                    tracing::warn!(%probe, "probe {probe}: OFF: {}{missing_caps}", error_chain(e));
                    probe_report.insert(
                        probe.to_string(),
                        format!("off: {}{missing_caps}", error_chain(e)),
                    );
                }
                ProbeState::Disabled => tracing::info!(%probe, "probe {probe}: not requested"),
            }
        }
        let reader = match probes.as_mut().map(Probes::event_reader) {
            Some(Ok(r)) => Some(r),
            Some(Err(e)) => {
                tracing::error!("no event stream: {}", error_chain(&e));
                None
            }
            None => None,
        };
        let mut errors = InternalErrors::default();
        let detector = if config.detect.enabled {
            let rules = match crate::detect::rules::load(Some(&config.detect.rules_dir)) {
                Ok(r) => r,
                Err(e) => {
                    tracing::error!("rules: {e}; running the built-in rules only until a reload (SIGHUP) succeeds");
                    crate::detect::rules::load(None).context("the built-in rules")?
                }
            };
            let n = rules.len();
            let roots = Roots::under(&config.host_root);
            let mut d = Detector::new(&roots.proc, rules, MAX_PROCESSES);
            d.seed();
            if let Some(p) = probes.as_mut() {
                apply_watches(&mut d, p, true, &mut errors);
            }
            // Rules see what the process-lifecycle and security probes report: with
            // both off, detection is not claimed, whatever the config asks.
            let feeds: Vec<&str> = ["process-lifecycle", "security"]
                .into_iter()
                .filter(|p| probe_report.get(*p).is_some_and(|s| s == "on"))
                .collect();
            if feeds.is_empty() {
                tracing::warn!(
                    "detection OFF: {n} rules loaded, but no kernel probe feeds them (process-lifecycle and security are off)"
                );
                probe_report.insert(
                    "detection".into(),
                    "off: no kernel probe feeds the rules (process-lifecycle and security are off)"
                        .into(),
                );
            } else {
                tracing::info!(
                    "detection on: {n} rules fed by {}, {} processes in the table",
                    feeds.join(" and "),
                    d.stats().table_size.max(d.process_count() as u64)
                );
                probe_report.insert("detection".into(), "on".into());
            }
            Some(d)
        } else {
            probe_report.insert("detection".into(), "not requested".into());
            None
        };
        let roots = Roots::under(&config.host_root);
        let etc = roots.etc.clone();
        let mut host = Sampler::new(roots, 5);
        let first = host.sample().context("reading host metrics")?;
        // The id: the config's, else the one the client certificate names (the one the
        // collector will accept), else the machine's.
        let agent_id = config
            .agent_id
            .clone()
            .or_else(|| {
                config
                    .collector
                    .as_ref()
                    .and_then(|_| stream::certificate_agent_id(&config.tls))
            })
            .unwrap_or_else(|| default_agent_id(&etc, &first.host.hostname));
        let state = StateWriter::new(
            convert::host_identity(&first, &agent_id),
            config.interval.0.as_secs_f64(),
        );
        state.write().agent_self().preflight = preflight.into_iter().collect();
        state.write().agent_self().probes = probe_report.into_iter().collect();
        let mut rebuilt = 0;
        let alerting = match alerting::Alerting::start(&config, &mut rebuilt) {
            Ok(a) => Some(a),
            Err(e) => {
                tracing::error!("alerts OFF: the built-in rules do not load: {e:#}");
                None
            }
        };
        state.write().agent_self().alert_state_rebuilt = rebuilt;
        if let Some(a) = &alerting {
            state.write().publish_sli_totals(a.sli_totals());
        }
        let socket = config.api.then(|| config.socket.clone());
        let api = match &socket {
            Some(path) => {
                Some(crate::query::api::serve_unix(path, &config.api_group, state.reader()).await?)
            }
            None => None,
        };
        let mut ready_vars = Vec::new();
        let remote_api = match &config.api_listen {
            Some(addr) => {
                let (local, task) =
                    crate::query::remote::serve(addr, &config.api_tls, state.reader()).await?;
                ready_vars.push(format!("VIGIL_API_LISTEN={local}"));
                Some(task)
            }
            None => None,
        };
        let metrics = match &config.metrics_listen {
            Some(addr) => {
                let render = crate::query::metrics::render(
                    state.reader(),
                    Roots::under(&config.host_root),
                    config.node_names,
                );
                let (local, task) = vigil_openmetrics::serve(addr, "agent", render).await?;
                ready_vars.push(format!("VIGIL_METRICS_LISTEN={local}"));
                Some(task)
            }
            None => None,
        };
        // Before the privileges go: turning BPF statistics on needs CAP_SYS_ADMIN.
        let budget = probes.as_ref().map(|_| budget::Budget::new(&config.budget));
        // Everything that needed root is done (probes attached, socket bound): keep
        // only what reading /proc and watched directories needs, before any other
        // thread exists (the exporter's connection may resolve names on one).
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
        // After the privileges are dropped: the thread is born with the reduced set.
        let spool_writer =
            SpoolWriter::start(spool.clone()).context("starting the spool writer thread")?;
        // The API shows the spool as the writer thread leaves it.
        let view = state.spool_fields();
        spool.on_publish(move |snap| view.publish(snap));
        let export_stats = Arc::new(stream::ExportStats::default());
        let running = Running {
            exporter: config
                .collector
                .as_deref()
                .map(|a| start_exporter(a, &config.tls, &spool, &export_stats, &agent_id)),
            config,
        };
        let interval = running.config.interval.0;
        tracing::info!(
            %epoch,
            "tracing the host every {interval:?}, spool epoch {epoch} (SIGTERM or Ctrl-C to stop, SIGHUP to reload)"
        );
        let mut tick = tokio::time::interval(interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        tick.tick().await;
        let mut drain = tokio::time::interval(DRAIN_EVERY);
        drain.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let follower_joined = Some(state.follower_joined());
        let mut agent = Self {
            started_unix_ms: vigil_units::unix_ms(std::time::SystemTime::now()),
            auto_snapshot: incident::AutoSnapshot::new(
                &running.config.incident,
                &running.config.data_dir,
            ),
            running,
            reload,
            signals,
            probes,
            reader,
            detector,
            host,
            spool,
            spool_writer,
            state,
            export_stats,
            agent_id,
            api,
            remote_api,
            metrics,
            socket,
            iv: Interval::new(now_ms()),
            events: Vec::new(),
            tick,
            drain,
            follower_joined,
            reader_waits: true,
            drain_armed: false,
            last_rescan: tokio::time::Instant::now(),
            rescan: None,
            dir_waiter: match dirs::DirWaiter::new() {
                Ok(w) => Some(w),
                Err(e) => {
                    tracing::warn!(
                        "inotify unavailable ({e}): a watched directory created later is watched from the next /proc rescan (60 s)"
                    );
                    None
                }
            },
            errors,
            alerting,
            budget,
        };
        agent.wait_for_missing_dirs();
        crate::notify::ready_with(
            &format!("tracing the host every {interval:?}, spool epoch {epoch}"),
            &ready_vars,
        );
        Ok(agent)
    }

    /// Points the directory waiter at the watched directories that do not exist now.
    /// One made between the filters' last look and the watch being set is caught by
    /// looking again once the watches are in place.
    pub(super) fn wait_for_missing_dirs(&mut self) {
        for _ in 0..3 {
            let (Some(w), Some(d)) = (self.dir_waiter.as_mut(), self.detector.as_mut()) else {
                return;
            };
            let failed = w.watch(d.missing_dirs());
            if failed > 0 {
                tracing::debug!(
                    failed,
                    "cannot watch the parents of missing watched directories"
                );
            }
            if !d.missing_dirs().iter().any(|m| m.is_dir()) {
                return;
            }
            if let Some(p) = self.probes.as_mut() {
                apply_watches(d, p, true, &mut self.errors);
            }
        }
    }

    /// A directory appeared where a watched one is missing: the kernel filters again.
    fn on_dir_created(&mut self) {
        if let (Some(d), Some(p)) = (self.detector.as_mut(), self.probes.as_mut()) {
            apply_watches(d, p, true, &mut self.errors);
        }
        self.wait_for_missing_dirs();
    }

    /// Waits for the next thing to react to.
    async fn wake(&mut self) -> Wake {
        // The short drain clock runs while someone follows live events, and for one
        // period after the kernel woke us (for what came after the wake-up).
        let following = self.drain_armed || self.state.has_followers();
        let waits = self.reader.is_some() && self.reader_waits;
        let (reader, events) = (&mut self.reader, &mut self.events);
        let follower = self.follower_joined.as_ref();
        let rescanning = self.rescan.is_some();
        let rescan = &mut self.rescan;
        let dirs = self.dir_waiter.as_ref().filter(|w| w.active());
        let waiting_dirs = dirs.is_some();
        tokio::select! {
            _ = self.signals.term.recv() => Wake::Stop,
            _ = self.signals.int.recv() => Wake::Stop,
            _ = self.signals.hup.recv() => Wake::Reload,
            r = async { reader.as_mut()?.read(events).await.ok() }, if waits => Wake::EventsReady(r.is_some()),
            _ = async { follower?.notified().await; Some(()) }, if !following => Wake::FollowerJoined,
            _ = self.drain.tick(), if following => Wake::Drain,
            _ = self.tick.tick() => Wake::Tick,
            r = async { rescan.as_mut()?.await.ok() }, if rescanning => Wake::Rescanned(r),
            Some(Ok(())) = async { Some(dirs?.created().await) }, if waiting_dirs => Wake::DirCreated,
        }
    }

    /// Reacts until a stop signal; returns when it came.
    pub async fn serve(&mut self) -> anyhow::Result<tokio::time::Instant> {
        loop {
            match self.wake().await {
                Wake::Stop => return Ok(tokio::time::Instant::now()),
                Wake::Reload => self.on_reload(),
                Wake::EventsReady(ok) => self.on_events_ready(ok),
                // Loop again: someone follows now, and the drain clock runs.
                Wake::FollowerJoined => self.drain.reset_immediately(),
                Wake::Drain => self.on_drain(),
                Wake::Tick => self.on_tick()?,
                Wake::Rescanned(scan) => self.on_rescanned(scan),
                Wake::DirCreated => self.on_dir_created(),
            }
        }
    }

    /// SIGHUP: the config and the rules again; a bad one keeps what runs.
    fn on_reload(&mut self) {
        crate::notify::reloading();
        match (self.reload)() {
            Ok(new) => {
                self.reload_rules(&new);
                self.reload_alerts(&new);
                self.apply_reload(new);
                crate::notify::ready(&format!(
                    "tracing the host every {:?} (configuration reloaded)",
                    self.running.config.interval.0
                ));
            }
            Err(e) => {
                tracing::error!("SIGHUP: new configuration refused, keeping the running one: {e}");
                crate::notify::ready("new configuration refused; running the previous one");
            }
        }
    }

    /// The kernel woke the agent: what it read goes through detection and out.
    fn on_events_ready(&mut self, ok: bool) {
        if !ok {
            tracing::warn!(
                "the event ring buffer cannot be waited on; draining it each interval only"
            );
            self.reader_waits = false;
            self.errors.event_reader_wait += 1;
        }
        let woke_with_events = self.events.iter().any(is_prompt);
        self.absorb();
        // A watched file replaced, a process to watch: the kernel's filters now, not
        // at the next drain (a read of the new inode right after would be missed).
        if let (Some(d), Some(p)) = (self.detector.as_mut(), self.probes.as_mut()) {
            if d.has_pending_work() {
                apply_watches(d, p, false, &mut self.errors);
            }
        }
        if woke_with_events && !self.drain_armed {
            self.drain_armed = true;
            self.drain.reset();
        }
    }

    /// The short drain clock: read what came since, rescan /proc once a minute.
    fn on_drain(&mut self) {
        if let Some(r) = self.reader.as_mut() {
            r.drain(&mut self.events);
        }
        // Nothing since the last look: stop the short clock until the next wake-up.
        let rescan = self.last_rescan.elapsed() >= RESCAN_EVERY;
        let pending = self
            .detector
            .as_ref()
            .is_some_and(Detector::has_pending_work);
        if !self.events.iter().any(is_prompt) {
            self.drain_armed = pending;
        }
        if self.events.is_empty() && !rescan && !pending {
            return;
        }
        self.absorb();
        if rescan && self.rescan.is_none() {
            if let Some(d) = self.detector.as_ref() {
                // Reading /proc is thousands of file reads: on the blocking pool, the
                // result applied on the loop when it is back (Wake::Rescanned).
                self.last_rescan = tokio::time::Instant::now();
                let request = d.rescan_request();
                self.rescan = Some(tokio::task::spawn_blocking(move || request.read()));
            }
        }
        if let (Some(d), Some(p)) = (self.detector.as_mut(), self.probes.as_mut()) {
            apply_watches(d, p, false, &mut self.errors);
        }
    }

    /// The /proc rescan is back: the table learns what it missed, and the kernel's
    /// filters (watched directories looked up again) follow.
    fn on_rescanned(&mut self, scan: Option<crate::detect::table::ProcScan>) {
        self.rescan = None;
        let (Some(d), Some(scan)) = (self.detector.as_mut(), scan) else {
            return;
        };
        let mut f = Vec::new();
        d.apply_rescan(scan, &mut f);
        self.iv.publish_findings(f, Some(&mut self.state.write()));
        if let Some(p) = self.probes.as_mut() {
            apply_watches(d, p, true, &mut self.errors);
        }
        self.wait_for_missing_dirs();
    }

    /// The interval's end: its batch to the spool.
    fn on_tick(&mut self) -> anyhow::Result<()> {
        let mut batch = self.close_interval()?;
        self.evaluate_alerts(&mut batch);
        self.spool_batch(batch);
        Ok(())
    }

    /// Stop: detach the probes after a last read, spool the partial interval, and give
    /// the exporter until the deadline to get it acked.
    pub async fn stop(mut self, stop_requested: tokio::time::Instant) {
        crate::notify::stopping();
        let deadline = stop_requested + self.running.config.shutdown_timeout.0;
        let last = self.close_interval();
        drop(self.reader.take());
        // Detaching takes the kernel an RCU grace period per tracepoint (a few hundred
        // ms for all of them): done on the side, so the last batch goes out meanwhile.
        let probes = self.probes.take();
        let detach = std::thread::spawn(move || {
            let t = std::time::Instant::now();
            drop(probes);
            t.elapsed()
        });
        match last {
            Ok(batch) => self.spool_batch(batch),
            Err(e) => tracing::error!("the last partial batch could not be made: {e:#}"),
        }
        // Written and on disk before the exporter's last chance to send it.
        self.spool_writer.flush().await;
        if let Some(a) = self.alerting.as_mut() {
            a.flush().await;
        }
        if let Some(e) = self.running.exporter.take() {
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
        let spool = self.spool.clone();
        let st = tokio::task::spawn_blocking(move || {
            let mut sp = spool.lock();
            if let Err(e) = sp.checkpoint() {
                tracing::warn!(error = %e, "spool: writing the ack checkpoint at exit failed");
            }
            sp.stats()
        })
        .await
        .unwrap_or_default();
        let export_stats = &self.export_stats;
        tracing::info!(
            "exported {} batches, {} acked ({} duplicates), {} reconnects; spool: {} unacked (kept for the next start), {} dropped, {} damaged",
            export_stats.sent.load(Ordering::Relaxed),
            export_stats.acked.load(Ordering::Relaxed),
            export_stats.duplicates.load(Ordering::Relaxed),
            export_stats.reconnects.load(Ordering::Relaxed),
            st.unacked, st.dropped_batches, st.corrupt_records,
        );
        if let Some(api) = self.api.take() {
            api.abort();
        }
        if let Some(api) = self.remote_api.take() {
            api.abort();
        }
        if let Some(m) = self.metrics.take() {
            m.abort();
        }
        if let Some(path) = &self.socket {
            let _ = std::fs::remove_file(path);
        }
        tracing::info!("stopped");
    }
}

/// Writes the detector's kernel filters (one value) to the probes in one call. A part
/// that fails is logged and counted (`internal_errors.kernel_filter_update`).
fn apply_watches(d: &mut Detector, p: &mut Probes, all: bool, errors: &mut InternalErrors) {
    let filters = d.kernel_filters(all);
    if filters.is_empty() {
        return;
    }
    let applied = p.apply_filters(&filters);
    d.record_watch_failures(applied.pids_not_added);
    if applied.prefixes_skipped > 0 {
        tracing::warn!(
            skipped = applied.prefixes_skipped,
            "watched directories beyond the kernel's prefix list: renames into them are not seen"
        );
    }
    for (what, e) in applied.failed {
        errors.kernel_filter_update += 1;
        tracing::warn!(error = %error_chain(&e), "cannot set the {what}");
    }
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

#[cfg(test)]
mod tests {
    //! The agent loop in-process, without root: host metrics only (probes and detection
    //! off), streaming to a real collector (`collector::serve` on 127.0.0.1:0) and
    //! answering its API on a socket in a temporary directory.
    use std::time::Duration;

    use super::Agent;
    use crate::config::AgentConfig;

    #[test]
    fn the_loop_samples_spools_streams_and_answers_its_api_then_stops_with_every_batch_stored() {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async {
            let dir = tempfile::tempdir().unwrap();
            let store_dir = dir.path().join("collector");
            let (addr, collector) = crate::test_support::Collector::start(&store_dir).await;
            let socket = dir.path().join("agent.sock");
            let text = format!(
                "interval = \"1s\"\ncollector = \"{addr}\"\nagent_id = \"loop\"\n\
                 socket = \"{}\"\ndata_dir = \"{}\"\n\n[probes]\nsyscalls = false\n\
                 retransmits = false\n\n[detect]\nenabled = false\n\n[tls]\nmode = \"off\"\n",
                socket.display(),
                dir.path().join("agent").display()
            );
            let path = dir.path().join("agent.toml");
            let config = AgentConfig::parse(&path, &text).unwrap();
            let reload = Box::new(move || AgentConfig::parse(&path, &text));
            let mut agent = Agent::start(config, reload).await.unwrap();
            // The loop runs while the test asks its API and the collector.
            let sent = {
                let watch = async {
                    let mut api = crate::query::api::connect(&socket).await.unwrap();
                    loop {
                        if let Ok(r) = api.stats(vigil_proto::v1::StatsRequest {}).await {
                            let r = r.into_inner();
                            let a = r.agent.unwrap_or_default();
                            // Three intervals sampled, spooled and acked.
                            if a.last_sequence >= 3 && a.batches_acked >= 3 {
                                assert!(r.metrics.is_some_and(|m| m.memory_total_bytes > 0));
                                assert_eq!(r.host.unwrap().agent_id, "loop");
                                return a.last_sequence;
                            }
                        }
                        tokio::time::sleep(Duration::from_millis(100)).await;
                    }
                };
                tokio::select! {
                    r = agent.serve() => panic!("the loop ended by itself: {r:?}"),
                    n = tokio::time::timeout(Duration::from_secs(60), watch) => {
                        n.expect("three batches acked within a minute")
                    }
                }
            };
            // A stop as on SIGTERM: the partial interval is spooled and sent too.
            agent.stop(tokio::time::Instant::now()).await;
            collector.stop().await;
            let mut store = vigil_collector::Store::open(&store_dir).unwrap();
            let hosts = store.hosts().unwrap();
            assert_eq!(hosts.len(), 1, "{hosts:?}");
            let h = &hosts[0];
            assert!(h.last_sequence > sent, "the stop's own batch: {h:?}");
            assert_eq!(
                (h.batches, h.gaps, h.duplicates),
                (h.last_sequence, 0, 0),
                "every batch stored once: {h:?}"
            );
        });
    }
}
