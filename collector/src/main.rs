//! `vigil-collector`: the collector daemon, as the package's unit runs it
//! (`Type=notify`). The same daemon runs as `vigil collector`.

use vigil_collector::daemon::{CollectorCli, LogFormat};

fn main() -> std::process::ExitCode {
    let cli: CollectorCli = vigil_units::parse_args();
    // A daemon: a peer hanging up costs an EPIPE on that connection, never the
    // process (SIGPIPE ignored); its files are private (umask 077).
    // SAFETY: a signal disposition and the umask, set before any thread exists.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_IGN);
        libc::umask(0o077);
    }
    let filter = tracing_subscriber::EnvFilter::try_from_env("VIGIL_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let logs = tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(filter)
        .with_target(false)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()));
    match cli.log_format {
        LogFormat::Json => logs.json().flatten_event(true).init(),
        LogFormat::Human => logs.init(),
    }
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("vigil-collector: cannot start the async runtime: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    match runtime.block_on(cli.collector.run()) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("vigil-collector: error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
