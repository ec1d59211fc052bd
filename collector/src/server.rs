//! The collector's gRPC services. Batches go through one bounded queue to a single
//! writer thread, which commits whatever has queued up in one transaction and only
//! then acks: the queue bounds memory, and a full queue slows the agents' streams
//! (backpressure) rather than dropping anything.
use std::{net::SocketAddr, path::PathBuf, pin::Pin, time::Duration};

use tokio::sync::{mpsc, oneshot};
use tokio_stream::{wrappers::TcpListenerStream, Stream, StreamExt as _};
use tonic::{Request, Response, Status, Streaming};
use vigil_proto::v1::{
    collector_server::{Collector, CollectorServer},
    fleet_server::{Fleet, FleetServer},
    Ack, Batch, EventsRequest, EventsResponse, HostRequest, LatestStatsResponse, ListHostsRequest,
    ListHostsResponse, MetricHistoryRequest, MetricHistoryResponse,
};

use crate::{metrics::SCALARS, store::Store, StoreError};

/// Batches waiting for the writer; when full, agents' streams wait.
const WRITE_QUEUE: usize = 4096;
/// Batches committed together at most.
const GROUP_COMMIT: usize = 512;

#[derive(Clone, Debug)]
pub struct CollectorConfig {
    pub data_dir: PathBuf,
    /// Samples and events older than this are deleted (checked every minute).
    pub retention: Duration,
}

type Reply = oneshot::Sender<Result<bool, String>>;

/// Runs the writer until every sender is gone.
fn writer(mut store: Store, mut rx: mpsc::Receiver<(Batch, Reply)>, retention: Duration) {
    let mut last_prune = std::time::Instant::now();
    while let Some(first) = rx.blocking_recv() {
        let mut pending = vec![first];
        while pending.len() < GROUP_COMMIT {
            match rx.try_recv() {
                Ok(next) => pending.push(next),
                Err(_) => break,
            }
        }
        let (batches, replies): (Vec<Batch>, Vec<Reply>) = pending.into_iter().unzip();
        match store.store(&batches) {
            Ok(dups) => {
                for (reply, dup) in replies.into_iter().zip(dups) {
                    let _ = reply.send(Ok(dup));
                }
            }
            Err(e) => {
                tracing::error!(error = %e, "storing batches failed; they are not acked and the agents will resend");
                for reply in replies {
                    let _ = reply.send(Err(e.to_string()));
                }
            }
        }
        if last_prune.elapsed() > Duration::from_secs(60) {
            last_prune = std::time::Instant::now();
            let cutoff = std::time::SystemTime::now()
                .checked_sub(retention)
                .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
                .map_or(0, |d| d.as_millis() as i64);
            if let Err(e) = store.prune(cutoff) {
                tracing::warn!(error = %e, "retention pruning failed");
            }
            // The async threads' malloc arenas keep freed request buffers; hand them
            // back so the collector's resident size follows its load, not its peak.
            // SAFETY: malloc_trim only releases free heap memory.
            unsafe { libc::malloc_trim(0) };
        }
    }
}

/// Returns once the collector is stopping (never, if the sender is gone without it).
async fn until_stopping(stopping: &mut tokio::sync::watch::Receiver<bool>) {
    loop {
        if *stopping.borrow_and_update() {
            return;
        }
        if stopping.changed().await.is_err() {
            std::future::pending::<()>().await;
        }
    }
}

struct CollectorService {
    queue: mpsc::Sender<(Batch, Reply)>,
    /// True once the collector is stopping: streams end (agents resend what's unacked).
    stopping: tokio::sync::watch::Receiver<bool>,
}

#[tonic::async_trait]
impl Collector for CollectorService {
    type StreamStream = Pin<Box<dyn Stream<Item = Result<Ack, Status>> + Send + 'static>>;

    async fn stream(
        &self,
        request: Request<Streaming<Batch>>,
    ) -> Result<Response<Self::StreamStream>, Status> {
        let mut incoming = request.into_inner();
        let queue = self.queue.clone();
        let mut stopping = self.stopping.clone();
        // Acks go back in order; a few in flight keep the writer's groups full.
        let (tx, rx) = mpsc::channel(64);
        tokio::spawn(async move {
            loop {
                let next = tokio::select! {
                    b = incoming.next() => b,
                    () = until_stopping(&mut stopping) => {
                        let _ = tx.send(Err(Status::unavailable("collector shutting down"))).await;
                        break;
                    }
                };
                let Some(batch) = next else { break };
                let batch = match batch {
                    Ok(b) => b,
                    Err(status) => {
                        tracing::debug!(%status, "agent stream ended");
                        break;
                    }
                };
                if batch.agent_id.is_empty() {
                    let _ = tx
                        .send(Err(Status::invalid_argument("batch without agent_id")))
                        .await;
                    break;
                }
                let (agent_id, epoch, sequence) =
                    (batch.agent_id.clone(), batch.epoch, batch.sequence);
                let (reply, stored) = oneshot::channel();
                if queue.send((batch, reply)).await.is_err() {
                    let _ = tx
                        .send(Err(Status::unavailable("collector shutting down")))
                        .await;
                    break;
                }
                let ack = match stored.await {
                    Ok(Ok(duplicate)) => Ok(Ack {
                        agent_id,
                        epoch,
                        sequence,
                        duplicate,
                    }),
                    Ok(Err(e)) => Err(Status::internal(format!("storing batch {sequence}: {e}"))),
                    Err(_) => Err(Status::unavailable("collector shutting down")),
                };
                let failed = ack.is_err();
                if tx.send(ack).await.is_err() || failed {
                    break;
                }
            }
        });
        Ok(Response::new(Box::pin(
            tokio_stream::wrappers::ReceiverStream::new(rx),
        )))
    }
}

struct FleetService {
    data_dir: PathBuf,
}

impl FleetService {
    /// Runs a read on its own connection, off the async threads.
    async fn read<T: Send + 'static>(
        &self,
        f: impl FnOnce(&Store) -> Result<T, StoreError> + Send + 'static,
    ) -> Result<T, Status> {
        let dir = self.data_dir.clone();
        tokio::task::spawn_blocking(move || Store::open(&dir).and_then(|s| f(&s)))
            .await
            .map_err(|e| Status::internal(e.to_string()))?
            .map_err(|e| match e {
                StoreError::UnknownHost(h) => Status::not_found(format!("unknown host `{h}`")),
                other => Status::internal(other.to_string()),
            })
    }
}

#[tonic::async_trait]
impl Fleet for FleetService {
    async fn list_hosts(
        &self,
        _: Request<ListHostsRequest>,
    ) -> Result<Response<ListHostsResponse>, Status> {
        let hosts = self.read(|s| s.hosts()).await?;
        Ok(Response::new(ListHostsResponse { hosts }))
    }

    async fn latest_stats(
        &self,
        request: Request<HostRequest>,
    ) -> Result<Response<LatestStatsResponse>, Status> {
        let host = request.into_inner().host;
        let (identity, metrics) = self
            .read(move |s| {
                let id = s.resolve(&host)?;
                Ok((s.identity(&id)?, s.latest(&id)?))
            })
            .await?;
        Ok(Response::new(LatestStatsResponse {
            host: Some(identity),
            metrics,
            agent: None,
        }))
    }

    async fn metric_history(
        &self,
        request: Request<MetricHistoryRequest>,
    ) -> Result<Response<MetricHistoryResponse>, Status> {
        let r = request.into_inner();
        if !SCALARS.contains(&r.metric.as_str()) {
            return Err(Status::invalid_argument(format!(
                "unknown metric `{}`; known: {}",
                r.metric,
                SCALARS.join(", ")
            )));
        }
        let until = if r.until_unix_ms == 0 {
            i64::MAX
        } else {
            r.until_unix_ms
        };
        let points = self
            .read(move |s| {
                let id = s.resolve(&r.host)?;
                s.history(&id, &r.metric, r.since_unix_ms, until)
            })
            .await?;
        Ok(Response::new(MetricHistoryResponse { points }))
    }

    async fn events(
        &self,
        request: Request<EventsRequest>,
    ) -> Result<Response<EventsResponse>, Status> {
        let r = request.into_inner();
        let limit = if r.limit == 0 {
            1000
        } else {
            r.limit.min(100_000)
        };
        let events = self.read(move |s| s.events(r.since_unix_ms, limit)).await?;
        Ok(Response::new(EventsResponse { events }))
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("gRPC server: {0}")]
    Transport(#[from] tonic::transport::Error),
    #[error("listener: {0}")]
    Listener(#[source] std::io::Error),
}

/// Serves Collector and Fleet on `listener` until `shutdown` completes, then lets the
/// writer finish what it has queued.
/// How long open streams may take to end after a stop request.
const SHUTDOWN_GRACE: std::time::Duration = std::time::Duration::from_secs(2);

pub async fn serve(
    listener: tokio::net::TcpListener,
    config: CollectorConfig,
    shutdown: impl std::future::Future<Output = ()> + Send,
) -> Result<(), ServeError> {
    let store = Store::open(&config.data_dir)?;
    let (queue, rx) = mpsc::channel(WRITE_QUEUE);
    let retention = config.retention;
    let writer = std::thread::Builder::new()
        .name("vigil-store".into())
        .spawn(move || writer(store, rx, retention))
        .map_err(ServeError::Listener)?;
    let local: Option<SocketAddr> = listener.local_addr().ok();
    tracing::info!(?local, data_dir = %config.data_dir.display(), "collector serving");
    // On shutdown, open streams get SHUTDOWN_GRACE to end by themselves; then they are
    // cut. That loses nothing: a batch is acked only after its commit, and agents send
    // whatever was not acked again.
    let (stop_tx, stopping) = tokio::sync::watch::channel(false);
    let mut stopped = stopping.clone();
    let shutdown = async move {
        shutdown.await;
        let _ = stop_tx.send(true);
    };
    let server = tonic::transport::Server::builder()
        .add_service(
            CollectorServer::new(CollectorService { queue, stopping })
                .max_decoding_message_size(64 << 20),
        )
        .add_service(FleetServer::new(FleetService {
            data_dir: config.data_dir.clone(),
        }))
        .serve_with_incoming_shutdown(TcpListenerStream::new(listener), shutdown);
    let result = tokio::select! {
        r = server => r,
        () = async { until_stopping(&mut stopped).await; tokio::time::sleep(SHUTDOWN_GRACE).await } => {
            tracing::warn!("streams still open {SHUTDOWN_GRACE:?} after the stop request; closing them");
            Ok(())
        }
    };
    // The writer stops once every stream's queue sender is gone; it commits what it has
    // queued first. If cut streams still hold senders, don't wait past the grace.
    let join = tokio::task::spawn_blocking(move || writer.join());
    if tokio::time::timeout(SHUTDOWN_GRACE, join).await.is_err() {
        tracing::warn!("store writer still busy at exit; unacked batches will be resent");
    }
    Ok(result?)
}
