//! What the agent knows right now, shared between its loop (the one writer) and the
//! local query API (readers). Everything here is bounded.
//!
//! The fields are private: the loop changes them through a [`StateWriter`] (it owns the
//! only one), the spool's writer thread its own few through [`SpoolFields`], and the API
//! reads them through [`StateReader`]. A panic while the lock is held cannot leave a
//! value that breaks a reader (every change is a push or a whole-field store), so a
//! poisoned lock is used as it is rather than failing every later request.
use std::collections::{BTreeMap, VecDeque};
use std::sync::{Arc, PoisonError, RwLock, RwLockReadGuard, RwLockWriteGuard};

use tokio::sync::broadcast;
use vigil_proto::v1 as pb;

use crate::histogram::{CompactHistogram, LatencyHistogram};

/// Syscall latency history for `SyscallLatency` windows: the last RECENT_INTERVALS
/// intervals one by one, then OLDER_GROUPS groups of GROUP intervals each merged into
/// one (360 intervals in all: an hour at the default 10 s). Memory stays flat once full.
pub const RECENT_INTERVALS: usize = 60;
pub const GROUP: usize = 10;
pub const OLDER_GROUPS: usize = 30;
pub const LATENCY_INTERVALS: usize = RECENT_INTERVALS + GROUP * OLDER_GROUPS;
/// Intervals kept for `History` (`vigil why`, `vigil incident snapshot --local`): an
/// hour at the default 10 s; fewer when they are large (HISTORY_BYTES). The oldest go
/// first; the answer says how far back it reaches.
pub const HISTORY_INTERVALS: usize = 360;
pub const HISTORY_BYTES: usize = 32 << 20;
/// Retransmits kept for `Retransmits`.
pub const RECENT_RETRANSMITS: usize = 1000;
/// Findings kept for `vigil events --since` (newest); older ones are forgotten, and
/// counted.
pub const RECENT_FINDINGS: usize = 10_000;
/// Live events buffered per follower; a follower that falls further behind is told
/// how many it missed.
pub const FOLLOW_BUFFER: usize = 4096;

struct AgentState {
    identity: pb::HostIdentity,
    latest: Option<pb::HostMetrics>,
    interval_secs: f64,
    /// When the loop last published an interval (or started): the health check's
    /// sign that the loop is alive.
    published: std::time::Instant,
    /// Per-interval syscall latency, newest last.
    latency: VecDeque<Vec<(u32, CompactHistogram)>>,
    /// Older history, GROUP intervals per entry, newest last.
    older_latency: VecDeque<Vec<(u32, CompactHistogram)>>,
    retransmits: VecDeque<pb::TcpRetransmit>,
    /// Recent intervals as history keeps them (pb::Batch::for_history), oldest first,
    /// with their encoded sizes' sum and the events trimmed from them.
    history: VecDeque<pb::Batch>,
    history_bytes: usize,
    history_trimmed: u64,
    findings: VecDeque<pb::Finding>,
    /// Findings pushed out of `findings` by newer ones.
    findings_forgotten: u64,
    live: broadcast::Sender<pb::live_event::Event>,
    /// The alert engine's view, as of the last interval.
    alerts: pb::AlertsResponse,
    /// Seconds since the collector last acked while batches wait (0: nothing waits).
    collector_silent_secs: f64,
    /// Each SLI's (good, total) since the agent started.
    sli_totals: BTreeMap<String, (u64, u64)>,
    /// The agent's own delivery state, as of the last interval.
    agent: pb::AgentSelf,
    /// Signalled when someone starts following live events.
    follower_joined: Arc<tokio::sync::Notify>,
    /// Findings per user and rule per minute (a local user flooding one rule cannot
    /// push everyone else's findings out of the recent list or the batches).
    finding_rate: FindingRate,
    /// Since the agent started, for /metrics: syscall latency per syscall number,
    /// retransmits by remote address, findings by rule and severity.
    totals: Totals,
}

/// Retransmit peers with a series of their own in /metrics; later ones are counted
/// under `peer="other"`.
pub const RETRANSMIT_PEERS: usize = 64;

/// Counters since the agent started (what /metrics exposes as counters). Bounded: one
/// histogram per syscall number, RETRANSMIT_PEERS peers plus "other", one entry per
/// (rule, severity) of the loaded rules.
#[derive(Default)]
pub struct Totals {
    pub latency: BTreeMap<u32, LatencyHistogram>,
    /// The first RETRANSMIT_PEERS remote addresses seen keep their own counter until
    /// the agent restarts (a counter that moved between series would go backwards);
    /// every later one adds to `retransmits_other`.
    pub retransmits: BTreeMap<String, u64>,
    pub retransmits_other: u64,
    /// Retransmits the kernel attempted and could not send (the tracepoint's `err`,
    /// Linux 6.13 and later).
    pub retransmit_failures: u64,
    pub findings: BTreeMap<(String, String), u64>,
    /// Per loaded eBPF program: run time and run count (kernel.bpf_stats_enabled),
    /// as of the last interval.
    pub bpf_programs: Vec<(String, std::time::Duration, u64)>,
}

/// The loop's handle: the only one that changes the state (one lock per `write`).
pub struct StateWriter(Arc<RwLock<AgentState>>);

/// The API's handle: reads only.
#[derive(Clone)]
pub struct StateReader(Arc<RwLock<AgentState>>);

/// The spool writer thread's handle: the spool's own fields of `AgentSelf`, nothing else.
#[derive(Clone)]
pub struct SpoolFields(Arc<RwLock<AgentState>>);

/// The state locked for the loop's changes.
pub struct StateWrite<'a>(RwLockWriteGuard<'a, AgentState>);

/// The state locked for one API answer.
pub struct StateRead<'a>(RwLockReadGuard<'a, AgentState>);

impl StateWriter {
    pub fn new(identity: pb::HostIdentity, interval_secs: f64) -> Self {
        Self(Arc::new(RwLock::new(AgentState::new(
            identity,
            interval_secs,
        ))))
    }

    pub fn reader(&self) -> StateReader {
        StateReader(self.0.clone())
    }

    pub fn spool_fields(&self) -> SpoolFields {
        SpoolFields(self.0.clone())
    }

    pub fn write(&self) -> StateWrite<'_> {
        StateWrite(self.0.write().unwrap_or_else(PoisonError::into_inner))
    }

    /// Someone follows the live events (the loop then drains on its short clock).
    pub fn has_followers(&self) -> bool {
        self.reader().read().0.live.receiver_count() > 0
    }

    /// Signalled when someone starts following.
    pub fn follower_joined(&self) -> Arc<tokio::sync::Notify> {
        self.reader().read().0.follower_joined.clone()
    }
}

impl StateWrite<'_> {
    /// A reloaded interval (windows and the health check count in intervals).
    pub fn set_interval(&mut self, secs: f64) {
        self.0.interval_secs = secs;
    }

    /// The interval's sample and its syscall latency.
    pub fn publish_sample(
        &mut self,
        identity: pb::HostIdentity,
        metrics: pb::HostMetrics,
        latency: &BTreeMap<u32, LatencyHistogram>,
    ) {
        self.0.identity = identity;
        self.0.latest = Some(metrics);
        self.0.published = std::time::Instant::now();
        self.0.push_latency(latency);
    }

    /// An interval's batch, as history keeps it.
    pub fn push_history(&mut self, batch: &pb::Batch) {
        use prost::Message as _;
        let st = &mut *self.0;
        let (b, trimmed) = batch.for_history();
        st.history_trimmed += trimmed;
        st.history_bytes += b.encoded_len();
        st.history.push_back(b);
        while st.history.len() > HISTORY_INTERVALS
            || (st.history_bytes > HISTORY_BYTES && st.history.len() > 1)
        {
            if let Some(old) = st.history.pop_front() {
                st.history_bytes = st.history_bytes.saturating_sub(old.encoded_len());
            }
        }
    }

    /// The eBPF programs' run time and count, read at the interval's end.
    pub fn publish_bpf_stats(&mut self, stats: Vec<(String, std::time::Duration, u64)>) {
        self.0.totals.bpf_programs = stats;
    }

    /// A retransmit, slow syscall or finding: into the recent lists and to followers.
    pub fn push_event(&mut self, event: pb::live_event::Event) {
        self.0.push_event(event);
    }

    /// Whether finding `f` may be kept under the per-user, per-rule rate (counted in
    /// `findings_rate_limited` when not).
    pub fn admit_finding(&mut self, f: &pb::Finding) -> bool {
        let st = &mut *self.0;
        let admitted = st.finding_rate.admit(f);
        st.agent.findings_rate_limited = st.finding_rate.limited;
        admitted
    }

    pub fn publish_sli_totals(&mut self, totals: BTreeMap<String, (u64, u64)>) {
        self.0.sli_totals = totals;
    }

    pub fn publish_collector_silent(&mut self, secs: f64) {
        self.0.collector_silent_secs = secs;
    }

    /// The alert engine's active alerts and recent changes.
    pub fn publish_alerts(&mut self, alerts: pb::AlertsResponse) {
        self.0.alerts = alerts;
    }

    /// The agent's own counters (`vigil stats --json` `agent`).
    pub fn agent_self(&mut self) -> &mut pb::AgentSelf {
        &mut self.0.agent
    }
}

impl StateReader {
    pub fn read(&self) -> StateRead<'_> {
        StateRead(self.0.read().unwrap_or_else(PoisonError::into_inner))
    }
}

impl StateRead<'_> {
    /// Whether the loop published an interval within three intervals (plus 10 s for
    /// a slow sample): the health check's answer.
    pub fn loop_alive(&self) -> bool {
        let allowed =
            std::time::Duration::from_secs_f64((self.0.interval_secs * 3.0).min(86_400.0))
                + std::time::Duration::from_secs(10);
        self.0.published.elapsed() <= allowed
    }

    pub fn identity(&self) -> &pb::HostIdentity {
        &self.0.identity
    }

    /// The latest sample; `None` before the first interval ends.
    /// Intervals in (since, until] (oldest first), as `History` answers them.
    pub fn history(&self, since: i64, until: i64, limit: u32) -> pb::HistoryResponse {
        let (intervals, next) =
            vigil_proto::history_page(self.0.history.iter(), since, until, limit);
        pb::HistoryResponse {
            intervals,
            next_since_unix_ms: next,
            oldest_unix_ms: self.0.history.front().map_or(0, |b| b.start_unix_ms),
            trimmed: self.0.history_trimmed,
            host: Some(self.0.identity.clone()),
        }
    }

    pub fn latest(&self) -> Option<&pb::HostMetrics> {
        self.0.latest.as_ref()
    }

    pub fn agent_self(&self) -> &pb::AgentSelf {
        &self.0.agent
    }

    pub fn sli_totals(&self) -> &BTreeMap<String, (u64, u64)> {
        &self.0.sli_totals
    }

    pub fn collector_silent_secs(&self) -> f64 {
        self.0.collector_silent_secs
    }

    /// Alerts active now and the recent changes.
    pub fn alerts(&self) -> &pb::AlertsResponse {
        &self.0.alerts
    }

    /// Syscall latency over the last `window_secs` (at least one interval), merged,
    /// and the seconds it really covers (less than asked when less history is kept).
    pub fn latency_over(&self, window_secs: f64) -> (BTreeMap<u32, LatencyHistogram>, f64) {
        self.0.latency_over(window_secs)
    }

    /// The newest `limit` retransmits, oldest first.
    pub fn retransmits(&self, limit: usize) -> impl Iterator<Item = &pb::TcpRetransmit> {
        let r = &self.0.retransmits;
        r.iter().skip(r.len().saturating_sub(limit))
    }

    /// Findings kept, each with its number since the agent started, from number `from`.
    pub fn findings_from(&self, from: u64) -> impl Iterator<Item = (u64, &pb::Finding)> {
        let forgotten = self.0.findings_forgotten;
        let skip = usize::try_from(from.saturating_sub(forgotten)).unwrap_or(usize::MAX);
        self.0
            .findings
            .iter()
            .enumerate()
            .skip(skip)
            .map(move |(i, f)| (forgotten + i as u64, f))
    }

    /// Counters since the agent started.
    pub fn totals(&self) -> &Totals {
        &self.0.totals
    }

    pub fn interval_secs(&self) -> f64 {
        self.0.interval_secs
    }

    /// Findings pushed out of the recent list by newer ones.
    pub fn findings_forgotten(&self) -> u64 {
        self.0.findings_forgotten
    }

    /// Live events from now on (and tells the loop someone follows).
    pub fn subscribe(&self) -> broadcast::Receiver<pb::live_event::Event> {
        self.0.follower_joined.notify_one();
        self.0.live.subscribe()
    }
}

impl SpoolFields {
    /// The spool's state after the writer thread appended, acked or dropped.
    pub fn publish(&self, snap: &crate::spool::writer::Snapshot) {
        let mut st = self.0.write().unwrap_or_else(PoisonError::into_inner);
        let a = &mut st.agent;
        a.epoch = snap.epoch.high();
        a.epoch_low = snap.epoch.low();
        a.last_sequence = snap.last_sequence;
        a.spool_bytes = snap.stats.bytes;
        a.spool_unacked = snap.stats.unacked;
        a.spool_dropped_batches = snap.stats.dropped_batches;
        a.spool_corrupt_records = snap.stats.corrupt_records;
        a.spool_state_rebuilt = snap.stats.state_rebuilt;
        a.losses = Some(snap.total_losses);
    }
}

/// At most this many findings of one rule for one user per minute; more are counted
/// (`findings_rate_limited`), logged once a minute, and not kept.
pub const FINDINGS_PER_USER_RULE_PER_MINUTE: u32 = 100;

#[derive(Debug, Default)]
pub struct FindingRate {
    window_start: Option<std::time::Instant>,
    counts: std::collections::HashMap<(u32, String), u32>,
    /// Findings not kept since the agent started.
    pub limited: u64,
    limited_in_window: u64,
}

impl FindingRate {
    /// Whether `f` may be kept (and counts it).
    pub fn admit(&mut self, f: &pb::Finding) -> bool {
        let now = std::time::Instant::now();
        if self
            .window_start
            .is_none_or(|t| now.duration_since(t) >= std::time::Duration::from_secs(60))
        {
            if self.limited_in_window > 0 {
                tracing::warn!(
                    limited = self.limited_in_window,
                    "findings over the per-user rate were counted and not kept"
                );
            }
            self.window_start = Some(now);
            self.counts.clear();
            self.limited_in_window = 0;
        }
        let uid = f.process.as_ref().map_or(u32::MAX, |p| p.uid);
        // A bounded map: one key per user and rule seen this minute.
        if self.counts.len() >= 65_536 && !self.counts.contains_key(&(uid, f.rule.clone())) {
            self.limited += 1;
            self.limited_in_window += 1;
            return false;
        }
        let n = self.counts.entry((uid, f.rule.clone())).or_insert(0);
        if *n >= FINDINGS_PER_USER_RULE_PER_MINUTE {
            self.limited += 1;
            self.limited_in_window += 1;
            return false;
        }
        *n += 1;
        true
    }
}

impl AgentState {
    fn new(identity: pb::HostIdentity, interval_secs: f64) -> Self {
        Self {
            identity,
            latest: None,
            interval_secs,
            published: std::time::Instant::now(),
            latency: VecDeque::new(),
            older_latency: VecDeque::new(),
            retransmits: VecDeque::new(),
            history: VecDeque::new(),
            history_bytes: 0,
            history_trimmed: 0,
            findings: VecDeque::new(),
            findings_forgotten: 0,
            live: broadcast::channel(FOLLOW_BUFFER).0,
            alerts: Default::default(),
            collector_silent_secs: 0.0,
            sli_totals: BTreeMap::new(),
            agent: Default::default(),
            follower_joined: Default::default(),
            finding_rate: Default::default(),
            totals: Totals::default(),
        }
    }

    fn push_latency(&mut self, delta: &BTreeMap<u32, LatencyHistogram>) {
        for (nr, h) in delta {
            self.totals.latency.entry(*nr).or_default().merge(h);
        }
        if self.latency.len() >= RECENT_INTERVALS + GROUP {
            let mut merged: BTreeMap<u32, LatencyHistogram> = BTreeMap::new();
            for interval in self.latency.drain(..GROUP) {
                for (nr, h) in interval {
                    h.merge_into(merged.entry(nr).or_default());
                }
            }
            if self.older_latency.len() >= OLDER_GROUPS {
                self.older_latency.pop_front();
            }
            self.older_latency
                .push_back(merged.iter().map(|(nr, h)| (*nr, h.into())).collect());
        }
        self.latency
            .push_back(delta.iter().map(|(nr, h)| (*nr, h.into())).collect());
    }

    fn push_event(&mut self, event: pb::live_event::Event) {
        if let pb::live_event::Event::Retransmit(r) = &event {
            if self.retransmits.len() >= RECENT_RETRANSMITS {
                self.retransmits.pop_front();
            }
            self.retransmits.push_back(r.clone());
            let t = &mut self.totals;
            if r.err != 0 {
                // Attempted, not sent (the kernel's RetransSegs does not count it).
                t.retransmit_failures += 1;
            } else if let Some(n) = t.retransmits.get_mut(&r.daddr) {
                *n += 1;
            } else if t.retransmits.len() < RETRANSMIT_PEERS {
                t.retransmits.insert(r.daddr.clone(), 1);
            } else {
                t.retransmits_other += 1;
            }
        }
        if let pb::live_event::Event::Finding(f) = &event {
            if self.findings.len() >= RECENT_FINDINGS {
                self.findings.pop_front();
                self.findings_forgotten += 1;
            }
            self.findings.push_back(f.clone());
            *self
                .totals
                .findings
                .entry((f.rule.clone(), f.severity.clone()))
                .or_default() += 1;
        }
        // No followers is fine: the event is simply not streamed.
        let _ = self.live.send(event);
    }

    /// Syscall latency over the last `window_secs` (at least one interval), merged,
    /// and the seconds the intervals merged cover.
    fn latency_over(&self, window_secs: f64) -> (BTreeMap<u32, LatencyHistogram>, f64) {
        let n = ((window_secs / self.interval_secs.max(0.001)).ceil() as usize).max(1);
        let mut out: BTreeMap<u32, LatencyHistogram> = BTreeMap::new();
        let recent: Vec<_> = self.latency.iter().rev().take(n).collect();
        // Beyond the recent intervals, whole groups: the window is rounded up to a group.
        let older_n = n.saturating_sub(self.latency.len()).div_ceil(GROUP);
        let older: Vec<_> = self.older_latency.iter().rev().take(older_n).collect();
        let covered = (recent.len() + older.len() * GROUP) as f64 * self.interval_secs;
        for delta in recent.into_iter().chain(older) {
            for (nr, h) in delta {
                h.merge_into(out.entry(*nr).or_default());
            }
        }
        (out, covered)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn one_call(nr: u32) -> BTreeMap<u32, LatencyHistogram> {
        let mut h = LatencyHistogram {
            count: 1,
            total_ns: 1000,
            max_ns: 1000,
            ..Default::default()
        };
        h.buckets[vigil_common::latency_bucket(1000) as usize] = 1;
        BTreeMap::from([(nr, h)])
    }

    #[test]
    fn one_user_flooding_one_rule_leaves_room_for_the_rest() {
        let mut r = FindingRate::default();
        let f = |uid, rule: &str| pb::Finding {
            rule: rule.into(),
            process: Some(pb::Process {
                uid,
                ..Default::default()
            }),
            ..Default::default()
        };
        let kept = (0..1000)
            .filter(|_| r.admit(&f(1000, "exec-from-temp-dir")))
            .count();
        assert_eq!(kept as u32, FINDINGS_PER_USER_RULE_PER_MINUTE);
        assert_eq!(r.limited, 1000 - kept as u64);
        assert!(r.admit(&f(0, "exec-from-temp-dir")), "another user");
        assert!(r.admit(&f(1000, "ptrace-attach")), "another rule");
    }

    #[test]
    fn history_keeps_360_intervals_in_bounded_memory() {
        let mut st = AgentState::new(Default::default(), 10.0);
        for _ in 0..1000 {
            st.push_latency(&one_call(39));
        }
        assert!(st.latency.len() <= RECENT_INTERVALS + GROUP);
        assert_eq!(st.older_latency.len(), OLDER_GROUPS);
        // One call per interval: a window counts the intervals it covers.
        assert_eq!(st.latency_over(10.0).0[&39].count, 1);
        assert_eq!(st.latency_over(10.0).1, 10.0);
        assert_eq!(st.latency_over(600.0).0[&39].count, 60);
        let hour = st.latency_over(3600.0).0[&39].count;
        assert!((360..=370).contains(&hour), "{hour}");
        let (all, covered) = st.latency_over(1e9);
        assert_eq!(all[&39].count, st.latency.len() as u64 + 300);
        // A window longer than the history kept says what it covers.
        assert_eq!(covered, (st.latency.len() as u64 + 300) as f64 * 10.0);
    }
}
