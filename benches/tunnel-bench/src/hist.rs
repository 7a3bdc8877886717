//! A small mergeable latency histogram: log-linear buckets (about 3% wide) over microseconds,
//! stored sparsely so a histogram per phase per process costs little and merges across processes.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// Sub-buckets per power of two.
const SUB_BITS: u32 = 5;
const SUB: u64 = 1 << SUB_BITS;

/// Counts of values (microseconds) per bucket.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(from = "HistRepr", into = "HistRepr")]
pub(crate) struct Hist {
    buckets: BTreeMap<u32, u64>,
    count: u64,
    max: u64,
}

/// The wire form: buckets as pairs (JSON map keys must be strings, and serde's internally tagged
/// enums can't read numbers back from string keys).
#[derive(Serialize, Deserialize)]
struct HistRepr {
    buckets: Vec<(u32, u64)>,
    count: u64,
    max: u64,
}

impl From<Hist> for HistRepr {
    fn from(h: Hist) -> Self {
        Self {
            buckets: h.buckets.into_iter().collect(),
            count: h.count,
            max: h.max,
        }
    }
}

impl From<HistRepr> for Hist {
    fn from(r: HistRepr) -> Self {
        Self {
            buckets: r.buckets.into_iter().collect(),
            count: r.count,
            max: r.max,
        }
    }
}

fn bucket_of(v: u64) -> u32 {
    if v < SUB {
        return v as u32;
    }
    let e = 63 - v.leading_zeros(); // >= SUB_BITS
    let shift = e - SUB_BITS;
    ((shift + 1) << SUB_BITS) | ((v >> shift) & (SUB - 1)) as u32
}

/// The smallest value that falls in bucket `b`.
fn bucket_low(b: u32) -> u64 {
    let (hi, lo) = (b >> SUB_BITS, u64::from(b) & (SUB - 1));
    if hi == 0 {
        return lo;
    }
    let shift = hi - 1;
    (SUB | lo) << shift
}

impl Hist {
    /// Records one value in microseconds.
    pub(crate) fn record(&mut self, micros: u64) {
        *self.buckets.entry(bucket_of(micros)).or_insert(0) += 1;
        self.count += 1;
        self.max = self.max.max(micros);
    }

    /// Adds every value of `other`.
    pub(crate) fn merge(&mut self, other: &Self) {
        for (b, n) in &other.buckets {
            *self.buckets.entry(*b).or_insert(0) += n;
        }
        self.count += other.count;
        self.max = self.max.max(other.max);
    }

    /// Values recorded.
    #[cfg(test)]
    pub(crate) fn count(&self) -> u64 {
        self.count
    }

    /// The value at quantile `q` (0..=1), in microseconds (the low edge of its bucket; the exact
    /// maximum for q = 1). 0 when empty.
    pub(crate) fn quantile(&self, q: f64) -> u64 {
        if self.count == 0 {
            return 0;
        }
        if q >= 1.0 {
            return self.max;
        }
        let rank = ((q * self.count as f64).ceil() as u64).max(1);
        let mut seen = 0;
        for (b, n) in &self.buckets {
            seen += n;
            if seen >= rank {
                return bucket_low(*b).min(self.max);
            }
        }
        self.max
    }

    /// p50, p90, p99 and max in milliseconds.
    pub(crate) fn summary_ms(&self) -> LatencySummary {
        let ms = |us: u64| us as f64 / 1000.0;
        LatencySummary {
            count: self.count,
            p50_ms: ms(self.quantile(0.5)),
            p90_ms: ms(self.quantile(0.9)),
            p99_ms: ms(self.quantile(0.99)),
            max_ms: ms(self.max),
        }
    }
}

/// Percentiles of a histogram, for reports.
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize, PartialEq)]
pub(crate) struct LatencySummary {
    /// Values recorded.
    pub(crate) count: u64,
    /// Median.
    pub(crate) p50_ms: f64,
    /// 90th percentile.
    pub(crate) p90_ms: f64,
    /// 99th percentile.
    pub(crate) p99_ms: f64,
    /// Largest.
    pub(crate) max_ms: f64,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_are_within_four_percent_and_ordered() {
        let mut last = 0;
        for v in (0..2_000_000u64).step_by(997) {
            let b = bucket_of(v);
            assert!(b >= last);
            last = b;
            let low = bucket_low(b);
            assert!(low <= v, "{v} -> {b} low {low}");
            assert!((v - low) as f64 <= 0.04 * v as f64 + 1.0, "{v} low {low}");
        }
    }

    #[test]
    fn quantiles_of_a_uniform_spread_and_merging() {
        let mut a = Hist::default();
        let mut b = Hist::default();
        for v in 1..=1000 {
            if v % 2 == 0 {
                a.record(v)
            } else {
                b.record(v)
            }
        }
        a.merge(&b);
        assert_eq!(a.count(), 1000);
        let p50 = a.quantile(0.5);
        assert!((480..=500).contains(&p50), "{p50}");
        let p99 = a.quantile(0.99);
        assert!((950..=990).contains(&p99), "{p99}");
        assert_eq!(a.quantile(1.0), 1000);
        assert_eq!(Hist::default().quantile(0.5), 0);
    }

    #[test]
    fn survives_a_json_round_trip_inside_a_tagged_message() {
        let mut r = crate::spec::ConnectReport::default();
        r.setup.record(1234);
        r.setup.record(99);
        let line = serde_json::to_string(&crate::spec::Msg::Ready(r.clone())).unwrap();
        let crate::spec::Msg::Ready(back) = serde_json::from_str(&line).unwrap() else {
            panic!("wrong message")
        };
        assert_eq!(back.setup, r.setup);
    }
}
