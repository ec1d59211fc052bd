//! Vigil, the host agent: probes (eBPF), what they measure, and the CLI on top.
//!
//! Data path: `probes` (kernel programs, ring buffer reader) → `trace` (one-shot
//! views for the CLI) and, in later stages, pipeline/export/query.
pub mod alerts;
pub mod config;
pub mod daemon;
pub mod detect;
pub mod export;
pub mod histogram;
pub mod metrics;
pub mod notify;
pub mod pipeline;
pub mod privileges;
pub mod probes;
pub mod query;
pub mod sli;
pub mod spool;
pub mod startup;
pub mod syscall_table;
#[cfg(test)]
mod test_support;
pub mod trace;
pub mod triage;
/// Durations and sizes (one grammar with the collector's): the `vigil-units` crate.
pub use vigil_units as units;
