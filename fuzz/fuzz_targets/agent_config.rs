//! agent.toml: any text is a config or an error naming the field, never a panic.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data) {
        let _ = vigil_agent::config::AgentConfig::parse(std::path::Path::new("fuzz.toml"), text);
    }
});
