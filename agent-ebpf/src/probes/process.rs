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
use vigil_common::{Counter, EventKind, ProcessEvent, ProcessOp, TaskLayout};

use crate::maps::{count, setting, submit_flags, EVENTS};

#[no_mangle]
pub static TASK_LAYOUT: TaskLayout = TaskLayout::UNSET;

#[inline(always)]
fn read_at<T: Default>(base: *const u8, offset: u32) -> T {
    if base.is_null() || offset == TaskLayout::ABSENT {
        return T::default();
    }
    // SAFETY: a kernel pointer handed to the tracepoint and an offset from the
    // kernel's BTF; bpf_probe_read_kernel checks the access.
    unsafe { bpf_probe_read_kernel(base.wrapping_add(offset as usize).cast::<T>()) }
        .unwrap_or_default()
}

#[inline(always)]
fn read_ptr(base: *const u8, offset: u32) -> *const u8 {
    read_at::<u64>(base, offset) as *const u8
}

#[inline(always)]
fn emit(op: ProcessOp, task: *const u8, filename: *const u8) {
    let layout = setting(&TASK_LAYOUT);
    let Some(mut entry) = EVENTS.reserve::<ProcessEvent>(0) else {
        count(Counter::ProcessRingbufFull);
        return;
    };
    let ev = entry.as_mut_ptr();
    let parent = read_ptr(task, layout.real_parent);
    let uid_gid = bpf_get_current_uid_gid();
    // SAFETY: `ev` points into the reserved ring-buffer record, sized for a
    // ProcessEvent; every field is written before submit. The event is too large for
    // the BPF stack, so it is filled in place.
    unsafe {
        (*ev).kind = EventKind::Process as u8;
        (*ev).op = op as u8;
        (*ev)._pad = [0; 2];
        (*ev).pid = read_at(task, layout.tgid);
        (*ev).ppid = read_at(parent, layout.tgid);
        (*ev).uid = uid_gid as u32;
        (*ev).gid = (uid_gid >> 32) as u32;
        (*ev).exit_code = if op == ProcessOp::Exit {
            read_at(task, layout.exit_code)
        } else {
            0
        };
        (*ev).timestamp_ns = bpf_ktime_get_ns();
        (*ev).cgroup_id = bpf_get_current_cgroup_id();
        (*ev).comm = bpf_get_current_comm().unwrap_or([0; 16]);
        (*ev).filename[0] = 0;
        if !filename.is_null() {
            let _ = bpf_probe_read_kernel_str_bytes(filename, &mut (*ev).filename);
        }
    }
    entry.submit(submit_flags());
    count(Counter::ProcessSent);
}

/// sched_process_exec(struct task_struct *p, pid_t old_pid, struct linux_binprm *bprm)
#[btf_tracepoint(function = "sched_process_exec")]
pub fn sched_process_exec(ctx: BtfTracePointContext) -> i32 {
    let task: *const u8 = ctx.arg(0);
    let bprm: *const u8 = ctx.arg(2);
    let filename = read_ptr(bprm, setting(&TASK_LAYOUT).binprm_filename);
    emit(ProcessOp::Exec, task, filename);
    0
}

/// sched_process_fork(struct task_struct *parent, struct task_struct *child)
#[btf_tracepoint(function = "sched_process_fork")]
pub fn sched_process_fork(ctx: BtfTracePointContext) -> i32 {
    let child: *const u8 = ctx.arg(1);
    let layout = setting(&TASK_LAYOUT);
    // A new thread shares its creator's thread group: not a new process.
    if read_at::<u32>(child, layout.pid) != read_at::<u32>(child, layout.tgid) {
        return 0;
    }
    emit(ProcessOp::Fork, child, core::ptr::null());
    0
}

/// sched_process_exit(struct task_struct *p, bool group_dead)
#[btf_tracepoint(function = "sched_process_exit")]
pub fn sched_process_exit(ctx: BtfTracePointContext) -> i32 {
    let task: *const u8 = ctx.arg(0);
    let group_dead: u64 = ctx.arg(1);
    // Only the last thread of the group: the process is gone.
    if group_dead & 0xff == 0 {
        return 0;
    }
    emit(ProcessOp::Exit, task, core::ptr::null());
    0
}
