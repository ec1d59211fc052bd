//! Ring buffer records as the kernel hands them over: decoded into one event each, or an
//! error, never a panic or a read past the record.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = vigil_agent::probes::events::decode(data, vigil_agent::probes::events::Clock::new());
});
