//! A lock-free latency histogram (microseconds, ~3% resolution) shared by every client task.
//!
//! Each bucket is an `AtomicU64`: thousands of reader tasks record into one histogram without a
//! lock, and percentiles are read once per step.

use std::sync::atomic::{AtomicU64, Ordering};

/// Values below 64 are exact; above, 32 sub-buckets per power of two (~3% resolution).
const HALF: usize = 32;
/// Up to 2^40 µs, far beyond any run.
const BUCKETS: usize = HALF * 42;

/// Latency histogram in microseconds.
pub struct Histogram {
    buckets: Box<[AtomicU64]>,
    count: AtomicU64,
    max: AtomicU64,
}

impl Default for Histogram {
    fn default() -> Self {
        Self {
            buckets: (0..BUCKETS).map(|_| AtomicU64::new(0)).collect(),
            count: AtomicU64::new(0),
            max: AtomicU64::new(0),
        }
    }
}

fn index(v: u64) -> usize {
    if v < 2 * HALF as u64 {
        return v as usize;
    }
    let bits = 64 - v.leading_zeros();
    let shift = bits - 6;
    let mant = (v >> shift) as usize; // in [32, 64)
    (HALF * shift as usize + mant).min(BUCKETS - 1)
}

/// The smallest value of bucket `i` (the inverse of [`index`]).
fn value(i: usize) -> u64 {
    if i < 2 * HALF {
        return i as u64;
    }
    let shift = i / HALF - 1;
    ((i % HALF + HALF) as u64) << shift
}

impl Histogram {
    pub fn record(&self, micros: u64) {
        self.buckets[index(micros)].fetch_add(1, Ordering::Relaxed);
        self.count.fetch_add(1, Ordering::Relaxed);
        self.max.fetch_max(micros, Ordering::Relaxed);
    }

    pub fn count(&self) -> u64 {
        self.count.load(Ordering::Relaxed)
    }

    pub fn max(&self) -> u64 {
        self.max.load(Ordering::Relaxed)
    }

    /// The value at quantile `q` (0..=1) in microseconds; 0 when empty.
    pub fn quantile(&self, q: f64) -> u64 {
        let total = self.count();
        if total == 0 {
            return 0;
        }
        let want = ((total as f64 * q).ceil() as u64).clamp(1, total);
        let mut seen = 0;
        for (i, b) in self.buckets.iter().enumerate() {
            seen += b.load(Ordering::Relaxed);
            if seen >= want {
                return value(i).min(self.max());
            }
        }
        self.max()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_are_monotonic_and_tight() {
        let mut last = 0;
        for v in [
            0u64, 1, 63, 64, 65, 100, 1000, 12_345, 1_000_000, 99_999_999,
        ] {
            let i = index(v);
            assert!(i >= last, "index({v})");
            last = i;
            let lo = value(i);
            assert!(lo <= v, "value(index({v})) = {lo}");
            assert!(v - lo <= v / 30 + 1, "bucket of {v} starts at {lo}");
        }
    }

    #[test]
    fn quantiles() {
        let h = Histogram::default();
        for v in 1..=1000 {
            h.record(v);
        }
        assert_eq!(h.count(), 1000);
        let p50 = h.quantile(0.5);
        assert!((490..=510).contains(&p50), "{p50}");
        let p99 = h.quantile(0.99);
        assert!((970..=1000).contains(&p99), "{p99}");
        assert_eq!(h.max(), 1000);
    }
}
