//! Chaos tests for delivery: real agents and collectors as processes, killed,
//! restarted, cut off and starved, and the collector's own count of what it stored
//! (`vigil hosts --json`: batches, last_seq, gaps, dropped_events) as the judge.
//! Every test stops by itself.
use std::{
    io::{BufRead as _, BufReader},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use serde_json::Value;
use vigil_tests::{
    daemon_bin, require_root, vigil_bin, vigil_json, KillOnDrop, NetnsPair, Workload,
};

const WORKLOAD: &str = env!("CARGO_BIN_EXE_vigil-workload");

/// Waits up to `max` for `cond`, polling; a timeout fails the test with `what`.
fn wait_until(what: &str, max: Duration, cond: impl FnMut() -> bool) {
    vigil_tests::daemons::wait_until(what, max, cond);
}

/// `bin` (the CLI, `vigil-agent`, `vigil-collector`) run inside network namespace
/// `netns` when given.
fn command(bin: std::path::PathBuf, netns: Option<&str>) -> Command {
    match netns {
        Some(ns) => {
            let mut c = Command::new("ip");
            c.args(["netns", "exec", ns]).arg(bin);
            c
        }
        None => Command::new(bin),
    }
}

/// A `vigil-collector` listening on `listen` (`127.0.0.1:0` for any port) with its
/// data in `dir`; returns once it is ready, with the address it says it bound.
fn start_collector(listen: &str, dir: &Path, netns: Option<&str>) -> (KillOnDrop, String) {
    let (child, addr, lines) = vigil_tests::collector_address(
        command(daemon_bin("collector"), netns)
            .args(["--listen", listen, "--data-dir"])
            .arg(dir)
            .stdout(Stdio::null())
            .stderr(Stdio::piped()),
    );
    std::thread::spawn(move || for _ in lines {});
    (KillOnDrop(child), addr)
}

/// An address for a collector that starts later: one a collector bound and named,
/// then stopped; the later one binds it again (tokio sets SO_REUSEADDR).
fn address_for_a_later_collector(dir: &Path) -> String {
    let (collector, addr) = start_collector("127.0.0.1:0", dir, None);
    drop(collector);
    addr
}

/// The agent's own counters (`vigil stats --json` `agent`) from its API in `dir`
/// (waiting out the first interval, before which the agent has no sample to show).
fn agent_self(dir: &Path) -> Value {
    let socket = dir.join("agent.sock");
    let mut last = String::new();
    let deadline = Instant::now() + Duration::from_secs(30);
    while Instant::now() < deadline {
        let out = Command::new(vigil_bin())
            .args(["stats", "--json", "--socket"])
            .arg(&socket)
            .output()
            .expect("vigil stats");
        if out.status.success() {
            let v: Value = serde_json::from_slice(&out.stdout).expect("stats JSON");
            return v["agent"].clone();
        }
        last = String::from_utf8_lossy(&out.stderr).into_owned();
        std::thread::sleep(Duration::from_millis(200));
    }
    panic!(
        "the agent's API at {} never answered: {last}",
        socket.display()
    );
}

/// The highest sequence the collector holds from `agent_id` (0 before the first).
fn stored_up_to(addr: &str, agent_id: &str, netns: Option<&str>) -> u64 {
    host_row(addr, agent_id, netns).map_or(0, |h| n(&h, "last_seq"))
}

/// Waits until the collector holds `agent_id`'s batches up to at least `seq`.
fn wait_stored(addr: &str, agent_id: &str, netns: Option<&str>, seq: u64) {
    wait_until(
        &format!("{agent_id}'s batches up to {seq} at the collector"),
        Duration::from_secs(60),
        || stored_up_to(addr, agent_id, netns) >= seq,
    );
}

/// Waits until the agent's spool holds at least `n` batches the collector has not acked.
fn wait_unacked(dir: &Path, n: u64) {
    wait_until(
        &format!("{n} unacked batches in the agent's spool"),
        Duration::from_secs(60),
        || agent_self(dir)["spool"]["unacked"].as_u64().unwrap_or(0) >= n,
    );
}

/// A running `vigil agent`, its stderr collected.
struct Agent {
    child: Child,
    stderr: Arc<Mutex<String>>,
    /// The thread reading stderr: done once the agent has exited and its pipe closed.
    reader: Option<std::thread::JoinHandle<()>>,
}

impl Agent {
    fn start(config: &Path, netns: Option<&str>) -> Self {
        // Ready (READY=1: probes attached, API listening) before the test goes on.
        let (mut child, _) = vigil_tests::spawn_ready(
            command(daemon_bin("agent"), netns)
                .arg("--config")
                .arg(config)
                .stdout(Stdio::null())
                .stderr(Stdio::piped()),
            Duration::from_secs(60),
        );
        let stderr = Arc::new(Mutex::new(String::new()));
        let sink = stderr.clone();
        let pipe = child.stderr.take().expect("stderr");
        let reader = Some(std::thread::spawn(move || {
            for line in BufReader::new(pipe).lines().map_while(Result::ok) {
                let mut s = sink.lock().unwrap();
                s.push_str(&line);
                s.push('\n');
            }
        }));
        let mut agent = Self {
            child,
            stderr,
            reader,
        };
        // What it logged up to READY (the spool's state, the probes) read in before
        // the test looks at it.
        agent.wait_for("tracing the host every", Duration::from_secs(10));
        agent
    }

    fn wait_for(&mut self, text: &str, timeout: Duration) {
        let start = Instant::now();
        while !self.stderr.lock().unwrap().contains(text) {
            if let Ok(Some(status)) = self.child.try_wait() {
                self.read_to_end();
                panic!(
                    "agent exited ({status}) before saying {text:?}: {}",
                    self.stderr.lock().unwrap()
                );
            }
            assert!(
                start.elapsed() < timeout,
                "agent never said {text:?}: {}",
                self.stderr.lock().unwrap()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// After the exit: everything it wrote to stderr is in `stderr`.
    fn read_to_end(&mut self) {
        if let Some(r) = self.reader.take() {
            r.join().expect("stderr reader");
        }
    }

    fn signal(&self, sig: nix::sys::signal::Signal) {
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(self.child.id() as i32), sig)
            .expect("signalling the agent");
    }

    fn is_running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// SIGTERM, then waits (a hang is a failure, not a slowness) for a clean exit.
    fn stop(mut self) -> String {
        self.signal(nix::sys::signal::Signal::SIGTERM);
        let start = Instant::now();
        loop {
            if let Some(status) = self.child.try_wait().expect("wait") {
                self.read_to_end();
                let out = self.stderr.lock().unwrap().clone();
                assert!(status.success(), "agent exited with {status}: {out}");
                return out;
            }
            assert!(
                start.elapsed() < Duration::from_secs(60),
                "agent hung after SIGTERM: {}",
                self.stderr.lock().unwrap()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn kill(mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// Writes an agent config: 1 s batches, the API at `dir/agent.sock` (the tests read the
/// agent's counters there), probes and detection off unless the extra TOML turns them on.
fn agent_config(
    dir: &Path,
    collector: &str,
    agent_id: &str,
    extra_top: &str,
    extra_sections: &str,
) -> PathBuf {
    let data = dir.join("agent");
    let text = format!(
        "interval = \"1s\"\ncollector = \"{collector}\"\nagent_id = \"{agent_id}\"\n\
         socket = \"{}\"\ndata_dir = \"{}\"\nshutdown_timeout = \"10s\"\n{extra_top}\n\
         {extra_sections}\n",
        dir.join("agent.sock").display(),
        data.display()
    );
    let text = if extra_sections.contains("[probes]") {
        text
    } else {
        format!("{text}\n[probes]\nsyscalls = false\nretransmits = false\n")
    };
    // Detection is tested in detect.rs; here it would only add probes to load.
    let text = if extra_sections.contains("[detect]") {
        text
    } else {
        format!("{text}\n[detect]\nenabled = false\n")
    };
    let path = dir.join("agent.toml");
    std::fs::write(&path, text).expect("writing the agent config");
    path
}

/// This agent's row in `vigil hosts --json`.
fn host_row(addr: &str, agent_id: &str, netns: Option<&str>) -> Option<Value> {
    let out = command(vigil_bin(), netns)
        .args(["hosts", "--collector", addr, "--json"])
        .output()
        .expect("vigil hosts");
    if !out.status.success() {
        return None;
    }
    let v: Value = serde_json::from_slice(&out.stdout).ok()?;
    v["hosts"]
        .as_array()?
        .iter()
        .find(|h| h["agent_id"] == agent_id)
        .cloned()
}

fn n(v: &Value, key: &str) -> u64 {
    v[key].as_u64().unwrap_or_else(|| panic!("{key} in {v}"))
}

fn dropped(v: &Value, stage: &str) -> u64 {
    v["dropped_events"][stage].as_u64().unwrap_or(0)
}

/// The collector holds every sequence from 1 to last_seq exactly once.
fn assert_complete(h: &Value) {
    assert_eq!(n(h, "gaps"), 0, "no sequence missing: {h}");
    assert_eq!(
        n(h, "batches"),
        n(h, "last_seq"),
        "1..=last_seq each stored once: {h}"
    );
}

/// The agent's last words: nothing left unacked in its spool.
fn assert_all_acked(stderr: &str) {
    assert!(
        stderr.contains("spool: 0 unacked"),
        "the agent left unacked batches: {stderr}"
    );
}

#[test]
fn collector_killed_and_restarted_three_times() {
    if !require_root("collector_killed_and_restarted_three_times") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let id = format!("chaos-restart-{}", std::process::id());
    let cdir = dir.path().join("collector");
    let (mut collector, addr) = start_collector("127.0.0.1:0", &cdir, None);
    let agent = Agent::start(&agent_config(dir.path(), &addr, &id, "", ""), None);
    for _ in 0..3 {
        // Ten batches stored, then the collector dies (SIGKILL) while the agent piles
        // up at least two more, and comes back on the same address.
        wait_stored(&addr, &id, None, stored_up_to(&addr, &id, None) + 10);
        drop(collector);
        wait_unacked(dir.path(), 2);
        collector = start_collector(&addr, &cdir, None).0;
    }
    wait_stored(&addr, &id, None, stored_up_to(&addr, &id, None) + 10);
    let out = agent.stop();
    assert_all_acked(&out);
    let h = host_row(&addr, &id, None).expect("agent listed");
    assert_complete(&h);
    assert!(
        n(&h, "last_seq") >= 40,
        "four rounds of at least 10 new batches each: {h}"
    );
    assert!(out.contains("reconnects"), "{out}");
}

#[test]
fn agent_killed_mid_stream_and_restarted() {
    if !require_root("agent_killed_mid_stream_and_restarted") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let id = format!("chaos-sigkill-{}", std::process::id());
    let (_collector, addr) = start_collector("127.0.0.1:0", &dir.path().join("collector"), None);
    let config = agent_config(dir.path(), &addr, &id, "", "");
    let agent = Agent::start(&config, None);
    wait_stored(&addr, &id, None, 5);
    let first_epoch = epoch_of(&agent.stderr.lock().unwrap());
    agent.kill();
    let before = host_row(&addr, &id, None).expect("agent listed");
    let agent = Agent::start(&config, None);
    assert_eq!(
        epoch_of(&agent.stderr.lock().unwrap()),
        first_epoch,
        "the spool (and its sequence) survives a SIGKILL"
    );
    wait_stored(&addr, &id, None, n(&before, "last_seq") + 4);
    let out = agent.stop();
    assert_all_acked(&out);
    let h = host_row(&addr, &id, None).expect("agent listed");
    assert_complete(&h);
    assert!(
        n(&h, "last_seq") > n(&before, "last_seq") + 3,
        "the restarted agent went on: {before} then {h}"
    );
}

fn epoch_of(stderr: &str) -> String {
    stderr
        .split("spool epoch ")
        .nth(1)
        .and_then(|s| s.split_whitespace().next())
        .unwrap_or_else(|| panic!("no epoch in {stderr}"))
        .to_string()
}

#[test]
fn link_down_for_twenty_seconds_then_catch_up() {
    if !require_root("link_down_for_twenty_seconds_then_catch_up") {
        return;
    }
    let net = NetnsPair::new("spool");
    let dir = tempfile::tempdir().unwrap();
    let addr = format!("{}:7470", NetnsPair::ADDR_B);
    let id = format!("chaos-link-{}", std::process::id());
    let _collector = start_collector(&addr, &dir.path().join("collector"), Some(&net.b));
    let config = agent_config(dir.path(), &addr, &id, "", "");
    let agent = Agent::start(&config, Some(&net.a));
    wait_stored(&addr, &id, Some(&net.b), 3);
    let agent_self = || agent_self(dir.path());
    vigil_tests::sh("ip", &["-n", &net.a, "link", "set", &net.dev_a, "down"]);
    // Down until the agent has spooled ten batches it could not send.
    wait_unacked(dir.path(), 10);
    let during = agent_self();
    vigil_tests::sh("ip", &["-n", &net.a, "link", "set", &net.dev_a, "up"]);
    assert!(
        during["spool"]["unacked"].as_u64().unwrap() >= 10,
        "the agent spooled while the link was down: {during}"
    );
    // Catch up: the collector gets everything the agent has spooled so far.
    let start = Instant::now();
    loop {
        let target = agent_self()["last_seq"].as_u64().unwrap();
        if let Some(h) = host_row(&addr, &id, Some(&net.b)) {
            if n(&h, "last_seq") >= target && n(&h, "gaps") == 0 {
                break;
            }
        }
        assert!(
            start.elapsed() < Duration::from_secs(90),
            "no catch-up 90 s after the link came back: {:?} vs {}",
            host_row(&addr, &id, Some(&net.b)),
            agent_self()
        );
        std::thread::sleep(Duration::from_millis(500));
    }
    let out = agent.stop();
    assert_all_acked(&out);
    let h = host_row(&addr, &id, Some(&net.b)).expect("agent listed");
    assert_complete(&h);
    assert!(
        n(&h, "last_seq") >= n(&during, "last_seq"),
        "{h} after {during}"
    );
}

#[test]
fn spool_bound_drops_the_oldest_and_the_collector_sees_the_count() {
    if !require_root("spool_bound_drops_the_oldest_and_the_collector_sees_the_count") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let addr = address_for_a_later_collector(&dir.path().join("collector"));
    let id = format!("chaos-bound-{}", std::process::id());
    let config = agent_config(
        dir.path(),
        &addr,
        &id,
        "",
        "[spool]\nmax_bytes = 32768\nsegment_bytes = 8192\n",
    );
    // No collector yet: the spool fills past its bound.
    let mut agent = Agent::start(&config, None);
    wait_until(
        "the agent dropping its oldest batches",
        Duration::from_secs(60),
        || {
            agent_self(dir.path())["spool"]["dropped_batches"]
                .as_u64()
                .unwrap_or(0)
                >= 2
        },
    );
    assert!(agent.is_running(), "a full spool doesn't stop the agent");
    let _collector = start_collector(&addr, &dir.path().join("collector"), None);
    let sent = n(&agent_self(dir.path()), "last_seq");
    wait_stored(&addr, &id, None, sent);
    let out = agent.stop();
    assert_all_acked(&out);
    let h = host_row(&addr, &id, None).expect("agent listed");
    let lost = dropped(&h, "spool_dropped_batches");
    assert!(lost > 0, "20 batches can't fit in 32 KiB: {h}");
    assert_eq!(
        n(&h, "gaps"),
        lost,
        "the sequences missing are exactly the batches the agent said it dropped: {h}"
    );
    assert_eq!(n(&h, "batches") + lost, n(&h, "last_seq"), "{h}");
}

#[test]
fn corrupted_spool_record_is_skipped_counted_and_the_agent_goes_on() {
    if !require_root("corrupted_spool_record_is_skipped_counted_and_the_agent_goes_on") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let addr = address_for_a_later_collector(&dir.path().join("collector"));
    let id = format!("chaos-corrupt-{}", std::process::id());
    let config = agent_config(dir.path(), &addr, &id, "shutdown_timeout = \"1s\"", "");
    let text =
        std::fs::read_to_string(&config)
            .unwrap()
            .replacen("shutdown_timeout = \"10s\"\n", "", 1);
    std::fs::write(&config, text).unwrap();
    // No collector: batches stay in the spool.
    let agent = Agent::start(&config, None);
    wait_unacked(dir.path(), 3);
    agent.stop();
    let spool = dir.path().join("agent/spool");
    let seg = std::fs::read_dir(&spool)
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| p.extension().is_some_and(|x| x == "seg"))
        .expect("a spool segment");
    let mut data = std::fs::read(&seg).unwrap();
    // Records: magic u32, len u32, seq u64, crc u32, payload. Damage record 2's payload.
    let len1 = u32::from_le_bytes(data[4..8].try_into().unwrap()) as usize;
    let second = 20 + len1;
    assert!(data.len() > second + 40, "at least two records spooled");
    data[second + 30] ^= 0x5a;
    std::fs::write(&seg, &data).unwrap();

    let _collector = start_collector(&addr, &dir.path().join("collector"), None);
    let agent = Agent::start(&config, None);
    assert!(
        agent
            .stderr
            .lock()
            .unwrap()
            .contains("1 damaged records skipped"),
        "{}",
        agent.stderr.lock().unwrap()
    );
    let sent = n(&agent_self(dir.path()), "last_seq");
    wait_stored(&addr, &id, None, sent);
    let out = agent.stop();
    assert_all_acked(&out);
    let h = host_row(&addr, &id, None).expect("agent listed");
    assert_eq!(dropped(&h, "spool_corrupt_records"), 1, "{h}");
    assert_eq!(
        n(&h, "gaps"),
        1,
        "the damaged batch is the one missing: {h}"
    );
    assert_eq!(n(&h, "batches") + 1, n(&h, "last_seq"), "{h}");
}

#[test]
fn a_slowly_acking_collector_does_not_grow_agent_memory() {
    if !require_root("a_slowly_acking_collector_does_not_grow_agent_memory") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let id = format!("chaos-slow-{}", std::process::id());
    // 1,500 batches of ~40 KB already waiting in the spool: 60 MB on disk.
    {
        let mut spool = vigil_agent::spool::Spool::open(
            &dir.path().join("agent/spool"),
            vigil_agent::config::SpoolConfig::default(),
        )
        .expect("spool");
        for i in 0..1500u32 {
            let mut b = vigil_proto::v1::Batch {
                agent_id: id.clone(),
                slow_syscalls: (0..400)
                    .map(|j| vigil_proto::v1::SlowSyscall {
                        pid: i * 1000 + j,
                        comm: format!("prefilled-{j:05}"),
                        latency_ns: u64::from(j) * 7919,
                        time_unix_ns: i64::from(i) * 1_000_000 + i64::from(j),
                        ..Default::default()
                    })
                    .collect(),
                ..Default::default()
            };
            spool.append(&mut b).expect("append");
        }
    }
    let rt = tokio::runtime::Runtime::new().unwrap();
    let (addr, received) = rt.block_on(slow_collector(Duration::from_millis(100)));
    let config = agent_config(dir.path(), &addr, &id, "", "");
    let agent = Agent::start(&config, None);
    // Memory watched while the slow collector takes 100 batches (a 100 ms ack each:
    // about 10 s of the exporter reading the backlog from disk).
    let mut peak_kib = 0u64;
    wait_until(
        "100 batches at the slow collector",
        Duration::from_secs(120),
        || {
            peak_kib = peak_kib.max(rss_kib(agent.child.id()));
            received.lock().unwrap().len() >= 100
        },
    );
    let st = agent_self(dir.path());
    let got = received.lock().unwrap().clone();
    agent.kill();
    eprintln!(
        "slow acks: {} batches received, {} unacked on disk, agent RSS peak {peak_kib} KiB",
        got.len(),
        st["spool"]["unacked"]
    );
    assert!(got.len() >= 20, "the collector got batches: {}", got.len());
    assert!(
        got.windows(2).all(|w| w[1] == w[0] + 1) && got[0] == 1,
        "sent in order from the oldest"
    );
    assert!(
        st["spool"]["unacked"].as_u64().unwrap() > 1000,
        "the backlog waits on disk: {st}"
    );
    assert!(
        peak_kib < 48 * 1024,
        "agent RSS peaked at {peak_kib} KiB with 60 MB of unacked batches on disk: memory must not follow the backlog"
    );
}

fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or(0)
}

/// A Collector that stores nothing and acks each batch `delay` after it arrives.
/// Returns its address and the sequences it received, in order.
async fn slow_collector(delay: Duration) -> (String, Arc<Mutex<Vec<u64>>>) {
    use tokio_stream::StreamExt as _;
    use vigil_proto::v1::{
        collector_server::{Collector, CollectorServer},
        Ack, Batch,
    };

    struct Slow {
        delay: Duration,
        received: Arc<Mutex<Vec<u64>>>,
    }

    #[tonic::async_trait]
    impl Collector for Slow {
        type StreamStream = std::pin::Pin<
            Box<dyn tokio_stream::Stream<Item = Result<Ack, tonic::Status>> + Send + 'static>,
        >;
        async fn stream(
            &self,
            request: tonic::Request<tonic::Streaming<Batch>>,
        ) -> Result<tonic::Response<Self::StreamStream>, tonic::Status> {
            let mut incoming = request.into_inner();
            let (delay, received) = (self.delay, self.received.clone());
            let (tx, rx) = tokio::sync::mpsc::channel(1);
            tokio::spawn(async move {
                while let Some(Ok(b)) = incoming.next().await {
                    received.lock().unwrap().push(b.sequence);
                    tokio::time::sleep(delay).await;
                    let ack = Ack {
                        agent_id: b.agent_id,
                        epoch: b.epoch,
                        epoch_low: b.epoch_low,
                        sequence: b.sequence,
                        duplicate: false,
                        conflict: false,
                    };
                    if tx.send(Ok(ack)).await.is_err() {
                        break;
                    }
                }
            });
            Ok(tonic::Response::new(Box::pin(
                tokio_stream::wrappers::ReceiverStream::new(rx),
            )))
        }
    }

    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let received = Arc::new(Mutex::new(Vec::new()));
    let svc = Slow {
        delay,
        received: received.clone(),
    };
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(CollectorServer::new(svc).max_decoding_message_size(64 << 20))
            .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener)),
    );
    (addr, received)
}

#[test]
fn an_event_storm_beyond_the_ring_buffer_arrives_as_a_counted_loss() {
    if !require_root("an_event_storm_beyond_the_ring_buffer_arrives_as_a_counted_loss") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let id = format!("chaos-storm-{}", std::process::id());
    let (_collector, addr) = start_collector("127.0.0.1:0", &dir.path().join("collector"), None);
    // Every syscall is "slow", no rate limit, and a 4 KiB ring buffer (~60 events).
    let config = agent_config(
        dir.path(),
        &addr,
        &id,
        "",
        "[probes]\nsyscalls = true\nretransmits = false\nslow_threshold = \"0s\"\n\
         slow_events_per_sec = 1000000000\nring_buffer_bytes = 4096\n",
    );
    let agent = Agent::start(&config, None);
    const CALLS: u64 = 20_000;
    let mut storm = Workload::spawn(WORKLOAD, &["getppid", &CALLS.to_string()]);
    let pid = storm.pid();
    storm.go();
    storm.wait();
    // The interval that ends after the storm carries the rest of it (read and counted).
    let after = n(&agent_self(dir.path()), "last_seq") + 1;
    wait_stored(&addr, &id, None, after);
    let out = agent.stop();
    assert_all_acked(&out);
    let h = host_row(&addr, &id, None).expect("agent listed");
    assert_complete(&h);
    let ringbuf_full = dropped(&h, "kernel_ringbuf_full");
    let over_batch = dropped(&h, "agent_dropped");
    assert!(
        ringbuf_full > 0,
        "20,000 events can't pass a 4 KiB buffer: {h}"
    );
    let rt = tokio::runtime::Runtime::new().unwrap();
    let delivered = rt.block_on(async {
        let mut fleet = vigil_proto::v1::fleet_client::FleetClient::connect(format!("http://{addr}"))
            .await
            .expect("fleet")
            .max_decoding_message_size(256 << 20);
        let events = fleet
            .events(vigil_proto::v1::EventsRequest {
                since_unix_ms: 0,
                limit: 100_000,
                page_token: String::new(),
                ..Default::default()
            })
            .await
            .expect("events")
            .into_inner()
            .events;
        assert!(events.len() < 100_000, "limit not reached");
        events
            .iter()
            .filter(|e| {
                e.host.as_ref().is_some_and(|h| h.agent_id == id)
                    && matches!(&e.event, Some(vigil_proto::v1::fleet_event::Event::SlowSyscall(s)) if s.pid == pid && s.nr == libc::SYS_getppid as u32)
            })
            .count() as u64
    });
    eprintln!("storm: {CALLS} getppid calls; delivered {delivered}, ring buffer full {ringbuf_full}, over a batch's limit {over_batch}");
    // Losses are counted for all processes, so they bound the storm's share from above.
    assert!(
        delivered + ringbuf_full + over_batch >= CALLS,
        "each of the {CALLS} getppid calls was delivered ({delivered}) or counted lost \
         (ring buffer full {ringbuf_full}, over a batch's limit {over_batch}): {h}"
    );
}

#[test]
fn sighup_reloads_the_config_and_keeps_the_probes() {
    if !require_root("sighup_reloads_the_config_and_keeps_the_probes") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let id = format!("chaos-hup-{}", std::process::id());
    let (_collector, addr) = start_collector("127.0.0.1:0", &dir.path().join("collector"), None);
    let socket = dir.path().join("agent.sock");
    let config = dir.path().join("agent.toml");
    let base = format!(
        "interval = \"1s\"\nagent_id = \"{id}\"\nsocket = \"{}\"\ndata_dir = \"{}\"\n",
        socket.display(),
        dir.path().join("agent").display()
    );
    let probes = "[probes]\nsyscalls = true\nretransmits = false\n";
    // Start without a collector.
    std::fs::write(&config, format!("{base}{probes}")).unwrap();
    let mut agent = Agent::start(&config, None);

    // A bad file is refused with its reason; the agent keeps running as it was.
    let bad = base.replace("interval = \"1s\"", "interval = \"100ms\"");
    std::fs::write(&config, format!("{bad}{probes}")).unwrap();
    agent.signal(nix::sys::signal::Signal::SIGHUP);
    agent.wait_for("new configuration refused", Duration::from_secs(10));
    let said = agent.stderr.lock().unwrap().clone();
    assert!(
        said.contains("agent.toml") && said.contains("interval: must be at least 1s"),
        "{said}"
    );
    assert!(agent.is_running());

    // A good one takes effect: now it streams to the collector.
    std::fs::write(&config, format!("{base}collector = \"{addr}\"\n{probes}")).unwrap();
    agent.signal(nix::sys::signal::Signal::SIGHUP);
    agent.wait_for("configuration reloaded", Duration::from_secs(10));
    let start = Instant::now();
    while host_row(&addr, &id, None).is_none_or(|h| n(&h, "batches") < 2) {
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "no batches after the reload"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    // The probes stayed attached: a workload after the reload is measured.
    let mut w = Workload::spawn(WORKLOAD, &["getppid", "500"]);
    w.go();
    w.wait();
    let getppid = || {
        let rows = vigil_json(&[
            "syscalls",
            "--socket",
            socket.to_str().unwrap(),
            "--window",
            "1m",
            "--json",
        ]);
        rows["syscalls"]
            .as_array()
            .unwrap()
            .iter()
            .find(|r| r["name"] == "getppid")
            .and_then(|r| r["count"].as_u64())
            .unwrap_or(0)
    };
    wait_until(
        "the 500 getppid calls after the reload in the agent's latency table",
        Duration::from_secs(30),
        || getppid() >= 500,
    );
    let out = agent.stop();
    assert_eq!(out.matches("probe syscall-latency: on").count(), 1, "{out}");
    assert_all_acked(&out);
    assert_complete(&host_row(&addr, &id, None).unwrap());
}

#[test]
fn sigterm_spools_the_partial_batch_and_exits_by_the_deadline() {
    if !require_root("sigterm_spools_the_partial_batch_and_exits_by_the_deadline") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    // A collector that accepts connections and never answers.
    let blackhole = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let hole = blackhole.local_addr().unwrap().to_string();
    let id = format!("chaos-term-{}", std::process::id());
    let config = agent_config(dir.path(), &hole, &id, "", "");
    let text = std::fs::read_to_string(&config)
        .unwrap()
        .replace("interval = \"1s\"", "interval = \"1h\"")
        .replace("shutdown_timeout = \"10s\"", "shutdown_timeout = \"2s\"");
    std::fs::write(&config, text).unwrap();
    let agent = Agent::start(&config, None);
    // The exporter has connected to the hole (and waits there for an answer).
    blackhole.set_nonblocking(true).unwrap();
    let mut held = Vec::new();
    wait_until(
        "the agent connecting to the silent collector",
        Duration::from_secs(30),
        || {
            if let Ok((c, _)) = blackhole.accept() {
                held.push(c);
            }
            !held.is_empty()
        },
    );
    let out = agent.stop();
    // The only batch is the partial interval, written at SIGTERM and unacked.
    assert!(out.contains("spool: 1 unacked"), "{out}");
    drop(blackhole);

    // Next start with a real collector: it is sent first, as sequence 1.
    let (_collector, addr) = start_collector("127.0.0.1:0", &dir.path().join("collector"), None);
    let text = std::fs::read_to_string(&config)
        .unwrap()
        .replace(&hole, &addr);
    std::fs::write(&config, text).unwrap();
    let agent = Agent::start(&config, None);
    assert!(
        agent
            .stderr
            .lock()
            .unwrap()
            .contains("1 unacked batches to send first"),
        "{}",
        agent.stderr.lock().unwrap()
    );
    let out = agent.stop();
    assert_all_acked(&out);
    let h = host_row(&addr, &id, None).expect("agent listed");
    assert_complete(&h);
    assert_eq!(n(&h, "last_seq"), 2, "the partial batch of each run: {h}");
}

/// What a test does to the data dir of a stopped agent before starting it again.
#[derive(Clone, Copy, Debug)]
enum Damage {
    EmptyState,
    GarbageState,
    TruncatedState,
    SegmentTruncatedToZero,
    GarbageSegment,
    SegmentChmod000,
    SegmentIsADirectory,
}

/// The agent's newest spool segment.
fn newest_segment(spool: &Path) -> PathBuf {
    std::fs::read_dir(spool)
        .expect("spool dir")
        .map(|e| e.expect("entry").path())
        .filter(|p| p.extension().is_some_and(|x| x == "seg"))
        .max_by_key(|p| {
            p.file_stem()
                .and_then(|s| s.to_str())
                .and_then(|s| s.rsplit_once('-'))
                .and_then(|(_, n)| n.parse::<u64>().ok())
                .unwrap_or(0)
        })
        .expect("a spool segment")
}

fn names_in(dir: &Path) -> Vec<String> {
    std::fs::read_dir(dir)
        .expect("dir")
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .collect()
}

#[test]
fn damage_under_the_data_dir_is_set_aside_counted_and_the_agent_starts() {
    use std::os::unix::fs::PermissionsExt as _;
    use vigil_tests::daemons::{Collector, RealAgent};
    if !require_root("damage_under_the_data_dir_is_set_aside_counted_and_the_agent_starts") {
        return;
    }
    let collector = Collector::start(&[]);
    for damage in [
        Damage::EmptyState,
        Damage::GarbageState,
        Damage::TruncatedState,
        Damage::SegmentTruncatedToZero,
        Damage::GarbageSegment,
        Damage::SegmentChmod000,
        Damage::SegmentIsADirectory,
    ] {
        let id = format!("chaos-damage-{damage:?}");
        let agent = RealAgent::start(&collector, &id);
        agent.keeps_being_acked(&collector, 2);
        let epoch = agent.epoch();
        let spool = agent.spool();
        let dir = agent.kill_keeping_dir();
        let state = spool.join("state");
        let segment = newest_segment(&spool);
        match damage {
            Damage::EmptyState => std::fs::write(&state, b"").expect("state"),
            Damage::GarbageState => {
                std::fs::write(&state, b"\xff\xfe\x00garbage\x80\n\x01").expect("state");
            }
            Damage::TruncatedState => {
                let text = std::fs::read(&state).expect("state");
                std::fs::write(&state, &text[..text.len() / 2]).expect("state");
            }
            Damage::SegmentTruncatedToZero => {
                std::fs::File::create(&segment).expect("truncate");
            }
            Damage::GarbageSegment => {
                let garbage: Vec<u8> = (0..10_000u32).map(|i| (i * 7919 % 251) as u8).collect();
                std::fs::write(&segment, garbage).expect("segment");
            }
            Damage::SegmentChmod000 => {
                std::fs::set_permissions(&segment, std::fs::Permissions::from_mode(0o000))
                    .expect("chmod");
            }
            Damage::SegmentIsADirectory => {
                std::fs::remove_file(&segment).expect("rm");
                std::fs::create_dir(&segment).expect("mkdir");
            }
        }
        let before = collector.batches_of(&id);
        let agent = RealAgent::start_in(&collector, &id, dir);
        // It starts and streams: new batches are stored.
        vigil_tests::daemons::wait_until(
            &format!("{damage:?}: new batches after the damage"),
            Duration::from_secs(30),
            || collector.batches_of(&id) >= before + 2,
        );
        let spool_stats = agent.stats()["agent"]["spool"].clone();
        let names = names_in(&spool);
        match damage {
            Damage::EmptyState | Damage::GarbageState | Damage::TruncatedState => {
                assert_eq!(spool_stats["state_rebuilt"], 1, "{damage:?}: {spool_stats}");
                assert!(
                    names.iter().any(|n| n.starts_with("state.damaged-")),
                    "{damage:?}: the damaged state is kept for a postmortem: {names:?}"
                );
                assert_eq!(
                    agent.epoch(),
                    epoch,
                    "{damage:?}: the epoch is rebuilt from the segments"
                );
            }
            Damage::SegmentTruncatedToZero => {
                // The records it held are gone, so the agent cannot know the last
                // sequences it sent: the few it reuses (past the last checkpointed
                // ack) are conflicts, counted the same at both ends, not stored.
                assert_eq!(spool_stats["state_rebuilt"], 0, "{damage:?}: {spool_stats}");
                let h = collector.host(&id).expect("host");
                assert_eq!(
                    h["conflicts"],
                    agent.stats()["agent"]["batches_conflicting"],
                    "{damage:?}: {h}"
                );
            }
            Damage::GarbageSegment => {
                assert!(
                    spool_stats["corrupt_records"].as_u64() >= Some(1),
                    "{damage:?}: the damage is counted: {spool_stats}"
                );
            }
            Damage::SegmentChmod000 => {
                // Root reads it anyway; the agent puts its mode back.
                assert_eq!(
                    spool_stats["corrupt_records"], 0,
                    "{damage:?}: {spool_stats}"
                );
                if let Ok(m) = std::fs::metadata(&segment) {
                    assert_eq!(m.permissions().mode() & 0o777, 0o600, "{damage:?}");
                }
            }
            Damage::SegmentIsADirectory => {
                assert!(
                    spool_stats["corrupt_records"].as_u64() >= Some(1),
                    "{damage:?}: the unreadable segment is counted: {spool_stats}"
                );
                assert!(
                    names.iter().any(|n| n.ends_with(".unreadable")),
                    "{damage:?}: set aside: {names:?}"
                );
            }
        }
        if !matches!(damage, Damage::SegmentTruncatedToZero) {
            let h = collector.host(&id).expect("host");
            assert_eq!(h["conflicts"], 0, "{damage:?}: no sequence reused: {h}");
        }
        agent.stop();
    }
}
