//! `vigil`: parse the command line, set up logging, run.
use clap::Parser as _;

fn main() -> std::process::ExitCode {
    let cli = vigil::cli::Cli::parse();
    // Like other command-line tools, end quietly when the reader of stdout goes away
    // (`vigil events --follow | head`) instead of panicking on EPIPE. The daemons keep
    // Rust's SIGPIPE = ignored: a client hanging up mid-answer must cost it an EPIPE
    // on that one connection, not the process. They also create every file private
    // (umask 077); the few meant for others (the API socket) get their mode set.
    if cli.command.is_daemon() {
        // SAFETY: setting the umask and a signal disposition before any thread exists.
        unsafe {
            libc::signal(libc::SIGPIPE, libc::SIG_IGN);
            libc::umask(0o077);
        }
    } else {
        // SAFETY: as above.
        unsafe { libc::signal(libc::SIGPIPE, libc::SIG_DFL) };
    }
    // The daemons say what they do (info); the CLI speaks only when something is wrong.
    let level = if cli.command.is_daemon() {
        "info"
    } else {
        "warn"
    };
    let filter = tracing_subscriber::EnvFilter::try_from_env("VIGIL_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(level));
    let logs = tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(filter)
        .with_target(false)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()));
    match cli.log_format() {
        vigil::config::LogFormat::Json => logs.json().flatten_event(true).init(),
        vigil::config::LogFormat::Human => logs.init(),
    }
    // The collector (and the load generator that simulates agents for it) serves many
    // streams at once and gets a worker per core. Everything
    // else (the agent included) runs on one thread: its work is a few milliseconds per
    // interval, and a second thread would only add cross-thread wake-ups to every timer.
    let runtime = if matches!(
        cli.command,
        vigil::cli::Command::Collector { .. } | vigil::cli::Command::BenchIngest { .. }
    ) {
        tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build()
    } else {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
    };
    let runtime = match runtime {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("vigil: cannot start the async runtime: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    match runtime.block_on(vigil::cli::run(cli)) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("vigil: error: {e:#}");
            // EX_CONFIG-style: a bad configuration is not a crash.
            if e.downcast_ref::<vigil::config::ConfigError>().is_some() {
                std::process::ExitCode::from(64)
            } else {
                std::process::ExitCode::FAILURE
            }
        }
    }
}
