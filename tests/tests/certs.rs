//! `vigil certs`: the CA and host certificates, checked by openssl (an independent
//! X.509 implementation): the chain verifies, each certificate is for its side only
//! (client or server authentication), the identity is where the rule says, keys are
//! readable by their owner only, and nothing existing is ever replaced.
use std::os::unix::fs::PermissionsExt as _;
use std::path::Path;
use std::process::Command;

use vigil_tests::vigil_bin;

fn vigil(args: &[&str]) -> std::process::Output {
    Command::new(vigil_bin())
        .args(args)
        .output()
        .expect("vigil")
}

fn openssl(args: &[&str]) -> (bool, String) {
    let out = Command::new("openssl")
        .args(args)
        .output()
        .expect("openssl (setup installs it)");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

fn mode(p: &Path) -> u32 {
    std::fs::metadata(p).expect("file").permissions().mode() & 0o777
}

#[test]
fn a_ca_signs_agent_and_collector_certificates_that_openssl_accepts_for_their_side_only() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().to_str().unwrap();
    let path = |name: &str| dir.path().join(name).to_str().unwrap().to_string();
    assert!(vigil(&["certs", "init", "--dir", d]).status.success());
    assert!(
        vigil(&["certs", "issue", "--dir", d, "--agent-id", "web-01"])
            .status
            .success()
    );
    assert!(
        vigil(&["certs", "issue", "--dir", d, "--collector", "127.0.0.1"])
            .status
            .success()
    );
    assert!(vigil(&[
        "certs",
        "issue",
        "--dir",
        d,
        "--collector",
        "collector.example"
    ])
    .status
    .success());
    let ca = path("ca.pem");
    // The agent's: a client certificate whose URI SAN names its agent id.
    let agent = path("agent-web-01.pem");
    let (ok, out) = openssl(&["verify", "-purpose", "sslclient", "-CAfile", &ca, &agent]);
    assert!(ok, "{out}");
    let (ok, out) = openssl(&["verify", "-purpose", "sslserver", "-CAfile", &ca, &agent]);
    assert!(!ok, "an agent's certificate must not serve: {out}");
    let (_, out) = openssl(&["x509", "-in", &agent, "-noout", "-ext", "subjectAltName"]);
    assert!(
        out.contains("URI:spiffe://vigil.local/vigil/agent/web-01"),
        "{out}"
    );
    // The collectors': server certificates for the name agents dial.
    let by_ip = path("collector-127.0.0.1.pem");
    let (ok, out) = openssl(&[
        "verify",
        "-purpose",
        "sslserver",
        "-verify_ip",
        "127.0.0.1",
        "-CAfile",
        &ca,
        &by_ip,
    ]);
    assert!(ok, "{out}");
    let by_name = path("collector-collector.example.pem");
    let (ok, out) = openssl(&[
        "verify",
        "-purpose",
        "sslserver",
        "-verify_hostname",
        "collector.example",
        "-CAfile",
        &ca,
        &by_name,
    ]);
    assert!(ok, "{out}");
    let (ok, out) = openssl(&[
        "verify",
        "-purpose",
        "sslserver",
        "-verify_hostname",
        "other.example",
        "-CAfile",
        &ca,
        &by_name,
    ]);
    assert!(!ok, "valid for its own name only: {out}");
    let (ok, out) = openssl(&["verify", "-purpose", "sslclient", "-CAfile", &ca, &by_ip]);
    assert!(
        !ok,
        "a collector's certificate must not act as an agent: {out}"
    );
    // Another CA's certificates do not verify against this one.
    let other = tempfile::tempdir().unwrap();
    let o = other.path().to_str().unwrap();
    assert!(vigil(&["certs", "init", "--dir", o]).status.success());
    let (ok, out) = openssl(&[
        "verify",
        "-CAfile",
        other.path().join("ca.pem").to_str().unwrap(),
        &agent,
    ]);
    assert!(!ok, "{out}");
    // Keys for their owner only; certificates readable.
    for key in ["ca.key", "agent-web-01.key", "collector-127.0.0.1.key"] {
        assert_eq!(mode(&dir.path().join(key)), 0o600, "{key}");
    }
    assert_eq!(mode(&dir.path().join("ca.pem")), 0o644);
    // Each key matches its certificate.
    let (_, cert_pub) = openssl(&["x509", "-in", &agent, "-noout", "-pubkey"]);
    let (_, key_pub) = openssl(&["pkey", "-in", &path("agent-web-01.key"), "-pubout"]);
    assert_eq!(cert_pub, key_pub);
}

#[test]
fn nothing_existing_is_replaced_and_bad_names_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().to_str().unwrap();
    assert!(vigil(&["certs", "init", "--dir", d]).status.success());
    let ca = std::fs::read(dir.path().join("ca.pem")).unwrap();
    let again = vigil(&["certs", "init", "--dir", d]);
    assert!(!again.status.success());
    assert!(String::from_utf8_lossy(&again.stderr).contains("never replaced"));
    assert_eq!(
        std::fs::read(dir.path().join("ca.pem")).unwrap(),
        ca,
        "the CA is untouched"
    );
    assert!(vigil(&["certs", "issue", "--dir", d, "--agent-id", "a"])
        .status
        .success());
    assert!(!vigil(&["certs", "issue", "--dir", d, "--agent-id", "a"])
        .status
        .success());
    for bad in ["bad/id", "", "x y", "../etc"] {
        let out = vigil(&["certs", "issue", "--dir", d, "--agent-id", bad]);
        assert!(!out.status.success(), "{bad:?}");
        assert!(
            String::from_utf8_lossy(&out.stderr).contains("agent id"),
            "{bad:?}"
        );
    }
    // Without a CA there, the error says how to make one.
    let empty = tempfile::tempdir().unwrap();
    let out = vigil(&[
        "certs",
        "issue",
        "--dir",
        empty.path().to_str().unwrap(),
        "--agent-id",
        "a",
    ]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("vigil certs init"));
}
