//! Rule files (YAML, the condition grammar) and the glob matcher the rules use.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data) {
        let _ = vigil_agent::detect::rules::parse("fuzz.yaml", text);
    }
    // The first line as a pattern, the rest as the string it is matched against.
    let (pattern, subject) = match data.iter().position(|&b| b == b'\n') {
        Some(i) => (&data[..i], &data[i + 1..]),
        None => (data, &data[..0]),
    };
    let _ = vigil_agent::detect::rules::glob_match(pattern, subject);
});
