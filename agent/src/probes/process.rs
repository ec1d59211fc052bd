//! Process lifecycle probes: exec, fork (processes, not threads) and exit (thread
//! groups), from the scheduler's BTF tracepoints. The task_struct and linux_binprm
//! field offsets come from the kernel's BTF (see `btf.rs`).
use aya::{programs::BtfTracePoint, Btf, Ebpf};
use vigil_common::TaskLayout;

use super::{
    btf::{BtfError, KernelBtf},
    load_and_attach, ProbeError,
};

pub const PROGRAMS: [(&str, &str); 3] = [
    // Exit first, then fork, then exec: a process is never seen starting without
    // the program that sees it end.
    ("sched_process_exit", "sched_process_exit"),
    ("sched_process_fork", "sched_process_fork"),
    ("sched_process_exec", "sched_process_exec"),
];

/// The offsets the programs need, from this kernel's BTF.
pub fn layout(btf: &KernelBtf) -> Result<TaskLayout, BtfError> {
    Ok(TaskLayout {
        pid: btf.field_offset("task_struct", "pid")?,
        tgid: btf.field_offset("task_struct", "tgid")?,
        real_parent: btf.field_offset("task_struct", "real_parent")?,
        exit_code: btf.field_offset("task_struct", "exit_code")?,
        binprm_filename: btf.field_offset("linux_binprm", "filename")?,
    })
}

pub fn attach(ebpf: &mut Ebpf) -> Result<(), ProbeError> {
    let btf = Btf::from_sys_fs().map_err(ProbeError::Btf)?;
    for (name, tp) in PROGRAMS {
        load_and_attach(ebpf, name, |p: &mut BtfTracePoint| {
            p.load(tp, &btf)?;
            p.attach().map(drop)
        })?;
    }
    Ok(())
}
