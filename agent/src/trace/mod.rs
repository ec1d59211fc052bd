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

/// Feeds every event to `on_event` until the window ends or a stop signal arrives,
/// then drains what is left in the ring buffer.
pub async fn watch_events(
    reader: &mut crate::probes::EventReader,
    duration: Option<Duration>,
    mut on_event: impl FnMut(&crate::probes::events::Event) -> anyhow::Result<()>,
) -> anyhow::Result<()> {
    let stop = crate::startup::wait_for_stop(duration);
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
