//! Detection: the process table, the rules, and the findings they raise from the
//! kernel's process and security events.
//!
//! The rules also decide what the kernel reports: the directories of the paths that
//! `file_write` rules name, the ports that `connect` rules name, and the processes a
//! `connect` rule could match on (tested at their exec) are written to the probes'
//! filter maps, so everything else is dropped in the kernel.
pub mod rules;
pub mod table;

use std::{
    collections::{BTreeMap, BTreeSet, HashMap},
    os::unix::fs::MetadataExt,
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use vigil_common::{DirKey, DIR_BASE, DIR_FILES, DIR_TRUNC, FILE_LINK, FILE_READ, FILE_TRUNC};
use vigil_proto::v1 as pb;

pub use self::rules::{Rule, RuleError};
use self::{
    rules::{decimal, EventType, Field, Fields, CONNECT_FIELDS},
    table::{fd_kind_name, Proc, ProcessTable},
};
use crate::{
    probes::{
        events::{
            FileArg, IdKind, MemoryVia, ProcessEvent, SecurityAction, SecurityEvent, TruncateHow,
            Truncated,
        },
        KernelFilters,
    },
    units::unix_ms,
};

/// Dedup windows kept open at once; past this, findings are sent without dedup.
const MAX_OPEN_WINDOWS: usize = 10_000;

/// Everything a rule can look at for one event.
struct Subject {
    event: EventType,
    process: Proc,
    /// Parent first.
    lineage: Vec<Proc>,
    details: BTreeMap<String, String>,
    target: Option<Proc>,
    /// Fields absent on purpose (deciding which processes to watch).
    absent: &'static [Field],
}

impl Fields for Subject {
    fn any(&self, field: Field, pred: &mut dyn FnMut(&str) -> bool) -> bool {
        if self.absent.contains(&field) {
            return false;
        }
        let mut buf = [0u8; 20];
        let mut num =
            |n: u32, pred: &mut dyn FnMut(&str) -> bool| pred(decimal(n.into(), &mut buf));
        let p = &self.process;
        let detail = |key: &str, pred: &mut dyn FnMut(&str) -> bool| {
            self.details.get(key).is_some_and(|v| pred(v))
        };
        match field {
            Field::Event => pred(self.event.name()),
            Field::ProcessExe => pred(&p.exe),
            Field::ProcessName => pred(&p.name),
            Field::ProcessCmdline => pred(&p.cmdline),
            Field::ProcessUid => num(p.uid, pred),
            Field::ProcessEuid => num(p.euid, pred),
            Field::ProcessPid => num(p.pid, pred),
            Field::ProcessContainer | Field::Container => pred(&p.container),
            Field::ProcessStdin => pred(fd_kind_name(p.stdin.0)),
            Field::ProcessStdout => pred(fd_kind_name(p.stdout.0)),
            Field::ProcessFileless => pred(if p.fileless { "true" } else { "false" }),
            Field::ProcessNewPty => {
                let new = p.stdin.0 == vigil_common::FdKind::Pty
                    && self.lineage.first().is_some_and(|pp| pp.stdin != p.stdin);
                pred(if new { "true" } else { "false" })
            }
            Field::StdinFromName => p.stdin_from.as_ref().is_some_and(|(n, _)| pred(n)),
            Field::StdinFromExe => p.stdin_from.as_ref().is_some_and(|(_, e)| pred(e)),
            Field::ParentExe => self.lineage.first().is_some_and(|pp| pred(&pp.exe)),
            Field::ParentName => self.lineage.first().is_some_and(|pp| pred(&pp.name)),
            Field::ParentCmdline => self.lineage.first().is_some_and(|pp| pred(&pp.cmdline)),
            Field::ParentUid => match self.lineage.first() {
                Some(pp) => num(pp.uid, pred),
                None => false,
            },
            Field::AncestorExe => self.lineage.iter().any(|a| pred(&a.exe)),
            Field::AncestorName => self.lineage.iter().any(|a| pred(&a.name)),
            Field::TargetPid => match &self.target {
                Some(t) => num(t.pid, pred),
                None => false,
            },
            Field::TargetExe => self.target.as_ref().is_some_and(|t| pred(&t.exe)),
            Field::Path => detail("path", pred),
            Field::Port => detail("port", pred),
            Field::RemoteAddr => detail("remote_addr", pred),
            Field::OldUid => detail("old_uid", pred),
            Field::NewUid => detail("new_uid", pred),
            Field::Mode => detail("mode", pred),
            Field::FileType => detail("file_type", pred),
            Field::Access => detail("access", pred),
            Field::EnvName => detail("env.name", pred),
            Field::EnvValue => detail("env.value", pred),
            Field::SizeAfter => detail("size_after", pred),
            Field::Method => detail("method", pred),
            Field::SocketFamily => detail("socket.family", pred),
            Field::SocketType => detail("socket.type", pred),
            Field::SocketProtocol => detail("socket.protocol", pred),
        }
    }
}

fn pb_process(p: &Proc) -> pb::Process {
    pb::Process {
        pid: p.pid,
        exe: p.exe.to_string(),
        cmdline: p.cmdline.to_string(),
        uid: p.uid,
        name: p.name.to_string(),
        container: p.container.to_string(),
        start_unix_ms: p.start_unix_ms,
    }
}

/// A repeating finding, held until its window closes.
struct Window {
    opened: Instant,
    length: Duration,
    count: u64,
    last_ms: i64,
    finding: pb::Finding,
    /// Network findings are grouped by process, not by peer: the distinct peers seen
    /// (at most `TARGETS_SAMPLED`), and how many repeats went to a peer not listed.
    targets: BTreeSet<String>,
    targets_not_listed: u64,
}

/// Peers a grouped network finding lists (a scan of 1,024 ports is one finding with
/// its count, 16 of the ports, and how many repeats went elsewhere).
const TARGETS_SAMPLED: usize = 16;

/// What the detector has done since start.
#[derive(Clone, Debug, Default)]
pub struct DetectStats {
    pub process_events: u64,
    pub security_events: u64,
    /// Matches per rule id (repeats within a dedup window included).
    pub matches: BTreeMap<String, u64>,
    pub findings: u64,
    pub table_size: u64,
    /// Processes not tracked because the table was full.
    pub untracked: u64,
    /// Processes the kernel could not be told to watch (its map full).
    pub watch_failed: u64,
}

/// Kernel filter changes the caller applies to the probes' maps.
#[derive(Debug, Default)]
pub struct WatchChanges {
    pub add_pids: Vec<u32>,
    pub remove_pids: Vec<u32>,
    /// A watched directory changed: look the watched files' inodes up again.
    pub files: bool,
}

pub struct Detector {
    table: ProcessTable,
    rules: Vec<Rule>,
    /// Rule indexes by event type.
    by_event: HashMap<EventType, Vec<usize>>,
    windows: HashMap<(String, String), Window>,
    /// Watched directories and the ones above them: kernel key -> (path, `DIR_*` flags).
    dirs: HashMap<DirKey, (PathBuf, u8)>,
    /// The files file_write rules name (exact paths and globs; `FILE_LINK`) and those
    /// file_read rules name (`FILE_READ`), and those found, with their bits.
    file_patterns: Vec<(PathBuf, u8)>,
    files: HashMap<DirKey, (PathBuf, u8)>,
    /// Watched directories in /proc, held open: procfs numbers a directory's inode
    /// anew each time its dentry is rebuilt (after the kernel drops it under memory
    /// pressure), so the kernel's key would go stale; an open directory keeps it.
    pinned: Vec<std::fs::File>,
    /// Directories the rules watch that do not exist (yet).
    missing_dirs: Vec<PathBuf>,
    watched_pids: BTreeSet<u32>,
    /// Environment variables of execs not yet seen (the kernel reports them at the
    /// call), by pid: decided on at the process's exec event, with the program it became.
    pending_env: HashMap<u32, PendingEnv>,
    watch: WatchChanges,
    stats: DetectStats,
}

/// Environment variables held for a process's exec event.
struct PendingEnv {
    since: Instant,
    time_ms: i64,
    vars: Vec<(String, String)>,
}

/// Processes whose exec environment can be held at once; past this, the oldest is
/// decided on at once with the program that asked for the exec (nothing is dropped).
const PENDING_ENV_MAX: usize = 256;
/// Held at most this long (an exec that failed has no exec event).
const PENDING_ENV_FOR: Duration = Duration::from_secs(5);

/// Programs that replace their history file when they exit.
const HISTORY_WRITERS: [&str; 7] = ["bash", "zsh", "ksh", "python3", "python", "mysql", "psql"];

/// How deep below a directory a truncate rule's prefix reaches, and how many
/// directories one prefix may add (the kernel's table holds 256 in all).
const TRUNC_DEPTH: usize = 3;
const TRUNC_DIRS_PER_PREFIX: usize = 64;

/// `dir` and the directories below it, `depth` levels down, at most
/// `TRUNC_DIRS_PER_PREFIX` (symlinks not followed).
fn dirs_below(dir: &Path, depth: usize) -> Vec<PathBuf> {
    let mut out = vec![];
    let mut level = vec![dir.to_path_buf()];
    for _ in 0..=depth {
        let mut next = vec![];
        for d in level {
            if out.len() >= TRUNC_DIRS_PER_PREFIX {
                return out;
            }
            if let Ok(rd) = std::fs::read_dir(&d) {
                next.extend(
                    rd.flatten()
                        .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
                        .map(|e| e.path()),
                );
            }
            out.push(d);
        }
        next.sort();
        level = next;
    }
    out
}

/// The process (thread group) a thread id belongs to: /proc/TID/status's Tgid, or
/// the id itself when it cannot be read (gone, or already a process id).
fn tgid_of(tid: u32) -> u32 {
    std::fs::read_to_string(format!("/proc/{tid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("Tgid:"))
                .and_then(|v| v.trim().parse().ok())
        })
        .unwrap_or(tid)
}

/// The path a chmod/setxattr named, made absolute while the process is still there
/// (its working directory or dirfd from /proc, or the fd's path); as given otherwise.
fn resolve(pid: u32, file: &FileArg) -> String {
    let link = |what: String| std::fs::read_link(format!("/proc/{pid}/{what}")).ok();
    match file {
        FileArg::Path { path, .. } if path.starts_with('/') => path.clone(),
        FileArg::Path { dirfd, path } => {
            let base = match dirfd {
                None => link("cwd".into()),
                Some(fd) => link(format!("fd/{fd}")),
            };
            match base {
                Some(b) => lexical_join(&b, path),
                None => path.clone(),
            }
        }
        FileArg::Fd { fd, name } => link(format!("fd/{fd}"))
            .map(|p| p.to_string_lossy().into_owned())
            .unwrap_or_else(|| name.clone()),
    }
}

/// "file", "directory", "other", or "unknown" (gone, or a relative path whose base
/// could not be found).
fn file_type(path: &str) -> &'static str {
    if !path.starts_with('/') {
        return "unknown";
    }
    match std::fs::symlink_metadata(path) {
        Ok(m) if m.is_file() => "file",
        Ok(m) if m.is_dir() => "directory",
        Ok(_) => "other",
        Err(_) => "unknown",
    }
}

/// Whether a path literal of a rule names files (an exact path, or a glob without a
/// trailing slash) rather than a directory's contents (a prefix ending in `/`).
fn names_files(prefix_or_glob: bool, v: &str) -> bool {
    !prefix_or_glob || v.contains('*') || v.contains('?') || !v.ends_with('/')
}

impl Detector {
    /// What the detector counted (it alone changes them).
    pub fn stats(&self) -> &DetectStats {
        &self.stats
    }

    pub fn new(proc_root: &Path, rules: Vec<Rule>, max_processes: usize) -> Self {
        let mut d = Self {
            table: ProcessTable::new(proc_root, max_processes),
            rules: Vec::new(),
            by_event: HashMap::new(),
            windows: HashMap::new(),
            dirs: HashMap::new(),
            file_patterns: Vec::new(),
            pinned: Vec::new(),
            missing_dirs: Vec::new(),
            pending_env: HashMap::new(),
            files: HashMap::new(),
            watched_pids: BTreeSet::new(),
            watch: WatchChanges::default(),
            stats: DetectStats::default(),
        };
        d.set_rules(rules);
        d
    }

    /// Whether something should not wait for the next interval: kernel filter changes
    /// to hand over. (Exited processes are swept and dedup windows closed at any
    /// later call of `tick`, at the latest at the interval's end.)
    pub fn has_pending_work(&self) -> bool {
        !self.watch.add_pids.is_empty() || !self.watch.remove_pids.is_empty() || self.watch.files
    }

    pub fn process_count(&self) -> usize {
        self.table.len()
    }

    pub fn rules(&self) -> &[Rule] {
        &self.rules
    }

    pub fn set_rules(&mut self, rules: Vec<Rule>) {
        self.by_event.clear();
        for (i, r) in rules.iter().enumerate() {
            for e in &r.events {
                self.by_event.entry(*e).or_default().push(i);
            }
        }
        self.rules = rules;
    }

    /// Seeds the table from /proc and decides which running processes to watch.
    pub fn seed(&mut self) {
        let added = self.table.scan();
        for pid in added {
            self.consider_watch(pid);
        }
    }

    /// Periodic upkeep: sweep exited processes, rescan /proc (lost exits), close
    /// dedup windows (returning the findings that repeated).
    pub fn tick(&mut self, rescan: bool, out: &mut Vec<pb::Finding>) {
        if rescan {
            let scan = self.table.scan_request().read();
            self.apply_rescan(scan, out);
            return;
        }
        self.table.sweep();
        self.expire_env(out);
        self.close_windows(out);
    }

    /// What the periodic rescan must read from /proc; read it off the event loop
    /// (`ScanRequest::read`) and hand the result to `apply_rescan`.
    pub fn rescan_request(&self) -> table::ScanRequest {
        self.table.scan_request()
    }

    /// Applies a rescan of /proc (lost exits, processes started before the probes),
    /// and closes due dedup windows (returning the findings that repeated).
    pub fn apply_rescan(&mut self, scan: table::ProcScan, out: &mut Vec<pb::Finding>) {
        {
            let added = self.table.apply_scan(scan);
            for pid in added {
                self.consider_watch(pid);
            }
            let gone: Vec<u32> = self
                .watched_pids
                .iter()
                .filter(|p| self.table.get(**p).is_none())
                .copied()
                .collect();
            for p in gone {
                self.watched_pids.remove(&p);
                self.watch.remove_pids.push(p);
            }
        }
        self.close_windows(out);
    }

    fn close_windows(&mut self, out: &mut Vec<pb::Finding>) {
        let now = Instant::now();
        let closed: Vec<(String, String)> = self
            .windows
            .iter()
            .filter(|(_, w)| now.duration_since(w.opened) >= w.length)
            .map(|(k, _)| k.clone())
            .collect();
        for k in closed {
            if let Some(w) = self.windows.remove(&k) {
                if w.count > 1 {
                    let mut f = w.finding;
                    f.count = w.count;
                    if !w.targets.is_empty() {
                        let list: Vec<String> = w.targets.into_iter().collect();
                        f.details.insert("targets".into(), list.join(","));
                        f.details.insert(
                            "targets_not_listed".into(),
                            w.targets_not_listed.to_string(),
                        );
                    }
                    f.last_unix_ms = w.last_ms;
                    f.time_unix_ms = w.last_ms;
                    self.stats.findings += 1;
                    out.push(f);
                }
            }
        }
        self.stats.table_size = self.table.len() as u64;
        self.stats.untracked = self.table.untracked;
    }

    /// The kernel filters the rules need, as one value: the watched processes that
    /// changed always; with `all` (start, rescan, reload) the directories, rename
    /// prefixes and connect filters too; the watched files when `all` or a watched
    /// directory changed.
    pub fn kernel_filters(&mut self, all: bool) -> KernelFilters {
        let w = std::mem::take(&mut self.watch);
        let mut f = KernelFilters {
            add_pids: w.add_pids,
            remove_pids: w.remove_pids,
            ..KernelFilters::default()
        };
        if all {
            let dirs = self.watched_dirs();
            f.dirs = Some((dirs, self.watched_dir_paths()));
            f.connects = Some((self.watched_ports(), self.watched_comms()));
        }
        if all || w.files {
            f.files = Some(self.watched_files());
        }
        f
    }

    /// Processes the kernel's watched-process map had no room for (counted).
    pub fn record_watch_failures(&mut self, n: u64) {
        self.stats.watch_failed += n;
    }

    /// The literal values (with whether each is a prefix or glob) that the rules for
    /// `event` test `field` against: what the kernel filters are made of.
    fn literals(&self, event: EventType, field: Field) -> Vec<(bool, String)> {
        let mut lits = Vec::new();
        for r in self.rules.iter().filter(|r| r.events.contains(&event)) {
            r.condition.literals(field, &mut lits);
        }
        lits
    }

    /// Program names (comm, at most 15 bytes) that connect rules ask about (kernel
    /// filter: decided at the connect itself).
    pub fn watched_comms(&self) -> Vec<[u8; 16]> {
        let lits = self.literals(EventType::Connect, Field::ProcessName);
        let mut out: Vec<[u8; 16]> = lits
            .iter()
            .filter(|(prefix, _)| !prefix)
            .map(|(_, v)| {
                let mut c = [0u8; 16];
                let b = v.as_bytes();
                let n = b.len().min(15);
                c[..n].copy_from_slice(&b[..n]);
                c
            })
            .collect();
        out.sort_unstable();
        out.dedup();
        out
    }

    /// Ports that connect rules ask about (kernel filter).
    pub fn watched_ports(&self) -> Vec<u16> {
        let lits = self.literals(EventType::Connect, Field::Port);
        let mut ports: Vec<u16> = lits
            .iter()
            .filter(|(prefix, _)| !prefix)
            .filter_map(|(_, v)| v.parse().ok())
            .collect();
        ports.sort_unstable();
        ports.dedup();
        ports
    }

    /// Directories of the paths file_write rules name (kernel filter), as kernel keys
    /// with `DIR_FILES`, and the directories above them with `DIR_BASE` (watched ones
    /// have both): a relative rename based in one of them may land in a watched one.
    /// Directories that don't exist (yet) are skipped; call again to pick them up.
    pub fn watched_dirs(&mut self) -> Vec<(DirKey, u8)> {
        let lits = self.literals(EventType::FileWrite, Field::Path);
        let mut dirs = BTreeMap::new();
        self.file_patterns.clear();
        for (prefix, v) in lits {
            if names_files(prefix, &v) {
                self.file_patterns.push((PathBuf::from(&v), FILE_LINK));
            }
            let dir = if prefix && v.ends_with('/') && !v.contains('*') {
                PathBuf::from(v.trim_end_matches('/'))
            } else {
                match Path::new(&v).parent() {
                    Some(p) => p.to_path_buf(),
                    None => continue,
                }
            };
            for d in expand(&dir) {
                for above in d.ancestors().skip(1) {
                    *dirs.entry(above.to_path_buf()).or_insert(0) |= DIR_BASE;
                }
                *dirs.entry(d).or_insert(0) |= DIR_FILES | DIR_BASE;
            }
        }
        // Files read rules name: exact paths and globs (a prefix names no file).
        let lits = self.literals(EventType::FileRead, Field::Path);
        for (prefix, v) in lits {
            if names_files(prefix, &v) {
                self.file_patterns.push((PathBuf::from(&v), FILE_READ));
            }
        }
        // Truncation: directories named by a prefix are watched with the directories
        // below them (logs live in /var/log/*/ too), files named exactly by inode.
        let lits = self.literals(EventType::Truncate, Field::Path);
        for (prefix, v) in lits {
            if names_files(prefix, &v) {
                self.file_patterns.push((PathBuf::from(&v), FILE_TRUNC));
            } else if prefix && v.ends_with('/') && !v.contains('*') {
                for d in dirs_below(Path::new(v.trim_end_matches('/')), TRUNC_DEPTH) {
                    *dirs.entry(d).or_insert(0) |= DIR_TRUNC;
                }
            }
        }
        self.dirs.clear();
        // The new set is opened before the old is let go (no moment unpinned).
        let mut pinned = Vec::new();
        self.missing_dirs.clear();
        for (d, flags) in dirs {
            if d.starts_with("/proc") && flags & DIR_FILES != 0 {
                // Opened before its key is read, so the key stays the one the kernel sees.
                match std::fs::File::open(&d) {
                    Ok(f) => pinned.push(f),
                    Err(_) => continue,
                }
            }
            match std::fs::metadata(&d) {
                Ok(m) if m.is_dir() => {
                    let e = self.dirs.entry(dev_key(&m)).or_insert((d, 0));
                    e.1 |= flags;
                }
                Ok(_) => {}
                Err(_) if flags & (DIR_FILES | DIR_TRUNC) != 0 && !d.starts_with("/proc") => {
                    self.missing_dirs.push(d);
                }
                Err(_) => {}
            }
        }
        self.pinned = pinned;
        self.dirs.iter().map(|(k, (_, f))| (*k, *f)).collect()
    }

    /// The files the rules name, as kernel keys with their bits (after `watched_dirs`):
    /// file_write rules' files (`FILE_LINK`: an open for writing by another hard link is
    /// reported too) and file_read rules' (`FILE_READ`: an open for reading is
    /// reported). Looked up again after every write or rename in a watched directory
    /// (replacing a file gives it a new inode) and at each rescan.
    pub fn watched_files(&mut self) -> Vec<(DirKey, u8)> {
        self.files.clear();
        for (pattern, bit) in &self.file_patterns {
            for f in expand(pattern) {
                if let Ok(m) = std::fs::metadata(&f) {
                    if m.is_file() {
                        self.files.entry(dev_key(&m)).or_insert((f, 0)).1 |= bit;
                    }
                }
            }
        }
        self.files
            .iter()
            .map(|(k, (_, bits))| (*k, *bits))
            .collect()
    }

    /// The directories the rules watch that did not exist at the last `watched_dirs`
    /// (the agent waits for their creation with inotify).
    pub fn missing_dirs(&self) -> &[PathBuf] {
        &self.missing_dirs
    }

    /// The watched directories' paths (for rename prefixes), after `watched_dirs`.
    pub fn watched_dir_paths(&self) -> Vec<String> {
        let mut v: Vec<String> = self
            .dirs
            .values()
            .filter(|(_, f)| f & DIR_FILES != 0)
            .map(|(p, _)| p.to_string_lossy().into_owned())
            .collect();
        v.sort();
        v
    }

    fn consider_watch(&mut self, pid: u32) {
        let connect_rules = match self.by_event.get(&EventType::Connect) {
            Some(r) if !r.is_empty() => r.clone(),
            _ => return,
        };
        let Some(p) = self.table.get(pid).cloned() else {
            return;
        };
        let subject = Subject {
            event: EventType::Connect,
            lineage: self.table.lineage(pid).into_iter().cloned().collect(),
            process: p,
            details: BTreeMap::new(),
            target: None,
            absent: &CONNECT_FIELDS,
        };
        let wanted = connect_rules
            .iter()
            .any(|&i| self.rules[i].condition.eval(&subject));
        if wanted && self.watched_pids.insert(pid) {
            self.watch.add_pids.push(pid);
        } else if !wanted && self.watched_pids.remove(&pid) {
            self.watch.remove_pids.push(pid);
        }
    }

    /// Applies a process event to the table and evaluates exec rules.
    pub fn on_process(&mut self, e: &ProcessEvent, out: &mut Vec<pb::Finding>) {
        use vigil_common::ProcessOp;
        self.stats.process_events += 1;
        let relinked = self.table.apply(e);
        match e.op {
            ProcessOp::Exec => {
                self.consider_watch(e.pid);
                self.evaluate(
                    EventType::Exec,
                    e.pid,
                    BTreeMap::new(),
                    None,
                    unix_ms(e.time),
                    out,
                );
                self.decide_env(e.pid, out);
                for pid in relinked {
                    self.evaluate(
                        EventType::Exec,
                        pid,
                        BTreeMap::new(),
                        None,
                        unix_ms(e.time),
                        out,
                    );
                }
            }
            ProcessOp::Exit => {
                self.decide_env(e.pid, out);
                if self.watched_pids.remove(&e.pid) {
                    self.watch.remove_pids.push(e.pid);
                }
                // Shells and REPLs save their history by writing a new file and renaming
                // it over the old one (a new inode, outside any watched directory):
                // the watched files are looked up again when one exits.
                if HISTORY_WRITERS.contains(&e.comm.as_str()) {
                    self.watch.files = true;
                }
            }
            ProcessOp::Fork => {}
        }
    }

    /// Evaluates the exec_env rules for what `pid`'s exec was asked to carry.
    fn decide_env(&mut self, pid: u32, out: &mut Vec<pb::Finding>) {
        let Some(p) = self.pending_env.remove(&pid) else {
            return;
        };
        for (var, value) in p.vars {
            let details = BTreeMap::from([
                ("env.name".to_string(), var),
                ("env.value".to_string(), value),
            ]);
            self.evaluate(EventType::ExecEnv, pid, details, None, p.time_ms, out);
        }
    }

    /// Holds an exec's environment variable for the exec event.
    fn hold_env(
        &mut self,
        pid: u32,
        time_ms: i64,
        var: &str,
        value: &str,
        out: &mut Vec<pb::Finding>,
    ) {
        if !self.pending_env.contains_key(&pid) && self.pending_env.len() >= PENDING_ENV_MAX {
            if let Some(oldest) = self
                .pending_env
                .iter()
                .min_by_key(|(_, p)| p.since)
                .map(|(k, _)| *k)
            {
                self.decide_env(oldest, out);
            }
        }
        let p = self.pending_env.entry(pid).or_insert_with(|| PendingEnv {
            since: Instant::now(),
            time_ms,
            vars: Vec::new(),
        });
        p.vars.push((var.to_string(), value.to_string()));
    }

    /// Decides on held environments older than `PENDING_ENV_FOR` (failed execs).
    fn expire_env(&mut self, out: &mut Vec<pb::Finding>) {
        let old: Vec<u32> = self
            .pending_env
            .iter()
            .filter(|(_, p)| p.since.elapsed() >= PENDING_ENV_FOR)
            .map(|(k, _)| *k)
            .collect();
        for pid in old {
            self.decide_env(pid, out);
        }
    }

    /// Evaluates a security event.
    pub fn on_security(&mut self, e: &SecurityEvent, out: &mut Vec<pb::Finding>) {
        self.stats.security_events += 1;
        if let SecurityAction::ExecEnv { var, value } = &e.action {
            self.hold_env(e.pid, unix_ms(e.time), var, value, out);
            return;
        }
        let mut details = BTreeMap::new();
        let mut target = None;
        let event = match &e.action {
            SecurityAction::Ptrace { target_pid, .. } => {
                details.insert("target_pid".to_string(), target_pid.to_string());
                let mut t = self.table.lookup_or_read(*target_pid);
                // The target may have exec'd an instant ago (its exec event can follow
                // the attach): what /proc says now wins.
                if let Ok(exe) = std::fs::read_link(format!("/proc/{target_pid}/exe")) {
                    t.exe = exe.to_string_lossy().into_owned().into();
                }
                target = Some(t);
                EventType::Ptrace
            }
            SecurityAction::SetId { id, old, new } => {
                details.insert("old_uid".into(), old.to_string());
                details.insert("new_uid".into(), new.to_string());
                match id {
                    IdKind::Uid => {
                        // Keep the table current: the process now runs as the new uid
                        // (the finding shows the uid it had before in `old_uid`).
                        self.table.set_uid(e.pid, *new);
                        EventType::SetUid
                    }
                    IdKind::Gid => EventType::SetGid,
                }
            }
            SecurityAction::ModuleLoad { fd, file } => {
                if !file.is_empty() {
                    details.insert("file".into(), file.clone());
                }
                if let Some(fd) = fd {
                    if let Ok(p) = std::fs::read_link(format!("/proc/{}/fd/{fd}", e.pid)) {
                        details.insert("path".into(), p.to_string_lossy().into_owned());
                    }
                }
                EventType::ModuleLoad
            }
            SecurityAction::FileWrite { dir, name, .. } => {
                let Some((dir, _)) = self.dirs.get(dir) else {
                    return;
                };
                details.insert("path".into(), lexical_join(dir, name));
                details.insert("operation".into(), "open_for_write".into());
                self.watch.files = true;
                EventType::FileWrite
            }
            SecurityAction::LinkWrite { file, opened_as } => {
                let Some((file, _)) = self.files.get(file) else {
                    return;
                };
                details.insert("path".into(), file.to_string_lossy().into_owned());
                details.insert("opened_as".into(), opened_as.clone());
                details.insert("operation".into(), "open_for_write".into());
                self.watch.files = true;
                EventType::FileWrite
            }
            SecurityAction::FileRead { file, opened_as } => {
                let Some((path, _)) = self.files.get(file) else {
                    return;
                };
                details.insert("path".into(), path.to_string_lossy().into_owned());
                details.insert("opened_as".into(), opened_as.clone());
                details.insert("operation".into(), "open_for_read".into());
                EventType::FileRead
            }
            SecurityAction::SetMode { file, mode } => {
                let path = resolve(e.pid, file);
                details.insert("file_type".into(), file_type(&path).into());
                details.insert("path".into(), path);
                details.insert("mode".into(), format!("{mode:04o}"));
                EventType::Chmod
            }
            SecurityAction::SetCapability { file } => {
                let path = resolve(e.pid, file);
                details.insert("file_type".into(), file_type(&path).into());
                details.insert("path".into(), path);
                EventType::SetCap
            }
            SecurityAction::MemoryAccess {
                target: t,
                via,
                write,
            } => {
                // A thread id names its process's memory too; its own memory is of no
                // interest (debug builds and JITs read /proc/self/mem).
                let Ok(tid) = t.parse::<u32>() else {
                    return;
                };
                let pid = tgid_of(tid);
                if pid == e.pid {
                    return;
                }
                details.insert("target_pid".into(), pid.to_string());
                details.insert(
                    "access".into(),
                    if *write { "write" } else { "read" }.into(),
                );
                details.insert(
                    "method".into(),
                    match via {
                        MemoryVia::ProcMem => "proc_mem",
                        MemoryVia::ProcessVm => "process_vm",
                    }
                    .into(),
                );
                target = Some(self.table.lookup_or_read(pid));
                EventType::MemoryAccess
            }
            SecurityAction::ExecEnv { .. } => return,
            SecurityAction::Truncate { file, how } => {
                let path = match file {
                    Truncated::InDir { dir, name } => match self.dirs.get(dir) {
                        Some((dir, _)) => lexical_join(dir, name),
                        None => return,
                    },
                    Truncated::File { file, .. } => match self.files.get(file) {
                        Some((path, _)) => path.to_string_lossy().into_owned(),
                        None => return,
                    },
                    Truncated::Path(p) => resolve(
                        e.pid,
                        &FileArg::Path {
                            dirfd: None,
                            path: p.clone(),
                        },
                    ),
                };
                if let Ok(m) = std::fs::metadata(&path) {
                    details.insert("size_after".into(), m.len().to_string());
                }
                details.insert("path".into(), path);
                details.insert(
                    "operation".into(),
                    match how {
                        TruncateHow::OpenTrunc => "open_truncate",
                        TruncateHow::Ftruncate => "ftruncate",
                        TruncateHow::TruncatePath => "truncate",
                    }
                    .into(),
                );
                EventType::Truncate
            }
            SecurityAction::Mount {
                target: point,
                flags,
                move_mount,
            } => {
                details.insert("path".into(), point.clone());
                details.insert("flags".into(), format!("{flags:#x}"));
                if *move_mount {
                    details.insert("operation".into(), "move_mount".into());
                }
                EventType::Mount
            }
            SecurityAction::Rename { dir, name } => {
                // Absolute rename paths come whole; the rest relative to a directory.
                let path = match dir {
                    None => name.clone(),
                    Some(key) => {
                        let Some((dir, _)) = self.dirs.get(key) else {
                            return;
                        };
                        lexical_join(dir, name)
                    }
                };
                details.insert("path".into(), path);
                details.insert("operation".into(), "rename".into());
                self.watch.files = true;
                EventType::FileWrite
            }
            SecurityAction::Connect { remote, port } => {
                details.insert("port".into(), port.to_string());
                details.insert("remote_addr".into(), remote.to_string());
                EventType::Connect
            }
            SecurityAction::Listen { local, port } => {
                details.insert("port".into(), port.to_string());
                details.insert("local_addr".into(), local.to_string());
                EventType::Listen
            }
            SecurityAction::PortScan {
                distinct,
                window,
                remote,
                port,
            } => {
                details.insert("distinct_ports".into(), distinct.to_string());
                details.insert("window_secs".into(), window.as_secs().to_string());
                details.insert("last_port".into(), port.to_string());
                if !remote.is_unspecified() {
                    details.insert("last_remote_addr".into(), remote.to_string());
                }
                EventType::PortScan
            }
            SecurityAction::RawSocket {
                family,
                kind,
                protocol,
            } => {
                details.insert("socket.family".into(), family.name());
                details.insert("socket.type".into(), kind.name());
                details.insert("socket.protocol".into(), protocol.to_string());
                EventType::RawSocket
            }
        };
        self.evaluate(event, e.pid, details, target, unix_ms(e.time), out);
    }

    fn evaluate(
        &mut self,
        event: EventType,
        pid: u32,
        details: BTreeMap<String, String>,
        target: Option<Proc>,
        time_ms: i64,
        out: &mut Vec<pb::Finding>,
    ) {
        let Some(idx) = self.by_event.get(&event) else {
            return;
        };
        if idx.is_empty() {
            return;
        }
        let idx = idx.clone();
        let process = match self.table.get(pid) {
            Some(p) => p.clone(),
            None => self.table.lookup_or_read(pid),
        };
        let subject = Subject {
            event,
            lineage: self.table.lineage(pid).into_iter().cloned().collect(),
            process,
            details,
            target,
            absent: &[],
        };
        for i in idx {
            let rule = &self.rules[i];
            if !rule.matches(&subject) {
                continue;
            }
            match self.stats.matches.get_mut(&rule.id) {
                Some(n) => *n += 1,
                None => {
                    self.stats.matches.insert(rule.id.clone(), 1);
                }
            }
            // Files: one finding per rule, program and file. Network events: per rule
            // and program, with the peers listed (a scan is one finding, not one per
            // port).
            let peer = subject.details.get("port").map(|port| {
                match subject
                    .details
                    .get("remote_addr")
                    .or_else(|| subject.details.get("local_addr"))
                {
                    Some(a) if a.contains(':') => format!("[{a}]:{port}"),
                    Some(a) => format!("{a}:{port}"),
                    None => port.clone(),
                }
            });
            let key_detail = match &peer {
                Some(_) => String::new(),
                None => subject.details.get("path").cloned().unwrap_or_default(),
            };
            let key = (
                rule.id.clone(),
                format!(
                    "{}\0{}\0{}",
                    subject.process.exe, subject.process.container, key_detail
                ),
            );
            if let Some(w) = self.windows.get_mut(&key) {
                w.count += 1;
                w.last_ms = time_ms;
                if let Some(p) = peer {
                    if !w.targets.contains(&p) {
                        if w.targets.len() < TARGETS_SAMPLED {
                            w.targets.insert(p);
                        } else {
                            w.targets_not_listed += 1;
                        }
                    }
                }
                continue;
            }
            let mut details = subject.details.clone();
            if !rule.runbook.is_empty() {
                details.insert("runbook".into(), rule.runbook.clone());
            }
            if let Some(t) = &subject.target {
                details.insert("target_exe".into(), t.exe.to_string());
            }
            if let Some((n, e)) = &subject.process.stdin_from {
                details.insert("stdin_from".into(), format!("{n} ({e})"));
            }
            for (name, (kind, _)) in [
                ("stdin", subject.process.stdin),
                ("stdout", subject.process.stdout),
            ] {
                if matches!(
                    kind,
                    vigil_common::FdKind::Socket | vigil_common::FdKind::Pipe
                ) {
                    details.insert(name.into(), fd_kind_name(kind).into());
                }
            }
            let finding = pb::Finding {
                rule: rule.id.clone(),
                description: rule.description.clone(),
                severity: rule.severity.as_str().to_string(),
                mitre: rule.mitre.clone(),
                time_unix_ms: time_ms,
                event: event.name().to_string(),
                process: Some(pb_process(&subject.process)),
                parent: subject.lineage.first().map(pb_process),
                ancestors: subject.lineage.iter().skip(1).map(pb_process).collect(),
                details: details.into_iter().collect(),
                count: 1,
                first_unix_ms: time_ms,
                last_unix_ms: time_ms,
            };
            self.stats.findings += 1;
            if !rule.dedup.is_zero() && self.windows.len() < MAX_OPEN_WINDOWS {
                self.windows.insert(
                    key,
                    Window {
                        opened: Instant::now(),
                        length: rule.dedup,
                        count: 1,
                        last_ms: time_ms,
                        finding: finding.clone(),
                        targets: peer.into_iter().collect(),
                        targets_not_listed: 0,
                    },
                );
            }
            out.push(finding);
        }
    }
}

/// The kernel's key for a file or directory: `MKDEV(major, minor)` and the inode.
fn dev_key(m: &std::fs::Metadata) -> DirKey {
    let (major, minor) = (libc::major(m.dev()) as u64, libc::minor(m.dev()) as u64);
    DirKey {
        dev: (major << 20) | minor,
        ino: m.ino(),
    }
}

/// `base` joined with the relative `name`, with `.` and `..` resolved by name (as the
/// kernel would without symlinks on the way).
fn lexical_join(base: &Path, name: &str) -> String {
    let mut parts: Vec<&str> = base
        .to_str()
        .unwrap_or("/")
        .split('/')
        .filter(|c| !c.is_empty())
        .collect();
    for c in name.split('/') {
        match c {
            "" | "." => {}
            ".." => {
                parts.pop();
            }
            c => parts.push(c),
        }
    }
    format!("/{}", parts.join("/"))
}

/// Expands `*` path components against the filesystem (`/home/*/.ssh`).
fn expand(dir: &Path) -> Vec<PathBuf> {
    let mut acc = vec![PathBuf::from("/")];
    for comp in dir.components().skip(1) {
        let c = comp.as_os_str().to_string_lossy();
        if c.contains('*') || c.contains('?') {
            let mut next = Vec::new();
            for base in &acc {
                if let Ok(rd) = std::fs::read_dir(base) {
                    for e in rd.flatten() {
                        let name = e.file_name().to_string_lossy().into_owned();
                        if rules::glob_match(c.as_bytes(), name.as_bytes()) {
                            next.push(base.join(name));
                        }
                    }
                }
            }
            acc = next;
        } else {
            for a in &mut acc {
                a.push(&*c);
            }
        }
    }
    acc
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn relative_rename_paths_resolve_by_name() {
        let etc = Path::new("/etc");
        assert_eq!(lexical_join(etc, "passwd"), "/etc/passwd");
        assert_eq!(lexical_join(etc, "./cron.d//x"), "/etc/cron.d/x");
        assert_eq!(lexical_join(etc, "sudoers.d/../shadow"), "/etc/shadow");
        assert_eq!(lexical_join(Path::new("/"), "etc/passwd"), "/etc/passwd");
        assert_eq!(lexical_join(Path::new("/"), "../../etc"), "/etc");
    }
}
