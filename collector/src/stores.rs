//! The collector's store, wherever it is: the embedded SQLite database under the data
//! directory (the default), or a PostgreSQL database that several collectors share.
//! The server, the writer and the fleet reads see only `Store`.
use std::path::{Path, PathBuf};

use vigil_proto::v1::{FleetEvent, HostIdentity, HostMetrics, HostSummary, MetricPoint};

use crate::pg::PgStore;
use crate::store::{Incoming, Outcome, SqliteStore, StoreError};

/// Where the collector keeps its data.
#[derive(Clone, Debug, PartialEq)]
pub enum StoreLocation {
    /// vigil.db in this directory.
    Sqlite(PathBuf),
    /// A PostgreSQL connection URL (postgres://USER[:PASSWORD]@HOST[:PORT]/DB).
    Postgres(String),
}

impl StoreLocation {
    /// For messages: the directory, or the URL without its password.
    pub fn shown(&self) -> String {
        match self {
            StoreLocation::Sqlite(dir) => dir.join("vigil.db").display().to_string(),
            StoreLocation::Postgres(url) => crate::pg::redact(url),
        }
    }
}

pub enum Store {
    Sqlite(SqliteStore),
    Postgres(Box<PgStore>),
}

macro_rules! each {
    ($self:ident, $s:ident => $e:expr) => {
        match $self {
            Store::Sqlite($s) => $e,
            Store::Postgres($s) => $e,
        }
    };
}

impl Store {
    /// The embedded SQLite store in `data_dir`.
    pub fn open(data_dir: &Path) -> Result<Self, StoreError> {
        SqliteStore::open(data_dir).map(Store::Sqlite)
    }

    pub fn open_at(at: &StoreLocation) -> Result<Self, StoreError> {
        match at {
            StoreLocation::Sqlite(dir) => Self::open(dir),
            StoreLocation::Postgres(url) => {
                PgStore::open(url).map(|s| Store::Postgres(Box::new(s)))
            }
        }
    }

    pub fn store(&mut self, batches: &[Incoming]) -> Vec<Result<Outcome, StoreError>> {
        each!(self, s => s.store(batches))
    }

    pub fn prune(&mut self, before_ms: i64) -> Result<usize, StoreError> {
        each!(self, s => s.prune(before_ms))
    }

    pub fn hosts_page(
        &mut self,
        page_token: &str,
        page_size: usize,
    ) -> Result<(Vec<HostSummary>, String), StoreError> {
        each!(self, s => s.hosts_page(page_token, page_size))
    }

    /// Every host (all pages).
    pub fn hosts(&mut self) -> Result<Vec<HostSummary>, StoreError> {
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

    /// SLI `name`'s counts from `since_ms` on: (agent id, time, good, total).
    pub fn sli_counts(
        &mut self,
        name: &str,
        since_ms: i64,
    ) -> Result<Vec<(String, i64, u64, u64)>, StoreError> {
        each!(self, s => s.sli_counts(name, since_ms))
    }

    /// Host `agent_id`'s intervals in (since, until], oldest first.
    pub fn intervals(
        &mut self,
        agent_id: &str,
        since: i64,
        until: i64,
        limit: u32,
    ) -> Result<vigil_proto::v1::HistoryResponse, StoreError> {
        each!(self, s => s.intervals(agent_id, since, until, limit))
    }

    pub fn resolve(&mut self, host: &str) -> Result<String, StoreError> {
        each!(self, s => s.resolve(host))
    }

    pub fn identity(&mut self, agent_id: &str) -> Result<HostIdentity, StoreError> {
        each!(self, s => s.identity(agent_id))
    }

    pub fn latest(&mut self, agent_id: &str) -> Result<Option<HostMetrics>, StoreError> {
        each!(self, s => s.latest(agent_id))
    }

    pub fn history(
        &mut self,
        agent_id: &str,
        metric: &str,
        since_ms: i64,
        until_ms: i64,
    ) -> Result<Vec<MetricPoint>, StoreError> {
        each!(self, s => s.history(agent_id, metric, since_ms, until_ms))
    }

    pub fn events_page(
        &mut self,
        since_ms: i64,
        limit: u32,
        page_token: &str,
        alerts_only: bool,
    ) -> Result<(Vec<FleetEvent>, String), StoreError> {
        each!(self, s => s.events_page(since_ms, limit, page_token, alerts_only))
    }

    /// Events from `since_ms` on, at most `limit` (one page's worth; for tests).
    pub fn events(&mut self, since_ms: i64, limit: u32) -> Result<Vec<FleetEvent>, StoreError> {
        self.events_page(since_ms, limit, "", false).map(|(e, _)| e)
    }
}
