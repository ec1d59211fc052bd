//! `vigil incident snapshot`: one self-contained HTML file an engineer attaches to a
//! ticket. HTML rather than an archive: it opens in any browser with nothing to unpack,
//! a ticket system previews it, and it still carries everything: the timeline, the
//! tables, the plots (PNG, drawn by plotters with an embedded font and inlined as base64),
//! the blameless postmortem draft (Markdown, shown and downloadable from the page), and
//! the data behind the plots as JSON (`<script id="vigil-data">`) for tools.
use std::collections::BTreeMap;
use std::fmt::Write as _;

use base64::Engine as _;
use serde::Serialize;
use vigil_proto::v1 as pb;

use super::{clock, why, History};

/// Every plot's size in pixels.
pub const PLOT_WIDTH: u32 = 900;
pub const PLOT_HEIGHT: u32 = 300;
/// The first series' colour (the tests find the line by it).
pub const SERIES_RGB: [u8; 3] = [31, 119, 180];
const PALETTE: [[u8; 3]; 4] = [SERIES_RGB, [255, 127, 14], [44, 160, 44], [148, 103, 189]];
const MARK_RGB: [u8; 3] = [214, 39, 40];

static FONT: &[u8] = include_bytes!("../../assets/DejaVuSans.ttf");

/// What a snapshot is made of.
pub struct Inputs {
    /// Intervals from a baseline before `from` to `to`.
    pub history: History,
    pub from: i64,
    pub to: i64,
    /// Security findings of the host in the window.
    pub findings: Vec<pb::Finding>,
    /// Maintenance windows that cover the host (and overlap the window), or why they
    /// could not be read (the timeline says so rather than showing none).
    pub windows: Result<Vec<pb::Silence>, String>,
    /// Where it came from, for the header ("the agent on vm", "the collector at ...").
    pub source: String,
}

#[derive(Clone, Debug, Serialize)]
pub struct Series {
    pub name: String,
    /// (Unix ms, value)
    pub points: Vec<(i64, f64)>,
}

#[derive(Clone, Debug, Serialize)]
pub struct Plot {
    pub id: String,
    pub title: String,
    pub unit: String,
    pub series: Vec<Series>,
}

#[derive(Clone, Debug, Serialize)]
struct Event {
    time_unix_ms: i64,
    kind: String,
    what: String,
}

/// The window's intervals (end in (from, to]).
fn window(inputs: &Inputs) -> Vec<&pb::Batch> {
    inputs
        .history
        .intervals
        .iter()
        .filter(|b| b.end_unix_ms > inputs.from && b.end_unix_ms <= inputs.to)
        .collect()
}

fn timeline(inputs: &Inputs, intervals: &[&pb::Batch]) -> Vec<Event> {
    let mut out = Vec::new();
    for b in intervals {
        for a in &b.alerts {
            if a.state == "pending" || a.state == "cancelled" {
                continue;
            }
            let labels: Vec<String> = a.labels.iter().map(|(k, v)| format!("{k}={v}")).collect();
            out.push(Event {
                time_unix_ms: a.time_unix_ms,
                kind: format!("alert {}", a.state),
                what: format!(
                    "{} ({}{}{}): {}",
                    a.alert,
                    a.severity,
                    if labels.is_empty() { "" } else { ", " },
                    labels.join(", "),
                    a.summary
                ),
            });
        }
    }
    for f in &inputs.findings {
        let who = f
            .process
            .as_ref()
            .map_or(String::new(), |p| format!(" by {} (pid {})", p.exe, p.pid));
        out.push(Event {
            time_unix_ms: f.time_unix_ms,
            kind: "finding".into(),
            what: format!("{} ({}): {}{who}", f.rule, f.severity, f.description),
        });
    }
    if let Err(why) = &inputs.windows {
        out.push(Event {
            time_unix_ms: inputs.from,
            kind: "maintenance".into(),
            what: format!("maintenance windows not read: {why}"),
        });
    }
    for w in inputs.windows.iter().flatten() {
        let matchers: Vec<String> = w
            .matchers
            .iter()
            .map(|m| format!("{}={}", m.name, m.value))
            .collect();
        out.push(Event {
            time_unix_ms: w.starts_unix_ms.max(inputs.from),
            kind: "maintenance".into(),
            what: format!(
                "window {} until {} by {}: {} ({})",
                w.id,
                clock(w.ends_unix_ms),
                w.created_by,
                w.comment,
                matchers.join(", ")
            ),
        });
    }
    // Restarts and probe state changes: each interval against the one before it (the
    // baseline's last one for the window's first).
    let upto: Vec<&pb::Batch> = inputs
        .history
        .intervals
        .iter()
        .filter(|b| b.end_unix_ms <= inputs.to)
        .collect();
    for pair in upto.windows(2) {
        let (a, b) = (pair[0], pair[1]);
        if b.end_unix_ms <= inputs.from {
            continue;
        }
        if b.agent_started_unix_ms != 0 && b.agent_started_unix_ms != a.agent_started_unix_ms {
            let version = b.host.as_ref().map_or("", |h| h.agent_version.as_str());
            out.push(Event {
                time_unix_ms: b.agent_started_unix_ms,
                kind: "agent restart".into(),
                what: format!(
                    "the agent started again (version {version}); its last interval before ended {}",
                    clock(a.end_unix_ms)
                ),
            });
        }
        if a.probes.is_empty() || b.probes.is_empty() {
            continue;
        }
        let names: std::collections::BTreeSet<&String> =
            a.probes.keys().chain(b.probes.keys()).collect();
        for name in names {
            let (was, now) = (a.probes.get(name), b.probes.get(name));
            if was != now {
                let show = |s: Option<&String>| s.map_or("absent".to_string(), |s| s.clone());
                out.push(Event {
                    time_unix_ms: b.end_unix_ms,
                    kind: "probe".into(),
                    what: format!(
                        "{name}: {} -> {} (between {} and {})",
                        show(was),
                        show(now),
                        clock(a.end_unix_ms),
                        clock(b.end_unix_ms)
                    ),
                });
            }
        }
    }
    if let Some(first) = intervals.first() {
        // Started inside the window with nothing before it in the history.
        if first.agent_started_unix_ms > inputs.from
            && !upto.iter().any(|b| b.end_unix_ms < first.end_unix_ms)
        {
            out.push(Event {
                time_unix_ms: first.agent_started_unix_ms,
                kind: "agent restart".into(),
                what: "the agent started (no interval before it in the history)".into(),
            });
        }
    }
    // Gaps: no interval for more than two intervals' time: the agent (or the host) was
    // down or restarting.
    for pair in intervals.windows(2) {
        let (a, b) = (pair[0], pair[1]);
        let step = (a.end_unix_ms - a.start_unix_ms).max(1);
        if b.start_unix_ms - a.end_unix_ms > 2 * step {
            out.push(Event {
                time_unix_ms: a.end_unix_ms,
                kind: "no data".into(),
                what: format!(
                    "no interval from {} to {}: the agent was down or restarting (or the host)",
                    clock(a.end_unix_ms),
                    clock(b.start_unix_ms)
                ),
            });
        }
        let lost: u64 = b.losses.as_ref().map_or(0, |l| {
            l.slow_syscall_ringbuf_full
                + l.retransmit_ringbuf_full
                + l.process_ringbuf_full
                + l.security_ringbuf_full
                + l.pipeline_dropped
                + l.spool_dropped_batches
        });
        if lost > 0 {
            out.push(Event {
                time_unix_ms: b.end_unix_ms,
                kind: "events lost".into(),
                what: format!(
                    "{lost} events lost in this interval (counted by stage in the batch's losses)"
                ),
            });
        }
    }
    out.sort_by_key(|e| e.time_unix_ms);
    out
}

fn metrics(b: &pb::Batch) -> Option<&pb::HostMetrics> {
    b.metrics.last()
}

fn series(name: &str, intervals: &[&pb::Batch], f: impl Fn(&pb::Batch) -> Option<f64>) -> Series {
    Series {
        name: name.into(),
        points: intervals
            .iter()
            .filter_map(|b| f(b).map(|v| (b.end_unix_ms, v)))
            .collect(),
    }
}

fn plots(intervals: &[&pb::Batch]) -> Vec<Plot> {
    let psi = |p: &Option<pb::PressureResource>| p.as_ref().and_then(|r| r.some).map(|l| l.avg10);
    let mut out = vec![
        Plot {
            id: "cpu".into(),
            title: "CPU busy".into(),
            unit: "% of all CPUs".into(),
            series: vec![series("cpu", intervals, |b| {
                metrics(b).map(|m| m.cpu_usage_percent)
            })],
        },
        Plot {
            id: "memory".into(),
            title: "Memory used".into(),
            unit: "% of memory, not available".into(),
            series: vec![series("memory", intervals, |b| {
                metrics(b).filter(|m| m.memory_total_bytes > 0).map(|m| {
                    100.0 - 100.0 * m.memory_available_bytes as f64 / m.memory_total_bytes as f64
                })
            })],
        },
        Plot {
            id: "pressure".into(),
            title: "Pressure (PSI some, avg10)".into(),
            unit: "%".into(),
            series: vec![
                series("cpu", intervals, |b| {
                    metrics(b).and_then(|m| psi(&m.pressure_cpu))
                }),
                series("memory", intervals, |b| {
                    metrics(b).and_then(|m| psi(&m.pressure_memory))
                }),
                series("io", intervals, |b| {
                    metrics(b).and_then(|m| psi(&m.pressure_io))
                }),
            ],
        },
    ];
    // Disks: the three busiest.
    let mut busy: BTreeMap<String, f64> = BTreeMap::new();
    for m in intervals.iter().filter_map(|b| metrics(b)) {
        for d in &m.disks {
            *busy.entry(d.device.clone()).or_default() += d.io_time_ms_per_sec;
        }
    }
    let mut disks: Vec<(String, f64)> = busy.into_iter().collect();
    disks.sort_by(|a, b| b.1.partial_cmp(&a.1).unwrap_or(std::cmp::Ordering::Equal));
    out.push(Plot {
        id: "disk".into(),
        title: "Disk busy".into(),
        unit: "% of the time".into(),
        series: disks
            .iter()
            .take(3)
            .map(|(dev, _)| {
                series(dev, intervals, |b| {
                    metrics(b)
                        .and_then(|m| m.disks.iter().find(|d| &d.device == dev))
                        .map(|d| (d.io_time_ms_per_sec / 10.0).min(100.0))
                })
            })
            .collect(),
    });
    out.push(Plot {
        id: "network".into(),
        title: "Network (all interfaces)".into(),
        unit: "MB/s".into(),
        series: vec![
            series("received", intervals, |b| {
                metrics(b).map(|m| m.network.iter().map(|n| n.rx_bytes_per_sec).sum::<f64>() / 1e6)
            }),
            series("sent", intervals, |b| {
                metrics(b).map(|m| m.network.iter().map(|n| n.tx_bytes_per_sec).sum::<f64>() / 1e6)
            }),
        ],
    });
    // Syscall p99: the three syscalls with the most time in the window.
    let mut time: BTreeMap<String, u64> = BTreeMap::new();
    for b in intervals {
        for s in &b.syscalls {
            if !crate::query::top::IDLE_WAITS.contains(&s.name.as_str()) {
                *time.entry(s.name.clone()).or_default() += s.total_ns;
            }
        }
    }
    let mut top: Vec<(String, u64)> = time.into_iter().collect();
    top.sort_by_key(|x| std::cmp::Reverse(x.1));
    out.push(Plot {
        id: "syscalls".into(),
        title: "Syscall p99 (the three with the most time)".into(),
        unit: "ms".into(),
        series: top
            .iter()
            .take(3)
            .map(|(name, _)| {
                series(name, intervals, |b| {
                    b.syscalls
                        .iter()
                        .find(|s| &s.name == name)
                        .and_then(crate::alerts::metric::p99_secs)
                        .map(|s| s * 1e3)
                })
            })
            .collect(),
    });
    out.push(Plot {
        id: "retransmits".into(),
        title: "TCP retransmits".into(),
        unit: "per interval".into(),
        series: vec![series("retransmits", intervals, |b| {
            Some(b.retransmits.len() as f64)
        })],
    });
    out
}

/// A plot as PNG bytes, with vertical marks at `marks` (alert times).
pub fn draw(plot: &Plot, from: i64, to: i64, marks: &[i64]) -> anyhow::Result<Vec<u8>> {
    use plotters::prelude::*;
    static REGISTER: std::sync::Once = std::sync::Once::new();
    REGISTER.call_once(|| {
        let _ = plotters::style::register_font("sans-serif", FontStyle::Normal, FONT);
    });
    let (w, h) = (PLOT_WIDTH, PLOT_HEIGHT);
    let mut buf = vec![255u8; (w * h * 3) as usize];
    {
        let root = BitMapBackend::with_buffer(&mut buf, (w, h)).into_drawing_area();
        root.fill(&WHITE).map_err(|e| anyhow::anyhow!("{e}"))?;
        let top = plot
            .series
            .iter()
            .flat_map(|s| s.points.iter().map(|p| p.1))
            .fold(0.0f64, f64::max);
        let top = if top > 0.0 { top * 1.1 } else { 1.0 };
        let mut chart = ChartBuilder::on(&root)
            .caption(
                format!("{} ({})", plot.title, plot.unit),
                ("sans-serif", 18),
            )
            .margin(8)
            .x_label_area_size(28)
            .y_label_area_size(56)
            .build_cartesian_2d(from..to.max(from + 1), 0.0..top)
            .map_err(|e| anyhow::anyhow!("{e}"))?;
        chart
            .configure_mesh()
            .x_labels(6)
            .y_labels(5)
            .x_label_formatter(&|t| clock(*t))
            .label_style(("sans-serif", 12))
            .draw()
            .map_err(|e| anyhow::anyhow!("{e}"))?;
        for t in marks.iter().filter(|t| **t > from && **t <= to) {
            let c = RGBColor(MARK_RGB[0], MARK_RGB[1], MARK_RGB[2]);
            chart
                .draw_series(LineSeries::new([(*t, 0.0), (*t, top)], c.stroke_width(1)))
                .map_err(|e| anyhow::anyhow!("{e}"))?;
        }
        for (i, s) in plot.series.iter().enumerate() {
            let [r, g, b] = PALETTE[i % PALETTE.len()];
            let c = RGBColor(r, g, b);
            chart
                .draw_series(LineSeries::new(s.points.iter().copied(), c.stroke_width(2)))
                .map_err(|e| anyhow::anyhow!("{e}"))?
                .label(s.name.clone())
                .legend(move |(x, y)| PathElement::new([(x, y), (x + 16, y)], c.stroke_width(2)));
        }
        if plot.series.len() > 1 {
            chart
                .configure_series_labels()
                .background_style(WHITE.mix(0.8))
                .border_style(BLACK)
                .label_font(("sans-serif", 12))
                .draw()
                .map_err(|e| anyhow::anyhow!("{e}"))?;
        }
        root.present().map_err(|e| anyhow::anyhow!("{e}"))?;
    }
    let mut png = Vec::new();
    {
        let mut enc = png::Encoder::new(&mut png, w, h);
        enc.set_color(png::ColorType::Rgb);
        enc.set_depth(png::BitDepth::Eight);
        enc.write_header()?.write_image_data(&buf)?;
    }
    Ok(png)
}

/// Command lines in the tables: the arguments in their first CMDLINE_CHARS characters,
/// then "…" (some carry whole environments).
const CMDLINE_CHARS: usize = 160;

/// Cut between arguments, never inside one (a part of an argument is not
/// something `--redact` knows to mask).
fn cmdline(s: &str) -> String {
    match s.char_indices().nth(CMDLINE_CHARS) {
        Some((at, _)) => {
            let cut = s[..at].rfind(char::is_whitespace).unwrap_or(0);
            format!("{} …", s[..cut].trim_end())
        }
        None => s.to_string(),
    }
}

/// Data in the page (what `--redact` may change) is marked: between OPEN and CLOSE
/// (private-use characters, removed before the page is written). The page's own words
/// are not: an argument that happens to be "incident" leaves the page's prose alone.
const OPEN: char = '\u{E000}';
const CLOSE: char = '\u{E001}';

/// Data, marked.
fn m(s: &str) -> String {
    let s: String = s.chars().filter(|c| *c != OPEN && *c != CLOSE).collect();
    format!("{OPEN}{s}{CLOSE}")
}

/// Data for the HTML: escaped and marked.
fn d(s: &str) -> String {
    m(&esc(s))
}

/// The text with its marks removed.
fn unmark(s: &str) -> String {
    s.chars().filter(|c| *c != OPEN && *c != CLOSE).collect()
}

fn esc(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

/// Per-process figures over the window: (pid, comm, user, cmdline, mean CPU %, max CPU %,
/// max RSS).
type ProcRow = (u32, String, String, String, f64, f64, u64);

fn processes(intervals: &[&pb::Batch]) -> Vec<ProcRow> {
    let mut by: BTreeMap<u32, ProcRow> = BTreeMap::new();
    let n = intervals.len().max(1) as f64;
    for m in intervals.iter().filter_map(|b| metrics(b)) {
        for p in m.top_cpu.iter().chain(&m.top_memory) {
            let e = by.entry(p.pid).or_insert_with(|| {
                (
                    p.pid,
                    p.comm.clone(),
                    p.user.clone(),
                    p.cmdline.clone(),
                    0.0,
                    0.0,
                    0,
                )
            });
            e.6 = e.6.max(p.rss_bytes);
        }
        for p in &m.top_cpu {
            if let Some(e) = by.get_mut(&p.pid) {
                e.4 += p.cpu_percent / n;
                e.5 = e.5.max(p.cpu_percent);
            }
        }
    }
    by.into_values().collect()
}

/// The postmortem draft (Markdown), prefilled with the facts.
fn postmortem(inputs: &Inputs, report: &why::Report, events: &[Event]) -> String {
    let mut s = String::new();
    let host = m(&inputs.history.host.hostname);
    let _ = writeln!(
        s,
        "# Postmortem: {host}, {} to {} UTC\n",
        vigil_units::rfc3339_ms(inputs.from),
        vigil_units::rfc3339_ms(inputs.to)
    );
    let _ = writeln!(s, "Blameless: this describes what happened and what the systems showed, not who is at fault.\n");
    let _ = writeln!(s, "## Summary\n");
    match report.findings.first() {
        Some(f) => {
            let _ = writeln!(
                s,
                "Between {} and {} UTC on {host}, the largest change Vigil saw was: {}.\n",
                clock(inputs.from),
                clock(inputs.to),
                m(&f.title)
            );
        }
        None => {
            let _ = writeln!(s, "Between {} and {} UTC on {host}, nothing stood out against the hour before in CPU, memory, disk, network or syscall latency.\n", clock(inputs.from), clock(inputs.to));
        }
    }
    let _ = writeln!(s, "_(Edit: what users saw, in one or two sentences.)_\n");
    let _ = writeln!(s, "## Impact\n");
    let firing: Vec<&Event> = events.iter().filter(|e| e.kind == "alert firing").collect();
    let _ = writeln!(
        s,
        "- Window: {} to {} UTC ({}).",
        vigil_units::rfc3339_ms(inputs.from),
        vigil_units::rfc3339_ms(inputs.to),
        vigil_units::human_secs((inputs.to - inputs.from) as f64 / 1000.0)
    );
    let _ = writeln!(s, "- Alerts that fired: {}.", firing.len());
    let _ = writeln!(s, "- Security findings: {}.", inputs.findings.len());
    let _ = writeln!(s, "- _(Edit: users, requests or jobs affected.)_\n");
    let _ = writeln!(s, "## Timeline (UTC)\n");
    if events.is_empty() {
        let _ = writeln!(
            s,
            "- (no alerts, findings, maintenance windows or data gaps in the window)"
        );
    }
    for e in events {
        let _ = writeln!(s, "- {} {}: {}", clock(e.time_unix_ms), e.kind, m(&e.what));
    }
    let _ = writeln!(s, "\n## What the data shows\n");
    if report.findings.is_empty() {
        let _ = writeln!(
            s,
            "- Nothing stands out against the baseline ({} intervals before the window).",
            report.baseline_intervals
        );
    }
    for f in &report.findings {
        let when = f
            .since_unix_ms
            .map_or(String::new(), |t| format!(" (since {})", clock(t)));
        let _ = writeln!(s, "- {}{when}", m(&f.title));
        for e in &f.evidence {
            let _ = writeln!(s, "  - {}", m(e));
        }
        for p in &f.processes {
            let _ = writeln!(s, "  - {} (pid {}): {}", m(&p.comm), p.pid, m(&p.detail));
        }
    }
    let _ = writeln!(s, "\n## Contributing factors\n\n- \n");
    let _ = writeln!(s, "## What went well\n\n- \n");
    let _ = writeln!(s, "## What could have gone better\n\n- \n");
    let _ = writeln!(
        s,
        "## Action items\n\n| Action | Owner | Due | Ticket |\n|---|---|---|---|\n|  |  |  |  |"
    );
    s
}

/// The snapshot, as one HTML page.
pub fn render(inputs: &Inputs, redact: bool) -> anyhow::Result<String> {
    let intervals = window(inputs);
    let events = timeline(inputs, &intervals);
    let report = why::analyze(&inputs.history, inputs.from, inputs.to, why::Focus::Host);
    let plots = plots(&intervals);
    let marks: Vec<i64> = events
        .iter()
        .filter(|e| e.kind == "alert firing")
        .map(|e| e.time_unix_ms)
        .collect();
    let host = inputs.history.host.hostname.clone();
    let mut h = String::new();
    let _ = write!(
        h,
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"><title>Incident snapshot: {} {}</title>\n\
         <style>body{{font-family:sans-serif;max-width:1000px;margin:1em auto;color:#222}} table{{border-collapse:collapse;margin:.5em 0}} \
         td,th{{border:1px solid #ccc;padding:2px 6px;font-size:13px;text-align:left;vertical-align:top}} th{{background:#f4f4f4}} \
         pre{{background:#f8f8f8;padding:8px;white-space:pre-wrap}} .cause{{font-weight:bold}}</style></head><body>\n",
        d(&host),
        esc(&vigil_units::rfc3339_ms(inputs.from))
    );
    let _ = writeln!(
        h,
        "<h1>Incident snapshot: {}</h1>\n<p>{} to {} UTC ({} intervals), from {}. Made by <code>vigil incident snapshot</code> at {} UTC{}.</p>",
        d(&host),
        esc(&vigil_units::rfc3339_ms(inputs.from)),
        esc(&vigil_units::rfc3339_ms(inputs.to)),
        intervals.len(),
        d(&inputs.source),
        esc(&vigil_units::rfc3339_ms(vigil_units::unix_ms(std::time::SystemTime::now()))),
        if redact { "; hostnames, IP addresses, user names and command-line arguments are replaced by tokens (the same value, the same token)" } else { "" }
    );
    let _ = writeln!(h, "<h2>What changed</h2>\n<p>Against the {} intervals before the window (<code>vigil why</code>):</p><ol>", report.baseline_intervals);
    if report.findings.is_empty() {
        let _ = writeln!(h, "<li>nothing stands out</li>");
    }
    for f in &report.findings {
        let when = f
            .since_unix_ms
            .map_or(String::new(), |t| format!(" since {}", clock(t)));
        let _ = write!(
            h,
            "<li class=\"{}\">{}{when}<ul>",
            if f.cause { "cause" } else { "symptom" },
            d(&f.title)
        );
        for e in &f.evidence {
            let _ = write!(h, "<li>{}</li>", d(e));
        }
        for p in &f.processes {
            let _ = write!(
                h,
                "<li>{} (pid {}): {}</li>",
                d(&p.comm),
                p.pid,
                d(&p.detail)
            );
        }
        let _ = writeln!(h, "</ul></li>");
    }
    let _ = writeln!(h, "</ol>\n<h2>Timeline</h2>\n<table id=\"timeline\"><tr><th>UTC</th><th>What</th><th>Detail</th></tr>");
    if events.is_empty() {
        let _ = writeln!(h, "<tr><td colspan=\"3\">no alerts, findings, maintenance windows or data gaps in the window</td></tr>");
    }
    for e in &events {
        let _ = writeln!(
            h,
            "<tr><td>{}</td><td>{}</td><td>{}</td></tr>",
            clock(e.time_unix_ms),
            esc(&e.kind),
            d(&e.what)
        );
    }
    let _ = writeln!(
        h,
        "</table>\n<h2>Plots</h2>\n<p>Red vertical lines: alerts firing.</p>"
    );
    for (i, p) in plots.iter().enumerate() {
        let _ = writeln!(
            h,
            "<figure><img id=\"plot-{}\" width=\"{PLOT_WIDTH}\" height=\"{PLOT_HEIGHT}\" alt=\"{}\" src=\"@@PLOT{i}@@\"></figure>",
            p.id,
            esc(&p.title)
        );
    }
    // Tables.
    let mut procs = processes(&intervals);
    procs.sort_by(|a, b| b.4.partial_cmp(&a.4).unwrap_or(std::cmp::Ordering::Equal));
    let _ = writeln!(h, "<h2>Top processes by CPU</h2>\n<table id=\"top-cpu\"><tr><th>pid</th><th>command</th><th>user</th><th>CPU % of a CPU (mean, max)</th><th>command line</th></tr>");
    for p in procs.iter().take(10) {
        let _ = writeln!(
            h,
            "<tr><td>{}</td><td>{}</td><td>{}</td><td>{:.0}, {:.0}</td><td>{}</td></tr>",
            p.0,
            d(&p.1),
            d(&p.2),
            p.4,
            p.5,
            d(&cmdline(&p.3))
        );
    }
    procs.sort_by_key(|p| std::cmp::Reverse(p.6));
    let _ = writeln!(h, "</table>\n<h2>Top processes by memory</h2>\n<table id=\"top-memory\"><tr><th>pid</th><th>command</th><th>user</th><th>resident (max)</th><th>command line</th></tr>");
    for p in procs.iter().take(10) {
        let _ = writeln!(
            h,
            "<tr><td>{}</td><td>{}</td><td>{}</td><td>{:.1} MiB</td><td>{}</td></tr>",
            p.0,
            d(&p.1),
            d(&p.2),
            p.6 as f64 / 1048576.0,
            d(&cmdline(&p.3))
        );
    }
    let _ = writeln!(h, "</table>\n<h2>Slowest syscalls</h2>\n<table id=\"syscalls\"><tr><th>syscall</th><th>calls</th><th>p99</th><th>max</th><th>total time</th></tr>");
    let mut merged: BTreeMap<String, pb::SyscallLatency> = BTreeMap::new();
    for b in &intervals {
        for s in &b.syscalls {
            let e = merged
                .entry(s.name.clone())
                .or_insert_with(|| pb::SyscallLatency {
                    name: s.name.clone(),
                    ..Default::default()
                });
            e.count += s.count;
            e.total_ns += s.total_ns;
            e.max_ns = e.max_ns.max(s.max_ns);
            if e.buckets.len() < s.buckets.len() {
                e.buckets.resize(s.buckets.len(), 0);
            }
            for (x, n) in e.buckets.iter_mut().zip(&s.buckets) {
                *x += n;
            }
        }
    }
    let mut rows: Vec<(pb::SyscallLatency, u64)> = merged
        .into_values()
        .filter(|s| !crate::query::top::IDLE_WAITS.contains(&s.name.as_str()))
        .map(|s| {
            let p = crate::alerts::metric::p99_secs(&s).map_or(0, |v| (v * 1e9) as u64);
            (s, p)
        })
        .collect();
    rows.sort_by_key(|r| std::cmp::Reverse(r.1));
    for (s, p) in rows.iter().take(15) {
        let _ = writeln!(
            h,
            "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
            d(&s.name),
            s.count,
            vigil_units::human_ns(*p),
            vigil_units::human_ns(s.max_ns),
            vigil_units::human_ns(s.total_ns)
        );
    }
    let _ = writeln!(h, "</table>\n<h2>Retransmits by peer</h2>\n<table id=\"retransmits\"><tr><th>peer</th><th>retransmits</th></tr>");
    let mut peers: BTreeMap<String, u64> = BTreeMap::new();
    for r in intervals.iter().flat_map(|b| &b.retransmits) {
        *peers.entry(format!("{}:{}", r.daddr, r.dport)).or_default() += 1;
    }
    let mut peers: Vec<(String, u64)> = peers.into_iter().collect();
    peers.sort_by_key(|p| std::cmp::Reverse(p.1));
    if peers.is_empty() {
        let _ = writeln!(h, "<tr><td colspan=\"2\">none in the window</td></tr>");
    }
    for (p, n) in peers.iter().take(20) {
        let _ = writeln!(h, "<tr><td>{}</td><td>{n}</td></tr>", d(p));
    }
    let _ = writeln!(h, "</table>\n<h2>Pressure (PSI)</h2>\n<table id=\"pressure\"><tr><th>resource</th><th>some avg10 (mean, max)</th><th>full avg10 (mean, max)</th></tr>");
    for (name, pick) in [
        (
            "cpu",
            (|m: &pb::HostMetrics| m.pressure_cpu)
                as fn(&pb::HostMetrics) -> Option<pb::PressureResource>,
        ),
        ("memory", |m: &pb::HostMetrics| m.pressure_memory),
        ("io", |m: &pb::HostMetrics| m.pressure_io),
    ] {
        let stat = |line: fn(&pb::PressureResource) -> Option<pb::PressureLine>| {
            let v: Vec<f64> = intervals
                .iter()
                .filter_map(|b| metrics(b))
                .filter_map(&pick)
                .filter_map(|r| line(&r))
                .map(|l| l.avg10)
                .collect();
            if v.is_empty() {
                "n/a".to_string()
            } else {
                format!(
                    "{:.1} %, {:.1} %",
                    v.iter().sum::<f64>() / v.len() as f64,
                    v.iter().fold(0.0f64, |a, b| a.max(*b))
                )
            }
        };
        let _ = writeln!(
            h,
            "<tr><td>{name}</td><td>{}</td><td>{}</td></tr>",
            stat(|r| r.some),
            stat(|r| r.full)
        );
    }
    let md = postmortem(inputs, &report, &events);
    let _ = writeln!(
        h,
        "</table>\n<h2>Postmortem draft</h2>\n<p><a download=\"postmortem.md\" href=\"@@POSTMORTEM@@\">Download as Markdown</a></p>\n<pre id=\"postmortem\">{}</pre>",
        esc(&md)
    );
    // Redaction runs over the data in the page (the marked text) before the images go
    // in, so a token never lands inside base64; the plots' series names and the JSON's
    // strings go through it too.
    let mut redactor = redact.then(|| {
        let mut r = Redactor::default();
        r.learn(&inputs.history, &inputs.findings);
        r
    });
    let plots: Vec<Plot> = match redactor.as_mut() {
        Some(r) => plots
            .into_iter()
            .map(|mut p| {
                for s in &mut p.series {
                    s.name = r.text(&s.name);
                }
                p
            })
            .collect(),
        None => plots,
    };
    #[derive(Serialize)]
    struct Data<'a> {
        host: &'a str,
        from_unix_ms: i64,
        to_unix_ms: i64,
        plot_width: u32,
        plot_height: u32,
        plots: &'a [Plot],
        timeline: &'a [Event],
        why: &'a why::Report,
    }
    let mut data = serde_json::to_value(Data {
        host: &host,
        from_unix_ms: inputs.from,
        to_unix_ms: inputs.to,
        plot_width: PLOT_WIDTH,
        plot_height: PLOT_HEIGHT,
        plots: &plots,
        timeline: &events,
        why: &report,
    })?;
    if let Some(r) = redactor.as_mut() {
        r.json(&mut data);
    }
    let data = serde_json::to_string(&data)?.replace("</", "<\\/");
    let _ = writeln!(
        h,
        "<script type=\"application/json\" id=\"vigil-data\">{data}</script>\n</body></html>"
    );
    let (h, md) = match redactor.as_mut() {
        Some(r) => (r.marked(&h), r.marked(&md)),
        None => (unmark(&h), unmark(&md)),
    };
    let mut h = h.replace(
        "@@POSTMORTEM@@",
        &format!(
            "data:text/markdown;base64,{}",
            base64::engine::general_purpose::STANDARD.encode(md)
        ),
    );
    // The plots span the data: from the window's first interval when the history
    // does not reach back to `from` (an agent started since).
    let x_from = intervals
        .first()
        .map_or(inputs.from, |b| b.start_unix_ms.max(inputs.from));
    for (i, p) in plots.iter().enumerate() {
        let png = draw(p, x_from, inputs.to, &marks)?;
        h = h.replace(
            &format!("@@PLOT{i}@@"),
            &format!(
                "data:image/png;base64,{}",
                base64::engine::general_purpose::STANDARD.encode(png)
            ),
        );
    }
    Ok(h)
}

/// Consistent tokens for what `--redact` masks, as sos's cleaner does: the same value
/// always gets the same token (host-1, ip-1, user-1, arg-1).
#[derive(Default)]
pub struct Redactor {
    tokens: BTreeMap<String, String>,
    counts: BTreeMap<&'static str, usize>,
    /// Whole words replaced wherever they appear (hostnames, user names, arguments).
    words: Vec<String>,
}

impl Redactor {
    fn token(&mut self, kind: &'static str, value: &str) -> String {
        if let Some(t) = self.tokens.get(value) {
            return t.clone();
        }
        let n = self.counts.entry(kind).or_default();
        *n += 1;
        let t = format!("{kind}-{n}");
        self.tokens.insert(value.to_string(), t.clone());
        t
    }

    /// The sensitive values the history names.
    pub fn learn(&mut self, history: &History, findings: &[pb::Finding]) {
        let mut names = vec![("host", history.host.hostname.clone())];
        if let Some(short) = history.host.hostname.split('.').next() {
            names.push(("host", short.to_string()));
        }
        for b in &history.intervals {
            if let Some(h) = &b.host {
                names.push(("host", h.hostname.clone()));
            }
            for m in &b.metrics {
                for p in m.top_cpu.iter().chain(&m.top_memory) {
                    names.push(("user", p.user.clone()));
                    for a in p.cmdline.split_whitespace().skip(1) {
                        names.push(("arg", a.to_string()));
                    }
                }
            }
        }
        for f in findings {
            for p in f.process.iter().chain(&f.parent).chain(&f.ancestors) {
                for a in p.cmdline.split_whitespace().skip(1) {
                    names.push(("arg", a.to_string()));
                }
            }
        }
        for (kind, v) in names {
            // Short or numeric values would match too much that is not theirs.
            if v.len() < 2
                || v.chars().all(|c| c.is_ascii_digit())
                || v.starts_with('-') && v.len() < 3
            {
                continue;
            }
            if !self.tokens.contains_key(&v) {
                self.token(kind, &v);
                self.words.push(v);
            }
        }
        // Longest first: a value inside another is replaced as part of the longer one.
        self.words.sort_by_key(|w| std::cmp::Reverse(w.len()));
        self.words.dedup();
    }

    /// `text` with every IP address (v4 and v6) and every learned value, as a whole
    /// word, replaced by its token.
    /// The marked spans of `text` redacted, the marks removed.
    fn marked(&mut self, text: &str) -> String {
        let mut out = String::with_capacity(text.len());
        let mut rest = text;
        while let Some(open) = rest.find(OPEN) {
            out.push_str(&rest[..open]);
            let span = &rest[open + OPEN.len_utf8()..];
            let close = span.find(CLOSE).unwrap_or(span.len());
            out.push_str(&self.text(&span[..close]));
            rest = span.get(close + CLOSE.len_utf8()..).unwrap_or("");
        }
        out.push_str(rest);
        unmark(&out)
    }

    /// Every string in a JSON value redacted (keys are the page's own).
    fn json(&mut self, v: &mut serde_json::Value) {
        match v {
            serde_json::Value::String(s) => *s = self.text(s),
            serde_json::Value::Array(a) => a.iter_mut().for_each(|v| self.json(v)),
            serde_json::Value::Object(o) => o.values_mut().for_each(|v| self.json(v)),
            _ => {}
        }
    }

    pub fn text(&mut self, text: &str) -> String {
        let mut out = self.ips(text);
        for w in self.words.clone() {
            let t = self.tokens.get(&w).cloned().unwrap_or_default();
            out = replace_word(&out, &w, &t);
        }
        out
    }

    fn ips(&mut self, text: &str) -> String {
        let is_ip_char = |c: char| c.is_ascii_hexdigit() || c == '.' || c == ':';
        let mut out = String::with_capacity(text.len());
        let mut rest = text;
        while let Some(start) = rest.find(is_ip_char) {
            out.push_str(&rest[..start]);
            let tail = &rest[start..];
            let end = tail.find(|c: char| !is_ip_char(c)).unwrap_or(tail.len());
            let run = &tail[..end];
            out.push_str(&self.ip_run(run));
            rest = &tail[end..];
        }
        out.push_str(rest);
        out
    }

    /// A run of hex digits, dots and colons: the IP addresses in it replaced (an
    /// address may carry a :port, or end a sentence with a dot).
    fn ip_run(&mut self, run: &str) -> String {
        if let Ok(ip) = run.parse::<std::net::IpAddr>() {
            return self.token("ip", &ip.to_string());
        }
        // a.b.c.d:port, or a trailing dot.
        for cut in [run.rfind(':'), run.strip_suffix('.').map(str::len)]
            .into_iter()
            .flatten()
        {
            if let Ok(ip) = run[..cut].parse::<std::net::Ipv4Addr>() {
                let t = self.token("ip", &ip.to_string());
                return format!("{t}{}", &run[cut..]);
            }
        }
        // [v6]:port is split by the brackets already; v6 with a trailing dot:
        if let Some(s) = run.strip_suffix('.') {
            if let Ok(ip) = s.parse::<std::net::Ipv6Addr>() {
                return format!("{}.", self.token("ip", &ip.to_string()));
            }
        }
        run.to_string()
    }
}

/// `text` with `word` replaced by `token` where it stands alone (not inside a longer
/// name: the characters around it are not letters, digits, '-', '_' or '.').
fn replace_word(text: &str, word: &str, token: &str) -> String {
    let part = |c: char| c.is_alphanumeric() || c == '-' || c == '_';
    let mut out = String::with_capacity(text.len());
    let mut i = 0;
    while let Some(found) = text[i..].find(word) {
        let at = i + found;
        let end = at + word.len();
        let before = text[..at].chars().next_back();
        let after = text[end..].chars().next();
        let alone = !before.is_some_and(part) && !after.is_some_and(part);
        out.push_str(&text[i..at]);
        out.push_str(if alone { token } else { word });
        i = end;
    }
    out.push_str(&text[i..]);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn maintenance_windows_that_could_not_be_read_are_said_so_in_the_timeline() {
        let inputs = |windows| Inputs {
            history: History::default(),
            from: 1_000,
            to: 2_000,
            findings: Vec::new(),
            windows,
            source: "test".into(),
        };
        let refused = timeline(
            &inputs(Err("PermissionDenied: no right to ListSilences".into())),
            &[],
        );
        assert_eq!(refused.len(), 1);
        assert_eq!(refused[0].kind, "maintenance");
        assert_eq!(
            refused[0].what,
            "maintenance windows not read: PermissionDenied: no right to ListSilences"
        );
        let window = pb::Silence {
            id: "w1".into(),
            starts_unix_ms: 500,
            ends_unix_ms: 1_500,
            ..Default::default()
        };
        let read = timeline(&inputs(Ok(vec![window])), &[]);
        assert_eq!(read.len(), 1);
        assert!(
            read[0].what.starts_with("window w1 until"),
            "{}",
            read[0].what
        );
        assert_eq!(read[0].time_unix_ms, 1_000);
        assert!(timeline(&inputs(Ok(Vec::new())), &[]).is_empty());
    }

    #[test]
    fn redaction_changes_the_data_and_leaves_the_page_s_words() {
        let mut r = Redactor::default();
        r.token("arg", "snapshot");
        r.words.push("snapshot".into());
        let page = format!(
            "Made by vigil incident snapshot: {}",
            d("run snapshot 10.0.0.1")
        );
        assert_eq!(
            r.marked(&page),
            "Made by vigil incident snapshot: run arg-1 ip-1"
        );
        assert_eq!(
            unmark(&page),
            "Made by vigil incident snapshot: run snapshot 10.0.0.1"
        );
    }

    #[test]
    fn long_command_lines_are_cut_between_arguments() {
        let long = format!(
            "prog {} --secret=abcdefgh",
            "x ".repeat(CMDLINE_CHARS / 2 - 4)
        );
        let cut = cmdline(&long);
        assert!(cut.ends_with(" …"), "{cut}");
        assert!(!cut.contains("--secret"), "{cut}");
        assert!(cut.chars().count() <= CMDLINE_CHARS + 2);
        assert_eq!(cmdline("prog -a"), "prog -a");
    }

    #[test]
    fn redaction_is_consistent_and_finds_addresses_with_ports() {
        let mut r = Redactor::default();
        let history = History {
            host: pb::HostIdentity {
                hostname: "db-7.example.net".into(),
                ..Default::default()
            },
            intervals: vec![pb::Batch {
                metrics: vec![pb::HostMetrics {
                    top_cpu: vec![pb::ProcessInfo {
                        user: "alice".into(),
                        cmdline: "pg_dump --password=hunter2 sales".into(),
                        ..Default::default()
                    }],
                    ..Default::default()
                }],
                ..Default::default()
            }],
            oldest_ms: 0,
            trimmed: 0,
        };
        r.learn(&history, &[]);
        let out = r.text(
            "db-7.example.net (db-7) alice ran pg_dump --password=hunter2 sales to 10.0.3.7:5432 and 10.0.3.7, fd00::2 and ::1. alicebob stays",
        );
        assert!(
            !out.contains("db-7")
                && !out.contains("alice ")
                && !out.contains("hunter2")
                && !out.contains("10.0.3.7")
                && !out.contains("fd00::2")
                && !out.contains("::1"),
            "{out}"
        );
        assert!(out.contains("ip-1:5432 and ip-1,"), "{out}");
        assert!(
            out.contains("alicebob stays") && out.contains("pg_dump"),
            "{out}"
        );
        // The same value, the same token, in a later call too.
        assert_eq!(r.text("10.0.3.7"), "ip-1");
        assert_eq!(r.text("07:10:10"), "07:10:10");
    }

    #[test]
    fn a_plot_is_a_png_of_the_stated_size_with_the_series_drawn() {
        let plot = Plot {
            id: "cpu".into(),
            title: "CPU busy".into(),
            unit: "%".into(),
            series: vec![Series {
                name: "cpu".into(),
                points: (0..60)
                    .map(|i| (i * 1000, (i % 10) as f64 * 10.0))
                    .collect(),
            }],
        };
        let png = draw(&plot, 0, 60_000, &[30_000]).unwrap();
        let decoder = png::Decoder::new(std::io::Cursor::new(png));
        let mut reader = decoder.read_info().unwrap();
        let mut buf = vec![0; reader.output_buffer_size()];
        let info = reader.next_frame(&mut buf).unwrap();
        assert_eq!((info.width, info.height), (PLOT_WIDTH, PLOT_HEIGHT));
        let rows: std::collections::BTreeSet<usize> = buf[..info.buffer_size()]
            .chunks(3)
            .enumerate()
            .filter(|(_, px)| *px == SERIES_RGB)
            .map(|(i, _)| i / PLOT_WIDTH as usize)
            .collect();
        assert!(rows.len() > 50, "the line spans {} rows", rows.len());
    }
}
