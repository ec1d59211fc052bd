//! Routing: the alert changes and findings the collector stored go to an Alertmanager
//! (its API v2) when one is configured, else to a generic webhook (JSON), with retries
//! and a counted give-up; and maintenance windows (silences): real silences in that
//! Alertmanager, or kept by the collector with the same semantics.
//!
//! What is sent: an agent's notified alert changes (firing, resolved; not pending,
//! cancelled or changes held by damping), and findings. Firing alerts are sent again
//! every `resend` with `endsAt` four periods ahead, as Prometheus does, so Alertmanager
//! keeps them firing while the collector runs and resolves them by itself if it stops.
//! Labels: alertname, severity, host, agent_id, vigil_kind ("alert" or "finding") and
//! the alert's own; annotations: summary, runbook_url, value.
//!
//! Without Alertmanager, silenced alerts and findings are not sent to the webhook
//! (counted); the fleet view shows them as silenced. A host-wide window (no alert
//! named) matches vigil_kind="alert" only: a security finding is silenced only by a
//! window that names its rule.
use std::{
    collections::BTreeMap,
    path::{Path, PathBuf},
    sync::{
        atomic::{AtomicU64, Ordering},
        mpsc, Arc,
    },
    time::{Duration, Instant},
};

use serde::{Deserialize, Serialize};
use vigil_proto::v1 as pb;

/// Changes waiting for the router; more are dropped and counted.
pub const QUEUE: usize = 10_000;
/// Attempts per notification before it is given up (counted); firing alerts are sent
/// again at the next resend anyway.
const ATTEMPTS: u32 = 4;
/// Silences the collector keeps at most (expired ones are forgotten after a day).
const MAX_SILENCES: usize = 10_000;

#[derive(Clone, Debug, PartialEq)]
pub struct AlertingConfig {
    /// Alertmanager's base URL ("http://127.0.0.1:9093").
    pub alertmanager: Option<String>,
    /// A URL that takes JSON POSTs, used when there is no Alertmanager.
    pub webhook: Option<String>,
    /// How often firing alerts are sent again.
    pub resend: Duration,
    /// How often the SLOs' page and ticket alerts are evaluated.
    pub slo_evaluation_interval: Duration,
}

impl Default for AlertingConfig {
    fn default() -> Self {
        Self {
            alertmanager: None,
            webhook: None,
            resend: Duration::from_secs(60),
            slo_evaluation_interval: Duration::from_secs(60),
        }
    }
}

/// What the router did, since start (the collector's /metrics and stats).
#[derive(Debug, Default)]
pub struct AlertingStats {
    /// Notifications (alerts and findings) handed to the router.
    pub received: AtomicU64,
    /// Requests the receiver took.
    pub sent: AtomicU64,
    /// Attempts that failed (retried).
    pub failed_attempts: AtomicU64,
    /// Notifications given up after every attempt failed.
    pub given_up: AtomicU64,
    /// Dropped because the router's queue was full.
    pub queue_full: AtomicU64,
    /// Not sent to the webhook: a collector-kept silence matched.
    pub silenced: AtomicU64,
}

impl AlertingStats {
    pub fn counters(&self) -> impl Iterator<Item = (String, u64)> + '_ {
        [
            ("received", &self.received),
            ("sent", &self.sent),
            ("failed_attempts", &self.failed_attempts),
            ("given_up", &self.given_up),
            ("queue_full", &self.queue_full),
            ("silenced", &self.silenced),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v.load(Ordering::Relaxed)))
    }
}

type Reply = tokio::sync::oneshot::Sender<Result<Vec<pb::Silence>, String>>;

pub enum SilenceOp {
    Create {
        matchers: Vec<pb::Matcher>,
        duration: Duration,
        created_by: String,
        comment: String,
    },
    List,
    Expire {
        id: String,
    },
}

enum Msg {
    Stored {
        host: pb::HostIdentity,
        alerts: Vec<pb::AlertEvent>,
        findings: Vec<pb::Finding>,
    },
    Silence(SilenceOp, Reply),
}

/// The router's handle: the writer offers what it stored, the Fleet API asks for
/// silences.
#[derive(Clone)]
pub struct Router {
    tx: mpsc::SyncSender<Msg>,
    pub stats: Arc<AlertingStats>,
    pub config: AlertingConfig,
}

impl Router {
    pub fn start(config: AlertingConfig, data_dir: &Path) -> std::io::Result<Self> {
        let (tx, rx) = mpsc::sync_channel(QUEUE);
        let stats = Arc::new(AlertingStats::default());
        let mut worker = Worker {
            config: config.clone(),
            stats: stats.clone(),
            http: ureq::Agent::new_with_config(
                ureq::Agent::config_builder()
                    .timeout_global(Some(Duration::from_secs(10)))
                    .http_status_as_error(false)
                    .build(),
            ),
            active: BTreeMap::new(),
            silences_path: data_dir.join("silences.json"),
            silences: Vec::new(),
        };
        worker.silences = worker.load_silences();
        std::thread::Builder::new()
            .name("vigil-alerts".into())
            .spawn(move || worker.run(rx))?;
        if let Some(am) = &config.alertmanager {
            tracing::info!("alerts and findings go to the Alertmanager at {am}");
        } else if let Some(w) = &config.webhook {
            tracing::info!("alerts and findings go to the webhook {w}");
        }
        Ok(Self { tx, stats, config })
    }

    /// What a stored batch notifies (only its notified alert changes and findings).
    pub fn offer(&self, batch: &pb::Batch) {
        let alerts: Vec<pb::AlertEvent> = batch
            .alerts
            .iter()
            .filter(|a| a.notify && (a.state == "firing" || a.state == "resolved"))
            .cloned()
            .collect();
        if alerts.is_empty() && batch.findings.is_empty() {
            return;
        }
        if self.config.alertmanager.is_none() && self.config.webhook.is_none() {
            return;
        }
        let n = (alerts.len() + batch.findings.len()) as u64;
        let msg = Msg::Stored {
            host: batch.host.clone().unwrap_or_else(|| pb::HostIdentity {
                agent_id: batch.agent_id.clone(),
                ..Default::default()
            }),
            alerts,
            findings: batch.findings.clone(),
        };
        match self.tx.try_send(msg) {
            Ok(()) => {
                self.stats.received.fetch_add(n, Ordering::Relaxed);
            }
            Err(_) => {
                self.stats.queue_full.fetch_add(n, Ordering::Relaxed);
                tracing::warn!(
                    "alert router queue full ({QUEUE}): {n} notifications dropped and counted"
                );
            }
        }
    }

    /// Alerts the collector raises itself (the SLOs' burn-rate alerts): each alert's
    /// `host` label is its SLO's host group, `agent_id` is "collector".
    pub fn offer_own(
        &self,
        alerts: Vec<pb::AlertEvent>,
        host_group: impl Fn(&pb::AlertEvent) -> String,
    ) {
        if alerts.is_empty()
            || (self.config.alertmanager.is_none() && self.config.webhook.is_none())
        {
            return;
        }
        for a in alerts {
            let msg = Msg::Stored {
                host: pb::HostIdentity {
                    agent_id: "collector".into(),
                    hostname: host_group(&a),
                    ..Default::default()
                },
                alerts: vec![a],
                findings: Vec::new(),
            };
            match self.tx.try_send(msg) {
                Ok(()) => {
                    self.stats.received.fetch_add(1, Ordering::Relaxed);
                }
                Err(_) => {
                    self.stats.queue_full.fetch_add(1, Ordering::Relaxed);
                    tracing::warn!(
                        "alert router queue full ({QUEUE}): an SLO alert dropped and counted"
                    );
                }
            }
        }
    }

    pub async fn silence(&self, op: SilenceOp) -> Result<Vec<pb::Silence>, String> {
        let (reply, answer) = tokio::sync::oneshot::channel();
        self.tx
            .try_send(Msg::Silence(op, reply))
            .map_err(|_| "the alert router is busy; try again".to_string())?;
        answer
            .await
            .map_err(|_| "the alert router stopped".to_string())?
    }
}

/// Alertmanager's postable alert (API v2).
#[derive(Clone, Debug, Serialize)]
struct AmAlert {
    labels: BTreeMap<String, String>,
    annotations: BTreeMap<String, String>,
    #[serde(rename = "startsAt")]
    starts_at: String,
    #[serde(rename = "endsAt")]
    ends_at: String,
    #[serde(rename = "generatorURL", skip_serializing_if = "String::is_empty")]
    generator_url: String,
}

/// A silence as the collector keeps it (and as Alertmanager's API v2 shows one).
#[derive(Clone, Debug, Serialize, Deserialize)]
struct Kept {
    id: String,
    matchers: Vec<(String, String)>,
    starts_ms: i64,
    ends_ms: i64,
    created_by: String,
    comment: String,
}

fn now_ms() -> i64 {
    vigil_units::unix_ms(std::time::SystemTime::now())
}

fn state(starts: i64, ends: i64, now: i64) -> &'static str {
    if now < starts {
        "pending"
    } else if now < ends {
        "active"
    } else {
        "expired"
    }
}

impl Kept {
    fn to_pb(&self, now: i64) -> pb::Silence {
        pb::Silence {
            id: self.id.clone(),
            matchers: self
                .matchers
                .iter()
                .map(|(n, v)| pb::Matcher {
                    name: n.clone(),
                    value: v.clone(),
                })
                .collect(),
            starts_unix_ms: self.starts_ms,
            ends_unix_ms: self.ends_ms,
            created_by: self.created_by.clone(),
            comment: self.comment.clone(),
            state: state(self.starts_ms, self.ends_ms, now).into(),
            kept_by: "collector".into(),
        }
    }
}

fn finding_labels(host: &pb::HostIdentity, f: &pb::Finding) -> BTreeMap<String, String> {
    let mut l = BTreeMap::new();
    l.insert("alertname".into(), f.rule.clone());
    l.insert("severity".into(), f.severity.clone());
    l.insert("host".into(), host.hostname.clone());
    l.insert("agent_id".into(), host.agent_id.clone());
    l.insert("vigil_kind".into(), "finding".into());
    if !f.mitre.is_empty() {
        l.insert("mitre".into(), f.mitre.join(","));
    }
    l
}

/// The matchers of a maintenance window for `host` and, if given, one alert or rule.
pub fn window_matchers(host: &str, alert: &str) -> Vec<pb::Matcher> {
    let m = |n: &str, v: &str| pb::Matcher {
        name: n.into(),
        value: v.into(),
    };
    if alert.is_empty() {
        vec![m("host", host), m("vigil_kind", "alert")]
    } else {
        vec![m("host", host), m("alertname", alert)]
    }
}

struct Worker {
    config: AlertingConfig,
    stats: Arc<AlertingStats>,
    http: ureq::Agent,
    /// Firing alerts, sent again every `resend`.
    active: BTreeMap<Vec<(String, String)>, AmAlert>,
    silences_path: PathBuf,
    silences: Vec<Kept>,
}

impl Worker {
    fn run(&mut self, rx: mpsc::Receiver<Msg>) {
        let mut next_resend = Instant::now() + self.config.resend;
        loop {
            let wait = next_resend.saturating_duration_since(Instant::now());
            match rx.recv_timeout(wait) {
                Ok(Msg::Stored {
                    host,
                    alerts,
                    findings,
                }) => self.notify(&host, &alerts, &findings),
                Ok(Msg::Silence(op, reply)) => {
                    let _ = reply.send(self.silence(op));
                }
                Err(mpsc::RecvTimeoutError::Timeout) => {
                    next_resend = Instant::now() + self.config.resend;
                    self.resend();
                }
                Err(mpsc::RecvTimeoutError::Disconnected) => return,
            }
        }
    }

    fn ends_ahead(&self) -> String {
        vigil_units::rfc3339_ms(now_ms() + 4 * self.config.resend.as_millis() as i64)
    }

    fn notify(
        &mut self,
        host: &pb::HostIdentity,
        alerts: &[pb::AlertEvent],
        findings: &[pb::Finding],
    ) {
        let mut batch = Vec::new();
        for a in alerts {
            let labels = a.routed_labels(host);
            let key: Vec<(String, String)> = labels.clone().into_iter().collect();
            let mut annotations = BTreeMap::new();
            annotations.insert("summary".to_string(), a.summary.clone());
            annotations.insert("runbook_url".to_string(), a.runbook.clone());
            annotations.insert("value".to_string(), format!("{}", a.value));
            let starts = if a.active_since_unix_ms != 0 {
                a.active_since_unix_ms
            } else {
                a.time_unix_ms
            };
            let firing = a.state == "firing";
            let alert = AmAlert {
                labels,
                annotations,
                starts_at: vigil_units::rfc3339_ms(starts),
                ends_at: if firing {
                    self.ends_ahead()
                } else {
                    vigil_units::rfc3339_ms(a.time_unix_ms)
                },
                generator_url: String::new(),
            };
            if firing {
                self.active.insert(key, alert.clone());
            } else {
                self.active.remove(&key);
            }
            batch.push(alert);
        }
        for f in findings {
            let mut annotations = BTreeMap::new();
            annotations.insert("summary".to_string(), f.description.clone());
            if let Some(r) = f.details.get("runbook") {
                annotations.insert("runbook_url".to_string(), r.clone());
            }
            if let Some(p) = &f.process {
                annotations.insert(
                    "process".to_string(),
                    format!("{} ({}) pid {}", p.exe, p.cmdline, p.pid),
                );
            }
            batch.push(AmAlert {
                labels: finding_labels(host, f),
                annotations,
                starts_at: vigil_units::rfc3339_ms(f.time_unix_ms),
                // A finding is an event: it stays an alert for an hour.
                ends_at: vigil_units::rfc3339_ms(f.time_unix_ms + 3_600_000),
                generator_url: String::new(),
            });
        }
        self.send(batch);
    }

    fn resend(&mut self) {
        if self.active.is_empty() {
            return;
        }
        let ends = self.ends_ahead();
        let batch: Vec<AmAlert> = self
            .active
            .values()
            .map(|a| AmAlert {
                ends_at: ends.clone(),
                ..a.clone()
            })
            .collect();
        self.send(batch);
    }

    /// Posts to Alertmanager (or the webhook), with retries; a failure past the last
    /// attempt is counted as given up.
    fn send(&mut self, mut batch: Vec<AmAlert>) {
        let (url, body) = if let Some(am) = &self.config.alertmanager {
            if batch.is_empty() {
                return;
            }
            (
                format!("{}/api/v2/alerts", am.trim_end_matches('/')),
                serde_json::to_vec(&batch),
            )
        } else if let Some(w) = &self.config.webhook {
            let now = now_ms();
            let before = batch.len();
            batch.retain(|a| {
                !self.silences.iter().any(|s| {
                    state(s.starts_ms, s.ends_ms, now) == "active"
                        && s.matchers
                            .iter()
                            .all(|(n, v)| a.labels.get(n).is_some_and(|x| x == v))
                })
            });
            self.stats
                .silenced
                .fetch_add((before - batch.len()) as u64, Ordering::Relaxed);
            if batch.is_empty() {
                return;
            }
            let status = if batch
                .iter()
                .all(|a| vigil_units::parse_rfc3339_ms(&a.ends_at).is_some_and(|e| e <= now))
            {
                "resolved"
            } else {
                "firing"
            };
            (
                w.clone(),
                serde_json::to_vec(&serde_json::json!({
                    "receiver": "vigil",
                    "status": status,
                    "alerts": batch,
                    "sent_at": vigil_units::rfc3339_ms(now),
                })),
            )
        } else {
            return;
        };
        let Ok(body) = body else { return };
        let mut delay = Duration::from_millis(500);
        for attempt in 1..=ATTEMPTS {
            let r = self
                .http
                .post(&url)
                .header("Content-Type", "application/json")
                .header(
                    "User-Agent",
                    concat!("vigil-collector/", env!("CARGO_PKG_VERSION")),
                )
                .send(&body[..]);
            match r {
                Ok(resp) if resp.status().is_success() => {
                    self.stats.sent.fetch_add(1, Ordering::Relaxed);
                    return;
                }
                Ok(resp) if resp.status().is_client_error() => {
                    // The receiver refuses this payload: retrying cannot help.
                    let status = resp.status().as_u16();
                    let text: String = resp
                        .into_body()
                        .read_to_string()
                        .unwrap_or_default()
                        .chars()
                        .take(200)
                        .collect();
                    self.stats.given_up.fetch_add(1, Ordering::Relaxed);
                    tracing::error!(
                        "alert notification refused by {url}: HTTP {status}: {}",
                        text.trim()
                    );
                    return;
                }
                other => {
                    self.stats.failed_attempts.fetch_add(1, Ordering::Relaxed);
                    let why = match other {
                        Ok(resp) => format!("HTTP {}", resp.status().as_u16()),
                        Err(e) => e.to_string(),
                    };
                    if attempt == ATTEMPTS {
                        self.stats.given_up.fetch_add(1, Ordering::Relaxed);
                        tracing::error!(
                            "alert notification to {url} given up after {ATTEMPTS} attempts: {why}"
                        );
                        return;
                    }
                    tracing::warn!("alert notification to {url} failed ({why}); retrying");
                    std::thread::sleep(delay);
                    delay *= 2;
                }
            }
        }
    }

    fn load_silences(&self) -> Vec<Kept> {
        match std::fs::read(&self.silences_path) {
            Ok(b) => match serde_json::from_slice(&b) {
                Ok(s) => s,
                Err(e) => {
                    let aside = self
                        .silences_path
                        .with_file_name(format!("silences.damaged-{}", now_ms()));
                    let _ = std::fs::rename(&self.silences_path, &aside);
                    tracing::warn!(
                        "the silences file {} is damaged ({e}); set aside as {}",
                        self.silences_path.display(),
                        aside.display()
                    );
                    Vec::new()
                }
            },
            Err(_) => Vec::new(),
        }
    }

    fn save_silences(&self) -> Result<(), String> {
        let tmp = self.silences_path.with_extension("json.tmp");
        let bytes = serde_json::to_vec(&self.silences).map_err(|e| e.to_string())?;
        std::fs::write(&tmp, bytes)
            .and_then(|()| std::fs::File::open(&tmp)?.sync_all())
            .and_then(|()| std::fs::rename(&tmp, &self.silences_path))
            .map_err(|e| format!("saving silences to {}: {e}", self.silences_path.display()))
    }

    fn silence(&mut self, op: SilenceOp) -> Result<Vec<pb::Silence>, String> {
        match &self.config.alertmanager {
            Some(am) => {
                let am = am.trim_end_matches('/').to_string();
                self.am_silence(&am, op)
            }
            None => self.local_silence(op),
        }
    }

    fn local_silence(&mut self, op: SilenceOp) -> Result<Vec<pb::Silence>, String> {
        let now = now_ms();
        // Expired a day ago: forgotten.
        self.silences.retain(|s| s.ends_ms > now - 86_400_000);
        match op {
            SilenceOp::Create {
                matchers,
                duration,
                created_by,
                comment,
            } => {
                if self.silences.len() >= MAX_SILENCES {
                    return Err(format!("{MAX_SILENCES} silences kept; end some first"));
                }
                let id = format!("{:016x}{:08x}", now, rand_u32());
                let kept = Kept {
                    id,
                    matchers: matchers.into_iter().map(|m| (m.name, m.value)).collect(),
                    starts_ms: now,
                    ends_ms: now.saturating_add(duration.as_millis() as i64),
                    created_by,
                    comment,
                };
                self.silences.push(kept.clone());
                self.save_silences()?;
                Ok(vec![kept.to_pb(now)])
            }
            SilenceOp::List => Ok(self.silences.iter().map(|s| s.to_pb(now)).collect()),
            SilenceOp::Expire { id } => {
                let s = self
                    .silences
                    .iter_mut()
                    .find(|s| s.id == id)
                    .ok_or_else(|| format!("no silence {id}"))?;
                s.ends_ms = s.ends_ms.min(now);
                let out = s.to_pb(now);
                self.save_silences()?;
                Ok(vec![out])
            }
        }
    }

    fn am_silence(&mut self, am: &str, op: SilenceOp) -> Result<Vec<pb::Silence>, String> {
        let read = |resp: Result<ureq::http::Response<ureq::Body>, ureq::Error>| -> Result<String, String> {
            let resp = resp.map_err(|e| format!("Alertmanager at {am}: {e}"))?;
            let status = resp.status();
            let text = resp.into_body().read_to_string().unwrap_or_default();
            if status.is_success() {
                Ok(text)
            } else {
                Err(format!("Alertmanager at {am}: HTTP {}: {}", status.as_u16(), text.trim()))
            }
        };
        match op {
            SilenceOp::Create {
                matchers,
                duration,
                created_by,
                comment,
            } => {
                let now = now_ms();
                let ends = now.saturating_add(duration.as_millis() as i64);
                let body = serde_json::json!({
                    "matchers": matchers.iter().map(|m| serde_json::json!({
                        "name": m.name, "value": m.value, "isRegex": false, "isEqual": true
                    })).collect::<Vec<_>>(),
                    "startsAt": vigil_units::rfc3339_ms(now),
                    "endsAt": vigil_units::rfc3339_ms(ends),
                    "createdBy": created_by,
                    "comment": if comment.is_empty() { "vigil maintenance".to_string() } else { comment.clone() },
                });
                let text = read(
                    self.http
                        .post(format!("{am}/api/v2/silences"))
                        .header("Content-Type", "application/json")
                        .send(body.to_string().as_bytes()),
                )?;
                let id = serde_json::from_str::<serde_json::Value>(&text)
                    .ok()
                    .and_then(|v| v["silenceID"].as_str().map(str::to_string))
                    .ok_or_else(|| format!("Alertmanager at {am}: no silenceID in {text}"))?;
                Ok(vec![pb::Silence {
                    id,
                    matchers,
                    starts_unix_ms: now,
                    ends_unix_ms: ends,
                    created_by,
                    comment,
                    state: "active".into(),
                    kept_by: "alertmanager".into(),
                }])
            }
            SilenceOp::List => {
                let text = read(self.http.get(format!("{am}/api/v2/silences")).call())?;
                let list: Vec<serde_json::Value> = serde_json::from_str(&text)
                    .map_err(|e| format!("Alertmanager at {am}: silences: {e}"))?;
                Ok(list.iter().map(am_to_pb).collect())
            }
            SilenceOp::Expire { id } => {
                read(self.http.delete(format!("{am}/api/v2/silence/{id}")).call())?;
                let text = read(self.http.get(format!("{am}/api/v2/silence/{id}")).call())?;
                let v: serde_json::Value = serde_json::from_str(&text)
                    .map_err(|e| format!("Alertmanager at {am}: silence {id}: {e}"))?;
                Ok(vec![am_to_pb(&v)])
            }
        }
    }
}

fn am_to_pb(v: &serde_json::Value) -> pb::Silence {
    let t = |k: &str| {
        v[k].as_str()
            .and_then(vigil_units::parse_rfc3339_ms)
            .unwrap_or(0)
    };
    pb::Silence {
        id: v["id"].as_str().unwrap_or_default().into(),
        matchers: v["matchers"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|m| pb::Matcher {
                name: m["name"].as_str().unwrap_or_default().into(),
                value: m["value"].as_str().unwrap_or_default().into(),
            })
            .collect(),
        starts_unix_ms: t("startsAt"),
        ends_unix_ms: t("endsAt"),
        created_by: v["createdBy"].as_str().unwrap_or_default().into(),
        comment: v["comment"].as_str().unwrap_or_default().into(),
        state: v["status"]["state"].as_str().unwrap_or_default().into(),
        kept_by: "alertmanager".into(),
    }
}

/// Some randomness for an id (the clock's nanoseconds, mixed).
fn rand_u32() -> u32 {
    let n = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos());
    n.wrapping_mul(2_654_435_761) ^ std::process::id()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn alert(name: &str) -> pb::AlertEvent {
        pb::AlertEvent {
            alert: name.into(),
            severity: "warning".into(),
            state: "firing".into(),
            ..Default::default()
        }
    }

    #[test]
    fn a_host_wide_window_silences_the_hosts_alerts_but_not_its_findings_unless_named() {
        let host = pb::HostIdentity {
            hostname: "web-1".into(),
            agent_id: "a1".into(),
            ..Default::default()
        };
        let window = |alert: &str| pb::Silence {
            matchers: window_matchers("web-1", alert),
            starts_unix_ms: 0,
            ends_unix_ms: 1_000,
            ..Default::default()
        };
        let finding = pb::Finding {
            rule: "reverse-shell".into(),
            severity: "critical".into(),
            ..Default::default()
        };
        let host_wide = window("");
        assert!(host_wide.silences(&alert("NodeCPUHighUsage").routed_labels(&host), 10));
        assert!(!host_wide.silences(&finding_labels(&host, &finding), 10));
        assert!(window("reverse-shell").silences(&finding_labels(&host, &finding), 10));
        assert!(
            !window("reverse-shell").silences(&alert("NodeCPUHighUsage").routed_labels(&host), 10)
        );
        // Another host, or outside the window: not silenced.
        let other = pb::HostIdentity {
            hostname: "web-2".into(),
            ..host.clone()
        };
        assert!(!host_wide.silences(&alert("X").routed_labels(&other), 10));
        assert!(!host_wide.silences(&alert("X").routed_labels(&host), 1_000));
        assert_eq!(state(10, 20, 5), "pending");
        assert_eq!(state(10, 20, 15), "active");
        assert_eq!(state(10, 20, 20), "expired");
    }
}

#[cfg(test)]
mod routing_tests {
    use super::*;

    #[test]
    fn a_receiver_that_never_answers_is_retried_then_given_up_and_counted() {
        // A port nobody listens on: every attempt is refused.
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let dir = tempfile::tempdir().unwrap();
        let router = Router::start(
            AlertingConfig {
                alertmanager: None,
                webhook: Some(format!("http://127.0.0.1:{port}/hook")),
                resend: Duration::from_secs(3600),
                ..AlertingConfig::default()
            },
            dir.path(),
        )
        .unwrap();
        router.offer(&pb::Batch {
            agent_id: "a".into(),
            alerts: vec![pb::AlertEvent {
                alert: "X".into(),
                state: "firing".into(),
                severity: "warning".into(),
                notify: true,
                time_unix_ms: 1,
                ..Default::default()
            }],
            ..Default::default()
        });
        let deadline = Instant::now() + Duration::from_secs(30);
        while router.stats.given_up.load(Ordering::Relaxed) == 0 {
            assert!(Instant::now() < deadline, "not given up within 30 s");
            std::thread::sleep(Duration::from_millis(50));
        }
        assert_eq!(router.stats.received.load(Ordering::Relaxed), 1);
        assert_eq!(
            router.stats.failed_attempts.load(Ordering::Relaxed),
            u64::from(ATTEMPTS)
        );
        assert_eq!(router.stats.sent.load(Ordering::Relaxed), 0);
        // A held or pending change is not routed at all.
        router.offer(&pb::Batch {
            alerts: vec![pb::AlertEvent {
                alert: "X".into(),
                state: "pending".into(),
                ..Default::default()
            }],
            ..Default::default()
        });
        assert_eq!(router.stats.received.load(Ordering::Relaxed), 1);
    }
}
