//! Client-side pacing, so that our own request rate never earns a 429.

use std::time::Duration;

use tokio::sync::Mutex;
use tokio::time::Instant;

/// A token bucket sized so that no 60-second window holds more than `per_minute` requests,
/// whichever way the server counts its window: half the budget may go in a burst, the other
/// half refills evenly over the minute.
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
        let half = f64::from(per_minute) / 2.0;
        RateLimiter {
            capacity: half.max(1.0),
            refill_per_sec: half / 60.0,
            state: Mutex::new(Bucket {
                tokens: half.max(1.0),
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
            let wait = (1.0 - bucket.tokens) / self.refill_per_sec;
            tokio::time::sleep(Duration::from_secs_f64(wait)).await;
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
                in_window <= 300,
                "{in_window} requests in the minute from {at:?}"
            );
        }
        // And the first 150 go out at once.
        assert!(sent[149] < Duration::from_millis(1));
    }
}
