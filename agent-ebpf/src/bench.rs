//! The benchmark's eBPF object (`vigil-bench`): the shipped programs plus the other
//! ways of timing a syscall that `cargo xtask bench syscalls` compares them with. The
//! agent never embeds this object; it ships `main.rs`'s.
#![no_std]
#![no_main]

mod maps;
mod task_storage;
mod probes {
    pub mod process;
    pub mod security;
    pub mod syscall_variants;
    pub mod syscalls;
    pub mod tcp;
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}
