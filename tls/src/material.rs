//! Reading the CA bundle, certificate chain and key, and building rustls configs from
//! them: TLS 1.3 only, ALPN h2, the peer's certificate verified against the CA.
use std::{path::Path, sync::Arc};

use rustls::pki_types::{pem::PemObject as _, CertificateDer, PrivateKeyDer};

use crate::{config::TlsFiles, identity::Identity, IdentityError};

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("{path}: {reason}")]
    File { path: String, reason: String },
    #[error("{0}")]
    Invalid(String),
}

fn file_error(path: &Path, reason: impl std::fmt::Display) -> TlsError {
    TlsError::File {
        path: path.display().to_string(),
        reason: reason.to_string(),
    }
}

/// One side's material, parsed.
pub struct Material {
    pub ca: Vec<CertificateDer<'static>>,
    pub chain: Vec<CertificateDer<'static>>,
    pub key: PrivateKeyDer<'static>,
    /// Who this side's own certificate names.
    pub identity: Result<Identity, IdentityError>,
}

/// The bytes of the three files (a file that cannot be read: why).
pub type Contents = [(std::path::PathBuf, Result<Vec<u8>, String>); 3];

/// Reads the three files as they are now.
pub fn read(files: &TlsFiles) -> Contents {
    let read = |p: &Path| (p.to_path_buf(), std::fs::read(p).map_err(|e| e.to_string()));
    [read(&files.ca), read(&files.cert), read(&files.key)]
}

fn certificates(path: &Path, bytes: &[u8]) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let certs = CertificateDer::pem_slice_iter(bytes)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| file_error(path, format!("not a PEM certificate file: {e}")))?;
    if certs.is_empty() {
        return Err(file_error(
            path,
            "no certificate in it (-----BEGIN CERTIFICATE-----)",
        ));
    }
    Ok(certs)
}

impl Material {
    /// Parses what [`read`] returned.
    pub fn parse(contents: &Contents) -> Result<Self, TlsError> {
        let bytes = |i: usize| -> Result<&[u8], TlsError> {
            let (path, r) = &contents[i];
            r.as_deref()
                .map_err(|e| file_error(path, format!("cannot read: {e}")))
        };
        let ca = certificates(&contents[0].0, bytes(0)?)?;
        let chain = certificates(&contents[1].0, bytes(1)?)?;
        let key = PrivateKeyDer::from_pem_slice(bytes(2)?)
            .map_err(|e| file_error(&contents[2].0, format!("no PEM private key in it: {e}")))?;
        let identity = Identity::of_certificate(&chain[0]);
        Ok(Self {
            ca,
            chain,
            key,
            identity,
        })
    }

    /// Reads and parses the files.
    pub fn load(files: &TlsFiles) -> Result<Self, TlsError> {
        Self::parse(&read(files))
    }

    fn roots(&self) -> Result<rustls::RootCertStore, TlsError> {
        let mut roots = rustls::RootCertStore::empty();
        for c in &self.ca {
            roots
                .add(c.clone())
                .map_err(|e| TlsError::Invalid(format!("CA certificate: {e}")))?;
        }
        Ok(roots)
    }

    /// Refuses a key that isn't the certificate's (a rotation caught half way).
    fn certified_key(&self, provider: &rustls::crypto::CryptoProvider) -> Result<(), TlsError> {
        let signing = provider
            .key_provider
            .load_private_key(self.key.clone_key())
            .map_err(|e| TlsError::Invalid(format!("private key: {e}")))?;
        rustls::sign::CertifiedKey::new(self.chain.clone(), signing)
            .keys_match()
            .map_err(|e| TlsError::Invalid(format!("the key is not the certificate's: {e}")))
    }
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// Whether a server's clients must present a certificate.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ClientAuth {
    /// The handshake fails without a certificate signed by the CA.
    Required,
    /// A certificate, if presented, must be signed by the CA; without one the request
    /// must authenticate otherwise (a bearer token).
    Optional,
}

/// A TLS 1.3 server that verifies clients against the material's CA.
pub fn server_config(m: &Material, auth: ClientAuth) -> Result<rustls::ServerConfig, TlsError> {
    let provider = provider();
    m.certified_key(&provider)?;
    let builder = rustls::server::WebPkiClientVerifier::builder_with_provider(
        Arc::new(m.roots()?),
        provider.clone(),
    );
    let builder = match auth {
        ClientAuth::Required => builder,
        ClientAuth::Optional => builder.allow_unauthenticated(),
    };
    let verifier = builder
        .build()
        .map_err(|e| TlsError::Invalid(format!("CA bundle: {e}")))?;
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|e| TlsError::Invalid(e.to_string()))?
        .with_client_cert_verifier(verifier)
        .with_single_cert(m.chain.clone(), m.key.clone_key())
        .map_err(|e| TlsError::Invalid(format!("certificate and key: {e}")))?;
    config.alpn_protocols = vec![b"h2".to_vec()];
    Ok(config)
}

/// A TLS 1.3 client that presents no certificate (it authenticates otherwise: a bearer
/// token) and verifies the server against the CA bundle at `ca`.
pub fn client_config_without_certificate(ca: &Path) -> Result<rustls::ClientConfig, TlsError> {
    let bytes = std::fs::read(ca).map_err(|e| file_error(ca, format!("cannot read: {e}")))?;
    let mut roots = rustls::RootCertStore::empty();
    for c in certificates(ca, &bytes)? {
        roots
            .add(c)
            .map_err(|e| TlsError::Invalid(format!("CA certificate: {e}")))?;
    }
    let mut config = rustls::ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|e| TlsError::Invalid(e.to_string()))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = vec![b"h2".to_vec()];
    Ok(config)
}

/// A TLS 1.3 client that presents the material's certificate and verifies the
/// server against its CA.
pub fn client_config(m: &Material) -> Result<rustls::ClientConfig, TlsError> {
    let provider = provider();
    m.certified_key(&provider)?;
    let mut config = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|e| TlsError::Invalid(e.to_string()))?
        .with_root_certificates(m.roots()?)
        .with_client_auth_cert(m.chain.clone(), m.key.clone_key())
        .map_err(|e| TlsError::Invalid(format!("certificate and key: {e}")))?;
    config.alpn_protocols = vec![b"h2".to_vec()];
    Ok(config)
}
