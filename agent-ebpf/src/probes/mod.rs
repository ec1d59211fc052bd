pub mod process;
pub mod syscalls;
pub mod tcp;
