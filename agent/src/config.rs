//! The agent's configuration: a TOML file (every field optional, defaults below),
//! then command-line flags on top. A bad file is refused with every problem listed,
//! each with the file, the field and the reason.
use std::{
    path::{Path, PathBuf},
    time::Duration,
};

use serde::Deserialize;

use crate::units::parse_duration;

/// Where `vigil agent` looks for its config when `--config` isn't given. A missing
/// file there means all defaults; a missing file named by `--config` is an error.
/// Where the agent serves its API unless told otherwise.
pub const DEFAULT_SOCKET: &str = "/run/vigil/agent.sock";

pub const DEFAULT_CONFIG: &str = "/etc/vigil/agent.toml";

/// The local API's group unless the config names another.
pub const API_GROUP: &str = "vigil";

/// A duration written as in the CLI: "10s", "500ms", "2m".
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Interval(pub Duration);

impl<'de> Deserialize<'de> for Interval {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        parse_duration(&s)
            .map(Interval)
            .map_err(serde::de::Error::custom)
    }
}

#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct AgentConfig {
    /// How often host metrics are sampled and a batch is sent. Default "10s"; at least "1s".
    pub interval: Interval,
    /// Collector address (host:port), or several (a list, or separated by commas): the
    /// agent streams to the first and fails over to the next when one cannot be reached
    /// or its stream breaks. None: nothing is streamed. Default: none.
    #[serde(deserialize_with = "one_or_more_addresses")]
    pub collector: Option<String>,
    /// This agent's id at the collector. Default: /etc/machine-id, else the hostname.
    pub agent_id: Option<String>,
    /// Unix socket of the local query API. Default "/run/vigil/agent.sock".
    pub socket: PathBuf,
    /// Serve the local query API. Default true.
    pub api: bool,
    /// The group whose members may use the local API besides root (the socket is
    /// 0660 root:GROUP; each client's uid and groups are checked with SO_PEERCRED).
    /// Default "vigil".
    pub api_group: String,
    /// Also serve the Agent API on this TCP address for tools on other machines
    /// (TLS 1.3; an operator certificate or the bearer token of api_tls.token_file
    /// required). Default: none.
    pub api_listen: Option<String>,
    pub api_tls: ApiTlsConfig,
    /// Serve /metrics (OpenMetrics text; Prometheus text to clients that ask for it)
    /// on this TCP address, plain HTTP: keep it on loopback or a trusted network.
    /// Default: none (off); "127.0.0.1:9471" is the usual choice.
    pub metrics_listen: Option<String>,
    /// Also expose the host metrics under node_exporter's names, labels and units
    /// (node_cpu_seconds_total, node_memory_MemAvailable_bytes, ...), read at scrape
    /// time, so node_exporter dashboards and alert rules work unchanged. Default true.
    pub node_names: bool,
    /// The agent's own state. Default "/var/lib/vigil/agent".
    pub data_dir: PathBuf,
    /// The host's root file system as the agent sees it: "/" on the host; in a
    /// container, where the host's / is mounted (e.g. "/host", read-only). The host's
    /// /proc, /sys and /etc are read under it, so the agent reports the host's
    /// hostname, machine-id, OS, processes, containers and file systems. Default "/".
    pub host_root: PathBuf,
    /// Rows of the per-interval summary printed to stdout; 0 prints none. Default 0.
    pub summary_rows: usize,
    /// On SIGTERM/SIGINT: how long the agent may take to flush its last batch to the
    /// spool and send what the collector hasn't acked before it exits. Default "5s".
    pub shutdown_timeout: Interval,
    pub probes: ProbesConfig,
    pub spool: SpoolConfig,
    pub detect: DetectConfig,
    /// Alert rule files (*.yaml, *.yml) evaluated with the built-in alerts each
    /// interval; a rule with a built-in alert's name and severity replaces it,
    /// `enabled: false` turns one off. Read again on SIGHUP (a bad file keeps the
    /// running rules). A missing directory means the built-in set. Default
    /// "/etc/vigil/alerts.d".
    pub alerts_dir: PathBuf,
    /// After a notified resolution, a re-fire of the same alert and series within
    /// this window is held: recorded and counted, not notified. Default "1h".
    pub alert_damping: Interval,
    /// SLI files (*.yaml, *.yml): good and total event counts per interval, in each
    /// batch and on /metrics (vigil_sli_good_total, vigil_sli_total). Read again on
    /// SIGHUP (a bad file keeps the running SLIs). A missing directory means none.
    /// Default "/etc/vigil/sli.d".
    pub sli_dir: PathBuf,
    pub budget: BudgetConfig,
    pub incident: IncidentConfig,
    pub log: LogConfig,
    /// How the agent talks to the collector: mutual TLS by default (paths default to
    /// /etc/vigil/tls/ca.pem, agent.pem, agent.key); `mode = "off"` for plaintext.
    pub tls: vigil_tls::TlsSection,
}

/// `[api_tls]`: the remote API's TLS. Paths default to /etc/vigil/tls/ca.pem (the CA
/// that operator certificates chain to), agent-api.pem and agent-api.key (this agent's
/// server certificate: `vigil certs issue --agent-api HOST`).
#[derive(Clone, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, default)]
pub struct ApiTlsConfig {
    pub ca: Option<PathBuf>,
    pub cert: Option<PathBuf>,
    pub key: Option<PathBuf>,
    /// A file holding a bearer token (mode 0600, at least 16 characters) that lets a
    /// tool without a client certificate call the API. Read at each call. Default:
    /// none (certificates only).
    pub token_file: Option<PathBuf>,
}

/// How the daemon writes its log (stderr; journald adds the time under systemd).
#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct LogConfig {
    /// "human" (default) or "json" (one object per line, for log shippers). The
    /// `--log-format` flag overrides it. The level comes from `VIGIL_LOG` (default
    /// "info" for the daemons).
    pub format: LogFormat,
}

#[derive(Clone, Copy, Debug, Default, Deserialize, PartialEq, Eq, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    #[default]
    Human,
    Json,
}

impl AgentConfig {
    /// The log format a config file asks for, read before logging starts; any
    /// problem with the file is left to the real load, which reports it.
    pub fn log_format_of(path: &Path) -> Option<LogFormat> {
        let text = std::fs::read_to_string(path).ok()?;
        Some(Self::parse(path, &text).ok()?.log.format)
    }
}

#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct DetectConfig {
    /// Process and security events, the process table and the detection rules.
    /// Default true.
    pub enabled: bool,
    /// Rule files (*.yaml, *.yml) loaded next to the built-in rules; a rule with a
    /// built-in rule's id replaces it. Read again on SIGHUP. A missing directory means
    /// the built-in rules only. Default "/etc/vigil/rules.d".
    pub rules_dir: PathBuf,
}

impl Default for DetectConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            rules_dir: PathBuf::from("/etc/vigil/rules.d"),
        }
    }
}

/// When the spool calls fsync.
#[derive(Clone, Copy, Debug, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Fsync {
    /// After every batch: a power cut loses nothing that was spooled.
    Batch,
    /// At most every `fsync_interval`: a power cut can lose that window of batches.
    Interval,
    /// Never: the kernel writes back on its own (usually within 30 s).
    Never,
}

#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct SpoolConfig {
    /// Disk bound of the spool (data_dir/spool). When full, the oldest segment goes
    /// first, acked or not, and the batches dropped are counted. Default 268435456.
    pub max_bytes: u64,
    /// Size at which a segment file is closed and a new one started. Default 4194304.
    pub segment_bytes: u64,
    /// "batch", "interval" or "never". Default "batch".
    pub fsync: Fsync,
    /// With fsync = "interval": the longest window a power cut can lose. Default "5s".
    pub fsync_interval: Interval,
}

impl Default for SpoolConfig {
    fn default() -> Self {
        Self {
            max_bytes: 256 << 20,
            segment_bytes: 4 << 20,
            fsync: Fsync::Batch,
            fsync_interval: Interval(Duration::from_secs(5)),
        }
    }
}

/// `[incident]`: incident snapshots the agent takes itself (`vigil incident snapshot`
/// from its own history) when a critical alert fires, into data_dir/incidents.
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct IncidentConfig {
    /// Take one when an alert of severity critical starts firing. One at a time: a
    /// critical alert that fires while one is being written is counted
    /// (`incident_snapshots.skipped_busy` in `vigil stats --json`), not queued.
    /// Default false.
    pub auto_snapshot: bool,
    /// How far before the alert fired the snapshot starts (the agent keeps its last
    /// 360 intervals: at the default 10 s interval, an hour). Default "15m".
    pub before: Interval,
    /// At most this many snapshots kept: the oldest go first. Default 10.
    pub max_snapshots: u32,
    /// At most this many bytes of snapshots kept: the oldest go first (a snapshot
    /// bigger than this alone is not kept, and counted failed). Default 104857600.
    pub max_bytes: u64,
}

impl Default for IncidentConfig {
    fn default() -> Self {
        Self {
            auto_snapshot: false,
            before: Interval(Duration::from_secs(15 * 60)),
            max_snapshots: 10,
            max_bytes: 100 << 20,
        }
    }
}

/// `[budget]`: the agent's own CPU, and what it gives up to stay within it.
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct BudgetConfig {
    /// The agent's CPU budget, percent of one core: its own user and system time, plus
    /// its eBPF programs' run time with count_bpf. Over it for over_for, the agent sheds
    /// its costliest optional probe (syscall latency: histograms and slow-syscall events;
    /// detection's checks go on), raises VigilAgentOverCPUBudget, and takes the probe
    /// back once it has stayed under half the budget for over_for. Default 10.
    pub cpu_percent: f64,
    /// How long over (or back under) before it acts. Default "1m".
    pub over_for: Interval,
    /// Count the eBPF programs' run time too: the agent turns the kernel's BPF run-time
    /// statistics on (two clock reads per program run) for as long as it runs. Default
    /// false.
    pub count_bpf: bool,
}

impl Default for BudgetConfig {
    fn default() -> Self {
        Self {
            cpu_percent: 10.0,
            over_for: Interval(Duration::from_secs(60)),
            count_bpf: false,
        }
    }
}

#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct ProbesConfig {
    /// Measure syscall latency and report slow syscalls. Default true.
    pub syscalls: bool,
    /// Report TCP retransmits. Default true.
    pub retransmits: bool,
    /// Syscalls at least this slow become events. Default "10ms".
    pub slow_threshold: Interval,
    /// Slow-syscall events allowed per CPU per second; more are counted. Default 1000.
    pub slow_events_per_sec: u64,
    /// Event ring buffer size in bytes: a power of two, at least 4096. Default 262144.
    pub ring_buffer_bytes: u32,
}

impl Default for AgentConfig {
    fn default() -> Self {
        Self {
            interval: Interval(Duration::from_secs(10)),
            collector: None,
            agent_id: None,
            socket: PathBuf::from(DEFAULT_SOCKET),
            api: true,
            api_group: API_GROUP.to_string(),
            api_listen: None,
            api_tls: ApiTlsConfig::default(),
            metrics_listen: None,
            node_names: true,
            data_dir: PathBuf::from("/var/lib/vigil/agent"),
            host_root: PathBuf::from("/"),
            summary_rows: 0,
            shutdown_timeout: Interval(Duration::from_secs(5)),
            probes: ProbesConfig::default(),
            spool: SpoolConfig::default(),
            detect: DetectConfig::default(),
            alerts_dir: PathBuf::from("/etc/vigil/alerts.d"),
            alert_damping: Interval(Duration::from_secs(3600)),
            sli_dir: PathBuf::from("/etc/vigil/sli.d"),
            budget: BudgetConfig::default(),
            incident: IncidentConfig::default(),
            log: LogConfig::default(),
            tls: vigil_tls::TlsSection::default(),
        }
    }
}

impl Default for ProbesConfig {
    fn default() -> Self {
        Self {
            syscalls: true,
            retransmits: true,
            slow_threshold: Interval(Duration::from_millis(10)),
            slow_events_per_sec: 1000,
            ring_buffer_bytes: 256 * 1024,
        }
    }
}

/// Every problem found in a config, with where it is (shared with the collector, so a
/// bad config exits 64 from either).
pub use crate::units::ConfigError;

impl AgentConfig {
    /// Reads `path` (`explicit`: named by the user, so it must exist).
    pub fn load(path: &Path, explicit: bool) -> Result<Self, ConfigError> {
        let err = |p: String| ConfigError {
            file: path.to_path_buf(),
            problems: vec![p],
        };
        let text = match std::fs::read_to_string(path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound && !explicit => {
                return Ok(Self::default())
            }
            Err(e) => return Err(err(format!("cannot read: {e}"))),
        };
        Self::parse(path, &text)
    }

    /// Parses and checks the text of the file at `path` (named in the errors).
    pub fn parse(path: &Path, text: &str) -> Result<Self, ConfigError> {
        let (config, problems) = crate::units::parse_toml::<Self>(text);
        let Some(config) = config else {
            return Err(ConfigError {
                file: path.to_path_buf(),
                problems,
            });
        };
        config.validate().map_err(|problems| ConfigError {
            file: path.to_path_buf(),
            problems,
        })?;
        Ok(config)
    }

    /// Checks the values serde can't: returns every problem, not just the first.
    pub fn validate(&self) -> Result<(), Vec<String>> {
        let mut problems = Vec::new();
        if !(self.budget.cpu_percent.is_finite() && self.budget.cpu_percent > 0.0) {
            problems.push(format!(
                "budget.cpu_percent: {} is not a positive percentage of one core",
                self.budget.cpu_percent
            ));
        }
        if self.budget.over_for.0 < Duration::from_secs(1) {
            problems.push("budget.over_for: at least 1s".into());
        }
        if self.interval.0 < Duration::from_secs(1) {
            problems.push(format!(
                "interval: must be at least 1s (got {:?})",
                self.interval.0
            ));
        }
        if !self.host_root.is_absolute() || !self.host_root.join("proc").is_dir() {
            problems.push(format!(
                "host_root: {} must be an absolute path with the host's /proc under it (mount it: -v /:/host:ro)",
                self.host_root.display()
            ));
        }
        let rb = self.probes.ring_buffer_bytes;
        if rb < 4096 || !rb.is_power_of_two() {
            problems.push(format!(
                "probes.ring_buffer_bytes: must be a power of two of at least 4096 (got {rb})"
            ));
        }
        if self.probes.slow_events_per_sec == 0 {
            problems.push("probes.slow_events_per_sec: must be at least 1 (use a high slow_threshold to send none)".into());
        }
        let sp = &self.spool;
        if sp.segment_bytes < 4096 {
            problems.push(format!(
                "spool.segment_bytes: must be at least 4096 (got {})",
                sp.segment_bytes
            ));
        }
        if sp.max_bytes < sp.segment_bytes.saturating_mul(2) {
            problems.push(format!(
                "spool.max_bytes: must be at least twice spool.segment_bytes ({} < 2 x {})",
                sp.max_bytes, sp.segment_bytes
            ));
        }
        if sp.fsync == Fsync::Interval && sp.fsync_interval.0.is_zero() {
            problems.push(
                "spool.fsync_interval: must be more than 0 (or use fsync = \"batch\")".into(),
            );
        }
        if self.incident.auto_snapshot && self.incident.max_snapshots == 0 {
            problems.push(
                "incident.max_snapshots: must be at least 1 with auto_snapshot = true".into(),
            );
        }
        if self.shutdown_timeout.0.is_zero() {
            problems.push("shutdown_timeout: must be more than 0".into());
        }
        if let Some(a) = &self.api_listen {
            if a.parse::<std::net::SocketAddr>().is_err() {
                problems.push(format!(
                    "api_listen: {a:?} is not an IP address and port (e.g. \"0.0.0.0:7471\")"
                ));
            }
        }
        if let Some(a) = &self.metrics_listen {
            if a.parse::<std::net::SocketAddr>().is_err() {
                problems.push(format!(
                    "metrics_listen: {a:?} is not an IP address and port (e.g. \"127.0.0.1:9471\")"
                ));
            }
        }
        if let Some(c) = &self.collector {
            if c.split(',').all(|a| a.trim().is_empty()) {
                problems.push("collector: empty address (leave it out to stream nowhere)".into());
            } else {
                for a in c.split(',').map(str::trim) {
                    if a.is_empty() {
                        problems.push(format!("collector: {c:?}: an empty address in the list"));
                    } else if let Err(why) = check_host_port(a) {
                        problems.push(format!("collector: {a:?}: {why} (e.g. \"collector.example:7470\" or \"10.0.0.5:7470\")"));
                    }
                }
                let all = collector_addresses(c);
                if let Some(twice) = all.iter().enumerate().find(|(i, a)| all[..*i].contains(a)) {
                    problems.push(format!("collector: {:?} is listed twice", twice.1));
                }
            }
        }
        if problems.is_empty() {
            Ok(())
        } else {
            Err(problems)
        }
    }
}

/// The collector addresses of a `collector` setting, in order ("a:7470, b:7470").
pub fn collector_addresses(setting: &str) -> Vec<String> {
    setting
        .split(',')
        .map(str::trim)
        .filter(|a| !a.is_empty())
        .map(str::to_string)
        .collect()
}

/// `collector = "a:7470"`, `"a:7470,b:7470"` or `["a:7470", "b:7470"]`, kept as one
/// comma-separated setting.
fn one_or_more_addresses<'de, D: serde::Deserializer<'de>>(
    d: D,
) -> Result<Option<String>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum OneOrMore {
        One(String),
        More(Vec<String>),
    }
    Ok(Some(match OneOrMore::deserialize(d)? {
        OneOrMore::One(s) => s,
        OneOrMore::More(v) => v.join(","),
    }))
}

/// A collector address as the agent dials it: HOST:PORT (a name, an IPv4 address or a
/// bracketed IPv6 one, and a port from 1 to 65535), no scheme.
fn check_host_port(addr: &str) -> Result<(), String> {
    if addr.contains("://") {
        return Err("give HOST:PORT without a scheme (TLS is set by [tls])".into());
    }
    let Some((host, port)) = addr.rsplit_once(':') else {
        return Err("no port".into());
    };
    match port.parse::<u16>() {
        Ok(p) if p > 0 => {}
        _ => return Err(format!("`{port}` is not a port (1 to 65535)")),
    }
    let host = host
        .strip_prefix('[')
        .and_then(|h| h.strip_suffix(']'))
        .map_or(host, |h| h);
    if host.is_empty() {
        return Err("no host".into());
    }
    if host.parse::<std::net::IpAddr>().is_ok() {
        return Ok(());
    }
    let name_ok = host.len() <= 253
        && host.split('.').all(|l| {
            !l.is_empty()
                && l.len() <= 63
                && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
                && !l.starts_with('-')
        });
    if name_ok {
        Ok(())
    } else {
        Err(format!("`{host}` is not a host name or an IP address"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<AgentConfig, ConfigError> {
        // One file per call: the tests run in parallel.
        static NEXT: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let dir = std::env::temp_dir().join(format!("vigil-config-{}-{n}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("agent.toml");
        std::fs::write(&path, text).unwrap();
        let result = AgentConfig::load(&path, true);
        let _ = std::fs::remove_dir_all(&dir);
        result
    }

    #[test]
    fn collector_addresses_are_checked_at_start() {
        for ok in [
            "collector.example:7470",
            "10.0.0.5:7470",
            "[::1]:7470",
            "localhost:1",
        ] {
            assert!(check_host_port(ok).is_ok(), "{ok}");
        }
        for bad in [
            "nohost",
            "host:port",
            "10.0.0.1:99999",
            "http://x:1",
            ":7470",
            "a b:1",
            "x:0",
            "-x:1",
        ] {
            assert!(check_host_port(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn several_collectors_are_a_list_or_commas_each_checked() {
        let c = parse("collector = [\"a.example:7470\", \"10.0.0.5:7470\"]\n").unwrap();
        assert_eq!(c.collector.as_deref(), Some("a.example:7470,10.0.0.5:7470"));
        assert_eq!(
            collector_addresses(c.collector.as_deref().unwrap()),
            ["a.example:7470", "10.0.0.5:7470"]
        );
        let c = parse("collector = \"a.example:7470, b.example:7470\"\n").unwrap();
        assert_eq!(
            collector_addresses(c.collector.as_deref().unwrap()),
            ["a.example:7470", "b.example:7470"]
        );
        for (bad, says) in [
            ("collector = [\"a:1\", \"nohost\"]\n", "\"nohost\""),
            ("collector = \"a:1,,b:2\"\n", "an empty address in the list"),
            ("collector = [\"a:1\", \"a:1\"]\n", "listed twice"),
            ("collector = []\n", "empty address"),
        ] {
            let e = parse(bad).expect_err(bad);
            assert!(e.to_string().contains(says), "{bad}: {e}");
        }
    }

    #[test]
    fn the_shipped_example_is_exactly_the_defaults() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../packaging/agent.toml");
        assert_eq!(
            AgentConfig::load(&path, true).unwrap(),
            AgentConfig::default(),
            "packaging/agent.toml and the defaults disagree"
        );
    }

    #[test]
    fn empty_file_is_all_defaults() {
        assert_eq!(parse("").unwrap(), AgentConfig::default());
    }

    #[test]
    fn fields_are_read() {
        let c = parse("interval = \"2s\"\ncollector = \"10.0.0.5:7470\"\n[probes]\nslow_threshold = \"50ms\"\n").unwrap();
        assert_eq!(c.interval, Interval(Duration::from_secs(2)));
        assert_eq!(c.collector.as_deref(), Some("10.0.0.5:7470"));
        assert_eq!(c.probes.slow_threshold, Interval(Duration::from_millis(50)));
    }

    #[test]
    fn unknown_fields_and_bad_values_are_named_with_their_line() {
        let e = parse("interval = \"10s\"\nintervall = \"5s\"\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("line 2") && e.contains("intervall"), "{e}");
        let e = parse("interval = \"soon\"\n").unwrap_err().to_string();
        assert!(e.contains("line 1") && e.contains("soon"), "{e}");
    }

    #[test]
    fn every_invalid_value_is_reported_at_once() {
        let e = parse(
            "interval = \"100ms\"\n[probes]\nring_buffer_bytes = 5000\nslow_events_per_sec = 0\n",
        )
        .unwrap_err();
        assert_eq!(e.problems.len(), 3, "{e}");
        let s = e.to_string();
        assert!(
            s.contains("agent.toml")
                && s.contains("interval")
                && s.contains("ring_buffer_bytes")
                && s.contains("slow_events_per_sec"),
            "{s}"
        );
    }

    #[test]
    fn a_missing_default_file_is_defaults_but_a_named_one_is_an_error() {
        let missing = Path::new("/nonexistent/vigil/agent.toml");
        assert_eq!(
            AgentConfig::load(missing, false).unwrap(),
            AgentConfig::default()
        );
        assert!(AgentConfig::load(missing, true)
            .unwrap_err()
            .to_string()
            .contains("cannot read"));
    }

    // Error or value, never a panic: arbitrary text, and known keys with arbitrary values.
    proptest::proptest! {
        #[test]
        fn any_text_is_a_config_or_an_error(text in "\\PC*") {
            let _ = AgentConfig::parse(Path::new("agent.toml"), &text);
        }

        #[test]
        fn known_keys_with_any_value_are_a_config_or_an_error(
            section in "(|\\[probes\\]|\\[spool\\]|\\[detect\\])",
            key in "(interval|shutdown_timeout|summary_rows|slow_threshold|slow_events_per_sec|ring_buffer_bytes|max_bytes|segment_bytes|fsync|fsync_interval|rules_dir|enabled|socket|collector)",
            value in "(\"[0-9]{0,25}(\\.[0-9]{0,5})?(ns|us|ms|s|m|h|d|KiB|MiB|GiB|x)?\"|-?[0-9]{0,25}|true|\"\\PC{0,20}\"|[0-9]e[0-9]{1,4})",
        ) {
            let text = format!("{section}\n{key} = {value}\n");
            if let Ok(c) = AgentConfig::parse(Path::new("agent.toml"), &text) {
                proptest::prop_assert!(c.interval.0 <= crate::units::MAX_DURATION);
                proptest::prop_assert!(c.probes.slow_threshold.0 <= crate::units::MAX_DURATION);
            }
        }
    }
}
