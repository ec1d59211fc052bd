//! Certificate identity extraction: what the collector reads from a client
//! certificate before it decides whose batches a stream may carry (DER parsing, the
//! subject alternative names, the spiffe:// URI rule), and the PEM reading of the
//! TLS material files.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = vigil_tls::Identity::of_certificate(data);
    let _ = vigil_tls::server::PeerCertificate::of(data).label();
    if let Ok(text) = std::str::from_utf8(data) {
        let _ = vigil_tls::Identity::parse_uri(text);
    }
    let contents = [
        ("ca.pem".into(), Ok(data.to_vec())),
        ("cert.pem".into(), Ok(data.to_vec())),
        ("key.pem".into(), Ok(data.to_vec())),
    ];
    if let Ok(m) = vigil_tls::Material::parse(&contents) {
        let _ = vigil_tls::material::server_config(&m, vigil_tls::material::ClientAuth::Required);
        let _ = vigil_tls::material::client_config(&m);
    }
});
