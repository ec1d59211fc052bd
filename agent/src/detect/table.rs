//! The process table: seeded from /proc at start, kept current from the kernel's
//! exec/fork/exit events, and swept against /proc now and then so a lost exit event
//! can't leave a process behind for long.
//!
//! Bounded: at most `max` live entries; a process that doesn't fit is not tracked and
//! is counted (`untracked`); its events are still evaluated, with what the event
//! itself says.
use std::{
    collections::HashMap,
    path::{Path, PathBuf},
    sync::Arc,
    time::{Duration, Instant},
};

use vigil_common::FdKind;

use crate::probes::events::ProcessEvent;

/// Exited processes stay this long, so events that arrive after their exit (or their
/// children's) still find their ancestry.
const EXITED_GRACE: Duration = Duration::from_secs(10);
/// Ancestors looked up for a finding (parent's parent and up).
pub const MAX_ANCESTORS: usize = 8;

#[derive(Clone, Debug, Default)]
pub struct Proc {
    pub pid: u32,
    pub ppid: u32,
    pub exe: Arc<str>,
    pub name: Arc<str>,
    pub cmdline: Arc<str>,
    pub uid: u32,
    pub euid: u32,
    pub start_unix_ms: i64,
    pub container: Arc<str>,
    pub cgroup_id: u64,
    pub stdin: (FdKind, u64),
    pub stdout: (FdKind, u64),
    pub fileless: bool,
    /// The process writing into this one's stdin pipe, when known.
    pub stdin_from: Option<(Arc<str>, Arc<str>)>,
    exited: Option<Instant>,
}

pub fn fd_kind_name(k: FdKind) -> &'static str {
    match k {
        FdKind::None => "none",
        FdKind::Pipe => "pipe",
        FdKind::Socket => "socket",
        FdKind::CharDevice => "chardev",
        FdKind::Pty => "pty",
        FdKind::File => "file",
        FdKind::Other => "other",
    }
}

pub struct ProcessTable {
    procs: HashMap<u32, Proc>,
    max: usize,
    proc_root: PathBuf,
    boot_unix_ms: i64,
    /// cgroup id -> container id ("" = host), learned from /proc/PID/cgroup.
    containers: HashMap<u64, Arc<str>>,
    /// Pipe inode -> pid of the process whose stdout it is.
    pipe_writers: HashMap<u64, u32>,
    /// Pipe inode -> pid of the process whose stdin it is.
    pipe_readers: HashMap<u64, u32>,
    /// Processes not tracked because the table was full.
    pub untracked: u64,
    /// Exited processes still in the table (swept after EXITED_GRACE).
    exited: usize,
    /// Exits in the order they came (when, pid): the sweep looks at the expired ones
    /// only, not at the whole table (it runs at every drain of the ring buffer).
    exit_queue: std::collections::VecDeque<(Instant, u32)>,
    empty: Arc<str>,
}

/// The container id in a cgroup path: the first 64-hex-digit name part
/// (docker-<id>.scope, /docker/<id>, cri-containerd-<id>.scope, crio-<id>, libpod-<id>),
/// cut to 12 characters as `docker ps` shows it.
pub fn container_id(cgroup: &str) -> Option<String> {
    for part in cgroup.split(['/', '-', '.', ':']) {
        if part.len() == 64 && part.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Some(part[..12].to_string());
        }
    }
    None
}

impl ProcessTable {
    pub fn new(proc_root: &Path, max: usize) -> Self {
        let boot = std::fs::read_to_string(proc_root.join("stat"))
            .ok()
            .and_then(|s| crate::metrics::parse::proc_stat(&s))
            .map_or(0, |s| i64::try_from(s.boot_time_unix).unwrap_or(0));
        Self {
            procs: HashMap::new(),
            max,
            proc_root: proc_root.to_path_buf(),
            boot_unix_ms: boot * 1000,
            containers: HashMap::new(),
            pipe_writers: HashMap::new(),
            pipe_readers: HashMap::new(),
            untracked: 0,
            exited: 0,
            exit_queue: std::collections::VecDeque::new(),
            empty: Arc::from(""),
        }
    }

    pub fn len(&self) -> usize {
        self.procs.len()
    }

    pub fn is_empty(&self) -> bool {
        self.procs.is_empty()
    }

    pub fn get(&self, pid: u32) -> Option<&Proc> {
        self.procs.get(&pid)
    }

    /// Reads every process in /proc (at start): adds the ones not known, forgets the
    /// ones gone. Returns the pids added.
    pub fn scan(&mut self) -> Vec<u32> {
        let scan = self.scan_request().read();
        self.apply_scan(scan)
    }

    /// What a rescan needs to read /proc on another thread (the periodic rescan runs
    /// off the event loop).
    pub fn scan_request(&self) -> ScanRequest {
        ScanRequest {
            proc_root: self.proc_root.clone(),
            boot_unix_ms: self.boot_unix_ms,
            known: self.procs.keys().copied().collect(),
        }
    }

    /// Applies what a rescan read: adds the processes it read that are still unknown
    /// (an exec event since is fresher, and wins), forgets the ones known when it was
    /// asked and gone from /proc. Returns the pids added.
    pub fn apply_scan(&mut self, scan: ProcScan) -> Vec<u32> {
        let mut added = Vec::new();
        for p in scan.read {
            if self.procs.contains_key(&p.pid) {
                continue;
            }
            let pid = p.pid;
            if self.insert(p) {
                added.push(pid);
            }
        }
        let now = Instant::now();
        let gone: Vec<u32> = self
            .procs
            .iter()
            .filter(|(pid, p)| {
                scan.known_before.contains(pid)
                    && !scan.alive.contains(pid)
                    && p.exited
                        .is_none_or(|t| now.duration_since(t) > EXITED_GRACE)
            })
            .map(|(pid, _)| *pid)
            .collect();
        for pid in gone {
            self.remove(pid);
        }
        added
    }

    /// Drops processes that exited more than EXITED_GRACE ago.
    pub fn sweep(&mut self) {
        let now = Instant::now();
        while let Some(&(at, pid)) = self.exit_queue.front() {
            if now.duration_since(at) <= EXITED_GRACE {
                break;
            }
            self.exit_queue.pop_front();
            // Still that exit (not a new process under the pid since, nor removed).
            if self.procs.get(&pid).is_some_and(|p| p.exited == Some(at)) {
                self.remove(pid);
            }
        }
    }

    fn remove(&mut self, pid: u32) {
        if let Some(p) = self.procs.remove(&pid) {
            if p.exited.is_some() {
                self.exited = self.exited.saturating_sub(1);
            }
            if p.stdout.0 == FdKind::Pipe && self.pipe_writers.get(&p.stdout.1) == Some(&pid) {
                self.pipe_writers.remove(&p.stdout.1);
            }
            if p.stdin.0 == FdKind::Pipe && self.pipe_readers.get(&p.stdin.1) == Some(&pid) {
                self.pipe_readers.remove(&p.stdin.1);
            }
        }
    }

    fn insert(&mut self, p: Proc) -> bool {
        if self.procs.len() >= self.max && !self.procs.contains_key(&p.pid) {
            self.sweep();
            if self.procs.len() >= self.max {
                self.untracked += 1;
                return false;
            }
        }
        if let Some(old) = self.procs.insert(p.pid, p) {
            if old.exited.is_some() {
                self.exited = self.exited.saturating_sub(1);
            }
        }
        true
    }

    /// The container of a cgroup id, learned from `pid`'s /proc/PID/cgroup the first
    /// time the id is seen (falls back to `inherited`).
    fn container_of(&mut self, cgroup_id: u64, pid: u32, inherited: &Arc<str>) -> Arc<str> {
        if let Some(c) = self.containers.get(&cgroup_id) {
            return c.clone();
        }
        let read = std::fs::read_to_string(self.proc_root.join(pid.to_string()).join("cgroup"));
        let c: Arc<str> = match read {
            Ok(text) => container_id(&text).unwrap_or_default().into(),
            Err(_) => return inherited.clone(),
        };
        if self.containers.len() < 4096 {
            self.containers.insert(cgroup_id, c.clone());
        }
        c
    }

    /// Applies a process event. For an exec, returns the pids whose stdin_from just
    /// became known (a shell reading from this new process's pipe), whose exec the
    /// caller may evaluate again.
    pub fn apply(&mut self, e: &ProcessEvent) -> Vec<u32> {
        use vigil_common::ProcessOp;
        let mut relinked = Vec::new();
        match e.op {
            ProcessOp::Fork => {
                let parent = self.procs.get(&e.ppid).cloned();
                let mut p = parent.unwrap_or_else(|| Proc {
                    name: e.comm.as_str().into(),
                    exe: self.empty.clone(),
                    cmdline: self.empty.clone(),
                    container: self.empty.clone(),
                    uid: e.uid,
                    euid: e.uid,
                    ..Default::default()
                });
                p.pid = e.pid;
                p.ppid = e.ppid;
                p.start_unix_ms = crate::units::unix_ms(e.time);
                p.exited = None;
                p.stdin_from = None;
                self.insert(p);
            }
            ProcessOp::Exec => {
                let old = self.procs.get(&e.pid).cloned();
                let inherited = old
                    .as_ref()
                    .map(|p| p.container.clone())
                    .unwrap_or_else(|| self.empty.clone());
                let container = self.container_of(e.cgroup_id, e.pid, &inherited);
                let exe = self.resolve_exe(e);
                let mut p = Proc {
                    pid: e.pid,
                    ppid: old
                        .as_ref()
                        .map_or(e.ppid, |o| if e.ppid != 0 { e.ppid } else { o.ppid }),
                    exe: exe.into(),
                    name: e.comm.as_str().into(),
                    cmdline: e.args.join(" ").into(),
                    uid: e.uid,
                    euid: e.euid,
                    start_unix_ms: old
                        .as_ref()
                        .map_or_else(|| crate::units::unix_ms(e.time), |o| o.start_unix_ms),
                    container,
                    cgroup_id: e.cgroup_id,
                    stdin: e.stdin,
                    stdout: e.stdout,
                    fileless: e.exe_memfd || e.exe_unlinked,
                    stdin_from: None,
                    exited: None,
                };
                if let Some(o) = &old {
                    if o.stdout.0 == FdKind::Pipe
                        && self.pipe_writers.get(&o.stdout.1) == Some(&e.pid)
                    {
                        self.pipe_writers.remove(&o.stdout.1);
                    }
                }
                if p.stdin.0 == FdKind::Pipe {
                    self.pipe_readers.insert(p.stdin.1, p.pid);
                    if let Some(w) = self
                        .pipe_writers
                        .get(&p.stdin.1)
                        .and_then(|w| self.procs.get(w))
                    {
                        if w.pid != p.pid {
                            p.stdin_from = Some((w.name.clone(), w.exe.clone()));
                        }
                    }
                }
                if p.stdout.0 == FdKind::Pipe {
                    self.pipe_writers.insert(p.stdout.1, p.pid);
                    if let Some(r) = self.pipe_readers.get(&p.stdout.1).copied() {
                        if r != p.pid {
                            if let Some(reader) = self.procs.get_mut(&r) {
                                if reader.stdin.1 == p.stdout.1 && reader.exited.is_none() {
                                    reader.stdin_from = Some((p.name.clone(), p.exe.clone()));
                                    relinked.push(r);
                                }
                            }
                        }
                    }
                }
                self.insert(p);
            }
            ProcessOp::Exit => {
                if let Some(p) = self.procs.get_mut(&e.pid) {
                    // Queued once per exit of a tracked process: the queue is never
                    // longer than the table (MAX_PROCESSES).
                    if p.exited.is_none() {
                        self.exited += 1;
                        let now = Instant::now();
                        p.exited = Some(now);
                        self.exit_queue.push_back((now, e.pid));
                    }
                }
            }
        }
        relinked
    }

    /// The program's path: the one execve was given when absolute, else the kernel's
    /// link (/proc/PID/exe, while the process still exists), else the cwd join.
    fn resolve_exe(&self, e: &ProcessEvent) -> String {
        let f = &e.filename;
        // Run from a memfd or a deleted file: name it as /proc/PID/exe would.
        if e.exe_memfd {
            return format!("/{} (deleted)", e.exe_name);
        }
        if e.exe_unlinked && (f.starts_with("/dev/fd/") || f.starts_with("/proc/self/fd/")) {
            if let Ok(p) = std::fs::read_link(self.proc_root.join(e.pid.to_string()).join("exe")) {
                return p.to_string_lossy().into_owned();
            }
            return format!("{} (deleted)", e.exe_name);
        }
        if f.starts_with('/') && !f.starts_with("/dev/fd/") && !f.starts_with("/proc/self/fd/") {
            return f.clone();
        }
        let dir = self.proc_root.join(e.pid.to_string());
        if let Ok(p) = std::fs::read_link(dir.join("exe")) {
            return p.to_string_lossy().into_owned();
        }
        if let Ok(cwd) = std::fs::read_link(dir.join("cwd")) {
            if !f.starts_with('/') {
                return cwd.join(f).to_string_lossy().into_owned();
            }
        }
        f.clone()
    }

    /// Parent, grandparent, ... (at most MAX_ANCESTORS + 1), nearest first.
    pub fn lineage(&self, pid: u32) -> Vec<&Proc> {
        let mut out = Vec::new();
        let mut cur = self.procs.get(&pid).map(|p| p.ppid);
        while let Some(pp) = cur {
            if pp == 0 || out.len() > MAX_ANCESTORS {
                break;
            }
            match self.procs.get(&pp) {
                Some(p) => {
                    if out.iter().any(|q: &&Proc| q.pid == p.pid) {
                        break;
                    }
                    out.push(p);
                    cur = Some(p.ppid);
                }
                None => break,
            }
        }
        out
    }

    /// A process not in the table (table full, or it came and went between sweeps):
    /// what /proc still says, else only the pid.
    pub fn lookup_or_read(&mut self, pid: u32) -> Proc {
        if let Some(p) = self.procs.get(&pid) {
            return p.clone();
        }
        if let Some(p) = read_proc(&self.proc_root, self.boot_unix_ms, pid) {
            self.insert(p.clone());
            return p;
        }
        Proc {
            pid,
            exe: self.empty.clone(),
            name: self.empty.clone(),
            cmdline: self.empty.clone(),
            container: self.empty.clone(),
            ..Default::default()
        }
    }

    pub fn set_uid(&mut self, pid: u32, uid: u32) {
        let p = self.lookup_or_read(pid);
        if let Some(p) = self.procs.get_mut(&p.pid) {
            p.uid = uid;
            p.euid = uid;
        }
    }
}

fn fd_of(dir: &Path, n: u32) -> (FdKind, u64) {
    let Ok(target) = std::fs::read_link(dir.join("fd").join(n.to_string())) else {
        return (FdKind::None, 0);
    };
    let t = target.to_string_lossy();
    let ino = |prefix: &str| {
        t.strip_prefix(prefix)
            .and_then(|r| r.strip_suffix(']'))
            .and_then(|n| n.parse().ok())
            .unwrap_or(0)
    };
    if t.starts_with("socket:[") {
        (FdKind::Socket, ino("socket:["))
    } else if t.starts_with("pipe:[") {
        (FdKind::Pipe, ino("pipe:["))
    } else if t.starts_with("/dev/pts/") {
        // The kernel reports the devpts inode: the same number stat gives.
        let ino = std::fs::metadata(dir.join("fd").join(n.to_string()))
            .map(|m| std::os::unix::fs::MetadataExt::ino(&m))
            .unwrap_or(0);
        (FdKind::Pty, ino)
    } else if t.starts_with("/dev/tty") || t == "/dev/null" {
        (FdKind::CharDevice, 0)
    } else if t.starts_with('/') {
        (FdKind::File, 0)
    } else {
        (FdKind::Other, 0)
    }
}

/// A rescan's question: where /proc is, and the pids the table knew when asked.
pub struct ScanRequest {
    proc_root: PathBuf,
    boot_unix_ms: i64,
    known: std::collections::HashSet<u32>,
}

/// What a rescan read from /proc: every pid alive then, and the processes the table
/// did not know.
pub struct ProcScan {
    alive: std::collections::HashSet<u32>,
    known_before: std::collections::HashSet<u32>,
    read: Vec<Proc>,
}

impl ScanRequest {
    /// Reads /proc (blocking: run it off the event loop).
    pub fn read(self) -> ProcScan {
        let mut alive = std::collections::HashSet::new();
        let mut read = Vec::new();
        if let Ok(dir) = std::fs::read_dir(&self.proc_root) {
            for e in dir.flatten() {
                let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else {
                    continue;
                };
                alive.insert(pid);
                if !self.known.contains(&pid) {
                    if let Some(p) = read_proc(&self.proc_root, self.boot_unix_ms, pid) {
                        read.push(p);
                    }
                }
            }
        }
        ProcScan {
            alive,
            known_before: self.known,
            read,
        }
    }
}

fn read_proc(proc_root: &Path, boot_unix_ms: i64, pid: u32) -> Option<Proc> {
    let dir = proc_root.join(pid.to_string());
    let stat =
        crate::metrics::parse::pid_stat(&crate::metrics::parse::read_lossy(&dir.join("stat"))?)?;
    let (name, ppid) = (stat.comm, stat.ppid);
    let start_ticks = i64::try_from(stat.start_ticks).unwrap_or(0);
    // SAFETY: sysconf has no memory side effects.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1);
    let (uid, euid) = crate::metrics::parse::read_lossy(&dir.join("status"))
        .and_then(|t| crate::metrics::parse::pid_status_uids(&t))
        .unwrap_or((0, 0));
    let cmdline = crate::metrics::parse::read_cmdline(&dir.join("cmdline"));
    let exe = std::fs::read_link(dir.join("exe"))
        .map(|p| p.to_string_lossy().into_owned())
        .unwrap_or_default();
    let container = std::fs::read_to_string(dir.join("cgroup"))
        .ok()
        .and_then(|c| container_id(&c))
        .unwrap_or_default();
    let fd = |n: u32| -> (FdKind, u64) { fd_of(&dir, n) };
    Some(Proc {
        pid,
        ppid,
        fileless: exe.starts_with("/memfd:") || exe.ends_with(" (deleted)"),
        exe: exe.into(),
        name: name.into(),
        cmdline: cmdline.into(),
        uid,
        euid,
        start_unix_ms: boot_unix_ms + start_ticks * 1000 / hz,
        container: container.into(),
        cgroup_id: 0,
        stdin: fd(0),
        stdout: fd(1),
        stdin_from: None,
        exited: None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A real process with an odd name (spaces, parentheses, a newline, invalid
    /// UTF-8) and a 1 MB command line, read as the table reads it; then gone.
    #[test]
    fn odd_names_huge_command_lines_and_vanished_processes() {
        use std::os::unix::ffi::OsStrExt as _;
        let dir = tempfile::tempdir().unwrap();
        let name = std::ffi::OsStr::from_bytes(b"a b) (c\nd\xff");
        let prog = dir.path().join(name);
        std::fs::copy("/bin/sh", &prog).unwrap();
        // A shell that waits on a child: alive while it is read, with 1 MB of args.
        let big = "x".repeat(100_000);
        let mut child = std::process::Command::new(&prog)
            .args(["-c", "sleep 30", "zero"])
            .args(vec![&big; 10])
            .spawn()
            .unwrap();
        let pid = child.id();
        // After the exec the comm is the odd name (first 15 bytes).
        let mut p = None;
        for _ in 0..200 {
            p = read_proc(Path::new("/proc"), 0, pid);
            if p.as_ref().is_some_and(|p| p.cmdline.ends_with('…')) {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        let p = p.expect("the process read");
        assert!(p.name.starts_with("a b) (c\nd"), "{:?}", p.name);
        assert!(p.cmdline.len() <= crate::metrics::parse::MAX_CMDLINE + '…'.len_utf8());
        assert!(p.cmdline.ends_with('…'), "cut and marked");
        assert!(p.exe.contains("a b) (c"), "{:?}", p.exe);
        let _ = child.kill();
        let _ = child.wait();
        // Gone: nothing read, no panic.
        assert!(read_proc(Path::new("/proc"), 0, pid).is_none());
        assert_eq!(
            crate::metrics::parse::read_cmdline(Path::new(&format!("/proc/{pid}/cmdline"))),
            ""
        );
    }

    #[test]
    fn container_ids_from_cgroup_paths() {
        let id = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";
        for path in [
            format!("0::/system.slice/docker-{id}.scope"),
            format!("12:pids:/docker/{id}"),
            format!("0::/kubepods/besteffort/pod1/cri-containerd-{id}.scope"),
        ] {
            assert_eq!(
                container_id(&path).as_deref(),
                Some("0123456789ab"),
                "{path}"
            );
        }
        assert_eq!(
            container_id("0::/user.slice/user-1000.slice/session-2.scope"),
            None
        );
    }

    #[test]
    fn seeds_this_process_from_proc() {
        let mut t = ProcessTable::new(Path::new("/proc"), 100_000);
        t.scan();
        let me = t
            .get(std::process::id())
            .expect("this test process is in /proc");
        let exe = std::env::current_exe().unwrap();
        assert_eq!(&*me.exe, exe.to_string_lossy());
        // SAFETY: getuid has no side effects.
        assert_eq!(me.uid, unsafe { libc::getuid() });
        assert_eq!(me.ppid, std::os::unix::process::parent_id());
        assert!(t
            .lineage(std::process::id())
            .first()
            .is_some_and(|p| p.pid == me.ppid));
    }

    /// The periodic rescan reads /proc off the loop while exec events go on updating
    /// the table: a process the table learned of after the read was asked for is not
    /// forgotten by it; the next rescan, which knew it, forgets it once /proc does not
    /// have it.
    #[test]
    fn a_rescan_read_off_the_loop_keeps_what_events_added_meanwhile() {
        let mut t = ProcessTable::new(Path::new("/proc"), 100_000);
        t.scan();
        let request = t.scan_request();
        // An exec seen while the rescan reads /proc: a pid /proc does not have.
        let mut p = read_proc(Path::new("/proc"), 0, std::process::id()).expect("this process");
        p.pid = 4_000_000;
        assert!(t.insert(p));
        let scan = request.read();
        t.apply_scan(scan);
        assert!(t.get(4_000_000).is_some(), "added after the request: kept");
        assert!(t.get(std::process::id()).is_some());
        let scan = t.scan_request().read();
        t.apply_scan(scan);
        assert!(
            t.get(4_000_000).is_none(),
            "known to this rescan and gone: forgotten"
        );
    }
}
