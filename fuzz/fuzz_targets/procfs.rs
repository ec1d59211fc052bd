//! The /proc and /sys parsers, fed any text (a kernel that prints something new, a
//! process name with spaces, parentheses or newlines).
#![no_main]
use libfuzzer_sys::fuzz_target;
use vigil_agent::metrics::parse;

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    let _ = parse::proc_stat(&text);
    let _ = parse::meminfo(&text);
    let _ = parse::loadavg(&text);
    let _ = parse::pressure(&text);
    let _ = parse::net_dev(&text);
    let _ = parse::diskstats(&text);
    let _ = parse::snmp_section(&text, "Tcp");
    let _ = parse::mounts(&text);
    let _ = parse::pid_stat(&text);
    let _ = parse::pid_status_uids(&text);
    let _ = parse::uptime(&text);
    let _ = parse::passwd(&text);
});
