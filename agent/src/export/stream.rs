//! Streaming batches to the collector: at-least-once, in order, acked.
//!
//! Batches wait in a bounded in-memory queue until the collector acks them; on
//! reconnect the unacked ones are sent again first (the collector drops duplicates).
//! When the queue is full the oldest batch is dropped and counted (the disk spool of a
//! later stage removes that loss).
use std::{
    collections::VecDeque,
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc,
    },
    time::Duration,
};

use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use vigil_proto::v1::{collector_client::CollectorClient, Batch};

/// Unacked batches kept in memory at most.
pub const UNACKED_LIMIT: usize = 1024;

/// Counters the agent reports about its own export.
#[derive(Debug, Default)]
pub struct ExportStats {
    pub sent: AtomicU64,
    pub acked: AtomicU64,
    /// Batches dropped because the unacked queue was full.
    pub dropped: AtomicU64,
    pub reconnects: AtomicU64,
}

/// Backoff between reconnects: doubling from 200 ms to 10 s, with jitter so that a
/// fleet doesn't reconnect in lockstep.
fn backoff(attempt: u32) -> Duration {
    let base = 200u64.saturating_mul(1 << attempt.min(6)).min(10_000);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos());
    Duration::from_millis(base / 2 + u64::from(nanos) % (base / 2 + 1))
}

/// Sends batches from `rx` to the collector at `addr` until `rx` closes and
/// everything is acked (or `drain_deadline` passes after it closed).
pub async fn run(
    addr: String,
    mut rx: mpsc::Receiver<Batch>,
    stats: Arc<ExportStats>,
    drain_deadline: Duration,
) {
    let url = if addr.contains("://") {
        addr
    } else {
        format!("http://{addr}")
    };
    let mut unacked: VecDeque<Batch> = VecDeque::new();
    let mut input_open = true;
    let mut closed_at: Option<tokio::time::Instant> = None;
    let mut attempt = 0u32;
    loop {
        if !input_open && unacked.is_empty() {
            return;
        }
        if let Some(t) = closed_at {
            if t.elapsed() > drain_deadline {
                tracing::warn!(
                    unacked = unacked.len(),
                    "stopping with batches the collector has not acked"
                );
                return;
            }
        }
        let mut client = match CollectorClient::connect(url.clone()).await {
            Ok(c) => c,
            Err(e) => {
                tracing::warn!(collector = %url, error = %e, "collector unreachable; retrying");
                stats.reconnects.fetch_add(1, Ordering::Relaxed);
                // Keep taking new batches while waiting, so the agent never blocks.
                let wait = tokio::time::sleep(backoff(attempt));
                tokio::pin!(wait);
                loop {
                    tokio::select! {
                        () = &mut wait => break,
                        b = rx.recv(), if input_open => match b {
                            Some(b) => push(&mut unacked, b, &stats),
                            None => { input_open = false; closed_at.get_or_insert_with(tokio::time::Instant::now); }
                        },
                    }
                }
                attempt += 1;
                continue;
            }
        };
        let (tx, requests) = mpsc::channel::<Batch>(64);
        let mut acks = match client.stream(ReceiverStream::new(requests)).await {
            Ok(r) => r.into_inner(),
            Err(status) => {
                tracing::warn!(%status, "collector refused the stream; retrying");
                tokio::time::sleep(backoff(attempt)).await;
                attempt += 1;
                continue;
            }
        };
        // Replay what was never acked, oldest first.
        let mut ok = true;
        for b in unacked.iter() {
            if tx.send(b.clone()).await.is_err() {
                ok = false;
                break;
            }
            stats.sent.fetch_add(1, Ordering::Relaxed);
        }
        while ok {
            if !input_open && unacked.is_empty() {
                return;
            }
            tokio::select! {
                b = rx.recv(), if input_open => match b {
                    Some(b) => {
                        push(&mut unacked, b.clone(), &stats);
                        if tx.send(b).await.is_err() { ok = false; } else { stats.sent.fetch_add(1, Ordering::Relaxed); }
                    }
                    None => { input_open = false; closed_at.get_or_insert_with(tokio::time::Instant::now); }
                },
                ack = acks.message() => match ack {
                    Ok(Some(ack)) => {
                        attempt = 0;
                        stats.acked.fetch_add(1, Ordering::Relaxed);
                        unacked.retain(|b| !(b.epoch == ack.epoch && b.sequence == ack.sequence));
                    }
                    Ok(None) => ok = false,
                    Err(status) => { tracing::warn!(%status, "collector stream failed; reconnecting"); ok = false; }
                },
                () = tokio::time::sleep(Duration::from_millis(200)), if closed_at.is_some_and(|t| t.elapsed() > drain_deadline) => {
                    tracing::warn!(unacked = unacked.len(), "stopping with batches the collector has not acked");
                    return;
                }
            }
        }
        stats.reconnects.fetch_add(1, Ordering::Relaxed);
        tokio::time::sleep(backoff(attempt)).await;
        attempt += 1;
    }
}

fn push(unacked: &mut VecDeque<Batch>, b: Batch, stats: &ExportStats) {
    if unacked.len() >= UNACKED_LIMIT {
        unacked.pop_front();
        stats.dropped.fetch_add(1, Ordering::Relaxed);
    }
    unacked.push_back(b);
}
