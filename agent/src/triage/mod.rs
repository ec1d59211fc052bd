//! Incident support over a host's recent intervals: where they come from (the local
//! agent's memory of the last hour, or the collector's store for any window of the last
//! two days), `vigil why` (what changed, ranked), and `vigil incident snapshot`.
pub mod snapshot;
pub mod why;

use vigil_proto::v1 as pb;

/// Where a host's history is read.
pub enum Source<'a> {
    /// An agent's API (its last HISTORY_INTERVALS intervals).
    Agent(&'a crate::query::api::AgentTarget),
    /// The collector's store, for `host` (hostname or agent id).
    Collector(&'a crate::query::fleet::CollectorTarget, String),
}

/// A host's intervals in (since, until], oldest first, with its identity and how far
/// back its history reaches.
#[derive(Default)]
pub struct History {
    pub host: pb::HostIdentity,
    pub intervals: Vec<pb::Batch>,
    /// The oldest interval the source still had (0: unknown).
    pub oldest_ms: i64,
    /// Slow syscalls and retransmits the source left out of the intervals.
    pub trimmed: u64,
}

/// Intervals per request, and at most this many in all (a day at 1 s intervals).
const PAGE: u32 = 500;
const MAX_INTERVALS: usize = 100_000;

/// Reads the history, page by page.
pub async fn fetch(source: &Source<'_>, since: i64, until: i64) -> anyhow::Result<History> {
    let mut out = History::default();
    let mut from = since;
    match source {
        Source::Agent(target) => {
            let mut client = crate::query::api::connect_to(target).await?;
            loop {
                let r = client
                    .history(pb::HistoryRequest {
                        host: String::new(),
                        since_unix_ms: from,
                        until_unix_ms: until,
                        limit: PAGE,
                    })
                    .await?
                    .into_inner();
                if !absorb(&mut out, r, &mut from) {
                    break;
                }
            }
        }
        Source::Collector(target, host) => {
            let mut client = crate::query::fleet::connect(target).await?;
            loop {
                let r = client
                    .history(pb::HistoryRequest {
                        host: host.clone(),
                        since_unix_ms: from,
                        until_unix_ms: until,
                        limit: PAGE,
                    })
                    .await
                    .map_err(|s| anyhow::anyhow!("the collector: {}", s.message()))?
                    .into_inner();
                if !absorb(&mut out, r, &mut from) {
                    break;
                }
            }
        }
    }
    Ok(out)
}

/// The history in (since, until] from pages `page(since)` answers (the agent's own
/// history, read in the agent).
pub fn collect(
    since: i64,
    until: i64,
    mut page: impl FnMut(i64) -> pb::HistoryResponse,
) -> History {
    let mut out = History::default();
    let mut from = since;
    while absorb(&mut out, page(from), &mut from) {}
    out.intervals.retain(|b| b.end_unix_ms <= until);
    out
}

/// Adds a page; whether to ask for the next.
fn absorb(out: &mut History, r: pb::HistoryResponse, from: &mut i64) -> bool {
    if let Some(h) = r.host {
        out.host = h;
    }
    out.oldest_ms = r.oldest_unix_ms;
    out.trimmed = out.trimmed.max(r.trimmed);
    out.intervals.extend(r.intervals);
    if r.next_since_unix_ms <= *from || out.intervals.len() >= MAX_INTERVALS {
        return false;
    }
    *from = r.next_since_unix_ms;
    true
}

/// "HH:MM:SS" UTC of a Unix time in ms (the reports' clock; the JSON has full times).
pub fn clock(ms: i64) -> String {
    let s = vigil_units::rfc3339_ms(ms);
    s.get(11..19).unwrap_or(&s).to_string()
}

/// The host's security findings in (since, until], and (from a collector) the
/// maintenance windows that name it and overlap that time.
pub async fn findings_and_windows(
    source: &Source<'_>,
    host: &pb::HostIdentity,
    since: i64,
    until: i64,
) -> anyhow::Result<(Vec<pb::Finding>, Result<Vec<pb::Silence>, String>)> {
    let mut findings = Vec::new();
    let mut windows = Ok(Vec::new());
    let mut token = String::new();
    match source {
        Source::Agent(target) => {
            let mut client = crate::query::api::connect_to(target).await?;
            loop {
                let page = client
                    .findings(pb::FindingsRequest {
                        since_unix_ms: since,
                        page_size: 0,
                        page_token: std::mem::take(&mut token),
                    })
                    .await?
                    .into_inner();
                findings.extend(page.findings);
                if page.next_page_token.is_empty() {
                    break;
                }
                token = page.next_page_token;
            }
        }
        Source::Collector(target, _) => {
            let mut client = crate::query::fleet::connect(target).await?;
            loop {
                let page = client
                    .events(pb::EventsRequest {
                        since_unix_ms: since,
                        limit: 0,
                        page_token: std::mem::take(&mut token),
                        alerts_only: false,
                    })
                    .await?
                    .into_inner();
                for e in page.events {
                    let ours = e.host.as_ref().is_some_and(|h| h.agent_id == host.agent_id);
                    if let (true, Some(pb::fleet_event::Event::Finding(f))) = (ours, e.event) {
                        findings.push(f);
                    }
                }
                if page.next_page_token.is_empty() {
                    break;
                }
                token = page.next_page_token;
            }
            windows = match client.list_silences(pb::ListSilencesRequest {}).await {
                Ok(r) => Ok(r
                    .into_inner()
                    .silences
                    .into_iter()
                    .filter(|s| {
                        s.starts_unix_ms <= until
                            && s.ends_unix_ms > since
                            && s.matchers
                                .iter()
                                .any(|m| m.name == "host" && m.value == host.hostname)
                    })
                    .collect()),
                // Findings were readable but windows are not (a certificate without
                // the right, an older collector): the snapshot says so.
                Err(status) => Err(format!("{:?}: {}", status.code(), status.message())),
            };
        }
    }
    findings.retain(|f| f.time_unix_ms > since && f.time_unix_ms <= until);
    Ok((findings, windows))
}
