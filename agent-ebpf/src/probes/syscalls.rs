//! Syscall latency: per-syscall log2 histograms (per-CPU) and slow-syscall events.
//!
//! This is the shipped pair (tp_btf, start time in task-local storage). The other ways
//! of timing a syscall, which `cargo xtask bench syscalls` measures against it, live in
//! `syscall_variants.rs` and only in the benchmark's object (`vigil-bench`), never in
//! the one the agent ships.
use aya_ebpf::{
    helpers::generated::bpf_get_current_cgroup_id,
    helpers::{bpf_get_current_comm, bpf_get_current_pid_tgid, bpf_ktime_get_ns},
    macros::{btf_tracepoint, map},
    maps::PerCpuArray,
    programs::BtfTracePointContext,
};
use vigil_common::{
    latency_bucket, Counter, EventKind, RateLimit, SlowSyscall, SyscallStats, MAX_SYSCALLS,
    SEEN_WORDS,
};

use crate::{
    maps::{
        count, latency_shed, setting, submit_flags, EVENTS, FILTER_TGID, SLOW_EVENTS_PER_SEC,
        SLOW_THRESHOLD_NS, SYSCALL_LATENCY_ON,
    },
    task_storage::TaskStorage,
};

/// What sys_enter leaves for sys_exit.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct SyscallStart {
    /// When the syscall entered; 0 when it is not timed (latency off or shed, or
    /// another process than `vigil trace syscalls --pid` asked for).
    pub(crate) start_ns: u64,
    pub(crate) nr: u32,
    /// What the security checks noted at enter for their check at exit
    /// (`security::ENTER_*`).
    pub(crate) security: u32,
    /// 1 from sys_enter to sys_exit of a syscall that wrote this slot.
    pub(crate) in_flight: u32,
    pub(crate) _pad: u32,
}

/// Histogram and totals per syscall number (per CPU: no atomics on the hot path).
#[map]
static SYSCALL_LATENCY: PerCpuArray<SyscallStats> = PerCpuArray::with_max_entries(MAX_SYSCALLS, 0);

/// Which syscall numbers have data, per CPU (see `vigil_common::SEEN_WORDS`).
#[map]
static SYSCALL_SEEN: PerCpuArray<[u64; SEEN_WORDS]> = PerCpuArray::with_max_entries(1, 0);

/// Slow-syscall rate limit state, one window per CPU.
#[map]
static SLOW_RATE: PerCpuArray<RateLimit> = PerCpuArray::with_max_entries(1, 0);

/// Start times in task-local storage (the shipped variant).
#[unsafe(link_section = ".maps")]
#[unsafe(export_name = "SYSCALL_START_TASK")]
pub(crate) static SYSCALL_START_TASK: TaskStorage<SyscallStart> = TaskStorage::new();

const NSEC_PER_SEC: u64 = 1_000_000_000;

/// Whether syscalls are timed now: the latency histograms are on and not shed.
#[inline(always)]
fn timing_on() -> bool {
    setting(&SYSCALL_LATENCY_ON) != 0 && !latency_shed()
}

#[inline(always)]
pub(crate) fn wanted() -> bool {
    let filter = setting(&FILTER_TGID);
    filter == 0 || (bpf_get_current_pid_tgid() >> 32) as u32 == filter
}

/// Book one finished syscall into the histogram and, when slow, the event stream.
#[inline(always)]
pub(crate) fn record(nr: u32, start_ns: u64) {
    // SAFETY: helper without arguments.
    let now = unsafe { bpf_ktime_get_ns() };
    let latency = now.saturating_sub(start_ns);
    match SYSCALL_LATENCY.get_ptr_mut(nr) {
        Some(stats) => {
            // SAFETY: per-CPU slot of this CPU; syscall tracepoints run with
            // preemption disabled, so nothing else on this CPU writes it concurrently.
            let stats = unsafe { &mut *stats };
            if stats.count == 0 {
                mark_seen(nr);
            }
            stats.count += 1;
            stats.total_ns += latency;
            if latency > stats.max_ns {
                stats.max_ns = latency;
            }
            if let Some(b) = stats.buckets.get_mut(latency_bucket(latency)) {
                *b += 1;
            }
        }
        None => count(Counter::SyscallOutOfRange),
    }
    if latency >= setting(&SLOW_THRESHOLD_NS) {
        send_slow(nr, latency, now);
    }
}

/// Sets syscall `nr`'s bit in this CPU's bitmap (first use of `nr` on this CPU only).
#[inline(never)]
fn mark_seen(nr: u32) {
    if let Some(words) = SYSCALL_SEEN.get_ptr_mut(0) {
        // SAFETY: this CPU's slot, see `record`.
        let words = unsafe { &mut *words };
        // Masked, not just bounds-checked: the verifier follows a mask in the same
        // register, but not a compare on a copy. nr < MAX_SYSCALLS here, so the mask
        // changes nothing.
        let word = ((nr >> 6) as usize) & (SEEN_WORDS - 1);
        if let Some(w) = words.get_mut(word) {
            *w |= 1u64 << (nr & 63);
        }
    }
}

#[inline(never)]
fn send_slow(nr: u32, latency_ns: u64, now: u64) {
    let Some(rate) = SLOW_RATE.get_ptr_mut(0) else {
        return;
    };
    // SAFETY: per-CPU slot, see `record`.
    let rate = unsafe { &mut *rate };
    if now.saturating_sub(rate.window_start_ns) >= NSEC_PER_SEC {
        rate.window_start_ns = now;
        rate.sent_in_window = 0;
    }
    if rate.sent_in_window >= setting(&SLOW_EVENTS_PER_SEC) {
        count(Counter::SlowSyscallRateLimited);
        return;
    }
    rate.sent_in_window += 1;
    let Some(mut entry) = EVENTS.reserve::<SlowSyscall>(0) else {
        count(Counter::SlowSyscallRingbufFull);
        return;
    };
    let pid_tgid = bpf_get_current_pid_tgid();
    entry.write(SlowSyscall {
        kind: EventKind::SlowSyscall as u8,
        _pad: [0; 3],
        pid: (pid_tgid >> 32) as u32,
        tid: pid_tgid as u32,
        syscall_nr: nr,
        end_ns: now,
        latency_ns,
        // SAFETY: helper without arguments.
        cgroup_id: unsafe { bpf_get_current_cgroup_id() },
        comm: bpf_get_current_comm().unwrap_or([0; 16]),
    });
    entry.submit(submit_flags(false));
    count(Counter::SlowSyscallSent);
}

#[inline(always)]
pub(crate) fn start(slot: &mut SyscallStart, nr: i64) {
    // SAFETY: helper without arguments.
    slot.start_ns = unsafe { bpf_ktime_get_ns() };
    slot.nr = nr as u32;
}

// ---- task-local storage (shipped) -------------------------------------------------

/// sys_enter's bookkeeping. The slot is written when the syscall is timed or when
/// the security checks need its exit (`noted` is `Some` for a syscall they watch).
/// Any other syscall (every one while the latency histograms are off or shed, but
/// for the ~30 detection watches) leaves at once: no clock read and no task storage,
/// so turning the histograms off or shedding them saves what they cost.
#[inline(always)]
pub(crate) fn enter_task(nr: i64, noted: Option<u32>) {
    let timed = timing_on() && wanted();
    if !timed && noted.is_none() {
        return;
    }
    match SYSCALL_START_TASK.current_or_create() {
        Some(slot) => {
            if timed {
                start(slot, nr);
            } else {
                slot.start_ns = 0;
                slot.nr = nr as u32;
            }
            slot.security = noted.unwrap_or(0);
            slot.in_flight = 1;
        }
        None => count(Counter::SyscallStartStoreFailed),
    }
}

/// `ret`: the syscall's return value, for the security checks at exit (shipped
/// variant only). The slot is looked up (not created) on every exit, so a syscall
/// that left no slot costs one lookup and none is left in flight.
#[inline(always)]
pub(crate) fn exit_task(ret: Option<i64>) {
    if let Some(slot) = SYSCALL_START_TASK.current() {
        if slot.in_flight != 0 {
            let (nr, start_ns, noted) = (slot.nr, slot.start_ns, slot.security);
            slot.in_flight = 0;
            slot.start_ns = 0;
            if let Some(ret) = ret {
                super::security::on_sys_exit(nr, ret, noted);
            }
            if start_ns != 0 && timing_on() {
                record(nr, start_ns);
            }
        }
    }
}

/// sys_enter(struct pt_regs *regs, long id)
#[btf_tracepoint(function = "sys_enter")]
pub fn sys_enter_btf(ctx: BtfTracePointContext) -> i32 {
    let nr = ctx.arg::<i64>(1);
    let noted = super::security::on_sys_enter(nr, ctx.arg::<*const u8>(0));
    enter_task(nr, noted);
    0
}

/// sys_exit(struct pt_regs *regs, long ret)
#[btf_tracepoint(function = "sys_exit")]
pub fn sys_exit_btf(ctx: BtfTracePointContext) -> i32 {
    // With the histograms off (for the agent's life, so no slot can be left behind by
    // a change), only a syscall the security checks watch left a slot: any other
    // leaves without a task-storage lookup.
    if setting(&SYSCALL_LATENCY_ON) == 0 {
        if let Some(nr) = super::security::exit_nr(ctx.arg::<*const u8>(0)) {
            if !super::security::watched(nr) {
                return 0;
            }
        }
    }
    exit_task(Some(ctx.arg::<i64>(1)));
    0
}
