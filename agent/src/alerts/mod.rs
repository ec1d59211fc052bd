//! The alert engine: rules over the agent's own view of the host, evaluated at the end
//! of every interval on an injected clock (the batch's time), with `for`, hysteresis,
//! `keep_firing_for` and notification damping. It needs no collector and no
//! Prometheus; its state (which alerts are pending or firing, since when, and the
//! learned syscall baselines) is saved under the data directory and survives a restart.
//!
//! Lifecycle of one alert and series: inactive -> pending (the conditions hold) ->
//! firing (they held for `for`) -> resolved (they stopped holding for
//! `keep_firing_for`); pending that stops holding is cancelled. While firing, a
//! condition holds until its value crosses the clear bound (hysteresis).
//!
//! Damping: after a resolution that was notified, a re-fire within `damping` is held
//! (recorded, shown, counted, not notified), and so is its resolution; the group's
//! count goes up by one per held re-fire. A held re-fire still firing when the window
//! ends is notified then, with its count. So one alert and series notifies at most
//! one firing per damping window.
use std::{
    collections::{BTreeMap, BTreeSet, HashMap, VecDeque},
    time::Duration,
};

use serde::{Deserialize, Serialize};
use vigil_proto::v1 as pb;

pub mod metric;
pub mod prometheus;
pub mod rules;
pub mod saved;

use metric::{AgentHealth, Counters, Family, Inputs, Labels, Metric};
use rules::{AlertRule, Condition, Transform};

/// State changes the engine remembers for the API.
pub const RECENT: usize = 1000;
/// Points kept per series for rates and forecasts (older ones are thinned).
const HISTORY_POINTS: usize = 720;
/// Series whose history is kept, at most (more are not forecast, and counted).
const HISTORY_SERIES: usize = 20_000;
/// The syscall baseline: an exponentially weighted mean of log(p99) with this time
/// constant, ready once it has learned for BASELINE_WARMUP.
const BASELINE_TAU_SECS: f64 = 3600.0;
const BASELINE_WARMUP_SECS: f64 = 1800.0;

/// Where a series is in its lifecycle.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "phase", rename_all = "lowercase")]
pub enum Phase {
    Inactive,
    Pending { since_ms: i64 },
    Firing { since_ms: i64, last_true_ms: i64 },
}

/// One alert rule and series.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SeriesState {
    pub phase: Phase,
    /// Whether the current firing was notified.
    pub notified: bool,
    /// Firings in the current damping group.
    pub count: u64,
    /// The last notified resolution (the damping window counts from it).
    pub resolved_ms: Option<i64>,
    pub value: f64,
}

impl SeriesState {
    fn new() -> Self {
        Self {
            phase: Phase::Inactive,
            notified: false,
            count: 0,
            resolved_ms: None,
            value: 0.0,
        }
    }
}

/// A learned baseline (see BASELINE_TAU_SECS).
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct Baseline {
    pub mean_log: f64,
    pub learned_secs: f64,
}

impl Baseline {
    pub fn value(&self) -> Option<f64> {
        (self.learned_secs >= BASELINE_WARMUP_SECS).then(|| self.mean_log.exp())
    }
}

#[derive(Default)]
struct History {
    points: VecDeque<(i64, f64)>,
}

impl History {
    fn push(&mut self, t: i64, v: f64, window_ms: i64) {
        let step = (window_ms / HISTORY_POINTS as i64).max(1);
        let n = self.points.len();
        if n >= 2 && t - self.points[n - 2].0 < step {
            self.points[n - 1] = (t, v);
        } else {
            self.points.push_back((t, v));
        }
        while self
            .points
            .front()
            .is_some_and(|(p, _)| *p < t - window_ms - step)
        {
            self.points.pop_front();
        }
    }

    /// Least-squares line through the points within `over` of `now`: (mean time
    /// offset in seconds, mean value, slope per second). None without enough history
    /// (three points spanning a quarter of the window).
    fn fit(&self, now: i64, over: Duration) -> Option<(f64, f64, f64)> {
        let from = now - over.as_millis() as i64;
        let pts: Vec<(f64, f64)> = self
            .points
            .iter()
            .filter(|(t, _)| *t >= from)
            .map(|(t, v)| ((t - now) as f64 / 1000.0, *v))
            .collect();
        let span = pts.last()?.0 - pts.first()?.0;
        if pts.len() < 3 || span < over.as_secs_f64() / 4.0 {
            return None;
        }
        let n = pts.len() as f64;
        let mx = pts.iter().map(|p| p.0).sum::<f64>() / n;
        let my = pts.iter().map(|p| p.1).sum::<f64>() / n;
        let sxx: f64 = pts.iter().map(|p| (p.0 - mx).powi(2)).sum();
        let sxy: f64 = pts.iter().map(|p| (p.0 - mx) * (p.1 - my)).sum();
        if sxx <= 0.0 {
            return None;
        }
        Some((mx, my, sxy / sxx))
    }
}

type HistoryKey = (Metric, Option<Metric>, Labels);

/// Counters the engine keeps about itself.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct EngineStats {
    pub evaluations: u64,
    /// Re-fires (and their resolutions) held back by damping.
    pub held: u64,
    /// Series not forecast because HISTORY_SERIES were tracked.
    pub history_full: u64,
}

pub struct Engine {
    rules: Vec<AlertRule>,
    damping: Duration,
    series: BTreeMap<(String, Labels), SeriesState>,
    history: HashMap<HistoryKey, History>,
    baselines: BTreeMap<String, Baseline>,
    prev: Option<Counters>,
    last_eval_ms: Option<i64>,
    recent: VecDeque<pb::AlertEvent>,
    stats: EngineStats,
    /// Something worth saving changed since the last `take_dirty`.
    dirty: bool,
}

impl Engine {
    pub fn new(rules: Vec<AlertRule>, damping: Duration) -> Self {
        Self {
            rules,
            damping,
            series: BTreeMap::new(),
            history: HashMap::new(),
            baselines: BTreeMap::new(),
            prev: None,
            last_eval_ms: None,
            recent: VecDeque::new(),
            stats: EngineStats::default(),
            dirty: false,
        }
    }

    pub fn rules(&self) -> &[AlertRule] {
        &self.rules
    }

    pub fn stats(&self) -> EngineStats {
        self.stats
    }

    pub fn set_damping(&mut self, d: Duration) {
        self.damping = d;
    }

    /// New rules (SIGHUP): the state of alerts that still exist is kept.
    pub fn set_rules(&mut self, rules: Vec<AlertRule>) {
        let ids: BTreeSet<String> = rules.iter().map(AlertRule::id).collect();
        self.series.retain(|(id, _), _| ids.contains(id));
        self.rules = rules;
        self.dirty = true;
    }

    /// Alerts pending or firing now.
    pub fn active(&self) -> Vec<pb::AlertEvent> {
        let by_id: HashMap<String, &AlertRule> = self.rules.iter().map(|r| (r.id(), r)).collect();
        self.series
            .iter()
            .filter_map(|((id, labels), s)| {
                let rule = by_id.get(id)?;
                let (state, t, since) = match s.phase {
                    Phase::Inactive => return None,
                    Phase::Pending { since_ms } => ("pending", since_ms, 0),
                    Phase::Firing { since_ms, .. } => ("firing", since_ms, since_ms),
                };
                let mut e = event(rule, labels, state, t, s.value);
                e.active_since_unix_ms = since;
                e.notify = s.notified;
                e.count = s.count;
                Some(e)
            })
            .collect()
    }

    pub fn recent(&self) -> impl Iterator<Item = &pb::AlertEvent> {
        self.recent.iter()
    }

    /// Asks for the next `take_dirty` to say true (a save that could not run yet).
    pub fn mark_dirty(&mut self) {
        self.dirty = true;
    }

    /// Whether the state changed since the last call (then it is worth saving).
    pub fn take_dirty(&mut self) -> bool {
        std::mem::take(&mut self.dirty)
    }

    /// Evaluates every rule at `inputs.time_ms`; returns the state changes.
    pub fn evaluate(&mut self, inputs: &Inputs<'_>) -> Vec<pb::AlertEvent> {
        let now = inputs.time_ms;
        self.stats.evaluations += 1;
        let baselines = &self.baselines;
        let (values, counters) = metric::observe(inputs, self.prev.as_ref(), &|name| {
            baselines.get(name).and_then(Baseline::value)
        });
        self.prev = Some(counters);
        let index: HashMap<Metric, HashMap<&Labels, f64>> = values
            .iter()
            .map(|(m, v)| (*m, v.iter().map(|(l, x)| (l, *x)).collect()))
            .collect();
        let raw = |c: &Condition, l: &Labels| -> Option<f64> {
            let v = *index.get(&c.metric)?.get(l)?;
            match c.divided_by {
                None => Some(v),
                Some(d) => {
                    let d = *index.get(&d)?.get(l)?;
                    (d != 0.0).then(|| v / d)
                }
            }
        };
        // History first: each windowed condition's raw value, once per key.
        let mut windows: HashMap<HistoryKey, i64> = HashMap::new();
        for r in &self.rules {
            for c in &r.when {
                if let Some(w) = c.transform.window() {
                    for (l, _) in values.get(&c.metric).into_iter().flatten() {
                        let k = (c.metric, c.divided_by, l.clone());
                        let e = windows.entry(k).or_insert(0);
                        *e = (*e).max(w.as_millis() as i64);
                    }
                }
            }
        }
        for ((m, d, l), w) in &windows {
            let c = Condition {
                metric: *m,
                divided_by: *d,
                transform: Transform::Value,
                direction: rules::Direction::Above,
                bound: 0.0,
                clear: 0.0,
            };
            let Some(v) = raw(&c, l) else { continue };
            let key = (*m, *d, l.clone());
            if !self.history.contains_key(&key) && self.history.len() >= HISTORY_SERIES {
                self.stats.history_full += 1;
                continue;
            }
            self.history.entry(key).or_default().push(now, v, *w);
        }
        self.history.retain(|k, _| windows.contains_key(k));
        let history = &self.history;
        let value = |c: &Condition, l: &Labels| -> Option<f64> {
            match c.transform {
                Transform::Value => raw(c, l),
                Transform::Rate { over } => {
                    let h = history.get(&(c.metric, c.divided_by, l.clone()))?;
                    h.fit(now, over).map(|(_, _, slope)| slope)
                }
                Transform::Forecast { over, ahead } => {
                    let h = history.get(&(c.metric, c.divided_by, l.clone()))?;
                    h.fit(now, over)
                        .map(|(mx, my, slope)| my + slope * (ahead.as_secs_f64() - mx))
                }
            }
        };
        let mut out = Vec::new();
        for r in &self.rules {
            let id = r.id();
            let mut labels: BTreeSet<Labels> = values
                .get(&r.when[0].metric)
                .into_iter()
                .flatten()
                .map(|(l, _)| l.clone())
                .collect();
            // Series that vanished (an unmounted filesystem) are evaluated as false.
            labels.extend(
                self.series
                    .range((id.clone(), Vec::new())..)
                    .take_while(|((i, _), _)| *i == id)
                    .filter(|(_, s)| s.phase != Phase::Inactive)
                    .map(|((_, l), _)| l.clone()),
            );
            for l in labels {
                let state = self
                    .series
                    .entry((id.clone(), l.clone()))
                    .or_insert_with(SeriesState::new);
                let firing = matches!(state.phase, Phase::Firing { .. });
                let mut first = None;
                let holds = r.when.iter().all(|c| {
                    let v = value(c, &l);
                    first.get_or_insert(v);
                    v.is_some_and(|v| c.holds(v, firing))
                });
                if let Some(Some(v)) = first {
                    state.value = v;
                }
                step(
                    r,
                    &l,
                    state,
                    holds,
                    now,
                    self.damping,
                    &mut self.stats,
                    &mut out,
                );
            }
        }
        // Quiet series past their damping window are forgotten.
        let damping = self.damping.as_millis() as i64;
        self.series.retain(|_, s| {
            s.phase != Phase::Inactive || s.resolved_ms.is_some_and(|r| now - r < damping)
        });
        self.learn_baselines(inputs, now);
        self.last_eval_ms = Some(now);
        for e in &out {
            if self.recent.len() == RECENT {
                self.recent.pop_front();
            }
            self.recent.push_back(e.clone());
        }
        if !out.is_empty() {
            self.dirty = true;
        }
        out
    }

    /// Syscalls with enough calls teach their baseline, unless an alert about that
    /// syscall is pending or firing (a regression must not become the normal).
    fn learn_baselines(&mut self, inputs: &Inputs<'_>, now: i64) {
        let Some(last) = self.last_eval_ms.filter(|l| now > *l) else {
            return;
        };
        let dt = ((now - last) as f64 / 1000.0).min(300.0);
        let alpha = 1.0 - (-dt / BASELINE_TAU_SECS).exp();
        let by_id: HashMap<String, Family> =
            self.rules.iter().map(|r| (r.id(), r.family())).collect();
        let suspect: BTreeSet<&str> = self
            .series
            .iter()
            .filter(|((id, _), s)| {
                s.phase != Phase::Inactive && by_id.get(id) == Some(&Family::Syscall)
            })
            .flat_map(|((_, l), _)| l.iter().map(|(_, v)| v.as_str()))
            .collect();
        for s in inputs.syscalls {
            if s.count < metric::MIN_CALLS || suspect.contains(s.name.as_str()) {
                continue;
            }
            let Some(p99) = metric::p99_secs(s).filter(|p| *p > 0.0) else {
                continue;
            };
            let b = self.baselines.entry(s.name.clone()).or_insert(Baseline {
                mean_log: p99.ln(),
                learned_secs: 0.0,
            });
            b.mean_log += alpha * (p99.ln() - b.mean_log);
            b.learned_secs += dt;
        }
    }
}

/// The event for a state change (labels: the series' and the rule's).
fn event(r: &AlertRule, l: &Labels, state: &str, t: i64, value: f64) -> pb::AlertEvent {
    let mut labels = r.labels.clone();
    labels.extend(l.iter().cloned());
    pb::AlertEvent {
        alert: r.name.clone(),
        state: state.to_string(),
        severity: r.severity.as_str().to_string(),
        summary: render_summary(&r.summary, l, value),
        runbook: r.runbook.clone(),
        time_unix_ms: t,
        value,
        labels,
        ..Default::default()
    }
}

/// `{{ $value }}` and `{{ $labels.NAME }}`, as in Prometheus' annotations.
pub fn render_summary(text: &str, l: &Labels, value: f64) -> String {
    let mut s = text.replace("{{ $value }}", &format_value(value));
    for (k, v) in l {
        s = s.replace(&format!("{{{{ $labels.{k} }}}}"), v);
    }
    s
}

fn format_value(v: f64) -> String {
    if v.abs() >= 100.0 || v == v.trunc() {
        format!("{v:.0}")
    } else {
        format!("{v:.3}")
    }
}

const HELD: &str = "re-fired within the damping window after a notified resolution";

/// One series' transition at `now`.
#[expect(
    clippy::too_many_arguments,
    reason = "one step of the state machine, called from one place"
)]
fn step(
    r: &AlertRule,
    l: &Labels,
    s: &mut SeriesState,
    holds: bool,
    now: i64,
    damping: Duration,
    stats: &mut EngineStats,
    out: &mut Vec<pb::AlertEvent>,
) {
    let damping = damping.as_millis() as i64;
    let fire = |s: &mut SeriesState,
                since: i64,
                out: &mut Vec<pb::AlertEvent>,
                stats: &mut EngineStats| {
        s.phase = Phase::Firing {
            since_ms: since,
            last_true_ms: now,
        };
        let held = s.resolved_ms.is_some_and(|r| now - r < damping);
        let mut e = event(r, l, "firing", now, s.value);
        e.active_since_unix_ms = now;
        if held {
            s.count += 1;
            s.notified = false;
            stats.held += 1;
            e.held_reason = HELD.to_string();
        } else {
            s.count = 1;
            s.notified = true;
            e.notify = true;
        }
        e.count = s.count;
        log(&e);
        out.push(e);
    };
    match s.phase {
        Phase::Inactive if holds => {
            if r.for_.is_zero() {
                fire(s, now, out, stats);
            } else {
                s.phase = Phase::Pending { since_ms: now };
                let e = event(r, l, "pending", now, s.value);
                log(&e);
                out.push(e);
            }
        }
        Phase::Inactive => {}
        Phase::Pending { .. } if !holds => {
            s.phase = Phase::Inactive;
            let e = event(r, l, "cancelled", now, s.value);
            log(&e);
            out.push(e);
        }
        Phase::Pending { since_ms } => {
            if now - since_ms >= r.for_.as_millis() as i64 {
                fire(s, now, out, stats);
            }
        }
        Phase::Firing { since_ms, .. } if holds => {
            s.phase = Phase::Firing {
                since_ms,
                last_true_ms: now,
            };
            // A held re-fire still firing when the window ends is told now.
            if !s.notified && s.resolved_ms.is_none_or(|r| now - r >= damping) {
                s.notified = true;
                let mut e = event(r, l, "firing", now, s.value);
                e.active_since_unix_ms = since_ms;
                e.notify = true;
                e.count = s.count;
                log(&e);
                out.push(e);
            }
        }
        Phase::Firing {
            since_ms,
            last_true_ms,
        } => {
            if now - last_true_ms >= r.keep_firing_for.as_millis() as i64 {
                s.phase = Phase::Inactive;
                let mut e = event(r, l, "resolved", now, s.value);
                e.active_since_unix_ms = since_ms;
                e.count = s.count;
                if s.notified {
                    e.notify = true;
                    s.resolved_ms = Some(now);
                } else {
                    stats.held += 1;
                    e.held_reason = HELD.to_string();
                }
                s.notified = false;
                log(&e);
                out.push(e);
            }
        }
    }
}

fn log(e: &pb::AlertEvent) {
    let mut labels: Vec<_> = e.labels.iter().map(|(k, v)| format!("{k}={v}")).collect();
    labels.sort();
    let labels = labels.join(",");
    let held = if e.held_reason.is_empty() {
        String::new()
    } else {
        format!(" (not notified: {})", e.held_reason)
    };
    match e.state.as_str() {
        "firing" => tracing::warn!(
            alert = %e.alert, severity = %e.severity, %labels, value = e.value,
            "alert {} {{{labels}}} FIRING ({}): {} (runbook {}){held}",
            e.alert, e.severity, e.summary, e.runbook
        ),
        "resolved" => tracing::info!(
            alert = %e.alert, %labels,
            "alert {} {{{labels}}} resolved{held}", e.alert
        ),
        state => {
            tracing::debug!(alert = %e.alert, %labels, "alert {} {{{labels}}} {state}", e.alert)
        }
    }
}

/// Inputs for tests and replays: a host sample with nothing else.
pub fn inputs<'a>(
    time_ms: i64,
    metrics: &'a pb::HostMetrics,
    agent: &'a AgentHealth,
) -> Inputs<'a> {
    Inputs {
        time_ms,
        metrics,
        syscalls: &[],
        findings: &[],
        agent,
    }
}

#[cfg(test)]
mod tests;
