//! The `vigil` command line: its subcommands and what each runs.
use std::time::Duration;

use clap::{Parser, Subcommand};

use vigil_agent::units::parse_duration;

#[derive(Debug, Parser)]
#[command(
    name = "vigil",
    version,
    about = "Vigil host agent: host metrics, eBPF syscall latency, TCP retransmits and security findings; its collector; and the commands that read them"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
    /// Log format on stderr: human or json (one object per line). For `vigil agent`
    /// the config file's `log.format` applies when this is not given.
    #[arg(long, global = true, value_enum)]
    pub log_format: Option<vigil_agent::config::LogFormat>,
}

impl Cli {
    /// The log format: the flag, else (for `vigil agent`) the config file's.
    pub fn log_format(&self) -> vigil_agent::config::LogFormat {
        if let Some(f) = self.log_format {
            return f;
        }
        if let Command::Agent(agent) = &self.command {
            if let Some(f) = agent.log_format() {
                return f;
            }
        }
        vigil_agent::config::LogFormat::Human
    }
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// One-shot tracing from the command line (needs root).
    #[command(subcommand)]
    Trace(Trace),
    /// Run the agent in the foreground (needs root): every probe, host metrics, rules,
    /// spool, stream, local API. The package runs the same daemon as `vigil-agent`.
    Agent(vigil_agent::daemon::AgentArgs),
    /// Host stats (CPU, memory, load, pressure, filesystems, disks, network, TCP,
    /// processes): the local agent's latest sample, or, with --local or no agent
    /// answering, read from /proc and /sys over --window (no root needed).
    Stats {
        /// Window over which rates are measured (when reading the host directly).
        #[arg(long, default_value = "1s", value_parser = parse_duration, allow_hyphen_values = true)]
        window: Duration,
        /// Processes in each top list (when reading the host directly).
        #[arg(long, default_value_t = 5)]
        top: usize,
        #[command(flatten)]
        socket: vigil_agent::query::api::AgentTarget,
        /// Read the host directly even if an agent is running.
        #[arg(long)]
        local: bool,
        /// Print JSON (one object per line) instead of text; times as RFC 3339 `time` and
        /// `time_unix_ns`, durations in ns.
        #[arg(long)]
        json: bool,
    },
    /// Syscall latency over a recent window, from the local agent.
    Syscalls {
        #[arg(long, default_value = "1m", value_parser = parse_duration, allow_hyphen_values = true)]
        window: Duration,
        #[arg(long, default_value_t = 20)]
        top: usize,
        #[command(flatten)]
        socket: vigil_agent::query::api::AgentTarget,
        /// Print JSON (one object per line) instead of text; times as RFC 3339 `time` and
        /// `time_unix_ns`, durations in ns.
        #[arg(long)]
        json: bool,
    },
    /// Recent TCP retransmits, from the local agent.
    Retrans {
        /// At most this many, newest last (0: all kept, up to 1000).
        #[arg(long, default_value_t = 100)]
        limit: u32,
        #[command(flatten)]
        socket: vigil_agent::query::api::AgentTarget,
        /// Print JSON (one object per line) instead of text; times as RFC 3339 `time` and
        /// `time_unix_ns`, durations in ns.
        #[arg(long)]
        json: bool,
    },
    /// Terminal UI: host stats each second, the probes' state, slowest syscalls and
    /// retransmits from the local agent. q, Esc or Ctrl-C quits; i shows idle waits.
    Top {
        #[arg(long, default_value = "1s", value_parser = parse_duration, allow_hyphen_values = true)]
        refresh: Duration,
        /// Stop after this many refreshes.
        #[arg(long)]
        count: Option<u64>,
        #[arg(long, default_value = vigil_agent::query::api::DEFAULT_SOCKET)]
        socket: std::path::PathBuf,
    },
    /// Findings (rule matches) from the local agent: those of the last `--since`, one per
    /// line; with `--follow`, then every finding, slow syscall and retransmit as it comes.
    Events {
        /// Print the findings of this past window first ("5m", "1h"; default 1h).
        #[arg(long, value_parser = vigil_agent::units::parse_duration, default_value = "1h")]
        since: std::time::Duration,
        /// Keep streaming.
        #[arg(long)]
        follow: bool,
        #[command(flatten)]
        socket: vigil_agent::query::api::AgentTarget,
        /// Print JSON (one object per line) instead of text; times as RFC 3339 `time` and
        /// `time_unix_ns`, durations in ns.
        #[arg(long)]
        json: bool,
    },
    /// Whether the agent is healthy: it answers on its socket (or `--agent`) and its
    /// loop published an interval within the last three. Prints SERVING and exits 0,
    /// or says what is wrong and exits 1 (a Kubernetes liveness/readiness probe).
    Health {
        #[command(flatten)]
        socket: vigil_agent::query::api::AgentTarget,
    },
    /// Run the collector: agents stream to it, it stores (SQLite) and serves the fleet.
    /// The package runs the same daemon as `vigil-collector`.
    Collector(vigil_collector::daemon::CollectorArgs),
    /// Hosts known to a collector, with their last-seen time.
    Hosts {
        #[command(flatten)]
        collector: vigil_agent::query::fleet::CollectorTarget,
        /// Print JSON (one object per line) instead of text; times as RFC 3339 `time` and
        /// `time_unix_ns`, durations in ns.
        #[arg(long)]
        json: bool,
    },
    /// A host's latest stats, from a collector.
    Host {
        /// Hostname or agent id.
        host: String,
        #[command(flatten)]
        collector: vigil_agent::query::fleet::CollectorTarget,
        /// Print JSON (one object per line) instead of text; times as RFC 3339 `time` and
        /// `time_unix_ns`, durations in ns.
        #[arg(long)]
        json: bool,
    },
    /// A metric's history for a host, from a collector.
    History {
        host: String,
        /// cpu.usage_percent, load.one, memory.available_bytes, ...
        #[arg(long)]
        metric: String,
        #[arg(long, default_value = "1h", value_parser = parse_duration, allow_hyphen_values = true)]
        since: Duration,
        #[command(flatten)]
        collector: vigil_agent::query::fleet::CollectorTarget,
        /// Print JSON (one object per line) instead of text; times as RFC 3339 `time` and
        /// `time_unix_ns`, durations in ns.
        #[arg(long)]
        json: bool,
    },
    /// The local agent's alerts: those pending or firing now and the recent changes;
    /// with `--follow`, each change as it happens. `vigil alerts rules` prints the
    /// alert rules the agent would run (also as Prometheus alerting rules), `vigil
    /// alerts check` checks rule files.
    #[command(args_conflicts_with_subcommands = true)]
    Alerts {
        #[command(subcommand)]
        command: Option<AlertsCommand>,
        /// Keep streaming changes.
        #[arg(long, conflicts_with = "collector")]
        follow: bool,
        /// The fleet's alerts from the collector at ADDR (host:port) instead of the
        /// local agent's: each host's alerts pending or firing, from the changes stored
        /// over --since. TLS as for `vigil hosts` (--tls-ca, --tls-cert, --tls-key).
        #[arg(long, value_name = "ADDR", conflicts_with = "agent")]
        collector: Option<String>,
        /// With --collector: the changes of this past window ("24h", "7d").
        #[arg(long, value_parser = vigil_agent::units::parse_duration, default_value = "24h", requires = "collector")]
        since: std::time::Duration,
        #[command(flatten)]
        socket: vigil_agent::query::api::AgentTarget,
        /// Print JSON (one object; with --follow, one per change per line); times as
        /// RFC 3339 `time` and `time_unix_ms`.
        #[arg(long)]
        json: bool,
    },
    /// What changed on a host: a USE pass (utilization, saturation, errors) over CPU,
    /// memory, disk, network and syscall latency, the last --since against the --baseline
    /// before it, as a ranked list with the evidence and the processes or peers named.
    /// From the local agent's last hour, or with --collector from its store (any window
    /// of the last two days).
    Why {
        /// The window to explain, ending now (or at --until).
        #[arg(long, default_value = "15m", value_parser = vigil_agent::units::parse_duration)]
        since: std::time::Duration,
        /// What the window is compared with: this long before it.
        #[arg(long, default_value = "1h", value_parser = vigil_agent::units::parse_duration)]
        baseline: std::time::Duration,
        /// The window's end, RFC 3339 (2026-12-07T14:20:00Z) [default: now].
        #[arg(long, value_parser = parse_time)]
        until: Option<i64>,
        /// Narrow to this process: its slow syscalls, its CPU, the resources it waits on.
        #[arg(long, conflicts_with = "cgroup")]
        pid: Option<u32>,
        /// Narrow to this cgroup id (as `vigil trace` shows it).
        #[arg(long)]
        cgroup: Option<u64>,
        /// The host to explain, at the collector (hostname or agent id).
        #[arg(long, requires = "collector")]
        host: Option<String>,
        /// Read the host's history from the collector at ADDR instead of the local agent.
        #[arg(long, value_name = "ADDR", requires = "host")]
        collector: Option<String>,
        #[command(flatten)]
        socket: vigil_agent::query::api::AgentTarget,
        /// One JSON object.
        #[arg(long)]
        json: bool,
    },
    /// Incident support: a snapshot of a host over a time window, for a ticket.
    #[command(subcommand)]
    Incident(Incident),
    /// SLOs at a collector: per SLO (OpenSLO v1 files in its slo_dir) and host group,
    /// the SLI over the window, the error budget left, the burn rate over 5m, 30m, 1h,
    /// 2h, 6h, 1d and 3d, and whether the page or ticket alert fires.
    Slo {
        #[command(flatten)]
        collector: vigil_agent::query::fleet::CollectorTarget,
        /// One JSON object per SLO per line.
        #[arg(long)]
        json: bool,
    },
    /// Maintenance windows at a collector: while one is active the alerts it covers are
    /// recorded and shown as silenced, never notified. In the collector's Alertmanager
    /// when it has one (a real silence there), else kept by the collector.
    #[command(subcommand)]
    Maintenance(Maintenance),
    /// Detection rules: check rule files, or list the rules the agent would run.
    #[command(subcommand)]
    Rules(Rules),
    /// Certificates for mutual TLS: a development CA, and host certificates it signs.
    #[command(subcommand)]
    Certs(Certs),
    /// Print a shell completion script: `vigil completions bash >
    /// /etc/bash_completion.d/vigil`, `vigil completions zsh > ~/.zfunc/_vigil`,
    /// `vigil completions fish > ~/.config/fish/completions/vigil.fish`.
    Completions {
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
    /// Write the man pages (vigil(1) and a page per subcommand, vigil-agent(8),
    /// vigil-collector(8)) into DIR; the packages ship them.
    #[command(hide = true)]
    Man {
        #[arg(long)]
        dir: std::path::PathBuf,
    },
}

#[derive(Debug, Subcommand)]
pub enum Certs {
    /// A new CA (ca.pem, and ca.key readable by its owner only) in DIR; existing files
    /// are never replaced.
    Init {
        #[arg(long)]
        dir: std::path::PathBuf,
        /// The trust domain named in every certificate's identity URI.
        #[arg(long, default_value = crate::certs::DEFAULT_TRUST_DOMAIN)]
        trust_domain: String,
        #[arg(long, default_value_t = 3650)]
        days: u32,
    },
    /// A host certificate signed by the CA in DIR: an agent's (client authentication,
    /// URI SAN spiffe://TRUST_DOMAIN/vigil/agent/ID) or a collector's (server
    /// authentication, DNS or IP SAN NAME).
    #[command(group(clap::ArgGroup::new("who").required(true).args(["agent_id", "collector", "operator", "agent_api"])))]
    Issue {
        #[arg(long)]
        dir: std::path::PathBuf,
        #[arg(long)]
        agent_id: Option<String>,
        /// The collector's host name or address, as agents will dial it.
        #[arg(long)]
        collector: Option<String>,
        /// A person or tool that reads: `vigil hosts` and the like against the
        /// collector, the remote Agent API (client authentication, URI SAN
        /// spiffe://TRUST_DOMAIN/vigil/operator/NAME).
        #[arg(long)]
        operator: Option<String>,
        /// The host name or address under which tools reach an agent's remote API
        /// (`api_listen`): its server certificate (server authentication).
        #[arg(long)]
        agent_api: Option<String>,
        #[arg(long, default_value = crate::certs::DEFAULT_TRUST_DOMAIN)]
        trust_domain: String,
        #[arg(long, default_value_t = 365)]
        days: u32,
    },
}

#[derive(Debug, Subcommand)]
pub enum Maintenance {
    /// Start a window now on HOST (hostname or agent id): every alert of the host, or
    /// only --alert NAME (an alert, or a detection rule id: security findings are
    /// silenced only by a window that names their rule).
    Start {
        #[arg(long)]
        host: String,
        #[arg(long, value_name = "NAME")]
        alert: Option<String>,
        /// How long ("2h", "30m").
        #[arg(long = "for", value_name = "DURATION", value_parser = parse_duration)]
        duration: Duration,
        #[arg(long, default_value = "")]
        comment: String,
        #[command(flatten)]
        collector: vigil_agent::query::fleet::CollectorTarget,
        #[arg(long)]
        json: bool,
    },
    /// The windows pending or active (with --all, expired ones too).
    List {
        #[arg(long)]
        all: bool,
        #[command(flatten)]
        collector: vigil_agent::query::fleet::CollectorTarget,
        #[arg(long)]
        json: bool,
    },
    /// End window ID now.
    End {
        id: String,
        #[command(flatten)]
        collector: vigil_agent::query::fleet::CollectorTarget,
        #[arg(long)]
        json: bool,
    },
}

#[derive(Debug, Subcommand)]
pub enum AlertsCommand {
    /// The alert rules the agent would run (built-in plus DIR), as a table or as one
    /// Prometheus rule file over the agent's /metrics (`promtool check rules` passes).
    Rules {
        #[arg(long, default_value = "/etc/vigil/alerts.d")]
        dir: std::path::PathBuf,
        #[arg(long, value_enum, default_value = "table")]
        format: vigil_agent::query::alerts::RulesFormat,
    },
    /// Check the built-in alert rules and every file in DIR (file, line and reason);
    /// exits 1 on a bad file. Run it before sending the agent SIGHUP.
    Check {
        #[arg(long, default_value = "/etc/vigil/alerts.d")]
        dir: std::path::PathBuf,
    },
}

#[derive(Debug, Subcommand)]
pub enum Rules {
    /// Check the built-in rules and every rule file in DIR (file, line and reason for
    /// each problem); exits 1 on a bad file. Run it before sending the agent SIGHUP.
    Check {
        #[arg(long, default_value = "/etc/vigil/rules.d")]
        dir: std::path::PathBuf,
    },
    /// The rules the agent would run: built-in plus DIR.
    List {
        #[arg(long, default_value = "/etc/vigil/rules.d")]
        dir: std::path::PathBuf,
        /// Print JSON (one object per line) instead of text; times as RFC 3339 `time` and
        /// `time_unix_ns`, durations in ns.
        #[arg(long)]
        json: bool,
    },
}

/// A process to trace: a number, not 0 (the kernel's idle task, which would match
/// nothing while the header said "pid 0"), and one that exists now.
fn parse_pid(s: &str) -> Result<u32, String> {
    let pid: u32 = s
        .trim()
        .parse()
        .map_err(|_| format!("{s:?} is not a process id"))?;
    if pid == 0 {
        return Err("0 is not a process (the idle task); give the process id to trace".into());
    }
    if !std::path::Path::new(&format!("/proc/{pid}")).exists() {
        return Err(format!("no such process: {pid}"));
    }
    Ok(pid)
}

#[derive(Debug, Subcommand)]
pub enum Trace {
    /// Syscalls by total time with count, p50, p90, p99 and max latency (like `syscount -L`).
    Syscalls {
        #[arg(long, default_value = "5s", value_parser = parse_duration, allow_hyphen_values = true)]
        duration: Duration,
        /// Only this process (thread group id); it must exist when tracing starts.
        #[arg(long, value_parser = parse_pid)]
        pid: Option<u32>,
        /// Print JSON (one object per line) instead of text; times as RFC 3339 `time` and
        /// `time_unix_ns`, durations in ns.
        #[arg(long)]
        json: bool,
        /// Rows in the table (JSON output has every syscall).
        #[arg(long, default_value_t = 20)]
        top: usize,
    },
    /// Each TCP retransmit as it happens, then a summary.
    Retransmits {
        /// Stop after this long (default: until Ctrl-C).
        #[arg(long, value_parser = parse_duration, allow_hyphen_values = true)]
        duration: Option<Duration>,
        /// Print JSON (one object per line) instead of text; times as RFC 3339 `time` and
        /// `time_unix_ns`, durations in ns.
        #[arg(long)]
        json: bool,
    },
    /// Process exec, fork and exit events, as they happen (like execsnoop).
    Processes {
        /// Stop after this long (default: until Ctrl-C).
        #[arg(long, value_parser = parse_duration, allow_hyphen_values = true)]
        duration: Option<Duration>,
        /// Show only execs (forks and exits are still counted in the summary).
        #[arg(long)]
        exec: bool,
        /// Print JSON (one object per line) instead of text; times as RFC 3339 `time` and
        /// `time_unix_ns`, durations in ns.
        #[arg(long)]
        json: bool,
    },
    /// Syscalls slower than a threshold, as they return.
    SlowSyscalls {
        #[arg(long, default_value = "10ms", value_parser = parse_duration, allow_hyphen_values = true)]
        threshold: Duration,
        /// Stop after this long (default: until Ctrl-C).
        #[arg(long, value_parser = parse_duration, allow_hyphen_values = true)]
        duration: Option<Duration>,
        /// Only this process (thread group id); it must exist when tracing starts.
        #[arg(long, value_parser = parse_pid)]
        pid: Option<u32>,
        /// Events allowed per CPU per second; more are counted, not sent.
        #[arg(long, default_value_t = 1000)]
        rate_limit: u64,
        /// Print JSON (one object per line) instead of text; times as RFC 3339 `time` and
        /// `time_unix_ns`, durations in ns.
        #[arg(long)]
        json: bool,
    },
}

impl Command {
    /// Daemons run for long and write to sockets whose peers can vanish at any time:
    /// for them a write to a closed peer is an error to handle (EPIPE), never a signal
    /// that kills the process silently.
    pub fn is_daemon(&self) -> bool {
        matches!(self, Command::Agent(_) | Command::Collector(_))
    }
}

pub async fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Man { dir } => crate::man::write(&dir),
        Command::Completions { shell } => {
            use clap::CommandFactory as _;
            clap_complete::generate(shell, &mut Cli::command(), "vigil", &mut std::io::stdout());
            Ok(())
        }
        Command::Trace(Trace::Syscalls {
            duration,
            pid,
            json,
            top,
        }) => vigil_agent::trace::syscalls::run(duration, pid, json, top).await,
        Command::Trace(Trace::Retransmits { duration, json }) => {
            vigil_agent::trace::retransmits::run(duration, json).await
        }
        Command::Trace(Trace::Processes {
            duration,
            exec,
            json,
        }) => vigil_agent::trace::processes::run(duration, exec, json).await,
        Command::Trace(Trace::SlowSyscalls {
            threshold,
            duration,
            pid,
            rate_limit,
            json,
        }) => vigil_agent::trace::slow::run(threshold, duration, pid, rate_limit, json).await,
        Command::Agent(agent) => agent.run().await,
        Command::Collector(collector) => collector.run().await,
        Command::Hosts { collector, json } => {
            vigil_agent::query::fleet::hosts(&collector, json).await
        }
        Command::Host {
            host,
            collector,
            json,
        } => vigil_agent::query::fleet::host(&collector, &host, json).await,
        Command::History {
            host,
            metric,
            since,
            collector,
            json,
        } => vigil_agent::query::fleet::history(&collector, &host, &metric, since, json).await,
        Command::Stats {
            window,
            top,
            socket,
            local,
            json,
        } => vigil_agent::query::local::stats(&socket, local, window, top, json).await,
        Command::Top {
            refresh,
            count,
            socket,
        } => vigil_agent::query::top::run(&socket, refresh, count).await,
        Command::Syscalls {
            window,
            top,
            socket,
            json,
        } => vigil_agent::query::local::syscalls(&socket, window, top, json).await,
        Command::Retrans {
            limit,
            socket,
            json,
        } => vigil_agent::query::local::retrans(&socket, limit, json).await,
        Command::Events {
            since,
            follow,
            socket,
            json,
        } => vigil_agent::query::local::events(&socket, since, follow, json).await,
        Command::Health { socket } => match vigil_agent::query::api::health(&socket).await {
            Ok(status) => {
                println!("{status}");
                Ok(())
            }
            Err(e) => {
                eprintln!("vigil: unhealthy: {e:#}");
                std::process::exit(1);
            }
        },
        Command::Alerts {
            command: None,
            collector: Some(addr),
            since,
            socket,
            json,
            ..
        } => {
            let target = vigil_agent::query::fleet::CollectorTarget {
                addr,
                token_file: None,
                timeout: std::time::Duration::from_secs(30),
                tls: socket.tls,
            };
            vigil_agent::query::alerts::fleet(&target, since, json).await
        }
        Command::Alerts {
            command: None,
            follow,
            socket,
            json,
            ..
        } => vigil_agent::query::alerts::run(&socket, follow, json).await,
        Command::Alerts {
            command: Some(AlertsCommand::Rules { dir, format }),
            ..
        } => {
            let rules = vigil_agent::alerts::rules::load(Some(&dir)).map_err(anyhow::Error::new)?;
            vigil_agent::query::alerts::print_rules(&rules, format);
            Ok(())
        }
        Command::Alerts {
            command: Some(AlertsCommand::Check { dir }),
            ..
        } => match vigil_agent::alerts::rules::load(Some(&dir)) {
            Ok(rules) => {
                let from = if dir.is_dir() {
                    format!("built-in + {}", dir.display())
                } else {
                    format!("built-in; {} does not exist", dir.display())
                };
                println!("{} alert rules OK ({from})", rules.len());
                Ok(())
            }
            Err(e) => {
                eprintln!("vigil: {e}");
                std::process::exit(1);
            }
        },
        Command::Slo { collector, json } => vigil_agent::query::slo::run(&collector, json).await,
        Command::Incident(Incident::Snapshot {
            host,
            collector,
            local,
            from,
            to,
            out,
            redact,
            socket,
        }) => {
            use vigil_agent::triage::{snapshot, Source};
            let to = to.unwrap_or_else(|| vigil_units::unix_ms(std::time::SystemTime::now()));
            if to <= from {
                anyhow::bail!("--to must be after --from");
            }
            let target;
            let (source, described) = match (&collector, host) {
                (Some(addr), Some(h)) => {
                    target = history_collector(addr, &socket);
                    (
                        Source::Collector(&target, h),
                        format!("the collector at {addr}"),
                    )
                }
                _ if local || collector.is_none() => (
                    Source::Agent(&socket),
                    "the local agent's recent history".to_string(),
                ),
                _ => anyhow::bail!("--collector needs --host"),
            };
            // The hour before the window is the baseline of "what changed".
            let history = vigil_agent::triage::fetch(&source, from - 3_600_000, to).await?;
            if !history.intervals.iter().any(|b| b.end_unix_ms > from) {
                anyhow::bail!(
                    "no intervals between {} and {} (history reaches back to {})",
                    vigil_units::rfc3339_ms(from),
                    vigil_units::rfc3339_ms(to),
                    vigil_units::rfc3339_ms(history.oldest_ms)
                );
            }
            let (findings, windows) =
                vigil_agent::triage::findings_and_windows(&source, &history.host, from, to).await?;
            let host_name = history.host.hostname.clone();
            let inputs = snapshot::Inputs {
                history,
                from,
                to,
                findings,
                windows,
                source: described,
            };
            let html = snapshot::render(&inputs, redact)?;
            let out = out.unwrap_or_else(|| {
                let name = if redact {
                    "host".to_string()
                } else {
                    host_name.clone()
                };
                format!(
                    "vigil-incident-{name}-{}.html",
                    vigil_units::rfc3339_ms(from).replace(':', "")
                )
                .into()
            });
            std::fs::write(&out, &html).map_err(|e| anyhow::anyhow!("{}: {e}", out.display()))?;
            println!("{} ({} KiB)", out.display(), html.len() / 1024);
            Ok(())
        }
        Command::Why {
            since,
            baseline,
            until,
            pid,
            cgroup,
            host,
            collector,
            socket,
            json,
        } => {
            use vigil_agent::triage::{why, Source};
            let to = until.unwrap_or_else(|| vigil_units::unix_ms(std::time::SystemTime::now()));
            let from = to - since.as_millis() as i64;
            let target;
            let source = match (&collector, host) {
                (Some(addr), Some(h)) => {
                    target = history_collector(addr, &socket);
                    Source::Collector(&target, h)
                }
                _ => Source::Agent(&socket),
            };
            let history =
                vigil_agent::triage::fetch(&source, from - baseline.as_millis() as i64, to).await?;
            let focus = match (pid, cgroup) {
                (Some(p), _) => why::Focus::Pid(p),
                (_, Some(c)) => why::Focus::Cgroup(c),
                _ => why::Focus::Host,
            };
            let report = why::analyze(&history, from, to, focus);
            if json {
                println!("{}", serde_json::to_string(&report)?);
            } else {
                print!("{}", why::render(&report));
            }
            Ok(())
        }
        Command::Maintenance(Maintenance::Start {
            host,
            alert,
            duration,
            comment,
            collector,
            json,
        }) => {
            vigil_agent::query::alerts::maintenance_start(
                &collector,
                &host,
                alert.as_deref(),
                duration,
                &comment,
                json,
            )
            .await
        }
        Command::Maintenance(Maintenance::List {
            all,
            collector,
            json,
        }) => vigil_agent::query::alerts::maintenance_list(&collector, all, json).await,
        Command::Maintenance(Maintenance::End {
            id,
            collector,
            json,
        }) => vigil_agent::query::alerts::maintenance_end(&collector, &id, json).await,
        Command::Rules(Rules::Check { dir }) => {
            if !dir.is_dir() {
                eprintln!(
                    "vigil: {}: no such directory (the agent would run the built-in rules only)",
                    dir.display()
                );
                std::process::exit(1);
            }
            match vigil_agent::detect::rules::load_all(Some(&dir)) {
                Ok(rules) => {
                    println!("{} rules OK (built-in + {})", rules.len(), dir.display());
                    Ok(())
                }
                Err(problems) => {
                    for e in &problems {
                        eprintln!("vigil: {e}");
                    }
                    eprintln!(
                        "vigil: {} problem{} in {}",
                        problems.len(),
                        if problems.len() == 1 { "" } else { "s" },
                        dir.display()
                    );
                    std::process::exit(1);
                }
            }
        }
        Command::Certs(Certs::Init {
            dir,
            trust_domain,
            days,
        }) => crate::certs::init(&dir, &trust_domain, days),
        Command::Certs(Certs::Issue {
            dir,
            agent_id,
            collector,
            operator,
            agent_api,
            trust_domain,
            days,
        }) => {
            let leaf = if let Some(id) = &agent_id {
                crate::certs::Leaf::Agent(id)
            } else if let Some(name) = &collector {
                crate::certs::Leaf::Collector(name)
            } else if let Some(name) = &operator {
                crate::certs::Leaf::Operator(name)
            } else if let Some(name) = &agent_api {
                crate::certs::Leaf::AgentApi(name)
            } else {
                anyhow::bail!("--agent-id, --collector, --operator or --agent-api")
            };
            crate::certs::issue(&dir, leaf, &trust_domain, days).map(drop)
        }
        Command::Rules(Rules::List { dir, json }) => {
            let rules = vigil_agent::detect::rules::load(Some(&dir)).map_err(anyhow::Error::new)?;
            for r in &rules {
                if json {
                    println!(
                        "{}",
                        serde_json::json!({"id": r.id, "severity": r.severity.as_str(), "mitre": r.mitre,
                            "events": r.events, "description": r.description, "source": r.source,
                            "dedup_secs": r.dedup.as_secs()})
                    );
                } else {
                    println!(
                        "{:<32} {:<8} {:<22} {}",
                        r.id,
                        r.severity.as_str(),
                        r.mitre.join(","),
                        r.description
                    );
                }
            }
            Ok(())
        }
    }
}

#[derive(Debug, Subcommand)]
pub enum Incident {
    /// One self-contained HTML file of a host over [--from, --to]: what changed, a
    /// timeline (alerts, findings, maintenance windows, gaps in the data), plots (CPU,
    /// memory, pressure, disk, network, syscall p99, retransmits; alert times marked),
    /// top processes, slowest syscalls, retransmits by peer, pressure, and a blameless
    /// postmortem draft in Markdown. From the collector's store (--collector --host) or
    /// the local agent's last hour (--local).
    Snapshot {
        /// The host (hostname or agent id) at the collector.
        #[arg(long, requires = "collector", conflicts_with = "local")]
        host: Option<String>,
        /// Read from the collector at ADDR.
        #[arg(long, value_name = "ADDR", requires = "host")]
        collector: Option<String>,
        /// Read from the local agent (its last 360 intervals).
        #[arg(long)]
        local: bool,
        /// The window's start: RFC 3339, or a duration ago ("30m").
        #[arg(long, value_parser = parse_time_or_ago)]
        from: i64,
        /// The window's end: RFC 3339, or a duration ago [default: now].
        #[arg(long, value_parser = parse_time_or_ago)]
        to: Option<i64>,
        /// Where to write it [default: vigil-incident-HOST-FROM.html].
        #[arg(long)]
        out: Option<std::path::PathBuf>,
        /// Replace hostnames, IP addresses, user names and command-line arguments with
        /// tokens (the same value always gets the same token).
        #[arg(long)]
        redact: bool,
        #[command(flatten)]
        socket: vigil_agent::query::api::AgentTarget,
    },
}

/// RFC 3339, or a duration before now ("30m"), as Unix ms.
fn parse_time_or_ago(s: &str) -> Result<i64, String> {
    if let Some(t) = vigil_units::parse_rfc3339_ms(s) {
        return Ok(t);
    }
    let d = vigil_units::parse_duration(s).map_err(|_| {
        format!("{s:?}: neither an RFC 3339 time (2026-12-07T14:20:00Z) nor a duration ago (30m)")
    })?;
    Ok(vigil_units::unix_ms(std::time::SystemTime::now())
        - d.as_millis().min(i64::MAX as u128) as i64)
}

/// The collector a host's history is read from (`vigil why`, `vigil incident
/// snapshot`), with the TLS flags given for the agent's API.
fn history_collector(
    addr: &str,
    socket: &vigil_agent::query::api::AgentTarget,
) -> vigil_agent::query::fleet::CollectorTarget {
    vigil_agent::query::fleet::CollectorTarget {
        addr: addr.to_string(),
        token_file: None,
        timeout: std::time::Duration::from_secs(30),
        tls: socket.tls.clone(),
    }
}

/// An RFC 3339 time, as Unix ms.
fn parse_time(s: &str) -> Result<i64, String> {
    vigil_units::parse_rfc3339_ms(s)
        .ok_or_else(|| format!("{s:?}: not an RFC 3339 time (2026-12-07T14:20:00Z)"))
}

#[cfg(test)]
mod tests {
    //! The runbooks can't rot: every rule names a section that exists, and every
    //! `vigil ...` command they tell the on-call person to run parses with this CLI.
    use clap::Parser as _;

    const RUNBOOKS: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../docs/runbooks");

    fn sections(file: &str) -> Vec<String> {
        std::fs::read_to_string(format!("{RUNBOOKS}/{file}"))
            .unwrap()
            .lines()
            .filter_map(|l| l.strip_prefix("## "))
            .map(|s| s.trim().to_string())
            .collect()
    }

    /// `/usr/share/doc/vigil-agent/runbooks/FILE#ANCHOR` -> (FILE, ANCHOR).
    fn target(runbook: &str) -> (String, String) {
        let rest = runbook
            .strip_prefix("/usr/share/doc/vigil-agent/runbooks/")
            .unwrap_or_else(|| panic!("{runbook} is not a packaged runbook"));
        let (file, anchor) = rest.split_once('#').expect("an anchor");
        (file.to_string(), anchor.to_string())
    }

    #[test]
    fn every_built_in_alert_and_detection_rule_names_a_runbook_section_that_exists() {
        let mut checked = 0;
        let alerts = vigil_agent::alerts::rules::load(None).unwrap();
        let detection = vigil_agent::detect::rules::load(None).unwrap();
        let runbooks = alerts
            .iter()
            .map(|r| (r.name.clone(), r.runbook.clone()))
            .chain(detection.iter().map(|r| (r.id.clone(), r.runbook.clone())))
            .chain([(
                vigil_collector::slo::ALERT.to_string(),
                vigil_collector::slo::RUNBOOK.to_string(),
            )]);
        for (name, runbook) in runbooks {
            let (file, anchor) = target(&runbook);
            assert!(
                sections(&file).contains(&anchor),
                "{name}: {file} has no section `## {anchor}`"
            );
            checked += 1;
        }
        assert!(checked >= 60, "{checked}");
    }

    /// Words of a shell command (single and double quotes group; no escapes needed).
    fn words(cmd: &str) -> Vec<String> {
        let mut out = Vec::new();
        let mut cur = String::new();
        let mut quote = None;
        for c in cmd.chars() {
            match (quote, c) {
                (None, '\'' | '"') => quote = Some(c),
                (Some(q), c) if c == q => quote = None,
                (None, c) if c.is_whitespace() => {
                    if !cur.is_empty() {
                        out.push(std::mem::take(&mut cur));
                    }
                }
                (_, c) => cur.push(c),
            }
        }
        if !cur.is_empty() {
            out.push(cur);
        }
        out
    }

    #[test]
    fn every_vigil_command_in_the_runbooks_parses() {
        let mut checked = 0;
        for entry in std::fs::read_dir(RUNBOOKS).unwrap() {
            let path = entry.unwrap().path();
            let text = std::fs::read_to_string(&path).unwrap();
            for span in text.split('`').skip(1).step_by(2) {
                let Some(cmd) = span.strip_prefix("vigil ") else {
                    continue;
                };
                // The command before a pipe or a redirection.
                let cmd = cmd.split(['|', '>', ';']).next().unwrap_or(cmd);
                let argv: Vec<String> = std::iter::once("vigil".to_string())
                    .chain(words(cmd))
                    .collect();
                if let Err(e) = super::Cli::try_parse_from(&argv) {
                    assert!(
                        matches!(e.kind(), clap::error::ErrorKind::DisplayHelp),
                        "{}: `vigil {cmd}` does not parse: {e}",
                        path.display()
                    );
                }
                checked += 1;
            }
        }
        assert!(checked >= 40, "only {checked} commands found");
    }
}
