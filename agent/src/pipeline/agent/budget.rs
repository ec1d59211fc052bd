//! The agent's CPU budget: its own user and system time (plus its eBPF programs' run
//! time with `budget.count_bpf`) against `budget.cpu_percent` of one core. Over it for
//! `over_for`, it sheds syscall latency (the costliest optional probe: its histograms
//! and slow-syscall events; the security checks on the same programs go on); back
//! under half the budget for `over_for`, it takes it back. The alert
//! VigilAgentOverCPUBudget fires while a probe is shed.
use std::{os::fd::OwnedFd, time::Instant};

use super::Agent;
use crate::config::BudgetConfig;

pub(super) const SHED_PROBE: &str = "syscall-latency";

pub(super) struct Budget {
    config: BudgetConfig,
    over_since: Option<Instant>,
    under_since: Option<Instant>,
    shed: bool,
    /// The last interval's usage (percent of one core) and its BPF part.
    pub(super) usage: Option<f64>,
    pub(super) bpf_percent: Option<f64>,
    last_bpf: Option<(Instant, u128)>,
    /// Keeps the kernel's BPF run-time statistics on (count_bpf).
    _stats: Option<OwnedFd>,
}

impl Budget {
    /// With count_bpf, turns the kernel's BPF statistics on: before the privileges
    /// are dropped (it needs CAP_SYS_ADMIN), kept on while the agent runs.
    pub(super) fn new(config: &BudgetConfig) -> Self {
        let stats = if config.count_bpf {
            match aya::sys::enable_stats(aya::sys::Stats::RunTime) {
                Ok(fd) => {
                    tracing::info!("budget: counting the eBPF programs' run time (kernel BPF statistics on while the agent runs)");
                    Some(fd)
                }
                Err(e) => {
                    tracing::warn!("budget: cannot turn the kernel's BPF statistics on ({e}); the budget counts the agent's own CPU only");
                    None
                }
            }
        } else {
            None
        };
        Self {
            config: config.clone(),
            over_since: None,
            under_since: None,
            shed: false,
            usage: None,
            bpf_percent: None,
            last_bpf: None,
            _stats: stats,
        }
    }

    pub(super) fn reconfigure(&mut self, config: &BudgetConfig) {
        if config.count_bpf != self.config.count_bpf {
            tracing::warn!(
                "SIGHUP: budget.count_bpf changed; that takes effect at the next restart"
            );
        }
        self.config = BudgetConfig {
            count_bpf: self.config.count_bpf,
            ..config.clone()
        };
        self.over_since = None;
        self.under_since = None;
    }

    pub(super) fn probes_shed(&self) -> u32 {
        u32::from(self.shed)
    }
}

impl Agent {
    /// Measures the interval's usage and sheds or restores; `cpu_percent` is the
    /// agent's own user + system CPU over the interval.
    pub(super) fn check_budget(&mut self, cpu_percent: Option<f64>) {
        let Some(b) = self.budget.as_mut() else {
            return;
        };
        let now = Instant::now();
        b.bpf_percent = None;
        if b._stats.is_some() {
            if let Some(p) = self.probes.as_ref() {
                let total: u128 = p.program_stats().iter().map(|(_, t, _)| t.as_nanos()).sum();
                if let Some((t, before)) = b.last_bpf {
                    let secs = now.duration_since(t).as_secs_f64();
                    if secs > 0.0 {
                        b.bpf_percent =
                            Some(100.0 * total.saturating_sub(before) as f64 / 1e9 / secs);
                    }
                }
                b.last_bpf = Some((now, total));
            }
        }
        let Some(cpu) = cpu_percent else {
            return;
        };
        let usage = cpu + b.bpf_percent.unwrap_or(0.0);
        b.usage = Some(usage);
        let budget = b.config.cpu_percent;
        let over_for = b.config.over_for.0;
        let shed_possible = self.probes.is_some()
            && self
                .state
                .write()
                .agent_self()
                .probes
                .get(SHED_PROBE)
                .is_some_and(|s| s == "on");
        if !b.shed {
            if usage > budget {
                let since = *b.over_since.get_or_insert(now);
                if now.duration_since(since) >= over_for && shed_possible {
                    if let Some(p) = self.probes.as_mut() {
                        match p.shed_syscall_latency(true) {
                            Ok(()) => {
                                b.shed = true;
                                b.under_since = None;
                                tracing::warn!(
                                    usage, budget,
                                    "over the CPU budget ({usage:.2} % of a core for {over_for:?}, budget {budget} %): syscall latency shed (histograms and slow-syscall events stop; detection goes on)"
                                );
                                self.state.write().agent_self().probes.insert(
                                    SHED_PROBE.into(),
                                    format!("shed: over the CPU budget ({usage:.2} % of a core, budget {budget} %)"),
                                );
                            }
                            Err(e) => tracing::error!(
                                "cannot shed syscall latency: {}",
                                crate::probes::error_chain(&e)
                            ),
                        }
                    }
                }
            } else {
                b.over_since = None;
            }
        } else if usage < budget / 2.0 {
            let since = *b.under_since.get_or_insert(now);
            if now.duration_since(since) >= over_for {
                if let Some(p) = self.probes.as_mut() {
                    match p.shed_syscall_latency(false) {
                        Ok(()) => {
                            b.shed = false;
                            b.over_since = None;
                            tracing::info!(
                                usage, budget,
                                "back under half the CPU budget ({usage:.2} % of a core, budget {budget} %): syscall latency restored"
                            );
                            self.state
                                .write()
                                .agent_self()
                                .probes
                                .insert(SHED_PROBE.into(), "on".into());
                        }
                        Err(e) => tracing::error!(
                            "cannot restore syscall latency: {}",
                            crate::probes::error_chain(&e)
                        ),
                    }
                }
            }
        } else {
            b.under_since = None;
        }
    }
}
