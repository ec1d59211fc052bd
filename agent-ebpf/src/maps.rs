//! Maps and load-time settings shared by the probes. Userspace finds them by these
//! names (see `vigil_common::globals` and `agent/src/probes/`).
use aya_ebpf::{
    macros::map,
    maps::{Array, PerCpuArray, RingBuf},
};
use vigil_common::{Counter, COUNTERS};

// Load-time settings (.rodata, frozen by the loader, so the verifier prunes branches
// that a setting turns off). Read them through `setting()`, never directly: the
// compiler would otherwise fold in the default.
#[no_mangle]
pub static FILTER_TGID: u32 = 0;
/// 0: the sys_enter/sys_exit pair runs for the security checks only (no histograms).
#[no_mangle]
pub static SYSCALL_LATENCY_ON: u32 = 1;
#[no_mangle]
pub static SLOW_THRESHOLD_NS: u64 = u64::MAX;
#[no_mangle]
pub static SLOW_EVENTS_PER_SEC: u64 = 1000;
/// When the reader is woken: 0 = for every event (live commands); otherwise only once
/// this many bytes are waiting in the ring buffer (the agent, which also drains on its
/// own clock): a quiet host then costs the agent no wake-up at all.
#[no_mangle]
pub static RINGBUF_WAKE_AT_BYTES: u64 = 0;
/// With RINGBUF_WAKE_AT_BYTES: also wake the reader for an event when it was last
/// woken at least this long ago (0 = never for that reason). A quiet host then costs no
/// wake-up, and an event on it is seen at once instead of at the next drain.
#[no_mangle]
pub static RINGBUF_WAKE_AFTER_NS: u64 = 0;

/// 1 while the agent sheds syscall latency to stay within its CPU budget: the
/// histograms and slow-syscall events stop, the security checks on the same pair go
/// on. A one-slot array (the verifier inlines its lookup: no helper call).
#[map]
pub static LATENCY_SHED: Array<u32> = Array::with_max_entries(1, 0);

#[inline(always)]
pub fn latency_shed() -> bool {
    LATENCY_SHED.get(0).is_some_and(|v| *v != 0)
}

/// When the reader was last woken (CLOCK_MONOTONIC ns); one slot for all CPUs (a race
/// only costs an extra wake-up).
#[map]
pub static LAST_WAKE: Array<u64> = Array::with_max_entries(1, 0);

#[inline(always)]
pub fn setting<T: Copy>(s: &'static T) -> T {
    // SAFETY: a valid static; volatile so the value set by the loader is used.
    unsafe { core::ptr::read_volatile(s) }
}

/// Every ring-buffer event (tagged with `vigil_common::EventKind`). Userspace sets
/// the size at load; when it is full the event is dropped and counted.
#[map]
pub static EVENTS: RingBuf = RingBuf::with_byte_size(256 * 1024, 0);

/// Kernel-side counters, indexed by `vigil_common::Counter`.
#[map]
pub static COUNTERS_MAP: PerCpuArray<u64> = PerCpuArray::with_max_entries(COUNTERS, 0);

const BPF_RB_NO_WAKEUP: u64 = 1;
const BPF_RB_FORCE_WAKEUP: u64 = 2;
const BPF_RB_AVAIL_DATA: u64 = 0;

/// Flags for a ring-buffer submit, following `RINGBUF_WAKE_AT_BYTES`, and for events
/// someone waits on (`prompt`: execs, security events) `RINGBUF_WAKE_AFTER_NS`.
#[inline(always)]
pub fn submit_flags(prompt: bool) -> u64 {
    let at = setting(&RINGBUF_WAKE_AT_BYTES);
    if at == 0 {
        return 0;
    }
    let after = setting(&RINGBUF_WAKE_AFTER_NS);
    let mut wake = EVENTS.query(BPF_RB_AVAIL_DATA) >= at;
    if after != 0 && prompt {
        if let Some(last) = LAST_WAKE.get_ptr_mut(0) {
            // SAFETY: helper without arguments; the slot is a plain u64.
            let now = unsafe { aya_ebpf::helpers::bpf_ktime_get_ns() };
            unsafe {
                if wake || now.saturating_sub(*last) >= after {
                    *last = now;
                    wake = true;
                }
            }
        }
    }
    if wake {
        BPF_RB_FORCE_WAKEUP
    } else {
        BPF_RB_NO_WAKEUP
    }
}

#[inline(always)]
pub fn count(counter: Counter) {
    if let Some(c) = COUNTERS_MAP.get_ptr_mut(counter as u32) {
        // SAFETY: per-CPU slot, and the programs here don't preempt each other on a CPU
        // for the same counter in a way that matters to an approximate add.
        unsafe { *c += 1 };
    }
}
