//! Read-only commands against a collector (`--collector ADDR`).
pub mod alerts;
pub mod api;
pub mod display;
pub mod fleet;
pub mod local;
pub mod metrics;
pub mod remote;
pub mod slo;
pub mod state;
pub mod top;

/// Where `vigil collector` listens by default, and where queries look for it.
pub const DEFAULT_COLLECTOR: &str = vigil_proto::DEFAULT_COLLECTOR_ADDR;
