//! What human output may print of strings that come from hosts (hostnames, agent
//! ids, command lines, paths): control characters are shown escaped, so an argv or a
//! hostname can never move the cursor, clear the screen, set the terminal's title or
//! write its clipboard (OSC 52). JSON output is escaped by serde already.
use std::borrow::Cow;

/// `s` with every control character (C0, DEL, C1) and Unicode line or paragraph
/// separator written as `\xNN` or `\u{NNNN}`.
pub fn clean(s: &str) -> Cow<'_, str> {
    let bad = |c: char| c.is_control() || c == '\u{2028}' || c == '\u{2029}';
    if !s.chars().any(bad) {
        return Cow::Borrowed(s);
    }
    let mut out = String::with_capacity(s.len() + 8);
    for c in s.chars() {
        if bad(c) {
            if (c as u32) < 0x100 {
                out.push_str(&format!("\\x{:02x}", c as u32));
            } else {
                out.push_str(&format!("\\u{{{:04x}}}", c as u32));
            }
        } else {
            out.push(c);
        }
    }
    Cow::Owned(out)
}

/// UTC time as RFC 3339 with milliseconds.
pub use vigil_units::rfc3339_ms;

/// UTC time as RFC 3339 with nanoseconds (an event's kernel time).
pub fn rfc3339_ns(ns: i64) -> String {
    let ms = rfc3339_ms(ns.div_euclid(1_000_000));
    // "...:SS.mmmZ" to "...:SS.mmmuuunnnZ".
    format!("{}{:06}Z", &ms[..ms.len() - 1], ns.rem_euclid(1_000_000))
}

/// A retransmit as one line of text: time, addresses, TCP state, the kernel's error.
pub fn retransmit_text(r: &vigil_proto::v1::TcpRetransmit) -> String {
    format!(
        "{} {}:{} -> {}:{} {} err={}",
        rfc3339_us(r.time_unix_ns),
        clean(&r.saddr),
        r.sport,
        clean(&r.daddr),
        r.dport,
        clean(&r.state),
        r.err
    )
}

/// A `SystemTime` as nanoseconds since the epoch (0 before it).
pub fn unix_ns(t: std::time::SystemTime) -> i64 {
    t.duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_nanos()).unwrap_or(i64::MAX))
}

/// UTC time as RFC 3339 with microseconds: what human output of kernel events shows.
pub fn rfc3339_us(ns: i64) -> String {
    let full = rfc3339_ns(ns);
    format!("{}Z", &full[..full.len() - 4])
}

/// The filesystems `df` would show: bind mounts (a device already shown at another
/// mount point) left out and counted. The shortest mount point of a device is kept.
pub fn df_rows(all: &[crate::metrics::Filesystem]) -> (Vec<&crate::metrics::Filesystem>, usize) {
    let mut by_device: std::collections::HashMap<&str, &crate::metrics::Filesystem> =
        std::collections::HashMap::new();
    let mut rows = Vec::new();
    for f in all {
        // Only real devices can be bind-mounted twice; tmpfs and friends share a name.
        if !f.device.starts_with('/') {
            rows.push(f);
            continue;
        }
        match by_device.get(f.device.as_str()) {
            Some(kept) if kept.mount.len() <= f.mount.len() => {}
            _ => {
                by_device.insert(&f.device, f);
            }
        }
    }
    let hidden = all.iter().filter(|f| f.device.starts_with('/')).count() - by_device.len();
    rows.extend(by_device.into_values());
    rows.sort_by(|a, b| a.mount.cmp(&b.mount));
    (rows, hidden)
}

/// Use % as `df` computes it: used / (used + available), rounded up, so the blocks
/// reserved for root count as unavailable (`/` can be 20 % used by `df` at 7 % of size).
pub fn use_percent(f: &crate::metrics::Filesystem) -> u64 {
    let denom = f.used_bytes + f.available_bytes;
    if denom == 0 {
        return 0;
    }
    (u128::from(f.used_bytes) * 100).div_ceil(u128::from(denom)) as u64
}

/// Why a connection failed, in a person's words: refused, no such socket, DNS
/// failure, TLS, timed out; else the innermost error. Never the whole chain twice.
pub fn unreachable(err: &(dyn std::error::Error + 'static)) -> String {
    let mut inner: &(dyn std::error::Error + 'static) = err;
    let mut cur = Some(err);
    while let Some(e) = cur {
        if let Some(tls) = e.downcast_ref::<rustls::Error>() {
            return format!("TLS handshake failed: {tls}");
        }
        if let Some(io) = e.downcast_ref::<std::io::Error>() {
            let text = io.to_string();
            if text.contains("failed to lookup address")
                || text.contains("Name or service not known")
            {
                return format!("DNS failure: {text}");
            }
            if let Some(tls) = io.get_ref().and_then(|i| i.downcast_ref::<rustls::Error>()) {
                return format!("TLS handshake failed: {tls}");
            }
            match io.kind() {
                std::io::ErrorKind::ConnectionRefused => return "connection refused".into(),
                std::io::ErrorKind::NotFound => return "no such socket".into(),
                std::io::ErrorKind::PermissionDenied => return "permission denied".into(),
                std::io::ErrorKind::TimedOut => return "timed out".into(),
                std::io::ErrorKind::ConnectionReset => return "connection reset".into(),
                std::io::ErrorKind::HostUnreachable | std::io::ErrorKind::NetworkUnreachable => {
                    return format!("unreachable: {text}")
                }
                _ => {}
            }
        }
        let text = e.to_string();
        if text.contains("timed out") || text.contains("deadline has elapsed") {
            return "timed out".into();
        }
        if text.contains("dns error") {
            return format!("DNS failure: {text}");
        }
        inner = e;
        cur = e.source();
    }
    inner.to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_are_rfc3339_utc() {
        assert_eq!(rfc3339_ms(0), "1970-01-01T00:00:00.000Z");
        assert_eq!(rfc3339_ms(1_796_428_800_123), "2026-12-05T00:00:00.123Z");
        assert_eq!(rfc3339_ms(951_782_400_000), "2000-02-29T00:00:00.000Z");
        assert_eq!(
            rfc3339_ns(1_796_428_800_123_456_789),
            "2026-12-05T00:00:00.123456789Z"
        );
        assert_eq!(
            rfc3339_us(1_796_428_800_123_456_789),
            "2026-12-05T00:00:00.123456Z"
        );
    }

    #[test]
    fn control_characters_are_escaped_and_the_rest_kept() {
        assert_eq!(clean("web-01"), "web-01");
        assert_eq!(clean("héllo wörld"), "héllo wörld");
        assert_eq!(
            clean("\x1b[2J\x1b]52;c;aGk=\x07fake\nline\r\u{9b}"),
            "\\x1b[2J\\x1b]52;c;aGk=\\x07fake\\x0aline\\x0d\\x9b"
        );
        assert_eq!(clean("a\u{2028}b"), "a\\u{2028}b");
    }
}
