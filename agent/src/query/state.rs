//! What the agent knows right now, shared between its loop (writer) and the local
//! query API (readers). Everything here is bounded.
use std::collections::{BTreeMap, VecDeque};

use tokio::sync::broadcast;
use vigil_proto::v1 as pb;

use crate::histogram::LatencyHistogram;

/// Intervals of syscall latency kept for `SyscallLatency` windows.
pub const LATENCY_INTERVALS: usize = 360;
/// Retransmits kept for `Retransmits`.
pub const RECENT_RETRANSMITS: usize = 1000;
/// Live events buffered per follower; a follower that falls further behind is told
/// how many it missed.
pub const FOLLOW_BUFFER: usize = 4096;

pub struct AgentState {
    pub identity: pb::HostIdentity,
    pub latest: Option<pb::HostMetrics>,
    pub interval_secs: f64,
    /// Per-interval syscall latency, newest last.
    pub latency: VecDeque<BTreeMap<u32, LatencyHistogram>>,
    pub retransmits: VecDeque<pb::TcpRetransmit>,
    pub live: broadcast::Sender<pb::live_event::Event>,
    /// The agent's own delivery state, as of the last interval.
    pub agent: pb::AgentSelf,
    /// Signalled when someone starts following live events.
    pub follower_joined: std::sync::Arc<tokio::sync::Notify>,
}

impl AgentState {
    pub fn new(identity: pb::HostIdentity, interval_secs: f64) -> Self {
        Self {
            identity,
            latest: None,
            interval_secs,
            latency: VecDeque::new(),
            retransmits: VecDeque::new(),
            live: broadcast::channel(FOLLOW_BUFFER).0,
            agent: Default::default(),
            follower_joined: Default::default(),
        }
    }

    pub fn push_latency(&mut self, delta: BTreeMap<u32, LatencyHistogram>) {
        if self.latency.len() >= LATENCY_INTERVALS {
            self.latency.pop_front();
        }
        self.latency.push_back(delta);
    }

    pub fn push_event(&mut self, event: pb::live_event::Event) {
        if let pb::live_event::Event::Retransmit(r) = &event {
            if self.retransmits.len() >= RECENT_RETRANSMITS {
                self.retransmits.pop_front();
            }
            self.retransmits.push_back(r.clone());
        }
        // No followers is fine: the event is simply not streamed.
        let _ = self.live.send(event);
    }

    /// Syscall latency over the last `window_secs` (at least one interval), merged.
    pub fn latency_over(&self, window_secs: f64) -> BTreeMap<u32, LatencyHistogram> {
        let n = ((window_secs / self.interval_secs.max(0.001)).ceil() as usize).max(1);
        let mut out: BTreeMap<u32, LatencyHistogram> = BTreeMap::new();
        for delta in self.latency.iter().rev().take(n) {
            for (nr, h) in delta {
                out.entry(*nr).or_default().merge(h);
            }
        }
        out
    }
}
