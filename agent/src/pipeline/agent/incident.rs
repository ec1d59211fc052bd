//! `[incident] auto_snapshot`: when an alert of severity critical starts firing, the
//! agent writes the snapshot `vigil incident snapshot --local` would (from its own
//! history, `before` ahead of the alert to the interval it fired in) into
//! data_dir/incidents. Rendering runs on the blocking pool, one at a time: a critical
//! alert that fires while one is being written is counted (skipped_busy), not queued.
//! The directory is bounded by count and bytes, the oldest going first (pruned).
use std::{
    path::{Path, PathBuf},
    sync::{
        atomic::{AtomicBool, AtomicU64, Ordering},
        Arc,
    },
};

use vigil_proto::v1 as pb;

use crate::{config::IncidentConfig, query::state::StateWriter, triage};

/// The snapshots' directory under the data dir.
pub const DIR: &str = "incidents";

#[derive(Default)]
struct Counts {
    written: AtomicU64,
    skipped_busy: AtomicU64,
    failed: AtomicU64,
    pruned: AtomicU64,
}

pub(super) struct AutoSnapshot {
    config: IncidentConfig,
    dir: PathBuf,
    busy: Arc<AtomicBool>,
    counts: Arc<Counts>,
}

impl AutoSnapshot {
    /// None when `auto_snapshot` is off.
    pub(super) fn new(config: &IncidentConfig, data_dir: &Path) -> Option<Self> {
        config.auto_snapshot.then(|| Self {
            config: config.clone(),
            dir: data_dir.join(DIR),
            busy: Arc::new(AtomicBool::new(false)),
            counts: Arc::new(Counts::default()),
        })
    }

    /// After each interval's batch is in the history: a critical alert that started
    /// firing in it starts a snapshot. Publishes the counts.
    pub(super) fn on_interval(&mut self, batch: &pb::Batch, state: &StateWriter) {
        if let Some(fired) = batch
            .alerts
            .iter()
            .find(|a| a.state == "firing" && a.severity == "critical")
        {
            if self.busy.swap(true, Ordering::AcqRel) {
                self.counts.skipped_busy.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(
                    alert = %fired.alert,
                    "incident snapshot not taken: the previous one is still being written (counted: incident_snapshots.skipped_busy)"
                );
            } else {
                self.start(fired, batch.end_unix_ms, state);
            }
        }
        let c = &self.counts;
        state.write().agent_self().incident_snapshots = [
            ("written", &c.written),
            ("skipped_busy", &c.skipped_busy),
            ("failed", &c.failed),
            ("pruned", &c.pruned),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v.load(Ordering::Relaxed)))
        .collect();
    }

    fn start(&self, fired: &pb::AlertEvent, to: i64, state: &StateWriter) {
        let before = i64::try_from(self.config.before.0.as_millis()).unwrap_or(i64::MAX);
        let from = fired.time_unix_ms.saturating_sub(before);
        // Copied out under the lock; rendered off the loop.
        let (history, findings) = {
            let reader = state.reader();
            let st = reader.read();
            let history = triage::collect(from.saturating_sub(before), to, |since| {
                st.history(since, to, 0)
            });
            let findings: Vec<pb::Finding> = st
                .findings_from(0)
                .map(|(_, f)| f)
                .filter(|f| f.time_unix_ms > from && f.time_unix_ms <= to)
                .cloned()
                .collect();
            (history, findings)
        };
        let inputs = triage::snapshot::Inputs {
            history,
            from,
            to,
            findings,
            // The agent keeps no maintenance windows: they live at the collector.
            windows: Ok(Vec::new()),
            source: format!(
                "the agent itself, when {} ({}) started firing",
                fired.alert, fired.severity
            ),
        };
        let name = format!(
            "vigil-incident-{}-{}-{}.html",
            safe(&inputs.history.host.hostname),
            vigil_units::rfc3339_ms(fired.time_unix_ms).replace(':', ""),
            safe(&fired.alert)
        );
        let (dir, config) = (self.dir.clone(), self.config.clone());
        let (busy, counts) = (self.busy.clone(), self.counts.clone());
        tokio::task::spawn_blocking(move || {
            // Free for the next one however this ends (a panic in rendering included:
            // it is then neither written nor failed, and the next critical alert tries
            // again).
            let _free = Free(busy);
            match write(&inputs, &dir, &name) {
                Ok(bytes) => {
                    counts.written.fetch_add(1, Ordering::Relaxed);
                    tracing::info!(
                        file = %dir.join(&name).display(),
                        bytes,
                        "incident snapshot written"
                    );
                }
                Err(e) => {
                    counts.failed.fetch_add(1, Ordering::Relaxed);
                    tracing::error!(
                        "incident snapshot {name} not written (counted: incident_snapshots.failed): {e:#}"
                    );
                }
            }
            let (pruned, too_big) = prune(&dir, &config, &name);
            counts.pruned.fetch_add(pruned, Ordering::Relaxed);
            if too_big {
                counts.failed.fetch_add(1, Ordering::Relaxed);
                tracing::error!(
                    "incident snapshot {name} is over incident.max_bytes ({}) alone: removed (counted: incident_snapshots.failed)",
                    config.max_bytes
                );
            }
        });
    }
}

/// Clears the busy flag when dropped.
struct Free(Arc<AtomicBool>);

impl Drop for Free {
    fn drop(&mut self) {
        self.0.store(false, Ordering::Release);
    }
}

/// A name's letters, digits, '-', '_' and '.'; the rest as '_'.
fn safe(s: &str) -> String {
    s.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.') {
                c
            } else {
                '_'
            }
        })
        .collect()
}

/// Renders and writes the page (a temporary name, then renamed): its size.
fn write(inputs: &triage::snapshot::Inputs, dir: &Path, name: &str) -> anyhow::Result<u64> {
    use anyhow::Context as _;
    let html = triage::snapshot::render(inputs, false)?;
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let tmp = dir.join(format!(".{name}.tmp"));
    std::fs::write(&tmp, &html).with_context(|| format!("writing {}", tmp.display()))?;
    std::fs::rename(&tmp, dir.join(name)).with_context(|| format!("naming {name}"))?;
    Ok(html.len() as u64)
}

/// Removes the oldest snapshots (by modification time) until at most
/// max_snapshots and max_bytes remain; `newest` goes only if it alone is over
/// max_bytes. How many went, and whether `newest` was one.
fn prune(dir: &Path, config: &IncidentConfig, newest: &str) -> (u64, bool) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return (0, false);
    };
    let mut files: Vec<(std::time::SystemTime, String, u64)> = entries
        .flatten()
        .filter_map(|e| {
            let name = e.file_name().into_string().ok()?;
            let meta = e.metadata().ok()?;
            (name.starts_with("vigil-incident-") && name.ends_with(".html") && meta.is_file()).then(
                || {
                    (
                        meta.modified().unwrap_or(std::time::UNIX_EPOCH),
                        name,
                        meta.len(),
                    )
                },
            )
        })
        .collect();
    let mut too_big = false;
    if let Some(at) = files.iter().position(|f| f.1 == newest) {
        if files[at].2 > config.max_bytes {
            match std::fs::remove_file(dir.join(newest)) {
                Ok(()) => {
                    files.remove(at);
                    too_big = true;
                }
                Err(e) => tracing::error!("removing the incident snapshot {newest}: {e}"),
            }
        }
    }
    // Oldest first; the one just written last whatever the clock says.
    files.sort_by(|a, b| (a.1 == newest, a.0, &a.1).cmp(&(b.1 == newest, b.0, &b.1)));
    let mut total: u64 = files.iter().map(|f| f.2).sum();
    let mut count = files.len();
    let mut pruned = 0;
    for (_, name, len) in &files {
        if count <= config.max_snapshots as usize && total <= config.max_bytes {
            break;
        }
        match std::fs::remove_file(dir.join(name)) {
            Ok(()) => {
                count -= 1;
                total -= len;
                pruned += 1;
            }
            Err(e) => tracing::error!("removing the old incident snapshot {name}: {e}"),
        }
    }
    (pruned, too_big)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_oldest_go_first_and_the_newest_only_when_it_alone_is_too_big() {
        let dir = tempfile::tempdir().unwrap();
        let put = |name: &str, len: usize| {
            std::fs::write(dir.path().join(name), vec![b'x'; len]).unwrap();
            // Distinct modification times, oldest first.
            std::thread::sleep(std::time::Duration::from_millis(20));
        };
        put("vigil-incident-a-1.html", 10);
        put("vigil-incident-a-2.html", 10);
        put("vigil-incident-a-3.html", 10);
        put("notes.txt", 1000);
        let config = IncidentConfig {
            max_snapshots: 2,
            max_bytes: 100,
            ..IncidentConfig::default()
        };
        assert_eq!(
            prune(dir.path(), &config, "vigil-incident-a-3.html"),
            (1, false)
        );
        assert!(!dir.path().join("vigil-incident-a-1.html").exists());
        assert!(dir.path().join("vigil-incident-a-2.html").exists());
        assert!(dir.path().join("notes.txt").exists(), "not ours: kept");
        put("vigil-incident-a-4.html", 200);
        assert_eq!(
            prune(dir.path(), &config, "vigil-incident-a-4.html"),
            (0, true)
        );
        assert!(!dir.path().join("vigil-incident-a-4.html").exists());
        assert!(dir.path().join("vigil-incident-a-2.html").exists());
        put("vigil-incident-a-5.html", 90);
        assert_eq!(
            prune(dir.path(), &config, "vigil-incident-a-5.html"),
            (1, false),
            "over max_bytes together: the oldest goes"
        );
        assert!(!dir.path().join("vigil-incident-a-2.html").exists());
        assert!(dir.path().join("vigil-incident-a-3.html").exists());
    }
}
