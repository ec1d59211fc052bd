//! One interval's batch as it fills: events and findings (bounded, the rest counted),
//! and the loss accounting that turns the kernel's cumulative counters into each
//! batch's own losses.
use std::collections::BTreeMap;

use vigil_proto::v1 as pb;

use crate::{histogram::LatencyHistogram, query::state::StateWrite};

/// Events kept per interval for the batch; more are counted as dropped.
pub const EVENTS_PER_BATCH: usize = 10_000;
/// Findings kept per interval for the batch; more are counted (findings_dropped).
pub const FINDINGS_PER_BATCH: usize = 1_000;

/// One interval's worth of data, turned into a batch at its end.
pub struct Interval {
    pub batch: pb::Batch,
    pub window_start: i64,
    pub previous: BTreeMap<u32, LatencyHistogram>,
    /// Cumulative losses at the end of the previous batch (kernel and agent).
    pub reported: pb::Losses,
    /// Agent-side drops since start (events over a batch's limit, unwritable batches).
    pub pipeline_dropped: u64,
    /// Losses of a batch that could not be spooled, for the next batch to report.
    pub carried: pb::Losses,
    /// Findings over a batch's limit, since start.
    pub findings_dropped: u64,
}

impl Interval {
    pub fn new(window_start: i64) -> Self {
        Self {
            batch: pb::Batch::default(),
            window_start,
            previous: BTreeMap::new(),
            reported: pb::Losses::default(),
            pipeline_dropped: 0,
            carried: pb::Losses::default(),
            findings_dropped: 0,
        }
    }

    /// Cumulative losses now: kernel counters plus the agent's own.
    pub fn cumulative(&self, kernel: &pb::Losses, undecodable: u64) -> pb::Losses {
        let mut l = *kernel;
        l.undecodable_events = undecodable;
        l.pipeline_dropped = self.pipeline_dropped;
        l.findings_dropped = self.findings_dropped;
        l
    }

    /// Puts an event for the batch in (false when the batch is full: count it).
    pub fn keep_event(&mut self, live: &pb::live_event::Event) -> bool {
        let batch = &mut self.batch;
        if batch.retransmits.len() + batch.slow_syscalls.len() >= EVENTS_PER_BATCH {
            return false;
        }
        match live {
            pb::live_event::Event::Retransmit(r) => batch.retransmits.push(r.clone()),
            pb::live_event::Event::SlowSyscall(s) => batch.slow_syscalls.push(s.clone()),
            pb::live_event::Event::Missed(_)
            | pb::live_event::Event::Finding(_)
            | pb::live_event::Event::Alert(_) => {}
        }
        true
    }

    /// Puts findings into the batch (bounded, the rest counted), the recent list and
    /// the live stream, and logs them.
    pub fn publish_findings(
        &mut self,
        findings: Vec<pb::Finding>,
        mut st: Option<&mut StateWrite<'_>>,
    ) {
        for f in findings {
            if let Some(st) = st.as_deref_mut() {
                if !st.admit_finding(&f) {
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
            if self.batch.findings.len() < FINDINGS_PER_BATCH {
                self.batch.findings.push(f.clone());
            } else {
                self.findings_dropped += 1;
            }
            if let Some(st) = st.as_deref_mut() {
                st.push_event(pb::live_event::Event::Finding(f));
            }
        }
    }
}

/// Kernel counters as loss counts (cumulative since the probes loaded).
pub fn kernel_losses(c: &crate::probes::KernelCounters) -> pb::Losses {
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

/// What was lost between two cumulative counts (the loss table's `since`).
pub fn losses_since(now: &pb::Losses, before: &pb::Losses) -> pb::Losses {
    now.since(before)
}
