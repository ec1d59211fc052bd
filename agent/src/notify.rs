//! Readiness the systemd way (sd_notify(3)): `READY=1` once a daemon serves, `RELOADING=1`
//! around a SIGHUP reload, `STOPPING=1` at shutdown, with a `STATUS=` line for
//! `systemctl status`. A no-op unless the service manager (or a test) set
//! `NOTIFY_SOCKET`; a failure to notify is logged, never fatal.
use sd_notify::NotifyState;

fn send(states: &[NotifyState<'_>]) {
    if std::env::var_os("NOTIFY_SOCKET").is_none() {
        return;
    }
    if let Err(e) = sd_notify::notify(false, states) {
        tracing::warn!(error = %e, "sd_notify failed");
    }
}

/// The daemon serves: probes attached, sockets listening.
pub fn ready(status: &str) {
    send(&[NotifyState::Ready, NotifyState::Status(status)]);
}

/// `ready`, with variables after it (`VIGIL_API_LISTEN=ADDR`: the service manager
/// ignores what it does not know; tests and tools read it).
pub fn ready_with(status: &str, vars: &[String]) {
    let mut states = vec![NotifyState::Ready, NotifyState::Status(status)];
    states.extend(vars.iter().map(|v| NotifyState::Custom(v)));
    send(&states);
}

/// A reload (SIGHUP) has begun; `ready` follows when it is done.
pub fn reloading() {
    send(&[NotifyState::Reloading]);
}

pub fn stopping() {
    send(&[NotifyState::Stopping]);
}
