//! The collector daemon's command line and start, shared by the `vigil-collector`
//! binary (what the package's unit runs) and `vigil collector`.
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context as _;
use sd_notify::NotifyState;
use vigil_units::{parse_duration, parse_size};

use vigil_tls::{config::TlsFlags, Mode, Role, TlsSection};

use crate::config::{CollectorFile, ConfigError, DEFAULT_CONFIG};
use crate::remote_write::Endpoint;
use crate::{CollectorConfig, Limits};

/// Retention when none is given.
pub const DEFAULT_RETENTION: Duration = Duration::from_secs(7 * 86_400);

/// Listen address when none is given; also the CLI's default collector.
pub const DEFAULT_LISTEN: &str = vigil_proto::DEFAULT_COLLECTOR_ADDR;

/// The variable carrying the bound address next to `READY=1` (the service manager
/// ignores variables it does not know; tests and tools read it).
pub const LISTEN_VAR: &str = "VIGIL_LISTEN";

// The `vigil-collector` binary's command line; its man page is made from it too.
/// Vigil's collector: agents stream batches to it, it stores them (SQLite) exactly
/// once and serves the fleet.
#[derive(Debug, clap::Parser)]
#[command(name = "vigil-collector", version)]
pub struct CollectorCli {
    #[command(flatten)]
    pub collector: CollectorArgs,
    /// Log format on stderr: human or json (one object per line).
    #[arg(long, value_enum, default_value = "human")]
    pub log_format: LogFormat,
}

#[derive(Clone, Copy, Debug, clap::ValueEnum)]
pub enum LogFormat {
    Human,
    Json,
}

/// Run the collector: agents stream to it, it stores (SQLite) and serves the fleet.
/// Every setting can come from the config file; a flag overrides it.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct CollectorArgs {
    /// Config file (TOML). Default /etc/vigil/collector.toml, if it exists.
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// Address to listen on [default: 127.0.0.1:7470].
    #[arg(long)]
    pub listen: Option<String>,
    /// Where the database lives [default: /var/lib/vigil/collector].
    #[arg(long)]
    pub data_dir: Option<PathBuf>,
    /// Samples and events older than this are deleted [default: 7d].
    #[arg(long, value_parser = parse_duration, allow_hyphen_values = true)]
    pub retention: Option<Duration>,
    /// A batch (gRPC message) larger than this is refused (RESOURCE_EXHAUSTED)
    /// [default: 8MiB].
    #[arg(long, value_parser = parse_size)]
    pub max_message_size: Option<u64>,
    /// Connections at once; more are closed at accept (also held under the open
    /// files limit, which the collector raises to its hard limit) [default: 16384].
    #[arg(long)]
    pub max_connections: Option<usize>,
    /// Connections at once from one IP address [default: 256].
    #[arg(long)]
    pub max_connections_per_peer: Option<usize>,
    /// Concurrent streams per connection (an agent uses one) [default: 16].
    #[arg(long)]
    pub max_streams_per_connection: Option<u32>,
    /// Bytes of messages still arriving, all streams together; a stream whose
    /// message would pass it is refused and retried [default: 256MiB].
    #[arg(long, value_parser = parse_size)]
    pub decode_budget: Option<u64>,
    /// A message must arrive whole within this long [default: 30s].
    #[arg(long, value_parser = parse_duration, allow_hyphen_values = true)]
    pub message_timeout: Option<Duration>,
    /// A connection silent this long is closed (agents ping every 5 s) [default: 5m].
    #[arg(long, value_parser = parse_duration, allow_hyphen_values = true)]
    pub idle_timeout: Option<Duration>,
    /// A TLS handshake must be done within this long of the connection [default: 10s].
    #[arg(long, value_parser = parse_duration, allow_hyphen_values = true)]
    pub handshake_timeout: Option<Duration>,
    /// A bearer token file (0600) that lets tools without a client certificate read
    /// the Fleet API (overrides fleet_token_file).
    #[arg(long, value_name = "FILE")]
    pub fleet_token_file: Option<PathBuf>,
    /// Serve /metrics on this TCP address (overrides metrics_listen; plain HTTP, so
    /// loopback or a trusted network) [default: off].
    #[arg(long, value_name = "ADDR")]
    pub metrics_listen: Option<String>,
    /// Forward every stored host sample to this Prometheus remote-write endpoint
    /// (http:// or https://HOST:PORT/PATH, https verified against the system's CAs;
    /// repeatable; adds to the file's [[remote_write]], where a CA and a client
    /// certificate can be given).
    #[arg(long, value_name = "URL")]
    pub remote_write: Vec<String>,
    /// Send the agents' alerts and findings to this Alertmanager (its base URL,
    /// http://HOST:9093; overrides alerting.alertmanager); maintenance windows become
    /// silences there.
    #[arg(long, value_name = "URL")]
    pub alertmanager: Option<String>,
    /// Without an Alertmanager: POST the alerts as JSON to this URL (overrides
    /// alerting.webhook).
    #[arg(long, value_name = "URL")]
    pub alert_webhook: Option<String>,
    /// SLO files (OpenSLO v1 subset) over the agents' SLIs (overrides slo_dir)
    /// [default: /etc/vigil/slo.d].
    #[arg(long, value_name = "DIR")]
    pub slo_dir: Option<PathBuf>,
    /// How often the SLOs' page and ticket burn-rate alerts are evaluated (overrides
    /// alerting.slo_evaluation_interval) [default: 1m].
    #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
    pub slo_evaluation_interval: Option<Duration>,
    /// Keep the store in this PostgreSQL database, which several collectors may share
    /// (overrides postgres_url; postgres://USER[:PASSWORD]@HOST[:PORT]/DBNAME)
    /// [default: the embedded SQLite store in the data directory].
    #[arg(
        long,
        value_name = "URL",
        env = "VIGIL_POSTGRES_URL",
        hide_env_values = true
    )]
    pub postgres_url: Option<String>,
    #[command(flatten)]
    pub tls: TlsFlags,
    /// Check the config file (with the flags over it) and the TLS material, say what
    /// would run, and exit: 1 on anything that would stop the collector starting.
    #[arg(long)]
    pub check_config: bool,
}

/// What the collector runs with: the file, the flags over it, the defaults under both.
#[derive(Debug, Clone)]
pub struct Settings {
    pub listen: String,
    pub data_dir: PathBuf,
    pub retention: Duration,
    pub limits: Limits,
    pub tls: TlsSection,
    pub fleet_token_file: Option<PathBuf>,
    pub metrics_listen: Option<String>,
    pub remote_write: Vec<Endpoint>,
    pub postgres_url: Option<String>,
    pub alerting: crate::alerting::AlertingConfig,
    pub slo_dir: PathBuf,
}

impl Settings {
    /// Where the data is, for messages (a PostgreSQL URL without its password).
    pub fn store_shown(&self) -> String {
        match &self.postgres_url {
            Some(url) => format!("PostgreSQL {}", crate::pg::redact(url)),
            None => self.data_dir.display().to_string(),
        }
    }
}

impl CollectorArgs {
    fn config_path(&self) -> PathBuf {
        self.config.clone().unwrap_or_else(|| DEFAULT_CONFIG.into())
    }

    /// Reads the config file and puts the flags over it.
    pub fn load(&self) -> Result<Settings, ConfigError> {
        let file = CollectorFile::load(&self.config_path(), self.config.is_some())?;
        self.resolve(file)
    }

    /// The flags over `file`, over the defaults; each limit at least 1.
    pub fn resolve(&self, file: CollectorFile) -> Result<Settings, ConfigError> {
        let d = Limits::default();
        let l = &file.limits;
        let clamp = |v: u64| usize::try_from(v).unwrap_or(usize::MAX);
        let limits = Limits {
            max_message_bytes: self
                .max_message_size
                .or(l.max_message_size)
                .map_or(d.max_message_bytes, |v| {
                    clamp(v).clamp(1, u32::MAX as usize)
                }),
            max_connections: self
                .max_connections
                .or(l.max_connections)
                .unwrap_or(d.max_connections)
                .max(1),
            max_connections_per_peer: self
                .max_connections_per_peer
                .or(l.max_connections_per_peer)
                .unwrap_or(d.max_connections_per_peer)
                .max(1),
            max_streams_per_connection: self
                .max_streams_per_connection
                .or(l.max_streams_per_connection)
                .unwrap_or(d.max_streams_per_connection)
                .max(1),
            decode_budget_bytes: self
                .decode_budget
                .or(l.decode_budget)
                .map_or(d.decode_budget_bytes, clamp),
            message_timeout: self
                .message_timeout
                .or(l.message_timeout)
                .unwrap_or(d.message_timeout),
            idle_timeout: self
                .idle_timeout
                .or(l.idle_timeout)
                .unwrap_or(d.idle_timeout),
            handshake_timeout: self
                .handshake_timeout
                .or(l.handshake_timeout)
                .unwrap_or(d.handshake_timeout),
            batch: crate::validate::BatchLimits {
                samples: l.max_samples_per_batch.unwrap_or(d.batch.samples).max(1),
                syscalls: l.max_syscalls_per_batch.unwrap_or(d.batch.syscalls).max(1),
                events: l.max_events_per_batch.unwrap_or(d.batch.events).max(1),
                findings: l.max_findings_per_batch.unwrap_or(d.batch.findings).max(1),
                labels: l.max_labels_per_finding.unwrap_or(d.batch.labels),
                string_bytes: l.max_string_bytes.map_or(d.batch.string_bytes, clamp),
            },
            ..d
        };
        let file_name = self.config_path();
        let problem = |problem: String| ConfigError {
            file: file_name.clone(),
            problems: vec![problem],
        };
        for (name, v) in [
            ("message_timeout", limits.message_timeout),
            ("idle_timeout", limits.idle_timeout),
            ("handshake_timeout", limits.handshake_timeout),
        ] {
            if v.is_zero() {
                return Err(problem(format!("limits.{name}: must be more than 0")));
            }
        }
        use crate::validate::{MAX_STRING_LIMIT, MIN_STRING};
        let n = limits.batch.string_bytes;
        if !(MIN_STRING..=MAX_STRING_LIMIT).contains(&n) {
            return Err(problem(format!(
                "limits.max_string_bytes: {n} bytes is outside {MIN_STRING} bytes to 1MiB"
            )));
        }
        let mut remote_write = Vec::new();
        for (i, r) in file.remote_write.iter().enumerate() {
            let field = |name: &str| format!("remote_write[{i}].{name}");
            let client = match (&r.tls_cert, &r.tls_key) {
                (Some(c), Some(k)) => Some((c.clone(), k.clone())),
                (None, None) => None,
                (Some(_), None) => {
                    return Err(problem(format!(
                        "{}: a client certificate needs its key (tls_key)",
                        field("tls_cert")
                    )))
                }
                (None, Some(_)) => {
                    return Err(problem(format!(
                        "{}: a key needs its certificate (tls_cert)",
                        field("tls_key")
                    )))
                }
            };
            if !r.url.starts_with("https://") && (r.tls_ca.is_some() || client.is_some()) {
                return Err(problem(format!(
                    "{}: {:?}: TLS settings are for https:// URLs",
                    field("url"),
                    r.url
                )));
            }
            remote_write.push(Endpoint {
                url: r.url.clone(),
                ca: r.tls_ca.clone(),
                client,
            });
        }
        remote_write.extend(self.remote_write.iter().map(|url| Endpoint {
            url: url.clone(),
            ..Default::default()
        }));
        for (i, e) in remote_write.iter().enumerate() {
            let url = &e.url;
            // The URL names the endpoint's cursor and its series on /metrics.
            if remote_write[..i].iter().any(|o| o.url == *url) {
                return Err(problem(format!("remote_write: {url:?} is listed twice")));
            }
            let Some(rest) = url
                .strip_prefix("http://")
                .or_else(|| url.strip_prefix("https://"))
            else {
                return Err(problem(format!(
                    "remote_write: {url:?}: the URL must start with http:// or https://"
                )));
            };
            if rest.is_empty() || rest.starts_with('/') {
                return Err(problem(format!("remote_write: {url:?} names no host")));
            }
            if let Err(why) = e.tls_config() {
                return Err(problem(format!("remote_write: {url:?}: {why}")));
            }
        }
        let postgres_url = self.postgres_url.clone().or(file.postgres_url);
        if let Some(url) = &postgres_url {
            if let Err(e) = url.parse::<postgres::Config>() {
                return Err(problem(format!(
                    "postgres_url: {:?}: {e}",
                    crate::pg::redact(url)
                )));
            }
        }
        let alerting = crate::alerting::AlertingConfig {
            alertmanager: self.alertmanager.clone().or(file.alerting.alertmanager),
            webhook: self.alert_webhook.clone().or(file.alerting.webhook),
            resend: file.alerting.resend.unwrap_or(Duration::from_secs(60)),
            slo_evaluation_interval: self
                .slo_evaluation_interval
                .or(file.alerting.slo_evaluation_interval)
                .unwrap_or(Duration::from_secs(60)),
        };
        for (field, url) in [
            ("alerting.alertmanager", &alerting.alertmanager),
            ("alerting.webhook", &alerting.webhook),
        ] {
            if let Some(url) = url {
                if !(url.starts_with("http://") || url.starts_with("https://")) {
                    return Err(problem(format!(
                        "{field}: {url:?}: the URL must start with http:// or https://"
                    )));
                }
            }
        }
        if alerting.resend < Duration::from_secs(1) {
            return Err(problem("alerting.resend: at least 1s".to_string()));
        }
        if alerting.slo_evaluation_interval < Duration::from_secs(1) {
            return Err(problem(
                "alerting.slo_evaluation_interval: at least 1s".to_string(),
            ));
        }
        Ok(Settings {
            postgres_url,
            listen: self
                .listen
                .clone()
                .or(file.listen)
                .unwrap_or_else(|| DEFAULT_LISTEN.into()),
            data_dir: self
                .data_dir
                .clone()
                .or(file.data_dir)
                .unwrap_or_else(|| "/var/lib/vigil/collector".into()),
            retention: self
                .retention
                .or(file.retention)
                .unwrap_or(DEFAULT_RETENTION),
            limits,
            tls: file.tls.with_flags(&self.tls),
            fleet_token_file: self.fleet_token_file.clone().or(file.fleet_token_file),
            metrics_listen: self.metrics_listen.clone().or(file.metrics_listen),
            remote_write,
            alerting,
            slo_dir: self
                .slo_dir
                .clone()
                .or(file.slo_dir)
                .unwrap_or_else(|| "/etc/vigil/slo.d".into()),
        })
    }

    /// Listens, reports `READY=1` (with the bound address) and serves until SIGINT or
    /// SIGTERM.
    pub async fn run(self) -> anyhow::Result<()> {
        let settings = self.load()?;
        if self.check_config {
            let file = self.config_path();
            let absent = if file.exists() {
                ""
            } else {
                " (absent: defaults)"
            };
            if settings.tls.mode == Mode::Mtls {
                let files = settings.tls.files(Role::Collector);
                vigil_tls::Material::load(&files).map_err(|e| {
                    anyhow::anyhow!(
                        "TLS: {e} (make them with `vigil certs init` and `vigil certs issue --collector NAME`)"
                    )
                })?;
            }
            println!(
                "config {}{absent}: OK; would listen on {} (tls {}), data in {}",
                file.display(),
                settings.listen,
                settings.tls.mode.as_str(),
                settings.store_shown()
            );
            return Ok(());
        }
        let tls = match settings.tls.mode {
            Mode::Off => {
                tracing::warn!(
                    "TLS is off (tls.mode = \"off\"): batches and fleet queries travel in \
                     plaintext, and any client can send batches as any agent"
                );
                None
            }
            Mode::Mtls => {
                let files = settings.tls.files(Role::Collector);
                // With a Fleet token, a client may come without a certificate (the
                // token then speaks for it, for the Fleet API only).
                let auth = match settings.fleet_token_file {
                    Some(_) => vigil_tls::material::ClientAuth::Optional,
                    None => vigil_tls::material::ClientAuth::Required,
                };
                if let Some(p) = &settings.fleet_token_file {
                    if let Err(e) = vigil_tls::token::read_token(p) {
                        tracing::error!("fleet_token_file: {e}; only operator certificates can read the fleet until it is fixed");
                    }
                }
                let tls = crate::server::server_tls(files.clone(), auth);
                if let Err(e) = tls.current() {
                    anyhow::bail!(
                        "TLS: {e} (make a CA and certificates with `vigil certs init` and \
                         `vigil certs issue --collector NAME`, set [tls] ca, cert and key in \
                         the config, or set tls.mode = \"off\" for plaintext)"
                    );
                }
                Some(tls)
            }
        };
        let store = settings.store_shown();
        let mut limits = settings.limits;
        // Before anything listens: a socket per agent needs more than the usual 1024.
        limits.max_connections = crate::limits::raise_nofile(limits.max_connections);
        let listen = &settings.listen;
        let listener = tokio::net::TcpListener::bind(listen)
            .await
            .with_context(|| format!("listening on {listen}"))?;
        let local = listener.local_addr().context("listener address")?;
        let data_dir = settings.data_dir;
        let mode = settings.tls.mode.as_str();
        tracing::info!(
            listen = %local,
            %store,
            tls = mode,
            "collector listening on {local} (tls {mode}), data in {store}"
        );
        // The store opens (and its schema is brought up to date) before READY, so a
        // database that cannot be reached stops the start with its reason. Off the
        // async threads: a PostgreSQL client blocks on a runtime of its own.
        if let Some(url) = settings.postgres_url.clone() {
            tokio::task::spawn_blocking(move || {
                crate::Store::open_at(&crate::StoreLocation::Postgres(url)).map(drop)
            })
            .await
            .context("opening the store")?
            .context("opening the store")?;
        }
        // The socket is bound (connections queue until the server polls it): ready.
        let status = format!("collector listening on {local} (tls {mode})");
        let listen_var = format!("{LISTEN_VAR}={local}");
        notify(&[
            NotifyState::Ready,
            NotifyState::Status(&status),
            NotifyState::Custom(&listen_var),
        ]);
        let config = CollectorConfig {
            data_dir,
            retention: settings.retention,
            limits,
            tls,
            fleet_token_file: settings.fleet_token_file,
            metrics_listen: settings.metrics_listen,
            remote_write: settings.remote_write,
            postgres: settings.postgres_url,
            alerting: settings.alerting,
            slo_dir: settings.slo_dir,
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

#[cfg(test)]
mod tests {
    use super::*;

    /// The settings from a collector.toml holding `text`, or the error's text.
    fn load(text: &str) -> Result<Settings, String> {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("collector.toml");
        std::fs::write(&path, text).unwrap();
        CollectorArgs {
            config: Some(path),
            ..Default::default()
        }
        .load()
        .map_err(|e| e.to_string())
    }

    #[test]
    fn remote_write_endpoints_and_their_tls_settings_are_checked_at_load() {
        let dir = tempfile::tempdir().unwrap();
        let pem = dir.path().join("not-pem.txt");
        std::fs::write(&pem, "hello\n").unwrap();
        let ok = load("[[remote_write]]\nurl = \"http://127.0.0.1:9090/api/v1/write\"\n").unwrap();
        assert_eq!(ok.remote_write.len(), 1);
        assert!(!ok.remote_write[0].is_https());
        // https with the system's CAs.
        let ok =
            load("[[remote_write]]\nurl = \"https://prom.example:9090/api/v1/write\"\n").unwrap();
        assert!(ok.remote_write[0].tls_config().unwrap().is_some());
        for (text, expect) in [
            (
                "[[remote_write]]\nurl = \"ftp://x/\"\n".to_string(),
                "must start with http:// or https://",
            ),
            (
                "[[remote_write]]\nurl = \"http://a:1/w\"\ntls_ca = \"/etc/ssl/certs/ca-certificates.crt\"\n".into(),
                "remote_write[0].url",
            ),
            (
                "[[remote_write]]\nurl = \"https://a:1/w\"\ntls_cert = \"/x.pem\"\n".into(),
                "remote_write[0].tls_cert: a client certificate needs its key",
            ),
            (
                "[[remote_write]]\nurl = \"https://a:1/w\"\ntls_key = \"/x.key\"\n".into(),
                "remote_write[0].tls_key: a key needs its certificate",
            ),
            (
                "[[remote_write]]\nurl = \"https://a:1/w\"\ntls_ca = \"/nonexistent/ca.pem\"\n".into(),
                "reading /nonexistent/ca.pem",
            ),
            (
                format!("[[remote_write]]\nurl = \"https://a:1/w\"\ntls_ca = \"{}\"\n", pem.display()),
                "no certificate in it",
            ),
            (
                "[[remote_write]]\nurl = \"http://a:1/w\"\n[[remote_write]]\nurl = \"http://a:1/w\"\n".into(),
                "listed twice",
            ),
        ] {
            let e = load(&text).expect_err(&text);
            assert!(e.contains(expect), "{text}: {e}");
        }
    }
}
