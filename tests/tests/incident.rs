//! `vigil incident snapshot` around an incident the test makes on the real kernel: a
//! CPU burner and a memory hog, and an alert (CPU over 30 % for 1 s, critical) that
//! fires. The snapshot, from the agent and from the collector, must hold the alert in
//! its timeline, the burner in its top processes by CPU and the hog in those by
//! memory, and plots that decode as PNGs of the stated size with the series drawn
//! from data that is not constant. `--redact` must leave no hostname or address of this
//! host in the file. With `[incident] auto_snapshot`, the agent takes one itself when
//! the critical alert fires.
use std::{process::Command, time::Duration};

use base64::Engine as _;
use serde_json::Value;
use vigil_tests::{require_root, KillOnDrop, Workload};

const WORKLOAD: &str = env!("CARGO_BIN_EXE_vigil-workload");
/// The plots' size and first series' colour, as the snapshot states them.
const WIDTH: u32 = 900;
const HEIGHT: u32 = 300;
const SERIES_RGB: [u8; 3] = [31, 119, 180];
/// Every series' colour: where series overlap (all zero), the last one drawn shows.
const PALETTE: [[u8; 3]; 4] = [SERIES_RGB, [255, 127, 14], [44, 160, 44], [148, 103, 189]];
const PLOTS: [&str; 7] = [
    "cpu",
    "memory",
    "pressure",
    "disk",
    "network",
    "syscalls",
    "retransmits",
];

struct Agent {
    child: KillOnDrop,
    config: std::path::PathBuf,
    socket: String,
    data: std::path::PathBuf,
    _dir: tempfile::TempDir,
}

impl Agent {
    fn start(collector: &str, extra: &str) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let socket = dir.path().join("agent.sock").display().to_string();
        let alerts = dir.path().join("alerts.d");
        std::fs::create_dir_all(&alerts).unwrap();
        std::fs::write(
            alerts.join("burn.yaml"),
            "alerts:\n  - alert: IncidentCpuBurn\n    severity: critical\n    summary: \"CPU at {{ $value }} %\"\n    runbook: https://runbooks.example/cpu-burn\n    for: 1s\n    when:\n      - {metric: cpu.usage_percent, above: 30, clear_below: 20}\n",
        )
        .unwrap();
        let data = dir.path().join("data");
        let config = dir.path().join("agent.toml");
        std::fs::write(
            &config,
            format!(
                "interval = \"1s\"\nsocket = \"{socket}\"\ndata_dir = \"{}\"\ncollector = \"{collector}\"\nalerts_dir = \"{}\"\n{extra}\n[detect]\nenabled = false\n",
                data.display(),
                alerts.display()
            ),
        )
        .unwrap();
        let child = vigil_tests::agent_on(&config).0;
        Self {
            child,
            config,
            socket,
            data,
            _dir: dir,
        }
    }

    /// Stops the agent and starts it again on the same data dir, with `more` added
    /// to its config.
    fn restart(&mut self, more: &str) {
        let _ = self.child.0.kill();
        let _ = self.child.0.wait();
        let mut text = std::fs::read_to_string(&self.config).unwrap();
        text.push_str(more);
        std::fs::write(&self.config, text).unwrap();
        self.child = vigil_tests::agent_on(&self.config).0;
    }

    fn alert_state(&self) -> Option<String> {
        let v = vigil_tests::vigil_json(&["alerts", "--json", "--socket", &self.socket]);
        v["active"].as_array().and_then(|a| {
            a.iter()
                .find(|a| a["alert"] == "IncidentCpuBurn")
                .map(|a| a["state"].as_str().unwrap_or("").to_string())
        })
    }

    fn intervals(&self) -> u64 {
        let out = Command::new(vigil_tests::vigil_bin())
            .args(["why", "--json", "--since", "10m", "--socket", &self.socket])
            .output()
            .unwrap();
        serde_json::from_slice::<Value>(&out.stdout).unwrap_or(Value::Null)["window_intervals"]
            .as_u64()
            .unwrap_or(0)
    }

    fn more_intervals(&self, n: u64) {
        let start = self.intervals();
        vigil_tests::daemons::wait_until("more intervals", Duration::from_secs(60), || {
            self.intervals() >= start + n
        });
    }
}

/// The agent's last batch's sequence number.
fn sequence(agent: &Agent) -> u64 {
    vigil_tests::vigil_json(&["stats", "--json", "--socket", &agent.socket])["agent"]["last_seq"]
        .as_u64()
        .expect("the agent's last sequence")
}

/// Runs `vigil incident snapshot` with `args`, returns the file's text.
fn snapshot(args: &[&str], out: &std::path::Path) -> String {
    let o = Command::new(vigil_tests::vigil_bin())
        .args(["incident", "snapshot", "--out", out.to_str().unwrap()])
        .args(args)
        .output()
        .unwrap();
    assert!(
        o.status.success(),
        "vigil incident snapshot {args:?}: {}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    println!("{}", String::from_utf8_lossy(&o.stdout));
    std::fs::read_to_string(out).unwrap()
}

/// The snapshot from the collector at `addr`, once it holds the host's batches up to
/// sequence `sequence`.
fn from_collector(
    addr: &str,
    host: &str,
    from: &str,
    sequence: u64,
    out: &std::path::Path,
) -> String {
    vigil_tests::daemons::wait_until(
        "the agent's batches at the collector",
        Duration::from_secs(60),
        || {
            let v = vigil_tests::vigil_json(&["hosts", "--collector", addr, "--json"]);
            v["hosts"].as_array().is_some_and(|h| {
                h.iter()
                    .any(|h| h["last_seq"].as_u64().unwrap_or(0) >= sequence)
            })
        },
    );
    snapshot(&["--collector", addr, "--host", host, "--from", from], out)
}

/// The text between `<table id="ID">` and its `</table>`.
fn table<'a>(html: &'a str, id: &str) -> &'a str {
    let start = html
        .find(&format!("<table id=\"{id}\">"))
        .unwrap_or_else(|| panic!("no table {id}"));
    let end = start + html[start..].find("</table>").unwrap();
    &html[start..end]
}

/// The rows of a table whose first cell is `pid`.
fn has_pid(table: &str, pid: u32) -> bool {
    table.contains(&format!("<tr><td>{pid}</td>"))
}

/// Every plot: a PNG of WIDTH x HEIGHT whose first series' colour is on many
/// columns and over more than one row band (a line that moves), and its data in the
/// page's JSON not constant.
fn check_plots(html: &str) {
    let data = {
        let start = html
            .find("<script type=\"application/json\" id=\"vigil-data\">")
            .unwrap();
        let body = &html[start..];
        let body = &body[body.find('>').unwrap() + 1..body.find("</script>").unwrap()];
        serde_json::from_str::<Value>(body).expect("the page's data is JSON")
    };
    for id in PLOTS {
        let tag = format!("<img id=\"plot-{id}\"");
        let at = html.find(&tag).unwrap_or_else(|| panic!("no plot {id}"));
        let src = &html[at..];
        let b64 = &src[src.find("data:image/png;base64,").unwrap() + 22..];
        let b64 = &b64[..b64.find('"').unwrap()];
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(b64)
            .unwrap_or_else(|e| panic!("plot {id}: not base64: {e}"));
        let decoder = png::Decoder::new(bytes.as_slice());
        let mut reader = decoder
            .read_info()
            .unwrap_or_else(|e| panic!("plot {id}: not a PNG: {e}"));
        let mut buf = vec![0; reader.output_buffer_size()];
        let info = reader.next_frame(&mut buf).unwrap();
        assert_eq!((info.width, info.height), (WIDTH, HEIGHT), "plot {id}");
        let channels = info.line_size / info.width as usize;
        assert!(channels >= 3, "plot {id}: {:?}", info.color_type);
        // Columns with any series drawn; rows the first series reaches.
        let mut columns = std::collections::BTreeSet::new();
        let mut rows = std::collections::BTreeSet::new();
        for y in 0..info.height as usize {
            for x in 0..info.width as usize {
                let p = &buf[y * info.line_size + x * channels..][..3];
                if PALETTE.iter().any(|c| p == c) {
                    columns.insert(x);
                }
                if p == SERIES_RGB {
                    rows.insert(y);
                }
            }
        }
        let plot = data["plots"]
            .as_array()
            .unwrap()
            .iter()
            .find(|p| p["id"] == id)
            .unwrap_or_else(|| panic!("plot {id} not in the data"));
        let first: Vec<f64> = plot["series"][0]["points"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| p[1].as_f64().unwrap())
            .collect();
        println!(
            "plot {id}: {} points, series drawn over {} columns, the first over {} rows",
            first.len(),
            columns.len(),
            rows.len()
        );
        assert!(
            columns.len() > WIDTH as usize / 2,
            "plot {id}: the series covers {} columns",
            columns.len()
        );
        // The data a person came for changes over the incident: CPU, memory and PSI
        // (the burner and the hog) at least.
        if matches!(id, "cpu" | "memory") {
            assert!(
                first.iter().any(|v| *v != first[0]),
                "plot {id}: constant data {first:?}"
            );
            assert!(
                rows.len() > 3,
                "plot {id}: a flat line ({} rows)",
                rows.len()
            );
        }
    }
}

/// `word` in `text` with no letter, digit, '-' or '_' on either side.
fn has_word(text: &str, word: &str) -> bool {
    let part = |c: char| c.is_alphanumeric() || c == '-' || c == '_';
    text.match_indices(word).any(|(at, _)| {
        !text[..at].chars().next_back().is_some_and(part)
            && !text[at + word.len()..].chars().next().is_some_and(part)
    })
}

/// `addr` in `text` with nothing that continues an address on either side.
fn has_address(text: &str, addr: &str) -> bool {
    let part = |c: char| c.is_ascii_hexdigit() || c == ':' || c == '.';
    text.match_indices(addr).any(|(at, _)| {
        !text[..at].chars().next_back().is_some_and(part)
            && !text[at + addr.len()..].chars().next().is_some_and(part)
    })
}

/// The page's text without the inlined images, and the postmortem Markdown decoded
/// from its download link (redaction must reach both).
fn readable(html: &str) -> String {
    let mut out = String::new();
    let mut rest = html;
    while let Some(at) = rest.find("data:") {
        out.push_str(&rest[..at]);
        let uri = &rest[at..];
        let end = uri.find('"').unwrap_or(uri.len());
        if let Some(b64) = uri[..end].strip_prefix("data:text/markdown;base64,") {
            let md = base64::engine::general_purpose::STANDARD
                .decode(b64)
                .unwrap();
            out.push_str(&String::from_utf8(md).unwrap());
        }
        rest = &uri[end..];
    }
    out.push_str(rest);
    out
}

/// This host's addresses, from `ip -o addr`.
fn addresses() -> Vec<String> {
    let out = Command::new("ip").args(["-o", "addr"]).output().unwrap();
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            let at = f.iter().position(|w| *w == "inet" || *w == "inet6")?;
            Some(f.get(at + 1)?.split('/').next()?.to_string())
        })
        .collect()
}

#[test]
fn a_snapshot_of_a_cpu_burner_and_a_memory_hog_has_the_alert_the_processes_and_the_plots() {
    if !require_root(
        "a_snapshot_of_a_cpu_burner_and_a_memory_hog_has_the_alert_the_processes_and_the_plots",
    ) {
        return;
    }
    let collector = vigil_tests::daemons::Collector::start(&[]);
    let mut agent = Agent::start(
        &collector.addr,
        "[incident]\nauto_snapshot = true\nbefore = \"1m\"\n",
    );
    agent.more_intervals(5);
    // The alert must be the burner's: wait for a host quiet enough that it is not
    // active (other load on the machine would fire it first).
    vigil_tests::daemons::wait_until(
        "a quiet host: IncidentCpuBurn not active",
        Duration::from_secs(120),
        || agent.alert_state().is_none(),
    );
    let started = vigil_units::unix_ms(std::time::SystemTime::now());
    let from = vigil_units::rfc3339_ms(started - 3000);
    // The burner carries this host's address as an argument: a command line the
    // snapshot shows and --redact must mask; and a word of the page's own ("snapshot"),
    // which --redact must mask in the command line and leave in the page's prose.
    let ip = addresses()
        .into_iter()
        .find(|a| a.contains('.') && a != "127.0.0.1")
        .expect("an IPv4 address besides loopback");
    let mut burner = Workload::spawn(WORKLOAD, &["spin", "120000", &ip, "snapshot"]);
    let mut hog = Workload::spawn(WORKLOAD, &["hold-memory", "768", "120000"]);
    let (burner_pid, hog_pid) = (burner.pid(), hog.pid());
    burner.go();
    hog.go();
    vigil_tests::daemons::wait_until("IncidentCpuBurn firing", Duration::from_secs(60), || {
        agent.alert_state().as_deref() == Some("firing")
    });
    // The agent took its own snapshot when the critical alert fired.
    let incidents = agent.data.join("incidents");
    vigil_tests::daemons::wait_until("the agent's own snapshot", Duration::from_secs(60), || {
        vigil_tests::vigil_json(&["stats", "--json", "--socket", &agent.socket])["agent"]
            ["incident_snapshots"]["written"]
            .as_u64()
            == Some(1)
    });
    let auto: Vec<_> = std::fs::read_dir(&incidents)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    assert_eq!(auto.len(), 1, "{auto:?}");
    let name = auto[0].file_name().unwrap().to_string_lossy().to_string();
    assert!(
        name.starts_with("vigil-incident-") && name.ends_with("-IncidentCpuBurn.html"),
        "{name}"
    );
    let auto = std::fs::read_to_string(&auto[0]).unwrap();
    assert!(
        table(&auto, "timeline").contains("IncidentCpuBurn"),
        "the agent's own snapshot has the alert in its timeline"
    );
    assert!(has_pid(table(&auto, "top-cpu"), burner_pid));
    check_plots(&auto);
    agent.more_intervals(3);
    drop(burner);
    drop(hog);
    vigil_tests::daemons::wait_until("IncidentCpuBurn resolved", Duration::from_secs(60), || {
        agent.alert_state().is_none()
    });
    agent.more_intervals(2);
    let dir = tempfile::tempdir().unwrap();
    let hostname = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .unwrap()
        .trim()
        .to_string();
    let local = snapshot(
        &["--local", "--socket", &agent.socket, "--from", &from],
        &dir.path().join("local.html"),
    );
    let sent = sequence(&agent);
    // The collector's copy: once it holds the agent's batches up to now.
    let fleet = from_collector(
        &collector.addr,
        &hostname,
        &from,
        sent,
        &dir.path().join("fleet.html"),
    );
    for (name, html) in [("local", &local), ("collector", &fleet)] {
        println!("checking the snapshot from the {name}");
        let timeline = table(html, "timeline");
        assert!(
            timeline.contains("alert firing") && timeline.contains("IncidentCpuBurn"),
            "{name}: no firing alert in the timeline: {timeline}"
        );
        assert!(
            timeline.contains("alert resolved"),
            "{name}: no resolution in the timeline: {timeline}"
        );
        let top = table(html, "top-cpu");
        assert!(
            has_pid(top, burner_pid),
            "{name}: the burner (pid {burner_pid}) is not in the top processes by CPU: {top}"
        );
        let top = table(html, "top-memory");
        assert!(
            has_pid(top, hog_pid),
            "{name}: the hog (pid {hog_pid}) is not in the top processes by memory: {top}"
        );
        assert!(html.contains("<pre id=\"postmortem\">"), "{name}");
        assert!(
            has_word(html, &hostname),
            "{name}: the hostname is not named"
        );
        assert!(
            has_address(&readable(html), &ip),
            "{name}: the burner's argument {ip} is not in the file"
        );
        check_plots(html);
    }
    // Redacted: the same page with no hostname and no address of this host.
    let redacted = snapshot(
        &[
            "--local",
            "--socket",
            &agent.socket,
            "--from",
            &from,
            "--redact",
        ],
        &dir.path().join("redacted.html"),
    );
    let text = readable(&redacted);
    assert!(
        !has_word(&text, &hostname),
        "the hostname {hostname} is in the redacted file"
    );
    for a in addresses() {
        assert!(
            !has_address(&text, &a),
            "the address {a} is in the redacted file"
        );
    }
    let top = table(&redacted, "top-cpu");
    assert!(has_pid(top, burner_pid));
    assert!(
        !has_word(top, "snapshot"),
        "the burner's argument is masked: {top}"
    );
    assert!(
        redacted.contains("Made by <code>vigil incident snapshot</code>"),
        "the page's own words stay"
    );
    assert!(table(&redacted, "timeline").contains("IncidentCpuBurn"));
    check_plots(&redacted);
    // A restart with the syscall-latency probe off: the collector's snapshot shows the
    // restart and the probe's change in its timeline.
    let before = sequence(&agent);
    agent.restart("[probes]\nsyscalls = false\n");
    let restarted = from_collector(
        &collector.addr,
        &hostname,
        &from,
        before + 2,
        &dir.path().join("restarted.html"),
    );
    let timeline = table(&restarted, "timeline");
    assert!(timeline.contains("agent restart"), "{timeline}");
    assert!(
        timeline.contains("syscall-latency: on -&gt; not requested"),
        "{timeline}"
    );
    // To look at them: VIGIL_KEEP_SNAPSHOTS=DIR.
    if let Some(keep) = std::env::var_os("VIGIL_KEEP_SNAPSHOTS") {
        for f in [
            "local.html",
            "fleet.html",
            "redacted.html",
            "restarted.html",
        ] {
            std::fs::copy(dir.path().join(f), std::path::Path::new(&keep).join(f)).unwrap();
        }
    }
}
