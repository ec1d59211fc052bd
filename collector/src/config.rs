//! The collector's configuration: a TOML file (default /etc/vigil/collector.toml; every
//! field optional), then command-line flags on top. A bad file is refused with every
//! problem listed, each with the file, the field and the reason.
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Deserializer};
use vigil_tls::TlsSection;
use vigil_units::{parse_duration, parse_size};

pub const DEFAULT_CONFIG: &str = "/etc/vigil/collector.toml";

fn duration<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
    let s = String::deserialize(d)?;
    parse_duration(&s)
        .map(Some)
        .map_err(serde::de::Error::custom)
}

/// A size as a string ("8MiB") or a number of bytes.
fn size<'de, D: Deserializer<'de>>(d: D) -> Result<Option<u64>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Size {
        Bytes(u64),
        Text(String),
    }
    match Size::deserialize(d)? {
        Size::Bytes(n) => Ok(Some(n)),
        Size::Text(s) => parse_size(&s).map(Some).map_err(serde::de::Error::custom),
    }
}

/// collector.toml.
#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct CollectorFile {
    /// Address to listen on. Default "127.0.0.1:7470".
    pub listen: Option<String>,
    /// Where the database lives. Default "/var/lib/vigil/collector".
    pub data_dir: Option<PathBuf>,
    /// Keep the store in this PostgreSQL database instead (several collectors may
    /// share one): "postgres://USER[:PASSWORD]@HOST[:PORT]/DBNAME". Default: none (the
    /// embedded SQLite store in data_dir).
    pub postgres_url: Option<String>,
    /// Samples and events older than this are deleted. Default "7d".
    #[serde(deserialize_with = "duration")]
    pub retention: Option<Duration>,
    /// A file holding a bearer token (0600, at least 16 characters, read at each call)
    /// that lets a tool without a client certificate read the Fleet API. Agents'
    /// streams always need their certificate. Default: none.
    pub fleet_token_file: Option<PathBuf>,
    /// Serve /metrics (OpenMetrics text; Prometheus text to clients that ask for it)
    /// on this TCP address, plain HTTP. Default: none (off).
    pub metrics_listen: Option<String>,
    /// Prometheus remote-write endpoints every stored host sample is forwarded to
    /// (`[[remote_write]]` tables with `url`). Default: none.
    pub remote_write: Vec<RemoteWriteFile>,
    pub alerting: AlertingFile,
    /// SLO files (OpenSLO v1 subset, *.yaml) over the agents' SLIs, read at each `vigil
    /// slo`. Default "/etc/vigil/slo.d".
    pub slo_dir: Option<PathBuf>,
    pub limits: LimitsFile,
    pub tls: TlsSection,
}

/// `[alerting]`: where the agents' alerts and findings are routed.
#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct AlertingFile {
    /// Alertmanager's base URL ("http://127.0.0.1:9093"): alerts and findings go to
    /// its API v2, and maintenance windows are silences there. Default: none.
    pub alertmanager: Option<String>,
    /// Without an Alertmanager: a URL that takes the alerts as JSON POSTs (retried,
    /// a give-up counted). Default: none.
    pub webhook: Option<String>,
    /// How often firing alerts are sent again (Alertmanager resolves an alert that is
    /// not refreshed within four periods). Default "1m".
    #[serde(deserialize_with = "duration")]
    pub resend: Option<Duration>,
    /// How often the SLOs (slo_dir) are evaluated for their page and ticket burn-rate
    /// alerts, which go where the agents' alerts go. Default "1m".
    #[serde(deserialize_with = "duration")]
    pub slo_evaluation_interval: Option<Duration>,
}

/// `[[remote_write]]`: one endpoint.
#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct RemoteWriteFile {
    /// e.g. "http://prometheus:9090/api/v1/write" or "https://...".
    pub url: String,
    /// https: PEM bundle the receiver's certificate must chain to. Default: the
    /// system's (/etc/ssl/certs/ca-certificates.crt).
    pub tls_ca: Option<PathBuf>,
    /// https: PEM certificate presented to a receiver that asks for one (with tls_key).
    pub tls_cert: Option<PathBuf>,
    /// https: its private key (PEM).
    pub tls_key: Option<PathBuf>,
}

/// `[limits]`: what one client may cost (defaults in `vigil-collector --help`).
#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct LimitsFile {
    #[serde(deserialize_with = "size")]
    pub max_message_size: Option<u64>,
    pub max_connections: Option<usize>,
    pub max_connections_per_peer: Option<usize>,
    pub max_streams_per_connection: Option<u32>,
    #[serde(deserialize_with = "size")]
    pub decode_budget: Option<u64>,
    #[serde(deserialize_with = "duration")]
    pub message_timeout: Option<Duration>,
    #[serde(deserialize_with = "duration")]
    pub idle_timeout: Option<Duration>,
    #[serde(deserialize_with = "duration")]
    pub handshake_timeout: Option<Duration>,
    /// Items one batch may carry; more and it is refused (INVALID_ARGUMENT).
    pub max_samples_per_batch: Option<usize>,
    pub max_syscalls_per_batch: Option<usize>,
    pub max_events_per_batch: Option<usize>,
    pub max_findings_per_batch: Option<usize>,
    /// Labels (details) per finding; more and the batch is refused.
    pub max_labels_per_finding: Option<usize>,
    /// Bytes per string in a batch; longer ones are cut and marked (not refused).
    #[serde(deserialize_with = "size")]
    pub max_string_bytes: Option<u64>,
}

/// The agent's: every problem with where it is; a bad config exits 64.
pub use vigil_units::ConfigError;

impl CollectorFile {
    /// Reads `path` (`explicit`: named by the user, so it must exist).
    pub fn load(path: &Path, explicit: bool) -> Result<Self, ConfigError> {
        let err = |problems: Vec<String>| ConfigError {
            file: path.to_path_buf(),
            problems,
        };
        let text = match std::fs::read_to_string(path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound && !explicit => {
                return Ok(Self::default())
            }
            Err(e) => return Err(err(vec![format!("cannot read: {e}")])),
        };
        Self::parse_all(&text).map_err(err)
    }

    /// The text of a file; the error names the line (every problem, one per line).
    pub fn parse(text: &str) -> Result<Self, String> {
        Self::parse_all(text).map_err(|p| p.join("\n"))
    }

    /// The text of a file, or every problem in it (line, field, reason).
    pub fn parse_all(text: &str) -> Result<Self, Vec<String>> {
        match vigil_units::parse_toml::<Self>(text) {
            (Some(c), _) => Ok(c),
            (None, problems) => Err(problems),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_shipped_example_parses_and_names_only_defaults() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../packaging/collector.toml");
        let file = CollectorFile::load(&path, true).unwrap();
        let resolved = crate::daemon::CollectorArgs::default()
            .resolve(file)
            .unwrap();
        let defaults = crate::daemon::CollectorArgs::default()
            .resolve(CollectorFile::default())
            .unwrap();
        let seen = |s: crate::daemon::Settings| {
            format!(
                "{} {:?} {:?} {:?} {:?} {:?}",
                s.listen,
                s.data_dir,
                s.retention,
                s.limits,
                s.tls.mode,
                s.tls.files(vigil_tls::Role::Collector)
            )
        };
        assert_eq!(seen(resolved), seen(defaults));
    }

    #[test]
    fn fields_are_read_and_bad_ones_named_with_their_line() {
        let f = CollectorFile::parse(
            "listen = \"0.0.0.0:7470\"\n[limits]\nmax_message_size = \"1MiB\"\nhandshake_timeout = \"3s\"\nmax_events_per_batch = 5\n[tls]\nmode = \"off\"\n",
        )
        .unwrap();
        let limits = crate::daemon::CollectorArgs::default()
            .resolve(f.clone())
            .unwrap()
            .limits;
        assert_eq!(limits.batch.events, 5);
        assert_eq!(limits.batch.findings, crate::validate::MAX_FINDINGS);
        assert_eq!(f.limits.max_message_size, Some(1 << 20));
        assert_eq!(f.limits.handshake_timeout, Some(Duration::from_secs(3)));
        assert_eq!(f.tls.mode, vigil_tls::Mode::Off);
        let e = CollectorFile::parse("[tls]\nmode = \"none\"\n").unwrap_err();
        assert!(e.contains("line 2") && e.contains("none"), "{e}");
        let e = CollectorFile::parse("[limits]\nmessage_timeout = \"99999999999999999999d\"\n")
            .unwrap_err();
        assert!(e.contains("line 2"), "{e}");
        let e = CollectorFile::parse("lissen = \"x\"\n").unwrap_err();
        assert!(e.contains("lissen"), "{e}");
        let strings = |v: &str| {
            let f = CollectorFile::parse(&format!("[limits]\nmax_string_bytes = {v}\n")).unwrap();
            crate::daemon::CollectorArgs::default()
                .resolve(f)
                .map(|s| s.limits.batch.string_bytes)
                .map_err(|e| e.to_string())
        };
        assert_eq!(strings("\"16KiB\""), Ok(16 << 10));
        assert_eq!(strings("64"), Ok(64));
        let f = CollectorFile::parse("[limits]\nmax_labels_per_finding = 3\n").unwrap();
        let limits = crate::daemon::CollectorArgs::default()
            .resolve(f)
            .unwrap()
            .limits;
        assert_eq!(limits.batch.labels, 3);
        for bad in ["63", "\"2MiB\""] {
            let e = strings(bad).unwrap_err();
            assert!(e.contains("limits.max_string_bytes"), "{e}");
        }
    }

    proptest::proptest! {
        #[test]
        fn any_text_is_a_config_or_an_error(text in "\\PC*") {
            let _ = CollectorFile::parse(&text);
        }
    }
}
