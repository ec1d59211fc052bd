//! The interval's batch: drained events absorbed (through detection), the interval
//! closed into a batch (syscall latency deltas, host sample, losses), and spooled.
use std::{collections::BTreeMap, sync::atomic::Ordering};

use anyhow::Context as _;
use vigil_proto::v1 as pb;

use super::{now_ms, Agent};
use crate::{
    export::convert,
    histogram::LatencyHistogram,
    pipeline::interval::{kernel_losses, losses_since},
    probes::events::Event,
    trace::syscalls::rows,
    units::human_ns,
};

impl Agent {
    /// Moves drained events into the batch (bounded) and to live followers; process
    /// and security events go through the detector, and its findings likewise.
    pub(super) fn absorb(&mut self) {
        let mut dropped = 0;
        let mut st = Some(self.state.write());
        let mut findings = Vec::new();
        for e in self.events.drain(..) {
            let live = match &e {
                Event::Retransmit(r) => pb::live_event::Event::Retransmit(convert::retransmit(r)),
                Event::SlowSyscall(s) => {
                    pb::live_event::Event::SlowSyscall(convert::slow_syscall(s))
                }
                Event::Process(p) => {
                    if let Some(d) = self.detector.as_mut() {
                        d.on_process(p, &mut findings);
                    }
                    continue;
                }
                Event::Security(s) => {
                    if let Some(d) = self.detector.as_mut() {
                        d.on_security(s, &mut findings);
                    }
                    continue;
                }
            };
            if !self.iv.keep_event(&live) {
                dropped += 1;
            }
            if let Some(st) = st.as_mut() {
                st.push_event(live);
            }
        }
        if let Some(d) = self.detector.as_mut() {
            d.tick(false, &mut findings);
            if let Some(st) = st.as_mut() {
                let a = st.agent_self();
                a.process_events = d.stats().process_events;
                a.security_events = d.stats().security_events;
                a.findings = d.stats().findings;
                a.processes_tracked = d.stats().table_size;
                a.processes_untracked = d.stats().untracked;
                a.connect_watch_full = d.stats().watch_failed;
                if a.rule_matches.len() != d.stats().matches.len()
                    || d.stats()
                        .matches
                        .iter()
                        .any(|(k, v)| a.rule_matches.get(k) != Some(v))
                {
                    a.rule_matches = d.stats().matches.clone().into_iter().collect();
                }
            }
        }
        self.iv.publish_findings(findings, st.as_mut());
        self.iv.pipeline_dropped += dropped;
    }

    /// Ends the interval: drains events, reads the probes and the host, prints the
    /// summary if asked, and returns the interval's batch (not yet spooled).
    pub(super) fn close_interval(&mut self) -> anyhow::Result<pb::Batch> {
        let undecodable = match self.reader.as_mut() {
            Some(r) => {
                r.drain(&mut self.events);
                r.decode_errors
            }
            None => 0,
        };
        self.absorb();
        let sample = self.host.sample().context("reading host metrics")?;
        let iv = &mut self.iv;
        let (delta, kernel) = match self.probes.as_ref() {
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
        if let Some(p) = &self.probes {
            self.state.write().publish_bpf_stats(p.program_stats());
        }
        let agent_id = &self.agent_id;
        self.state.write().publish_sample(
            convert::host_identity(&sample, agent_id),
            convert::host_metrics(&sample),
            &delta,
        );
        let cumulative = iv.cumulative(&kernel, undecodable);
        let mut losses = losses_since(&cumulative, &iv.reported);
        losses.add(&std::mem::take(&mut iv.carried));
        iv.reported = cumulative;
        let config = &self.running.config;
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
        batch.agent_id = agent_id.clone();
        batch.start_unix_ms = iv.window_start;
        batch.end_unix_ms = end;
        batch.host = Some(convert::host_identity(&sample, agent_id));
        batch.metrics = vec![convert::host_metrics(&sample)];
        batch.syscalls = delta
            .iter()
            .map(|(nr, h)| convert::syscall_latency(*nr, h))
            .collect();
        batch.losses = Some(losses);
        batch.agent_started_unix_ms = self.started_unix_ms;
        batch.probes = self.state.write().agent_self().probes.clone();
        iv.window_start = end;
        Ok(batch)
    }

    /// Hands the batch to the spool's writer thread (which numbers it, writes it and
    /// wakes the exporter). If the writer is WRITE_QUEUE batches behind (the disk is
    /// that slow), the batch is dropped and counted in the next one, and the loop goes
    /// on. Then publishes the agent's delivery state.
    pub(super) fn spool_batch(&mut self, batch: pb::Batch) {
        self.state.write().push_history(&batch);
        if let Some(auto) = self.auto_snapshot.as_mut() {
            auto.on_interval(&batch, &self.state);
        }
        if let Err(batch) = self.spool_writer.append(batch) {
            self.iv.pipeline_dropped += 1;
            self.errors.spool_queue_full += 1;
            // The losses it reported are not lost with it: the next batch carries them.
            self.iv.carried.add(&batch.losses.unwrap_or_default());
            tracing::error!(
                "the spool writer is {} batches behind; batch dropped and counted",
                crate::spool::writer::WRITE_QUEUE
            );
        }
        self.publish_delivery();
    }

    /// `vigil stats --json` `agent`: the spool's last published state and the
    /// exporter's counters.
    pub(super) fn publish_delivery(&mut self) {
        let export = &self.export_stats;
        let e = &self.errors;
        let spool_write = self.spool.write_failed.load(Ordering::Relaxed);
        let spool_fsync = self.spool.fsync_failed.load(Ordering::Relaxed);
        {
            let mut s = self.state.write();
            let s = s.agent_self();
            // Read under the state's lock: the writer thread's own update of the spool
            // fields (after the lock) is never older than this one.
            let snap = self.spool.snapshot();
            let st = &snap.stats;
            *s = pb::AgentSelf {
                epoch: snap.epoch.high(),
                epoch_low: snap.epoch.low(),
                last_sequence: snap.last_sequence,
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
                tls_mode: export.tls_mode(),
                tls_reloads: export.tls_counter(|t| &t.reloads),
                tls_reload_failures: export.tls_counter(|t| &t.failures),
                streams_permission_denied: export.permission_denied.load(Ordering::Relaxed),
                losses: Some(snap.total_losses),
                internal_errors: [
                    ("kernel_filter_update", e.kernel_filter_update),
                    ("spool_write", spool_write),
                    ("spool_queue_full", e.spool_queue_full),
                    ("spool_fsync", spool_fsync),
                    ("event_reader_wait", e.event_reader_wait),
                    (
                        "spool_ack_record",
                        export.ack_record_failed.load(Ordering::Relaxed),
                    ),
                    (
                        "spool_checkpoint",
                        export.checkpoint_failed.load(Ordering::Relaxed),
                    ),
                ]
                .into_iter()
                .map(|(k, v)| (k.to_string(), v))
                .collect(),
                ..std::mem::take(s)
            };
        }
    }
}
