//! The server side: a TLS 1.3 handshake (bounded in time) on an accepted TCP
//! connection, and who the client's certificate names, handed to the gRPC handlers
//! as the request's connect info.
use std::{
    io,
    net::SocketAddr,
    pin::Pin,
    sync::Arc,
    task::{Context, Poll},
    time::Duration,
};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;

use crate::identity::{fingerprint, Identity, IdentityError};

/// The client certificate a connection was opened with.
#[derive(Debug)]
pub struct PeerCertificate {
    pub identity: Result<Identity, IdentityError>,
    /// `sha256:` and the hex digest of the DER certificate.
    pub fingerprint: String,
}

impl PeerCertificate {
    pub fn of(der: &[u8]) -> Self {
        Self {
            identity: Identity::of_certificate(der),
            fingerprint: fingerprint(der),
        }
    }

    /// How counters and logs name it: identity and fingerprint.
    pub fn label(&self) -> String {
        match &self.identity {
            Ok(id) => format!("{id} {}", self.fingerprint),
            Err(_) => format!("(no Vigil identity) {}", self.fingerprint),
        }
    }
}

/// What a handler knows about the other end (in the request's extensions).
#[derive(Clone, Debug, Default)]
pub struct PeerInfo {
    pub remote: Option<SocketAddr>,
    /// True if the connection is TLS.
    pub tls: bool,
    /// The client certificate (TLS with one presented).
    pub certificate: Option<Arc<PeerCertificate>>,
}

impl PeerInfo {
    pub fn plain(remote: Option<SocketAddr>) -> Self {
        Self {
            remote,
            tls: false,
            certificate: None,
        }
    }

    /// The identity of the client certificate, if there is one with a Vigil identity.
    pub fn identity(&self) -> Option<&Identity> {
        self.certificate
            .as_ref()
            .and_then(|c| c.identity.as_ref().ok())
    }

    /// Where it came from, for logs.
    pub fn remote_label(&self) -> String {
        self.remote
            .map_or_else(|| "unknown".to_string(), |a| a.to_string())
    }
}

/// A server connection, plaintext or TLS.
pub type Stream = crate::MaybeTls<tokio_rustls::server::TlsStream<TcpStream>>;

#[derive(Debug, thiserror::Error)]
pub enum HandshakeError {
    #[error("TLS handshake not done within {0:?}")]
    Timeout(Duration),
    #[error("TLS handshake failed: {0}")]
    Failed(#[source] io::Error),
}

/// Runs the server handshake on `tcp`, for at most `timeout`.
pub async fn handshake(
    config: Arc<rustls::ServerConfig>,
    tcp: TcpStream,
    timeout: Duration,
) -> Result<(Stream, PeerInfo), HandshakeError> {
    let remote = tcp.peer_addr().ok();
    let accept = tokio_rustls::TlsAcceptor::from(config).accept(tcp);
    let tls = tokio::time::timeout(timeout, accept)
        .await
        .map_err(|_| HandshakeError::Timeout(timeout))?
        .map_err(HandshakeError::Failed)?;
    let certificate = tls
        .get_ref()
        .1
        .peer_certificates()
        .and_then(|c| c.first())
        .map(|der| Arc::new(PeerCertificate::of(der)));
    Ok((
        Stream::Tls(Box::new(tls)),
        PeerInfo {
            remote,
            tls: true,
            certificate,
        },
    ))
}

/// A connection with what is known about its peer, as tonic's `serve_with_incoming`
/// takes it: handlers find the [`PeerInfo`] in the request's extensions.
pub struct Conn {
    pub stream: Stream,
    pub info: PeerInfo,
    /// Released when the connection closes (a slot among a bounded number).
    guard: Option<Box<dyn Send + Sync>>,
}

impl Conn {
    pub fn new(stream: Stream, info: PeerInfo) -> Self {
        Self {
            stream,
            info,
            guard: None,
        }
    }

    /// Keeps `guard` until the connection is dropped.
    pub fn holding(mut self, guard: impl Send + Sync + 'static) -> Self {
        self.guard = Some(Box::new(guard));
        self
    }
}

impl tonic::transport::server::Connected for Conn {
    type ConnectInfo = PeerInfo;

    fn connect_info(&self) -> PeerInfo {
        self.info.clone()
    }
}

impl AsyncRead for Conn {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_read(cx, buf)
    }
}

impl AsyncWrite for Conn {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().stream).poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_shutdown(cx)
    }
}

/// The [`PeerInfo`] of a request served over [`Conn`] (or the collector's own
/// connection type, which hands out the same).
pub fn peer_of<T>(request: &tonic::Request<T>) -> PeerInfo {
    request
        .extensions()
        .get::<PeerInfo>()
        .cloned()
        .unwrap_or_default()
}
