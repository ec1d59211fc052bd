//! The Agent API over TCP for tools on other machines (`api_listen`): TLS 1.3 always,
//! and every call must come with an operator certificate signed by the configured CA
//! (URI SAN spiffe://TRUST_DOMAIN/vigil/operator/NAME) or, for tools that cannot do
//! mTLS, the bearer token from `api_tls.token_file`. Read-only, like the API itself.
//! Standard gRPC health checking (grpc.health.v1) and server reflection (v1 and
//! v1alpha) are served next to it, without a token, so generic tools can find and
//! call the API without the .proto file.
use std::{
    path::{Path, PathBuf},
    sync::Arc,
    time::Duration,
};

use anyhow::Context as _;
use tonic::{Request, Status};
use vigil_proto::v1::agent_server::AgentServer;
use vigil_tls::{material::ClientAuth, server::peer_of, Kind, Reloading};

use super::{api::AgentApi, state::StateReader};
use crate::config::ApiTlsConfig;

/// Connections at once on the remote API (more wait in the kernel's backlog).
const MAX_CONNECTIONS: usize = 64;
/// A handshake must be done within this long of the accept.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

pub use vigil_tls::token::read_token;

/// Lets a call through with an operator certificate or the bearer token.
fn authorize(req: &Request<()>, token_file: Option<&Path>) -> Result<(), Status> {
    let peer = peer_of(req);
    if let Some(id) = peer.identity() {
        if id.kind == Kind::Operator {
            tracing::debug!(peer = %peer.remote_label(), identity = %id, "remote API call");
            return Ok(());
        }
    }
    if let Some(path) = token_file {
        if let Some(given) = vigil_tls::token::bearer(req) {
            // Read per call: a rotated token takes effect at once.
            match vigil_tls::token::matches(path, given) {
                Ok(true) => return Ok(()),
                Ok(false) => {}
                Err(e) => tracing::error!("remote API token refused: {e}"),
            }
        }
    }
    tracing::warn!(peer = %peer.remote_label(),
        certificate = %peer.certificate.as_ref().map(|c| c.label()).unwrap_or_else(|| "(none)".into()),
        "remote API call refused: no operator certificate and no valid bearer token");
    Err(Status::unauthenticated(
        "the agent's remote API needs an operator certificate (vigil certs issue --operator NAME) or its bearer token",
    ))
}

/// The files the remote API's TLS uses (defaults under /etc/vigil/tls).
pub fn files(c: &ApiTlsConfig) -> vigil_tls::TlsFiles {
    let dir = Path::new(vigil_tls::config::DEFAULT_DIR);
    vigil_tls::TlsFiles {
        ca: c.ca.clone().unwrap_or_else(|| dir.join("ca.pem")),
        cert: c.cert.clone().unwrap_or_else(|| dir.join("agent-api.pem")),
        key: c.key.clone().unwrap_or_else(|| dir.join("agent-api.key")),
    }
}

/// Listens on `addr` and serves until the task is aborted. Bad TLS material is logged
/// and re-read every second (handshakes fail meanwhile); the agent itself runs on.
pub async fn serve(
    addr: &str,
    tls: &ApiTlsConfig,
    state: StateReader,
) -> anyhow::Result<(std::net::SocketAddr, tokio::task::JoinHandle<()>)> {
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .with_context(|| format!("api_listen: binding {addr}"))?;
    let local = listener.local_addr().context("api_listen address")?;
    let token_file: Option<PathBuf> = tls.token_file.clone();
    if let Some(p) = &token_file {
        if let Err(e) = read_token(p) {
            tracing::error!(
                "api_tls.token_file: {e}; only operator certificates are let in until it is fixed"
            );
        }
    }
    let auth = if token_file.is_some() {
        ClientAuth::Optional
    } else {
        ClientAuth::Required
    };
    let material = Reloading::new(files(tls), "agent API", move |m| {
        vigil_tls::material::server_config(m, auth)
    });
    if let Err(e) = material.current() {
        tracing::error!(listen = %local, error = %e,
            "remote API: no usable TLS material; connections are refused until the files are good");
    }
    tracing::info!(listen = %local, token = token_file.is_some(), "remote agent API on {local} (mTLS{})",
        if token_file.is_some() { " or bearer token" } else { "" });
    let (tx, rx) =
        tokio::sync::mpsc::channel::<Result<vigil_tls::server::Conn, std::io::Error>>(16);
    let slots = Arc::new(tokio::sync::Semaphore::new(MAX_CONNECTIONS));
    tokio::spawn(async move {
        loop {
            let Ok(permit) = slots.clone().acquire_owned().await else {
                return;
            };
            let (tcp, peer) = match listener.accept().await {
                Ok(c) => c,
                Err(e) => {
                    tracing::debug!(error = %e, "remote API accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            };
            let config = match material.current() {
                Ok(c) => c,
                Err(e) => {
                    tracing::warn!(%peer, error = %e, "remote API: no usable TLS material; connection closed");
                    continue;
                }
            };
            let tx = tx.clone();
            tokio::spawn(async move {
                match vigil_tls::server::handshake(config, tcp, HANDSHAKE_TIMEOUT).await {
                    Ok((stream, info)) => {
                        let conn = vigil_tls::server::Conn::new(stream, info).holding(permit);
                        let _ = tx.send(Ok(conn)).await;
                    }
                    Err(e) => {
                        tracing::info!(%peer, error = %e, "remote API: connection refused at the TLS handshake")
                    }
                }
            });
        }
    });
    let (health, health_service) = tonic_health::server::health_reporter();
    health.set_serving::<AgentServer<AgentApi>>().await;
    let reflection_v1 = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(vigil_proto::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .build_v1()
        .context("reflection")?;
    let reflection_v1alpha = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(vigil_proto::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .build_v1alpha()
        .context("reflection")?;
    let api = AgentServer::with_interceptor(AgentApi::new(state), move |req: Request<()>| {
        authorize(&req, token_file.as_deref()).map(|()| req)
    });
    let server = tonic::transport::Server::builder()
        .max_concurrent_streams(16)
        .add_service(api)
        .add_service(health_service)
        .add_service(reflection_v1)
        .add_service(reflection_v1alpha)
        .serve_with_incoming(tokio_stream::wrappers::ReceiverStream::new(rx));
    let task = tokio::spawn(async move {
        if let Err(e) = server.await {
            tracing::error!(error = %e, "remote agent API stopped");
        }
    });
    Ok((local, task))
}
