//! Vigil's kernel programs. One file per event family under `probes/`; the shared
//! maps and load-time settings live in `maps.rs`. Every program is a thin wrapper
//! over a `try_*` function, and nothing the kernel hands us is trusted without a check.
#![no_std]
#![no_main]

mod maps;
mod probes;
mod task_storage;

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}
