//! Security-relevant actions, filtered in the kernel so ordinary work pays close to
//! nothing. The syscall ones ride the syscall probe's tp_btf sys_enter/sys_exit pair
//! (`on_sys_enter`, `on_sys_exit`): a few compares of the syscall number for every other
//! syscall. Classic `syscalls:` tracepoints would cost every syscall on the host ~50 ns
//! more (the kernel's per-syscall dispatch runs once any of them is enabled). Then each
//! check exits early: ptrace other than attach/seize, setuid-family calls not to root by
//! non-root, opens for writing outside watched directories, read opens of files no
//! rule watches for reads (one hash lookup by inode), renames outside
//! watched prefixes, connects to ports and by programs nobody asked about.
use aya_ebpf::{
    helpers::{
        bpf_get_current_cgroup_id, bpf_get_current_comm, bpf_get_current_pid_tgid,
        bpf_get_current_uid_gid, bpf_ktime_get_ns, bpf_probe_read_kernel_str_bytes,
        bpf_probe_read_user,
    },
    macros::{map, tracepoint},
    maps::{Array, HashMap, LruHashMap, PerCpuArray},
    programs::TracePointContext,
};
use vigil_common::{
    Counter, DirKey, EventKind, PathPrefix, PortScan, SecurityEvent, SecurityOp, SecuritySyscalls,
    DIR_BASE, DIR_FILES, DIR_TRUNC, FILE_LINK, FILE_READ, FILE_TRUNC, MAX_PREFIXES, NAME_LEN,
    PORT_SCAN_BITS, PORT_SCAN_DISTINCT, PORT_SCAN_WINDOW_NS,
};

use super::process::{read_at, read_ptr, TASK_LAYOUT};
use crate::maps::{count, submit_flags, EVENTS};

#[no_mangle]
pub static SECURITY_SYSCALLS: SecuritySyscalls = SecuritySyscalls::OFF;

/// One field of `SECURITY_SYSCALLS`, read where it is used (volatile, so the value the
/// loader set is used): copying the whole struct would not fit the BPF stack.
/// One field of the task layout the loader filled in, read on its own (a copy of the
/// whole layout is 128 bytes of a 512-byte stack).
macro_rules! lay {
    ($f:ident) => {
        // SAFETY: a valid static set by the loader.
        unsafe { core::ptr::read_volatile(core::ptr::addr_of!(TASK_LAYOUT.$f)) }
    };
}

macro_rules! sc {
    ($($f:tt)+) => {
        // SAFETY: a valid static set by the loader.
        unsafe { core::ptr::read_volatile(core::ptr::addr_of!(SECURITY_SYSCALLS.$($f)+)) }
    };
}

/// Directories whose files are watched for writes (value: `DIR_FILES`) and bases of
/// relative renames (value: `DIR_BASE`).
#[map]
static WATCHED_DIRS: HashMap<DirKey, u8> = HashMap::with_max_entries(256, 0);

/// Watched files (device + inode): `FILE_LINK` for opens for writing through another
/// hard link, `FILE_READ` for opens for reading.
#[map]
static WATCHED_FILES: HashMap<DirKey, u8> = HashMap::with_max_entries(1024, 0);

/// Remote ports whose connects are reported (host byte order).
#[map]
static WATCHED_PORTS: HashMap<u16, u8> = HashMap::with_max_entries(256, 0);

/// Program names (comm, NUL-padded) whose connects are reported: decided in the
/// kernel, so a process that connects right after its exec is not missed.
#[map]
static WATCHED_COMMS: HashMap<[u8; 16], u8> = HashMap::with_max_entries(256, 0);

/// Processes (tgid) whose connects are reported, because a rule asks about them.
#[map]
static WATCHED_PIDS: HashMap<u32, u8> = HashMap::with_max_entries(4096, 0);

/// Distinct remote ports each process connected to in its current window (a hashed
/// bitmap): the port-scan check. LRU, so a host with more connecting processes than
/// entries forgets the quietest, never refuses a new one.
#[map]
static PORT_SCANS: LruHashMap<u32, PortScan> = LruHashMap::with_max_entries(4096, 0);

/// A zeroed `PortScan` to insert from (not on the BPF stack).
#[map]
static PORT_SCAN_ZERO: PerCpuArray<PortScan> = PerCpuArray::with_max_entries(1, 0);

/// A setuid-family call in flight (tid -> op << 32 | old id), from enter to exit.
#[map]
static SETID_PENDING: HashMap<u32, u64> = HashMap::with_max_entries(1024, 0);

const PTRACE_ATTACH: u64 = 16;
const PTRACE_SEIZE: u64 = 0x4206;
const FMODE_WRITE: u32 = 0x2;
const AT_FDCWD: i32 = -100;
const TCP_LISTEN: i32 = 10;
const AF_INET: u16 = 2;
const AF_INET6: u16 = 10;

/// Reserves, fills the common part, lets `fill` write the rest, submits.
#[inline(always)]
fn emit(op: SecurityOp, fill: impl FnOnce(*mut SecurityEvent)) {
    let Some(mut entry) = EVENTS.reserve::<SecurityEvent>(0) else {
        count(Counter::SecurityRingbufFull);
        return;
    };
    let ev = entry.as_mut_ptr();
    let pid_tgid = bpf_get_current_pid_tgid();
    let uid_gid = bpf_get_current_uid_gid();
    // SAFETY: `ev` points into the reserved record. The whole struct is written (a
    // field added to the ABI that is not named here does not compile, so none can
    // carry an earlier record's bytes); `fill` then sets what its action reports.
    unsafe {
        ev.write(SecurityEvent {
            kind: EventKind::Security as u8,
            op: op as u8,
            family: 0,
            pid: (pid_tgid >> 32) as u32,
            tid: pid_tgid as u32,
            uid: uid_gid as u32,
            gid: (uid_gid >> 32) as u32,
            port: 0,
            _pad: 0,
            target: 0,
            detail: 0,
            dev: 0,
            timestamp_ns: bpf_ktime_get_ns(),
            cgroup_id: bpf_get_current_cgroup_id(),
            comm: bpf_get_current_comm().unwrap_or([0; 16]),
            addr: [0; 16],
            name: [0; NAME_LEN],
        });
    }
    fill(ev);
    entry.submit(submit_flags(true));
    count(Counter::SecuritySent);
}

#[inline(always)]
fn on() -> bool {
    sc!(enabled) != 0
}

/// Argument `i` (0-based) of the syscall being entered, from `struct pt_regs`.
#[inline(always)]
fn sys_arg(regs: *const u8, i: usize) -> u64 {
    let off = match i {
        0 => sc!(regs_args[0]),
        1 => sc!(regs_args[1]),
        2 => sc!(regs_args[2]),
        _ => sc!(regs_args[3]),
    };
    read_at(regs, off)
}

/// Called by the syscall probe's sys_enter (tp_btf) for every syscall: `None` for a
/// syscall not watched here (its exit needs nothing from its enter), else what the
/// check noted for the exit.
#[inline(always)]
pub fn on_sys_enter(nr: i64, regs: *const u8) -> Option<u32> {
    let nr = nr as u32;
    if !watched(nr) {
        return None;
    }
    Some(enter_watched(nr, regs))
}

/// Noted at enter for the exit: the open asked for `O_TRUNC` (or was `creat`).
pub const ENTER_TRUNC: u32 = 1;
const O_TRUNC: u64 = 0o1000;
const O_ACCMODE: u64 = 3;

#[inline(always)]
fn trunc_flag(flags: u64) -> u32 {
    if flags & O_TRUNC != 0 && flags & O_ACCMODE != 0 {
        ENTER_TRUNC
    } else {
        0
    }
}

/// A watched syscall entered: which one, and its check (a frame of its own: the
/// settings it copies would not fit the probe's stack).
#[inline(never)]
fn enter_watched(nr: u32, regs: *const u8) -> u32 {
    if sc!(enabled) == 0 {
        return 0;
    }
    if nr == sc!(openat) {
        return trunc_flag(sys_arg(regs, 2));
    } else if nr == sc!(open) {
        return trunc_flag(sys_arg(regs, 1));
    } else if nr == sc!(creat) {
        return ENTER_TRUNC;
    } else if nr == sc!(openat2) {
        // openat2(dirfd, pathname, struct open_how *how, size): how->flags first.
        let how = sys_arg(regs, 2) as *const u64;
        // SAFETY: the helper checks the user pointer.
        return trunc_flag(unsafe { bpf_probe_read_user(how) }.unwrap_or(0));
    } else if nr == sc!(ftruncate) {
        if sys_arg(regs, 1) == 0 {
            truncated_fd(sys_arg(regs, 0) as i32);
        }
    } else if nr == sc!(truncate) {
        if sys_arg(regs, 1) == 0 {
            truncated_path(sys_arg(regs, 0) as *const u8);
        }
    } else if nr == sc!(execve) {
        exec_env(sys_arg(regs, 2) as *const u64);
    } else if nr == sc!(execveat) {
        exec_env(sys_arg(regs, 3) as *const u64);
    } else if nr == sc!(ptrace) {
        ptrace(regs);
    } else if nr == sc!(connect) {
        connect(sys_arg(regs, 1) as *const SockAddr);
    } else if nr == sc!(rename) {
        rename_to(AT_FDCWD, sys_arg(regs, 1) as *const u8);
    } else if nr == sc!(renameat) || nr == sc!(renameat2) {
        let dirfd = sys_arg(regs, 2) as i32;
        rename_to(dirfd, sys_arg(regs, 3) as *const u8);
    } else if nr == sc!(init_module) || nr == sc!(finit_module) {
        module_load(nr == sc!(finit_module), regs);
    } else if is_setid(nr) {
        setid_enter(nr, regs);
    } else if nr == sc!(chmod) {
        set_mode(AT_FDCWD, sys_arg(regs, 0) as *const u8, sys_arg(regs, 1));
    } else if nr == sc!(fchmodat) || nr == sc!(fchmodat2) {
        let dirfd = sys_arg(regs, 0) as i32;
        set_mode(dirfd, sys_arg(regs, 1) as *const u8, sys_arg(regs, 2));
    } else if nr == sc!(fchmod) {
        set_mode_fd(sys_arg(regs, 0) as i32, sys_arg(regs, 1));
    } else if nr == sc!(setxattr) || nr == sc!(lsetxattr) {
        let path = sys_arg(regs, 0) as *const u8;
        set_capability(AT_FDCWD, path, sys_arg(regs, 1) as *const u8);
    } else if nr == sc!(setxattrat) {
        // setxattrat(dfd, pathname, at_flags, name, args, size)
        let (dirfd, path) = (sys_arg(regs, 0) as i32, sys_arg(regs, 1) as *const u8);
        set_capability(dirfd, path, sys_arg(regs, 3) as *const u8);
    } else if nr == sc!(process_vm_readv) || nr == sc!(process_vm_writev) {
        memory_copy(sys_arg(regs, 0), nr == sc!(process_vm_writev));
    } else if nr == sc!(mount) {
        mount_onto(sys_arg(regs, 1) as *const u8, sys_arg(regs, 3), 0);
    } else if nr == sc!(move_mount) {
        // move_mount(from_dfd, from_path, to_dfd, to_path, flags)
        mount_onto(sys_arg(regs, 3) as *const u8, 0, 1);
    } else if nr == sc!(fsetxattr) {
        set_capability_fd(sys_arg(regs, 0) as i32, sys_arg(regs, 1) as *const u8);
    } else if nr == sc!(socket) {
        raw_socket(sys_arg(regs, 0), sys_arg(regs, 1), sys_arg(regs, 2));
    }
    0
}

// ---- packet and raw sockets --------------------------------------------------------

const AF_PACKET: u16 = 17;
const SOCK_RAW: u64 = 3;
const SOCK_PACKET: u64 = 10;
/// The type argument's flag bits (SOCK_NONBLOCK, SOCK_CLOEXEC) are above these.
const SOCK_TYPE_MASK: u64 = 0xf;

/// socket(): a packet socket or a raw IP socket (packet capture's ways in); every
/// other socket returns after two compares.
#[inline(never)]
fn raw_socket(family: u64, kind: u64, protocol: u64) {
    let (family, kind) = (family as u16, kind & SOCK_TYPE_MASK);
    let wanted = family == AF_PACKET
        || kind == SOCK_PACKET
        || ((family == AF_INET || family == AF_INET6) && kind == SOCK_RAW);
    if !wanted {
        return;
    }
    emit(SecurityOp::RawSocket, |ev| unsafe {
        (*ev).family = family;
        (*ev).detail = kind;
        (*ev).port = protocol as u16;
    });
}

/// process_vm_readv/writev of another process (its own memory is of no interest).
#[inline(never)]
fn memory_copy(pid: u64, write: bool) {
    if pid == bpf_get_current_pid_tgid() >> 32 {
        return;
    }
    emit(SecurityOp::MemoryAccess, |ev| unsafe {
        (*ev).target = pid;
        (*ev).detail = write as u64;
    });
}

// ---- environment at exec ----------------------------------------------------------

/// Environment entries looked at per exec (each wanted one among them is reported).
const ENV_MAX: u32 = 128;

/// A chunk of the envp array (per CPU: read 8 pointers at a time).
#[map]
static ENV_SCRATCH: PerCpuArray<[u64; 8]> = PerCpuArray::with_max_entries(1, 0);

/// Whether an environment entry's first 8 bytes start a variable the rules ask about:
/// the dynamic loader's LD_PRELOAD and LD_AUDIT, the shell history variables
/// (HISTFILE, HISTFILESIZE, HISTSIZE: exported as /dev/null or 0 they turn history
/// off for every shell started below; HISTIGNORE, HISTCONTROL: exported, they filter
/// it), and the proxy variables in either case (letters compared with their case bit
/// set). One load and ten compares; the full name is checked in userspace.
#[inline(always)]
fn env_wanted(head: u64) -> bool {
    // (pattern, case mask): little-endian u64 of the first 8 bytes.
    const WANTED: [(u64, u64); 10] = [
        (u64::from_le_bytes(*b"LD_PRELO"), 0),
        (u64::from_le_bytes(*b"LD_AUDIT"), 0),
        (u64::from_le_bytes(*b"HISTFILE"), 0),
        (u64::from_le_bytes(*b"HISTSIZE"), 0),
        (u64::from_le_bytes(*b"HISTIGNO"), 0),
        (u64::from_le_bytes(*b"HISTCONT"), 0),
        (
            u64::from_le_bytes(*b"http_pro"),
            u64::from_le_bytes(*b"\x20\x20\x20\x20\x00\x20\x20\x20"),
        ),
        (
            u64::from_le_bytes(*b"https_pr"),
            u64::from_le_bytes(*b"\x20\x20\x20\x20\x20\x00\x20\x20"),
        ),
        (
            u64::from_le_bytes(*b"all_prox"),
            u64::from_le_bytes(*b"\x20\x20\x20\x00\x20\x20\x20\x20"),
        ),
        (
            u64::from_le_bytes(*b"ftp_prox"),
            u64::from_le_bytes(*b"\x20\x20\x20\x00\x20\x20\x20\x20"),
        ),
    ];
    let mut k = 0;
    while k < WANTED.len() {
        if head | WANTED[k].1 == WANTED[k].0 {
            return true;
        }
        k += 1;
    }
    false
}

/// One wanted environment entry, whole (a frame of its own, so the verifier walks the
/// loop's iterations without the ring buffer's branches). Returns 1.
#[inline(never)]
fn report_env(p: *const u8, index: u32) {
    emit(SecurityOp::ExecEnv, |ev| unsafe {
        (*ev).detail = index as u64;
        let _ = aya_ebpf::helpers::bpf_probe_read_user_str_bytes(p, &mut (*ev).name);
    });
}

/// execve/execveat: the environment's first `ENV_MAX` entries, each by its first 8
/// bytes; each wanted one is reported whole (`name`, cut at `NAME_LEN`). Sent before the exec happens: userspace holds it for the
/// process's exec event.
#[inline(never)]
fn exec_env(envp: *const u64) {
    if envp.is_null() {
        return;
    }
    let Some(chunk) = ENV_SCRATCH.get_ptr_mut(0) else {
        return;
    };
    // SAFETY: this CPU's scratch slot.
    let chunk = unsafe { &mut *chunk };
    let mut base = 0;
    let mut head = [0u64; 2];
    while base < ENV_MAX {
        // SAFETY: the helper checks the user pointer. A chunk that would run past the
        // end of a mapping fails whole, and the reading ends there (an array ending in
        // the last 64 bytes before an unmapped page is read up to that chunk).
        if unsafe {
            aya_ebpf::helpers::bpf_probe_read_user_buf(
                envp.wrapping_add(base as usize).cast::<u8>(),
                core::slice::from_raw_parts_mut(chunk.as_mut_ptr().cast::<u8>(), 64),
            )
        }
        .is_err()
        {
            return;
        }
        let mut i = 0;
        while i < 8 {
            let p = chunk[i] as *const u8;
            if p.is_null() {
                return;
            }
            // Not cleared between entries: a string read ends with a NUL, so an entry
            // shorter than 8 bytes has one among them and matches nothing.
            // SAFETY: the helper checks the user pointer (a string read: it stops at
            // the entry's end, so a short entry at the end of a mapping is read). The
            // buffer is the 16 bytes of `head`.
            if unsafe {
                aya_ebpf::helpers::bpf_probe_read_user_str_bytes(
                    p,
                    core::slice::from_raw_parts_mut(head.as_mut_ptr().cast::<u8>(), 16),
                )
            }
            .is_ok()
                && env_wanted(u64::from_le(head[0]))
            {
                report_env(p, base + i as u32);
            }
            i += 1;
        }
        base += 8;
    }
}

// ---- mounts over /proc -------------------------------------------------------------

/// mount/move_mount: reported when the target is /proc or under it (a bind mount over
/// /proc/PID hides a process from every tool that reads /proc).
#[inline(never)]
fn mount_onto(target: *const u8, flags: u64, kind: u64) {
    let Some(buf) = RENAME_SCRATCH.get_ptr_mut(0) else {
        return;
    };
    // SAFETY: this CPU's scratch slot; the helper checks the user pointer.
    let buf = unsafe { &mut *buf };
    if unsafe { aya_ebpf::helpers::bpf_probe_read_user_str_bytes(target, buf) }.is_err() {
        return;
    }
    if buf[0] != b'/' || buf[1] != b'p' || buf[2] != b'r' || buf[3] != b'o' || buf[4] != b'c' {
        return;
    }
    if buf[5] != b'/' && buf[5] != 0 {
        return;
    }
    let path = *buf;
    emit(SecurityOp::Mount, |ev| unsafe {
        (*ev).name = path;
        (*ev).detail = flags;
        (*ev).dev = kind;
    });
}

// ---- set-id bits and file capabilities ---------------------------------------------

const S_ISUID_ISGID: u64 = 0o6000;

/// chmod/fchmodat(2): reported only for a mode with the set-user-ID or set-group-ID bit.
#[inline(never)]
fn set_mode(dirfd: i32, path: *const u8, mode: u64) {
    if mode & S_ISUID_ISGID == 0 {
        return;
    }
    path_event(SecurityOp::SetMode, dirfd, path, mode);
}

#[inline(never)]
fn set_mode_fd(fd: i32, mode: u64) {
    if mode & S_ISUID_ISGID == 0 {
        return;
    }
    fd_event(SecurityOp::SetMode, fd, mode);
}

/// setxattr and friends on a path: reported for `security.capability` only.
#[inline(never)]
fn set_capability(dirfd: i32, path: *const u8, name: *const u8) {
    if is_capability_xattr(name) {
        path_event(SecurityOp::SetCapability, dirfd, path, 0);
    }
}

/// fsetxattr: reported for `security.capability` only.
#[inline(never)]
fn set_capability_fd(fd: i32, name: *const u8) {
    if is_capability_xattr(name) {
        fd_event(SecurityOp::SetCapability, fd, 0);
    }
}

/// Whether the user string at `name` is "security.capability".
#[inline(never)]
fn is_capability_xattr(name: *const u8) -> bool {
    const WANT: &[u8; 20] = b"security.capability\0";
    let mut got = [0u8; 20];
    // SAFETY: the helper checks the user pointer.
    if unsafe { aya_ebpf::helpers::bpf_probe_read_user_str_bytes(name, &mut got) }.is_err() {
        return false;
    }
    let mut i = 0;
    while i < 20 {
        if got[i] != WANT[i] {
            return false;
        }
        i += 1;
    }
    true
}

/// An event naming a path as the caller gave it, relative to `dirfd`.
#[inline(always)]
fn path_event(op: SecurityOp, dirfd: i32, path: *const u8, detail: u64) {
    emit(op, |ev| unsafe {
        (*ev).target = dirfd as i64 as u64;
        (*ev).detail = detail;
        let _ = aya_ebpf::helpers::bpf_probe_read_user_str_bytes(path, &mut (*ev).name);
    });
}

/// An event naming the file open on `fd` (its own name; userspace finds the path).
#[inline(always)]
fn fd_event(op: SecurityOp, fd: i32, detail: u64) {
    if !(0..1 << 20).contains(&fd) {
        return;
    }
    let dentry = read_ptr(fd_file(fd as u32), lay!(file_dentry));
    let name = read_ptr(dentry, lay!(dentry_name));
    emit(op, |ev| unsafe {
        (*ev).target = fd as i64 as u64;
        (*ev).dev = 1;
        (*ev).detail = detail;
        if !name.is_null() {
            let _ = bpf_probe_read_kernel_str_bytes(name, &mut (*ev).name);
        }
    });
}

/// The number of the syscall `regs` (sys_exit's `struct pt_regs *`, a BTF pointer)
/// is leaving, read straight from the struct (one load, no helper) where the layout
/// is known; `None` elsewhere.
#[inline(always)]
pub(crate) fn exit_nr(regs: *const u8) -> Option<u32> {
    if sc!(regs_nr) != SecuritySyscalls::REGS_NR_X86_64 || regs.is_null() {
        return None;
    }
    // SAFETY: a trusted BTF pointer to the tracepoint's pt_regs; the verifier checks
    // the constant offset against the kernel's BTF of the struct.
    let nr = unsafe {
        core::ptr::read_volatile(
            regs.wrapping_add(SecuritySyscalls::REGS_NR_X86_64 as usize)
                .cast::<u64>(),
        )
    };
    Some(nr as u32)
}

/// Whether `nr` is one of the syscalls checked here: one word of the bitmap, read
/// alone (every other syscall returns after it, without copying the settings).
#[inline(always)]
pub(crate) fn watched(nr: u32) -> bool {
    if nr >= 512 {
        return false;
    }
    // SAFETY: a valid static set by the loader; volatile so its value is used.
    let words = unsafe { &*core::ptr::addr_of!(SECURITY_SYSCALLS.watched) };
    let Some(word) = words.get((nr / 64) as usize) else {
        return false;
    };
    // SAFETY: as above, one word.
    let word = unsafe { core::ptr::read_volatile(word) };
    word & (1u64 << (nr % 64)) != 0
}

/// One of the setuid/setgid family (checked at enter and at exit).
#[inline(always)]
fn is_setid(nr: u32) -> bool {
    nr == sc!(setuid)
        || nr == sc!(setgid)
        || nr == sc!(setreuid)
        || nr == sc!(setregid)
        || nr == sc!(setresuid)
        || nr == sc!(setresgid)
}

/// Called by the syscall probe's sys_exit with the number sys_enter saw.
#[inline(always)]
pub fn on_sys_exit(nr: u32, ret: i64, noted: u32) {
    if !watched(nr) {
        return;
    }
    if sc!(enabled) == 0 {
        return;
    }
    if nr == sc!(open) || nr == sc!(openat) || nr == sc!(openat2) || nr == sc!(creat) {
        if ret >= 0 {
            opened(ret, noted & ENTER_TRUNC != 0);
        }
    } else if is_setid(nr) {
        setid_exit(ret);
    }
}

// ---- ptrace ------------------------------------------------------------------------

#[inline(never)]
fn ptrace(regs: *const u8) {
    let request = sys_arg(regs, 0);
    if request != PTRACE_ATTACH && request != PTRACE_SEIZE {
        return;
    }
    let target = sys_arg(regs, 1);
    emit(SecurityOp::Ptrace, |ev| unsafe {
        (*ev).target = target;
        (*ev).detail = request;
    });
}

// ---- setuid / setgid family --------------------------------------------------------

/// Remembered when a non-root caller asks for id 0 in any position (-1 means
/// "unchanged").
#[inline(never)]
fn setid_enter(nr: u32, regs: *const u8) {
    let (op, args) = if nr == sc!(setuid) {
        (SecurityOp::SetUid, 1)
    } else if nr == sc!(setreuid) {
        (SecurityOp::SetUid, 2)
    } else if nr == sc!(setresuid) {
        (SecurityOp::SetUid, 3)
    } else if nr == sc!(setgid) {
        (SecurityOp::SetGid, 1)
    } else if nr == sc!(setregid) {
        (SecurityOp::SetGid, 2)
    } else {
        (SecurityOp::SetGid, 3)
    };
    let uid_gid = bpf_get_current_uid_gid();
    let old = if op == SecurityOp::SetUid {
        uid_gid as u32
    } else {
        (uid_gid >> 32) as u32
    };
    if old == 0 {
        return;
    }
    let mut to_root = false;
    let mut i = 0;
    while i < 3 {
        if i < args && sys_arg(regs, i) as u32 == 0 {
            to_root = true;
        }
        i += 1;
    }
    if !to_root {
        return;
    }
    let tid = bpf_get_current_pid_tgid() as u32;
    let value = (op as u64) << 32 | old as u64;
    if SETID_PENDING.insert(&tid, &value, 0).is_err() {
        count(Counter::SecurityPendingFull);
    }
}

/// Reported when one was remembered and it succeeded.
#[inline(never)]
fn setid_exit(ret: i64) {
    let tid = bpf_get_current_pid_tgid() as u32;
    // SAFETY: a plain map lookup; the value is copied out.
    let Some(value) = (unsafe { SETID_PENDING.get(&tid) }).copied() else {
        return;
    };
    let _ = SETID_PENDING.remove(&tid);
    if ret != 0 {
        return;
    }
    let op = if (value >> 32) as u8 == SecurityOp::SetGid as u8 {
        SecurityOp::SetGid
    } else {
        SecurityOp::SetUid
    };
    let uid_gid = bpf_get_current_uid_gid();
    let new = if op == SecurityOp::SetUid {
        uid_gid as u32
    } else {
        (uid_gid >> 32) as u32
    };
    emit(op, |ev| unsafe {
        (*ev).detail = value & 0xffff_ffff;
        (*ev).target = new as u64;
    });
}

// ---- module loading ----------------------------------------------------------------
// Seen at the syscall itself: kernels without module support have no module
// tracepoints, and the attempt is what matters.

#[inline(never)]
fn module_load(finit: bool, regs: *const u8) {
    let fd: u64 = if finit { sys_arg(regs, 0) } else { u64::MAX };
    // finit_module: the module file's name, from the fd (the caller may be gone by
    // the time userspace could look at /proc).
    let name = if fd < 1 << 20 {
        let file = fd_file(fd as u32);
        let dentry = read_ptr(file, lay!(file_dentry));
        read_ptr(dentry, lay!(dentry_name))
    } else {
        core::ptr::null()
    };
    emit(SecurityOp::ModuleLoad, |ev| unsafe {
        (*ev).target = fd;
        if !name.is_null() {
            let _ = bpf_probe_read_kernel_str_bytes(name, &mut (*ev).name);
        }
    });
}

/// The current task's `struct file *` for fd `fd` (null when none).
#[inline(always)]
fn fd_file(fd: u32) -> *const u8 {
    // SAFETY: helper without arguments; the current task.
    let task = unsafe { aya_ebpf::helpers::generated::bpf_get_current_task() } as *const u8;
    let files = read_ptr(task, lay!(files));
    let fdt = read_ptr(files, lay!(files_fdt));
    let fds = read_ptr(fdt, lay!(fdt_fd));
    if fds.is_null() {
        return core::ptr::null();
    }
    read_ptr(fds, fd * 8)
}

// ---- writes and renames in watched directories -------------------------------------

#[inline(always)]
fn dir_key(inode: *const u8) -> DirKey {
    let sb = read_ptr(inode, lay!(inode_sb));
    DirKey {
        dev: read_at::<u32>(sb, lay!(sb_dev)) as u64,
        ino: read_at(inode, lay!(inode_ino)),
    }
}

/// The directory's `WATCHED_DIRS` flags (0 = not there).
#[inline(always)]
fn dir_flags(key: &DirKey) -> u8 {
    // SAFETY: plain lookup.
    unsafe { WATCHED_DIRS.get(key) }.copied().unwrap_or(0)
}

/// Its own frame: `opened` reports one of three kinds, and three inlined copies of the
/// event put `opened` past the 512-byte combined stack the verifier allows where the
/// JIT has no private stack (an agent without CAP_SYS_ADMIN, kernels before 6.13).
#[inline(never)]
fn file_event(op: SecurityOp, key: &DirKey, name: *const u8, mode: u32) {
    emit(op, |ev| unsafe {
        (*ev).target = key.ino;
        (*ev).dev = key.dev;
        (*ev).detail = mode as u64;
        if !name.is_null() {
            let _ = bpf_probe_read_kernel_str_bytes(name, &mut (*ev).name);
        }
    });
}

/// Exit of open/openat/openat2/creat with a new fd: reported when the file is open for
/// writing in a watched directory, or is a watched file opened by another of its hard
/// links, or is a file watched for reads opened for reading. A read-only open (most of
/// them) costs the inode's key and one lookup in the small watched-files map.
#[inline(never)]
fn opened(fd: i64, trunc: bool) {
    if fd > 1 << 20 {
        return;
    }
    let file = fd_file(fd as u32);
    let mode: u32 = read_at(file, lay!(file_mode));
    proc_mem_opened(file, mode);
    if mode & FMODE_WRITE == 0 {
        let inode = read_ptr(file, lay!(file_inode));
        let key = dir_key(inode);
        // SAFETY: plain lookup.
        let flags = unsafe { WATCHED_FILES.get(&key) }.copied().unwrap_or(0);
        if flags & FILE_READ != 0 {
            let dentry = read_ptr(file, lay!(file_dentry));
            file_event(
                SecurityOp::FileRead,
                &key,
                read_ptr(dentry, lay!(dentry_name)),
                mode,
            );
        }
        return;
    }
    if trunc {
        truncated(file, TRUNC_OPEN);
    }
    let dentry = read_ptr(file, lay!(file_dentry));
    let parent = read_ptr(dentry, lay!(dentry_parent));
    let dir = read_ptr(parent, lay!(dentry_inode));
    let key = dir_key(dir);
    if dir_flags(&key) & DIR_FILES != 0 {
        file_event(
            SecurityOp::FileWrite,
            &key,
            read_ptr(dentry, lay!(dentry_name)),
            mode,
        );
        return;
    }
    // Elsewhere, only a file with more than one name can be a watched file.
    let inode = read_ptr(file, lay!(file_inode));
    if read_at::<u32>(inode, lay!(inode_nlink)) > 1 {
        let key = dir_key(inode);
        // SAFETY: plain lookup.
        if unsafe { WATCHED_FILES.get(&key) }.is_some_and(|f| f & FILE_LINK != 0) {
            file_event(
                SecurityOp::LinkWrite,
                &key,
                read_ptr(dentry, lay!(dentry_name)),
                mode,
            );
        }
    }
}

// ---- truncation ----------------------------------------------------------------------

/// `SecurityEvent.detail` of a Truncate: how.
const TRUNC_OPEN: u64 = 0;
const TRUNC_FTRUNCATE: u64 = 1;
const TRUNC_PATH: u64 = 2;

/// An open with O_TRUNC, or ftruncate to 0, of `file`: reported when its directory is
/// watched for truncation (`DIR_TRUNC`: `port` 1, the directory's key and the file's
/// name) or the file itself is (`FILE_TRUNC`: `port` 2, the file's key).
#[inline(never)]
fn truncated(file: *const u8, how: u64) {
    let dentry = read_ptr(file, lay!(file_dentry));
    let parent = read_ptr(dentry, lay!(dentry_parent));
    let dkey = dir_key(read_ptr(parent, lay!(dentry_inode)));
    let (key, by) = if dir_flags(&dkey) & DIR_TRUNC != 0 {
        (dkey, 1)
    } else {
        let fkey = dir_key(read_ptr(file, lay!(file_inode)));
        // SAFETY: plain lookup.
        if !unsafe { WATCHED_FILES.get(&fkey) }.is_some_and(|f| f & FILE_TRUNC != 0) {
            return;
        }
        (fkey, 2)
    };
    let name = read_ptr(dentry, lay!(dentry_name));
    emit(SecurityOp::Truncate, |ev| unsafe {
        (*ev).target = key.ino;
        (*ev).dev = key.dev;
        (*ev).detail = how;
        (*ev).port = by;
        if !name.is_null() {
            let _ = bpf_probe_read_kernel_str_bytes(name, &mut (*ev).name);
        }
    });
}

/// ftruncate(fd, 0).
#[inline(never)]
fn truncated_fd(fd: i32) {
    if !(0..1 << 20).contains(&fd) {
        return;
    }
    let file = fd_file(fd as u32);
    if !file.is_null() {
        truncated(file, TRUNC_FTRUNCATE);
    }
}

/// truncate(path, 0): rare, so reported with the path as given (userspace resolves it
/// and the rules decide).
#[inline(never)]
fn truncated_path(path: *const u8) {
    emit(SecurityOp::Truncate, |ev| unsafe {
        (*ev).target = AT_FDCWD as i64 as u64;
        (*ev).detail = TRUNC_PATH;
        let _ = aya_ebpf::helpers::bpf_probe_read_user_str_bytes(path, &mut (*ev).name);
    });
}

const PROC_SUPER_MAGIC: u64 = 0x9fa0;

/// A procfs `mem` file (another process's memory) opened: reported with the name of
/// its directory (the pid or thread id). Other files pay one read of their
/// superblock's magic; other procfs files one read of their name.
#[inline(never)]
fn proc_mem_opened(file: *const u8, mode: u32) {
    let inode = read_ptr(file, lay!(file_inode));
    let sb = read_ptr(inode, lay!(inode_sb));
    if read_at::<u64>(sb, lay!(sb_magic)) != PROC_SUPER_MAGIC {
        return;
    }
    let dentry = read_ptr(file, lay!(file_dentry));
    let name = read_ptr(dentry, lay!(dentry_name));
    // Longer than the name wanted, so a longer name ("meminfo") is not cut to it.
    let mut got = [0u8; 8];
    // SAFETY: kernel memory through the helper, which checks it.
    if name.is_null() || unsafe { bpf_probe_read_kernel_str_bytes(name, &mut got) }.is_err() {
        return;
    }
    if got[0] != b'm' || got[1] != b'e' || got[2] != b'm' || got[3] != 0 {
        return;
    }
    let parent = read_ptr(dentry, lay!(dentry_parent));
    let pname = read_ptr(parent, lay!(dentry_name));
    emit(SecurityOp::MemoryAccess, |ev| unsafe {
        (*ev).dev = 1;
        (*ev).detail = mode as u64;
        if !pname.is_null() {
            let _ = bpf_probe_read_kernel_str_bytes(pname, &mut (*ev).name);
        }
    });
}

/// Where a rename's new path is compared (per CPU: too big for the BPF stack).
#[map]
static RENAME_SCRATCH: PerCpuArray<[u8; NAME_LEN]> = PerCpuArray::with_max_entries(1, 0);

/// Absolute path prefixes (the watched directories, with a trailing slash) that a
/// rename's new path is compared with. An entry with len 0 ends the list.
#[map]
static WATCHED_PREFIXES: Array<PathPrefix> = Array::with_max_entries(MAX_PREFIXES, 0);

#[inline(always)]
fn prefix_matches(path: &[u8; NAME_LEN], p: &PathPrefix) -> bool {
    let n = p.len as usize;
    let mut i = 0;
    while i < NAME_LEN {
        if i >= n {
            return true;
        }
        if path[i] != p.bytes[i] {
            return false;
        }
        i += 1;
    }
    true
}

/// A rename (any of rename, renameat, renameat2): an absolute new path is compared with
/// the watched prefixes; a relative one is reported when its base directory (the
/// working directory, or `dirfd`'s) is a watched directory or one above it, and userspace
/// resolves it. A relative name without a slash, based in a directory that is only above
/// watched ones, cannot land in one and ends here.
#[inline(never)]
fn rename_to(dirfd: i32, newname: *const u8) {
    let Some(buf) = RENAME_SCRATCH.get_ptr_mut(0) else {
        return;
    };
    // SAFETY: this CPU's scratch slot; the helper checks the user pointer.
    let buf = unsafe { &mut *buf };
    if unsafe { aya_ebpf::helpers::bpf_probe_read_user_str_bytes(newname, buf) }.is_err() {
        return;
    }
    if buf[0] != b'/' {
        relative_rename(dirfd, buf);
        return;
    }
    let mut i = 0;
    while i < MAX_PREFIXES {
        let Some(p) = WATCHED_PREFIXES.get(i) else {
            return;
        };
        if p.len == 0 {
            return;
        }
        if prefix_matches(buf, p) {
            let path = *buf;
            emit(SecurityOp::Rename, |ev| unsafe {
                (*ev).name = path;
            });
            return;
        }
        i += 1;
    }
}

#[inline(always)]
fn relative_rename(dirfd: i32, name: &[u8; NAME_LEN]) {
    let base = if dirfd == AT_FDCWD {
        // SAFETY: helper without arguments; the current task.
        let task = unsafe { aya_ebpf::helpers::generated::bpf_get_current_task() } as *const u8;
        read_ptr(read_ptr(task, lay!(fs)), lay!(fs_pwd_dentry))
    } else if (0..1 << 20).contains(&dirfd) {
        // A bad dirfd (the rename then fails) reads a null or foreign file: no match.
        read_ptr(fd_file(dirfd as u32), lay!(file_dentry))
    } else {
        return;
    };
    let key = dir_key(read_ptr(base, lay!(dentry_inode)));
    let flags = dir_flags(&key);
    if flags & DIR_BASE == 0 {
        return;
    }
    if flags & DIR_FILES == 0 && !has_slash(name) {
        return;
    }
    let path = *name;
    emit(SecurityOp::Rename, |ev| unsafe {
        (*ev).target = key.ino;
        (*ev).dev = key.dev;
        (*ev).name = path;
    });
}

#[inline(always)]
fn has_slash(name: &[u8; NAME_LEN]) -> bool {
    let mut i = 0;
    while i < NAME_LEN {
        match name[i] {
            0 => return false,
            b'/' => return true,
            _ => {}
        }
        i += 1;
    }
    false
}

// ---- network -----------------------------------------------------------------------

#[inline(always)]
fn v4_addr(v4: [u8; 4]) -> [u8; 16] {
    let mut a = [0u8; 16];
    a[0] = v4[0];
    a[1] = v4[1];
    a[2] = v4[2];
    a[3] = v4[3];
    a
}

/// The head of a sockaddr_in / sockaddr_in6 (8 bytes: both are at least that long).
#[repr(C)]
#[derive(Clone, Copy)]
struct SockAddr {
    family: u16,
    port_be: u16,
    /// IPv4: the address. IPv6: the flow info (the address follows at 8).
    v4: [u8; 4],
}

/// connect(fd, uservaddr, addrlen): reported for watched ports, programs and processes.
#[inline(never)]
fn connect(uaddr: *const SockAddr) {
    // SAFETY: user memory read through the helper, which checks it.
    let Ok(sa) = (unsafe { bpf_probe_read_user(uaddr) }) else {
        return;
    };
    if sa.family != AF_INET && sa.family != AF_INET6 {
        return;
    }
    let port = u16::from_be(sa.port_be);
    let pid = (bpf_get_current_pid_tgid() >> 32) as u32;
    if let Some(distinct) = scanning(pid, port) {
        emit(SecurityOp::PortScan, |ev| unsafe {
            (*ev).family = sa.family;
            (*ev).port = port;
            (*ev).detail = u64::from(distinct);
            (*ev).target = PORT_SCAN_WINDOW_NS;
            (*ev).addr = if sa.family == AF_INET {
                v4_addr(sa.v4)
            } else {
                [0; 16]
            };
        });
    }
    // SAFETY: plain lookups.
    let wanted = unsafe {
        WATCHED_PORTS.get(&port).is_some()
            || WATCHED_PIDS.get(&pid).is_some()
            || WATCHED_COMMS
                .get(&bpf_get_current_comm().unwrap_or([0; 16]))
                .is_some()
    };
    if !wanted {
        return;
    }
    let v6: [u8; 16] = if sa.family == AF_INET6 {
        // SAFETY: as above; sockaddr_in6 has the address at byte 8.
        unsafe { bpf_probe_read_user(uaddr.cast::<u8>().wrapping_add(8).cast::<[u8; 16]>()) }
            .unwrap_or([0; 16])
    } else {
        [0; 16]
    };
    emit(SecurityOp::Connect, |ev| unsafe {
        (*ev).family = sa.family;
        (*ev).port = port;
        (*ev).addr = if sa.family == AF_INET {
            v4_addr(sa.v4)
        } else {
            v6
        };
    });
}

/// Counts `port` among the distinct ports `pid` connected to in its window; the number
/// when it has just reached `PORT_SCAN_DISTINCT` (once per window), else `None`.
#[inline(never)]
fn scanning(pid: u32, port: u16) -> Option<u32> {
    // SAFETY: a helper with no preconditions.
    let now = unsafe { bpf_ktime_get_ns() };
    // SAFETY: map value pointers, used before any other map call on this CPU.
    let entry = unsafe {
        match PORT_SCANS.get_ptr_mut(&pid) {
            Some(e) => e,
            None => {
                let zero = PORT_SCAN_ZERO.get_ptr(0)?;
                PORT_SCANS.insert(&pid, &*zero, 0).ok()?;
                let e = PORT_SCANS.get_ptr_mut(&pid)?;
                (*e).window_start_ns = now;
                e
            }
        }
    };
    // SAFETY: `entry` points at a live map value; races between CPUs only blur counts.
    unsafe {
        if now.wrapping_sub((*entry).window_start_ns) > PORT_SCAN_WINDOW_NS {
            (*entry).window_start_ns = now;
            (*entry).distinct = 0;
            (*entry).reported = 0;
            // Word by word: a whole-array store would be a 128-byte stack temporary.
            for i in 0..(PORT_SCAN_BITS / 64) as usize {
                if let Some(w) = (*entry).bits.get_mut(i) {
                    *w = 0;
                }
            }
        }
        // Fibonacci hashing spreads consecutive ports over the bitmap.
        let h = (u32::from(port).wrapping_mul(2_654_435_769)
            >> (32 - PORT_SCAN_BITS.trailing_zeros())) as usize;
        let word = (h / 64) & ((PORT_SCAN_BITS / 64) as usize - 1);
        let bit = 1u64 << (h % 64);
        let w = (*entry).bits.get_mut(word)?;
        if *w & bit != 0 {
            return None;
        }
        *w |= bit;
        (*entry).distinct += 1;
        if (*entry).distinct >= PORT_SCAN_DISTINCT && (*entry).reported == 0 {
            (*entry).reported = 1;
            return Some((*entry).distinct);
        }
    }
    None
}

/// sock:inet_sock_set_state; offsets checked against tracefs by userspace at load.
#[tracepoint(category = "sock", name = "inet_sock_set_state")]
pub fn inet_sock_set_state(ctx: TracePointContext) -> u32 {
    if !on() {
        return 0;
    }
    // SAFETY: offsets inside the record, verified by userspace before attaching.
    let newstate: i32 = unsafe { ctx.read_at(20) }.unwrap_or(0);
    if newstate != TCP_LISTEN {
        return 0;
    }
    let sport: u16 = unsafe { ctx.read_at(24) }.unwrap_or(0);
    let family: u16 = unsafe { ctx.read_at(28) }.unwrap_or(0);
    let v4: [u8; 4] = unsafe { ctx.read_at(32) }.unwrap_or([0; 4]);
    let v6: [u8; 16] = unsafe { ctx.read_at(40) }.unwrap_or([0; 16]);
    emit(SecurityOp::Listen, |ev| unsafe {
        (*ev).family = family;
        (*ev).port = sport;
        (*ev).addr = if family == AF_INET { v4_addr(v4) } else { v6 };
    });
    0
}
