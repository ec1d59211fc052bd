//! What can stop a probe, checked at start and reported (`vigil stats --json`
//! `agent.preflight`): the capabilities the probes use, the sysctls and the lockdown
//! mode that restrict BPF and perf events, and the kernel's BTF.
use std::collections::BTreeMap;

use caps::{CapSet, Capability};

/// The capabilities the probes use: loading and attaching BPF programs (BPF), the
/// tracepoints' perf events (PERFMON), the memlock limit on kernels that still charge
/// BPF maps to it (SYS_RESOURCE), other processes' /proc entries for detection
/// (SYS_PTRACE, DAC_READ_SEARCH). CAP_SYS_ADMIN covers BPF and PERFMON on kernels
/// older than 5.8.
pub const PROBE_CAPABILITIES: [Capability; 5] = [
    Capability::CAP_BPF,
    Capability::CAP_PERFMON,
    Capability::CAP_SYS_RESOURCE,
    Capability::CAP_SYS_PTRACE,
    Capability::CAP_DAC_READ_SEARCH,
];

/// Whether this kernel still charges BPF memory to RLIMIT_MEMLOCK (before 5.11).
fn charges_memlock(release: &str) -> bool {
    let mut parts = release.split(|c: char| !c.is_ascii_digit());
    let major: u32 = parts.next().and_then(|p| p.parse().ok()).unwrap_or(0);
    let minor: u32 = parts.next().and_then(|p| p.parse().ok()).unwrap_or(0);
    (major, minor) < (5, 11)
}

/// The probe capabilities this kernel asks for (SYS_RESOURCE only where memlock is
/// still charged).
pub fn needed_capabilities() -> Vec<Capability> {
    let release = nix::sys::utsname::uname()
        .map(|u| u.release().to_string_lossy().into_owned())
        .unwrap_or_default();
    PROBE_CAPABILITIES
        .iter()
        .copied()
        .filter(|c| *c != Capability::CAP_SYS_RESOURCE || charges_memlock(&release))
        .collect()
}

/// The findings, by name (the keys of `AgentSelf.preflight`).
pub fn check() -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    let effective = caps::read(None, CapSet::Effective).unwrap_or_default();
    let missing: Vec<String> = needed_capabilities()
        .iter()
        .filter(|c| !effective.contains(c))
        .map(|c| c.to_string().to_lowercase())
        .collect();
    out.insert("capabilities_missing".into(), missing.join(","));
    let sysctl = |name: &str| {
        std::fs::read_to_string(format!("/proc/sys/kernel/{name}"))
            .map_or_else(|_| "absent".to_string(), |v| v.trim().to_string())
    };
    out.insert("perf_event_paranoid".into(), sysctl("perf_event_paranoid"));
    out.insert(
        "unprivileged_bpf_disabled".into(),
        sysctl("unprivileged_bpf_disabled"),
    );
    out.insert(
        "lockdown".into(),
        std::fs::read_to_string("/sys/kernel/security/lockdown")
            .ok()
            .and_then(|t| lockdown_mode(&t))
            .unwrap_or_else(|| "absent".into()),
    );
    let btf = std::path::Path::new("/sys/kernel/btf/vmlinux").exists();
    out.insert("btf".into(), if btf { "present" } else { "absent" }.into());
    out
}

/// The selected mode of /sys/kernel/security/lockdown: `none [integrity] confidentiality`.
fn lockdown_mode(text: &str) -> Option<String> {
    let start = text.find('[')? + 1;
    let end = start + text.get(start..)?.find(']')?;
    text.get(start..end).map(str::to_string)
}

/// One line for the log: what would stop a probe, or that nothing would.
pub fn summary(p: &BTreeMap<String, String>) -> String {
    let get = |k: &str| p.get(k).map_or("?", String::as_str);
    format!(
        "capabilities missing: {}; perf_event_paranoid {}; unprivileged_bpf_disabled {}; lockdown {}; BTF {}",
        match get("capabilities_missing") {
            "" => "none",
            m => m,
        },
        get("perf_event_paranoid"),
        get("unprivileged_bpf_disabled"),
        get("lockdown"),
        get("btf")
    )
}

#[cfg(test)]
mod tests {
    #[test]
    fn memlock_is_charged_before_5_11_only() {
        assert!(super::charges_memlock("5.10.0-28-amd64"));
        assert!(super::charges_memlock("4.19.0"));
        assert!(!super::charges_memlock("5.11.0"));
        assert!(!super::charges_memlock("6.18.44-foo"));
    }

    #[test]
    fn lockdown_mode_is_the_bracketed_one() {
        assert_eq!(
            super::lockdown_mode("none [integrity] confidentiality\n").as_deref(),
            Some("integrity")
        );
        assert_eq!(super::lockdown_mode("garbage"), None);
        assert_eq!(super::lockdown_mode("]["), None);
    }

    #[test]
    fn every_finding_has_a_value() {
        let p = super::check();
        for k in [
            "capabilities_missing",
            "perf_event_paranoid",
            "unprivileged_bpf_disabled",
            "lockdown",
            "btf",
        ] {
            assert!(p.contains_key(k), "{k}");
        }
    }
}
