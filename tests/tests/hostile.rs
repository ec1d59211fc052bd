//! Hostile clients against a real collector and agent (issue #19). Each test does the
//! attack for real, with a gRPC client of its own (tonic, or raw HTTP/2 frames with
//! h2) or as an unprivileged user the test creates, while a real `vigil agent`
//! streams to the same collector; the collector must keep acking it throughout.
use std::{
    io::{BufRead as _, BufReader},
    os::unix::process::CommandExt as _,
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use tokio_stream::StreamExt as _;
use vigil_proto::v1::{
    collector_client::CollectorClient, Batch, Finding, HostIdentity, HostMetrics, Losses,
};
use vigil_tests::{
    agent_command,
    daemons::{wait_until, Collector, RealAgent},
    vigil_bin, vigil_json, KillOnDrop,
};

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime")
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_millis() as i64
}

/// A valid batch of one sample for `agent_id`.
fn batch(agent_id: &str, epoch: vigil_proto::Epoch, sequence: u64) -> Batch {
    let mut b = Batch {
        agent_id: agent_id.into(),
        sequence,
        start_unix_ms: now_ms() - 1000,
        end_unix_ms: now_ms(),
        host: Some(HostIdentity {
            agent_id: agent_id.into(),
            hostname: format!("forged-{agent_id}"),
            ..Default::default()
        }),
        metrics: vec![HostMetrics {
            time_unix_ms: now_ms(),
            cpu_count: 64,
            cpu_usage_percent: 99.0,
            ..Default::default()
        }],
        ..Default::default()
    };
    b.set_spool_epoch(epoch);
    b
}

/// Sends `batches` on one stream; returns the acks and the status that ended it.
async fn send(url: &str, batches: Vec<Batch>) -> (Vec<vigil_proto::v1::Ack>, tonic::Status) {
    let mut client = CollectorClient::connect(url.to_string())
        .await
        .expect("connect")
        .max_encoding_message_size(64 << 20);
    let mut acks = Vec::new();
    let mut stream = match client.stream(tokio_stream::iter(batches)).await {
        Ok(r) => r.into_inner(),
        Err(s) => return (acks, s),
    };
    loop {
        match stream.next().await {
            Some(Ok(a)) => acks.push(a),
            Some(Err(s)) => return (acks, s),
            None => return (acks, tonic::Status::ok("")),
        }
    }
}

fn proc_status_field(pid: u32, field: &str) -> String {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .expect("/proc/PID/status")
        .lines()
        .find_map(|l| {
            l.strip_prefix(&format!("{field}:"))
                .map(|v| v.trim().to_string())
        })
        .unwrap_or_else(|| panic!("{field} in /proc/{pid}/status"))
}

/// True if SIGPIPE (13) is in the process's ignored set.
fn ignores_sigpipe(pid: u32) -> bool {
    let mask = u64::from_str_radix(&proc_status_field(pid, "SigIgn"), 16).expect("hex mask");
    mask & (1 << (libc::SIGPIPE - 1)) != 0
}

/// A raw HTTP/2 connection (h2) to the collector, so a test can send frames that no
/// well-behaved gRPC client would: a message header with no body, a hang-up with a
/// reset in the middle of an answer.
async fn raw_h2(
    addr: &str,
    reset_on_close: bool,
) -> (
    h2::client::SendRequest<bytes::Bytes>,
    tokio::task::JoinHandle<()>,
) {
    let tcp = tokio::net::TcpStream::connect(addr).await.expect("connect");
    if reset_on_close {
        use std::os::fd::AsRawFd as _;
        let linger = libc::linger {
            l_onoff: 1,
            l_linger: 0,
        };
        // SAFETY: a valid socket and a valid linger struct of the right size.
        unsafe {
            libc::setsockopt(
                tcp.as_raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_LINGER,
                std::ptr::addr_of!(linger).cast(),
                std::mem::size_of::<libc::linger>() as u32,
            )
        };
    }
    let (client, conn) = h2::client::Builder::new()
        .initial_window_size(16 << 20)
        .initial_connection_window_size(16 << 20)
        .handshake(tcp)
        .await
        .expect("h2 handshake");
    let task = tokio::spawn(async move {
        let _ = conn.await;
    });
    (client, task)
}

fn grpc_request(addr: &str, method: &str) -> http::Request<()> {
    http::Request::builder()
        .method("POST")
        .uri(format!("http://{addr}/{method}"))
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .body(())
        .expect("request")
}

/// The gRPC status (code, message) an h2 response ends with.
async fn grpc_status(resp: h2::client::ResponseFuture) -> (String, String) {
    let resp = resp.await.expect("response");
    let from = |h: &http::HeaderMap| {
        (
            h.get("grpc-status")
                .map(|v| v.to_str().unwrap_or("?").to_string()),
            h.get("grpc-message")
                .map(|v| v.to_str().unwrap_or("?").to_string()),
        )
    };
    if let (Some(code), msg) = from(resp.headers()) {
        return (code, msg.unwrap_or_default());
    }
    let mut body = resp.into_body();
    while let Some(chunk) = body.data().await {
        if chunk.is_err() {
            break;
        }
    }
    let trailers = body.trailers().await.ok().flatten().unwrap_or_default();
    let (code, msg) = from(&trailers);
    (
        code.unwrap_or_else(|| "none".into()),
        msg.unwrap_or_default(),
    )
}

#[test]
fn clients_hanging_up_mid_answer_cannot_kill_the_daemons() {
    let mut collector = Collector::start(&[]);
    let agent = RealAgent::start(&collector, "sigpipe-victim");
    agent.keeps_being_acked(&collector, 1);
    assert!(
        ignores_sigpipe(collector.pid()),
        "the collector must ignore SIGPIPE"
    );
    assert!(
        ignores_sigpipe(agent.child.id()),
        "the agent must ignore SIGPIPE"
    );
    // Plenty to answer: events of 3,000 findings with long command lines.
    let url = collector.url();
    let addr = collector.addr.clone();
    rt().block_on(async {
        let mut b = batch("sigpipe-filler", vigil_proto::Epoch(7), 1);
        b.findings = (0..3000)
            .map(|i| Finding {
                rule: "filler".into(),
                time_unix_ms: now_ms(),
                description: format!("{i} {}", "x".repeat(2000)),
                ..Default::default()
            })
            .collect();
        let (acks, status) = send(&url, vec![b]).await;
        assert_eq!(acks.len(), 1, "filler stored: {status:?}");
        // Ask for pages of events and hang up with a reset while they are written.
        for i in 0..60 {
            let (mut client, conn) = raw_h2(&addr, true).await;
            let req = grpc_request(&addr, "vigil.v1.Fleet/Events");
            let (resp, mut body) = client.send_request(req, false).expect("request");
            // EventsRequest { limit: 10000 }: field 2, varint.
            let msg = [0x10u8, 0x90, 0x4e];
            let mut frame = vec![0u8, 0, 0, 0, msg.len() as u8];
            frame.extend_from_slice(&msg);
            body.send_data(bytes::Bytes::from(frame), true)
                .expect("send");
            if i % 2 == 0 {
                // Wait for the answer to start, then reset.
                let _ = resp.await;
            }
            drop(client);
            conn.abort();
            let _ = conn.await;
        }
    });
    assert!(
        collector.alive(),
        "the collector survived clients hanging up"
    );
    // The agent's API, too: hang up on `vigil stats` answers.
    for _ in 0..20 {
        let mut c = Command::new(vigil_bin())
            .args(["stats", "--json", "--socket"])
            .arg(agent.socket())
            .stdout(Stdio::piped())
            .spawn()
            .expect("vigil stats");
        drop(c.stdout.take());
        let _ = c.wait();
    }
    agent.keeps_being_acked(&collector, 2);
    assert!(collector.alive());
    agent.stop();
}

#[test]
fn an_impersonator_cannot_erase_a_hosts_data_unseen() {
    let collector = Collector::start(&[]);
    let agent = RealAgent::start(&collector, "victim");
    agent.keeps_being_acked(&collector, 2);
    let epoch = agent.epoch();
    assert_ne!(epoch.high(), 0, "the epoch is 128 random bits: {epoch}");
    assert_ne!(epoch.low(), 0, "the epoch is 128 random bits: {epoch}");
    let url = collector.url();
    let addr = collector.addr.clone();
    let real_hostname = collector.host("victim").expect("victim")["hostname"].clone();
    let last = collector.host("victim").expect("victim")["last_seq"]
        .as_u64()
        .expect("last_seq");
    rt().block_on(async {
        // 1. With the epoch leaked: a forged copy of a stored batch is a conflict,
        //    never a duplicate, and changes nothing.
        let (acks, _) = send(&url, vec![batch("victim", epoch, 1)]).await;
        assert!(acks[0].conflict && !acks[0].duplicate, "{:?}", acks[0]);
        let h = vigil_json(&["hosts", "--collector", &addr, "--json"]);
        let victim = h["hosts"]
            .as_array()
            .unwrap()
            .iter()
            .find(|h| h["agent_id"] == "victim")
            .unwrap()
            .clone();
        assert_eq!(
            victim["hostname"], real_hostname,
            "a conflict rewrote the identity: {victim}"
        );
        assert_eq!(victim["conflicts"], 1, "{victim}");
        // 2. Guessing the epoch, as the old millisecond epoch allowed: nothing comes
        //    back as a duplicate (no oracle), whatever is tried.
        let t0 = now_ms() as u64;
        let guesses: Vec<Batch> = (0..2000)
            .map(|i| batch("victim", vigil_proto::Epoch::from_halves(t0 - i, 0), 1))
            .collect();
        let (acks, status) = send(&url, guesses).await;
        assert_eq!(acks.len(), 2000, "{status:?}");
        assert!(acks.iter().all(|a| !a.duplicate && !a.conflict));
        // 3. Pre-claiming the victim's next sequences: stored (no identity check
        //    until mTLS) ...
        let claims: Vec<Batch> = (last + 3..last + 13)
            .map(|q| batch("victim", epoch, q))
            .collect();
        let (acks, status) = send(&url, claims).await;
        assert_eq!(acks.len(), 10, "{status:?}");
        // ... but not a million ahead.
        let (acks, status) = send(
            &url,
            vec![batch("victim", epoch, last + 13 + 1_000_000 + 10)],
        )
        .await;
        assert!(acks.is_empty());
        assert_eq!(status.code(), tonic::Code::InvalidArgument, "{status:?}");
        assert!(status.message().contains("past the newest"), "{status:?}");
    });
    // ... and when the real agent reaches them, each is a counted conflict at both
    // ends, not a silent duplicate that deletes the real batch from its spool.
    wait_until("the agent's conflicts", Duration::from_secs(60), || {
        agent.stats()["agent"]["batches_conflicting"]
            .as_u64()
            .unwrap_or(0)
            >= 5
    });
    let h = collector.host("victim").expect("victim");
    assert!(h["conflicts"].as_u64().unwrap() >= 6, "{h}");
    assert_eq!(h["duplicates"], 0, "{h}");
    // Fresh batches speak for the host (the guesses above did, as the real agent's
    // do again now): only binding identities (mTLS) stops that.
    assert!(collector
        .log
        .lock()
        .unwrap()
        .iter()
        .any(|l| l.contains("CONFLICT")));
    // Past the claimed range the real agent is stored again.
    wait_until(
        "the victim past the claims",
        Duration::from_secs(90),
        || {
            collector.host("victim").expect("victim")["last_seq"]
                .as_u64()
                .unwrap_or(0)
                > last + 13
        },
    );
    wait_until("the real hostname back", Duration::from_secs(10), || {
        collector.host("victim").expect("victim")["hostname"] == real_hostname
    });
    agent.stop();
}

#[test]
fn bad_batches_are_refused_alone_and_never_hold_up_another_agent() {
    let collector = Collector::start(&[]);
    let agent = RealAgent::start(&collector, "bystander");
    agent.keeps_being_acked(&collector, 1);
    let url = collector.url();
    type Spoil = fn(&mut Batch);
    let spoils: &[(&str, Spoil)] = &[
        ("cpu_usage_percent", |b| {
            b.metrics[0].cpu_usage_percent = f64::NAN
        }),
        ("load_one", |b| b.metrics[0].load_one = f64::INFINITY),
        ("sequence", |b| b.sequence = u64::MAX),
        ("time_unix_ms", |b| {
            b.metrics[0].time_unix_ms = now_ms() + 10 * 86_400_000
        }),
        ("time_unix_ms", |b| b.metrics[0].time_unix_ms = 5),
        ("metrics", |b| {
            b.metrics
                .extend(std::iter::repeat_n(HostMetrics::default(), 20_000))
        }),
        ("metrics[1].time_unix_ms", |b| {
            b.metrics.push(HostMetrics::default())
        }),
        ("agent_id", |b| b.agent_id = "a".repeat(200)),
    ];
    rt().block_on(async {
        for (field, spoil) in spoils {
            let mut b = batch("poison", vigil_proto::Epoch(1), 1);
            spoil(&mut b);
            let (acks, status) = send(&url, vec![b]).await;
            assert!(acks.is_empty(), "{field}");
            assert_eq!(
                status.code(),
                tonic::Code::InvalidArgument,
                "{field}: {status:?}"
            );
            assert!(status.message().contains(field), "{field}: {status:?}");
        }
        // 8 streams of NaN batches for a while: the bystander keeps being stored.
        let mut tasks = Vec::new();
        for s in 0..8u64 {
            let url = url.clone();
            tasks.push(tokio::spawn(async move {
                let deadline = Instant::now() + Duration::from_secs(4);
                let mut n = 0u64;
                while Instant::now() < deadline {
                    let mut b = batch(&format!("poison-{s}"), vigil_proto::Epoch(1), n + 1);
                    b.metrics[0].cpu_usage_percent = f64::NAN;
                    let (_, status) = send(&url, vec![b]).await;
                    assert_eq!(status.code(), tonic::Code::InvalidArgument);
                    n += 1;
                }
                n
            }));
        }
        let before = collector.batches_of("bystander");
        let mut poisoned = 0;
        for t in tasks {
            poisoned += t.await.expect("poisoner");
        }
        assert!(
            collector.batches_of("bystander") >= before + 2,
            "the bystander was stored while {poisoned} poisoned batches came in"
        );
        assert!(collector.refused("invalid_batch") >= poisoned);
    });
    agent.keeps_being_acked(&collector, 1);
    agent.stop();
}

#[test]
fn extreme_values_and_huge_strings_cannot_brick_the_fleet_view() {
    let collector = Collector::start(&[]);
    let agent = RealAgent::start(&collector, "fleet-bystander");
    agent.keeps_being_acked(&collector, 1);
    let url = collector.url();
    rt().block_on(async {
        // seq = 2^63-1 in two epochs, and losses of 2^63-1 twice: valid, and summed
        // without overflow.
        for e in [1u128, 2] {
            let mut b = batch("extreme", vigil_proto::Epoch(e), i64::MAX as u64);
            b.losses = Some(Losses {
                pipeline_dropped: i64::MAX as u64,
                ..Default::default()
            });
            let (acks, status) = send(&url, vec![b]).await;
            assert_eq!(acks.len(), 1, "{status:?}");
        }
        // A 25 MB hostname: refused for its size, with a status.
        let mut b = batch("huge", vigil_proto::Epoch(1), 1);
        b.host.as_mut().unwrap().hostname = "h".repeat(25 << 20);
        let (acks, status) = send(&url, vec![b]).await;
        assert!(acks.is_empty());
        assert_eq!(status.code(), tonic::Code::ResourceExhausted, "{status:?}");
        // 300 hosts with 12 KiB of identity each: over 4 MiB in all, listed in pages.
        let many: Vec<Batch> = (0..300)
            .map(|i| {
                let mut b = batch(&format!("wide-{i:03}"), vigil_proto::Epoch(1), 1);
                let h = b.host.as_mut().unwrap();
                h.os = "o".repeat(4000);
                h.kernel = "k".repeat(4000);
                h.agent_version = "v".repeat(4000);
                b.agent_id = format!("wide-{i:03}");
                h.agent_id = b.agent_id.clone();
                b
            })
            .collect();
        for chunk in many.chunks(50) {
            let mut tasks = Vec::new();
            for b in chunk.iter().cloned() {
                let url = url.clone();
                tasks.push(tokio::spawn(async move { send(&url, vec![b]).await }));
            }
            for t in tasks {
                assert_eq!(t.await.expect("send").0.len(), 1);
            }
        }
        // Terminal escapes in a hostname and an agent id.
        let mut b = batch("evil\x1b[2J", vigil_proto::Epoch(1), 1);
        b.host.as_mut().unwrap().hostname = "\x1b]52;c;aGk=\x07\x1b[2Jroot-login-ok\n".into();
        let (acks, status) = send(&url, vec![b]).await;
        assert_eq!(acks.len(), 1, "{status:?}");
    });
    let hosts = collector.hosts();
    let list = hosts["hosts"].as_array().expect("hosts");
    assert!(
        list.len() >= 302,
        "every host listed across pages: {}",
        list.len()
    );
    let extreme = list
        .iter()
        .find(|h| h["agent_id"] == "extreme")
        .expect("extreme");
    assert_eq!(extreme["gaps"].as_u64(), Some(u64::MAX - 3), "{extreme}");
    assert_eq!(
        extreme["dropped_events"]["agent_dropped"].as_u64(),
        Some(i64::MAX as u64),
        "saturated: {extreme}"
    );
    assert!(list.iter().all(|h| h["agent_id"] != "huge"));
    // The human listings escape control characters.
    let escaped = |args: &[&str]| -> String {
        let out = vigil_tests::vigil_stdout(args);
        assert!(
            !out.contains(&0x1b) && !out.contains(&0x07),
            "raw control characters printed by vigil {args:?}"
        );
        String::from_utf8_lossy(&out).into_owned()
    };
    let text = escaped(&["hosts", "--collector", &collector.addr]);
    assert!(text.contains("\\x1b]52;c;aGk=\\x07"), "{text}");
    let text = escaped(&["host", "evil\x1b[2J", "--collector", &collector.addr]);
    assert!(text.contains("evil\\x1b[2J"), "{text}");
    agent.keeps_being_acked(&collector, 1);
    agent.stop();
}

#[test]
fn strings_past_the_configured_limit_are_cut_marked_and_counted_and_plaintext_hosts_are_shown() {
    // A limit outside 64 B to 1 MiB: the collector does not start, naming the field.
    let dir = tempfile::tempdir().expect("tempdir");
    let bad = dir.path().join("bad.toml");
    std::fs::write(&bad, "[limits]\nmax_string_bytes = 10\n").unwrap();
    let out = vigil_tests::collector_command()
        .args(["--listen", "127.0.0.1:0", "--config"])
        .arg(&bad)
        .arg("--data-dir")
        .arg(dir.path().join("data"))
        .output()
        .expect("collector");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "started with a 10-byte limit: {err}");
    assert!(
        err.contains("bad.toml") && err.contains("limits.max_string_bytes"),
        "{err}"
    );
    let config = dir.path().join("collector.toml");
    std::fs::write(&config, "[limits]\nmax_string_bytes = \"200\"\n").unwrap();
    let collector = Collector::start(&["--config", config.to_str().unwrap()]);
    let mut b = batch("long-strings", vigil_proto::Epoch(1), 1);
    b.host.as_mut().unwrap().os = "o".repeat(1000);
    b.findings.push(Finding {
        rule: "r".into(),
        time_unix_ms: now_ms(),
        description: "é".repeat(1000),
        details: [("k".repeat(300), "v".into())].into_iter().collect(),
        ..Default::default()
    });
    let (acks, status) = rt().block_on(send(&collector.url(), vec![b]));
    assert_eq!(acks.len(), 1, "{status:?}");
    let hosts = collector.hosts();
    let host = collector.host("long-strings").expect("stored");
    let os = host["os"].as_str().unwrap();
    assert!(os.len() <= 200 && os.ends_with("…[truncated]"), "{os}");
    // The os, the description and the details key: three strings, each counted.
    assert_eq!(
        hosts["collector"]["strings_truncated"].as_u64(),
        Some(3),
        "{hosts}"
    );
    // This collector runs in plaintext: the host is marked, in JSON and as text.
    assert_eq!(host["transport"], "plaintext", "{host}");
    let text = String::from_utf8_lossy(&vigil_tests::vigil_stdout(&[
        "hosts",
        "--collector",
        &collector.addr,
    ]))
    .into_owned();
    let row = text
        .lines()
        .find(|l| l.contains("long-strings"))
        .unwrap_or_else(|| panic!("{text}"));
    assert!(row.contains("PLAINTEXT"), "{text}");
    assert!(
        text.contains("PLAINTEXT: 1 of 1 hosts") && text.contains("cut 3 strings"),
        "{text}"
    );
}

#[test]
fn memory_amplification_is_bounded_and_refused_with_a_status() {
    let collector = Collector::start(&[
        "--message-timeout",
        "3s",
        "--decode-budget",
        "64MiB",
        "--max-message-size",
        "8MiB",
    ]);
    let agent = RealAgent::start(&collector, "memory-bystander");
    agent.keeps_being_acked(&collector, 1);
    let addr = collector.addr.clone();
    let url = collector.url();
    let rss = |pid: u32| -> u64 {
        proc_status_field(pid, "VmRSS")
            .trim_end_matches(" kB")
            .parse::<u64>()
            .expect("VmRSS")
    };
    let base = rss(collector.pid());
    rt().block_on(async {
        // A 5 MB batch of empty samples: refused, named.
        let mut b = batch("amplifier", vigil_proto::Epoch(1), 1);
        b.metrics = vec![HostMetrics::default(); 1_000_000];
        let (acks, status) = send(&url, vec![b]).await;
        assert!(acks.is_empty());
        assert_eq!(status.code(), tonic::Code::InvalidArgument, "{status:?}");
        // 100 streams (on 10 connections) each declaring an 8 MiB message and then
        // sending nothing: past the 64 MiB budget they are refused at once; the rest
        // end after the message timeout. Never OK without an ack.
        let mut conns = Vec::new();
        let mut pending = Vec::new();
        for _ in 0..10 {
            let (mut client, conn) = raw_h2(&addr, false).await;
            for _ in 0..10 {
                let mut c = client.clone().ready().await.expect("ready");
                let (resp, mut body) = c
                    .send_request(grpc_request(&addr, "vigil.v1.Collector/Stream"), false)
                    .expect("request");
                let header = [0u8, 0x00, 0x80, 0x00, 0x00]; // 8 MiB follows
                body.send_data(bytes::Bytes::copy_from_slice(&header), false)
                    .expect("header");
                pending.push((resp, body));
            }
            client = client.ready().await.expect("ready");
            conns.push((client, conn));
        }
        let mut codes = std::collections::BTreeMap::<String, usize>::new();
        for (resp, _body) in pending {
            let (code, _msg) = grpc_status(resp).await;
            *codes.entry(code).or_default() += 1;
        }
        // 8 = RESOURCE_EXHAUSTED, 4 = DEADLINE_EXCEEDED.
        assert!(codes.get("8").copied().unwrap_or(0) >= 90, "{codes:?}");
        assert!(codes.keys().all(|c| c == "8" || c == "4"), "{codes:?}");
        drop(conns);
    });
    assert!(collector.refused("decode_budget") >= 90);
    assert!(collector.refused("message_timeout") >= 1);
    let grown = rss(collector.pid()).saturating_sub(base);
    assert!(grown < 256 << 10, "collector RSS grew by {grown} kB");
    agent.keeps_being_acked(&collector, 1);
    agent.stop();
}

#[test]
fn idle_connections_cannot_exhaust_file_descriptors() {
    // The usual soft limit of 1024: the collector raises it to the hard limit.
    let collector = Collector::start_with(&["--idle-timeout", "5s"], |cmd| {
        // SAFETY: setrlimit only changes this child's limits before exec.
        unsafe {
            cmd.pre_exec(|| {
                let lim = libc::rlimit {
                    rlim_cur: 1024,
                    rlim_max: 8192,
                };
                if libc::setrlimit(libc::RLIMIT_NOFILE, &lim) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
    });
    let limits =
        std::fs::read_to_string(format!("/proc/{}/limits", collector.pid())).expect("limits");
    let nofile = limits
        .lines()
        .find(|l| l.starts_with("Max open files"))
        .expect("Max open files");
    assert!(nofile.split_whitespace().nth(3) == Some("8192"), "{nofile}");
    let agent = RealAgent::start(&collector, "fd-bystander");
    agent.keeps_being_acked(&collector, 1);
    let fds = |pid: u32| std::fs::read_dir(format!("/proc/{pid}/fd")).map_or(0, |d| d.count());
    let before = fds(collector.pid());
    // 1,100 idle connections from another address.
    let port: u16 = collector.addr.rsplit(':').next().unwrap().parse().unwrap();
    let mut idle = Vec::new();
    for _ in 0..1100 {
        let s = socket2_connect("127.0.0.2", port);
        idle.push(s);
    }
    // Every one of them is either refused at accept (over the per-peer limit of 256)
    // or accepted into a slot and closed when idle. How they split depends on timing:
    // on a loaded machine the kernel's accept queue overflows, the client's handshake
    // is retried, and a connection accepted after an idle one was closed takes its
    // slot instead of being refused. The property is the bound: the collector's
    // descriptors (the kernel's count, /proc/PID/fd) never grow by much more than
    // 256 however many connections come. The wait is on the count, not on time.
    let mut peak = before;
    let deadline = std::time::Instant::now() + Duration::from_secs(120);
    loop {
        peak = peak.max(fds(collector.pid()));
        let st = collector.hosts();
        let refused = &st["collector"]["refused"];
        let n = |k: &str| refused[k].as_u64().unwrap_or(0);
        if n("peer_connection_limit") + n("idle_connections_closed") >= 1100 - 256 {
            assert!(n("peer_connection_limit") >= 1, "{st}");
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "not every idle connection was refused or closed: {st}; kernel: {}",
            std::fs::read_to_string("/proc/net/netstat").unwrap_or_default()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    assert!(
        peak <= before + 256 + 64,
        "the collector's descriptors grew from {before} to {peak}"
    );
    // New clients are still served: the agent, and the CLI.
    agent.keeps_being_acked(&collector, 2);
    assert!(collector.host("fd-bystander").is_some());
    wait_until("idle connections closed", Duration::from_secs(30), || {
        collector.refused("idle_connections_closed") >= 200
    });
    drop(idle);
    agent.stop();
}

/// A TCP connection to 127.0.0.1:port from `source`, left idle.
fn socket2_connect(source: &str, port: u16) -> std::net::TcpStream {
    // SAFETY: plain socket calls on a socket this function owns.
    unsafe {
        let fd = libc::socket(libc::AF_INET, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0);
        assert!(fd >= 0, "socket");
        let mut src: libc::sockaddr_in = std::mem::zeroed();
        src.sin_family = libc::AF_INET as u16;
        src.sin_addr.s_addr = u32::from_ne_bytes(
            source
                .parse::<std::net::Ipv4Addr>()
                .expect("address")
                .octets(),
        );
        assert_eq!(
            libc::bind(
                fd,
                std::ptr::addr_of!(src).cast(),
                std::mem::size_of::<libc::sockaddr_in>() as u32
            ),
            0,
            "bind {source}"
        );
        let mut dst: libc::sockaddr_in = std::mem::zeroed();
        dst.sin_family = libc::AF_INET as u16;
        dst.sin_port = port.to_be();
        dst.sin_addr.s_addr = u32::from_ne_bytes([127, 0, 0, 1]);
        assert_eq!(
            libc::connect(
                fd,
                std::ptr::addr_of!(dst).cast(),
                std::mem::size_of::<libc::sockaddr_in>() as u32
            ),
            0,
            "connect: {}",
            std::io::Error::last_os_error()
        );
        std::os::fd::FromRawFd::from_raw_fd(fd)
    }
}

#[test]
fn a_wrapped_ack_counter_in_the_spool_state_is_set_aside_and_sending_goes_on() {
    let collector = Collector::start(&[]);
    let agent = RealAgent::start(&collector, "state-victim");
    agent.keeps_being_acked(&collector, 2);
    let epoch = agent.epoch();
    let spool = agent.spool();
    let dir = agent.kill_keeping_dir();
    std::fs::write(
        spool.join("state"),
        format!("epoch {}\nacked 18446744073709551615\n", epoch.hex()),
    )
    .expect("state");
    let before = collector.batches_of("state-victim");
    let agent = RealAgent::start_in(&collector, "state-victim", dir);
    wait_until(
        "new batches after the damaged state",
        Duration::from_secs(30),
        || collector.batches_of("state-victim") >= before + 2,
    );
    assert_eq!(agent.epoch(), epoch, "same epoch: sequences continue");
    let set_aside = std::fs::read_dir(&spool)
        .expect("spool dir")
        .filter_map(Result::ok)
        .any(|e| {
            e.file_name()
                .to_string_lossy()
                .starts_with("state.damaged-")
        });
    assert!(set_aside, "the damaged state is kept for a postmortem");
    let h = collector.host("state-victim").expect("host");
    assert_eq!(h["gaps"], 0, "{h}");
    agent.stop();
}

const HOSTILE_USER: &str = "vigil-hostile";

/// A system user without a home or a shell (with `extra` useradd flags), created if
/// missing: its uid and gid.
fn system_user(name: &str, extra: &[&str]) -> (u32, u32) {
    if nix::unistd::User::from_name(name).ok().flatten().is_none() {
        let out = Command::new("useradd")
            .args([
                "--system",
                "--no-create-home",
                "--shell",
                "/usr/sbin/nologin",
            ])
            .args(extra)
            .arg(name)
            .output()
            .expect("useradd");
        assert!(
            out.status.success(),
            "useradd: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let u = nix::unistd::User::from_name(name)
        .expect("user lookup")
        .expect("user exists");
    (u.uid.as_raw(), u.gid.as_raw())
}

/// The unprivileged user these tests act as, created if missing.
fn hostile_user() -> (u32, u32) {
    system_user(HOSTILE_USER, &[])
}

/// Runs `program args` as the hostile user; true if it succeeded.
fn as_hostile(program: &str, args: &[&str]) -> bool {
    let (uid, gid) = hostile_user();
    Command::new(program)
        .args(args)
        .uid(uid)
        .gid(gid)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .expect("running as the hostile user")
        .success()
}

#[test]
fn other_users_cannot_read_the_spool_the_database_or_use_the_api() {
    if !vigil_tests::require_root("other_users_cannot_read_the_spool_the_database_or_use_the_api") {
        return;
    }
    let collector = Collector::start(&[]);
    let agent = RealAgent::start(&collector, "modes");
    agent.keeps_being_acked(&collector, 1);
    wait_until("the API socket", Duration::from_secs(10), || {
        agent.socket().exists()
    });
    // The test's temp dirs are 0700 root: open them so that only Vigil's own modes
    // stand between the user and the files.
    use std::os::unix::fs::PermissionsExt as _;
    for d in [agent.dir.path(), collector.dir.path()] {
        std::fs::set_permissions(d, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    }
    let mode = |p: &Path| std::fs::metadata(p).expect("stat").permissions().mode() & 0o777;
    let data = collector.dir.path().join("data");
    assert_eq!(mode(&data), 0o700);
    assert_eq!(mode(&data.join("vigil.db")), 0o600);
    assert_eq!(mode(&agent.spool()), 0o700);
    assert_eq!(mode(&agent.dir.path().join("data")), 0o700);
    assert_eq!(mode(&agent.spool().join("state")), 0o600);
    assert_eq!(mode(&agent.socket()), 0o660);
    let segment = std::fs::read_dir(agent.spool())
        .expect("spool")
        .filter_map(Result::ok)
        .map(|e| e.path())
        .find(|p| p.extension().is_some_and(|x| x == "seg"))
        .expect("a segment");
    assert_eq!(mode(&segment), 0o600);
    for file in [
        data.join("vigil.db"),
        segment.clone(),
        agent.spool().join("state"),
    ] {
        assert!(
            !as_hostile("cat", &[file.to_str().unwrap()]),
            "{} readable by another user",
            file.display()
        );
    }
    assert!(as_hostile("true", &[]), "the user can run programs at all");
    let sock = agent.socket();
    assert!(
        !as_hostile(
            vigil_bin().to_str().unwrap(),
            &[
                "events",
                "--since",
                "1h",
                "--socket",
                sock.to_str().unwrap()
            ]
        ),
        "another user reached the agent API"
    );
    agent.stop();
}

/// A real `vigil agent` with root's probes and detection on (config in `config`), its
/// stderr read line by line: tests wait on what it says.
struct DetectingAgent {
    child: KillOnDrop,
    lines: std::sync::mpsc::Receiver<String>,
    socket: PathBuf,
    _dir: tempfile::TempDir,
}

impl DetectingAgent {
    fn start(collector: &Collector, id: &str, config: &str) -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("agent.toml");
        std::fs::write(&path, config).expect("config");
        let socket = dir.path().join("agent.sock");
        // Ready (READY=1) before the test goes on; what it logged on the way stays
        // in the pipe for wait_line.
        let (mut child, _) = vigil_tests::spawn_ready(
            agent_command()
                .args(["--interval", "1s", "--collector", &collector.addr])
                .args(["--agent-id", id, "--config"])
                .arg(&path)
                .arg("--data-dir")
                .arg(dir.path().join("data"))
                .arg("--socket")
                .arg(&socket)
                .stdout(Stdio::null())
                .stderr(Stdio::piped()),
            Duration::from_secs(60),
        );
        let stderr = BufReader::new(child.stderr.take().expect("stderr")).lines();
        let (tx, lines) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for l in stderr.map_while(Result::ok) {
                let _ = tx.send(l);
            }
        });
        Self {
            child: KillOnDrop(child),
            lines,
            socket,
            _dir: dir,
        }
    }

    fn pid(&self) -> u32 {
        self.child.0.id()
    }

    /// The first line (from now) containing `needle`; a line containing `never` on
    /// the way fails the test.
    fn wait_line(&self, needle: &str, never: Option<&str>) -> String {
        loop {
            let l = self
                .lines
                .recv_timeout(Duration::from_secs(60))
                .unwrap_or_else(|_| panic!("the agent never said {needle:?}"));
            if let Some(bad) = never {
                assert!(!l.contains(bad), "{l}");
            }
            if l.contains(needle) {
                return l;
            }
        }
    }

    fn signal(&self, sig: nix::sys::signal::Signal) {
        let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(self.pid() as i32), sig);
    }

    /// The findings `vigil events --json` lists.
    fn findings(&self) -> Vec<serde_json::Value> {
        let out = Command::new(vigil_bin())
            .args(["events", "--since", "1h", "--json", "--socket"])
            .arg(&self.socket)
            .output()
            .expect("vigil events");
        assert!(
            out.status.success(),
            "vigil events: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .map(|l| serde_json::from_str(l).expect("a JSON line"))
            .collect()
    }

    fn stop(mut self) {
        self.signal(nix::sys::signal::Signal::SIGTERM);
        let status = self.child.0.wait().expect("wait");
        assert!(status.success(), "{status}");
    }
}

#[test]
fn a_rule_file_with_an_absurd_duration_never_takes_the_agent_down() {
    if !vigil_tests::require_root("a_rule_file_with_an_absurd_duration_never_takes_the_agent_down")
    {
        return;
    }
    let collector = Collector::start(&[]);
    let dir = tempfile::tempdir().expect("tempdir");
    let rules = dir.path().join("rules.d");
    std::fs::create_dir(&rules).expect("rules dir");
    let bad = "rules:\n  - id: forever\n    description: d\n    severity: low\n    mitre: [T1059]\n    events: [exec]\n    condition:\n      process.name: {equals: nothing-runs-this}\n    dedup: 99999999999999999999d\n";
    std::fs::write(rules.join("bad.yaml"), bad).expect("rule file");
    // `vigil rules check` names the problem, exit 1, no panic.
    let out = Command::new(vigil_bin())
        .args(["rules", "check", "--dir"])
        .arg(&rules)
        .output()
        .expect("vigil rules check");
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("bad.yaml") && err.contains("too long"),
        "{err}"
    );
    // The agent starts with the file present (built-in rules), survives SIGHUP with
    // it, and keeps streaming.
    let agent = DetectingAgent::start(
        &collector,
        "rules-victim",
        &format!(
            "[probes]\nsyscalls = false\nretransmits = false\n[detect]\nenabled = true\nrules_dir = \"{}\"\n",
            rules.display()
        ),
    );
    let refused = agent.wait_line("running the built-in rules only", None);
    assert!(refused.contains("too long"), "{refused}");
    agent.wait_line("tracing the host every", None);
    let before = collector.batches_of("rules-victim");
    agent.signal(nix::sys::signal::Signal::SIGHUP);
    agent.wait_line("SIGHUP: rules refused", None);
    wait_until("batches after SIGHUP", Duration::from_secs(30), || {
        collector.batches_of("rules-victim") >= before + 2
    });
    agent.stop();
}

/// A directory in /var/tmp (a temp dir the detection rules watch) that the hostile
/// user can run programs from.
fn temp_program_dir() -> tempfile::TempDir {
    use std::os::unix::fs::PermissionsExt as _;
    let tmp = tempfile::tempdir_in("/var/tmp").expect("tempdir in /var/tmp");
    std::fs::set_permissions(tmp.path(), std::fs::Permissions::from_mode(0o755)).expect("chmod");
    tmp
}

/// The capability masks and no_new_privs of each of `pid`'s threads.
fn thread_privileges(pid: u32) -> Vec<(String, String, String, String, String, String)> {
    std::fs::read_dir(format!("/proc/{pid}/task"))
        .expect("tasks")
        .filter_map(Result::ok)
        .map(|t| {
            let status = std::fs::read_to_string(t.path().join("status")).expect("status");
            let field = |name: &str| {
                status
                    .lines()
                    .find_map(|l| l.strip_prefix(&format!("{name}:")))
                    .map(|v| v.trim().to_string())
                    .unwrap_or_default()
            };
            (
                field("CapEff"),
                field("CapPrm"),
                field("CapInh"),
                field("CapBnd"),
                field("CapAmb"),
                field("NoNewPrivs"),
            )
        })
        .collect()
}

#[test]
fn the_agent_keeps_only_the_privileges_it_needs_once_its_probes_are_attached() {
    if !vigil_tests::require_root(
        "the_agent_keeps_only_the_privileges_it_needs_once_its_probes_are_attached",
    ) {
        return;
    }
    let collector = Collector::start(&[]);
    // Every probe and detection on: all of it must keep working without root's powers.
    let agent = DetectingAgent::start(&collector, "least-privilege", "");
    agent.wait_line("tracing the host every", Some("could not drop privileges"));
    // Each thread: CAP_DAC_READ_SEARCH (2) and CAP_SYS_PTRACE (19) only, nothing to
    // inherit or regain, no_new_privs.
    let kept = format!("{:016x}", (1u64 << 2) | (1u64 << 19));
    let zero = "0".repeat(16);
    let threads = thread_privileges(agent.pid());
    for t in &threads {
        assert_eq!(
            t,
            &(
                kept.clone(),
                kept.clone(),
                zero.clone(),
                kept.clone(),
                zero.clone(),
                "1".to_string()
            ),
            "a thread's (CapEff, CapPrm, CapInh, CapBnd, CapAmb, NoNewPrivs); all: {threads:?}"
        );
    }
    // And it still does its job: another user's program run from a temp directory is
    // a finding (process table, /proc of another uid, rules), and batches are stored.
    let (uid, gid) = hostile_user();
    let tmp = temp_program_dir();
    let program = tmp.path().join("dropper");
    std::fs::copy("/bin/sleep", &program).expect("copy /bin/sleep");
    let status = Command::new(&program)
        .arg("1")
        .uid(uid)
        .gid(gid)
        .status()
        .expect("running the program as another user");
    assert!(status.success());
    let path = program.to_str().expect("utf-8").to_string();
    wait_until("the finding", Duration::from_secs(20), || {
        agent.findings().iter().any(|v| {
            v["rule"] == "exec-from-temp-dir"
                && v["process"]["exe"] == path.as_str()
                && v["process"]["uid"] == uid
        })
    });
    wait_until("batches stored", Duration::from_secs(30), || {
        collector.batches_of("least-privilege") >= 2
    });
    agent.stop();
}

#[test]
fn a_local_users_flood_of_findings_cannot_kill_the_agent_or_push_out_real_ones() {
    if !vigil_tests::require_root(
        "a_local_users_flood_of_findings_cannot_kill_the_agent_or_push_out_real_ones",
    ) {
        return;
    }
    let collector = Collector::start(&[]);
    let agent = DetectingAgent::start(&collector, "flooded", "");
    agent.wait_line("tracing the host every", None);
    // 8,000 differently named programs run from /var/tmp by an unprivileged user: each
    // is its own finding (the dedup key has the program), enough to pass 4 MiB.
    let (uid, gid) = hostile_user();
    let tmp = temp_program_dir();
    std::fs::copy("/bin/true", tmp.path().join("p0")).expect("copy /bin/true");
    const N: usize = 8000;
    for i in 1..N {
        std::fs::hard_link(tmp.path().join("p0"), tmp.path().join(format!("p{i}"))).expect("link");
    }
    let script = format!(
        "for i in $(seq 0 {}); do {}/p$i; done",
        N - 1,
        tmp.path().display()
    );
    let status = Command::new("sh")
        .args(["-c", &script])
        .uid(uid)
        .gid(gid)
        .status()
        .expect("the flood");
    assert!(status.success());
    // A real finding by someone else afterwards.
    let real = tmp.path().join("real-one");
    std::fs::copy("/bin/true", &real).expect("copy");
    // Its command line tries to retitle and clear the terminal of whoever reads it.
    assert!(Command::new(&real)
        .arg("\x1b]0;pwned\x07\x1b[2J")
        .status()
        .expect("run")
        .success());
    let real = real.to_str().expect("utf-8").to_string();
    let mut findings = Vec::new();
    wait_until("the real finding", Duration::from_secs(30), || {
        findings = agent.findings();
        findings
            .iter()
            .any(|v| v["process"]["exe"] == real.as_str())
    });
    let flood = findings
        .iter()
        .filter(|v| v["process"]["uid"] == uid && v["rule"] == "exec-from-temp-dir")
        .count();
    assert!(flood <= 100, "{flood} of the user's findings kept");
    // The human listing prints that command line escaped.
    let out = Command::new(vigil_bin())
        .args(["events", "--since", "1h", "--socket"])
        .arg(&agent.socket)
        .output()
        .expect("vigil events");
    assert!(out.status.success());
    assert!(
        !out.stdout.contains(&0x1b) && !out.stdout.contains(&0x07),
        "raw control characters printed"
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("\\x1b]0;pwned\\x07"));
    let stats = vigil_json(&[
        "stats",
        "--json",
        "--socket",
        agent.socket.to_str().unwrap(),
    ]);
    let limited = stats["agent"]["detect"]["findings_rate_limited"]
        .as_u64()
        .expect("findings_rate_limited");
    let matched = stats["agent"]["detect"]["rule_matches"]["exec-from-temp-dir"]
        .as_u64()
        .unwrap_or(0);
    // Every exec matched or was counted lost in the kernel (a busy machine can fill
    // the ring buffer), and of the user's matches all but the 100 kept are counted.
    let lost = stats["agent"]["dropped_events"]["kernel_ringbuf_full"]
        .as_u64()
        .unwrap_or(0);
    assert!(matched + lost > N as u64, "{stats}");
    assert!(
        limited + flood as u64 + lost >= N as u64,
        "limited {limited}, kept {flood}: {stats}"
    );
    agent.stop();
}

/// A group and a member of it, created if missing (the API group of one test).
fn group_with_member(group: &str, member: &str) -> (u32, u32) {
    if nix::unistd::Group::from_name(group)
        .ok()
        .flatten()
        .is_none()
    {
        let out = Command::new("groupadd")
            .args(["--system", group])
            .output()
            .expect("groupadd");
        assert!(
            out.status.success(),
            "groupadd: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    system_user(member, &["-G", group])
}

#[test]
fn only_root_and_the_api_group_may_use_the_local_api_checked_by_peer_credentials() {
    if !vigil_tests::require_root(
        "only_root_and_the_api_group_may_use_the_local_api_checked_by_peer_credentials",
    ) {
        return;
    }
    const GROUP: &str = "vigil-apitest";
    // The member's primary group is its own; GROUP is a supplementary one, which
    // the agent reads from /proc/PID/status.
    let (member_uid, member_gid) = group_with_member(GROUP, "vigil-apimember");
    let (hostile_uid, hostile_gid) = hostile_user();
    let dir = tempfile::tempdir().unwrap();
    use std::os::unix::fs::PermissionsExt as _;
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let socket = dir.path().join("run/agent.sock");
    std::fs::write(
        dir.path().join("agent.toml"),
        format!(
            "interval = \"1s\"\napi_group = \"{GROUP}\"\nsocket = \"{}\"\ndata_dir = \"{}\"\n\
             [probes]\nsyscalls = false\nretransmits = false\n[detect]\nenabled = false\n",
            socket.display(),
            dir.path().join("data").display()
        ),
    )
    .unwrap();
    let log = dir.path().join("agent.log");
    let mut cmd = agent_command();
    cmd.arg("--config")
        .arg(dir.path().join("agent.toml"))
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap());
    let (child, _) = vigil_tests::spawn_ready(&mut cmd, Duration::from_secs(60));
    let _agent = KillOnDrop(child);
    let group = nix::unistd::Group::from_name(GROUP).unwrap().unwrap();
    {
        use std::os::unix::fs::MetadataExt as _;
        let m = std::fs::metadata(&socket).unwrap();
        assert_eq!(
            (m.mode() & 0o777, m.uid(), m.gid()),
            (0o660, 0, group.gid.as_raw())
        );
        let d = std::fs::metadata(socket.parent().unwrap()).unwrap();
        assert_eq!(
            d.gid(),
            group.gid.as_raw(),
            "the socket's directory belongs to the group"
        );
    }
    let stats_as = |uid: u32, gid: u32, groups: &[u32]| -> bool {
        let groups: Vec<libc::gid_t> = groups.to_vec();
        let mut c = Command::new(vigil_bin());
        c.args(["stats", "--json", "--socket"]).arg(&socket);
        // SAFETY: setgroups/setgid/setuid in the child before exec.
        unsafe {
            c.pre_exec(move || {
                if libc::setgroups(groups.len(), groups.as_ptr()) != 0
                    || libc::setgid(gid) != 0
                    || libc::setuid(uid) != 0
                {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let out = c.output().expect("vigil stats");
        // Without the agent, `vigil stats` reads the host itself: only an answer
        // from the agent counts.
        out.status.success()
            && serde_json::from_slice::<serde_json::Value>(&out.stdout)
                .is_ok_and(|v| v["source"] == "agent")
    };
    wait_until("the member served", Duration::from_secs(30), || {
        stats_as(member_uid, member_gid, &[member_gid, group.gid.as_raw()])
    });
    assert!(
        !stats_as(hostile_uid, hostile_gid, &[hostile_gid]),
        "a user outside the group was served"
    );
    // Loosen the socket's mode by hand: the peer check still keeps the outsider out,
    // says who it was, and serves the member.
    std::fs::set_permissions(&socket, std::fs::Permissions::from_mode(0o666)).unwrap();
    std::fs::set_permissions(
        socket.parent().unwrap(),
        std::fs::Permissions::from_mode(0o755),
    )
    .unwrap();
    assert!(
        !stats_as(hostile_uid, hostile_gid, &[hostile_gid]),
        "SO_PEERCRED let an outsider in"
    );
    wait_until("the refusal logged", Duration::from_secs(10), || {
        std::fs::read_to_string(&log)
            .unwrap_or_default()
            .contains(&format!("uid {hostile_uid} gid {hostile_gid}"))
    });
    assert!(stats_as(
        member_uid,
        member_gid,
        &[member_gid, group.gid.as_raw()]
    ));
}

/// The agent as a packaged unit runs it: a dedicated user, the probe capabilities as
/// ambient ones, the bounding set limited to them (setpriv does what systemd's
/// User=, AmbientCapabilities= and CapabilityBoundingSet= do).
fn agent_as_dedicated_user(dir: &Path, caps: &[&str]) -> KillOnDrop {
    const USER: &str = "vigil-agent-test";
    let (uid, gid) = system_user(USER, &[]);
    std::os::unix::fs::chown(dir, Some(uid), Some(gid)).unwrap();
    use std::os::unix::fs::PermissionsExt as _;
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o755)).unwrap();
    let list: Vec<String> = caps.iter().map(|c| format!("+{c}")).collect();
    let list = list.join(",");
    let child = Command::new("setpriv")
        .args([
            &format!("--reuid={USER}"),
            &format!("--regid={USER}"),
            "--init-groups",
            &format!("--bounding-set=-all,{list}"),
            &format!("--inh-caps={list}"),
            &format!("--ambient-caps={list}"),
        ])
        .arg(vigil_tests::daemon_bin("agent"))
        .args(["--interval", "1s", "--data-dir"])
        .arg(dir.join("data"))
        .arg("--socket")
        .arg(dir.join("run/agent.sock"))
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(dir.join("agent.log")).unwrap())
        .spawn()
        .expect("setpriv (util-linux)");
    KillOnDrop(child)
}

fn agent_stats_at(socket: &Path) -> Option<serde_json::Value> {
    let out = Command::new(vigil_bin())
        .args(["stats", "--json", "--socket"])
        .arg(socket)
        .output()
        .ok()?;
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).ok()?;
    (v["source"] == "agent").then_some(v)
}

/// The agent's first answer on `socket` (waiting for it to come up).
fn first_agent_stats(socket: &Path) -> serde_json::Value {
    let mut stats = serde_json::Value::Null;
    wait_until("the agent's API", Duration::from_secs(60), || {
        stats = agent_stats_at(socket).unwrap_or_default();
        !stats.is_null()
    });
    stats
}

/// Capability bits as /proc/PID/status prints them.
fn cap_mask(bits: &[u32]) -> String {
    format!("{:016x}", bits.iter().fold(0u64, |m, b| m | (1 << b)))
}

#[test]
fn as_a_dedicated_user_the_agent_needs_four_capabilities_and_keeps_two() {
    if !vigil_tests::require_root(
        "as_a_dedicated_user_the_agent_needs_four_capabilities_and_keeps_two",
    ) {
        return;
    }
    // The documented set (README, Least privilege): BPF (39), PERFMON (38) to load
    // and attach; SYS_PTRACE (19), DAC_READ_SEARCH (2) kept for /proc and watched
    // directories. SYS_RESOURCE is not needed on this kernel (>= 5.11).
    let dir = tempfile::tempdir().unwrap();
    let agent = agent_as_dedicated_user(
        dir.path(),
        &["bpf", "perfmon", "sys_ptrace", "dac_read_search"],
    );
    let socket = dir.path().join("run/agent.sock");
    let stats = first_agent_stats(&socket);
    let probes = &stats["probes"];
    for p in [
        "syscall-latency",
        "tcp-retransmit",
        "process-lifecycle",
        "security",
        "detection",
    ] {
        assert_eq!(
            vigil_tests::probe_state(&stats, p),
            "on",
            "{p}: {probes}\n{}",
            std::fs::read_to_string(dir.path().join("agent.log")).unwrap()
        );
    }
    assert_eq!(
        stats["agent"]["preflight"]["capabilities_missing"], "",
        "{stats}"
    );
    let (kept, bounding, zero) = (
        cap_mask(&[2, 19]),
        cap_mask(&[2, 19, 38, 39]),
        cap_mask(&[]),
    );
    for t in thread_privileges(agent.0.id()) {
        assert_eq!(
            t,
            (
                kept.clone(),
                kept.clone(),
                zero.clone(),
                bounding.clone(),
                zero.clone(),
                "1".to_string()
            ),
            "(CapEff, CapPrm, CapInh, CapBnd, CapAmb, NoNewPrivs)"
        );
    }
    // The probes work as that user: syscalls are counted.
    wait_until(
        "syscall latency from the kernel",
        Duration::from_secs(30),
        || {
            let out = Command::new(vigil_bin())
                .args(["syscalls", "--json", "--window", "10s", "--socket"])
                .arg(&socket)
                .output()
                .unwrap();
            serde_json::from_slice::<serde_json::Value>(&out.stdout)
                .ok()
                .and_then(|v| v["syscalls"].as_array().map(|a| !a.is_empty()))
                .unwrap_or(false)
        },
    );
    drop(agent);

    // Without CAP_BPF: every probe off, saying why; host metrics still served.
    let dir = tempfile::tempdir().unwrap();
    let _agent = agent_as_dedicated_user(dir.path(), &["perfmon", "sys_ptrace", "dac_read_search"]);
    let socket = dir.path().join("run/agent.sock");
    let stats = first_agent_stats(&socket);
    let probes = &stats["probes"];
    for p in [
        "syscall-latency",
        "tcp-retransmit",
        "process-lifecycle",
        "security",
    ] {
        let s = vigil_tests::probe_state(&stats, p);
        let s = s.as_str();
        assert!(
            s.starts_with("off: ") && s.contains("cap_bpf"),
            "{p}: {probes}"
        );
    }
    // No probe feeds the rules: detection is not claimed.
    assert!(
        vigil_tests::probe_state(&stats, "detection").starts_with("off: no kernel probe"),
        "{probes}"
    );
    assert!(
        stats["memory"]["total_bytes"].as_u64().unwrap_or(0) > 0,
        "{stats}"
    );
}

#[test]
fn the_collector_serves_as_an_unprivileged_user_with_no_capabilities() {
    if !vigil_tests::require_root(
        "the_collector_serves_as_an_unprivileged_user_with_no_capabilities",
    ) {
        return;
    }
    let (uid, gid) = system_user("vigil-collector-test", &[]);
    let dir = tempfile::tempdir().unwrap();
    std::os::unix::fs::chown(dir.path(), Some(uid), Some(gid)).unwrap();
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let addr = format!("127.0.0.1:{port}");
    let child = Command::new("setpriv")
        .args([
            &format!("--reuid={uid}"),
            &format!("--regid={gid}"),
            "--clear-groups",
            "--bounding-set=-all",
            "--inh-caps=-all",
        ])
        .arg(vigil_tests::daemon_bin("collector"))
        .args(["--listen", &addr, "--data-dir"])
        .arg(dir.path().join("data"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("setpriv");
    let collector = Collector {
        child: KillOnDrop(child),
        addr,
        dir,
        log: Default::default(),
        cli_args: Vec::new(),
    };
    wait_until("the collector answering", Duration::from_secs(30), || {
        Command::new(vigil_bin())
            .args(["hosts", "--collector", &collector.addr, "--json"])
            .output()
            .is_ok_and(|o| o.status.success())
    });
    let none = "0".repeat(16);
    let status = std::fs::read_to_string(format!("/proc/{}/status", collector.pid())).unwrap();
    for field in ["CapEff", "CapPrm", "CapInh", "CapBnd", "CapAmb"] {
        let v = status
            .lines()
            .find_map(|l| l.strip_prefix(&format!("{field}:")))
            .map(str::trim)
            .unwrap_or_default();
        assert_eq!(v, none, "{field}");
    }
    let agent = RealAgent::start(&collector, "to-unprivileged");
    agent.keeps_being_acked(&collector, 2);
    agent.stop();
}
