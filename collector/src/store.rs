//! The embedded store: SQLite in WAL mode under the data directory. One connection
//! writes (the collector's writer thread); readers open their own.
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

const SCHEMA: &str = "
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

const EVENT_RETRANSMIT: i64 = 1;
const EVENT_SLOW_SYSCALL: i64 = 2;
const EVENT_FINDING: i64 = 3;

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
    #[error("stored {what} is corrupt: {source}")]
    Decode {
        what: &'static str,
        #[source]
        source: prost::DecodeError,
    },
    #[error("unknown host `{0}`")]
    UnknownHost(String),
    #[error("batch without an agent id")]
    NoAgentId,
}

pub struct Store {
    conn: Connection,
    path: PathBuf,
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

impl Store {
    /// Opens (creating if needed) the database in `data_dir`.
    pub fn open(data_dir: &Path) -> Result<Self, StoreError> {
        std::fs::create_dir_all(data_dir).map_err(|source| StoreError::DataDir {
            path: data_dir.to_path_buf(),
            source,
        })?;
        let path = data_dir.join("vigil.db");
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
        conn.execute_batch(SCHEMA).map_err(err)?;
        Ok(Self { conn, path })
    }

    fn sqlite(&self) -> impl Fn(rusqlite::Error) -> StoreError + '_ {
        move |source| StoreError::Sqlite {
            path: self.path.clone(),
            source,
        }
    }

    /// Stores batches in one transaction. Returns, per batch, whether it was a
    /// duplicate (already stored: counted, not stored again).
    pub fn store(&mut self, batches: &[Batch]) -> Result<Vec<bool>, StoreError> {
        let path = self.path.clone();
        let err = |source| StoreError::Sqlite {
            path: path.clone(),
            source,
        };
        let tx = self.conn.transaction().map_err(err)?;
        let mut out = Vec::with_capacity(batches.len());
        let now = now_ms();
        for b in batches {
            if b.agent_id.is_empty() {
                return Err(StoreError::NoAgentId);
            }
            let fresh = tx
                .execute(
                    "INSERT OR IGNORE INTO batches (agent_id, epoch, sequence, received_ms) VALUES (?1, ?2, ?3, ?4)",
                    params![b.agent_id, b.epoch as i64, b.sequence as i64, now],
                )
                .map_err(err)?
                == 1;
            let identity = b.host.clone().unwrap_or_else(|| HostIdentity {
                agent_id: b.agent_id.clone(),
                ..Default::default()
            });
            tx.execute(
                "INSERT INTO hosts (agent_id, identity, hostname, last_seen_ms) VALUES (?1, ?2, ?3, ?4)
                 ON CONFLICT (agent_id) DO UPDATE SET identity = ?2, hostname = ?3, last_seen_ms = ?4",
                params![b.agent_id, identity.encode_to_vec(), identity.hostname, now],
            )
            .map_err(err)?;
            if !fresh {
                tx.execute(
                    "UPDATE hosts SET duplicates = duplicates + 1 WHERE agent_id = ?1",
                    params![b.agent_id],
                )
                .map_err(err)?;
                out.push(true);
                continue;
            }
            tx.execute(
                "UPDATE hosts SET batches = batches + 1, last_sequence = max(last_sequence, ?2) WHERE agent_id = ?1",
                params![b.agent_id, b.sequence as i64],
            )
            .map_err(err)?;
            tx.execute(
                "INSERT INTO streams (agent_id, epoch, stored, max_sequence) VALUES (?1, ?2, 1, ?3)
                 ON CONFLICT (agent_id, epoch) DO UPDATE SET stored = stored + 1, max_sequence = max(max_sequence, ?3)",
                params![b.agent_id, b.epoch as i64, b.sequence as i64],
            )
            .map_err(err)?;
            for (stage, n) in b.losses.as_ref().map(Losses::stages).into_iter().flatten() {
                if n > 0 {
                    tx.execute(
                        "INSERT INTO losses (agent_id, stage, total) VALUES (?1, ?2, ?3)
                         ON CONFLICT (agent_id, stage) DO UPDATE SET total = total + ?3",
                        params![b.agent_id, stage, n as i64],
                    )
                    .map_err(err)?;
                }
            }
            for m in &b.metrics {
                for (name, value) in scalars(m) {
                    tx.execute(
                        "INSERT INTO points (agent_id, metric, time_ms, value) VALUES (?1, ?2, ?3, ?4)",
                        params![b.agent_id, name, m.time_unix_ms, value],
                    )
                    .map_err(err)?;
                }
            }
            if let Some(m) = b.metrics.iter().max_by_key(|m| m.time_unix_ms) {
                tx.execute(
                    "INSERT INTO latest (agent_id, time_ms, metrics) VALUES (?1, ?2, ?3)
                     ON CONFLICT (agent_id) DO UPDATE SET time_ms = ?2, metrics = ?3 WHERE ?2 >= latest.time_ms",
                    params![b.agent_id, m.time_unix_ms, m.encode_to_vec()],
                )
                .map_err(err)?;
            }
            for r in &b.retransmits {
                tx.execute(
                    "INSERT INTO events (agent_id, time_ms, kind, body) VALUES (?1, ?2, ?3, ?4)",
                    params![
                        b.agent_id,
                        r.time_unix_ns / 1_000_000,
                        EVENT_RETRANSMIT,
                        r.encode_to_vec()
                    ],
                )
                .map_err(err)?;
            }
            for s in &b.slow_syscalls {
                tx.execute(
                    "INSERT INTO events (agent_id, time_ms, kind, body) VALUES (?1, ?2, ?3, ?4)",
                    params![
                        b.agent_id,
                        s.time_unix_ns / 1_000_000,
                        EVENT_SLOW_SYSCALL,
                        s.encode_to_vec()
                    ],
                )
                .map_err(err)?;
            }
            for f in &b.findings {
                tx.execute(
                    "INSERT INTO events (agent_id, time_ms, kind, body) VALUES (?1, ?2, ?3, ?4)",
                    params![b.agent_id, f.time_unix_ms, EVENT_FINDING, f.encode_to_vec()],
                )
                .map_err(err)?;
            }
            out.push(false);
        }
        tx.commit().map_err(err)?;
        Ok(out)
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
        Ok(n + m)
    }

    pub fn hosts(&self) -> Result<Vec<HostSummary>, StoreError> {
        let err = self.sqlite();
        let mut stmt = self
            .conn
            .prepare("SELECT identity, last_seen_ms, batches, last_sequence, duplicates, agent_id FROM hosts ORDER BY hostname, agent_id")
            .map_err(&err)?;
        let rows = stmt
            .query_map([], |r| {
                Ok((
                    r.get::<_, Vec<u8>>(0)?,
                    r.get::<_, i64>(1)?,
                    r.get::<_, i64>(2)?,
                    r.get::<_, i64>(3)?,
                    r.get::<_, i64>(4)?,
                    r.get::<_, String>(5)?,
                ))
            })
            .map_err(&err)?;
        let mut out = Vec::new();
        let mut gaps = self
            .conn
            .prepare(
                "SELECT coalesce(sum(max_sequence - stored), 0) FROM streams WHERE agent_id = ?1",
            )
            .map_err(&err)?;
        let mut losses = self
            .conn
            .prepare("SELECT stage, total FROM losses WHERE agent_id = ?1")
            .map_err(&err)?;
        for row in rows {
            let (identity, last_seen, batches, last_sequence, duplicates, agent_id) =
                row.map_err(&err)?;
            let identity =
                HostIdentity::decode(identity.as_slice()).map_err(|source| StoreError::Decode {
                    what: "host identity",
                    source,
                })?;
            let gaps: i64 = gaps
                .query_row(params![agent_id], |r| r.get(0))
                .map_err(&err)?;
            let dropped_events = losses
                .query_map(params![agent_id], |r| {
                    Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1)? as u64))
                })
                .map_err(&err)?
                .collect::<Result<_, _>>()
                .map_err(&err)?;
            out.push(HostSummary {
                gaps: gaps.max(0) as u64,
                dropped_events,
                host: Some(identity),
                last_seen_unix_ms: last_seen,
                batches: batches as u64,
                last_sequence: last_sequence as u64,
                duplicates: duplicates as u64,
            });
        }
        Ok(out)
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
        let blob: Vec<u8> = self
            .conn
            .query_row(
                "SELECT identity FROM hosts WHERE agent_id = ?1",
                params![agent_id],
                |r| r.get(0),
            )
            .optional()
            .map_err(self.sqlite())?
            .ok_or_else(|| StoreError::UnknownHost(agent_id.to_string()))?;
        HostIdentity::decode(blob.as_slice()).map_err(|source| StoreError::Decode {
            what: "host identity",
            source,
        })
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
            .prepare(
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
        rows.collect::<Result<_, _>>().map_err(err)
    }

    pub fn events(&self, since_ms: i64, limit: u32) -> Result<Vec<FleetEvent>, StoreError> {
        let err = self.sqlite();
        let mut stmt = self
            .conn
            .prepare(
                "SELECT h.identity, e.kind, e.body FROM events e JOIN hosts h USING (agent_id)
                 WHERE e.time_ms >= ?1 ORDER BY e.time_ms LIMIT ?2",
            )
            .map_err(&err)?;
        let rows = stmt
            .query_map(params![since_ms, limit], |r| {
                Ok((
                    r.get::<_, Vec<u8>>(0)?,
                    r.get::<_, i64>(1)?,
                    r.get::<_, Vec<u8>>(2)?,
                ))
            })
            .map_err(&err)?;
        let mut out = Vec::new();
        for row in rows {
            let (identity, kind, body) = row.map_err(&err)?;
            let decode = |source| StoreError::Decode {
                what: "event",
                source,
            };
            let event = match kind {
                EVENT_RETRANSMIT => fleet_event::Event::Retransmit(
                    TcpRetransmit::decode(body.as_slice()).map_err(decode)?,
                ),
                EVENT_SLOW_SYSCALL => fleet_event::Event::SlowSyscall(
                    SlowSyscall::decode(body.as_slice()).map_err(decode)?,
                ),
                EVENT_FINDING => fleet_event::Event::Finding(
                    vigil_proto::v1::Finding::decode(body.as_slice()).map_err(decode)?,
                ),
                _ => continue,
            };
            out.push(FleetEvent {
                host: Some(HostIdentity::decode(identity.as_slice()).map_err(|source| {
                    StoreError::Decode {
                        what: "host identity",
                        source,
                    }
                })?),
                event: Some(event),
            });
        }
        Ok(out)
    }
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
                time_unix_ms: 1000 * seq as i64,
                cpu_usage_percent: cpu,
                cpu_count: 4,
                ..Default::default()
            }],
            retransmits: vec![TcpRetransmit {
                time_unix_ns: 1_000_000_000 * seq as i64,
                sport: 1,
                dport: 2,
                ..Default::default()
            }],
            ..Default::default()
        }
    }

    #[test]
    fn stores_once_and_counts_duplicates() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = Store::open(dir.path()).unwrap();
        assert_eq!(
            s.store(&[batch("a", 1, 10.0), batch("a", 2, 20.0)])
                .unwrap(),
            vec![false, false]
        );
        assert_eq!(
            s.store(&[batch("a", 2, 20.0), batch("a", 3, 30.0)])
                .unwrap(),
            vec![true, false]
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
    fn survives_reopen_and_prunes() {
        let dir = tempfile::tempdir().unwrap();
        Store::open(dir.path())
            .unwrap()
            .store(&[batch("a", 1, 1.0), batch("a", 5, 5.0)])
            .unwrap();
        let mut s = Store::open(dir.path()).unwrap();
        assert_eq!(
            s.store(&[batch("a", 5, 5.0)]).unwrap(),
            vec![true],
            "dedup survives a restart"
        );
        assert_eq!(
            s.prune(2000).unwrap(),
            12 + 1,
            "one sample's 12 series and its event"
        );
        assert_eq!(
            s.history("a", "cpu.usage_percent", 0, i64::MAX)
                .unwrap()
                .len(),
            1
        );
        assert!(matches!(s.resolve("nope"), Err(StoreError::UnknownHost(_))));
    }
}
