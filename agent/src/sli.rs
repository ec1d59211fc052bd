//! Service level indicators on the agent: good and total event counts per interval,
//! exact and additive across a fleet, carried in each batch (`Batch.slis`) and served
//! on /metrics (`vigil_sli_good_total`, `vigil_sli_total`), for SLOs at the collector.
//!
//! Kinds:
//! - `syscall_latency: {syscalls: [fsync, ...], under: 10ms}`: the named syscalls'
//!   calls (total) and those under the bound (good), from the kernel's histograms. A
//!   bound inside a histogram bucket is taken down to the bucket's lower edge (the
//!   bucket that holds the bound counts as bad): the SLI is never better than the truth,
//!   and the edge used is at most 25 % under the bound (quarter-octave buckets). The
//!   edge used is logged at load.
//! - `tcp_retransmits: {}`: TCP segments sent (total) and those that were not
//!   retransmissions (good), from the kernel's OutSegs and RetransSegs.
//! - `alert: NAME`: milliseconds of the interval (total) and those during which the
//!   alert NAME (any series) was not firing at the interval's end (good): a bad-time SLI.
use std::{collections::BTreeMap, path::Path, time::Duration};

use serde::Deserialize;
use vigil_proto::v1 as pb;

/// One SLI, checked.
#[derive(Clone, Debug, PartialEq)]
pub struct Sli {
    pub name: String,
    pub kind: SliKind,
}

#[derive(Clone, Debug, PartialEq)]
pub enum SliKind {
    SyscallLatency {
        syscalls: Vec<String>,
        /// The bound asked for, and the bucket edge at or below it that is counted.
        under: Duration,
        effective_ns: u64,
    },
    TcpRetransmits,
    Alert(String),
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct SliFile {
    #[serde(default)]
    slis: Vec<RawSli>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawSli {
    name: String,
    #[serde(default)]
    syscall_latency: Option<RawLatency>,
    #[serde(default)]
    tcp_retransmits: Option<Empty>,
    #[serde(default)]
    alert: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawLatency {
    syscalls: Vec<String>,
    under: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Empty {}

/// The largest bucket edge at or below `bound_ns`: calls in buckets wholly under it
/// are good.
pub fn effective_bound(bound_ns: u64) -> u64 {
    let mut edge = 0;
    for i in 0..vigil_common::LATENCY_BUCKETS {
        let next = vigil_common::bucket_upper_bound(i).saturating_add(1);
        if next <= bound_ns {
            edge = next;
        } else {
            break;
        }
    }
    edge
}

/// Parses one SLI file; the error names the file, line and reason.
pub fn parse(file: &str, text: &str) -> Result<Vec<Sli>, String> {
    let doc: Option<SliFile> = yaml_serde::from_str(text).map_err(|e| {
        let line = e.location().map_or(0, |l| l.line());
        format!("{file}:{line}: {e}")
    })?;
    let mut out: Vec<Sli> = Vec::new();
    for r in doc.map(|d| d.slis).unwrap_or_default() {
        let at = |reason: String| format!("{file}: sli {}: {reason}", r.name);
        if r.name.is_empty()
            || r.name.len() > 64
            || !r
                .name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
        {
            return Err(at("a name is 1 to 64 letters, digits, - and _".into()));
        }
        if r.name == "host-up" {
            return Err(at(
                "host-up is the collector's own SLI (the time each host's batches cover); choose another name".into(),
            ));
        }
        if out.iter().any(|s| s.name == r.name) {
            return Err(at("defined twice".into()));
        }
        let kind = match (r.syscall_latency, r.tcp_retransmits, r.alert) {
            (Some(l), None, None) => {
                if l.syscalls.is_empty() {
                    return Err(at("syscall_latency.syscalls: name at least one".into()));
                }
                for s in &l.syscalls {
                    if crate::syscall_table::syscall_number(s).is_none() {
                        return Err(at(format!("syscall_latency.syscalls: no syscall `{s}`")));
                    }
                }
                let under = vigil_units::parse_duration(&l.under)
                    .map_err(|e| at(format!("syscall_latency.under: {e}")))?;
                let effective_ns = effective_bound(under.as_nanos().min(u64::MAX as u128) as u64);
                if effective_ns == 0 {
                    return Err(at(
                        "syscall_latency.under: below the smallest bucket (2 ns)".into(),
                    ));
                }
                SliKind::SyscallLatency {
                    syscalls: l.syscalls,
                    under,
                    effective_ns,
                }
            }
            (None, Some(_), None) => SliKind::TcpRetransmits,
            (None, None, Some(a)) if !a.is_empty() => SliKind::Alert(a),
            _ => {
                return Err(at(
                    "give exactly one of syscall_latency, tcp_retransmits, alert".into(),
                ))
            }
        };
        out.push(Sli { name: r.name, kind });
    }
    Ok(out)
}

/// The `*.yaml`/`*.yml` files in `dir`, sorted by name; a missing directory has none.
/// (The alert rules and the SLIs are read from such directories.)
pub fn yaml_files(dir: &Path) -> std::io::Result<Vec<std::path::PathBuf>> {
    let entries = match std::fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(e),
    };
    let mut files: Vec<_> = entries
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "yaml" || x == "yml"))
        .collect();
    files.sort();
    Ok(files)
}

/// Every `*.yaml`/`*.yml` in `dir`, sorted; a missing directory means none.
pub fn load(dir: &Path) -> Result<Vec<Sli>, String> {
    let files = yaml_files(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    let mut all: Vec<Sli> = Vec::new();
    for f in files {
        let name = f.display().to_string();
        let text = std::fs::read_to_string(&f).map_err(|e| format!("{name}: {e}"))?;
        for s in parse(&name, &text)? {
            if all.iter().any(|x| x.name == s.name) {
                return Err(format!(
                    "{name}: sli {} is also defined in another file",
                    s.name
                ));
            }
            all.push(s);
        }
    }
    Ok(all)
}

/// Counts SLIs over each interval; the TCP counters are cumulative, so it keeps the
/// previous ones.
#[derive(Default)]
pub struct Counter {
    prev_tcp: Option<(u64, u64)>,
    /// Since the agent started, per SLI: (good, total).
    pub totals: BTreeMap<String, (u64, u64)>,
}

impl Counter {
    /// Every configured SLI at 0 from the start, as Prometheus asks of counters: a
    /// rate over a window that begins before the first event then starts from a sample
    /// of 0. (An SLI removed by a reload keeps its last totals.)
    pub fn declare(&mut self, slis: &[Sli]) {
        for s in slis {
            self.totals.entry(s.name.clone()).or_default();
        }
    }

    /// The interval's counts. `firing` says whether an alert (by name) fires now.
    pub fn count(
        &mut self,
        slis: &[Sli],
        batch: &pb::Batch,
        firing: &dyn Fn(&str) -> bool,
    ) -> Vec<pb::SliCount> {
        let tcp = batch
            .metrics
            .first()
            .and_then(|m| m.tcp)
            .map(|t| (t.out_segs, t.retrans_segs));
        let tcp_delta = match (self.prev_tcp, tcp) {
            (Some((o0, r0)), Some((o1, r1))) if o1 >= o0 && r1 >= r0 => Some((o1 - o0, r1 - r0)),
            _ => None,
        };
        if tcp.is_some() {
            self.prev_tcp = tcp;
        }
        let interval_ms = u64::try_from(batch.end_unix_ms - batch.start_unix_ms).unwrap_or(0);
        let mut out = Vec::new();
        for s in slis {
            let (good, total) = match &s.kind {
                SliKind::SyscallLatency {
                    syscalls,
                    effective_ns,
                    ..
                } => {
                    let mut good = 0;
                    let mut total = 0;
                    for c in batch.syscalls.iter().filter(|c| syscalls.contains(&c.name)) {
                        total += c.count;
                        good += c
                            .buckets
                            .iter()
                            .enumerate()
                            .filter(|(i, _)| vigil_common::bucket_upper_bound(*i) < *effective_ns)
                            .map(|(_, n)| n)
                            .sum::<u64>();
                    }
                    (good.min(total), total)
                }
                SliKind::TcpRetransmits => match tcp_delta {
                    Some((sent, retrans)) => (sent.saturating_sub(retrans), sent),
                    None => continue,
                },
                SliKind::Alert(name) => {
                    let bad = firing(name);
                    (if bad { 0 } else { interval_ms }, interval_ms)
                }
            };
            let t = self.totals.entry(s.name.clone()).or_default();
            t.0 += good;
            t.1 += total;
            out.push(pb::SliCount {
                name: s.name.clone(),
                good,
                total,
            });
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_bound_inside_a_bucket_is_taken_down_to_its_edge() {
        let e = effective_bound(10_000_000);
        assert!(e <= 10_000_000 && e as f64 >= 10_000_000.0 * 0.75, "{e}");
        // An edge is its own effective bound.
        assert_eq!(effective_bound(e), e);
        assert_eq!(effective_bound(1), 0);
    }

    #[test]
    fn latency_counts_calls_in_buckets_wholly_under_the_bound() {
        let slis = parse(
            "f",
            "slis:\n  - name: fsync-fast\n    syscall_latency: {syscalls: [fsync], under: 10ms}\n  - name: tcp\n    tcp_retransmits: {}\n  - name: disk\n    alert: NodeFilesystemAlmostOutOfSpace\n",
        )
        .unwrap();
        let mut buckets = vec![0u64; vigil_common::LATENCY_BUCKETS];
        buckets[vigil_common::latency_bucket(2_000_000)] = 100;
        buckets[vigil_common::latency_bucket(20_000_000)] = 7;
        let tcp = |out, re| pb::TcpCounters {
            out_segs: out,
            retrans_segs: re,
            ..Default::default()
        };
        let batch = |t, m: pb::TcpCounters| pb::Batch {
            start_unix_ms: t,
            end_unix_ms: t + 10_000,
            metrics: vec![pb::HostMetrics {
                tcp: Some(m),
                ..Default::default()
            }],
            syscalls: vec![pb::SyscallLatency {
                name: "fsync".into(),
                count: 107,
                buckets: buckets.clone(),
                ..Default::default()
            }],
            ..Default::default()
        };
        let mut c = Counter::default();
        let first = c.count(&slis, &batch(0, tcp(1000, 10)), &|_| false);
        // No TCP delta on the first interval.
        assert_eq!(first.len(), 2);
        let second = c.count(&slis, &batch(10_000, tcp(3000, 60)), &|a| {
            a == "NodeFilesystemAlmostOutOfSpace"
        });
        let get = |n: &str| {
            second
                .iter()
                .find(|s| s.name == n)
                .map(|s| (s.good, s.total))
        };
        assert_eq!(get("fsync-fast"), Some((100, 107)));
        assert_eq!(get("tcp"), Some((1950, 2000)));
        assert_eq!(get("disk"), Some((0, 10_000)));
        assert_eq!(c.totals["fsync-fast"], (200, 214));
    }

    #[test]
    fn bad_sli_files_are_refused_with_the_reason() {
        for (text, why) in [
            ("slis:\n  - name: x\n    syscall_latency: {syscalls: [nosuch], under: 1ms}\n", "no syscall"),
            ("slis:\n  - name: x\n    syscall_latency: {syscalls: [fsync], under: 99999999999999999999d}\n", "under"),
            ("slis:\n  - name: x\n    tcp_retransmits: {}\n    alert: A\n", "exactly one"),
            ("slis:\n  - name: x\n    tcp_retransmits: {}\n  - name: x\n    tcp_retransmits: {}\n", "twice"),
            ("slis:\n  - name: x\n    colour: red\n", "colour"),
        ] {
            let e = parse("f.yaml", text).unwrap_err();
            assert!(e.contains(why), "{text}: {e}");
        }
    }
}
