//! The `vigil` command line.
use std::time::Duration;

use clap::{Parser, Subcommand};

use crate::units::parse_duration;

#[derive(Debug, Parser)]
#[command(
    name = "vigil",
    version,
    about = "Vigil host agent: eBPF syscall latency and TCP retransmits"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
    /// Log format on stderr: human or json (one object per line). For `vigil agent`
    /// the config file's `log.format` applies when this is not given.
    #[arg(long, global = true, value_enum)]
    pub log_format: Option<crate::config::LogFormat>,
}

impl Cli {
    /// The log format: the flag, else (for `vigil agent`) the config file's.
    pub fn log_format(&self) -> crate::config::LogFormat {
        if let Some(f) = self.log_format {
            return f;
        }
        if let Command::Agent { config, .. } = &self.command {
            let path = config
                .clone()
                .unwrap_or_else(|| crate::config::DEFAULT_CONFIG.into());
            if let Some(f) = crate::config::AgentConfig::log_format_of(&path) {
                return f;
            }
        }
        crate::config::LogFormat::Human
    }
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// One-shot tracing from the command line (needs root).
    #[command(subcommand)]
    Trace(Trace),
    /// Run every probe in the foreground, printing a summary each interval (needs root).
    Agent {
        /// Config file (TOML). Default /etc/vigil/agent.toml, if it exists.
        #[arg(long)]
        config: Option<std::path::PathBuf>,
        /// Sample and batch interval (overrides the file; default 10s, at least 1s).
        #[arg(long, value_parser = parse_duration)]
        interval: Option<Duration>,
        /// Syscalls at least this slow become events (overrides probes.slow_threshold).
        #[arg(long, value_parser = parse_duration)]
        slow_threshold: Option<Duration>,
        /// Rows of the summary printed per interval; 0 prints none (overrides summary_rows).
        #[arg(long)]
        top: Option<usize>,
        /// Stream a batch per interval to this collector (overrides collector).
        #[arg(long)]
        collector: Option<String>,
        /// This agent's id at the collector (overrides agent_id).
        #[arg(long)]
        agent_id: Option<String>,
        /// Unix socket for the local query API (overrides socket).
        #[arg(long)]
        socket: Option<std::path::PathBuf>,
        /// Don't serve the local query API.
        #[arg(long)]
        no_api: bool,
        /// The agent's state directory (overrides data_dir).
        #[arg(long)]
        data_dir: Option<std::path::PathBuf>,
    },
    /// Host stats (CPU, memory, load, pressure, disks, network, TCP, processes) over a
    /// short window, read from /proc and /sys (no root needed).
    Stats {
        /// Window over which rates are measured (when reading the host directly).
        #[arg(long, default_value = "1s", value_parser = parse_duration)]
        window: Duration,
        /// Processes in each top list (when reading the host directly).
        #[arg(long, default_value_t = 5)]
        top: usize,
        /// The agent's API socket; without an agent there, the host is read directly.
        #[arg(long, default_value = crate::query::api::DEFAULT_SOCKET)]
        socket: std::path::PathBuf,
        /// Read the host directly even if an agent is running.
        #[arg(long)]
        local: bool,
        #[arg(long)]
        json: bool,
    },
    /// Syscall latency over a recent window, from the local agent.
    Syscalls {
        #[arg(long, default_value = "1m", value_parser = parse_duration)]
        window: Duration,
        #[arg(long, default_value_t = 20)]
        top: usize,
        #[arg(long, default_value = crate::query::api::DEFAULT_SOCKET)]
        socket: std::path::PathBuf,
        #[arg(long)]
        json: bool,
    },
    /// Recent TCP retransmits, from the local agent.
    Retrans {
        /// At most this many, newest last (0: all kept, up to 1000).
        #[arg(long, default_value_t = 100)]
        limit: u32,
        #[arg(long, default_value = crate::query::api::DEFAULT_SOCKET)]
        socket: std::path::PathBuf,
        #[arg(long)]
        json: bool,
    },
    /// Full-screen live view: host stats each second, slowest syscalls and retransmits
    /// from the local agent. Ctrl-C quits.
    Top {
        #[arg(long, default_value = "1s", value_parser = parse_duration)]
        refresh: Duration,
        /// Stop after this many refreshes.
        #[arg(long)]
        count: Option<u64>,
        #[arg(long, default_value = crate::query::api::DEFAULT_SOCKET)]
        socket: std::path::PathBuf,
    },
    /// Findings (rule matches) from the local agent: those of the last `--since`, one per
    /// line; with `--follow`, then every finding, slow syscall and retransmit as it comes.
    Events {
        /// Print the findings of this past window first ("5m", "1h"; default 1h).
        #[arg(long, value_parser = crate::units::parse_duration, default_value = "1h")]
        since: std::time::Duration,
        /// Keep streaming.
        #[arg(long)]
        follow: bool,
        #[arg(long, default_value = crate::query::api::DEFAULT_SOCKET)]
        socket: std::path::PathBuf,
        #[arg(long)]
        json: bool,
    },
    /// Run the collector: agents stream to it, it stores (SQLite) and serves the fleet.
    Collector {
        /// Address to listen on.
        #[arg(long, default_value = crate::query::DEFAULT_COLLECTOR)]
        listen: String,
        /// Where the database lives.
        #[arg(long, default_value = "/var/lib/vigil/collector")]
        data_dir: std::path::PathBuf,
        /// Samples and events older than this are deleted.
        #[arg(long, default_value = "7d", value_parser = parse_duration)]
        retention: Duration,
        /// A batch (gRPC message) larger than this is refused (RESOURCE_EXHAUSTED).
        #[arg(long, default_value = "8MiB", value_parser = crate::units::parse_size)]
        max_message_size: u64,
        /// Connections at once; more are closed at accept (also held under the open
        /// files limit, which the collector raises to its hard limit).
        #[arg(long, default_value_t = 16_384)]
        max_connections: usize,
        /// Connections at once from one IP address.
        #[arg(long, default_value_t = 256)]
        max_connections_per_peer: usize,
        /// Concurrent streams per connection (an agent uses one).
        #[arg(long, default_value_t = 16)]
        max_streams_per_connection: u32,
        /// Bytes of messages still arriving, all streams together; a stream whose
        /// message would pass it is refused and retried.
        #[arg(long, default_value = "256MiB", value_parser = crate::units::parse_size)]
        decode_budget: u64,
        /// A message must arrive whole within this long.
        #[arg(long, default_value = "30s", value_parser = parse_duration)]
        message_timeout: Duration,
        /// A connection silent this long is closed (agents ping every 5 s).
        #[arg(long, default_value = "5m", value_parser = parse_duration)]
        idle_timeout: Duration,
    },
    /// Hosts known to a collector, with their last-seen time.
    Hosts {
        #[arg(long, default_value = crate::query::DEFAULT_COLLECTOR)]
        collector: String,
        #[arg(long)]
        json: bool,
    },
    /// A host's latest stats, from a collector.
    Host {
        /// Hostname or agent id.
        host: String,
        #[arg(long, default_value = crate::query::DEFAULT_COLLECTOR)]
        collector: String,
        #[arg(long)]
        json: bool,
    },
    /// A metric's history for a host, from a collector.
    History {
        host: String,
        /// cpu.usage_percent, load.one, memory.available_bytes, ...
        #[arg(long)]
        metric: String,
        #[arg(long, default_value = "1h", value_parser = parse_duration)]
        since: Duration,
        #[arg(long, default_value = crate::query::DEFAULT_COLLECTOR)]
        collector: String,
        #[arg(long)]
        json: bool,
    },
    /// Load generator for `cargo xtask bench collector`.
    #[command(hide = true)]
    BenchIngest {
        #[arg(long)]
        collector: String,
        #[arg(long, default_value_t = 50)]
        agents: usize,
        #[arg(long, default_value_t = 200)]
        batches: u64,
    },
    /// Detection rules: check rule files, or list the rules the agent would run.
    #[command(subcommand)]
    Rules(Rules),
    /// Attach probes and hold them until SIGINT/SIGTERM, for `cargo xtask bench`.
    #[command(hide = true)]
    HoldProbes {
        /// A syscall probe variant (see --list-variants); default: the agent as shipped.
        #[arg(long)]
        variant: Option<String>,
        /// Print `name<TAB>description` for each variant and exit.
        #[arg(long)]
        list_variants: bool,
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
        #[arg(long)]
        json: bool,
    },
}

#[derive(Debug, Subcommand)]
pub enum Trace {
    /// Syscalls by total time with count, p50, p90, p99 and max latency (like `syscount -L`).
    Syscalls {
        #[arg(long, default_value = "5s", value_parser = parse_duration)]
        duration: Duration,
        /// Only this process (thread group id).
        #[arg(long)]
        pid: Option<u32>,
        #[arg(long)]
        json: bool,
        /// Rows in the table (JSON output has every syscall).
        #[arg(long, default_value_t = 20)]
        top: usize,
    },
    /// Each TCP retransmit as it happens, then a summary.
    Retransmits {
        /// Stop after this long (default: until Ctrl-C).
        #[arg(long, value_parser = parse_duration)]
        duration: Option<Duration>,
        #[arg(long)]
        json: bool,
    },
    /// Process exec, fork and exit events, as they happen (like execsnoop).
    Processes {
        /// Stop after this long (default: until Ctrl-C).
        #[arg(long, value_parser = parse_duration)]
        duration: Option<Duration>,
        /// Show only execs (forks and exits are still counted in the summary).
        #[arg(long)]
        exec: bool,
        #[arg(long)]
        json: bool,
    },
    /// Syscalls slower than a threshold, as they return.
    SlowSyscalls {
        #[arg(long, default_value = "10ms", value_parser = parse_duration)]
        threshold: Duration,
        /// Stop after this long (default: until Ctrl-C).
        #[arg(long, value_parser = parse_duration)]
        duration: Option<Duration>,
        #[arg(long)]
        pid: Option<u32>,
        /// Events allowed per CPU per second; more are counted, not sent.
        #[arg(long, default_value_t = 1000)]
        rate_limit: u64,
        #[arg(long)]
        json: bool,
    },
}

impl Command {
    /// Daemons run for long and write to sockets whose peers can vanish at any time:
    /// for them a write to a closed peer is an error to handle (EPIPE), never a signal
    /// that kills the process silently.
    pub fn is_daemon(&self) -> bool {
        matches!(
            self,
            Command::Agent { .. } | Command::Collector { .. } | Command::HoldProbes { .. }
        )
    }
}

pub async fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Trace(Trace::Syscalls {
            duration,
            pid,
            json,
            top,
        }) => crate::trace::syscalls::run(duration, pid, json, top).await,
        Command::Trace(Trace::Retransmits { duration, json }) => {
            crate::trace::retransmits::run(duration, json).await
        }
        Command::Trace(Trace::Processes {
            duration,
            exec,
            json,
        }) => crate::trace::processes::run(duration, exec, json).await,
        Command::Trace(Trace::SlowSyscalls {
            threshold,
            duration,
            pid,
            rate_limit,
            json,
        }) => crate::trace::slow::run(threshold, duration, pid, rate_limit, json).await,
        Command::Agent {
            config,
            interval,
            slow_threshold,
            top,
            collector,
            agent_id,
            socket,
            no_api,
            data_dir,
        } => {
            let explicit = config.is_some();
            let path = config.unwrap_or_else(|| crate::config::DEFAULT_CONFIG.into());
            // Read at start and again on SIGHUP; flags override the file both times.
            let load = move || -> Result<crate::config::AgentConfig, crate::config::ConfigError> {
                let mut c = crate::config::AgentConfig::load(&path, explicit)?;
                if let Some(i) = interval {
                    c.interval = crate::config::Interval(i);
                }
                if let Some(t) = slow_threshold {
                    c.probes.slow_threshold = crate::config::Interval(t);
                }
                c.summary_rows = top.unwrap_or(c.summary_rows);
                c.collector = collector.clone().or(c.collector);
                c.agent_id = agent_id.clone().or(c.agent_id);
                c.socket = socket.clone().unwrap_or(c.socket);
                c.api &= !no_api;
                c.data_dir = data_dir.clone().unwrap_or(c.data_dir);
                c.validate()
                    .map_err(|problems| crate::config::ConfigError {
                        file: "(command line)".into(),
                        problems,
                    })?;
                Ok(c)
            };
            let c = load()?;
            crate::pipeline::agent::run(c, Box::new(load)).await
        }
        Command::Collector {
            listen,
            data_dir,
            retention,
            max_message_size,
            max_connections,
            max_connections_per_peer,
            max_streams_per_connection,
            decode_budget,
            message_timeout,
            idle_timeout,
        } => {
            let clamp = |v: u64| usize::try_from(v).unwrap_or(usize::MAX);
            let limits = vigil_collector::Limits {
                max_message_bytes: clamp(max_message_size).min(u32::MAX as usize),
                max_connections: max_connections.max(1),
                max_connections_per_peer: max_connections_per_peer.max(1),
                max_streams_per_connection: max_streams_per_connection.max(1),
                decode_budget_bytes: clamp(decode_budget),
                message_timeout,
                idle_timeout,
                ..Default::default()
            };
            run_collector(&listen, data_dir, retention, limits).await
        }
        Command::Hosts { collector, json } => crate::query::fleet::hosts(&collector, json).await,
        Command::Host {
            host,
            collector,
            json,
        } => crate::query::fleet::host(&collector, &host, json).await,
        Command::History {
            host,
            metric,
            since,
            collector,
            json,
        } => crate::query::fleet::history(&collector, &host, &metric, since, json).await,
        Command::Stats {
            window,
            top,
            socket,
            local,
            json,
        } => crate::query::local::stats(&socket, local, window, top, json).await,
        Command::Top {
            refresh,
            count,
            socket,
        } => crate::query::top::run(&socket, refresh, count).await,
        Command::BenchIngest {
            collector,
            agents,
            batches,
        } => crate::query::fleet::bench_ingest(&collector, agents, batches).await,
        Command::Syscalls {
            window,
            top,
            socket,
            json,
        } => crate::query::local::syscalls(&socket, window, top, json).await,
        Command::Retrans {
            limit,
            socket,
            json,
        } => crate::query::local::retrans(&socket, limit, json).await,
        Command::Events {
            since,
            follow,
            socket,
            json,
        } => crate::query::local::events(&socket, since, follow, json).await,
        Command::Rules(Rules::Check { dir }) => match crate::detect::rules::load(Some(&dir)) {
            Ok(rules) => {
                println!("{} rules OK (built-in + {})", rules.len(), dir.display());
                Ok(())
            }
            Err(e) => {
                eprintln!("vigil: {e}");
                std::process::exit(1);
            }
        },
        Command::Rules(Rules::List { dir, json }) => {
            let rules = crate::detect::rules::load(Some(&dir)).map_err(anyhow::Error::new)?;
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
        Command::HoldProbes {
            variant,
            list_variants,
        } => hold_probes(variant, list_variants).await,
    }
}

async fn hold_probes(variant: Option<String>, list_variants: bool) -> anyhow::Result<()> {
    use crate::probes::{error_chain, ProbeSettings, Probes, SyscallVariant};
    if list_variants {
        for v in SyscallVariant::ALL {
            println!("{}\t{}", v.name(), v.describe());
        }
        return Ok(());
    }
    let settings = match variant {
        // As the agent runs by default: every probe, detection's included.
        None => ProbeSettings {
            processes: true,
            security: true,
            ..ProbeSettings::default()
        },
        Some(name) => {
            let v = SyscallVariant::from_name(&name)
                .ok_or_else(|| anyhow::anyhow!("unknown variant `{name}` (see --list-variants)"))?;
            ProbeSettings {
                syscall_variant: v,
                retransmits: None,
                ..Default::default()
            }
        }
    };
    let _probes = Probes::load(&settings).map_err(|e| anyhow::anyhow!(error_chain(&e)))?;
    crate::trace::announce("nothing: holding probes for a benchmark", None);
    crate::trace::wait_for_stop(None).await
}

async fn run_collector(
    listen: &str,
    data_dir: std::path::PathBuf,
    retention: Duration,
    mut limits: vigil_collector::Limits,
) -> anyhow::Result<()> {
    use anyhow::Context as _;
    // Before anything listens: a socket per agent needs more than the usual 1024.
    limits.max_connections = vigil_collector::limits::raise_nofile(limits.max_connections);
    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .with_context(|| format!("listening on {listen}"))?;
    let local = listener.local_addr().context("listener address")?;
    tracing::info!(
        listen = %local,
        data_dir = %data_dir.display(),
        "collector listening on {local}, data in {}",
        data_dir.display()
    );
    // The socket is bound (connections queue until the server polls it): ready.
    crate::notify::ready_listening(
        &format!("collector listening on {local}"),
        &local.to_string(),
    );
    let config = vigil_collector::CollectorConfig {
        data_dir,
        retention,
        limits,
    };
    let shutdown = async {
        if let Err(e) = crate::trace::wait_for_stop(None).await {
            tracing::warn!(error = %e, "signal handling failed; stopping");
        }
    };
    let shutdown = async {
        shutdown.await;
        crate::notify::stopping();
    };
    vigil_collector::serve(listener, config, shutdown).await?;
    tracing::info!("collector stopped");
    Ok(())
}
