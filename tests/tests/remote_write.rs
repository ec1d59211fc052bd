//! Remote write against two real engines from Debian's packages, started here on
//! loopback: Prometheus (`--web.enable-remote-write-receiver`) and VictoriaMetrics.
//! 20 simulated agents stream five minutes of samples each (300, one a second) while
//! both engines are stopped for 60 s in the middle; afterwards each engine is queried
//! and holds every sample, with its value.
use std::{
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use tokio_stream::StreamExt as _;
use vigil_proto::v1::{collector_client::CollectorClient, Batch, HostIdentity, HostMetrics};
use vigil_tests::{daemons::wait_until, KillOnDrop};

const AGENTS: u64 = 20;
const SAMPLES: u64 = 300;

fn ok(url: &str) -> bool {
    Command::new("curl")
        .args(["-sf", "-o", "/dev/null", "--max-time", "2", url])
        .status()
        .is_ok_and(|s| s.success())
}

fn query(base: &str, q: &str, time: i64) -> serde_json::Value {
    let out = Command::new("curl")
        .args([
            "-sf",
            "--max-time",
            "20",
            "-G",
            &format!("{base}/api/v1/query"),
            "--data-urlencode",
        ])
        .arg(format!("query={q}"))
        .args(["--data-urlencode", &format!("time={time}")])
        .output()
        .expect("curl");
    serde_json::from_slice(&out.stdout).unwrap_or(serde_json::Value::Null)
}

/// Per agent_id, the value of an instant vector query.
fn by_agent(v: &serde_json::Value) -> std::collections::BTreeMap<String, f64> {
    v["data"]["result"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|r| {
            Some((
                r["metric"]["agent_id"].as_str()?.to_string(),
                r["value"][1].as_str()?.parse().ok()?,
            ))
        })
        .collect()
}

/// An engine that can be stopped and started again on the same port and data.
struct Engine {
    name: &'static str,
    cmd: Vec<String>,
    ready: String,
    base: String,
    child: Option<KillOnDrop>,
}

impl Engine {
    fn start(&mut self) {
        let child = Command::new(&self.cmd[0])
            .args(&self.cmd[1..])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("{} ({e}): `cargo xtask setup` installs it", self.cmd[0]));
        self.child = Some(KillOnDrop(child));
        let ready = self.ready.clone();
        wait_until(
            &format!("{} ready", self.name),
            Duration::from_secs(60),
            || ok(&ready),
        );
    }

    /// SIGTERM and wait: an outage that loses nothing the engine took.
    fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(c.0.id() as i32),
                nix::sys::signal::Signal::SIGTERM,
            );
            let _ = c.0.wait();
        }
    }
}

fn collector_counter(metrics: &str, name: &str, url: &str) -> f64 {
    let text = Command::new("curl")
        .args(["-sf", "--max-time", "5", metrics])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
        .unwrap_or_default();
    text.lines()
        .find(|l| l.starts_with(name) && l.contains(&format!("url=\"{url}\"")))
        .and_then(|l| l.rsplit(' ').next()?.parse().ok())
        .unwrap_or(f64::NAN)
}

#[test]
fn every_sample_reaches_prometheus_and_victoriametrics_across_an_outage() {
    let dir = tempfile::tempdir().unwrap();
    let (pp, vp) = (vigil_tests::free_port(), vigil_tests::free_port());
    let mut prom = Engine {
        name: "Prometheus",
        cmd: vec![
            "prometheus".into(),
            "--web.enable-remote-write-receiver".into(),
            format!("--web.listen-address=127.0.0.1:{pp}"),
            format!("--storage.tsdb.path={}", dir.path().join("prom").display()),
            format!("--config.file={}", dir.path().join("prom.yml").display()),
        ],
        ready: format!("http://127.0.0.1:{pp}/-/ready"),
        base: format!("http://127.0.0.1:{pp}"),
        child: None,
    };
    std::fs::write(
        dir.path().join("prom.yml"),
        "global:\n  scrape_interval: 1m\n",
    )
    .unwrap();
    let mut vm = Engine {
        name: "VictoriaMetrics",
        cmd: vec![
            "victoria-metrics".into(),
            format!("-httpListenAddr=127.0.0.1:{vp}"),
            format!("-storageDataPath={}", dir.path().join("vm").display()),
            "-retentionPeriod=1".into(),
            // Show samples as soon as they are in (the default hides the last 30 s).
            "-search.latencyOffset=0s".into(),
            "-search.disableCache".into(),
            // A request the engine took but whose answer was lost (the outage) is sent
            // again: samples of the same series and time are one sample.
            "-dedup.minScrapeInterval=1ms".into(),
        ],
        ready: format!("http://127.0.0.1:{vp}/health"),
        base: format!("http://127.0.0.1:{vp}"),
        child: None,
    };
    prom.start();
    vm.start();
    let prom_url = format!("{}/api/v1/write", prom.base);
    let vm_url = format!("{}/api/v1/write", vm.base);
    let metrics = format!("127.0.0.1:{}", vigil_tests::free_port());
    let collector = vigil_tests::daemons::Collector::start(&[
        "--remote-write",
        &prom_url,
        "--remote-write",
        &vm_url,
        "--metrics-listen",
        &metrics,
    ]);
    let metrics_url = format!("http://{metrics}/metrics");

    // Five minutes of samples per agent, ending now, sent over about two minutes;
    // both engines are down for 60 s from about 30 s in.
    let end_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64;
    let first_ms = end_ms - (SAMPLES as i64 - 1) * 1000;
    let value = |a: u64, seq: u64| (a * 1000 + seq) as f64;
    let grpc = collector.url();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let started = Instant::now();
    let sender = std::thread::spawn(move || {
        rt.block_on(async move {
            let mut tasks = Vec::new();
            for a in 0..AGENTS {
                let grpc = grpc.clone();
                tasks.push(tokio::spawn(async move {
                    let agent_id = format!("rw-{a:02}");
                    let mut client = CollectorClient::connect(grpc).await.expect("connect");
                    let id = agent_id.clone();
                    let batches = tokio_stream::iter(1..=SAMPLES).then(move |seq| {
                        let id = id.clone();
                        async move {
                            // 0.4 s per batch: about two minutes for the 300.
                            tokio::time::sleep(Duration::from_millis(400)).await;
                            Batch {
                                agent_id: id.clone(),
                                epoch: 1,
                                sequence: seq,
                                host: Some(HostIdentity {
                                    agent_id: id.clone(),
                                    hostname: id,
                                    ..Default::default()
                                }),
                                metrics: vec![HostMetrics {
                                    time_unix_ms: first_ms + (seq as i64 - 1) * 1000,
                                    cpu_usage_percent: value(a, seq),
                                    memory_total_bytes: 1 << 30,
                                    ..Default::default()
                                }],
                                ..Default::default()
                            }
                        }
                    });
                    let mut acks = client.stream(batches).await.expect("stream").into_inner();
                    let mut n = 0;
                    while let Some(ack) = acks.next().await {
                        ack.expect("ack");
                        n += 1;
                    }
                    assert_eq!(n, SAMPLES, "{agent_id}: every batch acked");
                }));
            }
            for t in tasks {
                t.await.expect("agent");
            }
        })
    });
    while started.elapsed() < Duration::from_secs(30) {
        std::thread::sleep(Duration::from_millis(200));
    }
    prom.stop();
    vm.stop();
    let down = Instant::now();
    // The forwarders retry meanwhile; the collector says so.
    wait_until("retries during the outage", Duration::from_secs(60), || {
        collector_counter(&metrics_url, "vigil_remote_write_retries_total", &prom_url) > 0.0
            && collector_counter(&metrics_url, "vigil_remote_write_retries_total", &vm_url) > 0.0
    });
    while down.elapsed() < Duration::from_secs(60) {
        std::thread::sleep(Duration::from_millis(200));
    }
    prom.start();
    vm.start();
    sender.join().expect("the simulated agents");

    let total = (AGENTS * SAMPLES * 12) as f64;
    for url in [&prom_url, &vm_url] {
        wait_until(
            &format!("the backlog to {url} drained"),
            Duration::from_secs(120),
            || {
                collector_counter(&metrics_url, "vigil_remote_write_samples_sent_total", url)
                    >= total
            },
        );
        assert_eq!(
            collector_counter(
                &metrics_url,
                "vigil_remote_write_samples_dropped_total",
                url
            ),
            0.0
        );
        assert_eq!(
            collector_counter(&metrics_url, "vigil_remote_write_samples_lost_total", url),
            0.0
        );
    }
    // Each engine holds every sample of every agent, with its value.
    let at = end_ms / 1000 + 1;
    let expected_sum = |a: u64| (1..=SAMPLES).map(|s| value(a, s)).sum::<f64>();
    for engine in [&prom, &vm] {
        let mut counts = Default::default();
        wait_until(
            &format!("every sample in {}", engine.name),
            Duration::from_secs(60),
            || {
                counts = by_agent(&query(
                    &engine.base,
                    "count_over_time(vigil_host_cpu_usage_percent[10m])",
                    at,
                ));
                counts.len() as u64 == AGENTS && counts.values().all(|n| *n == SAMPLES as f64)
            },
        );
        let sums = by_agent(&query(
            &engine.base,
            "sum_over_time(vigil_host_cpu_usage_percent[10m])",
            at,
        ));
        for a in 0..AGENTS {
            assert_eq!(
                sums.get(&format!("rw-{a:02}")),
                Some(&expected_sum(a)),
                "{}: rw-{a:02}",
                engine.name
            );
        }
        let mem = by_agent(&query(
            &engine.base,
            "count_over_time(vigil_host_memory_total_bytes[10m])",
            at,
        ));
        assert!(
            mem.values().all(|n| *n == SAMPLES as f64),
            "{}: {mem:?}",
            engine.name
        );
    }
    drop(collector);
}

/// `n` batches (one sample each, one a second ending at `end_ms`) from each of
/// `agents` simulated agents, every one acked.
fn send_samples(grpc: String, agents: u64, n: u64, end_ms: i64) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async move {
        for a in 0..agents {
            let agent_id = format!("rwtls-{a:02}");
            let mut client = CollectorClient::connect(grpc.clone())
                .await
                .expect("connect");
            let batches: Vec<Batch> = (1..=n)
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
                        time_unix_ms: end_ms - (n - seq) as i64 * 1000,
                        cpu_usage_percent: seq as f64,
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
            let mut acked = 0;
            while let Some(ack) = acks.next().await {
                ack.expect("ack");
                acked += 1;
            }
            assert_eq!(acked, n, "{agent_id}: every batch acked");
        }
    });
}

/// Remote write over mutual TLS to a real Prometheus serving https and asking every
/// client for a certificate from the test's CA (`--web.config.file`): the endpoint
/// configured with that CA and a client certificate gets every sample; one without a
/// client certificate is refused at the handshake, and one that trusts another CA
/// refuses the server: both retry, send nothing and lose nothing.
#[test]
fn remote_write_over_mutual_tls_and_what_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let vigil = vigil_tests::vigil_bin();
    for args in [
        vec!["certs", "init", "--dir", "pki"],
        vec!["certs", "issue", "--dir", "pki", "--collector", "127.0.0.1"],
        vec![
            "certs",
            "issue",
            "--dir",
            "pki",
            "--operator",
            "remote-write",
        ],
        vec!["certs", "init", "--dir", "other"],
    ] {
        let out = Command::new(&vigil)
            .args(&args)
            .current_dir(d)
            .output()
            .unwrap();
        assert!(out.status.success(), "vigil {args:?}: {out:?}");
    }
    let pki = d.join("pki");
    let file = |name: &str| pki.join(name).display().to_string();
    let pp = vigil_tests::free_port();
    std::fs::write(d.join("prom.yml"), "global:\n  scrape_interval: 1m\n").unwrap();
    std::fs::write(
        d.join("web.yml"),
        format!(
            "tls_server_config:\n  cert_file: {}\n  key_file: {}\n  client_auth_type: RequireAndVerifyClientCert\n  client_ca_file: {}\n",
            file("collector-127.0.0.1.pem"),
            file("collector-127.0.0.1.key"),
            file("ca.pem")
        ),
    )
    .unwrap();
    let base = format!("https://127.0.0.1:{pp}");
    let curl_tls = [
        "--cacert".to_string(),
        file("ca.pem"),
        "--cert".into(),
        file("operator-remote-write.pem"),
        "--key".into(),
        file("operator-remote-write.key"),
    ];
    let mut prom = Engine {
        name: "Prometheus (https, client certificates required)",
        cmd: vec![
            "prometheus".into(),
            "--web.enable-remote-write-receiver".into(),
            format!("--web.listen-address=127.0.0.1:{pp}"),
            format!("--web.config.file={}", d.join("web.yml").display()),
            format!("--storage.tsdb.path={}", d.join("prom").display()),
            format!("--config.file={}", d.join("prom.yml").display()),
        ],
        ready: String::new(),
        base: base.clone(),
        child: None,
    };
    // Started by hand: readiness is over https with a client certificate.
    let child = Command::new(&prom.cmd[0])
        .args(&prom.cmd[1..])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("prometheus: `cargo xtask setup` installs it");
    prom.child = Some(KillOnDrop(child));
    let curl = |extra: &[&str]| {
        Command::new("curl")
            .args(["-sf", "--max-time", "20"])
            .args(&curl_tls)
            .args(extra)
            .output()
            .expect("curl")
    };
    wait_until(
        "Prometheus ready over https",
        Duration::from_secs(60),
        || {
            curl(&["-o", "/dev/null", &format!("{base}/-/ready")])
                .status
                .success()
        },
    );
    // The server really asks for a certificate: without one curl is refused.
    let bare = Command::new("curl")
        .args(["-sf", "--max-time", "5", "--cacert", &file("ca.pem")])
        .arg(format!("{base}/-/ready"))
        .output()
        .unwrap();
    assert!(
        !bare.status.success(),
        "Prometheus let in a client without a certificate"
    );

    let good = format!("{base}/api/v1/write");
    let no_cert = format!("{base}/api/v1/write?client=none");
    let other_ca = format!("{base}/api/v1/write?ca=other");
    let metrics = format!("127.0.0.1:{}", vigil_tests::free_port());
    std::fs::write(
        d.join("collector.toml"),
        format!(
            "[[remote_write]]\nurl = \"{good}\"\ntls_ca = \"{ca}\"\ntls_cert = \"{cert}\"\ntls_key = \"{key}\"\n\n\
             [[remote_write]]\nurl = \"{no_cert}\"\ntls_ca = \"{ca}\"\n\n\
             [[remote_write]]\nurl = \"{other_ca}\"\ntls_ca = \"{other}\"\ntls_cert = \"{cert}\"\ntls_key = \"{key}\"\n",
            ca = file("ca.pem"),
            cert = file("operator-remote-write.pem"),
            key = file("operator-remote-write.key"),
            other = d.join("other/ca.pem").display(),
        ),
    )
    .unwrap();
    let collector = vigil_tests::daemons::Collector::start(&[
        "--config",
        d.join("collector.toml").to_str().unwrap(),
        "--metrics-listen",
        &metrics,
    ]);
    let metrics_url = format!("http://{metrics}/metrics");
    const N: u64 = 30;
    let end_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64;
    send_samples(collector.url(), 2, N, end_ms);

    let total = (2 * N * 12) as f64;
    wait_until(
        "every sample sent over mTLS",
        Duration::from_secs(60),
        || collector_counter(&metrics_url, "vigil_remote_write_samples_sent_total", &good) >= total,
    );
    for refused in [&no_cert, &other_ca] {
        wait_until(
            &format!("{refused} retried"),
            Duration::from_secs(60),
            || collector_counter(&metrics_url, "vigil_remote_write_retries_total", refused) > 0.0,
        );
        for counter in [
            "vigil_remote_write_samples_sent_total",
            "vigil_remote_write_samples_dropped_total",
            "vigil_remote_write_samples_lost_total",
        ] {
            assert_eq!(
                collector_counter(&metrics_url, counter, refused),
                0.0,
                "{counter} for {refused}"
            );
        }
    }
    // Prometheus holds every sample, read back over https.
    let at = end_ms / 1000 + 1;
    let mut counts = Default::default();
    wait_until(
        "every sample in Prometheus",
        Duration::from_secs(60),
        || {
            let out = curl(&[
                "-G",
                &format!("{base}/api/v1/query"),
                "--data-urlencode",
                "query=count_over_time(vigil_host_cpu_usage_percent[10m])",
                "--data-urlencode",
                &format!("time={at}"),
            ]);
            counts =
                by_agent(&serde_json::from_slice(&out.stdout).unwrap_or(serde_json::Value::Null));
            counts.len() == 2 && counts.values().all(|n| *n == N as f64)
        },
    );
    eprintln!(
        "over mTLS: {} samples sent, Prometheus counts per agent {counts:?}; refused endpoints retried {} and {} times",
        collector_counter(&metrics_url, "vigil_remote_write_samples_sent_total", &good),
        collector_counter(&metrics_url, "vigil_remote_write_retries_total", &no_cert),
        collector_counter(&metrics_url, "vigil_remote_write_retries_total", &other_ca),
    );
    // A client certificate without its key is refused at start, naming the field.
    std::fs::write(
        d.join("half.toml"),
        format!(
            "[[remote_write]]\nurl = \"{good}\"\ntls_cert = \"{}\"\n",
            file("operator-remote-write.pem")
        ),
    )
    .unwrap();
    let out = vigil_tests::collector_command()
        .args(["--check-config", "--tls", "off", "--config"])
        .arg(d.join("half.toml"))
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && text.contains("remote_write[0].tls_cert"),
        "{out:?}"
    );
    drop(collector);
}
