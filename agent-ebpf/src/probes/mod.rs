pub mod syscalls;
pub mod tcp;
