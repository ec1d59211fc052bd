//! SLOs at the collector (#16, first part: definitions and the arithmetic): files in an
//! OpenSLO v1 subset over the agents' SLIs, and per SLO its SLI over the time window,
//! the error budget left, the burn rate over the Google SRE workbook's windows, and
//! whether its page or ticket alert fires (multiwindow, multi-burn-rate, as Sloth
//! generates them).
//!
//! The OpenSLO v1 subset read: `apiVersion: openslo/v1`, `kind: SLO`,
//! `metadata.name`, `metadata.displayName`, `metadata.annotations["vigil.dev/hosts"]`
//! (a hostname glob: the host group; default every host), `spec.description`,
//! `spec.service`, `spec.indicatorRef` (the name of an SLI in the agents' sli.d),
//! `spec.timeWindow` (one rolling window, `28d` or `30d` or any duration),
//! `spec.budgetingMethod: Occurrences`, `spec.objectives` (one, with `target` in (0, 1)
//! and an optional `displayName`). Anything else is refused by name.
use std::time::Duration;

use serde::Deserialize;
use vigil_proto::v1 as pb_alert;

/// One SLO, checked.
#[derive(Clone, Debug, PartialEq)]
pub struct Slo {
    pub name: String,
    pub display_name: String,
    pub service: String,
    pub indicator: String,
    pub hosts: String,
    pub window: Duration,
    pub target: f64,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct Doc {
    api_version: String,
    kind: String,
    metadata: Metadata,
    spec: Spec,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct Metadata {
    name: String,
    #[serde(default)]
    display_name: Option<String>,
    #[serde(default)]
    annotations: std::collections::BTreeMap<String, String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct Spec {
    #[serde(default)]
    description: Option<String>,
    #[serde(default)]
    service: Option<String>,
    indicator_ref: String,
    time_window: Vec<TimeWindow>,
    budgeting_method: String,
    objectives: Vec<Objective>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct TimeWindow {
    duration: String,
    is_rolling: bool,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct Objective {
    #[serde(default)]
    display_name: Option<String>,
    target: f64,
}

/// Parses a file of one or more `---`-separated SLO documents.
pub fn parse(file: &str, text: &str) -> Result<Vec<Slo>, String> {
    let mut out: Vec<Slo> = Vec::new();
    for doc in yaml_serde::Deserializer::from_str(text) {
        let d = Doc::deserialize(doc).map_err(|e| {
            let line = e.location().map_or(0, |l| l.line());
            format!("{file}:{line}: {e}")
        })?;
        let at = |reason: String| format!("{file}: SLO {}: {reason}", d.metadata.name);
        if d.api_version != "openslo/v1" {
            return Err(at(format!(
                "apiVersion {:?}: openslo/v1 only",
                d.api_version
            )));
        }
        if d.kind != "SLO" {
            return Err(at(format!(
                "kind {:?}: SLO only (give the SLI in spec.indicatorRef)",
                d.kind
            )));
        }
        if d.spec.budgeting_method != "Occurrences" {
            return Err(at(format!(
                "budgetingMethod {:?}: Occurrences only",
                d.spec.budgeting_method
            )));
        }
        let [window] = d.spec.time_window.as_slice() else {
            return Err(at("timeWindow: exactly one".into()));
        };
        if !window.is_rolling {
            return Err(at(
                "timeWindow: rolling windows only (isRolling: true)".into()
            ));
        }
        let window = vigil_units::parse_duration(&window.duration)
            .map_err(|e| at(format!("timeWindow.duration: {e}")))?;
        if window < Duration::from_secs(3600) {
            return Err(at("timeWindow.duration: at least 1h".into()));
        }
        let [objective] = d.spec.objectives.as_slice() else {
            return Err(at("objectives: exactly one".into()));
        };
        if !(objective.target > 0.0 && objective.target < 1.0) {
            return Err(at(format!(
                "objectives[0].target {}: between 0 and 1",
                objective.target
            )));
        }
        for k in d.metadata.annotations.keys() {
            if k.starts_with("vigil.dev/") && k != "vigil.dev/hosts" {
                return Err(at(format!(
                    "annotation {k}: unknown (vigil.dev/hosts only)"
                )));
            }
        }
        if out.iter().any(|s| s.name == d.metadata.name) {
            return Err(at("defined twice".into()));
        }
        let _ = (&d.spec.description, &objective.display_name);
        out.push(Slo {
            display_name: d
                .metadata
                .display_name
                .clone()
                .unwrap_or_else(|| d.metadata.name.clone()),
            service: d.spec.service.clone().unwrap_or_default(),
            indicator: d.spec.indicator_ref.clone(),
            hosts: d
                .metadata
                .annotations
                .get("vigil.dev/hosts")
                .cloned()
                .unwrap_or_else(|| "*".into()),
            window,
            target: objective.target,
            name: d.metadata.name,
        });
    }
    Ok(out)
}

/// A burn-rate alert window pair of the workbook: it fires when the burn rate over both
/// the long and the short window is above `factor`.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct BurnWindow {
    pub long: Duration,
    pub short: Duration,
    pub factor: f64,
}

const H: u64 = 3600;

/// Page: 1h/5m at 14.4x (2 % of a 30-day budget in an hour) or 6h/30m at 6x (5 % in 6h).
pub const PAGE: [BurnWindow; 2] = [
    BurnWindow {
        long: Duration::from_secs(H),
        short: Duration::from_secs(300),
        factor: 14.4,
    },
    BurnWindow {
        long: Duration::from_secs(6 * H),
        short: Duration::from_secs(1800),
        factor: 6.0,
    },
];

/// Ticket: 1d/2h at 3x (10 % in a day) or 3d/6h at 1x (10 % in 3 days).
pub const TICKET: [BurnWindow; 2] = [
    BurnWindow {
        long: Duration::from_secs(24 * H),
        short: Duration::from_secs(2 * H),
        factor: 3.0,
    },
    BurnWindow {
        long: Duration::from_secs(72 * H),
        short: Duration::from_secs(6 * H),
        factor: 1.0,
    },
];

/// What an SLO says now.
#[derive(Clone, Debug, PartialEq)]
pub struct Status {
    /// good / total over the time window (None without events).
    pub sli: Option<f64>,
    /// 1 - (bad / total) / (1 - target) over the time window: 1 untouched, 0 spent,
    /// below 0 overspent.
    pub budget_left: f64,
    /// (window, burn rate) for every window the alerts use, shortest first.
    pub burn: Vec<(Duration, f64)>,
    pub page: bool,
    pub ticket: bool,
}

/// The burn rate over `window` ending at `now_ms`: the bad share of the events in
/// (now - window, now], divided by the share the objective allows. 0 without events.
pub fn burn_rate(counts: &[(i64, u64, u64)], target: f64, now_ms: i64, window: Duration) -> f64 {
    let (good, total) = sum(counts, now_ms - window.as_millis() as i64, now_ms);
    rate_of(good, total, target)
}

/// Events (time, good, total) whose time is in (from, to].
fn sum(counts: &[(i64, u64, u64)], from: i64, to: i64) -> (u64, u64) {
    counts
        .iter()
        .filter(|(t, ..)| *t > from && *t <= to)
        .fold((0, 0), |(g, n), (_, a, b)| (g + a, n + b))
}

/// The host-up SLI over (from, to] from each host's (batch end, ms covered): good is the
/// time its batches cover, total the time since its first batch began (or `from`).
pub fn host_up(
    hosts: &std::collections::BTreeMap<String, Vec<(i64, u64)>>,
    from: i64,
    to: i64,
) -> (u64, u64) {
    let (mut good, mut total) = (0u64, 0u64);
    for rows in hosts.values() {
        let Some(first) = rows.iter().map(|(t, c)| t - *c as i64).min() else {
            continue;
        };
        let span = u64::try_from(to - from.max(first)).unwrap_or(0);
        let covered: u64 = rows
            .iter()
            .filter(|(t, _)| *t > from && *t <= to)
            .map(|(_, c)| c)
            .sum();
        good += covered.min(span);
        total += span;
    }
    (good, total)
}

/// The SLO's status from its counts (time, good, total; any order) at `now_ms`.
pub fn status(slo: &Slo, counts: &[(i64, u64, u64)], now_ms: i64) -> Status {
    status_by(slo, now_ms, |from| sum(counts, from, now_ms))
}

/// The SLO's status at `now_ms`, `over(from)` giving (good, total) in (from, now_ms].
pub fn status_by(slo: &Slo, now_ms: i64, over: impl Fn(i64) -> (u64, u64)) -> Status {
    let (good, total) = over(now_ms - slo.window.as_millis() as i64);
    let sli = (total > 0).then(|| good.min(total) as f64 / total as f64);
    let budget_left = match sli {
        Some(s) => 1.0 - (1.0 - s) / (1.0 - slo.target),
        None => 1.0,
    };
    let mut windows: Vec<Duration> = PAGE
        .iter()
        .chain(&TICKET)
        .flat_map(|w| [w.long, w.short])
        .collect();
    windows.sort();
    windows.dedup();
    let burn: Vec<(Duration, f64)> = windows
        .iter()
        .map(|w| {
            let (good, total) = over(now_ms - w.as_millis() as i64);
            (*w, rate_of(good, total, slo.target))
        })
        .collect();
    let rate = |w: Duration| burn.iter().find(|(x, _)| *x == w).map_or(0.0, |(_, r)| *r);
    let fires = |set: &[BurnWindow]| {
        set.iter()
            .any(|w| rate(w.long) > w.factor && rate(w.short) > w.factor)
    };
    Status {
        sli,
        budget_left,
        page: fires(&PAGE),
        ticket: fires(&TICKET),
        burn,
    }
}

/// The bad share over the share the objective allows (0 without events).
fn rate_of(good: u64, total: u64, target: f64) -> f64 {
    if total == 0 {
        return 0.0;
    }
    (total - good.min(total)) as f64 / total as f64 / (1.0 - target)
}

/// `*` and `?` glob on a hostname.
pub fn glob(pattern: &str, name: &str) -> bool {
    let (p, n): (Vec<char>, Vec<char>) = (pattern.chars().collect(), name.chars().collect());
    let (mut i, mut j, mut star, mut mark) = (0, 0, None, 0);
    while j < n.len() {
        if i < p.len() && (p[i] == '?' || p[i] == n[j]) {
            i += 1;
            j += 1;
        } else if i < p.len() && p[i] == '*' {
            star = Some(i);
            mark = j;
            i += 1;
        } else if let Some(s) = star {
            i = s + 1;
            mark += 1;
            j = mark;
        } else {
            return false;
        }
    }
    p[i..].iter().all(|c| *c == '*')
}

/// Every `*.yaml`/`*.yml` in `dir` (sorted): the SLOs, and each refused file's problem.
pub fn load(dir: &std::path::Path) -> (Vec<Slo>, Vec<String>) {
    let mut slos: Vec<Slo> = Vec::new();
    let mut problems = Vec::new();
    let mut files: Vec<_> = match std::fs::read_dir(dir) {
        Ok(e) => e
            .filter_map(Result::ok)
            .map(|e| e.path())
            .filter(|p| p.extension().is_some_and(|x| x == "yaml" || x == "yml"))
            .collect(),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
        Err(e) => return (slos, vec![format!("{}: {e}", dir.display())]),
    };
    files.sort();
    for f in files {
        let name = f.display().to_string();
        match std::fs::read_to_string(&f)
            .map_err(|e| format!("{name}: {e}"))
            .and_then(|t| parse(&name, &t))
        {
            Ok(list) => {
                for s in list {
                    if slos.iter().any(|x| x.name == s.name) {
                        problems.push(format!(
                            "{name}: SLO {} is also defined in another file",
                            s.name
                        ));
                    } else {
                        slos.push(s);
                    }
                }
            }
            Err(e) => problems.push(e),
        }
    }
    (slos, problems)
}

/// Every SLO in `dir` over the store's counts at `now_ms`.
pub fn answer(
    store: &mut crate::Store,
    dir: &std::path::Path,
    now_ms: i64,
) -> Result<vigil_proto::v1::SlosResponse, crate::StoreError> {
    use vigil_proto::v1 as pb;
    let (slos, problems) = load(dir);
    let hostnames: std::collections::HashMap<String, String> = store
        .hosts()?
        .into_iter()
        .filter_map(|h| h.host.map(|i| (i.agent_id, i.hostname)))
        .collect();
    let longest = TICKET[1].long;
    let mut out = Vec::new();
    for slo in slos {
        let since = now_ms - slo.window.max(longest).as_millis() as i64;
        let rows = store.sli_counts(&slo.indicator, since)?;
        let mut hosts = std::collections::BTreeSet::new();
        let rows: Vec<(String, i64, u64, u64)> = rows
            .into_iter()
            .filter(|(agent, ..)| {
                glob(
                    &slo.hosts,
                    hostnames.get(agent).map_or(agent.as_str(), String::as_str),
                )
            })
            .inspect(|(agent, ..)| {
                hosts.insert(agent.clone());
            })
            .collect();
        let from = now_ms - slo.window.as_millis() as i64;
        let (st, (good, total)) = if slo.indicator == crate::store::HOST_UP {
            let mut by_host: std::collections::BTreeMap<String, Vec<(i64, u64)>> =
                std::collections::BTreeMap::new();
            for (agent, t, g, _) in rows {
                by_host.entry(agent).or_default().push((t, g));
            }
            (
                status_by(&slo, now_ms, |f| host_up(&by_host, f, now_ms)),
                host_up(&by_host, from, now_ms),
            )
        } else {
            let counts: Vec<(i64, u64, u64)> =
                rows.into_iter().map(|(_, t, g, n)| (t, g, n)).collect();
            (status(&slo, &counts, now_ms), sum(&counts, from, now_ms))
        };
        out.push(pb::SloStatus {
            name: slo.name.clone(),
            display_name: slo.display_name.clone(),
            service: slo.service.clone(),
            indicator: slo.indicator.clone(),
            hosts: slo.hosts.clone(),
            target: slo.target,
            window_secs: slo.window.as_secs(),
            good,
            total,
            sli: st.sli.unwrap_or(0.0),
            budget_left: st.budget_left,
            burn: st
                .burn
                .iter()
                .map(|(w, r)| pb::SloBurn {
                    window_secs: w.as_secs(),
                    burn_rate: *r,
                })
                .collect(),
            page: st.page,
            ticket: st.ticket,
            hosts_counted: hosts.len() as u32,
        });
    }
    Ok(pb::SlosResponse {
        slos: out,
        problems,
    })
}

/// What the SLO evaluator last found, for the collector's /metrics.
pub type Latest = std::sync::Arc<std::sync::Mutex<Evaluated>>;

#[derive(Debug, Default)]
pub struct Evaluated {
    pub answer: Option<pb_alert::SlosResponse>,
    pub firing: Vec<pb_alert::AlertEvent>,
    pub evaluations: u64,
    pub failures: u64,
}

/// The SLO alerts' name; `slo_severity` (page or ticket) tells the two apart, as
/// `sloth_severity` does in Sloth's rules.
pub const ALERT: &str = "SLOErrorBudgetBurn";
/// Where its runbook is, as packaged.
pub const RUNBOOK: &str = "/usr/share/doc/vigil-agent/runbooks/alerts.md#sloerrorbudgetburn";

/// Page and ticket alerts of every SLO, raised and resolved as the collector evaluates
/// them (every `alerting.slo_evaluation_interval`). Kept in memory: after a restart the
/// first evaluation raises what still burns (Alertmanager had kept it firing, as the
/// collector re-sends with `endsAt` ahead, so nobody is paged twice).
#[derive(Debug, Default)]
pub struct Evaluator {
    /// (SLO, page|ticket) firing, and since when.
    firing: std::collections::BTreeMap<(String, &'static str), (i64, pb_alert::AlertEvent)>,
}

impl Evaluator {
    /// The alert changes from the last evaluation to `slos` (an SLO no longer
    /// defined resolves its alerts).
    pub fn changes(
        &mut self,
        slos: &[pb_alert::SloStatus],
        now_ms: i64,
    ) -> Vec<pb_alert::AlertEvent> {
        let mut out = Vec::new();
        let mut seen = std::collections::BTreeSet::new();
        for s in slos {
            let rate = |secs: u64| {
                s.burn
                    .iter()
                    .find(|b| b.window_secs == secs)
                    .map_or(0.0, |b| b.burn_rate)
            };
            for (kind, severity, set) in
                [("page", "critical", &PAGE), ("ticket", "warning", &TICKET)]
            {
                let key = (s.name.clone(), kind);
                seen.insert(key.clone());
                let fired = set.iter().find(|w| {
                    rate(w.long.as_secs()) > w.factor && rate(w.short.as_secs()) > w.factor
                });
                match (fired, self.firing.contains_key(&key)) {
                    (Some(w), false) => {
                        let long = rate(w.long.as_secs());
                        let windows = format!("{}/{}", short(w.long), short(w.short));
                        let mut labels = std::collections::BTreeMap::new();
                        labels.insert("slo".to_string(), s.name.clone());
                        labels.insert("slo_severity".to_string(), kind.to_string());
                        labels.insert("service".to_string(), s.service.clone());
                        labels.insert("sli".to_string(), s.indicator.clone());
                        let a = pb_alert::AlertEvent {
                            alert: ALERT.into(),
                            state: "firing".into(),
                            severity: severity.into(),
                            labels,
                            summary: format!(
                                "SLO {} (hosts {}) burns its error budget at {long:.1}x over {windows} (the {kind} fires over {}x): at this rate a {} budget lasts {}",
                                s.display_name,
                                s.hosts,
                                w.factor,
                                short(Duration::from_secs(s.window_secs)),
                                budget_lasts(s.window_secs, long),
                            ),
                            runbook: RUNBOOK.into(),
                            time_unix_ms: now_ms,
                            active_since_unix_ms: now_ms,
                            value: long,
                            notify: true,
                            count: 1,
                            held_reason: String::new(),
                        };
                        self.firing.insert(key, (now_ms, a.clone()));
                        out.push(a);
                    }
                    (None, true) => {
                        if let Some((since, a)) = self.firing.remove(&key) {
                            out.push(resolved(a, since, now_ms));
                        }
                    }
                    _ => {}
                }
            }
        }
        let gone: Vec<_> = self
            .firing
            .keys()
            .filter(|k| !seen.contains(*k))
            .cloned()
            .collect();
        for k in gone {
            if let Some((since, a)) = self.firing.remove(&k) {
                out.push(resolved(a, since, now_ms));
            }
        }
        out
    }

    /// The alerts firing now.
    pub fn firing(&self) -> impl Iterator<Item = &pb_alert::AlertEvent> {
        self.firing.values().map(|(_, a)| a)
    }
}

fn resolved(mut a: pb_alert::AlertEvent, since: i64, now_ms: i64) -> pb_alert::AlertEvent {
    a.state = "resolved".into();
    a.time_unix_ms = now_ms;
    a.active_since_unix_ms = since;
    a.summary = format!("resolved: {}", a.summary);
    a
}

/// How long a whole budget of `window_secs` lasts at burn rate `rate`.
fn budget_lasts(window_secs: u64, rate: f64) -> String {
    if rate <= 0.0 || !rate.is_finite() {
        return "forever".into();
    }
    vigil_units::human_secs((window_secs as f64 / rate).clamp(1.0, window_secs as f64))
}

/// A window as the workbook writes it: 5m, 1h, 3d.
pub fn short(d: Duration) -> String {
    let s = d.as_secs();
    match s {
        0 => "0s".into(),
        _ if s.is_multiple_of(86_400) => format!("{}d", s / 86_400),
        _ if s.is_multiple_of(3600) => format!("{}h", s / 3600),
        _ if s.is_multiple_of(60) => format!("{}m", s / 60),
        _ => format!("{s}s"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const FILE: &str = "apiVersion: openslo/v1\nkind: SLO\nmetadata:\n  name: fsync-latency\n  displayName: fsync under 10 ms\n  annotations:\n    vigil.dev/hosts: \"db-*\"\nspec:\n  service: storage\n  indicatorRef: fsync-fast\n  timeWindow:\n    - duration: 30d\n      isRolling: true\n  budgetingMethod: Occurrences\n  objectives:\n    - target: 0.99\n";

    #[test]
    fn the_openslo_subset_parses_and_the_rest_is_refused_by_name() {
        let s = parse("f.yaml", FILE).unwrap();
        assert_eq!(s.len(), 1);
        assert_eq!(s[0].indicator, "fsync-fast");
        assert_eq!(s[0].hosts, "db-*");
        assert_eq!(s[0].window, Duration::from_secs(30 * 86_400));
        assert_eq!(s[0].target, 0.99);
        for (from, to, why) in [
            ("Occurrences", "Timeslices", "Occurrences only"),
            ("isRolling: true", "isRolling: false", "rolling"),
            ("target: 0.99", "target: 1.5", "between 0 and 1"),
            ("kind: SLO", "kind: SLI", "SLO only"),
            (
                "  service: storage\n",
                "  service: storage\n  alertPolicies: []\n",
                "alertPolicies",
            ),
        ] {
            let e = parse("f.yaml", &FILE.replace(from, to)).unwrap_err();
            assert!(e.contains(why), "{e}");
        }
        let two = format!("{FILE}---\n{}", FILE.replace("fsync-latency", "other"));
        assert_eq!(parse("f.yaml", &two).unwrap().len(), 2);
    }

    #[test]
    fn host_groups_are_hostname_globs() {
        assert!(glob("*", "anything"));
        assert!(glob("db-*", "db-1"));
        assert!(!glob("db-*", "web-1"));
        assert!(glob("db-?", "db-7") && !glob("db-?", "db-17"));
        assert!(glob("*-prod-*", "db-prod-3"));
    }

    #[test]
    fn burn_rates_budget_and_the_workbook_alerts() {
        let slo = parse("f.yaml", FILE).unwrap().remove(0);
        let now = 100 * 86_400_000i64;
        let minute = 60_000;
        // 30 days of 1000 events a minute, 0.1 % bad: a tenth of the budget a month.
        let mut counts: Vec<(i64, u64, u64)> = (0..30 * 1440)
            .map(|i| (now - i * minute, 999, 1000))
            .collect();
        let s = status(&slo, &counts, now);
        assert!((s.sli.unwrap() - 0.999).abs() < 1e-12);
        assert!((s.budget_left - 0.9).abs() < 1e-9, "{}", s.budget_left);
        assert!(
            s.burn.iter().all(|(_, r)| (r - 0.1).abs() < 1e-9),
            "{:?}",
            s.burn
        );
        assert!(!s.page && !s.ticket);
        // The last 10 minutes 50 % bad: 50x over 5m; the page also needs the 1h window
        // over 14.4x: 10 of 60 minutes at 50x and 50 at 0.1x = 8.4x, not yet.
        for c in counts.iter_mut().filter(|c| c.0 > now - 10 * minute) {
            c.1 = 500;
        }
        let s = status(&slo, &counts, now);
        let rate = |w: u64| s.burn.iter().find(|(x, _)| x.as_secs() == w).unwrap().1;
        assert!((rate(300) - 50.0).abs() < 1e-9, "{}", rate(300));
        assert!((rate(3600) - (10.0 * 50.0 + 50.0 * 0.1) / 60.0).abs() < 1e-9);
        assert!(!s.page, "{:?}", s.burn);
        // Half an hour of it: 1h at (30*50 + 30*0.1)/60 = 25.05x > 14.4: page.
        for c in counts.iter_mut().filter(|c| c.0 > now - 30 * minute) {
            c.1 = 500;
        }
        let s = status(&slo, &counts, now);
        assert!(s.page, "{:?}", s.burn);
        // The ticket windows' long halves have not burned enough yet: 1d at
        // (30*50 + 1410*0.1)/1440 = 1.14x < 3x, 3d at 0.45x < 1x.
        assert!(!s.ticket, "{:?}", s.burn);
        // No events: nothing burns, the budget is whole.
        let s = status(&slo, &[], now);
        assert_eq!((s.sli, s.budget_left, s.page), (None, 1.0, false));
    }

    #[test]
    fn page_and_ticket_alerts_fire_once_resolve_and_resolve_when_the_slo_goes() {
        let status = |rate: f64| pb_alert::SloStatus {
            name: "fsync".into(),
            display_name: "fsync".into(),
            hosts: "db-*".into(),
            window_secs: 30 * 86_400,
            burn: [300u64, 1800, 3600, 7200, 21_600, 86_400, 259_200]
                .iter()
                .map(|w| pb_alert::SloBurn {
                    window_secs: *w,
                    burn_rate: rate,
                })
                .collect(),
            ..Default::default()
        };
        let mut e = Evaluator::default();
        // 2x everywhere: the ticket (1d/2h at 3x: no; 3d/6h at 1x: yes), no page.
        let c = e.changes(&[status(2.0)], 1_000);
        assert_eq!(c.len(), 1, "{c:?}");
        assert_eq!(
            (
                c[0].state.as_str(),
                c[0].severity.as_str(),
                c[0].labels["slo_severity"].as_str()
            ),
            ("firing", "warning", "ticket")
        );
        assert!(c[0].summary.contains("3d/6h"), "{}", c[0].summary);
        // Still burning: nothing new. 20x: the page too.
        assert!(e.changes(&[status(2.0)], 2_000).is_empty());
        let c = e.changes(&[status(20.0)], 3_000);
        assert_eq!(c.len(), 1);
        assert_eq!(c[0].labels["slo_severity"], "page");
        assert_eq!(c[0].severity, "critical");
        assert!(
            c[0].summary.contains("1h/5m") && c[0].summary.contains("36 h"),
            "{}",
            c[0].summary
        );
        // Cooled: both resolve, with when they started.
        let c = e.changes(&[status(0.5)], 4_000);
        assert_eq!(c.len(), 2);
        assert!(c
            .iter()
            .all(|a| a.state == "resolved" && a.time_unix_ms == 4_000));
        assert_eq!(e.firing().count(), 0);
        // Firing, then the SLO file is gone: resolved.
        assert_eq!(e.changes(&[status(20.0)], 5_000).len(), 2);
        let c = e.changes(&[], 6_000);
        assert_eq!(c.len(), 2);
        assert!(c
            .iter()
            .all(|a| a.state == "resolved" && a.active_since_unix_ms == 5_000));
    }

    #[test]
    fn host_up_counts_covered_time_against_the_time_since_the_first_batch() {
        let minute = 60_000i64;
        let now = 1_000 * minute;
        let mut hosts = std::collections::BTreeMap::new();
        // a: a batch a minute for the last 60 minutes but 6 missing (down 6 minutes).
        hosts.insert(
            "a".to_string(),
            (0..60)
                .filter(|i| !(10..16).contains(i))
                .map(|i| (now - i * minute, minute as u64))
                .collect::<Vec<_>>(),
        );
        // b: first seen 30 minutes ago, never down.
        hosts.insert(
            "b".to_string(),
            (0..30).map(|i| (now - i * minute, minute as u64)).collect(),
        );
        let (good, total) = host_up(&hosts, now - 60 * minute, now);
        assert_eq!(total, (60 + 30) * minute as u64);
        assert_eq!(good, (54 + 30) * minute as u64);
        // Over the last 5 minutes both were up.
        assert_eq!(
            host_up(&hosts, now - 5 * minute, now),
            (10 * minute as u64, 10 * minute as u64)
        );
        // A host whose batches stopped 20 minutes ago: the time since is bad.
        let mut gone = std::collections::BTreeMap::new();
        gone.insert("c".to_string(), vec![(now - 20 * minute, minute as u64)]);
        assert_eq!(
            host_up(&gone, now - 30 * minute, now),
            (minute as u64, 21 * minute as u64)
        );
    }
}
