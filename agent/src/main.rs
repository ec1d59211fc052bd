//! `vigil-agent`: the agent daemon, as the package's unit runs it (`Type=notify`). The
//! same daemon runs as `vigil agent`; this binary links no collector and no SQLite.
use clap::Parser as _;
use vigil_agent::startup::{self, Role, Threads};

/// Vigil's host agent: eBPF probes, host metrics, detection rules, spool and stream.
#[derive(Debug, clap::Parser)]
#[command(name = "vigil-agent", version)]
struct Cli {
    #[command(flatten)]
    agent: vigil_agent::daemon::AgentArgs,
    /// Log format on stderr: human or json (one object per line); default: the config
    /// file's `log.format`, else human.
    #[arg(long, value_enum)]
    log_format: Option<vigil_agent::config::LogFormat>,
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    let format = cli
        .log_format
        .or_else(|| cli.agent.log_format())
        .unwrap_or_default();
    startup::init(Role::Daemon, format);
    startup::run(Threads::One, "vigil-agent", cli.agent.run())
}
