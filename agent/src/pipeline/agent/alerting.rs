//! The alert engine in the loop: evaluated at each interval's end over the batch it
//! closes, its changes put into that batch, the API, the live stream and the log; its
//! state saved off the loop when it changed (and every few minutes for the learned
//! baselines).
use std::{path::PathBuf, time::Duration};

use vigil_proto::v1 as pb;

use super::Agent;
use crate::alerts::{metric::AgentHealth, saved, Engine};

/// How often the state is saved when only the baselines changed.
const SAVE_EVERY: Duration = Duration::from_secs(300);

/// The agent's own CPU time and memory, from /proc/self.
struct SelfUsage {
    last: Option<(std::time::Instant, f64)>,
}

impl SelfUsage {
    fn new() -> Self {
        Self { last: None }
    }

    /// (CPU percent of one core since the last call, resident bytes).
    fn sample(&mut self) -> (Option<f64>, Option<u64>) {
        let cpu_secs = vigil_openmetrics::process_cpu_seconds();
        let now = std::time::Instant::now();
        let pct = match (self.last, cpu_secs) {
            (Some((t, before)), Some(c)) if now > t => {
                Some(100.0 * (c - before).max(0.0) / now.duration_since(t).as_secs_f64())
            }
            _ => None,
        };
        if let Some(c) = cpu_secs {
            self.last = Some((now, c));
        }
        (pct, vigil_openmetrics::process_resident_bytes())
    }
}

pub(super) struct Alerting {
    engine: Engine,
    slis: Vec<crate::sli::Sli>,
    sli_counter: crate::sli::Counter,
    path: PathBuf,
    usage: SelfUsage,
    /// The exporter's ack count when it last moved, and when.
    last_ack: (u64, std::time::Instant),
    last_save: std::time::Instant,
    saving: Option<tokio::task::JoinHandle<()>>,
}

impl Alerting {
    /// The rules (a bad alerts_dir runs the built-in set until a reload succeeds) and
    /// the saved state (a damaged file is set aside and counted).
    pub(super) fn start(
        config: &crate::config::AgentConfig,
        rebuilt: &mut u64,
    ) -> anyhow::Result<Self> {
        let rules = match crate::alerts::rules::load(Some(&config.alerts_dir)) {
            Ok(r) => r,
            Err(e) => {
                tracing::error!("alerts: {e}; running the built-in alerts only until a reload (SIGHUP) succeeds");
                crate::alerts::rules::load(None)?
            }
        };
        let n = rules.len();
        let mut engine = Engine::new(rules, config.alert_damping.0);
        let path = saved::path(&config.data_dir);
        match saved::load(&path, super::now_ms()) {
            saved::Loaded::Missing => {}
            saved::Loaded::Ok(s) => {
                let active = engine.restore(s);
                tracing::info!("alerts: state restored ({active} alert series remembered)");
            }
            saved::Loaded::Damaged { reason, kept } => {
                *rebuilt += 1;
                tracing::warn!(
                    "alerts: the state file {} is damaged ({reason}); set aside as {} and started afresh",
                    path.display(),
                    kept.display()
                );
            }
        }
        tracing::info!("alerts: {n} rules");
        let slis = load_slis(&config.sli_dir).unwrap_or_else(|e| {
            tracing::error!("SLIs: {e}; none counted until a reload (SIGHUP) succeeds");
            Vec::new()
        });
        let mut sli_counter = crate::sli::Counter::default();
        sli_counter.declare(&slis);
        Ok(Self {
            engine,
            slis,
            sli_counter,
            path,
            usage: SelfUsage::new(),
            last_ack: (0, std::time::Instant::now()),
            last_save: std::time::Instant::now(),
            saving: None,
        })
    }

    /// Saves the state off the loop if it changed (one write at a time).
    fn save(&mut self, force: bool) {
        let due = self.engine.take_dirty() || self.last_save.elapsed() >= SAVE_EVERY || force;
        if !due {
            return;
        }
        if self.saving.as_ref().is_some_and(|h| !h.is_finished()) {
            // Still writing the last one: try again next interval.
            self.engine.mark_dirty();
            return;
        }
        let saved = self.engine.to_saved(super::now_ms());
        let path = self.path.clone();
        self.last_save = std::time::Instant::now();
        self.saving = Some(tokio::task::spawn_blocking(move || {
            if let Err(e) = saved::store(&path, &saved) {
                tracing::warn!(error = %e, "alerts: cannot save the state to {}", path.display());
            }
        }));
    }

    /// Saves now and waits for it (at stop).
    pub(super) async fn flush(&mut self) {
        if let Some(h) = self.saving.take() {
            let _ = h.await;
        }
        self.save(true);
        if let Some(h) = self.saving.take() {
            let _ = h.await;
        }
    }

    /// Every SLI's totals since start (0 before its first event).
    pub(super) fn sli_totals(&self) -> std::collections::BTreeMap<String, (u64, u64)> {
        self.sli_counter.totals.clone()
    }

    pub(super) fn reload(&mut self, config: &crate::config::AgentConfig) {
        match load_slis(&config.sli_dir) {
            Ok(s) => {
                self.sli_counter.declare(&s);
                self.slis = s;
            }
            Err(e) => tracing::error!(
                "SIGHUP: SLIs refused, keeping the {} counted: {e}",
                self.slis.len()
            ),
        }
        match crate::alerts::rules::load(Some(&config.alerts_dir)) {
            Ok(rules) => {
                tracing::info!("SIGHUP: {} alert rules loaded", rules.len());
                self.engine.set_rules(rules);
            }
            Err(e) => tracing::error!(
                "SIGHUP: alert rules refused, keeping the {} running: {e}",
                self.engine.rules().len()
            ),
        }
        self.engine.set_damping(config.alert_damping.0);
    }

    pub(super) fn view(&self) -> pb::AlertsResponse {
        pb::AlertsResponse {
            active: self.engine.active(),
            recent: self.engine.recent().cloned().collect(),
            rules: self.engine.rules().len() as u32,
            held: self.engine.stats().held,
        }
    }
}

/// The SLIs in `dir`, each said at load (with the bucket edge a latency bound uses).
fn load_slis(dir: &std::path::Path) -> Result<Vec<crate::sli::Sli>, String> {
    let slis = crate::sli::load(dir)?;
    for s in &slis {
        match &s.kind {
            crate::sli::SliKind::SyscallLatency {
                syscalls,
                under,
                effective_ns,
            } => tracing::info!(
                "SLI {}: {} under {under:?} (counted under {}: the histogram bucket edge at or below it)",
                s.name,
                syscalls.join(", "),
                crate::units::human_ns(*effective_ns)
            ),
            kind => tracing::info!("SLI {}: {kind:?}", s.name),
        }
    }
    Ok(slis)
}

impl Agent {
    /// Evaluates the alerts over the batch just closed; their changes join it.
    pub(super) fn evaluate_alerts(&mut self, batch: &mut pb::Batch) {
        let Some(a) = self.alerting.as_mut() else {
            return;
        };
        let snap = self.spool.snapshot();
        let acked = self
            .export_stats
            .acked
            .load(std::sync::atomic::Ordering::Relaxed);
        let waiting = self.running.exporter.is_some() && snap.stats.unacked > 0;
        if acked != a.last_ack.0 || !waiting {
            a.last_ack = (acked, std::time::Instant::now());
        }
        let (cpu_percent, rss_bytes) = a.usage.sample();
        self.check_budget(cpu_percent);
        let (usage, probes_shed) = self.budget.as_ref().map_or((cpu_percent, 0), |b| {
            (b.usage.or(cpu_percent), b.probes_shed())
        });
        let Some(a) = self.alerting.as_mut() else {
            return;
        };
        let probes_off = self
            .state
            .write()
            .agent_self()
            .probes
            .values()
            .filter(|s| s.starts_with("off"))
            .count() as u32;
        let health = AgentHealth {
            events_lost: batch
                .losses
                .as_ref()
                .map_or(0, |l| l.stages().iter().map(|(_, n)| n).sum()),
            probes_off,
            spool_unacked: snap.stats.unacked,
            spool_dropped_total: snap.stats.dropped_batches,
            collector_silent_secs: if waiting {
                a.last_ack.1.elapsed().as_secs_f64()
            } else {
                0.0
            },
            cpu_percent: usage,
            rss_bytes,
            probes_shed,
        };
        let Some(metrics) = batch.metrics.first() else {
            return;
        };
        let inputs = crate::alerts::metric::Inputs {
            time_ms: batch.end_unix_ms,
            metrics,
            syscalls: &batch.syscalls,
            findings: &batch.findings,
            agent: &health,
        };
        let changes = a.engine.evaluate(&inputs);
        let active = a.engine.active();
        let firing = |name: &str| {
            active
                .iter()
                .any(|e| e.alert == name && e.state == "firing")
        };
        let slis = a.sli_counter.count(&a.slis, batch, &firing);
        {
            let mut st = self.state.write();
            st.publish_collector_silent(health.collector_silent_secs);
            st.publish_alerts(a.view());
            st.publish_sli_totals(a.sli_counter.totals.clone());
            for e in &changes {
                st.push_event(pb::live_event::Event::Alert(e.clone()));
            }
        }
        batch.alerts = changes;
        batch.slis = slis;
        a.save(false);
    }
}
