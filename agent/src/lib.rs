//! Vigil, the host agent: probes (eBPF), what they measure, and the CLI on top.
//!
//! Data path: `probes` (kernel programs, ring buffer reader) → `trace` (one-shot
//! views for the CLI) and, in later stages, pipeline/export/query.
pub mod cli;
pub mod config;
pub mod detect;
pub mod export;
pub mod histogram;
pub mod metrics;
pub mod notify;
pub mod pipeline;
pub mod privileges;
pub mod probes;
pub mod query;
pub mod spool;
pub mod syscall_table;
pub mod trace;
pub mod units;
