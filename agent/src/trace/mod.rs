//! One-shot views for the CLI (`vigil trace ...`) and the foreground agent summary:
//! load the probes, watch for a while, print.
pub mod processes;
pub mod retransmits;
pub mod slow;
pub mod stats;
pub mod syscalls;

use std::time::Duration;

use anyhow::{bail, Context as _};

use crate::probes::{error_chain, Probe, ProbeSettings, ProbeState, Probes};

/// Parses `500ms`, `5s`, `2m`, `1h`, `7d`, `250us`, `100ns` (a bare number is seconds).
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let split = s
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let value: f64 = num
        .parse()
        .map_err(|_| format!("`{s}` is not a duration (try 5s, 500ms, 2m)"))?;
    let scale = match unit.trim() {
        "ns" => 1e-9,
        "us" | "µs" => 1e-6,
        "ms" => 1e-3,
        "" | "s" => 1.0,
        "m" => 60.0,
        "h" => 3600.0,
        "d" => 86400.0,
        other => {
            return Err(format!(
                "unknown unit `{other}` in `{s}` (use ns, us, ms, s, m, h, d)"
            ))
        }
    };
    let secs = value * scale;
    if !secs.is_finite() || secs < 0.0 {
        return Err(format!("`{s}` is not a valid duration"));
    }
    // Anything longer is a typo, and would overflow the clocks it is added to.
    if secs > MAX_DURATION.as_secs_f64() {
        return Err(format!("`{s}` is too long (at most 100 years)"));
    }
    Duration::try_from_secs_f64(secs).map_err(|e| format!("`{s}`: {e}"))
}

/// The longest duration Vigil takes anywhere (flags, config and rule files).
pub const MAX_DURATION: Duration = Duration::from_secs(100 * 365 * 86_400);

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

/// Loads the probes and insists that `needed` is on, saying why not otherwise.
pub fn load_probes(settings: &ProbeSettings, needed: Probe) -> anyhow::Result<Probes> {
    let probes = Probes::load(settings).map_err(|e| anyhow::anyhow!(error_chain(&e)))?;
    if let ProbeState::Off(e) = probes.state(needed) {
        bail!("the {needed} probe is off: {}", error_chain(e));
    }
    Ok(probes)
}

/// Tells a watcher (a person or a test) that the probes are attached.
pub fn announce(what: &str, duration: Option<Duration>) {
    match duration {
        Some(d) => eprintln!("vigil: tracing {what} for {d:?} (Ctrl-C to stop early)"),
        None => eprintln!("vigil: tracing {what} (Ctrl-C to stop)"),
    }
}

/// Nanoseconds as a short human string: 950ns, 12.3us, 4.56ms, 1.20s.
pub fn human_ns(ns: u64) -> String {
    let n = ns as f64;
    if ns < 1_000 {
        format!("{ns}ns")
    } else if ns < 1_000_000 {
        format!("{:.1}us", n / 1e3)
    } else if ns < 1_000_000_000 {
        format!("{:.2}ms", n / 1e6)
    } else {
        format!("{:.2}s", n / 1e9)
    }
}

/// Feeds every event to `on_event` until the window ends or a stop signal arrives,
/// then drains what is left in the ring buffer.
pub async fn watch_events(
    reader: &mut crate::probes::EventReader,
    duration: Option<Duration>,
    mut on_event: impl FnMut(&crate::probes::events::Event) -> anyhow::Result<()>,
) -> anyhow::Result<()> {
    let stop = wait_for_stop(duration);
    tokio::pin!(stop);
    let mut batch = Vec::new();
    loop {
        tokio::select! {
            r = &mut stop => { r?; break; }
            r = reader.read(&mut batch) => r.context("reading the event ring buffer")?,
        }
        for e in batch.drain(..) {
            on_event(&e)?;
        }
    }
    reader.drain(&mut batch);
    for e in batch.drain(..) {
        on_event(&e)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_parse() {
        assert_eq!(parse_duration("5s"), Ok(Duration::from_secs(5)));
        assert_eq!(parse_duration("10ms"), Ok(Duration::from_millis(10)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        assert_eq!(parse_duration("1.5s"), Ok(Duration::from_millis(1500)));
        assert_eq!(parse_duration("3"), Ok(Duration::from_secs(3)));
        assert_eq!(parse_duration("7d"), Ok(Duration::from_secs(7 * 86400)));
        assert!(parse_duration("5 parsecs").is_err());
        for huge in [
            "20000000000000000000s",
            "99999999999999999999999d",
            "36501d",
        ] {
            assert!(
                parse_duration(huge).unwrap_err().contains("too long"),
                "{huge}"
            );
        }
        assert_eq!(parse_duration("36500d"), Ok(MAX_DURATION));
        assert!(parse_duration("").is_err());
    }
}
