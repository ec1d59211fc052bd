//! What every Vigil binary does before its first line of work: signals, umask, logs
//! and the async runtime. A daemon and a command-line tool differ in each.
use std::time::Duration;

use anyhow::Context as _;

use crate::config::LogFormat;

/// A long-running daemon, or a command that a person (or a script) runs and reads.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    Daemon,
    Command,
}

/// Signals and umask, then logging on stderr in `format`.
///
/// Like other command-line tools, a command ends quietly when the reader of stdout
/// goes away (`vigil events --follow | head`) instead of panicking on EPIPE. Daemons
/// keep Rust's SIGPIPE = ignored: a client hanging up mid-answer costs it an EPIPE on
/// that one connection, not the process. They also create every file private (umask
/// 077); the few meant for others (the API socket) get their mode set. Daemons say
/// what they do (info); a command speaks only when something is wrong (warn);
/// `VIGIL_LOG` overrides either (tracing's env-filter syntax).
pub fn init(role: Role, format: LogFormat) {
    match role {
        // SAFETY: setting the umask and a signal disposition before any thread exists.
        Role::Daemon => unsafe {
            libc::signal(libc::SIGPIPE, libc::SIG_IGN);
            libc::umask(0o077);
        },
        // SAFETY: as above.
        Role::Command => unsafe {
            libc::signal(libc::SIGPIPE, libc::SIG_DFL);
        },
    }
    let level = match role {
        Role::Daemon => "info",
        Role::Command => "warn",
    };
    let filter = tracing_subscriber::EnvFilter::try_from_env("VIGIL_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(level));
    let logs = tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(filter)
        .with_target(false)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()));
    match format {
        LogFormat::Json => logs.json().flatten_event(true).init(),
        LogFormat::Human => logs.init(),
    }
}

/// How a binary's work is scheduled.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Threads {
    /// One thread. The agent's work is a few milliseconds per interval, and a second
    /// thread would only add cross-thread wake-ups to every timer.
    One,
    /// A worker per core: the collector and the load generator that simulates agents
    /// for it serve many streams at once.
    PerCore,
}

/// Builds the runtime, runs `main` on it and turns its result into an exit code: 0,
/// 64 (EX_CONFIG) for a bad configuration (not a crash), 1 otherwise.
pub fn run<F>(threads: Threads, name: &str, main: F) -> std::process::ExitCode
where
    F: std::future::Future<Output = anyhow::Result<()>>,
{
    let runtime = match threads {
        Threads::One => tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build(),
        Threads::PerCore => tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build(),
    };
    let runtime = match runtime {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("{name}: cannot start the async runtime: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    match runtime.block_on(main) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("{name}: error: {e:#}");
            if e.downcast_ref::<crate::config::ConfigError>().is_some() {
                std::process::ExitCode::from(64)
            } else {
                std::process::ExitCode::FAILURE
            }
        }
    }
}

/// Waits for `duration` (forever when `None`), Ctrl-C or SIGTERM.
pub async fn wait_for_stop(duration: Option<Duration>) -> anyhow::Result<()> {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .context("installing the SIGTERM handler")?;
    let sleep = async {
        match duration {
            Some(d) => tokio::time::sleep(d).await,
            None => std::future::pending().await,
        }
    };
    tokio::select! {
        () = sleep => {}
        r = tokio::signal::ctrl_c() => r.context("waiting for Ctrl-C")?,
        _ = term.recv() => {}
    }
    Ok(())
}
