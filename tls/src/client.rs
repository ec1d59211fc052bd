//! The client side: a connector for tonic's `Endpoint::connect_with_connector` that
//! dials TCP and, unless plaintext was asked for, runs the TLS 1.3 handshake with
//! whatever client material is current (so a rotated certificate is used from the
//! next connection on).
use std::{
    future::Future,
    io,
    pin::Pin,
    sync::Arc,
    task::{Context, Poll},
};

use hyper_util::rt::TokioIo;
use rustls::pki_types::ServerName;
use tokio::net::TcpStream;

use crate::reload::Reloading;

/// Where to dial and how.
#[derive(Clone)]
pub struct Connector {
    /// host:port
    addr: String,
    tls: Option<(Arc<Reloading<rustls::ClientConfig>>, ServerName<'static>)>,
}

#[derive(Debug, thiserror::Error)]
pub enum AddressError {
    #[error("collector address {0:?}: expected HOST:PORT")]
    Malformed(String),
    #[error("TLS server name {0:?}: {1}")]
    ServerName(String, String),
}

/// The `host:port` of an address written as `host:port`, `[v6]:port` or `http://…`.
pub fn host_port(addr: &str) -> Result<(String, u16), AddressError> {
    let url = if addr.contains("://") {
        addr.to_string()
    } else {
        format!("http://{addr}")
    };
    let uri: http::Uri = url
        .parse()
        .map_err(|_| AddressError::Malformed(addr.into()))?;
    let host = uri
        .host()
        .filter(|h| !h.is_empty())
        .ok_or_else(|| AddressError::Malformed(addr.into()))?;
    let port = uri
        .port_u16()
        .ok_or_else(|| AddressError::Malformed(addr.into()))?;
    let host = host.trim_start_matches('[').trim_end_matches(']');
    Ok((host.to_string(), port))
}

impl Connector {
    /// Plaintext to `addr`.
    pub fn plain(addr: &str) -> Result<Self, AddressError> {
        let (host, port) = host_port(addr)?;
        Ok(Self {
            addr: join(&host, port),
            tls: None,
        })
    }

    /// TLS to `addr`; the server's certificate must name `server_name` (default: the
    /// address's host, a DNS name or an IP address).
    pub fn tls(
        addr: &str,
        server_name: Option<&str>,
        config: Arc<Reloading<rustls::ClientConfig>>,
    ) -> Result<Self, AddressError> {
        let (host, port) = host_port(addr)?;
        let name = server_name.unwrap_or(&host).to_string();
        let server_name = ServerName::try_from(name.clone())
            .map_err(|e| AddressError::ServerName(name, e.to_string()))?;
        Ok(Self {
            addr: join(&host, port),
            tls: Some((config, server_name)),
        })
    }

    /// The URI tonic wants (the connector does the dialling).
    pub fn uri(&self) -> String {
        format!("http://{}", self.addr)
    }
}

fn join(host: &str, port: u16) -> String {
    if host.contains(':') {
        format!("[{host}]:{port}")
    } else {
        format!("{host}:{port}")
    }
}

/// A client connection, plaintext or TLS.
pub type ClientStream = crate::MaybeTls<tokio_rustls::client::TlsStream<TcpStream>>;

impl tower_service::Service<http::Uri> for Connector {
    type Response = TokioIo<ClientStream>;
    type Error = io::Error;
    type Future = Pin<Box<dyn Future<Output = io::Result<Self::Response>> + Send>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, _: http::Uri) -> Self::Future {
        let this = self.clone();
        Box::pin(async move {
            let tcp = TcpStream::connect(&this.addr).await?;
            let _ = tcp.set_nodelay(true);
            let Some((config, name)) = this.tls else {
                return Ok(TokioIo::new(crate::MaybeTls::Plain(tcp)));
            };
            let config = config
                .current()
                .map_err(|e| io::Error::other(format!("no usable TLS material: {e}")))?;
            let tls = tokio_rustls::TlsConnector::from(config)
                .connect(name, tcp)
                .await?;
            Ok(TokioIo::new(crate::MaybeTls::Tls(Box::new(tls))))
        })
    }
}
