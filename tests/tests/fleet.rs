//! End to end on loopback: a real collector and a real agent as processes, the CLI
//! against both, and 200 simulated agents streaming at once. Values are checked
//! against the kernel (sysinfo, sysconf, getloadavg), not against the agent.
use std::{
    process::{Child, Command, Stdio},
    time::Duration,
};

use tokio_stream::StreamExt as _;
use vigil_proto::v1::{
    collector_client::CollectorClient, fleet_client::FleetClient, Batch, HostIdentity, HostMetrics,
    ListHostsRequest,
};
use vigil_tests::{
    agent_command, collector_address, collector_command, sysinfo_mem_total, vigil_bin, vigil_json,
    KillOnDrop,
};

/// A `vigil collector` on an ephemeral loopback port, with its own data directory.
struct Collector {
    /// Killed when the test ends.
    _child: KillOnDrop,
    addr: String,
    _dir: tempfile::TempDir,
}

fn start_collector() -> Collector {
    let dir = tempfile::tempdir().expect("tempdir");
    let (child, addr, lines) = collector_address(
        collector_command()
            .args(["--listen", "127.0.0.1:0", "--data-dir"])
            .arg(dir.path())
            .stderr(Stdio::piped())
            .stdout(Stdio::null()),
    );
    // Keep draining stderr so the collector never blocks on a full pipe.
    std::thread::spawn(move || for _ in lines {});
    Collector {
        _child: KillOnDrop(child),
        addr,
        _dir: dir,
    }
}

fn stop(mut child: Child) {
    let _ = nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(child.id() as i32),
        nix::sys::signal::Signal::SIGINT,
    );
    let status = child.wait().expect("wait");
    assert!(status.success(), "exited with {status}");
}

#[test]
fn an_agent_streams_to_a_collector_and_the_cli_reads_it_back() {
    let collector = start_collector();
    let agent_id = format!("e2e-{}", std::process::id());
    let state = tempfile::tempdir().expect("tempdir");
    let (agent, _) = vigil_tests::spawn_ready(
        agent_command()
            .args([
                "--interval",
                "1s",
                "--top",
                "0",
                "--collector",
                &collector.addr,
                "--agent-id",
                &agent_id,
                "--no-api",
            ])
            .arg("--data-dir")
            .arg(state.path())
            .stdout(Stdio::null())
            .stderr(Stdio::null()),
        Duration::from_secs(60),
    );
    // Ready: a batch a second from now on; wait for three to be stored.
    vigil_tests::daemons::wait_until("three batches stored", Duration::from_secs(30), || {
        vigil_json(&["hosts", "--collector", &collector.addr, "--json"])["hosts"]
            .as_array()
            .is_some_and(|hs| {
                hs.iter()
                    .any(|h| h["agent_id"] == agent_id.as_str() && h["batches"].as_u64() >= Some(3))
            })
    });
    stop(agent);

    let hosts = vigil_json(&["hosts", "--collector", &collector.addr, "--json"]);
    let me = hosts["hosts"]
        .as_array()
        .expect("hosts")
        .iter()
        .find(|h| h["agent_id"] == agent_id.as_str())
        .expect("our agent listed");
    let batches = me["batches"].as_u64().unwrap();
    assert!(batches >= 3, "a batch per second for 4.5 s: {me}");
    assert_eq!(
        me["last_seq"].as_u64(),
        Some(batches),
        "sequences 1..=n, all stored: {me}"
    );
    assert_eq!(me["duplicates"], 0);

    let host = vigil_json(&["host", &agent_id, "--collector", &collector.addr, "--json"]);
    assert_eq!(
        host["memory"]["total_bytes"].as_u64(),
        Some(sysinfo_mem_total()),
        "{host}"
    );
    // SAFETY: no preconditions.
    let online = unsafe { libc::sysconf(libc::_SC_NPROCESSORS_ONLN) } as u64;
    assert_eq!(host["cpu"]["count"].as_u64(), Some(online), "{host}");
    let mut load = [0f64; 3];
    // SAFETY: buffer of 3.
    unsafe { libc::getloadavg(load.as_mut_ptr(), 3) };
    assert!(
        (host["load"]["one"].as_f64().unwrap() - load[0]).abs() < 1.0,
        "load {host} vs {}",
        load[0]
    );
    assert!(host["memory"]["available_bytes"].as_u64().unwrap() <= sysinfo_mem_total());

    let history = vigil_json(&[
        "history",
        &agent_id,
        "--metric",
        "memory.total_bytes",
        "--since",
        "1h",
        "--collector",
        &collector.addr,
        "--json",
    ]);
    let points = history["points"].as_array().expect("points");
    assert_eq!(points.len() as u64, batches, "one sample per batch");
    assert!(points
        .iter()
        .all(|p| p["value"].as_f64() == Some(sysinfo_mem_total() as f64)));

    let out = Command::new(vigil_bin())
        .args([
            "history",
            &agent_id,
            "--metric",
            "nonsense",
            "--collector",
            &collector.addr,
        ])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("unknown metric `nonsense`"),
        "clear error"
    );
    drop(collector);
}

#[test]
fn two_hundred_agents_stream_at_once_and_everything_is_stored() {
    const AGENTS: usize = 200;
    const BATCHES: u64 = 20;
    let collector = start_collector();
    let url = format!("http://{}", collector.addr);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(async {
        let mut tasks = Vec::new();
        for a in 0..AGENTS {
            let url = url.clone();
            tasks.push(tokio::spawn(async move {
                let mut client = CollectorClient::connect(url).await.expect("connect");
                let agent_id = format!("sim-{a:03}");
                let now = std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .expect("clock")
                    .as_millis() as i64;
                let batches: Vec<Batch> = (1..=BATCHES)
                    .map(|seq| Batch {
                        agent_id: agent_id.clone(),
                        epoch: 1,
                        sequence: seq,
                        host: Some(HostIdentity {
                            agent_id: agent_id.clone(),
                            hostname: agent_id.clone(),
                            ..Default::default()
                        }),
                        metrics: vec![HostMetrics {
                            time_unix_ms: now - (BATCHES - seq) as i64 * 1000,
                            cpu_count: 2,
                            memory_total_bytes: 1 << 30,
                            ..Default::default()
                        }],
                        ..Default::default()
                    })
                    .collect();
                let mut acks = client
                    .stream(tokio_stream::iter(batches))
                    .await
                    .expect("stream")
                    .into_inner();
                let mut seen = Vec::new();
                while let Some(ack) = acks.next().await {
                    let ack = ack.expect("ack");
                    assert_eq!(ack.agent_id, agent_id);
                    assert!(!ack.duplicate);
                    seen.push(ack.sequence);
                }
                assert_eq!(
                    seen,
                    (1..=BATCHES).collect::<Vec<_>>(),
                    "every batch acked, in order"
                );
            }));
        }
        for t in tasks {
            t.await.expect("agent task");
        }
        let hosts = FleetClient::connect(url)
            .await
            .expect("fleet")
            .list_hosts(ListHostsRequest {
                page_size: 1000,
                page_token: String::new(),
            })
            .await
            .expect("hosts")
            .into_inner()
            .hosts;
        let sims: Vec<_> = hosts
            .iter()
            .filter(|h| {
                h.host
                    .as_ref()
                    .is_some_and(|i| i.agent_id.starts_with("sim-"))
            })
            .collect();
        assert_eq!(sims.len(), AGENTS);
        for h in sims {
            assert_eq!(
                (h.batches, h.last_sequence, h.duplicates),
                (BATCHES, BATCHES, 0),
                "{h:?}"
            );
        }
    });
    drop(collector);
}

/// `vigil hosts` against each way a collector can be out of reach: one line that says
/// which (refused, DNS, TLS, timed out), no cause repeated, no gRPC status wording.
#[test]
fn an_unreachable_collector_is_named_refused_dns_tls_or_timed_out() {
    let run = |args: &[&str], env_tls: Option<&str>| {
        let mut cmd = Command::new(vigil_bin());
        cmd.arg("hosts").args(args);
        if let Some(mode) = env_tls {
            cmd.env("VIGIL_TLS", mode);
        }
        let out = cmd.output().unwrap();
        assert!(!out.status.success());
        let err = String::from_utf8_lossy(&out.stderr).into_owned();
        assert!(
            !err.contains("code: '") && !err.contains("status: "),
            "raw gRPC wording: {err}"
        );
        let line = err.lines().last().unwrap_or_default().to_string();
        let parts: Vec<&str> = line.split(": ").collect();
        assert!(
            parts.windows(2).all(|w| w[0] != w[1]),
            "a cause repeated: {line}"
        );
        line
    };
    let port = vigil_tests::free_port();
    let refused = run(
        &["--collector", &format!("127.0.0.1:{port}"), "--tls", "off"],
        None,
    );
    assert!(refused.contains("connection refused"), "{refused}");
    let dns = run(
        &["--collector", "no-such-host.invalid:7070", "--tls", "off"],
        None,
    );
    assert!(dns.contains("DNS failure"), "{dns}");

    // TLS to a collector that speaks plaintext: the handshake fails, and says so.
    let collector = vigil_tests::daemons::Collector::start(&["--tls", "off"]);
    let pki = tempfile::tempdir().unwrap();
    let dir = pki.path().to_str().unwrap();
    for args in [
        vec!["certs", "init", "--dir", dir],
        vec!["certs", "issue", "--dir", dir, "--operator", "me"],
    ] {
        assert!(Command::new(vigil_bin())
            .args(&args)
            .output()
            .unwrap()
            .status
            .success());
    }
    let tls = run(
        &[
            "--collector",
            &collector.addr,
            "--tls-ca",
            &format!("{dir}/ca.pem"),
            "--tls-cert",
            &format!("{dir}/operator-me.pem"),
            "--tls-key",
            &format!("{dir}/operator-me.key"),
        ],
        Some("mtls"),
    );
    assert!(tls.contains("TLS handshake failed"), "{tls}");

    // A peer that accepts the connection and never answers.
    let silent = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = silent.local_addr().unwrap().to_string();
    let timeout = run(
        &["--collector", &addr, "--tls", "off", "--timeout", "1s"],
        None,
    );
    assert!(timeout.contains("timed out"), "{timeout}");
    drop(silent);
}
