//! The agent's local query API (`vigil.v1.Agent`) on a unix socket, and the client
//! the CLI uses to reach it.
use std::{
    path::{Path, PathBuf},
    pin::Pin,
};

use anyhow::Context as _;
use tokio_stream::{Stream, StreamExt as _};
use tonic::{transport::Channel, Request, Response, Status};
use vigil_proto::v1::{
    agent_client::AgentClient,
    agent_server::{Agent, AgentServer},
    live_event, AlertsRequest, AlertsResponse, FindingsRequest, FindingsResponse, FollowRequest,
    HistoryRequest, HistoryResponse, LatestStatsResponse, LiveEvent, RetransmitsRequest,
    RetransmitsResponse, StatsRequest, SyscallLatencyRequest, SyscallLatencyResponse,
};

use super::state::StateReader;
use crate::export::convert;

/// Findings per page by default; a page also stops at about PAGE_BYTES.
const FINDINGS_PAGE: usize = 500;
const PAGE_BYTES: usize = 1 << 20;

pub use crate::config::DEFAULT_SOCKET;

pub(crate) struct AgentApi {
    state: StateReader,
}

impl AgentApi {
    pub(crate) fn new(state: StateReader) -> Self {
        Self { state }
    }
}

#[tonic::async_trait]
impl Agent for AgentApi {
    async fn history(
        &self,
        request: Request<HistoryRequest>,
    ) -> Result<Response<HistoryResponse>, Status> {
        let r = request.into_inner();
        Ok(Response::new(self.state.read().history(
            r.since_unix_ms,
            r.until_unix_ms,
            r.limit,
        )))
    }

    async fn stats(
        &self,
        _: Request<StatsRequest>,
    ) -> Result<Response<LatestStatsResponse>, Status> {
        let st = self.state.read();
        let Some(latest) = st.latest() else {
            return Err(Status::unavailable(
                "no sample yet: the first arrives one interval after start",
            ));
        };
        Ok(Response::new(LatestStatsResponse {
            host: Some(st.identity().clone()),
            metrics: Some(latest.clone()),
            agent: Some(st.agent_self().clone()),
        }))
    }

    async fn syscall_latency(
        &self,
        request: Request<SyscallLatencyRequest>,
    ) -> Result<Response<SyscallLatencyResponse>, Status> {
        let window = f64::from(request.into_inner().window_secs.max(1));
        let st = self.state.read();
        let (latency, covered_secs) = st.latency_over(window);
        let syscalls = latency
            .iter()
            .map(|(nr, h)| convert::syscall_latency(*nr, h))
            .collect();
        Ok(Response::new(SyscallLatencyResponse {
            syscalls,
            covered_secs,
        }))
    }

    async fn retransmits(
        &self,
        request: Request<RetransmitsRequest>,
    ) -> Result<Response<RetransmitsResponse>, Status> {
        let limit = match request.into_inner().limit {
            0 => usize::MAX,
            n => n as usize,
        };
        let st = self.state.read();
        Ok(Response::new(RetransmitsResponse {
            retransmits: st.retransmits(limit).cloned().collect(),
        }))
    }

    async fn findings(
        &self,
        request: Request<FindingsRequest>,
    ) -> Result<Response<FindingsResponse>, Status> {
        let r = request.into_inner();
        let size = match r.page_size {
            0 => FINDINGS_PAGE,
            n => (n as usize).min(5 * FINDINGS_PAGE),
        };
        // The token is the absolute number (since the agent started) of the next
        // finding to look at: findings pushed out meanwhile don't shift the pages.
        let from: u64 = match r.page_token.as_str() {
            "" => 0,
            t => t
                .parse()
                .map_err(|_| Status::invalid_argument("bad page token"))?,
        };
        let st = self.state.read();
        let mut findings = Vec::new();
        let mut bytes = 0usize;
        let mut next_page_token = String::new();
        for (number, f) in st.findings_from(from) {
            if f.time_unix_ms < r.since_unix_ms {
                continue;
            }
            if findings.len() >= size || bytes > PAGE_BYTES {
                next_page_token = number.to_string();
                break;
            }
            bytes += prost::Message::encoded_len(f);
            findings.push(f.clone());
        }
        Ok(Response::new(FindingsResponse {
            findings,
            forgotten: st.findings_forgotten(),
            next_page_token,
        }))
    }

    async fn alerts(
        &self,
        _request: Request<AlertsRequest>,
    ) -> Result<Response<AlertsResponse>, Status> {
        Ok(Response::new(self.state.read().alerts().clone()))
    }

    type FollowStream = Pin<Box<dyn Stream<Item = Result<LiveEvent, Status>> + Send + 'static>>;

    async fn follow(
        &self,
        _: Request<FollowRequest>,
    ) -> Result<Response<Self::FollowStream>, Status> {
        // Also tells the agent loop to start draining events on its short clock.
        let rx = self.state.read().subscribe();
        let stream = tokio_stream::wrappers::BroadcastStream::new(rx).map(|item| {
            let event = match item {
                Ok(e) => e,
                // The follower fell behind the bounded buffer: say how much it missed.
                Err(tokio_stream::wrappers::errors::BroadcastStreamRecvError::Lagged(n)) => {
                    live_event::Event::Missed(n)
                }
            };
            Ok(LiveEvent { event: Some(event) })
        });
        Ok(Response::new(Box::pin(stream)))
    }
}

/// gRPC health checking (`grpc.health.v1`) for the socket: SERVING (for "" and
/// `vigil.v1.Agent`) while the loop publishes an interval at least every three
/// intervals, NOT_SERVING when it stalls (what `vigil health` and a Kubernetes
/// liveness probe look at). Checked every second.
async fn health_service(
    state: StateReader,
) -> tonic_health::pb::health_server::HealthServer<impl tonic_health::pb::health_server::Health> {
    use tonic_health::ServingStatus;
    let (reporter, service) = tonic_health::server::health_reporter();
    reporter.set_serving::<AgentServer<AgentApi>>().await;
    reporter
        .set_service_status("", ServingStatus::Serving)
        .await;
    tokio::spawn(async move {
        let mut was = true;
        loop {
            tokio::time::sleep(std::time::Duration::from_secs(1)).await;
            let alive = state.read().loop_alive();
            if alive != was {
                was = alive;
                let status = if alive {
                    ServingStatus::Serving
                } else {
                    tracing::error!("the agent's loop has published no interval for three intervals: health is NOT_SERVING");
                    ServingStatus::NotServing
                };
                reporter.set_service_status("", status).await;
                reporter
                    .set_service_status(
                        <AgentServer<AgentApi> as tonic::server::NamedService>::NAME,
                        status,
                    )
                    .await;
            }
        }
    });
    service
}

/// Serves the API on `path` (replacing a stale socket file) until the task is aborted.
/// Each client's credentials (SO_PEERCRED) are checked at accept: root, the agent's
/// own user, and members of `group` (primary or supplementary, from /proc/PID/status)
/// are served; anyone else is closed at once and logged (the socket's mode keeps them
/// out already; this holds even if the mode is loosened by hand).
pub async fn serve_unix(
    path: &Path,
    group: &str,
    state: StateReader,
) -> anyhow::Result<tokio::task::JoinHandle<()>> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    if path.exists() {
        // A live agent would answer; a stale file from a crash would not.
        if tokio::net::UnixStream::connect(path).await.is_ok() {
            anyhow::bail!("another agent is serving {}", path.display());
        }
        std::fs::remove_file(path)
            .with_context(|| format!("removing the stale socket {}", path.display()))?;
    }
    let listener = tokio::net::UnixListener::bind(path)
        .with_context(|| format!("binding {}", path.display()))?;
    let gid = restrict_socket(path, group)?;
    tracing::info!(socket = %path.display(), group, "agent API on {}", path.display());
    let (tx, rx) = tokio::sync::mpsc::channel::<std::io::Result<tokio::net::UnixStream>>(16);
    let own_uid = nix::unistd::geteuid().as_raw();
    tokio::spawn(async move {
        loop {
            let stream = match listener.accept().await {
                Ok((s, _)) => s,
                Err(e) => {
                    tracing::debug!(error = %e, "agent API accept failed");
                    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                    continue;
                }
            };
            match peer_allowed(&stream, own_uid, gid) {
                Ok(who) => tracing::info!(peer = %who, "agent API client"),
                Err(who) => {
                    tracing::warn!(peer = %who, "agent API client refused: not root, not the agent's user, not in the API group");
                    continue;
                }
            }
            if tx.send(Ok(stream)).await.is_err() {
                return;
            }
        }
    });
    let health = health_service(state.clone()).await;
    let server = tonic::transport::Server::builder()
        .add_service(AgentServer::new(AgentApi { state }))
        .add_service(health)
        .serve_with_incoming(tokio_stream::wrappers::ReceiverStream::new(rx));
    Ok(tokio::spawn(async move {
        if let Err(e) = server.await {
            tracing::error!(error = %e, "agent API stopped");
        }
    }))
}

/// The groups of process `pid` (its Groups: line), primary included.
fn groups_of(pid: i32) -> Vec<u32> {
    crate::metrics::parse::read_lossy(Path::new(&format!("/proc/{pid}/status")))
        .and_then(|s| {
            s.lines().find_map(|l| {
                l.strip_prefix("Groups:").map(|g| {
                    g.split_whitespace()
                        .filter_map(|n| n.parse().ok())
                        .collect()
                })
            })
        })
        .unwrap_or_default()
}

/// Whether the client at the other end may use the API: `Ok(who)` or `Err(who)`.
fn peer_allowed(
    stream: &tokio::net::UnixStream,
    own_uid: u32,
    group: Option<u32>,
) -> Result<String, String> {
    let Ok(cred) = stream.peer_cred() else {
        return Err("unknown (no SO_PEERCRED)".into());
    };
    let (uid, gid, pid) = (cred.uid(), cred.gid(), cred.pid().unwrap_or(0));
    let who = format!("uid {uid} gid {gid} pid {pid}");
    if uid == 0 || uid == own_uid {
        return Ok(who);
    }
    if let Some(g) = group {
        if gid == g || (pid > 0 && groups_of(pid).contains(&g)) {
            return Ok(who);
        }
    }
    Err(who)
}

/// The socket is 0660, owned by root and the API group when there is one: the API
/// shows every process's command line, so it is not for every local user. Its
/// directory, if the agent made it, is 0750 (daemons run with umask 077) with the
/// group let through. Returns the group's id (None: no such group, root only).
fn restrict_socket(path: &Path, group: &str) -> anyhow::Result<Option<u32>> {
    use std::os::unix::fs::PermissionsExt as _;
    let gid = match nix::unistd::Group::from_name(group) {
        Ok(Some(g)) => Some(g.gid.as_raw()),
        _ => {
            tracing::info!(group, "no group {group:?}: the agent API is for root only");
            None
        }
    };
    if let Some(gid) = gid {
        std::os::unix::fs::chown(path, None, Some(gid))
            .with_context(|| format!("giving {} to group {group}", path.display()))?;
        if let Some(dir) = path.parent() {
            let _ = std::os::unix::fs::chown(dir, None, Some(gid));
            if let Ok(m) = std::fs::metadata(dir) {
                // Let the group reach the socket (search), nothing more.
                let mode = m.permissions().mode() | 0o010;
                let _ = std::fs::set_permissions(dir, std::fs::Permissions::from_mode(mode));
            }
        }
    }
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o660))
        .with_context(|| format!("setting the mode of {}", path.display()))?;
    Ok(gid)
}

/// Adds `authorization: Bearer TOKEN` to every call when there is a token.
#[derive(Clone, Default)]
pub struct Bearer(Option<tonic::metadata::MetadataValue<tonic::metadata::Ascii>>);

impl tonic::service::Interceptor for Bearer {
    fn call(&mut self, mut req: Request<()>) -> Result<Request<()>, Status> {
        if let Some(v) = &self.0 {
            req.metadata_mut().insert("authorization", v.clone());
        }
        Ok(req)
    }
}

impl Bearer {
    /// The token in `path` (checked as the servers check it), or none.
    pub fn from_file(path: Option<&Path>) -> anyhow::Result<Self> {
        let Some(path) = path else {
            return Ok(Self(None));
        };
        let token = vigil_tls::token::read_token(path).map_err(anyhow::Error::msg)?;
        Ok(Self(Some(
            format!("Bearer {token}").parse().context("the token")?,
        )))
    }
}

/// A client of an agent's API, local or remote.
pub type ApiClient = AgentClient<tonic::service::interceptor::InterceptedService<Channel, Bearer>>;

/// Which agent to ask: the local one on its socket, or one on another machine
/// (`--agent HOST:PORT`, its `api_listen`) over TLS with an operator certificate or a
/// bearer token.
#[derive(Clone, Debug, clap::Args)]
pub struct AgentTarget {
    /// The local agent's API socket.
    #[arg(long, default_value = DEFAULT_SOCKET)]
    pub socket: PathBuf,
    /// Ask the agent at HOST:PORT (its api_listen) instead of the local one.
    #[arg(long, value_name = "HOST:PORT")]
    pub agent: Option<String>,
    /// With --agent: a file holding the agent's bearer token, used instead of a client
    /// certificate.
    #[arg(long, value_name = "FILE", requires = "agent")]
    pub token_file: Option<PathBuf>,
    #[command(flatten)]
    pub tls: vigil_tls::config::TlsFlags,
}

impl AgentTarget {
    /// The local agent at `socket`.
    pub fn local(socket: &Path) -> Self {
        Self {
            socket: socket.to_path_buf(),
            agent: None,
            token_file: None,
            tls: Default::default(),
        }
    }
}

/// A client for the agent `target` names.
pub async fn connect_to(target: &AgentTarget) -> anyhow::Result<ApiClient> {
    let (channel, bearer) = dial(target).await?;
    Ok(AgentClient::with_interceptor(channel, bearer))
}

/// A channel to the agent `target` names, with the credentials its calls carry.
async fn dial(target: &AgentTarget) -> anyhow::Result<(Channel, Bearer)> {
    let Some(addr) = &target.agent else {
        return Ok((dial_socket(&target.socket).await?, Bearer(None)));
    };
    use vigil_tls::{client::Connector, material, Reloading, Role, TlsSection};
    let tls = TlsSection::default().with_flags(&target.tls);
    let bearer = Bearer::from_file(target.token_file.as_deref())?;
    let files = tls.files(Role::Operator);
    let material = if bearer.0.is_some() {
        // No client certificate: the token speaks for the caller.
        let config = material::client_config_without_certificate(&files.ca)?;
        Reloading::fixed(config, "operator")
    } else {
        Reloading::new(files, "operator", material::client_config)
    };
    if let Err(e) = material.current() {
        anyhow::bail!(
            "TLS: {e}\n(an agent's remote API wants an operator certificate: --tls-ca, --tls-cert, --tls-key, or --token-file)"
        );
    }
    let connector = Connector::tls(addr, None, material)?;
    let channel = tonic::transport::Endpoint::from_shared(connector.uri())?
        .connect_timeout(std::time::Duration::from_secs(5))
        .connect_with_connector(connector)
        .await
        .with_context(|| format!("connecting to the agent's remote API at {addr}"))?;
    Ok((channel, bearer))
}

/// The agent's health as `vigil health` reports it: Ok("SERVING") or an error saying
/// what is wrong (no agent on the socket, or the agent says it is not serving).
pub async fn health(target: &AgentTarget) -> anyhow::Result<String> {
    use tonic_health::pb::{health_check_response::ServingStatus, HealthCheckRequest};
    let check = async {
        // The same channel and credentials as the Agent API's.
        let (channel, bearer) = dial(target).await?;
        let mut health =
            tonic_health::pb::health_client::HealthClient::with_interceptor(channel, bearer);
        let response = health
            .check(HealthCheckRequest {
                service: String::new(),
            })
            .await
            .context("the agent's health check failed")?;
        anyhow::Ok(response.into_inner().status())
    };
    let status = tokio::time::timeout(std::time::Duration::from_secs(5), check)
        .await
        .map_err(|_| {
            anyhow::anyhow!("the agent did not answer within 5 s (stopped, or its loop is stuck)")
        })??;
    match status {
        ServingStatus::Serving => Ok("SERVING".into()),
        other => anyhow::bail!(
            "the agent says {} (its loop has published no interval for three intervals; see its log)",
            other.as_str_name()
        ),
    }
}

/// A client for the agent at `path`.
pub async fn connect(path: &Path) -> anyhow::Result<ApiClient> {
    Ok(AgentClient::with_interceptor(
        dial_socket(path).await?,
        Bearer(None),
    ))
}

async fn dial_socket(path: &Path) -> anyhow::Result<Channel> {
    let path: PathBuf = path.to_path_buf();
    let shown = path.display().to_string();
    // The URI is required by tonic but unused: the connector dials the socket.
    let channel = tonic::transport::Endpoint::try_from("http://[::]:0")?
        .connect_with_connector(tower::service_fn(move |_| {
            let path = path.clone();
            async move {
                tokio::net::UnixStream::connect(path)
                    .await
                    .map(hyper_util::rt::TokioIo::new)
            }
        }))
        .await
        .with_context(|| {
            format!("no agent answering on {shown} (is `vigil agent` running? see --socket)")
        })?;
    Ok(channel)
}

#[cfg(test)]
mod tests {
    use vigil_proto::v1::{live_event::Event, Finding};

    use super::*;

    fn page(api: &AgentApi, token: String) -> FindingsResponse {
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        rt.block_on(api.findings(Request::new(FindingsRequest {
            since_unix_ms: 0,
            page_size: 0,
            page_token: token,
        })))
        .unwrap()
        .into_inner()
    }

    #[test]
    fn findings_come_in_pages_that_survive_findings_being_forgotten() {
        let state = super::super::state::StateWriter::new(Default::default(), 10.0);
        let push = |n: usize, from: usize| {
            let mut st = state.write();
            for i in from..from + n {
                st.push_event(Event::Finding(Finding {
                    rule: format!("r{i}"),
                    time_unix_ms: 1,
                    ..Default::default()
                }));
            }
        };
        push(1200, 0);
        let api = AgentApi {
            state: state.reader(),
        };
        let first = page(&api, String::new());
        assert_eq!(first.findings.len(), FINDINGS_PAGE);
        // 10,000 more arrive: everything of the first answer is forgotten.
        push(super::super::state::RECENT_FINDINGS, 1200);
        let second = page(&api, first.next_page_token);
        // The next page starts at the oldest finding still kept, not 500 past it.
        assert_eq!(second.findings[0].rule, "r1200");
        assert_eq!(second.forgotten, 1200);
        let mut seen = FINDINGS_PAGE + second.findings.len();
        let mut token = second.next_page_token;
        while !token.is_empty() {
            let p = page(&api, token);
            seen += p.findings.len();
            token = p.next_page_token;
        }
        assert_eq!(seen, FINDINGS_PAGE + super::super::state::RECENT_FINDINGS);
        let bad = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap()
            .block_on(api.findings(Request::new(FindingsRequest {
                since_unix_ms: 0,
                page_size: 0,
                page_token: "nonsense".into(),
            })));
        assert_eq!(bad.unwrap_err().code(), tonic::Code::InvalidArgument);
    }
}
