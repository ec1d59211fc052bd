//! The collector: agents stream batches in (`Collector`), they are stored in an
//! embedded SQLite database and acknowledged once committed, and the fleet is served
//! back out (`Fleet`).
pub mod metrics;
pub mod server;
pub mod store;

pub use server::{serve, CollectorConfig, ServeError};
pub use store::{Store, StoreError};
