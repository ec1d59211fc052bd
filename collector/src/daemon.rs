//! The collector daemon's command line and start, shared by the `vigil-collector`
//! binary (what the package's unit runs) and `vigil collector`.
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context as _;
use sd_notify::NotifyState;
use vigil_units::{parse_duration, parse_size};

use crate::{CollectorConfig, Limits};

/// Listen address when none is given; also the CLI's default collector.
pub const DEFAULT_LISTEN: &str = vigil_proto::DEFAULT_COLLECTOR_ADDR;

/// The variable carrying the bound address next to `READY=1` (the service manager
/// ignores variables it does not know; tests and tools read it).
pub const LISTEN_VAR: &str = "VIGIL_LISTEN";

/// Run the collector: agents stream to it, it stores (SQLite) and serves the fleet.
#[derive(Debug, Clone, clap::Args)]
pub struct CollectorArgs {
    /// Address to listen on.
    #[arg(long, default_value = DEFAULT_LISTEN)]
    pub listen: String,
    /// Where the database lives.
    #[arg(long, default_value = "/var/lib/vigil/collector")]
    pub data_dir: PathBuf,
    /// Samples and events older than this are deleted.
    #[arg(long, default_value = "7d", value_parser = parse_duration)]
    pub retention: Duration,
    /// A batch (gRPC message) larger than this is refused (RESOURCE_EXHAUSTED).
    #[arg(long, default_value = "8MiB", value_parser = parse_size)]
    pub max_message_size: u64,
    /// Connections at once; more are closed at accept (also held under the open
    /// files limit, which the collector raises to its hard limit).
    #[arg(long, default_value_t = 16_384)]
    pub max_connections: usize,
    /// Connections at once from one IP address.
    #[arg(long, default_value_t = 256)]
    pub max_connections_per_peer: usize,
    /// Concurrent streams per connection (an agent uses one).
    #[arg(long, default_value_t = 16)]
    pub max_streams_per_connection: u32,
    /// Bytes of messages still arriving, all streams together; a stream whose
    /// message would pass it is refused and retried.
    #[arg(long, default_value = "256MiB", value_parser = parse_size)]
    pub decode_budget: u64,
    /// A message must arrive whole within this long.
    #[arg(long, default_value = "30s", value_parser = parse_duration)]
    pub message_timeout: Duration,
    /// A connection silent this long is closed (agents ping every 5 s).
    #[arg(long, default_value = "5m", value_parser = parse_duration)]
    pub idle_timeout: Duration,
}

impl CollectorArgs {
    /// The limits these flags ask for (each at least 1; sizes held to what fits).
    pub fn limits(&self) -> Limits {
        let clamp = |v: u64| usize::try_from(v).unwrap_or(usize::MAX);
        Limits {
            max_message_bytes: clamp(self.max_message_size).min(u32::MAX as usize),
            max_connections: self.max_connections.max(1),
            max_connections_per_peer: self.max_connections_per_peer.max(1),
            max_streams_per_connection: self.max_streams_per_connection.max(1),
            decode_budget_bytes: clamp(self.decode_budget),
            message_timeout: self.message_timeout,
            idle_timeout: self.idle_timeout,
            ..Default::default()
        }
    }

    /// Listens, reports `READY=1` (with the bound address) and serves until SIGINT or
    /// SIGTERM.
    pub async fn run(self) -> anyhow::Result<()> {
        let mut limits = self.limits();
        // Before anything listens: a socket per agent needs more than the usual 1024.
        limits.max_connections = crate::limits::raise_nofile(limits.max_connections);
        let listen = &self.listen;
        let listener = tokio::net::TcpListener::bind(listen)
            .await
            .with_context(|| format!("listening on {listen}"))?;
        let local = listener.local_addr().context("listener address")?;
        let data_dir = self.data_dir;
        tracing::info!(
            listen = %local,
            data_dir = %data_dir.display(),
            "collector listening on {local}, data in {}",
            data_dir.display()
        );
        // The socket is bound (connections queue until the server polls it): ready.
        let status = format!("collector listening on {local}");
        let listen_var = format!("{LISTEN_VAR}={local}");
        notify(&[
            NotifyState::Ready,
            NotifyState::Status(&status),
            NotifyState::Custom(&listen_var),
        ]);
        let config = CollectorConfig {
            data_dir,
            retention: self.retention,
            limits,
        };
        let shutdown = async {
            if let Err(e) = wait_for_stop().await {
                tracing::warn!(error = %e, "signal handling failed; stopping");
            }
            notify(&[NotifyState::Stopping]);
        };
        crate::serve(listener, config, shutdown).await?;
        tracing::info!("collector stopped");
        Ok(())
    }
}

/// sd_notify(3), a no-op unless the service manager (or a test) set `NOTIFY_SOCKET`;
/// a failure is logged, never fatal.
fn notify(states: &[NotifyState<'_>]) {
    if std::env::var_os("NOTIFY_SOCKET").is_none() {
        return;
    }
    if let Err(e) = sd_notify::notify(false, states) {
        tracing::warn!(error = %e, "sd_notify failed");
    }
}

async fn wait_for_stop() -> anyhow::Result<()> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate()).context("installing the SIGTERM handler")?;
    let mut int = signal(SignalKind::interrupt()).context("installing the SIGINT handler")?;
    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
    }
    Ok(())
}
