pub mod process;
pub mod security;
pub mod syscalls;
pub mod tcp;
