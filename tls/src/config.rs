//! The `[tls]` section, the same in agent.toml and collector.toml (and as flags).
use std::path::{Path, PathBuf};

use serde::Deserialize;

/// Where certificates live unless the config says otherwise.
pub const DEFAULT_DIR: &str = "/etc/vigil/tls";

/// Mutual TLS (the default) or plaintext, which must be asked for.
#[derive(Clone, Copy, Debug, Default, Deserialize, PartialEq, Eq, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    /// TLS 1.3, both sides present a certificate signed by the configured CA.
    #[default]
    Mtls,
    /// Plaintext gRPC: anyone on the path can read and forge batches. Warned about.
    Off,
}

impl Mode {
    pub fn as_str(self) -> &'static str {
        match self {
            Mode::Mtls => "mtls",
            Mode::Off => "off",
        }
    }
}

/// Which side's default file names apply.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    Agent,
    Collector,
    /// A person's tools (`vigil hosts` and the like) reading a collector or an agent.
    Operator,
}

impl Role {
    fn stem(self) -> &'static str {
        match self {
            Role::Agent => "agent",
            Role::Collector => "collector",
            Role::Operator => "operator",
        }
    }
}

/// `[tls]`: every field optional. Paths default to /etc/vigil/tls/ca.pem and
/// /etc/vigil/tls/ROLE.pem, ROLE.key (ROLE: agent, collector or operator).
#[derive(Clone, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, default)]
pub struct TlsSection {
    /// "mtls" (default) or "off".
    pub mode: Mode,
    /// CA bundle (PEM) that the peer's certificate must chain to.
    pub ca: Option<PathBuf>,
    /// This side's certificate chain (PEM), leaf first.
    pub cert: Option<PathBuf>,
    /// This side's private key (PEM: PKCS#8, SEC1 or PKCS#1).
    pub key: Option<PathBuf>,
    /// Client side only: the name the server's certificate must carry (default: the
    /// host part of the address dialled).
    pub server_name: Option<String>,
}

/// The three files of one side, resolved.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TlsFiles {
    pub ca: PathBuf,
    pub cert: PathBuf,
    pub key: PathBuf,
}

impl TlsSection {
    /// The paths, with the role's defaults where the section names none.
    pub fn files(&self, role: Role) -> TlsFiles {
        let dir = Path::new(DEFAULT_DIR);
        TlsFiles {
            ca: self.ca.clone().unwrap_or_else(|| dir.join("ca.pem")),
            cert: self
                .cert
                .clone()
                .unwrap_or_else(|| dir.join(format!("{}.pem", role.stem()))),
            key: self
                .key
                .clone()
                .unwrap_or_else(|| dir.join(format!("{}.key", role.stem()))),
        }
    }

    /// The flags (`--tls`, `--tls-ca`, `--tls-cert`, `--tls-key`) over the file's section.
    pub fn with_flags(mut self, flags: &TlsFlags) -> Self {
        if let Some(m) = flags.tls {
            self.mode = m;
        }
        self.ca = flags.tls_ca.clone().or(self.ca);
        self.cert = flags.tls_cert.clone().or(self.cert);
        self.key = flags.tls_key.clone().or(self.key);
        self
    }
}

/// The same as flags, for the daemons and the CLI.
#[derive(Clone, Debug, Default, clap::Args)]
pub struct TlsFlags {
    /// "mtls" (default) or "off" for plaintext (overrides tls.mode).
    #[arg(long, value_enum, value_name = "MODE", env = "VIGIL_TLS")]
    pub tls: Option<Mode>,
    /// CA bundle the peer's certificate must chain to (overrides tls.ca).
    #[arg(long, value_name = "FILE", env = "VIGIL_TLS_CA")]
    pub tls_ca: Option<PathBuf>,
    /// This side's certificate (overrides tls.cert).
    #[arg(long, value_name = "FILE", env = "VIGIL_TLS_CERT")]
    pub tls_cert: Option<PathBuf>,
    /// This side's private key (overrides tls.key).
    #[arg(long, value_name = "FILE", env = "VIGIL_TLS_KEY")]
    pub tls_key: Option<PathBuf>,
}
