//! /metrics against the real peers on this host: promtool (Debian's prometheus
//! package) lints the output, Debian's prometheus-node-exporter is scraped in the same
//! second and its shared series compared, and a real Prometheus scrapes the agent and
//! the collector and is queried back.
use std::{
    collections::{BTreeMap, BTreeSet},
    process::{Command, Stdio},
    time::Duration,
};

use vigil_tests::{daemons::wait_until, KillOnDrop};

/// (name, sorted labels) → value, and name → type, from the Prometheus text format.
#[derive(Default, Debug)]
struct Scrape {
    values: BTreeMap<(String, Vec<(String, String)>), f64>,
    types: BTreeMap<String, String>,
}

fn parse_labels(s: &str) -> Vec<(String, String)> {
    let mut out = Vec::new();
    let mut rest = s;
    while let Some((k, r)) = rest.split_once("=\"") {
        let mut v = String::new();
        let mut chars = r.char_indices();
        let mut end = r.len();
        while let Some((i, c)) = chars.next() {
            match c {
                '\\' => {
                    if let Some((_, n)) = chars.next() {
                        v.push(match n {
                            'n' => '\n',
                            o => o,
                        });
                    }
                }
                '"' => {
                    end = i + 1;
                    break;
                }
                o => v.push(o),
            }
        }
        out.push((k.trim_start_matches(',').to_string(), v));
        rest = &r[end..];
    }
    out.sort();
    out
}

fn parse(text: &str) -> Scrape {
    let mut s = Scrape::default();
    for line in text.lines() {
        if let Some(t) = line.strip_prefix("# TYPE ") {
            let (n, ty) = t.split_once(' ').unwrap();
            s.types.insert(n.to_string(), ty.to_string());
            continue;
        }
        if line.starts_with('#') || line.is_empty() {
            continue;
        }
        let (series, value) = line.rsplit_once(' ').unwrap();
        let (name, labels) = match series.split_once('{') {
            Some((n, l)) => (n, parse_labels(l.trim_end_matches('}'))),
            None => (series, Vec::new()),
        };
        let v = match value {
            "+Inf" => f64::INFINITY,
            "-Inf" => f64::NEG_INFINITY,
            v => v.parse().unwrap_or(f64::NAN),
        };
        s.values.insert((name.to_string(), labels), v);
    }
    s
}

fn curl(url: &str, accept: Option<&str>) -> String {
    let mut cmd = Command::new("curl");
    cmd.args(["-sf", "--max-time", "10", url]);
    if let Some(a) = accept {
        cmd.args(["-H", &format!("Accept: {a}")]);
    }
    let out = cmd.output().expect("curl");
    assert!(out.status.success(), "curl {url}: {:?}", out.status);
    String::from_utf8(out.stdout).expect("utf-8")
}

use vigil_tests::require_bin as require;

/// A `vigil agent` (probes on: it needs root) serving /metrics on a loopback port.
struct MetricsAgent {
    _child: KillOnDrop,
    _dir: tempfile::TempDir,
    url: String,
}

fn start_agent(extra: &[&str]) -> MetricsAgent {
    let dir = tempfile::tempdir().unwrap();
    let mut cmd = vigil_tests::agent_command();
    cmd.args([
        "--interval",
        "1s",
        "--metrics-listen",
        "127.0.0.1:0",
        "--data-dir",
    ])
    .arg(dir.path().join("data"))
    .arg("--socket")
    .arg(dir.path().join("agent.sock"))
    .args(extra)
    .stdout(Stdio::null())
    .stderr(Stdio::null());
    let (child, ready) = vigil_tests::spawn_ready(&mut cmd, Duration::from_secs(120));
    let addr = ready
        .get("VIGIL_METRICS_LISTEN")
        .expect("VIGIL_METRICS_LISTEN in READY")
        .clone();
    MetricsAgent {
        _child: KillOnDrop(child),
        _dir: dir,
        url: format!("http://{addr}/metrics"),
    }
}

fn start_node_exporter() -> (KillOnDrop, String) {
    require("prometheus-node-exporter");
    let port = vigil_tests::free_port();
    let child = Command::new("prometheus-node-exporter")
        .arg(format!("--web.listen-address=127.0.0.1:{port}"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("prometheus-node-exporter");
    let url = format!("http://127.0.0.1:{port}/metrics");
    wait_until("node_exporter serving", Duration::from_secs(30), || {
        Command::new("curl")
            .args(["-sf", "-o", "/dev/null", &url])
            .status()
            .is_ok_and(|s| s.success())
    });
    (KillOnDrop(child), url)
}

/// promtool's lint problems for a scrape (empty: it passes).
fn promtool_problems(text: &str) -> BTreeSet<String> {
    require("promtool");
    let mut child = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("promtool");
    use std::io::Write;
    child
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    let problems: BTreeSet<String> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .chain(String::from_utf8_lossy(&out.stderr).lines())
        .map(str::to_string)
        .filter(|l| !l.trim().is_empty())
        .collect();
    // Exit 0: clean; 3: lint problems only; anything else: it could not parse.
    let code = out.status.code();
    assert!(
        matches!(code, Some(0) | Some(3)),
        "promtool could not parse the output ({code:?}): {problems:?}"
    );
    assert_eq!(code == Some(0), problems.is_empty(), "{problems:?}");
    problems
}

#[test]
fn agent_metrics_pass_promtool_and_agree_with_node_exporter_in_the_same_second() {
    if !vigil_tests::require_root(
        "agent_metrics_pass_promtool_and_agree_with_node_exporter_in_the_same_second",
    ) {
        return;
    }
    let agent = start_agent(&[]);
    let (_ne, ne_url) = start_node_exporter();
    // One interval, so the agent's own families have their first values.
    wait_until(
        "the agent's first interval",
        Duration::from_secs(30),
        || curl(&agent.url, None).contains("vigil_syscall_latency_seconds_count"),
    );

    // The OpenMetrics rendering (what Prometheus asks for) ends as the format says.
    let om = curl(
        &agent.url,
        Some("application/openmetrics-text; version=1.0.0"),
    );
    assert!(
        om.ends_with("# EOF\n"),
        "{}",
        &om[om.len().saturating_sub(200)..]
    );

    // node_exporter, the agent, node_exporter again: within a second, so every counter
    // the agent reads from the same kernel counter lies between node_exporter's two.
    let started = std::time::Instant::now();
    let ne1_text = curl(&ne_url, None);
    let vigil_text = curl(&agent.url, None);
    let ne2_text = curl(&ne_url, None);
    let skew = started.elapsed();
    assert!(
        skew < Duration::from_secs(1),
        "the three scrapes took {skew:?}"
    );
    let (ne1, v, ne2) = (parse(&ne1_text), parse(&vigil_text), parse(&ne2_text));

    // promtool: the agent's output parses, and the only lint problems are those
    // node_exporter's own output has (its names are camelCase: node_memory_MemFree_bytes).
    let ours = promtool_problems(&vigil_text);
    let theirs = promtool_problems(&ne1_text);
    let extra: Vec<&String> = ours.difference(&theirs).collect();
    assert!(
        extra.is_empty(),
        "promtool problems node_exporter does not have: {extra:?}"
    );
    assert!(
        !ours
            .iter()
            .any(|p| p.starts_with("vigil_") || p.starts_with("process_")),
        "{ours:?}"
    );

    // The shared families: same label sets, values within the documented tolerance.
    let names = |s: &Scrape| -> BTreeSet<String> {
        s.values
            .keys()
            .map(|(n, _)| n.clone())
            .filter(|n| n.starts_with("node_"))
            .collect()
    };
    let shared: BTreeSet<String> = names(&v).intersection(&names(&ne1)).cloned().collect();
    for must in [
        "node_cpu_seconds_total",
        "node_memory_MemAvailable_bytes",
        "node_memory_MemTotal_bytes",
        "node_load1",
        "node_filesystem_avail_bytes",
        "node_filesystem_size_bytes",
        "node_network_receive_bytes_total",
        "node_network_transmit_packets_total",
        "node_netstat_Tcp_RetransSegs",
        "node_netstat_Tcp_ActiveOpens",
        "node_boot_time_seconds",
        "node_context_switches_total",
        "node_uname_info",
        "node_time_seconds",
    ] {
        assert!(
            shared.contains(must),
            "{must} is not in both: ours {:?}",
            names(&v)
        );
    }
    if names(&ne1).contains("node_pressure_cpu_waiting_seconds_total") {
        assert!(shared.contains("node_pressure_cpu_waiting_seconds_total"));
    }
    let mut compared = 0;
    let mut problems = Vec::new();
    for name in &shared {
        let series = |s: &Scrape| -> BTreeSet<Vec<(String, String)>> {
            s.values
                .keys()
                .filter(|(n, _)| n == name)
                .map(|(_, l)| l.clone())
                .collect()
        };
        let (ours, theirs) = (series(&v), series(&ne1));
        if ours != theirs {
            problems.push(format!(
                "{name}: labels differ: only ours {:?}, only node_exporter's {:?}",
                ours.difference(&theirs).collect::<Vec<_>>(),
                theirs.difference(&ours).collect::<Vec<_>>()
            ));
            continue;
        }
        let counter = ne1.types.get(name).is_some_and(|t| t == "counter")
            || (name.starts_with("node_netstat_") && name != "node_netstat_Tcp_CurrEstab");
        for labels in ours {
            let key = (name.clone(), labels.clone());
            let (a, x, b) = (
                ne1.values[&key],
                v.values[&key],
                ne2.values.get(&key).copied().unwrap_or(ne1.values[&key]),
            );
            let (lo, hi) = (a.min(b), a.max(b));
            // Counters: exactly between the two (float printing aside). Gauges: within
            // 5 % of the bracket, or 16 units (load, running processes), or 4 MiB for
            // bytes (page tables and free memory move as the scrapers start).
            let floor = if name.ends_with("_bytes") {
                4.0 * 1024.0 * 1024.0
            } else {
                16.0
            };
            let slack = if counter {
                1e-9 * hi.abs().max(1.0)
            } else {
                (0.05 * hi.abs()).max(floor)
            };
            let ok = if name == "node_time_seconds" {
                (x - lo).abs() <= skew.as_secs_f64() + 1.0
            } else {
                x >= lo - slack && x <= hi + slack
            };
            if !ok {
                problems.push(format!(
                    "{name}{labels:?}: ours {x}, node_exporter {a} then {b}"
                ));
            }
            compared += 1;
        }
    }
    assert!(
        problems.is_empty(),
        "{} of {compared} series disagree:\n{}",
        problems.len(),
        problems.join("\n")
    );
    assert!(compared > 100, "only {compared} series compared");
    eprintln!(
        "{compared} series in {} families agree with node_exporter",
        shared.len()
    );
}

fn prometheus_query(base: &str, q: &str) -> serde_json::Value {
    let out = Command::new("curl")
        .args([
            "-sf",
            "--max-time",
            "10",
            "-G",
            &format!("{base}/api/v1/query"),
            "--data-urlencode",
        ])
        .arg(format!("query={q}"))
        .output()
        .expect("curl");
    serde_json::from_slice(&out.stdout).unwrap_or(serde_json::Value::Null)
}

fn scalar(v: &serde_json::Value) -> Option<f64> {
    v["data"]["result"][0]["value"][1].as_str()?.parse().ok()
}

#[test]
fn a_real_prometheus_scrapes_the_agent_and_the_collector_and_agrees_with_the_kernel() {
    if !vigil_tests::require_root(
        "a_real_prometheus_scrapes_the_agent_and_the_collector_and_agrees_with_the_kernel",
    ) {
        return;
    }
    require("prometheus");
    // The kernel counts eBPF run time only while asked to; put it back as it was.
    struct BpfStats(String);
    impl Drop for BpfStats {
        fn drop(&mut self) {
            let _ = std::fs::write("/proc/sys/kernel/bpf_stats_enabled", &self.0);
        }
    }
    let _stats = BpfStats(
        std::fs::read_to_string("/proc/sys/kernel/bpf_stats_enabled")
            .unwrap_or_else(|_| "0".into()),
    );
    std::fs::write("/proc/sys/kernel/bpf_stats_enabled", "1").expect("enabling bpf stats");
    let agent = start_agent(&[]);
    let collector_metrics = format!("127.0.0.1:{}", vigil_tests::free_port());
    let _collector =
        vigil_tests::daemons::Collector::start(&["--metrics-listen", &collector_metrics]);
    let agent_target = agent
        .url
        .trim_start_matches("http://")
        .trim_end_matches("/metrics")
        .to_string();
    let prom = vigil_tests::peers::Prometheus::start(&[
        ("vigil-agent", &agent_target),
        ("vigil-collector", &collector_metrics),
    ]);
    let base = prom.url.clone();
    wait_until(
        "Prometheus scraping both targets",
        Duration::from_secs(60),
        || {
            let up = prometheus_query(&base, "sum(up{job=~\"vigil-.*\"})");
            scalar(&up) == Some(2.0)
        },
    );

    // The boot time, as the kernel says it, through the agent and Prometheus.
    let stat = std::fs::read_to_string("/proc/stat").unwrap();
    let btime: f64 = stat
        .lines()
        .find_map(|l| l.strip_prefix("btime "))
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    let q = prometheus_query(&base, "node_boot_time_seconds{job=\"vigil-agent\"}");
    assert_eq!(scalar(&q), Some(btime), "{q}");

    // A workload this test controls: N getppid calls show up as an increase of N in the
    // syscall latency histogram's count (give or take the few other callers).
    let count = |base: &str| {
        scalar(&prometheus_query(
            base,
            "vigil_syscall_latency_seconds_count{syscall=\"getppid\"}",
        ))
        .unwrap_or(0.0)
    };
    // Wait until Prometheus has a sample taken after the agent has seen at least one
    // interval (the series exists once any getppid ran; make sure of it).
    let _ = Command::new("python3")
        .args(["-c", "import os; os.getppid()"])
        .status();
    wait_until("a getppid series", Duration::from_secs(30), || {
        count(&base) > 0.0
    });
    let before = count(&base);
    let runs = |base: &str| {
        scalar(&prometheus_query(
            base,
            "sum(vigil_bpf_program_runs_total{job=\"vigil-agent\"})",
        ))
        .unwrap_or(0.0)
    };
    let runs_before = runs(&base);
    const N: f64 = 20_000.0;
    let ok = Command::new("python3")
        .args(["-c", "import os\nfor _ in range(20000): os.getppid()"])
        .status()
        .unwrap();
    assert!(ok.success());
    wait_until(
        "the getppid calls in Prometheus",
        Duration::from_secs(60),
        || count(&base) >= before + N,
    );
    let after = count(&base);
    assert!(after - before < N + 1000.0, "{before} -> {after}");
    // Each of those calls ran the syscall entry and exit programs at least once.
    wait_until(
        "the programs' runs in Prometheus",
        Duration::from_secs(60),
        || runs(&base) >= runs_before + 2.0 * N,
    );
    let q = prometheus_query(&base, "vigil_bpf_stats_enabled");
    assert_eq!(scalar(&q), Some(1.0), "{q}");

    // The collector's own series are there too.
    let q = prometheus_query(&base, "vigil_collector_connections_open");
    assert!(scalar(&q).is_some(), "{q}");

    // Retransmits on a lossy veth link. Two witnesses: bpftrace counting the same
    // tracepoint (sent retransmits to that peer), which the agent's counter for the
    // peer (new in this test) must equal, and the kernel's RetransSegs in the sending
    // namespace, which counts segments and so is never below it.
    vigil_agent::probes::tracefs::tracefs_root().expect("tracefs");
    let mut bt = Command::new("stdbuf")
        .args([
            "-oL",
            "bpftrace",
            "-e",
            "tracepoint:tcp:tcp_retransmit_skb /args->err == 0 && args->daddr[0] == 10 && args->daddr[1] == 213 \
             && args->daddr[2] == 0 && args->daddr[3] == 2/ { @n = count(); } BEGIN { printf(\"ready\\n\"); }",
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("bpftrace (cargo xtask setup installs it)");
    let (line_tx, lines) = std::sync::mpsc::channel::<String>();
    let out = bt.stdout.take().unwrap();
    std::thread::spawn(move || {
        use std::io::BufRead;
        for l in std::io::BufReader::new(out).lines().map_while(Result::ok) {
            let _ = line_tx.send(l);
        }
    });
    let mut bt = KillOnDrop(bt);
    loop {
        let l = lines
            .recv_timeout(Duration::from_secs(60))
            .expect("bpftrace ready");
        if l.trim() == "ready" {
            break;
        }
    }
    let segments = lossy_transfer();
    let _ = nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(bt.0.id() as i32),
        nix::sys::signal::Signal::SIGINT,
    );
    let mut sent = 0u64;
    while let Ok(l) = lines.recv_timeout(Duration::from_secs(30)) {
        if let Some(n) = l.trim().strip_prefix("@n: ") {
            sent = n.trim().parse().expect("bpftrace count");
            break;
        }
    }
    let _ = bt.0.wait();
    assert!(
        sent <= segments,
        "bpftrace {sent} retransmits, the kernel {segments} segments"
    );
    let peer = format!(
        "vigil_tcp_retransmits_total{{job=\"vigil-agent\",peer=\"{}\"}}",
        vigil_tests::NetnsPair::ADDR_B
    );
    assert!(sent > 0, "the lossy link made no retransmits");
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while !scalar(&prometheus_query(&base, &peer)).is_some_and(|v| v >= sent as f64) {
        assert!(
            std::time::Instant::now() < deadline,
            "bpftrace counted {sent} retransmits (the kernel {segments} segments); Prometheus has {}; the agent's losses and failures: {}",
            prometheus_query(&base, &peer),
            curl(&agent.url, None)
                .lines()
                .filter(|l| l.starts_with("vigil_lost_total") || l.starts_with("vigil_tcp_retransmit"))
                .collect::<Vec<_>>()
                .join("\n")
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    let q = prometheus_query(&base, &peer);
    assert_eq!(
        scalar(&q),
        Some(sent as f64),
        "the kernel counted {sent}: {q}"
    );

    // A finding: a program run from /tmp (exec-from-temp-dir).
    let tmp = tempfile::Builder::new()
        .prefix("vigil-prom-")
        .tempdir_in("/tmp")
        .unwrap();
    let exe = tmp.path().join("true");
    std::fs::copy("/bin/true", &exe).unwrap();
    assert!(Command::new(&exe).status().unwrap().success());
    wait_until("the finding in Prometheus", Duration::from_secs(60), || {
        scalar(&prometheus_query(
            &base,
            "vigil_findings_total{rule=\"exec-from-temp-dir\",severity=\"high\"}",
        ))
        .is_some_and(|v| v >= 1.0)
    });

    // The Grafana dashboard: well-formed, and every query in it returns data here.
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../packaging/grafana/vigil-host.json"
    );
    let dash: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(path).unwrap())
        .expect("the dashboard is JSON");
    assert!(
        dash["schemaVersion"].as_u64().is_some_and(|v| v >= 30),
        "schemaVersion"
    );
    assert!(dash["title"].is_string() && dash["uid"].is_string());
    let mut queries = Vec::new();
    for p in dash["panels"].as_array().expect("panels") {
        if p["type"] == "row" {
            continue;
        }
        assert!(
            p["datasource"]["type"] == "prometheus",
            "panel {} has no Prometheus datasource",
            p["title"]
        );
        let targets = p["targets"]
            .as_array()
            .unwrap_or_else(|| panic!("panel {} has no queries", p["title"]));
        assert!(!targets.is_empty(), "panel {} has no queries", p["title"]);
        for t in targets {
            let expr = t["expr"]
                .as_str()
                .unwrap_or_else(|| panic!("panel {}: a target without expr", p["title"]));
            queries.push((
                p["title"].as_str().unwrap_or("").to_string(),
                expr.to_string(),
            ));
        }
    }
    assert!(queries.len() >= 15, "{} queries", queries.len());
    for (title, expr) in &queries {
        // Grafana's variables as Grafana would fill them for "All".
        let q = expr
            .replace("$__rate_interval", "1m")
            .replace("$instance", ".*")
            .replace("$agent_job", "vigil-agent");
        wait_until(
            &format!("data for the panel {title:?}: {q}"),
            Duration::from_secs(60),
            || {
                let r = prometheus_query(&base, &q);
                r["status"] == "success"
                    && r["data"]["result"]
                        .as_array()
                        .is_some_and(|a| !a.is_empty())
            },
        );
    }
}

/// 16 MiB sent from namespace a to b over a veth that drops ~5 % of the segments
/// arriving at b; returns the retransmits the kernel counted in a.
fn lossy_transfer() -> u64 {
    use std::io::{Read, Write};
    use vigil_tests::{in_netns, tcp_retrans_segs, NetnsPair};
    const PORT: u16 = 5556;
    const BYTES: usize = 16 << 20;
    let net = NetnsPair::new("prom");
    net.nft(&net.b, &format!(
        "table inet vigil_test {{\n chain input {{\n type filter hook input priority 0; policy accept;\n \
         tcp dport {PORT} numgen random mod 100 < 5 drop\n }}\n}}\n"
    ));
    // One segment per packet on the sending side: the kernel's RetransSegs counts
    // segments, the tracepoint (and the agent) retransmitted packets, and a GSO packet
    // carries several; this keeps the two close (the check is bpftrace's count).
    vigil_tests::sh(
        "ip",
        &[
            "-n",
            &net.a,
            "link",
            "set",
            "dev",
            &net.dev_a,
            "gso_max_segs",
            "1",
        ],
    );
    let ip_b: std::net::IpAddr = NetnsPair::ADDR_B.parse().unwrap();
    let before = in_netns(&net.a, tcp_retrans_segs).join().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    let server = in_netns(&net.b, move || {
        let listener = std::net::TcpListener::bind((ip_b, PORT)).expect("bind in b");
        tx.send(()).unwrap();
        let (mut conn, _) = listener.accept().expect("accept");
        let mut buf = vec![0u8; 64 * 1024];
        let mut total = 0usize;
        while let Ok(n) = conn.read(&mut buf) {
            if n == 0 {
                break;
            }
            total += n;
        }
        total
    });
    rx.recv().unwrap();
    let client = in_netns(&net.a, move || {
        let mut conn = std::net::TcpStream::connect((ip_b, PORT)).expect("connect");
        let chunk = vec![0x5au8; 64 * 1024];
        for _ in 0..BYTES / chunk.len() {
            conn.write_all(&chunk).expect("write");
        }
        conn.shutdown(std::net::Shutdown::Write).unwrap();
        let mut rest = Vec::new();
        let _ = conn.read_to_end(&mut rest);
    });
    client.join().unwrap();
    assert_eq!(server.join().unwrap(), BYTES, "the transfer must complete");
    // The last retransmit may still be pending: the counter settles once the
    // connection is closed on both sides.
    let after = in_netns(&net.a, tcp_retrans_segs).join().unwrap();
    after - before
}
