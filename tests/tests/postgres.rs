//! Several collectors on one PostgreSQL (Debian's postgresql, started here on loopback
//! in a directory of its own): every batch is stored exactly once whichever collector
//! it reaches, resends and races between collectors included, a collector killed
//! mid-stream loses nothing its peer does not take, and the Fleet API answers the same
//! from every collector. The witness is PostgreSQL itself (psql), besides the API.
use std::{
    path::PathBuf,
    process::{Command, Stdio},
    time::Duration,
};

use tokio_stream::StreamExt as _;
use vigil_proto::v1::{collector_client::CollectorClient, Batch, HostIdentity, HostMetrics};
use vigil_tests::{daemons::wait_until, KillOnDrop};

/// Debian's PostgreSQL server programs (/usr/lib/postgresql/VERSION/bin).
fn pg_bin(program: &str) -> PathBuf {
    let mut versions: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
        .expect("/usr/lib/postgresql: `cargo xtask setup` installs postgresql")
        .flatten()
        .map(|e| e.path().join("bin"))
        .filter(|p| p.join(program).exists())
        .collect();
    versions.sort();
    versions
        .pop()
        .map(|b| b.join(program))
        .unwrap_or_else(|| panic!("no {program} under /usr/lib/postgresql/*/bin"))
}

/// A PostgreSQL server of the test's own, run by the `postgres` user (it refuses root)
/// in a fresh cluster with trust authentication on loopback only.
struct Postgres {
    _child: KillOnDrop,
    port: u16,
    dir: PathBuf,
}

impl Postgres {
    fn start() -> Self {
        let dir = PathBuf::from(format!("/tmp/vigil-test-pg-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let chown = Command::new("chown")
            .args(["-R", "postgres:postgres"])
            .arg(&dir)
            .status()
            .unwrap();
        assert!(
            chown.success(),
            "chown to postgres (the package makes the user)"
        );
        let data = dir.join("data");
        let out = Command::new("runuser")
            .args(["-u", "postgres", "--"])
            .arg(pg_bin("initdb"))
            .args(["--auth=trust", "--username=vigil", "--encoding=UTF8", "-D"])
            .arg(&data)
            .output()
            .unwrap();
        assert!(out.status.success(), "initdb: {out:?}");
        let port = vigil_tests::free_port();
        let child = Command::new("runuser")
            .args(["-u", "postgres", "--"])
            .arg(pg_bin("postgres"))
            .arg("-D")
            .arg(&data)
            .args(["-p", &port.to_string(), "-k"])
            .arg(&dir)
            .args(["-c", "listen_addresses=127.0.0.1", "-c", "fsync=on"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let pg = Self {
            _child: KillOnDrop(child),
            port,
            dir,
        };
        wait_until("PostgreSQL ready", Duration::from_secs(60), || {
            Command::new(pg_bin("pg_isready"))
                .args(["-q", "-h", "127.0.0.1", "-p", &port.to_string()])
                .status()
                .is_ok_and(|s| s.success())
        });
        let out = Command::new(pg_bin("createdb"))
            .args([
                "-h",
                "127.0.0.1",
                "-p",
                &port.to_string(),
                "-U",
                "vigil",
                "vigil",
            ])
            .output()
            .unwrap();
        assert!(out.status.success(), "createdb: {out:?}");
        pg
    }

    fn url(&self) -> String {
        format!("postgres://vigil@127.0.0.1:{}/vigil", self.port)
    }

    /// One query's rows, as psql prints them unaligned (`|` between columns).
    fn query(&self, sql: &str) -> Vec<String> {
        let out = Command::new(pg_bin("psql"))
            .args([
                "-X",
                "-A",
                "-t",
                "-h",
                "127.0.0.1",
                "-p",
                &self.port.to_string(),
            ])
            .args(["-U", "vigil", "-d", "vigil", "-c", sql])
            .output()
            .unwrap();
        assert!(out.status.success(), "psql {sql}: {out:?}");
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .map(str::to_string)
            .filter(|l| !l.is_empty())
            .collect()
    }
}

impl Drop for Postgres {
    fn drop(&mut self) {
        // The server goes with its KillOnDrop; then its files.
        let _ = Command::new(pg_bin("pg_ctl"))
            .args(["-D"])
            .arg(self.dir.join("data"))
            .args(["-m", "immediate", "stop"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn batch(agent: &str, seq: u64, cpu: f64) -> Batch {
    Batch {
        agent_id: agent.into(),
        epoch: 7,
        sequence: seq,
        host: Some(HostIdentity {
            agent_id: agent.into(),
            hostname: format!("host-{agent}"),
            ..Default::default()
        }),
        metrics: vec![HostMetrics {
            time_unix_ms: 1_700_000_000_000 + seq as i64 * 1000,
            cpu_usage_percent: cpu,
            memory_total_bytes: 1 << 30,
            ..Default::default()
        }],
        ..Default::default()
    }
}

/// Streams `batches` to `grpc` and returns the sequences acked as delivered (stored,
/// or stored before with the same content), not those acked as conflicts.
async fn send(grpc: &str, batches: Vec<Batch>) -> Vec<u64> {
    let mut client = CollectorClient::connect(grpc.to_string())
        .await
        .expect("connect");
    let mut acks = client
        .stream(tokio_stream::iter(batches))
        .await
        .expect("stream")
        .into_inner();
    let mut acked = Vec::new();
    while let Some(ack) = acks.next().await {
        match ack {
            Ok(a) if !a.conflict => acked.push(a.sequence),
            Ok(_) => {}
            Err(_) => break,
        }
    }
    acked
}

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

const AGENTS: u64 = 6;
const N: u64 = 200;

#[test]
fn two_collectors_on_one_postgresql_store_every_batch_exactly_once() {
    let pg = Postgres::start();
    let url = pg.url();
    let a = vigil_tests::daemons::Collector::start(&["--postgres-url", &url]);
    let b = vigil_tests::daemons::Collector::start(&["--postgres-url", &url]);
    // It says where its data is, without the password.
    let with_password = url.replace("vigil@", "vigil:hunter2@");
    let out = vigil_tests::collector_command()
        .args([
            "--check-config",
            "--tls",
            "off",
            "--postgres-url",
            &with_password,
        ])
        .output()
        .unwrap();
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success()
            && said.contains("data in PostgreSQL postgres://vigil:***@127.0.0.1")
            && !said.contains("hunter2"),
        "{out:?}"
    );
    let rt = rt();
    // Each agent sends 1..=120 to A and 81..=N to B at the same time: 81..=120 reach
    // both collectors, racing; one stores each, the other finds it stored.
    rt.block_on(async {
        let mut tasks = Vec::new();
        for i in 0..AGENTS {
            let agent = format!("pg-{i}");
            let (ua, ub) = (a.url(), b.url());
            let first: Vec<Batch> = (1..=120).map(|s| batch(&agent, s, s as f64)).collect();
            let second: Vec<Batch> = (81..=N).map(|s| batch(&agent, s, s as f64)).collect();
            tasks.push(tokio::spawn(async move { send(&ua, first).await.len() }));
            tasks.push(tokio::spawn(async move { send(&ub, second).await.len() }));
        }
        for t in tasks {
            t.await.unwrap();
        }
    });
    // A conflicting batch (a stored sequence with other content) through B.
    let conflicting = rt.block_on(send(&b.url(), vec![batch("pg-0", 5, 99.0)]));
    assert!(
        conflicting.is_empty(),
        "a conflict is not acked as delivered"
    );

    // PostgreSQL says: every sequence of every agent once, no gaps, the first content.
    let rows = pg.query(
        "SELECT agent_id, count(*), count(DISTINCT sequence), min(sequence), max(sequence) FROM batches GROUP BY agent_id ORDER BY agent_id",
    );
    assert_eq!(rows.len() as u64, AGENTS, "{rows:?}");
    for r in &rows {
        let f: Vec<&str> = r.split('|').collect();
        assert_eq!(
            &f[1..],
            &[&*N.to_string(), &*N.to_string(), "1", &*N.to_string()],
            "{r}"
        );
    }
    let samples =
        pg.query("SELECT agent_id, count(*), sum(time_ms) FROM samples GROUP BY agent_id");
    let time_sum: i64 = (1..=N as i64).map(|s| 1_700_000_000_000 + s * 1000).sum();
    for r in &samples {
        assert_eq!(r.split('|').nth(1), Some(&*N.to_string()), "{r}");
        assert_eq!(r.split('|').nth(2), Some(&*time_sum.to_string()), "{r}");
    }
    assert_eq!(samples.len() as u64, AGENTS);
    // The Fleet API from either collector: the same hosts, totals and counts.
    for c in [&a, &b] {
        for i in 0..AGENTS {
            let h = c.host(&format!("pg-{i}")).expect("host listed");
            assert_eq!(h["batches"], N, "{h}");
            assert_eq!(h["gaps"], 0, "{h}");
            assert_eq!(h["duplicates"], 40, "81..=120 went to both: {h}");
            assert_eq!(h["conflicts"], if i == 0 { 1 } else { 0 }, "{h}");
        }
    }
    let history = |c: &vigil_tests::daemons::Collector| {
        vigil_tests::vigil_json(&[
            "history",
            "pg-3",
            "--metric",
            "cpu.usage_percent",
            "--since",
            "50000h",
            "--collector",
            &c.addr,
            "--json",
        ])
    };
    let (ha, hb) = (history(&a), history(&b));
    assert_eq!(ha, hb, "both collectors answer from the same store");
    assert_eq!(
        ha["points"].as_array().map(Vec::len),
        Some(N as usize),
        "{ha}"
    );
}

#[test]
fn a_collector_killed_mid_stream_loses_nothing_its_peer_takes() {
    let pg = Postgres::start();
    let url = pg.url();
    let mut a = vigil_tests::daemons::Collector::start(&["--postgres-url", &url]);
    let b = vigil_tests::daemons::Collector::start(&["--postgres-url", &url]);
    let rt = rt();
    let agent = "pg-failover";
    let all: Vec<Batch> = (1..=2000).map(|s| batch(agent, s, s as f64)).collect();
    // Stream to A and kill it (SIGKILL) once it has acked some: what it acked is
    // committed; the rest goes to B, as an agent whose collector died does.
    // Paced (1 ms a batch, about 2 s in all) so the kill lands mid-stream however fast
    // the machine; the kill waits for A's first 100 acks (a condition, not a time).
    let (ua, a_pid) = (a.url(), a.pid());
    let acked_by_a = rt.block_on(async {
        let (tx, mut acks_rx) = tokio::sync::watch::channel(0usize);
        let stream = tokio::spawn(async move {
            let mut client = CollectorClient::connect(ua).await.expect("connect");
            let paced = tokio_stream::iter(all).then(|b| async move {
                tokio::time::sleep(Duration::from_millis(1)).await;
                b
            });
            let mut acks = client.stream(paced).await.expect("stream").into_inner();
            let mut acked = Vec::new();
            while let Some(Ok(ack)) = acks.next().await {
                acked.push(ack.sequence);
                let _ = tx.send(acked.len());
            }
            acked
        });
        while *acks_rx.borrow_and_update() < 100 {
            if acks_rx.changed().await.is_err() {
                break;
            }
        }
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(a_pid as i32),
            nix::sys::signal::Signal::SIGKILL,
        );
        stream.await.unwrap()
    });
    let status = a.child.0.wait().expect("waiting for collector A");
    assert!(!status.success(), "collector A was killed: {status:?}");
    assert!(!a.alive(), "collector A was killed");
    assert!(
        (acked_by_a.len() as u64) < 2000,
        "A was killed before the end ({} acked)",
        acked_by_a.len()
    );
    let first_unacked = acked_by_a.iter().max().copied().unwrap_or(0) + 1;
    // The agent resends from its oldest unacked batch (here: everything after the
    // last ack, and for good measure the last 50 acked too).
    let from = first_unacked.saturating_sub(50).max(1);
    let rest: Vec<Batch> = (from..=2000).map(|s| batch(agent, s, s as f64)).collect();
    let acked_by_b = rt.block_on(send(&b.url(), rest));
    assert_eq!(
        acked_by_b.len() as u64,
        2000 - from + 1,
        "B acked every resent batch"
    );
    let rows = pg.query(&format!(
        "SELECT count(*), count(DISTINCT sequence), min(sequence), max(sequence) FROM batches WHERE agent_id = '{agent}'"
    ));
    assert_eq!(
        rows,
        vec!["2000|2000|1|2000".to_string()],
        "A acked {} before it died",
        acked_by_a.len()
    );
    let h = b.host(agent).expect("host");
    assert_eq!(h["batches"], 2000, "{h}");
    assert_eq!(h["gaps"], 0, "{h}");
    eprintln!(
        "A acked {} batches before SIGKILL; B took the rest from {from} ({} duplicates)",
        acked_by_a.len(),
        h["duplicates"]
    );
}

/// A collector on a port of the test's choosing (so it can come back on the same
/// address), storing in `url`; stderr drained.
fn collector_on(port: u16, url: &str, data: &std::path::Path) -> KillOnDrop {
    let mut cmd = vigil_tests::collector_command();
    cmd.args([
        "--listen",
        &format!("127.0.0.1:{port}"),
        "--postgres-url",
        url,
        "--data-dir",
    ])
    .arg(data)
    .env("VIGIL_LOG", "warn")
    .stderr(Stdio::piped())
    .stdout(Stdio::null());
    let (child, _addr, lines) = vigil_tests::collector_address(&mut cmd);
    std::thread::spawn(move || lines.map_while(Result::ok).for_each(drop));
    KillOnDrop(child)
}

fn stored_batches(pg: &Postgres, agent: &str) -> (u64, u64, u64, u64) {
    let row = pg.query(&format!(
        "SELECT count(*), count(DISTINCT sequence), COALESCE(min(sequence), 0), COALESCE(max(sequence), 0) FROM batches WHERE agent_id = '{agent}'"
    ));
    let f: Vec<u64> = row[0].split('|').map(|v| v.parse().unwrap()).collect();
    (f[0], f[1], f[2], f[3])
}

/// A real agent given two collectors on one PostgreSQL: it streams to the first; the
/// first is killed and it fails over to the second; the first comes back, the second
/// is killed and it fails back. Every batch it made is stored exactly once, no gaps.
#[test]
fn an_agent_fails_over_between_collectors_and_every_batch_is_stored_once() {
    let pg = Postgres::start();
    let url = pg.url();
    let dir = tempfile::tempdir().unwrap();
    let (pa, pb) = (vigil_tests::free_port(), vigil_tests::free_port());
    let mut a = Some(collector_on(pa, &url, &dir.path().join("a")));
    let mut b = Some(collector_on(pb, &url, &dir.path().join("b")));
    let agent_dir = tempfile::tempdir().unwrap();
    let config = agent_dir.path().join("agent.toml");
    std::fs::write(
        &config,
        format!(
            "collector = [\"127.0.0.1:{pa}\", \"127.0.0.1:{pb}\"]\n[probes]\nsyscalls = false\nretransmits = false\n[detect]\nenabled = false\n"
        ),
    )
    .unwrap();
    let id = "pg-real-agent";
    let agent = Command::new(vigil_tests::daemon_bin("agent"))
        .args(["--interval", "1s", "--agent-id", id, "--config"])
        .arg(&config)
        .arg("--data-dir")
        .arg(agent_dir.path().join("data"))
        .arg("--socket")
        .arg(agent_dir.path().join("agent.sock"))
        .stdout(Stdio::null())
        .stderr(
            std::fs::File::create(agent_dir.path().join("agent.log"))
                .map_or_else(|_| Stdio::null(), Stdio::from),
        )
        .spawn()
        .unwrap();
    let mut agent = KillOnDrop(agent);
    let more = |n: u64, what: &str| {
        let start = stored_batches(&pg, id).0;
        wait_until(what, Duration::from_secs(60), || {
            stored_batches(&pg, id).0 >= start + n
        });
    };
    more(3, "batches through the first collector");
    drop(a.take()); // SIGKILL
    more(
        3,
        "batches through the second collector after the first was killed",
    );
    a = Some(collector_on(pa, &url, &dir.path().join("a")));
    drop(b.take());
    more(
        3,
        "batches through the first collector again after the second was killed",
    );
    // Stop the agent (SIGTERM): it sends what is left and its spool says how many
    // batches it made.
    let _ = nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(agent.0.id() as i32),
        nix::sys::signal::Signal::SIGTERM,
    );
    let _ = agent.0.wait();
    let (count, distinct, min, max) = stored_batches(&pg, id);
    let log = std::fs::read_to_string(agent_dir.path().join("agent.log")).unwrap_or_default();
    assert_eq!(min, 1, "{log}");
    assert_eq!(
        (count, distinct),
        (max, max),
        "every sequence 1..={max} once: {log}"
    );
    assert!(log.contains("failing over to collector"), "{log}");
    eprintln!("{max} batches, each stored once, through two collectors that were killed in turn");
    drop(a);
}

/// A counter on a collector's /metrics for one remote-write URL (0 when absent).
fn rw_counter(metrics: &str, name: &str) -> f64 {
    let text = Command::new("curl")
        .args([
            "-sf",
            "--max-time",
            "5",
            &format!("http://{metrics}/metrics"),
        ])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
        .unwrap_or_default();
    text.lines()
        .find(|l| l.starts_with(name))
        .and_then(|l| l.rsplit(' ').next()?.parse().ok())
        .unwrap_or(0.0)
}

/// Per agent_id, `count_over_time(vigil_host_cpu_usage_percent[...])` in Prometheus.
fn prometheus_counts(base: &str, at: i64) -> std::collections::BTreeMap<String, f64> {
    let out = Command::new("curl")
        .args([
            "-sf",
            "--max-time",
            "20",
            "-G",
            &format!("{base}/api/v1/query"),
        ])
        .args([
            "--data-urlencode",
            "query=count_over_time(vigil_host_cpu_usage_percent[30m])",
        ])
        .args(["--data-urlencode", &format!("time={at}")])
        .output()
        .expect("curl");
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
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

/// Remote write from two collectors on one PostgreSQL, both configured with the same
/// Prometheus: one forwards (the other stands by), every sample reaches Prometheus
/// once whichever collector stored it; the forwarding collector is killed, the other
/// takes over from the shared cursor, and the rest arrives too.
#[test]
fn remote_write_from_collectors_sharing_postgresql_sends_every_sample_once() {
    let pg = Postgres::start();
    let url = pg.url();
    let dir = tempfile::tempdir().unwrap();
    let pp = vigil_tests::free_port();
    std::fs::write(
        dir.path().join("prom.yml"),
        "global:\n  scrape_interval: 1m\n",
    )
    .unwrap();
    let prom = Command::new("prometheus")
        .arg("--web.enable-remote-write-receiver")
        .arg(format!("--web.listen-address=127.0.0.1:{pp}"))
        .arg(format!(
            "--storage.tsdb.path={}",
            dir.path().join("prom").display()
        ))
        .arg(format!(
            "--config.file={}",
            dir.path().join("prom.yml").display()
        ))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("prometheus: `cargo xtask setup` installs it");
    let _prom = KillOnDrop(prom);
    let base = format!("http://127.0.0.1:{pp}");
    wait_until("Prometheus ready", Duration::from_secs(60), || {
        Command::new("curl")
            .args([
                "-sf",
                "-o",
                "/dev/null",
                "--max-time",
                "2",
                &format!("{base}/-/ready"),
            ])
            .status()
            .is_ok_and(|s| s.success())
    });
    let write = format!("{base}/api/v1/write");
    let (ma, mb) = (
        format!("127.0.0.1:{}", vigil_tests::free_port()),
        format!("127.0.0.1:{}", vigil_tests::free_port()),
    );
    let a = vigil_tests::daemons::Collector::start(&[
        "--postgres-url",
        &url,
        "--remote-write",
        &write,
        "--metrics-listen",
        &ma,
    ]);
    let b = vigil_tests::daemons::Collector::start(&[
        "--postgres-url",
        &url,
        "--remote-write",
        &write,
        "--metrics-listen",
        &mb,
    ]);
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64;
    // Recent sample times (Prometheus keeps the last hours in its head).
    let sample = |agent: &str, seq: u64| {
        let mut b = batch(agent, seq, seq as f64);
        b.metrics[0].time_unix_ms = now - 600_000 + seq as i64 * 1000;
        b
    };
    let rt = rt();
    // 1..=100 of each agent, half through each collector.
    for i in 0..2 {
        let agent = format!("pgrw-{i}");
        let first: Vec<Batch> = (1..=50).map(|s| sample(&agent, s)).collect();
        let second: Vec<Batch> = (51..=100).map(|s| sample(&agent, s)).collect();
        assert_eq!(rt.block_on(send(&a.url(), first)).len(), 50);
        assert_eq!(rt.block_on(send(&b.url(), second)).len(), 50);
    }
    let sent = |m: &str| rw_counter(m, "vigil_remote_write_samples_sent_total");
    wait_until(
        "200 samples of 12 series forwarded",
        Duration::from_secs(60),
        || sent(&ma) + sent(&mb) >= 2400.0,
    );
    let (sa, sb) = (sent(&ma), sent(&mb));
    assert!(
        sa + sb == 2400.0 && (sa == 0.0 || sb == 0.0),
        "one collector forwards, once: {sa} and {sb}"
    );
    // Kill the one forwarding; store more through the other: it takes over.
    let (forwarder, other, other_metrics) = if sa > 0.0 { (a, b, mb) } else { (b, a, ma) };
    drop(forwarder);
    for i in 0..2 {
        let agent = format!("pgrw-{i}");
        let more: Vec<Batch> = (101..=150).map(|s| sample(&agent, s)).collect();
        assert_eq!(rt.block_on(send(&other.url(), more)).len(), 50);
    }
    wait_until(
        "the standby took over from the shared cursor",
        Duration::from_secs(60),
        || sent(&other_metrics) >= 1200.0,
    );
    let mut counts = Default::default();
    wait_until(
        "every sample in Prometheus, once",
        Duration::from_secs(60),
        || {
            counts = prometheus_counts(&base, now / 1000 + 1);
            counts.len() == 2 && counts.values().all(|n| *n == 150.0)
        },
    );
    assert_eq!(
        sent(&other_metrics),
        1200.0,
        "the standby sent only what was new"
    );
    eprintln!(
        "Prometheus holds {counts:?}; the first forwarder sent {} samples, the standby 1200",
        sa.max(sb)
    );
}

/// The Fleet API's events (retransmits and findings the batches carried) from a
/// PostgreSQL store: the same, in order, from either collector, across pages.
#[test]
fn fleet_events_are_the_same_from_either_collector() {
    use vigil_proto::v1::{fleet_client::FleetClient, EventsRequest, Finding, TcpRetransmit};
    let pg = Postgres::start();
    let url = pg.url();
    let a = vigil_tests::daemons::Collector::start(&["--postgres-url", &url]);
    let b = vigil_tests::daemons::Collector::start(&["--postgres-url", &url]);
    let rt = rt();
    // Recent times: the collector refuses event times far from its clock.
    let t0 = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64
        - 600_000;
    let with_events = |seq: u64| {
        let mut x = batch("pg-events", seq, 1.0);
        x.retransmits = vec![TcpRetransmit {
            time_unix_ns: (t0 + 1000 * seq as i64) * 1_000_000,
            sport: seq as u32,
            dport: 443,
            ..Default::default()
        }];
        x.findings = vec![Finding {
            rule: format!("rule-{seq}"),
            time_unix_ms: t0 + 1000 * seq as i64 + 1,
            ..Default::default()
        }];
        x
    };
    // 1..=30 through A, 31..=60 through B: 120 events.
    assert_eq!(
        rt.block_on(send(&a.url(), (1..=30).map(with_events).collect()))
            .len(),
        30
    );
    assert_eq!(
        rt.block_on(send(&b.url(), (31..=60).map(with_events).collect()))
            .len(),
        30
    );
    let all = |c: &vigil_tests::daemons::Collector| {
        rt.block_on(async {
            let mut fleet = FleetClient::connect(c.url()).await.expect("fleet");
            let (mut out, mut token) = (Vec::new(), String::new());
            loop {
                let r = fleet
                    .events(EventsRequest {
                        since_unix_ms: t0,
                        limit: 25,
                        page_token: token.clone(),
                        ..Default::default()
                    })
                    .await
                    .expect("events")
                    .into_inner();
                out.extend(r.events);
                if r.next_page_token.is_empty() {
                    return out;
                }
                token = r.next_page_token;
            }
        })
    };
    let (ea, eb) = (all(&a), all(&b));
    assert_eq!(
        ea.len(),
        120,
        "60 retransmits and 60 findings, in pages of 25"
    );
    assert_eq!(ea, eb, "the same events from both collectors");
    assert!(ea.iter().all(|e| e
        .host
        .as_ref()
        .is_some_and(|h| h.hostname == "host-pg-events")));
}
