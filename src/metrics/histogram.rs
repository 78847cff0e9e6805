//! A latency histogram made of atomics: fixed buckets, a count, a sum, and the largest value
//! since the shipper last asked.
//!
//! Cumulative bucket counts, count and sum are what Prometheus wants and what the shipper diffs
//! per interval. A maximum cannot be diffed, so the histogram also keeps the largest value seen
//! since [`Histogram::take_max`] was last called; only the shipper calls it, which is what makes
//! "max over the interval" exact. The sum is an `f64` updated with compare-and-swap: a `u64` of
//! microseconds would overflow on a fleet whose clocks are hours off, and contention is low
//! (a handful of bulk delivery tasks).

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// Upper bound on buckets, so a histogram can be built in a `static` without allocation.
const MAX_BUCKETS: usize = 16;

#[derive(Debug)]
pub struct Histogram {
    /// Upper bounds in seconds, ascending; one more bucket (`+Inf`) follows them.
    bounds: &'static [f64],
    /// Per bucket (not cumulative): observations above the previous bound, up to this one.
    /// The count is their sum, so a snapshot taken during an observation stays consistent.
    buckets: [AtomicU64; MAX_BUCKETS],
    /// `f64` seconds as bits.
    sum: AtomicU64,
    /// Microseconds plus one of the largest value since the last `take_max`; 0 means none.
    max: AtomicU64,
}

/// A histogram's figures at one moment.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct HistogramSnapshot {
    pub bounds: &'static [f64],
    /// Cumulative counts, one per bound; the `+Inf` bucket is `count`.
    pub cumulative: Vec<u64>,
    pub count: u64,
    pub sum_s: f64,
}

impl Histogram {
    /// `bounds` must be ascending and at most 15 long (checked in tests of the two histograms
    /// we have; a `const` cannot assert on a slice's order).
    pub const fn new(bounds: &'static [f64]) -> Self {
        assert!(bounds.len() < MAX_BUCKETS, "too many histogram buckets");
        Histogram {
            bounds,
            buckets: [const { AtomicU64::new(0) }; MAX_BUCKETS],
            sum: AtomicU64::new(0),
            max: AtomicU64::new(0),
        }
    }

    pub fn observe(&self, value: Duration) {
        let seconds = value.as_secs_f64();
        let bucket = self
            .bounds
            .iter()
            .position(|&bound| seconds <= bound)
            .unwrap_or(self.bounds.len());
        self.buckets[bucket].fetch_add(1, Ordering::Relaxed);
        // fetch_update only fails when the closure returns None, which this one never does.
        let _ = self
            .sum
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |bits| {
                Some((f64::from_bits(bits) + seconds).to_bits())
            });
        let micros = u64::try_from(value.as_micros()).unwrap_or(u64::MAX - 1);
        self.max.fetch_max(micros + 1, Ordering::Relaxed);
    }

    pub fn snapshot(&self) -> HistogramSnapshot {
        let mut running = 0;
        let mut cumulative: Vec<u64> = self.buckets[..=self.bounds.len()]
            .iter()
            .map(|bucket| {
                running += bucket.load(Ordering::Relaxed);
                running
            })
            .collect();
        // The last is the +Inf bucket, which is the count.
        let count = cumulative.pop().unwrap_or(0);
        HistogramSnapshot {
            bounds: self.bounds,
            cumulative,
            count,
            sum_s: f64::from_bits(self.sum.load(Ordering::Relaxed)),
        }
    }

    /// The largest value observed since the previous call, in seconds; `None` if there was none.
    pub fn take_max(&self) -> Option<f64> {
        match self.max.swap(0, Ordering::Relaxed) {
            0 => None,
            micros => Some((micros - 1) as f64 / 1e6),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    static BOUNDS: [f64; 3] = [0.01, 0.1, 1.0];

    #[test]
    fn observations_land_in_cumulative_buckets_with_count_and_sum() {
        let h = Histogram::new(&BOUNDS);
        for ms in [5, 10, 50, 2000] {
            h.observe(Duration::from_millis(ms));
        }
        let s = h.snapshot();
        assert_eq!(s.cumulative, vec![2, 3, 3]);
        assert_eq!(s.count, 4);
        assert!((s.sum_s - 2.065).abs() < 1e-9, "{}", s.sum_s);
    }

    #[test]
    fn the_maximum_covers_only_what_came_since_it_was_last_taken() {
        let h = Histogram::new(&BOUNDS);
        assert_eq!(h.take_max(), None);
        h.observe(Duration::from_millis(30));
        h.observe(Duration::from_millis(20));
        assert_eq!(h.take_max(), Some(0.03));
        assert_eq!(h.take_max(), None);
        h.observe(Duration::ZERO);
        assert_eq!(h.take_max(), Some(0.0));
    }
}
