//! SIGHUP: the configuration and the rules read again; what cannot change without a
//! restart is said, and the rest applied.
use super::{apply_watches, start_exporter, Agent};
use crate::config::AgentConfig;

impl Agent {
    /// SIGHUP: loads the rules again; a bad file keeps the rules that run.
    pub(super) fn reload_rules(&mut self, config: &AgentConfig) {
        let Some(d) = self.detector.as_mut() else {
            return;
        };
        match crate::detect::rules::load(Some(&config.detect.rules_dir)) {
            Ok(rules) => {
                tracing::info!("SIGHUP: {} rules loaded", rules.len());
                d.set_rules(rules);
                if let Some(p) = self.probes.as_mut() {
                    apply_watches(d, p, true, &mut self.errors);
                }
                self.wait_for_missing_dirs();
            }
            Err(e) => tracing::error!(
                "SIGHUP: rules refused, keeping the {} running: {e}",
                d.rules().len()
            ),
        }
    }

    /// SIGHUP: the alert rules again; a bad file keeps the rules that run.
    pub(super) fn reload_alerts(&mut self, config: &AgentConfig) {
        if let Some(a) = self.alerting.as_mut() {
            a.reload(config);
        }
        if let Some(b) = self.budget.as_mut() {
            b.reconfigure(&config.budget);
        }
    }

    /// Applies a reloaded config; says what changed and what needs a restart.
    pub(super) fn apply_reload(&mut self, new: AgentConfig) {
        let old = &self.running.config;
        let mut restart_needed = Vec::new();
        if new.probes != old.probes {
            restart_needed.push("probes");
        }
        if new.detect.enabled != old.detect.enabled {
            restart_needed.push("detect.enabled");
        }
        if new.api_listen != old.api_listen || new.api_tls != old.api_tls {
            restart_needed.push("api_listen/api_tls");
        }
        if new.socket != old.socket || new.api != old.api || new.api_group != old.api_group {
            restart_needed.push("socket/api");
        }
        if new.data_dir != old.data_dir {
            restart_needed.push("data_dir");
        }
        if new.agent_id != old.agent_id {
            restart_needed.push("agent_id");
        }
        if new.log != old.log {
            restart_needed.push("log");
        }
        if !restart_needed.is_empty() {
            tracing::warn!(
                "SIGHUP: {} changed; that takes effect at the next restart",
                restart_needed.join(", ")
            );
        }
        if new.interval != old.interval {
            self.tick = tokio::time::interval_at(
                tokio::time::Instant::now() + new.interval.0,
                new.interval.0,
            );
            self.tick
                .set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            self.state
                .write()
                .set_interval(new.interval.0.as_secs_f64());
        }
        if new.spool != old.spool {
            self.spool_writer.reconfigure(new.spool.clone());
        }
        if new.collector != old.collector || new.tls != old.tls {
            if let Some(e) = self.running.exporter.take() {
                // Safe at any point: acks are recorded in the spool as they arrive, and
                // whatever is unacked is sent again by the next exporter.
                e.task.abort();
                tracing::info!(collector = %e.addr, "stopped streaming to {}", e.addr);
            }
            self.running.exporter = new.collector.as_deref().map(|a| {
                start_exporter(a, &new.tls, &self.spool, &self.export_stats, &self.agent_id)
            });
        }
        // The probes keep the settings they were loaded with.
        let old = &self.running.config;
        let mut applied = new;
        applied.probes = old.probes.clone();
        applied.detect.enabled = old.detect.enabled;
        applied.socket = old.socket.clone();
        applied.api = old.api;
        applied.data_dir = old.data_dir.clone();
        applied.agent_id = old.agent_id.clone();
        applied.log = old.log.clone();
        tracing::info!(
            "SIGHUP: configuration reloaded (interval {:?}, collector {})",
            applied.interval.0,
            applied.collector.as_deref().unwrap_or("none")
        );
        self.running.config = applied;
    }
}
