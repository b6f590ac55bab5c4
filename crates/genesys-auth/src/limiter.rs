//! Client-side pacing, so that our own request rate never earns a 429.

use std::time::Duration;

use tokio::sync::Mutex;
use tokio::time::Instant;

/// A token bucket sized so that no 60-second window holds more than 90% of `per_minute`
/// requests, whichever way the server counts its window (the 10% left over absorbs the
/// difference between when we send and when the server counts): a fifth of the budget may
/// go in a burst, the rest of the 90% refills evenly over the minute. For Genesys's 300 a
/// minute: a burst of 60, then 3.5 a second (210 a minute), at most 270 in any minute.
#[derive(Debug)]
pub(crate) struct RateLimiter {
    capacity: f64,
    refill_per_sec: f64,
    state: Mutex<Bucket>,
}

#[derive(Debug)]
struct Bucket {
    tokens: f64,
    updated: Instant,
}

impl RateLimiter {
    /// `per_minute` of 0 disables pacing.
    pub(crate) fn new(per_minute: u32) -> RateLimiter {
        let budget = f64::from(per_minute) * 0.9;
        let burst = (f64::from(per_minute) / 5.0).floor().max(1.0);
        RateLimiter {
            capacity: burst,
            // Never zero for a budget (zero means no pacing): a budget of 1 to 4 a minute
            // gets its burst of 1 and a tenth of the budget refilled a minute.
            refill_per_sec: (budget - burst).max(f64::from(per_minute) * 0.1) / 60.0,
            state: Mutex::new(Bucket {
                tokens: burst,
                updated: Instant::now(),
            }),
        }
    }

    /// Waits until one request may be sent, then takes it.
    pub(crate) async fn acquire(&self) {
        if self.refill_per_sec <= 0.0 {
            return;
        }
        // Holding the lock while sleeping keeps waiters in arrival order.
        let mut bucket = self.state.lock().await;
        loop {
            let now = Instant::now();
            let elapsed = now.saturating_duration_since(bucket.updated).as_secs_f64();
            bucket.tokens = (bucket.tokens + elapsed * self.refill_per_sec).min(self.capacity);
            bucket.updated = now;
            if bucket.tokens >= 1.0 {
                bucket.tokens -= 1.0;
                return;
            }
            // At least a millisecond: rounding can leave the bucket a hair short of a
            // token, and a zero sleep would then spin (forever under a paused clock).
            let wait = Duration::from_secs_f64((1.0 - bucket.tokens) / self.refill_per_sec);
            tokio::time::sleep(wait.max(Duration::from_millis(1))).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn never_more_than_the_budget_in_any_minute() {
        let limiter = RateLimiter::new(300);
        let start = Instant::now();
        let mut sent = Vec::new();
        for _ in 0..600 {
            limiter.acquire().await;
            sent.push(start.elapsed());
        }
        // Any 60-second window holds at most 300 requests.
        for (i, at) in sent.iter().enumerate() {
            let in_window = sent[i..]
                .iter()
                .take_while(|t| **t < *at + Duration::from_secs(60))
                .count();
            assert!(
                in_window <= 270,
                "{in_window} requests in the minute from {at:?}"
            );
        }
        // The first 60 go out at once, then 3.5 a second: the 600th after about 154 s.
        assert!(sent[59] < Duration::from_millis(1));
        assert!(sent[60] > Duration::from_millis(250));
        let last = sent[599].as_secs_f64();
        assert!((153.0..156.0).contains(&last), "the 600th after {last} s");
    }
}
