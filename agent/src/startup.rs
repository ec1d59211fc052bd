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
            eprintln!("{name}: error: {}", user_error(&e));
            if e.downcast_ref::<crate::config::ConfigError>().is_some() {
                std::process::ExitCode::from(64)
            } else {
                std::process::ExitCode::FAILURE
            }
        }
    }
}

/// An error as a person reads it: the chain joined with ": ", a cause that only repeats
/// the words before it left out, a gRPC status in words (no "code: '...'"), and a
/// failed connection as its reason (refused, DNS, TLS, timed out).
pub fn user_error(e: &anyhow::Error) -> String {
    let mut parts: Vec<String> = Vec::new();
    for cause in e.chain() {
        let text = if let Some(status) = cause.downcast_ref::<tonic::Status>() {
            status_words(status)
        } else if cause.downcast_ref::<tonic::transport::Error>().is_some() {
            let reason = crate::query::display::unreachable(cause);
            parts.push(reason);
            break;
        } else {
            cause.to_string()
        };
        if parts.last().is_some_and(|p| p.contains(text.as_str())) {
            continue;
        }
        parts.push(text);
    }
    // "a: b: b" (a cause that prints its own source too) reads "a: b".
    let mut words: Vec<&str> = Vec::new();
    let joined = parts.join(": ");
    for w in joined.split(": ") {
        if words.last() != Some(&w) {
            words.push(w);
        }
    }
    words.join(": ")
}

/// A gRPC status as words: what the server said, and its code as a reason.
pub fn status_words(s: &tonic::Status) -> String {
    use tonic::Code;
    let why = match s.code() {
        Code::PermissionDenied => "permission denied",
        Code::Unauthenticated => "not authenticated",
        Code::NotFound => "not found",
        Code::InvalidArgument => "refused as invalid",
        Code::Unimplemented => {
            "not a Vigil server, or an older one (it does not know this request)"
        }
        Code::Unavailable => "unavailable",
        Code::DeadlineExceeded => "timed out",
        Code::ResourceExhausted => "over its limits",
        Code::FailedPrecondition => "refused in its current state",
        Code::Internal => "an internal error on the server",
        Code::Cancelled => "cancelled",
        _ => "failed",
    };
    let msg = s.message().trim();
    // tonic's own deadline (the client's request timeout) comes as Cancelled.
    if msg.starts_with("Timeout expired") {
        return "timed out: no answer within --timeout".into();
    }
    if msg.is_empty() {
        why.to_string()
    } else {
        format!("{why}: {msg}")
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
