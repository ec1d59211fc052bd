//! The spool as the agent loop and the exporter share it, and its writer thread: every
//! append (and its fsync), reconfiguration and flush happens on that thread, fed by a
//! bounded queue, so the agent's event loop (and with it the API, live followers and
//! acks) never waits on the disk. The exporter reads and acks through
//! `spawn_blocking`; the loop reads only `snapshot()`, which no I/O ever holds.
//!
//! When the queue is full (the disk is that slow: WRITE_QUEUE intervals behind), the
//! new batch is dropped and counted (`pipeline_dropped`), its losses carried by the
//! next one: the loop keeps running rather than waiting.
use std::sync::{
    atomic::{AtomicU64, Ordering},
    Arc, Mutex,
};

use tokio::sync::{mpsc, oneshot, Notify};
use vigil_proto::{v1 as pb, Epoch};

use super::{Spool, SpoolStats};
use crate::config::SpoolConfig;

/// Batches waiting for the writer thread at most.
pub const WRITE_QUEUE: usize = 64;

/// What the agent loop may read about the spool without touching it.
#[derive(Clone, Debug)]
pub struct Snapshot {
    pub stats: SpoolStats,
    pub epoch: Epoch,
    pub last_sequence: u64,
    /// Losses reported by every batch the spool took (cumulative since start).
    pub total_losses: pb::Losses,
}

/// The spool, shared by the writer thread (appending) and the exporter (reading,
/// acking), and its last published snapshot.
pub struct SharedSpool {
    spool: Mutex<Spool>,
    /// Signalled after each append.
    pub appended: Notify,
    snapshot: Mutex<Snapshot>,
    /// Batches the spool could not take (a disk error): dropped, counted.
    pub write_failed: AtomicU64,
    pub fsync_failed: AtomicU64,
    /// Told of every published snapshot (the agent keeps its API's view fresh).
    listener: Mutex<Option<Listener>>,
}

type Listener = Box<dyn Fn(&Snapshot) + Send>;

impl SharedSpool {
    pub fn new(spool: Spool) -> Arc<Self> {
        let snapshot = Snapshot {
            stats: spool.stats(),
            epoch: spool.epoch(),
            last_sequence: spool.last_sequence(),
            total_losses: pb::Losses::default(),
        };
        Arc::new(Self {
            spool: Mutex::new(spool),
            appended: Notify::new(),
            snapshot: Mutex::new(snapshot),
            write_failed: AtomicU64::new(0),
            fsync_failed: AtomicU64::new(0),
            listener: Mutex::new(None),
        })
    }

    /// The spool, even if a panic elsewhere poisoned the lock (its state stays valid:
    /// every method leaves it consistent before returning). It may wait on disk I/O:
    /// never call it on the event loop.
    pub fn lock(&self) -> std::sync::MutexGuard<'_, Spool> {
        self.spool.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The last published state (cheap, never waits on I/O).
    pub fn snapshot(&self) -> Snapshot {
        self.snapshot
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Calls `f` with every snapshot published from now on.
    pub fn on_publish(&self, f: impl Fn(&Snapshot) + Send + 'static) {
        *self.listener.lock().unwrap_or_else(|e| e.into_inner()) = Some(Box::new(f));
    }

    /// Publishes `spool`'s state (call with the spool locked, after a change).
    pub fn publish(&self, spool: &Spool) {
        let snapshot = {
            let mut s = self.snapshot.lock().unwrap_or_else(|e| e.into_inner());
            s.stats = spool.stats();
            s.epoch = spool.epoch();
            s.last_sequence = spool.last_sequence();
            s.clone()
        };
        // Not under the snapshot's lock: the listener takes the API state's.
        if let Some(f) = self
            .listener
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .as_ref()
        {
            f(&snapshot);
        }
    }

    fn add_total(&self, losses: &pb::Losses) {
        let mut s = self.snapshot.lock().unwrap_or_else(|e| e.into_inner());
        s.total_losses.add(losses);
    }
}

enum Op {
    Append(Box<pb::Batch>),
    Reconfigure(SpoolConfig),
    /// Everything queued before it written, then an fsync.
    Flush(oneshot::Sender<()>),
}

/// The handle to the writer thread. Dropping it lets the thread finish what is
/// queued and end.
pub struct SpoolWriter {
    tx: mpsc::Sender<Op>,
}

impl SpoolWriter {
    pub fn start(shared: Arc<SharedSpool>) -> std::io::Result<Self> {
        let (tx, rx) = mpsc::channel(WRITE_QUEUE);
        std::thread::Builder::new()
            .name("vigil-spool".into())
            .spawn(move || run(&shared, rx))?;
        Ok(Self { tx })
    }

    /// Queues `batch` (the spool numbers it). Err gives it back when the queue is full
    /// or the thread is gone: the caller drops and counts it.
    pub fn append(&self, batch: pb::Batch) -> Result<(), Box<pb::Batch>> {
        self.tx
            .try_send(Op::Append(Box::new(batch)))
            .map_err(|e| match e.into_inner() {
                Op::Append(b) => b,
                Op::Reconfigure(_) | Op::Flush(_) => Box::default(),
            })
    }

    /// Queues a new configuration; if the queue is full it is queued by a task as
    /// soon as there is room (the loop does not wait).
    pub fn reconfigure(&self, config: SpoolConfig) {
        if let Err(mpsc::error::TrySendError::Full(op)) = self.tx.try_send(Op::Reconfigure(config))
        {
            let tx = self.tx.clone();
            tokio::spawn(async move {
                let _ = tx.send(op).await;
            });
        }
    }

    /// Waits until everything queued so far is written and fsynced.
    pub async fn flush(&self) {
        let (done, wait) = oneshot::channel();
        if self.tx.send(Op::Flush(done)).await.is_ok() {
            let _ = wait.await;
        }
    }
}

fn run(shared: &SharedSpool, mut rx: mpsc::Receiver<Op>) {
    // Losses of a batch that could not be written, for the next one to report.
    let mut carried = pb::Losses::default();
    while let Some(op) = rx.blocking_recv() {
        let mut sp = shared.lock();
        match op {
            Op::Append(mut batch) => {
                // The spool's own losses (drops for its bound, damaged records) ride
                // along, and whatever a failed write left behind.
                let spooled = sp.take_losses();
                let losses = batch.losses.get_or_insert_with(Default::default);
                losses.add(&spooled);
                losses.add(&std::mem::take(&mut carried));
                let losses = *losses;
                match sp.append(&mut batch) {
                    Ok(_) => {
                        shared.add_total(&losses);
                        shared.appended.notify_one();
                    }
                    Err(e) => {
                        shared.write_failed.fetch_add(1, Ordering::Relaxed);
                        carried = losses;
                        carried.pipeline_dropped += 1;
                        tracing::error!(error = %e, sequence = batch.sequence, "spool write failed; batch dropped and counted");
                    }
                }
            }
            Op::Reconfigure(config) => sp.reconfigure(config),
            Op::Flush(done) => {
                if let Err(e) = sp.maybe_fsync(true) {
                    shared.fsync_failed.fetch_add(1, Ordering::Relaxed);
                    tracing::error!("spool fsync failed: {e}");
                }
                let _ = done.send(());
            }
        }
        shared.publish(&sp);
    }
}
