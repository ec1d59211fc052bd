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
        binprm_file: btf.field_offset("linux_binprm", "file")?,
        mm: btf.field_offset("task_struct", "mm")?,
        arg_start: btf.field_offset("mm_struct", "arg_start")?,
        arg_end: btf.field_offset("mm_struct", "arg_end")?,
        cred: btf.field_offset("task_struct", "cred")?,
        cred_euid: btf.field_offset("cred", "euid")?,
        files: btf.field_offset("task_struct", "files")?,
        files_fdt: btf.field_offset("files_struct", "fdt")?,
        fdt_fd: btf.field_offset("fdtable", "fd")?,
        file_inode: btf.field_offset("file", "f_inode")?,
        file_mode: btf.field_offset("file", "f_mode")?,
        file_dentry: btf.field_offset("file", "f_path")? + btf.field_offset("path", "dentry")?,
        inode_mode: btf.field_offset("inode", "i_mode")?,
        inode_ino: btf.field_offset("inode", "i_ino")?,
        inode_nlink: btf.field_offset("inode", "i_nlink")?,
        inode_sb: btf.field_offset("inode", "i_sb")?,
        sb_dev: btf.field_offset("super_block", "s_dev")?,
        sb_magic: btf.field_offset("super_block", "s_magic")?,
        inode_rdev: btf.field_offset("inode", "i_rdev")?,
        dentry_parent: btf.field_offset("dentry", "d_parent")?,
        dentry_inode: btf.field_offset("dentry", "d_inode")?,
        dentry_name: btf.field_offset("dentry", "d_name")? + btf.field_offset("qstr", "name")?,
        fs: btf.field_offset("task_struct", "fs")?,
        fs_pwd_dentry: btf.field_offset("fs_struct", "pwd")?
            + btf.field_offset("path", "dentry")?,
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
