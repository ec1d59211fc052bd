//! The collector: agents stream batches in (`Collector`), they are stored in an
//! embedded SQLite database (or a PostgreSQL one several collectors share) and
//! acknowledged once committed, and the fleet is served back out (`Fleet`).
pub mod alerting;
pub mod config;
pub mod daemon;
pub mod limits;
pub mod metrics;
pub mod openmetrics;
pub mod pg;
pub mod remote_write;
mod remote_write_pg;
pub mod server;
pub mod slo;
pub mod store;
pub mod stores;
pub mod validate;

pub use limits::Limits;
pub use server::{serve, server_tls, CollectorConfig, ServeError, ServerTls};
pub use store::StoreError;
pub use stores::{Store, StoreLocation};
