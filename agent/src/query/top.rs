//! `vigil top`: a terminal UI (ratatui on crossterm's alternate screen) refreshed every
//! second: the host read directly (so it moves each second whatever the agent's
//! interval), and the probes' state, the slowest syscalls and the latest retransmits
//! from the local agent.
//!
//! The frame is drawn into the terminal's size, header first; each section gets a share
//! of the rows left and shows as many of its lines as fit; nothing is drawn past the last
//! row or column. `q`, Esc and Ctrl-C quit; `i` shows the idle waits among the syscalls;
//! a resize redraws at once. When stdout is not a terminal (a pipe, a file) each refresh
//! is printed as plain text, `COLUMNS` x `LINES` (default 120 x 40), like `top -b`.
use std::{collections::BTreeMap, io::IsTerminal as _, path::Path, time::Duration};

use ratatui::{
    buffer::Buffer,
    crossterm::event::{Event, KeyCode, KeyEventKind, KeyModifiers},
    layout::{Constraint, Layout, Rect},
    style::{Modifier, Style},
    text::{Line, Span},
    widgets::{Paragraph, Widget},
};
use vigil_proto::v1::{RetransmitsRequest, StatsRequest, SyscallLatencyRequest, TcpRetransmit};

use super::{api::connect, display::clean};
use crate::{
    export::convert,
    histogram::LatencyHistogram,
    metrics::{HostSample, Roots, Sampler},
    trace::syscalls::{rows, SyscallRow},
};

/// The window the syscall and retransmit sections cover.
const WINDOW_SECS: u32 = 10;

/// Syscalls whose time is mostly waiting for something else to happen (a lock, an
/// event, a timer, a child): at the top of every "by total time" list on an idle host,
/// so they are hidden unless asked for (`i`). `read` stays: the kernel's histogram is
/// per syscall, and a read on a pipe or a tty cannot be told from a read on a disk.
pub const IDLE_WAITS: &[&str] = &[
    "futex",
    "futex_waitv",
    "epoll_wait",
    "epoll_pwait",
    "epoll_pwait2",
    "poll",
    "ppoll",
    "select",
    "pselect6",
    "nanosleep",
    "clock_nanosleep",
    "pause",
    "wait4",
    "waitid",
    "rt_sigsuspend",
    "rt_sigtimedwait",
    "io_getevents",
    "io_pgetevents",
    "io_uring_enter",
    "accept",
    "accept4",
];

/// What the agent told us this refresh, or why there is no agent.
#[derive(Debug, Default)]
pub enum AgentView {
    /// No agent answered (the reason, for the header).
    #[default]
    Absent,
    Missing(String),
    Present {
        /// Probe name to "on", "not requested" or "off: REASON".
        probes: BTreeMap<String, String>,
        syscalls: Vec<SyscallRow>,
        retransmits: Vec<TcpRetransmit>,
    },
}

/// Everything one frame shows.
#[derive(Debug, Default)]
pub struct View {
    pub sample: HostSample,
    pub agent: AgentView,
    pub show_idle: bool,
    pub refresh: Duration,
}

fn mib(bytes: u64) -> String {
    format!("{:.0} MiB", bytes as f64 / f64::from(1u32 << 20))
}

fn gib(bytes: u64) -> String {
    format!("{:.1} GiB", bytes as f64 / f64::from(1u32 << 30))
}

/// Bytes in the unit that keeps 1-4 digits: "812 KiB", "3.4 GiB".
pub fn human_bytes(bytes: u64) -> String {
    const UNITS: [&str; 6] = ["B", "KiB", "MiB", "GiB", "TiB", "PiB"];
    let mut v = bytes as f64;
    let mut unit = 0;
    while v >= 1024.0 && unit < UNITS.len() - 1 {
        v /= 1024.0;
        unit += 1;
    }
    if unit == 0 || v >= 100.0 {
        format!("{v:.0} {}", UNITS[unit])
    } else {
        format!("{v:.1} {}", UNITS[unit])
    }
}

fn rate(bytes_per_sec: f64) -> String {
    format!("{}/s", human_bytes(bytes_per_sec.max(0.0) as u64))
}

/// "3d 4h 12m", "4h 12m", "12m 5s".
pub fn human_uptime(secs: f64) -> String {
    let s = secs.max(0.0) as u64;
    let (d, h, m) = (s / 86_400, s % 86_400 / 3600, s % 3600 / 60);
    if d > 0 {
        format!("{d}d {h}h {m}m")
    } else if h > 0 {
        format!("{h}h {m}m")
    } else {
        format!("{m}m {}s", s % 60)
    }
}

fn title(text: String) -> Line<'static> {
    Line::from(Span::styled(
        text,
        Style::default().add_modifier(Modifier::BOLD | Modifier::REVERSED),
    ))
}

fn header_lines(v: &View) -> Vec<Line<'static>> {
    let s = &v.sample;
    // To the second: the header has no room for more.
    let now = super::display::rfc3339_ms(s.time_unix_ms as i64);
    let now = format!("{}Z", &now[..19]);
    let mut lines = vec![title(format!(
        "vigil top | {} | up {} | {} | q quit, i idle waits | kernel {} | {}",
        clean(&s.host.hostname),
        human_uptime(s.host.uptime_secs),
        now,
        clean(&s.host.kernel),
        clean(&s.host.os),
    ))];
    lines.push(Line::from(match &v.agent {
        AgentView::Present { probes, .. } => {
            let list: Vec<String> = probes
                .iter()
                .map(|(name, state)| format!("{name} {}", clean(state)))
                .collect();
            format!("probes: {}", list.join(", "))
        }
        AgentView::Missing(why) => format!(
            "agent: {} (syscalls and retransmits need `vigil agent`)",
            clean(why)
        ),
        AgentView::Absent => "agent: not asked yet".to_string(),
    }));
    let t = &s.cpu.total;
    lines.push(Line::from(format!(
        "cpu  {:5.1} % busy of {} cores, load {:.2} {:.2} {:.2} (user {:.1} sys {:.1} iowait {:.1} irq {:.1} soft {:.1} steal {:.1})",
        s.cpu.usage_percent, s.cpu.count, s.load.one, s.load.five, s.load.fifteen,
        t.user, t.system, t.iowait, t.irq, t.softirq, t.steal,
    )));
    let m = &s.memory;
    lines.push(Line::from(format!(
        "mem  {} available of {}, used {}, cached {}, buffers {}; {}",
        gib(m.available_bytes),
        gib(m.total_bytes),
        gib(m.used_bytes),
        gib(m.cached_bytes),
        gib(m.buffers_bytes),
        if m.swap_total_bytes == 0 {
            "no swap".to_string()
        } else {
            format!(
                "swap {} free of {}",
                gib(m.swap_free_bytes),
                gib(m.swap_total_bytes)
            )
        }
    )));
    let psi = [
        ("cpu", &s.pressure.cpu),
        ("memory", &s.pressure.memory),
        ("io", &s.pressure.io),
    ]
    .iter()
    .filter_map(|(name, r)| {
        r.as_ref().map(|r| {
            let some = r.some.as_ref().map_or(0.0, |l| l.avg10);
            let full = r.full.as_ref().map_or(0.0, |l| l.avg10);
            format!("{name} {some:.2}/{full:.2}")
        })
    })
    .collect::<Vec<_>>();
    lines.push(Line::from(if psi.is_empty() {
        "psi  not available (kernel without CONFIG_PSI, or psi=0)".to_string()
    } else {
        format!("psi  some/full avg10 %: {}", psi.join("  "))
    }));
    let p = &s.processes;
    lines.push(Line::from(format!(
        "procs {} = {} running + {} sleeping + {} disk-sleep + {} stopped + {} zombie + {} idle + {} other; open files {}; tcp estab {}",
        p.total, p.running, p.sleeping, p.disk_sleep, p.stopped, p.zombie, p.idle, p.other,
        s.open_fds.map_or("-".into(), |v| v.to_string()),
        s.tcp.curr_estab
    )));
    lines
}

fn processes_lines(v: &View) -> Vec<Line<'static>> {
    let mut lines = vec![
        title("PROCESSES (top by CPU)".into()),
        Line::from(format!(
            "{:>8} {:<10} {:>6} {:>9}  COMMAND",
            "PID", "USER", "CPU%", "RSS"
        )),
    ];
    if v.sample.top_cpu.is_empty() {
        lines.push(Line::from("none in the last refresh"));
    }
    for p in &v.sample.top_cpu {
        let cmd = if p.cmdline.is_empty() {
            format!("[{}]", p.comm)
        } else {
            p.cmdline.clone()
        };
        lines.push(Line::from(format!(
            "{:>8} {:<10} {:>6.1} {:>9}  {}",
            p.pid,
            clean(&p.user),
            p.cpu_percent,
            mib(p.rss_bytes),
            clean(&cmd)
        )));
    }
    lines
}

fn syscalls_lines(v: &View) -> Vec<Line<'static>> {
    let hidden = if v.show_idle {
        "idle waits shown, i hides them"
    } else {
        "idle waits hidden, i shows them"
    };
    let mut lines = vec![title(format!(
        "SLOWEST SYSCALLS (by total time, last {WINDOW_SECS} s; {hidden})"
    ))];
    let AgentView::Present { syscalls, .. } = &v.agent else {
        lines.push(Line::from("no agent: nothing traced"));
        return lines;
    };
    lines.push(Line::from(crate::trace::syscalls::header_text()));
    let shown: Vec<&SyscallRow> = syscalls
        .iter()
        .filter(|r| v.show_idle || !IDLE_WAITS.contains(&r.name.as_str()))
        .collect();
    if shown.is_empty() {
        lines.push(Line::from(format!("none in the last {WINDOW_SECS} s")));
    }
    for r in shown {
        lines.push(Line::from(crate::trace::syscalls::row_text(r)));
    }
    lines
}

fn retransmits_lines(v: &View) -> Vec<Line<'static>> {
    let mut lines = vec![title(format!("LATEST RETRANSMITS (last {WINDOW_SECS} s)"))];
    let AgentView::Present { retransmits, .. } = &v.agent else {
        lines.push(Line::from("no agent: nothing traced"));
        return lines;
    };
    let since_ns = (v.sample.time_unix_ms as i64 - i64::from(WINDOW_SECS) * 1000) * 1_000_000;
    let recent: Vec<&TcpRetransmit> = retransmits
        .iter()
        .rev()
        .filter(|t| t.time_unix_ns >= since_ns)
        .collect();
    if recent.is_empty() {
        lines.push(Line::from(format!("none in the last {WINDOW_SECS} s")));
    }
    for t in recent {
        lines.push(Line::from(super::display::retransmit_text(t)));
    }
    lines
}

fn filesystems_lines(v: &View) -> Vec<Line<'static>> {
    let mut lines = vec![
        title("FILESYSTEMS (like df)".into()),
        Line::from(format!(
            "{:>9} {:>9} {:>9} {:>5} {:<8} MOUNTED ON",
            "SIZE", "USED", "AVAIL", "USE%", "TYPE"
        )),
    ];
    for f in super::display::df_rows(&v.sample.filesystems).0 {
        lines.push(Line::from(format!(
            "{:>9} {:>9} {:>9} {:>4}% {:<8} {}",
            human_bytes(f.size_bytes),
            human_bytes(f.used_bytes),
            human_bytes(f.available_bytes),
            super::display::use_percent(f),
            clean(&f.fstype),
            clean(&f.mount)
        )));
    }
    lines
}

fn network_lines(v: &View) -> Vec<Line<'static>> {
    let mut lines = vec![
        title("NETWORK AND DISKS (per second)".into()),
        Line::from(format!(
            "{:<12} {:>11} {:>11} {:>9} {:>9}",
            "DEVICE", "RX/READ", "TX/WRITE", "ERRS", "DROPS"
        )),
    ];
    for n in &v.sample.network {
        lines.push(Line::from(format!(
            "{:<12} {:>11} {:>11} {:>9.1} {:>9.1}",
            clean(&n.interface),
            rate(n.rx_bytes_per_sec),
            rate(n.tx_bytes_per_sec),
            n.rx_errors_per_sec + n.tx_errors_per_sec,
            n.rx_drops_per_sec + n.tx_drops_per_sec
        )));
    }
    for d in &v.sample.disks {
        lines.push(Line::from(format!(
            "{:<12} {:>11} {:>11} {:>9} {:>9}",
            clean(&d.device),
            rate(d.read_bytes_per_sec),
            rate(d.write_bytes_per_sec),
            "-",
            "-"
        )));
    }
    lines
}

/// Draws one frame into `area` of `buf`: the header first, then the sections, each in
/// its share of the rows (at least its title and one line), in order of importance.
pub fn draw(v: &View, area: Rect, buf: &mut Buffer) {
    let header = header_lines(v);
    let sections = [
        (processes_lines(v), 3),
        (syscalls_lines(v), 3),
        (retransmits_lines(v), 2),
        (filesystems_lines(v), 2),
        (network_lines(v), 2),
    ];
    let heights = section_heights(
        area.height.saturating_sub(header.len() as u16),
        &sections
            .iter()
            .map(|(lines, weight)| (lines.len() as u16, *weight))
            .collect::<Vec<_>>(),
    );
    let rows = Layout::vertical(
        std::iter::once(Constraint::Length(header.len() as u16))
            .chain(heights.into_iter().map(Constraint::Length)),
    )
    .split(area);
    Paragraph::new(header).render(rows[0], buf);
    for (i, (lines, _)) in sections.into_iter().enumerate() {
        Paragraph::new(lines).render(rows[i + 1], buf);
    }
}

/// Rows for each section of (lines it has, weight): first its title, its column
/// header and one line each while rows last, then the rest shared by weight, never more than a section has.
fn section_heights(mut rows: u16, sections: &[(u16, u16)]) -> Vec<u16> {
    let mut h: Vec<u16> = sections
        .iter()
        .map(|&(len, _)| {
            let take = len.min(3).min(rows);
            rows -= take;
            take
        })
        .collect();
    while rows > 0 {
        let mut gave = false;
        for (i, &(len, weight)) in sections.iter().enumerate() {
            let give = weight.min(len - h[i]).min(rows);
            h[i] += give;
            rows -= give;
            gave |= give > 0;
        }
        if !gave {
            break;
        }
    }
    h
}

/// A rendered buffer as text, one line per row, trailing blanks trimmed.
pub fn buffer_text(buf: &Buffer) -> String {
    let area = buf.area;
    let mut out = String::new();
    for y in area.top()..area.bottom() {
        let mut line = String::new();
        for x in area.left()..area.right() {
            line.push_str(buf[(x, y)].symbol());
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out
}

/// The agent's answers for one frame.
async fn ask_agent(agent: &mut super::api::ApiClient) -> Result<AgentView, tonic::Status> {
    let stats = agent.stats(StatsRequest {}).await?.into_inner();
    let probes = stats
        .agent
        .map(|a| a.probes.into_iter().collect())
        .unwrap_or_default();
    let hist: BTreeMap<u32, LatencyHistogram> = agent
        .syscall_latency(SyscallLatencyRequest {
            window_secs: WINDOW_SECS,
        })
        .await?
        .into_inner()
        .syscalls
        .iter()
        .map(|s| (s.nr, convert::histogram(s)))
        .collect();
    let retransmits = agent
        .retransmits(RetransmitsRequest { limit: 50 })
        .await?
        .into_inner()
        .retransmits;
    Ok(AgentView::Present {
        probes,
        syscalls: rows(&hist),
        retransmits,
    })
}

/// Restores the terminal however `run` ends (error, `?`, panic unwinding).
struct TerminalGuard;

impl Drop for TerminalGuard {
    fn drop(&mut self) {
        ratatui::restore();
    }
}

fn env_size(name: &str, default: u16) -> u16 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.trim().parse().ok())
        .filter(|&n: &u16| n > 0)
        .unwrap_or(default)
}

pub async fn run(socket: &Path, refresh: Duration, count: Option<u64>) -> anyhow::Result<()> {
    anyhow::ensure!(!refresh.is_zero(), "--refresh must be more than 0");
    let mut sampler = Sampler::new(Roots::default(), 32);
    sampler.sample()?;
    let mut agent = None;
    let mut view = View {
        refresh,
        ..Default::default()
    };
    let tty = std::io::stdout().is_terminal();
    let (keys_tx, mut keys) = tokio::sync::mpsc::channel::<Event>(16);
    let mut terminal = None;
    let _guard = if tty {
        terminal = Some(ratatui::try_init()?);
        // Keys and resizes, read where blocking is allowed; the channel is bounded and
        // the reader waits for room, so no key is lost.
        std::thread::Builder::new()
            .name("top-keys".into())
            .spawn(move || {
                while let Ok(ev) = ratatui::crossterm::event::read() {
                    if keys_tx.blocking_send(ev).is_err() {
                        break;
                    }
                }
            })?;
        Some(TerminalGuard)
    } else {
        drop(keys_tx);
        None
    };
    let stop = crate::startup::wait_for_stop(None);
    tokio::pin!(stop);
    let mut frames = 0u64;
    let mut tick = tokio::time::interval(refresh);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tick.tick().await;
    let mut redraw_only = false;
    loop {
        if !redraw_only {
            tokio::select! {
                r = &mut stop => { r?; break; }
                _ = tick.tick() => {}
                ev = keys.recv(), if tty => {
                    match ev {
                        Some(Event::Key(k)) if k.kind != KeyEventKind::Release => match k.code {
                            KeyCode::Char('q') | KeyCode::Esc => break,
                            KeyCode::Char('c') if k.modifiers.contains(KeyModifiers::CONTROL) => break,
                            KeyCode::Char('i') => { view.show_idle = !view.show_idle; redraw_only = true; }
                            _ => continue,
                        },
                        Some(Event::Resize(..)) => redraw_only = true,
                        Some(_) => continue,
                        None => break,
                    }
                }
            }
        }
        if redraw_only && frames > 0 {
            redraw_only = false;
        } else {
            redraw_only = false;
            view.sample = sampler.sample()?;
            if agent.is_none() {
                match connect(socket).await {
                    Ok(a) => agent = Some(a),
                    Err(e) => {
                        view.agent = AgentView::Missing(format!(
                            "none on {}: {}",
                            socket.display(),
                            super::display::unreachable(e.as_ref())
                        ))
                    }
                }
            }
            if let Some(a) = agent.as_mut() {
                match ask_agent(a).await {
                    Ok(answer) => view.agent = answer,
                    Err(status) => {
                        view.agent = AgentView::Missing(format!(
                            "{} stopped answering: {}",
                            socket.display(),
                            status.message()
                        ));
                        agent = None;
                    }
                }
            }
            frames += 1;
        }
        match terminal.as_mut() {
            Some(t) => {
                t.draw(|f| draw(&view, f.area(), f.buffer_mut()))?;
            }
            None => {
                let area = Rect::new(0, 0, env_size("COLUMNS", 120), env_size("LINES", 40));
                let mut buf = Buffer::empty(area);
                draw(&view, area, &mut buf);
                println!("{}", buffer_text(&buf));
            }
        }
        if count.is_some_and(|n| frames >= n) {
            break;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metrics::{Filesystem, ProcessInfo};

    fn view() -> View {
        let mut v = View::default();
        v.sample.host.hostname = "web-01".into();
        v.sample.host.uptime_secs = 3.0 * 86_400.0 + 4.0 * 3600.0 + 60.0;
        v.sample.top_cpu = (0..40)
            .map(|i| ProcessInfo {
                pid: 100 + i,
                user: "root".into(),
                comm: "worker".into(),
                cmdline: format!("/usr/bin/worker --id {i} {}", "x".repeat(300)),
                cpu_percent: 1.0,
                rss_bytes: 5 << 20,
            })
            .collect();
        v.sample.filesystems = vec![Filesystem {
            mount: format!("/{}", "very-long-mount-path/".repeat(20)),
            device: "/dev/vda".into(),
            fstype: "ext4".into(),
            size_bytes: 100 << 30,
            used_bytes: 20 << 30,
            available_bytes: 75 << 30,
            inodes_total: 10,
            inodes_free: 5,
        }];
        v.agent = AgentView::Present {
            probes: [("syscall-latency".to_string(), "on".to_string())].into(),
            syscalls: vec![
                SyscallRow {
                    name: "futex".into(),
                    nr: 202,
                    count: 10,
                    p50_ns: 1,
                    p90_ns: 1,
                    p99_ns: 1,
                    max_ns: 1,
                    total_ns: 1_000_000_000,
                },
                SyscallRow {
                    name: "fsync".into(),
                    nr: 74,
                    count: 3,
                    p50_ns: 1_000_000,
                    p90_ns: 1_000_000,
                    p99_ns: 1_000_000,
                    max_ns: 2_000_000,
                    total_ns: 3_000_000,
                },
            ],
            retransmits: Vec::new(),
        };
        v
    }

    fn frame(v: &View, w: u16, h: u16) -> String {
        let area = Rect::new(0, 0, w, h);
        let mut buf = Buffer::empty(area);
        draw(v, area, &mut buf);
        buffer_text(&buf)
    }

    #[test]
    fn every_section_fits_small_and_large_terminals() {
        for (w, h) in [(80, 24), (200, 50), (60, 20)] {
            let text = frame(&view(), w, h);
            assert_eq!(text.lines().count(), h as usize);
            assert!(text.lines().all(|l| l.chars().count() <= w as usize));
            assert!(text
                .lines()
                .next()
                .unwrap()
                .starts_with("vigil top | web-01"));
            for t in [
                "PROCESSES",
                "SLOWEST SYSCALLS",
                "LATEST RETRANSMITS",
                "FILESYSTEMS",
                "NETWORK AND DISKS",
                "probes: syscall-latency on",
                "up 3d 4h 1m",
            ] {
                assert!(text.contains(t), "{w}x{h}: no {t:?} in\n{text}");
            }
        }
    }

    #[test]
    fn idle_waits_are_hidden_unless_asked_and_empty_sections_say_so() {
        let mut v = view();
        let text = frame(&v, 120, 40);
        assert!(text.contains("fsync") && !text.contains("futex"), "{text}");
        assert!(text.contains("none in the last 10 s"), "{text}");
        assert!(text.contains("  5 MiB"), "{text}");
        v.show_idle = true;
        assert!(frame(&v, 120, 40).contains("futex"));
    }
}
