//! `vigil-agent`: the agent daemon, as the package's unit runs it (`Type=notify`). The
//! same daemon runs as `vigil agent`; this binary links no collector and no SQLite.
use vigil_agent::startup::{self, Role, Threads};

fn main() -> std::process::ExitCode {
    let cli: vigil_agent::daemon::AgentCli = vigil_units::parse_args();
    let format = cli
        .log_format
        .or_else(|| cli.agent.log_format())
        .unwrap_or_default();
    startup::init(Role::Daemon, format);
    startup::run(Threads::One, "vigil-agent", cli.agent.run())
}
