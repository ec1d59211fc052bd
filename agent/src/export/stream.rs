//! Streaming batches from the spool to the collector: at-least-once, in order, acked.
//!
//! The agent loop appends each batch to the spool (`crate::spool`); this task sends
//! what the collector hasn't acked, oldest first, with at most `IN_FLIGHT` batches on
//! the wire, and marks each ack in the spool. A slow collector therefore slows the
//! sending, never the agent's memory: what waits, waits on disk. On reconnect every
//! unacked batch is sent again (the collector drops and counts duplicates).
use std::{
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc,
    },
    time::Duration,
};

use tokio::{
    sync::{mpsc, watch},
    time::Instant,
};
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::{Channel, Endpoint};
use vigil_proto::v1::{collector_client::CollectorClient, Batch};
use vigil_tls::{client::Connector, Kind, Mode, Reloading, Role, TlsSection};

pub use crate::spool::writer::SharedSpool;
use crate::spool::{Spool, SpoolError};

/// Batches sent and not yet acked, at most. The rest wait in the spool.
pub const IN_FLIGHT: usize = 32;

/// Counters the agent reports about its own export.
#[derive(Debug, Default)]
pub struct ExportStats {
    pub sent: AtomicU64,
    pub acked: AtomicU64,
    /// Acks that said the collector already had the batch.
    pub duplicates: AtomicU64,
    pub reconnects: AtomicU64,
    /// Batches the collector refused (invalid, or too far ahead): set aside.
    pub refused: AtomicU64,
    /// Batches the collector holds a different one of under the same name: set aside.
    pub conflicts: AtomicU64,
    /// Acks that could not be recorded in the spool (the batch is sent again later).
    pub ack_record_failed: AtomicU64,
    /// Spool state checkpoints that failed (acks since the last one are resent after a
    /// restart, and the collector counts them as duplicates).
    pub checkpoint_failed: AtomicU64,
    /// Streams ended with PERMISSION_DENIED.
    pub permission_denied: AtomicU64,
    /// The transport of the exporter running now.
    tls: std::sync::Mutex<Option<TransportState>>,
}

#[derive(Clone, Debug)]
enum TransportState {
    Plain,
    Tls(Arc<Reloading<rustls::ClientConfig>>),
}

impl ExportStats {
    /// "mtls", "off", or "" without an exporter.
    pub fn tls_mode(&self) -> String {
        match &*self.tls.lock().unwrap_or_else(|e| e.into_inner()) {
            None => String::new(),
            Some(TransportState::Plain) => "off".into(),
            Some(TransportState::Tls(_)) => "mtls".into(),
        }
    }

    pub fn tls_counter(&self, f: impl Fn(&Reloading<rustls::ClientConfig>) -> &AtomicU64) -> u64 {
        match &*self.tls.lock().unwrap_or_else(|e| e.into_inner()) {
            Some(TransportState::Tls(t)) => f(t).load(Ordering::Relaxed),
            _ => 0,
        }
    }
}

/// The agent id the client certificate names, if the TLS material loads and names one.
pub fn certificate_agent_id(tls: &TlsSection) -> Option<String> {
    if tls.mode == Mode::Off {
        return None;
    }
    let m = vigil_tls::Material::load(&tls.files(Role::Agent)).ok()?;
    m.identity
        .ok()
        .filter(|i| i.kind == Kind::Agent)
        .map(|i| i.name)
}

/// How to reach the collector: plaintext (warned about), or mutual TLS with the
/// agent's material, read again whenever its files change. Material that names
/// another agent is logged as an error each time it loads: the collector would refuse
/// every batch.
pub fn transport(
    addr: &str,
    tls: &TlsSection,
    agent_id: &str,
    stats: &ExportStats,
) -> Result<Connector, String> {
    if tls.mode == Mode::Off {
        tracing::warn!(collector = %addr,
            "TLS is off (tls.mode = \"off\"): batches go to the collector in plaintext, and anyone on the path can read or forge them");
        *stats.tls.lock().unwrap_or_else(|e| e.into_inner()) = Some(TransportState::Plain);
        return Connector::plain(addr).map_err(|e| e.to_string());
    }
    let id = agent_id.to_string();
    let files = tls.files(Role::Agent);
    let cert = files.cert.clone();
    let material = Reloading::new(files, "agent", move |m| {
        match &m.identity {
            Ok(i) if i.kind == Kind::Agent && i.name == id => {}
            Ok(i) => tracing::error!(certificate = %cert.display(), identity = %i,
                "the client certificate names {i}, not agent {id:?}: the collector will refuse this agent's batches \
                 (set agent_id to the certificate's, or issue one with `vigil certs issue --agent-id {id}`)"),
            Err(e) => tracing::error!(certificate = %cert.display(),
                "the client certificate names no agent ({e}): the collector will refuse this agent's batches"),
        }
        vigil_tls::material::client_config(m)
    });
    if let Err(e) = material.current() {
        tracing::error!(collector = %addr, error = %e,
            "no usable TLS material yet: batches are spooled, and sent once the files are good (checked every second)");
    }
    *stats.tls.lock().unwrap_or_else(|e| e.into_inner()) =
        Some(TransportState::Tls(material.clone()));
    Connector::tls(addr, tls.server_name.as_deref(), material).map_err(|e| e.to_string())
}

impl ExportStats {
    fn checkpoint(&self, spool: &mut Spool) {
        if let Err(e) = spool.checkpoint() {
            self.checkpoint_failed.fetch_add(1, Ordering::Relaxed);
            tracing::warn!(error = %e, "spool: writing the ack checkpoint failed");
        }
    }

    fn record_ack(&self, spool: &mut Spool, epoch: vigil_proto::Epoch, sequence: u64) {
        if let Err(e) = spool.ack(epoch, sequence) {
            self.ack_record_failed.fetch_add(1, Ordering::Relaxed);
            tracing::warn!(error = %e, sequence, "spool: recording an ack failed");
        }
    }
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

/// The agent's stop request: `None` while running; `Some(deadline)` once stopping.
pub type StopAt = watch::Receiver<Option<Instant>>;

enum Wake {
    Changed,
    Deadline,
}

/// Returns when the stop request changes, or when its deadline has passed.
async fn stop_wake(stop: &mut StopAt) -> Wake {
    let current = *stop.borrow_and_update();
    match current {
        Some(t) => {
            tokio::time::sleep_until(t).await;
            Wake::Deadline
        }
        None => match stop.changed().await {
            Ok(()) => Wake::Changed,
            // The agent is gone without a stop request: nothing will change again.
            Err(_) => std::future::pending().await,
        },
    }
}

fn finished(shared: &SharedSpool, stop: &StopAt) -> bool {
    match *stop.borrow() {
        Some(t) => Instant::now() >= t || shared.snapshot().stats.unacked == 0,
        None => false,
    }
}

fn endpoint(connector: &Connector) -> Result<Endpoint, tonic::transport::Error> {
    Ok(Endpoint::from_shared(connector.uri())?
        .connect_timeout(Duration::from_secs(5))
        // A collector behind a dead link is noticed within ~10 s, not at TCP's pace.
        .http2_keep_alive_interval(Duration::from_secs(5))
        .keep_alive_timeout(Duration::from_secs(5))
        .keep_alive_while_idle(true))
}

/// Sends the spool's unacked batches to the collector until stopped: once `stop`
/// holds a deadline, it returns when everything is acked or the deadline passes (what
/// is left stays in the spool for the next start).
///
/// `collectors` are tried in order: a collector that cannot be reached, or whose stream
/// breaks, hands over to the next at once (the spool resends whatever the last one did
/// not ack; a collector that had stored it acks it as a duplicate). Only after every
/// one has failed in a row does the agent back off before the next round.
pub async fn run(
    collectors: Vec<(String, Result<Connector, String>)>,
    shared: Arc<SharedSpool>,
    stats: Arc<ExportStats>,
    mut stop: StopAt,
) {
    let mut targets = Vec::new();
    for (addr, connector) in collectors {
        match connector
            .map_err(|e| e.to_string())
            .and_then(|c| endpoint(&c).map(|e| (c, e)).map_err(|e| e.to_string()))
        {
            Ok((c, e)) => targets.push((addr, c, e)),
            Err(e) => {
                tracing::error!(collector = %addr, error = %e, "bad collector address; not streaming to it");
            }
        }
    }
    if targets.is_empty() {
        return;
    }
    let mut current = 0usize;
    // Collectors that failed since the last one that took a batch.
    let mut failed_in_a_row = 0usize;
    let mut attempt = 0u32;
    loop {
        if finished(&shared, &stop) {
            return;
        }
        let (addr, connector, endpoint) = &targets[current];
        let connected = tokio::select! {
            c = endpoint.connect_with_connector(connector.clone()) => c,
            w = stop_wake(&mut stop) => match w { Wake::Deadline => return, Wake::Changed => continue },
        };
        let outcome = match connected {
            Ok(channel) => {
                let outcome = session(channel, &shared, &stats, &mut stop, &mut attempt).await;
                // Whatever was on the wire and is gone from the spool is decided now.
                let _ = on_spool(&shared, &stats, |sp, _| sp.stream_ended()).await;
                outcome
            }
            Err(e) => Err(format!(
                "collector unreachable: {}",
                crate::query::display::unreachable(&e)
            )),
        };
        match outcome {
            Ok(()) => return,
            Err(reason) if reason.contains(DENIED) => {
                stats.permission_denied.fetch_add(1, Ordering::Relaxed);
                tracing::error!(collector = %addr, %reason,
                    "the collector refuses this agent's identity; batches stay in the spool, retrying");
                stats.reconnects.fetch_add(1, Ordering::Relaxed);
            }
            Err(reason) => {
                tracing::warn!(collector = %addr, %reason, "reconnecting");
                stats.reconnects.fetch_add(1, Ordering::Relaxed);
            }
        }
        // The session resets `attempt` when the collector acks: it was working, so the
        // round of failures starts again.
        if attempt == 0 {
            failed_in_a_row = 0;
        }
        failed_in_a_row += 1;
        if targets.len() > 1 {
            current = (current + 1) % targets.len();
            tracing::warn!(from = %addr, to = %targets[current].0, "failing over to collector {}", targets[current].0);
            if failed_in_a_row < targets.len() {
                // Another collector may be up: no wait.
                attempt = attempt.max(1);
                continue;
            }
        }
        failed_in_a_row = 0;
        let wait = tokio::time::sleep(backoff(attempt));
        tokio::pin!(wait);
        attempt = attempt.saturating_add(1);
        loop {
            tokio::select! {
                () = &mut wait => break,
                w = stop_wake(&mut stop) => match w {
                    Wake::Deadline => return,
                    Wake::Changed if finished(&shared, &stop) => return,
                    Wake::Changed => {}
                },
            }
        }
    }
}

/// Marks a stream's end as a permission refusal (see [`status_text`]).
const DENIED: &str = "PERMISSION_DENIED";

/// A status as the log says it; a permission refusal is marked.
fn status_text(s: &tonic::Status) -> String {
    if s.code() == tonic::Code::PermissionDenied {
        format!("{DENIED}: {}", s.message())
    } else {
        crate::startup::status_words(s)
    }
}

/// A batch the collector refused for what it is (INVALID_ARGUMENT naming its
/// sequence) will be refused again: it is set aside and counted rather than resent
/// forever, which would stop everything behind it.
async fn set_aside_refused(status: &tonic::Status, shared: &Arc<SharedSpool>, stats: &ExportStats) {
    if status.code() != tonic::Code::InvalidArgument {
        return;
    }
    let Some(sequence) = status
        .metadata()
        .get(vigil_proto::REFUSED_SEQUENCE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok())
    else {
        return;
    };
    stats.refused.fetch_add(1, Ordering::Relaxed);
    tracing::error!(sequence, reason = %status.message(), "the collector refused a batch; set aside and counted");
    let shared = shared.clone();
    let _ = tokio::task::spawn_blocking(move || {
        let mut spool = shared.lock();
        let epoch = spool.epoch();
        if let Err(e) = spool.ack(epoch, sequence) {
            tracing::warn!(error = %e, "spool: setting a refused batch aside failed");
        }
        shared.publish(&spool);
    })
    .await;
}

/// One stream: sends from the oldest unacked batch on, with a window of IN_FLIGHT.
/// Ok when stopped, Err (with the reason) when the stream broke.
/// Runs `f` on the spool off the event loop (it may wait on the disk, or on the
/// writer thread's fsync), and publishes the spool's state after.
async fn on_spool<T: Send + 'static>(
    shared: &Arc<SharedSpool>,
    stats: &Arc<ExportStats>,
    f: impl FnOnce(&mut Spool, &ExportStats) -> T + Send + 'static,
) -> Result<T, String> {
    let (shared, stats) = (shared.clone(), stats.clone());
    tokio::task::spawn_blocking(move || {
        let mut spool = shared.lock();
        let out = f(&mut spool, &stats);
        shared.publish(&spool);
        out
    })
    .await
    .map_err(|e| format!("spool task failed: {e}"))
}

async fn session(
    channel: Channel,
    shared: &Arc<SharedSpool>,
    stats: &Arc<ExportStats>,
    stop: &mut StopAt,
    attempt: &mut u32,
) -> Result<(), String> {
    let mut client = CollectorClient::new(channel);
    let (tx, rx) = mpsc::channel::<Batch>(IN_FLIGHT);
    let mut acks = client
        .stream(ReceiverStream::new(rx))
        .await
        .map_err(|s| format!("collector refused the stream: {}", status_text(&s)))?
        .into_inner();
    let mut cursor = 0u64;
    let mut in_flight = 0usize;
    let mut checkpointed = Instant::now();
    loop {
        while in_flight < IN_FLIGHT {
            let next = on_spool(shared, stats, move |sp, _| {
                let next = sp.next_unacked(cursor);
                if let Ok(Some(b)) = &next {
                    sp.mark_sent(b.sequence);
                }
                next
            })
            .await?;
            match next {
                Ok(Some(b)) => {
                    cursor = b.sequence;
                    tx.send(b)
                        .await
                        .map_err(|_| "the stream closed".to_string())?;
                    in_flight += 1;
                    stats.sent.fetch_add(1, Ordering::Relaxed);
                }
                Ok(None) => break,
                Err(e @ SpoolError::Decode { .. }) => {
                    // Cannot happen for a checksummed record unless the code is wrong;
                    // skip it rather than resend it forever (it shows as a gap).
                    tracing::error!(error = %e, "unsendable spool record skipped");
                    if let SpoolError::Decode { sequence, .. } = e {
                        on_spool(shared, stats, move |sp, stats| {
                            let epoch = sp.epoch();
                            stats.record_ack(sp, epoch, sequence);
                        })
                        .await?;
                        cursor = sequence;
                    }
                }
                Err(e) => return Err(format!("reading the spool: {e}")),
            }
        }
        if finished(shared, stop) {
            on_spool(shared, stats, |sp, stats| stats.checkpoint(sp)).await?;
            return Ok(());
        }
        tokio::select! {
            ack = acks.message() => match ack {
                Ok(Some(ack)) => {
                    *attempt = 0;
                    in_flight = in_flight.saturating_sub(1);
                    stats.acked.fetch_add(1, Ordering::Relaxed);
                    if ack.duplicate {
                        stats.duplicates.fetch_add(1, Ordering::Relaxed);
                    }
                    if ack.conflict {
                        // Not delivered, and resending cannot deliver it: the
                        // collector has another batch under this name. Set aside,
                        // counted, said loudly.
                        stats.conflicts.fetch_add(1, Ordering::Relaxed);
                        tracing::error!(sequence = ack.sequence,
                            "the collector holds a different batch under this agent id, epoch and sequence \
                             (someone else is writing as this agent?): this batch is not delivered");
                    }
                    let checkpoint = checkpointed.elapsed() > Duration::from_secs(1);
                    if checkpoint {
                        checkpointed = Instant::now();
                    }
                    let (epoch, sequence) = (ack.spool_epoch(), ack.sequence);
                    on_spool(shared, stats, move |sp, stats| {
                        stats.record_ack(sp, epoch, sequence);
                        if checkpoint {
                            stats.checkpoint(sp);
                        }
                    })
                    .await?;
                }
                Ok(None) => return Err("the collector closed the stream".into()),
                Err(status) => {
                    set_aside_refused(&status, shared, stats).await;
                    return Err(format!("stream failed: {}", status_text(&status)));
                }
            },
            () = shared.appended.notified() => {}
            w = stop_wake(stop) => if let Wake::Deadline = w {
                on_spool(shared, stats, |sp, stats| stats.checkpoint(sp)).await?;
                return Ok(());
            },
        }
    }
}

#[cfg(test)]
mod tests {
    //! The exporter against a real collector in-process (`collector::serve` on
    //! 127.0.0.1:0, its store in a temp dir): no root, no probes.
    use super::*;
    use crate::{config::SpoolConfig, spool::writer::SpoolWriter};

    fn now_ms() -> i64 {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as i64)
    }

    fn batch(i: u64) -> Batch {
        use vigil_proto::v1::{HostIdentity, HostMetrics};
        Batch {
            agent_id: "unit".into(),
            host: Some(HostIdentity {
                agent_id: "unit".into(),
                hostname: "unit-host".into(),
                ..Default::default()
            }),
            metrics: vec![HostMetrics {
                time_unix_ms: now_ms() - 1000 + i as i64,
                cpu_usage_percent: i as f64,
                ..Default::default()
            }],
            ..Default::default()
        }
    }

    async fn wait_for(what: &str, mut cond: impl FnMut() -> bool) {
        let deadline = Instant::now() + Duration::from_secs(30);
        while !cond() {
            assert!(Instant::now() < deadline, "timed out waiting for {what}");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    #[test]
    fn batches_spooled_by_the_writer_thread_are_streamed_acked_and_stored_once() {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async {
            let dir = tempfile::tempdir().unwrap();
            let store_dir = dir.path().join("collector");
            let (addr, collector) = crate::test_support::Collector::start(&store_dir).await;
            let addr = addr.to_string();
            let spool = Spool::open(&dir.path().join("spool"), SpoolConfig::default()).unwrap();
            let shared = SharedSpool::new(spool);
            let writer = SpoolWriter::start(shared.clone()).unwrap();
            let stats = Arc::new(ExportStats::default());
            let (stop, stop_rx) = watch::channel(None);
            let connector = Connector::plain(&addr).map_err(|e| e.to_string());
            let exporter = tokio::spawn(run(
                vec![(addr, connector)],
                shared.clone(),
                stats.clone(),
                stop_rx,
            ));
            const N: u64 = 300;
            for i in 0..N {
                // The queue holds WRITE_QUEUE; wait for room rather than count drops.
                let mut b = batch(i);
                while let Err(back) = writer.append(b) {
                    b = *back;
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
            }
            writer.flush().await;
            assert_eq!(shared.snapshot().last_sequence, N);
            wait_for("every batch acked", || {
                stats.acked.load(Ordering::Relaxed) >= N && shared.snapshot().stats.unacked == 0
            })
            .await;
            let _ = stop.send(Some(Instant::now() + Duration::from_secs(5)));
            exporter.await.unwrap();
            collector.stop().await;
            let mut store = vigil_collector::Store::open(&store_dir).unwrap();
            let hosts = store.hosts().unwrap();
            assert_eq!(hosts.len(), 1);
            let h = &hosts[0];
            assert_eq!(
                (h.batches, h.last_sequence, h.gaps, h.duplicates),
                (N, N, 0, 0),
                "{h:?}"
            );
            assert_eq!(stats.duplicates.load(Ordering::Relaxed), 0);
            let history = store
                .history("unit", "cpu.usage_percent", 0, i64::MAX)
                .unwrap();
            assert_eq!(history.len(), N as usize);
        });
    }
}
