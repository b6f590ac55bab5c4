//! A fixed-bucket, lock-free latency histogram and its snapshot, shaped for a Prometheus
//! histogram (upper bounds, counts, sum, count).

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// Upper bounds of the latency buckets (a last, unbounded bucket follows): 0.5 ms to 2 min,
/// roughly 1-2.5-5 per decade.
pub const LATENCY_BOUNDS: [Duration; 17] = [
    Duration::from_micros(500),
    Duration::from_millis(1),
    Duration::from_micros(2_500),
    Duration::from_millis(5),
    Duration::from_millis(10),
    Duration::from_millis(25),
    Duration::from_millis(50),
    Duration::from_millis(100),
    Duration::from_millis(250),
    Duration::from_millis(500),
    Duration::from_secs(1),
    Duration::from_micros(2_500_000),
    Duration::from_secs(5),
    Duration::from_secs(10),
    Duration::from_secs(30),
    Duration::from_secs(60),
    Duration::from_secs(120),
];

const BUCKETS: usize = LATENCY_BOUNDS.len() + 1;

/// Counts durations into the [`LATENCY_BOUNDS`] buckets. Recording is a few relaxed atomic
/// adds; safe to share between threads.
#[derive(Debug, Default)]
pub struct LatencyHistogram {
    buckets: [AtomicU64; BUCKETS],
    sum_micros: AtomicU64,
}

impl LatencyHistogram {
    /// An empty histogram.
    pub fn new() -> LatencyHistogram {
        LatencyHistogram::default()
    }

    /// Counts one duration.
    pub fn record(&self, latency: Duration) {
        let index = LATENCY_BOUNDS.partition_point(|bound| *bound < latency);
        self.buckets[index].fetch_add(1, Ordering::Relaxed);
        let micros = u64::try_from(latency.as_micros()).unwrap_or(u64::MAX);
        self.sum_micros.fetch_add(micros, Ordering::Relaxed);
    }

    /// The counts so far. The count is the sum of the bucket counts read, so the two always
    /// agree; the sum may include a recording the buckets missed.
    pub fn snapshot(&self) -> HistogramSnapshot {
        let counts: Vec<u64> = self
            .buckets
            .iter()
            .map(|b| b.load(Ordering::Relaxed))
            .collect();
        HistogramSnapshot {
            bounds: &LATENCY_BOUNDS,
            count: counts.iter().sum(),
            counts,
            sum: Duration::from_micros(self.sum_micros.load(Ordering::Relaxed)),
        }
    }
}

/// A point-in-time copy of a [`LatencyHistogram`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HistogramSnapshot {
    /// Upper bounds (inclusive) of every bucket but the last, which is unbounded (`+Inf`).
    pub bounds: &'static [Duration],
    /// Counts per bucket, not cumulative: `bounds.len() + 1` of them.
    pub counts: Vec<u64>,
    /// The sum of all recorded durations.
    pub sum: Duration,
    /// How many durations were recorded.
    pub count: u64,
}

impl HistogramSnapshot {
    /// Cumulative counts per upper bound, the last for `+Inf` (`None`), as Prometheus's `le`
    /// buckets want them.
    pub fn cumulative(&self) -> impl Iterator<Item = (Option<Duration>, u64)> + '_ {
        let mut total = 0;
        self.counts.iter().enumerate().map(move |(i, count)| {
            total += count;
            (self.bounds.get(i).copied(), total)
        })
    }

    /// An estimate of the `q` quantile (0.0 to 1.0), interpolated linearly inside its bucket
    /// as Prometheus's `histogram_quantile` does; `None` when nothing was recorded. A quantile
    /// that falls in the unbounded bucket is reported as the highest bound.
    pub fn percentile(&self, q: f64) -> Option<Duration> {
        if self.count == 0 || !q.is_finite() {
            return None;
        }
        let rank = q.clamp(0.0, 1.0) * self.count as f64;
        let mut below = 0u64;
        for (i, &count) in self.counts.iter().enumerate() {
            if count > 0 && (below + count) as f64 >= rank {
                let Some(&upper) = self.bounds.get(i) else {
                    return self.bounds.last().copied();
                };
                let lower = if i == 0 {
                    Duration::ZERO
                } else {
                    self.bounds[i - 1]
                };
                let fraction = ((rank - below as f64) / count as f64).clamp(0.0, 1.0);
                return Some(lower + (upper - lower).mul_f64(fraction));
            }
            below += count;
        }
        self.bounds.last().copied()
    }

    /// The mean, or `None` when nothing was recorded.
    pub fn mean(&self) -> Option<Duration> {
        (self.count > 0).then(|| self.sum / u32::try_from(self.count).unwrap_or(u32::MAX))
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // a failed unwrap is a failed test
mod tests {
    use super::*;

    #[test]
    fn buckets_sum_count_and_percentiles() {
        let h = LatencyHistogram::new();
        assert_eq!(h.snapshot().percentile(0.5), None);
        for _ in 0..90 {
            h.record(Duration::from_millis(3)); // (2.5 ms, 5 ms]
        }
        for _ in 0..10 {
            h.record(Duration::from_millis(200)); // (100 ms, 250 ms]
        }
        h.record(Duration::from_secs(600)); // +Inf
        h.record(Duration::from_millis(1)); // exactly on a bound: that bucket
        let s = h.snapshot();
        assert_eq!(s.count, 102);
        assert_eq!(s.counts.len(), LATENCY_BOUNDS.len() + 1);
        assert_eq!(s.counts[1], 1);
        assert_eq!(s.counts[3], 90);
        assert_eq!(s.counts[8], 10);
        assert_eq!(*s.counts.last().unwrap(), 1);
        assert_eq!(
            s.sum,
            Duration::from_millis(90 * 3 + 10 * 200 + 600_000 + 1)
        );
        let p50 = s.percentile(0.5).unwrap();
        assert!(
            p50 > Duration::from_micros(2_500) && p50 <= Duration::from_millis(5),
            "{p50:?}"
        );
        let p95 = s.percentile(0.95).unwrap();
        assert!(
            p95 > Duration::from_millis(100) && p95 <= Duration::from_millis(250),
            "{p95:?}"
        );
        assert_eq!(s.percentile(1.0), Some(Duration::from_secs(120)));
        let cumulative: Vec<_> = s.cumulative().collect();
        assert_eq!(cumulative.last(), Some(&(None, 102)));
        assert_eq!(cumulative[3], (Some(Duration::from_millis(5)), 91));
        assert!(s.mean().is_some());
    }
}
