//! The embedded store: SQLite in WAL mode under the data directory. One connection
//! writes (the collector's writer thread); readers open their own. `Store` is the
//! collector's view of either this or PostgreSQL (`pg.rs`).
use std::{
    path::{Path, PathBuf},
    time::Duration,
};

use prost::Message as _;
use rusqlite::{params, Connection, OptionalExtension as _};
use vigil_proto::v1::{
    fleet_event, Batch, FleetEvent, HostIdentity, HostMetrics, HostSummary, Losses, MetricPoint,
    SlowSyscall, TcpRetransmit,
};

use crate::metrics::scalars;

/// The first schema (version 0); later versions are migrations on top of it, keyed on
/// SQLite's `user_version`, so a database written by an older collector opens.
const SCHEMA_V0: &str = "
CREATE TABLE IF NOT EXISTS hosts (
    agent_id TEXT PRIMARY KEY, identity BLOB NOT NULL, hostname TEXT NOT NULL,
    last_seen_ms INTEGER NOT NULL, batches INTEGER NOT NULL DEFAULT 0,
    duplicates INTEGER NOT NULL DEFAULT 0, last_sequence INTEGER NOT NULL DEFAULT 0);
CREATE TABLE IF NOT EXISTS batches (
    agent_id TEXT NOT NULL, epoch INTEGER NOT NULL, sequence INTEGER NOT NULL, received_ms INTEGER NOT NULL,
    PRIMARY KEY (agent_id, epoch, sequence)) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS latest (agent_id TEXT PRIMARY KEY, time_ms INTEGER NOT NULL, metrics BLOB NOT NULL);
CREATE TABLE IF NOT EXISTS points (agent_id TEXT NOT NULL, metric TEXT NOT NULL, time_ms INTEGER NOT NULL, value REAL NOT NULL);
CREATE INDEX IF NOT EXISTS points_by_host ON points (agent_id, metric, time_ms);
CREATE TABLE IF NOT EXISTS events (agent_id TEXT NOT NULL, time_ms INTEGER NOT NULL, kind INTEGER NOT NULL, body BLOB NOT NULL);
CREATE INDEX IF NOT EXISTS events_by_time ON events (time_ms);
CREATE TABLE IF NOT EXISTS streams (
    agent_id TEXT NOT NULL, epoch INTEGER NOT NULL, stored INTEGER NOT NULL, max_sequence INTEGER NOT NULL,
    PRIMARY KEY (agent_id, epoch)) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS losses (
    agent_id TEXT NOT NULL, stage TEXT NOT NULL, total INTEGER NOT NULL,
    PRIMARY KEY (agent_id, stage)) WITHOUT ROWID;
";

/// Migrations, in order: entry i takes the database from version i to i + 1.
/// Version 1: epochs are 128-bit (stored as 16-byte blobs in the same columns), a
/// digest per stored batch tells a resend from a conflict, conflicts are counted per
/// host and kept (bounded) for a postmortem.
/// Version 2: a sample's scalars are one row (`samples`: the SCALARS as little-endian
/// f64s, in order) instead of a row per metric; `points` written by earlier versions
/// is still read.
/// Version 3: how each host's newest batch arrived (`hosts.transport`).
/// Version 4: each batch's SLI counts (`sli_counts`), kept SLI_RETENTION_MS at least.
/// Version 5: each batch as history keeps it (`intervals`), kept HISTORY_RETENTION_MS
/// at most, for `vigil why` and `vigil incident snapshot`.
const MIGRATIONS: &[&str] = &["
ALTER TABLE batches ADD COLUMN digest BLOB;
ALTER TABLE hosts ADD COLUMN conflicts INTEGER NOT NULL DEFAULT 0;
CREATE TABLE IF NOT EXISTS conflicts (
    agent_id TEXT NOT NULL, epoch BLOB NOT NULL, sequence INTEGER NOT NULL,
    received_ms INTEGER NOT NULL, peer TEXT NOT NULL);
", "
CREATE TABLE IF NOT EXISTS samples (agent_id TEXT NOT NULL, time_ms INTEGER NOT NULL, scalars BLOB NOT NULL);
CREATE INDEX IF NOT EXISTS samples_by_host ON samples (agent_id, time_ms);
", "
ALTER TABLE hosts ADD COLUMN transport TEXT NOT NULL DEFAULT '';
", "
CREATE TABLE IF NOT EXISTS sli_counts (
    agent_id TEXT NOT NULL, name TEXT NOT NULL, time_ms INTEGER NOT NULL,
    good INTEGER NOT NULL, total INTEGER NOT NULL);
CREATE INDEX IF NOT EXISTS sli_counts_by_name ON sli_counts (name, time_ms);
", "
CREATE TABLE IF NOT EXISTS intervals (agent_id TEXT NOT NULL, time_ms INTEGER NOT NULL, body BLOB NOT NULL);
CREATE INDEX IF NOT EXISTS intervals_by_host ON intervals (agent_id, time_ms);
"];

/// Whole intervals (`vigil why`, incident snapshots) are kept at most this long (or the
/// retention, if shorter): about 5 KB an interval, 43 MB a day per host at 10 s.
pub const HISTORY_RETENTION_MS: i64 = 2 * 86_400 * 1000;

/// Where intervals older than this go: the retention's cutoff, or HISTORY_RETENTION_MS
/// before now if that is later.
pub(crate) fn history_cutoff(before_ms: i64) -> i64 {
    let now = vigil_units::unix_ms(std::time::SystemTime::now());
    before_ms.max(now - HISTORY_RETENTION_MS)
}

/// Intervals answered from rows of (end time, encoded batch), oldest first, in (since,
/// until] and at most `limit`, about HISTORY_ANSWER_BYTES; undecodable rows are
/// skipped and counted in `trimmed`.
pub(crate) fn history_answer(
    rows: Vec<(i64, Vec<u8>)>,
    since: i64,
    until: i64,
    limit: u32,
) -> vigil_proto::v1::HistoryResponse {
    let mut bad = 0;
    let batches: Vec<Batch> = rows
        .into_iter()
        .filter_map(|(_, b)| Batch::decode(b.as_slice()).map_err(|_| bad += 1).ok())
        .collect();
    let (intervals, next) = vigil_proto::history_page(batches.iter(), since, until, limit);
    vigil_proto::v1::HistoryResponse {
        intervals,
        next_since_unix_ms: next,
        oldest_unix_ms: 0,
        trimmed: bad,
        host: None,
    }
}

/// The SLI the collector counts itself, for SLOs on hosts being up: each batch adds the
/// milliseconds its interval covers (good and total alike; at most an hour). An SLO over
/// it (`indicatorRef: host-up`) counts as total the time since each host's first batch
/// in the window: time no batch covers (agent or host down, whenever its batches
/// arrive) is bad.
pub const HOST_UP: &str = "host-up";

/// A batch's SLI rows (name, good, total): the agent's, then host-up. An agent's own
/// SLI named host-up is not taken (the agent refuses that name).
pub(crate) fn sli_rows(b: &Batch) -> Vec<(&str, i64, i64)> {
    let mut rows: Vec<(&str, i64, i64)> = b
        .slis
        .iter()
        .filter(|s| s.name != HOST_UP)
        .map(|s| {
            (
                s.name.as_str(),
                s.good.min(i64::MAX as u64) as i64,
                s.total.min(i64::MAX as u64) as i64,
            )
        })
        .collect();
    let covered = b
        .end_unix_ms
        .saturating_sub(b.start_unix_ms)
        .clamp(0, 3_600_000);
    rows.push((HOST_UP, covered, covered));
    rows
}

/// SLI counts are kept at least this long whatever the retention (an SLO's window is
/// 28 or 30 days).
pub const SLI_RETENTION_MS: i64 = 35 * 86_400 * 1000;

/// Where SLI counts older than this go: the retention's cutoff, or SLI_RETENTION_MS
/// before now if that is earlier.
pub(crate) fn sli_cutoff(before_ms: i64) -> i64 {
    let now = vigil_units::unix_ms(std::time::SystemTime::now());
    before_ms.min(now - SLI_RETENTION_MS)
}

/// Conflicting batches remembered at most (the newest; their count is exact).
pub(crate) const CONFLICTS_KEPT: i64 = 10_000;
/// A batch whose sequence is this far past the newest stored for its agent and epoch
/// is refused: no agent's spool skips that many (a million 10 s intervals is 115
/// days), while a client claiming a host's future sequences would.
pub const MAX_SEQUENCE_AHEAD: u64 = 1_000_000;
/// A page of a fleet answer stops growing at about this many encoded bytes.
pub const PAGE_BYTES: usize = 1 << 20;

pub(crate) const EVENT_RETRANSMIT: i64 = 1;
pub(crate) const EVENT_SLOW_SYSCALL: i64 = 2;
pub(crate) const EVENT_FINDING: i64 = 3;
pub(crate) const EVENT_ALERT: i64 = 4;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("creating the data directory {path}: {source}")]
    DataDir {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("database {path}: {source}")]
    Sqlite {
        path: PathBuf,
        #[source]
        source: rusqlite::Error,
    },
    #[error("database {path} has schema version {found}, newer than this collector's {known}: run the newer collector")]
    NewerSchema {
        path: PathBuf,
        found: i64,
        known: usize,
    },
    /// The group's transaction itself failed (disk full, I/O error): no batch of it
    /// is stored, and every one is resent.
    #[error("database {path}: {reason}")]
    GroupFailed { path: PathBuf, reason: String },
    #[error("stored {what} is corrupt: {source}")]
    Decode {
        what: &'static str,
        #[source]
        source: prost::DecodeError,
    },
    #[error("database {url}: {source}")]
    Postgres {
        url: String,
        #[source]
        source: postgres::Error,
    },
    /// The group's PostgreSQL transaction failed (the server gone, a deadlock with
    /// another collector): no batch of it is stored, and every one is resent.
    #[error("database {url}: {reason}")]
    PostgresGroupFailed { url: String, reason: String },
    #[error("unknown host `{0}`")]
    UnknownHost(String),
    #[error("bad page token `{0}`")]
    PageToken(String),
}

/// What became of one batch.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    Stored,
    /// Stored before with the same content: acked, not stored again.
    Duplicate,
    /// Stored before with other content: not stored, not acked as delivered.
    Conflict,
    /// Its sequence is more than MAX_SEQUENCE_AHEAD past the newest stored one.
    TooFarAhead {
        newest: u64,
    },
}

/// A batch on its way to the store, with who sent it.
pub struct Incoming {
    pub batch: Batch,
    /// The client's address (kept with a conflict).
    pub peer: std::sync::Arc<str>,
    /// How it arrived (shown per host by `vigil hosts`).
    pub transport: Transport,
}

/// How a batch reached the collector.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Transport {
    #[default]
    Mtls,
    Plaintext,
}

impl Transport {
    pub fn as_str(self) -> &'static str {
        match self {
            Transport::Mtls => "mtls",
            Transport::Plaintext => "plaintext",
        }
    }
}

pub struct SqliteStore {
    conn: Connection,
    path: PathBuf,
    /// The newest sequence stored per (agent id, epoch), as the writer knows it: a
    /// batch past it cannot be a resend, so its digest is not looked up. Filled
    /// from `streams` on first sight; cleared when a group fails.
    newest: std::collections::HashMap<(String, [u8; 16]), u64>,
}

/// What a group of batches changes per host, written once per group (borrowing from
/// the group's batches: nothing is encoded until it is written). Shared by both stores.
#[derive(Default)]
pub(crate) struct HostDelta<'a> {
    pub(crate) identity: Option<&'a HostIdentity>,
    /// Batches stored.
    pub(crate) batches: i64,
    /// Resends and conflicts (PostgreSQL counts them here; SQLite as it finds them).
    pub(crate) duplicates: i64,
    pub(crate) conflicts: i64,
    pub(crate) last_sequence: i64,
    pub(crate) losses: std::collections::BTreeMap<&'static str, i64>,
    pub(crate) latest: Option<&'a HostMetrics>,
    pub(crate) transport: Transport,
}

/// A group's per-stream totals: (agent id, epoch) to (batches stored, newest sequence).
pub(crate) type StreamDeltas<'a> = std::collections::BTreeMap<(&'a str, [u8; 16]), (i64, i64)>;

/// Adds a stored batch to its host's and its stream's totals for the group.
pub(crate) fn add_stored<'a>(
    hosts: &mut std::collections::BTreeMap<&'a str, HostDelta<'a>>,
    streams: &mut StreamDeltas<'a>,
    incoming: &'a Incoming,
) {
    let batch = &incoming.batch;
    let seq = batch.sequence.min(i64::MAX as u64) as i64;
    let h = hosts.entry(batch.agent_id.as_str()).or_default();
    h.identity = batch.host.as_ref();
    h.transport = incoming.transport;
    h.batches += 1;
    h.last_sequence = h.last_sequence.max(seq);
    for (stage, n) in batch
        .losses
        .as_ref()
        .map(Losses::stages)
        .into_iter()
        .flatten()
    {
        if n > 0 {
            let total = h.losses.entry(stage).or_default();
            *total = total.saturating_add(n.min(i64::MAX as u64) as i64);
        }
    }
    if let Some(m) = batch.metrics.iter().max_by_key(|m| m.time_unix_ms) {
        if h.latest.is_none_or(|l| m.time_unix_ms >= l.time_unix_ms) {
            h.latest = Some(m);
        }
    }
    let st = streams
        .entry((batch.agent_id.as_str(), batch.spool_epoch().to_bytes()))
        .or_default();
    st.0 += 1;
    st.1 = st.1.max(seq);
}

/// A sample's scalars as stored: little-endian f64s in the order of SCALARS.
pub(crate) fn scalars_blob(m: &HostMetrics) -> Vec<u8> {
    scalars(m)
        .iter()
        .flat_map(|(_, v)| v.to_le_bytes())
        .collect()
}

pub(crate) fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

/// An integer column that may hold anything (an older version's REAL overflow, a
/// NULL): read as the nearest u64, so one odd row never fails a listing.
fn lenient_u64(v: rusqlite::types::Value) -> u64 {
    use rusqlite::types::Value;
    match v {
        Value::Integer(i) => i.max(0) as u64,
        // `as` saturates, and NaN becomes 0.
        Value::Real(f) => f.max(0.0) as u64,
        _ => 0,
    }
}

fn lenient_i64(v: rusqlite::types::Value) -> i64 {
    use rusqlite::types::Value;
    match v {
        Value::Integer(i) => i,
        Value::Real(f) => f as i64,
        _ => 0,
    }
}

/// A stored hostname or agent id as a listing shows it: never longer than the bound
/// at ingest, whatever an older version let in.
fn bounded(mut s: String, max: usize) -> String {
    if s.len() > max {
        let mut end = max.saturating_sub(crate::validate::TRUNCATED.len());
        while !s.is_char_boundary(end) {
            end -= 1;
        }
        s.truncate(end);
        s.push_str(crate::validate::TRUNCATED);
    }
    s
}

pub(crate) fn sanitize_identity(mut id: HostIdentity) -> HostIdentity {
    id.hostname = bounded(id.hostname, crate::validate::MAX_HOSTNAME);
    id.agent_id = bounded(id.agent_id, crate::validate::MAX_AGENT_ID);
    for s in [&mut id.kernel, &mut id.os, &mut id.agent_version] {
        crate::validate::bound(s);
    }
    id
}

/// The identity stored for a host (any column value), or a placeholder naming the
/// damage.
fn stored_identity(agent_id: &str, stored: &rusqlite::types::Value) -> HostIdentity {
    let decoded = match stored {
        rusqlite::types::Value::Blob(b) => {
            HostIdentity::decode(b.as_slice()).map_err(|e| e.to_string())
        }
        other => Err(format!("a {:?} value, not a blob", other.data_type())),
    };
    match decoded {
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

/// A batch's encoding, and the digest of it that tells a resent batch from a
/// different one under the same name.
pub(crate) fn encode_and_digest(b: &Batch) -> (Vec<u8>, Vec<u8>) {
    use sha2::Digest as _;
    let encoded = b.encode_to_vec();
    let digest = sha2::Sha256::digest(&encoded).to_vec();
    (encoded, digest)
}

/// The `intervals` row's body: the batch as history keeps it (Batch::for_history),
/// which is the batch's own encoding when it has nothing history leaves out (most
/// batches: no findings, few events), so that one is not made twice.
pub(crate) fn history_body(b: &Batch, encoded: Vec<u8>) -> Vec<u8> {
    if b.is_history_form() {
        encoded
    } else {
        b.for_history().0.encode_to_vec()
    }
}

/// Adds a loss count, saturating at i64::MAX (the count is clamped on the way in).
const ADD_LOSS: &str = "INSERT INTO losses (agent_id, stage, total) VALUES (?1, ?2, ?3)
     ON CONFLICT (agent_id, stage) DO UPDATE SET total =
         CASE WHEN total > 9223372036854775807 - ?3 THEN 9223372036854775807 ELSE total + ?3 END";

impl SqliteStore {
    /// Opens (creating if needed) the database in `data_dir`: the directory 0700, the
    /// database file 0600 (SQLite gives its WAL and index files the same mode).
    pub fn open(data_dir: &Path) -> Result<Self, StoreError> {
        use std::os::unix::fs::{DirBuilderExt as _, OpenOptionsExt as _, PermissionsExt as _};
        let dir_err = |source| StoreError::DataDir {
            path: data_dir.to_path_buf(),
            source,
        };
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(data_dir)
            .map_err(dir_err)?;
        std::fs::set_permissions(data_dir, std::fs::Permissions::from_mode(0o700))
            .map_err(dir_err)?;
        let path = data_dir.join("vigil.db");
        let file_err = |source| StoreError::DataDir {
            path: path.clone(),
            source,
        };
        std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .mode(0o600)
            .open(&path)
            .map_err(file_err)?;
        for p in [
            path.clone(),
            data_dir.join("vigil.db-wal"),
            data_dir.join("vigil.db-shm"),
        ] {
            match std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o600)) {
                Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(file_err(e)),
                _ => {}
            }
        }
        let err = |source| StoreError::Sqlite {
            path: path.clone(),
            source,
        };
        let conn = Connection::open(&path).map_err(err)?;
        conn.busy_timeout(Duration::from_secs(10)).map_err(err)?;
        // WAL: readers don't block the writer. synchronous=FULL: a commit is on disk
        // before it returns, so an ack means the batch survives a power cut.
        conn.pragma_update(None, "journal_mode", "WAL")
            .map_err(err)?;
        conn.pragma_update(None, "synchronous", "FULL")
            .map_err(err)?;
        let mut store = Self {
            conn,
            path,
            newest: std::collections::HashMap::new(),
        };
        store.migrate()?;
        Ok(store)
    }

    fn migrate(&mut self) -> Result<(), StoreError> {
        let path = self.path.clone();
        let err = |source| StoreError::Sqlite {
            path: path.clone(),
            source,
        };
        let version: i64 = self
            .conn
            .pragma_query_value(None, "user_version", |r| r.get(0))
            .map_err(err)?;
        if version > MIGRATIONS.len() as i64 {
            return Err(StoreError::NewerSchema {
                path: self.path.clone(),
                found: version,
                known: MIGRATIONS.len(),
            });
        }
        if version == MIGRATIONS.len() as i64 {
            return Ok(());
        }
        let tx = self.conn.transaction().map_err(err)?;
        tx.execute_batch(SCHEMA_V0).map_err(err)?;
        for (i, m) in MIGRATIONS.iter().enumerate().skip(version.max(0) as usize) {
            tx.execute_batch(m).map_err(err)?;
            tx.pragma_update(None, "user_version", i as i64 + 1)
                .map_err(err)?;
        }
        tx.commit().map_err(err)?;
        Ok(())
    }

    fn sqlite(&self) -> impl Fn(rusqlite::Error) -> StoreError + '_ {
        move |source| StoreError::Sqlite {
            path: self.path.clone(),
            source,
        }
    }

    /// Stores batches in one transaction, each in a savepoint of its own: a batch
    /// that fails (however it fails) is rolled back alone and reported, and never
    /// fails another. Returns each batch's outcome, in order.
    pub fn store(&mut self, batches: &[Incoming]) -> Vec<Result<Outcome, StoreError>> {
        // Optimistic: the whole group without a savepoint per batch; should one batch
        // fail (validation makes that rare), the group is redone with each batch in a
        // savepoint of its own.
        if let Some(out) = self.store_group(batches, false) {
            return out;
        }
        self.newest.clear();
        self.store_group(batches, true).unwrap_or_default()
    }

    /// One attempt at a group. Without `isolate`, returns None as soon as a batch
    /// fails (nothing is committed); with it, never None.
    fn store_group(
        &mut self,
        batches: &[Incoming],
        isolate: bool,
    ) -> Option<Vec<Result<Outcome, StoreError>>> {
        let path = self.path.clone();
        let err = |source| StoreError::Sqlite {
            path: path.clone(),
            source,
        };
        let group_failed = |what: &str, e: rusqlite::Error| {
            let reason = format!("{what}: {e}");
            batches
                .iter()
                .map(|_| {
                    Err(StoreError::GroupFailed {
                        path: path.clone(),
                        reason: reason.clone(),
                    })
                })
                .collect()
        };
        let mut tx = match self.conn.transaction() {
            Ok(tx) => tx,
            Err(e) => return Some(group_failed("beginning the transaction", e)),
        };
        let now = now_ms();
        let mut out = Vec::with_capacity(batches.len());
        let mut hosts: std::collections::BTreeMap<&str, HostDelta> = Default::default();
        let mut streams = StreamDeltas::new();
        for b in batches {
            let key = (b.batch.agent_id.clone(), b.batch.spool_epoch().to_bytes());
            let newest = match self.newest.get(&key) {
                Some(n) => Some(*n),
                None => match stream_newest(&tx, &key.0, &key.1) {
                    Ok(n) => n,
                    Err(_) if !isolate => return None,
                    Err(e) => {
                        out.push(Err(err(e)));
                        continue;
                    }
                },
            };
            let result = if isolate {
                match tx.savepoint() {
                    Ok(mut sp) => match store_one(&sp, b, newest, now) {
                        Ok(outcome) => sp.commit().map(|()| outcome).map_err(err),
                        Err(e) => {
                            let _ = sp.rollback();
                            Err(err(e))
                        }
                    },
                    Err(e) => Err(err(e)),
                }
            } else {
                match store_one(&tx, b, newest, now) {
                    Ok(outcome) => Ok(outcome),
                    // Dropping the transaction rolls the group back.
                    Err(_) => return None,
                }
            };
            if let Ok(Outcome::Stored) = result {
                self.newest
                    .insert(key, newest.unwrap_or(0).max(b.batch.sequence));
                add_stored(&mut hosts, &mut streams, b);
            } else if let Ok(Outcome::Duplicate | Outcome::Conflict | Outcome::TooFarAhead { .. }) =
                result
            {
                // Known already: keep what the cache says.
                if let Some(n) = newest {
                    self.newest.insert(key, n);
                }
            }
            out.push(result);
        }
        // Per host and per stream, once per group: a duplicate or a conflict never
        // changes a host's identity, last-seen time or latest sample.
        if let Err(e) = write_deltas(&tx, &hosts, &streams, now) {
            self.newest.clear();
            return Some(group_failed("updating hosts and streams", e));
        }
        if let Err(e) = tx.commit() {
            // Nothing of this group is stored: every batch fails (and is resent).
            self.newest.clear();
            return Some(group_failed("committing", e));
        }
        Some(out)
    }

    /// Deletes samples and events older than `before_ms` (retention).
    pub fn prune(&mut self, before_ms: i64) -> Result<usize, StoreError> {
        let err = self.sqlite();
        let n = self
            .conn
            .execute("DELETE FROM points WHERE time_ms < ?1", params![before_ms])
            .map_err(&err)?;
        let m = self
            .conn
            .execute("DELETE FROM events WHERE time_ms < ?1", params![before_ms])
            .map_err(&err)?;
        let k = self
            .conn
            .execute("DELETE FROM samples WHERE time_ms < ?1", params![before_ms])
            .map_err(&err)?;
        let s = self
            .conn
            .execute(
                "DELETE FROM sli_counts WHERE time_ms < ?1",
                params![sli_cutoff(before_ms)],
            )
            .map_err(&err)?;
        let h = self
            .conn
            .execute(
                "DELETE FROM intervals WHERE time_ms < ?1",
                params![history_cutoff(before_ms)],
            )
            .map_err(&err)?;
        Ok(n + m + k + s + h)
    }

    /// Host `agent_id`'s intervals in (since, until] (until 0: now), oldest first.
    pub fn intervals(
        &self,
        agent_id: &str,
        since: i64,
        until: i64,
        limit: u32,
    ) -> Result<vigil_proto::v1::HistoryResponse, StoreError> {
        let err = self.sqlite();
        let until = if until <= 0 { i64::MAX } else { until };
        let mut stmt = self
            .conn
            .prepare_cached(
                "SELECT time_ms, body FROM intervals WHERE agent_id = ?1 AND time_ms > ?2 AND time_ms <= ?3
                 ORDER BY time_ms LIMIT ?4",
            )
            .map_err(&err)?;
        let rows = stmt
            .query_map(
                params![agent_id, since, until, i64::from(limit.clamp(1, 2000)) + 1],
                |r| Ok((r.get::<_, i64>(0)?, r.get::<_, Vec<u8>>(1)?)),
            )
            .map_err(&err)?
            .collect::<Result<Vec<_>, _>>()
            .map_err(&err)?;
        let mut answer = history_answer(rows, since, until, limit);
        answer.oldest_unix_ms = self
            .conn
            .query_row(
                "SELECT COALESCE(MIN(time_ms), 0) FROM intervals WHERE agent_id = ?1",
                params![agent_id],
                |r| r.get(0),
            )
            .map_err(&err)?;
        Ok(answer)
    }

    /// SLI `name`'s counts from `since_ms` on, oldest first: (agent id, the batch's
    /// end time, good, total).
    pub fn sli_counts(
        &self,
        name: &str,
        since_ms: i64,
    ) -> Result<Vec<(String, i64, u64, u64)>, StoreError> {
        let err = self.sqlite();
        let mut stmt = self
            .conn
            .prepare_cached(
                "SELECT agent_id, time_ms, good, total FROM sli_counts
                 WHERE name = ?1 AND time_ms >= ?2 ORDER BY time_ms",
            )
            .map_err(&err)?;
        let rows = stmt
            .query_map(params![name, since_ms], |r| {
                Ok((
                    r.get::<_, String>(0)?,
                    r.get::<_, i64>(1)?,
                    r.get::<_, i64>(2)?.max(0) as u64,
                    r.get::<_, i64>(3)?.max(0) as u64,
                ))
            })
            .map_err(&err)?;
        rows.collect::<Result<Vec<_>, _>>().map_err(&err)
    }

    /// A page of hosts in agent-id order, after `page_token` (an agent id; "" for the
    /// first page). Returns the hosts and the next token ("" at the end).
    pub fn hosts_page(
        &self,
        page_token: &str,
        page_size: usize,
    ) -> Result<(Vec<HostSummary>, String), StoreError> {
        use rusqlite::types::Value;
        let err = self.sqlite();
        let mut stmt = self
            .conn
            .prepare_cached(
                "SELECT agent_id, identity, last_seen_ms, batches, last_sequence, duplicates, conflicts, transport
                 FROM hosts WHERE agent_id > ?1 ORDER BY agent_id LIMIT ?2",
            )
            .map_err(&err)?;
        let rows = stmt
            .query_map(params![page_token, page_size as i64 + 1], |r| {
                Ok((
                    r.get::<_, String>(0)?,
                    r.get::<_, Value>(1)?,
                    r.get::<_, Value>(2)?,
                    r.get::<_, Value>(3)?,
                    r.get::<_, Value>(4)?,
                    r.get::<_, Value>(5)?,
                    r.get::<_, Value>(6)?,
                    r.get::<_, Value>(7)?,
                ))
            })
            .map_err(&err)?;
        let mut gaps = self
            .conn
            .prepare_cached("SELECT max_sequence, stored FROM streams WHERE agent_id = ?1")
            .map_err(&err)?;
        let mut losses = self
            .conn
            .prepare_cached("SELECT stage, total FROM losses WHERE agent_id = ?1")
            .map_err(&err)?;
        let mut out = Vec::new();
        let mut bytes = 0usize;
        let mut last_id = String::new();
        let mut more = false;
        for row in rows {
            let (
                agent_id,
                identity,
                last_seen,
                batches,
                last_sequence,
                duplicates,
                conflicts,
                transport,
            ) = match row {
                Ok(r) => r,
                Err(e) => {
                    tracing::warn!(error = %e, "a hosts row does not read; skipped");
                    continue;
                }
            };
            if out.len() >= page_size || bytes > PAGE_BYTES {
                more = true;
                break;
            }
            let identity = stored_identity(&agent_id, &identity);
            // Per epoch: newest sequence minus batches stored, in u64 and saturating,
            // so no stored value can overflow the sum.
            let gaps: u64 = gaps
                .query_map(params![agent_id], |r| {
                    Ok((r.get::<_, Value>(0)?, r.get::<_, Value>(1)?))
                })
                .map_err(&err)?
                .filter_map(Result::ok)
                .map(|(max, stored)| lenient_u64(max).saturating_sub(lenient_u64(stored)))
                .fold(0u64, u64::saturating_add);
            let dropped_events = losses
                .query_map(params![agent_id], |r| {
                    Ok((r.get::<_, String>(0)?, lenient_u64(r.get::<_, Value>(1)?)))
                })
                .map_err(&err)?
                .filter_map(Result::ok)
                .collect();
            let host = HostSummary {
                gaps,
                dropped_events,
                host: Some(identity),
                last_seen_unix_ms: lenient_i64(last_seen),
                batches: lenient_u64(batches),
                last_sequence: lenient_u64(last_sequence),
                duplicates: lenient_u64(duplicates),
                conflicts: lenient_u64(conflicts),
                transport: match transport {
                    Value::Text(t) if t == "mtls" || t == "plaintext" => t,
                    _ => String::new(),
                },
            };
            bytes += host.encoded_len();
            out.push(host);
            // The next page starts after the stored id, even where the shown one is cut.
            last_id = agent_id;
        }
        Ok((out, if more { last_id } else { String::new() }))
    }

    /// Every host (all pages).
    pub fn hosts(&self) -> Result<Vec<HostSummary>, StoreError> {
        let mut all = Vec::new();
        let mut token = String::new();
        loop {
            let (page, next) = self.hosts_page(&token, 1000)?;
            all.extend(page);
            if next.is_empty() {
                return Ok(all);
            }
            token = next;
        }
    }

    /// The agent id for a host named by agent id or hostname.
    pub fn resolve(&self, host: &str) -> Result<String, StoreError> {
        self.conn
            .query_row(
                "SELECT agent_id FROM hosts WHERE agent_id = ?1 OR hostname = ?1 ORDER BY last_seen_ms DESC LIMIT 1",
                params![host],
                |r| r.get(0),
            )
            .optional()
            .map_err(self.sqlite())?
            .ok_or_else(|| StoreError::UnknownHost(host.to_string()))
    }

    pub fn identity(&self, agent_id: &str) -> Result<HostIdentity, StoreError> {
        let stored: rusqlite::types::Value = self
            .conn
            .query_row(
                "SELECT identity FROM hosts WHERE agent_id = ?1",
                params![agent_id],
                |r| r.get(0),
            )
            .optional()
            .map_err(self.sqlite())?
            .ok_or_else(|| StoreError::UnknownHost(agent_id.to_string()))?;
        Ok(stored_identity(agent_id, &stored))
    }

    pub fn latest(&self, agent_id: &str) -> Result<Option<HostMetrics>, StoreError> {
        let blob: Option<Vec<u8>> = self
            .conn
            .query_row(
                "SELECT metrics FROM latest WHERE agent_id = ?1",
                params![agent_id],
                |r| r.get(0),
            )
            .optional()
            .map_err(self.sqlite())?;
        blob.map(|b| {
            HostMetrics::decode(b.as_slice()).map_err(|source| StoreError::Decode {
                what: "metrics",
                source,
            })
        })
        .transpose()
    }

    pub fn history(
        &self,
        agent_id: &str,
        metric: &str,
        since_ms: i64,
        until_ms: i64,
    ) -> Result<Vec<MetricPoint>, StoreError> {
        let err = self.sqlite();
        let mut stmt = self
            .conn
            .prepare_cached(
                "SELECT time_ms, value FROM points WHERE agent_id = ?1 AND metric = ?2 AND time_ms >= ?3 AND time_ms <= ?4 ORDER BY time_ms",
            )
            .map_err(&err)?;
        let rows = stmt
            .query_map(params![agent_id, metric, since_ms, until_ms], |r| {
                Ok(MetricPoint {
                    time_unix_ms: r.get(0)?,
                    value: r.get(1)?,
                })
            })
            .map_err(&err)?;
        // Written by versions before 2 (a row per metric), then by this one.
        let mut points: Vec<MetricPoint> = rows.collect::<Result<_, _>>().map_err(&err)?;
        if let Some(index) = crate::metrics::SCALARS.iter().position(|m| *m == metric) {
            let mut stmt = self
                .conn
                .prepare_cached(
                    "SELECT time_ms, scalars FROM samples WHERE agent_id = ?1 AND time_ms >= ?2 AND time_ms <= ?3 ORDER BY time_ms",
                )
                .map_err(&err)?;
            let rows = stmt
                .query_map(params![agent_id, since_ms, until_ms], |r| {
                    let blob: Vec<u8> = r.get(1)?;
                    Ok((r.get::<_, i64>(0)?, blob))
                })
                .map_err(&err)?;
            for row in rows {
                let (time_unix_ms, blob) = row.map_err(&err)?;
                // A short blob (damage) has no value for this metric: skipped.
                if let Some(b) = blob.get(index * 8..index * 8 + 8) {
                    let value = f64::from_le_bytes(b.try_into().unwrap_or([0; 8]));
                    points.push(MetricPoint {
                        time_unix_ms,
                        value,
                    });
                }
            }
            points.sort_by_key(|p| p.time_unix_ms);
        }
        Ok(points)
    }

    /// A page of events from `since_ms` on, oldest first: at most `limit`, and about
    /// PAGE_BYTES. `page_token` ("time:rowid" of the last event of the previous page)
    /// continues; the returned token is "" at the end. A stored event that doesn't
    /// decode is skipped (and logged), never fails the page.
    pub fn events_page(
        &self,
        since_ms: i64,
        limit: u32,
        page_token: &str,
        alerts_only: bool,
    ) -> Result<(Vec<FleetEvent>, String), StoreError> {
        use rusqlite::types::Value;
        let kind = if alerts_only { EVENT_ALERT } else { 0 };
        let err = self.sqlite();
        let (after_t, after_row) = if page_token.is_empty() {
            (since_ms, i64::MIN)
        } else {
            page_token
                .split_once(':')
                .and_then(|(t, r)| Some((t.parse::<i64>().ok()?, r.parse::<i64>().ok()?)))
                .ok_or_else(|| StoreError::PageToken(page_token.chars().take(64).collect()))?
        };
        let mut stmt = self
            .conn
            .prepare_cached(
                "SELECT e.rowid, e.time_ms, e.agent_id, h.identity, e.kind, e.body FROM events e JOIN hosts h USING (agent_id)
                 WHERE e.time_ms >= ?1 AND (e.time_ms, e.rowid) > (?2, ?3) AND (?5 = 0 OR e.kind = ?5)
                 ORDER BY e.time_ms, e.rowid LIMIT ?4",
            )
            .map_err(&err)?;
        let rows = stmt
            .query_map(
                params![since_ms, after_t, after_row, i64::from(limit) + 1, kind],
                |r| {
                    Ok((
                        r.get::<_, i64>(0)?,
                        r.get::<_, i64>(1)?,
                        r.get::<_, String>(2)?,
                        r.get::<_, Value>(3)?,
                        r.get::<_, i64>(4)?,
                        r.get::<_, Value>(5)?,
                    ))
                },
            )
            .map_err(&err)?;
        let mut out = Vec::new();
        let mut bytes = 0usize;
        let mut last = None;
        let mut more = false;
        for row in rows {
            let Ok((rowid, time, agent_id, identity, kind, body)) = row else {
                continue;
            };
            if out.len() >= limit as usize || bytes > PAGE_BYTES {
                more = true;
                break;
            }
            last = Some((time, rowid));
            let Value::Blob(body) = body else { continue };
            let event = match kind {
                EVENT_RETRANSMIT => {
                    TcpRetransmit::decode(body.as_slice()).map(fleet_event::Event::Retransmit)
                }
                EVENT_SLOW_SYSCALL => {
                    SlowSyscall::decode(body.as_slice()).map(fleet_event::Event::SlowSyscall)
                }
                EVENT_FINDING => vigil_proto::v1::Finding::decode(body.as_slice())
                    .map(fleet_event::Event::Finding),
                EVENT_ALERT => vigil_proto::v1::AlertEvent::decode(body.as_slice())
                    .map(fleet_event::Event::Alert),
                _ => continue,
            };
            let event = match event {
                Ok(e) => e,
                Err(e) => {
                    tracing::warn!(rowid, error = %e, "stored event does not decode; skipped");
                    continue;
                }
            };
            let identity = stored_identity(&agent_id, &identity);
            let e = FleetEvent {
                host: Some(identity),
                event: Some(event),
            };
            bytes += e.encoded_len();
            out.push(e);
        }
        let next = match (more, last) {
            (true, Some((t, r))) => format!("{t}:{r}"),
            _ => String::new(),
        };
        Ok((out, next))
    }

    /// Events from `since_ms` on, at most `limit` (one page's worth; for tests).
    pub fn events(&self, since_ms: i64, limit: u32) -> Result<Vec<FleetEvent>, StoreError> {
        self.events_page(since_ms, limit, "", false).map(|(e, _)| e)
    }
}

/// One batch, inside its savepoint.
/// The newest sequence stored for (agent id, epoch), if the stream is known.
fn stream_newest(
    tx: &Connection,
    agent_id: &str,
    epoch: &[u8; 16],
) -> Result<Option<u64>, rusqlite::Error> {
    let newest: Option<rusqlite::types::Value> = tx
        .prepare_cached("SELECT max_sequence FROM streams WHERE agent_id = ?1 AND epoch = ?2")?
        .query_row(params![agent_id, epoch.as_slice()], |r| r.get(0))
        .optional()?;
    Ok(newest.map(lenient_u64))
}

/// Writes a group's per-host and per-stream changes.
fn write_deltas(
    tx: &Connection,
    hosts: &std::collections::BTreeMap<&str, HostDelta<'_>>,
    streams: &StreamDeltas<'_>,
    now: i64,
) -> Result<(), rusqlite::Error> {
    for (agent_id, h) in hosts {
        let identity = h.identity.cloned().unwrap_or_else(|| HostIdentity {
            agent_id: agent_id.to_string(),
            ..Default::default()
        });
        tx.prepare_cached(
            "INSERT INTO hosts (agent_id, identity, hostname, last_seen_ms, batches, last_sequence, transport) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)
             ON CONFLICT (agent_id) DO UPDATE SET identity = ?2, hostname = ?3, last_seen_ms = ?4,
                 batches = batches + ?5, last_sequence = max(last_sequence, ?6), transport = ?7",
        )?
        .execute(params![agent_id, identity.encode_to_vec(), identity.hostname, now, h.batches, h.last_sequence, h.transport.as_str()])?;
        for (stage, n) in &h.losses {
            tx.prepare_cached(ADD_LOSS)?
                .execute(params![agent_id, stage, n])?;
        }
        if let Some(m) = h.latest {
            let (time_ms, metrics) = (m.time_unix_ms, m.encode_to_vec());
            tx.prepare_cached(
                "INSERT INTO latest (agent_id, time_ms, metrics) VALUES (?1, ?2, ?3)
                 ON CONFLICT (agent_id) DO UPDATE SET time_ms = ?2, metrics = ?3 WHERE ?2 >= latest.time_ms",
            )?
            .execute(params![agent_id, time_ms, metrics])?;
        }
    }
    for ((agent_id, epoch), (stored, max_sequence)) in streams {
        tx.prepare_cached(
            "INSERT INTO streams (agent_id, epoch, stored, max_sequence) VALUES (?1, ?2, ?3, ?4)
             ON CONFLICT (agent_id, epoch) DO UPDATE SET stored = stored + ?3, max_sequence = max(max_sequence, ?4)",
        )?
        .execute(params![agent_id, epoch.as_slice(), stored, max_sequence])?;
    }
    Ok(())
}

/// Stores one batch's own rows (the batch, its samples, its events) in the caller's
/// savepoint; its host and stream totals are the caller's (written once per group).
/// `newest`: the newest sequence stored for its stream, if the stream is known.
fn store_one(
    tx: &Connection,
    incoming: &Incoming,
    newest: Option<u64>,
    now: i64,
) -> Result<Outcome, rusqlite::Error> {
    let b = &incoming.batch;
    let epoch = b.spool_epoch().to_bytes().to_vec();
    let seq = b.sequence.min(i64::MAX as u64) as i64;
    let (encoded, digest) = encode_and_digest(b);
    // Past the newest stored it cannot be a resend: no lookup.
    let maybe_resend = newest.is_some_and(|n| b.sequence <= n);
    let stored: Option<Option<Vec<u8>>> = if maybe_resend {
        tx.prepare_cached(
            "SELECT digest FROM batches WHERE agent_id = ?1 AND epoch = ?2 AND sequence = ?3",
        )?
        .query_row(params![b.agent_id, epoch, seq], |r| r.get(0))
        .optional()?
    } else {
        None
    };
    if let Some(stored) = stored {
        // An older version stored no digest: a duplicate, as it would have said.
        if stored.is_none_or(|d| d == digest) {
            tx.prepare_cached("UPDATE hosts SET duplicates = duplicates + 1 WHERE agent_id = ?1")?
                .execute(params![b.agent_id])?;
            return Ok(Outcome::Duplicate);
        }
        tx.prepare_cached("UPDATE hosts SET conflicts = conflicts + 1 WHERE agent_id = ?1")?
            .execute(params![b.agent_id])?;
        tx.prepare_cached(
            "INSERT INTO conflicts (agent_id, epoch, sequence, received_ms, peer) VALUES (?1, ?2, ?3, ?4, ?5)",
        )?
        .execute(params![b.agent_id, epoch, seq, now, &*incoming.peer])?;
        tx.prepare_cached(
            "DELETE FROM conflicts WHERE rowid <= (SELECT max(rowid) FROM conflicts) - ?1",
        )?
        .execute(params![CONFLICTS_KEPT])?;
        return Ok(Outcome::Conflict);
    }
    if let Some(newest) = newest {
        if b.sequence > newest.saturating_add(MAX_SEQUENCE_AHEAD) {
            return Ok(Outcome::TooFarAhead { newest });
        }
    }
    tx.prepare_cached(
        "INSERT INTO batches (agent_id, epoch, sequence, received_ms, digest) VALUES (?1, ?2, ?3, ?4, ?5)",
    )?
    .execute(params![b.agent_id, epoch, seq, now, digest])?;
    let mut sample =
        tx.prepare_cached("INSERT INTO samples (agent_id, time_ms, scalars) VALUES (?1, ?2, ?3)")?;
    for m in &b.metrics {
        sample.execute(params![b.agent_id, m.time_unix_ms, scalars_blob(m)])?;
    }
    let mut event = tx.prepare_cached(
        "INSERT INTO events (agent_id, time_ms, kind, body) VALUES (?1, ?2, ?3, ?4)",
    )?;
    for r in &b.retransmits {
        event.execute(params![
            b.agent_id,
            r.time_unix_ns / 1_000_000,
            EVENT_RETRANSMIT,
            r.encode_to_vec()
        ])?;
    }
    for s in &b.slow_syscalls {
        event.execute(params![
            b.agent_id,
            s.time_unix_ns / 1_000_000,
            EVENT_SLOW_SYSCALL,
            s.encode_to_vec()
        ])?;
    }
    for f in &b.findings {
        event.execute(params![
            b.agent_id,
            f.time_unix_ms,
            EVENT_FINDING,
            f.encode_to_vec()
        ])?;
    }
    for a in &b.alerts {
        event.execute(params![
            b.agent_id,
            a.time_unix_ms,
            EVENT_ALERT,
            a.encode_to_vec()
        ])?;
    }
    tx.prepare_cached("INSERT INTO intervals (agent_id, time_ms, body) VALUES (?1, ?2, ?3)")?
        .execute(params![b.agent_id, b.end_unix_ms, history_body(b, encoded)])?;
    let mut sli = tx.prepare_cached(
        "INSERT INTO sli_counts (agent_id, name, time_ms, good, total) VALUES (?1, ?2, ?3, ?4, ?5)",
    )?;
    for (name, good, total) in sli_rows(b) {
        sli.execute(params![b.agent_id, name, b.end_unix_ms, good, total])?;
    }
    Ok(Outcome::Stored)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn batch(agent: &str, seq: u64, cpu: f64) -> Batch {
        Batch {
            agent_id: agent.into(),
            epoch: 1,
            sequence: seq,
            host: Some(HostIdentity {
                agent_id: agent.into(),
                hostname: format!("host-{agent}"),
                ..Default::default()
            }),
            metrics: vec![HostMetrics {
                time_unix_ms: 1000 * (seq % 1_000_000) as i64,
                cpu_usage_percent: cpu,
                cpu_count: 4,
                ..Default::default()
            }],
            retransmits: vec![TcpRetransmit {
                time_unix_ns: 1_000_000_000 * (seq % 1_000_000) as i64,
                sport: 1,
                dport: 2,
                ..Default::default()
            }],
            ..Default::default()
        }
    }

    #[test]
    fn sli_counts_are_stored_with_their_batch_and_outlive_a_short_retention() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = SqliteStore::open(dir.path()).unwrap();
        let now = vigil_units::unix_ms(std::time::SystemTime::now());
        let with_sli = |seq: u64, end: i64, good: u64, total: u64| Batch {
            end_unix_ms: end,
            slis: vec![vigil_proto::v1::SliCount {
                name: "fsync-fast".into(),
                good,
                total,
            }],
            ..batch("a", seq, 1.0)
        };
        let day = 86_400_000;
        let out = store(
            &mut s,
            vec![
                with_sli(1, now - 40 * day, 1, 1),
                with_sli(2, now - 10 * day, 90, 100),
                with_sli(3, now - 1000, 7, 10),
            ],
        );
        assert!(out.iter().all(|o| *o == Outcome::Stored), "{out:?}");
        // A resend is a duplicate: its counts are not stored twice.
        assert_eq!(
            store(&mut s, vec![with_sli(3, now - 1000, 7, 10)]),
            [Outcome::Duplicate]
        );
        // A 7-day retention keeps 35 days of SLI counts.
        s.prune(now - 7 * day).unwrap();
        let rows = s.sli_counts("fsync-fast", 0).unwrap();
        assert_eq!(
            rows.iter().map(|r| (r.2, r.3)).collect::<Vec<_>>(),
            [(90, 100), (7, 10)],
            "{rows:?}"
        );
        assert_eq!(rows[0].0, "a");
        assert!(s.sli_counts("other", 0).unwrap().is_empty());
    }

    fn inc(b: Batch) -> Incoming {
        Incoming {
            batch: b,
            peer: "127.0.0.1:1".into(),
            transport: Transport::Plaintext,
        }
    }

    fn store(s: &mut SqliteStore, batches: Vec<Batch>) -> Vec<Outcome> {
        s.store(&batches.into_iter().map(inc).collect::<Vec<_>>())
            .into_iter()
            .map(|r| r.expect("stored"))
            .collect()
    }

    #[test]
    fn stores_once_and_counts_duplicates() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = SqliteStore::open(dir.path()).unwrap();
        use Outcome::*;
        assert_eq!(
            store(&mut s, vec![batch("a", 1, 10.0), batch("a", 2, 20.0)]),
            vec![Stored, Stored]
        );
        assert_eq!(
            store(&mut s, vec![batch("a", 2, 20.0), batch("a", 3, 30.0)]),
            vec![Duplicate, Stored]
        );
        let hosts = s.hosts().unwrap();
        assert_eq!(hosts.len(), 1);
        assert_eq!(
            (
                hosts[0].batches,
                hosts[0].duplicates,
                hosts[0].last_sequence
            ),
            (3, 1, 3)
        );
        // The duplicate's metrics were not stored twice.
        let id = s.resolve("host-a").unwrap();
        let h = s.history(&id, "cpu.usage_percent", 0, i64::MAX).unwrap();
        assert_eq!(
            h.iter().map(|p| p.value).collect::<Vec<_>>(),
            vec![10.0, 20.0, 30.0]
        );
        assert_eq!(s.latest(&id).unwrap().unwrap().cpu_usage_percent, 30.0);
        assert_eq!(s.events(0, 100).unwrap().len(), 3);
    }

    #[test]
    fn a_different_batch_under_a_stored_name_is_a_conflict_and_changes_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = SqliteStore::open(dir.path()).unwrap();
        store(&mut s, vec![batch("a", 1, 10.0)]);
        let mut forged = batch("a", 1, 99.0);
        forged.host.as_mut().unwrap().hostname = "forged".into();
        assert_eq!(store(&mut s, vec![forged]), vec![Outcome::Conflict]);
        let h = &s.hosts().unwrap()[0];
        assert_eq!((h.batches, h.duplicates, h.conflicts), (1, 0, 1));
        assert_eq!(h.host.as_ref().unwrap().hostname, "host-a");
        assert_eq!(s.latest("a").unwrap().unwrap().cpu_usage_percent, 10.0);
        // A duplicate (same content) never rewrites the identity either.
        let mut dup = batch("a", 1, 10.0);
        assert_eq!(store(&mut s, vec![dup.clone()]), vec![Outcome::Duplicate]);
        dup.sequence = 2;
        dup.host.as_mut().unwrap().hostname = "renamed".into();
        store(&mut s, vec![dup]);
        assert_eq!(
            s.hosts().unwrap()[0].host.as_ref().unwrap().hostname,
            "renamed"
        );
    }

    #[test]
    fn sequences_far_ahead_of_a_known_stream_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = SqliteStore::open(dir.path()).unwrap();
        // A stream nobody has seen may start anywhere (a collector rebuilt empty).
        store(&mut s, vec![batch("a", 5_000_000, 1.0)]);
        assert_eq!(
            store(
                &mut s,
                vec![batch("a", 5_000_000 + MAX_SEQUENCE_AHEAD + 1, 1.0)]
            ),
            vec![Outcome::TooFarAhead { newest: 5_000_000 }]
        );
        assert_eq!(
            store(
                &mut s,
                vec![batch("a", 5_000_000 + MAX_SEQUENCE_AHEAD, 1.0)]
            ),
            vec![Outcome::Stored]
        );
    }

    #[test]
    fn one_failing_batch_fails_only_itself() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = SqliteStore::open(dir.path()).unwrap();
        // A statement that fails midway through b's batch (after its batch row)
        // fails b alone, and leaves nothing of it.
        s.conn
            .execute_batch(
                "CREATE TEMP TRIGGER fail_b BEFORE INSERT ON samples WHEN NEW.agent_id = 'b'
                 BEGIN SELECT RAISE(ABORT, 'b fails'); END;",
            )
            .unwrap();
        let results = s.store(&[
            inc(batch("a", 1, 1.0)),
            inc(batch("b", 1, 2.0)),
            inc(batch("c", 1, 3.0)),
        ]);
        assert!(matches!(results[0], Ok(Outcome::Stored)));
        assert!(results[1].is_err(), "{:?}", results[1]);
        assert!(matches!(results[2], Ok(Outcome::Stored)));
        let ids: Vec<_> = s
            .hosts()
            .unwrap()
            .into_iter()
            .map(|h| h.host.unwrap().agent_id)
            .collect();
        assert_eq!(ids, vec!["a", "c"], "nothing of b's batch was kept");
    }

    #[test]
    fn extreme_stored_values_never_fail_a_listing() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = SqliteStore::open(dir.path()).unwrap();
        let mut b1 = batch("a", i64::MAX as u64, 1.0);
        b1.losses = Some(Losses {
            pipeline_dropped: u64::MAX,
            ..Default::default()
        });
        let mut b2 = b1.clone();
        b2.epoch = 2;
        store(&mut s, vec![b1, b2]);
        // An older version could store a REAL or a huge hostname; list it anyway.
        s.conn
            .execute("INSERT INTO losses VALUES ('a', 'legacy', 1e300)", [])
            .unwrap();
        let hosts = s.hosts().unwrap();
        // Two epochs at 2^63-1 with one batch each: 2 x (2^63-2), summed in u64
        // (in SQL it overflowed and failed the listing).
        assert_eq!(hosts[0].gaps, u64::MAX - 3);
        assert_eq!(hosts[0].dropped_events["agent_dropped"], i64::MAX as u64);
        assert_eq!(hosts[0].dropped_events["legacy"], u64::MAX);
    }

    #[test]
    fn hosts_and_events_come_in_pages() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = SqliteStore::open(dir.path()).unwrap();
        let batches: Vec<_> = (0..25)
            .map(|i| batch(&format!("h{i:02}"), 1, 1.0))
            .collect();
        store(&mut s, batches);
        let (mut all, mut token) = (Vec::new(), String::new());
        let mut pages = 0;
        loop {
            let (page, next) = s.hosts_page(&token, 10).unwrap();
            assert!(page.len() <= 10);
            all.extend(page.into_iter().map(|h| h.host.unwrap().agent_id));
            pages += 1;
            if next.is_empty() {
                break;
            }
            token = next;
        }
        assert_eq!((all.len(), pages), (25, 3));
        let (mut n, mut token) = (0, String::new());
        loop {
            let (page, next) = s.events_page(0, 7, &token, false).unwrap();
            n += page.len();
            if next.is_empty() {
                break;
            }
            token = next;
        }
        assert_eq!(n, 25, "every event once across pages");
        assert!(matches!(
            s.events_page(0, 7, "garbage", false),
            Err(StoreError::PageToken(_))
        ));
    }

    #[test]
    fn survives_reopen_and_prunes() {
        let dir = tempfile::tempdir().unwrap();
        store(
            &mut SqliteStore::open(dir.path()).unwrap(),
            vec![batch("a", 1, 1.0), batch("a", 5, 5.0)],
        );
        let mut s = SqliteStore::open(dir.path()).unwrap();
        assert_eq!(
            store(&mut s, vec![batch("a", 5, 5.0)]),
            vec![Outcome::Duplicate],
            "dedup survives a restart"
        );
        assert_eq!(
            s.prune(2000).unwrap(),
            1 + 1 + 2 + 2,
            "one sample (its 12 series in one row), its event, and both batches' host-up SLI rows and history intervals (their end time is 0)"
        );
        assert_eq!(
            s.history("a", "cpu.usage_percent", 0, i64::MAX)
                .unwrap()
                .len(),
            1
        );
        assert!(matches!(s.resolve("nope"), Err(StoreError::UnknownHost(_))));
    }

    #[test]
    fn modes_are_private() {
        use std::os::unix::fs::PermissionsExt as _;
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("data");
        let mut s = SqliteStore::open(&data).unwrap();
        store(&mut s, vec![batch("a", 1, 1.0)]);
        let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(&data), 0o700);
        assert_eq!(mode(&data.join("vigil.db")), 0o600);
        assert_eq!(mode(&data.join("vigil.db-wal")), 0o600);
    }

    /// A database written by the collector of 4d8a4fb (schema version 1: two bench
    /// agents, five batches each, a row per metric in `points`) opens under this one:
    /// migrated, its hosts and history still read, its streams continue.
    #[test]
    fn a_database_of_the_previous_version_opens_and_keeps_its_data() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join("vigil.db"),
            include_bytes!("../tests/fixtures/vigil-v1.db"),
        )
        .unwrap();
        let mut s = SqliteStore::open(dir.path()).expect("the old database opens");
        let version: i64 = s
            .conn
            .pragma_query_value(None, "user_version", |r| r.get(0))
            .unwrap();
        assert_eq!(version, MIGRATIONS.len() as i64);
        let hosts = s.hosts().unwrap();
        let ids: Vec<_> = hosts
            .iter()
            .map(|h| (h.host.clone().unwrap().agent_id, h.batches, h.last_sequence))
            .collect();
        assert_eq!(
            ids,
            vec![
                ("bench-0000".to_string(), 5, 5),
                ("bench-0001".to_string(), 5, 5)
            ]
        );
        let old = s.history("bench-0000", "load.one", 0, i64::MAX).unwrap();
        assert_eq!(old.len(), 5, "the old rows per metric are read");
        let mut next = batch("bench-0000", 6, 1.0);
        next.metrics[0].time_unix_ms = old[4].time_unix_ms + 1;
        next.metrics[0].load_one = 0.25;
        assert_eq!(store(&mut s, vec![next]), vec![Outcome::Stored]);
        let now = s.history("bench-0000", "load.one", 0, i64::MAX).unwrap();
        assert_eq!(now.len(), 6, "old and new rows, in time order");
        assert_eq!(now[5].value, 0.25);
        assert_eq!(now[..5], old[..]);
        let h = s.hosts().unwrap().remove(0);
        assert_eq!((h.batches, h.last_sequence, h.gaps), (6, 6, 0), "{h:?}");
    }
}
