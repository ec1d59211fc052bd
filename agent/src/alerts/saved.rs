//! The engine's state on disk (`<data_dir>/alerts/state.json`): which alerts are
//! pending or firing and since when, damping groups, and the learned syscall
//! baselines. Written whole (temporary file, fsync, rename) when it changed; a damaged
//! file is set aside as `state.damaged-<ms>`, counted, and the engine starts afresh.
use std::{
    collections::BTreeMap,
    io::Write as _,
    path::{Path, PathBuf},
};

use serde::{Deserialize, Serialize};

use super::{metric::Labels, Baseline, Engine, SeriesState};

const VERSION: u32 = 1;
/// A state file is small (a few KiB); anything past this is not one of ours.
const MAX_BYTES: u64 = 64 << 20;

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Saved {
    version: u32,
    saved_unix_ms: i64,
    series: Vec<SavedSeries>,
    baselines: BTreeMap<String, Baseline>,
}

#[derive(Serialize, Deserialize)]
struct SavedSeries {
    alert: String,
    labels: Labels,
    #[serde(flatten)]
    state: SeriesState,
}

impl Engine {
    pub fn to_saved(&self, now_ms: i64) -> Saved {
        Saved {
            version: VERSION,
            saved_unix_ms: now_ms,
            series: self
                .series
                .iter()
                .map(|((alert, labels), state)| SavedSeries {
                    alert: alert.clone(),
                    labels: labels.clone(),
                    state: state.clone(),
                })
                .collect(),
            baselines: self.baselines.clone(),
        }
    }

    /// Takes the saved state of the alerts that still have a rule.
    pub fn restore(&mut self, saved: Saved) -> usize {
        let ids: std::collections::BTreeSet<String> =
            self.rules.iter().map(super::rules::AlertRule::id).collect();
        let mut n = 0;
        for s in saved.series {
            if ids.contains(&s.alert) {
                self.series.insert((s.alert, s.labels), s.state);
                n += 1;
            }
        }
        self.baselines = saved.baselines;
        n
    }
}

pub fn path(data_dir: &Path) -> PathBuf {
    data_dir.join("alerts").join("state.json")
}

/// What loading found.
pub enum Loaded {
    Missing,
    Ok(Saved),
    /// Set aside under this name, for a postmortem.
    Damaged {
        reason: String,
        kept: PathBuf,
    },
}

/// Reads the state file; a damaged one is renamed aside.
pub fn load(path: &Path, now_ms: i64) -> Loaded {
    let text = match std::fs::metadata(path) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Loaded::Missing,
        Err(e) => Err(e.to_string()),
        Ok(m) if m.len() > MAX_BYTES => Err(format!("{} bytes, not a state file", m.len())),
        Ok(_) => std::fs::read(path).map_err(|e| e.to_string()),
    };
    let parsed = text.and_then(|b| {
        let s: Saved = serde_json::from_slice(&b).map_err(|e| e.to_string())?;
        if s.version != VERSION {
            return Err(format!(
                "version {} (this agent writes {VERSION})",
                s.version
            ));
        }
        Ok(s)
    });
    match parsed {
        Ok(s) => Loaded::Ok(s),
        Err(reason) => {
            let kept = path.with_file_name(format!("state.damaged-{now_ms}"));
            if let Err(e) = std::fs::rename(path, &kept) {
                tracing::warn!(error = %e, "cannot set the damaged alert state aside; it will be overwritten");
            }
            Loaded::Damaged { reason, kept }
        }
    }
}

/// Writes the state whole: a crash leaves the old file or the new one.
pub fn store(path: &Path, saved: &Saved) -> std::io::Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir)?;
    let tmp = path.with_extension("json.tmp");
    let bytes = serde_json::to_vec(saved).map_err(std::io::Error::other)?;
    let mut f = std::fs::File::create(&tmp)?;
    f.write_all(&bytes)?;
    f.sync_all()?;
    std::fs::rename(&tmp, path)?;
    std::fs::File::open(dir)?.sync_all()
}
