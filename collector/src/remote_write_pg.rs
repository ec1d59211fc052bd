//! Remote write from a PostgreSQL store that several collectors share. One collector
//! at a time forwards each endpoint: the one holding the session advisory lock keyed
//! on its URL (when that collector dies, its connection and lock go with it, and
//! another takes over). The cursor lives in the database (`remote_write_cursors`), so
//! whoever takes over goes on where the last one stopped. Rows are read in (inserting
//! transaction, id) order and only below the oldest transaction still running: a row
//! committed later can never land behind the cursor. Retention counts the rows it
//! deletes that an endpoint had not had yet (`lost`).
use std::sync::atomic::Ordering;

use postgres::{Client, NoTls};

use crate::metrics::SCALARS;
use crate::remote_write::{encode, Forwarder, Row, Scratch, BACKOFF_MIN, POLL, ROWS_PER_REQUEST};

/// The advisory-lock key of an endpoint: the first 8 bytes of its URL's SHA-256.
fn lock_key(url: &str) -> i64 {
    use sha2::Digest as _;
    let h = sha2::Sha256::digest(url.as_bytes());
    i64::from_le_bytes(h[..8].try_into().unwrap_or([0; 8]))
}

/// Connects, retrying every 5 s until it works or the forwarder stops (None).
fn connect(f: &Forwarder, db_url: &str) -> Option<Client> {
    loop {
        match Client::connect(db_url, NoTls) {
            Ok(c) => return Some(c),
            Err(e) => {
                tracing::error!(db = %crate::pg::redact(db_url), error = %e, "remote write: cannot reach the store; retrying");
                if f.pause(std::time::Duration::from_secs(5)) {
                    return None;
                }
            }
        }
    }
}

/// Forwards until stopped (the connection is re-made if it breaks).
pub(crate) fn run(f: &Forwarder, db_url: &str, agent: &ureq::Agent) {
    while !f.stopping() {
        let Some(mut client) = connect(f, db_url) else {
            return;
        };
        if let Err(e) = forward(f, &mut client, agent) {
            tracing::warn!(url = %f.url, error = %e, "remote write: the store connection failed; reconnecting");
            if f.pause(std::time::Duration::from_secs(1)) {
                return;
            }
        }
    }
}

fn forward(f: &Forwarder, client: &mut Client, agent: &ureq::Agent) -> Result<(), postgres::Error> {
    let key = lock_key(&f.url);
    client.execute(
        "INSERT INTO remote_write_cursors (url) VALUES ($1) ON CONFLICT (url) DO NOTHING",
        &[&f.url],
    )?;
    // Wait for the turn: another collector may be forwarding this endpoint.
    let mut said = false;
    loop {
        let mine: bool = client
            .query_one("SELECT pg_try_advisory_lock($1)", &[&key])?
            .get(0);
        if mine {
            break;
        }
        if !said {
            tracing::info!(url = %f.url, "remote write: another collector forwards to {}; standing by", f.url);
            said = true;
        }
        if f.pause(POLL * 4) {
            return Ok(());
        }
    }
    tracing::info!(url = %f.url, "remote write: forwarding to {} from the shared store", f.url);
    let mut backoff = BACKOFF_MIN;
    let mut scratch = Scratch::default();
    while !f.stopping() {
        let row = client.query_one(
            "SELECT tx, id, lost FROM remote_write_cursors WHERE url = $1",
            &[&f.url],
        )?;
        let (tx, id, lost): (i64, i64, i64) = (row.get(0), row.get(1), row.get(2));
        f.stats
            .samples_lost
            .fetch_max(lost.max(0) as u64 * SCALARS.len() as u64, Ordering::Relaxed);
        let horizon: i64 = client
            .query_one(
                "SELECT pg_snapshot_xmin(pg_current_snapshot())::text::bigint",
                &[],
            )?
            .get(0);
        let rows: Vec<(Row, i64)> = client
            .query(
                "SELECT id, agent_id, time_ms, scalars, tx FROM samples
                 WHERE (tx, id) > ($1, $2) AND tx < $3 ORDER BY tx, id LIMIT $4",
                &[&tx, &id, &horizon, &ROWS_PER_REQUEST],
            )?
            .iter()
            .map(|r| {
                (
                    Row {
                        rowid: r.get(0),
                        agent_id: r.get(1),
                        time_ms: r.get(2),
                        scalars: r.get(3),
                    },
                    r.get::<_, i64>(4),
                )
            })
            .collect();
        let backlog: i64 = client
            .query_one(
                "SELECT count(*) FROM samples WHERE (tx, id) > ($1, $2)",
                &[&tx, &id],
            )?
            .get(0);
        f.stats.backlog_rows.store(backlog, Ordering::Relaxed);
        let Some((last_tx, last_id)) = rows.last().map(|(r, t)| (*t, r.rowid)) else {
            if f.pause(POLL) {
                return Ok(());
            }
            continue;
        };
        let rows: Vec<Row> = rows.into_iter().map(|(r, _)| r).collect();
        let (body, samples, newest) = encode(&rows, &mut scratch);
        if !f.deliver(agent, body, samples, newest, &mut backoff) {
            return Ok(());
        }
        client.execute(
            "UPDATE remote_write_cursors SET tx = $2, id = $3 WHERE url = $1",
            &[&f.url, &last_tx, &last_id],
        )?;
    }
    Ok(())
}
