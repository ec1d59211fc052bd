//! The other ways of timing a syscall, for `cargo xtask bench syscalls` only: built
//! into the benchmark's object (`src/bench.rs`, the `vigil-bench` binary), never into
//! the object the agent ships. Each pair differs from the shipped one (`syscalls.rs`)
//! in program type or in where the start time waits between sys_enter and sys_exit.
use aya_ebpf::{
    helpers::{bpf_get_current_pid_tgid, bpf_ktime_get_ns},
    macros::{btf_tracepoint, map, raw_tracepoint},
    maps::{HashMap, PerCpuArray},
    programs::{BtfTracePointContext, RawTracePointContext},
};
use vigil_common::Counter;

use super::syscalls::{
    enter_task, exit_task, record, start, wanted, SyscallStart, SYSCALL_START_TASK,
};
use crate::maps::count;

/// Start times in a tid-keyed hash (the classic approach, kept for the benchmark).
/// Full means a syscall isn't timed, and that is counted.
#[map]
static SYSCALL_START_TID: HashMap<u32, SyscallStart> = HashMap::with_max_entries(65536, 0);

#[raw_tracepoint(tracepoint = "sys_enter")]
pub fn sys_enter_task(ctx: RawTracePointContext) -> i32 {
    enter_task(ctx.arg::<i64>(1), None);
    0
}

#[raw_tracepoint(tracepoint = "sys_exit")]
pub fn sys_exit_task(_ctx: RawTracePointContext) -> i32 {
    exit_task(None);
    0
}

// ---- per-CPU in-flight slot, spilled to task storage on context switch -------------
//
// A syscall can only leave its CPU through a context switch, so the start time can
// wait in a per-CPU slot (an inlined array lookup, no helper) as long as sched_switch
// moves it into the switched-out task's storage. sys_exit takes the fast path when the
// slot is its own, and looks in task storage otherwise. Only syscalls that block or
// get preempted pay for the storage.

/// The syscall in flight on this CPU; `start_ns == 0` when none.
#[map]
static SYSCALL_IN_FLIGHT: PerCpuArray<InFlight> = PerCpuArray::with_max_entries(1, 0);

#[repr(C)]
#[derive(Clone, Copy)]
pub struct InFlight {
    start_ns: u64,
    tid: u32,
    nr: u32,
}

#[btf_tracepoint(function = "sys_enter")]
pub fn sys_enter_pcpu(ctx: BtfTracePointContext) -> i32 {
    if !wanted() {
        return 0;
    }
    if let Some(slot) = SYSCALL_IN_FLIGHT.get_ptr_mut(0) {
        // SAFETY: this CPU's slot; the program runs with migration disabled.
        let slot = unsafe { &mut *slot };
        slot.tid = bpf_get_current_pid_tgid() as u32;
        slot.nr = ctx.arg::<i64>(1) as u32;
        // SAFETY: helper without arguments.
        slot.start_ns = unsafe { bpf_ktime_get_ns() };
    }
    0
}

#[btf_tracepoint(function = "sys_exit")]
pub fn sys_exit_pcpu(_ctx: BtfTracePointContext) -> i32 {
    if let Some(slot) = SYSCALL_IN_FLIGHT.get_ptr_mut(0) {
        // SAFETY: as above.
        let slot = unsafe { &mut *slot };
        if slot.start_ns != 0 && slot.tid == bpf_get_current_pid_tgid() as u32 {
            let (nr, start_ns) = (slot.nr, slot.start_ns);
            slot.start_ns = 0;
            record(nr, start_ns);
            return 0;
        }
    }
    exit_task(None);
    0
}

/// sched_switch(bool preempt, struct task_struct *prev, struct task_struct *next, ...)
#[btf_tracepoint(function = "sched_switch")]
pub fn sched_switch_spill(ctx: BtfTracePointContext) -> i32 {
    let Some(slot) = SYSCALL_IN_FLIGHT.get_ptr_mut(0) else {
        return 0;
    };
    // SAFETY: as above.
    let slot = unsafe { &mut *slot };
    if slot.start_ns == 0 {
        return 0;
    }
    let prev: *mut aya_ebpf::bindings::task_struct = ctx.arg(1);
    match SYSCALL_START_TASK.of_task_or_create(prev) {
        Some(spilled) => {
            spilled.start_ns = slot.start_ns;
            spilled.nr = slot.nr;
            spilled.in_flight = 1;
        }
        None => count(Counter::SyscallStartStoreFailed),
    }
    slot.start_ns = 0;
    0
}

// ---- tid-keyed hash (bench comparison) --------------------------------------------

#[raw_tracepoint(tracepoint = "sys_enter")]
pub fn sys_enter_hash(ctx: RawTracePointContext) -> i32 {
    if !wanted() {
        return 0;
    }
    let mut slot = SyscallStart {
        start_ns: 0,
        nr: 0,
        security: 0,
        in_flight: 1,
        _pad: 0,
    };
    start(&mut slot, ctx.arg::<i64>(1));
    let tid = bpf_get_current_pid_tgid() as u32;
    if SYSCALL_START_TID.insert(&tid, &slot, 0).is_err() {
        count(Counter::SyscallStartStoreFailed);
    }
    0
}

#[raw_tracepoint(tracepoint = "sys_exit")]
pub fn sys_exit_hash(_ctx: RawTracePointContext) -> i32 {
    let tid = bpf_get_current_pid_tgid() as u32;
    // SAFETY: the value is copied out before the entry is removed.
    if let Some(slot) = unsafe { SYSCALL_START_TID.get(&tid) } {
        let (nr, start_ns) = (slot.nr, slot.start_ns);
        let _ = SYSCALL_START_TID.remove(&tid);
        record(nr, start_ns);
    }
    0
}

// ---- empty programs: the cost of the tracepoints themselves (bench floor) -----------

#[raw_tracepoint(tracepoint = "sys_enter")]
pub fn sys_enter_empty(_ctx: RawTracePointContext) -> i32 {
    0
}

#[raw_tracepoint(tracepoint = "sys_exit")]
pub fn sys_exit_empty(_ctx: RawTracePointContext) -> i32 {
    0
}

// ---- the clock alone (bench only): two clock reads and a per-CPU store, no storage
// and no histogram; the floor of any probe that times syscalls ----------------------

#[map]
static CLOCK_ONLY_SLOT: PerCpuArray<u64> = PerCpuArray::with_max_entries(1, 0);

#[btf_tracepoint(function = "sys_enter")]
pub fn sys_enter_clock(_ctx: BtfTracePointContext) -> i32 {
    if let Some(slot) = CLOCK_ONLY_SLOT.get_ptr_mut(0) {
        // SAFETY: this CPU's slot; helper without arguments.
        unsafe { *slot = bpf_ktime_get_ns() };
    }
    0
}

#[btf_tracepoint(function = "sys_exit")]
pub fn sys_exit_clock(_ctx: BtfTracePointContext) -> i32 {
    if let Some(slot) = CLOCK_ONLY_SLOT.get_ptr_mut(0) {
        // SAFETY: as above.
        unsafe { *slot = bpf_ktime_get_ns().wrapping_sub(*slot) };
    }
    0
}
