//! The store in PostgreSQL, for several collectors sharing one database: the same
//! tables and answers as the embedded SQLite store (`store.rs`), with exactly-once
//! storage enforced by the database's primary key on (agent, epoch, sequence), not by
//! one process's memory. Each group of batches is one transaction, each batch in a
//! savepoint of its own; per-host totals are written last, hosts in sorted order, so
//! two collectors committing groups for the same hosts take their row locks in the
//! same order.
use std::collections::BTreeMap;

use postgres::{Client, NoTls};
use prost::Message as _;
use vigil_proto::v1::{
    fleet_event, FleetEvent, HostIdentity, HostMetrics, HostSummary, MetricPoint, SlowSyscall,
    TcpRetransmit,
};

use crate::store::{
    add_stored, encode_and_digest, history_body, now_ms, sanitize_identity, scalars_blob,
    HostDelta, Incoming, Outcome, StoreError, StreamDeltas, CONFLICTS_KEPT, EVENT_ALERT,
    EVENT_FINDING, EVENT_RETRANSMIT, EVENT_SLOW_SYSCALL, MAX_SEQUENCE_AHEAD, PAGE_BYTES,
};

/// The schema, version 1. Later versions are added to MIGRATIONS; `vigil_schema`
/// holds the version, and an advisory lock keeps collectors starting together from
/// racing on it.
const MIGRATIONS: &[&str] = &["
CREATE TABLE hosts (
    agent_id TEXT PRIMARY KEY, identity BYTEA NOT NULL, hostname TEXT NOT NULL,
    last_seen_ms BIGINT NOT NULL, batches BIGINT NOT NULL DEFAULT 0,
    duplicates BIGINT NOT NULL DEFAULT 0, conflicts BIGINT NOT NULL DEFAULT 0,
    last_sequence BIGINT NOT NULL DEFAULT 0, transport TEXT NOT NULL DEFAULT '');
CREATE INDEX hosts_by_hostname ON hosts (hostname);
CREATE TABLE batches (
    agent_id TEXT NOT NULL, epoch BYTEA NOT NULL, sequence BIGINT NOT NULL,
    received_ms BIGINT NOT NULL, digest BYTEA NOT NULL,
    PRIMARY KEY (agent_id, epoch, sequence));
CREATE TABLE latest (agent_id TEXT PRIMARY KEY, time_ms BIGINT NOT NULL, metrics BYTEA NOT NULL);
CREATE TABLE samples (
    id BIGSERIAL PRIMARY KEY, agent_id TEXT NOT NULL, time_ms BIGINT NOT NULL, scalars BYTEA NOT NULL,
    -- The inserting transaction: remote write reads in (tx, id) order below the
    -- oldest transaction still running, so no row can appear behind its cursor.
    tx BIGINT NOT NULL DEFAULT (pg_current_xact_id()::text::bigint));
CREATE INDEX samples_by_host ON samples (agent_id, time_ms);
CREATE INDEX samples_by_tx ON samples (tx, id);
CREATE TABLE remote_write_cursors (
    url TEXT PRIMARY KEY, tx BIGINT NOT NULL DEFAULT 0, id BIGINT NOT NULL DEFAULT 0,
    -- Rows retention deleted before this endpoint had them.
    lost BIGINT NOT NULL DEFAULT 0);
CREATE TABLE events (id BIGSERIAL PRIMARY KEY, agent_id TEXT NOT NULL, time_ms BIGINT NOT NULL, kind INTEGER NOT NULL, body BYTEA NOT NULL);
CREATE INDEX events_by_time ON events (time_ms, id);
CREATE TABLE streams (
    agent_id TEXT NOT NULL, epoch BYTEA NOT NULL, stored BIGINT NOT NULL, max_sequence BIGINT NOT NULL,
    PRIMARY KEY (agent_id, epoch));
CREATE TABLE losses (
    agent_id TEXT NOT NULL, stage TEXT NOT NULL, total BIGINT NOT NULL,
    PRIMARY KEY (agent_id, stage));
CREATE TABLE conflicts (
    id BIGSERIAL PRIMARY KEY, agent_id TEXT NOT NULL, epoch BYTEA NOT NULL, sequence BIGINT NOT NULL,
    received_ms BIGINT NOT NULL, peer TEXT NOT NULL);
", "
CREATE TABLE sli_counts (
    id BIGSERIAL PRIMARY KEY, agent_id TEXT NOT NULL, name TEXT NOT NULL, time_ms BIGINT NOT NULL,
    good BIGINT NOT NULL, total BIGINT NOT NULL);
CREATE INDEX sli_counts_by_name ON sli_counts (name, time_ms);
", "
CREATE TABLE intervals (
    id BIGSERIAL PRIMARY KEY, agent_id TEXT NOT NULL, time_ms BIGINT NOT NULL, body BYTEA NOT NULL);
CREATE INDEX intervals_by_host ON intervals (agent_id, time_ms);
"];

/// Any key: the advisory lock that serialises schema changes between collectors.
const SCHEMA_LOCK: i64 = 0x5649_4749_4c00_0001;
/// Likewise for retention's deletes.
const PRUNE_LOCK: i64 = 0x5649_4749_4c00_0002;

pub struct PgStore {
    client: Client,
    /// The URL without its password, for messages.
    shown: String,
}

/// A PostgreSQL URL with its password (if any) replaced, for logs and errors.
pub fn redact(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_string();
    };
    match rest.split_once('@') {
        Some((userinfo, host)) => match userinfo.split_once(':') {
            Some((user, _)) => format!("{scheme}://{user}:***@{host}"),
            None => url.to_string(),
        },
        None => url.to_string(),
    }
}

fn stored_identity(agent_id: &str, blob: &[u8]) -> HostIdentity {
    match HostIdentity::decode(blob) {
        Ok(id) => sanitize_identity(id),
        Err(error) => {
            tracing::warn!(agent_id, %error, "stored host identity does not decode; listed without it");
            sanitize_identity(HostIdentity {
                agent_id: agent_id.to_string(),
                hostname: "(damaged identity)".into(),
                ..Default::default()
            })
        }
    }
}

impl PgStore {
    /// Connects and brings the schema to this version (creating it in an empty
    /// database). A database written by a newer collector is refused.
    pub fn open(url: &str) -> Result<Self, StoreError> {
        let shown = redact(url);
        let err = |source| StoreError::Postgres {
            url: shown.clone(),
            source,
        };
        let client = Client::connect(url, NoTls).map_err(err)?;
        let mut store = Self { client, shown };
        store.migrate()?;
        Ok(store)
    }

    fn err(&self) -> impl Fn(postgres::Error) -> StoreError + '_ {
        move |source| StoreError::Postgres {
            url: self.shown.clone(),
            source,
        }
    }

    fn migrate(&mut self) -> Result<(), StoreError> {
        let shown = self.shown.clone();
        let err = |source| StoreError::Postgres {
            url: shown.clone(),
            source,
        };
        let mut tx = self.client.transaction().map_err(err)?;
        tx.execute("SELECT pg_advisory_xact_lock($1)", &[&SCHEMA_LOCK])
            .map_err(err)?;
        tx.batch_execute("CREATE TABLE IF NOT EXISTS vigil_schema (version INTEGER NOT NULL)")
            .map_err(err)?;
        let version: i32 = tx
            .query_opt("SELECT version FROM vigil_schema", &[])
            .map_err(err)?
            .map_or(0, |r| r.get(0));
        if version as usize > MIGRATIONS.len() {
            return Err(StoreError::NewerSchema {
                path: shown.clone().into(),
                found: i64::from(version),
                known: MIGRATIONS.len(),
            });
        }
        for m in &MIGRATIONS[version.max(0) as usize..] {
            tx.batch_execute(m).map_err(err)?;
        }
        tx.execute("DELETE FROM vigil_schema", &[]).map_err(err)?;
        tx.execute(
            "INSERT INTO vigil_schema (version) VALUES ($1)",
            &[&(MIGRATIONS.len() as i32)],
        )
        .map_err(err)?;
        tx.commit().map_err(err)
    }

    /// Stores a group of batches in one transaction, each in a savepoint: a batch that
    /// fails is rolled back alone and reported. If the transaction itself fails (the
    /// database gone, a deadlock with another collector), every batch of the group
    /// fails and is resent by its agent.
    pub fn store(&mut self, batches: &[Incoming]) -> Vec<Result<Outcome, StoreError>> {
        let shown = self.shown.clone();
        let group_failed = |what: &str, e: &postgres::Error| -> Vec<Result<Outcome, StoreError>> {
            let reason = format!("{what}: {e}");
            batches
                .iter()
                .map(|_| {
                    Err(StoreError::PostgresGroupFailed {
                        url: shown.clone(),
                        reason: reason.clone(),
                    })
                })
                .collect()
        };
        let mut tx = match self.client.transaction() {
            Ok(tx) => tx,
            Err(e) => return group_failed("beginning the transaction", &e),
        };
        let now = now_ms();
        let mut out = Vec::with_capacity(batches.len());
        let mut hosts: BTreeMap<&str, HostDelta> = BTreeMap::new();
        let mut streams = StreamDeltas::new();
        for b in batches {
            let result = match tx.savepoint("batch") {
                Ok(mut sp) => match store_one(&mut sp, b, now) {
                    Ok(outcome) => match sp.commit() {
                        Ok(()) => Ok(outcome),
                        Err(e) => Err(e),
                    },
                    Err(e) => {
                        let _ = sp.rollback();
                        Err(e)
                    }
                },
                Err(e) => Err(e),
            };
            match &result {
                Ok(Outcome::Stored) => add_stored(&mut hosts, &mut streams, b),
                Ok(Outcome::Duplicate) => {
                    hosts
                        .entry(b.batch.agent_id.as_str())
                        .or_default()
                        .duplicates += 1;
                }
                Ok(Outcome::Conflict) => {
                    hosts
                        .entry(b.batch.agent_id.as_str())
                        .or_default()
                        .conflicts += 1;
                }
                _ => {}
            }
            out.push(result.map_err(|source| StoreError::Postgres {
                url: shown.clone(),
                source,
            }));
        }
        if let Err(e) = write_deltas(&mut tx, &hosts, &streams, now) {
            return group_failed("updating hosts and streams", &e);
        }
        if let Err(e) = tx.commit() {
            return group_failed("committing", &e);
        }
        out
    }

    /// Deletes samples and events older than `before_ms` (retention).
    pub fn prune(&mut self, before_ms: i64) -> Result<usize, StoreError> {
        let shown = self.shown.clone();
        let err = |source| StoreError::Postgres {
            url: shown.clone(),
            source,
        };
        let mut tx = self.client.transaction().map_err(err)?;
        // One collector prunes at a time: a second one waiting here then sees the rows
        // already gone, so none is counted lost twice.
        tx.execute("SELECT pg_advisory_xact_lock($1)", &[&PRUNE_LOCK])
            .map_err(err)?;
        // Rows about to go that a remote-write endpoint has not had yet: counted as
        // lost for it.
        tx.execute(
            "UPDATE remote_write_cursors c SET lost = c.lost + (SELECT count(*) FROM samples s
                 WHERE s.time_ms < $1 AND (s.tx, s.id) > (c.tx, c.id))",
            &[&before_ms],
        )
        .map_err(err)?;
        let mut n = 0;
        for table in ["events", "samples"] {
            n += tx
                .execute(
                    &format!("DELETE FROM {table} WHERE time_ms < $1"),
                    &[&before_ms],
                )
                .map_err(err)?;
        }
        n += tx
            .execute(
                "DELETE FROM sli_counts WHERE time_ms < $1",
                &[&crate::store::sli_cutoff(before_ms)],
            )
            .map_err(err)?;
        n += tx
            .execute(
                "DELETE FROM intervals WHERE time_ms < $1",
                &[&crate::store::history_cutoff(before_ms)],
            )
            .map_err(err)?;
        tx.commit().map_err(err)?;
        Ok(n as usize)
    }

    /// Host `agent_id`'s intervals in (since, until] (until 0: now), oldest first.
    pub fn intervals(
        &mut self,
        agent_id: &str,
        since: i64,
        until: i64,
        limit: u32,
    ) -> Result<vigil_proto::v1::HistoryResponse, StoreError> {
        let until = if until <= 0 { i64::MAX } else { until };
        let n = i64::from(limit.clamp(1, 2000)) + 1;
        let rows = self
            .client
            .query(
                "SELECT time_ms, body FROM intervals WHERE agent_id = $1 AND time_ms > $2 AND time_ms <= $3 ORDER BY time_ms, id LIMIT $4",
                &[&agent_id, &since, &until, &n],
            )
            .map_err(self.err())?;
        let rows = rows
            .iter()
            .map(|r| (r.get::<_, i64>(0), r.get::<_, Vec<u8>>(1)))
            .collect();
        let mut answer = crate::store::history_answer(rows, since, until, limit);
        answer.oldest_unix_ms = self
            .client
            .query_one(
                "SELECT COALESCE(MIN(time_ms), 0) FROM intervals WHERE agent_id = $1",
                &[&agent_id],
            )
            .map_err(self.err())?
            .get(0);
        Ok(answer)
    }

    /// SLI `name`'s counts from `since_ms` on, oldest first.
    pub fn sli_counts(
        &mut self,
        name: &str,
        since_ms: i64,
    ) -> Result<Vec<(String, i64, u64, u64)>, StoreError> {
        let rows = self
            .client
            .query(
                "SELECT agent_id, time_ms, good, total FROM sli_counts WHERE name = $1 AND time_ms >= $2 ORDER BY time_ms, id",
                &[&name, &since_ms],
            )
            .map_err(self.err())?;
        Ok(rows
            .iter()
            .map(|r| {
                (
                    r.get::<_, String>(0),
                    r.get::<_, i64>(1),
                    r.get::<_, i64>(2).max(0) as u64,
                    r.get::<_, i64>(3).max(0) as u64,
                )
            })
            .collect())
    }

    /// A page of hosts in agent-id order after `page_token` ("" first); the next token
    /// is "" at the end.
    pub fn hosts_page(
        &mut self,
        page_token: &str,
        page_size: usize,
    ) -> Result<(Vec<HostSummary>, String), StoreError> {
        let shown = self.shown.clone();
        let err = |source| StoreError::Postgres {
            url: shown.clone(),
            source,
        };
        let rows = self
            .client
            .query(
                "SELECT agent_id, identity, last_seen_ms, batches, last_sequence, duplicates, conflicts, transport
                 FROM hosts WHERE agent_id > $1 ORDER BY agent_id LIMIT $2",
                &[&page_token, &(page_size as i64 + 1)],
            )
            .map_err(err)?;
        let mut out = Vec::new();
        let mut bytes = 0usize;
        let mut last_id = String::new();
        let mut more = false;
        for row in rows {
            if out.len() >= page_size || bytes > PAGE_BYTES {
                more = true;
                break;
            }
            let agent_id: String = row.get(0);
            let gaps: u64 = self
                .client
                .query(
                    "SELECT max_sequence, stored FROM streams WHERE agent_id = $1",
                    &[&agent_id],
                )
                .map_err(err)?
                .iter()
                .map(|r| {
                    (r.get::<_, i64>(0).max(0) as u64)
                        .saturating_sub(r.get::<_, i64>(1).max(0) as u64)
                })
                .fold(0u64, u64::saturating_add);
            let dropped_events = self
                .client
                .query(
                    "SELECT stage, total FROM losses WHERE agent_id = $1",
                    &[&agent_id],
                )
                .map_err(err)?
                .iter()
                .map(|r| (r.get::<_, String>(0), r.get::<_, i64>(1).max(0) as u64))
                .collect();
            let transport: String = row.get(7);
            let host = HostSummary {
                gaps,
                dropped_events,
                host: Some(stored_identity(&agent_id, row.get(1))),
                last_seen_unix_ms: row.get(2),
                batches: row.get::<_, i64>(3).max(0) as u64,
                last_sequence: row.get::<_, i64>(4).max(0) as u64,
                duplicates: row.get::<_, i64>(5).max(0) as u64,
                conflicts: row.get::<_, i64>(6).max(0) as u64,
                transport: if transport == "mtls" || transport == "plaintext" {
                    transport
                } else {
                    String::new()
                },
            };
            bytes += host.encoded_len();
            out.push(host);
            last_id = agent_id;
        }
        Ok((out, if more { last_id } else { String::new() }))
    }

    /// The agent id for a host named by agent id or hostname.
    pub fn resolve(&mut self, host: &str) -> Result<String, StoreError> {
        let shown = self.shown.clone();
        self.client
            .query_opt(
                "SELECT agent_id FROM hosts WHERE agent_id = $1 OR hostname = $1 ORDER BY last_seen_ms DESC LIMIT 1",
                &[&host],
            )
            .map_err(|source| StoreError::Postgres { url: shown, source })?
            .map(|r| r.get(0))
            .ok_or_else(|| StoreError::UnknownHost(host.to_string()))
    }

    pub fn identity(&mut self, agent_id: &str) -> Result<HostIdentity, StoreError> {
        let shown = self.shown.clone();
        let row = self
            .client
            .query_opt(
                "SELECT identity FROM hosts WHERE agent_id = $1",
                &[&agent_id],
            )
            .map_err(|source| StoreError::Postgres { url: shown, source })?
            .ok_or_else(|| StoreError::UnknownHost(agent_id.to_string()))?;
        Ok(stored_identity(agent_id, row.get(0)))
    }

    pub fn latest(&mut self, agent_id: &str) -> Result<Option<HostMetrics>, StoreError> {
        let shown = self.shown.clone();
        let row = self
            .client
            .query_opt(
                "SELECT metrics FROM latest WHERE agent_id = $1",
                &[&agent_id],
            )
            .map_err(|source| StoreError::Postgres { url: shown, source })?;
        row.map(|r| {
            HostMetrics::decode(r.get::<_, &[u8]>(0)).map_err(|source| StoreError::Decode {
                what: "metrics",
                source,
            })
        })
        .transpose()
    }

    pub fn history(
        &mut self,
        agent_id: &str,
        metric: &str,
        since_ms: i64,
        until_ms: i64,
    ) -> Result<Vec<MetricPoint>, StoreError> {
        let Some(index) = crate::metrics::SCALARS.iter().position(|m| *m == metric) else {
            return Ok(Vec::new());
        };
        let rows = self
            .client
            .query(
                "SELECT time_ms, scalars FROM samples WHERE agent_id = $1 AND time_ms >= $2 AND time_ms <= $3 ORDER BY time_ms",
                &[&agent_id, &since_ms, &until_ms],
            )
            .map_err(self.err())?;
        Ok(rows
            .iter()
            .filter_map(|r| {
                let blob: &[u8] = r.get(1);
                // A short blob (damage) has no value for this metric: skipped.
                let b = blob.get(index * 8..index * 8 + 8)?;
                Some(MetricPoint {
                    time_unix_ms: r.get(0),
                    value: f64::from_le_bytes(b.try_into().unwrap_or([0; 8])),
                })
            })
            .collect())
    }

    /// A page of events from `since_ms` on, oldest first ("time:id" tokens).
    pub fn events_page(
        &mut self,
        since_ms: i64,
        limit: u32,
        page_token: &str,
        alerts_only: bool,
    ) -> Result<(Vec<FleetEvent>, String), StoreError> {
        let kind: i32 = if alerts_only { EVENT_ALERT as i32 } else { 0 };
        let (after_t, after_id) = if page_token.is_empty() {
            (since_ms, i64::MIN)
        } else {
            page_token
                .split_once(':')
                .and_then(|(t, r)| Some((t.parse::<i64>().ok()?, r.parse::<i64>().ok()?)))
                .ok_or_else(|| StoreError::PageToken(page_token.chars().take(64).collect()))?
        };
        let rows = self
            .client
            .query(
                "SELECT e.id, e.time_ms, e.agent_id, h.identity, e.kind, e.body FROM events e JOIN hosts h USING (agent_id)
                 WHERE e.time_ms >= $1 AND (e.time_ms, e.id) > ($2, $3) AND ($5 = 0 OR e.kind = $5)
                 ORDER BY e.time_ms, e.id LIMIT $4",
                &[&since_ms, &after_t, &after_id, &(i64::from(limit) + 1), &kind],
            )
            .map_err(self.err())?;
        let mut out = Vec::new();
        let mut bytes = 0usize;
        let mut last = None;
        let mut more = false;
        for r in &rows {
            if out.len() >= limit as usize || bytes > PAGE_BYTES {
                more = true;
                break;
            }
            let (id, time): (i64, i64) = (r.get(0), r.get(1));
            last = Some((time, id));
            let body: &[u8] = r.get(5);
            let event = match r.get::<_, i32>(4) as i64 {
                EVENT_RETRANSMIT => TcpRetransmit::decode(body).map(fleet_event::Event::Retransmit),
                EVENT_SLOW_SYSCALL => {
                    SlowSyscall::decode(body).map(fleet_event::Event::SlowSyscall)
                }
                EVENT_FINDING => {
                    vigil_proto::v1::Finding::decode(body).map(fleet_event::Event::Finding)
                }
                EVENT_ALERT => {
                    vigil_proto::v1::AlertEvent::decode(body).map(fleet_event::Event::Alert)
                }
                _ => continue,
            };
            let event = match event {
                Ok(e) => e,
                Err(e) => {
                    tracing::warn!(id, error = %e, "stored event does not decode; skipped");
                    continue;
                }
            };
            let agent_id: String = r.get(2);
            let e = FleetEvent {
                host: Some(stored_identity(&agent_id, r.get(3))),
                event: Some(event),
            };
            bytes += e.encoded_len();
            out.push(e);
        }
        let next = match (more, last) {
            (true, Some((t, id))) => format!("{t}:{id}"),
            _ => String::new(),
        };
        Ok((out, next))
    }
}

/// One batch's own rows, in its savepoint. Exactly once across collectors: the
/// batch's row goes in first and only if no collector stored it before
/// (`ON CONFLICT DO NOTHING` waits for a concurrent insert of the same key to commit
/// or roll back); otherwise the stored digest tells a resend from a conflict.
fn store_one(
    tx: &mut postgres::Transaction<'_>,
    incoming: &Incoming,
    now: i64,
) -> Result<Outcome, postgres::Error> {
    let b = &incoming.batch;
    let epoch = b.spool_epoch().to_bytes().to_vec();
    let seq = b.sequence.min(i64::MAX as u64) as i64;
    let newest: Option<i64> = tx
        .query_opt(
            "SELECT max_sequence FROM streams WHERE agent_id = $1 AND epoch = $2",
            &[&b.agent_id, &epoch],
        )?
        .map(|r| r.get(0));
    if let Some(newest) = newest {
        let newest = newest.max(0) as u64;
        if b.sequence > newest.saturating_add(MAX_SEQUENCE_AHEAD) {
            return Ok(Outcome::TooFarAhead { newest });
        }
    }
    let (encoded, digest) = encode_and_digest(b);
    let inserted = tx.execute(
        "INSERT INTO batches (agent_id, epoch, sequence, received_ms, digest) VALUES ($1, $2, $3, $4, $5)
         ON CONFLICT (agent_id, epoch, sequence) DO NOTHING",
        &[&b.agent_id, &epoch, &seq, &now, &digest],
    )?;
    if inserted == 0 {
        let stored: Vec<u8> = tx
            .query_one(
                "SELECT digest FROM batches WHERE agent_id = $1 AND epoch = $2 AND sequence = $3",
                &[&b.agent_id, &epoch, &seq],
            )?
            .get(0);
        if stored == digest {
            return Ok(Outcome::Duplicate);
        }
        tx.execute(
            "INSERT INTO conflicts (agent_id, epoch, sequence, received_ms, peer) VALUES ($1, $2, $3, $4, $5)",
            &[&b.agent_id, &epoch, &seq, &now, &&*incoming.peer],
        )?;
        tx.execute(
            "DELETE FROM conflicts WHERE id <= (SELECT max(id) FROM conflicts) - $1",
            &[&CONFLICTS_KEPT],
        )?;
        return Ok(Outcome::Conflict);
    }
    let sample =
        tx.prepare("INSERT INTO samples (agent_id, time_ms, scalars) VALUES ($1, $2, $3)")?;
    for m in &b.metrics {
        tx.execute(&sample, &[&b.agent_id, &m.time_unix_ms, &scalars_blob(m)])?;
    }
    let event =
        tx.prepare("INSERT INTO events (agent_id, time_ms, kind, body) VALUES ($1, $2, $3, $4)")?;
    let mut events: Vec<(i64, i64, Vec<u8>)> = Vec::new();
    events.extend(b.retransmits.iter().map(|r| {
        (
            r.time_unix_ns / 1_000_000,
            EVENT_RETRANSMIT,
            r.encode_to_vec(),
        )
    }));
    events.extend(b.slow_syscalls.iter().map(|s| {
        (
            s.time_unix_ns / 1_000_000,
            EVENT_SLOW_SYSCALL,
            s.encode_to_vec(),
        )
    }));
    events.extend(
        b.findings
            .iter()
            .map(|f| (f.time_unix_ms, EVENT_FINDING, f.encode_to_vec())),
    );
    events.extend(
        b.alerts
            .iter()
            .map(|a| (a.time_unix_ms, EVENT_ALERT, a.encode_to_vec())),
    );
    for (time_ms, kind, body) in events {
        tx.execute(&event, &[&b.agent_id, &time_ms, &(kind as i32), &body])?;
    }
    tx.execute(
        "INSERT INTO intervals (agent_id, time_ms, body) VALUES ($1, $2, $3)",
        &[&b.agent_id, &b.end_unix_ms, &history_body(b, encoded)],
    )?;
    let sli = tx.prepare(
        "INSERT INTO sli_counts (agent_id, name, time_ms, good, total) VALUES ($1, $2, $3, $4, $5)",
    )?;
    for (name, good, total) in crate::store::sli_rows(b) {
        tx.execute(&sli, &[&b.agent_id, &name, &b.end_unix_ms, &good, &total])?;
    }
    Ok(Outcome::Stored)
}

/// The group's per-host and per-stream changes, hosts in sorted order.
fn write_deltas(
    tx: &mut postgres::Transaction<'_>,
    hosts: &BTreeMap<&str, HostDelta<'_>>,
    streams: &StreamDeltas<'_>,
    now: i64,
) -> Result<(), postgres::Error> {
    for (agent_id, h) in hosts {
        if h.batches > 0 {
            let identity = h.identity.cloned().unwrap_or_else(|| HostIdentity {
                agent_id: agent_id.to_string(),
                ..Default::default()
            });
            tx.execute(
                "INSERT INTO hosts (agent_id, identity, hostname, last_seen_ms, batches, last_sequence, transport) VALUES ($1, $2, $3, $4, $5, $6, $7)
                 ON CONFLICT (agent_id) DO UPDATE SET identity = $2, hostname = $3, last_seen_ms = $4,
                     batches = hosts.batches + $5, last_sequence = GREATEST(hosts.last_sequence, $6), transport = $7",
                &[agent_id, &identity.encode_to_vec(), &identity.hostname, &now, &h.batches, &h.last_sequence, &h.transport.as_str()],
            )?;
        }
        if h.duplicates > 0 || h.conflicts > 0 {
            tx.execute(
                "UPDATE hosts SET duplicates = duplicates + $2, conflicts = conflicts + $3 WHERE agent_id = $1",
                &[agent_id, &h.duplicates, &h.conflicts],
            )?;
        }
        for (stage, n) in &h.losses {
            tx.execute(
                "INSERT INTO losses (agent_id, stage, total) VALUES ($1, $2, $3)
                 ON CONFLICT (agent_id, stage) DO UPDATE SET total =
                     CASE WHEN losses.total > 9223372036854775807 - $3 THEN 9223372036854775807 ELSE losses.total + $3 END",
                &[agent_id, stage, n],
            )?;
        }
        if let Some(m) = h.latest {
            tx.execute(
                "INSERT INTO latest (agent_id, time_ms, metrics) VALUES ($1, $2, $3)
                 ON CONFLICT (agent_id) DO UPDATE SET time_ms = $2, metrics = $3 WHERE $2 >= latest.time_ms",
                &[agent_id, &m.time_unix_ms, &m.encode_to_vec()],
            )?;
        }
    }
    for ((agent_id, epoch), (stored, max_sequence)) in streams {
        tx.execute(
            "INSERT INTO streams (agent_id, epoch, stored, max_sequence) VALUES ($1, $2, $3, $4)
             ON CONFLICT (agent_id, epoch) DO UPDATE SET stored = streams.stored + $3,
                 max_sequence = GREATEST(streams.max_sequence, $4)",
            &[agent_id, &epoch.as_slice(), stored, max_sequence],
        )?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::redact;

    #[test]
    fn a_password_never_reaches_a_message() {
        assert_eq!(
            redact("postgres://vigil:s3cret@db.example:5432/vigil"),
            "postgres://vigil:***@db.example:5432/vigil"
        );
        assert_eq!(
            redact("postgres://vigil@127.0.0.1:5432/vigil"),
            "postgres://vigil@127.0.0.1:5432/vigil"
        );
        assert_eq!(redact("host=/run/postgresql"), "host=/run/postgresql");
    }
}
