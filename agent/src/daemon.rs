//! The agent daemon's command line and start, shared by the `vigil-agent` binary (what
//! the package's unit runs) and `vigil agent` (the same daemon from the CLI).
use std::path::PathBuf;
use std::time::Duration;

use crate::config::{AgentConfig, ConfigError, Interval, LogFormat, DEFAULT_CONFIG};
use crate::units::parse_duration;

// The `vigil-agent` binary's command line; its man page is made from it too.
/// Vigil's host agent: eBPF probes, host metrics, detection rules, spool and stream.
#[derive(Debug, clap::Parser)]
#[command(name = "vigil-agent", version)]
pub struct AgentCli {
    #[command(flatten)]
    pub agent: AgentArgs,
    /// Log format on stderr: human or json (one object per line); default: the config
    /// file's `log.format`, else human.
    #[arg(long, value_enum)]
    pub log_format: Option<LogFormat>,
}

/// Run every probe in the foreground, printing a summary each interval (needs root).
#[derive(Debug, Clone, clap::Args)]
pub struct AgentArgs {
    /// Config file (TOML). Default /etc/vigil/agent.toml, if it exists.
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// Sample and batch interval (overrides the file; default 10s, at least 1s).
    #[arg(long, value_parser = parse_duration, allow_hyphen_values = true)]
    pub interval: Option<Duration>,
    /// Syscalls at least this slow become events (overrides probes.slow_threshold).
    #[arg(long, value_parser = parse_duration, allow_hyphen_values = true)]
    pub slow_threshold: Option<Duration>,
    /// Rows of the summary printed per interval; 0 prints none (overrides summary_rows).
    #[arg(long)]
    pub top: Option<usize>,
    /// Stream a batch per interval to this collector, or to the first of several
    /// separated by commas, failing over to the next (overrides collector).
    #[arg(long)]
    pub collector: Option<String>,
    /// This agent's id at the collector (overrides agent_id).
    #[arg(long)]
    pub agent_id: Option<String>,
    /// Unix socket for the local query API (overrides socket).
    #[arg(long)]
    pub socket: Option<PathBuf>,
    /// Don't serve the local query API.
    #[arg(long)]
    pub no_api: bool,
    /// The agent's state directory (overrides data_dir).
    #[arg(long)]
    pub data_dir: Option<PathBuf>,
    /// The host's root file system, when the agent runs in a container with it
    /// mounted there (overrides host_root; default "/").
    #[arg(long, value_name = "DIR")]
    pub host_root: Option<PathBuf>,
    /// Serve the Agent API on this TCP address too, for other machines (overrides
    /// api_listen; mTLS or the api_tls.token_file bearer token).
    #[arg(long, value_name = "ADDR")]
    pub api_listen: Option<String>,
    /// Serve /metrics on this TCP address (overrides metrics_listen; plain HTTP, so
    /// loopback or a trusted network).
    #[arg(long, value_name = "ADDR")]
    pub metrics_listen: Option<String>,
    #[command(flatten)]
    pub tls: vigil_tls::config::TlsFlags,
    /// Check the config file (with the flags over it) and the rules, say what would
    /// run, and exit: 1 on a config error (file, field, reason). A bad rule file is
    /// reported but not an error: the agent would start with the built-in rules.
    #[arg(long)]
    pub check_config: bool,
}

impl AgentArgs {
    fn config_path(&self) -> PathBuf {
        self.config.clone().unwrap_or_else(|| DEFAULT_CONFIG.into())
    }

    /// The config file's `log.format`, if the file says (read before logging starts).
    pub fn log_format(&self) -> Option<LogFormat> {
        AgentConfig::log_format_of(&self.config_path())
    }

    /// The file with the flags over it, checked: what the agent runs with.
    pub fn load(&self) -> Result<AgentConfig, ConfigError> {
        let mut c = AgentConfig::load(&self.config_path(), self.config.is_some())?;
        if let Some(i) = self.interval {
            c.interval = Interval(i);
        }
        if let Some(t) = self.slow_threshold {
            c.probes.slow_threshold = Interval(t);
        }
        c.summary_rows = self.top.unwrap_or(c.summary_rows);
        c.collector = self.collector.clone().or(c.collector);
        c.agent_id = self.agent_id.clone().or(c.agent_id);
        c.socket = self.socket.clone().unwrap_or(c.socket);
        c.api &= !self.no_api;
        c.data_dir = self.data_dir.clone().unwrap_or(c.data_dir);
        c.host_root = self.host_root.clone().unwrap_or(c.host_root);
        c.tls = c.tls.with_flags(&self.tls);
        c.api_listen = self.api_listen.clone().or(c.api_listen);
        c.metrics_listen = self.metrics_listen.clone().or(c.metrics_listen);
        c.validate().map_err(|problems| ConfigError {
            file: "(command line)".into(),
            problems,
        })?;
        Ok(c)
    }

    /// Runs the agent until SIGINT/SIGTERM. The file is read at start and again on
    /// SIGHUP; the flags override it both times.
    pub async fn run(self) -> anyhow::Result<()> {
        let c = self.load()?;
        if self.check_config {
            return check_config(&self.config_path(), &c);
        }
        let file = self.config_path();
        let shown = if file.exists() {
            file.display().to_string()
        } else {
            format!("{} (absent: defaults)", file.display())
        };
        let rules = if c.detect.enabled {
            format!("built-in and {}", c.detect.rules_dir.display())
        } else {
            "off".into()
        };
        let delivery = match &c.collector {
            Some(addr) => format!(
                "streams to {addr}, spooling in {}",
                c.data_dir.join("spool").display()
            ),
            None => format!(
                "no collector: spools only, in {}",
                c.data_dir.join("spool").display()
            ),
        };
        tracing::info!(
            config = %shown,
            rules = %rules,
            data_dir = %c.data_dir.display(),
            "config {shown}; rules {rules}; data in {}; {delivery}",
            c.data_dir.display()
        );
        crate::pipeline::agent::run(c, Box::new(move || self.load())).await
    }
}

/// `--check-config`: what the agent would run with, on stdout.
fn check_config(file: &std::path::Path, c: &AgentConfig) -> anyhow::Result<()> {
    let shown = if file.exists() {
        file.display().to_string()
    } else {
        format!("{} (absent: defaults)", file.display())
    };
    println!("config {shown}: OK");
    if c.detect.enabled {
        match crate::detect::rules::load(Some(&c.detect.rules_dir)) {
            Ok(rules) => println!(
                "rules: {} (built-in and {})",
                rules.len(),
                c.detect.rules_dir.display()
            ),
            Err(e) => println!(
                "rules: {e}\nthe agent would start with the built-in rules only (fix the file, then systemctl reload vigil-agent)"
            ),
        }
    }
    if c.tls.mode == vigil_tls::Mode::Off {
        println!("warning: tls.mode = \"off\": batches would go to the collector in plaintext");
    } else if c.collector.is_some() {
        let files = c.tls.files(vigil_tls::Role::Agent);
        if let Err(e) = vigil_tls::Material::load(&files) {
            println!("warning: TLS material: {e} (the agent starts, spools, and sends once the files are good)");
        }
    }
    Ok(())
}
