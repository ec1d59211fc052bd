//! What leaves the agent: samples converted to the vigil.v1 wire format.
pub mod convert;
pub mod stream;
