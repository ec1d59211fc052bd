//! Mutual TLS for Vigil: what the `[tls]` section of agent.toml and collector.toml
//! says, who a certificate names, material that reloads when its files change, and
//! the TLS 1.3 acceptor and connector the gRPC servers and clients run on.
//!
//! The identity rule: a certificate names exactly one Vigil identity, as the URI SAN
//! `spiffe://TRUST_DOMAIN/vigil/KIND/NAME` where KIND is `agent`, `collector` or
//! `operator`. The collector stores a batch only if its agent id equals the NAME of an
//! `agent` identity in the client certificate that opened the stream.
pub mod client;
pub mod config;
pub mod identity;
pub mod material;
pub mod reload;
pub mod server;

pub use config::{Mode, Role, TlsFiles, TlsSection};
pub use identity::{Identity, IdentityError, Kind};
pub use material::{Material, TlsError};
pub use reload::Reloading;
pub use server::{PeerCertificate, PeerInfo};
