//! Reading the event ring buffer: dispatch on the tag byte, decode, count what can't
//! be decoded. The reader never blocks the runtime: it waits on the map's fd.
use std::{
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    time::{Duration, SystemTime},
};

use aya::maps::{Map, MapData, RingBuf};
use tokio::io::unix::AsyncFd;
pub use vigil_common::{DirKey, FdKind, SecurityOp};
use vigil_common::{
    EventKind, ProcessEvent as RawProcessEvent, ProcessOp, SecurityEvent as RawSecurityEvent,
    SlowSyscall, TcpRetransmit, EXE_MEMFD, EXE_UNLINKED,
};

use super::ProbeError;

/// A syscall slower than the threshold.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SlowSyscallEvent {
    pub time: SystemTime,
    pub pid: u32,
    pub tid: u32,
    pub comm: String,
    pub syscall_nr: u32,
    pub latency_ns: u64,
    pub cgroup_id: u64,
}

/// One TCP retransmission attempt.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RetransmitEvent {
    pub time: SystemTime,
    pub saddr: IpAddr,
    pub sport: u16,
    pub daddr: IpAddr,
    pub dport: u16,
    /// Kernel TCP state number (1 = ESTABLISHED ...); see [`tcp_state_name`].
    pub state: i32,
    /// The kernel's error when the retransmit failed, 0 when it was sent.
    pub err: i32,
}

/// A process exec, fork or exit.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ProcessEvent {
    pub time: SystemTime,
    pub op: ProcessOp,
    pub pid: u32,
    pub ppid: u32,
    pub uid: u32,
    pub gid: u32,
    /// Exit: the wait status (code << 8 | signal).
    pub exit_code: i32,
    pub cgroup_id: u64,
    pub comm: String,
    /// Exec: the path given to execve.
    pub filename: String,
    /// Exec: the arguments (the first ARGS_LEN bytes of them).
    pub args: Vec<String>,
    /// Exec: the effective uid.
    pub euid: u32,
    /// Exec: what stdin and stdout are, with their inode numbers.
    pub stdin: (FdKind, u64),
    pub stdout: (FdKind, u64),
    /// Exec: the program runs from a memfd / from a file with no links left.
    pub exe_memfd: bool,
    pub exe_unlinked: bool,
    /// Exec: the executed file's own name (`memfd:x` for a memfd).
    pub exe_name: String,
}

/// A security-relevant action the kernel filtered for us: who did it, and what.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SecurityEvent {
    pub time: SystemTime,
    pub pid: u32,
    pub tid: u32,
    pub uid: u32,
    pub gid: u32,
    pub comm: String,
    pub cgroup_id: u64,
    pub action: SecurityAction,
}

/// Which id a set-id call changed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum IdKind {
    Uid,
    Gid,
}

/// What the process did, decoded once from the kernel's record (whose `target`,
/// `detail` and `dev` mean something different for each operation): nothing past the
/// decoder reads the raw record.
/// A file as a syscall named it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum FileArg {
    /// A path as given: absolute, or relative to `dirfd` (`None`: the working directory).
    Path { dirfd: Option<i32>, path: String },
    /// The file open on `fd`, whose own name is `name`.
    Fd { fd: i32, name: String },
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SecurityAction {
    /// ptrace(2) attach/seize of another process.
    Ptrace {
        target_pid: u32,
        request: u64,
    },
    /// A set-id call to root (setuid, setresuid, ... and the gid family).
    SetId {
        id: IdKind,
        old: u32,
        new: u32,
    },
    /// init_module/finit_module; the fd finit_module was given, if any.
    ModuleLoad {
        fd: Option<u32>,
        file: String,
    },
    /// A file opened for writing in a watched directory.
    FileWrite {
        dir: DirKey,
        name: String,
        f_mode: u64,
    },
    /// A watched file opened for writing through another link to it.
    LinkWrite {
        file: DirKey,
        opened_as: String,
    },
    /// A file watched for reads opened for reading (by the name `opened_as`).
    FileRead {
        file: DirKey,
        opened_as: String,
    },
    /// chmod and friends asking for a set-user-ID or set-group-ID mode.
    SetMode {
        file: FileArg,
        mode: u32,
    },
    /// File capabilities set (the `security.capability` extended attribute).
    SetCapability {
        file: FileArg,
    },
    /// Another process's memory read or written: through its procfs `mem` file
    /// (`target` is the name of the directory it is in, a pid or thread id), or
    /// process_vm_readv/writev (`target` is the pid).
    MemoryAccess {
        target: String,
        via: MemoryVia,
        write: bool,
    },
    /// mount or move_mount onto /proc or a path under it.
    Mount {
        target: String,
        flags: u64,
        move_mount: bool,
    },
    /// An exec asked for with LD_PRELOAD, LD_AUDIT or a proxy variable set (sent
    /// before the exec).
    ExecEnv {
        var: String,
        value: String,
    },
    /// A file truncated to nothing (see `SecurityOp::Truncate`).
    Truncate {
        file: Truncated,
        how: TruncateHow,
    },
    /// A rename into a watched directory: relative to `dir`, or an absolute `name`.
    Rename {
        dir: Option<DirKey>,
        name: String,
    },
    Connect {
        remote: IpAddr,
        port: u16,
    },
    Listen {
        local: IpAddr,
        port: u16,
    },
    /// A process connected to `distinct` remote ports within `window` (the kernel's
    /// port-scan check); the last connect's peer (unspecified for IPv6).
    PortScan {
        distinct: u32,
        window: std::time::Duration,
        remote: IpAddr,
        port: u16,
    },
    /// socket() asked for a packet socket or a raw IP socket (packet capture).
    RawSocket {
        family: SocketFamily,
        kind: SocketKind,
        /// As asked: an EtherType for packet sockets (3 = every protocol), an IP
        /// protocol number for raw IP sockets.
        protocol: u16,
    },
}

/// The address family of a socket the kernel reported.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SocketFamily {
    Inet,
    Inet6,
    Packet,
    Other(u16),
}

impl SocketFamily {
    pub fn from_raw(family: u16) -> Self {
        match family {
            2 => Self::Inet,
            10 => Self::Inet6,
            17 => Self::Packet,
            f => Self::Other(f),
        }
    }
    /// The name rules test (`socket.family`).
    pub fn name(self) -> String {
        match self {
            Self::Inet => "inet".into(),
            Self::Inet6 => "inet6".into(),
            Self::Packet => "packet".into(),
            Self::Other(f) => f.to_string(),
        }
    }
}

/// A socket's type (flags masked off).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SocketKind {
    Stream,
    Dgram,
    Raw,
    Packet,
    Other(u64),
}

impl SocketKind {
    pub fn from_raw(kind: u64) -> Self {
        match kind {
            1 => Self::Stream,
            2 => Self::Dgram,
            3 => Self::Raw,
            10 => Self::Packet,
            k => Self::Other(k),
        }
    }
    /// The name rules test (`socket.type`).
    pub fn name(self) -> String {
        match self {
            Self::Stream => "stream".into(),
            Self::Dgram => "dgram".into(),
            Self::Raw => "raw".into(),
            Self::Packet => "packet".into(),
            Self::Other(k) => k.to_string(),
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Event {
    SlowSyscall(SlowSyscallEvent),
    Retransmit(RetransmitEvent),
    Process(ProcessEvent),
    Security(SecurityEvent),
}

/// Which file a truncation names.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Truncated {
    /// A file named `name` in a directory watched for truncation.
    InDir { dir: DirKey, name: String },
    /// A file watched for truncation itself (`name`: the name it was opened by).
    File { file: DirKey, name: String },
    /// truncate(2)'s path as given (relative to the working directory).
    Path(String),
}

/// How a file was truncated.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TruncateHow {
    /// Opened with O_TRUNC (a shell's `> file`, `cp /dev/null file`).
    OpenTrunc,
    /// ftruncate(fd, 0) (`truncate -s 0`).
    Ftruncate,
    /// truncate(path, 0).
    TruncatePath,
}

/// How another process's memory was reached.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MemoryVia {
    /// /proc/PID/mem opened.
    ProcMem,
    /// process_vm_readv or process_vm_writev.
    ProcessVm,
}

/// The file a SetMode/SetCapability record names (see `SecurityOp::SetMode`).
fn file_arg(e: &RawSecurityEvent) -> FileArg {
    let fd = e.target as i64 as i32;
    let name = c_string(&e.name);
    if e.dev == 1 {
        FileArg::Fd { fd, name }
    } else {
        FileArg::Path {
            dirfd: (fd != AT_FDCWD && !name.starts_with('/')).then_some(fd),
            path: name,
        }
    }
}

const AT_FDCWD: i32 = -100;
/// `f_mode` bit: open for writing.
const FMODE_WRITE: u64 = 0x2;

fn c_string(bytes: &[u8]) -> String {
    let len = bytes.iter().position(|&b| b == 0).unwrap_or(bytes.len());
    String::from_utf8_lossy(&bytes[..len]).into_owned()
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum DecodeError {
    #[error("empty record")]
    Empty,
    #[error("unknown event tag {0}")]
    UnknownTag(u8),
    #[error("unknown process operation {0}")]
    UnknownOp(u8),
    #[error("{kind:?} record is {got} bytes, expected {want}")]
    Short {
        kind: EventKind,
        got: usize,
        want: usize,
    },
}

/// Converts the kernel's CLOCK_MONOTONIC timestamps to wall-clock time.
#[derive(Clone, Copy, Debug)]
pub struct Clock {
    /// realtime - monotonic, in ns, when measured (the reader measures it per read).
    offset_ns: i128,
}

impl Clock {
    pub fn new() -> Self {
        use nix::time::{clock_gettime, ClockId};
        let ns = |id| {
            clock_gettime(id)
                .map(|t| t.tv_sec() as i128 * 1_000_000_000 + t.tv_nsec() as i128)
                .unwrap_or(0)
        };
        let mono = ns(ClockId::CLOCK_MONOTONIC);
        let real = ns(ClockId::CLOCK_REALTIME);
        Self {
            offset_ns: real - mono,
        }
    }

    pub fn to_wall(self, monotonic_ns: u64) -> SystemTime {
        let ns = monotonic_ns as i128 + self.offset_ns;
        if ns <= 0 {
            return SystemTime::UNIX_EPOCH;
        }
        SystemTime::UNIX_EPOCH + Duration::from_nanos(ns.min(u64::MAX as i128) as u64)
    }
}

impl Default for Clock {
    fn default() -> Self {
        Self::new()
    }
}

fn read<T: Copy>(bytes: &[u8], kind: EventKind) -> Result<T, DecodeError> {
    let want = std::mem::size_of::<T>();
    if bytes.len() < want {
        return Err(DecodeError::Short {
            kind,
            got: bytes.len(),
            want,
        });
    }
    // SAFETY: length checked; T is a repr(C) plain-old-data type from vigil-common,
    // valid for any bit pattern; read_unaligned copes with any alignment.
    Ok(unsafe { std::ptr::read_unaligned(bytes.as_ptr().cast::<T>()) })
}

fn ip(family: u16, raw: [u8; 16]) -> IpAddr {
    const AF_INET6: u16 = 10;
    if family == AF_INET6 {
        IpAddr::V6(Ipv6Addr::from(raw))
    } else {
        IpAddr::V4(Ipv4Addr::new(raw[0], raw[1], raw[2], raw[3]))
    }
}

/// Decodes one ring-buffer record.
pub fn decode(bytes: &[u8], clock: Clock) -> Result<Event, DecodeError> {
    let tag = *bytes.first().ok_or(DecodeError::Empty)?;
    match EventKind::from_tag(tag).ok_or(DecodeError::UnknownTag(tag))? {
        kind @ EventKind::SlowSyscall => {
            let e: SlowSyscall = read(bytes, kind)?;
            let comm_len = e.comm.iter().position(|&b| b == 0).unwrap_or(e.comm.len());
            Ok(Event::SlowSyscall(SlowSyscallEvent {
                time: clock.to_wall(e.end_ns),
                pid: e.pid,
                tid: e.tid,
                comm: String::from_utf8_lossy(&e.comm[..comm_len]).into_owned(),
                syscall_nr: e.syscall_nr,
                latency_ns: e.latency_ns,
                cgroup_id: e.cgroup_id,
            }))
        }
        kind @ EventKind::TcpRetransmit => {
            let e: TcpRetransmit = read(bytes, kind)?;
            Ok(Event::Retransmit(RetransmitEvent {
                time: clock.to_wall(e.timestamp_ns),
                saddr: ip(e.family, e.saddr),
                sport: e.sport,
                daddr: ip(e.family, e.daddr),
                dport: e.dport,
                state: e.state,
                err: e.err,
            }))
        }
        kind @ EventKind::Process => {
            let e: RawProcessEvent = read(bytes, kind)?;
            Ok(Event::Process(ProcessEvent {
                time: clock.to_wall(e.timestamp_ns),
                op: ProcessOp::from_u8(e.op).ok_or(DecodeError::UnknownOp(e.op))?,
                pid: e.pid,
                ppid: e.ppid,
                uid: e.uid,
                gid: e.gid,
                exit_code: e.exit_code,
                cgroup_id: e.cgroup_id,
                comm: c_string(&e.comm),
                filename: c_string(&e.filename),
                args: split_args(&e.args[..(e.args_len as usize).min(e.args.len())]),
                euid: e.euid,
                stdin: (FdKind::from_u8(e.stdin_kind), e.stdin_ino),
                stdout: (FdKind::from_u8(e.stdout_kind), e.stdout_ino),
                exe_memfd: e.exe_flags & EXE_MEMFD != 0,
                exe_unlinked: e.exe_flags & EXE_UNLINKED != 0,
                exe_name: c_string(&e.exe_name),
            }))
        }
        kind @ EventKind::Security => {
            let e: RawSecurityEvent = read(bytes, kind)?;
            let op = SecurityOp::from_u8(e.op).ok_or(DecodeError::UnknownOp(e.op))?;
            let key = DirKey {
                dev: e.dev,
                ino: e.target,
            };
            let id = |v: u64| u32::try_from(v).unwrap_or(u32::MAX);
            let action = match op {
                SecurityOp::Ptrace => SecurityAction::Ptrace {
                    target_pid: id(e.target),
                    request: e.detail,
                },
                SecurityOp::SetUid | SecurityOp::SetGid => SecurityAction::SetId {
                    id: if op == SecurityOp::SetUid {
                        IdKind::Uid
                    } else {
                        IdKind::Gid
                    },
                    old: id(e.detail),
                    new: id(e.target),
                },
                SecurityOp::ModuleLoad => SecurityAction::ModuleLoad {
                    fd: u32::try_from(e.target).ok(),
                    file: c_string(&e.name),
                },
                SecurityOp::FileWrite => SecurityAction::FileWrite {
                    dir: key,
                    name: c_string(&e.name),
                    f_mode: e.detail,
                },
                SecurityOp::LinkWrite => SecurityAction::LinkWrite {
                    file: key,
                    opened_as: c_string(&e.name),
                },
                SecurityOp::FileRead => SecurityAction::FileRead {
                    file: key,
                    opened_as: c_string(&e.name),
                },
                SecurityOp::SetMode => SecurityAction::SetMode {
                    file: file_arg(&e),
                    mode: e.detail as u32,
                },
                SecurityOp::SetCapability => SecurityAction::SetCapability { file: file_arg(&e) },
                SecurityOp::MemoryAccess if e.dev == 1 => SecurityAction::MemoryAccess {
                    target: c_string(&e.name),
                    via: MemoryVia::ProcMem,
                    write: e.detail & FMODE_WRITE != 0,
                },
                SecurityOp::MemoryAccess => SecurityAction::MemoryAccess {
                    target: e.target.to_string(),
                    via: MemoryVia::ProcessVm,
                    write: e.detail != 0,
                },
                SecurityOp::Mount => SecurityAction::Mount {
                    target: c_string(&e.name),
                    flags: e.detail,
                    move_mount: e.dev == 1,
                },
                SecurityOp::ExecEnv => {
                    let entry = c_string(&e.name);
                    let (var, value) = entry.split_once('=').unwrap_or((&entry, ""));
                    SecurityAction::ExecEnv {
                        var: var.to_string(),
                        value: value.to_string(),
                    }
                }
                SecurityOp::Truncate => SecurityAction::Truncate {
                    file: match (e.detail, e.port) {
                        (2, _) => Truncated::Path(c_string(&e.name)),
                        (_, 1) => Truncated::InDir {
                            dir: key,
                            name: c_string(&e.name),
                        },
                        _ => Truncated::File {
                            file: key,
                            name: c_string(&e.name),
                        },
                    },
                    how: match e.detail {
                        0 => TruncateHow::OpenTrunc,
                        1 => TruncateHow::Ftruncate,
                        _ => TruncateHow::TruncatePath,
                    },
                },
                SecurityOp::Rename => SecurityAction::Rename {
                    dir: (e.target != 0).then_some(key),
                    name: c_string(&e.name),
                },
                SecurityOp::Connect => SecurityAction::Connect {
                    remote: ip(e.family, e.addr),
                    port: e.port,
                },
                SecurityOp::Listen => SecurityAction::Listen {
                    local: ip(e.family, e.addr),
                    port: e.port,
                },
                SecurityOp::PortScan => SecurityAction::PortScan {
                    distinct: u32::try_from(e.detail).unwrap_or(u32::MAX),
                    window: std::time::Duration::from_nanos(e.target),
                    remote: ip(e.family, e.addr),
                    port: e.port,
                },
                SecurityOp::RawSocket => {
                    let family = SocketFamily::from_raw(e.family);
                    SecurityAction::RawSocket {
                        family,
                        kind: SocketKind::from_raw(e.detail),
                        // Packet sockets take their EtherType in network byte order.
                        protocol: if family == SocketFamily::Packet {
                            u16::from_be(e.port)
                        } else {
                            e.port
                        },
                    }
                }
            };
            Ok(Event::Security(SecurityEvent {
                time: clock.to_wall(e.timestamp_ns),
                pid: e.pid,
                tid: e.tid,
                uid: e.uid,
                gid: e.gid,
                comm: c_string(&e.comm),
                cgroup_id: e.cgroup_id,
                action,
            }))
        }
    }
}

/// argv as the kernel lays it out: NUL-separated, maybe cut short.
fn split_args(bytes: &[u8]) -> Vec<String> {
    let bytes = bytes.strip_suffix(&[0]).unwrap_or(bytes);
    if bytes.is_empty() {
        return Vec::new();
    }
    bytes
        .split(|&b| b == 0)
        .map(|a| String::from_utf8_lossy(a).into_owned())
        .collect()
}

/// The kernel's name for a TCP state number.
pub fn tcp_state_name(state: i32) -> &'static str {
    match state {
        1 => "ESTABLISHED",
        2 => "SYN_SENT",
        3 => "SYN_RECV",
        4 => "FIN_WAIT1",
        5 => "FIN_WAIT2",
        6 => "TIME_WAIT",
        7 => "CLOSE",
        8 => "CLOSE_WAIT",
        9 => "LAST_ACK",
        10 => "LISTEN",
        11 => "CLOSING",
        12 => "NEW_SYN_RECV",
        13 => "BOUND_INACTIVE",
        _ => "UNKNOWN",
    }
}

/// Async reader over the ring buffer.
pub struct EventReader {
    ring: AsyncFd<RingBuf<MapData>>,
    clock: Clock,
    /// Records that could not be decoded (counted, never fatal).
    pub decode_errors: u64,
}

impl EventReader {
    pub(super) fn new(map: Map) -> Result<Self, ProbeError> {
        let ring = RingBuf::try_from(map).map_err(|source| ProbeError::Map {
            map: "EVENTS",
            source,
        })?;
        // SAFETY: the RingBuf owns its map fd, which stays open and the same for the
        // RingBuf's whole life, and the AsyncFd owns the RingBuf.
        let ring = unsafe { AsyncFd::register_with_interest(ring, tokio::io::Interest::READABLE) }
            .map_err(|e| {
                let (_, io_error) = e.into_parts();
                ProbeError::Map {
                    map: "EVENTS",
                    source: aya::maps::MapError::SyscallError(aya::sys::SyscallError {
                        call: "epoll_ctl",
                        io_error,
                    }),
                }
            })?;
        Ok(Self {
            ring,
            clock: Clock::new(),
            decode_errors: 0,
        })
    }

    /// Waits until events are available, then appends every available one to `out`.
    pub async fn read(&mut self, out: &mut Vec<Event>) -> std::io::Result<()> {
        let mut guard = self.ring.readable_mut().await?;
        // Measured again for every read (two vDSO calls): event times follow a step
        // of the wall clock (NTP, an operator) instead of keeping the offset at start.
        self.clock = Clock::new();
        let inner = guard.get_inner_mut();
        while let Some(item) = inner.next() {
            match decode(&item, self.clock) {
                Ok(e) => out.push(e),
                Err(e) => {
                    self.decode_errors += 1;
                    tracing::debug!(error = %e, "undecodable ring buffer record");
                }
            }
        }
        guard.clear_ready();
        Ok(())
    }

    /// Appends whatever is available now without waiting.
    pub fn drain(&mut self, out: &mut Vec<Event>) {
        self.clock = Clock::new();
        let inner = self.ring.get_mut();
        while let Some(item) = inner.next() {
            match decode(&item, self.clock) {
                Ok(e) => out.push(e),
                Err(_) => self.decode_errors += 1,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bytes_of<T: Copy>(v: &T) -> Vec<u8> {
        // SAFETY: reading a Copy value's bytes.
        unsafe {
            std::slice::from_raw_parts((v as *const T).cast::<u8>(), std::mem::size_of::<T>())
        }
        .to_vec()
    }

    #[test]
    fn decodes_a_retransmit() {
        let mut saddr = [0u8; 16];
        saddr[..4].copy_from_slice(&[10, 0, 0, 1]);
        let mut daddr = [0u8; 16];
        daddr[..4].copy_from_slice(&[10, 0, 0, 2]);
        let raw = TcpRetransmit {
            kind: EventKind::TcpRetransmit as u8,
            _pad: 0,
            family: 2,
            state: 1,
            sport: 40000,
            dport: 5201,
            err: 0,
            timestamp_ns: 5,
            saddr,
            daddr,
        };
        let Event::Retransmit(e) = decode(&bytes_of(&raw), Clock { offset_ns: 0 }).unwrap() else {
            panic!("wrong kind")
        };
        assert_eq!(e.saddr, IpAddr::V4(Ipv4Addr::new(10, 0, 0, 1)));
        assert_eq!(e.daddr, IpAddr::V4(Ipv4Addr::new(10, 0, 0, 2)));
        assert_eq!((e.sport, e.dport, e.state), (40000, 5201, 1));
    }

    #[test]
    fn bad_records_are_errors_not_panics() {
        assert_eq!(decode(&[], Clock::new()), Err(DecodeError::Empty));
        assert_eq!(
            decode(&[99, 0, 0], Clock::new()),
            Err(DecodeError::UnknownTag(99))
        );
        assert!(matches!(
            decode(&[1, 0, 0], Clock::new()),
            Err(DecodeError::Short { .. })
        ));
    }

    /// Each operation's raw record becomes its own action, with the union fields
    /// (`target`, `detail`, `dev`) read the way that operation means them.
    #[test]
    fn security_records_decode_into_one_action_each() {
        let raw = |op: SecurityOp, target: u64, detail: u64| {
            let mut e = RawSecurityEvent {
                kind: EventKind::Security as u8,
                op: op as u8,
                family: 10,
                pid: 42,
                tid: 43,
                uid: 1000,
                gid: 1000,
                port: 4444,
                _pad: 0,
                target,
                detail,
                dev: 7,
                timestamp_ns: 0,
                cgroup_id: 9,
                comm: [0; vigil_common::TASK_COMM_LEN],
                addr: [0; 16],
                name: [0; vigil_common::NAME_LEN],
            };
            e.addr[15] = 1;
            e.name[..4].copy_from_slice(b"evil");
            let Event::Security(s) = decode(&bytes_of(&e), Clock { offset_ns: 0 }).unwrap() else {
                panic!("not a security event");
            };
            assert_eq!((s.pid, s.tid, s.uid, s.cgroup_id), (42, 43, 1000, 9));
            s.action
        };
        let key = DirKey { dev: 7, ino: 5 };
        assert_eq!(
            raw(SecurityOp::Ptrace, 77, 16),
            SecurityAction::Ptrace {
                target_pid: 77,
                request: 16
            }
        );
        assert_eq!(
            raw(SecurityOp::SetGid, 0, 1000),
            SecurityAction::SetId {
                id: IdKind::Gid,
                old: 1000,
                new: 0
            }
        );
        assert_eq!(
            raw(SecurityOp::ModuleLoad, u64::MAX, 0),
            SecurityAction::ModuleLoad {
                fd: None,
                file: "evil".into()
            }
        );
        assert_eq!(
            raw(SecurityOp::ModuleLoad, 3, 0),
            SecurityAction::ModuleLoad {
                fd: Some(3),
                file: "evil".into()
            }
        );
        assert_eq!(
            raw(SecurityOp::FileWrite, 5, 2),
            SecurityAction::FileWrite {
                dir: key,
                name: "evil".into(),
                f_mode: 2
            }
        );
        assert_eq!(
            raw(SecurityOp::LinkWrite, 5, 0),
            SecurityAction::LinkWrite {
                file: key,
                opened_as: "evil".into()
            }
        );
        assert_eq!(
            raw(SecurityOp::FileRead, 5, 0),
            SecurityAction::FileRead {
                file: key,
                opened_as: "evil".into()
            }
        );
        assert_eq!(
            raw(SecurityOp::SetMode, AT_FDCWD as i64 as u64, 0),
            SecurityAction::SetMode {
                file: FileArg::Path {
                    dirfd: None,
                    path: "evil".into()
                },
                mode: 0
            }
        );
        assert_eq!(
            raw(SecurityOp::SetCapability, 7, 0),
            SecurityAction::SetCapability {
                file: FileArg::Path {
                    dirfd: Some(7),
                    path: "evil".into()
                }
            }
        );
        assert_eq!(
            raw(SecurityOp::Rename, 0, 0),
            SecurityAction::Rename {
                dir: None,
                name: "evil".into()
            }
        );
        assert_eq!(
            raw(SecurityOp::Rename, 5, 0),
            SecurityAction::Rename {
                dir: Some(key),
                name: "evil".into()
            }
        );
        assert_eq!(
            raw(SecurityOp::Connect, 0, 0),
            SecurityAction::Connect {
                remote: "::1".parse().unwrap(),
                port: 4444
            }
        );
        assert_eq!(
            raw(SecurityOp::Listen, 0, 0),
            SecurityAction::Listen {
                local: "::1".parse().unwrap(),
                port: 4444
            }
        );
    }
}
