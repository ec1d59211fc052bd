//! Who a certificate names: one URI SAN `spiffe://TRUST_DOMAIN/vigil/KIND/NAME`.
use std::fmt;

/// What a certificate is for.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Kind {
    /// Streams batches as agent NAME (client authentication).
    Agent,
    /// Serves agents and tools as collector NAME (server authentication).
    Collector,
    /// Reads (CLI, dashboards): the Fleet API and remote Agent APIs.
    Operator,
}

impl Kind {
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Agent => "agent",
            Kind::Collector => "collector",
            Kind::Operator => "operator",
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Identity {
    pub trust_domain: String,
    pub kind: Kind,
    pub name: String,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum IdentityError {
    #[error("not an X.509 certificate: {0}")]
    NotX509(String),
    #[error("no spiffe://TRUST_DOMAIN/vigil/KIND/NAME URI in the subject alternative names")]
    Missing,
    #[error("{0} spiffe:// URIs in the subject alternative names; exactly one is allowed")]
    Several(usize),
    #[error("URI {uri:?}: {reason}")]
    Malformed { uri: String, reason: String },
    #[error("{what} {name:?}: use 1 to 128 letters, digits, '.', '-' or '_'")]
    Name { what: &'static str, name: String },
}

/// An agent id, collector name or trust domain: letters, digits, `.`, `-`, `_`, 1 to
/// 128 bytes (fits a URI path segment and a DNS label set).
pub fn check_name(what: &'static str, name: &str) -> Result<(), IdentityError> {
    let ok = !name.is_empty()
        && name.len() <= 128
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b'_'));
    if ok {
        Ok(())
    } else {
        Err(IdentityError::Name {
            what,
            name: name.chars().take(160).collect(),
        })
    }
}

impl Identity {
    pub fn new(trust_domain: &str, kind: Kind, name: &str) -> Result<Self, IdentityError> {
        check_name("trust domain", trust_domain)?;
        check_name("name", name)?;
        Ok(Self {
            trust_domain: trust_domain.into(),
            kind,
            name: name.into(),
        })
    }

    /// The URI SAN that carries it.
    pub fn uri(&self) -> String {
        format!(
            "spiffe://{}/vigil/{}/{}",
            self.trust_domain,
            self.kind.as_str(),
            self.name
        )
    }

    /// Reads a `spiffe://TRUST_DOMAIN/vigil/KIND/NAME` URI.
    pub fn parse_uri(uri: &str) -> Result<Self, IdentityError> {
        let bad = |reason: &str| IdentityError::Malformed {
            uri: uri.chars().take(200).collect(),
            reason: reason.into(),
        };
        let rest = uri
            .strip_prefix("spiffe://")
            .ok_or_else(|| bad("not a spiffe:// URI"))?;
        let mut parts = rest.split('/');
        let td = parts.next().unwrap_or_default();
        let (vigil, kind, name) = (parts.next(), parts.next(), parts.next());
        if parts.next().is_some() {
            return Err(bad("more path segments than /vigil/KIND/NAME"));
        }
        if vigil != Some("vigil") {
            return Err(bad("the path must be /vigil/KIND/NAME"));
        }
        let kind = match kind {
            Some("agent") => Kind::Agent,
            Some("collector") => Kind::Collector,
            Some("operator") => Kind::Operator,
            _ => return Err(bad("KIND must be agent, collector or operator")),
        };
        Self::new(td, kind, name.unwrap_or_default())
    }

    /// The identity a DER certificate names.
    pub fn of_certificate(der: &[u8]) -> Result<Self, IdentityError> {
        use x509_parser::prelude::{FromDer as _, GeneralName, X509Certificate};
        let (rest, cert) =
            X509Certificate::from_der(der).map_err(|e| IdentityError::NotX509(e.to_string()))?;
        if !rest.is_empty() {
            return Err(IdentityError::NotX509(format!(
                "{} bytes after the certificate",
                rest.len()
            )));
        }
        let san = cert
            .subject_alternative_name()
            .map_err(|e| IdentityError::NotX509(e.to_string()))?;
        let uris: Vec<&str> = san
            .iter()
            .flat_map(|s| s.value.general_names.iter())
            .filter_map(|n| match n {
                GeneralName::URI(u) if u.starts_with("spiffe://") => Some(*u),
                _ => None,
            })
            .collect();
        match uris.as_slice() {
            [] => Err(IdentityError::Missing),
            [one] => Self::parse_uri(one),
            many => Err(IdentityError::Several(many.len())),
        }
    }
}

impl fmt::Display for Identity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.uri())
    }
}

/// A certificate's SHA-256 fingerprint, as `sha256:` and 64 hex digits.
pub fn fingerprint(der: &[u8]) -> String {
    use sha2::Digest as _;
    let digest = sha2::Sha256::digest(der);
    let mut s = String::with_capacity(71);
    s.push_str("sha256:");
    for b in digest {
        s.push_str(&format!("{b:02x}"));
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uris_round_trip_and_bad_ones_say_why() {
        let id = Identity::new("vigil.local", Kind::Agent, "web-1").unwrap();
        assert_eq!(id.uri(), "spiffe://vigil.local/vigil/agent/web-1");
        assert_eq!(Identity::parse_uri(&id.uri()).unwrap(), id);
        for (uri, says) in [
            ("https://vigil.local/vigil/agent/a", "not a spiffe"),
            ("spiffe://vigil.local/other/agent/a", "/vigil/KIND/NAME"),
            ("spiffe://vigil.local/vigil/root/a", "KIND"),
            ("spiffe://vigil.local/vigil/agent/a/b", "more path"),
            ("spiffe://vigil.local/vigil/agent/", "name"),
            ("spiffe://vigil.local/vigil/agent/a%2Fb", "name"),
            ("spiffe:///vigil/agent/a", "trust domain"),
        ] {
            let e = Identity::parse_uri(uri).unwrap_err().to_string();
            assert!(e.contains(says), "{uri}: {e}");
        }
    }

    fn cert_with(uris: &[&str]) -> Vec<u8> {
        let mut p = rcgen::CertificateParams::new(vec!["host.example".to_string()]).unwrap();
        for u in uris {
            p.subject_alt_names
                .push(rcgen::SanType::URI((*u).try_into().unwrap()));
        }
        let key = rcgen::KeyPair::generate().unwrap();
        p.self_signed(&key).unwrap().der().to_vec()
    }

    #[test]
    fn a_certificate_names_exactly_one_identity() {
        let der = cert_with(&["spiffe://td/vigil/agent/a1", "https://example.com/x"]);
        let id = Identity::of_certificate(&der).unwrap();
        assert_eq!((id.kind, id.name.as_str()), (Kind::Agent, "a1"));
        assert_eq!(
            Identity::of_certificate(&cert_with(&[])),
            Err(IdentityError::Missing)
        );
        assert_eq!(
            Identity::of_certificate(&cert_with(&[
                "spiffe://td/vigil/agent/a1",
                "spiffe://td/vigil/agent/a2"
            ])),
            Err(IdentityError::Several(2))
        );
        assert!(matches!(
            Identity::of_certificate(b"not der"),
            Err(IdentityError::NotX509(_))
        ));
        let mut trailing = der.clone();
        trailing.push(0);
        assert!(matches!(
            Identity::of_certificate(&trailing),
            Err(IdentityError::NotX509(_))
        ));
    }
}
