//! Rate limiting for log lines that bad input or a fault can repeat thousands of times a
//! second: the one limiter of the workspace (the spec's "counted, logged at a rate-limited
//! level"), here beside the event type because every crate that logs input depends on this
//! one. It reads the monotonic clock and does no I/O.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// Lets one event through per interval and counts the ones it held back. Lock-free: safe to
/// share between threads and to call on a hot path.
///
/// ```
/// use std::time::Duration;
/// use presence_frame::RateLimit;
///
/// let limit = RateLimit::new(Duration::from_secs(10));
/// assert_eq!(limit.check(), Some(0)); // log it; nothing was held back
/// assert_eq!(limit.check(), None); // within the interval: counted, not logged
/// ```
#[derive(Debug)]
pub struct RateLimit {
    origin: Instant,
    interval_ms: u64,
    /// Milliseconds since `origin` of the last event let through, plus one (0: never).
    last: AtomicU64,
    suppressed: AtomicU64,
}

impl RateLimit {
    /// A limiter letting one event through per `interval`.
    pub fn new(interval: Duration) -> RateLimit {
        RateLimit {
            origin: Instant::now(),
            interval_ms: u64::try_from(interval.as_millis()).unwrap_or(u64::MAX),
            last: AtomicU64::new(0),
            suppressed: AtomicU64::new(0),
        }
    }

    /// `Some(held back since the last one)` when this event may be logged.
    pub fn check(&self) -> Option<u64> {
        let now = u64::try_from(self.origin.elapsed().as_millis()).unwrap_or(u64::MAX - 1) + 1;
        let last = self.last.load(Ordering::Relaxed);
        if last != 0 && now.saturating_sub(last) < self.interval_ms {
            self.suppressed.fetch_add(1, Ordering::Relaxed);
            return None;
        }
        if self
            .last
            .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
            .is_err()
        {
            self.suppressed.fetch_add(1, Ordering::Relaxed);
            return None;
        }
        Some(self.suppressed.swap(0, Ordering::Relaxed))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_per_interval() {
        let limit = RateLimit::new(Duration::from_secs(3600));
        assert_eq!(limit.check(), Some(0));
        assert_eq!(limit.check(), None);
        assert_eq!(limit.check(), None);
        let open = RateLimit::new(Duration::ZERO);
        assert_eq!(open.check(), Some(0));
        assert_eq!(open.check(), Some(0));
    }
}
