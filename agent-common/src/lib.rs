//! The ABI between Vigil's eBPF programs and its userspace agent.
//!
//! Every type here is `#[repr(C)]`, `Copy` and pointer-free, so the same bytes mean
//! the same thing on both sides of a map or ring buffer. This crate is the only place
//! these layouts are defined.
#![no_std]

/// Powers of two the latency histogram covers: 2^0 ns .. 2^40 ns (about 18 minutes);
/// anything slower lands in the last bucket.
pub const LATENCY_OCTAVES: usize = 40;
/// Each power of two is split into this many equal sub-buckets, so a bucket's width
/// is at most 25 % of its lower edge (plain log2 buckets would be 100 %).
pub const SUB_BUCKETS: usize = 4;
/// Buckets per histogram.
pub const LATENCY_BUCKETS: usize = LATENCY_OCTAVES * SUB_BUCKETS;

/// Syscall numbers the histogram map has room for. x86_64 uses < 470 today; a
/// syscall number at or above this is counted in [`Counter::SyscallOutOfRange`].
pub const MAX_SYSCALLS: u32 = 512;

/// Words of the per-CPU "syscalls seen" bitmap (one bit per syscall number), so
/// userspace reads only the histograms that have data.
pub const SEEN_WORDS: usize = MAX_SYSCALLS as usize / 64;
const _: () = assert!(
    SEEN_WORDS.is_power_of_two(),
    "the kernel side masks word indices"
);

/// Per-syscall, per-CPU latency statistics (the value of the `SYSCALL_LATENCY` map,
/// indexed by syscall number).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SyscallStats {
    pub count: u64,
    pub total_ns: u64,
    pub max_ns: u64,
    pub buckets: [u64; LATENCY_BUCKETS],
}

impl SyscallStats {
    pub const ZERO: Self = Self {
        count: 0,
        total_ns: 0,
        max_ns: 0,
        buckets: [0; LATENCY_BUCKETS],
    };
}

/// Histogram bucket for a latency in nanoseconds: floor(log2(ns)) picks the octave,
/// the next two bits below the leading one pick the sub-bucket.
///
/// A binary search rather than `leading_zeros`: BPF has no count-leading-zeros
/// instruction, and this compiles to six compares on both sides.
#[inline(always)]
pub fn latency_bucket(ns: u64) -> usize {
    let mut v = ns;
    let mut log2 = 0u32;
    if v >= 1 << 32 {
        v >>= 32;
        log2 += 32;
    }
    if v >= 1 << 16 {
        v >>= 16;
        log2 += 16;
    }
    if v >= 1 << 8 {
        v >>= 8;
        log2 += 8;
    }
    if v >= 1 << 4 {
        v >>= 4;
        log2 += 4;
    }
    if v >= 1 << 2 {
        v >>= 2;
        log2 += 2;
    }
    if v >= 1 << 1 {
        log2 += 1;
    }
    if log2 as usize >= LATENCY_OCTAVES {
        return LATENCY_BUCKETS - 1;
    }
    let sub = if log2 >= 2 {
        ((ns >> (log2 - 2)) & 3) as usize
    } else {
        0
    };
    log2 as usize * SUB_BUCKETS + sub
}

/// Smallest latency (ns) that lands in `bucket`.
pub fn bucket_lower_bound(bucket: usize) -> u64 {
    let (octave, sub) = (bucket / SUB_BUCKETS, (bucket % SUB_BUCKETS) as u64);
    if octave < 2 {
        return 1u64 << octave;
    }
    (1u64 << octave) + sub * (1u64 << (octave - 2))
}

/// Largest latency (ns) that lands in `bucket` (u64::MAX for the last bucket).
pub fn bucket_upper_bound(bucket: usize) -> u64 {
    if bucket + 1 >= LATENCY_BUCKETS {
        return u64::MAX;
    }
    let octave = bucket / SUB_BUCKETS;
    if octave < 2 {
        // Octaves 0 and 1 have a single populated sub-bucket (sub 0).
        return (1u64 << (octave + 1)) - 1;
    }
    bucket_lower_bound(bucket) + (1u64 << (octave - 2)) - 1
}

/// Kernel-side counters (a per-CPU array indexed by these values). Every event the
/// kernel programs could not record or deliver lands in one of them.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Counter {
    /// A slow-syscall event was dropped because the ring buffer was full.
    SlowSyscallRingbufFull = 0,
    /// A slow-syscall event was suppressed by the in-kernel rate limit.
    SlowSyscallRateLimited = 1,
    /// A TCP retransmit event was dropped because the ring buffer was full.
    RetransmitRingbufFull = 2,
    /// The per-task start-time slot could not be created (task storage/hash full),
    /// so one syscall's latency was not recorded.
    SyscallStartStoreFailed = 3,
    /// A syscall number beyond [`MAX_SYSCALLS`]; its latency was not recorded.
    SyscallOutOfRange = 4,
    /// Slow-syscall events delivered to the ring buffer.
    SlowSyscallSent = 5,
    /// TCP retransmit events delivered to the ring buffer.
    RetransmitSent = 6,
    /// A process event (exec, fork, exit) was dropped because the ring buffer was full.
    ProcessRingbufFull = 7,
    /// Process events delivered to the ring buffer.
    ProcessSent = 8,
    /// A security event (ptrace, setuid, module, file write, connect, listen) was
    /// dropped because the ring buffer was full.
    SecurityRingbufFull = 9,
    /// Security events delivered to the ring buffer.
    SecuritySent = 10,
    /// A setuid-family call could not be followed to its return (pending map full).
    SecurityPendingFull = 11,
}

pub const COUNTERS: u32 = 12;

/// First byte (tag) of every ring-buffer event; the reader dispatches on it.
#[repr(u8)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EventKind {
    SlowSyscall = 1,
    TcpRetransmit = 2,
    Process = 3,
    Security = 4,
}

impl EventKind {
    pub fn from_tag(tag: u8) -> Option<Self> {
        match tag {
            1 => Some(Self::SlowSyscall),
            2 => Some(Self::TcpRetransmit),
            3 => Some(Self::Process),
            4 => Some(Self::Security),
            _ => None,
        }
    }
}

pub const TASK_COMM_LEN: usize = 16;

/// A syscall that took longer than the configured threshold.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct SlowSyscall {
    /// Always [`EventKind::SlowSyscall`].
    pub kind: u8,
    pub _pad: [u8; 3],
    pub pid: u32,
    pub tid: u32,
    pub syscall_nr: u32,
    /// `CLOCK_MONOTONIC` (bpf_ktime_get_ns) when the syscall returned.
    pub end_ns: u64,
    pub latency_ns: u64,
    pub cgroup_id: u64,
    pub comm: [u8; TASK_COMM_LEN],
}

/// One call of the `tcp:tcp_retransmit_skb` tracepoint.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct TcpRetransmit {
    /// Always [`EventKind::TcpRetransmit`].
    pub kind: u8,
    pub _pad: u8,
    /// `AF_INET` (2) or `AF_INET6` (10).
    pub family: u16,
    /// TCP state (`TCP_ESTABLISHED` = 1, ...), as the kernel numbers it.
    pub state: i32,
    pub sport: u16,
    pub dport: u16,
    /// The kernel's error code when the retransmit attempt failed (0: sent, or the
    /// kernel's tracepoint has no `err` field).
    pub err: i32,
    /// `CLOCK_MONOTONIC` when the tracepoint fired.
    pub timestamp_ns: u64,
    /// IPv4 addresses use the first 4 bytes; network byte order.
    pub saddr: [u8; 16],
    pub daddr: [u8; 16],
}

/// Field offsets of the `tcp:tcp_retransmit_skb` tracepoint record, read by userspace
/// from tracefs at load time (the layout differs across kernels, and Rust eBPF has no
/// CO-RE). An offset of [`RetransmitLayout::ABSENT`] means the field doesn't exist.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RetransmitLayout {
    pub sport: u32,
    pub dport: u32,
    pub family: u32,
    pub state: u32,
    pub saddr: u32,
    pub daddr: u32,
    pub saddr_v6: u32,
    pub daddr_v6: u32,
    pub err: u32,
    /// Size of the `state` field (4 on current kernels).
    pub state_size: u32,
}

impl RetransmitLayout {
    pub const ABSENT: u32 = u32::MAX;
    pub const UNSET: Self = Self {
        sport: Self::ABSENT,
        dport: Self::ABSENT,
        family: Self::ABSENT,
        state: Self::ABSENT,
        saddr: Self::ABSENT,
        daddr: Self::ABSENT,
        saddr_v6: Self::ABSENT,
        daddr_v6: Self::ABSENT,
        err: Self::ABSENT,
        state_size: 4,
    };
}

/// What happened to a process.
#[repr(u8)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ProcessOp {
    Exec = 1,
    Fork = 2,
    Exit = 3,
}

impl ProcessOp {
    pub fn from_u8(v: u8) -> Option<Self> {
        match v {
            1 => Some(Self::Exec),
            2 => Some(Self::Fork),
            3 => Some(Self::Exit),
            _ => None,
        }
    }
}

/// Bytes of the executed file's path kept (longer paths are cut, NUL-terminated).
pub const FILENAME_LEN: usize = 256;

/// A process exec, fork (new processes only, not threads) or exit (of the whole
/// thread group), from the sched_process_* tracepoints.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct ProcessEvent {
    /// Always [`EventKind::Process`].
    pub kind: u8,
    /// [`ProcessOp`].
    pub op: u8,
    pub _pad: [u8; 2],
    /// The process (thread group) id.
    pub pid: u32,
    /// The parent's process id (for fork: the parent that forked).
    pub ppid: u32,
    pub uid: u32,
    pub gid: u32,
    /// Exit: the wait status (code << 8 | signal). Otherwise 0.
    pub exit_code: i32,
    /// `CLOCK_MONOTONIC` when the tracepoint fired.
    pub timestamp_ns: u64,
    pub cgroup_id: u64,
    pub comm: [u8; TASK_COMM_LEN],
    /// Exec: the path as passed to execve (NUL-terminated). Otherwise empty.
    pub filename: [u8; FILENAME_LEN],
    /// Exec: the start of the argument list, NUL-separated, `args_len` bytes.
    pub args: [u8; ARGS_LEN],
    pub args_len: u32,
    /// Exec: the effective uid (differs from `uid` for set-user-ID programs).
    pub euid: u32,
    /// Exec: what fds 0 and 1 are ([`FdKind`]) and their inode numbers (a pipe's inode
    /// links the two ends of a shell pipeline; a socket's finds its connection).
    pub stdin_kind: u8,
    pub stdout_kind: u8,
    /// Exec: [`EXE_MEMFD`], [`EXE_UNLINKED`].
    pub exe_flags: u8,
    pub _pad2: u8,
    pub _pad3: u32,
    pub stdin_ino: u64,
    pub stdout_ino: u64,
    /// Exec: the executed file's own name (its dentry), e.g. `memfd:x` for a memfd.
    pub exe_name: [u8; EXE_NAME_LEN],
}

/// Bytes of the executed file's own name kept.
pub const EXE_NAME_LEN: usize = 64;

/// Bytes of an exec's argument list kept (the rest is cut).
pub const ARGS_LEN: usize = 256;
/// The executed file is a memfd (`memfd_create`): nothing on disk.
pub const EXE_MEMFD: u8 = 1;
/// The executed file has no links left (deleted, or `O_TMPFILE`).
pub const EXE_UNLINKED: u8 = 2;

/// What an open file descriptor is, from its inode's mode.
#[repr(u8)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum FdKind {
    /// Not open, or unreadable.
    #[default]
    None = 0,
    Pipe = 1,
    Socket = 2,
    CharDevice = 3,
    File = 4,
    Other = 5,
    /// A pseudo-terminal (a devpts slave, majors 136-143: an ssh session, tmux, a
    /// terminal window, or one a program opened with pty.spawn).
    Pty = 6,
}

impl FdKind {
    pub fn from_mode(mode: u16) -> Self {
        match mode as u32 & 0o170000 {
            0o010000 => Self::Pipe,
            0o140000 => Self::Socket,
            0o020000 => Self::CharDevice,
            0o100000 => Self::File,
            0 => Self::None,
            _ => Self::Other,
        }
    }
    pub fn from_u8(v: u8) -> Self {
        match v {
            1 => Self::Pipe,
            2 => Self::Socket,
            3 => Self::CharDevice,
            4 => Self::File,
            5 => Self::Other,
            6 => Self::Pty,
            _ => Self::None,
        }
    }
}

/// A security-relevant action, filtered in the kernel (see `SecurityEvent`).
#[repr(u8)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SecurityOp {
    /// `ptrace(PTRACE_ATTACH | PTRACE_SEIZE, target)`: `target` = pid, `detail` = request.
    Ptrace = 1,
    /// A setuid-family call by a process whose real uid was not 0 that returned
    /// success with one of its ids set to 0: `detail` = old real uid, `target` = new
    /// real uid.
    SetUid = 2,
    /// The same for the gid family.
    SetGid = 3,
    /// `init_module` / `finit_module` called: `target` = the fd (finit_module) or
    /// u64::MAX.
    ModuleLoad = 4,
    /// A file opened for writing in a watched directory: `target` = the directory's
    /// inode, `dev` its device, `detail` = the file's f_mode, `name` = the file's name.
    FileWrite = 5,
    /// A rename whose new path, if absolute, starts with a watched prefix: `name` = the
    /// new path, `target` = 0. If relative, whose base directory (the working directory
    /// or the dirfd) is in `WATCHED_DIRS` with [`DIR_BASE`]: `target` = its inode, `dev`
    /// its device, `name` = the new path as given.
    Rename = 6,
    /// `connect()` to a watched port, or by a watched process: `port`, `family`, `addr`.
    Connect = 7,
    /// A TCP socket started listening: `port`, `family`, `addr` (local).
    Listen = 8,
    /// A watched file opened for writing through another of its hard links: `target` =
    /// the file's inode, `dev` its device, `detail` = f_mode, `name` = the link's name.
    LinkWrite = 9,
    /// A file watched for reads (in `WATCHED_FILES` with [`FILE_READ`]) opened for
    /// reading: `target` = the file's inode, `dev` its device, `detail` = f_mode, `name` =
    /// the name it was opened by.
    FileRead = 10,
    /// chmod, fchmod, fchmodat, fchmodat2 asking for a mode with the set-user-ID or
    /// set-group-ID bit (other modes are not reported): `detail` = the mode, `name` =
    /// the path as given, relative to `target` (the dirfd, sign-extended; `AT_FDCWD`
    /// for the working directory) when `dev` is 0; when `dev` is 1 (fchmod), `target`
    /// is the fd and `name` the file's own name.
    SetMode = 11,
    /// setxattr, lsetxattr, fsetxattr, setxattrat of `security.capability` (file
    /// capabilities, as setcap sets them): `name`, `target` and `dev` as for `SetMode`.
    SetCapability = 12,
    /// Another process's memory opened or copied: `process_vm_readv` (`dev` 0, `detail`
    /// 0) or `process_vm_writev` (`dev` 0, `detail` 1) with `target` = the pid; or a
    /// procfs `mem` file opened (`dev` 1, `detail` = f_mode, `name` = the name of the
    /// directory it is in: the pid, or the thread id under `task/`).
    MemoryAccess = 13,
    /// mount(2) or move_mount(2) onto a path under /proc (`name`, absolute as given):
    /// `detail` = the flags, `dev` 0 for mount, 1 for move_mount.
    Mount = 14,
    /// A file truncated: opened with `O_TRUNC` for writing (`detail` 0) or
    /// `ftruncate(fd, 0)` (`detail` 1), in a directory watched for it (`port` 1:
    /// `target`/`dev` are the directory's inode and device, `name` the file's name) or
    /// itself watched for it (`port` 2: `target`/`dev` are the file's); or
    /// `truncate(path, 0)` (`detail` 2: `name` = the path as given, relative to the
    /// working directory).
    Truncate = 15,
    /// execve/execveat with LD_PRELOAD, LD_AUDIT or a proxy variable in its
    /// environment: `name` = the entry (`VAR=value`, cut at `NAME_LEN`), `detail` = its
    /// index. Sent at the call, before the exec (the caller's comm).
    ExecEnv = 16,
    /// A process connected to `PORT_SCAN_DISTINCT` distinct remote ports within
    /// `PORT_SCAN_WINDOW_NS` (sent once per window): `detail` = the distinct count,
    /// `target` = the window in ns, `port`, `family`, `addr` = the last connect's peer
    /// (IPv6 peers: the address is not read, zeros).
    PortScan = 17,
    /// socket() asking for a packet socket (`AF_PACKET`, or the old `SOCK_PACKET`
    /// type) or a raw IP socket (`AF_INET`/`AF_INET6` with `SOCK_RAW`): what packet
    /// capture needs. `family` = the address family, `detail` = the type (flags masked
    /// off), `port` = the protocol as asked (network byte order for `AF_PACKET`, as
    /// the call takes it). Sent at the call: the attempt is what counts.
    RawSocket = 18,
}

/// The port-scan check's window and threshold: a process that connects to this many
/// distinct remote ports within the window is reported once for it.
pub const PORT_SCAN_WINDOW_NS: u64 = 10_000_000_000;
pub const PORT_SCAN_DISTINCT: u32 = 100;
/// Bits of the hashed port bitmap per process (a power of two; distinct ports are
/// counted by first setting of a bit, so collisions only undercount).
pub const PORT_SCAN_BITS: u32 = 1024;

/// Per process (tgid): its port-scan window (value of `PORT_SCANS`).
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct PortScan {
    pub window_start_ns: u64,
    pub distinct: u32,
    pub reported: u32,
    pub bits: [u64; (PORT_SCAN_BITS / 64) as usize],
}

impl SecurityOp {
    pub fn from_u8(v: u8) -> Option<Self> {
        Some(match v {
            1 => Self::Ptrace,
            2 => Self::SetUid,
            3 => Self::SetGid,
            4 => Self::ModuleLoad,
            5 => Self::FileWrite,
            6 => Self::Rename,
            7 => Self::Connect,
            8 => Self::Listen,
            9 => Self::LinkWrite,
            10 => Self::FileRead,
            11 => Self::SetMode,
            12 => Self::SetCapability,
            13 => Self::MemoryAccess,
            14 => Self::Mount,
            15 => Self::Truncate,
            16 => Self::ExecEnv,
            17 => Self::PortScan,
            18 => Self::RawSocket,
            _ => return None,
        })
    }
}

/// Bytes of a file name (or a rename's new path) kept in a security event.
pub const NAME_LEN: usize = 128;

/// Watched path prefixes for renames (value of `WATCHED_PREFIXES`).
pub const MAX_PREFIXES: u32 = 32;

#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct PathPrefix {
    /// 0 ends the list.
    pub len: u32,
    pub bytes: [u8; NAME_LEN],
}

/// One security-relevant action (see [`SecurityOp`] for what each field holds).
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct SecurityEvent {
    /// Always [`EventKind::Security`].
    pub kind: u8,
    /// [`SecurityOp`].
    pub op: u8,
    /// Connect/Listen: `AF_INET` or `AF_INET6`.
    pub family: u16,
    pub pid: u32,
    pub tid: u32,
    pub uid: u32,
    pub gid: u32,
    /// Connect/Listen: the port (host byte order).
    pub port: u16,
    pub _pad: u16,
    pub target: u64,
    pub detail: u64,
    pub dev: u64,
    /// `CLOCK_MONOTONIC` when the program fired.
    pub timestamp_ns: u64,
    pub cgroup_id: u64,
    pub comm: [u8; TASK_COMM_LEN],
    /// Network byte order; IPv4 uses the first 4 bytes.
    pub addr: [u8; 16],
    pub name: [u8; NAME_LEN],
}

/// `WATCHED_DIRS` value bit: the directory's files are watched for opens for writing.
pub const DIR_FILES: u8 = 1;
/// `WATCHED_DIRS` value bit: a relative rename based here is reported (a watched
/// directory, or one above it, so `cd /etc && mv x cron.d/y` is seen).
pub const DIR_BASE: u8 = 2;
/// `WATCHED_DIRS` value bit: its files are watched for truncation (`SecurityOp::Truncate`).
pub const DIR_TRUNC: u8 = 4;

/// `WATCHED_FILES` value bit: an open for writing through another hard link is
/// reported ([`SecurityOp::LinkWrite`]; file_write rules name the file).
pub const FILE_LINK: u8 = 1;
/// `WATCHED_FILES` value bit: an open for reading is reported ([`SecurityOp::FileRead`];
/// file_read rules name the file).
pub const FILE_READ: u8 = 2;
/// `WATCHED_FILES` value bit: its truncation is reported (`SecurityOp::Truncate`).
pub const FILE_TRUNC: u8 = 4;

/// A watched directory or file (key of `WATCHED_DIRS` and `WATCHED_FILES`): the
/// kernel's device number (`MKDEV(major, minor)` = major << 20 | minor) and inode.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct DirKey {
    pub dev: u64,
    pub ino: u64,
}

/// Syscall numbers the security probes watch, set by userspace for this architecture.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SecuritySyscalls {
    /// 0: security events off.
    pub enabled: u32,
    pub init_module: u32,
    pub finit_module: u32,
    pub setuid: u32,
    pub setgid: u32,
    pub setreuid: u32,
    pub setregid: u32,
    pub setresuid: u32,
    pub setresgid: u32,
    pub ptrace: u32,
    pub connect: u32,
    pub rename: u32,
    pub renameat: u32,
    pub renameat2: u32,
    pub open: u32,
    pub openat: u32,
    pub openat2: u32,
    pub creat: u32,
    pub chmod: u32,
    pub fchmod: u32,
    pub fchmodat: u32,
    pub fchmodat2: u32,
    pub setxattr: u32,
    pub lsetxattr: u32,
    pub fsetxattr: u32,
    pub setxattrat: u32,
    pub process_vm_readv: u32,
    pub process_vm_writev: u32,
    pub mount: u32,
    pub move_mount: u32,
    pub truncate: u32,
    pub ftruncate: u32,
    pub execve: u32,
    pub execveat: u32,
    pub socket: u32,
    /// Byte offsets of the first four syscall arguments in `struct pt_regs`.
    pub regs_args: [u32; 4],
    /// Byte offset of the syscall number (`orig_ax` on x86_64) in `struct pt_regs`,
    /// which sys_exit reads to return at once for a syscall nobody needs; only
    /// [`SecuritySyscalls::REGS_NR_X86_64`] is read (the probe loads it at a constant
    /// offset), any other value means "look in task storage".
    pub regs_nr: u32,
    /// Bit `nr` set for every number above (below 512): the probe tests one word and
    /// returns for every other syscall without reading the rest of this struct.
    pub watched: [u64; 8],
}

impl SecuritySyscalls {
    pub const OFF: Self = Self {
        enabled: 0,
        init_module: u32::MAX,
        finit_module: u32::MAX,
        setuid: u32::MAX,
        setgid: u32::MAX,
        setreuid: u32::MAX,
        setregid: u32::MAX,
        setresuid: u32::MAX,
        setresgid: u32::MAX,
        ptrace: u32::MAX,
        connect: u32::MAX,
        rename: u32::MAX,
        renameat: u32::MAX,
        renameat2: u32::MAX,
        open: u32::MAX,
        openat: u32::MAX,
        openat2: u32::MAX,
        creat: u32::MAX,
        chmod: u32::MAX,
        fchmod: u32::MAX,
        fchmodat: u32::MAX,
        fchmodat2: u32::MAX,
        setxattr: u32::MAX,
        lsetxattr: u32::MAX,
        fsetxattr: u32::MAX,
        setxattrat: u32::MAX,
        process_vm_readv: u32::MAX,
        process_vm_writev: u32::MAX,
        mount: u32::MAX,
        move_mount: u32::MAX,
        truncate: u32::MAX,
        ftruncate: u32::MAX,
        execve: u32::MAX,
        execveat: u32::MAX,
        socket: u32::MAX,
        regs_args: [u32::MAX; 4],
        regs_nr: u32::MAX,
        watched: [0; 8],
    };

    /// `offsetof(struct pt_regs, orig_ax)` on x86_64.
    pub const REGS_NR_X86_64: u32 = 120;

    /// The numbers the probe compares (for `watched`).
    pub fn numbers(&self) -> [u32; 34] {
        [
            self.init_module,
            self.finit_module,
            self.setuid,
            self.setgid,
            self.setreuid,
            self.setregid,
            self.setresuid,
            self.setresgid,
            self.ptrace,
            self.connect,
            self.rename,
            self.renameat,
            self.renameat2,
            self.open,
            self.openat,
            self.openat2,
            self.creat,
            self.chmod,
            self.fchmod,
            self.fchmodat,
            self.fchmodat2,
            self.setxattr,
            self.lsetxattr,
            self.fsetxattr,
            self.setxattrat,
            self.process_vm_readv,
            self.process_vm_writev,
            self.mount,
            self.move_mount,
            self.truncate,
            self.ftruncate,
            self.execve,
            self.execveat,
            self.socket,
        ]
    }

    /// `self` with `watched` set from the numbers.
    pub fn with_watched(mut self) -> Self {
        self.watched = [0; 8];
        for nr in self.numbers() {
            if nr < 512 {
                self.watched[(nr / 64) as usize] |= 1 << (nr % 64);
            }
        }
        self
    }
}

/// Byte offsets of kernel struct fields, from the kernel's BTF at load time (Rust eBPF
/// has no CO-RE). [`TaskLayout::ABSENT`] when the kernel lacks the field.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TaskLayout {
    /// `task_struct.pid`
    pub pid: u32,
    /// `task_struct.tgid`
    pub tgid: u32,
    /// `task_struct.real_parent`
    pub real_parent: u32,
    /// `task_struct.exit_code`
    pub exit_code: u32,
    /// `linux_binprm.filename`
    pub binprm_filename: u32,
    /// `linux_binprm.file`
    pub binprm_file: u32,
    /// `task_struct.mm`, `mm_struct.arg_start`, `mm_struct.arg_end`
    pub mm: u32,
    pub arg_start: u32,
    pub arg_end: u32,
    /// `task_struct.cred`, `cred.euid`
    pub cred: u32,
    pub cred_euid: u32,
    /// `task_struct.files`, `files_struct.fdt`, `fdtable.fd`
    pub files: u32,
    pub files_fdt: u32,
    pub fdt_fd: u32,
    /// `file.f_inode`, `file.f_mode`, `file.f_path` + `path.dentry`
    pub file_inode: u32,
    pub file_mode: u32,
    pub file_dentry: u32,
    /// `inode.i_mode`, `inode.i_ino`, `inode.i_nlink`, `inode.i_sb`, `super_block.s_dev`
    pub inode_mode: u32,
    pub inode_ino: u32,
    pub inode_nlink: u32,
    pub inode_sb: u32,
    pub sb_dev: u32,
    /// `super_block.s_magic` (procfs files are recognised by it)
    pub sb_magic: u32,
    /// `inode.i_rdev` (which device a character device is: pseudo-terminals)
    pub inode_rdev: u32,
    /// `dentry.d_parent`, `dentry.d_inode`, `dentry.d_name` + `qstr.name`
    pub dentry_parent: u32,
    pub dentry_inode: u32,
    pub dentry_name: u32,
    /// `task_struct.fs`, `fs_struct.pwd` + `path.dentry` (the working directory)
    pub fs: u32,
    pub fs_pwd_dentry: u32,
}

impl TaskLayout {
    pub const ABSENT: u32 = u32::MAX;
    pub const UNSET: Self = Self {
        pid: Self::ABSENT,
        tgid: Self::ABSENT,
        real_parent: Self::ABSENT,
        exit_code: Self::ABSENT,
        binprm_filename: Self::ABSENT,
        binprm_file: Self::ABSENT,
        mm: Self::ABSENT,
        arg_start: Self::ABSENT,
        arg_end: Self::ABSENT,
        cred: Self::ABSENT,
        cred_euid: Self::ABSENT,
        files: Self::ABSENT,
        files_fdt: Self::ABSENT,
        fdt_fd: Self::ABSENT,
        file_inode: Self::ABSENT,
        file_mode: Self::ABSENT,
        file_dentry: Self::ABSENT,
        inode_mode: Self::ABSENT,
        inode_ino: Self::ABSENT,
        inode_nlink: Self::ABSENT,
        inode_sb: Self::ABSENT,
        sb_dev: Self::ABSENT,
        sb_magic: Self::ABSENT,
        inode_rdev: Self::ABSENT,
        dentry_parent: Self::ABSENT,
        dentry_inode: Self::ABSENT,
        dentry_name: Self::ABSENT,
        fs: Self::ABSENT,
        fs_pwd_dentry: Self::ABSENT,
    };
}

/// Names of the globals in the eBPF object's `.rodata` that userspace sets at load.
pub mod globals {
    /// `u32`: only record syscalls of this thread group (0 = every process).
    pub const FILTER_TGID: &str = "FILTER_TGID";
    /// `u32`: 0 = the syscall pair runs for the security checks only (no histograms).
    pub const SYSCALL_LATENCY_ON: &str = "SYSCALL_LATENCY_ON";
    /// `u64`: syscalls at least this slow are sent as events (u64::MAX = never).
    pub const SLOW_THRESHOLD_NS: &str = "SLOW_THRESHOLD_NS";
    /// `u64`: slow-syscall events allowed per CPU per second.
    pub const SLOW_EVENTS_PER_SEC: &str = "SLOW_EVENTS_PER_SEC";
    /// `u64`: wake the ring-buffer reader only once this many bytes wait (0 = per event).
    pub const RINGBUF_WAKE_AT_BYTES: &str = "RINGBUF_WAKE_AT_BYTES";
    /// `u64`: with the above, also wake when the last wake-up is this many ns old.
    pub const RINGBUF_WAKE_AFTER_NS: &str = "RINGBUF_WAKE_AFTER_NS";
    /// [`super::RetransmitLayout`].
    pub const RETRANSMIT_LAYOUT: &str = "RETRANSMIT_LAYOUT";
    /// [`super::TaskLayout`].
    pub const TASK_LAYOUT: &str = "TASK_LAYOUT";
    /// [`super::SecuritySyscalls`].
    pub const SECURITY_SYSCALLS: &str = "SECURITY_SYSCALLS";
}

/// Per-CPU token bucket for the slow-syscall rate limit.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct RateLimit {
    pub window_start_ns: u64,
    pub sent_in_window: u64,
}

#[cfg(feature = "user")]
mod pod {
    // SAFETY: all of these are repr(C), Copy, and have no padding that could leak
    // uninitialised bytes in a way the kernel cares about, and no pointers.
    unsafe impl aya::Pod for super::SyscallStats {}
    unsafe impl aya::Pod for super::RetransmitLayout {}
    unsafe impl aya::Pod for super::TaskLayout {}
    unsafe impl aya::Pod for super::RateLimit {}
    unsafe impl aya::Pod for super::SecuritySyscalls {}
    unsafe impl aya::Pod for super::DirKey {}
    unsafe impl aya::Pod for super::PathPrefix {}
}

#[cfg(test)]
mod tests {
    extern crate std;
    use std::vec;

    use super::*;

    #[test]
    fn buckets_follow_octaves_and_quarters() {
        assert_eq!(latency_bucket(0), 0);
        assert_eq!(latency_bucket(1), 0);
        assert_eq!(latency_bucket(2), SUB_BUCKETS);
        assert_eq!(latency_bucket(3), SUB_BUCKETS);
        // 1024 = 2^10 exactly: octave 10, first quarter.
        assert_eq!(latency_bucket(1024), 10 * SUB_BUCKETS);
        // 1792 = 2^10 * 1.75: last quarter of octave 10.
        assert_eq!(latency_bucket(1792), 10 * SUB_BUCKETS + 3);
        assert_eq!(latency_bucket(2047), 10 * SUB_BUCKETS + 3);
        assert_eq!(latency_bucket(u64::MAX), LATENCY_BUCKETS - 1);
    }

    #[test]
    fn every_value_lies_within_its_bucket_bounds() {
        let mut samples = vec![0u64, 1, 2, 3, 4, 5, 6, 7, 8, u64::MAX];
        for shift in 0..63 {
            let v = 1u64 << shift;
            samples.extend([v - 1, v, v + 1, v + v / 3, v + v / 2, v + v / 4 * 3]);
        }
        for v in samples {
            let b = latency_bucket(v);
            assert!(b < LATENCY_BUCKETS);
            if b + 1 < LATENCY_BUCKETS {
                assert!(bucket_lower_bound(b) <= v.max(1), "{v} below bucket {b}");
                assert!(v <= bucket_upper_bound(b), "{v} above bucket {b}");
            }
        }
        // Buckets tile the line: each upper bound + 1 is the next lower bound
        // (skipping the unpopulated sub-buckets of octaves 0 and 1).
        for b in 2 * SUB_BUCKETS..LATENCY_BUCKETS - 1 {
            assert_eq!(
                bucket_upper_bound(b) + 1,
                bucket_lower_bound(b + 1),
                "bucket {b}"
            );
        }
    }

    #[test]
    fn event_layouts_are_stable() {
        assert_eq!(core::mem::size_of::<SlowSyscall>(), 56);
        assert_eq!(core::mem::size_of::<TcpRetransmit>(), 56);
        assert_eq!(
            core::mem::size_of::<SyscallStats>(),
            8 * (3 + LATENCY_BUCKETS)
        );
    }
}
