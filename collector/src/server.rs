//! The collector's gRPC services. Batches go through one bounded queue to a single
//! writer thread, which commits whatever has queued up in one transaction and only
//! then acks: the queue bounds memory, and a full queue slows the agents' streams
//! (backpressure) rather than dropping anything.
use std::{
    net::SocketAddr,
    path::PathBuf,
    pin::Pin,
    sync::{atomic::Ordering, Arc},
    time::Duration,
};

use tokio::sync::{mpsc, oneshot, OwnedSemaphorePermit, Semaphore};
use tokio_stream::{Stream, StreamExt as _};
use tonic::{Request, Response, Status, Streaming};
use vigil_proto::v1::{
    collector_server::{Collector, CollectorServer},
    fleet_server::{Fleet, FleetServer},
    Ack, Batch, CollectorStatsRequest, CollectorStatsResponse, CreateSilenceRequest, EventsRequest,
    EventsResponse, ExpireSilenceRequest, HostRequest, LatestStatsResponse, ListHostsRequest,
    ListHostsResponse, ListSilencesRequest, ListSilencesResponse, MetricHistoryRequest,
    MetricHistoryResponse, Silence, SlosRequest, SlosResponse,
};

use vigil_tls::{server::peer_of, Kind, PeerInfo, Reloading};

use crate::{
    limits::{Counters, Limits, Refusal},
    metrics::SCALARS,
    store::{Incoming, Outcome},
    stores::{Store, StoreLocation},
    StoreError,
};

/// Batches waiting for the writer; when full, agents' streams wait.
const WRITE_QUEUE: usize = 4096;
/// Batches committed together at most.
const GROUP_COMMIT: usize = 512;
/// Batches of one stream queued or committing before its reader waits (an agent keeps
/// 32 unacked).
const IN_FLIGHT: usize = 64;
pub use vigil_proto::REFUSED_SEQUENCE;

#[derive(Clone, Debug)]
pub struct CollectorConfig {
    pub data_dir: PathBuf,
    /// Samples and events older than this are deleted (checked every minute).
    pub retention: Duration,
    pub limits: Limits,
    /// Mutual TLS (reloading from its files); None: plaintext.
    pub tls: Option<Arc<Reloading<ServerTls>>>,
    /// A bearer token that reads the Fleet API without a client certificate.
    pub fleet_token_file: Option<PathBuf>,
    /// Where /metrics is served (None: not served).
    pub metrics_listen: Option<String>,
    /// Prometheus remote-write endpoints the stored samples are forwarded to.
    pub remote_write: Vec<crate::remote_write::Endpoint>,
    /// A PostgreSQL URL: the store several collectors share. None: the embedded
    /// SQLite store in `data_dir`.
    pub postgres: Option<String>,
    /// Where alerts and findings are routed, and where silences live.
    pub alerting: crate::alerting::AlertingConfig,
    /// SLO files (OpenSLO v1 subset), read at each `vigil slo`.
    pub slo_dir: PathBuf,
}

impl CollectorConfig {
    pub fn store_location(&self) -> StoreLocation {
        match &self.postgres {
            Some(url) => StoreLocation::Postgres(url.clone()),
            None => StoreLocation::Sqlite(self.data_dir.clone()),
        }
    }
}

/// The collector's TLS: the server config, and the trust domain its own certificate
/// names (peers must be of the same one).
pub struct ServerTls {
    pub config: Arc<rustls::ServerConfig>,
    pub trust_domain: Option<String>,
    /// SHA-256 of the CA bundle: connections accepted under another are closed.
    pub ca_digest: [u8; 32],
}

/// The collector's TLS material from `files`, reloaded when they change. Clients must
/// present a certificate signed by the CA.
pub fn server_tls(
    files: vigil_tls::TlsFiles,
    auth: vigil_tls::material::ClientAuth,
) -> Arc<Reloading<ServerTls>> {
    Reloading::new(files, "collector", move |m| {
        let config = vigil_tls::material::server_config(m, auth)?;
        use sha2::Digest as _;
        let mut ca = sha2::Sha256::new();
        for c in &m.ca {
            ca.update(c.as_ref());
        }
        Ok(ServerTls {
            config: Arc::new(config),
            trust_domain: m.identity.as_ref().ok().map(|i| i.trust_domain.clone()),
            ca_digest: ca.finalize().into(),
        })
    })
}

fn article(kind: Kind) -> &'static str {
    match kind {
        Kind::Agent => "an agent certificate",
        Kind::Collector => "a collector certificate",
        Kind::Operator => "an operator certificate",
    }
}

/// Who may make a call: with mTLS, a client certificate naming an identity of `kind`
/// in the collector's trust domain (refused with PERMISSION_DENIED, counted by
/// certificate); in plaintext, anyone. Returns the identity's name under mTLS.
fn authorize(
    tls: &Option<Arc<Reloading<ServerTls>>>,
    peer: &PeerInfo,
    kind: Kind,
    counters: &Counters,
) -> Result<Option<String>, Status> {
    let Some(tls) = tls else { return Ok(None) };
    let deny = |label: &str, why: String| {
        counters.deny(label);
        tracing::warn!(peer = %peer.remote_label(), certificate = label, "permission denied: {why}");
        Err(Status::permission_denied(why))
    };
    let Some(cert) = &peer.certificate else {
        return deny("(no certificate)", "no client certificate".into());
    };
    let label = cert.label();
    let id = match &cert.identity {
        Ok(id) => id,
        Err(e) => {
            return deny(
                &label,
                format!("the client certificate names no Vigil identity: {e}"),
            )
        }
    };
    if id.kind != kind {
        return deny(
            &label,
            format!(
                "the client certificate is {} ({id}); this call needs {}",
                article(id.kind),
                article(kind)
            ),
        );
    }
    if let Some(td) = tls.current().ok().and_then(|t| t.trust_domain.clone()) {
        if id.trust_domain != td {
            return deny(
                &label,
                format!("the client certificate ({id}) is not of trust domain {td}"),
            );
        }
    }
    Ok(Some(id.name.clone()))
}

type Reply = oneshot::Sender<Result<Outcome, String>>;

/// A batch for the writer, holding its share of the queue budget until it is done.
struct Queued {
    incoming: Incoming,
    reply: Reply,
    _budget: OwnedSemaphorePermit,
}

/// Runs the writer until every sender is gone.
fn writer(
    mut store: Store,
    mut rx: mpsc::Receiver<Queued>,
    retention: Duration,
    router: crate::alerting::Router,
) {
    let mut last_prune = std::time::Instant::now();
    while let Some(first) = rx.blocking_recv() {
        let mut pending = vec![first];
        while pending.len() < GROUP_COMMIT {
            match rx.try_recv() {
                Ok(next) => pending.push(next),
                Err(_) => break,
            }
        }
        let (incoming, rest): (Vec<Incoming>, Vec<_>) = pending
            .into_iter()
            .map(|q| (q.incoming, (q.reply, q._budget)))
            .unzip();
        let results = store.store(&incoming);
        // What this collector stored (not a duplicate another one stored) is routed.
        for (i, r) in incoming.iter().zip(&results) {
            if matches!(r, Ok(Outcome::Stored)) {
                router.offer(&i.batch);
            }
        }
        for ((reply, _budget), result) in rest.into_iter().zip(results) {
            let _ = reply.send(result.map_err(|e| {
                tracing::error!(error = %e, "storing a batch failed; it is not acked and the agent will resend it");
                e.to_string()
            }));
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
    queue: mpsc::Sender<Queued>,
    /// Bytes of decoded batches waiting for the writer (Limits::queue_budget_bytes).
    queue_budget: Arc<Semaphore>,
    /// The whole budget: a batch larger than it takes all of it (and goes alone).
    queue_budget_total: u32,
    counters: Arc<Counters>,
    /// True once the collector is stopping: streams end (agents resend what's unacked).
    stopping: tokio::sync::watch::Receiver<bool>,
    tls: Option<Arc<Reloading<ServerTls>>>,
    batch_limits: crate::validate::BatchLimits,
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

/// INVALID_ARGUMENT naming the batch, with its sequence in the metadata.
fn refused(sequence: u64, reason: String) -> Status {
    let mut meta = tonic::metadata::MetadataMap::new();
    if let Ok(v) = sequence.to_string().parse() {
        meta.insert(REFUSED_SEQUENCE, v);
    }
    Status::with_metadata(
        tonic::Code::InvalidArgument,
        format!("batch {sequence} refused: {reason}"),
        meta,
    )
}

/// A batch queued for the writer: what its ack needs once the commit is done.
struct Waiting {
    agent_id: String,
    epoch: vigil_proto::Epoch,
    sequence: u64,
    peer: Arc<str>,
    stored: oneshot::Receiver<Result<Outcome, String>>,
}

/// A stream's next answer, in the order its batches came.
enum Answer {
    Waiting(Waiting),
    /// Refused before queueing, or the stream failed: the status that ends it.
    Failed(Status),
}

impl CollectorService {
    /// Checks and queues one batch (waiting while the queue budget is spent). The
    /// stream goes on reading while it commits.
    async fn submit(
        &self,
        mut batch: Batch,
        peer: &Arc<str>,
        identity: &Option<(String, String)>,
    ) -> Result<Waiting, Status> {
        let sequence = batch.sequence;
        // Identity before anything else: a batch is stored only under the agent id
        // its stream's certificate names.
        if let Some((name, label)) = identity {
            if batch.agent_id != *name {
                self.counters.deny(label);
                let claimed: String = batch.agent_id.chars().take(128).collect();
                tracing::warn!(%peer, certificate = %label, claimed = %claimed, sequence,
                    "batch refused: its agent id is not the one the client certificate names");
                return Err(Status::permission_denied(format!(
                    "batch {sequence} claims agent id {claimed:?}, but the client certificate names agent {name:?}"
                )));
            }
        }
        match crate::validate::check_with(&mut batch, now_ms(), &self.batch_limits) {
            Ok(checked) => {
                if checked.strings_cut > 0 {
                    self.counters
                        .strings_truncated
                        .fetch_add(checked.strings_cut, Ordering::Relaxed);
                }
            }
            Err(e) => {
                self.counters.refuse(Refusal::InvalidBatch);
                tracing::warn!(%peer, agent_id = %batch.agent_id.chars().take(128).collect::<String>(), sequence, error = %e, "batch refused");
                return Err(refused(sequence, e.to_string()));
            }
        }
        let size = prost::Message::encoded_len(&batch).clamp(1, u32::MAX as usize) as u32;
        let budget = self
            .queue_budget
            .clone()
            .acquire_many_owned(size.min(self.queue_budget_total))
            .await
            .map_err(|_| Status::unavailable("collector shutting down"))?;
        let (agent_id, epoch) = (batch.agent_id.clone(), batch.spool_epoch());
        let (reply, stored) = oneshot::channel();
        let queued = Queued {
            incoming: Incoming {
                batch,
                peer: peer.clone(),
                transport: if self.tls.is_some() {
                    crate::store::Transport::Mtls
                } else {
                    crate::store::Transport::Plaintext
                },
            },
            reply,
            _budget: budget,
        };
        if self.queue.send(queued).await.is_err() {
            return Err(Status::unavailable("collector shutting down"));
        }
        Ok(Waiting {
            agent_id,
            epoch,
            sequence,
            peer: peer.clone(),
            stored,
        })
    }

    /// Waits for a queued batch's commit: its ack, or the status that ends the stream.
    async fn answer(&self, w: Waiting) -> Result<Ack, Status> {
        let Waiting {
            agent_id,
            epoch,
            sequence,
            peer,
            stored,
        } = w;
        let ack = |duplicate, conflict| Ack {
            agent_id: agent_id.clone(),
            epoch: epoch.high(),
            epoch_low: epoch.low(),
            sequence,
            duplicate,
            conflict,
        };
        match stored.await {
            Ok(Ok(Outcome::Stored)) => Ok(ack(false, false)),
            Ok(Ok(Outcome::Duplicate)) => Ok(ack(true, false)),
            Ok(Ok(Outcome::Conflict)) => {
                self.counters.conflicts.fetch_add(1, Ordering::Relaxed);
                tracing::error!(%peer, %agent_id, %epoch, sequence,
                    "CONFLICT: a different batch is already stored under this agent, epoch and sequence; \
                     someone else is writing as this agent (not stored, not acked as delivered)");
                Ok(ack(false, true))
            }
            Ok(Ok(Outcome::TooFarAhead { newest })) => {
                self.counters.refuse(Refusal::SequenceTooFarAhead);
                tracing::warn!(%peer, %agent_id, sequence, newest, "batch refused: sequence too far ahead");
                Err(refused(
                    sequence,
                    format!(
                        "sequence is more than {} past the newest stored for this agent and epoch ({newest})",
                        crate::store::MAX_SEQUENCE_AHEAD
                    ),
                ))
            }
            Ok(Err(e)) => {
                self.counters.refuse(Refusal::StoreFailed);
                Err(Status::internal(format!("storing batch {sequence}: {e}")))
            }
            Err(_) => Err(Status::unavailable("collector shutting down")),
        }
    }
}

/// The service as tonic holds it (each stream's task holds the service too).
struct CollectorHandle(Arc<CollectorService>);

#[tonic::async_trait]
impl Collector for CollectorHandle {
    type StreamStream = Pin<Box<dyn Stream<Item = Result<Ack, Status>> + Send + 'static>>;

    async fn stream(
        &self,
        request: Request<Streaming<Batch>>,
    ) -> Result<Response<Self::StreamStream>, Status> {
        let info = peer_of(&request);
        let peer: Arc<str> = info.remote_label().into();
        let identity = authorize(&self.0.tls, &info, Kind::Agent, &self.0.counters)?.map(|name| {
            let label = info
                .certificate
                .as_ref()
                .map(|c| c.label())
                .unwrap_or_default();
            (name, label)
        });
        let mut incoming = request.into_inner();
        let mut stopping = self.0.stopping.clone();
        // Pipelined: the reader goes on reading and queueing while earlier batches
        // commit; the answerer acks them in order, each after its commit. At most
        // IN_FLIGHT answers wait per stream (then the reader waits: backpressure).
        let (answers, mut pending) = mpsc::channel::<Answer>(IN_FLIGHT);
        let (tx, rx) = mpsc::channel(IN_FLIGHT);
        let service = self.0.clone();
        tokio::spawn(async move {
            loop {
                let next = tokio::select! {
                    b = incoming.next() => b,
                    () = until_stopping(&mut stopping) => {
                        let _ = answers.send(Answer::Failed(Status::unavailable("collector shutting down"))).await;
                        break;
                    }
                };
                let Some(batch) = next else { break };
                let answer = match batch {
                    Ok(b) => match service.submit(b, &peer, &identity).await {
                        Ok(w) => Answer::Waiting(w),
                        Err(status) => Answer::Failed(status),
                    },
                    Err(status) => {
                        // Say why (a message too large, a broken frame, a timeout):
                        // a stream never ends OK with a batch unanswered.
                        tracing::debug!(%peer, %status, "agent stream failed");
                        Answer::Failed(status)
                    }
                };
                let failed = matches!(answer, Answer::Failed(_));
                if answers.send(answer).await.is_err() || failed {
                    break;
                }
            }
        });
        let service = self.0.clone();
        tokio::spawn(async move {
            while let Some(answer) = pending.recv().await {
                let ack = match answer {
                    Answer::Waiting(w) => service.answer(w).await,
                    Answer::Failed(status) => Err(status),
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

/// Read connections kept open between fleet requests (opening one per request cost a
/// file open, the pragmas and a schema check each time; their prepared statements are
/// cached per connection).
const READ_POOL: usize = 4;

/// Idle read connections; a request takes one (or opens one) and gives it back.
struct ReadPool {
    at: StoreLocation,
    idle: std::sync::Mutex<Vec<Store>>,
}

impl Drop for ReadPool {
    /// A PostgreSQL connection closes by blocking on its own runtime, which must not
    /// happen on an async thread: the idle connections are closed on a thread of
    /// their own.
    fn drop(&mut self) {
        let idle = self.idle.get_mut().map(std::mem::take).unwrap_or_default();
        if !idle.is_empty() {
            let _ = std::thread::Builder::new()
                .name("vigil-store-close".into())
                .spawn(move || drop(idle));
        }
    }
}

impl ReadPool {
    fn with<T>(
        &self,
        f: impl FnOnce(&mut Store) -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        let taken = self.idle.lock().ok().and_then(|mut idle| idle.pop());
        let mut store = match taken {
            Some(s) => s,
            None => Store::open_at(&self.at)?,
        };
        let result = f(&mut store);
        if let Ok(mut idle) = self.idle.lock() {
            if idle.len() < READ_POOL {
                idle.push(store);
            }
        }
        result
    }
}

struct FleetService {
    pool: Arc<ReadPool>,
    counters: Arc<Counters>,
    tls: Option<Arc<Reloading<ServerTls>>>,
    router: crate::alerting::Router,
    slo_dir: PathBuf,
}

/// Who may change silences: with TLS, a caller with a certificate (an operator's: the
/// Fleet interceptor has checked it); the bearer token only reads. Returns who it is.
fn silence_writer<T>(request: &Request<T>, tls: bool) -> Result<String, Status> {
    let peer = peer_of(request);
    match (&peer.certificate, tls) {
        (Some(c), _) => Ok(match &c.identity {
            Ok(id) => id.to_string(),
            Err(_) => c.fingerprint.clone(),
        }),
        (None, false) => Ok(peer.remote.map_or_else(
            || "plaintext client".to_string(),
            |r| format!("plaintext client {r}"),
        )),
        (None, true) => Err(Status::permission_denied(
            "maintenance windows need an operator certificate (the Fleet bearer token only reads)",
        )),
    }
}

fn router_error(e: String) -> Status {
    Status::unavailable(e)
}

impl FleetService {
    /// Runs a read on a pooled connection, off the async threads.
    async fn read<T: Send + 'static>(
        &self,
        f: impl FnOnce(&mut Store) -> Result<T, StoreError> + Send + 'static,
    ) -> Result<T, Status> {
        let pool = self.pool.clone();
        tokio::task::spawn_blocking(move || pool.with(f))
            .await
            .map_err(|e| Status::internal(e.to_string()))?
            .map_err(|e| match e {
                StoreError::UnknownHost(h) => Status::not_found(format!("unknown host `{h}`")),
                e @ StoreError::PageToken(_) => Status::invalid_argument(e.to_string()),
                other => Status::internal(other.to_string()),
            })
    }
}

#[tonic::async_trait]
impl Fleet for FleetService {
    async fn list_hosts(
        &self,
        request: Request<ListHostsRequest>,
    ) -> Result<Response<ListHostsResponse>, Status> {
        let r = request.into_inner();
        let size = match r.page_size {
            0 => 500,
            n => n.min(5000) as usize,
        };
        let (hosts, next_page_token) = self
            .read(move |s| s.hosts_page(&r.page_token, size))
            .await?;
        Ok(Response::new(ListHostsResponse {
            hosts,
            next_page_token,
        }))
    }

    async fn collector_stats(
        &self,
        _: Request<CollectorStatsRequest>,
    ) -> Result<Response<CollectorStatsResponse>, Status> {
        let c = &self.counters;
        let (tls_reloads, tls_reload_failures) = self.tls.as_ref().map_or((0, 0), |t| {
            (
                t.reloads.load(Ordering::Relaxed),
                t.failures.load(Ordering::Relaxed),
            )
        });
        Ok(Response::new(CollectorStatsResponse {
            refused: c.refused().map(|(k, v)| (k.to_string(), v)).collect(),
            conflicts: c.conflicts.load(Ordering::Relaxed),
            connections_open: c.connections_open.load(Ordering::Relaxed) as u64,
            tls_mode: if self.tls.is_some() { "mtls" } else { "off" }.into(),
            denied_by_certificate: c.denied_by_certificate().into_iter().collect(),
            tls_reloads,
            tls_reload_failures,
            strings_truncated: c.strings_truncated.load(Ordering::Relaxed),
            alerting: self.router.stats.counters().collect(),
        }))
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

    async fn history(
        &self,
        request: Request<vigil_proto::v1::HistoryRequest>,
    ) -> Result<Response<vigil_proto::v1::HistoryResponse>, Status> {
        let r = request.into_inner();
        let answer = self
            .read(move |s| {
                let id = s.resolve(&r.host)?;
                let mut a = s.intervals(&id, r.since_unix_ms, r.until_unix_ms, r.limit)?;
                a.host = Some(s.identity(&id)?);
                Ok(a)
            })
            .await?;
        Ok(Response::new(answer))
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
            r.limit.min(10_000)
        };
        let (events, next_page_token) = self
            .read(move |s| s.events_page(r.since_unix_ms, limit, &r.page_token, r.alerts_only))
            .await?;
        Ok(Response::new(EventsResponse {
            events,
            next_page_token,
        }))
    }

    async fn slos(&self, _: Request<SlosRequest>) -> Result<Response<SlosResponse>, Status> {
        let dir = self.slo_dir.clone();
        let now = vigil_units::unix_ms(std::time::SystemTime::now());
        Ok(Response::new(
            self.read(move |s| crate::slo::answer(s, &dir, now)).await?,
        ))
    }

    async fn create_silence(
        &self,
        request: Request<CreateSilenceRequest>,
    ) -> Result<Response<Silence>, Status> {
        let caller = silence_writer(&request, self.tls.is_some())?;
        let r = request.into_inner();
        if r.host.trim().is_empty() {
            return Err(Status::invalid_argument(
                "host: empty (a hostname or agent id)",
            ));
        }
        if r.duration_secs == 0 || r.duration_secs > 366 * 86_400 {
            return Err(Status::invalid_argument(
                "duration_secs: between 1 second and 366 days",
            ));
        }
        for (field, s) in [
            ("host", &r.host),
            ("alert", &r.alert),
            ("comment", &r.comment),
            ("created_by", &r.created_by),
        ] {
            if s.len() > 4096 {
                return Err(Status::invalid_argument(format!(
                    "{field}: at most 4096 bytes"
                )));
            }
        }
        let created_by = if r.created_by.is_empty() {
            caller
        } else {
            format!("{} ({caller})", r.created_by)
        };
        let op = crate::alerting::SilenceOp::Create {
            matchers: crate::alerting::window_matchers(r.host.trim(), r.alert.trim()),
            duration: Duration::from_secs(r.duration_secs),
            created_by,
            comment: r.comment,
        };
        let mut made = self.router.silence(op).await.map_err(router_error)?;
        let s = made
            .pop()
            .ok_or_else(|| Status::internal("no silence made"))?;
        tracing::info!(id = %s.id, by = %s.created_by, "maintenance window {} made", s.id);
        Ok(Response::new(s))
    }

    async fn list_silences(
        &self,
        _request: Request<ListSilencesRequest>,
    ) -> Result<Response<ListSilencesResponse>, Status> {
        let silences = self
            .router
            .silence(crate::alerting::SilenceOp::List)
            .await
            .map_err(router_error)?;
        Ok(Response::new(ListSilencesResponse { silences }))
    }

    async fn expire_silence(
        &self,
        request: Request<ExpireSilenceRequest>,
    ) -> Result<Response<Silence>, Status> {
        let caller = silence_writer(&request, self.tls.is_some())?;
        let id = request.into_inner().id;
        if id.is_empty()
            || id.len() > 128
            || !id.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
        {
            return Err(Status::invalid_argument("id: not a silence id"));
        }
        let mut ended = self
            .router
            .silence(crate::alerting::SilenceOp::Expire { id })
            .await
            .map_err(|e| {
                if e.starts_with("no silence") {
                    Status::not_found(e)
                } else {
                    router_error(e)
                }
            })?;
        let s = ended.pop().ok_or_else(|| Status::internal("no silence"))?;
        tracing::info!(id = %s.id, by = %caller, "maintenance window {} ended", s.id);
        Ok(Response::new(s))
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
    #[error("{0}")]
    Metrics(String),
}

/// Evaluates the SLOs every `every` until `stop` is dropped: routes their page and
/// ticket alerts (and logs each change) and keeps the answer for /metrics.
fn slo_evaluator(
    pool: &ReadPool,
    dir: &std::path::Path,
    every: Duration,
    router: &crate::alerting::Router,
    latest: &crate::slo::Latest,
    stop: &std::sync::mpsc::Receiver<()>,
) {
    let mut evaluator = crate::slo::Evaluator::default();
    let mut refused: Vec<String> = Vec::new();
    loop {
        let now = now_ms();
        match pool.with(|s| crate::slo::answer(s, dir, now)) {
            Ok(answer) => {
                if answer.problems != refused {
                    for p in &answer.problems {
                        tracing::warn!("SLO file refused (the others are evaluated): {p}");
                    }
                    refused.clone_from(&answer.problems);
                }
                let changes = evaluator.changes(&answer.slos, now);
                for c in &changes {
                    tracing::warn!(alert = %c.alert, state = %c.state, severity = %c.severity, slo = %c.labels.get("slo").map_or("", String::as_str), "{}", c.summary);
                }
                let groups: std::collections::HashMap<String, String> = answer
                    .slos
                    .iter()
                    .map(|s| (s.name.clone(), s.hosts.clone()))
                    .collect();
                router.offer_own(changes, |a| {
                    a.labels
                        .get("slo")
                        .and_then(|n| groups.get(n))
                        .cloned()
                        .unwrap_or_else(|| "*".into())
                });
                if let Ok(mut l) = latest.lock() {
                    l.answer = Some(answer);
                    l.firing = evaluator.firing().cloned().collect();
                    l.evaluations += 1;
                }
            }
            Err(e) => {
                tracing::warn!("SLO evaluation failed (tried again in {every:?}): {e}");
                if let Ok(mut l) = latest.lock() {
                    l.failures += 1;
                }
            }
        }
        match stop.recv_timeout(every) {
            Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {}
            _ => return,
        }
    }
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
    // Opened off the async threads: a PostgreSQL client blocks on a runtime of its own.
    let at = config.store_location();
    let store = {
        let at = at.clone();
        tokio::task::spawn_blocking(move || Store::open_at(&at))
            .await
            .map_err(|e| ServeError::Listener(std::io::Error::other(e)))??
    };
    let (queue, rx) = mpsc::channel(WRITE_QUEUE);
    let retention = config.retention;
    let router = crate::alerting::Router::start(config.alerting.clone(), &config.data_dir)
        .map_err(ServeError::Listener)?;
    let pool = Arc::new(ReadPool {
        at: at.clone(),
        idle: std::sync::Mutex::new(Vec::new()),
    });
    // The SLO evaluator stops when this sender is dropped (when serve returns).
    let (_slo_stop, slo_stopped) = std::sync::mpsc::channel::<()>();
    let slo_latest: crate::slo::Latest = Arc::default();
    {
        let (pool, router, latest) = (pool.clone(), router.clone(), slo_latest.clone());
        let (dir, every) = (
            config.slo_dir.clone(),
            config.alerting.slo_evaluation_interval,
        );
        std::thread::Builder::new()
            .name("vigil-slo".into())
            .spawn(move || slo_evaluator(&pool, &dir, every, &router, &latest, &slo_stopped))
            .map_err(ServeError::Listener)?;
    }
    let writer = {
        let router = router.clone();
        std::thread::Builder::new()
            .name("vigil-store".into())
            .spawn(move || writer(store, rx, retention, router))
            .map_err(ServeError::Listener)?
    };
    let mut limits = config.limits.clone();
    limits.max_connections = crate::limits::raise_nofile(limits.max_connections);
    let counters = Arc::new(Counters::default());
    let local: Option<SocketAddr> = listener.local_addr().ok();
    tracing::info!(?local, store = %at.shown(), ?limits, "collector serving");
    let remote =
        crate::remote_write::RemoteWrite::start(&config.data_dir, &at, &config.remote_write)
            .map_err(ServeError::Listener)?;
    let _metrics = match &config.metrics_listen {
        Some(addr) => Some(
            crate::openmetrics::serve(
                addr,
                counters.clone(),
                config.tls.clone(),
                remote.stats.clone(),
                slo_latest.clone(),
            )
            .await
            .map_err(|e| ServeError::Metrics(format!("{e:#}")))?,
        ),
        None => None,
    };
    // On shutdown, open streams get SHUTDOWN_GRACE to end by themselves; then they are
    // cut. That loses nothing: a batch is acked only after its commit, and agents send
    // whatever was not acked again.
    let (stop_tx, stopping) = tokio::sync::watch::channel(false);
    let mut stopped = stopping.clone();
    let shutdown = async move {
        shutdown.await;
        let _ = stop_tx.send(true);
    };
    let queue_budget_total = limits.queue_budget_bytes.clamp(1, u32::MAX as usize) as u32;
    let service = Arc::new(CollectorService {
        queue,
        queue_budget: Arc::new(Semaphore::new(queue_budget_total as usize)),
        queue_budget_total,
        counters: counters.clone(),
        stopping,
        tls: config.tls.clone(),
        batch_limits: limits.batch,
    });
    let budget_limits = Arc::new(limits.clone());
    let budget_counters = counters.clone();
    let budget = tower::util::MapRequestLayer::new(move |req: http::Request<tonic::body::Body>| {
        let (l, c) = (budget_limits.clone(), budget_counters.clone());
        req.map(|b| tonic::body::Body::new(crate::limits::Budgeted::new(b, l, c)))
    });
    let incoming = crate::limits::accept_loop(
        listener,
        limits.clone(),
        counters.clone(),
        config.tls.clone(),
    );
    // The Fleet API is for operators' certificates (agents' cannot read the fleet).
    let (fleet_tls, fleet_counters) = (config.tls.clone(), counters.clone());
    let fleet_token = config.fleet_token_file.clone();
    let fleet_access = move |req: Request<()>| -> Result<Request<()>, Status> {
        let peer = peer_of(&req);
        if let (Some(path), true, None) = (&fleet_token, fleet_tls.is_some(), &peer.certificate) {
            // No client certificate (allowed only with a Fleet token): the token must
            // speak for the caller.
            return match vigil_tls::token::bearer(&req).map(|g| vigil_tls::token::matches(path, g))
            {
                Some(Ok(true)) => Ok(req),
                Some(Err(e)) => {
                    tracing::error!("fleet token refused: {e}");
                    fleet_counters.deny("(no certificate, token file unusable)");
                    Err(Status::unauthenticated(
                        "the Fleet token file is not usable; see the collector's log",
                    ))
                }
                _ => {
                    fleet_counters.deny("(no certificate, no valid token)");
                    Err(Status::unauthenticated(
                        "the Fleet API needs an operator certificate or the collector's bearer token",
                    ))
                }
            };
        }
        authorize(&fleet_tls, &peer, Kind::Operator, &fleet_counters)?;
        Ok(req)
    };
    // Standard health checking and reflection, so gRPC tools find the Fleet API.
    let (health, health_service) = tonic_health::server::health_reporter();
    health
        .set_serving::<CollectorServer<CollectorHandle>>()
        .await;
    health.set_serving::<FleetServer<FleetService>>().await;
    let reflection = |b: tonic_reflection::server::Builder<'static>| {
        b.register_encoded_file_descriptor_set(vigil_proto::FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
    };
    let reflection_v1 = reflection(tonic_reflection::server::Builder::configure())
        .build_v1()
        .map_err(|e| ServeError::Listener(std::io::Error::other(e.to_string())))?;
    let reflection_v1alpha = reflection(tonic_reflection::server::Builder::configure())
        .build_v1alpha()
        .map_err(|e| ServeError::Listener(std::io::Error::other(e.to_string())))?;
    let server = tonic::transport::Server::builder()
        .max_concurrent_streams(limits.max_streams_per_connection)
        .http2_max_pending_accept_reset_streams(Some(64))
        .layer(budget)
        .add_service(
            CollectorServer::new(CollectorHandle(service))
                .max_decoding_message_size(limits.max_message_bytes),
        )
        .add_service(FleetServer::with_interceptor(
            FleetService {
                pool,
                counters,
                tls: config.tls.clone(),
                router,
                slo_dir: config.slo_dir.clone(),
            },
            fleet_access,
        ))
        .add_service(health_service)
        .add_service(reflection_v1)
        .add_service(reflection_v1alpha)
        .serve_with_incoming_shutdown(
            tokio_stream::wrappers::ReceiverStream::new(incoming),
            shutdown,
        );
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
    // The forwarders' cursors are saved after each request: stopping loses nothing.
    let _ = tokio::task::spawn_blocking(move || remote.stop()).await;
    Ok(result?)
}
