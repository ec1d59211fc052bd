//! What the agent knows right now, shared between its loop (writer) and the local
//! query API (readers). Everything here is bounded.
use std::collections::{BTreeMap, VecDeque};

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
/// Retransmits kept for `Retransmits`.
pub const RECENT_RETRANSMITS: usize = 1000;
/// Findings kept for `vigil events --since` (newest); older ones are forgotten, and
/// counted.
pub const RECENT_FINDINGS: usize = 10_000;
/// Live events buffered per follower; a follower that falls further behind is told
/// how many it missed.
pub const FOLLOW_BUFFER: usize = 4096;

pub struct AgentState {
    pub identity: pb::HostIdentity,
    pub latest: Option<pb::HostMetrics>,
    pub interval_secs: f64,
    /// Per-interval syscall latency, newest last.
    pub latency: VecDeque<Vec<(u32, CompactHistogram)>>,
    /// Older history, GROUP intervals per entry, newest last.
    pub older_latency: VecDeque<Vec<(u32, CompactHistogram)>>,
    pub retransmits: VecDeque<pb::TcpRetransmit>,
    pub findings: VecDeque<pb::Finding>,
    /// Findings pushed out of `findings` by newer ones.
    pub findings_forgotten: u64,
    pub live: broadcast::Sender<pb::live_event::Event>,
    /// The agent's own delivery state, as of the last interval.
    pub agent: pb::AgentSelf,
    /// Signalled when someone starts following live events.
    pub follower_joined: std::sync::Arc<tokio::sync::Notify>,
    /// Findings per user and rule per minute (a local user flooding one rule cannot
    /// push everyone else's findings out of the recent list or the batches).
    pub finding_rate: FindingRate,
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
    pub fn new(identity: pb::HostIdentity, interval_secs: f64) -> Self {
        Self {
            identity,
            latest: None,
            interval_secs,
            latency: VecDeque::new(),
            older_latency: VecDeque::new(),
            retransmits: VecDeque::new(),
            findings: VecDeque::new(),
            findings_forgotten: 0,
            live: broadcast::channel(FOLLOW_BUFFER).0,
            agent: Default::default(),
            follower_joined: Default::default(),
            finding_rate: Default::default(),
        }
    }

    pub fn push_latency(&mut self, delta: &BTreeMap<u32, LatencyHistogram>) {
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

    pub fn push_event(&mut self, event: pb::live_event::Event) {
        if let pb::live_event::Event::Retransmit(r) = &event {
            if self.retransmits.len() >= RECENT_RETRANSMITS {
                self.retransmits.pop_front();
            }
            self.retransmits.push_back(r.clone());
        }
        if let pb::live_event::Event::Finding(f) = &event {
            if self.findings.len() >= RECENT_FINDINGS {
                self.findings.pop_front();
                self.findings_forgotten += 1;
            }
            self.findings.push_back(f.clone());
        }
        // No followers is fine: the event is simply not streamed.
        let _ = self.live.send(event);
    }

    /// Syscall latency over the last `window_secs` (at least one interval), merged.
    pub fn latency_over(&self, window_secs: f64) -> BTreeMap<u32, LatencyHistogram> {
        let n = ((window_secs / self.interval_secs.max(0.001)).ceil() as usize).max(1);
        let mut out: BTreeMap<u32, LatencyHistogram> = BTreeMap::new();
        let recent = self.latency.iter().rev().take(n);
        // Beyond the recent intervals, whole groups: the window is rounded up to a group.
        let older_n = n.saturating_sub(self.latency.len()).div_ceil(GROUP);
        let older = self.older_latency.iter().rev().take(older_n);
        for delta in recent.chain(older) {
            for (nr, h) in delta {
                h.merge_into(out.entry(*nr).or_default());
            }
        }
        out
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
        assert_eq!(st.latency_over(10.0)[&39].count, 1);
        assert_eq!(st.latency_over(600.0)[&39].count, 60);
        let hour = st.latency_over(3600.0)[&39].count;
        assert!((360..=370).contains(&hour), "{hour}");
        assert_eq!(
            st.latency_over(1e9)[&39].count,
            st.latency.len() as u64 + 300
        );
    }
}
