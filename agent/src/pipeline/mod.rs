//! The agent's data path: probes and host metrics in, batches out (to the collector,
//! the local API and the console), one interval at a time.
pub mod agent;
pub mod interval;
