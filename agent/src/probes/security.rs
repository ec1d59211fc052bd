//! Security probes: ptrace, the setuid family, module loading, opens for writing in
//! watched directories (at the open's exit, from the new fd's file), renames to watched
//! paths and connects to watched ports or by watched programs/processes are checked in
//! the syscall probe's tp_btf sys_enter/sys_exit pair; new TCP listeners come from
//! sock:inet_sock_set_state. No classic syscall tracepoints (enabling any costs every
//! syscall ~50 ns), no fentry/BPF LSM (they need ftrace trampolines, which not every
//! kernel allows).
use std::path::Path;

use aya::{
    maps::{Array as BpfArray, HashMap as BpfHashMap},
    programs::TracePoint,
    Ebpf,
};
use vigil_common::{DirKey, PathPrefix, SecuritySyscalls, MAX_PREFIXES, NAME_LEN};

use super::{load_and_attach, tracefs::TracepointFormat, ProbeError};

/// The syscalls the security checks watch, by number from the one syscall table of
/// this architecture (`crate::syscall_table`, which names them for every view too, so
/// the kernel's checks and the names can never disagree), and where the first
/// arguments sit in `struct pt_regs`. Only x86_64 has a table (and a pt_regs layout)
/// today: on other architectures the checks are off, and `vigil agent` says so.
#[cfg(target_arch = "x86_64")]
pub fn syscalls() -> SecuritySyscalls {
    let nr = |name: &str| crate::syscall_table::syscall_number(name).unwrap_or(u32::MAX);
    SecuritySyscalls {
        enabled: 1,
        init_module: nr("init_module"),
        finit_module: nr("finit_module"),
        setuid: nr("setuid"),
        setgid: nr("setgid"),
        setreuid: nr("setreuid"),
        setregid: nr("setregid"),
        setresuid: nr("setresuid"),
        setresgid: nr("setresgid"),
        ptrace: nr("ptrace"),
        connect: nr("connect"),
        rename: nr("rename"),
        renameat: nr("renameat"),
        renameat2: nr("renameat2"),
        open: nr("open"),
        openat: nr("openat"),
        openat2: nr("openat2"),
        creat: nr("creat"),
        chmod: nr("chmod"),
        fchmod: nr("fchmod"),
        fchmodat: nr("fchmodat"),
        fchmodat2: nr("fchmodat2"),
        setxattr: nr("setxattr"),
        lsetxattr: nr("lsetxattr"),
        fsetxattr: nr("fsetxattr"),
        setxattrat: nr("setxattrat"),
        process_vm_readv: nr("process_vm_readv"),
        process_vm_writev: nr("process_vm_writev"),
        mount: nr("mount"),
        move_mount: nr("move_mount"),
        truncate: nr("truncate"),
        ftruncate: nr("ftruncate"),
        execve: nr("execve"),
        execveat: nr("execveat"),
        socket: nr("socket"),
        // pt_regs: r15 r14 r13 r12 bp bx r11 r10 r9 r8 ax cx dx si di: the syscall
        // arguments are di, si, dx, r10.
        regs_args: [112, 104, 96, 56],
        // orig_ax follows di (then ip, cs, flags, sp, ss).
        regs_nr: SecuritySyscalls::REGS_NR_X86_64,
        watched: [0; 8],
    }
    .with_watched()
}

#[cfg(not(target_arch = "x86_64"))]
pub fn syscalls() -> SecuritySyscalls {
    tracing::warn!(
        "security syscall checks are x86_64-only for now (no syscall table for this architecture): off"
    );
    SecuritySyscalls::OFF
}

/// The map names (agent-ebpf/src/probes/security.rs).
pub const WATCHED_DIRS: &str = "WATCHED_DIRS";
pub const WATCHED_FILES: &str = "WATCHED_FILES";
pub const WATCHED_PORTS: &str = "WATCHED_PORTS";
pub const WATCHED_PIDS: &str = "WATCHED_PIDS";
pub const WATCHED_PREFIXES: &str = "WATCHED_PREFIXES";
pub const WATCHED_COMMS: &str = "WATCHED_COMMS";

/// Replaces the rename prefixes (absolute directory paths; a slash is appended).
/// Returns how many did not fit (too many, or too long).
pub fn set_prefixes(ebpf: &mut Ebpf, dirs: &[String]) -> Result<usize, ProbeError> {
    let m = ebpf
        .map_mut(WATCHED_PREFIXES)
        .ok_or(ProbeError::MissingMap(WATCHED_PREFIXES))?;
    let mut a: BpfArray<_, PathPrefix> =
        BpfArray::try_from(m).map_err(|source| ProbeError::Map {
            map: WATCHED_PREFIXES,
            source,
        })?;
    let mut i = 0u32;
    let mut skipped = 0;
    for d in dirs {
        let p = format!("{}/", d.trim_end_matches('/'));
        if p.len() >= NAME_LEN || i >= MAX_PREFIXES - 1 {
            skipped += 1;
            continue;
        }
        let mut bytes = [0u8; NAME_LEN];
        bytes[..p.len()].copy_from_slice(p.as_bytes());
        a.set(
            i,
            PathPrefix {
                len: p.len() as u32,
                bytes,
            },
            0,
        )
        .map_err(|source| ProbeError::Map {
            map: WATCHED_PREFIXES,
            source,
        })?;
        i += 1;
    }
    // The end marker, and clear what a longer list left behind.
    for j in i..MAX_PREFIXES {
        a.set(
            j,
            PathPrefix {
                len: 0,
                bytes: [0; NAME_LEN],
            },
            0,
        )
        .map_err(|source| ProbeError::Map {
            map: WATCHED_PREFIXES,
            source,
        })?;
    }
    Ok(skipped)
}

/// Attaches the listen program (the syscall checks ride the syscall probe's
/// sys_enter/sys_exit pair, see `super::syscalls`).
pub fn attach(ebpf: &mut Ebpf, tracefs: Option<&Path>) -> Result<(), ProbeError> {
    listen_layout_ok(tracefs)?;
    load_and_attach(ebpf, "inet_sock_set_state", |p: &mut TracePoint| {
        p.load()?;
        p.attach("sock", "inet_sock_set_state").map(drop)
    })
}

/// The listen program reads sock:inet_sock_set_state at fixed offsets (stable since
/// Linux 4.16); this checks them against this kernel's format.
fn listen_layout_ok(tracefs: Option<&Path>) -> Result<(), ProbeError> {
    let tp = "sock:inet_sock_set_state";
    let root = tracefs.ok_or_else(|| ProbeError::Layout {
        tracepoint: tp.into(),
        reason: "tracefs is not mounted".into(),
    })?;
    let format = TracepointFormat::read(root, "sock", "inet_sock_set_state").map_err(|source| {
        ProbeError::Format {
            tracepoint: tp.into(),
            source,
        }
    })?;
    for (field, off, size) in [
        ("newstate", 20, 4),
        ("sport", 24, 2),
        ("family", 28, 2),
        ("saddr", 32, 4),
        ("saddr_v6", 40, 16),
    ] {
        if format.field(field) != Some((off, size)) {
            return Err(ProbeError::Layout {
                tracepoint: tp.into(),
                reason: format!(
                    "field `{field}` is at {:?}, the program expects offset {off} size {size}",
                    format.field(field)
                ),
            });
        }
    }
    Ok(())
}

fn map<'a, K: aya::Pod, V: aya::Pod>(
    ebpf: &'a mut Ebpf,
    name: &'static str,
) -> Result<BpfHashMap<&'a mut aya::maps::MapData, K, V>, ProbeError> {
    let m = ebpf.map_mut(name).ok_or(ProbeError::MissingMap(name))?;
    BpfHashMap::try_from(m).map_err(|source| ProbeError::Map { map: name, source })
}

/// Makes hash map `name` exactly `entries`.
fn replace_entries<K: aya::Pod + PartialEq>(
    ebpf: &mut Ebpf,
    name: &'static str,
    entries: &[(K, u8)],
) -> Result<(), ProbeError> {
    let mut m = map::<K, u8>(ebpf, name)?;
    let old: Vec<K> = m.keys().filter_map(Result::ok).collect();
    for k in old.iter().filter(|k| !entries.iter().any(|(e, _)| e == *k)) {
        let _ = m.remove(k);
    }
    for (k, v) in entries {
        m.insert(k, v, 0)
            .map_err(|source| ProbeError::Map { map: name, source })?;
    }
    Ok(())
}

/// Makes the keys of hash map `name` exactly `keys` (value 1).
fn replace_keys<K: aya::Pod + PartialEq>(
    ebpf: &mut Ebpf,
    name: &'static str,
    keys: &[K],
) -> Result<(), ProbeError> {
    let entries: Vec<(K, u8)> = keys.iter().map(|k| (*k, 1)).collect();
    replace_entries(ebpf, name, &entries)
}

/// Replaces the watched directories (with their `DIR_FILES` / `DIR_BASE` flags).
pub fn set_dirs(ebpf: &mut Ebpf, dirs: &[(DirKey, u8)]) -> Result<(), ProbeError> {
    replace_entries(ebpf, WATCHED_DIRS, dirs)
}

/// Replaces the watched files (with their `FILE_LINK` / `FILE_READ` bits).
pub fn set_files(ebpf: &mut Ebpf, files: &[(DirKey, u8)]) -> Result<(), ProbeError> {
    replace_entries(ebpf, WATCHED_FILES, files)
}

/// Replaces the watched ports.
pub fn set_ports(ebpf: &mut Ebpf, ports: &[u16]) -> Result<(), ProbeError> {
    replace_keys(ebpf, WATCHED_PORTS, ports)
}

/// Replaces the watched program names.
pub fn set_comms(ebpf: &mut Ebpf, comms: &[[u8; 16]]) -> Result<(), ProbeError> {
    replace_keys(ebpf, WATCHED_COMMS, comms)
}

/// Adds and removes watched processes; returns how many could not be added (full).
pub fn update_pids(ebpf: &mut Ebpf, add: &[u32], remove: &[u32]) -> Result<u64, ProbeError> {
    let mut m = map::<u32, u8>(ebpf, WATCHED_PIDS)?;
    for p in remove {
        let _ = m.remove(p);
    }
    let mut failed = 0;
    for p in add {
        if m.insert(p, 1, 0).is_err() {
            failed += 1;
        }
    }
    Ok(failed)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The numbers the kernel checks use are the name table's: each maps back to its
    /// name, and none is missing (x86_64 has every one of them).
    #[cfg(target_arch = "x86_64")]
    #[test]
    fn security_syscall_numbers_come_from_the_name_table() {
        let s = syscalls();
        for (name, nr) in [
            ("init_module", s.init_module),
            ("finit_module", s.finit_module),
            ("setuid", s.setuid),
            ("setgid", s.setgid),
            ("setreuid", s.setreuid),
            ("setregid", s.setregid),
            ("setresuid", s.setresuid),
            ("setresgid", s.setresgid),
            ("ptrace", s.ptrace),
            ("connect", s.connect),
            ("rename", s.rename),
            ("renameat", s.renameat),
            ("renameat2", s.renameat2),
            ("open", s.open),
            ("openat", s.openat),
            ("openat2", s.openat2),
            ("creat", s.creat),
            ("chmod", s.chmod),
            ("fchmod", s.fchmod),
            ("fchmodat", s.fchmodat),
            ("fchmodat2", s.fchmodat2),
            ("setxattr", s.setxattr),
            ("lsetxattr", s.lsetxattr),
            ("fsetxattr", s.fsetxattr),
            ("setxattrat", s.setxattrat),
            ("process_vm_readv", s.process_vm_readv),
            ("process_vm_writev", s.process_vm_writev),
            ("mount", s.mount),
            ("move_mount", s.move_mount),
            ("truncate", s.truncate),
            ("ftruncate", s.ftruncate),
            ("execve", s.execve),
            ("execveat", s.execveat),
            ("socket", s.socket),
        ] {
            assert_eq!(crate::syscall_table::syscall_name(nr), Some(name), "{name}");
            // The probe's bitmap lets it through, and only the numbers compared.
            assert!(
                s.watched[(nr / 64) as usize] & (1 << (nr % 64)) != 0,
                "{name}"
            );
        }
        let set: u32 = s.watched.iter().map(|w| w.count_ones()).sum();
        assert_eq!(set as usize, s.numbers().len(), "one bit per number");
        let getppid = crate::syscall_table::syscall_number("getppid").unwrap();
        assert_eq!(
            s.watched[(getppid / 64) as usize] & (1 << (getppid % 64)),
            0
        );
        // The kernel's own numbers (unistd_64.h) for a few.
        assert_eq!(
            (s.setuid, s.ptrace, s.connect, s.openat),
            (105, 101, 42, 257)
        );
    }
}
