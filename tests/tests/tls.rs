//! Mutual TLS between real agents, a real collector and the CLI (issue #12), with
//! certificates made by `vigil certs` and openssl as the independent client:
//! identity bound to every batch, handshakes refused for what is not ours, material
//! reloaded on both sides while streams stay open, and plaintext only when asked.
use std::{
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::Duration,
};

use vigil_proto::v1::{collector_client::CollectorClient, Batch, HostIdentity, HostMetrics};
use vigil_tests::{
    collector_command,
    daemons::{wait_until, Collector, RealAgent},
    vigil_bin,
};

/// A CA made by `vigil certs init` in its own directory, and the leaves it signs.
struct Pki {
    dir: PathBuf,
}

impl Pki {
    fn new(dir: &Path) -> Self {
        let pki = Self {
            dir: dir.to_path_buf(),
        };
        pki.certs(&["init"]);
        pki
    }

    fn certs(&self, args: &[&str]) {
        let out = Command::new(vigil_bin())
            .arg("certs")
            .args(args)
            .arg("--dir")
            .arg(&self.dir)
            .output()
            .expect("vigil certs");
        assert!(
            out.status.success(),
            "vigil certs {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    fn ca(&self) -> PathBuf {
        self.dir.join("ca.pem")
    }

    /// `kind` is agent-id, collector or operator; returns the file stem.
    fn issue(&self, kind: &str, name: &str) -> PathBuf {
        self.certs(&["issue", &format!("--{kind}"), name]);
        let stem = match kind {
            "agent-id" => format!("agent-{name}"),
            other => format!("{other}-{name}"),
        };
        self.dir.join(stem)
    }
}

/// STEM.pem (not with_extension: "collector-127.0.0.1" has dots of its own).
fn pem(stem: &Path) -> PathBuf {
    PathBuf::from(format!("{}.pem", stem.display()))
}

fn key(stem: &Path) -> PathBuf {
    PathBuf::from(format!("{}.key", stem.display()))
}

/// The TLS flags for a side whose certificate is `stem`.pem / .key.
fn tls_flags(ca: &Path, stem: &Path) -> Vec<String> {
    vec![
        "--tls".into(),
        "mtls".into(),
        "--tls-ca".into(),
        ca.display().to_string(),
        "--tls-cert".into(),
        pem(stem).display().to_string(),
        "--tls-key".into(),
        key(stem).display().to_string(),
    ]
}

fn start_collector(ca: &Path, stem: &Path, extra: &[&str]) -> Collector {
    let mut args: Vec<String> = tls_flags(ca, stem);
    args.extend(extra.iter().map(|s| s.to_string()));
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    // VIGIL_LOG=info: the reload and refusal lines are what some tests look for.
    Collector::start_with(&args, |cmd| {
        cmd.env("VIGIL_LOG", "info");
    })
}

fn agent_config(dir: &Path) {
    std::fs::write(
        dir.join("agent.toml"),
        "[probes]\nsyscalls = false\nretransmits = false\n[detect]\nenabled = false\n",
    )
    .expect("config");
}

fn start_agent(collector: &Collector, id: &str, ca: &Path, stem: &Path) -> RealAgent {
    let dir = tempfile::tempdir().expect("tempdir");
    agent_config(dir.path());
    RealAgent::start_in_with(collector, id, dir, &tls_flags(ca, stem))
}

/// The SHA-256 fingerprint of a PEM certificate file, as openssl computes it, in the
/// collector's notation (`sha256:` and lowercase hex).
fn fingerprint_of(cert_pem: &[u8]) -> String {
    let mut child = Command::new("openssl")
        .args(["x509", "-noout", "-fingerprint", "-sha256"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("openssl x509");
    use std::io::Write as _;
    child
        .stdin
        .take()
        .unwrap()
        .write_all(cert_pem)
        .expect("to openssl");
    let out = child.wait_with_output().expect("openssl x509");
    let text = String::from_utf8_lossy(&out.stdout);
    let hex = text
        .trim()
        .rsplit('=')
        .next()
        .unwrap_or_default()
        .replace(':', "")
        .to_lowercase();
    assert_eq!(hex.len(), 64, "openssl fingerprint: {text}");
    format!("sha256:{hex}")
}

/// openssl s_client against `addr`: the server certificate it was shown (PEM), and
/// everything it printed. `client` is a certificate stem to present, if any.
fn s_client(addr: &str, ca: &Path, client: Option<&Path>, extra: &[&str]) -> (Vec<u8>, String) {
    let mut cmd = Command::new("openssl");
    cmd.args([
        "s_client",
        "-connect",
        addr,
        "-servername",
        "127.0.0.1",
        "-CAfile",
    ])
    .arg(ca)
    .args(extra)
    .stdin(Stdio::null());
    if let Some(stem) = client {
        cmd.arg("-cert").arg(pem(stem)).arg("-key").arg(key(stem));
    }
    let out = cmd.output().expect("openssl s_client");
    let stdout = String::from_utf8_lossy(&out.stdout).to_string();
    let all = format!("{stdout}{}", String::from_utf8_lossy(&out.stderr));
    let cert = stdout
        .find("-----BEGIN CERTIFICATE-----")
        .and_then(|a| {
            stdout[a..]
                .find("-----END CERTIFICATE-----")
                .map(|b| stdout.as_bytes()[a..a + b + 25].to_vec())
        })
        .unwrap_or_default();
    (cert, all)
}

fn refused(collector: &Collector, reason: &str) -> u64 {
    collector.refused(reason)
}

/// A field of the agent's `vigil stats --json` (0 before its first sample).
fn agent_stat(agent: &RealAgent, field: &str) -> u64 {
    let out = Command::new(vigil_bin())
        .args(["stats", "--json", "--socket"])
        .arg(agent.socket())
        .output()
        .expect("vigil stats");
    serde_json::from_slice::<serde_json::Value>(&out.stdout)
        .ok()
        .and_then(|v| v["agent"][field].as_u64())
        .unwrap_or(0)
}

/// Replaces `to` with `from` in one rename (what a careful deploy tool does).
fn install(from: &Path, to: &Path) {
    let tmp = to.with_extension("tmp-install");
    std::fs::copy(from, &tmp).expect("copy");
    std::fs::rename(&tmp, to).expect("rename");
}

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime")
}

/// A tonic client to `addr` over mTLS with the certificate `stem`.
async fn tls_client(
    addr: &str,
    ca: &Path,
    stem: &Path,
) -> CollectorClient<tonic::transport::Channel> {
    let files = vigil_tls::TlsFiles {
        ca: ca.to_path_buf(),
        cert: pem(stem),
        key: key(stem),
    };
    let material = vigil_tls::Reloading::new(files, "test", vigil_tls::material::client_config);
    let connector = vigil_tls::client::Connector::tls(addr, None, material).expect("connector");
    let channel = tonic::transport::Endpoint::from_shared(connector.uri())
        .unwrap()
        .connect_with_connector(connector)
        .await
        .expect("TLS connect");
    CollectorClient::new(channel).max_encoding_message_size(64 << 20)
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64
}

fn batch(agent_id: &str, sequence: u64, hostname: String) -> Batch {
    let mut b = Batch {
        agent_id: agent_id.into(),
        sequence,
        start_unix_ms: now_ms() - 1000,
        end_unix_ms: now_ms(),
        host: Some(HostIdentity {
            agent_id: agent_id.into(),
            hostname,
            ..Default::default()
        }),
        metrics: vec![HostMetrics {
            time_unix_ms: now_ms(),
            ..Default::default()
        }],
        ..Default::default()
    };
    b.set_spool_epoch(vigil_proto::Epoch::from_halves(now_ms() as u64, sequence));
    b
}

/// Sends one batch on a stream; the status that ended it (OK after an ack).
async fn send_one(
    client: &mut CollectorClient<tonic::transport::Channel>,
    b: Batch,
) -> tonic::Status {
    use tokio_stream::StreamExt as _;
    let mut stream = match client.stream(tokio_stream::iter(vec![b])).await {
        Ok(r) => r.into_inner(),
        Err(s) => return s,
    };
    match stream.next().await {
        Some(Ok(_)) => tonic::Status::ok("acked"),
        Some(Err(s)) => s,
        None => tonic::Status::ok("ended"),
    }
}

#[test]
fn identity_is_bound_to_every_batch_and_strangers_are_refused_at_the_handshake() {
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::new(&dir.path().join("pki"));
    let other = Pki::new(&dir.path().join("other-ca"));
    let server = pki.issue("collector", "127.0.0.1");
    let web1 = pki.issue("agent-id", "web-1");
    let web2 = pki.issue("agent-id", "web-2");
    let op = pki.issue("operator", "alice");
    let stranger = other.issue("agent-id", "web-1");
    let mut collector = start_collector(&pki.ca(), &server, &[]);
    collector.cli_args = tls_flags(&pki.ca(), &op);

    let honest = start_agent(&collector, "web-1", &pki.ca(), &web1);
    honest.keeps_being_acked(&collector, 2);
    let hosts = collector.hosts();
    assert_eq!(hosts["collector"]["tls_mode"], "mtls", "{hosts}");
    let web = collector.host("web-1").expect("web-1 stored");
    assert_eq!(web["transport"], "mtls", "{web}");

    // web-2's certificate claiming to be db-9: refused before anything is stored,
    // counted under web-2's certificate.
    let impostor = start_agent(&collector, "db-9", &pki.ca(), &web2);
    let label = format!(
        "spiffe://vigil.local/vigil/agent/web-2 {}",
        fingerprint_of(&std::fs::read(pem(&web2)).unwrap())
    );
    wait_until("the impostor refused", Duration::from_secs(30), || {
        collector.hosts()["collector"]["denied_by_certificate"][&label]
            .as_u64()
            .unwrap_or(0)
            >= 1
    });
    wait_until("the impostor counts it", Duration::from_secs(30), || {
        agent_stat(&impostor, "streams_permission_denied") >= 1
    });
    assert_eq!(agent_stat(&impostor, "batches_acked"), 0);
    assert!(
        impostor.log_text().contains("PERMISSION_DENIED"),
        "{}",
        impostor.log_text()
    );
    // Nothing of the impostor's was stored.
    assert!(collector.host("db-9").is_none(), "{}", collector.hosts());
    assert!(
        impostor
            .log_text()
            .contains("names spiffe://vigil.local/vigil/agent/web-2, not agent \"db-9\""),
        "{}",
        impostor.log_text()
    );

    // A certificate from another CA, none at all, TLS 1.2, plaintext: refused at the
    // handshake and counted.
    let before = refused(&collector, "tls_handshake_failed");
    let outsider = start_agent(&collector, "web-1", &other.ca(), &stranger);
    wait_until("the outsider refused", Duration::from_secs(30), || {
        refused(&collector, "tls_handshake_failed") > before
    });
    assert_eq!(agent_stat(&outsider, "batches_acked"), 0);
    let before = refused(&collector, "tls_handshake_failed");
    let (_, said) = s_client(&collector.addr, &pki.ca(), None, &[]);
    wait_until("no certificate refused", Duration::from_secs(10), || {
        refused(&collector, "tls_handshake_failed") > before
    });
    let before = refused(&collector, "tls_handshake_failed");
    let (_, said12) = s_client(&collector.addr, &pki.ca(), Some(&web1), &["-tls1_2"]);
    assert!(
        said12.contains("protocol version"),
        "TLS 1.2: {said12}\n(no cert: {said})"
    );
    wait_until("TLS 1.2 refused", Duration::from_secs(10), || {
        refused(&collector, "tls_handshake_failed") > before
    });
    let plain = Command::new(vigil_bin())
        .args(["hosts", "--collector", &collector.addr, "--tls", "off"])
        .output()
        .unwrap();
    assert!(!plain.status.success());

    // The Fleet API takes operator certificates; an agent's cannot read the fleet.
    let as_agent = Command::new(vigil_bin())
        .args(["hosts", "--collector", &collector.addr])
        .args(tls_flags(&pki.ca(), &web1))
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&as_agent.stderr);
    assert!(
        !as_agent.status.success() && err.contains("operator certificate"),
        "{err}"
    );
    // A tool that knows nothing of Vigil's .proto finds the Fleet API by reflection
    // and reads it with an operator certificate; an agent's gets PERMISSION_DENIED.
    let a = python_call(
        &collector.addr,
        &pki.ca(),
        "vigil.v1.Fleet/ListHosts",
        Some(&op),
        None,
    );
    assert_eq!(a["health"], "SERVING", "{a}");
    assert!(
        a["answer"]["hosts"]
            .as_array()
            .is_some_and(|h| h.iter().any(|h| h["host"]["agentId"] == "web-1")),
        "{a}"
    );
    let a = python_call(
        &collector.addr,
        &pki.ca(),
        "vigil.v1.Fleet/ListHosts",
        Some(&web1),
        None,
    );
    assert_eq!(a["error"]["code"], "PERMISSION_DENIED", "{a}");
    // The honest agent was served throughout.
    honest.keeps_being_acked(&collector, 2);
    assert_eq!(agent_stat(&honest, "streams_permission_denied"), 0);
}

#[test]
fn hostile_clients_over_tls_cannot_stall_a_well_behaved_agent() {
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::new(&dir.path().join("pki"));
    let server = pki.issue("collector", "127.0.0.1");
    let good = pki.issue("agent-id", "good");
    let rogue = pki.issue("agent-id", "rogue");
    let op = pki.issue("operator", "alice");
    let mut collector = start_collector(
        &pki.ca(),
        &server,
        &[
            "--handshake-timeout",
            "3s",
            "--max-connections-per-peer",
            "2000",
            "--max-message-size",
            "1MiB",
        ],
    );
    collector.cli_args = tls_flags(&pki.ca(), &op);
    let agent = start_agent(&collector, "good", &pki.ca(), &good);
    agent.keeps_being_acked(&collector, 1);

    // 1,000 connections that never start the handshake: each closed after the
    // handshake timeout, counted, and the agent served meanwhile.
    let port: u16 = collector.addr.rsplit(':').next().unwrap().parse().unwrap();
    let idle: Vec<_> = (0..1000)
        .map(|_| std::net::TcpStream::connect(("127.0.0.1", port)).expect("connect"))
        .collect();
    agent.keeps_being_acked(&collector, 2);
    wait_until("1,000 handshake timeouts", Duration::from_secs(60), || {
        refused(&collector, "tls_handshake_timeout") >= 1000
    });
    drop(idle);

    rt().block_on(async {
        // An oversized message from a valid certificate: RESOURCE_EXHAUSTED.
        let mut client = tls_client(&collector.addr, &pki.ca(), &rogue).await;
        let status = send_one(&mut client, batch("rogue", 1, "x".repeat(2 << 20))).await;
        assert_eq!(status.code(), tonic::Code::ResourceExhausted, "{status:?}");
        // A malformed protobuf (a varint that never ends) in a valid gRPC frame.
        let status = send_garbage(&collector.addr, &pki.ca(), &rogue).await;
        assert!(status != "0" && status != "none", "grpc-status {status}");
        // And a well-formed one as itself is stored: the rogue is only refused for
        // what it did.
        let mut client = tls_client(&collector.addr, &pki.ca(), &rogue).await;
        let status = send_one(&mut client, batch("rogue", 1, "rogue-host".into())).await;
        assert_eq!(status.message(), "acked", "{status:?}");
    });
    agent.keeps_being_acked(&collector, 2);
    assert!(collector.alive());
}

/// A gRPC frame of bytes that are no protobuf, on a raw HTTP/2 stream over mTLS.
async fn send_garbage(addr: &str, ca: &Path, stem: &Path) -> String {
    use tower_service::Service as _;
    let files = vigil_tls::TlsFiles {
        ca: ca.to_path_buf(),
        cert: pem(stem),
        key: key(stem),
    };
    let material = vigil_tls::Reloading::new(files, "test", vigil_tls::material::client_config);
    let mut connector = vigil_tls::client::Connector::tls(addr, None, material).unwrap();
    let io = connector
        .call(connector.uri().parse().unwrap())
        .await
        .expect("TLS connect")
        .into_inner();
    let (mut h2, conn) = h2::client::handshake(io).await.expect("h2 over TLS");
    tokio::spawn(async move {
        let _ = conn.await;
    });
    let req = http::Request::builder()
        .method("POST")
        .uri(format!("http://{addr}/vigil.v1.Collector/Stream"))
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .body(())
        .unwrap();
    let (resp, mut body) = h2.send_request(req, false).expect("request");
    let garbage = [0xffu8; 32];
    let mut frame = vec![0u8];
    frame.extend_from_slice(&(garbage.len() as u32).to_be_bytes());
    frame.extend_from_slice(&garbage);
    body.send_data(bytes::Bytes::from(frame), true)
        .expect("data");
    let resp = resp.await.expect("response");
    if let Some(code) = resp.headers().get("grpc-status") {
        return code.to_str().unwrap_or("?").to_string();
    }
    let mut body = resp.into_body();
    while let Some(chunk) = body.data().await {
        if chunk.is_err() {
            break;
        }
    }
    body.trailers()
        .await
        .ok()
        .flatten()
        .and_then(|t| {
            t.get("grpc-status")
                .map(|v| v.to_str().unwrap_or("?").to_string())
        })
        .unwrap_or_else(|| "none".into())
}

#[test]
fn certificates_reload_on_both_sides_while_open_streams_stay() {
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::new(&dir.path().join("pki"));
    let first = pki.issue("collector", "127.0.0.1");
    let agent_cert = pki.issue("agent-id", "rotating");
    let op = pki.issue("operator", "alice");
    // The files the daemons read, which the test replaces as a deploy tool would.
    let live = dir.path().join("live");
    std::fs::create_dir(&live).unwrap();
    let (c_ca, c_stem) = (live.join("collector-ca.pem"), live.join("collector"));
    let (a_ca, a_stem) = (live.join("agent-ca.pem"), live.join("agent"));
    install(&pki.ca(), &c_ca);
    install(&pem(&first), &pem(&c_stem));
    install(&key(&first), &key(&c_stem));
    install(&pki.ca(), &a_ca);
    install(&pem(&agent_cert), &pem(&a_stem));
    install(&key(&agent_cert), &key(&a_stem));
    let mut collector = start_collector(&c_ca, &c_stem, &[]);
    collector.cli_args = tls_flags(&pki.ca(), &op);
    let agent = start_agent(&collector, "rotating", &a_ca, &a_stem);
    agent.keeps_being_acked(&collector, 2);
    let (shown, said) = s_client(&collector.addr, &pki.ca(), Some(&op), &[]);
    assert_eq!(
        fingerprint_of(&shown),
        fingerprint_of(&std::fs::read(pem(&first)).unwrap()),
        "{said}"
    );
    let reconnects = agent_stat(&agent, "reconnects");

    // 1. A new server certificate: the next handshake shows it; the agent's open
    // stream is not dropped.
    let second_dir = dir.path().join("pki2");
    std::fs::create_dir(&second_dir).unwrap();
    for f in ["ca.pem", "ca.key"] {
        std::fs::copy(pki.dir.join(f), second_dir.join(f)).unwrap();
    }
    let second = Pki { dir: second_dir }.issue("collector", "127.0.0.1");
    install(&key(&second), &key(&c_stem));
    install(&pem(&second), &pem(&c_stem));
    let want = fingerprint_of(&std::fs::read(pem(&second)).unwrap());
    wait_until(
        "the new certificate served",
        Duration::from_secs(15),
        || fingerprint_of(&s_client(&collector.addr, &pki.ca(), Some(&op), &[]).0) == want,
    );
    let hosts = collector.hosts();
    assert!(
        hosts["collector"]["tls_reloads"].as_u64().unwrap() >= 1,
        "{hosts}"
    );
    agent.keeps_being_acked(&collector, 2);
    assert_eq!(
        agent_stat(&agent, "reconnects"),
        reconnects,
        "the open stream was dropped"
    );

    // 2. A half-written certificate: refused, logged, counted; the last good one stays.
    let failures = hosts["collector"]["tls_reload_failures"].as_u64().unwrap();
    let whole = std::fs::read(pem(&first)).unwrap();
    std::fs::write(pem(&c_stem), &whole[..whole.len() / 2]).unwrap();
    wait_until(
        "the half-written file refused",
        Duration::from_secs(15),
        || {
            collector.hosts()["collector"]["tls_reload_failures"]
                .as_u64()
                .unwrap()
                > failures
        },
    );
    assert!(collector.log_text().contains("TLS material refused"));
    assert_eq!(
        fingerprint_of(&s_client(&collector.addr, &pki.ca(), Some(&op), &[]).0),
        want,
        "the last good certificate is still served"
    );
    install(&pem(&second), &pem(&c_stem));

    // 3. A new CA at the collector: certificates signed only by the old one are
    // refused at the next handshake; new ones are taken.
    let new_pki = Pki::new(&dir.path().join("new-ca"));
    let new_server = new_pki.issue("collector", "127.0.0.1");
    let new_agent = new_pki.issue("agent-id", "rotating");
    let new_op = new_pki.issue("operator", "alice");
    install(&key(&new_server), &key(&c_stem));
    install(&pem(&new_server), &pem(&c_stem));
    install(&new_pki.ca(), &c_ca);
    let want = fingerprint_of(&std::fs::read(pem(&new_server)).unwrap());
    wait_until("the new CA in use", Duration::from_secs(15), || {
        fingerprint_of(&s_client(&collector.addr, &new_pki.ca(), Some(&new_op), &[]).0) == want
    });
    collector.cli_args = tls_flags(&new_pki.ca(), &new_op);
    let old_op = Command::new(vigil_bin())
        .args(["hosts", "--collector", &collector.addr])
        .args(tls_flags(&pki.ca(), &op))
        .output()
        .unwrap();
    assert!(!old_op.status.success(), "an old-CA operator was let in");
    let before = collector.hosts()["collector"]["refused"]["tls_handshake_failed"]
        .as_u64()
        .unwrap();
    let _ = s_client(&collector.addr, &new_pki.ca(), Some(&op), &[]);
    wait_until(
        "the old-CA certificate refused",
        Duration::from_secs(10),
        || {
            collector.hosts()["collector"]["refused"]["tls_handshake_failed"]
                .as_u64()
                .unwrap()
                > before
        },
    );

    // Streams opened under the old CA are closed too (the agent's among them), not
    // left open until they reconnect.
    wait_until("old-CA streams closed", Duration::from_secs(30), || {
        collector.refused("closed_after_ca_rotation") >= 1
    });

    // 4. The agent's side: its new material (new CA, new certificate) is picked up
    // without a restart, and it is served again with it.
    install(&new_pki.ca(), &a_ca);
    install(&key(&new_agent), &key(&a_stem));
    install(&pem(&new_agent), &pem(&a_stem));
    wait_until("the agent reloaded", Duration::from_secs(15), || {
        agent_stat(&agent, "tls_reloads") >= 1
    });
    let start = collector.batches_of("rotating");
    wait_until(
        "the agent served with its new certificate",
        Duration::from_secs(60),
        || collector.batches_of("rotating") >= start + 2,
    );
    agent.stop();
}

#[test]
fn tls_is_the_default_and_plaintext_must_be_asked_for() {
    let dir = tempfile::tempdir().unwrap();
    // Without material the collector does not start, and says where it looked.
    let out = collector_command()
        .env_remove("VIGIL_TLS")
        .args(["--listen", "127.0.0.1:0", "--data-dir"])
        .arg(dir.path().join("c"))
        .arg("--tls-ca")
        .arg(dir.path().join("missing/ca.pem"))
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{err}");
    assert!(
        err.contains("missing/ca.pem") && err.contains("vigil certs"),
        "{err}"
    );

    // Plaintext when asked: warned at start and in `vigil hosts`.
    let collector = Collector::start_with(&["--tls", "off"], |cmd| {
        cmd.env("VIGIL_LOG", "info");
    });
    wait_until("the plaintext warning", Duration::from_secs(10), || {
        collector.log_text().contains("TLS is off")
    });
    let text = Command::new(vigil_bin())
        .args(["hosts", "--collector", &collector.addr, "--tls", "off"])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&text.stdout);
    assert!(
        stdout.contains("WARNING: this collector runs without TLS"),
        "{stdout}"
    );
    drop(collector);

    // An agent whose material is not there yet spools, and sends once it appears.
    let pki = Pki::new(&dir.path().join("pki"));
    let server = pki.issue("collector", "127.0.0.1");
    let late = pki.issue("agent-id", "late");
    let op = pki.issue("operator", "alice");
    let mut collector = start_collector(&pki.ca(), &server, &[]);
    collector.cli_args = tls_flags(&pki.ca(), &op);
    let pending = dir.path().join("pending");
    std::fs::create_dir(&pending).unwrap();
    let stem = pending.join("agent");
    let adir = tempfile::tempdir().unwrap();
    agent_config(adir.path());
    // The default mode, not the harness's plaintext: no --tls flag, no VIGIL_TLS.
    let mut flags = tls_flags(&pki.ca(), &stem);
    flags.retain(|f| f != "--tls" && f != "mtls");
    let child = vigil_tests::agent_command()
        .env_remove("VIGIL_TLS")
        .args(["--interval", "1s", "--collector", &collector.addr])
        .args(["--agent-id", "late", "--config"])
        .arg(adir.path().join("agent.toml"))
        .arg("--data-dir")
        .arg(adir.path().join("data"))
        .arg("--socket")
        .arg(adir.path().join("agent.sock"))
        .args(&flags)
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(adir.path().join("agent.log")).unwrap())
        .spawn()
        .unwrap();
    let agent = RealAgent {
        child,
        id: "late".into(),
        dir: adir,
    };
    wait_until("batches spooled", Duration::from_secs(30), || {
        agent_stat(&agent, "last_seq") >= 2
    });
    assert!(
        agent.log_text().contains("no usable TLS material"),
        "{}",
        agent.log_text()
    );
    assert_eq!(agent.stats()["agent"]["tls_mode"], "mtls");
    install(&key(&late), &key(&stem));
    install(&pem(&late), &pem(&stem));
    wait_until("the spooled batches sent", Duration::from_secs(30), || {
        collector.batches_of("late") >= 2
    });
    agent.stop();
}

/// tests/peers/grpc_reflect.py: a Python gRPC client that knows nothing of Vigil's
/// .proto (server reflection, health checking, then the call).
fn python_call(
    addr: &str,
    ca: &Path,
    method: &str,
    cert: Option<&Path>,
    token: Option<&str>,
) -> serde_json::Value {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("peers/grpc_reflect.py");
    let mut cmd = Command::new("python3");
    cmd.arg(&script).arg(addr).arg(ca).arg(method);
    if let Some(stem) = cert {
        cmd.arg("--cert").arg(pem(stem)).arg("--key").arg(key(stem));
    }
    if let Some(t) = token {
        cmd.args(["--token", t]);
    }
    let out = cmd
        .output()
        .expect("python3 (cargo xtask setup installs grpcio)");
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "grpc_reflect.py: {e}: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    })
}

#[test]
fn the_remote_agent_api_needs_an_operator_certificate_or_the_token() {
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::new(&dir.path().join("pki"));
    let other = Pki::new(&dir.path().join("other-ca"));
    let server = pki.issue("agent-api", "127.0.0.1");
    let op = pki.issue("operator", "alice");
    let agent_cert = pki.issue("agent-id", "remote-1");
    let outsider = other.issue("operator", "alice");
    let token = "s3cret-token-for-the-remote-api";
    let token_file = dir.path().join("api.token");
    std::fs::write(&token_file, format!("{token}\n")).unwrap();
    use std::os::unix::fs::PermissionsExt as _;
    std::fs::set_permissions(&token_file, std::fs::Permissions::from_mode(0o600)).unwrap();
    let adir = dir.path().join("agent");
    std::fs::create_dir(&adir).unwrap();
    std::fs::write(
        adir.join("agent.toml"),
        format!(
            "interval = \"1s\"\nagent_id = \"remote-1\"\napi_listen = \"127.0.0.1:0\"\n\
             socket = \"{}\"\ndata_dir = \"{}\"\n\
             [probes]\nsyscalls = false\nretransmits = false\n[detect]\nenabled = false\n\
             [api_tls]\nca = \"{}\"\ncert = \"{}\"\nkey = \"{}\"\ntoken_file = \"{}\"\n",
            adir.join("agent.sock").display(),
            adir.join("data").display(),
            pki.ca().display(),
            pem(&server).display(),
            key(&server).display(),
            token_file.display()
        ),
    )
    .unwrap();
    let (_agent, ready) = vigil_tests::agent_on(&adir.join("agent.toml"));
    let addr = ready
        .get("VIGIL_API_LISTEN")
        .expect("VIGIL_API_LISTEN in READY")
        .clone();
    let stats = "vigil.v1.Agent/Stats";

    // An operator certificate: reflection lists the API, health says SERVING, and the
    // call answers with this agent's stats.
    let mut answer = serde_json::Value::Null;
    wait_until(
        "the first sample over the remote API",
        Duration::from_secs(30),
        || {
            answer = python_call(&addr, &pki.ca(), stats, Some(&op), None);
            answer.get("answer").is_some()
        },
    );
    let services: Vec<&str> = answer["services"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|s| s.as_str())
        .collect();
    for s in [
        "vigil.v1.Agent",
        "grpc.health.v1.Health",
        "grpc.reflection.v1alpha.ServerReflection",
    ] {
        assert!(services.contains(&s), "{answer}");
    }
    assert_eq!(answer["health"], "SERVING", "{answer}");
    assert_eq!(answer["answer"]["host"]["agentId"], "remote-1", "{answer}");

    // The bearer token instead of a certificate.
    let a = python_call(&addr, &pki.ca(), stats, None, Some(token));
    assert_eq!(a["answer"]["host"]["agentId"], "remote-1", "{a}");
    // A wrong token, no credentials, an agent's certificate: UNAUTHENTICATED.
    for (who, a) in [
        (
            "wrong token",
            python_call(&addr, &pki.ca(), stats, None, Some("not-the-token-at-all")),
        ),
        ("nothing", python_call(&addr, &pki.ca(), stats, None, None)),
        (
            "agent certificate",
            python_call(&addr, &pki.ca(), stats, Some(&agent_cert), None),
        ),
    ] {
        assert_eq!(a["error"]["code"], "UNAUTHENTICATED", "{who}: {a}");
    }
    // A token file others can read is not honoured (read at every call).
    std::fs::set_permissions(&token_file, std::fs::Permissions::from_mode(0o644)).unwrap();
    let a = python_call(&addr, &pki.ca(), stats, None, Some(token));
    assert_eq!(a["error"]["code"], "UNAUTHENTICATED", "{a}");
    std::fs::set_permissions(&token_file, std::fs::Permissions::from_mode(0o600)).unwrap();
    // Vigil's own CLI from "another machine": `--agent ADDR` with an operator
    // certificate, and with the token file; the stats are the agent's.
    for auth in [
        tls_flags(&pki.ca(), &op),
        vec![
            "--tls-ca".to_string(),
            pki.ca().display().to_string(),
            "--token-file".into(),
            token_file.display().to_string(),
        ],
    ] {
        let out = Command::new(vigil_bin())
            .args(["stats", "--json", "--agent", &addr])
            .args(&auth)
            .output()
            .unwrap();
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
        assert_eq!(
            (v["source"].as_str(), v["agent_id"].as_str()),
            (Some("agent"), Some("remote-1")),
            "{auth:?}: {v} {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    // A remote agent that refuses does not turn into this host's own stats.
    let out = Command::new(vigil_bin())
        .args(["stats", "--json", "--agent", &addr])
        .args(tls_flags(&pki.ca(), &agent_cert))
        .output()
        .unwrap();
    assert!(
        !out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    // An operator of another CA does not get past the handshake.
    let a = python_call(&addr, &other.ca(), stats, Some(&outsider), None);
    assert!(a.get("failed").is_some() || a.get("error").is_some(), "{a}");
    assert!(a.get("answer").is_none(), "{a}");
}

#[test]
fn the_fleet_api_takes_a_bearer_token_and_agents_still_need_their_certificate() {
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::new(&dir.path().join("pki"));
    let server = pki.issue("collector", "127.0.0.1");
    let agent_cert = pki.issue("agent-id", "tokened");
    let token_file = dir.path().join("fleet.token");
    let token = "fleet-token-of-at-least-sixteen";
    std::fs::write(&token_file, token).unwrap();
    use std::os::unix::fs::PermissionsExt as _;
    std::fs::set_permissions(&token_file, std::fs::Permissions::from_mode(0o600)).unwrap();
    let mut collector = start_collector(
        &pki.ca(),
        &server,
        &["--fleet-token-file", token_file.to_str().unwrap()],
    );
    let token_args = vec![
        "--tls".to_string(),
        "mtls".into(),
        "--tls-ca".into(),
        pki.ca().display().to_string(),
        "--token-file".into(),
        token_file.display().to_string(),
    ];
    collector.cli_args = token_args.clone();
    let agent = start_agent(&collector, "tokened", &pki.ca(), &agent_cert);
    // `vigil hosts` with the token and no certificate reads the fleet.
    agent.keeps_being_acked(&collector, 2);
    // A wrong token: UNAUTHENTICATED, counted.
    let wrong = dir.path().join("wrong.token");
    std::fs::write(&wrong, "not-the-fleet-token-at-all").unwrap();
    std::fs::set_permissions(&wrong, std::fs::Permissions::from_mode(0o600)).unwrap();
    let out = Command::new(vigil_bin())
        .args([
            "hosts",
            "--collector",
            &collector.addr,
            "--tls",
            "mtls",
            "--tls-ca",
        ])
        .arg(pki.ca())
        .arg("--token-file")
        .arg(&wrong)
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("bearer token"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let hosts = collector.hosts();
    assert!(
        hosts["collector"]["denied_by_certificate"]["(no certificate, no valid token)"]
            .as_u64()
            .unwrap_or(0)
            >= 1,
        "{hosts}"
    );
    // A stream without a certificate is refused even with the token: batches speak
    // for an agent only through its certificate.
    let py = python_call(
        &collector.addr,
        &pki.ca(),
        "vigil.v1.Fleet/ListHosts",
        None,
        Some(token),
    );
    assert!(
        py["answer"]["hosts"]
            .as_array()
            .is_some_and(|h| !h.is_empty()),
        "{py}"
    );
    rt().block_on(async {
        let config = vigil_tls::material::client_config_without_certificate(&pki.ca()).unwrap();
        let connector = vigil_tls::client::Connector::tls(
            &collector.addr,
            None,
            vigil_tls::Reloading::fixed(config, "test"),
        )
        .unwrap();
        let channel = tonic::transport::Endpoint::from_shared(connector.uri())
            .unwrap()
            .connect_with_connector(connector)
            .await
            .expect("TLS without a certificate");
        let mut client = CollectorClient::new(channel);
        let status = send_one(&mut client, batch("tokened", 1, "x".into())).await;
        assert_eq!(status.code(), tonic::Code::PermissionDenied, "{status:?}");
    });
    agent.keeps_being_acked(&collector, 1);
}
