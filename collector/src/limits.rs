//! What one client may cost the collector, and what happens past it: connections (in
//! all and per peer address), streams per connection, bytes per message, memory held
//! by messages still arriving (a budget shared by every stream), how long a message
//! may take to arrive and a connection may stay silent. Over a limit, the client gets
//! a clear gRPC status (or, for a connection, is closed at once) and the refusal is
//! counted by reason (`vigil hosts` shows the counts); nothing is refused silently.
use std::{
    collections::HashMap,
    net::{IpAddr, SocketAddr},
    pin::Pin,
    sync::{
        atomic::{AtomicU64, AtomicUsize, Ordering},
        Arc, Mutex,
    },
    task::{Context, Poll},
    time::Duration,
};

use std::future::Future as _;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tonic::{transport::server::Connected, Status};

/// The collector's limits. Defaults fit a fleet of tens of thousands of agents, each
/// sending one batch of a few KiB per interval over one connection.
#[derive(Clone, Debug)]
pub struct Limits {
    /// A gRPC message (one batch) larger than this is refused (RESOURCE_EXHAUSTED).
    pub max_message_bytes: usize,
    /// Connections open at once; more are closed at accept. Lowered to fit the open
    /// files limit.
    pub max_connections: usize,
    /// Connections open at once from one IP address.
    pub max_connections_per_peer: usize,
    /// Concurrent HTTP/2 streams per connection (an agent uses one).
    pub max_streams_per_connection: u32,
    /// Bytes of messages still arriving, over all streams: a stream whose next message
    /// would pass it is refused (RESOURCE_EXHAUSTED) and the agent retries.
    pub decode_budget_bytes: usize,
    /// Bytes of decoded batches waiting for the writer, over all streams: past it,
    /// streams wait (backpressure), they are not refused.
    pub queue_budget_bytes: usize,
    /// A message must arrive whole within this long of its first byte.
    pub message_timeout: Duration,
    /// A connection that sends nothing for this long is closed (agents send HTTP/2
    /// keepalive pings every 5 s).
    pub idle_timeout: Duration,
    /// A TLS handshake must be done within this long of the accept; a connection
    /// that has not finished it by then is closed (a client that connects and sends
    /// nothing holds a socket for no longer than this).
    pub handshake_timeout: Duration,
    /// Items per batch (samples, syscalls, events, findings).
    pub batch: crate::validate::BatchLimits,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_message_bytes: 8 << 20,
            max_connections: 16_384,
            max_connections_per_peer: 256,
            max_streams_per_connection: 16,
            decode_budget_bytes: 256 << 20,
            queue_budget_bytes: 256 << 20,
            message_timeout: Duration::from_secs(30),
            idle_timeout: Duration::from_secs(300),
            handshake_timeout: Duration::from_secs(10),
            batch: crate::validate::BatchLimits::default(),
        }
    }
}

/// Why the collector refused something. The names are those `vigil hosts` shows.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Refusal {
    InvalidBatch,
    MessageTooLarge,
    DecodeBudget,
    MessageTimeout,
    SequenceTooFarAhead,
    ConnectionLimit,
    PeerConnectionLimit,
    AcceptErrors,
    IdleConnectionsClosed,
    StoreFailed,
    /// No certificate, one from another CA, a protocol older than TLS 1.3, garbage.
    TlsHandshakeFailed,
    TlsHandshakeTimeout,
    /// A batch whose agent id is not the certificate's, or a certificate of the wrong
    /// kind for the call (counted per certificate as well).
    PermissionDenied,
    /// Connections accepted under a CA bundle that has since been replaced (their
    /// certificate may be signed only by the old CA): closed; clients reconnect.
    ClosedAfterCaRotation,
}

impl Refusal {
    pub const ALL: [Refusal; 14] = [
        Refusal::InvalidBatch,
        Refusal::MessageTooLarge,
        Refusal::DecodeBudget,
        Refusal::MessageTimeout,
        Refusal::SequenceTooFarAhead,
        Refusal::ConnectionLimit,
        Refusal::PeerConnectionLimit,
        Refusal::AcceptErrors,
        Refusal::IdleConnectionsClosed,
        Refusal::StoreFailed,
        Refusal::TlsHandshakeFailed,
        Refusal::TlsHandshakeTimeout,
        Refusal::PermissionDenied,
        Refusal::ClosedAfterCaRotation,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Refusal::InvalidBatch => "invalid_batch",
            Refusal::MessageTooLarge => "message_too_large",
            Refusal::DecodeBudget => "decode_budget",
            Refusal::MessageTimeout => "message_timeout",
            Refusal::SequenceTooFarAhead => "sequence_too_far_ahead",
            Refusal::ConnectionLimit => "connection_limit",
            Refusal::PeerConnectionLimit => "peer_connection_limit",
            Refusal::AcceptErrors => "accept_errors",
            Refusal::IdleConnectionsClosed => "idle_connections_closed",
            Refusal::StoreFailed => "store_failed",
            Refusal::TlsHandshakeFailed => "tls_handshake_failed",
            Refusal::TlsHandshakeTimeout => "tls_handshake_timeout",
            Refusal::PermissionDenied => "permission_denied",
            Refusal::ClosedAfterCaRotation => "closed_after_ca_rotation",
        }
    }
}

/// The collector's own counters, shared by every stage.
#[derive(Debug, Default)]
pub struct Counters {
    refused: [AtomicU64; Refusal::ALL.len()],
    pub conflicts: AtomicU64,
    /// Strings cut to the limit in accepted batches.
    pub strings_truncated: AtomicU64,
    pub connections_open: AtomicUsize,
    /// Bytes charged to the decode budget now.
    decoding: AtomicUsize,
    /// Permission refusals by peer certificate (identity and fingerprint); at most
    /// [`MAX_CERTIFICATES_COUNTED`] certificates, the rest under one label.
    denied_by_certificate: Mutex<HashMap<String, u64>>,
}

/// Certificates counted one by one in the permission refusals.
pub const MAX_CERTIFICATES_COUNTED: usize = 1024;
/// Where the refusals of certificates past that go.
pub const OTHER_CERTIFICATES: &str = "(other certificates)";

impl Counters {
    pub fn refuse(&self, r: Refusal) {
        self.refused[r as usize].fetch_add(1, Ordering::Relaxed);
    }

    pub fn refused(&self) -> impl Iterator<Item = (&'static str, u64)> + '_ {
        Refusal::ALL.iter().map(|r| {
            (
                r.as_str(),
                self.refused[*r as usize].load(Ordering::Relaxed),
            )
        })
    }

    /// A permission refusal of a request made with the certificate named `label`.
    pub fn deny(&self, label: &str) {
        self.refuse(Refusal::PermissionDenied);
        let mut by = self
            .denied_by_certificate
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        let key = if by.contains_key(label) || by.len() < MAX_CERTIFICATES_COUNTED {
            label
        } else {
            OTHER_CERTIFICATES
        };
        *by.entry(key.to_string()).or_insert(0) += 1;
    }

    pub fn denied_by_certificate(&self) -> HashMap<String, u64> {
        self.denied_by_certificate
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    pub fn refused_count(&self, r: Refusal) -> u64 {
        self.refused[r as usize].load(Ordering::Relaxed)
    }
}

/// Raises the soft open-files limit to the hard one (a collector holds a socket per
/// agent), and returns the number of connections that fits under it.
pub fn raise_nofile(wanted: usize) -> usize {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: a valid pointer to an rlimit.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) } != 0 {
        return wanted;
    }
    if lim.rlim_cur < lim.rlim_max {
        let raised = libc::rlimit {
            rlim_cur: lim.rlim_max,
            rlim_max: lim.rlim_max,
        };
        // SAFETY: a valid pointer to an rlimit.
        if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &raised) } == 0 {
            tracing::info!(
                from = lim.rlim_cur,
                to = lim.rlim_max,
                "raised the open files limit"
            );
            lim.rlim_cur = lim.rlim_max;
        }
    }
    // Keep room for the database, its WAL, readers' connections and the listener.
    let fits = (lim.rlim_cur as usize).saturating_sub(64).max(16);
    if fits < wanted {
        tracing::warn!(
            max_connections = fits,
            wanted,
            "open files limit allows fewer connections than configured"
        );
    }
    wanted.min(fits)
}

/// Open connections per peer address.
#[derive(Debug, Default)]
struct Peers {
    open: Mutex<HashMap<IpAddr, usize>>,
}

/// A connection's place in the counts, given back when it closes.
struct Slot {
    peer: IpAddr,
    peers: Arc<Peers>,
    counters: Arc<Counters>,
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.counters
            .connections_open
            .fetch_sub(1, Ordering::Relaxed);
        let mut open = self.peers.open.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(n) = open.get_mut(&self.peer) {
            *n -= 1;
            if *n == 0 {
                open.remove(&self.peer);
            }
        }
    }
}

/// An accepted connection: closed when it sends nothing for `idle` (the read side
/// fails with TimedOut, and hyper closes it).
pub struct Conn {
    tcp: vigil_tls::server::Stream,
    info: vigil_tls::PeerInfo,
    idle: Duration,
    deadline: Pin<Box<tokio::time::Sleep>>,
    counters: Arc<Counters>,
    ca: Option<CaWatch>,
    _slot: Slot,
}

/// The CA bundle a TLS connection was accepted under. When the collector's CA changes,
/// the connection is closed at its next read (agents ping every 5 s): its certificate
/// may be signed only by the old CA, and a rotation must lock such clients out, not
/// only refuse their next handshake. A new server certificate alone closes nothing.
struct CaWatch {
    tls: Arc<vigil_tls::Reloading<crate::server::ServerTls>>,
    digest: [u8; 32],
}

impl Connected for Conn {
    type ConnectInfo = vigil_tls::PeerInfo;

    fn connect_info(&self) -> Self::ConnectInfo {
        self.info.clone()
    }
}

impl AsyncRead for Conn {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        if let Some(w) = &self.ca {
            if w.tls.current().is_ok_and(|t| t.ca_digest != w.digest) {
                self.counters.refuse(Refusal::ClosedAfterCaRotation);
                return Poll::Ready(Err(std::io::Error::new(
                    std::io::ErrorKind::PermissionDenied,
                    "the collector's CA changed",
                )));
            }
        }
        let before = buf.filled().len();
        match Pin::new(&mut self.tcp).poll_read(cx, buf) {
            Poll::Ready(Ok(())) => {
                if buf.filled().len() > before {
                    let next = tokio::time::Instant::now() + self.idle;
                    self.deadline.as_mut().reset(next);
                }
                Poll::Ready(Ok(()))
            }
            Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
            Poll::Pending => {
                if self.deadline.as_mut().poll(cx).is_ready() {
                    self.counters.refuse(Refusal::IdleConnectionsClosed);
                    return Poll::Ready(Err(std::io::Error::new(
                        std::io::ErrorKind::TimedOut,
                        "connection idle",
                    )));
                }
                Poll::Pending
            }
        }
    }
}

impl AsyncWrite for Conn {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.tcp).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.tcp).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.tcp.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.tcp).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.tcp).poll_shutdown(cx)
    }
}

/// Is this accept error the process or the system running out of something (file
/// descriptors, memory), which a retry at once cannot fix?
fn exhausted(e: &std::io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(libc::EMFILE | libc::ENFILE | libc::ENOBUFS | libc::ENOMEM)
    )
}

/// Accepts connections until `stop` resolves, applying the connection limits, and
/// hands them to the server through a bounded channel (when full, accepting waits:
/// new clients queue in the kernel's backlog). On EMFILE and the like it backs off
/// (10 ms doubling to 1 s) instead of spinning on a listener that stays readable.
/// With `tls`, each connection's handshake runs in its own task, bounded by
/// `handshake_timeout`, with the material current at its accept; a failed or slow
/// handshake is counted and the connection closed.
pub fn accept_loop(
    listener: tokio::net::TcpListener,
    limits: Limits,
    counters: Arc<Counters>,
    tls: Option<Arc<vigil_tls::Reloading<crate::server::ServerTls>>>,
) -> tokio::sync::mpsc::Receiver<Result<Conn, std::io::Error>> {
    let (tx, rx) = tokio::sync::mpsc::channel(64);
    let peers = Arc::new(Peers::default());
    tokio::spawn(async move {
        let mut backoff = Duration::from_millis(10);
        loop {
            let (tcp, peer): (tokio::net::TcpStream, SocketAddr) = tokio::select! {
                r = listener.accept() => match r {
                    Ok(c) => c,
                    Err(e) => {
                        counters.refuse(Refusal::AcceptErrors);
                        if exhausted(&e) {
                            tracing::warn!(error = %e, wait = ?backoff, "cannot accept connections; backing off");
                            tokio::time::sleep(backoff).await;
                            backoff = (backoff * 2).min(Duration::from_secs(1));
                        }
                        continue;
                    }
                },
                () = tx.closed() => return,
            };
            backoff = Duration::from_millis(10);
            if counters.connections_open.load(Ordering::Relaxed) >= limits.max_connections {
                counters.refuse(Refusal::ConnectionLimit);
                tracing::debug!(%peer, "connection limit reached; closed");
                continue;
            }
            {
                let mut open = peers.open.lock().unwrap_or_else(|e| e.into_inner());
                let n = open.entry(peer.ip()).or_insert(0);
                if *n >= limits.max_connections_per_peer {
                    drop(open);
                    counters.refuse(Refusal::PeerConnectionLimit);
                    tracing::debug!(%peer, "per-peer connection limit reached; closed");
                    continue;
                }
                *n += 1;
            }
            counters.connections_open.fetch_add(1, Ordering::Relaxed);
            let slot = Slot {
                peer: peer.ip(),
                peers: peers.clone(),
                counters: counters.clone(),
            };
            let _ = tcp.set_nodelay(true);
            let conn = |stream, info| Conn {
                tcp: stream,
                info,
                idle: limits.idle_timeout,
                deadline: Box::pin(tokio::time::sleep(limits.idle_timeout)),
                counters: counters.clone(),
                ca: None,
                _slot: slot,
            };
            let Some(tls) = &tls else {
                let c = conn(
                    vigil_tls::server::Stream::Plain(tcp),
                    vigil_tls::PeerInfo::plain(Some(peer)),
                );
                if tx.send(Ok(c)).await.is_err() {
                    return;
                }
                continue;
            };
            let (config, digest) = match tls.current() {
                Ok(t) => (t.config.clone(), t.ca_digest),
                Err(e) => {
                    counters.refuse(Refusal::TlsHandshakeFailed);
                    tracing::warn!(%peer, error = %e, "no usable TLS material; connection closed");
                    continue;
                }
            };
            // The connection holds its slot while it shakes hands (so a flood of
            // silent connections is bounded by the connection limits too).
            let pending = conn(
                vigil_tls::server::Stream::Plain(tcp),
                vigil_tls::PeerInfo::plain(Some(peer)),
            );
            let (tx, counters, timeout) = (tx.clone(), counters.clone(), limits.handshake_timeout);
            let watch = CaWatch {
                tls: tls.clone(),
                digest,
            };
            tokio::spawn(async move {
                let Conn {
                    tcp,
                    idle,
                    deadline,
                    counters: c,
                    _slot,
                    ..
                } = pending;
                let vigil_tls::server::Stream::Plain(tcp) = tcp else {
                    return;
                };
                match vigil_tls::server::handshake(config, tcp, timeout).await {
                    Ok((stream, info)) => {
                        let c = Conn {
                            tcp: stream,
                            info,
                            idle,
                            deadline,
                            counters: c,
                            ca: Some(watch),
                            _slot,
                        };
                        let _ = tx.send(Ok(c)).await;
                    }
                    Err(e) => {
                        let why = match e {
                            vigil_tls::server::HandshakeError::Timeout(_) => {
                                Refusal::TlsHandshakeTimeout
                            }
                            vigil_tls::server::HandshakeError::Failed(_) => {
                                Refusal::TlsHandshakeFailed
                            }
                        };
                        counters.refuse(why);
                        tracing::info!(%peer, error = %e, "connection refused at the TLS handshake");
                    }
                }
            });
        }
    });
    rx
}

/// A request body that follows the gRPC framing as it arrives: refuses a message
/// declared larger than the limit, charges each message in progress to the shared
/// decode budget until it is whole, and fails a message that takes too long.
pub struct Budgeted<B> {
    inner: B,
    limits: Arc<Limits>,
    counters: Arc<Counters>,
    header: [u8; 5],
    header_fill: usize,
    /// Bytes of the current message still to come (0: between messages).
    remaining: usize,
    /// Bytes charged to the budget for the current message.
    charged: usize,
    timer: Option<Pin<Box<tokio::time::Sleep>>>,
    failed: bool,
}

impl<B> Budgeted<B> {
    pub fn new(inner: B, limits: Arc<Limits>, counters: Arc<Counters>) -> Self {
        Self {
            inner,
            limits,
            counters,
            header: [0; 5],
            header_fill: 0,
            remaining: 0,
            charged: 0,
            timer: None,
            failed: false,
        }
    }

    fn release(&mut self) {
        if self.charged > 0 {
            self.counters
                .decoding
                .fetch_sub(self.charged, Ordering::Relaxed);
            self.charged = 0;
        }
        self.timer = None;
    }

    fn fail(&mut self, why: Refusal, status: Status) -> Status {
        self.release();
        self.failed = true;
        self.counters.refuse(why);
        status
    }

    /// Follows the framing through `data`.
    fn account(&mut self, mut data: &[u8]) -> Result<(), Status> {
        while !data.is_empty() {
            if self.remaining == 0 {
                let take = (5 - self.header_fill).min(data.len());
                self.header[self.header_fill..self.header_fill + take]
                    .copy_from_slice(&data[..take]);
                self.header_fill += take;
                data = &data[take..];
                if self.header_fill < 5 {
                    continue;
                }
                self.header_fill = 0;
                let len = u32::from_be_bytes([
                    self.header[1],
                    self.header[2],
                    self.header[3],
                    self.header[4],
                ]) as usize;
                if len > self.limits.max_message_bytes {
                    return Err(self.fail(
                        Refusal::MessageTooLarge,
                        Status::resource_exhausted(format!(
                            "message of {len} bytes: the collector takes at most {} (--max-message-size)",
                            self.limits.max_message_bytes
                        )),
                    ));
                }
                if len == 0 {
                    continue;
                }
                let used = self.counters.decoding.fetch_add(len, Ordering::Relaxed);
                self.charged = len;
                if used + len > self.limits.decode_budget_bytes {
                    return Err(self.fail(
                        Refusal::DecodeBudget,
                        Status::resource_exhausted(
                            "the collector is receiving too much at once (decode memory budget); retry later",
                        ),
                    ));
                }
                self.remaining = len;
                self.timer = Some(Box::pin(tokio::time::sleep(self.limits.message_timeout)));
            } else {
                let take = self.remaining.min(data.len());
                self.remaining -= take;
                data = &data[take..];
                if self.remaining == 0 {
                    self.release();
                }
            }
        }
        Ok(())
    }
}

impl<B> Drop for Budgeted<B> {
    fn drop(&mut self) {
        self.release();
    }
}

impl<B> http_body::Body for Budgeted<B>
where
    B: http_body::Body<Data = bytes::Bytes> + Unpin,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    type Data = bytes::Bytes;
    type Error = Status;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Self::Data>, Self::Error>>> {
        if self.failed {
            return Poll::Ready(None);
        }
        match Pin::new(&mut self.inner).poll_frame(cx) {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(data) = frame.data_ref() {
                    if let Err(status) = self.account(data) {
                        return Poll::Ready(Some(Err(status)));
                    }
                }
                Poll::Ready(Some(Ok(frame)))
            }
            Poll::Ready(Some(Err(e))) => {
                self.release();
                Poll::Ready(Some(Err(Status::from_error(e.into()))))
            }
            Poll::Ready(None) => {
                self.release();
                Poll::Ready(None)
            }
            Poll::Pending => {
                let expired = self
                    .timer
                    .as_mut()
                    .is_some_and(|t| t.as_mut().poll(cx).is_ready());
                if expired {
                    let timeout = self.limits.message_timeout;
                    let status = self.fail(
                        Refusal::MessageTimeout,
                        Status::deadline_exceeded(format!(
                            "a message did not arrive whole within {timeout:?}"
                        )),
                    );
                    return Poll::Ready(Some(Err(status)));
                }
                Poll::Pending
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.failed || self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(len: u32) -> Vec<u8> {
        let mut v = vec![0u8];
        v.extend_from_slice(&len.to_be_bytes());
        v.extend(std::iter::repeat_n(7u8, len as usize));
        v
    }

    #[test]
    fn framing_is_followed_across_chunks_and_the_budget_given_back() {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
            .unwrap();
        let _in_runtime = rt.enter();
        let counters = Arc::new(Counters::default());
        let limits = Arc::new(Limits {
            max_message_bytes: 100,
            decode_budget_bytes: 150,
            ..Default::default()
        });
        let mut b = Budgeted::new((), limits.clone(), counters.clone());
        let two: Vec<u8> = [frame(60), frame(0), frame(90)].concat();
        for chunk in two.chunks(7) {
            b.account(chunk).unwrap();
        }
        assert_eq!(counters.decoding.load(Ordering::Relaxed), 0);
        // Half a message holds its whole declared size until it completes.
        b.account(&frame(80)[..20]).unwrap();
        assert_eq!(counters.decoding.load(Ordering::Relaxed), 80);
        let mut other = Budgeted::new((), limits.clone(), counters.clone());
        assert_eq!(
            other.account(&frame(80)[..10]).unwrap_err().code(),
            tonic::Code::ResourceExhausted
        );
        assert_eq!(counters.refused_count(Refusal::DecodeBudget), 1);
        drop(b);
        assert_eq!(counters.decoding.load(Ordering::Relaxed), 0);
        let mut big = Budgeted::new((), limits, counters.clone());
        assert!(big.account(&frame(101)[..5]).is_err());
        assert_eq!(counters.refused_count(Refusal::MessageTooLarge), 1);
    }
}
