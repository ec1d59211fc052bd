//! Latency histograms in userspace: merging the kernel's per-CPU copies and reading
//! percentiles out of them.
use vigil_common::{bucket_upper_bound, SyscallStats, LATENCY_BUCKETS};

/// One syscall's latency distribution over a window, summed over CPUs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LatencyHistogram {
    pub count: u64,
    pub total_ns: u64,
    pub max_ns: u64,
    pub buckets: [u64; LATENCY_BUCKETS],
}

impl Default for LatencyHistogram {
    fn default() -> Self {
        Self {
            count: 0,
            total_ns: 0,
            max_ns: 0,
            buckets: [0; LATENCY_BUCKETS],
        }
    }
}

impl From<&SyscallStats> for LatencyHistogram {
    fn from(s: &SyscallStats) -> Self {
        Self {
            count: s.count,
            total_ns: s.total_ns,
            max_ns: s.max_ns,
            buckets: s.buckets,
        }
    }
}

/// A histogram as kept in the agent's history: only the non-empty buckets (a typical
/// syscall fills a dozen of the 160), so an interval of history costs a few KiB, not
/// ~1.3 KiB per syscall.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CompactHistogram {
    pub count: u64,
    pub total_ns: u64,
    pub max_ns: u64,
    buckets: Box<[(u16, u64)]>,
}

impl From<&LatencyHistogram> for CompactHistogram {
    fn from(h: &LatencyHistogram) -> Self {
        Self {
            count: h.count,
            total_ns: h.total_ns,
            max_ns: h.max_ns,
            buckets: h
                .buckets
                .iter()
                .enumerate()
                .filter(|(_, n)| **n > 0)
                .map(|(i, n)| (i as u16, *n))
                .collect(),
        }
    }
}

impl CompactHistogram {
    /// Adds this one into a full histogram.
    pub fn merge_into(&self, h: &mut LatencyHistogram) {
        h.count = h.count.saturating_add(self.count);
        h.total_ns = h.total_ns.saturating_add(self.total_ns);
        h.max_ns = h.max_ns.max(self.max_ns);
        for &(i, n) in self.buckets.iter() {
            if let Some(b) = h.buckets.get_mut(usize::from(i)) {
                *b = b.saturating_add(n);
            }
        }
    }
}

impl LatencyHistogram {
    /// Adds another histogram (another CPU, or another window) into this one.
    pub fn merge(&mut self, other: &Self) {
        self.count = self.count.saturating_add(other.count);
        self.total_ns = self.total_ns.saturating_add(other.total_ns);
        self.max_ns = self.max_ns.max(other.max_ns);
        for (a, b) in self.buckets.iter_mut().zip(other.buckets.iter()) {
            *a = a.saturating_add(*b);
        }
    }

    /// What happened between two cumulative snapshots (`self` the later one).
    /// A maximum can't be differenced, so the window's `max_ns` is bounded instead:
    /// the top of its highest non-empty bucket, capped by the cumulative maximum.
    pub fn since(&self, earlier: &Self) -> Self {
        let mut out = self.clone();
        out.count = self.count.saturating_sub(earlier.count);
        out.total_ns = self.total_ns.saturating_sub(earlier.total_ns);
        for (o, e) in out.buckets.iter_mut().zip(earlier.buckets.iter()) {
            *o = o.saturating_sub(*e);
        }
        out.max_ns = out
            .buckets
            .iter()
            .rposition(|&n| n > 0)
            .map_or(0, |top| bucket_upper_bound(top).min(self.max_ns));
        out
    }

    /// The latency at quantile `q` (0.0..=1.0), or `None` when empty.
    ///
    /// Returns the upper edge of the bucket holding the q-th sample, capped at the
    /// observed maximum: never below the true value, and at most 25 % above it.
    pub fn percentile(&self, q: f64) -> Option<u64> {
        let in_buckets: u64 = self.buckets.iter().sum();
        if in_buckets == 0 {
            return None;
        }
        let q = q.clamp(0.0, 1.0);
        // Rank of the wanted sample, 1-based: the smallest r with r >= q * n.
        let rank = ((q * in_buckets as f64).ceil() as u64).max(1);
        let mut seen = 0u64;
        for (i, n) in self.buckets.iter().enumerate() {
            seen += n;
            if seen >= rank {
                let upper = bucket_upper_bound(i);
                return Some(if self.max_ns > 0 {
                    upper.min(self.max_ns)
                } else {
                    upper
                });
            }
        }
        Some(self.max_ns)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use vigil_common::latency_bucket;

    fn from_samples(samples: &[u64]) -> LatencyHistogram {
        let mut h = LatencyHistogram::default();
        for &s in samples {
            h.count += 1;
            h.total_ns += s;
            h.max_ns = h.max_ns.max(s);
            h.buckets[latency_bucket(s)] += 1;
        }
        h
    }

    fn exact_percentile(samples: &[u64], q: f64) -> u64 {
        let mut v = samples.to_vec();
        v.sort_unstable();
        let rank = ((q * v.len() as f64).ceil() as usize).max(1);
        v[rank - 1]
    }

    #[test]
    fn compact_form_merges_back_to_the_same_histogram() {
        let mut h = LatencyHistogram::default();
        for v in [1u64, 5, 900, 70_000, 70_001, 3_000_000_000] {
            h.buckets[latency_bucket(v) as usize] += 1;
            h.count += 1;
            h.total_ns += v;
            h.max_ns = h.max_ns.max(v);
        }
        let mut back = LatencyHistogram::default();
        CompactHistogram::from(&h).merge_into(&mut back);
        assert_eq!(back, h);
    }

    #[test]
    fn empty_histogram_has_no_percentiles() {
        assert_eq!(LatencyHistogram::default().percentile(0.5), None);
    }

    #[test]
    fn percentiles_bound_the_exact_value_within_a_quarter() {
        // A spread of latencies from 100 ns to ~50 ms, deterministic.
        let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
        let samples: Vec<u64> = (0..10_000)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                100 + x % 50_000_000
            })
            .collect();
        let h = from_samples(&samples);
        for q in [0.01, 0.5, 0.9, 0.99, 0.999, 1.0] {
            let exact = exact_percentile(&samples, q);
            let est = h.percentile(q).unwrap();
            assert!(est >= exact, "q={q}: estimate {est} below exact {exact}");
            assert!(
                est as f64 <= exact as f64 * 1.25 + 1.0,
                "q={q}: estimate {est} vs exact {exact}"
            );
        }
    }

    #[test]
    fn percentile_is_capped_by_max() {
        let h = from_samples(&[2_050_000; 100]);
        assert_eq!(h.percentile(0.5), Some(2_050_000));
        assert_eq!(h.percentile(0.99), Some(2_050_000));
    }

    #[test]
    fn skewed_distribution_picks_the_right_bucket() {
        // 90 fast (1 µs) and 10 slow (10 ms): p50 and p90 are fast, p99 is slow.
        let mut s = vec![1_000u64; 90];
        s.extend([10_000_000u64; 10]);
        let h = from_samples(&s);
        assert!(h.percentile(0.5).unwrap() < 1_300);
        assert!(h.percentile(0.9).unwrap() < 1_300);
        assert!(h.percentile(0.99).unwrap() >= 10_000_000);
    }

    #[test]
    fn merge_equals_histogram_of_union() {
        let a = [10u64, 500, 70_000, 3_000_000];
        let b = [20u64, 20, 9_000_000_000];
        let mut merged = from_samples(&a);
        merged.merge(&from_samples(&b));
        let union: Vec<u64> = a.iter().chain(b.iter()).copied().collect();
        assert_eq!(merged, from_samples(&union));
    }

    #[test]
    fn since_undoes_merge() {
        let a = from_samples(&[10, 500, 70_000]);
        let b = from_samples(&[20, 20, 9_000]);
        let mut later = a.clone();
        later.merge(&b);
        let delta = later.since(&a);
        assert!(
            delta.max_ns >= 9_000 && delta.max_ns < 70_000,
            "window max bounded by its own buckets: {}",
            delta.max_ns
        );
        assert_eq!(delta.count, b.count);
        assert_eq!(delta.total_ns, b.total_ns);
        assert_eq!(delta.buckets, b.buckets);
    }
}
