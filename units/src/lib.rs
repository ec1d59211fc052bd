//! Durations and sizes as people write them ("90s", "7d", "8MiB"), and nanoseconds as
//! people read them: one bounded grammar for every flag, config file and rule file of
//! the agent, the collector and the CLI. A leaf: depends on nothing of Vigil's.
use std::time::Duration;

/// The longest duration Vigil takes anywhere (flags, config and rule files). Anything
/// longer is a typo, and would overflow the clocks it is added to.
pub const MAX_DURATION: Duration = Duration::from_secs(100 * 365 * 86_400);

/// Why a duration or a size was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum UnitError {
    #[error("`{input}` is not a duration (try 5s, 500ms, 2m)")]
    NotADuration { input: String },
    #[error("`{input}`: a duration cannot be negative")]
    NegativeDuration { input: String },
    #[error("unknown unit `{unit}` in `{input}` (use ns, us, ms, s, m, h, d)")]
    UnknownDurationUnit { input: String, unit: String },
    #[error("`{input}` is too long (at most 100 years)")]
    TooLong { input: String },
    #[error("`{input}` is not a size (try 4096, 64KiB, 8MiB, 1GiB)")]
    NotASize { input: String },
    #[error("unknown unit `{unit}` in `{input}` (use B, KiB, MiB, GiB)")]
    UnknownSizeUnit { input: String, unit: String },
    #[error("`{input}` is too large")]
    TooLarge { input: String },
}

/// Parses `500ms`, `5s`, `2m`, `1h`, `7d`, `250us`, `100ns` (a bare number is
/// seconds); never more than [`MAX_DURATION`].
pub fn parse_duration(s: &str) -> Result<Duration, UnitError> {
    let input = || s.to_string();
    let t = s.trim();
    if t.starts_with('-') {
        return Err(UnitError::NegativeDuration { input: input() });
    }
    let split = t
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let value: f64 = num
        .parse()
        .map_err(|_| UnitError::NotADuration { input: input() })?;
    let scale = match unit.trim() {
        "ns" => 1e-9,
        "us" | "µs" => 1e-6,
        "ms" => 1e-3,
        "" | "s" => 1.0,
        "m" => 60.0,
        "h" => 3600.0,
        "d" => 86400.0,
        other => {
            return Err(UnitError::UnknownDurationUnit {
                input: input(),
                unit: other.to_string(),
            })
        }
    };
    let secs = value * scale;
    if !secs.is_finite() || secs < 0.0 {
        return Err(UnitError::NotADuration { input: input() });
    }
    if secs > MAX_DURATION.as_secs_f64() {
        return Err(UnitError::TooLong { input: input() });
    }
    // In range by the check above, so this cannot fail; the error is kept anyway.
    Duration::try_from_secs_f64(secs).map_err(|_| UnitError::TooLong { input: input() })
}

/// Parses `4096`, `64KiB`, `8MiB`, `1GiB` (also `K`, `M`, `G`) into bytes.
pub fn parse_size(s: &str) -> Result<u64, UnitError> {
    let input = || s.to_string();
    let t = s.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let n: u64 = num
        .parse()
        .map_err(|_| UnitError::NotASize { input: input() })?;
    let scale: u64 = match unit.trim() {
        "" | "B" => 1,
        "K" | "KiB" | "k" => 1 << 10,
        "M" | "MiB" => 1 << 20,
        "G" | "GiB" => 1 << 30,
        other => {
            return Err(UnitError::UnknownSizeUnit {
                input: input(),
                unit: other.to_string(),
            })
        }
    };
    n.checked_mul(scale)
        .ok_or(UnitError::TooLarge { input: input() })
}

/// Nanoseconds as a short human string: 950ns, 12.3us, 4.56ms, 1.20s.
pub fn human_ns(ns: u64) -> String {
    let n = ns as f64;
    if ns < 1_000 {
        format!("{ns}ns")
    } else if ns < 1_000_000 {
        format!("{:.1}us", n / 1e3)
    } else if ns < 1_000_000_000 {
        format!("{:.2}ms", n / 1e6)
    } else {
        format!("{:.2}s", n / 1e9)
    }
}

/// Every problem found in a config, with where it is.
#[derive(Debug)]
pub struct ConfigError {
    pub file: std::path::PathBuf,
    pub problems: Vec<String>,
}

impl std::fmt::Display for ConfigError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.problems.as_slice() {
            [one] => write!(f, "invalid config {}: {one}", self.file.display()),
            many => {
                write!(f, "invalid config {}:", self.file.display())?;
                for p in many {
                    write!(f, "\n  - {p}")?;
                }
                Ok(())
            }
        }
    }
}

impl std::error::Error for ConfigError {}

/// Seconds as a person says a span: "45 s", "10 min", "1 h 30 min", "2 d 3 h".
pub fn human_secs(secs: f64) -> String {
    let s = secs.max(0.0).round() as u64;
    match s {
        0..=119 => format!("{s} s"),
        120..=7199 if s.is_multiple_of(60) => format!("{} min", s / 60),
        120..=7199 => format!("{} min {} s", s / 60, s % 60),
        7200..=172_799 if s % 3600 / 60 == 0 => format!("{} h", s / 3600),
        7200..=172_799 => format!("{} h {} min", s / 3600, s % 3600 / 60),
        _ => format!("{} d {} h", s / 86_400, s % 86_400 / 3600),
    }
}

/// "line N: " for a byte offset into a file's text (a parser's error span), or "" when
/// the parser gave none: how every config and rule error names where it is.
pub fn at_line(text: &str, offset: Option<usize>) -> String {
    offset.map_or_else(String::new, |o| {
        let line = text
            .get(..o.min(text.len()))
            .unwrap_or(text)
            .matches('\n')
            .count()
            + 1;
        format!("line {line}: ")
    })
}

/// Milliseconds since the Unix epoch (0 before it).
pub fn unix_ms(t: std::time::SystemTime) -> i64 {
    t.duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

/// UTC time as RFC 3339 with milliseconds ("2026-12-07T04:00:00.000Z").
pub fn rfc3339_ms(ms: i64) -> String {
    let secs = ms.div_euclid(1000);
    let days = secs.div_euclid(86_400);
    let rem = secs.rem_euclid(86_400);
    // Civil from days (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = if m <= 2 { y + 1 } else { y };
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}.{:03}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60,
        ms.rem_euclid(1000)
    )
}

/// Parses RFC 3339 ("2026-12-07T04:00:00Z", fractions and offsets allowed) into
/// milliseconds since the epoch; None if it is not one.
pub fn parse_rfc3339_ms(s: &str) -> Option<i64> {
    let b = s.as_bytes();
    let num = |r: std::ops::Range<usize>| -> Option<i64> {
        let t = s.get(r)?;
        t.bytes()
            .all(|c| c.is_ascii_digit())
            .then(|| t.parse().ok())
            .flatten()
    };
    if b.len() < 20 || b[4] != b'-' || b[7] != b'-' || !matches!(b[10], b'T' | b't' | b' ') {
        return None;
    }
    let (y, m, d) = (num(0..4)?, num(5..7)?, num(8..10)?);
    let (hh, mm, ss) = (num(11..13)?, num(14..16)?, num(17..19)?);
    if !(1..=12).contains(&m) || !(1..=31).contains(&d) || hh > 23 || mm > 59 || ss > 60 {
        return None;
    }
    let mut i = 19;
    let mut frac_ms = 0;
    if b.get(i) == Some(&b'.') {
        let start = i + 1;
        i = start;
        while b.get(i).is_some_and(u8::is_ascii_digit) {
            i += 1;
        }
        if i == start {
            return None;
        }
        let digits = &s[start..i.min(start + 3)];
        frac_ms = digits.parse::<i64>().ok()? * 10i64.pow(3 - digits.len() as u32);
    }
    let offset_secs = match s.get(i..)? {
        "Z" | "z" => 0,
        o if o.len() == 6 && matches!(&o[..1], "+" | "-") && &o[3..4] == ":" => {
            let v = num(i + 1..i + 3)? * 3600 + num(i + 4..i + 6)? * 60;
            if &o[..1] == "-" {
                -v
            } else {
                v
            }
        }
        _ => return None,
    };
    // Days from civil (Howard Hinnant's algorithm).
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    Some((days * 86_400 + hh * 3600 + mm * 60 + ss - offset_secs) * 1000 + frac_ms)
}

/// The exit code of a bad flag or flag value, as of a bad config file: 64 (EX_USAGE,
/// sysexits.h).
pub const EXIT_USAGE: i32 = 64;

/// Parses the command line: a bad flag or value prints clap's message and exits
/// [`EXIT_USAGE`] (clap's own default is 2); `--help` and `--version` print and exit 0.
#[cfg(feature = "cli")]
pub fn parse_args<T: clap::Parser>() -> T {
    T::try_parse().unwrap_or_else(|e| {
        let code = if e.use_stderr() { EXIT_USAGE } else { 0 };
        let _ = e.print();
        std::process::exit(code)
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn rfc3339_round_trips_and_reads_offsets_and_fractions() {
        for ms in [
            0,
            1_765_080_000_123,
            951_782_400_000,
            -1_000,
            4_102_444_800_000,
        ] {
            assert_eq!(
                parse_rfc3339_ms(&rfc3339_ms(ms)),
                Some(ms),
                "{}",
                rfc3339_ms(ms)
            );
        }
        assert_eq!(
            parse_rfc3339_ms("2026-12-07T05:00:00+01:00"),
            parse_rfc3339_ms("2026-12-07T04:00:00Z")
        );
        assert_eq!(
            parse_rfc3339_ms("2026-12-07T04:00:00.5123456789Z"),
            Some(parse_rfc3339_ms("2026-12-07T04:00:00Z").unwrap() + 512)
        );
        for bad in [
            "",
            "2026-12-07",
            "2026-13-07T04:00:00Z",
            "2026-12-07T04:00:00",
            "2026-12-07T04:00:00.Z",
            "x026-12-07T04:00:00Z",
        ] {
            assert_eq!(parse_rfc3339_ms(bad), None, "{bad}");
        }
    }

    proptest! {
        #[test]
        fn any_text_is_a_time_or_none(s in "\\PC*") {
            let _ = parse_rfc3339_ms(&s);
        }
    }

    #[test]
    fn durations_parse() {
        assert_eq!(parse_duration("5s"), Ok(Duration::from_secs(5)));
        assert_eq!(parse_duration("10ms"), Ok(Duration::from_millis(10)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        assert_eq!(parse_duration("1.5s"), Ok(Duration::from_millis(1500)));
        assert_eq!(parse_duration("3"), Ok(Duration::from_secs(3)));
        assert_eq!(parse_duration("7d"), Ok(Duration::from_secs(7 * 86400)));
        assert!(parse_duration("5 parsecs").is_err());
        for huge in [
            "20000000000000000000s",
            "99999999999999999999999d",
            "36501d",
        ] {
            assert!(
                matches!(parse_duration(huge), Err(UnitError::TooLong { .. })),
                "{huge}"
            );
        }
        assert_eq!(parse_duration("36500d"), Ok(MAX_DURATION));
        assert!(parse_duration("").is_err());
    }

    #[test]
    fn sizes_parse() {
        assert_eq!(parse_size("4096"), Ok(4096));
        assert_eq!(parse_size("64KiB"), Ok(64 << 10));
        assert_eq!(parse_size("8MiB"), Ok(8 << 20));
        assert!(matches!(
            parse_size("99999999999GiB"),
            Err(UnitError::TooLarge { .. })
        ));
        assert!(parse_size("1TiB").is_err());
        assert!(parse_size("").is_err());
    }

    proptest! {
        // Error or value, never a panic; a value is always within the bound.
        #[test]
        fn any_text_is_a_duration_or_an_error(s in "\\PC*") {
            if let Ok(d) = parse_duration(&s) {
                prop_assert!(d <= MAX_DURATION);
            }
        }

        #[test]
        fn number_and_unit_is_a_duration_or_an_error(
            n in "[0-9]{0,40}(\\.[0-9]{0,20})?",
            unit in "(ns|us|µs|ms|s|m|h|d|)",
        ) {
            if let Ok(d) = parse_duration(&format!("{n}{unit}")) {
                prop_assert!(d <= MAX_DURATION);
                // Whatever was accepted can be added to the clocks without overflow.
                prop_assert!(std::time::Instant::now().checked_add(d).is_some());
            }
        }

        #[test]
        fn any_text_is_a_size_or_an_error(s in "\\PC*") {
            let _ = parse_size(&s);
        }

        #[test]
        fn number_and_unit_is_a_size_or_an_error(
            n in "[0-9]{0,30}",
            unit in "(B|K|KiB|k|M|MiB|G|GiB|)",
        ) {
            let _ = parse_size(&format!("{n}{unit}"));
        }
    }
}

/// Parses a TOML config and names every problem in it, not only the first: each as
/// "line N: section.field: reason". serde stops at the first error, so the line it
/// points at is set aside (blanked) and the text parsed again, until it parses or a
/// line fails twice; what then parses is the config with those fields at defaults
/// (the caller refuses it anyway, but checks the rest of it first).
#[cfg(feature = "toml")]
pub fn parse_toml<T: serde::de::DeserializeOwned>(text: &str) -> (Option<T>, Vec<String>) {
    let mut lines: Vec<String> = text.lines().map(str::to_string).collect();
    let mut problems = Vec::new();
    let mut blanked = std::collections::HashSet::new();
    for _ in 0..64 {
        let current = lines.join("\n");
        match toml::from_str::<T>(&current) {
            Ok(v) => return (problems.is_empty().then_some(v), problems),
            Err(e) => {
                let Some(offset) = e.span().map(|s| s.start) else {
                    problems.push(e.message().to_string());
                    return (None, problems);
                };
                let line = current
                    .get(..offset.min(current.len()))
                    .unwrap_or(&current)
                    .matches('\n')
                    .count();
                let field = field_at(&lines, line);
                let reason = e.message().trim_end();
                problems.push(match field {
                    Some(f) => format!("line {}: {f}: {reason}", line + 1),
                    None => format!("line {}: {reason}", line + 1),
                });
                // In the file's order, whatever order serde met them in.
                problems.sort_by_key(|p| {
                    p.strip_prefix("line ")
                        .and_then(|r| r.split(':').next())
                        .and_then(|n| n.parse::<usize>().ok())
                        .unwrap_or(0)
                });
                if !blanked.insert(line) || line >= lines.len() {
                    return (None, problems);
                }
                lines[line] = String::new();
            }
        }
    }
    (None, problems)
}

/// The dotted name of the key on line `n` (0-based): its table header's name and the key.
#[cfg(feature = "toml")]
fn field_at(lines: &[String], n: usize) -> Option<String> {
    let key = lines.get(n)?.split('=').next()?.trim();
    if key.is_empty() || key.starts_with('[') || key.starts_with('#') {
        return None;
    }
    let key = key.trim_matches('"');
    let table = lines[..n].iter().rev().find_map(|l| {
        let l = l.trim();
        l.starts_with('[')
            .then(|| l.trim_matches(|c| c == '[' || c == ']').trim().to_string())
    });
    Some(match table {
        Some(t) if !t.is_empty() => format!("{t}.{key}"),
        _ => key.to_string(),
    })
}

#[cfg(all(test, feature = "toml"))]
mod toml_tests {
    #[derive(Debug, serde::Deserialize)]
    #[serde(deny_unknown_fields)]
    #[expect(dead_code, reason = "only deserialized")]
    struct Conf {
        #[serde(default)]
        a: u32,
        #[serde(default)]
        s: Section,
    }
    #[derive(Debug, Default, serde::Deserialize)]
    #[serde(deny_unknown_fields)]
    #[expect(dead_code, reason = "only deserialized")]
    struct Section {
        #[serde(default)]
        on: bool,
        #[serde(default)]
        n: u8,
    }

    #[test]
    fn every_problem_is_named_with_line_and_field() {
        let (v, problems) =
            super::parse_toml::<Conf>("a = \"x\"\n[s]\non = \"yes\"\nn = 300\nbogus = 1\n");
        assert!(v.is_none());
        assert_eq!(problems.len(), 4, "{problems:?}");
        assert!(
            problems[0].starts_with("line 1: a: invalid type"),
            "{problems:?}"
        );
        assert!(
            problems[1].starts_with("line 3: s.on: invalid type"),
            "{problems:?}"
        );
        assert!(problems[2].starts_with("line 4: s.n: "), "{problems:?}");
        assert!(
            problems[3].starts_with("line 5: s.bogus: unknown field `bogus`"),
            "{problems:?}"
        );
        let (v, problems) = super::parse_toml::<Conf>("a = 1\n[s]\non = true\n");
        assert!(v.is_some() && problems.is_empty());
        let (v, problems) = super::parse_toml::<Conf>("a = = 1\n");
        assert!(v.is_none() && problems.len() == 1, "{problems:?}");
    }
}
