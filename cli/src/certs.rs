//! `vigil certs`: a development CA and the host certificates mutual TLS between agents
//! and collectors uses (rcgen; ECDSA P-256 keys).
//!
//! The identity rule: an agent's certificate carries the URI SAN
//! `spiffe://TRUST_DOMAIN/vigil/agent/AGENT_ID` (and the id as its common name); a
//! collector's carries its name as a DNS SAN (or an IP SAN when the name is an address)
//! and `spiffe://TRUST_DOMAIN/vigil/collector/NAME`; an operator's (the CLI reading a
//! collector's Fleet API or an agent's remote API) `spiffe://TRUST_DOMAIN/vigil/operator/NAME`.
//! Agent and operator certificates are for client authentication only, collector
//! certificates for server authentication only.
use std::io::Write as _;
use std::os::unix::fs::OpenOptionsExt as _;
use std::path::{Path, PathBuf};

use anyhow::Context as _;
use vigil_tls::{Identity, Kind};

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose, SanType,
};

/// The trust domain when none is given.
pub const DEFAULT_TRUST_DOMAIN: &str = "vigil.local";
const CA_CERT: &str = "ca.pem";
const CA_KEY: &str = "ca.key";

/// What a leaf certificate is for.
pub enum Leaf<'a> {
    Agent(&'a str),
    Collector(&'a str),
    Operator(&'a str),
    /// The server certificate of an agent's remote API (`api_listen`).
    AgentApi(&'a str),
}

/// The URI SAN that names agent `id` (what the collector will compare a batch's
/// agent id with).
pub fn agent_uri(trust_domain: &str, id: &str) -> String {
    format!("spiffe://{trust_domain}/vigil/agent/{id}")
}

/// An agent id, collector name or trust domain that fits a URI path segment and a DNS
/// name: letters, digits, `.`, `-`, `_`, 1 to 128 bytes.
fn check_name(what: &'static str, name: &str) -> anyhow::Result<()> {
    Ok(vigil_tls::identity::check_name(what, name)?)
}

/// A server's name as clients dial it: an IP SAN for an address, else a DNS SAN.
fn server_san(name: &str) -> anyhow::Result<SanType> {
    Ok(match name.parse::<std::net::IpAddr>() {
        Ok(ip) => SanType::IpAddress(ip),
        Err(_) => {
            check_name("server name", name)?;
            SanType::DnsName(name.try_into().context("server name")?)
        }
    })
}

/// The identity URI of `kind` NAME (checked).
fn identity_uri(trust_domain: &str, kind: Kind, name: &str) -> anyhow::Result<String> {
    Ok(Identity::new(trust_domain, kind, name)?.uri())
}

fn validity(params: &mut CertificateParams, days: u32) {
    let now = time::OffsetDateTime::now_utc();
    // An hour back: a host whose clock is a little behind still accepts it.
    params.not_before = now - time::Duration::hours(1);
    params.not_after = now + time::Duration::days(i64::from(days));
}

/// Writes `contents` to a new file `path` with `mode`; an existing file is an error
/// (never overwritten: a CA key replaced by accident locks every host out).
fn write_new(path: &Path, contents: &str, mode: u32) -> anyhow::Result<()> {
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(path)
        .with_context(|| {
            format!(
                "creating {} (an existing file is never replaced)",
                path.display()
            )
        })?;
    f.write_all(contents.as_bytes())
        .with_context(|| format!("writing {}", path.display()))
}

/// `vigil certs init`: a CA certificate and key in `dir`.
pub fn init(dir: &Path, trust_domain: &str, days: u32) -> anyhow::Result<()> {
    check_name("trust domain", trust_domain)?;
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let key = KeyPair::generate().context("generating the CA key")?;
    let mut params = CertificateParams::default();
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    params.distinguished_name.push(
        DnType::CommonName,
        format!("Vigil development CA ({trust_domain})"),
    );
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    validity(&mut params, days);
    let cert = params
        .self_signed(&key)
        .context("signing the CA certificate")?;
    write_new(&dir.join(CA_KEY), &key.serialize_pem(), 0o600)?;
    write_new(&dir.join(CA_CERT), &cert.pem(), 0o644)?;
    println!(
        "CA for {trust_domain}: {} (key {}, keep it off the hosts)",
        dir.join(CA_CERT).display(),
        dir.join(CA_KEY).display()
    );
    Ok(())
}

/// `vigil certs issue`: a leaf certificate and key in `dir`, signed by the CA there.
/// Returns the certificate's path.
pub fn issue(dir: &Path, leaf: Leaf<'_>, trust_domain: &str, days: u32) -> anyhow::Result<PathBuf> {
    check_name("trust domain", trust_domain)?;
    let read = |name: &str| {
        let p = dir.join(name);
        std::fs::read_to_string(&p).with_context(|| {
            format!(
                "reading {} (run `vigil certs init --dir {}` first)",
                p.display(),
                dir.display()
            )
        })
    };
    let ca_key = KeyPair::from_pem(&read(CA_KEY)?).context("the CA key is not a PEM key")?;
    let ca = Issuer::from_ca_cert_pem(&read(CA_CERT)?, ca_key)
        .context("the CA certificate is not a PEM certificate")?;
    let mut params = CertificateParams::default();
    let (stem, uri) = match leaf {
        Leaf::Agent(id) => {
            check_name("agent id", id)?;
            params.distinguished_name.push(DnType::CommonName, id);
            params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
            (format!("agent-{id}"), Some(agent_uri(trust_domain, id)))
        }
        Leaf::Operator(name) => {
            check_name("operator name", name)?;
            params.distinguished_name.push(DnType::CommonName, name);
            params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
            (
                format!("operator-{name}"),
                Some(identity_uri(trust_domain, Kind::Operator, name)?),
            )
        }
        Leaf::AgentApi(name) => {
            params.distinguished_name.push(DnType::CommonName, name);
            params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
            params.subject_alt_names.push(server_san(name)?);
            // No Vigil identity: it only ever serves (its key usage says so).
            (format!("agent-api-{name}"), None)
        }
        Leaf::Collector(name) => {
            params.distinguished_name.push(DnType::CommonName, name);
            params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
            params.subject_alt_names.push(server_san(name)?);
            let uri = match name.parse::<std::net::IpAddr>() {
                // An address is not a path segment of the same shape: name the collector
                // by it with ':' spelled '-'.
                Ok(_) => identity_uri(trust_domain, Kind::Collector, &name.replace(':', "-"))?,
                Err(_) => identity_uri(trust_domain, Kind::Collector, name)?,
            };
            (format!("collector-{name}"), Some(uri))
        }
    };
    if let Some(uri) = &uri {
        params.subject_alt_names.push(SanType::URI(
            uri.as_str().try_into().context("the identity URI")?,
        ));
    }
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    validity(&mut params, days);
    let key = KeyPair::generate().context("generating the key")?;
    let cert = params
        .signed_by(&key, &ca)
        .context("signing the certificate")?;
    let cert_path = dir.join(format!("{stem}.pem"));
    write_new(
        &dir.join(format!("{stem}.key")),
        &key.serialize_pem(),
        0o600,
    )?;
    write_new(&cert_path, &cert.pem(), 0o644)?;
    match &uri {
        Some(uri) => println!("{}: {uri}", cert_path.display()),
        None => println!("{}: server certificate", cert_path.display()),
    }
    Ok(cert_path)
}
