//! The syscall latency probe: which program pair to attach, and reading its histograms.
use std::collections::BTreeMap;

use aya::{
    programs::{BtfTracePoint, RawTracePoint},
    Btf, Ebpf,
};
use vigil_common::{SyscallStats, MAX_SYSCALLS, SEEN_WORDS};

use super::{for_each_per_cpu, load_and_attach, ProbeError};
use crate::histogram::LatencyHistogram;

pub const LATENCY_MAP: &str = "SYSCALL_LATENCY";
pub const START_HASH_MAP: &str = "SYSCALL_START_TID";
const SEEN_MAP: &str = "SYSCALL_SEEN";
const SPILL_PROGRAM: &str = "sched_switch_spill";

/// The ways of timing a syscall that the eBPF object carries. They differ in program
/// type and in where the start time waits between sys_enter and sys_exit;
/// `cargo xtask bench syscalls` measures each.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SyscallVariant {
    /// tp_btf; start time in a per-CPU slot, moved to task-local storage by
    /// sched_switch when the syscall blocks or is preempted.
    BtfPerCpuSpill,
    /// BTF-enabled raw tracepoints (tp_btf), start time in task-local storage.
    BtfTaskStorage,
    /// Raw tracepoints, start time in task-local storage.
    RawTaskStorage,
    /// Raw tracepoints, start time in a tid-keyed hash (what syscount/bpftrace do).
    RawTidHash,
    /// Raw tracepoints that do nothing: the cost of the tracepoints alone.
    Empty,
    /// tp_btf that only read the clock at enter and exit: what timing costs before
    /// any storage or histogram (bench only; records nothing).
    ClockOnly,
}

impl SyscallVariant {
    /// What the agent attaches (chosen by `cargo xtask bench syscalls`; see README).
    pub const SHIPPED: Self = Self::BtfTaskStorage;
    pub const ALL: [Self; 6] = [
        Self::Empty,
        Self::ClockOnly,
        Self::RawTidHash,
        Self::RawTaskStorage,
        Self::BtfTaskStorage,
        Self::BtfPerCpuSpill,
    ];

    pub fn programs(self) -> (&'static str, &'static str) {
        match self {
            Self::BtfPerCpuSpill => ("sys_enter_pcpu", "sys_exit_pcpu"),
            Self::BtfTaskStorage => ("sys_enter_btf", "sys_exit_btf"),
            Self::RawTaskStorage => ("sys_enter_task", "sys_exit_task"),
            Self::RawTidHash => ("sys_enter_hash", "sys_exit_hash"),
            Self::Empty => ("sys_enter_empty", "sys_exit_empty"),
            Self::ClockOnly => ("sys_enter_clock", "sys_exit_clock"),
        }
    }

    pub fn describe(self) -> &'static str {
        match self {
            Self::BtfPerCpuSpill => "tp_btf + per-CPU slot, spill on switch",
            Self::BtfTaskStorage => "tp_btf + task storage",
            Self::RawTaskStorage => "raw_tp + task storage",
            Self::RawTidHash => "raw_tp + tid hash",
            Self::Empty => "empty raw_tp (floor)",
            Self::ClockOnly => "tp_btf, 2 clock reads only",
        }
    }

    /// Stable name for the command line (`vigil hold-probes --variant NAME`).
    pub fn name(self) -> &'static str {
        match self {
            Self::BtfPerCpuSpill => "btf-percpu-spill",
            Self::BtfTaskStorage => "btf-task-storage",
            Self::RawTaskStorage => "raw-task-storage",
            Self::RawTidHash => "raw-tid-hash",
            Self::Empty => "empty",
            Self::ClockOnly => "clock-only",
        }
    }

    pub fn from_name(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|v| v.name() == name)
    }

    pub fn uses_tid_hash(self) -> bool {
        self == Self::RawTidHash
    }
}

pub fn attach(ebpf: &mut Ebpf, variant: SyscallVariant) -> Result<(), ProbeError> {
    let (enter, exit) = variant.programs();
    match variant {
        SyscallVariant::BtfTaskStorage
        | SyscallVariant::BtfPerCpuSpill
        | SyscallVariant::ClockOnly => {
            let btf = Btf::from_sys_fs().map_err(ProbeError::Btf)?;
            // The spill program first, then exit, then enter: a start time is never
            // left in a slot without something to move or consume it.
            let mut order = vec![(exit, "sys_exit"), (enter, "sys_enter")];
            if variant == SyscallVariant::BtfPerCpuSpill {
                order.insert(0, (SPILL_PROGRAM, "sched_switch"));
            }
            for (name, tp) in order {
                load_and_attach(ebpf, name, |p: &mut BtfTracePoint| {
                    p.load(tp, &btf)?;
                    p.attach().map(drop)
                })?;
            }
        }
        _ => {
            for (name, tp) in [(enter, "sys_enter"), (exit, "sys_exit")] {
                load_and_attach(ebpf, name, |p: &mut RawTracePoint| {
                    p.load()?;
                    p.attach(tp).map(drop)
                })?;
            }
        }
    }
    Ok(())
}

/// Cumulative latency histograms by syscall number, summed over CPUs. Syscalls never
/// seen are left out.
pub fn read_latency(ebpf: &Ebpf) -> Result<BTreeMap<u32, LatencyHistogram>, ProbeError> {
    // One read of the "seen" bitmaps, then only the histograms that have data
    // (tens of lookups per interval instead of MAX_SYSCALLS).
    let mut seen = [0u64; SEEN_WORDS];
    for_each_per_cpu(ebpf, SEEN_MAP, [0], |_, per_cpu: &[[u64; SEEN_WORDS]]| {
        for cpu in per_cpu {
            for (s, w) in seen.iter_mut().zip(cpu) {
                *s |= w;
            }
        }
    })?;
    let numbers = (0..MAX_SYSCALLS).filter(|nr| seen[(nr / 64) as usize] & (1 << (nr % 64)) != 0);
    let mut out = BTreeMap::new();
    for_each_per_cpu(
        ebpf,
        LATENCY_MAP,
        numbers,
        |nr, per_cpu: &[SyscallStats]| {
            let mut total = LatencyHistogram::default();
            for cpu in per_cpu.iter().filter(|c| c.count > 0) {
                total.merge(&LatencyHistogram::from(cpu));
            }
            if total.count > 0 {
                out.insert(nr, total);
            }
        },
    )?;
    Ok(out)
}
