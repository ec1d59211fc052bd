//! `vigil`: parse the command line, set up logging, run.
use vigil_agent::startup::{self, Role, Threads};

mod certs;
mod cli;
mod man;

fn main() -> std::process::ExitCode {
    let cli: cli::Cli = vigil_units::parse_args();
    let role = if cli.command.is_daemon() {
        Role::Daemon
    } else {
        Role::Command
    };
    startup::init(role, cli.log_format());
    let threads = if matches!(cli.command, cli::Command::Collector(_)) {
        Threads::PerCore
    } else {
        Threads::One
    };
    startup::run(threads, "vigil", cli::run(cli))
}
