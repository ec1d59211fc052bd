//! Process lifecycle from the scheduler's BTF tracepoints: exec, fork (new processes,
//! not threads) and exit (of the whole thread group), one ring-buffer event each.
//!
//! Rust eBPF has no CO-RE, so the few task_struct / linux_binprm fields needed are read
//! at offsets userspace looks up in the kernel's BTF (`TASK_LAYOUT`).
use aya_ebpf::{
    helpers::{
        bpf_get_current_cgroup_id, bpf_get_current_comm, bpf_get_current_uid_gid, bpf_ktime_get_ns,
        bpf_probe_read_kernel, bpf_probe_read_kernel_str_bytes,
    },
    macros::btf_tracepoint,
    programs::BtfTracePointContext,
};
use vigil_common::{
    Counter, EventKind, FdKind, ProcessEvent, ProcessOp, TaskLayout, ARGS_LEN, EXE_MEMFD,
    EXE_NAME_LEN, EXE_UNLINKED, FILENAME_LEN,
};

use crate::maps::{count, setting, submit_flags, EVENTS};

#[no_mangle]
pub static TASK_LAYOUT: TaskLayout = TaskLayout::UNSET;

/// A bad configuration, reported through aya-log: userspace attaches these programs
/// only with the task_struct offsets it read from BTF, so this branch is never taken
/// unless something upstream is wrong. The event is dropped rather than sent with
/// every field zero.
#[inline(always)]
fn layout_missing(ctx: &BtfTracePointContext, layout: &TaskLayout) -> bool {
    if layout.tgid == TaskLayout::ABSENT {
        aya_log_ebpf::error!(
            ctx,
            "process probe attached without task_struct offsets (TASK_LAYOUT unset): event dropped"
        );
        return true;
    }
    false
}

#[inline(always)]
pub fn read_at<T: Default>(base: *const u8, offset: u32) -> T {
    if base.is_null() || offset == TaskLayout::ABSENT {
        return T::default();
    }
    // SAFETY: a kernel pointer handed to the tracepoint and an offset from the
    // kernel's BTF; bpf_probe_read_kernel checks the access.
    unsafe { bpf_probe_read_kernel(base.wrapping_add(offset as usize).cast::<T>()) }
        .unwrap_or_default()
}

#[inline(always)]
pub fn read_ptr(base: *const u8, offset: u32) -> *const u8 {
    read_at::<u64>(base, offset) as *const u8
}

/// What fd `n` of `task` is: its kind and inode number.
#[inline(always)]
fn fd_info(layout: &TaskLayout, task: *const u8, n: usize) -> (u8, u64) {
    let files = read_ptr(task, layout.files);
    let fdt = read_ptr(files, layout.files_fdt);
    let fds = read_ptr(fdt, layout.fdt_fd);
    if fds.is_null() {
        return (FdKind::None as u8, 0);
    }
    // SAFETY: reading one pointer of the fd array; the helper checks the access.
    let file: u64 =
        unsafe { bpf_probe_read_kernel(fds.wrapping_add(n * 8).cast::<u64>()) }.unwrap_or(0);
    let inode = read_ptr(file as *const u8, layout.file_inode);
    let mode: u16 = read_at(inode, layout.inode_mode);
    let mut kind = FdKind::from_mode(mode);
    if kind == FdKind::CharDevice {
        // dev_t in the kernel's layout: major << 20 | minor.
        let major = read_at::<u32>(inode, layout.inode_rdev) >> 20;
        if (136..=143).contains(&major) {
            kind = FdKind::Pty;
        }
    }
    (kind as u8, read_at(inode, layout.inode_ino))
}

/// Whether the executed file is a memfd or has no links left; its own name.
#[inline(always)]
fn exe_flags(layout: &TaskLayout, bprm: *const u8, ev: *mut ProcessEvent) -> u8 {
    let file = read_ptr(bprm, layout.binprm_file);
    let dentry = read_ptr(file, layout.file_dentry);
    let mut flags = 0;
    let name = read_ptr(dentry, layout.dentry_name);
    if !name.is_null() {
        // SAFETY: `ev` is the reserved record.
        let _ = unsafe { bpf_probe_read_kernel_str_bytes(name, &mut (*ev).exe_name) };
    }
    let head: [u8; 6] = read_at(name, 0);
    if &head == b"memfd:" {
        flags |= EXE_MEMFD;
    }
    let inode = read_ptr(file, layout.file_inode);
    if !inode.is_null() && read_at::<u32>(inode, layout.inode_nlink) == 0 {
        flags |= EXE_UNLINKED;
    }
    flags
}

/// The new program's argument list, read from its own stack.
#[inline(always)]
fn read_args(layout: &TaskLayout, task: *const u8, ev: *mut ProcessEvent) {
    let mm = read_ptr(task, layout.mm);
    let start: u64 = read_at(mm, layout.arg_start);
    let end: u64 = read_at(mm, layout.arg_end);
    let mut len = end.saturating_sub(start);
    if len > (ARGS_LEN - 1) as u64 {
        len = (ARGS_LEN - 1) as u64;
    }
    let len = (len as u32) & (ARGS_LEN as u32 - 1);
    // SAFETY: `ev` is the reserved record; at most ARGS_LEN - 1 bytes are written
    // into its args array.
    unsafe {
        (*ev).args_len = 0;
        if start != 0 && len > 0 {
            let r = aya_ebpf::helpers::generated::bpf_probe_read_user(
                (*ev).args.as_mut_ptr().cast(),
                len,
                start as *const core::ffi::c_void,
            );
            if r == 0 {
                (*ev).args_len = len;
            }
        }
    }
}

#[inline(always)]
fn emit(op: ProcessOp, task: *const u8, filename: *const u8, bprm: *const u8) {
    let layout = setting(&TASK_LAYOUT);
    let Some(mut entry) = EVENTS.reserve::<ProcessEvent>(0) else {
        count(Counter::ProcessRingbufFull);
        return;
    };
    let ev = entry.as_mut_ptr();
    let parent = read_ptr(task, layout.real_parent);
    let uid_gid = bpf_get_current_uid_gid();
    // SAFETY: `ev` points into the reserved ring-buffer record, sized for a
    // ProcessEvent. The whole struct is written first (a field added to the ABI that is
    // not named here does not compile, so no field can carry an earlier record's
    // bytes), then the exec-only parts are filled in place.
    unsafe {
        ev.write(ProcessEvent {
            kind: EventKind::Process as u8,
            op: op as u8,
            _pad: [0; 2],
            pid: read_at(task, layout.tgid),
            ppid: read_at(parent, layout.tgid),
            uid: uid_gid as u32,
            gid: (uid_gid >> 32) as u32,
            exit_code: if op == ProcessOp::Exit {
                read_at(task, layout.exit_code)
            } else {
                0
            },
            timestamp_ns: bpf_ktime_get_ns(),
            cgroup_id: bpf_get_current_cgroup_id(),
            comm: bpf_get_current_comm().unwrap_or([0; 16]),
            filename: [0; FILENAME_LEN],
            args: [0; ARGS_LEN],
            args_len: 0,
            euid: 0,
            stdin_kind: 0,
            stdout_kind: 0,
            exe_flags: 0,
            _pad2: 0,
            _pad3: 0,
            stdin_ino: 0,
            stdout_ino: 0,
            exe_name: [0; EXE_NAME_LEN],
        });
        if !filename.is_null() {
            let _ = bpf_probe_read_kernel_str_bytes(filename, &mut (*ev).filename);
        }
        if op == ProcessOp::Exec {
            let cred = read_ptr(task, layout.cred);
            (*ev).euid = read_at(cred, layout.cred_euid);
            let (k0, i0) = fd_info(&layout, task, 0);
            let (k1, i1) = fd_info(&layout, task, 1);
            (*ev).stdin_kind = k0;
            (*ev).stdin_ino = i0;
            (*ev).stdout_kind = k1;
            (*ev).stdout_ino = i1;
            (*ev).exe_flags = exe_flags(&layout, bprm, ev);
            read_args(&layout, task, ev);
        }
    }
    entry.submit(submit_flags(op == ProcessOp::Exec));
    count(Counter::ProcessSent);
}

/// sched_process_exec(struct task_struct *p, pid_t old_pid, struct linux_binprm *bprm)
#[btf_tracepoint(function = "sched_process_exec")]
pub fn sched_process_exec(ctx: BtfTracePointContext) -> i32 {
    let task: *const u8 = ctx.arg(0);
    let bprm: *const u8 = ctx.arg(2);
    let layout = setting(&TASK_LAYOUT);
    if layout_missing(&ctx, &layout) {
        return 0;
    }
    let filename = read_ptr(bprm, layout.binprm_filename);
    emit(ProcessOp::Exec, task, filename, bprm);
    0
}

/// sched_process_fork(struct task_struct *parent, struct task_struct *child)
#[btf_tracepoint(function = "sched_process_fork")]
pub fn sched_process_fork(ctx: BtfTracePointContext) -> i32 {
    let child: *const u8 = ctx.arg(1);
    let layout = setting(&TASK_LAYOUT);
    if layout_missing(&ctx, &layout) {
        return 0;
    }
    // A new thread shares its creator's thread group: not a new process.
    if read_at::<u32>(child, layout.pid) != read_at::<u32>(child, layout.tgid) {
        return 0;
    }
    emit(ProcessOp::Fork, child, core::ptr::null(), core::ptr::null());
    0
}

/// sched_process_exit(struct task_struct *p, bool group_dead)
#[btf_tracepoint(function = "sched_process_exit")]
pub fn sched_process_exit(ctx: BtfTracePointContext) -> i32 {
    let task: *const u8 = ctx.arg(0);
    let group_dead: u64 = ctx.arg(1);
    // Only the last thread of the group: the process is gone.
    if group_dead & 0xff == 0 || layout_missing(&ctx, &setting(&TASK_LAYOUT)) {
        return 0;
    }
    emit(ProcessOp::Exit, task, core::ptr::null(), core::ptr::null());
    0
}
