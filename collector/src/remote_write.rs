//! Prometheus remote write 1.0: every host sample the collector stores is forwarded to
//! each configured endpoint (a protobuf `WriteRequest`, snappy-compressed, labels
//! sorted), reading the store's `samples` table as a write-ahead log.
//!
//! One thread per endpoint, with its own read connection to the database: it takes
//! the next rows after its cursor (at most [`ROWS_PER_REQUEST`] at a time: memory stays
//! bounded however long the remote was away), sends them, and moves the cursor (kept in
//! `<data_dir>/remote_write/<endpoint hash>.cursor`, written atomically) only when the
//! remote has taken them. The spec's retry rules: a 5xx, a 429 or a connection failure
//! is retried, the same request, with a backoff from 100 ms doubling to 30 s; any other
//! 4xx is counted as dropped with a log line and the cursor moves on. So an outage
//! loses nothing up to the store's retention: when the remote is back, the backlog
//! drains in order. Rows that retention deleted before they were sent are counted
//! (`lost`), as are cursors found damaged (set aside; sending starts over, which the
//! remote takes as duplicates).
use std::{
    path::{Path, PathBuf},
    sync::{
        atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering},
        Arc,
    },
    time::Duration,
};

use prost::Message;

use crate::metrics::SCALARS;

/// Rows (host samples, 12 series each) per request.
pub const ROWS_PER_REQUEST: i64 = 5000;
pub(crate) const BACKOFF_MIN: Duration = Duration::from_millis(100);
const BACKOFF_MAX: Duration = Duration::from_secs(30);
/// How often an idle forwarder looks for new rows.
pub(crate) const POLL: Duration = Duration::from_millis(250);

/// prompb's WriteRequest (remote write 1.0), as prost messages.
#[derive(Clone, PartialEq, Message)]
pub struct WriteRequest {
    #[prost(message, repeated, tag = "1")]
    pub timeseries: Vec<TimeSeries>,
}

#[derive(Clone, PartialEq, Message)]
pub struct TimeSeries {
    #[prost(message, repeated, tag = "1")]
    pub labels: Vec<Label>,
    #[prost(message, repeated, tag = "2")]
    pub samples: Vec<Sample>,
}

#[derive(Clone, PartialEq, Message)]
pub struct Label {
    #[prost(string, tag = "1")]
    pub name: String,
    #[prost(string, tag = "2")]
    pub value: String,
}

#[derive(Clone, PartialEq, Message)]
pub struct Sample {
    #[prost(double, tag = "1")]
    pub value: f64,
    #[prost(int64, tag = "2")]
    pub timestamp: i64,
}

/// The series name of a stored scalar: `cpu.usage_percent` is
/// `vigil_host_cpu_usage_percent`.
pub fn series_name(scalar: &str) -> String {
    format!("vigil_host_{}", scalar.replace('.', "_"))
}

/// One remote-write endpoint: its URL and, for https, the TLS material.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Endpoint {
    pub url: String,
    /// PEM bundle the server's certificate must chain to. Default: the system's
    /// bundle (`SYSTEM_CA_BUNDLE`), else Mozilla's roots.
    pub ca: Option<PathBuf>,
    /// PEM certificate (chain) and key presented to a receiver that asks for one.
    pub client: Option<(PathBuf, PathBuf)>,
}

/// Where Debian, Ubuntu and Alpine keep the system's trusted CAs.
pub const SYSTEM_CA_BUNDLE: &str = "/etc/ssl/certs/ca-certificates.crt";

/// Why an endpoint's TLS material cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum TlsMaterialError {
    #[error("reading {path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}: not PEM: {source}")]
    Pem {
        path: PathBuf,
        #[source]
        source: ureq::Error,
    },
    #[error("{path}: no certificate in it (PEM \"BEGIN CERTIFICATE\")")]
    NoCertificate { path: PathBuf },
    #[error("{path}: no private key in it (PEM \"BEGIN PRIVATE KEY\", EC or RSA)")]
    NoKey { path: PathBuf },
}

/// The PEM items of a file.
fn pem_items(path: &Path) -> Result<Vec<ureq::tls::PemItem<'static>>, TlsMaterialError> {
    let bytes = std::fs::read(path).map_err(|source| TlsMaterialError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    ureq::tls::parse_pem(&bytes)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|source| TlsMaterialError::Pem {
            path: path.to_path_buf(),
            source,
        })
}

fn certificates(path: &Path) -> Result<Vec<ureq::tls::Certificate<'static>>, TlsMaterialError> {
    let certs: Vec<_> = pem_items(path)?
        .into_iter()
        .filter_map(|i| match i {
            ureq::tls::PemItem::Certificate(c) => Some(c),
            _ => None,
        })
        .collect();
    if certs.is_empty() {
        return Err(TlsMaterialError::NoCertificate {
            path: path.to_path_buf(),
        });
    }
    Ok(certs)
}

impl Endpoint {
    pub fn is_https(&self) -> bool {
        self.url.starts_with("https://")
    }

    /// The client TLS configuration for an https endpoint (None for http://): its
    /// files are read and checked here, so a bad one is refused at start.
    pub fn tls_config(&self) -> Result<Option<ureq::tls::TlsConfig>, TlsMaterialError> {
        use ureq::tls::{ClientCert, PemItem, RootCerts, TlsConfig, TlsProvider};
        if !self.is_https() {
            return Ok(None);
        }
        let roots = match &self.ca {
            Some(ca) => RootCerts::new_with_certs(&certificates(ca)?),
            None if Path::new(SYSTEM_CA_BUNDLE).exists() => {
                RootCerts::new_with_certs(&certificates(Path::new(SYSTEM_CA_BUNDLE))?)
            }
            None => RootCerts::WebPki,
        };
        let client = match &self.client {
            Some((cert, key)) => {
                let chain = certificates(cert)?;
                let key = pem_items(key)?
                    .into_iter()
                    .find_map(|i| match i {
                        PemItem::PrivateKey(k) => Some(k),
                        _ => None,
                    })
                    .ok_or_else(|| TlsMaterialError::NoKey { path: key.clone() })?;
                Some(ClientCert::new_with_certs(&chain, key))
            }
            None => None,
        };
        Ok(Some(
            TlsConfig::builder()
                .provider(TlsProvider::Rustls)
                .root_certs(roots)
                .client_cert(client)
                .build(),
        ))
    }
}

/// One endpoint's counts, for /metrics.
#[derive(Debug, Default)]
pub struct EndpointStats {
    pub url: String,
    pub samples_sent: AtomicU64,
    pub samples_dropped: AtomicU64,
    /// Samples retention deleted before they could be sent.
    pub samples_lost: AtomicU64,
    pub requests_retried: AtomicU64,
    /// Rows stored and not yet sent (as of the forwarder's last look).
    pub backlog_rows: AtomicI64,
    /// The newest sample time sent, in ms (0: none yet).
    pub newest_sent_ms: AtomicI64,
    pub cursors_damaged: AtomicU64,
}

/// The forwarders of one collector.
pub struct RemoteWrite {
    pub stats: Vec<Arc<EndpointStats>>,
    stop: Arc<AtomicBool>,
    threads: Vec<std::thread::JoinHandle<()>>,
}

impl RemoteWrite {
    /// Starts a forwarder per endpoint on the store at `at` (the cursor files are kept
    /// in `data_dir`; with PostgreSQL the cursor is in the database, shared by the
    /// collectors on it).
    pub fn start(
        data_dir: &Path,
        at: &crate::StoreLocation,
        endpoints: &[Endpoint],
    ) -> std::io::Result<Self> {
        let stop = Arc::new(AtomicBool::new(false));
        let mut stats = Vec::new();
        let mut threads = Vec::new();
        for endpoint in endpoints {
            let url = &endpoint.url;
            // Checked when the settings were loaded; a file changed since then is
            // refused here the same way.
            let tls = endpoint
                .tls_config()
                .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, e))?;
            let s = Arc::new(EndpointStats {
                url: url.clone(),
                ..Default::default()
            });
            let f = Forwarder {
                url: url.clone(),
                postgres: match at {
                    crate::StoreLocation::Postgres(u) => Some(u.clone()),
                    crate::StoreLocation::Sqlite(_) => None,
                },
                tls,
                db: data_dir.join("vigil.db"),
                cursor_file: cursor_path(data_dir, url),
                stats: s.clone(),
                stop: stop.clone(),
            };
            threads.push(
                std::thread::Builder::new()
                    .name("vigil-remote-write".into())
                    .spawn(move || f.run())?,
            );
            stats.push(s);
            tracing::info!(%url, "remote write to {url}");
        }
        Ok(Self {
            stats,
            stop,
            threads,
        })
    }

    /// Stops the forwarders (a request in flight finishes or times out first).
    pub fn stop(self) {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.threads {
            let _ = t.join();
        }
    }
}

fn cursor_path(data_dir: &Path, url: &str) -> PathBuf {
    use sha2::Digest as _;
    let h = sha2::Sha256::digest(url.as_bytes());
    let hex: String = h.iter().take(8).map(|b| format!("{b:02x}")).collect();
    data_dir.join("remote_write").join(format!("{hex}.cursor"))
}

pub(crate) struct Forwarder {
    pub(crate) url: String,
    /// The store is this PostgreSQL database (`remote_write_pg`), not the SQLite file.
    postgres: Option<String>,
    /// For https endpoints.
    tls: Option<ureq::tls::TlsConfig>,
    db: PathBuf,
    cursor_file: PathBuf,
    pub(crate) stats: Arc<EndpointStats>,
    stop: Arc<AtomicBool>,
}

/// What a send came to.
pub(crate) enum Sent {
    Taken,
    /// A 4xx other than 429: the remote will never take it.
    Refused(String),
}

impl Forwarder {
    pub(crate) fn stopping(&self) -> bool {
        self.stop.load(Ordering::Relaxed)
    }

    /// Sleeps `d` in short steps, returning early (true) on stop.
    pub(crate) fn pause(&self, d: Duration) -> bool {
        let end = std::time::Instant::now() + d;
        while std::time::Instant::now() < end {
            if self.stopping() {
                return true;
            }
            std::thread::sleep(Duration::from_millis(50).min(d));
        }
        self.stopping()
    }

    fn read_cursor(&self) -> i64 {
        match std::fs::read(&self.cursor_file) {
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => 0,
            r => match r
                .ok()
                .and_then(|b| String::from_utf8(b).ok())
                .map(|t| t.trim().parse::<i64>())
            {
                Some(Ok(v)) if v >= 0 => v,
                _ => {
                    let aside = self.cursor_file.with_extension(format!(
                        "damaged-{}",
                        std::time::SystemTime::now()
                            .duration_since(std::time::UNIX_EPOCH)
                            .map_or(0, |d| d.as_millis())
                    ));
                    tracing::warn!(file = %self.cursor_file.display(), aside = %aside.display(),
                        "remote write cursor damaged: set aside; sending starts over (the remote takes repeats as duplicates)");
                    let _ = std::fs::rename(&self.cursor_file, &aside);
                    self.stats.cursors_damaged.fetch_add(1, Ordering::Relaxed);
                    0
                }
            },
        }
    }

    fn write_cursor(&self, v: i64) {
        let dir = self.cursor_file.parent().unwrap_or(Path::new("."));
        let tmp = self.cursor_file.with_extension("tmp");
        let r = std::fs::create_dir_all(dir)
            .and_then(|()| std::fs::write(&tmp, format!("{v}\n")))
            .and_then(|()| std::fs::rename(&tmp, &self.cursor_file));
        if let Err(e) = r {
            // The cursor in memory goes on; after a restart the rows since the last
            // good write are sent again (duplicates to the remote, nothing lost).
            tracing::warn!(file = %self.cursor_file.display(), error = %e, "remote write cursor not saved");
        }
    }

    /// The HTTP client for this endpoint.
    fn http_agent(&mut self) -> ureq::Agent {
        let mut config = ureq::Agent::config_builder()
            .timeout_global(Some(Duration::from_secs(30)))
            .http_status_as_error(false)
            // Never downgrade: an https endpoint's redirect to http is an error.
            .https_only(self.tls.is_some());
        if let Some(tls) = self.tls.take() {
            config = config.tls_config(tls);
        }
        config.build().new_agent()
    }

    /// Sends one request's body until the remote takes it, refuses it for good, or
    /// the forwarder stops (false).
    pub(crate) fn deliver(
        &self,
        agent: &ureq::Agent,
        body: &[u8],
        samples: u64,
        newest: i64,
        backoff: &mut Duration,
    ) -> bool {
        loop {
            match self.send(agent, body) {
                Ok(Sent::Taken) => {
                    self.stats
                        .samples_sent
                        .fetch_add(samples, Ordering::Relaxed);
                    self.stats
                        .newest_sent_ms
                        .fetch_max(newest, Ordering::Relaxed);
                    *backoff = BACKOFF_MIN;
                    return true;
                }
                Ok(Sent::Refused(why)) => {
                    self.stats
                        .samples_dropped
                        .fetch_add(samples, Ordering::Relaxed);
                    tracing::warn!(url = %self.url, samples, reason = %why, "remote write refused a request (4xx, not retried): samples dropped");
                    return true;
                }
                Err(why) => {
                    self.stats.requests_retried.fetch_add(1, Ordering::Relaxed);
                    tracing::debug!(url = %self.url, reason = %why, wait = ?backoff, "remote write failed; retrying");
                    if self.pause(*backoff) {
                        return false;
                    }
                    *backoff = (*backoff * 2).min(BACKOFF_MAX);
                }
            }
        }
    }

    fn run(mut self) {
        if let Some(url) = self.postgres.clone() {
            let agent = self.http_agent();
            crate::remote_write_pg::run(&self, &url, &agent);
            return;
        }
        let conn = loop {
            match rusqlite::Connection::open_with_flags(
                &self.db,
                rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY
                    | rusqlite::OpenFlags::SQLITE_OPEN_NO_MUTEX,
            ) {
                Ok(c) => {
                    let _ = c.busy_timeout(Duration::from_secs(10));
                    break c;
                }
                Err(e) => {
                    tracing::error!(db = %self.db.display(), error = %e, "remote write: cannot open the store; retrying");
                    if self.pause(Duration::from_secs(5)) {
                        return;
                    }
                }
            }
        };
        let agent = self.http_agent();
        let mut scratch = Scratch::default();
        let mut cursor = self.read_cursor();
        let mut backoff = BACKOFF_MIN;
        while !self.stopping() {
            let rows = match read_rows(&conn, cursor) {
                Ok(r) => r,
                Err(e) => {
                    tracing::warn!(error = %e, "remote write: reading the store failed; retrying");
                    if self.pause(Duration::from_secs(1)) {
                        return;
                    }
                    continue;
                }
            };
            let max: i64 = conn
                .query_row("SELECT COALESCE(MAX(rowid), 0) FROM samples", [], |r| {
                    r.get(0)
                })
                .unwrap_or(cursor);
            if max < cursor {
                // The table was emptied (retention deleted every row) and rowids began
                // again: start from its first row.
                cursor = 0;
                self.write_cursor(0);
                continue;
            }
            self.stats
                .backlog_rows
                .store(max - cursor, Ordering::Relaxed);
            let Some(last) = rows.last().map(|r| r.rowid) else {
                if self.pause(POLL) {
                    return;
                }
                continue;
            };
            // Rows between the cursor and the first one read were deleted unsent.
            let gone = rows[0].rowid - cursor - 1;
            if gone > 0 {
                let n = gone as u64 * SCALARS.len() as u64;
                self.stats.samples_lost.fetch_add(n, Ordering::Relaxed);
                tracing::warn!(url = %self.url, samples = n, "remote write: samples deleted by retention before they were sent");
            }
            let (body, samples, newest) = encode(&rows, &mut scratch);
            if !self.deliver(&agent, body, samples, newest, &mut backoff) {
                return;
            }
            cursor = last;
            self.write_cursor(cursor);
        }
    }

    /// Ok: the remote answered for good; Err: retry.
    pub(crate) fn send(&self, agent: &ureq::Agent, body: &[u8]) -> Result<Sent, String> {
        let resp = agent
            .post(&self.url)
            .header("Content-Encoding", "snappy")
            .header("Content-Type", "application/x-protobuf")
            .header("X-Prometheus-Remote-Write-Version", "0.1.0")
            .header(
                "User-Agent",
                concat!("vigil-collector/", env!("CARGO_PKG_VERSION")),
            )
            .send(body)
            .map_err(|e| e.to_string())?;
        let status = resp.status().as_u16();
        match status {
            200..=299 => Ok(Sent::Taken),
            429 | 500..=599 => Err(format!("HTTP {status}")),
            _ => {
                let text = resp
                    .into_body()
                    .read_to_string()
                    .unwrap_or_default()
                    .chars()
                    .take(200)
                    .collect::<String>();
                Ok(Sent::Refused(format!("HTTP {status}: {}", text.trim())))
            }
        }
    }
}

pub(crate) struct Row {
    pub(crate) rowid: i64,
    pub(crate) agent_id: String,
    pub(crate) time_ms: i64,
    pub(crate) scalars: Vec<u8>,
}

fn read_rows(conn: &rusqlite::Connection, after: i64) -> rusqlite::Result<Vec<Row>> {
    let mut st = conn.prepare_cached(
        "SELECT rowid, agent_id, time_ms, scalars FROM samples WHERE rowid > ?1 ORDER BY rowid LIMIT ?2",
    )?;
    let rows = st.query_map(rusqlite::params![after, ROWS_PER_REQUEST], |r| {
        Ok(Row {
            rowid: r.get(0)?,
            agent_id: r.get(1)?,
            time_ms: r.get(2)?,
            scalars: r.get(3)?,
        })
    })?;
    rows.collect()
}

/// The rows as one snappy-compressed WriteRequest: a series per (host, scalar), its
/// samples in row order; returns the body, the samples in it and the newest time.
/// Buffers one forwarder reuses from request to request: a request is megabytes, and
/// fresh ones cost a page fault per page each time (found by profiling the benchmark).
#[derive(Default)]
pub(crate) struct Scratch {
    raw: Vec<u8>,
    body: Vec<u8>,
}

/// A WriteRequest for `rows` (one series per agent and scalar, its samples in row
/// order), snappy-compressed into `scratch`; returns the body, the sample count and
/// the newest sample time.
pub(crate) fn encode<'s>(rows: &[Row], scratch: &'s mut Scratch) -> (&'s [u8], u64, i64) {
    // Rows grouped by agent with one lookup per row (not one per series and sample).
    let mut index: std::collections::HashMap<&str, usize> = Default::default();
    let mut agents: Vec<(&str, Vec<Vec<Sample>>)> = Vec::new();
    let mut newest = 0;
    let mut n = 0u64;
    for r in rows {
        newest = newest.max(r.time_ms);
        let slot = *index.entry(r.agent_id.as_str()).or_insert_with(|| {
            agents.push((r.agent_id.as_str(), vec![Vec::new(); SCALARS.len()]));
            agents.len() - 1
        });
        let series = &mut agents[slot].1;
        for (i, chunk) in r.scalars.chunks_exact(8).enumerate().take(SCALARS.len()) {
            let mut b = [0u8; 8];
            b.copy_from_slice(chunk);
            series[i].push(Sample {
                value: f64::from_le_bytes(b),
                timestamp: r.time_ms,
            });
            n += 1;
        }
    }
    agents.sort_unstable_by(|x, y| x.0.cmp(y.0));
    let timeseries = agents
        .into_iter()
        .flat_map(|(agent, series)| {
            series
                .into_iter()
                .enumerate()
                .filter(|(_, samples)| !samples.is_empty())
                .map(move |(i, samples)| TimeSeries {
                    // Sorted by name: "__name__" < "agent_id".
                    labels: vec![
                        Label {
                            name: "__name__".into(),
                            value: series_name(SCALARS[i]),
                        },
                        Label {
                            name: "agent_id".into(),
                            value: agent.to_string(),
                        },
                    ],
                    samples,
                })
        })
        .collect();
    scratch.raw.clear();
    // Encoding into a Vec cannot fail (it grows).
    let _ = WriteRequest { timeseries }.encode(&mut scratch.raw);
    scratch
        .body
        .resize(snap::raw::max_compress_len(scratch.raw.len()), 0);
    let len = snap::raw::Encoder::new()
        .compress(&scratch.raw, &mut scratch.body)
        .unwrap_or(0);
    (&scratch.body[..len], n, newest)
}

/// The forwarders' families for the collector's /metrics.
pub fn families(stats: &[Arc<EndpointStats>]) -> Vec<vigil_openmetrics::Family> {
    use vigil_openmetrics::{Family, Kind};
    let fam = |name: &str, help: &str, kind| Family::new(name, help, kind);
    let mut sent = fam(
        "vigil_remote_write_samples_sent_total",
        "Samples the remote took.",
        Kind::Counter,
    );
    let mut dropped = fam(
        "vigil_remote_write_samples_dropped_total",
        "Samples in requests the remote refused with a 4xx other than 429 (not retried).",
        Kind::Counter,
    );
    let mut lost = fam(
        "vigil_remote_write_samples_lost_total",
        "Samples retention deleted from the store before they were sent.",
        Kind::Counter,
    );
    let mut retried = fam(
        "vigil_remote_write_retries_total",
        "Requests retried (5xx, 429, connection failures).",
        Kind::Counter,
    );
    let mut backlog = fam(
        "vigil_remote_write_backlog_samples",
        "Samples stored and not yet sent.",
        Kind::Gauge,
    );
    let mut newest = fam(
        "vigil_remote_write_newest_sent_timestamp_seconds",
        "Time of the newest sample sent (now minus this is the lag).",
        Kind::Gauge,
    );
    let mut damaged = fam(
        "vigil_remote_write_cursors_damaged_total",
        "Cursor files found damaged (set aside; sending started over).",
        Kind::Counter,
    );
    for s in stats {
        let l = [("url", s.url.as_str())];
        sent.with(&l, s.samples_sent.load(Ordering::Relaxed) as f64);
        dropped.with(&l, s.samples_dropped.load(Ordering::Relaxed) as f64);
        lost.with(&l, s.samples_lost.load(Ordering::Relaxed) as f64);
        retried.with(&l, s.requests_retried.load(Ordering::Relaxed) as f64);
        backlog.with(
            &l,
            (s.backlog_rows.load(Ordering::Relaxed).max(0) as u64 * SCALARS.len() as u64) as f64,
        );
        newest.with(&l, s.newest_sent_ms.load(Ordering::Relaxed) as f64 / 1000.0);
        damaged.with(&l, s.cursors_damaged.load(Ordering::Relaxed) as f64);
    }
    vec![sent, dropped, lost, retried, backlog, newest, damaged]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_damaged_cursor_is_set_aside_counted_and_sending_starts_over() {
        let dir = tempfile::tempdir().unwrap();
        let url = "http://127.0.0.1:9/api/v1/write";
        let f = Forwarder {
            url: url.into(),
            postgres: None,
            tls: None,
            db: dir.path().join("vigil.db"),
            cursor_file: cursor_path(dir.path(), url),
            stats: Arc::new(EndpointStats::default()),
            stop: Arc::new(AtomicBool::new(false)),
        };
        assert_eq!(f.read_cursor(), 0, "no file: from the start");
        f.write_cursor(41);
        assert_eq!(f.read_cursor(), 41);
        for garbage in [&b""[..], b"\xff\xfe", b"-3\n", b"12abc"] {
            std::fs::write(&f.cursor_file, garbage).unwrap();
            assert_eq!(f.read_cursor(), 0);
        }
        assert_eq!(f.stats.cursors_damaged.load(Ordering::Relaxed), 4);
        let aside = std::fs::read_dir(f.cursor_file.parent().unwrap())
            .unwrap()
            .filter(|e| {
                e.as_ref()
                    .unwrap()
                    .file_name()
                    .to_string_lossy()
                    .contains("damaged-")
            })
            .count();
        assert!(aside >= 1, "kept for a postmortem");
    }

    #[test]
    fn a_request_holds_a_sorted_series_per_host_and_scalar() {
        let blob: Vec<u8> = (0..SCALARS.len())
            .flat_map(|i| (i as f64).to_le_bytes())
            .collect();
        let rows = vec![
            Row {
                rowid: 1,
                agent_id: "b".into(),
                time_ms: 1000,
                scalars: blob.clone(),
            },
            Row {
                rowid: 2,
                agent_id: "a".into(),
                time_ms: 1000,
                scalars: blob.clone(),
            },
            Row {
                rowid: 3,
                agent_id: "b".into(),
                time_ms: 2000,
                scalars: blob,
            },
        ];
        let mut scratch = Scratch::default();
        let (body, n, newest) = encode(&rows, &mut scratch);
        assert_eq!((n, newest), (36, 2000));
        let raw = snap::raw::Decoder::new().decompress_vec(body).unwrap();
        let req = WriteRequest::decode(raw.as_slice()).unwrap();
        assert_eq!(req.timeseries.len(), 24);
        for ts in &req.timeseries {
            let names: Vec<&str> = ts.labels.iter().map(|l| l.name.as_str()).collect();
            let mut sorted = names.clone();
            sorted.sort();
            assert_eq!(names, sorted);
        }
        let b_cpu = req
            .timeseries
            .iter()
            .find(|t| {
                t.labels[0].value == "vigil_host_cpu_usage_percent" && t.labels[1].value == "b"
            })
            .unwrap();
        assert_eq!(
            b_cpu
                .samples
                .iter()
                .map(|s| s.timestamp)
                .collect::<Vec<_>>(),
            [1000, 2000]
        );
    }
}
