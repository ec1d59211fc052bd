//! Alert rule files: YAML parsed by serde into typed rules (unknown keys, metrics and
//! severities refused with file, line and reason), then checked (one comparison per
//! condition, hysteresis on the right side, a runbook on every rule).
use std::{collections::BTreeMap, fmt, path::Path, time::Duration};

use serde::Deserialize;

use super::metric::{Family, Metric};

/// How loud an alert is.
#[derive(Clone, Copy, Debug, Deserialize, PartialEq, Eq, PartialOrd, Ord, Hash)]
#[serde(rename_all = "lowercase")]
pub enum Severity {
    Info,
    Warning,
    Critical,
}

impl Severity {
    pub fn as_str(self) -> &'static str {
        match self {
            Severity::Info => "info",
            Severity::Warning => "warning",
            Severity::Critical => "critical",
        }
    }
}

/// What a condition compares with its bound.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Transform {
    /// The value now.
    Value,
    /// Its rate of change per second, the least-squares slope over `over`.
    Rate { over: Duration },
    /// The value predicted `ahead` from now by a least-squares line through `over`
    /// (Prometheus' predict_linear).
    Forecast { over: Duration, ahead: Duration },
}

impl Transform {
    /// The history this transform needs.
    pub fn window(&self) -> Option<Duration> {
        match self {
            Transform::Value => None,
            Transform::Rate { over } | Transform::Forecast { over, .. } => Some(*over),
        }
    }
}

/// Which way a bound is crossed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Direction {
    Above,
    Below,
}

/// One comparison: `metric [/ divided_by]`, transformed, against `bound`; while the
/// alert fires it holds until the value crosses `clear` (hysteresis), which defaults
/// to `bound`.
#[derive(Clone, Debug, PartialEq)]
pub struct Condition {
    pub metric: Metric,
    pub divided_by: Option<Metric>,
    pub transform: Transform,
    pub direction: Direction,
    pub bound: f64,
    pub clear: f64,
}

impl Condition {
    /// Whether the value raises (not firing) or keeps (firing) the alert.
    pub fn holds(&self, v: f64, firing: bool) -> bool {
        let edge = if firing { self.clear } else { self.bound };
        match self.direction {
            Direction::Above => v > edge,
            Direction::Below => v < edge,
        }
    }
}

/// One alert rule, checked.
#[derive(Clone, Debug, PartialEq)]
pub struct AlertRule {
    pub name: String,
    /// All must hold (joined on the series' labels).
    pub when: Vec<Condition>,
    pub for_: Duration,
    pub keep_firing_for: Duration,
    pub severity: Severity,
    pub labels: BTreeMap<String, String>,
    pub runbook: String,
    pub summary: String,
    /// Where it came from ("built-in" or a file).
    pub source: String,
}

impl AlertRule {
    /// The state's key: a name may be used once per severity (a warning and a
    /// critical rule of the same name, as node-mixin has).
    pub fn id(&self) -> String {
        format!("{}/{}", self.name, self.severity.as_str())
    }

    pub fn family(&self) -> Family {
        self.when[0].metric.family()
    }
}

/// Why a rule file was refused.
#[derive(Debug, Clone, PartialEq)]
pub struct AlertRuleError {
    pub file: String,
    pub line: usize,
    pub reason: String,
}

impl fmt::Display for AlertRuleError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.line > 0 {
            write!(f, "{}:{}: {}", self.file, self.line, self.reason)
        } else {
            write!(f, "{}: {}", self.file, self.reason)
        }
    }
}

impl std::error::Error for AlertRuleError {}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RuleFile {
    #[serde(default)]
    alerts: Vec<RawRule>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRule {
    alert: String,
    when: Vec<RawCondition>,
    #[serde(rename = "for", default)]
    for_: Option<String>,
    #[serde(default)]
    keep_firing_for: Option<String>,
    severity: Severity,
    #[serde(default)]
    labels: BTreeMap<String, String>,
    #[serde(default)]
    runbook: Option<String>,
    summary: String,
    /// `false` turns a built-in rule of this name off.
    #[serde(default = "yes")]
    enabled: bool,
}

fn yes() -> bool {
    true
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawCondition {
    metric: Metric,
    #[serde(default)]
    divided_by: Option<Metric>,
    #[serde(default)]
    above: Option<f64>,
    #[serde(default)]
    below: Option<f64>,
    /// Hysteresis for `above`: once firing, it holds until the value is at or below this.
    #[serde(default)]
    clear_below: Option<f64>,
    /// Hysteresis for `below`: once firing, it holds until the value is at or above this.
    #[serde(default)]
    clear_above: Option<f64>,
    /// Compare the rate of change per second over this window.
    #[serde(default)]
    rate_over: Option<String>,
    #[serde(default)]
    forecast: Option<RawForecast>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawForecast {
    over: String,
    ahead: String,
}

/// Labels a rule may not set (the series' own, and the engine's).
const RESERVED_LABELS: &[&str] = &["alertname", "severity", "host", "agent_id"];

fn duration(field: &str, s: &str) -> Result<Duration, String> {
    vigil_units::parse_duration(s).map_err(|e| format!("{field}: {e}"))
}

fn condition(i: usize, c: RawCondition) -> Result<Condition, String> {
    let at = |s: &str| format!("when[{i}].{s}");
    let (direction, bound) = match (c.above, c.below) {
        (Some(a), None) => (Direction::Above, a),
        (None, Some(b)) => (Direction::Below, b),
        _ => {
            return Err(format!(
                "when[{i}]: give exactly one of `above` and `below`"
            ))
        }
    };
    if !bound.is_finite() {
        return Err(format!("{}: not a finite number", at("above/below")));
    }
    let clear = match (direction, c.clear_below, c.clear_above) {
        (_, None, None) => bound,
        (Direction::Above, Some(x), None) if x.is_finite() && x <= bound => x,
        (Direction::Below, None, Some(x)) if x.is_finite() && x >= bound => x,
        (Direction::Above, _, _) => {
            return Err(format!(
                "{}: an `above` condition clears with `clear_below` at or under {bound}",
                at("clear_below")
            ))
        }
        (Direction::Below, _, _) => {
            return Err(format!(
                "{}: a `below` condition clears with `clear_above` at or over {bound}",
                at("clear_above")
            ))
        }
    };
    let transform = match (c.rate_over, c.forecast) {
        (None, None) => Transform::Value,
        (Some(o), None) => Transform::Rate {
            over: duration(&at("rate_over"), &o)?,
        },
        (None, Some(f)) => Transform::Forecast {
            over: duration(&at("forecast.over"), &f.over)?,
            ahead: duration(&at("forecast.ahead"), &f.ahead)?,
        },
        (Some(_), Some(_)) => {
            return Err(format!(
                "when[{i}]: `rate_over` and `forecast` cannot be combined"
            ))
        }
    };
    if let Some(w) = transform.window() {
        if w < Duration::from_secs(60) || w > Duration::from_secs(7 * 86_400) {
            return Err(format!(
                "when[{i}]: the window must be between 1m and 7d, not {w:?}"
            ));
        }
    }
    if let Some(d) = c.divided_by {
        if d.family() != c.metric.family() {
            return Err(format!(
                "{}: {} is per {}, {} per {}: they cannot be divided",
                at("divided_by"),
                c.metric,
                c.metric.family(),
                d,
                d.family()
            ));
        }
    }
    Ok(Condition {
        metric: c.metric,
        divided_by: c.divided_by,
        transform,
        direction,
        bound,
        clear,
    })
}

fn rule(r: RawRule, source: &str) -> Result<AlertRule, String> {
    let name = r.alert.trim().to_string();
    if name.is_empty()
        || name.len() > 128
        || !name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':')
        || name.starts_with(|c: char| c.is_ascii_digit())
    {
        return Err(format!(
            "alert `{}`: a name is letters, digits, _ and : (a Prometheus alert name)",
            r.alert
        ));
    }
    let Some(runbook) = r.runbook.filter(|s| !s.trim().is_empty()) else {
        return Err(format!(
            "alert {name}: no `runbook` (every alert says where the on-call person reads what to do)"
        ));
    };
    if r.when.is_empty() {
        return Err(format!("alert {name}: `when` has no condition"));
    }
    let when = r
        .when
        .into_iter()
        .enumerate()
        .map(|(i, c)| condition(i, c))
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("alert {name}: {e}"))?;
    let family = when[0].metric.family();
    if let Some(c) = when.iter().find(|c| c.metric.family() != family) {
        return Err(format!(
            "alert {name}: {} is per {}, but {} is per {}: one rule's conditions are about the same things",
            when[0].metric,
            family,
            c.metric,
            c.metric.family()
        ));
    }
    for k in r.labels.keys() {
        if RESERVED_LABELS.contains(&k.as_str()) || family.labels().contains(&k.as_str()) {
            return Err(format!(
                "alert {name}: label `{k}` is set by the engine or the series"
            ));
        }
        if k.is_empty() || !k.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
            return Err(format!(
                "alert {name}: label `{k}` is not a Prometheus label name"
            ));
        }
    }
    let for_ = match r.for_ {
        Some(s) => duration("for", &s).map_err(|e| format!("alert {name}: {e}"))?,
        None => Duration::ZERO,
    };
    let keep_firing_for = match r.keep_firing_for {
        Some(s) => duration("keep_firing_for", &s).map_err(|e| format!("alert {name}: {e}"))?,
        None => Duration::ZERO,
    };
    Ok(AlertRule {
        name,
        when,
        for_,
        keep_firing_for,
        severity: r.severity,
        labels: r.labels,
        runbook: runbook.trim().to_string(),
        summary: r.summary,
        source: source.to_string(),
    })
}

/// The rule's line in `text` (the line of its `alert:` key), for errors.
fn line_of(text: &str, name: &str) -> usize {
    text.lines()
        .position(|l| {
            let l = l.trim_start().trim_start_matches("- ").trim();
            l.strip_prefix("alert:")
                .is_some_and(|v| v.trim().trim_matches(['"', '\'']) == name)
        })
        .map_or(0, |i| i + 1)
}

/// Parses one file. Rules turned off (`enabled: false`) come back as names in the
/// second list.
pub fn parse(file: &str, text: &str) -> Result<(Vec<AlertRule>, Vec<String>), AlertRuleError> {
    let doc: Option<RuleFile> = yaml_serde::from_str(text).map_err(|e| AlertRuleError {
        file: file.to_string(),
        line: e.location().map_or(0, |l| l.line()),
        reason: e.to_string(),
    })?;
    let mut rules = Vec::new();
    let mut off = Vec::new();
    let mut seen = std::collections::HashSet::new();
    for r in doc.map(|d| d.alerts).unwrap_or_default() {
        let raw_name = r.alert.clone();
        if !r.enabled {
            off.push(raw_name);
            continue;
        }
        let line = line_of(text, &raw_name);
        let rule = rule(r, file).map_err(|reason| AlertRuleError {
            file: file.to_string(),
            line,
            reason,
        })?;
        if !seen.insert(rule.id()) {
            return Err(AlertRuleError {
                file: file.to_string(),
                line,
                reason: format!(
                    "alert {} with severity {} is defined twice",
                    rule.name,
                    rule.severity.as_str()
                ),
            });
        }
        rules.push(rule);
    }
    Ok((rules, off))
}

/// Where the built-in alerts' runbooks are installed (docs/runbooks/alerts.md in the
/// source tree; one section per alert, under its name in lower case).
pub const BUILTIN_RUNBOOKS: &str = "/usr/share/doc/vigil-agent/runbooks/alerts.md";

/// The built-in set (docs/runbooks/alerts.md has a section for each).
pub const BUILT_IN: &str = include_str!("default_alerts.yaml");

/// The built-in rules, then each `*.yaml`/`*.yml` in `dir` (sorted by name): a rule
/// with a built-in rule's name and severity replaces it, `enabled: false` turns every
/// rule of that name off. A missing directory means the built-in set only; any bad
/// file refuses the whole load (the caller keeps what runs).
pub fn load(dir: Option<&Path>) -> Result<Vec<AlertRule>, AlertRuleError> {
    let (mut rules, _) = parse("built-in alerts", BUILT_IN)?;
    let Some(dir) = dir else {
        return Ok(rules);
    };
    let files = crate::sli::yaml_files(dir).map_err(|e| AlertRuleError {
        file: dir.display().to_string(),
        line: 0,
        reason: format!("cannot list the directory: {e}"),
    })?;
    for path in files {
        let name = path.display().to_string();
        let meta = std::fs::metadata(&path).map_err(|e| AlertRuleError {
            file: name.clone(),
            line: 0,
            reason: e.to_string(),
        })?;
        if meta.len() > 4 << 20 {
            return Err(AlertRuleError {
                file: name,
                line: 0,
                reason: format!("{} bytes: an alert file is at most 4 MiB", meta.len()),
            });
        }
        let text = std::fs::read_to_string(&path).map_err(|e| AlertRuleError {
            file: name.clone(),
            line: 0,
            reason: e.to_string(),
        })?;
        let (file_rules, off) = parse(&name, &text)?;
        rules.retain(|r| !off.contains(&r.name));
        for r in file_rules {
            let id = r.id();
            rules.retain(|x| x.id() != id);
            rules.push(r);
        }
    }
    Ok(rules)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_built_in_set_parses_and_every_rule_has_a_runbook_and_a_summary() {
        let rules = load(None).unwrap();
        assert!(rules.len() >= 25, "{}", rules.len());
        for r in &rules {
            assert_eq!(
                r.runbook,
                format!("{BUILTIN_RUNBOOKS}#{}", r.name.to_lowercase()),
                "{}",
                r.name
            );
            assert!(!r.summary.is_empty(), "{}", r.name);
        }
    }

    fn err(text: &str) -> String {
        parse("f.yaml", text).unwrap_err().to_string()
    }

    #[test]
    fn bad_rules_are_refused_with_file_line_and_reason() {
        let base = "alerts:\n  - alert: X\n    severity: warning\n    summary: s\n";
        assert_eq!(
            err(&format!("{base}    when: [{{metric: cpu.usage_percent, above: 90}}]\n")),
            "f.yaml:2: alert X: no `runbook` (every alert says where the on-call person reads what to do)"
        );
        let rb = "    runbook: docs/runbooks/alerts.md#x\n";
        let e = err(&format!(
            "{base}{rb}    when: [{{metric: cpu.nonsense, above: 90}}]\n"
        ));
        assert!(
            e.starts_with("f.yaml:6:") && e.contains("cpu.nonsense"),
            "{e}"
        );
        let e = err(&format!(
            "{base}{rb}    when: [{{metric: cpu.usage_percent, above: 90, clear_below: 95}}]\n"
        ));
        assert!(
            e.contains("clear_below") && e.starts_with("f.yaml:2:"),
            "{e}"
        );
        let e = err(&format!(
            "{base}{rb}    when: [{{metric: cpu.usage_percent, above: 1, below: 2}}]\n"
        ));
        assert!(e.contains("exactly one"), "{e}");
        let e = err(&format!("{base}{rb}    for: 99999999999999999999d\n    when: [{{metric: cpu.usage_percent, above: 1}}]\n"));
        assert!(e.contains("for:"), "{e}");
        let e = err(&format!("{base}{rb}    when: [{{metric: cpu.usage_percent, above: 1}}, {{metric: filesystem.avail_percent, below: 2}}]\n"));
        assert!(e.contains("same things"), "{e}");
        let e = err(&format!(
            "{base}{rb}    colour: red\n    when: [{{metric: cpu.usage_percent, above: 1}}]\n"
        ));
        assert!(e.contains("colour"), "{e}");
        let e = err(&format!("{base}{rb}    labels: {{mountpoint: x}}\n    when: [{{metric: filesystem.avail_percent, below: 1}}]\n"));
        assert!(e.contains("mountpoint"), "{e}");
    }

    proptest::proptest! {
        #[test]
        fn any_text_is_alert_rules_or_an_error(text in "\\PC*") {
            let _ = parse("f.yaml", &text);
        }

        #[test]
        fn any_condition_values_are_a_rule_or_an_error(
            metric in "[a-z_.]{0,30}",
            bound in proptest::num::f64::ANY,
            clear in proptest::num::f64::ANY,
            window in "[0-9]{0,25}[a-z]{0,2}",
        ) {
            let text = format!(
                "alerts:\n  - alert: X\n    severity: info\n    summary: s\n    runbook: r\n    for: {window}\n    when: [{{metric: \"{metric}\", above: {bound:?}, clear_below: {clear:?}, rate_over: \"{window}\"}}]\n"
            );
            let _ = parse("f.yaml", &text);
        }
    }

    #[test]
    fn a_file_replaces_a_built_in_rule_by_name_and_severity_or_turns_it_off() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join("a.yaml"),
            "alerts:\n  - alert: NodeCPUHighUsage\n    severity: info\n    summary: s\n    runbook: r\n    when: [{metric: cpu.usage_percent, above: 50}]\n  - alert: NodeMemoryHighUtilization\n    severity: warning\n    summary: s\n    when: []\n    enabled: false\n",
        )
        .unwrap();
        let rules = load(Some(dir.path())).unwrap();
        let cpu: Vec<_> = rules
            .iter()
            .filter(|r| r.name == "NodeCPUHighUsage")
            .collect();
        assert_eq!(cpu.len(), 1);
        assert_eq!(cpu[0].when[0].bound, 50.0);
        assert!(!rules.iter().any(|r| r.name == "NodeMemoryHighUtilization"));
        std::fs::write(dir.path().join("b.yml"), "alerts: [").unwrap();
        assert!(load(Some(dir.path())).unwrap_err().file.ends_with("b.yml"));
    }
}
